import { UsageError } from '../../common/errors';
import { HOST_ID_RE } from '../../common/names';
import { reportOf, resolveHandle, startMigration } from '../../client/migrations';
import { parse, str } from '../args';
import { commonOptions, configFrom, connectClient, say } from '../context';
import { reportText, watchProgress } from '../display';
import { migrationOptionSpec, migrationOptionsFrom } from '../migration-options';

export const help =
  'ferry migrate <vm> --to <host> [--strategy S] [--bandwidth R] [--storage-bandwidth R] [--max-downtime T] [--max-iterations N] [--pbdata sync|async|off] [--fault-timeout T] [--switch-rule ferry|paper] [--agent-timeout T] [--ticket T] [--wait] [--json]';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...commonOptions,
    ...migrationOptionSpec,
    to: { type: 'string' },
    from: { type: 'string' },
    ticket: { type: 'string' },
    'requested-by': { type: 'string' },
    reason: { type: 'string' },
    wait: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  const cfg = configFrom(values);
  const vm = positionals[0];
  if (!vm) throw new UsageError('migrate: name the VM to move');
  const target = str(values.to);
  if (!target || !HOST_ID_RE.test(target)) throw new UsageError('--to: required, the target host id');
  const { strategy, options } = migrationOptionsFrom(values);
  const { client, close } = await connectClient(cfg);
  try {
    const started = await startMigration(client, {
      vm,
      target,
      source: str(values.from),
      // Unchosen: the engine's default, decided where the source host is known.
      ...(values.strategy !== undefined ? { strategy } : {}),
      options,
      ticket: str(values.ticket) ?? null,
      requestedBy: str(values['requested-by']) ?? process.env.USER ?? null,
      reason: str(values.reason) ?? null,
    });
    say(`${started.created ? 'started' : 'already started (same ticket)'}: ${started.workflowId}/${started.runId}`);
    if (!values.wait) {
      if (values.json) process.stdout.write(`${JSON.stringify(started)}\n`);
      return 0;
    }
    const handle = resolveHandle(client, `${started.workflowId}/${started.runId}`);
    if (!values.json) await watchProgress(handle);
    const report = await reportOf(handle);
    process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${reportText(report)}\n`);
    return report.outcome === 'completed' ? 0 : 1;
  } finally {
    await close();
  }
}
