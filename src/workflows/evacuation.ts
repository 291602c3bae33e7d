/**
 * EvacuationWorkflow: move every VM off the given hosts (a rack before maintenance).
 *
 *   1. ask every source and candidate host for its facts (VMs, free memory); a host that
 *      does not answer is reported, not guessed at
 *   2. place each VM by free memory (src/policy/placement.ts): never overcommit; a VM that
 *      fits nowhere is reported with the reason
 *   3. queue the placed VMs by priority; start a child migration (`migrate-<vm>`) whenever
 *      the cluster-wide, per-source outbound, per-target inbound and link-budget limits all
 *      leave room
 *   4. a failed or rolled-back attempt is retried with backoff up to maxAttempts, linked to
 *      the attempt it retries in the audit trail; then it is reported
 *   5. queued VMs can be cancelled (update cancelQueued); a large evacuation drains its
 *      running children and continues as new with its JSON-safe state
 *
 * The result is a summary per VM: outcome, attempts, time, strategy, and the timeline of
 * every attempt as the evacuation saw it.
 */
import {
  ApplicationFailure,
  ChildWorkflowFailure,
  ActivityFailure,
  CancellationScope,
  ParentClosePolicy,
  allHandlersFinished,
  condition,
  continueAsNew,
  isCancellation,
  log,
  proxyActivities,
  setHandler,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import type { AuditActivities } from '../activities/audit';
import type { HostActivities, HostFacts } from '../activities/host';
import type { MigrationOptions } from '../activities/types';
import type { AuditEvent } from '../audit/types';
import { CONTROL_QUEUE, hostQueue, migrationWorkflowId } from '../common/names';
import { Phase, SourceHost, Strategy, TargetHost, TicketId, VmId } from '../common/search-attributes';
import { checkLimits, DEFAULT_LIMITS, nextStarts, planPlacement, PRIORITY, retryDecision, retryDelayMs, type Limits } from '../policy/placement';
import { isStrategy, type StrategyName } from '../policy/types';
import {
  cancelQueuedUpdate,
  evacuationQuery,
  type EvacuationItem,
  type EvacuationState,
  type EvacuationSummary,
  type ItemStatus,
  type TimelineEntry,
} from './evacuation-messages';
import { defaultStrategyFor } from './engine';
import type { MigrationInput } from './migration';
import type { MigrationReport } from './report';

export interface EvacuationInput {
  /** Hosts to empty. */
  hosts: string[];
  /** Candidate targets (the client fills in every live host when the operator names none). */
  to: string[];
  limits?: Partial<Limits>;
  strategy?: StrategyName;
  options: MigrationOptions;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  /** Who or what asked (`api:<token>`, `cli`). */
  via?: string | null;
  /** Queue priority of this evacuation's VMs (default PRIORITY.evacuation); per-VM overrides. */
  priority?: number;
  priorities?: Record<string, number>;
  /** Attempts per VM before it is reported as failed (default 3). */
  maxAttempts?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Finished VMs per run before the workflow drains and continues as new (default 100). */
  continueAsNewAfter?: number;
  /** Deadline for a host's facts (ms). */
  factsTimeoutMs?: number;
  /** Carried through continue-as-new. */
  state?: EvacuationState;
}

function bad(m: string): never {
  throw ApplicationFailure.nonRetryable(m, 'InvalidInput');
}

function validate(input: EvacuationInput): Limits {
  if (!input || !Array.isArray(input.hosts) || input.hosts.length === 0) bad('hosts: name at least one host to evacuate');
  if (!Array.isArray(input.to)) bad('to: the candidate target hosts are required');
  if (input.strategy !== undefined && !isStrategy(input.strategy)) bad(`strategy: unknown strategy '${String(input.strategy)}'`);
  if (!input.options) bad('options are required');
  const limits: Limits = { ...DEFAULT_LIMITS, ...(input.limits ?? {}) };
  const problem = checkLimits(limits);
  if (problem) bad(`limits: ${problem}`);
  if (input.maxAttempts !== undefined && !(Number.isSafeInteger(input.maxAttempts) && input.maxAttempts >= 1)) bad('maxAttempts must be a whole number ≥ 1');
  return limits;
}

function messageOf(err: unknown): string {
  let e: unknown = err;
  while (e instanceof ActivityFailure || e instanceof ChildWorkflowFailure) e = e.cause;
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}

const auditActs = proxyActivities<AuditActivities>({
  taskQueue: CONTROL_QUEUE,
  startToCloseTimeout: '10s',
  scheduleToCloseTimeout: '2m',
  retry: { initialInterval: '500ms', maximumInterval: '10s' },
});

async function audit(events: AuditEvent[]): Promise<void> {
  if (events.length === 0) return;
  await CancellationScope.nonCancellable(async () => {
    try {
      await auditActs.auditEvents(events);
    } catch (e) {
      log.warn('audit: evacuation events not written', { error: messageOf(e) });
    }
  });
}

async function factsOf(host: string, timeoutMs: number): Promise<HostFacts | string> {
  const acts = proxyActivities<HostActivities>({
    taskQueue: hostQueue(host),
    scheduleToCloseTimeout: timeoutMs,
    startToCloseTimeout: Math.min(timeoutMs, 10_000),
    retry: { initialInterval: 200, maximumInterval: 1000 },
  });
  try {
    return await acts.hostFacts();
  } catch (e) {
    if (isCancellation(e)) throw e;
    return `host ${host}: no answer from its agent within ${timeoutMs} ms (${messageOf(e)})`;
  }
}

async function plan(input: EvacuationInput, id: string): Promise<EvacuationState> {
  const timeoutMs = input.factsTimeoutMs ?? 10_000;
  const candidatesIn = input.to.filter((h) => !input.hosts.includes(h));
  const hosts = [...new Set([...input.hosts, ...candidatesIn])];
  const answers = await Promise.all(hosts.map(async (h) => [h, await factsOf(h, timeoutMs)] as const));
  const facts: Record<string, HostFacts> = {};
  const unreachable: string[] = [];
  const events: AuditEvent[] = [];
  const now = Date.now();
  const ev = (kind: string, key: string, e: Partial<AuditEvent> & { message: string }): void => {
    events.push({ eventId: `${id}/${kind}/${key}`, atMs: now, kind, ticket: input.ticket ?? null, vm: null, host: null, evacuationId: id, requestedBy: input.requestedBy ?? null, ...e });
  };
  for (const [h, f] of answers) {
    if (typeof f === 'string') {
      unreachable.push(h);
      ev('unreachable', h, { host: h, message: input.hosts.includes(h) ? `${f}; its VMs are not evacuated` : `${f}; not a candidate target` });
    } else facts[h] = f;
  }
  const candidates = candidatesIn.filter((h) => facts[h]).map((h) => ({ hostId: h, freeBytes: facts[h]!.memoryFreeBytes }));
  const vms = input.hosts.flatMap((h) =>
    (facts[h]?.vms ?? []).filter((v) => v.state !== 'incoming').map((v) => ({ vm: v.name, source: h, memoryBytes: v.memoryBytes })),
  );
  const p = planPlacement(vms, candidates);
  // Unchosen, each VM gets its engine's default (QEMU hosts have no static snapshot).
  const strategyOf = (source: string): StrategyName => input.strategy ?? defaultStrategyFor(facts[source]?.driver ?? 'emulated');
  const prio = (vm: string): number => input.priorities?.[vm] ?? input.priority ?? PRIORITY.evacuation;
  const items: EvacuationItem[] = [];
  // Queue order: the placement order (largest first), which also breaks priority ties.
  let seq = 0;
  for (const pl of p.placements) {
    items.push({
      vm: pl.vm,
      source: pl.source,
      target: pl.target,
      memoryBytes: pl.memoryBytes,
      priority: prio(pl.vm),
      seq: seq++,
      status: 'queued',
      attempts: 0,
      reason: pl.reason,
      placement: pl.reason,
      strategy: strategyOf(pl.source),
      attemptIds: [],
      notBeforeMs: 0,
      timeMs: 0,
      bandwidthBytesPerSec: input.options.bandwidthBytesPerSec,
    });
    ev('placed', pl.vm, { vm: pl.vm, host: pl.source, message: `${pl.vm}: ${pl.source} → ${pl.target}, ${pl.reason}` });
  }
  for (const u of p.unplaced) {
    items.push({
      vm: u.vm,
      source: u.source,
      target: null,
      memoryBytes: u.memoryBytes,
      priority: prio(u.vm),
      seq: seq++,
      status: 'not-placed',
      attempts: 0,
      reason: u.reason,
      placement: null,
      strategy: strategyOf(u.source),
      attemptIds: [],
      notBeforeMs: 0,
      timeMs: 0,
      bandwidthBytesPerSec: 0,
    });
    ev('not-placed', u.vm, { vm: u.vm, host: u.source, message: u.reason });
  }
  for (const h of input.hosts.filter((x) => unreachable.includes(x))) {
    items.push({
      vm: `(unknown VMs of ${h})`,
      source: h,
      target: null,
      memoryBytes: 0,
      priority: 0,
      seq: seq++,
      status: 'unreachable',
      attempts: 0,
      reason: `host ${h} did not answer: its VMs are unknown and were not evacuated`,
      placement: null,
      strategy: strategyOf(h),
      attemptIds: [],
      notBeforeMs: 0,
      timeMs: 0,
      bandwidthBytesPerSec: 0,
    });
  }
  await audit(events);
  return { id, startedAtMs: now, items, timeline: [], unreachable, candidates, run: 1 };
}

export async function evacuationWorkflow(input: EvacuationInput): Promise<EvacuationSummary> {
  const limits = validate(input);
  const id = workflowInfo().workflowId;
  // Handlers answer from the start; while planning the state has no items yet.
  const st: EvacuationState = input.state
    ? { ...input.state, run: input.state.run + 1 }
    : { id, startedAtMs: Date.now(), items: [], timeline: [], unreachable: [], candidates: [], run: 1 };
  const maxAttempts = input.maxAttempts ?? 3;
  const retryBase = input.retryBaseMs ?? 5000;
  const retryMax = input.retryMaxMs ?? 60_000;
  const canAfter = input.continueAsNewAfter ?? 100;
  let changed = true;
  let finishedThisRun = 0;
  let cancelledAll = false;
  const running = new Map<string, EvacuationItem>();

  const summary = (done: boolean): EvacuationSummary => {
    const counts: Record<string, number> = {};
    for (const it of st.items) counts[it.status] = (counts[it.status] ?? 0) + 1;
    const endedAt = done ? Date.now() : null;
    const failed = st.items.some((it) => it.status !== 'completed');
    return {
      id,
      hosts: input.hosts,
      targets: st.candidates.map((c) => c.hostId),
      ticket: input.ticket ?? null,
      requestedBy: input.requestedBy ?? null,
      status: !done ? 'running' : cancelledAll ? 'cancelled' : failed ? 'partial' : 'completed',
      limits,
      startedAt: new Date(st.startedAtMs).toISOString(),
      endedAt: endedAt === null ? null : new Date(endedAt).toISOString(),
      totalTimeMs: (endedAt ?? Date.now()) - st.startedAtMs,
      counts,
      vms: st.items.map((it) => ({
        vm: it.vm,
        source: it.source,
        target: it.target,
        outcome: it.status,
        attempts: it.attempts,
        timeMs: it.timeMs,
        strategy: it.strategy,
        reason: it.reason,
        attemptIds: it.attemptIds,
      })),
      unreachable: st.unreachable,
      timeline: st.timeline,
      runs: st.run,
    };
  };

  setHandler(evacuationQuery, () => summary(false));
  setHandler(
    cancelQueuedUpdate,
    async (req) => {
      const cancelled: string[] = [];
      const notQueued: { vm: string; status: ItemStatus }[] = [];
      const wanted = req.vms ?? st.items.filter((it) => it.status === 'queued').map((it) => it.vm);
      if (!req.vms) cancelledAll = true;
      for (const vm of wanted) {
        const it = st.items.find((x) => x.vm === vm);
        if (!it) continue;
        if (it.status !== 'queued') {
          notQueued.push({ vm, status: it.status });
          continue;
        }
        it.status = 'cancelled';
        it.reason = `cancelled while queued by ${req.by ?? 'operator'}${req.reason ? ` (${req.reason})` : ''}`;
        cancelled.push(vm);
      }
      changed = true;
      const now = Date.now();
      await audit(
        cancelled.map((vm) => ({
          eventId: `${id}/cancelled/${vm}`,
          atMs: now,
          kind: 'cancelled',
          ticket: input.ticket ?? null,
          vm,
          host: st.items.find((x) => x.vm === vm)?.source ?? null,
          evacuationId: id,
          requestedBy: req.by ?? null,
          message: `${vm}: cancelled while queued by ${req.by ?? 'operator'}${req.reason ? ` (${req.reason})` : ''}`,
        })),
      );
      return { cancelled, notQueued };
    },
    {
      validator: (req) => {
        if (req.vms !== undefined && !Array.isArray(req.vms)) throw new Error('vms must be a list of VM names');
        for (const vm of req.vms ?? []) if (!st.items.some((it) => it.vm === vm)) throw new Error(`vm ${vm} is not part of evacuation ${id}`);
      },
    },
  );

  const finish = (it: EvacuationItem, entry: TimelineEntry, outcome: string, reason: string): void => {
    const now = Date.now();
    entry.endMs = now;
    entry.outcome = outcome;
    it.timeMs += now - entry.startMs;
    running.delete(it.vm);
    finishedThisRun++;
    changed = true;
    const r = retryDecision(it.attempts, maxAttempts, outcome);
    if (outcome === 'completed') {
      it.status = 'completed';
      it.reason = reason;
    } else if (r.retry && !cancelledAll) {
      it.status = 'queued';
      const delay = retryDelayMs(it.attempts, retryBase, retryMax);
      it.notBeforeMs = now + delay;
      it.reason = `${r.reason} in ${delay} ms: ${reason}`;
    } else {
      it.status = outcome === 'rolled-back' ? 'rolled-back' : 'failed';
      it.reason = `${r.retry ? 'not retried (evacuation cancelled)' : r.reason}: ${reason}`;
    }
  };

  const launch = async (it: EvacuationItem, bandwidth: number, why: string): Promise<void> => {
    const target = it.target!;
    it.status = 'running';
    it.attempts += 1;
    it.reason = why;
    running.set(it.vm, it);
    const entry: TimelineEntry = { vm: it.vm, attempt: it.attempts, attemptId: null, source: it.source, target, startMs: Date.now(), endMs: null, outcome: null };
    st.timeline.push(entry);
    const retryOf = it.attemptIds[it.attemptIds.length - 1] ?? null;
    const child: MigrationInput = {
      vm: it.vm,
      source: it.source,
      target,
      strategy: it.strategy as StrategyName,
      options: { ...input.options, bandwidthBytesPerSec: bandwidth },
      ticket: input.ticket ?? null,
      requestedBy: input.requestedBy ?? null,
      reason: `evacuation ${id} of ${input.hosts.join(', ')}${input.reason ? `: ${input.reason}` : ''}; ${it.placement ?? ''}`,
      audit: { attempt: it.attempts, retryOf, evacuationId: id, via: input.via ? `${input.via} evacuation:${id}` : `evacuation:${id}` },
    };
    try {
      const handle = await startChild('migrationWorkflow', {
        workflowId: migrationWorkflowId(it.vm),
        taskQueue: CONTROL_QUEUE,
        args: [child],
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
        typedSearchAttributes: [
          { key: VmId, value: it.vm },
          { key: SourceHost, value: it.source },
          { key: TargetHost, value: target },
          { key: Strategy, value: it.strategy },
          { key: Phase, value: 'preparing' },
          ...(input.ticket ? [{ key: TicketId, value: input.ticket }] : []),
        ],
        memo: { ticket: input.ticket ?? null, requestedBy: input.requestedBy ?? null, reason: child.reason, evacuation: id },
      });
      const attemptId = `${handle.workflowId}/${handle.firstExecutionRunId}`;
      entry.attemptId = attemptId;
      it.attemptIds.push(attemptId);
      void handle.result().then(
        (report: MigrationReport) => finish(it, entry, report.outcome, report.reason),
        (err: unknown) => finish(it, entry, 'failed', messageOf(err)),
      );
    } catch (err) {
      if (isCancellation(err)) throw err;
      // e.g. the VM is already migrating under another request: retried after backoff.
      finish(it, entry, 'failed', `could not start: ${messageOf(err)}`);
    }
  };

  const queued = (): EvacuationItem[] => st.items.filter((it) => it.status === 'queued');
  try {
    if (!input.state) {
      const planned = await plan(input, id);
      // Cancels that arrived while planning apply to everything planned.
      if (cancelledAll) {
        for (const it of planned.items) {
          if (it.status !== 'queued') continue;
          it.status = 'cancelled';
          it.reason = 'cancelled while queued: the queue was cancelled during planning';
        }
      }
      Object.assign(st, planned);
    }
    for (;;) {
      const q = queued();
      if (q.length === 0 && running.size === 0) break;
      const drain = finishedThisRun >= canAfter || workflowInfo().continueAsNewSuggested;
      if (drain && running.size === 0) {
        await condition(allHandlersFinished);
        return await continueAsNew<typeof evacuationWorkflow>({ ...input, state: st });
      }
      changed = false;
      let wakeAt: number | null = null;
      if (!drain) {
        const now = Date.now();
        const d = nextStarts(
          q.map((it) => ({ vm: it.vm, source: it.source, target: it.target!, priority: it.priority, seq: it.seq, bandwidthBytesPerSec: it.bandwidthBytesPerSec, notBeforeMs: it.notBeforeMs })),
          [...running.values()].map((it) => ({ vm: it.vm, source: it.source, target: it.target!, bandwidthBytesPerSec: it.bandwidthBytesPerSec })),
          limits,
          now,
        );
        for (const w of d.wait) {
          const it = st.items.find((x) => x.vm === w.vm);
          if (it && it.attempts === 0) it.reason = `queued: ${w.reason}`;
        }
        for (const s of d.start) {
          const it = st.items.find((x) => x.vm === s.vm)!;
          await launch(it, s.bandwidthBytesPerSec, s.reason);
        }
        wakeAt = d.nextWakeMs;
        if (d.start.length > 0) continue;
      }
      if (wakeAt !== null) await condition(() => changed, Math.max(1, wakeAt - Date.now()));
      else await condition(() => changed);
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // The evacuation itself was cancelled: nothing new starts; running children were asked
    // to cancel (they roll back before their switch, finish after it). Wait for them.
    cancelledAll = true;
    for (const it of queued()) {
      it.status = 'cancelled';
      it.reason = 'cancelled while queued: the evacuation was cancelled';
    }
    await CancellationScope.nonCancellable(() => condition(() => running.size === 0));
  }
  const result = summary(true);
  await audit([
    {
      eventId: `${id}/ended`,
      atMs: Date.now(),
      kind: 'evacuation-ended',
      ticket: input.ticket ?? null,
      vm: null,
      host: input.hosts.join(','),
      evacuationId: id,
      requestedBy: input.requestedBy ?? null,
      message: `evacuation of ${input.hosts.join(', ')} ${result.status}: ${Object.entries(result.counts)
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')}`,
    },
  ]);
  await condition(allHandlersFinished);
  return result;
}
