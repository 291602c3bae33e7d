/**
 * Finding or building the `temporal` CLI (the dev server). Nothing is downloaded from a
 * release page: the binary is built from source with the Go toolchain, through the Go
 * module proxy, into a git-ignored cache in the checkout.
 *
 * Order: --temporal-bin flag, FERRY_TEMPORAL_BIN, the checkout's cache, `temporal` on PATH,
 * the Go bin dir; else build into the Go bin dir (shared by every checkout on the machine),
 * or into the checkout's cache when the Go bin dir is not writable. v1.5.1 is the newest tag that `go install` accepts (later tags carry a
 * `replace` directive).
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './paths';

export const TEMPORAL_CLI_MODULE = 'github.com/temporalio/cli/cmd/temporal';
export const TEMPORAL_CLI_VERSION = 'v1.5.1';
export const TEMPORAL_CACHE_DIR = path.join(REPO_ROOT, '.cache', 'temporal', 'bin');

export class TemporalBinaryError extends Error {
  override readonly name = 'TemporalBinaryError';
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

function goBinDir(): string | null {
  const go = onPath('go') ?? (isExecutable('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : null);
  if (!go) return null;
  const r = spawnSync(go, ['env', 'GOBIN', 'GOPATH'], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const [gobin, gopath] = r.stdout.split('\n');
  if (gobin) return gobin;
  if (gopath) return path.join(gopath.split(path.delimiter)[0] ?? gopath, 'bin');
  return null;
}

/** The binary to use, or null when it must be built. Throws when an explicit path is bad. */
export function findTemporalBinary(explicit: string | null = null): string | null {
  const wanted = explicit ?? process.env.FERRY_TEMPORAL_BIN ?? null;
  if (wanted) {
    if (!isExecutable(wanted)) {
      throw new TemporalBinaryError(`temporal binary '${wanted}' (from --temporal-bin or FERRY_TEMPORAL_BIN) is not an executable file`);
    }
    return path.resolve(wanted);
  }
  const cached = path.join(TEMPORAL_CACHE_DIR, 'temporal');
  if (isExecutable(cached)) return cached;
  const inPath = onPath('temporal');
  if (inPath) return inPath;
  const gobin = goBinDir();
  if (gobin && isExecutable(path.join(gobin, 'temporal'))) return path.join(gobin, 'temporal');
  return null;
}

/** Find the binary or build it (minutes on first use), reporting progress on `log`. */
export async function ensureTemporalBinary(
  explicit: string | null = null,
  log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Promise<string> {
  const found = findTemporalBinary(explicit);
  if (found) return found;
  const go = onPath('go') ?? (isExecutable('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : null);
  if (!go) {
    throw new TemporalBinaryError(
      'the Temporal dev server is not built yet and Go is not installed: install Go (https://go.dev/doc/install, ' +
        'or `apt-get install golang`), or set FERRY_TEMPORAL_BIN to an existing `temporal` binary, ' +
        'or set FERRY_TEMPORAL_ADDRESS to use a running Temporal cluster',
    );
  }
  const binDir = writableDir(goBinDir()) ?? TEMPORAL_CACHE_DIR;
  fs.mkdirSync(binDir, { recursive: true });
  const lock = path.join(binDir, '.ferry-temporal-build.lock');
  const target = path.join(binDir, 'temporal');
  // One build at a time: a second caller waits for the first.
  for (;;) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx' });
      break;
    } catch {
      const holder = Number(fs.readFileSync(lock, 'utf8'));
      if (!holder || !pidAlive(holder)) {
        fs.rmSync(lock, { force: true });
        continue;
      }
      log(`ferry: waiting for the Temporal build in process ${holder}…`);
      await new Promise((r) => setTimeout(r, 2000));
      if (isExecutable(target)) return target;
    }
  }
  try {
    if (isExecutable(target)) return target;
    log(`ferry: building the Temporal dev server from source (go install ${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION}).`);
    log(`ferry: first time only; this takes a few minutes. Into: ${binDir}`);
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      const child = spawn(go, ['install', `${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION}`], {
        env: { ...process.env, GOBIN: binDir },
        stdio: ['ignore', 'inherit', 'pipe'],
      });
      let tail = '';
      child.stderr.on('data', (d: Buffer) => {
        const text = d.toString();
        tail = (tail + text).slice(-4000);
        for (const line of text.split('\n')) if (line.trim()) log(`  go: ${line.trim()}`);
      });
      const tick = setInterval(() => log(`ferry: still building the Temporal dev server (${Math.round((Date.now() - started) / 1000)} s)…`), 20_000);
      child.on('error', (e) => {
        clearInterval(tick);
        reject(new TemporalBinaryError(`could not run go: ${e.message}`));
      });
      child.on('exit', (code) => {
        clearInterval(tick);
        if (code === 0) resolve();
        else reject(new TemporalBinaryError(`go install ${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION} failed (exit ${code}):\n${tail}`));
      });
    });
    if (!isExecutable(target)) throw new TemporalBinaryError(`go install finished but ${target} is missing`);
    log(`ferry: built ${target} in ${Math.round((Date.now() - started) / 1000)} s`);
    return target;
  } finally {
    fs.rmSync(lock, { force: true });
  }
}

function writableDir(dir: string | null): string | null {
  if (!dir) return null;
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
    return dir;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
