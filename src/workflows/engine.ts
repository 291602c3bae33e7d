/**
 * The engine port: what the runbook asks of a hypervisor engine, and what an engine can do.
 *
 * The runbook (migration.ts) never branches on a driver name. It asks the engine for each
 * step (prepare the target, prepare the source, one pre-copy round, the switch, post-copy,
 * verification, release) and asks its capabilities where the mechanism differs (a static
 * snapshot over the storage network, PbData, post-copy recovery over a second network, the
 * guest verifying itself). Engines: emulated (engine-emulated.ts), QEMU (engine-qemu.ts).
 *
 * The engine is chosen inside the workflow from the hosts' own facts (`hostFacts` on each
 * agent), so every entry — CLI, API, evacuation, retry — gets the same answer.
 */
import type { VerifyResult } from '../activities/types';
import type { HostFacts } from '../activities/host';
import { usesParMigrate, type StrategyName } from '../policy/types';
import type { MigrationReport, ReportIteration } from './report';

export type EngineName = 'emulated' | 'qemu';

export interface EngineCaps {
  /** par-migrate: the bulk pass goes to StaticData over the storage network and is merged at the target. */
  staticSnapshot: boolean;
  /** PbData: at the switch the pages still missing on the target also go to shared storage. */
  pbdata: boolean;
  /** A post-copy whose migration link dies is resumed over a second network. */
  postcopyRecovery: boolean;
  /** The guest checks its own memory on the target (else ferry compares pages). */
  guestSelfCheck: boolean;
  /** set-bandwidth also paces post-copy (else post-copy is paced by the guest's faults). */
  bandwidthAfterSwitch: boolean;
  /** Pre-copy passes run on by themselves and ferry watches them (else each round is one of ferry's activities). */
  passesRunOn: boolean;
  /** The source can be armed to switch to post-copy the moment the StaticData merge is done (switchWhenMerged). */
  armedSwitch: boolean;
}

export const ENGINE_CAPS: Record<EngineName, EngineCaps> = {
  emulated: { staticSnapshot: true, pbdata: true, postcopyRecovery: false, guestSelfCheck: false, bandwidthAfterSwitch: false, passesRunOn: false, armedSwitch: false },
  qemu: { staticSnapshot: true, pbdata: false, postcopyRecovery: true, guestSelfCheck: true, bandwidthAfterSwitch: true, passesRunOn: true, armedSwitch: true },
};

/** What the source says about the VM before anything moves. */
export interface VmFacts {
  workload: string;
  memoryBytes: number;
  pageCount: number;
  pageSize: number;
  vcpus: number;
  /** Non-zero pages, when asked for and the engine can count them (counting may stop at the asked limit). */
  nonZeroPages?: number;
}

export interface DescribeOptions {
  /** par-migrate's worth test: count the guest's non-zero pages up to this many bytes of them. */
  countNonZeroUpToBytes?: number;
}

/** One pre-copy round as the engine measured it, or the engine's word that nothing is left. */
export type RoundResult =
  | { kind: 'round'; iteration: Omit<ReportIteration, 'lambda' | 'startedAtMs'> }
  | { kind: 'converged'; reason: string };

/** The source's answer to a rollback: only `guestRunning: true` lets the runbook say "rolled back". */
export interface SourceRollback {
  guestRunning: boolean;
  note: string;
  verification: VerifyResult | null;
}

/** How post-copy ended: the engine may report that it could not finish (the guest is split). */
export type PostcopyEnd = { done: true; note: string | null } | { done: false; why: string };

/** The target's verification, with what the engine learnt on the way (e.g. the guest's resume time). */
export type TargetVerification = VerifyResult;

/** The measured fields an engine contributes to the report. */
export type EngineReport = Pick<MigrationReport, 'downtimeMs' | 'postcopyDurationMs' | 'bytes' | 'stopAndCopy' | 'static' | 'postcopy'> &
  Partial<Pick<MigrationReport, 'driver' | 'recoveries' | 'digests'>>;

export interface Engine {
  readonly name: EngineName;
  readonly caps: EngineCaps;
  describe(opts?: DescribeOptions): Promise<VmFacts>;
  prepareTarget(vm: VmFacts): Promise<void>;
  abortTarget(): Promise<unknown>;
  /** Connect the source to the prepared target and start tracking dirty pages. */
  prepareSource(bandwidthBytesPerSec: number): Promise<{ startedAtMs: number }>;
  rollbackSource(): Promise<SourceRollback>;
  setBandwidth(bandwidthBytesPerSec: number): Promise<void>;
  /** caps.staticSnapshot only. */
  saveStatic(): Promise<{ bytesWritten: number }>;
  mergeStatic(): Promise<unknown>;
  removeStaticData(): Promise<unknown>;
  /** One pre-copy round; `startWhen` (engines with discrete rounds) holds its start until it is worth sending. */
  round(index: number, bulk: boolean, startWhen?: { worthPages: number; maxWaitMs: number }): Promise<RoundResult>;
  /**
   * caps.armedSwitch only: switch to post-copy on the source the moment the target reports
   * the StaticData merge done (no round trip through the workflow). Resolves with whether it
   * switched; cancelled to disarm. The runbook's switch step follows either way.
   */
  switchWhenMerged?(): Promise<{ switched: boolean; note: string }>;
  /** Pause, send the rest, resume on the target. */
  stopAndCopy(): Promise<void>;
  /** Pause, hand the missing set over, resume on the target (PbData sync first when asked). */
  switchToPostcopy(pbdata: 'sync' | 'async' | 'off'): Promise<{ missingPages: number }>;
  postcopy(pbdata: 'sync' | 'async' | 'off', workflowStartedAt: number): Promise<PostcopyEnd>;
  verifyTarget(): Promise<TargetVerification>;
  /** Stop the source's paused copy; a problem is reported, never thrown. */
  releaseSource(): Promise<{ releasedAtMs: number; problem: string | null }>;
  /** Remove what the migration left on shared storage (after a completed migration). */
  cleanupTargetStorage(): Promise<unknown>;
  /**
   * What this migration so far says about a pause (each field undefined: nothing measured).
   * - `overheadMs`: what a pause costs beyond sending the last pages; the stop-and-copy test
   *   counts it: downtime is a promise.
   * - `leadMs`: how long after a round's end the guest is paused (the decision's round trip),
   *   as measured between rounds (undefined also where the engine pauses on its own). The
   *   guest goes on dirtying pages meanwhile; the stop-and-copy test counts them.
   */
  pauseTiming(iterations: readonly ReportIteration[]): PauseTiming;
  /** The engine's measured report fields; `sentInRounds` is what the rounds reported, for engines that learn no total. */
  report(sentInRounds: number): EngineReport;
}

export interface PauseTiming {
  overheadMs?: number;
  leadMs?: number;
}

/** The engine two hosts share for a strategy, or why they cannot migrate with it (from registered facts). */
export function engineMatch(
  strategy: StrategyName,
  source: { hostId: string; driver: string },
  target: { hostId: string; driver: string },
): { engine: EngineName } | { refused: string } {
  const known = (d: string): d is EngineName => d === 'emulated' || d === 'qemu';
  if (!known(source.driver)) return { refused: `host ${source.hostId} runs an unknown hypervisor driver '${source.driver}'` };
  if (source.driver !== target.driver) {
    return { refused: `hosts run different engines: ${source.hostId} is ${source.driver}, ${target.hostId} is ${target.driver}; migrate between hosts of one engine` };
  }
  if (usesParMigrate(strategy) && !ENGINE_CAPS[source.driver].staticSnapshot) {
    return { refused: `strategy ${strategy} needs par-migrate (a static snapshot over the storage network), which the ${source.driver} engine does not offer; use as-hybrid (or another non-par strategy)` };
  }
  return { engine: source.driver };
}

/** The engine for a migration from the two hosts' own facts, or why the migration is refused. */
export function engineFor(
  vm: string,
  strategy: StrategyName,
  source: Pick<HostFacts, 'hostId' | 'driver' | 'vms'>,
  target: Pick<HostFacts, 'hostId' | 'driver'>,
): { engine: EngineName } | { refused: string } {
  if (!source.vms.some((v) => v.name === vm)) return { refused: `vm ${vm} is not on ${source.hostId}` };
  return engineMatch(strategy, source, target);
}

/**
 * The strategy an engine runs when the operator did not choose one. Emulated: the paper's full
 * scheme. QEMU: as-hybrid — par-migrate through the relay needs shared storage both agents
 * mount and QEMU on the agent's own machine, which a QEMU host does not always have; the
 * operator opts in with --strategy pa-hybrid (or par-migrate).
 */
export function defaultStrategyFor(driver: string): StrategyName {
  return driver === 'qemu' ? 'as-hybrid' : 'pa-hybrid';
}
