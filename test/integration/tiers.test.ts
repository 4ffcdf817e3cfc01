import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
let gw: TestGateway | undefined;

const ROUTER_ANSWER = '{"tier": "deep", "reason": "needs careful reasoning"}';

async function setup() {
  const mk = async (name: string, extra: Parameters<typeof startSimulator>[0] = {}) =>
    track(await startSimulator({ name, ...extra }));
  const r1 = await mk('r1', { reply: ROUTER_ANSWER, completionTokens: 3 });
  const r2 = await mk('r2', { reply: ROUTER_ANSWER, completionTokens: 3 });
  const bal = await mk('bal');
  const deep = await mk('deep');
  gw = track(
    await startGateway({
      providers: [
        simProvider('r1', r1.url, ['m']),
        simProvider('r2', r2.url, ['m']),
        simProvider('bal', bal.url, ['m']),
        simProvider('deep', deep.url, ['m']),
      ],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['r1/m', 'r2/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          rules: [{ name: 'greeting', if: { last_user_message: '^(hi|hello)$' }, tier: 'balanced' }],
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 400, cache_ttl_s: 60 },
        },
      },
    }),
  );
  return { r1, r2, bal, deep, gw };
}

async function chat(content: string) {
  const t0 = performance.now();
  const res = await request(`${gw!.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content }] }),
  });
  const body = (await res.body.json()) as { choices?: { message: { content: string } }[] };
  return { status: res.statusCode, headers: res.headers, body, ms: performance.now() - t0 };
}

/** One `llm_router_llm_router_requests_total` series; undefined (so a `toBe(n)` fails) when it is absent. */
async function routerRequests(tier: string, outcome: string): Promise<number | undefined> {
  return value(await scrape(gw!.url), 'llm_router_llm_router_requests_total', { tier, outcome });
}

describe('tiers and the LLM router', () => {
  it('a request matching a rule never calls the router', async () => {
    const { r1, r2, bal } = await setup();
    const r = await chat('hello');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-tier-reason']).toBe('rule greeting');
    expect(r.body.choices?.[0]?.message.content).toContain('bal');
    expect(r1.requests.length + r2.requests.length).toBe(0);
    expect(bal.requests).toHaveLength(1);
  });

  it('a tie asks the router once, the chosen tier serves, and the same prompt again uses the cache', async () => {
    const { r1, deep } = await setup();
    const a = await chat('Prove that there are infinitely many primes, step by step.');
    expect(a.status).toBe(200);
    expect(a.headers['x-router-tier']).toBe('deep');
    expect(a.headers['x-router-tier-reason']).toBe('no rule matched; llm router: needs careful reasoning');
    expect(a.body.choices?.[0]?.message.content).toContain('deep');
    expect(r1.requests).toHaveLength(1);
    const routerBody = r1.requests[0]!.body as {
      temperature: number;
      max_tokens: number;
      messages: { role: string; content: string }[];
    };
    expect(routerBody.temperature).toBe(0);
    expect(routerBody.max_tokens).toBeLessThanOrEqual(100);
    expect(routerBody.messages[0]!.content).toContain('"tier"');
    expect(routerBody.messages[1]!.content).toContain('infinitely many primes');

    const b = await chat('Prove that there are infinitely many primes, step by step.');
    expect(b.headers['x-router-tier']).toBe('deep');
    expect(r1.requests).toHaveLength(1); // cached
    expect(deep.requests).toHaveLength(2);
    expect(await routerRequests('deep', 'chosen')).toBe(1);
    expect(await routerRequests('deep', 'cached')).toBe(1);
  });

  it("the router cache outlives a reload that keeps the route's tiers and router settings, not one that changes them", async () => {
    const { r1 } = await setup();
    const config = (router: Record<string, unknown>, price: number) => ({
      providers: ['r1', 'r2', 'bal', 'deep'].map((n) =>
        simProvider(n, new URL(gw!.gateway.runtime.providers.get(n)!.config.base_url).origin, [
          { name: 'm', price: { input_per_mtok: price, output_per_mtok: price } },
        ]),
      ),
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['r1/m', 'r2/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          default_tier: 'balanced',
          router,
        },
      },
    });
    const prompt = 'Prove that there are infinitely many primes, step by step.';
    await chat(prompt);
    expect(r1.requests).toHaveLength(1);
    gw!.gateway.reload(
      parseConfigText(JSON.stringify(config({ tier: 'fast', timeout_ms: 400, cache_ttl_s: 60 }, 3)), {}),
    );
    expect((await chat(prompt)).headers['x-router-tier']).toBe('deep');
    expect(r1.requests).toHaveLength(1); // a price changed: still cached
    gw!.gateway.reload(
      parseConfigText(JSON.stringify(config({ tier: 'fast', timeout_ms: 400, cache_ttl_s: 30 }, 3)), {}),
    );
    await chat(prompt);
    expect(r1.requests).toHaveLength(2); // the cache's own settings changed: it starts over
  });

  it('a cached tier a reload has emptied (its provider disabled) is asked again, not answered with a 503', async () => {
    const { r1 } = await setup();
    const prompt = 'Prove that there are infinitely many primes, step by step.';
    expect((await chat(prompt)).headers['x-router-tier']).toBe('deep');
    const origin = (n: string) => new URL(gw!.gateway.runtime.providers.get(n)!.config.base_url).origin;
    const config = {
      providers: [
        simProvider('r1', origin('r1'), ['m']),
        simProvider('r2', origin('r2'), ['m']),
        simProvider('bal', origin('bal'), ['m']),
        simProvider('deep', origin('deep'), ['m'], { api_key: '' }), // disabled: tier deep has no upstream
      ],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['r1/m', 'r2/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 400, cache_ttl_s: 60 },
        },
      },
    };
    gw!.gateway.reload(parseConfigText(JSON.stringify(config), {}));
    const after = await chat(prompt);
    expect(after.status).toBe(200);
    expect(after.headers['x-router-tier']).toBe('balanced');
    expect(r1.requests).toHaveLength(2);
  });

  it('a hanging router costs at most its timeout and the request is served by default_tier', async () => {
    const { r1, r2, bal } = await setup();
    r1.set({ hang: true });
    r2.set({ hang: true });
    const r = await chat('What is the meaning of this long question about many things?');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    // timeout_ms is 400: the router may add that, plus a margin for a shared machine, never a hang.
    expect(r.ms).toBeLessThan(400 + 1_500);
    expect(await routerRequests('balanced', 'timeout')).toBe(1);
  });

  it("a failing router upstream fails over to the tier's next upstream", async () => {
    const { r1, r2, deep } = await setup();
    r1.set({ status: 500 });
    const r = await chat('Design a distributed consensus protocol and argue its safety.');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r1.requests).toHaveLength(1);
    expect(r2.requests).toHaveLength(1);
    expect(deep.requests).toHaveLength(1);
  });

  it('a router reason with line breaks or non-ASCII cannot break the response headers', async () => {
    const { r1 } = await setup();
    r1.set({ reply: '{"tier": "deep", "reason": "naïve\\r\\nX-Evil: 1"}', completionTokens: 3 });
    const r = await chat('Walk me through a proof by induction in full detail.');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier-reason']).toBe('no rule matched; llm router: na?ve??X-Evil: 1');
    expect(r.headers['x-evil']).toBeUndefined();
  });

  it('an unparsable router answer falls back to default_tier', async () => {
    const { r1, bal } = await setup();
    r1.set({ reply: 'I would rather not say', completionTokens: 2 });
    const r = await chat('Tell me something interesting about octopuses and their arms.');
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    expect(await routerRequests('balanced', 'unparsable')).toBe(1);
  });

  it('x-router-tier wins outright and an unknown tier is a 400', async () => {
    const { r1, deep } = await setup();
    const res = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-router-tier': 'deep' },
      body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content: 'hello' }] }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(deep.requests).toHaveLength(1);
    expect(r1.requests).toHaveLength(0);
    const bad = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-router-tier': 'ultra' },
      body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content: 'hello' }] }),
    });
    expect(bad.statusCode).toBe(400);
    await bad.body.dump();
  });

  // Regression (audit 4): a tier the route lacks answered 503 no_available_upstream with Retry-After.
  it('x-router-tier naming a tier this route lacks is a 400 naming the header; a route without tiers ignores it', async () => {
    const r1 = track(await startSimulator({ name: 'r1' }));
    const bal = track(await startSimulator({ name: 'bal' }));
    gw = track(
      await startGateway({
        providers: [simProvider('r1', r1.url, ['m']), simProvider('bal', bal.url, ['m'])],
        routes: {
          t: { tiers: { fast: ['r1/m'], balanced: ['bal/m'] }, default_tier: 'balanced' },
          flat: { targets: ['bal/m'] },
        },
      }),
    );
    const send = async (model: string, tier: string, path = '/v1/chat/completions') => {
      const res = await request(`${gw!.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-router-tier': tier },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hello' }] }),
      });
      const body = (await res.body.json()) as { error?: Record<string, unknown> };
      return { status: res.statusCode, headers: res.headers, error: body.error };
    };
    const missing = await send('t', 'deep');
    expect(missing.status).toBe(400);
    expect(missing.headers['retry-after']).toBeUndefined();
    expect(missing.error).toMatchObject({
      type: 'invalid_request_error',
      param: 'x-router-tier',
      message: 'x-router-tier: route `t` has no tier "deep" (one of fast, balanced)',
    });
    // Explain answers what the request would get.
    expect((await send('t', 'deep', '/router/explain')).status).toBe(400);
    expect(r1.requests.length + bal.requests.length).toBe(0);
    for (const model of ['flat', 'bal/m']) {
      const flat = await send(model, 'fast');
      expect(flat.status, model).toBe(200);
      expect(flat.headers['x-router-tier'], model).toBeUndefined();
    }
    expect(bal.requests).toHaveLength(2);
    // A tier the route has still wins outright.
    expect((await send('t', 'fast')).status).toBe(200);
    expect(r1.requests).toHaveLength(1);
  });

  it('one prompt arriving in a burst is one router call; a client leaving does not cut it for the others', async () => {
    const rt = track(
      await startSimulator({ name: 'rt', reply: ROUTER_ANSWER, completionTokens: 3, latencyMs: 300 }),
    );
    const deep = track(await startSimulator({ name: 'deep' }));
    const bal = track(await startSimulator({ name: 'bal' }));
    gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m']),
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
    const leaving = new AbortController();
    const gone = request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'auto', messages: [{ role: 'user', content: 'prove it' }] }),
      signal: leaving.signal,
    }).catch((err: unknown) => err);
    // The one that leaves is the one whose arrival started the router call (else its leaving proves nothing).
    await rt.waitForRequests(1, 2_000);
    setTimeout(() => leaving.abort(), 100);
    const staying = await Promise.all(Array.from({ length: 5 }, () => chat('prove it')));
    expect(await gone).toBeInstanceOf(Error); // it did leave before the router answered (300 ms)
    expect(staying.map((r) => r.headers['x-router-tier'])).toEqual(Array(5).fill('deep'));
    expect(rt.requests).toHaveLength(1);
    // The call is counted once (by the first request still there for its answer), the other four as cached;
    // the one that left got no tier and is not counted.
    expect(await routerRequests('deep', 'chosen')).toBe(1);
    expect(await routerRequests('deep', 'cached')).toBe(4);
  });
});

describe('request-scoped exclusion between the LLM router call and the request', () => {
  /** The router's tier and the default tier share r1: what failed in the router call must not be tried again. */
  async function shared(balanced: string[]) {
    const mk = async (name: string) =>
      track(
        await startSimulator({ name, reply: ROUTER_ANSWER.replace('deep', 'balanced'), completionTokens: 3 }),
      );
    const r1 = await mk('r1');
    const r2 = await mk('r2');
    const bal = await mk('bal');
    gw = track(
      await startGateway({
        providers: [
          simProvider('r1', r1.url, ['m']),
          simProvider('r2', r2.url, ['m']),
          simProvider('bal', bal.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['r1/m', 'r2/m'], balanced },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 300, cache_ttl_s: 60 },
          },
        },
      }),
    );
    return { r1, r2, bal };
  }

  // Regression (audit 4, "router both 500"): r1 failed in the router call and the request then tried it again.
  it('an upstream that failed in the router call is not tried again by the request', async () => {
    const { r1, r2, bal } = await shared(['bal/m', 'r1/m']);
    r1.set({ status: 500 });
    r2.set({ status: 500 });
    bal.set({ status: 500 });
    const r = await chat('Summarise the plot of a long novel in a few careful paragraphs.');
    expect(r.status).toBe(502);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(r.headers['x-router-trail']).toBe('bal/m=http_500');
    expect(r1.requests).toHaveLength(1); // the router call only
    expect(r2.requests).toHaveLength(1);
    expect(bal.requests).toHaveLength(1);
    // The router's own failed attempts are still counted as before.
    expect(await routerRequests('balanced', 'error')).toBe(1);
    const m = await scrape(gw!.url);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'r1', model: 'm', outcome: 'error' }),
    ).toBe(1);
  });

  it('when the router call failed on every upstream of the chosen tier, the answer is a 502 naming those failures', async () => {
    const { r1, r2, bal } = await shared(['r1/m']);
    r1.set({ status: 500 });
    r2.set({ status: 503 });
    const res = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'auto',
        messages: [{ role: 'user', content: 'Explain monads slowly.' }],
      }),
    });
    const body = (await res.body.json()) as { error: Record<string, unknown> };
    expect(res.statusCode).toBe(502);
    expect(body.error.type).toBe('upstream_error');
    expect(body.error.message).toMatch(/failed in its LLM router call: r1\/m: http_500 .*; r2\/m: http_503/);
    expect(res.headers['retry-after']).toBeUndefined();
    expect(r1.requests).toHaveLength(1);
    expect(bal.requests).toHaveLength(0);
  });

  it('the exclusion lasts one request: a cached router answer made no attempt and excludes nothing', async () => {
    const { r1, r2, bal } = await shared(['r1/m', 'bal/m']);
    r1.set({ status: 500 });
    const prompt = 'Compare two sorting algorithms and say when each wins.';
    const first = await chat(prompt);
    expect(first.status).toBe(200);
    expect(first.headers['x-router-tier-reason']).toBe(
      'no rule matched; llm router: needs careful reasoning',
    );
    expect(first.headers['x-router-provider']).toBe('bal'); // r1, first in the tier, failed in the router call
    expect(first.headers['x-router-trail']).toBe('');
    expect(r1.requests).toHaveLength(1);
    expect(r2.requests).toHaveLength(1);

    r1.set({ status: undefined });
    const second = await chat(prompt);
    expect(second.status).toBe(200);
    expect(await routerRequests('balanced', 'cached')).toBe(1);
    expect(second.headers['x-router-provider']).toBe('r1');
    expect(r1.requests).toHaveLength(2);
    expect(bal.requests).toHaveLength(1);
  });

  it("an upstream only cut off by the router's timeout_ms may still serve the request", async () => {
    const { r1, r2 } = await shared(['r1/m']);
    r1.set({ latencyMs: 500 });
    r2.set({ hang: true });
    const r = await chat('Write a limerick about a lighthouse keeper.');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-tier-reason']).toBe('no rule matched; llm router timed out; default_tier');
    expect(r.headers['x-router-provider']).toBe('r1');
    expect(r1.requests).toHaveLength(2);
    expect(r2.requests).toHaveLength(0);
  });
});
