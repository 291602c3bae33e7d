/**
 * The paper suite: which migrations reproduce which of Li & Cao's comparisons, and the
 * paper's own figures to put next to ours (MECHANISM.md "Paper figures to reproduce", and
 * the paper text for the ones that table leaves out).
 */
import type { MigrationOptions } from '../../activities/types';
import { defaultPbData, type StrategyName } from '../../policy/types';
import { MiB, PAPER_TESTBED, scaledMemory, type Scale } from './scale';
import { COMPARISONS, type CellSpec, type ComparisonId } from './types';

export interface ComparisonInfo {
  id: ComparisonId;
  /** Accepted by --only besides the id. */
  number: number;
  title: string;
  paper: string;
}

export const COMPARISON_INFO: Record<ComparisonId, ComparisonInfo> = {
  'par-vs-precopy': { id: 'par-vs-precopy', number: 1, title: 'par-migrate vs precopy on Memcached, kernel compile, lmbench', paper: 'Fig. 5, Fig. 7, Table 3' },
  'phase2-first-iteration': {
    id: 'phase2-first-iteration',
    number: 2,
    title: "Phase 2's first dynamic round vs memory size, precopy vs par-migrate (lmbench)",
    paper: 'Fig. 2, Fig. 6',
  },
  'switch-scenarios': {
    id: 'switch-scenarios',
    number: 3,
    title: 'as-hybrid vs hybrid-1 vs hybrid-2 under a rising write share (scenario 1) and write bursts (scenario 2)',
    paper: 'Fig. 8, Fig. 9, Table 4',
  },
  'fixed-switch': { id: 'fixed-switch', number: 4, title: 'Switch after a fixed 1..10 pre-copy rounds vs as-hybrid: post-copy data (scenario 1)', paper: 'Fig. 10' },
  comprehensive: {
    id: 'comprehensive',
    number: 5,
    title: 'pa-hybrid vs hybrid-1, hybrid-2, dyn-hybrid, heuristic-hybrid, precopy, postcopy on a large Memcached VM at 50 MB/s',
    paper: 'Table 5, Fig. 12, Fig. 13',
  },
  scaling: { id: 'scaling', number: 6, title: 'Scaling: guest memory grows, links and dirty rate fixed; time and data per GiB', paper: '(beyond the paper; cf. Table 1)' },
};

/** The paper's relative figures (MECHANISM.md), as % change of the new scheme against the baseline. */
export const PAPER_PCT = {
  parVsPrecopy: {
    memcached: { time: -37.7, data: -20.2 },
    'kernel-compile': { time: -29.5, data: -8.3 },
    lmbench: { time: -39.1, data: -19.2 },
  } as Record<string, { time: number; data: number }>,
  comprehensive: {
    'hybrid-1': { time: -23.2, data: -26.7 },
    'hybrid-2': { time: -32.1, data: -33.3 },
    'dyn-hybrid': { time: -33.2, data: -34.5 },
  } as Record<string, { time: number; data: number }>,
  /** Paper text, scenario 1: As-hybrid's post-copy duration is 66 % / 48 % shorter than 1-hybrid / 2-hybrid. */
  scenarioPostcopyDuration: { 'hybrid-1': -66, 'hybrid-2': -48 } as Record<string, number>,
  /** Paper text, scenario 1: when each strategy switched to post-copy (s, paper time). */
  scenarioSwitchAtS: { 'hybrid-1': 140, 'hybrid-2': 157, 'as-hybrid': 187 } as Record<string, number>,
};

export const PAPER_NOTES: Record<ComparisonId, string[]> = {
  'par-vs-precopy': [
    'Paper: precopy exceeded the 300 ms downtime on all three loads (kernel compile 1,210 ms, Memcached 11,217 ms); par-migrate kept kernel compile and lmbench under 300 ms; with Memcached par-migrate did not converge either (long downtime). Table 3 (stop-and-copy data): precopy sent far more than par-migrate on all three loads (the table values are not in the text).',
  ],
  'phase2-first-iteration': [
    "Paper Fig. 2: with precopy, phase 2's rounds grow with the memory size (the longer the full copy, the more it dirties). Fig. 6: with par-migrate the first round of phase 2 stays almost unchanged as memory grows.",
  ],
  'switch-scenarios': [
    'Paper, scenario 1: 1-hybrid and 2-hybrid switch at 140 s and 157 s, As-hybrid at 187 s; As-hybrid has the shortest post-copy (66 % / 48 % shorter than 1-hybrid / 2-hybrid) and sends the least post-copy data (Fig. 9), but more data and time in total (Table 4).',
    'Paper, scenario 2: 1-hybrid and 2-hybrid switch regardless; As-hybrid filters the write bursts and does not switch.',
  ],
  'fixed-switch': ['Paper Fig. 10: post-copy data falls as the fixed threshold grows to 5 rounds and rises beyond; As-hybrid switches at the best moment on its own.'],
  comprehensive: [
    'Paper: PA-hybrid post-copy duration 21 s, the shortest; Dyn-hybrid second; 1-hybrid over 100 s. Fig. 13: the same ranking on lmbench and kernel compile (not run here).',
  ],
  scaling: ['Not in the paper. Ideal scaling: time and data per GiB stay flat as memory grows with the same links and dirty rate.'],
};


export interface SuiteOptions {
  scale: Scale;
  repeats: number;
  only: ComparisonId[];
  maxDowntimeMs: number;
  maxIterations: number;
  /** Seed of repeat r is seedBase + r, for every strategy. */
  seedBase?: number;
}

/** The cells of the paper suite, in run order: comparison, repeat, group, variant. */
export function buildCells(o: SuiteOptions): CellSpec[] {
  const { scale } = o;
  const seedBase = o.seedBase ?? 101;
  const options = (strategy: StrategyName, over: Partial<MigrationOptions> = {}): MigrationOptions => ({
    bandwidthBytesPerSec: PAPER_TESTBED.migrationLinkBytesPerSec,
    storageBandwidthBytesPerSec: PAPER_TESTBED.storageLinkBytesPerSec,
    maxDowntimeMs: o.maxDowntimeMs,
    maxIterations: o.maxIterations,
    pbdata: defaultPbData(strategy),
    // The paper's prototype had neither; ferry's additions get their own cell (comprehensive).
    compression: false,
    zeroElision: false,
    ...over,
  });
  const cells: CellSpec[] = [];
  const add = (
    comparison: ComparisonId,
    repeat: number,
    group: string,
    variant: string,
    strategy: StrategyName,
    workload: string,
    memoryBytes: number,
    opts: MigrationOptions,
    extra: { force?: number; x?: number } = {},
  ): void => {
    cells.push({
      id: `${comparison}/${group}/${variant}/r${repeat}`,
      comparison,
      group,
      variant,
      strategy,
      workload,
      memoryBytes,
      vcpus: 1,
      seed: seedBase + repeat,
      repeat,
      options: opts,
      forcePostcopyAfterRounds: extra.force ?? null,
      x: extra.x ?? null,
    });
  };
  const vm = PAPER_TESTBED.vmBytes;

  for (const comparison of COMPARISONS) {
    if (!o.only.includes(comparison)) continue;
    for (let r = 0; r < o.repeats; r++) {
      switch (comparison) {
        case 'par-vs-precopy':
          for (const w of ['memcached', 'kernel-compile', 'lmbench'] as const) {
            for (const s of ['precopy', 'par-migrate'] as const) add(comparison, r, w, s, s, w, scaledMemory(scale, vm[w]), options(s));
          }
          break;
        case 'phase2-first-iteration':
          for (const paperBytes of scale.sweepPaperBytes) {
            const mem = scaledMemory(scale, paperBytes);
            for (const s of ['precopy', 'par-migrate'] as const) add(comparison, r, `${mem / MiB}MiB`, s, s, 'lmbench', mem, options(s), { x: mem / MiB });
          }
          break;
        case 'switch-scenarios':
          for (const w of ['scenario-rising', 'scenario-bursty']) {
            for (const s of ['as-hybrid', 'hybrid-1', 'hybrid-2'] as const) add(comparison, r, w, s, s, w, scaledMemory(scale, vm.scenario, scale.scenarioMemoryFactor), options(s));
          }
          break;
        case 'fixed-switch': {
          const mem = scaledMemory(scale, vm.scenario, scale.scenarioMemoryFactor);
          for (const n of scale.fixedRounds) {
            // as-hybrid's own rules stay on; maxIterations stays the testbed's (≥ 10), the
            // forcePostcopy update makes the switch after n rounds (runner.ts).
            add(comparison, r, 'scenario-rising', `fixed-${n}`, 'as-hybrid', 'scenario-rising', mem, options('as-hybrid', { maxIterations: Math.max(o.maxIterations, n + 1) }), { force: n, x: n });
          }
          add(comparison, r, 'scenario-rising', 'as-hybrid', 'as-hybrid', 'scenario-rising', mem, options('as-hybrid'));
          break;
        }
        case 'comprehensive': {
          const mem = scaledMemory(scale, vm.comprehensive);
          const link = { bandwidthBytesPerSec: PAPER_TESTBED.comprehensiveLinkBytesPerSec };
          for (const s of ['pa-hybrid', 'hybrid-1', 'hybrid-2', 'dyn-hybrid', 'heuristic-hybrid', 'precopy', 'postcopy'] as const) {
            add(comparison, r, 'memcached', s, s, 'memcached', mem, options(s, link));
          }
          add(comparison, r, 'memcached', 'pa-hybrid+zero+compression', 'pa-hybrid', 'memcached', mem, options('pa-hybrid', { ...link, compression: true, zeroElision: true }));
          break;
        }
        case 'scaling':
          for (const mem of scale.scalingBytes) {
            for (const s of ['pa-hybrid', 'hybrid-1'] as const) add(comparison, r, `${mem / MiB}MiB`, s, s, 'memcached', mem, options(s), { x: mem / MiB });
          }
          break;
      }
    }
  }
  if (!scale.onePerComparison) return cells;
  // smoke: the one cell per comparison that exercises most of its machinery.
  const pick: Record<ComparisonId, string> = {
    'par-vs-precopy': 'memcached/par-migrate',
    'phase2-first-iteration': '/precopy',
    'switch-scenarios': 'scenario-rising/hybrid-1',
    'fixed-switch': '/fixed-',
    comprehensive: '/pa-hybrid+zero+compression',
    scaling: '/pa-hybrid',
  };
  const seen = new Set<ComparisonId>();
  return cells.filter((c) => {
    if (seen.has(c.comparison) || !c.id.includes(pick[c.comparison])) return false;
    seen.add(c.comparison);
    return true;
  });
}

/** `--only 1,3,comprehensive` → comparison ids. */
export function parseOnly(text: string | undefined): ComparisonId[] | string {
  if (text === undefined || text.trim() === '') return [...COMPARISONS];
  const out: ComparisonId[] = [];
  for (const raw of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const byNumber = Object.values(COMPARISON_INFO).find((c) => String(c.number) === raw);
    const id = byNumber?.id ?? (COMPARISONS as readonly string[]).find((c) => c === raw);
    if (!id) return `'${raw}' is not a comparison (use ${COMPARISONS.map((c) => `${COMPARISON_INFO[c].number}=${c}`).join(', ')})`;
    if (!out.includes(id as ComparisonId)) out.push(id as ComparisonId);
  }
  return COMPARISONS.filter((c) => out.includes(c));
}
