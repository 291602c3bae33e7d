/**
 * The default audit store: one SQLite file (better-sqlite3, WAL, busy timeout so that
 * several processes on one host may share the file).
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import { attemptFromRow, attemptWhere, detailsOf, eventFromRow, eventWhere, limitOf, numberAttempt, startParams, START_COLUMNS, type AttemptRow, type EventRow } from './rows';
import type { AttemptEnd, AttemptStart, AuditAttempt, AuditEvent, AuditEventRecord, AuditQuery, AuditStore } from './types';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS attempts (
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
  started_at_ms INTEGER NOT NULL,
  ended_at_ms INTEGER,
  outcome TEXT NOT NULL,
  outcome_reason TEXT,
  decisions TEXT NOT NULL DEFAULT '[]',
  details TEXT,
  end_seq INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_ticket ON attempts (ticket);
CREATE INDEX IF NOT EXISTS attempts_vm ON attempts (vm, started_at_ms);
CREATE INDEX IF NOT EXISTS attempts_source ON attempts (source);
CREATE INDEX IF NOT EXISTS attempts_target ON attempts (target);
CREATE INDEX IF NOT EXISTS attempts_started ON attempts (started_at_ms);
CREATE INDEX IF NOT EXISTS attempts_retry_of ON attempts (retry_of);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_end_seq ON attempts (end_seq);
CREATE TABLE IF NOT EXISTS events (
  event_id TEXT PRIMARY KEY,
  at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  ticket TEXT,
  vm TEXT,
  host TEXT,
  evacuation_id TEXT,
  requested_by TEXT,
  message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ticket ON events (ticket);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);
`;

/** Load the native module lazily, with a message that says what to do if it is missing. */
function loadDriver(): typeof BetterSqlite3 {
  const require = createRequire(import.meta.url);
  try {
    return require('better-sqlite3') as typeof BetterSqlite3;
  } catch (e) {
    throw new Error(
      `the SQLite audit store needs better-sqlite3's native module (${(e as Error).message.split('\n')[0]}); run \`npm rebuild better-sqlite3\`, or set FERRY_AUDIT_URL=postgres://… to use PostgreSQL`,
    );
  }
}

export class SqliteAuditStore implements AuditStore {
  readonly kind = 'sqlite' as const;
  private readonly db: BetterSqlite3.Database;

  constructor(readonly file: string) {
    const Database = loadDriver();
    if (file !== ':memory:') fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 10000');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
  }

  async recordStart(a: AttemptStart): Promise<{ attempt: number; retryOf: string | null }> {
    return this.db
      .transaction(() => {
        const existing = this.db.prepare('SELECT attempt, retry_of FROM attempts WHERE attempt_id = ?').get(a.attemptId) as
          | { attempt: number; retry_of: string | null }
          | undefined;
        if (existing) return { attempt: existing.attempt, retryOf: existing.retry_of };
        const earlier = this.db
          .prepare('SELECT attempt_id, attempt FROM attempts WHERE ((vm = ? AND ticket = ?) OR attempt_id = ?) AND attempt_id <> ?')
          .all(a.vm, a.ticket, a.retryOf ?? '', a.attemptId) as { attempt_id: string; attempt: number }[];
        const n = numberAttempt(a, earlier);
        this.db.prepare(`INSERT INTO attempts (${START_COLUMNS}) VALUES (${Array(15).fill('?').join(', ')}, 'running', '[]')`).run(...startParams(a, n));
        return n;
      })
      .immediate();
  }

  async recordEnd(e: AttemptEnd, start?: AttemptStart): Promise<void> {
    if (start) await this.recordStart(start);
    this.db
      .transaction(() => {
        const row = this.db.prepare('SELECT end_seq FROM attempts WHERE attempt_id = ?').get(e.attemptId) as { end_seq: number | null } | undefined;
        if (!row) throw new Error(`audit: no attempt ${e.attemptId} to end`);
        if (row.end_seq !== null) return; // already ended: a retried activity
        const seq = (this.db.prepare('SELECT COALESCE(MAX(end_seq), 0) + 1 AS s FROM attempts').get() as { s: number }).s;
        this.db
          .prepare('UPDATE attempts SET ended_at_ms = ?, outcome = ?, outcome_reason = ?, decisions = ?, details = ?, end_seq = ? WHERE attempt_id = ?')
          .run(e.endedAtMs, e.outcome, e.outcomeReason, JSON.stringify(e.decisions), detailsOf(e), seq, e.attemptId);
      })
      .immediate();
  }

  async recordEvent(e: AuditEvent): Promise<void> {
    this.db
      .prepare('INSERT INTO events (event_id, at_ms, kind, ticket, vm, host, evacuation_id, requested_by, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING')
      .run(e.eventId, e.atMs, e.kind, e.ticket, e.vm, e.host, e.evacuationId, e.requestedBy, e.message);
  }

  async query(q: AuditQuery): Promise<{ attempts: AuditAttempt[]; events: AuditEventRecord[] }> {
    const limit = limitOf(q);
    const w = attemptWhere(q, () => '?');
    const rows = (this.db.prepare(`SELECT * FROM attempts ${w.sql} ORDER BY started_at_ms DESC, attempt DESC LIMIT ?`).all(...w.params, limit) as AttemptRow[]).reverse();
    const ev = eventWhere(q, () => '?');
    const events = (this.db.prepare(`SELECT * FROM events ${ev.sql} ORDER BY at_ms DESC LIMIT ?`).all(...ev.params, limit) as EventRow[]).reverse();
    return { attempts: this.withLinks(rows), events: events.map(eventFromRow) };
  }

  async get(attemptId: string): Promise<AuditAttempt | null> {
    const row = this.db.prepare('SELECT * FROM attempts WHERE attempt_id = ?').get(attemptId) as AttemptRow | undefined;
    return row ? (this.withLinks([row])[0] ?? null) : null;
  }

  async endedSince(afterSeq: number, limit: number): Promise<AuditAttempt[]> {
    const rows = this.db.prepare('SELECT * FROM attempts WHERE end_seq > ? ORDER BY end_seq LIMIT ?').all(afterSeq, limit) as AttemptRow[];
    return rows.map((r) => attemptFromRow(r, []));
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  private withLinks(rows: AttemptRow[]): AuditAttempt[] {
    if (rows.length === 0) return [];
    const ids = rows.map((r) => r.attempt_id);
    const links = new Map<string, string[]>();
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      const found = this.db.prepare(`SELECT attempt_id, retry_of FROM attempts WHERE retry_of IN (${chunk.map(() => '?').join(', ')}) ORDER BY started_at_ms`).all(...chunk) as {
        attempt_id: string;
        retry_of: string;
      }[];
      for (const f of found) links.set(f.retry_of, [...(links.get(f.retry_of) ?? []), f.attempt_id]);
    }
    return rows.map((r) => attemptFromRow(r, links.get(r.attempt_id) ?? []));
  }
}
