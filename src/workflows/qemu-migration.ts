/**
 * The migration runbook for QEMU guests (driver qemu). QEMU moves the pages itself; ferry
 * decides when pre-copy ends, with the same policy as for emulated guests:
 *
 *   1. describe the VM; start the target's QEMU waiting for the stream (`-incoming defer`)
 *   2. start the migration on the source (bandwidth cap; QEMU's own downtime limit kept tiny,
 *      so ferry's policy, not QEMU's estimate, ends pre-copy)
 *   3. after each pass (MIGRATION_PASS, the dirty-bitmap sync), ask the policy
 *   4a. stop-and-copy: raise the downtime limit, QEMU completes
 *   4b. or migrate-start-postcopy; then wait for the end, and when post-copy stalls or breaks,
 *       pause both sides and resume over the second network (migrate-recover / resume)
 *   5. check the guest's own verification on the target's serial; stop the source's copy
 *
 * par-migrate needs a dirty log QEMU does not give to an outside process: pa-hybrid and
 * par-migrate are refused here. Before the switch any failure rolls back (migrate_cancel, the
 * guest runs on the source); after it, only forward.
 */
import { ApplicationFailure, CancellationScope, condition, isCancellation, proxyActivities, workflowInfo, allHandlersFinished } from '@temporalio/workflow';
import type { QemuActivities, QemuIteration, QemuOutcome } from '../activities/qemu';
import type { VerifyResult } from '../activities/types';
import { hostQueue } from '../common/names';
import { decide, lambdaOf } from '../policy';
import { mayPostcopy, usesParMigrate, type Decision } from '../policy/types';
import type { Phase } from './messages';
import { failureMessage, rollbackReason, runUndos, type Undo } from './saga';
import { Journal, progressOf, registerControls } from './controls';
import type { MigrationInput } from './migration';
import { reportHead, verificationOf, type MigrationReport, type ReportDecision, type ReportIteration } from './report';

type Acts = QemuActivities;

function steps(host: string, startToCloseTimeout: string, attempts: number) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout,
    scheduleToStartTimeout: '30s',
    heartbeatTimeout: '20s',
    retry: { maximumAttempts: attempts, initialInterval: '500ms', maximumInterval: '5s', nonRetryableErrorTypes: ['InvalidInput', 'NotFound', 'Conflict', 'InsufficientCapacity', 'UsageError'] },
  });
}

/** How long post-copy may make no progress before ferry recovers it over the second network. */
export const DEFAULT_STALL_MS = 3000;
/** Recoveries per migration before ferry gives up and reports the guest stuck on both sides. */
const MAX_RECOVERIES = 5;

export async function runQemuMigration(input: MigrationInput): Promise<MigrationReport> {
  const { vm, source, target, strategy, options } = input;
  if (usesParMigrate(strategy)) {
    throw ApplicationFailure.nonRetryable(
      `${strategy} needs par-migrate, which reads a dirty log QEMU does not expose to ferry; on QEMU use as-hybrid (or another non-par strategy)`,
      'InvalidInput',
    );
  }
  const info = workflowInfo();
  const migrationId = `${info.workflowId}.${info.runId.slice(0, 8)}`;
  const ref = { migrationId, vm };
  const startedAt = Date.now();
  const src = steps(source, '10m', 4);
  const tgt = steps(target, '10m', 4);
  const srcLong = steps(source, '2h', 2);
  const cleanup = steps(source, '2m', 3);
  const cleanupT = steps(target, '2m', 3);
  const fwdS = steps(source, '2h', 20);
  const fwdT = steps(target, '2h', 20);
  const stallMs = options.faultTimeoutMs && options.faultTimeoutMs > 0 ? options.faultTimeoutMs : DEFAULT_STALL_MS;

  let cancelRequest = null as { by?: string; reason?: string } | null;
  let bandwidth = options.bandwidthBytesPerSec;
  let pageCount = 0;
  let remainingPages = 0;
  const pageSize = 4096;
  const journal = new Journal(startedAt);
  const { iterations, decisions } = journal;
  const recoveries: NonNullable<MigrationReport['recoveries']> = [];
  let workload = 'unknown';
  let memoryBytes = 0;
  let startedAtMs = startedAt;
  let endedAtMs: number | null = null;
  let outcome: QemuOutcome | null = null;
  /** The guest's own check on the target, and how long it stalled in post-copy. */
  let verification: (VerifyResult & { blocktime?: { allVcpusMs: number; perVcpuMs: number[] } | null }) | null = null;
  let resumedAtMs: number | null = null;
  let rollbackVerification: VerifyResult | null = null;
  let ending: 'stop-and-copy' | 'switch-to-postcopy' | 'converged' = 'stop-and-copy';

  let scope: CancellationScope | null = null;
  registerControls({
    vm,
    target,
    strategy,
    journal,
    progress: () =>
      progressOf({ id: info.workflowId, vm, source, target, strategy, phase: journal.phase, switched: journal.switched, iterations, decisions, remainingPages, pageCount, pageSize, staticMerged: null, bandwidthBytesPerSec: bandwidth, startedAt }),
    setBandwidth: async (rate) => {
      bandwidth = rate;
      if (journal.phase !== 'preparing') await cleanup.qemuSetBandwidth({ ...ref, bandwidthBytesPerSec: rate });
    },
    // QEMU caps its post-copy stream too (max-postcopy-bandwidth).
    bandwidthAfterSwitch: true,
    cancel: (req) => {
      cancelRequest = req;
      scope?.cancel();
    },
  });

  const report = (result: MigrationReport['outcome'], reason: string): MigrationReport => {
    const net = outcome?.transferredBytes ?? journal.bytesSent();
    const postcopyDurationMs = outcome?.postcopyActiveAtMs && outcome.completedAtMs ? Math.max(0, outcome.completedAtMs - outcome.postcopyActiveAtMs) : null;
    return {
      ...reportHead({ workflowId: info.workflowId, runId: info.runId, input, workload, outcome: result, reason, pageSize, memoryBytes, startedAtMs, endedAtMs }),
      // The guest's pause as its two QEMUs saw it: the source's STOP to the target's RESUME
      // (QMP event timestamps); QEMU's own figure when one of them is missing.
      downtimeMs: resumedAtMs !== null && outcome?.pausedAtMs ? Math.max(0, resumedAtMs - outcome.pausedAtMs) : outcome?.completedAtMs ? outcome.downtimeMs : null,
      postcopyDurationMs,
      bytes: { migrationNetwork: net, storageWrite: 0, storageRead: 0, total: net },
      iterations,
      decisions,
      static: null,
      stopAndCopy: ending !== 'switch-to-postcopy' && outcome?.completedAtMs ? { pages: Math.round(outcome.downtimeBytes / pageSize), bytes: outcome.downtimeBytes, sendMs: outcome.downtimeMs ?? 0 } : null,
      postcopy:
        ending === 'switch-to-postcopy' && outcome
          ? {
              faults: outcome.postcopyRequests,
              faultLatencyMs: null,
              pushedPages: Math.round(outcome.postcopyBytes / pageSize),
              pbdataPages: 0,
              fellBackToPbData: false,
              pbdata: 'off',
              ...(verification?.blocktime ? { blocktimeMs: verification.blocktime } : {}),
            }
          : null,
      verification: verificationOf(verification, rollbackVerification),
      driver: 'qemu',
      ...(recoveries.length ? { recoveries } : {}),
    };
  };

  // ---- 1–4: before the switch ----------------------------------------------------------
  const undo: Undo[] = [];
  let sourceState: { guestRunning: boolean; note: string } | null = null;
  try {
    await CancellationScope.cancellable(async () => {
      scope = CancellationScope.current();
      const desc = await src.qemuDescribe({ vm });
      workload = desc.workload;
      memoryBytes = desc.memoryBytes;
      pageCount = desc.pageCount;
      remainingPages = pageCount;
      undo.push({ what: `abort on ${target}`, run: () => cleanupT.qemuAbortTarget(ref) });
      const prep = await tgt.qemuPrepareTarget({ ...ref, source, memoryBytes, vcpus: desc.vcpus, workload, seed: desc.seed, rate: desc.rate, postcopy: mayPostcopy(strategy), ...(desc.qemuArgs ? { qemuArgs: desc.qemuArgs } : {}), ...(desc.tlsCommonName ? { sourceTlsCommonName: desc.tlsCommonName } : {}) });
      undo.push({
        what: `roll back on ${source}`,
        run: async () => {
          const r = await cleanup.qemuRollback(ref);
          rollbackVerification = r.verification;
          sourceState = { guestRunning: r.guestRunning, note: r.note };
        },
      });
      const started = await src.qemuStart({ ...ref, uri: prep.uri, strategy, options: { ...options, bandwidthBytesPerSec: bandwidth }, target, ...(prep.tls !== undefined ? { targetTls: prep.tls } : {}) });
      startedAtMs = started.startedAtMs;
      journal.setPhase('precopy');

      for (let i = 1; ; i++) {
        if (i > 1 || strategy === 'postcopy') {
          const d: Decision = journal.forcedBy
            ? { action: 'switch-to-postcopy', reason: `switch to post-copy at iteration ${i}: forced by ${journal.forcedBy}` }
            : decide(
                { iterations: iterations.map((it) => ({ index: it.index, pages: it.pages, durationMs: it.durationMs, bytes: it.bytes, dirtyAfter: it.dirtyAfter })), remainingPages, staticMerged: true },
                { strategy, pageSize, pageCount, maxDowntimeMs: options.maxDowntimeMs, maxIterations: options.maxIterations, bandwidthBytesPerSec: bandwidth || 1e12 },
              );
          journal.record(d);
          if (d.action !== 'continue') {
            ending = d.action;
            break;
          }
        }
        const r = await srcLong.qemuAwaitPass({ ...ref, index: i });
        if (r.kind === 'finished') {
          if (r.status !== 'completed') throw new Error(`QEMU ended the migration (${r.status})${r.error ? `: ${r.error}` : ''}`);
          ending = 'converged';
          journal.record({ action: 'stop-and-copy', reason: `stop-and-copy at iteration ${i}: QEMU found nothing left to send within its limit` });
          break;
        }
        const it: QemuIteration = r.iteration;
        iterations.push({ ...it, lambda: lambdaOf(it), startedAtMs: it.finishedAtMs - it.durationMs });
        remainingPages = it.dirtyAfter;
      }

      if (ending === 'switch-to-postcopy') {
        journal.setPhase('switching');
        outcome = await src.qemuSwitchToPostcopy(ref);
      } else {
        journal.setPhase('stop-and-copy');
        outcome = await src.qemuStopAndCopy(ref);
      }
      journal.switched = true;
      // QEMU moves the rest itself now (post-copy or the final copy): nothing left for an ETA.
      remainingPages = 0;
    });
  } catch (err) {
    if (journal.switched) throw err;
    const why = rollbackReason(isCancellation(err), cancelRequest, journal.phase, err);
    journal.setPhase('rolling-back');
    const undoErrors = await runUndos(undo);
    endedAtMs = Date.now();
    const s = sourceState as { guestRunning: boolean; note: string } | null;
    const ok = s === null ? true : s.guestRunning;
    journal.setPhase(ok ? 'rolled-back' : 'failed');
    await condition(allHandlersFinished);
    const leftovers = undoErrors.length ? `; cleanup incomplete: ${undoErrors.join('; ')}` : '';
    return report(ok ? 'rolled-back' : 'failed', ok ? `${why}; rolled back, ${vm} runs on ${source}${leftovers}` : `${why}; ${s?.note ?? 'rollback failed'}${leftovers}`);
  }

  // ---- 5: after the switch: only forward -------------------------------------------------
  return CancellationScope.nonCancellable(async () => {
    if (ending === 'switch-to-postcopy') {
      journal.setPhase('postcopy');
      for (;;) {
        const c = await fwdS.qemuAwaitCompletion({ ...ref, stallMs });
        outcome = c.outcome;
        if (c.kind === 'completed') break;
        if (c.kind === 'failed' || recoveries.length >= MAX_RECOVERIES) {
          endedAtMs = Date.now();
          journal.setPhase('failed');
          await condition(allHandlersFinished);
          return report('failed', `post-copy of ${vm} could not finish (${c.why}) after ${recoveries.length} recover${recoveries.length === 1 ? 'y' : 'ies'}: the guest is split between ${source} and ${target}; both QEMUs are kept for an operator`);
        }
        // Recover: pause both ends (QEMU may not have noticed the dead link), then resume the
        // stream over the second network.
        const atMs = Date.now() - startedAt;
        await fwdS.qemuPause(ref);
        await fwdT.qemuPause(ref);
        const rec = await fwdT.qemuRecoverTarget({ ...ref, useFallback: true });
        await fwdS.qemuResume({ ...ref, uri: rec.uri });
        recoveries.push({ atMs, reason: c.why, uri: rec.uri, resumedAfterMs: Date.now() - startedAt - atMs });
      }
    }
    journal.setPhase('verifying');
    const verified = await fwdT.qemuVerifyTarget({ ...ref, passes: 2 });
    verification = verified;
    resumedAtMs = verified.resumedAtMs ?? null;
    const released = await fwdS.qemuRelease(ref).catch((e: unknown) => ({ releasedAtMs: Date.now(), transferredBytes: -1, problem: failureMessage(e) }));
    endedAtMs = outcome?.completedAtMs ?? released.releasedAtMs;
    const ok = verification.ok;
    journal.setPhase(ok ? 'completed' : 'failed');
    await condition(allHandlersFinished);
    const how =
      ending === 'switch-to-postcopy'
        ? `post-copy after ${iterations.length} pass(es)${recoveries.length ? `, recovered ${recoveries.length}× over the second network` : ''}`
        : `stop-and-copy after ${iterations.length} pass(es)`;
    const problem = 'problem' in released ? `; ${source} did not release its copy (${released.problem})` : '';
    return report(
      ok ? 'completed' : 'failed',
      ok ? `${vm} runs on ${target}: ${how}, verified by the guest${problem}` : `${vm} runs on ${target} but the guest's own check failed: ${verification.firstMismatches.join('; ')}`,
    );
  });
}
