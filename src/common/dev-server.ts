/**
 * The embedded Temporal dev server (`temporal server start-dev`), as `ferry server` and
 * `ferry demo` run it. Production points FERRY_TEMPORAL_ADDRESS at a real cluster instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { searchAttributeFlags } from './search-attributes';
import { dynamicConfigFlags } from './server-tuning';

export interface DevServerOptions {
  bin: string;
  ip?: string;
  /** 0 = a free port. */
  port?: number;
  uiPort?: number;
  headless?: boolean;
  /** SQLite file; null = in memory. */
  dbFile?: string | null;
  namespace?: string;
  /** Where the server's own log goes (default: ignored). */
  logFile?: string;
  /** How a port is chosen when none is given (default: freePort). */
  pickPort?: (ip: string) => Promise<number>;
  /** Leave the server's stock dynamic config (for side-by-side measurements). */
  stock?: boolean;
}

export interface DevServer {
  /** The gRPC port it listens on (what a restart must reuse). */
  port: number;
  address: string;
  uiUrl: string | null;
  process: ChildProcess;
  stop(): Promise<void>;
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Start the dev server. With no port given, ferry picks a free one; another process (the dev
 * server's own internal services among them) can take it before the server binds it, so a
 * start-up that fails on a port in use is tried again on fresh ports, up to three times.
 */
export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDevServerOnce(opts);
    } catch (e) {
      const portClash = e instanceof DevServerStartError && e.portInUse;
      if (!portClash || opts.port || attempt >= 3) throw e;
    }
  }
}

class DevServerStartError extends Error {
  constructor(
    message: string,
    readonly portInUse: boolean,
  ) {
    super(message);
  }
}

async function startDevServerOnce(opts: DevServerOptions): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port || (await (opts.pickPort ?? freePort)(ip));
  const args = ['server', 'start-dev', '--ip', ip, '--port', String(port), ...searchAttributeFlags(), ...(opts.stock ? [] : dynamicConfigFlags()), '--log-level', 'warn'];
  let uiUrl: string | null = null;
  if (opts.headless) args.push('--headless');
  else {
    const uiPort = opts.uiPort || port + 1000;
    args.push('--ui-port', String(uiPort));
    uiUrl = `http://${ip}:${uiPort}`;
  }
  if (opts.dbFile) {
    fs.mkdirSync(path.dirname(opts.dbFile), { recursive: true });
    args.push('--db-filename', opts.dbFile);
  }
  if (opts.namespace && opts.namespace !== 'default') args.push('--namespace', opts.namespace);
  if (opts.logFile) fs.mkdirSync(path.dirname(opts.logFile), { recursive: true });
  const out = opts.logFile ? fs.openSync(opts.logFile, 'a') : 'pipe';
  const child = spawn(opts.bin, args, { stdio: ['ignore', out, out] });
  if (typeof out === 'number') fs.closeSync(out);
  // Without a log file, keep the start-up output (bounded) to tell a port clash from the rest.
  let startupOutput = '';
  const keep = (d: Buffer) => {
    if (startupOutput.length < 64 * 1024) startupOutput += d.toString('utf8');
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const logStart = opts.logFile ? fileSize(opts.logFile) : 0;
  const address = `${ip}:${port}`;
  let exited: string | null = null;
  child.on('exit', (code, signal) => {
    exited = `exit ${code ?? signal}`;
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) {
      const output = opts.logFile ? readFrom(opts.logFile, logStart) : startupOutput;
      throw new DevServerStartError(`temporal server start-dev exited during start-up (${exited}); see ${opts.logFile ?? 'its output'}`, /address already in use/.test(output));
    }
    try {
      const conn = await Connection.connect({ address, connectTimeout: 1000 });
      await conn.workflowService.getSystemInfo({});
      await conn.close();
      break;
    } catch (e) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`temporal dev server at ${address} did not answer within 60 s: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  // Started: stop collecting (a piped server that nobody reads must not block on a full pipe).
  child.stdout?.off('data', keep).resume();
  child.stderr?.off('data', keep).resume();
  return {
    address,
    port,
    uiUrl,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/** The part of a log file written since `offset` (what this start-up wrote). */
function readFrom(file: string, offset: number): string {
  try {
    return fs.readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}
