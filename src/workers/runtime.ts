import { DefaultLogger, NativeConnection, Runtime, type LogLevel } from '@temporalio/worker';
import { temporalTlsOption, type TemporalTlsFiles } from '../common/temporal-tls';

let installed = false;

/** Quiet the SDK's own logging: ferry processes print one line on start, then only problems. */
export function installRuntime(level: LogLevel = (process.env.FERRY_LOG_LEVEL as LogLevel | undefined) ?? 'WARN'): void {
  if (installed) return;
  installed = true;
  Runtime.install({ logger: new DefaultLogger(level), telemetryOptions: { logging: { forward: {}, filter: { core: 'ERROR', other: 'ERROR' } } } });
}

/** A worker connection, with mutual TLS when `tls` is given (src/common/temporal-tls.ts). */
export async function connectNative(address: string, tls?: TemporalTlsFiles | null): Promise<NativeConnection> {
  const deadline = Date.now() + 30_000;
  const tlsOption = temporalTlsOption(tls);
  for (;;) {
    try {
      return await NativeConnection.connect({ address, ...tlsOption });
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`cannot reach Temporal at ${address}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Resolve when SIGINT or SIGTERM arrives (once). */
export function onShutdownSignal(fn: (signal: string) => void): void {
  let fired = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      if (fired) return;
      fired = true;
      fn(sig);
    });
  }
}
