/**
 * Re-emits a well-formed QEMU 10.0 migration stream from StreamReader events, so that a relay
 * can drop, insert or reorder `ram` records and whole `ram` PART sections at record boundaries.
 *
 * Opaque runs are written verbatim. RAM records are re-encoded, and every ZERO/PAGE record gets
 * its block name: CONTINUE is never written, because the target resolves it against whatever
 * record it loaded last, which after a rewrite is not what the source meant (design note §3.2).
 * A source stream that used CONTINUE therefore comes out 1 + name-length bytes longer per such
 * record, and loads into the same memory.
 *
 * The writer checks the event order (records only inside a section, EOS before the footer, the
 * footer repeating the section's id…) and throws QemuStreamError('BAD_EVENT') on a violation,
 * naming the event and the output offset: a relay bug must not reach the target as a stream it
 * would fail on half-way through.
 */
import {
  QemuStreamError,
  RAM_IDSTR,
  RAM_VERSION,
  RamFlag,
  SECTION_TYPE_BYTE,
  TARGET_PAGE_SIZE,
  VmRecord,
  writeBe64,
  type MemSizeEvent,
  type PageEvent,
  type SectionEvent,
  type SectionType,
  type StreamEvent,
} from './format';

// ---------------------------------------------------------------------------------------
// Pure encoders

/** A section header: START carries idstr, instance and version; PART/END only the id. */
export function encodeSectionHeader(type: SectionType, sectionId: number, start?: { idstr: string; instanceId: number; versionId: number }): Buffer {
  if (type !== 'start') {
    const b = Buffer.allocUnsafe(5);
    b[0] = SECTION_TYPE_BYTE[type];
    b.writeUInt32BE(sectionId, 1);
    return b;
  }
  const idstr = Buffer.from(start?.idstr ?? RAM_IDSTR, 'latin1');
  const b = Buffer.allocUnsafe(6 + idstr.length + 8);
  b[0] = VmRecord.SECTION_START;
  b.writeUInt32BE(sectionId, 1);
  b[5] = idstr.length;
  idstr.copy(b, 6);
  b.writeUInt32BE(start?.instanceId ?? 0, 6 + idstr.length);
  b.writeUInt32BE(start?.versionId ?? RAM_VERSION, 10 + idstr.length);
  return b;
}

/** MEM_SIZE and its block list, with each block's optional page size where it was given. */
export function encodeMemSize(totalBytes: number, blocks: readonly MemSizeEvent['blocks'][number][]): Buffer {
  const parts: Buffer[] = [be64(totalBytes + RamFlag.MEM_SIZE)];
  for (const bl of blocks) {
    parts.push(str8(bl.name), be64(bl.usedLength));
    if (bl.pageSize !== undefined) parts.push(be64(bl.pageSize));
  }
  return Buffer.concat(parts);
}

type PageParts = Pick<PageEvent, 'block' | 'addr' | 'data' | 'fill'>;

/** Bytes of a ZERO or PAGE record with its block name. */
function pageRecordSize(p: PageParts, pageSize: number): number {
  return 9 + Buffer.byteLength(p.block, 'latin1') + (p.data ? pageSize : 1);
}

/** Write a ZERO or PAGE record with its block name at `o` in `b`; returns the offset after it. */
function putPage(b: Buffer, o: number, p: PageParts, pageSize: number): number {
  const n = Buffer.byteLength(p.block, 'latin1');
  if (n === 0 || n > 255) throw new RangeError(`block name of ${n} bytes (1..255)`);
  if (p.addr % pageSize !== 0) throw new RangeError(`offset 0x${p.addr.toString(16)} is not page-aligned`);
  if (p.data && p.data.length !== pageSize) throw new RangeError(`page of ${p.data.length} bytes, expected ${pageSize}`);
  writeBe64(b, p.addr + (p.data ? RamFlag.PAGE : RamFlag.ZERO), o);
  b[o + 8] = n;
  b.write(p.block, o + 9, 'latin1');
  o += 9 + n;
  if (p.data) {
    p.data.copy(b, o);
    return o + pageSize;
  }
  b[o] = p.fill;
  return o + 1;
}

/** A ZERO or PAGE record, always with its block name (never CONTINUE). */
export function encodePage(p: PageParts, pageSize = TARGET_PAGE_SIZE): Buffer {
  const b = Buffer.allocUnsafe(pageRecordSize(p, pageSize));
  putPage(b, 0, p, pageSize);
  return b;
}

export function encodeEos(): Buffer {
  return be64(RamFlag.EOS);
}

export function encodeFooter(sectionId: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = VmRecord.SECTION_FOOTER;
  b.writeUInt32BE(sectionId, 1);
  return b;
}

/** Bytes of the ram PART section that encodeRamPart writes for `pages`. */
export function ramPartSize(pages: readonly PageParts[], pageSize = TARGET_PAGE_SIZE): number {
  let size = 5 + 8 + 5;
  for (const p of pages) size += pageRecordSize(p, pageSize);
  return size;
}

/**
 * A complete ram PART section holding `pages`, in one buffer: what a relay inserts to deliver
 * diverted pages. Written at the start of `into` when it is large enough (a relay reuses its
 * buffers: a fresh multi-MiB buffer costs a page fault per 4 KiB), else into a new buffer.
 */
export function encodeRamPart(sectionId: number, pages: readonly PageParts[], pageSize = TARGET_PAGE_SIZE, into?: Buffer): Buffer {
  const size = ramPartSize(pages, pageSize);
  const b = into && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  b[0] = SECTION_TYPE_BYTE.part;
  b.writeUInt32BE(sectionId, 1);
  let o = 5;
  for (const p of pages) o = putPage(b, o, p, pageSize);
  writeBe64(b, RamFlag.EOS, o);
  b[o + 8] = VmRecord.SECTION_FOOTER;
  b.writeUInt32BE(sectionId, o + 9);
  return b;
}

function be64(v: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  writeBe64(b, v, 0);
  return b;
}

function str8(s: string): Buffer {
  const name = Buffer.from(s, 'latin1');
  if (name.length === 0 || name.length > 255) throw new RangeError(`name of ${name.length} bytes (1..255)`);
  return Buffer.concat([Buffer.from([name.length]), name]);
}

// ---------------------------------------------------------------------------------------
// The writer

type Position =
  /** Between top-level records. */
  | { at: 'top' }
  /** Inside a ram section, before its EOS. `records` counts what was written in it. */
  | { at: 'records'; type: SectionType; sectionId: number; records: number }
  /** After EOS, before the footer. */
  | { at: 'footer'; type: SectionType; sectionId: number }
  /** After opaque tail bytes: only more tail may follow. */
  | { at: 'tail' };

export interface StreamWriterOptions {
  pageSize?: number;
}

export class StreamWriter {
  private pos: Position = { at: 'top' };
  /** The block of the last page record written: what a CONTINUE record after it refers to. */
  private lastBlock: string | null = null;
  private ramSectionId: number | null = null;
  private written = 0;
  private readonly pageSize: number;

  constructor(opts: StreamWriterOptions = {}) {
    this.pageSize = opts.pageSize ?? TARGET_PAGE_SIZE;
  }

  /** Bytes produced so far. */
  get bytesWritten(): number {
    return this.written;
  }

  /** The bytes that stand for `ev` in the output stream. */
  write(ev: StreamEvent): Buffer {
    const out = this.encode(ev);
    this.written += out.length;
    return out;
  }

  /**
   * A page record forwarded as it was read: the writer's position advances as for write(), and
   * the bytes are the record's own. Only where the target resolves it to the same block: a
   * record that names its block, or a CONTINUE whose previous record out of this writer was
   * of the same block (lastBlock). Otherwise the page is re-encoded with its name.
   */
  writePage(ev: PageEvent): Buffer {
    if (this.pos.at !== 'records') this.fail(ev, 'a page outside a ram section (or after its EOS)');
    const raw = ev.raw && (!ev.continued || ev.block === this.lastBlock) ? ev.raw : null;
    if (!raw) return this.write(ev);
    this.pos.records++;
    this.lastBlock = ev.block;
    this.written += raw.length;
    return raw;
  }

  /**
   * A whole ram PART section of these pages (names always written), encoded into one buffer:
   * what a relay inserts between two records. The writer must stand between records.
   */
  writeRamPart(sectionId: number, pages: readonly PageEvent[], into?: Buffer): Buffer {
    const at: StreamEvent = pages[0] ?? { kind: 'eos', offset: 0 };
    if (this.pos.at !== 'top') this.fail(at, 'an inserted PART while not between records');
    if (this.ramSectionId !== null && sectionId !== this.ramSectionId) this.fail(at, `PART of section ${sectionId}, ram is section ${this.ramSectionId}`);
    const b = encodeRamPart(sectionId, pages, this.pageSize, into);
    if (pages.length > 0) this.lastBlock = pages[pages.length - 1]!.block;
    this.written += b.length;
    return b;
  }

  /** Write several events into one buffer (e.g. a whole inserted PART section). */
  writeAll(events: Iterable<StreamEvent>): Buffer {
    const parts: Buffer[] = [];
    for (const ev of events) parts.push(this.write(ev));
    return Buffer.concat(parts);
  }

  /** Whether the output stands between two records inside a ram section (before its EOS), where a page record may go. */
  get inRamRecords(): boolean {
    return this.pos.at === 'records';
  }

  /** Whether the output stands between top-level records, where a relay may insert a PART. */
  get atRecordBoundary(): boolean {
    return this.pos.at === 'top';
  }

  private fail(ev: StreamEvent, why: string): never {
    throw new QemuStreamError('BAD_EVENT', this.written, `${ev.kind} event`, why);
  }

  private encode(ev: StreamEvent): Buffer {
    const p = this.pos;
    switch (ev.kind) {
      case 'opaque':
        if (p.at === 'records' || p.at === 'footer') this.fail(ev, `opaque ${ev.what} bytes inside a ram section`);
        if (p.at === 'tail' && ev.what !== 'tail') this.fail(ev, `opaque ${ev.what} bytes after the tail began`);
        if (ev.what === 'tail') this.pos = { at: 'tail' };
        return ev.bytes;
      case 'section':
        return this.encodeSection(ev);
      case 'mem-size':
        if (p.at !== 'records' || p.type !== 'start' || p.records > 0) this.fail(ev, 'MEM_SIZE must be the first record of ram START');
        p.records++;
        return encodeMemSize(ev.totalBytes, ev.blocks);
      case 'page':
        if (p.at !== 'records') this.fail(ev, 'a page outside a ram section (or after its EOS)');
        p.records++;
        this.lastBlock = ev.block;
        return encodePage(ev, this.pageSize);
      case 'eos':
        if (p.at !== 'records') this.fail(ev, 'EOS outside a ram section');
        this.pos = { at: 'footer', type: p.type, sectionId: p.sectionId };
        return encodeEos();
      case 'footer':
        if (p.at !== 'footer') this.fail(ev, 'a footer before the section EOS');
        if (ev.sectionId !== p.sectionId) this.fail(ev, `footer names section ${ev.sectionId}, the section is ${p.sectionId}`);
        this.pos = { at: 'top' };
        return encodeFooter(ev.sectionId);
    }
  }

  private encodeSection(ev: SectionEvent): Buffer {
    if (this.pos.at !== 'top') this.fail(ev, `a section header while ${this.pos.at === 'tail' ? 'in the tail' : 'inside a section'}`);
    if (ev.type === 'start') {
      if (ev.idstr !== undefined && ev.idstr !== RAM_IDSTR) this.fail(ev, `START of "${ev.idstr}": only ram sections are written`);
      this.ramSectionId = ev.sectionId;
    } else if (this.ramSectionId !== null && ev.sectionId !== this.ramSectionId) {
      this.fail(ev, `${ev.type.toUpperCase()} of section ${ev.sectionId}, ram is section ${this.ramSectionId}`);
    }
    this.pos = { at: 'records', type: ev.type, sectionId: ev.sectionId, records: 0 };
    return encodeSectionHeader(ev.type, ev.sectionId, {
      idstr: ev.idstr ?? RAM_IDSTR,
      instanceId: ev.instanceId ?? 0,
      versionId: ev.versionId ?? RAM_VERSION,
    });
  }
}
