/** liveHosts: concurrent callers share one inventory in flight; nothing is cached after it. */
import type { Client } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { liveHosts } from '../../src/client/migrations';

function fakeClient() {
  let inventories = 0;
  const release: Array<() => void> = [];
  const client = {
    workflow: {
      getHandle: () => ({ query: async () => [{ hostId: 'h1', up: true }] }),
      execute: (_wf: string, opts: { args: [{ hosts: string[] }] }) => {
        inventories++;
        const n = inventories;
        return new Promise((resolve) =>
          release.push(() => resolve({ hosts: opts.args[0].hosts.map((h) => ({ ok: true, facts: { hostId: h, vms: [], memoryFreeBytes: n } })) })),
        );
      },
    },
  } as unknown as Client;
  return { client, count: () => inventories, releaseAll: () => release.splice(0).forEach((r) => r()) };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('liveHosts', () => {
  it('concurrent callers share the inventory in flight', async () => {
    const f = fakeClient();
    const a = liveHosts(f.client);
    const b = liveHosts(f.client);
    await tick();
    expect(f.count()).toBe(1);
    f.releaseAll();
    const [ra, rb] = await Promise.all([a, b]);
    expect(ra).toBe(rb);
    expect(ra.facts.map((x) => x.hostId)).toEqual(['h1']);
  });

  it('a caller after it settled asks again (no cache)', async () => {
    const f = fakeClient();
    const first = liveHosts(f.client);
    await tick();
    f.releaseAll();
    expect((await first).facts[0]!.memoryFreeBytes).toBe(1);
    const second = liveHosts(f.client);
    await tick();
    expect(f.count()).toBe(2);
    f.releaseAll();
    expect((await second).facts[0]!.memoryFreeBytes).toBe(2);
  });

  it('another client or timeout has its own inventory', async () => {
    const f = fakeClient();
    const g = fakeClient();
    const calls = [liveHosts(f.client), liveHosts(f.client, 1000), liveHosts(g.client)];
    await tick();
    expect(f.count()).toBe(2);
    expect(g.count()).toBe(1);
    f.releaseAll();
    g.releaseAll();
    await Promise.all(calls);
  });
});
