/**
 * A host agent cut off from Temporal: its control link (the veth from its network namespace
 * to the root namespace, where the dev server's relay listens; test/helpers/netns.ts) goes
 * down while the migration and storage links stay up. Scenarios of src/bench/faults
 * (control-*); outcomes judged by the report and by asking both agents where the VM runs.
 *
 * - down 5 s mid-iteration (either agent): its activities run on, their heartbeats and
 *   results wait for the link; the migration completes, verified;
 * - the target's, for good before the switch: the step that needs it finds no worker within
 *   the migration's agent timeout (`--agent-timeout 8s` here), the migration rolls back, the
 *   guest verified on the source;
 * - the source's, for good after the switch: the target has the guest and the pages arrive
 *   over channel-2; the migration finishes forward, verified on the target, and reports that
 *   the source did not confirm releasing its paused copy.
 */
import { describe, expect, it } from 'vitest';
import { faultSeed, runScenario, twoHostCluster } from '../helpers/netns';

const seed = faultSeed('control-link.test.ts');
const cluster = twoHostCluster();

describe("an agent's link to Temporal cut", () => {
  it('down 5 s mid-iteration: recovers, completed and verified', async () => {
    const r = await runScenario(cluster(), 'control-blip', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
    expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.fault).toMatch(/control link of the (source|target) agent down for 5\.0 s/);
  }, 90_000);

  it("the target's, for good before the switch: rolled back, the guest verified on the source", async () => {
    const r = await runScenario(cluster(), 'control-dead-before', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('rolled-back');
    expect(r.report?.verification).toMatchObject({ ok: true, where: 'source' });
    expect(r.report?.reason).toMatch(/rolled back, \S+ runs on net-a/);
  }, 120_000);

  it("the source's, for good after the switch: finishes forward, verified on the target", async () => {
    const r = await runScenario(cluster(), 'control-dead-after', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
    expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.report?.reason).toMatch(/net-a did not confirm releasing its paused copy/);
  }, 120_000);
});
