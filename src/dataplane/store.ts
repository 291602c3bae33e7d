/**
 * Channel-1: shared storage (a directory; an NFS/SAN mount in production).
 *
 * Layout: `<root>/<migrationId>/<kind>/` with kind `static` (StaticData, the full-memory
 * snapshot) or `pbdata` (the pages still dirty at the post-copy switch). In it:
 *
 *   chunk-000000.bin, chunk-000001.bin, …   committed chunks (temp name, fsync, rename)
 *   manifest.json                          written last: the commit point
 *
 * A chunk is visible under its final name only once complete, so a reader may merge it
 * while the save is still running. A snapshot is *complete* only when `manifest.json`
 * exists; it is written to a temp name, fsynced, renamed, and the directory fsynced, so a
 * reader never sees a half-written snapshot as complete.
 *
 * Snapshots hold guest memory: the writer makes `<migrationId>/` and `<kind>/` (and a root it
 * creates) 0700 and every chunk and manifest 0600, set explicitly so the umask cannot widen
 * or narrow them; only the agents' user can list or read them on a shared mount.
 *
 * Every file operation runs in a worker thread under a no-progress watchdog (store-io.ts):
 * storage that stops answering fails the operation with StorageStalledError after
 * FERRY_STORAGE_STALL_MS (default 5 s) instead of blocking it, and the caller goes on
 * without channel-1 as it does when storage is full. With FERRY_STORAGE_ENCRYPTION=1 every
 * chunk is sealed with the cluster key (AES-256-GCM, store-format.ts).
 *
 * The chunk and manifest formats are described in store-format.ts; the writer is in
 * store-writer.ts and the reader in store-reader.ts. This module re-exports all of them.
 */
import * as path from 'node:path';
import { UsageError } from '../common/errors';
import { checkId, SNAPSHOT_KINDS, type SnapshotKind } from './store-format';
import { storeContext, storeSettingsFromEnv, type StoreContext, type StoreSettings } from './store-io';
import { SnapshotReader } from './store-reader';
import { SnapshotWriter, type WriterOptions } from './store-writer';

export { crc32, decodeChunk, isSealed, parseManifest, sealChunk, SNAPSHOT_KINDS, StorageCorruptError, StorageTimeoutError } from './store-format';
export { DEFAULT_STALL_MS, StorageStalledError, storeSettingsFromEnv, WorkerStoreIo, type StoreContext, type StoreIo, type StoreSettings } from './store-io';
export type { Chunk, Manifest, ManifestChunk, SnapshotKind } from './store-format';
export { SnapshotReader, type ReaderStats } from './store-reader';
export { SnapshotWriter, type WriterOptions, type WriterStats } from './store-writer';

export class SharedStore {
  readonly root: string;
  readonly ctx: StoreContext;

  /** Settings default to the environment's (storeSettingsFromEnv). */
  constructor(rootDir: string, settings: StoreSettings | StoreContext = storeSettingsFromEnv(process.env)) {
    this.root = path.resolve(rootDir);
    this.ctx = 'io' in settings ? settings : storeContext(settings);
  }

  /** Chunks are sealed with the cluster key (FERRY_STORAGE_ENCRYPTION=1). */
  get encrypted(): boolean {
    return this.ctx.encryptWith !== null;
  }

  dir(migrationId: string, kind: SnapshotKind): string {
    checkId(migrationId);
    if (!SNAPSHOT_KINDS.includes(kind)) throw new UsageError(`snapshot kind '${String(kind)}' is not one of ${SNAPSHOT_KINDS.join(', ')}`);
    return path.join(this.root, migrationId, kind);
  }

  async openWriter(migrationId: string, kind: SnapshotKind, opts: WriterOptions): Promise<SnapshotWriter> {
    const dir = this.dir(migrationId, kind);
    const w = new SnapshotWriter(dir, migrationId, kind, opts, this.ctx);
    await w.init();
    return w;
  }

  openReader(migrationId: string, kind: SnapshotKind): SnapshotReader {
    return new SnapshotReader(this.dir(migrationId, kind), migrationId, kind, this.ctx);
  }

  /** Delete every artefact of a migration (rollback cleanup). Idempotent. */
  async remove(migrationId: string): Promise<void> {
    checkId(migrationId);
    await this.ctx.io.rm(path.join(this.root, migrationId));
  }
}
