/**
 * Evacuation of two hosts onto a third, on real agent processes: placement by free memory
 * (the VM that cannot fit is reported, not forced), limits of 2 outbound per source and 1
 * inbound per target never exceeded (asserted on the recorded timeline and on the audit
 * trail), every VM verified on its new host, continue-as-new on the way, and the same
 * ticket over real HTTP returning the same evacuation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens } from '../../src/api/auth';
import { startApiServer, type RunningApi } from '../../src/api/server';
import type { FerryProcess } from '../../src/support/processes';
import { inventory } from '../../src/client/migrations';
import { startEvacuation } from '../../src/client/operations';
import { evacuationQuery, type EvacuationSummary, type TimelineEntry } from '../../src/workflows/evacuation-messages';
import { startAgentProcess, startTestController, tempDir, testAuditStore, uniqueHost, type TestController } from '../helpers/cluster';
import { maybeRecordHistory } from '../helpers/history';
import { createVm, defaultOptions, MiB } from '../helpers/migrate';
import { ferry } from '../helpers/ferry-cli';

const TOKEN = 'evacuation-test-token';

const run = Math.random().toString(36).slice(2, 8);
const srcA = uniqueHost('ev-a');
const srcB = uniqueHost('ev-b');
const tgt = uniqueHost('ev-c');
const storage = tempDir('ev-storage');

let controller: TestController;
let api: RunningApi;
const agents: FerryProcess[] = [];

const vms: { name: string; host: string; mib: number; workload: string }[] = [
  { name: `ev1-${run}`, host: srcA, mib: 32, workload: 'kernel-compile' },
  { name: `ev2-${run}`, host: srcA, mib: 16, workload: 'kernel-compile' },
  { name: `ev3-${run}`, host: srcA, mib: 16, workload: 'kernel-compile' },
  { name: `ev4-${run}`, host: srcB, mib: 32, workload: 'kernel-compile' },
  { name: `ev5-${run}`, host: srcB, mib: 16, workload: 'kernel-compile' },
  // 160 MiB never fits the target's 120 MiB: reported, not forced.
  { name: `big-${run}`, host: srcB, mib: 160, workload: 'idle' },
];

beforeAll(async () => {
  const [c, a, b, t] = await Promise.all([
    startTestController(),
    startAgentProcess(srcA, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(srcB, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(tgt, { storageDir: storage, memoryCapacity: '120MiB' }),
  ]);
  controller = c;
  agents.push(a, b, t);
  api = await startApiServer({ client: controller.client, store: testAuditStore(), tokens: loadTokens({ token: TOKEN }), listen: '127.0.0.1:0' });
  await Promise.all(vms.map((v, i) => createVm(controller.client, v.host, { name: v.name, memoryBytes: v.mib * MiB, workload: v.workload, seed: 11 + i })));
});

afterAll(async () => {
  await api?.close();
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

/** The most migrations active at once, per key, over half-open intervals [start, end). */
function peak(entries: TimelineEntry[], key: (e: TimelineEntry) => string, start: (e: TimelineEntry) => number, end: (e: TimelineEntry) => number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of entries) {
    const t = start(e);
    const active = entries.filter((x) => key(x) === key(e) && start(x) <= t && t < end(x)).length;
    out[key(e)] = Math.max(out[key(e)] ?? 0, active);
  }
  return out;
}

describe('evacuation', () => {
  it('moves every VM that fits within the limits, verifies each, and reports the one that cannot fit', async () => {
    const ticket = `RACK-${run}`;
    // Started through the client (the code path of POST /v1/evacuations and `ferry evacuate`),
    // with continue-as-new after every 2 finished VMs so that the state crosses runs.
    const first = await startEvacuation(controller.client, {
      hosts: [srcA, srcB],
      to: [tgt],
      limits: { maxParallel: 4, maxOutboundPerHost: 2, maxInboundPerHost: 1 },
      options: { ...defaultOptions(), bandwidthBytesPerSec: 64 * MiB },
      ticket,
      requestedBy: 'dc-ops',
      reason: 'rack 7 power maintenance',
      continueAsNewAfter: 2,
    });
    expect(first).toMatchObject({ workflowId: `evacuate-${ticket}`, created: true, to: [tgt] });
    // The same ticket over HTTP: the same evacuation.
    const res = await fetch(`${api.url}/v1/evacuations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ hosts: [srcA, srcB], to: [tgt], ticket, requestedBy: 'dc-ops', reason: 'again' }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id: first.workflowId, created: false });
    // While it runs, the query shows every VM with its status and reason.
    let live = await controller.client.workflow.getHandle(first.workflowId).query(evacuationQuery);
    for (let i = 0; i < 100 && live.vms.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      live = await controller.client.workflow.getHandle(first.workflowId).query(evacuationQuery);
    }
    expect(live.vms.length).toBe(6);
    expect(live.status).toBe('running');

    const handle = controller.client.workflow.getHandle(first.workflowId);
    const summary = (await handle.result()) as EvacuationSummary;
    await maybeRecordHistory(controller.client, first.workflowId, 'evacuation');

    // Placement: five VMs fit (112 MiB of 120), the 160 MiB one is reported with the reason.
    const byVm = Object.fromEntries(summary.vms.map((v) => [v.vm, v]));
    const big = byVm[`big-${run}`]!;
    expect(big).toMatchObject({ outcome: 'not-placed', target: null, attempts: 0 });
    expect(big.reason).toBe(`big-${run} not placed: needs 160 MiB; the most free memory on any candidate is 120 MiB on ${tgt} (never overcommitted)`);
    for (const v of vms.filter((x) => x.mib < 100)) {
      expect(byVm[v.name], JSON.stringify(summary.vms)).toMatchObject({ outcome: 'completed', source: v.host, target: tgt, attempts: 1, strategy: 'pa-hybrid' });
      expect(byVm[v.name]!.timeMs).toBeGreaterThan(0);
    }
    expect(summary.status).toBe('partial');
    expect(summary.runs).toBeGreaterThanOrEqual(3);
    expect(summary.counts).toEqual({ completed: 5, 'not-placed': 1 });

    // Limits, on the evacuation's own timeline (child start → result) …
    const tl = summary.timeline;
    expect(tl).toHaveLength(5);
    expect(tl.every((e) => e.endMs !== null && e.outcome === 'completed')).toBe(true);
    const outbound = peak(tl, (e) => e.source, (e) => e.startMs, (e) => e.endMs!);
    const inbound = peak(tl, (e) => e.target, (e) => e.startMs, (e) => e.endMs!);
    const all = peak(tl, () => 'all', (e) => e.startMs, (e) => e.endMs!);
    expect(Math.max(...Object.values(outbound))).toBeLessThanOrEqual(2);
    expect(inbound[tgt]).toBe(1);
    expect(all.all).toBeLessThanOrEqual(4);

    // … and on the audit trail (each attempt's own start and end).
    const audit = await testAuditStore().query({ evacuationId: first.workflowId });
    expect(audit.attempts).toHaveLength(5);
    const asEntries: TimelineEntry[] = audit.attempts.map((a) => ({
      vm: a.vm,
      attempt: a.attempt,
      attemptId: a.attemptId,
      source: a.source,
      target: a.target,
      startMs: Date.parse(a.startedAt),
      endMs: Date.parse(a.endedAt!),
      outcome: a.outcome,
    }));
    expect(Math.max(...Object.values(peak(asEntries, (e) => e.source, (e) => e.startMs, (e) => e.endMs!)))).toBeLessThanOrEqual(2);
    expect(peak(asEntries, (e) => e.target, (e) => e.startMs, (e) => e.endMs!)[tgt]).toBe(1);
    for (const a of audit.attempts) expect(a).toMatchObject({ ticket, requestedBy: 'dc-ops', outcome: 'completed', verified: true, attempt: 1, retryOf: null });
    expect(audit.events.find((e) => e.kind === 'not-placed')?.vm).toBe(`big-${run}`);

    // Every VM runs on the target now; the big one stayed where it was.
    const inv = await inventory(controller.client, [srcA, srcB, tgt]);
    const on = (h: string): string[] => {
      const r = inv.hosts.find((x) => x.host === h);
      if (!r?.ok) throw new Error(`inventory of ${h} failed`);
      return r.facts.vms.map((v) => `${v.name}:${v.state}`).sort();
    };
    expect(on(tgt)).toEqual(vms.filter((v) => v.mib < 100).map((v) => `${v.name}:running`).sort());
    expect(on(srcA)).toEqual([]);
    expect(on(srcB)).toEqual([`big-${run}:running`]);
  });

  it('cancels a queued VM over HTTP, retries a failing VM with backoff up to the limit, then reports it', async () => {
    // srcA is empty now; three small VMs, one inbound at a time into srcB.
    const names = ['c1', 'c2', 'c3'].map((n) => `${n}-${run}`);
    await Promise.all(names.map((name, i) => createVm(controller.client, srcA, { name, memoryBytes: 16 * MiB, workload: 'kernel-compile', seed: 40 + i })));
    const ticket = `RACK2-${run}`;
    const started = await startEvacuation(controller.client, {
      hosts: [srcA],
      to: [srcB],
      limits: { maxParallel: 4, maxOutboundPerHost: 2, maxInboundPerHost: 1 },
      options: { ...defaultOptions(), bandwidthBytesPerSec: 4 * MiB },
      ticket,
      requestedBy: 'dc-ops',
      reason: 'second pass',
      maxAttempts: 2,
      retryBaseMs: 300,
    });
    const handle = controller.client.workflow.getHandle(started.workflowId);
    // Wait until the first VM migrates (the others queue behind srcB's inbound limit).
    for (let i = 0; ; i++) {
      const s = await handle.query(evacuationQuery);
      if (s.vms.some((v) => v.outcome === 'running')) {
        expect(s.vms.filter((v) => v.outcome === 'queued').map((v) => v.reason)).toEqual([
          `queued: ${srcB} has 1 inbound migrations (limit 1)`,
          `queued: ${srcB} has 1 inbound migrations (limit 1)`,
        ]);
        break;
      }
      if (i > 200) throw new Error(`nothing started: ${JSON.stringify(s.vms)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const [c1, c2, c3] = names as [string, string, string];
    // c2 is cancelled while queued; c3 disappears, so each of its attempts fails.
    const res = await fetch(`${api.url}/v1/evacuations/${ticket}/cancel`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ requestedBy: 'dc-ops', reason: 'keep it here', vms: [c2, c1] }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ cancelled: [c2], notQueued: [{ vm: c1, status: 'running' }] });
    await controller.client.workflow.execute('vmCommandWorkflow', { taskQueue: 'ferry-control', workflowId: `vm-destroy-${c3}`, args: [{ host: srcA, op: 'destroy', name: c3 }] });

    const summary = (await handle.result()) as EvacuationSummary;
    const byVm = Object.fromEntries(summary.vms.map((v) => [v.vm, v]));
    expect(byVm[c1]).toMatchObject({ outcome: 'completed', attempts: 1, target: srcB });
    expect(byVm[c2]).toMatchObject({ outcome: 'cancelled', attempts: 0 });
    expect(byVm[c2]!.reason).toBe('cancelled while queued by dc-ops (keep it here)');
    // Gone from the source: each attempt is refused before anything moves ("failed", not
    // "rolled back": no source confirmed the guest runs there).
    expect(byVm[c3]).toMatchObject({ outcome: 'failed', attempts: 2 });
    expect(byVm[c3]!.reason).toMatch(new RegExp(`^failed on attempt 2 of 2: giving up: .*vm ${c3} is not on ${srcA}`));
    // The retry waited for its backoff after the first failure.
    const [t1, t2] = summary.timeline.filter((e) => e.vm === c3) as [TimelineEntry, TimelineEntry];
    expect(t2.startMs - t1.endMs!).toBeGreaterThanOrEqual(300);
    // The audit trail links the retry to the attempt it retried.
    const audit = (await testAuditStore().query({ vm: c3 })).attempts;
    expect(audit.map((a) => [a.attempt, a.retryOf, a.outcome])).toEqual([
      [1, null, 'failed'],
      [2, audit[0]!.attemptId, 'failed'],
    ]);
    expect(audit[0]!.retriedBy).toEqual([audit[1]!.attemptId]);
    expect((await testAuditStore().query({ ticket, vm: c2 })).events.map((e) => e.kind)).toEqual(['placed', 'cancelled']);
  });

  it('`ferry evacuate --wait --json` and `ferry audit --jsonl` from the command line', async () => {
    // c2 stayed on srcA (cancelled while queued above): evacuate srcA onto srcB.
    const ticket = `RACK3-${run}`;
    const ev = await ferry('evacuate', srcA, '--to', srcB, '--max-parallel', '2', '--max-inbound', '1', '--bandwidth', '64MiB/s', '--ticket', ticket, '--requested-by', 'carol', '--reason', 'last one', '--wait', '--json');
    expect(ev.code, ev.stderr).toBe(0);
    const summary = JSON.parse(ev.stdout) as EvacuationSummary;
    expect(summary).toMatchObject({ id: `evacuate-${ticket}`, status: 'completed', counts: { completed: 1 }, requestedBy: 'carol' });
    expect(summary.vms[0]).toMatchObject({ vm: `c2-${run}`, source: srcA, target: srcB, outcome: 'completed', attempts: 1 });
    const au = await ferry('audit', '--ticket', ticket, '--jsonl');
    expect(au.code, au.stderr).toBe(0);
    const lines = au.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; vm?: string; outcome?: string; via?: string; kind?: string });
    expect(lines.filter((l) => l.type === 'attempt').map((l) => [l.vm, l.outcome, l.via])).toEqual([[`c2-${run}`, 'completed', `cli evacuation:evacuate-${ticket}`]]);
    expect(lines.filter((l) => l.type === 'event').map((l) => l.kind)).toEqual(['placed', 'evacuation-ended']);
  });
});
