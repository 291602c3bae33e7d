/**
 * Target side of channel-1.
 *
 * mergeStatic ("process-1" of par-migrate): follow StaticData chunk by chunk as the source
 * commits them (pipelined: the save may still be running) until the manifest says the
 * snapshot is complete. A static page is written only if the target holds no dynamic
 * (channel-2) version of it; the check and the write happen in one synchronous step, with
 * no await between them, so a channel-2 page applied by the same event loop is never
 * overwritten by older static data, and a channel-2 page arriving later overwrites the
 * static one as usual. New chunks are discovered by polling the directory (`pollMs`,
 * default 20 ms): cheap, and it works on NFS where fs.watch does not.
 *
 * Resumable: `onProgress` receives a JSON-safe MergeProgress after each chunk (suitable for
 * activity heartbeats); pass it back as `resumeFrom` and the merge continues with the
 * chunks not yet merged.
 *
 * loadPbData (post-copy fallback): install the PbData pages the target is still missing,
 * and return once the PbData snapshot is committed and fully applied. Chunks already
 * committed are installed before the commit (PbData content is frozen at the pause, so
 * any committed chunk is final).
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { PageSink } from './pages';
import { sleep } from './rate';
import { StorageTimeoutError, type Chunk, type Manifest, type SnapshotReader } from './store';

export interface MergeProgress {
  /** Chunk names already merged. */
  chunks: string[];
  pages: number;
  skippedNewer: number;
  bytesRead: number;
}

export interface FollowOptions {
  signal?: AbortSignal;
  /** Directory poll interval while the snapshot is not committed (default 20 ms). */
  pollMs?: number;
  /** Give up (StorageTimeoutError) if the snapshot is not complete by then (default: never). */
  timeoutMs?: number;
  /** Told true when the follower has applied every committed chunk and waits for more, false when it has work again. */
  onWaiting?: (waiting: boolean) => void;
  /**
   * Read chunks into these shared buffers in turn (at least 3; one is applied while the next
   * is read ahead), instead of a fresh buffer per chunk. `apply` must then be done with a
   * chunk's pages (written or copied) when it returns.
   */
  buffers?: SharedArrayBuffer[];
}

export interface MergeStaticOptions extends FollowOptions {
  reader: SnapshotReader;
  sink: PageSink;
  /** True when the target already holds a channel-2 version of the page. */
  hasDynamic: (pfn: number) => boolean;
  /** Called right after a static page is written (same synchronous step). */
  markStatic?: (pfn: number) => void;
  /**
   * True when the target's page is known to hold zeros (fresh memory nothing has written):
   * a zero static page there needs no write. Writing it would only make the OS commit the
   * page (a first-touch fault, ~12 µs per 4 KiB page), the merge's main cost on zero memory.
   */
  zeroFilled?: (pfn: number) => boolean;
  onProgress?: (p: MergeProgress) => void;
  resumeFrom?: MergeProgress;
  /** Pages applied between yields to the event loop, so channel-2 keeps flowing (default 256). */
  yieldEvery?: number;
}

export interface MergeResult {
  /** Static pages written (resumed progress included). */
  pages: number;
  /** Static pages not written because a dynamic version was already there. */
  skippedNewer: number;
  bytesRead: number;
  /** Wall time of this call. */
  ms: number;
  progress: MergeProgress;
}

export async function mergeStatic(opts: MergeStaticOptions): Promise<MergeResult> {
  const { reader, sink, hasDynamic, markStatic, zeroFilled, signal, onProgress } = opts;
  const yieldEvery = Math.max(1, opts.yieldEvery ?? 256);
  const t0 = performance.now();
  const from = opts.resumeFrom;
  const done = new Set(from?.chunks ?? []);
  let pages = from?.pages ?? 0;
  let skippedNewer = from?.skippedNewer ?? 0;
  let bytesRead = from?.bytesRead ?? 0;
  const progress = (): MergeProgress => ({ chunks: [...done], pages, skippedNewer, bytesRead });

  await follow(reader, done, opts, async (chunk) => {
    checkChunk(chunk, sink, reader);
    const n = chunk.pfns.length;
    for (let i = 0; i < n; i++) {
      if (i > 0 && i % yieldEvery === 0) {
        await yieldToLoop();
        signal?.throwIfAborted();
      }
      const pfn = chunk.pfns[i] ?? 0;
      // One synchronous step: check, write, mark. No await in between.
      if (hasDynamic(pfn)) {
        skippedNewer++;
      } else {
        if (!(zeroFilled && chunk.isZero(i) && zeroFilled(pfn))) sink.writePage(pfn, chunk.page(i));
        markStatic?.(pfn);
        pages++;
      }
    }
    bytesRead += chunk.bytes;
  }, (name) => {
    done.add(name);
    onProgress?.(progress());
  });

  return { pages, skippedNewer, bytesRead, ms: performance.now() - t0, progress: progress() };
}

export interface LoadPbDataOptions extends FollowOptions {
  reader: SnapshotReader;
  /** Install the page if the target still misses it; return whether it did. Must copy `data`. */
  install: (pfn: number, data: Uint8Array) => boolean;
  pageSize?: number;
  onProgress?: (p: { chunks: number; installed: number; alreadyPresent: number }) => void;
}

export interface LoadPbDataResult {
  /** Pages in the PbData snapshot. */
  pages: number;
  installed: number;
  alreadyPresent: number;
  bytesRead: number;
  ms: number;
  manifest: Manifest;
}

export async function loadPbData(opts: LoadPbDataOptions): Promise<LoadPbDataResult> {
  const { reader, install, onProgress } = opts;
  const t0 = performance.now();
  const done = new Set<string>();
  let installed = 0;
  let alreadyPresent = 0;
  let bytesRead = 0;
  const manifest = await follow(reader, done, opts, async (chunk) => {
    if (opts.pageSize !== undefined && chunk.pageSize !== opts.pageSize) {
      throw new RangeError(`${reader.dir}/${chunk.name}: page size ${chunk.pageSize}, target uses ${opts.pageSize}`);
    }
    for (let i = 0; i < chunk.pfns.length; i++) {
      if (install(chunk.pfns[i] ?? 0, chunk.page(i))) installed++;
      else alreadyPresent++;
    }
    bytesRead += chunk.bytes;
    await Promise.resolve();
  }, (name) => {
    done.add(name);
    onProgress?.({ chunks: done.size, installed, alreadyPresent });
  });
  return { pages: installed + alreadyPresent, installed, alreadyPresent, bytesRead, ms: performance.now() - t0, manifest };
}

/**
 * Apply every chunk of a snapshot exactly once, in order, as chunks appear, until the
 * manifest exists and every chunk it lists is applied. Returns the manifest.
 */
export async function follow(
  reader: SnapshotReader,
  done: ReadonlySet<string>,
  opts: FollowOptions,
  apply: (chunk: Chunk) => Promise<void>,
  applied: (name: string) => void,
): Promise<Manifest> {
  const { signal, buffers } = opts;
  if (buffers && buffers.length < 3) throw new RangeError(`follow needs at least 3 read buffers, got ${buffers.length}`);
  let reads = 0;
  const pollMs = opts.pollMs ?? 20;
  const deadline = performance.now() + (opts.timeoutMs ?? Infinity);
  for (;;) {
    signal?.throwIfAborted();
    // Manifest first: when it exists, its chunk list is authoritative and complete.
    const m = await reader.manifest();
    const names = m ? m.chunks.map((c) => c.name) : await reader.committedChunks();
    // Read chunk j+1 (I/O in the thread pool) while chunk j is applied.
    const todo = names.filter((n) => !done.has(n));
    if (todo.length > 0) opts.onWaiting?.(false);
    const read = (j: number): Promise<Chunk> | undefined => {
      const name = todo[j];
      if (name === undefined) return undefined;
      const p = reader.readChunk(name, buffers?.[reads++ % buffers.length]);
      p.catch(() => undefined); // handled when awaited; never an unhandled rejection
      return p;
    };
    let next = read(0);
    for (let j = 0; next; j++) {
      signal?.throwIfAborted();
      const chunk = await next;
      next = read(j + 1);
      await apply(chunk);
      applied(chunk.name);
    }
    const progressed = todo.length > 0;
    if (m) return m;
    if (!progressed) {
      const left = deadline - performance.now();
      if (left <= 0) throw new StorageTimeoutError(`${reader.dir}: snapshot not complete within ${opts.timeoutMs} ms`);
      opts.onWaiting?.(true);
      await sleep(Math.min(pollMs, left), signal);
    }
  }
}

function checkChunk(chunk: Chunk, sink: PageSink, reader: SnapshotReader): void {
  const where = `${reader.dir}/${chunk.name}`;
  if (chunk.pageSize !== sink.pageSize) throw new RangeError(`${where}: page size ${chunk.pageSize}, target uses ${sink.pageSize}`);
  for (const pfn of chunk.pfns) if (pfn >= sink.pageCount) throw new RangeError(`${where}: pfn ${pfn} beyond target memory (${sink.pageCount} pages)`);
}
