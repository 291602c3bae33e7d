/**
 * The runbook's paths only the QEMU engine has, with stubbed activities (./stubs.ts): QEMU
 * ending pre-copy on its own, and post-copy after the switch — a stall or a pause recovered
 * over the second network (both ends paused, the target listens again, the source resumes),
 * a failed post-copy that leaves the guest split, forward-only retries; and par-migrate through
 * the agents' relays (StaticData saved by the source's relay, merged by the target's).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { converging, diverging, nonRetryable, report, startHarness, withCluster, type Gate, type Harness, type StubCluster } from './stubs';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

const qemu = { source: 'qemu', target: 'qemu' } as const;

/** qemuAwaitCompletion answering `kinds[n]` on its n-th call, then completed. */
function completions(kinds: ('stalled' | 'paused' | 'failed')[]) {
  return async (_i: Record<string, unknown>, c: { nth: number; answer(): Promise<unknown> }) => {
    const done = (await c.answer()) as { outcome: unknown };
    const kind = kinds[c.nth];
    if (!kind) return done;
    const why = kind === 'stalled' ? `no post-copy progress (stub ${c.nth})` : kind === 'paused' ? 'QEMU paused post-copy: link down (stub)' : 'QEMU failed the migration: stub';
    return { kind, why, outcome: done.outcome };
  };
}

/** The merge waits at a gate, and so does QEMU's third pass (it does not end while the test runs). */
function holdMergeAndPass3(c: StubCluster): { merge: Gate; pass3: Gate } {
  const merge = c.gate();
  const pass3 = c.gate();
  c.on('qemuMergeStatic', async (_i, x) => {
    await merge.wait();
    return x.answer();
  });
  c.on('qemuAwaitPass', async (i, x) => {
    if (i.index === 3) await pass3.wait();
    return x.answer();
  });
  return { merge, pass3 };
}

describe('qemu: pre-copy', () => {
  it('QEMU finds nothing left to send: stop-and-copy without a policy decision, completed', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitPass', (i, x) => (i.index === 2 ? { kind: 'finished', status: 'completed', error: null } : x.answer()));
      const r = await report(await c.migrate('as-hybrid'));
      expect(r.outcome).toBe('completed');
      expect(r.decisions.at(-1)).toMatchObject({ action: 'stop-and-copy' });
      expect(r.decisions.at(-1)?.reason).toBe('stop-and-copy at iteration 2: QEMU found nothing left to send within its limit');
      expect(r.iterations).toHaveLength(1);
      expect(c.names().slice(-3)).toEqual(['qemuStopAndCopy', 'qemuVerifyTarget', 'qemuRelease']);
    });
  });

  it('QEMU ends the migration itself (failed) during pre-copy: rolled back', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitPass', (i, x) => (i.index === 2 ? { kind: 'finished', status: 'failed', error: 'socket closed (stub)' } : x.answer()));
      const r = await report(await c.migrate('as-hybrid'));
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toBe(`precopy failed: QEMU ended the migration (failed): socket closed (stub); rolled back, ${c.vm} runs on ${c.source}`);
      expect(c.names().slice(-2)).toEqual(['qemuRollback', 'qemuAbortTarget']);
      expect(r.verification).toMatchObject({ ok: true, where: 'source' });
    });
  });
});

describe('qemu: par-migrate through the relays', () => {
  const MiB = 1024 * 1024;

  it('pa-hybrid: the target prepares a relay, the source migrates into its own; StaticData saved and merged beside the passes; completed', async () => {
    await withCluster(h, { ...qemu, rounds: diverging }, async (c) => {
      const r = await report(await c.migrate('pa-hybrid'));
      expect(r.outcome).toBe('completed');
      expect(c.called('qemuPrepareTarget')[0]?.input).toMatchObject({ relay: true, strategy: 'pa-hybrid' });
      expect(c.called('qemuStart')[0]?.input).toMatchObject({ relay: { host: '127.0.0.1', port: 4445, token: 'stub-token' } });
      // The target says whether it runs TLS: the source refuses a mismatch before anything is sent.
      expect(c.called('qemuStart')[0]?.input.targetTls).toBe(false);
      expect(c.called('qemuSaveStatic').map((x) => x.side)).toEqual(['source']);
      expect(c.called('qemuMergeStatic').map((x) => x.side)).toEqual(['target']);
      expect(r.static).toEqual({ pages: 4096, saveMs: 5, mergeMs: 5, skippedNewer: 100 });
      // QEMU counted the bulk pass it wrote into the relay; StaticData carried it.
      expect(r.bytes.migrationNetwork).toBe(20 * MiB - 4096 * (4096 + 16));
      expect(r.bytes.storageWrite).toBe(4096 * 4096);
      expect(r.bytes.storageRead).toBe(4096 * 4096);
      expect(r.decisions.at(-1)?.action).toBe('switch-to-postcopy');
      expect(c.indexOf('qemuVerifyTarget')).toBeLessThan(c.indexOf('qemuRelease'));
      expect(c.names().at(-1)).toBe('qemuRemoveStatic');
      expect(c.called('qemuRollback')).toEqual([]);
    });
  });

  it('par-migrate: pre-copy does not end while the merge runs; after it, stop-and-copy, completed', async () => {
    await withCluster(h, { ...qemu, rounds: converging }, async (c) => {
      const merge = c.gate();
      c.on('qemuMergeStatic', async (_i, x) => {
        await merge.wait();
        return x.answer();
      });
      const handle = await c.migrate('par-migrate', { maxIterations: 6 });
      await c.until(() => c.called('qemuAwaitPass').length >= 4, 'passes while the merge runs');
      expect(c.called('qemuStopAndCopy')).toEqual([]);
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      expect(r.decisions.at(-1)?.action).toBe('stop-and-copy');
      expect(r.decisions.some((d) => d.reason === 'continue: static merge not complete')).toBe(true);
      expect(c.indexOf('qemuStopAndCopy')).toBeGreaterThan(c.indexOf('qemuMergeStatic'));
    });
  });

  it('pa-hybrid: armed before the merge, the source switches the moment the merge is done; ferry records the decision and stops watching that pass', async () => {
    await withCluster(h, { ...qemu, rounds: diverging }, async (c) => {
      const { merge, pass3 } = holdMergeAndPass3(c);
      const handle = await c.migrate('pa-hybrid');
      await pass3.entered;
      // Two passes measured (λ = 2 from the second): once merged the rule switches, so the source is armed with it.
      await c.until(() => c.called('qemuSwitchWhenMerged').length === 1, 'the source armed');
      expect(c.called('qemuSwitchWhenMerged')[0]?.side).toBe('source');
      expect(c.called('qemuSwitchToPostcopy')).toEqual([]);
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      expect(r.iterations).toHaveLength(2);
      expect(r.decisions.some((d) => d.action === 'continue' && /armed: once merged, switch to post-copy at iteration 3: /.test(d.reason))).toBe(true);
      const last = r.decisions.at(-1)!;
      expect(last.action).toBe('switch-to-postcopy');
      expect(last.reason).toMatch(/^switch to post-copy at iteration 3: .*\(armed before the merge completed; the source switched as soon as the merge was done \(stub\)\)$/);
      expect(pass3.cancelled).toBe(true);
      // The runbook's own switch step follows (it finds QEMU switched), after the merge.
      expect(c.indexOf('qemuSwitchToPostcopy')).toBeGreaterThan(c.indexOf('qemuMergeStatic'));
      pass3.open();
    });
  });

  it('pa-hybrid: an arm that fails leaves the decision to the workflow, taken when the merge completes during a pass', async () => {
    await withCluster(h, { ...qemu, rounds: diverging }, async (c) => {
      const { merge, pass3 } = holdMergeAndPass3(c);
      c.fail('qemuSwitchWhenMerged', 'nonRetryable', 'the agent cannot watch the merge (stub)');
      const handle = await c.migrate('pa-hybrid');
      await pass3.entered;
      await c.until(() => c.called('qemuSwitchWhenMerged').length === 1, 'the arm tried');
      merge.open();
      const r = await report(handle);
      expect(r.outcome).toBe('completed');
      expect(r.iterations).toHaveLength(2);
      const last = r.decisions.at(-1)!;
      expect(last.action).toBe('switch-to-postcopy');
      expect(last.reason).toMatch(/^switch to post-copy at iteration 3: .*\(the StaticData merge completed during round 3\)$/);
      expect(pass3.cancelled).toBe(true);
      expect(c.indexOf('qemuSwitchToPostcopy')).toBeGreaterThan(c.indexOf('qemuMergeStatic'));
      pass3.open();
    });
  });

  it('StaticData fails: QEMU cannot resend its bulk pass, so the migration rolls back (guest on the source) and StaticData is removed', async () => {
    await withCluster(h, { ...qemu, rounds: converging }, async (c) => {
      c.fail('qemuSaveStatic', 'nonRetryable', 'StaticData could not be written: ENOSPC (stub)');
      const merge = c.gate(); // the merge waits for a commit that never comes
      c.on('qemuMergeStatic', async () => {
        await merge.wait();
        return nonRetryable('merge: no StaticData (stub)');
      });
      const r = await report(await c.migrate('par-migrate'));
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toMatch(/StaticData failed and QEMU's bulk pass cannot be resent over the migration network/);
      expect(r.reason).toMatch(new RegExp(`rolled back, ${c.vm} runs on ${c.source}$`));
      expect(c.called('qemuRollback').map((x) => x.side)).toEqual(['source']);
      expect(c.called('qemuRemoveStatic').length).toBeGreaterThanOrEqual(1);
      expect(c.called('qemuStopAndCopy')).toEqual([]);
      merge.open();
    });
  });
});

describe('qemu: after the switch only forward', () => {
  it.each(['stalled', 'paused'] as const)('post-copy %s once: both ends paused, target recovered, source resumed, then completed', async (kind) => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', completions([kind]));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('completed');
      expect(r.reason).toMatch(/verified by the guest; recovered 1× over the second network$/);
      const after = c.calls.slice(c.calls.findIndex((x) => x.name === 'qemuSwitchToPostcopy') + 1).map((x) => `${x.side}:${x.name}`);
      expect(after).toEqual([
        'source:qemuAwaitCompletion',
        'source:qemuPause',
        'target:qemuPause',
        'target:qemuRecoverTarget',
        'source:qemuResume',
        'source:qemuAwaitCompletion',
        'target:qemuVerifyTarget',
        'source:qemuRelease',
      ]);
      expect(c.called('qemuRecoverTarget')[0]?.input.useFallback).toBe(true);
      expect(c.called('qemuResume')[0]?.input.uri).toBe('tcp:10.9.0.2:5555');
      expect(r.recoveries).toHaveLength(1);
      expect(r.recoveries![0]).toMatchObject({ uri: 'tcp:10.9.0.2:5555', reason: kind === 'stalled' ? 'no post-copy progress (stub 0)' : 'QEMU paused post-copy: link down (stub)' });
      expect(c.called('qemuRollback')).toEqual([]);
      expect(c.called('qemuAbortTarget')).toEqual([]);
    });
  });

  it('the stall budget is the fault timeout when set, else 3 s', async () => {
    await withCluster(h, qemu, async (c) => {
      await report(await c.migrate('hybrid-1', { faultTimeoutMs: 750 }));
      expect(c.called('qemuAwaitCompletion').map((x) => x.input.stallMs)).toEqual([750]);
    });
    await withCluster(h, qemu, async (c) => {
      await report(await c.migrate('hybrid-1'));
      expect(c.called('qemuAwaitCompletion').map((x) => x.input.stallMs)).toEqual([3000]);
    });
  });

  it('post-copy failed: outcome failed, the guest split between the hosts, nothing released or rolled back', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', completions(['failed']));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('failed');
      expect(r.reason).toBe(
        `post-copy of ${c.vm} could not finish (QEMU failed the migration: stub) after 0 recoveries: the guest is split between ${c.source} and ${c.target}; both QEMUs are kept for an operator`,
      );
      // The target is asked once whether it completed anyway (it did not).
      expect(c.names().slice(-2)).toEqual(['qemuAwaitCompletion', 'qemuIncomingStatus']);
      expect(c.called('qemuIncomingStatus').map((x) => [x.side, x.input.waitMs])).toEqual([['target', 10_000]]);
      for (const n of ['qemuVerifyTarget', 'qemuRelease', 'qemuRollback', 'qemuAbortTarget', 'qemuPause']) expect(c.called(n)).toEqual([]);
      expect(r.verification).toBeNull();
    });
  });

  it('post-copy failed on the source after its last page, but the target completed: completed, verified there, the source released', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', completions(['failed']));
      c.on('qemuIncomingStatus', () => ({ status: 'completed' }));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome, r.reason).toBe('completed');
      expect(r.reason).toMatch(/the target completed the migration; the source never heard \(QEMU failed the migration: stub\)$/);
      expect(c.called('qemuPause')).toEqual([]);
      expect(c.called('qemuRelease').map((x) => x.input.targetCompleted)).toEqual([true]);
      expect(c.called('qemuVerifyTarget')).toHaveLength(1);
    });
  });

  it.each([
    ['completing', 'completed', 'completed'],
    ['completing', 'postcopy-active', 'failed'],
    ['failed', 'postcopy-active', 'failed'],
  ] as const)('post-copy stalls and the source cannot pause (%s): the target is asked (%s) → %s, no recovery', async (pause, targetStatus, outcome) => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', completions(['stalled']));
      c.on('qemuPause', () => ({ status: pause }));
      c.on('qemuIncomingStatus', () => ({ status: targetStatus }));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome, r.reason).toBe(outcome);
      expect(c.called('qemuPause').map((x) => [x.side, x.input.side])).toEqual([['source', 'source']]);
      expect(c.called('qemuIncomingStatus').map((x) => x.input.waitMs)).toEqual([30_000]);
      expect(c.called('qemuRecoverTarget')).toEqual([]);
      if (outcome === 'completed') {
        expect(c.called('qemuRelease').map((x) => x.input.targetCompleted)).toEqual([true]);
      } else {
        expect(r.reason).toMatch(pause === 'completing' ? /the source had sent its last page and waits for the target's word, where QEMU cannot pause, and the target did not complete within 30 s\) after 0 recoveries: the guest is split/ : /the source QEMU's migration is failed, and the target did not complete/);
        expect(c.called('qemuRelease')).toEqual([]);
      }
    });
  });

  it('post-copy stalls again and again: five recoveries, then failed with the guest split', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', completions(['stalled', 'stalled', 'stalled', 'stalled', 'stalled', 'stalled', 'stalled']));
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('failed');
      expect(r.reason).toBe(
        `post-copy of ${c.vm} could not finish (no post-copy progress (stub 5)) after 5 recoveries: the guest is split between ${c.source} and ${c.target}; both QEMUs are kept for an operator`,
      );
      expect(c.called('qemuRecoverTarget')).toHaveLength(5);
      expect(c.called('qemuAwaitCompletion')).toHaveLength(6);
      expect(r.recoveries).toHaveLength(5);
      expect(c.called('qemuRelease')).toEqual([]);
    });
  });

  it('qemuAwaitCompletion fails once (retryable), then completes: completed, nothing rolled back', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuAwaitCompletion', (_i, x) => {
        if (x.nth === 0) throw new Error('QMP socket reset (stub)');
        return x.answer();
      });
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('completed');
      expect(c.called('qemuAwaitCompletion').map((x) => x.attempt)).toEqual([1, 2]);
      expect(r.recoveries).toBeUndefined();
      expect(c.called('qemuRollback')).toEqual([]);
      expect(c.called('qemuAbortTarget')).toEqual([]);
    });
  });

  it('the source does not confirm its release: completed, the report says to check that host', async () => {
    await withCluster(h, qemu, async (c) => {
      c.on('qemuRelease', () => nonRetryable('refusing to release (stub)'));
      const r = await report(await c.migrate('precopy'));
      expect(r.outcome).toBe('completed');
      expect(r.reason).toMatch(new RegExp(`; ${c.source} did not confirm releasing its paused copy \\(refusing to release \\(stub\\)\\): check that host$`));
    });
  });
});
