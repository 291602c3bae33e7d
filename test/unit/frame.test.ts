import { crc32, deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodeMessage, decodePages, encodePagesFrame, encodePfnList, encodeU32 } from '../../src/dataplane/codec';
import {
  FLAG_PRIORITY,
  FrameDecoder,
  FrameError,
  FrameType,
  HEADER_BYTES,
  MAX_FRAME_PAYLOAD,
  decodeFrames,
  encodeFrame,
  encodeJsonFrame,
  type Frame,
} from '../../src/dataplane/frame';
import { isZeroPage, type PageSource } from '../../src/dataplane/pages';
import { prng } from '../../src/support/prng';

const PS = 4096;

const mulberry32 = prng;

/** Pages: every 4th all-zero, every 4th+1 compressible, the rest random. */
function memory(pageCount: number, seed: number, pageSize = PS): PageSource & { mem: Buffer } {
  const rnd = mulberry32(seed);
  const mem = Buffer.alloc(pageCount * pageSize);
  for (let p = 0; p < pageCount; p++) {
    const page = mem.subarray(p * pageSize, (p + 1) * pageSize);
    if (p % 4 === 0) continue;
    if (p % 4 === 1) {
      for (let i = 0; i < pageSize; i += 64) page.writeUInt32LE((p * 2654435761) >>> 0, i);
    } else {
      for (let i = 0; i < pageSize; i++) page[i] = (rnd() * 256) | 0;
    }
  }
  return {
    mem,
    pageSize,
    pageCount,
    readPage: (pfn, dst) => dst.set(mem.subarray(pfn * pageSize, (pfn + 1) * pageSize)),
  };
}

function decodeAll(buf: Buffer, chunk = 0): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  const step = chunk || buf.length;
  for (let i = 0; i < buf.length; i += step) {
    d.push(buf.subarray(i, i + step));
    for (let f = d.next(); f; f = d.next()) out.push({ ...f, payload: Buffer.from(f.payload) });
  }
  d.end();
  return out;
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    return (err as FrameError).code;
  }
  throw new Error('expected a FrameError');
}

describe('frame header', () => {
  it('round-trips every frame type, whole or split in odd chunks', () => {
    const frames = [
      encodeJsonFrame(FrameType.HELLO, { migrationId: 'm-1' }),
      encodeFrame(FrameType.FAULT_REQUEST, encodePfnList([1, 2, 99])),
      encodeFrame(FrameType.BARRIER, encodeU32(7)),
      encodeFrame(FrameType.ACK, encodeU32(7)),
      encodeJsonFrame(FrameType.CONTROL, { op: 'switch', n: [1, 2] }),
      encodeFrame(FrameType.DEVICE_STATE, Buffer.from('device bytes')),
      encodeJsonFrame(FrameType.ERROR, { code: 'X', message: 'y' }),
      encodeFrame(FrameType.CLOSE),
      encodePagesFrame([0, 1, 2, 3, 10, 11, 5], memory(16, 1), 'priority', { compression: true }),
    ];
    const stream = Buffer.concat(frames);
    for (const chunk of [0, 1, 7, 4096]) {
      const got = decodeAll(stream, chunk);
      expect(got.map((f) => f.type)).toEqual([
        FrameType.HELLO, FrameType.FAULT_REQUEST, FrameType.BARRIER, FrameType.ACK, FrameType.CONTROL,
        FrameType.DEVICE_STATE, FrameType.ERROR, FrameType.CLOSE, FrameType.PAGES,
      ]);
      const geo = { pageSize: PS, pageCount: 128 };
      expect(decodeMessage(got[1] as Frame, geo)).toEqual({ kind: 'fault', pfns: [1, 2, 99] });
      expect(decodeMessage(got[2] as Frame, geo)).toEqual({ kind: 'barrier', id: 7 });
      expect(decodeMessage(got[4] as Frame, geo)).toEqual({ kind: 'control', msg: { op: 'switch', n: [1, 2] } });
      expect(got[8]?.flags).toBe(FLAG_PRIORITY);
    }
  });

  it('rejects bad magic, version, type, flags, size, checksum and truncation with typed errors', () => {
    const good = encodeJsonFrame(FrameType.CONTROL, { a: 1 });
    const mut = (i: number, v: number): Buffer => {
      const b = Buffer.from(good);
      b[i] = v;
      return b;
    };
    expect(codeOf(() => decodeAll(mut(0, 0x00)))).toBe('BAD_MAGIC');
    expect(codeOf(() => decodeAll(mut(4, 9)))).toBe('BAD_VERSION');
    expect(codeOf(() => decodeAll(mut(5, 200)))).toBe('BAD_TYPE');
    expect(codeOf(() => decodeAll(mut(7, 0x80)))).toBe('BAD_FLAGS');
    expect(codeOf(() => decodeAll(mut(5, FrameType.ACK)))).toBe('BAD_CRC'); // header is covered by the CRC
    expect(codeOf(() => decodeAll(mut(HEADER_BYTES + 2, 0x21)))).toBe('BAD_CRC');
    const big = Buffer.from(good);
    big.writeUInt32BE(MAX_FRAME_PAYLOAD + 1, 8);
    expect(codeOf(() => decodeAll(big))).toBe('TOO_LARGE');
    expect(codeOf(() => decodeAll(good.subarray(0, good.length - 1)))).toBe('TRUNCATED');
    expect(codeOf(() => decodeAll(good.subarray(0, 5)))).toBe('TRUNCATED');
    const e = (() => {
      try {
        decodeAll(big);
      } catch (err) {
        return err as Error;
      }
      return null;
    })();
    expect(e?.message).toMatch(/declares 8388609 payload bytes, more than the limit of 8388608/);
  });

  it('a stream ending after a header whose payload never came is TRUNCATED, whole or in chunks', () => {
    const first = encodeJsonFrame(FrameType.CONTROL, { a: 1 });
    const barrier = encodeFrame(FrameType.BARRIER, encodeU32(9)); // 4 payload bytes
    for (const chunk of [0, 1, 7, HEADER_BYTES]) {
      // Header only, then after a complete frame: the header is consumed, no payload byte buffered.
      expect(codeOf(() => decodeAll(barrier.subarray(0, HEADER_BYTES), chunk))).toBe('TRUNCATED');
      expect(codeOf(() => decodeAll(Buffer.concat([first, barrier.subarray(0, HEADER_BYTES)]), chunk))).toBe('TRUNCATED');
      // A frame whose payload is empty is complete after its header: accepted.
      expect(decodeAll(Buffer.concat([first, encodeFrame(FrameType.CLOSE)]), chunk).map((f) => f.type)).toEqual([FrameType.CONTROL, FrameType.CLOSE]);
    }
    const d = new FrameDecoder();
    d.push(barrier.subarray(0, HEADER_BYTES));
    expect(d.next()).toBeNull();
    expect(() => d.end()).toThrow(/truncated frame: the connection ended after 16 of 20 bytes/);
    expect(() => d.next()).toThrow(FrameError); // and the decoder stays failed
  });

  it('a decoder stays failed after an error', () => {
    const d = new FrameDecoder();
    d.push(Buffer.alloc(HEADER_BYTES, 1));
    expect(() => d.next()).toThrow(FrameError);
    d.push(encodeFrame(FrameType.CLOSE));
    expect(() => d.next()).toThrow(FrameError);
  });
});

describe('PAGES payload', () => {
  it('round-trips random, zero and compressible pages in any pfn order, with and without compression', () => {
    const src = memory(64, 2);
    const pfns = [5, 6, 7, 8, 0, 1, 2, 63, 40, 41, 3, 12, 13];
    for (const compression of [false, true]) {
      const frame = encodePagesFrame(pfns, src, 'bulk', { compression });
      const [f] = decodeFrames(frame).frames;
      const d = decodePages((f as Frame).payload, PS, 64);
      expect(Array.from(d.pfns)).toEqual(pfns);
      pfns.forEach((pfn, i) => expect(Buffer.from(d.pages[i] as Uint8Array).equals(src.mem.subarray(pfn * PS, (pfn + 1) * PS))).toBe(true));
      expect(d.zeroPages).toBe(pfns.filter((p) => p % 4 === 0).length);
      if (compression) expect(d.compressedPages).toBe(pfns.filter((p) => p % 4 === 1).length);
      else expect(d.compressedPages).toBe(0);
    }
    const raw = encodePagesFrame(pfns, src, 'bulk', { zeroElision: false });
    expect(raw.length).toBeGreaterThan(pfns.length * PS);
    expect(encodePagesFrame(pfns, src, 'bulk', { compression: true }).length).toBeLessThan(raw.length / 2);
  });

  it('rejects pfns out of range, wrong decoded size, truncated and trailing data', () => {
    const src = memory(32, 3);
    const payloadOf = (b: Buffer): Buffer => b.subarray(HEADER_BYTES);
    expect(() => decodePages(payloadOf(encodePagesFrame([30, 31], src)), PS, 31)).toThrow(/outside the 31 pages/);
    const p = payloadOf(encodePagesFrame([2, 3], src));
    expect(codeOf(() => decodePages(p.subarray(0, p.length - 1), PS, 32))).toBe('BAD_PAGES');
    expect(codeOf(() => decodePages(Buffer.concat([p, Buffer.alloc(1)]), PS, 32))).toBe('BAD_PAGES');
    // One page whose deflate data inflates to 100 bytes instead of a page.
    const c = deflateRawSync(Buffer.alloc(100, 7));
    const bad = Buffer.alloc(8 + 8 + 4 + c.length);
    bad.writeUInt32BE(1, 0);
    bad.writeUInt32BE(1, 4);
    bad.writeUInt32BE(0, 8);
    bad.writeUInt32BE(1, 12);
    bad.writeUInt32BE(c.length, 16);
    c.copy(bad, 20);
    expect(() => decodePages(bad, PS, 32)).toThrow(/decompresses to 100 bytes, not 4096/);
    // A "compressed" page that inflates to more than a page.
    const big = deflateRawSync(Buffer.alloc(PS * 2, 7));
    bad.writeUInt32BE(big.length, 16);
    const bad2 = Buffer.concat([bad.subarray(0, 20), big]);
    expect(codeOf(() => decodePages(bad2, PS, 32))).toBe('BAD_PAGES');
  });
});

describe('isZeroPage', () => {
  it('works at any byte offset', () => {
    const buf = new Uint8Array(PS * 3);
    for (const off of [0, 1, 3, 7, 8, 4095]) {
      const page = buf.subarray(off, off + PS);
      expect(isZeroPage(page)).toBe(true);
      for (const i of [0, 1, 1000, PS - 2, PS - 1]) {
        page[i] = 1;
        expect(isZeroPage(page)).toBe(false);
        page[i] = 0;
      }
    }
    expect(isZeroPage(new Uint8Array(200_000))).toBe(true);
  });
});

describe('decoder fuzz', () => {
  it('a few thousand seeded mutations: a FrameError, or frames that re-encode to the input bytes', () => {
    const rnd = mulberry32(0xfe77);
    const int = (n: number): number => Math.floor(rnd() * n);
    const src = memory(64, 4);
    const geo = { pageSize: PS, pageCount: 64 };
    const seeds = [
      encodePagesFrame([0, 1, 2, 3, 4, 9, 33], src, 'bulk', { compression: true }),
      encodePagesFrame([7, 6, 5], src, 'priority'),
      encodeFrame(FrameType.FAULT_REQUEST, encodePfnList([1, 5, 63])),
      encodeFrame(FrameType.BARRIER, encodeU32(1)),
      encodeJsonFrame(FrameType.CONTROL, { op: 'x', v: [1, 'a'] }),
      encodeJsonFrame(FrameType.ERROR, { code: 'A', message: 'b' }),
      encodeFrame(FrameType.CLOSE),
    ];
    let accepted = 0; // mutated inputs (not equal to a seed) accepted with at least one frame
    const codes = new Map<string, number>();
    for (let iter = 0; iter < 3000; iter++) {
      let b = Buffer.from(seeds[int(seeds.length)] as Buffer);
      const edits = 1 + int(4);
      for (let e = 0; e < edits; e++) {
        const op = int(5);
        const at = int(b.length);
        if (op === 0) b[at] = (b[at] ?? 0) ^ (1 << int(8));
        else if (op === 1) b[at] = int(256);
        else if (op === 2) b = b.subarray(0, at);
        else if (op === 3) b = Buffer.concat([b.subarray(0, at), Buffer.from([int(256), int(256)]), b.subarray(at)]);
        else if (b.length >= HEADER_BYTES + 4) b.writeUInt32BE(int(2) ? int(64) : int(0x100000000), Math.max(HEADER_BYTES, Math.min(at, b.length - 4)));
      }
      // Half the time, fix the checksum so the payload decoders are fuzzed too.
      if (iter % 2 === 0 && b.length >= HEADER_BYTES) {
        const len = Math.min(b.readUInt32BE(8), b.length - HEADER_BYTES);
        b.writeUInt32BE(len, 8);
        b = Buffer.from(b.subarray(0, HEADER_BYTES + len));
        b.writeUInt32BE(crc32(b.subarray(HEADER_BYTES), crc32(b.subarray(0, 12))), 12);
      }
      const frames: Frame[] = [];
      try {
        const d = new FrameDecoder();
        d.push(b);
        for (let f = d.next(); f; f = d.next()) {
          decodeMessage(f, geo);
          frames.push({ ...f, payload: Buffer.from(f.payload) });
        }
        d.end();
      } catch (err) {
        if (!(err instanceof FrameError)) throw new Error(`case ${iter}: ${String(err)}`, { cause: err });
        codes.set(err.code, (codes.get(err.code) ?? 0) + 1);
        continue;
      }
      // Accepted: the frame layer has one encoding, so the frames re-encode to the input bytes.
      const again = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload, f.flags)));
      expect(again.equals(b), `case ${iter}: accepted frames re-encode to the input`).toBe(true);
      if (frames.length > 0 && !seeds.some((s) => s.equals(b))) accepted++;
    }
    const rejected = [...codes.values()].reduce((a, n) => a + n, 0);
    // Both outcomes occur, and the rejections come from the header, checksum and payload checks.
    expect(accepted, 'some mutated inputs decode to frames').toBeGreaterThan(0);
    expect(rejected, 'most mutated inputs are rejected').toBeGreaterThan(1000);
    expect(codes.get('BAD_CRC') ?? 0).toBeGreaterThan(0);
    expect(codes.get('TRUNCATED') ?? 0).toBeGreaterThan(0);
    expect((codes.get('BAD_PAGES') ?? 0) + (codes.get('BAD_PAYLOAD') ?? 0)).toBeGreaterThan(0);
  });
});
