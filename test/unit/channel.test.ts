import { once } from 'node:events';
import net from 'node:net';
import { deflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuthError,
  ChannelClosedError,
  PageChannel,
  PageChannelServer,
  clientHandshake,
  type ChannelHandlers,
  type Lane,
} from '../../src/dataplane/channel';
import { ManualClock } from '../../src/dataplane/clock';
import { encodePagesFrame } from '../../src/dataplane/codec';
import { FrameDecoder, FrameError, FrameType, HEADER_BYTES, decodeFrames, encodeFrame, encodeJsonFrame, type Frame } from '../../src/dataplane/frame';
import type { PageSink, PageSource } from '../../src/dataplane/pages';
import { prng } from '../../src/support/prng';

const PS = 4096;

const mulberry32 = prng;

class Mem implements PageSource, PageSink {
  readonly mem: Buffer;
  writes = 0;
  constructor(
    readonly pageCount: number,
    readonly pageSize = PS,
  ) {
    this.mem = Buffer.alloc(pageCount * pageSize);
  }
  /** Every 5th page zero, every 5th+1 compressible, the rest random. */
  fill(seed: number): this {
    const rnd = mulberry32(seed);
    for (let p = 0; p < this.pageCount; p++) {
      const page = this.page(p);
      if (p % 5 === 0) page.fill(0);
      else if (p % 5 === 1) for (let i = 0; i < this.pageSize; i++) page[i] = (i >> 6) & 3;
      else for (let i = 0; i < this.pageSize; i++) page[i] = (rnd() * 256) | 0;
    }
    return this;
  }
  page(pfn: number): Buffer {
    return this.mem.subarray(pfn * this.pageSize, (pfn + 1) * this.pageSize);
  }
  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.page(pfn));
  }
  writePage(pfn: number, src: Uint8Array): void {
    this.writes++;
    this.mem.set(src, pfn * this.pageSize);
  }
  isZero(): boolean {
    return this.mem.every((b) => b === 0);
  }
}

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

let server: PageChannelServer;
const rejects: { err: Error; migrationId: string | undefined }[] = [];
let seq = 0;

beforeAll(async () => {
  server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0, onReject: (err, migrationId) => rejects.push({ err, migrationId }) });
});
afterAll(async () => {
  await server.close();
});

/** Register a migration on the target; `closed` resolves with the target channel's onClose argument. */
function target(pageCount: number, extra: Partial<ChannelHandlers> = {}, secret = 's3cret-' + String(seq)) {
  const migrationId = `mig-${++seq}`;
  const sink = new Mem(pageCount);
  let onClose!: (err: Error | undefined) => void;
  const closed = new Promise<Error | undefined>((r) => (onClose = r));
  const reg = server.expect({ migrationId, secret, handlers: { sink, ...extra, onClose: (err) => onClose(err) } });
  return { migrationId, secret, sink, reg, closed };
}

function connect(t: { migrationId: string; secret: string }, pageCount: number, more: Partial<Parameters<typeof PageChannel.connect>[0]> = {}) {
  return PageChannel.connect({ address: server.address, migrationId: t.migrationId, secret: t.secret, pageCount, rateBytesPerSec: 0, ...more });
}

async function rejectionFor(migrationId: string | undefined): Promise<Error> {
  for (let i = 0; i < 200; i++) {
    const r = rejects.find((x) => x.migrationId === migrationId);
    if (r) return r.err;
    await new Promise((res) => setTimeout(res, 5));
  }
  throw new Error(`no rejection reported for ${String(migrationId)}`);
}

/** A raw socket: optional handshake, then whatever the test writes; collects frames until close. */
async function raw(hs?: { migrationId: string; secret: string; pageCount: number }) {
  const socket = net.connect(server.address.port, '127.0.0.1');
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  const decoder = hs ? await clientHandshake(socket, { ...hs, pageSize: PS }) : new FrameDecoder();
  const frames: Frame[] = [];
  const closed = new Promise<Frame[]>((resolve) => {
    const drain = (): void => {
      try {
        for (let f = decoder.next(); f; f = decoder.next()) frames.push({ ...f, payload: Buffer.from(f.payload) });
      } catch {
        // the test looks at what was decoded
      }
    };
    socket.on('data', (c: Buffer) => (decoder.push(c), drain()));
    socket.on('close', () => resolve(frames));
    drain();
  });
  socket.resume();
  return { socket, closed };
}

function errorFrame(frames: Frame[]): { code: string; message: string } | undefined {
  const f = frames.find((x) => x.type === FrameType.ERROR);
  return f ? (JSON.parse(f.payload.toString()) as { code: string; message: string }) : undefined;
}

describe('channel-2 transfer', () => {
  it.each([
    { compression: false, zeroElision: true },
    { compression: true, zeroElision: true },
    { compression: false, zeroElision: false },
  ])('moves pages to the sink, byte-equal after a barrier (%o)', async (opts) => {
    const N = 1500;
    const src = new Mem(N).fill(11);
    const t = target(N);
    const ch = await connect(t, N, { ...opts, frameBytes: 256 * 1024 });
    const serverCh = await t.reg.connected;
    const pfns = range(N);
    for (let i = pfns.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [pfns[i], pfns[j]] = [pfns[j] as number, pfns[i] as number]; // shuffled, so runs are short
    }
    await ch.sendPages(pfns.slice(0, 700), src);
    await ch.sendPages(pfns.slice(700), src);
    await ch.barrier();
    expect(t.sink.mem.equals(src.mem)).toBe(true);
    const s = ch.stats();
    expect(s.sent.pages).toBe(N);
    expect(s.sent.pageBytes).toBe(N * PS);
    expect(s.sent.zeroPages).toBe(opts.zeroElision ? N / 5 : 0);
    expect(s.sent.compressedPages).toBe(opts.compression ? N / 5 : 0);
    if (opts.compression) expect(s.sent.compressionSavedBytes).toBeGreaterThan((N / 5) * PS * 0.9);
    expect(s.sent.frames).toBeGreaterThan(N / 64);
    expect(s.sent.wireBytes).toBe(serverCh.stats().received.wireBytes);
    expect(serverCh.stats().received.pages).toBe(N);
    await ch.close();
    expect(await t.closed).toBeUndefined();
    expect(await serverCh.closed).toBeUndefined();
  });

  it('is symmetric: fault requests from the target are answered on the priority lane; control and device state', async () => {
    const N = 64;
    const src = new Mem(N).fill(12);
    const lanes: Lane[] = [];
    let allThree!: () => void;
    const answered = new Promise<void>((resolve) => (allThree = resolve));
    const controls: unknown[] = [];
    let device: Buffer | undefined;
    const t = target(N, {
      onPages: (_pfn, _d, lane) => {
        if (lanes.push(lane) === 3) allThree();
      },
      onControl: (m) => controls.push(m),
      onDeviceState: (d) => (device = d),
    });
    const holder: { ch?: PageChannel } = {};
    const asked: number[][] = [];
    holder.ch = await connect(t, N, {
      handlers: {
        onFaultRequest: (pfns) => {
          asked.push(pfns);
          void holder.ch?.sendPages(pfns, src, { lane: 'priority' });
        },
      },
    });
    const ch = holder.ch;
    const tch = await t.reg.connected;
    await tch.requestPages([5, 9, 63]);
    await ch.sendControl({ op: 'resume', at: 3 });
    await ch.sendDeviceState(Buffer.from('cpu-regs'));
    await answered; // the answer to the fault request arrived (no time window)
    await ch.barrier();
    expect(asked).toEqual([[5, 9, 63]]);
    expect(lanes).toEqual(['priority', 'priority', 'priority']);
    for (const p of [5, 9, 63]) expect(t.sink.page(p).equals(src.page(p))).toBe(true);
    expect(controls).toEqual([{ op: 'resume', at: 3 }]);
    expect(device?.toString()).toBe('cpu-regs');
    // The target can send a barrier too (symmetric).
    await tch.barrier();
    expect(ch.stats().sent.priority.pages).toBe(3);
    await tch.close();
    expect(await ch.closed).toBeUndefined();
  });

  it('a cut link rejects pending barriers and sends with a clear error', async () => {
    const N = 1024;
    const src = new Mem(N).fill(13);
    const t = target(N);
    let clientErr: Error | undefined;
    const clock = new ManualClock(); // the rate cap's time moves only when the test says so
    const ch = await connect(t, N, { rateBytesPerSec: 1024 * 1024, clock, handlers: { onClose: (e) => (clientErr = e) } });
    const tch = await t.reg.connected;
    const sending = ch.sendPages(range(N), src);
    const barrier = ch.barrier();
    // Two frames go out, the third waits on the cap: the transfer is surely under way.
    for (let i = 0; i < 2; i++) {
      await clock.sleeping();
      clock.advance();
    }
    await clock.sleeping();
    tch.destroy(); // the target side of the link goes away without CLOSE
    await expect(barrier).rejects.toThrow(ChannelClosedError);
    await expect(barrier).rejects.toThrow(/connection|closed/);
    await expect(sending).rejects.toThrow(ChannelClosedError);
    expect(clientErr).toBeInstanceOf(ChannelClosedError);
    await expect(ch.barrier()).rejects.toThrow(ChannelClosedError);
  });
});

describe('channel-2 authentication', () => {
  it('wrong secret: refused, reported on both ends, nothing applied; the right secret still works', async () => {
    const t = target(8);
    const src = new Mem(8).fill(1);
    const err = await connect({ ...t, secret: 'wrong' }, 8).catch((e: Error) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as AuthError).code).toBe('AUTH_FAILED');
    expect((err as Error).message).toMatch(/authentication failed/);
    expect((err as Error).message).not.toContain(t.secret);
    const reported = await rejectionFor(t.migrationId);
    expect(reported).toBeInstanceOf(AuthError);
    expect(reported.message).not.toContain(t.secret);
    expect(t.sink.writes).toBe(0);
    const ok = await connect(t, 8);
    await ok.sendPages([1, 2], src);
    await ok.barrier();
    expect(t.sink.page(2).equals(src.page(2))).toBe(true);
    await ok.close();
  });

  it('unknown and missing migration ids are refused', async () => {
    const err = await connect({ migrationId: 'nobody', secret: 'x' }, 8).catch((e: Error) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as AuthError).code).toBe('UNKNOWN_MIGRATION');
    expect((await rejectionFor('nobody')).message).toMatch(/unknown migration nobody/);

    const r = await raw();
    r.socket.write(encodeJsonFrame(FrameType.HELLO, { protocol: 'ferry-channel-2', pageSize: PS, pageCount: 8, nonce: '00'.repeat(32) }));
    const frames = await r.closed;
    expect(errorFrame(frames)?.message).toMatch(/no valid migrationId/);
  });

  it('processes no frame before authentication', async () => {
    const t = target(8);
    const src = new Mem(8).fill(2);
    // PAGES straight away.
    const a = await raw();
    a.socket.write(encodePagesFrame([1, 2], src));
    expect(errorFrame(await a.closed)?.message).toMatch(/expected a HELLO frame during the handshake, got PAGES/);
    // HELLO, then PAGES instead of AUTH.
    const b = await raw();
    b.socket.write(encodeJsonFrame(FrameType.HELLO, { protocol: 'ferry-channel-2', migrationId: t.migrationId, pageSize: PS, pageCount: 8, nonce: 'ab'.repeat(32) }));
    b.socket.write(encodePagesFrame([1, 2], src));
    const frames = await b.closed;
    expect(frames[0]?.type).toBe(FrameType.CHALLENGE);
    expect(errorFrame(frames)?.message).toMatch(/expected a AUTH frame/);
    expect(t.sink.writes).toBe(0);
  });

  it('one connection per migration at a time; forget() ends it', async () => {
    const t = target(8);
    let closeErr: Error | undefined;
    const first = await connect(t, 8, { handlers: { onClose: (e) => (closeErr = e) } });
    const second = await connect(t, 8).catch((e: Error) => e);
    expect(second).toBeInstanceOf(AuthError);
    expect((second as Error).message).toMatch(/already has a channel-2 connection/);
    server.forget(t.migrationId);
    expect(await first.closed).toBeInstanceOf(ChannelClosedError);
    expect(closeErr).toBeInstanceOf(ChannelClosedError);
    expect(await t.closed).toBeInstanceOf(ChannelClosedError);
    const again = await connect(t, 8).catch((e: Error) => e);
    expect((again as AuthError).code).toBe('UNKNOWN_MIGRATION');
  });

  it('a silent client is dropped after the handshake timeout', async () => {
    const quick = await PageChannelServer.listen({ host: '127.0.0.1', port: 0, handshakeTimeoutMs: 100 });
    const socket = net.connect(quick.address.port, '127.0.0.1');
    const got: Buffer[] = [];
    socket.on('data', (d: Buffer) => got.push(d));
    await once(socket, 'close');
    const { frames } = decodeFrames(Buffer.concat(got));
    expect(errorFrame(frames)?.message).toMatch(/handshake timed out/);
    await quick.close();
  });

  it('a replayed handshake (captured bytes of a real session) fails', async () => {
    const N = 16;
    const src = new Mem(N).fill(3);
    const t = target(N);
    const captured: Buffer[] = [];
    const proxy = net.createServer((c) => {
      const up = net.connect(server.address.port, '127.0.0.1');
      c.on('data', (d: Buffer) => (captured.push(Buffer.from(d)), up.write(d)));
      up.on('data', (d: Buffer) => c.write(d));
      c.on('end', () => up.end());
      up.on('end', () => c.end());
      c.on('error', () => undefined);
      up.on('error', () => undefined);
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const port = (proxy.address() as net.AddressInfo).port;
    const ch = await PageChannel.connect({ address: `127.0.0.1:${port}`, migrationId: t.migrationId, secret: t.secret, pageCount: N, rateBytesPerSec: 0 });
    await ch.sendPages(range(N), src);
    await ch.barrier();
    await ch.close();
    await (await t.reg.connected).closed;
    await new Promise((r) => setImmediate(r));
    proxy.close();
    expect(t.sink.mem.equals(src.mem)).toBe(true);
    t.sink.mem.fill(0);
    t.sink.writes = 0;

    const r = await raw();
    r.socket.write(Buffer.concat(captured)); // HELLO, AUTH (old nonce), PAGES, BARRIER, CLOSE
    const frames = await r.closed;
    expect(frames.map((f) => f.type)).toEqual([FrameType.CHALLENGE, FrameType.ERROR]);
    expect(errorFrame(frames)?.code).toBe('AUTH_FAILED');
    expect(t.sink.writes).toBe(0);
    expect(t.sink.isZero()).toBe(true);
  });
});

describe('channel-2 bad frames after a valid handshake', () => {
  const N = 32;
  const src = new Mem(N).fill(4);
  const valid = encodePagesFrame([3, 4, 5, 6, 7], src, 'bulk');

  async function sendRawAndExpectFailure(bytes: Buffer, pageCount = N): Promise<{ err: Error | undefined; frames: Frame[]; sink: Mem }> {
    const t = target(pageCount);
    const r = await raw({ migrationId: t.migrationId, secret: t.secret, pageCount });
    r.socket.end(bytes); // end too, so a frame that declares more bytes than it has is truncated
    const [err, frames] = await Promise.all([t.closed, r.closed]);
    return { err, frames, sink: t.sink };
  }

  it.each([
    { at: 0, code: 'BAD_MAGIC' },
    { at: 4, code: 'BAD_VERSION' },
    { at: 6, code: 'BAD_FLAGS' },
    { at: 13, code: 'BAD_CRC' },
    { at: HEADER_BYTES + 1, code: 'BAD_CRC' },
    { at: HEADER_BYTES + 100, code: 'BAD_CRC' },
    { at: -1, code: 'BAD_CRC' },
  ])('a flipped byte at $at: $code, closed, sink untouched', async ({ at, code }) => {
    const bad = Buffer.from(valid);
    const i = at < 0 ? bad.length + at : at;
    bad[i] = (bad[i] ?? 0) ^ 0x40;
    const { err, frames, sink } = await sendRawAndExpectFailure(bad);
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).code).toBe(code);
    expect(errorFrame(frames)?.code).toBe(code);
    expect(sink.writes).toBe(0);
  });

  it('a valid frame before the bad one is applied, the bad one is not', async () => {
    const bad = Buffer.from(encodePagesFrame([10, 11], src));
    bad[bad.length - 1] = (bad[bad.length - 1] ?? 0) ^ 1;
    const { err, sink } = await sendRawAndExpectFailure(Buffer.concat([valid, bad]));
    expect((err as FrameError).code).toBe('BAD_CRC');
    expect(sink.writes).toBe(5);
    expect(sink.page(7).equals(src.page(7))).toBe(true);
    expect(sink.page(10).every((b) => b === 0) && sink.page(11).every((b) => b === 0)).toBe(true);
  });

  it('an oversized declared length closes the connection', async () => {
    const bad = Buffer.from(valid);
    bad.writeUInt32BE(64 * 1024 * 1024, 8);
    const { err, sink } = await sendRawAndExpectFailure(bad);
    expect((err as FrameError).code).toBe('TOO_LARGE');
    expect(err?.message).toMatch(/declares 67108864 payload bytes, more than the limit/);
    expect(sink.writes).toBe(0);
  });

  it('a pfn out of range rejects the whole frame', async () => {
    const { err, sink } = await sendRawAndExpectFailure(encodePagesFrame([1, 2, 30, 31], src), 31);
    expect((err as FrameError).code).toBe('BAD_PAGES');
    expect(err?.message).toMatch(/outside the 31 pages/);
    expect(sink.writes).toBe(0);
  });

  it('a page that decodes to the wrong size rejects the whole frame', async () => {
    const c = deflateRawSync(Buffer.alloc(100, 7));
    const payload = Buffer.alloc(8 + 8 + 8 + PS + c.length);
    payload.writeUInt32BE(2, 0); // two pages
    payload.writeUInt32BE(1, 4); // in one run: pfns 8, 9
    payload.writeUInt32BE(8, 8);
    payload.writeUInt32BE(2, 12);
    payload.writeUInt32BE(PS, 16); // pfn 8: a raw page (valid)
    payload.writeUInt32BE(c.length, 20); // pfn 9: deflate data of 100 bytes
    payload.fill(9, 24, 24 + PS);
    c.copy(payload, 24 + PS);
    const { err, sink } = await sendRawAndExpectFailure(encodeFrame(FrameType.PAGES, payload));
    expect((err as FrameError).code).toBe('BAD_PAGES');
    expect(err?.message).toMatch(/page 9 decompresses to 100 bytes, not 4096/);
    expect(sink.writes).toBe(0); // not even the valid page 8
  });

  it('a truncated frame is reported when the connection ends', async () => {
    const { err, sink } = await sendRawAndExpectFailure(valid.subarray(0, valid.length - 100));
    expect((err as FrameError).code).toBe('TRUNCATED');
    expect(err?.message).toMatch(/truncated frame/);
    expect(sink.writes).toBe(0);
  });

  it('a handshake frame after authentication is a protocol error', async () => {
    const { err } = await sendRawAndExpectFailure(encodeJsonFrame(FrameType.HELLO, { again: true }));
    expect(err?.message).toMatch(/unexpected HELLO frame after the handshake/);
  });

  it('a CLOSE with a payload is rejected', async () => {
    const { err } = await sendRawAndExpectFailure(encodeFrame(FrameType.CLOSE, Buffer.from('x')));
    expect((err as FrameError).code).toBe('BAD_PAYLOAD');
  });
});
