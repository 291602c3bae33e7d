/**
 * The storage watchdog (src/dataplane/store-io.ts) on a call the kernel really blocks: opening
 * a FIFO blocks until the other end opens it. The blocked operation is abandoned after the
 * no-progress window, the storage then counts as hung (later operations fail at once, no
 * second thread parked), a late completion renames nothing into place, and once the blocked
 * call returns the storage is used again.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { StorageStalledError, WorkerStoreIo } from '../../src/dataplane/store';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hang-io-'));
const io = new WorkerStoreIo(400);
afterAll(() => {
  io.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Open the FIFO's other end (in a child, so this thread never blocks): the parked call returns. */
function release(fifo: string, flags: 'r' | 'w'): void {
  execFileSync('sh', ['-c', flags === 'r' ? `cat "${fifo}" > /dev/null` : `: > "${fifo}"`], { timeout: 5000 });
}

async function until(pred: () => boolean): Promise<void> {
  while (!pred()) await new Promise((r) => setTimeout(r, 10));
}

describe('storage watchdog on a blocked syscall', () => {
  it('a write that blocks is abandoned; the storage is hung until the call returns; nothing lands late', async () => {
    const final = path.join(dir, 'chunk-000000.bin');
    execFileSync('mkfifo', [`${final}.tmp`]);
    const err = await io.writeAtomic(final, Buffer.alloc(8192, 7), 0o600, false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageStalledError);
    expect((err as Error).message).toMatch(/storage hung: writeAtomic .*chunk-000000\.bin made no progress for 400 ms/);
    expect(io.blocked()).toBe(1);
    // Hung: a new operation is not tried (it would park another thread in the same place).
    await expect(io.readdir(dir)).rejects.toThrow(/not tried, a writeAtomic of .* has been blocked/);
    release(`${final}.tmp`, 'r');
    await until(() => io.blocked() === 0);
    expect(await io.readdir(dir)).not.toContain('chunk-000000.bin');
    expect(fs.existsSync(final)).toBe(false);
  });

  it('a read that blocks is abandoned the same way, and its late data is dropped', async () => {
    const fifo = path.join(dir, 'manifest.json');
    execFileSync('mkfifo', [fifo]);
    await expect(io.readFile(fifo)).rejects.toThrow(StorageStalledError);
    release(fifo, 'w');
    await until(() => io.blocked() === 0);
    fs.rmSync(fifo);
    fs.writeFileSync(fifo, 'after');
    expect((await io.readFile(fifo)).toString()).toBe('after');
  });
});
