/**
 * `ferry controller --listen … --tls-cert F --tls-key F --tls-client-ca F` as a process on the
 * dev server: the API answers over HTTPS to a client that trusts the cluster CA and presents a
 * certificate it signed (and still wants the bearer token); plain HTTP to the same port, and
 * HTTPS without a client certificate, get no answer.
 */
import http from 'node:http';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureClusterCerts, type ClusterCerts } from '../../src/cluster/certs';
import { spawnFerry, type FerryProcess } from '../../src/support/processes';
import { tempDir, temporalAddress } from '../helpers/cluster';
import { makeCa, makeHostCert } from '../helpers/certs';
import fs from 'node:fs';

const TOKEN = 'https-api-test-token';
let certs: ClusterCerts;
let controller: FerryProcess;
let port = 0;
const dir = tempDir('api-tls');

interface Answer {
  status: number | null;
  body: string;
  error: string | null;
}

function get(mod: typeof http | typeof https, path: string, opts: https.RequestOptions): Promise<Answer> {
  return new Promise((resolve) => {
    const req = mod.request({ host: '127.0.0.1', port, path, method: 'GET', timeout: 5000, ...opts }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? null, body, error: null }));
      res.on('error', (e) => resolve({ status: res.statusCode ?? null, body, error: e.message }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: null, body: '', error: `${(e as NodeJS.ErrnoException).code ?? ''} ${e.message}` }));
    req.end();
  });
}

beforeAll(async () => {
  // The API's certificate and a client's, from the cluster CA (`ferry cluster certs --names ferry-api,ticketing`).
  certs = ensureClusterCerts(dir, { clients: ['ferry-api', 'ticketing'] });
  controller = spawnFerry(
    'controller https',
    ['controller', '--listen', '127.0.0.1:0', '--tls-cert', certs.clients['ferry-api']!.crt, '--tls-key', certs.clients['ferry-api']!.key, '--tls-client-ca', certs.ca.crt],
    { env: { FERRY_TEMPORAL_ADDRESS: temporalAddress(), FERRY_API_TOKEN: TOKEN } },
  );
  await controller.ready;
  const m = /API on https:\/\/127\.0\.0\.1:(\d+)/.exec(controller.output());
  expect(m, controller.output()).not.toBeNull();
  port = Number(m![1]);
}, 90_000);

afterAll(async () => {
  await controller?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the HTTP API over HTTPS', () => {
  const tlsOf = (name: string): https.RequestOptions => ({
    ca: fs.readFileSync(certs.ca.crt),
    cert: fs.readFileSync(certs.clients[name]!.crt),
    key: fs.readFileSync(certs.clients[name]!.key),
    servername: 'ferry-api',
  });

  it('answers over HTTPS a client that trusts the cluster CA and presents a certificate it signed', async () => {
    const ok = await get(https, '/v1/openapi.json', { ...tlsOf('ticketing'), headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.error).toBeNull();
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toHaveProperty('openapi');
    // The certificate does not replace the token.
    const noToken = await get(https, '/v1/audit?vm=none', tlsOf('ticketing'));
    expect(noToken.status).toBe(401);
  });

  it('gives plain HTTP to the same port no answer', async () => {
    const plain = await get(http, '/v1/openapi.json', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(plain.status).toBeNull();
    expect(plain.error).toMatch(/ECONNRESET|socket hang up|EPIPE|Parse Error/);
  });

  it('refuses HTTPS without a client certificate, or with one of another CA', async () => {
    const { cert: _c, key: _k, ...noCert } = tlsOf('ticketing');
    const bare = await get(https, '/v1/openapi.json', { ...noCert, headers: { authorization: `Bearer ${TOKEN}` } });
    expect(bare.status).toBeNull();
    const other = makeHostCert(dir, makeCa(dir, 'other'), 'ticketing', 'other-ticketing');
    const stranger = await get(https, '/v1/openapi.json', { ...noCert, cert: fs.readFileSync(other.cert), key: fs.readFileSync(other.key), headers: { authorization: `Bearer ${TOKEN}` } });
    expect(stranger.status).toBeNull();
  });

  it('is not mistaken for another server: a client that does not trust the cluster CA refuses it', async () => {
    const { ca: _ca, ...untrusting } = tlsOf('ticketing');
    const r = await get(https, '/v1/openapi.json', { ...untrusting, headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBeNull();
    expect(r.error).toMatch(/self[- ]signed|unable to (get|verify)|certificate/i);
  });
});
