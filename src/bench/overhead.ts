/**
 * Orchestration overhead per dirty iteration: the time between one iteration activity
 * ending on the source agent and the next one starting there — the workflow task, the
 * policy decision, scheduling and dispatch — i.e. time between iterations not spent moving
 * pages. Runs precopy migrations that do not converge (max downtime 1 ms) so every boundary
 * is a plain "continue" on the real dev server, controller and agent processes.
 *
 *   npm run bench:overhead -- [--migrations 3] [--iterations 30] [--json]
 */
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { startLocalCluster } from '../support/local-cluster';
import { reportOf, resolveHandle, startMigration } from '../client/migrations';
import { loadConfig } from '../common/config';
import { CONTROL_QUEUE } from '../common/names';

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

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { migrations: { type: 'string' }, iterations: { type: 'string' }, json: { type: 'boolean' } } });
  const migrations = Number(values.migrations ?? 3);
  const iterations = Number(values.iterations ?? 30);
  const log = (l: string): void => void process.stderr.write(`${l}\n`);
  const cfg = loadConfig(process.env);
  const cluster = await startLocalCluster({ cfg, hosts: ['bench-a', 'bench-b'], log });
  const gaps: number[] = [];
  const breakdown: Record<string, number[]> = {};
  const floor: number[] = [];
  try {
    const connection = await Connection.connect({ address: cluster.address });
    const client = new Client({ connection, namespace: cfg.namespace });
    for (let m = 0; m < migrations; m++) {
      const vm = `overhead-${m}`;
      const [source, target] = process.env.SAME ? ['bench-a', 'bench-b'] : m % 2 === 0 ? ['bench-a', 'bench-b'] : ['bench-b', 'bench-a'];
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
        options: { bandwidthBytesPerSec: 256 * 2 ** 20, storageBandwidthBytesPerSec: 0, maxDowntimeMs: 1, maxIterations: iterations, pbdata: 'off', compression: false, zeroElision: true },
      });
      const handle = resolveHandle(client, `${started.workflowId}/${started.runId}`);
      const r = await reportOf(handle);
      if (m === migrations - 1) explain(await handle.fetchHistory(), breakdown);
      // Destroy the migrated guest: a guest left running would load the 2-core machine.
      if (!process.env.KEEP) await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-destroy-${vm}-${Date.now()}`,
        args: [{ host: target, op: 'destroy', name: vm }],
      });
      const mine = r.iterations.slice(1).map((it, i) => it.startedAtMs - r.iterations[i]!.finishedAtMs);
      gaps.push(...mine);
      if (process.env.FERRY_BENCH_DEBUG) log(`gaps: ${mine.map((g) => g.toFixed(0)).join(" ")}; durations: ${r.iterations.map((i) => i.durationMs.toFixed(0)).join(" ")}`);
      log(`migration ${m + 1}/${migrations}: ${r.iterations.length} iterations, outcome ${r.outcome}`);
    }
    // The floor: the same dispatch path with nothing to do.
    const stamps = (await client.workflow.execute('pingLoopWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `ping-${Date.now()}`, args: [{ host: 'bench-a', n: 40 }] })) as number[];
    floor.push(...stamps.slice(1).map((t, i) => t - stamps[i]!));
    await connection.close();
  } finally {
    await cluster.stop();
  }
  const sorted = [...gaps].sort((a, b) => a - b);
  const result = {
    what: 'ms between the end of one iteration activity and the start of the next, on the source agent (dev server, controller and agents as local processes)',
    samples: sorted.length,
    medianMs: quantile(sorted, 0.5),
    p95Ms: quantile(sorted, 0.95),
    minMs: sorted[0] ?? null,
    maxMs: sorted[sorted.length - 1] ?? null,
    goalMedianMs: 30,
    pass: quantile(sorted, 0.5) <= 30,
    /** Same server, same processes: consecutive trivial activities (pingLoopWorkflow). */
    floorMedianMs: quantile([...floor].sort((a, b) => a - b), 0.5),
    floorP95Ms: quantile([...floor].sort((a, b) => a - b), 0.95),
    /** From the last migration's history: where a boundary's time goes (medians, ms). */
    historyBreakdownMedianMs: Object.fromEntries(
      Object.entries(breakdown).map(([k, v]) => [k, quantile([...v].sort((a, b) => a - b), 0.5)]),
    ),
  };
  if (values.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else
    process.stdout.write(
      `orchestration overhead per iteration: median ${result.medianMs.toFixed(1)} ms, p95 ${result.p95Ms.toFixed(1)} ms over ${result.samples} boundaries (goal: median ≤ 30 ms); ` +
        `floor (trivial activity after trivial activity): median ${result.floorMedianMs} ms, p95 ${result.floorP95Ms} ms\n`,
    );
}

await main();
