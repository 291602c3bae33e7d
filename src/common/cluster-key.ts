/**
 * The cluster key: 32 bytes shared by the controller and every agent of one cluster, used to
 * encrypt what must not be readable by whoever can read Temporal's history or the shared
 * storage (AES-256-GCM everywhere it is used).
 *
 * Sources, first match wins:
 *   FERRY_CLUSTER_KEY_FILE  a file holding the key (hex, base64, or the 32 raw bytes); it must
 *                           not be readable by group or others (chmod 600), or loading fails
 *   FERRY_CLUSTER_KEY       the key itself, hex (64 digits) or base64
 * and for rotation, a key still accepted for decryption (never used to encrypt):
 *   FERRY_CLUSTER_KEY_PREVIOUS_FILE / FERRY_CLUSTER_KEY_PREVIOUS
 *
 * A key is named by its id, the first 8 hex digits of sha256(key): the id travels with every
 * ciphertext so that a reader picks the right key after a rotation, and it tells nothing about
 * the key itself.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { UsageError } from './errors';

export const CLUSTER_KEY_BYTES = 32;

export interface ClusterKey {
  /** First 8 hex digits of sha256(key). */
  readonly id: string;
  readonly key: Buffer;
}

export interface ClusterKeys {
  /** The key new ciphertexts are made with. */
  readonly current: ClusterKey;
  /** The key before the last rotation, accepted for decryption only; null when none is configured. */
  readonly previous: ClusterKey | null;
  /** The key with this id among current and previous, or null. */
  byId(id: string): ClusterKey | null;
}

export function clusterKeyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}

export function makeClusterKey(key: Buffer): ClusterKey {
  if (key.length !== CLUSTER_KEY_BYTES) {
    throw new UsageError(`a cluster key is ${CLUSTER_KEY_BYTES} bytes, not ${key.length}`);
  }
  return { id: clusterKeyId(key), key: Buffer.from(key) };
}

export function makeClusterKeys(current: ClusterKey, previous: ClusterKey | null = null): ClusterKeys {
  const prev = previous && previous.id !== current.id ? previous : null;
  return {
    current,
    previous: prev,
    byId: (id) => (id === current.id ? current : prev && id === prev.id ? prev : null),
  };
}

/** A key written as 64 hex digits or as base64 (standard or URL-safe, padding optional). */
export function parseClusterKey(text: string, source: string): Buffer {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) {
    const key = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (key.length === CLUSTER_KEY_BYTES) return key;
  }
  throw new UsageError(
    `${source}: not a ${CLUSTER_KEY_BYTES}-byte key (expected 64 hex digits or base64; make one with \`openssl rand -hex 32\`)`,
  );
}

/** Reads a key file, refusing one that group or others can read. */
export function readClusterKeyFile(file: string, source: string): Buffer {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new UsageError(`${source}: cannot read key file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  if (!st.isFile()) throw new UsageError(`${source}: ${file} is not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new UsageError(
      `${source}: key file ${file} is readable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(3, '0')}); run \`chmod 600 ${file}\``,
    );
  }
  const raw = fs.readFileSync(file);
  const text = raw.toString('latin1');
  if (raw.length === CLUSTER_KEY_BYTES && !/^[\x20-\x7e]*$/.test(text)) return raw;
  return parseClusterKey(raw.toString('utf8'), `${source} (${file})`);
}

function loadOne(env: NodeJS.ProcessEnv, name: string): ClusterKey | null {
  const file = env[`${name}_FILE`];
  if (file !== undefined && file !== '') return makeClusterKey(readClusterKeyFile(file, `${name}_FILE`));
  const text = env[name];
  if (text !== undefined && text !== '') return makeClusterKey(parseClusterKey(text, name));
  return null;
}

/**
 * The configured cluster keys, or null when no key is configured. A previous key without a
 * current one is a configuration error.
 */
export function loadClusterKeys(env: NodeJS.ProcessEnv = process.env): ClusterKeys | null {
  const current = loadOne(env, 'FERRY_CLUSTER_KEY');
  const previous = loadOne(env, 'FERRY_CLUSTER_KEY_PREVIOUS');
  if (!current) {
    if (previous) {
      throw new UsageError('FERRY_CLUSTER_KEY_PREVIOUS is set but no FERRY_CLUSTER_KEY / FERRY_CLUSTER_KEY_FILE');
    }
    return null;
  }
  return makeClusterKeys(current, previous);
}

/** Like loadClusterKeys, for a feature that cannot work without a key: `what` names it in the error. */
export function requireClusterKeys(env: NodeJS.ProcessEnv, what: string): ClusterKeys {
  const keys = loadClusterKeys(env);
  if (!keys) {
    throw new UsageError(
      `${what} needs a cluster key: set FERRY_CLUSTER_KEY_FILE (a file, chmod 600) or FERRY_CLUSTER_KEY (hex or base64, 32 bytes)`,
    );
  }
  return keys;
}

let runKey: string | undefined;
/**
 * For the agents a process starts itself (the demo's and the benches' local clusters, test
 * clusters): the configured key when there is one, else one key made for this process's run,
 * the same for every agent it starts, so channel-2 secrets are derived on them and stay out
 * of the workflow history.
 */
export function runClusterKeyEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  if (loadClusterKeys(env)) return {};
  runKey ??= randomBytes(CLUSTER_KEY_BYTES).toString('hex');
  return { FERRY_CLUSTER_KEY: runKey };
}
