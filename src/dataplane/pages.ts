/**
 * The seam between the data plane and guest memory. Channel-2 and shared storage move
 * pages between a PageSource on the source host and a PageSink on the target host; they
 * never see guest internals.
 */
export const DEFAULT_PAGE_SIZE = 4096;

export interface PageSource {
  readonly pageSize: number;
  readonly pageCount: number;
  /** Copy page `pfn` into `dst` (dst.length === pageSize). */
  readPage(pfn: number, dst: Uint8Array): void;
}

export interface PageSink {
  readonly pageSize: number;
  readonly pageCount: number;
  /** Write `src` (pageSize bytes) as page `pfn`. Must be synchronous: one page, one step. */
  writePage(pfn: number, src: Uint8Array): void;
}

/** True when every byte of the page is zero (zero-page elision). */
export function isZeroPage(page: Uint8Array): boolean {
  const words = new BigUint64Array(page.buffer, page.byteOffset, page.byteLength >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  return true;
}
