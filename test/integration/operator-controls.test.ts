/**
 * Operator controls on a running migration: cancel before the switch rolls back (guest
 * running and verified on the source), cancel after it is refused, force-postcopy and
 * set-bandwidth take effect.
 */
import fs from 'node:fs';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import { inventory } from '../../src/client/migrations';
import { cancelUpdate, forcePostcopyUpdate, progressQuery, setBandwidthUpdate } from '../../src/workflows/messages';
import type { MigrationReport } from '../../src/workflows/report';
import { createVm, MiB, startMigration, untilProgress } from '../helpers/migrate';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';

let controller: TestController;
const agents: FerryProcess[] = [];
const hostA = uniqueHost('op-a');
const hostB = uniqueHost('op-b');
const storage = tempDir('op-storage');

beforeAll(async () => {
  const [c, a, b] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage }),
    startAgentProcess(hostB, { storageDir: storage }),
  ]);
  controller = c;
  agents.push(a, b);
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});


async function hostVms(host: string): Promise<{ name: string; state: string }[]> {
  const inv = await inventory(controller.client, [host]);
  const h = inv.hosts[0];
  if (!h?.ok) throw new Error(`inventory of ${host} failed`);
  return h.facts.vms;
}

describe('operator controls', () => {
  it('cancel before the switch rolls back: the guest keeps running, verified, on the source', async () => {
    const vm = 'op-cancel-early';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'memcached', seed: 3 });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, strategy: 'pa-hybrid', options: { maxIterations: 50, maxDowntimeMs: 1, switchRule: 'paper' } });
    await untilProgress(handle, (p) => p.phase === 'precopy' && p.iteration >= 2);
    await handle.executeUpdate(cancelUpdate, { args: [{ by: 'alice', reason: 'change window closed' }] });
    const r = (await handle.result()) as MigrationReport;
    expect(r.outcome).toBe('rolled-back');
    expect(r.reason).toMatch(/cancelled by alice \(change window closed\) during precopy; rolled back, op-cancel-early runs on/);
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'source' });
    expect(await hostVms(hostA)).toEqual(expect.arrayContaining([expect.objectContaining({ name: vm, state: 'running' })]));
    expect((await hostVms(hostB)).some((v) => v.name === vm)).toBe(false);
    // StaticData of the cancelled migration is gone from shared storage.
    expect(fs.readdirSync(storage).filter((d) => d.includes(vm))).toEqual([]);
  });

  it('cancel after the switch is refused with a clear message, and the migration completes', async () => {
    const vm = 'op-cancel-late';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'kernel-compile', seed: 4 });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, strategy: 'postcopy', options: { bandwidthBytesPerSec: 8 * MiB } });
    await untilProgress(handle, (p) => p.switched);
    const err = await handle.executeUpdate(cancelUpdate, { args: [{ by: 'bob' }] }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
    expect((err as WorkflowUpdateFailedError).cause?.message).toMatch(new RegExp(`refused: ${vm} already runs on ${hostB}.*only moves forward`));
    const r = (await handle.result()) as MigrationReport;
    expect(r.outcome).toBe('completed');
    expect(r.verification?.ok).toBe(true);
    expect(await hostVms(hostB)).toEqual(expect.arrayContaining([expect.objectContaining({ name: vm, state: 'running' })]));
  });

  it('force-postcopy switches at the next boundary; set-bandwidth re-caps the link', async () => {
    const vm = 'op-force';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'memcached', seed: 5 });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, strategy: 'as-hybrid', options: { maxIterations: 50, maxDowntimeMs: 1, switchRule: 'paper' } });
    await untilProgress(handle, (p) => p.phase === 'precopy' && p.iteration >= 1);
    const before = (await handle.query(progressQuery)).iteration;
    // Raise the cap (a lower one makes memcached's rounds diverge, and as-hybrid would switch
    // before the test forces it).
    const bw = await handle.executeUpdate(setBandwidthUpdate, { args: [48 * MiB] });
    expect(bw.bandwidthBytesPerSec).toBe(48 * MiB);
    await untilProgress(handle, (p) => p.iteration >= before + 2, 150_000);
    await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] });
    const r = (await handle.result()) as MigrationReport;
    expect(r.outcome).toBe('completed');
    expect(r.decisions.find((d) => d.action === 'switch-to-postcopy')?.reason).toMatch(/forced by carol/);
    expect(r.postcopy).not.toBeNull();
    const rate = (i: MigrationReport['iterations'][number]) => i.bytes / (i.durationMs / 1000);
    const bulk = r.iterations[0]!;
    const after = r.iterations.slice(before + 1).filter((i) => i.bytes > 4 * MiB);
    // Every round is paced by the cap it ran under (48 MiB/s at most, the bucket's burst aside).
    for (const i of after) expect(rate(i)).toBeLessThan(48 * MiB * 1.15);
    // A machine that kept the bulk round at the old 32 MiB/s cap can move pages faster than
    // that: then the rounds after the update must have. A CPU-starved machine (seen beside a
    // CPU hog: rounds could not exceed 33 MiB/s) shows nothing about the new cap that way.
    if (rate(bulk) >= 0.9 * 32 * MiB) for (const i of after) expect(rate(i), `round ${i.index}`).toBeGreaterThan(33 * MiB);
    const refused = await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Error);
  }, 240_000);

  it('rejects a bad bandwidth with a clear message', async () => {
    const vm = 'op-badbw';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 6 });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, strategy: 'precopy', options: { maxIterations: 10, bandwidthBytesPerSec: 16 * MiB } });
    await untilProgress(handle, (p) => p.phase === 'precopy');
    const e = await handle.executeUpdate(setBandwidthUpdate, { args: [100] }).catch((x: unknown) => x);
    expect((e as WorkflowUpdateFailedError).cause?.message).toMatch(/at least 64KiB\/s/);
    const r = (await handle.result()) as MigrationReport;
    expect(r.outcome).toBe('completed');
  });
});
