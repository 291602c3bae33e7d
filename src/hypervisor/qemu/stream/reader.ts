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
  QemuStreamError,
  RAM_IDSTR,
  RAM_VERSION,
  TARGET_PAGE_SIZE,
  VmCommand,
  hex,
  type RamBlockInfo,
  type SectionType,
  type StreamEvent,
} from './format';
import { ByteQueue } from './byte-queue';
import { MAX_RAM_BLOCKS, measureBlockEntryArgs, measureFooter, measureHeader, measureRamRecord, measureTopRecord, type Measured, type RamRecord, type TopRecord } from './records';

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

  /** Inside MIG_CMD_PACKAGED's blob: no record boundary of the outer stream until it ends. */
  get inPackage(): boolean {
    return this.state.s === 'package';
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
