import { afterEach, describe, expect, it } from 'vitest';
import { EmulatedGuest, GuestMemory } from '../../src/guest';

const MiB = 1024 ** 2;
const guests: EmulatedGuest[] = [];
afterEach(async () => {
  await Promise.all(guests.splice(0).map((g) => g.stop()));
});

function fill(memory: GuestMemory, pfn: number, byte: number): Uint8Array {
  const data = new Uint8Array(memory.pageSize).fill(byte);
  memory.guestWrite(pfn, data);
  return data;
}

describe('GuestMemory', () => {
  it('pages are views; readPage copies; writePage writes; chunks split the RAM', () => {
    const m = GuestMemory.create(1 * MiB, { chunkBytes: 64 * 1024 }); // 16 pages per chunk
    expect(m.pageCount).toBe(256);
    expect(m.memoryBytes).toBe(MiB);
    const src = new Uint8Array(4096).map((_, i) => i & 0xff);
    m.writePage(17, src); // second chunk
    expect(m.page(17)).toEqual(src);
    const dst = new Uint8Array(4096);
    m.readPage(17, dst);
    expect(dst).toEqual(src);
    m.page(17)[0] = 99; // a view, not a copy
    m.readPage(17, dst);
    expect(dst[0]).toBe(99);
    expect(m.page(16).every((b) => b === 0)).toBe(true);
    expect(() => m.page(256)).toThrow(RangeError);
    expect(() => m.writePage(0, new Uint8Array(10))).toThrow(RangeError);
  });

  it('rejects bad geometry with a clear error', () => {
    expect(() => GuestMemory.create(4097)).toThrow(/multiple of the page size/);
    expect(() => GuestMemory.create(MiB, { pageSize: 3000 })).toThrow(/power of two/);
  });

  it('collectDirty is get-and-clear, in pfn order; writePage (data plane) does not dirty', () => {
    const m = GuestMemory.create(1 * MiB);
    fill(m, 200, 1);
    fill(m, 3, 1);
    fill(m, 31, 1);
    fill(m, 32, 1);
    fill(m, 3, 2); // twice: one bit
    m.writePage(100, new Uint8Array(4096));
    expect(m.dirtyCount()).toBe(4);
    expect(m.isDirty(31)).toBe(true);
    expect([...m.collectDirty()]).toEqual([3, 31, 32, 200]);
    expect(m.dirtyCount()).toBe(0);
    expect(m.collectDirty().length).toBe(0);
    fill(m, 7, 1);
    m.clearDirty();
    expect(m.collectDirty().length).toBe(0);
  });

  it('collectDirty grows past its initial buffer', () => {
    const m = GuestMemory.create(64 * MiB);
    for (let p = 0; p < m.pageCount; p += 2) m.markDirty(p);
    const got = m.collectDirty();
    expect(got.length).toBe(m.pageCount / 2);
    expect(got[got.length - 1]).toBe(m.pageCount - 2);
  });

  it('present bitmap: markMissing, installPage only when missing, missingPfns', () => {
    const m = GuestMemory.create(1 * MiB + 5 * 4096); // 261 pages: a partial last bitmap word
    expect(m.missingCount()).toBe(0);
    m.markMissing([0, 33, 260]);
    expect(m.missingCount()).toBe(3);
    expect([...m.missingPfns()]).toEqual([0, 33, 260]);
    expect(m.isPresent(33)).toBe(false);
    const data = new Uint8Array(4096).fill(7);
    expect(m.installPage(33, data)).toBe(true);
    expect(m.isPresent(33)).toBe(true);
    expect(m.installPage(33, new Uint8Array(4096).fill(9))).toBe(false); // already there
    expect(m.page(33)[0]).toBe(7);
    m.writePage(260, data); // a raw write also makes the page present
    expect([...m.missingPfns()]).toEqual([0]);
    m.markAllMissing();
    expect(m.missingCount()).toBe(261);
  });

  it('attach(descriptor) shares the same memory and bitmaps', () => {
    const a = GuestMemory.create(1 * MiB);
    const b = GuestMemory.attach(structuredClone(a.descriptor()));
    fill(a, 5, 42);
    expect(b.page(5)[100]).toBe(42);
    expect([...b.collectDirty()]).toEqual([5]);
    expect(a.dirtyCount()).toBe(0);
  });

  it('holds 8 GiB in 1 GiB SharedArrayBuffers (committed lazily)', () => {
    const m = GuestMemory.create(8 * 1024 ** 3);
    expect(m.descriptor().chunks.length).toBe(8);
    const last = m.pageCount - 1;
    fill(m, last, 0xab);
    fill(m, 262_144, 0xcd); // first page of the second chunk
    expect(m.page(last)[4095]).toBe(0xab);
    expect([...m.collectDirty()]).toEqual([262_144, last]);
  });
});

describe('dirty log under a concurrent writer', () => {
  it('collect-then-copy while vCPUs write never loses a write (byte-equal copy at the end)', { timeout: 90_000 }, async () => {
    // 2 vCPUs write flat out over a small RAM so that pages are rewritten while the
    // collector copies them: the copy must still converge to the source exactly.
    const g = EmulatedGuest.create({ name: 'dirty', memoryBytes: 4 * MiB, vcpus: 2, prefill: 'none', workload: { profile: 'lmbench', rate: 'max', writeRatio: 0.9 }, seed: 11 });
    guests.push(g);
    const src = g.memory;
    const dst = GuestMemory.create(src.memoryBytes);
    const buf = new Uint8Array(src.pageSize);
    let rounds = 0;
    let raced = 0; // rounds in which a page was written again after being collected
    const copy = (): void => {
      const pfns = src.collectDirty();
      for (const pfn of pfns) {
        src.readPage(pfn, buf);
        dst.writePage(pfn, buf);
      }
      if (pfns.some((pfn) => src.isDirty(pfn))) raced++;
      rounds++;
    };
    await g.start();
    // Copy until the guest has made WRITES writes and, in at least RACED rounds, wrote a page
    // again after the round had collected it (while it was being copied, or just after): the
    // situation where a lost write would show. Counts, not time: a busy machine only makes
    // this take longer. GUARD_MS only turns a guest that stopped writing into a failure
    // instead of a hang.
    const WRITES = 10_000;
    const RACED = 20;
    const GUARD_MS = 45_000;
    const guard = performance.now() + GUARD_MS;
    while (g.stats().writes < WRITES || raced < RACED) {
      if (performance.now() > guard) {
        throw new Error(`after ${GUARD_MS} ms: ${g.stats().writes} of ${WRITES} writes, ${raced} of ${RACED} rounds with a page rewritten after collection`);
      }
      copy();
      if (rounds % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    await g.pause();
    const writesAtPause = g.stats().writes;
    copy(); // the last round: everything dirtied since the previous one
    expect(g.stats().writes).toBe(writesAtPause); // paused: the last round copies a still source
    expect(src.dirtyCount()).toBe(0);
    let differing = 0;
    for (let pfn = 0; pfn < src.pageCount; pfn++) {
      if (!Buffer.from(src.page(pfn)).equals(Buffer.from(dst.page(pfn)))) differing++;
    }
    expect(differing).toBe(0);
    const report = EmulatedGuest.restore({ memory: dst, deviceState: g.saveDeviceState() }).verify();
    expect(report.ok).toBe(true);
  });
});
