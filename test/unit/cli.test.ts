/** The CLI refuses bad values with exit 2 and one line naming the option. */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { FERRY_BIN } from '../../src/support/processes';

function ferry(...args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1' };
  for (const k of ['FERRY_CLUSTER_KEY', 'FERRY_CLUSTER_KEY_FILE', 'FERRY_STORAGE_ENCRYPTION', 'FERRY_STORAGE_STALL_MS']) delete env[k];
  const r = spawnSync(process.execPath, [FERRY_BIN, ...args], { encoding: 'utf8', env });
  return { code: r.status, stderr: r.stderr.trim(), stdout: r.stdout };
}

describe('ferry CLI input validation', () => {
  it.each([
    [['migrate', 'vm-1', '--to', 'host-b', '--bandwidth', 'fast'], '--bandwidth'],
    [['migrate', 'vm-1', '--to', 'host-b', '--strategy', 'yolo'], '--strategy'],
    [['migrate', 'vm-1', '--to', 'host-b', '--max-downtime', 'soon'], '--max-downtime'],
    [['migrate', 'vm-1', '--to', 'host-b', '--max-iterations', '-3'], '--max-iterations'],
    [['migrate', 'vm-1', '--to', 'host-b', '--pbdata', 'maybe'], '--pbdata'],
    [['migrate', 'vm-1'], '--to'],
    [['demo', '--memory', 'huge'], '--memory'],
    [['demo', '--workload', 'bitcoin'], '--workload'],
    [['demo', '--driver', 'xen'], '--driver'],
    [['agent'], '--host'],
    [['agent', '--host', 'a b'], '--host'],
    [['agent', '--host', 'h', '--storage-stall', '10ms'], '--storage-stall'],
    [['agent', '--host', 'h', '--storage-stall', 'never'], '--storage-stall'],
    [['agent', '--host', 'h', '--storage-encryption'], '--storage-encryption: needs a cluster key'],
    [['agent', '--host', 'h'], 'no cluster key: set FERRY_CLUSTER_KEY_FILE'],
    [['migrate', 'vm-1', '--to', 'host-b', '--agent-timeout', '1s'], '--agent-timeout'],
    [['vm', 'create', 'x', '--host', 'h', '--memory', '12XB'], '--memory'],
    [['set-bandwidth', 'vm-1', 'lots'], 'set-bandwidth'],
    [['migrate', 'vm-1', '--to', 'host-b', '--frobnicate'], 'frobnicate'],
  ])('%j → exit 2 naming %s', (args, name) => {
    const r = ferry(...args);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(name);
  });

  it('an unknown command exits 2', () => {
    const r = ferry('teleport');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'teleport'/);
  });

  it('an unreachable Temporal is one clear line, not a stack', () => {
    const r = ferry('status');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot reach Temporal at 127\.0\.0\.1:1/);
    expect(r.stderr.split('\n')).toHaveLength(1);
  });
});
