/**
 * par-migrate on QEMU: the switch to post-copy, armed on the source ahead of the merge.
 *
 * When the rule will switch the moment the StaticData merge completes (armOnMerge), the
 * workflow arms the source agent with that decision; the agent switches as soon as the
 * target reports the merge done, instead of waiting for the workflow to hear of the merge,
 * decide and send the switch step. The decision stays the workflow's: it is taken and
 * recorded here, only carried out where the merge's completion is seen first. A later round
 * that changes the decision disarms it.
 */
import { CancellationScope } from '@temporalio/workflow';
import type { Decision } from '../policy/types';
import type { Engine } from './engine';

export class ArmedSwitch {
  private scope: CancellationScope | null = null;
  private done: Promise<void> | null = null;
  private result: { switched: boolean; note: string } | null = null;
  private failed = false;
  /** The decision the source carries out when it fires. */
  decision: Decision | null = null;

  get armed(): boolean {
    return this.scope !== null;
  }

  /** The source answered: switched, found nothing to switch, or failed. */
  get settled(): boolean {
    return this.result !== null || this.failed;
  }

  get fired(): boolean {
    return this.result?.switched === true;
  }

  /** What the source said when it fired. */
  get note(): string {
    return this.result?.note ?? '';
  }

  /** Arm with this decision (re-arming keeps the activity and takes the newer reason). */
  arm(engine: Engine, decision: Decision): void {
    this.decision = decision;
    if (this.scope || !engine.switchWhenMerged) return;
    const scope = new CancellationScope();
    this.scope = scope;
    this.result = null;
    this.failed = false;
    this.done = scope.run(() => engine.switchWhenMerged!()).then(
      (r) => {
        this.result = r;
      },
      () => {
        this.failed = true;
      },
    );
  }

  /** Stop the source from switching; true when it already had. */
  async disarm(): Promise<boolean> {
    if (!this.scope) return false;
    if (!this.settled) this.scope.cancel();
    await this.done;
    this.scope = null;
    return this.fired;
  }
}
