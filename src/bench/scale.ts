/**
 * `ferry bench --suite scale`: ferry on a production-like Temporal cluster (the one `ferry
 * cluster up` runs, or any given by --address), with many hosts:
 *
 *  - an evacuation of ≥ 48 small emulated VMs from 4 hosts onto 4 others with limits (cluster
 *    8, per source 2, per target 2), `--repeat` times (each repeat moves them back): every VM
 *    verified, the limits checked on the evacuation's recorded timeline, every VM found on a
 *    target afterwards; migrations per minute, CPU and memory of the controller, the agents
 *    and the Temporal services (/proc), history events and bytes per workflow;
 *  - a migration of `--iterations` (200) pre-copy rounds: its history against Temporal's
 *    limits, and a replay of it with the workflow code of this checkout;
 *  - the HTTP API under load (src/bench/api-load.ts);
 *  - the orchestration overhead per iteration (src/bench/overhead.ts) on this cluster and on
 *    the dev server, one after the other.
 *
 * Writes results.json and results.md to --out (default docs/bench/scale).
 */
import { runClusterKeyEnv } from '../common/cluster-key';
import { temporalTlsEnv, temporalTlsFiles, temporalTlsOption, type TemporalTlsFiles } from '../common/temporal-tls';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { DEFAULT_CLUSTER_DIR, down, up, type ClusterStatus } from '../cluster/cluster';
import { UsageError } from '../common/errors';
import { CONTROL_QUEUE } from '../common/names';
import { REPO_ROOT } from '../common/paths';
import { formatBytes, parseSize } from '../common/units';
import { inventory, startMigration } from '../client/migrations';
import { startEvacuation } from '../client/operations';
import { int, parse, str } from '../cli/args';
import { say } from '../cli/context';
import { isAlive, spawnFerry, type FerryProcess } from '../support/processes';
import { bundleWorkflows } from '../workers/controller';
import { installRuntime } from '../workers/runtime';
import type { EvacuationSummary, TimelineEntry } from '../workflows/evacuation-messages';
import type { MigrationReport } from '../workflows/report';
import { runApiLoad, type ApiLoadResult } from './api-load';
import { median, ProcSampler, quantile, type GroupUsage } from './scale-proc';
import { machineFacts } from './suite/machine';
import type { MachineFacts } from './suite/types';

const MiB = 1024 ** 2;

/** Temporal's default history limits (limit.historyCount.* and limit.historySize.*; ferry's dynamic config keeps them). */
export const TEMPORAL_HISTORY_LIMITS = { warnEvents: 10_240, errorEvents: 51_200, warnBytes: 10 * MiB, errorBytes: 50 * MiB } as const;

export const LIMITS = { maxParallel: 8, maxOutboundPerHost: 2, maxInboundPerHost: 2 } as const;

export interface Peaks {
  cluster: number;
  perSource: Record<string, number>;
  perTarget: Record<string, number>;
}

/** The most migrations active at once, per key, over half-open intervals [start, end). */
export function peakConcurrency(entries: { startMs: number; endMs: number }[], key: (i: number) => string): Record<string, number> {
  const out: Record<string, number> = {};
  entries.forEach((e, i) => {
    const k = key(i);
    const active = entries.filter((x, j) => key(j) === k && x.startMs <= e.startMs && e.startMs < x.endMs).length;
    out[k] = Math.max(out[k] ?? 0, active);
  });
  return out;
}

export function timelinePeaks(tl: TimelineEntry[]): Peaks {
  const done = tl.map((e) => ({ ...e, endMs: e.endMs ?? Number.POSITIVE_INFINITY }));
  return {
    cluster: peakConcurrency(done, () => 'all').all ?? 0,
    perSource: peakConcurrency(done, (i) => done[i]!.source),
    perTarget: peakConcurrency(done, (i) => done[i]!.target),
  };
}

interface HistorySize {
  events: number;
  bytes: number;
}

export interface EvacuationRun {
  repeat: number;
  from: string[];
  to: string[];
  vms: number;
  completed: number;
  verified: number;
  /** VMs found running on a target host afterwards (and on no source). */
  foundOnTargets: number;
  lost: string[];
  attempts: number;
  durationMs: number;
  migrationsPerMinute: number;
  migrationTimeMs: { median: number; p95: number; max: number };
  peaks: Peaks;
  limitsHeld: boolean;
  usage: { wallSeconds: number; groups: Record<string, GroupUsage> };
  history: {
    evacuation: HistorySize & { runs: number };
    migration: { median: HistorySize; max: HistorySize; total: HistorySize };
  };
}

export interface LongMigration {
  iterationsAsked: number;
  iterations: number;
  /** Why pre-copy ended (the last decision's reason). */
  ended: string;
  outcome: string;
  verified: boolean;
  durationMs: number;
  history: HistorySize;
  perIteration: { events: number; bytes: number };
  limits: typeof TEMPORAL_HISTORY_LIMITS;
  /** Iterations one migration could run before its history reached the warning limit (events or bytes). */
  iterationsToWarnLimit: number;
  replay: { ok: boolean; error: string | null; ms: number };
}

export interface OverheadRun {
  where: 'this cluster' | 'dev server';
  medianMs: number;
  p95Ms: number;
  samples: number;
  perMigrationMedianMs: number[];
  floorMedianMs: number;
  error: string | null;
}

export interface ScaleResult {
  suite: 'scale';
  command: string;
  machine: MachineFacts;
  address: string;
  cluster: { dir: string | null; startedByBench: boolean; processes: { name: string; pid: number | null }[] } | null;
  settings: { vms: number; memoryBytes: number; workload: string; sources: string[]; targets: string[]; limits: typeof LIMITS; repeats: number; bandwidthBytesPerSec: number };
  evacuations: EvacuationRun[];
  medians: { durationMs: number; migrationsPerMinute: number; controllerCpuPercent: number; agentsCpuPercent: number; temporalCpuPercent: number | null; controllerPeakRssBytes: number; agentPeakRssBytes: number; migrationHistoryEvents: number; migrationHistoryBytes: number } | null;
  longMigration: LongMigration | null;
  api: ApiLoadResult | null;
  overhead: OverheadRun[];
  durationMs: number;
  ok: boolean;
  failures: string[];
}

export interface ScaleOptions {
  address: string | null;
  dir: string;
  vms: number;
  memoryBytes: number;
  repeats: number;
  iterations: number;
  apiVms: number;
  burst: number;
  overheadMigrations: number;
  overheadIterations: number;
  skip: Set<'evacuation' | 'long' | 'api' | 'overhead'>;
  keepCluster: boolean;
  outDir: string;
  command: string;
  log: (line: string) => void;
}

const WORKLOAD = 'kernel-compile';
const BANDWIDTH = 64 * MiB;

function migrationOptions(over: Partial<{ maxDowntimeMs: number; maxIterations: number; bandwidthBytesPerSec: number; pbdata: 'async' | 'off'; storageBandwidthBytesPerSec: number }> = {}) {
  return { bandwidthBytesPerSec: BANDWIDTH, storageBandwidthBytesPerSec: 1024 * MiB, maxDowntimeMs: 300, maxIterations: 30, pbdata: 'async' as const, compression: false, zeroElision: true, ...over };
}

async function createVm(client: Client, host: string, name: string, memoryBytes: number, workload: string, seed: number): Promise<void> {
  await client.workflow.execute('vmCommandWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: `vm-create-${name}-${randomBytes(4).toString('hex')}`,
    args: [{ host, op: 'create', spec: { name, memoryBytes, workload, seed } }],
  });
}

/** Destroy the VMs on whichever of `hosts` holds each (the inventory knows). */
async function destroyVms(client: Client, hosts: string[], names: string[]): Promise<void> {
  const inv = await inventory(client, hosts, 15_000);
  const where = new Map(inv.hosts.flatMap((h) => (h.ok ? h.facts.vms.map((v) => [v.name, h.host] as const) : [])));
  await inBatches(names, 8, async (name) => {
    const host = where.get(name);
    if (host) await client.workflow.execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-destroy-${name}-${randomBytes(4).toString('hex')}`, args: [{ host, op: 'destroy', name }] });
  });
}

async function historyOf(client: Client, workflowId: string, runId?: string): Promise<HistorySize> {
  const d = await client.workflow.getHandle(workflowId, runId).describe();
  return { events: d.historyLength, bytes: d.historySize ?? 0 };
}

/** In batches, so 48 requests at once do not queue behind each other on a 2-core machine. */
async function inBatches<T, R>(items: T[], size: number, fn: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map((t, j) => fn(t, i + j)))));
  return out;
}

function medianSize(xs: HistorySize[]): HistorySize {
  return { events: median(xs.map((x) => x.events)), bytes: median(xs.map((x) => x.bytes)) };
}

/** One evacuation of every VM on `from` onto `to`, checked and measured. */
async function evacuate(ctx: Ctx, repeat: number, from: string[], to: string[], names: string[]): Promise<EvacuationRun> {
  const { client, log } = ctx;
  const ticket = `SCALE-${ctx.runId}-${repeat}`;
  const sampler = new ProcSampler(ctx.pidGroups());
  sampler.start();
  const t0 = Date.now();
  const started = await startEvacuation(client, { hosts: from, to, limits: LIMITS, options: migrationOptions(), ticket, requestedBy: 'ferry bench --suite scale', reason: `scale: ${names.length} VMs off ${from.length} hosts` });
  const handle = client.workflow.getHandle(started.workflowId);
  const summary = (await handle.result()) as EvacuationSummary;
  const durationMs = Date.now() - t0;
  const usage = sampler.stop();
  const completed = summary.vms.filter((v) => v.outcome === 'completed');
  // Each attempt's own report: the guest's memory verified on the target.
  const attemptIds = summary.vms.flatMap((v) => v.attemptIds);
  const last = summary.vms.map((v) => v.attemptIds.at(-1)).filter((x): x is string => !!x);
  const reports = await inBatches(last, 8, async (id) => {
    const [wid, run] = id.split('/');
    return (await client.workflow.getHandle(wid!, run).result().catch(() => null)) as MigrationReport | null;
  });
  const verified = reports.filter((r) => r?.outcome === 'completed' && r.verification?.ok === true).length;
  const sizes = await inBatches(attemptIds, 8, (id) => {
    const [wid, run] = id.split('/');
    return historyOf(client, wid!, run);
  });
  const evacHistory = await historyOf(client, started.workflowId);
  // Nothing lost: every VM runs on one of the targets, none is left on a source.
  const inv = await inventory(client, [...from, ...to], 15_000);
  const where = new Map<string, string[]>();
  for (const h of inv.hosts) {
    if (!h.ok) throw new Error(`inventory of ${h.host} failed: ${h.error}`);
    for (const v of h.facts.vms) where.set(v.name, [...(where.get(v.name) ?? []), `${h.host}:${v.state}`]);
  }
  const found = names.filter((n) => {
    const w = where.get(n) ?? [];
    return w.length === 1 && to.includes(w[0]!.split(':')[0]!) && w[0]!.endsWith(':running');
  });
  const lost = names.filter((n) => !found.includes(n)).map((n) => `${n}: ${(where.get(n) ?? ['nowhere']).join(', ')}`);
  const peaks = timelinePeaks(summary.timeline);
  const limitsHeld = peaks.cluster <= LIMITS.maxParallel && Object.values(peaks.perSource).every((p) => p <= LIMITS.maxOutboundPerHost) && Object.values(peaks.perTarget).every((p) => p <= LIMITS.maxInboundPerHost);
  const times = completed.map((v) => v.timeMs);
  const run: EvacuationRun = {
    repeat,
    from,
    to,
    vms: names.length,
    completed: completed.length,
    verified,
    foundOnTargets: found.length,
    lost,
    attempts: attemptIds.length,
    durationMs,
    migrationsPerMinute: Math.round((completed.length / (durationMs / 60_000)) * 10) / 10,
    migrationTimeMs: { median: median(times), p95: quantile(times, 0.95), max: Math.max(0, ...times) },
    peaks,
    limitsHeld,
    usage,
    history: {
      evacuation: { ...evacHistory, runs: summary.runs },
      migration: {
        median: medianSize(sizes),
        max: { events: Math.max(0, ...sizes.map((s) => s.events)), bytes: Math.max(0, ...sizes.map((s) => s.bytes)) },
        total: { events: sizes.reduce((a, s) => a + s.events, 0), bytes: sizes.reduce((a, s) => a + s.bytes, 0) },
      },
    },
  };
  log(
    `ferry bench scale: evacuation ${repeat}: ${run.completed}/${run.vms} completed, ${verified} verified, ${found.length} on the targets, in ${(durationMs / 1000).toFixed(1)} s ` +
      `(${run.migrationsPerMinute}/min); peaks cluster ${peaks.cluster}, per source ${Math.max(...Object.values(peaks.perSource))}, per target ${Math.max(...Object.values(peaks.perTarget))}`,
  );
  return run;
}

interface Ctx {
  client: Client;
  runId: string;
  log: (line: string) => void;
  pidGroups: () => Record<string, number[]>;
}

/** A non-converging pre-copy (max downtime 1 ms) that runs `iterations` rounds, its history measured and replayed. */
async function longMigration(ctx: Ctx, source: string, target: string, iterations: number): Promise<LongMigration> {
  const { client, log } = ctx;
  const vm = `sc${ctx.runId}-long`;
  await createVm(client, source, vm, 32 * MiB, 'memcached', 7);
  log(`ferry bench scale: a ${iterations}-iteration pre-copy migration of ${vm}`);
  const t0 = Date.now();
  const started = await startMigration(client, {
    vm,
    source,
    target,
    strategy: 'precopy',
    // Max downtime 0: only a round that leaves no dirty page ends pre-copy before the valve.
    options: migrationOptions({ bandwidthBytesPerSec: 256 * MiB, storageBandwidthBytesPerSec: 0, maxDowntimeMs: 0, maxIterations: iterations, pbdata: 'off' }),
  });
  const handle = client.workflow.getHandle(started.workflowId, started.runId);
  const report = (await handle.result()) as MigrationReport;
  const durationMs = Date.now() - t0;
  const history = await historyOf(client, started.workflowId, started.runId);
  const perIteration = { events: history.events / Math.max(1, report.iterations.length), bytes: history.bytes / Math.max(1, report.iterations.length) };
  const iterationsToWarnLimit = Math.floor(Math.min(TEMPORAL_HISTORY_LIMITS.warnEvents / perIteration.events, TEMPORAL_HISTORY_LIMITS.warnBytes / Math.max(1, perIteration.bytes)));
  log(`ferry bench scale: ${report.iterations.length} iterations, ${report.outcome}; history ${history.events} events, ${formatBytes(history.bytes)}; replaying it`);
  const r0 = Date.now();
  let replay: LongMigration['replay'];
  try {
    installRuntime();
    await Worker.runReplayHistory({ workflowBundle: await bundleWorkflows() }, await handle.fetchHistory(), started.workflowId);
    replay = { ok: true, error: null, ms: Date.now() - r0 };
  } catch (e) {
    replay = { ok: false, error: (e as Error).message.split('\n')[0] ?? String(e), ms: Date.now() - r0 };
  }
  await client.workflow.execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-destroy-${vm}-${Date.now()}`, args: [{ host: target, op: 'destroy', name: vm }] });
  return {
    iterationsAsked: iterations,
    iterations: report.iterations.length,
    ended: report.decisions.at(-1)?.reason ?? '',
    outcome: report.outcome,
    verified: report.verification?.ok === true,
    durationMs,
    history,
    perIteration: { events: Math.round(perIteration.events * 100) / 100, bytes: Math.round(perIteration.bytes) },
    limits: TEMPORAL_HISTORY_LIMITS,
    iterationsToWarnLimit,
    replay,
  };
}

/** src/bench/overhead.ts as `npm run bench:overhead` runs it, pointed at the cluster or at a dev server of its own. */
async function overhead(where: OverheadRun['where'], address: string | null, migrations: number, iterations: number, log: (l: string) => void, tls: TemporalTlsFiles | null = null): Promise<OverheadRun> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...temporalTlsEnv(tls) };
  if (address) env.FERRY_TEMPORAL_ADDRESS = address;
  else delete env.FERRY_TEMPORAL_ADDRESS;
  log(`ferry bench scale: orchestration overhead on ${where} (src/bench/overhead.ts, ${migrations} × ${iterations} iterations)`);
  const child = spawn(path.join(REPO_ROOT, 'node_modules', '.bin', 'tsx'), ['src/bench/overhead.ts', '--no-stock', '--json', '--migrations', String(migrations), '--iterations', String(iterations)], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    for (const l of d.toString().trimEnd().split('\n')) log(`  ${l}`);
  });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  const empty = { where, medianMs: NaN, p95Ms: NaN, samples: 0, perMigrationMedianMs: [], floorMedianMs: NaN };
  if (code !== 0) return { ...empty, error: `exit ${code}: ${err.trim().split('\n').slice(-3).join(' / ')}` };
  try {
    const j = JSON.parse(out) as { ferry: { medianMs: number; p95Ms: number; samples: number; perMigrationMedianMs: number[]; floorMedianMs: number } };
    return { where, medianMs: j.ferry.medianMs, p95Ms: j.ferry.p95Ms, samples: j.ferry.samples, perMigrationMedianMs: j.ferry.perMigrationMedianMs, floorMedianMs: j.ferry.floorMedianMs, error: null };
  } catch (e) {
    return { ...empty, error: `unreadable output: ${(e as Error).message}` };
  }
}

export async function runScaleBench(o: ScaleOptions): Promise<ScaleResult> {
  const t0 = Date.now();
  const log = o.log;
  const machine = machineFacts();
  const failures: string[] = [];
  const runId = randomBytes(3).toString('hex');
  let address = o.address;
  let clusterInfo: ScaleResult['cluster'] = null;
  let clusterStatus: ClusterStatus | null = null;
  if (!address) {
    const r = await up(o.dir, log);
    clusterStatus = r.status;
    address = r.status.address;
    clusterInfo = { dir: r.status.dir, startedByBench: !r.alreadyRunning && r.started.includes('frontend'), processes: r.status.processes.map((p) => ({ name: p.name, pid: p.pid })) };
    log(`ferry bench scale: cluster ${r.status.dir} at ${address}${r.alreadyRunning ? ' (already running)' : ` (started ${r.started.join(', ')})`}`);
  }
  const sources = [1, 2, 3, 4].map((i) => `scale-${runId}-s${i}`);
  const targets = [1, 2, 3, 4].map((i) => `scale-${runId}-t${i}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-scale-'));
  const storage = path.join(work, 'storage');
  fs.mkdirSync(storage);
  const auditDb = path.join(work, 'audit.db');
  const token = randomBytes(16).toString('hex');
  // Mutual TLS to the cluster: the certificates in the environment, else the operator's of the `ferry cluster` directory.
  const tls = temporalTlsFiles(process.env) ?? (clusterStatus?.tls ? { ca: clusterStatus.tls.ca, cert: clusterStatus.tls.cert, key: clusterStatus.tls.key, serverName: clusterStatus.tls.serverName } : null);
  const env = { FERRY_TEMPORAL_ADDRESS: address, FERRY_STORAGE_DIR: storage, FERRY_AUDIT_DB: auditDb, FERRY_API_TOKEN: token, ...temporalTlsEnv(tls), ...runClusterKeyEnv() };
  const agents: FerryProcess[] = [];
  let controller: FerryProcess | null = null;
  const result: ScaleResult = {
    suite: 'scale',
    command: o.command,
    machine,
    address,
    cluster: clusterInfo,
    settings: { vms: o.vms, memoryBytes: o.memoryBytes, workload: WORKLOAD, sources, targets, limits: LIMITS, repeats: o.repeats, bandwidthBytesPerSec: BANDWIDTH },
    evacuations: [],
    medians: null,
    longMigration: null,
    api: null,
    overhead: [],
    durationMs: 0,
    ok: false,
    failures,
  };
  const stopProcesses = async (): Promise<void> => {
    await Promise.all(agents.map((a) => a.stop()));
    agents.length = 0;
    await controller?.stop();
  };
  let connection: Connection | null = null;
  try {
    log(`ferry bench scale: a controller (with the API) and ${sources.length + targets.length} agents on ${address}`);
    controller = spawnFerry('controller', ['controller', '--listen', '127.0.0.1:0'], { env });
    for (const h of [...sources, ...targets]) agents.push(spawnFerry(`agent ${h}`, ['agent', '--host', h, '--memory-capacity', '2GiB'], { env }));
    await Promise.all([controller.ready, ...agents.map((a) => a.ready)]);
    const apiUrl = /API on (http:\/\/\S+) /.exec(controller.output())?.[1];
    if (!apiUrl) throw new Error(`the controller did not say where its API listens:\n${controller.output().slice(-2000)}`);
    connection = await Connection.connect({ address, ...temporalTlsOption(tls) });
    const client = new Client({ connection });
    const services = (clusterStatus?.processes ?? []).filter((p) => p.name !== 'postgresql' && p.pid !== null).map((p) => p.pid!);
    const ctx: Ctx = {
      client,
      runId,
      log,
      pidGroups: () => ({
        controller: [controller!.child.pid!],
        agents: agents.map((a) => a.child.pid!),
        ...(services.length ? { 'temporal services': services } : {}),
      }),
    };

    if (!o.skip.has('evacuation')) {
      const names = Array.from({ length: o.vms }, (_, i) => `sc${runId}-${String(i).padStart(3, '0')}`);
      log(`ferry bench scale: creating ${o.vms} VMs of ${formatBytes(o.memoryBytes)} (${WORKLOAD}) on ${sources.join(', ')}`);
      await inBatches(names, 8, (n, i) => createVm(client, sources[i % sources.length]!, n, o.memoryBytes, WORKLOAD, 100 + i));
      for (let r = 1; r <= o.repeats; r++) {
        // Odd repeats move the VMs to the targets, even ones back.
        const [from, to] = r % 2 === 1 ? [sources, targets] : [targets, sources];
        const run = await evacuate(ctx, r, from, to, names);
        result.evacuations.push(run);
        if (run.verified !== run.vms) failures.push(`evacuation ${r}: ${run.verified}/${run.vms} verified`);
        if (run.lost.length) failures.push(`evacuation ${r}: lost ${run.lost.join('; ')}`);
        if (!run.limitsHeld) failures.push(`evacuation ${r}: limits exceeded: ${JSON.stringify(run.peaks)}`);
      }
      // The guests go before the next phases: 48 running guests keep a 2-core machine busy.
      await destroyVms(client, o.repeats % 2 === 1 ? targets : sources, names);
      const ev = result.evacuations;
      const g = (r: EvacuationRun, name: string): GroupUsage | undefined => r.usage.groups[name];
      result.medians = {
        durationMs: median(ev.map((r) => r.durationMs)),
        migrationsPerMinute: median(ev.map((r) => r.migrationsPerMinute)),
        controllerCpuPercent: median(ev.map((r) => g(r, 'controller')!.cpuPercentOfOneCore)),
        agentsCpuPercent: median(ev.map((r) => g(r, 'agents')!.cpuPercentOfOneCore)),
        temporalCpuPercent: services.length ? median(ev.map((r) => g(r, 'temporal services')!.cpuPercentOfOneCore)) : null,
        controllerPeakRssBytes: median(ev.map((r) => g(r, 'controller')!.peakRssBytes)),
        agentPeakRssBytes: median(ev.map((r) => g(r, 'agents')!.peakProcessRssBytes)),
        migrationHistoryEvents: median(ev.map((r) => r.history.migration.median.events)),
        migrationHistoryBytes: median(ev.map((r) => r.history.migration.median.bytes)),
      };
    }

    if (!o.skip.has('long')) {
      const lm = await longMigration(ctx, sources[0]!, targets[0]!, o.iterations);
      result.longMigration = lm;
      if (lm.outcome !== 'completed' || !lm.verified) failures.push(`long migration: ${lm.outcome}, verified ${lm.verified}`);
      if (lm.history.events >= TEMPORAL_HISTORY_LIMITS.warnEvents || lm.history.bytes >= TEMPORAL_HISTORY_LIMITS.warnBytes) failures.push(`long migration: history ${lm.history.events} events / ${lm.history.bytes} bytes reaches Temporal's warning limit`);
      if (!lm.replay.ok) failures.push(`long migration: replay failed: ${lm.replay.error}`);
    }

    if (!o.skip.has('api')) {
      const vms = Array.from({ length: o.apiVms }, (_, i) => ({ name: `sc${runId}-api-${String(i).padStart(2, '0')}`, source: sources[i % sources.length]!, target: targets[(i + 1) % targets.length]! }));
      log(`ferry bench scale: creating ${vms.length} VMs for the API`);
      await inBatches(vms, 8, (v, i) => createVm(client, v.source, v.name, 16 * MiB, WORKLOAD, 300 + i));
      const api = await runApiLoad({ client, apiUrl, token, controller, auditDb, vms, repeats: Math.floor(vms.length / 2), ticketPrefix: `SCALE-API-${runId}`, burst: o.burst, connections: 100, log });
      result.api = api;
      const c = api.concurrent;
      if (Object.values(c.migrationsPerVm).some((n) => n !== 1)) failures.push(`api: a VM got more than one migration: ${JSON.stringify(c.migrationsPerVm)}`);
      if (c.created !== c.vms) failures.push(`api: ${c.created} migrations created for ${c.vms} VMs`);
      if (c.repeatsAnsweredWithFirstId !== c.repeated || c.repeatsAfterCompletionSameId !== c.repeated) failures.push(`api: repeats answered with the first's id: ${c.repeatsAnsweredWithFirstId} at once, ${c.repeatsAfterCompletionSameId} afterwards, of ${c.repeated}`);
      if (c.verified !== c.vms) failures.push(`api: ${c.verified}/${c.vms} migrations verified`);
      if (Object.values(c.auditAttemptsPerVm).some((n) => n !== 1) || Object.values(c.executionsPerTicket).some((n) => n !== 1)) failures.push('api: duplicate attempt or execution');
      if (api.burst.unexpected.length || api.burst.unanswered) failures.push(`api burst: ${api.burst.unanswered} unanswered, unexpected: ${api.burst.unexpected.slice(0, 3).join(' | ')}`);
      if (!api.controllerAliveAfter || api.healthzAfter !== 200 || !api.noDuplicateAfterBurst) failures.push('api: the controller did not come through the burst intact');
    }
    if (!isAlive(controller)) failures.push('the controller exited');
    for (const a of agents) if (!isAlive(a)) failures.push(`${a.name} exited`);
  } finally {
    await connection?.close();
    await stopProcesses();
    fs.rmSync(work, { recursive: true, force: true });
  }

  if (!o.skip.has('overhead')) {
    // Our controller and agents are gone: the overhead bench brings its own, on the cluster and then on a dev server.
    result.overhead.push(await overhead('this cluster', address, o.overheadMigrations, o.overheadIterations, log, tls));
    result.overhead.push(await overhead('dev server', null, o.overheadMigrations, o.overheadIterations, log));
    for (const r of result.overhead) if (r.error) failures.push(`overhead on ${r.where}: ${r.error}`);
  }
  if (clusterInfo?.startedByBench && !o.keepCluster) {
    log('ferry bench scale: stopping the cluster this bench started');
    await down(o.dir, log);
  }
  machine.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100);
  result.durationMs = Date.now() - t0;
  result.ok = failures.length === 0;
  writeOutputs(result, o.outDir);
  return result;
}

// ---------------------------------------------------------------------------------------
// output

const ms = (x: number): string => (Number.isFinite(x) ? (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`) : '–');
const mb = (x: number): string => formatBytes(x);

export function scaleMarkdown(r: ScaleResult): string {
  const L: string[] = [];
  const m = r.machine;
  L.push(`# ferry bench — scale (${r.cluster ? '`ferry cluster`: PostgreSQL + the four Temporal services' : `Temporal at ${r.address}`})`);
  L.push('');
  L.push(`\`${r.command}\` — ${m.date}, ${(r.durationMs / 60000).toFixed(1)} min, ${m.cores} CPUs (${m.cpuModel}), ${mb(m.totalMemoryBytes)}, load average at start ${m.loadAverageAtStart.join(' ')}, at the end ${(m.loadAverageAtEnd ?? []).join(' ')}${m.otherBusyProcesses.length ? `; busy at start: ${m.otherBusyProcesses.join(', ')}` : ''}.`);
  L.push('');
  L.push(r.ok ? 'Every check passed.' : `**Checks that failed:** ${r.failures.join('; ')}`);
  L.push('');
  const s = r.settings;
  if (r.evacuations.length) {
    L.push('## Evacuation');
    L.push('');
    L.push(
      `${s.vms} emulated VMs of ${mb(s.memoryBytes)} (\`${s.workload}\`) evacuated from 4 hosts onto 4 others, limits cluster ${s.limits.maxParallel}, per source ${s.limits.maxOutboundPerHost}, per target ${s.limits.maxInboundPerHost}; ` +
        `migration link ${mb(s.bandwidthBytesPerSec)}/s per migration, ferry's default strategy; ${r.evacuations.length} evacuation(s), each moving the VMs back the other way. ` +
        'One controller process and 8 agent processes on this machine. Peaks are computed from the evacuation\'s recorded timeline (each attempt\'s start and end). ' +
        'CPU: user + system time from /proc during the evacuation, % of one core; memory: peak RSS.',
    );
    L.push('');
    L.push('| # | verified | on targets after | time | migrations/min | migration time (median / p95) | peak cluster / source / target | controller CPU | agents CPU (8) | Temporal services CPU (4) | controller RSS | agent RSS (max) | history per migration (median) | evacuation history |');
    L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const e of r.evacuations) {
      const g = e.usage.groups;
      L.push(
        `| ${e.repeat} | ${e.verified}/${e.vms} | ${e.foundOnTargets}/${e.vms} | ${ms(e.durationMs)} | ${e.migrationsPerMinute} | ${ms(e.migrationTimeMs.median)} / ${ms(e.migrationTimeMs.p95)} | ` +
          `${e.peaks.cluster} / ${Math.max(...Object.values(e.peaks.perSource))} / ${Math.max(...Object.values(e.peaks.perTarget))} | ${g.controller?.cpuPercentOfOneCore ?? '–'} % | ${g.agents?.cpuPercentOfOneCore ?? '–'} % | ` +
          `${g['temporal services']?.cpuPercentOfOneCore ?? '–'}${g['temporal services'] ? ' %' : ''} | ${mb(g.controller?.peakRssBytes ?? 0)} | ${mb(g.agents?.peakProcessRssBytes ?? 0)} | ` +
          `${e.history.migration.median.events} events, ${mb(e.history.migration.median.bytes)} | ${e.history.evacuation.events} events, ${mb(e.history.evacuation.bytes)} (${e.history.evacuation.runs} run${e.history.evacuation.runs > 1 ? 's' : ''}) |`,
      );
    }
    if (r.medians && r.evacuations.length > 1) {
      const d = r.medians;
      L.push(
        `| median | | | ${ms(d.durationMs)} | ${d.migrationsPerMinute} | | | ${d.controllerCpuPercent} % | ${d.agentsCpuPercent} % | ${d.temporalCpuPercent ?? '–'}${d.temporalCpuPercent !== null ? ' %' : ''} | ${mb(d.controllerPeakRssBytes)} | ${mb(d.agentPeakRssBytes)} | ${d.migrationHistoryEvents} events, ${mb(d.migrationHistoryBytes)} | |`,
      );
    }
    L.push('');
    const lost = r.evacuations.flatMap((e) => e.lost);
    L.push(`Lost VMs: ${lost.length ? lost.join('; ') : 'none'} (a VM counts as found when the inventory shows it running on exactly one target host and on no source). Attempts: ${r.evacuations.map((e) => e.attempts).join(', ')} for ${s.vms} VMs.`);
    L.push('');
  }
  const lm = r.longMigration;
  if (lm) {
    L.push(`## A ${lm.iterationsAsked}-iteration migration: history and replay`);
    L.push('');
    L.push(
      `A pre-copy migration that cannot converge (max downtime 0 ms, 32 MiB memcached guest, 256 MiB/s) ran ${lm.iterations} iterations (max ${lm.iterationsAsked}; ${lm.ended}) and ended ${lm.outcome}${lm.verified ? ', verified' : ''} in ${ms(lm.durationMs)}. ` +
        `Its history: **${lm.history.events} events, ${mb(lm.history.bytes)}** — ${lm.perIteration.events} events and ${mb(lm.perIteration.bytes)} per iteration. ` +
        `Temporal's limits: warning at ${lm.limits.warnEvents} events or ${mb(lm.limits.warnBytes)}, the workflow is terminated at ${lm.limits.errorEvents} events or ${mb(lm.limits.errorBytes)}; ` +
        `at this rate one migration reaches the warning after about ${lm.iterationsToWarnLimit} iterations. ` +
        `Replay of the fetched history with this checkout's workflow code (Worker.runReplayHistory): ${lm.replay.ok ? `passed (${ms(lm.replay.ms)}, bundling included)` : `**failed**: ${lm.replay.error}`}.`,
    );
    L.push('');
  }
  const a = r.api;
  if (a) {
    const c = a.concurrent;
    L.push('## HTTP API under load');
    L.push('');
    L.push(
      `${c.requests} \`POST /v1/migrations\` at once over ${c.vms} VMs, ${c.repeated} of them a second request with the same ticket: ` +
        `${c.created} migrations created (one per VM: ${Object.values(c.migrationsPerVm).every((n) => n === 1) ? 'yes' : 'NO'}), ` +
        `${c.repeatsAnsweredWithFirstId}/${c.repeated} repeats answered with the first request's migration (id and run), ${c.repeatsAfterCompletionSameId}/${c.repeated} again after the migrations ended; ` +
        `${c.verified}/${c.vms} completed and verified; audit attempts per VM ${[...new Set(Object.values(c.auditAttemptsPerVm))].join(', ')}, executions per ticket ${[...new Set(Object.values(c.executionsPerTicket))].join(', ')}. ` +
        `Answers ${Object.entries(c.statuses).map(([k, v]) => `${v}× ${k}`).join(', ')} in ${ms(c.durationMs)} (p50 ${ms(c.latency.p50Ms)}, max ${ms(c.latency.maxMs)}).`,
    );
    L.push('');
    const b = a.burst;
    L.push(`Then a burst of ${b.requests} requests issued at once over at most ${b.connections} connections: ${ms(b.durationMs)}, ${b.requestsPerSecond} requests/s; unanswered ${b.unanswered}, answered otherwise than expected ${b.unexpected.length}.`);
    L.push('');
    L.push('| requests | n | expected | as expected | p50 | p95 | p99 | max |');
    L.push('|---|---|---|---|---|---|---|---|');
    for (const [k, v] of Object.entries(b.byKind)) L.push(`| ${k} | ${v.n} | ${v.expected} | ${v.answeredAsExpected} | ${ms(v.p50Ms)} | ${ms(v.p95Ms)} | ${ms(v.p99Ms)} | ${ms(v.maxMs)} |`);
    L.push(`| **all** | ${b.all.n} | | ${Object.values(b.byKind).reduce((x, v) => x + v.answeredAsExpected, 0)} | ${ms(b.all.p50Ms)} | ${ms(b.all.p95Ms)} | **${ms(b.all.p99Ms)}** | ${ms(b.all.maxMs)} |`);
    L.push(`| /healthz during the burst (every 100 ms, own connection) | ${b.healthz.n} | 200 | ${b.healthz.n - b.healthz.failures} | ${ms(b.healthz.p50Ms)} | ${ms(b.healthz.p95Ms)} | ${ms(b.healthz.p99Ms)} | ${ms(b.healthz.maxMs)} |`);
    L.push('');
    if (a.serverErrors.length) L.push(`The controller logged for its answers of 500: ${a.serverErrors.map((e) => `\`${e.slice(0, 300)}\``).join('; ')}.\n`);
    L.push(`After the burst: controller process ${a.controllerAliveAfter ? 'running' : 'GONE'}, /healthz ${a.healthzAfter}, no new migration or audit attempt: ${a.noDuplicateAfterBurst ? 'yes' : 'NO'}.`);
    if (b.unexpected.length) L.push(`\nUnexpected answers (first ${b.unexpected.length}): ${b.unexpected.join('; ')}`);
    L.push('');
  }
  if (r.overhead.length) {
    L.push('## Orchestration overhead per iteration');
    L.push('');
    L.push('`src/bench/overhead.ts` (`npm run bench:overhead`, ferry\'s server config) run once against this cluster and once against a dev server of its own: ms between one pre-copy iteration activity ending on the source agent and the next one starting there.');
    L.push('');
    L.push('| Temporal | boundaries | median | p95 | per-migration medians | floor (trivial activity after trivial activity, median) |');
    L.push('|---|---|---|---|---|---|');
    for (const o of r.overhead) {
      L.push(o.error ? `| ${o.where} | failed: ${o.error} | | | | |` : `| ${o.where} | ${o.samples} | ${o.medianMs.toFixed(1)} ms | ${o.p95Ms.toFixed(1)} ms | ${o.perMigrationMedianMs.map((x) => x.toFixed(1)).join(', ')} ms | ${o.floorMedianMs} ms |`);
    }
    L.push('');
  }
  return `${L.join('\n')}\n`;
}

function writeOutputs(r: ScaleResult, outDir: string): void {
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'results.json'), `${JSON.stringify(r, null, 2)}\n`);
  fs.writeFileSync(path.join(outDir, 'results.md'), scaleMarkdown(r));
}

// ---------------------------------------------------------------------------------------
// CLI

export const SCALE_HELP =
  'ferry bench --suite scale [--address HOST:PORT | --dir DIR] [--vms 48] [--memory 16MiB] [--repeat 3] [--iterations 200] [--api-vms 20] [--burst 1000] [--overhead-migrations 3] [--overhead-iterations 110] [--skip evacuation,long,api,overhead] [--keep-cluster] [--out DIR] [--json]   ferry at scale on a production-like cluster';

/** `ferry bench --suite scale …` (the whole argv of `ferry bench`). */
export async function runScaleCli(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      suite: { type: 'string' },
      address: { type: 'string' },
      dir: { type: 'string' },
      vms: { type: 'string' },
      memory: { type: 'string' },
      repeat: { type: 'string' },
      iterations: { type: 'string' },
      'api-vms': { type: 'string' },
      burst: { type: 'string' },
      'overhead-migrations': { type: 'string' },
      'overhead-iterations': { type: 'string' },
      skip: { type: 'string' },
      'keep-cluster': { type: 'boolean' },
      out: { type: 'string' },
      json: { type: 'boolean' },
    },
    false,
  );
  const skip = new Set((str(values.skip) ?? '').split(',').filter(Boolean));
  for (const s of skip) if (!['evacuation', 'long', 'api', 'overhead'].includes(s)) throw new UsageError(`--skip: '${s}' is not one of evacuation, long, api, overhead`);
  const apiVms = int(values['api-vms'], 'api-vms', 2, 1000) ?? 20;
  const r = await runScaleBench({
    address: str(values.address) ?? null,
    dir: str(values.dir) ?? DEFAULT_CLUSTER_DIR,
    vms: int(values.vms, 'vms', 1, 10_000) ?? 48,
    memoryBytes: values.memory !== undefined ? parseSize(String(values.memory), '--memory') : 16 * MiB,
    repeats: int(values.repeat, 'repeat', 1, 100) ?? 3,
    iterations: int(values.iterations, 'iterations', 2, 100_000) ?? 200,
    apiVms,
    burst: int(values.burst, 'burst', 1, 1_000_000) ?? 1000,
    overheadMigrations: int(values['overhead-migrations'], 'overhead-migrations', 1, 100) ?? 3,
    overheadIterations: int(values['overhead-iterations'], 'overhead-iterations', 2, 10_000) ?? 110,
    skip: skip as ScaleOptions['skip'],
    keepCluster: values['keep-cluster'] === true,
    outDir: path.resolve(str(values.out) ?? path.join('docs', 'bench', 'scale')),
    command: ['ferry', 'bench', ...argv].join(' '),
    log: say,
  });
  if (values.json === true) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else process.stdout.write(`${scaleMarkdown(r)}\n`);
  if (!r.ok) for (const f of r.failures) say(`ferry bench scale: FAILED: ${f}`);
  return r.ok ? 0 : 1;
}
