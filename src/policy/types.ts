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
}

export interface PolicyConfig {
  strategy: StrategyName;
  pageSize: number;
  pageCount: number;
  maxDowntimeMs: number;
  maxIterations: number;
  /** The migration-network cap (bytes/s); used when no iteration has measured one yet. */
  bandwidthBytesPerSec: number;
}

export interface PolicyState {
  iterations: IterationStat[];
  /** Pages still to send now (dirty on the source, not yet on the target). */
  remainingPages: number;
  /** par-migrate: the target has merged StaticData (always true without par-migrate). */
  staticMerged: boolean;
}

export function isStrategy(s: unknown): s is StrategyName {
  return typeof s === 'string' && (STRATEGIES as readonly string[]).includes(s);
}

/** Strategies whose full snapshot goes over channel-1 (shared storage). */
export function usesParMigrate(s: StrategyName): boolean {
  return s === 'par-migrate' || s === 'pa-hybrid';
}

/** Strategies that may switch to post-copy (and so write PbData). */
export function mayPostcopy(s: StrategyName): boolean {
  return s !== 'precopy' && s !== 'par-migrate';
}
