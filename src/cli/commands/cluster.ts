import { UsageError } from '../../common/errors';
import path from 'node:path';
import { CertError, DEFAULT_CLIENT_NAMES, ensureClusterCerts } from '../../cluster/certs';
import { ClusterError, DEFAULT_CLUSTER_DIR, TLS_SUBDIR, down, status, up, type ClusterStatus } from '../../cluster/cluster';
import { PostgresError } from '../../cluster/postgres';
import { parse, str } from '../args';
import { say } from '../context';

export const help =
  'ferry cluster up|down|status [--dir DIR] [--json]   a production-like Temporal cluster on this machine (PostgreSQL + the four server services, built from source, the frontend requiring client certificates); `up` prints the frontend address for FERRY_TEMPORAL_ADDRESS\n' +
  '  ferry cluster certs [--dir DIR | --out CERTDIR] [--names a,b,…] [--server-names x,…] [--json]   the cluster CA and certificates (frontend, controller, operator, one per name: agents use their host id)';

const ACTIONS = ['up', 'down', 'status', 'certs'] as const;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { dir: { type: 'string' }, json: { type: 'boolean' }, out: { type: 'string' }, names: { type: 'string' }, 'server-names': { type: 'string' } });
  const [action, ...extra] = positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action)) throw new UsageError(`name an action: ${ACTIONS.join(', ')}`);
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const dir = str(values.dir) ?? DEFAULT_CLUSTER_DIR;
  const json = values.json === true;
  try {
    if (action === 'up') return await runUp(dir, json);
    if (action === 'down') return await runDown(dir, json);
    if (action === 'certs') return runCerts(str(values.out) ?? path.join(dir, TLS_SUBDIR), list(str(values.names)), list(str(values['server-names'])), json);
    return runStatus(dir, json);
  } catch (e) {
    if (e instanceof ClusterError || e instanceof PostgresError || e instanceof CertError) {
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
  if (r.status.tls) say(`ferry cluster: export FERRY_TEMPORAL_TLS_CA=${r.status.tls.ca} FERRY_TEMPORAL_TLS_CERT=${r.status.tls.cert} FERRY_TEMPORAL_TLS_KEY=${r.status.tls.key} FERRY_TEMPORAL_TLS_SERVER_NAME=${r.status.tls.serverName}`);
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

const list = (v: string | undefined): string[] => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : []);

/** Make the CA and the certificates that are missing; print where they are and how a client uses them. */
function runCerts(out: string, names: string[], serverNames: string[], json: boolean): number {
  const c = ensureClusterCerts(out, { clients: [...DEFAULT_CLIENT_NAMES, ...names], serverNames });
  if (json) {
    process.stdout.write(`${JSON.stringify(c, null, 2)}\n`);
    return 0;
  }
  say(`ferry cluster certs: ${c.created.length ? `made ${c.created.filter((f) => f.endsWith('.crt')).join(', ')}` : 'nothing to make'} in ${c.dir} (keys 0600, directory 0700)`);
  for (const [n, p] of Object.entries(c.clients)) {
    process.stdout.write(`${n}: FERRY_TEMPORAL_TLS_CA=${c.ca.crt} FERRY_TEMPORAL_TLS_CERT=${p.crt} FERRY_TEMPORAL_TLS_KEY=${p.key}\n`);
  }
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
  const lines = [`cluster ${s.dir}: ${s.running ? 'running' : 'not running'}; frontend ${s.address}${s.tls ? ' (mutual TLS)' : ''}, namespace ${s.namespace}`];
  for (const p of s.processes) lines.push(`  ${p.name.padEnd(10)} ${p.address.padEnd(16)} ${p.alive ? `alive (pid ${p.pid})` : 'dead'}`);
  return `${lines.join('\n')}\n`;
}
