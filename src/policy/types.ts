/** Inputs and outputs of the migration policies. JSON-safe: they sit in workflow history. */

export const STRATEGIES = [
  'precopy',
  'postcopy',
  'hybrid-1',
  'hybrid-2',
  'dyn-hybrid',
  'heuristic-hybrid',
  'par-migrate',
  'as-hybrid',
  'pa-hybrid',
] as const;
export type StrategyName = (typeof STRATEGIES)[number];

export type Action = 'continue' | 'stop-and-copy' | 'switch-to-postcopy';

export interface Decision {
  action: Action;
  /** One line an operator can read in the report and the audit trail. */
  reason: string;
}

/** One dynamic iteration on channel-2, as measured by the source agent. */
export interface IterationStat {
  /** 1-based. */
  index: number;
  /** Pages sent in this iteration. */
  pages: number;
  durationMs: number;
  /** Bytes on the migration network in this iteration. */
  bytes: number;
  /** Pages dirtied while this iteration ran (the dirty log, peeked at its end): pages(i+1). */
  dirtyAfter: number;
  /**
   * How the dirty set grew during the round: [ms since the round started, distinct pages
   * dirtied so far] pairs, ascending (the dirty log peeked, not cleared). Absent where the
   * engine cannot peek (QEMU) and in histories recorded before it existed.
   */
  growth?: number[][];
  /** The round's pages went to StaticData, not over the migration network: it measures no bandwidth. */
  offLink?: boolean;
}

/** `paper`: MECHANISM.md's adaptive switch exactly. `ferry`: it, plus the plateau and the cost of another round. */
export type SwitchRule = 'ferry' | 'paper';
export const SWITCH_RULES: readonly SwitchRule[] = ['ferry', 'paper'];

export interface PolicyConfig {
  strategy: StrategyName;
  pageSize: number;
  pageCount: number;
  maxDowntimeMs: number;
  maxIterations: number;
  /** The migration-network cap (bytes/s); used when no iteration has measured one yet. */
  bandwidthBytesPerSec: number;
  /** as-hybrid / pa-hybrid: which switch rule (absent = paper, as histories before the choice were recorded). */
  switchRule?: SwitchRule;
  /** A fixed switch point for sweeps: switch to post-copy after this many rounds (stop-and-copy still wins if it fits first). */
  switchAfterRounds?: number;
}

export interface PolicyState {
  iterations: IterationStat[];
  /** Pages still to send now (dirty on the source, not yet on the target). */
  remainingPages: number;
  /** par-migrate: the target has merged StaticData (always true without par-migrate). */
  staticMerged: boolean;
  /**
   * What the pause costs beyond sending the last pages (device state, the switch-over's round
   * trips, the target's resume), in ms, as measured so far. Absent = nothing learnt (0).
   */
  pauseOverheadMs?: number;
  /**
   * How long after the last round's end the guest is paused (the decision's round trip), in
   * ms, as measured so far. The guest dirties pages meanwhile, and the pause sends them too.
   * Absent = not counted (histories recorded before it was).
   */
  pauseLeadMs?: number;
}

export function isStrategy(s: unknown): s is StrategyName {
  return typeof s === 'string' && (STRATEGIES as readonly string[]).includes(s);
}

/** Strategies whose full snapshot goes over channel-1 (shared storage). */
export function usesParMigrate(s: StrategyName): boolean {
  return s === 'par-migrate' || s === 'pa-hybrid';
}

/**
 * A strategy's PbData mode when none is asked for: PbData is the paper's addition to its own
 * hybrids (as-hybrid, pa-hybrid); the baselines run without it, as the paper measured them.
 */
export function defaultPbData(s: StrategyName): 'sync' | 'async' | 'off' {
  return s === 'as-hybrid' || s === 'pa-hybrid' ? 'async' : 'off';
}

/** Strategies that may switch to post-copy (and so write PbData). */
export function mayPostcopy(s: StrategyName): boolean {
  return s !== 'precopy' && s !== 'par-migrate';
}
