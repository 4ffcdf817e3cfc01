/**
 * Audit of the routing strategies, live: real traffic through a real gateway to mock upstreams on loopback
 * whose latency (through the injected clock), token counts, failures and in-flight requests the test
 * controls. Each test checks the choices the gateway makes (x-router-* headers, which mock was called) and
 * how it explains them (/router/explain, the request log line, routing_decisions_total) against SPEC §2
 * (Strategies, Failover, Circuit breaker), §4, §5 and the README.
 *
 * Latency is driven by `startGateway({ now })`: a mock advances the manual clock before it answers, so the
 * gateway measures exactly that many milliseconds whatever the machine's load; nothing here asserts on
 * wall-clock time. Randomness (weighted, exploration) is a seeded PRNG where a count depends on it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { parseConfigText } from '../../src/config/load.js';
import type { TestGateway } from '../helpers/gateway.js';
import type { Candidate, RouterRes } from '../helpers/router-api.js';
import { retryUntil } from '../helpers/wait.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chatCompletion, chunkFrame, fail500, gate, sendJson } from '../helpers/mock-upstream.js';
import { scrape, select, value } from '../helpers/prom-text.js';
import { manualClock, mulberry32 } from '../helpers/random.js';
import {
  BODY,
  HI,
  prov,
  routeOver,
  statusOf,
  strategyHarness,
  streamThrough,
  type ChatAnswerOptions,
  type FirstContent,
  type GatewayOptions,
  type Json,
  type RouteOptions,
  type Up,
} from '../helpers/strategy-harness.js';

onlyLoopbackFetch();
const { up, chatUp, timedUp, pacedStreamUp, gateway, call, serve, warm, explain } = strategyHarness(
  closeAfterEach(),
  { timeoutMs: 15_000 },
);

const STRATEGIES = [
  'cost',
  'latency',
  'hybrid',
  'round-robin',
  'priority',
  'weighted',
  'least-busy',
] as const;

/* ------------------------------------------------------------------------------------------------ */
/* helpers                                                                                           */

function requestLine(gw: TestGateway, reqId: string): Json | undefined {
  return gw.logs.find((l) => l.msg === 'request' && l.reqId === reqId);
}

const until = <T>(check: () => T | Promise<T>, ms = 5000): Promise<T> => retryUntil(check, ms, 5);

function checkScores(c: Candidate[], epsilon = 0.02): void {
  expect(c.length).toBeGreaterThan(1);
  for (const x of c) {
    expect(x.score, x.reason).toBeGreaterThanOrEqual(0);
    expect(x.score, x.reason).toBeLessThanOrEqual(1);
    expect(typeof x.reason).toBe('string');
    expect(x.reason.length).toBeGreaterThan(0);
  }
  // 1 = best among this request's candidates. Ranked best first, but a tie (within tie_epsilon) may be
  // rotated ahead of the 1.
  expect(Math.max(...c.map((x) => x.score))).toBe(1);
  for (let i = 1; i < c.length; i++) expect(c[i]!.score).toBeLessThanOrEqual(c[i - 1]!.score + epsilon);
}

/** A mock's answer time in ms of clock, or [ms, fail] for one that answers a 500 while `fail()` holds. */
type Timing = number | [number, () => boolean];

/**
 * A gateway on a fresh manual clock and random seed `seed`: route `r` using `strategy` over mocks that answer
 * after their `timings` (by provider name, in target order), with `rest` config keys and `route` options.
 */
async function timedRoute<K extends string>(
  strategy: string,
  timings: Record<K, Timing>,
  rest: Json,
  seed: number,
  route: RouteOptions = {},
) {
  const clock = manualClock(1_000_000);
  const ups = {} as Record<K, Up>;
  for (const name of Object.keys(timings) as K[]) {
    const t: Timing = timings[name];
    const [ms, fail] = typeof t === 'number' ? [t, undefined] : t;
    ups[name] = await timedUp(clock, () => ms, { fail });
  }
  const gw = await gateway(routeOver(strategy, ups, rest, route), {
    now: clock.now,
    random: mulberry32(seed),
  });
  return { clock, gw, ups };
}

/**
 * A mock holding each stream open (a role chunk when `o.role`, then content "held") until `g` opens, then
 * ending it (when `o.endIfOpen`, only if still open); JSON answered at once; a 500 while `o.fail()` holds.
 */
function holder(
  g: { wait: Promise<unknown> },
  o: { role: boolean; endIfOpen?: boolean; fail?: () => boolean },
): Promise<Up> {
  return up(async (body, res) => {
    if (o.fail?.() === true) return fail500(res);
    if (body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (o.role) res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
      res.write(chunkFrame(body.model, { content: 'held' }));
      await g.wait;
      if (o.endIfOpen !== true || !res.destroyed)
        res.end(`${chunkFrame(body.model, {}, 'stop')}data: [DONE]\n\n`);
      return;
    }
    sendJson(res, 200, chatCompletion(body));
  });
}

/**
 * Route `r` using `strategy` over mocks by name (true: it answers only 500s, false: it answers), with a
 * breaker that opens for 60 s at the first failure; `rest` config keys, `route` options, gateway `gwOpts`.
 */
async function tripOnFirstFailure<K extends string>(
  strategy: string,
  failing: Record<K, boolean>,
  rest: Json = {},
  route: RouteOptions = {},
  gwOpts: GatewayOptions = {},
) {
  const ups = {} as Record<K, Up>;
  for (const name of Object.keys(failing) as K[])
    ups[name] = await chatUp(failing[name] ? { fail: () => true } : {});
  const breaker = { circuit_breaker: { failure_threshold: 1, open_ms: 60_000 } };
  const gw = await gateway(routeOver(strategy, ups, { ...rest, ...breaker }, route), gwOpts);
  return { gw, ...ups };
}

/** Starts a request without waiting for it (its answer, or the error, resolves the promise). */
function fire(gw: { url: string }, body: Json, headers: Record<string, string> = {}): Promise<RouterRes> {
  return call(gw, body, headers);
}

/* ------------------------------------------------------------------------------------------------ */

describe('latency: live statistics, peak-EWMA, load scaling, bounded exploration', () => {
  it('after measuring, the faster upstream gets (nearly) all sequential traffic', async () => {
    const { gw } = await timedRoute('latency', { slow: 100, fast: 20 }, {}, 1);
    await warm(gw, ['slow', 'fast'], 4);
    const { counts } = await serve(gw, 40);
    // Both measured (>= min_samples): no exploration owed; sequential requests see load 1 on both.
    expect(counts.fast ?? 0).toBe(40);
    const e = await explain(gw);
    checkScores(e.candidates);
    expect(e.candidates[0]!.upstream).toBe('fast/m');
    // SPEC: score 1 = best, whatever the raw unit; a 5x slower upstream scores well below it.
    expect(e.candidates[1]!.score).toBeLessThan(0.5);
    // The reason carries the raw figure (ms).
    expect(e.candidates[0]!.reason).toMatch(/\b20(\.0+)? ?ms\b/);
    expect(e.candidates[1]!.reason).toMatch(/\b100(\.0+)? ?ms\b/);
  });

  it('peak-EWMA: one slow outlier moves traffic away at once; it comes back after the outlier relaxes', async () => {
    const clock = manualClock(1_000_000);
    let fastMs = 20;
    const fast = await timedUp(clock, () => fastMs);
    const slow = await timedUp(clock, () => 100);
    const gw = await gateway(routeOver('latency', { fast, slow }), { now: clock.now, random: mulberry32(2) });
    await warm(gw, ['fast', 'slow'], 5);
    expect((await call(gw, BODY)).headers['x-router-provider']).toBe('fast');
    // One outlier: 600 ms where it answered in 20.
    fastMs = 600;
    expect((await call(gw, BODY)).headers['x-router-provider']).toBe('fast');
    fastMs = 20;
    // SPEC: "reacting at once to a slow outlier (peak-EWMA)": the very next request goes elsewhere.
    const next = await serve(gw, 3);
    expect(next.order).toEqual(['slow', 'slow', 'slow']);
    // README: the peak "relaxes over ~10 s when no sample comes, so one slow answer does not bench an
    // upstream". Traffic goes on (to slow) one request per clock second; within 60 s fast must be back.
    // (Judgement: 60 s is 6x the README's ~10 s.)
    let backAt = -1;
    for (let s = 0; s < 60 && backAt < 0; s++) {
      clock.advance(1000);
      const r = await call(gw, BODY);
      if (r.headers['x-router-provider'] === 'fast') backAt = s;
    }
    expect(backAt, 'fast never came back after one outlier').toBeGreaterThanOrEqual(0);
    // Once back and fast again, it keeps the traffic.
    const after = await serve(gw, 10);
    expect(after.counts.fast ?? 0).toBeGreaterThanOrEqual(9);
  });

  it('load scaling: with requests in flight on the fast upstream, the idle slower one is picked; neither is flooded', async () => {
    const clock = manualClock(1_000_000);
    let hold = false;
    const releases: Array<() => void> = [];
    const mk = (ms: number) =>
      up((body, res) => {
        if (!hold) {
          clock.advance(ms);
          return sendJson(res, 200, chatCompletion(body));
        }
        releases.push(() => sendJson(res, 200, chatCompletion(body)));
      });
    const fast = await mk(20);
    const slow = await mk(60);
    const gw = await gateway(routeOver('latency', { fast, slow }), { now: clock.now, random: mulberry32(3) });
    await warm(gw, ['fast', 'slow'], 5);
    hold = true;
    // Twelve requests, each started once the previous one is in flight at its upstream.
    const pending: Array<Promise<RouterRes>> = [];
    for (let i = 0; i < 12; i++) {
      const before = fast.calls + slow.calls;
      pending.push(fire(gw, BODY));
      await until(() => expect(fast.calls + slow.calls).toBe(before + 1));
    }
    const heldFast = fast.calls - 5;
    const heldSlow = slow.calls - 5;
    // 20 ms x (n + 1) against 60 ms x (m + 1): about three on fast for each on slow. The fast one is not
    // flooded (slow gets a real share) and is still preferred.
    expect(heldSlow, `fast ${heldFast} / slow ${heldSlow}`).toBeGreaterThanOrEqual(2);
    expect(heldFast, `fast ${heldFast} / slow ${heldSlow}`).toBeGreaterThan(heldSlow);
    expect(heldFast, `fast ${heldFast} / slow ${heldSlow}`).toBeLessThanOrEqual(10);
    // The reason shows the load factor (in flight + 1).
    const e = await explain(gw);
    const fastReason = e.candidates.find((c) => c.upstream === 'fast/m')!.reason;
    expect(fastReason).toContain(`load ${heldFast + 1}`);
    for (const f of releases.splice(0)) f();
    for (const r of await Promise.all(pending)) expect(r.status).toBe(200);
  });

  it('load scaling with pinned streams held open on the fast upstream: the next request goes to the idle one', async () => {
    const clock = manualClock(1_000_000);
    const g = gate(8000);
    const fast = await up(async (body, res) => {
      if (body.stream === true) {
        await g.wait;
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          `${chunkFrame(body.model, { content: 'x' })}${chunkFrame(body.model, {}, 'stop')}data: [DONE]\n\n`,
        );
        return;
      }
      clock.advance(20);
      sendJson(res, 200, chatCompletion(body));
    });
    const slow = await timedUp(clock, () => 50);
    const gw = await gateway(routeOver('latency', { fast, slow }), { now: clock.now, random: mulberry32(4) });
    await warm(gw, ['fast', 'slow'], 4);
    expect((await call(gw, BODY)).headers['x-router-provider']).toBe('fast');
    const held = [0, 1, 2].map(() =>
      fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'fast' }),
    );
    await until(() => expect(fast.calls).toBe(4 + 1 + 3));
    // 20 ms x 4 = 80 > 50 ms x 1.
    const r = await call(gw, BODY);
    expect(r.headers['x-router-provider']).toBe('slow');
    g.open();
    for (const h of await Promise.all(held)) expect(h.status).toBe(200);
    // Load gone: the factor is back to 1. (Not the choice: the held streams' TTFT spanned the clock the
    // slow answer moved, so fast's own statistics now say ~50 ms.)
    await until(async () =>
      expect((await explain(gw)).candidates.find((c) => c.upstream === 'fast/m')!.reason).toMatch(/load 1\b/),
    );
  });

  it('throughput: expected output tokens / observed tokens/s counts; a long answer goes to the high-throughput upstream', async () => {
    const clock = manualClock(1_000_000);
    // Streams: the mock sends its first content after `ttft` ms, then (once the client saw it) the rest of
    // `tokens` tokens after `genMs` ms more. The clock moves only while the gateway waits on the mock.
    const held: FirstContent = {};
    // quick: TTFT 10 ms, then 100 tokens in 1000 ms (100 tok/s). bulk: TTFT 60 ms, 100 tokens in 10 ms.
    const quick = await pacedStreamUp(clock, () => 10, 1000, 100, held);
    const bulk = await pacedStreamUp(clock, () => 60, 10, 100, held);
    const gw = await gateway(routeOver('latency', { quick, bulk }), {
      now: clock.now,
      random: mulberry32(5),
    });
    const streamCall = (headers: Record<string, string>, maxTokens: number): Promise<string> =>
      streamThrough(
        gw,
        { ...BODY, stream: true, max_tokens: maxTokens, stream_options: { include_usage: true } },
        headers,
        held,
      );
    for (const p of ['quick', 'bulk'])
      for (let i = 0; i < 4; i++) await streamCall({ 'x-router-provider': p }, 100);
    const st = await statusOf(gw);
    expect(st.get('quick/m')!.stats.tokensPerSec, JSON.stringify(st.get('quick/m')!.stats)).not.toBeNull();
    // Short answer (1 token): TTFT dominates, quick (10 ms) wins. Long answer (2000 tokens): quick needs
    // ~20 s at 100 tok/s, bulk ~0.26 s: bulk wins.
    const short = await explain(gw, { model: 'r', messages: HI, stream: true, max_tokens: 1 });
    expect(short.candidates[0]!.upstream, JSON.stringify(short.candidates)).toBe('quick/m');
    const long = await explain(gw, { model: 'r', messages: HI, stream: true, max_tokens: 2000 });
    expect(long.candidates[0]!.upstream, JSON.stringify(long.candidates)).toBe('bulk/m');
    checkScores(long.candidates);
    // The reason carries the tokens/s figure.
    expect(long.candidates.find((c) => c.upstream === 'quick/m')!.reason).toMatch(/tok\/s/);
    // And the real requests follow.
    expect(await streamCall({}, 2000)).toBe('bulk');
    expect(await streamCall({}, 1)).toBe('quick');
  });

  it('exploration: an unmeasured upstream gets a bounded share until measured — not flooded, not starved', async () => {
    const { gw } = await timedRoute(
      'latency',
      { a: 20, b: 30, fresh: 80 },
      { routing: { exploration_share: 0.1, min_samples: 3 } },
      6,
    );
    await warm(gw, ['a', 'b'], 5);
    // `fresh` stands for an upstream a reload added: no samples while the others are measured.
    const first20 = await serve(gw, 20);
    // Not flooded: ~10% of 20 decisions (a bound of 6 is generous).
    expect(first20.counts.fresh ?? 0).toBeLessThanOrEqual(6);
    const more = await serve(gw, 100);
    const freshTotal = (first20.counts.fresh ?? 0) + (more.counts.fresh ?? 0);
    // Not starved: it reaches min_samples (3) within 120 decisions at a 10% share.
    expect(freshTotal).toBeGreaterThanOrEqual(3);
    // Bounded: once measured (80 ms, the slowest) it stops getting traffic; 10% of 120 + slack.
    expect(freshTotal).toBeLessThanOrEqual(20);
    expect((await statusOf(gw)).get('fresh/m')!.stats.samples).toBeGreaterThanOrEqual(3);
    const last = await serve(gw, 20);
    expect(last.counts.fresh ?? 0).toBe(0);
  });

  it('exploration_share 0: an unmeasured upstream gets no latency traffic once another is measured (README)', async () => {
    const { gw } = await timedRoute('latency', { a: 50, fresh: 5 }, { routing: { exploration_share: 0 } }, 7);
    await warm(gw, ['a'], 3);
    const { counts } = await serve(gw, 30);
    expect(counts).toEqual({ a: 30 });
  });

  it('min_samples is honoured: an upstream below it is still explored at the share, above it ranked by its figures', async () => {
    const { gw } = await timedRoute(
      'latency',
      { a: 50, b: 10 },
      { routing: { min_samples: 8, exploration_share: 0.1 } },
      51,
    );
    await warm(gw, ['a'], 8);
    await warm(gw, ['b'], 5);
    const e = await explain(gw);
    expect(e.candidates.find((c) => c.upstream === 'b/m')!.reason).toMatch(/5 samples/);
    // b, though faster, is unmeasured (5 < 8): a bounded share only.
    const first = await serve(gw, 10);
    expect(first.counts.b ?? 0).toBeLessThanOrEqual(4);
    // Once it has 8 samples it wins on its 10 ms.
    await warm(gw, ['b'], 3);
    expect((await serve(gw, 10)).counts).toEqual({ b: 10 });
  });

  it('failover follows the latency ranking: the trail lists the failed upstreams fastest first', async () => {
    let broken = false;
    const { gw } = await timedRoute(
      'latency',
      { u30: 30, u20: [20, () => broken], u10: [10, () => broken] },
      { routing: { max_attempts: 3 }, circuit_breaker: { failure_threshold: 100 } },
      8,
    );
    await warm(gw, ['u30', 'u20', 'u10'], 4);
    broken = true;
    const r = await call(gw, BODY);
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('u30');
    expect(r.headers['x-router-attempts']).toBe('3');
    expect(r.headers['x-router-trail']).toBe('u10/m=http_500,u20/m=http_500');
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('cost: prices per million, expected output tokens', () => {
  // Prices where the winner depends on the expected output: "in" is cheap on input, "out" cheap on output.
  const PRICES = {
    in: { input_per_mtok: 1, output_per_mtok: 20 },
    out: { input_per_mtok: 20, output_per_mtok: 1 },
  };
  // ~600 prompt tokens.
  const LONG_PROMPT = [{ role: 'user', content: 'word '.repeat(600) }];
  /** "in" and "out" at PRICES behind a cost route, each answering `tokens` output tokens. */
  async function inAndOut(tokens: ChatAnswerOptions['tokens']) {
    const inUp = await chatUp({ tokens });
    const outUp = await chatUp({ tokens });
    return gateway(
      routeOver(
        'cost',
        { in: inUp, out: outUp },
        {},
        { models: { in: { price: PRICES.in }, out: { price: PRICES.out } } },
      ),
    );
  }

  it('the cheaper upstream wins for the expected output: max_tokens and max_completion_tokens both count', async () => {
    const gw = await inAndOut(5);
    const pt = (await explain(gw, { model: 'r', messages: LONG_PROMPT })).features.promptTokens as number;
    expect(pt).toBeGreaterThan(300);
    for (const [field, n, want] of [
      ['max_tokens', 10, 'in'],
      ['max_tokens', 5000, 'out'],
      ['max_completion_tokens', 10, 'in'],
      ['max_completion_tokens', 5000, 'out'],
    ] as const) {
      const body = { model: 'r', messages: LONG_PROMPT, [field]: n };
      const e = await explain(gw, body);
      checkScores(e.candidates);
      expect(e.candidates[0]!.upstream, `${field} ${n}`).toBe(`${want}/m`);
      for (const c of e.candidates) {
        const p = PRICES[c.upstream.split('/')[0] as 'in' | 'out'];
        const dollars = Number(/\$([\d.]+)/.exec(c.reason)?.[1]);
        expect(dollars, c.reason).toBeCloseTo((pt * p.input_per_mtok + n * p.output_per_mtok) / 1e6, 6);
      }
      const r = await call(gw, body);
      expect(r.headers['x-router-provider'], `${field} ${n}`).toBe(want);
    }
  });

  it('without max_tokens, the expected output follows the observed answers: longer answers move the choice', async () => {
    let tokens = 10;
    const gw = await inAndOut(() => tokens);
    const body = { model: 'r', messages: LONG_PROMPT };
    const e0 = await explain(gw, body);
    const pt = e0.features.promptTokens as number;
    const dollarsOf = (e: { candidates: Candidate[] }, up: string): number =>
      Number(/\$([\d.]+)/.exec(e.candidates.find((c) => c.upstream === up)!.reason)?.[1]);
    // Nothing observed yet: README's 256-token default.
    expect(dollarsOf(e0, 'in/m')).toBeCloseTo((pt * 1 + 256 * 20) / 1e6, 6);
    // Short answers (10 tokens): the input-cheap upstream wins.
    const short = await serve(gw, 6, body);
    expect(short.counts.in ?? 0).toBeGreaterThanOrEqual(5);
    const e1 = await explain(gw, body);
    expect(e1.candidates[0]!.upstream).toBe('in/m');
    // SPEC: "else the upstream's observed mean" (README: the mean of the candidates' observed means): the
    // reason's dollar figure is priced on ~10 output tokens now.
    expect(dollarsOf(e1, 'in/m')).toBeCloseTo((pt * 1 + 10 * 20) / 1e6, 6);
    // The answers get long (3000 tokens): the observed mean rises and the output-cheap upstream takes over.
    tokens = 3000;
    let flippedAfter = -1;
    for (let i = 0; i < 60 && flippedAfter < 0; i++) {
      const r = await call(gw, body);
      expect(r.status).toBe(200);
      if ((await explain(gw, body)).candidates[0]!.upstream === 'out/m') flippedAfter = i;
    }
    expect(flippedAfter, 'the choice never followed the longer answers').toBeGreaterThanOrEqual(0);
    const e2 = await explain(gw, body);
    expect(dollarsOf(e2, 'in/m')).toBeGreaterThan(dollarsOf(e1, 'in/m'));
    const mean = ((await statusOf(gw)).get('in/m')!.stats.meanOutputTokens as number) ?? 0;
    expect(mean).toBeGreaterThan(10);
    const after = await serve(gw, 5, body);
    expect(after.counts.out ?? 0).toBe(5);
  });

  it('identical prices tie: traffic rotates, not always to the first target', async () => {
    const a = await chatUp();
    const b = await chatUp();
    const price = { input_per_mtok: 1, output_per_mtok: 2 };
    const gw = await gateway(routeOver('cost', { a, b }, {}, { model: { price } }));
    const { counts } = await serve(gw, 20, { model: 'r', messages: HI, max_tokens: 50 });
    expect(counts.a).toBe(10);
    expect(counts.b).toBe(10);
  });

  it('tie_epsilon: 1% dearer ties (rotation) at 0.02; 10% dearer never wins; epsilon 0 breaks the 1% tie', async () => {
    const [a, b, c] = [await chatUp(), await chatUp(), await chatUp()];
    const providers = [
      prov('a', a.url, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
      prov('b', b.url, { price: { input_per_mtok: 1.01, output_per_mtok: 1.01 } }),
      prov('c', c.url, { price: { input_per_mtok: 1.1, output_per_mtok: 1.1 } }),
    ];
    const routes = { r: { strategy: 'cost', targets: ['c/m', 'b/m', 'a/m'] } };
    const body = { model: 'r', messages: HI, max_tokens: 100 };
    const gw = await gateway({ providers, routes, routing: { tie_epsilon: 0.02 } });
    const e = await explain(gw, body);
    checkScores(e.candidates);
    const tied = await serve(gw, 20, body);
    expect(tied.counts.c ?? 0).toBe(0);
    expect(tied.counts.a).toBe(10);
    expect(tied.counts.b).toBe(10);
    const strict = await gateway({ providers, routes, routing: { tie_epsilon: 0 } });
    const s = await serve(strict, 10, body);
    expect(s.counts).toEqual({ a: 10 });
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('hybrid: weights, normalisation, reliability', () => {
  it('default weights 0.4 / 0.4 / 0.2 in the reason; the total is the weighted sum; custom weights change the winner', async () => {
    const clock = manualClock(1_000_000);
    // cheap but slow vs dear but fast.
    const cheap = await timedUp(clock, () => 200);
    const dear = await timedUp(clock, () => 20);
    const providers = [
      prov('cheap', cheap.url, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
      prov('dear', dear.url, { price: { input_per_mtok: 10, output_per_mtok: 10 } }),
    ];
    const gw = await gateway(
      {
        providers,
        routes: {
          r: { strategy: 'hybrid', targets: ['cheap/m', 'dear/m'] },
          costly: {
            strategy: { hybrid: { cost_weight: 0.8, latency_weight: 0.1, reliability_weight: 0.1 } },
            targets: ['cheap/m', 'dear/m'],
          },
          quick: {
            strategy: { hybrid: { cost_weight: 0.1, latency_weight: 0.8, reliability_weight: 0.1 } },
            targets: ['cheap/m', 'dear/m'],
          },
        },
      },
      { now: clock.now, random: mulberry32(9) },
    );
    await warm(gw, ['cheap', 'dear'], 4);
    const e = await explain(gw, { model: 'r', messages: HI, max_tokens: 100 });
    checkScores(e.candidates);
    for (const c of e.candidates) {
      expect(c.reason).toMatch(/x 0\.4\b.*x 0\.4\b.*x 0\.2\b/);
      // hybrid T = cost ... -> c x wc + latency ... -> l x wl + reliability ... -> r x wr
      const total = Number(/hybrid ([\d.]+)/.exec(c.reason)?.[1]);
      const parts = [...c.reason.matchAll(/-> ([\d.]+) x ([\d.]+)/g)].map((m) => Number(m[1]) * Number(m[2]));
      expect(parts, c.reason).toHaveLength(3);
      expect(total, c.reason).toBeCloseTo(
        parts.reduce((x, y) => x + y, 0),
        1,
      );
      // Each factor normalised to [0, 1].
      for (const m of c.reason.matchAll(/-> ([\d.]+) x/g)) {
        expect(Number(m[1])).toBeGreaterThanOrEqual(0);
        expect(Number(m[1])).toBeLessThanOrEqual(1);
      }
    }
    const costly = await explain(gw, { model: 'costly', messages: HI, max_tokens: 100 });
    expect(costly.candidates[0]!.upstream).toBe('cheap/m');
    expect(costly.candidates[0]!.reason).toMatch(/x 0\.8\b.*x 0\.1\b.*x 0\.1\b/);
    const quick = await explain(gw, { model: 'quick', messages: HI, max_tokens: 100 });
    expect(quick.candidates[0]!.upstream).toBe('dear/m');
    // Live traffic agrees.
    expect((await serve(gw, 5, { model: 'costly', messages: HI, max_tokens: 100 })).counts).toEqual({
      cheap: 5,
    });
    expect((await serve(gw, 5, { model: 'quick', messages: HI, max_tokens: 100 })).counts).toEqual({
      dear: 5,
    });
  });

  it('reliability = recent success rate: an upstream that starts failing loses the traffic before its breaker opens', async () => {
    let bFails = false;
    const price = { input_per_mtok: 1, output_per_mtok: 1 };
    const {
      gw,
      ups: { b },
    } = await timedRoute(
      'hybrid',
      { a: 20, b: [20, () => bFails] },
      { routing: { max_attempts: 2 }, circuit_breaker: { failure_threshold: 1000 } },
      10,
      { model: { price } },
    );
    await warm(gw, ['a', 'b'], 4);
    // Identical: they tie and share.
    const even = await serve(gw, 10);
    expect(even.counts.a).toBeGreaterThanOrEqual(3);
    expect(even.counts.b).toBeGreaterThanOrEqual(3);
    bFails = true;
    // b fails a few times (pinned, so the failures are b's alone).
    for (let i = 0; i < 4; i++) {
      const r = await call(gw, BODY, { 'x-router-provider': 'b' });
      expect(r.status).toBe(502);
    }
    expect((await statusOf(gw)).get('b/m')!.breaker.state).toBe('closed');
    const e = await explain(gw);
    expect(e.candidates[0]!.upstream).toBe('a/m');
    const bReason = e.candidates.find((c) => c.upstream === 'b/m')!.reason;
    const pct = Number(/reliability ([\d.]+)%/.exec(bReason)?.[1]);
    expect(pct, bReason).toBeLessThan(100);
    const calledB = b.calls;
    const { counts, all } = await serve(gw, 10);
    expect(counts).toEqual({ a: 10 });
    expect(b.calls).toBe(calledB);
    for (const r of all) expect(r.headers['x-router-trail']).toBe('');
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('round-robin', () => {
  it('rotates evenly, sequential and concurrent', async () => {
    const [a, b, c] = [await chatUp(), await chatUp(), await chatUp()];
    const gw = await gateway(routeOver('round-robin', { a, b, c }));
    const seq = await serve(gw, 30);
    expect(seq.counts).toEqual({ a: 10, b: 10, c: 10 });
    // Every window of three is all three upstreams.
    for (let i = 0; i + 3 <= seq.order.length; i += 3)
      expect(new Set(seq.order.slice(i, i + 3)).size).toBe(3);
    const conc = await serve(gw, 60, BODY, 15);
    expect(conc.counts).toEqual({ a: 20, b: 20, c: 20 });
    const s = await scrape(gw.url);
    for (const p of ['a', 'b', 'c'])
      expect(
        value(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'round-robin', provider: p }),
      ).toBe(30);
  });

  it('skips an upstream whose breaker is open, and still rotates evenly across the healthy ones', async () => {
    const { gw, b } = await tripOnFirstFailure(
      'round-robin',
      { a: false, b: true, c: false },
      { routing: { max_attempts: 3 } },
    );
    // Until b has been tried once, a request may land on it and fail over.
    await serve(gw, 3);
    expect(b.calls).toBe(1);
    expect((await statusOf(gw)).get('b/m')!.breaker.state).toBe('open');
    const { counts, all } = await serve(gw, 20);
    expect(b.calls).toBe(1);
    for (const r of all) expect(r.headers['x-router-attempts']).toBe('1');
    // SPEC: "rotates evenly across healthy candidates".
    expect(counts).toEqual({ a: 10, c: 10 });
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('priority and the failover chain', () => {
  it('config order serves; failures walk the chain in order within max_attempts, never twice', async () => {
    let failing = new Set<string>();
    const mk = (name: string) => chatUp({ fail: () => failing.has(name) });
    const [a, b, c] = [await mk('a'), await mk('b'), await mk('c')];
    const providers = [prov('a', a.url), prov('b', b.url), prov('c', c.url)];
    const gw = await gateway({
      providers,
      routes: { r: { strategy: 'priority', targets: ['c/m', 'a/m', 'b/m'] } },
      routing: { max_attempts: 3 },
      circuit_breaker: { failure_threshold: 1000 },
    });
    expect((await serve(gw, 5)).counts).toEqual({ c: 5 });
    const e = await explain(gw);
    checkScores(e.candidates);
    expect(e.candidates.map((x) => x.upstream)).toEqual(['c/m', 'a/m', 'b/m']);
    failing = new Set(['c', 'a']);
    const r = await call(gw, BODY);
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('3');
    expect(r.headers['x-router-trail']).toBe('c/m=http_500,a/m=http_500');
    // All fail: each upstream once, then 502.
    failing = new Set(['a', 'b', 'c']);
    const before = [a.calls, b.calls, c.calls];
    const all = await call(gw, BODY);
    expect(all.status).toBe(502);
    expect(all.headers['x-router-trail']).toBe('c/m=http_500,a/m=http_500,b/m=http_500');
    expect([a.calls - before[0]!, b.calls - before[1]!, c.calls - before[2]!]).toEqual([1, 1, 1]);
    // max_attempts 2: the third is never called.
    const two = await gateway({
      providers,
      routes: { r: { strategy: 'priority', targets: ['c/m', 'a/m', 'b/m'] } },
      routing: { max_attempts: 2 },
      circuit_breaker: { failure_threshold: 1000 },
    });
    const bBefore = b.calls;
    const r2 = await call(two, BODY);
    expect(r2.status).toBe(502);
    expect(r2.headers['x-router-attempts']).toBe('2');
    expect(b.calls).toBe(bBefore);
  });

  it('max_attempts above the number of upstreams: each is tried once, none twice', async () => {
    const a = await chatUp({ fail: () => true });
    const b = await chatUp({ fail: () => true });
    const gw = await gateway(
      routeOver(
        'round-robin',
        { a, b },
        { routing: { max_attempts: 5 }, circuit_breaker: { failure_threshold: 1000 } },
      ),
    );
    const r = await call(gw, BODY);
    expect(r.status).toBe(502);
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(a.calls).toBe(1);
    expect(b.calls).toBe(1);
  });

  it('an open breaker at the head of the chain is skipped without a call', async () => {
    let aFails = true;
    const a = await chatUp({ fail: () => aFails });
    const b = await chatUp();
    const gw = await gateway(
      routeOver('priority', { a, b }, { circuit_breaker: { failure_threshold: 2, open_ms: 60_000 } }),
    );
    await serve(gw, 2);
    expect(a.calls).toBe(2);
    aFails = false;
    const { counts, all } = await serve(gw, 5);
    expect(counts).toEqual({ b: 5 });
    expect(a.calls).toBe(2);
    for (const r of all) {
      expect(r.headers['x-router-attempts']).toBe('1');
      expect(r.headers['x-router-trail']).toBe('');
    }
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('weighted', () => {
  it('proportions follow the weights over 400 requests (seeded random)', async () => {
    const [a, b, c] = [await chatUp(), await chatUp(), await chatUp()];
    const gw = await gateway(routeOver('weighted', { a, b, c }, {}, { weights: { a: 1, b: 3, c: 6 } }), {
      random: mulberry32(11),
    });
    const { counts } = await serve(gw, 400, BODY, 20);
    // Expected 40 / 120 / 240; about +-4 standard deviations.
    expect(counts.a ?? 0).toBeGreaterThanOrEqual(18);
    expect(counts.a ?? 0).toBeLessThanOrEqual(65);
    expect(counts.b ?? 0).toBeGreaterThanOrEqual(85);
    expect(counts.b ?? 0).toBeLessThanOrEqual(155);
    expect(counts.c ?? 0).toBeGreaterThanOrEqual(200);
    expect(counts.c ?? 0).toBeLessThanOrEqual(280);
  });

  it('unseeded (the real random source): 1:3 within generous bounds', async () => {
    const [a, b] = [await chatUp(), await chatUp()];
    const gw = await gateway(routeOver('weighted', { a, b }, {}, { weights: { a: 1, b: 3 } }));
    const { counts } = await serve(gw, 400, BODY, 20);
    // Expected 100 / 300, sd ~8.7: +-5 sd.
    expect(counts.a ?? 0).toBeGreaterThanOrEqual(55);
    expect(counts.a ?? 0).toBeLessThanOrEqual(145);
  });

  it("a model's weight applies when the target gives none; the target's own weight wins (README)", async () => {
    const [a, b] = [await chatUp(), await chatUp()];
    const gw = await gateway(
      {
        providers: [prov('a', a.url, { weight: 9 }), prov('b', b.url, { weight: 1 })],
        routes: {
          byModel: { strategy: 'weighted', targets: ['a/m', 'b/m'] },
          byTarget: {
            strategy: 'weighted',
            targets: [
              { target: 'a/m', weight: 1 },
              { target: 'b/m', weight: 9 },
            ],
          },
        },
      },
      { random: mulberry32(12) },
    );
    const m = await serve(gw, 200, { model: 'byModel', messages: HI }, 20);
    expect(m.counts.a ?? 0).toBeGreaterThanOrEqual(160);
    const t = await serve(gw, 200, { model: 'byTarget', messages: HI }, 20);
    expect(t.counts.b ?? 0).toBeGreaterThanOrEqual(160);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('least-busy', () => {
  it('streams held open spread across the upstreams; the next request goes to the one with fewest in flight', async () => {
    const g = gate(8000);
    const held = () => holder(g, { role: true });
    const [a, b, c] = [await held(), await held(), await held()];
    const gw = await gateway(routeOver('least-busy', { a, b, c }));
    // Two streams pinned on a, one on b: the next goes to c, then (c and b at 1) not a.
    const pending: Array<Promise<RouterRes>> = [];
    pending.push(fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'a' }));
    pending.push(fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'a' }));
    pending.push(fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'b' }));
    await until(() => expect([a.calls, b.calls, c.calls]).toEqual([2, 1, 0]));
    const e = await explain(gw);
    checkScores(e.candidates);
    expect(e.candidates[0]!.upstream).toBe('c/m');
    expect(e.candidates[2]!.upstream).toBe('a/m');
    pending.push(fire(gw, { model: 'r', messages: HI, stream: true }));
    await until(() => expect(c.calls).toBe(1));
    // Now 2 / 1 / 1: six more held streams, each started once the last is in flight, fill evenly.
    for (let i = 0; i < 6; i++) {
      const before = a.calls + b.calls + c.calls;
      pending.push(fire(gw, { model: 'r', messages: HI, stream: true }));
      await until(() => expect(a.calls + b.calls + c.calls).toBe(before + 1));
    }
    // 2+1+1+6 = 10 in flight: least-busy keeps the spread within one.
    const inflight = [a.calls, b.calls, c.calls];
    expect(Math.max(...inflight) - Math.min(...inflight), inflight.join('/')).toBeLessThanOrEqual(1);
    const st = await statusOf(gw);
    expect(['a/m', 'b/m', 'c/m'].map((u) => st.get(u)!.in_flight)).toEqual(inflight);
    g.open();
    for (const r of await Promise.all(pending)) expect(r.status).toBe(200);
  });

  it('with nothing in flight, least-busy ties rotate rather than always taking the first', async () => {
    const [a, b] = [await chatUp(), await chatUp()];
    const gw = await gateway(routeOver('least-busy', { a, b }));
    const { counts } = await serve(gw, 20);
    expect(counts.a).toBe(10);
    expect(counts.b).toBe(10);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('every strategy: scores, ties, overrides, pins, decisions metric', () => {
  async function threeWay() {
    const { gw, ups } = await timedRoute('priority', { a: 30, b: 10, c: 60 }, {}, 13, {
      models: {
        a: { price: { input_per_mtok: 1, output_per_mtok: 4 } },
        b: { price: { input_per_mtok: 5, output_per_mtok: 15 } },
        c: { price: { input_per_mtok: 0.5, output_per_mtok: 1 } },
      },
      weights: { a: 2, b: 1, c: 1 },
    });
    await warm(gw, ['a', 'b', 'c'], 4);
    return { gw, ...ups };
  }

  it('every strategy: scores in [0, 1], best = 1, ranked; the request line carries the same score and reason', async () => {
    const { gw } = await threeWay();
    for (const s of STRATEGIES) {
      const e = await explain(gw, { model: 'r', messages: HI, max_tokens: 50 }, { 'x-router-strategy': s });
      expect(e.strategy).toBe(s);
      checkScores(e.candidates);
      const id = `score-${s}`;
      const r = await call(
        gw,
        { model: 'r', messages: HI, max_tokens: 50 },
        { 'x-router-strategy': s, 'x-request-id': id },
      );
      expect(r.status).toBe(200);
      expect(r.headers['x-router-strategy']).toBe(s);
      const line = await until(() => {
        const l = requestLine(gw, id);
        expect(l).toBeDefined();
        return l!;
      });
      expect(line.strategy, s).toBe(s);
      expect(typeof line.score, s).toBe('number');
      expect(line.score as number).toBeGreaterThanOrEqual(0);
      expect(line.score as number).toBeLessThanOrEqual(1);
      expect(String(line.reason).length, s).toBeGreaterThan(0);
      expect(line.upstream).toBe(`${r.headers['x-router-provider']}/m`);
    }
    // Raw figures: dollars for cost, ms for latency.
    const cost = await explain(
      gw,
      { model: 'r', messages: HI, max_tokens: 50 },
      { 'x-router-strategy': 'cost' },
    );
    expect(cost.candidates[0]!.upstream).toBe('c/m');
    for (const c of cost.candidates) expect(c.reason).toMatch(/\$\d/);
    const lat = await explain(gw, BODY, { 'x-router-strategy': 'latency' });
    expect(lat.candidates.map((c) => c.upstream)).toEqual(['b/m', 'a/m', 'c/m']);
    for (const c of lat.candidates) expect(c.reason).toMatch(/\d ?ms/);
  });

  it('x-router-strategy: each name is honoured live; an unknown one is a 400 before any upstream', async () => {
    const { gw, a, b, c } = await threeWay();
    const expectPick: Record<string, string> = { cost: 'c', latency: 'b', priority: 'a' };
    for (const [s, want] of Object.entries(expectPick)) {
      const { counts } = await serve(gw, 3, { model: 'r', messages: HI, max_tokens: 50 }, 1, {
        'x-router-strategy': s,
      });
      expect(counts, s).toEqual({ [want]: 3 });
    }
    const before = a.calls + b.calls + c.calls;
    for (const bad of ['fastest', 'Cost', 'round_robin', '__proto__']) {
      const r = await call(gw, BODY, { 'x-router-strategy': bad });
      expect(r.status, bad).toBe(400);
      expect((r.json.error as Json).type, bad).toBe('invalid_request_error');
      expect(String((r.json.error as Json).message), bad).toMatch(/strategy/i);
    }
    expect(a.calls + b.calls + c.calls).toBe(before);
  });

  it('x-router-provider pins the provider whatever the strategy; an unknown provider is a 400', async () => {
    const { gw, a, b, c } = await threeWay();
    for (const s of STRATEGIES) {
      const { counts } = await serve(gw, 3, BODY, 1, {
        'x-router-strategy': s,
        'x-router-provider': 'c',
      });
      expect(counts, s).toEqual({ c: 3 });
    }
    const before = a.calls + b.calls + c.calls;
    const r = await call(gw, BODY, { 'x-router-provider': 'nope' });
    expect(r.status).toBe(400);
    expect(a.calls + b.calls + c.calls).toBe(before);
  });

  it('ties broken by rotation: identical upstreams share under latency and hybrid too', async () => {
    const clock = manualClock(1_000_000);
    const a = await timedUp(clock, () => 25);
    const b = await timedUp(clock, () => 25);
    const price = { input_per_mtok: 1, output_per_mtok: 1 };
    const gw = await gateway(
      {
        providers: [prov('a', a.url, { price }), prov('b', b.url, { price })],
        routes: {
          r: { strategy: 'latency', targets: ['a/m', 'b/m'] },
          h: { strategy: 'hybrid', targets: ['a/m', 'b/m'] },
        },
      },
      { now: clock.now, random: mulberry32(14) },
    );
    await warm(gw, ['a', 'b'], 4);
    const lat = await serve(gw, 20);
    expect(lat.counts.a ?? 0, JSON.stringify(lat.counts)).toBeGreaterThanOrEqual(8);
    expect(lat.counts.b ?? 0, JSON.stringify(lat.counts)).toBeGreaterThanOrEqual(8);
    const hyb = await serve(gw, 20, { model: 'h', messages: HI });
    expect(hyb.counts.a ?? 0, JSON.stringify(hyb.counts)).toBeGreaterThanOrEqual(8);
    expect(hyb.counts.b ?? 0, JSON.stringify(hyb.counts)).toBeGreaterThanOrEqual(8);
  });

  it('routing_decisions_total counts one decision per request, under the strategy used', async () => {
    const a = await chatUp();
    let bFails = false;
    const b = await chatUp({ fail: () => bFails });
    const gw = await gateway(
      routeOver('round-robin', { a, b }, { circuit_breaker: { failure_threshold: 1000 } }),
    );
    await serve(gw, 10);
    await serve(gw, 4, BODY, 1, { 'x-router-strategy': 'priority' });
    let s = await scrape(gw.url);
    const dec = (strategy: string, provider: string) =>
      value(s, 'llm_router_routing_decisions_total', { route: 'r', strategy, provider }) ?? 0;
    expect(dec('round-robin', 'a')).toBe(5);
    expect(dec('round-robin', 'b')).toBe(5);
    expect(dec('priority', 'a')).toBe(4);
    expect(dec('priority', 'b')).toBe(0);
    // With failovers. Judgement: SPEC §5 gives only the labels. One request is one decision, counted once;
    // the gateway counts it under the upstream it decided on first (the head of x-router-trail when it
    // failed over), which is a fair reading of "decisions" — we hold it to being consistent with the headers.
    bFails = true;
    const { all } = await serve(gw, 4);
    expect(all.filter((r) => r.headers['x-router-trail'] !== '').length).toBeGreaterThan(0);
    const firstPick: Record<string, number> = { a: 5, b: 5 };
    for (const r of all) {
      const p = r.headers['x-router-trail']
        ? r.headers['x-router-trail'].split('/')[0]!
        : r.headers['x-router-provider']!;
      firstPick[p] = (firstPick[p] ?? 0) + 1;
    }
    s = await scrape(gw.url);
    const total = select(s, 'llm_router_routing_decisions_total', { route: 'r' }).reduce(
      (x, y) => x + y.value,
      0,
    );
    expect(total).toBe(10 + 4 + 4);
    expect(dec('round-robin', 'a')).toBe(firstPick.a);
    expect(dec('round-robin', 'b')).toBe(firstPick.b);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('live statistics under reload, bursts, failures and failover', () => {
  it('reload: an upstream added by a reload is explored with a bounded share; the others keep their statistics', async () => {
    const clock = manualClock(1_000_000);
    const a = await timedUp(clock, () => 20);
    const b = await timedUp(clock, () => 30);
    const fresh = await timedUp(clock, () => 80);
    const config = (withFresh: boolean): Json => routeOver('latency', withFresh ? { a, b, fresh } : { a, b });
    const gw = await gateway(config(false), { now: clock.now, random: mulberry32(21) });
    await warm(gw, ['a', 'b'], 5);
    gw.gateway.reload(parseConfigText(JSON.stringify(config(true)), {}));
    const st = await statusOf(gw);
    // SPEC §3: "breakers and statistics of upstreams that remain are kept".
    expect(st.get('a/m')!.stats.samples).toBe(5);
    expect(st.get('fresh/m')!.stats.samples).toBe(0);
    const first20 = await serve(gw, 20);
    // a and b are still measured: they are not re-explored; fresh gets ~10%, not the flood.
    expect(first20.counts.fresh ?? 0).toBeLessThanOrEqual(6);
    expect(first20.counts.b ?? 0).toBeLessThanOrEqual(6);
    const more = await serve(gw, 100);
    const freshTotal = (first20.counts.fresh ?? 0) + (more.counts.fresh ?? 0);
    expect(freshTotal).toBeGreaterThanOrEqual(3);
    expect(freshTotal).toBeLessThanOrEqual(20);
  });

  it('exploration under a burst: an unmeasured upstream is not flooded by concurrent decisions before its first answer', async () => {
    const clock = manualClock(1_000_000);
    const g = gate(8000);
    const a = await timedUp(clock, () => 20);
    // fresh holds every answer until the burst is over: it stays unmeasured throughout.
    const fresh = await up(async (body, res) => {
      await g.wait;
      sendJson(res, 200, chatCompletion(body));
    });
    const gw = await gateway(
      routeOver('latency', { a, fresh }, { routing: { exploration_share: 0.1, min_samples: 3 } }),
      { now: clock.now, random: mulberry32(22) },
    );
    await warm(gw, ['a'], 5);
    const pending = Array.from({ length: 20 }, () => fire(gw, BODY));
    await until(() => expect(a.calls - 5 + fresh.calls).toBe(20));
    // README: "share of decisions the latency/hybrid strategies may spend on upstreams with fewer samples":
    // 10% of 20 is 2; 6 is generous.
    expect(fresh.calls, `fresh got ${fresh.calls} of 20`).toBeLessThanOrEqual(6);
    g.open();
    for (const r of await Promise.all(pending)) expect(r.status).toBe(200);
  });

  it('hybrid explores an unmeasured upstream too (README: the latency/hybrid strategies), not starving it', async () => {
    const price = { input_per_mtok: 1, output_per_mtok: 1 };
    const { gw } = await timedRoute(
      'hybrid',
      { a: 20, fresh: 20 },
      { routing: { exploration_share: 0.1, min_samples: 3 } },
      23,
      { model: { price } },
    );
    await warm(gw, ['a'], 5);
    const { counts } = await serve(gw, 100);
    // At 10% of decisions it reaches min_samples (3) well within 100; once measured as equal, it ties.
    expect(counts.fresh ?? 0).toBeGreaterThanOrEqual(3);
  });

  it('latency: an upstream that fails fast does not look fast (failures are no latency samples)', async () => {
    const { gw } = await timedRoute(
      'latency',
      { ok: 50, broken: [2, () => true] },
      { routing: { max_attempts: 2 }, circuit_breaker: { failure_threshold: 1000 } },
      24,
    );
    await warm(gw, ['ok'], 5);
    for (let i = 0; i < 5; i++)
      expect((await call(gw, BODY, { 'x-router-provider': 'broken' })).status).toBe(502);
    const { all } = await serve(gw, 30);
    const triedBroken = all.filter((r) => r.headers['x-router-trail']!.includes('broken/m')).length;
    // Judgement: a production user expects the 2 ms 500s not to win the latency ranking. At most the
    // exploration share (10%) may still probe it; 8 of 30 is generous.
    expect(triedBroken, `broken tried first in ${triedBroken} of 30`).toBeLessThanOrEqual(8);
  });

  it("after a failover, the serving upstream's latency sample is its own attempt, not the failed one's time", async () => {
    const clock = manualClock(1_000_000);
    const slowFail = await timedUp(clock, () => 400, { fail: () => true });
    const good = await timedUp(clock, () => 20);
    const gw = await gateway(
      routeOver('priority', { bad: slowFail, good }, { circuit_breaker: { failure_threshold: 1000 } }),
      { now: clock.now },
    );
    const { all } = await serve(gw, 4);
    for (const r of all) expect(r.headers['x-router-trail']).toBe('bad/m=http_500');
    const ttft = (await statusOf(gw)).get('good/m')!.stats.ttftMs as number;
    expect(ttft).toBeGreaterThanOrEqual(19);
    expect(ttft).toBeLessThanOrEqual(25);
  });

  it("in flight is per upstream: requests held on another route's traffic count in the latency load", async () => {
    const clock = manualClock(1_000_000);
    const g = gate(8000);
    let holdFast = false;
    const fast = await up(async (body, res) => {
      if (holdFast) await g.wait;
      else clock.advance(20);
      sendJson(res, 200, chatCompletion(body));
    });
    const slow = await timedUp(clock, () => 50);
    const gw = await gateway(
      {
        providers: [prov('fast', fast.url), prov('slow', slow.url)],
        routes: {
          r: { strategy: 'latency', targets: ['fast/m', 'slow/m'] },
          only: { strategy: 'priority', targets: ['fast/m'] },
        },
      },
      { now: clock.now, random: mulberry32(25) },
    );
    await warm(gw, ['fast', 'slow'], 4);
    holdFast = true;
    const held = [0, 1, 2].map(() => fire(gw, { model: 'only', messages: HI }));
    await until(() => expect(fast.calls).toBe(4 + 3));
    const e = await explain(gw);
    // 20 ms x (3 + 1) = 80 ms, the estimate the reason quotes.
    expect(e.candidates.find((c) => c.upstream === 'fast/m')!.reason).toMatch(/\b80 ms est\..*load 4\b/);
    expect(e.candidates[0]!.upstream).toBe('slow/m');
    g.open();
    for (const r of await Promise.all(held)) expect(r.status).toBe(200);
  });
});

describe('round-robin, weighted and cost: more of the contract', () => {
  it('round-robin turns are per route: two routes over the same upstreams, interleaved, each rotate', async () => {
    const [a, b] = [await chatUp(), await chatUp()];
    const gw = await gateway({
      providers: [prov('a', a.url), prov('b', b.url)],
      routes: {
        r1: { strategy: 'round-robin', targets: ['a/m', 'b/m'] },
        r2: { strategy: 'round-robin', targets: ['a/m', 'b/m'] },
      },
    });
    const c1: Record<string, number> = {};
    const c2: Record<string, number> = {};
    for (let i = 0; i < 10; i++) {
      const p1 = (await call(gw, { model: 'r1', messages: HI })).headers['x-router-provider']!;
      const p2 = (await call(gw, { model: 'r2', messages: HI })).headers['x-router-provider']!;
      c1[p1] = (c1[p1] ?? 0) + 1;
      c2[p2] = (c2[p2] ?? 0) + 1;
    }
    expect(c1).toEqual({ a: 5, b: 5 });
    expect(c2).toEqual({ a: 5, b: 5 });
  });

  it('weighted skips an open breaker and keeps the others in proportion', async () => {
    const { gw, b } = await tripOnFirstFailure(
      'weighted',
      { a: false, b: true, c: false },
      { routing: { max_attempts: 3 } },
      { weights: { a: 1, b: 8, c: 3 } },
      { random: mulberry32(26) },
    );
    // Pin b once to open its breaker.
    expect((await call(gw, BODY, { 'x-router-provider': 'b' })).status).toBe(502);
    expect((await statusOf(gw)).get('b/m')!.breaker.state).toBe('open');
    const { counts, all } = await serve(gw, 200, BODY, 20);
    expect(b.calls).toBe(1);
    for (const r of all) expect(r.headers['x-router-trail']).toBe('');
    // 1 : 3 among the healthy: a expected 50 of 200 (sd ~6).
    expect(counts.a ?? 0).toBeGreaterThanOrEqual(28);
    expect(counts.a ?? 0).toBeLessThanOrEqual(75);
  });

  it('cost compares every candidate on the same expected output (README), whatever each answered before', async () => {
    const short = await chatUp({ tokens: 10 });
    const long = await chatUp({ tokens: 1000 });
    const price = { input_per_mtok: 1, output_per_mtok: 10 };
    const gw = await gateway(routeOver('cost', { short, long }, {}, { model: { price } }));
    await warm(gw, ['short', 'long'], 3);
    const e = await explain(gw);
    const pt = e.features.promptTokens as number;
    const outs = e.candidates.map((c) => {
      const dollars = Number(/\$([\d.]+)/.exec(c.reason)?.[1]);
      return (dollars * 1e6 - pt * price.input_per_mtok) / price.output_per_mtok;
    });
    // The same expected output for both (README: the mean of the candidates' observed means, 505).
    expect(outs[0]).toBeCloseTo(outs[1]!, 0);
    expect(outs[0]).toBeCloseTo(505, -1);
    // Same price and same expected output: a tie, so both serve.
    const { counts } = await serve(gw, 10);
    expect(counts.short ?? 0).toBeGreaterThanOrEqual(4);
    expect(counts.long ?? 0).toBeGreaterThanOrEqual(4);
  });

  it("hybrid reliability is not lowered by clients' own 400s relayed from an upstream", async () => {
    const clock = manualClock(1_000_000);
    const a = await timedUp(clock, () => 20);
    const b = await up((body, res) => {
      clock.advance(20);
      if (body.temperature === 9)
        return sendJson(res, 400, {
          error: {
            message: 'temperature too high',
            type: 'invalid_request_error',
            param: 'temperature',
            code: null,
          },
        });
      sendJson(res, 200, chatCompletion(body));
    });
    const gw = await gateway(routeOver('hybrid', { a, b }), { now: clock.now, random: mulberry32(28) });
    await warm(gw, ['a', 'b'], 4);
    for (let i = 0; i < 8; i++) {
      const r = await call(gw, { model: 'r', messages: HI, temperature: 9 }, { 'x-router-provider': 'b' });
      expect(r.status).toBe(400);
    }
    const reason = (await explain(gw)).candidates.find((c) => c.upstream === 'b/m')!.reason;
    expect(reason).toMatch(/reliability 100(\.0)?%/);
    const { counts } = await serve(gw, 10);
    expect(counts.b ?? 0).toBeGreaterThanOrEqual(4);
  });

  it('hybrid reliability is recent: after a failing spell and a long healthy run, it climbs back near 100%', async () => {
    let bFails = false;
    const { clock, gw } = await timedRoute(
      'hybrid',
      { a: 20, b: [20, () => bFails] },
      { routing: { max_attempts: 1 }, circuit_breaker: { failure_threshold: 1000 } },
      27,
    );
    await warm(gw, ['a'], 4);
    bFails = true;
    for (let i = 0; i < 10; i++) await call(gw, BODY, { 'x-router-provider': 'b' });
    const rel = async () =>
      Number(
        /reliability ([\d.]+)%/.exec(
          (await explain(gw)).candidates.find((c) => c.upstream === 'b/m')!.reason,
        )?.[1],
      );
    expect(await rel()).toBeLessThan(50);
    bFails = false;
    for (let i = 0; i < 100; i++) {
      clock.advance(1000);
      expect((await call(gw, BODY, { 'x-router-provider': 'b' })).status).toBe(200);
    }
    // Judgement: "recent success rate" / README "decaying success rate": recent successes weigh more than
    // old failures, so the rate is above the lifetime one (100 / 110 = 90.9%).
    expect(await rel()).toBeGreaterThanOrEqual(93);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('state the strategies read stays true', () => {
  it('explain does not spend a round-robin turn: the next real request goes where explain said', async () => {
    const [a, b, c] = [await chatUp(), await chatUp(), await chatUp()];
    const gw = await gateway(routeOver('round-robin', { a, b, c }));
    const order: string[] = [];
    for (let i = 0; i < 6; i++) {
      const e1 = await explain(gw);
      const e2 = await explain(gw);
      // Asking twice gives the same answer, and the request then goes there.
      expect(e2.candidates[0]!.upstream).toBe(e1.candidates[0]!.upstream);
      const r = await call(gw, BODY);
      expect(`${r.headers['x-router-provider']}/m`).toBe(e1.candidates[0]!.upstream);
      order.push(r.headers['x-router-provider']!);
    }
    expect(new Set(order.slice(0, 3)).size).toBe(3);
    expect(new Set(order.slice(3)).size).toBe(3);
  });

  it('in flight returns to 0 when clients abort held streams and after failovers; least-busy is even again', async () => {
    const g = gate(8000);
    let failB = false;
    const a = await holder(g, { role: true, endIfOpen: true });
    const b = await holder(g, { role: true, endIfOpen: true, fail: () => failB });
    const gw = await gateway(
      routeOver('least-busy', { a, b }, { circuit_breaker: { failure_threshold: 1000 } }),
    );
    const controllers: AbortController[] = [];
    const pending: Array<Promise<unknown>> = [];
    for (let i = 0; i < 4; i++) {
      const ac = new AbortController();
      controllers.push(ac);
      pending.push(
        request(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-router-provider': 'a' },
          body: JSON.stringify({ model: 'r', messages: HI, stream: true }),
          signal: ac.signal,
        })
          .then((res) => res.body.text())
          .catch(() => undefined),
      );
    }
    await until(() => expect(a.calls).toBe(4));
    await until(async () => expect((await statusOf(gw)).get('a/m')!.in_flight).toBe(4));
    for (const ac of controllers) ac.abort();
    await Promise.all(pending);
    await until(async () => expect((await statusOf(gw)).get('a/m')!.in_flight).toBe(0));
    // Failovers from b leave no in-flight behind either.
    failB = true;
    // A request pinned to the failing b is answered 502 (its in-flight released too).
    const pinned = await call(gw, BODY, { 'x-router-provider': 'b' });
    expect(pinned.status, pinned.text).toBe(502);
    const trails: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await call(gw, BODY);
      expect(r.status, r.text).toBe(200);
      trails.push(r.headers['x-router-trail'] ?? '');
    }
    // The fault really happened: at least one request failed over from b.
    expect(trails.filter((t) => t.includes('b/m=http_500')).length, trails.join('|')).toBeGreaterThan(0);
    failB = false;
    await until(async () => {
      const st = await statusOf(gw);
      expect([st.get('a/m')!.in_flight, st.get('b/m')!.in_flight]).toEqual([0, 0]);
    });
    const s = await scrape(gw.url);
    expect(value(s, 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(0);
    expect(value(s, 'llm_router_inflight_requests', { provider: 'b', model: 'm' })).toBe(0);
    const { counts } = await serve(gw, 10);
    expect(counts).toEqual({ a: 5, b: 5 });
    g.open();
  });

  it('half-open allows half_open_probes trial requests, even when least-busy would send it every request', async () => {
    const clock = manualClock(1_000_000);
    const g = gate(8000);
    let bMode: 'fail' | 'hold' = 'fail';
    const a = await chatUp();
    const b = await up(async (body, res) => {
      if (bMode === 'fail') return fail500(res);
      await g.wait;
      sendJson(res, 200, chatCompletion(body));
    });
    const gw = await gateway(
      routeOver(
        'least-busy',
        { a, b },
        {
          routing: { max_attempts: 1 },
          circuit_breaker: {
            failure_threshold: 2,
            open_ms: 10_000,
            half_open_probes: 1,
            success_threshold: 3,
          },
        },
      ),
      { now: clock.now },
    );
    for (let i = 0; i < 2; i++) expect((await call(gw, BODY, { 'x-router-provider': 'b' })).status).toBe(502);
    expect((await statusOf(gw)).get('b/m')!.breaker.state).toBe('open');
    clock.advance(11_000);
    bMode = 'hold';
    // a is kept busy by nothing: least-busy would rank b (0 in flight) level with a at each decision.
    const pending: Array<Promise<RouterRes>> = [];
    for (let i = 0; i < 10; i++) {
      const before = a.calls + b.calls;
      pending.push(fire(gw, BODY));
      await until(() => expect(a.calls + b.calls).toBeGreaterThanOrEqual(before + (b.calls > 2 ? 0 : 1)));
    }
    await until(() => expect(a.calls + b.calls - 2).toBeGreaterThanOrEqual(9));
    // SPEC: "half-open: at most half_open_probes (default 1) concurrent trial requests".
    expect(b.calls - 2).toBe(1);
    g.open();
    for (const r of await Promise.all(pending)) expect(r.status).toBe(200);
  });

  it('latency cold start: with nothing measured, traffic rotates so every upstream gets measured', async () => {
    const { gw } = await timedRoute('latency', { a: 30, b: 20, c: 10 }, {}, 31);
    // Nothing measured: rotation, so each gets samples (the first to reach min_samples then holds the rest
    // of the traffic while the others are explored at the bounded share).
    const first = await serve(gw, 9);
    for (const p of ['a', 'b', 'c'])
      expect(first.counts[p] ?? 0, JSON.stringify(first.counts)).toBeGreaterThanOrEqual(2);
    // Within a bounded number of decisions the fastest, c, is found and takes the traffic.
    await serve(gw, 60);
    const then = await serve(gw, 10);
    expect(then.counts).toEqual({ c: 10 });
  });

  it('round-robin stays even across the candidates a request can use (one upstream filtered out by capability)', async () => {
    const streamer = () =>
      up((body, res) => {
        if (body.stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(
            `${chunkFrame(body.model, { content: 'x' })}${chunkFrame(body.model, {}, 'stop')}data: [DONE]\n\n`,
          );
          return;
        }
        sendJson(res, 200, chatCompletion(body));
      });
    const [a, b, c] = [await streamer(), await streamer(), await streamer()];
    const gw = await gateway(
      routeOver(
        'round-robin',
        { a, b, c },
        {},
        { models: { b: { capabilities: ['tools', 'json', 'vision'] } } },
      ),
    );
    const { counts } = await serve(gw, 20, { model: 'r', messages: HI, stream: true });
    expect(b.calls).toBe(0);
    // SPEC: "rotates evenly across healthy candidates".
    expect(counts).toEqual({ a: 10, c: 10 });
  });

  it('round-robin skipping an open breaker stays even under concurrency', async () => {
    const { gw, b } = await tripOnFirstFailure('round-robin', { a: false, b: true, c: false, d: false });
    expect((await call(gw, BODY, { 'x-router-provider': 'b' })).status).toBe(502);
    const { counts } = await serve(gw, 60, BODY, 15);
    expect(b.calls).toBe(1);
    expect(counts).toEqual({ a: 20, c: 20, d: 20 });
  });
});

describe('edges of the strategies', () => {
  it("a stream's TTFT is measured to its first content, not to the preamble's first byte", async () => {
    const clock = manualClock(1_000_000);
    const preamble = await up(async (body, res) => {
      const m = body.model;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(m, { role: 'assistant', content: '' }));
      // Let the gateway read the role-only chunk at this clock time, then the content comes 300 ms later.
      await sleep(40);
      clock.advance(300);
      res.end(`${chunkFrame(m, { content: 'x' })}${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`);
    });
    const plain = await timedUp(clock, () => 100);
    const gw = await gateway(routeOver('latency', { pre: preamble, plain }), {
      now: clock.now,
      random: mulberry32(41),
    });
    for (let i = 0; i < 4; i++) {
      const r = await call(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'pre' });
      expect(r.text).toContain('[DONE]');
    }
    await warm(gw, ['plain'], 4);
    const ttft = (await statusOf(gw)).get('pre/m')!.stats.ttftMs as number;
    // A false pass is possible on a machine so slow it read the preamble late; never a false failure.
    expect(ttft).toBeGreaterThanOrEqual(290);
    expect((await explain(gw, { model: 'r', messages: HI, stream: true })).candidates[0]!.upstream).toBe(
      'plain/m',
    );
  });

  it('weighted: a target of weight 0 gets no traffic (or the config refuses it with its path)', async () => {
    const [a, b] = [await chatUp(), await chatUp()];
    const config = routeOver('weighted', { a, b }, {}, { weights: { a: 0, b: 1 } });
    let gw: TestGateway;
    try {
      gw = await gateway(config, { random: mulberry32(42) });
    } catch (err) {
      // Judgement: refusing weight 0 is fine as long as the message names the path.
      expect(String(err)).toMatch(/routes\.r\.targets\[0\]/);
      return;
    }
    const { counts } = await serve(gw, 100, BODY, 20);
    expect(counts).toEqual({ b: 100 });
  });

  it('every breaker open: 503 no_available_upstream, x-router-attempts 0, no provider, no upstream called', async () => {
    const { gw, a, b } = await tripOnFirstFailure('round-robin', { a: true, b: true });
    expect((await call(gw, BODY)).status).toBe(502);
    const calls = a.calls + b.calls;
    expect(calls).toBe(2);
    for (const s of STRATEGIES) {
      const r = await call(gw, BODY, { 'x-router-strategy': s });
      expect(r.status, s).toBe(503);
      expect((r.json.error as Json).code ?? (r.json.error as Json).type, s).toBe('no_available_upstream');
      expect(r.headers['x-router-attempts'], s).toBe('0');
      expect(r.headers['x-router-provider'], s).toBeUndefined();
      expect(r.headers['x-router-strategy'], s).toBe(s);
    }
    expect(a.calls + b.calls).toBe(calls);
  });

  it('least-busy ties among busy upstreams rotate too', async () => {
    const g = gate(8000);
    const held = () => holder(g, { role: false });
    const [a, b, c] = [await held(), await held(), await held()];
    const gw = await gateway(routeOver('least-busy', { a, b, c }));
    // One stream held on each of a and b, two on c: a and b tie at 1 in flight.
    const pending = [
      fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'a' }),
      fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'b' }),
      fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'c' }),
      fire(gw, { model: 'r', messages: HI, stream: true }, { 'x-router-provider': 'c' }),
    ];
    await until(() => expect([a.calls, b.calls, c.calls]).toEqual([1, 1, 2]));
    const { counts } = await serve(gw, 10);
    expect(counts).toEqual({ a: 5, b: 5 });
    g.open();
    for (const r of await Promise.all(pending)) expect(r.status).toBe(200);
  });

  it('x-router-provider naming a provider whose breaker is open: 503, and no other provider serves it', async () => {
    const { gw, a } = await tripOnFirstFailure('priority', { a: false, b: true });
    expect((await call(gw, BODY, { 'x-router-provider': 'b' })).status).toBe(502);
    const before = a.calls;
    const r = await call(gw, BODY, { 'x-router-provider': 'b' });
    // Judgement: a pin is a pin (SPEC §4 "pin one provider"); the breaker refuses it as SPEC §4 says.
    expect(r.status).toBe(503);
    expect(a.calls).toBe(before);
  });
});
