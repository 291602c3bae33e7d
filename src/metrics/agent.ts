/**
 * Host-agent metrics (Prometheus): what the agent measures itself, observed from the
 * results of its activities by a worker interceptor, so the activities stay as they are.
 *
 *   ferry_migration_bytes_total{channel}            migration-network | storage-write | storage-read
 *   ferry_migration_remaining_pages{vm,role}        dirty pages left to send (source), missing pages (target)
 *   ferry_migration_dirty_rate_pages_per_second{vm} pages dirtied per second during the last iteration
 *   ferry_migration_lambda{vm}                      convergence factor λ of the last iteration
 *   ferry_migration_iterations_total
 *   ferry_postcopy_fault_latency_seconds            histogram of post-copy fault latencies (target)
 *   ferry_postcopy_faults_total
 *   ferry_postcopy_duration_seconds                 histogram: target resume → all pages present
 *   ferry_agent_activity_duration_seconds{activity,outcome}
 *   ferry_agent_vms, ferry_agent_memory_free_bytes, ferry_agent_memory_capacity_bytes
 */
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DrainResult, IterationResult, PbDataResult, PushResult, ResumeResult, StaticMergeResult, StaticSaveResult, StepRef, StopAndCopyResult, SwitchResult } from '../activities/types';
import type { HypervisorDriver } from '../hypervisor/driver';
import type { EmulatedDriver } from '../hypervisor/emulated';
import { lambdaOf } from '../policy/convergence';

export const FAULT_LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2];

export interface AgentMetrics {
  registry: Registry;
  interceptor: ActivityInterceptorsFactory;
}

export function createAgentMetrics(opts: { hostId: string; driver: HypervisorDriver & { guest?: EmulatedDriver['guest'] }; memoryCapacityBytes: number }): AgentMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ host: opts.hostId });
  collectDefaultMetrics({ register: registry });
  const bytes = new Counter({ name: 'ferry_migration_bytes_total', help: 'Bytes moved by migrations, per channel', labelNames: ['channel'], registers: [registry] });
  for (const c of ['migration-network', 'storage-write', 'storage-read']) bytes.inc({ channel: c }, 0);
  const remaining = new Gauge({ name: 'ferry_migration_remaining_pages', help: 'Pages still to move: dirty on the source, missing on the target', labelNames: ['vm', 'role'], registers: [registry] });
  const dirtyRate = new Gauge({ name: 'ferry_migration_dirty_rate_pages_per_second', help: 'Pages the guest dirtied per second during the last iteration', labelNames: ['vm'], registers: [registry] });
  const lambda = new Gauge({ name: 'ferry_migration_lambda', help: 'Convergence factor λ of the last iteration (pages(i+1)/pages(i))', labelNames: ['vm'], registers: [registry] });
  const iterations = new Counter({ name: 'ferry_migration_iterations_total', help: 'Dirty-page iterations run on this host', registers: [registry] });
  const faultLatency = new Histogram({ name: 'ferry_postcopy_fault_latency_seconds', help: 'Post-copy fault latency: vCPU fault to page installed (target)', buckets: FAULT_LATENCY_BUCKETS, registers: [registry] });
  const faults = new Counter({ name: 'ferry_postcopy_faults_total', help: 'Post-copy faults served on this host as target', registers: [registry] });
  const postcopy = new Histogram({
    name: 'ferry_postcopy_duration_seconds',
    help: 'Post-copy duration on the target: resume to every page present',
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  const activity = new Histogram({
    name: 'ferry_agent_activity_duration_seconds',
    help: 'Activity executions on this agent',
    labelNames: ['activity', 'outcome'],
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300],
    registers: [registry],
  });
  new Gauge({
    name: 'ferry_agent_vms',
    help: 'VMs on this host by state',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const v of opts.driver.listVms()) this.inc({ state: v.state });
    },
  });
  new Gauge({
    name: 'ferry_agent_memory_free_bytes',
    help: 'Memory this host still offers to guests',
    registers: [registry],
    collect() {
      this.set(Math.max(0, opts.memoryCapacityBytes - opts.driver.allocatedBytes()));
    },
  });
  new Gauge({ name: 'ferry_agent_memory_capacity_bytes', help: 'Memory this host offers to guests', registers: [registry] }).set(opts.memoryCapacityBytes);

  const resumedAt = new Map<string, number>();
  const forget = (vm: string): void => {
    remaining.remove({ vm, role: 'source' });
    remaining.remove({ vm, role: 'target' });
    dirtyRate.remove({ vm });
    lambda.remove({ vm });
  };

  const observe = (name: string, ref: StepRef | string | undefined, r: unknown): void => {
    const vm = typeof ref === 'string' ? ref : (ref?.vm ?? 'unknown');
    switch (name) {
      case 'runIteration': {
        const it = r as IterationResult;
        iterations.inc();
        bytes.inc({ channel: 'migration-network' }, it.bytes);
        remaining.set({ vm, role: 'source' }, it.dirtyAfter);
        if (it.durationMs > 0) dirtyRate.set({ vm }, (it.dirtyAfter * 1000) / it.durationMs);
        const l = lambdaOf(it);
        if (Number.isFinite(l)) lambda.set({ vm }, l);
        break;
      }
      case 'stopAndCopy':
        bytes.inc({ channel: 'migration-network' }, (r as StopAndCopyResult).bytes);
        remaining.set({ vm, role: 'source' }, 0);
        break;
      case 'switchToPostcopy':
        bytes.inc({ channel: 'migration-network' }, (r as SwitchResult).bytes);
        remaining.set({ vm, role: 'source' }, (r as SwitchResult).missingPages);
        break;
      case 'pushPostcopy':
        bytes.inc({ channel: 'migration-network' }, (r as PushResult).bytes);
        break;
      case 'saveStatic':
        bytes.inc({ channel: 'storage-write' }, (r as StaticSaveResult).bytesWritten);
        break;
      case 'writePbData':
        if (r) bytes.inc({ channel: 'storage-write' }, (r as PbDataResult).bytesWritten);
        break;
      case 'mergeStatic':
        bytes.inc({ channel: 'storage-read' }, (r as StaticMergeResult).bytesRead);
        break;
      case 'resumeTarget':
        resumedAt.set(typeof ref === 'object' ? ref.migrationId : vm, (r as ResumeResult).resumedAtMs);
        break;
      case 'drainPostcopy': {
        const d = r as DrainResult;
        bytes.inc({ channel: 'storage-read' }, d.storageBytesRead);
        faults.inc(d.faults);
        const key = typeof ref === 'object' ? ref.migrationId : vm;
        const t0 = resumedAt.get(key);
        if (t0 !== undefined) postcopy.observe(Math.max(0, d.completedAtMs - t0) / 1000);
        resumedAt.delete(key);
        // Every fault's latency, as the guest measured it (the report carries only p50/p99/max).
        const lat = opts.driver.guest?.(vm)?.faultStats().latenciesMs ?? [];
        for (const ms of lat) faultLatency.observe(ms / 1000);
        remaining.set({ vm, role: 'target' }, 0);
        break;
      }
      case 'releaseSource':
      case 'rollbackSource':
        // The last λ and dirty rate stay visible until the VM is destroyed.
        remaining.set({ vm, role: 'source' }, 0);
        break;
      case 'vmDestroy':
        forget(typeof ref === 'string' ? ref : vm);
        break;
      default:
        break;
    }
  };

  const interceptor: ActivityInterceptorsFactory = (ctx) => ({
    inbound: {
      async execute(input, next) {
        const name = ctx.info.activityType;
        const t0 = performance.now();
        try {
          const r = await next(input);
          activity.observe({ activity: name, outcome: 'ok' }, (performance.now() - t0) / 1000);
          try {
            observe(name, input.args[0] as StepRef | string | undefined, r);
          } catch {
            // Metrics never fail an activity.
          }
          return r;
        } catch (e) {
          activity.observe({ activity: name, outcome: 'error' }, (performance.now() - t0) / 1000);
          throw e;
        }
      },
    },
  });
  return { registry, interceptor };
}
