/**
 * Real QEMU guests (TCG) between two `--driver qemu` agent processes on loopback, through the
 * real workflow on the real dev server. The guest's workload verifies its own pages and says
 * so on its serial console; the report's verification is that verdict, read on the target.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTROL_QUEUE } from '../../src/common/names';
import { parseSerial, qemuGuestArgs } from '../../src/hypervisor/qemu/guest-image';
import type { MigrationReport } from '../../src/workflows/report';
import { startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, destroyWhenDone, migrate, MiB, startMigration } from '../helpers/migrate';
import { cancelUpdate, progressQuery } from '../../src/workflows/messages';
import { killQemusUnder, serialOf, startQemuAgent, stopQemuAgent, testGuest, type QemuAgent, expectVerifiedOnTarget } from '../helpers/qemu';
import { maybeRecordHistory } from '../helpers/history';

let controller: TestController;
let a: QemuAgent;
let b: QemuAgent;
const hostA = uniqueHost('qa');
const hostB = uniqueHost('qb');

beforeAll(async () => {
  await testGuest();
  [controller, a, b] = await Promise.all([startTestController(), startQemuAgent(hostA, { migrationAddr: '127.0.0.1' }), startQemuAgent(hostB, { migrationAddr: '127.0.0.1' })]);
}, 600_000);

const outside = tempDir('qemu-outside');

afterAll(async () => {
  killQemusUnder(outside);
  await Promise.all([stopQemuAgent(a), stopQemuAgent(b)]);
  await controller?.stop();
});


describe('QEMU guests', () => {
  it('precopy converges on a converging load; the guest verifies its pages on the target', async () => {
    const vm = 'qemu-pre-1';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'converging', seed: 7 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 64 * MiB, maxIterations: 30, maxDowntimeMs: 300 } });
    expectVerifiedOnTarget(r);
    expect(r.iterations.length).toBeGreaterThanOrEqual(1);
    const last = r.decisions[r.decisions.length - 1]!;
    expect(last.action).toBe('stop-and-copy');
    expect(last.reason).not.toMatch(/max iterations/);
    // Paused for the stop-and-copy (source STOP to target RESUME), within the migration; the
    // stop-and-copy is reported, and QEMU's own figure for it (sendMs) is within the migration.
    expect(r.downtimeMs).toBeGreaterThan(0);
    expect(r.downtimeMs!).toBeLessThanOrEqual(r.totalTimeMs);
    expect(r.stopAndCopy).not.toBeNull();
    expect(r.stopAndCopy!.sendMs).toBeLessThanOrEqual(r.totalTimeMs);
    expect(r.postcopy).toBeNull();
  }, 300_000);

  it('as-hybrid switches to post-copy on a write-intensive load, with the λ reason', async () => {
    const vm = 'qemu-as-1';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 9 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, driver: 'qemu', strategy: 'as-hybrid', options: { bandwidthBytesPerSec: 32 * MiB, maxIterations: 30, maxDowntimeMs: 300 } });
    await maybeRecordHistory(controller.client, `migrate-${vm}`, 'qemu-as-hybrid');
    expectVerifiedOnTarget(r);
    const sw = r.decisions.find((d) => d.action === 'switch-to-postcopy');
    // ferry's rule (the default): the paper's diverge test, or no progress / not worth another pass.
    expect(sw?.reason).toMatch(/λ=\[.*\], \d of 3 > 1, mean|no progress: next round sends \d+ pages|not worth another round/);
    expect(r.postcopyDurationMs).toBeGreaterThan(0);
    expect(r.postcopy).not.toBeNull();
    // The guest's stall in post-copy, as the target's QEMU measured it (postcopy-blocktime).
    const bt = r.postcopy!.blocktimeMs!;
    expect(bt.perVcpuMs).toHaveLength(1); // the test guest has one vCPU
    for (const ms of bt.perVcpuMs) expect(ms).toBeGreaterThanOrEqual(bt.allVcpusMs);
    if (r.postcopy!.faults > 0) expect(bt.allVcpusMs).toBeGreaterThan(0);
    expect(bt.allVcpusMs).toBeLessThanOrEqual(r.postcopyDurationMs! + 1000);
  }, 300_000);

  it('a cancel during pre-copy rolls back: the guest runs on the source and verifies there', async () => {
    const vm = 'qemu-cancel-1';
    // A hot set of half the guest rewritten as fast as the vCPU goes: pre-copy never converges,
    // so the cancel lands during its passes.
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'hot-set', seed: 12 });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 32 * MiB } });
    for (let i = 0; i < 600; i++) {
      const p = await handle.query(progressQuery).catch(() => null);
      if (p && p.iteration >= 2) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await handle.executeUpdate(cancelUpdate, { args: [{ by: 'test', reason: 'change window closed' }] });
    const r = (await handle.result()) as MigrationReport;
    expect(r.outcome, r.reason).toBe('rolled-back');
    expect(r.reason).toMatch(/cancelled by test \(change window closed\) during precopy; rolled back, qemu-cancel-1 runs on/);
    expect(r.verification).toMatchObject({ ok: true, where: 'source' });
    expect(serialOf(a, vm)).toContain('FERRY verify ok');
    // The target's incoming QEMU is gone; the source still has the guest.
    expect(fs.existsSync(path.join(b.stateDir, vm))).toBe(false);
    await controller.client.workflow.execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-destroy-${randomUUID()}`, args: [{ host: hostA, op: 'destroy', name: vm }] });
  }, 240_000);

  it('attaches a QEMU it did not launch (by its QMP socket), then migrates it with its own command line', async () => {
    const img = await testGuest();
    const vm = 'qemu-att-1';
    const dir = path.join(outside, vm);
    fs.mkdirSync(dir, { recursive: true });
    const serial = path.join(dir, 'serial.log');
    const qmp = path.join(dir, 'monitor.sock');
    execFileSync('qemu-system-x86_64', [
      ...qemuGuestArgs(img, { memoryMiB: 128, wss: 16, rate: 1024, verifyMs: 1000, seed: 3, serialLog: serial }),
      '-qmp', `unix:${qmp},server=on,wait=off`, '-pidfile', path.join(dir, 'qemu.pid'), '-daemonize',
    ]);
    for (let i = 0; i < 600 && !parseSerial(fs.existsSync(serial) ? fs.readFileSync(serial, 'utf8') : '').ready; i++) await new Promise((r) => setTimeout(r, 100));
    const res = (await controller.client.workflow.execute('vmCommandWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `vm-attach-${randomUUID()}`,
      args: [{ host: hostA, op: 'attach', name: vm, qmpPath: qmp, serialPath: serial }],
    })) as { vm: { memoryBytes: number; workload: string } };
    expect(res.vm).toMatchObject({ memoryBytes: 128 * MiB, workload: 'external' });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 64 * MiB } });
    expectVerifiedOnTarget(r);
    expect(r.verification!.method).toMatch(/guest self-check/);
  }, 240_000);
});

describe('QEMU guests outlive their agent', () => {
  it('an agent restarted on the same state directory re-attaches to the running guest', async () => {
    const host = uniqueHost('qre');
    const first = await startQemuAgent(host, { migrationAddr: '127.0.0.1' });
    let second: QemuAgent | undefined;
    try {
      await createVm(controller.client, host, { name: 'qemu-re-1', memoryBytes: 128 * MiB, workload: 'idle', seed: 4 });
      await first.proc.stop();
      second = await startQemuAgent(host, { migrationAddr: '127.0.0.1', stateDir: first.stateDir });
      expect(second.proc.output()).toContain('re-attached to running QEMU guest(s) qemu-re-1');
      const res = (await controller.client.workflow.execute('inventoryWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `inv-${randomUUID()}`, args: [{ hosts: [host], timeoutMs: 10_000 }] })) as {
        hosts: { ok: boolean; facts: { vms: { name: string; state: string; driver: string }[] } }[];
      };
      expect(res.hosts[0]!.facts.vms).toEqual([expect.objectContaining({ name: 'qemu-re-1', state: 'running', driver: 'qemu' })]);
    } finally {
      await stopQemuAgent(second ?? first);
    }
  }, 120_000);
});

describe('ferry demo --driver qemu', () => {
  it('runs the main job on real QEMU guests: as-hybrid, verified by the guest on host-b', async () => {
    const bin = path.resolve('bin/ferry.mjs');
    const cwd = tempDir('demo-qemu'); // its .ferry state goes here
    const env = { ...process.env };
    delete env.FERRY_TEMPORAL_ADDRESS; // the demo starts its own dev server
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin, 'demo', '--driver', 'qemu', '--json'], { cwd, env, maxBuffer: 64 << 20, timeout: 240_000 }, (err, out, errOut) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout: String(out), stderr: String(errOut) }),
      );
    });
    expect(code, stderr.slice(-2000)).toBe(0);
    const r = JSON.parse(stdout) as MigrationReport;
    expect(r).toMatchObject({ strategy: 'as-hybrid', driver: 'qemu', outcome: 'completed', source: 'host-a', target: 'host-b' });
    expect(r.verification).toMatchObject({ ok: true, where: 'target' });
    expect(stderr).toContain('stopped the controller, the agents, the QEMU guests and the dev server');
  }, 300_000);
});
