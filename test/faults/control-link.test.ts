/**
 * A host agent cut off from Temporal: its control link (the veth from its network namespace
 * to the root namespace, where the dev server's relay listens; test/helpers/netns.ts) goes
 * down while the migration and storage links stay up. Scenarios of src/bench/faults
 * (control-*); outcomes judged by the report and by asking both agents where the VM runs.
 *
 * - down 5 s mid-iteration (either agent): its activities run on, their heartbeats and
 *   results wait for the link; the migration completes, verified;
 * - down for good: control-link-for-good.test.ts.
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

});
