/**
 * The runbook's table of paths, the same for both engines, with stubbed activities (see
 * ./stubs.ts): the happy paths (stop-and-copy, post-copy), a failure at each step before the
 * switch (rolled back, or failed when the source does not confirm the guest), verification
 * not ok on the target, and the engine choice from both hosts' facts with its refusals.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  diverging,
  EMULATED_ACTIVITIES,
  nonRetryable,
  QEMU_ACTIVITIES,
  report,
  startHarness,
  steady,
  STEP,
  withCluster,
  workflowFailure,
  type Driver,
  type Harness,
} from './stubs';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

/** The prefix every run shares: describe, prepare the target, prepare the source. */
const preparing = (e: Driver) => [STEP[e].describe, STEP[e].prepareTarget, STEP[e].prepareSource];

describe.each(['emulated', 'qemu'] as const)('runbook on the %s engine', (engine) => {
  const S = STEP[engine];
  const other = engine === 'emulated' ? QEMU_ACTIVITIES : EMULATED_ACTIVITIES;
  const spec = { source: engine, target: engine } as const;

  describe('happy paths: completed, the target verified before the source is released', () => {
    it('stop-and-copy: pre-copy converges', async () => {
      await withCluster(h, spec, async (c) => {
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('completed');
        expect(r.reason).toMatch(new RegExp(`^${c.vm} runs on ${c.target}: stop-and-copy after 2 iteration\\(s\\), verified`));
        expect(r.decisions.at(-1)).toMatchObject({ action: 'stop-and-copy', iteration: 3 });
        expect(r.decisions.at(-1)?.reason).toMatch(/no dirty pages left/);
        expect(r.iterations.map((i) => i.pages)).toEqual([4096, 300]);
        expect(r.verification).toMatchObject({ ok: true, where: 'target' });
        // hostFacts on both hosts first, then the engine's own steps only.
        expect(c.calls.slice(0, 2).map((x) => x.name)).toEqual(['hostFacts', 'hostFacts']);
        expect(new Set(c.calls.slice(0, 2).map((x) => x.side))).toEqual(new Set(['source', 'target']));
        const tail = engine === 'emulated' ? ['stopAndCopy', 'resumeTarget', 'verifyTarget', 'releaseSource'] : ['qemuStopAndCopy', 'qemuVerifyTarget', 'qemuRelease'];
        expect(c.names()).toEqual([...preparing(engine), S.round, S.round, ...tail]);
        expect(c.indexOf(S.verify)).toBeLessThan(c.indexOf(S.release));
        expect(c.called(S.verify)[0]?.side).toBe('target');
        expect(c.called(S.release)[0]?.side).toBe('source');
        expect(c.names().filter((n) => (other as readonly string[]).includes(n))).toEqual([]);
        expect(c.called(S.rollback)).toEqual([]);
        expect(c.called(S.abort)).toEqual([]);
      });
    });

    it('post-copy: hybrid-1 switches after one round', async () => {
      await withCluster(h, spec, async (c) => {
        const r = await report(await c.migrate('hybrid-1'));
        expect(r.outcome).toBe('completed');
        expect(r.reason).toMatch(new RegExp(`^${c.vm} runs on ${c.target}: post-copy after 1 iteration\\(s\\), verified`));
        expect(r.decisions.at(-1)).toMatchObject({ action: 'switch-to-postcopy', iteration: 2 });
        expect(r.postcopy).not.toBeNull();
        const names = c.names();
        expect(names.slice(0, 5)).toEqual([...preparing(engine), S.round, S.switch]);
        if (engine === 'emulated') {
          // The switch resumes the target; then PbData, push and drain run side by side.
          expect(names[5]).toBe('resumeTarget');
          expect([...names.slice(6, 9)].sort()).toEqual(['drainPostcopy', 'pushPostcopy', 'writePbData']);
          expect(names.slice(9)).toEqual(['verifyTarget', 'releaseSource', 'cleanupStorage']);
          expect(c.called('cleanupStorage')[0]?.side).toBe('target');
        } else {
          expect(names.slice(5)).toEqual(['qemuAwaitCompletion', 'qemuVerifyTarget', 'qemuRelease']);
        }
        expect(c.indexOf(S.verify)).toBeLessThan(c.indexOf(S.release));
        expect(c.names().filter((n) => (other as readonly string[]).includes(n))).toEqual([]);
        expect(c.called(S.rollback)).toEqual([]);
      });
    });

    it('post-copy: as-hybrid switches when λ diverges (the paper’s rule)', async () => {
      await withCluster(h, { ...spec, rounds: diverging }, async (c) => {
        const r = await report(await c.migrate('as-hybrid', { switchRule: 'paper' }));
        expect(r.outcome).toBe('completed');
        expect(r.iterations).toHaveLength(3);
        const d = r.decisions.at(-1)!;
        expect(d).toMatchObject({ action: 'switch-to-postcopy', iteration: 4 });
        expect(d.reason).toMatch(/λ=\[1\.00, 2\.00, 2\.00\], 2 of 3 > 1/);
        expect(c.called(S.round).map((x) => x.input.index)).toEqual([1, 2, 3]);
        expect(c.called(S.switch)).toHaveLength(1);
        expect(c.called(S.stopAndCopy)).toEqual([]);
        expect(c.indexOf(S.verify)).toBeLessThan(c.indexOf(S.release));
        expect(c.names().at(-1)).toBe(engine === 'emulated' ? 'cleanupStorage' : S.release);
      });
    });
  });

  it('as-hybrid on a plateau: ferry’s switch rule (the default) switches early, the paper’s waits for the valve', async () => {
    await withCluster(h, { ...spec, rounds: steady }, async (c) => {
      const r = await report(await c.migrate('as-hybrid', { maxIterations: 6 }));
      expect(r.outcome).toBe('completed');
      expect(r.decisions.at(-1)?.action).toBe('switch-to-postcopy');
      expect(r.decisions.at(-1)?.reason).not.toMatch(/max iterations/);
      expect(r.iterations.length).toBeLessThan(6);
    });
    await withCluster(h, { ...spec, rounds: steady }, async (c) => {
      const r = await report(await c.migrate('as-hybrid', { maxIterations: 6, switchRule: 'paper' }));
      expect(r.outcome).toBe('completed');
      expect(r.decisions.at(-1)).toMatchObject({ action: 'switch-to-postcopy', iteration: 7 });
      expect(r.decisions.at(-1)?.reason).toMatch(/max iterations \(6\) reached/);
      expect(r.iterations).toHaveLength(6);
    });
  });

  describe('a failure before the switch rolls back: the undos run last first', () => {
    // step, strategy, the call (0-based) that fails, the phase the reason names, the undos expected.
    const rows = [
      { step: S.prepareTarget, strategy: 'precopy', nth: 0, phase: 'preparing', undos: [S.abort] },
      { step: S.prepareSource, strategy: 'precopy', nth: 0, phase: 'preparing', undos: [S.rollback, S.abort] },
      { step: S.round, strategy: 'precopy', nth: 1, phase: 'precopy', undos: [S.rollback, S.abort] },
      { step: S.stopAndCopy, strategy: 'precopy', nth: 0, phase: 'stop-and-copy', undos: [S.rollback, S.abort] },
      { step: S.switch, strategy: 'hybrid-1', nth: 0, phase: 'switching', undos: [S.rollback, S.abort] },
    ] as const;

    it.each(rows)('$step fails (non-retryable) → rolled back, undone: $undos', async ({ step, strategy, nth, phase, undos }) => {
      await withCluster(h, spec, async (c) => {
        c.on(step, (_i, x) => (x.nth === nth ? nonRetryable(`${step} broke (stub)`) : x.answer()));
        const r = await report(await c.migrate(strategy));
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toBe(`${phase} failed: ${step} broke (stub); rolled back, ${c.vm} runs on ${c.source}`);
        const names = c.names();
        const failedAt = names.lastIndexOf(step);
        expect(c.called(step)).toHaveLength(nth + 1); // not retried
        expect(names.slice(failedAt + 1)).toEqual([...undos]);
        for (const u of undos) expect(c.called(u)[0]?.side).toBe(u === S.abort ? 'target' : 'source');
        expect(c.called(S.verify)).toEqual([]);
        expect(c.called(S.release)).toEqual([]);
        // The source's own check after the rollback, when the source was touched.
        if ((undos as readonly string[]).includes(S.rollback)) expect(r.verification).toMatchObject({ ok: true, where: 'source' });
        else expect(r.verification).toBeNull();
      });
    });

    it(`a retryable failure of ${S.prepareSource} is retried (4 attempts), then rolled back`, async () => {
      await withCluster(h, spec, async (c) => {
        c.fail(S.prepareSource, 'retryable', 'source busy (stub)');
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toMatch(/^preparing failed: source busy \(stub\); rolled back/);
        expect(c.called(S.prepareSource).map((x) => x.attempt)).toEqual([1, 2, 3, 4]);
        expect(c.names().slice(-2)).toEqual([S.rollback, S.abort]);
      });
    });

    it(`a retryable failure of ${S.round} that clears up is invisible: completed`, async () => {
      await withCluster(h, spec, async (c) => {
        c.on(S.round, (_i, x) => (x.nth === 1 ? retryable() : x.answer()));
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('completed');
        expect(c.called(S.round).map((x) => [x.input.index, x.attempt])).toEqual([
          [1, 1],
          [2, 1],
          [2, 2],
        ]);
        expect(r.iterations).toHaveLength(2);
        expect(c.called(S.rollback)).toEqual([]);
      });
    });

    it(`${S.describe} fails: nothing was prepared, nothing to undo; the source's facts listed the guest → rolled back`, async () => {
      await withCluster(h, spec, async (c) => {
        c.fail(S.describe, 'nonRetryable', 'describe broke (stub)');
        const r = await report(await c.migrate('precopy'));
        // Untouched, the guest is where the source's own facts (asked first) said it is.
        expect(r.outcome).toBe('rolled-back');
        expect(r.reason).toBe(`preparing failed: describe broke (stub); rolled back, ${c.vm} runs on ${c.source}`);
        expect(c.names()).toEqual([S.describe]);
        expect(r.verification).toBeNull();
      });
    });

    it('the source does not answer the rollback → failed, the source did not confirm; the target is still aborted', async () => {
      await withCluster(h, spec, async (c) => {
        c.on(S.round, (_i, x) => (x.nth === 1 ? nonRetryable('round broke (stub)') : x.answer()));
        c.fail(S.rollback, 'nonRetryable', 'source unreachable (stub)');
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('failed');
        expect(r.reason).toBe(
          `precopy failed: round broke (stub); rollback could not confirm ${c.vm} runs on ${c.source}: the source ${c.source} did not answer the rollback; cleanup incomplete: roll back on ${c.source}: source unreachable (stub)`,
        );
        expect(c.names().slice(-2)).toEqual([S.rollback, S.abort]);
        expect(r.verification).toBeNull();
      });
    });

    it('the source answers the rollback with guestRunning: false → failed, with its note', async () => {
      await withCluster(h, spec, async (c) => {
        c.on(S.round, (_i, x) => (x.nth === 1 ? nonRetryable('round broke (stub)') : x.answer()));
        c.on(S.rollback, () => ({ guestRunning: false, verification: null, note: `vm ${c.vm} is gone from ${c.source} (stub)` }));
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('failed');
        expect(r.reason).toBe(`precopy failed: round broke (stub); rollback could not confirm ${c.vm} runs on ${c.source}: vm ${c.vm} is gone from ${c.source} (stub)`);
        expect(c.called(S.abort)).toHaveLength(1);
      });
    });
  });

  describe('after the switch only forward', () => {
    it('verification on the target not ok → failed, the source is NOT released', async () => {
      await withCluster(h, spec, async (c) => {
        c.on(S.verify, async (_i, x) => ({ ...((await x.answer()) as object), ok: false, mismatches: 3, firstMismatches: ['page 1', 'page 2', 'page 3', 'page 4'] }));
        const r = await report(await c.migrate('precopy'));
        expect(r.outcome).toBe('failed');
        expect(r.reason).toBe(`${c.vm} runs on ${c.target} but verification found 3 bad page(s): page 1; page 2; page 3; the paused copy on ${c.source} is kept for an operator`);
        expect(r.verification).toMatchObject({ ok: false, mismatches: 3, where: 'target' });
        expect(c.called(S.verify)).toHaveLength(1);
        expect(c.called(S.release)).toEqual([]);
        expect(c.called(S.rollback)).toEqual([]);
        expect(c.called(S.abort)).toEqual([]);
      });
    });
  });
});

function retryable(): never {
  throw new Error('transient (stub)');
}

describe('engine choice from both hosts’ facts', () => {
  it('emulated → emulated runs the emulated activities only', async () => {
    await withCluster(h, { source: 'emulated', target: 'emulated' }, async (c) => {
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('completed');
      expect(r.driver).toBeUndefined();
      expect(c.names().length).toBeGreaterThan(5);
      expect(c.names().every((n) => (EMULATED_ACTIVITIES as readonly string[]).includes(n))).toBe(true);
    });
  });

  it('qemu → qemu runs the QEMU activities only; the report says the guest verified itself', async () => {
    await withCluster(h, { source: 'qemu', target: 'qemu' }, async (c) => {
      const r = await report(await c.migrate('hybrid-1'));
      expect(r.outcome).toBe('completed');
      expect(r.driver).toBe('qemu');
      expect(r.reason).toMatch(/verified by the guest$/);
      expect(c.names().length).toBeGreaterThan(5);
      expect(c.names().every((n) => (QEMU_ACTIVITIES as readonly string[]).includes(n))).toBe(true);
    });
  });

  it.each([
    ['emulated', 'qemu'],
    ['qemu', 'emulated'],
  ] as const)('%s → %s is refused (InvalidInput naming both hosts); nothing but hostFacts is called', async (source, target) => {
    await withCluster(h, { source, target }, async (c) => {
      const f = await workflowFailure(await c.migrate('as-hybrid'));
      expect(f.type).toBe('InvalidInput');
      expect(f.message).toBe(
        `refused before anything moved: hosts run different engines: ${c.source} is ${source}, ${c.target} is ${target}; migrate between hosts of one engine`,
      );
      expect(c.calls.map((x) => `${x.side}:${x.name}`).sort()).toEqual(['source:hostFacts', 'target:hostFacts']);
    });
  });

  it('a VM the source does not list is refused', async () => {
    await withCluster(h, { sourceVms: ['someone-else'] }, async (c) => {
      const f = await workflowFailure(await c.migrate('precopy'));
      expect(f.type).toBe('InvalidInput');
      expect(f.message).toBe(`refused before anything moved: vm ${c.vm} is not on ${c.source}`);
      expect(c.names()).toEqual([]);
    });
  });

  it('a target that does not answer its facts: nothing moved, the source confirms the guest → rolled back, nothing else called', async () => {
    await withCluster(h, {}, async (c) => {
      c.on('hostFacts', (_i, x) => (x.side === 'target' ? nonRetryable('target agent broken (stub)') : x.answer()));
      const r = await report(await c.migrate('precopy'));
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toBe(`preparing failed: target agent broken (stub); rolled back, ${c.vm} runs on ${c.source}`);
      expect(c.names()).toEqual([]);
    });
  });
});
