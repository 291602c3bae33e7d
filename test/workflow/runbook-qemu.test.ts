/**
 * The runbook's paths only the QEMU engine has, with stubbed activities (./stubs.ts): QEMU
 * ending pre-copy on its own, and post-copy after the switch — a stall or a pause recovered
 * over the second network (both ends paused, the target listens again, the source resumes),
 * a failed post-copy that leaves the guest split, forward-only retries.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nonRetryable, report, startHarness, withCluster, type Harness } from './stubs';

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
      expect(c.names().at(-1)).toBe('qemuAwaitCompletion');
      for (const n of ['qemuVerifyTarget', 'qemuRelease', 'qemuRollback', 'qemuAbortTarget', 'qemuPause']) expect(c.called(n)).toEqual([]);
      expect(r.verification).toBeNull();
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
