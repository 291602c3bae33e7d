import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Bitmap } from '../../src/dataplane/bitmap';
import { follow, loadPbData, mergeStatic, type MergeProgress } from '../../src/dataplane/merge';
import type { PageSink, PageSource } from '../../src/dataplane/pages';
import { SharedStore, StorageCorruptError, StorageTimeoutError } from '../../src/dataplane/store';

const PS = 4096;
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

class Memory implements PageSource, PageSink {
  readonly mem: Uint8Array;
  constructor(
    readonly pageCount: number,
    readonly pageSize = PS,
  ) {
    this.mem = new Uint8Array(pageCount * pageSize);
  }
  page(pfn: number): Uint8Array {
    return this.mem.subarray(pfn * this.pageSize, (pfn + 1) * this.pageSize);
  }
  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.page(pfn));
  }
  writePage(pfn: number, src: Uint8Array): void {
    this.mem.set(src, pfn * this.pageSize);
  }
}

function randomMemory(pageCount: number): Memory {
  const m = new Memory(pageCount);
  randomFillSync(m.mem);
  for (let p = 0; p < pageCount; p += 7) m.page(p).fill(0);
  return m;
}

let root: string;
let store: SharedStore;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-merge-'));
  store = new SharedStore(root);
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('mergeStatic', () => {
  it('merges a committed snapshot, skipping pages that have a dynamic version', async () => {
    const src = randomMemory(256);
    const w = await store.openWriter('m1', 'static', { pageSize: PS, pageCount: 256, chunkPages: 50 });
    await w.writePages(range(256), src);
    await w.commit();

    const dst = new Memory(256);
    dst.mem.fill(0xee); // zero pages must be written too
    const dyn = Bitmap.fromPfns(256, [3, 100, 255]);
    for (const p of dyn) dst.page(p).fill(0xdd);
    const marked = new Bitmap(256);
    const progress: MergeProgress[] = [];
    const r = await mergeStatic({
      reader: store.openReader('m1', 'static'),
      sink: dst,
      hasDynamic: (p) => dyn.get(p),
      markStatic: (p) => marked.set(p),
      onProgress: (p) => progress.push(p),
    });
    expect(r).toMatchObject({ pages: 253, skippedNewer: 3, bytesRead: w.stats().bytesWritten });
    expect(r.progress.chunks).toHaveLength(6);
    expect(progress.map((p) => p.chunks.length)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(marked.count()).toBe(253);
    for (let p = 0; p < 256; p++) {
      if (dyn.get(p)) expect(dst.page(p).every((b) => b === 0xdd)).toBe(true);
      else expect(Buffer.compare(dst.page(p), src.page(p))).toBe(0);
    }
  });

  it('does not write zero static pages where the target is known to hold zeros, and writes them everywhere else', async () => {
    const src = randomMemory(256); // every 7th page is zero
    const w = await store.openWriter('mz', 'static', { pageSize: PS, pageCount: 256, chunkPages: 64 });
    await w.writePages(range(256), src);
    await w.commit();

    // Pages 0..127 are known zero-filled; 128..255 hold other bytes and must be overwritten.
    const dst = new Memory(256);
    dst.mem.fill(0xee, 128 * PS);
    const writes: number[] = [];
    const sink: PageSink = { pageSize: PS, pageCount: 256, writePage: (pfn, data) => (writes.push(pfn), dst.writePage(pfn, data)) };
    const marked = new Bitmap(256);
    const r = await mergeStatic({
      reader: store.openReader('mz', 'static'),
      sink,
      hasDynamic: () => false,
      markStatic: (p) => marked.set(p),
      zeroFilled: (p) => p < 128,
    });
    const zeroLow = range(128).filter((p) => p % 7 === 0);
    expect(r.pages).toBe(256); // skipped writes still count as merged
    expect(marked.count()).toBe(256);
    expect(writes).toHaveLength(256 - zeroLow.length);
    for (const p of zeroLow) expect(writes).not.toContain(p);
    for (let p = 0; p < 256; p++) expect(Buffer.compare(dst.page(p), src.page(p))).toBe(0);
  });

  it('follows chunks while the save runs (pipelined) and ends at the commit', async () => {
    const src = randomMemory(256);
    const dst = new Memory(256);
    const reader = store.openReader('m2', 'static');
    const seenBeforeCommit: number[] = [];
    let committed = false;
    let firstProgress!: () => void;
    const progressed = new Promise<void>((resolve) => { firstProgress = resolve; });
    const merge = mergeStatic({
      reader, sink: dst, hasDynamic: () => false, pollMs: 2,
      onProgress: (p) => { if (!committed) { seenBeforeCommit.push(p.chunks.length); firstProgress(); } },
    });
    const w = await store.openWriter('m2', 'static', { pageSize: PS, pageCount: 256, chunkPages: 32 });
    // Half the save, then hold it until the merge has applied a chunk: no clock decides this.
    await w.writePages(range(128), src);
    await progressed;
    await w.writePages(range(256).slice(128), src);
    committed = true;
    await w.commit();
    const r = await merge;
    expect(r.pages).toBe(256);
    expect(seenBeforeCommit.length).toBeGreaterThan(0);
    expect(Math.max(...seenBeforeCommit)).toBeLessThanOrEqual(8);
    expect(Buffer.compare(dst.mem, src.mem)).toBe(0);
  });

  it('resumes from a progress point instead of restarting', async () => {
    const src = randomMemory(200);
    const w = await store.openWriter('m3', 'static', { pageSize: PS, pageCount: 200, chunkPages: 20 });
    await w.writePages(range(200), src);
    await w.commit();

    const dst = new Memory(200);
    const ac = new AbortController();
    let last: MergeProgress | undefined;
    const first = mergeStatic({
      reader: store.openReader('m3', 'static'), sink: dst, hasDynamic: () => false, signal: ac.signal,
      onProgress: (p) => { last = p; if (p.chunks.length === 4) ac.abort(new Error('activity cancelled')); },
    });
    await expect(first).rejects.toThrow(/cancelled/);
    expect(last?.chunks).toHaveLength(4);
    const heartbeat = JSON.parse(JSON.stringify(last)) as MergeProgress; // JSON-safe

    const reader = store.openReader('m3', 'static');
    const r = await mergeStatic({ reader, sink: dst, hasDynamic: () => false, resumeFrom: heartbeat });
    expect(r.pages).toBe(200);
    expect(r.progress.chunks).toHaveLength(10);
    expect(reader.stats().chunksRead).toBe(6);
    expect(Buffer.compare(dst.mem, src.mem)).toBe(0);
  });

  it('fails on a corrupt chunk with StorageCorruptError, and times out on a save that never commits', async () => {
    const src = randomMemory(64);
    const w = await store.openWriter('m4', 'static', { pageSize: PS, pageCount: 64, chunkPages: 16 });
    await w.writePages(range(64), src);
    const f = path.join(store.dir('m4', 'static'), 'chunk-000002.bin');
    await expect(mergeStatic({ reader: store.openReader('m4', 'static'), sink: new Memory(64), hasDynamic: () => false, pollMs: 2, timeoutMs: 50 }))
      .rejects.toBeInstanceOf(StorageTimeoutError);
    await fs.truncate(f, 100);
    await expect(mergeStatic({ reader: store.openReader('m4', 'static'), sink: new Memory(64), hasDynamic: () => false, pollMs: 2 }))
      .rejects.toThrow(StorageCorruptError);
    await expect(mergeStatic({ reader: store.openReader('m4', 'static'), sink: new Memory(64), hasDynamic: () => false }))
      .rejects.toThrow(f);
  });
});

describe('loadPbData', () => {
  it('installs only the pages still missing, waiting for the commit', async () => {
    const src = randomMemory(128);
    const dirtyAtSwitch = range(128).filter((p) => p % 3 === 0); // D: 43 pages
    const dst = new Memory(128);
    const missing = Bitmap.fromPfns(128, dirtyAtSwitch);
    // Some pages arrive over channel-2 (pushed or faulted) before the fallback.
    for (const p of dirtyAtSwitch.slice(0, 10)) {
      dst.writePage(p, src.page(p));
      missing.clear(p);
    }
    const reader = store.openReader('p1', 'pbdata');
    const load = loadPbData({
      reader, pollMs: 2, timeoutMs: 60_000,
      install: (pfn, data) => {
        if (!missing.get(pfn)) return false;
        dst.writePage(pfn, data);
        missing.clear(pfn);
        return true;
      },
    });
    const w = await store.openWriter('p1', 'pbdata', { pageSize: PS, pageCount: 128, chunkPages: 8 });
    await w.writePages(dirtyAtSwitch, src);
    // Committed chunks are installed before the commit: wait for the first (no time window).
    while (missing.count() >= 33) await new Promise((r) => setTimeout(r, 10));
    expect(missing.count()).toBeLessThan(33);
    await w.commit();
    const r = await load;
    expect(r).toMatchObject({ pages: 43, installed: 33, alreadyPresent: 10 });
    expect(r.manifest.pages).toBe(43);
    expect(missing.count()).toBe(0);
    for (const p of dirtyAtSwitch) expect(Buffer.compare(dst.page(p), src.page(p))).toBe(0);
  });

  it('times out when PbData is never committed', async () => {
    const r = loadPbData({ reader: store.openReader('p2', 'pbdata'), install: () => true, pollMs: 2, timeoutMs: 40 });
    await expect(r).rejects.toBeInstanceOf(StorageTimeoutError);
  });
});

describe('follow with reused read buffers', () => {
  /** A committed StaticData of random memory in chunks of `chunkPages`, and three 64 KiB read buffers. */
  async function committedStatic(id: string, pages: number, chunkPages: number): Promise<{ src: Memory; buffers: SharedArrayBuffer[] }> {
    const src = randomMemory(pages);
    const w = await store.openWriter(id, 'static', { pageSize: PS, pageCount: pages, chunkPages });
    await w.writePages(range(pages), src);
    await w.commit();
    return { src, buffers: [0, 1, 2].map(() => new SharedArrayBuffer(64 * 2 ** 10)) };
  }

  it('gives a chunk bigger than the buffers a buffer of its own', async () => {
    // 40 pages of 4 KiB: 160 KiB chunks, more than the 64 KiB buffers hold.
    const { src, buffers } = await committedStatic('rb', 300, 40);
    const dst = new Memory(300);
    let sharedPages = 0;
    const m = await follow(store.openReader('rb', 'static'), new Set(), { buffers }, async (chunk) => {
      for (let i = 0; i < chunk.pfns.length; i++) {
        if (buffers.some((b) => chunk.page(i).buffer === b)) sharedPages++;
        dst.writePage(chunk.pfns[i]!, chunk.page(i));
      }
    }, () => undefined);
    expect(m.chunks.length).toBe(8);
    expect(sharedPages).toBe(0);
    expect(Buffer.from(dst.mem).equals(Buffer.from(src.mem))).toBe(true);
  });

  it('uses the shared buffers when the chunks fit, and the pages read are the pages written', async () => {
    const { src, buffers } = await committedStatic('rb2', 100, 8);
    const dst = new Memory(100);
    const used = new Set<SharedArrayBuffer>();
    await follow(store.openReader('rb2', 'static'), new Set(), { buffers }, async (chunk) => {
      for (let i = 0; i < chunk.pfns.length; i++) {
        if (!chunk.isZero(i)) used.add(chunk.page(i).buffer as SharedArrayBuffer);
        dst.writePage(chunk.pfns[i]!, chunk.page(i));
      }
    }, () => undefined);
    expect(Buffer.from(dst.mem).equals(Buffer.from(src.mem))).toBe(true);
    expect([...used].every((b) => buffers.includes(b))).toBe(true);
    expect(used.size).toBe(3);
  });

  it('refuses fewer than three buffers', async () => {
    await expect(follow(store.openReader('none', 'static'), new Set(), { buffers: [new SharedArrayBuffer(8)] }, async () => undefined, () => undefined)).rejects.toThrow(/at least 3 read buffers/);
  });
});
