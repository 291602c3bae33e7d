import { describe, expect, it } from 'vitest';
import { chooseTarget, checkLimits, linkShare, nextStarts, planPlacement, retryDecision, retryDelayMs, type Limits, type QueuedItem, type RunningItem } from '../../src/policy/placement';

const MiB = 1024 ** 2;
const limits = (over: Partial<Limits> = {}): Limits => ({ maxParallel: 10, maxOutboundPerHost: 2, maxInboundPerHost: 1, linkBudgetBytesPerSec: 0, ...over });
const q = (vm: string, source: string, target: string, over: Partial<QueuedItem> = {}): QueuedItem => ({ vm, source, target, priority: 100, seq: 0, bandwidthBytesPerSec: 32 * MiB, notBeforeMs: 0, ...over });
const r = (vm: string, source: string, target: string, bw = 32 * MiB): RunningItem => ({ vm, source, target, bandwidthBytesPerSec: bw });

describe('chooseTarget', () => {
  it.each([
    ['the host with the most free memory', 16, [['c', 64], ['d', 128]], [], 'd'],
    ['ties go to the first host id', 16, [['d', 64], ['c', 64]], [], 'c'],
    ['never the excluded source', 16, [['a', 512], ['c', 64]], ['a'], 'c'],
    ['nothing when nothing fits', 256, [['c', 64], ['d', 128]], [], null],
    ['an exact fit', 64, [['c', 64]], [], 'c'],
  ] as const)('%s', (_name, vmMiB, hosts, exclude, expected) => {
    const c = chooseTarget(vmMiB * MiB, hosts.map(([hostId, free]) => ({ hostId, freeBytes: free * MiB })), exclude);
    expect(c.target).toBe(expected);
    expect(c.reason.length).toBeGreaterThan(0);
  });

  it('says why nothing fits', () => {
    expect(chooseTarget(256 * MiB, [{ hostId: 'c', freeBytes: 64 * MiB }]).reason).toBe('needs 256 MiB; the most free memory on any candidate is 64 MiB on c (never overcommitted)');
  });
});

describe('planPlacement', () => {
  it.each([
    {
      name: 'largest first, each on the host with the most memory left',
      vms: [['v1', 'a', 16], ['v2', 'a', 32], ['v3', 'b', 16]],
      hosts: [['c', 64], ['d', 48]],
      placed: { v2: 'c', v1: 'd', v3: 'c' },
      unplaced: [],
    },
    {
      name: 'never overcommits: the VM that fits nowhere is reported',
      vms: [['v1', 'a', 32], ['v2', 'a', 32], ['big', 'b', 96]],
      hosts: [['c', 64], ['d', 64]],
      placed: { v1: 'c', v2: 'd' },
      unplaced: ['big'],
    },
    {
      name: 'a source is never a target',
      vms: [['v1', 'a', 16]],
      hosts: [['a', 1024], ['c', 32]],
      placed: { v1: 'c' },
      unplaced: [],
    },
    {
      name: 'no candidates: everything unplaced',
      vms: [['v1', 'a', 16]],
      hosts: [],
      placed: {},
      unplaced: ['v1'],
    },
  ] as const)('$name', ({ vms, hosts, placed, unplaced }) => {
    const p = planPlacement(
      vms.map(([vm, source, m]) => ({ vm, source, memoryBytes: m * MiB })),
      hosts.map(([hostId, free]) => ({ hostId, freeBytes: free * MiB })),
    );
    expect(Object.fromEntries(p.placements.map((x) => [x.vm, x.target]))).toEqual(placed);
    expect(p.unplaced.map((u) => u.vm)).toEqual(unplaced);
    for (const f of Object.values(p.freeAfter)) expect(f).toBeGreaterThanOrEqual(0);
  });

  it('names the VM and the reason when it cannot be placed', () => {
    const p = planPlacement([{ vm: 'big', source: 'a', memoryBytes: 96 * MiB }], [{ hostId: 'c', freeBytes: 64 * MiB }]);
    expect(p.unplaced[0]!.reason).toBe('big not placed: needs 96 MiB; the most free memory on any candidate is 64 MiB on c (never overcommitted)');
  });
});

describe('nextStarts', () => {
  it.each([
    {
      name: 'two outbound per source, one inbound per target',
      queue: [q('v1', 'a', 'c', { seq: 1 }), q('v2', 'a', 'd', { seq: 2 }), q('v3', 'a', 'e', { seq: 3 }), q('v4', 'b', 'c', { seq: 4 })],
      running: [],
      limits: limits(),
      start: ['v1', 'v2'],
    },
    {
      name: 'running migrations count against the limits',
      queue: [q('v3', 'a', 'e', { seq: 1 }), q('v4', 'b', 'c', { seq: 2 }), q('v5', 'b', 'f', { seq: 3 })],
      running: [r('v1', 'a', 'c'), r('v2', 'a', 'd')],
      limits: limits(),
      start: ['v5'],
    },
    {
      name: 'cluster-wide limit',
      queue: [q('v1', 'a', 'c', { seq: 1 }), q('v2', 'b', 'd', { seq: 2 }), q('v3', 'e', 'f', { seq: 3 })],
      running: [],
      limits: limits({ maxParallel: 2 }),
      start: ['v1', 'v2'],
    },
    {
      name: 'higher priority first, then queue order',
      queue: [q('low', 'a', 'c', { seq: 1, priority: 50 }), q('high', 'b', 'c', { seq: 2, priority: 100 })],
      running: [],
      limits: limits(),
      start: ['high'],
    },
    {
      name: 'a blocked higher priority does not block other hosts',
      queue: [q('high', 'a', 'c', { seq: 1, priority: 100 }), q('low', 'b', 'd', { seq: 2, priority: 50 })],
      running: [r('x', 'z', 'c')],
      limits: limits(),
      start: ['low'],
    },
    {
      name: 'retry backoff holds an item back',
      queue: [q('v1', 'a', 'c', { notBeforeMs: 5000 })],
      running: [],
      limits: limits(),
      start: [],
    },
    {
      name: 'link budget per host: 64 MiB/s carries two 32 MiB/s migrations',
      queue: [q('v1', 'a', 'c', { seq: 1 }), q('v2', 'a', 'd', { seq: 2 }), q('v3', 'b', 'c', { seq: 3 })],
      running: [],
      limits: limits({ maxInboundPerHost: 2, linkBudgetBytesPerSec: 64 * MiB }),
      start: ['v1', 'v2', 'v3'],
    },
    {
      name: 'link budget full: waits',
      queue: [q('v2', 'a', 'd', { seq: 1 })],
      running: [r('v1', 'a', 'c', 48 * MiB)],
      limits: limits({ linkBudgetBytesPerSec: 64 * MiB }),
      start: [],
    },
  ])('$name', ({ queue, running, limits: l, start }) => {
    const d = nextStarts(queue, running, l, 1000);
    expect(d.start.map((s) => s.vm)).toEqual(start);
    expect(d.start.length + d.wait.length).toBe(queue.length);
    for (const w of d.wait) expect(w.reason.length).toBeGreaterThan(0);
  });

  it('says which limit an item waits for', () => {
    const d = nextStarts([q('v3', 'a', 'e')], [r('v1', 'a', 'c'), r('v2', 'a', 'd')], limits(), 0);
    expect(d.wait[0]!.reason).toBe('a has 2 outbound migrations (limit 2)');
    const d2 = nextStarts([q('v3', 'b', 'c')], [r('v1', 'a', 'c')], limits(), 0);
    expect(d2.wait[0]!.reason).toBe('c has 1 inbound migrations (limit 1)');
  });

  it('wakes at the earliest retry', () => {
    expect(nextStarts([q('v1', 'a', 'c', { notBeforeMs: 5000 }), q('v2', 'b', 'd', { notBeforeMs: 3000 })], [], limits(), 1000).nextWakeMs).toBe(3000);
  });

  it('caps a migration to the link budget', () => {
    const d = nextStarts([q('v1', 'a', 'c', { bandwidthBytesPerSec: 0 })], [], limits({ linkBudgetBytesPerSec: 50 * MiB }), 0);
    expect(d.start[0]!.bandwidthBytesPerSec).toBe(50 * MiB);
  });
});

describe('retries and limits', () => {
  it.each([
    [1, 1000, 60000, 1000],
    [2, 1000, 60000, 2000],
    [3, 1000, 60000, 4000],
    [10, 1000, 60000, 60000],
  ])('attempt %d backs off base %d (max %d): %d ms', (attempt, base, max, expected) => {
    expect(retryDelayMs(attempt, base, max)).toBe(expected);
  });

  it.each([
    [1, 3, 'rolled-back', true],
    [3, 3, 'failed', false],
    [1, 3, 'completed', false],
  ])('attempt %d of %d %s: retry %s', (attempt, max, outcome, retry) => {
    expect(retryDecision(attempt, max, outcome).retry).toBe(retry);
  });

  it('linkShare: uncapped takes the whole link', () => {
    expect(linkShare(0, 100)).toBe(100);
    expect(linkShare(30, 100)).toBe(30);
    expect(linkShare(30, 0)).toBe(0);
  });

  it('checkLimits names the field', () => {
    expect(checkLimits(limits())).toBeNull();
    expect(checkLimits(limits({ maxInboundPerHost: 0 }))).toMatch(/^maxInboundPerHost/);
  });
});
