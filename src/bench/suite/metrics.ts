/**
 * What the bench reads out of a MigrationReport, and the statistics over repeats. Every
 * number comes from the report (measured by the agents); nothing is estimated here.
 */
import type { MigrationReport } from '../../workflows/report';
import type { CellMetrics, CellResult } from './types';

export function metricsOf(r: MigrationReport, usesBulkRound: boolean): CellMetrics {
  const ender = [...r.decisions].reverse().find((d) => d.action !== 'continue') ?? null;
  const ending = ender ? (ender.action as 'stop-and-copy' | 'switch-to-postcopy') : null;
  const switched = ending === 'switch-to-postcopy';
  // A decision taken "at iteration i" comes after i-1 rounds.
  const roundsBeforeSwitch = switched && ender ? Math.max(0, ender.iteration - 1) : null;
  const precopyBytes = r.iterations.reduce((a, it) => a + it.bytes, 0);
  const pc = r.postcopy;

  // Phase 2's first dynamic round. With a bulk round (precopy and the hybrids without
  // par-migrate) round 1 is the full copy and round 2 is the first dynamic one; with
  // par-migrate the full copy goes to StaticData and round 1 is already dynamic. When
  // pre-copy ended right after the bulk round there is no round 2: the pages dirtied during
  // round 1 (its dirtyAfter) are what round 2 would have sent.
  let firstDynamicPages: number | null = null;
  let firstDynamicSource: string | null = null;
  let phase1Pages: number | null = null;
  if (usesBulkRound) {
    const it1 = r.iterations[0];
    const it2 = r.iterations[1];
    phase1Pages = it1?.pages ?? null;
    if (it2) {
      firstDynamicPages = it2.pages;
      firstDynamicSource = 'iteration 2';
    } else if (it1) {
      firstDynamicPages = it1.dirtyAfter;
      firstDynamicSource = 'dirtyAfter of iteration 1';
    }
  } else if (r.static) {
    phase1Pages = r.static.pages;
    const it1 = r.iterations[0];
    if (it1) {
      firstDynamicPages = it1.pages;
      firstDynamicSource = 'iteration 1';
    }
  }

  return {
    totalTimeMs: r.totalTimeMs,
    totalBytes: r.bytes.total,
    migrationNetworkBytes: r.bytes.migrationNetwork,
    storageWriteBytes: r.bytes.storageWrite,
    storageReadBytes: r.bytes.storageRead,
    downtimeMs: r.downtimeMs,
    stopAndCopyBytes: r.stopAndCopy?.bytes ?? null,
    stopAndCopyPages: r.stopAndCopy?.pages ?? null,
    iterations: r.iterations.length,
    ending,
    endingReason: ender?.reason ?? null,
    switchAtMs: switched && ender ? ender.atMs : null,
    roundsBeforeSwitch,
    postcopyDurationMs: r.postcopyDurationMs,
    postcopyBytes: switched ? Math.max(0, r.bytes.migrationNetwork - precopyBytes) : null,
    postcopyPages: pc ? pc.pushedPages + pc.pbdataPages : null,
    faults: pc ? pc.faults : null,
    faultP50Ms: pc?.faultLatencyMs ? pc.faultLatencyMs.p50 : null,
    faultP99Ms: pc?.faultLatencyMs ? pc.faultLatencyMs.p99 : null,
    faultMaxMs: pc?.faultLatencyMs ? pc.faultLatencyMs.max : null,
    staticSaveMs: r.static?.saveMs ?? null,
    staticMergeMs: r.static?.mergeMs ?? null,
    phase1Pages,
    firstDynamicPages,
    firstDynamicSource,
    verified: r.verification?.ok === true && r.verification.where === 'target',
  };
}

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
}

export function summarize(values: Array<number | null | undefined>): Summary | null {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { n: v.length, median, min: v[0]!, max: v[v.length - 1]! };
}

/** % change of `value` against `base` (negative = smaller than the baseline). */
export function pctChange(value: number | null | undefined, base: number | null | undefined): number | null {
  if (value === null || value === undefined || base === null || base === undefined || !Number.isFinite(value) || !Number.isFinite(base) || base === 0) return null;
  return ((value - base) / base) * 100;
}

/** The successful cells of one (comparison, group, variant). */
export function okCells(results: CellResult[], comparison: string, group: string, variant: string): CellResult[] {
  return results.filter((r) => r.cell.comparison === comparison && r.cell.group === group && r.cell.variant === variant && r.status === 'ok' && r.metrics);
}

export function allCells(results: CellResult[], comparison: string, group: string, variant: string): CellResult[] {
  return results.filter((r) => r.cell.comparison === comparison && r.cell.group === group && r.cell.variant === variant);
}

export function metricSummary(results: CellResult[], comparison: string, group: string, variant: string, pick: (m: NonNullable<CellResult['metrics']>) => number | null): Summary | null {
  return summarize(okCells(results, comparison, group, variant).map((c) => pick(c.metrics!)));
}

/**
 * Downtime is a promise: a stop-and-copy the test chose (not the max-iterations valve) whose
 * measured pause was longer than the budget.
 */
export function downtimeViolated(c: CellResult): boolean {
  const r = c.report;
  if (!r || r.downtimeMs === null) return false;
  const last = r.decisions[r.decisions.length - 1];
  if (!last || last.action !== 'stop-and-copy' || /max iterations/.test(last.reason)) return false;
  return r.downtimeMs > c.cell.options.maxDowntimeMs;
}
