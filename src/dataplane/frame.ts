/**
 * Channel-2 wire format: frames, their stream decoder, and the errors of the channel.
 *
 * Every frame is a 16-byte header followed by `length` payload bytes. Integers are
 * big-endian (network order).
 *
 *   offset size  field
 *        0    4  magic    0x46 0x45 0x52 0x32 ("FER2")
 *        4    1  version  1
 *        5    1  type     FrameType below
 *        6    2  flags    bit 0 = priority lane (PAGES only); other bits must be 0
 *        8    4  length   payload bytes, ≤ the receiver's limit (8 MiB after the handshake,
 *                         64 KiB before it); a larger declared length closes the connection
 *       12    4  crc      CRC-32 (zlib) of header bytes 0..11 followed by the payload, so a
 *                         flipped type/flags/length byte is caught as well as a payload byte
 *       16    …  payload
 *
 * Payloads by type (the page and list layouts are in codec.ts):
 *   HELLO, CHALLENGE, AUTH, WELCOME   handshake, JSON (see channel.ts)
 *   PAGES          a batch of pages: pfn runs, per-page encoded length, page data
 *   FAULT_REQUEST  u32 count, count × u32 pfn: the peer wants these pages, now
 *   BARRIER        u32 id: "reply ACK id once you have applied every frame before this one"
 *   ACK            u32 id
 *   CONTROL        JSON message of the layer above (migration control)
 *   DEVICE_STATE   opaque bytes (the hypervisor's device state)
 *   ERROR          JSON {code, message}; the sender closes the connection after it
 *   CLOSE          empty; orderly end of the channel
 *
 * A frame is validated whole (header, CRC, then its payload) before anything of it is
 * applied: a bad frame is never half-applied.
 */
import { crc32 } from 'node:zlib';

export const FRAME_MAGIC = 0x46455232; // "FER2"
export const FRAME_VERSION = 1;
export const HEADER_BYTES = 16;
/** Largest payload accepted after the handshake. */
export const MAX_FRAME_PAYLOAD = 8 * 1024 * 1024;
/** Largest payload accepted before authentication (handshake frames are tiny). */
export const MAX_HANDSHAKE_PAYLOAD = 64 * 1024;

export const FrameType = {
  HELLO: 1,
  CHALLENGE: 2,
  AUTH: 3,
  WELCOME: 4,
  PAGES: 16,
  FAULT_REQUEST: 17,
  BARRIER: 18,
  ACK: 19,
  CONTROL: 20,
  DEVICE_STATE: 21,
  ERROR: 30,
  CLOSE: 31,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const TYPE_NAMES = new Map<number, string>(Object.entries(FrameType).map(([k, v]) => [v, k]));

export function frameTypeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `unknown(${type})`;
}

export const FLAG_PRIORITY = 0x0001;
const KNOWN_FLAGS = FLAG_PRIORITY;

export interface Frame {
  type: FrameType;
  flags: number;
  /** A view; valid only until the decoder is used again. */
  payload: Buffer;
}

// ---------------------------------------------------------------------------------------
// Errors

export type ChannelErrorCode =
  | 'BAD_MAGIC'
  | 'BAD_VERSION'
  | 'BAD_TYPE'
  | 'BAD_FLAGS'
  | 'TOO_LARGE'
  | 'BAD_CRC'
  | 'TRUNCATED'
  | 'BAD_PAYLOAD'
  | 'BAD_PAGES'
  | 'AUTH_FAILED'
  | 'UNKNOWN_MIGRATION'
  | 'PROTOCOL'
  | 'CLOSED'
  | 'TIMEOUT'
  | 'REMOTE';

/** Base class of every channel-2 error. `code` is stable; `message` is for humans. */
export class ChannelError extends Error {
  override name = 'ChannelError';
  constructor(
    readonly code: ChannelErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A malformed frame: bad header, checksum, size, or payload. The connection is closed. */
export class FrameError extends ChannelError {
  override name = 'FrameError';
}

/** Handshake failure: unknown migration, wrong secret, replayed or out-of-order handshake. */
export class AuthError extends ChannelError {
  override name = 'AuthError';
}

/** The connection ended (peer closed, link cut, local close) while something was pending. */
export class ChannelClosedError extends ChannelError {
  override name = 'ChannelClosedError';
}

/** The peer reported an error (ERROR frame) and closed the connection. */
export class RemoteError extends ChannelError {
  override name = 'RemoteError';
  constructor(
    readonly remoteCode: string,
    message: string,
  ) {
    super('REMOTE', message);
  }
}

// ---------------------------------------------------------------------------------------
// Encoding

/**
 * Fill in the header of a frame whose payload already sits at buf[HEADER_BYTES ..
 * HEADER_BYTES + payloadLength). Returns the frame as a view of buf.
 */
export function sealFrame(buf: Buffer, type: FrameType, flags: number, payloadLength: number): Buffer {
  buf.writeUInt32BE(FRAME_MAGIC, 0);
  buf[4] = FRAME_VERSION;
  buf[5] = type;
  buf.writeUInt16BE(flags, 6);
  buf.writeUInt32BE(payloadLength, 8);
  const end = HEADER_BYTES + payloadLength;
  const crc = crc32(buf.subarray(HEADER_BYTES, end), crc32(buf.subarray(0, 12)));
  buf.writeUInt32BE(crc, 12);
  return buf.subarray(0, end);
}

/** Encode a frame into a fresh buffer (small frames; page frames are built in place). */
export function encodeFrame(type: FrameType, payload: Uint8Array = EMPTY, flags = 0): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  buf.set(payload, HEADER_BYTES);
  return sealFrame(buf, type, flags, payload.length);
}

export function encodeJsonFrame(type: FrameType, value: unknown): Buffer {
  return encodeFrame(type, Buffer.from(JSON.stringify(value), 'utf8'));
}

const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------------------------------
// Decoding

/**
 * Incremental decoder for a byte stream. push() the chunks read from the socket, then
 * call next() until it returns null (needs more bytes). Throws FrameError on a bad frame;
 * after that the stream is unusable (close the connection). end() throws when the stream
 * stopped in the middle of a frame.
 *
 * Memory is bounded: at most one frame (≤ maxPayload) is assembled at a time, in a
 * buffer that is reused; the payload returned by next() is valid until the next call.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header: { type: FrameType; flags: number; length: number; crc: number; headerCrc: number } | null = null;
  private assembly: Buffer | null = null;
  private failed: FrameError | null = null;

  constructor(public maxPayload = MAX_FRAME_PAYLOAD) {}

  /** Bytes received but not yet returned as frames. */
  get pendingBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  next(): Frame | null {
    if (this.failed) throw this.failed;
    try {
      return this.nextFrame();
    } catch (err) {
      if (err instanceof FrameError) this.failed = err;
      throw err;
    }
  }

  /**
   * The stream ended: throws a TRUNCATED FrameError if a partial frame is pending, counting
   * a header already taken out of the buffer (its payload not, or not fully, received).
   */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.header || this.buffered > 0) {
      const want = this.header ? HEADER_BYTES + this.header.length : HEADER_BYTES;
      const have = this.header ? HEADER_BYTES + this.buffered : this.buffered;
      this.failed = new FrameError('TRUNCATED', `truncated frame: the connection ended after ${have} of ${want} bytes`);
      throw this.failed;
    }
  }

  private nextFrame(): Frame | null {
    if (!this.header) {
      if (this.buffered < HEADER_BYTES) return null;
      const h = this.take(HEADER_BYTES, null);
      this.header = parseHeader(h, this.maxPayload);
    }
    const { length } = this.header;
    if (this.buffered < length) return null;
    let payload: Buffer;
    const first = this.chunks[0];
    if (length === 0) payload = EMPTY;
    else if (first && first.length >= length) payload = this.take(length, null); // zero-copy view
    else {
      if (!this.assembly || this.assembly.length < length) {
        this.assembly = Buffer.allocUnsafe(Math.max(length, Math.min(this.maxPayload, 1 << 20)));
      }
      payload = this.take(length, this.assembly);
    }
    const { type, flags, crc, headerCrc } = this.header;
    this.header = null;
    if (crc32(payload, headerCrc) !== crc) {
      throw new FrameError('BAD_CRC', `bad frame checksum (${frameTypeName(type)} frame, ${length} payload bytes)`);
    }
    return { type, flags, payload };
  }

  /** Remove n buffered bytes: a view of the first chunk when possible, else a copy into dst. */
  private take(n: number, dst: Buffer | null): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) {
      this.buffered -= n;
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = dst ?? Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      if (!c) throw new Error('FrameDecoder: internal error, buffered count out of step');
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out.subarray(0, n);
  }
}

function parseHeader(
  h: Buffer,
  maxPayload: number,
): { type: FrameType; flags: number; length: number; crc: number; headerCrc: number } {
  const magic = h.readUInt32BE(0);
  if (magic !== FRAME_MAGIC) {
    throw new FrameError('BAD_MAGIC', `bad frame magic 0x${magic.toString(16).padStart(8, '0')} (not a ferry channel-2 peer, or the stream is out of step)`);
  }
  const version = h[4] ?? 0;
  if (version !== FRAME_VERSION) throw new FrameError('BAD_VERSION', `unsupported frame version ${version} (this end speaks ${FRAME_VERSION})`);
  const type = h[5] ?? 0;
  if (!TYPE_NAMES.has(type)) throw new FrameError('BAD_TYPE', `unknown frame type ${type}`);
  const flags = h.readUInt16BE(6);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new FrameError('BAD_FLAGS', `unknown frame flags 0x${flags.toString(16)}`);
  const length = h.readUInt32BE(8);
  if (length > maxPayload) {
    throw new FrameError('TOO_LARGE', `frame declares ${length} payload bytes, more than the limit of ${maxPayload}`);
  }
  return { type: type as FrameType, flags, length, crc: h.readUInt32BE(12), headerCrc: crc32(h.subarray(0, 12)) };
}

/**
 * Decode every complete frame of a buffer (tests and tools). Returns the frames (payloads
 * copied) and the number of bytes left over. Throws FrameError.
 */
export function decodeFrames(buf: Buffer, maxPayload = MAX_FRAME_PAYLOAD): { frames: Frame[]; rest: number } {
  const d = new FrameDecoder(maxPayload);
  d.push(buf);
  const frames: Frame[] = [];
  for (let f = d.next(); f; f = d.next()) frames.push({ ...f, payload: Buffer.from(f.payload) });
  return { frames, rest: d.pendingBytes };
}
