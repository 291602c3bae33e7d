/**
 * Migration steps on the host agents. Thin: each step calls the guest, channel-2 or the
 * shared store and reports what it measured. Every step is idempotent on
 * (migrationId, step): a retried step returns its recorded result instead of sending twice,
 * and a retry of a step still running joins it.
 *
 * Source side: describeVm, prepareSource, saveStatic, runIteration, stopAndCopy,
 * switchToPostcopy, writePbData, pushPostcopy, releaseSource, rollbackSource, setBandwidth.
 * Target side: prepareTarget, mergeStatic, resumeTarget, drainPostcopy, verifyTarget,
 * abortTarget, cleanupStorage.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Context, activityInfo } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { Bitmap } from '../dataplane/bitmap';
import { PageChannel, type PageChannelServer, type Registration } from '../dataplane/channel';
import { tlsCreateConnection, type ChannelTls } from '../dataplane/tls';
import { loadPbData, mergeStatic, type MergeProgress } from '../dataplane/merge';
import type { SharedStore } from '../dataplane/store';
import { EmulatedGuest } from '../guest';
import type { GuestDeviceState } from '../guest/guest';
import type { GuestMemory } from '../guest/memory';
import type { EmulatedDriver } from '../hypervisor/emulated';
import type { StrategyName } from '../policy/types';
import { userError } from './errors';
import type { HostContext } from './host';
import type {
  DrainResult,
  IterationInput,
  IterationResult,
  MigrationOptions,
  PbDataResult,
  PrepareSourceInput,
  PrepareSourceResult,
  PrepareTargetInput,
  PrepareTargetResult,
  PushResult,
  ReleaseResult,
  ResumeResult,
  RollbackResult,
  StaticMergeResult,
  StaticSaveResult,
  StepRef,
  StopAndCopyResult,
  SwitchResult,
  VerifyResult,
  VmDescription,
} from './types';

export interface MigrationContext extends HostContext {
  driver: EmulatedDriver;
  channels: PageChannelServer;
  store: SharedStore;
  /** Mutual TLS on channel-2: the source dials with it and expects the target's host id. */
  tls?: ChannelTls;
}

/** Recorded results per step; a retry of a running step awaits the same promise. */
class Journal {
  private readonly steps = new Map<string, Promise<unknown>>();
  once<T>(step: string, fn: () => Promise<T>): Promise<T> {
    const known = this.steps.get(step);
    if (known) return known as Promise<T>;
    const p = fn();
    this.steps.set(step, p);
    p.catch(() => this.steps.delete(step));
    return p;
  }
}

interface SourceSession {
  kind: 'source';
  migrationId: string;
  vm: string;
  guest: EmulatedGuest;
  memory: GuestMemory;
  strategy: StrategyName;
  options: MigrationOptions;
  /** The target's host id (what its TLS certificate must name). */
  target: string;
  address: string;
  secret: string;
  channel: PageChannel | null;
  /** Wire bytes of channels already closed (reconnects). */
  closedChannelBytes: number;
  /** Pages collected from the dirty log but not yet acknowledged by the target. */
  unacked: Bitmap;
  /** Every page has reached the target once (bulk round or StaticData). */
  baselineSent: boolean;
  /** Post-copy: the pages missing on the target. */
  missing: Bitmap | null;
  /** The target reported every page present: stop pushing. */
  allPresent: boolean;
  storageBytesWritten: number;
  pausedAtMs: number | null;
  journal: Journal;
}

interface TargetSession {
  kind: 'target';
  migrationId: string;
  vm: string;
  source: string;
  memory: GuestMemory;
  hasDynamic: Bitmap;
  registration: Registration;
  deviceState: GuestDeviceState | null;
  missing: Bitmap | null;
  guest: EmulatedGuest | null;
  postcopy: boolean;
  /** Pages installed from channel-2 during post-copy (pushes and fault answers). */
  pushedPages: number;
  channelLost: Error | null;
  /** Fault requests sent and not answered yet: pfn → time asked. */
  outstanding: Map<number, number>;
  /** vCPU fault counter carried in the device state (faults of earlier migrations). */
  faultBase: number;
  wake: () => void;
  journal: Journal;
}

const DEFAULT_FAULT_TIMEOUT_MS = 2000;
const STALL_MS = 10_000;
/** Post-copy push: no byte left the source for this long = the link is silently dead. */
const PUSH_STALL_MS = 10_000;
/**
 * Channel-2 on the source: with pages or a barrier pending, nothing moved for this long =
 * the link is cut (a silent cut fails no send; without this an iteration waits on its
 * barrier until the 2 h start-to-close timeout, heartbeating all along). The step fails,
 * Temporal retries it, and the retry dials again (channelOf).
 */
const CHANNEL_STALL_MS = 8_000;
/** Dial + handshake of channel-2; a reconnect over a dead link fails this fast. */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * A write to shared storage that retrying will not fix soon: the step fails non-retryably
 * with the reason ("storage full: …"), and the workflow stops using channel-1.
 */
function storageFailure(err: unknown): ApplicationFailure | null {
  const code = (err as { code?: unknown } | null)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') return ApplicationFailure.create({ type: 'StorageFull', message: `storage full: ${msg}`, nonRetryable: true });
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') return ApplicationFailure.create({ type: 'StorageUnavailable', message: `storage not writable: ${msg}`, nonRetryable: true });
  // Other I/O errors (EIO of a soft NFS mount, ENOENT of a vanished mount…): retried.
  if (typeof code === 'string' && code.startsWith('E')) return ApplicationFailure.create({ type: 'StorageError', message: `storage unavailable: ${msg}`, nonRetryable: false });
  return null;
}

function heartbeatEvery<T>(ms: number, details: () => unknown, work: Promise<T>): Promise<T> {
  const ctx = Context.current();
  const t = setInterval(() => ctx.heartbeat(details()), ms);
  return work.finally(() => clearInterval(t));
}

function digestOf(memory: GuestMemory): string {
  const h = createHash('sha256');
  for (let pfn = 0; pfn < memory.pageCount; pfn++) h.update(memory.page(pfn));
  return h.digest('hex');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function createMigrationActivities(ctx: MigrationContext) {
  const sessions = new Map<string, SourceSession | TargetSession>();

  const sourceSession = (ref: StepRef): SourceSession => {
    const s = sessions.get(`src:${ref.migrationId}`);
    if (!s || s.kind !== 'source') {
      throw userError('NotFound', `migration ${ref.migrationId} is unknown on source host ${ctx.hostId} (was its agent restarted?)`);
    }
    return s;
  };
  const targetSession = (ref: StepRef): TargetSession => {
    const s = sessions.get(`tgt:${ref.migrationId}`);
    if (!s || s.kind !== 'target') {
      throw userError('NotFound', `migration ${ref.migrationId} is unknown on target host ${ctx.hostId} (was its agent restarted?)`);
    }
    return s;
  };

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

  const verifyPaused = async (guest: EmulatedGuest, wasRunning: boolean): Promise<VerifyResult> => {
    await guest.pause();
    try {
      const r = guest.verify();
      return {
        ok: r.ok,
        pagesChecked: r.pagesChecked,
        mismatches: r.mismatches,
        method: r.method,
        firstMismatches: r.firstMismatches.slice(0, 5).map((m) => `pfn ${m.pfn}: ${m.problem}`),
      };
    } finally {
      if (wasRunning) await guest.resume();
    }
  };

  return {
    // ---------------------------------------------------------------- source side
    async describeVm(input: { vm: string }): Promise<VmDescription> {
      const info = ctx.driver.describe(input?.vm);
      const guest = ctx.driver.guest(input?.vm);
      if (!info || !guest || info.state === 'incoming') throw userError('NotFound', `vm ${String(input?.vm)} is not on host ${ctx.hostId}`);
      return {
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
      const key = `src:${input.migrationId}`;
      const existing = sessions.get(key);
      if (existing?.kind === 'source') return existing.journal.once('prepare', async () => ({ startedAtMs: Date.now(), pageCount: existing.memory.pageCount, pageSize: existing.memory.pageSize }));
      const guest = ctx.driver.guest(input.vm);
      if (!guest) throw userError('NotFound', `vm ${input.vm} is not on host ${ctx.hostId}`);
      for (const s of sessions.values()) {
        if (s.kind === 'source' && s.vm === input.vm) throw userError('Conflict', `vm ${input.vm} is already migrating (${s.migrationId})`);
      }
      if (guest.state !== 'running') throw userError('Conflict', `vm ${input.vm} is ${guest.state}, not running`);
      const s: SourceSession = {
        kind: 'source',
        migrationId: input.migrationId,
        vm: input.vm,
        guest,
        memory: guest.memory,
        strategy: input.strategy,
        options: input.options,
        target: input.target,
        address: input.dataAddress,
        secret: input.secret,
        channel: null,
        closedChannelBytes: 0,
        unacked: new Bitmap(guest.memory.pageCount),
        baselineSent: false,
        missing: null,
        allPresent: false,
        storageBytesWritten: 0,
        pausedAtMs: null,
        journal: new Journal(),
      };
      sessions.set(key, s);
      return s.journal.once('prepare', async () => {
        // Dirty logging starts before any page is read: every later write is caught.
        s.memory.clearDirty();
        const startedAtMs = Date.now();
        await channelOf(s);
        ctx.driver.setState(input.vm, 'migrating');
        return { startedAtMs, pageCount: s.memory.pageCount, pageSize: s.memory.pageSize };
      });
    },

    async saveStatic(ref: StepRef): Promise<StaticSaveResult> {
      const s = sourceSession(ref);
      return s.journal.once('save-static', async () => {
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
        }
        const st = writer.stats();
        s.storageBytesWritten += st.bytesWritten;
        s.baselineSent = true;
        return { pages: s.memory.pageCount, zeroPages: st.zeroPages, bytesWritten: st.bytesWritten, saveMs: Date.now() - t0 };
      });
    },

    async runIteration(input: IterationInput): Promise<IterationResult> {
      const s = sourceSession(input);
      return s.journal.once(`iteration-${input.index}`, async () => {
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
        const bytes = await heartbeatEvery(1000, () => ({ pages: pfns.length, sent }), sendAndConfirm(s, pfns));
        sent = pfns.length;
        if (input.bulk) s.baselineSent = true;
        const durationMs = performance.now() - t0;
        return {
          index: input.index,
          pages: pfns.length,
          durationMs: Math.round(durationMs * 1000) / 1000,
          bytes,
          dirtyAfter: s.memory.dirtyCount(),
          finishedAtMs: Date.now(),
        };
      });
    },

    async stopAndCopy(ref: StepRef): Promise<StopAndCopyResult> {
      const s = sourceSession(ref);
      return s.journal.once('stop-and-copy', async () => {
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
      const s = sourceSession(ref);
      return s.journal.once('switch', async () => {
        await s.guest.pause();
        s.pausedAtMs ??= Date.now();
        // D: the pages the target does not have — all of them if nothing was sent yet.
        // A retried switch (channel-2 failed at the barrier) keeps the first attempt's set:
        // those pages have left the dirty log, and the guest has stayed paused since.
        const missing = s.missing ?? (s.baselineSent ? Bitmap.fromPfns(s.memory.pageCount, pendingPages(s)) : Bitmap.full(s.memory.pageCount));
        s.memory.collectDirty();
        s.missing = missing;
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
          digest: null,
        };
      });
    },

    async writePbData(ref: StepRef): Promise<PbDataResult> {
      const s = sourceSession(ref);
      return s.journal.once('pbdata', async () => {
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
      const s = sourceSession(ref);
      return s.journal.once('push', async () => {
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
      const s = sessions.get(`src:${ref.migrationId}`);
      if (!s || s.kind !== 'source') {
        // Already released (a retry after success): nothing left to do.
        return { releasedAtMs: Date.now(), channelBytes: -1, storageBytesWritten: 0, digest: null };
      }
      return s.journal.once('release', async () => {
        const channelBytes = sourceChannelBytes(s);
        // The guest has stayed paused since the switch: its memory is the state at the pause.
        const digest = s.options.digest ? digestOf(s.memory) : null;
        await s.channel?.close().catch(() => undefined);
        await ctx.driver.destroyVm(s.vm);
        sessions.delete(`src:${ref.migrationId}`);
        return { releasedAtMs: Date.now(), channelBytes, storageBytesWritten: s.storageBytesWritten, digest };
      });
    },

    async rollbackSource(ref: StepRef): Promise<RollbackResult> {
      const s = sessions.get(`src:${ref.migrationId}`);
      const guest = ctx.driver.guest(ref.vm);
      if (s?.kind === 'source') {
        s.channel?.destroy();
        sessions.delete(`src:${ref.migrationId}`);
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
      const s = sessions.get(`src:${input.migrationId}`);
      if (!s || s.kind !== 'source') return { applied: false };
      s.options = { ...s.options, bandwidthBytesPerSec: input.bandwidthBytesPerSec };
      s.channel?.setRate(input.bandwidthBytesPerSec);
      return { applied: true };
    },

    // ---------------------------------------------------------------- target side
    async prepareTarget(input: PrepareTargetInput): Promise<PrepareTargetResult> {
      const key = `tgt:${input.migrationId}`;
      const existing = sessions.get(key);
      if (existing?.kind === 'target') {
        return { dataAddress: ctx.dataAddress, secret: (existing as TargetSession & { secret: string }).secret, atMs: Date.now() };
      }
      if (ctx.driver.describe(input.vm)) throw userError('Conflict', `host ${ctx.hostId} already has a vm named ${input.vm}`);
      const free = ctx.memoryCapacityBytes - ctx.driver.allocatedBytes();
      if (input.memoryBytes > free) {
        throw userError('InsufficientCapacity', `target ${ctx.hostId} has ${free} bytes free; vm ${input.vm} needs ${input.memoryBytes}`);
      }
      const memory = ctx.driver.reserveIncoming(
        { name: input.vm, memoryBytes: input.memoryBytes, vcpus: input.vcpus, workload: input.workload, seed: 0 },
        input.pageSize,
      );
      if (memory.pageCount !== input.pageCount) {
        ctx.driver.dropIncoming(input.vm);
        throw userError('InvalidInput', `page count mismatch: source ${input.pageCount}, target ${memory.pageCount}`);
      }
      const secret = randomBytes(32).toString('hex');
      let wakeFn = (): void => undefined;
      const s: TargetSession & { secret: string } = {
        kind: 'target',
        migrationId: input.migrationId,
        vm: input.vm,
        source: input.source,
        memory,
        hasDynamic: new Bitmap(memory.pageCount),
        registration: null as unknown as Registration,
        deviceState: null,
        missing: null,
        guest: null,
        postcopy: false,
        pushedPages: 0,
        channelLost: null,
        outstanding: new Map(),
        faultBase: 0,
        wake: () => wakeFn(),
        journal: new Journal(),
        secret,
      };
      s.registration = ctx.channels.expect({
        migrationId: input.migrationId,
        secret,
        pageCount: memory.pageCount,
        pageSize: memory.pageSize,
        // The source dials again when it gives up on a silently cut link; our end of the old
        // connection may still look open.
        onReconnect: 'replace',
        handlers: {
          onPages: (pfn, data) => {
            if (s.postcopy) {
              // Post-copy: install only what is still missing; the guest may have written
              // the rest since it resumed.
              if (memory.installPage(pfn, data)) s.pushedPages++;
              s.outstanding.delete(pfn);
            } else {
              memory.writePage(pfn, data);
              s.hasDynamic.set(pfn);
            }
          },
          onControl: (msg) => {
            const m = msg as { type?: string; state?: GuestDeviceState; missing?: { size: number; bits: string } };
            if (m?.type === 'device-state' && m.state) s.deviceState = m.state;
            else if (m?.type === 'postcopy' && m.missing) s.missing = Bitmap.decode(m.missing);
          },
          onClose: (err) => {
            if (s.postcopy) {
              s.channelLost = err ?? new Error('channel-2 closed by the source');
              s.wake();
            }
          },
        },
      });
      sessions.set(key, s);
      s.wake = () => wakeFn();
      wakeFn = () => undefined;
      return { dataAddress: ctx.dataAddress, secret, atMs: Date.now() };
    },

    async mergeStatic(ref: StepRef): Promise<StaticMergeResult> {
      const s = targetSession(ref);
      return s.journal.once('merge-static', async () => {
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
            signal: actx.cancellationSignal,
            onProgress: (p) => {
              progress = p;
              actx.heartbeat(p);
            },
            resumeFrom,
          }),
        );
        return { pages: r.pages, skippedNewer: r.skippedNewer, bytesRead: r.bytesRead, mergeMs: Date.now() - t0 };
      });
    },

    async resumeTarget(input: StepRef & { postcopy: boolean; digest: boolean }): Promise<ResumeResult> {
      const s = targetSession(input);
      return s.journal.once('resume', async () => {
        if (!s.deviceState) throw new Error(`migration ${s.migrationId}: device state has not arrived on ${ctx.hostId}`);
        if (input.postcopy) {
          if (!s.missing) throw new Error(`migration ${s.migrationId}: the missing-page set has not arrived on ${ctx.hostId}`);
          s.memory.markMissing(s.missing.toPfns());
          s.postcopy = true;
        }
        const digest = input.digest && !input.postcopy ? digestOf(s.memory) : null;
        const guest = EmulatedGuest.restore({ memory: s.memory, deviceState: s.deviceState });
        guest.onFault = (pfn) => {
          if (s.outstanding.has(pfn)) return;
          s.outstanding.set(pfn, performance.now());
          s.registration.channel?.requestPages([pfn]).catch(() => undefined);
        };
        s.guest = guest;
        s.faultBase = guest.stats().faults;
        ctx.driver.adoptIncoming(s.vm, guest);
        await guest.resume();
        return { resumedAtMs: Date.now(), digest };
      });
    },

    async drainPostcopy(input: StepRef & { pbdata: 'sync' | 'async' | 'off'; faultTimeoutMs?: number }): Promise<DrainResult> {
      const s = targetSession(input);
      return s.journal.once('drain', async () => {
        const faultTimeoutMs = input.faultTimeoutMs ?? DEFAULT_FAULT_TIMEOUT_MS;
        // A link that drops silently raises no error; if nothing arrives for this long while
        // pages are missing, channel-2 counts as lost even when no vCPU is waiting.
        const stallMs = Math.max(STALL_MS, 2 * faultTimeoutMs);
        let lastMissing = s.memory.missingCount();
        let lastProgress = performance.now();
        const actx = Context.current();
        let fellBack = false;
        let pbdataPages = 0;
        let storageBytesRead = 0;
        const work = (async () => {
          while (s.memory.missingCount() > 0) {
            actx.cancellationSignal.throwIfAborted();
            const now = performance.now();
            let stale = false;
            for (const t of s.outstanding.values()) if (now - t > faultTimeoutMs) stale = true;
            const missing = s.memory.missingCount();
            if (missing < lastMissing) {
              lastMissing = missing;
              lastProgress = now;
            } else if (now - lastProgress > stallMs) {
              stale = true;
            }
            const ch = s.registration.channel;
            if (s.channelLost || stale || (ch && !ch.isOpen)) {
              if (input.pbdata === 'off') {
                throw new Error(`channel-2 of migration ${s.migrationId} is lost in post-copy and PbData is off: ${s.missing ? s.memory.missingCount() : 0} pages wait for the source`);
              }
              // Request mode switch: the rest comes from PbData on shared storage.
              fellBack = true;
              const reader = ctx.store.openReader(s.migrationId, 'pbdata');
              const r = await loadPbData({ reader, install: (pfn, data) => s.memory.installPage(pfn, data), signal: actx.cancellationSignal, timeoutMs: 30 * 60_000 });
              pbdataPages = r.installed;
              storageBytesRead = r.bytesRead;
              break;
            }
            await sleep(5);
          }
        })();
        await heartbeatEvery(1000, () => ({ missing: s.memory.missingCount() }), work);
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
          faultLatencyMs: { p50: round3(fs?.p50 ?? 0), p99: round3(fs?.p99 ?? 0), max: round3(fs?.max ?? 0) },
          pushedPages: s.pushedPages,
          pbdataPages,
          fellBackToPbData: fellBack,
          bytesReceived: ch?.stats().received.wireBytes ?? 0,
          storageBytesRead,
        };
      });
    },

    async verifyTarget(ref: StepRef): Promise<VerifyResult> {
      const s = sessions.get(`tgt:${ref.migrationId}`);
      const guest = s?.kind === 'target' ? s.guest : ctx.driver.guest(ref.vm);
      if (!guest) throw userError('NotFound', `vm ${ref.vm} is not running on ${ctx.hostId}`);
      const run = async (): Promise<VerifyResult> => {
        const r = await verifyPaused(guest, true);
        if (s?.kind === 'target') {
          ctx.channels.forget(s.migrationId);
          sessions.delete(`tgt:${ref.migrationId}`);
        }
        return r;
      };
      return s?.kind === 'target' ? s.journal.once('verify', run) : run();
    },

    async abortTarget(ref: StepRef): Promise<{ aborted: boolean }> {
      const s = sessions.get(`tgt:${ref.migrationId}`);
      ctx.channels.forget(ref.migrationId);
      sessions.delete(`tgt:${ref.migrationId}`);
      if (s?.kind === 'target') {
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

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

export type MigrationActivities = ReturnType<typeof createMigrationActivities>;
