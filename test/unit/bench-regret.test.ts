import { describe, expect, it } from 'vitest';
import { defaultVariant, regretMarkdown, summarize, variantOrder, variantsOf, type RegretPlan, type RegretSample } from '../../src/bench/regret';
import { parseQemuVariant } from '../../src/bench/qemu';
import { downtimeViolated } from '../../src/bench/suite/metrics';
import type { CellResult } from '../../src/bench/suite/types';

const MiB = 2 ** 20;

function sample(variant: string, timeMs: number, over: Partial<RegretSample> = {}): RegretSample {
  return { workload: 'w', memoryBytes: 64 * MiB, variant, ok: true, timeMs, dataBytes: timeMs * 1000, storageWriteBytes: 0, postcopyMs: null, downtimeMs: 100, rounds: 3, valve: false, downtimeViolated: false, ...over };
}

describe('regret: variants', () => {
  it('sweeps the engine default strategy, with the baselines; the default sits beside the sweep', () => {
    const em = variantsOf(3, 'emulated');
    expect(em.filter((v) => v.sweep).map((v) => v.id)).toEqual(['pa-hybrid@1', 'pa-hybrid@2', 'pa-hybrid@3', 'hybrid-1', 'hybrid-2', 'precopy']);
    expect(em.filter((v) => !v.sweep).map((v) => v.id)).toEqual(['pa-hybrid/ferry', 'pa-hybrid/paper', 'as-hybrid/ferry', 'as-hybrid/paper']);
    const q = variantsOf(2, 'qemu');
    expect(q.filter((v) => v.sweep).map((v) => v.id)).toEqual(['as-hybrid@1', 'as-hybrid@2', 'hybrid-1', 'hybrid-2', 'precopy']);
    expect(q.filter((v) => !v.sweep).map((v) => v.id)).toEqual(['as-hybrid/ferry', 'as-hybrid/paper']);
    expect(defaultVariant('qemu')).toBe('as-hybrid/ferry');
    expect(defaultVariant('emulated')).toBe('pa-hybrid/ferry');
    // Every QEMU variant is one the QEMU bench runs as it is written.
    for (const v of q) expect(parseQemuVariant(v.id)).toMatchObject({ id: v.id, strategy: v.strategy });
    expect(parseQemuVariant('as-hybrid@2')).toMatchObject({ switchAfterRounds: 2, switchRule: 'paper' });
  });
});

describe('regret: summary', () => {
  const variants = variantsOf(2, 'emulated');
  it('takes the hindsight-best from the sweep only, by median, and sets every variant against it', () => {
    const samples = [
      ...[10_000, 11_000, 30_000].map((t) => sample('pa-hybrid@1', t)), // median 11 s
      ...[9_000, 12_000, 12_500].map((t) => sample('hybrid-1', t)), // median 12 s
      ...[5_000, 5_000, 5_000].map((t) => sample('pa-hybrid/paper', t)), // beside the sweep: never the best
      ...[12_100, 12_600, 12_650].map((t) => sample('pa-hybrid/ferry', t)),
      sample('precopy', 40_000, { valve: true, downtimeMs: 900 }),
      sample('precopy', 41_000, { ok: false }),
      sample('hybrid-2', 20_000, { downtimeViolated: true }),
    ];
    const [w] = summarize(samples, variants);
    expect(w!.best).toBe('pa-hybrid@1');
    const row = (id: string) => w!.rows.find((r) => r.variant === id)!;
    expect(row('pa-hybrid@1').timeMs).toEqual({ median: 11_000, min: 10_000, max: 30_000, n: 3 });
    expect(row('pa-hybrid/ferry').vsBest).toBeCloseTo(12_600 / 11_000, 6);
    expect(row('pa-hybrid/paper').vsBest).toBeCloseTo(5 / 11, 6);
    expect(row('precopy')).toMatchObject({ valve: 1, failed: 1, downtimeViolations: 0 });
    expect(row('precopy').timeMs!.n).toBe(1);
    expect(row('hybrid-2').downtimeViolations).toBe(1);
    expect(row('pa-hybrid@2').timeMs).toBeNull();
    expect(row('pa-hybrid@2').vsBest).toBeNull();
  });

  it('renders the default and the best, with the driver named', () => {
    const plan: RegretPlan = { workloads: ['w'], repeats: 3, sweepRounds: 2, memoryBytes: null, bandwidthBytesPerSec: 32 * MiB, storageBandwidthBytesPerSec: 0, maxDowntimeMs: 300, maxIterations: 30, seedBase: 1, driver: 'qemu' };
    const q = variantsOf(2, 'qemu');
    const md = regretMarkdown(summarize([sample('as-hybrid@1', 4000), sample('as-hybrid/ferry', 4400)], q), plan, 'ferry bench --suite regret --driver qemu');
    expect(md).toContain('as-hybrid switched after a fixed n rounds');
    expect(md).toContain('real QEMU guests under TCG');
    expect(md).toMatch(/\| as-hybrid@1 \(best\) \| 4\.00 \| 1\.00 \|/);
    expect(md).toMatch(/\| as-hybrid\/ferry \(default\) \| 4\.40 \| 1\.10 \|/);
  });
});

describe('downtime violations', () => {
  const cell = (action: string, reason: string, downtimeMs: number | null) =>
    ({ cell: { options: { maxDowntimeMs: 300 } }, report: { downtimeMs, decisions: [{ action: 'continue', reason: 'continue' }, { action, reason }] } }) as unknown as CellResult;
  it.each([
    ['the test chose stop-and-copy, the pause was longer', 'stop-and-copy', 'stop-and-copy at iteration 4: 120 pages take 15 ms ≤ max downtime 300 ms', 301, true],
    ['the test chose stop-and-copy, the pause fit', 'stop-and-copy', 'stop-and-copy at iteration 4: 120 pages take 15 ms ≤ max downtime 300 ms', 300, false],
    ['the valve forced it: no promise was made', 'stop-and-copy', 'stop-and-copy anyway at iteration 31: max iterations (30) reached', 900, false],
    ['post-copy: the switch pause is not the promise', 'switch-to-postcopy', 'switch to post-copy at iteration 3: no progress', 900, false],
    ['no downtime measured', 'stop-and-copy', 'stop-and-copy at iteration 2', null, false],
  ])('%s', (_name, action, reason, ms, violated) => {
    expect(downtimeViolated(cell(action, reason, ms))).toBe(violated);
  });
});

describe('regret: run order', () => {
  it('rotates the variants from one repeat to the next: each takes early and late slots, none is dropped', () => {
    const vs = variantsOf(4).map((v) => v.id);
    const orders = [0, 1, 2, 3, 4].map((r) => variantOrder(vs, r, 5));
    for (const o of orders) expect([...o].sort()).toEqual([...vs].sort());
    expect(new Set(orders.map((o) => o[0])).size).toBe(5);
    const slots = orders.map((o) => o.indexOf('pa-hybrid/ferry'));
    expect(Math.min(...slots)).toBeLessThan(vs.length / 2);
    expect(Math.max(...slots)).toBeGreaterThanOrEqual(vs.length / 2);
    expect(variantOrder(vs, 0, 1)).toEqual(vs);
  });

  it('puts each variant after a different one in every repeat', () => {
    // 11 variants (the emulated suite at --sweep 4), 7 (QEMU at --sweep 2): every stride differs.
    for (const n of [7, 11]) {
      const vs = Array.from({ length: n }, (_, i) => `v${i}`);
      const orders = Array.from({ length: 5 }, (_, r) => variantOrder(vs, r, 5));
      for (const o of orders) expect([...o].sort()).toEqual([...vs].sort());
      for (const v of vs) {
        const before = orders.map((o) => o[o.indexOf(v) - 1]).filter((p) => p !== undefined);
        expect(new Set(before).size, `${v} of ${n}: after ${before.join(', ')}`).toBe(before.length);
      }
    }
    // Any count: each repeat runs every variant once.
    for (const n of [2, 4, 12]) {
      const vs = Array.from({ length: n }, (_, i) => `v${i}`);
      for (let r = 0; r < 5; r++) expect([...variantOrder(vs, r, 5)].sort()).toEqual([...vs].sort());
    }
  });
});
