/**
 * A PostgreSQL server of its own for a ferry cluster: Debian's binaries, a data directory and
 * a port ferry chooses, nothing shared with the machine's own PostgreSQL. PostgreSQL refuses
 * to run as root, so as root its tools run as the `postgres` user (runuser).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export class PostgresError extends Error {
  override readonly name = 'PostgresError';
}

const isRoot = (): boolean => typeof process.getuid === 'function' && process.getuid() === 0;

/** The directory holding initdb, pg_ctl and postgres: PATH, then Debian's /usr/lib/postgresql/<newest>/bin. */
export function postgresBinDir(): string | null {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  try {
    const versions = fs.readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
    for (const v of versions) dirs.push(path.join('/usr/lib/postgresql', v, 'bin'));
  } catch {
    // not Debian's layout
  }
  return dirs.find((d) => fs.existsSync(path.join(d, 'initdb')) && fs.existsSync(path.join(d, 'pg_ctl'))) ?? null;
}

function requireBinDir(): string {
  const dir = postgresBinDir();
  if (!dir) {
    throw new PostgresError(
      'PostgreSQL is not installed (no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin): ' +
        'install the Debian package postgresql (`apt-get install postgresql`, or `ferry setup --tests` as root)',
    );
  }
  return dir;
}

/** The uid/gid PostgreSQL's files must belong to: the postgres user as root, else ourselves. */
export function postgresOwner(): { uid: number; gid: number } | null {
  if (!isRoot()) return null;
  const id = (flag: string): number => {
    const r = spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
    if (r.status !== 0) throw new PostgresError("running as root, PostgreSQL must run as the 'postgres' user, and there is none: install the Debian package postgresql");
    return Number(r.stdout.trim());
  };
  return { uid: id('-u'), gid: id('-g') };
}

export interface PgResult {
  status: number | null;
  output: string;
}

/** Run a PostgreSQL tool (as the postgres user when we are root). */
export function pgTool(name: string, args: string[], timeoutMs = 120_000): PgResult {
  const bin = path.join(requireBinDir(), name);
  const cmd = isRoot() ? ['runuser', '-u', 'postgres', '--', bin, ...args] : [bin, ...args];
  // cwd /: the postgres user may not be allowed into ours.
  const r = spawnSync(cmd[0]!, cmd.slice(1), { cwd: '/', encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}` };
}

/** Run a PostgreSQL tool; a failure throws with `what` and the tool's output. */
export function pgToolOrThrow(name: string, args: string[], what: string): void {
  const r = pgTool(name, args);
  if (r.status !== 0) throw new PostgresError(`${what} failed (${name} exit ${r.status ?? 'killed'}): ${r.output.trim().slice(-2000)}`);
}

/** Give a path to the postgres user (root only), so PostgreSQL can write it. */
export function chownToPostgres(p: string): void {
  const owner = postgresOwner();
  if (owner) fs.chownSync(p, owner.uid, owner.gid);
}

/**
 * The postgres user must be able to reach the data directory: every ancestor needs the
 * execute bit for others (root only; a directory ferry cannot pass through is named).
 */
export function checkReachable(dataDir: string): void {
  if (!isRoot()) return;
  let dir = path.dirname(dataDir);
  for (;;) {
    const mode = fs.statSync(dir).mode;
    if ((mode & 0o001) === 0) {
      throw new PostgresError(
        `PostgreSQL runs as the postgres user and cannot enter ${dir} (mode ${(mode & 0o777).toString(8)}): ` +
          `allow it with \`chmod o+x ${dir}\`, or choose another --dir`,
      );
    }
    const up = path.dirname(dir);
    if (up === dir) return;
    dir = up;
  }
}

export interface InitOptions {
  dataDir: string;
  user: string;
  password: string;
}

/** initdb: a superuser `user` with a password, scram-sha-256 over TCP, no Unix sockets. */
export function initDataDir(opts: InitOptions): void {
  fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  chownToPostgres(opts.dataDir);
  const pwfile = path.join(opts.dataDir, '..', `.pwfile-${process.pid}`);
  fs.writeFileSync(pwfile, `${opts.password}\n`, { mode: 0o600 });
  chownToPostgres(pwfile);
  try {
    pgToolOrThrow('initdb', ['-D', opts.dataDir, '-U', opts.user, `--pwfile=${pwfile}`, '--auth=scram-sha-256', '-E', 'UTF8', '--locale=C'], `initdb of ${opts.dataDir}`);
  } finally {
    fs.rmSync(pwfile, { force: true });
  }
  // Appended as the file's owner keeps it (root writes, postgres still owns it).
  fs.appendFileSync(
    path.join(opts.dataDir, 'postgresql.conf'),
    [
      '',
      '# ferry cluster: its own server, reachable on 127.0.0.1 only (the port is given at start)',
      "listen_addresses = '127.0.0.1'",
      "unix_socket_directories = ''",
      '# four Temporal services, each with up to 20 + 10 connections',
      'max_connections = 200',
      '',
    ].join('\n'),
  );
}

export function isInitialized(dataDir: string): boolean {
  return fs.existsSync(path.join(dataDir, 'PG_VERSION'));
}

/** The running postmaster's pid (from postmaster.pid when `pg_ctl status` says it runs), else null. */
export function runningPid(dataDir: string): number | null {
  if (!isInitialized(dataDir)) return null;
  const r = pgTool('pg_ctl', ['status', '-D', dataDir], 10_000);
  if (r.status !== 0) return null;
  const m = /PID: (\d+)/.exec(r.output);
  return m ? Number(m[1]) : null;
}

export function start(dataDir: string, port: number, logFile: string): number {
  if (!fs.existsSync(logFile)) fs.writeFileSync(logFile, '');
  chownToPostgres(logFile);
  pgToolOrThrow('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', logFile, '-o', `-p ${port}`], `starting PostgreSQL on 127.0.0.1:${port} (log: ${logFile})`);
  const pid = runningPid(dataDir);
  if (pid === null) throw new PostgresError(`PostgreSQL started but \`pg_ctl status -D ${dataDir}\` does not see it (log: ${logFile})`);
  return pid;
}

export function stop(dataDir: string): void {
  if (runningPid(dataDir) === null) return;
  pgToolOrThrow('pg_ctl', ['stop', '-D', dataDir, '-w', '-t', '60', '-m', 'fast'], `stopping PostgreSQL (${dataDir})`);
}
