/**
 * The emulated hypervisor: VMs are EmulatedGuests living in the agent process — RAM in
 * SharedArrayBuffers, vCPUs in worker threads. Incoming guests (the target side of a
 * migration) reserve their memory at prepare and become VMs when they resume.
 */
import { EmulatedGuest } from '../guest';
import { GuestMemory } from '../guest/memory';
import type { HypervisorDriver, VmInfo, VmSpec, VmState } from './driver';

interface Vm {
  spec: VmSpec;
  guest: EmulatedGuest;
  state: VmState;
}

interface Incoming {
  name: string;
  memory: GuestMemory;
  spec: VmSpec;
}

export class EmulatedDriver implements HypervisorDriver {
  readonly kind = 'emulated' as const;
  private readonly vms = new Map<string, Vm>();
  private readonly incoming = new Map<string, Incoming>();

  constructor(readonly opts: { hostId: string }) {}

  private info(v: Vm): VmInfo {
    return { ...v.spec, state: v.state, driver: 'emulated' };
  }

  listVms(): VmInfo[] {
    const out = [...this.vms.values()].map((v) => this.info(v));
    for (const i of this.incoming.values()) out.push({ ...i.spec, state: 'incoming', driver: 'emulated' });
    return out;
  }

  describe(name: string): VmInfo | null {
    const v = this.vms.get(name);
    if (v) return this.info(v);
    const i = this.incoming.get(name);
    return i ? { ...i.spec, state: 'incoming', driver: 'emulated' } : null;
  }

  guest(name: string): EmulatedGuest | null {
    return this.vms.get(name)?.guest ?? null;
  }

  setState(name: string, state: VmState): void {
    const v = this.vms.get(name);
    if (v) v.state = state;
  }

  async createVm(spec: VmSpec): Promise<VmInfo> {
    const guest = EmulatedGuest.create({
      name: spec.name,
      memoryBytes: spec.memoryBytes,
      vcpus: spec.vcpus,
      seed: spec.seed,
      // rate 0/undefined = the profile's default rate.
      workload: spec.rate ? { profile: spec.workload, rate: spec.rate } : spec.workload,
    });
    await guest.start();
    const vm: Vm = { spec, guest, state: 'running' };
    this.vms.set(spec.name, vm);
    return this.info(vm);
  }

  async destroyVm(name: string): Promise<void> {
    const v = this.vms.get(name);
    this.vms.delete(name);
    this.incoming.delete(name);
    await v?.guest.stop();
  }

  /**
   * Target side: reserve RAM for a guest that is on its way here. `fresh`: allocated now, so
   * every page holds zeros; memory reserved before (an earlier attempt) may hold anything.
   */
  reserveIncoming(spec: VmSpec, pageSize: number): { memory: GuestMemory; fresh: boolean } {
    const existing = this.incoming.get(spec.name);
    if (existing) return { memory: existing.memory, fresh: false };
    const memory = GuestMemory.create(spec.memoryBytes, { pageSize });
    this.incoming.set(spec.name, { name: spec.name, memory, spec });
    return { memory, fresh: true };
  }

  incomingMemory(name: string): GuestMemory | null {
    return this.incoming.get(name)?.memory ?? null;
  }

  /** Target side: the incoming guest becomes a VM of this host. */
  adoptIncoming(name: string, guest: EmulatedGuest): void {
    const i = this.incoming.get(name);
    if (!i) throw new Error(`no incoming guest ${name}`);
    this.incoming.delete(name);
    this.vms.set(name, { spec: i.spec, guest, state: 'running' });
  }

  dropIncoming(name: string): void {
    this.incoming.delete(name);
  }

  allocatedBytes(): number {
    let n = 0;
    for (const v of this.vms.values()) n += v.spec.memoryBytes;
    for (const i of this.incoming.values()) n += i.spec.memoryBytes;
    return n;
  }

  async close(): Promise<void> {
    await Promise.all([...this.vms.values()].map((v) => v.guest.stop()));
    this.vms.clear();
    this.incoming.clear();
  }
}
