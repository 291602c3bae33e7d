/**
 * Channel-2's public option, handler and statistics types (what callers pass to
 * PageChannel.connect and PageChannelServer.expect, and what stats() returns), and the
 * checks and conversions of those options shared by the connection, the handshake and the
 * server: address parsing, VM geometry, the migration secret, the sender options.
 */
import type net from 'node:net';
import type { Lane } from './codec';
import type { Clock } from './clock';
import { MAX_FRAME_PAYLOAD } from './frame';
import type { PageSink } from './pages';

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

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
  /**
   * The clock the rate cap paces by (default realClock). Tests pass a virtual clock; the
   * stall timeout and barrier timeouts always use real timers.
   */
  clock?: Clock;
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

export function laneStats(): LaneStats {
  return { frames: 0, wireBytes: 0, pages: 0, pageBytes: 0, zeroPages: 0, compressedPages: 0, compressionSavedBytes: 0 };
}

/** Only the sender options: the secret never travels further than the handshake. */
export function senderOptions(o: SenderOptions): SenderOptions {
  return { rateBytesPerSec: o.rateBytesPerSec, compression: o.compression, zeroElision: o.zeroElision, frameBytes: o.frameBytes, stallTimeoutMs: o.stallTimeoutMs, clock: o.clock };
}

export function secretBytes(secret: string | Uint8Array): Buffer {
  const b = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
  if (b.length === 0) throw new TypeError('channel-2 migration secret must not be empty');
  return b;
}

export function checkGeometry(pageSize: number, pageCount: number): void {
  if (!Number.isInteger(pageSize) || pageSize < 512 || pageSize > MAX_FRAME_PAYLOAD / 2) throw new RangeError(`bad page size ${pageSize}`);
  if (!Number.isInteger(pageCount) || pageCount < 1 || pageCount > 0xffffffff) throw new RangeError(`bad page count ${pageCount}`);
}

export function parseAddress(a: Address | string): Address {
  if (typeof a !== 'string') return a;
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(a);
  if (!m) throw new TypeError(`channel-2 address '${a}' is not host:port`);
  return { host: m[1] as string, port: Number(m[2]) };
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
