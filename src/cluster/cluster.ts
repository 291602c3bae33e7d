/**
 * `ferry cluster up|down|status`: a production-like Temporal cluster on one machine without
 * containers — PostgreSQL of its own, the schema set up by Temporal's tool, the frontend,
 * history, matching and worker services as four processes from ferry's one config, the
 * namespace registered with ferry's search attributes. Everything lives in one directory:
 * the state file (cluster.json), PostgreSQL's data, the logs.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { FERRY_SEARCH_ATTRIBUTES, VmId } from '../common/search-attributes';
import { ensureGoTool, ensureTemporalBinary, TEMPORAL_SERVER, TEMPORAL_SQL_TOOL } from '../common/temporal-bin';
import { temporalTlsEnv, temporalTlsOption, type TemporalTlsFiles } from '../common/temporal-tls';
import { ensureClusterCerts, FRONTEND_SERVER_NAME } from './certs';
import * as pg from './postgres';
import { DEPLOY_DIR, logFileOf, logTail, portOpen, sleep, startService, stopProcess, type ServerEnv } from './services';
import { isAlive, readState, refOf, writeState, SERVICES, type ClusterPorts, type ClusterState, type ProcessRef, type ServiceName } from './state';

export const DEFAULT_CLUSTER_DIR = path.join('.ferry', 'cluster');
/** The cluster's CA and certificates, under its directory (`ferry cluster certs` adds clients). */
export const TLS_SUBDIR = 'tls';
export const NAMESPACE = 'default';
export const RETENTION = '72h';
const PG_USER = 'temporal';

export class ClusterError extends Error {
  override readonly name = 'ClusterError';
}

export interface ProcessStatus {
  name: 'postgresql' | ServiceName;
  pid: number | null;
  alive: boolean;
  address: string;
  log: string;
}

export interface ClusterStatus {
  dir: string;
  /** The frontend: what FERRY_TEMPORAL_ADDRESS points at. */
  address: string;
  /** Mutual TLS on the frontend: the CA and the operator's client certificate (FERRY_TEMPORAL_TLS_*). */
  tls: { dir: string; ca: string; cert: string; key: string; serverName: string } | null;
  namespace: string;
  /** Every process alive. */
  running: boolean;
  processes: ProcessStatus[];
}

export interface UpResult {
  status: ClusterStatus;
  /** What this `up` started. */
  started: string[];
  /** Everything was running and set up: this `up` did nothing. */
  alreadyRunning: boolean;
  elapsedMs: number;
}

type Log = (line: string) => void;

// ---------------------------------------------------------------------------------------
// status

export function clusterStatus(state: ClusterState): ClusterStatus {
  const processes: ProcessStatus[] = [
    { name: 'postgresql' as const, ref: state.postgres, port: state.ports.postgres, log: path.join(state.dir, 'logs', 'postgresql.log') },
    ...SERVICES.map((s) => ({ name: s, ref: state.services[s] ?? null, port: readyPort(state, s), log: logFileOf(state.dir, s) })),
  ].map(({ name, ref, port, log }) => ({ name, pid: ref?.pid ?? null, alive: isAlive(ref), address: `127.0.0.1:${port}`, log }));
  return {
    dir: state.dir,
    address: `127.0.0.1:${state.ports.services.frontend.grpc}`,
    tls: clusterTls(state.dir),
    namespace: state.namespace,
    running: processes.every((p) => p.alive),
    processes,
  };
}

/** The cluster's certificates (`<dir>/tls`, made by `up`): the CA and the operator's client pair. */
export function clusterTls(dir: string): ClusterStatus['tls'] {
  const tlsDir = path.join(dir, TLS_SUBDIR);
  const t = { dir: tlsDir, ca: path.join(tlsDir, 'ca.crt'), cert: path.join(tlsDir, 'operator.crt'), key: path.join(tlsDir, 'operator.key'), serverName: FRONTEND_SERVER_NAME };
  return fs.existsSync(t.ca) && fs.existsSync(t.cert) ? t : null;
}

/** What a ferry process needs to reach this cluster's frontend. */
export function clusterTlsFiles(dir: string): TemporalTlsFiles | null {
  const t = clusterTls(dir);
  return t && { ca: t.ca, cert: t.cert, key: t.key, serverName: t.serverName };
}

/** The cluster's status, or null when `dir` holds none. */
export function status(dir: string): ClusterStatus | null {
  const state = readState(path.resolve(dir));
  return state && clusterStatus(state);
}

// ---------------------------------------------------------------------------------------
// up

/** Start whatever of the cluster is not running (all of it the first time); idempotent. */
export async function up(dirArg: string, log: Log): Promise<UpResult> {
  const t0 = Date.now();
  const dir = path.resolve(dirArg);
  fs.mkdirSync(path.join(dir, 'logs'), { recursive: true });
  return withLock(dir, async () => {
    const state = readState(dir) ?? (await newState(dir));
    if (clusterStatus(state).running && state.serving) return { status: clusterStatus(state), started: [], alreadyRunning: true, elapsedMs: Date.now() - t0 };
    const started: string[] = [];
    // Builds are CPU-heavy: one after the other.
    const cli = await ensureTemporalBinary(null, log);
    const server = await ensureGoTool(TEMPORAL_SERVER, null, log);
    const sqlTool = await ensureGoTool(TEMPORAL_SQL_TOOL, null, log);
    if (await ensurePostgres(state, log)) started.push('postgresql');
    writeState(state);
    // The frontend requires client certificates signed by the cluster's CA (made once).
    const certs = ensureClusterCerts(path.join(dir, TLS_SUBDIR));
    if (certs.created.length) log(`ferry cluster: certificates in ${certs.dir} (${certs.created.filter((f) => f.endsWith('.crt')).join(', ')})`);
    const env: ServerEnv = { ports: state.ports, pgUser: PG_USER, pgPassword: pgPassword(dir), tlsDir: certs.dir };
    runSchemaSetup(sqlTool, state, env, log);
    for (const name of SERVICES) {
      if (isAlive(state.services[name])) continue;
      await freeServicePorts(state, name, log);
      state.services[name] = startService(server, dir, name, env);
      started.push(name);
      writeState(state);
      // On a new database every service would write the cluster's metadata record at once
      // (all but one then exit on a duplicate key): the first one started goes alone.
      if (started.filter((s) => s !== 'postgresql').length === 1) await waitForServices(state, [name]);
    }
    await waitForServices(state, SERVICES);
    const address = `127.0.0.1:${state.ports.services.frontend.grpc}`;
    const tls = clusterTlsFiles(dir);
    runNamespaceSetup(cli, address, state, log, tls);
    await waitUntilServing(address, state.namespace, state, tls);
    state.serving = true;
    writeState(state);
    log(`ferry cluster: up in ${((Date.now() - t0) / 1000).toFixed(1)} s${started.length ? ` (started ${started.join(', ')})` : ''}; frontend ${address}`);
    return { status: clusterStatus(state), started, alreadyRunning: false, elapsedMs: Date.now() - t0 };
  });
}

/** One `up` or `down` at a time per directory. */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lock = path.join(dir, 'cluster.lock');
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx' });
      break;
    } catch {
      const holder = Number(fs.readFileSync(lock, 'utf8'));
      let holderAlive = false;
      try {
        process.kill(holder, 0);
        holderAlive = holder > 0;
      } catch {
        // gone: a stale lock
      }
      if (!holderAlive) fs.rmSync(lock, { force: true });
      else if (attempt > 0) throw new ClusterError(`another \`ferry cluster\` (pid ${holder}) is working on ${dir}; wait for it, or stop it`);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { force: true });
  }
}

async function newState(dir: string): Promise<ClusterState> {
  const ports = await pickPorts(dir);
  return { version: 1, dir, namespace: NAMESPACE, ports, postgres: null, services: {}, serving: false };
}

/**
 * Ports come in a block of 14 below the kernel's ephemeral range (32768 up), for two reasons:
 * Temporal stores each service's membership port in a PostgreSQL smallint (≤ 32767), and a
 * port outside the ephemeral range is not taken by some outgoing connection while the cluster
 * is down. The first block tried depends on the directory, so two clusters rarely probe the same.
 */
export const PORT_RANGE = { from: 21000, to: 32000 } as const;
const BLOCK = 14;

function portBlock(base: number): ClusterPorts {
  const svc = (at: number, http: boolean) => ({ grpc: base + at, membership: base + at + 1, metrics: base + at + 2, ...(http ? { http: base + at + 3 } : {}) });
  return { services: { frontend: svc(0, true), history: svc(4, false), matching: svc(7, false), worker: svc(10, false) }, postgres: base + 13 };
}

function allPorts(p: ClusterPorts): number[] {
  return [p.postgres, ...SERVICES.flatMap((s) => Object.values(p.services[s]) as number[])];
}

async function pickPorts(dir: string): Promise<ClusterPorts> {
  const blocks = Math.floor((PORT_RANGE.to - PORT_RANGE.from) / BLOCK);
  const first = [...dir].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % blocks, 7);
  for (let i = 0; i < blocks; i++) {
    const ports = portBlock(PORT_RANGE.from + ((first + i) % blocks) * BLOCK);
    if (await allBindable(allPorts(ports))) return ports;
  }
  throw new ClusterError(`no ${BLOCK} free ports in a row between ${PORT_RANGE.from} and ${PORT_RANGE.to} on 127.0.0.1`);
}

async function allBindable(ports: number[]): Promise<boolean> {
  for (const p of ports) if ((await bindablePort(p)) === null) return false;
  return true;
}

/** Listen on 127.0.0.1:port and close: the port, or null when it cannot be bound. */
function bindablePort(port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(null));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(port)));
  });
}

/** A port recorded for a stopped process that another process has taken since is replaced (in PORT_RANGE). */
async function freePort(current: number, what: string, log: Log, state: ClusterState): Promise<number> {
  if ((await bindablePort(current)) !== null) return current;
  const ours = new Set(allPorts(state.ports));
  for (let p = PORT_RANGE.from; p < PORT_RANGE.to; p++) {
    if (ours.has(p) || (await bindablePort(p)) === null) continue;
    log(`ferry cluster: port ${current} (${what}) is taken by another process; using ${p}`);
    return p;
  }
  throw new ClusterError(`port ${current} (${what}) is taken by another process and no port between ${PORT_RANGE.from} and ${PORT_RANGE.to} is free`);
}

async function freeServicePorts(state: ClusterState, name: ServiceName, log: Log): Promise<void> {
  const ports = state.ports.services[name];
  ports.grpc = await freePort(ports.grpc, `${name} gRPC`, log, state);
  ports.membership = await freePort(ports.membership, `${name} membership`, log, state);
  ports.metrics = await freePort(ports.metrics, `${name} metrics`, log, state);
  if (ports.http !== undefined) ports.http = await freePort(ports.http, `${name} HTTP`, log, state);
}

function pgDataDir(dir: string): string {
  return path.join(dir, 'postgresql');
}

/** The password of the cluster's PostgreSQL role, made at first start (mode 0600 in the dir). */
function pgPassword(dir: string): string {
  const file = path.join(dir, 'postgresql.password');
  if (!fs.existsSync(file)) fs.writeFileSync(file, `${randomBytes(18).toString('base64url')}\n`, { mode: 0o600 });
  return fs.readFileSync(file, 'utf8').trim();
}

/** initdb once, then start PostgreSQL unless it runs; true when this call started it. */
async function ensurePostgres(state: ClusterState, log: Log): Promise<boolean> {
  if (isAlive(state.postgres)) return false;
  const dataDir = pgDataDir(state.dir);
  pg.checkReachable(dataDir);
  if (!pg.isInitialized(dataDir)) {
    log(`ferry cluster: initdb ${dataDir}`);
    pg.initDataDir({ dataDir, user: PG_USER, password: pgPassword(state.dir) });
  }
  const running = pg.runningPid(dataDir);
  if (running !== null) {
    // Started by an earlier `up` whose record was lost: keep it (its port is in postmaster.pid).
    state.ports.postgres = postmasterPort(dataDir) ?? state.ports.postgres;
    state.postgres = refOf(running);
    return false;
  }
  const port = await freePort(state.ports.postgres, 'PostgreSQL', log, state);
  if (port !== state.ports.postgres) await stopAllServices(state); // they point at the old port
  state.ports.postgres = port;
  log(`ferry cluster: starting PostgreSQL on 127.0.0.1:${port}`);
  const pid = pg.start(dataDir, port, path.join(state.dir, 'logs', 'postgresql.log'));
  state.postgres = refOf(pid);
  return true;
}

/** The port line (4th) of postmaster.pid. */
function postmasterPort(dataDir: string): number | null {
  try {
    const port = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[3]);
    return Number.isInteger(port) && port > 0 ? port : null;
  } catch {
    return null;
  }
}

/** deploy/temporal/setup-schema.sh with the cluster's tool and database (idempotent). */
function runSchemaSetup(sqlTool: string, state: ClusterState, env: ServerEnv, log: Log): void {
  log('ferry cluster: schema (deploy/temporal/setup-schema.sh)');
  runScript('setup-schema.sh', {
    TEMPORAL_SQL_TOOL: sqlTool,
    SQL_HOST: '127.0.0.1',
    SQL_PORT: String(state.ports.postgres),
    SQL_USER: env.pgUser,
    SQL_PASSWORD: env.pgPassword,
  }, path.join(state.dir, 'logs', 'setup-schema.log'));
}

/** deploy/temporal/setup-namespace.sh with the dev-server CLI (idempotent). */
function runNamespaceSetup(cli: string, address: string, state: ClusterState, log: Log, tls: TemporalTlsFiles | null): void {
  log(`ferry cluster: namespace ${state.namespace} and search attributes (deploy/temporal/setup-namespace.sh)`);
  runScript('setup-namespace.sh', {
    TEMPORAL_CLI: cli,
    TEMPORAL_ADDRESS: address,
    FERRY_NAMESPACE: state.namespace,
    FERRY_NAMESPACE_RETENTION: RETENTION,
    FERRY_SEARCH_ATTRIBUTES: FERRY_SEARCH_ATTRIBUTES.map((k) => k.name).join(' '),
    ...temporalTlsEnv(tls),
  }, path.join(state.dir, 'logs', 'setup-namespace.log'));
}

function runScript(script: string, env: Record<string, string>, logFile: string): void {
  const r = spawnSync('sh', [path.join(DEPLOY_DIR, script)], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 300_000 });
  fs.appendFileSync(logFile, `${new Date().toISOString()} ${script}\n${r.stdout ?? ''}${r.stderr ?? ''}`);
  if (r.status !== 0) {
    throw new ClusterError(`${script} failed (exit ${r.status ?? r.signal}); log ${logFile}:\n${`${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n')}`);
  }
}

/** The port a service listens on once started: gRPC, but membership for the worker (it serves no gRPC). */
export function readyPort(state: ClusterState, name: ServiceName): number {
  const p = state.ports.services[name];
  return name === 'worker' ? p.membership : p.grpc;
}

/** Each service listens on its port; one that exits is reported with its log. */
async function waitForServices(state: ClusterState, names: readonly ServiceName[], timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const name of names) {
    const port = readyPort(state, name);
    while (!(await portOpen(port))) {
      if (!isAlive(state.services[name])) {
        throw new ClusterError(`the Temporal ${name} service exited during start-up; log ${logFileOf(state.dir, name)}:\n${logTail(logFileOf(state.dir, name))}`);
      }
      if (Date.now() > deadline) throw new ClusterError(`the Temporal ${name} service is not listening on 127.0.0.1:${port} (${name === 'worker' ? 'membership' : 'gRPC'}) after ${timeoutMs / 1000} s; log ${logFileOf(state.dir, name)}`);
      await sleep(250);
    }
  }
}

/**
 * Ready = a workflow can start in the namespace (history and persistence answer) and a
 * visibility query on ferry's search attributes is accepted (the frontend's namespace cache
 * has the attributes). A check workflow is started and terminated at once.
 */
async function waitUntilServing(address: string, namespace: string, state: ClusterState, tls: TemporalTlsFiles | null, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  const connection = await Connection.connect({ address, connectTimeout: 5000, ...temporalTlsOption(tls) });
  try {
    const client = new Client({ connection, namespace });
    for (;;) {
      try {
        await client.workflowService.countWorkflowExecutions({ namespace, query: `${VmId.name} = 'ferry-cluster-check'` });
        const handle = await client.workflow.start('ferryClusterCheck', { taskQueue: 'ferry-cluster-check', workflowId: 'ferry-cluster-check', workflowExecutionTimeout: '1 minute' });
        await handle.terminate('ferry cluster up: readiness check');
        return;
      } catch (e) {
        lastError = (e as Error).message.split('\n')[0] ?? String(e);
      }
      const dead = SERVICES.filter((s) => !isAlive(state.services[s]));
      if (dead.length) throw new ClusterError(`the Temporal ${dead.join(', ')} service(s) exited; logs in ${path.join(state.dir, 'logs')}`);
      if (Date.now() > deadline) throw new ClusterError(`the cluster at ${address} does not serve namespace ${namespace} after ${timeoutMs / 1000} s: ${lastError}`);
      await sleep(500);
    }
  } finally {
    await connection.close();
  }
}

// ---------------------------------------------------------------------------------------
// down

async function stopAllServices(state: ClusterState): Promise<string[]> {
  const stopped: string[] = [];
  // The frontend first (clients stop getting answers), history last (it hands shards back).
  for (const name of ['frontend', 'worker', 'matching', 'history'] as const) {
    const ref: ProcessRef | undefined = state.services[name];
    if (isAlive(ref)) {
      await stopProcess(ref, isAlive);
      stopped.push(name);
    }
    delete state.services[name];
  }
  return stopped;
}

/** Stop what `up` started — the four services, then PostgreSQL — and nothing else. The data stays. */
export async function down(dirArg: string, log: Log): Promise<{ stopped: string[] } | null> {
  const dir = path.resolve(dirArg);
  const state = readState(dir);
  if (!state) return null;
  return withLock(dir, async () => {
    const stopped = await stopAllServices(state);
    writeState(state);
    if (isAlive(state.postgres)) {
      log('ferry cluster: stopping PostgreSQL');
      pg.stop(pgDataDir(dir));
      stopped.push('postgresql');
    }
    state.postgres = null;
    writeState(state);
    return { stopped };
  });
}
