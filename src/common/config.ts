/**
 * One place where the environment becomes typed configuration (like zx's resolveDefaults).
 * Everything else receives config as arguments. Flags win over the environment.
 */
import path from 'node:path';
import { UsageError } from './errors';
import { temporalTlsFiles, type TemporalTlsFiles, type TemporalTlsFlags } from './temporal-tls';

export interface FerryConfig {
  /** host:port of a Temporal frontend; null = the embedded dev server. */
  temporalAddress: string | null;
  namespace: string;
  storageDir: string;
  temporalBin: string | null;
  apiToken: string | null;
  /** A file of API token hashes (`sha256hex [read|write] [name]` per line). */
  apiTokensFile: string | null;
  /** The audit trail: a SQLite file (default `.ferry/audit.db`) … */
  auditDb: string;
  /** … or PostgreSQL (`postgres://…`) when set. */
  auditUrl: string | null;
  /** Working state of the embedded server and agents. */
  stateDir: string;
  /** The only directory an agent reads `trace:<file>` workloads from; null = none (trace workloads refused). */
  traceDir: string | null;
  /** When set, /metrics (API listener, controller and agent --metrics) needs `Authorization: Bearer <it>`. */
  metricsToken: string | null;
  /** Mutual TLS to the Temporal frontend (FERRY_TEMPORAL_TLS_*); null = plain. */
  temporalTls?: TemporalTlsFiles | null;
}

export interface ConfigFlags {
  temporalAddress?: string;
  namespace?: string;
  storage?: string;
  temporalBin?: string;
  apiToken?: string;
  apiTokensFile?: string;
  auditDb?: string;
  auditUrl?: string;
  traceDir?: string;
  temporalTls?: TemporalTlsFlags;
}

export function loadConfig(env: NodeJS.ProcessEnv, flags: ConfigFlags = {}, cwd = process.cwd()): FerryConfig {
  const pick = (flag: string | undefined, name: string): string | null => {
    const v = flag ?? env[name];
    return v === undefined || v === '' ? null : v;
  };
  const temporalAddress = pick(flags.temporalAddress, 'FERRY_TEMPORAL_ADDRESS');
  if (temporalAddress !== null && !/^[^\s:]+:\d{1,5}$/.test(temporalAddress)) {
    throw new UsageError(`FERRY_TEMPORAL_ADDRESS / --temporal-address: '${temporalAddress}' is not host:port`);
  }
  const namespace = pick(flags.namespace, 'FERRY_NAMESPACE') ?? 'default';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(namespace)) {
    throw new UsageError(`FERRY_NAMESPACE / --namespace: '${namespace}' is not a valid namespace name`);
  }
  const stateDir = path.resolve(cwd, '.ferry');
  return {
    temporalAddress,
    namespace,
    storageDir: path.resolve(cwd, pick(flags.storage, 'FERRY_STORAGE_DIR') ?? path.join('.ferry', 'storage')),
    temporalBin: pick(flags.temporalBin, 'FERRY_TEMPORAL_BIN'),
    apiToken: pick(flags.apiToken, 'FERRY_API_TOKEN'),
    apiTokensFile: ((f) => (f === null ? null : path.resolve(cwd, f)))(pick(flags.apiTokensFile, 'FERRY_API_TOKENS_FILE')),
    auditDb: path.resolve(cwd, pick(flags.auditDb, 'FERRY_AUDIT_DB') ?? path.join('.ferry', 'audit.db')),
    auditUrl: pick(flags.auditUrl, 'FERRY_AUDIT_URL'),
    stateDir,
    traceDir: ((d) => (d === null ? null : path.resolve(cwd, d)))(pick(flags.traceDir, 'FERRY_TRACE_DIR')),
    metricsToken: pick(undefined, 'FERRY_METRICS_TOKEN'),
    temporalTls: ((t) => t && { ...t, ca: path.resolve(cwd, t.ca), cert: t.cert && path.resolve(cwd, t.cert), key: t.key && path.resolve(cwd, t.key) })(temporalTlsFiles(env, flags.temporalTls)),
  };
}
