/**
 * Mutual TLS to the Temporal frontend. A ferry process (controller, agent, CLI) connects with
 * TLS when it is given the cluster CA certificate, and presents a client certificate the CA
 * signed when it is given one with its key:
 *
 *   FERRY_TEMPORAL_TLS_CA           --temporal-tls-ca F       the CA that signed the frontend's certificate
 *   FERRY_TEMPORAL_TLS_CERT         --temporal-tls-cert F     this process's client certificate
 *   FERRY_TEMPORAL_TLS_KEY          --temporal-tls-key F      its private key
 *   FERRY_TEMPORAL_TLS_SERVER_NAME  --temporal-tls-server-name N   the name the frontend's certificate
 *                                   must carry, when it is not the host of FERRY_TEMPORAL_ADDRESS
 *
 * `ferry cluster certs` makes a CA and these certificates (src/cluster/certs.ts); `ferry cluster
 * up` runs its frontend with `requireClientAuth`, so a client without a certificate is refused.
 */
import fs from 'node:fs';
import type { TLSConfig } from '@temporalio/common/lib/internal-non-workflow/tls-config';
import { UsageError } from './errors';

export interface TemporalTlsFiles {
  ca: string;
  cert: string | null;
  key: string | null;
  serverName: string | null;
}

export interface TemporalTlsFlags {
  ca?: string;
  cert?: string;
  key?: string;
  serverName?: string;
}

export const TEMPORAL_TLS_ENV = {
  ca: 'FERRY_TEMPORAL_TLS_CA',
  cert: 'FERRY_TEMPORAL_TLS_CERT',
  key: 'FERRY_TEMPORAL_TLS_KEY',
  serverName: 'FERRY_TEMPORAL_TLS_SERVER_NAME',
} as const;

/** The TLS files from flags, else the environment; null when none is set (plain connection). */
export function temporalTlsFiles(env: NodeJS.ProcessEnv, flags: TemporalTlsFlags = {}): TemporalTlsFiles | null {
  const pick = (k: keyof typeof TEMPORAL_TLS_ENV): string | null => {
    const v = flags[k] ?? env[TEMPORAL_TLS_ENV[k]];
    return v === undefined || v === '' ? null : v;
  };
  const ca = pick('ca');
  const cert = pick('cert');
  const key = pick('key');
  const serverName = pick('serverName');
  if (ca === null && cert === null && key === null) return null;
  if (ca === null) throw new UsageError(`${TEMPORAL_TLS_ENV.ca} / --temporal-tls-ca: the cluster CA certificate is needed with a Temporal client certificate`);
  if ((cert === null) !== (key === null)) {
    throw new UsageError(`${TEMPORAL_TLS_ENV.cert} and ${TEMPORAL_TLS_ENV.key} (--temporal-tls-cert, --temporal-tls-key) go together`);
  }
  return { ca, cert, key, serverName };
}

function readFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`Temporal TLS: cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** The SDK's TLS options for these files (read now: a missing file fails before any connection). */
export function temporalTlsConfig(files: TemporalTlsFiles): TLSConfig {
  return {
    serverRootCACertificate: readFile(files.ca, 'CA certificate'),
    ...(files.cert && files.key ? { clientCertPair: { crt: readFile(files.cert, 'client certificate'), key: readFile(files.key, 'client key') } } : {}),
    ...(files.serverName ? { serverNameOverride: files.serverName } : {}),
  };
}

/** `{ tls }` for Connection.connect / NativeConnection.connect, or nothing (plain). */
export function temporalTlsOption(files: TemporalTlsFiles | null | undefined): { tls?: TLSConfig } {
  return files ? { tls: temporalTlsConfig(files) } : {};
}

/** The environment a child ferry process needs to connect the same way. */
export function temporalTlsEnv(files: TemporalTlsFiles | null | undefined): Record<string, string> {
  if (!files) return {};
  return {
    [TEMPORAL_TLS_ENV.ca]: files.ca,
    ...(files.cert ? { [TEMPORAL_TLS_ENV.cert]: files.cert } : {}),
    ...(files.key ? { [TEMPORAL_TLS_ENV.key]: files.key } : {}),
    ...(files.serverName ? { [TEMPORAL_TLS_ENV.serverName]: files.serverName } : {}),
  };
}
