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
    // Most files wait on sockets, child processes and timers rather than the CPU, so three
    // files at a time finish the suite in about a minute even on 2 cores (the default would be
    // cores - 1 = one file at a time, about 3 minutes). The timing-sensitive checks hold at
    // four at a time too; three leaves room on a slower CI machine.
    maxWorkers: 3,
    reporters: ['default'],
  },
});
