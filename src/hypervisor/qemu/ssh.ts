/**
 * Agentless hosts: the SSH transport an agent uses to drive a remote host's QEMU. One SSH
 * connection per host (ssh2's Client); QMP's unix socket on that host is reached with
 * OpenSSH's streamlocal forwarding (direct-streamlocal@openssh.com), commands run with exec.
 *
 * Host keys are checked against an OpenSSH known_hosts file, never accepted blindly: an
 * unknown host, a changed key and a revoked key all refuse the connection, with the host,
 * the port, the key type and the SHA256 fingerprint presented in the error (trust on first
 * use is the operator's decision, made out of band, not ours). known_hosts support:
 *
 *   - `pattern[,pattern…] keytype base64 [comment]`, one entry per line; blank lines and
 *     `#` comments are skipped, as are malformed lines (like OpenSSH does);
 *   - `[host]:port` for a port other than 22 (a plain `host` pattern means port 22);
 *   - hashed hosts `|1|base64(salt)|base64(HMAC-SHA1(salt, "host" or "[host]:port"))`
 *     (ssh-keygen -H, HashKnownHosts yes);
 *   - `*` and `?` wildcards and `!` negation in patterns, matched case-insensitively against
 *     the host name as given in SshTarget (no reverse lookups, no CheckHostIP);
 *   - `@revoked`: that key is refused for the hosts it names (`@revoked * …` for all);
 *   - `@cert-authority` lines are ignored: host certificates are not supported, so a host
 *     known only through a CA is unknown here.
 *
 * The host-key algorithms offered are ordered with the key types known_hosts holds for
 * the host first (as OpenSSH does), so a host with several keys presents the one we know.
 *
 * The private key is read from SshTarget.privateKeyPath and handed to ssh2; neither it nor
 * anything derived from it is logged or put in an error (only its path is).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import ssh2, { type Client as Ssh2Client, type ClientChannel, type ConnectConfig, type ServerHostKeyAlgorithm } from 'ssh2';

const { Client, utils } = ssh2;

export interface SshTarget {
  host: string;
  /** Default 22. */
  port?: number;
  username: string;
  /** An unencrypted private key (OpenSSH or PEM format); passphrases are not supported. */
  privateKeyPath: string;
  /** The OpenSSH known_hosts file the host's key must be in. A missing file is empty. */
  knownHostsPath: string;
  /** Connect + handshake + authentication deadline. Default 20 s. */
  readyTimeoutMs?: number;
}

export interface ExecOptions {
  /** Written to the command's stdin, then EOF. Without it, stdin is closed at once. */
  stdin?: string | Buffer;
  /**
   * Reject after this long, sending the command a KILL signal request and closing its
   * channel. OpenSSH honours signal requests only for non-root logins (a root session
   * runs in sshd's monitor, without post-auth privilege separation, and sshd logs
   * "session signalling requires privilege separation"): as root the command keeps
   * running on the host until it ends by itself.
   */
  timeoutMs?: number;
}

export interface ExecResult {
  /** The exit status; 128 + the signal number when killed by a signal (like a shell). */
  code: number;
  stdout: string;
  stderr: string;
  /** The signal that killed the command (e.g. 'SIGKILL'), if any. */
  signal?: string;
}

export type SshErrorCode =
  | 'HOST_KEY_UNKNOWN'
  | 'HOST_KEY_MISMATCH'
  | 'HOST_KEY_REVOKED'
  | 'AUTH_FAILED'
  | 'PRIVATE_KEY'
  | 'KNOWN_HOSTS'
  | 'TIMEOUT'
  | 'CONNECT'
  | 'CHANNEL'
  | 'EXEC_TIMEOUT'
  | 'CLOSED';

/** Every error of this module. `code` is stable; `message` is for humans (no secrets). */
export class SshError extends Error {
  override name = 'SshError';
  constructor(
    readonly code: SshErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

// ---------------------------------------------------------------------------------------
// known_hosts (pure)

export type KnownHostMarker = 'revoked' | 'cert-authority';

export type KnownHostNames =
  | { kind: 'patterns'; patterns: string[] }
  | { kind: 'hashed'; salt: Buffer; hash: Buffer };

export interface KnownHostEntry {
  /** 1-based line number in the file. */
  line: number;
  marker: KnownHostMarker | null;
  hosts: KnownHostNames;
  keyType: string;
  /** The public key blob (SSH wire format, the base64 field decoded). */
  key: Buffer;
  comment: string;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

function decodeBase64(s: string): Buffer | null {
  if (!BASE64.test(s) || s.length % 4 !== 0) return null;
  return Buffer.from(s, 'base64');
}

/** The key type string at the start of an SSH public key blob, or null if malformed. */
export function sshKeyType(blob: Buffer): string | null {
  if (blob.length < 4) return null;
  const n = blob.readUInt32BE(0);
  if (n === 0 || n > 64 || 4 + n > blob.length) return null;
  return blob.toString('latin1', 4, 4 + n);
}

/** OpenSSH's fingerprint of a public key blob: `SHA256:` + unpadded base64 of its SHA-256. */
export function fingerprintSha256(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The name known_hosts records for a host: `host` on port 22, else `[host]:port`. */
export function knownHostName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/** A known_hosts line for this host and key, optionally hashed like `ssh-keygen -H`. */
export function formatKnownHostsLine(host: string, port: number, keyBlob: Buffer, opts: { salt?: Buffer } = {}): string {
  const type = sshKeyType(keyBlob);
  if (!type) throw new Error('formatKnownHostsLine: not an SSH public key blob');
  const name = knownHostName(host, port);
  const hosts = opts.salt
    ? `|1|${opts.salt.toString('base64')}|${createHmac('sha1', opts.salt).update(name).digest('base64')}`
    : name;
  return `${hosts} ${type} ${keyBlob.toString('base64')}`;
}

/** Parse an OpenSSH known_hosts file. Malformed lines are skipped. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const trimmed = lines[i]!.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const fields = trimmed.split(/[ \t]+/);
    let marker: KnownHostMarker | null = null;
    if (fields[0]!.startsWith('@')) {
      const m = fields.shift()!;
      if (m === '@revoked') marker = 'revoked';
      else if (m === '@cert-authority') marker = 'cert-authority';
      else continue;
    }
    if (fields.length < 3) continue;
    const [hostField, keyType, keyB64] = fields as [string, string, string];
    const key = decodeBase64(keyB64);
    if (!key || sshKeyType(key) !== keyType) continue;
    let hosts: KnownHostNames;
    if (hostField.startsWith('|')) {
      const parts = hostField.split('|');
      if (parts.length !== 4 || parts[1] !== '1') continue;
      const salt = decodeBase64(parts[2]!);
      const hash = decodeBase64(parts[3]!);
      if (!salt || !hash || hash.length !== 20) continue;
      hosts = { kind: 'hashed', salt, hash };
    } else {
      const patterns = hostField.split(',').filter((p) => p !== '' && p !== '!');
      if (patterns.length === 0) continue;
      hosts = { kind: 'patterns', patterns };
    }
    entries.push({ line: i + 1, marker, hosts, keyType, key, comment: fields.slice(3).join(' ') });
  }
  return entries;
}

function globToRegExp(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

function patternMatches(name: string, pattern: string): boolean {
  const p = pattern.toLowerCase();
  return /[*?]/.test(p) ? globToRegExp(p).test(name) : p === name;
}

/** Whether an entry names this host (`name` as built by knownHostName). */
function namesHost(hosts: KnownHostNames, name: string): boolean {
  if (hosts.kind === 'hashed') {
    const mac = createHmac('sha1', hosts.salt).update(name).digest();
    return mac.length === hosts.hash.length && timingSafeEqual(mac, hosts.hash);
  }
  let positive = false;
  for (const p of hosts.patterns) {
    if (p.startsWith('!')) {
      if (patternMatches(name, p.slice(1))) return false;
    } else if (patternMatches(name, p)) {
      positive = true;
    }
  }
  return positive;
}

export interface HostKeyCheck {
  result: 'match' | 'mismatch' | 'unknown';
  /** Why: the key is known, revoked, differs from the recorded one of its type, or the host/type is not recorded. */
  reason: 'known' | 'revoked' | 'changed' | 'unknown-host' | 'unknown-key-type';
  /** The deciding line of the file (the matching, revoking or conflicting entry). */
  line?: number;
  /** Key types recorded for this host (not revoked, not CA lines). */
  knownKeyTypes: string[];
}

/** hostKeyMatches with the reason and the deciding line, for error messages. */
export function checkHostKey(entries: KnownHostEntry[], host: string, port: number, keyType: string, keyBlob: Buffer): HostKeyCheck {
  const name = knownHostName(host, port);
  const forHost = entries.filter((e) => e.marker !== 'cert-authority' && namesHost(e.hosts, name));
  const knownKeyTypes = [...new Set(forHost.filter((e) => e.marker === null).map((e) => e.keyType))];
  const revoked = forHost.find((e) => e.marker === 'revoked' && e.key.equals(keyBlob));
  if (revoked) return { result: 'mismatch', reason: 'revoked', line: revoked.line, knownKeyTypes };
  const sameType = forHost.filter((e) => e.marker === null && e.keyType === keyType);
  const match = sameType.find((e) => e.key.equals(keyBlob));
  if (match) return { result: 'match', reason: 'known', line: match.line, knownKeyTypes };
  if (sameType.length > 0) return { result: 'mismatch', reason: 'changed', line: sameType[0]!.line, knownKeyTypes };
  return { result: 'unknown', reason: knownKeyTypes.length > 0 ? 'unknown-key-type' : 'unknown-host', knownKeyTypes };
}

/**
 * Is this key (type + blob) the one known_hosts records for host:port? 'mismatch' covers
 * a different key of the same type and a revoked key; 'unknown' means no entry of this
 * type names the host. Only 'match' may be accepted.
 */
export function hostKeyMatches(
  entries: KnownHostEntry[],
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
): 'match' | 'mismatch' | 'unknown' {
  return checkHostKey(entries, host, port, keyType, keyBlob).result;
}

// ---------------------------------------------------------------------------------------
// Connections

const DEFAULT_READY_TIMEOUT_MS = 20_000;
const KEEPALIVE_INTERVAL_MS = 15_000;
const KEEPALIVE_COUNT_MAX = 3;
const CLOSE_GRACE_MS = 2_000;

/** ssh2's host-key algorithms that present a key of each known_hosts key type. */
const HOST_KEY_ALGORITHMS: Record<string, ServerHostKeyAlgorithm[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

function refusal(target: SshTarget, port: number, where: string, keyBlob: Buffer, check: HostKeyCheck, fileMissing: boolean): SshError {
  const type = sshKeyType(keyBlob) ?? 'unknown-type';
  const presented = `${type} key ${fingerprintSha256(keyBlob)}`;
  const file = `known-hosts file ${target.knownHostsPath}`;
  const hostPort = `host ${target.host} port ${port}`;
  const head = `ssh ${where}: host key verification failed, connection refused:`;
  switch (check.reason) {
    case 'revoked':
      return new SshError('HOST_KEY_REVOKED', `${head} ${hostPort} presented the ${presented}, which is marked @revoked in the ${file} (line ${check.line})`);
    case 'changed':
      return new SshError(
        'HOST_KEY_MISMATCH',
        `${head} ${hostPort} presented the ${presented}, which differs from the ${type} key recorded in the ${file} (line ${check.line}): ` +
          'someone may be intercepting the connection, or the host was reinstalled (check out of band, then fix the file)',
      );
    case 'unknown-key-type':
      return new SshError(
        'HOST_KEY_UNKNOWN',
        `${head} ${hostPort} presented the ${presented}, but the ${file} records only ${check.knownKeyTypes.join(', ')} key(s) for it`,
      );
    default:
      return new SshError(
        'HOST_KEY_UNKNOWN',
        `${head} ${hostPort} is not in the ${file}${fileMissing ? ' (the file does not exist)' : ''}; it presented the ${presented}: ` +
          'verify that fingerprint out of band, then add the host key to the file',
      );
  }
}

async function readOptional(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/**
 * Send a signal request on a session channel. ssh2's Channel.signal() silently sends
 * nothing once our side of the channel is ended (it checks `writable`), and exec ends
 * stdin at once; so send it through ssh2 1.x's protocol object while the channel is
 * 'open' or 'eof' (our EOF sent, not closed).
 */
function sendSignal(stream: ClientChannel, name: string): void {
  const ch = stream as unknown as {
    _client?: { _protocol?: { signal?: (id: number, signal: string) => void } };
    outgoing?: { id?: number; state?: string };
  };
  const proto = ch._client?._protocol;
  try {
    const state = ch.outgoing?.state;
    if (typeof proto?.signal === 'function' && (state === 'open' || state === 'eof') && typeof ch.outgoing?.id === 'number') {
      proto.signal(ch.outgoing.id, name);
    } else {
      stream.signal(name);
    }
  } catch {
    // the channel is already closing
  }
}

function errnoOf(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}

/** One SSH connection to a host. Each exec and each openUnixSocket is a channel of it. */
export class SshHost {
  private closedFlag = false;
  private lastError: Error | null = null;

  private constructor(
    private readonly client: Ssh2Client,
    /** `user@host:port`, for messages. */
    readonly where: string,
  ) {
    // After 'ready', errors (keepalive timeout, link cut) end the connection; the open
    // channels see 'close'. Keep the error for the messages of later calls.
    client.on('error', (err: Error) => {
      this.lastError = err;
    });
    client.on('close', () => {
      this.closedFlag = true;
    });
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  static async connect(target: SshTarget): Promise<SshHost> {
    const port = target.port ?? 22;
    const where = `${target.username}@${target.host}:${port}`;

    let privateKey: Buffer;
    try {
      privateKey = await fs.readFile(target.privateKeyPath);
    } catch (e) {
      throw new SshError('PRIVATE_KEY', `ssh ${where}: cannot read the private key ${target.privateKeyPath}: ${errnoOf(e)}`);
    }
    const parsed = utils.parseKey(privateKey);
    if (parsed instanceof Error) {
      throw new SshError('PRIVATE_KEY', `ssh ${where}: cannot use the private key ${target.privateKeyPath}: ${parsed.message}`);
    }

    let knownHostsText: string | null;
    try {
      knownHostsText = await readOptional(target.knownHostsPath);
    } catch (e) {
      throw new SshError('KNOWN_HOSTS', `ssh ${where}: cannot read the known-hosts file ${target.knownHostsPath}: ${errnoOf(e)}`);
    }
    const entries = parseKnownHosts(knownHostsText ?? '');

    // Prefer the host-key algorithms of the key types we know for this host.
    const known = checkHostKey(entries, target.host, port, '', Buffer.alloc(0)).knownKeyTypes;
    const preferred = known.flatMap((t) => HOST_KEY_ALGORITHMS[t] ?? []);

    let refused: SshError | null = null;
    const hostVerifier = (key: Buffer): boolean => {
      const type = sshKeyType(key) ?? '';
      const check = checkHostKey(entries, target.host, port, type, key);
      if (check.result === 'match') return true;
      refused = refusal(target, port, where, key, check, knownHostsText === null);
      return false;
    };

    const readyTimeoutMs = target.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    const config: ConnectConfig = {
      host: target.host,
      port,
      username: target.username,
      privateKey,
      hostVerifier,
      readyTimeout: readyTimeoutMs,
      keepaliveInterval: KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      // Only the key given: no agent, no password, no keyboard-interactive.
      authHandler: ['publickey'],
      ...(preferred.length > 0 ? { algorithms: { serverHostKey: { remove: preferred, prepend: preferred, append: [] } } } : {}),
    };

    const client = new Client();
    return new Promise<SshHost>((resolve, reject) => {
      let settled = false;
      const fail = (err: SshError) => {
        if (settled) return;
        settled = true;
        client.off('ready', onReady);
        client.end();
        reject(err);
      };
      const onReady = () => {
        if (settled) return;
        settled = true;
        client.off('error', onError);
        client.off('close', onClose);
        resolve(new SshHost(client, where));
      };
      const onError = (err: Error & { level?: string }) => {
        if (refused) return fail(refused);
        switch (err.level) {
          case 'client-authentication':
            return fail(new SshError('AUTH_FAILED', `ssh ${where}: authentication failed (publickey) with the key ${target.privateKeyPath}`, { cause: err }));
          case 'client-timeout':
            return fail(new SshError('TIMEOUT', `ssh ${where}: no SSH session within ${readyTimeoutMs} ms (${err.message})`, { cause: err }));
          case 'client-socket':
            return fail(new SshError('CONNECT', `ssh ${where}: cannot connect: ${errnoOf(err)}`, { cause: err }));
          default:
            return fail(new SshError('CONNECT', `ssh ${where}: ${err.message}`, { cause: err }));
        }
      };
      const onClose = () => {
        fail(refused ?? new SshError('CONNECT', `ssh ${where}: the connection closed during the SSH handshake`));
      };
      // onError stays registered after a failure: late errors of the dying connection.
      client.once('ready', onReady);
      client.on('error', onError);
      client.on('close', onClose);
      try {
        client.connect(config);
      } catch (e) {
        fail(new SshError('CONNECT', `ssh ${where}: ${e instanceof Error ? e.message : String(e)}`, { cause: e }));
      }
    });
  }

  private notConnected(what: string): SshError {
    const why = this.lastError ? `: ${this.lastError.message}` : '';
    return new SshError('CLOSED', `ssh ${this.where}: ${what}: the connection is closed${why}`);
  }

  /**
   * A stream to a unix socket on the remote host (OpenSSH streamlocal forwarding). This is
   * how QMP is reached. sshd must allow it with AllowStreamLocalForwarding (default yes)
   * AND AllowTcpForwarding local or yes (default yes): OpenSSH also gates unix-socket
   * forwarding on AllowTcpForwarding; with `no` the open fails ("open failed", sshd logs
   * "Received request to connect to path …, but the request was denied").
   */
  openUnixSocket(remotePath: string): Promise<Duplex> {
    if (this.closedFlag) return Promise.reject(this.notConnected(`open unix socket ${remotePath}`));
    return new Promise<Duplex>((resolve, reject) => {
      try {
        this.client.openssh_forwardOutStreamLocal(remotePath, (err: Error | undefined, stream: ClientChannel) => {
          if (err) reject(new SshError('CHANNEL', `ssh ${this.where}: cannot open the unix socket ${remotePath} on the remote host: ${err.message}`, { cause: err }));
          else resolve(stream);
        });
      } catch (e) {
        reject(this.notConnected(`open unix socket ${remotePath}`));
      }
    });
  }

  /** Run a command (no pty) and collect its output. A non-zero exit is a result, not an error. */
  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.closedFlag) return Promise.reject(this.notConnected(`exec ${JSON.stringify(command)}`));
    return new Promise<ExecResult>((resolve, reject) => {
      const start = (err: Error | undefined, stream: ClientChannel) => {
        if (err) return reject(new SshError('CHANNEL', `ssh ${this.where}: exec ${JSON.stringify(command)}: ${err.message}`, { cause: err }));
        const out: Buffer[] = [];
        const errOut: Buffer[] = [];
        let code: number | null = null;
        let signal: string | undefined;
        let done = false;
        const timer =
          opts.timeoutMs === undefined
            ? undefined
            : setTimeout(() => {
                // sshd keeps the channel until the command exits: do not wait for 'close'.
                done = true;
                sendSignal(stream, 'KILL');
                stream.close();
                reject(new SshError('EXEC_TIMEOUT', `ssh ${this.where}: exec ${JSON.stringify(command)}: no exit within ${opts.timeoutMs} ms (sent KILL)`));
              }, opts.timeoutMs);
        stream.on('data', (d: Buffer) => out.push(d));
        stream.stderr.on('data', (d: Buffer) => errOut.push(d));
        stream.on('exit', (c: number | null, sig?: string) => {
          if (typeof c === 'number') code = c;
          else if (sig) {
            signal = sig;
            code = 128 + (os.constants.signals[sig as keyof typeof os.constants.signals] ?? 127);
          }
        });
        stream.on('close', () => {
          clearTimeout(timer);
          const stdout = Buffer.concat(out).toString('utf8');
          const stderr = Buffer.concat(errOut).toString('utf8');
          if (done) return;
          done = true;
          if (code === null) {
            reject(this.closedFlag ? this.notConnected(`exec ${JSON.stringify(command)}`) : new SshError('CHANNEL', `ssh ${this.where}: exec ${JSON.stringify(command)}: the channel closed without an exit status`));
          } else {
            resolve({ code, stdout, stderr, ...(signal ? { signal } : {}) });
          }
        });
        stream.end(opts.stdin);
      };
      try {
        this.client.exec(command, start);
      } catch {
        reject(this.notConnected(`exec ${JSON.stringify(command)}`));
      }
    });
  }

  /** End the connection (and every channel of it). Idempotent. */
  async close(): Promise<void> {
    if (this.closedFlag) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.client.destroy();
        resolve();
      }, CLOSE_GRACE_MS);
      this.client.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.client.end();
    });
    this.closedFlag = true;
  }
}
