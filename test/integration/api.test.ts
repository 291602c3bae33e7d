/**
 * The HTTP API over real HTTP against real agents: idempotent tickets, every error status
 * (400/401/403/404/409), auth, cancel, target-less placement, and an audit query that
 * returns a failed attempt and its retry linked together.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens, sha256Hex } from '../../src/api/auth';
import { startApiServer, type RunningApi } from '../../src/api/server';
import type { AuditAttempt } from '../../src/audit/types';
import { spawnFerry, type FerryProcess } from '../../src/support/processes';
import type { MigrationReport } from '../../src/workflows/report';
import { startAgentProcess, startTestController, tempDir, temporalAddress, testAuditStore, uniqueHost, type TestController } from '../helpers/cluster';
import { maybeRecordHistory } from '../helpers/history';
import { createVm, MiB } from '../helpers/migrate';

const WRITE = 'write-secret-token';
const READ = 'read-only-token';
const run = Math.random().toString(36).slice(2, 8);
const hostA = uniqueHost('api-a');
const hostB = uniqueHost('api-b');
const hostSmall = uniqueHost('api-small');
const storage = tempDir('api-storage');

let controller: TestController;
let api: RunningApi;
const agents: FerryProcess[] = [];

beforeAll(async () => {
  const [c, a, b, s] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB' }),
    // The most free memory in the cluster, so target-less placement picks it.
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '200GiB' }),
    startAgentProcess(hostSmall, { storageDir: storage, memoryCapacity: '8MiB' }),
  ]);
  controller = c;
  agents.push(a, b, s);
  const tokensFile = path.join(tempDir('api-tokens'), 'tokens');
  fs.writeFileSync(tokensFile, `# sha256 scope name\n${sha256Hex(READ)} read auditor\n`);
  api = await startApiServer({
    client: controller.client,
    store: testAuditStore(),
    tokens: loadTokens({ token: WRITE, tokensFile }),
    listen: '127.0.0.1:0',
  });
});

afterAll(async () => {
  await api?.close();
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

async function call(method: 'GET' | 'POST', p: string, body?: unknown, token: string | null = WRITE): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${api.url}${p}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null, headers: res.headers };
}

async function resultOf(id: string, runId: string): Promise<MigrationReport> {
  return (await controller.client.workflow.getHandle(id, runId).result()) as MigrationReport;
}

describe('HTTP API', () => {
  it('serves its OpenAPI document without a token', async () => {
    const r = await call('GET', '/v1/openapi.json', undefined, null);
    expect(r.status).toBe(200);
    expect(r.json.openapi).toBe('3.1.0');
    expect(Object.keys(r.json.paths)).toEqual(expect.arrayContaining(['/v1/migrations', '/v1/migrations/{id}', '/v1/migrations/{id}/cancel', '/v1/evacuations', '/v1/audit']));
    // The dashboard's routes are the API's too, documented with it.
    expect(Object.keys(r.json.paths)).toEqual(expect.arrayContaining(['/v1/session', '/v1/migrations/{id}/timeline', '/v1/migrations/{id}/force-postcopy', '/v1/migrations/{id}/bandwidth']));
    expect(Object.keys(r.json.paths['/v1/migrations'])).toEqual(expect.arrayContaining(['get', 'post']));
    expect(r.json.components.schemas.CreateMigration.required).toEqual(['vm', 'ticket', 'requestedBy', 'reason']);
  });

  it('401 without a valid token, 403 for a read token on a write', async () => {
    const body = { vm: 'x', ticket: 'T', requestedBy: 'a', reason: 'r' };
    const none = await call('POST', '/v1/migrations', body, null);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(none.json.error).toMatch(/missing bearer token/);
    expect((await call('POST', '/v1/migrations', body, 'wrong-token')).status).toBe(401);
    expect((await call('GET', '/v1/audit?vm=x', undefined, 'wrong-token')).status).toBe(401);
    const ro = await call('POST', '/v1/migrations', body, READ);
    expect(ro.status).toBe(403);
    expect(ro.json.error).toMatch(/auditor.*read/);
    expect((await call('GET', '/v1/audit?vm=x', undefined, READ)).status).toBe(200);
  });

  it.each([
    ['a missing ticket', { vm: 'vm-1', requestedBy: 'a', reason: 'r' }, 'ticket', /^ticket: required$/],
    ['a bad VM name', { vm: 'no spaces!', ticket: 'T-1', requestedBy: 'a', reason: 'r' }, 'vm', /^vm: must be a VM name/],
    ['an unknown strategy', { vm: 'vm-1', strategy: 'teleport', ticket: 'T-1', requestedBy: 'a', reason: 'r' }, 'strategy', /^strategy: must be one of precopy, /],
    ['an unknown field', { vm: 'vm-1', ticket: 'T-1', requestedBy: 'a', reason: 'r', colour: 'red' }, 'colour', /^colour: unknown field$/],
    ['a bad bandwidth', { vm: 'vm-1', ticket: 'T-1', requestedBy: 'a', reason: 'r', options: { bandwidth: 'fast' } }, 'options.bandwidth', /^options\.bandwidth: /],
    ['an empty requestedBy', { vm: 'vm-1', ticket: 'T-1', requestedBy: '', reason: 'r' }, 'requestedBy', /^requestedBy: /],
  ])('400 for %s names the field', async (_what, body, field, message) => {
    const r = await call('POST', '/v1/migrations', body);
    expect(r.status).toBe(400);
    expect(r.json.field).toBe(field);
    expect(r.json.error).toMatch(message);
  });

  it('400 for bad JSON, bad evacuation and audit input', async () => {
    const bad = await call('POST', '/v1/migrations', '{"vm": ');
    expect([bad.status, bad.json.field]).toEqual([400, 'body']);
    const ev = await call('POST', '/v1/evacuations', { hosts: [], ticket: 'T', requestedBy: 'a', reason: 'r' });
    expect([ev.status, ev.json.field]).toEqual([400, 'hosts']);
    const q = await call('GET', '/v1/audit?from=yesterday');
    expect([q.status, q.json.field]).toEqual([400, 'from']);
    const q2 = await call('GET', '/v1/audit?colour=red');
    expect([q2.status, q2.json.field]).toEqual([400, 'colour']);
  });

  it('404 for an unknown migration, VM or route', async () => {
    const m = await call('GET', `/v1/migrations/migrate-nope-${run}`);
    expect(m.status).toBe(404);
    expect(m.json.error).toMatch(/no such migration/);
    const vm = await call('POST', '/v1/migrations', { vm: `ghost-${run}`, ticket: `T-${run}`, requestedBy: 'a', reason: 'r' });
    expect(vm.status).toBe(404);
    expect(vm.json.error).toMatch(/ghost-.* is on no registered host/);
    expect((await call('GET', '/v1/nothing-here')).status).toBe(404);
  });

  it('idempotent ticket: 202 then 200 with the same migration; 409 under another ticket; cancel; target by free memory', async () => {
    const vm = `api-idem-${run}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'kernel-compile', seed: 5 });
    // No target: the live host with the most free memory (hostB) is chosen. A slow link keeps
    // the migration running while the next requests arrive.
    const body = { vm, ticket: `OPS-${run}-1`, requestedBy: 'ticketing', reason: 'move off a noisy neighbour', strategy: 'precopy', options: { bandwidth: '2MiB/s' } };
    const first = await call('POST', '/v1/migrations', body);
    expect(first.status).toBe(202);
    expect(first.json).toMatchObject({ id: `migrate-${vm}`, vm, target: hostB, created: true });
    expect(first.json.placement).toMatch(new RegExp(`^${hostB} has the most free memory`));
    const again = await call('POST', '/v1/migrations', body);
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ id: first.json.id, runId: first.json.runId, created: false });
    const other = await call('POST', '/v1/migrations', { ...body, ticket: `OPS-${run}-2`, target: hostB });
    expect(other.status).toBe(409);
    expect(other.json.error).toMatch(new RegExp(`already migrating .*ticket OPS-${run}-1`));

    const got = await call('GET', `/v1/migrations/${vm}`, undefined, READ);
    expect(got.status).toBe(200);
    expect(got.json).toMatchObject({ id: `migrate-${vm}`, runId: first.json.runId, status: 'running', ticket: `OPS-${run}-1`, source: hostA, target: hostB });

    const cancel = await call('POST', `/v1/migrations/${first.json.id}/cancel`, { requestedBy: 'ticketing', reason: 'change window closed' });
    expect(cancel.status).toBe(202);
    const report = await resultOf(first.json.id, first.json.runId);
    expect(report.outcome).toBe('rolled-back');
    expect(report.reason).toMatch(/cancelled by ticketing \(change window closed\)/);
    const late = await call('POST', `/v1/migrations/${first.json.id}/cancel`, { requestedBy: 'ticketing' });
    expect(late.status).toBe(409);
    const done = await call('GET', `/v1/migrations/${vm}`);
    expect(done.json.status).toBe('completed');
    expect(done.json.report.outcome).toBe('rolled-back');
    expect(done.json.attempts.map((a: AuditAttempt) => a.outcome)).toEqual(['rolled-back']);
    // The same ticket after the end is still the same migration.
    expect((await call('POST', '/v1/migrations', body)).json).toMatchObject({ runId: first.json.runId, created: false });
  });

  it('audit: a failed attempt and its retry, linked together, by ticket, VM, host and time', async () => {
    const vm = `api-retry-${run}`;
    const ticket = `OPS-${run}-R`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 16 * MiB, workload: 'kernel-compile', seed: 9 });
    const t0 = new Date().toISOString();
    // hostSmall offers 8 MiB: the target refuses the 16 MiB guest; the attempt rolls back.
    const first = await call('POST', '/v1/migrations', { vm, target: hostSmall, ticket, requestedBy: 'alice', reason: 'rebalance rack 7' });
    expect(first.status).toBe(202);
    const r1 = await resultOf(first.json.id, first.json.runId);
    expect(r1.outcome).toBe('rolled-back');
    expect(r1.reason).toMatch(/8388608 bytes free/);
    const failedId = `${first.json.id}/${first.json.runId}`;

    const retry = await call('POST', `/v1/migrations/${encodeURIComponent(failedId)}/retry`, { requestedBy: 'bob', reason: 'retry on a bigger host', target: hostB });
    expect(retry.status).toBe(202);
    expect(retry.json).toMatchObject({ retryOf: failedId, created: true });
    // The same retry again: already served.
    const again = await call('POST', `/v1/migrations/${encodeURIComponent(failedId)}/retry`, { requestedBy: 'bob', reason: 'retry on a bigger host', target: hostB });
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ runId: retry.json.runId, created: false });
    const r2 = await resultOf(retry.json.id, retry.json.runId);
    expect(r2.outcome).toBe('completed');
    await maybeRecordHistory(controller.client, retry.json.id, 'pa-hybrid-audited-retry');
    expect(r2.verification).toMatchObject({ ok: true, where: 'target' });
    // Nothing left to retry.
    expect((await call('POST', `/v1/migrations/${vm}/retry`, { requestedBy: 'bob', reason: 'again' })).status).toBe(409);
    const retryId = `${retry.json.id}/${retry.json.runId}`;

    const byTicket = await call('GET', `/v1/audit?ticket=${encodeURIComponent(ticket)}`, undefined, READ);
    expect(byTicket.status).toBe(200);
    const attempts = byTicket.json.attempts as AuditAttempt[];
    expect(attempts.map((a) => [a.attemptId, a.attempt, a.retryOf, a.outcome])).toEqual([
      [failedId, 1, null, 'rolled-back'],
      [retryId, 2, failedId, 'completed'],
    ]);
    const [a1, a2] = attempts as [AuditAttempt, AuditAttempt];
    expect(a1).toMatchObject({ vm, ticket, requestedBy: 'alice', reason: 'rebalance rack 7', via: 'api:env', source: hostA, target: hostSmall, strategy: 'pa-hybrid', retriedBy: [retryId] });
    expect(a1.outcomeReason).toMatch(/preparing failed: .*8388608 bytes free.*rolled back/);
    expect(a2).toMatchObject({ requestedBy: 'bob', reason: 'retry on a bigger host', via: 'api:env', target: hostB, verified: true });
    expect(a2.decisions.length).toBeGreaterThan(0);
    expect(a2.decisions.every((d) => d.reason.length > 0)).toBe(true);
    expect(Date.parse(a1.endedAt!)).toBeLessThanOrEqual(Date.parse(a2.startedAt));

    const byVm = (await call('GET', `/v1/audit?vm=${vm}`)).json.attempts as AuditAttempt[];
    expect(byVm.map((a) => a.attemptId)).toEqual([failedId, retryId]);
    const byHost = (await call('GET', `/v1/audit?host=${hostSmall}`)).json.attempts as AuditAttempt[];
    expect(byHost.map((a) => a.attemptId)).toEqual([failedId]);
    // Time range: only attempts that overlap it.
    const after = (await call('GET', `/v1/audit?vm=${vm}&from=${encodeURIComponent(a2.startedAt)}`)).json.attempts as AuditAttempt[];
    expect(after.map((a) => a.attemptId)).toEqual([retryId]);
    const range = (await call('GET', `/v1/audit?vm=${vm}&from=${encodeURIComponent(t0)}&to=${encodeURIComponent(a1.endedAt!)}`)).json.attempts as AuditAttempt[];
    expect(range.map((a) => a.attemptId)).toEqual([failedId]);
  });

  it('`ferry controller --listen` serves the API, its OpenAPI document and metrics', async () => {
    const p = spawnFerry('controller', ['controller', '--listen', '127.0.0.1:0'], {
      env: { FERRY_TEMPORAL_ADDRESS: temporalAddress(), FERRY_API_TOKEN: 'cli-token' },
    });
    try {
      await p.ready;
      const url = /API on (http:\/\/\S+) /.exec(p.output())?.[1];
      expect(url, p.output()).toBeDefined();
      expect((await fetch(`${url}/v1/openapi.json`)).status).toBe(200);
      expect((await fetch(`${url}/v1/audit?vm=x`)).status).toBe(401);
      const audit = await fetch(`${url}/v1/audit?vm=x`, { headers: { authorization: 'Bearer cli-token' } });
      expect(audit.status).toBe(200);
      expect(await audit.json()).toEqual({ attempts: [], events: [] });
      const metrics = await (await fetch(`${url}/metrics`)).text();
      expect(metrics).toMatch(/# TYPE ferry_migrations_total counter/);
      expect(metrics).toMatch(/ferry_audit_store_up 1/);
    } finally {
      await p.stop();
    }
  });
});
