/**
 * Workflow and policy code must stay deterministic: lint refuses Node builtins, the wall
 * clock in policies, and Math.random. This test writes probe files and lints them for real.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ESLint } from 'eslint';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';

const probes: string[] = [];

async function lintProbe(dir: string, code: string): Promise<string[]> {
  const file = path.join(REPO_ROOT, dir, `__lint_probe_${process.pid}_${probes.length}.ts`);
  probes.push(file);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, code);
  const eslint = new ESLint({ cwd: REPO_ROOT });
  const [result] = await eslint.lintFiles([file]);
  return (result?.messages ?? []).map((m) => `${m.ruleId}: ${m.message}`);
}

afterEach(() => {
  for (const f of probes.splice(0)) fs.rmSync(f, { force: true });
});

describe('determinism lint', () => {
  it.each([
    ['src/workflows', "import fs from 'fs';\nexport const x = fs;\n"],
    ['src/workflows', "import { readFileSync } from 'node:fs';\nexport const x = readFileSync;\n"],
    ['src/policy', "import fs from 'fs';\nexport const x = fs;\n"],
    ['src/policy', "import * as fs from 'node:fs';\nexport const x = fs;\n"],
    ['src/policy', "import { createHash } from 'crypto';\nexport const x = createHash;\n"],
  ])('%s refuses %j', async (dir, code) => {
    const messages = await lintProbe(dir, code);
    expect(messages.some((m) => m.startsWith('no-restricted-imports'))).toBe(true);
  });

  it('policy code may not read the clock or Math.random', async () => {
    const messages = await lintProbe('src/policy', 'export const a = Date.now();\nexport const b = Math.random();\nexport const c = new Date();\n');
    expect(messages.filter((m) => m.startsWith('no-restricted-syntax')).length).toBe(2);
    expect(messages.some((m) => m.startsWith('no-restricted-properties'))).toBe(true);
  });

  it('workflow code may not use process or Math.random', async () => {
    const messages = await lintProbe('src/workflows', 'export const a = process.env.X;\nexport const b = Math.random();\n');
    expect(messages.some((m) => m.startsWith('no-restricted-globals'))).toBe(true);
    expect(messages.some((m) => m.startsWith('no-restricted-properties'))).toBe(true);
  });

  it('floating promises are refused everywhere', async () => {
    const messages = await lintProbe('src/common', 'async function f(): Promise<void> {}\nexport function g(): void { f(); }\n');
    expect(messages.some((m) => m.startsWith('@typescript-eslint/no-floating-promises'))).toBe(true);
  });

  it('a clean workflow file passes', async () => {
    const messages = await lintProbe('src/workflows', "import { sleep } from '@temporalio/workflow';\nexport async function w(): Promise<void> { await sleep(1); }\n");
    expect(messages).toEqual([]);
  });
});
