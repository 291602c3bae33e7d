import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../src/common/paths';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/common/search-attributes';

describe('docker-compose.yml (the production topology)', () => {
  it('is valid for docker-compose', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8' });
    expect(r.error).toBeUndefined();
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('has Temporal on PostgreSQL, the UI, a controller and agents sharing storage', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(REPO_ROOT, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    const cfg = r.stdout;
    expect(cfg).toMatch(/postgresql:/);
    expect(cfg).toMatch(/DB: postgres12/);
    expect(cfg).toMatch(/temporal-ui:/);
    expect(cfg).toMatch(/command:\n\s+- controller/);
    const agents = cfg.match(/- agent\n\s+- --host/g) ?? [];
    expect(agents.length).toBeGreaterThanOrEqual(2);
    expect((cfg.match(/ferry-storage:\/var\/lib\/ferry\/storage/g) ?? []).length).toBeGreaterThanOrEqual(3);
    // The deployment registers the same search attributes as the dev server.
    const file = fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    for (const k of FERRY_SEARCH_ATTRIBUTES) expect(file).toContain(k.name);
  });
});
