import path from 'node:path';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The files that run longest, longest first (measured on the 2-core development machine, one
 * file at a time). They start first so that the two workers finish together instead of one
 * of them starting a long file near the end. Files not listed follow in vitest's own order
 * (longest first by the last run's durations when it has them, else larger files first).
 */
export const LONG_FILES_FIRST = [
  'test/faults/crash.test.ts',
  'test/integration/cluster.test.ts',
  'test/faults/links.test.ts',
  'test/faults/control-link.test.ts',
  'test/integration/qemu-migration.test.ts',
  'test/integration/qemu-par.test.ts',
  'test/workflow/runbook.test.ts',
  'test/faults/storage.test.ts',
  'test/integration/bench.test.ts',
  'test/integration/strategies.test.ts',
  'test/integration/qemu-tls.test.ts',
  'test/workflow/controls.test.ts',
  'test/integration/operator-controls.test.ts',
  'test/faults/qemu-recovery.test.ts',
];

class LongFilesFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const base = await super.sort(files);
    const rank = (f: TestSpecification): number => {
      const i = LONG_FILES_FIRST.indexOf(path.relative(f.project.config.root, f.moduleId).split(path.sep).join('/'));
      return i === -1 ? LONG_FILES_FIRST.length : i;
    };
    return base
      .map((f, i) => ({ f, i, r: rank(f) }))
      .sort((a, b) => a.r - b.r || a.i - b.i)
      .map((x) => x.f);
  }
}

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
    testTimeout: 60_000,
    // expect.poll waits for what a page or a process shows, never a time window: on a loaded
    // 2-core machine a page that refreshes each second can take several to show a change.
    expect: { poll: { timeout: 20_000, interval: 100 } },
    hookTimeout: 180_000,
    // Integration tests spawn agent processes and share one dev server: keep files in one
    // fork pool with modest parallelism on a 2-core machine.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
    sequence: { sequencer: LongFilesFirst },
  },
});
