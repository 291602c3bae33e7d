/**
 * `ferry bench --suite regret`: how far ferry's default switch decision is from the best
 * fixed switch point, found in hindsight, per workload.
 *
 * Per workload and repeat (the same seed for every variant of a repeat), on one cluster:
 * - the sweep: pa-hybrid forced to post-copy after n rounds (n = 1…N, a fixed switch point;
 *   stop-and-copy still wins if the rest fits first), and the baselines hybrid-1, hybrid-2
 *   and precopy;
 * - beside it: ferry's default (pa-hybrid, rule ferry), pa-hybrid with the paper's rule,
 *   as-hybrid with both rules, hybrid-1.
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
import { runCell } from './suite/runner';
import { MiB, PAPER_TESTBED, SCALES, scaledMemory } from './suite/scale';
import type { CellResult, CellSpec } from './suite/types';

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
}

interface Variant {
  id: string;
  strategy: StrategyName;
  switchRule?: SwitchRule;
  switchAfterRounds?: number;
  /** Part of the hindsight sweep. */
  sweep: boolean;
}

export const DEFAULT_VARIANT = 'pa-hybrid/ferry';

export function variantsOf(sweepRounds: number): Variant[] {
  return [
    ...Array.from({ length: sweepRounds }, (_, i) => ({ id: `pa-hybrid@${i + 1}`, strategy: 'pa-hybrid' as const, switchAfterRounds: i + 1, switchRule: 'paper' as const, sweep: true })),
    { id: 'hybrid-1', strategy: 'hybrid-1', sweep: true },
    { id: 'hybrid-2', strategy: 'hybrid-2', sweep: true },
    { id: 'precopy', strategy: 'precopy', sweep: true },
    { id: DEFAULT_VARIANT, strategy: 'pa-hybrid', switchRule: 'ferry', sweep: false },
    { id: 'pa-hybrid/paper', strategy: 'pa-hybrid', switchRule: 'paper', sweep: false },
    { id: 'as-hybrid/ferry', strategy: 'as-hybrid', switchRule: 'ferry', sweep: false },
    { id: 'as-hybrid/paper', strategy: 'as-hybrid', switchRule: 'paper', sweep: false },
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

export function planRegretCells(plan: RegretPlan): CellSpec[] {
  const cells: CellSpec[] = [];
  for (let r = 0; r < plan.repeats; r++) {
    for (const w of plan.workloads) {
      for (const v of variantsOf(plan.sweepRounds)) {
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

/** A stop-and-copy chosen by the test (not the valve) that paused longer than the budget. */
export function downtimeViolated(c: CellResult): boolean {
  const r = c.report;
  if (!r || r.downtimeMs === null) return false;
  const last = r.decisions[r.decisions.length - 1];
  if (!last || last.action !== 'stop-and-copy' || /max iterations/.test(last.reason)) return false;
  return r.downtimeMs > c.cell.options.maxDowntimeMs;
}

export function summarize(results: CellResult[], sweepRounds: number): WorkloadRegret[] {
  const workloads = [...new Set(results.map((r) => r.cell.workload))];
  return workloads.map((w) => {
    const mine = results.filter((r) => r.cell.workload === w);
    const rows: VariantRow[] = variantsOf(sweepRounds).map((v) => {
      const runs = mine.filter((r) => r.cell.variant === v.id);
      const ok = runs.filter((r) => r.status === 'ok' && r.metrics);
      const m = (f: (c: CellResult) => number | null): Spread | null => spread(ok.map(f).filter((x): x is number => x !== null));
      return {
        variant: v.id,
        timeMs: m((c) => c.metrics!.totalTimeMs),
        dataBytes: m((c) => c.metrics!.migrationNetworkBytes),
        storageWriteBytes: m((c) => c.metrics!.storageWriteBytes),
        postcopyMs: m((c) => c.metrics!.postcopyDurationMs),
        downtimeMs: m((c) => c.metrics!.downtimeMs),
        rounds: m((c) => c.metrics!.iterations),
        valve: ok.filter((c) => /max iterations/.test(c.metrics!.endingReason ?? '')).length,
        downtimeViolations: ok.filter(downtimeViolated).length,
        failed: runs.length - ok.length,
        vsBest: null,
      };
    });
    const sweep = new Set(variantsOf(sweepRounds).filter((v) => v.sweep).map((v) => v.id));
    const best = rows.filter((r) => sweep.has(r.variant) && r.timeMs).sort((a, b) => a.timeMs!.median - b.timeMs!.median)[0] ?? null;
    for (const r of rows) r.vsBest = best && r.timeMs ? r.timeMs.median / best.timeMs!.median : null;
    return { workload: w, memoryBytes: mine[0]?.cell.memoryBytes ?? 0, best: best?.variant ?? null, rows };
  });
}

const s1 = (ms: number): string => (ms / 1000).toFixed(2);
const mib = (b: number): string => (b / MiB).toFixed(0);
function fmtSpread(x: Spread | null, f: (v: number) => string): string {
  if (!x) return '–';
  return x.n > 1 ? `${f(x.median)} (${f(x.min)}–${f(x.max)})` : f(x.median);
}

export function regretMarkdown(summary: WorkloadRegret[], plan: RegretPlan, command: string): string {
  const lines = [
    '# ferry bench --suite regret',
    '',
    `Command: \`${command}\`. ${plan.repeats} repeat(s) per variant, medians (min–max). Links: migration ${mib(plan.bandwidthBytesPerSec)} MiB/s, storage ${mib(plan.storageBandwidthBytesPerSec)} MiB/s; max downtime ${plan.maxDowntimeMs} ms; max iterations ${plan.maxIterations}.`,
    'Hindsight-best = the sweep variant (pa-hybrid switched after a fixed n rounds, hybrid-1, hybrid-2, precopy) with the lowest median total time. Data = migration network; storage writes beside it.',
    '',
  ];
  for (const w of summary) {
    lines.push(`## ${w.workload} (${mib(w.memoryBytes)} MiB) — hindsight-best: ${w.best ?? 'none'}`, '');
    lines.push('| variant | total s | × best | data MiB | storage MiB | post-copy s | downtime ms | rounds | valve | downtime violations | failed |', '|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of w.rows) {
      const mark = r.variant === DEFAULT_VARIANT ? ' (default)' : r.variant === w.best ? ' (best)' : '';
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
  const summary = summarize(results, plan.sweepRounds);
  fs.writeFileSync(path.join(env.outDir, 'summary.json'), `${JSON.stringify(summary, null, 1)}\n`);
  fs.writeFileSync(path.join(env.outDir, 'results.md'), `${regretMarkdown(summary, plan, env.command)}\n`);
  return { summary, results };
}
