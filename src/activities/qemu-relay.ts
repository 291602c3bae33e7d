/**
 * par-migrate on QEMU: the agents' relays in QEMU's own migration stream (docs/design/qemu-stream.md,
 * src/hypervisor/qemu/relay/). Which agent runs what:
 *
 * - target (qemuPrepareTarget with `relay`): the incoming QEMU listens on a unix socket; the
 *   agent's TargetRelay listens on the migration network for the source relay's link;
 * - source (qemuStart with `relay`): QEMU migrates into the agent's SourceRelay (a unix socket),
 *   which diverts the bulk pass to StaticData and forwards the rest to the target relay;
 * - qemuSaveStatic (source) waits for StaticData's commit; qemuMergeStatic (target) merges it
 *   into the target QEMU (its RAM file, or its stream); qemuRemoveStatic (either) deletes it from shared storage.
 *
 * The relays live in the agent process: QEMU must run on the agent's own machine (an SSH-driven
 * host cannot reach the agent's unix sockets), which qemuPrepareTarget and qemuStart check.
 */
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import type { QemuVm } from '../hypervisor/qemu/driver';
import { connectRelay, listenRelay, newRelayToken, type RelayChannel, type RelayListener } from '../hypervisor/qemu/relay/link';
import { RecoverySource, RecoveryTarget } from '../hypervisor/qemu/relay/recovery';
import { SourceRelay } from '../hypervisor/qemu/relay/source-relay';
import { TargetRelay } from '../hypervisor/qemu/relay/target-relay';
import { RAM_FILE_BLOCK } from '../hypervisor/qemu/ram-files';
import { ChannelGrantError, grantSecret, sourceSecret, type ChannelGrant } from '../security/channel-secret';
import { userError } from './errors';
import { heartbeat, type QemuContext, type QemuSessions } from './qemu-common';
import type { StaticMergeResult, StaticSaveResult, StepRef } from './types';

/**
 * Where the target's relay listens, and what the source's relay derives the token it must
 * present from (the grant, with a cluster key), or the token itself (without one).
 */
export interface RelayAddress {
  host: string;
  port: number;
  grant?: ChannelGrant;
  token?: string;
}

interface RelayEnds {
  source?: SourceRelay;
  target?: TargetRelay;
  listener?: RelayListener;
  passWatch?: ReturnType<typeof setInterval>;
  /** Target: the token the source's relay presents (a recovery's listener asks for it too). */
  token?: string;
  /** Source: open a link of this migration to the target agent at host:port (a recovery's). */
  linkTo?: (host: string, port: number, channel: RelayChannel) => Promise<net.Socket>;
  /** The relays of the latest post-copy recovery (recovery.ts). */
  recovery?: RecoveryTarget | RecoverySource;
}

/** The relays of one agent, by migration id. */
export class Relays {
  private readonly byId = new Map<string, RelayEnds>();
  get(migrationId: string): RelayEnds | undefined {
    return this.byId.get(migrationId);
  }
  set(migrationId: string, e: RelayEnds): void {
    this.byId.set(migrationId, e);
  }
  /** The source QEMU of this migration sent the end of its RAM into this host's relay (SourceRelay.qemuSentAll). */
  sourceSentAll(migrationId: string): boolean {
    return this.byId.get(migrationId)?.source?.qemuSentAll ?? false;
  }
  /** Stop and forget the relays of a migration (idempotent). */
  close(migrationId: string): void {
    const e = this.byId.get(migrationId);
    if (!e) return;
    this.byId.delete(migrationId);
    if (e.passWatch) clearInterval(e.passWatch);
    e.source?.close();
    e.target?.close();
    e.listener?.close();
    e.recovery?.close();
  }
}

/**
 * Pages per PbData chunk: 1 MiB, on storage within a few ms at a storage cap of hundreds of MiB/s.
 * PbData on QEMU is not fsynced: the target's relay reads each chunk the moment it is renamed
 * into place and puts it into its QEMU's stream at once; a chunk storage then loses is no longer
 * needed, and one it loses before is a read error, which pauses post-copy for a recovery over
 * the second network (QEMU resends what the target has not received).
 */
const PBDATA_CHUNK_PAGES = 256;

/**
 * How far PbData may run ahead of the target's acknowledgements: 50 ms at the storage cap, at
 * least 512 pages (2 MiB). Enough to keep the storage path busy across the acknowledgement's
 * round trip; small enough that QEMU still has pages to send (and can pause) when the
 * migration link dies.
 */
function pbdataAheadPages(storageBytesPerSec: number): number {
  if (!(storageBytesPerSec > 0)) return 8192;
  return Math.max(512, Math.min(8192, Math.round((storageBytesPerSec * 0.05) / 4096)));
}

/** A unix socket path short enough for sun_path (108 bytes): in the VM's directory, else in the temp dir. */
export function relaySocketPath(vmDir: string, name: string): string {
  const p = path.join(vmDir, name);
  if (Buffer.byteLength(p) < 100) return p;
  return path.join(os.tmpdir(), `ferry-${createHash('sha256').update(p).digest('hex').slice(0, 16)}.sock`);
}

export function requireLocalQemu(ctx: QemuContext, strategy: string): void {
  if (ctx.driver.opts.host.where !== 'local') {
    throw userError(
      'InvalidInput',
      `strategy ${strategy} relays QEMU's stream through the agent, which needs QEMU on the agent's own machine; ${ctx.hostId} drives QEMU over SSH (${ctx.driver.opts.host.where}): run an agent on that host, or use as-hybrid`,
    );
  }
}

function connectUnix(p: string, timeoutMs = 10_000): Promise<net.Socket> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = net.connect(p);
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (e) => {
        if (Date.now() > deadline) reject(new Error(`the target QEMU's incoming socket ${p}: ${e.message}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

/** Target: the incoming QEMU listens on a unix socket, the agent's relay on the migration network. */
export async function startTargetRelay(ctx: QemuContext, relays: Relays, v: QemuVm, ref: StepRef & { pbdata?: boolean }): Promise<RelayAddress> {
  relays.close(ref.migrationId);
  const sock = relaySocketPath(path.join(ctx.driver.opts.stateDir, ref.vm), 'relay-in.sock');
  await v.qmp.execute('migrate-incoming', { uri: `unix:${sock}` });
  const granted = ctx.channelKeys ? grantSecret(ctx.channelKeys, 'qemu-relay', ref.migrationId) : null;
  const token = granted?.secret ?? newRelayToken();
  const listener = await listenRelay({ host: ctx.migrationAddress, migrationId: ref.migrationId, token, ...(ctx.tls ? { tls: ctx.tls } : {}) });
  const target = new TargetRelay({
    accepted: listener.accepted,
    preempt: listener.preempt,
    connectQemu: () => connectUnix(sock),
    expectStatic: true,
    ...(v.ramFile ? { ramFile: { block: RAM_FILE_BLOCK, path: v.ramFile } } : {}),
    ...(ref.pbdata ? { pbdata: () => ctx.store.openReader(ref.migrationId, 'pbdata'), acks: listener.acks } : {}),
    log: (l) => ctx.log?.(`${ref.vm} ${l}`),
  });
  relays.set(ref.migrationId, { target, listener, token });
  // The source checks it can see this file: StaticData only works on storage both hosts share.
  const probe = sharedProbe(ctx, ref.migrationId);
  await fsp.mkdir(path.dirname(probe), { recursive: true, mode: 0o700 });
  await fsp.writeFile(probe, `${ctx.hostId}\n`, { mode: 0o600 });
  return { ...listener.address, ...(granted ? { grant: granted.grant } : { token }) };
}

function sharedProbe(ctx: QemuContext, migrationId: string): string {
  return path.join(path.dirname(ctx.store.dir(migrationId, 'static')), 'shared-probe');
}

/** Source: QEMU migrates into the agent's relay; returns the URI QEMU is given. */
export async function startSourceRelay(
  ctx: QemuContext,
  relays: Relays,
  v: QemuVm,
  input: StepRef & { relay: RelayAddress; target: string; bandwidthBytesPerSec: number; storageBandwidthBytesPerSec: number; passBase: number; pbdata: boolean },
): Promise<string> {
  relays.close(input.migrationId);
  const probe = sharedProbe(ctx, input.migrationId);
  if (!(await fsp.stat(probe).then(() => true, () => false))) {
    throw userError(
      'InvalidInput',
      `${ctx.hostId} cannot see what ${input.target} wrote to shared storage (${probe}): par-migrate needs one storage directory both agents mount (FERRY_STORAGE_DIR / --storage); use as-hybrid otherwise`,
    );
  }
  let token: string;
  try {
    token = sourceSecret(ctx.channelKeys ?? null, 'qemu-relay', input.migrationId, { grant: input.relay.grant, secret: input.relay.token });
  } catch (e) {
    if (e instanceof ChannelGrantError) throw userError('InvalidInput', e.message);
    throw e;
  }
  const sock = relaySocketPath(path.join(ctx.driver.opts.stateDir, input.vm), 'relay-out.sock');
  const linkAt = (host: string, port: number, channel: RelayChannel) => ({ host, port, token, migrationId: input.migrationId, targetHostId: input.target, channel, ...(ctx.tls ? { tls: ctx.tls } : {}) });
  const link = (channel: RelayChannel) => linkAt(input.relay.host, input.relay.port, channel);
  const source = await SourceRelay.listen({
    listenPath: sock,
    connect: () => connectRelay(link('main')),
    connectPreempt: () => connectRelay(link('preempt')),
    openStatic: (pageCount) => ctx.store.openWriter(input.migrationId, 'static', { pageSize: 4096, pageCount, rateBytesPerSec: input.storageBandwidthBytesPerSec }),
    ...(input.pbdata
      ? { openPbData: (pageCount: number) => ctx.store.openWriter(input.migrationId, 'pbdata', { pageSize: 4096, pageCount, rateBytesPerSec: input.storageBandwidthBytesPerSec, chunkPages: PBDATA_CHUNK_PAGES, fsync: false }) }
      : {}),
    pbdataBatchPages: PBDATA_CHUNK_PAGES,
    ...(input.pbdata ? { connectAcks: () => connectRelay(link('ack')), pbdataAheadPages: pbdataAheadPages(input.storageBandwidthBytesPerSec) } : {}),
    bandwidthBytesPerSec: input.bandwidthBytesPerSec,
    log: (l) => ctx.log?.(`${input.vm} ${l}`),
  });
  // The bulk pass ends at QEMU's second dirty-bitmap sync: from then on, every page goes to the target.
  const passWatch = setInterval(() => {
    if (v.passes.length - input.passBase >= 2) source.stopDiverting('QEMU began its second pass');
    if (!source.stats().diverting) clearInterval(passWatch);
  }, 20);
  void source.finished.then(() => clearInterval(passWatch));
  relays.set(input.migrationId, { source, passWatch, linkTo: (host, port, channel) => connectRelay(linkAt(host, port, channel)) });
  return `unix:${sock}`;
}

/** The URI a relayed target hands out: `ferry-relay:<host>:<port>` (an IPv6 host in brackets or not). */
export function relayUri(host: string, port: number): string {
  return `ferry-relay:${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export function parseRelayUri(uri: string): { host: string; port: number } | null {
  const m = /^ferry-relay:(?:\[([^\]]+)\]|(.+)):(\d{1,5})$/.exec(uri);
  if (!m) return null;
  const port = Number(m[3]);
  if (!(port > 0 && port < 65536)) return null;
  return { host: (m[1] ?? m[2])!, port };
}

/**
 * Target, post-copy paused: the target QEMU listens for the recovered stream on a unix socket,
 * the agent on the second network (`host`) for the source agent's links; returns the URI the
 * source resumes towards.
 */
export async function startTargetRecovery(ctx: QemuContext, relays: Relays, v: QemuVm, ref: StepRef, host: string): Promise<string> {
  const ends = relays.get(ref.migrationId);
  if (!ends?.target || !ends.token) {
    throw userError('NotFound', `no relay for migration ${ref.migrationId} on ${ctx.hostId} (the agent restarted?): a relayed post-copy cannot be recovered without the pages it wrote into the target's RAM file`);
  }
  ends.recovery?.close();
  const sock = relaySocketPath(path.join(ctx.driver.opts.stateDir, ref.vm), 'relay-rec.sock');
  await fsp.rm(sock, { force: true });
  await v.qmp.execute('migrate-recover', { uri: `unix:${sock}` });
  const listener = await listenRelay({ host, migrationId: ref.migrationId, token: ends.token, ...(ctx.tls ? { tls: ctx.tls } : {}) });
  const target = ends.target;
  ends.recovery = new RecoveryTarget({
    listener,
    connectQemu: () => connectUnix(sock),
    resident: (block) => target.residentInRamFile(block),
    log: (l) => ctx.log?.(`${ref.vm} ${l}`),
  });
  return relayUri(host, listener.address.port);
}

/** Source, post-copy paused: QEMU resumes into a unix socket of the agent's, carried to the target agent at `to`; returns QEMU's URI. */
export async function startSourceRecovery(ctx: QemuContext, relays: Relays, ref: StepRef, to: { host: string; port: number }): Promise<string> {
  const ends = relays.get(ref.migrationId);
  const linkTo = ends?.linkTo;
  if (!ends || !linkTo) throw userError('NotFound', `no relay for migration ${ref.migrationId} on ${ctx.hostId} (the agent restarted?): the relayed post-copy cannot be resumed`);
  ends.recovery?.close();
  const sock = relaySocketPath(path.join(ctx.driver.opts.stateDir, ref.vm), 'relay-rec-out.sock');
  ends.recovery = await RecoverySource.listen({ listenPath: sock, connect: (channel) => linkTo(to.host, to.port, channel), log: (l) => ctx.log?.(`${ref.vm} ${l}`) });
  return `unix:${sock}`;
}

/**
 * The file by which the target agent tells the source agent, over shared storage, that the
 * StaticData merge is done (beside the migration's StaticData; removed with it).
 */
export function mergedMarker(ctx: Pick<QemuContext, 'store'>, migrationId: string): string {
  return path.join(path.dirname(ctx.store.dir(migrationId, 'static')), 'merged');
}

async function markMerged(ctx: Pick<QemuContext, 'store'>, migrationId: string): Promise<void> {
  // Through the store's I/O, under its no-progress watchdog, like every shared-storage operation.
  await ctx.store.ctx.io.writeAtomic(mergedMarker(ctx, migrationId), Buffer.from(`${Date.now()}\n`), 0o600, false);
}

/** Whether the target agent has said the merge is done (a storage that fails or hangs says no). */
export async function isMerged(ctx: Pick<QemuContext, 'store'>, migrationId: string): Promise<boolean> {
  return ctx.store.ctx.io.size(mergedMarker(ctx, migrationId)).then(
    () => true,
    () => false,
  );
}

export function createQemuRelayActivities(ctx: QemuContext, relays: Relays, sessions: QemuSessions) {
  return {
    /** Source: wait until the bulk pass is committed to StaticData. */
    async qemuSaveStatic(ref: StepRef): Promise<StaticSaveResult & { divertedWireBytes: number }> {
      sessions.of(ref);
      const source = relays.get(ref.migrationId)?.source;
      if (!source) throw userError('NotFound', `no relay for migration ${ref.migrationId} on ${ctx.hostId} (the agent restarted?): StaticData cannot be finished`);
      const timer = setInterval(() => heartbeat(source.stats()), 1000);
      try {
        const r = await Promise.race([source.staticDone, Context.current().cancelled]);
        return { ...r, divertedWireBytes: source.stats().divertedWireBytes };
      } finally {
        clearInterval(timer);
      }
    },

    /** Target: merge the committed StaticData into the target QEMU, its RAM file or its stream (the merge rule). */
    async qemuMergeStatic(ref: StepRef): Promise<StaticMergeResult> {
      sessions.of(ref);
      const target = relays.get(ref.migrationId)?.target;
      if (!target) throw userError('NotFound', `no relay for migration ${ref.migrationId} on ${ctx.hostId} (the agent restarted?): StaticData cannot be merged`);
      const actx = Context.current();
      const timer = setInterval(() => heartbeat(target.stats()), 1000);
      try {
        const r = await target.merge(ctx.store.openReader(ref.migrationId, 'static'), { signal: actx.cancellationSignal });
        // The source agent may be armed to switch the moment this merge is done (qemuSwitchWhenMerged): tell it now.
        await markMerged(ctx, ref.migrationId);
        return { pages: r.pages, skippedNewer: r.skippedNewer, bytesRead: r.bytesRead, mergeMs: r.mergeMs };
      } catch (e) {
        if (actx.cancellationSignal.aborted) target.abandon('the workflow gave StaticData up');
        throw e;
      } finally {
        clearInterval(timer);
      }
    },

    /** Either side: delete the migration's StaticData from shared storage. */
    async qemuRemoveStatic(ref: StepRef): Promise<{ removed: boolean }> {
      await ctx.store.remove(ref.migrationId);
      return { removed: true };
    },
  };
}

export type QemuRelayActivities = ReturnType<typeof createQemuRelayActivities>;
