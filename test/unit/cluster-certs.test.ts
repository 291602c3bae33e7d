/**
 * `ferry cluster certs` (src/cluster/certs.ts) with the real openssl command: the CA, the
 * frontend's certificate and one per client name; keys 0600 in a 0700 directory; a second run
 * adds only what is missing; every certificate verifies against the CA and names its holder.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CertError, ensureClusterCerts } from '../../src/cluster/certs';
import { checkOwnIdentity, loadChannelTls } from '../../src/dataplane/tls';

const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-certs-')), 'tls');
afterAll(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

describe('ferry cluster certs', () => {
  it('takes a directory relative to where it runs (as `ferry cluster certs` does by default), not to where openssl runs', () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-certs-rel-'));
    const cwd = process.cwd();
    try {
      process.chdir(base);
      const c = ensureClusterCerts(path.join('.ferry', 'cluster', 'tls'), { clients: ['host-a'] });
      expect(c.created).toContain('host-a.key');
      const x = new X509Certificate(fs.readFileSync(path.join(base, '.ferry', 'cluster', 'tls', 'host-a.crt')));
      expect(x.verify(new X509Certificate(fs.readFileSync(path.join(base, '.ferry', 'cluster', 'tls', 'ca.crt'))).publicKey)).toBe(true);
    } finally {
      process.chdir(cwd);
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  it('makes the CA, the frontend and the clients, keys 0600 in a 0700 directory, each signed by the CA and naming its holder', () => {
    const c = ensureClusterCerts(dir, { clients: ['controller', 'operator', 'host-a'] });
    expect(c.created.sort()).toEqual(['ca.crt', 'ca.key', 'controller.crt', 'controller.key', 'frontend.crt', 'frontend.key', 'host-a.crt', 'host-a.key', 'operator.crt', 'operator.key']);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.key'))) expect(fs.statSync(path.join(dir, f)).mode & 0o777, f).toBe(0o600);
    const ca = new X509Certificate(fs.readFileSync(c.ca.crt));
    const frontend = new X509Certificate(fs.readFileSync(c.frontend.crt));
    expect(frontend.verify(ca.publicKey)).toBe(true);
    expect(frontend.subjectAltName).toContain('DNS:temporal-frontend');
    expect(frontend.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(frontend.checkHost('localhost')).toBe('localhost');
    for (const n of ['controller', 'operator', 'host-a']) {
      const x = new X509Certificate(fs.readFileSync(c.clients[n]!.crt));
      expect(x.verify(ca.publicKey), n).toBe(true);
      expect(x.subject).toContain(`CN=${n}`);
      expect(x.checkHost(n)).toBe(n);
    }
    // A host's certificate serves channel-2 too: the agent's own checks accept it for its host id.
    const tls = loadChannelTls({ ca: c.ca.crt, cert: c.clients['host-a']!.crt, key: c.clients['host-a']!.key });
    expect(() => checkOwnIdentity(tls, 'host-a')).not.toThrow();
  });

  it('a second run keeps what exists and adds only the missing names', () => {
    const before = fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8');
    const c = ensureClusterCerts(dir, { clients: ['controller', 'host-b'] });
    expect(c.created).toEqual(['host-b.crt', 'host-b.key']);
    expect(fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8')).toBe(before);
  });

  it('refuses names that are not plain names, and the reserved ones', () => {
    expect(() => ensureClusterCerts(dir, { clients: ['../x'] })).toThrow(CertError);
    expect(() => ensureClusterCerts(dir, { clients: ['ca'] })).toThrow(/reserved/);
  });
});
