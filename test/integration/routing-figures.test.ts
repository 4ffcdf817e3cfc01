/**
 * The routing mathematics as a production user meets them (SPEC §2 Strategies, README Concepts):
 *
 * - Scores stay proportional when one candidate is free. A price of 0 (a local vLLM/Ollama, or a model
 *   whose price is left at its 0 default) must not flatten every paid candidate to the same score: `cost`
 *   still ranks the cheaper paid upstream ahead of the dearer one (the failover chain after the free one),
 *   and `hybrid`'s cost factor still tells them apart.
 * - The peak-EWMA latency estimate moves towards each new sample: a sample below the current (relaxed)
 *   estimate never raises it, and one above it is taken at once, not overshot.
 * - `latency`'s estimate grows with the expected output for every upstream, also one measured on
 *   non-streamed answers only (no tokens/s of its own yet).
 * - A reason's figures are the figures used: a latency reason's tok/s reproduces its estimate (no
 *   "/ 0 tok/s" for a slow generator), and a hybrid reason states the score its weighted sum gives.
 * - Hybrid weights that are all 0 leave nothing to weigh: the config says so at load, with its path.
 * - Client aborts are not upstream failures: the hybrid reliability of an upstream whose clients hung up
 *   stays at 100 %.
 *
 * Latency is driven by `startGateway({ now })`: a mock moves the manual clock before it answers, so the
 * gateway measures exactly those milliseconds whatever the machine's load.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chatCompletion, chunkFrame, gate, sendJson } from '../helpers/mock-upstream.js';
import { manualClock, mulberry32 } from '../helpers/random.js';
import type { Candidate } from '../helpers/router-api.js';
import {
  BODY,
  HI,
  holdOpen,
  routeOver,
  statsOf,
  statusOf,
  strategyHarness,
  streamThrough,
  usageFrame,
} from '../helpers/strategy-harness.js';
import { retryUntil } from '../helpers/wait.js';

onlyLoopbackFetch();
const { up, chatUp, timedUp, gateway, call, serve, warm, explain } = strategyHarness(closeAfterEach(), {
  timeoutMs: 10_000,
});

function cand(list: Candidate[], id: string): Candidate {
  const c = list.find((x) => x.upstream === id);
  if (!c) throw new Error(`no candidate ${id} in ${JSON.stringify(list)}`);
  return c;
}

const CHEAP = { input_per_mtok: 0.15, output_per_mtok: 0.6 };
const DEAR = { input_per_mtok: 2.5, output_per_mtok: 10 };

/* ------------------------------------------------------------------------------------------------ */

describe('a free upstream among paid ones: scores stay proportional', () => {
  it('cost: after a free upstream, the cheaper paid one ranks ahead of the dearer (explain and failover)', async () => {
    // A local model (no price: 0 / 0) that is down, and two paid cloud models, 16x apart.
    const local = await chatUp({ fail: () => true });
    const cheap = await chatUp();
    const dear = await chatUp();
    const gw = await gateway(
      // dear before cheap in config order: array order must not decide.
      routeOver(
        'cost',
        { local, dear, cheap },
        { routing: { max_attempts: 2 }, circuit_breaker: { failure_threshold: 1000 } },
        { models: { dear: { price: DEAR }, cheap: { price: CHEAP } } },
      ),
    );
    const body = { model: 'r', messages: HI, max_tokens: 100 };
    const e = await explain(gw, body);
    expect(e.candidates[0]!.upstream).toBe('local/m');
    const c = cand(e.candidates, 'cheap/m');
    const d = cand(e.candidates, 'dear/m');
    // $0.0000615 vs $0.00102: 16x dearer must score well below, not tie (tie_epsilon 0.02).
    expect(c.score - d.score, `${c.score} ${c.reason} | ${d.score} ${d.reason}`).toBeGreaterThan(0.02);
    expect(e.candidates.map((x) => x.upstream)).toEqual(['local/m', 'cheap/m', 'dear/m']);
    // The free one fails every time: each request fails over to the cheaper paid one, never the dearer.
    const served = (await serve(gw, 6, body)).order;
    expect(served).toEqual(Array(6).fill('cheap'));
    expect(dear.calls).toBe(0);
  });

  it('hybrid: the cost factor still tells a cheap paid upstream from a dear one when a free one is listed', async () => {
    const clock = manualClock(1_000_000);
    const local = await timedUp(clock, () => 300);
    const cheap = await timedUp(clock, () => 50);
    const dear = await timedUp(clock, () => 50);
    const gw = await gateway(
      routeOver(
        'hybrid',
        { local, dear, cheap },
        {},
        { models: { dear: { price: DEAR }, cheap: { price: CHEAP } } },
      ),
      { now: clock.now, random: mulberry32(3) },
    );
    const body = { model: 'r', messages: HI, max_tokens: 100 };
    await warm(gw, ['local', 'dear', 'cheap'], 3, body, { checkPin: false });
    const e = await explain(gw, body);
    const c = cand(e.candidates, 'cheap/m');
    const d = cand(e.candidates, 'dear/m');
    const costFactor = (reason: string) => Number(/^hybrid [\d.]+ = cost \S+ -> ([\d.]+)/.exec(reason)?.[1]);
    // Same latency, same reliability: 16x the price must cost the dear one on the cost factor.
    expect(costFactor(c.reason), c.reason).toBeGreaterThan(costFactor(d.reason));
    expect(c.score - d.score, `${c.score} ${c.reason} | ${d.score} ${d.reason}`).toBeGreaterThan(0.02);
    const order = e.candidates.map((x) => x.upstream);
    expect(order.indexOf('cheap/m')).toBeLessThan(order.indexOf('dear/m'));
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('peak-EWMA: each sample moves the estimate towards it', () => {
  /**
   * One upstream per provider, measured 5 x 20 ms then one 2000 ms outlier; 5 s later (half the 10 s decay)
   * its estimate has relaxed. Returns the gateway, the clock, and a setter for the next answer's latency.
   */
  async function relaxedAfterOutlier() {
    const clock = manualClock(1_000_000);
    let nextMs = 20;
    const u = await timedUp(clock, () => nextMs);
    const gw = await gateway(routeOver('latency', { p: u }), { now: clock.now, random: mulberry32(5) });
    const body = BODY;
    for (let i = 0; i < 5; i++) expect((await call(gw, body)).status).toBe(200);
    nextMs = 2000;
    expect((await call(gw, body)).status).toBe(200);
    expect((await statsOf(gw, 'p/m', 'throw')).ttftMs).toBeCloseTo(2000, 0);
    clock.advance(5000);
    const relaxed = (await statsOf(gw, 'p/m', 'throw')).ttftMs as number;
    // 20 + 1980 x e^-0.5 ≈ 1221 ms.
    expect(relaxed).toBeGreaterThan(1000);
    expect(relaxed).toBeLessThan(1500);
    return {
      gw,
      relaxed,
      answer: async (ms: number) => {
        nextMs = ms;
        expect((await call(gw, body)).status).toBe(200);
        return (await statsOf(gw, 'p/m', 'throw')).ttftMs as number;
      },
    };
  }

  it('a sample below the relaxed estimate never raises it', async () => {
    const { relaxed, answer } = await relaxedAfterOutlier();
    const after = await answer(500);
    expect(after, `estimate ${relaxed} ms, then a 500 ms answer: ${after} ms`).toBeLessThanOrEqual(relaxed);
    expect(after).toBeGreaterThanOrEqual(500);
  });

  it('a sample above the relaxed estimate is taken at once, not overshot', async () => {
    const { relaxed, answer } = await relaxedAfterOutlier();
    const after = await answer(1300);
    expect(relaxed).toBeLessThan(1300);
    // SPEC §2: the estimate reacts at once to a slow outlier — it becomes that sample, not more.
    expect(after, `estimate ${relaxed} ms, then a 1300 ms answer: ${after} ms`).toBeCloseTo(1300, -1);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('estimates and reasons state the figures the decision used', () => {
  it('latency: a slow generator (under 0.5 tok/s) is quoted with its real pace, and the figures add up', async () => {
    const clock = manualClock(1_000_000);
    const g = gate(4000);
    const u = await up(async (body, res) => {
      if (body.stream !== true) return sendJson(res, 200, chatCompletion(body));
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      clock.advance(100);
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
      res.write(chunkFrame(body.model, { content: 'a' }));
      await g.wait;
      res.write(chunkFrame(body.model, { content: 'b' }));
      res.write(chunkFrame(body.model, { content: 'c' }, 'stop'));
      res.write(usageFrame(3, String(body.model)));
      res.end('data: [DONE]\n\n');
    });
    const gw = await gateway(routeOver('latency', { p: u }, { routing: { min_samples: 1 } }), {
      now: clock.now,
      random: mulberry32(7),
    });
    // One streamed answer: 100 ms to the first token, then 3 tokens over 10 s (0.3 tok/s).
    const held = {
      open: () => {
        clock.advance(10_000);
        g.open();
      },
    };
    await streamThrough(gw, { ...BODY, stream: true }, {}, held, 5000);
    const tps = await retryUntil(
      async () => {
        const s = await statsOf(gw, 'p/m', 'throw');
        expect(s.tokensPerSec).not.toBeNull();
        return s.tokensPerSec as number;
      },
      3000,
      10,
    );
    expect(tps).toBeGreaterThan(0.2);
    expect(tps).toBeLessThan(0.5);
    const e = await explain(gw, { model: 'r', messages: HI, max_tokens: 10 });
    const reason = e.candidates[0]!.reason;
    const m = /latency ([\d,]+) ms est\. \(ttft ([\d,]+) ms \+ ([\d,]+) tok \/ ([\d.,]+) tok\/s\)/.exec(
      reason,
    );
    expect(m, reason).not.toBeNull();
    const n = (s: string) => Number(s.replace(/,/g, ''));
    const [est, ttft, out, quotedTps] = [n(m![1]!), n(m![2]!), n(m![3]!), n(m![4]!)];
    expect(quotedTps, reason).toBeGreaterThan(0);
    // The quoted figures reproduce the estimate (within the rounding of what is quoted).
    expect(Math.abs(ttft + (out / quotedTps) * 1000 - est) / est, reason).toBeLessThan(0.1);
  });

  it('latency: the estimate of an upstream measured on non-streamed answers grows with the expected output', async () => {
    const clock = manualClock(1_000_000);
    // Non-streamed answers only (no tokens/s of its own): 10 tokens in 200 ms.
    const u = await timedUp(clock, () => 200, { tokens: 10 });
    const gw = await gateway(routeOver('latency', { p: u }, { routing: { min_samples: 1 } }), {
      now: clock.now,
      random: mulberry32(13),
    });
    await warm(gw, ['p'], 3, BODY, { checkPin: false });
    const est = async (maxTokens: number) => {
      const reason = (await explain(gw, { model: 'r', messages: HI, max_tokens: maxTokens })).candidates[0]!
        .reason;
      const m = /^latency ([\d,]+) ms est\./.exec(reason);
      expect(m, reason).not.toBeNull();
      return { ms: Number(m![1]!.replace(/,/g, '')), reason };
    };
    const short = await est(10);
    const long = await est(2000);
    // SPEC §2: expected output tokens at the upstream's pace; 200x the output is not the same 200 ms.
    expect(long.ms, `${short.reason} | ${long.reason}`).toBeGreaterThan(2 * short.ms);
  });

  it("hybrid: a reason states the candidate's score, and how its weighted sum gave it", async () => {
    const clock = manualClock(1_000_000);
    // Cheap but 5x slower vs 10x dearer and fast: weighted sums 0.68 and 0.64 (default weights).
    const cheap = await timedUp(clock, () => 100);
    const dear = await timedUp(clock, () => 20);
    const gw = await gateway(
      routeOver(
        'hybrid',
        { cheap, dear },
        {},
        {
          models: {
            cheap: { price: { input_per_mtok: 1, output_per_mtok: 1 } },
            dear: { price: { input_per_mtok: 10, output_per_mtok: 10 } },
          },
        },
      ),
      { now: clock.now, random: mulberry32(9) },
    );
    const body = { model: 'r', messages: HI, max_tokens: 100 };
    await warm(gw, ['cheap', 'dear'], 3, body, { checkPin: false });
    const e = await explain(gw, body);
    expect(e.candidates[0]!.upstream).toBe('cheap/m');
    expect(e.candidates[0]!.score).toBe(1);
    for (const c of e.candidates) {
      // The weighted sum, then the score it gives: "hybrid 0.64 = ...; score 0.94 = 0.64 / best 0.68".
      const m = /^hybrid ([\d.]+) = .*; score ([\d.]+) = ([\d.]+) \/ best ([\d.]+)$/.exec(c.reason);
      expect(m, c.reason).not.toBeNull();
      const [sum, stated, again, best] = m!.slice(1).map(Number) as [number, number, number, number];
      expect(stated, `score ${c.score}, reason: ${c.reason}`).toBeCloseTo(c.score, 2);
      expect(again).toBe(sum);
      expect(stated).toBeCloseTo(sum / best, 2);
    }
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('hybrid weights and reliability', () => {
  it('hybrid weights that are all 0 are refused at load, naming the path', () => {
    const nowhere = { url: 'http://127.0.0.1:9' };
    const cfg = routeOver(
      { hybrid: { cost_weight: 0, latency_weight: 0, reliability_weight: 0 } },
      { a: nowhere, b: nowhere },
    );
    expect(() => parseConfigText(JSON.stringify(cfg), {})).toThrow(/routes\.r\.strategy/);
  });

  it('client aborts are no upstream failures: reliability stays 100% and the breaker stays closed', async () => {
    const a = await chatUp();
    // b answers only once its client has gone (bounded): every request to it is abandoned by its client.
    const b = await up((body, res) =>
      holdOpen(res, 3000, () => {
        if (!res.destroyed) sendJson(res, 200, chatCompletion(body));
      }),
    );
    const price = { input_per_mtok: 1, output_per_mtok: 1 };
    const gw = await gateway(
      routeOver('hybrid', { a, b }, { circuit_breaker: { failure_threshold: 2 } }, { model: { price } }),
      { random: mulberry32(11) },
    );
    for (let i = 0; i < 4; i++) {
      const ac = new AbortController();
      const pending = request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-router-provider': 'b' },
        body: JSON.stringify(BODY),
        signal: ac.signal,
      }).then(
        () => 'answered',
        () => 'aborted',
      );
      await retryUntil(() => expect(b.calls).toBe(i + 1), 3000, 5);
      ac.abort();
      expect(await pending).toBe('aborted');
    }
    const s = await retryUntil(
      async () => {
        const st = await statsOf(gw, 'b/m', 'throw');
        expect((await statusOf(gw)).get('b/m')!.in_flight).toBe(0);
        return st;
      },
      3000,
      10,
    );
    expect(s.failures, JSON.stringify(s)).toBe(0);
    expect(s.successRate).toBe(1);
    expect((await statusOf(gw)).get('b/m')!.breaker.state).toBe('closed');
    const e = await explain(gw, BODY);
    expect(cand(e.candidates, 'b/m').reason).toMatch(/reliability 100\.0%/);
  });
});
