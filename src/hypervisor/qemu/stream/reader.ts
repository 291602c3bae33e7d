/**
 * Incremental parser of QEMU 10.0's forward migration stream (source → target), for a relay that
 * diverts the page records of the `ram` section and passes everything else through.
 *
 * push() the chunks as they arrive (a socket splits records anywhere), then call next() until it
 * returns null (needs more bytes). Events come out in stream order; concatenating the bytes they
 * stand for gives back the input. Only the `ram` section is parsed record by record; the header,
 * commands, the PACKAGED blob and the tail (device state, EOF, vmdesc) are opaque runs.
 *
 * Supported capability set (docs/design/qemu-stream.md §3.5): no multifd, xbzrle, compression,
 * mapped-ram, x-ignore-shared, RDMA; return-path on or off; postcopy-ram on or off. Anything the
 * reader cannot delimit safely raises a QemuStreamError naming the record and its offset; after
 * that the reader stays failed.
 *
 * Memory is bounded: the reader assembles at most one record before emitting it (a command of
 * ≤ 64 KiB + 5 bytes, a page record of ≤ 8 + 256 + 4096 bytes, a ≤ 4 KiB header); opaque runs
 * are emitted as they arrive. Pushed chunks must not be modified afterwards: events are views.
 */
import {
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QemuStreamError,
  RAM_FLAG_MASK,
  RAM_IDSTR,
  RAM_VERSION,
  RamFlag,
  TARGET_PAGE_SIZE,
  VmCommand,
  VmRecord,
  hex,
  readBe64,
  type RamBlockInfo,
  type SectionType,
  type StreamEvent,
} from './format';

/** A parse step's outcome: either the bytes it still needs, or what it read and its length. */
export type Measured<T> = { need: number } | { length: number; value: T };

/** Longest configuration record accepted: the real one is ~30 bytes (machine type name). */
const MAX_HEADER_BYTES = 4096;
/** A block count no real VM reaches; bounds the MEM_SIZE list the reader accumulates. */
const MAX_RAM_BLOCKS = 4096;

function need(n: number): { need: number } {
  return { need: n };
}

// ---------------------------------------------------------------------------------------
// Pure measuring functions. Each gets the buffered bytes of one item from its first byte (`at`
// is its stream offset, for errors), and returns either how many bytes it needs in total to
// go on (more than b.length), or the item's length and value.

/**
 * Magic, version and the optional configuration record (§1). The configuration has no length
 * prefix, so it is walked by its small fixed grammar. Subsections that change the RAM layout
 * (capabilities: x-ignore-shared / mapped-ram) or the page size are refused.
 */
export function measureHeader(b: Buffer, at: number, pageSize = TARGET_PAGE_SIZE): Measured<{ machine: string | null }> {
  if (b.length < 8) return need(8);
  const magic = b.readUInt32BE(0);
  if (magic !== QEMU_VM_FILE_MAGIC) {
    throw new QemuStreamError('BAD_HEADER', at, 'stream header', `magic ${hex(magic, 8)} is not QEVM (not a QEMU migration stream)`);
  }
  const version = b.readUInt32BE(4);
  if (version !== QEMU_VM_FILE_VERSION) {
    throw new QemuStreamError('BAD_HEADER', at + 4, 'stream header', `version ${version}; a QEMU 10.0 target accepts only ${QEMU_VM_FILE_VERSION}`);
  }
  if (b.length < 9) return need(9);
  if (b[8] !== VmRecord.CONFIGURATION) return { length: 8, value: { machine: null } }; // send-configuration=off
  if (b.length < 13) return need(13);
  const len = b.readUInt32BE(9);
  if (len > 256) {
    throw new QemuStreamError('UNSUPPORTED_CONFIGURATION', at + 9, 'configuration', `machine type name of ${len} bytes`);
  }
  let pos = 13 + len;
  if (b.length < pos) return need(pos);
  const machine = b.toString('latin1', 13, pos);
  for (;;) {
    if (pos > MAX_HEADER_BYTES) throw new QemuStreamError('UNSUPPORTED_CONFIGURATION', at, 'configuration', `longer than ${MAX_HEADER_BYTES} bytes`);
    if (b.length < pos + 1) return need(pos + 1);
    if (b[pos] !== VmRecord.SUBSECTION) return { length: pos, value: { machine } };
    if (b.length < pos + 2) return need(pos + 2);
    const n = b[pos + 1] ?? 0;
    const fields = pos + 2 + n + 4; // name, be32 version_id
    if (b.length < fields) return need(fields);
    const name = b.toString('latin1', pos + 2, pos + 2 + n);
    const sub = measureConfigSubsection(b, fields, name, at + pos, pageSize);
    if ('need' in sub) return sub;
    pos = sub.length;
  }
}

/** The fields of one configuration subsection starting at `pos`; returns the position after them. */
function measureConfigSubsection(b: Buffer, pos: number, name: string, at: number, pageSize: number): Measured<null> {
  const record = `configuration subsection "${name}"`;
  switch (name) {
    case 'configuration/target-page-bits': {
      if (b.length < pos + 4) return need(pos + 4);
      const bits = b.readUInt32BE(pos);
      if (2 ** bits !== pageSize) {
        throw new QemuStreamError('UNSUPPORTED_CONFIGURATION', at, record, `target page bits ${bits}, the reader expects ${pageSize}-byte pages`);
      }
      return { length: pos + 4, value: null };
    }
    case 'configuration/uuid':
      if (b.length < pos + 16) return need(pos + 16);
      return { length: pos + 16, value: null };
    case 'configuration/capabilities': {
      // Only x-ignore-shared and mapped-ram are listed here; both change the MEM_SIZE layout.
      if (b.length < pos + 4) return need(pos + 4);
      const count = b.readUInt32BE(pos);
      let p = pos + 4;
      const caps: string[] = [];
      for (let i = 0; i < count && caps.length < 64; i++) {
        if (b.length < p + 1) return need(p + 1);
        const n = b[p] ?? 0;
        if (b.length < p + 1 + n) return need(p + 1 + n);
        caps.push(b.toString('latin1', p + 1, p + 1 + n));
        p += 1 + n;
      }
      throw new QemuStreamError('UNSUPPORTED_CONFIGURATION', at, record, `capabilities ${caps.join(', ')} change the RAM layout (turn them off)`);
    }
    default:
      throw new QemuStreamError('UNSUPPORTED_CONFIGURATION', at, record, 'unknown subsection: its length is unknown');
  }
}

export type TopRecord =
  | { kind: 'command'; cmd: number; len: number; packageBytes: number | null }
  | { kind: 'section'; type: SectionType; sectionId: number; idstr?: string; instanceId?: number; versionId?: number }
  | { kind: 'full' }
  | { kind: 'eof' };

const SECTION_TYPES = new Map<number, SectionType>([
  [VmRecord.SECTION_START, 'start'],
  [VmRecord.SECTION_PART, 'part'],
  [VmRecord.SECTION_END, 'end'],
]);

/**
 * The head of a top-level record: a command (whole, with the PACKAGED blob length), a section
 * header, or the start of what only the tail can hold (FULL, EOF; length 0, not consumed).
 */
export function measureTopRecord(b: Buffer, at: number): Measured<TopRecord> {
  if (b.length < 1) return need(1);
  const type = b[0] ?? 0;
  if (type === VmRecord.COMMAND) {
    if (b.length < 5) return need(5);
    const cmd = b.readUInt16BE(1);
    const len = b.readUInt16BE(3);
    if (cmd !== VmCommand.PACKAGED) {
      if (b.length < 5 + len) return need(5 + len);
      return { length: 5 + len, value: { kind: 'command', cmd, len, packageBytes: null } };
    }
    if (len !== 4) throw new QemuStreamError('BAD_COMMAND', at, 'command PACKAGED', `length ${len}, expected 4 (be32 blob size)`);
    if (b.length < 9) return need(9);
    return { length: 9, value: { kind: 'command', cmd, len, packageBytes: b.readUInt32BE(5) } };
  }
  const st = SECTION_TYPES.get(type);
  if (st === 'start') {
    if (b.length < 6) return need(6);
    const n = b[5] ?? 0;
    const end = 6 + n + 8;
    if (b.length < end) return need(end);
    const idstr = b.toString('latin1', 6, 6 + n);
    return {
      length: end,
      value: { kind: 'section', type: st, sectionId: b.readUInt32BE(1), idstr, instanceId: b.readUInt32BE(6 + n), versionId: b.readUInt32BE(6 + n + 4) },
    };
  }
  if (st) {
    if (b.length < 5) return need(5);
    return { length: 5, value: { kind: 'section', type: st, sectionId: b.readUInt32BE(1) } };
  }
  if (type === VmRecord.SECTION_FULL) return { length: 0, value: { kind: 'full' } };
  if (type === VmRecord.EOF) return { length: 0, value: { kind: 'eof' } };
  throw new QemuStreamError('UNKNOWN_RECORD', at, `top-level record type ${hex(type, 2)}`, 'not a record that can start here');
}

export type RamRecord =
  | { kind: 'eos' }
  | { kind: 'mem-size'; totalBytes: number }
  | { kind: 'page'; addr: number; block: string | null; data: Buffer | null; fill: number };

const UNSUPPORTED_FLAGS = new Map<number, string>([
  [RamFlag.FULL, 'FULL (obsolete since 2009)'],
  [RamFlag.XBZRLE, 'XBZRLE (turn the xbzrle capability off)'],
  [RamFlag.HOOK, 'HOOK (RDMA transport)'],
  [RamFlag.COMPRESS_PAGE, 'COMPRESS_PAGE (removed in QEMU 9.1)'],
  [RamFlag.MULTIFD_FLUSH, 'MULTIFD_FLUSH (turn the multifd capability off: pages would travel on other connections)'],
]);

const KNOWN_FLAG_BITS = Object.values(RamFlag).reduce((a, f) => a | f, 0);

/**
 * One record of a `ram` section (§3.1–3.4): be64 (offset | flags), then per flag its payload.
 * MEM_SIZE returns only the total; its block list is read by measureBlockEntry. A flag outside
 * {ZERO, PAGE, EOS, MEM_SIZE} ∪ CONTINUE, or one combined with another, is refused, since the
 * target dispatches on `flags & ~CONTINUE` with an exact switch.
 */
/** The label of a ram record in an error (built only for one). */
function recLabel(flags: number): string {
  return `ram record flags ${hex(flags, 3)}`;
}

export function measureRamRecord(b: Buffer, at: number, pageSize = TARGET_PAGE_SIZE): Measured<RamRecord> {
  if (b.length < 8) return need(8);
  // The hot path of a relay (one call per page record, several while its bytes arrive): two
  // 32-bit reads instead of a BigInt, and the record's label built only for an error.
  const hi = b.readUInt32BE(0);
  const lo = b.readUInt32BE(4);
  if (hi >= 0x200000) readBe64(b, 0, at, 'ram record header'); // ≥ 2^53: throws, as corruption
  const flags = lo & RAM_FLAG_MASK;
  const addr = hi * 0x1_0000_0000 + (lo - flags);
  const cont = (flags & RamFlag.CONTINUE) !== 0;
  const kind = flags & ~RamFlag.CONTINUE;
  switch (kind) {
    case RamFlag.EOS:
      if (flags !== RamFlag.EOS || addr !== 0) throw new QemuStreamError('BAD_RAM_RECORD', at, recLabel(flags), `EOS with offset ${hex(addr)} or CONTINUE (QEMU never sends it)`);
      return { length: 8, value: { kind: 'eos' } };
    case RamFlag.MEM_SIZE:
      if (cont) throw new QemuStreamError('BAD_RAM_RECORD', at, recLabel(flags), 'MEM_SIZE with CONTINUE (QEMU never sends it)');
      return { length: 8, value: { kind: 'mem-size', totalBytes: addr } };
    case RamFlag.ZERO:
    case RamFlag.PAGE: {
      let pos = 8;
      let block: string | null = null;
      if (!cont) {
        if (b.length < 9) return need(9);
        const n = b[8] ?? 0;
        if (n === 0) throw new QemuStreamError('BAD_RAM_RECORD', at, recLabel(flags), 'empty block name');
        if (b.length < 9 + n) return need(9 + n);
        block = b.toString('latin1', 9, 9 + n);
        pos = 9 + n;
      }
      if (kind === RamFlag.ZERO) {
        if (b.length < pos + 1) return need(pos + 1);
        return { length: pos + 1, value: { kind: 'page', addr, block, data: null, fill: b[pos] ?? 0 } };
      }
      if (b.length < pos + pageSize) return need(pos + pageSize);
      return { length: pos + pageSize, value: { kind: 'page', addr, block, data: b.subarray(pos, pos + pageSize), fill: 0 } };
    }
    default: {
      const unsupported = UNSUPPORTED_FLAGS.get(kind);
      if (unsupported) throw new QemuStreamError('UNSUPPORTED_RAM_FLAG', at, recLabel(flags), `flag ${unsupported}`);
      const what = (kind & ~KNOWN_FLAG_BITS) !== 0 ? 'unknown flag bits' : 'unknown combination of flags';
      throw new QemuStreamError('UNKNOWN_RAM_FLAG', at, recLabel(flags), `${what} (QEMU's target would refuse it too)`);
    }
  }
}

/**
 * One MEM_SIZE block entry: str8 name, be64 used_length, and with postcopy-ram advised an
 * optional be64 page_size for hugepage-backed blocks (§3.3). The stream does not say which blocks
 * carry it, but it is unambiguous in practice: block names are non-empty, so where a name is
 * due a 0x00 byte can only start a page size; after the last block the next be64 is either a
 * page size (a non-zero multiple of 4096) or the next record's header (non-zero flag bits).
 */
export function measureBlockEntry(b: Buffer, at: number, remaining: number, postcopyAdvised: boolean): Measured<RamBlockInfo> {
  if (b.length < 1) return need(1);
  const n = b[0] ?? 0;
  const record = 'MEM_SIZE block entry';
  if (n === 0) throw new QemuStreamError('BAD_RAM_RECORD', at, record, 'empty block name');
  const pos = 1 + n + 8;
  if (b.length < pos) return need(pos);
  const name = b.toString('latin1', 1, 1 + n);
  const usedLength = readBe64(b, 1 + n, at, record);
  if (usedLength > remaining || usedLength === 0) {
    throw new QemuStreamError('BAD_RAM_RECORD', at, `${record} "${name}"`, `used length ${hex(usedLength)} with ${hex(remaining)} of the MEM_SIZE total left`);
  }
  if (!postcopyAdvised) return { length: pos, value: { name, usedLength } };
  const last = usedLength === remaining;
  if (!last) {
    if (b.length < pos + 1) return need(pos + 1);
    if (b[pos] !== 0) return { length: pos, value: { name, usedLength } };
  }
  if (b.length < pos + 8) return need(pos + 8);
  const next = readBe64(b, pos, at, record);
  const isPageSize = next !== 0 && next % TARGET_PAGE_SIZE === 0;
  if (!isPageSize) {
    if (!last) throw new QemuStreamError('BAD_RAM_RECORD', at, `${record} "${name}"`, `page size ${hex(next)} is not a multiple of ${TARGET_PAGE_SIZE}`);
    return { length: pos, value: { name, usedLength } };
  }
  return { length: pos + 8, value: { name, usedLength, pageSize: next } };
}

/** QEMU_VM_SECTION_FOOTER: 0x7e, be32 section_id. */
/** measureBlockEntry with its two facts in one argument (StreamReader.measure's shape). */
function measureBlockEntryArgs(b: Buffer, at: number, a: { remaining: number; postcopyAdvised: boolean }): Measured<RamBlockInfo> {
  return measureBlockEntry(b, at, a.remaining, a.postcopyAdvised);
}

export function measureFooter(b: Buffer, at: number, sectionId: number): Measured<number> {
  if (b.length < 1) return need(1);
  if (b[0] !== VmRecord.SECTION_FOOTER) {
    throw new QemuStreamError('BAD_FOOTER', at, 'section footer', `byte ${hex(b[0] ?? 0, 2)} where the footer of section ${sectionId} is due (send-section-footer off?)`);
  }
  if (b.length < 5) return need(5);
  const id = b.readUInt32BE(1);
  if (id !== sectionId) throw new QemuStreamError('BAD_FOOTER', at, 'section footer', `names section ${id}, expected ${sectionId}`);
  return { length: 5, value: id };
}

// ---------------------------------------------------------------------------------------
// The byte queue

/**
 * Received chunks not yet consumed. peek(n) returns a contiguous view of the first n bytes,
 * merging chunks only when a record straddles them (and keeping the merge, so that retrying a
 * record as more bytes arrive does not copy again).
 */
class ByteQueue {
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

// ---------------------------------------------------------------------------------------
// The reader

type State =
  | { s: 'header' }
  | { s: 'top' }
  | { s: 'package'; left: number }
  | { s: 'ram-record'; section: SectionType; first: boolean }
  | { s: 'mem-size'; at: number; total: number; left: number; blocks: RamBlockInfo[] }
  | { s: 'footer'; section: SectionType }
  | { s: 'tail' };

export interface StreamReaderOptions {
  /** TARGET_PAGE_SIZE of the guest architecture; 4096 on x86. */
  pageSize?: number;
}

export class StreamReader {
  private readonly q = new ByteQueue();
  private state: State = { s: 'header' };
  /** Bytes the current item needs before it is worth trying again. */
  private want = 1;
  /** Stream offset of the first buffered byte. */
  private offset = 0;
  private failed: QemuStreamError | null = null;
  private detached = false;
  private readonly pageSize: number;

  /** Facts learnt from the stream, that later records depend on. */
  private ramSectionId: number | null = null;
  private ramComplete = false;
  private postcopyAdvised = false;
  private lastBlock: string | null = null;
  private blocks: Map<string, number> | null = null;

  constructor(opts: StreamReaderOptions = {}) {
    this.pageSize = opts.pageSize ?? TARGET_PAGE_SIZE;
  }

  /** Bytes received but not yet returned in events. */
  get pendingBytes(): number {
    return this.q.length;
  }

  /** Stream offset of the next byte to be parsed. */
  get position(): number {
    return this.offset;
  }

  /** The `ram` section's id, once its START has been read. */
  get sectionId(): number | null {
    return this.ramSectionId;
  }

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /**
   * Stop parsing (after the event just returned): the bytes received and not parsed yet, for a
   * caller that forwards the rest of the stream untouched. next() returns null from then on.
   */
  detach(): Buffer {
    this.detached = true;
    return this.q.takeAll();
  }

  /** detach() was called. */
  get isDetached(): boolean {
    return this.detached;
  }

  /** The next event, or null if more bytes are needed. Throws QemuStreamError (and stays failed). */
  next(): StreamEvent | null {
    if (this.failed) throw this.failed;
    if (this.detached) return null;
    try {
      return this.step();
    } catch (err) {
      if (err instanceof QemuStreamError) this.failed = err;
      throw err;
    }
  }

  /** Every event the buffered bytes complete. */
  drain(): StreamEvent[] {
    const out: StreamEvent[] = [];
    for (let e = this.next(); e; e = this.next()) out.push(e);
    return out;
  }

  /**
   * The source closed the stream. Throws TRUNCATED unless the stream reached its tail (the first
   * FULL after `ram` END, or QEMU_VM_EOF): a shorter stream is a failed or cancelled migration.
   */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.state.s === 'tail' || this.detached) return;
    const what = this.state.s === 'top' ? 'the stream' : this.state.s;
    this.failed = new QemuStreamError(
      'TRUNCATED',
      this.offset,
      what,
      this.q.length > 0 ? `ended ${this.q.length} bytes into a record that needs ${this.want}` : 'ended before QEMU_VM_EOF',
    );
    throw this.failed;
  }

  /**
   * Measure the current item with `f(bytes, arg)`; null if the buffered bytes do not complete
   * it yet. `f` is a module-level parser and `arg` its one extra argument, so the hot path
   * (one call per page record) creates no closure.
   */
  private measure<T, A>(f: (b: Buffer, at: number, arg: A) => Measured<T>, arg: A): { length: number; value: T } | null {
    for (;;) {
      if (this.q.length < this.want) return null;
      const m = f(this.q.peekAtLeast(this.want), this.offset, arg);
      if ('length' in m) {
        this.want = 1;
        return m;
      }
      if (m.need <= this.want) throw new Error(`qemu stream reader: internal error, parser asked for ${m.need} bytes after ${this.want}`);
      this.want = m.need;
    }
  }

  private consume(n: number): number {
    const at = this.offset;
    this.q.skip(n);
    this.offset += n;
    return at;
  }

  private step(): StreamEvent | null {
    for (;;) {
      const st = this.state;
      switch (st.s) {
        case 'header': {
          const m = this.measure(measureHeader, this.pageSize);
          if (!m) return null;
          const bytes = this.q.peek(m.length);
          this.state = { s: 'top' };
          return { kind: 'opaque', what: 'header', offset: this.consume(m.length), bytes };
        }
        case 'top': {
          const m = this.measure(measureTopRecord, undefined);
          if (!m) return null;
          const ev = this.onTopRecord(m.value, m.length);
          if (ev) return ev;
          continue;
        }
        case 'package':
        case 'tail': {
          if (this.q.length === 0) return null;
          const bytes = this.q.takeSome(st.s === 'package' ? st.left : Infinity);
          const offset = this.offset;
          this.offset += bytes.length;
          if (st.s === 'package') {
            st.left -= bytes.length;
            if (st.left === 0) this.state = { s: 'top' };
          }
          return { kind: 'opaque', what: st.s, offset, bytes };
        }
        case 'ram-record': {
          const m = this.measure(measureRamRecord, this.pageSize);
          if (!m) return null;
          const ev = this.onRamRecord(st, m.value, m.length);
          if (ev) return ev;
          continue;
        }
        case 'mem-size': {
          const m = this.measure(measureBlockEntryArgs, { remaining: st.left, postcopyAdvised: this.postcopyAdvised });
          if (!m) return null;
          this.consume(m.length);
          if (st.blocks.length >= MAX_RAM_BLOCKS) throw new QemuStreamError('BAD_RAM_RECORD', st.at, 'MEM_SIZE', `more than ${MAX_RAM_BLOCKS} blocks`);
          st.blocks.push(m.value);
          st.left -= m.value.usedLength;
          if (st.left > 0) continue;
          this.blocks = new Map(st.blocks.map((bl) => [bl.name, bl.usedLength]));
          this.state = { s: 'ram-record', section: 'start', first: false };
          return { kind: 'mem-size', offset: st.at, totalBytes: st.total, blocks: st.blocks };
        }
        case 'footer': {
          const id = this.ramSectionId ?? 0;
          const m = this.measure(measureFooter, id);
          if (!m) return null;
          if (st.section === 'end') this.ramComplete = true;
          this.state = { s: 'top' };
          return { kind: 'footer', offset: this.consume(m.length), sectionId: id };
        }
      }
    }
  }

  /** A top-level record head: an event, or null when the state changed without one (tail). */
  private onTopRecord(r: TopRecord, length: number): StreamEvent | null {
    const at = this.offset;
    switch (r.kind) {
      case 'command': {
        const bytes = this.q.peek(length);
        this.consume(length);
        if (r.cmd === VmCommand.POSTCOPY_ADVISE && r.len === 16) this.postcopyAdvised = true;
        if (r.packageBytes !== null && r.packageBytes > 0) this.state = { s: 'package', left: r.packageBytes };
        return { kind: 'opaque', what: 'command', offset: at, bytes, command: r.cmd };
      }
      case 'full':
        if (!this.ramComplete) {
          throw new QemuStreamError('UNDELIMITABLE_SECTION', at, 'FULL section', 'device state before ram END (virtio-mem early setup?): only the device can delimit it');
        }
        this.state = { s: 'tail' };
        return null;
      case 'eof':
        this.state = { s: 'tail' };
        return null;
      case 'section':
        return this.onSectionHeader(r, at, length);
    }
  }

  private onSectionHeader(r: Extract<TopRecord, { kind: 'section' }>, at: number, length: number): StreamEvent {
    const record = `section ${r.type.toUpperCase()} id ${r.sectionId}`;
    if (r.type === 'start') {
      if (r.idstr !== RAM_IDSTR) {
        throw new QemuStreamError('UNDELIMITABLE_SECTION', at, `${record} "${r.idstr ?? ''}"`, 'a live device other than ram (VFIO, dirty-bitmap…): only the device can delimit it');
      }
      if (this.ramSectionId !== null) throw new QemuStreamError('BAD_SECTION', at, record, 'a second ram START');
      if (r.versionId !== RAM_VERSION || r.instanceId !== 0) {
        throw new QemuStreamError('BAD_SECTION', at, record, `ram instance ${r.instanceId ?? '?'} version ${r.versionId ?? '?'}; QEMU 10.0 loads only instance 0 version ${RAM_VERSION}`);
      }
      this.ramSectionId = r.sectionId;
    } else {
      if (r.sectionId !== this.ramSectionId) {
        const why = this.ramSectionId === null ? 'before ram START' : `not the ram section (id ${this.ramSectionId})`;
        throw new QemuStreamError('UNDELIMITABLE_SECTION', at, record, `${why}: only its device can delimit it`);
      }
      if (this.ramComplete) throw new QemuStreamError('BAD_SECTION', at, record, 'after ram END');
    }
    this.consume(length);
    this.state = { s: 'ram-record', section: r.type, first: r.type === 'start' };
    const { kind: _kind, ...fields } = r;
    return { kind: 'section', offset: at, ...fields };
  }

  private onRamRecord(st: Extract<State, { s: 'ram-record' }>, r: RamRecord, length: number): StreamEvent | null {
    const at = this.offset;
    const first = st.first;
    st.first = false;
    switch (r.kind) {
      case 'eos':
        this.consume(length);
        this.state = { s: 'footer', section: st.section };
        return { kind: 'eos', offset: at };
      case 'mem-size':
        if (!first || st.section !== 'start') throw new QemuStreamError('BAD_RAM_RECORD', at, 'ram record MEM_SIZE', 'not the first record of ram START');
        this.consume(length);
        this.state = { s: 'mem-size', at, total: r.totalBytes, left: r.totalBytes, blocks: [] };
        if (r.totalBytes === 0) throw new QemuStreamError('BAD_RAM_RECORD', at, 'ram record MEM_SIZE', 'total of 0 bytes');
        return null;
      case 'page': {
        const block = r.block ?? this.lastBlock;
        const record = `ram ${r.data ? 'PAGE' : 'ZERO'} record`;
        if (block === null) throw new QemuStreamError('BAD_RAM_RECORD', at, record, 'CONTINUE with no previous block');
        if (r.addr % this.pageSize !== 0) throw new QemuStreamError('BAD_RAM_RECORD', at, record, `offset ${hex(r.addr)} is not page-aligned`);
        const used = this.blocks?.get(block);
        if (this.blocks && used === undefined) throw new QemuStreamError('BAD_RAM_RECORD', at, `${record} "${block}"`, 'block not in the MEM_SIZE list');
        if (used !== undefined && r.addr >= used) {
          throw new QemuStreamError('BAD_RAM_RECORD', at, `${record} "${block}"`, `offset ${hex(r.addr)} beyond the block's ${hex(used)} bytes`);
        }
        this.lastBlock = block;
        const raw = this.q.peekAtLeast(length).subarray(0, length);
        this.consume(length);
        return { kind: 'page', offset: at, block, addr: r.addr, data: r.data, fill: r.fill, continued: r.block === null, raw };
      }
    }
  }
}

/** Parse a whole stream held in memory (tests, tools), fed in chunks of `chunkSize` bytes. */
export function readStream(buf: Buffer, chunkSize = 64 * 1024, opts: StreamReaderOptions = {}): StreamEvent[] {
  const r = new StreamReader(opts);
  const out: StreamEvent[] = [];
  for (let i = 0; i < buf.length; i += chunkSize) {
    r.push(buf.subarray(i, i + chunkSize));
    out.push(...r.drain());
  }
  r.end();
  return out;
}
