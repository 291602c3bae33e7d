import { afterEach, describe, expect, it } from 'vitest';
import { tmpdir } from 'node:os';
import { EmulatedGuest, PROFILES, resolveWorkload, type WorkloadSpec } from '../../src/guest';
import { setTraceDir } from '../../src/guest/workloads';

const MiB = 1024 ** 2;
const guests: EmulatedGuest[] = [];
afterEach(async () => {
  await Promise.all(guests.splice(0).map((g) => g.stop()));
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function guest(workload: string | WorkloadSpec, opts: { vcpus?: number; seed?: number; memoryBytes?: number } = {}): EmulatedGuest {
  const g = EmulatedGuest.create({ name: 'w', memoryBytes: opts.memoryBytes ?? 4 * MiB, vcpus: opts.vcpus ?? 2, workload, seed: opts.seed ?? 1 });
  guests.push(g);
  return g;
}

describe('workload profiles', () => {
  it.each(PROFILES)('%s runs and the guest verifies afterwards', async (profile) => {
    // Unthrottled (idle included) so that a short run writes plenty; the phases of the
    // time-driven profiles are shortened to fall inside the run.
    const g = guest({ profile, rate: 'max', moveEveryMs: profile === 'kernel-compile' ? 20 : undefined, rampMs: profile === 'scenario-rising' ? 50 : undefined, burstEveryMs: profile === 'scenario-bursty' ? 40 : undefined, burstMs: profile === 'scenario-bursty' ? 10 : undefined });
    await g.start();
    await waitFor(() => g.stats().elapsedMs > 150 && g.stats().writes > 1000, 'writes');
    await g.pause();
    const s = g.stats();
    expect(s.readErrors).toBe(0);
    const r = g.verify();
    expect(r.firstMismatches).toEqual([]);
    expect(r.ok).toBe(true);
  });

  it('paces to the requested rate (pages/s), and accepts MiB/s', async () => {
    // 4000 pages/s over 2 vCPUs. Checked from above, against each vCPU's own running time: a
    // vCPU is never ahead of 2000 accesses/s (+ the access that opens a batch). A floor on
    // the measured rate would measure the machine's load (a vCPU thread starved just before
    // the pause shows a low rate); a pacer far too slow never reaches 2000 accesses instead.
    const g = guest({ profile: 'lmbench', rate: 4000 });
    await g.start();
    await waitFor(() => g.stats().ops >= 2000, '2000 accesses (0.5 s at the cap)', 50_000);
    await g.pause();
    const { ops, elapsedMs, vcpus } = g.stats();
    expect(ops).toBeGreaterThanOrEqual(2000);
    for (const v of vcpus) expect(v.ops).toBeLessThanOrEqual((2000 * v.elapsedMs) / 1000 + 1 + 1e-6);
    expect((ops / elapsedMs) * 1000).toBeLessThan(4000 * 1.01);
    expect(resolveWorkload({ profile: 'lmbench', rate: '8MiB/s' }, { pageSize: 4096, dataPages: 1000, vcpus: 2 }).resolved.ratePerVcpu).toBe(1024);
  });

  it('memcached writes are skewed, lmbench writes are uniform over 2/3 of RAM', () => {
    const geo = { pageSize: 4096, dataPages: 3000, vcpus: 1 };
    const mc = resolveWorkload('memcached', geo).resolved;
    expect(mc.dist.kind).toBe('zipf');
    expect(mc.regionPages).toBe(2000);
    expect(mc.ratePerVcpu * 4096 * 0.9).toBeGreaterThan(32 * MiB); // dirties faster than a 32 MiB/s link
    const lm = resolveWorkload('lmbench', geo).resolved;
    expect(lm).toMatchObject({ dist: { kind: 'uniform' }, writes: { kind: 'const', ratio: 0.6 }, regionPages: 2000 });
    expect(resolveWorkload('scenario-bursty', geo).resolved.writes).toMatchObject({ kind: 'bursty', base: 1 / 11, burst: 10 / 11 });
    expect(resolveWorkload('scenario-rising', geo).resolved.writes).toMatchObject({ kind: 'ramp', from: 0.1, to: 0.9 });
  });

  it('bad workload names and parameters are usage errors', () => {
    const geo = { pageSize: 4096, dataPages: 1000, vcpus: 1 };
    expect(() => resolveWorkload('redis', geo)).toThrow(/unknown profile 'redis'.*memcached/);
    expect(() => resolveWorkload({ profile: 'idle', writeratio: 1 } as WorkloadSpec, geo)).toThrow(/unknown parameter 'writeratio'/);
    expect(() => resolveWorkload({ profile: 'idle', writeRatio: 2 }, geo)).toThrow(/writeRatio = 2 is not a number in 0..1/);
    expect(() => resolveWorkload({ profile: 'idle', rate: 'fast' }, geo)).toThrow(/not a size/);
    expect(() => resolveWorkload('trace:', geo)).toThrow(/needs a file/);
    setTraceDir(tmpdir()); // trace files are read only from a trace directory
    expect(() => resolveWorkload('trace:ferry-nonexistent-x.trace', geo)).toThrow(/cannot read trace file 'ferry-nonexistent-x\.trace'/);
  });
});

describe('repeatability', () => {
  async function dirtyAfter(workload: WorkloadSpec, seed: number): Promise<{ dirty: number[]; pages: Buffer }> {
    const g = guest(workload, { seed });
    g.memory.clearDirty();
    await g.start();
    await g.whenIdle();
    await g.pause();
    expect(g.stats().ops).toBe(2 * (workload.accessLimit ?? 0));
    const dirty = [...g.memory.collectDirty()];
    const pages = Buffer.concat(dirty.map((p) => g.memory.page(p)));
    return { dirty, pages };
  }

  it.each(['memcached', 'kernel-compile', 'scenario-bursty'])('%s: same seed, same accesses; another seed, other accesses', async (profile) => {
    const w: WorkloadSpec = { profile, rate: 'max', deterministic: true, accessLimit: 3000, moveEveryMs: 30, burstEveryMs: 50, burstMs: 10 };
    if (profile !== 'kernel-compile') delete w.moveEveryMs;
    if (profile !== 'scenario-bursty') (delete w.burstEveryMs, delete w.burstMs);
    const a = await dirtyAfter(w, 42);
    const b = await dirtyAfter(w, 42);
    const c = await dirtyAfter(w, 43);
    expect(a.dirty.length).toBeGreaterThan(100);
    expect(b.dirty).toEqual(a.dirty);
    expect(b.pages.equals(a.pages)).toBe(true);
    expect(c.dirty).not.toEqual(a.dirty);
  });
});
