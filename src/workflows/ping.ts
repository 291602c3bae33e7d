/**
 * A bare round-trip loop: N trivial activities on one host's queue, one after another. The
 * overhead bench compares a migration's gap between iterations with this floor, which is
 * Temporal's own dispatch (workflow task + activity task) on the same server.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { HostActivities } from '../activities/host';
import { hostQueue } from '../common/names';

export async function pingLoopWorkflow(input: { host: string; n: number }): Promise<number[]> {
  const acts = proxyActivities<HostActivities>({ taskQueue: hostQueue(input.host), startToCloseTimeout: '10s', scheduleToCloseTimeout: '30s' });
  const stamps: number[] = [];
  for (let i = 0; i < input.n; i++) stamps.push(await acts.ping());
  return stamps;
}
