/**
 * Timing behaviour of channel-2 over loopback: the rate cap, setRate while sending, and
 * the priority lane overtaking a capped bulk transfer. Bounds are loose on purpose (a
 * shared 2-core machine); src/bench/channel.ts measures accuracy.
 */
import { randomFillSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PageChannel, PageChannelServer, type Lane } from '../../src/dataplane/channel';
import type { PageSink, PageSource } from '../../src/dataplane/pages';

const PS = 4096;
const MiB = 1024 * 1024;

class Mem implements PageSource, PageSink {
  readonly mem: Buffer;
  constructor(
    readonly pageCount: number,
    readonly pageSize = PS,
  ) {
    this.mem = Buffer.alloc(pageCount * pageSize);
  }
  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.mem.subarray(pfn * PS, (pfn + 1) * PS));
  }
  writePage(pfn: number, src: Uint8Array): void {
    this.mem.set(src, pfn * PS);
  }
}

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let server: PageChannelServer;
let seq = 0;
beforeAll(async () => {
  server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await server.close();
});

async function pair(pageCount: number, rateBytesPerSec: number, onPages?: (pfn: number, lane: Lane) => void) {
  const migrationId = `rate-${++seq}`;
  const sink = new Mem(pageCount);
  server.expect({ migrationId, secret: 'k', handlers: { sink, onPages: onPages && ((pfn, _d, lane) => onPages(pfn, lane)) } });
  const src = new Mem(pageCount);
  randomFillSync(src.mem); // incompressible, no zero pages: wire bytes ≈ page bytes
  const ch = await PageChannel.connect({ address: server.address, migrationId, secret: 'k', pageCount, rateBytesPerSec });
  return { ch, src, sink };
}

describe('channel-2 rate cap', () => {
  it('4 MiB at 16 MiB/s takes about 250 ms', async () => {
    const { ch, src, sink } = await pair(1024, 16 * MiB);
    const t0 = performance.now();
    await ch.sendPages(range(1024), src);
    await ch.barrier();
    const ms = performance.now() - t0;
    expect(sink.mem.equals(src.mem)).toBe(true);
    expect(ms).toBeGreaterThan(200);
    expect(ms).toBeLessThan(400);
    expect(ch.stats().sent.wireBytes / (ms / 1000)).toBeLessThan(16 * MiB * 1.25);
    await ch.close();
  });

  it('setRate while sending changes the pace, both ways', async () => {
    // Judge the time after setRate against the bytes still to send at that moment, so a
    // slow scheduler does not make the test flaky.
    async function change(pages: number, from: number, to: number, afterMs: number) {
      const { ch, src, sink } = await pair(pages, from);
      const sending = ch.sendPages(range(pages), src);
      await sleep(afterMs);
      const left = pages * PS - ch.stats().sent.wireBytes;
      const t = performance.now();
      ch.setRate(to);
      await sending;
      await ch.barrier();
      const seconds = (performance.now() - t) / 1000;
      expect(sink.mem.equals(src.mem)).toBe(true);
      expect(ch.rateBytesPerSec).toBe(to);
      await ch.close();
      return { left, seconds };
    }
    // 2 MiB at 4 MiB/s would take 500 ms; raised to 64 MiB/s after 50 ms.
    const up = await change(512, 4 * MiB, 64 * MiB, 50);
    expect(up.left).toBeGreaterThan(MiB);
    expect(up.seconds).toBeLessThan(0.5 * (up.left / (4 * MiB)));
    // 2 MiB at 16 MiB/s would take 125 ms; lowered to 4 MiB/s after 30 ms.
    const down = await change(512, 16 * MiB, 4 * MiB, 30);
    expect(down.left).toBeGreaterThan(256 * 1024);
    expect(down.seconds).toBeGreaterThan(0.6 * (down.left / (4 * MiB)));
    expect(down.seconds).toBeGreaterThan(2 * (down.left / (16 * MiB)));
  });
});

describe('channel-2 priority lane', () => {
  it('a priority send overtakes a queued, capped bulk transfer', async () => {
    const arrivals: { pfn: number; lane: Lane; at: number }[] = [];
    const { ch, src, sink } = await pair(1100, 8 * MiB, (pfn, lane) => arrivals.push({ pfn, lane, at: performance.now() }));
    const t0 = performance.now();
    let bulkDone = 0;
    const bulk = ch.sendPages(range(1024), src).then(() => (bulkDone = performance.now()));
    await sleep(60);
    const p0 = performance.now();
    await ch.sendPages([1090, 1091, 1092, 1093], src, { lane: 'priority' });
    const p1 = performance.now();
    await bulk;
    await ch.barrier();
    expect(p1 - p0).toBeLessThan(150); // a frame or so of bulk at most, not the ~440 ms left
    expect(bulkDone - p1).toBeGreaterThan(200);
    expect(bulkDone - t0).toBeGreaterThan(400);
    const prio = arrivals.filter((a) => a.lane === 'priority');
    expect(prio.map((a) => a.pfn)).toEqual([1090, 1091, 1092, 1093]);
    const lastBulk = Math.max(...arrivals.filter((a) => a.lane === 'bulk').map((a) => a.at));
    expect(lastBulk - (prio[0]?.at ?? Infinity)).toBeGreaterThan(200);
    expect(sink.mem.equals(src.mem.fill(0, 1024 * PS, 1090 * PS).fill(0, 1094 * PS))).toBe(true);
    expect(ch.stats().sent.priority.pages).toBe(4);
    expect(ch.stats().sent.bulk.pages).toBe(1024);
    await ch.close();
  });
});
