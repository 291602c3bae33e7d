/**
 * QEMU migration streams over mutual TLS: agents started with --tls-ca/--tls-cert/--tls-key
 * give their QEMUs tls-creds-x509 credentials (the target verifies the source's certificate
 * and admits only its CN, the source checks that the target's certificate names the target's
 * host id). A post-copy migration between two hosts of the cluster CA completes and the guest
 * verifies; a target whose certificate a foreign CA signed is refused by the source's QEMU
 * and the guest keeps running on the source; a host without TLS is refused before anything
 * is sent.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createQemuActivities } from '../../src/activities/qemu';
import { SharedStore } from '../../src/dataplane/store';
import { QemuDriver } from '../../src/hypervisor/qemu/driver';
import { LocalHost } from '../../src/hypervisor/qemu/host';
import type { MigrationReport } from '../../src/workflows/report';
import { makeCa, makeHostCert, tlsArgs } from '../helpers/certs';
import { startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, destroyWhenDone, migrate, MiB } from '../helpers/migrate';
import { killQemusUnder, serialOf, startQemuAgent, stopQemuAgent, testGuest, type QemuAgent } from '../helpers/qemu';

describe('QEMU migration over mutual TLS', () => {
  let controller: TestController;
  let a: QemuAgent;
  let b: QemuAgent;
  let c: QemuAgent;
  let d: QemuAgent;
  const hostA = uniqueHost('qtls-a');
  const hostB = uniqueHost('qtls-b');
  const hostC = uniqueHost('qtls-c');
  const hostD = uniqueHost('qtls-d');
  const certs = tempDir('qtls-certs');

  beforeAll(async () => {
    await testGuest();
    const ca = makeCa(certs, 'cluster');
    const foreign = makeCa(certs, 'foreign');
    // host C belongs to another cluster: its certificate and the CA it trusts are foreign.
    const filesC = makeHostCert(certs, foreign, hostC);
    // One shared storage directory: par-migrate's StaticData.
    const local = { migrationAddr: '127.0.0.1', storageDir: tempDir('qtls-storage') };
    [controller, a, b, c, d] = await Promise.all([
      startTestController(),
      startQemuAgent(hostA, { ...local, extraArgs: tlsArgs(makeHostCert(certs, ca, hostA)) }),
      startQemuAgent(hostB, { ...local, extraArgs: tlsArgs(makeHostCert(certs, ca, hostB)) }),
      startQemuAgent(hostC, { ...local, extraArgs: tlsArgs(filesC) }),
      startQemuAgent(hostD, local),
    ]);
  }, 600_000);

  afterAll(async () => {
    await Promise.all([a, b, c, d].map((x) => stopQemuAgent(x)));
    await controller?.stop();
    fs.rmSync(certs, { recursive: true, force: true });
  });

  // The three refused migrations move one guest in turn: each is refused, the guest keeps
  // running on host A and verifies there, and the next one starts from that state.
  let refusedGuest: Promise<string> | undefined;
  function guestOnA(): Promise<string> {
    const vm = 'qtls-refused';
    refusedGuest ??= createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'hot-set', seed: 35 }).then(() => vm);
    return refusedGuest;
  }

  function expectRolledBackOnSource(r: MigrationReport, vm: string): void {
    expect(r.outcome, r.reason).toBe('rolled-back');
    expect(r.reason).toContain(`${vm} runs on ${hostA}`);
    expect(r.verification).toMatchObject({ ok: true, where: 'source' });
    expect(serialOf(a, vm)).toContain('FERRY verify ok');
  }

  it('QEMU agents with the TLS flags say so in their ready line', async () => {
    for (const x of [a, b]) expect(await x.proc.ready).toMatch(/, channel-2 and QEMU migration mTLS, pid \d+\)/);
    expect(await d.proc.ready).not.toMatch(/mTLS/);
  });

  it('as-hybrid between two hosts of the cluster CA: switches to post-copy, the guest verifies on the target', async () => {
    const vm = 'qtls-as-1';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 31 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, driver: 'qemu', strategy: 'as-hybrid', options: { bandwidthBytesPerSec: 32 * MiB, maxIterations: 30 } });
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.decisions.some((x) => x.action === 'switch-to-postcopy')).toBe(true);
    expect(r.postcopy).not.toBeNull();
    expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
    // The key went to the QEMU host in a directory and files only root can read.
    const dir = path.join(a.stateDir, '.tls');
    expect(fs.statSync(dir).mode & 0o077).toBe(0);
    expect(fs.statSync(path.join(dir, 'client-key.pem')).mode & 0o077).toBe(0);
  }, 300_000);

  it("pa-hybrid between two hosts of the cluster CA: the agents' relay link runs over mutual TLS; StaticData merged, the guest verifies on the target", async () => {
    const vm = 'qtls-pa-1';
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 34 });
    destroyWhenDone(controller.client, vm, [hostB, hostA]);
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, strategy: 'pa-hybrid', options: { bandwidthBytesPerSec: 32 * MiB, storageBandwidthBytesPerSec: 400 * MiB, maxIterations: 30 } });
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.static?.pages).toBeGreaterThan(0);
    expect(r.bytes.storageWrite).toBeGreaterThan(0);
  }, 300_000);

  it("pa-hybrid to a host whose certificate a foreign CA signed: the relay link's TLS handshake fails, rolled back, the guest verifies on the source", async () => {
    const vm = await guestOnA();
    const r = await migrate(controller.client, { vm, source: hostA, target: hostC, strategy: 'pa-hybrid', options: { bandwidthBytesPerSec: 32 * MiB } });
    expectRolledBackOnSource(r, vm);
    expect(r.reason).toMatch(/relay link to .*TLS|certificate/i);
  }, 240_000);

  it('a target whose certificate a foreign CA signed is refused by the source QEMU: rolled back, the guest verifies on the source', async () => {
    const vm = await guestOnA();
    const r = await migrate(controller.client, { vm, source: hostA, target: hostC, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 64 * MiB } });
    expectRolledBackOnSource(r, vm);
    expect(r.reason).toMatch(/^precopy failed: QEMU ended the migration \(failed\): .*certificate/i);
    expect(r.iterations).toEqual([]);
  }, 240_000);

  it('a host without TLS is refused before the migration starts, naming both hosts', async () => {
    const vm = await guestOnA();
    const r = await migrate(controller.client, { vm, source: hostA, target: hostD, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 64 * MiB } });
    expectRolledBackOnSource(r, vm);
    expect(r.reason).toContain(`migration TLS mismatch: ${hostA} runs its migration streams over mutual TLS, ${hostD} does not`);
    expect(r.bytes.migrationNetwork).toBe(0);
  }, 240_000);
});

describe('a target admits only the migration\'s source', () => {
  const certs = tempDir('qtls-authz');
  const state = tempDir('qtls-authz-state');
  afterAll(() => {
    killQemusUnder(state);
    fs.rmSync(certs, { recursive: true, force: true });
  });

  /** A TLS client with `files`: 'closed' if the server hangs up within `ms` of the handshake. */
  function tryClient(uri: string, files: { ca: string; cert: string; key: string }, servername: string, ms: number): Promise<'closed' | 'open' | string> {
    const m = /^tcp:(.+):(\d+)$/.exec(uri)!;
    return new Promise((resolve) => {
      const sock = tls.connect({ host: m[1], port: Number(m[2]), ca: fs.readFileSync(files.ca), cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key), servername });
      let timer: NodeJS.Timeout | undefined;
      sock.on('secureConnect', () => {
        timer = setTimeout(() => {
          sock.destroy();
          resolve('open');
        }, ms);
      });
      sock.on('error', (e) => resolve(`error: ${e.message}`));
      sock.on('close', () => {
        clearTimeout(timer);
        resolve('closed');
      });
    });
  }

  it('a client with a valid cluster certificate for another host is turned away; the incoming QEMU keeps listening', async () => {
    const img = await testGuest();
    const ca = makeCa(certs, 'cluster');
    const [src, tgt, other] = ['qa-src', 'qa-tgt', 'qa-other'].map((h) => makeHostCert(certs, ca, h));
    const read = (f: { ca: string; cert: string; key: string }) => ({ ca: fs.readFileSync(f.ca, 'utf8'), cert: fs.readFileSync(f.cert, 'utf8'), key: fs.readFileSync(f.key, 'utf8') });
    const driver = new QemuDriver({ hostId: 'qa-tgt', host: new LocalHost(), stateDir: state, image: img, migrationTls: read(tgt!) });
    const acts = createQemuActivities({ hostId: 'qa-tgt', driver, memoryCapacityBytes: 1024 * MiB, dataAddress: '127.0.0.1:0', storageDir: state, startedAtMs: Date.now(), migrationAddress: '127.0.0.1', fallbackAddress: null, store: new SharedStore(state) });
    const prep = await acts.qemuPrepareTarget({ migrationId: 'm-authz', vm: 'qa-vm', source: 'qa-src', memoryBytes: 64 * MiB, vcpus: 1, workload: 'idle', seed: 1, rate: null, postcopy: false, sourceTlsCommonName: 'qa-src' });
    expect(prep.tls).toBe(true);
    expect(await tryClient(prep.uri, other!, 'qa-tgt', 1500)).toBe('closed');
    const info = await driver.vm('qa-vm')!.qmp.execute<{ status: string }>('query-migrate');
    expect(info.status).toBe('setup');
    // The source itself is admitted: the connection stays up, waiting for its stream.
    expect(await tryClient(prep.uri, src!, 'qa-tgt', 1500)).toBe('open');
  }, 120_000);
});
