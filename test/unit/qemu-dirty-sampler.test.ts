import { describe, expect, it } from 'vitest';
import { anchorCurve, growthCurve, passCurve, SAMPLE_PAGES_PER_GIB, SAMPLE_WINDOWS_MS, samplePages, startDirtySampler, type GrowthSample } from '../../src/hypervisor/qemu/dirty-sampler';
import { growthAt } from '../../src/policy/ferry-switch';

describe('QEMU dirty sampling: a window as pages', () => {
  it('reads MiB/s over the window QEMU really measured', () => {
    // 40 MiB/s over 500 ms = 20 MiB = 5120 pages of 4 KiB.
    expect(samplePages({ status: 'measured', 'dirty-rate': 40, 'calc-time': 500 }, 4096)).toEqual({ ms: 500, pages: 5120 });
    expect(samplePages({ status: 'measuring', 'dirty-rate': 40, 'calc-time': 500 }, 4096)).toBeNull();
    expect(samplePages({ status: 'measured', 'calc-time': 500 }, 4096)).toBeNull();
    expect(samplePages({ status: 'measured', 'dirty-rate': 3, 'calc-time': 0 }, 4096)).toBeNull();
  });
});

describe('QEMU dirty sampling: the curve of a pass', () => {
  const s = (endAtMs: number, ms: number, pages: number): GrowthSample => ({ endAtMs, ms, pages });
  it('keeps the windows that ended inside the pass, by length, merging near-equal lengths into their median', () => {
    const samples = [s(900, 200, 1), s(1100, 200, 100), s(1350, 230, 140), s(1500, 205, 120), s(1900, 400, 300), s(2700, 800, 500), s(3100, 200, 999)];
    expect(growthCurve(samples, 1000, 3000)).toEqual([
      [205, 120],
      [400, 300],
      [800, 500],
    ]);
    expect(growthCurve(samples, 5000, 6000)).toEqual([]);
  });

  it('never falls: a longer window that sampled fewer pages reads as the shorter one (no prediction below zero)', () => {
    // Seen on a loaded host: the 800 ms window sampled fewer changed pages than the 400 ms one,
    // and the policy carried that fall on past the pass: "leaves ~-5208".
    const curve = growthCurve([s(1, 200, 3000), s(2, 400, 7000), s(3, 800, 2500)], 0, 10);
    expect(curve).toEqual([
      [200, 3000],
      [400, 7000],
      [800, 7000],
    ]);
    expect(growthAt(curve, 1100)).toBe(7000);
  });

  it('gives the switch rule a flat curve for a saturated hot set and a rising one for a steady writer', () => {
    const hot = growthCurve([s(1, 200, 30000), s(2, 400, 32000), s(3, 800, 32700), s(4, 1600, 32760)], 0, 10);
    const steady = growthCurve([s(1, 200, 400), s(2, 400, 800), s(3, 800, 1600)], 0, 10);
    // What a 4 s pass would leave.
    expect(growthAt(hot, 4000)).toBeLessThan(33_000);
    expect(growthAt(hot, 4000)).toBeGreaterThan(32_000);
    expect(growthAt(steady, 4000)).toBeCloseTo(8000, -1);
  });
});

describe('QEMU dirty sampling: the curve anchored on the sync count', () => {
  it('keeps the sampled shape and scales it through the pages the sync counted at the pass end', () => {
    // A pass of 1759 ms ended with 11023 pages dirty; the sample put the set at about a third of that.
    const sampled = [
      [200, 1500],
      [400, 2400],
      [800, 3000],
    ];
    const anchored = anchorCurve(sampled, 1759, 11023);
    expect(growthAt(anchored, 1759)).toBeGreaterThan(11000);
    expect(growthAt(anchored, 1759)).toBeLessThan(11050);
    // The same shape: every point scaled by one factor (to rounding).
    const k = anchored[0]![1]! / 1500;
    anchored.forEach((p, i) => {
      expect(p[0]).toBe(sampled[i]![0]);
      expect(Math.abs(p[1]! - sampled[i]![1]! * k)).toBeLessThanOrEqual(1);
    });
    // A curve that saw no change becomes the straight line to the counted point.
    expect(anchorCurve([[200, 0]], 1000, 800)).toEqual([[1000, 800]]);
    // No duration: the curve as sampled; an exact curve stays as it is.
    expect(anchorCurve(sampled, 0, 5)).toEqual(sampled);
    expect(anchorCurve([[500, 100], [1000, 200]], 1000, 200)).toEqual([[500, 100], [1000, 200]]);
  });
});

describe('QEMU dirty sampling: the curve a pass reports', () => {
  const s = (endAtMs: number, ms: number, pages: number): GrowthSample => ({ endAtMs, ms, pages });
  const samples = [s(300, 200, 1500), s(800, 400, 2400), s(1700, 800, 3000)];
  it('anchors a dirty pass on its sync count, never the bulk pass', () => {
    expect(passCurve(samples, 1, 0, 2000, 9000)).toEqual(growthCurve(samples, 0, 2000));
    expect(growthAt(passCurve(samples, 2, 0, 2000, 9000), 2000)).toBeCloseTo(9000, -1);
  });
});

describe('QEMU dirty sampling: the loop', () => {
  it('measures windows of growing length, restarts the cycle at each pass and stops when pre-copy ends', async () => {
    let t = 0;
    let passes = 1;
    let running = true;
    const asked: number[] = [];
    const recorded: GrowthSample[] = [];
    let pending: number | null = null;
    const qmp = {
      execute: async <T,>(cmd: string, args?: Record<string, unknown>): Promise<T> => {
        if (cmd === 'calc-dirty-rate') {
          expect(args).toMatchObject({ 'calc-time-unit': 'millisecond', 'sample-pages': SAMPLE_PAGES_PER_GIB });
          pending = args!['calc-time'] as number;
          asked.push(pending);
          return {} as T;
        }
        // query-dirty-rate: measured once the window's time has passed.
        const w = pending!;
        return { status: 'measured', 'dirty-rate': 8, 'calc-time': w } as T;
      },
    };
    const sampler = startDirtySampler({
      qmp,
      pageSize: 4096,
      passes: () => passes,
      precopyRunning: () => running,
      record: (g) => {
        recorded.push(g);
        if (recorded.length === 3) passes = 2; // a new pass: the cycle starts again
        if (recorded.length === 5) running = false; // post-copy or completed
      },
      now: () => t,
      sleep: async (ms) => {
        t += ms;
      },
    });
    await sampler.done;
    expect(asked).toEqual([SAMPLE_WINDOWS_MS[0], SAMPLE_WINDOWS_MS[1], SAMPLE_WINDOWS_MS[2], SAMPLE_WINDOWS_MS[0], SAMPLE_WINDOWS_MS[1]]);
    expect(recorded.map((r) => r.ms)).toEqual(asked);
    // 8 MiB/s over 400 ms = 3.2 MiB = 819 pages.
    expect(recorded[1]!.pages).toBe(819);
  });

  it('stop() ends the loop even while QEMU refuses to start a window', async () => {
    let t = 0;
    const sampler = startDirtySampler({
      qmp: { execute: async () => Promise.reject(new Error('the dirty rate is already being measured.')) },
      pageSize: 4096,
      passes: () => 1,
      precopyRunning: () => true,
      record: () => undefined,
      now: () => t,
      sleep: async (ms) => {
        t += ms;
        if (t > 2000) sampler.stop();
      },
    });
    await sampler.done;
    expect(t).toBeGreaterThan(2000);
  });
});
