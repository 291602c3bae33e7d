/**
 * par-migrate and pa-hybrid on real QEMU guests (TCG), stock QEMU: the source QEMU migrates into
 * its agent's relay, which sends the bulk pass to StaticData on shared storage and the rest to the
 * target agent's relay over the migration network; the target's relay merges StaticData into the
 * target QEMU's stream without overwriting newer pages. Two agent processes on loopback sharing a
 * storage directory, the real workflow on the real dev server; the guest verifies its own pages.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationReport } from '../../src/workflows/report';
import { progressQuery } from '../../src/workflows/messages';
import { startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, destroyWhenDone, migrate, MiB, startMigration } from '../helpers/migrate';
import { startQemuAgent, stopQemuAgent, testGuest, type QemuAgent, expectVerifiedOnTarget } from '../helpers/qemu';
import { mountHangFs } from '../../src/bench/faults/hangfs';

let controller: TestController;
let a: QemuAgent;
let b: QemuAgent;
const hostA = uniqueHost('qpa');
const hostB = uniqueHost('qpb');
const storage = tempDir('qemu-par-storage');

beforeAll(async () => {
  await testGuest();
  [controller, a, b] = await Promise.all([
    startTestController(),
    startQemuAgent(hostA, { migrationAddr: '127.0.0.1', storageDir: storage }),
    startQemuAgent(hostB, { migrationAddr: '127.0.0.1', storageDir: storage }),
  ]);
}, 600_000);

afterAll(async () => {
  await Promise.all([stopQemuAgent(a), stopQemuAgent(b)]);
  await controller?.stop();
});


/** The bulk pass went to StaticData and was merged (a converging guest: the migration network carried less than its RAM). */
function expectStaticData(r: MigrationReport, memoryBytes: number | null): void {
  expect(r.static).not.toBeNull();
  expect(r.static!.pages).toBeGreaterThan(0);
  expect(r.bytes.storageWrite).toBeGreaterThan(0);
  expect(r.bytes.storageRead).toBeGreaterThan(0);
  expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
  if (memoryBytes !== null) expect(r.bytes.migrationNetwork).toBeLessThan(memoryBytes);
  // StaticData holds every page QEMU's bulk pass sent first, zero pages aside.
  expect(r.bytes.storageWrite).toBeGreaterThanOrEqual(r.static!.pages * 4096 * 0.5);
  // Cleaned up after the migration.
  expect(fs.existsSync(path.join(storage, r.id))).toBe(false);
}

/**
 * A pa-hybrid migration 1.5 s into its bulk pass: a slow storage link (4 MiB/s) keeps QEMU's
 * bulk pass going into StaticData for seconds, long enough to break something in it.
 */
async function inTheBulkPass(vm: string, source: string, target: string) {
  const handle = await startMigration(controller.client, {
    vm,
    source,
    target,
    strategy: 'pa-hybrid',
    options: { bandwidthBytesPerSec: 32 * MiB, storageBandwidthBytesPerSec: 4 * MiB, maxIterations: 30, maxDowntimeMs: 300 },
  });
  const deadline = Date.now() + 120_000;
  for (;;) {
    const p = (await handle.query(progressQuery).catch(() => null)) as { phase?: string } | null;
    if (p?.phase === 'precopy') break;
    if (Date.now() > deadline) throw new Error('pre-copy never started');
    await new Promise((res) => setTimeout(res, 100));
  }
  await new Promise((res) => setTimeout(res, 1500));
  return handle;
}

describe('par-migrate on QEMU through the agents’ relays', () => {
  it('par-migrate on a converging guest: StaticData merged, then stop-and-copy; verified by the guest on the target', async () => {
    const vm = 'qpar-conv';
    const mem = 128 * MiB;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: mem, workload: 'converging', seed: 5 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, {
      vm,
      source: hostA,
      target: hostB,
      strategy: 'par-migrate',
      options: { bandwidthBytesPerSec: 32 * MiB, storageBandwidthBytesPerSec: 400 * MiB, maxIterations: 30, maxDowntimeMs: 300 },
    });
    expectVerifiedOnTarget(r);
    expect(r.decisions.at(-1)?.action).toBe('stop-and-copy');
    expectStaticData(r, mem);
  }, 300_000);

  it('pa-hybrid on a write-intensive guest: switches to post-copy with the λ reason; verified by the guest on the target', async () => {
    const vm = 'qpar-wi';
    const mem = 128 * MiB;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: mem, workload: 'write-intensive', seed: 9 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, {
      vm,
      source: hostA,
      target: hostB,
      strategy: 'pa-hybrid',
      options: { bandwidthBytesPerSec: 32 * MiB, storageBandwidthBytesPerSec: 400 * MiB, maxIterations: 30, maxDowntimeMs: 300 },
    });
    expectVerifiedOnTarget(r);
    const sw = r.decisions.find((d) => d.action === 'switch-to-postcopy');
    expect(sw?.reason).toMatch(/λ=\[.*\], \d of 3 > 1, mean|no progress: next round sends \d+ pages|not worth another round/);
    expect(r.postcopy).not.toBeNull();
    // Post-copy's background pages went through PbData on shared storage.
    expect(r.postcopy!.pbdata).toBe('async');
    expect(r.postcopy!.pbdataPages).toBeGreaterThan(0);
    // A write-intensive guest dirties more than its RAM while it migrates: no bound on the total here.
    expectStaticData(r, null);
  }, 300_000);

  it('the source agent is killed during the bulk pass: rolled back, the guest runs on the source, no StaticData merged', async () => {
    const host = uniqueHost('qpk');
    let src = await startQemuAgent(host, { migrationAddr: '127.0.0.1', storageDir: storage });
    try {
      const vm = 'qpar-kill';
      await createVm(controller.client, host, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 3 });
      // A slow storage link keeps the bulk pass going for seconds: long enough to kill the agent in it.
      const handle = await inTheBulkPass(vm, host, hostB);
      const midId = fs.readdirSync(storage).find((d) => fs.existsSync(path.join(storage, d, 'static')));
      src.proc.kill('SIGKILL');
      // QEMU outlives its agent; a new agent on the same state directory takes the guest over.
      src = await startQemuAgent(host, { migrationAddr: '127.0.0.1', storageDir: storage, stateDir: src.stateDir });
      const r = (await handle.result()) as MigrationReport;
      expect(r.outcome, r.reason).toBe('rolled-back');
      expect(r.reason).toMatch(new RegExp(`rolled back, ${vm} runs on ${host}`));
      expect(r.verification).toMatchObject({ ok: true, where: 'source' });
      // The half-written StaticData was never committed, so never merged (and it is gone now).
      expect(r.static?.pages ?? 0).toBe(0);
      if (midId) expect(fs.existsSync(path.join(storage, midId, 'static', 'manifest.json'))).toBe(false);
    } finally {
      await stopQemuAgent(src);
    }
  }, 400_000);

  it('shared storage hangs during the bulk pass (hangfs): the watchdog abandons StaticData, rolled back, the guest verified on the source', async () => {
    // QEMU sends its bulk pass once, into the relay: pages already diverted to hung storage
    // cannot be asked for again, so the only safe end is the source (as on a full disk).
    const dir = tempDir('qemu-hang-storage');
    const h = await mountHangFs(dir);
    const [hs, ht] = [uniqueHost('qhs'), uniqueHost('qht')];
    const agents: QemuAgent[] = [];
    try {
      agents.push(
        ...(await Promise.all([hs, ht].map((host) => startQemuAgent(host, { migrationAddr: '127.0.0.1', storageDir: dir, extraArgs: ['--storage-stall', '3s'] })))),
      );
      const vm = 'qpar-hang';
      await createVm(controller.client, hs, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 4 });
      // (its QEMU is killed with its agents below.) In the bulk pass, every StaticData write
      // blocks (no answer, no error), as on a hard NFS mount whose server went away.
      const handle = await inTheBulkPass(vm, hs, ht);
      h.hang('^(create|open|write|flush|fsync|release|rename) .*/static/');
      const r = (await handle.result()) as MigrationReport;
      console.log(`qpar-hang: ${r.outcome} in ${r.totalTimeMs} ms: ${r.reason}`);
      expect(r.outcome, r.reason).toBe('rolled-back');
      expect(r.reason).toMatch(/storage hung|made no progress/);
      expect(r.reason).toMatch(new RegExp(`rolled back, ${vm} runs on ${hs}`));
      expect(r.verification).toMatchObject({ ok: true, where: 'source' });
      expect(r.postcopy).toBeNull();
    } finally {
      h.release();
      await Promise.all(agents.map((a) => stopQemuAgent(a)));
      await h.unmount();
    }
  }, 300_000);
});
