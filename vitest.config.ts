import { defineConfig } from 'vitest/config';

// .ci/run asks for a JSON report (to print its "tests: N passed, M failed" line) through this variable.
const jsonReport = process.env.VITEST_JSON_REPORT;

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
    // Integration tests open real sockets; two workers match the machine's two cores.
    maxWorkers: 2,
    reporters: jsonReport ? ['default', ['json', { outputFile: jsonReport }]] : ['default'],
  },
});
