/**
 * The audit store on PostgreSQL (`pg`), for controllers that share one trail (several
 * controllers, or a trail that must live on a managed database). Same schema and semantics
 * as the SQLite store.
 */
import type { Pool, PoolClient } from 'pg';
import { attemptFromRow, attemptWhere, detailsOf, eventFromRow, eventWhere, limitOf, numberAttempt, startParams, START_COLUMNS, type AttemptRow, type EventRow } from './rows';
import type { AttemptEnd, AttemptStart, AuditAttempt, AuditEvent, AuditEventRecord, AuditQuery, AuditStore } from './types';

const SCHEMA = `
CREATE SEQUENCE IF NOT EXISTS ferry_audit_end_seq;
CREATE TABLE IF NOT EXISTS ferry_audit_attempts (
  attempt_id TEXT PRIMARY KEY,
  migration_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  vm TEXT NOT NULL,
  source TEXT NOT NULL,
  target TEXT NOT NULL,
  strategy TEXT NOT NULL,
  ticket TEXT,
  requested_by TEXT,
  reason TEXT,
  via TEXT,
  evacuation_id TEXT,
  attempt INTEGER NOT NULL,
  retry_of TEXT,
  started_at_ms BIGINT NOT NULL,
  ended_at_ms BIGINT,
  outcome TEXT NOT NULL,
  outcome_reason TEXT,
  decisions TEXT NOT NULL DEFAULT '[]',
  details TEXT,
  end_seq BIGINT UNIQUE
);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_ticket ON ferry_audit_attempts (ticket);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_vm ON ferry_audit_attempts (vm, started_at_ms);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_source ON ferry_audit_attempts (source);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_target ON ferry_audit_attempts (target);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_started ON ferry_audit_attempts (started_at_ms);
CREATE INDEX IF NOT EXISTS ferry_audit_attempts_retry_of ON ferry_audit_attempts (retry_of);
CREATE TABLE IF NOT EXISTS ferry_audit_events (
  event_id TEXT PRIMARY KEY,
  at_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  ticket TEXT,
  vm TEXT,
  host TEXT,
  evacuation_id TEXT,
  requested_by TEXT,
  message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ferry_audit_events_ticket ON ferry_audit_events (ticket);
CREATE INDEX IF NOT EXISTS ferry_audit_events_at ON ferry_audit_events (at_ms);
`;

const ph = (i: number): string => `$${i + 1}`;

export class PostgresAuditStore implements AuditStore {
  readonly kind = 'postgres' as const;
  private ready: Promise<void> | null = null;

  private constructor(private readonly pool: Pool) {}

  static async open(url: string): Promise<PostgresAuditStore> {
    const pg = await import('pg');
    const PoolCtor = (pg.default?.Pool ?? (pg as unknown as { Pool: typeof Pool }).Pool) as typeof Pool;
    const store = new PostgresAuditStore(new PoolCtor({ connectionString: url, max: 4 }));
    await store.init();
    return store;
  }

  private init(): Promise<void> {
    this.ready ??= this.pool.query(SCHEMA).then(() => undefined);
    return this.ready;
  }

  private async tx<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    await this.init();
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      // One writer at a time for numbering (attempts, end order): a transaction-level lock.
      await c.query("SELECT pg_advisory_xact_lock(hashtext('ferry_audit'))");
      const r = await fn(c);
      await c.query('COMMIT');
      return r;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }

  async recordStart(a: AttemptStart): Promise<{ attempt: number; retryOf: string | null }> {
    return this.tx(async (c) => {
      const ex = await c.query<{ attempt: number; retry_of: string | null }>('SELECT attempt, retry_of FROM ferry_audit_attempts WHERE attempt_id = $1', [a.attemptId]);
      const row = ex.rows[0];
      if (row) return { attempt: Number(row.attempt), retryOf: row.retry_of };
      const earlier = (
        await c.query<{ attempt_id: string; attempt: number }>(
          'SELECT attempt_id, attempt FROM ferry_audit_attempts WHERE ((vm = $1 AND ticket = $2) OR attempt_id = $3) AND attempt_id <> $4',
          [a.vm, a.ticket, a.retryOf ?? '', a.attemptId],
        )
      ).rows;
      const n = numberAttempt(a, earlier);
      await c.query(
        `INSERT INTO ferry_audit_attempts (${START_COLUMNS}) VALUES (${Array.from({ length: 15 }, (_, i) => ph(i)).join(', ')}, 'running', '[]') ON CONFLICT (attempt_id) DO NOTHING`,
        startParams(a, n),
      );
      return n;
    });
  }

  async recordEnd(e: AttemptEnd, start?: AttemptStart): Promise<void> {
    if (start) await this.recordStart(start);
    await this.tx(async (c) => {
      const r = await c.query<{ end_seq: string | null }>('SELECT end_seq FROM ferry_audit_attempts WHERE attempt_id = $1', [e.attemptId]);
      const row = r.rows[0];
      if (!row) throw new Error(`audit: no attempt ${e.attemptId} to end`);
      if (row.end_seq !== null) return;
      await c.query(
        "UPDATE ferry_audit_attempts SET ended_at_ms = $1, outcome = $2, outcome_reason = $3, decisions = $4, details = $5, end_seq = nextval('ferry_audit_end_seq') WHERE attempt_id = $6",
        [e.endedAtMs, e.outcome, e.outcomeReason, JSON.stringify(e.decisions), detailsOf(e), e.attemptId],
      );
    });
  }

  async recordEvent(e: AuditEvent): Promise<void> {
    await this.init();
    await this.pool.query(
      'INSERT INTO ferry_audit_events (event_id, at_ms, kind, ticket, vm, host, evacuation_id, requested_by, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING',
      [e.eventId, e.atMs, e.kind, e.ticket, e.vm, e.host, e.evacuationId, e.requestedBy, e.message],
    );
  }

  async query(q: AuditQuery): Promise<{ attempts: AuditAttempt[]; events: AuditEventRecord[] }> {
    await this.init();
    const limit = limitOf(q);
    const w = attemptWhere(q, ph);
    const rows = (await this.pool.query<AttemptRow>(`SELECT * FROM ferry_audit_attempts ${w.sql} ORDER BY started_at_ms DESC, attempt DESC LIMIT ${limit}`, w.params)).rows.reverse();
    const ev = eventWhere(q, ph);
    const events = (await this.pool.query<EventRow>(`SELECT * FROM ferry_audit_events ${ev.sql} ORDER BY at_ms DESC LIMIT ${limit}`, ev.params)).rows.reverse();
    return { attempts: await this.withLinks(rows), events: events.map(eventFromRow) };
  }

  async get(attemptId: string): Promise<AuditAttempt | null> {
    await this.init();
    const r = await this.pool.query<AttemptRow>('SELECT * FROM ferry_audit_attempts WHERE attempt_id = $1', [attemptId]);
    const row = r.rows[0];
    return row ? ((await this.withLinks([row]))[0] ?? null) : null;
  }

  async endedSince(afterSeq: number, limit: number): Promise<AuditAttempt[]> {
    await this.init();
    const r = await this.pool.query<AttemptRow>('SELECT * FROM ferry_audit_attempts WHERE end_seq > $1 ORDER BY end_seq LIMIT $2', [afterSeq, limit]);
    return r.rows.map((row) => attemptFromRow(row, []));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private async withLinks(rows: AttemptRow[]): Promise<AuditAttempt[]> {
    if (rows.length === 0) return [];
    const ids = rows.map((r) => r.attempt_id);
    const found = await this.pool.query<{ attempt_id: string; retry_of: string }>(
      'SELECT attempt_id, retry_of FROM ferry_audit_attempts WHERE retry_of = ANY($1) ORDER BY started_at_ms',
      [ids],
    );
    const links = new Map<string, string[]>();
    for (const f of found.rows) links.set(f.retry_of, [...(links.get(f.retry_of) ?? []), f.attempt_id]);
    return rows.map((r) => attemptFromRow(r, links.get(r.attempt_id) ?? []));
  }
}
