/** Options shared by `ferry demo` and `ferry migrate` (CONTRACT.md). */
import type { MigrationOptions } from '../activities/types';
import { UsageError } from '../common/errors';
import { parseDuration, parseRate } from '../common/units';
import { MAX_AGENT_TIMEOUT_MS, MIN_AGENT_TIMEOUT_MS } from '../workflows/agent-waits';
import { STRATEGIES, SWITCH_RULES, defaultPbData, type StrategyName } from '../policy/types';
import { choice, int, str } from './args';

export const migrationOptionSpec = {
  strategy: { type: 'string' },
  bandwidth: { type: 'string' },
  'storage-bandwidth': { type: 'string' },
  'max-downtime': { type: 'string' },
  'max-iterations': { type: 'string' },
  pbdata: { type: 'string' },
  compression: { type: 'boolean' },
  'no-zero-elision': { type: 'boolean' },
  'fault-timeout': { type: 'string' },
  'switch-rule': { type: 'string' },
  'agent-timeout': { type: 'string' },
} as const;

export const MIGRATION_DEFAULTS = {
  strategy: 'pa-hybrid' as StrategyName,
  bandwidth: '32MiB/s',
  storageBandwidth: '1GiB/s',
  maxDowntime: '300ms',
  maxIterations: 30,
};

export function migrationOptionsFrom(values: Record<string, unknown>): { strategy: StrategyName; options: MigrationOptions } {
  const strategy = choice(values.strategy, 'strategy', STRATEGIES) ?? MIGRATION_DEFAULTS.strategy;
  const bandwidth = parseRate(str(values.bandwidth) ?? MIGRATION_DEFAULTS.bandwidth, '--bandwidth');
  const storage = parseRate(str(values['storage-bandwidth']) ?? MIGRATION_DEFAULTS.storageBandwidth, '--storage-bandwidth');
  if (bandwidth > 0 && bandwidth < 64 * 1024) throw new UsageError('--bandwidth: below 64KiB/s a migration never converges; use at least 64KiB/s (or 0 for uncapped)');
  const maxDowntimeMs = parseDuration(str(values['max-downtime']) ?? MIGRATION_DEFAULTS.maxDowntime, '--max-downtime');
  const maxIterations = int(values['max-iterations'], 'max-iterations', 1, 1000) ?? MIGRATION_DEFAULTS.maxIterations;
  const pbdata = choice(values.pbdata, 'pbdata', ['sync', 'async', 'off'] as const) ?? defaultPbData(strategy);
  const switchRule = choice(values['switch-rule'], 'switch-rule', SWITCH_RULES) ?? 'ferry';
  // Post-copy: a fault unanswered this long (emulated) / no progress this long (QEMU) = a lost link.
  const faultTimeout = str(values['fault-timeout']);
  const faultTimeoutMs = faultTimeout !== undefined ? parseDuration(faultTimeout, '--fault-timeout') : undefined;
  if (faultTimeoutMs !== undefined && faultTimeoutMs < 100) throw new UsageError('--fault-timeout: at least 100ms');
  // How long a step waits for an agent cut off from Temporal (workflows/agent-waits.ts).
  const agentTimeout = str(values['agent-timeout']);
  const agentTimeoutMs = agentTimeout !== undefined ? parseDuration(agentTimeout, '--agent-timeout') : undefined;
  if (agentTimeoutMs !== undefined && (agentTimeoutMs < MIN_AGENT_TIMEOUT_MS || agentTimeoutMs > MAX_AGENT_TIMEOUT_MS)) {
    throw new UsageError(`--agent-timeout: between ${MIN_AGENT_TIMEOUT_MS / 1000}s and ${MAX_AGENT_TIMEOUT_MS / 60000}m (a host's heartbeat is sent each second)`);
  }
  return {
    strategy,
    options: {
      bandwidthBytesPerSec: bandwidth,
      storageBandwidthBytesPerSec: storage,
      maxDowntimeMs,
      maxIterations,
      pbdata,
      compression: values.compression === true,
      zeroElision: values['no-zero-elision'] !== true,
      switchRule,
      ...(faultTimeoutMs !== undefined ? { faultTimeoutMs } : {}),
      ...(agentTimeoutMs !== undefined ? { agentTimeoutMs } : {}),
    },
  };
}

