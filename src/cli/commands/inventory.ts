import { randomUUID } from 'node:crypto';
import { UsageError } from '../../common/errors';
import { CONTROL_QUEUE, HOST_ID_RE } from '../../common/names';
import type { InventoryResult } from '../../workflows/inventory';
import { formatBytes } from '../../common/units';
import { int, parse } from '../args';
import { commonOptions, configFrom, connectClient } from '../context';

export const help = 'ferry inventory <host…> [--timeout-ms N] [--json]   ask host agents for their facts';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...commonOptions, 'timeout-ms': { type: 'string' }, json: { type: 'boolean' } });
  const cfg = configFrom(values);
  if (positionals.length === 0) throw new UsageError('inventory: name at least one host');
  for (const h of positionals) if (!HOST_ID_RE.test(h)) throw new UsageError(`inventory: '${h}' is not a valid host id`);
  const timeoutMs = int(values['timeout-ms'], 'timeout-ms', 100, 600_000) ?? 10_000;
  const { client, close } = await connectClient(cfg);
  try {
    const result = await client.workflow.execute('inventoryWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `inventory-${randomUUID()}`,
      args: [{ hosts: positionals, timeoutMs }],
    });
    printInventory(result as InventoryResult, values.json === true);
    return (result as InventoryResult).hosts.every((h) => h.ok) ? 0 : 1;
  } finally {
    await close();
  }
}

export function printInventory(result: InventoryResult, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  for (const h of result.hosts) {
    if (h.ok) {
      const f = h.facts;
      process.stdout.write(
        `${h.host}: ${f.driver}, ${formatBytes(f.memoryFreeBytes)} free of ${formatBytes(f.memoryCapacityBytes)}, ` +
          `${f.vms.length} VM(s)${f.vms.length ? ` [${f.vms.map((v) => `${v.name} ${formatBytes(v.memoryBytes)} ${v.state}`).join(', ')}]` : ''}, data ${f.dataAddress}\n`,
      );
    } else {
      process.stdout.write(`${h.host}: ERROR ${h.error}\n`);
    }
  }
}
