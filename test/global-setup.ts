/**
 * One real Temporal dev server (in memory) for the whole test run, started from the binary
 * built from source. If it cannot start, every test fails with the reason; nothing skips.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import type { TestProject } from 'vitest/node';
import { FERRY_SEARCH_ATTRIBUTES } from '../src/common/search-attributes';
import { dynamicConfigFlags } from '../src/common/server-tuning';
import { ensureTemporalBinary } from '../src/common/temporal-bin';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    temporalBin: string;
    /** The audit trail (SQLite) every test controller of this run writes to. */
    auditDb: string;
  }
}

let env: TestWorkflowEnvironment | undefined;
let auditDir: string | undefined;

export async function setup(project: TestProject): Promise<void> {
  const bin = await ensureTemporalBinary();
  // The SDK picks a free port and hands it to the server; another process can take it in
  // between (as can the server's own internal services). Such a start is tried again.
  for (let attempt = 1; ; attempt++) {
    try {
      env = await TestWorkflowEnvironment.createLocal({
        server: {
          executable: { type: 'existing-path', path: bin },
          ip: '127.0.0.1',
          searchAttributes: FERRY_SEARCH_ATTRIBUTES,
          log: { format: 'pretty', level: 'error' },
          extraArgs: dynamicConfigFlags(),
        },
      });
      break;
    } catch (e) {
      if (attempt >= 3) throw e;
      process.stderr.write(`global setup: the Temporal dev server did not start (${(e as Error).message}); trying again\n`);
    }
  }
  project.provide('temporalAddress', env.address);
  project.provide('temporalBin', bin);
  auditDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-audit-'));
  project.provide('auditDb', path.join(auditDir, 'audit.db'));
}

export async function teardown(): Promise<void> {
  await env?.teardown();
  if (auditDir) fs.rmSync(auditDir, { recursive: true, force: true });
}
