/**
 * Sizes and rates as operators write them: "256MiB", "1GiB", "32MB/s", "300ms".
 * IEC suffixes are powers of 1024, SI suffixes powers of 1000. A bare number is bytes
 * (or bytes/s, or milliseconds).
 */
import { UsageError } from './errors';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  ki: 1024, kib: 1024, mi: 1024 ** 2, mib: 1024 ** 2, gi: 1024 ** 3, gib: 1024 ** 3, ti: 1024 ** 4, tib: 1024 ** 4,
};

const RATE_SUFFIX = /\s*(\/s|ps)$/i;

export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m?.[2]?.toLowerCase() ?? '';
  const factor = SIZE_UNITS[unit];
  if (!m || factor === undefined) {
    throw new UsageError(`${what}: '${text}' is not a size (examples: 256MiB, 1GiB, 4096)`);
  }
  const value = Math.round(Number(m[1]) * factor);
  if (!Number.isFinite(value)) throw new UsageError(`${what}: '${text}' is too large`);
  return value;
}

/** Bytes per second. Accepts "32MiB/s", "50MB/s", "10Gbit/s" is not accepted: bytes only. */
export function parseRate(text: string, what = 'rate'): number {
  const stripped = text.replace(RATE_SUFFIX, '');
  return parseSize(stripped, what);
}

export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`${what}: '${text}' is not a duration (examples: 300ms, 2s, 1m)`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 'ms').toLowerCase();
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(n * factor);
}

export function formatBytes(n: number): string {
  const abs = Math.abs(n);
  if (abs >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  if (abs >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (abs >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function formatMs(ms: number): string {
  if (ms >= 60_000) return `${(ms / 60_000).toFixed(1)} min`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.round(ms)} ms`;
}
