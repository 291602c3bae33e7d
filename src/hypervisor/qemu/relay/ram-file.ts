/**
 * The target QEMU's RAM block as a file the agent writes (tmpfs, `share=on`): par-migrate's
 * merge puts StaticData pages there directly, not through QEMU's stream (target-relay.ts,
 * docs/design/qemu-stream.md §7). Writes are synchronous on purpose: the relay checks "newer
 * copy delivered" and writes in one step, with no record forwarded to QEMU in between.
 */
import fs from 'node:fs';
import { Bitmap } from '../../../dataplane/bitmap';
import type { Chunk } from '../../../dataplane/store-format';
import type { RamLayout } from './layout';

export class RamFile {
  /**
   * The block's pages this file was written at (block-relative): QEMU never loaded them, so its
   * `receivedmap` does not have them (recovery.ts).
   */
  readonly written: Bitmap;

  private constructor(
    private readonly fd: number,
    /** The block's page numbers: [base, base + pages). */
    readonly base: number,
    readonly pages: number,
    private readonly pageSize: number,
  ) {
    this.written = new Bitmap(pages);
  }

  /** Open `path` as block `block` of this stream's RAM; a reason (string) when it cannot be used. */
  static open(path: string, block: string, layout: RamLayout): RamFile | string {
    const range = layout.range(block);
    if (!range) return `the stream has no RAM block "${block}"`;
    let fd: number;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (e) {
      return `the RAM file ${path} cannot be opened (${(e as Error).message})`;
    }
    const size = fs.fstatSync(fd).size;
    const want = range.pages * layout.pageSize;
    if (size < want) {
      fs.closeSync(fd);
      return `the RAM file ${path} holds ${size} bytes; block "${block}" has ${want}`;
    }
    return new RamFile(fd, range.base, range.pages, layout.pageSize);
  }

  holds(pfn: number): boolean {
    return pfn >= this.base && pfn < this.base + this.pages;
  }

  /**
   * Write the chunk's pages from index `from` on, as long as they belong to this file, each
   * where `delivered` has no newer copy; consecutive pages in one write. Returns the index of
   * the first page not handled and the pages written and skipped.
   */
  write(chunk: Chunk, from: number, delivered: Bitmap): { next: number; written: number; skipped: number } {
    let run: Uint8Array[] = [];
    let runStart = -1;
    let written = 0;
    let skipped = 0;
    const flush = () => {
      if (run.length) fs.writevSync(this.fd, run, (runStart - this.base) * this.pageSize);
      run = [];
    };
    let i = from;
    for (; i < chunk.pfns.length && this.holds(chunk.pfns[i]!); i++) {
      const pfn = chunk.pfns[i]!;
      if (delivered.get(pfn)) {
        skipped++;
        flush();
        continue;
      }
      if (run.length && pfn !== runStart + run.length) flush();
      if (!run.length) runStart = pfn;
      run.push(chunk.page(i));
      this.written.set(pfn - this.base);
      written++;
    }
    flush();
    return { next: i, written, skipped };
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
