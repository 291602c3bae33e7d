/** Open the configured audit store: PostgreSQL when a URL is set, else a SQLite file. */
import type { AuditStore } from './types';

export * from './types';

export interface AuditStoreConfig {
  /** postgres://… or postgresql://… : the PostgreSQL adapter. */
  url?: string | null;
  /** A SQLite file (the default store); `:memory:` for a throwaway one. */
  file?: string | null;
}

export async function openAuditStore(cfg: AuditStoreConfig): Promise<AuditStore> {
  if (cfg.url) {
    if (!/^postgres(ql)?:\/\//.test(cfg.url)) throw new Error(`audit store URL must be postgres://…, not '${cfg.url.replace(/\/\/[^@]*@/, '//…@')}'`);
    const { PostgresAuditStore } = await import('./postgres');
    return PostgresAuditStore.open(cfg.url);
  }
  const { SqliteAuditStore } = await import('./sqlite');
  return new SqliteAuditStore(cfg.file ?? ':memory:');
}
