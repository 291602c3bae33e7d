/**
 * The pure record parsers of QEMU 10.0's forward migration stream (docs/design/qemu-stream.md):
 * each gets the buffered bytes of one item from its first byte (`at` is its stream offset, for
 * errors) and returns either how many bytes it needs in total to go on, or the item's length
 * and value. StreamReader (reader.ts) drives them over a byte queue.
 */
import {
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QemuStreamError,
  RAM_FLAG_MASK,
  RamFlag,
  TARGET_PAGE_SIZE,
  VmCommand,
  VmRecord,
  hex,
  readBe64,
  type RamBlockInfo,
  type SectionType,
} from './format';

/** A parse step's outcome: either the bytes it still needs, or what it read and its length. */
export type Measured<T> = { need: number } | { length: number; value: T };

/** Longest configuration record accepted: the real one is ~30 bytes (machine type name). */
const MAX_HEADER_BYTES = 4096;
/** A block count no real VM reaches; bounds the MEM_SIZE list the reader accumulates. */
export const MAX_RAM_BLOCKS = 4096;

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
export function measureBlockEntryArgs(b: Buffer, at: number, a: { remaining: number; postcopyAdvised: boolean }): Measured<RamBlockInfo> {
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
