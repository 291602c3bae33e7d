import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/common/search-attributes';
import { FERRY_DYNAMIC_CONFIG } from '../../src/common/server-tuning';

// No secret has a default: compose needs each from the environment (the certificates' and the
// cluster key's files too; `docker-compose config` does not read them).
const REQUIRED = {
  FERRY_API_TOKEN: 'compose-test-token',
  FERRY_PG_PASSWORD: 'compose-test-pg-password',
  FERRY_CERTS_DIR: '/srv/ferry/certs',
  FERRY_CLUSTER_KEY_FILE: path.join(REPO_ROOT, 'package.json'),
};
const COMPOSE_ENV = { ...process.env, ...REQUIRED };

interface ComposeService {
  image?: string;
  command?: string[] | string;
  ports?: (string | { published?: number | string; target?: number; host_ip?: string })[];
  environment?: Record<string, string | null>;
  volumes?: (string | { source?: string; target?: string })[];
  secrets?: (string | { source: string })[];
  profiles?: string[];
}

/** `docker-compose config` as data (its YAML read by Python's yaml, which docker-compose itself runs on). */
function composeConfig(extraArgs: string[] = [], env: NodeJS.ProcessEnv = COMPOSE_ENV): { services: Record<string, ComposeService> } {
  const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), ...extraArgs, 'config'], { encoding: 'utf8', env });
  expect(r.status, r.stderr).toBe(0);
  const j = spawnSync('python3', ['-c', 'import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'], { input: r.stdout, encoding: 'utf8' });
  expect(j.status, j.stderr).toBe(0);
  return JSON.parse(j.stdout) as { services: Record<string, ComposeService> };
}

/** host_ip:published of each published port of a service. */
function published(svc: ComposeService): string[] {
  return (svc.ports ?? []).map((p) => {
    if (typeof p === 'string') {
      const parts = p.split(':');
      return parts.length === 3 ? `${parts[0]}:${parts[1]}` : parts.length === 2 ? `0.0.0.0:${parts[0]}` : `0.0.0.0:${parts[0]}`;
    }
    return `${p.host_ip ?? '0.0.0.0'}:${p.published}`;
  });
}

const volumeStrings = (svc: ComposeService): string[] => (svc.volumes ?? []).map((v) => (typeof v === 'string' ? v : `${v.source}:${v.target}`));

describe('docker-compose.yml (the production topology)', () => {
  it('is valid for docker-compose', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8', env: COMPOSE_ENV });
    expect(r.error).toBeUndefined();
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('has Temporal on PostgreSQL, the UI, a controller and three agents sharing storage', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8', env: COMPOSE_ENV });
    const cfg = r.stdout;
    expect(cfg).toMatch(/postgresql:/);
    // The four Temporal services, each a container of the server image, from ferry's one config.
    for (const svc of ['frontend', 'history', 'matching', 'worker']) expect(cfg).toMatch(new RegExp(`command:\\n\\s+- ${svc}\\n`));
    expect((cfg.match(/image: temporalio\/server:1\.29\.1/g) ?? []).length).toBe(4);
    expect(cfg).not.toMatch(/auto-setup/);
    expect(cfg).toMatch(/temporal-ui:/);
    expect(cfg).toMatch(/command:\n\s+- controller/);
    const agents = cfg.match(/- agent\n\s+- --host/g) ?? [];
    expect(agents.length).toBe(3);
    for (const h of ['host-a', 'host-b', 'host-c']) expect(cfg).toMatch(new RegExp(`- --host\\n\\s+- ${h}\\n`));
    // The controller and the three agents share the storage volume.
    expect((cfg.match(/ferry-storage:\/var\/lib\/ferry\/storage/g) ?? []).length).toBeGreaterThanOrEqual(4);
    // The deployment registers the same search attributes as the dev server.
    const file = fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    for (const k of FERRY_SEARCH_ATTRIBUTES) expect(file).toContain(k.name);
  });

  it('runs the HTTP API with a bearer token, the audit trail on a volume, metrics on every agent and emulated VMs', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8', env: COMPOSE_ENV });
    const cfg = r.stdout;
    expect(cfg).toMatch(/command:\n\s+- controller\n\s+- --listen\n\s+- 0\.0\.0\.0:8088/);
    expect(cfg).toMatch(/FERRY_API_TOKEN: /);
    expect(cfg).toMatch(/FERRY_AUDIT_DB: \/var\/lib\/ferry\/audit\/audit\.db/);
    expect(cfg).toMatch(/ferry-audit:\/var\/lib\/ferry\/audit/);
    expect((cfg.match(/- --metrics\n\s+- 0\.0\.0\.0:9464/g) ?? []).length).toBe(3);
    expect((cfg.match(/vm\s+create\s+vm-\d\s+--host\s+host-[ab]/g) ?? []).length).toBe(4);
  });
});

describe('Temporal server config (one for compose and `ferry cluster`)', () => {
  it('the deployments mount the same dynamic config values the dev server runs with', () => {
    const file = fs.readFileSync(path.join(REPO_ROOT, 'deploy/temporal/dynamicconfig.yaml'), 'utf8');
    const entries = [...file.matchAll(/^([a-zA-Z.]+):\n\s+- value: (\S+)$/gm)].map((m) => [m[1]!, JSON.parse(m[2]!) as number] as const);
    expect(Object.fromEntries(entries)).toEqual(FERRY_DYNAMIC_CONFIG);
    const compose = fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    expect(compose).toContain('./deploy/temporal:/etc/ferry/temporal:ro');
    expect(compose).toContain('FERRY_TEMPORAL_DYNAMIC_CONFIG: /etc/ferry/temporal/dynamicconfig.yaml');
    expect(fs.readFileSync(path.join(REPO_ROOT, 'src/cluster/services.ts'), 'utf8')).toContain("path.join(DEPLOY_DIR, 'dynamicconfig.yaml')");
  });

  it('compose runs the server, the schema and the namespace steps from the files `ferry cluster` runs', () => {
    const cfg = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8', env: COMPOSE_ENV }).stdout;
    expect(cfg).toMatch(/temporal-server\s+--root \/etc\/ferry\/temporal --config config --env ferry/);
    expect(cfg).toMatch(/- \/etc\/ferry\/temporal\/setup-schema\.sh/);
    expect(cfg).toMatch(/- \/etc\/ferry\/temporal\/setup-namespace\.sh/);
    expect(cfg).toMatch(/FERRY_SEARCH_ATTRIBUTES: VmId SourceHost TargetHost Strategy Phase TicketId/);
    expect(FERRY_SEARCH_ATTRIBUTES.map((k) => k.name).join(' ')).toBe('VmId SourceHost TargetHost Strategy Phase TicketId');
    // The config is a template the server renders: every value the native cluster sets has a default.
    const config = fs.readFileSync(path.join(REPO_ROOT, 'deploy/temporal/config/ferry.yaml'), 'utf8');
    expect(config.split('\n')[0]).toBe('# enable-template');
    // The TLS block is rendered only when FERRY_TEMPORAL_TLS_DIR is set (both topologies set it).
    const tlsBlock = /\{\{- if env "FERRY_TEMPORAL_TLS_DIR" \}\}([\s\S]*?)\{\{- end \}\}/.exec(config);
    expect(tlsBlock, 'the frontend TLS block').not.toBeNull();
    expect(tlsBlock![1]).toMatch(/frontend:\n\s+server:[\s\S]*requireClientAuth: true/);
    const rest = config.replace(tlsBlock![0], '');
    const envs = [...rest.matchAll(/env "(\w+)" \| default "[^"]*"/g)].map((m) => m[1]);
    expect(envs.length).toBe([...rest.matchAll(/\{\{/g)].length);
    expect(config).toMatch(/pluginName: "postgres12"[\s\S]*pluginName: "postgres12"/);
  });
});

describe('docker-compose.yml has no open door and no default secret', () => {
  it('publishes only the Temporal frontend (mutual TLS) and the API (HTTPS and a bearer token)', () => {
    const { services } = composeConfig();
    // What `docker-compose up` starts (services of a profile start only when it is asked for).
    const open = Object.entries(services)
      .filter(([, svc]) => !svc.profiles?.length)
      .flatMap(([name, svc]) => published(svc).map((p) => `${name} ${p}`));
    expect(open.sort()).toEqual(['controller 0.0.0.0:8088', 'temporal 0.0.0.0:7233']);
    // The frontend: the TLS directory the server config requires client certificates with.
    expect(services.temporal!.environment?.FERRY_TEMPORAL_TLS_DIR).toBe('/etc/ferry/certs');
    expect(volumeStrings(services.temporal!)).toEqual(expect.arrayContaining(['/srv/ferry/certs/frontend.key:/etc/ferry/certs/frontend.key:ro']));
    // The API: HTTPS, and the token given in the environment.
    const cmd = services.controller!.command as string[];
    expect(cmd.slice(cmd.indexOf('--tls-cert'), cmd.indexOf('--tls-cert') + 4)).toEqual(['--tls-cert', '/etc/ferry/tls/api.crt', '--tls-key', '/etc/ferry/tls/api.key']);
    expect(services.controller!.environment?.FERRY_API_TOKEN).toBe(REQUIRED.FERRY_API_TOKEN);
    // The UI has no login: not in the default set of services.
    expect(services['temporal-ui']?.profiles).toEqual(['ui']);
  });

  it('the Temporal UI, when asked for (--profile ui), listens on the host loopback only and presents its own certificate', () => {
    const { services } = composeConfig(['--profile', 'ui']);
    expect(published(services['temporal-ui']!)).toEqual(['127.0.0.1:8080']);
    expect(services['temporal-ui']!.environment).toMatchObject({ TEMPORAL_TLS_CERT: '/etc/ferry/tls/client.crt', TEMPORAL_TLS_CA: '/etc/ferry/tls/ca.crt' });
  });

  it('refuses to start without each secret, and no secret has a literal value in the file', () => {
    for (const name of Object.keys(REQUIRED)) {
      const env: NodeJS.ProcessEnv = { ...COMPOSE_ENV };
      delete env[name];
      const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8', env });
      expect(r.status, name).not.toBe(0);
      expect(r.stderr, name).toContain(name);
    }
    const file = fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    const secretish = [...file.matchAll(/^\s*([A-Z_]*(?:TOKEN|PASSWORD|SECRET|_KEY)[A-Z_]*):\s*(.*)$/gm)].map((m) => [m[1]!, m[2]!.trim()] as const);
    expect(secretish.length).toBeGreaterThan(5);
    for (const [name, value] of secretish) {
      // From the environment with no default (or an empty one: unset), or a path to a mounted file.
      expect(/^\$\{\w+:\?/.test(value) || /^\$\{\w+:-\}$/.test(value) || value.startsWith('/'), `${name}: ${value}`).toBe(true);
    }
    expect(file).not.toMatch(/change-me|PASSWORD: temporal\b/);
  });

  it('each container gets only its own key; the CA key is mounted nowhere; agents use channel-2 mTLS and the cluster key', () => {
    const { services } = composeConfig(['--profile', 'ui']);
    for (const [name, svc] of Object.entries(services)) {
      const keys = volumeStrings(svc).filter((v) => /\.key:/.test(v));
      expect(keys.some((k) => k.includes('/ca.key')), name).toBe(false);
      expect(keys.length, name).toBeLessThanOrEqual(2);
    }
    for (const h of ['a', 'b', 'c']) {
      const agent = services[`agent-${h}`]!;
      expect(volumeStrings(agent)).toEqual(expect.arrayContaining([`/srv/ferry/certs/host-${h}.key:/etc/ferry/tls/client.key:ro`]));
      expect(agent.command).toEqual(expect.arrayContaining(['--tls-ca', '--tls-cert', '--tls-key']));
      expect(agent.environment?.FERRY_CLUSTER_KEY_FILE).toBe('/run/secrets/cluster-key');
      expect(agent.environment).toMatchObject({ FERRY_TEMPORAL_TLS_CERT: '/etc/ferry/tls/client.crt', FERRY_TEMPORAL_TLS_KEY: '/etc/ferry/tls/client.key' });
    }
  });
});
