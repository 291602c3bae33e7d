/**
 * `ferry bench --suite paper --scale smoke`: one tiny cell per comparison, through the real
 * CLI, workflow and agent processes on the shared dev server. Checks that every report is
 * complete and verified and that results.json, results.md and the SVG charts are written.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildCells, parseOnly, SCALES, type BenchResults } from '../../src/bench/suite';
import { downtimeViolated } from '../../src/bench/suite/metrics';
import { FERRY_BIN } from '../../src/support/processes';
import { tempDir, temporalAddress } from '../helpers/cluster';

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FERRY_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Well-formed enough to be an SVG document: one <svg> root, every tag closed in order. */
function checkSvg(text: string, name: string): void {
  expect(text.trimStart().startsWith('<svg'), `${name} starts with <svg`).toBe(true);
  expect(text).toContain('xmlns="http://www.w3.org/2000/svg"');
  expect(text.trimEnd().endsWith('</svg>'), `${name} ends with </svg>`).toBe(true);
  const body = text.replace(/<!--[\s\S]*?-->/g, '').replace(/<!\[CDATA\[[\s\S]*?\]\]>/g, '');
  const stack: string[] = [];
  let roots = 0;
  for (const m of body.matchAll(/<(\/?)([A-Za-z][\w:.-]*)((?:[^>"']|"[^"]*"|'[^']*')*?)(\/?)>/g)) {
    const [, close, tag, , selfClose] = m;
    if (close) {
      expect(stack.pop(), `${name}: </${tag}> closes the open tag`).toBe(tag);
    } else if (!selfClose) {
      if (stack.length === 0) roots++;
      stack.push(tag!);
    } else if (stack.length === 0) roots++;
  }
  expect(stack, `${name}: unclosed tags`).toEqual([]);
  expect(roots, `${name}: one root element`).toBe(1);
  expect(body).toMatch(/<(path|rect|line|text)\b/);
}

describe('ferry bench plan', () => {
  it('plans the small suite: every comparison, same seed per repeat across strategies, the testbed parameters', () => {
    const scale = SCALES.small;
    const cells = buildCells({ scale, repeats: 2, only: parseOnly(undefined) as never, maxDowntimeMs: 300, maxIterations: 30 });
    expect(new Set(cells.map((c) => c.comparison)).size).toBe(6);
    expect(new Set(cells.map((c) => c.id)).size).toBe(cells.length);
    for (const c of cells) {
      expect(c.seed).toBe(101 + c.repeat);
      expect(c.options.maxDowntimeMs).toBe(300);
      expect(c.options.maxIterations).toBeGreaterThanOrEqual(30);
      expect(c.options.bandwidthBytesPerSec).toBe(c.comparison === 'comprehensive' ? 50e6 : 32e6);
      expect(c.options.storageBandwidthBytesPerSec).toBe(1.25e9);
    }
    const comp = cells.filter((c) => c.comparison === 'comprehensive' && c.repeat === 0).map((c) => c.variant);
    expect(comp).toEqual(['pa-hybrid', 'hybrid-1', 'hybrid-2', 'dyn-hybrid', 'heuristic-hybrid', 'precopy', 'postcopy', 'pa-hybrid+zero+compression']);
    const fixed = cells.filter((c) => c.comparison === 'fixed-switch' && c.forcePostcopyAfterRounds !== null);
    expect(fixed.every((c) => c.strategy === 'as-hybrid' && c.workload === 'scenario-rising')).toBe(true);
    expect(parseOnly('1,comprehensive')).toEqual(['par-vs-precopy', 'comprehensive']);
    expect(typeof parseOnly('nope')).toBe('string');
  });
});

describe('ferry bench --scale smoke', () => {
  it(
    'runs one cell per comparison through the real workflow and writes results.json, results.md and SVG charts',
    async () => {
      const out = path.join(tempDir('bench'), 'out');
      const { code, stdout, stderr } = await runCli(['bench', '--suite', 'paper', '--scale', 'smoke', '--out', out, '--json'], {
        FERRY_TEMPORAL_ADDRESS: temporalAddress(),
      });
      // 0, or 3 when a stop-and-copy the test chose paused longer than the budget (a loaded
      // machine can do that): then every such cell is named on stderr and in results.md.
      expect([0, 3], stderr.slice(-3000)).toContain(code);
      // Exactly one JSON document on stdout; progress went to stderr.
      const doc = JSON.parse(stdout) as BenchResults;
      expect(stderr).toContain('[1/6]');

      const res = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as BenchResults;
      const violated = res.cells.filter(downtimeViolated);
      expect(code).toBe(violated.length > 0 ? 3 : 0);
      for (const v of violated) expect(stderr).toContain(`downtime violation: ${v.cell.id}: paused ${v.report!.downtimeMs} ms`);
      expect(fs.readFileSync(path.join(out, 'results.md'), 'utf8')).toContain(`Downtime violations (the stop-and-copy test promised the budget, the pause was longer): ${violated.length}`);
      expect(res.cells.length).toBe(doc.cells.length);
      expect(res.machine.cores).toBeGreaterThan(0);
      expect(res.machine.node).toBe(process.version);
      expect(res.workloads.length).toBeGreaterThan(0);
      expect(new Set(res.cells.map((c) => c.cell.comparison)).size).toBe(6);
      for (const c of res.cells) {
        expect(c.status, `${c.cell.id}: ${c.error}`).toBe('ok');
        const r = c.report!;
        expect(r.outcome).toBe('completed');
        expect(r.strategy).toBe(c.cell.strategy);
        expect(r.workload).toBe(c.cell.workload);
        expect(r.memoryBytes).toBe(c.cell.memoryBytes);
        expect(r.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
        expect(r.verification!.pagesChecked).toBe(r.memoryBytes / r.pageSize);
        expect(r.bytes.total).toBe(r.bytes.migrationNetwork + r.bytes.storageWrite);
        expect(r.totalTimeMs).toBeGreaterThan(0);
        expect(r.downtimeMs).toBeGreaterThan(0); // paused for the stop-and-copy or at the switch
        expect(r.downtimeMs!).toBeLessThanOrEqual(r.totalTimeMs);
        if (r.stopAndCopy) expect(r.downtimeMs!).toBeGreaterThanOrEqual(r.stopAndCopy.sendMs);
        expect(r.decisions.length).toBeGreaterThan(0);
        const m = c.metrics!;
        expect(m.verified).toBe(true);
        if (m.ending === 'switch-to-postcopy') {
          expect(r.postcopy).not.toBeNull();
          expect(m.switchAtMs).toBeGreaterThanOrEqual(0);
          expect(m.postcopyBytes).toBeGreaterThan(0);
        } else {
          expect(m.ending).toBe('stop-and-copy');
          expect(r.stopAndCopy).not.toBeNull();
        }
      }
      const force = res.cells.find((c) => c.cell.comparison === 'fixed-switch')!;
      // The forcePostcopy update made the switch after exactly n = 1 round.
      expect(force.force).toMatchObject({ wanted: 1, accepted: true, actual: 1 });
      expect(force.metrics!.ending).toBe('switch-to-postcopy');

      const md = fs.readFileSync(path.join(out, 'results.md'), 'utf8');
      for (const h of ['## 1. ', '## 2. ', '## 3. ', '## 4. ', '## 5. ', '## 6. ']) expect(md).toContain(h);
      expect(md).toContain('| workload | metric | precopy | par-migrate | par-migrate vs precopy | paper |');
      expect(md).toContain('| strategy | ended | total time (s) | data: migration network (MiB) | storage write (MiB) |');
      expect(md).toMatch(/\| -37\.7 % \|/);

      expect(res.outputs.charts.length).toBeGreaterThanOrEqual(6);
      for (const f of res.outputs.charts) checkSvg(fs.readFileSync(path.join(out, f), 'utf8'), f);
    },
    240_000,
  );
});
