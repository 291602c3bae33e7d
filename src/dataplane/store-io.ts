/**
 * File I/O of shared storage, away from the agent's event loop and thread pool, under a
 * no-progress watchdog.
 *
 * Storage that hangs (a hard NFS mount whose server went away, a stuck SAN path) does not
 * fail: the syscall blocks, and Node cannot cancel a blocked syscall. Run through libuv's
 * thread pool (fs/promises), each hung call would also hold one of its four threads for
 * ever, and with them every later fs, crypto and DNS call of the process. So every storage
 * operation here runs as synchronous calls in a worker thread of its own, which posts its
 * progress (bytes moved) as it goes. When an operation shows no progress for `stallMs`, its
 * promise rejects with StorageStalledError and the worker is abandoned: left blocked in the
 * kernel, told (through shared memory) to stop at its next step, and terminated when the
 * call finally returns. A late completion changes nothing: an abandoned atomic write
 * removes its temp file instead of renaming it into place, and an abandoned read's data is
 * dropped.
 *
 * While an abandoned worker is still blocked, the storage counts as hung: every new
 * operation fails at once with StorageStalledError instead of parking another thread in the
 * same syscall: no more threads are parked than operations were in flight when it hung.
 * When the blocked call returns, the storage is used again. A process that exits while a
 * call is still blocked ends with SIGKILL rather than wait for it (see guardExit).
 */
import { Worker } from 'node:worker_threads';
import { loadClusterKeys, requireClusterKeys, type ClusterKey, type ClusterKeys } from '../common/cluster-key';
import { UsageError } from '../common/errors';

/** The storage did not progress for the watchdog's window. */
export class StorageStalledError extends Error {
  override readonly name = 'StorageStalledError';
  readonly code = 'ESTALLED';
}

/** Default no-progress window (FERRY_STORAGE_STALL_MS overrides it). */
export const DEFAULT_STALL_MS = 5000;
/** The shortest no-progress window accepted. */
export const MIN_STALL_MS = 100;
/** Pieces a read or a write moves between progress reports. */
const PIECE = 1024 * 1024;
const MAX_IDLE = 4;

export interface StoreIo {
  readonly stallMs: number;
  /** mkdir -p, then chmod `mode` on `dir` and on every directory this call created. */
  mkdirPrivate(dir: string, mode: number): Promise<void>;
  rm(target: string): Promise<void>;
  readdir(dir: string): Promise<string[]>;
  /**
   * The whole file. With `into`, read into that shared memory when the file fits (the result
   * is then a view of it, valid until the caller reuses it); a bigger file gets its own buffer.
   */
  readFile(file: string, into?: SharedArrayBuffer): Promise<Buffer>;
  size(file: string): Promise<number>;
  chmod(file: string, mode: number): Promise<void>;
  /** Write `data` to `<file>.tmp` (mode `mode`), fsync it if `sync`, rename it to `file`. */
  writeAtomic(file: string, data: Uint8Array, mode: number, sync: boolean): Promise<void>;
  /** fsync a file (or a directory; an error a filesystem gives for directories is ignored). */
  fsync(file: string): Promise<void>;
  /** Worker threads left blocked by a stalled operation and not yet returned. */
  blocked(): number;
}

type Op =
  | { op: 'mkdirPrivate'; dir: string; mode: number }
  | { op: 'rm'; target: string }
  | { op: 'readdir'; dir: string }
  | { op: 'readFile'; file: string; into?: SharedArrayBuffer }
  | { op: 'size'; file: string }
  | { op: 'chmod'; file: string; mode: number }
  | { op: 'writeAtomic'; file: string; data: Uint8Array; mode: number; sync: boolean }
  | { op: 'fsync'; file: string };

/* The worker: plain JavaScript, so it runs the same from sources (tsx, vitest) and from a build. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const path = require('node:path');
const PIECE = ${PIECE};
let flag;
function abandoned() { return flag !== undefined && Atomics.load(flag, 0) === 1; }
function stop() { const e = new Error('abandoned'); e.code = 'EABANDONED'; throw e; }
function progress(n) { parentPort.postMessage({ progress: n }); }
const ops = {
  mkdirPrivate({ dir, mode }) {
    const target = path.resolve(dir);
    const first = fs.mkdirSync(target, { recursive: true, mode });
    const made = [target];
    if (first !== undefined) {
      for (let d = target; d !== path.resolve(first) && path.dirname(d) !== d; ) { d = path.dirname(d); made.push(d); }
    }
    for (const d of made.reverse()) fs.chmodSync(d, mode);
  },
  rm({ target }) { fs.rmSync(target, { recursive: true, force: true }); },
  readdir({ dir }) { return fs.readdirSync(dir); },
  size({ file }) { return fs.statSync(file).size; },
  chmod({ file, mode }) { fs.chmodSync(file, mode); },
  readFile({ file, into }) {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const shared = into && into.byteLength >= size;
      const buf = shared ? Buffer.from(into, 0, size) : Buffer.allocUnsafe(size);
      let off = 0;
      while (off < size) {
        const n = fs.readSync(fd, buf, off, Math.min(PIECE, size - off), off);
        if (n === 0) break;
        off += n;
        progress(n);
        if (abandoned()) stop();
      }
      if (shared) return { sharedBytes: off };
      return off === size ? buf : buf.subarray(0, off);
    } finally { fs.closeSync(fd); }
  },
  writeAtomic({ file, data, mode, sync }) {
    const tmp = file + '.tmp';
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, mode);
    try {
      fs.fchmodSync(fd, mode);
      let off = 0;
      while (off < data.length) {
        off += fs.writeSync(fd, data, off, Math.min(PIECE, data.length - off));
        progress(off);
        if (abandoned()) stop();
      }
      if (sync) fs.fsyncSync(fd);
    } catch (e) {
      try { fs.closeSync(fd); } catch {}
      if (e && e.code === 'EABANDONED') try { fs.rmSync(tmp, { force: true }); } catch {}
      throw e;
    }
    fs.closeSync(fd);
    if (abandoned()) { try { fs.rmSync(tmp, { force: true }); } catch {} stop(); }
    fs.renameSync(tmp, file);
  },
  fsync({ file }) {
    const fd = fs.openSync(file, 'r');
    try { fs.fsyncSync(fd); }
    catch (e) { if (!['EISDIR', 'EINVAL', 'EPERM', 'EBADF'].includes(e && e.code)) throw e; }
    finally { fs.closeSync(fd); }
  },
};
parentPort.on('message', (m) => {
  if (m.flag) { flag = new Int32Array(m.flag); return; }
  try {
    const result = ops[m.op](m);
    const transfer = result instanceof Buffer && result.byteOffset === 0 && result.buffer.byteLength === result.length ? [result.buffer] : [];
    parentPort.postMessage({ done: true, result }, transfer);
  } catch (e) {
    parentPort.postMessage({ done: true, error: { message: e && e.message || String(e), code: e && e.code, syscall: e && e.syscall, path: e && e.path } });
  }
});
`;

interface Slot {
  worker: Worker;
  flag: Int32Array;
}

/** Threads of every WorkerStoreIo left blocked in the kernel. */
let blockedThreads = 0;
let exitGuard = false;

/**
 * Node joins every worker thread before the process exits, and a thread blocked in the
 * kernel never returns: with one, process.exit() would wait as long as the storage hangs.
 * The process is then ended by SIGKILL instead, which the kernel delivers to blocked threads
 * too (FUSE and hard NFS mounts wait killably), after a line saying why.
 */
function guardExit(): void {
  if (exitGuard) return;
  exitGuard = true;
  process.once('exit', () => {
    if (blockedThreads === 0) return;
    process.stderr.write(`ferry: ${blockedThreads} storage call(s) still blocked in the kernel (storage hung); exiting without waiting for them\n`);
    process.kill(process.pid, 'SIGKILL');
  });
}

/** Storage I/O in worker threads under a no-progress watchdog (see the module comment). */
export class WorkerStoreIo implements StoreIo {
  private readonly idle: Slot[] = [];
  private readonly stuck = new Set<Slot>();
  private stalledSince: { op: string; ms: number } | null = null;

  constructor(readonly stallMs: number = DEFAULT_STALL_MS) {
    if (!(stallMs > 0)) throw new RangeError(`storage stall window ${stallMs} ms must be positive`);
    // A worker takes tens of ms to start: three (a write, its fsync behind it, a read) are
    // ready before the first operation.
    for (let i = 0; i < 3; i++) this.idle.push(this.spawn());
  }

  blocked(): number {
    return this.stuck.size;
  }

  mkdirPrivate(dir: string, mode: number): Promise<void> {
    return this.run({ op: 'mkdirPrivate', dir, mode }, dir) as Promise<void>;
  }
  rm(target: string): Promise<void> {
    return this.run({ op: 'rm', target }, target) as Promise<void>;
  }
  readdir(dir: string): Promise<string[]> {
    return this.run({ op: 'readdir', dir }, dir) as Promise<string[]>;
  }
  async readFile(file: string, into?: SharedArrayBuffer): Promise<Buffer> {
    const r = (await this.run({ op: 'readFile', file, ...(into ? { into } : {}) }, file)) as Uint8Array | { sharedBytes: number };
    if ('sharedBytes' in r) return Buffer.from(into!, 0, r.sharedBytes);
    return Buffer.isBuffer(r) ? r : Buffer.from(r.buffer, r.byteOffset, r.byteLength);
  }
  size(file: string): Promise<number> {
    return this.run({ op: 'size', file }, file) as Promise<number>;
  }
  chmod(file: string, mode: number): Promise<void> {
    return this.run({ op: 'chmod', file, mode }, file) as Promise<void>;
  }
  writeAtomic(file: string, data: Uint8Array, mode: number, sync: boolean): Promise<void> {
    // Shared memory goes as is (the caller reuses it only once this write returned; an
    // abandoned write is never renamed into place). Otherwise a copy of its own goes to the
    // worker (moved, not cloned): the caller may reuse its buffer at once.
    if (data.buffer instanceof SharedArrayBuffer) return this.run({ op: 'writeAtomic', file, data, mode, sync }, file) as Promise<void>;
    const copy = new Uint8Array(data);
    return this.run({ op: 'writeAtomic', file, data: copy, mode, sync }, file, [copy.buffer]) as Promise<void>;
  }
  fsync(file: string): Promise<void> {
    return this.run({ op: 'fsync', file }, file) as Promise<void>;
  }

  /** Stop the idle workers (the blocked ones end when their call returns). */
  close(): void {
    for (const s of this.idle.splice(0)) void s.worker.terminate();
  }

  private slot(): Slot {
    return this.idle.pop() ?? this.spawn();
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.unref();
    const flag = new Int32Array(new SharedArrayBuffer(4));
    worker.postMessage({ flag: flag.buffer });
    return { worker, flag };
  }

  private release(s: Slot): void {
    if (this.idle.length < MAX_IDLE) this.idle.push(s);
    else void s.worker.terminate();
  }

  private run(op: Op, where: string, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.stuck.size > 0) {
      const since = this.stalledSince;
      const what = since ? `a ${since.op} has been blocked for ${Math.round((Date.now() - since.ms) / 1000)} s` : 'an earlier operation is still blocked';
      return Promise.reject(new StorageStalledError(`storage hung: ${op.op} ${where} not tried, ${what} (no progress within ${this.stallMs} ms)`));
    }
    const s = this.slot();
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout;
      const arm = (): void => {
        clearTimeout(timer);
        timer = setTimeout(onStall, this.stallMs);
      };
      const finish = (): void => {
        clearTimeout(timer);
        s.worker.off('message', onMessage);
        s.worker.off('error', onError);
        s.worker.off('exit', onExit);
      };
      const onMessage = (m: { progress?: number; done?: boolean; result?: unknown; error?: { message: string; code?: string; syscall?: string; path?: string } }): void => {
        if (!m.done) return arm();
        finish();
        this.release(s);
        if (m.error) reject(Object.assign(new Error(m.error.message), { code: m.error.code, syscall: m.error.syscall, path: m.error.path }));
        else resolve(m.result);
      };
      const onError = (e: Error): void => {
        finish();
        void s.worker.terminate();
        reject(e);
      };
      const onExit = (code: number): void => {
        finish();
        reject(new Error(`storage worker exited (${code}) during ${op.op} ${where}`));
      };
      const onStall = (): void => {
        finish();
        Atomics.store(s.flag, 0, 1);
        this.stuck.add(s);
        blockedThreads++;
        guardExit();
        this.stalledSince ??= { op: `${op.op} of ${where}`, ms: Date.now() - this.stallMs };
        // Forgotten once its call returns (the storage answers again).
        const back = (): void => {
          s.worker.off('message', onLate);
          s.worker.off('exit', back);
          if (this.stuck.delete(s)) blockedThreads--;
          if (this.stuck.size === 0) this.stalledSince = null;
          void s.worker.terminate();
        };
        const onLate = (m: { done?: boolean }): void => {
          if (m.done) back();
        };
        s.worker.on('message', onLate);
        s.worker.once('exit', back);
        reject(new StorageStalledError(`storage hung: ${op.op} ${where} made no progress for ${this.stallMs} ms`));
      };
      s.worker.on('message', onMessage);
      s.worker.once('error', onError);
      s.worker.once('exit', onExit);
      arm();
      s.worker.postMessage(op, transfer);
    });
  }
}

/** What the writers and readers of one shared store use: its I/O and its keys. */
export interface StoreContext {
  io: StoreIo;
  /** Keys sealed chunks may be opened with (current and previous); null = none configured. */
  keys: ClusterKeys | null;
  /** Seal new chunks with this key (storage encryption on); null = write them plain. */
  encryptWith: ClusterKey | null;
}

export interface StoreSettings {
  /** No-progress window of every storage operation, ms. */
  stallMs: number;
  encrypt: boolean;
  keys: ClusterKeys | null;
}

/**
 * The store's settings from the environment: FERRY_STORAGE_STALL_MS (the watchdog's window,
 * default 5000), FERRY_STORAGE_ENCRYPTION=1 (seal StaticData and PbData chunks with the
 * cluster key, which must then be configured), and the cluster keys (common/cluster-key.ts),
 * which open sealed chunks whether or not this host seals its own.
 */
export function storeSettingsFromEnv(env: NodeJS.ProcessEnv): StoreSettings {
  const stallText = env.FERRY_STORAGE_STALL_MS;
  const stallMs = stallText === undefined || stallText === '' ? DEFAULT_STALL_MS : Number(stallText);
  if (!Number.isFinite(stallMs) || stallMs < MIN_STALL_MS) throw new UsageError(`FERRY_STORAGE_STALL_MS: '${stallText}' is not a number of milliseconds ≥ ${MIN_STALL_MS}`);
  const enc = env.FERRY_STORAGE_ENCRYPTION ?? '';
  if (!['', '0', '1', 'true', 'false'].includes(enc)) throw new UsageError(`FERRY_STORAGE_ENCRYPTION: '${enc}' is not 1 or 0`);
  const encrypt = enc === '1' || enc === 'true';
  const keys = encrypt ? requireClusterKeys(env, 'FERRY_STORAGE_ENCRYPTION') : loadClusterKeys(env);
  return { stallMs, encrypt, keys };
}

export function storeContext(settings: StoreSettings, io: StoreIo = new WorkerStoreIo(settings.stallMs)): StoreContext {
  return { io, keys: settings.keys, encryptWith: settings.encrypt ? (settings.keys?.current ?? null) : null };
}

let shared: StoreContext | undefined;
/** One context for writers and readers made without a SharedStore (from the environment). */
export function defaultStoreContext(): StoreContext {
  shared ??= storeContext(storeSettingsFromEnv(process.env));
  return shared;
}
