/**
 * The cluster CA and its certificates, made with the `openssl` command (`ferry cluster certs`,
 * and `ferry cluster up` for its own directory):
 *
 *   ca.crt / ca.key              the cluster CA (the key never leaves this directory)
 *   frontend.crt / frontend.key  the Temporal frontend (names: localhost, 127.0.0.1, temporal,
 *                                temporal-frontend, and any --server-name); its system worker
 *                                presents it as its client certificate
 *   <name>.crt / <name>.key      one per client: CN = DNS subjectAltName = name, usable as a
 *                                client and as a server, so an agent's certificate (name = its
 *                                host id) serves both Temporal and channel-2 (--tls-cert)
 *
 * Keys are 0600, the directory 0700; certificates are 0644. Existing files are kept: running it
 * again adds the names that are missing. EC P-256 keys, SHA-256 signatures.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const DEFAULT_CERT_DAYS = 825;
export const DEFAULT_CLIENT_NAMES = ['controller', 'operator'] as const;
export const FRONTEND_NAMES = ['localhost', 'temporal', 'temporal-frontend'] as const;
/** The name clients check the frontend's certificate for when they reach it by IP (FERRY_TEMPORAL_TLS_SERVER_NAME). */
export const FRONTEND_SERVER_NAME = 'temporal-frontend';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export interface CertPair {
  crt: string;
  key: string;
}

export interface ClusterCerts {
  dir: string;
  ca: CertPair;
  frontend: CertPair;
  clients: Record<string, CertPair>;
  /** Files this call wrote (relative to dir). */
  created: string[];
}

export class CertError extends Error {
  override readonly name = 'CertError';
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new CertError('the openssl command is not installed (Debian: apt-get install openssl)');
    throw new CertError(`openssl ${args[0]} failed: ${err.stderr?.toString().trim().split('\n').slice(-3).join(' ') ?? err.message}`);
  }
}

/** Write a private key and a CSR, sign it with the CA; the key is 0600 from the start. */
function issue(dir: string, ca: CertPair, name: string, cn: string, san: string[], days: number): CertPair {
  const pair = { crt: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=${san.join(',')}\n`);
  fs.closeSync(fs.openSync(pair.key, 'w', 0o600));
  try {
    openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-keyout', pair.key, '-out', csr]);
    openssl(dir, ['x509', '-req', '-in', csr, '-CA', ca.crt, '-CAkey', ca.key, '-CAcreateserial', '-days', String(days), '-sha256', '-extfile', ext, '-out', pair.crt]);
  } finally {
    fs.rmSync(csr, { force: true });
    fs.rmSync(ext, { force: true });
  }
  fs.chmodSync(pair.key, 0o600);
  fs.chmodSync(pair.crt, 0o644);
  return pair;
}

const exists = (p: CertPair): boolean => fs.existsSync(p.crt) && fs.existsSync(p.key);

/**
 * Make what is missing in `dir`: the CA, the frontend's certificate, one certificate per
 * client name. `serverNames` are extra DNS names (or IPs) for the frontend.
 */
export function ensureClusterCerts(certDir: string, opts: { clients?: readonly string[]; serverNames?: readonly string[]; days?: number } = {}): ClusterCerts {
  // openssl runs in this directory: every path handed to it must be absolute.
  const dir = path.resolve(certDir);
  const days = opts.days ?? DEFAULT_CERT_DAYS;
  const clients = [...new Set(opts.clients ?? DEFAULT_CLIENT_NAMES)];
  for (const n of [...clients, ...(opts.serverNames ?? [])]) {
    if (!NAME_RE.test(n)) throw new CertError(`'${n}' is not a certificate name (letters, digits, '.', '_', '-')`);
  }
  for (const n of clients) if (n === 'ca' || n === 'frontend') throw new CertError(`'${n}' is a reserved certificate name`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const created: string[] = [];
  const ca = { crt: path.join(dir, 'ca.crt'), key: path.join(dir, 'ca.key') };
  if (!exists(ca)) {
    fs.closeSync(fs.openSync(ca.key, 'w', 0o600));
    openssl(dir, [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', String(days * 2), '-sha256',
      '-subj', '/CN=ferry cluster CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-keyout', ca.key, '-out', ca.crt,
    ]);
    fs.chmodSync(ca.key, 0o600);
    fs.chmodSync(ca.crt, 0o644);
    created.push('ca.crt', 'ca.key');
  }
  let frontend = { crt: path.join(dir, 'frontend.crt'), key: path.join(dir, 'frontend.key') };
  if (!exists(frontend)) {
    const names = [...FRONTEND_NAMES, ...(opts.serverNames ?? [])];
    const san = [...names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)), 'IP:127.0.0.1'];
    frontend = issue(dir, ca, 'frontend', 'temporal-frontend', [...new Set(san)], days);
    created.push('frontend.crt', 'frontend.key');
  }
  const out: Record<string, CertPair> = {};
  for (const n of clients) {
    const pair = { crt: path.join(dir, `${n}.crt`), key: path.join(dir, `${n}.key`) };
    if (exists(pair)) {
      out[n] = pair;
    } else {
      out[n] = issue(dir, ca, n, n, [`DNS:${n}`], days);
      created.push(`${n}.crt`, `${n}.key`);
    }
  }
  return { dir, ca, frontend, clients: out, created };
}
