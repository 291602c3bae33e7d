/**
 * The on-storage format of a snapshot (see store.ts for the directory layout and the
 * commit protocol): chunk encoding/decoding, manifest parsing, and the helpers the
 * writer and reader share.
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
 *
 * Encryption at rest (optional, FERRY_STORAGE_ENCRYPTION=1 with a cluster key): the chunk
 * above, whole (its CRC included), is sealed with AES-256-GCM under the cluster key and
 * stored as
 *
 *   0  magic "FRYE"        4  version u16 = 1     6  algorithm u16 = 1 (aes-256-gcm)
 *   8  key id: 4 bytes (the 8 hex digits of the cluster key's id)
 *  12  nonce: 12 random bytes, one per chunk
 *  24  plain length u32   28  seq u32
 *  32  ciphertext (plain length bytes)   then the 16-byte GCM tag
 *      crc32 u32 over every preceding byte
 *
 * The additional data is the 32-byte header and `<migrationId>/<kind>`: a chunk moved to
 * another place, another snapshot or another migration fails its tag. The key id picks the
 * key, so chunks written before a rotation still open with the previous key. A chunk whose
 * tag fails, or whose key this agent does not hold, is a StorageCorruptError like a CRC
 * failure: never merged. The manifest names the key (`encryption`), for operators.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { crc32 as zlibCrc32 } from 'node:zlib';
import type { ClusterKey, ClusterKeys } from '../common/cluster-key';
import { UsageError } from '../common/errors';

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
  /** Present when chunks were written encrypted: the algorithm and the cluster key's id. */
  encryption?: { algorithm: 'aes-256-gcm'; keyId: string };
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

export const MAGIC = 0x43595246; // "FRYC" little-endian
export const VERSION = 1;
export const HEADER = 32;
export const MANIFEST = 'manifest.json';
export const CHUNK_RE = /^chunk-(\d{6,10})\.bin$/;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** CRC32 (IEEE). zlib.crc32 exists from Node 20.15; a table fallback covers older 20.x. */
export const crc32: (data: Uint8Array, value?: number) => number =
  typeof zlibCrc32 === 'function' ? zlibCrc32 : tableCrc32;

/** What a sealed chunk is bound to (its additional data) and the keys that may open it. */
export interface ChunkSeal {
  migrationId: string;
  kind: SnapshotKind;
  keys: ClusterKeys | null;
}

export const SEALED_MAGIC = 0x45595246; // "FRYE" little-endian
const SEALED_HEADER = 32;
const TAG = 16;

function sealAad(header: Uint8Array, migrationId: string, kind: SnapshotKind): Buffer {
  return Buffer.concat([header, Buffer.from(`${migrationId}/${kind}`)]);
}

/** Seal a plain chunk (the whole file as decodeChunk reads it) with the cluster key. */
export function sealChunk(plain: Uint8Array, seq: number, key: ClusterKey, migrationId: string, kind: SnapshotKind): Buffer {
  const out = Buffer.allocUnsafe(SEALED_HEADER + plain.length + TAG + 4);
  out.writeUInt32LE(SEALED_MAGIC, 0);
  out.writeUInt16LE(1, 4);
  out.writeUInt16LE(1, 6);
  out.write(key.id, 8, 4, 'hex');
  randomBytes(12).copy(out, 12);
  out.writeUInt32LE(plain.length, 24);
  out.writeUInt32LE(seq, 28);
  const header = out.subarray(0, SEALED_HEADER);
  const c = createCipheriv('aes-256-gcm', key.key, out.subarray(12, 24));
  c.setAAD(sealAad(header, migrationId, kind));
  let off = SEALED_HEADER;
  off += c.update(plain).copy(out, off);
  off += c.final().copy(out, off);
  c.getAuthTag().copy(out, off);
  off += TAG;
  out.writeUInt32LE(crc32(out.subarray(0, off)), off);
  return out;
}

/** Whether this file content is a sealed (encrypted) chunk. */
export function isSealed(raw: Uint8Array): boolean {
  return raw.length >= 4 && new DataView(raw.buffer, raw.byteOffset, raw.byteLength).getUint32(0, true) === SEALED_MAGIC;
}

function openSealed(raw: Buffer, file: string, seq: number, seal: ChunkSeal | undefined): Buffer {
  const bad = (problem: string): never => {
    throw new StorageCorruptError(file, problem);
  };
  if (raw.length < SEALED_HEADER + TAG + 4) bad(`truncated: ${raw.length} bytes, shorter than a sealed chunk`);
  const version = raw.readUInt16LE(4);
  const alg = raw.readUInt16LE(6);
  if (version !== 1 || alg !== 1) bad(`unsupported sealed chunk (version ${version}, algorithm ${alg})`);
  const plainLen = raw.readUInt32LE(24);
  if (raw.length !== SEALED_HEADER + plainLen + TAG + 4) bad(`truncated or overlong: ${raw.length} bytes, header implies ${SEALED_HEADER + plainLen + TAG + 4}`);
  const want = raw.readUInt32LE(raw.length - 4);
  const got = crc32(raw.subarray(0, raw.length - 4));
  if (want !== got) bad(`checksum mismatch (crc32 stored ${want}, computed ${got})`);
  if (raw.readUInt32LE(28) !== seq) bad(`header sequence ${raw.readUInt32LE(28)} does not match the file name`);
  const keyId = raw.toString('hex', 8, 12);
  if (!seal) bad(`encrypted with cluster key ${keyId}; the reader was given no key`);
  const key = seal!.keys?.byId(keyId) ?? null;
  if (!key) bad(`encrypted with cluster key ${keyId}, which this host does not hold (set FERRY_CLUSTER_KEY or FERRY_CLUSTER_KEY_PREVIOUS)`);
  const d = createDecipheriv('aes-256-gcm', key!.key, raw.subarray(12, 24));
  d.setAAD(sealAad(raw.subarray(0, SEALED_HEADER), seal!.migrationId, seal!.kind));
  d.setAuthTag(raw.subarray(SEALED_HEADER + plainLen, SEALED_HEADER + plainLen + TAG));
  const plain = d.update(raw.subarray(SEALED_HEADER, SEALED_HEADER + plainLen));
  try {
    d.final();
  } catch {
    bad(`authentication tag mismatch (not written by ferry with cluster key ${keyId} for ${seal!.migrationId}/${seal!.kind}, or damaged)`);
  }
  return plain;
}

/**
 * Validate a chunk file's content. A sealed chunk is opened first (`seal` gives the keys and
 * what it is bound to); `bytes` and `crc32` of the result are those of the file as stored.
 */
export function decodeChunk(asStored: Buffer, file: string, name: string, seq: number, seal?: ChunkSeal): Chunk {
  const bad = (problem: string): never => {
    throw new StorageCorruptError(file, problem);
  };
  const sealed = isSealed(asStored);
  const raw = sealed ? openSealed(asStored, file, seq, seal) : asStored;
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
    bytes: asStored.length,
    crc32: sealed ? asStored.readUInt32LE(asStored.length - 4) : want,
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

export function chunkSize(n: number, stored: number, pageSize: number): number {
  return align8(HEADER + 5 * n) + stored * pageSize + 4;
}

export function chunkName(seq: number): string {
  return `chunk-${String(seq).padStart(6, '0')}.bin`;
}

export function parseSeq(name: string): number {
  const m = CHUNK_RE.exec(name);
  if (!m) throw new UsageError(`'${name}' is not a chunk name`);
  return Number(m[1]);
}

export function align8(n: number): number {
  return (n + 7) & ~7;
}

export function checkId(id: string): void {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new UsageError(`migration id '${String(id)}' is not a safe file name (letters, digits, '.', '_', '-'; up to 200)`);
  }
}

export function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

export async function fsyncDir(dir: string): Promise<void> {
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
