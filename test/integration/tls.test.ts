/**
 * Mutual TLS on channel-2 between real agent processes started with --tls-ca/--tls-cert/
 * --tls-key: a migration between two agents of the cluster CA completes; a source whose
 * certificate a foreign CA signed is refused by the target and the migration rolls back.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FERRY_BIN, type FerryProcess } from '../../src/support/processes';
import { makeCa, makeHostCert, tlsArgs } from '../helpers/certs';
import { createVm, migrate, MiB } from '../helpers/migrate';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';

describe('channel-2 mutual TLS between agents', () => {
  let controller: TestController;
  const agents: FerryProcess[] = [];
  const hostA = uniqueHost('tls-a');
  const hostB = uniqueHost('tls-b');
  const hostC = uniqueHost('tls-c');
  const storage = tempDir('tls-storage');
  const certs = tempDir('tls-certs');
  let agentB: FerryProcess;
  let filesA: ReturnType<typeof makeHostCert>;
  let filesC: ReturnType<typeof makeHostCert>;

  beforeAll(async () => {
    const ca = makeCa(certs, 'cluster');
    const foreign = makeCa(certs, 'foreign');
    const a = makeHostCert(certs, ca, hostA);
    filesA = a;
    const b = makeHostCert(certs, ca, hostB);
    // host C trusts the cluster CA, but its own certificate comes from the foreign CA.
    const c = { ...makeHostCert(certs, foreign, hostC), ca: ca.crt };
    filesC = c;
    const opts = { storageDir: storage, memoryCapacity: '1GiB' };
    const [ctl, pa, pb, pc] = await Promise.all([
      startTestController(),
      startAgentProcess(hostA, { ...opts, extraArgs: tlsArgs(a) }),
      startAgentProcess(hostB, { ...opts, extraArgs: tlsArgs(b) }),
      startAgentProcess(hostC, { ...opts, extraArgs: tlsArgs(c) }),
    ]);
    controller = ctl;
    agents.push(pa, pb, pc);
    agentB = pb;
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await controller?.stop();
    fs.rmSync(certs, { recursive: true, force: true });
  });

  it('the agent command takes the three files together, checked before it starts', () => {
    const agentAs = (host: string, ...args: string[]) => {
      const r = spawnSync(process.execPath, [FERRY_BIN, 'agent', '--host', host, ...args], { encoding: 'utf8', env: { ...process.env, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1' } });
      return { code: r.status, stderr: r.stderr.trim() };
    };
    const agent = (...args: string[]) => agentAs(hostA, ...args);
    const half = agent('--tls-ca', filesA.ca);
    expect(half).toEqual({ code: 2, stderr: 'ferry agent: --tls-ca, --tls-cert and --tls-key go together (missing --tls-cert, --tls-key)' });
    const missing = path.join(certs, 'missing.key');
    expect(agent(...tlsArgs({ ...filesA, key: missing }))).toEqual({ code: 2, stderr: `ferry agent: channel-2 TLS: cannot read private key file '${missing}': no such file` });
    const other = agent(...tlsArgs(filesA).slice(0, 2), '--tls-cert', path.join(certs, `${hostB}.crt`), '--tls-key', path.join(certs, `${hostB}.key`));
    expect(other.code).toBe(2);
    expect(other.stderr).toContain(`names ${hostB}, not this host's id ${hostA}`);
    // QEMU checks its own certificate against the CA when it loads them; a QEMU agent says so at start.
    const q = agentAs(hostC, '--driver', 'qemu', ...tlsArgs(filesC));
    expect(q.code).toBe(2);
    expect(q.stderr).toMatch(new RegExp(`^ferry agent: migration TLS: certificate file '${filesC.cert.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' \\(CN=${hostC}\\) is not signed by the CA in '.*cluster-ca\\.crt' \\(CN=ferry cluster CA\\); QEMU refuses such credentials$`));
  });

  it('agents say channel-2 mTLS in their ready line', async () => {
    for (const a of agents) expect(await a.ready).toMatch(/polling ferry-host-.*, channel-2 mTLS, pid \d+\)/);
  });

  it('as-hybrid moves a 32 MiB memcached guest between two agents of the cluster CA', async () => {
    const vm = `vm-tls-ok-${Date.now()}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 21 });
    const r = await migrate(controller.client, { vm, source: hostA, target: hostB, strategy: 'as-hybrid', options: { digest: true } });
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    expect(r.verification!.pagesChecked).toBe(r.memoryBytes / r.pageSize);
    expect(r.bytes.migrationNetwork).toBeGreaterThan(0);
  }, 120_000);

  it('a source with a foreign-CA certificate is refused at TLS: the migration rolls back', async () => {
    const vm = `vm-tls-foreign-${Date.now()}`;
    await createVm(controller.client, hostC, { name: vm, memoryBytes: 32 * MiB, workload: 'memcached', seed: 22 });
    const r = await migrate(controller.client, { vm, source: hostC, target: hostB, strategy: 'as-hybrid' });
    expect(r.outcome, r.reason).toBe('rolled-back');
    expect(r.reason).toMatch(new RegExp(`channel-2 TLS to [^ ]+ \\(${hostB}\\) failed: the target closed the connection right after the TLS handshake: it refused this host's certificate`));
    expect(r.reason).toContain(`${vm} runs on ${hostC}`);
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'source' });
    expect(r.bytes.migrationNetwork).toBe(0);
    // The target logged why, naming the TLS failure.
    expect(agentB.output()).toMatch(new RegExp(`ferry agent ${hostB}: channel-2 TLS handshake with 127\\.0\\.0\\.1:\\d+ failed: client certificate signed by unknown authority`));
  }, 120_000);
});
