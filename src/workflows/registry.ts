/**
 * The host registry: agents announce themselves on start (signal-with-start) and say goodbye
 * on shutdown. `ferry migrate`, `ferry vm list` and evacuations ask it which hosts exist;
 * whether a host is alive is asked of the host itself (inventory), not assumed from here.
 */
import { condition, continueAsNew, defineQuery, defineSignal, setHandler, workflowInfo } from '@temporalio/workflow';

export const REGISTRY_WORKFLOW_ID = 'ferry-hosts';

export interface HostRecord {
  hostId: string;
  dataAddress: string;
  memoryCapacityBytes: number;
  driver: string;
  pid: number;
  up: boolean;
  lastSeenAtMs: number;
}

export const hostUpSignal = defineSignal<[Omit<HostRecord, 'up' | 'lastSeenAtMs'>]>('hostUp');
export const hostDownSignal = defineSignal<[{ hostId: string; pid?: number }]>('hostDown');
export const hostsQuery = defineQuery<HostRecord[]>('hosts');

export async function hostRegistryWorkflow(state: { hosts: HostRecord[] } = { hosts: [] }): Promise<never> {
  const hosts = new Map<string, HostRecord>(state.hosts.map((h) => [h.hostId, h]));
  setHandler(hostUpSignal, (h) => {
    hosts.set(h.hostId, { ...h, up: true, lastSeenAtMs: Date.now() });
  });
  setHandler(hostDownSignal, ({ hostId, pid }) => {
    const h = hosts.get(hostId);
    // A restarted agent may say hello before its old process says goodbye.
    if (h && (pid === undefined || h.pid === pid)) hosts.set(hostId, { ...h, up: false, lastSeenAtMs: Date.now() });
  });
  setHandler(hostsQuery, () => [...hosts.values()].sort((a, b) => a.hostId.localeCompare(b.hostId)));
  await condition(() => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > 5000);
  return continueAsNew<typeof hostRegistryWorkflow>({ hosts: [...hosts.values()] });
}
