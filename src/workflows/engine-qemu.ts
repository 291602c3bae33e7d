/**
 * The QEMU engine: stock QEMU moves the pages itself; ferry decides when pre-copy ends.
 *
 * - the target's QEMU waits for the stream (`-incoming defer`), the source migrates with a
 *   bandwidth cap and a tiny downtime limit, so ferry's policy, not QEMU's estimate, ends
 *   pre-copy; one round = one pass (MIGRATION_PASS, the dirty-bitmap sync);
 * - stop-and-copy raises the downtime limit; the switch is migrate-start-postcopy;
 * - when post-copy stalls or breaks, both sides are paused and the stream resumes over the
 *   second network (migrate-recover / resume);
 * - the guest checks its own memory and reports on the target's serial console;
 * - par-migrate and pa-hybrid: QEMU migrates into the source agent's relay, which sends the
 *   bulk pass to StaticData over the storage network and the rest to the target agent's relay,
 *   which merges StaticData into the target QEMU — its RAM file, or its stream (qemu-relay.ts,
 *   docs/design/qemu-stream.md).
 *
 * Activities: src/activities/qemu-source.ts and qemu-target.ts.
 */
import { ActivityCancellationType, ApplicationFailure, patched, proxyActivities } from '@temporalio/workflow';
import type { QemuActivities, QemuOutcome } from '../activities/qemu';
import type { StaticMergeResult, StaticSaveResult, VerifyResult } from '../activities/types';
import { hostQueue } from '../common/names';
import { mayPostcopy, usesParMigrate } from '../policy/types';
import { ENGINE_CAPS, type Engine, type EngineReport, type PostcopyEnd, type RoundResult, type VmFacts } from './engine';
import type { EngineArgs } from './engine-emulated';
import type { MigrationReport } from './report';
import { agentWaits, type AgentWaits } from './agent-waits';
import { failureMessage } from './saga';

/** How long post-copy may make no progress before ferry recovers it over the second network. */
export const DEFAULT_STALL_MS = 3000;
/** Recoveries per migration before ferry gives up and reports the guest split between hosts. */
const MAX_RECOVERIES = 5;
/**
 * Workflows from this version on ask the target whether it completed when the source cannot be
 * paused (it sent its last page and waits for the target's word) or failed after the switch.
 */
export const TARGET_FINISHED_PATCH = 'ferry-qemu-target-finished';
/** How long to wait for the target to complete once the source has nothing left to send. */
const TARGET_FINISH_WAIT_MS = 30_000;
/** How long to wait for the target to complete once the source's migration failed after the switch. */
const TARGET_FAILED_SOURCE_WAIT_MS = 10_000;

function steps(host: string, startToCloseTimeout: string, attempts: number, w: AgentWaits) {
  return proxyActivities<QemuActivities>({
    taskQueue: hostQueue(host),
    startToCloseTimeout,
    scheduleToStartTimeout: w.preSwitch.pickUpMs,
    // QEMU's steps heartbeat from the agent's QMP polling: the longer of the waits.
    heartbeatTimeout: w.targetAfterSwitch.heartbeatMs,
    retry: { maximumAttempts: attempts, initialInterval: '500ms', maximumInterval: '5s', nonRetryableErrorTypes: ['InvalidInput', 'NotFound', 'Conflict', 'InsufficientCapacity', 'UsageError'] },
  });
}

/**
 * The armed switch: one attempt (the workflow's own switch step follows anyway), a short
 * heartbeat so a disarm reaches the agent quickly, and a cancel that waits for the agent's
 * answer — it may have switched just before.
 */
function armedStep(host: string, w: AgentWaits) {
  return proxyActivities<QemuActivities>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '2h',
    scheduleToStartTimeout: w.preSwitch.pickUpMs,
    heartbeatTimeout: '3s',
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: { maximumAttempts: 1 },
  });
}

type Described = Awaited<ReturnType<QemuActivities['qemuDescribe']>>;
type Verified = Awaited<ReturnType<QemuActivities['qemuVerifyTarget']>>;

export function qemuEngine({ ref, source, target, strategy, options }: EngineArgs): Engine {
  const w = agentWaits(options.agentTimeoutMs);
  const src = steps(source, '10m', 4, w);
  const tgt = steps(target, '10m', 4, w);
  const srcLong = steps(source, '2h', 2, w);
  const tgtLong = steps(target, '2h', 2, w);
  const cleanupS = steps(source, '2m', 3, w);
  const cleanupT = steps(target, '2m', 3, w);
  const fwdS = steps(source, '2h', 20, w);
  const armed = armedStep(source, w);
  const fwdT = steps(target, '2h', 20, w);
  const stallMs = options.faultTimeoutMs && options.faultTimeoutMs > 0 ? options.faultTimeoutMs : DEFAULT_STALL_MS;
  const pageSize = 4096;
  const relayed = usesParMigrate(strategy);
  /** Relayed post-copy sends its background pages through PbData on shared storage (relay/source-relay.ts). */
  const pbdata = relayed && mayPostcopy(strategy) && options.pbdata !== 'off';

  let desc: Described | null = null;
  let prep: { uri: string; tls: boolean; relay?: { host: string; port: number; grant?: { keyId: string; nonce: string }; token?: string } } | null = null;
  let save: (StaticSaveResult & { divertedWireBytes: number }) | null = null;
  let merge: StaticMergeResult | null = null;
  let outcome: QemuOutcome | null = null;
  let switched: 'stop-and-copy' | 'postcopy' | null = null;
  let verified: Verified | null = null;
  const recoveries: NonNullable<MigrationReport['recoveries']> = [];
  /** The target completed while the source never heard so (its link died after its last page). */
  let targetCompleted = false;

  return {
    name: 'qemu',
    caps: ENGINE_CAPS.qemu,

    async describe(): Promise<VmFacts> {
      desc = await src.qemuDescribe({ vm: ref.vm });
      return { workload: desc.workload, memoryBytes: desc.memoryBytes, pageCount: desc.pageCount, pageSize: desc.pageSize, vcpus: desc.vcpus };
    },
    async prepareTarget(vm: VmFacts): Promise<void> {
      const d = desc!;
      prep = await tgt.qemuPrepareTarget({
        ...ref,
        source,
        memoryBytes: vm.memoryBytes,
        vcpus: vm.vcpus,
        workload: vm.workload,
        seed: d.seed,
        rate: d.rate,
        postcopy: mayPostcopy(strategy),
        ...(relayed ? { relay: true, strategy } : {}),
        ...(pbdata ? { pbdata: true } : {}),
        ...(d.qemuArgs ? { qemuArgs: d.qemuArgs } : {}),
        ...(d.tlsCommonName ? { sourceTlsCommonName: d.tlsCommonName } : {}),
      });
    },
    abortTarget: () => cleanupT.qemuAbortTarget(ref),
    async prepareSource(bandwidthBytesPerSec: number) {
      const p = prep!;
      const started = await src.qemuStart({
        ...ref,
        uri: p.uri,
        strategy,
        options: { ...options, bandwidthBytesPerSec },
        target,
        // Both legs check it: QEMU's own TLS, or the relays' link with the same cluster certificates.
        ...(p.tls !== undefined ? { targetTls: p.tls } : {}),
        ...(p.relay ? { relay: p.relay } : {}),
        ...(pbdata ? { pbdata: true } : {}),
      });
      return { startedAtMs: started.startedAtMs };
    },
    rollbackSource: () => cleanupS.qemuRollback(ref),
    setBandwidth: (bandwidthBytesPerSec: number) => cleanupS.qemuSetBandwidth({ ...ref, bandwidthBytesPerSec }),

    async saveStatic() {
      save = await srcLong.qemuSaveStatic(ref);
      return { bytesWritten: save.bytesWritten };
    },
    async mergeStatic() {
      merge = await tgtLong.qemuMergeStatic(ref);
      return merge;
    },
    removeStaticData: () => cleanupS.qemuRemoveStatic(ref),

    async round(index: number, bulk: boolean): Promise<RoundResult> {
      if (bulk && relayed) {
        // QEMU sent its bulk pass once, into the relay: it cannot be asked to send it again.
        throw ApplicationFailure.nonRetryable(
          `StaticData failed and QEMU's bulk pass cannot be resent over the migration network: the relay diverted it to StaticData; rolled back (use as-hybrid where shared storage is unreliable)`,
          'StaticDataLost',
        );
      }
      const r = await srcLong.qemuAwaitPass({ ...ref, index });
      if (r.kind === 'finished') {
        if (r.status !== 'completed') throw new Error(`QEMU ended the migration (${r.status})${r.error ? `: ${r.error}` : ''}`);
        return { kind: 'converged', reason: `stop-and-copy at iteration ${index}: QEMU found nothing left to send within its limit` };
      }
      return { kind: 'round', iteration: r.iteration };
    },

    async stopAndCopy() {
      outcome = await src.qemuStopAndCopy(ref);
      switched = 'stop-and-copy';
    },
    switchWhenMerged: () => armed.qemuSwitchWhenMerged(ref),
    async switchToPostcopy() {
      outcome = await src.qemuSwitchToPostcopy(ref);
      switched = 'postcopy';
      // QEMU moves the rest itself: the runbook has no missing-page count to show.
      return { missingPages: 0 };
    },

    /** Wait for the end; when post-copy stalls or breaks, pause both ends and resume over the second network. */
    async postcopy(_pbdata, workflowStartedAt: number): Promise<PostcopyEnd> {
      const asksTarget = patched(TARGET_FINISHED_PATCH);
      /** The target completed its incoming migration (within waitMs): the guest is whole there. */
      const targetFinished = async (why: string, waitMs: number): Promise<PostcopyEnd | null> => {
        const t = await fwdT.qemuIncomingStatus({ ...ref, waitMs });
        if (t.status !== 'completed') return null;
        targetCompleted = true;
        return { done: true, note: `the target completed the migration; the source never heard (${why})` };
      };
      for (;;) {
        const c = await fwdS.qemuAwaitCompletion({ ...ref, stallMs });
        outcome = c.outcome;
        if (c.kind === 'completed') {
          return { done: true, note: recoveries.length ? `recovered ${recoveries.length}× over the second network` : null };
        }
        const split = (why: string): PostcopyEnd => ({
          done: false,
          why: `post-copy of ${ref.vm} could not finish (${why}) after ${recoveries.length} recover${recoveries.length === 1 ? 'y' : 'ies'}: the guest is split between ${source} and ${target}; both QEMUs are kept for an operator`,
        });
        if (c.kind === 'failed') {
          // The source may have failed after its last page (its return path broke while it waited
          // for the target's word): the target can still have it all, or be about to.
          return (asksTarget ? await targetFinished(c.why, TARGET_FAILED_SOURCE_WAIT_MS) : null) ?? split(c.why);
        }
        if (recoveries.length >= MAX_RECOVERIES) return split(c.why);
        const atMs = Date.now() - workflowStartedAt;
        const paused = await fwdS.qemuPause(asksTarget ? { ...ref, side: 'source' } : ref);
        if (asksTarget && paused.status !== 'postcopy-paused' && paused.status !== 'completed') {
          // Nothing left to send (completing) or already failed: QEMU cannot resume it over another
          // network. The guest is whole on the target if the end of the stream reached it.
          const why = paused.status === 'completing' ? `${c.why}; the source had sent its last page and waits for the target's word, where QEMU cannot pause` : `${c.why}; the source QEMU's migration is ${paused.status}`;
          return (await targetFinished(why, TARGET_FINISH_WAIT_MS)) ?? split(`${why}, and the target did not complete within ${TARGET_FINISH_WAIT_MS / 1000} s`);
        }
        await fwdT.qemuPause(ref);
        const rec = await fwdT.qemuRecoverTarget({ ...ref, useFallback: true });
        await fwdS.qemuResume({ ...ref, uri: rec.uri });
        recoveries.push({ atMs, reason: c.why, uri: rec.uri, resumedAfterMs: Date.now() - workflowStartedAt - atMs });
      }
    },

    async verifyTarget(): Promise<VerifyResult> {
      verified = await fwdT.qemuVerifyTarget({ ...ref, passes: 2 });
      return verified;
    },

    async releaseSource() {
      try {
        const r = await fwdS.qemuRelease(targetCompleted ? { ...ref, targetCompleted } : ref);
        return { releasedAtMs: outcome?.completedAtMs ?? r.releasedAtMs, problem: null };
      } catch (err) {
        return { releasedAtMs: outcome?.completedAtMs ?? Date.now(), problem: failureMessage(err) };
      }
    },

    cleanupTargetStorage: () => (relayed ? cleanupT.qemuRemoveStatic(ref).then(() => undefined) : Promise.resolve()),

    /** QEMU pauses inside its own completion (no round trip of ferry's in the pause): nothing to add. */
    pauseTiming: () => ({}),

    report(sentInRounds: number): EngineReport {
      // Relayed: QEMU counted the bulk pass it wrote into the relay; StaticData carried it instead.
      // With PbData, post-copy's background pages went to shared storage too.
      const pb = outcome?.pbdata ?? null;
      const net = Math.max(0, (outcome?.transferredBytes ?? sentInRounds) - (save?.divertedWireBytes ?? 0) - (pb?.wireBytes ?? 0));
      const storageWrite = (save?.bytesWritten ?? 0) + (pb?.bytesWritten ?? 0);
      const storageRead = (merge?.bytesRead ?? 0) + (verified?.pbdataRead?.bytesRead ?? 0);
      const resumedAtMs = verified?.resumedAtMs ?? null;
      return {
        // The guest's pause as its two QEMUs saw it: the source's STOP to the target's RESUME
        // (QMP event timestamps); QEMU's own figure when one of them is missing.
        downtimeMs: resumedAtMs !== null && outcome?.pausedAtMs ? Math.max(0, resumedAtMs - outcome.pausedAtMs) : outcome?.completedAtMs ? outcome.downtimeMs : null,
        postcopyDurationMs: outcome?.postcopyActiveAtMs && outcome.completedAtMs ? Math.max(0, outcome.completedAtMs - outcome.postcopyActiveAtMs) : null,
        bytes: { migrationNetwork: net, storageWrite, storageRead, total: net + storageWrite },
        static: save ? { pages: save.pages, saveMs: save.saveMs, mergeMs: merge?.mergeMs ?? 0, skippedNewer: merge?.skippedNewer ?? 0 } : null,
        stopAndCopy: switched !== 'postcopy' && outcome?.completedAtMs ? { pages: Math.round(outcome.downtimeBytes / pageSize), bytes: outcome.downtimeBytes, sendMs: outcome.downtimeMs ?? 0 } : null,
        postcopy:
          switched === 'postcopy' && outcome
            ? {
                faults: outcome.postcopyRequests,
                faultLatencyMs: null,
                pushedPages: Math.round(outcome.postcopyBytes / pageSize),
                pbdataPages: pb?.pages ?? 0,
                fellBackToPbData: false,
                pbdata: pbdata ? 'async' : 'off',
                ...(verified?.blocktime ? { blocktimeMs: verified.blocktime } : {}),
              }
            : null,
        driver: 'qemu',
        ...(recoveries.length ? { recoveries } : {}),
      };
    },
  };
}
