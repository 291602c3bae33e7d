/** The scale bench's own arithmetic: concurrency peaks from a recorded timeline, /proc readings. */
import { describe, expect, it } from 'vitest';
import { peakConcurrency, timelinePeaks } from '../../src/bench/scale';
import { cpuSeconds, quantile, rssBytes } from '../../src/bench/scale-proc';
import type { TimelineEntry } from '../../src/workflows/evacuation-messages';

const entry = (vm: string, source: string, target: string, startMs: number, endMs: number | null): TimelineEntry => ({ vm, attempt: 1, attemptId: null, source, target, startMs, endMs, outcome: endMs === null ? null : 'completed' });

describe('scale bench: limits on the recorded timeline', () => {
  it('counts the migrations active at once per source, per target and in all, over half-open intervals', () => {
    const tl = [
      entry('a', 's1', 't1', 0, 10),
      entry('b', 's1', 't2', 5, 15),
      // Starts when a ends: [10, 20) does not overlap [0, 10).
      entry('c', 's1', 't1', 10, 20),
      entry('d', 's2', 't1', 12, 14),
      entry('e', 's2', 't2', 13, 30),
    ];
    expect(timelinePeaks(tl)).toEqual({ cluster: 4, perSource: { s1: 2, s2: 2 }, perTarget: { t1: 2, t2: 2 } });
  });

  it('treats an attempt without an end as still running', () => {
    const p = peakConcurrency([{ startMs: 0, endMs: Number.POSITIVE_INFINITY }, { startMs: 100, endMs: 101 }], () => 'all');
    expect(p).toEqual({ all: 2 });
    expect(timelinePeaks([entry('a', 's', 't', 0, null), entry('b', 's', 't', 50, 60)]).cluster).toBe(2);
  });

  it('quantile is the nearest rank', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(quantile(xs, 0.5)).toBe(50);
    expect(quantile(xs, 0.99)).toBe(99);
    expect(quantile([], 0.5)).toBeNaN();
  });

  it('reads CPU time and RSS of a live process from /proc, and null for a pid that does not exist', () => {
    expect(cpuSeconds(process.pid)).toBeGreaterThan(0);
    expect(rssBytes(process.pid)).toBeGreaterThan(1024 * 1024);
    expect(cpuSeconds(2 ** 22 + 1)).toBeNull();
    expect(rssBytes(2 ** 22 + 1)).toBeNull();
  });
});
