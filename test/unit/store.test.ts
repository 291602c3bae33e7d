import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/dataplane/clock';
import type { PageSource } from '../../src/dataplane/pages';
import { crc32, SharedStore, StorageCorruptError, StorageTimeoutError, type SnapshotWriter } from '../../src/dataplane/store';

const PS = 4096;

/** Fake guest memory: random pages, every `zeroEvery`-th page all zero. */
function fakeMemory(pageCount: number, zeroEvery = 5, pageSize = PS): PageSource & { mem: Uint8Array } {
  const mem = new Uint8Array(pageCount * pageSize);
  randomFillSync(mem);
  if (zeroEvery > 0) for (let p = 0; p < pageCount; p += zeroEvery) mem.fill(0, p * pageSize, (p + 1) * pageSize);
  return {
    mem,
    pageSize,
    pageCount,
    readPage: (pfn, dst) => dst.set(mem.subarray(pfn * pageSize, (pfn + 1) * pageSize)),
  };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

let root: string;
let store: SharedStore;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-store-'));
  store = new SharedStore(root);
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function readAll(id: string, kind: 'static' | 'pbdata', pageCount: number): Promise<Uint8Array> {
  const reader = store.openReader(id, kind);
  const m = await reader.manifest();
  expect(m?.completed).toBe(true);
  const out = new Uint8Array(pageCount * PS).fill(0xee);
  for (const c of m?.chunks ?? []) {
    const chunk = await reader.readChunk(c.name);
    chunk.pfns.forEach((pfn, i) => out.set(chunk.page(i), pfn * PS));
  }
  return out;
}

async function writeSnapshot(id: string, pageCount = 300): Promise<{ writer: SnapshotWriter; src: ReturnType<typeof fakeMemory> }> {
  const src = fakeMemory(pageCount);
  const writer = await store.openWriter(id, 'static', { pageSize: PS, pageCount, rateBytesPerSec: 0, chunkPages: 64 });
  await writer.writePages(range(pageCount), src);
  await writer.commit();
  return { writer, src };
}

describe('SharedStore write/commit/read', () => {
  it('round-trips a snapshot byte-equal, eliding zero pages', async () => {
    const { writer, src } = await writeSnapshot('m1', 300);
    const st = writer.stats();
    expect(st).toMatchObject({ pages: 300, zeroPages: 60, chunks: 5 });
    expect(st.bytesWritten).toBeLessThan(300 * PS);
    expect(st.bytesWritten).toBeGreaterThan(240 * PS);
    const m = await store.openReader('m1', 'static').manifest();
    expect(m).toMatchObject({ pages: 300, zeroPages: 60, pageSize: PS, pageCount: 300, bytes: st.bytesWritten, completed: true });
    expect(m?.chunks.map((c) => c.name)).toEqual(['chunk-000000.bin', 'chunk-000001.bin', 'chunk-000002.bin', 'chunk-000003.bin', 'chunk-000004.bin']);
    expect(Buffer.compare(await readAll('m1', 'static', 300), src.mem)).toBe(0);
    const reader = store.openReader('m1', 'static');
    await reader.readChunk('chunk-000000.bin');
    expect(reader.stats()).toEqual({ bytesRead: 51 * PS + 32 + 5 * 64 + 4, chunksRead: 1 });
  });

  it('stores zero pages when elision is off, and takes pfns as a Uint32Array in any order', async () => {
    const src = fakeMemory(50, 2);
    const w = await store.openWriter('m2', 'pbdata', { pageSize: PS, pageCount: 50, elideZeroPages: false, chunkPages: 7 });
    const pfns = Uint32Array.from(range(50).reverse());
    await w.writePages(pfns, src);
    await w.commit();
    expect(w.stats()).toMatchObject({ pages: 50, zeroPages: 0, chunks: 8 });
    expect(Buffer.compare(await readAll('m2', 'pbdata', 50), src.mem)).toBe(0);
  });

  it('shows committed chunks early and the manifest only after commit', async () => {
    const src = fakeMemory(200);
    const w = await store.openWriter('m3', 'static', { pageSize: PS, pageCount: 200, chunkPages: 32 });
    const reader = store.openReader('m3', 'static');
    expect(await reader.committedChunks()).toEqual([]);
    await w.writePages(range(100), src);
    const early = await reader.committedChunks();
    expect(early.length).toBe(4); // 32+32+32+4: a call flushes its partial chunk
    expect(await reader.manifest()).toBeNull();
    const c = await reader.readChunk(early[1] ?? '');
    expect(Array.from(c.pfns)).toEqual(range(32).map((i) => 32 + i));
    await expect(reader.waitForCommit(30)).rejects.toBeInstanceOf(StorageTimeoutError);
    const waiting = reader.waitForCommit(60_000, undefined, 5); // must not time out: the commit comes below
    await w.writePages(range(100).map((i) => 100 + i), src);
    expect(await reader.manifest()).toBeNull();
    await w.commit();
    expect((await waiting).pages).toBe(200);
    expect(await w.commit()).toEqual(await reader.manifest()); // idempotent
  });

  it('a reader polling during a capped save sees chunks before the save ends, never a manifest', async () => {
    // The cap's time is virtual (ManualClock): the reader looks while the writer is held on
    // the cap before each chunk, so "before the save ends" is a sequence, not a race between
    // a 125 ms save and a 5 ms poller.
    const clock = new ManualClock();
    const src = fakeMemory(512, 0);
    const w = await store.openWriter('m4', 'static', { pageSize: PS, pageCount: 512, chunkPages: 64, rateBytesPerSec: 16 * 1024 * 1024, clock });
    const reader = store.openReader('m4', 'static');
    let finished = false;
    const save = w.writePages(range(512), src).then(() => { finished = true; });
    const seen: number[] = []; // committed chunks the reader saw at each wait on the cap
    for (;;) {
      await Promise.race([clock.sleeping(), save]);
      if (finished) break;
      seen.push((await reader.committedChunks()).length);
      expect(await reader.manifest()).toBeNull();
      clock.advance();
    }
    await save;
    // One wait per chunk; at the wait for chunk k, chunks 0..k-2 are in place (k-1 may still be written).
    expect(seen.length).toBe(8);
    seen.forEach((n, k) => expect(n).toBeGreaterThanOrEqual(k - 1));
    const seenEarly = Math.max(...seen);
    expect(seenEarly).toBeGreaterThan(0);
    expect(seenEarly).toBeLessThan(8);
    expect(await reader.manifest()).toBeNull();
    await w.commit();
    expect((await reader.manifest())?.chunks.length).toBe(8);
  });

  it('validates migration ids and kinds', async () => {
    for (const bad of ['', '../x', 'a/b', '.hidden', 'x'.repeat(201)]) {
      expect(() => store.openReader(bad, 'static')).toThrow(/not a safe file name/);
    }
    expect(() => store.openReader('ok', 'nope' as 'static')).toThrow(/kind/);
    expect(store.dir('migrate-vm-1.2_a', 'pbdata')).toBe(path.join(root, 'migrate-vm-1.2_a', 'pbdata'));
  });

  it('abort and remove clean up, idempotently', async () => {
    const src = fakeMemory(10);
    const w = await store.openWriter('m5', 'static', { pageSize: PS, pageCount: 10 });
    await w.writePages(range(10), src);
    await w.abort();
    await expect(fs.stat(store.dir('m5', 'static'))).rejects.toThrow();
    await expect(w.writePages([1], src)).rejects.toThrow(/aborted/);
    await writeSnapshot('m6', 10);
    await store.remove('m6');
    await store.remove('m6');
    await store.remove('never-existed');
    await expect(fs.stat(path.join(root, 'm6'))).rejects.toThrow();
  });

  it('resumes a save: keeps committed chunks, drops temp files, continues numbering', async () => {
    const src = fakeMemory(100);
    const w1 = await store.openWriter('m7', 'static', { pageSize: PS, pageCount: 100, chunkPages: 16 });
    await w1.writePages(range(40), src); // chunks 0,1,2 (16+16+8)
    await fs.writeFile(path.join(store.dir('m7', 'static'), 'chunk-000003.bin.tmp'), 'half');
    const w2 = await store.openWriter('m7', 'static', { pageSize: PS, pageCount: 100, chunkPages: 16, resume: true });
    expect(w2.covered.count()).toBe(40);
    expect(w2.stats()).toMatchObject({ pages: 40, chunks: 3 });
    await w2.writePages(range(100).filter((p) => !w2.covered.get(p)), src);
    const m = await w2.commit();
    expect(m.pages).toBe(100);
    expect(m.chunks[3]?.name).toBe('chunk-000003.bin');
    expect(Buffer.compare(await readAll('m7', 'static', 100), src.mem)).toBe(0);
    expect((await fs.readdir(store.dir('m7', 'static'))).some((f) => f.endsWith('.tmp'))).toBe(false);
    // Resuming a committed snapshot: nothing to write, commit returns the manifest.
    const w3 = await store.openWriter('m7', 'static', { pageSize: PS, pageCount: 100, resume: true });
    expect(w3.committed).toBe(true);
    expect((await w3.commit()).chunks).toEqual(m.chunks);
    // Without resume, the directory starts afresh.
    const w4 = await store.openWriter('m7', 'static', { pageSize: PS, pageCount: 100 });
    expect(w4.stats().chunks).toBe(0);
    expect(await store.openReader('m7', 'static').committedChunks()).toEqual([]);
  });
});

describe('corruption is detected and names the file', () => {
  const chunkFile = (id: string, seq = 1): string => path.join(store.dir(id, 'static'), `chunk-00000${seq}.bin`);
  const manifestFile = (id: string): string => path.join(store.dir(id, 'static'), 'manifest.json');

  async function expectCorrupt(p: Promise<unknown>, file: string, why: RegExp): Promise<void> {
    const err = await p.then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(StorageCorruptError);
    expect((err as StorageCorruptError).file).toBe(file);
    expect((err as Error).message).toContain(file);
    expect((err as Error).message).toMatch(why);
  }

  it('truncated chunk (before and after commit)', async () => {
    await writeSnapshot('c1', 200);
    const f = chunkFile('c1');
    const st = await fs.stat(f);
    await fs.truncate(f, st.size - 100);
    await expectCorrupt(store.openReader('c1', 'static').readChunk('chunk-000001.bin'), f, /truncated/);
    await expectCorrupt(store.openReader('c1', 'static').manifest(), f, /size/);
    await fs.truncate(f, 10);
    await expectCorrupt(store.openReader('c1', 'static').readChunk('chunk-000001.bin'), f, /truncated/);
  });

  it('flipped byte in a chunk (data, pfn list, header)', async () => {
    await writeSnapshot('c2', 200);
    const f = chunkFile('c2');
    const orig = await fs.readFile(f);
    for (const at of [orig.length - 5000, 40, 0]) {
      const bad = Buffer.from(orig);
      bad[at] = (bad[at] ?? 0) ^ 0x10;
      await fs.writeFile(f, bad);
      await expectCorrupt(store.openReader('c2', 'static').readChunk('chunk-000001.bin'), f, /checksum|magic/);
    }
  });

  it('chunk listed in the manifest but missing from disk', async () => {
    await writeSnapshot('c3', 200);
    const f = chunkFile('c3', 2);
    await fs.rm(f);
    await expectCorrupt(store.openReader('c3', 'static').manifest(), f, /missing/);
    await expectCorrupt(store.openReader('c3', 'static').readChunk('chunk-000002.bin'), f, /missing/);
  });

  it('malformed manifest: not JSON, edited without fixing its checksum, wrong field types', async () => {
    await writeSnapshot('c4', 200);
    const f = manifestFile('c4');
    const good = await fs.readFile(f, 'utf8');
    await fs.writeFile(f, good.slice(0, good.length / 2));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /not JSON/);

    const obj = JSON.parse(good) as Record<string, unknown> & { chunks: Record<string, unknown>[] };
    await fs.writeFile(f, JSON.stringify({ ...obj, pages: 1 }));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /manifestCrc32/);

    // Re-sealed with a valid CRC but wrong types: still rejected, by field.
    const reseal = (o: Record<string, unknown>): string => {
      const { manifestCrc32: _drop, ...body } = o;
      return JSON.stringify({ ...body, manifestCrc32: crc32(Buffer.from(JSON.stringify(body))) });
    };
    await fs.writeFile(f, reseal({ ...obj, pageSize: '4096' }));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /pageSize/);
    await fs.writeFile(f, reseal({ ...obj, chunks: 'x' }));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /chunks/);
    await fs.writeFile(f, reseal({ ...obj, chunks: obj.chunks.map((c, i) => (i === 0 ? { ...c, crc32: -1 } : c)) }));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /chunks\[0\]\.crc32/);
    await fs.writeFile(f, reseal({ ...obj, completed: false }));
    await expectCorrupt(store.openReader('c4', 'static').manifest(), f, /completed/);

    // A manifest whose checksum for a chunk disagrees with the chunk: names the chunk.
    await fs.writeFile(f, reseal({ ...obj, chunks: obj.chunks.map((c, i) => (i === 1 ? { ...c, crc32: 12345 } : c)) }));
    const r = store.openReader('c4', 'static');
    expect(await r.manifest()).not.toBeNull();
    await expectCorrupt(r.readChunk('chunk-000001.bin'), chunkFile('c4'), /disagrees with manifest/);
  });
});

/**
 * The rate cap paces on the writer's clock; here a virtual one (ManualClock), so the pacing
 * is checked exactly whatever the machine's load. Chunks are still written to disk; only
 * the cap's time is virtual. Real-time accuracy of a cap is a benchmark's business.
 */
describe('storage rate cap', () => {
  const MiB = 1024 * 1024;
  /** Virtual milliseconds `bytes` take at `rate` bytes/s. */
  const msAt = (bytes: number, rate: number): number => (bytes / rate) * 1000;

  it('8 MiB at 32 MiB/s: every chunk waits for its own bytes, back to back, on the writer clock', async () => {
    const rate = 32 * MiB;
    const clock = new ManualClock();
    const src = fakeMemory(2048, 0);
    const w = await store.openWriter('r1', 'static', { pageSize: PS, pageCount: 2048, chunkPages: 128, rateBytesPerSec: rate, fsync: false, clock });
    let early = 0; // times more bytes were on disk than the cap had paid for
    await clock.drive(w.writePages(range(2048), src), () => {
      if (w.stats().bytesWritten > (rate * clock.now()) / 1000 + 1e-6) early++;
    });
    const st = w.stats();
    expect(st).toMatchObject({ pages: 2048, chunks: 16 });
    expect(st.bytesWritten).toBeGreaterThanOrEqual(8 * MiB);
    expect(early).toBe(0);
    const m = await w.commit();
    // The bucket starts empty: one wait per chunk, as long as that chunk's bytes at the cap,
    // each starting when the one before ended.
    expect(clock.sleeps.length).toBe(m.chunks.length);
    clock.sleeps.forEach((sl, i) => {
      expect(sl.ms).toBeCloseTo(msAt(m.chunks[i]!.bytes, rate), 6);
      expect(sl.at).toBeCloseTo(i === 0 ? 0 : clock.sleeps[i - 1]!.at + clock.sleeps[i - 1]!.ms, 6);
    });
    expect(clock.now()).toBeCloseTo(msAt(st.bytesWritten, rate), 6);
    expect(st.elapsedMs).toBeCloseTo(clock.now(), 6); // stats are on the same clock
    expect(Buffer.compare(await readAll('r1', 'static', 2048), src.mem)).toBe(0);
  });

  it('the cap can be lifted while writing: no wait after setRate(0)', async () => {
    const rate = 4 * MiB;
    const clock = new ManualClock();
    const src = fakeMemory(2048, 0);
    const w = await store.openWriter('r2', 'static', { pageSize: PS, pageCount: 2048, chunkPages: 64, rateBytesPerSec: rate, fsync: false, clock });
    let liftedAt = NaN;
    let waitsAtLift = -1;
    // Lift the cap at the first wait that starts at or after 100 ms of the writer's clock.
    await clock.drive(w.writePages(range(2048), src), () => {
      if (!Number.isNaN(liftedAt) || clock.now() < 100) return;
      liftedAt = clock.now();
      waitsAtLift = clock.sleeps.length;
      w.setRate(0);
    });
    const st = w.stats();
    expect(st).toMatchObject({ pages: 2048, chunks: 32 });
    expect(liftedAt).toBeGreaterThanOrEqual(100);
    // The wait in flight at the lift ends; no chunk after it waits.
    expect(waitsAtLift).toBeGreaterThan(0);
    expect(waitsAtLift).toBeLessThan(st.chunks);
    expect(clock.sleeps.length).toBe(waitsAtLift);
    const last = clock.sleeps[clock.sleeps.length - 1]!;
    expect(clock.now()).toBeCloseTo(last.at + last.ms, 6);
    expect(clock.now()).toBeLessThan(msAt(st.bytesWritten, rate) / 4); // the whole save at the cap: 2 s
    await w.commit();
    expect(Buffer.compare(await readAll('r2', 'static', 2048), src.mem)).toBe(0);
  });
});
