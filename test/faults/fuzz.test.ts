/**
 * Bad input at the two parsers that read bytes from another host: the channel-2 frame
 * decoder and the shared-storage manifest and chunk parsers. Tens of thousands of seeded
 * mutations (FERRY_FUZZ_SEED, printed): each ends in a typed error or a valid result —
 * never a crash, a hang, or another error type.
 */
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodeMessage, encodePagesFrame, encodePfnList, encodeU32 } from '../../src/dataplane/codec';
import { ChannelError, FrameDecoder, FrameType, HEADER_BYTES, encodeFrame, encodeJsonFrame } from '../../src/dataplane/frame';
import type { PageSource } from '../../src/dataplane/pages';
import { SharedStore, StorageCorruptError, decodeChunk, parseManifest } from '../../src/dataplane/store';
import { prng } from '../helpers/isolated';
import { tempDir } from '../helpers/cluster';
import fs from 'node:fs';
import path from 'node:path';

const seed = Number(process.env.FERRY_FUZZ_SEED ?? Date.now() % 1_000_000);
console.log(`fuzz seed: FERRY_FUZZ_SEED=${seed}`);
const PS = 4096;

function source(pages: number): PageSource {
  const rnd = prng(seed ^ 0x5a5a);
  const mem = new Uint8Array(pages * PS);
  for (let p = 0; p < pages; p++) {
    if (p % 5 === 0) continue; // zero pages
    for (let i = 0; i < PS; i += p % 3 === 0 ? 64 : 1) mem[p * PS + i] = Math.floor(rnd() * 256);
  }
  return { pageSize: PS, pageCount: pages, readPage: (pfn, dst) => dst.set(mem.subarray(pfn * PS, (pfn + 1) * PS)) };
}

/** Byte-level mutations: flips, overwrites, truncation, insertion, big integers. */
function mutate(input: Buffer, rnd: () => number, from = 0): Buffer {
  const int = (n: number): number => Math.floor(rnd() * n);
  let b = Buffer.from(input);
  const edits = 1 + int(4);
  for (let e = 0; e < edits && b.length > 0; e++) {
    const at = from + int(Math.max(1, b.length - from));
    switch (int(5)) {
      case 0:
        b[at] = (b[at] ?? 0) ^ (1 << int(8));
        break;
      case 1:
        b[at] = int(256);
        break;
      case 2:
        b = b.subarray(0, at);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), Buffer.from([int(256), int(256), int(256)]), b.subarray(at)]);
        break;
      default:
        if (b.length >= at + 4) b.writeUInt32LE(int(2) ? int(1 << 16) : int(0x100000000), at);
    }
  }
  return b;
}

describe('channel-2 frame decoder', () => {
  it('30,000 mutated frames: a ChannelError or valid frames', () => {
    const rnd = prng(seed);
    const src = source(64);
    const geo = { pageSize: PS, pageCount: 64 };
    const seeds = [
      encodePagesFrame([0, 1, 2, 3, 4, 9, 33], src, 'bulk', { compression: true }),
      encodePagesFrame([7, 6, 5, 10, 20], src, 'priority'),
      encodeFrame(FrameType.FAULT_REQUEST, encodePfnList([1, 5, 63])),
      encodeFrame(FrameType.BARRIER, encodeU32(1)),
      encodeJsonFrame(FrameType.CONTROL, { type: 'postcopy', missing: { size: 64, bits: 'AAAA' } }),
      encodeJsonFrame(FrameType.ERROR, { code: 'A', message: 'b' }),
      encodeFrame(FrameType.CLOSE),
    ];
    let valid = 0;
    let typed = 0;
    const N = 30_000;
    for (let i = 0; i < N; i++) {
      let b = mutate(seeds[Math.floor(rnd() * seeds.length)]!, rnd);
      // Half the time repair length and CRC so the payload decoders are reached.
      if (i % 2 === 0 && b.length >= HEADER_BYTES) {
        const len = Math.min(b.readUInt32BE(8), b.length - HEADER_BYTES);
        b.writeUInt32BE(len, 8);
        b = Buffer.from(b.subarray(0, HEADER_BYTES + len));
        b.writeUInt32BE(crc32(b.subarray(HEADER_BYTES), crc32(b.subarray(0, 12))), 12);
      }
      try {
        const d = new FrameDecoder();
        d.push(b);
        for (let f = d.next(); f; f = d.next()) decodeMessage(f, geo);
        d.end();
        valid++;
      } catch (err) {
        if (!(err instanceof ChannelError)) throw new Error(`seed ${seed} case ${i}: ${String(err)}`);
        typed++;
      }
    }
    expect(valid + typed).toBe(N);
    expect(typed).toBeGreaterThan(N / 3);
  });
});

describe('shared-storage manifest and chunk parsers', () => {
  it('20,000 mutated manifests and 10,000 mutated chunks: a StorageCorruptError naming the file, or valid', async () => {
    const rnd = prng(seed + 1);
    const root = tempDir('fuzz-store');
    const store = new SharedStore(root);
    const w = await store.openWriter('fuzz-mig', 'static', { pageSize: PS, pageCount: 64, chunkPages: 16, fsync: false });
    await w.writePages(Uint32Array.from({ length: 64 }, (_, i) => i), source(64));
    await w.commit();
    const dir = store.dir('fuzz-mig', 'static');
    const manifestText = fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8');
    const chunks = fs.readdirSync(dir).filter((f) => f.startsWith('chunk-'));
    const file = path.join(dir, 'manifest.json');

    let valid = 0;
    let typed = 0;
    for (let i = 0; i < 20_000; i++) {
      let text: string;
      if (i % 2 === 0) {
        text = mutate(Buffer.from(manifestText), rnd).toString('utf8');
      } else {
        // Structured mutation with a re-sealed checksum, to reach the field checks.
        const m = JSON.parse(manifestText) as Record<string, unknown>;
        delete m.manifestCrc32;
        const keys = Object.keys(m);
        const k = keys[Math.floor(rnd() * keys.length)]!;
        const choices: unknown[] = [null, -1, 1.5, 'x', [], {}, 2 ** 60, true, JSON.parse(JSON.stringify(m[k] ?? null)) as unknown];
        m[k] = choices[Math.floor(rnd() * choices.length)];
        if (Array.isArray(m.chunks) && rnd() < 0.5 && m.chunks.length) {
          const c = m.chunks[Math.floor(rnd() * m.chunks.length)] as Record<string, unknown>;
          const ck = ['name', 'pages', 'bytes', 'crc32', 'zeroPages'][Math.floor(rnd() * 5)]!;
          const small: unknown[] = [null, -1, 1.5, 'x', 'chunk-000001.bin', [], {}, 2 ** 60, true, 0];
          c[ck] = small[Math.floor(rnd() * small.length)];
        }
        text = JSON.stringify({ ...m, manifestCrc32: crc32(Buffer.from(JSON.stringify(m))) });
      }
      try {
        parseManifest(text, file, 'fuzz-mig', 'static');
        valid++;
      } catch (err) {
        if (!(err instanceof StorageCorruptError)) throw new Error(`seed ${seed} manifest case ${i}: ${String(err)}`);
        expect(err.message).toContain(file);
        typed++;
      }
    }
    expect(valid + typed).toBe(20_000);
    expect(typed).toBeGreaterThan(15_000);

    let cValid = 0;
    let cTyped = 0;
    for (let i = 0; i < 10_000; i++) {
      const name = chunks[i % chunks.length]!;
      const raw = fs.readFileSync(path.join(dir, name));
      const bad = mutate(raw, rnd);
      try {
        decodeChunk(bad, path.join(dir, name), name, Number(/(\d+)/.exec(name)![1]));
        cValid++;
      } catch (err) {
        if (!(err instanceof StorageCorruptError)) throw new Error(`seed ${seed} chunk case ${i}: ${String(err)}`);
        expect(err.message).toContain(name);
        cTyped++;
      }
    }
    expect(cValid + cTyped).toBe(10_000);
    expect(cTyped).toBeGreaterThan(9_000);
  });
});
