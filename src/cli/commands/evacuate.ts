/** `ferry evacuate <host…> [--to <host…>] [--max-parallel N] [--ticket T]`: move every VM off hosts. */
import { UsageError } from '../../common/errors';
import { HOST_ID_RE } from '../../common/names';
import { formatMs, parseRate } from '../../common/units';
import { evacuationHandle, startEvacuation } from '../../client/operations';
import { DEFAULT_LIMITS, PRIORITY } from '../../policy/placement';
import { evacuationQuery, type EvacuationSummary } from '../../workflows/evacuation-messages';
import { int, parse, str } from '../args';
import { commonOptions, configFrom, connectClient, say } from '../context';
import { migrationOptionSpec, migrationOptionsFrom } from '../migration-options';

export const help =
  'ferry evacuate <host…> [--to <host…>] [--max-parallel N] [--max-outbound N] [--max-inbound N] [--link-budget RATE] [--priority N] [--max-attempts N] [--ticket T] [--wait] [--json]   move every VM off hosts';

/** `--to a b c` takes every word up to the next option; also `--to a,b`. */
export function splitTo(argv: string[]): { rest: string[]; to: string[] } {
  const rest: string[] = [];
  const to: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--to' || a.startsWith('--to=')) {
      if (a.startsWith('--to=')) to.push(...a.slice(5).split(','));
      while (i + 1 < argv.length && !argv[i + 1]!.startsWith('-')) to.push(...argv[++i]!.split(','));
      continue;
    }
    rest.push(a);
  }
  return { rest, to: to.filter(Boolean) };
}

export function summaryText(s: EvacuationSummary): string {
  const lines = [`evacuation ${s.id} of ${s.hosts.join(', ')}: ${s.status} (${Object.entries(s.counts).map(([k, v]) => `${v} ${k}`).join(', ')}) in ${formatMs(s.totalTimeMs)}`];
  for (const v of s.vms) {
    lines.push(`  ${v.vm.padEnd(16)} ${v.source} → ${v.target ?? '–'}  ${v.outcome}  attempts ${v.attempts}  ${formatMs(v.timeMs)}  ${v.strategy}`);
    if (v.outcome !== 'completed') lines.push(`      ${v.reason}`);
  }
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const split = splitTo(argv);
  const { values, positionals } = parse(split.rest, {
    ...commonOptions,
    ...migrationOptionSpec,
    'max-parallel': { type: 'string' },
    'max-outbound': { type: 'string' },
    'max-inbound': { type: 'string' },
    'link-budget': { type: 'string' },
    priority: { type: 'string' },
    'max-attempts': { type: 'string' },
    ticket: { type: 'string' },
    'requested-by': { type: 'string' },
    reason: { type: 'string' },
    wait: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  const cfg = configFrom(values);
  if (positionals.length === 0) throw new UsageError('evacuate: name the host(s) to empty');
  for (const h of [...positionals, ...split.to]) if (!HOST_ID_RE.test(h)) throw new UsageError(`evacuate: '${h}' is not a valid host id`);
  const { strategy, options } = migrationOptionsFrom(values);
  const linkBudget = str(values['link-budget']);
  const limits = {
    maxParallel: int(values['max-parallel'], 'max-parallel', 1, 1000) ?? DEFAULT_LIMITS.maxParallel,
    maxOutboundPerHost: int(values['max-outbound'], 'max-outbound', 1, 100) ?? DEFAULT_LIMITS.maxOutboundPerHost,
    maxInboundPerHost: int(values['max-inbound'], 'max-inbound', 1, 100) ?? DEFAULT_LIMITS.maxInboundPerHost,
    linkBudgetBytesPerSec: linkBudget ? parseRate(linkBudget, '--link-budget') : 0,
  };
  const { client, close } = await connectClient(cfg);
  try {
    const started = await startEvacuation(client, {
      hosts: positionals,
      to: split.to.length ? split.to : null,
      limits,
      ...(values.strategy !== undefined ? { strategy } : {}),
      options,
      ticket: str(values.ticket) ?? null,
      requestedBy: str(values['requested-by']) ?? process.env.USER ?? null,
      reason: str(values.reason) ?? null,
      via: 'cli',
      priority: int(values.priority, 'priority', 0, 1000) ?? PRIORITY.evacuation,
      maxAttempts: int(values['max-attempts'], 'max-attempts', 1, 10),
    });
    say(`${started.created ? 'started' : 'already started (same ticket)'}: ${started.workflowId} (${started.hosts.join(', ')} → ${started.to.join(', ') || 'registered hosts'})`);
    if (!values.wait) {
      if (values.json) process.stdout.write(`${JSON.stringify(started)}\n`);
      return 0;
    }
    const handle = evacuationHandle(client, started.workflowId);
    const result = handle.result() as Promise<EvacuationSummary>;
    let done = false;
    void result.finally(() => (done = true)).catch(() => undefined);
    let last = '';
    while (!done && !values.json) {
      const s = await handle.query(evacuationQuery).catch(() => null);
      if (s) {
        const line = `${s.id}: ${Object.entries(s.counts).map(([k, v]) => `${v} ${k}`).join(', ')}`;
        if (line !== last) say(line);
        last = line;
      }
      await Promise.race([result.catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
    }
    const summary = await result;
    process.stdout.write(values.json ? `${JSON.stringify(summary, null, 2)}\n` : `${summaryText(summary)}\n`);
    return summary.status === 'completed' ? 0 : 1;
  } finally {
    await close();
  }
}
