/** PostcopyPuller: when the target asks for missing pages itself, and which. */
import { describe, expect, it } from 'vitest';
import { PostcopyPuller } from '../../src/activities/postcopy-pull';

const none = { has: () => false };
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

describe('PostcopyPuller', () => {
  it('asks nothing while the push brings pages', () => {
    const p = new PostcopyPuller(1000, 4);
    expect(p.next(500, 0, 10, () => range(0, 10), none)).toEqual([]);
    expect(p.next(1900, 1000, 10, () => range(0, 10), none)).toEqual([]);
    expect(p.pulled).toBe(0);
  });

  it('after a quiet second, asks for a batch; the next when half of it landed', () => {
    const p = new PostcopyPuller(1000, 4);
    expect(p.next(1001, 0, 10, () => range(0, 10), none)).toEqual([0, 1, 2, 3]);
    // One page of the batch landed: not yet half.
    expect(p.next(1100, 1050, 9, () => range(1, 10), none)).toEqual([]);
    // Two landed (pulled pages count as pushes: pushedAt moved), half the batch: the next four.
    expect(p.next(1200, 1150, 8, () => range(2, 10), none)).toEqual([4, 5, 6, 7]);
    expect(p.pulled).toBe(8);
  });

  it('skips pages a vCPU fault already asked for', () => {
    const p = new PostcopyPuller(1000, 3);
    expect(p.next(2000, 0, 6, () => range(0, 6), { has: (pfn) => pfn % 2 === 0 })).toEqual([1, 3, 5]);
  });

  it('after another quiet spell asks again for what did not come', () => {
    const p = new PostcopyPuller(1000, 2);
    expect(p.next(1001, 0, 4, () => range(0, 4), none)).toEqual([0, 1]);
    // Nothing arrived for a second after the ask: the same pages again.
    expect(p.next(2002, 0, 4, () => range(0, 4), none)).toEqual([0, 1]);
    expect(p.dueAt(0)).toBe(3002);
  });

  it('lists the missing pages only when it asks', () => {
    const p = new PostcopyPuller(1000, 2);
    let listed = 0;
    p.next(10, 0, 100, () => (listed++, range(0, 100)), none);
    expect(listed).toBe(0);
    p.next(1001, 0, 100, () => (listed++, range(0, 100)), none);
    expect(listed).toBe(1);
  });
});
