/** Names that scripts, dashboards and the workflows share (CONTRACT.md). */
export const CONTROL_QUEUE = 'ferry-control';

export function hostQueue(hostId: string): string {
  return `ferry-host-${hostId}`;
}

export const HOST_ID_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/i;
export const VM_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/i;

export function migrationWorkflowId(vm: string): string {
  return `migrate-${vm}`;
}
