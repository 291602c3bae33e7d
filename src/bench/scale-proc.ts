/**
 * CPU time and memory of local processes, from /proc (Linux): what the scale bench reports
 * for the controller, the agents and the Temporal services while an evacuation runs.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

let clockTicks: number | undefined;
/** Clock ticks per second of /proc/<pid>/stat's times (getconf CLK_TCK; 100 on Linux). */
export function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User + system CPU time of a live process in seconds (threads included), or null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields resume after the command name's last ')': index 0 is field 3 (state); utime is field 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / ticksPerSecond();
  } catch {
    return null;
  }
}

/** Resident set size in bytes (VmRSS), or null when the process is gone. */
export function rssBytes(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export interface GroupUsage {
  /** Processes in the group. */
  processes: number;
  /** CPU seconds the group used during the window (all its processes together). */
  cpuSeconds: number;
  /** cpuSeconds / wall seconds × 100: 100 = one core busy the whole time. */
  cpuPercentOfOneCore: number;
  /** The most CPU one process of the group used, as % of one core. */
  maxProcessCpuPercent: number;
  /** Highest sum of the group's RSS over the samples. */
  peakRssBytes: number;
  /** Highest RSS of any one of its processes over the samples. */
  peakProcessRssBytes: number;
}

/**
 * Samples RSS every `everyMs` between start() and stop(); CPU is the difference of the
 * processes' CPU times between the two.
 */
export class ProcSampler {
  private readonly cpu0 = new Map<number, number>();
  private readonly peakProc = new Map<number, number>();
  private readonly peakGroup = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private t0 = 0;

  constructor(
    private readonly groups: Record<string, number[]>,
    private readonly everyMs = 500,
  ) {}

  start(): void {
    this.t0 = Date.now();
    for (const pid of Object.values(this.groups).flat()) this.cpu0.set(pid, cpuSeconds(pid) ?? 0);
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
    this.timer.unref();
  }

  private sample(): void {
    for (const [name, pids] of Object.entries(this.groups)) {
      let sum = 0;
      for (const pid of pids) {
        const r = rssBytes(pid) ?? 0;
        sum += r;
        this.peakProc.set(pid, Math.max(this.peakProc.get(pid) ?? 0, r));
      }
      this.peakGroup.set(name, Math.max(this.peakGroup.get(name) ?? 0, sum));
    }
  }

  stop(): { wallSeconds: number; groups: Record<string, GroupUsage> } {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    const wallSeconds = (Date.now() - this.t0) / 1000;
    const groups: Record<string, GroupUsage> = {};
    for (const [name, pids] of Object.entries(this.groups)) {
      const per = pids.map((pid) => Math.max(0, (cpuSeconds(pid) ?? this.cpu0.get(pid) ?? 0) - (this.cpu0.get(pid) ?? 0)));
      const total = per.reduce((a, b) => a + b, 0);
      groups[name] = {
        processes: pids.length,
        cpuSeconds: round(total, 2),
        cpuPercentOfOneCore: round((total / wallSeconds) * 100, 1),
        maxProcessCpuPercent: round((Math.max(0, ...per) / wallSeconds) * 100, 1),
        peakRssBytes: this.peakGroup.get(name) ?? 0,
        peakProcessRssBytes: Math.max(0, ...pids.map((p) => this.peakProc.get(p) ?? 0)),
      };
    }
    return { wallSeconds: round(wallSeconds, 2), groups };
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The q-quantile (nearest rank) of numbers; NaN for none. */
export function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

export const median = (values: number[]): number => quantile(values, 0.5);
