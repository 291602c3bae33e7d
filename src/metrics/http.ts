/** A small HTTP listener that serves a Prometheus registry at /metrics (agents; a controller
 * without the API listener). */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface MetricsServer {
  /** host:port actually bound. */
  address: string;
  url: string;
  close(): Promise<void>;
}

export function splitListen(addr: string, what: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(addr.slice(i + 1));
  if (i <= 0 || !host || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`${what}: '${addr}' is not HOST:PORT`);
  return { host, port };
}

/** Options of a /metrics endpoint. */
export interface MetricsAccess {
  /** When set (FERRY_METRICS_TOKEN), a scrape needs `Authorization: Bearer <token>`. */
  token?: string | null;
  /** Where a failed collection's details go (stderr by default). */
  log?: (line: string) => void;
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** True when /metrics is open, or the request carries its bearer token (compared in constant time). */
export function metricsAuthorized(header: string | undefined, token: string | null | undefined): boolean {
  if (!token) return true;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m !== null && timingSafeEqual(digest(m[1]!), digest(token));
}

/**
 * Serve the registry's exposition, or 401 without the metrics token. A collector that fails
 * gives a 500 carrying only a request id (also as X-Request-Id); the error goes to the log.
 */
export async function writeMetrics(registry: Registry, req: http.IncomingMessage, res: http.ServerResponse, access: MetricsAccess = {}, requestId: string = randomUUID()): Promise<void> {
  res.setHeader('x-request-id', requestId);
  if (!metricsAuthorized(req.headers.authorization, access.token)) {
    res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer realm="ferry-metrics"' });
    res.end('/metrics needs Authorization: Bearer <the metrics token>\n');
    return;
  }
  try {
    const body = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType });
    res.end(body);
  } catch (e) {
    (access.log ?? ((l: string) => process.stderr.write(`${l}\n`)))(`ferry metrics: request ${requestId}: collection failed: ${(e as Error)?.stack ?? String(e)}`);
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`metrics collection failed (request id ${requestId}; the details are in the log)\n`);
  }
}

export function listenAddress(server: http.Server): string {
  const a = server.address() as AddressInfo;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

export async function serveMetrics(addr: string, registry: Registry, access: MetricsAccess = {}): Promise<MetricsServer> {
  const { host, port } = splitListen(addr, '--metrics');
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
      void writeMetrics(registry, req, res, access);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found: metrics are at /metrics\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = listenAddress(server);
  return {
    address,
    url: `http://${address}/metrics`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
