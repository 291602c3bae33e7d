/**
 * `ferry bench --suite paper`: plan the cells, run them one after another on one cluster,
 * write results.json (after every cell, so an interrupted run keeps what it measured),
 * then results.md and the charts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { buildCharts } from './charts';
import { usesParMigrate } from '../../policy/types';
import { machineFacts, workloadDocs } from './machine';
import { metricsOf } from './metrics';
import { renderMarkdown } from './markdown';
import { buildCells, COMPARISON_INFO } from './paper';
import { ProgressBar } from './progress';
import { runCell } from './runner';
import { PAPER_TESTBED, type Scale } from './scale';
import type { BenchResults, CellResult, CellSpec, ComparisonId, MachineFacts, ScaleDoc } from './types';

export * from './types';
export { buildCells, parseOnly, COMPARISON_INFO } from './paper';
export { SCALES } from './scale';
export { machineFacts } from './machine';

export interface PlanOptions {
  scale: Scale;
  repeats: number;
  only: ComparisonId[];
  maxDowntimeMs: number;
  maxIterations: number;
}

export function planCells(o: PlanOptions): CellSpec[] {
  return buildCells({ scale: o.scale, repeats: o.repeats, only: o.only, maxDowntimeMs: o.maxDowntimeMs, maxIterations: o.maxIterations });
}

function fmtRatio(r: number): string {
  return Math.abs(r - 1) < 0.05 ? 'the same as' : `${r >= 10 ? Math.round(r) : r.toFixed(1)}×`;
}

export function scaleDoc(o: PlanOptions): ScaleDoc {
  const s = o.scale;
  const inv = Math.round(1 / s.memoryFactor);
  return {
    name: s.name,
    memoryFactor: s.memoryFactor,
    migrationLinkBytesPerSec: PAPER_TESTBED.migrationLinkBytesPerSec,
    comprehensiveLinkBytesPerSec: PAPER_TESTBED.comprehensiveLinkBytesPerSec,
    storageLinkBytesPerSec: PAPER_TESTBED.storageLinkBytesPerSec,
    maxDowntimeMs: o.maxDowntimeMs,
    maxIterations: o.maxIterations,
    warmupMs: s.warmupMs,
    notes: [
      s.description + '.',
      `Rates are the paper's, absolute, in every scale (links; guest dirty rates = the profile defaults): link : storage link : dirty rate is the paper's exactly. Memory is ×1/${inv}, so every transfer takes 1/${inv} of the paper's time (times here are not comparable to the paper's seconds; the % changes are).`,
      `Scenario VMs (comparisons 3 and 4) are ×1/${Math.round(1 / s.scenarioMemoryFactor)}: their load changes on the workload's own wall clock (scenario-rising: write share 10 % → 90 % over 60 s; scenario-bursty: 2 s bursts every 20 s), which cannot be scaled, so their time compression is capped at ${Math.round(1 / s.scenarioMemoryFactor)} and the write share does change during the migration.`,
      `Not scaled: the ${o.maxDowntimeMs} ms downtime budget (wall time: ${((PAPER_TESTBED.migrationLinkBytesPerSec * o.maxDowntimeMs) / 1000 / 1e6).toFixed(1)} MB at 32 MB/s) covers ${fmtRatio((inv * o.maxDowntimeMs) / PAPER_TESTBED.maxDowntimeMs)} the share of the guest it covered in the paper (9.6 MB of 6 GiB), so pre-copy converges where the paper's did not (\`--max-downtime ${Math.max(1, Math.round(PAPER_TESTBED.maxDowntimeMs / inv))}ms\` keeps the paper's share); the workloads' own clocks (scenario-rising ramps over 60 s, scenario-bursty bursts every 20 s from 10 s, kernel-compile's working set moves every 2 s) run in wall time while the migrations are ${inv}× shorter; a Temporal activity per round costs the same at every size.`,
      'Workload parameters are the paper-derived profile defaults (src/guest/workloads.ts) without overrides: the comprehensive test uses the Memcached profile (90 % sets) where the paper set 3:7 reads:writes; vCPUs 1 (the profile rate is the total over vCPUs).',
      'Phase 2\'s first round (comparison 2) and the hybrids use the paper\'s numbering: for strategies with a bulk round the first dynamic round is round 2.',
    ],
  };
}

export interface BenchRunOptions extends PlanOptions {
  client: Client;
  source: string;
  target: string;
  outDir: string;
  command: string;
  vmPrefix: string;
  /** stderr, normally; the bar only draws on a terminal. */
  progressOut: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  log: (line: string) => void;
  /** Machine facts taken before the cluster started (so its processes do not count as "other"). */
  machine?: MachineFacts;
}

function writeJson(file: string, data: unknown): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(data, null, 2)}\n`);
  fs.renameSync(tmp, file);
}

export async function runBench(o: BenchRunOptions): Promise<BenchResults> {
  fs.mkdirSync(o.outDir, { recursive: true });
  const cells = planCells(o);
  const t0 = Date.now();
  const outputs = { dir: path.resolve(o.outDir), results: 'results.json', markdown: 'results.md', charts: [] as string[] };
  const res: BenchResults = {
    schema: 'ferry-bench/1',
    suite: 'paper',
    scale: o.scale.name,
    repeat: o.repeats,
    only: o.only,
    command: o.command,
    startedAt: new Date(t0).toISOString(),
    finishedAt: null,
    durationMs: null,
    machine: o.machine ?? machineFacts(),
    scaleDoc: scaleDoc(o),
    workloads: workloadDocs(cells.map((c) => c.workload)),
    cells: [],
    outputs,
  };
  const jsonFile = path.join(o.outDir, 'results.json');
  const bar = new ProgressBar(o.progressOut, cells.length);
  o.log(
    `ferry bench: ${cells.length} migrations (${o.only.map((c) => `${COMPARISON_INFO[c].number}=${c}`).join(', ')}), scale ${o.scale.name}, ${o.repeats} repeat(s); results in ${outputs.dir}`,
  );
  for (const [i, cell] of cells.entries()) {
    bar.start(i, cell);
    const r: CellResult = await runCell(
      { client: o.client, source: o.source, target: o.target, vmPrefix: o.vmPrefix, warmupMs: o.scale.warmupMs, cellTimeoutMs: o.scale.cellTimeoutMs, progress: bar },
      cell,
      i,
    );
    res.cells.push(r);
    bar.finish(r);
    writeJson(jsonFile, res);
  }
  bar.done();
  res.finishedAt = new Date().toISOString();
  res.durationMs = Date.now() - t0;
  res.machine.loadAverageAtEnd = (await import('node:os')).loadavg().map((l) => Math.round(l * 100) / 100);

  await writeOutputs(res, o.outDir, o.log);
  return res;
}

/** results.md and the charts from the results (and results.json again, with the chart list). */
export async function writeOutputs(res: BenchResults, outDir: string, log: (line: string) => void): Promise<void> {
  let chartError: string | null = null;
  try {
    log('ferry bench: drawing charts');
    const charts = await buildCharts(res.cells);
    for (const c of charts) fs.writeFileSync(path.join(outDir, c.file), c.svg);
    res.outputs.charts = charts.map((c) => c.file);
  } catch (e) {
    chartError = `charts failed: ${(e as Error).stack ?? String(e)}`;
    log(`ferry bench: ${chartError}`);
  }
  let md = renderMarkdown(res);
  if (chartError) md += `\n## Charts\n\n${chartError.split('\n')[0]}\n`;
  fs.writeFileSync(path.join(outDir, 'results.md'), md);
  writeJson(path.join(outDir, 'results.json'), res);
}

/**
 * `ferry bench --render DIR`: results.md and the charts again from DIR/results.json, with the
 * metrics re-derived from the stored reports (no migration runs).
 */
export async function renderExisting(dir: string, log: (line: string) => void): Promise<BenchResults> {
  const res = JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8')) as BenchResults;
  for (const c of res.cells) {
    if (c.report) c.metrics = metricsOf(c.report, !usesParMigrate(c.cell.strategy) && c.cell.strategy !== 'postcopy');
  }
  res.outputs.dir = path.resolve(dir);
  await writeOutputs(res, dir, log);
  return res;
}
