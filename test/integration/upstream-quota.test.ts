import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, select, value } from '../helpers/prom-text.js';

/**
 * A deployment's per-minute budget (`rpm`, `tpm` on a model): an upstream with no room for one more request,
 * or for this request's tokens (its prompt and max_tokens, settled to the usage it reports), is left out of
 * the plan, so traffic moves to the route's other upstreams before the provider answers 429. It is no fault:
 * no attempt, no breaker charge, nothing in the trail. When no upstream has room the client gets 429 with
 * the seconds until one has. Concurrent requests are counted as they are sent, not as they are planned; a
 * reload keeps the count; /router/status shows the window.
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

const ask = (extra: Json = {}): Json => ({
  model: 'main',
  messages: [{ role: 'user', content: 'hello there' }],
  ...extra,
});

async function status(gw: TestGateway, id: string): Promise<Json | undefined> {
  const res = await fetch(`${gw.url}/router/status`);
  const body = (await res.json()) as { upstreams: Json[] };
  return body.upstreams.find((u) => u.id === id);
}

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
    const candidates = ((await explain.json()) as { candidates: Json[] }).candidates;
    expect(candidates.map((c) => c.upstream)).toEqual(['b/m']);
    const s = await status(gw, 'a/m');
    expect(dig(s, 'breaker', 'state')).toBe('closed');
    expect(dig(s, 'quota')).toMatchObject({ rpm: 2, requests_last_minute: 2 });
    const samples = await scrape(gw.url);
    const attempts = (outcome: string): number | undefined =>
      value(samples, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome });
    expect(attempts('success')).toBe(2);
    expect(attempts('rate_limited') ?? 0).toBe(0);
    expect(select(samples, 'llm_router_failovers_total')).toHaveLength(0);
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
    expect(dig(await status(gw, 'a/m'), 'quota', 'tokens_last_minute')).toBe(reported);
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
    expect(dig(await status(gw, 'a/m'), 'quota')).toBeUndefined();
  });

  it('refuses a budget that is not a positive whole number, naming its YAML path', () => {
    const base = (v: string): string =>
      [
        'providers:',
        '  - name: a',
        '    base_url: http://127.0.0.1:1/v1',
        '    models:',
        '      - name: m',
        `        ${v}`,
        'routes: { main: { targets: [a/m] } }',
      ].join('\n');
    expect(() => parseConfigText(base('rpm: 0'), {})).toThrow(/providers\[0\]\.models\[0\]\.rpm/);
    expect(() => parseConfigText(base('tpm: 1.5'), {})).toThrow(/providers\[0\]\.models\[0\]\.tpm/);
    expect(() => parseConfigText(base('tpm: -3'), {})).toThrow(/providers\[0\]\.models\[0\]\.tpm/);
    expect(() => parseConfigText(base('rpm: 600'), {})).not.toThrow();
  });
});
