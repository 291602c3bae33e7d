import path from 'node:path';
import { startDevServer } from '../../common/dev-server';
import { ensureTemporalBinary } from '../../common/temporal-bin';
import { onShutdownSignal } from '../../workers/runtime';
import { int, parse, str } from '../args';
import { commonOptions, configFrom, EMBEDDED_PORT, say } from '../context';

export const help = 'ferry server [--port N] [--ui-port N] [--db FILE] [--headless]   run the embedded Temporal dev server';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      port: { type: 'string' },
      'ui-port': { type: 'string' },
      db: { type: 'string' },
      headless: { type: 'boolean' },
      ip: { type: 'string' },
    },
    false,
  );
  const cfg = configFrom(values);
  const port = int(values.port, 'port', 1, 65535) ?? EMBEDDED_PORT;
  const uiPort = int(values['ui-port'], 'ui-port', 1, 65535);
  const dbFile = path.resolve(str(values.db) ?? path.join(cfg.stateDir, 'temporal.db'));
  const bin = await ensureTemporalBinary(cfg.temporalBin);
  const server = await startDevServer({
    bin,
    ip: str(values.ip) ?? '127.0.0.1',
    port,
    uiPort,
    headless: values.headless === true,
    dbFile,
    namespace: cfg.namespace,
    logFile: path.join(cfg.stateDir, 'temporal-server.log'),
  });
  say(`ferry server: Temporal gRPC ${server.address}`);
  say(`ferry server: UI ${server.uiUrl ?? '(headless)'}`);
  say(`ferry server: state ${dbFile} (persists across restarts); log ${path.join(cfg.stateDir, 'temporal-server.log')}`);
  await new Promise<void>((resolve) => {
    onShutdownSignal(() => resolve());
    server.process.once('exit', () => resolve());
  });
  await server.stop();
  say('ferry server: stopped');
  return 0;
}
