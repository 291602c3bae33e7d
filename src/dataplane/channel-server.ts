/**
 * The target agent's channel-2 listener (PageChannelServer: one per agent process, many
 * migrations) and its registry of expected migrations (expect/forget, Registration). It
 * runs the server side of the handshake (channel-handshake.ts) against the registration
 * the client's HELLO names and hands the authenticated socket to a PageChannel.
 *
 * Optional mutual TLS with a cluster CA (tls.ts) runs under the handshake:
 * PageChannelServer.listen({ tls }) accepts only clients with a certificate the CA signed
 * (the source dials with tls.ts's createConnection, which checks that the server's
 * certificate names the target host id). The HMAC handshake is the same either way.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { PageChannel } from './channel-connection';
import { HandshakeReader, PROTOCOL, handshakeBody, nonceField, proof, proofMatches } from './channel-handshake';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  asError,
  checkGeometry,
  secretBytes,
  senderOptions,
  type Address,
  type ChannelHandlers,
  type SenderOptions,
} from './channel-options';
import { AuthError, ChannelClosedError, ChannelError, FrameDecoder, FrameType, MAX_HANDSHAKE_PAYLOAD, encodeJsonFrame } from './frame';
import { DEFAULT_PAGE_SIZE } from './pages';
import { tlsClientFailure } from './tls';

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
