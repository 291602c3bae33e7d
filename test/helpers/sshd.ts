/**
 * A throwaway OpenSSH server on loopback for the SSH transport tests: Debian's real sshd
 * (installed with apt-get when missing and running as root), its own host key, client key,
 * config and pid file in a temp dir, on a free high port. Root may log in with the client
 * key only (PermitRootLogin prohibit-password); streamlocal forwarding is allowed.
 *
 * ensureSshd() resolves once the port accepts connections; stop() kills sshd and removes
 * the temp dir. Call stop() from afterAll so it also runs when a test fails.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ensureSystemTools } from '../../src/common/system-packages';

export const SSHD = '/usr/sbin/sshd';

export interface Sshd {
  host: '127.0.0.1';
  port: number;
  /** The temp dir holding keys, config and known_hosts files (removed by stop()). */
  dir: string;
  /** The host's public key line (`ssh-ed25519 AAAA… comment`). */
  hostKeyPub: string;
  /** The host's second key (`ecdsa-sha2-nistp256 AAAA… comment`); ssh2 prefers ed25519. */
  ecdsaHostKeyPub: string;
  clientKeyPath: string;
  /** `[127.0.0.1]:port` with the host's key. */
  knownHostsPath: string;
  /** The same host with a different ssh-ed25519 key. */
  wrongKnownHostsPath: string;
  username: 'root';
  /** The last 8 KiB sshd wrote to stderr (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

function keygen(file: string, comment: string, type = 'ed25519'): void {
  const r = spawnSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', comment, '-f', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ssh-keygen -f ${file} failed: ${r.stderr || r.error?.message}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function startOnce(dir: string, port: number): Promise<{ child: ChildProcess; log: () => string } | { error: string }> {
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(
    config,
    [
      `ListenAddress 127.0.0.1:${port}`,
      `HostKey ${path.join(dir, 'host_ed25519')}`,
      `HostKey ${path.join(dir, 'host_ecdsa')}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      'AllowStreamLocalForwarding yes',
      // OpenSSH ties streamlocal (unix socket) forwarding to AllowTcpForwarding as well.
      'AllowTcpForwarding local',
      'X11Forwarding no',
      'PrintMotd no',
      'LogLevel INFO',
      '',
    ].join('\n'),
  );
  let log = '';
  const child = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    log = (log + d).slice(-8192);
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (exited(child)) return { error: `sshd exited (${child.exitCode ?? child.signalCode}): ${log.trim()}` };
    if (await accepts(port)) return { child, log: () => log };
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  return { error: `sshd did not accept connections on 127.0.0.1:${port} within 10 s: ${log.trim()}` };
}

export async function ensureSshd(log: (l: string) => void = (l) => console.log(l)): Promise<Sshd> {
  if (!fs.existsSync(SSHD)) {
    // apt-get install openssh-server (and openssh-client if ssh-keygen is missing too).
    ensureSystemTools(
      [
        { command: 'sshd', pkg: 'openssh-server', why: 'the SSH transport tests run a throwaway sshd' },
        { command: 'ssh-keygen', pkg: 'openssh-client', why: 'the SSH transport tests generate keys' },
      ],
      log,
    );
    if (!fs.existsSync(SSHD)) throw new Error(`${SSHD} is still missing after installing openssh-server`);
  }
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 }); // privilege separation dir

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-sshd-'));
  try {
    keygen(path.join(dir, 'host_ed25519'), 'ferry-test-host');
    keygen(path.join(dir, 'host_ecdsa'), 'ferry-test-host', 'ecdsa');
    keygen(path.join(dir, 'other_host_ed25519'), 'ferry-test-other-host');
    keygen(path.join(dir, 'client_ed25519'), 'ferry-test-client');
    fs.copyFileSync(path.join(dir, 'client_ed25519.pub'), path.join(dir, 'authorized_keys'));
    const hostKeyPub = fs.readFileSync(path.join(dir, 'host_ed25519.pub'), 'utf8').trim();
    const ecdsaHostKeyPub = fs.readFileSync(path.join(dir, 'host_ecdsa.pub'), 'utf8').trim();
    const otherKeyPub = fs.readFileSync(path.join(dir, 'other_host_ed25519.pub'), 'utf8').trim();
    const keyPart = (pub: string) => pub.split(/\s+/).slice(0, 2).join(' ');

    let started: { child: ChildProcess; log: () => string } | undefined;
    let port = 0;
    const errors: string[] = [];
    for (let attempt = 0; attempt < 3 && !started; attempt++) {
      port = await freePort();
      const r = await startOnce(dir, port);
      if ('error' in r) errors.push(r.error);
      else started = r;
    }
    if (!started) throw new Error(`cannot start ${SSHD}: ${errors.join('; ')}`);
    const child = started.child;

    const knownHostsPath = path.join(dir, 'known_hosts');
    const wrongKnownHostsPath = path.join(dir, 'known_hosts.wrong');
    fs.writeFileSync(knownHostsPath, `[127.0.0.1]:${port} ${keyPart(hostKeyPub)}\n`);
    fs.writeFileSync(wrongKnownHostsPath, `[127.0.0.1]:${port} ${keyPart(otherKeyPub)}\n`);

    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      if (!exited(child)) {
        const gone = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await gone;
        clearTimeout(t);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    };
    return {
      host: '127.0.0.1',
      port,
      dir,
      hostKeyPub,
      ecdsaHostKeyPub,
      clientKeyPath: path.join(dir, 'client_ed25519'),
      knownHostsPath,
      wrongKnownHostsPath,
      username: 'root',
      log: started.log,
      stop,
    };
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
