/**
 * Prometheus endpoints, scraped over HTTP after a real migration: the agents' own
 * measurements (bytes per channel, remaining pages, dirty rate, λ, post-copy fault latency
 * histogram and duration) and the controller's (migrations by outcome and phase, downtime,
 * post-copy duration), served on the API listener.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens } from '../../src/api/auth';
import { startApiServer, type RunningApi } from '../../src/api/server';
import type { FerryProcess } from '../../src/support/processes';
import { createControllerMetrics } from '../../src/metrics/controller';
import { startAgentProcess, startTestController, tempDir, testAuditStore, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, migrate, MiB } from '../helpers/migrate';

const hostA = uniqueHost('met-a');
const hostB = uniqueHost('met-b');
const storage = tempDir('met-storage');
let controller: TestController;
let api: RunningApi;
const agents: Record<string, { proc: FerryProcess; url: string }> = {};

function metricsUrl(p: FerryProcess): string {
  const m = /metrics on (http:\/\/\S+\/metrics)/.exec(p.output());
  if (!m) throw new Error(`no metrics line in:\n${p.output()}`);
  return m[1]!;
}

beforeAll(async () => {
  const [c, a, b] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB', extraArgs: ['--metrics', '127.0.0.1:0'] }),
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '1GiB', extraArgs: ['--metrics', '127.0.0.1:0'] }),
  ]);
  controller = c;
  agents[hostA] = { proc: a, url: metricsUrl(a) };
  agents[hostB] = { proc: b, url: metricsUrl(b) };
  const metrics = createControllerMetrics({ store: testAuditStore(), client: controller.client });
  api = await startApiServer({ client: controller.client, store: testAuditStore(), tokens: loadTokens({ token: 't' }), listen: '127.0.0.1:0', metrics: metrics.registry });
});

afterAll(async () => {
  await api?.close();
  await Promise.all(Object.values(agents).map((a) => a.proc.stop()));
  await controller?.stop();
});

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return res.text();
}

/** The value of one sample, e.g. value(text, 'ferry_migration_lambda', {vm: 'x'}). */
function value(text: string, name: string, labels: Record<string, string> = {}): number | null {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^(\S+?)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[4]);
  }
  return null;
}

describe('Prometheus metrics', () => {
  it("show the migration's figures on both agents and on the controller", async () => {
    const vm = `met-vm-${process.pid}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 4 });
    // One pre-copy round, then post-copy: faults on the target.
    const report = await migrate(controller.client, { vm, source: hostA, target: hostB, strategy: 'hybrid-2', options: { bandwidthBytesPerSec: 32 * MiB } });
    expect(report.outcome).toBe('completed');
    expect(report.postcopy).not.toBeNull();

    const src = await scrape(agents[hostA]!.url);
    expect(value(src, 'ferry_migration_bytes_total', { channel: 'migration-network', host: hostA })).toBeGreaterThan(0);
    expect(value(src, 'ferry_migration_iterations_total')).toBe(report.iterations.length);
    expect(value(src, 'ferry_migration_remaining_pages', { vm, role: 'source' })).toBe(0);
    expect(value(src, 'ferry_migration_dirty_rate_pages_per_second', { vm })).toBeGreaterThan(0);
    const lastLambda = report.iterations[report.iterations.length - 1]!.lambda;
    expect(value(src, 'ferry_migration_lambda', { vm })).toBeCloseTo(lastLambda, 6);
    expect(value(src, 'ferry_agent_activity_duration_seconds_count', { activity: 'runIteration', outcome: 'ok' })).toBe(report.iterations.length);

    const tgt = await scrape(agents[hostB]!.url);
    expect(value(tgt, 'ferry_postcopy_faults_total')).toBe(report.postcopy!.faults);
    expect(value(tgt, 'ferry_postcopy_fault_latency_seconds_count')).toBe(report.postcopy!.faults);
    expect(tgt).toMatch(/ferry_postcopy_fault_latency_seconds_bucket\{le="0.01",host="[^"]+"\} \d+/);
    expect(value(tgt, 'ferry_postcopy_duration_seconds_count')).toBe(1);
    expect(value(tgt, 'ferry_postcopy_duration_seconds_sum')).toBeCloseTo(report.postcopyDurationMs! / 1000, 1);
    expect(value(tgt, 'ferry_agent_vms', { state: 'running' })).toBe(1);
    if (report.static) expect(value(tgt, 'ferry_migration_bytes_total', { channel: 'storage-read' })).toBeGreaterThan(0);

    // The controller, on the API listener without a token.
    const ctl = await scrape(`${api.url}/metrics`);
    expect(value(ctl, 'ferry_migrations_total', { outcome: 'completed', strategy: 'hybrid-2' })).toBeGreaterThanOrEqual(1);
    expect(value(ctl, 'ferry_migration_downtime_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(value(ctl, 'ferry_migration_postcopy_duration_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(value(ctl, 'ferry_migration_bytes_total', { channel: 'migration-network' })).toBeGreaterThanOrEqual(report.bytes.migrationNetwork);
    expect(value(ctl, 'ferry_migrations_running', { phase: 'precopy' })).not.toBeNull();
    expect(value(ctl, 'ferry_audit_store_up')).toBe(1);
  });
});
