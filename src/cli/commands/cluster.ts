import { UsageError } from '../../common/errors';
import { ClusterError, DEFAULT_CLUSTER_DIR, down, status, up, type ClusterStatus } from '../../cluster/cluster';
import { PostgresError } from '../../cluster/postgres';
import { parse, str } from '../args';
import { say } from '../context';

export const help =
  'ferry cluster up|down|status [--dir DIR] [--json]   a production-like Temporal cluster on this machine (PostgreSQL + the four server services, built from source); `up` prints the frontend address for FERRY_TEMPORAL_ADDRESS';

const ACTIONS = ['up', 'down', 'status'] as const;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { dir: { type: 'string' }, json: { type: 'boolean' } });
  const [action, ...extra] = positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action)) throw new UsageError(`name an action: ${ACTIONS.join(', ')}`);
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const dir = str(values.dir) ?? DEFAULT_CLUSTER_DIR;
  const json = values.json === true;
  try {
    if (action === 'up') return await runUp(dir, json);
    if (action === 'down') return await runDown(dir, json);
    return runStatus(dir, json);
  } catch (e) {
    if (e instanceof ClusterError || e instanceof PostgresError) {
      say(`ferry cluster ${action}: ${e.message}`);
      if (action === 'up') say(`ferry cluster: whatever did start is left running for a look; \`ferry cluster down${dir === DEFAULT_CLUSTER_DIR ? '' : ` --dir ${dir}`}\` stops it`);
      return 1;
    }
    throw e;
  }
}

async function runUp(dir: string, json: boolean): Promise<number> {
  const r = await up(dir, say);
  if (r.alreadyRunning) say(`ferry cluster: already running in ${r.status.dir}`);
  say(`ferry cluster: export FERRY_TEMPORAL_ADDRESS=${r.status.address}`);
  process.stdout.write(json ? `${JSON.stringify({ ...r.status, started: r.started, alreadyRunning: r.alreadyRunning, elapsedMs: r.elapsedMs }, null, 2)}\n` : `${r.status.address}\n`);
  return 0;
}

async function runDown(dir: string, json: boolean): Promise<number> {
  const r = await down(dir, say);
  if (!r) {
    say(`ferry cluster: no cluster in ${dir} (nothing to stop)`);
    if (json) process.stdout.write(`${JSON.stringify({ stopped: [] })}\n`);
    return 0;
  }
  if (json) process.stdout.write(`${JSON.stringify(r)}\n`);
  else say(`ferry cluster: stopped ${r.stopped.length ? r.stopped.join(', ') : 'nothing (nothing was running)'}; data kept in ${dir}`);
  return 0;
}

/** Exit 0 when every process is alive, 1 otherwise (or when there is no cluster). */
function runStatus(dir: string, json: boolean): number {
  const s = status(dir);
  if (json) {
    process.stdout.write(`${JSON.stringify(s ?? { dir, running: false, processes: [] }, null, 2)}\n`);
    return s?.running ? 0 : 1;
  }
  if (!s) {
    process.stdout.write(`no cluster in ${dir}: start one with \`ferry cluster up${dir === DEFAULT_CLUSTER_DIR ? '' : ` --dir ${dir}`}\`\n`);
    return 1;
  }
  process.stdout.write(statusText(s));
  return s.running ? 0 : 1;
}

export function statusText(s: ClusterStatus): string {
  const lines = [`cluster ${s.dir}: ${s.running ? 'running' : 'not running'}; frontend ${s.address}, namespace ${s.namespace}`];
  for (const p of s.processes) lines.push(`  ${p.name.padEnd(10)} ${p.address.padEnd(16)} ${p.alive ? `alive (pid ${p.pid})` : 'dead'}`);
  return `${lines.join('\n')}\n`;
}
