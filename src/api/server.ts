/**
 * The HTTP API for ticketing systems (CONTRACT.md), served by `ferry controller --listen`.
 *
 *   POST /v1/migrations                 {vm, target?, strategy?, ticket, requestedBy, reason, options?}
 *   GET  /v1/migrations/:id             status, progress, report, audit records
 *   POST /v1/migrations/:id/cancel      {requestedBy, reason?}
 *   POST /v1/migrations/:id/retry       {requestedBy, reason, target?}
 *   POST /v1/evacuations                {hosts, to?, maxParallel?, …, ticket, requestedBy, reason}
 *   GET  /v1/evacuations/:id
 *   POST /v1/evacuations/:id/cancel     {requestedBy, reason?, vms?}
 *   GET  /v1/audit?ticket=|vm=|host=|evacuation=&from=&to=&limit=
 *   GET  /v1/openapi.json · GET /healthz                     (no token)
 *   GET  /metrics                       (no token, or FERRY_METRICS_TOKEN when set)
 *
 * Every response carries an `X-Request-Id`. Errors are JSON `{error, field?, requestId}`: 400
 * names the bad field, 401 without a valid token, 403 for a read token on a write, 404
 * unknown migration/VM/route, 409 conflicts (the VM is already migrating under another
 * ticket, cancel after the switch, nothing to retry). A 500 says nothing but its request id:
 * the error itself goes to the controller's log under that id.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { Client } from '@temporalio/client';
import type { Registry } from 'prom-client';
import type { AuditStore } from '../audit/types';
import { UsageError } from '../common/errors';
import { migrationWorkflowId } from '../common/names';
import { findByTicket, resolveHandle, startMigration } from '../client/migrations';
import { evacuationHandle, placeVm, retryMigration, startEvacuation } from '../client/operations';
import { listenAddress, splitListen, writeMetrics } from '../metrics/http';
import type { StrategyName } from '../policy/types';
import { cancelQueuedUpdate, evacuationQuery } from '../workflows/evacuation-messages';
import { cancelUpdate, progressQuery } from '../workflows/messages';
import type { MigrationReport } from '../workflows/report';
import { createApiListener, type ApiTlsFiles } from '../security/https';
import { API_TOKEN_REQUIRED, authorizeRequest, type ApiToken, type Scope } from './auth';
import { dashboardRoutes, serveDashboard } from './dashboard';
import { check, HttpError, mapError, optionsFrom, rate, readBody, RETRY_AFTER_S, send, timeParam, validators, type OptionsBody } from './requests';
import { openApiDocument } from './schemas';

export interface ApiOptions {
  client: Client;
  store: AuditStore;
  tokens: ApiToken[];
  /** HOST:PORT (port 0 = any). */
  listen: string;
  /** The controller's Prometheus registry, served at /metrics. */
  metrics?: Registry | null;
  /** When set, /metrics needs `Authorization: Bearer <it>` (FERRY_METRICS_TOKEN). */
  metricsToken?: string | null;
  /** HTTPS (src/security/https.ts); null = plain HTTP. */
  tls?: ApiTlsFiles | null;
  /** The Temporal UI the dashboard links workflows to (default: see DashboardOptions). */
  temporalUiUrl?: string | null;
  log?: (line: string) => void;
}

export interface RunningApi {
  address: string;
  url: string;
  close(): Promise<void>;
}

type Handler = (ctx: { req: http.IncomingMessage; url: URL; params: string[]; token: ApiToken }) => Promise<{ status: number; body: unknown }>;

interface Route {
  method: 'GET' | 'POST';
  path: RegExp;
  scope: Scope;
  handler: Handler;
}

export function createApiHandler(opts: ApiOptions): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const { client, store } = opts;
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));

  const migrationView = async (id: string): Promise<unknown> => {
    const handle = resolveHandle(client, id);
    const desc = await handle.describe();
    const status = desc.status.name.toLowerCase();
    const sa = desc.searchAttributes as Record<string, unknown[] | undefined>;
    const progress = desc.status.name === 'RUNNING' ? await handle.query(progressQuery).catch(() => null) : null;
    let report: MigrationReport | null = null;
    let failure: string | null = null;
    if (desc.status.name === 'COMPLETED') report = (await handle.result()) as MigrationReport;
    else if (desc.status.name !== 'RUNNING') failure = await handle.result().then(() => null, (e: Error) => (e.cause as Error | undefined)?.message ?? e.message);
    const vm = (sa.VmId?.[0] as string | undefined) ?? desc.workflowId.replace(/^migrate-/, '');
    const audit = await store.query({ vm, limit: 100 });
    return {
      id: desc.workflowId,
      runId: desc.runId,
      migration: `${desc.workflowId}/${desc.runId}`,
      status,
      vm,
      source: sa.SourceHost?.[0] ?? null,
      target: sa.TargetHost?.[0] ?? null,
      strategy: sa.Strategy?.[0] ?? null,
      phase: sa.Phase?.[0] ?? null,
      ticket: sa.TicketId?.[0] ?? null,
      startedAt: desc.startTime.toISOString(),
      closedAt: desc.closeTime?.toISOString() ?? null,
      progress,
      report,
      failure,
      attempts: audit.attempts.filter((a) => a.migrationId === desc.workflowId),
    };
  };

  const routes: Route[] = [
    {
      method: 'POST',
      path: /^\/v1\/migrations\/?$/,
      scope: 'write',
      handler: async ({ req, token }) => {
        const b = check<{ vm: string; target?: string; strategy?: StrategyName; ticket: string; requestedBy: string; reason: string; options?: OptionsBody }>(
          validators.createMigration,
          await readBody(req),
          'body',
        );
        const workflowId = migrationWorkflowId(b.vm);
        const existing = await findByTicket(client, workflowId, b.ticket);
        if (existing) return { status: 200, body: { id: workflowId, runId: existing, migration: `${workflowId}/${existing}`, vm: b.vm, ticket: b.ticket, created: false } };
        const strategy = b.strategy;
        const options = optionsFrom(strategy ?? 'pa-hybrid', b.options);
        let target = b.target;
        let source: string | undefined;
        let placement: string | null = null;
        if (!target) {
          const p = await placeVm(client, b.vm);
          target = p.target;
          source = p.source;
          placement = p.reason;
        }
        const r = await startMigration(client, {
          vm: b.vm,
          target,
          source,
          ...(strategy ? { strategy } : {}),
          options,
          ticket: b.ticket,
          requestedBy: b.requestedBy,
          reason: placement ? `${b.reason} (target chosen: ${placement})` : b.reason,
          via: `api:${token.name}`,
        });
        return {
          status: r.created ? 202 : 200,
          body: { id: r.workflowId, runId: r.runId, migration: `${r.workflowId}/${r.runId}`, vm: b.vm, target, placement, ticket: b.ticket, created: r.created },
        };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/migrations\/(.+)\/cancel$/,
      scope: 'write',
      handler: async ({ req, params }) => {
        const b = check<{ requestedBy: string; reason?: string }>(validators.cancel, await readBody(req), 'body');
        const handle = resolveHandle(client, params[0]!);
        const desc = await handle.describe();
        if (desc.status.name !== 'RUNNING') throw new HttpError(409, `${desc.workflowId} is ${desc.status.name.toLowerCase()}: nothing to cancel`);
        await handle.executeUpdate(cancelUpdate, { args: [{ by: b.requestedBy, reason: b.reason }] });
        return { status: 202, body: { id: desc.workflowId, runId: desc.runId, accepted: true, note: 'rolls back: the guest keeps running on the source' } };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/migrations\/(.+)\/retry$/,
      scope: 'write',
      handler: async ({ req, params, token }) => {
        const b = check<{ requestedBy: string; reason: string; target?: string }>(validators.retry, await readBody(req), 'body');
        const r = await retryMigration(client, params[0]!, { requestedBy: b.requestedBy, reason: b.reason, target: b.target, via: `api:${token.name}` });
        return { status: r.created ? 202 : 200, body: { id: r.workflowId, runId: r.runId, migration: `${r.workflowId}/${r.runId}`, retryOf: r.retryOf, created: r.created } };
      },
    },
    {
      method: 'GET',
      // `migrate-<vm>`, a VM name, or `migrate-<vm>/<run id>`.
      path: /^\/v1\/migrations\/([^/]+(?:\/[0-9a-f-]{36})?)$/,
      scope: 'read',
      handler: async ({ params }) => ({ status: 200, body: await migrationView(params[0]!) }),
    },
    {
      method: 'POST',
      path: /^\/v1\/evacuations\/?$/,
      scope: 'write',
      handler: async ({ req, token }) => {
        const b = check<{
          hosts: string[];
          to?: string[];
          maxParallel?: number;
          maxOutboundPerHost?: number;
          maxInboundPerHost?: number;
          linkBudget?: string;
          priority?: number;
          maxAttempts?: number;
          strategy?: StrategyName;
          ticket: string;
          requestedBy: string;
          reason: string;
          options?: OptionsBody;
        }>(validators.createEvacuation, await readBody(req), 'body');
        const strategy = b.strategy;
        const r = await startEvacuation(client, {
          hosts: b.hosts,
          to: b.to ?? null,
          limits: {
            ...(b.maxParallel !== undefined ? { maxParallel: b.maxParallel } : {}),
            ...(b.maxOutboundPerHost !== undefined ? { maxOutboundPerHost: b.maxOutboundPerHost } : {}),
            ...(b.maxInboundPerHost !== undefined ? { maxInboundPerHost: b.maxInboundPerHost } : {}),
            ...(b.linkBudget !== undefined ? { linkBudgetBytesPerSec: rate(b.linkBudget, 'linkBudget', 0) } : {}),
          },
          ...(strategy ? { strategy } : {}),
          options: optionsFrom(strategy ?? 'pa-hybrid', b.options),
          ticket: b.ticket,
          requestedBy: b.requestedBy,
          reason: b.reason,
          via: `api:${token.name}`,
          priority: b.priority,
          maxAttempts: b.maxAttempts,
        });
        return { status: r.created ? 202 : 200, body: { id: r.workflowId, runId: r.runId, hosts: r.hosts, to: r.to, ticket: b.ticket, created: r.created } };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/evacuations\/([^/]+)\/cancel$/,
      scope: 'write',
      handler: async ({ req, params }) => {
        const b = check<{ requestedBy: string; reason?: string; vms?: string[] }>(validators.cancelEvacuation, await readBody(req), 'body');
        const handle = evacuationHandle(client, params[0]!);
        const desc = await handle.describe();
        if (desc.status.name !== 'RUNNING') throw new HttpError(409, `${desc.workflowId} is ${desc.status.name.toLowerCase()}: nothing queued to cancel`);
        const r = await handle.executeUpdate(cancelQueuedUpdate, { args: [{ vms: b.vms, by: b.requestedBy, reason: b.reason }] });
        return { status: 200, body: { id: desc.workflowId, ...r } };
      },
    },
    {
      method: 'GET',
      path: /^\/v1\/evacuations\/([^/]+)$/,
      scope: 'read',
      handler: async ({ params }) => {
        const handle = evacuationHandle(client, params[0]!);
        const desc = await handle.describe();
        const status = desc.status.name.toLowerCase();
        let summary: unknown = null;
        let failure: string | null = null;
        if (desc.status.name === 'RUNNING') summary = await handle.query(evacuationQuery).catch(() => null);
        else if (desc.status.name === 'COMPLETED') summary = await handle.result();
        else failure = await handle.result().then(() => null, (e: Error) => (e.cause as Error | undefined)?.message ?? e.message);
        return { status: 200, body: { id: desc.workflowId, runId: desc.runId, status, summary, failure } };
      },
    },
    {
      method: 'GET',
      path: /^\/v1\/audit\/?$/,
      scope: 'read',
      handler: async ({ url }) => {
        const raw: Record<string, string> = {};
        for (const [k, v] of url.searchParams) {
          if (k in raw) throw new HttpError(400, `${k}: given more than once`, k);
          raw[k] = v;
        }
        const q = check<{ ticket?: string; vm?: string; host?: string; evacuation?: string; from?: string; to?: string; limit?: string }>(validators.auditQuery, raw, 'query');
        const fromMs = timeParam(q.from, 'from');
        const toMs = timeParam(q.to, 'to');
        if (fromMs !== undefined && toMs !== undefined && fromMs > toMs) throw new HttpError(400, 'from: is after to', 'from');
        const limit = q.limit === undefined ? undefined : Number(q.limit);
        if (limit !== undefined && (limit < 1 || limit > 1000)) throw new HttpError(400, 'limit: must be 1 to 1000', 'limit');
        const r = await store.query({ ticket: q.ticket, vm: q.vm, host: q.host, evacuationId: q.evacuation, fromMs, toMs, limit });
        return { status: 200, body: r };
      },
    },
  ];
  // The dashboard's read and control routes, under the same tokens.
  routes.push(...dashboardRoutes({ client, tokens: opts.tokens, temporalUiUrl: opts.temporalUiUrl ?? null }));

  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://ferry.invalid');
    const path = url.pathname;
    const requestId = randomUUID();
    res.setHeader('x-request-id', requestId);
    void (async () => {
      try {
        if (req.method === 'GET' && path === '/v1/openapi.json') return send(res, 200, openApiDocument());
        if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true });
        if (req.method === 'GET' && path === '/metrics') {
          if (!opts.metrics) throw new HttpError(404, 'metrics are not enabled on this listener');
          return await writeMetrics(opts.metrics, req, res, { token: opts.metricsToken, log }, requestId);
        }
        if (await serveDashboard(req, res, path, opts.tokens)) return;
        const matching = routes.filter((r) => r.path.test(path));
        if (matching.length === 0) throw new HttpError(404, `no route ${path} (see /v1/openapi.json)`);
        const route = matching.find((r) => r.method === req.method);
        if (!route) {
          res.setHeader('allow', matching.map((r) => r.method).join(', '));
          throw new HttpError(405, `${req.method} is not allowed on ${path}`);
        }
        const auth = authorizeRequest(req, opts.tokens, route.scope);
        if (!auth.ok) {
          if (auth.status === 401) res.setHeader('www-authenticate', 'Bearer realm="ferry"');
          throw new HttpError(auth.status, auth.message);
        }
        const params = (route.path.exec(path) ?? []).slice(1).map((p) => decodeURIComponent(p));
        const out = await route.handler({ req, url, params, token: auth.token });
        send(res, out.status, out.body);
      } catch (e) {
        const he = mapError(e);
        if (he.status === 503) {
          // Temporal timed out, is unreachable or overloaded: the caller may try again shortly.
          log(`ferry api: request ${requestId}: ${req.method} ${path} → 503: ${(e as Error)?.stack ?? String(e)}`);
          if (!res.headersSent) {
            res.setHeader('retry-after', String(RETRY_AFTER_S));
            send(res, 503, { error: `temporarily unavailable: Temporal did not answer; retry in ${RETRY_AFTER_S} s (request id ${requestId})`, requestId });
          } else res.end();
          return;
        }
        if (he.status >= 500) {
          // The details (they may name hosts, files, queries) stay in the log; the caller gets the id to quote.
          log(`ferry api: request ${requestId}: ${req.method} ${path} → ${he.status}: ${(e as Error)?.stack ?? String(e)}`);
          if (!res.headersSent) send(res, he.status, { error: `internal error (request id ${requestId})`, requestId });
          else res.end();
          return;
        }
        if (!res.headersSent) send(res, he.status, { error: he.message, ...(he.field ? { field: he.field } : {}), requestId });
        else res.end();
      }
    })();
  };
}

export async function startApiServer(opts: ApiOptions): Promise<RunningApi> {
  if (opts.tokens.length === 0) throw new UsageError(API_TOKEN_REQUIRED);
  const { host, port } = splitListen(opts.listen, '--listen');
  const server = createApiListener(createApiHandler(opts), opts.tls);
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = listenAddress(server);
  return {
    address,
    url: `${opts.tls ? 'https' : 'http'}://${address}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
