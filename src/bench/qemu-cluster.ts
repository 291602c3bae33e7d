/**
 * A local cluster of two `--driver qemu` agents (real guests under TCG) for the QEMU benches:
 * `ferry bench --suite qemu` and `ferry bench --suite regret --driver qemu`.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { FerryConfig } from '../common/config';
import { UsageError } from '../common/errors';
import { killQemusUnder } from '../hypervisor/qemu/driver';
import { ensureTestGuest } from '../hypervisor/qemu/guest-image';
import { startLocalCluster } from '../support/local-cluster';

export interface QemuBenchCluster {
  client: Client;
  source: string;
  target: string;
  /** `QEMU 10.0.x`. */
  qemuVersion: string;
}

/** The installed QEMU's version line, or a usage error saying how to install it. */
export function qemuVersion(): string {
  const version = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.replace(/^QEMU emulator version /, 'QEMU ') ?? '';
  if (!version) throw new UsageError('qemu-system-x86_64 is not installed (ferry setup --tests installs QEMU ≥ 9 on Debian)');
  return version;
}

/** Start the cluster, run `fn` on it, stop it and kill every QEMU the agents left behind. */
export async function withQemuBenchCluster<T>(
  opts: { cfg: FerryConfig; prefix: string; memoryBytes: number; log: (l: string) => void; verbose?: boolean },
  fn: (c: QemuBenchCluster) => Promise<T>,
): Promise<T> {
  const version = qemuVersion();
  const img = await ensureTestGuest({ log: opts.log });
  const runId = randomBytes(3).toString('hex');
  const [source, target] = [`${opts.prefix}-${runId}-a`, `${opts.prefix}-${runId}-b`];
  const stateRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-qemu-'));
  const cfg = { ...opts.cfg, storageDir: path.join(stateRoot, 'storage') };
  try {
    const cluster = await startLocalCluster({
      cfg,
      hosts: [source, target],
      memoryCapacity: String(opts.memoryBytes * 2 + 256 * 2 ** 20),
      log: opts.log,
      verbose: opts.verbose === true,
      agentArgs: (host) => ['--driver', 'qemu', '--qemu-state', path.join(stateRoot, host), '--migration-addr', '127.0.0.1', '--guest-kernel', img.kernel, '--guest-initrd', img.initrd],
    });
    try {
      const connection = await Connection.connect({ address: cluster.address });
      try {
        return await fn({ client: new Client({ connection, namespace: cfg.namespace }), source, target, qemuVersion: version });
      } finally {
        await connection.close();
      }
    } finally {
      await cluster.stop();
    }
  } finally {
    // QEMU runs daemonized: kill what the agents left behind.
    for (const host of [source, target]) killQemusUnder(path.join(stateRoot, host));
    fs.rmSync(stateRoot, { recursive: true, force: true });
  }
}
