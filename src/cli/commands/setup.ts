import { ensureSystemTools, TEST_TOOLS } from '../../common/system-packages';
import { ensureTemporalBinary } from '../../common/temporal-bin';
import { commonOptions, configFrom, say } from '../context';
import { parse } from '../args';

export const help = 'ferry setup [--tests]   install what ferry needs (the Temporal dev server, built from source with Go; with --tests, the Debian tools the tests use)';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...commonOptions, tests: { type: 'boolean' } }, false);
  const cfg = configFrom(values);
  if (cfg.temporalAddress) {
    say(`ferry: using Temporal at ${cfg.temporalAddress}; the dev server is built only for tests and demos`);
  }
  const bin = await ensureTemporalBinary(cfg.temporalBin);
  say(`ferry: temporal dev server: ${bin}`);
  if (values.tests === true) ensureSystemTools(TEST_TOOLS, say);
  return 0;
}
