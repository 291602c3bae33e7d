/**
 * Post-copy without a push: when no page but fault answers has come for `afterMs` while pages
 * are missing, the target asks for the rest itself over channel-2, as faults, a batch at a
 * time (the next batch when half of the last one has landed). The source's channel answers
 * faults without any step of its own, so post-copy completes even when the source's push
 * never started (its agent cut off from Temporal as the step was handed out). Pure: the
 * caller sends what `next` returns.
 */
export const PULL_AFTER_MS = 1000;
export const PULL_BATCH = 1024;

export class PostcopyPuller {
  private asked = new Set<number>();
  private refillAt = -1;
  private at = -Infinity;
  private started = false;
  /** Pages asked for so far (asked, not necessarily the ones that came). */
  pulled = 0;

  constructor(
    private readonly afterMs = PULL_AFTER_MS,
    private readonly batch = PULL_BATCH,
  ) {}

  /**
   * The pages to ask for now (empty: nothing to ask). `pushedAt`: when a page last came that no
   * fault asked for (the push, or earlier pulls); `missingCount` and `listMissing`: the missing
   * pages (listed only when there is something to ask); `outstanding`: pages a vCPU fault
   * already asked for.
   */
  next(now: number, pushedAt: number, missingCount: number, listMissing: () => ArrayLike<number>, outstanding: { has(pfn: number): boolean }): number[] {
    const quiet = now - pushedAt > this.afterMs && now - this.at > this.afterMs;
    const halfLanded = this.started && missingCount <= this.refillAt;
    if (!quiet && !halfLanded) return [];
    const missing = listMissing();
    // After a quiet spell, ask again for what was asked and did not come.
    if (quiet) this.asked = new Set();
    this.started = true;
    const want: number[] = [];
    for (let i = 0; i < missing.length && want.length < this.batch; i++) {
      const pfn = missing[i]!;
      if (this.asked.has(pfn) || outstanding.has(pfn)) continue;
      this.asked.add(pfn);
      want.push(pfn);
    }
    this.refillAt = missingCount - Math.ceil(want.length / 2);
    this.at = now;
    this.pulled += want.length;
    return want;
  }

  /** When a quiet spell would next make `next` ask (for the drain's wait). */
  dueAt(pushedAt: number): number {
    return Math.max(pushedAt, this.at) + this.afterMs;
  }
}
