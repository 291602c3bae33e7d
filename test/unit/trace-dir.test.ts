/**
 * `trace:<file>` workloads are read only from the agent's trace directory (--trace-dir /
 * FERRY_TRACE_DIR): a path outside it, by `..`, by an absolute path or by a symlink, is
 * refused; a parse error names the file and the line, never the line's content.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EmulatedGuest } from '../../src/guest';
import { localTraceSetup, resolveTraceFile, setTraceDir } from '../../src/guest/workloads';
import { FERRY_BIN } from '../../src/support/processes';

const MiB = 1024 ** 2;
const root = mkdtempSync(join(tmpdir(), 'ferry-trace-dir-'));
const traces = join(root, 'traces'); // the agent's trace directory
const outside = join(root, 'elsewhere'); // beside it, not in it
mkdirSync(join(traces, 'sub'), { recursive: true });
mkdirSync(outside);
// A secret the refused reads must never show (and a valid trace, so only the check can stop it).
const SECRET = 'TOPSECRET-7f3a';
writeFileSync(join(outside, 'secret.trace'), `# ${SECRET}\n0 w 1\n`);
writeFileSync(join(traces, 'ok.trace'), '0 w 1\n1 w 2\n');
writeFileSync(join(traces, 'sub', 'nested.trace'), '0 w 3\n');
symlinkSync(join(outside, 'secret.trace'), join(traces, 'escape.trace'));
symlinkSync(outside, join(traces, 'linked-dir'));
symlinkSync(join(traces, 'ok.trace'), join(traces, 'alias.trace'));

const guests: EmulatedGuest[] = [];
afterEach(async () => {
  await Promise.all(guests.splice(0).map((g) => g.stop()));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

function create(file: string): EmulatedGuest {
  const g = EmulatedGuest.create({ name: 't', memoryBytes: 4 * MiB, prefill: 'none', workload: `trace:${file}` });
  guests.push(g);
  return g;
}

/** The error a guest creation with this trace file throws (a usage error, not a crash). */
function refusal(file: string): Error {
  try {
    create(file);
  } catch (e) {
    expect((e as Error).name).toBe('UsageError');
    return e as Error;
  }
  throw new Error(`trace:${file} was accepted`);
}

describe('trace files come only from the trace directory', () => {
  it('without a trace directory every trace file is refused, saying how to configure one', () => {
    setTraceDir(null);
    const e = refusal(join(traces, 'ok.trace'));
    expect(e.message).toContain('no trace directory is configured');
    expect(e.message).toContain('--trace-dir DIR or FERRY_TRACE_DIR=DIR');
  });

  it('reads a file inside it, by a relative name, an absolute path, a subdirectory or a symlink that stays inside', () => {
    setTraceDir(traces);
    for (const f of ['ok.trace', join(traces, 'ok.trace'), 'sub/nested.trace', './sub/../ok.trace', 'alias.trace']) {
      expect(create(f).saveDeviceState().workload.trace, f).toMatchObject({ file: f });
    }
    expect(resolveTraceFile('alias.trace')).toBe(join(traces, 'ok.trace'));
  });

  it.each([
    ['an absolute path outside', join(outside, 'secret.trace'), 'is outside the trace directory'],
    ['a relative path climbing out with ..', '../elsewhere/secret.trace', 'is outside the trace directory'],
    ['.. hidden inside a longer path', 'sub/../../elsewhere/secret.trace', 'is outside the trace directory'],
    ['a system file', '/etc/passwd', 'is outside the trace directory'],
    ['a symlink to a file outside', 'escape.trace', 'leads outside the trace directory'],
    ['a path through a symlinked directory outside', 'linked-dir/secret.trace', 'leads outside the trace directory'],
  ])('refuses %s with a clear error', (_what, file, why) => {
    setTraceDir(traces);
    const e = refusal(file);
    expect(e.message).toContain(`trace file '${file}' ${why} ${traces}`);
    expect(e.message).not.toContain(SECRET);
    // Where a symlink out points is not told either.
    if (why.startsWith('leads')) expect(e.message).not.toContain(outside);
  });

  it('the trace directory itself is not a trace file', () => {
    setTraceDir(traces);
    expect(refusal('.').message).toContain('is outside the trace directory');
  });
});

describe('a bad line is reported as file:line, never with its content', () => {
  it.each([
    ['too few fields', `0 ${SECRET}`, 'expected 3 or 4 fields, got 2'],
    ['a bad time', `${SECRET} w 1`, 'field 1 (time) is not a non-negative number of milliseconds'],
    ['a bad access', `5 ${SECRET} 1`, 'field 2 (access) is not r or w'],
    ['a bad page', `5 w ${SECRET}`, 'field 3 (page) is not a page index'],
    ['a bad count', `5 w 1 ${SECRET}`, 'field 4 (count) is not 1..1000000'],
    ['time going backwards', '4 w 424242', 'field 1 (time) goes backwards'],
  ])('%s', (_what, line, why) => {
    setTraceDir(traces);
    writeFileSync(join(traces, 'bad.trace'), `# a comment\n5 w 1\n${line}\n6 w 2\n`);
    const e = refusal('bad.trace');
    expect(e.message).toMatch(/^bad\.trace:3: /);
    expect(e.message).toContain(why);
    expect(e.message).not.toContain(SECRET);
    expect(e.message).not.toContain('424242');
  });
});

describe('commands that start their own agents (demo, regret bench)', () => {
  it('give those agents the directory of the trace files named and pass them as absolute paths', () => {
    const r = localTraceSetup(['memcached', `trace:${join(traces, 'sub', 'nested.trace')}`, `trace:${join(traces, 'ok.trace')}`]);
    expect(r.traceDir).toBe(traces);
    expect(r.workloads).toEqual(['memcached', `trace:${join(traces, 'sub', 'nested.trace')}`, `trace:${join(traces, 'ok.trace')}`]);
    expect(localTraceSetup(['idle'])).toEqual({ traceDir: null, workloads: ['idle'] });
    expect(() => localTraceSetup([`trace:${join(root, 'missing.trace')}`], '--workloads')).toThrow(/^--workloads: trace file .*missing\.trace does not exist$/);
  });
});

describe('ferry agent --trace-dir', () => {
  it('an agent given a trace directory that is not one exits 2 naming the option', () => {
    const env = { ...process.env, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1', FERRY_TRACE_DIR: '' };
    const r = spawnSync(process.execPath, [FERRY_BIN, 'agent', '--host', 'host-t', '--trace-dir', join(traces, 'ok.trace')], { encoding: 'utf8', env, timeout: 60_000 });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([`ferry agent: --trace-dir / FERRY_TRACE_DIR: '${join(traces, 'ok.trace')}' is not a directory`]);
  });
});
