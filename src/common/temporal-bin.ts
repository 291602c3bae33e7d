/**
 * Finding or building Temporal's Go binaries: the `temporal` CLI (the dev server) and, for
 * `ferry cluster`, the server (`temporal-server`) and its schema tool (`temporal-sql-tool`).
 * Nothing is downloaded from a release page: each is built from source with the Go
 * toolchain, through the Go module proxy.
 *
 * Order: an explicit path (flag or environment variable), the checkout's cache, PATH, the Go
 * bin dir; else built into the Go bin dir (shared by every checkout on the machine), or into
 * the checkout's cache when the Go bin dir is not writable. A tool with a version check skips
 * a binary of another release. The CLI's v1.5.1 is the newest tag that `go install` accepts
 * (later tags carry a `replace` directive); the server it embeds is v1.29.1, the release
 * `ferry cluster` builds.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './paths';

export const TEMPORAL_CLI_MODULE = 'github.com/temporalio/cli/cmd/temporal';
export const TEMPORAL_CLI_VERSION = 'v1.5.1';
export const TEMPORAL_SERVER_VERSION = 'v1.29.1';
export const TEMPORAL_CACHE_DIR = path.join(REPO_ROOT, '.cache', 'temporal', 'bin');

export class TemporalBinaryError extends Error {
  override readonly name = 'TemporalBinaryError';
}

/** A Go binary ferry builds with `go install`. */
export interface GoTool {
  /** The file name ferry looks for and installs as. */
  name: string;
  /** The Go package `go install` builds. */
  pkg: string;
  version: string;
  /** The environment variable that names an existing binary. */
  envVar: string;
  /** What it is, for messages. */
  what: string;
  /** When set, a binary whose `--version` output lacks this string is not used. */
  versionText?: string;
}

export const TEMPORAL_CLI: GoTool = {
  name: 'temporal',
  pkg: TEMPORAL_CLI_MODULE,
  version: TEMPORAL_CLI_VERSION,
  envVar: 'FERRY_TEMPORAL_BIN',
  what: 'the Temporal dev server (temporal CLI)',
};

export const TEMPORAL_SERVER: GoTool = {
  name: 'temporal-server',
  pkg: 'go.temporal.io/server/cmd/server',
  version: TEMPORAL_SERVER_VERSION,
  envVar: 'FERRY_TEMPORAL_SERVER_BIN',
  what: 'the Temporal server',
  versionText: TEMPORAL_SERVER_VERSION.slice(1),
};

export const TEMPORAL_SQL_TOOL: GoTool = {
  name: 'temporal-sql-tool',
  pkg: 'go.temporal.io/server/cmd/tools/sql',
  version: TEMPORAL_SERVER_VERSION,
  envVar: 'FERRY_TEMPORAL_SQL_TOOL_BIN',
  what: "the Temporal server's SQL schema tool",
  versionText: TEMPORAL_SERVER_VERSION.slice(1),
};

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

function goCommand(): string | null {
  return onPath('go') ?? (isExecutable('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : null);
}

function goBinDir(): string | null {
  const go = goCommand();
  if (!go) return null;
  const r = spawnSync(go, ['env', 'GOBIN', 'GOPATH'], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const [gobin, gopath] = r.stdout.split('\n');
  if (gobin) return gobin;
  if (gopath) return path.join(gopath.split(path.delimiter)[0] ?? gopath, 'bin');
  return null;
}

function hasVersion(bin: string, tool: GoTool): boolean {
  if (!tool.versionText) return true;
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.includes(tool.versionText);
}

/** The binary to use, or null when it must be built. Throws when an explicit path is bad. */
export function findGoTool(tool: GoTool, explicit: string | null = null): string | null {
  const wanted = explicit ?? process.env[tool.envVar] ?? null;
  if (wanted) {
    if (!isExecutable(wanted)) {
      throw new TemporalBinaryError(`${tool.name} binary '${wanted}' (from ${explicit ? 'the command line' : tool.envVar}) is not an executable file`);
    }
    return path.resolve(wanted);
  }
  const candidates = [() => path.join(TEMPORAL_CACHE_DIR, tool.name), () => onPath(tool.name), () => ((d) => (d ? path.join(d, tool.name) : null))(goBinDir())];
  for (const candidate of candidates) {
    const c = candidate();
    if (c && isExecutable(c) && hasVersion(c, tool)) return c;
  }
  return null;
}

/** The `temporal` CLI to use, or null when it must be built. */
export function findTemporalBinary(explicit: string | null = null): string | null {
  return findGoTool(TEMPORAL_CLI, explicit);
}

/** Find the `temporal` CLI or build it (minutes on first use), reporting progress on `log`. */
export function ensureTemporalBinary(explicit: string | null = null, log: (line: string) => void = defaultLog): Promise<string> {
  return ensureGoTool(TEMPORAL_CLI, explicit, log);
}

function defaultLog(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Find a Go tool or build it (minutes on first use), reporting progress on `log`. */
export async function ensureGoTool(tool: GoTool, explicit: string | null = null, log: (line: string) => void = defaultLog): Promise<string> {
  const found = findGoTool(tool, explicit);
  if (found) return found;
  const go = goCommand();
  if (!go) {
    throw new TemporalBinaryError(
      `${tool.what} is not built yet and Go is not installed: install Go (https://go.dev/doc/install, ` +
        `or \`apt-get install golang\`), or set ${tool.envVar} to an existing \`${tool.name}\` binary` +
        (tool === TEMPORAL_CLI ? ', or set FERRY_TEMPORAL_ADDRESS to use a running Temporal cluster' : ''),
    );
  }
  const binDir = writableDir(goBinDir()) ?? TEMPORAL_CACHE_DIR;
  fs.mkdirSync(binDir, { recursive: true });
  const target = path.join(binDir, tool.name);
  const release = await buildLock(path.join(binDir, `.ferry-${tool.name}-build.lock`), target, tool, log);
  if (release === null) return target;
  try {
    if (isExecutable(target) && hasVersion(target, tool)) return target;
    await goInstall(go, tool, binDir, target, log);
    return target;
  } finally {
    release();
  }
}

/**
 * One build at a time: a second caller waits for the first. Returns the lock's release, or
 * null when the binary appeared while waiting.
 */
async function buildLock(lock: string, target: string, tool: GoTool, log: (line: string) => void): Promise<(() => void) | null> {
  for (;;) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(lock, { force: true });
    } catch {
      const holder = Number(fs.readFileSync(lock, 'utf8'));
      if (!holder || !pidAlive(holder)) {
        fs.rmSync(lock, { force: true });
        continue;
      }
      log(`ferry: waiting for the ${tool.name} build in process ${holder}…`);
      await new Promise((r) => setTimeout(r, 2000));
      if (isExecutable(target) && hasVersion(target, tool)) return null;
    }
  }
}

/**
 * `go install pkg@version` into a private directory, then moved to `target` under ferry's
 * name for it (`go install` names a binary after its package's last element, e.g. `server`).
 */
async function goInstall(go: string, tool: GoTool, binDir: string, target: string, log: (line: string) => void): Promise<void> {
  const spec = `${tool.pkg}@${tool.version}`;
  const scratch = fs.mkdtempSync(path.join(binDir, `.ferry-build-${tool.name}-`));
  log(`ferry: building ${tool.what} from source (go install ${spec}).`);
  log(`ferry: first time only; this takes a few minutes. Into: ${target}`);
  const started = Date.now();
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(go, ['install', spec], { env: { ...process.env, GOBIN: scratch }, stdio: ['ignore', 'inherit', 'pipe'] });
      let tail = '';
      child.stderr.on('data', (d: Buffer) => {
        const text = d.toString();
        tail = (tail + text).slice(-4000);
        for (const line of text.split('\n')) if (line.trim()) log(`  go: ${line.trim()}`);
      });
      const tick = setInterval(() => log(`ferry: still building ${tool.name} (${Math.round((Date.now() - started) / 1000)} s)…`), 20_000);
      child.on('error', (e) => {
        clearInterval(tick);
        reject(new TemporalBinaryError(`could not run go: ${e.message}`));
      });
      child.on('exit', (code) => {
        clearInterval(tick);
        if (code === 0) resolve();
        else reject(new TemporalBinaryError(`go install ${spec} failed (exit ${code}):\n${tail}`));
      });
    });
    const built = path.join(scratch, path.basename(tool.pkg));
    if (!isExecutable(built)) throw new TemporalBinaryError(`go install ${spec} finished but ${built} is missing`);
    fs.renameSync(built, target);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  log(`ferry: built ${target} in ${Math.round((Date.now() - started) / 1000)} s`);
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
