/**
 * The QEMU test guest boots under TCG: the Debian cloud kernel runs the initramfs /init,
 * which starts the workload; the workload dirties its working set and verifies every page
 * once a second on the serial console. Reports the boot time and the unpaced dirty rate.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureTestGuest, GUEST_PAGE_SIZE, parseSerial, qemuGuestArgs, type SerialState, type TestGuest } from '../../src/hypervisor/qemu/guest-image';
import { tempDir } from '../helpers/cluster';

const MiB = 1024 * 1024;
const BOOT_TIMEOUT_MS = 90_000;

let img: TestGuest;
let qemu: ChildProcess | null = null;
let dir: string | null = null;

beforeAll(async () => {
  img = await ensureTestGuest({ log: (l) => console.log(l) });
});

afterEach(async () => {
  const q = qemu;
  qemu = null;
  if (q && q.exitCode === null && q.signalCode === null) {
    const gone = new Promise((r) => q.once('exit', r));
    q.kill('SIGKILL');
    await gone;
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  dir = null;
});

function serialText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Boot a guest; `until` is polled on the parsed console until it holds (or the timeout, or QEMU's exit). */
async function bootUntil(
  o: { memoryMiB: number; wss: number; rate: number },
  until: (s: SerialState) => boolean,
): Promise<{ state: SerialState; upMs: number; serial: string }> {
  dir = tempDir('qemu-guest');
  const serialLog = path.join(dir, 'serial.log');
  const args = qemuGuestArgs(img, { ...o, verifyMs: 1000, seed: 7, serialLog });
  const t0 = performance.now();
  let stderr = '';
  const q = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  qemu = q;
  q.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const spawnError = new Promise<Error>((resolve) => q.once('error', resolve));
  let upMs = -1;
  let state = parseSerial('');
  while (performance.now() - t0 < BOOT_TIMEOUT_MS) {
    const err = await Promise.race([spawnError, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
    if (err) throw new Error(`qemu-system-x86_64 did not start: ${err.message}`);
    state = parseSerial(serialText(serialLog));
    if (state.up && upMs < 0) upMs = performance.now() - t0;
    if (until(state)) return { state, upMs, serial: serialText(serialLog) };
    if (q.exitCode !== null || q.signalCode !== null) break;
  }
  throw new Error(
    `guest did not get there in ${BOOT_TIMEOUT_MS} ms (qemu exit ${q.exitCode ?? q.signalCode ?? 'running'}):\n` +
      `qemu stderr: ${stderr}\nserial:\n${serialText(serialLog).slice(-4000)}`,
  );
}

describe('QEMU test guest (TCG)', () => {
  it('boots a 256 MiB guest whose workload dirties 64 MiB and verifies every page', async () => {
    const wss = 64;
    const rate = 2000;
    const { state, upMs } = await bootUntil({ memoryMiB: 256, wss, rate }, (s) => s.verifies.filter((v) => v.ok).length >= 2 || s.verifies.some((v) => !v.ok));
    expect(state.up).toBe(true);
    expect(state.ready).toBe(true);
    expect(state.wss).toBe(wss);
    expect(state.rate).toBe(rate);
    expect(state.verifies.filter((v) => !v.ok)).toEqual([]);
    const ok = state.verifies.filter((v) => v.ok);
    expect(ok.length).toBeGreaterThanOrEqual(2);
    for (const v of ok) expect(v.pages).toBe((wss * MiB) / GUEST_PAGE_SIZE);
    // Paced: one second of writes per pass, within a generous margin of the rate.
    const last = ok[ok.length - 1]!;
    const prev = ok[ok.length - 2]!;
    const perPass = (last.writes ?? 0) - (prev.writes ?? 0);
    expect(perPass).toBeGreaterThan(rate * 0.5);
    expect(perPass).toBeLessThan(rate * 1.5);
    console.log(`QEMU TCG guest (kernel ${img.kernelVersion}): FERRY guest up after ${(upMs / 1000).toFixed(2)} s; paced ${perPass} writes/pass at rate=${rate}`);
  }, 120_000);

  it('reports the unpaced dirty rate (rate=0)', async () => {
    const { state } = await bootUntil({ memoryMiB: 256, wss: 64, rate: 0 }, (s) => s.stats.length >= 3 || s.verifies.some((v) => !v.ok));
    expect(state.verifies.every((v) => v.ok)).toBe(true);
    const first = state.stats[0]!;
    const last = state.stats[state.stats.length - 1]!;
    const pagesPerSec = ((last.writes - first.writes) * 1000) / (last.tMs - first.tMs);
    expect(pagesPerSec).toBeGreaterThan(1000);
    console.log(`QEMU TCG guest, rate=0: ${Math.round(pagesPerSec)} pages/s (${((pagesPerSec * GUEST_PAGE_SIZE) / MiB).toFixed(0)} MiB/s dirtied), verify pass ${last.verifyUs} µs`);
  }, 120_000);
});
