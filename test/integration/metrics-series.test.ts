/**
 * What /metrics counts (SPEC §5, README "Metrics") for each way a request can end: stream failover, 429 from
 * every candidate, every breaker open, the total timeout, a client leaving before or after the commit, a stream
 * cut after the commit, JSON and embeddings answers, a direct provider/model request; the LLM router's own
 * metrics; the overhead histogram, and admin reads kept out of the counters; and the series a reload removes
 * with its upstream. Each gateway is fresh, so counts are exact.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';
import { parseProm, scrape, select, value, type Sample } from '../helpers/prom-text.js';
import { reload } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

async function sim(name: string, o: Partial<SimOptions> = {}) {
  return track(await startSimulator({ name, ...o }));
}

async function chat(
  gw: TestGateway,
  model: string,
  extra: Record<string, unknown> = {},
  signal?: AbortSignal,
) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      messages: [{ role: 'user', content: 'Tell me about metrics.' }],
      ...extra,
    }),
    signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, text, headers: res.headers };
}

/** Scrape once the request lines are written (they go at the end of the turn). */
async function settle(gw: TestGateway, n: number): Promise<Sample[]> {
  await until('lines', () => gw.logs.filter((l) => l.msg === 'request').length >= n, 3000);
  await sleep(20);
  return scrape(gw.url);
}

const P = { input_per_mtok: 1, output_per_mtok: 2 };
const REQ = 'llm_router_requests_total';
const ATT = 'llm_router_upstream_attempts_total';
const FO = 'llm_router_failovers_total';
const TOK = 'llm_router_tokens_total';
const INF = 'llm_router_inflight_requests';
const DUR = 'llm_router_request_duration_seconds_count';
const lines = (gw: TestGateway) => gw.logs.filter((l) => l.msg === 'request');

describe('requests, attempts, failovers', () => {
  it('stream failover before commit: one failover, attempts per upstream, tokens only on the server', async () => {
    const bad = await sim('bad', { status: 500 });
    const ok = await sim('ok', { completionTokens: 6, usage: false });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('bad', bad.url, [{ name: 'm', price: P }]),
          simProvider('ok', ok.url, [{ name: 'm', price: P }]),
        ],
        routes: { fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] } },
      }),
    );
    const r = await chat(gw, 'fo', { stream: true });
    expect(r.status).toBe(200);
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'fo', provider: 'ok', model: 'm', status: '200' })).toBe(1);
    expect(select(s, REQ)).toHaveLength(1);
    expect(value(s, DUR, { route: 'fo', provider: 'ok', model: 'm', stream: 'true' })).toBe(1);
    expect(value(s, FO, { route: 'fo', from_provider: 'bad', reason: 'error' })).toBe(1);
    expect(value(s, ATT, { provider: 'bad', model: 'm', outcome: 'error' })).toBe(1);
    expect(value(s, ATT, { provider: 'ok', model: 'm', outcome: 'success' })).toBe(1);
    expect(value(s, TOK, { provider: 'bad', model: 'm', kind: 'prompt' })).toBe(0);
    expect(value(s, TOK, { provider: 'ok', model: 'm', kind: 'completion' })).toBe(6); // counted, no usage sent
    expect(value(s, 'llm_router_time_to_first_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(1);
    expect(value(s, 'llm_router_time_per_output_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(
      1,
    );
    expect(value(s, INF, { provider: 'bad', model: 'm' })).toBe(0);
    expect(value(s, INF, { provider: 'ok', model: 'm' })).toBe(0);
  });

  it('429 from every candidate: status 429, one failover (the last failure is none), rate_limited attempts', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 1 });
    const b = await sim('b', { status: 429, retryAfterS: 1 });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])],
        routes: { rl: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      }),
    );
    const r = await chat(gw, 'rl');
    expect(r.status).toBe(429);
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'rl', provider: 'b', model: 'm', status: '429' })).toBe(1);
    expect(select(s, FO).reduce((n, x) => n + x.value, 0)).toBe(1);
    expect(value(s, ATT, { provider: 'a', model: 'm', outcome: 'rate_limited' })).toBe(1);
    expect(value(s, ATT, { provider: 'b', model: 'm', outcome: 'rate_limited' })).toBe(1);
    expect(value(s, TOK, { provider: 'b', model: 'm', kind: 'prompt' })).toBe(0);
  });

  it('every breaker open: 503 counted under provider none, no attempt', async () => {
    const a = await sim('a', { status: 500 });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
      }),
    );
    expect((await chat(gw, 'r')).status).toBe(502);
    await settle(gw, 1);
    const r = await chat(gw, 'r');
    expect(r.status).toBe(503);
    const s = await settle(gw, 2);
    expect(value(s, REQ, { route: 'r', provider: 'none', model: 'none', status: '503' })).toBe(1);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '502' })).toBe(1);
    expect(value(s, ATT, { provider: 'a', model: 'm', outcome: 'error' })).toBe(1);
  });

  it('total timeout: 504 with the status the client got, timeout attempt, inflight back to 0', async () => {
    const a = await sim('a', { hang: true });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        routing: { total_timeout_ms: 300 },
      }),
    );
    const r = await chat(gw, 'r', { stream: true });
    expect(r.status).toBe(504);
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '504' })).toBe(1);
    expect(value(s, DUR, { route: 'r', provider: 'a', model: 'm', stream: 'true' })).toBe(1);
    expect(value(s, ATT, { provider: 'a', model: 'm', outcome: 'timeout' })).toBe(1);
    expect(value(s, INF, { provider: 'a', model: 'm' })).toBe(0);
  });

  it('client leaves a stream before its commit: 499, no stream failure, inflight 0', async () => {
    const a = await sim('a', { hangAfterHeaders: true });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const ac = new AbortController();
    const p = chat(gw, 'r', { stream: true }, ac.signal).catch(() => undefined);
    await sleep(150);
    ac.abort();
    await p;
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '499' })).toBe(1);
    expect(select(s, 'llm_router_stream_failures_total').filter((x) => x.value > 0)).toHaveLength(0);
    expect(value(s, INF, { provider: 'a', model: 'm' })).toBe(0);
  });

  it('client leaves a stream after its commit: 200 kept, not a stream failure, inflight 0', async () => {
    const a = await sim('a', { completionTokens: 50, chunkDelayMs: 30 });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      signal: ac.signal,
    });
    expect(res.statusCode).toBe(200);
    await sleep(150);
    ac.abort();
    await res.body.text().catch(() => undefined);
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'r', provider: 'a', model: 'm', status: '200' })).toBe(1);
    expect(select(s, 'llm_router_stream_failures_total').filter((x) => x.value > 0)).toHaveLength(0);
    expect(value(s, INF, { provider: 'a', model: 'm' })).toBe(0);
  });

  it('cut after commit: completion tokens relayed are counted like the prompt estimate', async () => {
    const drop = await sim('drop', { dropAfterChunks: 2, completionTokens: 8, chunkDelayMs: 5 });
    const gw = track(
      await startGateway({
        providers: [simProvider('drop', drop.url, [{ name: 'm', price: P }])],
        routes: { cut: { strategy: 'priority', targets: ['drop/m'] } },
      }),
    );
    const r = await chat(gw, 'cut', { stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('"error"');
    const s = await settle(gw, 1);
    expect(
      value(s, 'llm_router_stream_failures_total', { provider: 'drop', model: 'm', policy: 'terminate' }),
    ).toBe(1);
    expect(value(s, REQ, { route: 'cut', provider: 'drop', model: 'm', status: '200' })).toBe(1);
    expect(value(s, ATT, { provider: 'drop', model: 'm', outcome: 'error' })).toBe(1);
    // SPEC §5 `llm_router_tokens_total | counter | provider, model, kind (prompt, completion)`; README Metrics:
    // "the upstream's usage ...; estimated when it reports none". The cut stream's prompt is charged (its
    // estimate, and its cost), and so are the two content deltas already relayed to the client: estimated
    // completion tokens, not 0.
    const prompt = value(s, TOK, { provider: 'drop', model: 'm', kind: 'prompt' }) ?? 0;
    const completion = value(s, TOK, { provider: 'drop', model: 'm', kind: 'completion' }) ?? 0;
    expect(prompt).toBeGreaterThan(0);
    expect(completion).toBeGreaterThan(0);
    // Its first token did reach the client: observed like a finished stream's (else a provider that cuts
    // every stream would show no TTFT at all), and the request line carries it.
    expect(value(s, 'llm_router_time_to_first_token_seconds_count', { provider: 'drop', model: 'm' })).toBe(
      1,
    );
    expect(value(s, 'llm_router_time_per_output_token_seconds_count', { provider: 'drop', model: 'm' })).toBe(
      1,
    );
    expect(lines(gw)[0]?.ttftMs).toEqual(expect.any(Number));
  });

  it('JSON answer: no TPOT (README: streams), TTFT once, durations in seconds', async () => {
    const a = await sim('a', { latencyMs: 400, completionTokens: 5 });
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    expect((await chat(gw, 'r')).status).toBe(200);
    const s = await settle(gw, 1);
    const sum = value(s, 'llm_router_request_duration_seconds_sum', {
      route: 'r',
      provider: 'a',
      model: 'm',
      stream: 'false',
    })!;
    expect(sum).toBeGreaterThan(0.3);
    expect(sum).toBeLessThan(5);
    const ttft = value(s, 'llm_router_time_to_first_token_seconds_sum', { provider: 'a', model: 'm' })!;
    expect(ttft).toBeGreaterThan(0.3);
    expect(ttft).toBeLessThan(5);
    expect(value(s, 'llm_router_overhead_seconds_sum', { route: 'r' })!).toBeLessThan(0.2);
    expect(
      value(s, 'llm_router_time_per_output_token_seconds_count', { provider: 'a', model: 'm' }),
    ).toBeUndefined();
  });

  it('direct provider/model request counts under its own route name', async () => {
    const a = await sim('a');
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    expect((await chat(gw, 'a/m')).status).toBe(200);
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'a/m', provider: 'a', model: 'm', status: '200' })).toBe(1);
    expect(
      value(s, 'llm_router_routing_decisions_total', { route: 'a/m', strategy: 'priority', provider: 'a' }),
    ).toBe(1);
  });

  it('embeddings: stream "false", prompt tokens, no TTFT/TPOT', async () => {
    const a = await sim('a');
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, [{ name: 'e', capabilities: ['embeddings'], price: P }])],
        routes: { emb: { strategy: 'priority', targets: ['a/e'] } },
      }),
    );
    const res = await request(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'emb', input: ['hello world', 'second'] }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.text();
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 'emb', provider: 'a', model: 'e', status: '200' })).toBe(1);
    expect(value(s, DUR, { route: 'emb', provider: 'a', model: 'e', stream: 'false' })).toBe(1);
    expect(value(s, TOK, { provider: 'a', model: 'e', kind: 'prompt' })!).toBeGreaterThan(0);
    expect(value(s, ATT, { provider: 'a', model: 'e', outcome: 'success' })).toBe(1);
  });
});

const RR = 'llm_router_llm_router_requests_total';
const RD = 'llm_router_llm_router_duration_seconds_count';

async function tiered(router: Partial<SimOptions>, routerCfg: Record<string, unknown> = {}) {
  return tieredOn(await sim('router', router), routerCfg);
}

async function tieredOn(rsim: Simulator, routerCfg: Record<string, unknown> = {}) {
  const bal = await sim('bal');
  const deep = await sim('deep');
  return track(
    await startGateway({
      providers: [
        simProvider('router', rsim.url, [{ name: 'm', price: P }]),
        simProvider('bal', bal.url, ['m']),
        simProvider('deep', deep.url, ['m']),
      ],
      routes: {
        t: {
          strategy: 'priority',
          tiers: { fast: ['router/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 2000, ...routerCfg },
        },
      },
    }),
  );
}

describe('LLM router metrics', () => {
  it('chosen then cached: one call observed, the cached one counted with the tier it got', async () => {
    const gw = await tiered({ reply: '{"tier":"deep","reason":"hard"}', completionTokens: 3 });
    expect((await chat(gw, 't')).headers['x-router-tier']).toBe('deep');
    expect((await chat(gw, 't')).headers['x-router-tier']).toBe('deep');
    const s = await settle(gw, 2);
    expect(value(s, RR, { tier: 'deep', outcome: 'chosen' })).toBe(1);
    expect(value(s, RR, { tier: 'deep', outcome: 'cached' })).toBe(1);
    expect(value(s, RD, { tier: 'fast' })).toBe(1);
    expect(value(s, REQ, { route: 't', provider: 'deep', model: 'm', status: '200' })).toBe(2);
    expect(value(s, ATT, { provider: 'router', model: 'm', outcome: 'success' })).toBe(1);
  });

  it('unparsable answer: default tier, outcome unparsable, duration observed', async () => {
    const gw = await tiered({ reply: 'I think deep', completionTokens: 3 });
    expect((await chat(gw, 't')).headers['x-router-tier']).toBe('balanced');
    const s = await settle(gw, 1);
    expect(value(s, RR, { tier: 'balanced', outcome: 'unparsable' })).toBe(1);
    expect(value(s, RD, { tier: 'fast' })).toBe(1);
  });

  it('router upstream error: default tier, outcome error; its attempt counted, the request served', async () => {
    const gw = await tiered({ status: 500 });
    const r = await chat(gw, 't');
    expect(r.status).toBe(200);
    const s = await settle(gw, 1);
    expect(value(s, RR, { tier: 'balanced', outcome: 'error' })).toBe(1);
    expect(value(s, ATT, { provider: 'router', model: 'm', outcome: 'error' })).toBe(1);
    expect(value(s, REQ, { route: 't', provider: 'bal', model: 'm', status: '200' })).toBe(1);
    expect(select(s, FO).reduce((n, x) => n + x.value, 0)).toBe(0);
  });

  it('router timeout: outcome timeout, duration in seconds, inflight back to 0', async () => {
    const gw = await tiered({ hang: true }, { timeout_ms: 300 });
    const r = await chat(gw, 't');
    expect(r.status).toBe(200);
    const s = await settle(gw, 1);
    expect(value(s, RR, { tier: 'balanced', outcome: 'timeout' })).toBe(1);
    const sum = value(s, 'llm_router_llm_router_duration_seconds_sum', { tier: 'fast' })!;
    expect(sum).toBeGreaterThan(0.2);
    expect(sum).toBeLessThan(3);
    expect(value(s, INF, { provider: 'router', model: 'm' })).toBe(0);
  });

  it('a client that leaves while the router is asked: no router outcome (it got no tier), its 499 counted', async () => {
    const rsim = await sim('router', { hang: true });
    const gw = await tieredOn(rsim, { timeout_ms: 5000 });
    const ac = new AbortController();
    const left = chat(gw, 't', {}, ac.signal).catch(() => undefined);
    await rsim.waitForRequests(1, 3000);
    ac.abort();
    await rsim.waitForAbort(3000);
    await left;
    const s = await settle(gw, 1);
    expect(value(s, REQ, { route: 't', provider: 'none', model: 'none', status: '499' })).toBe(1);
    // The call was dropped with its only waiter: neither an `error` of the router's (it never failed) nor a
    // duration of a call that did not finish.
    expect(select(s, RR)).toHaveLength(0);
    expect(select(s, RD)).toHaveLength(0);
    // Nor is an upstream tried (or a decision counted) for a client already gone.
    expect(lines(gw)[0]).toMatchObject({ status: 499, attempts: 0, tier: 'balanced' });
    expect(select(s, 'llm_router_routing_decisions_total')).toHaveLength(0);
  });
});

describe('metrics (SPEC §5)', () => {
  // This block's own request helpers (a one-message "hi" chat; /metrics parsed).
  async function chat(gw: TestGateway, model: string, extra: Record<string, unknown> = {}) {
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...extra }),
    });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text };
  }

  async function metrics(gw: TestGateway) {
    return parseProm(await (await request(`${gw.url}/metrics`)).body.text());
  }

  it('llm_router_overhead_seconds of a request that ends in a 502 excludes the time spent waiting on upstreams', async () => {
    // SPEC §5: "llm_router_overhead_seconds | histogram | route (time the gateway itself added: total minus
    // time waiting on upstreams)". An upstream that takes 400 ms to answer 500 is upstream time, not ours.
    const up = track(
      await startMock(async (_req, res) => {
        await sleep(400);
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
      }),
    );
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const r = await chat(gw, 'r');
    expect(r.status).toBe(502);
    await sleep(50); // the report is written at the end of the turn
    const m = await metrics(gw);
    expect(value(m, 'llm_router_overhead_seconds_count', { route: 'r' })).toBe(1);
    const sum = value(m, 'llm_router_overhead_seconds_sum', { route: 'r' })!;
    expect(sum).toBeLessThan(0.2);
  });

  it('cached prompt tokens are charged at cached_input_per_mtok when it is set, at the input price when not', async () => {
    // OpenAI reports cache hits in usage.prompt_tokens_details.cached_tokens (Anthropic's cache reads come
    // translated to the same field); priced as fresh input, an agent's cost read several times too high.
    const usage = {
      prompt_tokens: 1000,
      completion_tokens: 100,
      prompt_tokens_details: { cached_tokens: 800 },
    };
    const up = track(
      await startMock((req, res) =>
        sendJson(res, 200, {
          id: 'c',
          object: 'chat.completion',
          created: 1,
          model: req.body.model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
          usage,
        }),
      ),
    );
    const model = (name: string, price: Record<string, number>) => ({ name, price });
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'p',
            base_url: `${up.url}/v1`,
            models: [
              model('cached', { input_per_mtok: 1, cached_input_per_mtok: 0.1, output_per_mtok: 2 }),
              model('plain', { input_per_mtok: 1, output_per_mtok: 2 }),
            ],
          },
        ],
        routes: {},
      }),
    );
    expect((await chat(gw, 'p/cached')).status).toBe(200);
    expect((await chat(gw, 'p/plain')).status).toBe(200);
    await until('lines', () => gw.logs.filter((l) => l.msg === 'request').length >= 2, 3000);
    const m = await metrics(gw);
    const cost = (name: string) => value(m, 'llm_router_cost_usd_total', { provider: 'p', model: name })!;
    expect(cost('cached')).toBeCloseTo((200 * 1 + 800 * 0.1 + 100 * 2) / 1e6, 12);
    expect(cost('plain')).toBeCloseTo((1000 * 1 + 100 * 2) / 1e6, 12);
    const line = gw.logs.find((l) => l.msg === 'request' && l.upstream === 'p/cached');
    expect(line?.costUsd).toBeCloseTo(480e-6, 12);
  });

  it('/router/explain is an admin read: not a request in the counters or the request log', async () => {
    // An explain calls no upstream: it is neither counted in llm_router_requests_total (route "none") nor
    // written as a request line (README: admin reads stay out of the request log and counters).
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    for (let i = 0; i < 3; i++) {
      const res = await request(`${gw.url}/router/explain`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    expect((await chat(gw, 'r')).status).toBe(200);
    await sleep(50);
    const text = await (await request(`${gw.url}/metrics`)).body.text();
    const counted = text.split('\n').filter((l) => l.startsWith('llm_router_requests_total{'));
    expect(counted).toHaveLength(1);
    expect(counted[0]).toMatch(/route="r".* 1$/);
    expect(gw.rawLogs()).not.toContain('/router/explain');
  });
});

describe('reload', () => {
  it('a removed upstream: its series leave /metrics (circuit_state at once, the rest once its requests are done)', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const both = {
      providers: [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['b/m', 'a/m'] } },
    };
    const gw = track(await startGateway(both));
    expect((await chat(gw, 'r')).status).toBe(200);
    await settle(gw, 1);
    gw.gateway.reload(
      parseConfigText(
        JSON.stringify({
          providers: [simProvider('a', a.url, ['m'])],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        }),
        {},
      ),
    );
    await until(
      'the old config retired',
      async () => select(await scrape(gw.url), INF, { provider: 'b' }).length === 0,
    );
    const s = await scrape(gw.url);
    // The breaker gauge goes (gateway.ts reload), and once the old config's requests are done every other
    // series of b/m (and of provider b, none of whose upstreams is left) goes too, so a reload that moves
    // upstreams does not grow /metrics with each one forever. a/m's stay.
    expect(select(s, 'llm_router_circuit_state', { provider: 'b' })).toHaveLength(0);
    expect(s.filter((x) => x.labels.provider === 'b' || x.labels.from_provider === 'b')).toEqual([]);
    expect(value(s, ATT, { provider: 'a', model: 'm', outcome: 'success' })).toBe(0);
    // SPEC §5 `llm_router_inflight_requests | gauge | provider, model` (README: label values come from the
    // configuration): b is no longer configured and nothing is in flight on it, so its gauge goes as
    // circuit_state does, rather than being scraped as 0 forever.
    expect(lines(gw)).toHaveLength(1);
    expect(select(s, INF, { provider: 'b' })).toHaveLength(0);
  });
});

describe('a reload removes a removed upstream’s metric series (memory backend)', () => {
  function cfgWith(url: string, models: string[]): Record<string, unknown> {
    const routes: Record<string, unknown> = { r1: { strategy: 'priority', targets: ['p/m1'] } };
    if (models.includes('m2')) routes.r2 = { strategy: 'priority', targets: ['p/m2'] };
    return { providers: [simProvider('p', url, models)], routes };
  }

  it('the last request still running on a removed upstream does not bring its series back once it ends', async () => {
    // README Metrics: "An upstream a reload removes takes its series with it (... the rest once the old
    // config's requests are done)". The old runtime is released, and the series removed, as the handler's
    // promise settles (the pool is reused, so that is at once), while the request's own count is written
    // after the turn (report.ts reportRequest): that late write does not create llm_router_requests_total /
    // request_duration of p/m2 again, to be exported forever.
    const sim = track(await startSimulator({ name: 'p', latencyMs: 700 }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    expect((await postChat(gw, { model: 'r1', messages: [{ role: 'user', content: 'x' }] })).status).toBe(
      200,
    );
    const inFlight = postChat(gw, { model: 'r2', messages: [{ role: 'user', content: 'y' }] });
    await until('the request reaches the upstream', () => sim.requests.length >= 2, 5_000);
    reload(gw, cfgWith(sim.url, ['m1'])); // p/m2 is gone; p/m1 (same provider: pool reused) stays
    expect((await inFlight).status).toBe(200);
    await sleep(300);
    const samples = await scrape(gw.url);
    const left = new Set(samples.filter((s) => s.labels.model === 'm2').map((s) => s.name));
    expect([...left]).toEqual([]);
    // p/m1 keeps its series.
    expect(
      value(samples, 'llm_router_requests_total', { route: 'r1', provider: 'p', model: 'm1', status: '200' }),
    ).toBe(1);
  });

  it('an upstream removed and re-added before the old config’s requests end keeps its series and counts', async () => {
    const sim = track(await startSimulator({ name: 'p', latencyMs: 700 }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    const inFlight = postChat(gw, { model: 'r2', messages: [{ role: 'user', content: 'y' }] });
    await until('the request reaches the upstream', () => sim.requests.length >= 1, 5_000);
    reload(gw, cfgWith(sim.url, ['m1'])); // removed...
    reload(gw, cfgWith(sim.url, ['m1', 'm2'])); // ...and back, while the first config still has a request
    expect((await inFlight).status).toBe(200);
    await sleep(300);
    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'p',
        model: 'm2',
        outcome: 'success',
      }),
    ).toBe(1);
    expect(
      value(samples, 'llm_router_requests_total', { route: 'r2', provider: 'p', model: 'm2', status: '200' }),
    ).toBe(1);
    expect(value(samples, 'llm_router_circuit_state', { provider: 'p', model: 'm2' })).toBe(0);
  });

  it('with no request in flight, a removed upstream’s series go and a kept one’s stay', async () => {
    const sim = track(await startSimulator({ name: 'p' }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    for (const model of ['r1', 'r2'])
      expect((await postChat(gw, { model, messages: [{ role: 'user', content: 'z' }] })).status).toBe(200);
    reload(gw, cfgWith(sim.url, ['m1']));
    await until('m2 series gone', async () => (await scrape(gw.url)).every((s) => s.labels.model !== 'm2'));
    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'p',
        model: 'm1',
        outcome: 'success',
      }),
    ).toBe(1);
    // The cached children were dropped: a request after the reload still counts (no lost increments).
    expect((await postChat(gw, { model: 'r1', messages: [{ role: 'user', content: 'w' }] })).status).toBe(
      200,
    );
    await sleep(50);
    expect(
      value(await scrape(gw.url), 'llm_router_requests_total', {
        route: 'r1',
        provider: 'p',
        model: 'm1',
        status: '200',
      }),
    ).toBe(2);
  });
});
