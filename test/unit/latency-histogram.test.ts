import { describe, expect, it } from 'vitest';
import { FAULT_LATENCY_BOUNDS_MS, latencyHistogram } from '../../src/activities/types';

describe('latencyHistogram: post-copy fault latencies in buckets', () => {
  it('counts each latency in the first bucket whose bound it does not exceed; above the last bound it overflows', () => {
    const h = latencyHistogram([0.1, 0.25, 0.26, 3, 4, 4.01, 2000], [0.25, 1, 4]);
    expect(h.leMs).toEqual([0.25, 1, 4]);
    expect(h.counts).toEqual([2, 1, 2, 2]);
  });
  it('no latency: every bucket empty, one more count than bounds', () => {
    const h = latencyHistogram([]);
    expect(h.counts).toHaveLength(FAULT_LATENCY_BOUNDS_MS.length + 1);
    expect(h.counts.every((n) => n === 0)).toBe(true);
  });
  it('the counts add up to the latencies given', () => {
    const xs = Array.from({ length: 500 }, (_, i) => (i * 7.3) % 1500);
    expect(latencyHistogram(xs).counts.reduce((a, b) => a + b, 0)).toBe(500);
  });
});
