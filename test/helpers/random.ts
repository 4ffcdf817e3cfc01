/** Seeded PRNGs for tests: the same seed gives the same decisions on every run. */

/** mulberry32: a tiny 32-bit PRNG with good enough statistics for routing tests; returns [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random source that fails the test if a strategy consults it when it should not. */
export function noRandom(): number {
  throw new Error('random() was called');
}

/** A manual clock: `now()` for injection, `advance(ms)` to move it. */
export function manualClock(start = 0): {
  now: () => number;
  advance: (ms: number) => void;
  set: (ms: number) => void;
} {
  let t = start;
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
    set: (ms) => {
      t = ms;
    },
  };
}
