/**
 * Inputs and results of the migration activities. JSON-safe: they sit in workflow history.
 * Every number is measured by the agent that did the work.
 */
import type { IterationStat, StrategyName, SwitchRule } from '../policy/types';
import type { ChannelGrant } from '../security/channel-secret';

export type PbDataMode = 'sync' | 'async' | 'off';

export interface MigrationOptions {
  /** Migration network cap, bytes/s (0 = uncapped). */
  bandwidthBytesPerSec: number;
  /** Storage network cap, bytes/s (0 = uncapped). */
  storageBandwidthBytesPerSec: number;
  maxDowntimeMs: number;
  maxIterations: number;
  pbdata: PbDataMode;
  compression: boolean;
  zeroElision: boolean;
  /** Test aid: digest the source's memory at the pause (hashed at release, off the downtime)
   * and the target's before it resumes (stop-and-copy only; that hashing adds to downtime). */
  digest?: boolean;
  /** Post-copy: a fault request unanswered this long counts as a lost channel (PbData fallback). */
  faultTimeoutMs?: number;
  /** as-hybrid / pa-hybrid: ferry's switch rule (the default) or the paper's exactly. */
  switchRule?: SwitchRule;
  /** Sweeps (bench --suite regret): switch to post-copy after this many rounds. */
  switchAfterRounds?: number;
  /** How long a step waits for a host agent (to pick it up; heartbeats at a fraction): an agent
   * cut off from Temporal this long ends the migration (rollback before the switch). Default 30 s. */
  agentTimeoutMs?: number;
}

export interface StepRef {
  migrationId: string;
  vm: string;
}

export interface VmDescription {
  vm: string;
  host: string;
  memoryBytes: number;
  pageSize: number;
  pageCount: number;
  vcpus: number;
  workload: string;
  state: string;
  /**
   * Non-zero pages of the guest's memory, counted when the caller asked (`countNonZeroUpToBytes`);
   * the count stops once that many bytes of them were found.
   */
  nonZeroPages?: number;
}

export interface DescribeVmInput {
  vm: string;
  /** Count the guest's non-zero pages, stopping at this many bytes of them (par-migrate's worth test). */
  countNonZeroUpToBytes?: number;
}

export interface PrepareTargetInput extends StepRef {
  source: string;
  memoryBytes: number;
  pageSize: number;
  pageCount: number;
  vcpus: number;
  workload: string;
}

export interface PrepareTargetResult {
  /** How long this target's last resumes took (restore + vCPUs running), median ms; null before its first. */
  resumeEstimateMs?: number | null;
  /**
   * The largest whole-pause overhead of this target's last pauses (ms): each pause measured
   * from the source's pause to the resume here, less the source's own send. It holds what no
   * single part measures: the orchestration between the send and the resume, under load.
   * null before its first pause.
   */
  pauseOverheadEstimateMs?: number | null;
  dataAddress: string;
  /** What the source derives channel-2's secret from (agents with a cluster key): no secret in history. */
  grant?: ChannelGrant;
  /** Per-migration channel-2 secret, only from a target without a cluster key. */
  secret?: string;
  atMs: number;
}

export interface PrepareSourceInput extends StepRef {
  target: string;
  dataAddress: string;
  grant?: ChannelGrant;
  secret?: string;
  strategy: StrategyName;
  options: MigrationOptions;
}

export interface PrepareSourceResult {
  startedAtMs: number;
  pageCount: number;
  pageSize: number;
}

export interface StaticSaveResult {
  pages: number;
  zeroPages: number;
  bytesWritten: number;
  saveMs: number;
}

export interface StaticMergeResult {
  pages: number;
  skippedNewer: number;
  bytesRead: number;
  mergeMs: number;
}

export interface IterationInput extends StepRef {
  index: number;
  /** Iteration 1 of a strategy without par-migrate sends every page (the bulk round). */
  bulk: boolean;
  /**
   * par-migrate while StaticData is saved: start the round only once it is worth a round —
   * at least `worthPages` dirty, or the save ended — waiting at most `maxWaitMs`. A round
   * started at once would send the handful of pages dirtied since the last one, and cost a
   * workflow round trip for them.
   */
  startWhen?: { worthPages: number; maxWaitMs: number };
}

export type IterationResult = IterationStat & { finishedAtMs: number };

export interface StopAndCopyResult {
  pausedAtMs: number;
  pages: number;
  bytes: number;
  durationMs: number;
  digest: string | null;
}

export interface ResumeResult {
  resumedAtMs: number;
  digest: string | null;
}

export interface SwitchResult {
  pausedAtMs: number;
  /** How long the switch's own sending took (device state, the missing set, the barrier). */
  durationMs?: number;
  /** Pages not on the target at the pause: they will be missing there. */
  missingPages: number;
  bytes: number;
  digest: string | null;
}

export interface PbDataResult {
  pages: number;
  bytesWritten: number;
  ms: number;
  committedAtMs: number;
}

export interface PushResult {
  pushedPages: number;
  faultPagesServed: number;
  bytes: number;
  /** The channel was lost before every page was pushed. */
  channelLost: boolean;
}

export interface DrainResult {
  completedAtMs: number;
  faults: number;
  faultLatencyMs: { p50: number; p99: number; max: number; histogram?: LatencyHistogram };
  pushedPages: number;
  pbdataPages: number;
  /** Pages the target asked for itself after a quiet spell without the source's push (asked, not necessarily the ones that came). */
  pulledPages?: number;
  fellBackToPbData: boolean;
  bytesReceived: number;
  storageBytesRead: number;
}

export interface VerifyResult {
  ok: boolean;
  pagesChecked: number;
  mismatches: number;
  method: string;
  firstMismatches: string[];
}

export interface ReleaseResult {
  releasedAtMs: number;
  /** Channel-2 bytes the source sent in all (both lanes), for the report. */
  channelBytes: number;
  storageBytesWritten: number;
  /** Test aid: SHA-256 of the source memory as it was at the pause. */
  digest: string | null;
}

export interface RollbackResult {
  guestRunning: boolean;
  verification: VerifyResult | null;
  note: string;
}

/**
 * Post-copy fault latencies in buckets: `counts[i]` faults took at most `leMs[i]` ms (and
 * more than `leMs[i-1]`); the last count is the faults above the last bound.
 */
export interface LatencyHistogram {
  leMs: number[];
  counts: number[];
}

/** Bucket bounds of the fault-latency histogram (ms): powers of two from 1/4 ms to 1 s. */
export const FAULT_LATENCY_BOUNDS_MS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/** The histogram of these latencies over `bounds` (one more count than bounds: the overflow). */
export function latencyHistogram(latenciesMs: readonly number[], bounds: readonly number[] = FAULT_LATENCY_BOUNDS_MS): LatencyHistogram {
  const counts = new Array<number>(bounds.length + 1).fill(0);
  for (const ms of latenciesMs) {
    let i = 0;
    while (i < bounds.length && ms > bounds[i]!) i++;
    counts[i]!++;
  }
  return { leMs: [...bounds], counts };
}

