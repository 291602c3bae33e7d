import { ApplicationFailure } from '@temporalio/common';
import type { NonRetryableType } from '../common/errors';

/** A user error: non-retryable, with a message that reaches the operator unchanged. */
export function userError(type: NonRetryableType, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true, details: details === undefined ? [] : [details] });
}
