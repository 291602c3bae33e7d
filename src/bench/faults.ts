/**
 * Fault scenarios on real processes, and the reliability table (`npm run bench:faults`).
 *
 * Crash scenarios run on a `local` fault cluster (everything on loopback, the dev server on a
 * SQLite file that survives a restart); link and storage scenarios on a `net` one (the two
 * agents in network namespaces joined by shaped links, shared storage on a tmpfs). The
 * clusters and the network fixture are test fixtures the fault tests use too; they live in
 * src/support (fault-cluster.ts, netns.ts, link.ts, test-storage.ts, relay.ts).
 *
 * Here: the suite and its CLI. The bench itself is in faults/: trial.ts (one migration, one
 * fault, the verdict), scenarios.ts (what faults, when, what outcomes count as surviving),
 * table.ts (rows, the table, merging split runs). Network namespaces need root and
 * iproute2 (`ferry setup --tests`); without them the net cluster fails to start with the
 * reason.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LinkName } from '../support/link';
import { prng, trialSeed } from '../support/prng';
import { startFaultCluster } from '../support/fault-cluster';
import { FAULT_SCENARIOS, scenarioById } from './faults/scenarios';
import { faultTable, mergeFaultResults, rowOf, type FaultSuiteResult } from './faults/table';
import { ms, type TrialResult } from './faults/trial';

export { CRASH_SCENARIOS, FAULT_SCENARIOS, NET_SCENARIOS, scenarioById } from './faults/scenarios';
export { faultTable, mergeFaultResults, rowOf, type FaultRow, type FaultSuiteResult } from './faults/table';
export type { Plan, Scenario, TrialContext, TrialResult, Verdict } from './faults/trial';

type Log = (line: string) => void;

// ==========================================================================================
// The suite

export interface FaultSuiteOptions {
  trials: number;
  seed: number;
  log?: Log;
  /** Scenario ids to run (default: all). */
  only?: string[];
  temporalBin?: string;
}

/**
 * Run each scenario `trials` times (fresh VM each time) and tabulate. Crash scenarios run
 * on a loopback cluster, link and storage ones on the two-host network fixture (root).
 */
export async function runFaultSuite(opts: FaultSuiteOptions): Promise<FaultSuiteResult> {
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const startedAt = new Date().toISOString();
  const chosen = opts.only?.length ? opts.only.map(scenarioById) : FAULT_SCENARIOS;
  const results: TrialResult[] = [];
  let shaping: Record<LinkName, string> | null = null;
  for (const kind of ['local', 'net'] as const) {
    const group = chosen.filter((s) => s.cluster === kind);
    if (group.length === 0) continue;
    log(`faults: starting the ${kind} cluster…`);
    const cluster = await startFaultCluster({ kind, temporalBin: opts.temporalBin, log });
    if (cluster.net) shaping = cluster.net.shaping;
    try {
      for (const s of group) {
        for (let t = 1; t <= opts.trials; t++) {
          const seed = trialSeed(opts.seed, s.id, t);
          const random = prng(seed);
          let r: TrialResult;
          try {
            r = await s.run({ cluster, random, log }, t, seed);
          } catch (e) {
            r = { scenario: s.id, trial: t, seed, verdict: 'lost', expected: s.expected, recoverMs: null, totalMs: 0, fault: '', placement: {}, report: null, detail: `trial failed: ${(e as Error).message}` };
            await cluster.heal().catch(() => undefined);
          }
          results.push(r);
          log(`faults: ${s.id} #${t} (seed ${seed}): ${r.verdict}${r.recoverMs !== null ? ` in ${ms(r.recoverMs)}` : ''} (total ${ms(r.totalMs)}) — ${r.fault} — ${r.detail}`);
        }
      }
    } finally {
      await cluster.stop();
    }
  }
  const rows = chosen.map((s) => rowOf(s, results.filter((r) => r.scenario === s.id)));
  return { seed: opts.seed, startedAt, durationMs: Math.round(performance.now() - t0), rows, trials: results, environment: { shaping, machine: { cpus: os.availableParallelism(), node: process.version } } };
}

// ==========================================================================================
// CLI: npm run bench:faults -- --trials N [--seed S] [--only id,id] [--json]
//      npm run bench:faults -- --merge a.json,b.json [--json]   (runs split with --only)

async function main(argv: string[]): Promise<number> {
  let trials = 3;
  let seed = Date.now() % 100_000;
  let json = false;
  let only: string[] = [];
  let merge: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--json') json = true;
    else if (a === '--merge' && v !== undefined) {
      merge = v.split(',').filter(Boolean);
      i++;
    }
    else if (a === '--trials' && v !== undefined) {
      trials = Number(v);
      i++;
    } else if (a === '--seed' && v !== undefined) {
      seed = Number(v);
      i++;
    } else if (a === '--only' && v !== undefined) {
      only = v.split(',').filter(Boolean);
      i++;
    } else if (a === '--list') {
      for (const s of FAULT_SCENARIOS) process.stdout.write(`${s.id}\t${s.cluster}\t${s.title}\n`);
      return 0;
    } else {
      process.stderr.write(`bench:faults: unknown argument '${a}'\nusage: npm run bench:faults -- --trials N [--seed S] [--only id,id] [--json] [--list] | --merge a.json,b.json [--json]\n`);
      return 2;
    }
  }
  if (merge.length) {
    const res = mergeFaultResults(merge.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as FaultSuiteResult));
    if (json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    else {
      const n = [...new Set(res.rows.map((r) => r.trials))].join('/');
      process.stdout.write(`ferry fault bench: ${n} trial(s) per scenario, seed ${res.seed}, ${ms(res.durationMs)} of runs (merged from ${merge.length} parts)\n\n${faultTable(res.rows)}\n\n`);
      process.stdout.write(`${res.rows.reduce((a, r) => a + r.lost, 0)} lost, ${res.rows.reduce((a, r) => a + r.unexpected, 0)} unexpected outcome(s)\n`);
    }
    return res.rows.some((r) => r.lost > 0) ? 1 : 0;
  }
  if (!Number.isInteger(trials) || trials < 1) {
    process.stderr.write('bench:faults: --trials must be a whole number ≥ 1\n');
    return 2;
  }
  if (!Number.isInteger(seed) || seed < 0) {
    process.stderr.write('bench:faults: --seed must be a whole number ≥ 0\n');
    return 2;
  }
  for (const id of only) scenarioById(id);
  const log: Log = (l) => process.stderr.write(`${l}\n`);
  log(`bench:faults: ${trials} trial(s) per scenario, seed ${seed} (repeat with --seed ${seed})`);
  const res = await runFaultSuite({ trials, seed, log, only });
  if (json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
  else {
    process.stdout.write(`ferry fault bench: ${trials} trial(s) per scenario, seed ${seed}, ${ms(res.durationMs)}\n\n`);
    process.stdout.write(`${faultTable(res.rows)}\n\n`);
    if (res.environment.shaping) process.stdout.write(`links: migration ${res.environment.shaping.migration}; storage ${res.environment.shaping.storage}\n`);
    const lost = res.rows.reduce((a, r) => a + r.lost, 0);
    const unexpected = res.rows.reduce((a, r) => a + r.unexpected, 0);
    process.stdout.write(`${lost} lost, ${unexpected} unexpected outcome(s)\n`);
  }
  return res.rows.some((r) => r.lost > 0 || r.unexpected > 0) ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`bench:faults: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(2);
    },
  );
}
