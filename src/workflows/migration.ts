/**
 * MigrationWorkflow: one VM from a source host to a target host, as an operator's runbook.
 *
 *   1. describe the VM on the source; prepare the target; prepare the source (dirty log on,
 *      channel-2 connected)                                   — each step registers its undo
 *   2. par-migrate: save StaticData to shared storage (source) while the target merges it
 *   3. dirty-page iterations on channel-2, one activity each; after each, ask the policy
 *   4a. stop-and-copy: pause, last pages + device state, resume on the target
 *   4b. or switch to post-copy: pause, device state + missing set, PbData, resume on the
 *       target, push the rest while the target faults pages in (PbData if channel-2 dies)
 *   5. release the source, verify the guest on the target
 *
 * Before the target runs the guest (the switch), any failure or cancel rolls back: the guest
 * keeps running on the source, target and storage are cleaned, the reason is recorded. After
 * it, the migration only moves forward.
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  sleep,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import type { MigrationActivities } from '../activities/migration';
import type {
  DrainResult,
  MigrationOptions,
  PbDataResult,
  PushResult,
  StaticMergeResult,
  StaticSaveResult,
  VerifyResult,
} from '../activities/types';
import { hostQueue } from '../common/names';
import { decide, lambdaOf, transferMs } from '../policy';
import { isStrategy, mayPostcopy, usesParMigrate, type Decision, type IterationStat, type StrategyName } from '../policy/types';
import type { Phase } from './messages';
import { Journal, progressOf, registerControls } from './controls';
import { reportHead, verificationOf, type MigrationReport, type ReportDecision, type ReportIteration } from './report';
import { audited, type AttemptLink } from './audit';
import { failureMessage, rollbackReason, runUndos, type Undo } from './saga';
import { runQemuMigration } from './qemu-migration';

export interface MigrationInput {
  vm: string;
  source: string;
  target: string;
  strategy: StrategyName;
  options: MigrationOptions;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  /** Audit trail: attempt number, the attempt this one retries, who asked (see ./audit). */
  audit?: AttemptLink;
  /** The source host's hypervisor driver (absent = emulated): QEMU guests follow their own runbook. */
  driver?: 'emulated' | 'qemu';
}

type Acts = MigrationActivities;

/** Steps before the switch: bounded retries, so a dead host ends in a rollback. */
function preSwitch(host: string, startToCloseTimeout: string, attempts = 4) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout,
    scheduleToStartTimeout: '30s',
    heartbeatTimeout: '15s',
    retry: { maximumAttempts: attempts, initialInterval: '500ms', maximumInterval: '5s', nonRetryableErrorTypes: ['InvalidInput', 'NotFound', 'Conflict', 'InsufficientCapacity', 'UsageError'] },
  });
}

/** Steps after the switch: retried without limit; the guest lives on the target now. */
function postSwitch(host: string) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '2h',
    heartbeatTimeout: '20s',
    retry: { initialInterval: '1s', maximumInterval: '10s' },
  });
}

/**
 * The source's steps after the switch (push, release). The guest runs on the target and
 * completes from PbData without the source, so a dead source host must not hold the
 * migration open for ever (nor block the VM's next migration): its death shows as a missed
 * heartbeat, and a step that no agent picks up within 20 s fails (schedule-to-start is not
 * retried). The push is not retried: its pages live in the agent process that ran it.
 * Async PbData is bounded the same way: if the source died before committing it, no retry
 * can write it (if channel-2 fails too, the target cannot complete: that is what sync is for).
 */
function afterSwitchOnSource(host: string, attempts: number) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '2h',
    scheduleToStartTimeout: '20s',
    heartbeatTimeout: '10s',
    retry: { maximumAttempts: attempts, initialInterval: '1s', maximumInterval: '5s' },
  });
}

/** Cleanup: a few tries; a cleanup that fails is reported, it does not hide the reason. */
function cleanup(host: string) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '20s',
    scheduleToCloseTimeout: '20s',
    retry: { maximumAttempts: 5, initialInterval: '500ms', maximumInterval: '5s' },
  });
}

export { failureMessage };

export async function migrationWorkflow(input: MigrationInput): Promise<MigrationReport> {
  return audited(input, () => (input?.driver === 'qemu' ? runQemuMigration(input) : runMigration(input)));
}

async function runMigration(input: MigrationInput): Promise<MigrationReport> {
  validate(input);
  const { vm, source, target, strategy, options } = input;
  const info = workflowInfo();
  const migrationId = `${info.workflowId}.${info.runId.slice(0, 8)}`;
  const ref = { migrationId, vm };
  const startedAt = Date.now();
  const par = usesParMigrate(strategy);
  const pbdataMode = mayPostcopy(strategy) ? options.pbdata : 'off';

  const src = preSwitch(source, '10m');
  const tgt = preSwitch(target, '10m');
  const srcLong = preSwitch(source, '2h');
  const tgtLong = preSwitch(target, '2h');

  // ---- state, visible through the progress query --------------------------------------
  let cancelRequest = null as { by?: string; reason?: string } | null;
  let bandwidth = options.bandwidthBytesPerSec;
  let pageCount = 0;
  let pageSize = 4096;
  let remainingPages = 0;
  let staticMerged: boolean | null = par ? false : null;
  const journal = new Journal(startedAt);
  const { iterations, decisions } = journal;
  const compensations: Undo[] = [];
  let rollbackVerification: VerifyResult | null = null;
  let sourceState = null as { guestRunning: boolean; note: string } | null;
  let sourceTouched = false;
  /** par-migrate: why the static save failed for good, and that the migration went on without it. */
  let saveError: string | null = null;
  let staticAbandoned: string | null = null;

  let preSwitchScope: CancellationScope | null = null;
  registerControls({
    vm,
    target,
    strategy,
    journal,
    progress: () =>
      progressOf({ id: info.workflowId, vm, source, target, strategy, phase: journal.phase, switched: journal.switched, iterations, decisions, remainingPages, pageCount, pageSize, staticMerged: staticMerged, bandwidthBytesPerSec: bandwidth, startedAt }),
    setBandwidth: async (rate) => {
      bandwidth = rate;
      if (journal.phase !== 'preparing') await cleanup(source).setBandwidth({ ...ref, bandwidthBytesPerSec: rate });
    },
    bandwidthAfterSwitch: false,
    cancel: (req) => {
      cancelRequest = req;
      preSwitchScope?.cancel();
    },
  });

  // ---- report assembly ------------------------------------------------------------------
  let workload = 'unknown';
  let memoryBytes = 0;
  let saveResult: StaticSaveResult | null = null;
  let mergeResult: StaticMergeResult | null = null;
  let downtimeMs: number | null = null;
  let stopCopy: MigrationReport['stopAndCopy'] = null;
  let postcopyDurationMs: number | null = null;
  let drain: DrainResult | null = null;
  let pbResult: PbDataResult | null = null;
  let verification: VerifyResult | null = null;
  let channelBytes = 0;
  let storageWrite = 0;
  let startedAtMs = startedAt;
  let endedAtMs: number | null = null;
  let postcopyStartMs = 0;
  const digests = { source: null as string | null, target: null as string | null };

  const report = (outcome: MigrationReport['outcome'], reason: string): MigrationReport => {
    const storageRead = (mergeResult?.bytesRead ?? 0) + (drain?.storageBytesRead ?? 0);
    const migrationNetwork = channelBytes;
    return {
      ...reportHead({ workflowId: info.workflowId, runId: info.runId, input, workload, outcome: outcome, reason, pageSize, memoryBytes, startedAtMs, endedAtMs }),
      downtimeMs,
      postcopyDurationMs,
      bytes: { migrationNetwork, storageWrite, storageRead, total: migrationNetwork + storageWrite },
      iterations,
      decisions,
      stopAndCopy: stopCopy,
      static: saveResult
        ? { pages: saveResult.pages, saveMs: saveResult.saveMs, mergeMs: mergeResult?.mergeMs ?? 0, skippedNewer: mergeResult?.skippedNewer ?? 0 }
        : null,
      postcopy: drain
        ? {
            faults: drain.faults,
            faultLatencyMs: drain.faultLatencyMs,
            pushedPages: drain.pushedPages,
            pbdataPages: drain.pbdataPages,
            fellBackToPbData: drain.fellBackToPbData,
            pbdata: pbdataMode,
          }
        : null,
      verification: verificationOf(verification, rollbackVerification),
      ...(options.digest ? { digests } : {}),
    };
  };

  // ---- 1–4: before the switch (cancellable, compensated) --------------------------------
  let ending: 'stop-and-copy' | 'switch-to-postcopy' = 'stop-and-copy';
  let savePromise: Promise<StaticSaveResult> | null = null;
  try {
    await CancellationScope.cancellable(async () => {
      preSwitchScope = CancellationScope.current();
      const desc = await src.describeVm({ vm });
      workload = desc.workload;
      memoryBytes = desc.memoryBytes;
      pageCount = desc.pageCount;
      pageSize = desc.pageSize;
      remainingPages = pageCount;

      compensations.push({ what: `abort on ${target}`, run: () => cleanup(target).abortTarget(ref) });
      const prepT = await tgt.prepareTarget({ ...ref, source, memoryBytes, pageSize, pageCount, vcpus: desc.vcpus, workload });

      sourceTouched = true;
      compensations.push({
        what: `roll back on ${source}`,
        run: async () => {
          const r = await cleanup(source).rollbackSource(ref);
          rollbackVerification = r.verification;
          sourceState = { guestRunning: r.guestRunning, note: r.note };
        },
      });
      const prepS = await src.prepareSource({ ...ref, target, dataAddress: prepT.dataAddress, secret: prepT.secret, strategy, options: { ...options, bandwidthBytesPerSec: bandwidth } });
      startedAtMs = prepS.startedAtMs;
      journal.setPhase('precopy');

      // par-migrate: channel-1 runs beside the iterations.
      let mergePromise: Promise<StaticMergeResult> | null = null;
      let mergeScope: CancellationScope | null = null;
      if (par) {
        compensations.push({ what: 'remove StaticData/PbData', run: () => cleanup(source).cleanupStorage(ref) });
        savePromise = srcLong.saveStatic(ref);
        mergeScope = new CancellationScope();
        mergePromise = mergeScope.run(() => tgtLong.mergeStatic(ref));
        mergePromise.then(
          (r) => {
            mergeResult = r;
            staticMerged = true;
          },
          () => undefined,
        );
        savePromise.then(
          (r) => {
            saveResult = r;
            storageWrite += r.bytesWritten;
          },
          (err) => {
            saveError = failureMessage(err);
          },
        );
      }

      // After waiting for the merge, the last iteration's dirty count is stale: run one more
      // round before deciding, so every decision sees the dirty log as it is.
      let statsStale = false;
      let bulkNext = false;
      for (let i = 1; ; i++) {
        // StaticData failed for good (storage full or not writable): go on without channel-1.
        // The target stops merging, the partial snapshot is removed (its space is PbData's),
        // and this round sends every page over channel-2, as as-hybrid's bulk round does.
        if (saveError !== null && staticAbandoned === null && !staticMerged) {
          staticAbandoned = `StaticData abandoned (${saveError})`;
          mergeScope?.cancel();
          journal.record({ action: 'continue', reason: `continue at iteration ${i}: ${staticAbandoned}; every page goes over channel-2 in this round instead` });
          await cleanup(source).cleanupStorage(ref).catch(() => undefined);
          bulkNext = true;
        }
        // The max-iterations valve bounds the rounds even while StaticData is still being
        // merged: no more rounds; wait for the merge (or the save's failure), then decide.
        if (par && !staticMerged && !bulkNext && iterations.length >= options.maxIterations) {
          await condition(() => staticMerged === true || saveError !== null);
          statsStale = false;
          if (!staticMerged) {
            i--; // the save failed: redo this boundary (the bulk round comes next)
            continue;
          }
        }
        if ((i > 1 && !statsStale) || strategy === 'postcopy') {
          const d: Decision = journal.forcedBy
            ? { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${i}: forced by ${journal.forcedBy}` }
            : decide(
                { iterations: iterations.map(toStat), remainingPages, staticMerged: staticMerged ?? true },
                { strategy, pageSize, pageCount, maxDowntimeMs: options.maxDowntimeMs, maxIterations: options.maxIterations, bandwidthBytesPerSec: bandwidth || 1e12 },
              );
          journal.record(d);
          if (d.action !== 'continue') {
            ending = d.action;
            break;
          }
        }
        const res = await srcLong.runIteration({ ...ref, index: i, bulk: (i === 1 && !par) || bulkNext });
        if (bulkNext) {
          bulkNext = false;
          staticMerged = true; // every page is on the target: the policy's tests apply
        }
        const stat: ReportIteration = {
          index: res.index,
          pages: res.pages,
          durationMs: res.durationMs,
          bytes: res.bytes,
          dirtyAfter: res.dirtyAfter,
          lambda: lambdaOf(res),
          startedAtMs: res.finishedAtMs - res.durationMs,
          finishedAtMs: res.finishedAtMs,
        };
        iterations.push(stat);
        remainingPages = res.dirtyAfter;
        // While the target still merges StaticData, do not spin on tiny rounds: wait for
        // the merge or a short pause, whichever comes first.
        statsStale = false;
        if (par && !staticMerged && mergePromise && transferMs(res.pages, pageSize, bandwidth || 1e12) < 100) {
          await Promise.race([mergePromise.then(() => undefined), sleep(200)]);
          statsStale = true;
        }
      }
      if (par && mergePromise && staticAbandoned === null) {
        // The save first: if it fails now (a forced switch ended the loop early), the merge
        // would wait for chunks that never come; this way the failure rolls back instead.
        saveResult = await savePromise!;
        mergeResult = await mergePromise;
      }

      if (ending === 'stop-and-copy') {
        journal.setPhase('stop-and-copy');
        const sc = await src.stopAndCopy(ref);
        stopCopy = { pages: sc.pages, bytes: sc.bytes, sendMs: Math.round(sc.durationMs) };
        const resumed = await tgt.resumeTarget({ ...ref, postcopy: false, digest: options.digest === true });
        digests.target = resumed.digest;
        downtimeMs = Math.max(0, resumed.resumedAtMs - sc.pausedAtMs);
        journal.switched = true;
      } else {
        journal.setPhase('switching');
        const sw = await src.switchToPostcopy(ref);
        remainingPages = sw.missingPages;
        if (pbdataMode === 'sync') pbResult = await srcLong.writePbData(ref);
        const resumed = await tgt.resumeTarget({ ...ref, postcopy: true, digest: options.digest === true });
        digests.target = resumed.digest;
        downtimeMs = Math.max(0, resumed.resumedAtMs - sw.pausedAtMs);
        journal.switched = true;
        postcopyStartMs = resumed.resumedAtMs;
      }
    });
  } catch (err) {
    if (journal.switched) throw err;
    // ---- rollback: the guest keeps running on the source -----------------------------
    const why = rollbackReason(isCancellation(err), cancelRequest, journal.phase, err);
    journal.setPhase('rolling-back');
    const undoErrors = await runUndos(compensations);
    endedAtMs = Date.now();
    // What matters is the guest: running on the source = rolled back. Leftovers on a dead
    // target are reported; they went with its agent process.
    const guestOk = sourceState === null ? !sourceTouched : sourceState.guestRunning;
    const leftovers = undoErrors.length ? `; cleanup incomplete: ${undoErrors.join('; ')}` : '';
    journal.setPhase(guestOk ? 'rolled-back' : 'failed');
    await condition(allHandlersFinished);
    if (guestOk) return report('rolled-back', `${why}; rolled back, ${vm} runs on ${source}${leftovers}`);
    const lost = sourceState?.note ?? `the source ${source} did not answer the rollback`;
    return report('failed', `${why}; rollback could not bring ${vm} back: ${lost}${leftovers}`);
  }

  // ---- 5: after the switch: only forward ------------------------------------------------
  let pbdataProblem: string | null = null;
  return CancellationScope.nonCancellable(async () => {
    const tgtFwd = postSwitch(target);
    if (ending === 'switch-to-postcopy') {
      journal.setPhase('postcopy');
      const pbPromise: Promise<PbDataResult | null> =
        pbdataMode === 'async'
          ? afterSwitchOnSource(source, 3).writePbData(ref).catch((err) => {
              pbdataProblem = failureMessage(err);
              return null;
            })
          : Promise.resolve(pbResult);
      // The source pushes in the background and answers faults; if it dies, the target
      // still completes from PbData, so its failure does not stop the migration.
      const pushPromise: Promise<PushResult | null> = afterSwitchOnSource(source, 1).pushPostcopy(ref).catch(() => null);
      drain = await tgtFwd.drainPostcopy({ ...ref, pbdata: pbdataMode, faultTimeoutMs: options.faultTimeoutMs });
      postcopyDurationMs = Math.max(0, drain.completedAtMs - postcopyStartMs);
      await pushPromise;
      pbResult = await pbPromise;
      if (pbResult) storageWrite += pbResult.bytesWritten;
    }
    journal.setPhase('verifying');
    let releaseProblem: string | null = null;
    const released = await afterSwitchOnSource(source, 3)
      .releaseSource(ref)
      .catch((err) => {
        releaseProblem = failureMessage(err);
        return { releasedAtMs: Date.now(), channelBytes: -1, storageBytesWritten: 0, digest: null };
      });
    if (released.digest) digests.source = released.digest;
    channelBytes = released.channelBytes >= 0 ? released.channelBytes : journal.bytesSent();
    verification = await tgtFwd.verifyTarget(ref);
    if (par || pbdataMode !== 'off') await cleanup(target).cleanupStorage(ref).catch(() => undefined);
    endedAtMs = Math.max(released.releasedAtMs, drain?.completedAtMs ?? 0);
    if (staticAbandoned === null) await savePromise;
    const ok = verification.ok;
    journal.setPhase(ok ? 'completed' : 'failed');
    await condition(allHandlersFinished);
    const how = ending === 'stop-and-copy' ? `stop-and-copy after ${iterations.length} iteration(s)` : `post-copy after ${iterations.length} iteration(s)`;
    return report(
      ok ? 'completed' : 'failed',
      ok
        ? `${vm} runs on ${target}: ${how}, verified${staticAbandoned ? `; ${staticAbandoned}, every page went over channel-2` : ''}${pbdataProblem ? `; PbData not written (${pbdataProblem})` : ''}${releaseProblem ? `; ${source} did not confirm releasing its paused copy (${releaseProblem}): check that host` : ''}`
        : `${vm} runs on ${target} but verification found ${verification.mismatches} bad page(s): ${verification.firstMismatches.slice(0, 3).join('; ')}`,
    );
  });
}

function toStat(it: ReportIteration): IterationStat {
  return { index: it.index, pages: it.pages, durationMs: it.durationMs, bytes: it.bytes, dirtyAfter: it.dirtyAfter };
}

function validate(input: MigrationInput): void {
  const bad = (m: string): never => {
    throw ApplicationFailure.nonRetryable(m, 'InvalidInput');
  };
  if (!input || typeof input.vm !== 'string' || !input.vm) bad('vm is required');
  if (typeof input.source !== 'string' || !input.source) bad('source host is required');
  if (typeof input.target !== 'string' || !input.target) bad('target host is required');
  if (input.source === input.target) bad(`source and target are the same host (${input.source})`);
  if (!isStrategy(input.strategy)) bad(`unknown strategy '${String(input.strategy)}'`);
  if (input.driver !== undefined && input.driver !== 'emulated' && input.driver !== 'qemu') bad(`unknown driver '${String(input.driver)}'`);
  const o = input.options;
  if (!o) bad('options are required');
  if (!(o.maxIterations >= 1)) bad('maxIterations must be ≥ 1');
  if (!(o.maxDowntimeMs >= 0)) bad('maxDowntimeMs must be ≥ 0');
  if (!['sync', 'async', 'off'].includes(o.pbdata)) bad(`pbdata must be sync, async or off`);
}
