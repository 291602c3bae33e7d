/**
 * The operator's controls of a migration, the same for every engine (emulated and QEMU):
 * the progress query, force-postcopy, set-bandwidth and cancel, with the refusals an operator
 * reads. The runbook keeps its state and says how each control acts on it.
 */
import { setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import { Phase as PhaseKey } from '../common/search-attributes';
import { estimateSendMs } from '../policy';
import { mayPostcopy, type Decision, type StrategyName } from '../policy/types';
import { cancelUpdate, forcePostcopyUpdate, progressQuery, setBandwidthUpdate, type Phase, type Progress } from './messages';
import type { ReportDecision, ReportIteration } from './report';

/** What a runbook knows at any moment; the progress query is computed from it. */
export interface RunbookState {
  id: string;
  vm: string;
  source: string;
  target: string;
  strategy: StrategyName;
  phase: Phase;
  switched: boolean;
  iterations: ReportIteration[];
  decisions: ReportDecision[];
  remainingPages: number;
  pageCount: number;
  pageSize: number;
  staticMerged: boolean | null;
  bandwidthBytesPerSec: number;
  startedAt: number;
}

export function bytesSentOf(iterations: readonly ReportIteration[]): number {
  return iterations.reduce((a, it) => a + it.bytes, 0);
}

export function progressOf(s: RunbookState): Progress {
  const eta = estimateSendMs(s.iterations, s.remainingPages, s.pageSize, s.bandwidthBytesPerSec || Infinity);
  return {
    id: s.id,
    vm: s.vm,
    source: s.source,
    target: s.target,
    strategy: s.strategy,
    phase: s.phase,
    switched: s.switched,
    iteration: s.iterations.length,
    remainingPages: s.remainingPages,
    pageCount: s.pageCount,
    bytesSent: bytesSentOf(s.iterations),
    lambdas: s.iterations.map((i) => i.lambda),
    staticMerged: s.staticMerged,
    bandwidthBytesPerSec: s.bandwidthBytesPerSec,
    etaMs: Number.isFinite(eta.bytesPerSec) && s.remainingPages > 0 ? Math.round(eta.ms) : null,
    elapsedMs: Date.now() - s.startedAt,
    lastDecision: s.decisions[s.decisions.length - 1] ?? null,
    iterations: s.iterations,
  };
}

/** A policy decision as the report and the progress query show it. */
export function decisionEntry(d: Decision, startedAt: number, iterations: readonly ReportIteration[]): ReportDecision {
  return { atMs: Date.now() - startedAt, iteration: iterations.length + 1, action: d.action, reason: d.reason };
}

/** The Phase search attribute, for `ferry status` and the Temporal UI. */
export function publishPhase(p: Phase): void {
  upsertSearchAttributes([{ key: PhaseKey, value: p }]);
}

/**
 * What every runbook records the same way: its phase (published as the Phase attribute),
 * whether the target runs the guest yet, an operator's request to force post-copy, and the
 * iterations and decisions of the report.
 */
export class Journal {
  phase: Phase = 'preparing';
  /** The target runs the guest: cancel is refused from here on. */
  switched = false;
  /** Who asked to switch to post-copy at the next boundary. */
  forcedBy: string | null = null;
  /** A pre-copy round is running: the next boundary comes after it. */
  roundInFlight = false;
  readonly iterations: ReportIteration[] = [];
  readonly decisions: ReportDecision[] = [];

  constructor(private readonly startedAt: number) {}

  setPhase(p: Phase): void {
    this.phase = p;
    publishPhase(p);
  }

  record(d: Decision): void {
    this.decisions.push(decisionEntry(d, this.startedAt, this.iterations));
  }

  bytesSent(): number {
    return bytesSentOf(this.iterations);
  }

  /** Switch to post-copy at the next boundary; returns the iteration its decision is taken at. */
  force(by: string): number {
    this.forcedBy = by;
    return this.iterations.length + (this.roundInFlight ? 2 : 1);
  }
}

export interface ControlHooks {
  vm: string;
  target: string;
  strategy: StrategyName;
  journal: Journal;
  progress(): Progress;
  /** Apply a new migration-network cap (bytes/s, 0 = uncapped). */
  setBandwidth(rate: number): Promise<void>;
  /** Whether the engine also paces post-copy (QEMU does; the emulated post-copy is paced by faults). */
  bandwidthAfterSwitch(): boolean;
  cancel(req: { by?: string; reason?: string }): void;
}

export function registerControls(h: ControlHooks): void {
  const { vm, target, strategy, journal } = h;
  setHandler(progressQuery, () => h.progress());

  setHandler(forcePostcopyUpdate, (req) => ({ accepted: true as const, atIteration: journal.force(req.by ?? 'operator') }), {
    validator: (_req) => {
      const phase = journal.phase;
      if (!mayPostcopy(strategy)) throw new Error(`strategy ${strategy} never switches to post-copy; migrate with a hybrid strategy to force one`);
      if (journal.switched || phase === 'stop-and-copy' || phase === 'switching') throw new Error(`migration of ${vm} is past the switch point (phase ${phase})`);
      if (phase === 'rolling-back' || phase === 'rolled-back') throw new Error(`migration of ${vm} is ${phase}`);
    },
  });

  setHandler(
    setBandwidthUpdate,
    async (rate) => {
      await h.setBandwidth(rate);
      return { bandwidthBytesPerSec: rate };
    },
    {
      validator: (rate) => {
        const phase = journal.phase;
        if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0) throw new Error('bandwidth must be a number of bytes/s ≥ 0 (0 = uncapped)');
        if (rate > 0 && rate < 64 * 1024) throw new Error('bandwidth below 64 KiB/s would never converge; use at least 64KiB/s');
        if ((journal.switched && !h.bandwidthAfterSwitch()) || ['completed', 'rolled-back', 'failed'].includes(phase)) throw new Error(`migration of ${vm} is ${phase}: nothing to pace`);
      },
    },
  );

  setHandler(
    cancelUpdate,
    (req) => {
      h.cancel(req);
      return { accepted: true as const };
    },
    {
      validator: (_req) => {
        const phase = journal.phase;
        if (journal.switched || phase === 'postcopy' || phase === 'verifying') {
          throw new Error(`refused: ${vm} already runs on ${target} (phase ${phase}); after the switch a migration only moves forward`);
        }
        if (['completed', 'rolled-back', 'failed', 'rolling-back'].includes(phase)) throw new Error(`migration of ${vm} is ${phase}`);
      },
    },
  );
}
