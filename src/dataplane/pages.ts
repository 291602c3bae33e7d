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

/**
 * True when every byte of the page is zero (zero-page elision). Works at any byteOffset
 * (pages are often views into a frame buffer at unaligned offsets): a native memcmp
 * against a shared zero buffer, after a cheap check of the first and last bytes.
 */
export function isZeroPage(page: Uint8Array): boolean {
  const n = page.byteLength;
  if (n === 0) return true;
  if (page[0] !== 0 || page[n - 1] !== 0) return false;
  if (ZEROS.length < n) ZEROS = Buffer.alloc(Math.max(n, ZEROS.length * 2));
  const view = Buffer.from(page.buffer, page.byteOffset, n);
  return view.equals(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n));
}

let ZEROS = Buffer.alloc(64 * 1024);

/**
 * The non-zero pages of a memory, counted from the first page until `upTo` of them were found
 * (the answer is then `upTo`: "at least"). Reads page views in place, copies nothing.
 */
export function countNonZeroPages(memory: { readonly pageCount: number; page(pfn: number): Uint8Array }, upTo: number): number {
  let n = 0;
  for (let pfn = 0; pfn < memory.pageCount && n < upTo; pfn++) if (!isZeroPage(memory.page(pfn))) n++;
  return n;
}
