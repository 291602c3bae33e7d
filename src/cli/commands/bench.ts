/**
 * `ferry bench --suite paper`: reproduce the paper's comparisons through the real workflow
 * and agents, side by side, on one local cluster (a dev server unless FERRY_TEMPORAL_ADDRESS
 * is set, a controller, two host agents). Writes results.json, results.md and SVG charts.
 * Progress goes to stderr; --json prints exactly one JSON document (results.json) on stdout.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { machineFacts, parseOnly, planCells, renderExisting, runBench, SCALES, COMPARISON_INFO, type ScaleName } from '../../bench/suite';
import { downtimeViolated } from '../../bench/suite/metrics';
import { UsageError } from '../../common/errors';
import { formatBytes, parseDuration, parseRate, parseSize } from '../../common/units';
import { QEMU_WORKLOADS } from '../../hypervisor/qemu/driver';
import { withQemuBenchCluster } from '../../bench/qemu-cluster';
import { QEMU_BENCH_STRATEGIES, parseQemuVariant, qemuTable, runQemuBench, writeQemuOutputs } from '../../bench/qemu';
import { choice, int, parse, str } from '../args';
import { commonOptions, configFrom, say } from '../context';
import { temporalTlsOption } from '../../common/temporal-tls';
import { startLocalCluster } from '../../support/local-cluster';
import { runRegretSuite } from './bench-regret';

export const help =
  'ferry bench --suite regret [--driver emulated|qemu] [--workloads memcached,…,trace:<file>] [--repeat N] [--sweep N] [--memory SIZE] [--bandwidth RATE] [--storage-bandwidth RATE] [--out DIR] [--json]   ferry\'s default vs the hindsight-best switch point · ' +
  'ferry bench --suite qemu [--repeat N] [--strategies precopy,hybrid-1,as-hybrid,par-migrate,pa-hybrid] [--workload W] [--memory SIZE] [--bandwidth RATE] [--storage-bandwidth RATE] [--warmup T] [--out DIR] [--json]   the QEMU cell (real guests, TCG) · ' +
  'ferry bench --suite scale [--address HOST:PORT | --dir DIR] [--repeat N] [--vms 48] [--iterations 200] [--burst 1000] [--skip evacuation,long,api,overhead] [--out DIR] [--json]   evacuation, history, API load and overhead on a `ferry cluster` · ' +
  'ferry bench [--suite paper|faults] [--trials N] [--seed S] [--scale small|full|smoke] [--repeat N] [--out DIR] [--only 1,2,comprehensive] [--max-downtime 300ms] [--max-iterations 30] [--list] [--render DIR] [--json]   the paper comparison suite';

export async function run(argv: string[]): Promise<number> {
  if (argv.some((a, i) => a === '--suite=scale' || (a === '--suite' && argv[i + 1] === 'scale'))) return (await import('../../bench/scale')).runScaleCli(argv);
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      suite: { type: 'string' },
      scale: { type: 'string' },
      repeat: { type: 'string' },
      out: { type: 'string' },
      only: { type: 'string' },
      'max-downtime': { type: 'string' },
      'max-iterations': { type: 'string' },
      list: { type: 'boolean' },
      render: { type: 'string' },
      json: { type: 'boolean' },
      verbose: { type: 'boolean' },
      trials: { type: 'string' },
      seed: { type: 'string' },
      strategies: { type: 'string' },
      workload: { type: 'string' },
      memory: { type: 'string' },
      bandwidth: { type: 'string' },
      warmup: { type: 'string' },
      workloads: { type: 'string' },
      sweep: { type: 'string' },
      'storage-bandwidth': { type: 'string' },
      driver: { type: 'string' },
    },
    false,
  );
  const suite = choice(values.suite, 'suite', ['paper', 'faults', 'qemu', 'regret'] as const) ?? 'paper';
  if (suite === 'qemu') return runQemuSuite(values, argv);
  if (suite === 'regret') return runRegretSuite(values, argv);
  if (suite === 'faults') {
    // The reliability table: every fault scenario `--trials` times (src/bench/faults.ts).
    const { runFaultSuite, faultTable } = await import('../../bench/faults');
    const result = await runFaultSuite({
      trials: int(values.trials, 'trials', 1, 1000) ?? 3,
      seed: int(values.seed, 'seed', 0, 0xffffffff) ?? Date.now() % 1_000_000,
      only: str(values.only)?.split(',').filter(Boolean),
      log: say,
    });
    process.stdout.write(values.json === true ? `${JSON.stringify(result, null, 2)}\n` : `${faultTable(result.rows)}\n`);
    return result.rows.some((r) => r.lost > 0) ? 1 : 0;
  }
  // smoke: one tiny cell per comparison, for the test suite.
  const scaleName: ScaleName = choice(values.scale, 'scale', ['small', 'full', 'smoke'] as const) ?? 'small';
  const scale = SCALES[scaleName];
  const repeats = int(values.repeat, 'repeat', 1, 100) ?? scale.repeats;
  const only = parseOnly(str(values.only));
  if (typeof only === 'string') throw new UsageError(`--only: ${only}`);
  const maxDowntimeMs = values['max-downtime'] !== undefined ? parseDuration(str(values['max-downtime'])!, '--max-downtime') : scale.maxDowntimeMs;
  const maxIterations = int(values['max-iterations'], 'max-iterations', 1, 1000) ?? scale.maxIterations;
  const json = values.json === true;
  const renderDir = str(values.render);
  if (renderDir !== undefined) {
    if (!fs.existsSync(path.join(renderDir, 'results.json'))) throw new UsageError(`--render: no results.json in ${renderDir}`);
    const res = await renderExisting(renderDir, say);
    process.stdout.write(json ? `${JSON.stringify(res)}\n` : `${path.resolve(renderDir)}\n`);
    return 0;
  }
  const plan = { scale, repeats, only, maxDowntimeMs, maxIterations };
  const cells = planCells(plan);

  if (values.list === true) {
    const rows = cells.map((c) => ({ id: c.id, strategy: c.strategy, workload: c.workload, memory: formatBytes(c.memoryBytes), seed: c.seed, linkBytesPerSec: c.options.bandwidthBytesPerSec, force: c.forcePostcopyAfterRounds }));
    if (json) process.stdout.write(`${JSON.stringify({ scale: scaleName, repeats, only, cells: rows }, null, 2)}\n`);
    else for (const r of rows) process.stdout.write(`${r.id}\t${r.strategy}\t${r.workload}\t${r.memory}\tseed ${r.seed}${r.force !== null ? `\tforce after ${r.force}` : ''}\n`);
    return 0;
  }
  if (cells.length === 0) throw new UsageError('nothing to run');

  const stamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  const outDir = path.resolve(str(values.out) ?? path.join('bench-results', stamp));
  const runId = randomBytes(3).toString('hex');
  const [source, target] = [`bench-${runId}-a`, `bench-${runId}-b`];
  const biggest = Math.max(...cells.map((c) => c.memoryBytes));
  // Each host holds one guest at a time (the source, or the incoming one on the target);
  // room for two lets a cell that leaked its VM not block the next.
  const capacity = String(biggest * 2 + 256 * 2 ** 20);
  const storageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-storage-'));
  const cfg = { ...configFrom(values), storageDir };

  const machine = machineFacts();
  say(`ferry bench: ${cells.length} migrations on ${source} → ${target}; comparisons ${only.map((c) => `${COMPARISON_INFO[c].number}=${c}`).join(', ')}`);
  const cluster = await startLocalCluster({ cfg, hosts: [source, target], memoryCapacity: capacity, log: say, verbose: values.verbose === true });
  try {
    const connection = await Connection.connect({ address: cluster.address, ...(cfg.temporalAddress ? temporalTlsOption(cfg.temporalTls) : {}) });
    try {
      const client = new Client({ connection, namespace: cfg.namespace });
      const res = await runBench({
        ...plan,
        client,
        source,
        target,
        outDir,
        command: ['ferry', 'bench', ...argv].join(' '),
        vmPrefix: `b${runId}`,
        progressOut: process.stderr,
        log: say,
        machine,
      });
      const failed = res.cells.filter((c) => c.status !== 'ok');
      say(
        `ferry bench: ${res.cells.length - failed.length}/${res.cells.length} migrations completed and verified in ${((res.durationMs ?? 0) / 60000).toFixed(1)} min; ${path.join(outDir, 'results.md')}, results.json, ${res.outputs.charts.length} charts`,
      );
      for (const f of failed) say(`  failed: ${f.cell.id}: ${f.error}`);
      // Downtime is a promise: a stop-and-copy the test chose must pause within the budget.
      const violations = res.cells.filter(downtimeViolated);
      for (const v of violations) say(`  downtime violation: ${v.cell.id}: paused ${v.report!.downtimeMs} ms, budget ${v.cell.options.maxDowntimeMs} ms (${v.report!.decisions.at(-1)?.reason ?? ''})`);
      if (json) process.stdout.write(`${JSON.stringify(res)}\n`);
      else process.stdout.write(`${outDir}\n`);
      // 3: every migration completed and verified, but a pause broke the downtime promise.
      return failed.length > 0 ? 1 : violations.length > 0 ? 3 : 0;
    } finally {
      await connection.close();
    }
  } finally {
    await cluster.stop();
    fs.rmSync(storageDir, { recursive: true, force: true });
  }
}

/** The QEMU cell: real guests between two `--driver qemu` agents on this machine. */
async function runQemuSuite(values: Record<string, unknown>, argv: string[]): Promise<number> {
  const strategies = (str(values.strategies)?.split(',').filter(Boolean) ?? QEMU_BENCH_STRATEGIES).map((s) => {
    const v = parseQemuVariant(s);
    if (typeof v === 'string') throw new UsageError(`--strategies: ${v}`);
    return v;
  });
  const workload = str(values.workload) ?? 'write-intensive';
  if (!QEMU_WORKLOADS[workload]) throw new UsageError(`--workload: '${workload}' is not one of ${Object.keys(QEMU_WORKLOADS).join(', ')}`);
  const memoryBytes = values.memory !== undefined ? parseSize(String(values.memory), '--memory') : 256 * 2 ** 20;
  const bandwidth = values.bandwidth !== undefined ? parseRate(String(values.bandwidth), '--bandwidth') : 32 * 2 ** 20;
  const storageBandwidth = values['storage-bandwidth'] !== undefined ? parseRate(String(values['storage-bandwidth']), '--storage-bandwidth') : 400 * 2 ** 20;
  const warmupMs = values.warmup !== undefined ? parseDuration(String(values.warmup), '--warmup') : 2000;
  const repeats = int(values.repeat, 'repeat', 1, 100) ?? 3;
  const maxDowntimeMs = values['max-downtime'] !== undefined ? parseDuration(str(values['max-downtime'])!, '--max-downtime') : 300;
  const maxIterations = int(values['max-iterations'], 'max-iterations', 1, 1000) ?? 30;
  const outDir = path.resolve(str(values.out) ?? path.join('bench-results', `qemu-${new Date().toISOString().replace(/[:.]/g, '-')}`));
  return withQemuBenchCluster({ cfg: configFrom(values), prefix: 'qbench', memoryBytes, log: say, verbose: values.verbose === true }, async ({ client, source, target, qemuVersion }) => {
    const res = await runQemuBench({ client, source, target, strategies, repeats, workload, memoryBytes, bandwidthBytesPerSec: bandwidth, storageBandwidthBytesPerSec: storageBandwidth, maxDowntimeMs, maxIterations, warmupMs, log: say }, qemuVersion);
    writeQemuOutputs(res, outDir, ['ferry', 'bench', ...argv].join(' '));
    if (values.json === true) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    else process.stdout.write(`${qemuTable(res)}\n\n${path.join(outDir, 'results.md')}\n`);
    return res.runs.every((r) => r.verified) ? 0 : 1;
  });
}
