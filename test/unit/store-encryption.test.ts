/**
 * Encryption at rest of StaticData and PbData chunks (store-format.ts): sealed with the
 * cluster key, opened after a rotation with the previous key, and a chunk that fails its tag
 * (tampered, moved, or sealed with a key this host does not hold) is never merged.
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeClusterKey, makeClusterKeys } from '../../src/common/cluster-key';
import { UsageError } from '../../src/common/errors';
import { Bitmap } from '../../src/dataplane/bitmap';
import { loadPbData, mergeStatic } from '../../src/dataplane/merge';
import type { PageSink, PageSource } from '../../src/dataplane/pages';
import { crc32, isSealed, SharedStore, StorageCorruptError, storeSettingsFromEnv } from '../../src/dataplane/store';

const PS = 4096;
const PAGES = 96;
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

function memory(fill = true): PageSource & PageSink & { mem: Uint8Array } {
  const mem = new Uint8Array(PAGES * PS);
  if (fill) {
    randomFillSync(mem);
    mem.fill(0, 5 * PS, 6 * PS);
  }
  return {
    mem,
    pageSize: PS,
    pageCount: PAGES,
    readPage: (pfn, dst) => dst.set(mem.subarray(pfn * PS, (pfn + 1) * PS)),
    writePage: (pfn, src) => mem.set(src, pfn * PS),
  };
}

const keyA = makeClusterKey(randomBytes(32));
const keyB = makeClusterKey(randomBytes(32));
const settings = (encrypt: boolean, current: typeof keyA, previous: typeof keyA | null = null) => ({ stallMs: 5000, encrypt, keys: makeClusterKeys(current, previous) });

let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-seal-'));
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function save(store: SharedStore, id: string, src: PageSource, kind: 'static' | 'pbdata' = 'static'): Promise<void> {
  const w = await store.openWriter(id, kind, { pageSize: PS, pageCount: PAGES, chunkPages: 32, fsync: false });
  await w.writePages(range(PAGES), src);
  await w.commit();
}

async function chunkFiles(store: SharedStore, id: string, kind: 'static' | 'pbdata' = 'static'): Promise<string[]> {
  const dir = store.dir(id, kind);
  return (await fs.readdir(dir)).filter((f) => f.startsWith('chunk-')).map((f) => path.join(dir, f));
}

describe('storage encryption', () => {
  it('seals every chunk: no page of guest memory on disk in clear; merged back byte for byte; the manifest names the key', async () => {
    const store = new SharedStore(root, settings(true, keyA));
    const src = memory();
    await save(store, 'm1', src);
    const files = await chunkFiles(store, 'm1');
    expect(files).toHaveLength(3);
    for (const f of files) {
      const raw = await fs.readFile(f);
      expect(isSealed(raw)).toBe(true);
      for (let p = 0; p < PAGES; p += 11) expect(raw.indexOf(Buffer.from(src.mem.subarray(p * PS, p * PS + 64)))).toBe(-1);
    }
    const manifest = JSON.parse(await fs.readFile(path.join(store.dir('m1', 'static'), 'manifest.json'), 'utf8')) as { encryption?: unknown };
    expect(manifest.encryption).toEqual({ algorithm: 'aes-256-gcm', keyId: keyA.id });
    const dst = memory(false);
    const r = await mergeStatic({ reader: store.openReader('m1', 'static'), sink: dst, hasDynamic: () => false });
    expect(r.pages).toBe(PAGES);
    expect(Buffer.compare(dst.mem, src.mem)).toBe(0);
  });

  it('PbData too; after a rotation the previous key still opens what the old one sealed', async () => {
    const src = memory();
    await save(new SharedStore(root, settings(true, keyA)), 'm2', src, 'pbdata');
    const rotated = new SharedStore(root, settings(true, keyB, keyA));
    const dst = memory(false);
    const missing = Bitmap.full(PAGES);
    const r = await loadPbData({
      reader: rotated.openReader('m2', 'pbdata'),
      timeoutMs: 2000,
      install: (pfn, data) => {
        if (!missing.get(pfn)) return false;
        dst.writePage(pfn, data);
        missing.clear(pfn);
        return true;
      },
    });
    expect(r.installed).toBe(PAGES);
    expect(Buffer.compare(dst.mem, src.mem)).toBe(0);
  });

  it('a host without the key cannot open a chunk: StorageCorruptError naming the key id, nothing merged', async () => {
    await save(new SharedStore(root, settings(true, keyA)), 'm3', memory());
    const other = new SharedStore(root, settings(false, keyB));
    const dst = memory(false);
    const written: number[] = [];
    const merge = mergeStatic({ reader: other.openReader('m3', 'static'), sink: { ...dst, writePage: (pfn) => written.push(pfn) }, hasDynamic: () => false });
    await expect(merge).rejects.toThrow(StorageCorruptError);
    await expect(mergeStatic({ reader: other.openReader('m3', 'static'), sink: dst, hasDynamic: () => false })).rejects.toThrow(new RegExp(`cluster key ${keyA.id}, which this host does not hold`));
    expect(written).toEqual([]);
  });

  it('a tampered chunk (CRC made to match) fails its tag like a CRC failure: never merged', async () => {
    const store = new SharedStore(root, settings(true, keyA));
    await save(store, 'm4', memory());
    const [first] = await chunkFiles(store, 'm4');
    const raw = await fs.readFile(first!);
    raw[100] = (raw[100] ?? 0) ^ 0x01;
    raw.writeUInt32LE(crc32(raw.subarray(0, raw.length - 4)), raw.length - 4);
    await fs.writeFile(first!, raw);
    const reader = new SharedStore(root, settings(true, keyA)).openReader('m4', 'static');
    await expect(reader.readChunk(path.basename(first!))).rejects.toThrow(/authentication tag mismatch/);
  });

  it('a sealed chunk moved into another migration fails its tag (bound to migration and kind)', async () => {
    const store = new SharedStore(root, settings(true, keyA));
    await save(store, 'm5', memory());
    await save(store, 'm6', memory());
    const [a] = await chunkFiles(store, 'm5');
    const target = path.join(store.dir('m6', 'static'), path.basename(a!));
    await fs.copyFile(a!, target);
    await expect(store.openReader('m6', 'static').readChunk(path.basename(a!))).rejects.toThrow(/authentication tag mismatch/);
  });

  it('plain chunks still read with encryption on (a snapshot from before it was turned on)', async () => {
    const src = memory();
    await save(new SharedStore(root, settings(false, keyA)), 'm7', src);
    const dst = memory(false);
    await mergeStatic({ reader: new SharedStore(root, settings(true, keyA)).openReader('m7', 'static'), sink: dst, hasDynamic: () => false });
    expect(Buffer.compare(dst.mem, src.mem)).toBe(0);
  });

  it('FERRY_STORAGE_ENCRYPTION=1 needs a cluster key; bad values are refused', () => {
    expect(() => storeSettingsFromEnv({ FERRY_STORAGE_ENCRYPTION: '1' })).toThrow(UsageError);
    expect(() => storeSettingsFromEnv({ FERRY_STORAGE_ENCRYPTION: '1' })).toThrow(/FERRY_STORAGE_ENCRYPTION needs a cluster key/);
    expect(() => storeSettingsFromEnv({ FERRY_STORAGE_ENCRYPTION: 'yes' })).toThrow(/is not 1 or 0/);
    expect(() => storeSettingsFromEnv({ FERRY_STORAGE_STALL_MS: 'soon' })).toThrow(/FERRY_STORAGE_STALL_MS/);
    const s = storeSettingsFromEnv({ FERRY_STORAGE_ENCRYPTION: '1', FERRY_CLUSTER_KEY: keyA.key.toString('hex'), FERRY_STORAGE_STALL_MS: '1500' });
    expect(s).toMatchObject({ encrypt: true, stallMs: 1500 });
    expect(s.keys?.current.id).toBe(keyA.id);
    expect(storeSettingsFromEnv({})).toMatchObject({ encrypt: false, stallMs: 5000, keys: null });
  });
});
