#!/usr/bin/env node
// Everything a fresh checkout needs before `ferry` or the tests run: npm dependencies and the
// Temporal dev server binary (built from source with Go on first use).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const r = spawnSync(process.execPath, [path.join(root, 'bin', 'ferry.mjs'), 'setup', ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
