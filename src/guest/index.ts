/** The emulated guest: the VM that ferry's emulated hypervisor driver migrates. */
export { GuestMemory, DEFAULT_CHUNK_BYTES, type GuestMemoryDescriptor, type GuestMemoryOptions } from './memory';
export {
  computeLayout,
  formatMemory,
  readLayout,
  tablePfn,
  tableVersion,
  verify,
  writeDataPage,
  LAYOUT_FORMAT,
  VERIFY_METHOD,
  type Layout,
  type Mismatch,
  type VerifyReport,
} from './layout';
export {
  PROFILES,
  normaliseWorkload,
  parseAccessRate,
  resolveWorkload,
  workloadNames,
  type AccessDistribution,
  type ProfileName,
  type ResolvedWorkload,
  type WorkloadGeometry,
  type WorkloadOverrides,
  type WorkloadSpec,
  type WriteSchedule,
} from './workloads';
export { formatTrace, parseTrace, type Trace, type TraceAccess } from './trace';
export {
  EmulatedGuest,
  DEVICE_STATE_FORMAT,
  type FaultStats,
  type GuestDeviceState,
  type GuestOptions,
  type GuestRunState,
  type GuestStats,
  type VcpuState,
  type VcpuStats,
} from './guest';
