/**
 * The Temporal server's four services as separate OS processes, all from ferry's one config
 * (deploy/temporal/config/ferry.yaml), each told its ports through the environment the
 * config reads. They are detached: they outlive the `ferry cluster up` that started them.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { REPO_ROOT } from '../common/paths';
import { refOf, type ClusterPorts, type ProcessRef, type ServiceName } from './state';

/** Everything both topologies share: the config dir, the dynamic config, the setup scripts. */
export const DEPLOY_DIR = path.join(REPO_ROOT, 'deploy', 'temporal');
export const CONFIG_ENV = 'ferry';

export interface ServerEnv {
  ports: ClusterPorts;
  pgUser: string;
  pgPassword: string;
  /** The directory of ca.crt, frontend.crt and frontend.key: the frontend requires client certificates. */
  tlsDir?: string | null;
}

/** The environment ferry.yaml reads, for one service's process. */
export function serviceEnv(name: ServiceName, env: ServerEnv): Record<string, string> {
  const s = env.ports.services;
  const frontendAddress = `127.0.0.1:${s.frontend.grpc}`;
  return {
    FERRY_PG_HOST: '127.0.0.1',
    FERRY_PG_PORT: String(env.ports.postgres),
    FERRY_PG_USER: env.pgUser,
    FERRY_PG_PASSWORD: env.pgPassword,
    FERRY_TEMPORAL_BIND_IP: '127.0.0.1',
    FERRY_TEMPORAL_BROADCAST_ADDRESS: '127.0.0.1',
    FERRY_TEMPORAL_FRONTEND_ADDRESS: frontendAddress,
    FERRY_TEMPORAL_DYNAMIC_CONFIG: path.join(DEPLOY_DIR, 'dynamicconfig.yaml'),
    FERRY_TEMPORAL_FRONTEND_PORT: String(s.frontend.grpc),
    FERRY_TEMPORAL_FRONTEND_MEMBERSHIP_PORT: String(s.frontend.membership),
    FERRY_TEMPORAL_FRONTEND_HTTP_PORT: String(s.frontend.http ?? 0),
    FERRY_TEMPORAL_HISTORY_PORT: String(s.history.grpc),
    FERRY_TEMPORAL_HISTORY_MEMBERSHIP_PORT: String(s.history.membership),
    FERRY_TEMPORAL_MATCHING_PORT: String(s.matching.grpc),
    FERRY_TEMPORAL_MATCHING_MEMBERSHIP_PORT: String(s.matching.membership),
    FERRY_TEMPORAL_WORKER_PORT: String(s.worker.grpc),
    FERRY_TEMPORAL_WORKER_MEMBERSHIP_PORT: String(s.worker.membership),
    FERRY_TEMPORAL_METRICS_PORT: String(s[name].metrics),
    ...(env.tlsDir ? { FERRY_TEMPORAL_TLS_DIR: env.tlsDir } : {}),
  };
}

export function serviceArgs(name: ServiceName): string[] {
  return ['--root', DEPLOY_DIR, '--config', 'config', '--env', CONFIG_ENV, '--allow-no-auth', 'start', '--service', name];
}

export function logFileOf(dir: string, name: string): string {
  return path.join(dir, 'logs', `${name}.log`);
}

/** Start one service, detached, its output appended to `<dir>/logs/<name>.log`. */
export function startService(serverBin: string, dir: string, name: ServiceName, env: ServerEnv): ProcessRef {
  const log = logFileOf(dir, name);
  fs.mkdirSync(path.dirname(log), { recursive: true });
  const fd = fs.openSync(log, 'a');
  try {
    const child = spawn(serverBin, serviceArgs(name), {
      cwd: dir,
      env: { ...process.env, ...serviceEnv(name, env) },
      stdio: ['ignore', fd, fd],
      detached: true,
    });
    child.unref();
    const ref = child.pid === undefined ? null : refOf(child.pid);
    if (!ref) throw new Error(`the Temporal ${name} service (${serverBin}) exited at once; see ${log}`);
    return ref;
  } finally {
    fs.closeSync(fd);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopProcess(ref: ProcessRef, isAlive: (r: ProcessRef) => boolean, graceMs = 15_000): Promise<void> {
  if (!isAlive(ref)) return;
  signal(ref.pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(ref)) {
    if (Date.now() > deadline) {
      signal(ref.pid, 'SIGKILL');
      await waitGone(ref, isAlive, 5_000);
      return;
    }
    await sleep(100);
  }
}

/** A process that exits between the check and the signal is not an error. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

async function waitGone(ref: ProcessRef, isAlive: (r: ProcessRef) => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (isAlive(ref) && Date.now() < deadline) await sleep(50);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Something accepts TCP connections on 127.0.0.1:port. */
export function portOpen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** The last lines of a log, for an error message. */
export function logTail(file: string, lines = 6): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text
      .trimEnd()
      .split('\n')
      .slice(-lines)
      .map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l))
      .join('\n');
  } catch {
    return '(no log)';
  }
}
