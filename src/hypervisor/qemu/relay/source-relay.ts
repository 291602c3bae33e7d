/**
 * par-migrate on stock QEMU, source side. The source QEMU migrates into this relay (a unix
 * socket on the QEMU host); the relay reads QEMU's stream record by record and
 *
 * - sends the first copy of every non-zero page (QEMU's bulk pass) to StaticData on shared
 *   storage, over the storage network, paced at the storage cap;
 * - sends everything else — later copies of pages, zero pages, the header, the configuration,
 *   commands, device state — to the target's relay over the migration network, in order,
 *   paced at the migration cap, re-encoded by the stream writer (block names always written);
 * - passes the target's return path back to QEMU byte for byte;
 * - paces pre-copy's records at the migration cap, but not the switchover (the guest is paused
 *   and QEMU lifts its own rate limit there); forwards post-copy (after QEMU's PACKAGED command)
 *   untouched, paced by QEMU's max-postcopy-bandwidth, which lets a faulting page jump the queue;
 * - with PbData (`openPbData`), post-copy's background pages go to PbData on shared storage
 *   instead, over the storage network, at the storage cap, and the rest of post-copy's main
 *   stream (section headers, EOS, the end) to the target's relay, which puts PbData's pages
 *   back into its QEMU's stream (target-relay.ts). The pages the target faults on keep their own
 *   connection over the migration network (the preempt channel, carried untouched). QEMU sends
 *   every page once after the switch, so a page goes one way or the other, never both.
 *
 * Diverting stops (and StaticData is committed) when QEMU starts its second pass (the first
 * page sent again, or QEMU's pass event: the agent calls stopDiverting), or at the latest when
 * the stream reaches stop-and-copy (ram END) or any post-copy command: from then on the relay
 * forwards every record. A page diverted is a
 * page the target gets only from StaticData, so a StaticData that cannot be written fails the
 * stream (QEMU then fails the migration and the guest runs on here).
 */
import fs from 'node:fs';
import net from 'node:net';
import type { SnapshotWriter } from '../../../dataplane/store-writer';
import { TokenBucket } from '../../../dataplane/rate';
import { Bitmap } from '../../../dataplane/bitmap';
import { QemuStreamError, VmCommand, type PageEvent, type StreamEvent } from '../stream/format';
import { StreamReader } from '../stream/reader';
import { StreamWriter } from '../stream/writer';
import { RamLayout } from './layout';
import { listenUnix, splice } from './link';

/** Commands after which the target needs every page it will ever get before post-copy: stop diverting. */
const SWITCH_COMMANDS = new Set<number>([VmCommand.POSTCOPY_RAM_DISCARD, VmCommand.POSTCOPY_LISTEN, VmCommand.POSTCOPY_RUN, VmCommand.PACKAGED, VmCommand.SWITCHOVER_START]);
/** Why the relay stopped reading QEMU: StaticData writes behind, the link's buffer full, the migration cap. */
type HoldReason = 'storage' | 'link' | 'pace' | 'acks';
/** Diverted-page batches being written before the relay stops reading QEMU. */
const MAX_PENDING_BATCHES = 4;
/**
 * RAM blocks smaller than this (firmware, option ROMs, ACPI tables: a few hundred KiB in all)
 * go with the stream: the target loads them like any record, and StaticData holds only the
 * guest's memory, which the target can take in without QEMU's stream (target-relay.ts).
 */
export const STATIC_MIN_BLOCK_BYTES = 2 ** 20;

export interface SourceRelayOptions {
  /** The unix socket QEMU migrates into (`migrate uri=unix:<path>`). */
  listenPath: string;
  /** Open the link to the target's relay (see link.ts). */
  connect: () => Promise<net.Socket>;
  /**
   * Open the link for QEMU's post-copy preempt channel (its second connection to this relay,
   * made when post-copy starts); without it a second connection is refused.
   */
  connectPreempt?: () => Promise<net.Socket>;
  /** Open the StaticData writer once the guest's page count is known (from MEM_SIZE). */
  openStatic: (pageCount: number) => Promise<SnapshotWriter>;
  /** Migration-network pace in bytes/s (0: uncapped). */
  bandwidthBytesPerSec: number;
  /** Pages per StaticData batch (default 1024: one 4 MiB chunk, so the target can merge it while the next is read from QEMU). */
  batchPages?: number;
  /**
   * PbData: open its writer when post-copy starts (QEMU's PACKAGED command). Post-copy's
   * background pages then go to PbData, not over the migration link (see the header). Without
   * it, post-copy is forwarded untouched over the link.
   */
  openPbData?: (pageCount: number) => Promise<SnapshotWriter>;
  /** Pages per PbData chunk (default 256: 1 MiB, so the target gets them while the next is sent). */
  pbdataBatchPages?: number;
  /**
   * With PbData: open the link on which the target relay acknowledges the PbData pages it put
   * into its QEMU's stream. QEMU is read at most `pbdataAheadPages` ahead of them.
   */
  connectAcks?: () => Promise<net.Socket>;
  /**
   * How far PbData may run ahead of the target's acknowledgements (pages; default 512). While
   * post-copy has pages left, QEMU can pause and be recovered over the second network; once it
   * has sent its last page it waits for the target's word over the migration link and cannot.
   * Holding QEMU here when the acknowledgements stop (the link died) keeps it pausable.
   */
  pbdataAheadPages?: number;
  /**
   * The migration link made no progress this long while bytes waited to go (default 8000 ms):
   * the link is cut. Without it a dead link would hold QEMU forever (its socket to the relay is
   * healthy, only the relay's writes stop), so pre-copy fails instead and the guest stays here.
   */
  stallMs?: number;
  log?: (line: string) => void;
}

export interface StaticSave {
  pages: number;
  zeroPages: number;
  bytesWritten: number;
  saveMs: number;
}

export interface SourceRelayStats {
  /** Pages whose first copy went to StaticData. */
  divertedPages: number;
  /** What those records took in QEMU's stream (QEMU counts them in its transferred bytes). */
  divertedWireBytes: number;
  /** Page records sent to the target's relay. */
  forwardedPages: number;
  /** Bytes sent to the target's relay (the migration network). */
  linkBytes: number;
  /** Bytes the return path carried back. */
  returnBytes: number;
  diverting: boolean;
  /** Post-copy's background pages written to PbData, what they took in QEMU's stream, and PbData's bytes on storage. */
  pbdataPages: number;
  pbdataWireBytes: number;
  pbdataBytesWritten: number;
}

export class SourceRelay {
  private readonly server: net.Server;
  private qemu: net.Socket | null = null;
  private link: net.Socket | null = null;
  /** QEMU's post-copy preempt channel and its link: carried untouched. */
  private preemptQemu: net.Socket | null = null;
  private preemptLink: net.Socket | null = null;
  private readonly reader = new StreamReader();
  private readonly writer = new StreamWriter();
  private readonly bucket: TokenBucket;
  private layout: RamLayout | null = null;
  private seen: Bitmap | null = null;
  /** The blocks whose first copies go to StaticData. */
  private staticBlocks = new Set<string>();
  private diverting = true;
  /** The stream reached post-copy's commands. */
  private postcopy = false;
  /** The switchover (guest paused) is under way: QEMU sends unpaced, and so does the relay. */
  private unpaced = false;
  /** Post-copy runs: the rest of the stream is forwarded untouched (paced), not parsed. */
  private raw = false;
  private stopWhy: string | null = null;
  private staticWriter: Promise<SnapshotWriter> | null = null;
  private batch: { pfns: number[]; data: Buffer[] } = { pfns: [], data: [] };
  private saving: Promise<void> = Promise.resolve();
  private pendingBatches = 0;
  private holds = 0;
  private readonly holding: Record<HoldReason, number> = { storage: 0, link: 0, pace: 0, acks: 0 };
  private readonly holdSince: Record<HoldReason, number> = { storage: 0, link: 0, pace: 0, acks: 0 };
  private readonly heldMs: Record<HoldReason, number> = { storage: 0, link: 0, pace: 0, acks: 0 };
  private parseMs = 0;
  private qemuBytes = 0;
  private readonly startedAt = Date.now();
  private failure: Error | null = null;
  private ended = false;
  private readonly s: SourceRelayStats = { divertedPages: 0, divertedWireBytes: 0, forwardedPages: 0, linkBytes: 0, returnBytes: 0, diverting: true, pbdataPages: 0, pbdataWireBytes: 0, pbdataBytesWritten: 0 };
  /** PbData: post-copy's background pages, once post-copy runs (null: not used, or not yet). */
  private pb: {
    writer: Promise<SnapshotWriter>;
    batch: { pfns: number[]; data: Buffer[] };
    flushTimer: ReturnType<typeof setTimeout> | null;
    committing: boolean;
    /** What a ZERO record stands for in a batch (PbData stores it as a flag). */
    zeroPage: Buffer;
  } | null = null;
  private resolveStatic: (r: StaticSave) => void = () => undefined;
  private rejectStatic: (e: Error) => void = () => undefined;
  /** Resolves when StaticData is committed; rejects when it cannot be. */
  readonly staticDone: Promise<StaticSave>;
  private resolveFinished: () => void = () => undefined;
  /** Resolves when the stream ended (well or not); `error` says which. */
  readonly finished: Promise<void>;

  private constructor(private readonly opts: SourceRelayOptions) {
    this.bucket = new TokenBucket(opts.bandwidthBytesPerSec);
    this.staticDone = new Promise<StaticSave>((res, rej) => {
      this.resolveStatic = res;
      this.rejectStatic = rej;
    });
    this.staticDone.catch(() => undefined);
    this.finished = new Promise<void>((r) => (this.resolveFinished = r));
    this.server = net.createServer((s) => this.accept(s));
  }

  static async listen(opts: SourceRelayOptions): Promise<SourceRelay> {
    const r = new SourceRelay(opts);
    await listenUnix(r.server, opts.listenPath);
    return r;
  }

  get error(): Error | null {
    return this.failure;
  }

  /** Why diverting stopped (null while it goes on). */
  get stopReason(): string | null {
    return this.stopWhy;
  }

  stats(): SourceRelayStats {
    return { ...this.s, diverting: this.diverting };
  }

  /** Post-copy's background pages will go to PbData (a writer opener was given). */
  get pbdataEnabled(): boolean {
    return this.opts.openPbData !== undefined;
  }

  /**
   * Post-copy reached the end of QEMU's RAM: the relay read its `ram` END (known only while the
   * relay parses, i.e. with PbData). QEMU then waits in its completion for the target's word,
   * where it cannot be paused.
   */
  get qemuSentAll(): boolean {
    return this.postcopy && (this.inEndSection || this.pb?.committing === true);
  }

  /** Whether post-copy's background pages go to PbData (post-copy began with a PbData writer). */
  get pbdataActive(): boolean {
    return this.pb !== null;
  }

  setBandwidth(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  /** QEMU began its second pass (or the agent says so): every later record goes to the target. */
  stopDiverting(why: string): void {
    if (!this.diverting) return;
    this.diverting = false;
    this.stopWhy = why;
    const h = this.heldMs;
    this.opts.log?.(
      `relay: diverting stopped (${why}) after ${this.s.divertedPages} pages, ${Date.now() - this.startedAt} ms, ${(this.qemuBytes / 2 ** 20).toFixed(1)} MiB read from QEMU; ` +
        `QEMU held ${Math.round(h.storage)} ms for StaticData writes, ${Math.round(h.link)} ms for the link, ${Math.round(h.pace)} ms for the migration cap; relay work ${Math.round(this.parseMs)} ms`,
    );
    const last = this.takeBatch();
    const writer = this.staticWriter;
    if (!writer) {
      // No MEM_SIZE yet: nothing was diverted, and there is nothing to commit.
      this.rejectStatic(new Error(`StaticData was never started: the stream ended diverting before QEMU described its RAM (${why})`));
      return;
    }
    this.saving = this.saving
      .then(async () => {
        const w = await writer;
        if (last) await this.writeBatch(w, last);
        await w.commit();
        const st = w.stats();
        this.resolveStatic({ pages: st.pages, zeroPages: st.zeroPages, bytesWritten: st.bytesWritten, saveMs: Date.now() - this.startedAt });
      })
      .catch((e: unknown) => this.fail(new Error(`StaticData could not be written: ${(e as Error).message}`)));
  }

  close(): void {
    this.server.close();
    this.acks?.destroy();
    this.qemu?.destroy();
    this.link?.destroy();
    this.preemptQemu?.destroy();
    this.preemptLink?.destroy();
    fs.rmSync(this.opts.listenPath, { force: true });
    if (!this.ended) this.finish();
  }

  private accept(socket: net.Socket): void {
    if (this.qemu) {
      if (this.opts.connectPreempt && !this.preemptQemu && !this.failure) this.acceptPreempt(socket, this.opts.connectPreempt);
      else socket.destroy(); // one stream (and one preempt channel) per relay
      return;
    }
    this.qemu = socket;
    if (!this.opts.connectPreempt) this.server.close();
    socket.pause();
    socket.on('error', (e) => this.fail(new Error(`the QEMU side of the relay failed: ${e.message}`)));
    this.opts.connect().then(
      (link) => {
        this.link = link;
        link.on('data', (d: Buffer) => {
          this.s.returnBytes += d.length;
          socket.write(d); // return path: verbatim
        });
        // The target ends its side when its QEMU closed the return path (it loaded the stream, or refused it: QEMU says which).
        let targetEnded = false;
        link.on('end', () => {
          targetEnded = true;
          socket.end();
        });
        link.on('error', (e) => this.fail(new Error(`the relay link to the target failed: ${e.message}`)));
        link.on('close', () => {
          if (!this.ended && !targetEnded) this.fail(new Error('the relay link to the target broke before the stream ended'));
        });
        link.resume();
        if (this.opts.connectAcks && this.opts.openPbData) this.openAcks(this.opts.connectAcks);
        socket.on('data', (chunk: Buffer) => {
          if (this.raw) {
            this.send(chunk);
            return;
          }
          this.qemuBytes += chunk.length;
          this.reader.push(chunk);
          const t = performance.now();
          this.pump();
          this.parseMs += performance.now() - t;
        });
        socket.on('end', () => this.onQemuEnd());
        socket.resume();
      },
      (e: Error) => this.fail(e),
    );
  }

  /** The target relay's acknowledgements of PbData: a count a line. */
  private openAcks(connect: () => Promise<net.Socket>): void {
    const lost = (why: string) => {
      if (this.acksLost || this.ended) return;
      this.acksLost = true;
      this.opts.log?.(`relay: PbData's acknowledgements stopped (${why}): post-copy waits here`);
      this.checkAhead();
    };
    connect().then(
      (s) => {
        this.acks = s;
        if (this.failure || this.ended) {
          s.destroy();
          return;
        }
        let buf = '';
        s.setEncoding('latin1');
        s.on('data', (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            const n = /^\d{1,15}$/.test(line) ? Number(line) : NaN;
            buf = buf.slice(nl + 1);
            if (Number.isNaN(n)) {
              lost(`the target sent ${JSON.stringify(line.slice(0, 40))}, not a page count`);
              s.destroy();
              return;
            }
            if (n > this.ackedPages) this.ackedPages = n;
          }
          if (buf.length > 64) {
            lost('a line longer than 64 bytes');
            s.destroy();
            return;
          }
          this.checkAhead();
        });
        s.on('error', (e) => lost(e.message));
        s.on('close', () => lost('the connection closed'));
        s.resume(); // the hello's reader left it paused
      },
      (e: Error) => lost(e.message),
    );
  }

  /** Hold QEMU while PbData runs too far ahead of the target (or the acknowledgements stopped). */
  private checkAhead(): void {
    if (!this.pb || this.pb.committing) {
      if (this.ackHeld) {
        this.ackHeld = false;
        this.release('acks');
      }
      return;
    }
    const ahead = this.acksLost || this.s.pbdataPages - this.ackedPages >= (this.opts.pbdataAheadPages ?? 512);
    if (ahead && !this.ackHeld) {
      this.ackHeld = true;
      this.hold('acks');
    } else if (!ahead && this.ackHeld) {
      this.ackHeld = false;
      this.release('acks');
    }
  }

  /**
   * QEMU's second connection: post-copy's preempt channel (the pages the target faulted on,
   * sent the moment it asks). Its bytes cross the link untouched, unpaced: QEMU sends only
   * requested pages there. A failure here is QEMU's to see (its post-copy pauses and can be
   * recovered); the stream's relay goes on.
   */
  private acceptPreempt(socket: net.Socket, connect: () => Promise<net.Socket>): void {
    this.preemptQemu = socket;
    this.server.close();
    socket.pause();
    socket.on('error', () => undefined);
    connect().then(
      (link) => {
        this.preemptLink = link;
        if (this.failure) {
          link.destroy();
          socket.destroy();
          return;
        }
        this.opts.log?.('relay: post-copy preempt channel connected');
        splice(socket, link, {
          toLink: (n) => (this.s.linkBytes += n),
          fromLink: (n) => (this.s.returnBytes += n),
          onError: (e) => this.opts.log?.(`relay: the preempt channel failed: ${e.message}`),
        });
      },
      (e: Error) => {
        this.opts.log?.(`relay: the preempt channel could not be connected: ${e.message}`);
        socket.destroy();
      },
    );
  }

  private onQemuEnd(): void {
    try {
      this.reader.end();
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    this.stopDiverting('the stream ended');
    this.ended = true;
    void this.saving.then(() => {
      this.link?.end();
      this.finish();
    });
  }

  private finish(): void {
    this.ended = true;
    this.resolveFinished();
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.opts.log?.(`relay: ${e.message}`);
    this.rejectStatic(e);
    this.qemu?.destroy();
    this.link?.destroy();
    this.preemptQemu?.destroy();
    this.preemptLink?.destroy();
    this.acks?.destroy();
    this.finish();
  }

  private pump(): void {
    if (this.failure) return;
    const out: Buffer[] = [];
    try {
      for (let e = this.reader.next(); e; e = this.reader.next()) {
        this.handle(e, out);
        if (e.kind === 'opaque' && e.what === 'command' && e.command === VmCommand.PACKAGED) {
          if (this.pbWriter) {
            // Post-copy runs after the package: its background pages go to PbData (handle()).
            this.startPbData(this.pbWriter);
            continue;
          }
          // Post-copy runs after the package: both directions are forwarded untouched from here.
          this.raw = true;
          out.push(this.reader.detach());
          break;
        }
      }
    } catch (e) {
      this.fail(e instanceof QemuStreamError ? new Error(`the relay refused QEMU's stream: ${e.message}`) : (e as Error));
      return;
    }
    if (out.length) this.send(Buffer.concat(out));
    this.schedulePbFlush();
  }

  private startPbData(writer: Promise<SnapshotWriter>): void {
    writer.catch((err: Error) => this.fail(new Error(`PbData could not be opened: ${err.message}`)));
    this.pb = { writer, batch: { pfns: [], data: [] }, flushTimer: null, committing: false, zeroPage: Buffer.alloc(this.layout!.pageSize) };
    this.opts.log?.('relay: post-copy runs; its background pages go to PbData over the storage network');
  }

  /** A post-copy page: into PbData's batch; a full batch is written at once. */
  private divertToPbData(e: PageEvent, pfn: number): void {
    const pb = this.pb!;
    pb.batch.pfns.push(pfn);
    // A ZERO record is stored as a zero page (PbData elides it: a flag, no bytes).
    pb.batch.data.push(e.data ?? pb.zeroPage);
    this.s.pbdataPages++;
    this.s.pbdataWireBytes += 8 + (e.continued ? 0 : 1 + Buffer.byteLength(e.block, 'latin1')) + (e.data ? e.data.length : 1);
    if (pb.batch.pfns.length >= (this.opts.pbdataBatchPages ?? 256)) this.flushPbData();
    this.checkAhead();
  }

  /**
   * What QEMU sent stays in a partial batch only until its socket goes quiet: a page the target
   * faults on may be one of them (QEMU does not send a page twice), so it must not wait long.
   */
  private schedulePbFlush(): void {
    const pb = this.pb;
    if (!pb || pb.flushTimer || pb.batch.pfns.length === 0) return;
    pb.flushTimer = setTimeout(() => {
      pb.flushTimer = null;
      this.flushPbData();
    }, 1);
  }

  private flushPbData(): void {
    const pb = this.pb;
    if (!pb || pb.batch.pfns.length === 0) return;
    const b = pb.batch;
    pb.batch = { pfns: [], data: [] };
    this.queueWrite(pb.writer, b, 'PbData');
  }

  /** The end of post-copy's RAM: PbData is committed (the target lets QEMU's stream end only after it merged all of it). */
  private commitPbData(): void {
    const pb = this.pb;
    if (!pb || pb.committing) return;
    pb.committing = true;
    this.checkAhead(); // QEMU sent its last page: nothing left to hold it for
    if (pb.flushTimer) clearTimeout(pb.flushTimer);
    pb.flushTimer = null;
    this.flushPbData();
    this.saving = this.saving
      .then(async () => {
        const w = await pb.writer;
        await w.commit();
        this.s.pbdataBytesWritten = w.stats().bytesWritten;
        this.opts.log?.(`relay: PbData committed: ${this.s.pbdataPages} pages, ${(this.s.pbdataBytesWritten / 2 ** 20).toFixed(1)} MiB`);
      })
      .catch((e: unknown) => this.fail(new Error(`PbData could not be committed: ${(e as Error).message}`)));
  }

  private handle(e: StreamEvent, out: Buffer[]): void {
    switch (e.kind) {
      case 'mem-size':
        this.layout = new RamLayout(e.blocks);
        this.seen = new Bitmap(this.layout.pageCount);
        this.staticBlocks = new Set(e.blocks.filter((b) => b.usedLength >= STATIC_MIN_BLOCK_BYTES).map((b) => b.name));
        if (this.diverting) {
          const n = this.layout.pageCount;
          this.staticWriter = this.opts.openStatic(n);
          this.staticWriter.catch((err: Error) => this.fail(new Error(`StaticData could not be opened: ${err.message}`)));
        }
        // Opened now, not in the switch's pause: post-copy's first pages then go straight out.
        if (this.opts.openPbData) {
          this.pbWriter = this.opts.openPbData(this.layout.pageCount);
          this.pbWriter.catch(() => undefined); // reported if post-copy comes (startPbData)
        }
        break;
      case 'section':
        this.inEndSection = e.type === 'end';
        if (e.type === 'end') {
          this.stopDiverting('QEMU reached stop-and-copy');
          if (!this.postcopy) this.unpaced = true;
        }
        break;
      case 'opaque':
        if (e.what === 'tail' && this.pb) this.commitPbData(); // QEMU_VM_EOF (normally after the END's footer)
        if (e.what === 'command' && e.command !== undefined && SWITCH_COMMANDS.has(e.command)) {
          this.stopDiverting(e.command === VmCommand.SWITCHOVER_START ? 'QEMU began its switchover' : 'QEMU switched to post-copy');
          if (e.command !== VmCommand.SWITCHOVER_START) this.postcopy = true;
          // The guest is paused from here: QEMU lifts its rate limit for the switchover
          // (migration_completion_precopy and postcopy_start: RATE_LIMIT_DISABLED) and paces
          // again only once post-copy runs. The relay paces where QEMU would.
          this.unpaced = e.command !== VmCommand.PACKAGED;
        }
        break;
      case 'footer':
        if (this.pb && this.inEndSection) this.commitPbData();
        break;
      case 'page': {
        const layout = this.layout;
        if (!layout || !this.seen) throw new QemuStreamError('BAD_RAM_RECORD', e.offset, 'RAM page', 'a page before MEM_SIZE');
        const pfn = layout.pfn(e.block, e.addr, e.offset);
        if (this.pb) {
          this.divertToPbData(e, pfn);
          return;
        }
        const first = !this.seen.get(pfn);
        this.seen.set(pfn);
        // QEMU's bulk pass sends each page once: a page sent again is its second pass
        // beginning, seen here before QEMU's pass event reaches the agent.
        if (!first && this.diverting) this.stopDiverting('QEMU sent a page again: its second pass began');
        if (this.diverting && first && e.data && this.staticBlocks.has(e.block)) {
          // A view of the bytes read from QEMU (the socket never reuses them), copied once, into the chunk.
          this.batch.pfns.push(pfn);
          this.batch.data.push(e.data);
          this.s.divertedPages++;
          this.s.divertedWireBytes += 8 + (e.continued ? 0 : 1 + Buffer.byteLength(e.block, 'latin1')) + e.data.length;
          if (this.batch.pfns.length >= (this.opts.batchPages ?? 1024)) this.queueBatch();
          return;
        }
        this.s.forwardedPages++;
        out.push(this.writer.writePage(e));
        return;
      }
      default:
        break;
    }
    out.push(this.writer.write(e));
  }

  /** PbData's writer, opened when QEMU described its RAM; used if post-copy comes. */
  private pbWriter: Promise<SnapshotWriter> | null = null;
  /** PbData pages the target relay acknowledged; holding QEMU until it catches up; its link is gone. */
  private ackedPages = 0;
  private ackHeld = false;
  private acksLost = false;
  private acks: net.Socket | null = null;
  /** The current ram section is its END (post-copy's last pages, then PbData's commit). */
  private inEndSection = false;

  private takeBatch(): { pfns: number[]; data: Buffer[] } | null {
    if (this.batch.pfns.length === 0) return null;
    const b = this.batch;
    this.batch = { pfns: [], data: [] };
    return b;
  }

  private queueBatch(): void {
    const b = this.takeBatch();
    const writer = this.staticWriter;
    if (!b || !writer) return;
    this.queueWrite(writer, b, 'StaticData');
  }

  /** Write a batch behind the ones before it; with too many behind, stop reading QEMU. */
  private queueWrite(writer: Promise<SnapshotWriter>, b: { pfns: number[]; data: Buffer[] }, what: string): void {
    const held = ++this.pendingBatches >= MAX_PENDING_BATCHES;
    if (held) this.hold('storage');
    this.saving = this.saving
      .then(async () => this.writeBatch(await writer, b))
      .then(() => {
        this.pendingBatches--;
        if (held) this.release('storage');
      })
      .catch((err: unknown) => this.fail(new Error(`${what} could not be written: ${(err as Error).message}`)));
  }

  private async writeBatch(w: SnapshotWriter, b: { pfns: number[]; data: Buffer[] }): Promise<void> {
    // writePages reads the pages in list order: a cursor, not a lookup per page.
    let k = 0;
    await w.writePages(Uint32Array.from(b.pfns), {
      pageSize: w.pageSize,
      pageCount: w.pageCount,
      readPage: (pfn, dst) => {
        if (b.pfns[k] !== pfn) k = b.pfns.indexOf(pfn);
        dst.set(b.data[k++]!);
      },
    });
  }

  /** Send to the target at the migration cap; stop reading QEMU while the link is behind. */
  private send(buf: Buffer): void {
    const link = this.link;
    if (!link) return;
    this.s.linkBytes += buf.length;
    // Paced in pre-copy only: the switchover is unpaced in QEMU too, and post-copy QEMU paces
    // itself (with PbData only headers and the end cross the link: StaticData's writer paces the pages).
    const waitMs = this.unpaced || this.raw || this.pb ? 0 : this.bucket.reserve(buf.length);
    if (!link.write(buf)) {
      this.hold('link');
      const stallMs = this.opts.stallMs ?? 8000;
      const t0 = Date.now();
      const stalled = setTimeout(() => {
        this.fail(new Error(`the migration link to the target stalled: ${link.writableLength} bytes waited ${Math.round((Date.now() - t0) / 1000)} s without moving`));
      }, stallMs);
      link.once('drain', () => {
        clearTimeout(stalled);
        this.release('link');
      });
      void this.finished.then(() => clearTimeout(stalled));
    }
    if (waitMs > 0) {
      this.hold('pace');
      setTimeout(() => this.release('pace'), waitMs);
    }
  }

  private hold(why: HoldReason): void {
    this.holding[why]++;
    if (this.holding[why] === 1) this.holdSince[why] = performance.now();
    if (this.holds++ === 0) this.qemu?.pause();
  }

  private release(why: HoldReason): void {
    if (--this.holding[why] === 0) this.heldMs[why] += performance.now() - this.holdSince[why];
    if (--this.holds === 0 && !this.failure) this.qemu?.resume();
  }
}
