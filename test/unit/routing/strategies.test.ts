import { describe, expect, it } from 'vitest';
import { STRATEGY_NAMES } from '../../../src/config/schema.js';
import { STRATEGIES, getStrategy } from '../../../src/routing/strategies/index.js';
import {
  finishRanking,
  fixed,
  fmtInt,
  rotationIndex,
  scored,
  sortSmall,
} from '../../../src/routing/strategies/rank.js';
import { DEFAULT_OUTPUT_TOKENS } from '../../../src/routing/tokens.js';
import type {
  CandidateView,
  RankedCandidate,
  StrategyContext,
  UpstreamStatsView,
} from '../../../src/routing/types.js';
import { mulberry32, noRandom } from '../../helpers/random.js';

const MEASURED: UpstreamStatsView = {
  samples: 10,
  ttftMs: 100,
  latencyMs: 600,
  tokensPerSec: 100,
  meanOutputTokens: 50,
  successRate: 1,
  inFlight: 0,
};

const UNMEASURED: UpstreamStatsView = {
  samples: 0,
  ttftMs: undefined,
  latencyMs: undefined,
  tokensPerSec: undefined,
  meanOutputTokens: undefined,
  successRate: 1,
  inFlight: 0,
};

interface Spec {
  price?: [number, number];
  weight?: number;
  order?: number;
  stats?: Partial<UpstreamStatsView>;
}

/** Frozen candidates named a, b, c... in config order: a strategy that mutates its input throws. */
function cands(...specs: Spec[]): CandidateView[] {
  return Object.freeze(
    specs.map((s, i) =>
      Object.freeze({
        id: `p/${String.fromCharCode(97 + i)}`,
        order: s.order ?? i,
        weight: s.weight ?? 1,
        price: Object.freeze({ input_per_mtok: s.price?.[0] ?? 1, output_per_mtok: s.price?.[1] ?? 2 }),
        stats: Object.freeze({ ...MEASURED, ...s.stats }),
      }),
    ),
  ) as CandidateView[];
}

function ctx(over: Partial<StrategyContext> = {}): StrategyContext {
  return {
    promptTokens: 1_000,
    requestedOutputTokens: undefined,
    now: 0,
    random: noRandom,
    tieEpsilon: 0.02,
    rotation: 0,
    explorationShare: 0.1,
    minSamples: 3,
    weights: { cost: 0.4, latency: 0.4, reliability: 0.2 },
    ...over,
  };
}

const ids = (r: RankedCandidate[]) => r.map((x) => x.candidate.id.slice(2)).join('');
const first = (r: RankedCandidate[]) => r[0]!.candidate.id.slice(2);

/** How often each candidate comes first over `n` successive rotation values. */
function firstsOverRotations(
  run: (rotation: number) => RankedCandidate[],
  n: number,
): Record<string, number> {
  const counts: Record<string, number> = {};
  for (let r = 0; r < n; r++) {
    const k = first(run(r));
    counts[k] = (counts[k] ?? 0) + 1;
  }
  return counts;
}

describe('every strategy', () => {
  it('is registered by its config name; unknown names resolve to nothing', () => {
    for (const name of STRATEGY_NAMES) expect(getStrategy(name)).toBe(STRATEGIES[name]);
    expect(getStrategy('fastest')).toBeUndefined();
    expect(getStrategy('__proto__')).toBeUndefined();
    expect(getStrategy('constructor')).toBeUndefined();
  });

  it('returns every candidate exactly once with a score in [0, 1] and a reason, even on junk', () => {
    const rnd = mulberry32(7);
    const junk = [Number.NaN, -1, 0, Number.POSITIVE_INFINITY, undefined];
    const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    for (let round = 0; round < 300; round++) {
      const n = 1 + Math.floor(rnd() * 8);
      const specs: Spec[] = [];
      for (let i = 0; i < n; i++) {
        const bad = rnd() < 0.3;
        specs.push({
          price: [bad ? (pick(junk) ?? 0) : rnd() * 10, rnd() * 30],
          weight: bad ? (pick(junk) ?? 0) : Math.floor(rnd() * 4),
          order: Math.floor(rnd() * 4),
          stats: {
            samples: Math.floor(rnd() * 6),
            ttftMs: bad ? pick(junk) : rnd() * 2_000,
            latencyMs: rnd() < 0.5 ? undefined : rnd() * 9_000,
            tokensPerSec: bad ? pick(junk) : rnd() * 300,
            meanOutputTokens: rnd() < 0.5 ? undefined : rnd() * 900,
            successRate: bad ? Number.NaN : rnd(),
            inFlight: bad ? -3 : Math.floor(rnd() * 5),
          },
        });
      }
      const cs = cands(...specs);
      const c = ctx({
        random: rnd,
        rotation: Math.floor(rnd() * 100) - 50,
        promptTokens: bad(rnd) ? Number.NaN : rnd() * 5_000,
        requestedOutputTokens: rnd() < 0.3 ? Math.ceil(rnd() * 1_000) : undefined,
        explorationShare: rnd(),
      });
      for (const name of STRATEGY_NAMES) {
        const ranked = STRATEGIES[name](cs, c);
        expect(
          ranked.map((r) => r.candidate).sort((a, b) => a.order - b.order || (a.id < b.id ? -1 : 1)),
        ).toEqual([...cs].sort((a, b) => a.order - b.order || (a.id < b.id ? -1 : 1)));
        expect(new Set(ranked.map((r) => r.candidate)).size).toBe(n);
        for (const r of ranked) {
          expect(r.score, `${name}: ${r.reason}`).toBeGreaterThanOrEqual(0);
          expect(r.score, `${name}: ${r.reason}`).toBeLessThanOrEqual(1);
          expect(r.reason.length).toBeGreaterThan(0);
        }
      }
    }
    function bad(r: () => number): boolean {
      return r() < 0.1;
    }
  });

  it('handles no candidates', () => {
    for (const name of STRATEGY_NAMES) expect(STRATEGIES[name]([], ctx())).toEqual([]);
  });
});

describe('rank helpers', () => {
  it('rotationIndex is safe for any counter', () => {
    expect(rotationIndex(7, 3)).toBe(1);
    expect(rotationIndex(-1, 3)).toBe(2);
    expect(rotationIndex(Number.NaN, 3)).toBe(0);
    expect(rotationIndex(5.9, 3)).toBe(2);
    expect(rotationIndex(1e300, 3)).toBeLessThan(3);
  });

  it('formats integers with thousands separators', () => {
    expect(fmtInt(0)).toBe('0');
    expect(fmtInt(999.6)).toBe('1,000');
    expect(fmtInt(1234567)).toBe('1,234,567');
    expect(fmtInt(-12345)).toBe('-12,345');
  });

  it('fixed() writes what toFixed writes, for the magnitudes reasons quote, and falls back outside them', () => {
    const rnd = mulberry32(7);
    for (let i = 0; i < 20_000; i++) {
      const digits = i % 7;
      const scale = 10 ** Math.floor(rnd() * 12 - 6);
      const x = (rnd() - 0.3) * scale;
      const scaled = Math.abs(x) * 10 ** digits;
      if (Math.abs(scaled - Math.trunc(scaled) - 0.5) < 1e-6) continue; // halfway: binary vs decimal rounding
      // toFixed writes "-0.00" for a negative that rounds to zero; a zero needs no sign.
      const want = x.toFixed(digits).replace(/^-(0\.?0*)$/, '$1');
      expect(fixed(x, digits), `${x} ${digits}`).toBe(want);
    }
    expect(fixed(-0.0001, 2)).toBe('0.00');
    expect(fixed(3e12, 2)).toBe((3e12).toFixed(2));
    expect(fixed(Number.NaN, 2)).toBe('NaN');
    expect(fixed(0.5, 0)).toBe('1');
  });

  it('sortSmall sorts stably in place, as Array.prototype.sort does, at every size', () => {
    const rnd = mulberry32(11);
    const byKey = (a: { key: number }, b: { key: number }): number => a.key - b.key;
    for (let n = 0; n <= 40; n++) {
      for (let round = 0; round < 20; round++) {
        // Few distinct keys, so equal keys are common and stability shows.
        const items = Array.from({ length: n }, (_, at) => ({ key: Math.floor(rnd() * 4), at }));
        const want = items.slice().sort(byKey);
        const got = sortSmall(items, byKey);
        expect(got).toBe(items);
        expect(got.map((x) => `${x.key}:${x.at}`)).toEqual(want.map((x) => `${x.key}:${x.at}`));
      }
    }
  });

  it('ties only within epsilon of the cluster best, rotated over config order not array order', () => {
    const [a, b, c, d] = cands({ order: 3 }, { order: 1 }, { order: 2 }, { order: 0 });
    const scores = new Map([
      [a, 1],
      [b, 0.99],
      [c, 0.98],
      [d, 0.5],
    ]);
    const run = (rotation: number) =>
      finishRanking(
        [a!, b!, c!, d!].map((x) => {
          const s = scored(x, 0);
          s.score = scores.get(x)!;
          return s;
        }),
        rotation,
        0.02,
      );
    // a, b, c tie (within 0.02 of 1, with float slack); config order is b (1), c (2), a (3).
    expect(ids(run(0))).toBe('bcad');
    expect(ids(run(1))).toBe('cabd');
    expect(ids(run(2))).toBe('abcd');
    // The next round leads the same way; the order after each lead turns (its failovers spread).
    expect(ids(run(3))).toBe('bacd');
    expect(ids(finishRanking([scored(a!, 0)], 5, 0.02))).toBe('a');
  });
});

describe('cost', () => {
  it('ranks by expected dollars and shows the arithmetic', () => {
    const cs = cands({ price: [0.15, 0.6] }, { price: [3, 15] }, { price: [0.5, 1.5] });
    const ranked = STRATEGIES.cost(cs, ctx({ promptTokens: 2_000, requestedOutputTokens: 500 }));
    expect(ids(ranked)).toBe('acb');
    expect(ranked[0]!.score).toBe(1);
    expect(ranked[0]!.reason).toBe('cost $0.000600 (2,000 in x $0.15/M + 500 out x $0.60/M)');
    // c costs 0.001 + 0.00075 = 0.00175: score is cheapest / cost.
    expect(ranked[1]!.score).toBeCloseTo(0.0006 / 0.00175, 12);
  });

  it('pays each of n choices its own output (regression: n was ignored, the dearer upstream for it ranked first)', () => {
    const cs = cands({ price: [1, 10] }, { price: [5, 2] });
    const one = ctx({ promptTokens: 1_000, requestedOutputTokens: 100 });
    expect(ids(STRATEGIES.cost(cs, one))).toBe('ab'); // $0.002 vs $0.0052
    const ranked = STRATEGIES.cost(cs, { ...one, choices: 10 }); // $0.011 vs $0.007
    expect(ids(ranked)).toBe('ba');
    expect(ranked[0]!.reason).toBe('cost $0.007000 (1,000 in x $5.00/M + 100 out x 10 choices x $2.00/M)');
    expect(
      ids(STRATEGIES.hybrid(cs, { ...one, choices: 10, weights: { cost: 1, latency: 0, reliability: 0 } })),
    ).toBe('ba');
  });

  it('compares every candidate on the same expected output: max_tokens, else the mean of observed means, else a default', () => {
    const cs = cands(
      { price: [0, 10], stats: { meanOutputTokens: 1_000 } },
      { price: [0, 11], stats: { meanOutputTokens: undefined } },
      { price: [0, 12], stats: { meanOutputTokens: 3_000 } },
    );
    const ranked = STRATEGIES.cost(cs, ctx({ promptTokens: 0 }));
    expect(ids(ranked)).toBe('abc');
    for (const r of ranked) expect(r.reason).toContain('2,000 out (mean)');
    expect(ids(STRATEGIES.cost(cs, ctx({ promptTokens: 0, requestedOutputTokens: 100 })))).toBe('abc');
    expect(STRATEGIES.cost(cs, ctx({ promptTokens: 0, requestedOutputTokens: 100 }))[0]!.reason).toContain(
      '+ 100 out x ',
    );
    const none = cands({ price: [0, 10], stats: UNMEASURED }, { price: [0, 11], stats: UNMEASURED });
    expect(STRATEGIES.cost(none, ctx({ promptTokens: 0 }))[0]!.reason).toContain(
      `${DEFAULT_OUTPUT_TOKENS} out (default)`,
    );
  });

  it('regression: a measured upstream 10× the price does not beat an unmeasured cheap one', () => {
    // Before: the measured one was costed on its 8-token mean, the unmeasured one on the 256-token default.
    const cs = cands(
      { price: [1, 4], stats: { meanOutputTokens: 8 } },
      { price: [0.1, 0.4], stats: UNMEASURED },
    );
    expect(first(STRATEGIES.cost(cs, ctx({ promptTokens: 10 })))).toBe('b');
    expect(
      first(
        STRATEGIES.hybrid(cs, ctx({ promptTokens: 10, weights: { cost: 1, latency: 0, reliability: 0 } })),
      ),
    ).toBe('b');
  });

  it('rotates equal costs evenly', () => {
    const cs = cands({}, {}, {});
    const counts = firstsOverRotations((rotation) => STRATEGIES.cost(cs, ctx({ rotation })), 300);
    expect(counts).toEqual({ a: 100, b: 100, c: 100 });
  });
});

describe('latency', () => {
  it('estimates ttft + output ÷ tokens/s, scaled by load', () => {
    const cs = cands(
      { stats: { ttftMs: 180, tokensPerSec: 2_000 } },
      { stats: { ttftMs: 100, tokensPerSec: 50 } },
      { stats: { ttftMs: 50, tokensPerSec: 2_000, inFlight: 3 } },
    );
    const ranked = STRATEGIES.latency(cs, ctx({ requestedOutputTokens: 64 }));
    expect(ids(ranked)).toBe('acb');
    expect(ranked[0]!.reason).toBe('latency 212 ms est. (ttft 180 ms + 64 tok / 2,000 tok/s) x load 1');
    expect(ranked[1]!.reason).toBe('latency 328 ms est. (ttft 50 ms + 64 tok / 2,000 tok/s) x load 4');
    expect(ranked[1]!.score).toBeCloseTo(212 / 328, 12);
    // b: 100 + 64/50 s = 1,380 ms.
    expect(ranked[2]!.score).toBeCloseTo(212 / 1_380, 12);
  });

  it('falls back to whole-attempt latency without a throughput figure', () => {
    const cs = cands(
      { stats: { ttftMs: 900, latencyMs: 900, tokensPerSec: undefined } },
      { stats: { ttftMs: 100, tokensPerSec: 10 } },
    );
    const ranked = STRATEGIES.latency(cs, ctx());
    // b: 100 + 50/10 s = 5,100 ms.
    expect(ids(ranked)).toBe('ab');
    expect(ranked[0]!.reason).toContain('no tok/s yet');
  });

  it('rotates all-unmeasured candidates without drawing randomness', () => {
    const cs = cands(
      { stats: UNMEASURED },
      { stats: { ...UNMEASURED, samples: 2, ttftMs: 5 } },
      { stats: UNMEASURED },
    );
    const counts = firstsOverRotations((rotation) => STRATEGIES.latency(cs, ctx({ rotation })), 300);
    expect(counts).toEqual({ a: 100, b: 100, c: 100 });
    expect(STRATEGIES.latency(cs, ctx())[0]!.reason).toBe('unmeasured (0 samples): rotating');
  });

  it('explores unmeasured upstreams on exactly the configured share of decisions', () => {
    const cs = cands(
      { stats: { ttftMs: 100 } },
      { stats: { ttftMs: 300 } },
      { stats: { ...UNMEASURED, samples: 1 } },
      { stats: UNMEASURED },
    );
    const random = mulberry32(42);
    const N = 10_000;
    const counts: Record<string, number> = {};
    for (let rotation = 0; rotation < N; rotation++) {
      const ranked = STRATEGIES.latency(cs, ctx({ random, rotation, explorationShare: 0.1 }));
      counts[first(ranked)] = (counts[first(ranked)] ?? 0) + 1;
      const f = ranked[0]!;
      if (f.candidate.id === 'p/a') {
        // Not exploring: measured first, unmeasured held back at score 0.
        expect(ids(ranked).slice(0, 2)).toBe('ab');
        expect(ranked[3]!.score).toBe(0);
        expect(ranked[3]!.reason).toMatch(/^unmeasured \(\d samples?\): held back until measured$/);
      } else {
        expect(f.score).toBe(1);
        expect(f.reason).toMatch(/^unmeasured \(\d samples?\): exploring \(10\.0% of decisions\)$/);
      }
    }
    const explored = ((counts.c ?? 0) + (counts.d ?? 0)) / N;
    expect(Math.abs(explored - 0.1)).toBeLessThan(0.01); // ±3.3 σ at n = 10,000
    // Rotation spreads exploration over both unmeasured upstreams.
    expect(Math.abs((counts.c ?? 0) / N - 0.05)).toBeLessThan(0.01);
    expect(counts.b).toBeUndefined();
  });

  it('never explores with a zero share, and does not draw randomness without unmeasured upstreams', () => {
    const cs = cands({ stats: { ttftMs: 100 } }, { stats: UNMEASURED });
    for (let rotation = 0; rotation < 50; rotation++) {
      expect(ids(STRATEGIES.latency(cs, ctx({ rotation, explorationShare: 0, random: () => 0 })))).toBe('ab');
    }
    expect(
      ids(STRATEGIES.latency(cands({ stats: { ttftMs: 200 } }, { stats: { ttftMs: 100 } }), ctx())),
    ).toBe('ba');
  });

  it('rotates measured upstreams whose estimates are within epsilon', () => {
    const cs = cands({ stats: { ttftMs: 100 } }, { stats: { ttftMs: 101 } }, { stats: { ttftMs: 400 } });
    const counts = firstsOverRotations((rotation) => STRATEGIES.latency(cs, ctx({ rotation })), 200);
    expect(counts).toEqual({ a: 100, b: 100 });
  });
});

describe('hybrid', () => {
  it('scores a single candidate 1', () => {
    const ranked = STRATEGIES.hybrid(cands({}), ctx());
    expect(ranked).toHaveLength(1);
    expect(ranked[0]!.score).toBe(1);
  });

  it('gives equal candidates 1 each and rotates them evenly', () => {
    const cs = cands({}, {}, {}, {});
    expect(STRATEGIES.hybrid(cs, ctx()).map((r) => r.score)).toEqual([1, 1, 1, 1]);
    const counts = firstsOverRotations((rotation) => STRATEGIES.hybrid(cs, ctx({ rotation })), 400);
    expect(counts).toEqual({ a: 100, b: 100, c: 100, d: 100 });
  });

  it('weighs normalised factors: each weight alone reproduces its own ranking', () => {
    const cs = cands(
      { price: [1, 1], stats: { ttftMs: 500, successRate: 0.9 } },
      { price: [5, 5], stats: { ttftMs: 100, successRate: 0.5 } },
      { price: [9, 9], stats: { ttftMs: 900, successRate: 1 } },
    );
    expect(first(STRATEGIES.hybrid(cs, ctx({ weights: { cost: 1, latency: 0, reliability: 0 } })))).toBe('a');
    expect(first(STRATEGIES.hybrid(cs, ctx({ weights: { cost: 0, latency: 1, reliability: 0 } })))).toBe('b');
    expect(first(STRATEGIES.hybrid(cs, ctx({ weights: { cost: 0, latency: 0, reliability: 1 } })))).toBe('c');
  });

  it('keeps proportions: 1 % cheaper does not beat 5× faster', () => {
    const cs = cands(
      { price: [1, 1], stats: { ttftMs: 1_000, tokensPerSec: 1e9 } },
      { price: [1.01, 1.01], stats: { ttftMs: 200, tokensPerSec: 1e9 } },
    );
    const ranked = STRATEGIES.hybrid(cs, ctx({ weights: { cost: 0.5, latency: 0.5, reliability: 0 } }));
    expect(ids(ranked)).toBe('ba');
    expect(ranked[0]!.score).toBe(1);
    expect(ranked[0]!.reason).toMatch(
      /^hybrid \d\.\d\d = cost \$0\.\d{6} -> 0\.99 x 0\.5 \+ latency 200 ms -> 1\.00 x 0\.5/,
    );
  });

  it("every candidate's reason carries its own figures: measured, held back, and the weights as they count", () => {
    const cs = cands(
      { price: [5, 5], stats: { successRate: 0.9 } },
      { price: [6, 6], stats: { ttftMs: 150 } },
      { price: [0, 0], stats: UNMEASURED },
    );
    const ranked = STRATEGIES.hybrid(
      cs,
      ctx({ random: () => 0.99, weights: { cost: 2, latency: 2, reliability: 1 } }),
    );
    expect(ranked.map((r) => `${r.candidate.id.slice(2)} ${r.score.toFixed(4)} ${r.reason}`)).toEqual([
      'a 1.0000 hybrid 0.78 = cost $0.005250 -> 0.50 x 0.4 + latency 600 ms -> 1.00 x 0.4 + reliability 90.0% -> 0.90 x 0.2; score 1.00 = 0.78 / best 0.78',
      'b 0.9435 hybrid 0.74 = cost $0.006300 -> 0.42 x 0.4 + latency 650 ms -> 0.92 x 0.4 + reliability 100.0% -> 1.00 x 0.2; score 0.94 = 0.74 / best 0.78',
      'c 0.0000 unmeasured (0 samples): held back until measured; hybrid 0.80 = cost $0.000000 -> 1.00 x 0.4 + latency unmeasured -> 0.50 x 0.4 + reliability 100.0% -> 1.00 x 0.2',
    ]);
  });

  it('holds back unmeasured latency (neutral 0.5) behind measured, within the exploration share', () => {
    // c is free and perfectly reliable but unmeasured: without the bound it would win every time.
    const cs = cands(
      { price: [5, 5] },
      { price: [6, 6], stats: { ttftMs: 150 } },
      { price: [0, 0], stats: UNMEASURED },
    );
    const random = mulberry32(9);
    const N = 10_000;
    let explored = 0;
    for (let rotation = 0; rotation < N; rotation++) {
      const ranked = STRATEGIES.hybrid(cs, ctx({ random, rotation, explorationShare: 0.05 }));
      if (first(ranked) === 'c') {
        explored++;
        expect(ranked[0]!.reason).toContain('exploring');
        expect(ranked[0]!.reason).toContain('latency unmeasured -> 0.50');
      } else {
        expect(ranked[2]!.candidate.id).toBe('p/c');
        expect(ranked[2]!.score).toBe(0);
      }
    }
    expect(Math.abs(explored / N - 0.05)).toBeLessThan(0.008);
  });

  it('ranks all-unmeasured candidates on the factors they have', () => {
    const cs = cands({ price: [5, 5], stats: UNMEASURED }, { price: [1, 1], stats: UNMEASURED });
    const ranked = STRATEGIES.hybrid(cs, ctx({ random: noRandom }));
    expect(ids(ranked)).toBe('ba');
    expect(ranked[0]!.score).toBe(1);
  });

  it('skips exploration when latency has no weight', () => {
    const cs = cands({ price: [5, 5] }, { price: [1, 1], stats: UNMEASURED });
    const ranked = STRATEGIES.hybrid(
      cs,
      ctx({ random: noRandom, weights: { cost: 1, latency: 0, reliability: 0 } }),
    );
    expect(ids(ranked)).toBe('ba');
  });

  it('rotates everything when all weights are 0', () => {
    const cs = cands({ price: [1, 1] }, { price: [9, 9] });
    const counts = firstsOverRotations(
      (rotation) =>
        STRATEGIES.hybrid(cs, ctx({ rotation, weights: { cost: 0, latency: 0, reliability: 0 } })),
      100,
    );
    expect(counts).toEqual({ a: 50, b: 50 });
  });
});

describe('round-robin', () => {
  it('starts at rotation mod n in config order, scores 1 then descending', () => {
    const cs = cands({ order: 2 }, { order: 0 }, { order: 1 });
    expect(ids(STRATEGIES['round-robin'](cs, ctx({ rotation: 0 })))).toBe('bca');
    expect(ids(STRATEGIES['round-robin'](cs, ctx({ rotation: 1 })))).toBe('cab');
    // The second round: the order after the lead has turned (a failing lead's failovers spread).
    expect(ids(STRATEGIES['round-robin'](cs, ctx({ rotation: 5 })))).toBe('acb');
    const scores = STRATEGIES['round-robin'](cs, ctx()).map((r) => r.score);
    expect(scores[0]).toBe(1);
    expect(scores[1]!).toBeLessThan(scores[0]!);
    expect(scores[2]!).toBeLessThan(scores[1]!);
    expect(firstsOverRotations((rotation) => STRATEGIES['round-robin'](cs, ctx({ rotation })), 300)).toEqual({
      a: 100,
      b: 100,
      c: 100,
    });
  });
});

describe('priority', () => {
  it('follows config order, not array order, ignoring live figures', () => {
    const cs = cands(
      { order: 2, stats: { ttftMs: 1 } },
      { order: 0, stats: { ttftMs: 9_000, successRate: 0.1 } },
      { order: 1 },
    );
    const ranked = STRATEGIES.priority(cs, ctx());
    expect(ids(ranked)).toBe('bca');
    expect(ranked[0]!.score).toBe(1);
    expect(ranked[0]!.reason).toBe('priority #1 (config order)');
  });

  it('rotates equal orders', () => {
    const cs = cands({ order: 0 }, { order: 0 }, { order: 1 });
    expect(firstsOverRotations((rotation) => STRATEGIES.priority(cs, ctx({ rotation })), 100)).toEqual({
      a: 50,
      b: 50,
    });
  });
});

describe('weighted', () => {
  it('draws first place in proportion to weight, and the failover chain too', () => {
    const cs = cands({ weight: 1 }, { weight: 2 }, { weight: 3 }, { weight: 0 });
    const random = mulberry32(1234);
    const N = 20_000;
    const firsts: Record<string, number> = {};
    const seconds: Record<string, number> = {};
    for (let i = 0; i < N; i++) {
      const ranked = STRATEGIES.weighted(cs, ctx({ random }));
      const o = ids(ranked);
      firsts[o[0]!] = (firsts[o[0]!] ?? 0) + 1;
      seconds[o[1]!] = (seconds[o[1]!] ?? 0) + 1;
      expect(o[3]).toBe('d');
    }
    expect(Math.abs(firsts.a! / N - 1 / 6)).toBeLessThan(0.01);
    expect(Math.abs(firsts.b! / N - 2 / 6)).toBeLessThan(0.01);
    expect(Math.abs(firsts.c! / N - 3 / 6)).toBeLessThan(0.01);
    // Second place without replacement: P(a) = P(b first)·1/4 + P(c first)·1/3 = 1/4.
    expect(Math.abs(seconds.a! / N - 0.25)).toBeLessThan(0.01);
  });

  it('reports the weight share and rotates zero weights', () => {
    const cs = cands({ weight: 0 }, { weight: 0 });
    expect(firstsOverRotations((rotation) => STRATEGIES.weighted(cs, ctx({ rotation })), 100)).toEqual({
      a: 50,
      b: 50,
    });
    const ranked = STRATEGIES.weighted(cands({ weight: 3 }, { weight: 1 }), ctx({ random: () => 0 }));
    expect(ranked[0]!.reason).toBe('weight 3 of 4 (75.0%), drawn 1');
    expect(ranked.map((r) => r.score)).toEqual([1, 0.5]);
  });
});

describe('least-busy', () => {
  it('prefers fewest in flight and rotates ties', () => {
    const cs = cands({ stats: { inFlight: 4 } }, { stats: { inFlight: 1 } }, { stats: { inFlight: 1 } });
    const ranked = STRATEGIES['least-busy'](cs, ctx());
    expect(ranked[2]!.candidate.id).toBe('p/a');
    expect(ranked[2]!.reason).toBe('4 in flight');
    expect(ranked[2]!.score).toBeCloseTo(2 / 5, 12);
    expect(firstsOverRotations((rotation) => STRATEGIES['least-busy'](cs, ctx({ rotation })), 100)).toEqual({
      b: 50,
      c: 50,
    });
  });
});

describe('reasons are written lazily but quote the figures of the decision', () => {
  it('reads the same after the statistics moved on', () => {
    for (const name of ['latency', 'hybrid', 'cost'] as const) {
      const live = { ...MEASURED, ttftMs: 100, tokensPerSec: 50, inFlight: 0 };
      const c: CandidateView[] = [
        { id: 'p/a', order: 0, weight: 1, price: { input_per_mtok: 1, output_per_mtok: 2 }, stats: live },
        {
          id: 'p/b',
          order: 1,
          weight: 1,
          price: { input_per_mtok: 2, output_per_mtok: 4 },
          stats: { ...MEASURED },
        },
      ];
      const early = getStrategy(name)(c, ctx());
      const eager = early.map((r) => r.reason); // read now
      const late = getStrategy(name)(c, ctx());
      Object.assign(live, { ttftMs: 9_999, tokensPerSec: 1, inFlight: 40, samples: 999 }); // the world moves on
      expect(
        late.map((r) => r.reason),
        name,
      ).toEqual(eager);
    }
  });
});

describe('reasons are plain ASCII', () => {
  // A single two-byte character (an arrow) made every request's log line a two-byte string: ~8 µs of CPU
  // per request at c=64 in the bench.
  it.each(STRATEGY_NAMES)('%s', (name) => {
    const c = cands({}, { stats: { inFlight: 2 } }, { stats: { samples: 0 } });
    for (const r of getStrategy(name)(c, ctx({ random: mulberry32(7) })))
      expect(r.reason).toMatch(/^[\x20-\x7e]*$/);
  });
});

describe('a measurement gone stale is taken again', () => {
  // Regression: an upstream that once looked slow got no traffic under `latency`, so it was never measured
  // again after it recovered.
  const share = (lastB: number) => {
    const c = cands(
      { stats: { ttftMs: 10, lastSampleAt: 100_000 } },
      { stats: { ttftMs: 900, lastSampleAt: lastB } },
    );
    const random = mulberry32(3);
    let firstB = 0;
    for (let r = 0; r < 4_000; r++) {
      if (
        getStrategy('latency')(c, ctx({ random, rotation: r, explorationShare: 0.1 }))[0]!.candidate.id ===
        'p/b'
      )
        firstB++;
    }
    return firstB / 4_000;
  };
  it('is explored within the exploration share once 60 s older than the freshest candidate', () => {
    expect(share(100_000 - 30_000)).toBe(0);
    const s = share(100_000 - 61_000);
    expect(s).toBeGreaterThan(0.07);
    expect(s).toBeLessThan(0.13);
  });
});
