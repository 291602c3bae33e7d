/**
 * Guest memory at rest: every directory the snapshot writer creates is 0700 and every file
 * it writes (chunks, manifest) is 0600, whatever the process umask.
 */
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PageSource } from '../../src/dataplane/pages';
import { SharedStore } from '../../src/dataplane/store';

const PS = 4096;

function memory(pageCount: number): PageSource {
  const mem = new Uint8Array(pageCount * PS);
  randomFillSync(mem);
  return { pageSize: PS, pageCount, readPage: (pfn, dst) => dst.set(mem.subarray(pfn * PS, (pfn + 1) * PS)) };
}

/** Every entry under `dir` (itself excluded) with its permission bits. */
async function modes(dir: string): Promise<Map<string, { dir: boolean; mode: number }>> {
  const out = new Map<string, { dir: boolean; mode: number }>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = await fs.lstat(p);
      out.set(path.relative(dir, p), { dir: st.isDirectory(), mode: st.mode & 0o777 });
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out;
}

const octal = (m: number): string => `0${m.toString(8)}`;

let tmp: string;
let savedUmask: number;
beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-store-modes-'));
  savedUmask = process.umask();
});
afterEach(async () => {
  process.umask(savedUmask);
  await fs.rm(tmp, { recursive: true, force: true });
});

async function writeBoth(store: SharedStore, id: string, pages: number): Promise<void> {
  const src = memory(pages);
  for (const kind of ['static', 'pbdata'] as const) {
    const w = await store.openWriter(id, kind, { pageSize: PS, pageCount: pages, chunkPages: 16, fsync: false });
    await w.writePages(Array.from({ length: pages }, (_, i) => i), src);
    await w.commit();
  }
}

describe('snapshot files and directories are private to the agents\' user', () => {
  it.each([0o022, 0o002, 0o000, 0o077, 0o277])('umask %o: directories 0700, chunks and manifests 0600', async (umask) => {
    process.umask(umask);
    const root = path.join(tmp, 'storage'); // created by the writer
    await writeBoth(new SharedStore(root), 'mig-1', 50);
    const rootMode = (await fs.stat(root)).mode & 0o777;
    expect(octal(rootMode)).toBe('0700');
    const entries = await modes(root);
    // mig-1, mig-1/static, mig-1/pbdata, and 4 chunks + a manifest in each snapshot.
    expect([...entries.values()].filter((e) => e.dir)).toHaveLength(3);
    expect([...entries.values()].filter((e) => !e.dir)).toHaveLength(10);
    expect([...entries.keys()]).toContain(path.join('mig-1', 'static', 'manifest.json'));
    for (const [name, e] of entries) expect(`${name} ${octal(e.mode)}`).toBe(`${name} ${e.dir ? '0700' : '0600'}`);
  });

  it('tightens a migration directory and chunk files left open by an earlier attempt (resume)', async () => {
    process.umask(0o022);
    const store = new SharedStore(tmp);
    const src = memory(40);
    const first = await store.openWriter('mig-2', 'static', { pageSize: PS, pageCount: 40, chunkPages: 16, fsync: false });
    await first.writePages(Array.from({ length: 32 }, (_, i) => i), src); // two chunks, no manifest
    // As an agent that predates private modes would have left them.
    await fs.chmod(path.join(tmp, 'mig-2'), 0o755);
    await fs.chmod(store.dir('mig-2', 'static'), 0o755);
    for (const f of await fs.readdir(store.dir('mig-2', 'static'))) await fs.chmod(path.join(store.dir('mig-2', 'static'), f), 0o644);
    const again = await store.openWriter('mig-2', 'static', { pageSize: PS, pageCount: 40, chunkPages: 16, fsync: false, resume: true });
    expect(again.covered.count()).toBe(32);
    await again.writePages(Array.from({ length: 8 }, (_, i) => 32 + i), src);
    await again.commit();
    const entries = await modes(tmp);
    expect([...entries.values()].filter((e) => !e.dir)).toHaveLength(4); // 3 chunks + manifest
    for (const [name, e] of entries) expect(`${name} ${octal(e.mode)}`).toBe(`${name} ${e.dir ? '0700' : '0600'}`);
  });
});
