/**
 * Page-access traces for the `trace:<file>` workload.
 *
 * File format (text, UTF-8, one access per line):
 *
 *     # ferry page trace v1            <- optional; '#' starts a comment anywhere on a line
 *     <time_ms> <r|w> <page> [<count>]
 *     0      w 12                      <- at 0 ms, write data page 12
 *     0.25   r 4096                    <- at 0.25 ms, read data page 4096
 *     1.5    w 100 8                   <- at 1.5 ms, write data pages 100..107
 *
 * - time_ms: milliseconds since the start of the trace, a non-negative decimal number,
 *   non-decreasing from line to line.
 * - r / w (also R / W, read / write): the kind of access.
 * - page: index of a *data* page, counted from 0 (the guest's superblock and version table
 *   are not addressable). Replay wraps it modulo the guest's data pages, so a trace
 *   recorded on a bigger guest still replays on a smaller one.
 * - count: optional run length (default 1, at most 1,000,000): count consecutive pages,
 *   all at the same time.
 * Blank lines are ignored. Any other line is an error naming the file, the line number and
 * what is wrong with it, never the line's content (a trace file may hold anything).
 *
 * Replay: each access runs on the vCPU that owns the page (page % vcpus), at time_ms after
 * the vCPU started (divided by `speed`), or back to back if the rate is 'max'. At the end
 * the trace starts over (the period is the last timestamp, at least 1 ms) unless loop=false.
 */
import { UsageError } from '../common/errors';

export interface Trace {
  /** Milliseconds since trace start, non-decreasing. */
  times: Float64Array;
  /** Data-page indices. */
  pages: Uint32Array;
  /** 1 = write, 0 = read. */
  writes: Uint8Array;
  /** Loop period in ms. */
  durationMs: number;
}

export interface TraceAccess {
  timeMs: number;
  write: boolean;
  page: number;
}

const MAX_RUN = 1_000_000;
const MAX_ENTRIES = 50_000_000;

export function parseTrace(text: string, source = 'trace'): Trace {
  const times: number[] = [];
  const pages: number[] = [];
  const writes: number[] = [];
  const lines = text.split(/\r?\n/);
  let last = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/#.*/, '').trim();
    if (line === '') continue;
    // Only the position and the reason: nothing read from the file goes into the message.
    const fail = (why: string): never => {
      throw new UsageError(`${source}:${i + 1}: ${why} (expected "<time_ms> r|w <page> [<count>]")`);
    };
    const f = line.split(/\s+/);
    if (f.length < 3 || f.length > 4) fail(`expected 3 or 4 fields, got ${f.length}`);
    const [tText, opText, pageText, countText] = f as [string, string, string, string | undefined];
    if (!/^\d+(\.\d+)?$/.test(tText)) fail('field 1 (time) is not a non-negative number of milliseconds');
    const t = Number(tText);
    if (t < last) fail('field 1 (time) goes backwards (earlier than the previous access)');
    const op = opText.toLowerCase();
    if (op !== 'r' && op !== 'w' && op !== 'read' && op !== 'write') fail('field 2 (access) is not r or w');
    if (!/^\d+$/.test(pageText) || Number(pageText) >= 2 ** 32) fail('field 3 (page) is not a page index (0..2^32-1)');
    const page = Number(pageText);
    let count = 1;
    if (countText !== undefined) {
      if (!/^\d+$/.test(countText) || Number(countText) < 1 || Number(countText) > MAX_RUN) fail(`field 4 (count) is not 1..${MAX_RUN}`);
      count = Number(countText);
    }
    if (times.length + count > MAX_ENTRIES) fail(`trace longer than ${MAX_ENTRIES} accesses`);
    for (let k = 0; k < count; k++) {
      times.push(t);
      pages.push((page + k) % 2 ** 32);
      writes.push(op[0] === 'w' ? 1 : 0);
    }
    last = t;
  }
  if (times.length === 0) throw new UsageError(`${source}: trace has no accesses`);
  return {
    times: Float64Array.from(times),
    pages: Uint32Array.from(pages),
    writes: Uint8Array.from(writes),
    durationMs: Math.max(1, last),
  };
}

/** Write accesses in the trace format (one line each). */
export function formatTrace(accesses: Iterable<TraceAccess>): string {
  const out = ['# ferry page trace v1', '# <time_ms> <r|w> <page> [<count>]'];
  for (const a of accesses) out.push(`${+a.timeMs.toFixed(3)} ${a.write ? 'w' : 'r'} ${a.page}`);
  return out.join('\n') + '\n';
}
