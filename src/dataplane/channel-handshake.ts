/**
 * Channel-2's per-migration handshake (before anything else is processed; frames ≤ 64 KiB):
 *
 *   client → HELLO     {protocol, migrationId, pageSize, pageCount, nonce: cn}
 *   server → CHALLENGE {nonce: sn}                       (32 fresh random bytes)
 *   client → AUTH      {proof: HMAC-SHA256(secret, "ferry-ch2 client" ‖ id ‖ sn ‖ cn)}
 *   server → WELCOME   {proof: HMAC-SHA256(secret, "ferry-ch2 server" ‖ id ‖ sn ‖ cn)}
 *
 * Proofs are compared with crypto.timingSafeEqual. A replayed AUTH fails because sn is
 * new for every connection; the client checks the server's proof too (mutual). Any
 * failure: ERROR frame, connection closed, nothing applied. The secret is never logged
 * nor put in an error.
 *
 * Holds the pieces both ends use (HandshakeReader, proofs, nonces, handshake frame
 * bodies) and the client side (clientHandshake, and dialling for PageChannel.connect); the
 * server side runs in channel-server.ts, where the migration's registration is looked up.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { decodeMessage } from './codec';
import { AuthError, ChannelClosedError, FrameDecoder, FrameType, MAX_HANDSHAKE_PAYLOAD, RemoteError, encodeJsonFrame, frameTypeName, type Frame } from './frame';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, checkGeometry, parseAddress, secretBytes, type Address, type ConnectOptions } from './channel-options';
import { DEFAULT_PAGE_SIZE } from './pages';

export const PROTOCOL = 'ferry-channel-2';

/** Reads one frame at a time from a socket during the handshake; the rest stays buffered. */
export class HandshakeReader {
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

export function handshakeBody(frame: Frame, want: FrameType, refused: (code: string, message: string) => Error): Record<string, unknown> {
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

export function proof(secret: Buffer, role: 'client' | 'server', migrationId: string, serverNonce: Buffer, clientNonce: Buffer): Buffer {
  return createHmac('sha256', secret)
    .update(`ferry-ch2 ${role}\0${migrationId}\0`, 'utf8')
    .update(serverNonce)
    .update(clientNonce)
    .digest();
}

export function nonceField(body: Record<string, unknown>, field: string): Buffer {
  const v = body[field];
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) throw new AuthError('PROTOCOL', `handshake field '${field}' is not 32 hex bytes`);
  return Buffer.from(v, 'hex');
}

export function proofMatches(expected: Buffer, body: Record<string, unknown>): boolean {
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

/**
 * The source's way to an authenticated socket for PageChannel.connect: check the options,
 * dial (or opts.createConnection), run clientHandshake; the socket is destroyed on failure.
 */
export async function authenticatedSocket(opts: ConnectOptions): Promise<{ socket: net.Socket; decoder: FrameDecoder; pageSize: number }> {
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
  return { socket, decoder, pageSize };
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

