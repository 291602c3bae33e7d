/**
 * What a host agent needs from a hypervisor. The emulated driver implements all of it;
 * the qemu driver implements what stock QEMU exposes through QMP.
 */
export type VmState = 'running' | 'paused' | 'incoming' | 'migrating' | 'stopped';

export interface VmInfo {
  name: string;
  memoryBytes: number;
  vcpus: number;
  state: VmState;
  workload: string;
  seed: number;
  driver: string;
}

export interface VmSpec {
  name: string;
  memoryBytes: number;
  vcpus: number;
  workload: string;
  seed: number;
  /** Workload rate override in pages/s (0 = the profile's default). */
  rate?: number;
  /** QEMU guests attached by ferry (not launched by it): their own command line, less the
   * monitor, pidfile, serial and daemonize options ferry sets itself. */
  qemuArgs?: string[];
}

export interface HypervisorDriver {
  readonly kind: 'emulated' | 'qemu';
  listVms(): VmInfo[];
  describe(name: string): VmInfo | null;
  createVm(spec: VmSpec): Promise<VmInfo>;
  destroyVm(name: string): Promise<void>;
  /** Bytes of guest memory this driver has allocated to VMs (running or incoming). */
  allocatedBytes(): number;
  /** Why this driver cannot run that workload (null = it can). */
  checkWorkload?(workload: string): string | null;
  close(): Promise<void>;
}
