/** Fault bench runs split with --only merge into one table, scenarios in suite order. */
import { describe, expect, it } from 'vitest';
import { mergeFaultResults, type FaultSuiteResult, type TrialResult } from '../../src/bench/faults';

function trial(scenario: string, verdict: TrialResult['verdict'], recoverMs: number): TrialResult {
  return { scenario, trial: 1, seed: 1, verdict, expected: ['completed', 'rolled-back'], recoverMs, totalMs: recoverMs + 1000, fault: 'f', placement: {}, report: null, detail: '' };
}

function part(seed: number, trials: TrialResult[]): FaultSuiteResult {
  return { seed, startedAt: '2026-11-26T17:00:00Z', durationMs: 1000, rows: [], trials, environment: { shaping: null, machine: { cpus: 2, node: 'v20' } } };
}

describe('mergeFaultResults', () => {
  it('tabulates every trial of every part, in the suite order, and sums the run time', () => {
    const net = part(7, [trial('link-dead', 'rolled-back', 3000), trial('link-dead', 'rolled-back', 5000)]);
    const local = part(7, [trial('controller-switch', 'completed', 1000), trial('controller-switch', 'lost', 0), trial('controller-switch', 'completed', 3000)]);
    const m = mergeFaultResults([net, local]);
    expect(m.rows.map((r) => r.scenario)).toEqual(['controller-switch', 'link-dead']);
    expect(m.rows[0]).toMatchObject({ trials: 3, completed: 2, lost: 1, unexpected: 1, medianRecoverMs: 1000 });
    expect(m.rows[1]).toMatchObject({ trials: 2, rolledBack: 2, lost: 0, medianRecoverMs: 4000 });
    expect(m.durationMs).toBe(2000);
  });

  it('refuses parts run with different seeds', () => {
    expect(() => mergeFaultResults([part(1, []), part(2, [])])).toThrow(/different seeds \(1, 2\)/);
  });
});
