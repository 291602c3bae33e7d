/** Operator controls: cancel, force-postcopy, set-bandwidth (workflow updates with validators). */
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { UsageError } from '../../common/errors';
import { parseRate } from '../../common/units';
import { resolveHandle } from '../../client/migrations';
import { cancelUpdate, forcePostcopyUpdate, setBandwidthUpdate } from '../../workflows/messages';
import { parse, str } from '../args';
import { commonOptions, configFrom, connectClient, say } from '../context';

export const help = 'ferry cancel <id> · ferry force-postcopy <id> · ferry set-bandwidth <id> <rate>   operator controls';

export async function run(argv: string[], op: 'cancel' | 'force-postcopy' | 'set-bandwidth'): Promise<number> {
  const { values, positionals } = parse(argv, { ...commonOptions, reason: { type: 'string' }, by: { type: 'string' } });
  const cfg = configFrom(values);
  const id = positionals[0];
  if (!id) throw new UsageError(`${op}: name a migration id or a VM`);
  const by = str(values.by) ?? process.env.USER ?? 'operator';
  let rate = 0;
  if (op === 'set-bandwidth') {
    const text = positionals[1];
    if (!text) throw new UsageError('set-bandwidth: give the new rate, e.g. 64MiB/s (0 = uncapped)');
    rate = parseRate(text, 'set-bandwidth');
  }
  const { client, close } = await connectClient(cfg);
  try {
    const handle = resolveHandle(client, id);
    try {
      if (op === 'cancel') {
        await handle.executeUpdate(cancelUpdate, { args: [{ by, reason: str(values.reason) }] });
        say(`${handle.workflowId}: cancel accepted; it rolls back (\`ferry report ${id} --wait\`)`);
      } else if (op === 'force-postcopy') {
        const r = await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by }] });
        say(`${handle.workflowId}: switches to post-copy at iteration ${r.atIteration}`);
      } else {
        const r = await handle.executeUpdate(setBandwidthUpdate, { args: [rate] });
        say(`${handle.workflowId}: migration network capped at ${r.bandwidthBytesPerSec ? `${r.bandwidthBytesPerSec} B/s` : 'nothing (uncapped)'}`);
      }
    } catch (e) {
      if (e instanceof WorkflowUpdateFailedError) {
        say(`ferry ${op}: ${e.cause?.message ?? e.message}`);
        return 1;
      }
      throw e;
    }
    return 0;
  } finally {
    await close();
  }
}
