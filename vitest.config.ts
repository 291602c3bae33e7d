import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
    testTimeout: 60_000,
    hookTimeout: 180_000,
    // Integration tests spawn agent processes and share one dev server: keep files in one
    // fork pool with modest parallelism on a 2-core machine.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
  },
});
