/**
 * A host agent: an activity worker on `ferry-host-<id>` (no workflows) that owns the VMs of
 * its host through a hypervisor driver and serves channel-2 for incoming migrations.
 */
import { Worker } from '@temporalio/worker';
import { createHostActivities, type HostContext } from '../activities/host';
import { hostQueue } from '../common/names';
import type { HypervisorDriver } from '../hypervisor/driver';
import { EmulatedDriver } from '../hypervisor/emulated';
import { connectNative, installRuntime } from './runtime';

export interface AgentOptions {
  hostId: string;
  temporalAddress: string;
  namespace: string;
  driver: 'emulated' | 'qemu';
  /** host:port for the channel-2 listener (port 0 = any). */
  dataAddr: string;
  storageDir: string;
  memoryCapacityBytes: number;
  log?: (line: string) => void;
}

export interface RunningAgent {
  hostId: string;
  taskQueue: string;
  dataAddress: string;
  /** Resolves when the worker has stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  installRuntime();
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const driver: HypervisorDriver = new EmulatedDriver({ hostId: opts.hostId });
  const dataAddress = opts.dataAddr;
  const ctx: HostContext = {
    hostId: opts.hostId,
    driver,
    memoryCapacityBytes: opts.memoryCapacityBytes,
    dataAddress,
    storageDir: opts.storageDir,
    startedAtMs: Date.now(),
  };
  const connection = await connectNative(opts.temporalAddress);
  const taskQueue = hostQueue(opts.hostId);
  const worker = await Worker.create({
    connection,
    namespace: opts.namespace,
    taskQueue,
    activities: { ...createHostActivities(ctx) },
    // Migrations of several VMs may run on one host at once; page work is I/O bound.
    maxConcurrentActivityTaskExecutions: 32,
  });
  const done = worker.run().finally(async () => {
    await driver.close();
    await connection.close();
  });
  log(`ferry agent ${opts.hostId}: polling ${taskQueue} on ${opts.temporalAddress} (driver ${driver.kind}, data ${dataAddress}, pid ${process.pid})`);
  return {
    hostId: opts.hostId,
    taskQueue,
    dataAddress,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}
