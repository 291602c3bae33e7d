/**
 * The sending half of a channel-2 connection (LaneWriter): two lanes of queued sends,
 * 'priority' (fault answers, ACKs, fault requests) always before 'bulk'; a bulk transfer is
 * cut into frames and yields to the priority queue between frames. A token bucket caps the
 * wire bytes of both lanes together, paced by an injectable Clock. Memory is bounded:
 * pages are read from the PageSource as each frame is built, into a small pool of reused
 * frame buffers, and the pump waits for 'drain' when the socket buffer is full.
 */
import type net from 'node:net';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { buildPagesFrame, pagesFrameBytes, pagesPerFrame, type Lane } from './codec';
import { realClock, type Clock } from './clock';
import { laneStats, type SenderOptions } from './channel-options';
import { ChannelClosedError, HEADER_BYTES, MAX_FRAME_PAYLOAD } from './frame';
import type { PageSource } from './pages';
import { TokenBucket } from './rate';

const DEFAULT_FRAME_BYTES = 2 * 1024 * 1024;
const MIN_CAPPED_FRAME_BYTES = 64 * 1024;
/** When capped, a frame carries at most this much time of the link (priority latency). */
const CAPPED_FRAME_SECONDS = 0.05;
const POOL_BUFFERS = 3;

export interface Deferred {
  resolve(): void;
  reject(err: Error): void;
}

export type Job =
  | { kind: 'pages'; pfns: Uint32Array; next: number; source: PageSource; lane: Lane; done: Deferred }
  | { kind: 'frame'; frame: Buffer; lane: Lane; done: Deferred | null };

/** What the writer needs to know of the connection it sends for. */
export interface LaneOwner {
  /** Aborted when the connection fails: a send waiting on the rate cap gives up. */
  readonly signal: AbortSignal;
  /** The connection's fatal error, if it has failed. */
  error(): Error | null;
  /** The error a send gets once the connection is no longer open. */
  notOpen(): Error;
  /** A write completed. */
  onProgress(): void;
}

export class LaneWriter {
  /** Largest PAGES frame this end builds, header included. */
  readonly frameBytes: number;
  readonly sentStats = { bulk: laneStats(), priority: laneStats() };

  private readonly bucket: TokenBucket;
  private readonly clock: Clock;
  private readonly encode: { zeroElision: boolean; compression: boolean };
  private readonly pool: Buffer[] = []; // free frame buffers
  private poolSize = 0; // frame buffers allocated (≤ POOL_BUFFERS)
  private readonly bulk: Job[] = [];
  private readonly prio: Job[] = [];
  private pumping = false;
  private needDrain = false;
  private wakeWriter: (() => void) | null = null;

  constructor(
    private readonly socket: net.Socket,
    private readonly pageSize: number,
    opts: SenderOptions,
    private readonly owner: LaneOwner,
  ) {
    this.clock = opts.clock ?? realClock;
    this.bucket = new TokenBucket(opts.rateBytesPerSec ?? 0, { now: () => this.clock.now() });
    this.frameBytes = Math.min(opts.frameBytes ?? DEFAULT_FRAME_BYTES, HEADER_BYTES + MAX_FRAME_PAYLOAD);
    this.encode = { zeroElision: opts.zeroElision ?? true, compression: opts.compression ?? false };
  }

  get rateBytesPerSec(): number {
    return this.bucket.bytesPerSecond;
  }

  setRate(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  /** Sends queued on both lanes, not yet handed to the socket in full. */
  get queued(): number {
    return this.bulk.length + this.prio.length;
  }

  /** Sends queued, bytes not yet taken by the kernel, or frame buffers still in the socket. */
  busy(): boolean {
    return this.prio.length > 0 || this.bulk.length > 0 || this.socket.writableLength > 0 || this.pool.length < this.poolSize;
  }

  /** Queue a send; the caller has checked that the connection is open. */
  enqueue(make: (done: Deferred) => Job, lane: Lane): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      (lane === 'priority' ? this.prio : this.bulk).push(make({ resolve, reject }));
      this.wake();
      void this.pump();
    });
  }

  /** The socket's 'drain'. */
  drained(): void {
    this.needDrain = false;
    this.wake();
  }

  /** Reject every queued send with err. */
  rejectQueued(err: Error): void {
    for (const q of [this.prio, this.bulk]) {
      for (const job of q.splice(0)) job.done?.reject(err);
    }
  }

  wake(): void {
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

  /** Resolves once `bytes` may go under the rate cap (TokenBucket.take on this writer's clock). */
  private async pace(bytes: number): Promise<void> {
    const waitMs = this.bucket.reserve(bytes);
    if (waitMs > 0) await this.clock.sleep(waitMs, this.owner.signal);
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      for (;;) {
        if (this.owner.error()) return;
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
          await this.pace(frame.length);
        } catch {
          if (buffer) this.pool.push(buffer);
          if (last) job.done?.reject(this.owner.notOpen());
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

  /** Hand a frame to the socket: the pump's frames, and ACKs, which bypass the queues and the rate cap. */
  write(frame: Buffer, lane: Lane, buffer: Buffer | null, done: Deferred | null): void {
    const s = this.sentStats[lane];
    s.frames++;
    s.wireBytes += frame.length;
    const ok = this.socket.write(frame, (err) => {
      this.owner.onProgress();
      if (buffer) {
        this.pool.push(buffer);
        this.wake();
      }
      if (err) done?.reject(this.owner.error() ?? new ChannelClosedError('CLOSED', `channel-2 write failed: ${err.message}`, { cause: err }));
      else done?.resolve();
    });
    // write() returns false as soon as more than 16 KiB are queued, i.e. after every page
    // frame; waiting for 'drain' (queue empty) each time would stall the pipeline. The pool
    // already bounds queued page frames; 'drain' is awaited only beyond that bound (many
    // large control or device-state frames).
    if (!ok && this.socket.writableLength > POOL_BUFFERS * this.frameBytes) this.needDrain = true;
  }
}
