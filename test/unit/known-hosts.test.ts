import { createHash, createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  checkHostKey,
  fingerprintSha256,
  formatKnownHostsLine,
  hostKeyMatches,
  knownHostName,
  parseKnownHosts,
  sshKeyType,
} from '../../src/hypervisor/qemu/ssh';

function sshString(b: Buffer | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
}

/** A real ed25519 public key in SSH wire format (what a server presents). */
function ed25519Blob(): Buffer {
  const { publicKey } = generateKeyPairSync('ed25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return Buffer.concat([sshString('ssh-ed25519'), sshString(raw)]);
}

/** A blob with the ecdsa type prefix (the matcher only compares bytes). */
function ecdsaBlob(): Buffer {
  return Buffer.concat([sshString('ecdsa-sha2-nistp256'), sshString('nistp256'), sshString(randomBytes(65))]);
}

const b64 = (b: Buffer) => b.toString('base64');

/** What `ssh-keygen -H` writes for a host name: |1|base64(salt)|base64(HMAC-SHA1(salt, name)). */
function hashedName(name: string, salt = randomBytes(20)): string {
  return `|1|${b64(salt)}|${createHmac('sha1', salt).update(name).digest('base64')}`;
}

const K1 = ed25519Blob();
const K2 = ed25519Blob();
const E1 = ecdsaBlob();

describe('known_hosts parsing', () => {
  it('reads markers, host patterns, key type, key and comment; skips comments, blanks and junk', () => {
    const text = [
      '# a comment',
      '',
      '   ',
      `host-a,10.0.0.1 ssh-ed25519 ${b64(K1)} root@host-a`,
      `@revoked * ssh-ed25519 ${b64(K2)}`,
      `@cert-authority *.example.com ssh-ed25519 ${b64(K1)}`,
      `@bogus host-a ssh-ed25519 ${b64(K1)}`, // unknown marker
      `host-b ssh-ed25519`, // no key
      `host-b ssh-ed25519 not*base64`,
      `host-b ecdsa-sha2-nistp256 ${b64(K1)}`, // type field disagrees with the blob
      `|1|bad|hash ssh-ed25519 ${b64(K1)}`,
      `\t[host-c]:2222 ecdsa-sha2-nistp256 ${b64(E1)}\r`,
    ].join('\n');
    const entries = parseKnownHosts(text);
    expect(entries.map((e) => e.line)).toEqual([4, 5, 6, 12]);
    expect(entries[0]).toMatchObject({ marker: null, hosts: { kind: 'patterns', patterns: ['host-a', '10.0.0.1'] }, keyType: 'ssh-ed25519', comment: 'root@host-a' });
    expect(entries[0]!.key.equals(K1)).toBe(true);
    expect(entries[1]).toMatchObject({ marker: 'revoked', hosts: { kind: 'patterns', patterns: ['*'] } });
    expect(entries[2]).toMatchObject({ marker: 'cert-authority' });
    expect(entries[3]).toMatchObject({ marker: null, keyType: 'ecdsa-sha2-nistp256', hosts: { kind: 'patterns', patterns: ['[host-c]:2222'] }, comment: '' });
  });

  it('reads hashed host names', () => {
    const salt = randomBytes(20);
    const [e] = parseKnownHosts(`${hashedName('host-a', salt)} ssh-ed25519 ${b64(K1)}\n`);
    expect(e!.hosts).toEqual({ kind: 'hashed', salt, hash: createHmac('sha1', salt).update('host-a').digest() });
  });

  it('key type and fingerprint like OpenSSH', () => {
    expect(sshKeyType(K1)).toBe('ssh-ed25519');
    expect(sshKeyType(E1)).toBe('ecdsa-sha2-nistp256');
    expect(sshKeyType(Buffer.from([0, 0, 0, 99, 1]))).toBeNull();
    const fp = fingerprintSha256(K1);
    expect(fp).toBe(`SHA256:${createHash('sha256').update(K1).digest('base64').replace(/=+$/, '')}`);
    expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(knownHostName('Host-A', 22)).toBe('host-a');
    expect(knownHostName('host-a', 2222)).toBe('[host-a]:2222');
  });
});

describe('host key matching', () => {
  it('plain entry: match, mismatch (other key of the type), unknown (other host, other type)', () => {
    const entries = parseKnownHosts(`host-a,10.0.0.1 ssh-ed25519 ${b64(K1)}\n`);
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'HOST-A', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, '10.0.0.1', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K2)).toBe('mismatch');
    expect(hostKeyMatches(entries, 'host-b', 22, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, 'host-a', 22, 'ecdsa-sha2-nistp256', E1)).toBe('unknown');
    expect(checkHostKey(entries, 'host-a', 22, 'ecdsa-sha2-nistp256', E1)).toMatchObject({ reason: 'unknown-key-type', knownKeyTypes: ['ssh-ed25519'] });
    expect(checkHostKey(entries, 'host-a', 22, 'ssh-ed25519', K2)).toMatchObject({ reason: 'changed', line: 1 });
  });

  it('[host]:port entries name that port only; a plain entry names port 22 only', () => {
    const entries = parseKnownHosts(`[host-a]:2222 ssh-ed25519 ${b64(K1)}\nhost-b ssh-ed25519 ${b64(K1)}\n`);
    expect(hostKeyMatches(entries, 'host-a', 2222, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'host-a', 2222, 'ssh-ed25519', K2)).toBe('mismatch');
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, 'host-a', 2223, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, 'host-b', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'host-b', 2222, 'ssh-ed25519', K1)).toBe('unknown');
  });

  it('hashed entries (ssh-keygen -H) for port 22 and [host]:port', () => {
    const text = [`${hashedName('host-a')} ssh-ed25519 ${b64(K1)}`, `${hashedName('[10.1.2.3]:2200')} ssh-ed25519 ${b64(K2)}`].join('\n');
    const entries = parseKnownHosts(text);
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K2)).toBe('mismatch');
    expect(hostKeyMatches(entries, 'host-a', 2200, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, '10.1.2.3', 2200, 'ssh-ed25519', K2)).toBe('match');
    expect(hostKeyMatches(entries, '10.1.2.3', 2200, 'ssh-ed25519', K1)).toBe('mismatch');
    expect(hostKeyMatches(entries, '10.1.2.3', 22, 'ssh-ed25519', K2)).toBe('unknown');
  });

  it('formatKnownHostsLine writes entries the parser matches, hashed or not', () => {
    const plain = parseKnownHosts(formatKnownHostsLine('host-a', 2222, K1));
    const hashed = parseKnownHosts(formatKnownHostsLine('host-a', 2222, K1, { salt: randomBytes(20) }));
    expect(hashed[0]!.hosts.kind).toBe('hashed');
    for (const entries of [plain, hashed]) {
      expect(hostKeyMatches(entries, 'host-a', 2222, 'ssh-ed25519', K1)).toBe('match');
      expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K1)).toBe('unknown');
    }
  });

  it('@revoked refuses that key even when it is also listed as known', () => {
    const text = [`host-a ssh-ed25519 ${b64(K1)}`, `@revoked host-a ssh-ed25519 ${b64(K1)}`, `@revoked * ecdsa-sha2-nistp256 ${b64(E1)}`].join('\n');
    const entries = parseKnownHosts(text);
    expect(hostKeyMatches(entries, 'host-a', 22, 'ssh-ed25519', K1)).toBe('mismatch');
    expect(checkHostKey(entries, 'host-a', 22, 'ssh-ed25519', K1)).toMatchObject({ reason: 'revoked', line: 2 });
    expect(hostKeyMatches(entries, 'any-host', 2222, 'ecdsa-sha2-nistp256', E1)).toBe('mismatch');
    // A revoked line is not a known key: another key of the host stays unknown.
    expect(hostKeyMatches(parseKnownHosts(`@revoked host-a ssh-ed25519 ${b64(K1)}`), 'host-a', 22, 'ssh-ed25519', K2)).toBe('unknown');
  });

  it('wildcards and negation; @cert-authority lines are ignored', () => {
    const entries = parseKnownHosts([`*.lab,!bad.lab ssh-ed25519 ${b64(K1)}`, `@cert-authority * ssh-ed25519 ${b64(K2)}`, `[node?]:2222 ssh-ed25519 ${b64(K2)}`].join('\n'));
    expect(hostKeyMatches(entries, 'a.lab', 22, 'ssh-ed25519', K1)).toBe('match');
    expect(hostKeyMatches(entries, 'bad.lab', 22, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, 'alab', 22, 'ssh-ed25519', K1)).toBe('unknown');
    expect(hostKeyMatches(entries, 'other', 22, 'ssh-ed25519', K2)).toBe('unknown');
    expect(hostKeyMatches(entries, 'node7', 2222, 'ssh-ed25519', K2)).toBe('match');
    expect(hostKeyMatches(entries, 'node17', 2222, 'ssh-ed25519', K2)).toBe('unknown');
  });

  it('an empty file knows nothing', () => {
    expect(hostKeyMatches(parseKnownHosts(''), 'host-a', 22, 'ssh-ed25519', K1)).toBe('unknown');
    expect(checkHostKey([], 'host-a', 22, 'ssh-ed25519', K1)).toMatchObject({ reason: 'unknown-host', knownKeyTypes: [] });
  });
});
