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
});
