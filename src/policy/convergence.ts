/**
 * Convergence arithmetic of MECHANISM.md: bandwidth B(i) = pages(i)/T(i) and the convergence
 * factor λ(i) = pages(i+1)/pages(i), with λ(1) = 1. Sampled at iteration boundaries only.
 */
import type { IterationStat } from './types';

export function lambdaOf(it: IterationStat): number {
  if (it.index === 1) return 1;
  if (it.pages === 0) return it.dirtyAfter === 0 ? 0 : Infinity;
  return it.dirtyAfter / it.pages;
}

export function lambdas(iterations: readonly IterationStat[]): number[] {
  return iterations.map(lambdaOf);
}

/**
 * Measured bandwidth of the migration network in wire bytes/s: the last iteration that moved
 * enough to measure (a few pages in a few milliseconds say nothing; a pass whose pages went to
 * StaticData measures the storage path, not this one), else the configured cap.
 */
export function measuredBandwidth(iterations: readonly IterationStat[], fallbackBytesPerSec: number): number {
  for (let i = iterations.length - 1; i >= 0; i--) {
    const it = iterations[i]!;
    if (!it.offLink && it.bytes >= 256 * 1024 && it.durationMs >= 5) return (it.bytes * 1000) / it.durationMs;
  }
  return fallbackBytesPerSec;
}

/**
 * Wire bytes one dirty page costs: as measured in the last dynamic round (after zero-page
 * elision and compression), else a whole page. The bulk round is no guide: it carries the
 * zero pages that dirty rounds never do.
 */
export function bytesPerDirtyPage(iterations: readonly IterationStat[], pageSize: number): number {
  for (let i = iterations.length - 1; i >= 0; i--) {
    const it = iterations[i]!;
    if (it.index >= 2 && it.pages >= 64) return Math.max(16, it.bytes / it.pages);
  }
  return pageSize;
}

/** Milliseconds to send `pages` dirty pages now, and the wire rate it assumes. */
export function estimateSendMs(iterations: readonly IterationStat[], pages: number, pageSize: number, fallbackBytesPerSec: number): { ms: number; bytesPerSec: number } {
  const bytesPerSec = measuredBandwidth(iterations, fallbackBytesPerSec);
  const bytes = pages * bytesPerDirtyPage(iterations, pageSize);
  return { ms: bytesPerSec > 0 && Number.isFinite(bytesPerSec) ? (bytes * 1000) / bytesPerSec : 0, bytesPerSec };
}

/** Time to send `pages` at `bytesPerSec`, in ms. */
export function transferMs(pages: number, pageSize: number, bytesPerSec: number): number {
  if (!(bytesPerSec > 0) || !Number.isFinite(bytesPerSec)) return 0;
  return (pages * pageSize * 1000) / bytesPerSec;
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return '∞';
  return n.toFixed(2);
}
