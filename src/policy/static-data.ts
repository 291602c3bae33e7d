/**
 * Whether par-migrate's channel-1 (StaticData: the bulk pass to shared storage, merged at the
 * target) is worth starting for this guest. Pure; deterministic.
 *
 * StaticData pays a fixed cost that no page size or link removes: the save's commit, the
 * target noticing it, the merge's completion reaching the runbook — and the first dynamic
 * round waits for it. It can only win back the time the bulk pass would take on the migration
 * link. A guest whose memory is almost all zero pages (idle, freshly booted, ballooned) has a
 * bulk pass shorter than one round worth sending: it goes over channel-2, as in pre-copy.
 */
import { fmt, transferMs } from './convergence';

/** A round is worth sending once its pages take this long at the link's rate (par-migrate's rounds during the save wait for it). */
export const WORTH_ROUND_MS = 100;
/** A bulk pass shorter than one round worth sending is not worth StaticData. */
export const STATIC_WORTH_MS = WORTH_ROUND_MS;

/**
 * How many bytes of non-zero pages the source needs to count before the answer is "worth it":
 * counting may stop there (a large guest is not scanned to its end). 0: no limit known
 * (uncapped or unknown link) — StaticData runs as the strategy asks, no count needed.
 */
export function staticWorthBytes(bandwidthBytesPerSec: number): number {
  if (!(bandwidthBytesPerSec > 0) || !Number.isFinite(bandwidthBytesPerSec)) return 0;
  return Math.ceil((STATIC_WORTH_MS / 1000) * bandwidthBytesPerSec);
}

export interface StaticDataInput {
  /** Non-zero pages the source counted (counting may have stopped at the limit from staticWorthBytes). */
  nonZeroPages: number;
  pageCount: number;
  pageSize: number;
  /** The migration link's rate (0: uncapped or unknown). */
  bandwidthBytesPerSec: number;
  /** Zero pages cross channel-2 as a marker; without it every page is sent whole. */
  zeroElision: boolean;
}

export type StaticDataDecision = { save: true } | { save: false; reason: string };

export function staticDataDecision(i: StaticDataInput): StaticDataDecision {
  if (!(i.bandwidthBytesPerSec > 0) || !Number.isFinite(i.bandwidthBytesPerSec)) return { save: true };
  const pages = i.zeroElision ? Math.min(i.nonZeroPages, i.pageCount) : i.pageCount;
  const ms = transferMs(pages, i.pageSize, i.bandwidthBytesPerSec);
  if (ms >= STATIC_WORTH_MS) return { save: true };
  const what = i.zeroElision ? `${pages} non-zero page(s) of ${i.pageCount}` : `${pages} page(s)`;
  return {
    save: false,
    reason: `StaticData not started: the bulk pass holds ${what}, ${Math.round(ms)} ms at ${fmt(i.bandwidthBytesPerSec / 2 ** 20)} MiB/s < ${STATIC_WORTH_MS} ms; it goes over channel-2`,
  };
}
