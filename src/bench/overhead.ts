/**
 * Orchestration overhead per dirty iteration: the time between one iteration activity
 * ending on the source agent and the next one starting there — the workflow task, the
 * policy decision, scheduling and dispatch — i.e. time between iterations not spent moving
 * pages. Runs precopy migrations that do not converge (max downtime 1 ms) so every boundary
 * is a plain "continue" on the real dev server, controller and agent processes.
 *
 * Runs ferry's server config and the server's stock config side by side in one run.
 *
 *   npm run bench:overhead -- [--migrations 3] [--iterations 110] [--no-stock] [--json]
 */
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { startLocalCluster } from '../support/local-cluster';
import { reportOf, resolveHandle, startMigration } from '../client/migrations';
import { loadConfig } from '../common/config';
import { temporalTlsOption } from '../common/temporal-tls';
import { CONTROL_QUEUE } from '../common/names';
import { FERRY_DYNAMIC_CONFIG } from '../common/server-tuning';

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

type History = Awaited<ReturnType<ReturnType<Client['workflow']['getHandle']>['fetchHistory']>>;

/** Per boundary: completion → workflow task → next activity scheduled → started. */
function explain(history: History, out: Record<string, number[]>): void {
  const t = (e: NonNullable<History['events']>[number]): number => {
    const ts = e.eventTime;
    return Number(ts?.seconds ?? 0) * 1000 + Math.floor((ts?.nanos ?? 0) / 1e6);
  };
  const events = history.events ?? [];
  const add = (k: string, v: number): void => void (out[k] ??= []).push(v);
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (!e.activityTaskCompletedEventAttributes) continue;
    const find = (pred: (x: NonNullable<History['events']>[number]) => boolean): NonNullable<History['events']>[number] | undefined => events.slice(i + 1).find(pred);
    const wfStarted = find((x) => !!x.workflowTaskStartedEventAttributes);
    const wfCompleted = find((x) => !!x.workflowTaskCompletedEventAttributes);
    const scheduled = find((x) => !!x.activityTaskScheduledEventAttributes);
    const actStarted = find((x) => !!x.activityTaskStartedEventAttributes);
    if (!wfStarted || !wfCompleted || !scheduled) continue;
    add('completed→workflowTaskStarted', t(wfStarted) - t(e));
    add('workflowTaskStarted→Completed', t(wfCompleted) - t(wfStarted));
    if (actStarted) add('activityScheduled→Started', t(actStarted) - t(scheduled));
  }
}

interface Measured {
  samples: number;
  medianMs: number;
  p95Ms: number;
  minMs: number | null;
  maxMs: number | null;
  /** Per migration: median gap (ms) — the spread across repeats. */
  perMigrationMedianMs: number[];
  /** Same server, same processes: consecutive trivial activities (pingLoopWorkflow). */
  floorMedianMs: number;
  floorP95Ms: number;
  /** From the last migration's history: where a boundary's time goes (medians, ms). */
  historyBreakdownMedianMs: Record<string, number>;
}

const sortNum = (v: number[]): number[] => [...v].sort((a, b) => a - b);

/** One cluster (dev server, controller, two agents); `migrations` non-converging precopy runs. */
async function measure(opts: { stockServer: boolean; migrations: number; iterations: number; log: (l: string) => void }): Promise<Measured> {
  const { log } = opts;
  const cfg = loadConfig(process.env);
  const cluster = await startLocalCluster({ cfg, hosts: ['bench-a', 'bench-b'], log, stockServer: opts.stockServer });
  const gaps: number[] = [];
  const perMigration: number[] = [];
  const breakdown: Record<string, number[]> = {};
  const floor: number[] = [];
  try {
    const connection = await Connection.connect({ address: cluster.address, ...(cfg.temporalAddress ? temporalTlsOption(cfg.temporalTls) : {}) });
    const client = new Client({ connection, namespace: cfg.namespace });
    for (let m = 0; m < opts.migrations; m++) {
      const vm = `overhead-${m}`;
      const [source, target] = m % 2 === 0 ? ['bench-a', 'bench-b'] : ['bench-b', 'bench-a'];
      await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-create-${vm}-${Date.now()}`,
        args: [{ host: source, op: 'create', spec: { name: vm, memoryBytes: 32 * 2 ** 20, workload: 'memcached', seed: m + 1 } }],
      });
      const started = await startMigration(client, {
        vm,
        source,
        target,
        strategy: 'precopy',
        options: { bandwidthBytesPerSec: 256 * 2 ** 20, storageBandwidthBytesPerSec: 0, maxDowntimeMs: 1, maxIterations: opts.iterations, pbdata: 'off', compression: false, zeroElision: true },
      });
      const handle = resolveHandle(client, `${started.workflowId}/${started.runId}`);
      const r = await reportOf(handle);
      if (m === opts.migrations - 1) explain(await handle.fetchHistory(), breakdown);
      // Destroy the migrated guest: a guest left running would load the 2-core machine.
      await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-destroy-${vm}-${Date.now()}`,
        args: [{ host: target, op: 'destroy', name: vm }],
      });
      const mine = r.iterations.slice(1).map((it, i) => it.startedAtMs - r.iterations[i]!.finishedAtMs);
      gaps.push(...mine);
      perMigration.push(quantile(sortNum(mine), 0.5));
      if (process.env.FERRY_BENCH_DEBUG) log(`gaps: ${mine.map((g) => g.toFixed(0)).join(' ')}; durations: ${r.iterations.map((i) => i.durationMs.toFixed(0)).join(' ')}`);
      log(`migration ${m + 1}/${opts.migrations}: ${r.iterations.length} consecutive iterations, outcome ${r.outcome}, median gap ${quantile(sortNum(mine), 0.5).toFixed(1)} ms`);
    }
    // The floor: the same dispatch path with nothing to do.
    const stamps = (await client.workflow.execute('pingLoopWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `ping-${Date.now()}`, args: [{ host: 'bench-a', n: 100 }] })) as number[];
    floor.push(...stamps.slice(1).map((t, i) => t - stamps[i]!));
    await connection.close();
  } finally {
    await cluster.stop();
  }
  const sorted = sortNum(gaps);
  return {
    samples: sorted.length,
    medianMs: quantile(sorted, 0.5),
    p95Ms: quantile(sorted, 0.95),
    minMs: sorted[0] ?? null,
    maxMs: sorted[sorted.length - 1] ?? null,
    perMigrationMedianMs: perMigration,
    floorMedianMs: quantile(sortNum(floor), 0.5),
    floorP95Ms: quantile(sortNum(floor), 0.95),
    historyBreakdownMedianMs: Object.fromEntries(Object.entries(breakdown).map(([k, v]) => [k, quantile(sortNum(v), 0.5)])),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { migrations: { type: 'string' }, iterations: { type: 'string' }, json: { type: 'boolean' }, 'no-stock': { type: 'boolean' } } });
  const migrations = Number(values.migrations ?? 3);
  const iterations = Number(values.iterations ?? 110);
  if (!(Number.isInteger(migrations) && migrations >= 1) || !(Number.isInteger(iterations) && iterations >= 2)) {
    throw new Error('--migrations must be an integer ≥ 1 and --iterations an integer ≥ 2');
  }
  const log = (l: string): void => void process.stderr.write(`${l}\n`);
  // Side by side in one run: ferry's server config, then the server's stock config.
  log('ferry: orchestration overhead with ferry\'s server config');
  const ferry = await measure({ stockServer: false, migrations, iterations, log });
  let stock: Measured | null = null;
  if (!values['no-stock']) {
    log('ferry: orchestration overhead with the stock server config');
    stock = await measure({ stockServer: true, migrations, iterations, log });
  }
  const result = {
    what: 'ms between the end of one iteration activity and the start of the next, on the source agent (dev server, controller and agents as local processes)',
    migrations,
    iterationsPerMigration: iterations,
    goal: { medianMs: 30, p95Ms: 50 },
    pass: ferry.medianMs <= 30 && ferry.p95Ms <= 50,
    serverConfig: FERRY_DYNAMIC_CONFIG,
    ferry,
    stock,
  };
  if (values.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else {
    const line = (name: string, m: Measured): string =>
      `${name}: median ${m.medianMs.toFixed(1)} ms, p95 ${m.p95Ms.toFixed(1)} ms over ${m.samples} boundaries (per-migration medians ${m.perMigrationMedianMs.map((x) => x.toFixed(1)).join(', ')} ms); ` +
      `floor (trivial activity after trivial activity): median ${m.floorMedianMs} ms, p95 ${m.floorP95Ms} ms\n`;
    process.stdout.write(`orchestration overhead per iteration (goal: median ≤ 30 ms, p95 ≤ 50 ms) — ${result.pass ? 'met' : 'NOT met'}\n`);
    process.stdout.write(line("  ferry's server config", ferry));
    if (stock) process.stdout.write(line('  stock server config  ', stock));
  }
}

await main();
