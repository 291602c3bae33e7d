/**
 * Received chunks not yet consumed. peek(n) returns a contiguous view of the first n bytes,
 * merging chunks only when a record straddles them (and keeping the merge, so that retrying a
 * record as more bytes arrive does not copy again).
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (!first) return Buffer.alloc(0);
    if (first.length >= n) return first.subarray(0, n);
    return this.merge(n);
  }

  /**
   * At least n contiguous bytes from the front (the whole first chunk when it holds them, so
   * the record parsers find a record in one call, without a view per attempt).
   */
  peekAtLeast(n: number): Buffer {
    const first = this.chunks[0];
    if (!first) return Buffer.alloc(0);
    if (first.length >= n) return first;
    return this.merge(n);
  }

  private merge(n: number): Buffer {
    const merged = Buffer.allocUnsafe(n);
    let filled = 0;
    let i = 0;
    for (; filled < n; i++) {
      const c = this.chunks[i];
      if (!c) throw new Error('qemu stream reader: internal error, peek past the buffered bytes');
      const k = Math.min(c.length, n - filled);
      c.copy(merged, filled, 0, k);
      filled += k;
      if (k < c.length) {
        this.chunks.splice(0, i + 1, merged, c.subarray(k));
        return merged;
      }
    }
    this.chunks.splice(0, i, merged);
    return merged;
  }

  skip(n: number): void {
    let left = n;
    while (left > 0) {
      const c = this.chunks[0];
      if (!c) throw new Error('qemu stream reader: internal error, skip past the buffered bytes');
      if (c.length <= left) {
        this.chunks.shift();
        left -= c.length;
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
  }

  /** Remove and return every buffered byte. */
  takeAll(): Buffer {
    const out = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [];
    this.length = 0;
    return out;
  }

  /** Remove and return up to n bytes without copying: at most the first chunk. */
  takeSome(n: number): Buffer {
    const c = this.chunks[0];
    if (!c) return Buffer.alloc(0);
    const out = c.subarray(0, Math.min(n, c.length));
    this.skip(out.length);
    return out;
  }
}
