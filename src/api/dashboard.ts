/**
 * The operator dashboard at /ui, served by the API's listener on the API's own data and auth.
 *
 *   GET  /ui, /ui/<file>                  the page (src/api/ui) and the vega / vega-lite bundles
 *                                         from node_modules: no data, so no token; works offline
 *   POST /ui/login   {token}              checks the token; sets it as an HttpOnly, SameSite=Strict
 *                                         cookie that the API then accepts (auth.ts authorizeRequest)
 *   POST /ui/logout                       clears that cookie
 *
 * and the read/write routes the page needs beyond the ticketing API, added to the API's own
 * router (same token scopes, same errors):
 *
 *   GET  /v1/session                      who the token is: {name, scope}, the Temporal UI's address
 *   GET  /v1/migrations?vm=&host=&ticket=&strategy=&outcome=&limit=   running and recent, live progress
 *   GET  /v1/migrations/:id/timeline      the Phase attribute's changes, from the workflow history
 *   POST /v1/migrations/:id/force-postcopy {requestedBy}
 *   POST /v1/migrations/:id/bandwidth     {requestedBy, rate}   ("8MiB/s"; "0" = uncapped)
 *   GET  /v1/evacuations?ticket=&limit=   running and recent evacuations
 */
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { UsageError } from '../common/errors';
import { HOST_ID_RE, VM_NAME_RE } from '../common/names';
import { REPO_ROOT } from '../common/paths';
import { parseRate } from '../common/units';
import { resolveHandle } from '../client/migrations';
import { STRATEGIES } from '../policy/types';
import { evacuationQuery } from '../workflows/evacuation-messages';
import { forcePostcopyUpdate, progressQuery, setBandwidthUpdate, type Progress } from '../workflows/messages';
import { authorize, type ApiToken, type Scope, CSRF_HEADER, SESSION_COOKIE } from './auth';

const UI_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'ui');
const VENDOR: Record<string, string> = {
  'vega.min.js': path.join(REPO_ROOT, 'node_modules', 'vega', 'build', 'vega.min.js'),
  'vega-lite.min.js': path.join(REPO_ROOT, 'node_modules', 'vega-lite', 'build', 'vega-lite.min.js'),
};
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};
/** vega compiles its expressions with Function(): 'unsafe-eval' for scripts, nothing from elsewhere. */
const CSP =
  "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const TICKET_RE = /^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,127}$/;
const OUTCOMES = ['running', 'completed', 'rolled-back', 'failed'] as const;
const LIST_LIMIT = 50;

export interface DashboardOptions {
  client: Client;
  tokens: readonly ApiToken[];
  /** Base URL of the Temporal UI for the workflow links; default FERRY_TEMPORAL_UI_URL, else the frontend's host at port + 1000 (the dev server's UI). */
  temporalUiUrl?: string | null;
}

type Result = { status: number; body: unknown };
type Ctx = { req: http.IncomingMessage; url: URL; params: string[]; token: ApiToken };

export interface DashboardRoute {
  method: 'GET' | 'POST';
  path: RegExp;
  scope: Scope;
  handler: (ctx: Ctx) => Promise<Result>;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(`${JSON.stringify(body)}\n`);
}

async function jsonBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > 64 * 1024) throw new UsageError('body: larger than 64KiB');
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`body: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UsageError('body: must be a JSON object');
  return v as Record<string, unknown>;
}

function requestedBy(b: Record<string, unknown>, token: ApiToken): string {
  const by = b.requestedBy;
  if (by === undefined) return `dashboard:${token.name}`;
  if (typeof by !== 'string' || by.length === 0 || by.length > 200) throw new UsageError('requestedBy: a non-empty string of at most 200 characters');
  return by;
}

function param(url: URL, name: string, re: RegExp, what: string): string | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === '') return undefined;
  if (!re.test(v)) throw new UsageError(`${name}: must be ${what}`);
  return v;
}

function limitParam(url: URL): number {
  const v = url.searchParams.get('limit');
  if (v === null || v === '') return LIST_LIMIT;
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 500) throw new UsageError('limit: must be 1 to 500');
  return Number(v);
}

function attr(sa: Record<string, unknown[] | undefined> | undefined, key: string): string | null {
  const v = sa?.[key]?.[0];
  return typeof v === 'string' ? v : null;
}

function eventMs(t: { seconds?: unknown; nanos?: number | null } | null | undefined): number | null {
  if (!t || t.seconds === undefined || t.seconds === null) return null;
  return Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
}

function temporalUiBase(opts: DashboardOptions): string {
  if (opts.temporalUiUrl) return opts.temporalUiUrl.replace(/\/$/, '');
  if (process.env.FERRY_TEMPORAL_UI_URL) return process.env.FERRY_TEMPORAL_UI_URL.replace(/\/$/, '');
  const address = String((opts.client.connection as unknown as { options?: { address?: string } }).options?.address ?? '127.0.0.1:7233');
  const m = /^(.*):(\d+)$/.exec(address);
  return m ? `http://${m[1]}:${Number(m[2]) + 1000}` : `http://${address}`;
}

/** The routes the page needs besides the ticketing API's, for the API's router. */
export function dashboardRoutes(opts: DashboardOptions): DashboardRoute[] {
  const { client } = opts;
  // Read when a route runs: a client built without options (a unit test's stub) still mounts the routes.
  const ns = (): string => client.options?.namespace ?? 'default';
  return [
    {
      method: 'GET',
      path: /^\/v1\/session$/,
      scope: 'read',
      handler: async ({ token }) => ({ status: 200, body: { name: token.name, scope: token.scope, namespace: ns(), temporalUi: temporalUiBase(opts) } }),
    },
    {
      method: 'GET',
      path: /^\/v1\/migrations\/?$/,
      scope: 'read',
      handler: async ({ url }) => {
        const vm = param(url, 'vm', VM_NAME_RE, 'a VM name');
        const host = param(url, 'host', HOST_ID_RE, 'a host id');
        const ticket = param(url, 'ticket', TICKET_RE, 'a ticket id');
        const strategy = param(url, 'strategy', new RegExp(`^(${STRATEGIES.join('|')})$`), `one of ${STRATEGIES.join(', ')}`);
        const outcome = param(url, 'outcome', new RegExp(`^(${OUTCOMES.join('|')})$`), `one of ${OUTCOMES.join(', ')}`);
        const limit = limitParam(url);
        // Every value is checked against its pattern above: none can close the quotes.
        const terms = [`WorkflowType = 'migrationWorkflow'`];
        if (vm) terms.push(`VmId = '${vm}'`);
        if (host) terms.push(`(SourceHost = '${host}' OR TargetHost = '${host}')`);
        if (ticket) terms.push(`TicketId = '${ticket.replace(/'/g, "\\'")}'`);
        if (strategy) terms.push(`Strategy = '${strategy}'`);
        if (outcome === 'running') terms.push(`ExecutionStatus = 'Running'`);
        else if (outcome) terms.push(`Phase = '${outcome}'`);
        const rows: Record<string, unknown>[] = [];
        for await (const wf of client.workflow.list({ query: terms.join(' AND '), pageSize: limit })) {
          const sa = wf.searchAttributes as Record<string, unknown[] | undefined>;
          rows.push({
            id: wf.workflowId,
            runId: wf.runId,
            vm: attr(sa, 'VmId') ?? wf.workflowId.replace(/^migrate-/, ''),
            source: attr(sa, 'SourceHost'),
            target: attr(sa, 'TargetHost'),
            strategy: attr(sa, 'Strategy'),
            ticket: attr(sa, 'TicketId'),
            phase: attr(sa, 'Phase'),
            status: wf.status.name.toLowerCase(),
            startedAt: wf.startTime.toISOString(),
            closedAt: wf.closeTime?.toISOString() ?? null,
            progress: null as Progress | null,
          });
          if (rows.length >= limit) break;
        }
        // Live figures of the running ones, from their progress query.
        await Promise.all(
          rows
            .filter((r) => r.status === 'running')
            .map(async (r) => {
              const p = await client.workflow.getHandle(r.id as string, r.runId as string).query(progressQuery).catch(() => null);
              if (p) {
                const { iterations: _i, ...rest } = p;
                r.progress = rest;
                r.phase = p.phase;
              }
            }),
        );
        return { status: 200, body: { migrations: rows } };
      },
    },
    {
      method: 'GET',
      path: /^\/v1\/migrations\/([^/]+(?:\/[0-9a-f-]{36})?)\/timeline$/,
      scope: 'read',
      handler: async ({ params }) => {
        const handle = resolveHandle(client, params[0]!);
        const desc = await handle.describe();
        const history = await client.workflow.getHandle(desc.workflowId, desc.runId).fetchHistory();
        const startMs = desc.startTime.getTime();
        const changes: { phase: string; atMs: number }[] = [];
        for (const ev of history.events ?? []) {
          const payload = ev.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.Phase;
          if (!payload?.data) continue;
          const v = JSON.parse(Buffer.from(payload.data).toString('utf8')) as unknown;
          const phase = Array.isArray(v) ? v[0] : v;
          const at = eventMs(ev.eventTime as { seconds?: unknown; nanos?: number | null } | null);
          if (typeof phase === 'string' && at !== null) changes.push({ phase, atMs: at - startMs });
        }
        const endMs = desc.closeTime ? desc.closeTime.getTime() - startMs : Date.now() - startMs;
        const phases = [{ phase: 'preparing', atMs: 0 }, ...changes].map((c, i, all) => ({ phase: c.phase, startMs: c.atMs, endMs: all[i + 1]?.atMs ?? endMs }));
        return { status: 200, body: { id: desc.workflowId, runId: desc.runId, status: desc.status.name.toLowerCase(), phases } };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/migrations\/(.+)\/force-postcopy$/,
      scope: 'write',
      handler: async ({ req, params, token }) => {
        const b = await jsonBody(req);
        const handle = resolveHandle(client, params[0]!);
        const r = await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: requestedBy(b, token) }] });
        return { status: 202, body: { id: handle.workflowId, ...r } };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/migrations\/(.+)\/bandwidth$/,
      scope: 'write',
      handler: async ({ req, params, token }) => {
        const b = await jsonBody(req);
        requestedBy(b, token);
        if (typeof b.rate !== 'string' && typeof b.rate !== 'number') throw new UsageError('rate: required, e.g. "8MiB/s" (0 = uncapped)');
        const rate = typeof b.rate === 'number' ? b.rate : /^\s*0\s*$/.test(b.rate) ? 0 : parseRate(b.rate, 'rate');
        const handle = resolveHandle(client, params[0]!);
        const r = await handle.executeUpdate(setBandwidthUpdate, { args: [rate] });
        return { status: 200, body: { id: handle.workflowId, ...r } };
      },
    },
    {
      method: 'GET',
      path: /^\/v1\/evacuations\/?$/,
      scope: 'read',
      handler: async ({ url }) => {
        const ticket = param(url, 'ticket', TICKET_RE, 'a ticket id');
        const limit = limitParam(url);
        const terms = [`WorkflowType = 'evacuationWorkflow'`];
        if (ticket) terms.push(`TicketId = '${ticket.replace(/'/g, "\\'")}'`);
        const rows: Record<string, unknown>[] = [];
        for await (const wf of client.workflow.list({ query: terms.join(' AND '), pageSize: limit })) {
          const memo = (wf.memo ?? {}) as { hosts?: string[]; ticket?: string | null; requestedBy?: string | null; reason?: string | null };
          rows.push({
            id: wf.workflowId,
            runId: wf.runId,
            status: wf.status.name.toLowerCase(),
            hosts: memo.hosts ?? [],
            ticket: memo.ticket ?? null,
            requestedBy: memo.requestedBy ?? null,
            reason: memo.reason ?? null,
            startedAt: wf.startTime.toISOString(),
            closedAt: wf.closeTime?.toISOString() ?? null,
            counts: null as Record<string, number> | null,
          });
          if (rows.length >= limit) break;
        }
        await Promise.all(
          rows
            .filter((r) => r.status === 'running')
            .map(async (r) => {
              const s = await client.workflow.getHandle(r.id as string).query(evacuationQuery).catch(() => null);
              if (s) r.counts = s.counts;
            }),
        );
        return { status: 200, body: { evacuations: rows } };
      },
    },
  ];
}

function serveFile(res: http.ServerResponse, file: string, head: boolean): void {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch {
    sendJson(res, 404, { error: `no such dashboard file ${path.basename(file)}` });
    return;
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'content-length': String(data.length),
    'cache-control': 'no-cache',
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  });
  res.end(head ? undefined : data);
}

/** The session cookie; `Secure` when the listener speaks HTTPS. */
function sessionCookie(req: http.IncomingMessage, value: string, maxAge: number | null): string {
  const secure = (req.socket as { encrypted?: boolean }).encrypted === true;
  return `${SESSION_COOKIE}=${encodeURIComponent(value)}; Path=/; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}${maxAge === null ? '' : `; Max-Age=${maxAge}`}`;
}

/**
 * Serve /ui's files, login and logout; false when the path is not the dashboard's (the API
 * routes it). The files hold no data; every figure the page shows comes from the API.
 */
export async function serveDashboard(req: http.IncomingMessage, res: http.ServerResponse, pathname: string, tokens: readonly ApiToken[]): Promise<boolean> {
  if (pathname !== '/ui' && !pathname.startsWith('/ui/')) return false;
  const method = req.method ?? 'GET';
  if (pathname === '/ui/login' || pathname === '/ui/logout') {
    if (method !== 'POST') {
      sendJson(res, 405, { error: `${method} is not allowed on ${pathname}` }, { allow: 'POST' });
      return true;
    }
    // Only the page's own script sends this header: another site cannot log a browser in or out.
    if (req.headers[CSRF_HEADER] !== '1') {
      sendJson(res, 403, { error: `${pathname} needs the ${CSRF_HEADER}: 1 header` });
      return true;
    }
    if (pathname === '/ui/logout') {
      sendJson(res, 200, { ok: true }, { 'set-cookie': sessionCookie(req, '', 0) });
      return true;
    }
    let body: Record<string, unknown>;
    try {
      body = await jsonBody(req);
    } catch (e) {
      sendJson(res, 400, { error: (e as Error).message, field: 'body' });
      return true;
    }
    const token = typeof body.token === 'string' ? body.token.trim() : '';
    if (!/^\S+$/.test(token)) {
      sendJson(res, 400, { error: 'token: required', field: 'token' });
      return true;
    }
    const auth = authorize(`Bearer ${token}`, tokens, 'read');
    if (!auth.ok) {
      sendJson(res, auth.status, { error: auth.message });
      return true;
    }
    // A session cookie: gone when the browser closes.
    sendJson(res, 200, { name: auth.token.name, scope: auth.token.scope }, { 'set-cookie': sessionCookie(req, token, null) });
    return true;
  }
  if (method !== 'GET' && method !== 'HEAD') {
    sendJson(res, 405, { error: `${method} is not allowed on ${pathname}` }, { allow: 'GET' });
    return true;
  }
  if (pathname === '/ui') {
    res.writeHead(302, { location: '/ui/' });
    res.end();
    return true;
  }
  const name = pathname.slice('/ui/'.length) || 'index.html';
  if (name.startsWith('vendor/')) {
    const file = VENDOR[name.slice('vendor/'.length)];
    if (file) serveFile(res, file, method === 'HEAD');
    else sendJson(res, 404, { error: `no such dashboard file ${name}` });
    return true;
  }
  if (!/^[a-z0-9-]+\.(html|js|css|svg)$/.test(name)) {
    sendJson(res, 404, { error: `no such dashboard file ${name}` });
    return true;
  }
  serveFile(res, path.join(UI_DIR, name), method === 'HEAD');
  return true;
}
