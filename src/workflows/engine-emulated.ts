/**
 * The emulated engine: ferry's own data plane moves the pages (channel-2 between the agents,
 * StaticData and PbData on shared storage), so every figure of the report is ferry's own
 * measurement. Activities: src/activities/emulated-source.ts and emulated-target.ts.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { EmulatedActivities } from '../activities/emulated';
import type { DrainResult, MigrationOptions, PbDataResult, PrepareTargetResult, StaticMergeResult, StaticSaveResult, StepRef, VerifyResult } from '../activities/types';
import { hostQueue } from '../common/names';
import type { StrategyName } from '../policy/types';
import { ENGINE_CAPS, type DescribeOptions, type Engine, type EngineReport, type PostcopyEnd, type VmFacts } from './engine';
import { agentWaits, type AgentWaits } from './agent-waits';
import { failureMessage } from './saga';
import type { ReportIteration } from './report';

type Acts = EmulatedActivities;
const NON_RETRYABLE = ['InvalidInput', 'NotFound', 'Conflict', 'InsufficientCapacity', 'UsageError'];

/** Steps before the switch: bounded retries, so a dead host ends in a rollback. */
function preSwitch(host: string, startToCloseTimeout: string, w: AgentWaits, attempts = 4) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout,
    scheduleToStartTimeout: w.preSwitch.pickUpMs,
    heartbeatTimeout: w.preSwitch.heartbeatMs,
    retry: { maximumAttempts: attempts, initialInterval: '500ms', maximumInterval: '5s', nonRetryableErrorTypes: NON_RETRYABLE },
  });
}

/** Steps after the switch on the target: retried without limit; the guest lives there now. */
function postSwitchSteps(host: string, w: AgentWaits) {
  return proxyActivities<Acts>({ taskQueue: hostQueue(host), startToCloseTimeout: '2h', heartbeatTimeout: w.targetAfterSwitch.heartbeatMs, retry: { initialInterval: '1s', maximumInterval: '10s' } });
}

/**
 * The source's steps after the switch (PbData, push, release). The guest runs on the target
 * and completes from PbData without the source, so a dead source must not hold the migration
 * open: its death shows as a missed heartbeat, and a step no agent picks up in time (20 s by
 * default, agent-waits.ts) fails.
 * The push is not retried: its pages live in the agent process that ran it.
 */
function sourceAfterSwitchSteps(host: string, w: AgentWaits, attempts: number) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: '2h',
    scheduleToStartTimeout: w.sourceAfterSwitch.pickUpMs,
    heartbeatTimeout: w.sourceAfterSwitch.heartbeatMs,
    retry: { maximumAttempts: attempts, initialInterval: '1s', maximumInterval: '5s' },
  });
}

/** Cleanup: a few tries; a cleanup that fails is reported, it does not hide the reason. */
function cleanupSteps(host: string, w: AgentWaits) {
  return proxyActivities<Acts>({
    taskQueue: hostQueue(host),
    startToCloseTimeout: w.cleanupMs,
    scheduleToCloseTimeout: w.cleanupMs,
    retry: { maximumAttempts: 5, initialInterval: '500ms', maximumInterval: '5s' },
  });
}

export interface EngineArgs {
  ref: StepRef;
  source: string;
  target: string;
  strategy: StrategyName;
  options: MigrationOptions;
}

export function emulatedEngine({ ref, source, target, strategy, options }: EngineArgs): Engine {
  const w = agentWaits(options.agentTimeoutMs);
  const src = preSwitch(source, '10m', w);
  const tgt = preSwitch(target, '10m', w);
  const srcLong = preSwitch(source, '2h', w);
  const tgtLong = preSwitch(target, '2h', w);
  const cleanup = (host: string) => cleanupSteps(host, w);
  const postSwitch = (host: string) => postSwitchSteps(host, w);
  const afterSwitchOnSource = (host: string, attempts: number) => sourceAfterSwitchSteps(host, w, attempts);
  let prep: PrepareTargetResult | null = null;
  const m = {
    save: null as StaticSaveResult | null,
    merge: null as StaticMergeResult | null,
    pausedAtMs: 0,
    resumedAtMs: null as number | null,
    stopCopy: null as EngineReport['stopAndCopy'],
    drain: null as DrainResult | null,
    pb: null as PbDataResult | null,
    pbdata: 'off' as 'sync' | 'async' | 'off',
    channelBytes: null as number | null,
    digests: { source: null as string | null, target: null as string | null },
  };

  /** Resume on the target; the pause's instant and the source's sending let the target learn the rest of the pause. */
  const resume = async (postcopy: boolean, pausedAtMs: number, sentMs: number | undefined): Promise<void> => {
    const r = await tgt.resumeTarget({ ...ref, postcopy, digest: options.digest === true, pausedAtMs, ...(sentMs !== undefined ? { sentMs: Math.round(sentMs) } : {}) });
    m.digests.target = r.digest;
    m.pausedAtMs = pausedAtMs;
    m.resumedAtMs = r.resumedAtMs;
  };

  return {
    name: 'emulated',
    caps: ENGINE_CAPS.emulated,

    async describe(opts?: DescribeOptions): Promise<VmFacts> {
      const d = await src.describeVm({ vm: ref.vm, ...(opts?.countNonZeroUpToBytes ? { countNonZeroUpToBytes: opts.countNonZeroUpToBytes } : {}) });
      return { workload: d.workload, memoryBytes: d.memoryBytes, pageCount: d.pageCount, pageSize: d.pageSize, vcpus: d.vcpus, ...(d.nonZeroPages !== undefined ? { nonZeroPages: d.nonZeroPages } : {}) };
    },
    async prepareTarget(vm: VmFacts): Promise<void> {
      prep = await tgt.prepareTarget({ ...ref, source, memoryBytes: vm.memoryBytes, pageSize: vm.pageSize, pageCount: vm.pageCount, vcpus: vm.vcpus, workload: vm.workload });
    },
    abortTarget: () => cleanup(target).abortTarget(ref),
    async prepareSource(bandwidthBytesPerSec: number) {
      const p = prep!;
      // The grant (or, from a target without a cluster key, the secret) goes on as the target gave it.
      const credential = p.grant ? { grant: p.grant } : { secret: p.secret };
      const r = await src.prepareSource({ ...ref, target, dataAddress: p.dataAddress, ...credential, strategy, options: { ...options, bandwidthBytesPerSec } });
      return { startedAtMs: r.startedAtMs };
    },
    rollbackSource: () => cleanup(source).rollbackSource(ref),
    async setBandwidth(bandwidthBytesPerSec: number) {
      await cleanup(source).setBandwidth({ ...ref, bandwidthBytesPerSec });
    },

    async saveStatic() {
      m.save = await srcLong.saveStatic(ref);
      return { bytesWritten: m.save.bytesWritten };
    },
    async mergeStatic() {
      m.merge = await tgtLong.mergeStatic(ref);
      return m.merge;
    },
    removeStaticData: () => cleanup(source).cleanupStorage(ref),

    async round(index, bulk, startWhen) {
      const r = await srcLong.runIteration({ ...ref, index, bulk, ...(startWhen ? { startWhen } : {}) });
      return {
        kind: 'round',
        iteration: { index: r.index, pages: r.pages, durationMs: r.durationMs, bytes: r.bytes, dirtyAfter: r.dirtyAfter, finishedAtMs: r.finishedAtMs, ...(r.growth ? { growth: r.growth } : {}) },
      };
    },

    async stopAndCopy() {
      const sc = await src.stopAndCopy(ref);
      m.stopCopy = { pages: sc.pages, bytes: sc.bytes, sendMs: Math.round(sc.durationMs) };
      await resume(false, sc.pausedAtMs, sc.durationMs);
    },

    async switchToPostcopy(pbdata) {
      m.pbdata = pbdata;
      const sw = await src.switchToPostcopy(ref);
      if (pbdata === 'sync') m.pb = await srcLong.writePbData(ref);
      // A synchronous PbData write is inside this pause: the source's work, not overhead.
      await resume(true, sw.pausedAtMs, sw.durationMs !== undefined ? sw.durationMs + (m.pb?.ms ?? 0) : undefined);
      return { missingPages: sw.missingPages };
    },

    /**
     * The source pushes in the background and answers faults; the target drains. If the
     * source dies, the target still completes from PbData, so the push's failure does not
     * stop the migration. Async PbData is written beside it (bounded: if the source died
     * before committing it, no retry can write it).
     */
    async postcopy(pbdata): Promise<PostcopyEnd> {
      let pbProblem: string | null = null;
      const pbPromise: Promise<PbDataResult | null> =
        pbdata === 'async'
          ? afterSwitchOnSource(source, 3).writePbData(ref).catch((err) => {
              pbProblem = failureMessage(err);
              return null;
            })
          : Promise.resolve(m.pb);
      const pushPromise = afterSwitchOnSource(source, 1).pushPostcopy(ref).catch(() => null);
      m.drain = await postSwitch(target).drainPostcopy({ ...ref, pbdata, faultTimeoutMs: options.faultTimeoutMs });
      const push = await pushPromise;
      m.pb = await pbPromise;
      const notes = [
        pbProblem ? `PbData not written (${pbProblem})` : null,
        push === null && m.drain.pulledPages ? `the source's push did not report; the target asked for ${m.drain.pulledPages} pages itself over channel-2` : null,
      ].filter((n): n is string => n !== null);
      return { done: true, note: notes.length ? notes.join('; ') : null };
    },

    verifyTarget: (): Promise<VerifyResult> => postSwitch(target).verifyTarget(ref),

    async releaseSource() {
      try {
        const r = await afterSwitchOnSource(source, 3).releaseSource(ref);
        if (r.digest) m.digests.source = r.digest;
        if (r.channelBytes >= 0) m.channelBytes = r.channelBytes;
        return { releasedAtMs: Math.max(r.releasedAtMs, m.drain?.completedAtMs ?? 0), problem: null };
      } catch (err) {
        return { releasedAtMs: Math.max(Date.now(), m.drain?.completedAtMs ?? 0), problem: failureMessage(err) };
      }
    },

    cleanupTargetStorage: () => cleanup(target).cleanupStorage(ref).catch(() => undefined),

    /**
     * The emulated pause: stop-and-copy (or the switch) on the source, then a workflow round
     * trip to the target's resume, then the resume itself. The round trip is measured between
     * rounds (one round's end to the next one's start, the same path); the resume is what the
     * target's last resumes took. The source pauses when the stop-and-copy step starts: one
     * round trip after the round's end (the lead).
     */
    pauseTiming(iterations) {
      const trip = roundTripMs(iterations);
      const resume = prep?.resumeEstimateMs ?? null;
      // The parts measured in this run (a round trip, a resume), or, when larger, the whole
      // pauses this target has ended lately less their sending: the part no single step shows.
      const parts = trip !== null || resume !== null ? Math.round((trip ?? 0) + (resume ?? 0)) : null;
      const learned = prep?.pauseOverheadEstimateMs ?? null;
      const overhead = parts !== null && learned !== null ? Math.max(parts, learned) : (parts ?? learned);
      return {
        ...(overhead !== null ? { overheadMs: overhead } : {}),
        ...(trip !== null ? { leadMs: Math.round(trip) } : {}),
      };
    },

    report(sentInRounds: number): EngineReport {
      const storageWrite = (m.save?.bytesWritten ?? 0) + (m.pb?.bytesWritten ?? 0);
      const storageRead = (m.merge?.bytesRead ?? 0) + (m.drain?.storageBytesRead ?? 0);
      const net = m.channelBytes ?? sentInRounds;
      const d = m.drain;
      return {
        downtimeMs: m.resumedAtMs !== null ? Math.max(0, m.resumedAtMs - m.pausedAtMs) : null,
        postcopyDurationMs: d && m.resumedAtMs !== null ? Math.max(0, d.completedAtMs - m.resumedAtMs) : null,
        bytes: { migrationNetwork: net, storageWrite, storageRead, total: net + storageWrite },
        stopAndCopy: m.stopCopy,
        static: m.save ? { pages: m.save.pages, saveMs: m.save.saveMs, mergeMs: m.merge?.mergeMs ?? 0, skippedNewer: m.merge?.skippedNewer ?? 0 } : null,
        postcopy: d
          ? { faults: d.faults, faultLatencyMs: d.faultLatencyMs, pushedPages: d.pushedPages, pbdataPages: d.pbdataPages, fellBackToPbData: d.fellBackToPbData, pbdata: m.pbdata }
          : null,
        ...(options.digest ? { digests: m.digests } : {}),
      };
    },
  };
}

/** The workflow's round trip between rounds (one round's end to the next one's start): the median of the last five. */
function roundTripMs(iterations: readonly ReportIteration[]): number | null {
  const gaps: number[] = [];
  for (let i = 1; i < iterations.length; i++) gaps.push(iterations[i]!.startedAtMs - iterations[i - 1]!.finishedAtMs);
  const recent = gaps.slice(-5).filter((g) => g >= 0);
  return recent.length > 0 ? [...recent].sort((a, b) => a - b)[Math.floor(recent.length / 2)]! : null;
}
