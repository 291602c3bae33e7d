/**
 * The emulated hypervisor: VMs are EmulatedGuests living in the agent process.
 */
import type { HypervisorDriver, VmInfo, VmSpec } from './driver';

export class EmulatedDriver implements HypervisorDriver {
  readonly kind = 'emulated' as const;
  private readonly vms = new Map<string, VmInfo>();

  constructor(readonly opts: { hostId: string }) {}

  listVms(): VmInfo[] {
    return [...this.vms.values()];
  }

  describe(name: string): VmInfo | null {
    return this.vms.get(name) ?? null;
  }

  async createVm(spec: VmSpec): Promise<VmInfo> {
    const info: VmInfo = { ...spec, state: 'running', driver: 'emulated' };
    this.vms.set(spec.name, info);
    return info;
  }

  async destroyVm(name: string): Promise<void> {
    this.vms.delete(name);
  }

  allocatedBytes(): number {
    let n = 0;
    for (const v of this.vms.values()) n += v.memoryBytes;
    return n;
  }

  async close(): Promise<void> {
    this.vms.clear();
  }
}
