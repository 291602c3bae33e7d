/**
 * Emulated engine, both sides: what an agent with the emulated driver registers — its
 * source-side steps (emulated-source.ts) and target-side steps (emulated-target.ts) over one
 * session registry, so one agent can be the source of some migrations and the target of others.
 */
import { EmulatedSessions, type EmulatedContext } from './emulated-sessions';
import { createEmulatedSourceActivities, type EmulatedSourceActivities } from './emulated-source';
import { createEmulatedTargetActivities, type EmulatedTargetActivities } from './emulated-target';

export type { EmulatedContext } from './emulated-sessions';
/** The former name of EmulatedContext. */
export type MigrationContext = EmulatedContext;
export type { EmulatedSourceActivities } from './emulated-source';
export type { EmulatedTargetActivities } from './emulated-target';
export type EmulatedActivities = EmulatedSourceActivities & EmulatedTargetActivities;

export function createEmulatedActivities(ctx: EmulatedContext): EmulatedActivities {
  const sessions = new EmulatedSessions(ctx.hostId);
  return { ...createEmulatedSourceActivities(ctx, sessions), ...createEmulatedTargetActivities(ctx, sessions) };
}
