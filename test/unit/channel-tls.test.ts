/**
 * Channel-2 over mutual TLS with a cluster CA: certificates made with the openssl command,
 * a TLS PageChannelServer, and PageChannel.connect with tls.ts's createConnection.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChannelClosedError, PageChannel, PageChannelServer, type Address } from '../../src/dataplane/channel';
import { checkOwnIdentity, loadChannelTls, TlsConfigError, tlsCreateConnection, tlsServerOptions, type ChannelTls, type ChannelTlsFiles } from '../../src/dataplane/tls';
import type { PageSink, PageSource } from '../../src/dataplane/pages';
import { makeCa, makeHostCert } from '../helpers/certs';

const PS = 4096;

class Mem implements PageSource, PageSink {
  readonly mem: Buffer;
  constructor(
    readonly pageCount: number,
    readonly pageSize = PS,
  ) {
    this.mem = Buffer.alloc(pageCount * pageSize);
  }
  fill(seed: number): this {
    for (let i = 0; i < this.mem.length; i++) this.mem[i] = (i * 31 + seed * 17 + (i >> 12)) & 0xff;
    return this;
  }
  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.mem.subarray(pfn * this.pageSize, (pfn + 1) * this.pageSize));
  }
  writePage(pfn: number, src: Uint8Array): void {
    this.mem.set(src, pfn * this.pageSize);
  }
  isZero(): boolean {
    return this.mem.every((b) => b === 0);
  }
}

let dir: string;
let files: { a: ChannelTlsFiles; b: ChannelTlsFiles; foreignA: ChannelTlsFiles; trustsForeign: ChannelTlsFiles };
let tlsA: ChannelTls;
let tlsB: ChannelTls;
let tlsForeignA: ChannelTls;
/** host-a's own certificate, but trusting only the foreign CA. */
let tlsTrustsForeign: ChannelTls;
/** The target: host-b's agent, TLS. */
let server: PageChannelServer;
/** A server whose certificate names host-a (for the identity check). */
let serverA: PageChannelServer;
const rejects: Error[] = [];
let seq = 0;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-tls-'));
  const ca = makeCa(dir, 'cluster');
  const foreign = makeCa(dir, 'foreign');
  const a = makeHostCert(dir, ca, 'host-a');
  files = {
    a,
    b: makeHostCert(dir, ca, 'host-b'),
    foreignA: makeHostCert(dir, foreign, 'host-a', 'foreign-host-a'),
    trustsForeign: { ...a, ca: foreign.crt },
  };
  tlsA = loadChannelTls(files.a);
  tlsB = loadChannelTls(files.b);
  tlsForeignA = loadChannelTls({ ...files.foreignA, ca: ca.crt }); // a foreign cert, trusting the cluster CA
  tlsTrustsForeign = loadChannelTls(files.trustsForeign);
});

beforeAll(async () => {
  server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0, tls: tlsServerOptions(tlsB), onReject: (err) => rejects.push(err) });
  serverA = await PageChannelServer.listen({ host: '127.0.0.1', port: 0, tls: tlsServerOptions(tlsA) });
});

afterAll(async () => {
  await server?.close();
  await serverA?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function target(srv: PageChannelServer, pageCount: number) {
  const migrationId = `tls-mig-${++seq}`;
  const secret = `s3cret-${seq}`;
  const sink = new Mem(pageCount);
  const reg = srv.expect({ migrationId, secret, handlers: { sink } });
  return { migrationId, secret, sink, reg };
}

function connect(srv: PageChannelServer, t: { migrationId: string; secret: string }, pageCount: number, createConnection?: (a: Address) => Promise<net.Socket>) {
  return PageChannel.connect({
    address: srv.address,
    migrationId: t.migrationId,
    secret: t.secret,
    pageCount,
    handshakeTimeoutMs: 5_000,
    ...(createConnection ? { createConnection } : {}),
  });
}

/** The error `p` rejects with (a connection that succeeds is a test failure). */
async function refusal(p: Promise<{ destroy(): void }>): Promise<Error> {
  const r = await p.then(
    (ok) => (ok.destroy(), null),
    (e: unknown) => e as Error,
  );
  if (!r) throw new Error('connected, but should have been refused');
  return r;
}

async function rejection(match: RegExp): Promise<Error> {
  for (let i = 0; i < 200; i++) {
    const r = rejects.find((e) => match.test(e.message));
    if (r) return r;
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error(`no rejection matching ${String(match)}; got: ${rejects.map((e) => e.message).join(' | ')}`);
}

/** A full exchange over TLS: pages both ways, barrier, byte-equal. */
async function exchange(srv: PageChannelServer, client: ChannelTls, peer: string): Promise<void> {
  const N = 300;
  const src = new Mem(N).fill(++seq);
  const t = target(srv, N);
  const ch = await connect(srv, t, N, tlsCreateConnection(client, peer, { timeoutMs: 5_000 }));
  const tch = await t.reg.connected;
  await ch.sendPages(Array.from({ length: N }, (_, i) => i), src);
  await ch.barrier();
  expect(t.sink.mem.equals(src.mem)).toBe(true);
  await tch.sendControl({ hello: 'from the target' });
  await ch.close();
  expect(await tch.closed).toBeUndefined();
  srv.forget(t.migrationId);
}

describe('channel-2 over mutual TLS', () => {
  it('(a) a TLS client and a TLS server of one CA exchange pages', async () => {
    await exchange(server, tlsA, 'host-b');
  });

  it('(b) a client certificate from a foreign CA is refused; nothing is applied', async () => {
    const N = 64;
    const src = new Mem(N).fill(3);
    const t = target(server, N);
    const err = await refusal(connect(server, t, N, tlsCreateConnection(tlsForeignA, 'host-b', { timeoutMs: 5_000 })));
    expect(err).toBeInstanceOf(ChannelClosedError);
    expect(err.message).toMatch(/^channel-2 TLS to 127\.0\.0\.1:\d+ \(host-b\) failed: the target closed the connection right after the TLS handshake: it refused this host's certificate/);
    const seen = await rejection(/client certificate signed by unknown authority/);
    expect(seen.message).toMatch(/^channel-2 TLS handshake with 127\.0\.0\.1:\d+ failed: client certificate signed by unknown authority/);
    expect(t.sink.isZero()).toBe(true);
    expect(t.reg.channel).toBeNull();
    // The registration is intact: the real source still gets through.
    const ch = await connect(server, t, N, tlsCreateConnection(tlsA, 'host-b'));
    await ch.sendPages([0, 1, 2], src);
    await ch.barrier();
    expect(t.sink.mem.subarray(0, 3 * PS).equals(src.mem.subarray(0, 3 * PS))).toBe(true);
    await ch.close();
    server.forget(t.migrationId);
  });

  it('(b′) a client that trusts another CA refuses the server: certificate signed by unknown authority', async () => {
    const t = target(server, 8);
    const err = await refusal(connect(server, t, 8, tlsCreateConnection(tlsTrustsForeign, 'host-b')));
    expect(err).toBeInstanceOf(ChannelClosedError);
    expect(err.message).toMatch(/^channel-2 TLS to 127\.0\.0\.1:\d+ \(host-b\) failed: certificate signed by unknown authority/);
    expect(t.reg.channel).toBeNull();
    server.forget(t.migrationId);
  });

  it('(c) a server whose certificate names another host is refused (identity = host id, not address)', async () => {
    const t = target(serverA, 8);
    const err = await refusal(connect(serverA, t, 8, tlsCreateConnection(tlsB, 'host-b')));
    expect(err).toBeInstanceOf(ChannelClosedError);
    expect(err.message).toMatch(/^channel-2 TLS to 127\.0\.0\.1:\d+ \(host-b\) failed: identity check failed: the server's certificate is for host-a, not host-b$/);
    expect(t.sink.isZero()).toBe(true);
    expect(t.reg.channel).toBeNull();
    serverA.forget(t.migrationId);
    // The same server, expected as host-a, is fine.
    await exchange(serverA, tlsB, 'host-a');
  });

  it('(d) a plain TCP client fails cleanly and the TLS server keeps serving', async () => {
    const t = target(server, 8);
    const err = await refusal(connect(server, t, 8));
    expect(err).toBeInstanceOf(ChannelClosedError);
    expect(err.message).toMatch(/closed the connection before answering HELLO: its channel-2 may require mutual TLS/);
    await rejection(/the client does not speak TLS/);
    expect(t.reg.channel).toBeNull();
    server.forget(t.migrationId);
    // A raw client that connects and goes away, another that sends garbage.
    const quiet = net.connect(server.address.port, '127.0.0.1');
    quiet.on('error', () => undefined);
    await once(quiet, 'connect');
    quiet.destroy();
    const noisy = net.connect(server.address.port, '127.0.0.1');
    noisy.on('error', () => undefined);
    await once(noisy, 'connect');
    noisy.write(Buffer.alloc(64, 0x41));
    await once(noisy, 'close');
    await exchange(server, tlsA, 'host-b');
  });

  it('(d′) a TLS client to a plain server fails with a TLS error naming the peer', async () => {
    const plain = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
    try {
      const t = target(plain, 8);
      const err = await refusal(connect(plain, t, 8, tlsCreateConnection(tlsA, 'host-b')));
      expect(err).toBeInstanceOf(ChannelClosedError);
      expect(err.message).toMatch(/^channel-2 TLS to 127\.0\.0\.1:\d+ \(host-b\) failed: .*speak TLS/);
      expect(t.reg.channel).toBeNull();
    } finally {
      await plain.close();
    }
  });

  it('(d″) a silent server: the TLS connect times out, naming the peer', async () => {
    const mute = net.createServer(() => undefined);
    mute.listen(0, '127.0.0.1');
    await once(mute, 'listening');
    const port = (mute.address() as net.AddressInfo).port;
    try {
      const err = await refusal(tlsCreateConnection(tlsA, 'host-b', { timeoutMs: 300 })({ host: '127.0.0.1', port }));
      expect(err).toBeInstanceOf(ChannelClosedError);
      expect((err as ChannelClosedError).code).toBe('TIMEOUT');
      expect(err.message).toBe(`channel-2 TLS to 127.0.0.1:${port} (host-b) timed out after 300 ms before the TLS handshake completed`);
    } finally {
      mute.close();
    }
  });
});

describe('loading the TLS files', () => {
  it('(e) a missing, unreadable or non-PEM file gives an error naming the file', () => {
    const missing = path.join(dir, 'nope.crt');
    expect(() => loadChannelTls({ ...files.a, cert: missing })).toThrow(new TlsConfigError(`channel-2 TLS: cannot read certificate file '${missing}': no such file`));
    expect(() => loadChannelTls({ ...files.a, ca: dir })).toThrow(`cannot read CA certificate file '${dir}': is a directory`);
    const junk = path.join(dir, 'junk.pem');
    fs.writeFileSync(junk, 'not a certificate\n');
    expect(() => loadChannelTls({ ...files.a, key: junk })).toThrow(`channel-2 TLS: private key file '${junk}' is not PEM (no PRIVATE KEY block)`);
    expect(() => loadChannelTls({ ...files.a, ca: junk })).toThrow(`channel-2 TLS: CA certificate file '${junk}' is not PEM (no CERTIFICATE block)`);
    const broken = path.join(dir, 'broken.crt');
    fs.writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    expect(() => loadChannelTls({ ...files.a, cert: broken })).toThrow(`certificate file '${broken}' is not a valid certificate`);
    expect(() => loadChannelTls({ ...files.a, key: files.b.key })).toThrow(`private key file '${files.b.key}' does not belong to the certificate in '${files.a.cert}'`);
    // A host certificate given as the CA.
    expect(() => loadChannelTls({ ...files.a, ca: files.b.cert })).toThrow(`CA certificate file '${files.b.cert}' holds a certificate that is not a CA`);
  });

  it('checks that the certificate names this host', () => {
    expect(tlsA.names).toEqual(['host-a']);
    expect(() => checkOwnIdentity(tlsA, 'host-a')).not.toThrow();
    expect(() => checkOwnIdentity(tlsA, 'host-c')).toThrow(`certificate file '${files.a.cert}' names host-a, not this host's id host-c`);
  });
});
