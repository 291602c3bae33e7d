/**
 * Progress on stderr while the suite runs: one line per finished cell, and on a terminal a
 * bar under it that redraws with the running cell's phase, round and λ.
 */
import { formatBytes, formatMs } from '../../common/units';
import type { Progress } from '../../workflows/messages';
import type { CellResult, CellSpec } from './types';

const rounds = (n: number): string => `${n} round${n === 1 ? '' : 's'}`;

export class ProgressBar {
  private index = 0;
  private cell: CellSpec | null = null;
  private detail = '';
  private readonly started = Date.now();
  private cellStarted = Date.now();
  private lastDraw = 0;
  private failures = 0;
  private readonly tty: boolean;

  constructor(
    private readonly out: NodeJS.WritableStream & { isTTY?: boolean; columns?: number },
    private readonly total: number,
    private readonly enabled = true,
  ) {
    this.tty = out.isTTY === true;
  }

  start(index: number, cell: CellSpec): void {
    this.index = index;
    this.cell = cell;
    this.detail = 'booting the VM';
    this.cellStarted = Date.now();
    if (!this.tty) this.write(`${this.prefix()} ${cell.id}: starting\n`);
    this.draw(true);
  }

  phase(detail: string): void {
    this.detail = detail;
    this.draw(false);
  }

  migration(p: Progress): void {
    const lambda = p.lambdas.length ? p.lambdas[p.lambdas.length - 1]!.toFixed(2) : '–';
    this.detail = `${p.phase} · round ${p.iteration} · λ ${lambda} · dirty ${p.remainingPages} · sent ${formatBytes(p.bytesSent)}`;
    this.draw(false);
  }

  finish(r: CellResult): void {
    if (r.status !== 'ok') this.failures++;
    const m = r.metrics;
    const what = m
      ? `${formatMs(m.totalTimeMs)}, ${formatBytes(m.totalBytes)}, downtime ${m.downtimeMs === null ? '–' : formatMs(m.downtimeMs)}, ${rounds(m.iterations)}, ${m.ending === 'switch-to-postcopy' ? `post-copy after ${rounds(m.roundsBeforeSwitch ?? 0)}` : (m.ending ?? '–')}`
      : '';
    const line = `${r.status === 'ok' ? 'ok  ' : 'FAIL'} ${this.prefix()} ${r.cell.id}${what ? `: ${what}` : ''}${r.error ? ` — ${r.error}` : ''}`;
    this.clear();
    this.write(`${line}\n`);
    this.cell = null;
    this.draw(true);
  }

  done(): void {
    this.clear();
  }

  note(line: string): void {
    this.clear();
    this.write(`${line}\n`);
    this.draw(true);
  }

  private prefix(): string {
    return `[${String(this.index + 1).padStart(String(this.total).length)}/${this.total}]`;
  }

  private bar(): string {
    const doneCells = this.cell ? this.index : this.index + 1;
    const width = 24;
    const filled = Math.round((doneCells / Math.max(1, this.total)) * width);
    const elapsed = Date.now() - this.started;
    const eta = doneCells > 0 ? ((this.total - doneCells) * elapsed) / doneCells : null;
    const head = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${doneCells}/${this.total} cells · ${formatMs(elapsed)}${eta !== null && doneCells < this.total ? ` · ETA ~${formatMs(eta)}` : ''}${this.failures ? ` · ${this.failures} failed` : ''}`;
    if (!this.cell) return head;
    return `${head} · ${this.cell.id} · ${this.detail} · ${formatMs(Date.now() - this.cellStarted)}`;
  }

  private draw(force: boolean): void {
    if (!this.enabled || !this.tty) return;
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const cols = this.out.columns || 160;
    this.out.write(`\r\x1b[2K${this.bar().slice(0, Math.max(20, cols - 1))}`);
  }

  private clear(): void {
    if (this.enabled && this.tty) this.out.write('\r\x1b[2K');
  }

  private write(s: string): void {
    if (this.enabled) this.out.write(s);
  }
}
