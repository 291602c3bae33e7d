import { describe, expect, it } from 'vitest';
import { countNonZeroPages } from '../../src/dataplane/pages';
import { STATIC_WORTH_MS, staticDataDecision, staticWorthBytes } from '../../src/policy';

const MiB = 2 ** 20;
const PAGE = 4096;

describe('staticDataDecision: is par-migrate\'s StaticData worth starting?', () => {
  const base = { pageCount: 65536, pageSize: PAGE, bandwidthBytesPerSec: 32 * MiB, zeroElision: true };
  // 32 MiB/s: 100 ms is 819.2 pages.
  it.each([
    { case: 'idle guest (a handful of non-zero pages)', nonZeroPages: 12, save: false },
    { case: 'just under a round worth sending', nonZeroPages: 819, save: false },
    { case: 'just over it', nonZeroPages: 820, save: true },
    { case: 'a busy guest (the count stopped at the limit)', nonZeroPages: 820, save: true },
    { case: 'a full guest', nonZeroPages: 65536, save: true },
  ])('$case: $nonZeroPages non-zero pages → save $save', ({ nonZeroPages, save }) => {
    expect(staticDataDecision({ ...base, nonZeroPages }).save).toBe(save);
  });

  it('without zero elision every page crosses the link whole: a zero guest is worth it', () => {
    expect(staticDataDecision({ ...base, nonZeroPages: 0, zeroElision: false }).save).toBe(true);
    expect(staticDataDecision({ ...base, pageCount: 512, nonZeroPages: 0, zeroElision: false }).save).toBe(false);
  });

  it('an uncapped or unknown link is not second-guessed: StaticData as the strategy asks', () => {
    expect(staticWorthBytes(0)).toBe(0);
    expect(staticDataDecision({ ...base, nonZeroPages: 0, bandwidthBytesPerSec: 0 }).save).toBe(true);
  });

  it('the reason names the pages, the time at the link rate and the bound', () => {
    const d = staticDataDecision({ ...base, nonZeroPages: 256 });
    expect(d).toEqual({ save: false, reason: `StaticData not started: the bulk pass holds 256 non-zero page(s) of 65536, 31 ms at 32.00 MiB/s < ${STATIC_WORTH_MS} ms; it goes over channel-2` });
  });

  it('the count limit is the bytes the link moves in STATIC_WORTH_MS', () => {
    expect(staticWorthBytes(32 * MiB)).toBe(Math.ceil((STATIC_WORTH_MS / 1000) * 32 * MiB));
    expect(staticWorthBytes(1000)).toBe(100);
  });
});

describe('countNonZeroPages', () => {
  function memory(pages: number, nonZero: number[]): { pageCount: number; page(pfn: number): Uint8Array } {
    const mem = new Uint8Array(pages * PAGE);
    for (const p of nonZero) mem[p * PAGE + (p % PAGE)] = 1; // one byte anywhere in the page
    return { pageCount: pages, page: (pfn) => mem.subarray(pfn * PAGE, (pfn + 1) * PAGE) };
  }

  it('counts pages with any non-zero byte', () => {
    expect(countNonZeroPages(memory(64, [0, 7, 8, 63]), 100)).toBe(4);
    expect(countNonZeroPages(memory(64, []), 100)).toBe(0);
  });

  it('stops once the limit is reached, reading no further', () => {
    const m = memory(64, [1, 2, 3, 40, 41]);
    const read: number[] = [];
    const counted = countNonZeroPages({ pageCount: m.pageCount, page: (pfn) => (read.push(pfn), m.page(pfn)) }, 3);
    expect(counted).toBe(3);
    expect(Math.max(...read)).toBe(3);
  });
});
