/**
 * What the first touch of fresh guest memory costs: the emulated target's RAM is allocated
 * zeroed and committed lazily, so the first read or write of each page faults it in.
 *
 *   npx tsx src/bench/first-touch.ts [--memory 16MiB] [--repeat 5] [--json]
 *
 * Per repeat, on freshly allocated memory: every page written once (as a merge or a round
 * writes it), every page read once (as a verification reads it), and the same reads again on
 * memory already touched. Medians (min–max) of the repeats.
 */
import { parseArgs } from 'node:util';
import { parseSize } from '../common/units';
import { DEFAULT_PAGE_SIZE, isZeroPage } from '../dataplane/pages';
import { GuestMemory } from '../guest/memory';
import { summarize } from './suite/metrics';

const { values } = parseArgs({
  options: {
    memory: { type: 'string', default: '16MiB' },
    repeat: { type: 'string', default: '5' },
    json: { type: 'boolean', default: false },
  },
});
const bytes = parseSize(values.memory!, '--memory');
const repeat = Math.max(1, Number(values.repeat));

function timed(f: () => void): number {
  const t = performance.now();
  f();
  return performance.now() - t;
}

const runs: { writeFresh: number; readFresh: number; readTouched: number }[] = [];
for (let r = 0; r < repeat; r++) {
  const a = GuestMemory.create(bytes);
  const zero = new Uint8Array(a.pageSize);
  const writeFresh = timed(() => {
    for (let p = 0; p < a.pageCount; p++) a.writePage(p, zero);
  });
  const b = GuestMemory.create(bytes);
  let z = 0;
  const readFresh = timed(() => {
    for (let p = 0; p < b.pageCount; p++) if (isZeroPage(b.page(p))) z++;
  });
  const readTouched = timed(() => {
    for (let p = 0; p < b.pageCount; p++) if (isZeroPage(b.page(p))) z++;
  });
  if (z !== 2 * b.pageCount) throw new Error('fresh memory was not zero');
  runs.push({ writeFresh, readFresh, readTouched });
}

const stat = (k: keyof (typeof runs)[number]) => {
  const v = summarize(runs.map((x) => x[k]))!;
  return { medianMs: v.median, minMs: v.min, maxMs: v.max };
};
const pages = bytes / DEFAULT_PAGE_SIZE;
const out = { memoryBytes: bytes, pages, repeat, writeFresh: stat('writeFresh'), readFresh: stat('readFresh'), readTouched: stat('readTouched') };
if (values.json) console.log(JSON.stringify(out, null, 2));
else {
  const line = (name: string, s: { medianMs: number; minMs: number; maxMs: number }) =>
    `${name.padEnd(34)} ${s.medianMs.toFixed(1)} ms (${s.minMs.toFixed(1)}–${s.maxMs.toFixed(1)}), ${((s.medianMs * 1000) / pages).toFixed(2)} µs/page`;
  console.log(`${values.memory}, ${pages} pages, ${repeat} repeats, medians (min–max):`);
  console.log(line('write every page of fresh memory', out.writeFresh));
  console.log(line('read every page of fresh memory', out.readFresh));
  console.log(line('read again, pages already touched', out.readTouched));
}
