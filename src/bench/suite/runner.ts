/**
 * Runs cells through the real system: a fresh VM booted on the source agent through the
 * vmCommandWorkflow, a migration through the migration workflow (startMigration, the same
 * path as `ferry migrate`), the report from the workflow's result, the VM destroyed after.
 * A cell that fails (an exception, a rolled-back or failed outcome, a verification that
 * does not pass, a timeout) is returned with its error; the suite goes on.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import { CONTROL_QUEUE } from '../../common/names';
import { usesParMigrate } from '../../policy/types';
import { cancelUpdate, forcePostcopyUpdate, progressQuery, type Progress } from '../../workflows/messages';
import type { MigrationReport } from '../../workflows/report';
import { metricsOf } from './metrics';
import type { ProgressBar } from './progress';
import type { CellResult, CellSpec } from './types';

export interface RunnerEnv {
  client: Client;
  source: string;
  target: string;
  /** Prefix of VM names, unique per run. */
  vmPrefix: string;
  warmupMs: number;
  cellTimeoutMs: number;
  progress: ProgressBar;
}

function errorText(e: unknown): string {
  let err = e as { message?: string; cause?: unknown } | undefined;
  // Unwrap WorkflowFailedError → ApplicationFailure / ActivityFailure → the message that says why.
  const seen = new Set<unknown>();
  let msg = err?.message ?? String(e);
  while (err && typeof err === 'object' && err.cause && !seen.has(err.cause)) {
    seen.add(err.cause);
    err = err.cause as typeof err;
    if (err?.message) msg = err.message;
  }
  return msg.split('\n')[0] ?? msg;
}

async function vmCommand(client: Client, host: string, args: Record<string, unknown>, id: string): Promise<void> {
  await client.workflow.execute('vmCommandWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: id,
    args: [{ host, ...args }],
    workflowExecutionTimeout: '2m',
  });
}

/** Run one cell. Never throws: a failure is the result's error. */
export async function runCell(env: RunnerEnv, cell: CellSpec, index: number): Promise<CellResult> {
  const t0 = Date.now();
  const vm = `${env.vmPrefix}-${index}`;
  const result: CellResult = {
    cell,
    status: 'failed',
    error: null,
    report: null,
    metrics: null,
    startedAt: new Date(t0).toISOString(),
    wallMs: 0,
    guestAgeAtStartMs: null,
    force: cell.forcePostcopyAfterRounds === null ? null : { sentAtIteration: null, accepted: false, error: null, wanted: cell.forcePostcopyAfterRounds, actual: null },
  };
  try {
    env.progress.phase(`booting ${vm} (${cell.workload}, ${cell.memoryBytes / 2 ** 20} MiB, seed ${cell.seed})`);
    await vmCommand(
      env.client,
      env.source,
      { op: 'create', spec: { name: vm, memoryBytes: cell.memoryBytes, workload: cell.workload, seed: cell.seed, vcpus: cell.vcpus } },
      `vm-create-${vm}`,
    );
    const bootedAt = Date.now();
    env.progress.phase(`warming up ${env.warmupMs} ms`);
    await sleep(env.warmupMs);
    result.guestAgeAtStartMs = Date.now() - bootedAt;
    const started = await startMigration(env.client, {
      vm,
      source: env.source,
      target: env.target,
      strategy: cell.strategy,
      options: cell.options,
      requestedBy: 'ferry bench',
      reason: cell.id,
    });
    const handle = env.client.workflow.getHandle(started.workflowId, started.runId);
    const report = await watch(env, cell, handle, result);
    result.report = report;
    result.metrics = metricsOf(report, !usesParMigrate(cell.strategy) && cell.strategy !== 'postcopy');
    if (result.force) result.force.actual = result.metrics.roundsBeforeSwitch;
    if (report.outcome !== 'completed') result.error = `${report.outcome}: ${report.reason}`;
    else if (!result.metrics.verified) result.error = `verification did not pass: ${JSON.stringify(report.verification)}`;
    else result.status = 'ok';
  } catch (e) {
    result.error = errorText(e);
  } finally {
    env.progress.phase('destroying the VM');
    // The VM is on the target after a migration, on the source after a rollback or a failure.
    await Promise.all(
      [env.target, env.source].map((host) =>
        vmCommand(env.client, host, { op: 'destroy', name: vm }, `vm-destroy-${vm}-${host}`).catch(() => undefined),
      ),
    );
    result.wallMs = Date.now() - t0;
  }
  return result;
}

/**
 * Follow the migration until its report: progress for the bar, the forcePostcopy update of
 * the fixed-switch cells, and the cell timeout (cancel, then terminate).
 *
 * Fixed switch after n rounds: the workflow looks at a forcePostcopy request at each
 * iteration boundary, so the request is sent while round n runs (once the progress query
 * shows n-1 rounds done; for n = 1 at once): the boundary after round n then switches. If
 * round n ends before the request lands, the switch comes one round later; the cell records
 * the rounds actually done (force.actual) and the tables show them.
 */
async function watch(env: RunnerEnv, cell: CellSpec, handle: WorkflowHandle, result: CellResult): Promise<MigrationReport> {
  let done = false;
  const resultPromise = handle.result() as Promise<MigrationReport>;
  void resultPromise.then(
    () => (done = true),
    () => (done = true),
  );
  const startedAt = Date.now();
  const want = cell.forcePostcopyAfterRounds;
  let forceSent = false;
  let timedOut = false;
  while (!done) {
    let p: Progress | null = null;
    try {
      p = await handle.query(progressQuery);
      env.progress.migration(p);
    } catch {
      // Not started yet, or finished between two polls.
    }
    if (want !== null && !forceSent && p && p.iteration >= want - 1 && (p.phase === 'preparing' || p.phase === 'precopy')) {
      forceSent = true;
      result.force!.sentAtIteration = p.iteration;
      try {
        await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'ferry bench' }] });
        result.force!.accepted = true;
      } catch (e) {
        result.force!.error = errorText(e);
      }
    }
    if (!timedOut && Date.now() - startedAt > env.cellTimeoutMs) {
      timedOut = true;
      env.progress.phase('timed out: cancelling');
      await handle.executeUpdate(cancelUpdate, { args: [{ by: 'ferry bench', reason: `cell timeout ${env.cellTimeoutMs} ms` }] }).catch(() => undefined);
      const settled = await Promise.race([resultPromise.then(() => true, () => true), sleep(60_000).then(() => false)]);
      if (!settled) await handle.terminate(`ferry bench: cell timeout ${env.cellTimeoutMs} ms`).catch(() => undefined);
      throw new Error(`timed out after ${Math.round(env.cellTimeoutMs / 1000)} s (cancelled${settled ? '' : ', then terminated'})`);
    }
    // Poll fast only while a forced switch waits for its round.
    const fast = want !== null && !forceSent && p !== null && p.iteration >= want - 2;
    await Promise.race([resultPromise.then(() => undefined, () => undefined), sleep(fast ? 10 : 200)]);
  }
  return resultPromise;
}
