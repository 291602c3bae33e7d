/**
 * A dense bit set over page frame numbers 0..size-1, backed by a Uint32Array.
 *
 * Used for dirty logs, SBitmap, "has a dynamic version" on the target, and missing-page
 * sets. `encode()` gives a JSON-safe form ({ size, bits: base64 of the words, little-endian })
 * that can travel through Temporal payloads and heartbeats; `Bitmap.decode` reverses it.
 */
export interface EncodedBitmap {
  size: number;
  /** base64 of the little-endian 32-bit words; bits at and beyond `size` are zero. */
  bits: string;
}

export class Bitmap implements Iterable<number> {
  readonly size: number;
  readonly words: Uint32Array;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 0 || size > 0xffffffff) throw new RangeError(`bitmap size ${size} is invalid`);
    this.size = size;
    this.words = new Uint32Array(Math.ceil(size / 32));
  }

  static fromPfns(size: number, pfns: Iterable<number>): Bitmap {
    const b = new Bitmap(size);
    for (const p of pfns) b.set(p);
    return b;
  }

  /** Every bit set. */
  static full(size: number): Bitmap {
    const b = new Bitmap(size);
    b.words.fill(0xffffffff);
    b.maskTail();
    return b;
  }

  static decode(e: EncodedBitmap): Bitmap {
    if (typeof e !== 'object' || e === null || typeof e.bits !== 'string') throw new TypeError('encoded bitmap: expected { size, bits }');
    const b = new Bitmap(e.size);
    const raw = Buffer.from(e.bits, 'base64');
    if (raw.length !== b.words.length * 4) {
      throw new RangeError(`encoded bitmap: ${raw.length} bytes for size ${e.size} (expected ${b.words.length * 4})`);
    }
    for (let i = 0; i < b.words.length; i++) b.words[i] = raw.readUInt32LE(i * 4);
    b.maskTail();
    return b;
  }

  encode(): EncodedBitmap {
    const raw = Buffer.allocUnsafe(this.words.length * 4);
    for (let i = 0; i < this.words.length; i++) raw.writeUInt32LE(this.words[i] ?? 0, i * 4);
    return { size: this.size, bits: raw.toString('base64') };
  }

  get(pfn: number): boolean {
    this.check(pfn);
    return (((this.words[pfn >>> 5] ?? 0) >>> (pfn & 31)) & 1) === 1;
  }

  set(pfn: number): void {
    this.check(pfn);
    this.words[pfn >>> 5] = (this.words[pfn >>> 5] ?? 0) | (1 << (pfn & 31));
  }

  clear(pfn: number): void {
    this.check(pfn);
    this.words[pfn >>> 5] = (this.words[pfn >>> 5] ?? 0) & ~(1 << (pfn & 31));
  }

  clearAll(): void {
    this.words.fill(0);
  }

  /** Number of set bits. */
  count(): number {
    let n = 0;
    for (let i = 0; i < this.words.length; i++) {
      let v = this.words[i] ?? 0;
      v = v - ((v >>> 1) & 0x55555555);
      v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
      n += (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
    }
    return n;
  }

  /** Set this |= other (same size). */
  or(other: Bitmap): this {
    this.sameSize(other);
    for (let i = 0; i < this.words.length; i++) this.words[i] = (this.words[i] ?? 0) | (other.words[i] ?? 0);
    return this;
  }

  /** Set this &= ~other (same size). */
  andNot(other: Bitmap): this {
    this.sameSize(other);
    for (let i = 0; i < this.words.length; i++) this.words[i] = (this.words[i] ?? 0) & ~(other.words[i] ?? 0);
    return this;
  }

  clone(): Bitmap {
    const b = new Bitmap(this.size);
    b.words.set(this.words);
    return b;
  }

  /** Set bits in ascending order. */
  *[Symbol.iterator](): Iterator<number> {
    for (let i = 0; i < this.words.length; i++) {
      let w = this.words[i] ?? 0;
      while (w !== 0) {
        const low = w & -w;
        yield i * 32 + 31 - Math.clz32(low);
        w ^= low;
      }
    }
  }

  /** Set bits in ascending order, as a Uint32Array. */
  toPfns(): Uint32Array {
    const out = new Uint32Array(this.count());
    let k = 0;
    for (const p of this) out[k++] = p;
    return out;
  }

  /** Get-and-clear, like collecting a dirty log: returns the set bits and clears them. */
  drain(): Uint32Array {
    const out = this.toPfns();
    this.clearAll();
    return out;
  }

  private check(pfn: number): void {
    if (!(pfn >= 0 && pfn < this.size) || !Number.isInteger(pfn)) throw new RangeError(`pfn ${pfn} outside 0..${this.size - 1}`);
  }

  private sameSize(other: Bitmap): void {
    if (other.size !== this.size) throw new RangeError(`bitmap sizes differ: ${this.size} vs ${other.size}`);
  }

  private maskTail(): void {
    const rem = this.size & 31;
    if (rem !== 0 && this.words.length > 0) {
      const last = this.words.length - 1;
      this.words[last] = (this.words[last] ?? 0) & ((1 << rem) - 1);
    }
  }
}
