/**
 * The HTTP API under load, against a running `ferry controller --listen`: concurrent
 * migration requests with repeated tickets (no duplicate migration; a repeat answers with the
 * first request's migration), then a burst of valid, bad-body and bad-token requests (every
 * one answered with the status it deserves, latencies recorded; the controller stays up).
 */
import http from 'node:http';
import type { Client } from '@temporalio/client';
import { SqliteAuditStore } from '../audit/sqlite';
import { migrationWorkflowId } from '../common/names';
import { isAlive, type FerryProcess } from '../support/processes';
import type { MigrationReport } from '../workflows/report';
import { quantile } from './scale-proc';

export interface ApiLoadOptions {
  client: Client;
  /** http://host:port of the controller's API. */
  apiUrl: string;
  token: string;
  controller: FerryProcess;
  /** The controller's SQLite audit trail (read here to count attempts per VM). */
  auditDb: string;
  /** VMs already created, each on its source, with the target its migration goes to. */
  vms: { name: string; source: string; target: string }[];
  /** How many of the VMs get a second request with the same ticket, fired with the first. */
  repeats: number;
  ticketPrefix: string;
  burst: number;
  /** At most this many connections at once during the burst. */
  connections: number;
  log: (line: string) => void;
}

interface Answer {
  status: number;
  json: Record<string, unknown> | null;
  ms: number;
  error?: string;
}

export interface LatencyStats {
  n: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface ApiLoadResult {
  concurrent: {
    vms: number;
    requests: number;
    repeated: number;
    /** Distinct migrations (workflow id + run id) the answers name, per VM: 1 each when nothing was duplicated. */
    migrationsPerVm: Record<string, number>;
    /** Answers that said `created: true`. */
    created: number;
    /** Repeats answered with the same migration (id and run) as their first request. */
    repeatsAnsweredWithFirstId: number;
    /** Repeats again after every migration ended: same migration, created false. */
    repeatsAfterCompletionSameId: number;
    /** Migrations that completed with the guest's memory verified on the target. */
    verified: number;
    /** Attempts in the audit trail per VM (1 = no duplicate attempt). */
    auditAttemptsPerVm: Record<string, number>;
    /** Executions per ticket in Temporal's visibility (1 = no duplicate workflow). */
    executionsPerTicket: Record<string, number>;
    statuses: Record<string, number>;
    latency: LatencyStats;
    durationMs: number;
  };
  burst: {
    requests: number;
    connections: number;
    durationMs: number;
    requestsPerSecond: number;
    byKind: Record<string, LatencyStats & { expected: number; answeredAsExpected: number; statuses: Record<string, number> }>;
    all: LatencyStats;
    /** Requests that got no HTTP answer (connection error). */
    unanswered: number;
    unexpected: string[];
    /** /healthz, probed every 100 ms on its own connection while the burst ran. */
    healthz: LatencyStats & { failures: number };
  };
  /** What the controller logged for answers of 500 (the first line of each, at most 10). */
  serverErrors: string[];
  /** The controller process still runs and /healthz answers 200 after everything. */
  controllerAliveAfter: boolean;
  healthzAfter: number;
  /** No new migration or attempt appeared during the burst (its valid POSTs were repeats). */
  noDuplicateAfterBurst: boolean;
}

function stats(ms: number[]): LatencyStats {
  const r = (x: number): number => Math.round(x * 10) / 10;
  return { n: ms.length, p50Ms: r(quantile(ms, 0.5)), p95Ms: r(quantile(ms, 0.95)), p99Ms: r(quantile(ms, 0.99)), maxMs: r(Math.max(0, ...ms)) };
}

function request(agent: http.Agent, base: string, method: 'GET' | 'POST', path: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  const t0 = performance.now();
  const url = new URL(path, base);
  return new Promise((resolve) => {
    const req = http.request(
      { agent, host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, method, headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let json: Record<string, unknown> | null = null;
          try {
            json = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
          } catch {
            json = null;
          }
          resolve({ status: res.statusCode ?? 0, json, ms: performance.now() - t0 });
        });
        res.on('error', (e) => resolve({ status: 0, json: null, ms: performance.now() - t0, error: e.message }));
      },
    );
    req.setTimeout(120_000, () => req.destroy(new Error('no answer within 120 s')));
    req.on('error', (e) => resolve({ status: 0, json: null, ms: performance.now() - t0, error: e.message }));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const count = (xs: (string | number)[]): Record<string, number> => xs.reduce<Record<string, number>>((m, x) => ((m[String(x)] = (m[String(x)] ?? 0) + 1), m), {});

export async function runApiLoad(o: ApiLoadOptions): Promise<ApiLoadResult> {
  const auth = { authorization: `Bearer ${o.token}` };
  const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(o.connections, o.vms.length + o.repeats) });
  const store = new SqliteAuditStore(o.auditDb);
  try {
    const ticketOf = (i: number): string => `${o.ticketPrefix}-${i}`;
    const bodyOf = (i: number): string =>
      JSON.stringify({
        vm: o.vms[i]!.name,
        target: o.vms[i]!.target,
        ticket: ticketOf(i),
        requestedBy: 'ferry bench --suite scale',
        reason: 'API under load',
        options: { bandwidth: '64MiB/s' },
      });

    // 1. Every VM requested once, the first `repeats` twice, all at once.
    o.log(`ferry bench scale: API: ${o.vms.length} migration requests and ${o.repeats} repeats of their tickets, at once`);
    const order: { i: number; repeat: boolean }[] = [];
    for (let i = 0; i < o.vms.length; i++) {
      order.push({ i, repeat: false });
      if (i < o.repeats) order.push({ i, repeat: true });
    }
    const t0 = performance.now();
    const answers = await Promise.all(order.map(({ i }) => request(agent, o.apiUrl, 'POST', '/v1/migrations', auth, bodyOf(i))));
    const concurrentMs = performance.now() - t0;
    const idOf = (a: Answer): string => `${String(a.json?.id)}/${String(a.json?.runId)}`;
    const perVm = new Map<number, Answer[]>();
    order.forEach(({ i }, k) => perVm.set(i, [...(perVm.get(i) ?? []), answers[k]!]));
    const migrationsPerVm: Record<string, number> = {};
    let repeatsSame = 0;
    for (const [i, as] of perVm) {
      migrationsPerVm[o.vms[i]!.name] = new Set(as.filter((a) => a.status === 200 || a.status === 202).map(idOf)).size;
      if (as.length === 2 && as.every((a) => a.status === 200 || a.status === 202) && idOf(as[0]!) === idOf(as[1]!)) repeatsSame++;
    }
    for (const a of answers) if (a.status !== 200 && a.status !== 202) o.log(`  answer ${a.status}: ${JSON.stringify(a.json) ?? a.error}`);

    // 2. Each migration to its end, verified.
    let verified = 0;
    await Promise.all(
      [...perVm.values()].map(async (as) => {
        const a = as.find((x) => x.status === 200 || x.status === 202);
        if (!a) return;
        const report = (await o.client.workflow.getHandle(String(a.json!.id), String(a.json!.runId)).result()) as MigrationReport;
        if (report.outcome === 'completed' && report.verification?.ok === true) verified++;
      }),
    );
    o.log(`ferry bench scale: API: ${verified}/${o.vms.length} migrations completed and verified`);

    // 3. The repeated tickets again, now that their migrations ended.
    let afterSame = 0;
    for (let i = 0; i < o.repeats; i++) {
      const a = await request(agent, o.apiUrl, 'POST', '/v1/migrations', auth, bodyOf(i));
      const first = perVm.get(i)!.find((x) => x.json?.created === true);
      if (a.status === 200 && a.json?.created === false && first && idOf(a) === idOf(first)) afterSame++;
    }

    const countAudit = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const v of o.vms) out[v.name] = (await store.query({ vm: v.name })).attempts.length;
      return out;
    };
    const countExecutions = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (let i = 0; i < o.vms.length; i++) {
        // Visibility is written asynchronously: wait until the closed execution shows.
        const q = `WorkflowId = '${migrationWorkflowId(o.vms[i]!.name)}' AND TicketId = '${ticketOf(i)}' AND ExecutionStatus != 'Running'`;
        let n = 0;
        for (const deadline = Date.now() + 30_000; n === 0 && Date.now() < deadline; ) {
          n = Number((await o.client.workflowService.countWorkflowExecutions({ namespace: o.client.options.namespace, query: q })).count ?? 0);
          if (n === 0) await new Promise((r) => setTimeout(r, 500));
        }
        out[ticketOf(i)] = n;
      }
      return out;
    };
    const auditAttemptsPerVm = await countAudit();
    const executionsPerTicket = await countExecutions();

    // 4. The burst.
    const burstAgent = new http.Agent({ keepAlive: true, maxSockets: o.connections });
    const healthAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    type Send = (n: number) => Promise<Answer>;
    const post = (headers: Record<string, string>, body: string): Promise<Answer> => request(burstAgent, o.apiUrl, 'POST', '/v1/migrations', headers, body);
    const get = (headers: Record<string, string>, n: number): Promise<Answer> => request(burstAgent, o.apiUrl, 'GET', `/v1/migrations/${migrationWorkflowId(o.vms[n % o.vms.length]!.name)}`, headers);
    const kinds: { kind: string; expected: number; send: Send }[] = [
      { kind: 'valid: repeated ticket (POST)', expected: 200, send: (n) => post(auth, bodyOf(n % o.repeats)) },
      { kind: 'valid: migration status (GET)', expected: 200, send: (n) => get(auth, n) },
      { kind: 'bad body: not JSON', expected: 400, send: () => post(auth, '{"vm": "x",') },
      { kind: 'bad body: no ticket', expected: 400, send: (n) => post(auth, JSON.stringify({ vm: o.vms[n % o.vms.length]!.name, requestedBy: 'bench', reason: 'no ticket' })) },
      { kind: 'bad token (POST)', expected: 401, send: (n) => post({ authorization: 'Bearer not-a-token' }, bodyOf(n % o.repeats)) },
      { kind: 'no token (GET)', expected: 401, send: (n) => get({}, n) },
    ];
    o.log(`ferry bench scale: API: a burst of ${o.burst} requests (${kinds.map((k) => k.kind).join(', ')}) over at most ${o.connections} connections`);
    const health: Answer[] = [];
    let bursting = true;
    const prober = (async () => {
      while (bursting) {
        health.push(await request(healthAgent, o.apiUrl, 'GET', '/healthz', {}));
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const b0 = performance.now();
    const burst = await Promise.all(
      Array.from({ length: o.burst }, (_, n) => {
        const k = kinds[n % kinds.length]!;
        return k.send(Math.floor(n / kinds.length)).then((a) => ({ k, a }));
      }),
    );
    const burstMs = performance.now() - b0;
    bursting = false;
    await prober;
    const byKind: ApiLoadResult['burst']['byKind'] = {};
    for (const k of kinds) {
      const mine = burst.filter((x) => x.k === k).map((x) => x.a);
      byKind[k.kind] = { ...stats(mine.map((a) => a.ms)), expected: k.expected, answeredAsExpected: mine.filter((a) => a.status === k.expected).length, statuses: count(mine.map((a) => a.status)) };
    }
    const unexpected = burst.filter((x) => x.a.status !== x.k.expected).map((x) => `${x.k.kind}: ${x.a.status} ${x.a.error ?? JSON.stringify(x.a.json)?.slice(0, 200)}`);
    const healthz = { ...stats(health.map((a) => a.ms)), failures: health.filter((a) => a.status !== 200).length };

    const healthzAfter = (await request(healthAgent, o.apiUrl, 'GET', '/healthz', {})).status;
    const auditAfter = await countAudit();
    const execAfter = await countExecutions();
    const noDuplicateAfterBurst = JSON.stringify(auditAfter) === JSON.stringify(auditAttemptsPerVm) && JSON.stringify(execAfter) === JSON.stringify(executionsPerTicket);
    burstAgent.destroy();
    healthAgent.destroy();
    return {
      concurrent: {
        vms: o.vms.length,
        requests: order.length,
        repeated: o.repeats,
        migrationsPerVm,
        created: answers.filter((a) => a.json?.created === true).length,
        repeatsAnsweredWithFirstId: repeatsSame,
        repeatsAfterCompletionSameId: afterSame,
        verified,
        auditAttemptsPerVm,
        executionsPerTicket,
        statuses: count(answers.map((a) => a.status)),
        latency: stats(answers.map((a) => a.ms)),
        durationMs: Math.round(concurrentMs),
      },
      burst: {
        requests: o.burst,
        connections: o.connections,
        durationMs: Math.round(burstMs),
        requestsPerSecond: Math.round((o.burst / burstMs) * 1000),
        byKind,
        all: stats(burst.map((x) => x.a.ms)),
        unanswered: burst.filter((x) => x.a.status === 0).length,
        unexpected: unexpected.slice(0, 20),
        healthz,
      },
      serverErrors: [...new Set(o.controller.output().split('\n').filter((l) => /ferry api: request \S+: .*→ 5\d\d/.test(l)).map((l) => l.replace(/^.*?→ /, '').replace(/request [0-9a-f-]{36}/g, 'request …')))].slice(0, 10),
      controllerAliveAfter: isAlive(o.controller),
      healthzAfter,
      noDuplicateAfterBurst,
    };
  } finally {
    agent.destroy();
    await store.close();
  }
}

