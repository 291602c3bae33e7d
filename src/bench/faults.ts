/**
 * Fault scenarios on real processes, and the reliability table (`npm run bench:faults`).
 *
 * Two kinds of cluster, each with its own Temporal dev server, controller process and two
 * host-agent processes (nothing shared with other tests or benches):
 *
 * - `local`: everything on loopback, the dev server on a SQLite file (it is killed and
 *   restarted). The crash scenarios of test/faults/crash.test.ts run here.
 * - `net`: the two agents in network namespaces of their own ("two hosts"), joined by two
 *   veth links: the migration network (channel-2) and the storage network, shaped with tc
 *   (rate; delay too where the kernel has sch_netem). Each namespace also has a control veth
 *   to the root namespace, where the dev server listens on the root side's address and the
 *   controller runs. Only private addresses inside namespaces made here are used
 *   (10.231.X.0/28); nothing is routed anywhere else (no default route, no forwarding).
 *   Shared storage is one directory both agents see, a tmpfs mounted here (so a scenario
 *   can fill it or make it vanish). The storage veth is there and shaped, but channel-1
 *   is a directory, so ferry's storage bytes do not cross it (an NFS server in a namespace
 *   would make them; not built).
 *
 * Every scenario runs one migration of a fresh 64 MiB VM, injects its fault with seeded
 * random timing, and judges the outcome by the workflow's report AND by asking both agents
 * where the VM runs (inventory): `completed` (verified on the target, not running on the
 * source), `rolled-back` (verified on the source, not on the target), `host-died` (the
 * scenario restarted the source agent and the emulated guest died with its process; the
 * report says so), `missed` (the fault did not land where the scenario wanted it), or
 * `lost` (anything else: not verified anywhere, on both hosts, or no result in time).
 *
 * Network namespaces need root and the `ip`/`tc` tools (iproute2, installed by
 * `ferry setup --tests`); without them a net cluster fails to start with the reason.
 * Names carry the owner's pid (`ferryt-<pid>-…`); a new fixture first removes the
 * namespaces, processes and mounts of fixtures whose process is gone (a crashed run).
 */
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { connect as tcpConnect, createServer as tcpServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import type { MigrationOptions } from '../activities/types';
import { spawnFerry, type FerryProcess } from '../cli/processes';
import { freePort, startDevServer, type DevServer } from '../common/dev-server';
import { CONTROL_QUEUE, migrationWorkflowId } from '../common/names';
import { ensureSystemTools, type SystemTool } from '../common/system-packages';
import { ensureTemporalBinary } from '../common/temporal-bin';
import type { StrategyName } from '../policy/types';
import type { InventoryResult } from '../workflows/inventory';
import { progressQuery, type Progress } from '../workflows/messages';
import type { MigrationReport } from '../workflows/report';

const MiB = 1024 ** 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
type Log = (line: string) => void;

// ==========================================================================================
// Seeded timing

/** mulberry32; the seed is printed by whoever uses it, so a failing run can be repeated. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seed per (suite seed, scenario, trial): a trial can be re-run alone. */
export function trialSeed(seed: number, scenario: string, trial: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const c of `${scenario}#${trial}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h % 1_000_000_007;
}

// ==========================================================================================
// Shell

interface RunResult {
  ok: boolean;
  out: string;
  err: string;
}

function run(cmd: string, args: string[], opts: { check?: boolean } = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const res = { ok: r.status === 0, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? String(r.error.message) : '') };
  if (!res.ok && opts.check !== false) throw new Error(`${cmd} ${args.join(' ')} failed: ${res.err.trim() || `exit ${r.status ?? r.signal}`}`);
  return res;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** iproute2 provides both; `ferry setup --tests` installs it (TEST_TOOLS). */
export const NET_TOOLS: SystemTool[] = [
  { command: 'ip', pkg: 'iproute2', why: 'network namespaces and veth links for the fault tests' },
  { command: 'tc', pkg: 'iproute2', why: 'shapes the test links (rate, delay)' },
];

// ==========================================================================================
// Two hosts in network namespaces

const NS_PREFIX = 'ferryt';
const MOUNT_MARK = 'ferry-netns-';

export type LinkName = 'migration' | 'storage';
export type End = 'source' | 'target';

export interface TwoHostNet {
  /** Namespace names. */
  ns: Record<End, string>;
  /** The dev server listens here (root namespace side of the source's control veth). */
  serverIp: string;
  control: Record<End, string>;
  migration: Record<End, string>;
  storage: Record<End, string>;
  /** What shaping was applied, e.g. "tbf rate 400mbit (no netem in this kernel: no delay)". */
  shaping: Record<LinkName, string>;
  /** Link down on one end: both ends lose carrier, packets vanish silently. */
  down(link: LinkName, end: End): void;
  up(link: LinkName, end: End): void;
  /** Every link of the fixture up again. */
  allUp(): void;
  destroy(): void;
}

export interface NetOptions {
  /** tc rate of the migration / storage links (default 400mbit / 1gbit). */
  migrationRate?: string;
  storageRate?: string;
  /** One-way delay added with netem when the kernel has it (default 1ms). */
  delay?: string;
  log?: Log;
}

const IFACE: Record<LinkName, string> = { migration: 'mig0', storage: 'sto0' };
let fixtureSeq = 0;
let netemAvailable: boolean | null = null;

/** Why network namespaces cannot be used here, or null when they can. */
export function netnsUnavailable(): string | null {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'the link fault tests need root (network namespaces, veth, tc)';
  try {
    ensureSystemTools(NET_TOOLS, () => undefined);
  } catch (e) {
    return (e as Error).message;
  }
  const probe = `${NS_PREFIX}-${process.pid}-probe`;
  const r = run('ip', ['netns', 'add', probe], { check: false });
  if (!r.ok) return `ip netns add failed: ${r.err.trim()} (network namespaces unavailable: not root, or no CAP_SYS_ADMIN in this container)`;
  run('ip', ['netns', 'del', probe], { check: false });
  return null;
}

/**
 * Remove what fixtures of dead processes left: namespaces (and processes still inside
 * them: agents a crashed run started), tmpfs mounts. Returns what was removed.
 */
export function cleanupStaleNets(log: Log = () => undefined): string[] {
  const removed: string[] = [];
  const list = run('ip', ['netns', 'list'], { check: false }).out;
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${NS_PREFIX}-(\\d+)-`).exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    for (const pid of run('ip', ['netns', 'pids', name], { check: false }).out.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone already
      }
    }
    run('ip', ['netns', 'del', name], { check: false });
    removed.push(`netns ${name}`);
  }
  for (const mp of staleMounts()) {
    run('umount', ['-l', mp], { check: false });
    removed.push(`mount ${mp}`);
  }
  // Their directories (lazily unmounted above: what is left is the empty mount point).
  for (const name of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${MOUNT_MARK}(\\d+)-`).exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    const dir = path.join(os.tmpdir(), name);
    if (staleMounts().some((mp) => mp.startsWith(`${dir}/`))) continue;
    fs.rmSync(dir, { recursive: true, force: true });
    removed.push(`dir ${dir}`);
  }
  if (removed.length) log(`fault fixture: removed leftovers of crashed runs: ${removed.join(', ')}`);
  return removed;
}

function staleMounts(): string[] {
  let text = '';
  try {
    text = fs.readFileSync('/proc/mounts', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const mp = line.split(' ')[1] ?? '';
    const m = new RegExp(`/${MOUNT_MARK}(\\d+)-`).exec(mp);
    if (m && !pidAlive(Number(m[1]))) out.push(mp);
  }
  // Deepest first (an overlay on top of the storage tmpfs).
  return out.reverse();
}

function pickSubnet(): number {
  const used = run('ip', ['-o', '-4', 'addr', 'show'], { check: false }).out;
  for (let i = 0; i < 240; i++) {
    const x = ((process.pid + fixtureSeq * 37 + i * 7) % 240) + 8;
    if (!used.includes(`10.231.${x}.`)) return x;
  }
  throw new Error('no free 10.231.X.0/28 subnet for the fault fixture');
}

function shape(ns: string, dev: string, rate: string, delay: string): string {
  if (netemAvailable !== false) {
    const r = run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'netem', 'delay', delay, 'rate', rate], { check: false });
    if (r.ok) {
      netemAvailable = true;
      return `netem delay ${delay} rate ${rate}`;
    }
    netemAvailable = false;
  }
  run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '50ms']);
  return `tbf rate ${rate} (no netem in this kernel: no added delay)`;
}

export function createTwoHostNet(opts: NetOptions = {}): TwoHostNet {
  const log = opts.log ?? (() => undefined);
  const problem = netnsUnavailable();
  if (problem) throw new Error(`two-host network fixture: ${problem}`);
  cleanupStaleNets(log);
  const k = fixtureSeq++;
  const x = pickSubnet();
  const ip = (n: number): string => `10.231.${x}.${n}`;
  const ns: Record<End, string> = { source: `${NS_PREFIX}-${process.pid}-${k}-src`, target: `${NS_PREFIX}-${process.pid}-${k}-tgt` };
  const rootIf: Record<End, string> = { source: `ft${process.pid.toString(36)}${k.toString(36)}a`, target: `ft${process.pid.toString(36)}${k.toString(36)}b` };
  const inNs = (end: End, ...args: string[]): RunResult => run('ip', ['-n', ns[end], ...args]);
  const net: TwoHostNet = {
    ns,
    serverIp: ip(1),
    control: { source: ip(2), target: ip(6) },
    migration: { source: ip(9), target: ip(10) },
    storage: { source: ip(13), target: ip(14) },
    shaping: { migration: '', storage: '' },
    down: (link, end) => void inNs(end, 'link', 'set', 'dev', IFACE[link], 'down'),
    up: (link, end) => void inNs(end, 'link', 'set', 'dev', IFACE[link], 'up'),
    allUp: () => {
      for (const end of ['source', 'target'] as End[]) for (const link of ['migration', 'storage'] as LinkName[]) inNs(end, 'link', 'set', 'dev', IFACE[link], 'up');
    },
    destroy: () => {
      for (const end of ['source', 'target'] as End[]) {
        for (const pid of run('ip', ['netns', 'pids', ns[end]], { check: false }).out.split(/\s+/).filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // gone
          }
        }
        // Deleting a namespace destroys its veths, and with them their peers.
        run('ip', ['netns', 'del', ns[end]], { check: false });
        run('ip', ['link', 'del', rootIf[end]], { check: false });
      }
    },
  };
  try {
    for (const end of ['source', 'target'] as End[]) {
      run('ip', ['netns', 'add', ns[end]]);
      inNs(end, 'link', 'set', 'lo', 'up');
    }
    // Control: a /30 per host to the root namespace.
    const ctl: [End, number][] = [
      ['source', 1],
      ['target', 5],
    ];
    for (const [end, base] of ctl) {
      run('ip', ['link', 'add', rootIf[end], 'type', 'veth', 'peer', 'name', 'ctl0', 'netns', ns[end]]);
      run('ip', ['addr', 'add', `${ip(base)}/30`, 'dev', rootIf[end]]);
      run('ip', ['link', 'set', rootIf[end], 'up']);
      inNs(end, 'addr', 'add', `${ip(base + 1)}/30`, 'dev', 'ctl0');
      inNs(end, 'link', 'set', 'ctl0', 'up');
    }
    // The target reaches the server's address through its own control link (host route only).
    inNs('target', 'route', 'add', `${ip(1)}/32`, 'via', ip(5), 'dev', 'ctl0');
    // Migration and storage networks: source ↔ target directly.
    const links: [LinkName, number][] = [
      ['migration', 9],
      ['storage', 13],
    ];
    for (const [link, base] of links) {
      const dev = IFACE[link];
      inNs('source', 'link', 'add', dev, 'type', 'veth', 'peer', 'name', dev, 'netns', ns.target);
      inNs('source', 'addr', 'add', `${ip(base)}/30`, 'dev', dev);
      inNs('target', 'addr', 'add', `${ip(base + 1)}/30`, 'dev', dev);
      inNs('source', 'link', 'set', dev, 'up');
      inNs('target', 'link', 'set', dev, 'up');
      const rate = link === 'migration' ? (opts.migrationRate ?? '400mbit') : (opts.storageRate ?? '1gbit');
      const delay = opts.delay ?? '1ms';
      net.shaping[link] = shape(ns.source, dev, rate, delay);
      shape(ns.target, dev, rate, delay);
    }
  } catch (e) {
    net.destroy();
    throw e;
  }
  log(`fault fixture: namespaces ${ns.source}, ${ns.target}; server ${net.serverIp}; migration ${net.migration.source}↔${net.migration.target} (${net.shaping.migration}); storage ${net.storage.source}↔${net.storage.target} (${net.shaping.storage})`);
  return net;
}

// ==========================================================================================
// Storage: a tmpfs both agents see

export interface TestStorage {
  dir: string;
  /** Bytes in use now. */
  used(): number;
  /** Limit the size (tmpfs remount): writes beyond it fail with ENOSPC. */
  resize(bytes: number): void;
  /** Put an empty read-only tmpfs over the directory: the storage "vanishes" (EROFS / ENOENT). */
  vanish(): void;
  /** Undo vanish() and resize(), and empty the directory. */
  reset(): void;
  destroy(): void;
}

const STORAGE_SIZE = 1024 * MiB;

export function createTestStorage(): TestStorage {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `${MOUNT_MARK}${process.pid}-`));
  const dir = path.join(base, 'storage');
  fs.mkdirSync(dir);
  run('mount', ['-t', 'tmpfs', '-o', `size=${STORAGE_SIZE}`, 'ferry-test-storage', dir]);
  // Shared: a mount made on it later (vanish) reaches the agents' mount namespaces too
  // (ip netns exec gives each a slave copy of the root's mounts).
  run('mount', ['--make-shared', dir]);
  let overlays = 0;
  const st: TestStorage = {
    dir,
    used: () => {
      const s = fs.statfsSync(dir);
      return (s.blocks - s.bfree) * s.bsize;
    },
    resize: (bytes) => void run('mount', ['-o', `remount,size=${Math.max(4096, Math.ceil(bytes / 4096) * 4096)}`, dir]),
    vanish: () => {
      run('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'ferry-test-storage-gone', dir]);
      overlays++;
    },
    reset: () => {
      for (; overlays > 0; overlays--) run('umount', [dir], { check: false });
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
      run('mount', ['-o', `remount,size=${STORAGE_SIZE}`, dir], { check: false });
    },
    destroy: () => {
      for (; overlays > 0; overlays--) run('umount', ['-l', dir], { check: false });
      run('umount', ['-l', dir], { check: false });
      fs.rmSync(base, { recursive: true, force: true });
    },
  };
  return st;
}

// ==========================================================================================
// Processes

/** Like spawnFerry, optionally inside a network namespace (`ip netns exec` execs node itself). */
function spawnFerryIn(netns: string | null, name: string, args: string[], env: NodeJS.ProcessEnv): FerryProcess {
  return spawnFerry(name, args, { env, wrap: netns ? ['ip', 'netns', 'exec', netns] : undefined });
}

/**
 * A TCP relay: the agents in the namespaces reach the dev server through the root side of
 * their control links. (The dev server cannot listen there itself: given a non-loopback
 * --ip, `temporal server start-dev` v1.5.1 binds its internal services to it but dials them
 * on 127.0.0.1, and every workflow start fails.)
 */
async function startRelay(host: string, to: { host: string; port: number }): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = tcpServer((a) => {
    const b = tcpConnect(to);
    for (const [x, y] of [
      [a, b],
      [b, a],
    ] as const) {
      x.setNoDelay(true);
      sockets.add(x);
      x.on('error', () => y.destroy());
      x.on('close', () => {
        sockets.delete(x);
        y.destroy();
      });
      x.pipe(y);
    }
  });
  const port = await freePort(host);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

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

function isAlive(p: FerryProcess | null | undefined): boolean {
  return !!p && p.child.exitCode === null && p.child.signalCode === null;
}

// ==========================================================================================
// Clusters

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
  let relay: { port: number; close(): Promise<void> } | null = null;
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
    const env = { FERRY_TEMPORAL_ADDRESS: address, FERRY_STORAGE_DIR: storageDir };
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

// ==========================================================================================
// One migration, one fault

export type Verdict = 'completed' | 'rolled-back' | 'host-died' | 'missed' | 'lost';

export interface TrialResult {
  scenario: string;
  trial: number;
  seed: number;
  verdict: Verdict;
  expected: Verdict[];
  /** Fault injected → the workflow's report (null when the fault was not injected). */
  recoverMs: number | null;
  totalMs: number;
  /** What the fault was, with its random parameters. */
  fault: string;
  /** Where each host says the VM is ('unreachable' when its agent did not answer). */
  placement: Record<string, string>;
  report: MigrationReport | null;
  detail: string;
}

export interface TrialContext {
  cluster: FaultCluster;
  random: () => number;
  log: Log;
}

export interface Scenario {
  id: string;
  title: string;
  cluster: 'local' | 'net';
  /** Verdicts that count as surviving the fault. */
  expected: Verdict[];
  run(ctx: TrialContext, trial: number, seed: number): Promise<TrialResult>;
}

interface Plan {
  strategy: StrategyName;
  workload: string;
  options: Partial<MigrationOptions>;
  /** Before the migration starts (e.g. shrink the storage). */
  before?: () => string | void;
  /** When to inject: a predicate on the progress query. */
  when: (p: Progress) => boolean;
  /** Extra random wait once `when` holds, ms. */
  jitterMs?: number;
  /** The fault. May keep running (a link down for a while) while the workflow goes on. */
  inject: () => Promise<string> | string;
  /** The source agent dies with the guest on purpose. */
  hostDies?: boolean;
  /** Did the fault hit what it aimed at? (Default: it was injected before the end.) */
  landed?: (r: MigrationReport) => boolean;
  resultTimeoutMs?: number;
}

let vmSeq = 0;

function defaults(over: Partial<MigrationOptions>): MigrationOptions {
  return {
    bandwidthBytesPerSec: 32 * MiB,
    storageBandwidthBytesPerSec: 1024 * MiB,
    maxDowntimeMs: 300,
    maxIterations: 30,
    pbdata: 'async',
    compression: false,
    zeroElision: true,
    ...over,
  };
}

async function waitProgress(handle: WorkflowHandle, pred: (p: Progress) => boolean, timeoutMs: number): Promise<Progress | null> {
  const deadline = Date.now() + timeoutMs;
  let last: Progress | null = null;
  for (;;) {
    const p = await handle.query(progressQuery).catch(() => null);
    if (p) last = p;
    if (p && pred(p)) return p;
    if (last && ['completed', 'rolled-back', 'failed'].includes(last.phase)) return null;
    if (Date.now() > deadline) return null;
    await sleep(20);
  }
}

async function placementOf(c: FaultCluster, vm: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  try {
    const inv = (await c.client.workflow.execute('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `faults-inventory-${randomUUID()}`,
      args: [{ hosts: [c.source, c.target], timeoutMs: 5_000 }],
    })) as InventoryResult;
    for (const h of inv.hosts) out[h.host] = h.ok ? (h.facts.vms.find((v) => v.name === vm)?.state ?? 'absent') : 'unreachable';
  } catch (e) {
    out.error = (e as Error).message;
  }
  return out;
}

async function destroyEverywhere(c: FaultCluster, vm: string): Promise<void> {
  await Promise.all(
    [c.source, c.target].map((host) =>
      c.client.workflow
        .execute('vmCommandWorkflow', {
          taskQueue: CONTROL_QUEUE,
          workflowId: `faults-destroy-${vm}-${host}-${randomUUID()}`,
          args: [{ host, op: 'destroy', name: vm }],
          workflowExecutionTimeout: '15s',
        })
        .catch(() => undefined),
    ),
  );
}

function judge(report: MigrationReport, place: Record<string, string>, c: FaultCluster, hostDies: boolean): Verdict {
  const onT = place[c.target] === 'running';
  const onS = place[c.source] === 'running';
  const v = report.verification;
  if (report.outcome === 'completed' && v?.ok && v.where === 'target' && onT && !onS) return 'completed';
  if (report.outcome === 'rolled-back' && v?.ok && v.where === 'source' && onS && !onT) return 'rolled-back';
  if (hostDies && report.outcome === 'failed' && /agent restarted during the migration/.test(report.reason) && !onT) return 'host-died';
  return 'lost';
}

async function runPlan(ctx: TrialContext, scenario: Scenario, trial: number, seed: number, plan: Plan): Promise<TrialResult> {
  const c = ctx.cluster;
  const vm = `f${process.pid.toString(36)}-${++vmSeq}`;
  const t0 = performance.now();
  const base = { scenario: scenario.id, trial, seed, expected: scenario.expected };
  const before = plan.before?.() ?? '';
  await c.client.workflow.execute('vmCommandWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: `vm-create-${vm}`,
    args: [{ host: c.source, op: 'create', spec: { name: vm, memoryBytes: 64 * MiB, workload: plan.workload, seed: seed % 100_000 } }],
  });
  const handle = await c.client.workflow.start('migrationWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: migrationWorkflowId(vm),
    args: [{ vm, source: c.source, target: c.target, strategy: plan.strategy, options: defaults(plan.options) }],
  });
  let fault = before;
  let recoverFrom: number | null = null;
  let injecting: Promise<unknown> = Promise.resolve();
  try {
    const at = await waitProgress(handle, plan.when, 90_000);
    if (at) {
      if (plan.jitterMs) await sleep(ctx.random() * plan.jitterMs);
      recoverFrom = performance.now();
      const inj = Promise.resolve(plan.inject());
      injecting = inj.then((d) => (fault = [fault, d].filter(Boolean).join('; ')));
      injecting.catch(() => undefined);
    }
    const timeoutMs = plan.resultTimeoutMs ?? 180_000;
    const report = (await Promise.race([handle.result(), sleep(timeoutMs).then(() => null)])) as MigrationReport | null;
    const doneAt = performance.now();
    await injecting;
    if (!report) {
      await handle.terminate('fault bench: no result in time').catch(() => undefined);
      return { ...base, verdict: 'lost', recoverMs: null, totalMs: doneAt - t0, fault, placement: await placementOf(c, vm), report: null, detail: `no result within ${timeoutMs / 1000} s` };
    }
    const placement = await placementOf(c, vm);
    let verdict = judge(report, placement, c, plan.hostDies === true);
    let detail = report.reason;
    if ((recoverFrom === null || (plan.landed && !plan.landed(report))) && verdict !== 'lost') {
      verdict = 'missed';
      detail = `the fault did not land (the step it aimed at was over): ${report.reason}`;
    }
    return { ...base, verdict, recoverMs: recoverFrom === null ? null : Math.round(doneAt - recoverFrom), totalMs: Math.round(doneAt - t0), fault, placement, report, detail };
  } finally {
    await injecting.catch(() => undefined);
    await c.heal();
    await destroyEverywhere(c, vm);
  }
}

function ms(x: number): string {
  return `${(x / 1000).toFixed(1)} s`;
}

// ==========================================================================================
// The scenarios

function scenario(id: string, title: string, cluster: 'local' | 'net', expected: Verdict[], plan: (ctx: TrialContext) => Plan): Scenario {
  const s: Scenario = { id, title, cluster, expected, run: (ctx, trial, seed) => runPlan(ctx, s, trial, seed, plan(ctx)) };
  return s;
}

const controllerKill = (ctx: TrialContext) => async (): Promise<string> => {
  const c = ctx.cluster;
  c.controller.kill('SIGKILL');
  await c.controller.exited;
  const down = 300 + ctx.random() * 1700;
  await sleep(down);
  await c.startController();
  return `controller SIGKILLed, restarted after ${ms(down)}`;
};

/** The scenarios of test/faults/crash.test.ts: processes die, state survives in Temporal. */
export const CRASH_SCENARIOS: Scenario[] = [
  scenario('controller-static-save', 'controller killed during the static save (pa-hybrid)', 'local', ['completed'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { storageBandwidthBytesPerSec: 8 * MiB, pbdata: 'async', maxIterations: 10 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false && p.iteration >= 1,
    inject: controllerKill(ctx),
  })),
  scenario('controller-iterations', 'controller killed mid-iterations (as-hybrid)', 'local', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 12 },
    when: (p) => p.iteration >= 3,
    inject: controllerKill(ctx),
  })),
  scenario('controller-switch', 'controller killed at the switch (pa-hybrid, PbData sync)', 'local', ['completed'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { storageBandwidthBytesPerSec: 12 * MiB, pbdata: 'sync', maxDowntimeMs: 1 },
    when: (p) => p.phase === 'switching',
    inject: controllerKill(ctx),
  })),
  scenario('controller-postcopy', 'controller killed during post-copy (postcopy)', 'local', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'kernel-compile',
    options: { bandwidthBytesPerSec: 8 * MiB },
    when: (p) => p.phase === 'postcopy',
    inject: controllerKill(ctx),
  })),
  scenario('server-restart', 'Temporal server killed and restarted mid-iterations', 'local', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 10 },
    when: (p) => p.iteration >= 2,
    inject: async () => {
      const down = 500 + ctx.random() * 1500;
      await ctx.cluster.restartServer(down);
      return `server SIGKILLed, restarted after ${ms(down)}`;
    },
  })),
  scenario('target-agent-killed', 'target agent killed before the switch', 'local', ['rolled-back'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 50 },
    when: (p) => p.iteration >= 2,
    jitterMs: 500,
    inject: () => {
      ctx.cluster.agents.get(ctx.cluster.target)?.kill('SIGKILL');
      return 'target agent SIGKILLed';
    },
  })),
  scenario('source-agent-restarted', 'source agent restarted before the switch (the emulated guest lives in its process)', 'local', ['host-died'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 50 },
    when: (p) => p.iteration >= 2,
    jitterMs: 500,
    hostDies: true,
    inject: async () => {
      const a = ctx.cluster.agents.get(ctx.cluster.source)!;
      a.kill('SIGKILL');
      await a.exited;
      await ctx.cluster.startAgent(ctx.cluster.source);
      return 'source agent SIGKILLed and started again';
    },
  })),
];

const preSwitch = (p: Progress): boolean => p.phase === 'precopy' && p.iteration >= 1;
/** A storage fault landed if the save failed (the migration then went on without it, or rolled back). */
const staticFailed = (r: MigrationReport): boolean => r.outcome === 'rolled-back' || r.decisions.some((d) => /StaticData abandoned/.test(d.reason));

/** Link and storage faults, over the two-host network fixture. */
export const NET_SCENARIOS: Scenario[] = [
  scenario('link-blip', 'migration link down 1–3 s before the switch', 'net', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: async () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      const down = 1000 + ctx.random() * 2000;
      ctx.cluster.net!.down('migration', end);
      await sleep(down);
      ctx.cluster.net!.up('migration', end);
      return `migration link down on the ${end} end for ${ms(down)}`;
    },
  })),
  scenario('link-outage', 'migration link down 9–12 s before the switch (stall, retry, redial)', 'net', ['completed'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: async () => {
      // The target end: the source's route stays, so a redial hangs until its timeout (as
      // over a switch that lost the far side) instead of failing at once.
      const down = 9000 + ctx.random() * 3000;
      ctx.cluster.net!.down('migration', 'target');
      await sleep(down);
      ctx.cluster.net!.up('migration', 'target');
      return `migration link down on the target end for ${ms(down)}`;
    },
  })),
  scenario('link-dead', 'migration link down for good before the switch', 'net', ['rolled-back'], (ctx) => ({
    strategy: 'as-hybrid',
    workload: 'memcached',
    options: { maxDowntimeMs: 1, maxIterations: 8 },
    when: preSwitch,
    jitterMs: 500,
    inject: () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      ctx.cluster.net!.down('migration', end);
      return `migration link down on the ${end} end for good`;
    },
  })),
  scenario('link-cut-postcopy', 'migration link cut during post-copy (PbData async)', 'net', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'memcached',
    options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'async' },
    when: (p) => p.phase === 'postcopy',
    jitterMs: 2000,
    inject: () => {
      const end: End = ctx.random() < 0.5 ? 'source' : 'target';
      ctx.cluster.net!.down('migration', end);
      return `migration link down on the ${end} end for good, during post-copy`;
    },
  })),
  scenario('source-killed-postcopy', 'source agent killed during post-copy (PbData sync)', 'net', ['completed'], (ctx) => ({
    strategy: 'postcopy',
    workload: 'memcached',
    options: { bandwidthBytesPerSec: 8 * MiB, pbdata: 'sync' },
    when: (p) => p.phase === 'postcopy',
    jitterMs: 2000,
    inject: () => {
      ctx.cluster.agents.get(ctx.cluster.source)?.kill('SIGKILL');
      return 'source agent SIGKILLed during post-copy';
    },
  })),
  scenario('storage-full', 'storage full during the static save (pa-hybrid)', 'net', ['completed', 'rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    // A slow storage link keeps the save running for a few seconds (the guest is young:
    // StaticData is mostly zero pages, elided).
    options: { storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 8 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false,
    jitterMs: 800,
    inject: () => {
      const st = ctx.cluster.storage!;
      const room = Math.round(ctx.random() * 1024) * 1024;
      st.resize(st.used() + room);
      return `shared storage shrunk to what it holds + ${Math.round(room / 1024)} KiB during the static save (ENOSPC)`;
    },
    landed: staticFailed,
  })),
  scenario('storage-gone', 'storage unreachable during the static save (pa-hybrid)', 'net', ['completed', 'rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 8 },
    when: (p) => p.phase === 'precopy' && p.staticMerged === false,
    jitterMs: 800,
    inject: () => {
      ctx.cluster.storage!.vanish();
      return 'shared storage replaced by an empty read-only mount during the static save';
    },
    landed: staticFailed,
  })),
  scenario('storage-full-sync', 'storage full from the start, PbData sync (pa-hybrid)', 'net', ['rolled-back'], (ctx) => ({
    strategy: 'pa-hybrid',
    workload: 'memcached',
    options: { storageBandwidthBytesPerSec: 3 * MiB, maxDowntimeMs: 1, maxIterations: 4, pbdata: 'sync' },
    before: () => {
      const st = ctx.cluster.storage!;
      const room = Math.round(ctx.random() * 256) * 1024;
      st.resize(st.used() + room);
      return `shared storage full from the start (${Math.round(room / 1024)} KiB free)`;
    },
    when: (p) => p.phase === 'precopy',
    inject: () => '',
  })),
];

export const FAULT_SCENARIOS: Scenario[] = [...CRASH_SCENARIOS, ...NET_SCENARIOS];

export function scenarioById(id: string): Scenario {
  const s = FAULT_SCENARIOS.find((x) => x.id === id);
  if (!s) throw new Error(`unknown fault scenario '${id}' (one of ${FAULT_SCENARIOS.map((x) => x.id).join(', ')})`);
  return s;
}

// ==========================================================================================
// The suite and its table

export interface FaultRow {
  scenario: string;
  title: string;
  trials: number;
  completed: number;
  /** Rolled back with the guest verified on the source. */
  rolledBack: number;
  /** The source agent was restarted on purpose; the emulated guest died with it (reported). */
  hostDied: number;
  /** The fault did not land where intended (the migration ended first). */
  missed: number;
  /** Neither verified on the target nor on the source (or no result in time). Must be 0. */
  lost: number;
  /** Trials whose verdict is not one the scenario expects. */
  unexpected: number;
  medianRecoverMs: number | null;
  medianTotalMs: number | null;
}

export interface FaultSuiteResult {
  seed: number;
  startedAt: string;
  durationMs: number;
  rows: FaultRow[];
  trials: TrialResult[];
  environment: { shaping: Record<LinkName, string> | null; machine: { cpus: number; node: string } };
}

export interface FaultSuiteOptions {
  trials: number;
  seed: number;
  log?: Log;
  /** Scenario ids to run (default: all). */
  only?: string[];
  temporalBin?: string;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : Math.round(((s[m - 1] as number) + (s[m] as number)) / 2);
}

export function rowOf(s: Scenario, results: TrialResult[]): FaultRow {
  const n = (v: Verdict): number => results.filter((r) => r.verdict === v).length;
  return {
    scenario: s.id,
    title: s.title,
    trials: results.length,
    completed: n('completed'),
    rolledBack: n('rolled-back'),
    hostDied: n('host-died'),
    missed: n('missed'),
    lost: n('lost'),
    unexpected: results.filter((r) => !s.expected.includes(r.verdict)).length,
    medianRecoverMs: median(results.flatMap((r) => (r.recoverMs === null ? [] : [r.recoverMs]))),
    medianTotalMs: median(results.map((r) => r.totalMs)),
  };
}

/**
 * Run each scenario `trials` times (fresh VM each time) and tabulate. Crash scenarios run
 * on a loopback cluster, link and storage ones on the two-host network fixture (root).
 */
export async function runFaultSuite(opts: FaultSuiteOptions): Promise<FaultSuiteResult> {
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const startedAt = new Date().toISOString();
  const chosen = opts.only?.length ? opts.only.map(scenarioById) : FAULT_SCENARIOS;
  const results: TrialResult[] = [];
  let shaping: Record<LinkName, string> | null = null;
  for (const kind of ['local', 'net'] as const) {
    const group = chosen.filter((s) => s.cluster === kind);
    if (group.length === 0) continue;
    log(`faults: starting the ${kind} cluster…`);
    const cluster = await startFaultCluster({ kind, temporalBin: opts.temporalBin, log });
    if (cluster.net) shaping = cluster.net.shaping;
    try {
      for (const s of group) {
        for (let t = 1; t <= opts.trials; t++) {
          const seed = trialSeed(opts.seed, s.id, t);
          const random = prng(seed);
          let r: TrialResult;
          try {
            r = await s.run({ cluster, random, log }, t, seed);
          } catch (e) {
            r = { scenario: s.id, trial: t, seed, verdict: 'lost', expected: s.expected, recoverMs: null, totalMs: 0, fault: '', placement: {}, report: null, detail: `trial failed: ${(e as Error).message}` };
            await cluster.heal().catch(() => undefined);
          }
          results.push(r);
          log(`faults: ${s.id} #${t} (seed ${seed}): ${r.verdict}${r.recoverMs !== null ? ` in ${ms(r.recoverMs)}` : ''} (total ${ms(r.totalMs)}) — ${r.fault} — ${r.detail}`);
        }
      }
    } finally {
      await cluster.stop();
    }
  }
  const rows = chosen.map((s) => rowOf(s, results.filter((r) => r.scenario === s.id)));
  return { seed: opts.seed, startedAt, durationMs: Math.round(performance.now() - t0), rows, trials: results, environment: { shaping, machine: { cpus: os.availableParallelism(), node: process.version } } };
}

export function faultTable(rows: FaultRow[]): string {
  const cell = (x: number | null): string => (x === null ? '–' : ms(x));
  const lines = [
    '| scenario | trials | completed | rolled back (verified on source) | host died | missed | lost | median time to recover | median total |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(`| ${r.title} | ${r.trials} | ${r.completed} | ${r.rolledBack} | ${r.hostDied} | ${r.missed} | ${r.lost} | ${cell(r.medianRecoverMs)} | ${cell(r.medianTotalMs)} |`);
  }
  return lines.join('\n');
}

// ==========================================================================================
// CLI: npm run bench:faults -- --trials N [--seed S] [--only id,id] [--json]
//      npm run bench:faults -- --merge a.json,b.json [--json]   (runs split with --only)

/** One table from the `--json` results of runs split with --only (scenarios in suite order). */
export function mergeFaultResults(parts: FaultSuiteResult[]): FaultSuiteResult {
  if (parts.length === 0) throw new Error('nothing to merge');
  const trials = parts.flatMap((p) => p.trials);
  const seeds = [...new Set(parts.map((p) => p.seed))];
  if (seeds.length > 1) throw new Error(`the parts were run with different seeds (${seeds.join(', ')})`);
  const ids = new Set(trials.map((t) => t.scenario));
  const rows = FAULT_SCENARIOS.filter((s) => ids.has(s.id)).map((s) => rowOf(s, trials.filter((t) => t.scenario === s.id)));
  return {
    seed: seeds[0]!,
    startedAt: parts.map((p) => p.startedAt).sort()[0]!,
    durationMs: parts.reduce((a, p) => a + p.durationMs, 0),
    rows,
    trials,
    environment: { shaping: parts.find((p) => p.environment.shaping)?.environment.shaping ?? null, machine: parts[0]!.environment.machine },
  };
}

async function main(argv: string[]): Promise<number> {
  let trials = 3;
  let seed = Date.now() % 100_000;
  let json = false;
  let only: string[] = [];
  let merge: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--json') json = true;
    else if (a === '--merge' && v !== undefined) {
      merge = v.split(',').filter(Boolean);
      i++;
    }
    else if (a === '--trials' && v !== undefined) {
      trials = Number(v);
      i++;
    } else if (a === '--seed' && v !== undefined) {
      seed = Number(v);
      i++;
    } else if (a === '--only' && v !== undefined) {
      only = v.split(',').filter(Boolean);
      i++;
    } else if (a === '--list') {
      for (const s of FAULT_SCENARIOS) process.stdout.write(`${s.id}\t${s.cluster}\t${s.title}\n`);
      return 0;
    } else {
      process.stderr.write(`bench:faults: unknown argument '${a}'\nusage: npm run bench:faults -- --trials N [--seed S] [--only id,id] [--json] [--list] | --merge a.json,b.json [--json]\n`);
      return 2;
    }
  }
  if (merge.length) {
    const res = mergeFaultResults(merge.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as FaultSuiteResult));
    if (json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    else {
      const n = [...new Set(res.rows.map((r) => r.trials))].join('/');
      process.stdout.write(`ferry fault bench: ${n} trial(s) per scenario, seed ${res.seed}, ${ms(res.durationMs)} of runs (merged from ${merge.length} parts)\n\n${faultTable(res.rows)}\n\n`);
      process.stdout.write(`${res.rows.reduce((a, r) => a + r.lost, 0)} lost, ${res.rows.reduce((a, r) => a + r.unexpected, 0)} unexpected outcome(s)\n`);
    }
    return res.rows.some((r) => r.lost > 0) ? 1 : 0;
  }
  if (!Number.isInteger(trials) || trials < 1) {
    process.stderr.write('bench:faults: --trials must be a whole number ≥ 1\n');
    return 2;
  }
  if (!Number.isInteger(seed) || seed < 0) {
    process.stderr.write('bench:faults: --seed must be a whole number ≥ 0\n');
    return 2;
  }
  for (const id of only) scenarioById(id);
  const log: Log = (l) => process.stderr.write(`${l}\n`);
  log(`bench:faults: ${trials} trial(s) per scenario, seed ${seed} (repeat with --seed ${seed})`);
  const res = await runFaultSuite({ trials, seed, log, only });
  if (json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
  else {
    process.stdout.write(`ferry fault bench: ${trials} trial(s) per scenario, seed ${seed}, ${ms(res.durationMs)}\n\n`);
    process.stdout.write(`${faultTable(res.rows)}\n\n`);
    if (res.environment.shaping) process.stdout.write(`links: migration ${res.environment.shaping.migration}; storage ${res.environment.shaping.storage}\n`);
    const lost = res.rows.reduce((a, r) => a + r.lost, 0);
    const unexpected = res.rows.reduce((a, r) => a + r.unexpected, 0);
    process.stdout.write(`${lost} lost, ${unexpected} unexpected outcome(s)\n`);
  }
  return res.rows.some((r) => r.lost > 0 || r.unexpected > 0) ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`bench:faults: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(2);
    },
  );
}
