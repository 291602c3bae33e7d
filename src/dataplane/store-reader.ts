/**
 * Channel-1 snapshot reader: lists, validates and reads committed chunks and the manifest
 * (through the store's StoreIo: a read of storage that hangs fails with StorageStalledError),
 * opening sealed chunks with the cluster keys.
 */
import * as path from 'node:path';
import { sleep } from './rate';
import { CHUNK_RE, decodeChunk, isErrno, MANIFEST, parseManifest, parseSeq, StorageCorruptError, StorageTimeoutError } from './store-format';
import type { Chunk, Manifest, SnapshotKind } from './store-format';
import { defaultStoreContext, type StoreContext } from './store-io';

export interface ReaderStats {
  bytesRead: number;
  chunksRead: number;
}

export class SnapshotReader {
  private cached: Manifest | null = null;
  private readonly s: ReaderStats = { bytesRead: 0, chunksRead: 0 };

  constructor(
    readonly dir: string,
    readonly migrationId: string,
    readonly kind: SnapshotKind,
    private readonly ctx: StoreContext = defaultStoreContext(),
  ) {}

  stats(): ReaderStats {
    return { ...this.s };
  }

  /** Chunk names visible now, in write order, whether or not the manifest exists yet. */
  async committedChunks(): Promise<string[]> {
    let names: string[];
    try {
      names = await this.ctx.io.readdir(this.dir);
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return [];
      throw e;
    }
    return names.filter((n) => CHUNK_RE.test(n)).sort((a, b) => parseSeq(a) - parseSeq(b));
  }

  /**
   * The validated manifest, or null while the snapshot is not committed. Checks field types,
   * the manifest's own CRC, and that every chunk it lists exists with the listed size.
   * A committed snapshot is immutable, so the result is cached.
   */
  async manifest(): Promise<Manifest | null> {
    if (this.cached) return this.cached;
    const file = path.join(this.dir, MANIFEST);
    let text: string;
    try {
      text = (await this.ctx.io.readFile(file)).toString('utf8');
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return null;
      throw e;
    }
    this.s.bytesRead += Buffer.byteLength(text);
    const m = parseManifest(text, file, this.migrationId, this.kind);
    for (const c of m.chunks) {
      const cf = path.join(this.dir, c.name);
      let size: number;
      try {
        size = await this.ctx.io.size(cf);
      } catch (e) {
        if (isErrno(e, 'ENOENT')) throw new StorageCorruptError(cf, `listed in ${MANIFEST} but missing`);
        throw e;
      }
      if (size !== c.bytes) throw new StorageCorruptError(cf, `size ${size} bytes, ${MANIFEST} says ${c.bytes}`);
    }
    this.cached = m;
    return m;
  }

  /** Wait until the manifest exists (e.g. PbData in post-copy), polling every pollMs. */
  async waitForCommit(timeoutMs: number, signal?: AbortSignal, pollMs = 25): Promise<Manifest> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = await this.manifest();
      if (m) return m;
      const left = deadline - performance.now();
      if (left <= 0) throw new StorageTimeoutError(`${this.dir}: not committed within ${timeoutMs} ms`);
      await sleep(Math.min(pollMs, left), signal);
    }
  }

  /**
   * Read and validate one chunk (and, once the manifest exists, check it against the manifest).
   * With `into`, the chunk is read into that shared buffer when it fits: its pages are views of
   * it, valid until the caller reads another chunk into the same buffer.
   */
  async readChunk(name: string, into?: SharedArrayBuffer): Promise<Chunk> {
    const seq = parseSeq(name);
    const file = path.join(this.dir, name);
    let raw: Buffer;
    try {
      raw = await this.ctx.io.readFile(file, into);
    } catch (e) {
      if (isErrno(e, 'ENOENT')) throw new StorageCorruptError(file, 'chunk is missing');
      throw e;
    }
    this.s.bytesRead += raw.length;
    this.s.chunksRead++;
    const chunk = decodeChunk(raw, file, name, seq, { migrationId: this.migrationId, kind: this.kind, keys: this.ctx.keys });
    const m = this.cached;
    if (m) {
      const entry = m.chunks.find((c) => c.name === name);
      if (!entry) throw new StorageCorruptError(file, `not listed in ${MANIFEST}`);
      if (entry.bytes !== raw.length) throw new StorageCorruptError(file, `size ${raw.length} bytes, ${MANIFEST} says ${entry.bytes}`);
      const crc = raw.readUInt32LE(raw.length - 4);
      if (entry.crc32 !== crc) throw new StorageCorruptError(file, `crc32 ${crc} disagrees with ${MANIFEST} (${entry.crc32})`);
      if (chunk.pageSize !== m.pageSize || chunk.memoryPages !== m.pageCount) {
        throw new StorageCorruptError(file, `written for ${chunk.memoryPages} pages of ${chunk.pageSize} bytes, ${MANIFEST} says ${m.pageCount} of ${m.pageSize}`);
      }
    }
    return chunk;
  }
}
