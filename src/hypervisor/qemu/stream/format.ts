/**
 * The pieces of QEMU 10.0's migration stream that a RAM-diverting relay must understand, shared
 * by the reader and the writer. See docs/design/qemu-stream.md for the format and its sources;
 * section numbers (§n) below refer to that note.
 *
 * All integers on the wire are big-endian. Block names are byte strings (`str8`: one length
 * byte, then the bytes, no NUL); they are decoded as latin1 so that any byte round-trips.
 */

/** "QEVM" (`QEMU_VM_FILE_MAGIC`). */
export const QEMU_VM_FILE_MAGIC = 0x5145564d;
/** The only stream version a 10.0 target accepts. */
export const QEMU_VM_FILE_VERSION = 3;
/** x86 `TARGET_PAGE_SIZE`: the size of a PAGE record's payload and the alignment of offsets. */
export const TARGET_PAGE_SIZE = 4096;

/** Top-level record type bytes (`migration/savevm.h`). */
export const VmRecord = {
  EOF: 0x00,
  SECTION_START: 0x01,
  SECTION_PART: 0x02,
  SECTION_END: 0x03,
  SECTION_FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  SECTION_FOOTER: 0x7e,
} as const;

/** Commands (`enum qemu_vm_cmd`, §4) that the reader needs to recognise. */
export const VmCommand = {
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
  ENABLE_COLO: 8,
  POSTCOPY_RESUME: 9,
  RECV_BITMAP: 10,
  SWITCHOVER_START: 11,
} as const;

const COMMAND_NAMES = new Map<number, string>(Object.entries(VmCommand).map(([k, v]) => [v, k]));

export function commandName(cmd: number): string {
  return COMMAND_NAMES.get(cmd) ?? `unknown(${cmd})`;
}

/** RAM record flags (`migration/ram.h`, §3.1): the low 12 bits of each record's be64 header. */
export const RamFlag = {
  FULL: 0x001,
  ZERO: 0x002,
  MEM_SIZE: 0x004,
  PAGE: 0x008,
  EOS: 0x010,
  CONTINUE: 0x020,
  XBZRLE: 0x040,
  HOOK: 0x080,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** The bits of a record header that hold flags rather than the offset (TARGET_PAGE_BITS = 12). */
export const RAM_FLAG_MASK = TARGET_PAGE_SIZE - 1;

/** The `ram` section's identity: `ram_mig_init` registers it as ("ram", 0, version 4). */
export const RAM_IDSTR = 'ram';
export const RAM_VERSION = 4;

export type SectionType = 'start' | 'part' | 'end';

export const SECTION_TYPE_BYTE: Record<SectionType, number> = {
  start: VmRecord.SECTION_START,
  part: VmRecord.SECTION_PART,
  end: VmRecord.SECTION_END,
};

/** One entry of the MEM_SIZE block list (§3.3). */
export interface RamBlockInfo {
  name: string;
  usedLength: number;
  /**
   * Present only when postcopy-ram was advised and the block's page size differs from the host
   * page size (hugepage-backed blocks). The stream does not say which blocks carry it; the reader
   * infers it (see measureBlockEntry in reader.ts).
   */
  pageSize?: number;
}

// ---------------------------------------------------------------------------------------
// Events

/**
 * Where opaque bytes came from. `header` is magic, version and configuration; `command` is one
 * whole QEMU_VM_COMMAND record; `package` is (part of) the blob that follows MIG_CMD_PACKAGED;
 * `tail` is everything from the first FULL section after `ram` END, or from QEMU_VM_EOF: device
 * state, EOF and the vmdesc, which a relay copies verbatim until the source closes.
 */
export type OpaqueWhat = 'header' | 'command' | 'package' | 'tail';

/**
 * Bytes to pass through unchanged. `package` and `tail` runs are split wherever the input was
 * chunked (they are streamed, not assembled); `header` and `command` runs are always whole.
 */
export interface OpaqueEvent {
  kind: 'opaque';
  what: OpaqueWhat;
  /** Stream offset of bytes[0]. */
  offset: number;
  bytes: Buffer;
  /** For `command`: the command number (a relay flushes diverted pages before SWITCHOVER_START). */
  command?: number;
}

/** The header of a `ram` START/PART/END section; its records, EOS and footer follow. */
export interface SectionEvent {
  kind: 'section';
  type: SectionType;
  offset: number;
  sectionId: number;
  /** START only: always "ram", instance 0, version 4 (anything else is refused). */
  idstr?: string;
  instanceId?: number;
  versionId?: number;
}

/** The MEM_SIZE record with its block list (the body of `ram` START). */
export interface MemSizeEvent {
  kind: 'mem-size';
  offset: number;
  totalBytes: number;
  blocks: RamBlockInfo[];
}

/** A ZERO or PAGE record. */
export interface PageEvent {
  kind: 'page';
  offset: number;
  /** The RAMBlock idstr, resolved through CONTINUE if the record used it. */
  block: string;
  /** Byte offset inside the block (not a guest physical address). */
  addr: number;
  /** The page's TARGET_PAGE_SIZE bytes, or null for a ZERO record. May be a view of pushed input. */
  data: Buffer | null;
  /** ZERO records: the fill byte on the wire (QEMU accepts only 0). 0 for PAGE records. */
  fill: number;
  /** The source omitted the block name (CONTINUE). Informational: the writer always names it. */
  continued: boolean;
  /** The record's bytes as read (a view of pushed input); absent on pages built by hand. */
  raw?: Buffer;
}

/** RAM_SAVE_FLAG_EOS: the end of a section's RAM records. */
export interface EosEvent {
  kind: 'eos';
  offset: number;
}

/** QEMU_VM_SECTION_FOOTER closing a `ram` section. */
export interface FooterEvent {
  kind: 'footer';
  offset: number;
  sectionId: number;
}

export type StreamEvent = OpaqueEvent | SectionEvent | MemSizeEvent | PageEvent | EosEvent | FooterEvent;

// ---------------------------------------------------------------------------------------
// Errors

export type QemuStreamErrorCode =
  /** Not a QEMU migration stream, or a version a 10.0 target would refuse. */
  | 'BAD_HEADER'
  /** The configuration record has a subsection or capability that changes the RAM layout. */
  | 'UNSUPPORTED_CONFIGURATION'
  /** A top-level type byte that cannot start a record here. */
  | 'UNKNOWN_RECORD'
  /** A section whose payload only its device can delimit (non-ram live device, FULL before ram END). */
  | 'UNDELIMITABLE_SECTION'
  /** A ram section out of order (second START, PART before START, PART after END, bad version). */
  | 'BAD_SECTION'
  /** A command the reader must understand but cannot (PACKAGED with the wrong length). */
  | 'BAD_COMMAND'
  /** A RAM flag that exists but is outside the supported capability set (xbzrle, multifd, RDMA…). */
  | 'UNSUPPORTED_RAM_FLAG'
  /** A RAM flag (or combination) QEMU does not define. */
  | 'UNKNOWN_RAM_FLAG'
  /** A RAM record that is malformed: CONTINUE without a block, unknown block, offset out of range. */
  | 'BAD_RAM_RECORD'
  /** A section footer missing or naming another section. */
  | 'BAD_FOOTER'
  /** The stream ended in the middle of a record, or before QEMU_VM_EOF. */
  | 'TRUNCATED'
  /** The writer was given events that do not form a well-formed stream. */
  | 'BAD_EVENT';

/**
 * Everything the reader or writer refuses. `offset` is the stream offset of the record at fault
 * (the writer: its output offset), `record` names it, so a relay's log says what and where.
 */
export class QemuStreamError extends Error {
  override readonly name = 'QemuStreamError';
  constructor(
    readonly code: QemuStreamErrorCode,
    readonly offset: number,
    readonly record: string,
    detail: string,
  ) {
    super(`${record} at stream offset ${offset}: ${detail} (${code})`);
  }
}

// ---------------------------------------------------------------------------------------
// Small helpers

export function hex(n: number, width = 0): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}

/**
 * A be64 as a JS number. RAM sizes and offsets stay far below 2^53; a larger value can only be
 * corruption, and is reported rather than silently rounded.
 */
export function readBe64(b: Buffer, pos: number, at: number, record: string): number {
  const v = b.readBigUInt64BE(pos);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new QemuStreamError('BAD_RAM_RECORD', at, record, `64-bit value 0x${v.toString(16)} is out of range`);
  }
  return Number(v);
}

export function writeBe64(b: Buffer, value: number, pos: number): void {
  b.writeBigUInt64BE(BigInt(value), pos);
}
