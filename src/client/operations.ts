/**
 * Operator operations through the Temporal client, shared by the CLI and the HTTP API:
 * evacuations (idempotent per ticket), retrying a failed migration as a new attempt linked
 * to the one it retries, and target-less placement by free memory.
 */
import { randomUUID } from 'node:crypto';
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client, type WorkflowHandle } from '@temporalio/client';
import { TypedSearchAttributes } from '@temporalio/common';
import type { MigrationOptions } from '../activities/types';
import { UsageError } from '../common/errors';
import { CONTROL_QUEUE, HOST_ID_RE } from '../common/names';
import { Phase, SourceHost, Strategy, TargetHost, TicketId, VmId } from '../common/search-attributes';
import { chooseTarget, DEFAULT_LIMITS, PRIORITY, type Limits } from '../policy/placement';
import type { StrategyName } from '../policy/types';
import type { EvacuationInput } from '../workflows/evacuation';
import type { MigrationInput } from '../workflows/migration';
import type { MigrationReport } from '../workflows/report';
import { ConflictError, liveHosts, locateVm, NotFoundError, registeredHosts, resolveHandle } from './migrations';

export interface EvacuationRequest {
  hosts: string[];
  to?: string[] | null;
  limits?: Partial<Limits>;
  strategy?: StrategyName;
  options: MigrationOptions;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  via?: string | null;
  priority?: number;
  maxAttempts?: number;
  retryBaseMs?: number;
  continueAsNewAfter?: number;
}

export interface EvacuationStarted {
  workflowId: string;
  runId: string;
  created: boolean;
  hosts: string[];
  to: string[];
}

export function evacuationWorkflowId(ticket: string | null | undefined, hosts: string[]): string {
  return ticket ? `evacuate-${ticket}` : `evacuate-${hosts.join('+')}-${randomUUID().slice(0, 8)}`;
}

/** Start an evacuation; the same ticket again returns the same evacuation. */
export async function startEvacuation(client: Client, req: EvacuationRequest): Promise<EvacuationStarted> {
  for (const h of [...req.hosts, ...(req.to ?? [])]) if (!HOST_ID_RE.test(h)) throw new UsageError(`hosts: '${h}' is not a valid host id`);
  const workflowId = evacuationWorkflowId(req.ticket, req.hosts);
  if (req.ticket) {
    try {
      const d = await client.workflow.getHandle(workflowId).describe();
      return { workflowId, runId: d.runId, created: false, hosts: req.hosts, to: req.to ?? [] };
    } catch (e) {
      if (!(e instanceof WorkflowNotFoundError)) throw e;
    }
  }
  const to = req.to && req.to.length > 0 ? req.to : (await registeredHosts(client)).filter((h) => h.up && !req.hosts.includes(h.hostId)).map((h) => h.hostId);
  const overlap = to.filter((h) => req.hosts.includes(h));
  if (overlap.length) throw new UsageError(`to: ${overlap.join(', ')} is also being evacuated`);
  if (to.length === 0) throw new UsageError('to: no candidate target host (none registered besides the evacuated ones); name them with --to');
  const input: EvacuationInput = {
    hosts: req.hosts,
    to,
    limits: { ...DEFAULT_LIMITS, ...(req.limits ?? {}) },
    strategy: req.strategy,
    options: req.options,
    ticket: req.ticket ?? null,
    requestedBy: req.requestedBy ?? null,
    reason: req.reason ?? null,
    via: req.via ?? null,
    priority: req.priority ?? PRIORITY.evacuation,
    maxAttempts: req.maxAttempts,
    retryBaseMs: req.retryBaseMs,
    continueAsNewAfter: req.continueAsNewAfter,
  };
  try {
    const h = await client.workflow.start('evacuationWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId,
      args: [input],
      workflowIdReusePolicy: 'REJECT_DUPLICATE',
      ...(req.ticket ? { typedSearchAttributes: new TypedSearchAttributes([{ key: TicketId, value: req.ticket }]) } : {}),
      memo: { ticket: req.ticket ?? null, requestedBy: req.requestedBy ?? null, reason: req.reason ?? null, hosts: req.hosts },
    });
    return { workflowId, runId: h.firstExecutionRunId, created: true, hosts: req.hosts, to };
  } catch (e) {
    if (e instanceof WorkflowExecutionAlreadyStartedError) {
      const d = await client.workflow.getHandle(workflowId).describe();
      return { workflowId, runId: d.runId, created: false, hosts: req.hosts, to };
    }
    throw e;
  }
}

export function evacuationHandle(client: Client, id: string): WorkflowHandle {
  const [wid, run] = id.split('/');
  if (!wid) throw new UsageError('an evacuation id is required');
  return client.workflow.getHandle(wid.startsWith('evacuate-') ? wid : `evacuate-${wid}`, run);
}

/** Pick a target by free memory among live hosts (the API's target-less migrations). */
export async function placeVm(client: Client, vm: string): Promise<{ source: string; target: string; reason: string }> {
  const { facts } = await liveHosts(client);
  const here = facts.find((f) => f.vms.some((v) => v.name === vm && v.state !== 'incoming'));
  if (!here) throw new NotFoundError(`vm ${vm} is on no registered host that answered (${facts.map((f) => f.hostId).join(', ') || 'none'})`);
  const mem = here.vms.find((v) => v.name === vm)!.memoryBytes;
  const c = chooseTarget(
    mem,
    facts.map((f) => ({ hostId: f.hostId, freeBytes: f.memoryFreeBytes })),
    [here.hostId],
  );
  if (!c.target) throw new ConflictError(`no target for ${vm}: ${c.reason}`);
  return { source: here.hostId, target: c.target, reason: c.reason };
}

async function startInputOf(client: Client, handle: WorkflowHandle): Promise<MigrationInput> {
  const history = await handle.fetchHistory();
  const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
  const payload = started?.input?.payloads?.[0];
  if (!payload) throw new Error(`${handle.workflowId}: no start input in its history`);
  return client.options.loadedDataConverter.payloadConverter.fromPayload(payload) as MigrationInput;
}

export interface RetryResult {
  workflowId: string;
  runId: string;
  /** false: this attempt had already been retried; that retry is returned. */
  created: boolean;
  retryOf: string;
}

/**
 * Retry a migration whose attempt failed or rolled back: a new run of `migrate-<vm>` with the
 * same ticket, linked in the audit trail to the attempt it retries. `id` is an attempt id
 * (`migrate-<vm>/<run id>`), a migration id or a VM name (its latest attempt).
 */
export async function retryMigration(
  client: Client,
  id: string,
  req: { requestedBy?: string | null; reason?: string | null; target?: string | null; via?: string | null },
): Promise<RetryResult> {
  const handle = resolveHandle(client, id);
  const desc = await handle.describe();
  const prevId = `${desc.workflowId}/${desc.runId}`;
  const latest = await client.workflow.getHandle(desc.workflowId).describe();
  if (latest.runId !== desc.runId) {
    // A later attempt exists: if it retries this one, this request was already served.
    const later = await startInputOf(client, client.workflow.getHandle(desc.workflowId, latest.runId));
    if (later.audit?.retryOf === prevId) return { workflowId: desc.workflowId, runId: latest.runId, created: false, retryOf: prevId };
    throw new ConflictError(`${prevId} is not the latest attempt of ${desc.workflowId} (latest: ${latest.runId}); retry that one`);
  }
  if (desc.status.name === 'RUNNING') throw new ConflictError(`${prevId} is still running; nothing to retry`);
  let outcome = desc.status.name.toLowerCase();
  if (desc.status.name === 'COMPLETED') {
    const report = (await handle.result()) as MigrationReport;
    outcome = report.outcome;
    if (report.outcome === 'completed') throw new ConflictError(`${prevId} completed (${report.reason}); nothing to retry`);
  }
  const prev = await startInputOf(client, handle);
  const where = await locateVm(client, prev.vm);
  const target = req.target ?? prev.target;
  if (where.hostId === target) throw new ConflictError(`vm ${prev.vm} already runs on ${target}`);
  const input: MigrationInput = {
    ...prev,
    source: where.hostId,
    target,
    requestedBy: req.requestedBy ?? prev.requestedBy ?? null,
    reason: req.reason ?? `retry of ${prevId} (${outcome})`,
    audit: { retryOf: prevId, via: req.via ?? null },
  };
  try {
    const h = await client.workflow.start('migrationWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: desc.workflowId,
      args: [input],
      typedSearchAttributes: new TypedSearchAttributes([
        { key: VmId, value: input.vm },
        { key: SourceHost, value: input.source },
        { key: TargetHost, value: input.target },
        { key: Strategy, value: input.strategy },
        { key: Phase, value: 'preparing' },
        ...(input.ticket ? [{ key: TicketId, value: input.ticket }] : []),
      ]),
      memo: { ticket: input.ticket ?? null, requestedBy: input.requestedBy ?? null, reason: input.reason ?? null, retryOf: prevId },
    });
    return { workflowId: desc.workflowId, runId: h.firstExecutionRunId, created: true, retryOf: prevId };
  } catch (e) {
    if (e instanceof WorkflowExecutionAlreadyStartedError) throw new ConflictError(`vm ${prev.vm} is already migrating again (${desc.workflowId})`);
    throw e;
  }
}
