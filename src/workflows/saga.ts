/**
 * The rollback half of a runbook: steps register their undo as they go; before the switch a
 * failure or a cancel runs them in reverse, each one tried even if another failed.
 */
import { ActivityFailure, CancellationScope, ChildWorkflowFailure } from '@temporalio/workflow';
import type { Phase } from './messages';

export interface Undo {
  what: string;
  run: () => Promise<unknown>;
}

export function failureMessage(err: unknown): string {
  let e: unknown = err;
  // Unwrap ActivityFailure / ChildWorkflowFailure to the application's own message.
  while (e instanceof ActivityFailure || e instanceof ChildWorkflowFailure) e = e.cause;
  if (e instanceof Error) {
    if (e.name === 'TimeoutFailure') return `timed out (${(err as Error).message})`;
    return e.message || e.name;
  }
  return String(e);
}

/** Why a migration is rolling back, in the words of its report. */
export function rollbackReason(cancelled: boolean, cancelRequest: { by?: string; reason?: string } | null, phase: Phase, err: unknown): string {
  return cancelled
    ? `cancelled by ${cancelRequest?.by ?? 'operator'}${cancelRequest?.reason ? ` (${cancelRequest.reason})` : ''} during ${phase}`
    : `${phase} failed: ${failureMessage(err)}`;
}

/** Run the undos, last registered first, not cancellable; returns what could not be undone. */
export async function runUndos(undos: Undo[]): Promise<string[]> {
  const errors: string[] = [];
  await CancellationScope.nonCancellable(async () => {
    for (const u of [...undos].reverse()) {
      try {
        await u.run();
      } catch (e) {
        errors.push(`${u.what}: ${failureMessage(e)}`);
      }
    }
  });
  return errors;
}
