import { defineConfig } from 'vitest/config';

// The real-process tests build dist/ once per run (test/processHarness.ts): this marks the run.
process.env.VITEST_RUN_STARTED_AT ??= String(Date.now());

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
