import { describe, expect, it } from 'vitest';
import { migrationOptionsFrom } from '../../src/cli/migration-options';
import { agentWaits, DEFAULT_AGENT_TIMEOUT_MS } from '../../src/workflows/agent-waits';

describe('agentWaits: how long steps wait for a host agent', () => {
  it('the default keeps the timeouts ferry has always used', () => {
    expect(agentWaits(undefined)).toEqual({
      preSwitch: { pickUpMs: 30_000, heartbeatMs: 15_000 },
      sourceAfterSwitch: { pickUpMs: 20_000, heartbeatMs: 10_000 },
      targetAfterSwitch: { heartbeatMs: 20_000 },
      cleanupMs: 20_000,
    });
    expect(agentWaits(DEFAULT_AGENT_TIMEOUT_MS)).toEqual(agentWaits(undefined));
  });

  it('scales with the setting, with floors that a busy host can meet', () => {
    const w = agentWaits(8000);
    expect(w.preSwitch).toEqual({ pickUpMs: 8000, heartbeatMs: 4000 });
    expect(w.sourceAfterSwitch.pickUpMs).toBe(5333);
    expect(w.sourceAfterSwitch.heartbeatMs).toBe(3000); // 8000/3 is below the 3 s floor
    expect(w.cleanupMs).toBe(10_000); // a live agent still gets 10 s to roll back
    const long = agentWaits(120_000);
    expect(long.preSwitch).toEqual({ pickUpMs: 120_000, heartbeatMs: 60_000 });
    expect(long.cleanupMs).toBe(80_000);
    // Below the minimum (only reachable past the edges' checks) it is raised, never zero.
    expect(agentWaits(1).preSwitch.pickUpMs).toBe(5000);
  });

  it('--agent-timeout is checked at the CLI', () => {
    expect(migrationOptionsFrom({ 'agent-timeout': '8s' }).options.agentTimeoutMs).toBe(8000);
    expect(migrationOptionsFrom({}).options.agentTimeoutMs).toBeUndefined();
    expect(() => migrationOptionsFrom({ 'agent-timeout': '2s' })).toThrow(/--agent-timeout: between 5s and 10m/);
    expect(() => migrationOptionsFrom({ 'agent-timeout': '1h' })).toThrow(/--agent-timeout: between 5s and 10m/);
    expect(() => migrationOptionsFrom({ 'agent-timeout': 'soon' })).toThrow(/--agent-timeout/);
  });
});
