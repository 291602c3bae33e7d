/**
 * Storage that hangs for the fault scenarios: test/fixtures/hangfs.py (a passthrough FUSE
 * filesystem, python3-fusepy) mounted over the shared storage directory, whose operations
 * block in the kernel on command, as on a hard NFS mount whose server went away. The mount
 * is made on the shared storage mount point, so it reaches the agents' namespaces too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../common/paths';
import { run } from '../../support/shell';

const SCRIPT = path.join(REPO_ROOT, 'test', 'fixtures', 'hangfs.py');
/** Debian's python3-fusepy lives in the system interpreter, not in a pyenv or venv one. */
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export interface HangFs {
  mountpoint: string;
  /** Block every operation whose "<op> <path>" matches `expr` (see hangfs.py). */
  hang(expr: string): void;
  release(): void;
  /** Release, unmount (fusermount3 -u), stop the daemon, remove the backing directory. */
  unmount(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function mounted(mountpoint: string): boolean {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === mountpoint && l.includes('fuse'));
}

/** Why hanging storage cannot be made here, or null. */
export function hangFsUnavailable(): string | null {
  if (!fs.existsSync('/dev/fuse')) return 'no /dev/fuse';
  const r = run(PYTHON, ['-c', 'import fusepy'], { check: false });
  if (!r.ok) return `${PYTHON} cannot import fusepy (install the Debian packages fuse3 python3-fusepy): ${r.err.trim()}`;
  return null;
}

export async function mountHangFs(mountpoint: string): Promise<HangFs> {
  const why = hangFsUnavailable();
  if (why) throw new Error(`hanging storage: ${why}`);
  const backing = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hangfs-'));
  const control = path.join(backing, '..', `${path.basename(backing)}.control`);
  const child: ChildProcess = spawn(PYTHON, [SCRIPT, backing, mountpoint, control], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let t = 0; !(output.includes('mounted') && mounted(mountpoint)); t++) {
    if (child.exitCode !== null || t > 200) {
      child.kill('SIGKILL');
      throw new Error(`hangfs did not mount on ${mountpoint}: ${output.trim() || `exit ${String(child.exitCode)}`}`);
    }
    await sleep(50);
  }
  const release = (): void => fs.rmSync(control, { force: true });
  return {
    mountpoint,
    hang: (expr) => fs.writeFileSync(control, expr),
    release,
    async unmount() {
      release();
      // Blocked calls return once released; then the mount is no longer busy.
      for (let t = 0; mounted(mountpoint) && t < 40; t++) {
        if (run('fusermount3', ['-u', mountpoint], { check: false }).ok) break;
        await sleep(250);
      }
      if (mounted(mountpoint)) run('umount', ['-l', mountpoint], { check: false });
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(3000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
      fs.rmSync(backing, { recursive: true, force: true });
    },
  };
}
