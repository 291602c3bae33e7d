import { describe, expect, it } from 'vitest';
import { growthCurve, SAMPLE_PAGES_PER_GIB, SAMPLE_WINDOWS_MS, samplePages, startDirtySampler, type GrowthSample } from '../../src/hypervisor/qemu/dirty-sampler';
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

  it('gives the switch rule a flat curve for a saturated hot set and a rising one for a steady writer', () => {
    const hot = growthCurve([s(1, 200, 30000), s(2, 400, 32000), s(3, 800, 32700), s(4, 1600, 32760)], 0, 10);
    const steady = growthCurve([s(1, 200, 400), s(2, 400, 800), s(3, 800, 1600)], 0, 10);
    // What a 4 s pass would leave.
    expect(growthAt(hot, 4000)).toBeLessThan(33_000);
    expect(growthAt(hot, 4000)).toBeGreaterThan(32_000);
    expect(growthAt(steady, 4000)).toBeCloseTo(8000, -1);
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
