/**
 * The clock the data plane paces itself by: `now()` in milliseconds and an abortable
 * `sleep`. Production code uses realClock (performance.now and a timer). ManualClock is a
 * virtual clock for tests: its time moves only when the test advances it, so pacing can
 * be checked exactly instead of against wall-clock windows.
 */
import { sleep } from './rate';

export interface Clock {
  /** Milliseconds on a monotonic scale (only differences matter). */
  now(): number;
  /** Resolves after `ms` milliseconds of this clock; rejects with the signal's reason once aborted. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** performance.now() and a real timer. */
export const realClock: Clock = {
  now: () => performance.now(),
  sleep,
};

interface Sleeper {
  wakeAt: number;
  wake(): void;
}

/**
 * Virtual time for tests, starting at 0. sleep() only registers a sleeper; advance() jumps
 * to the earliest wake time and wakes the sleepers due. Every sleep asked for is recorded.
 * A channel on this clock sends nothing capped (its CLOSE included) unless it is driven.
 */
export class ManualClock implements Clock {
  /** Every sleep asked for, in order: the time it was asked at and its length. */
  readonly sleeps: { at: number; ms: number }[] = [];
  private t = 0;
  private readonly sleepers: Sleeper[] = [];
  private readonly waiting: (() => void)[] = [];

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const reason = (): Error => (signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
      if (signal?.aborted) {
        reject(reason());
        return;
      }
      this.sleeps.push({ at: this.t, ms });
      const onAbort = (): void => {
        const i = this.sleepers.indexOf(sleeper);
        if (i >= 0) this.sleepers.splice(i, 1);
        reject(reason());
      };
      const sleeper: Sleeper = {
        wakeAt: this.t + Math.max(0, ms),
        wake: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.sleepers.push(sleeper);
      this.sleepers.sort((a, b) => a.wakeAt - b.wakeAt);
      for (const w of this.waiting.splice(0)) w();
    });
  }

  /** Sleeps not yet woken. */
  get pending(): number {
    return this.sleepers.length;
  }

  /** Resolves once a sleep is pending (at once if one is). */
  sleeping(): Promise<void> {
    if (this.sleepers.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Move time to the earliest pending wake time and wake every sleeper due then. False if none is pending. */
  advance(): boolean {
    const first = this.sleepers[0];
    if (!first) return false;
    this.t = Math.max(this.t, first.wakeAt);
    while (this.sleepers[0] && this.sleepers[0].wakeAt <= this.t) this.sleepers.shift()?.wake();
    return true;
  }

  /**
   * Until `done` settles: whenever something sleeps on this clock, call `beforeAdvance` (if
   * given) and advance. Time never moves while nothing sleeps. Returns `done`'s outcome.
   */
  async drive<T>(done: Promise<T>, beforeAdvance?: () => void): Promise<T> {
    let settled = false;
    const end = done.then(
      () => void (settled = true),
      () => void (settled = true),
    );
    for (;;) {
      await Promise.race([this.sleeping(), end]);
      if (settled) return done;
      beforeAdvance?.();
      this.advance();
    }
  }
}
