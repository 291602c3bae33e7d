/**
 * Synchronous system commands for the fixtures (ip, tc, mount) and a pid liveness check
 * used to recognise the leftovers of crashed runs.
 */
import { spawnSync } from 'node:child_process';

export interface RunResult {
  ok: boolean;
  out: string;
  err: string;
}

/** Run a command to completion; throws with its stderr unless `check: false`. */
export function run(cmd: string, args: string[], opts: { check?: boolean } = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const res = { ok: r.status === 0, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? String(r.error.message) : '') };
  if (!res.ok && opts.check !== false) throw new Error(`${cmd} ${args.join(' ')} failed: ${res.err.trim() || `exit ${r.status ?? r.signal}`}`);
  return res;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
