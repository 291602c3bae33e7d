/**
 * `ferry` entry: one module per command. User errors print one line and exit 2; anything
 * else is a bug or an outage and keeps its stack.
 */
import { UsageError } from '../common/errors';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { ConflictError, NotFoundError } from '../client/migrations';
import { TemporalBinaryError } from '../common/temporal-bin';

type Command = { help: string; run: (argv: string[]) => Promise<number> };

const commands: Record<string, () => Promise<Command>> = {
  setup: () => import('./commands/setup'),
  server: () => import('./commands/server'),
  cluster: () => import('./commands/cluster'),
  controller: () => import('./commands/controller'),
  agent: () => import('./commands/agent'),
  inventory: () => import('./commands/inventory'),
  demo: () => import('./commands/demo'),
  bench: () => import('./commands/bench'),
  vm: () => import('./commands/vm'),
  migrate: () => import('./commands/migrate'),
  status: () => import('./commands/status'),
  watch: async () => {
    const m = await import('./commands/status');
    return { help: m.help, run: (argv: string[]) => m.run(argv, true) };
  },
  report: () => import('./commands/report'),
  evacuate: () => import('./commands/evacuate'),
  audit: () => import('./commands/audit'),
  cancel: () => control('cancel'),
  'force-postcopy': () => control('force-postcopy'),
  'set-bandwidth': () => control('set-bandwidth'),
};

async function control(op: 'cancel' | 'force-postcopy' | 'set-bandwidth'): Promise<Command> {
  const m = await import('./commands/control');
  return { help: m.help, run: (argv: string[]) => m.run(argv, op) };
}

async function usage(): Promise<string> {
  const lines = ['usage: ferry <command> [options]', ''];
  for (const load of Object.values(commands)) lines.push(`  ${(await load()).help}`);
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${await usage()}\n`);
    return name ? 0 : 2;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`ferry: unknown command '${name}' (try: ${Object.keys(commands).join(', ')})\n`);
    return 2;
  }
  try {
    const cmd = await load();
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${cmd.help}\n`);
      return 0;
    }
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`ferry ${name}: ${e.message}\n`);
      return 2;
    }
    if (e instanceof WorkflowFailedError) {
      process.stderr.write(`ferry ${name}: ${(e.cause?.cause as Error | undefined)?.message ?? e.cause?.message ?? e.message}\n`);
      return 1;
    }
    if (e instanceof WorkflowNotFoundError) {
      process.stderr.write(`ferry ${name}: no such migration (${e.workflowId ?? e.message})\n`);
      return 1;
    }
    if (e instanceof TemporalBinaryError || e instanceof ConflictError || e instanceof NotFoundError) {
      process.stderr.write(`ferry ${name}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}
