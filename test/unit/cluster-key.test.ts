import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  clusterKeyId,
  loadClusterKeys,
  parseClusterKey,
  requireClusterKeys,
} from '../../src/common/cluster-key';
import { UsageError } from '../../src/common/errors';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-key-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function keyFile(name: string, content: string | Buffer, mode: number): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content);
  fs.chmodSync(f, mode);
  return f;
}

const key = randomBytes(32);
const other = randomBytes(32);

describe('parseClusterKey', () => {
  it.each([
    ['hex', key.toString('hex')],
    ['HEX with spaces around', `  ${key.toString('hex').toUpperCase()}\n`],
    ['base64', key.toString('base64')],
    ['base64url without padding', key.toString('base64url')],
  ])('%s', (_name, text) => expect(parseClusterKey(text, 'X').equals(key)).toBe(true));

  it.each(['', 'abc', key.toString('hex').slice(2), randomBytes(16).toString('base64'), 'z'.repeat(64)])(
    '%j is refused with a message naming the source',
    (text) => {
      expect(() => parseClusterKey(text, 'FERRY_CLUSTER_KEY')).toThrow(UsageError);
      expect(() => parseClusterKey(text, 'FERRY_CLUSTER_KEY')).toThrow(/FERRY_CLUSTER_KEY/);
    },
  );
});

describe('loadClusterKeys', () => {
  it('is null when nothing is configured', () => {
    expect(loadClusterKeys({})).toBeNull();
    expect(() => requireClusterKeys({}, 'storage encryption')).toThrow(/storage encryption needs a cluster key/);
  });

  it('takes the key from the environment; its id is the first 8 hex digits of its sha256', () => {
    const keys = loadClusterKeys({ FERRY_CLUSTER_KEY: key.toString('hex') })!;
    expect(keys.current.key.equals(key)).toBe(true);
    expect(keys.current.id).toBe(createHash('sha256').update(key).digest('hex').slice(0, 8));
    expect(keys.current.id).toMatch(/^[0-9a-f]{8}$/);
    expect(keys.previous).toBeNull();
  });

  it('prefers the file to the variable; text and raw files both work', () => {
    const text = keyFile('text.key', `${key.toString('hex')}\n`, 0o600);
    const raw = keyFile('raw.key', key, 0o400);
    for (const f of [text, raw]) {
      const keys = loadClusterKeys({ FERRY_CLUSTER_KEY_FILE: f, FERRY_CLUSTER_KEY: other.toString('hex') })!;
      expect(keys.current.key.equals(key)).toBe(true);
    }
  });

  it.each([0o640, 0o604, 0o644])('refuses a key file with mode %o, naming the file and the fix', (mode) => {
    const f = keyFile(`open-${mode.toString(8)}.key`, key.toString('hex'), mode);
    expect(() => loadClusterKeys({ FERRY_CLUSTER_KEY_FILE: f })).toThrow(UsageError);
    expect(() => loadClusterKeys({ FERRY_CLUSTER_KEY_FILE: f })).toThrow(
      new RegExp(`readable by group or others.*chmod 600 ${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
    );
  });

  it('names a missing key file', () => {
    expect(() => loadClusterKeys({ FERRY_CLUSTER_KEY_FILE: path.join(dir, 'absent') })).toThrow(/ENOENT/);
  });

  it('keeps a previous key for decryption after a rotation', () => {
    const prevFile = keyFile('prev.key', other.toString('base64'), 0o600);
    const keys = loadClusterKeys({ FERRY_CLUSTER_KEY: key.toString('hex'), FERRY_CLUSTER_KEY_PREVIOUS_FILE: prevFile })!;
    expect(keys.current.id).toBe(clusterKeyId(key));
    expect(keys.previous!.id).toBe(clusterKeyId(other));
    expect(keys.byId(clusterKeyId(other))!.key.equals(other)).toBe(true);
    expect(keys.byId(clusterKeyId(key))!.key.equals(key)).toBe(true);
    expect(keys.byId('00000000')).toBeNull();
  });

  it('refuses a previous key without a current one', () => {
    expect(() => loadClusterKeys({ FERRY_CLUSTER_KEY_PREVIOUS: other.toString('hex') })).toThrow(/no FERRY_CLUSTER_KEY/);
  });
});
