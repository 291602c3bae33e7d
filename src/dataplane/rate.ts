/**
 * Token bucket for byte rates. The rate can change while a transfer runs (operators'
 * `set-bandwidth`); a rate of 0 or Infinity means uncapped.
 *
 * `take(n)` resolves once n bytes may be sent. Burst is bounded so that a long idle
 * period does not let a sender exceed the cap afterwards.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private rate: number;
  private readonly burstSeconds: number;

  constructor(bytesPerSecond: number, opts: { burstSeconds?: number; now?: () => number } = {}) {
    this.rate = normalise(bytesPerSecond);
    this.burstSeconds = opts.burstSeconds ?? 0.05;
    this.now = opts.now ?? (() => performance.now());
    this.last = this.now();
    this.tokens = 0;
  }

  private readonly now: () => number;

  get bytesPerSecond(): number {
    return this.rate;
  }

  setRate(bytesPerSecond: number): void {
    this.refill();
    this.rate = normalise(bytesPerSecond);
  }

  private refill(): void {
    const t = this.now();
    const elapsed = (t - this.last) / 1000;
    this.last = t;
    if (!Number.isFinite(this.rate)) return;
    const cap = Math.max(this.rate * this.burstSeconds, 64 * 1024);
    this.tokens = Math.min(cap, this.tokens + elapsed * this.rate);
  }

  /** Milliseconds to wait before `bytes` may go; 0 when they may go now (and are taken). */
  reserve(bytes: number): number {
    if (!Number.isFinite(this.rate)) return 0;
    this.refill();
    this.tokens -= bytes;
    if (this.tokens >= 0) return 0;
    return (-this.tokens / this.rate) * 1000;
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const waitMs = this.reserve(bytes);
    if (waitMs > 0) await sleep(waitMs, signal);
  }
}

function normalise(r: number): number {
  if (!(r > 0) || !Number.isFinite(r)) return Infinity;
  return r;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
