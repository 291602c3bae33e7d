/**
 * User errors print one line and exit 2 at the CLI; they become non-retryable
 * ApplicationFailures in activities. Everything else is a bug or an infrastructure error
 * and keeps its stack.
 */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Error types that Temporal must not retry (see activities/errors.ts). */
export const NON_RETRYABLE_TYPES = ['UsageError', 'NotFound', 'InvalidInput', 'Conflict', 'InsufficientCapacity'] as const;
export type NonRetryableType = (typeof NON_RETRYABLE_TYPES)[number];
