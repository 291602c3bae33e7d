/**
 * Incoming guests' RAM as files on tmpfs (`memory-backend-file,share=on`), which the target
 * agent's relay writes StaticData pages into (relay/ram-file.ts): where the files live and
 * whether tmpfs has room for one more.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** The RAM block a RAM file backs: the name `-m` gives it, so such guests migrate to and from `-m` guests. */
export const RAM_FILE_BLOCK = 'pc.ram';

/** What tmpfs keeps free beyond every RAM file's guest. */
const SHM_MARGIN_BYTES = 256 * 2 ** 20;

/** The tmpfs file an incoming guest's RAM lives in, named after its state directory (one per VM and agent). */
export function ramFilePath(vmDir: string): string {
  return `/dev/shm/ferry-ram-${createHash('sha256').update(path.resolve(vmDir)).digest('hex').slice(0, 20)}`;
}

/**
 * Whether tmpfs can take one more guest's RAM file. tmpfs allocates as pages are written, and a
 * full one faults the guest instead of failing QEMU's start: so the free space, less what the
 * RAM files already there will still take (promised − held), must cover the new guest and a margin.
 */
export function shmRoom(o: { freeBytes: number; promisedBytes: number; heldBytes: number; wantBytes: number }): boolean {
  return o.freeBytes - Math.max(0, o.promisedBytes - o.heldBytes) >= o.wantBytes + SHM_MARGIN_BYTES;
}

/** One agent's claims on tmpfs: its guests' RAM files and the launches in flight. */
export class ShmReservations {
  /** RAM-file bytes of launches in flight (not yet among the guests). */
  private pending = 0;

  /** Room for `bytes` more beside these guests' files (path, guest memory)? Reserved if so: release() it once the launch ended. */
  reserve(bytes: number, files: Iterable<{ path: string; bytes: number }>): boolean {
    let promised = this.pending;
    let held = 0;
    for (const f of files) {
      promised += f.bytes;
      try {
        held += fs.statSync(f.path).blocks * 512;
      } catch {
        // gone with its QEMU
      }
    }
    let free: number;
    try {
      const st = fs.statfsSync('/dev/shm');
      free = st.bavail * st.bsize;
    } catch {
      return false;
    }
    if (!shmRoom({ freeBytes: free, promisedBytes: promised, heldBytes: held, wantBytes: bytes })) return false;
    this.pending += bytes;
    return true;
  }

  release(bytes: number): void {
    this.pending -= bytes;
  }
}
