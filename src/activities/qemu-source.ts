/**
 * QEMU engine, source side: the steps the agent that runs the guest's QEMU executes —
 * qemuDescribe, qemuStart, qemuAwaitPass, qemuStopAndCopy, qemuSwitchToPostcopy,
 * qemuAwaitCompletion, qemuPause (shared, qemu-common.ts), qemuResume, qemuRelease,
 * qemuRollback, qemuSetBandwidth. Thin: each step is one or two QMP commands and a wait for
 * the event that says it happened. Per-pass statistics are the ones the driver captured at
 * MIGRATION_PASS (the dirty-bitmap sync), never polled.
 */
import { passCurve, startDirtySampler } from '../hypervisor/qemu/dirty-sampler';
import type { QemuVm } from '../hypervisor/qemu/driver';
import { mayPostcopy, type StrategyName } from '../policy/types';
import { userError } from './errors';
import { cancelled, createQemuSharedActivities, heartbeat, query, QemuSessions, setCaps, setTls, verifyOn, vmOf, type QemuContext } from './qemu-common';
import { isMerged, parseRelayUri, Relays, requireLocalQemu, startSourceRecovery, startSourceRelay, type RelayAddress } from './qemu-relay';
import type { MigrationOptions, StepRef, VerifyResult, VmDescription } from './types';

/** QEMU's upper bound for downtime-limit (ms): raising it to this forces the completion. */
const FORCE_COMPLETE_DOWNTIME_MS = 2_000_000;
/** ferry's policy decides stop-and-copy, not QEMU's own estimate: keep QEMU's limit tiny. */
const POLICY_DRIVEN_DOWNTIME_MS = 1;
const UNCAPPED = 64 * 2 ** 30;
const NO_RAM_YET = { transferred: 0, remaining: 0, total: 0, dirtySyncCount: 0, pageSize: 4096, normal: 0, duplicate: 0, postcopyRequests: 0, precopyBytes: 0, postcopyBytes: 0, downtimeBytes: 0, mbps: 0 };

export interface QemuIteration {
  index: number;
  pages: number;
  bytes: number;
  durationMs: number;
  dirtyAfter: number;
  finishedAtMs: number;
  /** The dirty set's growth during the pass, [ms, pages], from QEMU's page sampling (dirty-sampler.ts). */
  growth?: number[][];
  /** The pass's pages went to StaticData, not over the migration network: it measures no bandwidth. */
  offLink?: boolean;
}

export type QemuPassResult =
  | { kind: 'iteration'; iteration: QemuIteration }
  | { kind: 'finished'; status: string; error: string | null };

export interface QemuOutcome {
  status: string;
  error: string | null;
  /** QEMU's own measurement of the pause (ms), when completed. */
  downtimeMs: number | null;
  pausedAtMs: number | null;
  postcopyActiveAtMs: number | null;
  completedAtMs: number | null;
  transferredBytes: number;
  postcopyBytes: number;
  downtimeBytes: number;
  postcopyRequests: number;
  /** Relayed post-copy with PbData: its background pages, what they took in QEMU's stream, PbData's bytes on storage. */
  pbdata?: { pages: number; wireBytes: number; bytesWritten: number };
}

export type QemuCompletion = { kind: 'completed' | 'failed' | 'paused' | 'stalled'; why: string; outcome: QemuOutcome };

const lastStatus = (v: QemuVm, since = 0) => {
  for (let i = v.statuses.length - 1; i >= 0; i--) if (v.statuses[i]!.atMs >= since) return v.statuses[i]!;
  return null;
};
const statusAt = (v: QemuVm, status: string, since: number) => v.statuses.find((s) => s.status === status && s.atMs >= since)?.atMs ?? null;

async function outcomeOf(v: QemuVm, since: number): Promise<QemuOutcome> {
  const info = await query(v);
  return {
    status: info.status,
    error: info.error,
    downtimeMs: info.downtimeMs,
    pausedAtMs: v.lastStopAtMs !== null && v.lastStopAtMs >= since ? v.lastStopAtMs : null,
    postcopyActiveAtMs: statusAt(v, 'postcopy-active', since),
    completedAtMs: statusAt(v, 'completed', since),
    transferredBytes: info.ram?.transferred ?? 0,
    postcopyBytes: info.ram?.postcopyBytes ?? 0,
    downtimeBytes: info.ram?.downtimeBytes ?? 0,
    postcopyRequests: info.ram?.postcopyRequests ?? 0,
  };
}

/**
 * The source-side activities. `sessions` is the agent's registry, shared with its target-side
 * activities (createQemuActivities passes one to both).
 */
export function createQemuSourceActivities(ctx: QemuContext, sessions: QemuSessions = new QemuSessions(ctx.hostId), relays: Relays = new Relays()) {
  const d = ctx.driver;
  return {
    ...createQemuSharedActivities(ctx, relays),

    async qemuDescribe(
      input: { vm: string },
    ): Promise<VmDescription & { seed: number; rate: number | null; driver: string; qemuArgs?: string[]; tlsCommonName: string | null }> {
      const v = vmOf(ctx, input?.vm);
      if (v.incoming) throw userError('NotFound', `QEMU guest ${input.vm} on ${ctx.hostId} is an incoming migration, not a running VM`);
      return {
        vm: v.spec.name,
        host: ctx.hostId,
        memoryBytes: v.spec.memoryBytes,
        pageSize: 4096,
        pageCount: Math.floor(v.spec.memoryBytes / 4096),
        vcpus: v.spec.vcpus,
        workload: v.spec.workload,
        state: v.state,
        seed: v.spec.seed,
        rate: v.spec.rate ?? null,
        driver: 'qemu',
        ...(v.spec.qemuArgs ? { qemuArgs: v.spec.qemuArgs } : {}),
        tlsCommonName: d.migrationTls ? (ctx.tlsCommonName ?? null) : null,
      };
    },

    async qemuStart(
      input: StepRef & {
        uri: string;
        strategy: StrategyName;
        options: MigrationOptions;
        target?: string;
        targetTls?: boolean;
        relay?: RelayAddress;
        /** With the relay: post-copy's background pages go through PbData (the engine decides, engine-qemu.ts). */
        pbdata?: boolean;
      },
    ): Promise<{ startedAtMs: number; pageSize: number }> {
      if (input.relay) requireLocalQemu(ctx, input.strategy);
      const v = vmOf(ctx, input.vm);
      const known = sessions.find(input.migrationId);
      if (known) return { startedAtMs: known.startedAtMs, pageSize: 4096 };
      const status = (await query(v)).status;
      if (['active', 'setup', 'postcopy-active', 'device'].includes(status)) throw userError('Conflict', `vm ${input.vm} on ${ctx.hostId} is already migrating (${status})`);
      if (input.targetTls !== undefined && input.targetTls !== d.migrationTls) {
        const [withTls, without] = d.migrationTls ? [ctx.hostId, input.target ?? 'the target'] : [input.target ?? 'the target', ctx.hostId];
        throw userError('Conflict', `migration TLS mismatch: ${withTls} runs its migration streams over mutual TLS, ${without} does not (give both agents --tls-ca/--tls-cert/--tls-key, or neither)`);
      }
      await setCaps(v, mayPostcopy(input.strategy), 'source', !!input.relay);
      const cap = input.options.bandwidthBytesPerSec > 0 ? input.options.bandwidthBytesPerSec : 0;
      const pbdata = !!input.relay && !!input.pbdata;
      if (input.relay) {
        // QEMU ↔ relay is a local unix socket. Pre-copy into it is unpaced: the relay paces each
        // network itself (the bulk pass at the storage cap, the rest at the migration cap).
        // Post-copy is paced by QEMU, as without the relay: QEMU sends a faulting page ahead of
        // its background pages (on the preempt channel). With PbData the background pages go to
        // shared storage, so QEMU paces them at the storage cap.
        const storageCap = input.options.storageBandwidthBytesPerSec > 0 ? input.options.storageBandwidthBytesPerSec : 0;
        await v.qmp.execute('migrate-set-parameters', {
          'tls-creds': '',
          'tls-hostname': '',
          'max-bandwidth': UNCAPPED,
          'max-postcopy-bandwidth': pbdata ? storageCap : cap,
          'downtime-limit': POLICY_DRIVEN_DOWNTIME_MS,
        });
      } else {
        // QEMU checks that the target's certificate names the host ferry meant to reach.
        await setTls(d, v, 'client', { hostname: input.target ?? null });
        await v.qmp.execute('migrate-set-parameters', {
          'max-bandwidth': cap > 0 ? cap : UNCAPPED,
          // The same cap after the switch (QEMU's default there is unlimited).
          'max-postcopy-bandwidth': cap,
          'downtime-limit': POLICY_DRIVEN_DOWNTIME_MS,
        });
      }
      const passBase = v.passes.length;
      const startedAtMs = Date.now();
      let uri = input.uri;
      if (input.relay) {
        uri = await startSourceRelay(ctx, relays, v, {
          ...input,
          relay: input.relay,
          target: input.target ?? 'the target',
          bandwidthBytesPerSec: cap,
          storageBandwidthBytesPerSec: input.options.storageBandwidthBytesPerSec,
          passBase,
          pbdata,
        });
      }
      sessions.set(input.migrationId, { vm: input.vm, passBase, uri, startedAtMs, strategy: input.strategy, relayed: !!input.relay });
      await v.qmp.execute('migrate', { uri });
      // While pre-copy runs, measure how the dirty set grows (ferry's switch rule reads it).
      const since = startedAtMs - 1000;
      startDirtySampler({
        qmp: v.qmp,
        pageSize: 4096,
        passes: () => v.passes.length,
        precopyRunning: () => {
          const st = lastStatus(v, since)?.status;
          return ctx.driver.vm(input.vm)?.qmp === v.qmp && (st === undefined || st === 'setup' || st === 'active');
        },
        record: (g) => {
          v.growth.push(g);
          if (v.growth.length > 400) v.growth.splice(0, v.growth.length - 400);
        },
      }).done.catch(() => undefined);
      return { startedAtMs, pageSize: 4096 };
    },

    /**
     * Iteration `index` ends at the (index+1)-th bitmap sync of this migration: its pages are
     * what went out between the two syncs, its dirtyAfter what the second sync found.
     */
    async qemuAwaitPass(input: StepRef & { index: number }): Promise<QemuPassResult> {
      const s = sessions.of(input);
      const v = vmOf(ctx, input.vm);
      const since = s.startedAtMs - 1000;
      const r = await Promise.race([
        d.waitFor(
          input.vm,
          (vm): QemuPassResult | null => {
            const passes = vm.passes.slice(s.passBase);
            const a = passes[input.index - 1];
            const b = passes[input.index];
            if (a && b) {
              // The first sync happens while QEMU is still in setup, before it has RAM
              // counters: nothing was sent yet, so zeros are the truth there.
              const ra = a.info.ram ?? NO_RAM_YET;
              const rb = b.info.ram ?? NO_RAM_YET;
              const pageSize = rb.pageSize || 4096;
              const dirtyAfter = Math.round(rb.remaining / pageSize);
              const growth = passCurve(vm.growth, input.index, a.atMs, b.atMs, dirtyAfter);
              // Pages sent between the two syncs (zero pages too: they were dirty); wire bytes.
              // Relayed: the bulk pass's first copies went to StaticData, not the migration network.
              const relay = s.relayed && input.index === 1 ? relays.get(input.migrationId)?.source?.stats() : undefined;
              const bytes = Math.max(0, rb.transferred - ra.transferred - (relay?.divertedWireBytes ?? 0));
              return {
                kind: 'iteration',
                iteration: {
                  index: input.index,
                  pages: Math.max(0, rb.normal + rb.duplicate - (ra.normal + ra.duplicate) - (relay?.divertedPages ?? 0)),
                  bytes,
                  durationMs: Math.max(0, b.atMs - a.atMs),
                  dirtyAfter,
                  finishedAtMs: b.atMs,
                  ...(growth.length > 0 ? { growth } : {}),
                  ...(relay ? { offLink: true } : {}),
                },
              };
            }
            const st = lastStatus(vm, since)?.status;
            if (st && ['completed', 'failed', 'cancelled', 'postcopy-active', 'postcopy-paused'].includes(st)) return { kind: 'finished', status: st, error: null };
            return null;
          },
          2 * 3600_000,
          () => heartbeat({ passes: v.passes.length - s.passBase }),
        ),
        cancelled(),
      ]);
      if (r?.kind === 'finished') {
        r.error = (await query(v)).error;
        // The relay's own words say what it refused in the stream (QEMU only saw the socket close).
        const relayError = relays.get(input.migrationId)?.source?.error;
        if (relayError) r.error = `${relayError.message}${r.error ? ` (QEMU: ${r.error})` : ''}`;
      }
      return r!;
    },

    /** ferry's policy chose stop-and-copy: raise QEMU's downtime limit so it completes now. */
    async qemuStopAndCopy(input: StepRef): Promise<QemuOutcome> {
      const s = sessions.of(input);
      const v = vmOf(ctx, input.vm);
      await v.qmp.execute('migrate-set-parameters', { 'downtime-limit': FORCE_COMPLETE_DOWNTIME_MS });
      const st = await d.waitFor(input.vm, (vm) => {
        const x = lastStatus(vm, s.startedAtMs - 1000)?.status;
        return x === 'completed' || x === 'failed' || x === 'cancelled' ? x : null;
      }, 3600_000, () => heartbeat());
      const out = await outcomeOf(v, s.startedAtMs - 1000);
      if (st !== 'completed') throw new Error(`stop-and-copy of ${input.vm} ended ${st ?? 'nowhere'}: ${out.error ?? 'no error from QEMU'}`);
      return out;
    },

    /**
     * Armed switch (par-migrate on QEMU): the workflow has already decided to switch once the
     * StaticData merge is done; wait here for the target agent's word on shared storage and
     * switch at once, without a round trip through the workflow. Returns without switching
     * when QEMU's migration ended meanwhile; cancelled when the workflow disarms.
     */
    async qemuSwitchWhenMerged(input: StepRef): Promise<{ switched: boolean; note: string }> {
      const s = sessions.of(input);
      const v = vmOf(ctx, input.vm);
      const since = s.startedAtMs - 1000;
      const armedAt = Date.now();
      let beat = armedAt;
      const gone = cancelled();
      gone.catch(() => undefined);
      for (;;) {
        const st = lastStatus(v, since)?.status;
        if (st && st !== 'active' && st !== 'setup') return { switched: false, note: `QEMU's migration is ${st}: nothing to switch` };
        if (await isMerged(ctx, input.migrationId)) break;
        if (Date.now() - beat >= 250) {
          beat = Date.now();
          heartbeat({ armedMs: beat - armedAt });
        }
        await Promise.race([new Promise((r) => setTimeout(r, 20)), gone]);
      }
      await v.qmp.execute('migrate-start-postcopy').catch((e: Error) => {
        // Completed meanwhile (the workflow's switch step sees how it ended).
        if (!/postcopy already started|not active/i.test(e.message)) throw e;
      });
      return { switched: true, note: `switched ${Date.now() - armedAt} ms after arming, as soon as the merge was done` };
    },

    async qemuSwitchToPostcopy(input: StepRef): Promise<QemuOutcome> {
      const s = sessions.of(input);
      const v = vmOf(ctx, input.vm);
      const since = s.startedAtMs - 1000;
      if (!statusAt(v, 'postcopy-active', since)) {
        await v.qmp.execute('migrate-start-postcopy').catch((e: Error) => {
          // Already switched (a retried step) or completed meanwhile: the wait below tells.
          if (!/postcopy already started|not active/i.test(e.message)) throw e;
        });
      }
      const st = await d.waitFor(input.vm, (vm) => {
        const x = lastStatus(vm, since)?.status;
        return x && ['postcopy-active', 'postcopy-paused', 'completed', 'failed', 'cancelled'].includes(x) ? x : null;
      }, 600_000, () => heartbeat());
      const out = await outcomeOf(v, since);
      if (st === 'failed' || st === 'cancelled' || !st) throw new Error(`switch to post-copy of ${input.vm} ended ${st ?? 'nowhere'}: ${out.error ?? 'no error from QEMU'}`);
      return out;
    },

    /**
     * Wait for the end of post-copy (or of a stop-and-copy). A stall — no page moved for
     * `stallMs` while QEMU still says postcopy-active (a silently dropped link) — or QEMU
     * pausing on its own returns early, so the workflow can recover over the other network.
     */
    async qemuAwaitCompletion(input: StepRef & { stallMs: number }): Promise<QemuCompletion> {
      const s = sessions.of(input);
      const v = vmOf(ctx, input.vm);
      const since = s.startedAtMs - 1000;
      let lastBytes = -1;
      let lastChange = Date.now();
      let stalled = false;
      let pausedNow = false;
      // A pause recorded before this call is history (the recovery that followed resumed it);
      // only a pause from now on, or QEMU saying paused now, counts.
      const callStart = Date.now();
      const probe = async () => {
        const info = await query(v).catch(() => null);
        if (info?.status === 'postcopy-paused') pausedNow = true;
        if (!info?.ram) return;
        const b = info.ram.transferred;
        if (b !== lastBytes) {
          lastBytes = b;
          lastChange = Date.now();
        } else if (info.status === 'postcopy-active' && Date.now() - lastChange >= input.stallMs) stalled = true;
      };
      const timer = setInterval(() => void probe(), Math.max(100, Math.min(1000, input.stallMs / 5)));
      try {
        const kind = await Promise.race([
          d.waitFor(input.vm, (vm) => {
            const last = lastStatus(vm, since);
            const x = last?.status;
            if (x === 'completed') return 'completed' as const;
            if (x === 'failed' || x === 'cancelled') return 'failed' as const;
            if ((x === 'postcopy-paused' && last!.atMs >= callStart - 50) || pausedNow) return 'paused' as const;
            if (stalled) return 'stalled' as const;
            return null;
          }, 2 * 3600_000, () => heartbeat({ lastBytes })),
          cancelled(),
        ]);
        const out = await outcomeOf(v, since);
        const why =
          kind === 'stalled'
            ? `no post-copy progress for ${input.stallMs} ms (${lastBytes} bytes sent), QEMU still postcopy-active`
            : kind === 'paused'
              ? `QEMU paused post-copy: ${out.error ?? 'the migration stream broke'}`
              : kind === 'failed'
                ? `QEMU failed the migration: ${out.error ?? 'no error given'}`
                : 'completed';
        const relay = relays.get(input.migrationId)?.source;
        const pb = relay?.pbdataActive ? relay.stats() : null;
        return { kind: kind ?? 'failed', why, outcome: pb ? { ...out, pbdata: { pages: pb.pbdataPages, wireBytes: pb.pbdataWireBytes, bytesWritten: pb.pbdataBytesWritten } } : out };
      } finally {
        clearInterval(timer);
      }
    },

    /** Source: resume the paused post-copy towards the target's recovery listener. */
    async qemuResume(input: StepRef & { uri: string }): Promise<{ status: string }> {
      const v = vmOf(ctx, input.vm);
      // A relayed migration resumes through the agents' relays, as it ran (recovery.ts).
      const relayed = parseRelayUri(input.uri);
      if (input.uri.startsWith('ferry-relay:') && !relayed) throw userError('InvalidInput', `recovery URI ${input.uri} is not ferry-relay:<host>:<port>`);
      const uri = relayed ? await startSourceRecovery(ctx, relays, input, relayed) : input.uri;
      await v.qmp.execute('migrate', { uri, resume: true });
      for (let i = 0; i < 300; i++) {
        const info = await query(v);
        const st = info.status;
        if (st === 'postcopy-active' || st === 'completed') return { status: st };
        if (st === 'postcopy-paused' && i > 20) throw new Error(`${input.vm}: resume towards ${input.uri} did not take (still postcopy-paused${info.error ? `: ${info.error}` : ''})`);
        await new Promise((res) => setTimeout(res, 100));
        heartbeat();
      }
      throw new Error(`${input.vm}: post-copy did not resume towards ${input.uri}`);
    },

    /** Source: the guest left; stop its paused copy here. */
    async qemuRelease(input: StepRef & { targetCompleted?: boolean }): Promise<{ releasedAtMs: number; transferredBytes: number }> {
      const v = d.vm(input.vm);
      sessions.drop(input.migrationId);
      relays.close(input.migrationId);
      if (!v) return { releasedAtMs: Date.now(), transferredBytes: 0 };
      const info = await query(v);
      // After the switch the guest runs on the target: once the target QEMU completed, this copy
      // is stale even if its own migration never heard so (the link died before the target's word).
      const afterSwitch = ['postcopy-active', 'postcopy-paused', 'failed'].includes(info.status);
      if (info.status !== 'completed' && !(input.targetCompleted && afterSwitch)) {
        throw new Error(`refusing to release ${input.vm} on ${ctx.hostId}: its migration is ${info.status}, not completed`);
      }
      await d.destroyVm(input.vm);
      return { releasedAtMs: Date.now(), transferredBytes: info.ram?.transferred ?? 0 };
    },

    /** Source, before the switch: cancel, make sure the guest runs here, check it. */
    async qemuRollback(input: StepRef): Promise<{ guestRunning: boolean; note: string; verification: VerifyResult | null }> {
      sessions.drop(input.migrationId);
      const v = d.vm(input.vm);
      if (!v) return { guestRunning: false, note: `no QEMU for ${input.vm} on ${ctx.hostId}`, verification: null };
      const st = (await query(v)).status;
      if (st === 'postcopy-active' || st === 'postcopy-paused' || st === 'completed') {
        return { guestRunning: false, note: `${input.vm} already switched to the target (migration ${st}); not rolled back`, verification: null };
      }
      if (['active', 'setup', 'device', 'pre-switchover'].includes(st)) {
        await v.qmp.execute('migrate_cancel');
        for (let i = 0; i < 100 && ['active', 'setup', 'device', 'cancelling'].includes((await query(v)).status); i++) await new Promise((r) => setTimeout(r, 100));
      }
      relays.close(input.migrationId);
      const status = (await v.qmp.execute<{ status: string }>('query-status')).status;
      if (status !== 'running') await v.qmp.execute('cont');
      const verification = await verifyOn(ctx, input.vm, 1, 60_000, 0).catch(() => null);
      return { guestRunning: true, note: `${input.vm} runs on ${ctx.hostId}`, verification };
    },

    async qemuSetBandwidth(input: StepRef & { bandwidthBytesPerSec: number }): Promise<void> {
      const v = vmOf(ctx, input.vm);
      const relay = relays.get(input.migrationId)?.source;
      if (relay) {
        // Pre-copy: the relay paces, QEMU stays unpaced into it; post-copy: QEMU paces (with
        // PbData at the storage cap: its background pages do not cross the migration network).
        relay.setBandwidth(input.bandwidthBytesPerSec);
        if (relay.pbdataEnabled) return;
        await v.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': input.bandwidthBytesPerSec > 0 ? input.bandwidthBytesPerSec : 0 });
        return;
      }
      await v.qmp.execute('migrate-set-parameters', {
        'max-bandwidth': input.bandwidthBytesPerSec > 0 ? input.bandwidthBytesPerSec : UNCAPPED,
        'max-postcopy-bandwidth': input.bandwidthBytesPerSec > 0 ? input.bandwidthBytesPerSec : 0,
      });
    },
  };
}

export type QemuSourceActivities = ReturnType<typeof createQemuSourceActivities>;
