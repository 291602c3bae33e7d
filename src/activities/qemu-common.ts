/**
 * QEMU engine, both sides: what the source-side (qemu-source.ts) and target-side
 * (qemu-target.ts) activities of one agent share — the context, the per-migration sessions
 * (one registry per agent), QMP helpers, migration capabilities and TLS, the guest's
 * self-check on its serial console, and qemuPause, which the workflow runs on either side.
 */
import { Context } from '@temporalio/activity';
import type { SharedStore } from '../dataplane/store';
import type { ChannelTls } from '../dataplane/tls';
import type { QemuDriver, QemuVm } from '../hypervisor/qemu/driver';
import { parseMigrateInfo, type MigrateInfo } from '../hypervisor/qemu/qmp';
import type { StrategyName } from '../policy/types';
import { userError } from './errors';
import type { HostContext } from './host';
import type { StepRef, VerifyResult } from './types';

export interface QemuContext extends HostContext {
  driver: QemuDriver;
  /** IP this host's QEMU listens on for incoming migrations (the migration network). */
  migrationAddress: string;
  /** IP of this host on the second network, used to recover a broken post-copy. */
  fallbackAddress: string | null;
  /** The subject CN of this host's certificate when migration streams run over mutual TLS. */
  tlsCommonName?: string | null;
  /** Shared storage (StaticData of par-migrate through the relay). */
  store: SharedStore;
  /** The cluster TLS material: the relay link between agents uses it like channel-2. */
  tls?: ChannelTls;
  log?: (line: string) => void;
}

export interface QemuSession {
  vm: string;
  /** The pass count before the migration started, so each migration counts from 1. */
  passBase: number;
  uri: string;
  startedAtMs: number;
  strategy: StrategyName;
  /** par-migrate: the stream runs through the agents' relays (qemu-relay.ts). */
  relayed?: boolean;
  /** Target: where its relay listens (a retried prepare answers the same). */
  relayAddress?: { host: string; port: number; grant?: { keyId: string; nonce: string }; token?: string };
}

/** The QEMU migrations of one agent, by migration id, as source or as target. */
export class QemuSessions {
  private readonly byId = new Map<string, QemuSession>();
  constructor(private readonly hostId: string) {}
  find(migrationId: string): QemuSession | undefined {
    return this.byId.get(migrationId);
  }
  /** The session of a step, or a non-retryable NotFound. */
  of(ref: StepRef): QemuSession {
    const s = this.byId.get(ref.migrationId);
    if (!s) throw userError('NotFound', `no QEMU migration ${ref.migrationId} on ${this.hostId} (the agent restarted?)`);
    return s;
  }
  set(migrationId: string, s: QemuSession): void {
    this.byId.set(migrationId, s);
  }
  drop(migrationId: string): void {
    this.byId.delete(migrationId);
  }
}

export function heartbeat(detail?: unknown): void {
  try {
    Context.current().heartbeat(detail);
  } catch {
    // not in an activity (unit use)
  }
}

export function cancelled(): Promise<never> {
  try {
    return Context.current().cancelled;
  } catch {
    return new Promise<never>(() => undefined);
  }
}

export function vmOf(ctx: QemuContext, name: string): QemuVm {
  const v = ctx.driver.vm(name);
  if (!v) throw userError('NotFound', `QEMU guest ${name} is not on host ${ctx.hostId}`);
  return v;
}

export async function query(v: QemuVm): Promise<MigrateInfo> {
  return parseMigrateInfo(await v.qmp.execute('query-migrate'));
}

/**
 * The migration capabilities ferry sets. `relayed`: the stream runs through the agents' relays
 * (qemu-relay.ts), which parse pages of one stream: multifd's connections, encoded pages and a
 * file layout are turned off. Post-copy's preempt channel is on either way: it opens only once
 * post-copy runs, when the relays carry everything untouched (a second link, link.ts).
 */
export async function setCaps(v: QemuVm, postcopy: boolean, role: 'source' | 'target', relayed = false): Promise<void> {
  const caps = [
    { capability: 'events', state: true },
    { capability: 'postcopy-ram', state: postcopy },
    // The target measures how long its vCPUs wait for missing pages in post-copy.
    ...(role === 'target' ? [{ capability: 'postcopy-blocktime', state: postcopy }] : []),
    // Post-copy's requested pages on their own channel, sent by the return-path thread the
    // moment the target asks: on the main channel they wait until QEMU's rate-limit window
    // ends (savevm.c checks the limit before the RAM iterator serves a request), ~50 ms a fault.
    { capability: 'postcopy-preempt', state: postcopy },
    ...(relayed ? ['multifd', 'xbzrle', 'mapped-ram', 'x-ignore-shared'].map((capability) => ({ capability, state: false })) : []),
  ];
  await v.qmp.execute('migrate-set-capabilities', { capabilities: caps });
}

/**
 * Mutual TLS on the migration stream when this host has cluster TLS material, plain TCP
 * otherwise (and clear any TLS an attached QEMU was given before). The target admits only
 * the source's certificate CN when the source told it; the source checks that the target's
 * certificate names the target's host id (CN or DNS subjectAltName).
 */
export async function setTls(d: QemuDriver, v: QemuVm, role: 'server' | 'client', peer: { admit?: string | null; hostname?: string | null }): Promise<void> {
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
}

/** Wait for `passes` fresh verify lines on the guest's serial log (after `skip` earlier ones). */
export async function verifyOn(ctx: QemuContext, vm: string, passes: number, timeoutMs: number, skipFirst: number): Promise<VerifyResult> {
  const d = ctx.driver;
  const before = (await d.readSerial(vm)).verifies.length;
  const external = vmOf(ctx, vm).spec.qemuArgs !== undefined;
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
        const st = (await vmOf(ctx, vm).qmp.execute<{ status: string }>('query-status')).status;
        return { ok: st === 'running', pagesChecked: 0, mismatches: 0, method: `QEMU status ${st} (attached guest without ferry's self-check)`, firstMismatches: st === 'running' ? [] : [`the guest is ${st} on ${ctx.hostId}`] };
      }
      throw new Error(`${vm} on ${ctx.hostId}: no guest self-check on serial within ${timeoutMs} ms (${fresh.length} of ${passes})`);
    }
    heartbeat();
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Activities the workflow runs on both the source and the target. `relays.sourceSentAll(id)`:
 * this host's relay saw the source QEMU send the end of its RAM (it then waits for the target's
 * word and cannot be paused); false where nothing says so.
 */
export function createQemuSharedActivities(ctx: QemuContext, relays: { sourceSentAll(migrationId: string): boolean }) {
  return {
    /**
     * Pause a post-copy whose stream is broken (either side); no-op when already paused (or
     * ended: `failed`, `completed`). A source that has sent everything is not paused
     * (`completing`: see below).
     */
    async qemuPause(input: StepRef & { side?: 'source' | 'target' }): Promise<{ status: string }> {
      const v = vmOf(ctx, input.vm);
      const st = (await query(v)).status;
      if (st === 'postcopy-paused' || st === 'postcopy-recover-setup' || st === 'completed' || st === 'failed' || st === 'cancelled') return { status: st };
      // A source whose relay saw the end of its RAM is in its completion, waiting for the
      // target's last word; QEMU cannot pause there (migrate-pause would fail the migration), and
      // the word may still come: say so, and leave it be. (Without that knowledge ferry pauses:
      // QEMU blocked on a write with nothing left in its bitmap still pauses, and recovers.)
      if (st === 'postcopy-active' && input.side === 'source' && relays.sourceSentAll(input.migrationId)) return { status: 'completing' };
      await v.qmp.execute('migrate-pause').catch(async (e: Error) => {
        if (/paused|not.*postcopy/i.test(e.message)) return;
        const now = (await query(v).catch(() => null))?.status ?? 'unknown';
        throw new Error(`${e.message} (migration status ${now}, ${st} before)`);
      });
      for (let i = 0; i < 100; i++) {
        const now = (await query(v)).status;
        // failed: QEMU was in its completion after all (the pause failed it); the workflow asks the target.
        if (now === 'postcopy-paused' || now === 'completed' || now === 'failed') return { status: now };
        await new Promise((res) => setTimeout(res, 100));
      }
      throw new Error(`${input.vm} on ${ctx.hostId}: post-copy did not pause (status ${(await query(v)).status})`);
    },
  };
}

export type QemuSharedActivities = ReturnType<typeof createQemuSharedActivities>;
