import { describe, expect, it } from 'vitest';
import { diffPage, fillPage } from '../../src/guest/core';
import { computeLayout, formatMemory, GuestMemory, readLayout, tablePfn, tableVersion, verify, writeDataPage, type Layout } from '../../src/guest';
import { isZeroPage } from '../../src/dataplane/pages';
import { deflateSync } from 'node:zlib';

const MiB = 1024 ** 2;

function flip(a: Int32Array | Uint8Array, i: number, bit = 1): void {
  a[i] = a[i]! ^ bit;
}

function booted(bytes = 4 * MiB, seed = 5): { m: GuestMemory; layout: Layout } {
  const m = GuestMemory.create(bytes);
  const layout = computeLayout(m.pageSize, m.pageCount, seed);
  formatMemory(m, layout);
  return { m, layout };
}

describe('page content', () => {
  it('fillPage/diffPage agree and are a function of (seed, pfn, version)', () => {
    const a = new Int32Array(1024);
    const b = new Int32Array(1024);
    fillPage(a, 0, 1024, 1, 77, 3);
    fillPage(b, 0, 1024, 1, 77, 3);
    expect(a).toEqual(b);
    expect(diffPage(a, 0, 1024, 1, 77, 3)).toBe(-1);
    expect(diffPage(a, 0, 1024, 1, 77, 4)).toBe(2); // other version
    expect(diffPage(a, 0, 1024, 2, 77, 3)).toBeGreaterThan(3); // other seed: content differs
    flip(a, 900);
    expect(diffPage(a, 0, 1024, 1, 77, 3)).toBe(900);
    flip(a, 900);
    flip(a, 3);
    expect(diffPage(a, 0, 1024, 1, 77, 3)).toBe(3); // checksum word
  });

  it('is not trivially compressible (about half of each page is pseudo-random)', () => {
    const w = new Int32Array(1024);
    fillPage(w, 0, 1024, 9, 1234, 1);
    const z = deflateSync(new Uint8Array(w.buffer)).length;
    expect(z).toBeGreaterThan(1900);
    expect(z).toBeLessThan(2600);
  });
});

describe('layout and verify', () => {
  it('a fresh guest verifies: superblock, empty table, zero pages', () => {
    const { m, layout } = booted();
    expect(layout).toMatchObject({ tableStart: 1, tablePages: 1, dataStart: 2, dataPages: 1022 });
    expect(readLayout(m)).toEqual(layout);
    const r = verify(m);
    expect(r).toMatchObject({ ok: true, pagesChecked: 1024, mismatches: 0 });
    expect(isZeroPage(m.page(500))).toBe(true);
  });

  it('the table spans several pages for bigger guests, and lives in RAM', () => {
    const { m, layout } = booted(64 * MiB);
    expect(layout.tablePages).toBe(16);
    const p = layout.dataStart + 5000;
    expect(writeDataPage(m, layout, p)).toBe(1);
    expect(writeDataPage(m, layout, p)).toBe(2);
    expect(tableVersion(m, layout, p)).toBe(2);
    expect(tablePfn(layout, p)).toBe(1 + Math.floor(p / 1024));
    expect([...m.collectDirty()]).toEqual([0, tablePfn(layout, p), p]);
    expect(verify(m).ok).toBe(true);
  });

  it('detects a corrupted page', () => {
    const { m, layout } = booted();
    const p = layout.dataStart + 10;
    writeDataPage(m, layout, p);
    flip(m.page(p), 3000, 0x40);
    const r = verify(m);
    expect(r.ok).toBe(false);
    expect(r.mismatches).toBe(1);
    expect(r.firstMismatches[0]).toEqual({ pfn: p, problem: 'corrupt: content differs at byte 3000' });
  });

  it('detects a page holding another page (wrong pfn)', () => {
    const { m, layout } = booted();
    const a = layout.dataStart + 1;
    const b = layout.dataStart + 2;
    writeDataPage(m, layout, a);
    writeDataPage(m, layout, b);
    m.writePage(b, m.page(a).slice());
    expect(verify(m).firstMismatches).toEqual([{ pfn: b, problem: `wrong pfn: page holds pfn ${a}` }]);
  });

  it('detects a stale page (an old version copied back) and a stale table', () => {
    const { m, layout } = booted();
    const p = layout.dataStart + 100;
    writeDataPage(m, layout, p);
    const old = m.page(p).slice();
    writeDataPage(m, layout, p);
    writeDataPage(m, layout, p);
    m.writePage(p, old);
    expect(verify(m).firstMismatches).toEqual([{ pfn: p, problem: 'stale: page version 1 < table version 3' }]);

    // The other way round: the page is current but its table page is old.
    const { m: m2, layout: l2 } = booted();
    const q = l2.dataStart + 7;
    const oldTable = m2.page(tablePfn(l2, q)).slice();
    writeDataPage(m2, l2, q);
    m2.writePage(tablePfn(l2, q), oldTable);
    expect(verify(m2).firstMismatches).toEqual([{ pfn: q, problem: 'table stale: page has version 1, table says never written' }]);

    // A page written on the source that never reached the target.
    const { m: m3, layout: l3 } = booted();
    const r = l3.dataStart + 9;
    writeDataPage(m3, l3, r);
    m3.writePage(r, new Uint8Array(4096));
    expect(verify(m3).firstMismatches).toEqual([{ pfn: r, problem: 'stale: page is zero (never written), table says version 1' }]);
  });

  it('reports missing pages and a missing or bad superblock', () => {
    const { m, layout } = booted();
    writeDataPage(m, layout, 50);
    m.markMissing([50, 60]);
    const r = verify(m);
    expect(r.mismatches).toBe(2);
    expect(r.firstMismatches.map((x) => x.pfn)).toEqual([50, 60]);
    expect(r.firstMismatches[0]!.problem).toMatch(/missing/);

    const blank = GuestMemory.create(4 * MiB);
    expect(verify(blank).firstMismatches[0]).toEqual({ pfn: 0, problem: 'no superblock (page 0 is not a ferry guest superblock)' });
    const { m: m4 } = booted();
    flip(m4.page(0), 8); // pageSize field
    expect(verify(m4).firstMismatches[0]!.problem).toMatch(/superblock word 2/);
  });

  it('counts every mismatch but reports the first few', () => {
    const { m, layout } = booted();
    for (let i = 0; i < 50; i++) {
      const p = layout.dataStart + i;
      writeDataPage(m, layout, p);
      flip(m.page(p), 100);
    }
    const r = verify(m, { maxReported: 5 });
    expect(r.mismatches).toBe(50);
    expect(r.firstMismatches).toHaveLength(5);
  });
});
