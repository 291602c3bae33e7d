/**
 * How big the bench runs. The paper's testbed (MECHANISM.md, paper §Experimental setup):
 * migration network 32 MB/s (50 MB/s in the comprehensive test), storage network 10 GbE,
 * max downtime 300 ms, max iterations 30; VMs of 6 GiB (Memcached, lmbench), 2 GiB (kernel
 * compile) and 32 GiB (comprehensive test).
 *
 * The scale rule. Rates stay the paper's, absolute: both links and the guests' dirty rates
 * (the workload profiles' documented defaults, src/guest/workloads.ts, no override) are the
 * same in every scale, so link : storage link : dirty rate is the paper's exactly. Memory
 * sizes are the paper's × `memoryFactor`. With rates fixed, every transfer (and so every
 * migration) takes `memoryFactor` of the paper's time, and the dimensionless quantities that
 * decide convergence are kept: pages dirtied during a round / pages sent in it (dirty rate /
 * link), the bulk round's dirtying relative to memory (dirty rate × (memory / link) / memory
 * = dirty rate / link), regions and working sets as fractions of memory.
 *
 * What does not scale, and is reported next to the results: (1) the downtime budget stays
 * 300 ms of wall time (as the brief and the paper's testbed say), so in `small` it covers
 * 1/memoryFactor = 128 times more of the guest than in the paper (9.6 MB of a 48 MiB guest
 * instead of 9.6 MB of 6 GiB): pre-copy converges where the paper's did not (`--max-downtime`
 * sets another budget, e.g. 300 ms × memoryFactor); (2) the workloads' own clocks (the
 * scenario-rising ramp of 60 s, scenario-bursty's bursts every 20 s, kernel-compile's working
 * set moving every 2 s) run in wall time, so they are slow relative to a compressed
 * migration; (3) per-round orchestration costs (a Temporal activity per round) are fixed.
 * Keeping memory : link too would mean the paper's wall-clock times: hours per comparison.
 */
import type { ScaleName } from './types';

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;

/** The paper's testbed, as MECHANISM.md gives it. Links in bytes/s (MB = 10^6 B, as the paper writes). */
export const PAPER_TESTBED = {
  migrationLinkBytesPerSec: 32e6,
  comprehensiveLinkBytesPerSec: 50e6,
  /** 10 GbE. */
  storageLinkBytesPerSec: 10e9 / 8,
  maxDowntimeMs: 300,
  maxIterations: 30,
  vmBytes: {
    memcached: 6 * GiB,
    'kernel-compile': 2 * GiB,
    lmbench: 6 * GiB,
    /** Both scenarios are Memcached VMs (paper §As-hybrid performance). */
    scenario: 6 * GiB,
    /** The comprehensive test: a 32 GB Memcached VM (paper §Comprehensive performance). */
    comprehensive: 32 * GiB,
  },
} as const;

export interface Scale {
  name: ScaleName;
  memoryFactor: number;
  /**
   * scenario-rising / scenario-bursty (comparisons 3 and 4): their load changes on the
   * workload's own wall clock (a 60 s ramp, 2 s bursts every 20 s), which the bench cannot
   * scale, so these guests are compressed at most 16× (memory × 1/16 in small and full): the
   * bulk round then lasts ~13 s, a fifth of the ramp, and the write share does rise during
   * the migration, as the scenarios require.
   */
  scenarioMemoryFactor: number;
  /** Guests are never smaller than this (the emulated guest's layout needs a few MiB). */
  minMemoryBytes: number;
  maxMemoryBytes: number;
  repeats: number;
  maxIterations: number;
  maxDowntimeMs: number;
  /** Guest runs this long between boot and the migration start. */
  warmupMs: number;
  /** phase2-first-iteration: the paper-size VMs of the sweep (× memoryFactor). */
  sweepPaperBytes: number[];
  /** scaling: guest sizes, absolute (this comparison is about memory itself). */
  scalingBytes: number[];
  /** fixed-switch: the n of "switch after n pre-copy rounds". */
  fixedRounds: number[];
  /** A cell that has not finished after this long is cancelled and reported as failed. */
  cellTimeoutMs: number;
  /** smoke: one cell per comparison. */
  onePerComparison: boolean;
  description: string;
}

export const SCALES: Record<ScaleName, Scale> = {
  smoke: {
    name: 'smoke',
    memoryFactor: 1 / 384,
    scenarioMemoryFactor: 1 / 384,
    minMemoryBytes: 16 * MiB,
    maxMemoryBytes: 32 * MiB,
    repeats: 1,
    maxIterations: 4,
    maxDowntimeMs: 300,
    warmupMs: 300,
    sweepPaperBytes: [6 * GiB],
    scalingBytes: [32 * MiB],
    // n = 1: the forced switch lands before the stop-and-copy test of a tiny guest can end pre-copy.
    fixedRounds: [1],
    cellTimeoutMs: 120_000,
    onePerComparison: true,
    description: 'smoke test: one cell per comparison, 16-32 MiB guests, max 4 iterations (checks the machinery, not the paper)',
  },
  small: {
    name: 'small',
    memoryFactor: 1 / 128,
    scenarioMemoryFactor: 1 / 16,
    minMemoryBytes: 16 * MiB,
    maxMemoryBytes: 1 * GiB,
    repeats: 1,
    maxIterations: PAPER_TESTBED.maxIterations,
    maxDowntimeMs: PAPER_TESTBED.maxDowntimeMs,
    warmupMs: 1000,
    sweepPaperBytes: [2 * GiB, 4 * GiB, 8 * GiB, 16 * GiB],
    scalingBytes: [256 * MiB, 512 * MiB],
    fixedRounds: [1, 2, 3, 5, 7, 10],
    cellTimeoutMs: 5 * 60_000,
    onePerComparison: false,
    description: 'memory = paper × 1/128 (Memcached and lmbench 48 MiB, kernel compile 16 MiB, comprehensive 256 MiB; the scenario VMs × 1/16 = 384 MiB), links and dirty rates as in the paper',
  },
  full: {
    name: 'full',
    memoryFactor: 1 / 16,
    scenarioMemoryFactor: 1 / 16,
    minMemoryBytes: 16 * MiB,
    maxMemoryBytes: 4 * GiB,
    repeats: 3,
    maxIterations: PAPER_TESTBED.maxIterations,
    maxDowntimeMs: PAPER_TESTBED.maxDowntimeMs,
    warmupMs: 1000,
    sweepPaperBytes: [2 * GiB, 4 * GiB, 8 * GiB, 16 * GiB, 32 * GiB],
    scalingBytes: [256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB],
    fixedRounds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    cellTimeoutMs: 60 * 60_000,
    onePerComparison: false,
    description: 'memory = paper × 1/16 (Memcached and lmbench 384 MiB, kernel compile 128 MiB, comprehensive 2 GiB), links and dirty rates as in the paper',
  },
};

/** A paper VM size at this scale, rounded to whole MiB and clamped to the scale's limits. */
export function scaledMemory(scale: Scale, paperBytes: number, factor = scale.memoryFactor): number {
  const mib = Math.max(1, Math.round((paperBytes * factor) / MiB));
  return Math.min(scale.maxMemoryBytes, Math.max(scale.minMemoryBytes, mib * MiB));
}
