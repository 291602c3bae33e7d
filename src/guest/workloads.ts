/**
 * Workload profiles of the emulated guest. A profile is resolved (with the caller's
 * overrides and the guest's size) into a JSON-safe ResolvedWorkload that the vCPU workers
 * interpret (vcpu-worker.mjs) and that travels in the device state.
 *
 * An access touches one page (a read or a full-page write), so accesses/s = pages/s.
 * Regions and working sets are fractions of the guest's data pages, so every profile works
 * from 4 MiB to 8 GiB. Rates are absolute (pages/s), like the paper's dirty rates versus its
 * 32-50 MB/s migration links; scale them with `rate` for scaled-down experiments.
 * Sources: MECHANISM.md "Workloads of the paper" and the paper's evaluation section
 * (/work/shared/paper/li-cao-2023.txt, "Memcached", "Kernel compilation", "lmbench",
 * "Scenario 1/2").
 *
 * Determinism: each vCPU draws from its own PRNG (seeded from the guest seed and the vCPU
 * id), so for a given seed the access sequence is a function of the access count alone,
 * except for the profiles whose load changes over time (kernel-compile, scenario-*,
 * trace). Those read a clock: the vCPU's running time normally, or, with
 * `deterministic: true`, a virtual clock advancing 1/rate per access, which makes every
 * profile repeatable access for access.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../common/errors';
import { parseRate } from '../common/units';
import { parseTrace, type Trace } from './trace';

export const PROFILES = ['idle', 'memcached', 'kernel-compile', 'lmbench', 'scenario-rising', 'scenario-bursty'] as const;
export type ProfileName = (typeof PROFILES)[number];

/** Caller-settable parameters. Every field is optional; unknown fields are an error. */
export interface WorkloadOverrides {
  /** Accesses (pages) per second across all vCPUs: a number, '<n>' or a byte rate such as
   *  '64MiB/s'. 0 or 'max' = unthrottled. */
  rate?: number | string;
  /** Constant write share 0..1; replaces the profile's schedule (rising/bursty included). */
  writeRatio?: number;
  /** Fraction (0..1] of the data pages the workload touches. */
  region?: number;
  /** Zipf exponent for the skewed profiles (memcached, scenario-*). */
  skew?: number;
  /** kernel-compile: working-set size as a fraction of the region, and how often it moves. */
  windowFraction?: number;
  moveEveryMs?: number;
  /** scenario-rising: write share from -> to over rampMs. */
  fromWriteRatio?: number;
  toWriteRatio?: number;
  rampMs?: number;
  /** scenario-bursty: base share, burst share, a burst of burstMs every burstEveryMs. */
  baseWriteRatio?: number;
  burstWriteRatio?: number;
  burstEveryMs?: number;
  burstMs?: number;
  /** trace: time scale (2 = twice as fast) and whether to start over at the end. */
  speed?: number;
  loop?: boolean;
  /** Use a virtual clock (1/rate per access): same seed, same accesses, whatever the timing. */
  deterministic?: boolean;
  /** Each vCPU stops after this many accesses (0 = never). */
  accessLimit?: number;
}

export interface WorkloadSpec extends WorkloadOverrides {
  /** A profile name or 'trace:<file>'. */
  profile: string;
}

export type AccessDistribution =
  | { kind: 'uniform' }
  /** Zipf(skew) over the region; rank r is page (r * scatter) mod regionPages, so hot pages are spread out. */
  | { kind: 'zipf'; skew: number; scatter: number }
  /** A working set of windowPages that advances stepPages every moveEveryMs; `spread` of accesses go anywhere in the region. */
  | { kind: 'window'; windowPages: number; stepPages: number; moveEveryMs: number; spread: number }
  | { kind: 'trace' };

export type WriteSchedule =
  | { kind: 'const'; ratio: number }
  | { kind: 'ramp'; from: number; to: number; rampMs: number }
  | { kind: 'bursty'; base: number; burst: number; everyMs: number; burstMs: number; firstAtMs: number };

export interface ResolvedWorkload {
  /** As requested: a profile name or 'trace:<file>'. */
  profile: string;
  overrides: WorkloadOverrides;
  description: string;
  /** 'rate': paced at ratePerVcpu; 'timestamps': trace times; 'none': unthrottled. */
  pacing: 'rate' | 'timestamps' | 'none';
  ratePerVcpu: number;
  /** Accesses per second per vCPU of the virtual clock (deterministic mode). */
  clockRatePerVcpu: number;
  deterministic: boolean;
  accessLimit: number;
  /** First data-page index and number of data pages of the region. */
  regionStart: number;
  regionPages: number;
  dist: AccessDistribution;
  writes: WriteSchedule;
  /** Words a read touches (a read looks at the header and a few content words). */
  readWords: number;
  trace: { file: string; accesses: number; durationMs: number; speed: number; loop: boolean; digest: string } | null;
}

export interface WorkloadGeometry {
  pageSize: number;
  dataPages: number;
  vcpus: number;
}

interface Profile {
  description: string;
  rate: number;
  region: number;
  dist: (o: WorkloadOverrides, regionPages: number, vcpus: number) => AccessDistribution;
  writes: (o: WorkloadOverrides) => WriteSchedule;
}

const zipf = (o: WorkloadOverrides, regionPages: number): AccessDistribution => ({
  kind: 'zipf',
  skew: num(o, 'skew', 0.9, 0, 5),
  scatter: scatterFor(regionPages),
});

/**
 * The profiles. Defaults and where they come from:
 */
const PROFILE_TABLE: Record<ProfileName, Profile> = {
  // A guest doing housekeeping only: timers, logs. 50 pages/s, 30 % writes over 1/256 of RAM.
  idle: {
    description: 'idle: housekeeping, 50 pages/s, 30% writes over 1/256 of RAM',
    rate: 50,
    region: 1 / 256,
    dist: () => ({ kind: 'uniform' }),
    writes: (o) => ({ kind: 'const', ratio: num(o, 'writeRatio', 0.3, 0, 1) }),
  },
  // Paper: 6 GiB VM, 4 GiB cache (2/3 of RAM), memaslap "based on set operations" with 4
  // connections. Modelled as 90 % sets, Zipf(0.9) key popularity (memaslap/YCSB-like skew)
  // over a cache of 2/3 of RAM, 40k pages/s. That dirties > 32 MiB/s of distinct pages
  // (about 55 MiB/s over 1 s on 256 MiB, 70-80 MiB/s on 6 GiB): pre-copy on a 32 MB/s link
  // does not converge, as in the paper's Fig. 1.
  memcached: {
    description: 'memcached: 90% sets, Zipf(0.9) over a cache of 2/3 of RAM, 40k pages/s',
    rate: 40_000,
    region: 2 / 3,
    dist: zipf,
    writes: (o) => ({ kind: 'const', ratio: num(o, 'writeRatio', 0.9, 0, 1) }),
  },
  // Paper: 2 GiB VM, 4 threads compiling the kernel; the lightest load (pre-copy downtime
  // 1.2 s, par-migrate < 300 ms). Modelled as a working set of 1/16 of the region (3/4 of
  // RAM: page cache and compiler processes) that moves by half its size every 2 s (one
  // batch of compilation units), 10 % of accesses anywhere in the region, 45 % writes,
  // 8k pages/s (~14 MiB/s of writes).
  'kernel-compile': {
    description: 'kernel-compile: moving working set (1/16 of 3/4 of RAM, moves every 2 s), 45% writes, 8k pages/s',
    rate: 8_000,
    region: 3 / 4,
    dist: (o, regionPages, vcpus) => {
      const windowPages = Math.max(vcpus * 4, Math.round(regionPages * num(o, 'windowFraction', 1 / 16, 0, 1)));
      return {
        kind: 'window',
        windowPages: Math.min(windowPages, regionPages),
        stepPages: Math.max(1, Math.floor(windowPages / 2)),
        moveEveryMs: num(o, 'moveEveryMs', 2000, 1, 1e9),
        spread: 0.1,
      };
    },
    writes: (o) => ({ kind: 'const', ratio: num(o, 'writeRatio', 0.45, 0, 1) }),
  },
  // Paper: 6 GiB VM, 4 threads, "2:3 read and write tests on a 4 GB memory area":
  // 60 % writes, uniform over 2/3 of RAM, 16k pages/s (~37 MiB/s of distinct pages dirtied
  // on big guests).
  lmbench: {
    description: 'lmbench: 2:3 read:write, uniform over 2/3 of RAM, 16k pages/s',
    rate: 16_000,
    region: 2 / 3,
    dist: () => ({ kind: 'uniform' }),
    writes: (o) => ({ kind: 'const', ratio: num(o, 'writeRatio', 0.6, 0, 1) }),
  },
  // Paper scenario 1: the memaslap write share rises during migration (Memcached). The
  // memcached model with the write share rising linearly from 10 % to 90 % over 60 s.
  'scenario-rising': {
    description: 'scenario-rising: memcached model, write share 10% -> 90% over 60 s',
    rate: 40_000,
    region: 2 / 3,
    dist: zipf,
    writes: (o) =>
      o.writeRatio !== undefined
        ? { kind: 'const', ratio: num(o, 'writeRatio', 0, 0, 1) }
        : { kind: 'ramp', from: num(o, 'fromWriteRatio', 0.1, 0, 1), to: num(o, 'toWriteRatio', 0.9, 0, 1), rampMs: num(o, 'rampMs', 60_000, 1, 1e12) },
  },
  // Paper scenario 2: reads:writes 10:1, occasionally 1:10. The memcached model at 1/11
  // writes, with a 2 s burst at 10/11 writes every 20 s (the first at 10 s).
  'scenario-bursty': {
    description: 'scenario-bursty: memcached model, 10:1 reads:writes with 2 s bursts of 1:10 every 20 s',
    rate: 40_000,
    region: 2 / 3,
    dist: zipf,
    writes: (o) => {
      if (o.writeRatio !== undefined) return { kind: 'const', ratio: num(o, 'writeRatio', 0, 0, 1) };
      const everyMs = num(o, 'burstEveryMs', 20_000, 1, 1e12);
      return {
        kind: 'bursty',
        base: num(o, 'baseWriteRatio', 1 / 11, 0, 1),
        burst: num(o, 'burstWriteRatio', 10 / 11, 0, 1),
        everyMs,
        burstMs: num(o, 'burstMs', 2_000, 0, everyMs),
        firstAtMs: everyMs / 2,
      };
    },
  },
};

const OVERRIDE_KEYS = new Set<string>([
  'rate', 'writeRatio', 'region', 'skew', 'windowFraction', 'moveEveryMs', 'fromWriteRatio', 'toWriteRatio', 'rampMs',
  'baseWriteRatio', 'burstWriteRatio', 'burstEveryMs', 'burstMs', 'speed', 'loop', 'deterministic', 'accessLimit',
]);

/** Names accepted by --workload (trace takes a file). */
export function workloadNames(): string[] {
  return [...PROFILES, 'trace:<file>'];
}

/** Split 'memcached' or { profile, ...overrides } into name and overrides (validated keys). */
export function normaliseWorkload(w: string | WorkloadSpec): { profile: string; overrides: WorkloadOverrides } {
  const { profile, ...overrides } = typeof w === 'string' ? { profile: w } : w;
  for (const k of Object.keys(overrides)) {
    if (!OVERRIDE_KEYS.has(k)) throw new UsageError(`workload: unknown parameter '${k}' (allowed: ${[...OVERRIDE_KEYS].join(', ')})`);
  }
  // Drop undefined so the overrides are JSON-round-trip stable.
  return { profile, overrides: JSON.parse(JSON.stringify(overrides)) as WorkloadOverrides };
}

/**
 * Where `trace:<file>` workloads may be read from: the agent's trace directory (`ferry agent
 * --trace-dir DIR` or FERRY_TRACE_DIR). A relative file is taken inside it; an absolute one
 * must be inside it; after `..` and symlinks are resolved the file must still be inside it.
 * Without a trace directory no trace file is read.
 */
let traceDirSetting: { dir: string | null } | null = null;

/** Set the trace directory of this process (the agent, from --trace-dir); null = none. */
export function setTraceDir(dir: string | null): void {
  traceDirSetting = { dir: dir === null ? null : path.resolve(dir) };
}

/** The trace directory in effect: the one set by setTraceDir, else FERRY_TRACE_DIR, else none. */
export function traceDir(): string | null {
  if (traceDirSetting) return traceDirSetting.dir;
  const env = process.env.FERRY_TRACE_DIR;
  return env ? path.resolve(env) : null;
}

const HOW_TO_SET = 'the agent reads trace files only from its trace directory: start it with --trace-dir DIR or FERRY_TRACE_DIR=DIR';

function isInside(dir: string, p: string): boolean {
  const rel = path.relative(dir, p);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

/**
 * The real path of trace `file` inside the trace directory `dir`, or a UsageError naming
 * `file` (never its content, nor where a symlink out of the directory points).
 */
export function resolveTraceFile(file: string, dir: string | null = traceDir()): string {
  if (dir === null) throw new UsageError(`workload: trace file '${file}' refused: no trace directory is configured (${HOW_TO_SET})`);
  let realDir: string;
  try {
    realDir = realpathSync(dir);
    if (!statSync(realDir).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new UsageError(`workload: the trace directory '${dir}' cannot be used: ${(e as Error).message}`);
  }
  const lexical = path.resolve(dir, file);
  if (!isInside(path.resolve(dir), lexical) && !isInside(realDir, lexical)) {
    throw new UsageError(`workload: trace file '${file}' is outside the trace directory ${dir} (${HOW_TO_SET})`);
  }
  let real: string;
  try {
    real = realpathSync(lexical);
  } catch (e) {
    throw new UsageError(`workload: cannot read trace file '${file}' in the trace directory ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!isInside(realDir, real)) throw new UsageError(`workload: trace file '${file}' leads outside the trace directory ${dir} (a symlink out of it is refused)`);
  return real;
}

/** Parsed traces by file, while the file is unchanged: a target parses before the pause, not in it. */
const traces = new Map<string, { mtimeMs: number; size: number; trace: Trace; digest: string }>();

function loadTrace(file: string): { trace: Trace; digest: string } {
  const real = resolveTraceFile(file);
  let text: string;
  let st: { mtimeMs: number; size: number };
  let fd: number | undefined;
  try {
    // O_NOFOLLOW: the checked path's last component cannot be swapped for a symlink in between.
    fd = openSync(real, fsc.O_RDONLY | (fsc.O_NOFOLLOW ?? 0));
    const fst = fstatSync(fd);
    if (!fst.isFile()) throw new Error('not a regular file');
    st = { mtimeMs: fst.mtimeMs, size: fst.size };
    const known = traces.get(real);
    if (known && known.mtimeMs === st.mtimeMs && known.size === st.size) return known;
    text = readFileSync(fd, 'utf8');
  } catch (e) {
    throw new UsageError(`workload: cannot read trace file '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const entry = { mtimeMs: st.mtimeMs, size: st.size, trace: parseTrace(text, file), digest: digest(text) };
  if (traces.size >= 4) traces.delete(traces.keys().next().value!);
  traces.set(real, entry);
  return entry;
}

/**
 * For commands that start their own agents (`ferry demo`, `ferry bench --suite regret`):
 * the trace files the user named on this machine, as absolute real paths, and the directory
 * holding them all, for those agents' --trace-dir. Null when no workload is a trace.
 */
export function localTraceSetup(workloads: readonly string[], option = '--workload'): { traceDir: string | null; workloads: string[] } {
  const files: string[] = [];
  const out = workloads.map((w) => {
    if (!w.startsWith('trace:')) return w;
    const file = w.slice('trace:'.length);
    if (file === '') throw new UsageError(`${option}: 'trace:' needs a file, e.g. trace:./accesses.trace`);
    let real: string;
    try {
      real = realpathSync(file);
    } catch {
      throw new UsageError(`${option}: trace file ${file} does not exist`);
    }
    files.push(real);
    return `trace:${real}`;
  });
  if (files.length === 0) return { traceDir: null, workloads: out };
  let dir = path.dirname(files[0]!);
  for (const f of files) while (!isInside(dir, f)) dir = path.dirname(dir);
  return { traceDir: dir, workloads: out };
}

/** Parse a trace workload's file ahead of a resume (a no-op for other workloads); errors wait for the resume. */
export function prepareWorkload(workload: string): void {
  if (!workload.startsWith('trace:')) return;
  try {
    loadTrace(workload.slice('trace:'.length));
  } catch {
    // The resume reports it with the device state's settings.
  }
}

/**
 * Resolve a profile for a guest. For 'trace:<file>' the file is read and parsed here
 * (the Trace is returned next to the JSON-safe description).
 */
export function resolveWorkload(w: string | WorkloadSpec, geo: WorkloadGeometry): { resolved: ResolvedWorkload; trace: Trace | null } {
  const { profile, overrides: o } = normaliseWorkload(w);
  if (geo.dataPages < geo.vcpus) throw new UsageError(`workload: ${geo.dataPages} data pages cannot be shared by ${geo.vcpus} vCPUs`);
  const deterministic = o.deterministic ?? false;
  if (typeof deterministic !== 'boolean') throw new UsageError('workload: deterministic must be true or false');
  const accessLimit = num(o, 'accessLimit', 0, 0, Number.MAX_SAFE_INTEGER);
  const rate = parseAccessRate(o.rate, geo.pageSize);

  if (profile.startsWith('trace:')) {
    const file = profile.slice('trace:'.length);
    if (file === '') throw new UsageError("workload: 'trace:' needs a file, e.g. trace:./accesses.trace");
    const { trace, digest: traceDigest } = loadTrace(file);
    const speed = num(o, 'speed', 1, 1e-6, 1e6);
    const loop = o.loop ?? true;
    const unthrottled = o.rate === 'max' || o.rate === 0;
    return {
      resolved: {
        profile,
        overrides: o,
        description: `trace ${file}: ${trace.times.length} accesses over ${trace.durationMs} ms`,
        pacing: unthrottled ? 'none' : 'timestamps',
        ratePerVcpu: 0,
        clockRatePerVcpu: Math.max(1, (trace.times.length / trace.durationMs) * 1000 * speed / geo.vcpus),
        deterministic,
        accessLimit,
        regionStart: 0,
        regionPages: geo.dataPages,
        dist: { kind: 'trace' },
        writes: { kind: 'const', ratio: 0 },
        readWords: 16,
        trace: { file, accesses: trace.times.length, durationMs: trace.durationMs, speed, loop, digest: traceDigest },
      },
      trace,
    };
  }

  const p = (PROFILE_TABLE as Record<string, Profile | undefined>)[profile];
  if (!p) throw new UsageError(`workload: unknown profile '${profile}' (allowed: ${workloadNames().join(', ')})`);
  const regionPages = Math.min(geo.dataPages, Math.max(geo.vcpus, Math.round(geo.dataPages * num(o, 'region', p.region, 1e-9, 1))));
  const ratePerVcpu = (rate ?? p.rate) / geo.vcpus;
  return {
    resolved: {
      profile,
      overrides: o,
      description: p.description,
      pacing: ratePerVcpu > 0 ? 'rate' : 'none',
      ratePerVcpu,
      clockRatePerVcpu: ratePerVcpu > 0 ? ratePerVcpu : p.rate / geo.vcpus,
      deterministic,
      accessLimit,
      regionStart: 0,
      regionPages,
      dist: p.dist(o, regionPages, geo.vcpus),
      writes: p.writes(o),
      readWords: 16,
      trace: null,
    },
    trace: null,
  };
}

/** Pages/s from a rate override; 0 = unthrottled, undefined = profile default. */
export function parseAccessRate(rate: number | string | undefined, pageSize: number): number | undefined {
  if (rate === undefined) return undefined;
  if (rate === 'max') return 0;
  if (typeof rate === 'number') {
    if (!(rate >= 0) || !Number.isFinite(rate)) throw new UsageError(`workload: rate ${rate} is not a number of pages/s >= 0 (or 'max')`);
    return rate;
  }
  if (/^\s*\d+(\.\d+)?\s*$/.test(rate)) return Number(rate);
  return parseRate(rate, 'workload rate') / pageSize;
}

function num(o: WorkloadOverrides, key: keyof WorkloadOverrides, dflt: number, min: number, max: number): number {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !(v >= min && v <= max)) {
    throw new UsageError(`workload: ${key} = ${JSON.stringify(v)} is not a number in ${min}..${max}`);
  }
  return v;
}

/** A multiplier coprime with n, near n/phi, small enough that rank*scatter stays exact (< 2^53). */
function scatterFor(n: number): number {
  if (n <= 2) return 1;
  let m = Math.min(Math.round(n * 0.6180339887), 1 << 21) | 1;
  while (gcd(m, n) !== 1) m += 2;
  return m % n || 1;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

function digest(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return `fnv1a32:${(h >>> 0).toString(16)}:${text.length}`;
}
