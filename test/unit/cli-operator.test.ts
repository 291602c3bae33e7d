/** `ferry evacuate`, `ferry audit` and `ferry controller --listen` refuse bad values with exit 2 and one line. */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { FERRY_BIN } from '../../src/support/processes';
import { splitTo } from '../../src/cli/commands/evacuate';

function ferry(...args: string[]) {
  const env = { ...process.env, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1', FERRY_API_TOKEN: '', FERRY_API_TOKENS_FILE: '' };
  const r = spawnSync(process.execPath, [FERRY_BIN, ...args], { encoding: 'utf8', env });
  return { code: r.status, stderr: r.stderr.trim(), stdout: r.stdout };
}

describe('operator commands: input validation', () => {
  it.each([
    [['evacuate'], 'name the host'],
    [['evacuate', 'a b'], "'a b' is not a valid host id"],
    [['evacuate', 'host-a', '--max-parallel', '0'], '--max-parallel'],
    [['evacuate', 'host-a', '--max-outbound', 'two'], '--max-outbound'],
    [['evacuate', 'host-a', '--link-budget', 'wide'], '--link-budget'],
    [['evacuate', 'host-a', '--strategy', 'yolo'], '--strategy'],
    [['audit', '--from', 'last tuesday'], '--from'],
    [['audit', '--json', '--jsonl'], '--json and --jsonl'],
    [['audit', '--limit', '-1'], '--limit'],
    [['controller', '--listen', '127.0.0.1:0'], 'needs a token'],
  ])('%j → exit 2 naming %s', (args, name) => {
    const r = ferry(...args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(name);
  });

  it.each([
    [['host-a', 'host-b', '--to', 'host-c', 'host-d', '--max-parallel', '2'], ['host-a', 'host-b', '--max-parallel', '2'], ['host-c', 'host-d']],
    [['host-a', '--to=host-c,host-d'], ['host-a'], ['host-c', 'host-d']],
    [['--to', 'host-c', '--ticket', 'T', 'host-a'], ['--ticket', 'T', 'host-a'], ['host-c']],
  ])('--to takes the hosts up to the next option: %j', (argv, rest, to) => {
    expect(splitTo(argv)).toEqual({ rest, to });
  });
});
