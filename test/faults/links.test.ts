/**
 * Severed links between two "hosts" (network namespaces, test/helpers/netns.ts): the
 * migration link goes down for a moment, for longer than channel-2's stall timeout, or for
 * good before the switch; it is cut during post-copy; the source agent dies during
 * post-copy with PbData sync. Each fault's timing is seeded (FERRY_FAULT_SEED, printed).
 * Scenarios are those of the fault bench (src/bench/faults.ts); every outcome is judged by
 * the report and by asking both agents where the VM runs.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PageChannel, PageChannelServer } from '../../src/dataplane/channel';
import { faultSeed, netnsUnavailable, runScenario, twoHostCluster, type FaultCluster, type TrialResult } from '../helpers/netns';

const seed = faultSeed('links.test.ts');
const cluster = twoHostCluster();

async function activityAttempts(c: FaultCluster, r: TrialResult): Promise<{ iterations: number[]; maxAttempt: number }> {
  const [workflowId, runId] = (r.report?.id ?? '').split('/');
  const history = await c.client.workflow.getHandle(workflowId!, runId).fetchHistory();
  const scheduled = new Map<string, string>();
  const iterations: number[] = [];
  let maxAttempt = 1;
  for (const e of history.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) {
      scheduled.set(String(e.eventId), s.activityType?.name ?? '');
      const payload = s.input?.payloads?.[0]?.data;
      if (s.activityType?.name === 'runIteration' && payload) iterations.push((JSON.parse(Buffer.from(payload).toString()) as { index: number }).index);
    }
    const st = e.activityTaskStartedEventAttributes;
    if (st && ['runIteration', 'switchToPostcopy', 'stopAndCopy'].includes(scheduled.get(String(st.scheduledEventId)) ?? '')) maxAttempt = Math.max(maxAttempt, st.attempt ?? 1);
  }
  return { iterations, maxAttempt };
}

function expectCompleted(r: TrialResult): void {
  expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('completed');
  expect(r.report?.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
}

describe('the two-host fixture', () => {
  it('network namespaces are available (root, iproute2)', () => {
    expect(netnsUnavailable()).toBeNull();
  });

  it('puts each agent in its own namespace, channel-2 on the migration link, shaped', () => {
    const c = cluster();
    const net = c.net!;
    expect(net.ns.source).not.toBe(net.ns.target);
    for (const [host, end] of [
      [c.source, 'source'],
      [c.target, 'target'],
    ] as const) {
      const agent = c.agents.get(host)!;
      // The agent announces its channel-2 listener on its migration-network address.
      expect(agent.output()).toContain(`${net.migration[end]}:`);
    }
    expect(net.shaping.migration).toMatch(/rate 400mbit/);
    expect(net.shaping.storage).toMatch(/rate 1gbit/);
  });
});

describe('channel-2 reconnect after a silent cut', () => {
  it("the target replaces a stale connection once the newcomer authenticates ('replace')", async () => {
    const server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
    try {
      const secret = randomBytes(32).toString('hex');
      const reg = server.expect({ migrationId: 'm-replace', secret, pageCount: 8, pageSize: 4096, handlers: { onPages: () => undefined }, onReconnect: 'replace' });
      const opts = { address: server.address, migrationId: 'm-replace', secret, pageCount: 8, pageSize: 4096 };
      const first = await PageChannel.connect(opts);
      await reg.connected;
      const serverSideOfFirst = reg.channel!;
      // A stranger without the secret cannot take over.
      await expect(PageChannel.connect({ ...opts, secret: 'wrong' })).rejects.toThrow(/authentication failed/);
      expect(reg.channel).toBe(serverSideOfFirst);
      const second = await PageChannel.connect(opts);
      expect(await serverSideOfFirst.closed).toHaveProperty('message', expect.stringMatching(/replaced by a new authenticated connection/));
      expect(reg.channel).not.toBe(serverSideOfFirst);
      await second.barrier({ timeoutMs: 5_000 });
      first.destroy();
      await second.close();
    } finally {
      await server.close();
    }
  });
});

describe('migration link cut before the switch', () => {
  it('down 1–3 s: the migration continues and completes, verified', async () => {
    expectCompleted(await runScenario(cluster(), 'link-blip', seed));
  }, 90_000);

  it("down 9–12 s (beyond the 8 s stall timeout): the step fails, is retried and redials (taking over from the target's stale end if it still looks open); completes, verified", async () => {
    const r = await runScenario(cluster(), 'link-outage', seed);
    expectCompleted(r);
    const h = await activityAttempts(cluster(), r);
    expect(h.maxAttempt, 'a channel-2 step was retried after the stall').toBeGreaterThanOrEqual(2);
    expect(h.iterations, 'each iteration scheduled once').toEqual(h.iterations.map((_, i) => i + 1));
  }, 120_000);

  it('down for good: rolled back, the guest verified on the source, the reason names channel-2', async () => {
    const r = await runScenario(cluster(), 'link-dead', seed);
    expect(r.verdict, `${r.fault}: ${r.detail}`).toBe('rolled-back');
    expect(r.report?.verification).toMatchObject({ ok: true, where: 'source' });
    expect(r.report?.reason).toMatch(/channel-2/);
    expect(r.report?.reason).toMatch(/rolled back, \S+ runs on net-a/);
  }, 120_000);
});

describe('during post-copy', () => {
  it('migration link cut: the target finishes from PbData, verified', async () => {
    const r = await runScenario(cluster(), 'link-cut-postcopy', seed);
    expectCompleted(r);
    expect(r.report?.postcopy).toMatchObject({ fellBackToPbData: true, pbdata: 'async' });
  }, 90_000);

  it('source agent killed (PbData sync): the target still completes from PbData; the unconfirmed release is reported', async () => {
    const r = await runScenario(cluster(), 'source-killed-postcopy', seed);
    expectCompleted(r);
    expect(r.report?.postcopy).toMatchObject({ fellBackToPbData: true, pbdata: 'sync' });
    expect(r.report?.reason).toMatch(/net-a did not confirm releasing its paused copy/);
  }, 120_000);
});
