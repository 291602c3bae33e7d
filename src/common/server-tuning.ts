/**
 * Dynamic configuration ferry runs the Temporal server with — the dev server (as
 * `--dynamic-config-value` flags) and the test server alike.
 *
 * Why: every pre-copy round is one activity, and each round boundary crosses the history
 * service's transfer queue twice (the activity's completion schedules a workflow task; the
 * workflow's decision schedules the next round). The server reads each shard's transfer
 * queue at most `history.transferProcessorMaxPollRPS` times a second (default 20), so once
 * the limiter's burst is spent every leg waits up to 50 ms for its read — measured as two
 * ~45 ms legs per boundary on a dev server (one history shard) that had run for a minute.
 * ferry's queues carry tens of tasks a second, not thousands, so one partition per task
 * queue (no forwarding between partitions before a waiting poller is found) costs nothing.
 */
export const FERRY_DYNAMIC_CONFIG: Readonly<Record<string, number>> = {
  'history.transferProcessorMaxPollRPS': 1000,
  'matching.numTaskqueueReadPartitions': 1,
  'matching.numTaskqueueWritePartitions': 1,
};

/** The flags for `temporal server start-dev`. */
export function dynamicConfigFlags(): string[] {
  return Object.entries(FERRY_DYNAMIC_CONFIG).flatMap(([k, v]) => ['--dynamic-config-value', `${k}=${JSON.stringify(v)}`]);
}
