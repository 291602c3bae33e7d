/**
 * A TCP relay: the agents in the fixture's namespaces reach the dev server through the root
 * side of their control links. (The dev server cannot listen there itself: given a
 * non-loopback --ip, `temporal server start-dev` v1.5.1 binds its internal services to it
 * but dials them on 127.0.0.1, and every workflow start fails.)
 */
import { connect as tcpConnect, createServer as tcpServer, type Socket } from 'node:net';
import { freePort } from '../common/dev-server';

export interface Relay {
  port: number;
  close(): Promise<void>;
}

/** Listen on `host` (a free port) and pipe every connection to `to`. */
export async function startRelay(host: string, to: { host: string; port: number }): Promise<Relay> {
  const sockets = new Set<Socket>();
  const server = tcpServer((a) => {
    const b = tcpConnect(to);
    for (const [x, y] of [
      [a, b],
      [b, a],
    ] as const) {
      x.setNoDelay(true);
      sockets.add(x);
      x.on('error', () => y.destroy());
      x.on('close', () => {
        sockets.delete(x);
        y.destroy();
      });
      x.pipe(y);
    }
  });
  const port = await freePort(host);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
