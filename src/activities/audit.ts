/**
 * Controller-side activities on `ferry-control`: the audit trail. The migration workflow
 * calls them at the start and at the end of every attempt; the evacuation workflow records
 * its placement decisions. Idempotent on the attempt id / event id, so retries are safe.
 */
import type { AttemptEnd, AttemptStart, AuditEvent, AuditStore } from '../audit/types';

export function createAuditActivities(store: AuditStore) {
  return {
    async auditAttemptStarted(a: AttemptStart): Promise<{ attempt: number; retryOf: string | null }> {
      return store.recordStart(a);
    },
    async auditAttemptEnded(input: { start: AttemptStart; end: AttemptEnd }): Promise<void> {
      await store.recordEnd(input.end, input.start);
    },
    async auditEvents(events: AuditEvent[]): Promise<void> {
      for (const e of events) await store.recordEvent(e);
    },
  };
}

export type AuditActivities = ReturnType<typeof createAuditActivities>;
