/**
 * The emulated guest: RAM (GuestMemory, self-verifying layout) plus vCPU worker threads
 * running a workload. What a hypervisor driver migrates: memory pages through
 * PageSource/PageSink, and saveDeviceState()/restore() for everything else (the
 * workload's own state included, so the workload continues on the target).
 *
 * Lifecycle: create() -> start() -> pause()/resume() ... -> stop().
 *            restore() -> resume() (on the target; pages may be missing: vCPUs fault).
 */
import { Worker } from 'node:worker_threads';
import { UsageError } from '../common/errors';
import { parseSize } from '../common/units';
import { Prng } from './core';
import { computeLayout, formatMemory, verify, writeDataPage, type Layout, type VerifyReport } from './layout';
import { GuestMemory } from './memory';
import type { Trace } from './trace';
import { resolveWorkload, type ResolvedWorkload, type WorkloadSpec } from './workloads';

export const DEVICE_STATE_FORMAT = 'ferry-emulated-guest/1';

export interface GuestOptions {
  name: string;
  /** Bytes, or a size such as '256MiB'. */
  memoryBytes: number | string;
  vcpus?: number;
  /** A profile name, 'trace:<file>', or { profile, ...overrides }. Default 'idle'. */
  workload?: string | WorkloadSpec;
  /** u32; the same seed gives the same page contents and access sequence. Default 1. */
  seed?: number;
  pageSize?: number;
  /** Bytes per SharedArrayBuffer of RAM (default 1 GiB). */
  chunkBytes?: number;
  /**
   * Memory in use when the guest "boots": 'region' (default) writes every page of the
   * workload's region once — memcached's warm cache, lmbench's buffer, the compiler's page
   * cache — so migration moves real data, not zero pages; 'none' leaves RAM zeroed.
   */
  prefill?: 'region' | 'none';
}

/** One vCPU's workload state (JSON-safe). */
export interface VcpuState {
  id: number;
  prng: [number, number, number, number];
  ops: number;
  reads: number;
  writes: number;
  /** Running time, pauses excluded. */
  elapsedMs: number;
  faults: number;
  readErrors: number;
  traceIndex: number;
  traceLoop: number;
  /** The access limit (or the end of a non-looping trace) was reached. */
  finished: boolean;
}

/** Everything but RAM. JSON-safe. */
export interface GuestDeviceState {
  format: typeof DEVICE_STATE_FORMAT;
  name: string;
  memoryBytes: number;
  pageSize: number;
  pageCount: number;
  vcpus: number;
  seed: number;
  workload: ResolvedWorkload;
  vcpuStates: VcpuState[];
}

export type GuestRunState = 'created' | 'running' | 'paused' | 'stopped';

export interface VcpuStats {
  id: number;
  ops: number;
  reads: number;
  writes: number;
  elapsedMs: number;
  faults: number;
  readErrors: number;
  /** Page writes per second of running time. */
  writeRate: number;
  /** pfn the vCPU is blocked on (post-copy fault), or null. */
  blockedOn: number | null;
}

export interface GuestStats {
  state: GuestRunState;
  ops: number;
  reads: number;
  writes: number;
  faults: number;
  readErrors: number;
  /** Longest vCPU running time. */
  elapsedMs: number;
  /** Sum of the vCPUs' page-write rates (pages/s), and the same in MiB/s. */
  writeRate: number;
  writeMiBps: number;
  vcpus: VcpuStats[];
}

export interface FaultStats {
  /** Faults reported (vCPU blocked on a missing page). */
  faults: number;
  /** Faults still blocked. */
  pending: number;
  /** Block -> resume, per resolved fault, in order of resolution. */
  latenciesMs: number[];
  p50: number;
  p99: number;
  max: number;
}

type WorkerMsg =
  | { type: 'parked'; seq: number; state: VcpuState }
  | { type: 'fault'; pfn: number; vcpu: number }
  | { type: 'faultDone'; pfn: number; vcpu: number; ms: number }
  | { type: 'idle'; state: VcpuState }
  | { type: 'stopped'; state: VcpuState }
  | { type: 'error'; message: string; stack: string };

const CMD = 0;
const SEQ = 1;
const RUN = 0;
const PAUSE = 1;
const STOP = 2;
const STAT_SLOTS = 8;
const WORKER_URL = new URL('./vcpu-worker.mjs', import.meta.url);

interface Waiter {
  done: () => boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class EmulatedGuest {
  /** Called (on this thread) when a vCPU blocks on a missing page. Install it with memory.installPage(). */
  onFault: ((pfn: number) => void) | null = null;

  private runState: GuestRunState = 'created';
  private workers: Worker[] = [];
  private exits: Promise<void>[] = [];
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(8));
  private readonly statsSab: SharedArrayBuffer;
  private readonly statsView: Float64Array;
  private readonly parkedSeq: number[];
  private readonly idle: boolean[];
  private readonly latencies: number[] = [];
  private faultCount = 0;
  private waiters: Waiter[] = [];
  private failure: Error | null = null;
  private traceShared: { times: SharedArrayBuffer; pages: SharedArrayBuffer; writes: SharedArrayBuffer } | null = null;

  private constructor(
    readonly name: string,
    readonly memory: GuestMemory,
    readonly layout: Layout,
    readonly vcpus: number,
    readonly workload: ResolvedWorkload,
    trace: Trace | null,
    private states: VcpuState[],
  ) {
    this.statsSab = new SharedArrayBuffer(vcpus * STAT_SLOTS * 8);
    this.statsView = new Float64Array(this.statsSab);
    this.parkedSeq = new Array<number>(vcpus).fill(-1);
    this.idle = states.map((s) => s.finished);
    for (const s of states) this.publishState(s);
    if (trace) {
      const share = <T extends Float64Array | Uint32Array | Uint8Array>(a: T): SharedArrayBuffer => {
        const sab = new SharedArrayBuffer(a.byteLength);
        new Uint8Array(sab).set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
        return sab;
      };
      this.traceShared = { times: share(trace.times), pages: share(trace.pages), writes: share(trace.writes) };
    }
  }

  /** A new guest: zeroed RAM, superblock written ("boot"), vCPUs not started yet. */
  static create(opts: GuestOptions): EmulatedGuest {
    const memoryBytes = typeof opts.memoryBytes === 'string' ? parseSize(opts.memoryBytes, 'memory') : opts.memoryBytes;
    const vcpus = opts.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 256) throw new UsageError(`vcpus: ${vcpus} is not 1..256`);
    const seed = (opts.seed ?? 1) >>> 0;
    if (opts.seed !== undefined && (!Number.isInteger(opts.seed) || opts.seed < 0 || opts.seed > 0xffffffff)) {
      throw new UsageError(`seed: ${opts.seed} is not an integer 0..2^32-1`);
    }
    const memory = GuestMemory.create(memoryBytes, { pageSize: opts.pageSize, chunkBytes: opts.chunkBytes });
    const layout = computeLayout(memory.pageSize, memory.pageCount, seed);
    const { resolved, trace } = resolveWorkload(opts.workload ?? 'idle', { pageSize: memory.pageSize, dataPages: layout.dataPages, vcpus });
    formatMemory(memory, layout);
    if ((opts.prefill ?? 'region') === 'region') {
      const first = layout.dataStart + resolved.regionStart;
      for (let pfn = first; pfn < first + resolved.regionPages && pfn < layout.pageCount; pfn++) writeDataPage(memory, layout, pfn);
      memory.clearDirty();
    }
    const states = Array.from({ length: vcpus }, (_, id) => initialState(seed, id));
    return new EmulatedGuest(opts.name, memory, layout, vcpus, resolved, trace, states);
  }

  /**
   * The target side: a guest over `memory` (which received, or will receive, the source's
   * pages) continuing the source's workload. Call resume() to run it.
   */
  static restore(args: { memory: GuestMemory; deviceState: GuestDeviceState; name?: string }): EmulatedGuest {
    const { memory, deviceState: ds } = args;
    if (ds?.format !== DEVICE_STATE_FORMAT) throw new UsageError(`device state: format is ${JSON.stringify(ds?.format)}, expected ${DEVICE_STATE_FORMAT}`);
    if (memory.pageSize !== ds.pageSize || memory.pageCount !== ds.pageCount) {
      throw new UsageError(`device state: guest has ${ds.pageCount} pages of ${ds.pageSize} B, target memory ${memory.pageCount} of ${memory.pageSize} B`);
    }
    if (ds.vcpuStates.length !== ds.vcpus) throw new UsageError(`device state: ${ds.vcpuStates.length} vCPU states for ${ds.vcpus} vCPUs`);
    const layout = computeLayout(memory.pageSize, memory.pageCount, ds.seed);
    const spec: WorkloadSpec = { ...ds.workload.overrides, profile: ds.workload.profile };
    const { resolved, trace } = resolveWorkload(spec, { pageSize: memory.pageSize, dataPages: layout.dataPages, vcpus: ds.vcpus });
    if (resolved.trace && resolved.trace.digest !== ds.workload.trace?.digest) {
      throw new UsageError(`device state: trace file ${resolved.trace.file} differs from the one the source guest ran`);
    }
    const states = ds.vcpuStates.map((s) => ({ ...s, prng: [...s.prng] as VcpuState['prng'] }));
    return new EmulatedGuest(args.name ?? ds.name, memory, layout, ds.vcpus, resolved, trace, states);
  }

  get state(): GuestRunState {
    return this.runState;
  }

  get seed(): number {
    return this.layout.seed;
  }

  /** Start the vCPUs (a created or restored guest). */
  async start(): Promise<void> {
    if (this.runState !== 'created') throw new UsageError(`guest ${this.name}: cannot start: it is ${this.runState}`);
    await this.spawn();
  }

  /** Resolves when every vCPU is parked at a safe point (no write in flight). */
  async pause(): Promise<void> {
    this.throwIfFailed();
    if (this.runState !== 'running') return;
    Atomics.store(this.ctrl, CMD, PAUSE);
    const seq = this.bump();
    this.runState = 'paused';
    await this.until(() => this.parkedSeq.every((s) => s >= seq));
  }

  /** Continue a paused guest, or start a created/restored one. */
  async resume(): Promise<void> {
    this.throwIfFailed();
    if (this.runState === 'created') return this.spawn();
    if (this.runState === 'stopped') throw new UsageError(`guest ${this.name}: cannot resume: it is stopped`);
    if (this.runState === 'running') return;
    Atomics.store(this.ctrl, CMD, RUN);
    this.bump();
    this.runState = 'running';
  }

  /** Stop and join the vCPU threads. The device state stays available. */
  async stop(): Promise<void> {
    if (this.runState === 'stopped') return;
    this.runState = 'stopped';
    if (this.workers.length === 0) return;
    Atomics.store(this.ctrl, CMD, STOP);
    this.bump();
    await Promise.all(this.exits);
    this.workers = [];
    this.exits = [];
    for (const w of this.waiters.splice(0)) w.reject(new Error(`guest ${this.name} stopped`));
  }

  /** Resolves when every vCPU has reached its access limit (or the end of a non-looping trace). */
  whenIdle(): Promise<void> {
    return this.until(() => this.idle.every(Boolean));
  }

  /** Device state (everything but RAM). The guest must not be running. */
  saveDeviceState(): GuestDeviceState {
    if (this.runState === 'running') throw new UsageError(`guest ${this.name}: pause it before saving its device state`);
    return JSON.parse(
      JSON.stringify({
        format: DEVICE_STATE_FORMAT,
        name: this.name,
        memoryBytes: this.memory.memoryBytes,
        pageSize: this.memory.pageSize,
        pageCount: this.memory.pageCount,
        vcpus: this.vcpus,
        seed: this.layout.seed,
        workload: this.workload,
        vcpuStates: this.states,
      }),
    ) as GuestDeviceState;
  }

  /** Check all of RAM (run it paused or stopped). */
  verify(): VerifyReport {
    return verify(this.memory);
  }

  stats(): GuestStats {
    const v: VcpuStats[] = [];
    for (let id = 0; id < this.vcpus; id++) {
      const s = this.statsView.subarray(id * STAT_SLOTS, id * STAT_SLOTS + STAT_SLOTS);
      const elapsedMs = s[3]!;
      v.push({
        id,
        ops: s[0]!,
        reads: s[1]!,
        writes: s[2]!,
        elapsedMs,
        faults: s[4]!,
        readErrors: s[5]!,
        writeRate: elapsedMs > 0 ? (s[2]! / elapsedMs) * 1000 : 0,
        blockedOn: s[6]! >= 0 ? s[6]! : null,
      });
    }
    const sum = (k: 'ops' | 'reads' | 'writes' | 'faults' | 'readErrors' | 'writeRate'): number => v.reduce((a, x) => a + x[k], 0);
    const writeRate = sum('writeRate');
    return {
      state: this.runState,
      ops: sum('ops'),
      reads: sum('reads'),
      writes: sum('writes'),
      faults: sum('faults'),
      readErrors: sum('readErrors'),
      elapsedMs: Math.max(0, ...v.map((x) => x.elapsedMs)),
      writeRate,
      writeMiBps: (writeRate * this.memory.pageSize) / 1024 ** 2,
      vcpus: v,
    };
  }

  faultStats(): FaultStats {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const q = (p: number): number => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]! : 0);
    return {
      faults: this.faultCount,
      pending: this.faultCount - this.latencies.length,
      latenciesMs: [...this.latencies],
      p50: q(0.5),
      p99: q(0.99),
      max: sorted.length ? sorted[sorted.length - 1]! : 0,
    };
  }

  // ---- internals ----

  private bump(): number {
    const seq = Atomics.add(this.ctrl, SEQ, 1) + 1;
    Atomics.notify(this.ctrl, SEQ);
    return seq;
  }

  private async spawn(): Promise<void> {
    Atomics.store(this.ctrl, CMD, RUN);
    this.runState = 'running';
    const online: Promise<void>[] = [];
    for (let id = 0; id < this.vcpus; id++) {
      const w = new Worker(WORKER_URL, {
        name: `${this.name}-vcpu${id}`,
        workerData: {
          mem: this.memory.descriptor(),
          ctrl: this.ctrl.buffer,
          stats: this.statsSab,
          id,
          vcpus: this.vcpus,
          layout: this.layout,
          workload: this.workload,
          trace: this.traceShared,
          state: this.states[id],
        },
      });
      w.on('message', (m: WorkerMsg) => this.onMessage(id, m));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (code !== 0 && this.runState !== 'stopped') this.fail(new Error(`vCPU ${id} of guest ${this.name} exited with code ${code}`));
      });
      online.push(new Promise((res) => w.once('online', () => res())));
      this.exits.push(new Promise((res) => w.once('exit', () => res())));
      this.workers.push(w);
    }
    await Promise.all(online);
  }

  private onMessage(id: number, m: WorkerMsg): void {
    switch (m.type) {
      case 'parked':
        this.states[id] = m.state;
        this.parkedSeq[id] = m.seq;
        break;
      case 'fault':
        this.faultCount++;
        try {
          this.onFault?.(m.pfn);
        } catch (e) {
          this.fail(e as Error);
        }
        break;
      case 'faultDone':
        this.latencies.push(m.ms);
        break;
      case 'idle':
        this.states[id] = m.state;
        this.idle[id] = true;
        break;
      case 'stopped':
        this.states[id] = m.state;
        break;
      case 'error':
        this.fail(Object.assign(new Error(`vCPU ${id} of guest ${this.name}: ${m.message}`), { stack: m.stack }));
        break;
    }
    this.checkWaiters();
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  private until(done: () => boolean): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ done, resolve, reject }));
  }

  private checkWaiters(): void {
    this.waiters = this.waiters.filter((w) => {
      if (!w.done()) return true;
      w.resolve();
      return false;
    });
  }

  private publishState(s: VcpuState): void {
    const o = s.id * STAT_SLOTS;
    this.statsView.set([s.ops, s.reads, s.writes, s.elapsedMs, s.faults, s.readErrors, -1], o);
  }
}

function initialState(seed: number, id: number): VcpuState {
  return {
    id,
    prng: Prng.fromSeed(seed, id).state(),
    ops: 0,
    reads: 0,
    writes: 0,
    elapsedMs: 0,
    faults: 0,
    readErrors: 0,
    traceIndex: 0,
    traceLoop: 0,
    finished: false,
  };
}
