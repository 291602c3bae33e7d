/**
 * The QMP client against a scripted monitor on a unix socket: greeting and version check,
 * replies matched by id (out of order), errors, events with QEMU's timestamps, a monitor
 * that goes away, and query-migrate parsing.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseMigrateInfo, QmpClient, QmpError } from '../../src/hypervisor/qemu/qmp';

const servers: net.Server[] = [];
const clients: QmpClient[] = [];

/** Resolves once `cond` holds: polled, no time window (the test timeout catches a hang). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) s.close();
});

type Handler = (cmd: { execute: string; arguments?: Record<string, unknown>; id?: string }, send: (o: unknown) => void) => void;

async function monitor(major: number, handler: Handler): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  const server = net.createServer((c) => {
    const send = (o: unknown): void => void c.write(`${JSON.stringify(o)}\r\n`);
    send({ QMP: { version: { qemu: { major, minor: 2, micro: 0 }, package: ' (Debian)' }, capabilities: ['oob'] } });
    let buf = '';
    c.on('data', (d) => {
      buf += String(d);
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line) as { execute: string; id?: string };
        if (cmd.execute === 'qmp_capabilities') send({ return: {}, id: cmd.id });
        else handler(cmd, send);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(sock, r));
  return sock;
}

describe('QmpClient', () => {
  it('negotiates, reads the version and matches replies to commands by id', async () => {
    const pending: Array<() => void> = [];
    const sock = await monitor(10, (cmd, send) => {
      // Answer query-status only after query-version: replies arrive out of order.
      if (cmd.execute === 'query-status') pending.push(() => send({ return: { status: 'running', running: true }, id: cmd.id }));
      if (cmd.execute === 'query-version') {
        send({ return: { qemu: { major: 10 } }, id: cmd.id });
        for (const p of pending.splice(0)) p();
      }
    });
    const c = await QmpClient.connectUnix(sock);
    clients.push(c);
    expect(c.version).toMatchObject({ major: 10, minor: 2, package: '(Debian)' });
    const [st, ver] = await Promise.all([c.execute<{ status: string }>('query-status'), c.execute('query-version')]);
    expect(st.status).toBe('running');
    expect(ver).toEqual({ qemu: { major: 10 } });
  });

  it('refuses QEMU older than 9 and says why', async () => {
    const sock = await monitor(7, () => undefined);
    await expect(QmpClient.connectUnix(sock)).rejects.toThrow(/QEMU 7\.2\.0 .* too old: ferry needs QEMU ≥ 9\.0.*lose dirty pages/);
  });

  it('turns QMP errors into QmpError with the class and description', async () => {
    const sock = await monitor(9, (cmd, send) => send({ error: { class: 'GenericError', desc: 'There is a migration process in progress' }, id: cmd.id }));
    const c = await QmpClient.connectUnix(sock);
    clients.push(c);
    const err = await c.execute('migrate', { uri: 'tcp:127.0.0.1:1' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).message).toBe('QMP migrate: There is a migration process in progress (GenericError)');
  });

  it('delivers events with QEMU timestamps, and fails pending commands when the monitor goes away', async () => {
    let conn: ((o: unknown) => void) | null = null;
    const sock = await monitor(10, (cmd, send) => {
      if (cmd.execute === 'migrate') {
        send({ return: {}, id: cmd.id });
        send({ event: 'MIGRATION', data: { status: 'active' }, timestamp: { seconds: 1700000000, microseconds: 250000 } });
        send({ event: 'MIGRATION_PASS', data: { pass: 2 }, timestamp: { seconds: 1700000001, microseconds: 0 } });
      }
      if (cmd.execute === 'hang') conn = send;
    });
    const c = await QmpClient.connectUnix(sock);
    clients.push(c);
    const events: Array<{ event: string; atMs: number; data: Record<string, unknown> }> = [];
    c.onEvent((e) => events.push(e));
    await c.execute('migrate', { uri: 'tcp:x:1' });
    await until(() => events.length >= 2);
    expect(events).toEqual([
      { event: 'MIGRATION', data: { status: 'active' }, atMs: 1700000000250 },
      { event: 'MIGRATION_PASS', data: { pass: 2 }, atMs: 1700000001000 },
    ]);
    const hanging = c.execute('hang');
    await until(() => conn !== null); // the monitor has the command (and never answers it)
    expect(conn).not.toBeNull();
    for (const s of servers) s.close();
    // Closing the server does not close accepted sockets: end the client's side instead.
    c.close();
    await expect(hanging).rejects.toThrow(/connection closed|connection error/);
    await expect(c.execute('query-status')).rejects.toThrow();
  });

  it('waits for a socket that does not exist yet, then gives a clear error', async () => {
    await expect(QmpClient.connectUnix(path.join(os.tmpdir(), 'ferry-no-such-qmp.sock'), 300)).rejects.toThrow(/ferry-no-such-qmp\.sock/);
  });
});

describe('parseMigrateInfo', () => {
  it('reads the RAM counters ferry uses', () => {
    const info = parseMigrateInfo({
      status: 'completed',
      'total-time': 4210,
      downtime: 12,
      ram: { transferred: 1000, remaining: 0, total: 268435456, 'dirty-sync-count': 5, 'page-size': 4096, normal: 200, duplicate: 60000, 'postcopy-requests': 3, 'postcopy-bytes': 77, 'precopy-bytes': 900, 'downtime-bytes': 23, mbps: 270.5 },
    });
    expect(info).toMatchObject({ status: 'completed', totalTimeMs: 4210, downtimeMs: 12, error: null });
    expect(info.ram).toMatchObject({ transferred: 1000, dirtySyncCount: 5, normal: 200, duplicate: 60000, postcopyRequests: 3, postcopyBytes: 77, downtimeBytes: 23 });
  });

  it('copes with an incoming side that has no RAM statistics yet, and with a failure', () => {
    expect(parseMigrateInfo({ status: 'setup' })).toMatchObject({ status: 'setup', ram: null, downtimeMs: null });
    expect(parseMigrateInfo({ status: 'failed', 'error-desc': 'Unable to write to socket' }).error).toBe('Unable to write to socket');
    expect(parseMigrateInfo(undefined).status).toBe('none');
  });
});
