/**
 * QEMU post-copy recovery over the second network. Two `--driver qemu` agents in network
 * namespaces of their own (test/helpers/netns.ts), each QEMU in its agent's namespace; the
 * migration stream runs on the migration link. During post-copy the migration link goes
 * down silently (no RST: QEMU on both sides stays postcopy-active). ferry sees no progress,
 * pauses both ends (migrate-pause) and resumes over the storage link (migrate-recover on the
 * target, migrate resume=true on the source); the guest then verifies its own pages. The
 * agents run QEMU's migration stream over mutual TLS, so the recovered stream is TLS too.
 */
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { startFaultCluster, type FaultCluster } from '../../src/support/fault-cluster';
import { prng } from '../../src/support/prng';
import type { MigrationReport } from '../../src/workflows/report';
import { progressQuery } from '../../src/workflows/messages';
import { createVm, MiB, startMigration } from '../helpers/migrate';
import { killQemusUnder, testGuest } from '../helpers/qemu';
import { faultSeed } from '../helpers/netns';
import { tempDir } from '../helpers/cluster';
import { makeCa, makeHostCert, tlsArgs } from '../helpers/certs';

const seed = faultSeed('qemu-recovery.test.ts');
let cluster: FaultCluster | undefined;
const stateDirs: string[] = [];

beforeAll(async () => {
  const img = await testGuest();
  const certs = tempDir('qrec-certs');
  const ca = makeCa(certs, 'cluster');
  cluster = await startFaultCluster({
    kind: 'net',
    hosts: ['qnet-a', 'qnet-b'],
    temporalBin: inject('temporalBin'),
    log: (l) => console.log(l),
    agentArgs: (host, end, net) => {
      const dir = tempDir(`qemu-${host}`);
      stateDirs.push(dir);
      return [...tlsArgs(makeHostCert(certs, ca, host)), '--driver', 'qemu', '--qemu-state', dir, '--guest-kernel', img.kernel, '--guest-initrd', img.initrd, '--migration-addr', net!.migration[end], '--fallback-addr', net!.storage[end]];
    },
  });
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
  for (const d of stateDirs) killQemusUnder(d);
}, 60_000);

describe('QEMU post-copy across two networks', () => {
  it('the migration link is cut during post-copy: ferry recovers over the storage link, the guest verifies', async () => {
    const c = cluster!;
    const net = c.net!;
    const random = prng(seed);
    const vm = 'qrec-1';
    await createVm(c.client, c.source, { name: vm, memoryBytes: 128 * MiB, workload: 'hot-set', seed: 5 });
    // post-copy from the start, 16 MiB/s: the guest's 128 MiB take ~8 s to push, and the link
    // is cut at most 2.5 s into it.
    const handle = await startMigration(c.client, { vm, source: c.source, target: c.target, driver: 'qemu', strategy: 'postcopy', options: { bandwidthBytesPerSec: 16 * MiB, faultTimeoutMs: 2000 } });
    for (;;) {
      const p = await handle.query(progressQuery).catch(() => null); // not registered before the first task
      if (!p) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (p.phase === 'postcopy') break;
      if (['completed', 'failed', 'rolled-back'].includes(p.phase)) throw new Error(`migration ended ${p.phase} before post-copy`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const cutAfterMs = 500 + Math.floor(random() * 2000);
    await new Promise((r) => setTimeout(r, cutAfterMs));
    console.log(`qemu-recovery: migration link down ${cutAfterMs} ms into post-copy (seed ${seed})`);
    net.down('migration', 'target');
    const r = (await handle.result()) as MigrationReport;
    net.allUp();
    console.log(`qemu-recovery: ${r.outcome}: ${r.reason}; recoveries ${JSON.stringify(r.recoveries)}`);
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.recoveries?.length).toBeGreaterThanOrEqual(1);
    expect(r.recoveries![0]!.uri).toContain(net.storage.target);
    expect(r.recoveries![0]!.reason).toMatch(/no post-copy progress|paused/);
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
  }, 300_000);

  // Relayed (pa-hybrid: the bulk pass through StaticData, merged into the target's RAM file), with
  // post-copy's background pages over the migration link or through PbData. The recovered stream
  // runs through both agents' relays over the storage link, and the target's relay adds the RAM
  // file's pages to QEMU's RECV_BITMAP (without that, QEMU resends them and the target refuses them).
  it.each(['off', 'async'] as const)('relayed pa-hybrid (PbData %s): the migration link is cut during post-copy, the relays carry the recovery, the guest verifies', async (pbdata) => {
    const c = cluster!;
    const net = c.net!;
    const random = prng(seed + (pbdata === 'off' ? 1 : 2));
    const vm = `qrec-relay-${pbdata}`;
    await createVm(c.client, c.source, { name: vm, memoryBytes: 128 * MiB, workload: 'write-intensive', seed: 6 });
    // Post-copy after one round past the merge; its background pages at 8 MiB/s over the link, or
    // 16 MiB/s through PbData: 1-3 s of post-copy, and the link is cut at most 0.5 s into it,
    // while QEMU still has pages to send (a source that sent its last page cannot pause).
    const handle = await startMigration(c.client, {
      vm,
      source: c.source,
      target: c.target,
      driver: 'qemu',
      strategy: 'pa-hybrid',
      options: { bandwidthBytesPerSec: 8 * MiB, storageBandwidthBytesPerSec: 16 * MiB, switchAfterRounds: 1, pbdata, faultTimeoutMs: 2000 },
    });
    await untilPhase(handle, 'postcopy');
    // The window can be moved to study later cuts (FERRY_QREC_CUT_MS=from-to); the test's own is 150-500.
    const [cutFrom, cutTo] = (process.env.FERRY_QREC_CUT_MS ?? '150-500').split('-').map(Number) as [number, number];
    const cutAfterMs = cutFrom + Math.floor(random() * Math.max(0, cutTo - cutFrom));
    await new Promise((r) => setTimeout(r, cutAfterMs));
    console.log(`qemu-recovery: relayed, PbData ${pbdata}: migration link down ${cutAfterMs} ms into post-copy (seed ${seed})`);
    net.down('migration', 'target');
    let r: MigrationReport;
    try {
      r = (await handle.result()) as MigrationReport;
    } catch (e) {
      // What both agents said about this VM: the relays' and QEMU's side of the story.
      for (const [host, a] of c.agents) console.log(`--- ${host}:\n${a.output().split('\n').filter((l) => l.includes(vm)).slice(-60).join('\n')}`);
      throw e;
    } finally {
      net.allUp();
    }
    console.log(`qemu-recovery: relayed, PbData ${pbdata}: ${r.outcome}: ${r.reason}; recoveries ${JSON.stringify(r.recoveries)}`);
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.static?.pages).toBeGreaterThan(0);
    expect(r.recoveries?.length).toBeGreaterThanOrEqual(1);
    expect(r.recoveries![0]!.uri).toBe(`ferry-relay:${net.storage.target}:${r.recoveries![0]!.uri.split(':').pop()}`);
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    // The target's relay added the RAM file's pages to the recovered stream's RECV_BITMAP.
    const targetLog = c.agents.get(c.target)!.output();
    const added = [...targetLog.matchAll(new RegExp(`${vm} relay recovery: RECV_BITMAP of "pc.ram": (\\d+) page`, 'g'))].map((m) => Number(m[1]));
    console.log(`qemu-recovery: relayed, PbData ${pbdata}: the target relay added ${added.join(', ')} RAM-file page(s) to RECV_BITMAP; static ${r.static?.pages} pages, post-copy ${r.postcopyDurationMs ?? '?'} ms`);
    expect(added.length).toBeGreaterThanOrEqual(1);
    expect(added[0]).toBeGreaterThan(0);
  }, 300_000);
});

async function untilPhase(handle: Awaited<ReturnType<typeof startMigration>>, phase: string): Promise<void> {
  for (;;) {
    const p = await handle.query(progressQuery).catch(() => null); // not registered before the first task
    if (p?.phase === phase) return;
    if (p && ['completed', 'failed', 'rolled-back'].includes(p.phase)) throw new Error(`migration ended ${p.phase} before ${phase}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
