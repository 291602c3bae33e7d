/** `ferry audit [--ticket T] [--vm V] [--host H] [--from T] [--to T] [--json|--jsonl]`: the audit trail. */
import { openAuditStore, type AuditAttempt } from '../../audit';
import { UsageError } from '../../common/errors';
import { formatMs } from '../../common/units';
import { int, parse, str } from '../args';
import { commonOptions, configFrom } from '../context';

export const help =
  'ferry audit [--ticket T] [--vm V] [--host H] [--evacuation ID] [--from TIME] [--to TIME] [--limit N] [--json|--jsonl] [--audit-db FILE | --audit-url URL]   every attempt of every migration';

function time(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(ms)) throw new UsageError(`--${name}: '${v}' is not an ISO-8601 time (e.g. 2024-05-14T09:00:00Z)`);
  return ms;
}

export function attemptText(a: AuditAttempt): string {
  const lines = [
    `${a.startedAt}  ${a.attemptId}  attempt ${a.attempt}${a.retryOf ? ` (retries ${a.retryOf})` : ''}  ${a.outcome}`,
    `    ${a.vm}: ${a.source} → ${a.target}, ${a.strategy}${a.ticket ? `, ticket ${a.ticket}` : ''}, asked by ${a.requestedBy ?? 'unknown'}${a.via ? ` via ${a.via}` : ''}`,
  ];
  if (a.reason) lines.push(`    why: ${a.reason}`);
  if (a.endedAt) lines.push(`    ended ${a.endedAt}${a.totalTimeMs !== null ? ` after ${formatMs(a.totalTimeMs)}` : ''}: ${a.outcomeReason ?? ''}`);
  for (const d of a.decisions.filter((x) => x.action !== 'continue')) lines.push(`    decision: ${d.reason}`);
  if (a.retriedBy.length) lines.push(`    retried by ${a.retriedBy.join(', ')}`);
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      ticket: { type: 'string' },
      vm: { type: 'string' },
      host: { type: 'string' },
      evacuation: { type: 'string' },
      from: { type: 'string' },
      to: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
      jsonl: { type: 'boolean' },
      'audit-db': { type: 'string' },
      'audit-url': { type: 'string' },
    },
    false,
  );
  const cfg = configFrom(values);
  if (values.json && values.jsonl) throw new UsageError('--json and --jsonl: choose one');
  const q = {
    ticket: str(values.ticket),
    vm: str(values.vm),
    host: str(values.host),
    evacuationId: str(values.evacuation),
    fromMs: time(str(values.from), 'from'),
    toMs: time(str(values.to), 'to'),
    limit: int(values.limit, 'limit', 1, 1000),
  };
  const store = await openAuditStore({ url: str(values['audit-url']) ?? cfg.auditUrl, file: str(values['audit-db']) ?? cfg.auditDb });
  try {
    const r = await store.query(q);
    if (values.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    else if (values.jsonl) {
      for (const a of r.attempts) process.stdout.write(`${JSON.stringify({ type: 'attempt', ...a })}\n`);
      for (const e of r.events) process.stdout.write(`${JSON.stringify({ type: 'event', ...e })}\n`);
    } else {
      for (const a of r.attempts) process.stdout.write(`${attemptText(a)}\n`);
      for (const e of r.events) process.stdout.write(`${e.at}  ${e.kind}  ${e.message}\n`);
      if (r.attempts.length === 0 && r.events.length === 0) process.stderr.write('no audit records match\n');
    }
    return 0;
  } finally {
    await store.close();
  }
}
