import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { CONTROL_QUEUE } from '../../common/names';
import type { InventoryResult } from '../../workflows/inventory';
import { parse } from '../args';
import { commonOptions, configFrom, say } from '../context';
import { startLocalCluster } from '../local';
import { printInventory } from './inventory';

export const help = 'ferry demo [--json] [--verbose]   the main job on the embedded default';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...commonOptions, json: { type: 'boolean' }, verbose: { type: 'boolean' } }, false);
  const cfg = configFrom(values);
  const json = values.json === true;
  const cluster = await startLocalCluster({ cfg, hosts: ['host-a', 'host-b'], log: say, verbose: values.verbose === true });
  try {
    const connection = await Connection.connect({ address: cluster.address });
    try {
      const client = new Client({ connection, namespace: cfg.namespace });
      say('ferry demo: inventory of host-a and host-b through the controller');
      const result = (await client.workflow.execute('inventoryWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `inventory-${randomUUID()}`,
        args: [{ hosts: ['host-a', 'host-b'], timeoutMs: 10_000 }],
      })) as InventoryResult;
      printInventory(result, json);
      return result.hosts.every((h) => h.ok) ? 0 : 1;
    } finally {
      await connection.close();
    }
  } finally {
    await cluster.stop();
    say('ferry demo: stopped the controller, the agents and the dev server');
  }
}
