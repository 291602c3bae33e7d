/**
 * The embedded dev server (the real `temporal` binary): a port picked for it can be taken
 * before the server binds it; startDevServer then tries fresh ports. A port the caller chose
 * is never swapped for another.
 */
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { freePort, startDevServer } from '../../src/common/dev-server';
import { tempDir } from '../helpers/cluster';

describe('startDevServer', () => {
  // Holds a port and hangs up on whoever connects (the start-up probe may knock once).
  const holder = net.createServer((sock) => sock.destroy());
  let taken = 0;
  afterAll(() => new Promise<void>((r) => holder.close(() => r())));

  async function occupy(): Promise<number> {
    if (taken) return taken;
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    taken = (holder.address() as net.AddressInfo).port;
    return taken;
  }

  it('a picked port that another process took is replaced by a fresh one', async () => {
    const busy = await occupy();
    const picks: number[] = [];
    const server = await startDevServer({
      bin: inject('temporalBin'),
      headless: true,
      logFile: path.join(tempDir('devsrv'), 'server.log'),
      pickPort: async (ip) => {
        const p = picks.length === 0 ? busy : await freePort(ip);
        picks.push(p);
        return p;
      },
    });
    try {
      expect(picks[0]).toBe(busy);
      expect(picks).toHaveLength(2);
      expect(server.port).toBe(picks[1]);
      expect(server.address).toBe(`127.0.0.1:${picks[1]}`);
    } finally {
      await server.stop();
    }
  }, 120_000);

  it('a port the caller chose is not swapped: a clash is an error naming the log', async () => {
    const busy = await occupy();
    const log = path.join(tempDir('devsrv'), 'server.log');
    await expect(startDevServer({ bin: inject('temporalBin'), headless: true, port: busy, logFile: log })).rejects.toThrow(`temporal server start-dev exited during start-up`);
  }, 120_000);
});
