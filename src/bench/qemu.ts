/**
 * The QEMU bench cell: one real guest (TCG) and load, migrated with several strategies
 * between two `--driver qemu` agents on this machine, through the real workflow. Every
 * figure comes from the migration report (QEMU's own counters and the guest's own check).
 *
 *   ferry bench --suite qemu [--repeat N] [--strategies a,b,as-hybrid/paper] [--workload W]
 *                            [--memory SIZE] [--bandwidth RATE] [--out DIR] [--json]
 *
 * A variant is a strategy, optionally with its switch rule (`as-hybrid/paper`); without one
 * the workflow's default rule (ferry) applies.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import type { MigrationOptions } from '../activities/types';
import { CONTROL_QUEUE, migrationWorkflowId } from '../common/names';
import { formatBytes } from '../common/units';
import { SWITCH_RULES, defaultPbData, isStrategy, mayPostcopy, usesParMigrate, type StrategyName, type SwitchRule } from '../policy/types';
import type { MigrationInput } from '../workflows/migration';
import type { MigrationReport } from '../workflows/report';

export const QEMU_BENCH_STRATEGIES = ['precopy', 'hybrid-1', 'as-hybrid', 'par-migrate', 'pa-hybrid'];

export interface QemuVariant {
  /** As written: `as-hybrid` or `as-hybrid/paper`. */
  id: string;
  strategy: StrategyName;
  switchRule?: SwitchRule;
  /** A fixed switch point: post-copy after this many passes (the regret sweep). */
  switchAfterRounds?: number;
}

/** `strategy[/rule]` or `strategy@n` (post-copy after n passes) → the variant, or why not. */
export function parseQemuVariant(s: string): QemuVariant | string {
  const at = /^([a-z0-9-]+)@(\d+)$/.exec(s);
  if (at) {
    const n = Number(at[2]);
    if (!isStrategy(at[1]) || !mayPostcopy(at[1]) || usesParMigrate(at[1]) || !(n >= 1 && n <= 1000)) return `'${s}': a fixed switch point is a hybrid QEMU can run, @1…1000`;
    return { id: s, strategy: at[1], switchRule: 'paper', switchAfterRounds: n };
  }
  const [name, rule, extra] = s.split('/');
  if (!isStrategy(name) || extra !== undefined) return `'${s}' is not a strategy (or strategy/rule)`;
  if (rule === undefined) return { id: s, strategy: name };
  if (!(SWITCH_RULES as readonly string[]).includes(rule)) return `'${rule}' in '${s}' is not a switch rule (${SWITCH_RULES.join(', ')})`;
  return { id: s, strategy: name, switchRule: rule as SwitchRule };
}

export interface QemuBenchOptions {
  client: Client;
  source: string;
  target: string;
  strategies: QemuVariant[];
  repeats: number;
  workload: string;
  memoryBytes: number;
  bandwidthBytesPerSec: number;
  /** The storage link's cap (par-migrate's StaticData); 0 = uncapped. */
  storageBandwidthBytesPerSec?: number;
  maxDowntimeMs: number;
  maxIterations: number;
  /** Let the guest run this long after it is up, before its migration starts. */
  warmupMs: number;
  log: (l: string) => void;
}

export interface QemuBenchRun {
  /** The variant's id (strategy, or strategy/rule). */
  strategy: string;
  repeat: number;
  outcome: string;
  verified: boolean;
  totalTimeMs: number;
  downtimeMs: number | null;
  postcopyDurationMs: number | null;
  /** The target's postcopy-blocktime: ms all vCPUs at once waited for missing pages. */
  stallMs: number | null;
  /** Post-copy: the page requests the target's faults sent to the source (null: no post-copy). */
  faults?: number | null;
  /** Bytes over the migration network (par-migrate's StaticData is in storageBytes). */
  bytes: number;
  storageBytes?: number;
  passes: number;
  lambdas: number[];
  ending: string;
  reason: string;
  /** The stop-and-copy test (not the valve) chose stop-and-copy and the pause was longer than the budget. */
  downtimeViolated: boolean;
  /** par-migrate: when StaticData was committed and merged (ms from the relay's start / the merge's start). */
  static?: { saveMs: number; mergeMs: number } | null;
  /** The timeline, in ms from the migration's start: each pass and each decision with its reason. */
  timeline?: { passes: { index: number; startedAtMs: number; durationMs: number; pages: number; dirtyAfter: number }[]; decisions: { atMs: number; action: string; reason: string }[] };
}

/** One strategy's medians over its runs (and how many of them the guest verified). */
export type QemuBenchRow = Pick<QemuBenchRun, 'strategy' | 'totalTimeMs' | 'downtimeMs' | 'postcopyDurationMs' | 'stallMs' | 'bytes' | 'storageBytes' | 'passes' | 'ending'> & {
  runs: number;
  verified: number;
  downtimeViolations: number;
};

export interface QemuBenchResult {
  schema: 'ferry-bench-qemu/1';
  startedAt: string;
  durationMs: number;
  setup: { workload: string; memoryBytes: number; bandwidthBytesPerSec: number; storageBandwidthBytesPerSec?: number; maxDowntimeMs: number; maxIterations: number; warmupMs: number; repeats: number; qemu: string; accel: 'tcg' };
  machine: { cpus: number; model: string; loadAverageAtEnd: number[] };
  runs: QemuBenchRun[];
  rows: QemuBenchRow[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function medianOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? median(v) : null;
}

async function vmCommand(client: Client, host: string, cmd: Record<string, unknown>): Promise<void> {
  await client.workflow.execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-bench-${randomUUID()}`, args: [{ host, ...cmd }] });
}

export async function runQemuBench(o: QemuBenchOptions, qemuVersion: string): Promise<QemuBenchResult> {
  const t0 = Date.now();
  const runs: QemuBenchRun[] = [];
  const options: MigrationOptions = {
    bandwidthBytesPerSec: o.bandwidthBytesPerSec,
    storageBandwidthBytesPerSec: o.storageBandwidthBytesPerSec ?? 0,
    maxDowntimeMs: o.maxDowntimeMs,
    maxIterations: o.maxIterations,
    pbdata: 'off',
    compression: false,
    zeroElision: true,
  };
  for (let rep = 1; rep <= o.repeats; rep++) {
    for (const variant of o.strategies) {
      const { strategy } = variant;
      const vm = `qbench-${strategy}-${rep}-${randomUUID().slice(0, 6)}`;
      await vmCommand(o.client, o.source, { op: 'create', spec: { name: vm, memoryBytes: o.memoryBytes, workload: o.workload, seed: rep } });
      await new Promise((r) => setTimeout(r, o.warmupMs));
      // Each strategy with its own PbData default, as `ferry migrate` gives it (relayed post-copy sends its background pages through PbData).
      const input: MigrationInput = { vm, source: o.source, target: o.target, strategy, options: { ...options, pbdata: defaultPbData(strategy), ...(variant.switchRule ? { switchRule: variant.switchRule } : {}), ...(variant.switchAfterRounds ? { switchAfterRounds: variant.switchAfterRounds } : {}) }, driver: 'qemu' };
      const r = (await o.client.workflow.execute('migrationWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: migrationWorkflowId(vm), args: [input] })) as MigrationReport;
      const ender = [...r.decisions].reverse().find((d) => d.action !== 'continue');
      const run: QemuBenchRun = {
        strategy: variant.id,
        repeat: rep,
        outcome: r.outcome,
        verified: r.verification?.ok === true && r.verification.where === 'target',
        totalTimeMs: r.totalTimeMs,
        downtimeMs: r.downtimeMs,
        postcopyDurationMs: r.postcopyDurationMs,
        stallMs: r.postcopy?.blocktimeMs?.allVcpusMs ?? null,
        faults: r.postcopy?.faults ?? null,
        bytes: r.bytes.migrationNetwork,
        storageBytes: r.bytes.storageWrite,
        passes: r.iterations.length,
        lambdas: r.iterations.map((i) => Math.round(i.lambda * 100) / 100),
        ending: ender?.reason ?? '',
        reason: r.reason,
        downtimeViolated: ender?.action === 'stop-and-copy' && !/max iterations/.test(ender.reason) && r.downtimeMs !== null && r.downtimeMs > o.maxDowntimeMs,
        static: r.static ? { saveMs: r.static.saveMs, mergeMs: r.static.mergeMs } : null,
        timeline: {
          passes: r.iterations.map((i) => ({ index: i.index, startedAtMs: i.startedAtMs - Date.parse(r.startedAt), durationMs: i.durationMs, pages: i.pages, dirtyAfter: i.dirtyAfter })),
          decisions: r.decisions.map((d) => ({ atMs: d.atMs, action: d.action, reason: d.reason })),
        },
      };
      runs.push(run);
      o.log(`bench qemu: ${variant.id} #${rep}: ${r.outcome}${run.verified ? ' (verified)' : ''}, total ${(r.totalTimeMs / 1000).toFixed(2)} s, downtime ${r.downtimeMs ?? '–'} ms, post-copy ${r.postcopyDurationMs ?? '–'} ms (guest stalled ${run.stallMs ?? '–'} ms, ${run.faults ?? '–'} fault(s)), ${formatBytes(run.bytes)}, ${run.passes} pass(es) — ${run.ending}`);
      // The guest now runs on whichever host the migration left it on.
      for (const host of [o.target, o.source]) await vmCommand(o.client, host, { op: 'destroy', name: vm }).catch(() => undefined);
    }
  }
  const rows: QemuBenchRow[] = o.strategies.map(({ id }) => {
    const rs = runs.filter((r) => r.strategy === id);
    return {
      strategy: id,
      runs: rs.length,
      verified: rs.filter((r) => r.verified).length,
      downtimeViolations: rs.filter((r) => r.downtimeViolated).length,
      totalTimeMs: median(rs.map((r) => r.totalTimeMs)),
      downtimeMs: medianOrNull(rs.map((r) => r.downtimeMs)),
      postcopyDurationMs: medianOrNull(rs.map((r) => r.postcopyDurationMs)),
      stallMs: medianOrNull(rs.map((r) => r.stallMs)),
      bytes: median(rs.map((r) => r.bytes)),
      storageBytes: median(rs.map((r) => r.storageBytes ?? 0)),
      passes: median(rs.map((r) => r.passes)),
      ending: rs[rs.length - 1]?.ending ?? '',
    };
  });
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  return {
    schema: 'ferry-bench-qemu/1',
    startedAt: new Date(t0).toISOString(),
    durationMs: Date.now() - t0,
    setup: { workload: o.workload, memoryBytes: o.memoryBytes, bandwidthBytesPerSec: o.bandwidthBytesPerSec, storageBandwidthBytesPerSec: o.storageBandwidthBytesPerSec ?? 0, maxDowntimeMs: o.maxDowntimeMs, maxIterations: o.maxIterations, warmupMs: o.warmupMs, repeats: o.repeats, qemu: qemuVersion, accel: 'tcg' },
    machine: { cpus: os.availableParallelism(), model: cpu, loadAverageAtEnd: os.loadavg().map((l) => Math.round(l * 100) / 100) },
    runs,
    rows,
  };
}

const ms = (v: number | null): string => (v === null ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);

export function qemuTable(res: QemuBenchResult): string {
  const lines = [
    '| strategy | verified | total time | × hybrid-1 | × precopy | downtime | downtime violations | post-copy duration | guest stalled in post-copy | × hybrid-1 | data (migration network) | × hybrid-1 | StaticData (storage network) | pre-copy passes | how pre-copy ended (last run) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  const h1 = res.rows.find((r) => r.strategy === 'hybrid-1');
  const pre = res.rows.find((r) => r.strategy === 'precopy');
  const times = (v: number | null, base: number | null | undefined): string => (v !== null && base ? `${(v / base).toFixed(2)}×` : '–');
  for (const r of res.rows) {
    lines.push(
      `| ${r.strategy} | ${r.verified}/${r.runs} | ${ms(r.totalTimeMs)} | ${times(r.totalTimeMs, h1?.totalTimeMs)} | ${times(r.totalTimeMs, pre?.totalTimeMs)} | ${ms(r.downtimeMs)} | ${r.downtimeViolations} | ${ms(r.postcopyDurationMs)} | ${ms(r.stallMs ?? null)} | ${times(r.stallMs ?? null, h1?.stallMs)} | ${formatBytes(r.bytes)} | ${times(r.bytes, h1?.bytes)} | ${r.storageBytes ? formatBytes(r.storageBytes) : '–'} | ${r.passes} | ${r.ending.replace(/\|/g, '\\|')} |`,
    );
  }
  return lines.join('\n');
}

export function qemuMarkdown(res: QemuBenchResult, command: string): string {
  const s = res.setup;
  return [
    `# ferry bench — QEMU (${s.qemu}, ${s.accel})`,
    '',
    `\`${command}\` — ${res.startedAt}, ${(res.durationMs / 60000).toFixed(1)} min, ${res.machine.cpus} CPUs (${res.machine.model}), load average at the end ${res.machine.loadAverageAtEnd.join(' ')}.`,
    '',
    `One ${formatBytes(s.memoryBytes)} test guest per run, workload \`${s.workload}\`, warmed up ${s.warmupMs} ms; migration link capped at ${formatBytes(s.bandwidthBytesPerSec)}/s (pre- and post-copy), storage link ${s.storageBandwidthBytesPerSec ? `capped at ${formatBytes(s.storageBandwidthBytesPerSec)}/s` : 'uncapped'} (par-migrate's StaticData), max downtime ${s.maxDowntimeMs} ms, max ${s.maxIterations} passes; ${s.repeats} run(s) per strategy, medians shown. Verified = the guest's own page check passed on the target. Guest stalled = the target QEMU's postcopy-blocktime: how long all vCPUs at once waited for pages still on the source.`,
    '',
    qemuTable(res),
    '',
    '## Runs',
    '',
    '| strategy | # | outcome | total | downtime | post-copy | guest stalled | faults | data | λ per pass |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...res.runs.map((r) => `| ${r.strategy} | ${r.repeat} | ${r.outcome}${r.verified ? ', verified' : ''} | ${ms(r.totalTimeMs)} | ${ms(r.downtimeMs)} | ${ms(r.postcopyDurationMs)} | ${ms(r.stallMs ?? null)} | ${r.faults ?? '–'} | ${formatBytes(r.bytes)} | ${r.lambdas.join(' ')} |`),
    '',
  ].join('\n');
}

export function writeQemuOutputs(res: QemuBenchResult, dir: string, command: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'results.json'), `${JSON.stringify(res, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, 'results.md'), qemuMarkdown(res, command));
}
