#!/usr/bin/env node
// The `ferry` command. On a fresh checkout it installs its npm dependencies first, then runs
// the TypeScript sources through tsx (no separate build step).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(path.join(root, 'node_modules', '.package-lock.json')) || !existsSync(path.join(root, 'node_modules', 'tsx'))) {
  process.stderr.write('ferry: installing npm dependencies (first run)…\n');
  const lock = existsSync(path.join(root, 'package-lock.json'));
  const r = spawnSync('npm', [lock ? 'ci' : 'install', '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0) {
    process.stderr.write(`ferry: npm ${lock ? 'ci' : 'install'} failed (exit ${r.status ?? r.signal}); is the npm registry reachable?\n`);
    process.exit(1);
  }
}
const { register } = await import('tsx/esm/api');
register();
const { main } = await import(pathToFileURL(path.join(root, 'src', 'cli', 'main.ts')).href);
process.exitCode = await main(process.argv.slice(2));
