/**
 * par-migrate on stock QEMU, target side. The target's relay receives the source relay's
 * stream over the migration network and writes one well-formed stream into the target QEMU
 * (`-incoming unix:<path>`):
 *
 * - every record from the source, in order, as it arrives (dynamic pages included), and the
 *   pages it delivers are marked;
 * - once StaticData is committed on shared storage, its pages, in PART sections of their own
 *   inserted between two records — each page only if no dynamic version of it was delivered
 *   before (the merge rule, checked when the page is written into the stream, so a newer
 *   page is never overwritten and a later one overwrites it as usual). The merge goes first:
 *   while committed chunks wait to be merged, the source's records wait at the next record
 *   boundary (pre-copy cannot end before the merge, so the merge is what to finish first);
 * - nothing that ends pre-copy (ram END, post-copy commands) passes before the merge is done.
 *
 * When the target QEMU's RAM is a tmpfs file it shares (`ramFile`: ferry launches incoming
 * guests so), the static pages of that block are not put through QEMU's stream at all: the
 * relay writes them into the file, at their offsets, with the same rule. The check and the
 * write happen in one synchronous step of the relay, between two records it forwards, so a
 * dynamic page QEMU has not loaded yet always lands after (and over) the static one. QEMU then
 * spends no CPU on the bulk pass's pages, and the source's records need not wait for them.
 *
 * Once post-copy runs (after QEMU's PACKAGED command) the rest of the stream is forwarded
 * untouched. The target QEMU's return path goes back to the source relay byte for byte.
 *
 * With PbData (`pbdata`), post-copy's background pages come from PbData on shared storage
 * instead (the source relay writes them there): the relay goes on parsing after the package,
 * follows PbData's chunks as they are committed and writes their pages into QEMU's stream in
 * PART sections of their own, between two records, with no merge rule (QEMU sends a page once
 * after the switch: it is in PbData or on the preempt channel, never both). The end of the
 * `ram` section (and QEMU_VM_EOF) waits until PbData is committed and all of it written, so the
 * target QEMU ends its incoming migration with every page.
 */
import net from 'node:net';
import { Bitmap } from '../../../dataplane/bitmap';
import { follow } from '../../../dataplane/merge';
import type { Chunk } from '../../../dataplane/store-format';
import type { SnapshotReader } from '../../../dataplane/store-reader';
import { QemuStreamError, VmCommand, type PageEvent, type StreamEvent } from '../stream/format';
import { StreamReader } from '../stream/reader';
import { StreamWriter } from '../stream/writer';
import { RamLayout } from './layout';
import { splice } from './link';
import { parseRamDiscard, type RamDiscard } from './recovery';
import { RamFile } from './ram-file';

/**
 * Commands that end pre-copy. POSTCOPY_RAM_DISCARD is one of them: it drops the target's copy of
 * the pages dirty at the switch, so a static page written after it would come back stale.
 */
const GATED_COMMANDS = new Set<number>([VmCommand.POSTCOPY_RAM_DISCARD, VmCommand.POSTCOPY_LISTEN, VmCommand.POSTCOPY_RUN, VmCommand.PACKAGED, VmCommand.SWITCHOVER_START]);
/** Static pages per inserted PART section. */
const INSERT_PAGES = 1024;
/** StaticData chunks are read into buffers of this size: a chunk of 1024 pages and its index; a bigger one gets its own. */
const READ_BUFFER_BYTES = 4 * 2 ** 20 + 64 * 2 ** 10;
/** PART buffers kept for reuse. */
const PART_POOL = 3;
/** PbData chunks (256 pages) are read into buffers of this size. */
const PBDATA_READ_BUFFER_BYTES = 2 ** 20 + 16 * 2 ** 10;
/** How often to look for PbData's next chunk: a faulting vCPU may wait for it. */
const PBDATA_POLL_MS = 3;

export interface TargetRelayOptions {
  /** The source relay's authenticated connection (link.ts). */
  accepted: Promise<net.Socket>;
  /** Connect to the target QEMU's incoming unix socket. */
  connectQemu: () => Promise<net.Socket>;
  /** The source relay's link for QEMU's post-copy preempt channel (link.ts), if it opens one: carried to QEMU untouched. */
  preempt?: Promise<net.Socket>;
  /** par-migrate: a StaticData merge must happen before pre-copy ends. */
  expectStatic: boolean;
  /** The target QEMU's RAM block `block` is this file (shared, on tmpfs): static pages of it are written there. */
  ramFile?: { block: string; path: string };
  /** PbData: post-copy's background pages come from this snapshot (see the header). */
  pbdata?: () => SnapshotReader;
  /** The source relay's link for PbData's acknowledgements (link.ts): a count of pages put into QEMU's stream, a line each chunk. */
  acks?: Promise<net.Socket>;
  log?: (line: string) => void;
}

export interface StaticMerge {
  pages: number;
  skippedNewer: number;
  bytesRead: number;
  mergeMs: number;
}

export interface TargetRelayStats {
  /** Page records the source relay delivered (the migration network). */
  deliveredPages: number;
  linkBytes: number;
  /** Static pages written into the stream / skipped because a newer one was delivered. */
  mergedPages: number;
  skippedNewer: number;
  /** Of mergedPages: written into the target QEMU's RAM file, not its stream. */
  ramFilePages: number;
  /** Post-copy's background pages written into QEMU's stream from PbData, and PbData's bytes read. */
  pbdataPages: number;
  pbdataBytesRead: number;
}

export class TargetRelay {
  private link: net.Socket | null = null;
  private qemu: net.Socket | null = null;
  /** QEMU's post-copy preempt channel and its link, carried untouched. */
  private preempt: { link: net.Socket; qemu: net.Socket } | null = null;
  private readonly reader = new StreamReader();
  private readonly writer = new StreamWriter();
  private layout: RamLayout | null = null;
  private layoutWaiters: (() => void)[] = [];
  private delivered: Bitmap | null = null;
  /** An event that may not pass before the merge is done. */
  private held: StreamEvent | null = null;
  private mergeDone = false;
  private abandoned: string | null = null;
  private merging: Promise<StaticMerge> | null = null;
  /** Static pages read, waiting for a record boundary. */
  private inject: { pfn: number; data: Buffer | null }[] = [];
  /** Encoded PART buffers QEMU's socket is done with. */
  private readonly partPool: Buffer[] = [];
  private injectWaiters: (() => void)[] = [];
  private qemuBusy = false;
  /** The merge has committed chunks to insert: the source's records wait at the next boundary. */
  private mergeFirst = false;
  /** Top-level records written since the last insertion. */
  private recordsSinceInject = 0;
  /** Where the merge's time went: waiting for the source's commits, waiting to insert (a boundary, QEMU). */
  private mergeWaitSince: number | null = null;
  private mergeWaitMs = 0;
  private insertWaitMs = 0;
  /** Of insertWaitMs: with the target QEMU's socket full (the rest: waiting for a record boundary). */
  private qemuWaitMs = 0;
  /** Static pages of the RAM file go there, not into the stream: the source's records never wait for them. */
  private direct: RamFile | null = null;
  /**
   * The RAM file's pages this relay wrote (block-relative), less those QEMU discarded since
   * (POSTCOPY_RAM_DISCARD punches them out of the file): present in QEMU's memory, absent from
   * its `receivedmap`. A recovered post-copy must not be sent them again (recovery.ts).
   */
  private ramFileResident: { block: string; pages: Bitmap } | null = null;
  /** Post-copy runs: the rest of the stream is forwarded untouched, not parsed. */
  private raw = false;
  private failure: Error | null = null;
  private ended = false;
  private readonly s: TargetRelayStats = { deliveredPages: 0, linkBytes: 0, mergedPages: 0, skippedNewer: 0, ramFilePages: 0, pbdataPages: 0, pbdataBytesRead: 0 };
  /** Post-copy runs and its background pages come from PbData; pbDone: all of PbData is in QEMU's stream. */
  private pbActive = false;
  private pbDone = false;
  private readonly pbAbort = new AbortController();
  private ackSocket: net.Socket | null = null;
  private resolveFinished: () => void = () => undefined;
  readonly finished: Promise<void>;

  constructor(private readonly opts: TargetRelayOptions) {
    this.finished = new Promise<void>((r) => (this.resolveFinished = r));
    void this.start();
  }

  get error(): Error | null {
    return this.failure;
  }

  stats(): TargetRelayStats {
    return { ...this.s };
  }

  close(): void {
    this.pbAbort.abort();
    this.ackSocket?.destroy();
    this.link?.destroy();
    this.qemu?.destroy();
    this.preempt?.link.destroy();
    this.preempt?.qemu.destroy();
    this.finish();
  }

  /**
   * Merge a committed StaticData into the stream (once; a second call returns the first's
   * result). Waits for the commit: a snapshot without its manifest is never merged.
   */
  merge(reader: SnapshotReader, opts: { signal?: AbortSignal; timeoutMs?: number; onProgress?: (m: StaticMerge) => void } = {}): Promise<StaticMerge> {
    this.merging ??= this.runMerge(reader, opts).catch((e: Error) => {
      this.abandon(`the StaticData merge failed: ${e.message}`);
      throw e;
    });
    return this.merging;
  }

  /** No StaticData will be merged (the save failed): reaching the end of pre-copy then fails the stream. */
  abandon(why: string): void {
    if (this.mergeDone || this.abandoned) return;
    this.abandoned = why;
    if (this.held) this.fail(new Error(`pre-copy ended before StaticData was merged, and it never will be: ${why}`));
  }

  private async start(): Promise<void> {
    let link: net.Socket;
    let qemu: net.Socket;
    try {
      link = await this.opts.accepted;
      qemu = await this.opts.connectQemu();
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    this.link = link;
    this.qemu = qemu;
    if (this.opts.preempt) void this.carryPreempt(this.opts.preempt);
    if (this.opts.acks) {
      void this.opts.acks.then((s) => {
        if (this.failure || this.ended) s.destroy();
        else {
          s.on('error', () => undefined);
          this.ackSocket = s;
          // Cumulative: what was written before the link was up counts now.
          if (this.s.pbdataPages > 0) s.write(`${this.s.pbdataPages}\n`);
        }
      });
    }
    qemu.on('data', (d: Buffer) => link.write(d)); // return path: verbatim
    // QEMU closes its side when it loaded the stream, or refused it (its migration status says which).
    let qemuEnded = false;
    qemu.on('end', () => {
      qemuEnded = true;
      link.end();
    });
    qemu.on('error', (e) => this.fail(new Error(`the target QEMU's incoming socket failed: ${e.message}`)));
    qemu.on('close', () => {
      if (!this.ended && !qemuEnded) this.fail(new Error('the target QEMU dropped its incoming socket'));
      else this.finish();
    });
    qemu.on('drain', () => {
      this.qemuBusy = false;
      this.wake();
      this.resumeLink();
    });
    link.on('data', (chunk: Buffer) => {
      this.s.linkBytes += chunk.length;
      if (this.raw) {
        this.toQemu(chunk);
        return;
      }
      this.reader.push(chunk);
      this.pump();
    });
    link.on('end', () => {
      try {
        this.reader.end();
      } catch (e) {
        this.fail(e as Error);
        return;
      }
      this.ended = true;
      qemu.end();
      this.finish();
    });
    link.on('error', (e) => this.fail(new Error(`the relay link from the source failed: ${e.message}`)));
    link.on('close', () => {
      if (!this.ended && !qemuEnded) this.fail(new Error('the relay link from the source broke before the stream ended'));
    });
    link.resume();
  }

  /**
   * QEMU's post-copy preempt channel: its second connection, made only after the stream's
   * (QEMU tells the two apart by their order), carried untouched both ways.
   */
  private async carryPreempt(accepted: Promise<net.Socket>): Promise<void> {
    const link = await accepted;
    if (this.failure || this.ended) {
      link.destroy();
      return;
    }
    let qemu: net.Socket;
    try {
      qemu = await this.opts.connectQemu();
    } catch (e) {
      this.opts.log?.(`relay: the preempt channel could not reach the target QEMU: ${(e as Error).message}`);
      link.destroy();
      return;
    }
    this.preempt = { link, qemu };
    this.opts.log?.('relay: post-copy preempt channel connected');
    splice(qemu, link, {
      fromLink: (n) => (this.s.linkBytes += n),
      onError: (e) => this.opts.log?.(`relay: the preempt channel failed: ${e.message}`),
    });
  }

  private finish(): void {
    this.ended = true;
    this.resolveFinished();
    this.wake();
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.pbAbort.abort();
    this.ackSocket?.destroy();
    this.opts.log?.(`relay: ${e.message}`);
    this.link?.destroy();
    this.qemu?.destroy();
    this.preempt?.link.destroy();
    this.preempt?.qemu.destroy();
    this.finish();
  }

  private wake(): void {
    for (const w of this.injectWaiters.splice(0)) w();
  }

  /** The source's records flow unless an event waits for the merge, the merge goes first, or QEMU is behind. */
  private resumeLink(): void {
    if (this.qemuBusy || this.failure) return;
    if (this.raw) {
      this.link?.resume();
      return;
    }
    if (this.held) return;
    // Stopped at a boundary for the merge: its next insertion resumes the link. Anywhere else
    // (QEMU was behind mid-section) the link must flow on to the next boundary, or neither moves.
    if (this.insertFirst() && this.recordsSinceInject > 0 && this.writer.atRecordBoundary) return;
    this.link?.resume();
    // Events parsed before the pause may be buffered: go on with them.
    if (this.reader.pendingBytes > 0) this.pump();
  }

  /** The merge has chunks to insert (true) or has caught up with the save and waits (false). */
  private setMergeFirst(on: boolean): void {
    if (this.mergeFirst === on) return;
    const now = performance.now();
    if (!on) this.mergeWaitSince = now;
    else if (this.mergeWaitSince !== null) {
      this.mergeWaitMs += now - this.mergeWaitSince;
      this.mergeWaitSince = null;
    }
    this.mergeFirst = on;
    if (!on) this.resumeLink();
  }

  /** Committed static pages wait to go into the stream: the source's records stop at the next boundary. */
  private insertFirst(): boolean {
    return this.mergeFirst && !this.mergeDone && (!this.direct || this.inject.length > 0);
  }

  private gated(e: StreamEvent): boolean {
    const ends = (e.kind === 'section' && e.type === 'end') || (e.kind === 'opaque' && e.what === 'tail');
    if (this.pbActive && !this.pbDone && ends) return true;
    if (!this.opts.expectStatic || this.mergeDone) return false;
    return ends || (e.kind === 'opaque' && e.what === 'command' && e.command !== undefined && GATED_COMMANDS.has(e.command));
  }

  /**
   * Pages may be inserted here: between two top-level records (a PART of their own), not inside
   * PACKAGED's blob; PbData's also between two records of a ram section. The source relay holds
   * QEMU wherever PbData runs ahead of the target's acknowledgements, often inside a section
   * whose pages went to PbData: waiting for its end there would wait for ever.
   */
  private get atBoundary(): boolean {
    if (this.reader.inPackage) return false;
    return this.writer.atRecordBoundary || (this.pbActive && this.writer.inRamRecords);
  }

  private pump(): void {
    if (this.failure || !this.qemu) return;
    const out: Buffer[] = [];
    try {
      for (;;) {
        if (this.insertFirst() && !this.held && this.writer.atRecordBoundary && this.recordsSinceInject > 0) {
          // The merge goes first: stop at this boundary and let it insert (injected()). One
          // record passes between two insertions, so the link never looks stalled to the source.
          this.link?.pause();
          this.wake();
          break;
        }
        const e = this.held ?? this.reader.next();
        if (!e) break;
        if (this.gated(e)) {
          if (this.abandoned && !this.mergeDone) throw new Error(`pre-copy ended before StaticData was merged, and it never will be: ${this.abandoned}`);
          this.held = e;
          this.link?.pause();
          this.opts.log?.(this.pbActive ? 'relay: the end of post-copy waits for PbData' : 'relay: the end of pre-copy waits for the StaticData merge');
          break;
        }
        this.held = null;
        this.handle(e, out);
        if (this.writer.atRecordBoundary) this.recordsSinceInject++;
        if (this.atBoundary && this.inject.length) {
          this.flush(out);
          this.insertNow();
        }
        if (e.kind === 'opaque' && e.what === 'command' && e.command === VmCommand.PACKAGED && this.opts.pbdata && this.layout) {
          // Post-copy runs after the package: its background pages come from PbData.
          this.pbActive = true;
          void this.followPbData(this.opts.pbdata, this.layout);
          continue;
        }
        if (e.kind === 'opaque' && e.what === 'command' && e.command === VmCommand.PACKAGED) {
          // Post-copy runs after the package (the merge is done: it was gated): forward the rest untouched.
          this.raw = true;
          out.push(this.reader.detach());
          break;
        }
      }
    } catch (e) {
      this.fail(e instanceof QemuStreamError ? new Error(`the target's relay refused the stream: ${e.message}`) : (e as Error));
      return;
    }
    this.flush(out);
    if (this.atBoundary && this.inject.length) this.insertNow();
  }

  /** Write the records collected in `out` to QEMU, in one buffer, and empty it. */
  private flush(out: Buffer[]): void {
    if (out.length === 0) return;
    this.toQemu(out.length === 1 ? out[0]! : Buffer.concat(out));
    out.length = 0;
  }

  private handle(e: StreamEvent, out: Buffer[]): void {
    if (e.kind === 'opaque' && e.what === 'command' && e.command === VmCommand.POSTCOPY_RAM_DISCARD) this.discarded(e.bytes, e.offset);
    if (e.kind === 'mem-size') {
      this.layout = new RamLayout(e.blocks);
      this.delivered = new Bitmap(this.layout.pageCount);
      for (const w of this.layoutWaiters.splice(0)) w();
    } else if (e.kind === 'page') {
      if (!this.layout || !this.delivered) throw new QemuStreamError('BAD_RAM_RECORD', e.offset, 'RAM page', 'a page before MEM_SIZE');
      this.delivered.set(this.layout.pfn(e.block, e.addr, e.offset));
      this.s.deliveredPages++;
      out.push(this.writer.writePage(e));
      return;
    }
    out.push(this.writer.write(e));
  }

  /** QEMU will discard these pages (before it loads anything later): they are no longer the RAM file's. */
  private discarded(record: Buffer, at: number): void {
    const r = this.ramFileResident;
    if (!r) return;
    let d: RamDiscard;
    try {
      d = parseRamDiscard(record);
    } catch (e) {
      throw new QemuStreamError('BAD_COMMAND', at, 'command POSTCOPY_RAM_DISCARD', (e as Error).message);
    }
    if (d.block !== r.block) return;
    const ps = this.layout?.pageSize ?? 4096;
    for (const { start, length } of d.ranges) {
      const end = Math.min(r.pages.size, Math.ceil((start + length) / ps));
      for (let p = Math.floor(start / ps); p < end; p++) r.pages.clear(p);
    }
  }

  /**
   * For a recovered post-copy: the pages of `block` this relay wrote into the RAM file that QEMU
   * has not discarded since (block-relative page numbers), or null (none: not the RAM file's block).
   */
  residentInRamFile(block: string): Bitmap | null {
    const r = this.ramFileResident;
    return r && r.block === block ? r.pages : null;
  }

  private toQemu(buf: Buffer, written?: () => void): void {
    if (!this.qemu) return;
    if (!this.qemu.write(buf, written)) {
      this.qemuBusy = true;
      this.link?.pause();
    }
  }

  /**
   * Write the waiting static pages into QEMU's stream as a PART section; the merge rule is
   * applied here, at the boundary. The section is encoded into a buffer reused once QEMU's
   * socket took it (a fresh one per insertion costs a page fault per 4 KiB, on a busy CPU).
   */
  private insertNow(): void {
    const layout = this.layout!;
    const delivered = this.delivered!;
    const pages: PageEvent[] = [];
    for (const p of this.inject) {
      // PbData's pages are post-copy's: newer than anything delivered before the switch.
      if (!this.pbActive && delivered.get(p.pfn)) {
        this.s.skippedNewer++;
        continue;
      }
      const { block, addr } = layout.locate(p.pfn);
      pages.push({ kind: 'page', offset: 0, block, addr, data: p.data, fill: 0, continued: false });
      if (!this.pbActive) this.s.mergedPages++;
    }
    this.inject = [];
    this.recordsSinceInject = 0;
    this.wake();
    if (pages.length === 0) return;
    if (!this.writer.atRecordBoundary) {
      // PbData's pages inside the current ram section: as records of it.
      this.toQemu(Buffer.concat(pages.map((p) => this.writer.write(p))));
      return;
    }
    const pooled = this.partPool.pop();
    const part = this.writer.writeRamPart(this.reader.sectionId!, pages, pooled);
    const backing = pooled && part.buffer === pooled.buffer ? pooled : part;
    this.toQemu(part, () => {
      if (this.partPool.length < PART_POOL) this.partPool.push(backing);
    });
  }

  /**
   * Wait until the pages handed over were written into the stream (or the relay ended), and
   * with `drain`, until QEMU's socket took them (the merge's backpressure between batches).
   * A chunk's last pages need no drain: whatever follows is written after them, in order.
   */
  private async injected(signal?: AbortSignal, drain = true): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      if (this.failure) throw this.failure;
      if (this.ended && this.inject.length) throw new Error('the stream ended before StaticData was merged');
      const busy = drain && this.qemuBusy;
      if (this.inject.length === 0 && !busy) return;
      // At a boundary with the link quiet (or held for the merge): write them now.
      if (this.inject.length && this.atBoundary && this.qemu && !busy) {
        this.insertNow();
        this.resumeLink(); // one of the source's records may pass before the next insertion
        continue;
      }
      const t = performance.now();
      const qemuBehind = this.qemuBusy;
      await new Promise<void>((r) => {
        this.injectWaiters.push(r);
        setTimeout(r, 50);
      });
      this.insertWaitMs += performance.now() - t;
      if (qemuBehind) this.qemuWaitMs += performance.now() - t;
    }
  }

  /**
   * Post-copy with PbData: write PbData's pages into QEMU's stream as its chunks are committed
   * (polled every few ms: a page the guest faults on may be in the next one), then let the
   * `ram` section end. A PbData that cannot be read fails the relay: QEMU's post-copy then
   * pauses and the workflow resumes it over the second network (QEMU resends what the target
   * has not received).
   */
  private async followPbData(open: () => SnapshotReader, layout: RamLayout): Promise<void> {
    const t0 = Date.now();
    const signal = this.pbAbort.signal;
    try {
      const reader = open();
      const done = new Set<string>();
      const manifest = await follow(
        reader,
        done,
        { signal, timeoutMs: 2 * 3600_000, pollMs: PBDATA_POLL_MS, buffers: [0, 1, 2].map(() => new SharedArrayBuffer(PBDATA_READ_BUFFER_BYTES)) },
        async (chunk) => {
          checkChunk('PbData', chunk, layout);
          for (let i = 0; i < chunk.pfns.length; i++) {
            const pfn = chunk.pfns[i]!;
            const page = chunk.page(i);
            this.inject.push({ pfn, data: chunk.isZero(i) ? null : Buffer.from(page.buffer, page.byteOffset, page.byteLength) });
            if (this.inject.length >= INSERT_PAGES) await this.injected(signal);
          }
          if (this.inject.length) await this.injected(signal, false);
          this.s.pbdataPages += chunk.pfns.length;
          this.s.pbdataBytesRead += chunk.bytes;
          this.ackSocket?.write(`${this.s.pbdataPages}\n`);
        },
        (name) => done.add(name),
      );
      if (manifest.pageCount !== layout.pageCount) throw new Error(`PbData's manifest says ${manifest.pageCount} pages; the stream's RAM has ${layout.pageCount}`);
      this.pbDone = true;
      this.opts.log?.(`relay: PbData merged: ${this.s.pbdataPages} pages, ${(this.s.pbdataBytesRead / 2 ** 20).toFixed(1)} MiB read, ${Date.now() - t0} ms after post-copy began`);
      if (this.held) {
        this.link?.resume();
        this.pump();
      }
    } catch (e) {
      if (!this.failure && !this.ended) this.fail(new Error(`PbData could not be merged into post-copy: ${(e as Error).message}`));
    }
  }

  private async runMerge(reader: SnapshotReader, opts: { signal?: AbortSignal; timeoutMs?: number; onProgress?: (m: StaticMerge) => void }): Promise<StaticMerge> {
    const t0 = Date.now();
    while (!this.layout) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => {
        this.layoutWaiters.push(r);
        setTimeout(r, 100);
      });
      opts.signal?.throwIfAborted();
    }
    const layout = this.layout;
    const f = this.opts.ramFile;
    const opened = f ? RamFile.open(f.path, f.block, layout) : null;
    if (typeof opened === 'string') this.opts.log?.(`relay: static pages go through QEMU's stream: ${opened}`);
    this.direct = opened instanceof RamFile ? opened : null;
    if (this.direct && f) this.ramFileResident = { block: f.block, pages: this.direct.written };
    try {
      return await this.mergeChunks(reader, layout, opts, t0);
    } finally {
      this.direct?.close();
    }
  }

  private async mergeChunks(reader: SnapshotReader, layout: RamLayout, opts: { signal?: AbortSignal; timeoutMs?: number; onProgress?: (m: StaticMerge) => void }, t0: number): Promise<StaticMerge> {
    const direct = this.direct;
    let bytesRead = 0;
    const progress = (): StaticMerge => ({ pages: this.s.mergedPages, skippedNewer: this.s.skippedNewer, bytesRead, mergeMs: Date.now() - t0 });
    // Chunks as the source commits them (each is final once renamed, CRC-checked on read), so the
    // merge overlaps the save. The end of pre-copy waits for the manifest: a StaticData the source
    // never committed can fill an incoming QEMU that is then discarded, never one that resumes.
    const done = new Set<string>();
    this.mergeWaitSince = performance.now();
    const manifest = await follow(
      reader,
      done,
      {
        ...(opts.signal ? { signal: opts.signal } : {}),
        timeoutMs: opts.timeoutMs ?? 2 * 3600_000,
        onWaiting: (waiting) => this.setMergeFirst(!waiting),
        // Chunks are read into three buffers in turn (a fresh multi-MiB buffer per chunk costs a
        // page fault per 4 KiB and the collector's time): a chunk's pages are written into the
        // RAM file, or copied into PART sections, before the next chunk is applied.
        buffers: [0, 1, 2].map(() => new SharedArrayBuffer(READ_BUFFER_BYTES)),
      },
      async (chunk) => {
        checkChunk('StaticData', chunk, layout);
        for (let i = 0; i < chunk.pfns.length; i++) {
          const pfn = chunk.pfns[i]!;
          if (direct?.holds(pfn)) {
            // The run of this chunk's pages in the RAM file, written at once.
            const w = direct.write(chunk, i, this.delivered!);
            this.s.mergedPages += w.written;
            this.s.ramFilePages += w.written;
            this.s.skippedNewer += w.skipped;
            i = w.next - 1;
            continue;
          }
          const page = chunk.page(i); // a view of the chunk just read: no copy
          this.inject.push({ pfn, data: chunk.isZero(i) ? null : Buffer.from(page.buffer, page.byteOffset, page.byteLength) });
          if (this.inject.length >= INSERT_PAGES) await this.injected(opts.signal);
        }
        // The chunk's buffer is read into again: its pages go into the stream (copied) now, with
        // no wait for QEMU's socket after them (the next batch waits for it at INSERT_PAGES).
        if (this.inject.length) await this.injected(opts.signal, false);
        bytesRead += chunk.bytes;
        opts.onProgress?.(progress());
      },
      (name) => done.add(name),
    );
    if (manifest.pageCount !== layout.pageCount) throw new Error(`StaticData's manifest says ${manifest.pageCount} pages; the stream's RAM has ${layout.pageCount}`);
    this.mergeDone = true;
    this.mergeFirst = false;
    const m = progress();
    this.opts.log?.(
      `relay: StaticData merged: ${m.pages} pages (${this.s.ramFilePages} written into the target's RAM file, ${m.pages - this.s.ramFilePages} into QEMU's stream), ${m.skippedNewer} skipped (newer delivered), ${(bytesRead / 2 ** 20).toFixed(1)} MiB read in ${m.mergeMs} ms; ` +
        `waited ${Math.round(this.mergeWaitMs)} ms for the source's commits, ${Math.round(this.insertWaitMs)} ms to insert (${Math.round(this.qemuWaitMs)} ms of it for the target QEMU to read, the rest for a record boundary)`,
    );
    // Pre-copy may end now: let what waited for the merge through.
    if (this.held) {
      this.link?.resume();
      this.pump();
    } else this.resumeLink();
    return progress();
  }
}

/** A chunk of StaticData or PbData fits the stream's RAM: its page size and count, every page inside it. */
function checkChunk(what: string, chunk: Chunk, layout: RamLayout): void {
  if (chunk.pageSize !== layout.pageSize || chunk.memoryPages !== layout.pageCount) {
    throw new Error(`${what} ${chunk.name} holds ${chunk.memoryPages} pages of ${chunk.pageSize} bytes; the stream's RAM has ${layout.pageCount} of ${layout.pageSize}`);
  }
  for (const pfn of chunk.pfns) if (pfn >= layout.pageCount) throw new Error(`${what} ${chunk.name}: page ${pfn} is outside the guest's ${layout.pageCount} pages`);
}
