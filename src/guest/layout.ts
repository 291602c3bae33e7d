/**
 * Self-verifying layout of the emulated guest's RAM. Everything verify() needs is in guest
 * RAM itself, and is migrated like any other page:
 *
 *   pfn 0                     superblock: magic, format, pageSize, pageCount, table and data
 *                             placement, the content seed, a checksum
 *   pfn 1 .. 1+tablePages-1   version table: one u32 per page of RAM (entries of the
 *                             superblock and table pages themselves stay 0)
 *   pfn dataStart ..          data pages: header (magic, pfn, version, checksum) and content
 *                             generated from (seed, pfn, version); see core.js
 *
 * A guest write to data page p (writeDataPage below, and the same steps in
 * vcpu-worker.mjs):
 *   1. v = table[p] + 1 (only p's owner vCPU writes p and table[p], so no race)
 *   2. write the whole page for version v
 *   3. table[p] = v
 *   4. set the dirty bits of p and of the table page holding table[p]
 * At a safe point (no write in flight), every data page's version equals its table entry.
 * A migration that lost a write leaves a page older than its table entry ("stale"), or a
 * table page older than a page ("table stale"). Version 0 means never written: such a page
 * must be all zero. Versions are u32 and wrap after 2^32 writes to one page (skipping 0).
 */
import { UsageError } from '../common/errors';
import { isZeroPage } from '../dataplane/pages';
import { diffPage, fillPage, mix32, PAGE_MAGIC, SB_MAGIC } from './core';
import type { GuestMemory } from './memory';

export const LAYOUT_FORMAT = 1;
const SB_WORDS = 9;

export interface Layout {
  pageSize: number;
  pageCount: number;
  /** u32 content seed (page content is a function of seed, pfn, version). */
  seed: number;
  tableStart: number;
  tablePages: number;
  dataStart: number;
  dataPages: number;
}

export function computeLayout(pageSize: number, pageCount: number, seed: number): Layout {
  const tablePages = Math.ceil((pageCount * 4) / pageSize);
  const dataStart = 1 + tablePages;
  const dataPages = pageCount - dataStart;
  if (dataPages < 1) {
    throw new UsageError(`memory of ${pageCount} pages is too small: the guest needs ${dataStart + 1} pages at least`);
  }
  return { pageSize, pageCount, seed: seed >>> 0, tableStart: 1, tablePages, dataStart, dataPages };
}

/** The table page holding table[pfn]. */
export function tablePfn(layout: Layout, pfn: number): number {
  return layout.tableStart + Math.floor(pfn / (layout.pageSize >>> 2));
}

function tableSlot(memory: GuestMemory, layout: Layout, pfn: number): { words: Int32Array; index: number } {
  const { words, base } = memory.pageWords(tablePfn(layout, pfn));
  return { words, index: base + (pfn % (layout.pageSize >>> 2)) };
}

/** Version of `pfn` recorded in the in-guest table (0 = never written). */
export function tableVersion(memory: GuestMemory, layout: Layout, pfn: number): number {
  const { words, index } = tableSlot(memory, layout, pfn);
  return words[index]! >>> 0;
}

function superblockWords(layout: Layout): number[] {
  const w = [SB_MAGIC, LAYOUT_FORMAT, layout.pageSize, layout.pageCount, layout.tableStart, layout.tablePages, layout.dataStart, layout.seed | 0];
  let h = 0x2545f491;
  for (const x of w) h = mix32(h ^ x);
  w.push(h);
  return w;
}

/** "Boot": write the superblock (a guest write: the page is marked dirty). */
export function formatMemory(memory: GuestMemory, layout: Layout): void {
  if (memory.pageSize !== layout.pageSize || memory.pageCount !== layout.pageCount) {
    throw new Error('layout does not match memory geometry');
  }
  const { words, base } = memory.pageWords(0);
  superblockWords(layout).forEach((x, i) => (words[base + i] = x));
  memory.markDirty(0);
}

/** Read the layout from the superblock; a string says what is wrong with it. */
export function readLayout(memory: GuestMemory): Layout | string {
  const { words, base } = memory.pageWords(0);
  if (words[base] !== SB_MAGIC) return 'no superblock (page 0 is not a ferry guest superblock)';
  const seed = words[base + 7]! >>> 0;
  let layout: Layout;
  try {
    layout = computeLayout(memory.pageSize, memory.pageCount, seed);
  } catch (e) {
    return `superblock: ${(e as Error).message}`;
  }
  const want = superblockWords(layout);
  for (let i = 0; i < SB_WORDS; i++) {
    if (words[base + i] !== want[i]) return `superblock word ${i} is ${words[base + i]}, expected ${want[i]} (geometry or checksum mismatch)`;
  }
  return layout;
}

/**
 * The guest write protocol, from the calling thread (tests, tools). vCPU workers run the
 * same steps in vcpu-worker.mjs. Throws if the page or its table page is missing.
 * Returns the new version.
 */
export function writeDataPage(memory: GuestMemory, layout: Layout, pfn: number): number {
  if (pfn < layout.dataStart || pfn >= layout.pageCount) throw new RangeError(`pfn ${pfn} is not a data page`);
  const tp = tablePfn(layout, pfn);
  if (!memory.isPresent(pfn) || !memory.isPresent(tp)) throw new Error(`page ${pfn} or its table page ${tp} is missing`);
  const slot = tableSlot(memory, layout, pfn);
  const v = ((slot.words[slot.index]! + 1) | 0) || 1;
  const { words, base } = memory.pageWords(pfn);
  fillPage(words, base, layout.pageSize >>> 2, layout.seed, pfn, v);
  slot.words[slot.index] = v;
  memory.markDirty(pfn);
  memory.markDirty(tp);
  return v >>> 0;
}

export interface Mismatch {
  pfn: number;
  problem: string;
}

export interface VerifyReport {
  ok: boolean;
  pagesChecked: number;
  mismatches: number;
  firstMismatches: Mismatch[];
  method: string;
}

export const VERIFY_METHOD = 'in-guest version table + per-page header and content regenerated from (seed, pfn, version)';

/**
 * Check every page of RAM. Run at a safe point (guest paused or stopped): a write in
 * flight would look like a mismatch. Missing pages (post-copy, not yet installed) are
 * mismatches too.
 */
export function verify(memory: GuestMemory, opts: { maxReported?: number } = {}): VerifyReport {
  const maxReported = opts.maxReported ?? 20;
  const found: Mismatch[] = [];
  let mismatches = 0;
  const bad = (pfn: number, problem: string): void => {
    mismatches++;
    if (found.length < maxReported) found.push({ pfn, problem });
  };
  const report = (): VerifyReport => ({ ok: mismatches === 0, pagesChecked: memory.pageCount, mismatches, firstMismatches: found, method: VERIFY_METHOD });

  if (!memory.isPresent(0)) {
    bad(0, 'missing (superblock not installed yet)');
    return report();
  }
  const layout = readLayout(memory);
  if (typeof layout === 'string') {
    bad(0, layout);
    return report();
  }
  const n = layout.pageSize >>> 2;
  const tableOk = new Uint8Array(layout.tablePages);
  for (let t = 0; t < layout.tablePages; t++) {
    const pfn = layout.tableStart + t;
    if (!memory.isPresent(pfn)) {
      bad(pfn, 'missing (version table page not installed yet)');
      continue;
    }
    tableOk[t] = 1;
  }
  // Table entries of the reserved pages and past the end of RAM must be 0.
  const zeroEntry = (pfn: number): void => {
    if (tableOk[Math.floor(pfn / n)] && tableVersion(memory, layout, pfn) !== 0) {
      bad(tablePfn(layout, pfn), `version table entry of non-data page ${pfn} is nonzero`);
    }
  };
  for (let pfn = 0; pfn < layout.dataStart; pfn++) zeroEntry(pfn);
  for (let pfn = layout.pageCount; pfn < layout.tablePages * n; pfn++) zeroEntry(pfn);

  for (let pfn = layout.dataStart; pfn < layout.pageCount; pfn++) {
    if (!memory.isPresent(pfn)) {
      bad(pfn, 'missing (not installed yet)');
      continue;
    }
    if (!tableOk[Math.floor(pfn / n)]) continue; // already reported through its table page
    const tv = tableVersion(memory, layout, pfn);
    const { words, base } = memory.pageWords(pfn);
    const magic = words[base];
    const hp = words[base + 1]!;
    const hv = words[base + 2]! >>> 0;
    if (tv === 0) {
      if (!isZero(words, base, n)) {
        bad(pfn, magic === PAGE_MAGIC && hp === pfn ? `table stale: page has version ${hv}, table says never written` : 'corrupt: never-written page is not zero');
      }
      continue;
    }
    if (magic !== PAGE_MAGIC) {
      bad(pfn, isZero(words, base, n) ? `stale: page is zero (never written), table says version ${tv}` : 'corrupt: bad page header');
      continue;
    }
    if (hp !== pfn) {
      bad(pfn, `wrong pfn: page holds pfn ${hp >>> 0}`);
      continue;
    }
    if (hv < tv) {
      bad(pfn, `stale: page version ${hv} < table version ${tv}`);
      continue;
    }
    if (hv > tv) {
      bad(pfn, `table stale: page version ${hv} > table version ${tv}`);
      continue;
    }
    const at = diffPage(words, base, n, layout.seed, pfn, tv);
    if (at !== -1) bad(pfn, at === 3 ? 'corrupt: checksum mismatch' : `corrupt: content differs at byte ${at * 4}`);
  }
  return report();
}

function isZero(words: Int32Array, base: number, n: number): boolean {
  return isZeroPage(new Uint8Array(words.buffer, base * 4, n * 4));
}

