/**
 * Migration steps for QEMU guests, on the agents that own them. Thin: each step is one or two
 * QMP commands and a wait for the event that says it happened. Per-pass statistics are the
 * ones the driver captured at MIGRATION_PASS (the dirty-bitmap sync), never polled.
 *
 * Source: qemuDescribe, qemuStart, qemuAwaitPass, qemuStopAndCopy, qemuSwitchToPostcopy,
 * qemuAwaitCompletion, qemuPause, qemuResume, qemuRelease, qemuRollback, qemuSetBandwidth.
 * Target: qemuPrepareTarget, qemuPause, qemuRecoverTarget, qemuVerifyTarget, qemuAbortTarget.
 */
import { Context } from '@temporalio/activity';
import type { QemuDriver, QemuVm } from '../hypervisor/qemu/driver';
import { parseMigrateInfo, type MigrateInfo } from '../hypervisor/qemu/qmp';
import { mayPostcopy, type StrategyName } from '../policy/types';
import { userError } from './errors';
import type { HostContext } from './host';
import type { MigrationOptions, StepRef, VerifyResult, VmDescription } from './types';

export interface QemuContext extends HostContext {
  driver: QemuDriver;
  /** IP this host's QEMU listens on for incoming migrations (the migration network). */
  migrationAddress: string;
  /** IP of this host on the second network, used to recover a broken post-copy. */
  fallbackAddress: string | null;
  /** The subject CN of this host's certificate when migration streams run over mutual TLS. */
  tlsCommonName?: string | null;
}

/** QEMU's upper bound for downtime-limit (ms): raising it to this forces the completion. */
const FORCE_COMPLETE_DOWNTIME_MS = 2_000_000;
/** ferry's policy decides stop-and-copy, not QEMU's own estimate: keep QEMU's limit tiny. */
const POLICY_DRIVEN_DOWNTIME_MS = 1;
const UNCAPPED = 64 * 2 ** 30;
const NO_RAM_YET = { transferred: 0, remaining: 0, total: 0, dirtySyncCount: 0, pageSize: 4096, normal: 0, duplicate: 0, postcopyRequests: 0, precopyBytes: 0, postcopyBytes: 0, downtimeBytes: 0, mbps: 0 };

export interface QemuPrepareTargetInput extends StepRef {
  source: string;
  memoryBytes: number;
  vcpus: number;
  workload: string;
  seed: number;
  rate: number | null;
  postcopy: boolean;
  /** An attached guest's own command line (absent: the test guest). */
  qemuArgs?: string[];
  /** The source's certificate CN when it runs TLS: the only client the target then admits. */
  sourceTlsCommonName?: string | null;
}

export interface QemuIteration {
  index: number;
  pages: number;
  bytes: number;
  durationMs: number;
  dirtyAfter: number;
  finishedAtMs: number;
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
}

export type QemuCompletion = { kind: 'completed' | 'failed' | 'paused' | 'stalled'; why: string; outcome: QemuOutcome };

/**
 * Have QEMU listen on `host` (port 0: the QEMU host picks a free one, which works for a
 * remote host too) and read back the port it bound from query-migrate's socket-address.
 */
async function listenOn(v: QemuVm, command: 'migrate-incoming' | 'migrate-recover', host: string, taken: Set<string>): Promise<string> {
  await v.qmp.execute(command, { uri: uriFor(host, 0) });
  const info = (await v.qmp.execute('query-migrate')) as { 'socket-address'?: { host?: string; port?: string; type?: string }[] };
  const bound = (info['socket-address'] ?? []).filter((a) => a.type === 'inet' && a.host === host && a.port && a.port !== '0' && !taken.has(a.port));
  const port = bound[bound.length - 1]?.port;
  if (!port) throw new Error(`${command} on ${host}: QEMU did not report the port it listens on`);
  taken.add(port);
  return uriFor(host, Number(port));
}

function uriFor(host: string, port: number): string {
  return host.includes(':') ? `tcp:[${host}]:${port}` : `tcp:${host}:${port}`;
}

function heartbeat(detail?: unknown): void {
  try {
    Context.current().heartbeat(detail);
  } catch {
    // not in an activity (unit use)
  }
}

function cancelled(): Promise<never> {
  try {
    return Context.current().cancelled;
  } catch {
    return new Promise<never>(() => undefined);
  }
}

export function createQemuActivities(ctx: QemuContext) {
  const d = ctx.driver;
  /** Per migration: the pass count before it started, so each migration counts from 1. */
  const sessions = new Map<string, { vm: string; passBase: number; uri: string; startedAtMs: number; strategy: StrategyName }>();

  /** Ports this VM's incoming QEMU already listened on (socket-address keeps the old ones). */
  const ports = new Map<string, Set<string>>();
  const portsOf = (vm: string): Set<string> => {
    const known = ports.get(vm) ?? new Set<string>();
    ports.set(vm, known);
    return known;
  };
  const vmOf = (name: string): QemuVm => {
    const v = d.vm(name);
    if (!v) throw userError('NotFound', `QEMU guest ${name} is not on host ${ctx.hostId}`);
    return v;
  };
  const sessionOf = (ref: StepRef) => {
    const s = sessions.get(ref.migrationId);
    if (!s) throw userError('NotFound', `no QEMU migration ${ref.migrationId} on ${ctx.hostId} (the agent restarted?)`);
    return s;
  };
  const lastStatus = (v: QemuVm, since = 0) => {
    for (let i = v.statuses.length - 1; i >= 0; i--) if (v.statuses[i]!.atMs >= since) return v.statuses[i]!;
    return null;
  };
  const statusAt = (v: QemuVm, status: string, since: number) => v.statuses.find((s) => s.status === status && s.atMs >= since)?.atMs ?? null;
  const query = async (v: QemuVm): Promise<MigrateInfo> => parseMigrateInfo(await v.qmp.execute('query-migrate'));

  const outcomeOf = async (v: QemuVm, since: number): Promise<QemuOutcome> => {
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
  };

  const setCaps = async (v: QemuVm, postcopy: boolean, role: 'source' | 'target') => {
    const caps = [
      { capability: 'events', state: true },
      { capability: 'postcopy-ram', state: postcopy },
      // The target measures how long its vCPUs wait for missing pages in post-copy.
      ...(role === 'target' ? [{ capability: 'postcopy-blocktime', state: postcopy }] : []),
    ];
    await v.qmp.execute('migrate-set-capabilities', { capabilities: caps });
  };

  /**
   * Mutual TLS on the migration stream when this host has cluster TLS material, plain TCP
   * otherwise (and clear any TLS an attached QEMU was given before). The target admits only
   * the source's certificate CN when the source told it; the source checks that the target's
   * certificate names the target's host id (CN or DNS subjectAltName).
   */
  const setTls = async (v: QemuVm, role: 'server' | 'client', peer: { admit?: string | null; hostname?: string | null }) => {
    const creds = await d.addMigrationTls(v, role);
    if (!creds) {
      // '' turns TLS off. tls-authz stays as it is: QEMU 10 takes an empty tls-authz for the
      // id of an object to look up, and only a TLS server consults it anyway.
      await v.qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' });
      return;
    }
    if (role === 'client') {
      await v.qmp.execute('migrate-set-parameters', { 'tls-creds': creds, 'tls-hostname': peer.hostname ?? '' });
      return;
    }
    // The server's admission list, made afresh for each migration: the source's CN alone
    // (QEMU matches the client's distinguished name), or every certificate of the cluster CA
    // when the source did not say its CN.
    const authz = 'ferry-tls-authz';
    const cn = peer.admit ? `CN=${peer.admit}` : null;
    await d.replaceObject(v, authz, {
      'qom-type': 'authz-list',
      policy: cn ? 'deny' : 'allow',
      rules: cn ? [cn, `${cn},*`, `*,${cn}`, `*,${cn},*`].map((match) => ({ match, policy: 'allow', format: 'glob' })) : [],
    });
    await v.qmp.execute('migrate-set-parameters', { 'tls-creds': creds, 'tls-hostname': '', 'tls-authz': authz });
  };

  return {
    async qemuDescribe(
      input: { vm: string },
    ): Promise<VmDescription & { seed: number; rate: number | null; driver: string; qemuArgs?: string[]; tlsCommonName: string | null }> {
      const v = vmOf(input?.vm);
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

    async qemuPrepareTarget(input: QemuPrepareTargetInput): Promise<{ uri: string; atMs: number; tls: boolean }> {
      const existing = d.vm(input.vm);
      if (existing && !existing.incoming) throw userError('Conflict', `vm ${input.vm} already runs on ${ctx.hostId}`);
      const free = ctx.memoryCapacityBytes - d.allocatedBytes() + (existing ? existing.spec.memoryBytes : 0);
      if (input.memoryBytes > free) throw userError('InsufficientCapacity', `host ${ctx.hostId} has ${free} bytes free, vm ${input.vm} needs ${input.memoryBytes}`);
      const known = sessions.get(input.migrationId);
      if (known && existing) return { uri: known.uri, atMs: known.startedAtMs, tls: d.migrationTls };
      const v = await d.launchIncoming({
        name: input.vm,
        memoryBytes: input.memoryBytes,
        vcpus: input.vcpus,
        workload: input.workload,
        seed: input.seed,
        ...(input.rate ? { rate: input.rate } : {}),
        ...(input.qemuArgs ? { qemuArgs: input.qemuArgs } : {}),
      });
      await setCaps(v, input.postcopy, 'target');
      await setTls(v, 'server', { admit: input.sourceTlsCommonName ?? null });
      ports.set(input.vm, new Set()); // a new QEMU: ports of an earlier one mean nothing here
      const uri = await listenOn(v, 'migrate-incoming', ctx.migrationAddress, portsOf(input.vm));
      sessions.set(input.migrationId, { vm: input.vm, passBase: 0, uri, startedAtMs: Date.now(), strategy: 'precopy' });
      return { uri, atMs: Date.now(), tls: d.migrationTls };
    },

    async qemuStart(
      input: StepRef & { uri: string; strategy: StrategyName; options: MigrationOptions; target?: string; targetTls?: boolean },
    ): Promise<{ startedAtMs: number; pageSize: number }> {
      const v = vmOf(input.vm);
      const known = sessions.get(input.migrationId);
      if (known) return { startedAtMs: known.startedAtMs, pageSize: 4096 };
      const status = (await query(v)).status;
      if (['active', 'setup', 'postcopy-active', 'device'].includes(status)) throw userError('Conflict', `vm ${input.vm} on ${ctx.hostId} is already migrating (${status})`);
      if (input.targetTls !== undefined && input.targetTls !== d.migrationTls) {
        const [withTls, without] = d.migrationTls ? [ctx.hostId, input.target ?? 'the target'] : [input.target ?? 'the target', ctx.hostId];
        throw userError('Conflict', `migration TLS mismatch: ${withTls} runs its migration streams over mutual TLS, ${without} does not (give both agents --tls-ca/--tls-cert/--tls-key, or neither)`);
      }
      await setCaps(v, mayPostcopy(input.strategy), 'source');
      // QEMU checks that the target's certificate names the host ferry meant to reach.
      await setTls(v, 'client', { hostname: input.target ?? null });
      await v.qmp.execute('migrate-set-parameters', {
        'max-bandwidth': input.options.bandwidthBytesPerSec > 0 ? input.options.bandwidthBytesPerSec : UNCAPPED,
        // The same cap after the switch (QEMU's default there is unlimited).
        'max-postcopy-bandwidth': input.options.bandwidthBytesPerSec > 0 ? input.options.bandwidthBytesPerSec : 0,
        'downtime-limit': POLICY_DRIVEN_DOWNTIME_MS,
      });
      const passBase = v.passes.length;
      const startedAtMs = Date.now();
      sessions.set(input.migrationId, { vm: input.vm, passBase, uri: input.uri, startedAtMs, strategy: input.strategy });
      await v.qmp.execute('migrate', { uri: input.uri });
      return { startedAtMs, pageSize: 4096 };
    },

    /**
     * Iteration `index` ends at the (index+1)-th bitmap sync of this migration: its pages are
     * what went out between the two syncs, its dirtyAfter what the second sync found.
     */
    async qemuAwaitPass(input: StepRef & { index: number }): Promise<QemuPassResult> {
      const s = sessionOf(input);
      const v = vmOf(input.vm);
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
              // Pages sent between the two syncs (zero pages too: they were dirty); wire bytes.
              const bytes = Math.max(0, rb.transferred - ra.transferred);
              return {
                kind: 'iteration',
                iteration: {
                  index: input.index,
                  pages: Math.max(0, rb.normal + rb.duplicate - (ra.normal + ra.duplicate)),
                  bytes,
                  durationMs: Math.max(0, b.atMs - a.atMs),
                  dirtyAfter: Math.round(rb.remaining / pageSize),
                  finishedAtMs: b.atMs,
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
      if (r?.kind === 'finished') r.error = (await query(v)).error;
      return r!;
    },

    /** ferry's policy chose stop-and-copy: raise QEMU's downtime limit so it completes now. */
    async qemuStopAndCopy(input: StepRef): Promise<QemuOutcome> {
      const s = sessionOf(input);
      const v = vmOf(input.vm);
      await v.qmp.execute('migrate-set-parameters', { 'downtime-limit': FORCE_COMPLETE_DOWNTIME_MS });
      const st = await d.waitFor(input.vm, (vm) => {
        const x = lastStatus(vm, s.startedAtMs - 1000)?.status;
        return x === 'completed' || x === 'failed' || x === 'cancelled' ? x : null;
      }, 3600_000, () => heartbeat());
      const out = await outcomeOf(v, s.startedAtMs - 1000);
      if (st !== 'completed') throw new Error(`stop-and-copy of ${input.vm} ended ${st ?? 'nowhere'}: ${out.error ?? 'no error from QEMU'}`);
      return out;
    },

    async qemuSwitchToPostcopy(input: StepRef): Promise<QemuOutcome> {
      const s = sessionOf(input);
      const v = vmOf(input.vm);
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
      const s = sessionOf(input);
      const v = vmOf(input.vm);
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
        return { kind: kind ?? 'failed', why, outcome: out };
      } finally {
        clearInterval(timer);
      }
    },

    /** Pause a post-copy whose stream is broken (either side); no-op when already paused. */
    async qemuPause(input: StepRef): Promise<{ status: string }> {
      const v = vmOf(input.vm);
      const st = (await query(v)).status;
      if (st === 'postcopy-paused' || st === 'postcopy-recover-setup' || st === 'completed') return { status: st };
      await v.qmp.execute('migrate-pause').catch((e: Error) => {
        if (!/paused|not.*postcopy/i.test(e.message)) throw e;
      });
      for (let i = 0; i < 100; i++) {
        const now = (await query(v)).status;
        if (now === 'postcopy-paused' || now === 'completed') return { status: now };
        await new Promise((res) => setTimeout(res, 100));
      }
      throw new Error(`${input.vm} on ${ctx.hostId}: post-copy did not pause (status ${(await query(v)).status})`);
    },

    /** Target: listen for the recovered stream on the second network. */
    async qemuRecoverTarget(input: StepRef & { useFallback: boolean }): Promise<{ uri: string }> {
      const v = vmOf(input.vm);
      const host = input.useFallback && ctx.fallbackAddress ? ctx.fallbackAddress : ctx.migrationAddress;
      return { uri: await listenOn(v, 'migrate-recover', host, portsOf(input.vm)) };
    },

    /** Source: resume the paused post-copy towards the target's recovery listener. */
    async qemuResume(input: StepRef & { uri: string }): Promise<{ status: string }> {
      const v = vmOf(input.vm);
      await v.qmp.execute('migrate', { uri: input.uri, resume: true });
      for (let i = 0; i < 300; i++) {
        const st = (await query(v)).status;
        if (st === 'postcopy-active' || st === 'completed') return { status: st };
        if (st === 'postcopy-paused' && i > 20) throw new Error(`${input.vm}: resume towards ${input.uri} did not take (still postcopy-paused)`);
        await new Promise((res) => setTimeout(res, 100));
        heartbeat();
      }
      throw new Error(`${input.vm}: post-copy did not resume towards ${input.uri}`);
    },

    /** Target: the guest's own check, read from its serial console after it resumed here. */
    async qemuVerifyTarget(
      input: StepRef & { passes?: number; timeoutMs?: number },
    ): Promise<VerifyResult & { resumedAtMs: number | null; blocktime: { allVcpusMs: number; perVcpuMs: number[] } | null }> {
      const v = vmOf(input.vm);
      const verified = await verifyOn(input.vm, input.passes ?? 2, input.timeoutMs ?? 120_000, 0);
      const info = await query(v);
      const blocktime =
        info.postcopyBlocktimeMs !== null && info.postcopyVcpuBlocktimeMs !== null ? { allVcpusMs: info.postcopyBlocktimeMs, perVcpuMs: info.postcopyVcpuBlocktimeMs } : null;
      return { ...verified, resumedAtMs: v.lastResumeAtMs, blocktime };
    },

    /** Source: the guest left; stop its paused copy here. */
    async qemuRelease(input: StepRef): Promise<{ releasedAtMs: number; transferredBytes: number }> {
      const v = d.vm(input.vm);
      sessions.delete(input.migrationId);
      if (!v) return { releasedAtMs: Date.now(), transferredBytes: 0 };
      const info = await query(v);
      if (info.status !== 'completed') throw new Error(`refusing to release ${input.vm} on ${ctx.hostId}: its migration is ${info.status}, not completed`);
      await d.destroyVm(input.vm);
      return { releasedAtMs: Date.now(), transferredBytes: info.ram?.transferred ?? 0 };
    },

    /** Source, before the switch: cancel, make sure the guest runs here, check it. */
    async qemuRollback(input: StepRef): Promise<{ guestRunning: boolean; note: string; verification: VerifyResult | null }> {
      sessions.delete(input.migrationId);
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
      const status = (await v.qmp.execute<{ status: string }>('query-status')).status;
      if (status !== 'running') await v.qmp.execute('cont');
      const verification = await verifyOn(input.vm, 1, 60_000, 0).catch(() => null);
      return { guestRunning: true, note: `${input.vm} runs on ${ctx.hostId}`, verification };
    },

    async qemuAbortTarget(input: StepRef): Promise<{ removed: boolean }> {
      sessions.delete(input.migrationId);
      const v = d.vm(input.vm);
      if (v && !v.incoming) return { removed: false }; // the guest runs here: never remove it
      // An incoming QEMU exits on its own when the stream breaks: its directory stays.
      await d.destroyVm(input.vm);
      return { removed: true };
    },

    async qemuSetBandwidth(input: StepRef & { bandwidthBytesPerSec: number }): Promise<void> {
      const v = vmOf(input.vm);
      await v.qmp.execute('migrate-set-parameters', {
        'max-bandwidth': input.bandwidthBytesPerSec > 0 ? input.bandwidthBytesPerSec : UNCAPPED,
        'max-postcopy-bandwidth': input.bandwidthBytesPerSec > 0 ? input.bandwidthBytesPerSec : 0,
      });
    },
  };

  /** Wait for `passes` fresh verify lines on the guest's serial log (after `skip` earlier ones). */
  async function verifyOn(vm: string, passes: number, timeoutMs: number, skipFirst: number): Promise<VerifyResult> {
    const before = (await d.readSerial(vm)).verifies.length;
    const external = vmOf(vm).spec.qemuArgs !== undefined;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const serial = await d.readSerial(vm);
      const fresh = serial.verifies.slice(Math.max(before, skipFirst));
      const bad = fresh.filter((x) => !x.ok);
      if (serial.exited) {
        return { ok: false, pagesChecked: 0, mismatches: 0, method: 'guest self-check on serial', firstMismatches: [`the guest's workload exited on ${ctx.hostId}: it no longer checks its pages`] };
      }
      if (bad.length || fresh.length >= passes) {
        const pages = fresh.reduce((a, x) => Math.max(a, x.pages ?? 0), 0);
        const mismatches = bad.reduce((a, x) => a + (x.bad ?? 1), 0);
        return {
          ok: bad.length === 0,
          pagesChecked: pages,
          mismatches,
          method: `guest self-check on serial (${fresh.length} pass(es))`,
          firstMismatches: bad.slice(0, 3).map((x) => `guest verify pass ${x.pass}: ${x.bad ?? '?'} bad page(s)`),
        } as VerifyResult;
      }
      if (Date.now() > deadline || (external && !serial.up && serial.verifies.length === 0 && Date.now() > deadline - timeoutMs + 5000)) {
        if (external && serial.verifies.length === 0) {
          // Not ferry's test guest: no in-guest check to read. QEMU's word is what there is.
          const st = (await vmOf(vm).qmp.execute<{ status: string }>('query-status')).status;
          return { ok: st === 'running', pagesChecked: 0, mismatches: 0, method: `QEMU status ${st} (attached guest without ferry's self-check)`, firstMismatches: st === 'running' ? [] : [`the guest is ${st} on ${ctx.hostId}`] };
        }
        throw new Error(`${vm} on ${ctx.hostId}: no guest self-check on serial within ${timeoutMs} ms (${fresh.length} of ${passes})`);
      }
      heartbeat();
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

export type QemuActivities = ReturnType<typeof createQemuActivities>;
