/**
 * Shared storage that hangs (no answer, no error: a hard NFS mount whose server went away)
 * during a pa-hybrid migration, on the two-host fixture (test/helpers/netns.ts). The storage
 * is served by hangfs (test/fixtures/hangfs.py, FUSE), whose operations block in the kernel
 * on command. Each agent's storage watchdog (src/dataplane/store-io.ts; window
 * FERRY_STORAGE_STALL_MS, 3 s here) abandons the blocked call, and:
 *
 * - save hangs: StaticData is abandoned, every page goes over channel-2, completed, verified;
 * - the target's merge hangs: the same, the reason names the merge;
 * - PbData cannot be written in post-copy: post-copy goes on over channel-2, completed,
 *   "PbData not written (storage hung: …)".
 *
 * Each trial releases the hang and unmounts hangfs (fusermount3 -u) before the next.
 */
import { describe, expect, it } from 'vitest';
import { faultSeed, runScenario, twoHostCluster, type TrialResult } from '../helpers/netns';

process.env.FERRY_STORAGE_STALL_MS = '3000';
const seed = faultSeed('storage-hang.test.ts');
const cluster = twoHostCluster();

function expectCompleted(r: TrialResult): void {
  expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
  expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
}

describe('shared storage hangs (hangfs)', () => {
  it('during the static save: StaticData abandoned (storage hung), every page over channel-2, completed and verified', async () => {
    const r = await runScenario(cluster(), 'storage-hang-save', seed);
    expectCompleted(r);
    expect(r.report?.static).toBeNull();
    // Whichever side meets the hung storage first abandons StaticData: the source's writer, or the target's merge reading it.
    expect(r.report?.reason).toMatch(/StaticData abandoned \((the merge on [^:]+: )?storage hung: .* made no progress for 3000 ms\)/);
    expect(r.report?.decisions.some((d) => /StaticData abandoned \((the merge on [^:]+: )?storage hung.*every page goes over channel-2/.test(d.reason))).toBe(true);
  }, 90_000);

  it("during the target's merge: StaticData abandoned, the reason names the merge, completed and verified", async () => {
    const r = await runScenario(cluster(), 'storage-hang-merge', seed);
    expectCompleted(r);
    expect(r.report?.reason).toMatch(/StaticData abandoned \(the merge on net-b: storage hung: .*static\/chunk-/);
  }, 90_000);

  it('for PbData in post-copy: post-copy goes on over channel-2, completed and verified, the reason recorded', async () => {
    const r = await runScenario(cluster(), 'storage-hang-pbdata', seed);
    expectCompleted(r);
    expect(r.report?.postcopy).toMatchObject({ fellBackToPbData: false, pbdata: 'async' });
    expect(r.report?.reason).toMatch(/PbData not written \(storage hung: .*pbdata/);
  }, 90_000);
});
