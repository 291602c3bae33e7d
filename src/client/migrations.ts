/**
 * Starting and finding migrations through the Temporal client: shared by the CLI, the HTTP
 * API and the bench. One migration per VM at a time (workflow id `migrate-<vm>`); a ticket
 * makes a start idempotent.
 */
import { randomUUID } from 'node:crypto';
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client, type WorkflowHandle } from '@temporalio/client';
import { TypedSearchAttributes } from '@temporalio/common';
import type { MigrationOptions } from '../activities/types';
import { UsageError } from '../common/errors';
import { CONTROL_QUEUE, migrationWorkflowId, VM_NAME_RE } from '../common/names';
import { SourceHost, Strategy, TargetHost, TicketId, VmId, Phase } from '../common/search-attributes';
import type { HostFacts } from '../activities/host';
import type { StrategyName } from '../policy/types';
import { defaultStrategyFor, engineMatch } from '../workflows/engine';
import type { InventoryResult } from '../workflows/inventory';
import type { MigrationInput } from '../workflows/migration';
import type { MigrationReport } from '../workflows/report';
import { hostsQuery, REGISTRY_WORKFLOW_ID, type HostRecord } from '../workflows/registry';

export class ConflictError extends Error {
  override readonly name = 'ConflictError';
}
export class NotFoundError extends Error {
  override readonly name = 'NotFoundError';
}

export interface StartRequest {
  vm: string;
  target: string;
  source?: string;
  /** Unset: the source engine's default (pa-hybrid; as-hybrid on QEMU hosts). */
  strategy?: StrategyName;
  options: MigrationOptions;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  /** Who or what asked, for the audit trail (`api:<token name>`, `cli`). */
  via?: string | null;
}

export interface StartResult {
  workflowId: string;
  runId: string;
  /** false: the same ticket had already started this migration. */
  created: boolean;
}

export async function registeredHosts(client: Client): Promise<HostRecord[]> {
  try {
    return await client.workflow.getHandle(REGISTRY_WORKFLOW_ID).query(hostsQuery);
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return [];
    throw e;
  }
}

export async function inventory(client: Client, hosts: string[], timeoutMs = 5000): Promise<InventoryResult> {
  return (await client.workflow.execute('inventoryWorkflow', {
    taskQueue: CONTROL_QUEUE,
    workflowId: `inventory-${randomUUID()}`,
    args: [{ hosts, timeoutMs }],
  })) as InventoryResult;
}

type LiveHosts = { facts: HostFacts[]; errors: string[] };
/** Inventories in flight, per client and timeout: concurrent callers share one (no cache: a settled one is gone). */
const inFlight = new WeakMap<Client, Map<number, Promise<LiveHosts>>>();

/**
 * Facts of every registered host that answers. Callers that ask while an inventory is in
 * flight (a burst of API requests without a source or target) share its answer instead of
 * each asking every agent. Nothing is kept once it settles: a caller's facts are at most one
 * inventory older than its request (and the workflow checks the source's facts itself).
 */
export function liveHosts(client: Client, timeoutMs = 5000): Promise<LiveHosts> {
  let byTimeout = inFlight.get(client);
  if (!byTimeout) inFlight.set(client, (byTimeout = new Map()));
  const pending = byTimeout.get(timeoutMs);
  if (pending) return pending;
  const p = askLiveHosts(client, timeoutMs).finally(() => byTimeout.delete(timeoutMs));
  byTimeout.set(timeoutMs, p);
  return p;
}

async function askLiveHosts(client: Client, timeoutMs: number): Promise<LiveHosts> {
  const hosts = (await registeredHosts(client)).filter((h) => h.up).map((h) => h.hostId);
  if (hosts.length === 0) return { facts: [], errors: [] };
  const inv = await inventory(client, hosts, timeoutMs);
  const facts: HostFacts[] = [];
  const errors: string[] = [];
  for (const h of inv.hosts) {
    if (h.ok) facts.push(h.facts);
    else errors.push(h.error);
  }
  return { facts, errors };
}

export async function locateVm(client: Client, vm: string): Promise<HostFacts> {
  const { facts, errors } = await liveHosts(client);
  const found = facts.find((f) => f.vms.some((v) => v.name === vm && v.state !== 'incoming'));
  if (!found) {
    throw new NotFoundError(
      `vm ${vm} is on no registered host that answered (${facts.map((f) => f.hostId).join(', ') || 'none'})${errors.length ? `; unreachable: ${errors.join('; ')}` : ''}`,
    );
  }
  return found;
}

/** Start a migration; the same ticket again returns the same migration. */
export async function startMigration(client: Client, req: StartRequest): Promise<StartResult> {
  if (!VM_NAME_RE.test(req.vm)) throw new UsageError(`vm: '${req.vm}' is not a valid VM name`);
  const workflowId = migrationWorkflowId(req.vm);
  const ticket = req.ticket ?? null;
  if (ticket) {
    const existing = await findByTicket(client, workflowId, ticket);
    if (existing) return { workflowId, runId: existing, created: false };
  }
  const source = req.source ?? (await locateVm(client, req.vm)).hostId;
  if (source === req.target) throw new UsageError(`vm ${req.vm} is already on ${req.target}`);
  // The workflow chooses the engine from the hosts' own facts and refuses a mismatch; the
  // same rule on the registered facts answers here at once, before a workflow starts.
  const hosts = await registeredHosts(client);
  const src = hosts.find((h) => h.hostId === source);
  const strategy = req.strategy ?? defaultStrategyFor(src?.driver ?? 'emulated');
  const tgt = hosts.find((h) => h.hostId === req.target);
  if (src && tgt) {
    const match = engineMatch(strategy, src, tgt);
    if ('refused' in match) throw new UsageError(match.refused);
  }
  const input: MigrationInput = {
    vm: req.vm,
    source,
    target: req.target,
    strategy,
    options: req.options,
    ticket,
    requestedBy: req.requestedBy ?? null,
    reason: req.reason ?? null,
    ...(req.via ? { audit: { via: req.via } } : {}),
  };
  const attrs = [
    { key: VmId, value: req.vm },
    { key: SourceHost, value: source },
    { key: TargetHost, value: req.target },
    { key: Strategy, value: strategy },
    { key: Phase, value: 'preparing' },
    ...(ticket ? [{ key: TicketId, value: ticket }] : []),
  ];
  try {
    const handle = await client.workflow.start('migrationWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId,
      args: [input],
      typedSearchAttributes: new TypedSearchAttributes(attrs),
      memo: { ticket, requestedBy: req.requestedBy ?? null, reason: req.reason ?? null },
    });
    return { workflowId, runId: handle.firstExecutionRunId, created: true };
  } catch (e) {
    if (e instanceof WorkflowExecutionAlreadyStartedError) {
      if (ticket) {
        const again = await findByTicket(client, workflowId, ticket);
        if (again) return { workflowId, runId: again, created: false };
      }
      const desc = await client.workflow.getHandle(workflowId).describe();
      const other = desc.typedSearchAttributes.get(TicketId);
      throw new ConflictError(`vm ${req.vm} is already migrating (${workflowId}${other ? `, ticket ${other}` : ''})`);
    }
    throw e;
  }
}

export async function findByTicket(client: Client, workflowId: string, ticket: string): Promise<string | null> {
  try {
    const desc = await client.workflow.getHandle(workflowId).describe();
    if (desc.typedSearchAttributes.get(TicketId) === ticket) return desc.runId;
  } catch (e) {
    if (!(e instanceof WorkflowNotFoundError)) throw e;
  }
  // Also a finished run of the same ticket (visibility may lag a moment behind).
  for await (const wf of client.workflow.list({ query: `WorkflowId = '${workflowId}' AND TicketId = '${ticket.replace(/'/g, "\\'")}'` })) {
    return wf.runId;
  }
  return null;
}

/** A migration id, `id/run`, or a VM name (its latest migration). */
export function resolveHandle(client: Client, idOrVm: string): WorkflowHandle {
  const [id, run] = idOrVm.split('/');
  if (!id) throw new UsageError('a migration id or VM name is required');
  const workflowId = id.startsWith('migrate-') ? id : migrationWorkflowId(id);
  return client.workflow.getHandle(workflowId, run);
}

export async function reportOf(handle: WorkflowHandle): Promise<MigrationReport> {
  return (await handle.result()) as MigrationReport;
}
