import { UsageError } from '../../common/errors';
import { resolveHandle } from '../../client/migrations';
import { progressQuery } from '../../workflows/messages';
import { parse } from '../args';
import { commonOptions, configFrom, connectClient } from '../context';
import { progressLine, watchProgress } from '../display';

export const help = 'ferry status [<id or vm>] [--json] · ferry watch <id or vm>   running and recent migrations, or one live';

export async function run(argv: string[], watch = false): Promise<number> {
  const { values, positionals } = parse(argv, { ...commonOptions, json: { type: 'boolean' }, limit: { type: 'string' } });
  const cfg = configFrom(values);
  const id = positionals[0];
  if (watch && !id) throw new UsageError('watch: name a migration id or a VM');
  const { client, close } = await connectClient(cfg);
  try {
    if (id) {
      const handle = resolveHandle(client, id);
      if (watch) {
        await watchProgress(handle, process.stderr);
        const desc = await handle.describe();
        process.stderr.write(`${desc.workflowId}: ${desc.status.name.toLowerCase()}; \`ferry report ${id}\` for the report\n`);
        return 0;
      }
      const desc = await handle.describe();
      const progress = await handle.query(progressQuery).catch(() => null);
      if (values.json) process.stdout.write(`${JSON.stringify({ workflowId: desc.workflowId, runId: desc.runId, status: desc.status.name, progress }, null, 2)}\n`);
      else process.stdout.write(`${desc.workflowId}/${desc.runId} ${desc.status.name.toLowerCase()}${progress ? `\n  ${progressLine(progress)}` : ''}\n`);
      return 0;
    }
    const rows: { workflowId: string; runId: string; status: string; startTime: string; phase: unknown; vm: unknown; source: unknown; target: unknown; strategy: unknown; ticket: unknown }[] = [];
    for await (const wf of client.workflow.list({ query: `WorkflowType = 'migrationWorkflow'` })) {
      const sa = wf.searchAttributes as Record<string, unknown[] | undefined>;
      rows.push({
        workflowId: wf.workflowId,
        runId: wf.runId,
        status: wf.status.name.toLowerCase(),
        startTime: wf.startTime.toISOString(),
        phase: sa.Phase?.[0] ?? null,
        vm: sa.VmId?.[0] ?? null,
        source: sa.SourceHost?.[0] ?? null,
        target: sa.TargetHost?.[0] ?? null,
        strategy: sa.Strategy?.[0] ?? null,
        ticket: sa.TicketId?.[0] ?? null,
      });
      if (rows.length >= 50) break;
    }
    if (values.json) process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    else for (const r of rows) process.stdout.write(`${r.startTime}  ${r.workflowId}  ${r.status}  ${r.phase ?? ''}  ${r.source ?? '?'}→${r.target ?? '?'}  ${r.strategy ?? ''}${r.ticket ? `  ticket ${r.ticket}` : ''}\n`);
    return 0;
  } finally {
    await close();
  }
}
