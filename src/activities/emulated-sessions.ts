/**
 * Emulated engine, both sides: what the source and target activities of one agent share —
 * the context they run in, the per-migration sessions (one registry per agent, holding the
 * source sessions and the target sessions of the migrations it takes part in), the per-step
 * idempotency record, and small helpers (heartbeats, digests, verification, storage errors).
 * The steps themselves live in emulated-source.ts and emulated-target.ts.
 */
import { createHash } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { Bitmap } from '../dataplane/bitmap';
import { isZeroPage } from '../dataplane/pages';
import type { PageChannel, PageChannelServer, Registration } from '../dataplane/channel';
import type { ChannelTls } from '../dataplane/tls';
import type { SharedStore } from '../dataplane/store';
import type { EmulatedGuest } from '../guest';
import type { GuestDeviceState } from '../guest/guest';
import type { GuestMemory } from '../guest/memory';
import type { EmulatedDriver } from '../hypervisor/emulated';
import type { StrategyName } from '../policy/types';
import type { ChannelGrant } from '../security/channel-secret';
import { userError } from './errors';
import type { HostContext } from './host';
import type { MigrationOptions, StepRef, VerifyResult } from './types';

export interface EmulatedContext extends HostContext {
  driver: EmulatedDriver;
  channels: PageChannelServer;
  store: SharedStore;
  /** Mutual TLS on channel-2: the source dials with it and expects the target's host id. */
  tls?: ChannelTls;
}

/**
 * The result of each step of one migration on one side, by step name: a retried step gets
 * the recorded result instead of doing the work twice, and a retry of a step still running
 * awaits the same promise. A failed step is forgotten, so its retry runs again.
 */
export class StepRecord {
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

/**
 * Wake-ups for a waiting loop: wait() resolves at the next notify(), after `timeoutMs`, or
 * when `signal` aborts, whichever comes first. A notify() with nobody waiting is a no-op:
 * the loop re-reads the state it waits on before each wait, in the same synchronous turn.
 */
export class Wakeup {
  private readonly waiters = new Set<() => void>();

  notify(): void {
    if (this.waiters.size === 0) return;
    for (const w of [...this.waiters]) w();
  }

  wait(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.waiters.delete(done);
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
      signal?.addEventListener('abort', done, { once: true });
      if (signal?.aborted) done();
    });
  }
}

export interface SourceSession {
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
  /** The StaticData save has ended, committed or failed (a round waiting for it goes). */
  saveEnded: boolean;
  /** Post-copy: the pages missing on the target. */
  missing: Bitmap | null;
  /** The target reported every page present: stop pushing. */
  allPresent: boolean;
  storageBytesWritten: number;
  pausedAtMs: number | null;
  steps: StepRecord;
}

/** How often a round waiting to be worth sending looks at the dirty log. */
const WORTH_POLL_MS = 5;

/** Wait until `worthPages` are dirty, the StaticData save has ended, or `maxWaitMs` passed. */
export async function untilWorthARound(s: SourceSession, worthPages: number, maxWaitMs: number, signal: AbortSignal): Promise<void> {
  const until = performance.now() + Math.max(0, maxWaitMs);
  while (!s.saveEnded && s.memory.dirtyCount() < worthPages && performance.now() < until) {
    signal.throwIfAborted();
    await new Promise((r) => setTimeout(r, WORTH_POLL_MS));
  }
}

/**
 * An incoming migration on the target. Its channel-2 registration is made when the session
 * is, so it always exists; the source can dial only once prepareTarget has returned the
 * secret, and the handlers write into this session.
 */
export class TargetSession {
  readonly migrationId: string;
  readonly vm: string;
  readonly source: string;
  readonly memory: GuestMemory;
  /** Per-migration channel-2 secret. */
  readonly secret: string;
  /** What prepareTarget returned for it (the same again to a retried prepareTarget). */
  grant: ChannelGrant | null = null;
  /** Pages written by pre-copy rounds: StaticData must not overwrite them. */
  readonly hasDynamic: Bitmap;
  /** Pages the StaticData merge wrote. */
  readonly staticWritten: Bitmap;
  /** The memory was allocated for this session (all zeros), not reused from an earlier attempt. */
  readonly fresh: boolean;
  readonly registration: Registration;
  readonly steps = new StepRecord();
  /** Woken when a missing page is installed, a fault is requested or channel-2 is lost. */
  readonly wakeup = new Wakeup();
  deviceState: GuestDeviceState | null = null;
  missing: Bitmap | null = null;
  guest: EmulatedGuest | null = null;
  postcopy = false;
  /** Pages installed from channel-2 during post-copy (pushes and fault answers). */
  pushedPages = 0;
  channelLost: Error | null = null;
  /** Fault requests sent and not answered yet: pfn → time asked. */
  readonly outstanding = new Map<number, number>();
  /** Pages installed that no vCPU fault asked for (the source's push, or the drain's own asks). */
  unaskedPages = 0;
  /** vCPU fault counter carried in the device state (faults of earlier migrations). */
  faultBase = 0;

  constructor(init: { migrationId: string; vm: string; source: string; memory: GuestMemory; fresh?: boolean; secret: string }, channels: PageChannelServer) {
    this.migrationId = init.migrationId;
    this.vm = init.vm;
    this.source = init.source;
    this.memory = init.memory;
    this.secret = init.secret;
    this.hasDynamic = new Bitmap(init.memory.pageCount);
    this.staticWritten = new Bitmap(init.memory.pageCount);
    this.fresh = init.fresh ?? false;
    this.registration = channels.expect({
      migrationId: init.migrationId,
      secret: init.secret,
      pageCount: init.memory.pageCount,
      pageSize: init.memory.pageSize,
      // The source dials again when it gives up on a silently cut link; our end of the old
      // connection may still look open.
      onReconnect: 'replace',
      handlers: {
        onPages: (pfn, data) => {
          if (this.postcopy) {
            // Post-copy: install only what is still missing; the guest may have written
            // the rest since it resumed.
            const asked = this.outstanding.delete(pfn);
            if (this.memory.installPage(pfn, data)) {
              this.pushedPages++;
              if (!asked) this.unaskedPages++;
              this.wakeup.notify();
            }
          } else {
            // A zero page onto memory that still holds its allocation's zeros: nothing to
            // write, and no first touch of fresh memory (~12 µs a page on a 2-core VM: 50 ms
            // for a 16 MiB guest's bulk round). It counts as delivered for the merge rule.
            if (!(zeroFilledPage(this, pfn) && isZeroPage(data))) this.memory.writePage(pfn, data);
            this.hasDynamic.set(pfn);
          }
        },
        onControl: (msg) => {
          const m = msg as { type?: string; state?: GuestDeviceState; missing?: { size: number; bits: string } };
          if (m?.type === 'device-state' && m.state) this.deviceState = m.state;
          else if (m?.type === 'postcopy' && m.missing) this.missing = Bitmap.decode(m.missing);
        },
        onClose: (err) => {
          if (this.postcopy) {
            this.channelLost = err ?? new Error('channel-2 closed by the source');
            this.wakeup.notify();
          }
        },
      },
    });
  }
}

/** The migrations one agent takes part in, as source and as target (one registry per agent). */
export class EmulatedSessions {
  private readonly sources = new Map<string, SourceSession>();
  private readonly targets = new Map<string, TargetSession>();

  constructor(private readonly hostId: string) {}

  findSource(migrationId: string): SourceSession | undefined {
    return this.sources.get(migrationId);
  }
  findTarget(migrationId: string): TargetSession | undefined {
    return this.targets.get(migrationId);
  }
  /** The source session of a step, or a non-retryable NotFound. */
  source(ref: StepRef): SourceSession {
    const s = this.sources.get(ref.migrationId);
    if (!s) throw userError('NotFound', `migration ${ref.migrationId} is unknown on source host ${this.hostId} (was its agent restarted?)`);
    return s;
  }
  /** The target session of a step, or a non-retryable NotFound. */
  target(ref: StepRef): TargetSession {
    const s = this.targets.get(ref.migrationId);
    if (!s) throw userError('NotFound', `migration ${ref.migrationId} is unknown on target host ${this.hostId} (was its agent restarted?)`);
    return s;
  }
  /** The source session migrating this VM, if any. */
  sourceOfVm(vm: string): SourceSession | undefined {
    for (const s of this.sources.values()) if (s.vm === vm) return s;
    return undefined;
  }
  addSource(s: SourceSession): void {
    this.sources.set(s.migrationId, s);
  }
  addTarget(s: TargetSession): void {
    this.targets.set(s.migrationId, s);
  }
  dropSource(migrationId: string): void {
    this.sources.delete(migrationId);
  }
  dropTarget(migrationId: string): void {
    this.targets.delete(migrationId);
  }
}

/**
 * A write to shared storage that retrying will not fix soon: the step fails non-retryably
 * with the reason ("storage full: …"), and the workflow stops using channel-1.
 */
export function storageFailure(err: unknown): ApplicationFailure | null {
  const code = (err as { code?: unknown } | null)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') return ApplicationFailure.create({ type: 'StorageFull', message: `storage full: ${msg}`, nonRetryable: true });
  // Storage that stopped answering (the watchdog of dataplane/store-io.ts): not retried, a
  // retry would only wait out the same window again.
  if (code === 'ESTALLED') return ApplicationFailure.create({ type: 'StorageHung', message: msg, nonRetryable: true });
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') return ApplicationFailure.create({ type: 'StorageUnavailable', message: `storage not writable: ${msg}`, nonRetryable: true });
  // Other I/O errors (EIO of a soft NFS mount, ENOENT of a vanished mount…): retried.
  if (typeof code === 'string' && code.startsWith('E')) return ApplicationFailure.create({ type: 'StorageError', message: `storage unavailable: ${msg}`, nonRetryable: false });
  return null;
}

export function heartbeatEvery<T>(ms: number, details: () => unknown, work: Promise<T>): Promise<T> {
  const ctx = Context.current();
  const t = setInterval(() => ctx.heartbeat(details()), ms);
  return work.finally(() => clearInterval(t));
}

/**
 * The page still holds the zeros it was allocated with: the memory is fresh and neither
 * channel-2 nor the merge has written it (the guest runs here only after the merge).
 */
export function zeroFilledPage(s: TargetSession, pfn: number): boolean {
  return s.fresh && !s.hasDynamic.get(pfn) && !s.staticWritten.get(pfn);
}

export function digestOf(memory: GuestMemory): string {
  const h = createHash('sha256');
  for (let pfn = 0; pfn < memory.pageCount; pfn++) h.update(memory.page(pfn));
  return h.digest('hex');
}

/** The guest's self-check, run paused; resumed afterwards if it was running. */
export async function verifyPaused(guest: EmulatedGuest, wasRunning: boolean): Promise<VerifyResult> {
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
}
