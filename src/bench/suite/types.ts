/**
 * Shapes of `ferry bench`: the cells it runs, what it measures per cell, and results.json.
 * Everything here is JSON-safe: results.json is these objects as they are.
 */
import type { MigrationOptions } from '../../activities/types';
import type { StrategyName } from '../../policy/types';
import type { MigrationReport } from '../../workflows/report';

export const COMPARISONS = [
  'par-vs-precopy',
  'phase2-first-iteration',
  'switch-scenarios',
  'fixed-switch',
  'comprehensive',
  'scaling',
] as const;
export type ComparisonId = (typeof COMPARISONS)[number];

export type ScaleName = 'smoke' | 'small' | 'full';

/** One migration to run: a fresh VM, one strategy, one repeat. */
export interface CellSpec {
  /** `<comparison>/<group>/<variant>/r<repeat>`; unique in a run. */
  id: string;
  comparison: ComparisonId;
  /** What the cells of a row share: a workload, a memory size, a scenario, `n=3`. */
  group: string;
  /** What is compared inside a group: a strategy name, or e.g. `pa-hybrid+compression`, `fixed-3`. */
  variant: string;
  strategy: StrategyName;
  workload: string;
  memoryBytes: number;
  vcpus: number;
  /** Same for every variant of a repeat: the strategies see the same workload. */
  seed: number;
  repeat: number;
  options: MigrationOptions;
  /** fixed-switch: force post-copy once this many pre-copy rounds are done (null: never force). */
  forcePostcopyAfterRounds: number | null;
  /** A number to put on a chart's x axis (memory in MiB, rounds), when the group has one. */
  x: number | null;
}

/** What the bench derives from one report; every number is read from the report. */
export interface CellMetrics {
  totalTimeMs: number;
  totalBytes: number;
  migrationNetworkBytes: number;
  storageWriteBytes: number;
  storageReadBytes: number;
  downtimeMs: number | null;
  /** report.stopAndCopy: what the paused round moved (null: the migration ended in post-copy). */
  stopAndCopyBytes: number | null;
  stopAndCopyPages: number | null;
  /** Dynamic rounds on channel-2 (report.iterations). */
  iterations: number;
  ending: 'stop-and-copy' | 'switch-to-postcopy' | null;
  /** The reason of the decision that ended pre-copy. */
  endingReason: string | null;
  /** Decision atMs of the switch to post-copy (from the workflow start), null without a switch. */
  switchAtMs: number | null;
  /** Pre-copy rounds done when the switch was decided. */
  roundsBeforeSwitch: number | null;
  postcopyDurationMs: number | null;
  /** Migration-network bytes after the last pre-copy round: device state, missing set, pushed and faulted pages. */
  postcopyBytes: number | null;
  /** Pages the target installed after the switch (pushed or faulted over channel-2, plus from PbData). */
  postcopyPages: number | null;
  faults: number | null;
  faultP50Ms: number | null;
  faultP99Ms: number | null;
  faultMaxMs: number | null;
  /** par-migrate strategies: StaticData save and merge time (report.static). */
  staticSaveMs: number | null;
  staticMergeMs: number | null;
  /** Phase 1 (the full copy): precopy's bulk round, par-migrate's StaticData pages. */
  phase1Pages: number | null;
  /** Phase 2's first dynamic round: iteration 2 for strategies with a bulk round, iteration 1 with par-migrate. */
  firstDynamicPages: number | null;
  /** Which iteration firstDynamicPages was read from (or 'dirtyAfter of 1' when pre-copy ended after the bulk round). */
  firstDynamicSource: string | null;
  verified: boolean;
}

export interface CellResult {
  cell: CellSpec;
  status: 'ok' | 'failed';
  /** Why the cell failed: the exception, or the report's outcome and reason. */
  error: string | null;
  report: MigrationReport | null;
  metrics: CellMetrics | null;
  startedAt: string;
  /** VM create to VM destroyed, wall clock. */
  wallMs: number;
  /** How long the guest had run when the migration started. */
  guestAgeAtStartMs: number | null;
  /** fixed-switch cells: when the forcePostcopy update was sent and what came of it. */
  force: { sentAtIteration: number | null; accepted: boolean; error: string | null; wanted: number; actual: number | null } | null;
}

export interface MachineFacts {
  cpuModel: string;
  cores: number;
  totalMemoryBytes: number;
  node: string;
  platform: string;
  release: string;
  arch: string;
  date: string;
  loadAverageAtStart: number[];
  loadAverageAtEnd: number[] | null;
  /** Other busy processes seen at the start (name and %CPU from ps), when ps is available. */
  otherBusyProcesses: string[];
}

export interface WorkloadDoc {
  name: string;
  description: string;
  /** Accesses (pages) per second, all vCPUs. */
  ratePagesPerSec: number;
  writes: unknown;
  distribution: unknown;
  regionFraction: number;
  source: string;
}

export interface BenchResults {
  schema: 'ferry-bench/1';
  suite: 'paper';
  scale: ScaleName;
  repeat: number;
  only: ComparisonId[];
  command: string;
  startedAt: string;
  finishedAt: string | null;
  durationMs: number | null;
  machine: MachineFacts;
  scaleDoc: ScaleDoc;
  workloads: WorkloadDoc[];
  cells: CellResult[];
  outputs: { dir: string; results: string; markdown: string; charts: string[] };
}

export interface ScaleDoc {
  name: ScaleName;
  /** Guest memory = the paper's VM memory × memoryFactor. */
  memoryFactor: number;
  migrationLinkBytesPerSec: number;
  comprehensiveLinkBytesPerSec: number;
  storageLinkBytesPerSec: number;
  maxDowntimeMs: number;
  maxIterations: number;
  warmupMs: number;
  notes: string[];
}
