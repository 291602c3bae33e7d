/**
 * Emulated engine, target side: the steps the agent that receives the guest executes —
 * prepareTarget, mergeStatic, resumeTarget, drainPostcopy, verifyTarget, abortTarget,
 * cleanupStorage. Pages arrive on channel-2 into the session's registration handlers
 * (emulated-sessions.ts); StaticData and PbData come from the shared store. Every step is
 * idempotent on (migrationId, step) through the session's StepRecord.
 */
import { randomBytes } from 'node:crypto';
import { Context, activityInfo } from '@temporalio/activity';
import { loadPbData, mergeStatic, type MergeProgress } from '../dataplane/merge';
import { EmulatedGuest } from '../guest';
import { prepareWorkload } from '../guest/workloads';
import { grantSecret } from '../security/channel-secret';
import { userError } from './errors';
import { PostcopyPuller } from './postcopy-pull';
import { digestOf, EmulatedSessions, heartbeatEvery, storageFailure, TargetSession, verifyPaused, zeroFilledPage, type EmulatedContext } from './emulated-sessions';
import { PauseHistory } from './pause-history';
import { latencyHistogram, type DrainResult, type PrepareTargetInput, type PrepareTargetResult, type ResumeResult, type StaticMergeResult, type StepRef, type VerifyResult } from './types';

const DEFAULT_FAULT_TIMEOUT_MS = 2000;
const STALL_MS = 10_000;
/**
 * The post-copy drain wakes when a missing page is installed, a fault is requested or
 * channel-2 is lost, and at its next deadline (a fault unanswered, no progress); at the
 * latest after this long, so it re-checks its state at least as often as it heartbeats.
 */
const DRAIN_RECHECK_MS = 1000;

/**
 * The target-side activities. `sessions` is the agent's registry, shared with its source-side
 * activities (createEmulatedActivities passes one to both).
 */
export function createEmulatedTargetActivities(ctx: EmulatedContext, sessions: EmulatedSessions = new EmulatedSessions(ctx.hostId)) {
  /** This agent's last resume durations: part of the pause the next stop-and-copy test must count. */
  const resumes: number[] = [];
  const resumeEstimateMs = (): number | null => {
    if (resumes.length === 0) return null;
    const s = [...resumes].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)]!;
  };
  /** This agent's last whole pauses, less the source's sending: what the stop-and-copy test must add. */
  const pauses = new PauseHistory();
  return {
    async prepareTarget(input: PrepareTargetInput): Promise<PrepareTargetResult> {
      const existing = sessions.findTarget(input.migrationId);
      if (existing) return { dataAddress: ctx.dataAddress, ...(existing.grant ? { grant: existing.grant } : { secret: existing.secret }), atMs: Date.now(), resumeEstimateMs: resumeEstimateMs(), pauseOverheadEstimateMs: pauses.estimateMs() };
      if (ctx.driver.describe(input.vm)) throw userError('Conflict', `host ${ctx.hostId} already has a vm named ${input.vm}`);
      const free = ctx.memoryCapacityBytes - ctx.driver.allocatedBytes();
      if (input.memoryBytes > free) {
        throw userError('InsufficientCapacity', `target ${ctx.hostId} has ${free} bytes free; vm ${input.vm} needs ${input.memoryBytes}`);
      }
      const { memory, fresh } = ctx.driver.reserveIncoming(
        { name: input.vm, memoryBytes: input.memoryBytes, vcpus: input.vcpus, workload: input.workload, seed: 0 },
        input.pageSize,
      );
      if (memory.pageCount !== input.pageCount) {
        ctx.driver.dropIncoming(input.vm);
        throw userError('InvalidInput', `page count mismatch: source ${input.pageCount}, target ${memory.pageCount}`);
      }
      // With a cluster key the source derives the secret from the grant; only the grant goes to history.
      const granted = ctx.channelKeys ? grantSecret(ctx.channelKeys, 'channel-2', input.migrationId) : null;
      const secret = granted?.secret ?? randomBytes(32).toString('hex');
      // The session registers channel-2 for this migration as it is made.
      const s = new TargetSession({ migrationId: input.migrationId, vm: input.vm, source: input.source, memory, fresh, secret }, ctx.channels);
      s.grant = granted?.grant ?? null;
      sessions.addTarget(s);
      // What can be prepared before the pause is: a trace workload's file is parsed now.
      prepareWorkload(input.workload);
      return { dataAddress: ctx.dataAddress, ...(granted ? { grant: granted.grant } : { secret }), atMs: Date.now(), resumeEstimateMs: resumeEstimateMs(), pauseOverheadEstimateMs: pauses.estimateMs() };
    },

    async mergeStatic(ref: StepRef): Promise<StaticMergeResult> {
      const s = sessions.target(ref);
      return s.steps.once('merge-static', async () => {
        const t0 = Date.now();
        const reader = ctx.store.openReader(s.migrationId, 'static');
        const resumeFrom = activityInfo().heartbeatDetails as MergeProgress | undefined;
        const actx = Context.current();
        // Heartbeat while waiting for chunks too: a cancel (the workflow gave up on StaticData
        // because the save failed) reaches the activity only through a heartbeat.
        let progress = resumeFrom;
        const r = await heartbeatEvery(
          1000,
          () => progress,
          mergeStatic({
            reader,
            sink: s.memory,
            hasDynamic: (pfn) => s.hasDynamic.get(pfn),
            markStatic: (pfn) => s.staticWritten.set(pfn),
            zeroFilled: (pfn) => zeroFilledPage(s, pfn),
            signal: actx.cancellationSignal,
            onProgress: (p) => {
              progress = p;
              actx.heartbeat(p);
            },
            resumeFrom,
          }),
        ).catch((e: unknown) => {
          throw storageFailure(e) ?? e;
        });
        return { pages: r.pages, skippedNewer: r.skippedNewer, bytesRead: r.bytesRead, mergeMs: Date.now() - t0 };
      });
    },

    /**
     * `pausedAtMs` and `sentMs` (the source's pause instant and its own sending time) let this
     * agent learn the rest of the pause for the next stop-and-copy test (PauseHistory).
     */
    async resumeTarget(input: StepRef & { postcopy: boolean; digest: boolean; pausedAtMs?: number; sentMs?: number }): Promise<ResumeResult> {
      const s = sessions.target(input);
      return s.steps.once('resume', async () => {
        if (!s.deviceState) throw new Error(`migration ${s.migrationId}: device state has not arrived on ${ctx.hostId}`);
        if (input.postcopy) {
          if (!s.missing) throw new Error(`migration ${s.migrationId}: the missing-page set has not arrived on ${ctx.hostId}`);
          s.memory.markMissing(s.missing.toPfns());
          s.postcopy = true;
        }
        const digest = input.digest && !input.postcopy ? digestOf(s.memory) : null;
        const t0 = performance.now();
        const guest = EmulatedGuest.restore({ memory: s.memory, deviceState: s.deviceState });
        guest.onFault = (pfn) => {
          if (s.outstanding.has(pfn)) return;
          s.outstanding.set(pfn, performance.now());
          s.registration.channel?.requestPages([pfn]).catch(() => undefined);
          // A new deadline for the drain: this request must be answered in time.
          s.wakeup.notify();
        };
        s.guest = guest;
        s.faultBase = guest.stats().faults;
        ctx.driver.adoptIncoming(s.vm, guest);
        await guest.resume();
        resumes.push(performance.now() - t0);
        if (resumes.length > 5) resumes.shift();
        const resumedAtMs = Date.now();
        if (input.pausedAtMs !== undefined && input.sentMs !== undefined) pauses.record({ pausedAtMs: input.pausedAtMs, sentMs: input.sentMs, resumedAtMs });
        return { resumedAtMs, digest };
      });
    },

    async drainPostcopy(input: StepRef & { pbdata: 'sync' | 'async' | 'off'; faultTimeoutMs?: number }): Promise<DrainResult> {
      const s = sessions.target(input);
      return s.steps.once('drain', async () => {
        const faultTimeoutMs = input.faultTimeoutMs ?? DEFAULT_FAULT_TIMEOUT_MS;
        // A link that drops silently raises no error; if nothing arrives for this long while
        // pages are missing, channel-2 counts as lost even when no vCPU is waiting.
        const stallMs = Math.max(STALL_MS, 2 * faultTimeoutMs);
        let lastMissing = s.memory.missingCount();
        let lastProgress = performance.now();
        // When the drain last saw a page no fault asked for (it reads the clock, the page path only counts).
        let pushedAt = lastProgress;
        let unaskedSeen = s.unaskedPages;
        const actx = Context.current();
        let fellBack = false;
        let pbdataPages = 0;
        // A source whose push never started still answers faults: ask for the rest (postcopy-pull.ts).
        const puller = new PostcopyPuller();
        let storageBytesRead = 0;
        // PbData, once needed: read beside channel-2 while channel-2 is still open (a slow answer
        // is not a dead link, and a source cut off from Temporal may never write PbData), alone
        // once channel-2 is gone. Both carry the pages as they were at the pause; whichever
        // lands first is installed.
        let pb: { done: Promise<void>; failed: () => unknown; stop: AbortController } | null = null;
        const followPbData = () => {
          const stop = new AbortController();
          let failed: unknown = null;
          const done = loadPbData({
            reader: ctx.store.openReader(s.migrationId, 'pbdata'),
            install: (pfn, data) => {
              const installed = s.memory.installPage(pfn, data);
              if (installed) {
                pbdataPages++;
                s.wakeup.notify();
              }
              return installed;
            },
            signal: AbortSignal.any([actx.cancellationSignal, stop.signal]),
            timeoutMs: 30 * 60_000,
          }).then(
            (r) => {
              storageBytesRead = r.bytesRead;
              s.wakeup.notify();
            },
            (err: unknown) => {
              failed = err;
              s.wakeup.notify();
            },
          );
          return { done, stop, failed: () => failed };
        };
        const work = (async () => {
          for (;;) {
            const missing = s.memory.missingCount();
            if (missing === 0) break;
            actx.cancellationSignal.throwIfAborted();
            const now = performance.now();
            let stale = false;
            let oldestAsk = Infinity;
            for (const t of s.outstanding.values()) {
              if (now - t > faultTimeoutMs) stale = true;
              if (t < oldestAsk) oldestAsk = t;
            }
            if (missing < lastMissing) {
              lastMissing = missing;
              lastProgress = now;
            } else if (now - lastProgress > stallMs) {
              stale = true;
            }
            const ch = s.registration.channel;
            const channelGone = s.channelLost !== null || Boolean(ch && !ch.isOpen);
            if (channelGone || stale) {
              if (input.pbdata === 'off') {
                throw new Error(`channel-2 of migration ${s.migrationId} is lost in post-copy and PbData is off: ${s.missing ? s.memory.missingCount() : 0} pages wait for the source`);
              }
              // Request mode switch: the rest comes from PbData on shared storage.
              fellBack = true;
              pb ??= followPbData();
              if (channelGone) {
                await pb.done;
                if (pb.failed()) throw pb.failed();
                break;
              }
              // Channel-2 is slow, not gone: it goes on (faults, pulls) beside PbData.
              if (pb.failed() && now - lastProgress > stallMs * 3) throw pb.failed();
            }
            if (s.unaskedPages !== unaskedSeen) {
              unaskedSeen = s.unaskedPages;
              pushedAt = now;
            }
            if (ch && ch.isOpen) {
              const want = puller.next(now, pushedAt, missing, () => s.memory.missingPfns(), s.outstanding);
              if (want.length > 0) ch.requestPages(want).catch(() => undefined);
            }
            // Nothing to do until a page lands, a fault is asked, channel-2 goes, the activity
            // is cancelled, or the first deadline passes (just past it: the checks are strict).
            const pullAt = puller.dueAt(pushedAt);
            // (Once PbData is being read, the fault and stall deadlines have passed: only the pulls'.)
            const deadline = pb ? pullAt : Math.min(oldestAsk + faultTimeoutMs, lastProgress + stallMs, pullAt);
            await s.wakeup.wait(Math.min(DRAIN_RECHECK_MS, Math.max(1, deadline - now + 1)), actx.cancellationSignal);
          }
        })();
        try {
          await heartbeatEvery(1000, () => ({ missing: s.memory.missingCount() }), work);
        } finally {
          // Every page is here (or the step ends): a PbData read still going is not needed.
          const follower = pb as { done: Promise<void>; stop: AbortController } | null; // (assigned in `work`)
          if (follower) {
            follower.stop.abort();
            await follower.done;
          }
        }
        const completedAtMs = Date.now();
        // Every page is here: the source can stop pushing. Late frames still in flight are
        // ignored (post-copy mode installs only missing pages, and none is missing).
        s.registration.channel?.sendControl({ type: 'all-present' }).catch(() => undefined);
        // vCPUs report faults by message; some may still be in flight (a page installed
        // before its 'fault' message was read). Let them land, briefly, so the count and
        // the latencies cover every fault of this post-copy.
        const g = s.guest;
        const settleBy = performance.now() + 250;
        while (g && performance.now() < settleBy) {
          const f = g.faultStats();
          if (f.pending === 0 && g.stats().faults - s.faultBase <= f.faults) break;
          await sleep(2);
        }
        const fs = s.guest?.faultStats();
        const ch = s.registration.channel;
        return {
          completedAtMs,
          faults: fs?.faults ?? 0,
          faultLatencyMs: { p50: round3(fs?.p50 ?? 0), p99: round3(fs?.p99 ?? 0), max: round3(fs?.max ?? 0), histogram: latencyHistogram(fs?.latenciesMs ?? []) },
          pushedPages: s.pushedPages,
          pbdataPages,
          pulledPages: puller.pulled,
          fellBackToPbData: fellBack,
          bytesReceived: ch?.stats().received.wireBytes ?? 0,
          storageBytesRead,
        };
      });
    },

    async verifyTarget(ref: StepRef): Promise<VerifyResult> {
      const s = sessions.findTarget(ref.migrationId);
      const guest = s ? s.guest : ctx.driver.guest(ref.vm);
      if (!guest) throw userError('NotFound', `vm ${ref.vm} is not running on ${ctx.hostId}`);
      const run = async (): Promise<VerifyResult> => {
        const r = await verifyPaused(guest, true);
        if (s) {
          ctx.channels.forget(s.migrationId);
          sessions.dropTarget(ref.migrationId);
        }
        return r;
      };
      return s ? s.steps.once('verify', run) : run();
    },

    async abortTarget(ref: StepRef): Promise<{ aborted: boolean }> {
      const s = sessions.findTarget(ref.migrationId);
      ctx.channels.forget(ref.migrationId);
      sessions.dropTarget(ref.migrationId);
      if (s) {
        if (s.guest) await ctx.driver.destroyVm(s.vm);
        else ctx.driver.dropIncoming(s.vm);
        return { aborted: true };
      }
      return { aborted: false };
    },

    async cleanupStorage(ref: StepRef): Promise<{ removed: boolean }> {
      await ctx.store.remove(ref.migrationId);
      return { removed: true };
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

export type EmulatedTargetActivities = ReturnType<typeof createEmulatedTargetActivities>;
