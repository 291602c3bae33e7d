/**
 * Debian packages the test suite needs (docker-compose to validate the deployment file,
 * PostgreSQL for `ferry cluster`, QEMU, OpenSSH, iproute2, Chromium for the dashboard tests). Installed with apt-get when missing and running as root;
 * otherwise a clear error says what to install.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { postgresBinDir } from '../cluster/postgres';

export interface SystemTool {
  /** The command that must be on PATH. */
  command: string;
  /** The Debian package that provides it. */
  pkg: string;
  /** Why ferry needs it. */
  why: string;
  /** Install from this Debian suite (added to apt's sources when missing), e.g. bookworm-backports. */
  suite?: string;
  /** Present but unusable (too old): why, or null when fine. */
  unusable?: () => string | null;
}

/** QEMU before 9.0 loses dirty pages in multi-pass pre-copy under TCG; Debian 12 has 7.2. */
export function qemuTooOld(): string | null {
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  const m = /version (\d+)\./.exec(r.stdout ?? '');
  if (!m) return 'qemu-system-x86_64 --version gave no version';
  return Number(m[1]) >= 9 ? null : `QEMU ${m[1]} is older than 9.0`;
}

export const TEST_TOOLS: SystemTool[] = [
  { command: 'docker-compose', pkg: 'docker-compose', why: 'validates docker-compose.yml' },
  { command: 'ip', pkg: 'iproute2', why: 'network namespaces and veth links of the link fault tests' },
  { command: 'tc', pkg: 'iproute2', why: 'shapes the links of the fault tests' },
  { command: 'qemu-system-x86_64', pkg: 'qemu-system-x86', why: 'runs the QEMU tests\' guests (QEMU ≥ 9)', suite: 'bookworm-backports', unusable: qemuTooOld },
  { command: 'chromium', pkg: 'chromium', why: 'the headless browser of the dashboard tests (driven by playwright-core)' },
  { command: 'sshd', pkg: 'openssh-server', why: 'the real SSH server of the agentless-host tests' },
  { command: 'ssh-keygen', pkg: 'openssh-client', why: 'keys of the agentless-host tests' },
  { command: 'gcc', pkg: 'gcc', why: 'builds the test guest\'s workload' },
  {
    command: 'gcc',
    pkg: 'libc6-dev',
    why: 'the static C library the test guest\'s workload links',
    unusable: () => (fs.existsSync('/usr/lib/x86_64-linux-gnu/libc.a') ? null : 'no static libc (libc.a)'),
  },
  { command: 'dpkg-deb', pkg: 'dpkg', why: 'extracts the test guest\'s kernel and busybox' },
  { command: 'fusermount3', pkg: 'fuse3', why: 'mounts hangfs, the FUSE filesystem of the hung-storage tests' },
  {
    command: 'fusermount3',
    pkg: 'python3-fusepy',
    why: 'hangfs (test/fixtures/hangfs.py) is written with fusepy',
    unusable: () => (spawnSync('/usr/bin/python3', ['-c', 'import fusepy'], { stdio: 'ignore' }).status === 0 ? null : '/usr/bin/python3 cannot import fusepy'),
  },
  {
    command: 'pg_ctlcluster',
    pkg: 'postgresql',
    why: 'the database of `ferry cluster` (the native Temporal cluster) and the PostgreSQL audit store tests',
    unusable: () => (postgresBinDir() ? null : 'no initdb/pg_ctl under /usr/lib/postgresql/*/bin'),
  },
];

/** Debian suites ferry may add to apt's sources (Debian's own mirror). */
const SUITES: Record<string, string> = { 'bookworm-backports': 'deb http://deb.debian.org/debian bookworm-backports main' };

export function onPath(command: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/sbin'];
  return dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function ensureSystemTools(tools: SystemTool[], log: (l: string) => void): void {
  const missing = tools.filter((t) => !onPath(t.command) || (t.unusable?.() ?? null) !== null);
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((t) => t.pkg))];
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !onPath('apt-get')) {
    throw new Error(`missing ${missing.map((t) => `${t.command} (${t.why})`).join(', ')}: install the Debian package(s) ${pkgs.join(' ')}`);
  }
  log(`ferry: installing ${pkgs.join(' ')} with apt-get (${missing.map((t) => t.why).join('; ')})…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const suite of new Set(missing.map((t) => t.suite).filter((x): x is string => !!x))) {
    const file = `/etc/apt/sources.list.d/${suite}.list`;
    if (!fs.existsSync(file) && SUITES[suite]) fs.writeFileSync(file, `${SUITES[suite]}\n`);
  }
  const update = spawnSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env });
  if (update.status !== 0) throw new Error('apt-get update failed');
  // One apt-get per suite: packages from a backports suite must be asked for with -t.
  const bySuite = new Map<string, string[]>();
  for (const t of missing) {
    const k = t.suite ?? '';
    const list = bySuite.get(k) ?? [];
    if (!list.includes(t.pkg)) list.push(t.pkg);
    bySuite.set(k, list);
  }
  for (const [suite, list] of bySuite) {
    const install = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...(suite ? ['-t', suite] : []), ...list], { stdio: ['ignore', 'ignore', 'inherit'], env });
    if (install.status !== 0) throw new Error(`apt-get install ${suite ? `-t ${suite} ` : ''}${list.join(' ')} failed`);
  }
  const still = missing.filter((t) => !onPath(t.command) || (t.unusable?.() ?? null) !== null);
  if (still.length) throw new Error(`after apt-get: ${still.map((t) => `${t.command}: ${t.unusable?.() ?? 'not found'}`).join('; ')}`);
}
