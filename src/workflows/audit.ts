/**
 * The audit trail around each migration attempt: a record when it starts and one when it
 * ends (outcome, reason, decisions with their reasons, measured figures), written by
 * controller-side activities on `ferry-control`. Retried attempts link to the attempt they
 * retry. Auditing never stops a migration: an audit write that keeps failing is logged, and
 * the end record carries the whole start record, so a lost start is repaired at the end.
 */
import { ActivityFailure, ApplicationFailure, CancellationScope, ChildWorkflowFailure, isCancellation, log, patched, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { AuditActivities } from '../activities/audit';
import type { AttemptStart } from '../audit/types';
import { CONTROL_QUEUE } from '../common/names';
import type { MigrationReport } from './report';

/** How this attempt relates to others: set by evacuations and the retry endpoint. */
export interface AttemptLink {
  /** 1-based attempt number; unset = numbered by the store (same VM and ticket). */
  attempt?: number | null;
  /** The attempt id (`migrate-<vm>/<run id>`) this attempt retries. */
  retryOf?: string | null;
  evacuationId?: string | null;
  /** Who or what asked: `api:<token name>`, `cli`, `evacuation:<id>`. */
  via?: string | null;
}

export interface AuditedInput {
  vm: string;
  source: string;
  target: string;
  strategy: string;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  audit?: AttemptLink;
}

const acts = proxyActivities<AuditActivities>({
  taskQueue: CONTROL_QUEUE,
  startToCloseTimeout: '10s',
  scheduleToCloseTimeout: '2m',
  retry: { initialInterval: '500ms', maximumInterval: '10s' },
});

function messageOf(err: unknown): string {
  let e: unknown = err;
  while (e instanceof ActivityFailure || e instanceof ChildWorkflowFailure) e = e.cause;
  if (isCancellation(err)) return 'cancelled';
  if (e instanceof ApplicationFailure || e instanceof Error) return e.message || e.name;
  return String(e);
}

/** Run one migration attempt with its audit records around it. */
export async function audited(input: AuditedInput, run: () => Promise<MigrationReport>): Promise<MigrationReport> {
  // Histories recorded before the audit trail replay without it.
  if (!patched('ferry-audit-trail')) return run();
  const info = workflowInfo();
  const link = input.audit ?? {};
  const start: AttemptStart = {
    attemptId: `${info.workflowId}/${info.runId}`,
    migrationId: info.workflowId,
    runId: info.runId,
    vm: String(input?.vm ?? ''),
    source: String(input?.source ?? ''),
    target: String(input?.target ?? ''),
    strategy: String(input?.strategy ?? ''),
    ticket: input?.ticket ?? null,
    requestedBy: input?.requestedBy ?? null,
    reason: input?.reason ?? null,
    via: link.via ?? null,
    evacuationId: link.evacuationId ?? null,
    attempt: link.attempt ?? null,
    retryOf: link.retryOf ?? null,
    startedAtMs: Date.now(),
  };
  await CancellationScope.nonCancellable(async () => {
    try {
      const n = await acts.auditAttemptStarted(start);
      start.attempt = n.attempt;
      start.retryOf = n.retryOf;
    } catch (e) {
      log.warn('audit: start record not written; the end record will carry it', { attemptId: start.attemptId, error: messageOf(e) });
    }
  });
  const end = async (r: Parameters<AuditActivities['auditAttemptEnded']>[0]['end']): Promise<void> => {
    await CancellationScope.nonCancellable(async () => {
      try {
        await acts.auditAttemptEnded({ start, end: r });
      } catch (e) {
        log.error('audit: end record not written', { attemptId: start.attemptId, error: messageOf(e) });
      }
    });
  };
  let report: MigrationReport;
  try {
    report = await run();
  } catch (err) {
    await end({
      attemptId: start.attemptId,
      outcome: 'failed',
      outcomeReason: messageOf(err),
      endedAtMs: Date.now(),
      decisions: [],
      downtimeMs: null,
      postcopyDurationMs: null,
      totalTimeMs: Date.now() - start.startedAtMs,
      bytes: null,
      faultLatencyMs: null,
      verified: null,
    });
    throw err;
  }
  await end({
    attemptId: start.attemptId,
    outcome: report.outcome,
    outcomeReason: report.reason,
    endedAtMs: Date.now(),
    decisions: report.decisions,
    downtimeMs: report.downtimeMs,
    postcopyDurationMs: report.postcopyDurationMs,
    totalTimeMs: report.totalTimeMs,
    bytes: { migrationNetwork: report.bytes.migrationNetwork, storageWrite: report.bytes.storageWrite, storageRead: report.bytes.storageRead },
    faultLatencyMs: report.postcopy?.faultLatencyMs ?? null,
    verified: report.verification ? report.verification.ok && report.verification.where === 'target' : null,
  });
  return report;
}
