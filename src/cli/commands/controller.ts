import { startController } from '../../workers/controller';
import { onShutdownSignal } from '../../workers/runtime';
import { parse } from '../args';
import { commonOptions, configFrom, say, temporalAddressOf } from '../context';

export const help = 'ferry controller   run the workflow worker on ferry-control';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...commonOptions, listen: { type: 'string' } }, false);
  const cfg = configFrom(values);
  const controller = await startController({ temporalAddress: temporalAddressOf(cfg), namespace: cfg.namespace });
  onShutdownSignal((sig) => {
    say(`ferry controller: ${sig}, shutting down`);
    void controller.shutdown();
  });
  await controller.done;
  say('ferry controller: stopped');
  return 0;
}
