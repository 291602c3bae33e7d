/**
 * The audit trail's PostgreSQL adapter against a real, throwaway PostgreSQL server (the
 * machine's own binaries, a cluster in a temp dir on a free port): the same behaviour as the
 * SQLite store, through `openAuditStore({ url })`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAuditStore } from '../../src/audit';
import type { AttemptEnd, AttemptStart, AuditStore } from '../../src/audit/types';
import { freePort } from '../../src/common/dev-server';
import { chownToPostgres, pgToolOrThrow } from '../../src/cluster/postgres';

/** PostgreSQL's tools, as the postgres user when we are root (PostgreSQL refuses root). */
function pg(name: string, args: string[]): void {
  pgToolOrThrow(name, args, `${name} ${args.join(' ')}`);
}

let dir: string;
let store: AuditStore;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pg-'));
  const data = path.join(dir, 'data');
  chownToPostgres(dir);
  pg('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
  const port = await freePort();
  pg('pg_ctl', ['-D', data, '-w', '-t', '60', '-l', path.join(dir, 'log'), '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
  store = await openAuditStore({ url: `postgres://postgres@127.0.0.1:${port}/postgres` });
}, 120_000);

afterAll(async () => {
  await store?.close();
  if (dir && fs.existsSync(path.join(dir, 'data'))) pg('pg_ctl', ['-D', path.join(dir, 'data'), '-w', '-m', 'fast', 'stop']);
  fs.rmSync(dir, { recursive: true, force: true });
});

const start = (over: Partial<AttemptStart> = {}): AttemptStart => ({
  attemptId: 'migrate-vm-1/r1',
  migrationId: 'migrate-vm-1',
  runId: 'r1',
  vm: 'vm-1',
  source: 'host-a',
  target: 'host-b',
  strategy: 'pa-hybrid',
  ticket: 'OPS-1',
  requestedBy: 'alice',
  reason: 'rack maintenance',
  via: 'api:ticketing',
  evacuationId: null,
  attempt: null,
  retryOf: null,
  startedAtMs: 1_000,
  ...over,
});

const end = (attemptId: string, outcome: AttemptEnd['outcome'], endedAtMs: number): AttemptEnd => ({
  attemptId,
  outcome,
  outcomeReason: `${outcome} because`,
  endedAtMs,
  decisions: [{ atMs: 5, iteration: 3, action: 'switch-to-postcopy', reason: 'λ diverging' }],
  downtimeMs: 40,
  postcopyDurationMs: 900,
  totalTimeMs: endedAtMs - 1000,
  bytes: { migrationNetwork: 10, storageWrite: 20, storageRead: 5 },
  faultLatencyMs: { p50: 1, p99: 5, max: 9 },
  verified: outcome === 'completed',
});

describe('PostgreSQL audit store', () => {
  it('numbers attempts, links retries, ends idempotently, tails ends in order, and queries by ticket, VM, host and time', async () => {
    expect(store.kind).toBe('postgres');
    expect(await store.recordStart(start())).toEqual({ attempt: 1, retryOf: null });
    expect(await store.recordStart(start())).toEqual({ attempt: 1, retryOf: null });
    await store.recordEnd(end('migrate-vm-1/r1', 'rolled-back', 2_000));
    await store.recordEnd(end('migrate-vm-1/r1', 'rolled-back', 2_000));
    expect(await store.recordStart(start({ attemptId: 'migrate-vm-1/r2', runId: 'r2', startedAtMs: 3_000, target: 'host-c' }))).toEqual({ attempt: 2, retryOf: 'migrate-vm-1/r1' });
    await store.recordEnd(end('migrate-vm-1/r2', 'completed', 4_000));
    // An end whose start was never written creates the record.
    await store.recordEnd(end('migrate-vm-9/x', 'failed', 9_000), start({ attemptId: 'migrate-vm-9/x', vm: 'vm-9', ticket: null, startedAtMs: 8_000 }));
    await store.recordEvent({ eventId: 'e/1', atMs: 5000, kind: 'not-placed', ticket: 'OPS-1', vm: 'big', host: 'host-a', evacuationId: 'evacuate-OPS-1', requestedBy: 'bob', message: 'big not placed' });
    await store.recordEvent({ eventId: 'e/1', atMs: 5000, kind: 'not-placed', ticket: 'OPS-1', vm: 'big', host: 'host-a', evacuationId: 'evacuate-OPS-1', requestedBy: 'bob', message: 'big not placed' });

    const byTicket = await store.query({ ticket: 'OPS-1' });
    expect(byTicket.attempts.map((a) => [a.attemptId, a.attempt, a.retryOf, a.outcome, a.retriedBy])).toEqual([
      ['migrate-vm-1/r1', 1, null, 'rolled-back', ['migrate-vm-1/r2']],
      ['migrate-vm-1/r2', 2, 'migrate-vm-1/r1', 'completed', []],
    ]);
    expect(byTicket.attempts[1]).toMatchObject({ startedAt: new Date(3000).toISOString(), endedAt: new Date(4000).toISOString(), verified: true, downtimeMs: 40 });
    expect(byTicket.attempts[1]!.decisions[0]!.reason).toBe('λ diverging');
    expect(byTicket.events.map((e) => e.message)).toEqual(['big not placed']);
    expect((await store.query({ host: 'host-c' })).attempts.map((a) => a.attemptId)).toEqual(['migrate-vm-1/r2']);
    expect((await store.query({ vm: 'vm-9' })).attempts.map((a) => a.outcome)).toEqual(['failed']);
    expect((await store.query({ fromMs: 2500, toMs: 5000 })).attempts.map((a) => a.attemptId)).toEqual(['migrate-vm-1/r2']);
    const ended = await store.endedSince(0, 10);
    expect(ended.map((a) => a.attemptId)).toEqual(['migrate-vm-1/r1', 'migrate-vm-1/r2', 'migrate-vm-9/x']);
    expect((await store.endedSince(ended[0]!.endSeq!, 10)).map((a) => a.attemptId)).toEqual(['migrate-vm-1/r2', 'migrate-vm-9/x']);
    expect((await store.get('migrate-vm-1/r1'))?.retriedBy).toEqual(['migrate-vm-1/r2']);
  });
});
