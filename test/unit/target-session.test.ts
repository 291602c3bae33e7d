import { describe, expect, it } from 'vitest';
import { TargetSession } from '../../src/activities/emulated-sessions';
import type { ChannelHandlers, PageChannelServer } from '../../src/dataplane/channel';
import { GuestMemory } from '../../src/guest/memory';

/** A target session whose channel-2 handlers the test calls itself (no server, no socket). */
function session(fresh: boolean) {
  let handlers: ChannelHandlers | null = null;
  const channels = {
    expect: (o: { handlers: ChannelHandlers }) => {
      handlers = o.handlers;
      return { close: () => undefined };
    },
  } as unknown as PageChannelServer;
  const memory = GuestMemory.create(16 * 4096);
  const written: number[] = [];
  const write = memory.writePage.bind(memory);
  memory.writePage = (pfn, src) => {
    written.push(pfn);
    write(pfn, src);
  };
  const s = new TargetSession({ migrationId: 'm', vm: 'v', source: 'a', memory, fresh, secret: 'x' }, channels);
  return { s, memory, written, deliver: (pfn: number, data: Uint8Array) => handlers!.onPages!(pfn, data, 'bulk') };
}

const zero = new Uint8Array(4096);
const page = (b: number) => new Uint8Array(4096).fill(b);

describe('TargetSession: pre-copy pages from channel-2', () => {
  it('does not write a zero page onto fresh memory that still holds its zeros, yet counts it as delivered', () => {
    const { s, memory, written, deliver } = session(true);
    deliver(3, zero);
    expect(written).toEqual([]);
    expect(s.hasDynamic.get(3)).toBe(true); // the merge must not put an older static page over it
    expect(memory.page(3).every((b) => b === 0)).toBe(true);
  });

  it('writes a zero page over a page channel-2 or the merge already wrote', () => {
    const { s, memory, written, deliver } = session(true);
    deliver(4, page(7));
    deliver(4, zero);
    s.staticWritten.set(5);
    memory.page(5).fill(9);
    deliver(5, zero);
    expect(written).toEqual([4, 4, 5]);
    expect(memory.page(4).every((b) => b === 0)).toBe(true);
    expect(memory.page(5).every((b) => b === 0)).toBe(true);
  });

  it('writes every page into memory it did not allocate (a retried attempt reuses it)', () => {
    const { written, deliver } = session(false);
    deliver(1, zero);
    deliver(2, page(1));
    expect(written).toEqual([1, 2]);
  });
});
