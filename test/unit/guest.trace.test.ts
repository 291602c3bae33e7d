import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmulatedGuest, formatTrace, parseTrace, tableVersion } from '../../src/guest';
import { setTraceDir } from '../../src/guest/workloads';

const MiB = 1024 ** 2;
const guests: EmulatedGuest[] = [];
afterEach(async () => {
  await Promise.all(guests.splice(0).map((g) => g.stop()));
});
const dir = mkdtempSync(join(tmpdir(), 'ferry-guest-trace-'));
setTraceDir(dir); // as an agent started with --trace-dir
function traceFile(name: string, text: string): string {
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
}

describe('trace format', () => {
  it('parses times, r/w, pages, runs; skips comments and blank lines', () => {
    const t = parseTrace(['# ferry page trace v1', '', '0 w 12', '0.25 R 4096   # a read', '1.5 write 100 3', '   ', '2 r 7'].join('\n'));
    expect([...t.times]).toEqual([0, 0.25, 1.5, 1.5, 1.5, 2]);
    expect([...t.pages]).toEqual([12, 4096, 100, 101, 102, 7]);
    expect([...t.writes]).toEqual([1, 0, 1, 1, 1, 0]);
    expect(t.durationMs).toBe(2);
  });

  it('round-trips through formatTrace', () => {
    const acc = [
      { timeMs: 0, write: true, page: 3 },
      { timeMs: 1.125, write: false, page: 9 },
    ];
    const t = parseTrace(formatTrace(acc));
    expect([...t.pages]).toEqual([3, 9]);
    expect([...t.times]).toEqual([0, 1.125]);
  });

  it.each([
    ['0 w 1\n1 x 2\n', /^f\.trace:2: field 2 \(access\) is not r or w \(expected/],
    ['0 w 1\n\n# c\n5 w 2\n3 r 4\n', /^f\.trace:5: field 1 \(time\) goes backwards/],
    ['0 w\n', /^f\.trace:1: expected 3 or 4 fields, got 2 \(expected/],
    ['-1 w 3\n', /^f\.trace:1: field 1 \(time\) is not a non-negative number/],
    ['0 w 3.5\n', /^f\.trace:1: field 3 \(page\) is not a page index/],
    ['0 w 3 0\n', /^f\.trace:1: field 4 \(count\) is not 1\.\.1000000/],
    ['# nothing\n', /^f\.trace: trace has no accesses/],
  ])('rejects %j with an error naming the line', (text, message) => {
    expect(() => parseTrace(text, 'f.trace')).toThrow(message);
  });

  it('a bad trace file is a usage error at guest creation', () => {
    const f = traceFile('bad.trace', '0 w 1\nnonsense\n');
    expect(() => EmulatedGuest.create({ name: 't', memoryBytes: 4 * MiB, workload: `trace:${f}` })).toThrow(`${f}:2: expected 3 or 4 fields, got 1 (expected`);
  });
});

describe('trace replay', () => {
  it('replays every access once (loop off, unthrottled), on the owning vCPU', async () => {
    const lines: string[] = [];
    const writesPerPage = new Map<number, number>();
    for (let i = 0; i < 400; i++) {
      const page = (i * 37) % 150;
      const write = i % 3 !== 0;
      if (write) writesPerPage.set(page, (writesPerPage.get(page) ?? 0) + 1);
      lines.push(`${i * 0.01} ${write ? 'w' : 'r'} ${page}`);
    }
    lines.push('4 w 1000 2'); // wraps: 4 MiB has 1022 data pages, so 1000, 1001
    writesPerPage.set(1000, (writesPerPage.get(1000) ?? 0) + 1).set(1001, (writesPerPage.get(1001) ?? 0) + 1);
    const f = traceFile('replay.trace', lines.join('\n'));
    const g = EmulatedGuest.create({ name: 't', memoryBytes: 4 * MiB, vcpus: 2, prefill: 'none', workload: { profile: `trace:${f}`, rate: 'max', loop: false } });
    guests.push(g);
    await g.start();
    await g.whenIdle();
    await g.pause();
    const s = g.stats();
    expect(s.ops).toBe(402);
    expect(s.writes).toBe([...writesPerPage.values()].reduce((a, b) => a + b));
    for (const [page, n] of writesPerPage) expect(tableVersion(g.memory, g.layout, g.layout.dataStart + page)).toBe(n);
    expect(g.verify().ok).toBe(true);
    expect(g.saveDeviceState().workload.trace).toMatchObject({ file: f, accesses: 402, loop: false });
  });

  it('follows the timestamps (speed-scaled) and loops', async () => {
    const f = traceFile('timed.trace', '0 w 1\n100 w 2\n200 w 3\n');
    const g = EmulatedGuest.create({ name: 't', memoryBytes: 4 * MiB, prefill: 'none', workload: { profile: `trace:${f}`, speed: 2 } });
    guests.push(g);
    const t0 = performance.now();
    await g.start();
    while (g.stats().ops < 4) await new Promise((r) => setTimeout(r, 5));
    const took = performance.now() - t0;
    await g.pause();
    // Access 4 is the first of the second loop: at (200 + 0) / 2 = 100 ms of run time.
    expect(took).toBeGreaterThanOrEqual(95);
    const { ops } = g.stats();
    // Page 1 is written by accesses 0, 3, 6, ...: looping wrote it again. The pause may land
    // after access 6 (200 ms) on a busy machine, so the count follows the accesses done.
    expect(ops).toBeGreaterThanOrEqual(4);
    expect(tableVersion(g.memory, g.layout, g.layout.dataStart + 1)).toBe(Math.ceil(ops / 3));
    expect(tableVersion(g.memory, g.layout, g.layout.dataStart + 2)).toBe(Math.ceil((ops - 1) / 3));
    expect(g.verify().ok).toBe(true);
  });

  it('a restored guest continues the trace where it stopped', async () => {
    // 100 writes, 5 ms apart: pause after the 10th. The page of access 10 is missing, so the
    // vCPU blocks there until it arrives: the pause lands after exactly 10 accesses, not
    // wherever a poller catches a 500 ms trace.
    const f = traceFile('cont.trace', Array.from({ length: 100 }, (_, i) => `${i * 5} w ${i}`).join('\n'));
    const g = EmulatedGuest.create({ name: 't', memoryBytes: 4 * MiB, prefill: 'none', workload: { profile: `trace:${f}`, loop: false } });
    guests.push(g);
    const held = g.layout.dataStart + 10;
    g.memory.markMissing([held]);
    const faulted = new Promise<number>((resolve) => (g.onFault = resolve));
    await g.start();
    expect(await faulted).toBe(held);
    await g.pause();
    const done = g.stats().ops;
    expect(done).toBe(10);
    const ds = g.saveDeviceState();
    expect(ds.vcpuStates[0]!.traceIndex).toBe(done);
    const t = EmulatedGuest.restore({ memory: g.memory, deviceState: ds });
    guests.push(t);
    await g.stop();
    g.memory.installPage(held, new Uint8Array(g.memory.pageSize)); // never written yet: zeros
    await t.resume();
    await t.whenIdle();
    await t.pause();
    expect(t.stats().ops).toBe(100);
    for (let i = 0; i < 100; i++) expect(tableVersion(t.memory, t.layout, t.layout.dataStart + i)).toBe(1);
    writeFileSync(f, '0 w 1\n');
    expect(() => EmulatedGuest.restore({ memory: g.memory, deviceState: ds })).toThrow(/differs from the one the source guest ran/);
  });
});
