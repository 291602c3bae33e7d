/**
 * Guest RAM as one page index: QEMU names a page by (RAMBlock, offset in the block); ferry's
 * StaticData and its delivered-page bitmaps number pages 0..n-1. The blocks are laid end to
 * end in the order of the `ram` START's MEM_SIZE list, which both relays read from the same
 * stream, so the source and the target agree on every page number.
 */
import type { RamBlockInfo } from '../stream/format';
import { QemuStreamError, TARGET_PAGE_SIZE } from '../stream/format';

export class RamLayout {
  /** First page number of each block. */
  private readonly base = new Map<string, number>();
  private readonly pages = new Map<string, number>();
  readonly blocks: readonly RamBlockInfo[];
  readonly pageCount: number;

  constructor(
    blocks: readonly RamBlockInfo[],
    readonly pageSize = TARGET_PAGE_SIZE,
  ) {
    let next = 0;
    for (const b of blocks) {
      if (this.base.has(b.name)) throw new QemuStreamError('BAD_RAM_RECORD', 0, 'MEM_SIZE', `RAM block "${b.name}" is listed twice`);
      const n = Math.ceil(b.usedLength / pageSize);
      this.base.set(b.name, next);
      this.pages.set(b.name, n);
      next += n;
    }
    if (next > 0xffffffff) throw new QemuStreamError('BAD_RAM_RECORD', 0, 'MEM_SIZE', `${next} pages exceed the 2^32 pages StaticData can number`);
    this.blocks = blocks;
    this.pageCount = next;
  }

  /** The page number of (block, offset), or a QemuStreamError naming the record. */
  pfn(block: string, addr: number, at = 0): number {
    const base = this.base.get(block);
    if (base === undefined) throw new QemuStreamError('BAD_RAM_RECORD', at, 'RAM page', `block "${block}" is not in the MEM_SIZE list`);
    const i = Math.floor(addr / this.pageSize);
    if (addr % this.pageSize !== 0 || i >= (this.pages.get(block) ?? 0)) {
      throw new QemuStreamError('BAD_RAM_RECORD', at, 'RAM page', `offset ${addr} is not a page of block "${block}"`);
    }
    return base + i;
  }

  /** The page numbers of a block: [base, base + pages), or null if the stream has no such block. */
  range(block: string): { base: number; pages: number } | null {
    const base = this.base.get(block);
    return base === undefined ? null : { base, pages: this.pages.get(block)! };
  }

  /** (block, offset) of a page number. */
  locate(pfn: number): { block: string; addr: number } {
    for (const b of this.blocks) {
      const base = this.base.get(b.name)!;
      const n = this.pages.get(b.name)!;
      if (pfn >= base && pfn < base + n) return { block: b.name, addr: (pfn - base) * this.pageSize };
    }
    throw new RangeError(`page ${pfn} is outside the guest's ${this.pageCount} pages`);
  }
}
