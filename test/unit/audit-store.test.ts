import { describe, expect, it } from 'vitest';
import { SqliteAuditStore } from '../../src/audit/sqlite';
import type { AttemptEnd, AttemptStart } from '../../src/audit/types';
import { authorize, parseTokensFile, sha256Hex } from '../../src/api/auth';

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

describe('SQLite audit store', () => {
  it('numbers attempts of a VM under one ticket and links each retry to the attempt it retries', async () => {
    const s = new SqliteAuditStore(':memory:');
    expect(await s.recordStart(start())).toEqual({ attempt: 1, retryOf: null });
    // A retried activity writes the same start again: nothing changes.
    expect(await s.recordStart(start())).toEqual({ attempt: 1, retryOf: null });
    await s.recordEnd(end('migrate-vm-1/r1', 'rolled-back', 2_000));
    await s.recordEnd(end('migrate-vm-1/r1', 'rolled-back', 2_000));
    expect(await s.recordStart(start({ attemptId: 'migrate-vm-1/r2', runId: 'r2', startedAtMs: 3_000 }))).toEqual({ attempt: 2, retryOf: 'migrate-vm-1/r1' });
    await s.recordEnd(end('migrate-vm-1/r2', 'completed', 4_000));
    const { attempts } = await s.query({ ticket: 'OPS-1' });
    expect(attempts.map((a) => [a.attemptId, a.attempt, a.retryOf, a.outcome])).toEqual([
      ['migrate-vm-1/r1', 1, null, 'rolled-back'],
      ['migrate-vm-1/r2', 2, 'migrate-vm-1/r1', 'completed'],
    ]);
    expect(attempts[0]!.retriedBy).toEqual(['migrate-vm-1/r2']);
    expect(attempts[1]!.decisions[0]!.reason).toBe('λ diverging');
    expect(attempts[1]!.endSeq).toBe(2);
    expect((await s.endedSince(1, 10)).map((a) => a.attemptId)).toEqual(['migrate-vm-1/r2']);
    await s.close();
  });

  it('an explicit retryOf without a ticket continues its numbering; an end without a start creates the record', async () => {
    const s = new SqliteAuditStore(':memory:');
    await s.recordStart(start({ ticket: null }));
    expect(await s.recordStart(start({ ticket: null, attemptId: 'migrate-vm-1/r2', runId: 'r2', retryOf: 'migrate-vm-1/r1' }))).toEqual({ attempt: 2, retryOf: 'migrate-vm-1/r1' });
    await s.recordEnd(end('migrate-vm-9/x', 'failed', 9_000), start({ attemptId: 'migrate-vm-9/x', vm: 'vm-9', ticket: null }));
    expect((await s.get('migrate-vm-9/x'))?.outcome).toBe('failed');
    await s.close();
  });

  it('queries by VM, host (source or target) and overlapping time range', async () => {
    const s = new SqliteAuditStore(':memory:');
    await s.recordStart(start({ attemptId: 'a/1', vm: 'vm-a', source: 'h1', target: 'h2', startedAtMs: 1000, ticket: 'T1' }));
    await s.recordEnd(end('a/1', 'completed', 2000));
    await s.recordStart(start({ attemptId: 'b/1', vm: 'vm-b', source: 'h3', target: 'h1', startedAtMs: 5000, ticket: 'T2' }));
    await s.recordEvent({ eventId: 'e/1', atMs: 5000, kind: 'not-placed', ticket: 'T2', vm: 'vm-c', host: 'h3', evacuationId: 'evacuate-T2', requestedBy: 'bob', message: 'vm-c not placed: needs 96 MiB' });
    const ids = async (q: Parameters<typeof s.query>[0]): Promise<string[]> => (await s.query(q)).attempts.map((a) => a.attemptId);
    expect(await ids({ vm: 'vm-a' })).toEqual(['a/1']);
    expect(await ids({ host: 'h1' })).toEqual(['a/1', 'b/1']);
    expect(await ids({ host: 'h2' })).toEqual(['a/1']);
    expect(await ids({ fromMs: 2500, toMs: 9000 })).toEqual(['b/1']); // a/1 ended before
    expect(await ids({ fromMs: 0, toMs: 1500 })).toEqual(['a/1']);
    expect(await ids({ fromMs: 0, toMs: 100 })).toEqual([]);
    expect((await s.query({ ticket: 'T2' })).events.map((e) => e.kind)).toEqual(['not-placed']);
    await s.close();
  });
});

describe('API tokens', () => {
  const file = `# hash scope name\n${sha256Hex('w-token')} write ticketing\n${sha256Hex('r-token')} read auditor\n`;
  const tokens = parseTokensFile(file);
  it.each([
    [undefined, 'read', 401],
    ['Basic abc', 'read', 401],
    ['Bearer nope', 'read', 401],
    ['Bearer r-token', 'read', 200],
    ['Bearer r-token', 'write', 403],
    ['Bearer w-token', 'write', 200],
  ] as const)('%s for %s: %d', (header, need, status) => {
    const r = authorize(header, tokens, need);
    expect(r.ok ? 200 : r.status).toBe(status);
  });
  it('refuses a tokens file line that is not a hash', () => {
    expect(() => parseTokensFile('plaintext-token write x\n', 'tokens')).toThrow(/tokens:1: expected a SHA-256 hash/);
  });
});
