import { describe, expect, it } from 'vitest';
import { parseQemuVariant, qemuTable, type QemuBenchResult, type QemuBenchRow } from '../../src/bench/qemu';

describe('ferry bench --suite qemu: variants', () => {
  it('reads strategy and strategy/rule (par-migrate and pa-hybrid run through the relay)', () => {
    expect(parseQemuVariant('pa-hybrid')).toEqual({ id: 'pa-hybrid', strategy: 'pa-hybrid' });
    expect(parseQemuVariant('par-migrate')).toEqual({ id: 'par-migrate', strategy: 'par-migrate' });
    expect(parseQemuVariant('hybrid-1')).toEqual({ id: 'hybrid-1', strategy: 'hybrid-1' });
    expect(parseQemuVariant('as-hybrid/paper')).toEqual({ id: 'as-hybrid/paper', strategy: 'as-hybrid', switchRule: 'paper' });
    expect(parseQemuVariant('as-hybrid/ferry')).toEqual({ id: 'as-hybrid/ferry', strategy: 'as-hybrid', switchRule: 'ferry' });
  });

  it.each([
    ['fastest', /not a strategy/],
    ['as-hybrid/best', /'best' in 'as-hybrid\/best' is not a switch rule \(ferry, paper\)/],
    ['as-hybrid/paper/x', /not a strategy/],
    ['pa-hybrid@2', /a fixed switch point is a hybrid QEMU can run/],
  ])('refuses %s with the reason', (s, why) => {
    const v = parseQemuVariant(s);
    expect(typeof v).toBe('string');
    expect(v).toMatch(why);
  });
});

describe('ferry bench --suite qemu: table', () => {
  const row = (strategy: string, totalTimeMs: number, stallMs: number | null, downtimeViolations: number): QemuBenchRow => ({
    strategy,
    totalTimeMs,
    downtimeMs: 100,
    postcopyDurationMs: stallMs === null ? null : 1000,
    stallMs,
    bytes: 2 ** 20,
    passes: 3,
    ending: 'a | b',
    runs: 3,
    verified: 3,
    downtimeViolations,
  });
  it('sets every variant against hybrid-1 (time, stall, migration-network data) and precopy (time) and counts violations', () => {
    const res = {
      rows: [row('hybrid-1', 4000, 500, 0), row('as-hybrid', 5000, 550, 0), row('precopy', 8000, null, 1), { ...row('pa-hybrid', 2000, 500, 0), bytes: 2 ** 19, storageBytes: 2 ** 28 }],
    } as unknown as QemuBenchResult;
    const lines = qemuTable(res).split('\n');
    expect(lines[2]).toContain('| hybrid-1 | 3/3 | 4.00 s | 1.00× | 0.50× |');
    expect(lines[3]).toMatch(/\| as-hybrid \| 3\/3 \| 5\.00 s \| 1\.25× \| 0\.63× \| 100 ms \| 0 \| 1\.00 s \| 550 ms \| 1\.10× \| 1\.0 MiB \| 1\.00× \| – \|/);
    expect(lines[4]).toMatch(/\| precopy \| 3\/3 \| 8\.00 s \| 2\.00× \| 1\.00× \| 100 ms \| 1 \| – \| – \| – \|/);
    expect(lines[4]).toContain('a \\| b');
    expect(lines[5]).toMatch(/\| pa-hybrid \| 3\/3 \| 2\.00 s \| 0\.50× \| 0\.25× \| .* \| 512\.0 KiB \| 0\.50× \| 256\.0 MiB \|/);
  });
});
