/**
 * The operator's endpoints at their edges: /router/status field by field as traffic flows (before any, after
 * streams, after failures, across a reload), /router/explain against the request sent right after it (a
 * spread of features, a half-open breaker, a rate-limit cooldown) and the figures its reasons quote, and what
 * the GET endpoints answer to other verbs, query strings and trailing slashes (SPEC §2, §4, §8; README).
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import type { Candidate } from '../helpers/router-api.js';
import { reload, type Json } from '../helpers/sim-gateways.js';
import { retryUntil } from '../helpers/wait.js';

const track = closeAfterEach();
const HI = [{ role: 'user', content: 'hi' }];
const EXPLAIN = { path: '/router/explain' };

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

async function gateway(config: Json): Promise<TestGateway> {
  return track(await startGateway(config));
}

async function get(
  gw: { url: string },
  path: string,
  method: 'GET' | 'HEAD' | 'POST' = 'GET',
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string; text: string }> {
  const r = await request(`${gw.url}${path}`, { method, headers });
  const text = await r.body.text();
  return { status: r.statusCode, type: String(r.headers['content-type'] ?? ''), text };
}

type Upstream = Json & {
  id: string;
  in_flight: number;
  breaker: Json & { state: string; consecutive_failures: number; probes_in_flight: number };
  stats: Json & { requests: number; successes: number; failures: number; successRate: number };
};

async function status(gw: { url: string }): Promise<{ upstreams: Map<string, Upstream>; body: Json }> {
  const body = JSON.parse((await get(gw, '/router/status')).text) as Json & { upstreams: Upstream[] };
  return { upstreams: new Map(body.upstreams.map((u) => [u.id, u])), body };
}

async function explain(gw: { url: string }, body: Json, headers: Record<string, string> = {}) {
  return postChat(gw, body, { ...EXPLAIN, headers });
}

function candidatesOf(e: Posted): Candidate[] {
  return e.json.candidates as Candidate[];
}

/** Every leaf of `value` as `path: type`, so two readings can be compared for shape. */
function shape(value: unknown, at = ''): string[] {
  if (value === null || typeof value !== 'object')
    return [`${at}: ${value === null ? 'null' : typeof value}`];
  return Object.entries(value as Json).flatMap(([k, v]) => shape(v, `${at}.${k}`));
}

/** Every numeric leaf of `value`, with its path. */
function numbers(value: unknown, at = ''): [string, number][] {
  if (typeof value === 'number') return [[at, value]];
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value as Json).flatMap(([k, v]) => numbers(v, `${at}.${k}`));
}

/** The statistics /router/status may show as null: the averages, before anything was measured. */
const UNMEASURED = ['ttftMs', 'latencyMs', 'tokensPerSec', 'meanOutputTokens'];

describe('/router/status as traffic flows', () => {
  it('names every figure SPEC lists, finite from the start, moving with streams and failures, same shape after a reload', async () => {
    const a = await sim('a', { latencyMs: 20, tokensPerS: 200, completionTokens: 10 });
    const config = (routes: Json): Json => ({
      providers: [simProvider('a', a.url, ['m'])],
      routes,
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 2, open_ms: 60_000 },
    });
    const gw = await gateway(config({ r: { strategy: 'priority', targets: ['a/m'] } }));

    // Before any traffic: breaker state, consecutive failures, the averages (null: not measured yet), success
    // rate, in flight and totals are all there; every number is finite.
    const before = (await status(gw)).upstreams.get('a/m')!;
    expect(before.breaker).toMatchObject({ state: 'closed', consecutive_failures: 0, trip_cause: null });
    expect(before.in_flight).toBe(0);
    expect(before.stats).toMatchObject({ requests: 0, successes: 0, failures: 0, successRate: 1 });
    for (const k of UNMEASURED) expect(before.stats[k], k).toBeNull();
    for (const [path, n] of numbers(before)) expect(Number.isFinite(n), path).toBe(true);

    // After streamed answers every average is a measured, positive, finite figure.
    for (let i = 0; i < 4; i++) {
      const r = await postChat(gw, { model: 'r', messages: HI, stream: true });
      expect(r.status, r.text).toBe(200);
    }
    const served = (await status(gw)).upstreams.get('a/m')!;
    expect(served.stats).toMatchObject({ requests: 4, successes: 4, failures: 0, successRate: 1 });
    for (const k of UNMEASURED) {
      const v = served.stats[k];
      expect(typeof v, `${k} = ${String(v)}`).toBe('number');
      expect(v as number, k).toBeGreaterThan(0);
    }
    expect(served.stats.ttftMs as number).toBeGreaterThanOrEqual(15); // the simulator waits 20 ms
    expect(served.in_flight).toBe(0);

    // Two failures: counted by kind, the success rate falls, the breaker opens on errors with its countdown.
    a.set({ status: 500 });
    for (let i = 0; i < 2; i++) expect((await postChat(gw, { model: 'r', messages: HI })).status).toBe(502);
    const failed = (await status(gw)).upstreams.get('a/m')!;
    expect(failed.stats).toMatchObject({ requests: 6, successes: 4, failures: 2 });
    expect(failed.stats.failuresByKind).toMatchObject({ error: 2, timeout: 0, rate_limit: 0 });
    expect(failed.stats.successRate).toBeLessThan(1);
    expect(failed.stats.successRate).toBeGreaterThan(0);
    expect(failed.breaker).toMatchObject({ state: 'open', consecutive_failures: 2, trip_cause: 'errors' });
    expect(failed.breaker.ms_until_half_open as number).toBeGreaterThan(0);
    expect(failed.breaker.ms_until_half_open as number).toBeLessThanOrEqual(60_000);
    for (const [path, n] of numbers(failed)) expect(Number.isFinite(n), path).toBe(true);

    // A reload that adds a route: the upstream keeps its breaker and figures, and its entry its shape.
    reload(
      gw,
      config({
        r: { strategy: 'priority', targets: ['a/m'] },
        other: { strategy: 'round-robin', targets: ['a/m'] },
      }),
    );
    const after = await status(gw);
    const kept = after.upstreams.get('a/m')!;
    expect(kept.breaker).toMatchObject({ state: 'open', trip_cause: 'errors', consecutive_failures: 2 });
    expect(kept.stats).toMatchObject({ requests: 6, successes: 4, failures: 2 });
    expect(shape(kept)).toEqual(shape(failed));
    expect((after.body.routes as { name: string }[]).map((r) => r.name)).toEqual(['r', 'other']);
  });
});

describe('/router/explain against the request sent right after it', () => {
  it('across tools, images, JSON mode, streams, a context-window misfit and the routing headers, explain names what the request gets', async () => {
    const s = await sim('s');
    const gw = await gateway({
      providers: [
        simProvider('cheap', s.url, [
          {
            name: 'm',
            capabilities: ['stream'],
            context_window: 1_000,
            price: { input_per_mtok: 0.5, output_per_mtok: 1 },
          },
        ]),
        simProvider('mid', s.url, [
          { name: 'm', context_window: 100_000, price: { input_per_mtok: 1, output_per_mtok: 2 } },
        ]),
        simProvider('dear', s.url, [
          { name: 'm', context_window: 128_000, price: { input_per_mtok: 5, output_per_mtok: 10 } },
        ]),
      ],
      routes: { r: { strategy: 'cost', targets: ['cheap/m', 'mid/m', 'dear/m'] } },
    });
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    const image = [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'what is this?' },
          { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } },
        ],
      },
    ];
    const long = [{ role: 'user', content: 'word '.repeat(3_000) }];
    const cases: { name: string; body: Json; headers?: Record<string, string>; want: string }[] = [
      { name: 'plain', body: { messages: HI, max_tokens: 20 }, want: 'cheap/m' },
      { name: 'tools', body: { messages: HI, tools, max_tokens: 20 }, want: 'mid/m' },
      { name: 'image', body: { messages: image, max_tokens: 20 }, want: 'mid/m' },
      {
        name: 'json mode',
        body: { messages: HI, response_format: { type: 'json_object' }, max_tokens: 20 },
        want: 'mid/m',
      },
      { name: 'stream', body: { messages: HI, stream: true, max_tokens: 20 }, want: 'cheap/m' },
      { name: 'too long for cheap', body: { messages: long, max_tokens: 20 }, want: 'mid/m' },
      {
        name: 'pinned provider',
        body: { messages: HI, max_tokens: 20 },
        headers: { 'x-router-provider': 'dear' },
        want: 'dear/m',
      },
      {
        name: 'strategy header',
        body: { messages: HI, max_tokens: 20 },
        headers: { 'x-router-strategy': 'priority' },
        want: 'cheap/m',
      },
    ];
    for (const c of cases) {
      const body = { model: 'r', ...c.body };
      const e = await explain(gw, body, c.headers);
      expect(e.status, `${c.name}: ${e.text}`).toBe(200);
      const cands = candidatesOf(e);
      expect(cands[0]!.upstream, c.name).toBe(c.want);
      expect(cands[0]!.score, c.name).toBe(1);
      for (const x of cands) {
        expect(x.score, c.name).toBeGreaterThanOrEqual(0);
        expect(x.score, c.name).toBeLessThanOrEqual(1);
      }
      const real = await postChat(gw, body, { headers: c.headers });
      expect(real.status, `${c.name}: ${real.text}`).toBe(200);
      expect(`${real.headers['x-router-provider']}/${real.headers['x-router-model']}`, c.name).toBe(c.want);
      expect(real.headers['x-router-strategy'], c.name).toBe(e.json.strategy);
    }
    // A request no candidate's window holds: explain refuses it as the real request is refused, calling nothing.
    const calls = s.requests.length;
    const huge = { model: 'r', messages: long, max_tokens: 200_000 };
    const e = await explain(gw, huge);
    const real = await postChat(gw, huge);
    expect(real.status).toBe(400);
    expect(e.status).toBe(real.status);
    expect(e.json).toEqual(real.json);
    expect(dig(real.json, 'error', 'code')).toBe('context_length_exceeded');
    expect(s.requests).toHaveLength(calls);
  });

  it('a half-open breaker: explains leave its probe slot free, and the next real request is that probe', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway({
      providers: [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      circuit_breaker: { failure_threshold: 1, open_ms: 1_500, half_open_probes: 1, success_threshold: 1 },
    });
    a.set({ status: 500 });
    const failed = await postChat(gw, { model: 'r', messages: HI });
    expect(failed.headers['x-router-trail']).toBe('a/m=http_500');
    expect((await status(gw)).upstreams.get('a/m')!.breaker.state).toBe('open');
    // While open, explain and the real request both leave it out.
    expect(candidatesOf(await explain(gw, { model: 'r', messages: HI })).map((c) => c.upstream)).toEqual([
      'b/m',
    ]);
    a.set({ status: undefined });
    await retryUntil(
      async () => expect((await status(gw)).upstreams.get('a/m')!.breaker.state).toBe('half_open'),
      6_000,
      50,
    );
    for (let i = 0; i < 20; i++) {
      const e = await explain(gw, { model: 'r', messages: HI });
      expect(candidatesOf(e)[0]!.upstream).toBe('a/m');
    }
    const br = (await status(gw)).upstreams.get('a/m')!.breaker;
    expect(br).toMatchObject({ state: 'half_open', probes_in_flight: 0 });
    expect(a.requests).toHaveLength(1); // the failure only: explain called nothing
    const probe = await postChat(gw, { model: 'r', messages: HI });
    expect(probe.status).toBe(200);
    expect(probe.headers['x-router-provider']).toBe('a');
    expect((await status(gw)).upstreams.get('a/m')!.breaker.state).toBe('closed');
  });

  it('a rate-limit cooldown: the cooling upstream is left out of explain as of the request; all cooling, both answer 429 with Retry-After', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 30 });
    const b = await sim('b');
    const gw = await gateway({
      providers: [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    const first = await postChat(gw, { model: 'r', messages: HI });
    expect(first.status).toBe(200);
    expect(first.headers['x-router-trail']).toBe('a/m=http_429');
    const cooling = (await status(gw)).upstreams.get('a/m')!.breaker;
    expect(cooling).toMatchObject({ state: 'open', trip_cause: 'rate_limit' });
    const e = await explain(gw, { model: 'r', messages: HI });
    expect(candidatesOf(e).map((c) => c.upstream)).toEqual(['b/m']);
    const next = await postChat(gw, { model: 'r', messages: HI });
    expect(next.headers['x-router-provider']).toBe('b');
    expect(next.headers['x-router-trail']).toBe('');
    expect(a.requests).toHaveLength(1);
    expect((await get(gw, '/readyz')).status).toBe(200);

    b.set({ status: 429, retryAfterS: 20 });
    expect((await postChat(gw, { model: 'r', messages: HI })).status).toBe(429);
    const ex = await explain(gw, { model: 'r', messages: HI });
    const real = await postChat(gw, { model: 'r', messages: HI });
    expect(real.status).toBe(429);
    expect(ex.status).toBe(429);
    expect(dig(ex.json, 'error', 'code')).toBe(dig(real.json, 'error', 'code'));
    expect(Number(ex.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(ex.headers['retry-after'])).toBeLessThanOrEqual(20);
    expect(ex.headers['retry-after']).toBe(real.headers['retry-after']);
    // Readiness is "at least one upstream not open": every one is cooling down.
    expect((await get(gw, '/readyz')).status).toBe(503);
  });
});

describe('/router/explain reasons carry the figures their scores come from', () => {
  // SPEC §2: "a human-readable reason carrying the raw figures". Small models priced in cents per million
  // tokens, asked short questions, cost fractions of a micro-dollar per request.
  it('cost and hybrid: the dollar figure a reason quotes is the expected cost it was scored on, for a cheap request too', async () => {
    const s = await sim('s');
    const prices: Record<string, [number, number]> = { tiny: [0.01, 0.01], small: [0.02, 0.02] };
    const gw = await gateway({
      providers: Object.entries(prices).map(([name, [i, o]]) =>
        simProvider(name, s.url, [{ name: 'm', price: { input_per_mtok: i, output_per_mtok: o } }]),
      ),
      routes: {
        classify: { strategy: 'cost', targets: ['tiny/m', 'small/m'] },
        blend: { strategy: 'hybrid', targets: ['tiny/m', 'small/m'] },
      },
    });
    for (const model of ['classify', 'blend']) {
      const e = await explain(gw, { model, messages: HI, max_tokens: 5 });
      expect(e.status, e.text).toBe(200);
      const pt = dig(e.json, 'features', 'promptTokens') as number;
      const cands = candidatesOf(e);
      expect(cands.map((c) => c.upstream)).toEqual(['tiny/m', 'small/m']);
      expect(cands[1]!.score).toBeLessThan(cands[0]!.score); // twice the price: scored apart
      for (const c of cands) {
        const [i, o] = prices[c.upstream.split('/')[0]!]!;
        const want = (pt * i + 5 * o) / 1e6;
        const quoted = Number(/cost \$([0-9.eE+-]+)/.exec(c.reason)?.[1]);
        expect(
          Math.abs(quoted - want),
          `${model} ${c.upstream}: "${c.reason}" (cost ${want})`,
        ).toBeLessThanOrEqual(want * 0.05);
      }
    }
  });

  // README: hybrid weights "are relative: 0 to 1,000,000"; the reason writes the score as an equation.
  it("hybrid with relative weights (2 / 2 / 1): the reason's sum of factor x weight is the total it states", async () => {
    const s = await sim('s');
    const gw = await gateway({
      providers: [
        simProvider('a', s.url, [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 4 } }]),
        simProvider('b', s.url, [{ name: 'm', price: { input_per_mtok: 2, output_per_mtok: 8 } }]),
      ],
      routes: {
        r: {
          strategy: { hybrid: { cost_weight: 2, latency_weight: 2, reliability_weight: 1 } },
          targets: ['a/m', 'b/m'],
        },
      },
    });
    const e = await explain(gw, { model: 'r', messages: HI, max_tokens: 100 });
    expect(e.status, e.text).toBe(200);
    for (const c of candidatesOf(e)) {
      const total = Number(/hybrid ([\d.]+) =/.exec(c.reason)?.[1]);
      const parts = [...c.reason.matchAll(/-> ([\d.]+) x ([\d.]+)/g)].map((m) => Number(m[1]) * Number(m[2]));
      expect(parts, c.reason).toHaveLength(3);
      expect(total, c.reason).toBeGreaterThan(0);
      expect(total, c.reason).toBeLessThanOrEqual(1);
      const sum = parts.reduce((x, y) => x + y, 0);
      expect(Math.abs(sum - total), `${c.reason}: the terms add up to ${sum}`).toBeLessThanOrEqual(0.02);
    }
  });
});

describe('the GET endpoints under other verbs, query strings and trailing slashes', () => {
  it('query strings are ignored, HEAD answers without a body, another verb or a trailing slash is an OpenAI-shaped 404', async () => {
    const s = await sim('s');
    const gw = await gateway({
      server: { api_keys: ['ck'], admin_key: 'admin-key-42' },
      providers: [simProvider('a', s.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const keys: Record<string, Record<string, string>> = {
      '/healthz': {},
      '/readyz': {},
      '/metrics': {},
      '/router/status': { 'x-admin-key': 'admin-key-42' },
      '/v1/models': { authorization: 'Bearer ck' },
    };
    for (const [path, h] of Object.entries(keys)) {
      const plain = await get(gw, path, 'GET', h);
      expect(plain.status, path).toBe(200);
      const queried = await get(gw, `${path}?probe=1&verbose`, 'GET', h);
      expect(queried.status, path).toBe(200);
      expect(queried.type, path).toBe(plain.type);
      const head = await get(gw, path, 'HEAD', h);
      expect(head.status, `HEAD ${path}`).toBe(200);
      expect(head.text, `HEAD ${path}`).toBe('');
      // Paths no route serves need the client key when api_keys is set (SPEC §8): sent, they are a 404.
      for (const [method, p] of [
        ['POST', path],
        ['GET', `${path}/`],
      ] as const) {
        const r = await get(gw, p, method, { ...h, authorization: 'Bearer ck' });
        expect(r.status, `${method} ${p}`).toBe(404);
        const err = (JSON.parse(r.text) as { error: Json }).error;
        expect(Object.keys(err).sort(), `${method} ${p}`).toEqual(['code', 'message', 'param', 'type']);
        expect(err.type, `${method} ${p}`).toBe('invalid_request_error');
      }
    }
    // /router/explain is a POST: a GET of it is a 404 too, and without the admin key a 401 before anything.
    const gotExplain = await get(gw, '/router/explain', 'GET', { 'x-admin-key': 'admin-key-42' });
    expect(gotExplain.status).toBe(404);
    expect((await get(gw, '/router/explain', 'GET')).status).toBe(401);
    expect(s.requests).toHaveLength(0);
  });
});

function dig(value: unknown, ...path: string[]): unknown {
  let v = value;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Json)[k];
  }
  return v;
}
