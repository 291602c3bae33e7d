/**
 * MigrationWorkflow: one VM from a source host to a target host, as an operator's runbook.
 *
 *   choose the engine  — from the two hosts' own facts; different engines are refused
 *   prepare the target — its agent makes room and waits for the guest   (undo: abort it)
 *   prepare the source — dirty tracking on, the migration link up       (undo: roll back)
 *   static snapshot    — par-migrate: the bulk pass to shared storage, merged at the target
 *   pre-copy rounds    — one activity each, a policy decision after each
 *   switch             — stop-and-copy, or pause and resume on the target in post-copy
 *   post-copy          — the target pulls and the source pushes what is missing
 *   verify the target  — before the source lets go of its copy
 *   release the source — its paused copy is stopped
 *
 * The steps run over an engine port (engine.ts): emulated or QEMU, asked for capabilities,
 * never branched on by name. Before the switch any failure or cancel rolls back (saga.ts):
 * "rolled back" only when the source confirmed the guest runs there. After the switch the
 * migration only moves forward.
 */
import { ApplicationFailure, CancellationScope, allHandlersFinished, condition, isCancellation, patched, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { HostActivities } from '../activities/host';
import type { StepRef, VerifyResult } from '../activities/types';
import { hostQueue } from '../common/names';
import { armOnMerge, decide, holdForMerge, lambdaOf, staticDataDecision, staticWorthBytes } from '../policy';
import { mayPostcopy, usesParMigrate, type Decision, type IterationStat, type PolicyConfig, type PolicyState, type SwitchRule } from '../policy/types';
import { ArmedSwitch } from './armed-switch';
import { audited } from './audit';
import { Journal, progressOf, registerControls } from './controls';
import { engineFor, type Engine, type EngineName, type RoundResult, type VmFacts } from './engine';
import { emulatedEngine } from './engine-emulated';
import { qemuEngine } from './engine-qemu';
import { validate, type MigrationInput } from './migration-input';
import { reportHead, verificationOf, type MigrationReport, type ReportIteration } from './report';
import { agentWaits } from './agent-waits';
import { StaticSnapshot } from './static-snapshot';
import { PAR_ROUND_START_PATCH, ParRounds, type StartWhen } from './par-rounds';

import { failureMessage, rollbackReason, runUndos, type Undo } from './saga';

export { failureMessage };
export type { MigrationInput };


/** Marks runs of the one runbook; histories without it replay the order they were recorded with. */
export const ONE_RUNBOOK_PATCH = 'ferry-one-runbook';
/** Marks runs whose as-hybrid/pa-hybrid default to ferry's switch rule. */
export const SWITCH_RULE_PATCH = 'ferry-switch-rule';
/** Marks runs whose stop-and-copy test counts the pause's measured overhead. */
export const DOWNTIME_PATCH = 'ferry-downtime-promise';
/** Marks runs that hold par-migrate's rounds the rule would not send until the static merge is done. */
export const HOLD_FOR_MERGE_PATCH = 'ferry-hold-for-merge';
/** Engines whose passes run on by themselves (QEMU): decide when the merge completes, not at the next pass's end. */
export const DECIDE_ON_MERGE_PATCH = 'ferry-decide-on-merge';
/** Engines that can be armed (QEMU): the source switches the moment the merge is done, as decided before. */
export const ARMED_SWITCH_PATCH = 'ferry-armed-switch';
/** Marks runs whose stop-and-copy test also counts the pages dirtied between the round's end and the pause. */
export const PAUSE_LEAD_PATCH = 'ferry-pause-lead';
/** Marks runs where par-migrate counts the guest's non-zero pages first and skips StaticData when the bulk pass is shorter than a round worth sending. */
export const STATIC_WORTH_PATCH = 'ferry-static-worth';
const facts = (host: string, agentTimeoutMs: number | undefined) =>
  proxyActivities<HostActivities>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '20s',
    scheduleToStartTimeout: agentWaits(agentTimeoutMs).preSwitch.pickUpMs,
    retry: { maximumAttempts: 3, initialInterval: '500ms', maximumInterval: '5s' },
  });

const ENGINES: Record<EngineName, typeof emulatedEngine> = { emulated: emulatedEngine, qemu: qemuEngine };

export async function migrationWorkflow(input: MigrationInput): Promise<MigrationReport> {
  return audited(input, () => {
    validate(input);
    return new Runbook(input).run();
  });
}

type Ending = 'stop-and-copy' | 'switch-to-postcopy';

class Runbook {
  private readonly info = workflowInfo();
  private readonly ref: StepRef;
  private readonly startedAt = Date.now();
  private readonly journal = new Journal(this.startedAt);
  /** Replaying a history recorded before the one runbook: keep the order it was recorded with. */
  private readonly legacy = !patched(ONE_RUNBOOK_PATCH);
  /** Unset in the input: ferry's rule, except in histories recorded before the choice existed. */
  private readonly switchRule: SwitchRule;
  private readonly countsPauseOverhead: boolean;
  private readonly countsPauseLead: boolean;
  private readonly holdsForMerge: boolean;
  /** par-migrate's round pacing while StaticData is saved and merged. */
  private readonly parRounds: ParRounds;
  private readonly par: boolean;
  private readonly pbdataMode: 'sync' | 'async' | 'off';
  private engine: Engine | null = null;

  // ---- what the progress query and the report show -------------------------------------
  private bandwidth: number;
  private vmFacts: VmFacts | null = null;
  private remainingPages = 0;
  private startedAtMs = this.startedAt;
  private endedAtMs: number | null = null;
  private ending: Ending = 'stop-and-copy';
  private verification: VerifyResult | null = null;

  // ---- rollback ---------------------------------------------------------------------------
  private readonly undos: Undo[] = [];
  private cancelRequest: { by?: string; reason?: string } | null = null;
  private scope: CancellationScope | null = null;
  private sourceTouched = false;
  /** Before anything was touched: the source's own facts (or describe) said the guest is there. */
  private sourceHasGuest = false;
  private sourceAnswer: { guestRunning: boolean; note: string; verification: VerifyResult | null } | null = null;
  private refused = false;

  // ---- par-migrate's channel-1 ------------------------------------------------------------
  private readonly staticData: StaticSnapshot;
  /** Why par-migrate went without StaticData for this guest (staticDataDecision), if it did. */
  private staticSkipped: string | null = null;
  /** The switch armed on the source for the merge's completion (engines with caps.armedSwitch). */
  private readonly arm = new ArmedSwitch();

  constructor(private readonly input: MigrationInput) {
    const info = this.info;
    this.ref = { migrationId: `${info.workflowId}.${info.runId.slice(0, 8)}`, vm: input.vm };
    this.par = usesParMigrate(input.strategy);
    this.pbdataMode = mayPostcopy(input.strategy) ? input.options.pbdata : 'off';
    this.bandwidth = input.options.bandwidthBytesPerSec;
    this.staticData = new StaticSnapshot(this.par);
    this.switchRule = input.options.switchRule ?? (patched(SWITCH_RULE_PATCH) ? 'ferry' : 'paper');
    this.countsPauseOverhead = patched(DOWNTIME_PATCH);
    this.countsPauseLead = this.countsPauseOverhead && patched(PAUSE_LEAD_PATCH);
    this.holdsForMerge = this.par && patched(HOLD_FOR_MERGE_PATCH);
    this.parRounds = new ParRounds({
      par: this.par,
      roundStart: this.par && patched(PAR_ROUND_START_PATCH),
      staticData: this.staticData,
      guest: () => this.vmFacts!,
      bandwidth: () => this.bandwidth,
    });
    this.registerControls();
  }

  async run(): Promise<MigrationReport> {
    try {
      await CancellationScope.cancellable(async () => {
        this.scope = CancellationScope.current();
        this.engine = await this.chooseEngine();
        await this.describeVm();
        await this.prepareTarget();
        await this.prepareSource();
        this.startStaticSnapshot();
        this.ending = await this.precopyRounds();
        await this.staticData.finish();
        await this.switchOver();
      });
    } catch (err) {
      if (this.journal.switched || this.refused) throw err;
      if (!this.legacy) await this.staticData.stop();
      return this.rollBack(err);
    }
    return CancellationScope.nonCancellable(() => this.afterTheSwitch());
  }

  // ---- the steps ----------------------------------------------------------------------

  private async chooseEngine(): Promise<Engine> {
    const { vm, source, target, strategy } = this.input;
    let name: EngineName = this.input.driver ?? 'emulated';
    if (!this.legacy) {
      const [s, t] = await Promise.all([facts(source, this.input.options.agentTimeoutMs).hostFacts(), facts(target, this.input.options.agentTimeoutMs).hostFacts()]);
      this.sourceHasGuest = s.vms.some((v) => v.name === vm && v.state !== 'incoming');
      const choice = engineFor(vm, strategy, s, t);
      if ('refused' in choice) {
        this.refused = true;
        throw ApplicationFailure.nonRetryable(`refused before anything moved: ${choice.refused}`, 'InvalidInput');
      }
      name = choice.engine;
    }
    return ENGINES[name]({ ref: this.ref, source, target, strategy, options: this.input.options });
  }

  private async describeVm(): Promise<void> {
    // par-migrate: whether StaticData is worth it depends on how much of the guest is not zero.
    const countUpTo = this.par && this.engine!.caps.staticSnapshot && patched(STATIC_WORTH_PATCH) ? staticWorthBytes(this.bandwidth) : 0;
    this.vmFacts = await this.engine!.describe(countUpTo > 0 ? { countNonZeroUpToBytes: countUpTo } : undefined);
    this.sourceHasGuest = true;
    this.remainingPages = this.vmFacts.pageCount;
  }

  private async prepareTarget(): Promise<void> {
    const engine = this.engine!;
    this.undos.push({ what: `abort on ${this.input.target}`, run: () => engine.abortTarget() });
    await engine.prepareTarget(this.vmFacts!);
  }

  private async prepareSource(): Promise<void> {
    const engine = this.engine!;
    this.sourceTouched = true;
    this.undos.push({
      what: `roll back on ${this.input.source}`,
      run: async () => {
        this.sourceAnswer = await engine.rollbackSource();
      },
    });
    const asked = this.bandwidth;
    this.startedAtMs = (await engine.prepareSource(asked)).startedAtMs;
    this.journal.setPhase('precopy');
    // A set-bandwidth accepted while the source was being prepared reaches it now.
    if (!this.legacy && this.bandwidth !== asked) await engine.setBandwidth(this.bandwidth);
  }

  /** par-migrate: channel-1 (the snapshot to shared storage, merged at the target) runs beside the rounds. */
  private startStaticSnapshot(): void {
    const engine = this.engine!;
    if (!this.par || !engine.caps.staticSnapshot) return;
    const f = this.vmFacts!;
    if (f.nonZeroPages !== undefined) {
      const worth = staticDataDecision({ nonZeroPages: f.nonZeroPages, pageCount: f.pageCount, pageSize: f.pageSize, bandwidthBytesPerSec: this.bandwidth, zeroElision: this.input.options.zeroElision });
      if (!worth.save) {
        this.staticData.skip();
        this.staticSkipped = worth.reason;
        this.journal.record({ action: 'continue', reason: `continue at iteration 1: ${worth.reason}` });
        return;
      }
    }
    this.undos.push({ what: 'remove StaticData/PbData', run: () => engine.removeStaticData() });
    this.staticData.start(engine, this.input.target);
  }

  /**
   * Pre-copy: one round per activity, a decision before each round after the first. While
   * par-migrate's merge runs, only the max-iterations valve applies (MECHANISM.md).
   */
  private async precopyRounds(): Promise<Ending> {
    try {
      return await this.precopyLoop();
    } finally {
      // Whatever ended pre-copy, the source must not switch on its own any more.
      if (this.arm.armed && (await CancellationScope.nonCancellable(() => this.arm.disarm()))) {
        this.journal.switched = true; // it switched as the runbook was stopped: post-copy runs, nothing is rolled back
      }
    }
  }

  private async precopyLoop(): Promise<Ending> {
    const { strategy, options } = this.input;
    const { journal } = this;
    // After waiting for the merge, the last round's dirty count is stale: run one more
    // round before deciding, so every decision sees the dirty log as it is.
    let statsStale = false;
    let bulkNext = false;
    for (let i = 1; ; i++) {
      if (this.staticData.saveFailed()) {
        const abandoned = this.staticData.abandon();
        journal.record({ action: 'continue', reason: `continue at iteration ${i}: ${abandoned}; every page goes over channel-2 in this round instead` });
        await this.engine!.removeStaticData().catch(() => undefined);
        bulkNext = true;
      }
      // The valve bounds the rounds even while StaticData is still being merged: no more
      // rounds; wait for the merge (or the save's failure), then decide.
      if (this.staticData.merged === false && !bulkNext && journal.iterations.length >= options.maxIterations) {
        await this.staticData.settled();
        statsStale = false;
        if (!this.staticData.merged) {
          i--; // the save failed: redo this boundary (the bulk round comes next)
          continue;
        }
      }
      if ((i > 1 && !statsStale) || strategy === 'postcopy') {
        const d = this.decide(i);
        const armWith = d.action === 'continue' ? this.armDecision() : null;
        if (armWith) {
          this.arm.arm(this.engine!, armWith);
          journal.record({ action: 'continue', reason: `${d.reason}; armed: once merged, ${armWith.reason} — the source switches the moment the merge is done` });
        } else if (this.arm.armed && (await this.arm.disarm())) {
          return this.armedEnding();
        }
      }
      if (((i > 1 && !statsStale) || strategy === 'postcopy') && !this.arm.armed) {
        const d = this.decide(i);
        const hold = d.action === 'continue' && this.mayHoldForMerge() ? holdForMerge(this.policyState(), this.policyConfig()) : null;
        journal.record(hold ? { action: 'continue', reason: hold } : d);
        if (d.action !== 'continue') return d.action;
        if (hold) {
          await this.staticData.settled(() => journal.forcedBy !== null);
          if (journal.forcedBy) {
            const forced = this.decide(i);
            journal.record(forced);
            if (forced.action !== 'continue') return forced.action;
          }
          if (this.staticData.merged) statsStale = true;
          if (this.staticData.saveFailed()) {
            i--; // the save failed: redo this boundary (the bulk round comes next)
            continue;
          }
        }
      }
      journal.roundInFlight = true;
      const bulk = (i === 1 && this.staticData.merged === null) || bulkNext;
      const r = await this.awaitRound(i, bulk, bulk ? undefined : this.parRounds.startWhen()).finally(() => (journal.roundInFlight = false));
      if (r.kind === 'decided') return r.action;
      if (r.kind === 'converged') {
        journal.record({ action: 'stop-and-copy', reason: r.reason });
        return 'stop-and-copy';
      }
      if (bulkNext) {
        bulkNext = false;
        this.staticData.merged = true; // every page is on the target: the policy's tests apply
      }
      const it = r.iteration;
      journal.iterations.push({ ...it, lambda: lambdaOf(it), startedAtMs: it.finishedAtMs - it.durationMs });
      this.remainingPages = it.dirtyAfter;
      statsStale = await this.parRounds.afterRound(it.pages);
    }
  }

  /**
   * One pre-copy round. Where the engine's passes run on by themselves (QEMU: ferry only
   * watches them) and only the merge held the decision, the decision is taken the moment the
   * merge completes, from the rounds measured so far — not a whole pass later, at the end of
   * the round in flight. A decision to end pre-copy there stops watching that round.
   */
  private async awaitRound(i: number, bulk: boolean, startWhen?: StartWhen): Promise<RoundResult | { kind: 'decided'; action: Ending }> {
    const engine = this.engine!;
    const watchMerge = i > 1 && !bulk && this.par && engine.caps.passesRunOn && this.staticData.merged === false && this.staticData.running && this.staticData.saveError === null;
    if (!watchMerge || !patched(DECIDE_ON_MERGE_PATCH)) return engine.round(i, bulk, startWhen);
    const scope = new CancellationScope();
    let settled: { ok: true; r: RoundResult } | { ok: false; err: unknown } | null = null;
    const round = scope.run(() => engine.round(i, bulk, startWhen));
    round.then(
      (r) => (settled = { ok: true, r }),
      (err: unknown) => (settled = { ok: false, err }),
    );
    await condition(() => settled !== null || this.staticData.merged === true || this.arm.fired);
    // Armed: when the merge is done or the round ended (QEMU may have switched under it), hear the source first.
    if (this.arm.armed && (this.staticData.merged || (settled !== null && !(settled as { ok: boolean }).ok))) await condition(() => this.arm.settled);
    if (this.arm.fired) {
      scope.cancel();
      await round.catch(() => undefined);
      await this.arm.disarm();
      return { kind: 'decided', action: this.armedEnding() };
    }
    if (settled === null) {
      const d = this.decide(i);
      const at = `the StaticData merge completed during round ${i}`;
      if (d.action !== 'continue') {
        this.journal.record({ ...d, reason: `${d.reason} (${at})` });
        scope.cancel();
        await round.catch(() => undefined);
        return { kind: 'decided', action: d.action };
      }
      this.journal.record({ action: 'continue', reason: `${d.reason} (${at}; round ${i} goes on)` });
      await condition(() => settled !== null);
    }
    const s = settled as unknown as { ok: true; r: RoundResult } | { ok: false; err: unknown };
    if (!s.ok) throw s.err;
    return s.r;
  }

  /**
   * The decision to arm the source with at this boundary: the switch the rule will take once
   * merged, where the engine can carry it out itself (null: do not arm, or disarm).
   */
  private armDecision(): Decision | null {
    const engine = this.engine!;
    if (!engine.caps.armedSwitch || !engine.caps.passesRunOn || this.journal.forcedBy) return null;
    if (!this.staticData.inProgress()) return null;
    const d = armOnMerge(this.policyState(), this.policyConfig());
    return d && patched(ARMED_SWITCH_PATCH) ? d : null;
  }

  /** The armed switch fired: record the decision it carried out. */
  private armedEnding(): Ending {
    const d = this.arm.decision!;
    this.journal.record({ ...d, reason: `${d.reason} (armed before the merge completed; the source ${this.arm.note})` });
    this.journal.setPhase('switching'); // the source has switched: a cancel is refused from here, as during the switch step
    return 'switch-to-postcopy';
  }

  private decide(i: number): Decision {
    if (this.journal.forcedBy) return { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${i}: forced by ${this.journal.forcedBy}` };
    return decide(this.policyState(), this.policyConfig());
  }

  /** What the policy sees at a boundary: the rounds so far, what is dirty, whether StaticData is merged. */
  private policyState(): PolicyState {
    const timing = this.countsPauseOverhead || this.countsPauseLead ? this.engine!.pauseTiming(this.journal.iterations) : {};
    const overhead = this.countsPauseOverhead ? timing.overheadMs : undefined;
    const measured = this.countsPauseLead ? timing.leadMs : undefined;
    // A short wait for the merge after the last round adds to the time before the pause.
    const waited = this.parRounds.waitedMs;
    const lead = this.countsPauseLead && waited > 0 ? (measured ?? 0) + waited : measured;
    return {
      iterations: this.journal.iterations.map(toStat),
      remainingPages: this.remainingPages,
      staticMerged: this.staticData.merged ?? true,
      ...(overhead !== undefined ? { pauseOverheadMs: overhead } : {}),
      ...(lead !== undefined ? { pauseLeadMs: lead } : {}),
    };
  }

  private policyConfig(): PolicyConfig {
    const { strategy, options } = this.input;
    const f = this.vmFacts!;
    return {
      strategy,
      pageSize: f.pageSize,
      pageCount: f.pageCount,
      maxDowntimeMs: options.maxDowntimeMs,
      maxIterations: options.maxIterations,
      bandwidthBytesPerSec: this.bandwidth || 1e12,
      switchRule: this.switchRule,
      ...(options.switchAfterRounds ? { switchAfterRounds: options.switchAfterRounds } : {}),
    };
  }

  /** A round may be held for the merge only while StaticData is still being saved and merged. */
  private mayHoldForMerge(): boolean {
    return this.holdsForMerge && this.staticData.inProgress();
  }

  private async switchOver(): Promise<void> {
    const engine = this.engine!;
    if (this.ending === 'stop-and-copy') {
      this.journal.setPhase('stop-and-copy');
      await engine.stopAndCopy();
      this.remainingPages = 0;
    } else {
      this.journal.setPhase('switching');
      this.remainingPages = (await engine.switchToPostcopy(this.pbdataMode)).missingPages;
    }
    this.journal.switched = true;
  }

  private async afterTheSwitch(): Promise<MigrationReport> {
    const engine = this.engine!;
    const notes: string[] = [];
    if (this.ending === 'switch-to-postcopy') {
      this.journal.setPhase('postcopy');
      const end = await engine.postcopy(this.pbdataMode, this.startedAt);
      if (!end.done) {
        this.endedAtMs = Date.now();
        return this.end('failed', end.why);
      }
      if (end.note) notes.push(end.note);
    }
    this.journal.setPhase('verifying');
    if (this.legacy && engine.name === 'emulated') {
      // Recorded before verify-then-release: the order those histories hold.
      await this.releaseSource(notes);
      this.verification = await engine.verifyTarget();
    } else {
      this.verification = await engine.verifyTarget();
      if (this.verification.ok || this.legacy) await this.releaseSource(notes);
    }
    if (this.par || this.pbdataMode !== 'off') await engine.cleanupTargetStorage();
    await this.staticData.saveDone();
    const v = this.verification;
    if (!v.ok) {
      const kept = this.legacy ? '' : `; the paused copy on ${this.input.source} is kept for an operator`;
      return this.end('failed', `${this.input.vm} runs on ${this.input.target} but verification found ${v.mismatches} bad page(s): ${v.firstMismatches.slice(0, 3).join('; ')}${kept}`);
    }
    if (this.staticData.abandoned) notes.unshift(`${this.staticData.abandoned}, every page went over channel-2`);
    if (this.staticSkipped) notes.unshift(this.staticSkipped);
    const how = `${this.ending === 'stop-and-copy' ? 'stop-and-copy' : 'post-copy'} after ${this.journal.iterations.length} iteration(s)`;
    const by = engine.caps.guestSelfCheck ? ' by the guest' : '';
    return this.end('completed', `${this.input.vm} runs on ${this.input.target}: ${how}, verified${by}${notes.map((n) => `; ${n}`).join('')}`);
  }

  private async releaseSource(notes: string[]): Promise<void> {
    const r = await this.engine!.releaseSource();
    this.endedAtMs = r.releasedAtMs;
    if (r.problem) notes.push(`${this.input.source} did not confirm releasing its paused copy (${r.problem}): check that host`);
  }

  /** Before the switch: undo every step, last first; "rolled back" only when the source confirmed the guest runs there. */
  private async rollBack(err: unknown): Promise<MigrationReport> {
    const { vm, source } = this.input;
    const why = rollbackReason(isCancellation(err), this.cancelRequest, this.journal.phase, err);
    this.journal.setPhase('rolling-back');
    const undoErrors = await runUndos(this.undos);
    this.endedAtMs = Date.now();
    const leftovers = undoErrors.length ? `; cleanup incomplete: ${undoErrors.join('; ')}` : '';
    const answer = this.sourceAnswer as Runbook['sourceAnswer'];
    // Untouched, the guest is where the source last said it was; if it has said nothing yet
    // (a cancel while its facts were asked for), ask it.
    let confirmed = this.sourceTouched ? answer?.guestRunning === true : this.legacy ? this.vmFacts !== null : this.sourceHasGuest;
    if (!confirmed && !this.sourceTouched && !this.legacy) confirmed = await this.askSourceForGuest();
    if (confirmed) return this.end('rolled-back', `${why}; rolled back, ${vm} runs on ${source}${leftovers}`);
    const known = answer
      ? answer.note
      : this.sourceTouched
        ? `the source ${source} did not answer the rollback`
        : `the source ${source} never answered, nothing was moved; ${vm}'s state there is unknown`;
    return this.end('failed', `${why}; rollback could not confirm ${vm} runs on ${source}: ${known}${leftovers}`);
  }

  private async askSourceForGuest(): Promise<boolean> {
    const { vm, source } = this.input;
    try {
      const f = await CancellationScope.nonCancellable(() => facts(source, this.input.options.agentTimeoutMs).hostFacts());
      return f.vms.some((v) => v.name === vm && v.state !== 'incoming');
    } catch {
      return false;
    }
  }

  private async end(outcome: MigrationReport['outcome'], reason: string): Promise<MigrationReport> {
    this.journal.setPhase(outcome);
    await condition(allHandlersFinished);
    return this.report(outcome, reason);
  }

  // ---- controls and report ------------------------------------------------------------

  private registerControls(): void {
    const { vm, source, target, strategy } = this.input;
    registerControls({
      vm,
      target,
      strategy,
      journal: this.journal,
      progress: () =>
        progressOf({
          id: this.info.workflowId,
          vm,
          source,
          target,
          strategy,
          phase: this.journal.phase,
          switched: this.journal.switched,
          iterations: this.journal.iterations,
          decisions: this.journal.decisions,
          remainingPages: this.remainingPages,
          pageCount: this.vmFacts?.pageCount ?? 0,
          pageSize: this.vmFacts?.pageSize ?? 4096,
          staticMerged: this.staticData.merged,
          bandwidthBytesPerSec: this.bandwidth,
          startedAt: this.startedAt,
        }),
      setBandwidth: async (rate) => {
        this.bandwidth = rate;
        if (this.journal.phase !== 'preparing' && this.engine) await this.engine.setBandwidth(rate);
      },
      bandwidthAfterSwitch: () => this.engine?.caps.bandwidthAfterSwitch ?? false,
      cancel: (req) => {
        this.cancelRequest = req;
        this.scope?.cancel();
      },
    });
  }

  private report(outcome: MigrationReport['outcome'], reason: string): MigrationReport {
    const { iterations, decisions } = this.journal;
    const f = this.vmFacts;
    const measured = this.engine?.report(this.journal.bytesSent());
    return {
      ...reportHead({
        workflowId: this.info.workflowId,
        runId: this.info.runId,
        input: this.input,
        workload: f?.workload ?? 'unknown',
        outcome,
        reason,
        pageSize: f?.pageSize ?? 4096,
        memoryBytes: f?.memoryBytes ?? 0,
        startedAtMs: this.startedAtMs,
        endedAtMs: this.endedAtMs,
      }),
      downtimeMs: measured?.downtimeMs ?? null,
      postcopyDurationMs: measured?.postcopyDurationMs ?? null,
      bytes: measured?.bytes ?? { migrationNetwork: 0, storageWrite: 0, storageRead: 0, total: 0 },
      iterations,
      decisions,
      stopAndCopy: measured?.stopAndCopy ?? null,
      static: measured?.static ?? null,
      postcopy: measured?.postcopy ?? null,
      verification: verificationOf(this.verification, this.sourceAnswer?.verification ?? null),
      ...(measured?.driver ? { driver: measured.driver } : {}),
      ...(measured?.recoveries ? { recoveries: measured.recoveries } : {}),
      ...(measured?.digests ? { digests: measured.digests } : {}),
    };
  }
}

function toStat(it: ReportIteration): IterationStat {
  return { index: it.index, pages: it.pages, durationMs: it.durationMs, bytes: it.bytes, dirtyAfter: it.dirtyAfter, ...(it.growth ? { growth: it.growth } : {}), ...(it.offLink ? { offLink: true } : {}) };
}
