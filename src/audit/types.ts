/**
 * The audit trail: one record per attempt of every migration (who asked, ticket, reason,
 * strategy, hosts, start/end, outcome, decisions with reasons, attempt number and the
 * attempt it retried), and evacuation-level events (placement, VMs that could not be
 * placed, cancels). Kept in a small store of its own so it outlives Temporal's retention.
 */

export type AttemptOutcome = 'running' | 'completed' | 'rolled-back' | 'failed';

export interface AuditDecision {
  atMs: number;
  iteration: number;
  action: string;
  reason: string;
}

export interface AttemptStart {
  /** `migrate-<vm>/<run id>`: the report id of this attempt. */
  attemptId: string;
  /** The workflow id, `migrate-<vm>`. */
  migrationId: string;
  runId: string;
  vm: string;
  source: string;
  target: string;
  strategy: string;
  ticket: string | null;
  requestedBy: string | null;
  reason: string | null;
  /** Who or what asked: `api:<token name>`, `cli`, `evacuation:<id>`. */
  via: string | null;
  evacuationId: string | null;
  /** 1-based; null = let the store number it (earlier attempts of the same VM and ticket). */
  attempt: number | null;
  /** The attempt id this one retries; null with attempt null = let the store link it. */
  retryOf: string | null;
  startedAtMs: number;
}

export interface AttemptEnd {
  attemptId: string;
  outcome: Exclude<AttemptOutcome, 'running'>;
  outcomeReason: string;
  endedAtMs: number;
  decisions: AuditDecision[];
  /** Measured figures of the report, for metrics and auditors. */
  downtimeMs: number | null;
  postcopyDurationMs: number | null;
  totalTimeMs: number | null;
  bytes: { migrationNetwork: number; storageWrite: number; storageRead: number } | null;
  faultLatencyMs: { p50: number; p99: number; max: number } | null;
  verified: boolean | null;
}

export interface AuditAttempt {
  attemptId: string;
  migrationId: string;
  runId: string;
  vm: string;
  source: string;
  target: string;
  strategy: string;
  ticket: string | null;
  requestedBy: string | null;
  reason: string | null;
  via: string | null;
  evacuationId: string | null;
  attempt: number;
  retryOf: string | null;
  /** Attempt ids that retried this one (filled on read). */
  retriedBy: string[];
  startedAt: string;
  endedAt: string | null;
  outcome: AttemptOutcome;
  outcomeReason: string | null;
  decisions: AuditDecision[];
  downtimeMs: number | null;
  postcopyDurationMs: number | null;
  totalTimeMs: number | null;
  bytes: { migrationNetwork: number; storageWrite: number; storageRead: number } | null;
  faultLatencyMs: { p50: number; p99: number; max: number } | null;
  verified: boolean | null;
  /** Store order of the end record (for metrics tailing); null while running. */
  endSeq: number | null;
}

export interface AuditEvent {
  /** Unique per event (idempotent writes): e.g. `evacuate-OPS-1/not-placed/vm-6`. */
  eventId: string;
  atMs: number;
  kind: string;
  ticket: string | null;
  vm: string | null;
  host: string | null;
  evacuationId: string | null;
  requestedBy: string | null;
  message: string;
}

export interface AuditEventRecord extends Omit<AuditEvent, 'atMs'> {
  at: string;
}

export interface AuditQuery {
  ticket?: string;
  vm?: string;
  /** Source or target. */
  host?: string;
  evacuationId?: string;
  /** Attempts that overlap [fromMs, toMs]; events within it. */
  fromMs?: number;
  toMs?: number;
  limit?: number;
}

export interface AuditStore {
  readonly kind: 'sqlite' | 'postgres';
  /** Idempotent on attemptId. Returns the attempt number and link the store settled on. */
  recordStart(a: AttemptStart): Promise<{ attempt: number; retryOf: string | null }>;
  /** Idempotent on attemptId; creates the record if its start was never written. */
  recordEnd(e: AttemptEnd, start?: AttemptStart): Promise<void>;
  recordEvent(e: AuditEvent): Promise<void>;
  query(q: AuditQuery): Promise<{ attempts: AuditAttempt[]; events: AuditEventRecord[] }>;
  get(attemptId: string): Promise<AuditAttempt | null>;
  /** Ended attempts with endSeq > afterSeq, in end order (metrics tail the store). */
  endedSince(afterSeq: number, limit: number): Promise<AuditAttempt[]>;
  close(): Promise<void>;
}

export const AUDIT_MAX_LIMIT = 1000;
export const AUDIT_DEFAULT_LIMIT = 200;
