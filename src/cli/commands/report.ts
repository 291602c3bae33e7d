import { WorkflowFailedError } from '@temporalio/client';
import { UsageError } from '../../common/errors';
import { resolveHandle } from '../../client/migrations';
import type { MigrationReport } from '../../workflows/report';
import { parse } from '../args';
import { commonOptions, configFrom, connectClient } from '../context';
import { reportText } from '../display';

export const help = 'ferry report <id or vm> [--wait] [--json]   the final report of a migration';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...commonOptions, wait: { type: 'boolean' }, json: { type: 'boolean' } });
  const cfg = configFrom(values);
  const id = positionals[0];
  if (!id) throw new UsageError('report: name a migration id or a VM');
  const { client, close } = await connectClient(cfg);
  try {
    const handle = resolveHandle(client, id);
    const desc = await handle.describe();
    if (desc.status.name === 'RUNNING' && !values.wait) {
      throw new UsageError(`${desc.workflowId} is still running; use --wait, or \`ferry watch ${id}\``);
    }
    let report: MigrationReport;
    try {
      report = (await handle.result()) as MigrationReport;
    } catch (e) {
      if (e instanceof WorkflowFailedError) throw new UsageError(`${desc.workflowId} ended without a report: ${e.cause?.message ?? e.message}`);
      throw e;
    }
    process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${reportText(report)}\n`);
    return report.outcome === 'completed' ? 0 : 1;
  } finally {
    await close();
  }
}
