/**
 * par-migrate's channel-1 as the runbook sees it: the save of the full-memory snapshot to
 * shared storage (on the source) and its merge at the target, both running beside the
 * pre-copy rounds. This class holds their state — merged, failed, abandoned — so the
 * runbook's loop reads as decisions, not bookkeeping.
 *
 * The save failing (storage full, unwritable, hung) is not fatal: channel-1 is abandoned and
 * every page goes over channel-2. The merge failing on storage is treated the same way; any
 * other merge failure rolls the migration back.
 */
import { ActivityFailure, ApplicationFailure, CancellationScope, condition, isCancellation, patched, sleep } from '@temporalio/workflow';
import type { Engine } from './engine';
import { failureMessage } from './saga';

/** Marks runs where the target's merge failing on storage (hung, full, unreadable) drops channel-1 as a failed save does, instead of rolling back. */
export const MERGE_STORAGE_PATCH = 'ferry-merge-storage-failure';
/** Failure types of the storage steps (activities/emulated-sessions.ts storageFailure). */
const STORAGE_FAILURES = ['StorageFull', 'StorageUnavailable', 'StorageHung', 'StorageError'];

/** The message of a storage step's failure, or null for any other failure. */
function storageFailureOf(err: unknown): string | null {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure && STORAGE_FAILURES.includes(cause.type ?? '') ? failureMessage(err) : null;
}

export class StaticSnapshot {
  /** null: no StaticData in this migration; false: the target is still merging; true: merged, or every page went over channel-2. */
  merged: boolean | null;
  /** Why the save (or the merge, on storage) failed; channel-1 is then abandoned. */
  saveError: string | null = null;
  /** The merge failed for another reason: the migration rolls back. */
  mergeFailed = false;
  /** Set when channel-1 was abandoned, with why. */
  abandoned: string | null = null;
  private savePromise: Promise<unknown> | null = null;
  private mergePromise: Promise<unknown> | null = null;
  private saveScope: CancellationScope | null = null;
  private mergeScope: CancellationScope | null = null;

  constructor(par: boolean) {
    this.merged = par ? false : null;
  }

  /** The save and the merge were started. */
  get running(): boolean {
    return this.mergePromise !== null;
  }

  /** par-migrate without channel-1 for this guest (not worth it): every page goes over channel-2. */
  skip(): void {
    if (this.mergePromise) throw new Error('StaticData already started');
    this.merged = null;
  }

  /** Start the save on the source and the merge on the target. */
  start(engine: Engine, target: string): void {
    this.saveScope = new CancellationScope();
    this.savePromise = this.saveScope.run(() => engine.saveStatic());
    this.mergeScope = new CancellationScope();
    this.mergePromise = this.mergeScope.run(() => engine.mergeStatic());
    this.mergePromise.then(
      () => (this.merged = true),
      (err) => {
        if (isCancellation(err)) return;
        const storage = storageFailureOf(err);
        if (storage !== null && patched(MERGE_STORAGE_PATCH)) {
          // The target cannot read StaticData (storage hung, gone): channel-1 is dropped as
          // when the save fails; the save stops, every page goes over channel-2.
          this.saveError ??= `the merge on ${target}: ${storage}`;
          this.saveScope?.cancel();
          return;
        }
        this.mergeFailed = true;
      },
    );
    this.savePromise.then(
      () => undefined,
      (err) => (this.saveError ??= failureMessage(err)),
    );
  }

  /** StaticData failed for good (storage full or not writable) and is not abandoned yet: go on without channel-1. */
  saveFailed(): boolean {
    return this.saveError !== null && this.abandoned === null && !this.merged;
  }

  /** Give channel-1 up: the merge stops; the caller removes StaticData and sends every page over channel-2. */
  abandon(): string {
    this.abandoned = `StaticData abandoned (${this.saveError})`;
    this.mergeScope?.cancel();
    return this.abandoned;
  }

  /** Still saving and merging, nothing failed: the state in which rounds may be held or the source armed. */
  inProgress(): boolean {
    return this.merged === false && this.mergePromise !== null && this.saveError === null && this.abandoned === null && !this.mergeFailed;
  }

  /** Wait until the merge is done, the save failed, the merge failed (thrown: roll back) or `also` holds. */
  async settled(also: () => boolean = () => false): Promise<void> {
    await condition(() => this.merged === true || this.saveError !== null || this.mergeFailed || also());
    if (this.mergeFailed) await this.mergePromise; // throws: roll back
  }

  /** Wait for the merge, at most `ms`. */
  async pause(ms: number): Promise<void> {
    await Promise.race([this.mergePromise!.then(() => undefined), sleep(ms)]);
  }

  /** Before the undos: the save and the merge stop, so StaticData is not written while it is removed. */
  async stop(): Promise<void> {
    if (!this.savePromise) return;
    this.saveScope?.cancel();
    this.mergeScope?.cancel();
    await CancellationScope.nonCancellable(() => Promise.allSettled([this.savePromise, this.mergePromise]));
  }

  /** Before the switch: the save first (if it fails now, the rollback says so), then the merge. */
  async finish(): Promise<void> {
    if (!this.mergePromise || this.abandoned !== null) return;
    await this.savePromise;
    await this.mergePromise;
  }

  /** After the switch: the save's outcome, unless channel-1 was abandoned. */
  async saveDone(): Promise<void> {
    if (this.abandoned === null) await this.savePromise;
  }
}
