/**
 * `ferry bench --suite regret`: how far ferry's default switch decision is from the best
 * fixed switch point, found in hindsight, per workload.
 *
 * Per workload and repeat (the same seed for every variant of a repeat; each repeat steps
 * through the variants in its own order, variantOrder), on one cluster:
 * - the sweep: the engine's default strategy (pa-hybrid on emulated hosts, as-hybrid on QEMU
 *   hosts) forced to post-copy after n rounds (n = 1…N, a fixed switch point; stop-and-copy
 *   still wins if the rest fits first), and the baselines hybrid-1, hybrid-2 and precopy;
 * - beside it: ferry's default (that strategy with rule ferry), the same with the paper's
 *   rule, and (emulated) as-hybrid with both rules.
 * The hindsight-best is the sweep variant with the lowest median total time. Every figure is
 * a median over the repeats with min–max; data is the migration network (the paper's
 * measure), storage writes beside it. A run whose stop-and-copy test promised the downtime
 * budget and paused longer is a downtime violation, counted per variant.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import type { MigrationOptions } from '../activities/types';
import { defaultPbData, type StrategyName, type SwitchRule } from '../policy/types';
import { ProgressBar } from './suite/progress';
import { downtimeViolated } from './suite/metrics';
import { runCell } from './suite/runner';
import { MiB, PAPER_TESTBED, SCALES, scaledMemory } from './suite/scale';
import type { CellResult, CellSpec } from './suite/types';
import { runQemuBench, type QemuBenchRun } from './qemu';

export const REGRET_WORKLOADS = ['memcached', 'kernel-compile', 'lmbench', 'scenario-rising', 'scenario-bursty', 'idle'] as const;

export interface RegretPlan {
  workloads: string[];
  repeats: number;
  /** The sweep's largest fixed switch point. */
  sweepRounds: number;
  /** Guest size; null = the small scale's paper-derived size per workload. */
  memoryBytes: number | null;
  bandwidthBytesPerSec: number;
  storageBandwidthBytesPerSec: number;
  maxDowntimeMs: number;
  maxIterations: number;
  seedBase: number;
  /** Default emulated. */
  driver?: RegretDriver;
}

interface Variant {
  id: string;
  strategy: StrategyName;
  switchRule?: SwitchRule;
  switchAfterRounds?: number;
  /** Part of the hindsight sweep. */
  sweep: boolean;
}

/** Which hosts the suite runs on: emulated guests, or real QEMU guests (TCG). */
export type RegretDriver = 'emulated' | 'qemu';

/** ferry's default on the driver's hosts: its engine's default strategy with ferry's rule. */
export function defaultVariant(driver: RegretDriver = 'emulated'): string {
  return driver === 'qemu' ? 'as-hybrid/ferry' : 'pa-hybrid/ferry';
}
export const DEFAULT_VARIANT = defaultVariant('emulated');

export function variantsOf(sweepRounds: number, driver: RegretDriver = 'emulated'): Variant[] {
  const swept: StrategyName = driver === 'qemu' ? 'as-hybrid' : 'pa-hybrid';
  const beside: StrategyName[] = driver === 'qemu' ? ['as-hybrid'] : ['pa-hybrid', 'as-hybrid'];
  return [
    ...Array.from({ length: sweepRounds }, (_, i) => ({ id: `${swept}@${i + 1}`, strategy: swept, switchAfterRounds: i + 1, switchRule: 'paper' as const, sweep: true })),
    { id: 'hybrid-1', strategy: 'hybrid-1', sweep: true },
    { id: 'hybrid-2', strategy: 'hybrid-2', sweep: true },
    { id: 'precopy', strategy: 'precopy', sweep: true },
    ...beside.flatMap((st) => (['ferry', 'paper'] as const).map((rule) => ({ id: `${st}/${rule}`, strategy: st, switchRule: rule, sweep: false }))),
  ];
}

function memoryFor(plan: RegretPlan, workload: string): number {
  if (plan.memoryBytes) return plan.memoryBytes;
  const s = SCALES.small;
  const vm = PAPER_TESTBED.vmBytes;
  if (workload.startsWith('scenario-')) return scaledMemory(s, vm.scenario, s.scenarioMemoryFactor);
  const paper = (vm as Record<string, number>)[workload] ?? 2 * 1024 ** 3;
  return scaledMemory(s, paper);
}

/**
 * The variants in the order repeat `r` runs them. Each repeat starts elsewhere and steps
 * through the list with its own stride (coprime to the count, so every variant runs once):
 * every variant takes early and late slots, and follows a different variant in each repeat.
 * A plain rotation kept each variant's predecessor, and what a run leaves behind (a 20 s
 * pre-copy's garbage in the agents, storage writeback) met the same successor every time.
 */
export function variantOrder<T>(variants: readonly T[], r: number, repeats: number): T[] {
  const n = variants.length;
  if (repeats <= 1 || n < 2) return [...variants];
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  const strides = Array.from({ length: n - 1 }, (_, i) => i + 1).filter((s) => gcd(s, n) === 1);
  const stride = strides[r % strides.length]!;
  const start = Math.round((r * n) / repeats) % n;
  return Array.from({ length: n }, (_, i) => variants[(start + i * stride) % n]!);
}

export function planRegretCells(plan: RegretPlan): CellSpec[] {
  const cells: CellSpec[] = [];
  for (let r = 0; r < plan.repeats; r++) {
    for (const w of plan.workloads) {
      for (const v of variantOrder(variantsOf(plan.sweepRounds), r, plan.repeats)) {
        const options: MigrationOptions = {
          bandwidthBytesPerSec: plan.bandwidthBytesPerSec,
          storageBandwidthBytesPerSec: plan.storageBandwidthBytesPerSec,
          maxDowntimeMs: plan.maxDowntimeMs,
          maxIterations: plan.maxIterations,
          pbdata: defaultPbData(v.strategy),
          compression: false,
          zeroElision: true,
          ...(v.switchRule ? { switchRule: v.switchRule } : {}),
          ...(v.switchAfterRounds ? { switchAfterRounds: v.switchAfterRounds } : {}),
        };
        cells.push({
          id: `regret/${w}/${v.id}/r${r}`,
          // The paper suite's closest comparison: a switch point fixed per cell (types.ts).
          comparison: 'fixed-switch',
          group: w,
          variant: v.id,
          strategy: v.strategy,
          workload: w,
          memoryBytes: memoryFor(plan, w),
          vcpus: 1,
          seed: plan.seedBase + r,
          repeat: r,
          options,
          forcePostcopyAfterRounds: null,
          x: v.switchAfterRounds ?? null,
        });
      }
    }
  }
  return cells;
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function spread(xs: number[]): Spread | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return { median: s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2, min: s[0]!, max: s[s.length - 1]!, n: s.length };
}

export interface VariantRow {
  variant: string;
  timeMs: Spread | null;
  dataBytes: Spread | null;
  storageWriteBytes: Spread | null;
  postcopyMs: Spread | null;
  downtimeMs: Spread | null;
  /** Rounds before the switch or the stop-and-copy. */
  rounds: Spread | null;
  /** Runs that ended on the max-iterations valve. */
  valve: number;
  /** Runs whose stop-and-copy test promised the budget and whose pause was longer. */
  downtimeViolations: number;
  failed: number;
  /** Median time / the hindsight-best's median time. */
  vsBest: number | null;
}

export interface WorkloadRegret {
  workload: string;
  memoryBytes: number;
  best: string | null;
  rows: VariantRow[];
}

/** One migration of the suite, whichever driver ran it. */
export interface RegretSample {
  workload: string;
  memoryBytes: number;
  variant: string;
  /** Completed and (QEMU) verified by the guest on the target. */
  ok: boolean;
  timeMs: number;
  dataBytes: number;
  storageWriteBytes: number;
  postcopyMs: number | null;
  downtimeMs: number | null;
  rounds: number;
  valve: boolean;
  downtimeViolated: boolean;
}

export function sampleOfCell(c: CellResult): RegretSample {
  const m = c.metrics;
  return {
    workload: c.cell.workload,
    memoryBytes: c.cell.memoryBytes,
    variant: c.cell.variant,
    ok: c.status === 'ok' && !!m,
    timeMs: m?.totalTimeMs ?? NaN,
    dataBytes: m?.migrationNetworkBytes ?? NaN,
    storageWriteBytes: m?.storageWriteBytes ?? 0,
    postcopyMs: m?.postcopyDurationMs ?? null,
    downtimeMs: m?.downtimeMs ?? null,
    rounds: m?.iterations ?? 0,
    valve: /max iterations/.test(m?.endingReason ?? ''),
    downtimeViolated: downtimeViolated(c),
  };
}

export function sampleOfQemuRun(workload: string, memoryBytes: number, r: QemuBenchRun): RegretSample {
  return {
    workload,
    memoryBytes,
    variant: r.strategy,
    ok: r.outcome === 'completed' && r.verified,
    timeMs: r.totalTimeMs,
    dataBytes: r.bytes,
    storageWriteBytes: 0,
    postcopyMs: r.postcopyDurationMs,
    downtimeMs: r.downtimeMs,
    rounds: r.passes,
    valve: /max iterations/.test(r.ending),
    downtimeViolated: r.downtimeViolated,
  };
}

export function summarize(samples: RegretSample[], variants: Variant[]): WorkloadRegret[] {
  const workloads = [...new Set(samples.map((r) => r.workload))];
  return workloads.map((w) => {
    const mine = samples.filter((r) => r.workload === w);
    const rows: VariantRow[] = variants.map((v) => {
      const runs = mine.filter((r) => r.variant === v.id);
      const ok = runs.filter((r) => r.ok);
      const m = (f: (c: RegretSample) => number | null): Spread | null => spread(ok.map(f).filter((x): x is number => x !== null));
      return {
        variant: v.id,
        timeMs: m((c) => c.timeMs),
        dataBytes: m((c) => c.dataBytes),
        storageWriteBytes: m((c) => c.storageWriteBytes),
        postcopyMs: m((c) => c.postcopyMs),
        downtimeMs: m((c) => c.downtimeMs),
        rounds: m((c) => c.rounds),
        valve: ok.filter((c) => c.valve).length,
        downtimeViolations: ok.filter((c) => c.downtimeViolated).length,
        failed: runs.length - ok.length,
        vsBest: null,
      };
    });
    const sweep = new Set(variants.filter((v) => v.sweep).map((v) => v.id));
    const best = rows.filter((r) => sweep.has(r.variant) && r.timeMs).sort((a, b) => a.timeMs!.median - b.timeMs!.median)[0] ?? null;
    for (const r of rows) r.vsBest = best && r.timeMs ? r.timeMs.median / best.timeMs!.median : null;
    return { workload: w, memoryBytes: mine[0]?.memoryBytes ?? 0, best: best?.variant ?? null, rows };
  });
}

const s1 = (ms: number): string => (ms / 1000).toFixed(2);
const mib = (b: number): string => (b / MiB).toFixed(0);
function fmtSpread(x: Spread | null, f: (v: number) => string): string {
  if (!x) return '–';
  return x.n > 1 ? `${f(x.median)} (${f(x.min)}–${f(x.max)})` : f(x.median);
}

export function regretMarkdown(summary: WorkloadRegret[], plan: RegretPlan, command: string): string {
  const driver = plan.driver ?? 'emulated';
  const swept = driver === 'qemu' ? 'as-hybrid' : 'pa-hybrid';
  const def = defaultVariant(driver);
  const links = driver === 'qemu' ? `migration ${mib(plan.bandwidthBytesPerSec)} MiB/s (real QEMU guests under TCG; failed = not verified by the guest on the target)` : `migration ${mib(plan.bandwidthBytesPerSec)} MiB/s, storage ${mib(plan.storageBandwidthBytesPerSec)} MiB/s`;
  const lines = [
    '# ferry bench --suite regret',
    '',
    `Command: \`${command}\`. ${plan.repeats} repeat(s) per variant, medians (min–max). Links: ${links}; max downtime ${plan.maxDowntimeMs} ms; max iterations ${plan.maxIterations}.`,
    `Hindsight-best = the sweep variant (${swept} switched after a fixed n rounds, hybrid-1, hybrid-2, precopy) with the lowest median total time. Data = migration network; storage writes beside it.`,
    '',
  ];
  for (const w of summary) {
    lines.push(`## ${w.workload} (${mib(w.memoryBytes)} MiB) — hindsight-best: ${w.best ?? 'none'}`, '');
    lines.push('| variant | total s | × best | data MiB | storage MiB | post-copy s | downtime ms | rounds | valve | downtime violations | failed |', '|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of w.rows) {
      const mark = r.variant === def ? ' (default)' : r.variant === w.best ? ' (best)' : '';
      lines.push(
        `| ${r.variant}${mark} | ${fmtSpread(r.timeMs, s1)} | ${r.vsBest !== null ? r.vsBest.toFixed(2) : '–'} | ${fmtSpread(r.dataBytes, mib)} | ${fmtSpread(r.storageWriteBytes, mib)} | ${fmtSpread(r.postcopyMs, s1)} | ${fmtSpread(r.downtimeMs, (v) => v.toFixed(0))} | ${fmtSpread(r.rounds, (v) => v.toFixed(0))} | ${r.valve} | ${r.downtimeViolations} | ${r.failed} |`,
      );
    }
    lines.push('');
  }
  return lines.join('\n');
}

export interface RegretRun {
  client: Client;
  source: string;
  target: string;
  vmPrefix: string;
  outDir: string;
  command: string;
  warmupMs: number;
  progressOut: NodeJS.WritableStream;
}

/** Run the cells one after another; results.json after every cell, results.md at the end. */
export async function runRegret(plan: RegretPlan, env: RegretRun): Promise<{ summary: WorkloadRegret[]; results: CellResult[] }> {
  const cells = planRegretCells(plan);
  fs.mkdirSync(env.outDir, { recursive: true });
  const progress = new ProgressBar(env.progressOut, cells.length);
  const results: CellResult[] = [];
  for (const [i, cell] of cells.entries()) {
    progress.start(i, cell);
    const r = await runCell({ client: env.client, source: env.source, target: env.target, vmPrefix: env.vmPrefix, warmupMs: env.warmupMs, cellTimeoutMs: 5 * 60_000, progress }, cell, i);
    progress.finish(r);
    results.push(r);
    fs.writeFileSync(path.join(env.outDir, 'results.json'), `${JSON.stringify({ plan, command: env.command, cells: results }, null, 1)}\n`);
  }
  progress.done();
  const summary = summarize(results.map(sampleOfCell), variantsOf(plan.sweepRounds, 'emulated'));
  fs.writeFileSync(path.join(env.outDir, 'summary.json'), `${JSON.stringify(summary, null, 1)}\n`);
  fs.writeFileSync(path.join(env.outDir, 'results.md'), `${regretMarkdown(summary, plan, env.command)}\n`);
  return { summary, results };
}

export const QEMU_REGRET_WORKLOADS = ['hot-set', 'write-intensive', 'converging', 'idle'] as const;

export interface QemuRegretRun {
  client: Client;
  source: string;
  target: string;
  qemuVersion: string;
  outDir: string;
  command: string;
  warmupMs: number;
  log: (l: string) => void;
}

/** The suite on real QEMU guests: per workload, every variant `plan.repeats` times (runQemuBench). */
export async function runQemuRegret(plan: RegretPlan, env: QemuRegretRun): Promise<{ summary: WorkloadRegret[]; samples: RegretSample[] }> {
  const variants = variantsOf(plan.sweepRounds, 'qemu');
  const memoryBytes = plan.memoryBytes ?? 256 * MiB;
  fs.mkdirSync(env.outDir, { recursive: true });
  const samples: RegretSample[] = [];
  const runs: Record<string, QemuBenchRun[]> = {};
  for (const workload of plan.workloads) {
    const res = await runQemuBench(
      {
        client: env.client,
        source: env.source,
        target: env.target,
        strategies: variants.map((v) => ({ id: v.id, strategy: v.strategy, ...(v.switchRule ? { switchRule: v.switchRule } : {}), ...(v.switchAfterRounds ? { switchAfterRounds: v.switchAfterRounds } : {}) })),
        repeats: plan.repeats,
        workload,
        memoryBytes,
        bandwidthBytesPerSec: plan.bandwidthBytesPerSec,
        maxDowntimeMs: plan.maxDowntimeMs,
        maxIterations: plan.maxIterations,
        warmupMs: env.warmupMs,
        log: env.log,
      },
      env.qemuVersion,
    );
    runs[workload] = res.runs;
    samples.push(...res.runs.map((r) => sampleOfQemuRun(workload, memoryBytes, r)));
    fs.writeFileSync(path.join(env.outDir, 'results.json'), `${JSON.stringify({ plan, command: env.command, qemu: env.qemuVersion, runs }, null, 1)}\n`);
  }
  const summary = summarize(samples, variants);
  fs.writeFileSync(path.join(env.outDir, 'summary.json'), `${JSON.stringify(summary, null, 1)}\n`);
  fs.writeFileSync(path.join(env.outDir, 'results.md'), `${regretMarkdown(summary, plan, env.command)}\n`);
  return { summary, samples };
}
