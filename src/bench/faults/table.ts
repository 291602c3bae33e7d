/**
 * The reliability table: one row per scenario (verdict counts, median times), the Markdown
 * table, and the merge of results of runs split with --only.
 */
import type { LinkName } from '../../support/link';
import { FAULT_SCENARIOS } from './scenarios';
import { ms, type Scenario, type TrialResult, type Verdict } from './trial';

export interface FaultRow {
  scenario: string;
  title: string;
  trials: number;
  completed: number;
  /** Rolled back with the guest verified on the source. */
  rolledBack: number;
  /** The source agent was restarted on purpose; the emulated guest died with it (reported). */
  hostDied: number;
  /** The fault did not land where intended (the migration ended first). */
  missed: number;
  /** Neither verified on the target nor on the source (or no result in time). Must be 0. */
  lost: number;
  /** Trials whose verdict is not one the scenario expects. */
  unexpected: number;
  medianRecoverMs: number | null;
  medianTotalMs: number | null;
}

export interface FaultSuiteResult {
  seed: number;
  startedAt: string;
  durationMs: number;
  rows: FaultRow[];
  trials: TrialResult[];
  environment: { shaping: Record<LinkName, string> | null; machine: { cpus: number; node: string } };
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : Math.round(((s[m - 1] as number) + (s[m] as number)) / 2);
}

export function rowOf(s: Scenario, results: TrialResult[]): FaultRow {
  const n = (v: Verdict): number => results.filter((r) => r.verdict === v).length;
  return {
    scenario: s.id,
    title: s.title,
    trials: results.length,
    completed: n('completed'),
    rolledBack: n('rolled-back'),
    hostDied: n('host-died'),
    missed: n('missed'),
    lost: n('lost'),
    unexpected: results.filter((r) => !s.expected.includes(r.verdict)).length,
    medianRecoverMs: median(results.flatMap((r) => (r.recoverMs === null ? [] : [r.recoverMs]))),
    medianTotalMs: median(results.map((r) => r.totalMs)),
  };
}

export function faultTable(rows: FaultRow[]): string {
  const cell = (x: number | null): string => (x === null ? '–' : ms(x));
  const lines = [
    '| scenario | trials | completed | rolled back (verified on source) | host died | missed | lost | median time to recover | median total |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(`| ${r.title} | ${r.trials} | ${r.completed} | ${r.rolledBack} | ${r.hostDied} | ${r.missed} | ${r.lost} | ${cell(r.medianRecoverMs)} | ${cell(r.medianTotalMs)} |`);
  }
  return lines.join('\n');
}

/** One table from the `--json` results of runs split with --only (scenarios in suite order). */
export function mergeFaultResults(parts: FaultSuiteResult[]): FaultSuiteResult {
  if (parts.length === 0) throw new Error('nothing to merge');
  const trials = parts.flatMap((p) => p.trials);
  const seeds = [...new Set(parts.map((p) => p.seed))];
  if (seeds.length > 1) throw new Error(`the parts were run with different seeds (${seeds.join(', ')})`);
  const ids = new Set(trials.map((t) => t.scenario));
  const rows = FAULT_SCENARIOS.filter((s) => ids.has(s.id)).map((s) => rowOf(s, trials.filter((t) => t.scenario === s.id)));
  return {
    seed: seeds[0]!,
    startedAt: parts.map((p) => p.startedAt).sort()[0]!,
    durationMs: parts.reduce((a, p) => a + p.durationMs, 0),
    rows,
    trials,
    environment: { shaping: parts.find((p) => p.environment.shaping)?.environment.shaping ?? null, machine: parts[0]!.environment.machine },
  };
}
