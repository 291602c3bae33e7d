/**
 * PageChannel: one authenticated channel-2 connection (the migration network, one TCP
 * connection per migration between the source agent and the target agent). The source
 * obtains it from PageChannel.connect, the target from a PageChannelServer registration.
 * Wire format: frame.ts and codec.ts; handshake: channel-handshake.ts.
 *
 * After the handshake the channel is symmetric: both ends send PAGES, FAULT_REQUEST,
 * BARRIER/ACK, CONTROL, DEVICE_STATE. This file holds the public API, the receiving side
 * (frames decoded and dispatched in order), barriers, close and failure, and the stall
 * watchdog; the sending side (two lanes, rate cap, buffer pool) is channel-lanes.ts. The
 * channel only uses net.Socket's stream interface, so a tls.TLSSocket can be passed in.
 */
import type net from 'node:net';
import { decodeMessage, encodePfnList, encodeU32, pagesFrameBytes, type Lane } from './codec';
import { LaneWriter, type Deferred, type Job } from './channel-lanes';
import { authenticatedSocket } from './channel-handshake';
import { asError, laneStats, senderOptions, type ChannelHandlers, type ChannelStats, type ConnectOptions, type LaneStats, type SenderOptions } from './channel-options';
import { ChannelClosedError, ChannelError, FrameDecoder, FrameType, MAX_FRAME_PAYLOAD, RemoteError, encodeFrame, encodeJsonFrame, frameTypeName, type Frame } from './frame';
import type { PageSource } from './pages';

const MAX_FAULT_PFNS_PER_FRAME = 256 * 1024;

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
  private readonly abort = new AbortController();
  private readonly lanes: LaneWriter;
  private readonly barriers = new Map<number, Deferred>();
  private readonly recvStats = { frames: 0, wireBytes: 0, pages: 0, zeroPages: 0, compressedPages: 0 };
  private nextBarrier = 1;
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
    this.lanes = new LaneWriter(socket, init.pageSize, init, {
      signal: this.abort.signal,
      error: () => this.error,
      notOpen: () => this.notOpen(),
      onProgress: () => {
        this.lastProgressAt = performance.now();
      },
    });
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
    socket.on('drain', () => this.lanes.drained());
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
    const { socket, decoder, pageSize } = await authenticatedSocket(opts);
    return new PageChannel(socket, decoder, {
      ...senderOptions(opts),
      migrationId: opts.migrationId,
      pageSize,
      pageCount: opts.pageCount,
      handlers: opts.handlers ?? {},
    });
  }

  get rateBytesPerSec(): number {
    return this.lanes.rateBytesPerSec;
  }

  /** Change the cap while running (0 or Infinity = uncapped). Takes effect from the next frame. */
  setRate(bytesPerSec: number): void {
    this.lanes.setRate(bytesPerSec);
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
    if (pagesFrameBytes(1, this.pageSize) > this.lanes.frameBytes) {
      return Promise.reject(new RangeError(`a ${this.pageSize}-byte page does not fit in a ${this.lanes.frameBytes}-byte frame`));
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
    const { bulk, priority } = this.lanes.sentStats;
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
    return this.lanes.enqueue(make, lane);
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
        this.lanes.write(encodeFrame(FrameType.ACK, encodeU32(msg.id)), 'priority', null, null);
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
    this.lanes.rejectQueued(err);
    for (const b of this.barriers.values()) b.reject(err);
    this.barriers.clear();
    this.lanes.wake();
  }

  /** Work waiting on the peer: queued frames, bytes not yet taken by the kernel, unanswered barriers. */
  private busy(): boolean {
    return this.barriers.size > 0 || this.lanes.busy();
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
        `channel-2 of migration ${this.migrationId} stalled: nothing sent or received for ${this.stallTimeoutMs} ms with ${this.lanes.queued} send(s) and ${this.barriers.size} barrier(s) pending (the link is down or silently dropping)`,
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
