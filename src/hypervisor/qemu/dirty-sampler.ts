/**
 * The dirty set's growth on a QEMU guest, measured while pre-copy runs: what ferry's switch
 * rule reads to predict what the next pass will leave (src/policy/ferry-switch.ts).
 *
 * QEMU does not expose its migration dirty log between bitmap syncs, but it can measure how
 * many distinct pages a guest changes in a window: `calc-dirty-rate` in page-sampling mode
 * hashes a sample of pages at the window's start and end (no dirty logging, so it does not
 * touch the migration's own). The fraction of sampled pages that changed, times the guest's
 * memory, is f(τ) — the distinct pages dirtied in τ ms. Windows of growing length
 * (200 ms, 400 ms, … restarted at each pass) give each pass a curve [[τ, pages], …] like the
 * emulated source's: a saturated hot set shows a flat curve, a steady writer a rising one.
 */
import { growthAt } from '../../policy/ferry-switch';
import type { QmpClient } from './qmp';

/** One window: it ended at `endAtMs` (this host's clock), lasted `ms` and saw `pages` distinct pages change. */
export interface GrowthSample {
  endAtMs: number;
  ms: number;
  pages: number;
}

/** Window lengths of one cycle; the cycle starts again at each pass, the last length repeats. */
export const SAMPLE_WINDOWS_MS = [200, 400, 800, 1600, 3200] as const;
/** Pages hashed per GiB of guest memory (QEMU's maximum: the most precise estimate it offers). */
export const SAMPLE_PAGES_PER_GIB = 4096;
const POLL_MS = 50;

interface DirtyRateInfo {
  status: string;
  'dirty-rate'?: number;
  'calc-time'?: number;
}

/** A measured window as pages: QEMU reports MiB/s over the window it really measured. */
export function samplePages(info: DirtyRateInfo, pageSize: number): { ms: number; pages: number } | null {
  const rate = info['dirty-rate'];
  const ms = info['calc-time'];
  if (info.status !== 'measured' || typeof rate !== 'number' || typeof ms !== 'number' || !(ms > 0) || rate < 0) return null;
  return { ms, pages: Math.round((rate * 2 ** 20 * (ms / 1000)) / pageSize) };
}

/**
 * The growth curve of the pass between two syncs: the windows that ended inside it, by
 * length; windows of (nearly) the same length are merged into their median; never falling.
 */
export function growthCurve(samples: readonly GrowthSample[], fromMs: number, toMs: number): number[][] {
  const inside = samples.filter((s) => s.endAtMs > fromMs && s.endAtMs <= toMs).sort((a, b) => a.ms - b.ms);
  const groups: GrowthSample[][] = [];
  for (const s of inside) {
    const g = groups[groups.length - 1];
    if (g && s.ms <= g[0]!.ms * 1.25) g.push(s);
    else groups.push([s]);
  }
  const median = (xs: number[]): number => {
    const v = [...xs].sort((a, b) => a - b);
    const m = v.length >> 1;
    return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
  };
  // Distinct pages changed in a window cannot shrink as the window grows: a longer window that
  // sampled fewer is sampling noise, read as the shorter one's count (never a falling curve,
  // which the policy would carry on falling past its end, below zero).
  let most = 0;
  return groups.map((g) => {
    most = Math.max(most, Math.round(median(g.map((s) => s.pages))));
    return [Math.round(median(g.map((s) => s.ms))), most];
  });
}

/**
 * A pass's sampled curve anchored on what the bitmap sync counted: the sampler gives the
 * curve's shape (how fast the set grows, whether it saturates) but only estimates its scale
 * from a sample of pages, while the sync at the pass's end counts exactly `dirtyAfter` pages
 * dirtied over `durationMs`. The curve is scaled so that it passes through that point, as the
 * policy reads it (a curve that saw no change becomes the straight line to it).
 */
export function anchorCurve(curve: readonly number[][], durationMs: number, dirtyAfter: number): number[][] {
  if (!(durationMs > 0) || !(dirtyAfter >= 0) || curve.length === 0) return curve.map((p) => [...p]);
  const atEnd = growthAt(curve, durationMs) ?? 0;
  if (!(atEnd > 0)) return [[Math.round(durationMs), Math.round(dirtyAfter)]];
  const k = dirtyAfter / atEnd;
  return curve.map((p) => [p[0]!, Math.round(p[1]! * k)]);
}

/**
 * The curve pass `index` reports, between its opening and closing syncs. A dirty pass's
 * sampled curve is anchored on the exact count its closing sync made (seen on a loaded host:
 * sampled curves of later passes at a third of the count, and the rule then called a
 * diverging load converging). The bulk pass's (index 1) is not: the guest there shares the
 * CPU with the bulk transfer and dirties more slowly than in the passes the curve predicts
 * (anchored, it made as-hybrid go on past its switch).
 */
export function passCurve(samples: readonly GrowthSample[], index: number, fromMs: number, toMs: number, dirtyAfter: number): number[][] {
  const sampled = growthCurve(samples, fromMs, toMs);
  return index >= 2 ? anchorCurve(sampled, toMs - fromMs, dirtyAfter) : sampled;
}

export interface DirtySamplerOptions {
  qmp: Pick<QmpClient, 'execute'>;
  pageSize: number;
  /** Passes so far (a new pass restarts the window cycle). */
  passes: () => number;
  /** Pre-copy still runs (setup or active): the sampler stops on its own when this turns false. */
  precopyRunning: () => boolean;
  record: (s: GrowthSample) => void;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Measure windows one after another while pre-copy runs; `stop()` ends the loop (a window in flight finishes in QEMU). */
export function startDirtySampler(o: DirtySamplerOptions): { stop(): void; done: Promise<void> } {
  const now = o.now ?? Date.now;
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  let stopped = false;
  const running = (): boolean => !stopped && o.precopyRunning();
  const done = (async () => {
    let pass = o.passes();
    let k = 0;
    while (running()) {
      if (o.passes() !== pass) {
        pass = o.passes();
        k = 0;
      }
      const window = SAMPLE_WINDOWS_MS[Math.min(k, SAMPLE_WINDOWS_MS.length - 1)]!;
      k++;
      try {
        await o.qmp.execute('calc-dirty-rate', { 'calc-time': window, 'calc-time-unit': 'millisecond', 'sample-pages': SAMPLE_PAGES_PER_GIB });
      } catch {
        // One already measuring (ours, left from a stopped loop) or the guest gone: wait, then look again.
        await sleep(POLL_MS * 4);
        continue;
      }
      const deadline = now() + window * 10 + 5000;
      while (running() && now() < deadline) {
        await sleep(POLL_MS);
        const info = await o.qmp.execute<DirtyRateInfo>('query-dirty-rate', { 'calc-time-unit': 'millisecond' }).catch(() => null);
        if (!info || info.status === 'measuring') continue;
        const s = samplePages(info, o.pageSize);
        if (s) o.record({ endAtMs: now(), ...s });
        break;
      }
    }
  })();
  return {
    stop: () => {
      stopped = true;
    },
    done,
  };
}
