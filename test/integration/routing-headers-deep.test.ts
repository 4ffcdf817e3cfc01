/**
 * The request headers that steer routing (`x-router-strategy`, `x-router-tier`, `x-router-provider`: SPEC §4
 * "Request headers", §8 "Unknown ... values → 400") and the response headers that report the decision, at
 * their edges: the forms a header value arrives in, a pin whose provider fails, is rate limited or sits in
 * another tier, what pinned or re-strategied requests do to everyone else's round-robin turns,
 * strategy overrides on routes with and without weights, and an `x-router-trail` naming awkward model names.
 * Every upstream is a hand-written mock on loopback.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  readonly json: Record<string, unknown>;
}

/** A POST with undici; a header given as an array goes as that many header lines. */
async function send(
  gw: TestGateway,
  body: Record<string, unknown>,
  headers: Record<string, string | string[]> = {},
  path = '/v1/chat/completions',
): Promise<Reply> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

const chat = (gw: TestGateway, model: string, headers: Record<string, string | string[]> = {}) =>
  send(gw, { model, messages: MSG }, headers);
const explain = (gw: TestGateway, model: string, headers: Record<string, string> = {}) =>
  send(gw, { model, messages: MSG }, headers, '/router/explain');
const errorOf = (r: Reply) => r.json.error as Record<string, unknown>;

function provider(
  name: string,
  url: string,
  models: Array<string | Record<string, unknown>>,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    name,
    base_url: `${url}/v1`,
    models: models.map((m) => (typeof m === 'string' ? { name: m } : m)),
    timeouts: RELAXED,
    ...extra,
  };
}

/** An OpenAI embeddings answer of one vector. */
function embeddingAnswer(res: ServerResponse): void {
  sendJson(res, 200, {
    object: 'list',
    data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
    model: 'e',
    usage: { prompt_tokens: 1, total_tokens: 1 },
  });
}

/** A mock that answers every chat and embeddings request. */
async function healthy() {
  return track(
    await startMock((req: Received, res) =>
      req.path.endsWith('/embeddings') ? embeddingAnswer(res) : answerChat(res, req.body, 'ok'),
    ),
  );
}

const count = (xs: readonly unknown[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const x of xs) out[String(x)] = (out[String(x)] ?? 0) + 1;
  return out;
};

describe('x-router-provider: a pinned request is served by that provider or by none', () => {
  it("fails over among the pinned provider's own models, skipping another provider ranked between them", async () => {
    // A pin narrows the failover chain to one provider; the chain within it still walks on a 5xx.
    const up = track(
      await startMock((req, res) =>
        req.body.model === 'bad'
          ? sendJson(res, 500, { error: { message: 'boom' } })
          : answerChat(res, req.body, 'ok'),
      ),
    );
    const gw = track(
      await startGateway({
        providers: [provider('a', up.url, ['bad', 'good']), provider('b', up.url, ['good'])],
        routes: { r: { strategy: 'priority', targets: ['a/bad', 'b/good', 'a/good'] } },
      }),
    );
    const r = await chat(gw, 'r', { 'x-router-provider': 'a' });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('a');
    expect(r.headers['x-router-model']).toBe('good');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/bad=http_500');
    expect(up.received.map((q) => q.body.model)).toEqual(['bad', 'good']); // b/good never asked
  });

  it('every upstream of the pinned provider failing, then open: 502, then a 503 scoped to it — never another provider', async () => {
    // SPEC §4: 502 when every attempt failed, 503 `no_available_upstream` when every breaker is open (here:
    // every breaker the pin leaves), with Retry-After; x-router-attempts 0 and no provider on the refusal.
    const bad = track(await startMock((_q, res) => sendJson(res, 500, { error: { message: 'boom' } })));
    const ok = await healthy();
    const gw = track(
      await startGateway({
        providers: [provider('a', bad.url, ['m1', 'm2']), provider('b', ok.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m1', 'a/m2', 'b/m'] } },
        circuit_breaker: { failure_threshold: 2, open_ms: 30000 },
      }),
    );
    for (let i = 0; i < 2; i++) {
      const r = await chat(gw, 'r', { 'x-router-provider': 'a' });
      expect(r.status, r.text).toBe(502);
      expect(errorOf(r).code).toBe('upstream_error');
      expect(r.headers['x-router-provider']).toBe('a');
      expect(r.headers['x-router-model']).toBe('m2');
      expect(r.headers['x-router-attempts']).toBe('2');
      expect(r.headers['x-router-trail']).toBe('a/m1=http_500,a/m2=http_500');
    }
    const open = await chat(gw, 'r', { 'x-router-provider': 'a' });
    expect(open.status, open.text).toBe(503);
    expect(errorOf(open).code).toBe('no_available_upstream');
    expect(String(errorOf(open).message)).toContain('provider "a"');
    expect(Number(open.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(open.headers['x-router-attempts']).toBe('0');
    expect(open.headers['x-router-trail']).toBe('');
    expect(open.headers['x-router-provider']).toBeUndefined();
    const ex = await explain(gw, 'r', { 'x-router-provider': 'a' });
    expect(ex.status, ex.text).toBe(503);
    expect(ok.received).toHaveLength(0);
    // Unpinned, the same route is served by b.
    const free = await chat(gw, 'r');
    expect(free.status).toBe(200);
    expect(free.headers['x-router-provider']).toBe('b');
  });

  it("every upstream of the pinned provider rate limited: 429 with the upstream's Retry-After, then from its cooldown; chat and embeddings", async () => {
    // SPEC §4: 429 with Retry-After when every candidate is rate limited; the pin makes them the candidates.
    const limited = track(
      await startMock((_q, res) =>
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'rate_limit_error' } },
          { 'retry-after': '7' },
        ),
      ),
    );
    const ok = await healthy();
    const emb = { capabilities: ['embeddings'] };
    const gw = track(
      await startGateway({
        providers: [
          provider('rl', limited.url, ['m1', 'm2', { name: 'e', ...emb }]),
          provider('b', ok.url, ['m', { name: 'e', ...emb }]),
        ],
        routes: {
          r: { strategy: 'priority', targets: ['rl/m1', 'rl/m2', 'b/m'] },
          emb: { strategy: 'priority', targets: ['rl/e', 'b/e'] },
        },
      }),
    );
    const first = await chat(gw, 'r', { 'x-router-provider': 'rl' });
    expect(first.status, first.text).toBe(429);
    expect(first.headers['retry-after']).toBe('7');
    expect(first.headers['x-router-attempts']).toBe('2');
    expect(first.headers['x-router-trail']).toBe('rl/m1=http_429,rl/m2=http_429');
    const cooling = await chat(gw, 'r', { 'x-router-provider': 'rl' });
    expect(cooling.status, cooling.text).toBe(429);
    expect(Number(cooling.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(cooling.headers['retry-after'])).toBeLessThanOrEqual(7);
    expect(cooling.headers['x-router-attempts']).toBe('0');
    expect((await explain(gw, 'r', { 'x-router-provider': 'rl' })).status).toBe(429);

    const e1 = await send(gw, { model: 'emb', input: 'x' }, { 'x-router-provider': 'rl' }, '/v1/embeddings');
    expect(e1.status, e1.text).toBe(429);
    expect(e1.headers['retry-after']).toBe('7');
    expect(e1.headers['x-router-trail']).toBe('rl/e=http_429');
    const e2 = await send(gw, { model: 'emb', input: 'x' }, { 'x-router-provider': 'rl' }, '/v1/embeddings');
    expect(e2.status, e2.text).toBe(429);
    expect(e2.headers['x-router-attempts']).toBe('0');
    expect(ok.received).toHaveLength(0);
    expect(limited.received).toHaveLength(3);
  });

  it('pinned requests leave the round-robin turns of the unpinned traffic on the route alone', async () => {
    // SPEC §2: `round-robin` "rotates evenly across healthy candidates". A pinned request has a candidate set
    // of its own (as a tier has: tiers keep their own turns for this reason); counted in the route's turns,
    // a client alternating a pinned call and an unpinned one sends every unpinned call to the same upstream.
    const ok = await healthy();
    const gw = track(
      await startGateway({
        providers: [provider('a', ok.url, ['m']), provider('b', ok.url, ['m'])],
        routes: { rr: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } },
      }),
    );
    const unpinned: unknown[] = [];
    for (let i = 0; i < 6; i++) {
      expect((await chat(gw, 'rr', { 'x-router-provider': 'a' })).headers['x-router-provider']).toBe('a');
      unpinned.push((await chat(gw, 'rr')).headers['x-router-provider']);
    }
    expect(count(unpinned)).toEqual({ a: 3, b: 3 });
  });

  it("on a tiered route, a rule's tier gives way to a pinned provider the route has only in another tier", async () => {
    // README Tiers: the tier the LLM router picks gives way when "a pinned x-router-provider [is] not in it".
    // A rule's pick is no firmer than the router's; the refusal given instead says the route has no upstream
    // from the provider, which /router/status contradicts.
    const ok = await healthy();
    const gw = track(
      await startGateway({
        providers: [provider('small', ok.url, ['m']), provider('big', ok.url, ['m'])],
        routes: {
          t: {
            strategy: 'priority',
            tiers: { fast: ['small/m'], deep: ['big/m'] },
            rules: [{ name: 'short', if: { max_prompt_tokens: 1000 }, tier: 'fast' }],
            default_tier: 'fast',
          },
        },
      }),
    );
    const r = await chat(gw, 't', { 'x-router-provider': 'big' });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('big');
    expect(r.headers['x-router-tier']).toBe('deep');
    const ex = await explain(gw, 't', { 'x-router-provider': 'big' });
    expect(ex.status, ex.text).toBe(200);
    expect(ex.json.tier).toBe('deep');
  });
});

describe('x-router-strategy: an override for one request', () => {
  it('requests that override the strategy leave the route’s round-robin turns alone', async () => {
    // SPEC §2: strategies are "per route, overridable per request"; round-robin "rotates evenly". A request
    // ranked by `priority` uses no turn, yet it takes one from the route's own round-robin traffic.
    const ok = await healthy();
    const gw = track(
      await startGateway({
        providers: [provider('a', ok.url, ['m']), provider('b', ok.url, ['m'])],
        routes: { rr: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } },
      }),
    );
    const plain: unknown[] = [];
    for (let i = 0; i < 6; i++) {
      const p = await chat(gw, 'rr', { 'x-router-strategy': 'priority' });
      expect(p.headers['x-router-strategy']).toBe('priority');
      expect(p.headers['x-router-provider']).toBe('a');
      const r = await chat(gw, 'rr');
      expect(r.headers['x-router-strategy']).toBe('round-robin');
      plain.push(r.headers['x-router-provider']);
    }
    expect(count(plain)).toEqual({ a: 3, b: 3 });
  });

  it('`hybrid` on a route configured with hybrid weights keeps them; `weighted` on a route without weights shares evenly', async () => {
    // README: a route's strategy may be `{ hybrid: { cost_weight, ... } }`; targets weigh 1 unless told.
    const ok = await healthy();
    const price = (p: number) => ({ name: 'm', price: { input_per_mtok: p, output_per_mtok: p } });
    const gw = track(
      await startGateway({
        providers: [provider('cheap', ok.url, [price(1)]), provider('dear', ok.url, [price(50)])],
        routes: {
          h: {
            strategy: { hybrid: { cost_weight: 1, latency_weight: 0, reliability_weight: 0 } },
            targets: ['dear/m', 'cheap/m'],
          },
          p: { strategy: 'priority', targets: ['dear/m', 'cheap/m'] },
        },
      }),
    );
    const h = await explain(gw, 'h', { 'x-router-strategy': 'hybrid' });
    expect(h.status, h.text).toBe(200);
    const hc = h.json.candidates as Array<{ upstream: string; reason: string }>;
    expect(hc[0]!.upstream).toBe('cheap/m');
    for (const c of hc) expect(c.reason).toMatch(/x 1 \+ latency .* x 0 \+ reliability .* x 0(;|$)/);
    for (let i = 0; i < 3; i++) {
      const r = await chat(gw, 'h', { 'x-router-strategy': 'hybrid' });
      expect(r.headers['x-router-provider']).toBe('cheap');
    }
    const w = await explain(gw, 'p', { 'x-router-strategy': 'weighted' });
    expect(w.status, w.text).toBe(200);
    expect(w.json.strategy).toBe('weighted');
    for (const c of w.json.candidates as Array<{ reason: string }>)
      expect(c.reason).toMatch(/^weight 1 of 2 \(50(\.0)?%\)/);
  });
});

describe('the forms a routing header value arrives in (SPEC §8)', () => {
  it('empty, repeated or comma-joined values are a 400 naming the header before any upstream; surrounding spaces are not part of the value', async () => {
    const ok = await healthy();
    const gw = track(
      await startGateway({
        providers: [provider('a', ok.url, ['m']), provider('b', ok.url, ['m'])],
        routes: {
          r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
          t: { strategy: 'priority', tiers: { fast: ['a/m'], deep: ['b/m'] }, default_tier: 'fast' },
        },
      }),
    );
    const cases: Array<[string, string | string[], string]> = [
      ['x-router-strategy', '', 'r'],
      ['x-router-strategy', ['cost', 'cost'], 'r'],
      ['x-router-strategy', 'cost,latency', 'r'],
      ['x-router-provider', '', 'r'],
      ['x-router-provider', ['b', 'b'], 'r'],
      ['x-router-provider', 'a, b', 'r'],
      ['x-router-tier', '', 't'],
      ['x-router-tier', ['deep', 'deep'], 't'],
      ['x-router-tier', 'fast,deep', 't'],
    ];
    for (const [name, value, model] of cases) {
      const r = await chat(gw, model, { [name]: value });
      const label = `${name}: ${JSON.stringify(value)}`;
      expect(r.status, label).toBe(400);
      expect(errorOf(r).type, label).toBe('invalid_request_error');
      expect(errorOf(r).param, label).toBe(name);
    }
    expect(ok.received).toHaveLength(0);
    const spaced = await chat(gw, 't', {
      'x-router-provider': ' b\t',
      'x-router-tier': '  deep ',
      'x-router-strategy': ' cost ',
    });
    expect(spaced.status, spaced.text).toBe(200);
    expect(spaced.headers['x-router-provider']).toBe('b');
    expect(spaced.headers['x-router-tier']).toBe('deep');
    expect(spaced.headers['x-router-strategy']).toBe('cost');
  });
});

describe('x-router-trail: `provider/model=reason` per failed attempt, comma-separated (SPEC §4)', () => {
  it('stays one entry per failed attempt when model names hold a comma, an `=` or non-ASCII text', async () => {
    // README: a name outside printable ASCII is percent-encoded in these headers. A name holding the
    // trail's own separators must be too, or the header no longer says which attempts failed.
    const bad = track(await startMock((_q, res) => sendJson(res, 500, { error: { message: 'boom' } })));
    const ok = await healthy();
    const names = ['m,1', 'v=2', '模型'];
    const gw = track(
      await startGateway({
        providers: [provider('a', bad.url, names), provider('b', ok.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: [...names.map((n) => `a/${n}`), 'b/m'] } },
        routing: { max_attempts: 4 },
      }),
    );
    const r = await chat(gw, 'r');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-attempts']).toBe('4');
    const trail = String(r.headers['x-router-trail']);
    const entries = trail.split(',');
    expect(entries, trail).toHaveLength(3);
    const parsed = entries.map((e) => e.split('='));
    for (const p of parsed) expect(p, trail).toHaveLength(2);
    expect(parsed.map(([up]) => decodeURIComponent(up!))).toEqual(names.map((n) => `a/${n}`));
    expect(parsed.map(([, reason]) => reason)).toEqual(['http_500', 'http_500', 'http_500']);
  });
});
