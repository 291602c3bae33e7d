/**
 * par-migrate's pre-copy rounds while StaticData is still being saved and merged: when a
 * round starts, and whether a wait for the merge after a round leaves its dirty count stale.
 * Policy-free pacing (the decisions stay with `src/policy`); deterministic, no Node APIs.
 */
import { transferMs, WORTH_ROUND_MS } from '../policy';
import type { StaticSnapshot } from './static-snapshot';

/**
 * Marks runs whose par-migrate rounds during the StaticData save start only once worth a
 * round, and whose short waits for the merge (≤ STALE_PAUSE_MS) count into the pause's lead
 * instead of forcing a fresh round.
 */
export const PAR_ROUND_START_PATCH = 'ferry-par-round-start';
/** A wait for the merge longer than this leaves the last round's dirty count stale: one fresh round before deciding. */
const STALE_PAUSE_MS = 50;
/** A round during the save waits at most this long to be worth sending. */
const WORTH_WAIT_MS = 10_000;
/** The longest wait for the merge after a small round. */
const MERGE_PAUSE_MS = 200;

export interface StartWhen {
  worthPages: number;
  maxWaitMs: number;
}

export interface ParRoundsInput {
  /** The strategy saves StaticData (par-migrate, pa-hybrid). */
  par: boolean;
  /** The run carries PAR_ROUND_START_PATCH. */
  roundStart: boolean;
  staticData: StaticSnapshot;
  /** The guest's page size and count, the link's rate in bytes/s (0: unknown), read when needed. */
  guest: () => { pageSize: number; pageCount: number };
  bandwidth: () => number;
}

export class ParRounds {
  /** How long the workflow waited for the merge after the last round (counted into the pause's lead). */
  waitedMs = 0;

  constructor(private readonly o: ParRoundsInput) {}

  /** During the save the next round starts once worth sending (WORTH_ROUND_MS of pages) or the save ended. */
  startWhen(): StartWhen | undefined {
    if (!this.o.roundStart || !this.o.staticData.inProgress()) return undefined;
    const { pageSize, pageCount } = this.o.guest();
    const bw = this.o.bandwidth();
    const worth = bw > 0 ? Math.ceil(((WORTH_ROUND_MS / 1000) * bw) / pageSize) : pageCount;
    return { worthPages: Math.min(pageCount, Math.max(1, worth)), maxWaitMs: WORTH_WAIT_MS };
  }

  /**
   * After a round of `pages`: while the target still merges StaticData, do not spin on tiny
   * rounds — wait for the merge or MERGE_PAUSE_MS. Returns whether the round's dirty count is
   * now stale (a fresh round must come before the decision); a short wait is not: it counts
   * into the pause's lead (`waitedMs`).
   */
  async afterRound(pages: number): Promise<boolean> {
    this.waitedMs = 0;
    const sd = this.o.staticData;
    if (!this.o.par || sd.merged || !sd.running) return false;
    if (transferMs(pages, this.o.guest().pageSize, this.o.bandwidth() || 1e12) >= WORTH_ROUND_MS) return false;
    const t0 = Date.now();
    await sd.pause(MERGE_PAUSE_MS);
    const waited = Date.now() - t0;
    if (this.o.roundStart && sd.merged && waited <= STALE_PAUSE_MS) {
      this.waitedMs = waited;
      return false;
    }
    return true;
  }
}
