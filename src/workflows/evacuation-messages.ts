/** Queries and updates of the evacuation workflow, and its summary (JSON-safe). */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { Limits } from '../policy/placement';

export type ItemStatus = 'queued' | 'running' | 'completed' | 'failed' | 'rolled-back' | 'not-placed' | 'cancelled' | 'unreachable';

export interface EvacuationItem {
  vm: string;
  source: string;
  /** null when it could not be placed. */
  target: string | null;
  memoryBytes: number;
  priority: number;
  seq: number;
  status: ItemStatus;
  /** Attempts started so far. */
  attempts: number;
  /** Why it is where it is: the placement, the limit it waits for, the last outcome. */
  reason: string;
  placement: string | null;
  strategy: string;
  /** Attempt ids (`migrate-<vm>/<run id>`), oldest first. */
  attemptIds: string[];
  /** Retry backoff: not before this workflow time. */
  notBeforeMs: number;
  /** Sum of the attempts' wall-clock times. */
  timeMs: number;
  bandwidthBytesPerSec: number;
}

/** One attempt as the evacuation saw it: from the child's start to its result. */
export interface TimelineEntry {
  vm: string;
  attempt: number;
  attemptId: string | null;
  source: string;
  target: string;
  startMs: number;
  endMs: number | null;
  outcome: string | null;
}

export interface EvacuationState {
  id: string;
  startedAtMs: number;
  items: EvacuationItem[];
  timeline: TimelineEntry[];
  /** Source hosts whose agents did not answer (their VMs are unknown). */
  unreachable: string[];
  /** Candidate targets and their free memory at planning time. */
  candidates: { hostId: string; freeBytes: number }[];
  /** Runs so far (continue-as-new). */
  run: number;
}

export interface EvacuationVmSummary {
  vm: string;
  source: string;
  target: string | null;
  outcome: ItemStatus;
  attempts: number;
  timeMs: number;
  strategy: string;
  reason: string;
  attemptIds: string[];
}

export interface EvacuationSummary {
  id: string;
  hosts: string[];
  targets: string[];
  ticket: string | null;
  requestedBy: string | null;
  status: 'running' | 'completed' | 'partial' | 'cancelled';
  limits: Limits;
  startedAt: string;
  endedAt: string | null;
  totalTimeMs: number;
  counts: Record<string, number>;
  vms: EvacuationVmSummary[];
  unreachable: string[];
  timeline: TimelineEntry[];
  runs: number;
}

export const evacuationQuery = defineQuery<EvacuationSummary>('evacuation');

/** Cancel queued VMs (all queued ones when `vms` is omitted). Running migrations go on;
 * cancel those with `ferry cancel <vm>`. */
export const cancelQueuedUpdate = defineUpdate<
  { cancelled: string[]; notQueued: { vm: string; status: ItemStatus }[] },
  [{ vms?: string[]; by?: string; reason?: string }]
>('cancelQueued');
