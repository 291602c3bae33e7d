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
}

export interface DevServer {
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

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port || (await freePort(ip));
  const args = ['server', 'start-dev', '--ip', ip, '--port', String(port), ...searchAttributeFlags(), '--log-level', 'warn'];
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
  const out = opts.logFile ? fs.openSync(opts.logFile, 'a') : 'ignore';
  const child = spawn(opts.bin, args, { stdio: ['ignore', out, out] });
  if (typeof out === 'number') fs.closeSync(out);
  const address = `${ip}:${port}`;
  let exited: string | null = null;
  child.on('exit', (code, signal) => {
    exited = `exit ${code ?? signal}`;
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) {
      throw new Error(`temporal server start-dev exited during start-up (${exited}); see ${opts.logFile ?? 'its output'}`);
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
  return {
    address,
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
