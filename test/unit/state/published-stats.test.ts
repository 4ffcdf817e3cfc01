import { describe, expect, it } from 'vitest';
import { mergeStats } from '../../../src/state/published-stats.js';

const view = (over: Record<string, number>) => ({
  samples: 10,
  ttftMs: 100,
  latencyMs: 200,
  tpsSamples: 10,
  tokensPerSec: 40,
  outSamples: 10,
  meanOutputTokens: 50,
  okWeight: 9,
  failWeight: 1,
  lastSampleAgeMs: 500,
  at: 1_000_000,
  ...over,
});

describe("mergeStats: the other replicas' measurements as one", () => {
  it('sums counts and weights each average by the samples behind it', () => {
    const m = mergeStats(
      [view({}), view({ samples: 30, ttftMs: 300, tpsSamples: 0, tokensPerSec: 999 })],
      1_000_000,
    );
    expect(m).toMatchObject({
      samples: 40,
      ttftMs: 250,
      tpsSamples: 10,
      tokensPerSec: 40,
      okWeight: 18,
      failWeight: 2,
    });
  });

  it('ages the newest sample by the time since it was written', () => {
    const m = mergeStats(
      [view({ lastSampleAgeMs: 500, at: 1_000_000 }), view({ lastSampleAgeMs: 100, at: 999_000 })],
      1_000_200,
    );
    expect(m?.lastSampleAgeMs).toBe(700);
  });

  it('is nothing without another replica', () => {
    expect(mergeStats([], 0)).toBeUndefined();
  });
});
