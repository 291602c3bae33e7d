// Plain-JS core of the emulated guest, shared by the vCPU worker threads (vcpu-worker.mjs,
// which runs in plain Node with no TypeScript loader) and the TypeScript side (layout.ts
// verifies pages with the very same generator). Types: core.d.ts.
//
// Data page format (32-bit words, host byte order):
//   w0 PAGE_MAGIC   w1 pfn   w2 version   w3 checksum   w4.. content
// Content is a pure function of (seed, pfn, version):
//   - first half: xorshift32 stream seeded from hash(seed, pfn, version): incompressible,
//     so a compressing codec cannot make migrations look artificially cheap;
//   - second half: a repeating 16-word record (low entropy, compresses ~20:1), so a page
//     compresses to roughly half, which is about what real guest memory does.
// The checksum (FNV-style over content words, seeded with pfn and version) lets a page be
// checked as intact without knowing the seed; the generator lets it be checked as *the*
// page it claims to be. Filling a 4 KiB page costs ~1-2 µs.

export const PAGE_MAGIC = 0x31595246; // 'FRY1'
export const SB_MAGIC = 0x53595246; // 'FRYS'
export const HDR_WORDS = 4;

/** 32-bit avalanche mix (murmur3 finaliser). Returns an int32. */
export function mix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** Non-zero xorshift seed for the content of (seed, pfn, version). */
export function contentSeed(seed, pfn, version) {
  const h = mix32(mix32(mix32(seed ^ 0x9e3779b9) ^ pfn) ^ Math.imul(version, 0x27d4eb2f));
  return h === 0 ? 0x6d2b79f5 : h;
}

function checksumSeed(pfn, version) {
  return (0x811c9dc5 ^ Math.imul(pfn, 0x01000193) ^ mix32(version)) | 0;
}

/**
 * Write the page (seed, pfn, version) into words[base .. base+n). n = pageSize/4.
 * Returns the checksum (also stored in word 3).
 */
export function fillPage(words, base, n, seed, pfn, version) {
  version |= 0;
  let x = contentSeed(seed, pfn, version);
  let h = checksumSeed(pfn, version);
  const half = HDR_WORDS + ((n - HDR_WORDS) >> 1);
  let i = base + HDR_WORDS;
  const mid = base + half;
  const end = base + n;
  for (; i < mid; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
    h = Math.imul(h ^ x, 0x01000193);
  }
  const tag = (version << 16) ^ (pfn & 0xffff);
  for (; i < end; i++) {
    const y = tag ^ ((i - base) & 15);
    words[i] = y;
    h = Math.imul(h ^ y, 0x01000193);
  }
  words[base] = PAGE_MAGIC;
  words[base + 1] = pfn;
  words[base + 2] = version;
  words[base + 3] = h;
  return h >>> 0;
}

/**
 * Compare words[base .. base+n) with what fillPage(seed, pfn, version) writes.
 * Returns -1 when equal, else the index (within the page) of the first differing word
 * (3 = the checksum word, when only the stored checksum is wrong).
 */
export function diffPage(words, base, n, seed, pfn, version) {
  version |= 0;
  if (words[base] !== PAGE_MAGIC) return 0;
  if (words[base + 1] !== pfn) return 1;
  if (words[base + 2] !== version) return 2;
  let x = contentSeed(seed, pfn, version);
  let h = checksumSeed(pfn, version);
  const half = HDR_WORDS + ((n - HDR_WORDS) >> 1);
  let i = HDR_WORDS;
  for (; i < half; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    if (words[base + i] !== x) return i;
    h = Math.imul(h ^ x, 0x01000193);
  }
  const tag = (version << 16) ^ (pfn & 0xffff);
  for (; i < n; i++) {
    const y = tag ^ (i & 15);
    if (words[base + i] !== y) return i;
    h = Math.imul(h ^ y, 0x01000193);
  }
  return words[base + 3] === h ? -1 : 3;
}

/** Checksum of the content words actually stored (seed not needed). Returns a uint32. */
export function contentChecksum(words, base, n, pfn, version) {
  let h = checksumSeed(pfn, version);
  for (let i = base + HDR_WORDS, end = base + n; i < end; i++) h = Math.imul(h ^ words[i], 0x01000193);
  return h >>> 0;
}

/**
 * xoshiro128** PRNG, state = 4 int32 in an Int32Array (so it can be saved and restored
 * exactly). next() returns a uint32.
 */
export class Prng {
  constructor(state) {
    this.s = Int32Array.from(state);
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  static fromSeed(seed, stream) {
    let h = mix32((seed | 0) ^ 0x5bd1e995) ^ Math.imul(stream + 1, 0x9e3779b9);
    const s = [];
    for (let k = 0; k < 4; k++) {
      h = mix32(h + 0x6d2b79f5);
      s.push(h);
    }
    return new Prng(s);
  }

  next() {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9);
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r >>> 0;
  }

  /** Uniform float in [0, 1). */
  float() {
    return this.next() / 4294967296;
  }

  state() {
    return [this.s[0], this.s[1], this.s[2], this.s[3]];
  }
}

function rotl(x, k) {
  return (x << k) | (x >>> (32 - k));
}
