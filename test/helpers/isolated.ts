/**
 * A cluster of its own for fault tests: a dev server (optionally on a SQLite file, so it can
 * be killed and restarted), a controller process and agent processes. Nothing is shared with
 * other test files, so killing the controller really leaves no worker on ferry-control.
 */
import { runClusterKeyEnv } from '../../src/common/cluster-key';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { inject } from 'vitest';
import { spawnFerry, type FerryProcess } from '../../src/support/processes';
import { startDevServer, type DevServer } from '../../src/common/dev-server';
import { tempDir } from './cluster';

export interface Isolated {
  address: string;
  storage: string;
  client: Client;
  controller: FerryProcess;
  agents: Map<string, FerryProcess>;
  startController(): Promise<FerryProcess>;
  startAgent(host: string): Promise<FerryProcess>;
  restartServer(downMs: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startIsolated(hosts: string[], opts: { persistent?: boolean } = {}): Promise<Isolated> {
  const dir = tempDir('isolated');
  const bin = inject('temporalBin');
  // Port 0: startDevServer picks one (and picks again if it is taken before the server binds it).
  const serverOpts = { bin, port: 0, headless: true, dbFile: opts.persistent ? path.join(dir, 'temporal.db') : null, logFile: path.join(dir, 'server.log') };
  let server: DevServer = await startDevServer(serverOpts);
  const address = server.address;
  serverOpts.port = server.port; // a restart comes back on the same address
  const storage = tempDir('isolated-storage');
  const env = { FERRY_TEMPORAL_ADDRESS: address, FERRY_STORAGE_DIR: storage, ...runClusterKeyEnv() };
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  const agents = new Map<string, FerryProcess>();
  const iso: Isolated = {
    address,
    storage,
    client,
    controller: null as unknown as FerryProcess,
    agents,
    async startController() {
      const p = spawnFerry('controller', ['controller'], { env });
      await p.ready;
      iso.controller = p;
      return p;
    },
    async startAgent(host: string) {
      const p = spawnFerry(`agent ${host}`, ['agent', '--host', host, '--memory-capacity', '4GiB'], { env });
      await p.ready;
      agents.set(host, p);
      return p;
    },
    async restartServer(downMs: number) {
      server.process.kill('SIGKILL');
      await new Promise((r) => server.process.once('exit', r));
      await new Promise((r) => setTimeout(r, downMs));
      server = await startDevServer(serverOpts);
    },
    async stop() {
      await Promise.all([...agents.values()].map((a) => a.stop()));
      await iso.controller?.stop();
      await connection.close();
      await server.stop();
    },
  };
  await Promise.all([iso.startController(), ...hosts.map((h) => iso.startAgent(h))]);
  return iso;
}

/** The seeded PRNG of the fault bench (mulberry32); tests print their seed. */
export { prng } from '../../src/support/prng';
