import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/common/search-attributes';
import { FERRY_DYNAMIC_CONFIG } from '../../src/common/server-tuning';

describe('docker-compose.yml (the production topology)', () => {
  it('is valid for docker-compose', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8' });
    expect(r.error).toBeUndefined();
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('has Temporal on PostgreSQL, the UI, a controller and three agents sharing storage', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    const cfg = r.stdout;
    expect(cfg).toMatch(/postgresql:/);
    expect(cfg).toMatch(/DB: postgres12/);
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
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    const cfg = r.stdout;
    expect(cfg).toMatch(/command:\n\s+- controller\n\s+- --listen\n\s+- 0\.0\.0\.0:8088/);
    expect(cfg).toMatch(/FERRY_API_TOKEN: /);
    expect(cfg).toMatch(/FERRY_AUDIT_DB: \/var\/lib\/ferry\/audit\/audit\.db/);
    expect(cfg).toMatch(/ferry-audit:\/var\/lib\/ferry\/audit/);
    expect((cfg.match(/- --metrics\n\s+- 0\.0\.0\.0:9464/g) ?? []).length).toBe(3);
    expect((cfg.match(/vm\s+create\s+vm-\d\s+--host\s+host-[ab]/g) ?? []).length).toBe(4);
  });
});

describe('Temporal dynamic config', () => {
  it('the deployments mount the same values the dev server runs with', () => {
    const file = fs.readFileSync(path.join(REPO_ROOT, 'deploy/temporal/dynamicconfig.yaml'), 'utf8');
    const entries = [...file.matchAll(/^([a-zA-Z.]+):\n\s+- value: (\S+)$/gm)].map((m) => [m[1]!, JSON.parse(m[2]!) as number] as const);
    expect(Object.fromEntries(entries)).toEqual(FERRY_DYNAMIC_CONFIG);
    const compose = fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    expect(compose).toContain('./deploy/temporal/dynamicconfig.yaml:/etc/temporal/config/dynamicconfig/ferry.yaml:ro');
    expect(compose).toContain('DYNAMIC_CONFIG_FILE_PATH: /etc/temporal/config/dynamicconfig/ferry.yaml');
  });
});
