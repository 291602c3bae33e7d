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
    // 24 MiB: post-copy lasts seconds at this link, long enough for the page (polling each second) to show it on a loaded machine.
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 24 * MiB, workload: 'memcached', seed: 21 });
    const { page, context } = await openDashboard(browser, api.url, WRITE);
    // hybrid-2: two pre-copy rounds, then the switch; a slow link keeps each round visible.
    const m = await startThroughApi(vm, 'hybrid-2', { bandwidth: '3MiB/s' });

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
      // Both attributes from one render: read one after the other, a re-render between the two
      // reads could pair the old point count with the new switch mark.
      const { points, switches } = await lambda.evaluate((el) => ({ points: Number(el.dataset.points ?? 0), switches: Number(el.dataset.switches ?? 0) }));
      if (seenPoints[seenPoints.length - 1] !== points) seenPoints.push(points);
      return switches >= 1;
    });
    // After the switch: cancel is refused with the workflow's reason, shown on the page.
    // (Post-copy moves the ~2/3 of memory memcached keeps dirty over the same slow link: seconds.)
    const shown = await attrBecomes(page, '#head', 'data-phase', (v) => ['postcopy', 'verifying', 'completed'].includes(v));
    expect(shown, 'the page showed the migration past its switch, before it completed').toMatch(/^(postcopy|verifying)$/);
    await page.click('#btn-cancel');
    const msg = page.locator('#control-message.error');
    await msg.waitFor();
    expect(await msg.textContent()).toMatch(new RegExp(`^cancel refused: refused: ${vm} already runs on ${hostB} \\(phase (postcopy|verifying)\\); after the switch a migration only moves forward$`));

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
    // Post-copy's fault latencies as the target measured them: a histogram of every resolved fault.
    const hist = report.postcopy?.faultLatencyMs?.histogram;
    expect(hist, 'the report carries the fault-latency histogram').toBeDefined();
    const resolved = hist!.counts.reduce((a, b) => a + b, 0);
    expect(resolved).toBeGreaterThan(0);
    expect(resolved).toBeLessThanOrEqual(report.postcopy!.faults);
    await expect.poll(() => page.locator('#chart-postcopy').getAttribute('data-histogram')).toBe(String(resolved));
    expect(await page.locator('#chart-postcopy svg').textContent()).toContain('fault → page installed');
    await page.screenshot({ path: path.join(IMG, 'dashboard-migration.png'), fullPage: true });
    await context.close();
  });

  it('cancel from the page before the switch rolls back (verified on the source); a read token sees it and cannot act; no token sees nothing', async () => {
    const vm = `ui-cancel-${run}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 16 * MiB, workload: 'kernel-compile', seed: 22 });
    // Pre-copy over a 1 MiB/s link: the first round alone takes longer than the test needs.
    const m = await startThroughApi(vm, 'precopy', { bandwidth: '1MiB/s' });
    const where = `#/migration/${m.id}/${m.runId}`;

    const writer = await openDashboard(browser, api.url, WRITE);
    await writer.page.goto(`/ui/${where}`);
    await attrBecomes(writer.page, '#head', 'data-phase', (v) => v === 'precopy');

    // A read token: the same migration, live, and its list row; no controls, and the API refuses its writes.
    const reader = await openDashboard(browser, api.url, READ);
    expect(await reader.page.locator('#who').textContent()).toBe('auditor (read only)');
    await reader.page.locator(`#migrations tr[data-vm="${vm}"]`).waitFor();
    // The list's filters: VM + host + ticket + strategy + outcome running find it alone; outcome completed does not.
    await reader.page.fill('#filters input[name=vm]', vm);
    await reader.page.fill('#filters input[name=host]', hostB);
    await reader.page.fill('#filters input[name=ticket]', `UI-${run}-${vm}`);
    await reader.page.selectOption('#filters select[name=strategy]', 'precopy');
    await reader.page.selectOption('#filters select[name=outcome]', 'running');
    await reader.page.click('#filters button[type=submit]');
    await expect.poll(() => reader.page.locator('#migrations tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-vm')))).toEqual([vm]);
    await reader.page.selectOption('#filters select[name=outcome]', 'completed');
    await reader.page.click('#filters button[type=submit]');
    await expect.poll(() => reader.page.locator('#migrations tbody').textContent()).toBe('no migrations match');
    await reader.page.goto(`/ui/${where}`);
    await attrBecomes(reader.page, '#head', 'data-phase', (v) => v === 'precopy');
    await reader.page.locator('#chart-phases svg').waitFor();
    expect(await reader.page.locator('#title').textContent()).toBe(`${vm}: ${hostA} → ${hostB}`);
    expect(await reader.page.locator('#controls button').count()).toBe(0);
    const readerTry = await reader.page.evaluate(async (u) => {
      const r = await fetch(u, { method: 'POST', headers: { 'x-ferry-csrf': '1', 'content-type': 'application/json' }, body: JSON.stringify({ requestedBy: 'auditor' }) });
      return { status: r.status, body: (await r.json()) as { error: string } };
    }, `/v1/migrations/${m.id}/cancel`);
    expect(readerTry.status).toBe(403);
    expect(readerTry.body.error).toMatch(/auditor' may only read/);

    // The write session's cookie without the CSRF header: refused (another site could send the cookie, never the header).
    const forged = await writer.page.evaluate(async (u) => (await fetch(u, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ requestedBy: 'x' }) })).status, `/v1/migrations/${m.id}/cancel`);
    expect(forged).toBe(403);

    // No token: the login form and nothing else; the API answers 401 to the browser.
    const stranger = await openDashboard(browser, api.url, null);
    expect(await stranger.page.locator('#nav').isHidden()).toBe(true);
    expect(await stranger.page.locator('body').textContent()).not.toContain(vm);
    const statuses = await stranger.page.evaluate(
      async (paths) => Promise.all(paths.map(async (u) => (await fetch(u)).status)),
      ['/v1/migrations', `/v1/migrations/${m.id}`, `/v1/migrations/${m.id}/timeline`, '/v1/evacuations', '/v1/audit?vm=x', '/v1/session'],
    );
    expect(statuses).toEqual([401, 401, 401, 401, 401, 401]);
    await stranger.page.fill('#token', 'not-a-token');
    await stranger.page.click('#login-form button[type=submit]');
    await expect.poll(() => stranger.page.locator('#login-message').textContent()).toMatch(/invalid bearer token/);
    expect(await stranger.page.locator('body').textContent()).not.toContain(vm);
    // The session cookie is HttpOnly: page script cannot read it.
    expect(await writer.page.evaluate('document.cookie')).toBe('');
    expect((await writer.context.cookies()).find((c) => c.name === 'ferry_token')).toMatchObject({ httpOnly: true, sameSite: 'Strict' });

    // Set bandwidth from the page: the running migration takes the new cap.
    await writer.page.fill('#bw', '1536KiB/s');
    await writer.page.click('#btn-bw');
    await expect.poll(() => writer.page.locator('#control-message').textContent()).toBe('set bandwidth: accepted');
    await expect.poll(() => writer.page.locator('#head').textContent()).toContain('bandwidth1.5 MiB/s');
    // Force post-copy on a pre-copy migration: refused, with the workflow's reason.
    await writer.page.click('#btn-force');
    await expect.poll(() => writer.page.locator('#control-message.error').textContent()).toBe(
      'force post-copy refused: strategy precopy never switches to post-copy; migrate with a hybrid strategy to force one',
    );

    // Cancel from the page, before the switch: rolled back, the guest verified on the source.
    await writer.page.click('#btn-cancel');
    await expect.poll(() => writer.page.locator('#control-message').textContent()).toMatch(/^cancel: accepted \(rolls back/);
    await attrBecomes(writer.page, '#head', 'data-phase', (v) => v === 'rolled-back');
    const report = await reportOf(m);
    expect(report.outcome).toBe('rolled-back');
    expect(report.verification).toMatchObject({ ok: true, where: 'source' });
    expect(await writer.page.locator('#outcome-reason').textContent()).toBe(report.reason);
    expect(report.reason).toMatch(/cancelled by env \(dashboard\)/);
    expect(await writer.page.locator('#verification').textContent()).toMatch(new RegExp(`verified on the source: ${report.verification!.pagesChecked} pages checked, 0 mismatches`));
    // The read session follows it to the end too.
    await attrBecomes(reader.page, '#head', 'data-phase', (v) => v === 'rolled-back');

    // The audit trail, searched from the page by VM.
    await writer.page.goto(`/ui/#/audit?vm=${vm}`);
    const attempt = writer.page.locator(`#audit-attempts tr[data-vm="${vm}"]`);
    await attempt.waitFor();
    expect(await attempt.textContent()).toContain('rolled-back');
    expect(await attempt.textContent()).toContain(`UI-${run}-${vm}`);
    await Promise.all([writer.context.close(), reader.context.close(), stranger.context.close()]);
  });

  it('an evacuation board: VMs queued on a limit, a queued one cancelled from the page, then all done', async () => {
    const ticket = `UI-EV-${run}`;
    const names = [1, 2, 3, 4].map((i) => `ui-ev${i}-${run}`);
    // Guests that dirty memory, over a 4 MiB/s link: each VM takes a few rounds, long enough to watch.
    await Promise.all(names.map((name, i) => createVm(controller.client, hostE, { name, memoryBytes: 8 * MiB, workload: 'kernel-compile', seed: 30 + i })));
    const { page, context } = await openDashboard(browser, api.url, WRITE);
    // The board of the evacuation this ticket will start (its id follows from the ticket).
    await page.goto(`/ui/#/evacuation/evacuate-${ticket}`);
    const r = await post('/v1/evacuations', { hosts: [hostE], to: [hostB], maxParallel: 1, ticket, requestedBy: 'dashboard test', reason: 'drain the host', strategy: 'precopy', options: { bandwidth: '4MiB/s' } });
    expect(r.status, JSON.stringify(r.json)).toBe(202);

    // One at a time: the others wait, and say which limit they wait on.
    const queued = page.locator('#evac-vms tr[data-status="queued"]');
    await until(async () => (await queued.count()) >= 2, 'queued VMs');
    expect(await queued.first().locator('.reason').textContent()).toMatch(/migrations running \(limit 1 at once\)/);
    await expect.poll(() => page.locator('#limits tr[data-limit="parallel"] td.num').allTextContents()).toEqual(['1', '1']);

    // Cancel the last queued VM from the board.
    const last = queued.last();
    const cancelled = (await last.getAttribute('data-vm'))!;
    await last.locator('button[data-cancel]').click();
    await expect.poll(() => page.locator('#evac-message').textContent()).toBe(`cancelled ${cancelled}`);
    await page.locator(`#evac-vms tr[data-vm="${cancelled}"][data-status="cancelled"]`).waitFor();
    // The README's picture: some done, one running, one waiting (or, on a slow page, the end).
    await until(async () => ((await page.locator('#evac-vms tr[data-status="completed"]').count()) >= 1 && (await queued.count()) >= 1) || (await page.locator('#evac-head').getAttribute('data-status')) === 'completed', 'a VM done');
    await page.screenshot({ path: path.join(IMG, 'dashboard-evacuation.png'), fullPage: true });

    await attrBecomes(page, '#evac-head', 'data-status', (v) => v === 'completed');
    const rows = page.locator('#evac-vms tbody tr');
    const statuses = Object.fromEntries(await Promise.all((await rows.all()).map(async (row) => [await row.getAttribute('data-vm'), await row.getAttribute('data-status')])));
    expect(statuses).toEqual(Object.fromEntries(names.map((n) => [n, n === cancelled ? 'cancelled' : 'completed'])));
    expect(await page.locator('#evac-done').textContent()).toBe('4 of 4 done');
    expect(await page.locator('#chart-evac g.mark-rect path').count()).toBe(3);
    const summary = (await (await fetch(`${api.url}/v1/evacuations/evacuate-${ticket}`, { headers: { authorization: `Bearer ${READ}` } })).json()) as { summary: { counts: Record<string, number> } };
    expect(summary.summary.counts).toMatchObject({ completed: 3, cancelled: 1 });
    // And in the list of evacuations, with its counts.
    await page.click('nav a[data-nav="evacuations"]');
    const listed = page.locator('#evacuations tbody tr', { hasText: `evacuate-${ticket}` });
    await listed.waitFor();
    expect(await listed.textContent()).toContain(hostE);
    await context.close();
  });
});
