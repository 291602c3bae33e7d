import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/common/search-attributes';
import { FERRY_DYNAMIC_CONFIG } from '../../src/common/server-tuning';

// The API token has no default: compose needs one from the environment.
const COMPOSE_ENV = { ...process.env, FERRY_API_TOKEN: 'compose-test-token' };

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
    const envs = [...config.matchAll(/env "(\w+)" \| default "[^"]*"/g)].map((m) => m[1]);
    expect(envs.length).toBe([...config.matchAll(/\{\{/g)].length);
    expect(config).toMatch(/pluginName: "postgres12"[\s\S]*pluginName: "postgres12"/);
  });
});
