/**
 * The SSH transport against Debian's real OpenSSH server on loopback (test/helpers/sshd.ts):
 * host keys checked against known_hosts (plain, hashed by ssh-keygen -H, wrong, empty),
 * publickey authentication, exec, and a unix socket on the "remote" host reached with
 * streamlocal forwarding — a fake QMP monitor, as QEMU's would be.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SshError, SshHost, type SshTarget } from '../../src/hypervisor/qemu/ssh';
import { ensureSshd, type Sshd } from '../helpers/sshd';

let sshd: Sshd;
const open: SshHost[] = [];

beforeAll(async () => {
  sshd = await ensureSshd();
}, 180_000);

afterAll(async () => {
  await Promise.all(open.map((h) => h.close()));
  await sshd?.stop();
});

function target(over: Partial<SshTarget> = {}): SshTarget {
  return {
    host: sshd.host,
    port: sshd.port,
    username: sshd.username,
    privateKeyPath: sshd.clientKeyPath,
    knownHostsPath: sshd.knownHostsPath,
    readyTimeoutMs: 10_000,
    ...over,
  };
}

async function connect(over: Partial<SshTarget> = {}): Promise<SshHost> {
  const h = await SshHost.connect(target(over));
  open.push(h);
  return h;
}

async function refusal(over: Partial<SshTarget>): Promise<SshError> {
  const err = await SshHost.connect(target(over)).then(
    (h) => {
      open.push(h);
      throw new Error('connected, but it must have been refused');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SshError);
  return err as SshError;
}

/** The host key's fingerprint as OpenSSH prints it (ssh-keygen -l). */
function hostFingerprint(): string {
  const r = spawnSync('ssh-keygen', ['-l', '-f', path.join(sshd.dir, 'host_ed25519.pub')], { encoding: 'utf8' });
  const fp = /SHA256:[A-Za-z0-9+/]+/.exec(r.stdout)?.[0];
  if (!fp) throw new Error(`ssh-keygen -l: ${r.stdout} ${r.stderr}`);
  return fp;
}

/** Lines from a stream, one at a time. */
function lineReader(stream: Duplex): () => Promise<string> {
  let buf = '';
  const waiting: ((l: string) => void)[] = [];
  const lines: string[] = [];
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).replace(/\r$/, '');
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  return () => {
    const l = lines.shift();
    return l !== undefined ? Promise.resolve(l) : new Promise((r) => waiting.push(r));
  };
}

/** A fake QMP monitor: greeting, then {"return": {}} to qmp_capabilities, errors otherwise. */
function fakeQmp(socketPath: string): Promise<net.Server> {
  const server = net.createServer((sock) => {
    sock.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 9}, "package": "fake"}, "capabilities": ["oob"]}}\r\n');
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, i)) as { execute: string; id?: unknown };
        buf = buf.slice(i + 1);
        const id = cmd.id === undefined ? {} : { id: cmd.id };
        const reply =
          cmd.execute === 'qmp_capabilities' ? { return: {}, ...id } : { error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` }, ...id };
        sock.write(`${JSON.stringify(reply)}\r\n`);
      }
    });
    sock.on('error', () => {});
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve(server));
  });
}

describe('SSH transport to a real OpenSSH server', () => {
  it('connects with the right known_hosts and runs commands', async () => {
    const h = await connect();
    expect(h.where).toBe(`root@127.0.0.1:${sshd.port}`);
    expect(await h.exec('echo hi')).toEqual({ code: 0, stdout: 'hi\n', stderr: '' });
    expect(await h.exec('echo oops >&2; exit 3')).toEqual({ code: 3, stdout: '', stderr: 'oops\n' });
    expect((await h.exec('tr a-z A-Z', { stdin: 'qmp\n' })).stdout).toBe('QMP\n');
    expect((await h.exec('cat')).stdout).toBe(''); // stdin is closed: cat does not hang
    const killed = await h.exec('kill -TERM $$');
    expect(killed).toMatchObject({ code: 128 + 15, signal: 'SIGTERM' });
    // A command past its timeout is rejected at once (sshd keeps the channel until the
    // command ends, and refuses the KILL signal request for root logins).
    const t0 = performance.now();
    await expect(h.exec('sleep 3', { timeoutMs: 300 })).rejects.toMatchObject({ code: 'EXEC_TIMEOUT' });
    expect(performance.now() - t0).toBeLessThan(2_500);
    // Channels are independent: the connection is still fine.
    expect((await h.exec('echo still here')).stdout).toBe('still here\n');
  });

  it('reaches a unix socket on the host through streamlocal forwarding (a fake QMP monitor)', async () => {
    const socketPath = path.join(sshd.dir, 'qmp.sock');
    const qmp = await fakeQmp(socketPath);
    try {
      const h = await connect();
      const stream = await h.openUnixSocket(socketPath);
      const next = lineReader(stream);
      const greeting = JSON.parse(await next()) as { QMP: { version: { qemu: { major: number } } } };
      expect(greeting.QMP.version.qemu.major).toBe(9);
      stream.write('{"execute": "qmp_capabilities", "id": 1}\n');
      expect(JSON.parse(await next())).toEqual({ return: {}, id: 1 });
      stream.write('{"execute": "query-status", "id": 2}\n');
      expect(JSON.parse(await next())).toMatchObject({ error: { class: 'CommandNotFound' }, id: 2 });

      // A second socket on the same connection; bytes round-trip on both.
      const again = await h.openUnixSocket(socketPath);
      const next2 = lineReader(again);
      expect(await next2()).toContain('"QMP"');
      again.write('{"execute": "qmp_capabilities"}\n');
      expect(JSON.parse(await next2())).toEqual({ return: {} });

      // Closing the connection ends its forwarded streams.
      const ended = new Promise<void>((r) => stream.once('close', () => r()));
      await h.close();
      await ended;
      expect(h.closed).toBe(true);
      await expect(h.exec('true')).rejects.toMatchObject({ code: 'CLOSED' });
      await expect(h.openUnixSocket(socketPath)).rejects.toMatchObject({ code: 'CLOSED' });
    } finally {
      await new Promise((r) => qmp.close(r));
    }
  });

  it('a socket path that does not exist is a clear error', async () => {
    const h = await connect();
    const missing = path.join(sshd.dir, 'no-such.sock');
    const err = (await h.openUnixSocket(missing).catch((e: unknown) => e)) as SshError;
    expect(err).toBeInstanceOf(SshError);
    expect(err.code).toBe('CHANNEL');
    expect(err.message).toContain(missing);
    expect((await h.exec('echo ok')).stdout).toBe('ok\n');
  });

  it('refuses a host whose key differs from known_hosts, naming host, port, key type, fingerprint and file', async () => {
    const err = await refusal({ knownHostsPath: sshd.wrongKnownHostsPath });
    expect(err.code).toBe('HOST_KEY_MISMATCH');
    expect(err.message).toContain('SHA256:');
    expect(err.message).toContain(hostFingerprint());
    expect(err.message).toContain('ssh-ed25519');
    expect(err.message).toContain('127.0.0.1');
    expect(err.message).toContain(String(sshd.port));
    expect(err.message).toContain(sshd.wrongKnownHostsPath);
  });

  it('refuses an unknown host (empty or missing known_hosts)', async () => {
    const empty = path.join(sshd.dir, 'known_hosts.empty');
    fs.writeFileSync(empty, '# nothing yet\n');
    const err = await refusal({ knownHostsPath: empty });
    expect(err.code).toBe('HOST_KEY_UNKNOWN');
    expect(err.message).toContain(hostFingerprint());
    expect(err.message).toContain(empty);
    expect(err.message).toContain(`port ${sshd.port}`);

    const missing = await refusal({ knownHostsPath: path.join(sshd.dir, 'no-such-known-hosts') });
    expect(missing.code).toBe('HOST_KEY_UNKNOWN');
    expect(missing.message).toContain('does not exist');

    // Known on port 22 is not known on this port.
    const port22 = path.join(sshd.dir, 'known_hosts.port22');
    fs.writeFileSync(port22, fs.readFileSync(sshd.knownHostsPath, 'utf8').replace(`[127.0.0.1]:${sshd.port}`, '127.0.0.1'));
    expect((await refusal({ knownHostsPath: port22 })).code).toBe('HOST_KEY_UNKNOWN');
  });

  it('accepts a known_hosts entry hashed by ssh-keygen -H', async () => {
    const hashed = path.join(sshd.dir, 'known_hosts.hashed');
    fs.copyFileSync(sshd.knownHostsPath, hashed);
    const r = spawnSync('ssh-keygen', ['-H', '-f', hashed], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const text = fs.readFileSync(hashed, 'utf8');
    expect(text).toMatch(/^\|1\|[A-Za-z0-9+/=]+\|[A-Za-z0-9+/=]+ ssh-ed25519 /);
    expect(text).not.toContain('127.0.0.1');
    const h = await connect({ knownHostsPath: hashed });
    expect((await h.exec('echo hashed')).stdout).toBe('hashed\n');
  });

  it('asks for the host key type known_hosts holds (the host has ed25519 and ECDSA keys)', async () => {
    const ecdsaOnly = path.join(sshd.dir, 'known_hosts.ecdsa');
    fs.writeFileSync(ecdsaOnly, `[127.0.0.1]:${sshd.port} ${sshd.ecdsaHostKeyPub.split(/\s+/).slice(0, 2).join(' ')}\n`);
    const h = await connect({ knownHostsPath: ecdsaOnly });
    expect((await h.exec('echo ecdsa')).stdout).toBe('ecdsa\n');
  });

  it('refuses a revoked host key', async () => {
    const revoked = path.join(sshd.dir, 'known_hosts.revoked');
    const keyPart = sshd.hostKeyPub.split(/\s+/).slice(0, 2).join(' ');
    fs.writeFileSync(revoked, `${fs.readFileSync(sshd.knownHostsPath, 'utf8')}@revoked * ${keyPart}\n`);
    const err = await refusal({ knownHostsPath: revoked });
    expect(err.code).toBe('HOST_KEY_REVOKED');
    expect(err.message).toContain(hostFingerprint());
  });

  it('authentication failure and connection failure are clear', async () => {
    const stranger = path.join(sshd.dir, 'stranger_ed25519');
    expect(spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]).status).toBe(0);
    const auth = await refusal({ privateKeyPath: stranger });
    expect(auth.code).toBe('AUTH_FAILED');
    expect(auth.message).toContain(`ssh root@127.0.0.1:${sshd.port}: authentication failed (publickey)`);
    expect(auth.message).not.toContain('PRIVATE KEY');

    const noKey = await refusal({ privateKeyPath: path.join(sshd.dir, 'no-such-key') });
    expect(noKey.code).toBe('PRIVATE_KEY');

    const closedPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as net.AddressInfo;
        s.close(() => resolve(port));
      });
    });
    const refused = await refusal({ port: closedPort });
    expect(refused.code).toBe('CONNECT');
    expect(refused.message).toContain(`root@127.0.0.1:${closedPort}`);
    expect(refused.message).toContain('ECONNREFUSED');
  });
});
