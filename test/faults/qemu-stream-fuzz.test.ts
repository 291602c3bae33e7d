/**
 * Bad input at ferry's QEMU migration-stream parser, the one place a relay reads bytes that a
 * QEMU on another host produced: seeded mutations of the real QEMU 10.0 streams in
 * test/fixtures/qemu-stream (FERRY_FUZZ_SEED overrides the fixed default; the seed is printed).
 * Each mutated stream is fed to a fresh StreamReader in random chunks of 1..65536 bytes, then
 * end(). It must end one of two ways:
 *
 *   - rejected with a QemuStreamError whose code is one of format.ts's and whose message names
 *     the stream offset, never another exception (RangeError, TypeError, an internal error);
 *   - accepted: every event re-encodes with a fresh StreamWriter, the re-encoded stream reads
 *     back to the same events (kind, block, offset in the block, page bytes, section fields,
 *     opaque bytes per run; not stream offsets nor `continued`, which the writer changes), and
 *     re-encoding that gives the same bytes again. A relay's RamLayout, built from the MEM_SIZE
 *     list, maps each page or refuses it with a QemuStreamError.
 *
 * Both outcomes must occur for both fixtures, and the reader is bounded: no input yields more
 * events than it has bytes. Mutations favour the places that steer the parser: the first few
 * hundred bytes (header, configuration, ram START, MEM_SIZE) and record headers (flags, name
 * lengths, section ids); whole records are duplicated and removed, so many mutants stay
 * well-formed and reach the writer and the layout.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { RamLayout } from '../../src/hypervisor/qemu/relay/layout';
import { QemuStreamError, TARGET_PAGE_SIZE, type QemuStreamErrorCode, type RamBlockInfo, type StreamEvent } from '../../src/hypervisor/qemu/stream/format';
import { StreamReader } from '../../src/hypervisor/qemu/stream/reader';
import { encodeEos, encodeFooter, encodeMemSize, encodePage, encodeRamPart, encodeSectionHeader, StreamWriter } from '../../src/hypervisor/qemu/stream/writer';
import { prng } from '../helpers/isolated';

const seed = Number(process.env.FERRY_FUZZ_SEED ?? 0x5eed);
console.log(`fuzz seed: FERRY_FUZZ_SEED=${seed}`);

/**
 * Mutants per fixture. An accepted mutant costs two full reads (the second of a stream that
 * names every page's block, which reads about twice as slowly as QEMU's CONTINUE records) and
 * two writes: about 20 ms on a loaded 2-core machine; a rejected one stops at its error.
 */
const N = 800;

const FIXTURES = path.join(import.meta.dirname, '../fixtures/qemu-stream');
const fixture = (name: string): Buffer => zlib.gunzipSync(fs.readFileSync(path.join(FIXTURES, `${name}.bin.gz`)));

/** Every QemuStreamErrorCode (the type is checked against this list both ways below). */
const CODES = [
  'BAD_HEADER',
  'UNSUPPORTED_CONFIGURATION',
  'UNKNOWN_RECORD',
  'UNDELIMITABLE_SECTION',
  'BAD_SECTION',
  'BAD_COMMAND',
  'UNSUPPORTED_RAM_FLAG',
  'UNKNOWN_RAM_FLAG',
  'BAD_RAM_RECORD',
  'BAD_FOOTER',
  'TRUNCATED',
  'BAD_EVENT',
] as const satisfies readonly QemuStreamErrorCode[];
type Unlisted = Exclude<QemuStreamErrorCode, (typeof CODES)[number]>;
const _allCodesListed: [Unlisted] extends [never] ? true : never = true;
const KNOWN_CODES = new Set<string>(CODES);

// ---------------------------------------------------------------------------------------
// Reading

type Outcome =
  | { ok: true; events: StreamEvent[] }
  | { ok: false; err: QemuStreamError };

/** Log-uniform chunk sizes in 1..65536: tiny and large chunks within every input. */
function chunkSize(rnd: () => number): number {
  return Math.min(65536, Math.floor(65536 ** rnd()));
}

/**
 * Feed `input` to a fresh reader in chunks from `sizes`, then end(). A QemuStreamError is an
 * outcome; anything else thrown (by the reader or by the checks here) propagates.
 */
function read(input: Buffer, sizes: () => number): Outcome {
  const r = new StreamReader();
  const events: StreamEvent[] = [];
  let lastOffset = -1;
  try {
    for (let i = 0; i < input.length; ) {
      const n = sizes();
      r.push(input.subarray(i, i + n));
      i += n;
      for (let e = r.next(); e; e = r.next()) {
        // Bounded: every event stands for at least one input byte.
        if (events.length >= input.length) throw new Error(`more than ${input.length} events from ${input.length} bytes`);
        // In stream order, and views of what was pushed, at the offset they claim.
        if (e.offset <= lastOffset) throw new Error(`${e.kind} event at offset ${e.offset} after one at ${lastOffset}`);
        lastOffset = e.offset;
        if (e.kind === 'opaque' && !e.bytes.equals(input.subarray(e.offset, e.offset + e.bytes.length))) {
          throw new Error(`opaque ${e.what} event at ${e.offset} is not the input's bytes there`);
        }
        if (e.kind === 'page' && e.data) {
          const at = e.offset + 8 + (e.continued ? 0 : 1 + Buffer.byteLength(e.block, 'latin1'));
          if (!e.data.equals(input.subarray(at, at + e.data.length))) throw new Error(`page event at ${e.offset}: data is not the input's bytes at ${at}`);
        }
        events.push(e);
      }
    }
    r.end();
  } catch (err) {
    if (!(err instanceof QemuStreamError)) throw err;
    checkError(err, input.length);
    // The reader stays failed with the same error.
    let again: unknown;
    try {
      r.end();
    } catch (e) {
      again = e;
    }
    if (again !== err) throw new Error(`after ${err.message}, end() threw ${String(again)} instead of the same error`);
    return { ok: false, err };
  }
  return { ok: true, events };
}

function checkError(err: QemuStreamError, inputLength: number): void {
  if (!KNOWN_CODES.has(err.code) || err.code === 'BAD_EVENT') throw new Error(`reader error with code ${err.code}: ${err.message}`);
  if (!Number.isSafeInteger(err.offset) || err.offset < 0 || err.offset > inputLength) throw new Error(`error offset ${err.offset} outside the ${inputLength}-byte input: ${err.message}`);
  if (!err.message.includes(`at stream offset ${err.offset}`)) throw new Error(`error message does not name its offset ${err.offset}: ${err.message}`);
}

// ---------------------------------------------------------------------------------------
// Comparing

/** An event's meaning to the target: no stream offsets, no `continued`; package/tail runs merged. */
type Sem =
  | { kind: 'opaque'; what: string; command: number | undefined; bytes: Buffer }
  | { kind: 'section'; fields: string }
  | { kind: 'mem-size'; fields: string }
  | { kind: 'page'; block: string; addr: number; fill: number; data: Buffer | null }
  | { kind: 'eos' }
  | { kind: 'footer'; sectionId: number };

function semantic(events: StreamEvent[]): Sem[] {
  const out: Sem[] = [];
  let run: Buffer[] = [];
  const flush = (): void => {
    const last = out[out.length - 1];
    if (run.length > 1 && last?.kind === 'opaque') last.bytes = Buffer.concat(run);
    run = [];
  };
  for (const e of events) {
    const last = out[out.length - 1];
    if (e.kind === 'opaque' && (e.what === 'package' || e.what === 'tail') && last?.kind === 'opaque' && last.what === e.what && run.length > 0) {
      run.push(e.bytes);
      continue;
    }
    flush();
    switch (e.kind) {
      case 'opaque':
        out.push({ kind: 'opaque', what: e.what, command: e.command, bytes: e.bytes });
        if (e.what === 'package' || e.what === 'tail') run = [e.bytes];
        break;
      case 'section':
        out.push({ kind: 'section', fields: JSON.stringify([e.type, e.sectionId, e.idstr, e.instanceId, e.versionId]) });
        break;
      case 'mem-size':
        out.push({ kind: 'mem-size', fields: JSON.stringify([e.totalBytes, e.blocks.map((b) => [b.name, b.usedLength, b.pageSize])]) });
        break;
      case 'page':
        out.push({ kind: 'page', block: e.block, addr: e.addr, fill: e.fill, data: e.data });
        break;
      case 'eos':
        out.push({ kind: 'eos' });
        break;
      case 'footer':
        out.push({ kind: 'footer', sectionId: e.sectionId });
        break;
    }
  }
  flush();
  return out;
}

const describeSem = (s: Sem | undefined): string =>
  s === undefined ? 'nothing' : JSON.stringify(s, (k, v: unknown) => (k === 'bytes' || k === 'data' ? (v === null ? null : '<bytes>') : v));

/** Null if `a` and `b` mean the same, else where and how they differ. */
function difference(a: Sem[], b: Sem[]): string | null {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i];
    const y = b[i];
    let same = x !== undefined && y !== undefined && x.kind === y.kind;
    if (same && x && y) {
      switch (x.kind) {
        case 'opaque': {
          const o = y as typeof x;
          same = x.what === o.what && x.command === o.command && x.bytes.equals(o.bytes);
          break;
        }
        case 'section':
        case 'mem-size':
          same = x.fields === (y as typeof x).fields;
          break;
        case 'page': {
          const o = y as typeof x;
          same = x.block === o.block && x.addr === o.addr && x.fill === o.fill && (x.data === null ? o.data === null : o.data !== null && x.data.equals(o.data));
          break;
        }
        case 'footer':
          same = x.sectionId === (y as typeof x).sectionId;
          break;
        case 'eos':
          break;
      }
    }
    if (!same) return `event ${i} of ${a.length}/${b.length}: ${describeSem(x)} vs ${describeSem(y)}`;
  }
  return null;
}

/** What the relays do with the pages: a RamLayout from MEM_SIZE, then a page number per page. */
function mapPages(events: StreamEvent[]): 'mapped' | QemuStreamError {
  let layout: RamLayout | null = null;
  try {
    for (const e of events) {
      if (e.kind === 'mem-size') layout = new RamLayout(e.blocks);
      if (e.kind !== 'page') continue;
      // The relays refuse a page before MEM_SIZE themselves (a START without the list).
      if (!layout) return new QemuStreamError('BAD_RAM_RECORD', e.offset, 'RAM page', 'a page before MEM_SIZE');
      const pfn = layout.pfn(e.block, e.addr, e.offset);
      if (!Number.isSafeInteger(pfn) || pfn < 0 || pfn >= layout.pageCount) throw new Error(`page ${e.block}@${e.addr} mapped to ${pfn} of ${layout.pageCount}`);
      const back = layout.locate(pfn);
      if (back.block !== e.block || back.addr !== e.addr) throw new Error(`page ${pfn} locates to ${back.block}@${back.addr}, not ${e.block}@${e.addr}`);
    }
  } catch (err) {
    if (err instanceof QemuStreamError) return err;
    throw err;
  }
  return 'mapped';
}

/**
 * An accepted stream: re-encode, read back, compare; re-encode again (a stream without CONTINUE
 * is a fixed point of read + write); map the pages. Returns the layout outcome.
 */
function checkAccepted(events: StreamEvent[], rnd: () => number): 'mapped' | QemuStreamError {
  const w = new StreamWriter();
  const encoded = Buffer.concat(events.map((e) => w.write(e)));
  const back = read(encoded, () => chunkSize(rnd));
  if (!back.ok) throw new Error(`the re-encoded stream is refused: ${back.err.message}`);
  const diff = difference(semantic(events), semantic(back.events));
  if (diff) throw new Error(`the re-encoded stream reads back differently: ${diff}`);
  const again = new StreamWriter().writeAll(back.events);
  if (!again.equals(encoded)) throw new Error(`re-encoding the re-encoded stream changes it (${encoded.length} → ${again.length} bytes)`);
  return mapPages(events);
}

// ---------------------------------------------------------------------------------------
// Mutating

/** The unmutated stream's landmarks, in its own offsets. */
interface Shape {
  /** Where each record starts (every event's offset), then the stream's length. */
  starts: number[];
  /** Where a top-level record may start: commands, section headers, the tail. */
  tops: number[];
  /** Just after the magic, version and configuration: where configuration subsections go. */
  headerEnd: number;
  /** Well-formed pieces to splice in at `tops` (name, bytes). */
  tokens: [string, Buffer][];
  /** The MEM_SIZE record with its block list: where it is and what it says. */
  memSize: { from: number; to: number; totalBytes: number; blocks: RamBlockInfo[] } | null;
}

function shape(buf: Buffer): Shape {
  const out = read(buf, () => buf.length);
  if (!out.ok) throw out.err;
  const ev = out.events;
  const starts = [...ev.map((e) => e.offset), buf.length];
  const tops = ev.filter((e) => e.kind === 'section' || (e.kind === 'opaque' && e.what !== 'package' && e.what !== 'header')).map((e) => e.offset);
  const header = ev[0]!;
  const headerEnd = header.kind === 'opaque' ? header.bytes.length : 0;
  const start = ev.find((e) => e.kind === 'section');
  const sectionId = start?.kind === 'section' ? start.sectionId : 0;
  const mem = ev.find((e) => e.kind === 'mem-size');
  const blocks = mem?.kind === 'mem-size' ? mem.blocks : [];
  const be = (bits: 16 | 32 | 64, v: number): Buffer => {
    const b = Buffer.alloc(bits / 8);
    if (bits === 16) b.writeUInt16BE(v);
    else if (bits === 32) b.writeUInt32BE(v);
    else b.writeBigUInt64BE(BigInt(v));
    return b;
  };
  const str8 = (t: string): Buffer => Buffer.concat([Buffer.from([t.length]), Buffer.from(t, 'latin1')]);
  const sub = (name: string, ...fields: Buffer[]): Buffer => Buffer.concat([Buffer.from([0x05]), str8(name), be(32, 1), ...fields]);
  const page = (i: number, addr: number, data: boolean): Buffer => {
    const bl = blocks[i % Math.max(1, blocks.length)]?.name ?? 'pc.ram';
    return encodePage({ block: bl, addr, data: data ? Buffer.alloc(TARGET_PAGE_SIZE, i) : null, fill: 0 });
  };
  const lastBlock = blocks[blocks.length - 1];
  const tokens: [string, Buffer][] = [
    ['subsection target-page-bits 12', sub('configuration/target-page-bits', be(32, 12))],
    ['subsection target-page-bits 13', sub('configuration/target-page-bits', be(32, 13))],
    ['subsection uuid', sub('configuration/uuid', Buffer.alloc(16, 0xab))],
    ['subsection capabilities', sub('configuration/capabilities', be(32, 1), str8('x-ignore-shared'))],
    ['POSTCOPY_ADVISE', Buffer.concat([Buffer.from([0x08]), be(16, 3), be(16, 16), be(64, 0x1000), be(64, 0x1000)])],
    ['PACKAGED of 5', Buffer.concat([Buffer.from([0x08]), be(16, 7), be(16, 4), be(32, 5), Buffer.from([0x08, 0, 2, 0, 0])])],
    ['SWITCHOVER_START', Buffer.concat([Buffer.from([0x08]), be(16, 11), be(16, 0)])],
    ['EOF', Buffer.from([0x00])],
    ['FULL header', Buffer.concat([Buffer.from([0x04]), be(32, sectionId + 1), str8('timer'), be(32, 0), be(32, 2)])],
    ['empty ram PART', encodeRamPart(sectionId, [])],
    ['ram PART with pages', Buffer.concat([encodeSectionHeader('part', sectionId), page(0, 0, true), page(1, 0x1000, false), page(2, 0, false), encodeEos(), encodeFooter(sectionId)])],
    ['ram PART, page past the block', Buffer.concat([encodeSectionHeader('part', sectionId), page(0, lastBlock ? lastBlock.usedLength : 0, false), encodeEos(), encodeFooter(sectionId)])],
    ['ram END', Buffer.concat([encodeSectionHeader('end', sectionId), encodeEos(), encodeFooter(sectionId)])],
    ['second ram START', encodeSectionHeader('start', sectionId)],
    ['MEM_SIZE', encodeMemSize(blocks.reduce((a, b) => a + b.usedLength, 0), blocks)],
    ['the header', buf.subarray(0, headerEnd)],
  ];
  const memAt = mem ? ev.indexOf(mem) : -1;
  const memSize = mem?.kind === 'mem-size' ? { from: mem.offset, to: starts[memAt + 1]!, totalBytes: mem.totalBytes, blocks } : null;
  return { starts, tops, headerEnd, tokens, memSize };
}

const INTERESTING = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x08, 0x10, 0x20, 0x22, 0x28, 0x7e, 0x7f, 0x80, 0xff];

interface Edit {
  /** Position in the unmutated input; edits apply from the highest down, so positions hold. */
  pos: number;
  what: string;
  apply(b: Buffer): Buffer;
}

/**
 * 1..4 edits: bit flips and byte overwrites (anywhere, in the first 512 bytes, or within 16
 * bytes of a record start), be32/be64 overwrites at record headers, truncation, insertion and
 * deletion of byte runs, duplicated and removed whole records, well-formed pieces (a
 * configuration subsection, a command, a ram PART, EOF…) spliced in where a record may start,
 * and the MEM_SIZE block list rewritten.
 */
function mutate(input: Buffer, { starts, tops, headerEnd, tokens, memSize }: Shape, rnd: () => number): { bytes: Buffer; edits: string[] } {
  const int = (n: number): number => Math.floor(rnd() * n);
  const len = input.length;
  // A third of the time one of the first dozen records: the commands, ram START, MEM_SIZE.
  const record = (): number => int(rnd() < 0.3 ? Math.min(12, starts.length - 1) : starts.length - 1);
  const place = (): number => {
    // Anywhere (mostly page data and the opaque tail, which only need to be carried through),
    // the first 512 bytes, or the first 16 bytes of a record.
    const r = rnd();
    if (r < 0.2) return int(len);
    if (r < 0.5) return int(Math.min(512, len));
    return Math.min(len - 1, starts[record()]! + int(16));
  };
  const edits: Edit[] = [];
  const count = 1 + int(4);
  for (let k = 0; k < count; k++) {
    const op = int(14);
    const pos = place();
    switch (op) {
      case 0:
      case 1:
      case 2: {
        const bit = int(8);
        edits.push({ pos, what: `flip bit ${bit} at ${pos}`, apply: (b) => (pos < b.length && (b[pos] = b[pos]! ^ (1 << bit)), b) });
        break;
      }
      case 3:
      case 4: {
        const v = int(2) ? INTERESTING[int(INTERESTING.length)]! : int(256);
        edits.push({ pos, what: `byte ${v} at ${pos}`, apply: (b) => (pos < b.length && (b[pos] = v), b) });
        break;
      }
      case 5: {
        // A be32 or be64 at a record header field: small, page-sized, huge.
        const at = starts[record()]! + int(9);
        const wide = int(2) === 1;
        const v = [0, 1, 2, 4096, 0x1000 | 0x08, 0x7fffffff, 0xffffffff, int(0x100000000)][int(8)]!;
        const v64 = int(2) ? BigInt(v) : BigInt(v) << 32n;
        edits.push({
          pos: at,
          what: wide ? `be64 0x${v64.toString(16)} at ${at}` : `be32 ${v} at ${at}`,
          apply: (b) => {
            if (wide && at + 8 <= b.length) b.writeBigUInt64BE(v64, at);
            else if (!wide && at + 4 <= b.length) b.writeUInt32BE(v, at);
            return b;
          },
        });
        break;
      }
      case 6: {
        const at = int(3) ? starts[record()]! + int(4) : int(len);
        edits.push({ pos: at, what: `truncate at ${at}`, apply: (b) => b.subarray(0, at) });
        break;
      }
      case 7: {
        const run = Buffer.from(Array.from({ length: 1 + int(16) }, () => (int(2) ? INTERESTING[int(INTERESTING.length)]! : int(256))));
        edits.push({ pos, what: `insert ${run.length} bytes at ${pos}`, apply: (b) => Buffer.concat([b.subarray(0, pos), run, b.subarray(pos)]) });
        break;
      }
      case 8: {
        const n = 1 + int(int(2) ? 8 : 64);
        edits.push({ pos, what: `delete ${n} bytes at ${pos}`, apply: (b) => Buffer.concat([b.subarray(0, pos), b.subarray(pos + n)]) });
        break;
      }
      case 9:
      case 10: {
        // Duplicate a whole record (sometimes several in a row), right after itself or at another record start.
        const i = record();
        const span = 1 + int(int(4) ? 1 : 8);
        const copy = input.subarray(starts[i]!, starts[Math.min(i + span, starts.length - 1)]!);
        const at = int(2) ? starts[Math.min(i + span, starts.length - 1)]! : starts[record()]!;
        edits.push({ pos: at, what: `copy records ${i}+${span} (${copy.length} bytes) to ${at}`, apply: (b) => Buffer.concat([b.subarray(0, at), copy, b.subarray(at)]) });
        break;
      }
      case 11: {
        // A well-formed piece where a top-level record may start (or a subsection after the header).
        const [what, bytes] = tokens[int(tokens.length)]!;
        const at = what.startsWith('subsection') ? headerEnd : int(2) ? tops[int(Math.min(6, tops.length))]! : tops[int(tops.length)]!;
        edits.push({ pos: at, what: `insert ${what} at ${at}`, apply: (b) => Buffer.concat([b.subarray(0, at), bytes, b.subarray(at)]) });
        break;
      }
      case 12: {
        // The MEM_SIZE block list rewritten: a block duplicated, dropped, resized, renamed,
        // given a page size, or two swapped; the total follows (or not).
        if (!memSize) break;
        const blocks = memSize.blocks.map((b) => ({ ...b }));
        let total = memSize.totalBytes;
        const i = int(blocks.length);
        const bl = blocks[i]!;
        const change = int(6);
        let what: string;
        if (change === 0) {
          blocks.splice(int(blocks.length + 1), 0, { ...bl });
          total += bl.usedLength;
          what = `block ${bl.name} listed twice`;
        } else if (change === 1) {
          blocks.splice(i, 1);
          total -= bl.usedLength;
          what = `block ${bl.name} dropped`;
        } else if (change === 2) {
          const d = [-TARGET_PAGE_SIZE, TARGET_PAGE_SIZE, -1, 1, 2 ** 40][int(5)]!;
          bl.usedLength += d;
          if (int(4)) total += d;
          what = `block ${bl.name} resized by ${d}`;
        } else if (change === 3) {
          bl.name = int(2) ? `${bl.name}x` : bl.name.slice(0, 1);
          what = `block ${i} renamed ${bl.name}`;
        } else if (change === 4) {
          bl.pageSize = [0x200000, 0x1000, 0x1001, 0][int(4)]!;
          what = `block ${bl.name} with page size ${bl.pageSize}`;
        } else {
          const j = int(blocks.length);
          [blocks[i], blocks[j]] = [blocks[j]!, blocks[i]!];
          what = `blocks ${i} and ${j} swapped`;
        }
        let bytes: Buffer;
        try {
          bytes = encodeMemSize(total, blocks);
        } catch {
          break; // a name the encoder cannot write (the mutation is dropped, not the case)
        }
        const { from, to } = memSize;
        edits.push({ pos: from, what: `MEM_SIZE: ${what}`, apply: (b) => Buffer.concat([b.subarray(0, from), bytes, b.subarray(to)]) });
        break;
      }
      default: {
        const i = record();
        const span = 1 + int(int(4) ? 1 : 8);
        const from = starts[i]!;
        const to = starts[Math.min(i + span, starts.length - 1)]!;
        edits.push({ pos: from, what: `remove records ${i}+${span} (${to - from} bytes at ${from})`, apply: (b) => Buffer.concat([b.subarray(0, from), b.subarray(to)]) });
      }
    }
  }
  edits.sort((a, b) => b.pos - a.pos);
  let b: Buffer = Buffer.from(input);
  for (const e of edits) b = e.apply(b);
  return { bytes: b, edits: edits.map((e) => e.what) };
}

// ---------------------------------------------------------------------------------------

interface Tally {
  accepted: number;
  acceptedMutated: number;
  rejected: number;
  codes: Map<string, number>;
  layoutMapped: number;
  layoutRefused: number;
}

function run(input: Buffer, rnd: () => number, tally: Tally): Outcome {
  const out = read(input, () => chunkSize(rnd));
  if (!out.ok) {
    tally.rejected++;
    tally.codes.set(out.err.code, (tally.codes.get(out.err.code) ?? 0) + 1);
    return out;
  }
  tally.accepted++;
  const mapped = checkAccepted(out.events, rnd);
  if (mapped === 'mapped') tally.layoutMapped++;
  else {
    checkError(mapped, input.length);
    tally.layoutRefused++;
  }
  return out;
}

const newTally = (): Tally => ({ accepted: 0, acceptedMutated: 0, rejected: 0, codes: new Map(), layoutMapped: 0, layoutRefused: 0 });

describe('QEMU migration-stream reader under seeded mutation', () => {
  for (const name of ['precopy', 'postcopy'] as const) {
    it(`${name}: ${N} mutants, each a QemuStreamError or a stream that re-encodes to the same events`, { timeout: 120_000 }, () => {
      const original = fixture(name);
      const rnd = prng(seed ^ (name === 'precopy' ? 0x9e01 : 0x9e02));
      const sh = shape(original);
      const tally = newTally();

      // The unmutated fixture is accepted, in any chunking, and its pages all map.
      for (let k = 0; k < 3; k++) {
        const out = run(original, rnd, tally);
        expect(out.ok, `unmutated ${name}`).toBe(true);
      }
      expect(tally.layoutMapped).toBe(3);

      for (let i = 0; i < N; i++) {
        const m = mutate(original, sh, rnd);
        let out: Outcome;
        try {
          out = run(m.bytes, rnd, tally);
        } catch (err) {
          throw new Error(`seed ${seed} ${name} case ${i} (${m.edits.join('; ')}): ${String(err)}`, { cause: err });
        }
        if (out.ok && !m.bytes.equals(original)) tally.acceptedMutated++;
      }
      const { accepted, acceptedMutated, rejected, layoutMapped, layoutRefused } = tally;
      console.log(
        `${name}: ${accepted - 3} of ${N} accepted (${acceptedMutated} differing from the fixture; pages mapped ${layoutMapped - 3}, ` +
          `layout refused ${layoutRefused}), ${rejected} rejected ${JSON.stringify(Object.fromEntries([...tally.codes].sort()))}`,
      );
      expect(accepted + rejected).toBe(N + 3);
      // Both outcomes, in numbers: the fuzzer gets past the header and the records it steers by.
      expect(acceptedMutated, 'mutated streams accepted').toBeGreaterThan(N / 20);
      expect(rejected, 'mutated streams rejected').toBeGreaterThan(N / 5);
      expect(layoutMapped - 3, 'accepted mutants whose pages all map').toBeGreaterThan(0);
      // Rejections come from all over the grammar, not only from truncation.
      expect(tally.codes.size).toBeGreaterThanOrEqual(5);
      expect(tally.codes.get('BAD_RAM_RECORD') ?? 0).toBeGreaterThan(0);
      expect(tally.codes.get('TRUNCATED') ?? 0).toBeGreaterThan(0);
    });
  }

  it('the multifd fixture is refused with UNSUPPORTED_RAM_FLAG in any chunking', () => {
    const multifd = fixture('multifd');
    const rnd = prng(seed ^ 0x9e03);
    for (let k = 0; k < 5; k++) {
      const out = read(multifd, () => chunkSize(rnd));
      expect(out.ok).toBe(false);
      if (!out.ok) expect(out.err.code).toBe('UNSUPPORTED_RAM_FLAG');
    }
  });
});
