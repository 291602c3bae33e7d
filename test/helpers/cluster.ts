/**
 * Integration-test fixtures: real agent processes on the shared dev server and an
 * in-process controller worker (a real Temporal worker with the real bundle).
 */
import { runClusterKeyEnv } from '../../src/common/cluster-key';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { inject } from 'vitest';
import { spawnFerry, type FerryProcess } from '../../src/support/processes';
import { CONTROL_QUEUE } from '../../src/common/names';
import { bundleWorkflows } from '../../src/workers/controller';
import { installRuntime } from '../../src/workers/runtime';
import { temporalTlsOption, type TemporalTlsFiles } from '../../src/common/temporal-tls';
import { createAuditActivities } from '../../src/activities/audit';
import { SqliteAuditStore } from '../../src/audit/sqlite';
import type { AuditStore } from '../../src/audit/types';

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflows();
  return bundle;
}

export function temporalAddress(): string {
  return inject('temporalAddress');
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-${prefix}-`));
}

/** A unique host id per test so tests sharing the server never share a task queue. */
export function uniqueHost(name: string): string {
  return `${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

export async function startAgentProcess(
  hostId: string,
  opts: { storageDir?: string; memoryCapacity?: string; address?: string; extraArgs?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<FerryProcess> {
  const args = ['agent', '--host', hostId];
  if (opts.memoryCapacity) args.push('--memory-capacity', opts.memoryCapacity);
  args.push(...(opts.extraArgs ?? []));
  const p = spawnFerry(`agent ${hostId}`, args, {
    env: {
      FERRY_TEMPORAL_ADDRESS: opts.address ?? temporalAddress(),
      FERRY_STORAGE_DIR: opts.storageDir ?? tempDir('storage'),
      // Every agent a test starts holds the run's cluster key, unless the test gives it its own.
      ...runClusterKeyEnv({ ...process.env, ...opts.env }),
      ...opts.env,
    },
  });
  await p.ready;
  return p;
}

/** The audit store every test controller of this run shares (audit activities may run on
 * any controller polling ferry-control). */
let auditStore: SqliteAuditStore | undefined;
// `ferry controller` processes that tests spawn on the shared server write to it too.
process.env.FERRY_AUDIT_DB = inject('auditDb');
export function testAuditStore(): AuditStore {
  auditStore ??= new SqliteAuditStore(inject('auditDb'));
  return auditStore;
}

export interface TestController {
  client: Client;
  worker: Worker;
  stop(): Promise<void>;
}

export async function startTestController(address = temporalAddress(), tls: TemporalTlsFiles | null = null): Promise<TestController> {
  installRuntime();
  const nativeConnection = await NativeConnection.connect({ address, ...temporalTlsOption(tls) });
  const worker = await Worker.create({
    connection: nativeConnection,
    taskQueue: CONTROL_QUEUE,
    workflowBundle: await workflowBundle(),
    activities: createAuditActivities(testAuditStore()),
  });
  const running = worker.run();
  const connection = await Connection.connect({ address, ...temporalTlsOption(tls) });
  const client = new Client({ connection });
  return {
    client,
    worker,
    async stop() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running;
      await nativeConnection.close();
      await connection.close();
    },
  };
}
