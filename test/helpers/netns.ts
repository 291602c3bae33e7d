/**
 * The two-host network fixture for vitest: the source and target agents in network
 * namespaces of their own, joined by a migration link and a storage link (veth, shaped with
 * tc), each with a control link to the root namespace where the dev server (through a TCP
 * relay on the control address) and the controller run; shared storage is a tmpfs both see.
 * The fixture itself lives in src/support (fault-cluster.ts, netns.ts); the scenarios are
 * those of the fault bench (src/bench/faults.ts).
 *
 * Registers beforeAll/afterAll: the cluster is torn down even when a test fails; leftovers
 * of a crashed earlier run (namespaces `ferryt-<dead pid>-…`, their processes, tmpfs mounts)
 * are removed first. Without root or network namespaces, every test of the file FAILS with
 * the reason (beforeAll throws); nothing is skipped.
 */
import { afterAll, beforeAll, inject } from 'vitest';
import { scenarioById, type TrialResult } from '../../src/bench/faults';
import { startFaultCluster, type FaultCluster } from '../../src/support/fault-cluster';
import { prng, trialSeed } from '../../src/support/prng';

export { type TrialResult } from '../../src/bench/faults';
export { type FaultCluster } from '../../src/support/fault-cluster';
export { createTwoHostNet, cleanupStaleNets, netnsUnavailable, type TwoHostNet } from '../../src/support/netns';

/** FERRY_FAULT_SEED or a fresh one; printed so a failing run can be repeated. */
export function faultSeed(file: string): number {
  const seed = Number(process.env.FERRY_FAULT_SEED ?? Date.now() % 100_000);
  console.log(`${file}: fault timing seed FERRY_FAULT_SEED=${seed}`);
  return seed;
}

/** A net cluster for this test file. Call at the top level; use the getter inside tests. */
export function twoHostCluster(): () => FaultCluster {
  let cluster: FaultCluster | undefined;
  beforeAll(async () => {
    cluster = await startFaultCluster({ kind: 'net', temporalBin: inject('temporalBin'), log: (l) => console.log(l) });
  }, 120_000);
  afterAll(async () => {
    await cluster?.stop();
  }, 60_000);
  return () => {
    if (!cluster) throw new Error('the two-host cluster did not start (see the beforeAll error)');
    return cluster;
  };
}

/**
 * One trial of a scenario of src/bench/faults.ts with its seeded timing; a trial whose
 * fault did not land where intended (`missed`) is run again with the next trial seed.
 */
export async function runScenario(cluster: FaultCluster, id: string, seed: number, attempts = 2): Promise<TrialResult> {
  const s = scenarioById(id);
  let r: TrialResult | undefined;
  for (let t = 1; t <= attempts; t++) {
    const ts = trialSeed(seed, id, t);
    r = await s.run({ cluster, random: prng(ts), log: (l) => console.log(l) }, t, ts);
    console.log(`${id} #${t} (trial seed ${ts}): ${r.verdict}${r.recoverMs !== null ? ` in ${(r.recoverMs / 1000).toFixed(1)} s` : ''} — ${r.fault} — ${r.detail}`);
    if (r.verdict !== 'missed') break;
  }
  return r!;
}
