/**
 * QEMU engine, target side: the steps the agent that receives the guest executes —
 * qemuPrepareTarget (an incoming QEMU listening on the migration network), qemuPause
 * (shared, qemu-common.ts), qemuRecoverTarget (listening again on the second network after a
 * broken post-copy), qemuVerifyTarget (the guest's self-check on its serial console),
 * qemuAbortTarget.
 */
import type { QemuVm } from '../hypervisor/qemu/driver';
import { userError } from './errors';
import { createQemuSharedActivities, heartbeat, query, QemuSessions, setCaps, setTls, verifyOn, vmOf, type QemuContext } from './qemu-common';
import { Relays, relayUri, requireLocalQemu, startTargetRecovery, startTargetRelay, type RelayAddress } from './qemu-relay';
import type { StepRef, VerifyResult } from './types';

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
  /** par-migrate: the stream comes through the agents' relays (qemu-relay.ts), not straight from the source QEMU. */
  relay?: boolean;
  /** With the relay: post-copy's background pages come from PbData on shared storage. */
  pbdata?: boolean;
  /** For messages: the strategy that asked for the relay. */
  strategy?: string;
}

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

/**
 * The target-side activities. `sessions` is the agent's registry, shared with its source-side
 * activities (createQemuActivities passes one to both).
 */
export function createQemuTargetActivities(ctx: QemuContext, sessions: QemuSessions = new QemuSessions(ctx.hostId), relays: Relays = new Relays()) {
  const d = ctx.driver;
  /** Ports this VM's incoming QEMU already listened on (socket-address keeps the old ones). */
  const ports = new Map<string, Set<string>>();
  const portsOf = (vm: string): Set<string> => {
    const known = ports.get(vm) ?? new Set<string>();
    ports.set(vm, known);
    return known;
  };
  return {
    ...createQemuSharedActivities(ctx, relays),

    async qemuPrepareTarget(input: QemuPrepareTargetInput): Promise<{ uri: string; atMs: number; tls: boolean; relay?: RelayAddress }> {
      if (input.relay) requireLocalQemu(ctx, input.strategy ?? 'par-migrate');
      const existing = d.vm(input.vm);
      if (existing && !existing.incoming) throw userError('Conflict', `vm ${input.vm} already runs on ${ctx.hostId}`);
      const free = ctx.memoryCapacityBytes - d.allocatedBytes() + (existing ? existing.spec.memoryBytes : 0);
      if (input.memoryBytes > free) throw userError('InsufficientCapacity', `host ${ctx.hostId} has ${free} bytes free, vm ${input.vm} needs ${input.memoryBytes}`);
      const known = sessions.find(input.migrationId);
      if (known && existing && !input.relay) return { uri: known.uri, atMs: known.startedAtMs, tls: d.migrationTls };
      if (known && existing && input.relay && known.relayAddress) return { uri: known.uri, atMs: known.startedAtMs, tls: d.migrationTls, relay: known.relayAddress };
      const v = await d.launchIncoming({
        name: input.vm,
        memoryBytes: input.memoryBytes,
        vcpus: input.vcpus,
        workload: input.workload,
        seed: input.seed,
        ...(input.rate ? { rate: input.rate } : {}),
        ...(input.qemuArgs ? { qemuArgs: input.qemuArgs } : {}),
      });
      await setCaps(v, input.postcopy, 'target', !!input.relay);
      ports.set(input.vm, new Set()); // a new QEMU: ports of an earlier one mean nothing here
      if (input.relay) {
        // QEMU ↔ relay is a local unix socket; the agents' link carries TLS when the cluster has it.
        await v.qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' });
        const relay = await startTargetRelay(ctx, relays, v, input);
        const uri = relayUri(relay.host, relay.port);
        sessions.set(input.migrationId, { vm: input.vm, passBase: 0, uri, startedAtMs: Date.now(), strategy: 'precopy', relayed: true, relayAddress: relay });
        return { uri, atMs: Date.now(), tls: d.migrationTls, relay };
      }
      await setTls(d, v, 'server', { admit: input.sourceTlsCommonName ?? null });
      const uri = await listenOn(v, 'migrate-incoming', ctx.migrationAddress, portsOf(input.vm));
      sessions.set(input.migrationId, { vm: input.vm, passBase: 0, uri, startedAtMs: Date.now(), strategy: 'precopy' });
      return { uri, atMs: Date.now(), tls: d.migrationTls };
    },

    /**
     * Target: listen for the recovered stream on the second network — QEMU itself, or, for a
     * relayed migration, the agent's relay (recovery.ts), over the agents' mutual TLS.
     */
    async qemuRecoverTarget(input: StepRef & { useFallback: boolean }): Promise<{ uri: string }> {
      const v = vmOf(ctx, input.vm);
      const host = input.useFallback && ctx.fallbackAddress ? ctx.fallbackAddress : ctx.migrationAddress;
      if (sessions.find(input.migrationId)?.relayed) return { uri: await startTargetRecovery(ctx, relays, v, input, host) };
      return { uri: await listenOn(v, 'migrate-recover', host, portsOf(input.vm)) };
    },

    /**
     * Target: its incoming migration's status, waiting up to `waitMs` for `completed` (a source
     * whose link died after its last page cannot hear that the target finished: ask the target).
     */
    async qemuIncomingStatus(input: StepRef & { waitMs: number }): Promise<{ status: string }> {
      const v = vmOf(ctx, input.vm);
      const deadline = Date.now() + Math.max(0, Math.min(input.waitMs, 600_000));
      for (;;) {
        const st = (await query(v)).status;
        if (st === 'completed' || st === 'failed' || Date.now() >= deadline) return { status: st };
        heartbeat();
        await new Promise((r) => setTimeout(r, 250));
      }
    },

    /** Target: the guest's own check, read from its serial console after it resumed here. */
    async qemuVerifyTarget(
      input: StepRef & { passes?: number; timeoutMs?: number },
    ): Promise<
      VerifyResult & { resumedAtMs: number | null; blocktime: { allVcpusMs: number; perVcpuMs: number[] } | null; pbdataRead?: { pages: number; bytesRead: number } }
    > {
      const v = vmOf(ctx, input.vm);
      const verified = await verifyOn(ctx, input.vm, input.passes ?? 2, input.timeoutMs ?? 120_000, 0);
      const info = await query(v);
      const relayStats = relays.get(input.migrationId)?.target?.stats();
      relays.close(input.migrationId); // the stream is over: the relay (if any) has nothing left to carry
      const blocktime =
        info.postcopyBlocktimeMs !== null && info.postcopyVcpuBlocktimeMs !== null ? { allVcpusMs: info.postcopyBlocktimeMs, perVcpuMs: info.postcopyVcpuBlocktimeMs } : null;
      return {
        ...verified,
        resumedAtMs: v.lastResumeAtMs,
        blocktime,
        ...(relayStats && relayStats.pbdataPages > 0 ? { pbdataRead: { pages: relayStats.pbdataPages, bytesRead: relayStats.pbdataBytesRead } } : {}),
      };
    },

    async qemuAbortTarget(input: StepRef): Promise<{ removed: boolean }> {
      sessions.drop(input.migrationId);
      relays.close(input.migrationId);
      const v = d.vm(input.vm);
      if (v && !v.incoming) return { removed: false }; // the guest runs here: never remove it
      // An incoming QEMU exits on its own when the stream breaks: its directory stays.
      await d.destroyVm(input.vm);
      return { removed: true };
    },
  };
}

export type QemuTargetActivities = ReturnType<typeof createQemuTargetActivities>;
