/**
 * Where QEMU runs: this machine, or a remote host reached over SSH (agentless). The driver
 * only needs to run a command to completion, read a file and open a QEMU's QMP socket.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { QmpClient } from './qmp';
import type { SshHost } from './ssh';

export interface QemuHost {
  /** For messages: `local` or `user@host:port`. */
  readonly where: string;
  run(argv: string[], timeoutMs?: number): Promise<{ code: number; stdout: string; stderr: string }>;
  readFile(path: string): Promise<string>;
  /** Write a file only its owner can read (keys live in such files). */
  writePrivateFile(path: string, content: string): Promise<void>;
  mkdirp(dir: string): Promise<void>;
  remove(path: string): Promise<void>;
  openQmp(socketPath: string, timeoutMs?: number): Promise<QmpClient>;
}

export class LocalHost implements QemuHost {
  readonly where = 'local';
  run(argv: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) || (err && !stderr ? err.message : '') });
      });
    });
  }
  readFile(path: string): Promise<string> {
    return fs.readFile(path, 'utf8').catch(() => '');
  }
  async writePrivateFile(path: string, content: string): Promise<void> {
    await fs.writeFile(path, content, { mode: 0o600 });
    await fs.chmod(path, 0o600);
  }
  async mkdirp(dir: string): Promise<void> {
    await fs.mkdir(dir, { recursive: true });
  }
  async remove(path: string): Promise<void> {
    await fs.rm(path, { recursive: true, force: true });
  }
  openQmp(socketPath: string, timeoutMs = 10_000): Promise<QmpClient> {
    return QmpClient.connectUnix(socketPath, timeoutMs);
  }
}

/** POSIX shell quoting for commands sent over SSH. */
export function shellQuote(argv: string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_./:=,@%+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export class RemoteHost implements QemuHost {
  constructor(private readonly ssh: SshHost) {}
  get where(): string {
    return this.ssh.where;
  }
  run(argv: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.ssh.exec(shellQuote(argv), { timeoutMs });
  }
  async readFile(path: string): Promise<string> {
    const r = await this.ssh.exec(shellQuote(['cat', path]));
    return r.code === 0 ? r.stdout : '';
  }
  async writePrivateFile(path: string, content: string): Promise<void> {
    const r = await this.ssh.exec(shellQuote(['sh', '-c', 'umask 077 && cat > "$1" && chmod 600 "$1"', 'write', path]), { stdin: content, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`${this.where}: cannot write ${path}: ${r.stderr.trim()}`);
  }
  async mkdirp(dir: string): Promise<void> {
    const r = await this.ssh.exec(shellQuote(['mkdir', '-p', dir]));
    if (r.code !== 0) throw new Error(`${this.where}: mkdir -p ${dir}: ${r.stderr.trim()}`);
  }
  async remove(path: string): Promise<void> {
    await this.ssh.exec(shellQuote(['rm', '-rf', path]));
  }
  async openQmp(socketPath: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const stream = await this.ssh.openUnixSocket(socketPath);
        return await QmpClient.handshake(stream, `${this.where}:${socketPath}`, Math.max(1000, deadline - Date.now()));
      } catch (e) {
        if (Date.now() >= deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}
