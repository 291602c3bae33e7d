/**
 * A fault cluster: its own Temporal dev server, controller process and two host-agent
 * processes (nothing shared with other tests or benches), in one of two kinds:
 *
 * - `local`: everything on loopback, the dev server on a SQLite file (it can be killed and
 *   restarted).
 * - `net`: the two agents in network namespaces of their own ("two hosts", netns.ts), joined
 *   by a shaped migration link and storage link; the dev server listens on loopback in the
 *   root namespace and the agents reach it through a relay (relay.ts) on the root side of
 *   their control links; the controller runs in the root namespace. Shared storage is one
 *   directory both agents see, a tmpfs mounted here (test-storage.ts: a scenario can fill it
 *   or make it vanish). The storage veth is there and shaped, but channel-1 is a directory,
 *   so ferry's storage bytes do not cross it (an NFS server in a namespace would make them;
 *   not built).
 *
 * Used by the fault bench (src/bench/faults.ts) and the fault tests (test/faults).
 * Processes of a cluster that live in the root namespace are listed in `<dir>/pids.json`;
 * a new cluster first removes what clusters of dead processes left.
 */
import { runClusterKeyEnv } from '../common/cluster-key';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { startDevServer, type DevServer } from '../common/dev-server';
import { ensureTemporalBinary } from '../common/temporal-bin';
import { createTwoHostNet, type End, type TwoHostNet } from './netns';
import { isAlive, spawnFerry, spawnFerryIn, type FerryProcess } from './processes';
import { startRelay, type Relay } from './relay';
import { pidAlive } from './shell';
import { createTestStorage, type TestStorage } from './test-storage';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
type Log = (line: string) => void;

/**
 * Processes of a cluster that live in the root namespace (dev server, controller, local
 * agents) are listed in `<dir>/pids.json`; a run that dies leaves them orphaned, and the next
 * fixture kills them (only if the pid still runs the command recorded) and removes the dir.
 */
const CLUSTER_DIR_RE = /^ferry-faults-(?:local|net)-(\d+)-/;

function recordPid(dir: string, pid: number | undefined, marker: string): void {
  if (!pid) return;
  const file = path.join(dir, 'pids.json');
  let list: { pid: number; marker: string }[] = [];
  try {
    list = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof list;
  } catch {
    // first one
  }
  list.push({ pid, marker });
  fs.writeFileSync(file, JSON.stringify(list));
}

export function cleanupStaleClusters(log: Log = () => undefined): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync(os.tmpdir())) {
    const m = CLUSTER_DIR_RE.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    const dir = path.join(os.tmpdir(), name);
    try {
      const list = JSON.parse(fs.readFileSync(path.join(dir, 'pids.json'), 'utf8')) as { pid: number; marker: string }[];
      for (const { pid, marker } of list) {
        let cmd = '';
        try {
          cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        } catch {
          continue; // gone
        }
        if (!cmd.includes(marker)) continue; // the pid was reused by something else
        process.kill(pid, 'SIGKILL');
        removed.push(`pid ${pid} (${marker})`);
      }
    } catch {
      // no pid list: nothing was started
    }
    fs.rmSync(dir, { recursive: true, force: true });
    removed.push(`dir ${dir}`);
  }
  if (removed.length) log(`fault fixture: removed leftovers of crashed runs: ${removed.join(', ')}`);
  return removed;
}

export interface FaultCluster {
  kind: 'local' | 'net';
  address: string;
  client: Client;
  source: string;
  target: string;
  storage: TestStorage | null;
  storageDir: string;
  net: TwoHostNet | null;
  controller: FerryProcess;
  agents: Map<string, FerryProcess>;
  startController(): Promise<FerryProcess>;
  startAgent(host: string): Promise<FerryProcess>;
  /** Kill the dev server, wait, start it again on the same SQLite file (local cluster only). */
  restartServer(downMs: number): Promise<void>;
  /** After a trial: links up, storage back, every process running. */
  heal(): Promise<void>;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  kind: 'local' | 'net';
  /** The temporal CLI; default: ensureTemporalBinary(). */
  temporalBin?: string;
  hosts?: [string, string];
  /** More arguments for an agent (e.g. --driver qemu and its addresses on the fixture's links). */
  agentArgs?: (host: string, end: End, net: TwoHostNet | null) => string[];
  log?: Log;
}

export async function startFaultCluster(opts: ClusterOptions): Promise<FaultCluster> {
  const log = opts.log ?? (() => undefined);
  const bin = opts.temporalBin ?? (await ensureTemporalBinary(null, log));
  const [source, target] = opts.hosts ?? (opts.kind === 'net' ? ['net-a', 'net-b'] : ['crash-a', 'crash-b']);
  cleanupStaleClusters(log);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ferry-faults-${opts.kind}-${process.pid}-`));
  const net = opts.kind === 'net' ? createTwoHostNet({ log }) : null;
  let storage: TestStorage | null = null;
  let server: DevServer | null = null;
  let connection: Connection | null = null;
  let relay: Relay | null = null;
  const exitHook = (): void => {
    net?.destroy();
    storage?.destroy();
  };
  process.once('exit', exitHook);
  try {
    storage = net ? createTestStorage() : null;
    const storageDir = storage?.dir ?? path.join(dir, 'storage');
    fs.mkdirSync(storageDir, { recursive: true });
    const serverOpts = { bin, ip: '127.0.0.1', port: 0, headless: true, dbFile: net ? null : path.join(dir, 'temporal.db'), logFile: path.join(dir, 'server.log') };
    server = await startDevServer(serverOpts);
    serverOpts.port = server.port; // a restart comes back on the same address
    recordPid(dir, server.process.pid, 'temporal');
    const address = server.address;
    relay = net ? await startRelay(net.serverIp, { host: '127.0.0.1', port: serverOpts.port }) : null;
    const env = { FERRY_TEMPORAL_ADDRESS: address, FERRY_STORAGE_DIR: storageDir, ...runClusterKeyEnv() };
    const agentEnv = relay && net ? { ...env, FERRY_TEMPORAL_ADDRESS: `${net.serverIp}:${relay.port}` } : env;
    connection = await Connection.connect({ address });
    const client = new Client({ connection });
    const agents = new Map<string, FerryProcess>();
    const conn = connection;
    const c: FaultCluster = {
      kind: opts.kind,
      address,
      client,
      source,
      target,
      storage,
      storageDir,
      net,
      controller: null as unknown as FerryProcess,
      agents,
      async startController() {
        const p = spawnFerry('controller', ['controller'], { env });
        recordPid(dir, p.child.pid, 'ferry.mjs');
        await p.ready;
        c.controller = p;
        return p;
      },
      async startAgent(host) {
        const end: End = host === source ? 'source' : 'target';
        const args = ['agent', '--host', host, '--memory-capacity', '4GiB'];
        if (net) args.push('--data-addr', `${net.migration[end]}:0`);
        args.push(...(opts.agentArgs?.(host, end, net) ?? []));
        const p = spawnFerryIn(net ? net.ns[end] : null, `agent ${host}`, args, agentEnv);
        recordPid(dir, p.child.pid, 'ferry.mjs');
        agents.set(host, p);
        await p.ready;
        return p;
      },
      async restartServer(downMs) {
        if (net || !server) throw new Error('restartServer: only the local cluster keeps its state on a SQLite file');
        server.process.kill('SIGKILL');
        await new Promise((r) => server!.process.once('exit', r));
        await sleep(downMs);
        server = await startDevServer(serverOpts);
        recordPid(dir, server.process.pid, 'temporal');
      },
      async heal() {
        net?.allUp();
        storage?.reset();
        const starts: Promise<unknown>[] = [];
        if (!isAlive(c.controller)) starts.push(c.startController());
        for (const h of [source, target]) {
          const a = agents.get(h);
          if (!isAlive(a)) {
            starts.push((async () => {
              await a?.exited;
              await c.startAgent(h);
            })());
          }
        }
        await Promise.all(starts);
      },
      async stop() {
        try {
          await Promise.all([...agents.values()].map((a) => a.stop(5_000)));
          if (c.controller) await c.controller.stop(5_000);
          await conn.close().catch(() => undefined);
          await relay?.close();
          await server?.stop();
        } finally {
          net?.destroy();
          storage?.destroy();
          process.off('exit', exitHook);
          fs.rmSync(dir, { recursive: true, force: true });
        }
      },
    };
    await Promise.all([c.startController(), c.startAgent(source), c.startAgent(target)]);
    return c;
  } catch (e) {
    await connection?.close().catch(() => undefined);
    await relay?.close();
    await server?.stop();
    net?.destroy();
    storage?.destroy();
    process.off('exit', exitHook);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
