/**
 * Routing and resilience against SPEC §2 (and the §3 fields that drive them): the latency and cost strategies
 * and their statistics (peak tracking, JSON answers, exploration share, scores in [0, 1], n choices), tiers and
 * the LLM router (cache key, the request's time bound, breakers not charged for the router's own timeout,
 * round-robin within a tier), the circuit breaker (backoff and its cap, reload, Retry-After, half-open probe
 * slots) and failover (429s from every candidate, max_attempts, the trail and failover metric). Loopback only;
 * every test is bounded in time.
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../../src/resilience/breaker.js';
import { parseRetryAfter, retryAfterFromHeaders } from '../../src/resilience/classify.js';
import { UpstreamStats } from '../../src/routing/stats.js';
import { STRATEGIES } from '../../src/routing/strategies/index.js';
import type { CandidateView, StrategyContext, UpstreamStatsView } from '../../src/routing/types.js';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startRecordingMock } from '../helpers/mock-upstream.js';
import { manualClock, mulberry32 } from '../helpers/random.js';

const track = closeAfterEach();

const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 };

// ---------------------------------------------------------------------------------------------------------
// helpers

function view(id: string, order: number, stats: UpstreamStatsView, price: [number, number] = [1, 1]) {
  return {
    id,
    order,
    weight: 1,
    price: { input_per_mtok: price[0], output_per_mtok: price[1] },
    stats,
  } satisfies CandidateView;
}

function ctx(over: Partial<StrategyContext> = {}): StrategyContext {
  return {
    promptTokens: 1_000,
    requestedOutputTokens: undefined,
    now: 0,
    random: () => 0.99, // never explores
    tieEpsilon: 0.02,
    rotation: 0,
    explorationShare: 0.1,
    minSamples: 3,
    weights: { cost: 0.4, latency: 0.4, reliability: 0.2 },
    ...over,
  };
}

async function sim(name: string, opts: Partial<SimOptions> = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...opts }));
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  json: Record<string, unknown>;
  text: string;
  ms: number;
}

async function post(
  gw: TestGateway,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
  signal?: AbortSignal,
): Promise<Reply> {
  const t0 = performance.now();
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal,
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* SSE */
  }
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: h, json, text, ms: performance.now() - t0 };
}

interface BreakerView {
  state: string;
  consecutive_failures: number;
  trip_cause: string | null;
  probes_in_flight: number;
  ms_until_half_open: number;
  open_ms: number;
}

async function breakerOf(gw: TestGateway, id: string): Promise<BreakerView> {
  const res = await request(`${gw.url}/router/status`);
  const body = (await res.body.json()) as { upstreams: { id: string; breaker: BreakerView }[] };
  const up = body.upstreams.find((u) => u.id === id);
  if (!up) throw new Error(`no upstream ${id}`);
  return up.breaker;
}

function completion(content: string): Record<string, unknown> {
  return {
    id: 'chatcmpl-x',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
  };
}

function isRouterCall(body: Record<string, unknown>): boolean {
  const msgs = body.messages as { role: string; content: string }[];
  return typeof msgs?.[0]?.content === 'string' && msgs[0].content.startsWith('You route requests');
}

// ---------------------------------------------------------------------------------------------------------
// routing statistics and strategies

describe('latency strategy and its statistics (SPEC §2 `latency`)', () => {
  // SPEC §2 `latency`: "... expected output tokens ÷ observed tokens/s, ... reacting at once to a slow
  // outlier (peak-EWMA), so a fast upstream is not flooded until it slows". That holds for generation speed
  // as for TTFT: an upstream whose streams suddenly generate 10x slower (TTFT unchanged) loses its first
  // place at once, not after many samples.
  it('a stream that took 10x longer to generate makes the upstream lose its first place at once', () => {
    const clock = manualClock(1_000_000);
    const a = new UpstreamStats(clock.now);
    const b = new UpstreamStats(clock.now);
    for (let i = 0; i < 10; i++) {
      // a: 100 ms to first token, 300 tokens in 3 s (100 tok/s); b: same TTFT, 300 tokens in 4 s.
      a.recordSuccess({ ttftMs: 100, totalMs: 3_100, outputTokens: 300, streamed: true });
      b.recordSuccess({ ttftMs: 100, totalMs: 4_100, outputTokens: 300, streamed: true });
      clock.advance(100);
    }
    const c = ctx({ requestedOutputTokens: 300 });
    const before = STRATEGIES.latency([view('p/a', 0, a), view('p/b', 1, b)], c);
    expect(before[0]!.candidate.id).toBe('p/a');
    // a's next answer: same TTFT, but 300 tokens took 30 s (10 tok/s), 7x what b takes.
    a.recordSuccess({ ttftMs: 100, totalMs: 30_100, outputTokens: 300, streamed: true });
    clock.advance(100);
    const after = STRATEGIES.latency([view('p/a', 0, a), view('p/b', 1, b)], c);
    expect(after[0]!.candidate.id, after.map((r) => `${r.candidate.id}: ${r.reason}`).join(' | ')).toBe(
      'p/b',
    );
  });

  // SPEC §2 `latency`: "EWMA time-to-first-token + expected output tokens ÷ observed tokens/s". A
  // non-streamed answer reports ttftMs = totalMs: its generation time is not counted twice (as TTFT, and
  // again from tokens/s known from streams), so one JSON request does not make an upstream look twice as
  // slow as an identical one.
  it('one non-streamed answer does not make an upstream look twice as slow as an identical one', () => {
    const clock = manualClock(1_000_000);
    const a = new UpstreamStats(clock.now);
    const b = new UpstreamStats(clock.now);
    for (let i = 0; i < 5; i++) {
      // Both: first token at 100 ms, 100 tokens by 1,100 ms (100 tok/s).
      a.recordSuccess({ ttftMs: 100, totalMs: 1_100, outputTokens: 100, streamed: true });
      b.recordSuccess({ ttftMs: 100, totalMs: 1_100, outputTokens: 100, streamed: true });
      clock.advance(100);
    }
    // a also answers one non-streamed request, exactly as fast (the whole answer in 1,100 ms), recorded the way
    // failover.ts record() records a JSON success (ttftMs = totalMs, streamed false).
    a.recordSuccess({ ttftMs: 1_100, totalMs: 1_100, outputTokens: 100, streamed: false });
    const ranked = STRATEGIES.latency(
      [view('p/a', 0, a), view('p/b', 1, b)],
      ctx({ requestedOutputTokens: 100 }),
    );
    const scoreA = ranked.find((r) => r.candidate.id === 'p/a')!;
    expect(scoreA.score, scoreA.reason).toBeGreaterThan(0.9);
  });

  // SPEC §2: "an upstream with too few samples is explored (a bounded share of traffic until
  // measured)": over many decisions, the unmeasured upstream gets about `exploration_share`, not more.
  it('exploration of an unmeasured upstream is bounded by exploration_share', () => {
    const clock = manualClock(1_000_000);
    const measured = new UpstreamStats(clock.now);
    for (let i = 0; i < 5; i++)
      measured.recordSuccess({ ttftMs: 500, totalMs: 500, outputTokens: 10, streamed: false });
    const fresh = new UpstreamStats(clock.now);
    const rnd = mulberry32(7);
    let explored = 0;
    const N = 4_000;
    for (let i = 0; i < N; i++) {
      for (const s of ['latency', 'hybrid'] as const) {
        const r = STRATEGIES[s](
          [view('p/m', 0, measured), view('p/u', 1, fresh)],
          ctx({ random: rnd, rotation: i }),
        );
        if (r[0]!.candidate.id === 'p/u') explored++;
      }
    }
    expect(explored / (2 * N)).toBeGreaterThan(0.07);
    expect(explored / (2 * N)).toBeLessThan(0.13);
  });

  // SPEC §2: "Every decision has a score in [0, 1] (1 = best ...)" and a reason with the raw figures.
  it('every score-based strategy scores in [0,1], the best exactly 1, over random statistics', () => {
    const rnd = mulberry32(42);
    for (let round = 0; round < 300; round++) {
      const n = 2 + Math.floor(rnd() * 4);
      const cands = Array.from({ length: n }, (_, i) => {
        const samples = Math.floor(rnd() * 8);
        const stats: UpstreamStatsView = {
          samples,
          ttftMs: samples ? 10 + rnd() * 2000 : undefined,
          latencyMs: samples ? 100 + rnd() * 5000 : undefined,
          tokensPerSec: samples && rnd() < 0.7 ? 1 + rnd() * 200 : undefined,
          meanOutputTokens: samples ? rnd() * 800 : undefined,
          successRate: rnd(),
          inFlight: Math.floor(rnd() * 5),
        };
        return view(`p/${i}`, i, stats, [rnd() * 20, rnd() * 60]);
      });
      for (const s of ['cost', 'latency', 'hybrid', 'least-busy'] as const) {
        const ranked = STRATEGIES[s](cands, ctx({ random: rnd, rotation: round }));
        expect(ranked).toHaveLength(n);
        for (const r of ranked) {
          expect(r.score, `${s}: ${r.reason}`).toBeGreaterThanOrEqual(0);
          expect(r.score, `${s}: ${r.reason}`).toBeLessThanOrEqual(1);
          expect(r.reason.length).toBeGreaterThan(0);
        }
        expect(Math.max(...ranked.map((r) => r.score)), s).toBe(1);
      }
    }
  });
});

describe('cost strategy (SPEC §2 `cost`)', () => {
  // SPEC §2 `cost`: "lowest expected cost: est. prompt tokens x input price + expected output tokens x
  // output price". A request with `n: 10` is billed for ten completions: its expected output is ten times
  // max_tokens, so input price is not weighed 10x too heavily and the upstream cheaper for it ranks first.
  it('n: 10 choices cost ten completions: the upstream cheaper for that request ranks first', async () => {
    const cheapIn = await sim('cheapin');
    const cheapOut = await sim('cheapout');
    const gw = track(
      await startGateway({
        providers: [
          // cheapin: $1 in / $10 out per Mtok; cheapout: $5 in / $2 out.
          simProvider('cheapin', cheapIn.url, [
            { name: 'm', price: { input_per_mtok: 1, output_per_mtok: 10 } },
          ]),
          simProvider('cheapout', cheapOut.url, [
            { name: 'm', price: { input_per_mtok: 5, output_per_mtok: 2 } },
          ]),
        ],
        routes: { c: { strategy: 'cost', targets: ['cheapin/m', 'cheapout/m'] } },
      }),
    );
    // ~1,000 prompt tokens, 100 output tokens per choice, 10 choices: 1,000 output tokens billed.
    // cheapin: 1000 x 1 + 1000 x 10 = $11,000/M; cheapout: 1000 x 5 + 1000 x 2 = $7,000/M.
    const text = 'hello '.repeat(840);
    const r = await post(
      gw,
      { model: 'c', messages: [{ role: 'user', content: text }], max_tokens: 100, n: 10 },
      {},
      '/router/explain',
    );
    expect(r.status, r.text).toBe(200);
    const cands = r.json.candidates as { upstream: string; reason: string }[];
    expect(cands[0]!.upstream, JSON.stringify(cands)).toBe('cheapout/m');
  });
});

// ---------------------------------------------------------------------------------------------------------
// tiers and the LLM router

describe('tiers and the LLM router (SPEC §2 "Tiers and the LLM router")', () => {
  // SPEC §2: the LLM router "is cached by prompt hash". The router's prompt says how many tokens the
  // request has (router-prompt.ts buildRouterPrompt: "prompt tokens (estimated): N"), so a 10,000-token
  // conversation ending in the same last messages as a short one is another prompt: the router is asked
  // again rather than the short one's cached tier given without the router ever seeing its size.
  it('the router cache is keyed by the whole router prompt: a much longer conversation is asked again', async () => {
    const routerCalls: number[] = [];
    const rt = track(
      await startRecordingMock((body, _n, res: ServerResponse) => {
        if (isRouterCall(body)) {
          const user = (body.messages as { content: string }[])[1]!.content;
          const tokens = Number(/prompt tokens \(estimated\): (\d+)/.exec(user)?.[1] ?? 0);
          routerCalls.push(tokens);
          const tier = tokens > 2_000 ? 'deep' : 'fast';
          sendJson(res, 200, completion(`{"tier": "${tier}", "reason": "${tokens} tokens"}`));
        } else {
          sendJson(res, 200, completion('fast answer'));
        }
      }),
    );
    const bal = await sim('bal');
    const deep = await sim('deep');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m'], { timeouts: RELAXED }),
          simProvider('bal', bal.url, ['m']),
          simProvider('deep', deep.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    const tail = [
      { role: 'assistant', content: 'Hello, how can I help?' },
      { role: 'user', content: 'I will paste the material.' },
      { role: 'assistant', content: 'Ready.' },
      { role: 'user', content: 'Now summarise everything I sent, section by section.' },
    ];
    const short = await post(gw, { model: 'auto', messages: tail });
    expect(short.status, short.text).toBe(200);
    expect(short.headers['x-router-tier']).toBe('fast');
    const material = 'The quarterly report covers revenue, costs and outlook in detail. '.repeat(700);
    const long = await post(gw, {
      model: 'auto',
      messages: [{ role: 'user', content: material }, { role: 'assistant', content: 'Noted.' }, ...tail],
    });
    expect(long.status, long.text).toBe(200);
    expect(routerCalls, 'the router saw the long conversation').toHaveLength(2);
    expect(long.headers['x-router-tier']).toBe('deep');
  });

  // SPEC §2 Failover: the list is tried "within routing.total_timeout_ms"; the LLM router's call is part
  // of the request, bounded by the request's own deadline as well as by router.timeout_ms: with the router
  // hanging, a request set to 400 ms does not take the router's 1,500 ms.
  it('a hanging LLM router cannot hold a request past routing.total_timeout_ms', async () => {
    const rt = await sim('rt', { hang: true });
    const bal = await sim('bal');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m'], { timeouts: RELAXED }),
          simProvider('bal', bal.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 1500, cache_ttl_s: 60 },
          },
        },
        routing: { total_timeout_ms: 400 },
      }),
    );
    const r = await post(gw, { model: 'auto', messages: [{ role: 'user', content: 'which tier?' }] });
    expect(r.ms, `status ${r.status} after ${Math.round(r.ms)} ms: ${r.text}`).toBeLessThan(1000);
  });

  // SPEC §2 circuit breaker counts upstream failures; README (Tiers): "one merely cut off by the
  // router's timeout_ms may still serve it". An attempt cut by the request's own budget (the router's
  // timeout_ms here, also routing.total_timeout_ms) is no timeout of the upstream's: a healthy upstream a
  // bit slower than the router's 100 ms budget keeps its breaker closed through two tied requests, and
  // still serves requests pinned to its tier.
  it("attempts cut by the LLM router's own timeout_ms do not open a healthy upstream's breaker", async () => {
    const rt = await sim('rt', { latencyMs: 300 });
    const bal = await sim('bal');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m'], { timeouts: RELAXED }),
          simProvider('bal', bal.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 100, cache_ttl_s: 60 },
          },
        },
        circuit_breaker: { failure_threshold: 2, open_ms: 30_000 },
      }),
    );
    for (const q of ['first question', 'second question']) {
      const r = await post(gw, { model: 'auto', messages: [{ role: 'user', content: q }] });
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-tier']).toBe('balanced');
    }
    // Both router calls reached rt/m and were cut there (else its breaker had nothing to count).
    expect(rt.requests).toHaveLength(2);
    const pinned = await post(
      gw,
      { model: 'auto', messages: [{ role: 'user', content: 'third' }] },
      { 'x-router-tier': 'fast' },
    );
    const br = await breakerOf(gw, 'rt/m');
    expect(pinned.status, `${pinned.text} breaker ${JSON.stringify(br)}`).toBe(200);
    expect(br.state).toBe('closed');
  });

  // SPEC §2: "ties are broken by rotation, never by array order alone"; `round-robin` "rotates evenly
  // across healthy candidates". Each tier rotates on its own, so when a client alternates tiers (an agent's
  // plan/act loop) the requests of one tier still spread over its upstreams, not all to the same one.
  it('round-robin within a tier rotates even when requests alternate between tiers', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const c = await sim('c');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, ['m']),
          simProvider('b', b.url, ['m']),
          simProvider('c', c.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'round-robin',
            tiers: { fast: ['a/m', 'b/m'], deep: ['c/m'] },
            default_tier: 'deep',
          },
        },
      }),
    );
    const fastProviders: string[] = [];
    for (let i = 0; i < 6; i++) {
      const f = await post(
        gw,
        { model: 'auto', messages: [{ role: 'user', content: 'act' }] },
        { 'x-router-tier': 'fast' },
      );
      expect(f.status, f.text).toBe(200);
      fastProviders.push(f.headers['x-router-provider']!);
      const d = await post(
        gw,
        { model: 'auto', messages: [{ role: 'user', content: 'plan' }] },
        { 'x-router-tier': 'deep' },
      );
      expect(d.status, d.text).toBe(200);
    }
    expect(new Set(fastProviders), fastProviders.join(',')).toEqual(new Set(['a', 'b']));
  });
});

// ---------------------------------------------------------------------------------------------------------
// circuit breaker and failover

describe('circuit breaker (SPEC §2 "Circuit breaker")', () => {
  const CFG = {
    failure_threshold: 2,
    open_ms: 1_000,
    max_open_ms: 4_000,
    half_open_probes: 1,
    success_threshold: 2,
  };

  // SPEC §2: open_ms "doubled on each re-open up to max_open_ms"; a 429 with Retry-After "opens it for
  // exactly that long (... it does not double open_ms)"; a close starts again from open_ms.
  it('doubling, cap, rate-limit cooldown without doubling, and reset after closing', () => {
    const clock = manualClock(0);
    const br = new CircuitBreaker(CFG, clock.now);
    const fail = () => br.onFailure(br.acquire()!, 'error');
    fail();
    fail();
    expect(br.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: 1_000 });
    const reopen = (expectMs: number) => {
      clock.advance(br.msUntilHalfOpen());
      fail();
      expect(br.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: expectMs });
    };
    reopen(2_000);
    reopen(4_000);
    reopen(4_000); // capped
    // A probe rate-limited for 700 ms: exactly 700 ms, backoff unchanged.
    clock.advance(br.msUntilHalfOpen());
    br.onRateLimit(br.acquire()!, 700);
    expect(br.snapshot()).toMatchObject({
      state: 'open',
      msUntilHalfOpen: 700,
      tripCause: 'rate_limit',
      openMs: 4_000,
    });
    // Close (two probe successes), then a fault opens for open_ms again.
    clock.advance(700);
    br.onSuccess(br.acquire()!);
    br.onSuccess(br.acquire()!);
    expect(br.state).toBe('closed');
    fail();
    fail();
    expect(br.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: 1_000 });
    // A closed breaker hit by a 429 with Retry-After: open exactly that long, open_ms not doubled.
    const br2 = new CircuitBreaker(CFG, clock.now);
    br2.onRateLimit(br2.acquire()!, 2_500);
    expect(br2.snapshot()).toMatchObject({ state: 'open', msUntilHalfOpen: 2_500, openMs: 1_000 });
  });

  // SPEC §2: open "for open_ms (default 30 000), doubled on each re-open up to max_open_ms"; SPEC §3
  // reload keeps breakers "of upstreams that remain", with their earned backoff, but never below the new
  // open_ms: after a reload from open_ms 1 s to 30 s, a breaker that had opened once re-opens for at least
  // 30 s.
  it('after a reload that raises open_ms, a re-open lasts at least the new open_ms', () => {
    const clock = manualClock(0);
    const br = new CircuitBreaker({ ...CFG, open_ms: 1_000, max_open_ms: 300_000 }, clock.now);
    br.onFailure(br.acquire()!, 'error');
    br.onFailure(br.acquire()!, 'error');
    expect(br.msUntilHalfOpen()).toBe(1_000);
    br.setConfig({ ...CFG, open_ms: 30_000, max_open_ms: 300_000 });
    clock.advance(1_000);
    br.onFailure(br.acquire()!, 'error'); // the probe fails: re-open
    expect(br.state).toBe('open');
    expect(br.msUntilHalfOpen()).toBeGreaterThanOrEqual(30_000);
  });

  // Retry-After: delay-seconds (decimals rounded up), HTTP-date, huge (capped at 24 h), negative or
  // garbage (ignored), past dates (0: an ordinary failure, not a 0 ms open); retry-after-ms preferred.
  it('Retry-After parsing', () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter(' 1.1 ', now)).toBe(1_100);
    expect(parseRetryAfter('Tue, 01 Jan 2030 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Mon, 31 Dec 2029 23:59:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('99999999999999999999', now)).toBe(86_400_000);
    expect(parseRetryAfter('-5', now)).toBeUndefined();
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter('', now)).toBeUndefined();
    expect(retryAfterFromHeaders({ 'retry-after-ms': '250', 'retry-after': '9' }, now)).toBe(250);
    expect(retryAfterFromHeaders({ 'retry-after-ms': 'x', 'retry-after': '9' }, now)).toBe(9_000);
    const br = new CircuitBreaker(CFG, () => now);
    br.onRateLimit(br.acquire()!, parseRetryAfter('Mon, 31 Dec 2029 23:59:00 GMT', now));
    expect(br.state).toBe('closed');
  });

  // SPEC §2 half-open: "at most half_open_probes concurrent trial requests"; SPEC §8: a client that
  // disconnects gets its upstream request aborted. A probe whose client left must give its slot back, or the
  // upstream would stay half-open with its only probe slot taken forever.
  it('a half-open probe aborted by its client frees the probe slot', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'], { timeouts: RELAXED }), simProvider('b', b.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
        circuit_breaker: { failure_threshold: 2, open_ms: 300, half_open_probes: 1, success_threshold: 1 },
      }),
    );
    const msg = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };
    await post(gw, msg);
    await post(gw, msg);
    expect((await breakerOf(gw, 'a/m')).state).toBe('open');
    a.set({ status: undefined, hang: true });
    await sleep((await breakerOf(gw, 'a/m')).ms_until_half_open + 30);
    const ac = new AbortController();
    const probe = post(gw, msg, {}, '/v1/chat/completions', ac.signal).catch((e: unknown) => e);
    await a.waitForRequests(3, 3000);
    expect((await breakerOf(gw, 'a/m')).probes_in_flight).toBe(1);
    ac.abort();
    await probe;
    await a.waitForAbort(3000);
    const deadline = performance.now() + 2000;
    while ((await breakerOf(gw, 'a/m')).probes_in_flight !== 0 && performance.now() < deadline)
      await sleep(10);
    expect(await breakerOf(gw, 'a/m')).toMatchObject({ state: 'half_open', probes_in_flight: 0 });
    a.set({ hang: false });
    const next = await post(gw, msg);
    expect(next.status).toBe(200);
    expect(next.headers['x-router-provider']).toBe('a');
    expect((await breakerOf(gw, 'a/m')).state).toBe('closed');
  });
});

describe('failover (SPEC §2 "Failover", §4 errors)', () => {
  // SPEC §4: "429 (with Retry-After when every candidate is rate limited)": the smallest cooldown, both
  // when the attempts were all 429s and, next, when every breaker is cooling down; each upstream tried once.
  it('every candidate rate limited gives 429 with the smallest Retry-After, then 429 from the breakers', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 7 });
    const b = await sim('b', { status: 429, retryAfterS: 3 });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
        routing: { max_attempts: 5 },
      }),
    );
    const msg = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };
    const first = await post(gw, msg);
    expect(first.status, first.text).toBe(429);
    expect(first.headers['retry-after']).toBe('3');
    expect(first.headers['x-router-trail']).toBe('a/m=http_429,b/m=http_429');
    expect(first.headers['x-router-attempts']).toBe('2');
    expect(a.requests).toHaveLength(1);
    expect(b.requests).toHaveLength(1);
    const second = await post(gw, msg);
    expect(second.status, second.text).toBe(429);
    expect(Number(second.headers['retry-after'])).toBeGreaterThanOrEqual(2);
    expect(Number(second.headers['retry-after'])).toBeLessThanOrEqual(3);
    expect(a.requests.length + b.requests.length).toBe(2);
  });

  // SPEC §2: "at most routing.max_attempts distinct upstreams"; the trail names each failed attempt
  // with its reason; failovers are counted from the provider left, with its reason.
  it('max_attempts bounds the distinct upstreams tried, and the trail and failover metric say why', async () => {
    const a = await sim('a', { status: 503 });
    const b = await sim('b', { status: 500 });
    const c = await sim('c');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, ['m']),
          simProvider('b', b.url, ['m']),
          simProvider('c', c.url, ['m']),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m', 'c/m'] } },
        routing: { max_attempts: 2 },
      }),
    );
    const r = await post(gw, { model: 'r', messages: [{ role: 'user', content: 'hi' }] });
    expect(r.status, r.text).toBe(502);
    expect(r.headers['x-router-trail']).toBe('a/m=http_503,b/m=http_500');
    expect(c.requests).toHaveLength(0);
    const metrics = await (await request(`${gw.url}/metrics`)).body.text();
    expect(metrics).toContain('llm_router_failovers_total{route="r",from_provider="a",reason="error"} 1');
    expect(metrics).not.toContain('from_provider="b"');
  });
});

describe('Retry-After in the asctime form is GMT whatever the host zone (RFC 9110 §5.6.7)', () => {
  // The asctime form names no zone and means GMT: read in the host's zone, the cooldown would be off by the
  // zone's offset on any host not set to UTC, so the test runs under another zone.
  it('parses "Sun Nov  6 08:49:37 1994" as GMT under TZ=America/New_York', () => {
    const saved = process.env.TZ;
    process.env.TZ = 'America/New_York';
    try {
      const now = Date.UTC(1994, 10, 6, 8, 49, 30);
      expect(parseRetryAfter('Sun Nov  6 08:49:37 1994', now)).toBe(7_000);
    } finally {
      if (saved === undefined) delete process.env.TZ;
      else process.env.TZ = saved;
    }
  });
});
