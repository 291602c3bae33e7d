/**
 * One fault trial: a fresh 64 MiB VM, one migration, one fault injected with seeded random
 * timing, and the verdict, judged by the workflow's report AND by asking both agents where
 * the VM runs (inventory): `completed` (verified on the target, not running on the source),
 * `rolled-back` (verified on the source, not on the target), `host-died` (the scenario
 * restarted the source agent and the emulated guest died with its process; the report says
 * so), `missed` (the fault did not land where the scenario wanted it), or `lost` (anything
 * else: not verified anywhere, on both hosts, or no result in time).
 */
import { randomUUID } from 'node:crypto';
import type { WorkflowHandle } from '@temporalio/client';
import type { MigrationOptions } from '../../activities/types';
import { CONTROL_QUEUE, migrationWorkflowId } from '../../common/names';
import type { StrategyName } from '../../policy/types';
import type { FaultCluster } from '../../support/fault-cluster';
import type { InventoryResult } from '../../workflows/inventory';
import { progressQuery, type Progress } from '../../workflows/messages';
import type { MigrationReport } from '../../workflows/report';

const MiB = 1024 ** 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
type Log = (line: string) => void;

export type Verdict = 'completed' | 'rolled-back' | 'host-died' | 'missed' | 'lost';

export interface TrialResult {
  scenario: string;
  trial: number;
  seed: number;
  verdict: Verdict;
  expected: Verdict[];
  /** Fault injected → the workflow's report (null when the fault was not injected). */
  recoverMs: number | null;
  totalMs: number;
  /** What the fault was, with its random parameters. */
  fault: string;
  /** Where each host says the VM is ('unreachable' when its agent did not answer). */
  placement: Record<string, string>;
  report: MigrationReport | null;
  detail: string;
}

export interface TrialContext {
  cluster: FaultCluster;
  random: () => number;
  log: Log;
}

export interface Scenario {
  id: string;
  title: string;
  cluster: 'local' | 'net';
  /** Verdicts that count as surviving the fault. */
  expected: Verdict[];
  run(ctx: TrialContext, trial: number, seed: number): Promise<TrialResult>;
}

export interface Plan {
  strategy: StrategyName;
  workload: string;
  options: Partial<MigrationOptions>;
  /** Before the migration starts (e.g. shrink the storage, mount hanging storage over it). */
  before?: () => Promise<string | void> | string | void;
  /** After the trial, before the cluster is healed (e.g. release and unmount hanging storage). */
  after?: () => Promise<void> | void;
  /** When to inject: a predicate on the progress query. */
  when: (p: Progress) => boolean;
  /** Extra random wait once `when` holds, ms. */
  jitterMs?: number;
  /** The fault. May keep running (a link down for a while) while the workflow goes on. */
  inject: () => Promise<string> | string;
  /** The source agent dies with the guest on purpose. */
  hostDies?: boolean;
  /** Did the fault hit what it aimed at? (Default: it was injected before the end.) */
  landed?: (r: MigrationReport) => boolean;
  resultTimeoutMs?: number;
}

let vmSeq = 0;

function defaults(over: Partial<MigrationOptions>): MigrationOptions {
  return {
    bandwidthBytesPerSec: 32 * MiB,
    storageBandwidthBytesPerSec: 1024 * MiB,
    maxDowntimeMs: 300,
    maxIterations: 30,
    pbdata: 'async',
    compression: false,
    zeroElision: true,
    ...over,
  };
}

async function waitProgress(handle: WorkflowHandle, pred: (p: Progress) => boolean, timeoutMs: number): Promise<Progress | null> {
  const deadline = Date.now() + timeoutMs;
  let last: Progress | null = null;
  for (;;) {
    const p = await handle.query(progressQuery).catch(() => null);
    if (p) last = p;
    if (p && pred(p)) return p;
    if (last && ['completed', 'rolled-back', 'failed'].includes(last.phase)) return null;
    if (Date.now() > deadline) return null;
    await sleep(20);
  }
}

async function placementOf(c: FaultCluster, vm: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  try {
    const inv = (await c.client.workflow.execute('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `faults-inventory-${randomUUID()}`,
      args: [{ hosts: [c.source, c.target], timeoutMs: 5_000 }],
    })) as InventoryResult;
    for (const h of inv.hosts) out[h.host] = h.ok ? (h.facts.vms.find((v) => v.name === vm)?.state ?? 'absent') : 'unreachable';
  } catch (e) {
    out.error = (e as Error).message;
  }
  return out;
}

async function destroyEverywhere(c: FaultCluster, vm: string): Promise<void> {
  await Promise.all(
    [c.source, c.target].map((host) =>
      c.client.workflow
        .execute('vmCommandWorkflow', {
          taskQueue: CONTROL_QUEUE,
          workflowId: `faults-destroy-${vm}-${host}-${randomUUID()}`,
          args: [{ host, op: 'destroy', name: vm }],
          workflowExecutionTimeout: '15s',
        })
        .catch(() => undefined),
    ),
  );
}

function judge(report: MigrationReport, place: Record<string, string>, c: FaultCluster, hostDies: boolean): Verdict {
  const onT = place[c.target] === 'running';
  const onS = place[c.source] === 'running';
  const v = report.verification;
  if (report.outcome === 'completed' && v?.ok && v.where === 'target' && onT && !onS) return 'completed';
  if (report.outcome === 'rolled-back' && v?.ok && v.where === 'source' && onS && !onT) return 'rolled-back';
  if (hostDies && report.outcome === 'failed' && /agent restarted during the migration/.test(report.reason) && !onT) return 'host-died';
  return 'lost';
}

async function runPlan(ctx: TrialContext, scenario: Scenario, trial: number, seed: number, plan: Plan): Promise<TrialResult> {
  const c = ctx.cluster;
  const vm = `f${process.pid.toString(36)}-${++vmSeq}`;
  const t0 = performance.now();
  const base = { scenario: scenario.id, trial, seed, expected: scenario.expected };
  let before = '';
  try {
    before = (await plan.before?.()) ?? '';
  } catch (e) {
    await plan.after?.();
    throw e;
  }
  await c.client.workflow.execute('vmCommandWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: `vm-create-${vm}`,
    args: [{ host: c.source, op: 'create', spec: { name: vm, memoryBytes: 64 * MiB, workload: plan.workload, seed: seed % 100_000 } }],
  });
  const handle = await c.client.workflow.start('migrationWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: migrationWorkflowId(vm),
    args: [{ vm, source: c.source, target: c.target, strategy: plan.strategy, options: defaults(plan.options) }],
  });
  let fault = before;
  let recoverFrom: number | null = null;
  let injecting: Promise<unknown> = Promise.resolve();
  try {
    const at = await waitProgress(handle, plan.when, 90_000);
    if (at) {
      if (plan.jitterMs) await sleep(ctx.random() * plan.jitterMs);
      recoverFrom = performance.now();
      const inj = Promise.resolve(plan.inject());
      injecting = inj.then((d) => (fault = [fault, d].filter(Boolean).join('; ')));
      injecting.catch(() => undefined);
    }
    const timeoutMs = plan.resultTimeoutMs ?? 180_000;
    const report = (await Promise.race([handle.result(), sleep(timeoutMs).then(() => null)])) as MigrationReport | null;
    const doneAt = performance.now();
    await injecting;
    if (!report) {
      await handle.terminate('fault bench: no result in time').catch(() => undefined);
      return { ...base, verdict: 'lost', recoverMs: null, totalMs: doneAt - t0, fault, placement: await placementOf(c, vm), report: null, detail: `no result within ${timeoutMs / 1000} s` };
    }
    const placement = await placementOf(c, vm);
    let verdict = judge(report, placement, c, plan.hostDies === true);
    let detail = report.reason;
    if ((recoverFrom === null || (plan.landed && !plan.landed(report))) && verdict !== 'lost') {
      verdict = 'missed';
      detail = `the fault did not land (the step it aimed at was over): ${report.reason}`;
    }
    return { ...base, verdict, recoverMs: recoverFrom === null ? null : Math.round(doneAt - recoverFrom), totalMs: Math.round(doneAt - t0), fault, placement, report, detail };
  } finally {
    await injecting.catch(() => undefined);
    await plan.after?.();
    await c.heal();
    await destroyEverywhere(c, vm);
  }
}

/** Milliseconds as seconds with one decimal ("12.3 s"). */
export function ms(x: number): string {
  return `${(x / 1000).toFixed(1)} s`;
}

/** A scenario whose trials run `plan` (made afresh for each trial, with its context). */
export function scenario(id: string, title: string, cluster: 'local' | 'net', expected: Verdict[], plan: (ctx: TrialContext) => Plan): Scenario {
  const s: Scenario = { id, title, cluster, expected, run: (ctx, trial, seed) => runPlan(ctx, s, trial, seed, plan(ctx)) };
  return s;
}
