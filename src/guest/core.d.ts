// Types for core.js (plain JS so that vCPU worker threads can load it without a TS loader).

export declare const PAGE_MAGIC: number;
export declare const SB_MAGIC: number;
export declare const HDR_WORDS: number;

export declare function mix32(h: number): number;
export declare function contentSeed(seed: number, pfn: number, version: number): number;
/** Write page (seed, pfn, version) into words[base .. base+n), n = pageSize/4. Returns the checksum. */
export declare function fillPage(words: Int32Array, base: number, n: number, seed: number, pfn: number, version: number): number;
/** -1 when words[base .. base+n) is exactly page (seed, pfn, version), else the first differing word index. */
export declare function diffPage(words: Int32Array, base: number, n: number, seed: number, pfn: number, version: number): number;
export declare function contentChecksum(words: Int32Array, base: number, n: number, pfn: number, version: number): number;

export declare class Prng {
  constructor(state: ArrayLike<number>);
  static fromSeed(seed: number, stream: number): Prng;
  next(): number;
  float(): number;
  state(): [number, number, number, number];
}
