import { configDefaults, defineConfig } from 'vitest/config';

// .ci/run asks for a JSON report (to print its "tests: N passed, M failed" line) through this variable.
const jsonReport = process.env.VITEST_JSON_REPORT;
const LEAKS = 'test/integration/audit-leaks.test.ts';

// Files that spend most of their time waiting on real timers (breaker windows, leases, drains, file watches,
// deadlines, pacing upstreams). Measured in a full run (per file: wall time, and CPU of the worker): ~350 s of
// the suite's ~630 s of file time, ~15% of it on a CPU. Run first, seven at a time, they overlap one another's
// waits: with 34 such files, ~70 s (five at a time: ~88 s; nine: ~60 s, each file slower for the load), where on
// the two shared workers they took ~175 s. Seven, not more, and alone in their group (no CPU-bound file beside
// them) so their timing margins (lease lapses, drains, accounting under load) still hold. A file that spawns
// CLI processes or keeps a core busy belongs with the rest.
const WAITING = [
  'accounting',
  'audit-concurrency',
  'audit-container-ops',
  'audit-fleet-lease',
  'audit-invariants',
  'audit-observability',
  'audit-operations',
  'audit-passthrough-hostile',
  'audit-raw-sockets',
  'audit-realtime',
  'audit-redis',
  'audit-safety',
  'audit-sdk-failures',
  'audit-spec-literal',
  'audit-stream-output',
  'breaker-live',
  'deadline-semantics',
  'half-open-probe-lease',
  'metrics-series',
  'passthrough',
  'passthrough-bodies',
  'passthrough-websocket',
  'protection-edges',
  'provider-endpoints',
  'redis-faults',
  'redis-shared-state',
  'request-accounting-paths',
  'resilience-breaker',
  'routing-live',
  'scale-out',
  'sdk-cancel',
  'sdk-error-surfaces',
  'sdk-wide',
  'time-bounds-edges',
].map((name) => `test/integration/${name}.test.ts`);

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
        test: { name: 'waiting', include: WAITING, maxWorkers: 7, sequence: { groupOrder: 0 } },
      },
      {
        extends: true,
        test: {
          name: 'shared',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, LEAKS, ...WAITING],
          sequence: { groupOrder: 1 },
        },
      },
      // Counting live objects takes a full GC per count: in a worker holding every earlier file's module
      // graph and garbage that ran three times slower (68 s against 22 s). Its own process keeps it small.
      {
        extends: true,
        test: { name: 'leaks', include: [LEAKS], isolate: true, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
