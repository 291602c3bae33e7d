# ferry controller / agent image. Built by docker-compose.yml (the production topology).
FROM node:20-bookworm-slim
WORKDIR /opt/ferry
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
ENV NODE_ENV=production
ENTRYPOINT ["node", "/opt/ferry/bin/ferry.mjs"]
CMD ["--help"]
