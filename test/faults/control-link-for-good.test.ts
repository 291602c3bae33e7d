/**
 * A host agent's link to Temporal (its control link, test/helpers/netns.ts) down for good.
 * Scenarios control-dead-* of src/bench/faults:
 *
 * - the target's, before the switch: the step that needs it finds no worker (30 s to
 *   start), the migration rolls back, the guest verified on the source;
 * - the source's, after the switch: the target has the guest and the pages arrive over
 *   channel-2; the migration finishes forward, verified on the target, and reports that
 *   the source did not confirm releasing its paused copy.
 *
 * Each waits out Temporal's timeouts (60–100 s a trial), more than the default test run
 * affords: they run with FERRY_FAULTS_LONG=1 (and in `ferry bench --suite faults`).
 */
import { describe, expect, it } from 'vitest';
import { faultSeed, runScenario, twoHostCluster } from '../helpers/netns';

const long = process.env.FERRY_FAULTS_LONG === '1';
const seed = faultSeed('control-link-for-good.test.ts');
const cluster = long ? twoHostCluster() : () => { throw new Error('FERRY_FAULTS_LONG=1 not set'); };

describe.runIf(long)("an agent's link to Temporal cut for good (FERRY_FAULTS_LONG=1)", () => {
  it("the target's, for good before the switch: rolled back, the guest verified on the source", async () => {
    const r = await runScenario(cluster(), 'control-dead-before', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('rolled-back');
    expect(r.report?.verification).toMatchObject({ ok: true, where: 'source' });
    expect(r.report?.reason).toMatch(/rolled back, \S+ runs on net-a/);
  }, 150_000);

  it("the source's, for good after the switch: finishes forward, verified on the target", async () => {
    const r = await runScenario(cluster(), 'control-dead-after', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
    expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.report?.reason).toMatch(/net-a did not confirm releasing its paused copy/);
  }, 150_000);
});
