/**
 * The controller: the workflow worker on `ferry-control`. Workflows are deterministic and
 * hold no state outside Temporal's history, so a restarted controller resumes every
 * migration where it was.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { CONTROL_QUEUE } from '../common/names';
import { createAuditActivities } from '../activities/audit';
import type { AuditStore } from '../audit/types';
import { connectNative, installRuntime } from './runtime';
import type { TemporalTlsFiles } from '../common/temporal-tls';

export interface ControllerOptions {
  temporalAddress: string;
  /** Mutual TLS to the frontend (FERRY_TEMPORAL_TLS_*). */
  temporalTls?: TemporalTlsFiles | null;
  namespace: string;
  log?: (line: string) => void;
  /** A prebuilt bundle (tests build one and share it). */
  workflowBundle?: WorkflowBundleWithSourceMap;
  /** The audit trail's store: controller-side activities on ferry-control write to it. */
  audit: AuditStore;
}

export interface RunningController {
  taskQueue: string;
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export function workflowsPath(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'workflows', 'index.ts');
}

export async function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({ workflowsPath: workflowsPath(), logger: quietBundlerLogger });
}

const noop = (): void => undefined;
const quietBundlerLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: (m: string) => process.stderr.write(`${m}\n`), log: noop };

export async function startController(opts: ControllerOptions): Promise<RunningController> {
  installRuntime();
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const connection = await connectNative(opts.temporalAddress, opts.temporalTls);
  const worker = await Worker.create({
    connection,
    namespace: opts.namespace,
    taskQueue: CONTROL_QUEUE,
    workflowBundle: opts.workflowBundle ?? (await bundleWorkflows()),
    activities: createAuditActivities(opts.audit),
  });
  const done = worker.run().finally(() => connection.close());
  log(`ferry controller: polling ${CONTROL_QUEUE} on ${opts.temporalAddress}${opts.temporalTls ? ' (mTLS)' : ''} (pid ${process.pid})`);
  return {
    taskQueue: CONTROL_QUEUE,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}
