import { describe, expect, it } from 'vitest';
import { UpstreamStats } from '../../../src/routing/stats.js';
import { manualClock } from '../../helpers/random.js';

const ok = (ttftMs: number, totalMs = ttftMs, outputTokens: number | undefined = 10, streamed = true) => ({
  ttftMs,
  totalMs,
  outputTokens,
  streamed,
});

describe('UpstreamStats', () => {
  it('starts unmeasured, fully reliable and idle', () => {
    const s = new UpstreamStats(manualClock().now);
    expect(s.samples).toBe(0);
    expect(s.ttftMs).toBeUndefined();
    expect(s.latencyMs).toBeUndefined();
    expect(s.tokensPerSec).toBeUndefined();
    expect(s.meanOutputTokens).toBeUndefined();
    expect(s.successRate).toBe(1);
    expect(s.inFlight).toBe(0);
  });

  it('counts in-flight requests and never goes below 0', () => {
    const s = new UpstreamStats(manualClock().now);
    s.begin();
    s.begin();
    s.end();
    expect(s.inFlight).toBe(1);
    s.end();
    s.end();
    s.end();
    expect(s.inFlight).toBe(0);
    s.begin();
    expect(s.inFlight).toBe(1);
  });

  describe('peak-EWMA time to first token', () => {
    it('takes a higher sample at once', () => {
      const clock = manualClock();
      const s = new UpstreamStats(clock.now);
      s.recordSuccess(ok(100));
      clock.advance(1);
      s.recordSuccess(ok(5_000));
      expect(s.ttftMs).toBe(5_000);
    });

    it('decays towards lower samples with time, and by at least alpha per sample', () => {
      const clock = manualClock();
      const s = new UpstreamStats(clock.now, { peakDecayMs: 10_000, alpha: 0.1 });
      s.recordSuccess(ok(500));
      // Same instant: each fast answer pulls the estimate 10% of the way (a cold-start outlier on a busy
      // upstream is forgotten within tens of answers, regression of the latency routing test).
      s.recordSuccess(ok(100));
      expect(s.ttftMs).toBeCloseTo(100 + 400 * 0.9, 6);
      for (let i = 0; i < 40; i++) s.recordSuccess(ok(100));
      expect(s.ttftMs).toBeLessThan(110);
      // With time, a single sample pulls harder than alpha, from the estimate as it has relaxed meanwhile
      // (towards the plain average, which the outlier did not move).
      s.recordSuccess(ok(5_000));
      clock.advance(10_000);
      s.recordSuccess(ok(100));
      const base = 100 + 400 * 0.9 ** 41;
      const relaxed = base + (5_000 - base) * Math.exp(-1);
      expect(s.ttftMs).toBeCloseTo(relaxed * Math.exp(-1) + 100 * (1 - Math.exp(-1)), 6);
      clock.advance(100_000);
      s.recordSuccess(ok(100));
      expect(s.ttftMs).toBeLessThan(100.5);
    });

    it('relaxes to where it was before one slow answer while no sample comes, so it is tried again', () => {
      // Under `latency` an upstream that looks slow gets no traffic, hence no sample to bring it down: the
      // estimate must come down by itself (before, it stayed at the peak until the 60 s staleness limit).
      const clock = manualClock();
      const s = new UpstreamStats(clock.now, { peakDecayMs: 10_000, alpha: 0.1 });
      for (let i = 0; i < 20; i++) s.recordSuccess(ok(5));
      s.recordSuccess(ok(300)); // one slow answer: taken at once
      expect(s.ttftMs).toBe(300);
      // ... but not into the average it relaxes to: that stays where the upstream was (with it, 20 ms and
      // one 400 ms relaxed to 58 ms and benched a fast upstream until it went stale a minute later).
      const base = 5;
      clock.advance(10_000);
      expect(s.ttftMs).toBeCloseTo(base + (300 - base) * Math.exp(-1), 6);
      expect(s.snapshot().ttftMs).toBeCloseTo(s.ttftMs!, 1);
      clock.advance(40_000);
      expect(s.ttftMs).toBeLessThan(base + 2);
      // A sample after the quiet spell still weighs by the time since the last one, as before.
      s.recordSuccess(ok(5));
      expect(s.ttftMs).toBeLessThan(10);
    });
  });

  it('keeps output tokens as a plain EWMA, latency and time per token as peak-EWMAs', () => {
    const clock = manualClock();
    const s = new UpstreamStats(clock.now, { alpha: 0.5 });
    s.recordSuccess(ok(100, 1_100, 101));
    expect(s.latencyMs).toBe(1_100);
    expect(s.tokensPerSec).toBeCloseTo(101, 9); // 101 tokens over the 1 s after the first token
    expect(s.meanOutputTokens).toBe(101);
    s.recordSuccess(ok(100, 2_100, 301)); // faster generation: pulls the time per token down by alpha
    expect(s.latencyMs).toBe(2_100); // a slower attempt is taken at once
    expect(s.tokensPerSec).toBeCloseTo(1000 / ((1000 / 101 + 2000 / 301) / 2), 9);
    expect(s.meanOutputTokens).toBe(201);
    expect(s.samples).toBe(2);
    s.recordSuccess(ok(100, 1_100, 201)); // a faster one pulls it down by alpha at least
    expect(s.latencyMs).toBeLessThanOrEqual(1_600);
    expect(s.samples).toBe(3);
  });

  it('a first byte that timed out is a slow first token, taken at once; unmeasured, it teaches nothing', () => {
    const clock = manualClock();
    const s = new UpstreamStats(clock.now);
    s.recordTimeout(5_000);
    expect(s.ttftMs).toBeUndefined();
    expect(s.snapshot().failuresByKind.timeout).toBe(1);
    for (let i = 0; i < 5; i++) s.recordSuccess(ok(20));
    s.recordTimeout(5_000);
    expect(s.ttftMs).toBe(5_000);
    expect(s.latencyMs).toBe(5_000);
    expect(s.snapshot().failuresByKind.timeout).toBe(2);
    expect(s.samples).toBe(5); // no success counted
  });

  it('a wait with no first token cut by no bound of its own is a slow first token when slower than thought, never a failure', () => {
    const s = new UpstreamStats(manualClock().now);
    s.recordSlowWait(900);
    expect(s.ttftMs).toBeUndefined(); // unmeasured, it teaches nothing
    for (let i = 0; i < 5; i++) s.recordSuccess(ok(20));
    s.recordSlowWait(10); // a lower bound below the estimate says nothing
    expect(s.ttftMs).toBe(20);
    s.recordSlowWait(900);
    expect(s.ttftMs).toBe(900);
    expect(s.latencyMs).toBe(900);
    expect(s.successRate).toBe(1);
    expect(s.snapshot().failuresByKind.timeout).toBe(0);
  });

  it("the first measured pace starts the first-token figure again: whole answers' times were in it", () => {
    const s = new UpstreamStats(manualClock().now);
    for (let i = 0; i < 5; i++) s.recordSuccess(ok(2_100, 2_100, 200, false)); // JSON: no pace yet
    expect(s.ttftMs).toBe(2_100);
    s.recordSuccess(ok(100, 2_100, 200)); // a stream: 100 ms to its first token, then 10 ms a token
    expect(s.ttftMs).toBe(100);
    s.recordSuccess(ok(100, 2_100, 200));
    expect(s.ttftMs).toBe(100);
  });

  it('takes a slower generation at once (regression: tokens/s moved by alpha, the outlier hidden)', () => {
    const clock = manualClock();
    const s = new UpstreamStats(clock.now);
    for (let i = 0; i < 20; i++) {
      clock.advance(100);
      s.recordSuccess(ok(100, 1_100, 100)); // 100 tokens/s
    }
    clock.advance(100);
    s.recordSuccess(ok(100, 10_100, 100)); // 10 tokens/s
    expect(s.tokensPerSec).toBeCloseTo(10, 6);
    // ... and forgets it as the normal pace comes back, in tens of answers.
    for (let i = 0; i < 60; i++) {
      clock.advance(100);
      s.recordSuccess(ok(100, 1_100, 100));
    }
    expect(s.tokensPerSec).toBeGreaterThan(95);
  });

  it("counts a whole answer's generation once: its first-token wait is what the known pace leaves", () => {
    // Regression: a JSON answer's total time went into time to first token, and the latency estimate then
    // added its generation again from tokens/s (one JSON answer made an upstream look twice as slow).
    const clock = manualClock();
    const s = new UpstreamStats(clock.now);
    s.recordSuccess(ok(200, 1_200, 100)); // streamed: 200 ms to the first token, 100 tokens/s
    clock.advance(1_000);
    s.recordSuccess(ok(1_200, 1_200, 100, false)); // the same answer, not streamed
    expect(s.ttftMs).toBeCloseTo(200, 6);
    // Without a pace yet, a whole answer's time stands for its first token (nothing is added back).
    const t = new UpstreamStats(clock.now);
    t.recordSuccess(ok(1_200, 1_200, 100, false));
    expect(t.ttftMs).toBe(1_200);
    expect(t.tokensPerSec).toBeUndefined();
  });

  it('measures tokens/s only when meaningful', () => {
    const s = new UpstreamStats(manualClock().now);
    s.recordSuccess(ok(100, 1_000, 50, false)); // not streamed: no generation phase to time
    s.recordSuccess(ok(100, 1_000, 1)); // one token
    s.recordSuccess(ok(100, 100, 50)); // no time after the first token
    s.recordSuccess({ ttftMs: 100, totalMs: 1_000, outputTokens: undefined, streamed: true }); // usage unknown
    expect(s.tokensPerSec).toBeUndefined();
    expect(s.samples).toBe(4);
  });

  it('ignores hostile figures without losing the success', () => {
    const s = new UpstreamStats(manualClock().now);
    s.recordSuccess({ ttftMs: Number.NaN, totalMs: 10, outputTokens: -5, streamed: true });
    s.recordSuccess({
      ttftMs: 10,
      totalMs: Number.POSITIVE_INFINITY,
      outputTokens: Number.NaN,
      streamed: true,
    });
    expect(s.samples).toBe(0);
    expect(s.ttftMs).toBeUndefined();
    expect(s.meanOutputTokens).toBeUndefined();
    expect(s.snapshot().successes).toBe(2);
  });

  describe('success rate', () => {
    it('decays with time: recent failures weigh more than old ones', () => {
      const clock = manualClock(1_000);
      const s = new UpstreamStats(clock.now, { halfLifeMs: 60_000 });
      for (let i = 0; i < 10; i++) s.recordFailure('error');
      expect(s.successRate).toBeCloseTo(1 / 11, 9); // one pseudo-success prior
      clock.advance(60_000);
      // The failures now weigh 5; the new success 1.
      s.recordSuccess(ok(100));
      expect(s.successRate).toBeCloseTo(2 / 7, 9);
      clock.advance(60_000 * 20);
      expect(s.successRate).toBeGreaterThan(0.999); // silence reads as "no data": 1
    });

    it('is not a lifetime average', () => {
      const clock = manualClock();
      const s = new UpstreamStats(clock.now, { halfLifeMs: 1_000 });
      for (let i = 0; i < 1_000; i++) s.recordSuccess(ok(100));
      clock.advance(10_000);
      for (let i = 0; i < 10; i++) s.recordFailure('timeout');
      // 1,000 old successes have decayed to ~1; 10 fresh failures dominate.
      expect(s.successRate).toBeLessThan(0.2);
    });

    it('does not count client errors against the upstream', () => {
      const s = new UpstreamStats(manualClock().now);
      s.recordSuccess(ok(100));
      for (let i = 0; i < 5; i++) s.recordFailure('client_error');
      expect(s.successRate).toBe(1);
      s.recordFailure('rate_limit');
      expect(s.successRate).toBeCloseTo(2 / 3, 9);
    });
  });

  it('snapshots plain JSON with totals', () => {
    const clock = manualClock();
    const s = new UpstreamStats(clock.now);
    s.begin();
    s.recordSuccess(ok(120.04, 900, 40));
    s.recordFailure('error');
    s.recordFailure('timeout');
    s.recordFailure('rate_limit');
    s.recordFailure('client_error');
    const snap = s.snapshot();
    expect(JSON.parse(JSON.stringify(snap))).toEqual(snap);
    expect(snap).toMatchObject({
      samples: 1,
      ttftMs: 120,
      latencyMs: 900,
      meanOutputTokens: 40,
      inFlight: 1,
      requests: 5,
      successes: 1,
      failures: 3,
      failuresByKind: { error: 1, timeout: 1, rate_limit: 1 },
      clientErrors: 1,
      outputTokens: 40,
    });
    expect(new UpstreamStats(clock.now).snapshot()).toMatchObject({ ttftMs: null, tokensPerSec: null });
  });
});

describe("UpstreamStats: the other replicas' view (state.backend redis)", () => {
  const remote = {
    samples: 40,
    ttftMs: 200,
    latencyMs: 400,
    tpsSamples: 40,
    tokensPerSec: 50,
    outSamples: 40,
    meanOutputTokens: 100,
    okWeight: 30,
    failWeight: 10,
    lastSampleAgeMs: 1_000,
  };

  it('stands in for measurements this replica lacks', () => {
    const clock = manualClock(10_000);
    const s = new UpstreamStats(clock.now);
    s.setRemote(remote);
    expect(s.samples).toBe(40);
    expect(s.ttftMs).toBe(200);
    expect(s.latencyMs).toBe(400);
    expect(s.tokensPerSec).toBe(50);
    expect(s.meanOutputTokens).toBe(100);
    expect(s.lastSampleAt).toBe(9_000);
    expect(s.successRate).toBeCloseTo(8.5 / 11, 6); // 30:10 counted as 7.5:2.5 (10 in all: it has none)
    expect(s.local()).toBeUndefined(); // nothing of its own to share
  });

  it("the others' success counts weigh at most as much as its own (10 when it has none)", () => {
    const clock = manualClock(10_000);
    const s = new UpstreamStats(clock.now);
    for (let i = 0; i < 6; i++) s.recordSuccess(ok(100));
    s.setRemote({ ...remote, okWeight: 0, failWeight: 1e12 });
    expect(s.successRate).toBeCloseTo(7 / 17, 6); // 6 own successes against 10 failures' worth
    const fresh = new UpstreamStats(clock.now);
    fresh.setRemote({ ...remote, okWeight: 90, failWeight: 10 });
    expect(fresh.successRate).toBeCloseTo(10 / 11, 6);
  });

  it('blends with its own, each side counting for at most 10 samples, and is dropped on demand', () => {
    const clock = manualClock(10_000);
    const s = new UpstreamStats(clock.now);
    for (let i = 0; i < 20; i++) s.recordSuccess(ok(100, 200));
    const own = s.local()!;
    expect(own).toMatchObject({ samples: 20, ttftMs: 100, latencyMs: 200, okWeight: 20, failWeight: 0 });
    s.setRemote(remote);
    expect(s.ttftMs).toBe(150);
    expect(s.latencyMs).toBe(300);
    expect(s.samples).toBe(60);
    expect(s.snapshot()).toMatchObject({ samples: 60, ttftMs: 150 });
    expect(s.local()).toEqual(own); // what it shares stays its own
    s.setRemote(undefined);
    expect(s.ttftMs).toBe(100);
    expect(s.samples).toBe(20);
  });
});
