import { describe, expect, it } from 'vitest';
import { Bitmap } from '../../src/dataplane/bitmap';

describe('Bitmap', () => {
  it('sets, clears, gets and counts', () => {
    const b = new Bitmap(100);
    for (const p of [0, 1, 31, 32, 63, 64, 99]) b.set(p);
    b.set(31);
    expect(b.count()).toBe(7);
    expect(b.get(31)).toBe(true);
    expect(b.get(30)).toBe(false);
    b.clear(31);
    expect(b.get(31)).toBe(false);
    expect([...b]).toEqual([0, 1, 32, 63, 64, 99]);
    expect(Array.from(b.toPfns())).toEqual([0, 1, 32, 63, 64, 99]);
    expect(() => b.set(100)).toThrow(RangeError);
    expect(() => b.get(-1)).toThrow(RangeError);
    expect(() => b.get(1.5)).toThrow(RangeError);
  });

  it('full, or, andNot, clone, drain', () => {
    const all = Bitmap.full(70);
    expect(all.count()).toBe(70);
    const a = Bitmap.fromPfns(70, [1, 2, 3]);
    const rest = all.clone().andNot(a);
    expect(rest.count()).toBe(67);
    expect(rest.or(a).count()).toBe(70);
    expect(all.count()).toBe(70);
    expect(Array.from(a.drain())).toEqual([1, 2, 3]);
    expect(a.count()).toBe(0);
    expect(() => a.or(new Bitmap(71))).toThrow(/sizes differ/);
  });

  it('encodes to JSON-safe base64 and back', () => {
    const sizes = [0, 1, 31, 32, 33, 1000];
    for (const size of sizes) {
      const pfns = Array.from({ length: size }, (_, i) => i).filter((i) => (i * 7919) % 5 < 2);
      const b = Bitmap.fromPfns(size, pfns);
      const wire = JSON.parse(JSON.stringify(b.encode())) as ReturnType<Bitmap['encode']>;
      expect(typeof wire.bits).toBe('string');
      const d = Bitmap.decode(wire);
      expect(d.size).toBe(size);
      expect([...d]).toEqual(pfns);
    }
    expect(() => Bitmap.decode({ size: 64, bits: 'AAAA' })).toThrow(/expected 8/);
    // Bits beyond size are masked away.
    expect(Bitmap.decode({ size: 4, bits: Buffer.from([0xff, 0, 0, 0]).toString('base64') }).count()).toBe(4);
  });
});
