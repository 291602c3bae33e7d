/**
 * Shared storage for the fault fixtures: a tmpfs both agents see (mounted shared, so a mount
 * made on it later reaches the agents' mount namespaces too). A scenario can fill it
 * (resize) or make it vanish (an empty read-only tmpfs over it).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pidAlive, run } from './shell';

const MiB = 1024 ** 2;

/** Directory name prefix of the mounts, followed by the owner's pid (`ferry-netns-<pid>-…`). */
export const MOUNT_MARK = 'ferry-netns-';

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

/** Mount points of test storage whose owner process is gone, deepest first. */
export function staleMounts(): string[] {
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
