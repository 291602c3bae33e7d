/**
 * Operator controls in each phase, for both engines, with stubbed activities (./stubs.ts): a
 * stub holds the migration at a chosen step (a gate) while the test sends the update, so each
 * control meets the phase it is meant for. Cancel rolls back before the switch and is refused
 * after it; force-postcopy switches at the next boundary; set-bandwidth re-caps the source.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cancelUpdate, forcePostcopyUpdate, progressQuery, setBandwidthUpdate } from '../../src/workflows/messages';
import { MiB, progressUntil, rejection, report, startHarness, steady, STEP, withCluster, type Harness } from './stubs';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

describe.each(['emulated', 'qemu'] as const)('operator controls on the %s engine', (engine) => {
  const S = STEP[engine];
  const spec = { source: engine, target: engine, rounds: steady } as const;

  describe('cancel', () => {
    it('during preparing: rolled back, the target aborted, the untouched source not rolled back', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.prepareTarget);
        const handle = await c.migrate('as-hybrid');
        await held.entered;
        expect((await handle.query(progressQuery)).phase).toBe('preparing');
        expect(await handle.executeUpdate(cancelUpdate, { args: [{ by: 'alice', reason: 'window closed' }] })).toEqual({ accepted: true });
        const r = await report(handle);
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toBe(`cancelled by alice (window closed) during preparing; rolled back, ${c.vm} runs on ${c.source}`);
        expect(c.names()).toEqual([S.describe, S.prepareTarget, S.abort]);
        await c.until(() => held.cancelled, `${S.prepareTarget} cancelled`);
      });
    });

    it('during precopy: rolled back, the round cancelled, source rolled back and target aborted', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.round, 1);
        const handle = await c.migrate('as-hybrid', { maxIterations: 50 });
        await held.entered;
        expect((await handle.query(progressQuery)).phase).toBe('precopy');
        await handle.executeUpdate(cancelUpdate, { args: [{ by: 'bob' }] });
        const r = await report(handle);
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toBe(`cancelled by bob during precopy; rolled back, ${c.vm} runs on ${c.source}`);
        expect(c.names().slice(-2)).toEqual([S.rollback, S.abort]);
        expect(c.called(S.round)).toHaveLength(2);
        expect(r.verification).toMatchObject({ ok: true, where: 'source' });
        await c.until(() => held.cancelled, `${S.round} cancelled`);
      });
    });

    it('during stop-and-copy (the target does not run the guest yet): rolled back', async () => {
      await withCluster(h, { ...spec, rounds: undefined }, async (c) => {
        const held = c.holdAt(S.stopAndCopy);
        const handle = await c.migrate('precopy');
        await held.entered;
        await handle.executeUpdate(cancelUpdate, { args: [{ by: 'erin' }] });
        const r = await report(handle);
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toBe(`cancelled by erin during stop-and-copy; rolled back, ${c.vm} runs on ${c.source}`);
        expect(c.names().slice(-2)).toEqual([S.rollback, S.abort]);
      });
    });

    it.each([
      ['hybrid-1', S.postcopy, 'postcopy'],
      ['precopy', S.verify, 'verifying'],
    ] as const)('after the switch (%s, held at %s) the update is rejected and the migration completes', async (strategy, step, phase) => {
      await withCluster(h, { ...spec, rounds: undefined }, async (c) => {
        const held = c.holdAt(step);
        const handle = await c.migrate(strategy);
        await held.entered;
        const p = await handle.query(progressQuery);
        expect(p).toMatchObject({ switched: true, phase });
        const why = await rejection(handle.executeUpdate(cancelUpdate, { args: [{ by: 'bob' }] }));
        expect(why).toBe(`refused: ${c.vm} already runs on ${c.target} (phase ${phase}); after the switch a migration only moves forward`);
        held.open();
        const r = await report(handle);
        expect(r.outcome).toBe('completed');
        expect(c.called(S.rollback)).toEqual([]);
        expect(c.called(S.abort)).toEqual([]);
      });
    });
  });

  describe('force-postcopy', () => {
    it('during precopy: the next decision is switch-to-postcopy, forced by the operator', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.round, 1);
        // The paper's rule: on these rounds nothing but the force ends pre-copy before the valve.
        const handle = await c.migrate('as-hybrid', { maxIterations: 50, switchRule: 'paper' });
        await held.entered;
        const ack = await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] });
        expect(ack.accepted).toBe(true);
        held.open();
        const r = await report(handle);
        expect(r.outcome).toBe('completed');
        const d = r.decisions.at(-1)!;
        expect(d).toMatchObject({ action: 'switch-to-postcopy', iteration: 3 });
        expect(d.reason).toBe('switch to post-copy at iteration 3: forced by carol');
        // Without the force, these rounds never end pre-copy before the valve (50).
        expect(c.called(S.round)).toHaveLength(2);
        expect(c.called(S.switch)).toHaveLength(1);
        expect(r.postcopy).not.toBeNull();
      });
    });

    // Forced during round 2, the switch comes at the boundary after it: the answer (what
    // `ferry force-postcopy` prints) names the same iteration as the decision.
    it('its answer names the iteration the switch is decided at', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.round, 1);
        const handle = await c.migrate('as-hybrid', { maxIterations: 50 });
        await held.entered;
        const ack = await handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] });
        held.open();
        const r = await report(handle);
        expect(r.decisions.at(-1)?.action).toBe('switch-to-postcopy');
        expect(ack.atIteration).toBe(r.decisions.at(-1)?.iteration);
      });
    });

    it('on strategy precopy: rejected, the migration goes on to stop-and-copy', async () => {
      await withCluster(h, { ...spec, rounds: undefined }, async (c) => {
        const held = c.holdAt(S.round, 1);
        const handle = await c.migrate('precopy');
        await held.entered;
        const why = await rejection(handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] }));
        expect(why).toBe('strategy precopy never switches to post-copy; migrate with a hybrid strategy to force one');
        held.open();
        const r = await report(handle);
        expect(r.outcome).toBe('completed');
        expect(r.decisions.map((d) => d.action)).not.toContain('switch-to-postcopy');
        expect(c.called(S.switch)).toEqual([]);
      });
    });

    it('after the switch: rejected', async () => {
      await withCluster(h, { ...spec, rounds: undefined }, async (c) => {
        const held = c.holdAt(S.postcopy);
        const handle = await c.migrate('hybrid-1');
        await held.entered;
        const why = await rejection(handle.executeUpdate(forcePostcopyUpdate, { args: [{ by: 'carol' }] }));
        expect(why).toBe(`migration of ${c.vm} is past the switch point (phase postcopy)`);
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
      });
    });
  });

  describe('set-bandwidth', () => {
    it(`during precopy: ${S.setBandwidth} is called on the source with the rate`, async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.round, 1);
        const handle = await c.migrate('as-hybrid', { maxIterations: 4 });
        await held.entered;
        expect(await handle.executeUpdate(setBandwidthUpdate, { args: [48 * MiB] })).toEqual({ bandwidthBytesPerSec: 48 * MiB });
        expect(c.called(S.setBandwidth).map((x) => [x.side, x.input.bandwidthBytesPerSec])).toEqual([['source', 48 * MiB]]);
        expect((await handle.query(progressQuery)).bandwidthBytesPerSec).toBe(48 * MiB);
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
      });
    });

    it('during preparing (before the source is prepared): no activity, the source is prepared with the rate', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.prepareTarget);
        const handle = await c.migrate('as-hybrid', { maxIterations: 4 });
        await held.entered;
        await handle.executeUpdate(setBandwidthUpdate, { args: [48 * MiB] });
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
        expect(c.called(S.setBandwidth)).toEqual([]);
        const prepared = c.called(S.prepareSource)[0]!.input.options as { bandwidthBytesPerSec: number };
        expect(prepared.bandwidthBytesPerSec).toBe(48 * MiB);
      });
    });

    // While the source is being prepared the step in flight carries the old rate: the
    // runbook applies the accepted one as soon as the source is ready.
    it('while the source is being prepared: the accepted rate reaches the source', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.prepareSource);
        const handle = await c.migrate('as-hybrid', { maxIterations: 4 });
        await held.entered;
        expect(await handle.executeUpdate(setBandwidthUpdate, { args: [48 * MiB] })).toEqual({ bandwidthBytesPerSec: 48 * MiB });
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
        const prepared = (c.called(S.prepareSource)[0]!.input.options as { bandwidthBytesPerSec: number }).bandwidthBytesPerSec;
        const applied = c.called(S.setBandwidth).map((x) => x.input.bandwidthBytesPerSec);
        expect([prepared, ...applied].at(-1)).toBe(48 * MiB);
      });
    });

    it(`after the switch: ${engine === 'qemu' ? 'accepted, QEMU re-caps post-copy' : 'rejected, the emulated post-copy is paced by faults'}`, async () => {
      await withCluster(h, { ...spec, rounds: undefined }, async (c) => {
        const held = c.holdAt(S.postcopy);
        const handle = await c.migrate('hybrid-1');
        await held.entered;
        await progressUntil(handle, (p) => p.switched, 'the switch');
        const update = handle.executeUpdate(setBandwidthUpdate, { args: [16 * MiB] });
        if (engine === 'qemu') {
          expect(await update).toEqual({ bandwidthBytesPerSec: 16 * MiB });
          expect(c.called('qemuSetBandwidth').map((x) => [x.side, x.input.bandwidthBytesPerSec])).toEqual([['source', 16 * MiB]]);
        } else {
          expect(await rejection(update)).toBe(`migration of ${c.vm} is postcopy: nothing to pace`);
          expect(c.called('setBandwidth')).toEqual([]);
        }
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
      });
    });

    it('a rate below 64 KiB/s is rejected and changes nothing', async () => {
      await withCluster(h, spec, async (c) => {
        const held = c.holdAt(S.round, 1);
        const handle = await c.migrate('as-hybrid', { maxIterations: 4 });
        await held.entered;
        expect(await rejection(handle.executeUpdate(setBandwidthUpdate, { args: [100] }))).toBe('bandwidth below 64 KiB/s would never converge; use at least 64KiB/s');
        expect(c.called(S.setBandwidth)).toEqual([]);
        expect((await handle.query(progressQuery)).bandwidthBytesPerSec).toBe(32 * MiB);
        held.open();
        expect((await report(handle)).outcome).toBe('completed');
      });
    });
  });
});
