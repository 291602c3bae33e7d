/**
 * A host agent: an activity worker on `ferry-host-<id>` (no workflows) that owns the VMs of
 * its host through a hypervisor driver and serves channel-2 for incoming migrations.
 */
import { Client, Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { CONTROL_QUEUE } from '../common/names';
import { hostDownSignal, hostUpSignal, REGISTRY_WORKFLOW_ID } from '../workflows/registry';
import os from 'node:os';
import { createHostActivities } from '../activities/host';
import { createMigrationActivities, type MigrationContext } from '../activities/migration';
import { PageChannelServer } from '../dataplane/channel';
import { SharedStore } from '../dataplane/store';
import { hostQueue } from '../common/names';
import { EmulatedDriver } from '../hypervisor/emulated';
import { connectNative, installRuntime } from './runtime';
import { createAgentMetrics } from '../metrics/agent';
import { serveMetrics, type MetricsServer } from '../metrics/http';

export interface AgentOptions {
  hostId: string;
  temporalAddress: string;
  namespace: string;
  driver: 'emulated' | 'qemu';
  /** host:port for the channel-2 listener (port 0 = any). */
  dataAddr: string;
  /** host:port other agents use to reach this one (default: the bound address). */
  dataAdvertise?: string;
  storageDir: string;
  memoryCapacityBytes: number;
  /** Serve Prometheus metrics on this HOST:PORT (port 0 = any). */
  metricsAddr?: string;
  log?: (line: string) => void;
}

export interface RunningAgent {
  hostId: string;
  taskQueue: string;
  dataAddress: string;
  /** The Prometheus endpoint, when --metrics was given. */
  metricsUrl: string | null;
  /** Resolves when the worker has stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  installRuntime();
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const driver = new EmulatedDriver({ hostId: opts.hostId });
  const [bindHost, bindPort] = splitHostPort(opts.dataAddr);
  const channels = await PageChannelServer.listen({ host: bindHost, port: bindPort });
  const bound = channels.address;
  const advertisedHost = bound.host === '0.0.0.0' || bound.host === '::' ? os.hostname() : bound.host;
  const dataAddress = opts.dataAdvertise ?? `${advertisedHost}:${bound.port}`;
  const ctx: MigrationContext = {
    hostId: opts.hostId,
    driver,
    memoryCapacityBytes: opts.memoryCapacityBytes,
    dataAddress,
    storageDir: opts.storageDir,
    startedAtMs: Date.now(),
    channels,
    store: new SharedStore(opts.storageDir),
  };
  const metrics = opts.metricsAddr ? createAgentMetrics({ hostId: opts.hostId, driver, memoryCapacityBytes: opts.memoryCapacityBytes }) : null;
  let metricsServer: MetricsServer | null = null;
  if (metrics && opts.metricsAddr) {
    metricsServer = await serveMetrics(opts.metricsAddr, metrics.registry);
    log(`ferry agent ${opts.hostId}: metrics on ${metricsServer.url}`);
  }
  const connection = await connectNative(opts.temporalAddress);
  const taskQueue = hostQueue(opts.hostId);
  const worker = await Worker.create({
    connection,
    namespace: opts.namespace,
    taskQueue,
    activities: { ...createHostActivities(ctx), ...createMigrationActivities(ctx) },
    // Migrations of several VMs may run on one host at once; page work is I/O bound.
    maxConcurrentActivityTaskExecutions: 32,
    ...(metrics ? { interceptors: { activity: [metrics.interceptor] } } : {}),
  });
  // Announce this host to the registry (created on first use).
  const clientConnection = await Connection.connect({ address: opts.temporalAddress });
  const client = new Client({ connection: clientConnection, namespace: opts.namespace });
  await client.workflow.signalWithStart('hostRegistryWorkflow', {
    workflowId: REGISTRY_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [{ hosts: [] }],
    signal: hostUpSignal,
    signalArgs: [{ hostId: opts.hostId, dataAddress, memoryCapacityBytes: opts.memoryCapacityBytes, driver: driver.kind, pid: process.pid }],
  });
  const done = worker.run().finally(async () => {
    await client.workflow
      .getHandle(REGISTRY_WORKFLOW_ID)
      .signal(hostDownSignal, { hostId: opts.hostId, pid: process.pid })
      .catch(() => undefined);
    await clientConnection.close();
    await channels.close();
    await metricsServer?.close();
    await driver.close();
    await connection.close();
  });
  log(`ferry agent ${opts.hostId}: polling ${taskQueue} on ${opts.temporalAddress} (driver ${driver.kind}, data ${dataAddress}, pid ${process.pid})`);
  return {
    hostId: opts.hostId,
    taskQueue,
    dataAddress,
    metricsUrl: metricsServer?.url ?? null,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}

function splitHostPort(addr: string): [string, number] {
  const i = addr.lastIndexOf(':');
  return [addr.slice(0, i).replace(/^\[|\]$/g, ''), Number(addr.slice(i + 1))];
}
