/**
 * Throwaway channel-2 TLS material made with the `openssl` command, the way the README
 * tells operators to: a CA, and host certificates with CN = DNS subjectAltName = host id.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ChannelTlsFiles } from '../../src/dataplane/tls';

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA in `dir` named `name` (files <name>-ca.crt, <name>-ca.key). */
export function makeCa(dir: string, name: string): { crt: string; key: string } {
  const crt = path.join(dir, `${name}-ca.crt`);
  const key = path.join(dir, `${name}-ca.key`);
  openssl(dir, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', `/CN=ferry ${name} CA`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout', key, '-out', crt,
  ]);
  return { crt, key };
}

/** A certificate for `hostId` signed by `ca`; `name` tells files apart (two CAs, one host). */
export function makeHostCert(dir: string, ca: { crt: string; key: string }, hostId: string, name = hostId): ChannelTlsFiles {
  const base = path.join(dir, name);
  fs.writeFileSync(`${base}.ext`, `subjectAltName=DNS:${hostId}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${hostId}`, '-keyout', `${base}.key`, '-out', `${base}.csr`]);
  openssl(dir, ['x509', '-req', '-in', `${base}.csr`, '-CA', ca.crt, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-extfile', `${base}.ext`, '-out', `${base}.crt`]);
  return { ca: ca.crt, cert: `${base}.crt`, key: `${base}.key` };
}

/** The agent flags for these files. */
export function tlsArgs(files: ChannelTlsFiles): string[] {
  return ['--tls-ca', files.ca, '--tls-cert', files.cert, '--tls-key', files.key];
}
