/**
 * Payload codecs of channel-2 frames (the header is in frame.ts).
 *
 * PAGES payload (big-endian):
 *
 *   u32 N                         pages in the frame
 *   u32 R                         pfn runs
 *   R × { u32 firstPfn, u32 count }   the frame's pfns, in order, as runs of consecutive
 *                                 pfns (count ≥ 1, Σ count = N)
 *   N × u32 encodedLength         per page: 0 = all-zero page, no data (zero-page elision);
 *                                 pageSize = raw page; 1..pageSize-1 = deflateRaw data,
 *                                 kept only when smaller than the page
 *   page data                     the encoded pages back to back; exactly Σ encodedLength
 *
 * The pages are read from the PageSource straight into the frame buffer (one copy), and
 * compressed in place when that helps. decodePages() validates the whole frame (sizes,
 * pfn ranges, every page decodes to exactly pageSize) before the caller applies any page.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { FLAG_PRIORITY, FrameError, FrameType, HEADER_BYTES, sealFrame, type Frame } from './frame';
import { isZeroPage, type PageSource } from './pages';

export type Lane = 'bulk' | 'priority';

export interface PageEncodeOptions {
  /** Send all-zero pages as a zero length only (default true). */
  zeroElision?: boolean;
  /** deflateRaw each page, kept when smaller (default false). */
  compression?: boolean;
  /** zlib level, 1 (fast, default) .. 9. */
  compressionLevel?: number;
}

/** Counters a page frame adds to; the channel keeps one per lane. */
export interface PageEncodeStats {
  pages: number;
  zeroPages: number;
  compressedPages: number;
  /** Σ (pageSize − compressed length) over the compressed pages. */
  compressionSavedBytes: number;
}

const PAGES_FIXED = 8;

/** Bytes of a PAGES frame (header included) holding `pages` pages in the worst case. */
export function pagesFrameBytes(pages: number, pageSize: number): number {
  return HEADER_BYTES + PAGES_FIXED + pages * (8 + 4 + pageSize);
}

/** Most pages that always fit in a frame of `frameBytes` bytes (header included). */
export function pagesPerFrame(frameBytes: number, pageSize: number): number {
  return Math.max(0, Math.floor((frameBytes - HEADER_BYTES - PAGES_FIXED) / (pageSize + 12)));
}

/**
 * Build one PAGES frame for pfns[start .. start+count) into `buf` (which must hold
 * pagesFrameBytes(count, pageSize)); reads each page from `source` directly into the
 * frame. Returns the frame as a view of `buf`.
 */
export function buildPagesFrame(
  buf: Buffer,
  pfns: ArrayLike<number>,
  start: number,
  count: number,
  source: PageSource,
  lane: Lane,
  opts: PageEncodeOptions = {},
  stats?: PageEncodeStats,
): Buffer {
  const ps = source.pageSize;
  if (count < 1) throw new RangeError('buildPagesFrame: no pages');
  if (buf.length < pagesFrameBytes(count, ps)) throw new RangeError('buildPagesFrame: frame buffer too small');
  const end = start + count;
  // Pass 1: validate pfns and count runs.
  let runs = 0;
  let prev = -2;
  for (let i = start; i < end; i++) {
    const pfn = pfns[i] as number;
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= source.pageCount) {
      throw new RangeError(`pfn ${String(pfn)} is outside the source's ${source.pageCount} pages`);
    }
    if (pfn !== prev + 1) runs++;
    prev = pfn;
  }
  // Pass 2: runs.
  const base = HEADER_BYTES;
  buf.writeUInt32BE(count, base);
  buf.writeUInt32BE(runs, base + 4);
  let o = base + PAGES_FIXED;
  let runStart = -1;
  let runLen = 0;
  for (let i = start; i < end; i++) {
    const pfn = pfns[i] as number;
    if (runLen > 0 && pfn === runStart + runLen) runLen++;
    else {
      if (runLen > 0) {
        buf.writeUInt32BE(runStart, o);
        buf.writeUInt32BE(runLen, o + 4);
        o += 8;
      }
      runStart = pfn;
      runLen = 1;
    }
  }
  buf.writeUInt32BE(runStart, o);
  buf.writeUInt32BE(runLen, o + 4);
  o += 8;
  // Pass 3: the length table and the page data.
  const zeroElision = opts.zeroElision ?? true;
  const compression = opts.compression ?? false;
  const level = opts.compressionLevel ?? 1;
  let table = o;
  let data = o + 4 * count;
  let zero = 0;
  let compressed = 0;
  let saved = 0;
  for (let i = start; i < end; i++) {
    const page = buf.subarray(data, data + ps);
    source.readPage(pfns[i] as number, page);
    let len = ps;
    if (zeroElision && isZeroPage(page)) {
      len = 0;
      zero++;
    } else if (compression) {
      const c = deflateRawSync(page, { level });
      if (c.length < ps) {
        buf.set(c, data);
        len = c.length;
        compressed++;
        saved += ps - len;
      }
    }
    buf.writeUInt32BE(len, table);
    table += 4;
    data += len;
  }
  if (stats) {
    stats.pages += count;
    stats.zeroPages += zero;
    stats.compressedPages += compressed;
    stats.compressionSavedBytes += saved;
  }
  return sealFrame(buf, FrameType.PAGES, lane === 'priority' ? FLAG_PRIORITY : 0, data - HEADER_BYTES);
}

/** One-shot encoder: a PAGES frame in a fresh buffer (tests, tools). */
export function encodePagesFrame(pfns: ArrayLike<number>, source: PageSource, lane: Lane = 'bulk', opts: PageEncodeOptions = {}): Buffer {
  const buf = Buffer.allocUnsafe(pagesFrameBytes(pfns.length, source.pageSize));
  return Buffer.from(buildPagesFrame(buf, pfns, 0, pfns.length, source, lane, opts));
}

export interface DecodedPages {
  pfns: Uint32Array;
  /** pageSize bytes each; views of the payload, an inflated copy, or a shared zero page. Copy to keep. */
  pages: Uint8Array[];
  zeroPages: number;
  compressedPages: number;
}

const zeroPages = new Map<number, Buffer>();
function zeroPage(size: number): Buffer {
  let z = zeroPages.get(size);
  if (!z) zeroPages.set(size, (z = Buffer.alloc(size)));
  return z;
}

/** Decode and validate a whole PAGES payload. Throws FrameError('BAD_PAGES') on any defect. */
export function decodePages(payload: Buffer, pageSize: number, pageCount: number): DecodedPages {
  const bad = (why: string): FrameError => new FrameError('BAD_PAGES', `bad PAGES frame: ${why}`);
  if (payload.length < PAGES_FIXED) throw bad(`payload of ${payload.length} bytes is shorter than its fixed part`);
  const n = payload.readUInt32BE(0);
  const r = payload.readUInt32BE(4);
  if (n === 0) throw bad('no pages');
  if (r === 0 || r > n) throw bad(`${r} pfn runs for ${n} pages`);
  const tableAt = PAGES_FIXED + 8 * r;
  const dataAt = tableAt + 4 * n;
  if (dataAt > payload.length) throw bad(`${n} pages in ${r} runs do not fit in ${payload.length} bytes`);
  const pfns = new Uint32Array(n);
  let k = 0;
  for (let i = 0; i < r; i++) {
    const first = payload.readUInt32BE(PAGES_FIXED + 8 * i);
    const count = payload.readUInt32BE(PAGES_FIXED + 8 * i + 4);
    if (count === 0) throw bad(`run ${i} is empty`);
    if (k + count > n) throw bad(`runs hold more than the ${n} pages declared`);
    if (first + count > pageCount) throw bad(`pfns ${first}..${first + count - 1} are outside the ${pageCount} pages of the VM`);
    for (let j = 0; j < count; j++) pfns[k++] = first + j;
  }
  if (k !== n) throw bad(`runs hold ${k} pages, ${n} declared`);
  let data = dataAt;
  let zeros = 0;
  let compressed = 0;
  const zp = zeroPage(pageSize);
  const pages: Uint8Array[] = new Array<Uint8Array>(n);
  for (let i = 0; i < n; i++) {
    const len = payload.readUInt32BE(tableAt + 4 * i);
    const pfn = pfns[i] as number;
    if (len > pageSize) throw bad(`page ${pfn} has ${len} encoded bytes, more than the page size ${pageSize}`);
    if (data + len > payload.length) throw bad(`page data is truncated at page ${pfn}`);
    const enc = payload.subarray(data, data + len);
    data += len;
    if (len === 0) {
      pages[i] = zp;
      zeros++;
    } else if (len === pageSize) {
      pages[i] = enc;
    } else {
      let out: Buffer;
      try {
        out = inflateRawSync(enc, { maxOutputLength: pageSize });
      } catch (err) {
        throw new FrameError('BAD_PAGES', `bad PAGES frame: page ${pfn} does not decompress (${(err as Error).message})`, { cause: err });
      }
      if (out.length !== pageSize) throw bad(`page ${pfn} decompresses to ${out.length} bytes, not ${pageSize}`);
      pages[i] = out;
      compressed++;
    }
  }
  if (data !== payload.length) throw bad(`${payload.length - data} bytes after the last page`);
  return { pfns, pages, zeroPages: zeros, compressedPages: compressed };
}

// ---------------------------------------------------------------------------------------
// Small payloads

export function encodeU32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(value >>> 0, 0);
  return b;
}

export function encodePfnList(pfns: ArrayLike<number>): Buffer {
  const b = Buffer.allocUnsafe(4 + 4 * pfns.length);
  b.writeUInt32BE(pfns.length, 0);
  for (let i = 0; i < pfns.length; i++) b.writeUInt32BE(pfns[i] as number, 4 + 4 * i);
  return b;
}

export function decodePfnList(payload: Buffer, pageCount: number): number[] {
  if (payload.length < 4) throw new FrameError('BAD_PAYLOAD', 'bad FAULT_REQUEST frame: shorter than its count');
  const n = payload.readUInt32BE(0);
  if (payload.length !== 4 + 4 * n) throw new FrameError('BAD_PAYLOAD', `bad FAULT_REQUEST frame: ${n} pfns declared in ${payload.length} bytes`);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const pfn = payload.readUInt32BE(4 + 4 * i);
    if (pfn >= pageCount) throw new FrameError('BAD_PAYLOAD', `bad FAULT_REQUEST frame: pfn ${pfn} is outside the ${pageCount} pages of the VM`);
    out[i] = pfn;
  }
  return out;
}

function decodeU32(payload: Buffer, what: string): number {
  if (payload.length !== 4) throw new FrameError('BAD_PAYLOAD', `bad ${what} frame: ${payload.length} payload bytes, expected 4`);
  return payload.readUInt32BE(0);
}

export function decodeJson(payload: Buffer, what: string): unknown {
  try {
    return JSON.parse(payload.toString('utf8')) as unknown;
  } catch {
    throw new FrameError('BAD_PAYLOAD', `bad ${what} frame: payload is not JSON`);
  }
}

function decodeJsonObject(payload: Buffer, what: string): Record<string, unknown> {
  const v = decodeJson(payload, what);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new FrameError('BAD_PAYLOAD', `bad ${what} frame: payload is not a JSON object`);
  return v as Record<string, unknown>;
}

/** A frame with its payload decoded and validated. */
export type Message =
  | { kind: 'handshake'; type: FrameType; body: Record<string, unknown> }
  | { kind: 'pages'; lane: Lane; pages: DecodedPages }
  | { kind: 'fault'; pfns: number[] }
  | { kind: 'barrier'; id: number }
  | { kind: 'ack'; id: number }
  | { kind: 'control'; msg: unknown }
  | { kind: 'device'; data: Buffer }
  | { kind: 'error'; code: string; message: string }
  | { kind: 'close' };

/** Decode a frame's payload by its type. Throws FrameError. `data` of 'device' is a copy. */
export function decodeMessage(frame: Frame, geometry: { pageSize: number; pageCount: number }): Message {
  const { type, payload } = frame;
  switch (type) {
    case FrameType.HELLO:
    case FrameType.CHALLENGE:
    case FrameType.AUTH:
    case FrameType.WELCOME:
      return { kind: 'handshake', type, body: decodeJsonObject(payload, 'handshake') };
    case FrameType.PAGES:
      return {
        kind: 'pages',
        lane: frame.flags & FLAG_PRIORITY ? 'priority' : 'bulk',
        pages: decodePages(payload, geometry.pageSize, geometry.pageCount),
      };
    case FrameType.FAULT_REQUEST:
      return { kind: 'fault', pfns: decodePfnList(payload, geometry.pageCount) };
    case FrameType.BARRIER:
      return { kind: 'barrier', id: decodeU32(payload, 'BARRIER') };
    case FrameType.ACK:
      return { kind: 'ack', id: decodeU32(payload, 'ACK') };
    case FrameType.CONTROL:
      return { kind: 'control', msg: decodeJson(payload, 'CONTROL') };
    case FrameType.DEVICE_STATE:
      return { kind: 'device', data: Buffer.from(payload) };
    case FrameType.ERROR: {
      const body = decodeJsonObject(payload, 'ERROR');
      return { kind: 'error', code: String(body.code ?? 'UNKNOWN'), message: String(body.message ?? '') };
    }
    case FrameType.CLOSE:
      if (payload.length !== 0) throw new FrameError('BAD_PAYLOAD', 'bad CLOSE frame: it has a payload');
      return { kind: 'close' };
    default: {
      const never: never = type;
      throw new FrameError('BAD_TYPE', `unknown frame type ${String(never)}`);
    }
  }
}
