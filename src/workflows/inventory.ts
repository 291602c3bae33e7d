/**
 * Inventory: ask each host agent, on its own task queue, for its facts. A host whose agent
 * is gone has no poller on its queue; `scheduleToCloseTimeout` turns that into a per-host
 * error naming the host instead of a hang.
 */
import { proxyActivities, ActivityFailure, ApplicationFailure } from '@temporalio/workflow';
import type { HostActivities, HostFacts } from '../activities/host';
import { hostQueue } from '../common/names';

export interface InventoryInput {
  hosts: string[];
  /** Per-host deadline for an answer. */
  timeoutMs?: number;
}

export type HostResult =
  | { host: string; ok: true; facts: HostFacts }
  | { host: string; ok: false; error: string };

export interface InventoryResult {
  hosts: HostResult[];
}

function hostActivities(host: string, timeoutMs: number) {
  return proxyActivities<HostActivities>({
    taskQueue: hostQueue(host),
    scheduleToCloseTimeout: timeoutMs,
    startToCloseTimeout: Math.min(timeoutMs, 10_000),
    retry: { initialInterval: 200, maximumInterval: 1000, backoffCoefficient: 2 },
  });
}

export async function inventoryWorkflow(input: InventoryInput): Promise<InventoryResult> {
  if (!Array.isArray(input.hosts) || input.hosts.length === 0) {
    throw ApplicationFailure.nonRetryable('inventory needs at least one host', 'InvalidInput');
  }
  const timeoutMs = input.timeoutMs ?? 10_000;
  const results = await Promise.all(
    input.hosts.map(async (host): Promise<HostResult> => {
      try {
        const facts = await hostActivities(host, timeoutMs).hostFacts();
        return { host, ok: true, facts };
      } catch (err) {
        return { host, ok: false, error: describeHostFailure(host, err, timeoutMs) };
      }
    }),
  );
  return { hosts: results };
}

export function describeHostFailure(host: string, err: unknown, timeoutMs: number): string {
  if (err instanceof ActivityFailure) {
    const cause = err.cause;
    const timedOut = cause?.name === 'TimeoutFailure';
    if (timedOut) return `host ${host}: no answer from its agent within ${timeoutMs} ms (agent down or unreachable)`;
    return `host ${host}: ${cause?.message ?? err.message}`;
  }
  return `host ${host}: ${(err as Error)?.message ?? String(err)}`;
}
