/**
 * Controller metrics (Prometheus). Figures of finished attempts come from the audit store
 * (tailed at each scrape, so every controller sharing a store shows the same totals and a
 * restarted controller rebuilds them); running migrations by phase come from Temporal
 * visibility (the Phase search attribute).
 *
 *   ferry_migrations_total{outcome,strategy}       finished attempts
 *   ferry_migration_retries_total                  attempts that retried an earlier one
 *   ferry_migrations_running{phase}                running migrations by phase
 *   ferry_evacuations_running
 *   ferry_migration_downtime_seconds               histogram
 *   ferry_migration_postcopy_duration_seconds      histogram
 *   ferry_migration_duration_seconds               histogram (total time)
 *   ferry_migration_bytes_total{channel}           migration-network | storage-write | storage-read
 *   ferry_migration_fault_latency_p99_seconds      histogram of each post-copy's p99 fault latency
 */
import type { Client } from '@temporalio/client';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AuditStore } from '../audit/types';

export interface ControllerMetrics {
  registry: Registry;
  /** Pull new audit records now (tests; a scrape does it too). */
  refresh(): Promise<void>;
}

const PHASES = ['preparing', 'precopy', 'stop-and-copy', 'switching', 'postcopy', 'verifying', 'rolling-back'];

export function createControllerMetrics(opts: { store: AuditStore; client?: Client | null; visibilityLimit?: number }): ControllerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let cursor = 0;
  let inflight: Promise<void> | null = null;
  let lastRefreshOk = 1;
  // Each tailed metric pulls new audit records before it is read (one read per scrape).
  const pull = (): Promise<void> => refresh().catch(() => undefined);

  const total = new Counter({ name: 'ferry_migrations_total', help: 'Finished migration attempts by outcome and strategy', labelNames: ['outcome', 'strategy'], registers: [registry], collect: pull });
  const retries = new Counter({ name: 'ferry_migration_retries_total', help: 'Attempts that retried an earlier attempt', registers: [registry], collect: pull });
  const downtime = new Histogram({
    name: 'ferry_migration_downtime_seconds',
    help: 'Downtime of completed migrations: source pause to target resume',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10],
    registers: [registry], collect: pull,
  });
  const postcopy = new Histogram({
    name: 'ferry_migration_postcopy_duration_seconds',
    help: 'Post-copy duration of migrations that switched',
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
    registers: [registry], collect: pull,
  });
  const duration = new Histogram({
    name: 'ferry_migration_duration_seconds',
    help: 'Total time of finished migration attempts',
    buckets: [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600],
    registers: [registry], collect: pull,
  });
  const bytes = new Counter({ name: 'ferry_migration_bytes_total', help: 'Bytes moved by finished migrations, per channel', labelNames: ['channel'], registers: [registry], collect: pull });
  const p99 = new Histogram({
    name: 'ferry_migration_fault_latency_p99_seconds',
    help: 'p99 post-copy fault latency of each migration that switched (agents export every fault: ferry_postcopy_fault_latency_seconds)',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
    registers: [registry], collect: pull,
  });
  new Gauge({
    name: 'ferry_audit_store_up',
    help: '1 when the last read of the audit store worked',
    registers: [registry],
    async collect() {
      await refresh().catch(() => undefined);
      this.set(lastRefreshOk);
    },
  });

  const tail = async (): Promise<void> => {
    for (let round = 0; round < 20; round++) {
      const rows = await opts.store.endedSince(cursor, 1000);
      for (const a of rows) {
        cursor = Math.max(cursor, a.endSeq ?? cursor);
        total.inc({ outcome: a.outcome, strategy: a.strategy });
        if (a.attempt > 1 || a.retryOf) retries.inc();
        if (a.downtimeMs !== null && a.outcome === 'completed') downtime.observe(a.downtimeMs / 1000);
        if (a.postcopyDurationMs !== null) postcopy.observe(a.postcopyDurationMs / 1000);
        if (a.totalTimeMs !== null) duration.observe(a.totalTimeMs / 1000);
        if (a.bytes) {
          bytes.inc({ channel: 'migration-network' }, a.bytes.migrationNetwork);
          bytes.inc({ channel: 'storage-write' }, a.bytes.storageWrite);
          bytes.inc({ channel: 'storage-read' }, a.bytes.storageRead);
        }
        if (a.faultLatencyMs) p99.observe(a.faultLatencyMs.p99 / 1000);
      }
      if (rows.length < 1000) return;
    }
  };
  const refresh = (): Promise<void> => {
    inflight ??= tail()
      .then(
        () => {
          lastRefreshOk = 1;
        },
        (e: unknown) => {
          lastRefreshOk = 0;
          throw e;
        },
      )
      .finally(() => {
        inflight = null;
      });
    return inflight;
  };

  const client = opts.client ?? null;
  const limit = opts.visibilityLimit ?? 1000;
  new Gauge({
    name: 'ferry_migrations_running',
    help: 'Running migrations by phase (Temporal visibility)',
    labelNames: ['phase'],
    registers: [registry],
    async collect() {
      if (!client) return;
      const counts: Record<string, number> = Object.fromEntries(PHASES.map((p) => [p, 0]));
      let n = 0;
      try {
        for await (const wf of client.workflow.list({ query: `WorkflowType = 'migrationWorkflow' AND ExecutionStatus = 'Running'` })) {
          const phase = (wf.searchAttributes as Record<string, unknown[] | undefined>).Phase?.[0];
          const key = typeof phase === 'string' ? phase : 'unknown';
          counts[key] = (counts[key] ?? 0) + 1;
          if (++n >= limit) break;
        }
      } catch {
        return;
      }
      this.reset();
      for (const [phase, v] of Object.entries(counts)) this.set({ phase }, v);
    },
  });
  new Gauge({
    name: 'ferry_evacuations_running',
    help: 'Running evacuations (Temporal visibility)',
    registers: [registry],
    async collect() {
      if (!client) return;
      try {
        const c = await client.workflow.count(`WorkflowType = 'evacuationWorkflow' AND ExecutionStatus = 'Running'`);
        this.set(c.count);
      } catch {
        // visibility unavailable: keep the last value
      }
    },
  });
  return { registry, refresh };
}
