/**
 * QEMU engine, both sides: what an agent with the qemu driver registers — its source-side
 * steps (qemu-source.ts) and target-side steps (qemu-target.ts) over one session registry,
 * qemuPause (qemu-common.ts) serving either role, and par-migrate's relay steps (qemu-relay.ts). The workflow imports its types from here.
 */
import { QemuSessions, type QemuContext } from './qemu-common';
import { createQemuRelayActivities, Relays, type QemuRelayActivities } from './qemu-relay';
import { createQemuSourceActivities, type QemuSourceActivities } from './qemu-source';
import { createQemuTargetActivities, type QemuTargetActivities } from './qemu-target';

export type { QemuContext } from './qemu-common';
export type { QemuCompletion, QemuIteration, QemuOutcome, QemuPassResult, QemuSourceActivities } from './qemu-source';
export type { QemuPrepareTargetInput, QemuTargetActivities } from './qemu-target';
export type QemuActivities = QemuSourceActivities & QemuTargetActivities & QemuRelayActivities;

export function createQemuActivities(ctx: QemuContext): QemuActivities {
  const sessions = new QemuSessions(ctx.hostId);
  const relays = new Relays();
  return { ...createQemuSourceActivities(ctx, sessions, relays), ...createQemuTargetActivities(ctx, sessions, relays), ...createQemuRelayActivities(ctx, relays, sessions) };
}
