/**
 * What a target learns from the pauses it ended: the part of each pause that is not the
 * source's sending (the orchestration from the send's end to the resume, and the resume
 * itself), so the next stop-and-copy test counts the whole pause (MECHANISM.md, "Downtime is
 * a promise"). The source's pause instant comes from its own clock: a sample the two clocks
 * make negative or implausibly long is dropped, not learned.
 */

/**
 * Pauses remembered. The overhead has a long tail (measured over 205 emulated pauses: median
 * 71 ms, p90 105 ms, max 166 ms), so the slowest of the last five promised too little one
 * time in seven; the slowest of the last twenty holds the tail and still ages out in one
 * evacuation's worth of migrations.
 */
const KEPT = 20;
/** A pause overhead above this says the clocks disagree (or a retry), not how long pauses take. */
const PLAUSIBLE_MS = 10_000;

export interface PauseSample {
  /** When the source paused the guest (source clock, ms since the epoch). */
  pausedAtMs: number;
  /** How long the source's own sending inside the pause took (ms). */
  sentMs: number;
  /** When the guest ran again here (target clock, ms since the epoch). */
  resumedAtMs: number;
}

export class PauseHistory {
  private readonly overheads: number[] = [];

  /** Learn one pause; returns its overhead (ms), or null when the sample was not plausible. */
  record(p: PauseSample): number | null {
    const overhead = p.resumedAtMs - p.pausedAtMs - p.sentMs;
    if (![p.pausedAtMs, p.sentMs, p.resumedAtMs].every(Number.isFinite) || p.sentMs < 0 || overhead < 0 || overhead > PLAUSIBLE_MS) return null;
    this.overheads.push(overhead);
    if (this.overheads.length > KEPT) this.overheads.shift();
    return overhead;
  }

  /**
   * The overhead the next pause is promised with: the largest of the last twenty, rounded up.
   * A promise is kept by the slow pauses, not the typical one. null before the first.
   */
  estimateMs(): number | null {
    return this.overheads.length ? Math.ceil(Math.max(...this.overheads)) : null;
  }
}
