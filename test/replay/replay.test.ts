/**
 * Recorded histories of every workflow replay against the current bundle: a change that
 * breaks determinism for running migrations fails here (DeterminismViolationError).
 */
import fs from 'node:fs';
import path from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { HISTORY_DIR } from '../helpers/history';
import { installRuntime } from '../../src/workers/runtime';
import { workflowBundle } from '../helpers/cluster';

installRuntime();

const files = fs.readdirSync(HISTORY_DIR).filter((f) => f.endsWith('.json'));

describe('replay of recorded histories', () => {
  it('has recorded histories to replay', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  it.each(files)('%s replays deterministically', async (file) => {
    const history = historyFromJSON(JSON.parse(fs.readFileSync(path.join(HISTORY_DIR, file), 'utf8')));
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, `replay-${file}`);
  });
});
