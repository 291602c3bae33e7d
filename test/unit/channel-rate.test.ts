/**
 * Pacing of channel-2's sender, checked against a virtual clock (ManualClock) so the
 * figures are exact whatever the machine's load: the rate cap, setRate while sending, and
 * the priority lane overtaking a capped bulk transfer. Pages still travel over loopback;
 * only the rate cap's time is virtual. Accuracy against the real clock is measured by
 * `npm run bench:dataplane` (src/bench/channel.ts), not asserted here.
 */
import { randomFillSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PageChannel, PageChannelServer, type Lane } from '../../src/dataplane/channel';
import { ManualClock } from '../../src/dataplane/clock';
import type { PageSink, PageSource } from '../../src/dataplane/pages';
import { TokenBucket } from '../../src/dataplane/rate';

const PS = 4096;
const MiB = 1024 * 1024;
/** A capped frame carries at most this much time of the link (channel-lanes.ts). */
const CAPPED_FRAME_MS = 50;

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
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

let server: PageChannelServer;
let seq = 0;
beforeAll(async () => {
  server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await server.close();
});

/** A capped source channel on `clock` and its target; random pages, so wire bytes ≈ page bytes. */
async function pair(pageCount: number, rateBytesPerSec: number, clock: ManualClock, onPages?: (pfn: number, lane: Lane) => void) {
  const migrationId = `rate-${++seq}`;
  const sink = new Mem(pageCount);
  server.expect({ migrationId, secret: 'k', handlers: { sink, onPages: onPages && ((pfn, _d, lane) => onPages(pfn, lane)) } });
  const src = new Mem(pageCount);
  randomFillSync(src.mem);
  const ch = await PageChannel.connect({ address: server.address, migrationId, secret: 'k', pageCount, rateBytesPerSec, clock });
  return { ch, src, sink };
}

/** Virtual milliseconds `bytes` take at `rate` bytes/s. */
const msAt = (bytes: number, rate: number): number => (bytes / rate) * 1000;

describe('token bucket on an injected clock', () => {
  it('waits bytes/rate, bounds the burst after idling, and accrues at the old rate up to setRate', () => {
    let t = 0;
    const b = new TokenBucket(1000, { now: () => t });
    expect(b.reserve(500)).toBe(500); // starts empty
    t = 500;
    expect(b.reserve(250)).toBe(250);
    t = 750;
    expect(b.reserve(0)).toBe(0);
    t = 100_750; // 100 s idle: the credit is capped at max(rate × 50 ms, 64 KiB)
    expect(b.reserve(64 * 1024)).toBe(0);
    expect(b.reserve(1)).toBe(1);
    t = 100_751;
    b.setRate(2000); // the millisecond before counts at 1000 B/s
    t = 100_752;
    expect(b.reserve(2)).toBe(0);
    expect(b.reserve(2)).toBe(1);
    b.setRate(0);
    expect(b.bytesPerSecond).toBe(Infinity);
    expect(b.reserve(1e12)).toBe(0);
  });
});

describe('channel-2 rate cap', () => {
  it('every frame waits for its bytes: 4 MiB at 16 MiB/s take wire bytes / rate of virtual time', async () => {
    const rate = 16 * MiB;
    const clock = new ManualClock();
    let received = 0;
    let early = 0;
    const { ch, src, sink } = await pair(1024, rate, clock, () => {
      received += PS;
      if (received > (rate * clock.now()) / 1000 + 1e-6) early++; // a page before its bytes were paid for
    });
    await clock.drive(ch.sendPages(range(1024), src).then(() => ch.barrier()));
    const sent = ch.stats().sent;
    expect(sink.mem.equals(src.mem)).toBe(true);
    expect(early).toBe(0);
    // The bucket starts empty and each wait ends when the tokens reach zero: one wait per
    // frame (the BARRIER's included), together exactly the wire bytes at the cap.
    expect(clock.sleeps.length).toBe(sent.frames);
    expect(clock.now()).toBeCloseTo(msAt(sent.wireBytes, rate), 6);
    expect(sum(clock.sleeps.map((s) => s.ms))).toBeCloseTo(msAt(sent.wireBytes, rate), 6);
    // Capped frames hold at most 50 ms of the link, so a priority send never waits longer.
    expect(Math.max(...clock.sleeps.map((s) => s.ms))).toBeLessThanOrEqual(CAPPED_FRAME_MS);
    expect(sent.pages).toBe(1024);
    await clock.drive(ch.close()); // CLOSE goes through the cap too
  });

  it('setRate while sending: bytes before it at the old rate, every byte after it at the new one', async () => {
    async function change(pages: number, from: number, to: number, atMs: number) {
      const clock = new ManualClock();
      const { ch, src, sink } = await pair(pages, from, clock);
      let t1 = NaN;
      let before = NaN;
      // Change the rate at the first wait that starts at or after atMs: the frame in flight
      // was reserved at the old rate, the bytes written so far are exactly those paid for.
      await clock.drive(
        ch.sendPages(range(pages), src).then(() => ch.barrier()),
        () => {
          if (!Number.isNaN(t1) || clock.now() < atMs) return;
          t1 = clock.now();
          before = ch.stats().sent.wireBytes;
          ch.setRate(to);
        },
      );
      const after = ch.stats().sent.wireBytes - before;
      const end = clock.now();
      expect(sink.mem.equals(src.mem)).toBe(true);
      expect(ch.rateBytesPerSec).toBe(to);
      await clock.drive(ch.close()); // CLOSE goes through the cap too
      return { t1, before, after, end };
    }
    // 4 MiB at 4 MiB/s, raised to 16 MiB/s at 50 ms.
    const up = await change(1024, 4 * MiB, 16 * MiB, 50);
    expect(up.t1).toBeGreaterThanOrEqual(50);
    expect(up.before).toBeCloseTo((4 * MiB * up.t1) / 1000, 3);
    expect(up.end - up.t1).toBeCloseTo(msAt(up.after, 16 * MiB), 6);
    // 2 MiB at 16 MiB/s, lowered to 4 MiB/s at 30 ms (the frame in flight pays the new rate too).
    const down = await change(512, 16 * MiB, 4 * MiB, 30);
    expect(down.t1).toBeGreaterThanOrEqual(30);
    expect(down.before).toBeCloseTo((16 * MiB * down.t1) / 1000, 3);
    expect(down.end - down.t1).toBeCloseTo(msAt(down.after, 4 * MiB), 6);
  });
});

describe('channel-2 priority lane', () => {
  it('a priority send overtakes a queued, capped bulk transfer after the frame in flight', async () => {
    const rate = 8 * MiB;
    const clock = new ManualClock();
    const arrivals: { pfn: number; lane: Lane }[] = [];
    const { ch, src, sink } = await pair(1100, rate, clock, (pfn, lane) => arrivals.push({ pfn, lane }));
    let prio: Promise<void> | undefined;
    let inFlight = -1; // index in clock.sleeps of the bulk frame's wait when the priority send came
    let bulkPagesBuilt = 0;
    await clock.drive(
      ch.sendPages(range(1024), src).then(() => ch.barrier()),
      () => {
        if (prio || clock.now() < 60) return;
        inFlight = clock.sleeps.length - 1;
        bulkPagesBuilt = ch.stats().sent.bulk.pages; // frames written + the one waiting
        prio = ch.sendPages([1090, 1091, 1092, 1093], src, { lane: 'priority' });
      },
    );
    await prio;
    const sent = ch.stats().sent;
    // The priority frame's wait starts as the bulk frame in flight goes out, and is its own size.
    const waits = clock.sleeps;
    expect(inFlight).toBeGreaterThan(0);
    expect(waits[inFlight + 1]?.at).toBeCloseTo((waits[inFlight]?.at ?? NaN) + (waits[inFlight]?.ms ?? NaN), 6);
    expect(waits[inFlight + 1]?.ms).toBeCloseTo(msAt(sent.priority.wireBytes, rate), 6);
    expect(waits[inFlight]?.ms).toBeLessThanOrEqual(CAPPED_FRAME_MS);
    // On the wire: the bulk pages built so far, then the priority pages, then the rest.
    const firstPrio = arrivals.findIndex((a) => a.lane === 'priority');
    expect(firstPrio).toBe(bulkPagesBuilt);
    expect(bulkPagesBuilt).toBeLessThan(1024 / 2);
    expect(arrivals.slice(firstPrio, firstPrio + 4)).toEqual([1090, 1091, 1092, 1093].map((pfn) => ({ pfn, lane: 'priority' })));
    expect(arrivals.filter((a) => a.lane === 'bulk').length).toBe(1024);
    // One cap for both lanes.
    expect(clock.now()).toBeCloseTo(msAt(sent.wireBytes, rate), 6);
    expect(sink.mem.equals(src.mem.fill(0, 1024 * PS, 1090 * PS).fill(0, 1094 * PS))).toBe(true);
    expect(sent.priority.pages).toBe(4);
    expect(sent.bulk.pages).toBe(1024);
    await clock.drive(ch.close()); // CLOSE goes through the cap too
  });
});
