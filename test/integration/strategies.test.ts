/**
 * Every strategy of MECHANISM.md, through the real workflow on the real server, between two
 * agent processes that share a storage directory.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import { STRATEGIES, mayPostcopy, type StrategyName } from '../../src/policy/types';
import type { MigrationReport } from '../../src/workflows/report';
import { maybeRecordHistory } from '../helpers/history';
import { createVm, destroyWhenDone, migrate, MiB } from '../helpers/migrate';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';

let controller: TestController;
const agents: FerryProcess[] = [];
const hostA = uniqueHost('st-a');
const hostB = uniqueHost('st-b');
const storage = tempDir('st-storage');
let seq = 0;

beforeAll(async () => {
  const [c, a, b] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '4GiB' }),
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '4GiB' }),
  ]);
  controller = c;
  agents.push(a, b);
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

async function run(
  strategy: StrategyName,
  workload: string,
  opts: { memory?: number; maxIterations?: number; record?: string; rate?: number; bandwidthMiB?: number; maxDowntimeMs?: number } = {},
): Promise<MigrationReport> {
  const vm = `vm-${strategy}-${workload}-${++seq}`;
  await createVm(controller.client, hostA, { name: vm, memoryBytes: (opts.memory ?? 64) * MiB, workload, seed: 11 + seq, rate: opts.rate });
  destroyWhenDone(controller.client, vm, [hostB, hostA]);
  const report = await migrate(controller.client, {
    vm,
    source: hostA,
    target: hostB,
    strategy,
    options: { maxIterations: opts.maxIterations ?? 8, digest: true, ...(opts.bandwidthMiB ? { bandwidthBytesPerSec: opts.bandwidthMiB * MiB } : {}), ...(opts.maxDowntimeMs ? { maxDowntimeMs: opts.maxDowntimeMs } : {}) },
  });
  if (opts.record) await maybeRecordHistory(controller.client, `migrate-${vm}`, opts.record);
  return report;
}

function expectComplete(r: MigrationReport): void {
  expect(r.outcome, r.reason).toBe('completed');
  expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
  expect(r.verification!.pagesChecked).toBe(r.memoryBytes / r.pageSize);
  expect(r.bytes.total).toBe(r.bytes.migrationNetwork + r.bytes.storageWrite);
  expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
  expect(r.totalTimeMs).toBeGreaterThan(0);
  // The guest was paused (for the stop-and-copy, or at the switch), within the migration, and
  // for at least the final round's transfer when it ended with one.
  expect(r.downtimeMs).toBeGreaterThan(0);
  expect(r.downtimeMs!).toBeLessThanOrEqual(r.totalTimeMs);
  if (r.stopAndCopy) expect(r.downtimeMs!).toBeGreaterThanOrEqual(r.stopAndCopy.sendMs);
  const last = r.decisions[r.decisions.length - 1];
  if (last?.action === 'stop-and-copy') {
    // Every target page equals the source page at the pause.
    expect(r.digests?.target).toBeTruthy();
    expect(r.digests?.target).toBe(r.digests?.source);
    expect(r.postcopy).toBeNull();
    // Chosen by the test after rounds with a measured gap: it counted the pages dirtied before the pause.
    if (/pages take/.test(last.reason) && r.iterations.length >= 2) expect(last.reason).toMatch(/dirtied in the \d+ ms before the pause/);
  } else {
    expect(last?.action).toBe('switch-to-postcopy');
    expect(r.postcopy).not.toBeNull();
    expect(r.postcopyDurationMs).toBeGreaterThanOrEqual(0);
  }
}

describe.each(['memcached', 'kernel-compile'])('every strategy under %s', (workload) => {
  // Each strategy's path (rounds, StaticData, switch, post-copy, verification) is the same at
  // any size: a 16 MiB guest takes a quarter of the time of a 64 MiB one on the same link.
  it.each([...STRATEGIES])('%s completes and verifies', async (strategy) => {
    const r = await run(strategy, workload, { memory: 16, record: workload === 'memcached' && (strategy === 'pa-hybrid' || strategy === 'precopy') ? strategy : undefined });
    expectComplete(r);
    expect(r.strategy).toBe(strategy);
    expect(r.workload).toBe(workload);
    if (strategy === 'par-migrate' || strategy === 'pa-hybrid') {
      expect(r.static).not.toBeNull();
      expect(r.static!.pages).toBe(r.memoryBytes / r.pageSize);
      expect(r.bytes.storageWrite).toBeGreaterThan(0);
    } else {
      expect(r.static).toBeNull();
    }
    if (!mayPostcopy(strategy)) expect(r.postcopy).toBeNull();
    if (strategy === 'postcopy') expect(r.iterations).toEqual([]);
  });
});

describe('behaviour the paper predicts', () => {
  it('precopy on memcached hits max-iterations and reports its long downtime honestly', async () => {
    // 32 MiB: memcached's hot set is still 2/3 of the guest, so the final round alone takes
    // twice the 300 ms budget at 32 MiB/s.
    const r = await run('precopy', 'memcached', { memory: 32, maxIterations: 6 });
    expectComplete(r);
    const last = r.decisions[r.decisions.length - 1]!;
    expect(last.action).toBe('stop-and-copy');
    expect(last.reason).toMatch(/max iterations \(6\) reached/);
    expect(r.iterations).toHaveLength(6);
    // The downtime is what it was: at least the final round's transfer, above the budget.
    expect(r.downtimeMs!).toBeGreaterThanOrEqual(r.stopAndCopy!.sendMs);
    expect(r.downtimeMs!).toBeGreaterThan(300);
  });

  it('pa-hybrid on memcached switches to post-copy when pre-copy stops converging, and says why', async () => {
    // λ > 1 holds while the dirty set grows towards the workload's plateau (a stationary
    // workload reaches one: then λ ≈ 1 and only the max-iterations valve switches). The rule
    // is only consulted once the static merge is done, so the test slows the clock of the
    // experiment (a quarter of memcached's rate on a quarter of the link): the same
    // iterations, longer, and the merge lands inside the growth phase even on a loaded
    // machine with slow storage. The rounds' shape does not depend on the guest's size (at a
    // fixed rate and link, writes per cached page per round stay the same), so 64 MiB is the
    // 128 MiB experiment at half its duration, still twice as slow as memcached at full speed.
    const r = await run('pa-hybrid', 'memcached', { memory: 64, rate: 10_000, bandwidthMiB: 8 });
    expectComplete(r);
    const sw = r.decisions.find((d) => d.action === 'switch-to-postcopy');
    // ferry's rule (the default): the paper's diverge test while the set grows, or — when the
    // merge lands after the growth phase (a loaded machine) — no progress on the plateau.
    expect(sw?.reason).toMatch(/λ=\[\d+\.\d+, \d+\.\d+, \d+\.\d+\], \d of 3 > 1, mean \d+\.\d+ ≥ 1|no progress: next round sends \d+ pages .* leaves ~\d+|not worth another round: next round sends \d+ pages/);
    expect(r.postcopy!.pbdata).toBe('async');
  });

  it('scenario-bursty: as-hybrid completes without switching, hybrid-1 switches', async () => {
    // A budget a loaded machine can keep: ferry's rule switches when the measured pause
    // cannot fit the budget, and this test is about bursts, not about the budget.
    const as = await run('as-hybrid', 'scenario-bursty', { maxDowntimeMs: 2000 });
    expectComplete(as);
    // The whole 64 MiB guest fits the 2 s budget at the link's 32 MiB/s. A machine too busy to
    // move pages at even half that rate (seen: 3 MiB/s beside a CPU hog and other suites)
    // measures a budget the rest cannot fit, and ferry's rule rightly switches: then the
    // switch must say so. Otherwise the bursts alone must not make it switch.
    const sent = as.iterations.reduce((a, i) => a + i.bytes, 0);
    const ms = as.iterations.reduce((a, i) => a + i.durationMs, 0);
    const starved = ms > 0 && sent / (ms / 1000) < 16 * MiB;
    const sw = as.decisions.find((d) => d.action === 'switch-to-postcopy');
    if (!starved) {
      expect(sw, JSON.stringify(as.decisions)).toBeUndefined();
      expect(as.postcopy).toBeNull();
    } else if (sw) {
      expect(sw.reason).toMatch(/above the budget \(\d+ pages\)|not worth another round/);
    }
    const h1 = await run('hybrid-1', 'scenario-bursty');
    expectComplete(h1);
    expect(h1.decisions.some((d) => d.action === 'switch-to-postcopy')).toBe(true);
    expect(h1.postcopy).not.toBeNull();
  });
});
