/**
 * A QEMU host emptied by `ferry evacuate`: two real QEMU guests (TCG) on one `--driver qemu`
 * agent move to another through the evacuation workflow, each child migration choosing the
 * QEMU engine from the hosts' own facts (no driver named anywhere), the strategy left to the
 * engine's default. Every guest verifies its own pages on the target.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inventory, reportOf, resolveHandle } from '../../src/client/migrations';
import type { EvacuationSummary } from '../../src/workflows/evacuation-messages';
import { startTestController, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, MiB } from '../helpers/migrate';
import { startQemuAgent, stopQemuAgent, testGuest, type QemuAgent } from '../helpers/qemu';
import { ferry } from '../helpers/ferry-cli';


let controller: TestController;
let a: QemuAgent;
let b: QemuAgent;
const hostA = uniqueHost('qev-a');
const hostB = uniqueHost('qev-b');
const run = Math.random().toString(36).slice(2, 8);
const guests = [`qev1-${run}`, `qev2-${run}`];

beforeAll(async () => {
  await testGuest();
  [controller, a, b] = await Promise.all([startTestController(), startQemuAgent(hostA, { migrationAddr: '127.0.0.1' }), startQemuAgent(hostB, { migrationAddr: '127.0.0.1' })]);
  for (const [i, name] of guests.entries()) await createVm(controller.client, hostA, { name, memoryBytes: 128 * MiB, workload: 'converging', seed: 21 + i });
}, 600_000);

afterAll(async () => {
  await Promise.all([stopQemuAgent(a), stopQemuAgent(b)]);
  await controller?.stop();
});

describe('evacuating a QEMU host', () => {
  it('ferry evacuate moves both guests to the other QEMU host, each verified by the guest there', async () => {
    const r = await ferry('evacuate', hostA, '--to', hostB, '--bandwidth', '64MiB/s', '--max-parallel', '1', '--ticket', `QEV-${run}`, '--wait', '--json');
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as EvacuationSummary;
    expect(summary.status).toBe('completed');
    const items = summary.vms.filter((v) => guests.includes(v.vm));
    expect(items.map((v) => v.vm).sort()).toEqual([...guests].sort());
    for (const it of items) {
      expect(it.outcome, it.reason).toBe('completed');
      expect(it.target).toBe(hostB);
      // Unchosen, QEMU hosts get their engine's default: no par-migrate there.
      expect(it.strategy).toBe('as-hybrid');
    }

    for (const vm of guests) {
      const report = await reportOf(resolveHandle(controller.client, vm));
      expect(report.outcome, report.reason).toBe('completed');
      expect(report.driver).toBe('qemu');
      expect(report.source).toBe(hostA);
      expect(report.target).toBe(hostB);
      expect(report.verification).toMatchObject({ ok: true, mismatches: 0, where: 'target' });
      expect(report.verification!.pagesChecked).toBeGreaterThan(0);
      expect(report.reason).toMatch(/verified by the guest/);
    }

    // The source is empty; the target runs both guests.
    const inv = await inventory(controller.client, [hostA, hostB]);
    const factsOf = (h: string) => {
      const x = inv.hosts.find((y) => y.host === h);
      return x?.ok ? x.facts : undefined;
    };
    expect(factsOf(hostA)?.vms.filter((v) => guests.includes(v.name))).toEqual([]);
    const onB = factsOf(hostB)?.vms.filter((v) => guests.includes(v.name)) ?? [];
    expect(onB.map((v) => v.name).sort()).toEqual([...guests].sort());
    for (const v of onB) expect(v.state).toBe('running');
  }, 900_000);
});
