/**
 * Workflow and policy code must stay deterministic: lint refuses Node builtins, the wall
 * clock in policies, and Math.random. This test lints probe sources with the project's own
 * eslint.config.js through ESLint's Node API (lintText), under virtual paths in
 * src/workflows/, src/policy/ and src/common/: the flat config picks its rules by path, so
 * the probes get exactly what a real file there would. Nothing is written to disk.
 *
 * The only override is for the parser: the type-aware rules ask TypeScript's project
 * service for the file, and a file that does not exist is in no tsconfig, so the probe
 * paths are admitted to its default (inferred) project. The rules are the config's own.
 */
import path from 'node:path';
import { ESLint } from 'eslint';
import { beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';

const PROBE = '__lint_probe__.ts';
const DIRS = ['src/workflows', 'src/policy', 'src/common'] as const;
type ProbeDir = (typeof DIRS)[number];

let eslint: ESLint;

beforeAll(async () => {
  eslint = new ESLint({
    cwd: REPO_ROOT,
    overrideConfig: { languageOptions: { parserOptions: { projectService: { allowDefaultProject: DIRS.map((d) => `${d}/${PROBE}`) } } } },
  });
  // Start TypeScript's project service here, under the hook timeout: it takes seconds on a busy machine.
  await eslint.lintText('export {};\n', { filePath: path.join(REPO_ROOT, DIRS[0], PROBE) });
});

async function lintProbe(dir: ProbeDir, code: string): Promise<string[]> {
  const filePath = path.join(REPO_ROOT, dir, PROBE);
  const results = await eslint.lintText(code, { filePath });
  expect(results).toHaveLength(1);
  const [result] = results;
  expect(result!.filePath).toBe(filePath);
  // A parse error (e.g. the project service refusing the file) would hide every rule.
  expect(result!.messages.filter((m) => m.fatal)).toEqual([]);
  return result!.messages.map((m) => `${m.ruleId}: ${m.message}`);
}

describe('determinism lint', () => {
  it.each([
    ['src/workflows', "import fs from 'fs';\nexport const x = fs;\n"],
    ['src/workflows', "import { readFileSync } from 'node:fs';\nexport const x = readFileSync;\n"],
    ['src/policy', "import fs from 'fs';\nexport const x = fs;\n"],
    ['src/policy', "import * as fs from 'node:fs';\nexport const x = fs;\n"],
    ['src/policy', "import { createHash } from 'crypto';\nexport const x = createHash;\n"],
  ] as const)('%s refuses %j', async (dir, code) => {
    const messages = await lintProbe(dir, code);
    // 'node:x' matches both the list of builtins and the node:* pattern: one or two reports.
    expect(messages.filter((m) => m.startsWith('no-restricted-imports')).length).toBeGreaterThan(0);
    expect(messages.filter((m) => !m.startsWith('no-restricted-imports'))).toEqual([]);
  });

  it('the same builtin import passes outside workflow and policy code', async () => {
    expect(await lintProbe('src/common', "import fs from 'node:fs';\nexport const x = fs;\n")).toEqual([]);
  });

  it('workflow and policy code may import only types from mechanism modules', async () => {
    const value = "import { createMigrationActivities } from '../activities/migration';\nexport const x = createMigrationActivities;\n";
    const type = "import type { MigrationOptions } from '../activities/types';\nexport type X = MigrationOptions;\n";
    for (const dir of ['src/workflows', 'src/policy'] as const) {
      expect((await lintProbe(dir, value)).filter((m) => m.startsWith('no-restricted-imports'))).toHaveLength(1);
      expect(await lintProbe(dir, type)).toEqual([]);
    }
  });

  it('policy code may not read the clock or Math.random', async () => {
    const messages = await lintProbe('src/policy', 'export const a = Date.now();\nexport const b = Math.random();\nexport const c = new Date();\n');
    expect(messages.filter((m) => m.startsWith('no-restricted-syntax'))).toHaveLength(2);
    expect(messages.filter((m) => m.startsWith('no-restricted-properties'))).toHaveLength(1);
  });

  it('workflow code may not use process or Math.random', async () => {
    const messages = await lintProbe('src/workflows', 'export const a = process.env.X;\nexport const b = Math.random();\n');
    expect(messages.filter((m) => m.startsWith('no-restricted-globals'))).toHaveLength(1);
    expect(messages.filter((m) => m.startsWith('no-restricted-properties'))).toHaveLength(1);
  });

  it('floating promises are refused everywhere', async () => {
    for (const dir of DIRS) {
      const messages = await lintProbe(dir, 'async function f(): Promise<void> {}\nexport function g(): void { f(); }\n');
      expect(messages.filter((m) => m.startsWith('@typescript-eslint/no-floating-promises'))).toHaveLength(1);
    }
  });

  it('unused imports and variables are refused; _names, leading arguments and caught errors are not', async () => {
    const messages = await lintProbe(
      'src/common',
      [
        "import { join } from 'node:path';",
        'const unused = 1;',
        'const _kept = 2;',
        'export function f(a: number, b: number, _c: number): number {',
        '  try { return b; } catch (err) { return 0; }',
        '}',
        'export function g(a: number, unusedLast: number): number { return a; }',
        '',
      ].join('\n'),
    );
    expect(messages.filter((m) => m.startsWith('@typescript-eslint/no-unused-vars')).map((m) => /'(\w+)'/.exec(m)?.[1])).toEqual(['join', 'unused', 'unusedLast']);
  });

  it('a clean workflow file passes', async () => {
    const messages = await lintProbe('src/workflows', "import { sleep } from '@temporalio/workflow';\nexport async function w(): Promise<void> { await sleep(1); }\n");
    expect(messages).toEqual([]);
  });
});
