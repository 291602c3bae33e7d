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
 * The chunk and manifest formats are described in store-format.ts; the writer is in
 * store-writer.ts and the reader in store-reader.ts. This module re-exports all of them.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { UsageError } from '../common/errors';
import { checkId, SNAPSHOT_KINDS, type SnapshotKind } from './store-format';
import { SnapshotReader } from './store-reader';
import { SnapshotWriter, type WriterOptions } from './store-writer';

export { crc32, decodeChunk, parseManifest, SNAPSHOT_KINDS, StorageCorruptError, StorageTimeoutError } from './store-format';
export type { Chunk, Manifest, ManifestChunk, SnapshotKind } from './store-format';
export { SnapshotReader, type ReaderStats } from './store-reader';
export { SnapshotWriter, type WriterOptions, type WriterStats } from './store-writer';

export class SharedStore {
  readonly root: string;

  constructor(rootDir: string) {
    this.root = path.resolve(rootDir);
  }

  dir(migrationId: string, kind: SnapshotKind): string {
    checkId(migrationId);
    if (!SNAPSHOT_KINDS.includes(kind)) throw new UsageError(`snapshot kind '${String(kind)}' is not one of ${SNAPSHOT_KINDS.join(', ')}`);
    return path.join(this.root, migrationId, kind);
  }

  async openWriter(migrationId: string, kind: SnapshotKind, opts: WriterOptions): Promise<SnapshotWriter> {
    const dir = this.dir(migrationId, kind);
    const w = new SnapshotWriter(dir, migrationId, kind, opts);
    await w.init();
    return w;
  }

  openReader(migrationId: string, kind: SnapshotKind): SnapshotReader {
    return new SnapshotReader(this.dir(migrationId, kind), migrationId, kind);
  }

  /** Delete every artefact of a migration (rollback cleanup). Idempotent. */
  async remove(migrationId: string): Promise<void> {
    checkId(migrationId);
    await fsp.rm(path.join(this.root, migrationId), { recursive: true, force: true });
  }
}
