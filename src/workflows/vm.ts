/**
 * VM lifecycle on one host, through Temporal like everything else (`ferry vm create|destroy`).
 */
import { proxyActivities } from '@temporalio/workflow';
import type { HostActivities, VmCreateInput } from '../activities/host';
import type { VmInfo } from '../hypervisor/driver';
import { hostQueue } from '../common/names';

export type VmCommand =
  | { host: string; op: 'create'; spec: VmCreateInput }
  | { host: string; op: 'attach'; name: string; qmpPath: string; serialPath?: string | null }
  | { host: string; op: 'destroy'; name: string };

export async function vmCommandWorkflow(cmd: VmCommand): Promise<{ vm: VmInfo | null; destroyed?: boolean }> {
  const acts = proxyActivities<HostActivities>({
    taskQueue: hostQueue(cmd.host),
    // A QEMU guest boots (TCG: seconds) before its create returns.
    scheduleToCloseTimeout: '3m',
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: ['InvalidInput', 'NotFound', 'Conflict', 'InsufficientCapacity'] },
  });
  if (cmd.op === 'create') return { vm: await acts.vmCreate(cmd.spec) };
  if (cmd.op === 'attach') return { vm: await acts.vmAttach({ name: cmd.name, qmpPath: cmd.qmpPath, serialPath: cmd.serialPath ?? null }) };
  const r = await acts.vmDestroy(cmd.name);
  return { vm: null, destroyed: r.destroyed };
}
