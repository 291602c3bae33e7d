/**
 * Post-copy at the data-plane level, step by step, without a workflow: the real activity
 * functions of two in-process host agents (each with its own EmulatedDriver, channel-2
 * listener on 127.0.0.1:0 and a SharedStore on one shared directory, as src/workers/agent.ts
 * builds them) run under MockActivityEnvironment. Channel-2 goes through a loopback TCP
 * proxy so that a test can cut the link the way a network does: a reset, or a silent drop.
 *
 * Invariant checked (MECHANISM.md): after post-copy, every page the target guest did not
 * write since resume equals the source page at the pause. The target's memory is reserved
 * fresh (empty dirty log); channel-2 and PbData installs do not set dirty bits, only guest
 * writes do, and nothing collects the target's log. So after the drain, with the target
 * paused, a page whose dirty bit is clear was not written by the target guest and must be
 * byte-identical to the source's copy taken at the pause. A page whose bit is set must be
 * a newer version of the same page (header version above the source's), and a dirty
 * version-table page may differ only in the entries of pages the target guest wrote, each
 * by a higher version. The guest's own verify() then checks every page's content.
 */
import fs from 'node:fs';
import net from 'node:net';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { createEmulatedActivities as createMigrationActivities, type EmulatedActivities as MigrationActivities, type MigrationContext } from '../../src/activities/emulated';
import type { DrainResult, MigrationOptions, PbDataResult, PushResult, StepRef } from '../../src/activities/types';
import { PageChannelServer } from '../../src/dataplane/channel';
import { SharedStore } from '../../src/dataplane/store';
import { computeLayout, type GuestMemory, type Layout } from '../../src/guest';
import { EmulatedDriver } from '../../src/hypervisor/emulated';
import { tempDir } from '../helpers/cluster';

const MiB = 1024 ** 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Run one activity function in a fresh mock activity context (heartbeats, cancellation). */
function act<P extends unknown[], R>(fn: (...args: P) => Promise<R>, ...args: P): Promise<R> {
  return new MockActivityEnvironment().run(fn, ...args) as Promise<R>;
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

// ---- a loopback link that can fail -----------------------------------------------------

/** TCP proxy in front of a target's channel-2 listener: the migration network. */
class Link {
  private readonly pairs: [net.Socket, net.Socket][] = [];
  private dropped = false;
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async open(to: { host: string; port: number }): Promise<Link> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const link = new Link(server, port);
    server.on('connection', (a) => {
      const b = net.connect(to);
      a.on('error', () => undefined);
      b.on('error', () => undefined);
      link.pairs.push([a, b]);
      link.forward(a, b);
      link.forward(b, a);
    });
    return link;
  }

  private forward(from: net.Socket, to: net.Socket): void {
    from.on('data', (chunk: Buffer) => {
      if (this.dropped) return;
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => {
          if (!this.dropped) from.resume();
        });
      }
    });
    from.on('close', () => {
      if (!this.dropped) to.destroy();
    });
  }

  /** The link fails hard: both ends see the connection reset; no new connection gets through. */
  reset(): void {
    this.server.close();
    for (const [a, b] of this.pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
  }

  /** The link goes silent: nothing is forwarded any more, no end is told (TCP windows fill up). */
  drop(): void {
    this.dropped = true;
    this.server.close();
    for (const [a, b] of this.pairs) {
      a.pause();
      b.pause();
    }
  }

  close(): void {
    this.dropped = true;
    this.server.close();
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
  }
}

// ---- two in-process host agents -------------------------------------------------------

interface Host {
  ctx: MigrationContext;
  acts: MigrationActivities;
  link: Link | null;
  close(): Promise<void>;
}

async function startHost(hostId: string, storageDir: string, opts: { behindLink?: boolean } = {}): Promise<Host> {
  const driver = new EmulatedDriver({ hostId });
  const channels = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
  const link = opts.behindLink ? await Link.open(channels.address) : null;
  const ctx: MigrationContext = {
    hostId,
    driver,
    memoryCapacityBytes: 1024 * MiB,
    dataAddress: `127.0.0.1:${link ? link.port : channels.address.port}`,
    storageDir,
    startedAtMs: Date.now(),
    channels,
    store: new SharedStore(storageDir),
  };
  return {
    ctx,
    acts: createMigrationActivities(ctx),
    link,
    async close() {
      link?.close();
      await channels.close();
      await driver.close();
    },
  };
}

const hosts: Host[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

// ---- the invariant --------------------------------------------------------------------

interface InvariantReport {
  /** Pages the target guest did not write since resume: compared byte for byte. */
  unwrittenEqual: number;
  /** ... of which were missing at resume (came by push, fault answer or PbData). */
  unwrittenWereMissing: number;
  /** Data pages the target guest wrote: a newer version of the page at the pause. */
  writtenNewer: number;
  /** Version-table pages the target guest changed: only entries of pages it wrote, upwards. */
  tablePagesChanged: number;
  problems: string[];
}

function u32(bytes: Uint8Array, word: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(word * 4, true);
}

function checkPostcopyInvariant(atPause: Uint8Array, target: GuestMemory, layout: Layout, missingAtResume: Set<number>): InvariantReport {
  const ps = target.pageSize;
  const r: InvariantReport = { unwrittenEqual: 0, unwrittenWereMissing: 0, writtenNewer: 0, tablePagesChanged: 0, problems: [] };
  const bad = (m: string): void => {
    if (r.problems.length < 20) r.problems.push(m);
  };
  const entriesPerPage = ps / 4;
  for (let pfn = 0; pfn < target.pageCount; pfn++) {
    const s = atPause.subarray(pfn * ps, (pfn + 1) * ps);
    const t = target.page(pfn);
    if (!target.isPresent(pfn)) {
      bad(`pfn ${pfn}: still missing after the drain`);
      continue;
    }
    if (!target.isDirty(pfn)) {
      if (Buffer.compare(s, t) !== 0) bad(`pfn ${pfn}: not written on the target, yet differs from the source at the pause${missingAtResume.has(pfn) ? ' (was missing at resume)' : ''}`);
      else {
        r.unwrittenEqual++;
        if (missingAtResume.has(pfn)) r.unwrittenWereMissing++;
      }
      continue;
    }
    if (pfn >= layout.dataStart) {
      // Header: magic, pfn, version, checksum.
      const sv = u32(s, 2);
      const tv = u32(t, 2);
      if (u32(t, 1) !== pfn) bad(`pfn ${pfn}: written on the target but its header names pfn ${u32(t, 1)}`);
      else if (!(tv > sv)) bad(`pfn ${pfn}: written on the target but version ${tv} is not above the source's ${sv}`);
      else r.writtenNewer++;
      continue;
    }
    if (pfn >= layout.tableStart && pfn < layout.tableStart + layout.tablePages) {
      const first = (pfn - layout.tableStart) * entriesPerPage;
      for (let i = 0; i < entriesPerPage; i++) {
        const sv = u32(s, i);
        const tv = u32(t, i);
        if (sv === tv) continue;
        const owner = first + i;
        if (owner >= target.pageCount || !target.isDirty(owner) || !(tv > sv)) {
          bad(`table pfn ${pfn}: entry of page ${owner} went ${sv} -> ${tv} but the target guest did not write that page`);
        }
      }
      r.tablePagesChanged++;
      continue;
    }
    bad(`pfn ${pfn}: superblock written on the target`);
  }
  return r;
}

// ---- the scenario ---------------------------------------------------------------------

type Cut = 'none' | 'reset' | 'forget' | 'silent';

interface Scenario {
  name: string;
  pbdata: 'sync' | 'async';
  cut: Cut;
  /** Migration network cap during post-copy (bytes/s): slow enough that the push is still running at the cut. */
  bandwidth: number;
  /** Storage network cap for PbData (bytes/s, 0 = uncapped). */
  storageBandwidth: number;
  /** false: the source runs no post-copy step (no push, no async PbData), as when its agent is cut off from Temporal at the switch. */
  sourceSteps?: boolean;
  /** The drain's fault timeout (default 2 s). */
  faultTimeoutMs?: number;
}

interface Outcome {
  missingAtResume: number;
  missingAtCut: number | null;
  pbCommittedAtCut: boolean | null;
  drain: DrainResult;
  push: PushResult | null;
  pb: PbDataResult | null;
  pbManifestCommittedAtMs: number | null;
  latencies: number[];
  invariant: InvariantReport;
  verify: { ok: boolean; mismatches: number; pagesChecked: number; firstMismatches: string[] };
  pushEndedAfterDrainMs: number;
  ms: number;
}

let seq = 0;

async function runPostcopy(sc: Scenario): Promise<Outcome> {
  const t0 = performance.now();
  const n = ++seq;
  const storage = tempDir('pc-storage');
  dirs.push(storage);
  const src = await startHost(`pc-src-${n}`, storage);
  const tgt = await startHost(`pc-tgt-${n}`, storage, { behindLink: true });
  hosts.push(src, tgt);
  const vm = `vm-pc-${n}`;
  const migrationId = `pc-${process.pid}-${n}`;
  const ref: StepRef = { migrationId, vm };
  const memoryBytes = 64 * MiB;

  // A memcached guest on the source: its hot pages are the ones still dirty at the switch,
  // so the target faults on them as soon as it runs.
  await src.ctx.driver.createVm({ name: vm, memoryBytes, vcpus: 1, workload: 'memcached', seed: 100 + n });
  await sleep(200);
  const desc = await act(src.acts.describeVm, { vm });
  expect(desc).toMatchObject({ vm, memoryBytes, pageSize: 4096, pageCount: memoryBytes / 4096, state: 'running' });

  const prepT = await act(tgt.acts.prepareTarget, { ...ref, source: src.ctx.hostId, memoryBytes, pageSize: desc.pageSize, pageCount: desc.pageCount, vcpus: desc.vcpus, workload: desc.workload });
  expect(prepT.dataAddress).toBe(tgt.ctx.dataAddress);
  const options: MigrationOptions = {
    // Pre-copy runs fast; the post-copy push then runs at the scenario's cap (below).
    bandwidthBytesPerSec: 128 * MiB,
    storageBandwidthBytesPerSec: sc.storageBandwidth,
    maxDowntimeMs: 300,
    maxIterations: 30,
    pbdata: sc.pbdata,
    compression: false,
    zeroElision: true,
  };
  await act(src.acts.prepareSource, { ...ref, target: tgt.ctx.hostId, dataAddress: prepT.dataAddress, secret: prepT.secret, strategy: 'hybrid-2', options });

  // Pre-copy: the bulk round, then one round of what it dirtied.
  const it1 = await act(src.acts.runIteration, { ...ref, index: 1, bulk: true });
  expect(it1.pages).toBe(desc.pageCount);
  const it2 = await act(src.acts.runIteration, { ...ref, index: 2, bulk: false });
  expect(it2.pages).toBeGreaterThan(0);

  expect(await act(src.acts.setBandwidth, { ...ref, bandwidthBytesPerSec: sc.bandwidth })).toEqual({ applied: true });

  // Switch: the source pauses; what is still dirty will be missing on the target.
  const sw = await act(src.acts.switchToPostcopy, ref);
  expect(sw.missingPages).toBeGreaterThan(0);
  const sourceGuest = src.ctx.driver.guest(vm)!;
  expect(sourceGuest.state).toBe('paused');
  const atPause = new Uint8Array(memoryBytes);
  for (let p = 0; p < desc.pageCount; p++) atPause.set(sourceGuest.memory.page(p), p * desc.pageSize);
  const layout = computeLayout(desc.pageSize, desc.pageCount, sourceGuest.seed);

  let pb: PbDataResult | null = null;
  let pbPromise: Promise<PbDataResult> | null = null;
  if (sc.pbdata === 'sync') {
    pb = await act(src.acts.writePbData, ref);
    expect(pb.pages).toBe(sw.missingPages);
    pbPromise = Promise.resolve(pb);
  }

  const resumed = await act(tgt.acts.resumeTarget, { ...ref, postcopy: true, digest: false });
  expect(resumed.digest).toBeNull();
  const targetGuest = tgt.ctx.driver.guest(vm)!;
  const targetMem = targetGuest.memory;
  const missing = new Set(targetMem.missingPfns());
  expect(missing.size).toBe(sw.missingPages);

  const sourceSteps = sc.sourceSteps !== false;
  if (sc.pbdata === 'async' && sourceSteps) {
    pbPromise = act(src.acts.writePbData, ref);
    void pbPromise.then((r) => (pb = r), () => undefined);
  }
  const pushPromise = sourceSteps ? act(src.acts.pushPostcopy, ref) : Promise.resolve(null);
  const drainPromise = act(tgt.acts.drainPostcopy, { ...ref, pbdata: sc.pbdata, ...(sc.faultTimeoutMs ? { faultTimeoutMs: sc.faultTimeoutMs } : {}) });
  drainPromise.catch(() => undefined);
  pushPromise.catch(() => undefined);

  let missingAtCut: number | null = null;
  let pbCommittedAtCut: boolean | null = null;
  if (sc.cut !== 'none') {
    // Part-way: some pages are in (pushed or faulted), many are not.
    const threshold = Math.floor(missing.size * 0.85);
    await waitFor(() => targetMem.missingCount() <= threshold, 'some pages to arrive over channel-2');
    missingAtCut = targetMem.missingCount();
    pbCommittedAtCut = pb !== null;
    if (sc.cut === 'reset') tgt.link!.reset();
    else if (sc.cut === 'silent') tgt.link!.drop();
    else tgt.ctx.channels.forget(migrationId);
  }

  const drain = await drainPromise;
  expect(targetMem.missingCount()).toBe(0);
  const drainedAt = performance.now();
  // The invariant, with the target paused at a safe point right after the drain.
  await targetGuest.pause();
  const invariant = checkPostcopyInvariant(atPause, targetMem, layout, missing);
  const latencies = targetGuest.faultStats().latenciesMs;
  // A silently dropped link fails none of the source's sends: the push must notice the
  // stall by itself (it does after 10 s without progress), or the source is never released.
  const push = await pushPromise;
  const pushEndedAfterDrainMs = Math.round(performance.now() - drainedAt);
  if (!pbPromise && sourceSteps) throw new Error('PbData was never written');
  const pbDone = pbPromise ? await pbPromise : null;
  const manifest = pbDone ? await tgt.ctx.store.openReader(migrationId, 'pbdata').manifest() : null;
  if (pbDone) expect(manifest).not.toBeNull();


  const released = await act(src.acts.releaseSource, ref);
  expect(released.channelBytes).toBeGreaterThan(0);
  expect(src.ctx.driver.guest(vm)).toBeNull();
  const verify = await act(tgt.acts.verifyTarget, ref);
  expect(targetGuest.state).toBe('running');
  await act(tgt.acts.cleanupStorage, ref);

  return {
    missingAtResume: missing.size,
    missingAtCut,
    pbCommittedAtCut,
    drain,
    push,
    pb: pbDone,
    pbManifestCommittedAtMs: manifest?.committedAtMs ?? null,
    latencies,
    invariant,
    verify,
    pushEndedAfterDrainMs,
    ms: Math.round(performance.now() - t0),
  };
}

function summary(o: Outcome): string {
  const { latencies, ...rest } = o;
  return JSON.stringify({ ...rest, latencyCount: latencies.length, invariant: { ...o.invariant, problems: o.invariant.problems.slice(0, 5) } });
}

function expectInvariant(o: Outcome): void {
  expect(o.invariant.problems).toEqual([]);
  // It really compared something: most pages, and pages that had to travel after resume.
  expect(o.invariant.unwrittenEqual).toBeGreaterThan(o.invariant.writtenNewer);
  expect(o.invariant.unwrittenWereMissing).toBeGreaterThan(0);
  expect(o.invariant.writtenNewer).toBeGreaterThan(0); // the target guest did run
  expect(o.verify).toMatchObject({ ok: true, mismatches: 0, pagesChecked: 64 * MiB / 4096 });
}

function expectFaultsRecorded(o: Outcome): void {
  expect(o.drain.faults).toBeGreaterThan(0);
  expect(o.latencies.length).toBeGreaterThan(0);
  expect(o.latencies.length).toBeLessThanOrEqual(o.drain.faults);
  for (const l of o.latencies) expect(Number.isFinite(l) && l >= 0).toBe(true);
  expect(o.drain.faultLatencyMs.max).toBeGreaterThan(0);
  expect(o.drain.faultLatencyMs.p50).toBeLessThanOrEqual(o.drain.faultLatencyMs.p99);
  expect(o.drain.faultLatencyMs.p99).toBeLessThanOrEqual(o.drain.faultLatencyMs.max);
}

describe('post-copy on the data plane, driven step by step', () => {
  it('sync PbData, healthy channel-2: faults answered, pushes complete, no fallback', async () => {
    const o = await runPostcopy({ name: 'healthy', pbdata: 'sync', cut: 'none', bandwidth: 64 * MiB, storageBandwidth: 0 });
    console.log(`healthy: ${summary(o)}`);
    expectFaultsRecorded(o);
    expect(o.drain.fellBackToPbData).toBe(false);
    expect(o.drain.pbdataPages).toBe(0);
    expect(o.drain.storageBytesRead).toBe(0);
    expect(o.drain.pushedPages).toBeGreaterThan(0);
    expect(o.drain.pushedPages).toBeLessThanOrEqual(o.missingAtResume);
    expect(o.drain.bytesReceived).toBeGreaterThan(0);
    expect(o.push!.channelLost).toBe(false);
    expect(o.push!.faultPagesServed).toBeGreaterThan(0);
    expect(o.pb!.pages).toBe(o.missingAtResume);
    expectInvariant(o);
  }, 60_000);

  it('sync PbData, link reset mid-push: the target finishes from PbData', async () => {
    const o = await runPostcopy({ name: 'reset', pbdata: 'sync', cut: 'reset', bandwidth: 16 * MiB, storageBandwidth: 0 });
    console.log(`reset: ${summary(o)}`);
    expect(o.missingAtCut).toBeGreaterThan(0);
    expect(o.drain.fellBackToPbData).toBe(true);
    expect(o.drain.pbdataPages).toBeGreaterThan(0);
    expect(o.drain.pushedPages).toBeGreaterThan(0); // channel-2 delivered some before the cut
    expect(o.drain.pushedPages + o.drain.pbdataPages).toBeLessThanOrEqual(o.missingAtResume);
    expect(o.drain.storageBytesRead).toBeGreaterThan(0);
    expect(o.push!.channelLost).toBe(true);
    expect(o.push!.pushedPages).toBeLessThan(o.missingAtResume);
    expectFaultsRecorded(o);
    expectInvariant(o);
  }, 60_000);

  it('async PbData, target drops channel-2 while PbData is still being written: waits for the commit', async () => {
    const o = await runPostcopy({ name: 'forget', pbdata: 'async', cut: 'forget', bandwidth: 16 * MiB, storageBandwidth: 4 * MiB });
    console.log(`forget+async: ${summary(o)}`);
    expect(o.pbCommittedAtCut).toBe(false);
    expect(o.missingAtCut).toBeGreaterThan(0);
    expect(o.drain.fellBackToPbData).toBe(true);
    expect(o.drain.pbdataPages).toBeGreaterThan(0);
    // The drain could only end once PbData was committed.
    expect(o.drain.completedAtMs).toBeGreaterThanOrEqual(o.pbManifestCommittedAtMs!);
    expect(o.push!.channelLost).toBe(true);
    expectFaultsRecorded(o);
    expectInvariant(o);
  }, 60_000);

  it('async PbData, link goes silent: an unanswered fault times out, PbData completes it', async () => {
    const o = await runPostcopy({ name: 'silent', pbdata: 'async', cut: 'silent', bandwidth: 16 * MiB, storageBandwidth: 4 * MiB });
    console.log(`silent+async: ${summary(o)}`);
    expect(o.missingAtCut).toBeGreaterThan(0);
    expect(o.drain.fellBackToPbData).toBe(true);
    expect(o.drain.pbdataPages).toBeGreaterThan(0);
    expect(o.drain.completedAtMs).toBeGreaterThanOrEqual(o.pbManifestCommittedAtMs!);
    // Some fault waited out the timeout (2 s) before the target switched to PbData.
    expect(o.drain.faultLatencyMs.max).toBeGreaterThanOrEqual(1500);
    // The source noticed the dead link by itself (no byte left for 10 s) and gave up
    // pushing, so it can be released.
    expect(o.push!.channelLost).toBe(true);
    expect(o.pushEndedAfterDrainMs).toBeLessThan(15_000);
    expectFaultsRecorded(o);
    expectInvariant(o);
  }, 60_000);

  it('the source runs no post-copy step (cut off from Temporal at the switch): the target pulls the rest over channel-2', async () => {
    const o = await runPostcopy({ name: 'no-push', pbdata: 'async', cut: 'none', bandwidth: 16 * MiB, storageBandwidth: 0, sourceSteps: false });
    console.log(`no-push: ${summary(o)}`);
    // Neither the push nor PbData: every missing page came because the target asked.
    expect(o.push).toBeNull();
    expect(o.pb).toBeNull();
    expect(o.drain.fellBackToPbData).toBe(false);
    expect(o.drain.pbdataPages).toBe(0);
    expect(o.drain.pulledPages).toBeGreaterThan(0);
    expect(o.drain.pushedPages).toBe(o.missingAtResume);
    expectFaultsRecorded(o);
    expectInvariant(o);
  }, 60_000);

  it('no source step and slow answers: PbData is looked for beside channel-2, which still completes post-copy', async () => {
    // 2 MiB/s and a 100 ms fault timeout: a vCPU's fault queued behind a pulled batch waits
    // longer than that, so the drain looks for PbData, which the cut-off source never writes.
    const o = await runPostcopy({ name: 'slow-no-push', pbdata: 'async', cut: 'none', bandwidth: 2 * MiB, storageBandwidth: 0, sourceSteps: false, faultTimeoutMs: 100 });
    console.log(`slow-no-push: ${summary(o)}`);
    expect(o.pb).toBeNull();
    expect(o.drain.fellBackToPbData).toBe(true);
    expect(o.drain.pbdataPages).toBe(0);
    expect(o.drain.pushedPages).toBe(o.missingAtResume);
    expect(o.drain.faultLatencyMs.max).toBeGreaterThan(100);
    expectInvariant(o);
  }, 90_000);
});
