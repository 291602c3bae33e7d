/**
 * The HTTP API when Temporal times out, is out of reach or overloaded (gRPC DEADLINE_EXCEEDED,
 * UNAVAILABLE, RESOURCE_EXHAUSTED on the client's error, directly or as its cause): 503 with
 * Retry-After, so a ticketing system tries again; any other failure stays a 500.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ServiceError, type Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTokens } from '../../src/api/auth';
import { createApiHandler } from '../../src/api/server';
import { grpcStatusOf, RETRY_AFTER_S } from '../../src/api/requests';
import type { AuditStore } from '../../src/audit/types';

const TOKEN = 'api-token-for-tests';

/** An error shaped as @grpc/grpc-js raises it: a numeric status code, details and metadata. */
function grpcError(code: number, details: string): Error {
  return Object.assign(new Error(`${code} ${details}`), { code, details, metadata: { internalRepr: new Map() } });
}

/** What the Temporal client throws for a failed call: a ServiceError whose cause is the gRPC error. */
function clientError(code: number, details: string): Error {
  return new ServiceError(`Failed to describe workflow: ${details}`, { cause: grpcError(code, details) });
}

/** A client whose describe() fails with the error queued for the next request. */
let nextError: Error = new Error('unset');
const client = {
  options: { namespace: 'default' },
  workflow: {
    getHandle: (workflowId: string) => ({ workflowId, describe: () => Promise.reject(nextError) }),
  },
} as unknown as Client;

const store = { kind: 'sqlite', query: () => Promise.resolve({ attempts: [], events: [] }) } as unknown as AuditStore;

describe('Temporal errors through the API', () => {
  const logged: string[] = [];
  let server: http.Server;
  let url = '';
  beforeAll(async () => {
    server = http.createServer(createApiHandler({ client, store, tokens: loadTokens({ token: TOKEN }), listen: '127.0.0.1:0', log: (l) => logged.push(l) }));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );

  async function statusOfMigration(err: Error): Promise<{ status: number; retryAfter: string | null; requestId: string | null; body: Record<string, unknown> }> {
    nextError = err;
    const r = await fetch(`${url}/v1/migrations/vm-1`, { headers: { authorization: `Bearer ${TOKEN}` } });
    return { status: r.status, retryAfter: r.headers.get('retry-after'), requestId: r.headers.get('x-request-id'), body: (await r.json()) as Record<string, unknown> };
  }

  it.each([
    ['DEADLINE_EXCEEDED', 4],
    ['RESOURCE_EXHAUSTED', 8],
    ['UNAVAILABLE', 14],
  ])('%s → 503 with Retry-After and the request id; the error goes to the log under it', async (name, code) => {
    const r = await statusOfMigration(clientError(code, `${name} from the frontend at db.internal`));
    expect(r.status).toBe(503);
    expect(r.retryAfter).toBe(String(RETRY_AFTER_S));
    expect(Object.keys(r.body).sort()).toEqual(['error', 'requestId']);
    expect(r.body.requestId).toBe(r.requestId);
    expect(r.body.error).toBe(`temporarily unavailable: Temporal did not answer; retry in ${RETRY_AFTER_S} s (request id ${r.requestId})`);
    expect(JSON.stringify(r.body)).not.toContain('db.internal');
    const line = logged.find((l) => l.includes(r.requestId!));
    expect(line).toContain('GET /v1/migrations/vm-1 → 503');
    expect(line).toContain(`${name} from the frontend at db.internal`);
  });

  it('the gRPC error raised directly (not wrapped by the client) is a 503 too', async () => {
    const r = await statusOfMigration(grpcError(14, 'No connection established'));
    expect(r.status).toBe(503);
    expect(r.retryAfter).toBe(String(RETRY_AFTER_S));
  });

  it.each([
    ['INTERNAL', 13],
    ['PERMISSION_DENIED', 7],
  ])('other gRPC statuses (%s) stay a 500 without Retry-After', async (name, code) => {
    const r = await statusOfMigration(clientError(code, name));
    expect(r.status).toBe(500);
    expect(r.retryAfter).toBeNull();
    expect(r.body.error).toBe(`internal error (request id ${r.requestId})`);
  });

  it('an error without a gRPC status (e.g. a code that is a string, as Node system errors carry) stays a 500', async () => {
    const r = await statusOfMigration(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
    expect(r.status).toBe(500);
    expect(r.retryAfter).toBeNull();
  });
});

describe('grpcStatusOf', () => {
  it('finds the status on the error or down its cause chain, and nothing on other errors', () => {
    expect(grpcStatusOf(grpcError(4, 'Deadline exceeded'))).toBe(4);
    expect(grpcStatusOf(clientError(8, 'namespace rate limit exceeded'))).toBe(8);
    expect(grpcStatusOf(new Error('outer', { cause: clientError(14, 'unavailable') }))).toBe(14);
    expect(grpcStatusOf(new Error('plain'))).toBeUndefined();
    expect(grpcStatusOf('a string')).toBeUndefined();
    expect(grpcStatusOf(undefined)).toBeUndefined();
  });
});
