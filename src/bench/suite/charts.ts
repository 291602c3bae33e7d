/**
 * Charts as SVG files, drawn by Vega-Lite (compiled to Vega and rendered headless in Node:
 * `new vega.View(vega.parse(spec), { renderer: 'none' }).toSVG()`).
 *
 * What is plotted, per comparison that ran:
 *   - pages per iteration (one line per strategy; the first successful repeat);
 *   - λ per iteration over time since the migration start, with a vertical rule where
 *     pre-copy ended by a switch to post-copy (the end of the last pre-copy round);
 *   - bars of medians per strategy (total time, total data, downtime, post-copy figures),
 *     with min–max whiskers over repeats;
 *   - post-copy fault latency over time: the report carries the p50, p99 and max of the
 *     guest's fault latencies, not a per-fault timeline, so each is drawn as a level over
 *     the post-copy window (resume → every page present);
 *   - the Fig. 2/6, Fig. 10 and scaling curves.
 */
import type { TopLevelSpec } from 'vega-lite';
import { COMPARISON_INFO } from './paper';
import { metricSummary, okCells } from './metrics';
import type { CellResult, ComparisonId } from './types';

const MiB = 2 ** 20;

export interface Chart {
  file: string;
  svg: string;
}

type Row = Record<string, string | number | null>;

async function render(spec: TopLevelSpec): Promise<string> {
  const vega = await import('vega');
  const vl = await import('vega-lite');
  // Their warnings (e.g. "Maximum optimization runs reached") are about layout internals, not the data.
  const quiet = { level: () => quiet, error: (...a: unknown[]) => console.error(...a), warn: () => quiet, info: () => quiet, debug: () => quiet } as never;
  const view = new vega.View(vega.parse(vl.compile(spec, { logger: quiet }).spec), { renderer: 'none', logLevel: vega.Error });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const FONT = { config: { font: 'Helvetica, Arial, sans-serif', view: { stroke: '#ccc' }, legend: { labelLimit: 320 }, title: { anchor: 'start', subtitleColor: '#555' } } } as const;

/** The same colour for the same strategy in every chart of a comparison. */
function colorOf(variants: string[], field = 'variant'): Record<string, unknown> {
  return { field, type: 'nominal', sort: variants, scale: { domain: variants }, title: 'strategy' };
}

/** A subtitle wrapped into lines of about `width` characters (Vega draws one line per array item). */
function wrap(text: string, width = 110): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + word.length + 1 > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

function uniq<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

/** The groups and variants of a comparison, in run order. */
function layout(results: CellResult[], comparison: ComparisonId): { groups: string[]; variants: string[] } {
  const cells = results.filter((r) => r.cell.comparison === comparison);
  return { groups: uniq(cells.map((c) => c.cell.group)), variants: uniq(cells.map((c) => c.cell.variant)) };
}

/** The first successful repeat of a (group, variant): what the timelines show. */
function firstOk(results: CellResult[], comparison: ComparisonId, group: string, variant: string): CellResult | undefined {
  return okCells(results, comparison, group, variant).sort((a, b) => a.cell.repeat - b.cell.repeat)[0];
}

interface MetricDef {
  name: string;
  pick: (m: NonNullable<CellResult['metrics']>) => number | null;
}

const M = {
  time: { name: 'total time (s)', pick: (m) => m.totalTimeMs / 1000 },
  data: { name: 'data: migration network (MiB)', pick: (m) => m.migrationNetworkBytes / MiB },
  downtime: { name: 'downtime (s)', pick: (m) => (m.downtimeMs === null ? null : m.downtimeMs / 1000) },
  stopCopy: { name: 'stop-and-copy data (MiB)', pick: (m) => (m.stopAndCopyBytes === null ? null : m.stopAndCopyBytes / MiB) },
  pcDuration: { name: 'post-copy duration (s)', pick: (m) => (m.postcopyDurationMs === null ? null : m.postcopyDurationMs / 1000) },
  pcData: { name: 'post-copy data (MiB)', pick: (m) => (m.postcopyBytes === null ? null : m.postcopyBytes / MiB) },
  switchAt: { name: 'switch at (s)', pick: (m) => (m.switchAtMs === null ? null : m.switchAtMs / 1000) },
} satisfies Record<string, MetricDef>;

function summaryRows(results: CellResult[], comparison: ComparisonId, metrics: MetricDef[]): Row[] {
  const { groups, variants } = layout(results, comparison);
  const rows: Row[] = [];
  for (const group of groups) {
    for (const variant of variants) {
      for (const md of metrics) {
        const s = metricSummary(results, comparison, group, variant, md.pick);
        if (s) rows.push({ group, variant, metric: md.name, median: s.median, min: s.min, max: s.max, n: s.n });
      }
    }
  }
  return rows;
}

/** Bars of medians with min–max whiskers: one panel per metric, groups on x, variants side by side. */
function barsSpec(title: string, subtitle: string, rows: Row[], variants: string[], metricOrder: string[]): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle: wrap(subtitle) },
    data: { values: rows },
    facet: { column: { field: 'metric', type: 'nominal', sort: metricOrder, title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: { step: Math.max(14, 60 / Math.max(1, variants.length)) } as unknown as number,
      height: 220,
      encoding: {
        x: { field: 'group', type: 'nominal', title: null, axis: { labelAngle: -30 } },
        xOffset: { field: 'variant', type: 'nominal', sort: variants },
        color: colorOf(variants),
      },
      layer: [
        { mark: 'bar', encoding: { y: { field: 'median', type: 'quantitative', title: null } } },
        { mark: { type: 'rule', color: 'black' }, encoding: { y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' } } },
      ],
    },
    ...FONT,
  } as TopLevelSpec;
}

function pagesPerIteration(results: CellResult[], comparison: ComparisonId, groups: string[], variants: string[]): Row[] {
  const rows: Row[] = [];
  for (const group of groups) {
    for (const variant of variants) {
      const c = firstOk(results, comparison, group, variant);
      for (const it of c?.report?.iterations ?? []) rows.push({ group, variant, iteration: it.index, pages: it.pages });
    }
  }
  return rows;
}

function pagesSpec(title: string, rows: Row[], variants: string[]): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle: wrap('pages sent per dynamic round on channel-2 (round 1 of precopy/hybrids is the full copy); first successful repeat') },
    data: { values: rows },
    facet: { column: { field: 'group', type: 'nominal', title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 260,
      height: 200,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'iteration', type: 'quantitative', title: 'iteration', axis: { tickMinStep: 1 } },
        y: { field: 'pages', type: 'quantitative', title: 'pages' },
        color: colorOf(variants),
      },
    },
    ...FONT,
  } as TopLevelSpec;
}

/** λ over time, the switch points, and the post-copy windows with fault latency levels. */
function timelineRows(results: CellResult[], comparison: ComparisonId, groups: string[], variants: string[]): { lambda: Row[]; switches: Row[]; faults: Row[] } {
  const lambda: Row[] = [];
  const switches: Row[] = [];
  const faults: Row[] = [];
  for (const group of groups) {
    for (const variant of variants) {
      const c = firstOk(results, comparison, group, variant);
      const r = c?.report;
      const m = c?.metrics;
      if (!r || !m) continue;
      const t0 = Date.parse(r.startedAt);
      for (const it of r.iterations) {
        if (Number.isFinite(it.lambda)) lambda.push({ group, variant, t: (it.finishedAtMs - t0) / 1000, lambda: it.lambda, iteration: it.index });
      }
      if (m.ending === 'switch-to-postcopy') {
        const k = m.roundsBeforeSwitch ?? 0;
        const last = k > 0 ? r.iterations[k - 1] : undefined;
        const switchS = last ? (last.finishedAtMs - t0) / 1000 : 0;
        switches.push({ group, variant, t: switchS, label: `${variant}: switch after ${k} rounds` });
        const start = switchS + (m.downtimeMs ?? 0) / 1000;
        const end = start + (m.postcopyDurationMs ?? 0) / 1000;
        if (m.faults !== null) {
          for (const [stat, v] of [['p50', m.faultP50Ms], ['p99', m.faultP99Ms], ['max', m.faultMaxMs]] as const) {
            if (v !== null) faults.push({ group, variant, stat, start, end, ms: v, faults: m.faults });
          }
        }
      }
    }
  }
  return { lambda, switches, faults };
}

function lambdaSpec(title: string, lambda: Row[], switches: Row[], variants: string[]): TopLevelSpec {
  const rows = [...lambda.map((r) => ({ ...r, kind: 'lambda' })), ...switches.map((r) => ({ ...r, kind: 'switch' }))];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: title,
      subtitle: wrap('λ(i) = pages(i+1)/pages(i) at the end of round i (λ(1) = 1), time from the migration start; dashed rule: switch to post-copy; grey: λ = 1; first successful repeat'),
    },
    data: { values: rows },
    facet: { row: { field: 'group', type: 'nominal', title: null } },
    spec: {
      width: 560,
      height: 180,
      layer: [
        { mark: { type: 'rule', color: '#999' }, encoding: { y: { datum: 1 } } },
        {
          transform: [{ filter: "datum.kind === 'lambda'" }],
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 't', type: 'quantitative', title: 'time since migration start (s)' },
            y: { field: 'lambda', type: 'quantitative', title: 'λ' },
            color: colorOf(variants),
          },
        },
        {
          transform: [{ filter: "datum.kind === 'switch'" }],
          mark: { type: 'rule', strokeDash: [4, 3], strokeWidth: 2 },
          encoding: { x: { field: 't', type: 'quantitative' }, color: colorOf(variants), tooltip: { field: 'label' } },
        },
      ],
    },
    ...FONT,
  } as TopLevelSpec;
}

function faultSpec(title: string, faults: Row[], variants: string[]): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: title,
      subtitle: wrap('guest fault latency (block → page present) over the post-copy window (resume → all pages present); the report has p50/p99/max per migration, drawn as levels over that window; first successful repeat'),
    },
    data: { values: faults },
    facet: { row: { field: 'group', type: 'nominal', title: null } },
    spec: {
      width: 560,
      height: 160,
      mark: { type: 'rule', strokeWidth: 3 },
      encoding: {
        x: { field: 'start', type: 'quantitative', title: 'time since migration start (s)' },
        x2: { field: 'end' },
        y: { field: 'ms', type: 'quantitative', title: 'fault latency (ms)', scale: { type: 'symlog' } },
        color: colorOf(variants),
        strokeDash: { field: 'stat', type: 'nominal', sort: ['p50', 'p99', 'max'], title: 'statistic' },
      },
    },
    ...FONT,
  } as TopLevelSpec;
}

function curveSpec(title: string, subtitle: string, rows: Row[], xTitle: string, opts: { facet?: string; ruleRows?: Row[]; xLog?: boolean; colorTitle?: string } = {}): TopLevelSpec {
  const series = uniq(rows.map((r) => String(r.series)));
  const layers: unknown[] = [
    {
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'x', type: 'quantitative', title: xTitle, ...(opts.xLog ? { scale: { type: 'log', base: 2 } } : {}) },
        y: { field: 'median', type: 'quantitative', title: null },
        color: { ...colorOf(series, 'series'), title: opts.colorTitle ?? 'series' },
      },
    },
    { mark: { type: 'rule' }, encoding: { x: { field: 'x', type: 'quantitative' }, y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' }, color: colorOf(series, 'series') } },
  ];
  const all = [...rows.map((r) => ({ ...r, kind: 'curve' })), ...(opts.ruleRows ?? []).map((r) => ({ ...r, kind: 'rule' }))];
  if (opts.ruleRows?.length) {
    layers.push({
      transform: [{ filter: "datum.kind === 'rule'" }],
      mark: { type: 'rule', strokeDash: [6, 4], color: 'black' },
      encoding: { y: { field: 'median', type: 'quantitative' } },
    });
    layers.push({
      transform: [{ filter: "datum.kind === 'rule'" }],
      mark: { type: 'text', align: 'left', dy: -6, x: 4 },
      encoding: { y: { field: 'median', type: 'quantitative' }, text: { field: 'label' } },
    });
  }
  for (const l of layers.slice(0, 2) as Array<{ transform?: unknown[] }>) l.transform = [{ filter: "datum.kind === 'curve'" }];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle: wrap(subtitle) },
    data: { values: all },
    ...(opts.facet
      ? { facet: { column: { field: opts.facet, type: 'nominal', title: null } }, resolve: { scale: { y: 'independent' } }, spec: { width: 300, height: 220, layer: layers } }
      : { width: 420, height: 240, layer: layers }),
    ...FONT,
  } as TopLevelSpec;
}

/** Every chart for the comparisons in `results`. */
export async function buildCharts(results: CellResult[]): Promise<Chart[]> {
  const specs: Array<{ file: string; spec: TopLevelSpec }> = [];
  const has = (c: ComparisonId): boolean => results.some((r) => r.cell.comparison === c && r.status === 'ok');
  const t = (c: ComparisonId, what: string): string => `${COMPARISON_INFO[c].number}. ${what}${c === 'scaling' ? ' (beyond the paper)' : ` (paper ${COMPARISON_INFO[c].paper})`}`;

  if (has('par-vs-precopy')) {
    const c = 'par-vs-precopy';
    const { groups, variants } = layout(results, c);
    const metrics = [M.time, M.data, M.downtime, M.stopCopy];
    specs.push({ file: 'par-vs-precopy-time-data.svg', spec: barsSpec(t(c, 'par-migrate vs precopy'), 'medians over repeats, whiskers min–max', summaryRows(results, c, metrics), variants, metrics.map((m) => m.name)) });
    specs.push({ file: 'par-vs-precopy-pages-per-iteration.svg', spec: pagesSpec(t(c, 'pages per iteration'), pagesPerIteration(results, c, groups, variants), variants) });
  }

  if (has('phase2-first-iteration')) {
    const c = 'phase2-first-iteration';
    const { groups, variants } = layout(results, c);
    const rows: Row[] = [];
    for (const group of groups) {
      for (const variant of variants) {
        const x = results.find((r) => r.cell.comparison === c && r.cell.group === group)?.cell.x ?? null;
        for (const [panel, pick] of [
          ["phase 2's first dynamic round (pages)", (m: NonNullable<CellResult['metrics']>) => m.firstDynamicPages],
          ['phase 1: the full copy (pages)', (m: NonNullable<CellResult['metrics']>) => m.phase1Pages],
        ] as const) {
          const s = metricSummary(results, c, group, variant, pick);
          if (s && x !== null) rows.push({ x, series: variant, panel, median: s.median, min: s.min, max: s.max });
        }
      }
    }
    specs.push({
      file: 'phase2-first-iteration.svg',
      spec: curveSpec(t(c, "phase 2's first round vs memory"), 'precopy: round 2 (after the bulk round); par-migrate: round 1 (the full copy is StaticData on channel-1); lmbench', rows, 'guest memory (MiB)', { facet: 'panel', xLog: true, colorTitle: 'strategy' }),
    });
  }

  for (const c of ['switch-scenarios', 'comprehensive'] as const) {
    if (!has(c)) continue;
    const { groups, variants } = layout(results, c);
    const metrics = c === 'switch-scenarios' ? [M.switchAt, M.pcDuration, M.pcData, M.time, M.data] : [M.time, M.data, M.pcDuration, M.downtime];
    specs.push({ file: `${c}-time-data.svg`, spec: barsSpec(t(c, c === 'switch-scenarios' ? 'switch policies' : 'comprehensive test'), 'medians over repeats, whiskers min–max', summaryRows(results, c, metrics), variants, metrics.map((m) => m.name)) });
    const tl = timelineRows(results, c, groups, variants);
    specs.push({ file: `${c}-lambda.svg`, spec: lambdaSpec(t(c, 'λ over time'), tl.lambda, tl.switches, variants) });
    specs.push({ file: `${c}-pages-per-iteration.svg`, spec: pagesSpec(t(c, 'pages per iteration'), pagesPerIteration(results, c, groups, variants), variants) });
    if (tl.faults.length) specs.push({ file: `${c}-fault-latency.svg`, spec: faultSpec(t(c, 'post-copy fault latency'), tl.faults, variants) });
  }

  if (has('fixed-switch')) {
    const c = 'fixed-switch';
    const { groups, variants } = layout(results, c);
    const rows: Row[] = [];
    const rules: Row[] = [];
    for (const group of groups) {
      for (const variant of variants) {
        for (const md of [M.pcData, M.pcDuration]) {
          const s = metricSummary(results, c, group, variant, md.pick);
          if (!s) continue;
          const x = results.find((r) => r.cell.comparison === c && r.cell.variant === variant)?.cell.x ?? null;
          if (variant === 'as-hybrid') rules.push({ panel: md.name, median: s.median, label: `as-hybrid ${s.median.toFixed(1)}` });
          else if (x !== null) rows.push({ x, series: 'fixed switch', panel: md.name, median: s.median, min: s.min, max: s.max });
        }
      }
    }
    specs.push({
      file: 'fixed-switch-postcopy.svg',
      spec: curveSpec(t(c, 'post-copy data vs switch round'), 'as-hybrid forced to post-copy after n pre-copy rounds (scenario-rising); x = the n asked for (results.md gives the rounds actually done: as-hybrid may switch by itself first); dashed: as-hybrid deciding itself; medians, whiskers min–max', rows, 'pre-copy rounds before the switch (n)', { facet: 'panel', ruleRows: rules, colorTitle: 'cells' }),
    });
  }

  if (has('scaling')) {
    const c = 'scaling';
    const { groups, variants } = layout(results, c);
    const rows: Row[] = [];
    for (const group of groups) {
      for (const variant of variants) {
        const cells = okCells(results, c, group, variant);
        const x = cells[0]?.cell.x ?? null;
        if (x === null) continue;
        const gib = (cells[0]!.cell.memoryBytes) / 2 ** 30;
        for (const [panel, pick] of [
          ['time per GiB (s/GiB)', (m: NonNullable<CellResult['metrics']>) => m.totalTimeMs / 1000 / gib],
          ['migration-network data per GiB of memory (GiB/GiB)', (m: NonNullable<CellResult['metrics']>) => m.migrationNetworkBytes / 2 ** 30 / gib],
        ] as const) {
          const s = metricSummary(results, c, group, variant, pick);
          if (s) rows.push({ x, series: variant, panel, median: s.median, min: s.min, max: s.max });
        }
      }
    }
    specs.push({ file: 'scaling-per-gib.svg', spec: curveSpec(t(c, 'time and data per GiB'), 'memcached, links and dirty rate fixed; medians, whiskers min–max', rows, 'guest memory (MiB)', { facet: 'panel', xLog: true, colorTitle: 'strategy' }) });
  }

  const charts: Chart[] = [];
  for (const s of specs) charts.push({ file: s.file, svg: await render(s.spec) });
  return charts;
}
