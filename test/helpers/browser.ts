/**
 * A headless Chromium for the dashboard tests: Debian's `chromium` (installed by
 * `ferry setup --tests`) driven by playwright-core; Playwright's own browser builds are never
 * downloaded.
 */
import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { onPath } from '../../src/common/system-packages';

export function chromiumPath(): string {
  const fromEnv = process.env.FERRY_CHROMIUM;
  if (fromEnv) return fromEnv;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'chromium');
    if (fs.existsSync(p)) return p;
  }
  if (!onPath('chromium')) throw new Error('chromium is not installed: run `ferry setup --tests` (or apt-get install chromium), or set FERRY_CHROMIUM');
  return 'chromium';
}

export async function launchBrowser(): Promise<Browser> {
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // As root Chromium refuses its sandbox; the dashboard's own pages are all it loads.
    args: [...(root ? ['--no-sandbox'] : []), '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
}

/** A fresh browser profile (no cookies) on the dashboard, logged in with `token` unless null. */
export async function openDashboard(browser: Browser, baseUrl: string, token: string | null): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 }, baseURL: baseUrl });
  const page = await context.newPage();
  await page.goto('/ui/');
  await page.locator('#login-form').waitFor();
  if (token !== null) {
    await page.fill('#token', token);
    await page.click('#login-form button[type=submit]');
    await page.locator('#who').filter({ hasText: /\S/ }).waitFor();
  }
  return { context, page };
}
