/**
 * `ferry server` keeps its state in a SQLite file: a workflow completed before a restart is
 * still listed after it.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { Client, Connection } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { FERRY_BIN } from '../../src/support/processes';
import { freePort } from '../../src/common/dev-server';
import { CONTROL_QUEUE } from '../../src/common/names';
import type { InventoryResult } from '../../src/workflows/inventory';
import { startTestController, tempDir } from '../helpers/cluster';

function startServer(port: number, db: string) {
  const child = spawn(process.execPath, [FERRY_BIN, 'server', '--port', String(port), '--headless', '--db', db], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: path.dirname(db),
  });
  let out = '';
  const ready = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (out.includes('Temporal gRPC')) resolve();
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', onData);
    child.once('exit', (code) => reject(new Error(`ferry server exited ${code}: ${out}`)));
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return { child, ready, exited, output: () => out };
}

describe('ferry server', () => {
  it('keeps completed workflows across a restart', async () => {
    const dir = tempDir('server');
    const db = path.join(dir, 'temporal.db');
    const port = await freePort();
    const address = `127.0.0.1:${port}`;

    const first = startServer(port, db);
    await first.ready;
    expect(first.output()).toContain(`Temporal gRPC ${address}`);
    const controller = await startTestController(address);
    const workflowId = `inventory-${randomUUID()}`;
    // No agent serves this host: the workflow completes with a per-host error.
    const result = (await controller.client.workflow.execute('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId,
      args: [{ hosts: ['nobody-home'], timeoutMs: 500 }],
    })) as InventoryResult;
    expect(result.hosts[0]?.ok).toBe(false);
    await controller.stop();
    first.child.kill('SIGTERM');
    await first.exited;

    const second = startServer(port, db);
    await second.ready;
    const connection = await Connection.connect({ address });
    try {
      const client = new Client({ connection });
      const desc = await client.workflow.getHandle(workflowId).describe();
      expect(desc.status.name).toBe('COMPLETED');
      const listed: string[] = [];
      for await (const wf of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) listed.push(wf.workflowId);
      expect(listed).toEqual([workflowId]);
    } finally {
      await connection.close();
      second.child.kill('SIGTERM');
      await second.exited;
    }
  }, 120_000);
});
