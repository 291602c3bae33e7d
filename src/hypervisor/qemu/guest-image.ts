/**
 * The QEMU test guest: a Debian cloud kernel and an initramfs holding busybox and the
 * memory-dirtying workload (guest/workload.c), built from Debian packages without
 * installing them. The kernel package (the one the linux-image-cloud-amd64 metapackage
 * depends on) and busybox-static are fetched with `apt-get download` and unpacked with
 * `dpkg-deb -x`; the workload is compiled with `gcc -static`; the initramfs is a gzip'd
 * newc cpio archive written here. The result is cached under <repo>/.cache/guest/<key>/,
 * the key a hash of workload.c, the /init script and GUEST_IMAGE_VERSION.
 *
 * The guest prints to its serial console (ttyS0): `FERRY guest up` from /init, then the
 * workload's `FERRY workload ready …`, `FERRY verify ok|FAIL …` and `FERRY stats …` lines;
 * parseSerial reads them back.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { REPO_ROOT } from '../../common/paths';
import { RAM_FILE_BLOCK } from './ram-files';

const execFileP = promisify(execFile);

/** Bump when the build recipe changes in a way the hashed inputs do not show. */
export const GUEST_IMAGE_VERSION = 1;
export const GUEST_CACHE_DIR = path.join(REPO_ROOT, '.cache', 'guest');
export const WORKLOAD_SOURCE = path.join(REPO_ROOT, 'guest', 'workload.c');
/** The metapackage that names the current cloud kernel. */
export const KERNEL_METAPACKAGE = 'linux-image-cloud-amd64';
export const BUSYBOX_PACKAGE = 'busybox-static';
export const GUEST_PAGE_SIZE = 4096;

export interface TestGuest {
  /** bzImage for -kernel. */
  kernel: string;
  /** gzip'd newc cpio for -initrd. */
  initrd: string;
  /** e.g. 6.1.0-56-cloud-amd64 */
  kernelVersion: string;
}

export class GuestImageError extends Error {
  override readonly name = 'GuestImageError';
}

/**
 * PID 1. Must never exit (that panics the kernel): if the workload ends, say so and sleep.
 * /dev/console is in the archive so the kernel can give init its console before devtmpfs.
 */
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo
echo "FERRY guest up"
/bin/ferry-workload
echo
echo "FERRY workload exited status=$?"
while true; do /bin/busybox sleep 3600; done
`;

const BUSYBOX_LINKS = ['sh', 'mount', 'sleep', 'cat', 'ls', 'echo', 'dmesg'];

// ---------------------------------------------------------------------------------------
// newc cpio

export type CpioEntry =
  | { type: 'dir'; name: string; mode?: number }
  | { type: 'file'; name: string; data: Buffer; mode?: number }
  | { type: 'symlink'; name: string; target: string }
  | { type: 'chardev'; name: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** A newc ("070701") cpio archive of `entries` (names relative, no leading slash), with the trailer. */
export function newcArchive(entries: CpioEntry[], mtime = 0): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, data: Buffer, nlink: number, rdev: [number, number]): void => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const fields = [ino++, mode, 0, 0, nlink, mtime, data.length, 0, 0, rdev[0], rdev[1], nameBuf.length, 0];
    const header = `070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`;
    parts.push(Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(header.length + nameBuf.length)));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) {
    const name = e.name.replace(/^\/+/, '');
    switch (e.type) {
      case 'dir':
        push(name, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), 2, [0, 0]);
        break;
      case 'file':
        push(name, S_IFREG | (e.mode ?? 0o644), e.data, 1, [0, 0]);
        break;
      case 'symlink':
        push(name, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'), 1, [0, 0]);
        break;
      case 'chardev':
        push(name, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), 1, [e.major, e.minor]);
        break;
    }
  }
  ino = 0;
  push('TRAILER!!!', 0, Buffer.alloc(0), 1, [0, 0]);
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------
// Serial console

export interface SerialVerify {
  pass: number;
  ok: boolean;
  pages?: number;
  writes?: number;
  bad?: number;
  first?: number;
}

export interface SerialStats {
  /** Guest monotonic milliseconds since the workload started. */
  tMs: number;
  writes: number;
  verifyUs: number;
}

export interface SerialState {
  /** /init ran (`FERRY guest up`). */
  up: boolean;
  /** The workload filled its working set (`FERRY workload ready`). */
  ready: boolean;
  wss?: number;
  rate?: number;
  verifies: SerialVerify[];
  stats: SerialStats[];
  /** The workload ended (it never should). */
  exited: boolean;
}

/** What the guest has said so far on its serial console. Pure; tolerates partial lines and kernel noise. */
export function parseSerial(text: string): SerialState {
  const st: SerialState = { up: false, ready: false, verifies: [], stats: [], exited: false };
  // Only complete lines: a line still being written may be cut mid-number.
  const complete = text.slice(0, text.lastIndexOf('\n') + 1);
  for (const raw of complete.split('\n')) {
    const line = raw.replace(/\r$/, '');
    const at = line.indexOf('FERRY ');
    if (at < 0) continue;
    const l = line.slice(at);
    let m: RegExpMatchArray | null;
    if (/^FERRY guest up\s*$/.test(l)) st.up = true;
    else if ((m = /^FERRY workload ready wss=(\d+) rate=(\d+)/.exec(l))) {
      st.ready = true;
      st.wss = Number(m[1]);
      st.rate = Number(m[2]);
    } else if ((m = /^FERRY verify ok pass=(\d+) pages=(\d+) writes=(\d+)/.exec(l))) {
      st.verifies.push({ pass: Number(m[1]), ok: true, pages: Number(m[2]), writes: Number(m[3]) });
    } else if ((m = /^FERRY verify FAIL pass=(\d+) bad=(\d+) first=(\d+)/.exec(l))) {
      st.verifies.push({ pass: Number(m[1]), ok: false, bad: Number(m[2]), first: Number(m[3]) });
    } else if ((m = /^FERRY stats t_ms=(\d+) writes=(\d+) verify_us=(\d+)/.exec(l))) {
      st.stats.push({ tMs: Number(m[1]), writes: Number(m[2]), verifyUs: Number(m[3]) });
    } else if (/^FERRY workload exited/.test(l)) st.exited = true;
  }
  return st;
}

// ---------------------------------------------------------------------------------------
// QEMU command line

export interface GuestArgsOptions {
  memoryMiB: number;
  /** Working set the workload dirties, MiB. */
  wss: number;
  /** Pages per second; 0 = as fast as the vCPU goes. */
  rate: number;
  verifyMs: number;
  seed: number;
  /** The serial console goes to this file. */
  serialLog: string;
  pattern?: 'seq' | 'random';
  /** Grow the written window at this speed (KiB/s) from `wss0` MiB up to `wss`; 0 = all at once. */
  growKiBps?: number;
  wss0?: number;
  /** The CPU model; both ends of a migration must use the same. Default qemu64. */
  cpu?: string;
  /**
   * Back the RAM with this file (tmpfs), shared: another process can write pages into it. The
   * backend keeps the RAM block's name (`pc.ram`), so the guest migrates to and from `-m` guests.
   */
  ramFile?: string;
}

/**
 * The guest part of a qemu-system-x86_64 command line (TCG, one vCPU, no devices but the
 * serial port). Add -qmp/-incoming/-name around it.
 */
export function qemuGuestArgs(img: Pick<TestGuest, 'kernel' | 'initrd'>, o: GuestArgsOptions): string[] {
  const append = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    `ferry.wss=${o.wss}`,
    `ferry.rate=${o.rate}`,
    `ferry.verify=${o.verifyMs}`,
    `ferry.seed=${o.seed}`,
    `ferry.pattern=${o.pattern ?? 'random'}`,
    ...(o.growKiBps ? [`ferry.grow=${o.growKiBps}`, `ferry.wss0=${o.wss0 ?? Math.max(1, Math.floor(o.wss / 8))}`] : []),
  ].join(' ');
  return [
    '-machine', o.ramFile ? `q35,memory-backend=${RAM_FILE_BLOCK}` : 'q35',
    ...(o.ramFile ? ['-object', `memory-backend-file,id=${RAM_FILE_BLOCK},size=${o.memoryMiB}M,mem-path=${o.ramFile},share=on`] : []),
    '-accel', 'tcg',
    '-cpu', o.cpu ?? 'qemu64',
    '-smp', '1',
    '-m', String(o.memoryMiB),
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-serial', `file:${o.serialLog}`,
    '-kernel', img.kernel,
    '-initrd', img.initrd,
    '-append', append,
    // A kernel panic (panic=-1 reboots at once) ends QEMU instead of looping.
    '-no-reboot',
  ];
}

// ---------------------------------------------------------------------------------------
// Building

async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileP(cmd, args, { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C' } });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string; stdout?: string };
    if (e.code === 'ENOENT') throw new GuestImageError(`${cmd} is not installed`);
    const detail = (e.stderr ?? '').trim() || (e.stdout ?? '').trim() || e.message;
    throw new GuestImageError(`${cmd} ${args.join(' ')} failed: ${detail}`);
  }
}

/** The versioned kernel package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64. */
export async function resolveKernelPackage(): Promise<string> {
  let out: string;
  try {
    out = (await run('apt-cache', ['depends', KERNEL_METAPACKAGE])).stdout;
  } catch (err) {
    throw new GuestImageError(
      `cannot resolve ${KERNEL_METAPACKAGE} with apt-cache (${(err as Error).message}); run \`apt-get update\` (as root) so the package lists are present`,
    );
  }
  const m = /Depends:\s*<?(linux-image-\S+-cloud-amd64)>?/.exec(out);
  if (!m?.[1]) {
    throw new GuestImageError(`${KERNEL_METAPACKAGE} depends on no linux-image-*-cloud-amd64 package in the apt lists; run \`apt-get update\`:\n${out}`);
  }
  return m[1];
}

/** apt-get download `pkg` into `dir`, dpkg-deb -x it into `dir/root`; returns the .deb name. */
async function fetchPackage(pkg: string, dir: string, log: (l: string) => void): Promise<string> {
  log(`ferry: apt-get download ${pkg}`);
  try {
    await run('apt-get', ['download', '-q', pkg], { cwd: dir });
  } catch (err) {
    throw new GuestImageError(
      `apt-get download ${pkg} failed — the apt package lists are probably stale or missing; run \`apt-get update\` (as root) and retry.\n${(err as Error).message}`,
    );
  }
  const deb = fs.readdirSync(dir).find((f) => f.endsWith('.deb') && decodeURIComponent(f).startsWith(`${pkg}_`));
  if (!deb) throw new GuestImageError(`apt-get download ${pkg} produced no .deb in ${dir}`);
  await run('dpkg-deb', ['-x', path.join(dir, deb), path.join(dir, 'root')]);
  return decodeURIComponent(deb);
}

async function compileWorkload(src: string, out: string): Promise<void> {
  try {
    await execFileP('gcc', ['-static', '-O2', '-Wall', '-o', out, src], { encoding: 'utf8' });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const stderr = e.stderr ?? '';
    if (e.code === 'ENOENT') {
      throw new GuestImageError('gcc is not installed: the test guest workload is a static C program; install the Debian packages gcc libc6-dev');
    }
    if (/cannot find -lc|crt1\.o|stdio\.h: No such file/.test(stderr)) {
      throw new GuestImageError(`gcc cannot link statically (no static libc): install the Debian packages gcc libc6-dev\n${stderr.trim()}`);
    }
    throw new GuestImageError(`gcc -static -O2 ${src} failed:\n${stderr.trim() || e.message}`);
  }
}

function cacheKey(workloadSource: Buffer): string {
  const h = crypto.createHash('sha256');
  h.update(`ferry-guest-image v${GUEST_IMAGE_VERSION}\n`);
  h.update(INIT_SCRIPT);
  h.update(BUSYBOX_LINKS.join(','));
  h.update(workloadSource);
  return h.digest('hex').slice(0, 16);
}

interface Manifest {
  version: number;
  kernelVersion: string;
  kernelDeb: string;
  busyboxDeb: string;
  builtAt: string;
}

function readCached(dir: string): TestGuest | null {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
    const kernel = path.join(dir, 'vmlinuz');
    const initrd = path.join(dir, 'initrd.gz');
    if (!fs.existsSync(kernel) || !fs.existsSync(initrd)) return null;
    return { kernel, initrd, kernelVersion: m.kernelVersion };
  } catch {
    return null;
  }
}

/**
 * The test guest's kernel and initramfs, built on first use (seconds: two package
 * downloads, one gcc run) and cached. Throws GuestImageError with what to install or run.
 */
export async function ensureTestGuest(opts: { dir?: string; log?: (l: string) => void } = {}): Promise<TestGuest> {
  const root = opts.dir ?? GUEST_CACHE_DIR;
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const source = fs.readFileSync(WORKLOAD_SOURCE);
  const key = cacheKey(source);
  const final = path.join(root, key);
  const cached = readCached(final);
  if (cached) return cached;

  fs.mkdirSync(root, { recursive: true });
  log(`ferry: building the QEMU test guest into ${final}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-build-'));
  // apt-get download runs as the _apt user when it can: let it write here.
  fs.chmodSync(work, 0o755);
  const staging = fs.mkdtempSync(path.join(root, `.build-${key}-`));
  fs.chmodSync(staging, 0o755);
  try {
    const kernelPkg = await resolveKernelPackage();
    const kdir = path.join(work, 'kernel');
    const bdir = path.join(work, 'busybox');
    fs.mkdirSync(kdir, { mode: 0o755 });
    fs.mkdirSync(bdir, { mode: 0o755 });
    const workloadBin = path.join(work, 'ferry-workload');
    // The downloads and the compile are independent.
    const [kernelDeb, busyboxDeb] = await Promise.all([
      fetchPackage(kernelPkg, kdir, log),
      fetchPackage(BUSYBOX_PACKAGE, bdir, log),
      compileWorkload(WORKLOAD_SOURCE, workloadBin),
    ]);

    const boot = path.join(kdir, 'root', 'boot');
    const vmlinuz = fs.existsSync(boot) ? fs.readdirSync(boot).find((f) => f.startsWith('vmlinuz-')) : undefined;
    if (!vmlinuz) throw new GuestImageError(`${kernelDeb} has no boot/vmlinuz-*`);
    const kernelVersion = vmlinuz.slice('vmlinuz-'.length);
    const busybox = path.join(bdir, 'root', 'bin', 'busybox');
    if (!fs.existsSync(busybox)) throw new GuestImageError(`${busyboxDeb} has no bin/busybox`);

    const entries: CpioEntry[] = [
      { type: 'dir', name: 'bin' },
      { type: 'dir', name: 'dev' },
      { type: 'chardev', name: 'dev/console', major: 5, minor: 1 },
      { type: 'dir', name: 'proc' },
      { type: 'dir', name: 'sys' },
      { type: 'dir', name: 'tmp', mode: 0o1777 },
      { type: 'file', name: 'bin/busybox', data: fs.readFileSync(busybox), mode: 0o755 },
      ...BUSYBOX_LINKS.map((l): CpioEntry => ({ type: 'symlink', name: `bin/${l}`, target: 'busybox' })),
      { type: 'file', name: 'bin/ferry-workload', data: fs.readFileSync(workloadBin), mode: 0o755 },
      { type: 'file', name: 'init', data: Buffer.from(INIT_SCRIPT), mode: 0o755 },
    ];
    fs.writeFileSync(path.join(staging, 'initrd.gz'), zlib.gzipSync(newcArchive(entries), { level: 9 }));
    fs.copyFileSync(path.join(boot, vmlinuz), path.join(staging, 'vmlinuz'));
    const manifest: Manifest = { version: GUEST_IMAGE_VERSION, kernelVersion, kernelDeb, busyboxDeb, builtAt: new Date().toISOString() };
    fs.writeFileSync(path.join(staging, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    try {
      fs.renameSync(staging, final);
    } catch (err) {
      // Another process built the same key meanwhile: keep theirs.
      const theirs = readCached(final);
      if (!theirs) throw err;
      fs.rmSync(staging, { recursive: true, force: true });
      return theirs;
    }
    log(`ferry: test guest ready (kernel ${kernelVersion}, ${busyboxDeb})`);
    const built = readCached(final);
    if (!built) throw new GuestImageError(`test guest build in ${final} is incomplete`);
    return built;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
