/**
 * `ferry bench --suite regret [--driver emulated|qemu] [--workloads a,b,trace:<file>]
 * [--repeat N] [--sweep N] [--memory SIZE] [--bandwidth RATE] [--storage-bandwidth RATE]
 * [--out DIR] [--json]`: ferry's default against the hindsight-best fixed switch point
 * (src/bench/regret.ts), on one local cluster of emulated hosts or of QEMU hosts.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { withQemuBenchCluster } from '../../bench/qemu-cluster';
import { QEMU_REGRET_WORKLOADS, REGRET_WORKLOADS, regretMarkdown, runQemuRegret, runRegret, type RegretPlan } from '../../bench/regret';
import { localTraceSetup } from '../../guest/workloads';
import { QEMU_WORKLOADS } from '../../hypervisor/qemu/driver';
import { UsageError } from '../../common/errors';
import { parseDuration, parseRate, parseSize } from '../../common/units';
import { startLocalCluster } from '../../support/local-cluster';
import { choice, int, str } from '../args';
import { configFrom, say } from '../context';
import { temporalTlsOption } from '../../common/temporal-tls';

export async function runRegretSuite(values: Record<string, unknown>, argv: string[]): Promise<number> {
  const driver = choice(values.driver, 'driver', ['emulated', 'qemu'] as const) ?? 'emulated';
  const qemu = driver === 'qemu';
  const named = str(values.workloads)?.split(',').filter(Boolean) ?? [...(qemu ? QEMU_REGRET_WORKLOADS : REGRET_WORKLOADS)];
  if (qemu) {
    for (const w of named) if (!QEMU_WORKLOADS[w]) throw new UsageError(`--workloads: '${w}' is not a QEMU guest workload (${Object.keys(QEMU_WORKLOADS).join(', ')}); trace files run on emulated hosts`);
    if (values['storage-bandwidth'] !== undefined) throw new UsageError('--storage-bandwidth: the QEMU engine has no storage channel yet (its default strategy is as-hybrid)');
  } else for (const w of named) {
    if (!w.startsWith('trace:') && !(REGRET_WORKLOADS as readonly string[]).includes(w)) throw new UsageError(`--workloads: '${w}' is not one of ${REGRET_WORKLOADS.join(', ')}, trace:<file>`);
  }
  // Trace files named here: absolute paths, read by the bench's own agents from their directory.
  const traces = qemu ? { traceDir: null, workloads: named } : localTraceSetup(named, '--workloads');
  const workloads = traces.workloads;
  const plan: RegretPlan = {
    workloads,
    repeats: int(values.repeat, 'repeat', 1, 100) ?? 3,
    sweepRounds: int(values.sweep, 'sweep', 1, 30) ?? 4,
    memoryBytes: values.memory !== undefined ? parseSize(String(values.memory), '--memory') : null,
    bandwidthBytesPerSec: values.bandwidth !== undefined ? parseRate(String(values.bandwidth), '--bandwidth') : 32 * 2 ** 20,
    storageBandwidthBytesPerSec: values['storage-bandwidth'] !== undefined ? parseRate(String(values['storage-bandwidth']), '--storage-bandwidth') : 400 * 2 ** 20,
    maxDowntimeMs: values['max-downtime'] !== undefined ? parseDuration(String(values['max-downtime']), '--max-downtime') : 300,
    maxIterations: int(values['max-iterations'], 'max-iterations', 1, 1000) ?? 30,
    seedBase: int(values.seed, 'seed', 0, 0xffffff) ?? 1,
    driver,
  };
  const warmupMs = values.warmup !== undefined ? parseDuration(String(values.warmup), '--warmup') : qemu ? 2000 : 1000;
  const outDir = path.resolve(str(values.out) ?? path.join('bench-results', `regret-${new Date().toISOString().replace(/[:.]/g, '-')}`));
  const command = ['ferry', 'bench', ...argv].join(' ');
  if (qemu) {
    return withQemuBenchCluster({ cfg: configFrom(values), prefix: 'qregret', memoryBytes: plan.memoryBytes ?? 256 * 2 ** 20, log: say, verbose: values.verbose === true }, async (c) => {
      const { summary, samples } = await runQemuRegret(plan, { ...c, outDir, command, warmupMs, log: say });
      if (values.json === true) process.stdout.write(`${JSON.stringify({ plan, summary }, null, 2)}\n`);
      else process.stdout.write(`${regretMarkdown(summary, plan, command)}\n${path.join(outDir, 'results.md')}\n`);
      return samples.every((r) => r.ok) ? 0 : 1;
    });
  }
  const runId = randomBytes(3).toString('hex');
  const [source, target] = [`regret-${runId}-a`, `regret-${runId}-b`];
  const storageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-regret-storage-'));
  const cfg = { ...configFrom(values), storageDir };
  const cluster = await startLocalCluster({ cfg, hosts: [source, target], traceDir: traces.traceDir, memoryCapacity: String(2 * 2 ** 30), log: say, verbose: values.verbose === true });
  try {
    const connection = await Connection.connect({ address: cluster.address, ...(cfg.temporalAddress ? temporalTlsOption(cfg.temporalTls) : {}) });
    try {
      const client = new Client({ connection, namespace: cfg.namespace });
      const { summary, results } = await runRegret(plan, { client, source, target, vmPrefix: `r${runId}`, outDir, command, warmupMs, progressOut: process.stderr });
      if (values.json === true) process.stdout.write(`${JSON.stringify({ plan, summary }, null, 2)}\n`);
      else process.stdout.write(`${regretMarkdown(summary, plan, command)}\n${path.join(outDir, 'results.md')}\n`);
      return results.every((r) => r.status === 'ok') ? 0 : 1;
    } finally {
      await connection.close();
    }
  } finally {
    await cluster.stop();
    fs.rmSync(storageDir, { recursive: true, force: true });
  }
}
