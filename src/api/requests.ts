/**
 * What the HTTP API does with a request before and after its handler: reads and validates
 * the body and query (one line naming the bad field), turns option strings into
 * MigrationOptions, writes JSON, and maps errors to statuses (400 bad field, 404 unknown,
 * 409 conflict, 413 too large, 503 Temporal out of reach for now, 500 anything else).
 */
import type http from 'node:http';
import { WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { MigrationOptions } from '../activities/types';
import { UsageError } from '../common/errors';
import { parseRate } from '../common/units';
import { ConflictError, NotFoundError } from '../client/migrations';
import { defaultPbData, type StrategyName } from '../policy/types';
import {
  auditQuerySchema,
  cancelEvacuationSchema,
  cancelSchema,
  createEvacuationSchema,
  createMigrationSchema,
  retrySchema,
} from './schemas';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

const MAX_BODY = 1024 * 1024;

const ajv = new Ajv({ allErrors: false, strict: true });
export const validators = {
  createMigration: ajv.compile(createMigrationSchema),
  cancel: ajv.compile(cancelSchema),
  retry: ajv.compile(retrySchema),
  createEvacuation: ajv.compile(createEvacuationSchema),
  cancelEvacuation: ajv.compile(cancelEvacuationSchema),
  auditQuery: ajv.compile(auditQuerySchema),
};

const FRIENDLY: Record<string, string> = {
  vm: 'a VM name: letters, digits, . _ - (at most 63)',
  target: 'a host id: letters, digits, . _ - (at most 63)',
  host: 'a host id: letters, digits, . _ - (at most 63)',
  ticket: 'a ticket id: letters, digits, . _ : / # - (at most 128)',
};

/** One line naming the field: "ticket: required", "strategy: must be one of …". */
export function describeAjvError(e: ErrorObject, where: 'body' | 'query'): { field: string; message: string } {
  const path = e.instancePath.replace(/^\//, '').replace(/\//g, '.');
  if (e.keyword === 'required') {
    const field = [path, (e.params as { missingProperty: string }).missingProperty].filter(Boolean).join('.');
    return { field, message: `${field}: required` };
  }
  if (e.keyword === 'additionalProperties') {
    const field = [path, (e.params as { additionalProperty: string }).additionalProperty].filter(Boolean).join('.');
    return { field, message: `${field}: unknown field` };
  }
  const field = path || where;
  const last = field.split('.').filter((p) => !/^\d+$/.test(p)).pop() ?? field;
  if (e.keyword === 'enum') return { field, message: `${field}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}` };
  if (e.keyword === 'pattern' && FRIENDLY[last === 'hosts' || last === 'to' ? 'host' : last === 'vms' ? 'vm' : last]) {
    return { field, message: `${field}: must be ${FRIENDLY[last === 'hosts' || last === 'to' ? 'host' : last === 'vms' ? 'vm' : last]}` };
  }
  return { field, message: `${field}: ${e.message ?? 'is invalid'}` };
}

export function check<T>(v: ValidateFunction, data: unknown, where: 'body' | 'query'): T {
  if (where === 'body' && (typeof data !== 'object' || data === null || Array.isArray(data))) throw new HttpError(400, 'body: must be a JSON object', 'body');
  if (!v(data)) {
    const d = describeAjvError(v.errors![0]!, where);
    throw new HttpError(400, d.message, d.field);
  }
  return data as T;
}

export interface OptionsBody {
  bandwidth?: string;
  storageBandwidth?: string;
  maxDowntimeMs?: number;
  maxIterations?: number;
  pbdata?: 'sync' | 'async' | 'off';
  switchRule?: 'ferry' | 'paper';
  agentTimeoutMs?: number;
}

export function rate(text: string | undefined, field: string, dflt: number): number {
  if (text === undefined) return dflt;
  try {
    return parseRate(text, field);
  } catch (e) {
    throw new HttpError(400, (e as Error).message, field);
  }
}

/** The `ferry migrate` defaults (32MiB/s, 1GiB/s, 300 ms, 30 rounds; PbData for the paper's hybrids). */
export function optionsFrom(strategy: StrategyName, o: OptionsBody = {}): MigrationOptions {
  const bandwidth = rate(o.bandwidth, 'options.bandwidth', 32 * 1024 ** 2);
  if (bandwidth > 0 && bandwidth < 64 * 1024) throw new HttpError(400, 'options.bandwidth: below 64KiB/s a migration never converges', 'options.bandwidth');
  return {
    bandwidthBytesPerSec: bandwidth,
    storageBandwidthBytesPerSec: rate(o.storageBandwidth, 'options.storageBandwidth', 1024 ** 3),
    maxDowntimeMs: o.maxDowntimeMs ?? 300,
    maxIterations: o.maxIterations ?? 30,
    pbdata: o.pbdata ?? defaultPbData(strategy),
    compression: false,
    zeroElision: true,
    switchRule: o.switchRule ?? 'ferry',
    ...(o.agentTimeoutMs !== undefined ? { agentTimeoutMs: o.agentTimeoutMs } : {}),
  };
}

export function timeParam(v: string | undefined, field: string): number | undefined {
  if (v === undefined) return undefined;
  const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(ms)) throw new HttpError(400, `${field}: '${v}' is not an ISO-8601 time (e.g. 2024-05-14T09:00:00Z) or epoch milliseconds`, field);
  return ms;
}

export async function readBody(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_BODY) throw new HttpError(413, `body: larger than ${MAX_BODY} bytes`, 'body');
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new HttpError(400, `body: not valid JSON (${(e as Error).message})`, 'body');
  }
}

export function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(text);
}

/** gRPC status codes (DEADLINE_EXCEEDED 4, RESOURCE_EXHAUSTED 8, UNAVAILABLE 14): Temporal is overloaded or out of reach for now. */
const TRANSIENT_GRPC_CODES = new Set([4, 8, 14]);
/** Seconds a 503 asks the caller to wait (Retry-After). */
export const RETRY_AFTER_S = 5;

/** The gRPC status code on a Temporal client error or any error in its cause chain. */
export function grpcStatusOf(e: unknown): number | undefined {
  for (let err = e, depth = 0; err instanceof Error && depth < 8; err = (err as { cause?: unknown }).cause, depth++) {
    const g = err as { code?: unknown; details?: unknown };
    if (typeof g.code === 'number' && typeof g.details === 'string') return g.code;
  }
  return undefined;
}

export function mapError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (TRANSIENT_GRPC_CODES.has(grpcStatusOf(e) ?? -1)) return new HttpError(503, (e as Error).message);
  if (e instanceof UsageError) {
    const field = /^([A-Za-z][\w.]*):/.exec(e.message)?.[1];
    return new HttpError(400, e.message, field);
  }
  if (e instanceof ConflictError) return new HttpError(409, e.message);
  if (e instanceof NotFoundError) return new HttpError(404, e.message);
  if (e instanceof WorkflowNotFoundError) return new HttpError(404, `no such migration or evacuation (${e.workflowId ?? e.message})`);
  if (e instanceof WorkflowUpdateFailedError) return new HttpError(409, (e.cause as Error | undefined)?.message ?? e.message);
  return new HttpError(500, (e as Error)?.message ?? String(e));
}

