// One vCPU of the emulated guest: a worker thread running the workload over guest RAM in
// SharedArrayBuffers. Plain JS so it loads the same under node, tsx and vitest.
//
// workerData: { mem (GuestMemoryDescriptor), ctrl, stats, id, vcpus, layout, workload
//               (ResolvedWorkload), trace ({times, pages, writes} over SABs) | null, state }
//
// Control (ctrl, Int32Array): [CMD] = RUN | PAUSE | STOP, [SEQ] = bumped by the guest after
// every CMD change, with Atomics.notify. The vCPU only looks at CMD at a *safe point*:
// between two accesses, or while blocked on a missing page before it has touched it. Never
// inside a write, so a parked guest has no write in flight and its RAM is consistent.
// Waiting on SEQ (not CMD) cannot miss a change: if SEQ moved after we read it,
// Atomics.wait returns at once.
//
// Messages to the guest: parked {seq, state} once per pause (seq = the SEQ value seen),
// fault {pfn} when a vCPU blocks on a missing page, faultDone {pfn, ms} when it resumes,
// idle {state} when the access limit (or the end of a non-looping trace) is reached,
// stopped {state}, error {message, stack}.
import { parentPort, workerData } from 'node:worker_threads';
import { fillPage, HDR_WORDS, Prng } from './core.js';

const CMD = 0;
const SEQ = 1;
const RUN = 0;
const PAUSE = 1;
const STOP = 2;
const BATCH = 128; // accesses between safe points when unthrottled (~0.3 ms)
const FAULT_POLL_MS = 20; // how often a vCPU blocked on a page looks at CMD
const STOPPED = Symbol('stopped');

const { mem, id, vcpus, layout } = workerData;
const W = workerData.workload;
const S = workerData.state;
const ctrl = new Int32Array(workerData.ctrl);
const stats = new Float64Array(workerData.stats, id * 8 * 8, 8);
const chunks = mem.chunks.map((c) => new Int32Array(c));
const dirty = new Int32Array(mem.dirty);
const present = new Int32Array(mem.present);

const pageWords = mem.pageSize >>> 2;
const ppcShift = 31 - Math.clz32(mem.pagesPerChunk);
const ppcMask = mem.pagesPerChunk - 1;
const entryShift = 31 - Math.clz32(pageWords); // table entries per table page = pageWords
const { seed, tableStart, dataStart, dataPages } = layout;
const regionStart = W.regionStart;
const regionPages = W.regionPages;
const regionEnd = regionStart + regionPages;
const readWords = Math.min(W.readWords, pageWords - HDR_WORDS);
const readStride = Math.max(1, Math.floor((pageWords - HDR_WORDS) / readWords));

// ---- workload state (saved in the device state) ----
const prng = new Prng(S.prng);
let ops = S.ops;
let reads = S.reads;
let writes = S.writes;
let elapsedMs = S.elapsedMs; // running time (excludes pauses)
let faults = S.faults;
let readErrors = S.readErrors;
let traceIndex = S.traceIndex;
let traceLoop = S.traceLoop;
let finished = S.finished;

let reported = -1; // SEQ of the last pause we reported parked for
let stopPreOp = false; // stopped while blocked inside an access (report the pre-access state)
let lastNow = performance.now();
let sink = 0;
// PRNG state before the access in progress: what a vCPU parked inside an access reports,
// so that a restored vCPU redoes that access.
let pre0 = 0, pre1 = 0, pre2 = 0, pre3 = 0;

const msPerOp = 1000 / W.clockRatePerVcpu;
/** Workload time in ms: the virtual clock in deterministic mode, else running time. */
const clock = W.deterministic ? () => ops * msPerOp : () => elapsedMs;

function snapshot(preOp) {
  return {
    id,
    prng: preOp ? [pre0, pre1, pre2, pre3] : prng.state(),
    ops, reads, writes, elapsedMs, faults, readErrors, traceIndex, traceLoop, finished,
  };
}

function publish(blockedPfn = -1) {
  stats[0] = ops;
  stats[1] = reads;
  stats[2] = writes;
  stats[3] = elapsedMs;
  stats[4] = faults;
  stats[5] = readErrors;
  stats[6] = blockedPfn;
}

function tick() {
  const now = performance.now();
  elapsedMs += now - lastNow;
  lastNow = now;
}

/** At a safe point with CMD = PAUSE: report once per pause, then sleep until CMD changes. */
function park(preOp) {
  tick();
  for (;;) {
    const s = Atomics.load(ctrl, SEQ);
    const c = Atomics.load(ctrl, CMD);
    if (c === STOP) {
      stopPreOp = preOp;
      throw STOPPED;
    }
    if (c === RUN) break;
    if (s !== reported) {
      reported = s;
      publish();
      parentPort.postMessage({ type: 'parked', seq: s, state: snapshot(preOp) });
    }
    Atomics.wait(ctrl, SEQ, s);
  }
  lastNow = performance.now();
}

// ---- missing pages (post-copy) ----

/** Block until `pfn` is present (like a userfaultfd fault). Counts as a safe point. */
function ensurePresent(pfn) {
  const w = pfn >>> 5;
  const bit = 1 << (pfn & 31);
  if ((Atomics.load(present, w) & bit) !== 0) return;
  faults++;
  const t0 = performance.now();
  publish(pfn);
  parentPort.postMessage({ type: 'fault', pfn, vcpu: id });
  for (;;) {
    const cur = Atomics.load(present, w);
    if ((cur & bit) !== 0) break;
    const c = Atomics.load(ctrl, CMD);
    if (c === STOP) {
      stopPreOp = true;
      throw STOPPED;
    }
    if (c === PAUSE) {
      const s = Atomics.load(ctrl, SEQ);
      if (s !== reported) {
        reported = s;
        tick();
        parentPort.postMessage({ type: 'parked', seq: s, state: snapshot(true) });
      }
    }
    // installPage() sets the bit, then notifies this word.
    Atomics.wait(present, w, cur, FAULT_POLL_MS);
  }
  parentPort.postMessage({ type: 'faultDone', pfn, vcpu: id, ms: performance.now() - t0 });
  publish();
  // If a pause arrived meanwhile we may have reported parked already: stay parked (the
  // access has not started) until resumed.
  if (Atomics.load(ctrl, CMD) !== RUN) park(true);
}

// ---- accesses ----

function readPage(pfn) {
  ensurePresent(pfn);
  const ch = chunks[pfn >>> ppcShift];
  const base = (pfn & ppcMask) * pageWords;
  const hp = ch[base + 1];
  if (hp !== 0 && hp !== pfn) readErrors++; // the guest noticed a page that is not its own
  let acc = 0;
  for (let i = 0, k = base + HDR_WORDS; i < readWords; i++, k += readStride) acc ^= ch[k];
  sink ^= acc;
  reads++;
}

/** The guest write protocol (layout.ts): page, then table entry, then both dirty bits. */
function writePage(pfn) {
  const tp = tableStart + (pfn >>> entryShift);
  ensurePresent(pfn);
  ensurePresent(tp);
  const tch = chunks[tp >>> ppcShift];
  const ti = (tp & ppcMask) * pageWords + (pfn & (pageWords - 1));
  let v = (tch[ti] + 1) | 0;
  if (v === 0) v = 1;
  fillPage(chunks[pfn >>> ppcShift], (pfn & ppcMask) * pageWords, pageWords, seed, pfn, v);
  tch[ti] = v;
  // Only now, with page and table entry complete, the dirty bits (see memory.ts).
  Atomics.or(dirty, pfn >>> 5, 1 << (pfn & 31));
  Atomics.or(dirty, tp >>> 5, 1 << (tp & 31));
  writes++;
}

// ---- access pattern ----

function makeSampler(d) {
  switch (d.kind) {
    case 'uniform':
      return () => regionStart + (prng.next() % regionPages);
    case 'zipf': {
      // Continuous approximation of Zipf(s) over ranks 1..N (inverse CDF of the bounded
      // power law x^-s on [1, N+1)): O(1), no table, close to exact for N >> 1.
      const a = 1 - d.skew;
      const top = Math.pow(regionPages + 1, a) - 1;
      const logN1 = Math.log(regionPages + 1);
      const scatter = d.scatter;
      return () => {
        const u = prng.float();
        const x = Math.abs(a) < 1e-9 ? Math.exp(u * logN1) : Math.pow(top * u + 1, 1 / a);
        let rank = Math.floor(x) - 1;
        if (rank >= regionPages) rank = regionPages - 1;
        else if (rank < 0) rank = 0;
        return regionStart + ((rank * scatter) % regionPages);
      };
    }
    case 'window': {
      const { windowPages, stepPages, moveEveryMs, spread } = d;
      return () => {
        if (prng.float() < spread) return regionStart + (prng.next() % regionPages);
        const pos = (Math.floor(clock() / moveEveryMs) * stepPages) % regionPages;
        return regionStart + ((pos + (prng.next() % windowPages)) % regionPages);
      };
    }
    default:
      throw new Error(`unknown access distribution ${d.kind}`);
  }
}

function makeWriteRatio(w) {
  switch (w.kind) {
    case 'const':
      return () => w.ratio;
    case 'ramp':
      return () => w.from + (w.to - w.from) * Math.min(1, clock() / w.rampMs);
    case 'bursty':
      return () => {
        const t = clock() - w.firstAtMs;
        return t >= 0 && t % w.everyMs < w.burstMs ? w.burst : w.base;
      };
    default:
      throw new Error(`unknown write schedule ${w.kind}`);
  }
}

/** Snap a data-page index to the nearest one this vCPU owns (index % vcpus === id). */
function own(idx) {
  if (vcpus === 1) return idx;
  let o = idx - (idx % vcpus) + id;
  if (o >= regionEnd) o -= vcpus;
  if (o < regionStart) o += vcpus;
  return o;
}

function savePre() {
  const s = prng.s;
  pre0 = s[0];
  pre1 = s[1];
  pre2 = s[2];
  pre3 = s[3];
}

let step; // () => ms to wait before the next access (0 = did one), or -1 = finished
if (W.dist.kind === 'trace') {
  const T = workerData.trace;
  const times = new Float64Array(T.times);
  const pages = new Uint32Array(T.pages);
  const isWrite = new Uint8Array(T.writes);
  const n = times.length;
  const { durationMs, speed, loop } = W.trace;
  step = () => {
    for (let scanned = 0; ; scanned++) {
      if (scanned > n) return -1; // no access in the trace belongs to this vCPU
      if (traceIndex >= n) {
        if (!loop) return -1;
        traceIndex = 0;
        traceLoop++;
      }
      const idx = pages[traceIndex] % dataPages;
      if (idx % vcpus === id) break;
      traceIndex++;
    }
    if (W.pacing === 'timestamps') {
      const due = (traceLoop * durationMs + times[traceIndex]) / speed;
      if (due > elapsedMs) return due - elapsedMs;
    }
    savePre();
    const pfn = dataStart + (pages[traceIndex] % dataPages);
    if (isWrite[traceIndex]) writePage(pfn);
    else readPage(pfn);
    traceIndex++;
    ops++;
    return 0;
  };
} else {
  const sample = makeSampler(W.dist);
  const writeRatio = makeWriteRatio(W.writes);
  step = () => {
    savePre();
    if (prng.float() < writeRatio()) writePage(dataStart + own(sample()));
    else readPage(dataStart + sample());
    ops++;
    return 0;
  };
}

// ---- main loop ----

function run() {
  let paceOps = ops;
  let paceMs = elapsedMs;
  let idlePosted = false;
  for (;;) {
    // Safe point.
    const s = Atomics.load(ctrl, SEQ);
    const c = Atomics.load(ctrl, CMD);
    if (c === STOP) return;
    if (c === PAUSE) {
      park(false);
      continue;
    }
    tick();
    if (finished || (W.accessLimit > 0 && ops >= W.accessLimit)) {
      finished = true;
      publish();
      if (!idlePosted) {
        idlePosted = true;
        parentPort.postMessage({ type: 'idle', state: snapshot(false) });
      }
      Atomics.wait(ctrl, SEQ, s);
      lastNow = performance.now();
      continue;
    }
    let n = BATCH;
    if (W.pacing === 'rate') {
      const allowed = paceOps + (W.ratePerVcpu * (elapsedMs - paceMs)) / 1000;
      if (allowed - ops > W.ratePerVcpu) {
        // More than a second behind (slow host): do not burst to catch up.
        paceOps = ops;
        paceMs = elapsedMs;
      } else if (ops >= allowed) {
        Atomics.wait(ctrl, SEQ, s, Math.max(1, ((ops + 1 - allowed) / W.ratePerVcpu) * 1000));
        continue;
      }
      n = Math.min(BATCH, Math.floor(allowed - ops) + 1);
    }
    if (W.accessLimit > 0) n = Math.min(n, W.accessLimit - ops);
    for (let k = 0; k < n; k++) {
      const wait = step();
      if (wait === 0) continue;
      if (wait < 0) finished = true;
      else Atomics.wait(ctrl, SEQ, s, Math.min(wait, 50));
      break;
    }
    publish();
  }
}

try {
  publish();
  try {
    run();
  } catch (e) {
    if (e !== STOPPED) throw e;
  }
  tick();
  publish();
  parentPort.postMessage({ type: 'stopped', state: snapshot(stopPreOp), sink });
} catch (e) {
  parentPort.postMessage({ type: 'error', message: String(e?.message ?? e), stack: String(e?.stack ?? '') });
}
