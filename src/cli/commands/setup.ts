import { ensureSystemTools, TEST_TOOLS } from '../../common/system-packages';
import { ensureGoTool, ensureTemporalBinary, TEMPORAL_SERVER, TEMPORAL_SQL_TOOL } from '../../common/temporal-bin';
import { ensureTestGuest } from '../../hypervisor/qemu/guest-image';
import { commonOptions, configFrom, say } from '../context';
import { parse } from '../args';

export const help = 'ferry setup [--tests]   install what ferry needs (the Temporal dev server, built from source with Go; with --tests, the Debian tools the tests use (PostgreSQL among them), QEMU ≥ 9 from bookworm-backports, the Temporal server and schema tool for `ferry cluster`, and the QEMU test guest)';

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...commonOptions, tests: { type: 'boolean' } }, false);
  const cfg = configFrom(values);
  if (cfg.temporalAddress) {
    say(`ferry: using Temporal at ${cfg.temporalAddress}; the dev server is built only for tests and demos`);
  }
  const bin = await ensureTemporalBinary(cfg.temporalBin);
  say(`ferry: temporal dev server: ${bin}`);
  if (values.tests === true) {
    ensureSystemTools(TEST_TOOLS, say);
    // `ferry cluster` (and its tests): the Temporal server and its schema tool, from source.
    say(`ferry: temporal server: ${await ensureGoTool(TEMPORAL_SERVER, null, say)}`);
    say(`ferry: temporal sql tool: ${await ensureGoTool(TEMPORAL_SQL_TOOL, null, say)}`);
    // The QEMU tests' guest: kernel and busybox from Debian's packages, built once and cached.
    const guest = await ensureTestGuest({ log: say });
    say(`ferry: test guest: kernel ${guest.kernelVersion}, ${guest.initrd}`);
  }
  return 0;
}
