/** Row mapping and numbering shared by the SQLite and PostgreSQL stores. */
import type { AttemptEnd, AttemptStart, AuditAttempt, AuditEventRecord, AuditQuery } from './types';
import { AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT } from './types';

export interface AttemptRow {
  attempt_id: string;
  migration_id: string;
  run_id: string;
  vm: string;
  source: string;
  target: string;
  strategy: string;
  ticket: string | null;
  requested_by: string | null;
  reason: string | null;
  via: string | null;
  evacuation_id: string | null;
  attempt: number | string;
  retry_of: string | null;
  started_at_ms: number | string;
  ended_at_ms: number | string | null;
  outcome: string;
  outcome_reason: string | null;
  decisions: string;
  details: string | null;
  end_seq: number | string | null;
}

export interface EventRow {
  event_id: string;
  at_ms: number | string;
  kind: string;
  ticket: string | null;
  vm: string | null;
  host: string | null;
  evacuation_id: string | null;
  requested_by: string | null;
  message: string;
}

interface Details {
  downtimeMs: number | null;
  postcopyDurationMs: number | null;
  totalTimeMs: number | null;
  bytes: AuditAttempt['bytes'];
  faultLatencyMs: AuditAttempt['faultLatencyMs'];
  verified: boolean | null;
}

export function detailsOf(e: AttemptEnd): string {
  const d: Details = {
    downtimeMs: e.downtimeMs,
    postcopyDurationMs: e.postcopyDurationMs,
    totalTimeMs: e.totalTimeMs,
    bytes: e.bytes,
    faultLatencyMs: e.faultLatencyMs,
    verified: e.verified,
  };
  return JSON.stringify(d);
}

const num = (v: number | string | null): number | null => (v === null ? null : Number(v));

export function attemptFromRow(r: AttemptRow, retriedBy: string[]): AuditAttempt {
  const d: Partial<Details> = r.details ? (JSON.parse(r.details) as Details) : {};
  const ended = num(r.ended_at_ms);
  return {
    attemptId: r.attempt_id,
    migrationId: r.migration_id,
    runId: r.run_id,
    vm: r.vm,
    source: r.source,
    target: r.target,
    strategy: r.strategy,
    ticket: r.ticket,
    requestedBy: r.requested_by,
    reason: r.reason,
    via: r.via,
    evacuationId: r.evacuation_id,
    attempt: Number(r.attempt),
    retryOf: r.retry_of,
    retriedBy,
    startedAt: new Date(Number(r.started_at_ms)).toISOString(),
    endedAt: ended === null ? null : new Date(ended).toISOString(),
    outcome: r.outcome as AuditAttempt['outcome'],
    outcomeReason: r.outcome_reason,
    decisions: JSON.parse(r.decisions) as AuditAttempt['decisions'],
    downtimeMs: d.downtimeMs ?? null,
    postcopyDurationMs: d.postcopyDurationMs ?? null,
    totalTimeMs: d.totalTimeMs ?? null,
    bytes: d.bytes ?? null,
    faultLatencyMs: d.faultLatencyMs ?? null,
    verified: d.verified ?? null,
    endSeq: num(r.end_seq),
  };
}

export function eventFromRow(r: EventRow): AuditEventRecord {
  return {
    eventId: r.event_id,
    at: new Date(Number(r.at_ms)).toISOString(),
    kind: r.kind,
    ticket: r.ticket,
    vm: r.vm,
    host: r.host,
    evacuationId: r.evacuation_id,
    requestedBy: r.requested_by,
    message: r.message,
  };
}

/**
 * The attempt number and link of a new attempt: explicit values win; otherwise an attempt
 * of the same VM under the same ticket follows the earlier ones and retries the latest.
 */
export function numberAttempt(a: AttemptStart, earlier: { attempt_id: string; attempt: number | string }[]): { attempt: number; retryOf: string | null } {
  if (a.attempt !== null) return { attempt: a.attempt, retryOf: a.retryOf };
  const retried = a.retryOf ? earlier.find((e) => e.attempt_id === a.retryOf) : undefined;
  if (retried) return { attempt: Number(retried.attempt) + 1, retryOf: a.retryOf };
  if (!a.ticket || earlier.length === 0) return { attempt: 1, retryOf: a.retryOf };
  const last = earlier.reduce((m, e) => (Number(e.attempt) > Number(m.attempt) ? e : m));
  return { attempt: Number(last.attempt) + 1, retryOf: a.retryOf ?? last.attempt_id };
}

export function limitOf(q: AuditQuery): number {
  const l = q.limit ?? AUDIT_DEFAULT_LIMIT;
  return Math.max(1, Math.min(AUDIT_MAX_LIMIT, Math.floor(l)));
}

/** WHERE clause of an attempts query; `p(i)` renders the i-th placeholder (0-based). */
export function attemptWhere(q: AuditQuery, p: (i: number) => string): { sql: string; params: unknown[] } {
  const where: string[] = [];
  const params: unknown[] = [];
  const add = (clause: (ph: () => string) => string, ...values: unknown[]): void => {
    let n = 0;
    where.push(
      clause(() => {
        const ph = p(params.length + n);
        n++;
        return ph;
      }),
    );
    params.push(...values);
  };
  if (q.ticket !== undefined) add((ph) => `ticket = ${ph()}`, q.ticket);
  if (q.vm !== undefined) add((ph) => `vm = ${ph()}`, q.vm);
  if (q.host !== undefined) add((ph) => `(source = ${ph()} OR target = ${ph()})`, q.host, q.host);
  if (q.evacuationId !== undefined) add((ph) => `evacuation_id = ${ph()}`, q.evacuationId);
  if (q.toMs !== undefined) add((ph) => `started_at_ms <= ${ph()}`, q.toMs);
  if (q.fromMs !== undefined) add((ph) => `(ended_at_ms IS NULL OR ended_at_ms >= ${ph()})`, q.fromMs);
  return { sql: where.length ? `WHERE ${where.join(' AND ')}` : '', params };
}

export function eventWhere(q: AuditQuery, p: (i: number) => string): { sql: string; params: unknown[] } {
  const where: string[] = [];
  const params: unknown[] = [];
  const one = (col: string, v: unknown): void => {
    where.push(`${col} = ${p(params.length)}`);
    params.push(v);
  };
  if (q.ticket !== undefined) one('ticket', q.ticket);
  if (q.vm !== undefined) one('vm', q.vm);
  if (q.host !== undefined) one('host', q.host);
  if (q.evacuationId !== undefined) one('evacuation_id', q.evacuationId);
  if (q.fromMs !== undefined) {
    where.push(`at_ms >= ${p(params.length)}`);
    params.push(q.fromMs);
  }
  if (q.toMs !== undefined) {
    where.push(`at_ms <= ${p(params.length)}`);
    params.push(q.toMs);
  }
  return { sql: where.length ? `WHERE ${where.join(' AND ')}` : '', params };
}

export function startParams(a: AttemptStart, n: { attempt: number; retryOf: string | null }): unknown[] {
  return [a.attemptId, a.migrationId, a.runId, a.vm, a.source, a.target, a.strategy, a.ticket, a.requestedBy, a.reason, a.via, a.evacuationId, n.attempt, n.retryOf, a.startedAtMs];
}

export const START_COLUMNS =
  'attempt_id, migration_id, run_id, vm, source, target, strategy, ticket, requested_by, reason, via, evacuation_id, attempt, retry_of, started_at_ms, outcome, decisions';
