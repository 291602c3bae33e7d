/**
 * QEMU test fixtures: the test guest (built once from Debian packages), agents with
 * `--driver qemu`, and a cleanup that kills every QEMU a test left in its state directories
 * (QEMU runs daemonized, so it would outlive the test).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { FerryProcess } from '../../src/support/processes';
import { ensureTestGuest, type TestGuest } from '../../src/hypervisor/qemu/guest-image';
import { killQemusUnder } from '../../src/hypervisor/qemu/driver';
import { expect } from 'vitest';
import type { MigrationReport } from '../../src/workflows/report';
import { startAgentProcess, tempDir } from './cluster';

let guest: Promise<TestGuest> | undefined;
export function testGuest(): Promise<TestGuest> {
  guest ??= ensureTestGuest({ log: (l) => process.stderr.write(`${l}\n`) });
  return guest;
}

export interface QemuAgent {
  hostId: string;
  stateDir: string;
  proc: FerryProcess;
}

export async function startQemuAgent(
  hostId: string,
  opts: { migrationAddr?: string; fallbackAddr?: string; extraArgs?: string[]; address?: string; stateDir?: string; storageDir?: string } = {},
): Promise<QemuAgent> {
  const img = await testGuest();
  const stateDir = opts.stateDir ?? tempDir(`qemu-${hostId}`);
  const args = ['--driver', 'qemu', '--qemu-state', stateDir, '--guest-kernel', img.kernel, '--guest-initrd', img.initrd, '--memory-capacity', '2GiB'];
  if (opts.migrationAddr) args.push('--migration-addr', opts.migrationAddr, '--data-addr', `${opts.migrationAddr}:0`);
  if (opts.fallbackAddr) args.push('--fallback-addr', opts.fallbackAddr);
  const proc = await startAgentProcess(hostId, {
    extraArgs: [...args, ...(opts.extraArgs ?? [])],
    ...(opts.address ? { address: opts.address } : {}),
    // par-migrate's StaticData: agents that pass the same directory share storage.
    ...(opts.storageDir ? { storageDir: opts.storageDir } : {}),
  });
  return { hostId, stateDir, proc };
}

export { killQemusUnder };

export async function stopQemuAgent(a: QemuAgent | undefined): Promise<void> {
  if (!a) return;
  await a.proc.stop().catch(() => undefined);
  killQemusUnder(a.stateDir);
}

/** The serial log of a VM under an agent's state directory. */
export function serialOf(a: QemuAgent, vm: string): string {
  try {
    return fs.readFileSync(path.join(a.stateDir, vm, 'serial.log'), 'utf8');
  } catch {
    return '';
  }
}

export function qemuAvailable(): boolean {
  try {
    execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Completed on QEMU, and the guest's own page check passed on the target. */
export function expectVerifiedOnTarget(r: MigrationReport): void {
  expect(r.outcome, r.reason).toBe('completed');
  expect(r.driver).toBe('qemu');
  expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
  expect(r.verification!.pagesChecked).toBeGreaterThan(0);
  expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
}
