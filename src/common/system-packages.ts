/**
 * Debian packages the test suite needs (docker-compose to validate the deployment file, and
 * later QEMU, OpenSSH, iproute2). Installed with apt-get when missing and running as root;
 * otherwise a clear error says what to install.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface SystemTool {
  /** The command that must be on PATH. */
  command: string;
  /** The Debian package that provides it. */
  pkg: string;
  /** Why ferry needs it. */
  why: string;
}

export const TEST_TOOLS: SystemTool[] = [
  { command: 'docker-compose', pkg: 'docker-compose', why: 'validates docker-compose.yml' },
  { command: 'ip', pkg: 'iproute2', why: 'network namespaces and veth links of the link fault tests' },
  { command: 'tc', pkg: 'iproute2', why: 'shapes the links of the fault tests' },
];

export function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((d) => {
    try {
      fs.accessSync(path.join(d, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function ensureSystemTools(tools: SystemTool[], log: (l: string) => void): void {
  const missing = tools.filter((t) => !onPath(t.command));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((t) => t.pkg))];
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !onPath('apt-get')) {
    throw new Error(`missing ${missing.map((t) => `${t.command} (${t.why})`).join(', ')}: install the Debian package(s) ${pkgs.join(' ')}`);
  }
  log(`ferry: installing ${pkgs.join(' ')} with apt-get (${missing.map((t) => t.why).join('; ')})…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env });
  if (update.status !== 0) throw new Error('apt-get update failed');
  const install = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: ['ignore', 'ignore', 'inherit'], env });
  if (install.status !== 0) throw new Error(`apt-get install ${pkgs.join(' ')} failed`);
}
