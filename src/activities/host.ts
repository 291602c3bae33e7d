/**
 * Activities every host agent serves on its own task queue (`ferry-host-<id>`): host facts
 * and VM lifecycle. Migration steps live per engine and side: emulated-source.ts,
 * emulated-target.ts, qemu-source.ts, qemu-target.ts.
 */
import os from 'node:os';
import type { ClusterKeys } from '../common/cluster-key';
import type { HypervisorDriver, VmInfo } from '../hypervisor/driver';
import { HOST_ID_RE, VM_NAME_RE } from '../common/names';
import { userError } from './errors';

export interface HostContext {
  hostId: string;
  driver: HypervisorDriver;
  /** Memory this host offers to guests. */
  memoryCapacityBytes: number;
  /** host:port of this agent's channel-2 listener. */
  dataAddress: string;
  storageDir: string;
  startedAtMs: number;
  /** The cluster keys the agent-to-agent secrets are derived from (null: none configured). */
  channelKeys?: ClusterKeys | null;
}

export interface HostFacts {
  hostId: string;
  driver: string;
  memoryCapacityBytes: number;
  memoryAllocatedBytes: number;
  memoryFreeBytes: number;
  vms: VmInfo[];
  dataAddress: string;
  pid: number;
  hostname: string;
  uptimeMs: number;
}

export interface VmCreateInput {
  name: string;
  memoryBytes: number;
  vcpus?: number;
  workload: string;
  seed?: number;
  rate?: number;
}

export function createHostActivities(ctx: HostContext) {
  const facts = (): HostFacts => {
    const allocated = ctx.driver.allocatedBytes();
    return {
      hostId: ctx.hostId,
      driver: ctx.driver.kind,
      memoryCapacityBytes: ctx.memoryCapacityBytes,
      memoryAllocatedBytes: allocated,
      memoryFreeBytes: Math.max(0, ctx.memoryCapacityBytes - allocated),
      vms: ctx.driver.listVms(),
      dataAddress: ctx.dataAddress,
      pid: process.pid,
      hostname: os.hostname(),
      uptimeMs: Date.now() - ctx.startedAtMs,
    };
  };

  return {
    async hostFacts(): Promise<HostFacts> {
      return facts();
    },

    /** Agent wall clock; the overhead bench's floor (pingLoopWorkflow). */
    async ping(): Promise<number> {
      return Date.now();
    },

    async vmList(): Promise<VmInfo[]> {
      return ctx.driver.listVms();
    },

    async vmCreate(input: VmCreateInput): Promise<VmInfo> {
      if (!input || typeof input.name !== 'string' || !VM_NAME_RE.test(input.name)) {
        throw userError('InvalidInput', `vm name '${String(input?.name)}' is invalid (letters, digits, . _ -; at most 63)`);
      }
      if (!Number.isSafeInteger(input.memoryBytes) || input.memoryBytes <= 0) {
        throw userError('InvalidInput', `memory for ${input.name} must be a positive number of bytes`);
      }
      const unsupported = ctx.driver.checkWorkload?.(input.workload);
      if (unsupported) throw userError('InvalidInput', unsupported);
      const existing = ctx.driver.describe(input.name);
      if (existing) {
        // Idempotent: creating the same VM twice (a retried activity) returns it.
        if (existing.memoryBytes === input.memoryBytes && existing.workload === input.workload) return existing;
        throw userError('Conflict', `vm ${input.name} already exists on ${ctx.hostId} with other settings`);
      }
      const free = ctx.memoryCapacityBytes - ctx.driver.allocatedBytes();
      if (input.memoryBytes > free) {
        throw userError(
          'InsufficientCapacity',
          `host ${ctx.hostId} has ${free} bytes free, vm ${input.name} needs ${input.memoryBytes}`,
        );
      }
      return ctx.driver.createVm({
        name: input.name,
        memoryBytes: input.memoryBytes,
        vcpus: input.vcpus ?? 1,
        workload: input.workload,
        seed: input.seed ?? 1,
        rate: input.rate,
      });
    },

    /** Take over a running QEMU by its QMP socket (driver qemu). */
    async vmAttach(input: { name: string; qmpPath: string; serialPath?: string | null }): Promise<VmInfo> {
      if (!input || typeof input.name !== 'string' || !VM_NAME_RE.test(input.name)) throw userError('InvalidInput', `vm name '${String(input?.name)}' is invalid (letters, digits, . _ -; at most 63)`);
      if (typeof input.qmpPath !== 'string' || !input.qmpPath.startsWith('/')) throw userError('InvalidInput', 'the QMP socket must be an absolute path');
      const d = ctx.driver as HypervisorDriver & { attachExisting?: (n: string, q: string, s: string | null) => Promise<VmInfo> };
      if (!d.attachExisting) throw userError('InvalidInput', `host ${ctx.hostId} runs the ${ctx.driver.kind} driver: only QEMU hosts attach guests`);
      const existing = ctx.driver.describe(input.name);
      if (existing) throw userError('Conflict', `vm ${input.name} already exists on ${ctx.hostId}`);
      try {
        return await d.attachExisting(input.name, input.qmpPath, input.serialPath ?? null);
      } catch (e) {
        throw userError('InvalidInput', (e as Error).message);
      }
    },

    async vmDestroy(name: string): Promise<{ destroyed: boolean }> {
      if (!ctx.driver.describe(name)) return { destroyed: false };
      await ctx.driver.destroyVm(name);
      return { destroyed: true };
    },
  };
}

export type HostActivities = ReturnType<typeof createHostActivities>;

export function validHostId(id: string): boolean {
  return HOST_ID_RE.test(id);
}
