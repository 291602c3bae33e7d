/**
 * The runbook's paths only the emulated engine has, with stubbed activities (./stubs.ts):
 * par-migrate's channel-1 (StaticData saved by the source, merged by the target beside the
 * rounds), PbData, the resume of the target inside the switch, and the emulated post-copy
 * (PbData, push and drain side by side) that only moves forward.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forcePostcopyUpdate } from '../../src/workflows/messages';
import { closedOrStalled, converging, diverging, history, nonRetryable, progressUntil, report, startHarness, steady, withCluster, type Gate, type Harness, type Rounds, type StubCluster } from './stubs';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

/** The target's merge waits at a gate the test opens, then answers as usual. */
function gateTheMerge(c: StubCluster): Gate {
  const merge = c.gate();
  c.on('mergeStatic', async (_input, ctx) => {
    await merge.wait();
    return ctx.answer();
  });
  return merge;
}

describe('emulated: par-migrate (pa-hybrid)', () => {
  it('happy path: StaticData saved and merged beside the rounds, post-copy, completed', async () => {
    await withCluster(h, { rounds: diverging }, async (c) => {
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('completed');
      expect(r.static).toEqual({ pages: 4096, saveMs: 5, mergeMs: 5, skippedNewer: 0 });
      expect(c.called('saveStatic').map((x) => x.side)).toEqual(['source']);
      expect(c.called('mergeStatic').map((x) => x.side)).toEqual(['target']);
      // The bulk pass goes to StaticData: no round sends every page.
      expect(c.called('runIteration').map((x) => x.input.bulk)).not.toContain(true);
      expect(r.decisions.at(-1)?.action).toBe('switch-to-postcopy');
      expect(c.indexOf('verifyTarget')).toBeLessThan(c.indexOf('releaseSource'));
      expect(c.names().at(-1)).toBe('cleanupStorage');
      expect(c.called('cleanupStorage').map((x) => x.side)).toEqual(['target']);
      expect(c.called('rollbackSource')).toEqual([]);
    });
  });

  it('a guest whose bulk pass is shorter than a round worth sending goes without StaticData: a bulk first round, the reason recorded', async () => {
    await withCluster(h, { rounds: converging }, async (c) => {
      c.on('describeVm', async (_input, ctx) => ({ ...((await ctx.answer()) as object), nonZeroPages: 5 }));
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('completed');
      // The source was asked to count up to 100 ms of the 32 MiB/s link.
      expect(c.called('describeVm')[0]!.input.countNonZeroUpToBytes).toBe(Math.ceil(0.1 * 32 * 2 ** 20));
      expect(c.called('saveStatic')).toEqual([]);
      expect(c.called('mergeStatic')).toEqual([]);
      expect(r.static).toBeNull();
      const first = c.called('runIteration')[0]!;
      expect(first.input).toMatchObject({ index: 1, bulk: true });
      expect(first.input.startWhen).toBeUndefined();
      expect(r.decisions[0]).toMatchObject({ iteration: 1, action: 'continue' });
      expect(r.decisions[0]!.reason).toMatch(/StaticData not started: the bulk pass holds 5 non-zero page\(s\) of \d+, 1 ms at 32\.00 MiB\/s < 100 ms/);
      expect(r.reason).toMatch(/verified; StaticData not started/);
    });
  });

  it('a guest with more than a round worth of non-zero pages keeps StaticData', async () => {
    await withCluster(h, { rounds: converging }, async (c) => {
      c.on('describeVm', async (_input, ctx) => ({ ...((await ctx.answer()) as object), nonZeroPages: 820 }));
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('completed');
      expect(c.called('saveStatic')).toHaveLength(1);
      expect(c.called('runIteration').map((x) => x.input.bulk)).not.toContain(true);
      expect(r.decisions.some((d) => d.reason.includes('StaticData not started'))).toBe(false);
    });
  });

  it('the static save fails during the rounds: StaticData abandoned, a bulk round instead, completed', async () => {
    await withCluster(h, { rounds: converging }, async (c) => {
      c.fail('saveStatic', 'nonRetryable', 'storage full (stub)');
      const merge = c.gate(); // the merge waits for data that never comes
      c.on('mergeStatic', async () => {
        await merge.wait();
        return nonRetryable('merge: no StaticData (stub)');
      });
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('completed');
      expect(r.reason).toMatch(/verified; StaticData abandoned \(storage full \(stub\)\), every page went over channel-2$/);
      const abandon = r.decisions.find((d) => d.reason.includes('StaticData abandoned'));
      expect(abandon).toMatchObject({ action: 'continue' });
      // The round after the abandon sends every page; StaticData is removed before it.
      const rounds = c.called('runIteration');
      const bulk = rounds.filter((x) => x.input.bulk === true);
      expect(bulk).toHaveLength(1);
      expect(bulk[0]!.input.index).toBe(abandon!.iteration);
      const removed = c.calls.find((x) => x.name === 'cleanupStorage' && x.side === 'source');
      expect(removed).toBeDefined();
      expect(removed!.seq).toBeLessThan(bulk[0]!.seq);
      await c.until(() => merge.cancelled, 'the merge cancelled');
      expect(c.called('rollbackSource')).toEqual([]);
      expect(c.called('abortTarget')).toEqual([]);
    });
  });

  it('the static save fails after a forced switch ended the rounds: rolled back, StaticData removed first', async () => {
    await withCluster(h, { rounds: steady }, async (c) => {
      const save = c.gate();
      c.on('saveStatic', async () => {
        await save.wait();
        return nonRetryable('storage full (stub)');
      });
      c.on('mergeStatic', async () => {
        await c.gate().wait();
        return null;
      });
      const round2 = c.holdAt('runIteration', 1);
      const handle = await c.migrate('pa-hybrid', { maxIterations: 50 });
      await round2.entered;
      await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'dave' }] });
      round2.open();
      await progressUntil(handle, (p) => p.lastDecision?.action === 'switch-to-postcopy', 'the forced decision');
      save.open();
      const r = await report(handle);
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toBe(`precopy failed: storage full (stub); rolled back, ${c.vm} runs on ${c.source}`);
      expect(r.decisions.at(-1)?.reason).toMatch(/forced by dave/);
      expect(c.called('switchToPostcopy')).toEqual([]);
      const undos = c.calls.filter((x) => ['cleanupStorage', 'rollbackSource', 'abortTarget'].includes(x.name)).map((x) => `${x.side}:${x.name}`);
      expect(undos).toEqual(['source:cleanupStorage', 'source:rollbackSource', 'target:abortTarget']);
    });
  });

  // A saturated hot set (3000 pages a round, all dirty again, its growth curve flat) while the
  // target still merges: ferry's rule would switch once merged, so the rounds it would not send
  // are held until the merge is done; then one fresh round (the decision needs the dirty set
  // as it is then) and the switch.
  const saturated = [[10, 2000], [20, 2900], [30, 2990], [40, 3000], [50, 3000]];
  it("ferry's rule holds the rounds it would not send while the target merges a saturated set: one fresh round after the merge, then the switch", async () => {
    const plateau: Rounds = () => ({ pages: 3000, dirtyAfter: 3000, growth: saturated });
    await withCluster(h, { rounds: plateau }, async (c) => {
      const merge = gateTheMerge(c);
      const handle = await c.migrate('pa-hybrid', { maxIterations: 30 });
      await progressUntil(handle, (p) => /^hold the rounds at iteration 2 until the static merge is done: once merged the rule would switch \(no progress.*the dirty set is saturated/.test(p.lastDecision?.reason ?? ''), 'the hold');
      const sent = c.called('runIteration').length;
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      // One round before the hold (its curve is enough), none while it lasted, one after the merge.
      expect(sent).toBe(1);
      expect(c.called('runIteration')).toHaveLength(2);
      expect(r.decisions.map((d) => d.action)).toEqual(['continue', 'switch-to-postcopy']);
      expect(r.decisions.at(-1)!.reason).toMatch(/^switch to post-copy at iteration 3: no progress/);
    });
  });

  // A set still growing comes back bigger after a wait than the rounds it would replace: no hold.
  it("ferry's rule keeps sending rounds while the target merges a dirty set that still grows", async () => {
    const growing: Rounds = () => ({ pages: 3000, dirtyAfter: 3000, growth: [[10, 600], [20, 1200], [30, 1800], [40, 2400], [50, 3000]] });
    await withCluster(h, { rounds: growing }, async (c) => {
      const merge = gateTheMerge(c);
      const handle = await c.migrate('pa-hybrid', { maxIterations: 8 });
      await c.until(() => c.called('runIteration').length >= 4, 'four rounds during the merge');
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      expect(r.decisions.some((d) => /hold the rounds/.test(d.reason))).toBe(false);
      expect(r.decisions.filter((d) => d.reason === 'continue: static merge not complete').length).toBeGreaterThanOrEqual(3);
    });
  });

  it("the paper's rule goes on sending rounds while the target merges, as it always did", async () => {
    const plateau: Rounds = () => ({ pages: 3000, dirtyAfter: 3000, growth: saturated });
    await withCluster(h, { rounds: plateau }, async (c) => {
      const merge = gateTheMerge(c);
      const handle = await c.migrate('pa-hybrid', { maxIterations: 8, switchRule: 'paper' });
      await c.until(() => c.called('runIteration').length >= 5, 'five rounds during the merge');
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      expect(r.decisions.some((d) => /hold the rounds/.test(d.reason))).toBe(false);
      expect(r.decisions.filter((d) => d.reason === 'continue: static merge not complete').length).toBeGreaterThanOrEqual(4);
    });
  });

  it('rounds during the StaticData save wait on the source until worth sending; once merged they do not', async () => {
    await withCluster(h, { rounds: () => ({ pages: 10, dirtyAfter: 0 }) }, async (c) => {
      const merge = gateTheMerge(c);
      const handle = await c.migrate('pa-hybrid');
      await c.until(() => c.called('runIteration').length >= 2, 'two rounds during the merge');
      const during = c.called('runIteration').length;
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      const rounds = c.called('runIteration').map((x) => x.input.startWhen);
      // 100 ms of pages at 32 MiB/s: 820 pages; the source waits at most 10 s for them (or the save's end).
      for (const w of rounds.slice(0, during)) expect(w).toEqual({ worthPages: 820, maxWaitMs: 10_000 });
      // A round after the merge (if the wait for it was long enough to need one) starts at once.
      for (const w of rounds.slice(during + 1)) expect(w).toBeUndefined();
      expect(r.decisions.at(-1)?.reason).toMatch(/^stop-and-copy at iteration \d+: no dirty pages left$/);
    });
  });

  it('the merge fails while rounds are short: rolled back with the merge’s error', async () => {
    // Rounds of 100 pages take 12 ms at 32 MiB/s: the runbook waits on the merge between them.
    await withCluster(h, { rounds: () => ({ pages: 100, dirtyAfter: 90 }) }, async (c) => {
      c.fail('mergeStatic', 'nonRetryable', 'StaticData unreadable (stub)');
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toBe(`precopy failed: StaticData unreadable (stub); rolled back, ${c.vm} runs on ${c.source}`);
      expect(c.names().slice(-3)).toEqual(['cleanupStorage', 'rollbackSource', 'abortTarget']);
    });
  });

  // A merge that fails for good ends the migration even when rounds are long (no short-round
  // wait on the merge): the valve's wait for the merge also ends on its failure.
  it('the merge fails while rounds are long: the migration must still end (it stalls at the valve)', async () => {
    await withCluster(h, { rounds: steady }, async (c) => {
      c.fail('mergeStatic', 'nonRetryable', 'StaticData unreadable (stub)');
      const handle = await c.migrate('pa-hybrid', { maxIterations: 3 });
      await c.until(() => c.called('runIteration').length >= 3 && c.called('mergeStatic').length === 1, 'three rounds and the merge');
      expect(await closedOrStalled(handle)).toBe('closed');
      const r = await report(handle);
      expect(['rolled-back', 'completed']).toContain(r.outcome);
    });
  });

  // On a failure (not a cancel) before the switch, channel-1 stops first: saveStatic and
  // mergeStatic are cancelled before "remove StaticData" runs.
  it('a failure before the switch cancels the static save and merge before StaticData is removed', async () => {
    await withCluster(h, { rounds: steady }, async (c) => {
      const save = c.gate();
      const merge = c.gate();
      c.on('saveStatic', async (_i, x) => {
        await save.wait();
        return x.answer();
      });
      c.on('mergeStatic', async (_i, x) => {
        await merge.wait();
        return x.answer();
      });
      c.on('runIteration', (i, x) => (i.index === 2 ? nonRetryable('round broke (stub)') : x.answer()));
      const handle = await c.migrate('pa-hybrid');
      const r = await report(handle);
      expect(r.outcome).toBe('rolled-back');
      const ev = await history(handle);
      const scheduled = (name: string) => ev.find((e) => e.type === 'ACTIVITY_TASK_SCHEDULED' && e.activity === name)!.id;
      const cancelRequested = (name: string) => ev.find((e) => e.type === 'ACTIVITY_TASK_CANCEL_REQUESTED' && e.scheduledId === scheduled(name))?.id ?? Infinity;
      const removal = ev.find((e) => e.type === 'ACTIVITY_TASK_SCHEDULED' && e.activity === 'cleanupStorage')!.id;
      expect(cancelRequested('saveStatic')).toBeLessThan(removal);
      expect(cancelRequested('mergeStatic')).toBeLessThan(removal);
    });
  });
});

describe('emulated: the switch', () => {
  it('PbData sync: written between the pause and the resume, once', async () => {
    await withCluster(h, {}, async (c) => {
      const r = await report(await c.migrate('hybrid-1', { pbdata: 'sync' }));
      expect(r.outcome).toBe('completed');
      expect(c.names().slice(4, 7)).toEqual(['switchToPostcopy', 'writePbData', 'resumeTarget']);
      expect(c.called('writePbData')).toHaveLength(1);
      expect(r.postcopy?.pbdata).toBe('sync');
    });
  });

  it.each([
    ['precopy', 'stop-and-copy'],
    ['hybrid-1', 'switching'],
  ] as const)('%s: the target does not resume → rolled back (%s failed)', async (strategy, phase) => {
    await withCluster(h, {}, async (c) => {
      c.fail('resumeTarget', 'nonRetryable', 'target would not resume (stub)');
      const r = await report(await c.migrate(strategy, { pbdata: 'off' }));
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toBe(`${phase} failed: target would not resume (stub); rolled back, ${c.vm} runs on ${c.source}`);
      expect(c.names().slice(-3)).toEqual(['resumeTarget', 'rollbackSource', 'abortTarget']);
      expect(c.called('verifyTarget')).toEqual([]);
    });
  });
});

describe('emulated: after the switch only forward', () => {
  it('drainPostcopy fails once, then succeeds: completed, nothing rolled back', async () => {
    await withCluster(h, {}, async (c) => {
      c.on('drainPostcopy', (_i, x) => (x.nth === 0 ? retryableError('drain lost the channel (stub)') : x.answer()));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('completed');
      expect(c.called('drainPostcopy').map((x) => [x.side, x.attempt])).toEqual([
        ['target', 1],
        ['target', 2],
      ]);
      expect(c.called('rollbackSource')).toEqual([]);
      expect(c.called('abortTarget')).toEqual([]);
      expect(c.indexOf('verifyTarget')).toBeGreaterThan(c.names().lastIndexOf('drainPostcopy'));
      expect(c.indexOf('verifyTarget')).toBeLessThan(c.indexOf('releaseSource'));
    });
  });

  it('drainPostcopy fails for good: no rollback, the source copy is not released, not completed', async () => {
    await withCluster(h, {}, async (c) => {
      c.fail('drainPostcopy', 'nonRetryable', 'drain broke (stub)');
      const handle = await c.migrate('hybrid-1');
      const ended = await handle.result().then(
        (r) => (r as { outcome: string }).outcome,
        () => 'workflow failed',
      );
      expect(ended).not.toBe('completed');
      expect(c.called('rollbackSource')).toEqual([]);
      expect(c.called('abortTarget')).toEqual([]);
      expect(c.called('releaseSource')).toEqual([]);
    });
  });

  it('async PbData not written: completed, the report says so', async () => {
    await withCluster(h, {}, async (c) => {
      c.fail('writePbData', 'nonRetryable', 'storage full (stub)');
      const r = await report(await c.migrate('hybrid-1', { pbdata: 'async' }));
      expect(r.outcome).toBe('completed');
      expect(r.reason).toMatch(/; PbData not written \(storage full \(stub\)\)$/);
    });
  });

  it('the source does not confirm its release: completed, the report says to check that host', async () => {
    await withCluster(h, {}, async (c) => {
      c.fail('releaseSource', 'nonRetryable', 'source unreachable (stub)');
      const r = await report(await c.migrate('precopy'));
      expect(r.outcome).toBe('completed');
      expect(r.reason).toMatch(new RegExp(`; ${c.source} did not confirm releasing its paused copy \\(source unreachable \\(stub\\)\\): check that host$`));
      expect(c.called('releaseSource')).toHaveLength(1);
    });
  });
});

function retryableError(message: string): never {
  throw new Error(message);
}
