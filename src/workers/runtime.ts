import { DefaultLogger, NativeConnection, Runtime, type LogLevel } from '@temporalio/worker';

let installed = false;

/** Quiet the SDK's own logging: ferry processes print one line on start, then only problems. */
export function installRuntime(level: LogLevel = (process.env.FERRY_LOG_LEVEL as LogLevel | undefined) ?? 'WARN'): void {
  if (installed) return;
  installed = true;
  Runtime.install({ logger: new DefaultLogger(level), telemetryOptions: { logging: { forward: {}, filter: { core: 'ERROR', other: 'ERROR' } } } });
}

export async function connectNative(address: string): Promise<NativeConnection> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await NativeConnection.connect({ address });
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
