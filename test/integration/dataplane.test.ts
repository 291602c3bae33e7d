/**
 * The data plane end to end at 256 MiB: a memcached guest moves from one agent process to
 * another with par-migrate — StaticData saved to shared storage (channel-1) while dirty
 * pages go over channel-2, the target merging both, then stop-and-copy. The source digests
 * its memory at the pause, the target before it resumes: equal digests mean every target
 * page equals the source page at the pause. The guest's own verification then passes on
 * the target.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, migrate, MiB } from '../helpers/migrate';

let controller: TestController;
const agents: FerryProcess[] = [];
const hostA = uniqueHost('dp-a');
const hostB = uniqueHost('dp-b');
const storage = tempDir('dp-storage');

beforeAll(async () => {
  const [c, a, b] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '1GiB' }),
  ]);
  controller = c;
  agents.push(a, b);
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

describe('data plane, 256 MiB memcached guest between two agent processes', () => {
  it('par-migrate: static save ∥ dynamic iterations, merge, stop-and-copy; target = source at the pause', async () => {
    const memoryBytes = 256 * MiB;
    const pageCount = memoryBytes / 4096;
    const vm = `vm-dp-memcached-${Date.now()}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes, workload: 'memcached', seed: 42 });
    const t0 = performance.now();
    const r = await migrate(controller.client, {
      vm,
      source: hostA,
      target: hostB,
      strategy: 'par-migrate',
      options: {
        // memcached dirties faster than this link drains: pre-copy does not converge, the
        // max-iterations valve ends it with stop-and-copy.
        bandwidthBytesPerSec: 64 * MiB,
        // Slow enough that the save (~2 s for 256 MiB) overlaps the dynamic iterations, so
        // the merge meets pages that channel-2 already delivered (skippedNewer).
        storageBandwidthBytesPerSec: 128 * MiB,
        maxIterations: 4,
        digest: true,
      },
    });
    const wallMs = performance.now() - t0;
    console.log(
      JSON.stringify({
        wallMs: Math.round(wallMs),
        outcome: r.outcome,
        reason: r.reason,
        totalTimeMs: r.totalTimeMs,
        downtimeMs: r.downtimeMs,
        bytes: r.bytes,
        static: r.static,
        iterations: r.iterations.map((i) => ({ index: i.index, pages: i.pages, ms: Math.round(i.durationMs), dirtyAfter: i.dirtyAfter })),
        lastDecision: r.decisions[r.decisions.length - 1],
        stopAndCopy: r.stopAndCopy,
        verification: r.verification,
      }),
    );

    expect(r.outcome, r.reason).toBe('completed');
    expect(r.strategy).toBe('par-migrate');
    expect(r.workload).toBe('memcached');
    expect(r.memoryBytes).toBe(memoryBytes);

    // Channel-1: the whole memory went through StaticData, saved and merged.
    expect(r.static).not.toBeNull();
    expect(r.static!.pages).toBe(pageCount);
    expect(r.static!.saveMs).toBeGreaterThan(0);
    expect(r.static!.mergeMs).toBeGreaterThan(0);
    // Static pages the target already held a channel-2 version of were left alone.
    expect(r.static!.skippedNewer).toBeGreaterThan(0);
    expect(r.static!.skippedNewer).toBeLessThan(pageCount);
    expect(r.bytes.storageWrite).toBeGreaterThan(0);
    expect(r.bytes.storageRead).toBeGreaterThan(0);

    // Channel-2 ran in parallel: dynamic iterations, then stop-and-copy at the valve.
    expect(r.iterations.length).toBeGreaterThanOrEqual(1);
    expect(r.iterations.length).toBeLessThanOrEqual(4);
    expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
    const last = r.decisions[r.decisions.length - 1]!;
    expect(last.action).toBe('stop-and-copy');
    expect(r.postcopy).toBeNull();
    expect(r.stopAndCopy!.pages).toBeGreaterThan(0);

    // Every target page equals the source page at the pause.
    expect(r.digests?.source).toMatch(/^[0-9a-f]{64}$/);
    expect(r.digests?.target).toBe(r.digests?.source);
    // And the guest checks itself on the target.
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target', pagesChecked: pageCount });
  }, 180_000);
});
