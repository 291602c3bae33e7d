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
import { startLocalCluster } from '../cli/local';
import { reportOf, resolveHandle, startMigration } from '../client/migrations';
import { loadConfig } from '../common/config';
import { CONTROL_QUEUE } from '../common/names';

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { migrations: { type: 'string' }, iterations: { type: 'string' }, json: { type: 'boolean' } } });
  const migrations = Number(values.migrations ?? 3);
  const iterations = Number(values.iterations ?? 30);
  const log = (l: string): void => void process.stderr.write(`${l}\n`);
  const cfg = loadConfig(process.env);
  const cluster = await startLocalCluster({ cfg, hosts: ['bench-a', 'bench-b'], log });
  const gaps: number[] = [];
  try {
    const connection = await Connection.connect({ address: cluster.address });
    const client = new Client({ connection, namespace: cfg.namespace });
    for (let m = 0; m < migrations; m++) {
      const vm = `overhead-${m}`;
      const [source, target] = m % 2 === 0 ? ['bench-a', 'bench-b'] : ['bench-b', 'bench-a'];
      await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-create-${vm}-${Date.now()}`,
        args: [{ host: source, op: 'create', spec: { name: vm, memoryBytes: 32 * 2 ** 20, workload: 'kernel-compile', seed: m + 1 } }],
      });
      const started = await startMigration(client, {
        vm,
        source,
        target,
        strategy: 'precopy',
        options: { bandwidthBytesPerSec: 256 * 2 ** 20, storageBandwidthBytesPerSec: 0, maxDowntimeMs: 1, maxIterations: iterations, pbdata: 'off', compression: false, zeroElision: true },
      });
      const r = await reportOf(resolveHandle(client, `${started.workflowId}/${started.runId}`));
      for (let i = 1; i < r.iterations.length; i++) gaps.push(r.iterations[i]!.startedAtMs - r.iterations[i - 1]!.finishedAtMs);
      log(`migration ${m + 1}/${migrations}: ${r.iterations.length} iterations, outcome ${r.outcome}`);
    }
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
  };
  if (values.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else process.stdout.write(`orchestration overhead per iteration: median ${result.medianMs} ms, p95 ${result.p95Ms} ms over ${result.samples} boundaries (goal: median ≤ 30 ms)\n`);
}

await main();
