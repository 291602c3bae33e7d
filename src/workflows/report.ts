/** The migration report of CONTRACT.md. Every figure comes from an agent's measurement. */
import type { Action, StrategyName } from '../policy/types';
import type { LatencyHistogram } from '../activities/types';

export type Outcome = 'completed' | 'rolled-back' | 'failed';

export interface ReportIteration {
  index: number;
  pages: number;
  durationMs: number;
  lambda: number;
  bytes: number;
  dirtyAfter: number;
  startedAtMs: number;
  finishedAtMs: number;
  /** The dirty set's growth during the round: [ms, pages] (emulated engine). */
  growth?: number[][];
  /** The round's pages went to StaticData, not over the migration network (QEMU's relayed bulk pass). */
  offLink?: boolean;
}

export interface ReportDecision {
  atMs: number;
  iteration: number;
  action: Action;
  reason: string;
}

export interface MigrationReport {
  id: string;
  vm: string;
  source: string;
  target: string;
  strategy: StrategyName;
  workload: string;
  ticket: string | null;
  requestedBy: string | null;
  outcome: Outcome;
  reason: string;
  pageSize: number;
  memoryBytes: number;
  startedAt: string;
  totalTimeMs: number;
  downtimeMs: number | null;
  postcopyDurationMs: number | null;
  bytes: { migrationNetwork: number; storageWrite: number; storageRead: number; total: number };
  iterations: ReportIteration[];
  decisions: ReportDecision[];
  static: { pages: number; saveMs: number; mergeMs: number; skippedNewer: number } | null;
  /** The last round with the guest paused: pages and bytes moved, and how long that took. */
  stopAndCopy: { pages: number; bytes: number; sendMs: number } | null;
  postcopy: {
    faults: number;
    /** Emulated driver: measured per fault. QEMU does not report fault latency: null. */
    faultLatencyMs: { p50: number; p99: number; max: number; histogram?: LatencyHistogram } | null;
    pushedPages: number;
    pbdataPages: number;
    fellBackToPbData: boolean;
    pbdata: 'sync' | 'async' | 'off';
    /**
     * QEMU only (the target's postcopy-blocktime): ms during which all vCPUs at once waited
     * for missing pages, and each vCPU's total wait — the guest's stall in post-copy.
     */
    blocktimeMs?: { allVcpusMs: number; perVcpuMs: number[] };
  } | null;
  verification: { ok: boolean; pagesChecked: number; mismatches: number; method: string; where: 'target' | 'source' } | null;
  /** The hypervisor driver of the source host (absent = emulated). */
  driver?: 'emulated' | 'qemu';
  /** QEMU post-copy recoveries over the second network: when, why, where to. */
  recoveries?: { atMs: number; reason: string; uri: string; resumedAfterMs: number }[];
  /** Test aid (digest option): SHA-256 of guest memory at the source pause and at the target before resume. */
  digests?: { source: string | null; target: string | null };
}

/** The fields every runbook's report opens with: who, what, when, and how it ended. */
export function reportHead(h: {
  workflowId: string;
  runId: string;
  input: { vm: string; source: string; target: string; strategy: StrategyName; ticket?: string | null; requestedBy?: string | null };
  workload: string;
  outcome: Outcome;
  reason: string;
  pageSize: number;
  memoryBytes: number;
  startedAtMs: number;
  endedAtMs: number | null;
}): Pick<MigrationReport, 'id' | 'vm' | 'source' | 'target' | 'strategy' | 'workload' | 'ticket' | 'requestedBy' | 'outcome' | 'reason' | 'pageSize' | 'memoryBytes' | 'startedAt' | 'totalTimeMs'> {
  const { input } = h;
  return {
    id: `${h.workflowId}/${h.runId}`,
    vm: input.vm,
    source: input.source,
    target: input.target,
    strategy: input.strategy,
    workload: h.workload,
    ticket: input.ticket ?? null,
    requestedBy: input.requestedBy ?? null,
    outcome: h.outcome,
    reason: h.reason,
    pageSize: h.pageSize,
    memoryBytes: h.memoryBytes,
    startedAt: new Date(h.startedAtMs).toISOString(),
    totalTimeMs: Math.max(0, (h.endedAtMs ?? Date.now()) - h.startedAtMs),
  };
}

/** The report's verification: the target's when the guest got there, else the source's after a rollback. */
export function verificationOf(
  onTarget: { ok: boolean; pagesChecked: number; mismatches: number; method: string } | null,
  onSource: { ok: boolean; pagesChecked: number; mismatches: number; method: string } | null,
): MigrationReport['verification'] {
  const v = onTarget ?? onSource;
  return v ? { ok: v.ok, pagesChecked: v.pagesChecked, mismatches: v.mismatches, method: v.method, where: onTarget ? 'target' : 'source' } : null;
}
