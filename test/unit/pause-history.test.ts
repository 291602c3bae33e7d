import { describe, expect, it } from 'vitest';
import { PauseHistory } from '../../src/activities/pause-history';

describe('PauseHistory: the part of a pause that is not the sending', () => {
  it('has no estimate before its first pause', () => {
    expect(new PauseHistory().estimateMs()).toBeNull();
  });

  it('learns each pause less the source sending, and promises the largest of the last twenty', () => {
    const h = new PauseHistory();
    // Paused at 1000 (source clock), sent for 170 ms, resumed at 1300 (target clock): 130 ms of overhead.
    expect(h.record({ pausedAtMs: 1000, sentMs: 170, resumedAtMs: 1300 })).toBe(130);
    expect(h.record({ pausedAtMs: 2000, sentMs: 100, resumedAtMs: 2190.4 })).toBeCloseTo(90.4);
    expect(h.estimateMs()).toBe(130);
    // Eighteen more pauses of 90-95 ms: the 130 ms one is still among the last twenty.
    const pause = (i: number, o: number) => h.record({ pausedAtMs: 10_000 * (i + 1), sentMs: 50, resumedAtMs: 10_000 * (i + 1) + 50 + o });
    for (let i = 0; i < 18; i++) pause(i, 90 + (i % 6));
    expect(h.estimateMs()).toBe(130);
    // One more: it ages out, the largest recent one stays.
    pause(18, 92);
    expect(h.estimateMs()).toBe(95);
  });

  it('rounds the promise up', () => {
    const h = new PauseHistory();
    h.record({ pausedAtMs: 0, sentMs: 0, resumedAtMs: 80.2 });
    expect(h.estimateMs()).toBe(81);
  });

  it('drops what the two clocks (or a bad input) make implausible', () => {
    const h = new PauseHistory();
    expect(h.record({ pausedAtMs: 5000, sentMs: 100, resumedAtMs: 5050 })).toBeNull(); // negative: the target's clock runs behind
    expect(h.record({ pausedAtMs: 0, sentMs: 10, resumedAtMs: 60_000 })).toBeNull(); // a minute: clocks apart, not a pause
    expect(h.record({ pausedAtMs: 0, sentMs: -1, resumedAtMs: 100 })).toBeNull();
    expect(h.record({ pausedAtMs: Number.NaN, sentMs: 1, resumedAtMs: 100 })).toBeNull();
    expect(h.estimateMs()).toBeNull();
  });
});
