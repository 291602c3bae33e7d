/**
 * Agentless hosts: an agent drives the QEMU of a "remote" host over SSH (Debian's real
 * OpenSSH server on loopback, test/helpers/sshd.ts). QEMU is launched with an exec on the
 * SSH connection and its QMP socket is reached by streamlocal forwarding; the host key is
 * checked against a known-hosts file, and a wrong one keeps the agent from starting. Both
 * agents run their migration streams over mutual TLS, so the credentials reach the remote
 * host over SSH too.
 */
import { runClusterKeyEnv } from '../../src/common/cluster-key';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnFerry } from '../../src/support/processes';
import { startTestController, tempDir, temporalAddress, uniqueHost, type TestController } from '../helpers/cluster';
import { makeCa, makeHostCert, tlsArgs } from '../helpers/certs';
import { createVm, migrate, MiB } from '../helpers/migrate';
import { startQemuAgent, stopQemuAgent, testGuest, type QemuAgent } from '../helpers/qemu';
import { ensureSshd, type Sshd } from '../helpers/sshd';

let sshd: Sshd;
let controller: TestController;
let local: QemuAgent;
let remote: QemuAgent;
const hostLocal = uniqueHost('qloc');
const hostRemote = uniqueHost('qssh');

beforeAll(async () => {
  const img = await testGuest();
  sshd = await ensureSshd();
  const certs = tempDir('qssh-certs');
  const ca = makeCa(certs, 'cluster');
  const sshArgs = [...tlsArgs(makeHostCert(certs, ca, hostRemote)), '--ssh', `${sshd.username}@${sshd.host}:${sshd.port}`, '--ssh-key', sshd.clientKeyPath, '--known-hosts', sshd.knownHostsPath];
  [controller, local, remote] = await Promise.all([
    startTestController(),
    startQemuAgent(hostLocal, { migrationAddr: '127.0.0.1', extraArgs: tlsArgs(makeHostCert(certs, ca, hostLocal)) }),
    startQemuAgent(hostRemote, { migrationAddr: '127.0.0.1', extraArgs: sshArgs }),
  ]);
  void img;
}, 300_000);

afterAll(async () => {
  await Promise.all([stopQemuAgent(local), stopQemuAgent(remote)]);
  await controller?.stop();
  await sshd?.stop();
});

describe('QEMU over SSH (agentless host)', () => {
  it('the agent says it drives QEMU over SSH', () => {
    expect(remote.proc.output()).toContain(`driver qemu`);
    expect(remote.proc.output()).toMatch(/over ssh root@127\.0\.0\.1:\d+/);
  });

  it('migrates a guest to the SSH-driven host; the guest verifies there', async () => {
    const vm = 'qssh-1';
    await createVm(controller.client, hostLocal, { name: vm, memoryBytes: 256 * MiB, workload: 'converging', seed: 21 });
    const r = await migrate(controller.client, { vm, source: hostLocal, target: hostRemote, driver: 'qemu', strategy: 'precopy', options: { bandwidthBytesPerSec: 64 * MiB } });
    expect(r.outcome, r.reason).toBe('completed');
    expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
    // The TLS key went to the SSH host's state directory, readable by its owner only.
    const key = path.join(remote.stateDir, '.tls', 'server-key.pem');
    expect(fs.readFileSync(key, 'utf8')).toContain('PRIVATE KEY');
    expect(fs.statSync(key).mode & 0o077).toBe(0);
  }, 240_000);

  it('an agent whose known-hosts file has another key for the host refuses to start, naming the fingerprint', async () => {
    const img = await testGuest();
    const p = spawnFerry(
      'agent wrong-key',
      ['agent', '--host', uniqueHost('qbad'), '--driver', 'qemu', '--qemu-state', tempDir('qemu-bad'), '--guest-kernel', img.kernel, '--guest-initrd', img.initrd,
        '--ssh', `${sshd.username}@${sshd.host}:${sshd.port}`, '--ssh-key', sshd.clientKeyPath, '--known-hosts', sshd.wrongKnownHostsPath],
      { env: { FERRY_TEMPORAL_ADDRESS: temporalAddress(), FERRY_STORAGE_DIR: tempDir('storage'), ...runClusterKeyEnv() } },
    );
    const code = await p.exited;
    expect(code).not.toBe(0);
    expect(p.output()).toMatch(/host key verification failed/);
    expect(p.output()).toContain('SHA256:');
    expect(p.output()).toContain(sshd.wrongKnownHostsPath);
  }, 60_000);
});
