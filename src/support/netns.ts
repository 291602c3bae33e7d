/**
 * Two "hosts" in network namespaces of their own, joined by two veth links: the migration
 * network (channel-2) and the storage network, shaped with tc (link.ts). Each namespace also
 * has a control veth to the root namespace, whose root side carries the address the dev
 * server is reached on. Only private addresses inside namespaces made here are used
 * (10.231.X.0/28); nothing is routed anywhere else (no default route, no forwarding).
 *
 * Network namespaces need root and the `ip`/`tc` tools (iproute2, installed by
 * `ferry setup --tests`); without them the fixture fails to start with the reason.
 * Names carry the owner's pid (`ferryt-<pid>-…`); a new fixture first removes the
 * namespaces, processes and mounts of fixtures whose process is gone (a crashed run).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureSystemTools, type SystemTool } from '../common/system-packages';
import { IFACE, setLink, shape, type End, type LinkName } from './link';
import { pidAlive, run, type RunResult } from './shell';
import { MOUNT_MARK, staleMounts } from './test-storage';

export type { End, LinkName } from './link';

type Log = (line: string) => void;

/** iproute2 provides both; `ferry setup --tests` installs it (TEST_TOOLS). */
export const NET_TOOLS: SystemTool[] = [
  { command: 'ip', pkg: 'iproute2', why: 'network namespaces and veth links for the fault tests' },
  { command: 'tc', pkg: 'iproute2', why: 'shapes the test links (rate, delay)' },
];

const NS_PREFIX = 'ferryt';

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

let fixtureSeq = 0;

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

function pickSubnet(): number {
  const used = run('ip', ['-o', '-4', 'addr', 'show'], { check: false }).out;
  for (let i = 0; i < 240; i++) {
    const x = ((process.pid + fixtureSeq * 37 + i * 7) % 240) + 8;
    if (!used.includes(`10.231.${x}.`)) return x;
  }
  throw new Error('no free 10.231.X.0/28 subnet for the fault fixture');
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
    down: (link, end) => setLink(ns[end], link, 'down'),
    up: (link, end) => setLink(ns[end], link, 'up'),
    allUp: () => {
      for (const end of ['source', 'target'] as End[]) for (const link of ['migration', 'storage'] as LinkName[]) setLink(ns[end], link, 'up');
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
