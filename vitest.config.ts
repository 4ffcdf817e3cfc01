import { configDefaults, defineConfig } from 'vitest/config';

// .ci/run asks for a JSON report (to print its "tests: N passed, M failed" line) through this variable.
const jsonReport = process.env.VITEST_JSON_REPORT;
const LEAKS = 'test/integration/audit-leaks.test.ts';

export default defineConfig({
  test: {
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
    // A worker runs its files one after another in one module graph: importing src/ and the SDKs afresh for
    // each of ~120 files cost about a minute of the run. Nothing in src/ keeps per-process state a test can
    // see (every registry, pool and cache belongs to an app); a test that counts live objects process-wide
    // counts against what was alive when its file began (audit-leaks).
    isolate: false,
    // Integration tests open real sockets; two workers match the machine's two cores.
    maxWorkers: 2,
    reporters: jsonReport ? ['default', ['json', { outputFile: jsonReport }]] : ['default'],
    projects: [
      {
        extends: true,
        test: { name: 'shared', include: ['test/**/*.test.ts'], exclude: [...configDefaults.exclude, LEAKS] },
      },
      // Counting live objects takes a full GC per count: in a worker holding every earlier file's module
      // graph and garbage that ran three times slower (68 s against 22 s). Its own process keeps it small.
      { extends: true, test: { name: 'leaks', include: [LEAKS], isolate: true } },
    ],
  },
});
