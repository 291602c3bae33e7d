/**
 * Channel-1 snapshot writer: lays out chunks, commits them and, last, the manifest. Every
 * file operation goes through the store's StoreIo (store-io.ts: worker threads under a
 * no-progress watchdog), so storage that hangs fails a write with StorageStalledError
 * instead of blocking it for ever.
 */
import * as path from 'node:path';
import { UsageError } from '../common/errors';
import { Bitmap } from './bitmap';
import { realClock, type Clock } from './clock';
import { isZeroPage, type PageSource } from './pages';
import { TokenBucket } from './rate';
import { align8, chunkName, chunkSize, crc32, HEADER, MAGIC, MANIFEST, parseSeq, sealChunk, StorageCorruptError, VERSION } from './store-format';
import type { Chunk, Manifest, ManifestChunk, SnapshotKind } from './store-format';
import { defaultStoreContext, type StoreContext } from './store-io';
import { SnapshotReader } from './store-reader';

export interface WriterOptions {
  pageSize: number;
  pageCount: number;
  /** Storage rate cap in bytes/s; 0 or Infinity = uncapped. Settable later with setRate. */
  rateBytesPerSec?: number;
  /** Pages per chunk (default 1024: 4 MiB chunks at 4 KiB pages). */
  chunkPages?: number;
  /** Record all-zero pages as a flag instead of storing them (default true). */
  elideZeroPages?: boolean;
  /**
   * Keep the chunks already committed by an earlier attempt and continue after them
   * (a retried save activity). Damaged ones and temp files are dropped. Without it an
   * existing snapshot directory is cleared first.
   */
  resume?: boolean;
  /** fsync chunks and the manifest (default true; tests may turn it off for speed). */
  fsync?: boolean;
  /**
   * The clock the rate cap paces by and elapsedMs is measured on (default realClock).
   * Tests pass a virtual clock (ManualClock) to check the pacing exactly.
   */
  clock?: Clock;
}

export interface WriterStats {
  bytesWritten: number;
  pages: number;
  zeroPages: number;
  chunks: number;
  elapsedMs: number;
}

/** Snapshot files and directories: the agents' user only (they hold guest memory). */
export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;

export class SnapshotWriter {
  readonly pageSize: number;
  readonly pageCount: number;
  readonly chunkPages: number;
  /** Pfns in committed chunks of this snapshot (resumed ones included). */
  readonly covered: Bitmap;
  private readonly bucket: TokenBucket;
  private readonly clock: Clock;
  private readonly elide: boolean;
  private readonly durable: boolean;
  private readonly resume: boolean;
  private readonly chunks: ManifestChunk[] = [];
  private nextSeq = 0;
  private busy = false;
  /** The two chunk buffers writePages builds into, kept across calls. */
  private bufs: Uint8Array[] | null = null;
  private state: 'open' | 'committed' | 'aborted' = 'open';
  private committedManifest: Manifest | null = null;
  private readonly started: number;
  private ended: number | null = null;
  private readonly s = { bytesWritten: 0, pages: 0, zeroPages: 0, chunks: 0 };
  /**
   * Chunks are renamed into place as soon as written and fsynced one after another in the
   * background (not on the write path); commit waits for every one before the manifest.
   * A chunk lost to a crash before that fails its CRC and is rewritten on resume; the
   * manifest, written last, only ever names chunks that are on disk.
   */
  private syncs: Promise<void> = Promise.resolve();
  private syncError: unknown = null;

  constructor(
    readonly dir: string,
    readonly migrationId: string,
    readonly kind: SnapshotKind,
    opts: WriterOptions,
    private readonly ctx: StoreContext = defaultStoreContext(),
  ) {
    const { pageSize, pageCount } = opts;
    if (!Number.isInteger(pageSize) || pageSize < 8 || pageSize % 8 !== 0) throw new UsageError(`pageSize ${pageSize} must be a positive multiple of 8`);
    if (!Number.isInteger(pageCount) || pageCount < 0 || pageCount > 0xffffffff) throw new UsageError(`pageCount ${pageCount} is invalid`);
    this.pageSize = pageSize;
    this.pageCount = pageCount;
    this.chunkPages = opts.chunkPages ?? 1024;
    if (!Number.isInteger(this.chunkPages) || this.chunkPages < 1) throw new UsageError(`chunkPages ${this.chunkPages} must be a positive integer`);
    this.clock = opts.clock ?? realClock;
    this.started = this.clock.now();
    this.bucket = new TokenBucket(opts.rateBytesPerSec ?? 0, { now: () => this.clock.now() });
    this.elide = opts.elideZeroPages ?? true;
    this.durable = opts.fsync ?? true;
    this.resume = opts.resume ?? false;
    this.covered = new Bitmap(pageCount);
  }

  /** @internal called by SharedStore.openWriter */
  async init(): Promise<void> {
    const { io } = this.ctx;
    if (!this.resume) await io.rm(this.dir);
    // Guest memory: only the agents' user may list or read it (0700 directories, 0600
    // files), whatever the umask and whoever else can reach the shared mount. mkdir's mode
    // goes through the umask, so the mode is set again explicitly, on `dir` and on every
    // ancestor made here (existing ancestors are left as they are).
    await io.mkdirPrivate(path.dirname(this.dir), DIR_MODE);
    await io.mkdirPrivate(this.dir, DIR_MODE);
    if (!this.resume) return;
    const reader = new SnapshotReader(this.dir, this.migrationId, this.kind, this.ctx);
    const m = await reader.manifest();
    const names = m ? m.chunks.map((c) => c.name) : await reader.committedChunks();
    for (const f of await io.readdir(this.dir)) {
      if (f.endsWith('.tmp')) await io.rm(path.join(this.dir, f));
      else await io.chmod(path.join(this.dir, f), FILE_MODE); // an attempt by an older agent may have left 0644
    }
    for (const name of names) {
      let chunk: Chunk;
      try {
        chunk = await reader.readChunk(name);
      } catch (e) {
        if (m || !(e instanceof StorageCorruptError)) throw e;
        await io.rm(path.join(this.dir, name)); // rewritten by the caller
        continue;
      }
      if (chunk.pageSize !== this.pageSize || chunk.memoryPages !== this.pageCount) {
        throw new StorageCorruptError(path.join(this.dir, name), `written for ${chunk.memoryPages} pages of ${chunk.pageSize} bytes, writer has ${this.pageCount} of ${this.pageSize}`);
      }
      let zero = 0;
      for (let i = 0; i < chunk.pfns.length; i++) {
        this.covered.set(chunk.pfns[i] ?? 0);
        if (chunk.isZero(i)) zero++;
      }
      this.chunks.push({ name, pages: chunk.pfns.length, zeroPages: zero, bytes: chunk.bytes, crc32: chunk.crc32 });
      this.s.pages += chunk.pfns.length;
      this.s.zeroPages += zero;
      this.s.chunks++;
      this.nextSeq = Math.max(this.nextSeq, parseSeq(name) + 1);
    }
    if (m) {
      this.state = 'committed';
      this.committedManifest = m;
    }
  }

  get committed(): boolean {
    return this.state === 'committed';
  }

  /** Change the storage rate cap while writing (bytes/s; 0 or Infinity = uncapped). */
  setRate(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  stats(): WriterStats {
    return { ...this.s, elapsedMs: (this.ended ?? this.clock.now()) - this.started };
  }

  /**
   * Write these pages (read from `source` as each chunk is built) as committed chunks.
   * May be called several times; a call's last partial chunk is flushed before it returns.
   */
  async writePages(pfns: Iterable<number> | Uint32Array, source: PageSource, signal?: AbortSignal): Promise<void> {
    if (this.state !== 'open') throw new Error(`snapshot ${this.dir} is ${this.state}: cannot write`);
    if (this.busy) throw new Error(`snapshot ${this.dir}: writePages already running`);
    if (source.pageSize !== this.pageSize) throw new UsageError(`source page size ${source.pageSize} != snapshot page size ${this.pageSize}`);
    this.busy = true;
    // Two buffers: chunk k+1 is built (pages copied, zero check, CRC) while chunk k is
    // written (its fsync runs behind, see `syncs`). Renames stay in chunk order.
    const known = (pfns as { length?: unknown }).length;
    const cap = typeof known === 'number' ? Math.max(1, Math.min(this.chunkPages, known)) : this.chunkPages;
    // Shared memory: the storage worker thread writes a chunk straight from it, no copy
    // (each buffer is reused only after its write returned).
    // Kept across calls (a relay calls once per batch; a fresh multi-MiB buffer costs a page
    // fault per 4 KiB): every write from them returned before the previous call did.
    const size = chunkSize(cap, cap, this.pageSize);
    if (!this.bufs || this.bufs[0]!.length < size) this.bufs = [0, 1].map(() => new Uint8Array(new SharedArrayBuffer(size)));
    const bufs = this.bufs;
    const batch = new Uint32Array(cap);
    let pending: Promise<void> | undefined;
    let failed: { error: unknown } | undefined;
    try {
      const it = pfns[Symbol.iterator]();
      for (let k = 0; ; k++) {
        signal?.throwIfAborted();
        let n = 0;
        while (n < cap) {
          const r = it.next();
          if (r.done) break;
          const pfn = r.value;
          if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.pageCount) throw new RangeError(`pfn ${pfn} outside 0..${this.pageCount - 1}`);
          batch[n++] = pfn;
        }
        if (n === 0) break;
        const buf = bufs[k & 1] ?? bufs[0] ?? new Uint8Array(0);
        const seq = this.nextSeq++;
        const built = this.buildChunk(buf, batch.subarray(0, n), seq, source);
        const { entry, data } = this.seal(built, buf.subarray(0, built.bytes), seq);
        const chunkPfns = batch.slice(0, n);
        const waitMs = this.bucket.reserve(entry.bytes); // TokenBucket.take on this writer's clock
        if (waitMs > 0) await this.clock.sleep(waitMs, signal);
        await pending;
        if (failed) throw failed.error;
        pending = this.atomicWrite(entry.name, data, true).then(
          () => {
            if (this.state !== 'open') throw new Error(`snapshot ${this.dir} was ${this.state} while writing`);
            for (const p of chunkPfns) this.covered.set(p);
            this.chunks.push(entry);
            this.s.bytesWritten += entry.bytes;
            this.s.pages += entry.pages;
            this.s.zeroPages += entry.zeroPages;
            this.s.chunks++;
          },
        ).catch((error: unknown) => {
          failed ??= { error };
        });
      }
      await pending;
      if (failed) throw failed.error;
    } finally {
      await pending;
      this.busy = false;
    }
  }

  /** With storage encryption on, the chunk as stored is the sealed one (store-format.ts). */
  private seal(entry: ManifestChunk, plain: Uint8Array, seq: number): { entry: ManifestChunk; data: Uint8Array } {
    const key = this.ctx.encryptWith;
    if (!key) return { entry, data: plain };
    const data = sealChunk(plain, seq, key, this.migrationId, this.kind);
    return { entry: { ...entry, bytes: data.length, crc32: data.readUInt32LE(data.length - 4) }, data };
  }

  /** Lay out one chunk in `buf` (pages read from the source now); returns its manifest entry. */
  private buildChunk(buf: Uint8Array, pfns: Uint32Array, seq: number, source: PageSource): ManifestChunk {
    const ps = this.pageSize;
    const n = pfns.length;
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const flagsOff = HEADER + 4 * n;
    const dataOff = align8(flagsOff + n);
    buf.fill(0, 0, dataOff);
    let stored = 0;
    for (let i = 0; i < n; i++) {
      const pfn = pfns[i] ?? 0;
      dv.setUint32(HEADER + 4 * i, pfn, true);
      const slot = buf.subarray(dataOff + stored * ps, dataOff + (stored + 1) * ps);
      source.readPage(pfn, slot);
      if (this.elide && isZeroPage(slot)) buf[flagsOff + i] = 1;
      else stored++;
    }
    dv.setUint32(0, MAGIC, true);
    dv.setUint16(4, VERSION, true);
    dv.setUint16(6, 0, true);
    dv.setUint32(8, ps, true);
    dv.setUint32(12, this.pageCount, true);
    dv.setUint32(16, seq, true);
    dv.setUint32(20, n, true);
    dv.setUint32(24, stored, true);
    dv.setUint32(28, 0, true);
    const end = dataOff + stored * ps;
    const crc = crc32(buf.subarray(0, end));
    dv.setUint32(end, crc, true);
    return { name: chunkName(seq), pages: n, zeroPages: n - stored, bytes: end + 4, crc32: crc };
  }

  /** Write the manifest last (temp + fsync + rename + fsync dir). Idempotent once committed. */
  async commit(): Promise<Manifest> {
    if (this.state === 'committed' && this.committedManifest) return this.committedManifest;
    if (this.state !== 'open') throw new Error(`snapshot ${this.dir} is ${this.state}: cannot commit`);
    if (this.busy) throw new Error(`snapshot ${this.dir}: commit while writePages is running`);
    const chunks = [...this.chunks].sort((a, b) => parseSeq(a.name) - parseSeq(b.name));
    const body: Manifest = {
      format: 'ferry-snapshot',
      version: 1,
      migrationId: this.migrationId,
      kind: this.kind,
      pageSize: this.pageSize,
      pageCount: this.pageCount,
      checksum: 'crc32',
      chunks,
      pages: chunks.reduce((a, c) => a + c.pages, 0),
      zeroPages: chunks.reduce((a, c) => a + c.zeroPages, 0),
      bytes: chunks.reduce((a, c) => a + c.bytes, 0),
      completed: true,
      committedAtMs: Date.now(),
      ...(this.ctx.encryptWith ? { encryption: { algorithm: 'aes-256-gcm' as const, keyId: this.ctx.encryptWith.id } } : {}),
    };
    await this.syncs;
    if (this.syncError) throw this.syncError;
    const text = JSON.stringify(body);
    const file = JSON.stringify({ ...body, manifestCrc32: crc32(Buffer.from(text)) }, null, 1) + '\n';
    await this.atomicWrite(MANIFEST, Buffer.from(file));
    if (this.durable) await this.ctx.io.fsync(this.dir);
    this.state = 'committed';
    this.committedManifest = body;
    this.ended = this.clock.now();
    return body;
  }

  /** Stop and delete this snapshot's directory (committed or not). */
  async abort(): Promise<void> {
    this.state = 'aborted';
    this.ended ??= this.clock.now();
    await this.ctx.io.rm(this.dir);
  }

  /**
   * Temp file, written (and fsynced unless deferred), renamed into place. A deferred fsync
   * runs behind, chunk after chunk (see `syncs`); commit waits for them.
   */
  private async atomicWrite(name: string, data: Uint8Array, deferSync = false): Promise<void> {
    const final = path.join(this.dir, name);
    const { io } = this.ctx;
    await io.writeAtomic(final, data, FILE_MODE, this.durable && !deferSync);
    if (this.durable && deferSync) {
      this.syncs = this.syncs.then(() => io.fsync(final)).catch((e: unknown) => {
        this.syncError ??= e;
      });
    }
  }
}
