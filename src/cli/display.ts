/** Live progress on stderr and the final report, for people; --json output is elsewhere. */
import type { WorkflowHandle } from '@temporalio/client';
import { formatBytes, formatMs } from '../common/units';
import { progressQuery, type Progress } from '../workflows/messages';
import type { MigrationReport } from '../workflows/report';

export function progressLine(p: Progress): string {
  const lambda = p.lambdas.length ? p.lambdas[p.lambdas.length - 1]!.toFixed(2) : '–';
  const eta = p.etaMs === null ? '–' : formatMs(p.etaMs);
  const merged = p.staticMerged === null ? '' : ` | static ${p.staticMerged ? 'merged' : 'merging'}`;
  return `${p.vm} ${p.source}→${p.target} ${p.strategy} | ${p.phase} | iteration ${p.iteration} | sent ${formatBytes(p.bytesSent)} | dirty ${p.remainingPages} pages | λ ${lambda} | ETA ${eta}${merged} | ${formatMs(p.elapsedMs)}`;
}

/** Poll the progress query until the workflow ends; draws one updating line on a TTY. */
export async function watchProgress(handle: WorkflowHandle, out: NodeJS.WriteStream = process.stderr, everyMs = 250): Promise<void> {
  let last = '';
  const tty = out.isTTY === true;
  const result = handle.result().then(
    () => true,
    () => true,
  );
  let done = false;
  void result.then(() => (done = true));
  while (!done) {
    try {
      const p = await handle.query(progressQuery);
      const line = progressLine(p);
      if (tty) out.write(`\r\x1b[2K${line}`);
      else if (line.replace(/\| \d+(\.\d+)? (ms|s|min)$/, '') !== last.replace(/\| \d+(\.\d+)? (ms|s|min)$/, '')) out.write(`${line}\n`);
      last = line;
    } catch {
      // Not started yet, or finished between two polls.
    }
    await Promise.race([result, new Promise((r) => setTimeout(r, everyMs))]);
  }
  if (tty && last) out.write('\n');
}

export function reportText(r: MigrationReport): string {
  const lines: string[] = [];
  const ms = (v: number | null): string => (v === null ? '–' : formatMs(v));
  lines.push(`migration ${r.id}`);
  lines.push(`  ${r.vm}: ${r.source} → ${r.target}, ${r.strategy}, workload ${r.workload}, ${formatBytes(r.memoryBytes)}${r.ticket ? `, ticket ${r.ticket}` : ''}`);
  lines.push(`  outcome     ${r.outcome}: ${r.reason}`);
  lines.push(`  total time  ${ms(r.totalTimeMs)}   downtime ${ms(r.downtimeMs)}   post-copy ${ms(r.postcopyDurationMs)}`);
  lines.push(
    `  data        ${formatBytes(r.bytes.migrationNetwork)} over the migration network (storage write ${formatBytes(r.bytes.storageWrite)}, storage read ${formatBytes(r.bytes.storageRead)}; network + storage write ${formatBytes(r.bytes.total)})`,
  );
  if (r.static) lines.push(`  static      ${r.static.pages} pages saved in ${ms(r.static.saveMs)}, merged in ${ms(r.static.mergeMs)}, ${r.static.skippedNewer} skipped (newer on target)`);
  if (r.iterations.length) {
    lines.push(`  iterations  ${r.iterations.length}: pages ${r.iterations.map((i) => i.pages).join(' ')}`);
    lines.push(`              λ ${r.iterations.map((i) => i.lambda.toFixed(2)).join(' ')}`);
  }
  if (r.stopAndCopy) lines.push(`  stop-copy   ${r.stopAndCopy.pages} pages, ${formatBytes(r.stopAndCopy.bytes)} in ${ms(r.stopAndCopy.sendMs)}`);
  if (r.postcopy) {
    const p = r.postcopy;
    lines.push(
      `  post-copy   ${p.faults} faults${p.faultLatencyMs ? ` (p50 ${p.faultLatencyMs.p50} ms, p99 ${p.faultLatencyMs.p99} ms, max ${p.faultLatencyMs.max} ms)` : ''}, ${p.pushedPages} pages over the network, ${p.pbdataPages} from PbData (${p.pbdata})${p.fellBackToPbData ? ', fell back to PbData' : ''}${p.blocktimeMs ? `; vCPUs stalled ${p.blocktimeMs.perVcpuMs.map((ms) => `${ms} ms`).join(' / ')} (all at once ${p.blocktimeMs.allVcpusMs} ms)` : ''}`,
    );
  }
  const decisive = r.decisions.filter((d) => d.action !== 'continue');
  for (const d of decisive) lines.push(`  decision    ${d.reason}`);
  if (r.verification) {
    lines.push(`  verified    ${r.verification.ok ? 'ok' : 'FAILED'} on ${r.verification.where}: ${r.verification.pagesChecked} pages, ${r.verification.mismatches} mismatches (${r.verification.method})`);
  }
  return lines.join('\n');
}
