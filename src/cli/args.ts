import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../common/errors';

export type Options = NonNullable<ParseArgsConfig['options']>;

/** parseArgs with strict checking; a bad option becomes a one-line UsageError (exit 2). */
export function parse<T extends Options>(argv: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (e) {
    const msg = (e as Error).message.replace(/\. To specify a positional argument.*$/s, '');
    throw new UsageError(msg.split('\n')[0] ?? msg);
  }
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function int(v: unknown, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name}: '${String(v)}' is not a whole number from ${min} to ${max}`);
  }
  return n;
}

export function choice<T extends string>(v: unknown, name: string, allowed: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !allowed.includes(v as T)) {
    throw new UsageError(`--${name}: '${String(v)}' is not one of ${allowed.join(', ')}`);
  }
  return v as T;
}
