/**
 * What `ferry cluster up` started, in `<dir>/cluster.json`: the ports it chose (kept across
 * down/up so the frontend address stays the same) and each process as pid + start time, so a
 * pid the kernel has since given to another process is never taken for ours.
 */
import fs from 'node:fs';
import path from 'node:path';

export const SERVICES = ['frontend', 'history', 'matching', 'worker'] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface ServicePorts {
  grpc: number;
  membership: number;
  metrics: number;
  /** frontend only: Temporal's HTTP API. */
  http?: number;
}

export interface ClusterPorts {
  postgres: number;
  services: Record<ServiceName, ServicePorts>;
}

/** A process ferry started: its pid and its start time in clock ticks since boot (/proc/<pid>/stat). */
export interface ProcessRef {
  pid: number;
  startTicks: number;
}

export interface ClusterState {
  version: 1;
  dir: string;
  namespace: string;
  ports: ClusterPorts;
  postgres: ProcessRef | null;
  services: Partial<Record<ServiceName, ProcessRef>>;
  /** Set once the namespace and search attributes are registered and a workflow could start. */
  serving: boolean;
}

export const STATE_FILE = 'cluster.json';

export function readState(dir: string): ClusterState | null {
  const file = path.join(dir, STATE_FILE);
  if (!fs.existsSync(file)) return null;
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as ClusterState;
    if (s.version !== 1 || !s.ports?.services) throw new Error('unknown layout');
    return s;
  } catch (e) {
    throw new Error(`${file} is not a ferry cluster state file (${(e as Error).message}): move it away, or choose another --dir`);
  }
}

export function writeState(state: ClusterState): void {
  const file = path.join(state.dir, STATE_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
  fs.renameSync(tmp, file);
}

/** The start time of a live (not zombie) process, or null when there is none. */
export function processStartTicks(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return null;
    return Number(fields[19]);
  } catch {
    return null;
  }
}

export function refOf(pid: number): ProcessRef | null {
  const startTicks = processStartTicks(pid);
  return startTicks === null ? null : { pid, startTicks };
}

/** Still the process ferry started (same pid, same start time, not a zombie). */
export function isAlive(ref: ProcessRef | null | undefined): ref is ProcessRef {
  return !!ref && processStartTicks(ref.pid) === ref.startTicks;
}
