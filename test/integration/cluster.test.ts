/**
 * `ferry cluster` against real processes: PostgreSQL, the Temporal server's four services
 * built from source, ferry's agents and controllers. A migration completes and verifies on
 * it; the history service SIGKILLed mid-migration and brought back by `ferry cluster up` →
 * the migration completes; the frontend SIGKILLed mid-migration and brought back → the
 * controllers and agents reconnect and it completes; two controller processes, the one
 * running a migration SIGKILLed → the other carries it on; `up` again starts nothing; `down`
 * leaves no process and no port. The frontend requires client certificates from the cluster's
 * CA: everything here connects with one (controllers, agents with their host's certificate
 * from `ferry cluster certs`, this test's client), and a client without one is refused.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Connection, type WorkflowHandle } from '@temporalio/client';
import { makeCa, makeHostCert } from '../helpers/certs';
import { temporalTlsEnv, temporalTlsOption, type TemporalTlsFiles } from '../../src/common/temporal-tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterStatus } from '../../src/cluster/cluster';
import { processStartTicks } from '../../src/cluster/state';
import { portOpen } from '../../src/cluster/services';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/common/search-attributes';
import { CONTROL_QUEUE } from '../../src/common/names';
import { FERRY_BIN, spawnFerry, type FerryProcess } from '../../src/support/processes';
import type { MigrationReport } from '../../src/workflows/report';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, MiB, startMigration, untilProgress } from '../helpers/migrate';

type UpJson = ClusterStatus & { started: string[]; alreadyRunning: boolean; elapsedMs: number };

/** `ferry cluster …` as an operator runs it. */
function cluster(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FERRY_BIN, 'cluster', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr, ms: Date.now() - t0 }));
  });
}

async function upJson(dir: string): Promise<UpJson> {
  const r = await cluster('up', '--dir', dir, '--json');
  expect(r.code, r.stderr).toBe(0);
  const j = JSON.parse(r.stdout) as UpJson;
  console.log(`ferry cluster up: ${(r.ms / 1000).toFixed(1)} s (started: ${j.started.join(', ') || 'nothing'})`);
  return j;
}

const pidsOf = (s: ClusterStatus): Record<string, number | null> => Object.fromEntries(s.processes.map((p) => [p.name, p.pid]));

const dir = tempDir('cluster');
// PostgreSQL runs as the postgres user: it must be able to enter the cluster's directory.
fs.chmodSync(dir, 0o755);
let first: UpJson;
let controller: TestController | undefined;
const agents: FerryProcess[] = [];
/** Two `ferry controller` processes, for the controller-failover test. */
const controllers: FerryProcess[] = [];
const hostA = uniqueHost('cl-a');
const hostB = uniqueHost('cl-b');
const storage = tempDir('cl-storage');
/** Client certificates from the cluster's CA: this test's client (operator), the controllers, each agent. */
let tls: TemporalTlsFiles;
const certOf = (name: string): TemporalTlsFiles => ({ ...tls, cert: path.join(first.tls!.dir, `${name}.crt`), key: path.join(first.tls!.dir, `${name}.key`) });
let certsMs = 0;

beforeAll(async () => {
  first = await upJson(dir);
  expect(first.tls, 'up made the cluster CA and the operator certificate').not.toBeNull();
  tls = { ca: first.tls!.ca, cert: first.tls!.cert, key: first.tls!.key, serverName: first.tls!.serverName };
  // The agents' certificates, as an operator makes them.
  const t0 = Date.now();
  const certs = await cluster('certs', '--dir', dir, '--names', `${hostA},${hostB}`);
  certsMs = Date.now() - t0;
  expect(certs.code, certs.stderr).toBe(0);
  const [c, a, b] = await Promise.all([
    startTestController(first.address, tls),
    startAgentProcess(hostA, { storageDir: storage, address: first.address, env: temporalTlsEnv(certOf(hostA)) }),
    startAgentProcess(hostB, { storageDir: storage, address: first.address, env: temporalTlsEnv(certOf(hostB)) }),
  ]);
  controller = c;
  agents.push(a, b);
  // They bundle their workflow code while the first tests run; the failover test awaits them.
  for (const n of [1, 2]) {
    controllers.push(spawnFerry(`controller ${n}`, ['controller'], { env: { FERRY_TEMPORAL_ADDRESS: first.address, ...temporalTlsEnv(certOf('controller')) } }));
  }
}, 600_000);

afterAll(async () => {
  await Promise.all([...agents, ...controllers].map((a) => a.stop()));
  await controller?.stop();
  const r = await cluster('down', '--dir', dir);
  if (r.code !== 0) console.log(r.stderr);
  fs.rmSync(dir, { recursive: true, force: true });
}, 120_000);


function expectVerified(report: MigrationReport, vm: string): void {
  expect(report.outcome, report.reason).toBe('completed');
  expect(report).toMatchObject({ vm, source: hostA, target: hostB });
  expect(report.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target', pagesChecked: report.memoryBytes / report.pageSize });
}

type HistoryEvent = NonNullable<Awaited<ReturnType<WorkflowHandle['fetchHistory']>>['events']>[number];
const eventMs = (e: HistoryEvent): number => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);

/** Who completed each workflow task (worker identity `pid@host`) and who started each activity, with the event times. */
async function workers(handle: WorkflowHandle): Promise<{ workflowTasks: { ms: number; identity: string }[]; activities: { ms: number; identity: string }[] }> {
  const events = (await handle.fetchHistory()).events ?? [];
  return {
    workflowTasks: events.filter((e) => e.workflowTaskCompletedEventAttributes).map((e) => ({ ms: eventMs(e), identity: e.workflowTaskCompletedEventAttributes!.identity ?? '' })),
    activities: events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => ({ ms: eventMs(e), identity: e.activityTaskStartedEventAttributes!.identity ?? '' })),
  };
}

/** The migrated guest is destroyed once checked: guests left running would load the 2-core machine. */
async function destroyVm(vm: string, host: string): Promise<void> {
  await controller!.client.workflow.execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-destroy-${vm}-${Date.now()}`, args: [{ host, op: 'destroy', name: vm }] });
}

describe('ferry cluster', () => {
  it('up starts PostgreSQL and the four services, and registers the namespace with its retention and ferry\'s search attributes', async () => {
    expect(first.running).toBe(true);
    expect(first.started).toEqual(['postgresql', 'frontend', 'history', 'matching', 'worker']);
    expect(first.processes.map((p) => p.name)).toEqual(['postgresql', 'frontend', 'history', 'matching', 'worker']);
    expect(new Set(first.processes.map((p) => p.pid)).size).toBe(5);
    expect(first.address).toMatch(/^127\.0\.0\.1:\d+$/);
    const connection = await Connection.connect({ address: first.address, ...temporalTlsOption(tls) });
    try {
      const ns = await connection.workflowService.describeNamespace({ namespace: 'default' });
      expect(Number(ns.config?.workflowExecutionRetentionTtl?.seconds)).toBe(72 * 3600);
      const sa = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
      for (const k of FERRY_SEARCH_ATTRIBUTES) expect(sa.customAttributes?.[k.name], k.name).toBeDefined();
    } finally {
      await connection.close();
    }
  });

  it('the frontend refuses a client without a certificate from the cluster CA and accepts one with it', async () => {
    const t0 = Date.now();
    const address = first.address;
    const ca = fs.readFileSync(tls.ca);
    const attempt = async (opts: Parameters<typeof Connection.connect>[0]): Promise<string> => {
      try {
        const c = await Connection.connect({ address, connectTimeout: 3000, ...opts });
        try {
          await c.workflowService.describeNamespace({ namespace: 'default' });
          return 'accepted';
        } finally {
          await c.close();
        }
      } catch (e) {
        return `refused: ${(e as Error).message.split('\n')[0]}`;
      }
    };
    // Plain gRPC, TLS without a client certificate, a certificate of another CA: refused.
    expect(await attempt({})).toMatch(/^refused/);
    expect(await attempt({ tls: { serverRootCACertificate: ca } })).toMatch(/^refused/);
    const other = tempDir('cl-other-ca');
    const stranger = makeHostCert(other, makeCa(other, 'other'), 'operator');
    expect(await attempt({ tls: { serverRootCACertificate: ca, clientCertPair: { crt: fs.readFileSync(stranger.cert), key: fs.readFileSync(stranger.key) } } })).toMatch(/^refused/);
    // The operator's certificate from `up`, and an agent's from `ferry cluster certs`: accepted.
    expect(await attempt(temporalTlsOption(tls))).toBe('accepted');
    expect(await attempt(temporalTlsOption(certOf(hostA)))).toBe('accepted');
    // The CLI: refused without the certificate, answers with it (FERRY_TEMPORAL_TLS_*).
    const cliEnv = { ...process.env, FERRY_TEMPORAL_ADDRESS: address };
    const plain = spawnSync(process.execPath, [FERRY_BIN, 'status', '--json'], { env: cliEnv, encoding: 'utf8', timeout: 60_000 });
    expect(plain.status, plain.stdout).not.toBe(0);
    const withCert = spawnSync(process.execPath, [FERRY_BIN, 'status', '--json'], { env: { ...cliEnv, ...temporalTlsEnv(tls) }, encoding: 'utf8', timeout: 60_000 });
    expect(withCert.status, withCert.stderr).toBe(0);
    fs.rmSync(other, { recursive: true, force: true });
    console.log(`mutual TLS checks: ${((Date.now() - t0) / 1000).toFixed(1)} s (ferry cluster certs for two agents: ${(certsMs / 1000).toFixed(1)} s)`);
  }, 60_000);

  it('a migration completes and verifies on it', async () => {
    const vm = `vm-cl-${Date.now()}`;
    await createVm(controller!.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'memcached', seed: 11 });
    const handle = await startMigration(controller!.client, { vm, source: hostA, target: hostB, strategy: 'pa-hybrid' });
    expectVerified((await handle.result()) as MigrationReport, vm);
    // Visibility on PostgreSQL answers queries on ferry's search attributes (it is written
    // asynchronously: poll until the closed migration shows).
    const query = `WorkflowId = '${handle.workflowId}' AND Phase = 'completed' AND ExecutionStatus = 'Completed'`;
    let listed: string[] = [];
    for (const deadline = Date.now() + 30_000; listed.length === 0 && Date.now() < deadline; await new Promise((r) => setTimeout(r, 250))) {
      listed = [];
      for await (const wf of controller!.client.workflow.list({ query })) listed.push(wf.workflowId);
    }
    expect(listed).toEqual([handle.workflowId]);
  }, 120_000);

  it('the history service SIGKILLed mid-migration and restarted by `up`: the migration completes', async () => {
    const vm = `vm-cl-kill-${Date.now()}`;
    await createVm(controller!.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'memcached', seed: 12 });
    // 8 MiB/s: the first pre-copy pass of 64 MiB lasts seconds, the kill lands inside pre-copy.
    const handle = await startMigration(controller!.client, { vm, source: hostA, target: hostB, strategy: 'precopy', options: { bandwidthBytesPerSec: 8 * MiB, maxIterations: 4 } });
    await untilProgress(handle, (p) => p.phase === 'precopy' && p.iteration >= 1);
    const history = first.processes.find((p) => p.name === 'history')!;
    process.kill(history.pid!, 'SIGKILL');
    while (processStartTicks(history.pid!) !== null) await new Promise((r) => setTimeout(r, 50));
    const status = await cluster('status', '--dir', dir, '--json');
    expect(status.code).toBe(1);
    expect((JSON.parse(status.stdout) as ClusterStatus).processes.filter((p) => !p.alive).map((p) => p.name)).toEqual(['history']);

    const again = await upJson(dir);
    expect(again.started).toEqual(['history']);
    expect(pidsOf(again)).toEqual({ ...pidsOf(first), history: expect.any(Number) });
    expect(pidsOf(again).history).not.toBe(history.pid);
    first = again;
    expectVerified((await handle.result()) as MigrationReport, vm);
  }, 180_000);

  it('the frontend SIGKILLed mid-migration and restarted by `up`: the controller and the agents reconnect and the migration completes', async () => {
    const vm = `vm-cl-fe-${Date.now()}`;
    await createVm(controller!.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 13 });
    // 8 MiB/s: the first pre-copy pass of 32 MiB lasts about 4 s, the frontend goes down inside pre-copy.
    const handle = await startMigration(controller!.client, { vm, source: hostA, target: hostB, strategy: 'precopy', options: { bandwidthBytesPerSec: 8 * MiB, maxIterations: 4 } });
    await untilProgress(handle, (p) => p.phase === 'precopy' && p.iteration >= 1);
    const frontend = first.processes.find((p) => p.name === 'frontend')!;
    process.kill(frontend.pid!, 'SIGKILL');
    while (processStartTicks(frontend.pid!) !== null) await new Promise((r) => setTimeout(r, 50));
    // The process is a zombie once its main thread is gone; its sockets close when the last thread is.
    const port = Number(first.address.split(':')[1]);
    for (const deadline = Date.now() + 10_000; await portOpen(port); await new Promise((r) => setTimeout(r, 50))) {
      if (Date.now() > deadline) throw new Error(`the frontend port ${port} is still open 10 s after the SIGKILL`);
    }
    const downAt = Date.now();

    const again = await upJson(dir);
    const backAt = Date.now();
    expect(again.started).toEqual(['frontend']);
    expect(again.address).toBe(first.address);
    expect(pidsOf(again)).toEqual({ ...pidsOf(first), frontend: expect.any(Number) });
    expect(pidsOf(again).frontend).not.toBe(frontend.pid);
    first = again;
    console.log(`frontend down for ${((backAt - downAt) / 1000).toFixed(1)} s`);
    expectVerified((await handle.result()) as MigrationReport, vm);
    // Reconnected, not started afresh: the same workers took workflow tasks and activities
    // before the frontend went down and after it came back.
    const w = await workers(handle);
    const before = { wf: new Set(w.workflowTasks.filter((x) => x.ms < downAt).map((x) => x.identity)), act: new Set(w.activities.filter((x) => x.ms < downAt).map((x) => x.identity)) };
    const after = { wf: w.workflowTasks.filter((x) => x.ms > backAt), act: w.activities.filter((x) => x.ms > backAt) };
    expect(after.wf.length).toBeGreaterThan(0);
    expect(after.act.length).toBeGreaterThan(0);
    expect(after.act.some((x) => before.act.has(x.identity)), JSON.stringify({ before: [...before.act], after: after.act })).toBe(true);
    await destroyVm(vm, hostB);
  }, 240_000);

  it('two controllers, the one running a migration SIGKILLed mid-migration: the other carries it on to a verified completion', async () => {
    await Promise.all(controllers.map((c) => c.ready));
    // From here on only the two controller processes poll ferry-control (this test's own
    // in-process worker stops; its client stays).
    controller!.worker.shutdown();
    for (const deadline = Date.now() + 60_000; controller!.worker.getState() !== 'STOPPED'; await new Promise((r) => setTimeout(r, 100))) {
      if (Date.now() > deadline) throw new Error(`the in-process worker did not stop: ${controller!.worker.getState()}`);
    }
    const vm = `vm-cl-ctl-${Date.now()}`;
    await createVm(controller!.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 14 });
    const handle = await startMigration(controller!.client, { vm, source: hostA, target: hostB, strategy: 'precopy', options: { bandwidthBytesPerSec: 8 * MiB, maxIterations: 4 } });
    await untilProgress(handle, (p) => p.phase === 'precopy' && p.iteration >= 1);
    // The controller that completed the latest workflow task holds the migration (sticky).
    const held = (await workers(handle)).workflowTasks.at(-1)!.identity;
    const victim = controllers.find((c) => held === `${c.child.pid}@${os.hostname()}`);
    const survivor = controllers.find((c) => c !== victim)!;
    expect(victim, `workflow task completed by ${held}; controllers ${controllers.map((c) => c.child.pid).join(', ')}`).toBeDefined();
    victim!.kill('SIGKILL');
    await victim!.exited;
    const killedAt = Date.now();

    expectVerified((await handle.result()) as MigrationReport, vm);
    const w = await workers(handle);
    const afterKill = w.workflowTasks.filter((x) => x.ms > killedAt);
    expect(afterKill.length).toBeGreaterThan(0);
    expect(new Set(afterKill.map((x) => x.identity))).toEqual(new Set([`${survivor.child.pid}@${os.hostname()}`]));
    console.log(`controller failover: completed ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the SIGKILL`);
    await destroyVm(vm, hostB);
  }, 300_000);

  it('up again is idempotent: it reports the running cluster and starts nothing', async () => {
    const r = await cluster('up', '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(first.address);
    expect(r.stderr).toContain('already running');
    const j = await upJson(dir);
    expect(j.alreadyRunning).toBe(true);
    expect(j.started).toEqual([]);
    const s = await cluster('status', '--dir', dir, '--json');
    expect(s.code).toBe(0);
    expect(pidsOf(JSON.parse(s.stdout) as ClusterStatus)).toEqual(pidsOf(first));
    console.log(`ferry cluster up (warm): ${(r.ms / 1000).toFixed(1)} s`);
  });

  it('down stops every process it started and closes the frontend port; status then reports them dead', async () => {
    // The clients go first, as an operator would stop them.
    await Promise.all([...agents, ...controllers].map((a) => a.stop()));
    agents.length = 0;
    controllers.length = 0;
    await controller?.stop();
    controller = undefined;
    const r = await cluster('down', '--dir', dir, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { stopped: string[] }).stopped.sort()).toEqual(['frontend', 'history', 'matching', 'postgresql', 'worker']);
    for (const p of first.processes) expect(processStartTicks(p.pid!), p.name).toBeNull();
    expect(await portOpen(Number(first.address.split(':')[1]))).toBe(false);
    const s = await cluster('status', '--dir', dir, '--json');
    expect(s.code).toBe(1);
    expect((JSON.parse(s.stdout) as ClusterStatus).processes.every((p) => !p.alive)).toBe(true);
    // A client gets a clear refusal, not a hang.
    await expect(Connection.connect({ address: first.address, connectTimeout: 2000, ...temporalTlsOption(tls) })).rejects.toThrow();
  }, 120_000);
});
