/**
 * The HTTP API's open doors, closed: no API without a configured token (the CLI exits with
 * how to set one; compose has no default token), a 500 carries only a request id (the
 * details go to the log under it), and /metrics can require its own token.
 */
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { Counter, Gauge, Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens } from '../../src/api/auth';
import { createApiHandler } from '../../src/api/server';
import type { AuditStore } from '../../src/audit/types';
import { REPO_ROOT } from '../../src/common/paths';
import { serveMetrics, type MetricsServer } from '../../src/metrics/http';
import { FERRY_BIN } from '../../src/support/processes';

const API_TOKEN = 'api-token-for-tests';
const METRICS_TOKEN = 'metrics-token-for-tests';
const SECRET = 'postgres://ferry:hunter2@db.internal:5432/audit';

/** An audit store whose queries fail with an error that names a secret (as a driver's would). */
const failingStore = {
  kind: 'sqlite',
  query: () => Promise.reject(new Error(`connection to ${SECRET} refused`)),
} as unknown as AuditStore;

function registry(): Registry {
  const r = new Registry();
  new Counter({ name: 'ferry_test_scrapes_total', help: 'a counter', registers: [r] }).inc(3);
  return r;
}

interface Served {
  url: string;
  close(): Promise<void>;
}

async function serve(handler: http.RequestListener): Promise<Served> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const get = async (url: string, token?: string): Promise<{ status: number; text: string; requestId: string | null }> => {
  const r = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  return { status: r.status, text: await r.text(), requestId: r.headers.get('x-request-id') };
};

describe('the API does not start without a token', () => {
  it('`ferry controller --listen` with no token exits 2 with one line saying how to set one', () => {
    const env = { ...process.env, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1', FERRY_API_TOKEN: '', FERRY_API_TOKENS_FILE: '' };
    const r = spawnSync(process.execPath, [FERRY_BIN, 'controller', '--listen', '127.0.0.1:0'], { encoding: 'utf8', env, timeout: 60_000 });
    expect(r.status, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('the API needs a token and has no default');
    expect(lines[0]).toContain('set FERRY_API_TOKEN');
    expect(lines[0]).toContain('--tokens-file');
  });

  it('docker-compose refuses the topology without FERRY_API_TOKEN (no change-me default)', () => {
    // The other secrets compose requires are given: only the API token is missing.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      FERRY_PG_PASSWORD: 'pg-from-the-environment',
      FERRY_CERTS_DIR: '/srv/ferry/certs',
      FERRY_CLUSTER_KEY_FILE: path.join(REPO_ROOT, 'package.json'),
    };
    delete env.FERRY_API_TOKEN;
    const file = path.join(REPO_ROOT, 'docker-compose.yml');
    const r = spawnSync('docker-compose', ['-f', file, 'config', '-q'], { encoding: 'utf8', env });
    expect(r.error).toBeUndefined();
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('set FERRY_API_TOKEN');
    const ok = spawnSync('docker-compose', ['-f', file, 'config'], { encoding: 'utf8', env: { ...env, FERRY_API_TOKEN: 'from-the-environment' } });
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('FERRY_API_TOKEN: from-the-environment');
    expect(ok.stdout).not.toContain('change-me');
  });
});

describe('API errors', () => {
  const logged: string[] = [];
  let api: Served;
  beforeAll(async () => {
    api = await serve(
      createApiHandler({
        client: {} as Client, // the routes used here never reach Temporal
        store: failingStore,
        tokens: loadTokens({ token: API_TOKEN }),
        listen: '127.0.0.1:0',
        log: (l) => logged.push(l),
      }),
    );
  });
  afterAll(() => api.close());

  it('a 500 carries only a request id (body and X-Request-Id); the error goes to the log under that id', async () => {
    const r = await get(`${api.url}/v1/audit?vm=vm-1`, API_TOKEN);
    expect(r.status).toBe(500);
    const body = JSON.parse(r.text) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(['error', 'requestId']);
    expect(body.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(r.requestId).toBe(body.requestId);
    expect(body.error).toBe(`internal error (request id ${r.requestId})`);
    expect(r.text).not.toContain('hunter2');
    expect(r.text).not.toContain('refused');
    const line = logged.find((l) => l.includes(r.requestId!));
    expect(line).toBeDefined();
    expect(line).toContain(`connection to ${SECRET} refused`);
    expect(line).toContain('GET /v1/audit');
  });

  it('other errors keep their message and carry a request id too; each request has its own', async () => {
    const a = await get(`${api.url}/v1/audit?vm=vm-1`);
    const b = await get(`${api.url}/v1/nowhere`, API_TOKEN);
    expect(a.status).toBe(401);
    expect(JSON.parse(a.text)).toEqual({ error: 'missing bearer token (Authorization: Bearer <token>)', requestId: a.requestId });
    expect(b.status).toBe(404);
    expect(JSON.parse(b.text)).toMatchObject({ requestId: b.requestId });
    expect(a.requestId).not.toBe(b.requestId);
    expect(logged.some((l) => l.includes(a.requestId!) || l.includes(b.requestId!))).toBe(false); // only 500s are logged
  });
});

describe('/metrics', () => {
  const servers: Served[] = [];
  afterAll(() => Promise.all(servers.map((s) => s.close())));

  async function apiWithMetrics(metricsToken: string | null): Promise<Served> {
    const s = await serve(createApiHandler({ client: {} as Client, store: failingStore, tokens: loadTokens({ token: API_TOKEN }), listen: '127.0.0.1:0', metrics: registry(), metricsToken, log: () => {} }));
    servers.push(s);
    return s;
  }

  it('on the API listener: open without FERRY_METRICS_TOKEN', async () => {
    const s = await apiWithMetrics(null);
    const r = await get(`${s.url}/metrics`);
    expect(r.status).toBe(200);
    expect(r.text).toContain('ferry_test_scrapes_total 3');
  });

  it('on the API listener: with a metrics token, only that token scrapes (not an API token)', async () => {
    const s = await apiWithMetrics(METRICS_TOKEN);
    for (const token of [undefined, 'wrong', API_TOKEN]) {
      const r = await get(`${s.url}/metrics`, token);
      expect(r.status, String(token)).toBe(401);
      expect(r.text).not.toContain('ferry_test_scrapes_total');
    }
    const ok = await get(`${s.url}/metrics`, METRICS_TOKEN);
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('ferry_test_scrapes_total 3');
  });

  it('on an agent or controller --metrics listener: the same, and a failed collection says only its request id', async () => {
    const open: MetricsServer = await serveMetrics('127.0.0.1:0', registry());
    const locked: MetricsServer = await serveMetrics('127.0.0.1:0', registry(), { token: METRICS_TOKEN });
    const broken = new Registry();
    new Gauge({
      name: 'ferry_test_broken',
      help: 'a collector that fails',
      registers: [broken],
      collect() {
        throw new Error(`cannot reach ${SECRET}`);
      },
    });
    const failLog: string[] = [];
    const failing: MetricsServer = await serveMetrics('127.0.0.1:0', broken, { token: METRICS_TOKEN, log: (l) => failLog.push(l) });
    servers.push(open, locked, failing);
    expect((await get(open.url)).status).toBe(200);
    expect((await get(locked.url)).status).toBe(401);
    expect((await get(locked.url, 'wrong')).status).toBe(401);
    const ok = await get(locked.url, METRICS_TOKEN);
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('ferry_test_scrapes_total 3');
    expect((await get(failing.url)).status).toBe(401);
    const f = await get(failing.url, METRICS_TOKEN);
    expect(f.status).toBe(500);
    expect(f.text).toBe(`metrics collection failed (request id ${f.requestId}; the details are in the log)\n`);
    expect(failLog.find((l) => l.includes(f.requestId!))).toContain(`cannot reach ${SECRET}`);
  });
});
