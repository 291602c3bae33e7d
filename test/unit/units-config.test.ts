import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/common/config';
import { UsageError } from '../../src/common/errors';
import { parseDuration, parseRate, parseSize } from '../../src/common/units';

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['256MiB', 256 * 1024 ** 2],
    ['1GiB', 1024 ** 3],
    ['1.5 GiB', 1.5 * 1024 ** 3],
    ['50MB', 50e6],
    ['4k', 4000],
    ['4Ki', 4096],
  ])('%s = %d bytes', (text, bytes) => expect(parseSize(text)).toBe(bytes));

  it.each(['', 'lots', '12XB', '-1MiB', '1e3'])('%j is refused with a message naming the option', (text) => {
    expect(() => parseSize(text, '--memory')).toThrow(UsageError);
    expect(() => parseSize(text, '--memory')).toThrow(/--memory/);
  });
});

describe('parseRate and parseDuration', () => {
  it.each([
    ['32MiB/s', 32 * 1024 ** 2],
    ['50MB/s', 50e6],
    ['1GiB/s', 1024 ** 3],
    ['10MBps', 10e6],
  ])('%s', (text, v) => expect(parseRate(text)).toBe(v));
  it.each([
    ['300ms', 300],
    ['2s', 2000],
    ['1m', 60_000],
    ['250', 250],
  ])('%s', (text, v) => expect(parseDuration(text)).toBe(v));
  it('refuses a bad duration', () => expect(() => parseDuration('soon', '--max-downtime')).toThrow(/--max-downtime/));
});

describe('loadConfig', () => {
  it('defaults to the embedded server, namespace default, storage under .ferry', () => {
    const cfg = loadConfig({}, {}, '/srv/x');
    expect(cfg.temporalAddress).toBeNull();
    expect(cfg.namespace).toBe('default');
    expect(cfg.storageDir).toBe('/srv/x/.ferry/storage');
  });
  it('reads the environment, and flags win over it', () => {
    const env = { FERRY_TEMPORAL_ADDRESS: 'temporal:7233', FERRY_NAMESPACE: 'ops', FERRY_STORAGE_DIR: '/mnt/san' };
    expect(loadConfig(env, {}, '/').temporalAddress).toBe('temporal:7233');
    expect(loadConfig(env, {}, '/').storageDir).toBe('/mnt/san');
    expect(loadConfig(env, { temporalAddress: 'other:7000', namespace: 'x' }, '/')).toMatchObject({ temporalAddress: 'other:7000', namespace: 'x' });
  });
  it('refuses a malformed address with the variable name', () => {
    expect(() => loadConfig({ FERRY_TEMPORAL_ADDRESS: 'nohostport' })).toThrow(/FERRY_TEMPORAL_ADDRESS/);
  });
});
