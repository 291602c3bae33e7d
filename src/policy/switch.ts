/**
 * When to stop pre-copy: stop-and-copy, switch to post-copy, or go on. One small function per
 * rule (Nova's migration.py style), and `decide` that applies the strategy's rules in order.
 * Every result carries the reason with the numbers it was decided on.
 */
import { estimateSendMs, fmt, lambdas } from './convergence';
import { ferrySwitch, leadPages, growthAt, predictNextRound } from './ferry-switch';
import { mayPostcopy, type Decision, type PolicyConfig, type PolicyState } from './types';

const CONTINUE = (reason: string): Decision => ({ action: 'continue', reason });

/** Pre-copy converged: the remaining pages fit in the downtime budget at the measured bandwidth. */
export function stopAndCopyTest(state: PolicyState, cfg: PolicyConfig): Decision | null {
  const it = state.iterations.length;
  if (state.remainingPages === 0) return { action: 'stop-and-copy', reason: `stop-and-copy at iteration ${it + 1}: no dirty pages left` };
  // The pause comes a round trip after the round's end: the pages dirtied meanwhile go too.
  const lead = leadPages(state, cfg);
  const pages = state.remainingPages + lead;
  const { ms, bytesPerSec: bw } = estimateSendMs(state.iterations, pages, cfg.pageSize, cfg.bandwidthBytesPerSec);
  // Downtime is a promise: the pause also costs device state, the switch-over's round trips
  // and the target's resume, as measured so far.
  const overhead = state.pauseOverheadMs ?? 0;
  if (ms + overhead <= cfg.maxDowntimeMs) {
    const more = state.pauseLeadMs !== undefined ? ` + ~${lead} dirtied in the ${Math.round(state.pauseLeadMs)} ms before the pause` : '';
    const plus = state.pauseOverheadMs !== undefined ? ` + ${Math.round(overhead)} ms pause overhead` : '';
    return {
      action: 'stop-and-copy',
      reason: `stop-and-copy at iteration ${it + 1}: ${state.remainingPages} pages${more} take ${Math.round(ms)} ms at ${fmt(bw / 2 ** 20)} MiB/s${plus} ≤ max downtime ${cfg.maxDowntimeMs} ms`,
    };
  }
  return null;
}

/**
 * The adaptive switch (As-hybrid): over the last 3 λ, all below 1 = converging; at least 2
 * of 3 above 1 and their mean ≥ 1 = diverging, switch; anything else is load noise.
 */
export function adaptiveSwitch(state: PolicyState): Decision {
  const it = state.iterations.length;
  const window = lambdas(state.iterations).slice(-3);
  const shown = `λ=[${window.map(fmt).join(', ')}]`;
  if (window.length < 3) return CONTINUE(`continue: ${shown}, need 3 samples`);
  const mean = window.reduce((a, b) => a + b, 0) / window.length;
  if (window.every((l) => l < 1)) return CONTINUE(`continue at iteration ${it + 1}: ${shown} all < 1, converging`);
  const above = window.filter((l) => l > 1).length;
  if (above >= 2 && mean >= 1) {
    return {
      action: 'switch-to-postcopy',
      reason: `switch to post-copy at iteration ${it + 1}: ${shown}, ${above} of 3 > 1, mean ${fmt(mean)} ≥ 1`,
    };
  }
  return CONTINUE(`continue at iteration ${it + 1}: ${shown}, mean ${fmt(mean)}: not diverging (${above} of 3 > 1)`);
}

/** Safety valve (not in the paper): never iterate past maxIterations. */
export function maxIterationsValve(state: PolicyState, cfg: PolicyConfig, action: 'stop-and-copy' | 'switch-to-postcopy'): Decision | null {
  const it = state.iterations.length;
  if (it < cfg.maxIterations) return null;
  const verb = action === 'stop-and-copy' ? 'stop-and-copy anyway' : 'switch to post-copy';
  return { action, reason: `${verb} at iteration ${it + 1}: max iterations (${cfg.maxIterations}) reached with ${state.remainingPages} pages dirty` };
}

/** A sweep's fixed switch point: post-copy after n rounds (the bench's hindsight search). */
export function fixedSwitchPoint(state: PolicyState, cfg: PolicyConfig): Decision | null {
  const n = cfg.switchAfterRounds;
  if (!n || state.iterations.length < n) return null;
  return { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${state.iterations.length + 1}: fixed switch point after ${n} round${n > 1 ? 's' : ''} (${state.remainingPages} pages left)` };
}

/** Heuristic hybrid (Li et al. 2019): switch once a round dirties at least as many pages as it sent. */
export function heuristicSwitch(state: PolicyState): Decision | null {
  const last = state.iterations[state.iterations.length - 1];
  if (!last) return null;
  if (last.dirtyAfter >= last.pages) {
    return {
      action: 'switch-to-postcopy',
      reason: `switch to post-copy after iteration ${last.index}: it dirtied ${last.dirtyAfter} pages while sending ${last.pages} (λ=${fmt(last.pages ? last.dirtyAfter / last.pages : Infinity)} ≥ 1)`,
    };
  }
  return null;
}

/**
 * Dyn-hybrid (Altahat et al. 2020), our reading. After round 1 estimate the dirty rate R and
 * bandwidth B (pages/s) and the writable working set W (distinct pages dirtied in round 1);
 * predict p(1) = pageCount, p(i+1) = min(W, p(i)·R/B), and choose the number of pre-copy
 * rounds n ≤ maxIterations that minimises Σ_{i≤n} p(i) + 2·p(n+1).
 *
 * MECHANISM.md writes the objective as Σ p(i) + p(n+1) (total pages). That sum grows with
 * every extra round whatever R and B are (f(n+1) − f(n) = p(n+2) ≥ 0), so it always picks
 * n = 1 and dyn-hybrid would be hybrid-1. Altahat's aim is also a short post-copy phase;
 * counting each post-copy page twice — once as data, once as time the guest runs degraded
 * — gives a real trade-off: another round pays off while it shrinks the remaining set by
 * more than half (R/B < 1/2, or the working set caps it).
 */
export function dynHybridRounds(state: PolicyState, cfg: PolicyConfig): { rounds: number; predicted: number[] } | null {
  const first = state.iterations[0];
  if (!first || first.durationMs <= 0) return null;
  const secs = first.durationMs / 1000;
  const B = first.pages / secs;
  const R = first.dirtyAfter / secs;
  const W = first.dirtyAfter;
  const p: number[] = [cfg.pageCount];
  for (let i = 1; i <= cfg.maxIterations; i++) p.push(Math.min(W, Math.round(p[i - 1]! * (B > 0 ? R / B : 1))));
  let best = 1;
  let bestCost = Infinity;
  let sum = 0;
  for (let n = 1; n <= cfg.maxIterations; n++) {
    sum += p[n - 1]!;
    const cost = sum + 2 * p[n]!;
    if (cost < bestCost) {
      bestCost = cost;
      best = n;
    }
  }
  return { rounds: best, predicted: p.slice(0, best + 1) };
}

/** The decision at an iteration boundary (after `state.iterations.length` rounds). */
export function decide(state: PolicyState, cfg: PolicyConfig): Decision {
  const done = state.iterations.length;
  switch (cfg.strategy) {
    case 'postcopy':
      return { action: 'switch-to-postcopy', reason: 'post-copy: switch at once' };

    case 'precopy':
    case 'par-migrate': {
      if (!state.staticMerged) return CONTINUE('continue: static merge not complete');
      return stopAndCopyTest(state, cfg) ?? maxIterationsValve(state, cfg, 'stop-and-copy') ?? CONTINUE(`continue at iteration ${done + 1}: ${state.remainingPages} pages dirty, above the downtime budget`);
    }

    case 'hybrid-1':
    case 'hybrid-2': {
      const n = cfg.strategy === 'hybrid-1' ? 1 : 2;
      if (done >= n) return { action: 'switch-to-postcopy', reason: `${cfg.strategy}: switch to post-copy after ${n} pre-copy round${n > 1 ? 's' : ''} (${state.remainingPages} pages left)` };
      return stopAndCopyTest(state, cfg) ?? CONTINUE(`continue: round ${done + 1} of ${n}`);
    }

    case 'heuristic-hybrid':
      return (
        stopAndCopyTest(state, cfg) ??
        heuristicSwitch(state) ??
        maxIterationsValve(state, cfg, 'switch-to-postcopy') ??
        CONTINUE(`continue at iteration ${done + 1}: the last round sent more than it dirtied`)
      );

    case 'dyn-hybrid': {
      const stop = stopAndCopyTest(state, cfg);
      if (stop) return stop;
      const plan = dynHybridRounds(state, cfg);
      if (!plan) return CONTINUE('continue: round 1 not measured yet');
      if (done >= plan.rounds) {
        return {
          action: 'switch-to-postcopy',
          reason: `dyn-hybrid: switch to post-copy after ${plan.rounds} planned round${plan.rounds > 1 ? 's' : ''} (predicted pages ${plan.predicted.join(' → ')})`,
        };
      }
      return CONTINUE(`continue: dyn-hybrid planned ${plan.rounds} rounds, done ${done}`);
    }

    case 'as-hybrid':
    case 'pa-hybrid': {
      if (!state.staticMerged) return CONTINUE('continue: static merge not complete');
      if (cfg.strategy === 'as-hybrid' && done < 1) return CONTINUE('continue: bulk round not done');
      const stop = stopAndCopyTest(state, cfg);
      if (stop) return stop;
      const fixed = fixedSwitchPoint(state, cfg);
      if (fixed) return fixed;
      const adaptive = adaptiveSwitch(state);
      if (adaptive.action !== 'continue') return adaptive;
      if (cfg.switchRule === 'ferry') {
        const f = ferrySwitch(state, cfg);
        if (f.decision) return f.decision;
        return maxIterationsValve(state, cfg, 'switch-to-postcopy') ?? CONTINUE(`continue at iteration ${done + 1}: ${f.why}`);
      }
      return maxIterationsValve(state, cfg, 'switch-to-postcopy') ?? adaptive;
    }
  }
}

/**
 * par-migrate's rounds while the target still merges StaticData (ferry's rule only). No
 * decision can switch before the merge is done, so the rounds go on — but a round the rule
 * would not send once merged (it would switch: no progress, not worth another round, or
 * diverging) only resends pages that will be dirty again at the switch: migration-network
 * data and time for nothing. Such rounds are held: the workflow waits for the merge, sends
 * one fresh round (the decision needs the dirty set as it is then) and decides.
 * Returns the reason to hold, or null to send the round.
 */
export function holdForMerge(state: PolicyState, cfg: PolicyConfig): string | null {
  if (cfg.switchRule !== 'ferry' || state.staticMerged || cfg.switchAfterRounds) return null;
  if (cfg.strategy !== 'pa-hybrid') return null;
  const once = decide({ ...state, staticMerged: true }, cfg);
  if (once.action !== 'switch-to-postcopy') return null;
  // Only a saturated dirty set may wait: the round after the merge sends what the guest
  // dirtied over the whole wait, so a set still growing would come back bigger than the
  // rounds it replaces. Saturated = the measured growth curves (every one of the last
  // three) add less than 10 % between the next round's duration and four times it.
  const next = predictNextRound(state, cfg);
  const curves = state.iterations.slice(-3).filter((it) => it.growth && it.growth.length > 0);
  if (!next || curves.length === 0 || !(next.leaves > 0)) return null;
  const later = Math.min(...curves.map((it) => growthAt(it.growth!, next.ms * 4) ?? Infinity));
  if (!(later <= next.leaves * HOLD_SATURATION)) return null;
  const why = once.reason.replace(/^switch to post-copy at iteration \d+: /, '');
  return `hold the rounds at iteration ${state.iterations.length + 1} until the static merge is done: once merged the rule would switch (${why}); the dirty set is saturated (~${Math.round(later)} pages after ${Math.round(next.ms * 4)} ms); one fresh round after the merge, then the decision`;
}

/**
 * par-migrate on an engine whose passes run on by themselves (QEMU): the decision the rule
 * will take the moment the static merge completes, from the rounds measured so far — the
 * same decision the workflow would take then. When it is a switch, the source can be armed
 * to take it at the merge's completion without a round trip through the workflow. Null when
 * the merge is done or the rule would not switch once merged.
 */
export function armOnMerge(state: PolicyState, cfg: PolicyConfig): Decision | null {
  if (state.staticMerged || !mayPostcopy(cfg.strategy)) return null;
  const once = decide({ ...state, staticMerged: true }, cfg);
  return once.action === 'switch-to-postcopy' ? once : null;
}

/** A dirty set that grows less than this between one round's duration and four times it is saturated. */
export const HOLD_SATURATION = 1.1;
