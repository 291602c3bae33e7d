/** Facts about the machine and the workloads, recorded with every run. */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { resolveWorkload } from '../../guest/workloads';
import type { MachineFacts, WorkloadDoc } from './types';

export function machineFacts(): MachineFacts {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    totalMemoryBytes: os.totalmem(),
    node: process.version,
    platform: os.platform(),
    release: os.release(),
    arch: os.arch(),
    date: new Date().toISOString(),
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    loadAverageAtEnd: null,
    otherBusyProcesses: busyProcesses(),
  };
}

/** Processes other than this one using ≥ 10 % CPU right now (ps), so a noisy run says so. */
export function busyProcesses(): string[] {
  try {
    const out = execFileSync('ps', ['-eo', 'pid=,pcpu=,comm='], { encoding: 'utf8', timeout: 5000 });
    return out
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length >= 3 && Number(f[0]) !== process.pid && Number(f[1]) >= 10)
      .map((f) => `${f.slice(2).join(' ')} (pid ${f[0]}, ${f[1]}% CPU)`);
  } catch {
    return [];
  }
}

/**
 * The workload parameters every cell ran with: the profile defaults of src/guest/workloads.ts,
 * no override (fixed from the paper's descriptions before any comparison ran).
 */
export function workloadDocs(names: string[], memoryBytes = 256 * 2 ** 20): WorkloadDoc[] {
  return [...new Set(names)].map((name) => {
    const { resolved } = resolveWorkload(name, { pageSize: 4096, dataPages: Math.floor(memoryBytes / 4096), vcpus: 1 });
    return {
      name,
      description: resolved.description,
      ratePagesPerSec: resolved.ratePerVcpu,
      writes: resolved.writes,
      distribution: resolved.dist.kind === 'zipf' ? { kind: 'zipf', skew: resolved.dist.skew } : resolved.dist,
      regionFraction: Math.round((resolved.regionPages / Math.floor(memoryBytes / 4096)) * 1000) / 1000,
      source: 'src/guest/workloads.ts profile defaults, no overrides',
    };
  });
}
