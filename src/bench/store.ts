/**
 * Channel-1 micro-benchmark: StaticData save throughput (uncapped, fsync on) and static
 * merge throughput into an in-memory target (pre-faulted, like a created target VM), then
 * a byte-for-byte check of the result. memoryMiBps counts guest memory covered per second,
 * diskMiBps the chunk bytes (zero pages elided) written or read per second.
 *
 *   npx tsx src/bench/store.ts [--size 256MiB] [--chunk-pages 1024] [--zero-fraction 0.1]
 *                              [--dir DIR] [--no-fsync] [--json]
 *
 * --json prints exactly one JSON document on stdout; otherwise a short human summary.
 */
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../common/units';
import { Bitmap } from '../dataplane/bitmap';
import { mergeStatic } from '../dataplane/merge';
import { DEFAULT_PAGE_SIZE, type PageSink, type PageSource } from '../dataplane/pages';
import { SharedStore } from '../dataplane/store';

const MiB = 1024 * 1024;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '256MiB' },
      'chunk-pages': { type: 'string', default: '1024' },
      'zero-fraction': { type: 'string', default: '0.1' },
      dir: { type: 'string' },
      'no-fsync': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  const pageSize = DEFAULT_PAGE_SIZE;
  const bytes = parseSize(values.size, '--size');
  const pageCount = Math.floor(bytes / pageSize);
  const chunkPages = Number(values['chunk-pages']);
  const zeroFraction = Number(values['zero-fraction']);

  const mem = new Uint8Array(pageCount * pageSize);
  randomFillSync(mem);
  const zeroEvery = zeroFraction > 0 ? Math.max(1, Math.round(1 / zeroFraction)) : 0;
  if (zeroEvery > 0) for (let p = 0; p < pageCount; p += zeroEvery) mem.fill(0, p * pageSize, (p + 1) * pageSize);
  const source: PageSource = {
    pageSize,
    pageCount,
    readPage: (pfn, dst) => dst.set(mem.subarray(pfn * pageSize, (pfn + 1) * pageSize)),
  };
  // The target's RAM exists before the merge (the target VM is created first): pre-fault
  // it so the merge is not charged for the kernel zeroing fresh pages.
  const target = new Uint8Array(pageCount * pageSize).fill(0xee);
  const sink: PageSink = { pageSize, pageCount, writePage: (pfn, src) => target.set(src, pfn * pageSize) };

  const root = values.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-bench-store-')));
  const store = new SharedStore(root);
  const id = `bench-${process.pid}`;
  try {
    const writer = await store.openWriter(id, 'static', { pageSize, pageCount, rateBytesPerSec: 0, chunkPages, fsync: !values['no-fsync'] });
    const t0 = performance.now();
    await writer.writePages(Bitmap.full(pageCount), source);
    await writer.commit();
    const saveMs = performance.now() - t0;
    const ws = writer.stats();

    const reader = store.openReader(id, 'static');
    const dyn = new Bitmap(pageCount);
    const merged = await mergeStatic({ reader, sink, hasDynamic: (p) => dyn.get(p) });
    if (Buffer.compare(target, mem) !== 0) throw new Error('merge result differs from the source memory');

    const memMiB = (pageCount * pageSize) / MiB;
    const result = {
      bench: 'store',
      memoryBytes: pageCount * pageSize,
      pageSize,
      chunkPages,
      zeroFraction,
      fsync: !values['no-fsync'],
      targetPrefaulted: true,
      save: {
        ms: round(saveMs),
        bytesWritten: ws.bytesWritten,
        chunks: ws.chunks,
        zeroPages: ws.zeroPages,
        memoryMiBps: round(memMiB / (saveMs / 1000)),
        diskMiBps: round(ws.bytesWritten / MiB / (saveMs / 1000)),
      },
      merge: {
        ms: round(merged.ms),
        pages: merged.pages,
        bytesRead: merged.bytesRead,
        memoryMiBps: round(memMiB / (merged.ms / 1000)),
        diskMiBps: round(merged.bytesRead / MiB / (merged.ms / 1000)),
      },
      verified: true,
      node: process.version,
    };
    if (values.json) {
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    } else {
      process.stdout.write(
        `StaticData ${memMiB.toFixed(0)} MiB: save ${result.save.memoryMiBps} MiB/s (${result.save.ms} ms, ${ws.chunks} chunks), ` +
          `merge ${result.merge.memoryMiBps} MiB/s (${result.merge.ms} ms)\n`,
      );
    }
  } finally {
    await store.remove(id);
    if (!values.dir) await fs.rm(root, { recursive: true, force: true });
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
