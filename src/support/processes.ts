/**
 * Running ferry's own processes (agents, controller) as real OS processes, the way the
 * demo, the benches and the tests do: each one logs a ready line on start; optionally inside
 * a network namespace.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from '../common/paths';

export const FERRY_BIN = path.join(REPO_ROOT, 'bin', 'ferry.mjs');

/**
 * How long a process may take to log its ready line. A controller bundles its workflow code
 * and an agent creates its worker as they start: tens of seconds on a busy 2-core machine
 * (seen: over 60 s beside a CPU hog and other suites). The bound only catches a hang.
 */
const DEFAULT_READY_MS = 180_000;

export interface FerryProcess {
  name: string;
  child: ChildProcess;
  /** The ready line ("… polling ferry-… on …"). */
  ready: Promise<string>;
  /** Everything the process wrote to stderr so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after graceMs. Resolves on exit. */
  stop(graceMs?: number): Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
  exited: Promise<number | null>;
}

export function spawnFerry(
  name: string,
  args: string[],
  opts: {
    env?: NodeJS.ProcessEnv;
    echo?: (line: string) => void;
    readyTimeoutMs?: number;
    cwd?: string;
    /** A command that execs node in its place, e.g. ['ip', 'netns', 'exec', 'ns1']. */
    wrap?: string[];
  } = {},
): FerryProcess {
  const [cmd, ...pre] = opts.wrap?.length ? [...opts.wrap, process.execPath] : [process.execPath];
  const child = spawn(cmd!, [...pre, FERRY_BIN, ...args], {
    env: { ...process.env, ...opts.env },
    cwd: opts.cwd ?? process.cwd(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let resolveReady!: (line: string) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<string>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  ready.catch(() => undefined);
  let buf = '';
  const onData = (d: Buffer): void => {
    const text = d.toString();
    out += text;
    if (out.length > 200_000) out = out.slice(-100_000);
    buf += text;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      opts.echo?.(line);
      if (/\bpolling ferry-/.test(line)) resolveReady(line);
    }
  };
  child.stderr!.on('data', onData);
  child.stdout!.on('data', onData);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code, signal) => {
      rejectReady(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${out.slice(-4000)}`));
      resolve(code);
    });
  });
  const t = setTimeout(() => rejectReady(new Error(`${name} was not ready within ${opts.readyTimeoutMs ?? DEFAULT_READY_MS} ms:\n${out.slice(-4000)}`)), opts.readyTimeoutMs ?? DEFAULT_READY_MS);
  void ready.finally(() => clearTimeout(t)).catch(() => undefined);
  return {
    name,
    child,
    ready,
    output: () => out,
    exited,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    stop: async (graceMs = 10_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const t2 = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(t2);
      return code;
    },
  };
}

/** Like spawnFerry, optionally inside a network namespace (`ip netns exec` execs node itself). */
export function spawnFerryIn(netns: string | null, name: string, args: string[], env: NodeJS.ProcessEnv): FerryProcess {
  return spawnFerry(name, args, { env, wrap: netns ? ['ip', 'netns', 'exec', netns] : undefined });
}

/** Still running (neither exited nor killed by a signal). */
export function isAlive(p: FerryProcess | null | undefined): boolean {
  return !!p && p.child.exitCode === null && p.child.signalCode === null;
}

/** "… data 127.0.0.1:40123 …" from an agent's ready line. */
export function dataAddressFromReadyLine(line: string): string | null {
  return /\bdata (\S+?)[,)]/.exec(line)?.[1] ?? null;
}
