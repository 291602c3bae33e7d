# ferry controller / agent image. Built by docker-compose.yml (the production topology).
FROM node:20-bookworm-slim AS deps
WORKDIR /opt/ferry
# better-sqlite3 (the audit trail's default store) is a native module: its install script
# fetches a prebuilt binary or compiles one, so the compilers live in this stage only.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
WORKDIR /opt/ferry
COPY --from=deps /opt/ferry/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
ENV NODE_ENV=production
ENTRYPOINT ["node", "/opt/ferry/bin/ferry.mjs"]
CMD ["--help"]
