/**
 * Guest RAM: `pageCount` pages of `pageSize` bytes held in SharedArrayBuffers of at most
 * `chunkBytes` (1 GiB by default) so that any size up to 8 GiB and beyond works and
 * worker threads (the vCPUs) can attach to the same memory through `descriptor()`.
 *
 * Two bitmaps, one bit per page, each in its own SharedArrayBuffer (Int32Array words, so
 * that Atomics work on them and vCPUs can Atomics.wait on them):
 *
 * - dirty log: a guest write sets the page's bit with Atomics.or AFTER the page bytes are
 *   written. collectDirty() takes bits with Atomics.exchange(word, 0) BEFORE the caller
 *   reads the pages. Atomics are sequentially consistent, so a reader that took a bit sees
 *   every byte written before it was set; a write still in progress when the bit was taken
 *   sets the bit again when it finishes, and the next collect picks the page up again.
 *   Hence a collect-then-copy loop can never miss a write, only copy a page twice.
 * - present bitmap (post-copy): 1 = the page's content is here. installPage() writes the
 *   bytes, then sets the bit (Atomics.or), then Atomics.notify()s the word, which wakes any
 *   vCPU blocked in Atomics.wait on it (the vCPU re-checks its own bit, so waking for a
 *   neighbour page in the same word is harmless).
 */
import { UsageError } from '../common/errors';
import { DEFAULT_PAGE_SIZE, type PageSink, type PageSource } from '../dataplane/pages';

export const DEFAULT_CHUNK_BYTES = 1024 ** 3;

/** Everything a worker thread needs to attach to the same memory (structured-clonable). */
export interface GuestMemoryDescriptor {
  pageSize: number;
  pageCount: number;
  pagesPerChunk: number;
  chunks: SharedArrayBuffer[];
  dirty: SharedArrayBuffer;
  present: SharedArrayBuffer;
}

export interface GuestMemoryOptions {
  pageSize?: number;
  /** Bytes per SharedArrayBuffer (power of two, multiple of pageSize). Default 1 GiB. */
  chunkBytes?: number;
}

const isPow2 = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

export class GuestMemory implements PageSource, PageSink {
  readonly pageSize: number;
  readonly pageCount: number;
  readonly pagesPerChunk: number;
  private readonly chunks: SharedArrayBuffer[];
  private readonly bytes: Uint8Array[];
  private readonly words: Int32Array[];
  private readonly dirty: Int32Array;
  private readonly present: Int32Array;
  private readonly dirtySab: SharedArrayBuffer;
  private readonly presentSab: SharedArrayBuffer;

  private constructor(d: GuestMemoryDescriptor) {
    this.pageSize = d.pageSize;
    this.pageCount = d.pageCount;
    this.pagesPerChunk = d.pagesPerChunk;
    this.chunks = d.chunks;
    this.bytes = d.chunks.map((c) => new Uint8Array(c));
    this.words = d.chunks.map((c) => new Int32Array(c));
    this.dirtySab = d.dirty;
    this.presentSab = d.present;
    this.dirty = new Int32Array(d.dirty);
    this.present = new Int32Array(d.present);
  }

  /** Allocate zeroed RAM (SharedArrayBuffers are zero-filled and committed lazily by the OS). */
  static create(memoryBytes: number, opts: GuestMemoryOptions = {}): GuestMemory {
    const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
    const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!isPow2(pageSize) || pageSize < 64 || pageSize > 1 << 24) {
      throw new UsageError(`page size: ${pageSize} is not a power of two between 64 and 16MiB`);
    }
    if (!isPow2(chunkBytes) || chunkBytes < pageSize) {
      throw new UsageError(`chunk size: ${chunkBytes} must be a power of two and at least one page`);
    }
    if (!Number.isSafeInteger(memoryBytes) || memoryBytes <= 0 || memoryBytes % pageSize !== 0) {
      throw new UsageError(`memory size: ${memoryBytes} is not a positive multiple of the page size ${pageSize}`);
    }
    const pageCount = memoryBytes / pageSize;
    if (pageCount >= 2 ** 31) throw new UsageError(`memory size: ${memoryBytes} bytes is more than 2^31 pages`);
    const pagesPerChunk = chunkBytes / pageSize;
    const chunks: SharedArrayBuffer[] = [];
    for (let left = pageCount; left > 0; left -= pagesPerChunk) {
      chunks.push(new SharedArrayBuffer(Math.min(left, pagesPerChunk) * pageSize));
    }
    const bitmapBytes = Math.ceil(pageCount / 32) * 4;
    const d: GuestMemoryDescriptor = {
      pageSize,
      pageCount,
      pagesPerChunk,
      chunks,
      dirty: new SharedArrayBuffer(bitmapBytes),
      present: new SharedArrayBuffer(bitmapBytes),
    };
    const m = new GuestMemory(d);
    m.present.fill(-1); // every page present (a fresh, local VM)
    m.clearTailBits(m.present);
    return m;
  }

  /** Attach to memory created elsewhere (another thread, via descriptor()). */
  static attach(d: GuestMemoryDescriptor): GuestMemory {
    return new GuestMemory(d);
  }

  descriptor(): GuestMemoryDescriptor {
    return {
      pageSize: this.pageSize,
      pageCount: this.pageCount,
      pagesPerChunk: this.pagesPerChunk,
      chunks: this.chunks,
      dirty: this.dirtySab,
      present: this.presentSab,
    };
  }

  get memoryBytes(): number {
    return this.pageCount * this.pageSize;
  }

  private check(pfn: number): void {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.pageCount) {
      throw new RangeError(`pfn ${pfn} out of range 0..${this.pageCount - 1}`);
    }
  }

  /** A view of page `pfn` (no copy). Writing through it does not set the dirty bit. */
  page(pfn: number): Uint8Array {
    this.check(pfn);
    const c = Math.floor(pfn / this.pagesPerChunk);
    const off = (pfn - c * this.pagesPerChunk) * this.pageSize;
    return this.bytes[c]!.subarray(off, off + this.pageSize);
  }

  /** Int32 view of the chunk holding `pfn` and the page's first word index in it. */
  pageWords(pfn: number): { words: Int32Array; base: number } {
    this.check(pfn);
    const c = Math.floor(pfn / this.pagesPerChunk);
    return { words: this.words[c]!, base: ((pfn - c * this.pagesPerChunk) * this.pageSize) >>> 2 };
  }

  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.page(pfn));
  }

  /**
   * Raw write, as the migration data plane does it on the target: copies the bytes and
   * marks the page present (waking any vCPU waiting for it). Does NOT set the dirty bit:
   * the dirty log records guest writes only. To write as the guest does, use guestWrite().
   */
  writePage(pfn: number, src: Uint8Array): void {
    if (src.length !== this.pageSize) throw new RangeError(`page data is ${src.length} bytes, expected ${this.pageSize}`);
    this.page(pfn).set(src);
    this.setPresent(pfn);
  }

  /** A guest-style write from this thread: bytes first, then the dirty bit. */
  guestWrite(pfn: number, src: Uint8Array): void {
    if (src.length !== this.pageSize) throw new RangeError(`page data is ${src.length} bytes, expected ${this.pageSize}`);
    this.page(pfn).set(src);
    this.markDirty(pfn);
  }

  // ---- dirty log -------------------------------------------------------------------

  /** Set the dirty bit of `pfn` (call after the write has completed). */
  markDirty(pfn: number): void {
    this.check(pfn);
    Atomics.or(this.dirty, pfn >>> 5, 1 << (pfn & 31));
  }

  isDirty(pfn: number): boolean {
    this.check(pfn);
    return (Atomics.load(this.dirty, pfn >>> 5) & (1 << (pfn & 31))) !== 0;
  }

  /** Get-and-clear the dirty log (word by word, atomically). Returns pfns in ascending order. */
  collectDirty(): Uint32Array {
    const d = this.dirty;
    let out = new Uint32Array(Math.min(this.pageCount, 4096));
    let n = 0;
    for (let w = 0; w < d.length; w++) {
      if (Atomics.load(d, w) === 0) continue;
      let bits = Atomics.exchange(d, w, 0);
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        if (n === out.length) {
          const bigger = new Uint32Array(Math.min(this.pageCount, out.length * 2));
          bigger.set(out);
          out = bigger;
        }
        out[n++] = w * 32 + (31 - Math.clz32(low));
      }
    }
    return out.slice(0, n);
  }

  clearDirty(): void {
    for (let w = 0; w < this.dirty.length; w++) Atomics.store(this.dirty, w, 0);
  }

  /** Number of dirty pages right now (no clear). */
  dirtyCount(): number {
    let n = 0;
    for (let w = 0; w < this.dirty.length; w++) n += popcount(Atomics.load(this.dirty, w));
    return n;
  }

  // ---- present bitmap (post-copy) ----------------------------------------------------

  isPresent(pfn: number): boolean {
    this.check(pfn);
    return (Atomics.load(this.present, pfn >>> 5) & (1 << (pfn & 31))) !== 0;
  }

  /** Mark pages missing: a vCPU touching one blocks until it is installed. */
  markMissing(pfns: Iterable<number>): void {
    for (const pfn of pfns) {
      this.check(pfn);
      Atomics.and(this.present, pfn >>> 5, ~(1 << (pfn & 31)));
    }
  }

  /** Mark every page missing (a post-copy target before any page has arrived). */
  markAllMissing(): void {
    for (let w = 0; w < this.present.length; w++) Atomics.store(this.present, w, 0);
  }

  missingCount(): number {
    let present = 0;
    for (let w = 0; w < this.present.length; w++) present += popcount(Atomics.load(this.present, w));
    return this.pageCount - present;
  }

  missingPfns(): Uint32Array {
    const out = new Uint32Array(this.missingCount());
    let n = 0;
    for (let w = 0; w < this.present.length && n < out.length; w++) {
      let bits = ~Atomics.load(this.present, w);
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        const pfn = w * 32 + (31 - Math.clz32(low));
        if (pfn < this.pageCount) out[n++] = pfn;
      }
    }
    return out;
  }

  /**
   * Post-copy arrival: if `pfn` is still missing, write `data` and mark it present (waking
   * vCPUs blocked on it) and return true. If it is already present (an earlier copy
   * arrived, and the guest may have written it since), leave it alone and return false.
   * Call from one thread only (the thread that also runs writePage on this memory).
   */
  installPage(pfn: number, data: Uint8Array): boolean {
    if (this.isPresent(pfn)) return false;
    if (data.length !== this.pageSize) throw new RangeError(`page data is ${data.length} bytes, expected ${this.pageSize}`);
    this.page(pfn).set(data);
    this.setPresent(pfn);
    return true;
  }

  private setPresent(pfn: number): void {
    const w = pfn >>> 5;
    const bit = 1 << (pfn & 31);
    if ((Atomics.or(this.present, w, bit) & bit) === 0) Atomics.notify(this.present, w);
  }

  private clearTailBits(bitmap: Int32Array): void {
    const tail = this.pageCount & 31;
    if (tail !== 0) bitmap[bitmap.length - 1] = (1 << tail) - 1;
  }
}

function popcount(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}
