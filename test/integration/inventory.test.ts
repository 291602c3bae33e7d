import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import { CONTROL_QUEUE } from '../../src/common/names';
import type { InventoryResult } from '../../src/workflows/inventory';
import { maybeRecordHistory } from '../helpers/history';
import { startAgentProcess, startTestController, uniqueHost, type TestController } from '../helpers/cluster';

describe('inventory across real agent processes on the real server', () => {
  let controller: TestController;
  const agents: FerryProcess[] = [];
  const hostA = uniqueHost('inv-a');
  const hostB = uniqueHost('inv-b');

  beforeAll(async () => {
    const [c, a, b] = await Promise.all([
      startTestController(),
      startAgentProcess(hostA, { memoryCapacity: '2GiB' }),
      startAgentProcess(hostB, { memoryCapacity: '3GiB' }),
    ]);
    controller = c;
    agents.push(a, b);
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await controller?.stop();
  });

  it('runs one activity on each agent, each on its own task queue', async () => {
    const workflowId = `inventory-${randomUUID()}`;
    const result = (await controller.client.workflow.execute('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId,
      args: [{ hosts: [hostA, hostB], timeoutMs: 10_000 }],
    })) as InventoryResult;
    await maybeRecordHistory(controller.client, workflowId, 'inventory');
    expect(result.hosts.map((h) => h.host)).toEqual([hostA, hostB]);
    const [a, b] = result.hosts;
    if (!a?.ok || !b?.ok) throw new Error(`inventory failed: ${JSON.stringify(result)}`);
    expect(a.facts.hostId).toBe(hostA);
    expect(b.facts.hostId).toBe(hostB);
    expect(a.facts.memoryCapacityBytes).toBe(2 * 1024 ** 3);
    expect(b.facts.memoryCapacityBytes).toBe(3 * 1024 ** 3);
    // Served by the agent processes, not by this test process.
    expect(a.facts.pid).toBe(agents[0]!.child.pid);
    expect(b.facts.pid).toBe(agents[1]!.child.pid);
    expect(a.facts.pid).not.toBe(process.pid);
  });

  it('a host killed mid-inventory gives a per-host error naming it, within the timeout', async () => {
    const hostC = uniqueHost('inv-c');
    const victim = await startAgentProcess(hostC);
    // Freeze the agent so it cannot answer, start the inventory, then kill it outright.
    victim.kill('SIGSTOP');
    const timeoutMs = 3000;
    const started = Date.now();
    const handle = await controller.client.workflow.start('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `inventory-${randomUUID()}`,
      args: [{ hosts: [hostA, hostC], timeoutMs }],
    });
    await new Promise((r) => setTimeout(r, 500));
    victim.kill('SIGKILL');
    await victim.exited;
    const result = (await handle.result()) as InventoryResult;
    const elapsed = Date.now() - started;
    const [a, c] = result.hosts;
    expect(a?.ok).toBe(true);
    expect(c?.ok).toBe(false);
    if (c && !c.ok) {
      expect(c.error).toContain(hostC);
      expect(c.error).toMatch(/no answer|timed out|timeout/i);
    }
    expect(elapsed).toBeLessThan(timeoutMs + 4000);
  });
});
