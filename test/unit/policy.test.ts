import { describe, expect, it } from 'vitest';
import { adaptiveSwitch, decide, dynHybridRounds, lambdas, stopAndCopyTest } from '../../src/policy';
import { defaultPbData } from '../../src/policy/types';
import type { IterationStat, PolicyConfig, PolicyState, StrategyName } from '../../src/policy';

const PAGE = 4096;
const MiB = 2 ** 20;

/** Iterations from a list of page counts: pages(i+1) is the dirtyAfter of iteration i. */
function rounds(pages: number[], msPerPage = 0.1, lastDirty?: number): IterationStat[] {
  return pages.map((p, i) => ({
    index: i + 1,
    pages: p,
    durationMs: Math.max(1, p * msPerPage),
    bytes: p * PAGE,
    dirtyAfter: i + 1 < pages.length ? pages[i + 1]! : (lastDirty ?? p),
  }));
}

function cfg(strategy: StrategyName, over: Partial<PolicyConfig> = {}): PolicyConfig {
  return { strategy, pageSize: PAGE, pageCount: 65536, maxDowntimeMs: 300, maxIterations: 30, bandwidthBytesPerSec: 32 * MiB, ...over };
}

function state(iterations: IterationStat[], over: Partial<PolicyState> = {}): PolicyState {
  const last = iterations[iterations.length - 1];
  return { iterations, remainingPages: last?.dirtyAfter ?? 65536, staticMerged: true, ...over };
}

describe('λ', () => {
  it('is 1 for the first iteration, then pages(i+1)/pages(i)', () => {
    expect(lambdas(rounds([1000, 500, 1000], 0.1, 1500))).toEqual([1, 2, 1.5]);
  });
});

describe('stop-and-copy test', () => {
  // 0.1 ms per page = 4096 B / 0.1 ms ≈ 39 MiB/s measured.
  it.each([
    [[4000, 2000], 2000, 'stop-and-copy'], // 2000 pages ≈ 200 ms
    [[4000, 5000], 5000, null], // 5000 pages ≈ 500 ms > 300 ms
    [[4000, 100], 0, 'stop-and-copy'],
  ])('after %j with %d remaining: %s', (pages, remaining, expected) => {
    const d = stopAndCopyTest(state(rounds(pages as number[]), { remainingPages: remaining as number }), cfg('precopy'));
    expect(d?.action ?? null).toBe(expected);
  });
});

describe('adaptive switch (as-hybrid / pa-hybrid)', () => {
  it.each<[string, number[], number, 'continue' | 'switch-to-postcopy']>([
    // Scenario 1 of the paper: the write ratio rises, the dirty set keeps growing → switch.
    ['sustained rise', [20000, 22000, 25000, 29000], 34000, 'switch-to-postcopy'],
    // Scenario 2: mostly reads with one write burst: a single λ spike is noise → continue.
    ['single burst', [20000, 15000, 11000, 25000], 18000, 'continue'],
    ['converging', [20000, 15000, 11000, 8000], 6000, 'continue'],
    ['two above but mean below 1', [20000, 21000, 5000, 5200], 5400, 'continue'],
  ])('%s', (_name, pages, lastDirty, expected) => {
    const s = state(rounds(pages, 0.1, lastDirty));
    expect(adaptiveSwitch(s).action).toBe(expected);
    expect(decide(s, cfg('as-hybrid')).action).toBe(expected);
  });

  it('reports the λ window and the mean in the switch reason', () => {
    const d = decide(state(rounds([20000, 22000, 25000, 29000], 0.1, 34000)), cfg('pa-hybrid'));
    expect(d.reason).toMatch(/^switch to post-copy at iteration 5: λ=\[1\.14, 1\.16, 1\.17\], 3 of 3 > 1, mean 1\.16 ≥ 1$/);
  });

  it('pa-hybrid waits for the static merge before any decision', () => {
    const s = state(rounds([20000, 22000, 25000, 29000], 0.1, 34000), { staticMerged: false });
    expect(decide(s, cfg('pa-hybrid'))).toEqual({ action: 'continue', reason: 'continue: static merge not complete' });
  });

  it('the max-iterations valve switches to post-copy', () => {
    const s = state(rounds([20000, 15000, 11000, 25000], 0.1, 18000));
    expect(decide(s, cfg('as-hybrid', { maxIterations: 4 })).action).toBe('switch-to-postcopy');
    expect(decide(s, cfg('as-hybrid', { maxIterations: 4 })).reason).toMatch(/max iterations \(4\)/);
  });
});

describe('strategies', () => {
  const diverging = rounds([65536, 30000, 32000], 0.1, 34000);
  it.each<[StrategyName, IterationStat[], string]>([
    ['postcopy', [], 'switch-to-postcopy'],
    ['hybrid-1', rounds([65536], 0.1, 30000), 'switch-to-postcopy'],
    ['hybrid-2', rounds([65536], 0.1, 30000), 'continue'],
    ['hybrid-2', rounds([65536, 30000], 0.1, 30000), 'switch-to-postcopy'],
    ['precopy', diverging, 'continue'],
    ['heuristic-hybrid', diverging, 'switch-to-postcopy'],
    ['heuristic-hybrid', rounds([65536, 30000], 0.1, 20000), 'continue'],
    ['par-migrate', diverging, 'continue'],
  ])('%s after %# gives %s', (strategy, its, expected) => {
    expect(decide(state(its), cfg(strategy)).action).toBe(expected);
  });

  it('precopy stops and copies at max iterations however much is dirty (the paper’s failure case)', () => {
    const d = decide(state(rounds([65536, 30000, 32000], 0.1, 34000)), cfg('precopy', { maxIterations: 3 }));
    expect(d.action).toBe('stop-and-copy');
    expect(d.reason).toMatch(/max iterations \(3\) reached with 34000 pages dirty/);
  });

  it('a hybrid stops and copies instead of switching when pre-copy already converged', () => {
    expect(decide(state(rounds([65536], 0.1, 100)), cfg('hybrid-2')).action).toBe('stop-and-copy');
  });
});

describe('dyn-hybrid rounds', () => {
  it.each<[string, number, number, number]>([
    // [name, pages dirtied in round 1, ms of round 1 (65536 pages), expected rounds]
    ['dirty rate above bandwidth: one round', 40000, 5000, 1],
    // R/B ≈ 0.03, W = 2000: predicted 65536 → 2000 → 61 → 2 → 0; the 4th round empties it.
    ['slow dirtying: rounds until nothing is left', 2000, 5000, 4],
    // R/B ≈ 0.76: each round shrinks the set by less than half, another round does not pay.
    ['dirty rate between half and full bandwidth: one round', 50000, 5000, 1],
  ])('%s', (_n, dirty, ms, expected) => {
    const its: IterationStat[] = [{ index: 1, pages: 65536, durationMs: ms, bytes: 65536 * PAGE, dirtyAfter: dirty }];
    expect(dynHybridRounds(state(its), cfg('dyn-hybrid'))?.rounds).toBe(expected);
  });
});

describe('PbData default', () => {
  it.each([
    ['as-hybrid', 'async'],
    ['pa-hybrid', 'async'],
    ['hybrid-1', 'off'],
    ['dyn-hybrid', 'off'],
    ['postcopy', 'off'],
    ['precopy', 'off'],
    ['par-migrate', 'off'],
  ] as const)('%s → %s (the paper\'s hybrids carry PbData; the baselines run as the paper measured them)', (s, mode) => {
    expect(defaultPbData(s)).toBe(mode);
  });
});
