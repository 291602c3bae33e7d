/**
 * A whole ferry on one machine: the embedded dev server (unless FERRY_TEMPORAL_ADDRESS is
 * set), a controller process and host-agent processes. `ferry demo`, `ferry bench` and the
 * overhead and data-plane benches use it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startDevServer, type DevServer } from '../common/dev-server';
import { ensureTemporalBinary } from '../common/temporal-bin';
import type { FerryConfig } from '../common/config';
import { runClusterKeyEnv } from '../common/cluster-key';
import { spawnFerry, type FerryProcess } from './processes';

export interface LocalCluster {
  address: string;
  uiUrl: string | null;
  controller: FerryProcess;
  agents: Map<string, FerryProcess>;
  stop(): Promise<void>;
}

export interface LocalClusterOptions {
  cfg: FerryConfig;
  hosts: string[];
  memoryCapacity?: string;
  log: (line: string) => void;
  /** Echo the processes' own log lines. */
  verbose?: boolean;
  /** More arguments for each agent (e.g. --driver qemu). */
  agentArgs?: (host: string) => string[];
  /** Run the embedded dev server with its stock dynamic config (side-by-side measurements). */
  stockServer?: boolean;
  /** The agents' --trace-dir (where `trace:<file>` workloads may be read from). */
  traceDir?: string | null;
  /** Serve the dev server's Temporal UI too (the dashboard links to it). */
  temporalUi?: boolean;
}

export async function startLocalCluster(opts: LocalClusterOptions): Promise<LocalCluster> {
  const { cfg, log } = opts;
  let server: DevServer | null = null;
  let address = cfg.temporalAddress;
  let uiUrl: string | null = null;
  const started: FerryProcess[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(started.map((p) => p.stop()));
    await server?.stop();
  };
  try {
    if (!address) {
      const bin = await ensureTemporalBinary(cfg.temporalBin, log);
      fs.mkdirSync(cfg.stateDir, { recursive: true });
      server = await startDevServer({ bin, port: 0, headless: opts.temporalUi !== true, dbFile: null, logFile: path.join(cfg.stateDir, 'demo-server.log'), stock: opts.stockServer });
      address = server.address;
      uiUrl = server.uiUrl;
      log(`ferry: Temporal dev server on ${address} (in memory${opts.stockServer ? ', stock dynamic config' : ''})`);
    } else {
      log(`ferry: using Temporal at ${address}`);
    }
    const env = {
      FERRY_TEMPORAL_ADDRESS: address,
      FERRY_NAMESPACE: cfg.namespace,
      FERRY_STORAGE_DIR: cfg.storageDir,
      // Our own dev server speaks plain gRPC: certificates meant for a cluster do not apply (empty = unset).
      ...(server ? { FERRY_TEMPORAL_TLS_CA: '', FERRY_TEMPORAL_TLS_CERT: '', FERRY_TEMPORAL_TLS_KEY: '', FERRY_TEMPORAL_TLS_SERVER_NAME: '' } : {}),
      // Without a configured cluster key, the agents started here share one made for this run:
      // channel-2 secrets are derived on them and stay out of the workflow history.
      ...runClusterKeyEnv(process.env),
    };
    const echo = opts.verbose ? (l: string) => log(`  ${l}`) : undefined;
    const controller = spawnFerry('controller', ['controller'], { env, echo });
    started.push(controller);
    const agents = new Map<string, FerryProcess>();
    for (const host of opts.hosts) {
      const args = ['agent', '--host', host];
      if (opts.memoryCapacity) args.push('--memory-capacity', opts.memoryCapacity);
      if (opts.traceDir) args.push('--trace-dir', opts.traceDir);
      args.push(...(opts.agentArgs?.(host) ?? []));
      const p = spawnFerry(`agent ${host}`, args, { env, echo });
      started.push(p);
      agents.set(host, p);
    }
    for (const p of started) log(`ferry: ${(await p.ready).replace(/^ferry /, '')}`);
    return { address, uiUrl, controller, agents, stop: stopAll };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
