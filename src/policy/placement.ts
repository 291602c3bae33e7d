/**
 * Placement and concurrency limits for evacuations (and target-less migrations): pure,
 * synchronous functions. Inputs in, decision + reason out; no clock (nowMs is an input),
 * no env, no I/O. They run inside the evacuation workflow and in the API unchanged.
 */

const MiB = 1024 * 1024;

function mib(bytes: number): string {
  const v = bytes / MiB;
  return `${Number.isInteger(v) ? v : v.toFixed(1)} MiB`;
}

/** A host that may receive VMs, with the memory it still offers to guests. */
export interface CandidateHost {
  hostId: string;
  freeBytes: number;
}

export interface VmToPlace {
  vm: string;
  source: string;
  memoryBytes: number;
}

export interface Placement {
  vm: string;
  source: string;
  target: string;
  memoryBytes: number;
  reason: string;
}

export interface Unplaced {
  vm: string;
  source: string;
  memoryBytes: number;
  reason: string;
}

export interface PlacementPlan {
  placements: Placement[];
  unplaced: Unplaced[];
  /** Free memory per candidate after the placements (bytes). */
  freeAfter: Record<string, number>;
}

/**
 * The candidate with the most free memory that fits `memoryBytes`, never a host in
 * `exclude`. Ties go to the host id that sorts first, so the choice is reproducible.
 */
export function chooseTarget(
  memoryBytes: number,
  candidates: readonly CandidateHost[],
  exclude: readonly string[] = [],
): { target: string | null; reason: string } {
  const eligible = candidates.filter((c) => !exclude.includes(c.hostId));
  if (eligible.length === 0) {
    return { target: null, reason: `no candidate host${exclude.length ? ` other than ${exclude.join(', ')}` : ''}` };
  }
  const sorted = [...eligible].sort((a, b) => b.freeBytes - a.freeBytes || (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0));
  const best = sorted[0]!;
  if (best.freeBytes < memoryBytes) {
    return {
      target: null,
      reason: `needs ${mib(memoryBytes)}; the most free memory on any candidate is ${mib(best.freeBytes)} on ${best.hostId} (never overcommitted)`,
    };
  }
  return { target: best.hostId, reason: `${best.hostId} has the most free memory (${mib(best.freeBytes)} for ${mib(memoryBytes)})` };
}

/**
 * Place every VM on a candidate by free memory: the largest VMs first, each on the host
 * with the most memory left after the placements before it. A VM that fits nowhere is
 * reported with the reason, never forced. Candidates that are also sources are skipped.
 */
export function planPlacement(vms: readonly VmToPlace[], candidates: readonly CandidateHost[]): PlacementPlan {
  const sources = [...new Set(vms.map((v) => v.source))];
  const free: Record<string, number> = {};
  for (const c of candidates) if (!sources.includes(c.hostId)) free[c.hostId] = Math.max(0, c.freeBytes);
  const order = [...vms].sort((a, b) => b.memoryBytes - a.memoryBytes || (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
  const placements: Placement[] = [];
  const unplaced: Unplaced[] = [];
  for (const v of order) {
    const pool = Object.entries(free).map(([hostId, freeBytes]) => ({ hostId, freeBytes }));
    const choice = chooseTarget(v.memoryBytes, pool, [v.source]);
    if (choice.target === null) {
      unplaced.push({ vm: v.vm, source: v.source, memoryBytes: v.memoryBytes, reason: `${v.vm} not placed: ${choice.reason}` });
      continue;
    }
    free[choice.target] = (free[choice.target] ?? 0) - v.memoryBytes;
    placements.push({ vm: v.vm, source: v.source, target: choice.target, memoryBytes: v.memoryBytes, reason: `placed on ${choice.reason}` });
  }
  return { placements, unplaced, freeAfter: free };
}

// ---- concurrency limits ------------------------------------------------------------------

export interface Limits {
  /** Migrations running at once in this evacuation (cluster-wide). */
  maxParallel: number;
  /** Migrations leaving one source host at once. */
  maxOutboundPerHost: number;
  /** Migrations arriving at one target host at once. */
  maxInboundPerHost: number;
  /** Migration-network budget of each host's link, bytes/s (0 = no budget). A migration
   * uses its bandwidth cap on the link of its source and of its target. */
  linkBudgetBytesPerSec: number;
}

export const DEFAULT_LIMITS: Limits = { maxParallel: 4, maxOutboundPerHost: 2, maxInboundPerHost: 1, linkBudgetBytesPerSec: 0 };

/** Priorities when queueing: evacuations go before user-triggered moves. Higher runs first. */
export const PRIORITY = { evacuation: 100, user: 50 } as const;

export interface QueuedItem {
  vm: string;
  source: string;
  target: string;
  priority: number;
  /** Queue order among equal priorities (lower first). */
  seq: number;
  /** Bandwidth this migration asks for on the migration network (bytes/s; 0 = uncapped). */
  bandwidthBytesPerSec: number;
  /** Not before this time (retry backoff), workflow time in ms. */
  notBeforeMs: number;
}

export interface RunningItem {
  vm: string;
  source: string;
  target: string;
  bandwidthBytesPerSec: number;
}

export interface StartDecision {
  vm: string;
  /** The bandwidth cap this migration runs with (its request, within the link budget). */
  bandwidthBytesPerSec: number;
  reason: string;
}

export interface WaitDecision {
  vm: string;
  reason: string;
}

/** What a migration takes from a link budget: its cap, or the whole link when uncapped. */
export function linkShare(bandwidthBytesPerSec: number, budget: number): number {
  if (budget <= 0) return 0;
  return bandwidthBytesPerSec > 0 ? Math.min(bandwidthBytesPerSec, budget) : budget;
}

/**
 * Which queued migrations start now. Highest priority first (then queue order); an item
 * starts only if the cluster-wide limit, its source's outbound limit, its target's inbound
 * limit and the link budgets of both hosts all leave room. Every item that waits gets the
 * reason. A higher-priority item that waits for its hosts does not block other hosts.
 */
export function nextStarts(
  queue: readonly QueuedItem[],
  running: readonly RunningItem[],
  limits: Limits,
  nowMs: number,
): { start: StartDecision[]; wait: WaitDecision[]; nextWakeMs: number | null } {
  const out: Record<string, number> = {};
  const inb: Record<string, number> = {};
  const link: Record<string, number> = {};
  const budget = limits.linkBudgetBytesPerSec;
  let total = running.length;
  for (const r of running) {
    out[r.source] = (out[r.source] ?? 0) + 1;
    inb[r.target] = (inb[r.target] ?? 0) + 1;
    const share = linkShare(r.bandwidthBytesPerSec, budget);
    link[r.source] = (link[r.source] ?? 0) + share;
    link[r.target] = (link[r.target] ?? 0) + share;
  }
  const order = [...queue].sort((a, b) => b.priority - a.priority || a.seq - b.seq);
  const start: StartDecision[] = [];
  const wait: WaitDecision[] = [];
  let nextWakeMs: number | null = null;
  for (const q of order) {
    if (q.notBeforeMs > nowMs) {
      wait.push({ vm: q.vm, reason: `retry backoff: not before ${q.notBeforeMs - nowMs} ms from now` });
      nextWakeMs = nextWakeMs === null ? q.notBeforeMs : Math.min(nextWakeMs, q.notBeforeMs);
      continue;
    }
    if (total >= limits.maxParallel) {
      wait.push({ vm: q.vm, reason: `${total} migrations running (limit ${limits.maxParallel} at once)` });
      continue;
    }
    if ((out[q.source] ?? 0) >= limits.maxOutboundPerHost) {
      wait.push({ vm: q.vm, reason: `${q.source} has ${out[q.source] ?? 0} outbound migrations (limit ${limits.maxOutboundPerHost})` });
      continue;
    }
    if ((inb[q.target] ?? 0) >= limits.maxInboundPerHost) {
      wait.push({ vm: q.vm, reason: `${q.target} has ${inb[q.target] ?? 0} inbound migrations (limit ${limits.maxInboundPerHost})` });
      continue;
    }
    const share = linkShare(q.bandwidthBytesPerSec, budget);
    if (budget > 0) {
      const full = [q.source, q.target].find((h) => (link[h] ?? 0) + share > budget);
      if (full !== undefined) {
        wait.push({ vm: q.vm, reason: `link of ${full} carries ${mib(link[full] ?? 0)}/s of its ${mib(budget)}/s budget; ${q.vm} needs ${mib(share)}/s` });
        continue;
      }
    }
    total += 1;
    out[q.source] = (out[q.source] ?? 0) + 1;
    inb[q.target] = (inb[q.target] ?? 0) + 1;
    link[q.source] = (link[q.source] ?? 0) + share;
    link[q.target] = (link[q.target] ?? 0) + share;
    const bandwidth = budget > 0 ? share : q.bandwidthBytesPerSec;
    start.push({
      vm: q.vm,
      bandwidthBytesPerSec: bandwidth,
      reason: `start ${q.source}→${q.target} (priority ${q.priority}; ${out[q.source]}/${limits.maxOutboundPerHost} out of ${q.source}, ${inb[q.target]}/${limits.maxInboundPerHost} into ${q.target}, ${total}/${limits.maxParallel} running)`,
    });
  }
  return { start, wait, nextWakeMs };
}

/** Retry backoff: base·2^(attempt-1), capped. `attempt` is the attempt that just failed. */
export function retryDelayMs(attempt: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
}

/** Whether a failed attempt is retried, and why (or why not). */
export function retryDecision(attempt: number, maxAttempts: number, outcome: string): { retry: boolean; reason: string } {
  if (outcome === 'completed') return { retry: false, reason: 'completed' };
  if (attempt >= maxAttempts) return { retry: false, reason: `${outcome} on attempt ${attempt} of ${maxAttempts}: giving up` };
  return { retry: true, reason: `${outcome} on attempt ${attempt} of ${maxAttempts}: retrying` };
}

/** Validate limits; returns the first problem naming the field, or null. */
export function checkLimits(l: Limits): string | null {
  for (const k of ['maxParallel', 'maxOutboundPerHost', 'maxInboundPerHost'] as const) {
    if (!Number.isSafeInteger(l[k]) || l[k] < 1) return `${k} must be a whole number ≥ 1`;
  }
  if (!(Number.isFinite(l.linkBudgetBytesPerSec) && l.linkBudgetBytesPerSec >= 0)) return 'linkBudgetBytesPerSec must be ≥ 0 (0 = no budget)';
  return null;
}
