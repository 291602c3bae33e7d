import { randomUUID } from 'node:crypto';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { onTestFinished } from 'vitest';
import type { MigrationOptions } from '../../src/activities/types';
import { CONTROL_QUEUE, migrationWorkflowId } from '../../src/common/names';
import type { StrategyName } from '../../src/policy/types';
import type { MigrationInput } from '../../src/workflows/migration';
import { progressQuery, type Progress } from '../../src/workflows/messages';
import type { MigrationReport } from '../../src/workflows/report';

export const MiB = 1024 ** 2;

export async function createVm(
  client: Client,
  host: string,
  spec: { name: string; memoryBytes: number; workload: string; seed?: number; rate?: number; vcpus?: number },
): Promise<void> {
  await client.workflow.execute('vmCommandWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: `vm-create-${spec.name}-${randomUUID()}`,
    args: [{ host, op: 'create', spec }],
  });
}

export function defaultOptions(over: Partial<MigrationOptions> = {}): MigrationOptions {
  return {
    bandwidthBytesPerSec: 32 * MiB,
    storageBandwidthBytesPerSec: 1024 * MiB,
    maxDowntimeMs: 300,
    maxIterations: 30,
    pbdata: 'async',
    compression: false,
    zeroElision: true,
    ...over,
  };
}

export async function startMigration(client: Client, input: Omit<MigrationInput, 'options'> & { options?: Partial<MigrationOptions> }) {
  return client.workflow.start('migrationWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: migrationWorkflowId(input.vm),
    args: [{ ...input, options: defaultOptions(input.options) } satisfies MigrationInput],
  });
}

export async function migrate(client: Client, input: Omit<MigrationInput, 'options'> & { options?: Partial<MigrationOptions> }): Promise<MigrationReport> {
  const handle = await startMigration(client, input);
  return (await handle.result()) as MigrationReport;
}

export type { StrategyName };

/** Poll a migration's progress query until `pred` holds (or fail after timeoutMs, showing the last progress). */
export async function untilProgress(handle: WorkflowHandle, pred: (p: Progress) => boolean, timeoutMs = 60_000): Promise<Progress> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await handle.query(progressQuery).catch(() => null);
    if (p && pred(p)) return p;
    if (Date.now() > deadline) throw new Error(`condition not reached; last progress ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Destroy a test's VM once the test is done with it, on whichever of `hosts` it runs (a
 * migrated guest keeps running its workload on the target otherwise, taking CPU from every
 * test after it). Called inside a test: runs when the test finishes, passed or not (a
 * concurrent test passes its own context's onTestFinished).
 */
export function destroyWhenDone(client: Client, vm: string, hosts: string[], onFinished: (fn: () => Promise<void>) => void = onTestFinished): void {
  onFinished(async () => {
    for (const host of hosts) {
      await client.workflow
        .execute('vmCommandWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `vm-destroy-${vm}-${randomUUID()}`, args: [{ host, op: 'destroy', name: vm }] })
        .catch(() => undefined); // not on this host
    }
  });
}
