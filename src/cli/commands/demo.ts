/**
 * The main job on the embedded default: a local Temporal dev server (unless
 * FERRY_TEMPORAL_ADDRESS is set), a controller and two host agents as real processes; an
 * emulated VM running a write-intensive workload boots on host-a and migrates to host-b
 * with live progress; the report is printed; everything is shut down.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { UsageError } from '../../common/errors';
import { CONTROL_QUEUE } from '../../common/names';
import { parseSize } from '../../common/units';
import { reportOf, resolveHandle, startMigration } from '../../client/migrations';
import { localTraceSetup, workloadNames } from '../../guest/workloads';
import { choice, int, parse, str } from '../args';
import { commonOptions, configFrom, say } from '../context';
import { temporalTlsOption } from '../../common/temporal-tls';
import { reportText, watchProgress } from '../display';
import { startLocalCluster } from '../../support/local-cluster';
import path from 'node:path';
import { killQemusUnder, QEMU_WORKLOADS } from '../../hypervisor/qemu/driver';
import { ensureTestGuest } from '../../hypervisor/qemu/guest-image';
import { migrationOptionSpec, migrationOptionsFrom } from '../migration-options';
import { loadTokens } from '../../api/auth';
import { startApiServer, type RunningApi } from '../../api/server';
import { openAuditStore } from '../../audit';
import type { AuditStore } from '../../audit/types';
import { onShutdownSignal } from '../../workers/runtime';

export const help =
  'ferry demo [--strategy S] [--workload W] [--memory 256MiB] [--bandwidth 32MiB/s] [--seed N] [--driver emulated|qemu] [--ui [--listen HOST:PORT]] [--json] [--verbose]   the main job (--ui: the dashboard, kept up after the migration until Ctrl-C)';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      ...migrationOptionSpec,
      workload: { type: 'string' },
      memory: { type: 'string' },
      seed: { type: 'string' },
      driver: { type: 'string' },
      json: { type: 'boolean' },
      verbose: { type: 'boolean' },
      ui: { type: 'boolean' },
      listen: { type: 'string' },
    },
    false,
  );
  const cfg = configFrom(values);
  const json = values.json === true;
  const driver = choice(values.driver, 'driver', ['emulated', 'qemu'] as const) ?? 'emulated';
  // On QEMU, the paper's scheme without par-migrate (QEMU exposes no dirty log to ferry).
  const { strategy, options } = migrationOptionsFrom(driver === 'qemu' && values.strategy === undefined ? { ...values, strategy: 'as-hybrid' } : values);
  const asked = str(values.workload) ?? (driver === 'qemu' ? 'write-intensive' : 'memcached');
  // A trace file named here is read by the demo's own agents: their trace directory is the
  // file's (agents read trace files only from the directory they are given).
  const traces = driver === 'qemu' ? { traceDir: null, workloads: [asked] } : localTraceSetup([asked]);
  const workload = traces.workloads[0] ?? asked;
  if (driver === 'qemu') {
    if (!QEMU_WORKLOADS[workload]) throw new UsageError(`--workload: '${workload}' is not one of ${Object.keys(QEMU_WORKLOADS).join(', ')} (the QEMU test guest's)`);
  } else if (!workload.startsWith('trace:') && !workloadNames().includes(workload)) {
    throw new UsageError(`--workload: '${workload}' is not one of ${workloadNames().join(', ')}`);
  }
  const memoryBytes = parseSize(str(values.memory) ?? '256MiB', '--memory');
  if (memoryBytes < 4 * 1024 * 1024) throw new UsageError('--memory: at least 4MiB');
  const seed = int(values.seed, 'seed', 0, 0xffffffff) ?? 1;
  const img = driver === 'qemu' ? await ensureTestGuest({ log: say }) : null;
  const qemuState = path.join(cfg.stateDir, `demo-qemu-${process.pid}`);
  const cluster = await startLocalCluster({
    cfg,
    hosts: ['host-a', 'host-b'],
    traceDir: traces.traceDir,
    log: say,
    verbose: values.verbose === true,
    temporalUi: values.ui === true,
    ...(img
      ? { agentArgs: (host: string) => ['--driver', 'qemu', '--qemu-state', path.join(qemuState, host), '--migration-addr', '127.0.0.1', '--guest-kernel', img.kernel, '--guest-initrd', img.initrd] }
      : {}),
  });
  try {
    const connection = await Connection.connect({ address: cluster.address, ...(cfg.temporalAddress ? temporalTlsOption(cfg.temporalTls) : {}) });
    let dashboard: { api: RunningApi; store: AuditStore } | null = null;
    try {
      const client = new Client({ connection, namespace: cfg.namespace });
      if (values.ui === true) {
        // The dashboard on the demo's own API listener, reading the audit trail its controller writes.
        const token = cfg.apiToken ?? randomBytes(16).toString('hex');
        const store = await openAuditStore({ url: cfg.auditUrl, file: cfg.auditDb });
        const api = await startApiServer({ client, store, tokens: loadTokens({ token }), listen: str(values.listen) ?? '127.0.0.1:0', temporalUiUrl: cluster.uiUrl }).catch(async (e: unknown) => {
          await store.close();
          throw e;
        });
        dashboard = { api, store };
        say(`ferry demo: dashboard on ${api.url}/ui/ (log in with the token ${cfg.apiToken ? 'in FERRY_API_TOKEN' : token})`);
      }
      const vm = `demo-${randomUUID().slice(0, 8)}`;
      await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-create-${vm}`,
        args: [{ host: 'host-a', op: 'create', spec: { name: vm, memoryBytes, workload, seed } }],
      });
      say(`ferry demo: booted ${vm} on host-a (${workload}, ${str(values.memory) ?? '256MiB'}, seed ${seed}); migrating to host-b with ${strategy}`);
      // Let the workload run a moment so the guest has a working set when the migration starts.
      await new Promise((r) => setTimeout(r, driver === 'qemu' ? 2000 : 1000));
      const started = await startMigration(client, { vm, source: 'host-a', target: 'host-b', strategy, options, requestedBy: 'ferry demo', reason: 'demo' });
      const handle = resolveHandle(client, `${started.workflowId}/${started.runId}`);
      await watchProgress(handle);
      const report = await reportOf(handle);
      process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : `${reportText(report)}\n`);
      if (dashboard) {
        say(`ferry demo: the cluster and the dashboard stay up: ${dashboard.api.url}/ui/#/migration/${started.workflowId}/${started.runId} (Ctrl-C to stop)`);
        await new Promise<void>((resolve) => onShutdownSignal(() => resolve()));
      }
      return report.outcome === 'completed' ? 0 : 1;
    } finally {
      await dashboard?.api.close();
      await dashboard?.store.close();
      await connection.close();
    }
  } finally {
    await cluster.stop();
    if (img) {
      for (const host of ['host-a', 'host-b']) killQemusUnder(path.join(qemuState, host));
      killQemusUnder(qemuState);
    }
    say(`ferry demo: stopped the controller, the agents${img ? ', the QEMU guests' : ''} and the dev server`);
  }
}
