/**
 * How long a migration's steps wait for a host agent, from one setting (`--agent-timeout`,
 * MigrationOptions.agentTimeoutMs, default 30 s). An agent cut off from Temporal shows as a
 * step no worker picks up (schedule-to-start) or as missed heartbeats; these bound how long
 * the migration waits before it rolls back (before the switch) or goes on without the source
 * (after it). Pure: workflow code.
 */
export const DEFAULT_AGENT_TIMEOUT_MS = 30_000;
/** Below this a busy host's heartbeat (sent every second, throttled by the SDK) could be missed. */
export const MIN_AGENT_TIMEOUT_MS = 5_000;
/** Longer than this, a dead host holds a rack evacuation's slot for too long to be useful. */
export const MAX_AGENT_TIMEOUT_MS = 10 * 60_000;
/** Heartbeats are sent each second: no heartbeat timeout below this. */
const MIN_HEARTBEAT_MS = 3_000;

export interface AgentWaits {
  /** A step before the switch: picked up within `pickUpMs`, a heartbeat every `heartbeatMs`. */
  preSwitch: { pickUpMs: number; heartbeatMs: number };
  /** The source's steps after the switch (PbData, push, release): the guest no longer needs it. */
  sourceAfterSwitch: { pickUpMs: number; heartbeatMs: number };
  /** The target's steps after the switch: retried without limit, so only the heartbeat. */
  targetAfterSwitch: { heartbeatMs: number };
  /** A cleanup step (rollback, abort, bandwidth): all attempts within this (at least 10 s: a live agent must finish a rollback). */
  cleanupMs: number;
}

export function agentWaits(agentTimeoutMs: number | undefined): AgentWaits {
  const t = agentTimeoutMs !== undefined && agentTimeoutMs > 0 ? Math.max(MIN_AGENT_TIMEOUT_MS, agentTimeoutMs) : DEFAULT_AGENT_TIMEOUT_MS;
  const hb = (ms: number) => Math.max(MIN_HEARTBEAT_MS, Math.round(ms));
  return {
    preSwitch: { pickUpMs: t, heartbeatMs: hb(t / 2) },
    sourceAfterSwitch: { pickUpMs: Math.round((t * 2) / 3), heartbeatMs: hb(t / 3) },
    targetAfterSwitch: { heartbeatMs: hb((t * 2) / 3) },
    cleanupMs: Math.max(10_000, Math.round((t * 2) / 3)),
  };
}
