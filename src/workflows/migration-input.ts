/** What a migration is asked to do, and the checks it gets before anything moves. */
import { ApplicationFailure } from '@temporalio/workflow';
import type { MigrationOptions } from '../activities/types';
import { isStrategy, type StrategyName } from '../policy/types';
import { MAX_AGENT_TIMEOUT_MS, MIN_AGENT_TIMEOUT_MS } from './agent-waits';
import type { AttemptLink } from './audit';
import type { EngineName } from './engine';

export interface MigrationInput {
  vm: string;
  source: string;
  target: string;
  strategy: StrategyName;
  options: MigrationOptions;
  ticket?: string | null;
  requestedBy?: string | null;
  reason?: string | null;
  /** Audit trail: attempt number, the attempt this one retries, who asked (see ./audit). */
  audit?: AttemptLink;
  /**
   * Ignored by new runs (the engine is chosen from the hosts' facts); histories recorded
   * before the one runbook carry it and replay with it.
   */
  driver?: EngineName;
}

/** Bad input fails the workflow at once, typed InvalidInput: nothing was touched. */
export function validate(input: MigrationInput): void {
  const bad = (m: string): never => {
    throw ApplicationFailure.nonRetryable(m, 'InvalidInput');
  };
  if (!input || typeof input.vm !== 'string' || !input.vm) bad('vm is required');
  if (typeof input.source !== 'string' || !input.source) bad('source host is required');
  if (typeof input.target !== 'string' || !input.target) bad('target host is required');
  if (input.source === input.target) bad(`source and target are the same host (${input.source})`);
  if (!isStrategy(input.strategy)) bad(`unknown strategy '${String(input.strategy)}'`);
  if (input.driver !== undefined && input.driver !== 'emulated' && input.driver !== 'qemu') bad(`unknown driver '${String(input.driver)}'`);
  const o = input.options;
  if (!o) bad('options are required');
  if (!(o.maxIterations >= 1)) bad('maxIterations must be ≥ 1');
  // About 6 history events per iteration: Temporal ends a workflow at 51,200 events.
  if (!(o.maxIterations <= 1000)) bad('maxIterations must be ≤ 1000 (each iteration adds about 6 events to the migration history, which Temporal caps)');
  if (!(o.maxDowntimeMs >= 0)) bad('maxDowntimeMs must be ≥ 0');
  if (!['sync', 'async', 'off'].includes(o.pbdata)) bad(`pbdata must be sync, async or off`);
  if (o.agentTimeoutMs !== undefined && !(o.agentTimeoutMs >= MIN_AGENT_TIMEOUT_MS && o.agentTimeoutMs <= MAX_AGENT_TIMEOUT_MS)) {
    bad(`agentTimeoutMs must be between ${MIN_AGENT_TIMEOUT_MS} and ${MAX_AGENT_TIMEOUT_MS}`);
  }
}
