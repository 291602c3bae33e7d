/**
 * ferry's switch rule (`--switch-rule ferry`, the default for as-hybrid and pa-hybrid).
 *
 * The paper's rule switches only when λ says the dirty set grows (2 of the last 3 above 1,
 * mean ≥ 1). A stationary write-intensive load does not grow: it settles on a plateau, rounds
 * of the same size with λ noise around 1.00, and pre-copy resends the same pages until the
 * max-iterations valve. ferry keeps the paper's diverge test and asks two more questions at
 * each boundary, from measurements only:
 *
 * - *what will the next round leave?* The round sends the R pages dirty now, taking R/B at
 *   the measured bandwidth B; what it leaves is what the guest dirties in that time. The
 *   source peeks at its dirty log while a round runs, so each round carries the growth of
 *   its dirty set, f(t) = distinct pages dirtied t ms into the round; the prediction is f at
 *   the next round's duration, the smallest over the last three rounds' curves: a write
 *   burst in one round does not decide, a plateau shows in every round. Without curves
 *   (QEMU), R·λ̂ with λ̂ the smallest of the last three λ.
 * - *no progress*: the next round would leave ≥ 90 % of what is dirty now while that does not
 *   fit the downtime budget: pre-copy cannot converge; more rounds resend the same pages.
 * - *worth another round?*: at the predicted ratio q, reaching the budget takes n more rounds
 *   costing Σ R·qʲ/B; switching now costs the post-copy of R pages, each worth
 *   POSTCOPY_PAGE_COST pre-copy pages (the guest stalls on a missing page). A load that
 *   reaches the budget within CONVERGE_ROUNDS more rounds is converging and goes on to
 *   stop-and-copy (no post-copy at all); a longer tail goes on only while its rounds cost
 *   less than the post-copy they avoid.
 *
 * Pure: every input comes in, a decision and its reason (with its numbers) go out.
 */
import { bytesPerDirtyPage, fmt, lambdas, measuredBandwidth } from './convergence';
import type { Decision, IterationStat, PolicyConfig, PolicyState } from './types';

/** A post-copy page costs this many pre-copy pages: sent once either way, but the guest stalls on it. */
export const POSTCOPY_PAGE_COST = 1.25;
/** The next round leaving at least this share of what is dirty now is no progress. */
export const PLATEAU_RATIO = 0.9;
/** A load that reaches the downtime budget within this many more rounds is converging: it never switches. */
export const CONVERGE_ROUNDS = 3;
/** Rounds whose curves (or λ) vote on the prediction; the smallest wins. */
const WINDOW = 3;

/** Distinct pages dirtied `ms` into a round, from its growth curve; extrapolated past its end at the curve's late slope. */
export function growthAt(curve: readonly number[][], ms: number): number | null {
  const pts = curve.filter((p) => p.length >= 2 && Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (pts.length === 0) return null;
  if (ms <= 0) return 0;
  let prev: readonly number[] = [0, 0];
  for (const p of pts) {
    if (ms <= p[0]!) {
      const span = p[0]! - prev[0]!;
      return span > 0 ? prev[1]! + ((p[1]! - prev[1]!) * (ms - prev[0]!)) / span : p[1]!;
    }
    prev = p;
  }
  // Past the curve: go on at the rate of its second half (a growing set keeps growing).
  const last = pts[pts.length - 1]!;
  const mid = pts.find((p) => p[0]! >= last[0]! / 2) ?? pts[0]!;
  const span = last[0]! - mid[0]!;
  const slope = span > 0 ? (last[1]! - mid[1]!) / span : last[0]! > 0 ? last[1]! / last[0]! : 0;
  return last[1]! + slope * (ms - last[0]!);
}

/**
 * New pages the guest dirties in the `leadMs` between the last round's end and the pause:
 * the last round's growth curve carried on past its end (what it adds beyond its end is what
 * is not dirty already), or, without a curve, its dirty rate over the round. Rounded up.
 */
export function dirtiedBeforePause(state: PolicyState, cfg: PolicyConfig, leadMs: number): number {
  const last = state.iterations[state.iterations.length - 1];
  if (!last || !(leadMs > 0)) return 0;
  const room = Math.max(0, cfg.pageCount - state.remainingPages);
  let extra: number;
  if (last.growth && last.growth.length > 0) {
    const atEnd = growthAt(last.growth, last.durationMs) ?? 0;
    extra = (growthAt(last.growth, last.durationMs + leadMs) ?? atEnd) - atEnd;
  } else {
    extra = last.durationMs > 0 ? (last.dirtyAfter / last.durationMs) * leadMs : 0;
  }
  return Math.min(room, Math.max(0, Math.ceil(extra)));
}

/** The pages dirtied before the pause that the state's measured lead says to count (0: no lead measured). */
export function leadPages(state: PolicyState, cfg: PolicyConfig): number {
  return state.pauseLeadMs !== undefined ? dirtiedBeforePause(state, cfg, state.pauseLeadMs) : 0;
}

export interface NextRound {
  /** Pages the next round sends (dirty now) and how long that takes at the measured bandwidth. */
  pages: number;
  ms: number;
  /** Pages it is predicted to leave dirty. */
  leaves: number;
  /** How the prediction was made, for the reason. */
  basis: string;
}

/** What one more round would send, take and leave, or null while nothing has been measured to say. */
export function predictNextRound(state: PolicyState, cfg: PolicyConfig): NextRound | null {
  const R = state.remainingPages;
  const bytesPerSec = measuredBandwidth(state.iterations, cfg.bandwidthBytesPerSec);
  const pagesPerSec = bytesPerSec / bytesPerDirtyPage(state.iterations, cfg.pageSize);
  if (!(pagesPerSec > 0) || !Number.isFinite(pagesPerSec)) return null;
  const ms = (R / pagesPerSec) * 1000;
  const curves = state.iterations
    .slice(-WINDOW)
    .map((it) => (it.growth && it.growth.length > 0 ? growthAt(it.growth, ms) : null))
    .filter((x): x is number => x !== null);
  if (curves.length > 0) {
    const leaves = Math.min(cfg.pageCount, Math.round(Math.min(...curves)));
    return { pages: R, ms, leaves, basis: `the dirty set's growth over ${Math.round(ms)} ms` };
  }
  const window = lambdas(dirtyRounds(state.iterations)).slice(-WINDOW);
  if (window.length === 0) return null;
  const q = Math.min(...window);
  return { pages: R, ms, leaves: Math.min(cfg.pageCount, Math.round(R * q)), basis: `λ̂=${fmt(q)} (least of [${window.map(fmt).join(', ')}])` };
}

/** Rounds that resend dirty pages: λ(1) is 1 by definition and says nothing. */
function dirtyRounds(iterations: readonly IterationStat[]): IterationStat[] {
  return iterations.filter((it) => it.index >= 2);
}

/**
 * Pages that fit the downtime budget at the measured bandwidth, after the pause's fixed cost
 * and the pages the guest dirties before the pause (as the stop-and-copy test counts them).
 */
export function budgetPages(state: PolicyState, cfg: PolicyConfig): number {
  const bytesPerSec = measuredBandwidth(state.iterations, cfg.bandwidthBytesPerSec);
  const ms = Math.max(0, cfg.maxDowntimeMs - (state.pauseOverheadMs ?? 0));
  const fit = Math.floor(((ms / 1000) * bytesPerSec) / bytesPerDirtyPage(state.iterations, cfg.pageSize));
  return Math.max(0, fit - leadPages(state, cfg));
}

/**
 * The plateau and the cost of another round (the diverge test and stop-and-copy come first,
 * in `decide`). Returns null to continue, with `why` for the continue reason.
 */
export function ferrySwitch(state: PolicyState, cfg: PolicyConfig): { decision: Decision | null; why: string } {
  const at = state.iterations.length + 1;
  const next = predictNextRound(state, cfg);
  if (!next) return { decision: null, why: 'no round measured yet to predict the next' };
  const R = next.pages;
  const budget = budgetPages(state, cfg);
  const q = R > 0 ? next.leaves / R : 0;
  const says = `next round sends ${R} pages in ${Math.round(next.ms)} ms and leaves ~${next.leaves} (${next.basis})`;
  if (next.leaves <= budget) return { decision: null, why: `${says}, which fit the downtime budget (${budget} pages)` };
  if (q >= PLATEAU_RATIO) {
    return {
      decision: { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${at}: no progress: ${says}, ${Math.round(q * 100)} % of now, above the budget (${budget} pages)` },
      why: '',
    };
  }
  // Rounds to the budget at ratio q, and what they cost against post-copy now.
  const rounds = budget > 0 ? Math.max(1, Math.ceil(Math.log(budget / R) / Math.log(q))) : Infinity;
  const roundsMs = Number.isFinite(rounds) ? (next.ms * (1 - q ** rounds)) / (1 - q) : Infinity;
  const postcopyMs = next.ms * POSTCOPY_PAGE_COST;
  const cost = `${Number.isFinite(rounds) ? `~${rounds} more round(s) take ~${Math.round(roundsMs)} ms` : 'no number of rounds gets'} to reach the budget; post-copy of ${R} pages now ~${Math.round(postcopyMs)} ms`;
  if (rounds <= CONVERGE_ROUNDS) return { decision: null, why: `converging: ${says}; ${cost}` };
  if (roundsMs <= postcopyMs) return { decision: null, why: `worth another round: ${says}; ${cost}` };
  // A cost comparison from one round's curve would let a burst in that round decide (seen
  // on a loaded machine: scenario-bursty switched after its bulk round). It waits for a second.
  if (state.iterations.length < 2) return { decision: null, why: `one round measured, waiting for a second before weighing the cost: ${says}; ${cost}` };
  return { decision: { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${at}: not worth another round: ${says}; ${cost}` }, why: '' };
}
