import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { REPO_ROOT } from '../../src/common/paths';

export const HISTORY_DIR = path.join(REPO_ROOT, 'test', 'replay', 'histories');

/**
 * With FERRY_RECORD_HISTORIES=1, save the workflow's history for the replay tests
 * (`FERRY_RECORD_HISTORIES=1 npx vitest run test/integration`). Otherwise a no-op.
 */
export async function maybeRecordHistory(client: Client, workflowId: string, name: string): Promise<void> {
  if (process.env.FERRY_RECORD_HISTORIES !== '1') return;
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  fs.mkdirSync(HISTORY_DIR, { recursive: true });
  fs.writeFileSync(path.join(HISTORY_DIR, `${name}.json`), `${historyToJSON(history)}\n`);
}
