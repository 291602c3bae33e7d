/**
 * Request schemas of the HTTP API (JSON Schema, validated with ajv) and the OpenAPI document
 * built from the same schemas, so the document and the checks cannot drift apart.
 */
import { STRATEGIES } from '../policy/types';
import { AUDIT_MAX_LIMIT } from '../audit/types';
import { DEFAULT_AGENT_TIMEOUT_MS, MAX_AGENT_TIMEOUT_MS, MIN_AGENT_TIMEOUT_MS } from '../workflows/agent-waits';

const NAME = '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$';
const TICKET = '^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,127}$';
const RATE = '^\\s*\\d+(\\.\\d+)?\\s*[A-Za-z]{0,3}\\s*(/s|ps)?\\s*$';

const vm = { type: 'string', pattern: NAME, description: 'VM name' } as const;
const host = { type: 'string', pattern: NAME, description: 'host id' } as const;
const ticket = { type: 'string', pattern: TICKET, description: 'ticket id of the requesting system; the same ticket again returns the same operation' } as const;
const requestedBy = { type: 'string', minLength: 1, maxLength: 200, description: 'the person or system on whose behalf the request is made' } as const;
const reason = { type: 'string', minLength: 1, maxLength: 2000, description: 'why: kept in the audit trail' } as const;
const strategy = { type: 'string', enum: [...STRATEGIES], description: 'migration strategy (default pa-hybrid)' } as const;

export const migrationOptionsSchema = {
  type: 'object',
  additionalProperties: false,
  description: 'per-migration settings (the `ferry migrate` options); defaults as there',
  properties: {
    bandwidth: { type: 'string', pattern: RATE, description: 'migration-network cap, e.g. 32MiB/s (0B/s = uncapped)' },
    storageBandwidth: { type: 'string', pattern: RATE, description: 'storage-network cap, e.g. 1GiB/s' },
    maxDowntimeMs: { type: 'integer', minimum: 0, maximum: 600000 },
    maxIterations: { type: 'integer', minimum: 1, maximum: 1000 },
    pbdata: { type: 'string', enum: ['sync', 'async', 'off'] },
    switchRule: { type: 'string', enum: ['ferry', 'paper'], description: "as-hybrid/pa-hybrid switch rule: ferry's (default) or the paper's exactly" },
    agentTimeoutMs: { type: 'integer', minimum: MIN_AGENT_TIMEOUT_MS, maximum: MAX_AGENT_TIMEOUT_MS, description: `how long a step waits for a host agent cut off from Temporal before the migration rolls back (default ${DEFAULT_AGENT_TIMEOUT_MS})` },
  },
} as const;

export const createMigrationSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['vm', 'ticket', 'requestedBy', 'reason'],
  properties: {
    vm,
    target: { ...host, description: 'target host; omitted = the live host with the most free memory that fits' },
    strategy,
    ticket,
    requestedBy,
    reason,
    options: migrationOptionsSchema,
  },
} as const;

export const cancelSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['requestedBy'],
  properties: { requestedBy, reason },
} as const;

export const retrySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['requestedBy', 'reason'],
  properties: { requestedBy, reason, target: { ...host, description: 'another target for the retry (default: the same)' } },
} as const;

export const createEvacuationSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['hosts', 'ticket', 'requestedBy', 'reason'],
  properties: {
    hosts: { type: 'array', items: host, minItems: 1, maxItems: 1000, uniqueItems: true, description: 'hosts to empty (a rack)' },
    to: { type: 'array', items: host, minItems: 1, maxItems: 1000, uniqueItems: true, description: 'candidate targets (default: every live registered host)' },
    maxParallel: { type: 'integer', minimum: 1, maximum: 1000, description: 'migrations at once, cluster-wide' },
    maxOutboundPerHost: { type: 'integer', minimum: 1, maximum: 100 },
    maxInboundPerHost: { type: 'integer', minimum: 1, maximum: 100 },
    linkBudget: { type: 'string', pattern: RATE, description: 'migration-network budget of each host link, e.g. 100MiB/s' },
    priority: { type: 'integer', minimum: 0, maximum: 1000, description: 'queue priority (evacuations default 100, user moves 50)' },
    maxAttempts: { type: 'integer', minimum: 1, maximum: 10 },
    strategy,
    ticket,
    requestedBy,
    reason,
    options: migrationOptionsSchema,
  },
} as const;

export const cancelEvacuationSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['requestedBy'],
  properties: { requestedBy, reason, vms: { type: 'array', items: vm, minItems: 1, uniqueItems: true, description: 'queued VMs to cancel (default: every queued VM)' } },
} as const;

export const auditQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ticket,
    vm,
    host,
    evacuation: { type: 'string', minLength: 1, maxLength: 300 },
    from: { type: 'string', minLength: 4, maxLength: 40, description: 'ISO-8601 time (or epoch milliseconds)' },
    to: { type: 'string', minLength: 4, maxLength: 40, description: 'ISO-8601 time (or epoch milliseconds)' },
    limit: { type: 'string', pattern: '^[0-9]{1,5}$', description: `at most ${AUDIT_MAX_LIMIT}` },
  },
} as const;

const error = {
  type: 'object',
  required: ['error'],
  properties: {
    error: { type: 'string' },
    field: { type: 'string' },
    requestId: { type: 'string', description: 'also in the X-Request-Id header; a 500 carries only this (the details are in the controller log under it)' },
  },
} as const;

const errorResponses = (...codes: number[]): Record<string, unknown> =>
  Object.fromEntries(
    codes.map((c) => [
      String(c),
      {
        description: { 400: 'bad request: the message names the field', 401: 'no valid bearer token', 403: 'the token may not do this', 404: 'not found', 409: 'conflict', 500: 'internal error: only a request id' }[c] ?? 'error',
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      },
    ]),
  );

const json = (schema: unknown, description: string): unknown => ({ description, content: { 'application/json': { schema } } });
const body = (ref: string): unknown => ({ required: true, content: { 'application/json': { schema: { $ref: `#/components/schemas/${ref}` } } } });
const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string' }, description: 'migration id (`migrate-<vm>`, optionally `/<run id>`) or a VM name' };

export function openApiDocument(serverUrl?: string): unknown {
  const queryParams = Object.entries(auditQuerySchema.properties).map(([name, schema]) => ({ name, in: 'query', required: false, schema }));
  return {
    openapi: '3.1.0',
    info: {
      title: 'ferry API',
      version: '1',
      description: 'Live migration of memory-write-intensive VMs for ticketing systems: start, follow and cancel migrations, evacuate hosts, query the audit trail.',
    },
    ...(serverUrl ? { servers: [{ url: serverUrl }] } : {}),
    security: [{ bearer: [] }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'FERRY_API_TOKEN or a token whose SHA-256 is in the tokens file; read tokens may GET' } },
      schemas: {
        CreateMigration: createMigrationSchema,
        Cancel: cancelSchema,
        Retry: retrySchema,
        CreateEvacuation: createEvacuationSchema,
        CancelEvacuation: cancelEvacuationSchema,
        MigrationOptions: migrationOptionsSchema,
        Error: error,
      },
    },
    paths: {
      '/v1/migrations': {
        get: {
          summary: 'Running and recent migrations with live progress (filters: vm, host, ticket, strategy, outcome, limit)',
          parameters: ['vm', 'host', 'ticket', 'strategy', 'outcome', 'limit'].map((name) => ({ name, in: 'query', required: false, schema: { type: 'string' } })),
          responses: { '200': json({ type: 'object' }, '{migrations}'), ...errorResponses(400, 401) },
        },
        post: {
          summary: 'Start a migration (idempotent per ticket)',
          requestBody: body('CreateMigration'),
          responses: {
            '202': json({ type: 'object' }, 'started: {id, runId, migration, vm, source, target, ticket, created: true}'),
            '200': json({ type: 'object' }, 'the same ticket again: the same migration, created: false'),
            ...errorResponses(400, 401, 403, 404, 409),
          },
        },
      },
      '/v1/migrations/{id}': {
        get: {
          summary: 'A migration: status, live progress, report when finished, its audit records',
          parameters: [idParam],
          responses: { '200': json({ type: 'object' }, 'the migration'), ...errorResponses(401, 404) },
        },
      },
      '/v1/migrations/{id}/cancel': {
        post: {
          summary: 'Cancel: rolls back before the switch, refused (409) after it',
          parameters: [idParam],
          requestBody: body('Cancel'),
          responses: { '202': json({ type: 'object' }, 'accepted'), ...errorResponses(400, 401, 403, 404, 409) },
        },
      },
      '/v1/migrations/{id}/retry': {
        post: {
          summary: 'Retry a failed or rolled-back attempt: a new attempt linked to it in the audit trail',
          parameters: [idParam],
          requestBody: body('Retry'),
          responses: { '202': json({ type: 'object' }, 'the new attempt'), '200': json({ type: 'object' }, 'already retried: that attempt'), ...errorResponses(400, 401, 403, 404, 409) },
        },
      },
      '/v1/evacuations': {
        get: {
          summary: 'Running and recent evacuations (filters: ticket, limit)',
          parameters: ['ticket', 'limit'].map((name) => ({ name, in: 'query', required: false, schema: { type: 'string' } })),
          responses: { '200': json({ type: 'object' }, '{evacuations}'), ...errorResponses(400, 401) },
        },
        post: {
          summary: 'Move every VM off hosts (idempotent per ticket)',
          requestBody: body('CreateEvacuation'),
          responses: { '202': json({ type: 'object' }, 'started'), '200': json({ type: 'object' }, 'the same ticket again'), ...errorResponses(400, 401, 403, 409) },
        },
      },
      '/v1/evacuations/{id}': {
        get: {
          summary: 'An evacuation: per-VM status, or the summary when finished',
          parameters: [{ ...idParam, description: 'evacuation id (`evacuate-<ticket>`) or the ticket' }],
          responses: { '200': json({ type: 'object' }, 'the evacuation'), ...errorResponses(401, 404) },
        },
      },
      '/v1/evacuations/{id}/cancel': {
        post: {
          summary: 'Cancel queued VMs of an evacuation (running migrations go on)',
          parameters: [{ ...idParam, description: 'evacuation id or ticket' }],
          requestBody: body('CancelEvacuation'),
          responses: { '200': json({ type: 'object' }, '{cancelled, notQueued}'), ...errorResponses(400, 401, 403, 404, 409) },
        },
      },
      '/v1/audit': {
        get: {
          summary: 'Audit trail: every attempt (who, ticket, reason, hosts, outcome, decisions, attempt and retry links) and evacuation events',
          parameters: queryParams,
          responses: { '200': json({ type: 'object' }, '{attempts, events}'), ...errorResponses(400, 401) },
        },
      },
      '/v1/migrations/{id}/force-postcopy': {
        post: {
          summary: 'Force the switch to post-copy at the next boundary (hybrid strategies, before the switch; 409 otherwise)',
          parameters: [idParam],
          requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', properties: { requestedBy: { type: 'string', description: 'default: dashboard:<token name>' } } } } } },
          responses: { '202': json({ type: 'object' }, '{accepted, atIteration}'), ...errorResponses(400, 401, 403, 404, 409) },
        },
      },
      '/v1/migrations/{id}/bandwidth': {
        post: {
          summary: "Set the migration link's cap while it runs (\"8MiB/s\"; \"0\" = uncapped)",
          parameters: [idParam],
          requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', properties: { requestedBy: { type: 'string' }, rate: { type: ['string', 'number'] } }, required: ['rate'] } } } },
          responses: { '200': json({ type: 'object' }, '{bandwidthBytesPerSec}'), ...errorResponses(400, 401, 403, 404, 409) },
        },
      },
      '/v1/migrations/{id}/timeline': {
        get: {
          summary: "A migration's phases with the time each began (from the workflow history)",
          parameters: [idParam],
          responses: { '200': json({ type: 'object' }, 'the phase timeline'), ...errorResponses(401, 404) },
        },
      },
      '/v1/session': {
        get: { summary: "Who the token is (name, scope: read or write) and the Temporal UI's address", responses: { '200': json({ type: 'object' }, '{name, scope, temporalUi}'), ...errorResponses(401) } },
      },
      '/v1/openapi.json': { get: { summary: 'This document', security: [], responses: { '200': json({ type: 'object' }, 'OpenAPI 3.1') } } },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics of the controller (open unless FERRY_METRICS_TOKEN is set; then its bearer token, not an API token)',
          security: [],
          responses: { '200': { description: 'text exposition format' }, '401': { description: 'FERRY_METRICS_TOKEN is set and the request does not carry it' } },
        },
      },
    },
  };
}
