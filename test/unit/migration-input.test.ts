/** The checks a migration's input gets before anything moves (src/workflows/migration-input.ts). */
import { describe, expect, it } from 'vitest';
import { validate, type MigrationInput } from '../../src/workflows/migration-input';

function input(maxIterations: number): MigrationInput {
  return {
    vm: 'vm-1',
    source: 'a',
    target: 'b',
    strategy: 'pa-hybrid',
    options: { bandwidthBytesPerSec: 1, storageBandwidthBytesPerSec: 1, maxDowntimeMs: 300, maxIterations, pbdata: 'async', compression: false, zeroElision: true },
  };
}

describe('validate', () => {
  it('bounds maxIterations so a migration history stays under Temporal’s event limit', () => {
    expect(() => validate(input(30))).not.toThrow();
    expect(() => validate(input(1000))).not.toThrow();
    expect(() => validate(input(1001))).toThrow(/maxIterations must be ≤ 1000/);
    expect(() => validate(input(0))).toThrow(/maxIterations must be ≥ 1/);
    expect(() => validate(input(Number.NaN))).toThrow(/maxIterations must be ≥ 1/);
  });
});
