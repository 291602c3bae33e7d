import os from 'node:os';
import { UsageError } from '../../common/errors';
import { HOST_ID_RE } from '../../common/names';
import { parseSize } from '../../common/units';
import { startAgent } from '../../workers/agent';
import { onShutdownSignal } from '../../workers/runtime';
import { choice, parse, str } from '../args';
import { commonOptions, configFrom, say, temporalAddressOf } from '../context';

export const help =
  'ferry agent --host <id> [--driver emulated|qemu] [--data-addr HOST:PORT] [--storage DIR] [--memory-capacity SIZE] [--metrics HOST:PORT]   run a host agent';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      host: { type: 'string' },
      driver: { type: 'string' },
      'data-addr': { type: 'string' },
      'data-advertise': { type: 'string' },
      storage: { type: 'string' },
      'memory-capacity': { type: 'string' },
      metrics: { type: 'string' },
    },
    false,
  );
  const cfg = configFrom(values);
  const hostId = str(values.host);
  if (!hostId) throw new UsageError('--host: required (the id of this host, e.g. host-a)');
  if (!HOST_ID_RE.test(hostId)) throw new UsageError(`--host: '${hostId}' is not a valid host id (letters, digits, . _ -)`);
  const driver = choice(values.driver, 'driver', ['emulated', 'qemu'] as const) ?? 'emulated';
  if (driver === 'qemu') throw new UsageError('--driver qemu: the QEMU driver is not available in this build; use --driver emulated');
  const dataAddr = str(values['data-addr']) ?? '127.0.0.1:0';
  if (!/^[^\s:]+:\d{1,5}$/.test(dataAddr)) throw new UsageError(`--data-addr: '${dataAddr}' is not HOST:PORT`);
  const capacity = values['memory-capacity'] ? parseSize(String(values['memory-capacity']), '--memory-capacity') : Math.floor(os.totalmem() / 2);
  const agent = await startAgent({
    hostId,
    temporalAddress: temporalAddressOf(cfg),
    namespace: cfg.namespace,
    driver,
    dataAddr,
    dataAdvertise: str(values['data-advertise']),
    storageDir: cfg.storageDir,
    memoryCapacityBytes: capacity,
    metricsAddr: str(values.metrics),
  });
  onShutdownSignal((sig) => {
    say(`ferry agent ${hostId}: ${sig}, shutting down`);
    void agent.shutdown();
  });
  await agent.done;
  say(`ferry agent ${hostId}: stopped`);
  return 0;
}
