/**
 * Post-copy recovery through the relays (src/hypervisor/qemu/relay/recovery.ts): the discard
 * command's parser, the return-path rewriter that adds the RAM file's pages to QEMU's
 * RECV_BITMAP, and both agents' recovery relays on real sockets (unix sockets standing in for
 * the two QEMUs, a loopback relay link between the agents).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Bitmap } from '../../src/dataplane/bitmap';
import { connectRelay, listenRelay, newRelayToken } from '../../src/hypervisor/qemu/relay/link';
import { parseRamDiscard, RecoverySource, RecoveryTarget, ReturnPathRewriter, RpMessage } from '../../src/hypervisor/qemu/relay/recovery';
import { prng } from '../../src/support/prng';

function discardRecord(block: string, ranges: [number, number][], version = 0): Buffer {
  const name = Buffer.from(block, 'latin1');
  const data = Buffer.alloc(3 + name.length + 16 * ranges.length);
  data[0] = version;
  data[1] = name.length;
  name.copy(data, 2);
  data[2 + name.length] = 0;
  ranges.forEach(([s, l], i) => {
    data.writeBigUInt64BE(BigInt(s), 3 + name.length + 16 * i);
    data.writeBigUInt64BE(BigInt(l), 3 + name.length + 16 * i + 8);
  });
  const head = Buffer.alloc(5);
  head[0] = 0x08;
  head.writeUInt16BE(6, 1);
  head.writeUInt16BE(data.length, 3);
  return Buffer.concat([head, data]);
}

function rp(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16BE(type, 0);
  h.writeUInt16BE(payload.length, 2);
  return Buffer.concat([h, payload]);
}

/** A RECV_BITMAP message as QEMU sends it: the block's name, then (outside len) size, LE bitmap, ending. */
function recvBitmap(block: string, pages: number, set: number[], ending = 0x0123456789abcdefn): Buffer {
  const name = Buffer.from(block, 'latin1');
  const size = Math.ceil(pages / 64) * 8;
  const bits = Buffer.alloc(size);
  for (const p of set) bits[p >> 3]! |= 1 << (p & 7);
  const tail = Buffer.alloc(8 + size + 8);
  tail.writeBigUInt64BE(BigInt(size), 0);
  bits.copy(tail, 8);
  tail.writeBigUInt64BE(ending, 8 + size);
  return Buffer.concat([rp(RpMessage.RECV_BITMAP, Buffer.concat([Buffer.from([name.length]), name])), tail]);
}

function bitsOf(msg: Buffer): number[] {
  const nameLen = msg[4]!;
  const at = 4 + 1 + nameLen;
  const size = Number(msg.readBigUInt64BE(at));
  const out: number[] = [];
  for (let i = 0; i < size * 8; i++) if ((msg[at + 8 + (i >> 3)]! >> (i & 7)) & 1) out.push(i);
  return out;
}

const pong = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return rp(RpMessage.PONG, b);
};

describe('POSTCOPY_RAM_DISCARD', () => {
  it('reads the block and its byte ranges', () => {
    expect(parseRamDiscard(discardRecord('pc.ram', [[4096, 8192], [1 << 30, 4096]]))).toEqual({
      block: 'pc.ram',
      ranges: [
        { start: 4096, length: 8192 },
        { start: 1 << 30, length: 4096 },
      ],
    });
    expect(parseRamDiscard(discardRecord('pc.ram', []))).toEqual({ block: 'pc.ram', ranges: [] });
  });

  it('refuses what QEMU 10.0 never writes, naming it', () => {
    expect(() => parseRamDiscard(discardRecord('pc.ram', [[0, 4096]], 1))).toThrow(/version 1/);
    const cut = discardRecord('pc.ram', [[0, 4096]]);
    const short = Buffer.concat([cut.subarray(0, 3), Buffer.from([0, cut.length - 5 - 8]), cut.subarray(5, cut.length - 8)]);
    expect(() => parseRamDiscard(short)).toThrow(/whole number of \(start, length\) pairs/);
    const noNul = discardRecord('pc.ram', []);
    noNul[noNul.length - 1] = 1;
    expect(() => parseRamDiscard(noNul)).toThrow(/terminator/);
    expect(() => parseRamDiscard(pong(1))).toThrow(/not a POSTCOPY_RAM_DISCARD/);
  });
});

describe('return path rewriter', () => {
  it("adds the RAM file's pages to RECV_BITMAP of that block only, whatever the chunking", () => {
    const pages = 1000;
    const resident = new Bitmap(pages);
    for (const p of [0, 5, 63, 64, 200, 999]) resident.set(p);
    const stream = Buffer.concat([pong(1), recvBitmap('pc.ram', pages, [5, 6, 700]), recvBitmap('other', 16, [1]), rp(RpMessage.RESUME_ACK, Buffer.from([0, 0, 0, 1])), pong(4)]);
    const random = prng(11);
    for (let trial = 0; trial < 50; trial++) {
      const w = new ReturnPathRewriter((b) => (b === 'pc.ram' ? resident : null));
      const out: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(random() * (trial % 2 ? 7 : 400));
        out.push(...w.push(stream.subarray(at, at + n)));
        at += n;
      }
      expect(w.pending).toBe(0);
      expect(out.map((m) => m.readUInt16BE(0))).toEqual([RpMessage.PONG, RpMessage.RECV_BITMAP, RpMessage.RECV_BITMAP, RpMessage.RESUME_ACK, RpMessage.PONG]);
      expect(bitsOf(out[1]!)).toEqual([0, 5, 6, 63, 64, 200, 700, 999]);
      expect(bitsOf(out[2]!)).toEqual([1]);
      expect(out[0]).toEqual(pong(1));
      // Every message keeps its length: the source reads the same framing.
      expect(Buffer.concat(out).length).toBe(stream.length);
      expect(w.added.get('pc.ram')).toBe(5); // 5 was set already
    }
  });

  it('refuses a message QEMU would not send: unknown type, wrong length, a bitmap without its ending', () => {
    const w = () => new ReturnPathRewriter(() => null);
    expect(() => w().push(rp(99, Buffer.alloc(0)))).toThrow(/type 99/);
    expect(() => w().push(rp(RpMessage.PONG, Buffer.alloc(3)))).toThrow(/length 3, expected 4/);
    expect(() => w().push(recvBitmap('pc.ram', 64, [1], 0xdeadn))).toThrow(/ends with 0xdead, not QEMU's marker/);
  });
});

describe('recovery relays on real sockets', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanup.splice(0)) c();
  });

  it('carry the stream and the preempt channel source → target, rewriting only the return path', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-recovery-'));
    cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    // The target QEMU's migrate-recover socket: its first connection is the stream, its second the preempt channel.
    const targetSock = path.join(dir, 'target.sock');
    const targetConns: net.Socket[] = [];
    const received: Buffer[][] = [[], []];
    const gotPreempt = new Promise<void>((resolve) => {
      const server = net.createServer((s) => {
        const i = targetConns.length;
        targetConns.push(s);
        s.on('data', (d: Buffer) => received[i]?.push(d));
        if (i === 0) s.write(Buffer.concat([recvBitmap('pc.ram', 128, [3]), pong(5)]));
        else resolve();
      });
      server.listen(targetSock);
      cleanup.push(() => server.close());
    });
    const token = newRelayToken();
    const listener = await listenRelay({ host: '127.0.0.1', migrationId: 'm-rec', token });
    const resident = Bitmap.fromPfns(128, [10, 100]);
    const target = new RecoveryTarget({ listener, connectQemu: () => new Promise((r) => { const s = net.connect(targetSock, () => r(s)); }), resident: () => resident });
    cleanup.push(() => target.close());
    const source = await RecoverySource.listen({
      listenPath: path.join(dir, 'source.sock'),
      connect: (channel) => connectRelay({ host: '127.0.0.1', port: listener.address.port, migrationId: 'm-rec', token, targetHostId: 'target', channel }),
    });
    cleanup.push(() => source.close());
    // The source QEMU resumes: the stream, then the preempt channel.
    const main = net.connect(path.join(dir, 'source.sock'));
    cleanup.push(() => main.destroy());
    const fromTarget: Buffer[] = [];
    main.on('data', (d: Buffer) => fromTarget.push(d));
    main.write('recovered stream bytes');
    await until(() => Buffer.concat(fromTarget).length >= recvBitmap('pc.ram', 128, []).length + 8);
    const back = Buffer.concat(fromTarget);
    const bitmapMsg = back.subarray(0, back.length - 8);
    expect(bitsOf(bitmapMsg)).toEqual([3, 10, 100]);
    expect(back.subarray(back.length - 8)).toEqual(pong(5));
    const preempt = net.connect(path.join(dir, 'source.sock'));
    cleanup.push(() => preempt.destroy());
    preempt.write('urgent page');
    await gotPreempt;
    await until(() => Buffer.concat(received[1]!).toString() === 'urgent page');
    await until(() => Buffer.concat(received[0]!).toString() === 'recovered stream bytes');
    expect(target.stats()).toMatchObject({ connections: 2, addedPages: 2, error: null });
    expect(source.lastError).toBeNull();
  });

  it('a return path the source would refuse ends the recovered stream and says why', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-recovery-'));
    cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const targetSock = path.join(dir, 'target.sock');
    const server = net.createServer((s) => s.write(rp(42, Buffer.alloc(0))));
    server.listen(targetSock);
    cleanup.push(() => server.close());
    const token = newRelayToken();
    const listener = await listenRelay({ host: '127.0.0.1', migrationId: 'm-rec2', token });
    const target = new RecoveryTarget({ listener, connectQemu: () => new Promise((r) => { const s = net.connect(targetSock, () => r(s)); }), resident: () => null });
    cleanup.push(() => target.close());
    const link = await connectRelay({ host: '127.0.0.1', port: listener.address.port, migrationId: 'm-rec2', token, targetHostId: 'target' });
    cleanup.push(() => link.destroy());
    const closed = new Promise<void>((r) => link.on('close', () => r()));
    link.on('error', () => undefined);
    link.resume();
    await closed;
    expect(target.stats().error).toMatch(/message type 42/);
  });
});

async function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
