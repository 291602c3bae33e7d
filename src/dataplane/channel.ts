/**
 * Channel-2, the migration network: one TCP connection per migration between the source
 * agent (client, PageChannel.connect) and the target agent (PageChannelServer, one
 * listener per agent process, many migrations). Wire format: frame.ts and codec.ts.
 *
 * Handshake (per migration, before anything else is processed; frames ≤ 64 KiB):
 *
 *   client → HELLO     {protocol, migrationId, pageSize, pageCount, nonce: cn}
 *   server → CHALLENGE {nonce: sn}                       (32 fresh random bytes)
 *   client → AUTH      {proof: HMAC-SHA256(secret, "ferry-ch2 client" ‖ id ‖ sn ‖ cn)}
 *   server → WELCOME   {proof: HMAC-SHA256(secret, "ferry-ch2 server" ‖ id ‖ sn ‖ cn)}
 *
 * Proofs are compared with crypto.timingSafeEqual. A replayed AUTH fails because sn is
 * new for every connection; the client checks the server's proof too (mutual). Any
 * failure: ERROR frame, connection closed, nothing applied. The secret is never logged
 * nor put in an error. The channel only uses net.Socket's stream interface, so a
 * tls.TLSSocket can be passed in (PageChannelServer.handleSocket, connect's
 * createConnection).
 *
 * Optional mutual TLS with a cluster CA (tls.ts) runs under the handshake:
 * PageChannelServer.listen({ tls }) accepts only clients with a certificate the CA
 * signed, and the source dials with tls.ts's createConnection, which checks that the
 * server's certificate names the target host id. The HMAC handshake is the same either way.
 *
 * After the handshake the channel is symmetric: both ends send PAGES, FAULT_REQUEST,
 * BARRIER/ACK, CONTROL, DEVICE_STATE. The sender has two lanes: 'priority' (fault
 * answers, ACKs, fault requests) always goes before 'bulk'; a bulk transfer is cut into
 * frames and yields to the priority queue between frames. A token bucket caps the wire
 * bytes of both lanes together. Memory is bounded: pages are read from the PageSource
 * as each frame is built, into a small pool of reused frame buffers, and the pump waits
 * for 'drain' when the socket buffer is full.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import {
  buildPagesFrame,
  decodeMessage,
  encodePfnList,
  encodeU32,
  pagesFrameBytes,
  pagesPerFrame,
  type Lane,
} from './codec';
import {
  AuthError,
  ChannelClosedError,
  ChannelError,
  FrameDecoder,
  FrameError,
  FrameType,
  HEADER_BYTES,
  MAX_FRAME_PAYLOAD,
  MAX_HANDSHAKE_PAYLOAD,
  RemoteError,
  encodeFrame,
  encodeJsonFrame,
  frameTypeName,
  type Frame,
} from './frame';
import { DEFAULT_PAGE_SIZE, type PageSink, type PageSource } from './pages';
import { TokenBucket } from './rate';
import { tlsClientFailure } from './tls';

export type { Lane } from './codec';

const PROTOCOL = 'ferry-channel-2';
const DEFAULT_FRAME_BYTES = 2 * 1024 * 1024;
const MIN_CAPPED_FRAME_BYTES = 64 * 1024;
/** When capped, a frame carries at most this much time of the link (priority latency). */
const CAPPED_FRAME_SECONDS = 0.05;
const POOL_BUFFERS = 3;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
const MAX_FAULT_PFNS_PER_FRAME = 256 * 1024;

export interface ChannelHandlers {
  /** Pages received are written here (synchronously, whole frame validated first). */
  sink?: PageSink;
  /** Called for every page received, after sink.writePage. `data` is only valid during the call. */
  onPages?(pfn: number, data: Uint8Array, lane: Lane): void;
  /** The peer wants these pages now (post-copy). Answer with sendPages(…, { lane: 'priority' }). */
  onFaultRequest?(pfns: number[]): void;
  onControl?(msg: unknown): void;
  onDeviceState?(data: Buffer): void;
  /** Once, when the channel ends: no error for an orderly CLOSE, else why it ended. */
  onClose?(err?: Error): void;
}

export interface SenderOptions {
  /** Cap on wire bytes per second, both lanes together; 0, undefined or Infinity = uncapped. */
  rateBytesPerSec?: number;
  /** deflateRaw each page, kept only when smaller (default false). */
  compression?: boolean;
  /** Send all-zero pages as a zero length only (default true). */
  zeroElision?: boolean;
  /** Largest PAGES frame this end builds, header included (default 2 MiB, ≤ 8 MiB). */
  frameBytes?: number;
  /**
   * Fail the channel (ChannelClosedError 'TIMEOUT') when, with work pending (frames queued
   * or in the socket, barriers unanswered), no write completes and no byte arrives for this
   * long. A link that drops silently (cable cut, link down) raises no socket error: TCP just
   * retransmits for many minutes. 0 or undefined = never (the default).
   */
  stallTimeoutMs?: number;
}

export interface Address {
  host: string;
  port: number;
}

export interface ConnectOptions extends SenderOptions {
  address: Address | string;
  migrationId: string;
  secret: string | Uint8Array;
  /** VM geometry; must match what the target expects. */
  pageCount: number;
  pageSize?: number;
  handlers?: ChannelHandlers;
  handshakeTimeoutMs?: number;
  /** Make the connection yourself (e.g. tls.connect); resolves once connected. */
  createConnection?: (address: Address) => Promise<net.Socket>;
}

export interface LaneStats {
  frames: number;
  wireBytes: number;
  pages: number;
  /** pages × pageSize: the page payload carried, before elision and compression. */
  pageBytes: number;
  zeroPages: number;
  compressedPages: number;
  compressionSavedBytes: number;
}

export interface ChannelStats {
  sent: LaneStats & { bulk: LaneStats; priority: LaneStats };
  received: { frames: number; wireBytes: number; pages: number; zeroPages: number; compressedPages: number };
}

function laneStats(): LaneStats {
  return { frames: 0, wireBytes: 0, pages: 0, pageBytes: 0, zeroPages: 0, compressedPages: 0, compressionSavedBytes: 0 };
}

interface Deferred {
  resolve(): void;
  reject(err: Error): void;
}

type Job =
  | { kind: 'pages'; pfns: Uint32Array; next: number; source: PageSource; lane: Lane; done: Deferred }
  | { kind: 'frame'; frame: Buffer; lane: Lane; done: Deferred | null };

interface ChannelInit extends SenderOptions {
  migrationId: string;
  pageSize: number;
  pageCount: number;
  handlers: ChannelHandlers;
}

/** One authenticated channel-2 connection. Obtain it from connect() or a server Registration. */
export class PageChannel {
  readonly migrationId: string;
  readonly pageSize: number;
  readonly pageCount: number;
  /** Resolves once the socket is closed: undefined after an orderly close, else the error. */
  readonly closed: Promise<Error | undefined>;

  private readonly socket: net.Socket;
  private readonly decoder: FrameDecoder;
  private readonly handlers: ChannelHandlers;
  private readonly bucket: TokenBucket;
  private readonly abort = new AbortController();
  private readonly frameBytes: number;
  private readonly encode: { zeroElision: boolean; compression: boolean };
  private readonly pool: Buffer[] = []; // free frame buffers
  private poolSize = 0; // frame buffers allocated (≤ POOL_BUFFERS)
  private readonly bulk: Job[] = [];
  private readonly prio: Job[] = [];
  private readonly barriers = new Map<number, Deferred>();
  private readonly sentStats = { bulk: laneStats(), priority: laneStats() };
  private readonly recvStats = { frames: 0, wireBytes: 0, pages: 0, zeroPages: 0, compressedPages: 0 };
  private nextBarrier = 1;
  private pumping = false;
  private needDrain = false;
  private wakeWriter: (() => void) | null = null;
  private error: Error | null = null;
  private closing = false; // close() called, or the peer sent CLOSE: no new sends
  private peerClosed = false;
  private ended = false; // onClose delivered
  private resolveClosed!: (err: Error | undefined) => void;
  private readonly stallTimeoutMs: number;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Last time a write completed or a byte arrived, or the channel went from idle to busy. */
  private lastProgressAt = performance.now();

  /** @internal Use PageChannel.connect or PageChannelServer. */
  constructor(socket: net.Socket, decoder: FrameDecoder, init: ChannelInit) {
    this.socket = socket;
    this.decoder = decoder;
    this.decoder.maxPayload = MAX_FRAME_PAYLOAD;
    this.migrationId = init.migrationId;
    this.pageSize = init.pageSize;
    this.pageCount = init.pageCount;
    this.handlers = init.handlers;
    this.bucket = new TokenBucket(init.rateBytesPerSec ?? 0);
    this.frameBytes = Math.min(init.frameBytes ?? DEFAULT_FRAME_BYTES, HEADER_BYTES + MAX_FRAME_PAYLOAD);
    this.encode = { zeroElision: init.zeroElision ?? true, compression: init.compression ?? false };
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));

    this.stallTimeoutMs = init.stallTimeoutMs && init.stallTimeoutMs > 0 ? init.stallTimeoutMs : 0;
    if (this.stallTimeoutMs > 0) {
      this.stallTimer = setInterval(() => this.checkStall(), Math.min(1000, Math.max(50, this.stallTimeoutMs / 4)));
      this.stallTimer.unref();
    }
    socket.on('data', (chunk: Buffer) => {
      this.lastProgressAt = performance.now();
      this.onData(chunk);
    });
    socket.on('drain', () => {
      this.needDrain = false;
      this.wake();
    });
    socket.on('end', () => this.onEnd());
    socket.on('error', (err) => this.fail(new ChannelClosedError('CLOSED', `channel-2 connection lost: ${err.message}`, { cause: err }), false));
    socket.on('close', () => {
      if (!this.error && !this.peerClosed && !this.closing) this.fail(new ChannelClosedError('CLOSED', 'channel-2 connection closed'), false);
      this.closing = true;
      this.rejectPending(this.error ?? new ChannelClosedError('CLOSED', 'channel-2 channel is closed'));
      this.finish(this.error ?? undefined);
      this.resolveClosed(this.error ?? undefined);
    });
    // Frames that arrived together with the end of the handshake.
    if (decoder.pendingBytes > 0) queueMicrotask(() => this.onData(Buffer.alloc(0)));
    if (socket.isPaused()) socket.resume();
  }

  /** Connect to a target agent and authenticate for one migration. */
  static async connect(opts: ConnectOptions): Promise<PageChannel> {
    const address = parseAddress(opts.address);
    const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
    checkGeometry(pageSize, opts.pageCount);
    const secret = secretBytes(opts.secret);
    const socket = opts.createConnection ? await opts.createConnection(address) : await dial(address, opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    socket.setNoDelay(true);
    let decoder: FrameDecoder;
    try {
      decoder = await clientHandshake(socket, {
        migrationId: opts.migrationId,
        secret,
        pageSize,
        pageCount: opts.pageCount,
        timeoutMs: opts.handshakeTimeoutMs,
      });
    } catch (err) {
      socket.destroy();
      throw err;
    }
    return new PageChannel(socket, decoder, {
      ...senderOptions(opts),
      migrationId: opts.migrationId,
      pageSize,
      pageCount: opts.pageCount,
      handlers: opts.handlers ?? {},
    });
  }

  get rateBytesPerSec(): number {
    return this.bucket.bytesPerSecond;
  }

  /** Change the cap while running (0 or Infinity = uncapped). Takes effect from the next frame. */
  setRate(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  /** True until the channel closes or fails. */
  get isOpen(): boolean {
    return !this.error && !this.closing;
  }

  /**
   * Send these pages, read from `source` as frames are built. Resolves once the last
   * frame has been handed to the kernel; use barrier() to know they were applied.
   */
  sendPages(pfns: ArrayLike<number>, source: PageSource, opts: { lane?: Lane } = {}): Promise<void> {
    if (source.pageSize !== this.pageSize) {
      return Promise.reject(new RangeError(`source page size ${source.pageSize} differs from the channel's ${this.pageSize}`));
    }
    if (pagesFrameBytes(1, this.pageSize) > this.frameBytes) {
      return Promise.reject(new RangeError(`a ${this.pageSize}-byte page does not fit in a ${this.frameBytes}-byte frame`));
    }
    const list = new Uint32Array(pfns.length);
    for (let i = 0; i < pfns.length; i++) {
      const pfn = pfns[i] as number;
      if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.pageCount || pfn >= source.pageCount) {
        return Promise.reject(new RangeError(`pfn ${String(pfn)} is outside the VM's ${Math.min(this.pageCount, source.pageCount)} pages`));
      }
      list[i] = pfn;
    }
    if (list.length === 0) return this.isOpen ? Promise.resolve() : Promise.reject(this.notOpen());
    const lane = opts.lane ?? 'bulk';
    return this.enqueue((done) => ({ kind: 'pages', pfns: list, next: 0, source, lane, done }), lane);
  }

  /** Ask the peer for these pages now (post-copy fault), on the priority lane. */
  requestPages(pfns: ArrayLike<number>): Promise<void> {
    const sends: Promise<void>[] = [];
    for (let i = 0; i < pfns.length; i += MAX_FAULT_PFNS_PER_FRAME) {
      const part = Array.prototype.slice.call(pfns, i, i + MAX_FAULT_PFNS_PER_FRAME) as number[];
      if (part.some((p) => !Number.isInteger(p) || p < 0 || p >= this.pageCount)) {
        return Promise.reject(new RangeError(`fault request for a pfn outside the VM's ${this.pageCount} pages`));
      }
      sends.push(this.sendFrame(encodeFrame(FrameType.FAULT_REQUEST, encodePfnList(part)), 'priority'));
    }
    return Promise.all(sends).then(() => undefined);
  }

  /**
   * Resolves when the peer has applied every frame sent before this call (on both lanes:
   * the priority lane is always empty when a bulk BARRIER goes out). Rejects if the
   * channel fails or closes first, or after timeoutMs.
   */
  barrier(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (!this.isOpen) return Promise.reject(this.notOpen());
    const id = this.nextBarrier++;
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = { resolve: () => (clearTimeout(timer), resolve()), reject: (e: Error) => (clearTimeout(timer), reject(e)) };
      this.barriers.set(id, settle);
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.barriers.delete(id);
          reject(new ChannelError('TIMEOUT', `channel-2 barrier ${id} of migration ${this.migrationId} not acknowledged within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      }
      this.sendFrame(encodeFrame(FrameType.BARRIER, encodeU32(id)), 'bulk').catch((err: Error) => {
        this.barriers.delete(id);
        settle.reject(err);
      });
    });
  }

  /** A JSON control message for the layer above (in order with the lane's other frames). */
  sendControl(msg: unknown, opts: { lane?: Lane } = {}): Promise<void> {
    const json = JSON.stringify(msg);
    if (json === undefined) return Promise.reject(new TypeError('control message is not JSON-serialisable'));
    const payload = Buffer.from(json, 'utf8');
    if (payload.length > MAX_FRAME_PAYLOAD) return Promise.reject(new RangeError(`control message of ${payload.length} bytes exceeds the frame limit`));
    return this.sendFrame(encodeFrame(FrameType.CONTROL, payload), opts.lane ?? 'bulk');
  }

  /** Opaque device state (≤ 8 MiB), in order on the bulk lane. */
  sendDeviceState(data: Uint8Array): Promise<void> {
    if (data.length > MAX_FRAME_PAYLOAD) return Promise.reject(new RangeError(`device state of ${data.length} bytes exceeds the frame limit`));
    return this.sendFrame(encodeFrame(FrameType.DEVICE_STATE, data), 'bulk');
  }

  stats(): ChannelStats {
    const { bulk, priority } = this.sentStats;
    const total = laneStats();
    for (const k of Object.keys(total) as (keyof LaneStats)[]) total[k] = bulk[k] + priority[k];
    return { sent: { ...total, bulk: { ...bulk }, priority: { ...priority } }, received: { ...this.recvStats } };
  }

  /**
   * Orderly close: frames already queued go out, then CLOSE, then the connection ends.
   * Resolves once the socket is closed; rejects if the channel had failed.
   */
  async close(): Promise<void> {
    if (!this.closing && !this.error) {
      const sent = this.enqueue((done) => ({ kind: 'frame', frame: encodeFrame(FrameType.CLOSE), lane: 'bulk', done }), 'bulk');
      this.closing = true;
      try {
        await sent;
        this.socket.end();
      } catch {
        // the failure is reported through `closed`
      }
    } else if (this.peerClosed) {
      this.socket.end();
    }
    const timer = setTimeout(() => this.socket.destroy(), 5_000);
    timer.unref();
    const err = await this.closed;
    clearTimeout(timer);
    if (err) throw err;
  }

  /** Abort at once: pending sends and barriers reject with err (or a ChannelClosedError). */
  destroy(err?: Error): void {
    this.fail(err ?? new ChannelClosedError('CLOSED', `channel-2 of migration ${this.migrationId} destroyed locally`), false);
    this.socket.destroy();
  }

  // ---------------------------------------------------------------------------------------
  // Sending

  private notOpen(): Error {
    return this.error ?? new ChannelClosedError('CLOSED', `channel-2 of migration ${this.migrationId} is closed`);
  }

  private sendFrame(frame: Buffer, lane: Lane): Promise<void> {
    return this.enqueue((done) => ({ kind: 'frame', frame, lane, done }), lane);
  }

  private enqueue(make: (done: Deferred) => Job, lane: Lane): Promise<void> {
    if (!this.isOpen) return Promise.reject(this.notOpen());
    return new Promise<void>((resolve, reject) => {
      (lane === 'priority' ? this.prio : this.bulk).push(make({ resolve, reject }));
      this.wake();
      void this.pump();
    });
  }

  private wake(): void {
    const w = this.wakeWriter;
    this.wakeWriter = null;
    w?.();
  }

  private waitWake(): Promise<void> {
    return new Promise((resolve) => (this.wakeWriter = resolve));
  }

  private effectiveFrameBytes(): number {
    const rate = this.bucket.bytesPerSecond;
    if (!Number.isFinite(rate)) return this.frameBytes;
    const capped = Math.max(MIN_CAPPED_FRAME_BYTES, pagesFrameBytes(1, this.pageSize), rate * CAPPED_FRAME_SECONDS);
    return Math.min(this.frameBytes, capped);
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      for (;;) {
        if (this.error) return;
        const queue = this.prio.length > 0 ? this.prio : this.bulk;
        const job = queue[0];
        if (!job) return;
        // Page frames need a free pool buffer (a buffer comes back when the kernel has taken
        // its frame) and a socket that is not backed up beyond that.
        if (job.kind === 'pages' && (this.needDrain || (this.pool.length === 0 && this.poolSize >= POOL_BUFFERS))) {
          await this.waitWake();
          continue;
        }
        let frame: Buffer;
        let buffer: Buffer | null = null;
        let last = true;
        if (job.kind === 'frame') {
          frame = job.frame;
        } else {
          buffer = this.pool.pop() ?? this.newPoolBuffer();
          const room = pagesPerFrame(this.effectiveFrameBytes(), this.pageSize);
          const n = Math.min(job.pfns.length - job.next, room);
          try {
            frame = buildPagesFrame(buffer, job.pfns, job.next, n, job.source, job.lane, this.encode, this.sentStats[job.lane]);
          } catch (err) {
            this.pool.push(buffer);
            queue.shift();
            job.done.reject(err instanceof Error ? err : new Error(String(err)));
            continue;
          }
          this.sentStats[job.lane].pageBytes += n * this.pageSize;
          job.next += n;
          last = job.next >= job.pfns.length;
        }
        if (last) queue.shift();
        try {
          await this.bucket.take(frame.length, this.abort.signal);
        } catch {
          if (buffer) this.pool.push(buffer);
          if (last) job.done?.reject(this.notOpen());
          return;
        }
        this.write(frame, job.lane, buffer, last ? job.done : null);
        // Let I/O in between frames: incoming fault requests and ACKs, 'drain'.
        await nextMacrotask();
      }
    } finally {
      this.pumping = false;
    }
  }

  private newPoolBuffer(): Buffer {
    this.poolSize++;
    return Buffer.allocUnsafe(this.frameBytes);
  }

  private write(frame: Buffer, lane: Lane, buffer: Buffer | null, done: Deferred | null): void {
    const s = this.sentStats[lane];
    s.frames++;
    s.wireBytes += frame.length;
    const ok = this.socket.write(frame, (err) => {
      this.lastProgressAt = performance.now();
      if (buffer) {
        this.pool.push(buffer);
        this.wake();
      }
      if (err) done?.reject(this.error ?? new ChannelClosedError('CLOSED', `channel-2 write failed: ${err.message}`, { cause: err }));
      else done?.resolve();
    });
    // write() returns false as soon as more than 16 KiB are queued, i.e. after every page
    // frame; waiting for 'drain' (queue empty) each time would stall the pipeline. The pool
    // already bounds queued page frames; 'drain' is awaited only beyond that bound (many
    // large control or device-state frames).
    if (!ok && this.socket.writableLength > POOL_BUFFERS * this.frameBytes) this.needDrain = true;
  }

  // ---------------------------------------------------------------------------------------
  // Receiving

  private onData(chunk: Buffer): void {
    if (this.error || this.peerClosed) return;
    this.recvStats.wireBytes += chunk.length;
    this.decoder.push(chunk);
    try {
      for (let f = this.decoder.next(); f; f = this.decoder.next()) {
        this.handle(f);
        if (this.error || this.peerClosed) return;
      }
    } catch (err) {
      this.fail(asError(err), true);
    }
  }

  private handle(frame: Frame): void {
    const msg = decodeMessage(frame, this);
    this.recvStats.frames++;
    switch (msg.kind) {
      case 'pages': {
        const { sink, onPages } = this.handlers;
        if (!sink && !onPages) throw new ChannelError('PROTOCOL', 'unexpected PAGES frame: this end of the channel accepts no pages');
        const { pfns, pages } = msg.pages;
        for (let i = 0; i < pfns.length; i++) {
          const pfn = pfns[i] as number;
          const data = pages[i] as Uint8Array;
          sink?.writePage(pfn, data);
          onPages?.(pfn, data, msg.lane);
        }
        this.recvStats.pages += pfns.length;
        this.recvStats.zeroPages += msg.pages.zeroPages;
        this.recvStats.compressedPages += msg.pages.compressedPages;
        return;
      }
      case 'fault':
        this.handlers.onFaultRequest?.(msg.pfns);
        return;
      case 'barrier':
        // Every earlier frame has been applied (frames are handled in order, synchronously).
        // The ACK is tiny and goes out at once, between two frames of the pump: it is not
        // delayed by the rate cap and still goes out if a CLOSE follows the BARRIER.
        this.write(encodeFrame(FrameType.ACK, encodeU32(msg.id)), 'priority', null, null);
        return;
      case 'ack': {
        const b = this.barriers.get(msg.id);
        this.barriers.delete(msg.id);
        b?.resolve();
        return;
      }
      case 'control':
        this.handlers.onControl?.(msg.msg);
        return;
      case 'device':
        this.handlers.onDeviceState?.(msg.data);
        return;
      case 'error':
        this.fail(new RemoteError(msg.code, `channel-2 peer reported an error (${msg.code}): ${msg.message}`), false);
        return;
      case 'close':
        this.peerClosed = true;
        this.closing = true;
        this.rejectPending(new ChannelClosedError('CLOSED', `channel-2 peer closed the channel of migration ${this.migrationId}`));
        this.finish(undefined);
        this.socket.end();
        return;
      case 'handshake':
        throw new ChannelError('PROTOCOL', `unexpected ${frameTypeName(frame.type)} frame after the handshake`);
    }
  }

  private onEnd(): void {
    if (this.error) return;
    try {
      this.decoder.end();
    } catch (err) {
      this.fail(asError(err), false);
      return;
    }
    if (!this.peerClosed && !this.closing) {
      this.fail(new ChannelClosedError('CLOSED', `channel-2 peer ended the connection of migration ${this.migrationId} without CLOSE`), false);
    }
    this.socket.end();
  }

  /** Fatal: stop, tell the peer (ERROR frame) when it is a protocol fault, reject everything pending. */
  private fail(err: Error, tellPeer: boolean): void {
    if (this.error) return;
    this.error = err;
    this.abort.abort(err);
    if (tellPeer && !this.socket.destroyed) {
      const code = err instanceof ChannelError ? err.code : 'INTERNAL';
      this.socket.write(encodeJsonFrame(FrameType.ERROR, { code, message: err.message }));
    }
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2_000).unref();
    this.rejectPending(err);
    this.finish(err);
  }

  private rejectPending(err: Error): void {
    for (const q of [this.prio, this.bulk]) {
      for (const job of q.splice(0)) job.done?.reject(err);
    }
    for (const b of this.barriers.values()) b.reject(err);
    this.barriers.clear();
    this.wake();
  }

  /** Work waiting on the peer: queued frames, bytes not yet taken by the kernel, unanswered barriers. */
  private busy(): boolean {
    return this.prio.length > 0 || this.bulk.length > 0 || this.barriers.size > 0 || this.socket.writableLength > 0 || this.pool.length < this.poolSize;
  }

  private checkStall(): void {
    const now = performance.now();
    if (this.error || this.ended || !this.busy()) {
      this.lastProgressAt = now; // the clock runs only while something waits on the peer
      return;
    }
    if (now - this.lastProgressAt < this.stallTimeoutMs) return;
    this.destroy(
      new ChannelClosedError(
        'TIMEOUT',
        `channel-2 of migration ${this.migrationId} stalled: nothing sent or received for ${this.stallTimeoutMs} ms with ${this.bulk.length + this.prio.length} send(s) and ${this.barriers.size} barrier(s) pending (the link is down or silently dropping)`,
      ),
    );
  }

  private finish(err: Error | undefined): void {
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.stallTimer = null;
    if (this.ended) return;
    this.ended = true;
    try {
      this.handlers.onClose?.(err);
    } catch {
      // a throwing onClose must not break the socket's event handling
    }
  }
}

// -----------------------------------------------------------------------------------------
// Handshake

/** Reads one frame at a time from a socket during the handshake; the rest stays buffered. */
class HandshakeReader {
  private waiter: (() => void) | null = null;
  private problem: Error | null = null;
  /** Bytes received so far. */
  receivedBytes = 0;
  private readonly listeners: [string, (...args: any[]) => void][];

  constructor(
    private readonly socket: net.Socket,
    readonly decoder: FrameDecoder,
  ) {
    const poke = (): void => {
      const w = this.waiter;
      this.waiter = null;
      w?.();
    };
    this.listeners = [
      ['data', (chunk: Buffer) => ((this.receivedBytes += chunk.length), decoder.push(chunk), poke())],
      ['end', () => ((this.problem ??= new ChannelClosedError('CLOSED', 'channel-2 connection closed during the handshake')), poke())],
      ['close', () => ((this.problem ??= new ChannelClosedError('CLOSED', 'channel-2 connection closed during the handshake')), poke())],
      ['error', (err: Error) => ((this.problem ??= new ChannelClosedError('CLOSED', `channel-2 connection failed during the handshake: ${err.message}`)), poke())],
    ];
    for (const [ev, fn] of this.listeners) socket.on(ev, fn);
    // Stays attached: an 'error' between the handshake and the channel taking over must
    // not be an uncaught exception ('close' follows and is handled).
    socket.on('error', () => undefined);
  }

  async next(deadline: number): Promise<Frame> {
    for (;;) {
      const f = this.decoder.next();
      if (f) return f;
      if (this.problem) throw this.problem;
      const left = deadline - Date.now();
      if (left <= 0) throw new AuthError('TIMEOUT', 'channel-2 handshake timed out');
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  detach(): void {
    for (const [ev, fn] of this.listeners) this.socket.off(ev, fn);
    this.socket.pause();
  }
}

function handshakeBody(frame: Frame, want: FrameType, refused: (code: string, message: string) => Error): Record<string, unknown> {
  // Look at the type first: before authentication nothing but the handshake is decoded.
  if (frame.type === FrameType.ERROR) {
    const msg = decodeMessage(frame, { pageSize: 1, pageCount: 0 });
    if (msg.kind === 'error') throw refused(msg.code, msg.message);
  }
  if (frame.type !== want) {
    throw new AuthError('PROTOCOL', `expected a ${frameTypeName(want)} frame during the handshake, got ${frameTypeName(frame.type)}`);
  }
  const msg = decodeMessage(frame, { pageSize: 1, pageCount: 0 });
  if (msg.kind !== 'handshake') throw new AuthError('PROTOCOL', 'bad handshake frame');
  return msg.body;
}

function proof(secret: Buffer, role: 'client' | 'server', migrationId: string, serverNonce: Buffer, clientNonce: Buffer): Buffer {
  return createHmac('sha256', secret)
    .update(`ferry-ch2 ${role}\0${migrationId}\0`, 'utf8')
    .update(serverNonce)
    .update(clientNonce)
    .digest();
}

function nonceField(body: Record<string, unknown>, field: string): Buffer {
  const v = body[field];
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) throw new AuthError('PROTOCOL', `handshake field '${field}' is not 32 hex bytes`);
  return Buffer.from(v, 'hex');
}

function proofMatches(expected: Buffer, body: Record<string, unknown>): boolean {
  const v = body.proof;
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) return false;
  return timingSafeEqual(expected, Buffer.from(v, 'hex'));
}

/**
 * Run the client side of the handshake on a connected socket. Returns the decoder, which
 * may already hold the first frames after the handshake. Exported for tests and tools
 * that speak the protocol directly.
 */
export async function clientHandshake(
  socket: net.Socket,
  opts: { migrationId: string; secret: string | Uint8Array; pageSize: number; pageCount: number; timeoutMs?: number },
): Promise<FrameDecoder> {
  const secret = secretBytes(opts.secret);
  const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
  const reader = new HandshakeReader(socket, new FrameDecoder(MAX_HANDSHAKE_PAYLOAD));
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
  const refused = (code: string, message: string): Error =>
    code === 'AUTH_FAILED' || code === 'UNKNOWN_MIGRATION' || code === 'PROTOCOL' || code === 'TIMEOUT'
      ? new AuthError(code, `channel-2 target refused migration ${opts.migrationId}: ${message}`)
      : new RemoteError(code, `channel-2 target refused migration ${opts.migrationId}: ${message}`);
  try {
    const clientNonce = randomBytes(32);
    socket.write(
      encodeJsonFrame(FrameType.HELLO, {
        protocol: PROTOCOL,
        migrationId: opts.migrationId,
        pageSize: opts.pageSize,
        pageCount: opts.pageCount,
        nonce: clientNonce.toString('hex'),
      }),
    );
    const challenge = handshakeBody(await reader.next(deadline), FrameType.CHALLENGE, refused);
    const serverNonce = nonceField(challenge, 'nonce');
    const mine = proof(secret, 'client', opts.migrationId, serverNonce, clientNonce);
    socket.write(encodeJsonFrame(FrameType.AUTH, { proof: mine.toString('hex') }));
    const welcome = handshakeBody(await reader.next(deadline), FrameType.WELCOME, refused);
    if (!proofMatches(proof(secret, 'server', opts.migrationId, serverNonce, clientNonce), welcome)) {
      throw new AuthError('AUTH_FAILED', `channel-2 target failed to prove it knows the secret of migration ${opts.migrationId}`);
    }
    return reader.decoder;
  } catch (err) {
    // Not a byte back, then a close: what a TLS listener does to a plain HELLO.
    if (err instanceof ChannelClosedError && err.code === 'CLOSED' && reader.receivedBytes === 0 && !(socket instanceof tls.TLSSocket)) {
      throw new ChannelClosedError(
        'CLOSED',
        `channel-2 target ${peer} closed the connection before answering HELLO: its channel-2 may require mutual TLS (an agent started with --tls-ca, --tls-cert, --tls-key) while this end dialled plain TCP`,
        { cause: err },
      );
    }
    throw err;
  } finally {
    reader.detach();
  }
}

// -----------------------------------------------------------------------------------------
// Server

export interface ExpectOptions extends SenderOptions {
  migrationId: string;
  secret: string | Uint8Array;
  handlers: ChannelHandlers;
  /** Geometry the source must announce; defaults to handlers.sink's. */
  pageSize?: number;
  pageCount?: number;
  /**
   * A second connection for this migration while one is open: 'refuse' it (the default), or
   * 'replace' the open one once the newcomer has authenticated. After a silent cut the
   * source gives up on its connection and dials again, but the target's end of the old one
   * may look open for many minutes (no FIN ever reached it); only a peer that knows the
   * migration's secret can take over, so a stranger cannot cut a migration this way.
   */
  onReconnect?: 'refuse' | 'replace';
}

export interface Registration {
  readonly migrationId: string;
  /** Resolves with the first authenticated channel; rejects if forgotten before that. */
  readonly connected: Promise<PageChannel>;
  /** The current connection, if any. */
  readonly channel: PageChannel | null;
}

interface Expected {
  handlers: ChannelHandlers;
  sender: SenderOptions;
  secret: Buffer;
  pageSize: number;
  pageCount: number;
  channel: PageChannel | null;
  handshaking: boolean;
  replace: boolean;
  resolve(ch: PageChannel): void;
  reject(err: Error): void;
  reg: Registration;
}

export interface ListenOptions {
  host: string;
  port: number;
  handshakeTimeoutMs?: number;
  /**
   * A connection refused during the handshake (unknown migration, bad secret, bad frame…),
   * or, with `tls`, a client whose TLS handshake failed (migrationId undefined).
   */
  onReject?: (err: Error, migrationId: string | undefined) => void;
  /**
   * Listen with TLS (tls.ts's tlsServerOptions: mutual, cluster CA, TLS 1.3); each
   * connection is served once its TLS handshake succeeded. Plain TCP when absent.
   */
  tls?: tls.TlsOptions;
}

/** The target agent's channel-2 listener: one per agent process, many migrations. */
export class PageChannelServer {
  private readonly expected = new Map<string, Expected>();
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly server: net.Server,
    private readonly opts: ListenOptions,
  ) {
    if (server instanceof tls.Server) {
      // Raw connections still in their TLS handshake: close() must not wait for them. Their
      // peer is noted now: a socket destroyed after a refused certificate no longer knows it.
      const peers = new WeakMap<net.Socket, string>();
      server.on('connection', (raw: net.Socket) => {
        peers.set(raw, `${raw.remoteAddress}:${raw.remotePort}`);
        this.sockets.add(raw);
        raw.once('close', () => this.sockets.delete(raw));
      });
      server.on('secureConnection', (socket: tls.TLSSocket) => this.handleSocket(socket));
      // A client without TLS, or with a certificate the CA did not sign: the socket is
      // already destroyed; report it and go on serving.
      server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
        // The raw TCP socket under a server TLSSocket is Node's `_parent`.
        const raw = (socket as unknown as { _parent?: net.Socket })._parent;
        const from = (raw && peers.get(raw)) ?? (socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'a client');
        const error = new AuthError('AUTH_FAILED', `channel-2 TLS handshake with ${from} failed: ${tlsClientFailure(err, socket)}`, { cause: err });
        try {
          this.opts.onReject?.(error, undefined);
        } catch {
          // a throwing reporter must not take the listener down
        }
      });
    } else {
      server.on('connection', (socket) => this.handleSocket(socket));
    }
  }

  static async listen(opts: ListenOptions): Promise<PageChannelServer> {
    const server = opts.tls
      ? tls.createServer({ ...opts.tls, noDelay: true, handshakeTimeout: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS })
      : net.createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new PageChannelServer(server, opts);
  }

  get address(): Address {
    const a = this.server.address();
    if (!a || typeof a === 'string') throw new Error('channel-2 server is not listening on TCP');
    return { host: a.address, port: a.port };
  }

  /** Register a migration before its source connects. */
  expect(opts: ExpectOptions): Registration {
    if (this.expected.has(opts.migrationId)) {
      throw new ChannelError('PROTOCOL', `migration ${opts.migrationId} is already expected on this agent; forget() it first`);
    }
    const pageSize = opts.pageSize ?? opts.handlers.sink?.pageSize ?? DEFAULT_PAGE_SIZE;
    const pageCount = opts.pageCount ?? opts.handlers.sink?.pageCount;
    if (pageCount === undefined) throw new TypeError('expect(): pageCount is required when there is no sink');
    checkGeometry(pageSize, pageCount);
    let resolve!: (ch: PageChannel) => void;
    let reject!: (err: Error) => void;
    const connected = new Promise<PageChannel>((res, rej) => ((resolve = res), (reject = rej)));
    connected.catch(() => undefined); // forgotten before connecting is not an unhandled rejection
    const e: Expected = {
      handlers: opts.handlers,
      sender: senderOptions(opts),
      secret: secretBytes(opts.secret),
      pageSize,
      pageCount,
      channel: null,
      handshaking: false,
      replace: opts.onReconnect === 'replace',
      resolve,
      reject,
      reg: {
        migrationId: opts.migrationId,
        connected,
        get channel() {
          return e.channel;
        },
      },
    };
    this.expected.set(opts.migrationId, e);
    return e.reg;
  }

  /** Unregister a migration; an open channel of it is destroyed. */
  forget(migrationId: string): void {
    const e = this.expected.get(migrationId);
    if (!e) return;
    this.expected.delete(migrationId);
    e.reject(new ChannelClosedError('CLOSED', `migration ${migrationId} was forgotten before its source connected`));
    e.channel?.destroy(new ChannelClosedError('CLOSED', `migration ${migrationId} was forgotten by the target agent`));
  }

  /** Serve an already accepted socket (a TLS server can hand its sockets here). */
  handleSocket(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    void this.serve(socket);
  }

  async close(): Promise<void> {
    for (const id of [...this.expected.keys()]) this.forget(id);
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async serve(socket: net.Socket): Promise<void> {
    const reader = new HandshakeReader(socket, new FrameDecoder(MAX_HANDSHAKE_PAYLOAD));
    const deadline = Date.now() + (this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    let migrationId: string | undefined;
    let claimed: Expected | undefined;
    try {
      const refused = (code: string, message: string): Error => new AuthError('PROTOCOL', `client sent ERROR (${code}) during the handshake: ${message}`);
      const hello = handshakeBody(await reader.next(deadline), FrameType.HELLO, refused);
      if (hello.protocol !== PROTOCOL) throw new AuthError('PROTOCOL', `HELLO is not for ${PROTOCOL}`);
      if (typeof hello.migrationId !== 'string' || hello.migrationId.length === 0 || hello.migrationId.length > 256) {
        throw new AuthError('PROTOCOL', 'HELLO has no valid migrationId');
      }
      migrationId = hello.migrationId;
      const clientNonce = nonceField(hello, 'nonce');
      const e = this.expected.get(migrationId);
      if (!e) throw new AuthError('UNKNOWN_MIGRATION', `unknown migration ${migrationId} (not expected on this agent)`);
      if (!e.replace && (e.channel || e.handshaking)) throw new AuthError('PROTOCOL', `migration ${migrationId} already has a channel-2 connection`);
      if (hello.pageSize !== e.pageSize || hello.pageCount !== e.pageCount) {
        throw new AuthError('PROTOCOL', `geometry mismatch for migration ${migrationId}: source has ${String(hello.pageCount)} pages of ${String(hello.pageSize)} bytes, target expects ${e.pageCount} of ${e.pageSize}`);
      }
      e.handshaking = true;
      claimed = e;
      const serverNonce = randomBytes(32);
      socket.write(encodeJsonFrame(FrameType.CHALLENGE, { nonce: serverNonce.toString('hex') }));
      const auth = handshakeBody(await reader.next(deadline), FrameType.AUTH, refused);
      if (!proofMatches(proof(e.secret, 'client', migrationId, serverNonce, clientNonce), auth)) {
        throw new AuthError('AUTH_FAILED', `authentication failed for migration ${migrationId}`);
      }
      if (this.expected.get(migrationId) !== e) throw new AuthError('UNKNOWN_MIGRATION', `migration ${migrationId} was forgotten during the handshake`);
      socket.write(encodeJsonFrame(FrameType.WELCOME, { proof: proof(e.secret, 'server', migrationId, serverNonce, clientNonce).toString('hex') }));
      reader.detach();
      e.handshaking = false;
      // 'replace': the old connection is dead to its source; drop it before the new one
      // delivers anything, so frames of the two are never interleaved.
      e.channel?.destroy(new ChannelClosedError('CLOSED', `channel-2 of migration ${migrationId} replaced by a new authenticated connection from the source`));
      const ch = new PageChannel(socket, reader.decoder, {
        ...e.sender,
        migrationId,
        pageSize: e.pageSize,
        pageCount: e.pageCount,
        handlers: e.handlers,
      });
      e.channel = ch;
      void ch.closed.then(() => {
        if (e.channel === ch) e.channel = null;
      });
      e.resolve(ch);
    } catch (err) {
      if (claimed) claimed.handshaking = false;
      reader.detach();
      const error = asError(err);
      if (!socket.destroyed) {
        const code = error instanceof ChannelError ? error.code : 'PROTOCOL';
        socket.end(encodeJsonFrame(FrameType.ERROR, { code, message: error.message }));
        socket.on('error', () => undefined);
        setTimeout(() => socket.destroy(), 2_000).unref();
      }
      try {
        this.opts.onReject?.(error, migrationId);
      } catch {
        // a throwing reporter must not take the listener down
      }
    }
  }
}

// -----------------------------------------------------------------------------------------
// Helpers

/** Only the sender options: the secret never travels further than the handshake. */
function senderOptions(o: SenderOptions): SenderOptions {
  return { rateBytesPerSec: o.rateBytesPerSec, compression: o.compression, zeroElision: o.zeroElision, frameBytes: o.frameBytes, stallTimeoutMs: o.stallTimeoutMs };
}

function secretBytes(secret: string | Uint8Array): Buffer {
  const b = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
  if (b.length === 0) throw new TypeError('channel-2 migration secret must not be empty');
  return b;
}

function checkGeometry(pageSize: number, pageCount: number): void {
  if (!Number.isInteger(pageSize) || pageSize < 512 || pageSize > MAX_FRAME_PAYLOAD / 2) throw new RangeError(`bad page size ${pageSize}`);
  if (!Number.isInteger(pageCount) || pageCount < 1 || pageCount > 0xffffffff) throw new RangeError(`bad page count ${pageCount}`);
}

function parseAddress(a: Address | string): Address {
  if (typeof a !== 'string') return a;
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(a);
  if (!m) throw new TypeError(`channel-2 address '${a}' is not host:port`);
  return { host: m[1] as string, port: Number(m[2]) };
}

function dial(address: Address, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: address.host, port: address.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ChannelClosedError('TIMEOUT', `channel-2 connect to ${address.host}:${address.port} timed out`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(new ChannelClosedError('CLOSED', `channel-2 connect to ${address.host}:${address.port} failed: ${err.message}`, { cause: err }));
    };
    socket.once('error', onError);
  });
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export { AuthError, ChannelClosedError, ChannelError, FrameError, RemoteError };
