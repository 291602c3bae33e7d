/**
 * The agent-to-agent leg of a relayed QEMU migration: one TCP connection over the migration
 * network (mutual TLS with the cluster CA when the agents have it, like channel-2), opened by
 * the source's relay to the target's. Before any stream byte, the source says which migration
 * it carries and proves it with the per-migration token the target handed out:
 *
 *     source → "FERRY-RELAY 1 <migrationId> <token>\n"      target → "OK\n" | "ERR <why>\n"
 *
 * After that the connection carries QEMU's stream one way and its return path the other.
 * With post-copy's preempt channel (QEMU's postcopy-preempt: pages the target faulted on, on
 * their own connection), a second connection says the same with " preempt" at the end and
 * carries that channel, untouched, both ways. With PbData (post-copy's background pages through
 * shared storage), a third says " ack" and carries the target relay's acknowledgements of the
 * PbData pages it put into its QEMU's stream (one decimal count a line): the source relay reads
 * QEMU only so far ahead of them, so a link that dies stops QEMU's post-copy where it can still
 * pause and recover (source-relay.ts).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tlsCreateConnection, tlsServerOptions, type ChannelTls } from '../../../dataplane/tls';

const HELLO = 'FERRY-RELAY 1';
const MAX_HELLO = 512;

export function newRelayToken(): string {
  return randomBytes(24).toString('base64url');
}

/** Read one line (≤ MAX_HELLO bytes); bytes after it are put back on the socket. */
function readLine(socket: net.Socket, timeoutMs: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(0x0a);
      if (nl >= 0) {
        const rest = buf.subarray(nl + 1);
        done(null, buf.subarray(0, nl).toString('utf8'));
        if (rest.length) socket.unshift(rest);
      } else if (buf.length > MAX_HELLO) done(new Error(`${what}: line longer than ${MAX_HELLO} bytes`));
    };
    const onEnd = () => done(new Error(`${what}: connection closed`));
    const onError = (e: Error) => done(new Error(`${what}: ${e.message}`));
    function done(err: Error | null, line?: string): void {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (err) reject(err);
      else resolve(line!);
    }
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
  });
}

export interface RelayListener {
  /** host:port the source's relay connects to. */
  readonly address: { host: string; port: number };
  /** The source's authenticated connection (once). */
  readonly accepted: Promise<net.Socket>;
  /** The source's authenticated connection for QEMU's post-copy preempt channel (once; never, without one). */
  readonly preempt: Promise<net.Socket>;
  /** The source's authenticated connection for PbData's acknowledgements (once; never, without PbData). */
  readonly acks: Promise<net.Socket>;
  /** Why connections were refused (wrong token, wrong migration, TLS), newest last. */
  readonly refusals: string[];
  close(): void;
}

export type RelayChannel = 'main' | 'preempt' | 'ack';
const CHANNELS: readonly RelayChannel[] = ['main', 'preempt', 'ack'];

/** Listen on `host` (port 0) for the relay connections of `migrationId`: the stream's, then the preempt channel's. */
export async function listenRelay(opts: { host: string; migrationId: string; token: string; tls?: ChannelTls; helloTimeoutMs?: number }): Promise<RelayListener> {
  const refusals: string[] = [];
  const resolvers: Record<RelayChannel, (s: net.Socket) => void> = { main: () => undefined, preempt: () => undefined, ack: () => undefined };
  const accepted = new Promise<net.Socket>((r) => (resolvers.main = r));
  const preempt = new Promise<net.Socket>((r) => (resolvers.preempt = r));
  const acks = new Promise<net.Socket>((r) => (resolvers.ack = r));
  const taken: Record<RelayChannel, boolean> = { main: false, preempt: false, ack: false };
  const expected: Record<RelayChannel, Buffer> = {
    main: Buffer.from(`${HELLO} ${opts.migrationId} ${opts.token}`),
    preempt: Buffer.from(`${HELLO} ${opts.migrationId} ${opts.token} preempt`),
    ack: Buffer.from(`${HELLO} ${opts.migrationId} ${opts.token} ack`),
  };
  const channelOf = (got: Buffer): RelayChannel | null => {
    for (const c of CHANNELS) if (got.length === expected[c].length && timingSafeEqual(got, expected[c])) return c;
    return null;
  };
  const allTaken = () => CHANNELS.every((c) => taken[c]);
  const onConnection = (socket: net.Socket) => {
    socket.on('error', () => undefined);
    if (allTaken()) {
      socket.end('ERR this migration is already connected\n');
      return;
    }
    void readLine(socket, opts.helloTimeoutMs ?? 10_000, 'relay hello').then(
      (line) => {
        const channel = channelOf(Buffer.from(line));
        if (channel === null || taken[channel] || (channel !== 'main' && !taken.main)) {
          const why =
            channel === null
              ? line.startsWith(HELLO) ? `a relay hello for another migration or with a wrong token` : `not a ferry relay hello`
              : channel !== 'main' && !taken.main ? `${channel === "ack" ? "an" : "a"} ${channel} channel before the stream` : `this migration's ${channel} channel is already connected`;
          refusals.push(`${socket.remoteAddress ?? '?'}: ${why}`);
          socket.end(`ERR ${why}\n`);
          return;
        }
        taken[channel] = true;
        if (allTaken()) server.close();
        socket.setNoDelay(true);
        socket.write('OK\n');
        resolvers[channel](socket);
      },
      (err: Error) => {
        refusals.push(`${socket.remoteAddress ?? '?'}: ${err.message}`);
        socket.destroy();
      },
    );
  };
  const server = opts.tls ? tls.createServer(tlsServerOptions(opts.tls), onConnection) : net.createServer(onConnection);
  if (opts.tls) server.on('tlsClientError', (err: Error) => refusals.push(`TLS: ${err.message}`));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, opts.host, () => resolve());
  });
  const a = server.address() as net.AddressInfo;
  return {
    address: { host: opts.host, port: a.port },
    accepted,
    preempt,
    acks,
    refusals,
    close: () => {
      server.close();
      void accepted.then(() => undefined);
    },
  };
}

/** Connect the source's relay to the target's and say hello; resolves once the target said OK. */
export async function connectRelay(opts: {
  host: string;
  port: number;
  migrationId: string;
  token: string;
  tls?: ChannelTls;
  targetHostId: string;
  timeoutMs?: number;
  /** Default main: QEMU's stream. */
  channel?: RelayChannel;
}): Promise<net.Socket> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const channel = opts.channel ?? 'main';
  const where = `relay ${channel === 'main' ? '' : `${channel} `}link to ${opts.targetHostId} (${opts.host}:${opts.port})`;
  const socket: net.Socket = opts.tls
    ? await tlsCreateConnection(opts.tls, opts.targetHostId, { timeoutMs })({ host: opts.host, port: opts.port }).catch((e: Error) => {
        throw new Error(`${where}: ${e.message}`);
      })
    : await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host: opts.host, port: opts.port });
        const timer = setTimeout(() => {
          s.destroy();
          reject(new Error(`${where}: connect timed out after ${timeoutMs} ms`));
        }, timeoutMs);
        s.once('connect', () => {
          clearTimeout(timer);
          resolve(s);
        });
        s.once('error', (e) => {
          clearTimeout(timer);
          reject(new Error(`${where}: ${e.message}`));
        });
      });
  socket.setNoDelay(true);
  socket.write(`${HELLO} ${opts.migrationId} ${opts.token}${channel === 'main' ? '' : ` ${channel}`}\n`);
  const answer = await readLine(socket, timeoutMs, where).catch((e: Error) => {
    socket.destroy();
    throw e;
  });
  if (answer !== 'OK') {
    socket.destroy();
    throw new Error(`${where}: the target refused: ${answer.replace(/^ERR /, '')}`);
  }
  return socket;
}

/**
 * Carry a QEMU socket and a relay link both ways, untouched and with backpressure (QEMU's
 * post-copy preempt channel). Either end closing ends the other; either failing destroys both
 * and is reported once.
 */
export function splice(qemu: net.Socket, link: net.Socket, o: { toLink?: (bytes: number) => void; fromLink?: (bytes: number) => void; onError: (e: Error) => void }): void {
  let failed = false;
  const fail = (where: string) => (e: Error) => {
    if (failed) return;
    failed = true;
    qemu.destroy();
    link.destroy();
    o.onError(new Error(`${where}: ${e.message}`));
  };
  qemu.on('error', fail('the QEMU side'));
  link.on('error', fail('the link'));
  if (o.toLink) qemu.on('data', (d: Buffer) => o.toLink!(d.length));
  if (o.fromLink) link.on('data', (d: Buffer) => o.fromLink!(d.length));
  qemu.pipe(link);
  link.pipe(qemu);
  qemu.resume();
  link.resume();
}

/** Have `server` listen on the unix socket `p` (an old one removed first), readable by this user only: QEMU's side of a relay. */
export async function listenUnix(server: net.Server, p: string): Promise<void> {
  fs.rmSync(p, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, () => resolve());
  });
  fs.chmodSync(p, 0o600);
}
