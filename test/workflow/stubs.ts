/**
 * Workflow tests with stubbed activities: the real migration workflow (the real bundle) on
 * the suite's dev server, with two in-process "host agents" that serve every host, emulated
 * and QEMU activity as a stub. A stub records each call (host, name, input, attempt) and
 * answers a plausible result; a test overrides any activity to fail, hang, wait for a gate or
 * answer something else. No agents, no QEMU, no data plane.
 *
 * One harness per test file (one workflow worker with the bundle, on a queue of its own, and
 * an audit worker on ferry-control); one StubCluster per test (two host workers on
 * `ferry-host-<unique id>` queues).
 */
import { Context } from '@temporalio/activity';
import { Client, Connection, WorkflowFailedError, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createAuditActivities } from '../../src/activities/audit';
import type { MigrationOptions } from '../../src/activities/types';
import { CONTROL_QUEUE, hostQueue } from '../../src/common/names';
import type { StrategyName } from '../../src/policy/types';
import { installRuntime } from '../../src/workers/runtime';
import type { MigrationInput } from '../../src/workflows/migration';
import { progressQuery, type Progress } from '../../src/workflows/messages';
import type { MigrationReport } from '../../src/workflows/report';
import { temporalAddress, testAuditStore, uniqueHost, workflowBundle } from '../helpers/cluster';

export type Driver = 'emulated' | 'qemu';
export type Side = 'source' | 'target';

export const PAGE = 4096;
export const PAGES = 4096; // a 16 MiB guest
export const MiB = 1024 ** 2;

export interface Call {
  seq: number;
  side: Side;
  host: string;
  name: string;
  input: Record<string, unknown>;
  attempt: number;
}

/** What a stub is told about the call it serves; `answer()` is the default result. */
export interface CallCtx {
  side: Side;
  host: string;
  attempt: number;
  /** How many times this activity was called on this host before, over all attempts. */
  nth: number;
  answer(): Promise<unknown>;
}

export type Handler = (input: Record<string, unknown>, c: CallCtx) => Promise<unknown> | unknown;

/** One pre-copy round as a stub answers it. */
export interface Round {
  pages: number;
  dirtyAfter: number;
  durationMs?: number;
  bytes?: number;
  /** The dirty set's growth during the round, [ms, pages] (emulated). */
  growth?: number[][];
}
export type Rounds = (index: number) => Round;

/** Rounds that drain: 4096 pages, then 300, then nothing dirty (stop-and-copy at decision 3). */
export const converging: Rounds = (i) => (i === 1 ? { pages: PAGES, dirtyAfter: 300 } : i === 2 ? { pages: 300, dirtyAfter: 0 } : { pages: 0, dirtyAfter: 0 });
/** Rounds that dirty twice what they send: λ = 2 from round 2 (as-hybrid switches at decision 4). */
export const diverging: Rounds = (i) => (i === 1 ? { pages: PAGES, dirtyAfter: 1000 } : { pages: 1000, dirtyAfter: 2000 });
/** Rounds that shrink a little (λ = 0.9) and never fit a 1 ms downtime: under the paper's rule nothing but the valve ends them; ferry's rule calls them a plateau. */
export const steady: Rounds = (i) => (i === 1 ? { pages: PAGES, dirtyAfter: 1000 } : { pages: 1000, dirtyAfter: 900 });

export const EMULATED_ACTIVITIES = [
  'describeVm',
  'prepareTarget',
  'prepareSource',
  'saveStatic',
  'mergeStatic',
  'runIteration',
  'stopAndCopy',
  'resumeTarget',
  'switchToPostcopy',
  'writePbData',
  'pushPostcopy',
  'drainPostcopy',
  'verifyTarget',
  'releaseSource',
  'rollbackSource',
  'abortTarget',
  'cleanupStorage',
  'setBandwidth',
] as const;

export const QEMU_ACTIVITIES = [
  'qemuDescribe',
  'qemuPrepareTarget',
  'qemuStart',
  'qemuAwaitPass',
  'qemuStopAndCopy',
  'qemuSwitchToPostcopy',
  'qemuAwaitCompletion',
  'qemuPause',
  'qemuRecoverTarget',
  'qemuResume',
  'qemuVerifyTarget',
  'qemuRelease',
  'qemuRollback',
  'qemuAbortTarget',
  'qemuSetBandwidth',
  'qemuSaveStatic',
  'qemuMergeStatic',
  'qemuRemoveStatic',
  'qemuSwitchWhenMerged',
  'qemuIncomingStatus',
] as const;

/** The same step under each engine's activity name. */
export const STEP = {
  emulated: {
    describe: 'describeVm',
    prepareTarget: 'prepareTarget',
    prepareSource: 'prepareSource',
    round: 'runIteration',
    stopAndCopy: 'stopAndCopy',
    switch: 'switchToPostcopy',
    verify: 'verifyTarget',
    release: 'releaseSource',
    rollback: 'rollbackSource',
    abort: 'abortTarget',
    setBandwidth: 'setBandwidth',
    postcopy: 'drainPostcopy',
  },
  qemu: {
    describe: 'qemuDescribe',
    prepareTarget: 'qemuPrepareTarget',
    prepareSource: 'qemuStart',
    round: 'qemuAwaitPass',
    stopAndCopy: 'qemuStopAndCopy',
    switch: 'qemuSwitchToPostcopy',
    verify: 'qemuVerifyTarget',
    release: 'qemuRelease',
    rollback: 'qemuRollback',
    abort: 'qemuAbortTarget',
    setBandwidth: 'qemuSetBandwidth',
    postcopy: 'qemuAwaitCompletion',
  },
} as const satisfies Record<Driver, Record<string, string>>;

export function options(over: Partial<MigrationOptions> = {}): MigrationOptions {
  return {
    bandwidthBytesPerSec: 32 * MiB,
    storageBandwidthBytesPerSec: 1024 * MiB,
    // Tiny: only "no dirty page left", the λ test, the valve or an operator ends pre-copy.
    maxDowntimeMs: 1,
    maxIterations: 10,
    pbdata: 'async',
    compression: false,
    zeroElision: true,
    ...over,
  };
}

// ---- failing, hanging, waiting -------------------------------------------------------------

export function nonRetryable(message: string, type = 'StubFailure'): never {
  throw ApplicationFailure.nonRetryable(message, type);
}

export function retryable(message: string): never {
  throw new Error(message);
}

/** Heartbeat until the activity is cancelled (or its cluster stops); never answers. */
export async function hang(until: Promise<void> = new Promise(() => undefined)): Promise<never> {
  const ctx = Context.current();
  const beat = setInterval(() => ctx.heartbeat(), 50);
  try {
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(ctx.cancellationSignal.reason ?? new Error('cancelled'));
      if (ctx.cancellationSignal.aborted) onAbort();
      ctx.cancellationSignal.addEventListener('abort', onAbort, { once: true });
      void until.then(resolve);
    });
  } finally {
    clearInterval(beat);
  }
  throw new Error('released by the test harness');
}

/** A gate a stub waits at (heartbeating, cancellable) until the test opens it. */
export class Gate {
  private openIt!: () => void;
  private enteredIt!: () => void;
  readonly opened = new Promise<void>((r) => (this.openIt = r));
  /** Resolves when a stub first waits at the gate. */
  readonly entered = new Promise<void>((r) => (this.enteredIt = r));
  /** The activity waiting at the gate was cancelled (by the workflow, or when the workflow closed). */
  cancelled = false;

  open(): void {
    this.openIt();
  }

  async wait(): Promise<void> {
    this.enteredIt();
    const ctx = Context.current();
    const beat = setInterval(() => ctx.heartbeat(), 50);
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          this.cancelled = true;
          reject(ctx.cancellationSignal.reason ?? new Error('cancelled'));
        };
        if (ctx.cancellationSignal.aborted) onAbort();
        ctx.cancellationSignal.addEventListener('abort', onAbort, { once: true });
        void this.opened.then(resolve);
      });
    } finally {
      clearInterval(beat);
    }
  }
}

// ---- the harness (one per test file) -------------------------------------------------------

export interface Harness {
  client: Client;
  connection: NativeConnection;
  workflowQueue: string;
  /** Audit calls this file's audit worker served (it may also serve other files' calls). */
  auditCalls: { name: string; attemptId: string }[];
  stop(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  // Stub failures are the point of these tests: the SDK's warnings about them are noise.
  installRuntime('ERROR');
  const address = temporalAddress();
  const connection = await NativeConnection.connect({ address });
  const workflowQueue = `ferry-workflow-test-${uniqueHost('wf')}`;
  const workflowWorker = await Worker.create({ connection, taskQueue: workflowQueue, workflowBundle: await workflowBundle() });
  // The audit activities live on ferry-control, which the suite's test controllers also poll:
  // the stubs record the call and still write to the run's audit store, so a record taken
  // from another test file's migration is not lost to it.
  const auditCalls: Harness['auditCalls'] = [];
  const real = createAuditActivities(testAuditStore());
  const auditWorker = await Worker.create({
    connection,
    taskQueue: CONTROL_QUEUE,
    activities: {
      async auditAttemptStarted(a: Parameters<typeof real.auditAttemptStarted>[0]) {
        auditCalls.push({ name: 'auditAttemptStarted', attemptId: a.attemptId });
        return real.auditAttemptStarted(a);
      },
      async auditAttemptEnded(a: Parameters<typeof real.auditAttemptEnded>[0]) {
        auditCalls.push({ name: 'auditAttemptEnded', attemptId: a.start.attemptId });
        return real.auditAttemptEnded(a);
      },
      auditEvents: real.auditEvents,
    },
  });
  const runs = [workflowWorker.run(), auditWorker.run()];
  const clientConnection = await Connection.connect({ address });
  const client = new Client({ connection: clientConnection });
  return {
    client,
    connection,
    workflowQueue,
    auditCalls,
    async stop() {
      for (const w of [workflowWorker, auditWorker]) if (w.getState() === 'RUNNING') w.shutdown();
      await Promise.all(runs);
      await clientConnection.close();
      await connection.close();
    },
  };
}

// ---- two stub hosts (one pair per test) ----------------------------------------------------

export interface ClusterSpec {
  source?: Driver;
  target?: Driver;
  vm?: string;
  /** VMs the source's hostFacts lists (default: the migrated VM, running). */
  sourceVms?: string[];
  rounds?: Rounds;
}

/** Two stub hosts for one test: started, handed to `fn`, stopped (and their workflow ended) after. */
export async function withCluster(h: Harness, spec: ClusterSpec, fn: (c: StubCluster) => Promise<void>): Promise<void> {
  const c = await new StubCluster(h, spec).start();
  try {
    await fn(c);
  } finally {
    await c.stop();
  }
}

export class StubCluster {
  readonly source: string;
  readonly target: string;
  readonly vm: string;
  readonly calls: Call[] = [];
  rounds: Rounds;
  private readonly overrides = new Map<string, Handler>();
  private readonly workers: Worker[] = [];
  private runs: Promise<void>[] = [];
  private readonly handles: WorkflowHandle[] = [];
  private stopping!: () => void;
  private readonly stopped = new Promise<void>((r) => (this.stopping = r));
  /** Opened when a qemuMergeStatic stub returns: the target's word an armed source waits for. */
  private readonly merged = new Gate();

  constructor(
    private readonly h: Harness,
    private readonly spec: ClusterSpec = {},
  ) {
    this.source = uniqueHost('src');
    this.target = uniqueHost('tgt');
    this.vm = spec.vm ?? `vm-${Math.random().toString(36).slice(2, 8)}`;
    this.rounds = spec.rounds ?? converging;
  }

  /** Answer `name` with `handler` from now on (on both hosts; `c.side` says which). */
  on(name: string, handler: Handler): this {
    this.overrides.set(name, handler);
    return this;
  }

  /** Make `name` fail on its every call: a non-retryable ApplicationFailure, or a retryable Error. */
  fail(name: string, how: 'nonRetryable' | 'retryable' = 'nonRetryable', message = `${name} failed (stub)`): this {
    return this.on(name, () => (how === 'nonRetryable' ? nonRetryable(message) : retryable(message)));
  }

  /** Make `name` hang (heartbeating) until cancelled or the cluster stops. */
  hang(name: string): this {
    return this.on(name, () => hang(this.stopped));
  }

  /** A gate for a stub to wait at; opened at the latest when the cluster stops. */
  gate(): Gate {
    const g = new Gate();
    void this.stopped.then(() => g.open());
    return g;
  }

  /** Hold the `nth` call (0-based) of `name` at a gate, then answer it by default. */
  holdAt(name: string, nth = 0): Gate {
    const g = this.gate();
    this.on(name, async (_input, c) => {
      if (c.nth === nth) await g.wait();
      return c.answer();
    });
    return g;
  }

  async start(): Promise<this> {
    for (const side of ['source', 'target'] as const) {
      const host = side === 'source' ? this.source : this.target;
      const w = await Worker.create({
        connection: this.h.connection,
        taskQueue: hostQueue(host),
        activities: this.activitiesFor(side, host),
        // Heartbeats (and so cancellations) reach the server at once: a cancelled stub ends fast.
        maxHeartbeatThrottleInterval: '50ms',
        defaultHeartbeatThrottleInterval: '50ms',
      });
      this.workers.push(w);
    }
    this.runs = this.workers.map((w) => w.run());
    return this;
  }

  async stop(): Promise<void> {
    // A workflow a failed test left running: end it, so nothing waits for these hosts.
    await Promise.all(this.handles.map((h) => h.terminate('test over').catch(() => undefined)));
    this.stopping();
    this.merged.open();
    for (const w of this.workers) if (w.getState() === 'RUNNING') w.shutdown();
    await Promise.all(this.runs);
  }

  /** Start the migration workflow of this cluster's VM from source to target. */
  async migrate(strategy: StrategyName, over: Partial<MigrationOptions> = {}, extra: Partial<MigrationInput> = {}): Promise<WorkflowHandle> {
    const input: MigrationInput = { vm: this.vm, source: this.source, target: this.target, strategy, options: options(over), requestedBy: 'test', ...extra };
    const handle = await this.h.client.workflow.start('migrationWorkflow', {
      taskQueue: this.h.workflowQueue,
      workflowId: `migrate-${this.vm}-${this.source}`,
      args: [input],
      workflowExecutionTimeout: '2m',
    });
    this.handles.push(handle);
    return handle;
  }

  // ---- what the stubs saw ---------------------------------------------------------------

  /** Activity names in call order (attempts included), without hostFacts. */
  names(): string[] {
    return this.calls.filter((c) => c.name !== 'hostFacts').map((c) => c.name);
  }

  /** Each activity once, in the order of its first call, without hostFacts. */
  steps(): string[] {
    return [...new Set(this.names())];
  }

  called(name: string, side?: Side): Call[] {
    return this.calls.filter((c) => c.name === name && (!side || c.side === side));
  }

  /** Call-order index of the first call of `name` (-1 if never called). */
  indexOf(name: string): number {
    return this.names().indexOf(name);
  }

  async until(pred: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`not reached: ${what}; calls so far: ${this.names().join(', ')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  // ---- the stubs --------------------------------------------------------------------------

  private activitiesFor(side: Side, host: string): Record<string, (input: Record<string, unknown>) => Promise<unknown>> {
    const acts: Record<string, (input: Record<string, unknown>) => Promise<unknown>> = {};
    const counts = new Map<string, number>();
    for (const name of ['hostFacts', ...EMULATED_ACTIVITIES, ...QEMU_ACTIVITIES]) {
      acts[name] = async (input: Record<string, unknown>) => {
        const attempt = Context.current().info.attempt;
        this.calls.push({ seq: this.calls.length, side, host, name, input: input ?? {}, attempt });
        const nth = counts.get(name) ?? 0;
        counts.set(name, nth + 1);
        const c: CallCtx = { side, host, attempt, nth, answer: async () => this.answer(name, side, host, input ?? {}) };
        const o = this.overrides.get(name);
        if (!o && name === 'qemuSwitchWhenMerged') {
          // Armed: wait (heartbeating, cancellable) for the merge stub to return, then switch.
          await this.merged.wait();
          return { switched: true, note: 'switched as soon as the merge was done (stub)' };
        }
        const r = await (o ? o(input ?? {}, c) : c.answer());
        if (name === 'qemuMergeStatic') this.merged.open();
        return r;
      };
    }
    return acts;
  }

  private driverOf(side: Side): Driver {
    return (side === 'source' ? this.spec.source : this.spec.target) ?? 'emulated';
  }

  /** The default answer of each stub: a guest of 4096 pages that migrates without trouble. */
  answer(name: string, side: Side, host: string, input: Record<string, unknown>): unknown {
    const now = Date.now();
    const vm = this.vm;
    const verify = { ok: true, pagesChecked: PAGES, mismatches: 0, method: 'stub-check', firstMismatches: [] as string[] };
    const round = (index: number) => {
      const r = this.rounds(index);
      const durationMs = r.durationMs ?? 50;
      return { index, pages: r.pages, dirtyAfter: r.dirtyAfter, durationMs, bytes: r.bytes ?? r.pages * PAGE, finishedAtMs: now, ...(r.growth ? { growth: r.growth } : {}) };
    };
    const qemuOutcome = (status = 'completed') => ({
      status,
      error: null,
      downtimeMs: 12,
      pausedAtMs: now - 20,
      postcopyActiveAtMs: now - 15,
      completedAtMs: now,
      transferredBytes: 20 * MiB,
      postcopyBytes: MiB,
      downtimeBytes: 64 * 1024,
      postcopyRequests: 7,
    });
    switch (name) {
      case 'hostFacts': {
        const names = side === 'source' ? (this.spec.sourceVms ?? [vm]) : [];
        const driver = this.driverOf(side);
        return {
          hostId: host,
          driver,
          memoryCapacityBytes: 1024 * MiB,
          memoryAllocatedBytes: names.length * PAGES * PAGE,
          memoryFreeBytes: 1024 * MiB - names.length * PAGES * PAGE,
          vms: names.map((n) => ({ name: n, memoryBytes: PAGES * PAGE, vcpus: 1, state: 'running', workload: 'memcached', seed: 1, driver })),
          dataAddress: '127.0.0.1:1',
          pid: process.pid,
          hostname: 'stub',
          uptimeMs: 1000,
        };
      }
      // emulated
      case 'describeVm':
        return { vm, host, memoryBytes: PAGES * PAGE, pageSize: PAGE, pageCount: PAGES, vcpus: 1, workload: 'memcached', state: 'running' };
      case 'prepareTarget':
        return { dataAddress: '127.0.0.1:1', secret: 'stub-secret', atMs: now };
      case 'prepareSource':
        return { startedAtMs: now, pageCount: PAGES, pageSize: PAGE };
      case 'saveStatic':
        return { pages: PAGES, zeroPages: 0, bytesWritten: PAGES * PAGE, saveMs: 5 };
      case 'mergeStatic':
        return { pages: PAGES, skippedNewer: 0, bytesRead: PAGES * PAGE, mergeMs: 5 };
      case 'runIteration':
        return round(Number(input.index));
      case 'stopAndCopy':
        return { pausedAtMs: now, pages: 10, bytes: 10 * PAGE, durationMs: 2, digest: null };
      case 'resumeTarget':
        return { resumedAtMs: now + 3, digest: null };
      case 'switchToPostcopy':
        return { pausedAtMs: now, missingPages: 2000, bytes: 0, digest: null };
      case 'writePbData':
        return { pages: 2000, bytesWritten: 2000 * PAGE, ms: 5, committedAtMs: now };
      case 'pushPostcopy':
        return { pushedPages: 1900, faultPagesServed: 100, bytes: 2000 * PAGE, channelLost: false };
      case 'drainPostcopy':
        return { completedAtMs: now + 50, faults: 100, faultLatencyMs: { p50: 1, p99: 2, max: 3 }, pushedPages: 1900, pbdataPages: 0, fellBackToPbData: false, bytesReceived: 2000 * PAGE, storageBytesRead: 0 };
      case 'verifyTarget':
        return verify;
      case 'releaseSource':
        return { releasedAtMs: now, channelBytes: 20 * MiB, storageBytesWritten: 0, digest: null };
      case 'rollbackSource':
        return { guestRunning: true, verification: { ...verify, method: 'stub-source-check' }, note: `vm ${vm} runs on ${host}` };
      case 'abortTarget':
        return { aborted: true };
      case 'cleanupStorage':
        return { removed: true };
      case 'setBandwidth':
        return { applied: true };
      // QEMU
      case 'qemuDescribe':
        return { vm, host, memoryBytes: PAGES * PAGE, pageSize: PAGE, pageCount: PAGES, vcpus: 1, workload: 'write-intensive', state: 'running', seed: 1, rate: null, driver: 'qemu', tlsCommonName: null };
      case 'qemuPrepareTarget':
        return input.relay
          ? { uri: 'ferry-relay:127.0.0.1:4445', atMs: now, tls: false, relay: { host: '127.0.0.1', port: 4445, token: 'stub-token' } }
          : { uri: 'tcp:127.0.0.1:4444', atMs: now, tls: false };
      case 'qemuStart':
        return { startedAtMs: now, pageSize: PAGE };
      case 'qemuAwaitPass':
        return { kind: 'iteration', iteration: round(Number(input.index)) };
      case 'qemuStopAndCopy':
        return qemuOutcome();
      case 'qemuSwitchToPostcopy':
        return qemuOutcome('postcopy-active');
      case 'qemuAwaitCompletion':
        return { kind: 'completed', why: 'completed', outcome: qemuOutcome() };
      case 'qemuPause':
        return { status: 'postcopy-paused' };
      case 'qemuRecoverTarget':
        return { uri: 'tcp:10.9.0.2:5555' };
      case 'qemuIncomingStatus':
        return { status: 'postcopy-active' };
      case 'qemuResume':
        return { status: 'postcopy-active' };
      case 'qemuVerifyTarget':
        return { ...verify, method: 'guest-self-check', resumedAtMs: now, blocktime: null };
      case 'qemuRelease':
        return { releasedAtMs: now, transferredBytes: 20 * MiB };
      case 'qemuRollback':
        return { guestRunning: true, note: `${vm} runs on ${host}`, verification: { ...verify, method: 'guest-self-check' } };
      case 'qemuAbortTarget':
        return { removed: true };
      case 'qemuSetBandwidth':
        return undefined;
      case 'qemuSaveStatic':
        return { pages: PAGES, zeroPages: 0, bytesWritten: PAGES * PAGE, saveMs: 5, divertedWireBytes: PAGES * (PAGE + 16) };
      case 'qemuMergeStatic':
        return { pages: PAGES - 100, skippedNewer: 100, bytesRead: PAGES * PAGE, mergeMs: 5 };
      case 'qemuRemoveStatic':
        return { removed: true };
    }
    throw new Error(`no stub answer for ${name}`);
  }
}

// ---- results ---------------------------------------------------------------------------------

export async function report(handle: WorkflowHandle): Promise<MigrationReport> {
  return (await handle.result()) as MigrationReport;
}

/** The workflow's failure (it must fail): the cause's message and type. */
export async function workflowFailure(handle: WorkflowHandle): Promise<{ message: string; type: string | undefined }> {
  const e = await handle.result().then(
    () => null,
    (x: unknown) => x,
  );
  if (!(e instanceof WorkflowFailedError)) throw new Error(`expected the workflow to fail, it ended with ${JSON.stringify(e)}`);
  const cause = e.cause;
  return { message: cause?.message ?? '', type: cause instanceof ApplicationFailure ? (cause.type ?? undefined) : cause?.name };
}

/** The rejection of an update (it must be rejected): its message. */
export async function rejection(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    (v) => {
      throw new Error(`expected the update to be rejected, it returned ${JSON.stringify(v)}`);
    },
    (x: unknown) => x,
  );
  if (!(e instanceof WorkflowUpdateFailedError)) throw e;
  return e.cause?.message ?? '';
}

export async function progressUntil(handle: WorkflowHandle, pred: (p: Progress) => boolean, what: string, timeoutMs = 20_000): Promise<Progress> {
  const deadline = Date.now() + timeoutMs;
  let last: Progress | null = null;
  for (;;) {
    last = await handle.query(progressQuery).catch(() => last);
    if (last && pred(last)) return last;
    if (Date.now() > deadline) throw new Error(`not reached: ${what}; last progress ${JSON.stringify(last && { phase: last.phase, iteration: last.iteration, switched: last.switched })}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** One event of a workflow's history, as far as these tests read it. */
export interface HistoryEvent {
  id: number;
  type: string;
  /** ACTIVITY_TASK_SCHEDULED: the activity's name. */
  activity?: string;
  /** ACTIVITY_TASK_*: the id of the event that scheduled it. */
  scheduledId?: number;
}

export async function history(handle: WorkflowHandle): Promise<HistoryEvent[]> {
  const json = JSON.parse(historyToJSON(await handle.fetchHistory())) as { events: Record<string, unknown>[] };
  return json.events.map((e) => {
    const attrs = Object.entries(e).find(([k]) => k.endsWith('EventAttributes'))?.[1] as Record<string, unknown> | undefined;
    const activity = (attrs?.activityType as { name?: string } | undefined)?.name;
    const scheduledId = attrs?.scheduledEventId !== undefined ? Number(attrs.scheduledEventId) : undefined;
    return { id: Number(e.eventId), type: String(e.eventType).replace(/^EVENT_TYPE_/, ''), ...(activity ? { activity } : {}), ...(scheduledId !== undefined ? { scheduledId } : {}) };
  });
}

/**
 * Whether a running workflow can no longer move on its own: its last workflow task ended
 * without scheduling anything, and no activity or timer is pending — only a signal or an
 * update could wake it. Checked twice, 300 ms apart, with the same history.
 */
export async function stalled(handle: WorkflowHandle): Promise<boolean> {
  const once = async (): Promise<number | null> => {
    const d = await handle.describe();
    if (d.status.name !== 'RUNNING') return null;
    if ((d.raw.pendingActivities ?? []).length > 0) return null;
    const ev = await history(handle);
    const last = ev.at(-1);
    if (last?.type !== 'WORKFLOW_TASK_COMPLETED') return null;
    const timers = ev.filter((e) => e.type === 'TIMER_STARTED').length - ev.filter((e) => e.type === 'TIMER_FIRED' || e.type === 'TIMER_CANCELED').length;
    return timers === 0 ? ev.length : null;
  };
  const a = await once();
  if (a === null) return false;
  await new Promise((r) => setTimeout(r, 300));
  return (await once()) === a;
}

/** Wait until the workflow has closed or stalled (see `stalled`); says which. */
export async function closedOrStalled(handle: WorkflowHandle, timeoutMs = 30_000): Promise<'closed' | 'stalled'> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await handle.describe();
    if (d.status.name !== 'RUNNING') return 'closed';
    if (await stalled(handle)) return 'stalled';
    if (Date.now() > deadline) throw new Error('the workflow neither closed nor stalled');
    await new Promise((r) => setTimeout(r, 100));
  }
}
