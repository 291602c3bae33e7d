/**
 * Shared storage failing during the static save (two-host fixture, test/helpers/netns.ts;
 * the storage is a tmpfs both agents see). The behaviour, in src/workflows/migration.ts:
 *
 * - StaticData cannot be written (storage full: ENOSPC, not retried; or unreachable:
 *   I/O errors, retried 4 times): the migration goes on without channel-1. The target
 *   stops merging, the partial snapshot is removed, the next round sends every page over
 *   channel-2 (a bulk round, as as-hybrid does), and the run completes, verified. The
 *   reason is recorded as a decision and in the report's reason ("StaticData abandoned
 *   (storage full: …)"); report.static is null. Async PbData that cannot be written is
 *   reported too ("PbData not written (…)"); the target then depends on channel-2 alone.
 * - With PbData sync the switch needs a committed PbData: it fails (not retried), and the
 *   migration rolls back with the guest verified on the source ("storage full: …").
 *
 * Timing is seeded (FERRY_FAULT_SEED, printed).
 */
import { describe, expect, it } from 'vitest';
import { faultSeed, runScenario, twoHostCluster } from '../helpers/netns';

const seed = faultSeed('storage.test.ts');
const cluster = twoHostCluster();

describe('shared storage fails during the static save (pa-hybrid)', () => {
  it('storage full (ENOSPC): StaticData abandoned, every page over channel-2, completed and verified', async () => {
    const r = await runScenario(cluster(), 'storage-full', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
    expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.report?.static).toBeNull();
    expect(r.report?.reason).toMatch(/StaticData abandoned \(storage full: ENOSPC/);
    expect(r.report?.decisions.some((d) => /StaticData abandoned \(storage full: ENOSPC.*every page goes over channel-2/.test(d.reason))).toBe(true);
  }, 90_000);

  it('storage unreachable (the mount replaced by an empty read-only one): the same, with the I/O error as the reason', async () => {
    const r = await runScenario(cluster(), 'storage-gone', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
    expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.report?.static).toBeNull();
    expect(r.report?.reason).toMatch(/StaticData abandoned \(storage (unavailable|not writable): E[A-Z]+/);
  }, 90_000);

  it('storage full with PbData sync: the switch cannot commit PbData, so it rolls back, the guest verified on the source', async () => {
    const r = await runScenario(cluster(), 'storage-full-sync', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('rolled-back');
    expect(r.report?.verification).toMatchObject({ ok: true, where: 'source' });
    expect(r.report?.reason).toMatch(/switching failed: storage full: ENOSPC.*rolled back, \S+ runs on net-a/);
  }, 90_000);
});
