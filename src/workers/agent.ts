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
import { createEmulatedActivities, type EmulatedContext } from '../activities/emulated';
import { PageChannelServer } from '../dataplane/channel';
import { loadClusterKeys, type ClusterKeys } from '../common/cluster-key';
import { checkOwnIdentity, commonNameOf, loadChannelTls, tlsServerOptions, type ChannelTlsFiles } from '../dataplane/tls';
import { SharedStore } from '../dataplane/store';
import { hostQueue } from '../common/names';
import { EmulatedDriver } from '../hypervisor/emulated';
import type { HypervisorDriver } from '../hypervisor/driver';
import { QemuDriver } from '../hypervisor/qemu/driver';
import { LocalHost, RemoteHost } from '../hypervisor/qemu/host';
import { checkVersion, MIN_QEMU_MAJOR } from '../hypervisor/qemu/qmp';
import { SshHost, type SshTarget } from '../hypervisor/qemu/ssh';
import { createQemuActivities } from '../activities/qemu';
import type { HostContext } from '../activities/host';
import { connectNative, installRuntime } from './runtime';
import { temporalTlsOption, type TemporalTlsFiles } from '../common/temporal-tls';
import { createAgentMetrics } from '../metrics/agent';
import { serveMetrics, type MetricsServer } from '../metrics/http';

export interface AgentOptions {
  hostId: string;
  temporalAddress: string;
  /** Mutual TLS to the frontend (FERRY_TEMPORAL_TLS_*). */
  temporalTls?: TemporalTlsFiles | null;
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
  /** When set, the agent's /metrics needs `Authorization: Bearer <it>` (FERRY_METRICS_TOKEN). */
  metricsToken?: string | null;
  /** Driver qemu: where QEMU runs and which addresses its migration streams use. */
  qemu?: QemuAgentOptions;
  /**
   * Mutual TLS on channel-2 with a cluster CA: the listener accepts only agents with a
   * certificate the CA signed, and this agent, as a source, accepts only a target whose
   * certificate names the target's host id. This host's certificate must name opts.hostId.
   */
  tls?: ChannelTlsFiles;
  /** The cluster keys channel-2 and relay secrets are derived from; default: loadClusterKeys(process.env). */
  channelKeys?: ClusterKeys | null;
  log?: (line: string) => void;
}

export interface QemuAgentOptions {
  /** Per-VM directories (QMP socket, pidfile, serial log) on the QEMU host. */
  stateDir: string;
  /** The guest kernel and initramfs on the QEMU host. */
  image: { kernel: string; initrd: string };
  /** IP the target's QEMU listens on for migrations (the migration network). */
  migrationAddress: string;
  /** This host's IP on the second network, for post-copy recovery. */
  fallbackAddress: string | null;
  /** Agentless: drive the QEMU of a remote host over SSH. */
  ssh?: SshTarget;
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
  // Before anything starts: a bad file or a certificate for another host fails here.
  const tls = opts.tls ? loadChannelTls(opts.tls) : undefined;
  if (tls) checkOwnIdentity(tls, opts.hostId);
  // The agent-to-agent secrets are derived from the cluster key, never carried by the history.
  const channelKeys = opts.channelKeys !== undefined ? opts.channelKeys : loadClusterKeys(process.env);
  if (!channelKeys) log(`ferry agent ${opts.hostId}: no cluster key (FERRY_CLUSTER_KEY_FILE): channel-2 secrets of migrations to this host travel in workflow history`);
  let qemuDriver: QemuDriver | null = null;
  let ssh: SshHost | null = null;
  if (opts.driver === 'qemu') {
    const q = opts.qemu;
    if (!q) throw new Error('driver qemu needs its options (state dir, guest image, migration address)');
    ssh = q.ssh ? await SshHost.connect(q.ssh) : null;
    const host = ssh ? new RemoteHost(ssh) : new LocalHost();
    qemuDriver = new QemuDriver({
      hostId: opts.hostId,
      host,
      stateDir: q.stateDir,
      image: q.image,
      log,
      ...(tls ? { migrationTls: { ca: tls.ca.toString('utf8'), cert: tls.cert.toString('utf8'), key: tls.key.toString('utf8') } } : {}),
    });
    const version = await host.run(['qemu-system-x86_64', '--version']);
    const m = /version (\d+)\.(\d+)\.(\d+)/.exec(version.stdout);
    if (!m) throw new Error(`${host.where}: qemu-system-x86_64 not found (${version.stderr.trim() || 'no version'}); install QEMU ≥ ${MIN_QEMU_MAJOR}`);
    checkVersion({ major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3]), package: '' }, host.where);
    const adopted = await qemuDriver.adopt();
    if (adopted.length) log(`ferry agent ${opts.hostId}: re-attached to running QEMU guest(s) ${adopted.join(', ')}`);
  }
  const emulated = qemuDriver ? null : new EmulatedDriver({ hostId: opts.hostId });
  const driver: HypervisorDriver = qemuDriver ?? emulated!;
  const [bindHost, bindPort] = splitHostPort(opts.dataAddr);
  const channels = await PageChannelServer.listen({
    host: bindHost,
    port: bindPort,
    ...(tls
      ? {
          tls: tlsServerOptions(tls),
          // A peer refused at the TLS layer never reaches a migration: say it here.
          onReject: (err: Error, migrationId: string | undefined) => {
            if (migrationId === undefined) log(`ferry agent ${opts.hostId}: ${err.message}`);
          },
        }
      : {}),
  });
  const bound = channels.address;
  const advertisedHost = bound.host === '0.0.0.0' || bound.host === '::' ? os.hostname() : bound.host;
  const dataAddress = opts.dataAdvertise ?? `${advertisedHost}:${bound.port}`;
  const ctx: HostContext = {
    hostId: opts.hostId,
    driver,
    memoryCapacityBytes: opts.memoryCapacityBytes,
    dataAddress,
    storageDir: opts.storageDir,
    startedAtMs: Date.now(),
    channelKeys,
  };
  const migrationActivities = emulated
    ? createEmulatedActivities({ ...ctx, driver: emulated, channels, store: new SharedStore(opts.storageDir), ...(tls ? { tls } : {}) } satisfies EmulatedContext)
    : createQemuActivities({
        ...ctx,
        driver: qemuDriver!,
        migrationAddress: opts.qemu!.migrationAddress,
        fallbackAddress: opts.qemu!.fallbackAddress,
        store: new SharedStore(opts.storageDir),
        ...(tls ? { tls } : {}),
        log,
        // Only a plain CN is a safe admission pattern for the target's QEMU (no glob or DN syntax).
        tlsCommonName: tls ? (/^[A-Za-z0-9._-]+$/.exec(commonNameOf(tls) ?? '')?.[0] ?? null) : null,
      });
  const metrics = opts.metricsAddr ? createAgentMetrics({ hostId: opts.hostId, driver, memoryCapacityBytes: opts.memoryCapacityBytes }) : null;
  let metricsServer: MetricsServer | null = null;
  if (metrics && opts.metricsAddr) {
    metricsServer = await serveMetrics(opts.metricsAddr, metrics.registry, { token: opts.metricsToken });
    log(`ferry agent ${opts.hostId}: metrics on ${metricsServer.url}`);
  }
  const connection = await connectNative(opts.temporalAddress, opts.temporalTls);
  const taskQueue = hostQueue(opts.hostId);
  const worker = await Worker.create({
    connection,
    namespace: opts.namespace,
    taskQueue,
    activities: { ...createHostActivities(ctx), ...migrationActivities },
    // Migrations of several VMs may run on one host at once; page work is I/O bound.
    maxConcurrentActivityTaskExecutions: 32,
    ...(metrics ? { interceptors: { activity: [metrics.interceptor] } } : {}),
  });
  // Announce this host to the registry (created on first use).
  const clientConnection = await Connection.connect({ address: opts.temporalAddress, ...temporalTlsOption(opts.temporalTls) });
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
    await ssh?.close();
    await connection.close();
  });
  log(`ferry agent ${opts.hostId}: polling ${taskQueue} on ${opts.temporalAddress}${opts.temporalTls ? ' (mTLS)' : ''} (driver ${driver.kind}${ssh ? ` over ssh ${ssh.where}` : ''}, data ${dataAddress}${tls ? (qemuDriver ? ', channel-2 and QEMU migration mTLS' : ', channel-2 mTLS') : ''}, pid ${process.pid})`);
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
