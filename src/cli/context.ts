import fs from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import { loadConfig, type ConfigFlags, type FerryConfig } from '../common/config';
import { UsageError } from '../common/errors';
import { temporalTlsOption } from '../common/temporal-tls';

/** Port of the embedded dev server when FERRY_TEMPORAL_ADDRESS is unset (`ferry server`). */
export const EMBEDDED_PORT = 7233;

export const commonOptions = {
  'temporal-address': { type: 'string' },
  namespace: { type: 'string' },
  'temporal-bin': { type: 'string' },
  'temporal-tls-ca': { type: 'string' },
  'temporal-tls-cert': { type: 'string' },
  'temporal-tls-key': { type: 'string' },
  'temporal-tls-server-name': { type: 'string' },
} as const;

export function configFrom(values: Record<string, unknown>): FerryConfig {
  const flags: ConfigFlags = {
    temporalAddress: values['temporal-address'] as string | undefined,
    namespace: values.namespace as string | undefined,
    storage: values.storage as string | undefined,
    temporalBin: values['temporal-bin'] as string | undefined,
    traceDir: values['trace-dir'] as string | undefined,
    temporalTls: {
      ca: values['temporal-tls-ca'] as string | undefined,
      cert: values['temporal-tls-cert'] as string | undefined,
      key: values['temporal-tls-key'] as string | undefined,
      serverName: values['temporal-tls-server-name'] as string | undefined,
    },
  };
  return loadConfig(process.env, flags);
}

export function temporalAddressOf(cfg: FerryConfig): string {
  return cfg.temporalAddress ?? `127.0.0.1:${EMBEDDED_PORT}`;
}

export async function connectClient(cfg: FerryConfig): Promise<{ client: Client; close: () => Promise<void> }> {
  const address = temporalAddressOf(cfg);
  let connection: Connection;
  try {
    connection = await Connection.connect({ address, connectTimeout: 5000, ...temporalTlsOption(cfg.temporalTls) });
  } catch (e) {
    throw new UsageError(
      `cannot reach Temporal at ${address} (${(e as Error).message.split('\n')[0]}); start one with \`ferry server\` or set FERRY_TEMPORAL_ADDRESS`,
    );
  }
  const client = new Client({ connection, namespace: cfg.namespace });
  return { client, close: () => connection.close() };
}

export function ensureDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** Human output goes to stderr; stdout is kept for --json. */
export const say = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
