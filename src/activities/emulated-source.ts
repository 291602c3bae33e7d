/**
 * Emulated engine, source side: the steps the agent that owns the running guest executes —
 * describeVm, prepareSource, saveStatic, runIteration, stopAndCopy, switchToPostcopy,
 * writePbData, pushPostcopy, releaseSource, rollbackSource, setBandwidth. Thin: each step
 * calls the guest, channel-2 or the shared store and reports what it measured. Every step is
 * idempotent on (migrationId, step) through the session's StepRecord.
 */
import { Context } from '@temporalio/activity';
import { Bitmap } from '../dataplane/bitmap';
import { countNonZeroPages } from '../dataplane/pages';
import { sampleGrowth } from './dirty-growth';
import { PageChannel } from '../dataplane/channel';
import { tlsCreateConnection } from '../dataplane/tls';
import { ChannelGrantError, sourceSecret } from '../security/channel-secret';
import { userError } from './errors';
import { digestOf, EmulatedSessions, heartbeatEvery, StepRecord, storageFailure, untilWorthARound, verifyPaused, type EmulatedContext, type SourceSession } from './emulated-sessions';
import type {
  DescribeVmInput,
  IterationInput,
  IterationResult,
  PbDataResult,
  PrepareSourceInput,
  PrepareSourceResult,
  PushResult,
  ReleaseResult,
  RollbackResult,
  StaticSaveResult,
  StepRef,
  StopAndCopyResult,
  SwitchResult,
  VmDescription,
} from './types';

/** Post-copy push: no byte left the source for this long = the link is silently dead. */
const PUSH_STALL_MS = 10_000;
/**
 * Channel-2 on the source: with pages or a barrier pending, nothing moved for this long =
 * the link is cut (a silent cut fails no send; without this an iteration waits on its
 * barrier until the 2 h start-to-close timeout, heartbeating all along). The step fails,
 * Temporal retries it, and the retry dials again (channelOf).
 */
const CHANNEL_STALL_MS = 8_000;
/** The channel-2 secret of a migration: derived from the target's grant, or as the target sent it. */
function channelSecretOf(ctx: EmulatedContext, input: PrepareSourceInput): string {
  try {
    return sourceSecret(ctx.channelKeys ?? null, 'channel-2', input.migrationId, input);
  } catch (e) {
    if (e instanceof ChannelGrantError) throw userError('InvalidInput', e.message);
    throw e;
  }
}

/** Dial + handshake of channel-2; a reconnect over a dead link fails this fast. */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * The source-side activities. `sessions` is the agent's registry, shared with its target-side
 * activities (createEmulatedActivities passes one to both).
 */
export function createEmulatedSourceActivities(ctx: EmulatedContext, sessions: EmulatedSessions = new EmulatedSessions(ctx.hostId)) {
  /** The open channel-2 connection of a source session, reconnecting if it broke. */
  const channelOf = async (s: SourceSession): Promise<PageChannel> => {
    if (s.channel?.isOpen) return s.channel;
    if (s.channel) s.closedChannelBytes += s.channel.stats().sent.wireBytes;
    s.channel = await PageChannel.connect({
      address: s.address,
      migrationId: s.migrationId,
      secret: s.secret,
      pageCount: s.memory.pageCount,
      pageSize: s.memory.pageSize,
      rateBytesPerSec: s.options.bandwidthBytesPerSec,
      compression: s.options.compression,
      zeroElision: s.options.zeroElision,
      stallTimeoutMs: CHANNEL_STALL_MS,
      handshakeTimeoutMs: CONNECT_TIMEOUT_MS,
      ...(ctx.tls ? { createConnection: tlsCreateConnection(ctx.tls, s.target, { timeoutMs: CONNECT_TIMEOUT_MS }) } : {}),
      handlers: {
        onFaultRequest: (pfns) => {
          // Post-copy: the target's vCPU waits for these; they overtake the background push.
          s.channel?.sendPages(pfns, s.memory, { lane: 'priority' }).catch(() => undefined);
        },
        onControl: (msg) => {
          if ((msg as { type?: string })?.type === 'all-present') s.allPresent = true;
        },
      },
    });
    return s.channel;
  };

  const sourceChannelBytes = (s: SourceSession): number => s.closedChannelBytes + (s.channel?.stats().sent.wireBytes ?? 0);

  /** Send pages and wait until the target applied them; they stay "unacked" until then. */
  const sendAndConfirm = async (s: SourceSession, pfns: Uint32Array): Promise<number> => {
    for (const p of pfns) s.unacked.set(p);
    const ch = await channelOf(s);
    const before = ch.stats().sent.wireBytes;
    await ch.sendPages(pfns, s.memory, { lane: 'bulk' });
    await ch.barrier();
    s.unacked.clearAll();
    return ch.stats().sent.wireBytes - before;
  };

  /** Dirty log ∪ pages sent but not confirmed (a failed attempt's pages are sent again). */
  const pendingPages = (s: SourceSession): Uint32Array => {
    const set = s.unacked.clone();
    for (const p of s.memory.collectDirty()) set.set(p);
    return set.toPfns();
  };

  return {
    async describeVm(input: DescribeVmInput): Promise<VmDescription> {
      const info = ctx.driver.describe(input?.vm);
      const guest = ctx.driver.guest(input?.vm);
      if (!info || !guest || info.state === 'incoming') throw userError('NotFound', `vm ${String(input?.vm)} is not on host ${ctx.hostId}`);
      const limit = input.countNonZeroUpToBytes;
      if (limit !== undefined && !(Number.isFinite(limit) && limit >= 0)) throw userError('InvalidInput', `countNonZeroUpToBytes must be a byte count >= 0, got ${String(limit)}`);
      return {
        ...(limit !== undefined ? { nonZeroPages: countNonZeroPages(guest.memory, Math.ceil(limit / guest.memory.pageSize)) } : {}),
        vm: info.name,
        host: ctx.hostId,
        memoryBytes: info.memoryBytes,
        pageSize: guest.memory.pageSize,
        pageCount: guest.memory.pageCount,
        vcpus: info.vcpus,
        workload: info.workload,
        state: info.state,
      };
    },

    async prepareSource(input: PrepareSourceInput): Promise<PrepareSourceResult> {
      const existing = sessions.findSource(input.migrationId);
      if (existing) return existing.steps.once('prepare', async () => ({ startedAtMs: Date.now(), pageCount: existing.memory.pageCount, pageSize: existing.memory.pageSize }));
      const guest = ctx.driver.guest(input.vm);
      if (!guest) throw userError('NotFound', `vm ${input.vm} is not on host ${ctx.hostId}`);
      const busy = sessions.sourceOfVm(input.vm);
      if (busy) throw userError('Conflict', `vm ${input.vm} is already migrating (${busy.migrationId})`);
      if (guest.state !== 'running') throw userError('Conflict', `vm ${input.vm} is ${guest.state}, not running`);
      const s: SourceSession = {
        migrationId: input.migrationId,
        vm: input.vm,
        guest,
        memory: guest.memory,
        strategy: input.strategy,
        options: input.options,
        target: input.target,
        address: input.dataAddress,
        secret: channelSecretOf(ctx, input),
        channel: null,
        closedChannelBytes: 0,
        unacked: new Bitmap(guest.memory.pageCount),
        baselineSent: false,
        saveEnded: false,
        missing: null,
        allPresent: false,
        storageBytesWritten: 0,
        pausedAtMs: null,
        steps: new StepRecord(),
      };
      sessions.addSource(s);
      return s.steps.once('prepare', async () => {
        // Dirty logging starts before any page is read: every later write is caught.
        s.memory.clearDirty();
        const startedAtMs = Date.now();
        await channelOf(s);
        ctx.driver.setState(input.vm, 'migrating');
        return { startedAtMs, pageCount: s.memory.pageCount, pageSize: s.memory.pageSize };
      });
    },

    async saveStatic(ref: StepRef): Promise<StaticSaveResult> {
      const s = sessions.source(ref);
      return s.steps.once('save-static', async () => {
        const t0 = Date.now();
        const writer = await ctx.store
          .openWriter(s.migrationId, 'static', {
            pageSize: s.memory.pageSize,
            pageCount: s.memory.pageCount,
            rateBytesPerSec: s.options.storageBandwidthBytesPerSec,
            resume: true,
          })
          .catch((e: unknown) => {
            throw storageFailure(e) ?? e;
          });
        const todo: number[] = [];
        for (let p = 0; p < s.memory.pageCount; p++) if (!writer.covered.get(p)) todo.push(p);
        const signal = Context.current().cancellationSignal;
        try {
          await heartbeatEvery(1000, () => writer.stats(), writer.writePages(Uint32Array.from(todo), s.memory, signal));
          await writer.commit();
        } catch (e) {
          throw storageFailure(e) ?? e;
        } finally {
          s.saveEnded = true;
        }
        const st = writer.stats();
        s.storageBytesWritten += st.bytesWritten;
        s.baselineSent = true;
        return { pages: s.memory.pageCount, zeroPages: st.zeroPages, bytesWritten: st.bytesWritten, saveMs: Date.now() - t0 };
      });
    },

    async runIteration(input: IterationInput): Promise<IterationResult> {
      const s = sessions.source(input);
      return s.steps.once(`iteration-${input.index}`, async () => {
        if (input.startWhen && !input.bulk) {
          const w = input.startWhen;
          await heartbeatEvery(1000, () => ({ waiting: true }), untilWorthARound(s, w.worthPages, w.maxWaitMs, Context.current().cancellationSignal));
        }
        const t0 = performance.now();
        let pfns: Uint32Array;
        if (input.bulk) {
          // The bulk round sends every page; what it dirties meanwhile goes next round.
          s.memory.collectDirty();
          pfns = new Uint32Array(s.memory.pageCount);
          for (let i = 0; i < pfns.length; i++) pfns[i] = i;
        } else {
          pfns = pendingPages(s);
        }
        let sent = 0;
        const growth = sampleGrowth(() => s.memory.dirtyCount(), t0);
        const bytes = await heartbeatEvery(1000, () => ({ pages: pfns.length, sent }), sendAndConfirm(s, pfns)).finally(() => growth.stop());
        sent = pfns.length;
        if (input.bulk) s.baselineSent = true;
        const durationMs = performance.now() - t0;
        const dirtyAfter = s.memory.dirtyCount();
        return {
          index: input.index,
          pages: pfns.length,
          durationMs: Math.round(durationMs * 1000) / 1000,
          bytes,
          dirtyAfter,
          growth: growth.curve([Math.round(durationMs), dirtyAfter]),
          finishedAtMs: Date.now(),
        };
      });
    },

    async stopAndCopy(ref: StepRef): Promise<StopAndCopyResult> {
      const s = sessions.source(ref);
      return s.steps.once('stop-and-copy', async () => {
        await s.guest.pause();
        s.pausedAtMs ??= Date.now();
        const t0 = performance.now();
        const pfns = pendingPages(s);
        const ch = await channelOf(s);
        const before = ch.stats().sent.wireBytes;
        for (const p of pfns) s.unacked.set(p);
        await ch.sendPages(pfns, s.memory, { lane: 'bulk' });
        await ch.sendControl({ type: 'device-state', state: s.guest.saveDeviceState() });
        await ch.barrier();
        s.unacked.clearAll();
        const bytes = ch.stats().sent.wireBytes - before;
        const durationMs = performance.now() - t0;
        return { pausedAtMs: s.pausedAtMs, pages: pfns.length, bytes, durationMs, digest: null };
      });
    },

    async switchToPostcopy(ref: StepRef): Promise<SwitchResult> {
      const s = sessions.source(ref);
      return s.steps.once('switch', async () => {
        await s.guest.pause();
        s.pausedAtMs ??= Date.now();
        // D: the pages the target does not have — all of them if nothing was sent yet.
        // A retried switch (channel-2 failed at the barrier) keeps the first attempt's set:
        // those pages have left the dirty log, and the guest has stayed paused since.
        const missing = s.missing ?? (s.baselineSent ? Bitmap.fromPfns(s.memory.pageCount, pendingPages(s)) : Bitmap.full(s.memory.pageCount));
        s.memory.collectDirty();
        s.missing = missing;
        const t0 = performance.now();
        const ch = await channelOf(s);
        const before = ch.stats().sent.wireBytes;
        await ch.sendControl({ type: 'device-state', state: s.guest.saveDeviceState() });
        await ch.sendControl({ type: 'postcopy', missing: missing.encode() });
        await ch.barrier();
        s.unacked.clearAll();
        return {
          pausedAtMs: s.pausedAtMs,
          missingPages: missing.count(),
          bytes: ch.stats().sent.wireBytes - before,
          durationMs: performance.now() - t0,
          digest: null,
        };
      });
    },

    async writePbData(ref: StepRef): Promise<PbDataResult> {
      const s = sessions.source(ref);
      return s.steps.once('pbdata', async () => {
        if (!s.missing) throw new Error(`migration ${s.migrationId}: PbData before the switch`);
        const t0 = Date.now();
        const missing = s.missing;
        // Storage full or not writable fails at once, not retried: after the switch the
        // workflow would otherwise wait on it for ever (the target needs PbData only if
        // channel-2 fails too).
        const writer = await (async () => {
          const w = await ctx.store.openWriter(s.migrationId, 'pbdata', {
            pageSize: s.memory.pageSize,
            pageCount: s.memory.pageCount,
            rateBytesPerSec: s.options.storageBandwidthBytesPerSec,
            resume: true,
          });
          const todo = missing.toPfns().filter((p) => !w.covered.get(p));
          await heartbeatEvery(1000, () => w.stats(), w.writePages(todo, s.memory, Context.current().cancellationSignal));
          await w.commit();
          return w;
        })().catch((e: unknown) => {
          throw storageFailure(e) ?? e;
        });
        const st = writer.stats();
        s.storageBytesWritten += st.bytesWritten;
        return { pages: s.missing.count(), bytesWritten: st.bytesWritten, ms: Date.now() - t0, committedAtMs: Date.now() };
      });
    },

    async pushPostcopy(ref: StepRef): Promise<PushResult> {
      const s = sessions.source(ref);
      return s.steps.once('push', async () => {
        if (!s.missing) throw new Error(`migration ${s.migrationId}: push before the switch`);
        const all = s.missing.toPfns();
        let pushed = 0;
        const before = sourceChannelBytes(s);
        const work = (async (): Promise<boolean> => {
          try {
            const ch = await channelOf(s);
            // A silently dropped link fails no send: the socket just stops draining. Give up
            // when no byte has left for PUSH_STALL_MS (the target completes from PbData);
            // without this the push, and the source's release after it, wait forever.
            let lastBytes = -1;
            let lastMoveAt = performance.now();
            const watchdog = setInterval(() => {
              const b = ch.stats().sent.wireBytes;
              if (b !== lastBytes) {
                lastBytes = b;
                lastMoveAt = performance.now();
              } else if (performance.now() - lastMoveAt > PUSH_STALL_MS) {
                ch.destroy(new Error(`channel-2 of migration ${s.migrationId}: nothing sent for ${PUSH_STALL_MS} ms, the link is dead`));
              }
            }, 250);
            try {
              const batch = 1024;
              for (let i = 0; i < all.length && !s.allPresent; i += batch) {
                // Bounded: wait for each batch to reach the kernel so fault answers overtake.
                await ch.sendPages(all.subarray(i, i + batch), s.memory, { lane: 'bulk' });
                pushed = Math.min(all.length, i + batch);
              }
              await ch.barrier();
            } finally {
              clearInterval(watchdog);
            }
            return false;
          } catch {
            return true;
          }
        })();
        const channelLost = await heartbeatEvery(1000, () => ({ pushed, of: all.length }), work);
        const prio = s.channel?.stats().sent.priority.pages ?? 0;
        return { pushedPages: pushed, faultPagesServed: prio, bytes: sourceChannelBytes(s) - before, channelLost };
      });
    },

    async releaseSource(ref: StepRef): Promise<ReleaseResult> {
      const s = sessions.findSource(ref.migrationId);
      if (!s) {
        // Already released (a retry after success): nothing left to do.
        return { releasedAtMs: Date.now(), channelBytes: -1, storageBytesWritten: 0, digest: null };
      }
      return s.steps.once('release', async () => {
        const channelBytes = sourceChannelBytes(s);
        // The guest has stayed paused since the switch: its memory is the state at the pause.
        const digest = s.options.digest ? digestOf(s.memory) : null;
        await s.channel?.close().catch(() => undefined);
        await ctx.driver.destroyVm(s.vm);
        sessions.dropSource(ref.migrationId);
        return { releasedAtMs: Date.now(), channelBytes, storageBytesWritten: s.storageBytesWritten, digest };
      });
    },

    async rollbackSource(ref: StepRef): Promise<RollbackResult> {
      const s = sessions.findSource(ref.migrationId);
      const guest = ctx.driver.guest(ref.vm);
      if (s) {
        s.channel?.destroy();
        sessions.dropSource(ref.migrationId);
      }
      if (!guest) {
        const restarted = !s;
        return {
          guestRunning: false,
          verification: null,
          note: restarted
            ? `vm ${ref.vm} is gone from ${ctx.hostId}: its agent restarted during the migration (at ${new Date(ctx.startedAtMs).toISOString()}) and an emulated guest lives in its agent's process`
            : `vm ${ref.vm} is not on ${ctx.hostId}`,
        };
      }
      // The guest keeps (or goes back to) running here; check it while we are at it.
      const verification = await verifyPaused(guest, true);
      ctx.driver.setState(ref.vm, 'running');
      return { guestRunning: guest.state === 'running', verification, note: `vm ${ref.vm} runs on ${ctx.hostId}` };
    },

    async setBandwidth(input: StepRef & { bandwidthBytesPerSec: number }): Promise<{ applied: boolean }> {
      const s = sessions.findSource(input.migrationId);
      if (!s) return { applied: false };
      s.options = { ...s.options, bandwidthBytesPerSec: input.bandwidthBytesPerSec };
      s.channel?.setRate(input.bandwidthBytesPerSec);
      return { applied: true };
    },
  };
}

export type EmulatedSourceActivities = ReturnType<typeof createEmulatedSourceActivities>;
