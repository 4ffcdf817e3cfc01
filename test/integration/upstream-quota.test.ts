import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { quotaUsed, upstreamAt } from '../helpers/resilience-harness.js';
import { dig, postChat, postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, refuseAsOpenAI, refusedAsGpt5, startMock } from '../helpers/mock-upstream.js';
import { scrape, select, value } from '../helpers/prom-text.js';

/**
 * A deployment's per-minute budget (`rpm`, `tpm` on a model): an upstream with no room for one more request,
 * or for this request's tokens (its prompt and max_tokens, settled to the usage it reports), is left out of
 * the plan, so traffic moves to the route's other upstreams before the provider answers 429. It is no fault:
 * no attempt, no breaker charge, nothing in the trail. When no upstream has room the client gets 429 with
 * the seconds until one has. Concurrent requests are counted as they are sent, not as they are planned; a
 * reload keeps the count; /router/status shows the window.
 * - the window counts every request the provider received, and the tokens it was sent: a body sent again
 *   fitted to a refused field is a second request; an attempt the provider accepted and was then cut off
 *   (first-byte timeout) still used its prompt;
 * - the tokens are settled to what the upstream reports whatever its dialect (Anthropic, embeddings);
 * - a request refused as past one upstream's context window, whose larger-window upstream is only at its
 *   per-minute limit, is told to come back (429 + Retry-After), not that its prompt is too long;
 * - every strategy, a pinned provider, a `provider/model` name and the LLM router's own calls respect the
 *   budget; a router upstream at its limit sends the request to default_tier, never to a 429;
 * - a budget that is no finite positive whole number is refused with its YAML path.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 5_000_000;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

function config(a: Simulator, b: Simulator | undefined, limits: Json, strategy = 'priority'): Json {
  return {
    server: { host: '127.0.0.1', port: 0 },
    providers: [
      simProvider('a', a.url, [{ name: 'm', ...limits }]),
      ...(b ? [simProvider('b', b.url, ['m'])] : []),
    ],
    routes: { main: { strategy, targets: b ? ['a/m', 'b/m'] : ['a/m'] } },
  };
}

async function gateway(cfg: Json, now?: () => number): Promise<TestGateway> {
  return track(await startGateway(cfg, now ? { now } : {}));
}

const ask = (extra: Json = {}, model = 'main'): Json => ({
  model,
  messages: [{ role: 'user', content: 'hello there' }],
  ...extra,
});

describe('per-minute budgets (rpm, tpm)', () => {
  it('sends the requests past a deployment rpm to the next upstream, with no attempt, trail or breaker charge', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const gw = await gateway(config(a, b, { rpm: 2 }));
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await postChat(gw, ask());
      expect(r.status).toBe(200);
      expect(r.headers['x-router-attempts']).toBe('1');
      expect(r.headers['x-router-trail'] ?? '').toBe('');
      served.push(r.headers['x-router-provider']!);
    }
    expect(served).toEqual(['a', 'a', 'b', 'b']);
    expect(a.requests).toHaveLength(2);
    // The plan leaves it out, as /router/explain shows.
    const explain = await fetch(`${gw.url}/router/explain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(ask()),
    });
    const explained = (await explain.json()) as { candidates: Json[]; excluded: Json[] };
    expect(explained.candidates.map((c) => c.upstream)).toEqual(['b/m']);
    expect(explained.excluded).toEqual([
      {
        upstream: 'a/m',
        reason: expect.stringMatching(
          /^at its per-minute budget \(2\/2 requests, \d+ tokens in the last 60 s\): room in (59|60) s$/,
        ),
      },
    ]);
    const s = await upstreamAt(gw.url, 'a/m');
    expect(dig(s, 'breaker', 'state')).toBe('closed');
    expect(dig(s, 'quota')).toMatchObject({ rpm: 2, requests_last_minute: 2 });
    const samples = await scrape(gw.url);
    const attempts = (outcome: string): number | undefined =>
      value(samples, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome });
    expect(attempts('success')).toBe(2);
    expect(attempts('rate_limited') ?? 0).toBe(0);
    expect(select(samples, 'llm_router_failovers_total')).toHaveLength(0);
    // The window as a gauge, beside the configured limit; only the kinds configured.
    const quota = { provider: 'a', model: 'm', kind: 'requests' };
    expect(value(samples, 'llm_router_quota_used', quota)).toBe(2);
    expect(value(samples, 'llm_router_quota_limit', quota)).toBe(2);
    expect(select(samples, 'llm_router_quota_used', { kind: 'tokens' })).toHaveLength(0);
    expect(select(samples, 'llm_router_quota_limit', { provider: 'b' })).toHaveLength(0);
  });

  it('answers 429 with the seconds until a slot frees when every upstream is at its limit, and serves again then', async () => {
    const clock = fakeClock();
    const a = await sim('a');
    const gw = await gateway(config(a, undefined, { rpm: 2 }), clock.now);
    expect((await postChat(gw, ask())).status).toBe(200);
    clock.advance(20_000);
    expect((await postChat(gw, ask())).status).toBe(200);
    clock.advance(5_000);
    const refused = await postChat(gw, ask());
    expect(refused.status).toBe(429);
    // The first request leaves the 60 s window 35 s from now.
    expect(refused.headers['retry-after']).toBe('35');
    expect(dig(refused.json, 'error', 'type')).toBe('rate_limit_error');
    expect(String(dig(refused.json, 'error', 'message'))).toContain('rpm/tpm');
    expect(a.requests).toHaveLength(2);
    // The OpenAI SDK sees a RateLimitError (its retries off: it would wait out Retry-After).
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    await expect(
      client.chat.completions.create({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
    ).rejects.toBeInstanceOf(OpenAI.RateLimitError);
    clock.advance(35_000);
    expect((await postChat(gw, ask())).status).toBe(200);
    expect(a.requests).toHaveLength(3);
  });

  it('counts tokens against tpm as reported: a request that needs more than is left goes elsewhere', async () => {
    const [a, b] = [await sim('a', { completionTokens: 8 }), await sim('b')];
    const gw = await gateway(config(a, b, { tpm: 300 }));
    const first = await postChat(gw, ask());
    expect(first.headers['x-router-provider']).toBe('a');
    const reported =
      Number(dig(first.json, 'usage', 'prompt_tokens')) +
      Number(dig(first.json, 'usage', 'completion_tokens'));
    // The estimate taken when it was sent is replaced by what the upstream reported.
    expect(dig(await upstreamAt(gw.url, 'a/m'), 'quota', 'tokens_last_minute')).toBe(reported);
    // A max_tokens that would pass the budget is not sent there; a small one still is.
    const big = await postChat(gw, ask({ max_tokens: 300 - reported }));
    expect(big.headers['x-router-provider']).toBe('b');
    const small = await postChat(gw, ask({ max_tokens: 50 }));
    expect(small.headers['x-router-provider']).toBe('a');
  });

  it('counts concurrent requests as they are sent: a burst planned at once overruns no rpm', async () => {
    const [a, b] = [await sim('a', { latencyMs: 150 }), await sim('b', { latencyMs: 150 })];
    const gw = await gateway(config(a, b, { rpm: 3 }));
    const all = await Promise.all(Array.from({ length: 8 }, () => postChat(gw, ask())));
    expect(all.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(all.filter((r) => r.headers['x-router-provider'] === 'a')).toHaveLength(3);
    expect(a.requests).toHaveLength(3);
    expect(b.requests).toHaveLength(5);
  });

  it('skips an upstream filled since the plan was made when it fails over to it', async () => {
    const [a, b] = [await sim('a'), await sim('b', { latencyMs: 150, status: 500 })];
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [simProvider('b', b.url, ['m']), simProvider('a', a.url, [{ name: 'm', rpm: 1 }])],
      routes: { main: { strategy: 'priority', targets: ['b/m', 'a/m'] } },
    });
    // Planned [b, a]; while b takes its time to fail, a pinned request takes a's one slot.
    const failing = postChat(gw, ask());
    await new Promise((r) => setTimeout(r, 50));
    const pinned = await postChat(gw, ask(), { headers: { 'x-router-provider': 'a' } });
    expect(pinned.status).toBe(200);
    const r = await failing;
    expect(r.status).toBe(502);
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(a.requests).toHaveLength(1);
  });

  it('counts a stream, and a stream past the limit is served by the next upstream', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const gw = await gateway(config(a, b, { rpm: 1 }));
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const providers: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { data, response } = await client.chat.completions
        .create({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] })
        .withResponse();
      let text = '';
      for await (const chunk of data) text += chunk.choices[0]?.delta?.content ?? '';
      expect(text.length).toBeGreaterThan(0);
      providers.push(response.headers.get('x-router-provider') ?? '');
    }
    expect(providers).toEqual(['a', 'b']);
  });

  it('keeps the count over a reload that keeps the upstream, and starts anew when it moves to another server', async () => {
    const [a, b, a2] = [await sim('a'), await sim('b'), await sim('a2')];
    const gw = await gateway(config(a, b, { rpm: 1 }));
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    gw.gateway.reload(parseConfigText(JSON.stringify(config(a, b, { rpm: 1 })), {}));
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('b');
    gw.gateway.reload(parseConfigText(JSON.stringify(config(a, b, { rpm: 2 }))));
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    gw.gateway.reload(parseConfigText(JSON.stringify(config(a2, b, { rpm: 1 }))));
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    expect(a2.requests).toHaveLength(1);
    gw.gateway.reload(parseConfigText(JSON.stringify(config(a2, b, {}))));
    expect(dig(await upstreamAt(gw.url, 'a/m'), 'quota')).toBeUndefined();
    expect(select(await scrape(gw.url), 'llm_router_quota_used')).toHaveLength(0);
  });
});

function twoSims(a: Simulator, b: Simulator, limits: Json, strategy = 'priority'): Json {
  return {
    server: { host: '127.0.0.1', port: 0 },
    providers: [simProvider('a', a.url, [{ name: 'm', ...limits }]), simProvider('b', b.url, ['m'])],
    routes: { main: { strategy, targets: ['a/m', 'b/m'] } },
  };
}

describe('per-minute budgets: what the provider counts', () => {
  it('counts a body sent again, fitted to a field the upstream refused, as the second request it is', async () => {
    // A GPT-5-like deployment refuses max_tokens: the gateway resends the same attempt with
    // max_completion_tokens. The provider received (and counts against its rpm) two requests.
    const up = track(
      await startMock((r, res) => {
        if (refusedAsGpt5(r.body, res)) return;
        answerChat(res, r.body, 'ok');
      }),
    );
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [simProvider('a', up.url, [{ name: 'm', rpm: 10 }])],
      routes: { main: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await postChat(gw, ask({ max_tokens: 20 }));
    expect(r.status).toBe(200);
    expect(up.received).toHaveLength(2);
    expect((await quotaUsed(gw.url, 'a/m')).requests).toBe(up.received.length);
  });

  it('keeps the prompt an upstream was sent counted when its attempt times out before the first byte', async () => {
    const a = await sim('a', { hang: true });
    const b = await sim('b');
    const cfg = twoSims(a, b, { tpm: 100_000 });
    (cfg.providers as Json[])[0]!.timeouts = { first_byte_ms: 300 };
    const gw = await gateway(cfg);
    const r = await postChat(gw, ask({ max_tokens: 10 }));
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(a.requests).toHaveLength(1);
    const q = await quotaUsed(gw.url, 'a/m');
    expect(q.requests).toBe(1);
    // The provider read and processed the prompt: it is in its per-minute token count.
    expect(q.tokens).toBeGreaterThan(0);
  });
});

describe('per-minute budgets: settled to the usage reported', () => {
  it('settles an Anthropic upstream to its input + output tokens, JSON and streamed', async () => {
    const s = await sim('anth', { kind: 'anthropic', completionTokens: 5 });
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: s.url,
          api_key: 'sk-ant',
          models: [{ name: 'claude-haiku-4-5', tpm: 1_000_000 }],
        },
      ],
      routes: { main: { strategy: 'priority', targets: ['anth/claude-haiku-4-5'] } },
    });
    const first = await postChat(gw, ask({ max_tokens: 200 }));
    expect(first.status).toBe(200);
    const used1 = Number(dig(first.json, 'usage', 'total_tokens'));
    expect(used1).toBeGreaterThan(0);
    expect((await quotaUsed(gw.url, 'anth/claude-haiku-4-5')).tokens).toBe(used1);

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'main',
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 200,
      messages: [{ role: 'user', content: 'hello there' }],
    });
    let used2 = 0;
    for await (const c of stream) if (c.usage) used2 = c.usage.total_tokens;
    expect(used2).toBeGreaterThan(0);
    expect((await quotaUsed(gw.url, 'anth/claude-haiku-4-5')).tokens).toBe(used1 + used2);
  });

  it('counts embeddings to their reported usage and answers 429 rate_limit_error at an rpm', async () => {
    const e = await sim('e');
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [simProvider('e', e.url, [{ name: 'emb', capabilities: ['embeddings'], rpm: 1 }])],
      routes: { vec: { strategy: 'priority', targets: ['e/emb'] } },
    });
    const first = await postTo(
      `${gw.url}/v1/embeddings`,
      { model: 'vec', input: ['one two three', 'four five'] },
      { headers: { authorization: 'Bearer k' } },
    );
    expect(first.status).toBe(200);
    const reported = Number(dig(first.json, 'usage', 'total_tokens'));
    expect((await quotaUsed(gw.url, 'e/emb')).tokens).toBe(reported);
    const second = await postTo(
      `${gw.url}/v1/embeddings`,
      { model: 'vec', input: 'again' },
      { headers: { authorization: 'Bearer k' } },
    );
    expect(second.status).toBe(429);
    expect(dig(second.json, 'error', 'type')).toBe('rate_limit_error');
    expect(Number(second.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(second.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(e.requests).toHaveLength(1);
  });

  it('reserves max_tokens for each of n choices', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const gw = await gateway(twoSims(a, b, { tpm: 1000 }));
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    // 3 × 330 = 990 of output, the prompt and what the first used are past 1000: not sent to a; one choice is.
    const many = await postChat(gw, ask({ n: 3, max_tokens: 330 }));
    expect(many.status).toBe(200);
    expect(many.headers['x-router-provider']).toBe('b');
    const one = await postChat(gw, ask({ max_tokens: 330 }));
    expect(one.headers['x-router-provider']).toBe('a');
  });
});

describe('per-minute budgets: Retry-After', () => {
  it('gives the sooner of a quota and a real 429 cooldown, and keeps the cooling upstream off meanwhile', async () => {
    const clock = { t: 11_000_000 };
    const [a, b] = [await sim('a'), await sim('b', { status: 429, retryAfterS: 5 })];
    const gw = await gateway(twoSims(a, b, { rpm: 1 }), () => clock.t);
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    clock.t += 10_000;
    // a has room again in 50 s; b answers 429 Retry-After: 5.
    const first = await postChat(gw, ask());
    expect(first.status).toBe(429);
    expect(first.headers['retry-after']).toBe('5');
    expect(dig(first.json, 'error', 'type')).toBe('rate_limit_error');
    clock.t += 2_000;
    const second = await postChat(gw, ask());
    expect(second.status).toBe(429);
    expect(second.headers['retry-after']).toBe('3');
    expect(b.requests).toHaveLength(1);
    expect(a.requests).toHaveLength(1);
  });
});

describe('per-minute budgets: context-window failover', () => {
  const refuseTooLong = (res: ServerResponse): void =>
    refuseAsOpenAI(
      res,
      "This model's maximum context length is 1000 tokens.",
      'messages',
      'context_length_exceeded',
    );

  /** `small` (a 1,000-token window) before `big` (200,000, one request a minute) in route `main`. */
  const windows = (small: string, big: string, routes: Json = {}): Json => ({
    server: { host: '127.0.0.1', port: 0 },
    providers: [
      simProvider('small', small, [{ name: 'm', context_window: 1000 }]),
      simProvider('big', big, [{ name: 'm', context_window: 200_000, rpm: 1 }]),
    ],
    routes: { main: { strategy: 'priority', targets: ['small/m', 'big/m'] }, ...routes },
  });

  it('answers 429 with Retry-After, not context_length_exceeded, when the larger window is only at its rpm', async () => {
    const clock = { t: 9_000_000 };
    const small = track(await startMock((_r, res) => refuseTooLong(res)));
    const big = await sim('big');
    const gw = await gateway(windows(small.url, big.url), () => clock.t);
    // Another client takes big's one request of this minute.
    const pinned = await postChat(gw, ask(), { headers: { 'x-router-provider': 'big' } });
    expect(pinned.status).toBe(200);
    clock.t += 10_000;
    const r = await postChat(gw, ask());
    // The prompt fits the route (big's window): the client should wait 50 s, not shorten it.
    expect(dig(r.json, 'error', 'code')).not.toBe('context_length_exceeded');
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('50');
    expect(big.requests).toHaveLength(1);
  });

  it('waits the same way for a larger window in another tier, or one filled while the refusal came', async () => {
    const clock = { t: 9_000_000 };
    // Slow to refuse: meanwhile another request takes big's slot (the plan had room in it).
    const small = track(await startMock((_r, res) => void setTimeout(() => refuseTooLong(res), 150)));
    const big = await sim('big');
    const auto = {
      strategy: 'priority',
      tiers: { fast: ['small/m'], deep: ['big/m'] },
      rules: [{ if: { max_prompt_tokens: 400 }, tier: 'fast' }],
      default_tier: 'deep',
    };
    const gw = await gateway(windows(small.url, big.url, { auto }), () => clock.t);
    // Filled after the plan: the failover passes big over at its limit.
    const refused = postChat(gw, ask());
    await new Promise((r) => setTimeout(r, 50));
    expect((await postChat(gw, ask(), { headers: { 'x-router-provider': 'big' } })).status).toBe(200);
    const first = await refused;
    expect(first.status).toBe(429);
    expect(first.headers['retry-after']).toBe('60');
    // The tiered route: fast refuses it, and deep's larger window is at its limit.
    clock.t += 30_000;
    const tiered = await postChat(gw, ask({}, 'auto'));
    expect(tiered.status).toBe(429);
    expect(tiered.headers['retry-after']).toBe('30');
    expect(big.requests).toHaveLength(1);
  });
});

describe('per-minute budgets: every way to address an upstream', () => {
  it.each(['cost', 'latency', 'hybrid', 'round-robin', 'weighted', 'least-busy'])(
    'strategy %s never sends past an rpm',
    async (strategy) => {
      const [a, b] = [await sim('a'), await sim('b')];
      const cfg = twoSims(a, b, { rpm: 1 }, strategy);
      const gw = await gateway(cfg);
      for (let i = 0; i < 4; i++) {
        const r = await postChat(gw, ask());
        expect(r.status).toBe(200);
        expect(r.headers['x-router-trail'] ?? '').toBe('');
      }
      expect(a.requests.length).toBeLessThanOrEqual(1);
      expect(a.requests.length + b.requests.length).toBe(4);
    },
  );

  it('answers a provider pinned at its limit, or its provider/model name, with 429 and Retry-After', async () => {
    const clock = { t: 7_000_000 };
    const [a, b] = [await sim('a'), await sim('b')];
    const gw = await gateway(twoSims(a, b, { rpm: 1 }), () => clock.t);
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('a');
    clock.t += 12_000;
    const pinned = await postChat(gw, ask(), { headers: { 'x-router-provider': 'a' } });
    expect(pinned.status).toBe(429);
    expect(pinned.headers['retry-after']).toBe('48');
    expect(dig(pinned.json, 'error', 'type')).toBe('rate_limit_error');
    const direct = await postChat(gw, ask({}, 'a/m'));
    expect(direct.status).toBe(429);
    expect(direct.headers['retry-after']).toBe('48');
    expect(dig(direct.json, 'error', 'type')).toBe('rate_limit_error');
    expect(a.requests).toHaveLength(1);
    // The route as a whole still serves.
    expect((await postChat(gw, ask())).headers['x-router-provider']).toBe('b');
  });

  it('counts the LLM router call, and a router upstream at its limit sends the request to default_tier', async () => {
    const r = await sim('r', { reply: '{"tier":"fast","reason":"short"}', completionTokens: 1 });
    const b = await sim('b');
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [simProvider('r', r.url, [{ name: 'm', rpm: 1 }]), simProvider('b', b.url, ['m'])],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['r/m'], balanced: ['b/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 2000 },
        },
      },
    });
    const q = (text: string): Json => ({ model: 'auto', messages: [{ role: 'user', content: text }] });
    // The router's call took r's one request: the fast tier it picked has no room, default_tier serves.
    const first = await postChat(gw, q('first question'));
    expect(first.status).toBe(200);
    expect(first.headers['x-router-provider']).toBe('b');
    expect(r.requests).toHaveLength(1);
    expect((await quotaUsed(gw.url, 'r/m')).requests).toBe(1);
    // No router upstream has room: no router call, default_tier, never a 429.
    const second = await postChat(gw, q('another question entirely'));
    expect(second.status).toBe(200);
    expect(second.headers['x-router-provider']).toBe('b');
    expect(second.headers['x-router-tier']).toBe('balanced');
    expect(r.requests).toHaveLength(1);
  });
});

describe('per-minute budgets: config', () => {
  const yaml = (v: string): string =>
    [
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:1/v1',
      '    models:',
      '      - name: m',
      `        ${v}`,
      'routes: { main: { targets: [a/m] } }',
    ].join('\n');

  it('refuses a budget that is not a finite positive whole number, naming its path', () => {
    for (const bad of [
      'rpm: 0',
      'tpm: 1.5',
      'tpm: -3',
      'rpm: 1e400',
      'tpm: .inf',
      'rpm: "1e400"',
      'tpm: ten',
      'rpm: true',
      'tpm: [1]',
    ])
      expect(() => parseConfigText(yaml(bad), {}), bad).toThrow(/providers\[0\]\.models\[0\]\.(rpm|tpm)/);
    expect(() => parseConfigText(yaml('tpm: "${TPM}"'), { TPM: '90000' })).not.toThrow();
  });

  it('routes normally under a huge budget', async () => {
    const a = await sim('a');
    const gw = await gateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [
        simProvider('a', a.url, [{ name: 'm', rpm: Number.MAX_SAFE_INTEGER, tpm: Number.MAX_SAFE_INTEGER }]),
      ],
      routes: { main: { strategy: 'priority', targets: ['a/m'] } },
    });
    for (let i = 0; i < 3; i++) expect((await postChat(gw, ask({ max_tokens: 1e6 }))).status).toBe(200);
    expect((await quotaUsed(gw.url, 'a/m')).requests).toBe(3);
    expect(dig(await upstreamAt(gw.url, 'a/m'), 'quota', 'tpm')).toBe(Number.MAX_SAFE_INTEGER);
  });
});
