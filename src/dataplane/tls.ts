/**
 * Optional mutual TLS on channel-2, with a cluster CA. Every agent holds the CA certificate
 * and its own certificate and key; the certificate names the agent's host id (subject CN
 * or a DNS subjectAltName). The target's listener (PageChannelServer.listen's `tls`)
 * accepts only clients whose certificate the CA signed; the source (PageChannel.connect's
 * `createConnection`) accepts only a server whose certificate the CA signed AND names the
 * target host id it meant to reach. Data addresses are often IPs, so the host id, never
 * the address, is what is checked. TLS 1.3 only.
 *
 * TLS sits under the per-migration HMAC handshake, which is unchanged: TLS says "a host of
 * this cluster, the one expected", the handshake says "the peer of this migration".
 *
 * A TLS 1.3 client learns that the server refused its certificate only after its own side
 * of the handshake is done (Node's server verifies, then closes without an alert). The
 * client therefore resolves once the server has shown it accepted the connection: its
 * session tickets, which a Node server sends right after verifying the client (and never
 * when it refused it). A close before that is reported as the refusal it is.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { ChannelClosedError, type ChannelError } from './frame';

export interface ChannelTlsFiles {
  /** The cluster CA certificate (PEM): peers must present a certificate it signed. */
  ca: string;
  /** This host's certificate (PEM), naming its host id in CN or a DNS subjectAltName. */
  cert: string;
  /** This host's private key (PEM). */
  key: string;
}

/** Loaded and checked TLS material of one agent. */
export interface ChannelTls {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  files: ChannelTlsFiles;
  /** The names of this host's certificate: subject CN and DNS subjectAltNames. */
  names: string[];
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** Verification codes meaning "not signed by a CA this end trusts". */
const UNKNOWN_AUTHORITY = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);
const CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;
const KEY_RE = /-----BEGIN ((RSA|EC|ENCRYPTED) )?PRIVATE KEY-----[\s\S]+?-----END ((RSA|EC|ENCRYPTED) )?PRIVATE KEY-----/;

/** A TLS file that is missing, unreadable, not PEM, or does not fit the others. */
export class TlsConfigError extends Error {
  override name = 'TlsConfigError';
}

/** Read the three PEM files; every error names the file it is about. */
export function loadChannelTls(files: ChannelTlsFiles): ChannelTls {
  const ca = readPem(files.ca, 'CA certificate', CERT_RE);
  const cert = readPem(files.cert, 'certificate', CERT_RE);
  const key = readPem(files.key, 'private key', KEY_RE);
  let caCert: X509Certificate;
  let x509: X509Certificate;
  try {
    caCert = new X509Certificate(ca);
  } catch (err) {
    throw new TlsConfigError(`channel-2 TLS: CA certificate file '${files.ca}' is not a valid certificate: ${messageOf(err)}`);
  }
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new TlsConfigError(`channel-2 TLS: certificate file '${files.cert}' is not a valid certificate: ${messageOf(err)}`);
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new TlsConfigError(`channel-2 TLS: private key file '${files.key}' is not a usable private key (encrypted keys are not supported): ${messageOf(err)}`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new TlsConfigError(`channel-2 TLS: private key file '${files.key}' does not belong to the certificate in '${files.cert}'`);
  }
  if (!caCert.ca) throw new TlsConfigError(`channel-2 TLS: CA certificate file '${files.ca}' holds a certificate that is not a CA (${oneLine(caCert.subject)})`);
  const names = certificateNames(x509);
  if (names.length === 0) throw new TlsConfigError(`channel-2 TLS: certificate file '${files.cert}' names no host (no subject CN, no DNS subjectAltName)`);
  return { ca, cert, key, files, names };
}

/** Options for PageChannelServer.listen({ tls }): clients must present a certificate the CA signed. */
export function tlsServerOptions(t: ChannelTls): tls.TlsOptions {
  return { ca: t.ca, cert: t.cert, key: t.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' };
}

/** Throws unless the host's certificate names `hostId` (peers check exactly that). */
export function checkOwnIdentity(t: ChannelTls, hostId: string): void {
  if (!t.names.includes(hostId)) {
    throw new TlsConfigError(
      `channel-2 TLS: certificate file '${t.files.cert}' names ${t.names.join(', ')}, not this host's id ${hostId}; other agents would refuse it (CN or DNS subjectAltName must be the host id)`,
    );
  }
}

/**
 * A `createConnection` for PageChannel.connect: mutual TLS to the agent of host
 * `peerHostId`. Resolves once the server has accepted this host's certificate. Failures
 * are ChannelClosedErrors ('TIMEOUT' or 'CLOSED') that name the peer and say TLS.
 */
export function tlsCreateConnection(t: ChannelTls, peerHostId: string, opts: { timeoutMs?: number } = {}): (address: { host: string; port: number }) => Promise<net.Socket> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  return (address) =>
    new Promise<net.Socket>((resolve, reject) => {
      const where = `channel-2 TLS to ${address.host}:${address.port} (${peerHostId})`;
      let settled = false;
      let secured = false;
      const socket = tls.connect({
        host: address.host,
        port: address.port,
        ca: t.ca,
        cert: t.cert,
        key: t.key,
        minVersion: 'TLSv1.3',
        rejectUnauthorized: true,
        checkServerIdentity: (_host, cert) => {
          const names = peerCertificateNames(cert);
          if (names.includes(peerHostId)) return undefined;
          return Object.assign(new Error(`the server's certificate is for ${names.join(', ') || 'no host'}, not ${peerHostId}`), { code: 'ERR_FERRY_PEER_IDENTITY' });
        },
      });
      const fail = (err: ChannelError): void => {
        if (settled) return;
        settled = true;
        cleanup();
        socket.destroy();
        reject(err);
      };
      const accepted = (): void => {
        if (settled) return;
        settled = true;
        cleanup();
        // Until the channel attaches its own listeners, an error must not be uncaught; the
        // socket is destroyed by it, and that is seen below.
        socket.on('error', () => undefined);
        // 'session' is emitted from inside OpenSSL's ticket callback: a write made there (the
        // channel's HELLO, right after this resolves) would sit unsent. Resolve outside it.
        setImmediate(() => (socket.destroyed ? reject(new ChannelClosedError('CLOSED', `${where} failed: the connection closed right after the TLS handshake`)) : resolve(socket)));
      };
      const onError = (err: Error): void => fail(new ChannelClosedError('CLOSED', `${where} failed: ${tlsReason(err, secured)}`, { cause: err }));
      const onEnd = (): void =>
        fail(
          new ChannelClosedError(
            'CLOSED',
            secured
              ? `${where} failed: the target closed the connection right after the TLS handshake: it refused this host's certificate (not signed by the CA it trusts, expired, or missing)`
              : `${where} failed: the connection closed before the TLS handshake completed (does the target's channel-2 speak TLS?)`,
          ),
        );
      const onSecure = (): void => {
        secured = true;
      };
      const timer = setTimeout(
        () => fail(new ChannelClosedError('TIMEOUT', `${where} timed out after ${timeoutMs} ms ${secured ? 'waiting for the target to accept this host\'s certificate' : 'before the TLS handshake completed'}`)),
        timeoutMs,
      );
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.off('end', onEnd);
        socket.off('close', onEnd);
        socket.off('secureConnect', onSecure);
        socket.off('session', accepted);
      };
      socket.on('error', onError);
      socket.on('end', onEnd);
      socket.on('close', onEnd);
      socket.on('secureConnect', onSecure);
      // TLS 1.3: the server sends its session tickets once it has verified this client.
      socket.on('session', accepted);
    });
}

/** Subject CN(s) and DNS subjectAltNames of a peer certificate (as tls gives it). */
export function peerCertificateNames(cert: tls.PeerCertificate): string[] {
  const names: string[] = [];
  const cn = (cert.subject as Record<string, string | string[] | undefined> | undefined)?.CN;
  if (typeof cn === 'string') names.push(cn);
  else if (Array.isArray(cn)) names.push(...cn);
  names.push(...dnsAltNames(cert.subjectaltname));
  return [...new Set(names)];
}

function certificateNames(x509: X509Certificate): string[] {
  const names: string[] = [];
  for (const line of x509.subject.split('\n')) if (line.startsWith('CN=')) names.push(line.slice(3));
  names.push(...dnsAltNames(x509.subjectAltName));
  return [...new Set(names)];
}

function dnsAltNames(san: string | undefined): string[] {
  if (!san) return [];
  const out: string[] = [];
  for (const part of san.split(/,\s*/)) {
    if (!part.startsWith('DNS:')) continue;
    let v = part.slice(4);
    // Node quotes names with unusual characters as JSON strings.
    if (v.startsWith('"')) {
      try {
        v = JSON.parse(v) as string;
      } catch {
        continue;
      }
    }
    out.push(v);
  }
  return out;
}

/** A human reason for a TLS error of a connection attempt. */
export function tlsReason(err: Error, afterHandshake = false): string {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && UNKNOWN_AUTHORITY.has(code)) return `certificate signed by unknown authority (${code})`;
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return 'certificate has expired';
    case 'CERT_NOT_YET_VALID':
      return 'certificate is not yet valid';
    case 'ERR_FERRY_PEER_IDENTITY':
      return `identity check failed: ${err.message}`;
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
      return `the target does not speak TLS on channel-2 (${opensslReason(err.message) ?? String(code)})`;
    case 'ECONNRESET':
      return afterHandshake ? 'connection reset after the TLS handshake' : 'the connection closed before the TLS handshake completed (does the target\'s channel-2 speak TLS?)';
    default:
      return err.message;
  }
}

/** Why a client's TLS handshake failed, as the server sees it (tlsClientError). */
export function tlsClientFailure(err: Error, socket: tls.TLSSocket): string {
  const authz = socket.authorizationError as unknown;
  const code = typeof authz === 'string' ? authz : authz instanceof Error ? ((authz as { code?: string }).code ?? authz.message) : undefined;
  if (code && UNKNOWN_AUTHORITY.has(code)) return `client certificate signed by unknown authority (${code})`;
  if (code === 'UNABLE_TO_GET_PEER_CERT' || code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'the client sent no certificate';
  if (code) return `client certificate refused (${code})`;
  const e = err as { code?: unknown };
  if (e.code === 'ERR_SSL_WRONG_VERSION_NUMBER' || e.code === 'ERR_SSL_HTTP_REQUEST' || e.code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') return 'the client does not speak TLS (a plain channel-2 client?)';
  if (e.code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'the client sent no certificate';
  return err.message;
}

function readPem(file: string, what: string, re: RegExp): Buffer {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : messageOf(err);
    throw new TlsConfigError(`channel-2 TLS: cannot read ${what} file '${file}': ${why}`);
  }
  if (!re.test(data.toString('latin1'))) throw new TlsConfigError(`channel-2 TLS: ${what} file '${file}' is not PEM (no ${what === 'private key' ? 'PRIVATE KEY' : 'CERTIFICATE'} block)`);
  return data;
}

/** "…:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:…" → "wrong version number". */
function opensslReason(message: string): string | undefined {
  return /:SSL routines:[^:]*:([^:]+)/.exec(message)?.[1];
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function oneLine(s: string): string {
  return s.split('\n').join(', ');
}

/** The subject CN of a host's own certificate (the first, if it has several), or null. */
export function commonNameOf(t: ChannelTls): string | null {
  for (const line of new X509Certificate(t.cert).subject.split('\n')) if (line.startsWith('CN=')) return line.slice(3);
  return null;
}

/**
 * Throws unless the host's own certificate was issued and signed by the CA it trusts. QEMU
 * checks this when it loads its credentials (Node does not), so an agent that drives QEMU
 * says so at start, not at its first migration.
 */
export function checkSignedByCa(t: ChannelTls): void {
  const cert = new X509Certificate(t.cert);
  const ca = new X509Certificate(t.ca);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    throw new TlsConfigError(
      `migration TLS: certificate file '${t.files.cert}' (${cert.subject.replace(/\n/g, ', ')}) is not signed by the CA in '${t.files.ca}' (${ca.subject.replace(/\n/g, ', ')}); QEMU refuses such credentials`,
    );
  }
}
