import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { makeClusterKey, makeClusterKeys } from '../../src/common/cluster-key';
import { ChannelGrantError, grantSecret, secretOfGrant, sourceSecret } from '../../src/security/channel-secret';

const keyA = makeClusterKey(Buffer.alloc(32, 0xa1));
const keyB = makeClusterKey(Buffer.alloc(32, 0xb2));

describe('channel secrets derived from the cluster key', () => {
  it('target and source derive the same secret from the grant; the grant holds neither key nor secret', () => {
    const keys = makeClusterKeys(keyA);
    const { grant, secret } = grantSecret(keys, 'channel-2', 'migrate-vm-1.abc');
    expect(grant.keyId).toBe(keyA.id);
    expect(grant.nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    expect(secretOfGrant(keys, 'channel-2', 'migrate-vm-1.abc', grant)).toBe(secret);
    expect(sourceSecret(keys, 'channel-2', 'migrate-vm-1.abc', { grant })).toBe(secret);
    // The documented construction.
    expect(secret).toBe(createHmac('sha256', keyA.key).update(`ferry channel-2 secret v1\0migrate-vm-1.abc\0${grant.nonce}`).digest('hex'));
    const text = JSON.stringify(grant);
    expect(text).not.toContain(secret);
    expect(text).not.toContain(keyA.key.toString('hex'));
  });

  it('another migration, another nonce or another purpose give another secret', () => {
    const keys = makeClusterKeys(keyA);
    const { grant, secret } = grantSecret(keys, 'channel-2', 'm1');
    expect(secretOfGrant(keys, 'channel-2', 'm2', grant)).not.toBe(secret);
    expect(secretOfGrant(keys, 'qemu-relay', 'm1', grant)).not.toBe(secret);
    expect(grantSecret(keys, 'channel-2', 'm1').secret).not.toBe(secret);
  });

  it('after a rotation a source holding the old key as previous still derives a grant made with it', () => {
    const before = grantSecret(makeClusterKeys(keyA), 'channel-2', 'm');
    const rotated = makeClusterKeys(keyB, keyA);
    expect(secretOfGrant(rotated, 'channel-2', 'm', before.grant)).toBe(before.secret);
    expect(grantSecret(rotated, 'channel-2', 'm').grant.keyId).toBe(keyB.id);
  });

  it('refuses a grant of a key it does not hold, a malformed nonce, and a grant without any key', () => {
    const { grant } = grantSecret(makeClusterKeys(keyB), 'channel-2', 'm');
    expect(() => secretOfGrant(makeClusterKeys(keyA), 'channel-2', 'm', grant)).toThrow(ChannelGrantError);
    expect(() => secretOfGrant(makeClusterKeys(keyA), 'channel-2', 'm', grant)).toThrow(new RegExp(keyB.id));
    expect(() => secretOfGrant(makeClusterKeys(keyB), 'channel-2', 'm', { ...grant, nonce: 'zz' })).toThrow(/malformed nonce/);
    expect(() => secretOfGrant(null, 'channel-2', 'm', grant)).toThrow(/no cluster key/);
  });

  it('without a grant the source takes the secret a keyless target sent, and refuses neither', () => {
    expect(sourceSecret(null, 'channel-2', 'm', { secret: 'abc' })).toBe('abc');
    expect(() => sourceSecret(null, 'channel-2', 'm', {})).toThrow(ChannelGrantError);
  });
});
