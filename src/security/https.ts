/**
 * HTTPS for the controller's HTTP API: `ferry controller --listen HOST:PORT --tls-cert F
 * --tls-key F [--tls-client-ca F]` (or FERRY_API_TLS_CERT, FERRY_API_TLS_KEY,
 * FERRY_API_TLS_CLIENT_CA). TLS 1.2 at least. With a client CA, a client must also present a
 * certificate that CA signed (the cluster CA of `ferry cluster certs`, typically) — on top of
 * the bearer token, which every request still needs. A plain-HTTP request to the port gets no
 * answer: the TLS handshake fails and the connection is closed.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { UsageError } from '../common/errors';

export interface ApiTlsFiles {
  cert: string;
  key: string;
  /** When set, clients must present a certificate this CA signed. */
  clientCa?: string | null;
}

export const API_TLS_ENV = { cert: 'FERRY_API_TLS_CERT', key: 'FERRY_API_TLS_KEY', clientCa: 'FERRY_API_TLS_CLIENT_CA' } as const;

/** From flags, else the environment; null = plain HTTP. Cert and key go together. */
export function apiTlsFiles(env: NodeJS.ProcessEnv, flags: { cert?: string; key?: string; clientCa?: string } = {}): ApiTlsFiles | null {
  const pick = (k: keyof typeof API_TLS_ENV): string | null => {
    const v = flags[k] ?? env[API_TLS_ENV[k]];
    return v === undefined || v === '' ? null : v;
  };
  const cert = pick('cert');
  const key = pick('key');
  const clientCa = pick('clientCa');
  if (cert === null && key === null) {
    if (clientCa !== null) throw new UsageError('--tls-client-ca needs --tls-cert and --tls-key (the API serves HTTPS to check client certificates)');
    return null;
  }
  if (cert === null || key === null) throw new UsageError('--tls-cert and --tls-key go together (FERRY_API_TLS_CERT, FERRY_API_TLS_KEY)');
  return { cert, key, clientCa };
}

function read(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`API TLS: cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** An HTTP server, or an HTTPS one with these files (read now: a bad file fails at start). */
export function createApiListener(handler: http.RequestListener, tls: ApiTlsFiles | null | undefined): http.Server {
  if (!tls) return http.createServer(handler);
  const options: https.ServerOptions = {
    cert: read(tls.cert, 'certificate'),
    key: read(tls.key, 'private key'),
    minVersion: 'TLSv1.2',
    ...(tls.clientCa ? { ca: read(tls.clientCa, 'client CA certificate'), requestCert: true, rejectUnauthorized: true } : {}),
  };
  try {
    return https.createServer(options, handler) as unknown as http.Server;
  } catch (e) {
    throw new UsageError(`API TLS: ${tls.cert} and ${tls.key} are not a usable certificate and key: ${(e as Error).message}`);
  }
}
