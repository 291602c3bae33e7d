/**
 * Channel-1: shared storage (a directory; an NFS/SAN mount in production).
 *
 * Layout: `<root>/<migrationId>/<kind>/` with kind `static` (StaticData, the full-memory
 * snapshot) or `pbdata` (the pages still dirty at the post-copy switch). In it:
 *
 *   chunk-000000.bin, chunk-000001.bin, …   committed chunks (temp name, fsync, rename)
 *   manifest.json                          written last: the commit point
 *
 * A chunk is visible under its final name only once complete, so a reader may merge it
 * while the save is still running. A snapshot is *complete* only when `manifest.json`
 * exists; it is written to a temp name, fsynced, renamed, and the directory fsynced, so a
 * reader never sees a half-written snapshot as complete.
 *
 * Chunk format (little-endian), checksum CRC32 (zlib.crc32, IEEE polynomial):
 *
 *   0  magic "FRYC"        4  version u16 = 1     6  flags u16 = 0
 *   8  pageSize u32       12  memory pageCount u32
 *  16  seq u32            20  n = pages in chunk  24  stored = non-zero pages stored
 *  28  reserved u32 = 0
 *  32  pfns: n × u32
 *      zero flags: n × u8 (1 = all-zero page, elided: not stored), padded to 8 bytes
 *      data: stored × pageSize, the non-zero pages in pfn-list order
 *      crc32 u32 over every preceding byte
 *
 * Zero-page elision is on by default (`elideZeroPages: false` stores zero pages too).
 * The manifest lists every chunk with its size and CRC32 and carries a CRC32 of its own
 * JSON body, so a reader detects a damaged manifest, a chunk that disagrees with it, a
 * chunk it lists that is missing, and a truncated or flipped chunk: each a
 * `StorageCorruptError` naming the file.
 */
import { constants as fsc } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { UsageError } from '../common/errors';
import { Bitmap } from './bitmap';
import { realClock, type Clock } from './clock';
import { isZeroPage, type PageSource } from './pages';
import { sleep, TokenBucket } from './rate';

export type SnapshotKind = 'static' | 'pbdata';
export const SNAPSHOT_KINDS: readonly SnapshotKind[] = ['static', 'pbdata'];

/** Damaged or inconsistent data on shared storage. `file` is the offending path. */
export class StorageCorruptError extends Error {
  override readonly name = 'StorageCorruptError';
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`${file}: ${problem}`);
  }
}

export class StorageTimeoutError extends Error {
  override readonly name = 'StorageTimeoutError';
}

export interface ManifestChunk {
  name: string;
  pages: number;
  zeroPages: number;
  bytes: number;
  crc32: number;
}

export interface Manifest {
  format: 'ferry-snapshot';
  version: 1;
  migrationId: string;
  kind: SnapshotKind;
  pageSize: number;
  /** Pages of guest memory (every pfn is below this). */
  pageCount: number;
  checksum: 'crc32';
  chunks: ManifestChunk[];
  /** Pages in the snapshot (sum over chunks), zero pages included. */
  pages: number;
  zeroPages: number;
  /** Bytes of chunk files. */
  bytes: number;
  completed: true;
  committedAtMs: number;
}

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

export interface ReaderStats {
  bytesRead: number;
  chunksRead: number;
}

/** A validated chunk. `page(i)` is a view into the chunk buffer (or a shared zero page). */
export interface Chunk {
  name: string;
  seq: number;
  pageSize: number;
  /** Pages of guest memory the writer declared (every pfn is below it). */
  memoryPages: number;
  pfns: Uint32Array;
  bytes: number;
  crc32: number;
  isZero(i: number): boolean;
  page(i: number): Uint8Array;
}

const MAGIC = 0x43595246; // "FRYC" little-endian
const VERSION = 1;
const HEADER = 32;
const MANIFEST = 'manifest.json';
const CHUNK_RE = /^chunk-(\d{6,10})\.bin$/;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** CRC32 (IEEE). zlib.crc32 exists from Node 20.15; a table fallback covers older 20.x. */
export const crc32: (data: Uint8Array, value?: number) => number =
  typeof zlibCrc32 === 'function' ? zlibCrc32 : tableCrc32;

export class SharedStore {
  readonly root: string;

  constructor(rootDir: string) {
    this.root = path.resolve(rootDir);
  }

  dir(migrationId: string, kind: SnapshotKind): string {
    checkId(migrationId);
    if (!SNAPSHOT_KINDS.includes(kind)) throw new UsageError(`snapshot kind '${String(kind)}' is not one of ${SNAPSHOT_KINDS.join(', ')}`);
    return path.join(this.root, migrationId, kind);
  }

  async openWriter(migrationId: string, kind: SnapshotKind, opts: WriterOptions): Promise<SnapshotWriter> {
    const dir = this.dir(migrationId, kind);
    const w = new SnapshotWriter(dir, migrationId, kind, opts);
    await w.init();
    return w;
  }

  openReader(migrationId: string, kind: SnapshotKind): SnapshotReader {
    return new SnapshotReader(this.dir(migrationId, kind), migrationId, kind);
  }

  /** Delete every artefact of a migration (rollback cleanup). Idempotent. */
  async remove(migrationId: string): Promise<void> {
    checkId(migrationId);
    await fsp.rm(path.join(this.root, migrationId), { recursive: true, force: true });
  }
}

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
  private state: 'open' | 'committed' | 'aborted' = 'open';
  private committedManifest: Manifest | null = null;
  private readonly started: number;
  private ended: number | null = null;
  private readonly s = { bytesWritten: 0, pages: 0, zeroPages: 0, chunks: 0 };

  constructor(
    readonly dir: string,
    readonly migrationId: string,
    readonly kind: SnapshotKind,
    opts: WriterOptions,
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
    if (!this.resume) await fsp.rm(this.dir, { recursive: true, force: true });
    await fsp.mkdir(this.dir, { recursive: true });
    if (!this.resume) return;
    const reader = new SnapshotReader(this.dir, this.migrationId, this.kind);
    const m = await reader.manifest();
    const names = m ? m.chunks.map((c) => c.name) : await reader.committedChunks();
    for (const f of await fsp.readdir(this.dir)) if (f.endsWith('.tmp')) await fsp.rm(path.join(this.dir, f), { force: true });
    for (const name of names) {
      let chunk: Chunk;
      try {
        chunk = await reader.readChunk(name);
      } catch (e) {
        if (m || !(e instanceof StorageCorruptError)) throw e;
        await fsp.rm(path.join(this.dir, name), { force: true }); // rewritten by the caller
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
    // written and fsynced. Renames stay in chunk order.
    const known = (pfns as { length?: unknown }).length;
    const cap = typeof known === 'number' ? Math.max(1, Math.min(this.chunkPages, known)) : this.chunkPages;
    const bufs = [0, 1].map(() => new Uint8Array(chunkSize(cap, cap, this.pageSize)));
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
        const entry = this.buildChunk(buf, batch.subarray(0, n), seq, source);
        const chunkPfns = batch.slice(0, n);
        const waitMs = this.bucket.reserve(entry.bytes); // TokenBucket.take on this writer's clock
        if (waitMs > 0) await this.clock.sleep(waitMs, signal);
        await pending;
        if (failed) throw failed.error;
        pending = this.atomicWrite(entry.name, buf.subarray(0, entry.bytes)).then(
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
    };
    const text = JSON.stringify(body);
    const file = JSON.stringify({ ...body, manifestCrc32: crc32(Buffer.from(text)) }, null, 1) + '\n';
    await this.atomicWrite(MANIFEST, Buffer.from(file));
    if (this.durable) await fsyncDir(this.dir);
    this.state = 'committed';
    this.committedManifest = body;
    this.ended = this.clock.now();
    return body;
  }

  /** Stop and delete this snapshot's directory (committed or not). */
  async abort(): Promise<void> {
    this.state = 'aborted';
    this.ended ??= this.clock.now();
    await fsp.rm(this.dir, { recursive: true, force: true });
  }

  private async atomicWrite(name: string, data: Uint8Array): Promise<void> {
    const final = path.join(this.dir, name);
    const tmp = `${final}.tmp`;
    const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, 0o644);
    try {
      let off = 0;
      while (off < data.length) {
        const { bytesWritten } = await fh.write(data, off, data.length - off);
        off += bytesWritten;
      }
      if (this.durable) await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, final);
  }
}

export class SnapshotReader {
  private cached: Manifest | null = null;
  private readonly s: ReaderStats = { bytesRead: 0, chunksRead: 0 };

  constructor(
    readonly dir: string,
    readonly migrationId: string,
    readonly kind: SnapshotKind,
  ) {}

  stats(): ReaderStats {
    return { ...this.s };
  }

  /** Chunk names visible now, in write order, whether or not the manifest exists yet. */
  async committedChunks(): Promise<string[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.dir);
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
      text = await fsp.readFile(file, 'utf8');
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
        size = (await fsp.stat(cf)).size;
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

  /** Read and validate one chunk (and, once the manifest exists, check it against the manifest). */
  async readChunk(name: string): Promise<Chunk> {
    const seq = parseSeq(name);
    const file = path.join(this.dir, name);
    let raw: Buffer;
    try {
      raw = await fsp.readFile(file);
    } catch (e) {
      if (isErrno(e, 'ENOENT')) throw new StorageCorruptError(file, 'chunk is missing');
      throw e;
    }
    this.s.bytesRead += raw.length;
    this.s.chunksRead++;
    const chunk = decodeChunk(raw, file, name, seq);
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

export function decodeChunk(raw: Buffer, file: string, name: string, seq: number): Chunk {
  const bad = (problem: string): never => {
    throw new StorageCorruptError(file, problem);
  };
  if (raw.length < HEADER + 4) bad(`truncated: ${raw.length} bytes, shorter than a chunk header`);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (dv.getUint32(0, true) !== MAGIC) bad('bad magic (not a ferry chunk)');
  const version = dv.getUint16(4, true);
  if (version !== VERSION) bad(`unsupported chunk version ${version}`);
  const pageSize = dv.getUint32(8, true);
  const memPages = dv.getUint32(12, true);
  const hseq = dv.getUint32(16, true);
  const n = dv.getUint32(20, true);
  const stored = dv.getUint32(24, true);
  if (pageSize < 8 || pageSize % 8 !== 0 || stored > n) bad(`corrupt header (pageSize ${pageSize}, pages ${n}, stored ${stored})`);
  const flagsOff = HEADER + 4 * n;
  const dataOff = align8(flagsOff + n);
  const expected = dataOff + stored * pageSize + 4;
  if (raw.length !== expected) bad(`truncated or overlong: ${raw.length} bytes, header implies ${expected}`);
  const want = dv.getUint32(raw.length - 4, true);
  const got = crc32(raw.subarray(0, raw.length - 4));
  if (want !== got) bad(`checksum mismatch (crc32 stored ${want}, computed ${got})`);
  if (hseq !== seq) bad(`header sequence ${hseq} does not match the file name`);
  const pfns = new Uint32Array(n);
  const offsets = new Int32Array(n);
  let k = 0;
  for (let i = 0; i < n; i++) {
    const pfn = dv.getUint32(HEADER + 4 * i, true);
    if (pfn >= memPages) bad(`pfn ${pfn} outside 0..${memPages - 1}`);
    pfns[i] = pfn;
    const flag = raw[flagsOff + i];
    if (flag === 0) offsets[i] = dataOff + pageSize * k++;
    else if (flag === 1) offsets[i] = -1;
    else bad(`bad zero flag ${flag}`);
  }
  if (k !== stored) bad(`zero flags disagree with the stored page count`);
  const zero = new Uint8Array(pageSize);
  return {
    name,
    seq,
    pageSize,
    memoryPages: memPages,
    pfns,
    bytes: raw.length,
    crc32: want,
    isZero: (i) => (offsets[i] ?? -1) < 0,
    page: (i) => {
      if (!(i >= 0 && i < n)) throw new RangeError(`page index ${i} outside 0..${n - 1}`);
      const off = offsets[i] ?? -1;
      return off < 0 ? zero : raw.subarray(off, off + pageSize);
    },
  };
}

export function parseManifest(text: string, file: string, migrationId: string, kind: SnapshotKind): Manifest {
  const bad = (problem: string): never => {
    throw new StorageCorruptError(file, `malformed manifest: ${problem}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return bad(`not JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return bad('not an object');
  const { manifestCrc32, ...body } = raw as Record<string, unknown>;
  const uint = (v: unknown, field: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(`${field} must be a non-negative integer`);
    return v as number;
  };
  uint(manifestCrc32, 'manifestCrc32');
  if (crc32(Buffer.from(JSON.stringify(body))) !== manifestCrc32) bad('manifestCrc32 does not match its content');
  if (body.format !== 'ferry-snapshot') bad(`format must be 'ferry-snapshot'`);
  if (body.version !== 1) bad(`unsupported version ${String(body.version)}`);
  if (body.migrationId !== migrationId) bad(`migrationId ${JSON.stringify(body.migrationId)} is not ${migrationId}`);
  if (body.kind !== kind) bad(`kind ${JSON.stringify(body.kind)} is not ${kind}`);
  if (body.checksum !== 'crc32') bad(`checksum must be 'crc32'`);
  if (body.completed !== true) bad('completed must be true');
  for (const f of ['pageSize', 'pageCount', 'pages', 'zeroPages', 'bytes', 'committedAtMs']) uint(body[f], f);
  if (!Array.isArray(body.chunks)) return bad('chunks must be an array');
  let pages = 0;
  let bytes = 0;
  const seen = new Set<string>();
  body.chunks.forEach((c: unknown, i) => {
    if (typeof c !== 'object' || c === null) bad(`chunks[${i}] must be an object`);
    const e = c as Record<string, unknown>;
    if (typeof e.name !== 'string' || !CHUNK_RE.test(e.name) || seen.has(e.name)) bad(`chunks[${i}].name is invalid`);
    seen.add(e.name as string);
    for (const f of ['pages', 'zeroPages', 'bytes', 'crc32']) uint(e[f], `chunks[${i}].${f}`);
    pages += e.pages as number;
    bytes += e.bytes as number;
  });
  if (pages !== body.pages || bytes !== body.bytes) bad('totals disagree with the chunk list');
  return body as unknown as Manifest;
}

function chunkSize(n: number, stored: number, pageSize: number): number {
  return align8(HEADER + 5 * n) + stored * pageSize + 4;
}

function chunkName(seq: number): string {
  return `chunk-${String(seq).padStart(6, '0')}.bin`;
}

function parseSeq(name: string): number {
  const m = CHUNK_RE.exec(name);
  if (!m) throw new UsageError(`'${name}' is not a chunk name`);
  return Number(m[1]);
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new UsageError(`migration id '${String(id)}' is not a safe file name (letters, digits, '.', '_', '-'; up to 200)`);
  }
}

function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

async function fsyncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, 'r');
    await fh.sync();
  } catch (e) {
    // Some platforms/filesystems cannot fsync a directory; the rename is still atomic.
    if (!isErrno(e, 'EISDIR') && !isErrno(e, 'EINVAL') && !isErrno(e, 'EPERM') && !isErrno(e, 'EBADF')) throw e;
  } finally {
    await fh?.close();
  }
}

let table: Uint32Array | undefined;
function tableCrc32(data: Uint8Array, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = (table[(c ^ (data[i] ?? 0)) & 0xff] ?? 0) ^ (c >>> 8);
  return ~c >>> 0;
}
