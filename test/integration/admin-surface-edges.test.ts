/**
 * The gateway's own endpoints at their edges (SPEC §2 circuit breaker, §4, §5, §8; README "HTTP surface",
 * "Metrics"):
 * - /router/status follows a breaker through open -> half-open -> (re-open, doubled) -> closed, and a
 *   rate-limit cooldown, figure by figure, in agreement with /readyz and llm_router_circuit_state; its
 *   consecutive counters never contradict each other (a run of successes is no run of failures).
 * - A refused admin read (a wrong or missing admin key on /router/* or, with metrics_auth, /metrics) is
 *   counted and logged as a refused request, as a refused /v1 request is; a served admin read stays out.
 * - The admin gate cannot be walked around with encoded, doubled, dotted or suffixed paths.
 * - /router/explain, given hostile or malformed bodies and headers, answers exactly what the chat endpoint
 *   answers the same request, and calls no upstream.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { parseProm, value } from '../helpers/prom-text.js';
import type { BreakerView } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
const HI = [{ role: 'user', content: 'hi' }];
const ADMIN = 'adm-edge-secret-77';
const CLIENT = 'client-edge-key-31';

type Json = Record<string, unknown>;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

async function get(
  gw: { url: string },
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; json: Json }> {
  const r = await request(`${gw.url}${path}`, { headers });
  const text = await r.body.text();
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    /* not JSON (/metrics) */
  }
  return { status: r.statusCode, text, json };
}

/** The breaker of `id` as /router/status shows it, with /readyz's status and the circuit gauge beside it. */
async function observe(
  gw: TestGateway,
  id: string,
): Promise<{ breaker: BreakerView; ready: number; gauge: number }> {
  const status = await get(gw, '/router/status');
  const ups = status.json.upstreams as { id: string; breaker: BreakerView }[];
  const breaker = ups.find((u) => u.id === id)!.breaker;
  const ready = (await get(gw, '/readyz')).status;
  const [provider, model] = id.split('/');
  const gauge = value(parseProm((await get(gw, '/metrics')).text), 'llm_router_circuit_state', {
    provider: provider!,
    model: model!,
  });
  return { breaker, ready, gauge: gauge ?? Number.NaN };
}

describe('/router/status through a breaker lifecycle', () => {
  async function setup() {
    const clock = { t: 5_000_000 };
    const a = await sim('a');
    const gw = track(
      await startGateway(
        {
          providers: [simProvider('a', a.url, ['m'])],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
          routing: { max_attempts: 1 },
          circuit_breaker: {
            failure_threshold: 2,
            open_ms: 10_000,
            max_open_ms: 60_000,
            success_threshold: 2,
          },
        },
        { now: () => clock.t },
      ),
    );
    const chat = async () => (await postChat(gw, { model: 'r', messages: HI })).status;
    return { clock, a, gw, chat };
  }

  it('open -> half-open -> re-open (doubled) -> closed, then a Retry-After cooldown: status, /readyz and the gauge agree', async () => {
    const { clock, a, gw, chat } = await setup();
    a.set({ status: 500 });
    expect(await chat()).toBe(502);
    expect(await chat()).toBe(502);
    let o = await observe(gw, 'a/m');
    expect(o.breaker).toMatchObject({
      state: 'open',
      consecutive_failures: 2,
      trip_cause: 'errors',
      open_ms: 10_000,
      ms_until_half_open: 10_000,
      opens: 1,
    });
    expect([o.ready, o.gauge]).toEqual([503, 2]);

    // open_ms passed: half-open, the cause still told, nothing left to wait; ready again (not open).
    clock.t += 10_001;
    o = await observe(gw, 'a/m');
    expect(o.breaker).toMatchObject({ state: 'half_open', trip_cause: 'errors', ms_until_half_open: 0 });
    expect([o.ready, o.gauge]).toEqual([200, 1]);

    // The probe fails: open again for twice as long.
    expect(await chat()).toBe(502);
    o = await observe(gw, 'a/m');
    expect(o.breaker).toMatchObject({
      state: 'open',
      trip_cause: 'errors',
      open_ms: 20_000,
      ms_until_half_open: 20_000,
      opens: 2,
      probes_in_flight: 0,
    });
    expect([o.ready, o.gauge]).toEqual([503, 2]);

    // Two good probes close it: no cause, the backoff reset, every counter at rest.
    clock.t += 20_001;
    a.set({ status: undefined });
    expect(await chat()).toBe(200);
    expect((await observe(gw, 'a/m')).breaker).toMatchObject({
      state: 'half_open',
      consecutive_successes: 1,
    });
    expect(await chat()).toBe(200);
    o = await observe(gw, 'a/m');
    expect(o.breaker).toMatchObject({
      state: 'closed',
      consecutive_failures: 0,
      consecutive_successes: 0,
      trip_cause: null,
      open_ms: 10_000,
      ms_until_half_open: 0,
      opens: 2,
    });
    expect([o.ready, o.gauge]).toEqual([200, 0]);

    // A 429 with Retry-After: open for exactly that long, cause rate_limit, the backoff not doubled.
    a.set({ status: 429, retryAfterS: 7 });
    expect(await chat()).toBe(429);
    o = await observe(gw, 'a/m');
    expect(o.breaker).toMatchObject({
      state: 'open',
      trip_cause: 'rate_limit',
      open_ms: 10_000,
      ms_until_half_open: 7_000,
      opens: 3,
    });
    expect([o.ready, o.gauge]).toEqual([503, 2]);
    clock.t += 7_001;
    expect((await observe(gw, 'a/m')).breaker).toMatchObject({
      state: 'half_open',
      trip_cause: 'rate_limit',
    });
  });

  it('half-open after a good probe: consecutive_failures is 0 while consecutive_successes counts (one run, not two)', async () => {
    const { clock, a, gw, chat } = await setup();
    a.set({ status: 500 });
    await chat();
    await chat();
    clock.t += 10_001;
    a.set({ status: undefined });
    expect(await chat()).toBe(200);
    const { breaker } = await observe(gw, 'a/m');
    expect(breaker.state).toBe('half_open');
    expect(breaker.consecutive_successes).toBe(1);
    // The last result was a success: there is no run of consecutive failures any more. Showing the
    // pre-open count beside a success run tells an operator two contradicting things at once.
    expect(breaker.consecutive_failures).toBe(0);
  });
});

describe('refused admin reads leave a trace', () => {
  it('a wrong admin key on /router/status, /router/explain and (metrics_auth) /metrics is counted and logged as a 401', async () => {
    const s = await sim('a');
    const gw = track(
      await startGateway({
        server: { api_keys: [CLIENT], admin_key: ADMIN, metrics_auth: true },
        providers: [simProvider('a', s.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const wrong = { authorization: `Bearer ${CLIENT}` }; // a client key, not the admin key
    expect((await get(gw, '/router/status', wrong)).status).toBe(401);
    expect((await get(gw, '/metrics', { 'x-admin-key': 'guess-1' })).status).toBe(401);
    const explain = await postChat(
      gw,
      { model: 'r', messages: HI },
      { path: '/router/explain', headers: wrong },
    );
    expect(explain.status).toBe(401);
    // The same refusal on /v1 is a request line and a count; so is one on an admin path no route serves.
    expect(
      (await postChat(gw, { model: 'r', messages: HI }, { headers: { authorization: 'Bearer nope' } }))
        .status,
    ).toBe(401);
    // Served admin reads stay out of the counts and the log (README Metrics).
    expect((await get(gw, '/router/status', { 'x-admin-key': ADMIN })).status).toBe(200);

    const lines = gw.logs.filter((l) => l.msg === 'request' && l.status === 401);
    const paths = lines.map((l) => String(l.path));
    expect(paths).toContain('/v1/chat/completions');
    // A guessed admin key is a security event: each refusal must be visible, as the /v1 one is.
    expect(paths.filter((p) => p.startsWith('/router') || p === '/metrics').sort()).toEqual([
      '/metrics',
      '/router/explain',
      '/router/status',
    ]);
    expect(gw.logs.some((l) => l.msg === 'request' && l.status === 200)).toBe(false);
    const samples = parseProm((await get(gw, '/metrics', { 'x-admin-key': ADMIN })).text);
    expect(
      value(samples, 'llm_router_requests_total', {
        route: 'none',
        provider: 'none',
        model: 'none',
        status: '401',
      }),
    ).toBe(4);
  });
});

describe('the admin gate under odd spellings of its paths', () => {
  it('encoded, doubled, dotted, suffixed or re-cased admin paths never serve data without the admin key', async () => {
    const s = await sim('a');
    const gw = track(
      await startGateway({
        server: { api_keys: [CLIENT], admin_key: ADMIN, metrics_auth: true },
        providers: [simProvider('a', s.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const paths = [
      '/router/%73tatus',
      '/%72outer/status',
      '/router//status',
      '/router%2Fstatus',
      '/router/status%2F',
      '/router/status;x',
      '/router/status%00',
      '/ROUTER/status',
      '/./router/status',
      '/v1/../router/status',
      '/healthz/../router/status',
      '/%6detrics',
      '/metrics/',
      '/metrics;x',
      '/metrics%3F',
    ];
    for (const path of paths) {
      const tries: Record<string, string>[] = [
        {},
        { authorization: `Bearer ${CLIENT}` },
        { 'x-admin-key': 'guess' },
      ];
      for (const headers of tries) {
        const r = await get(gw, path, headers);
        const label = `${path} ${JSON.stringify(headers)}`;
        expect([401, 404], label).toContain(r.status);
        const err = r.json.error as Json | undefined;
        expect(err && Object.keys(err).sort(), label).toEqual(['code', 'message', 'param', 'type']);
        expect(r.text, label).not.toMatch(/upstreams|llm_router_|breaker/);
      }
    }
    expect(s.requests).toHaveLength(0);
  });
});

describe('/router/explain against hostile and malformed requests', () => {
  it('answers each as the chat endpoint does (status, type, code, param), and calls no upstream', async () => {
    const s = await sim('a');
    const gw = track(
      await startGateway({
        server: { body_limit_bytes: 50_000 },
        providers: [
          simProvider('a', s.url, [
            { name: 'm', capabilities: ['stream'] },
            { name: 'e', capabilities: ['embeddings'] },
          ]),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const deep = `{"model":"r","messages":[{"role":"user","content":"hi"}],"x":${'['.repeat(200)}${']'.repeat(200)}}`;
    const tools = [{ type: 'function', function: { name: 'f', parameters: {} } }];
    const image = [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://x/y.png' } }] }];
    const cases: [string, string, Record<string, string>?][] = [
      ['null', 'null'],
      ['array', '[]'],
      ['string', '"x"'],
      ['empty', ''],
      ['not JSON', '{"model":'],
      ['no model', '{}'],
      ['model not a string', JSON.stringify({ model: 5, messages: HI })],
      ['unknown model', JSON.stringify({ model: 'invented-route', messages: HI })],
      ['__proto__ model', JSON.stringify({ model: '__proto__', messages: HI })],
      ['embeddings model', JSON.stringify({ model: 'a/e', messages: HI })],
      ['messages not a list', JSON.stringify({ model: 'r', messages: 'hi' })],
      ['unknown role', JSON.stringify({ model: 'r', messages: [{ role: 'wizard', content: 'hi' }] })],
      ['stream not a boolean', JSON.stringify({ model: 'r', messages: HI, stream: 'yes' })],
      ['tools unsupported', JSON.stringify({ model: 'r', messages: HI, stream: true, tools })],
      ['image unsupported', JSON.stringify({ model: 'r', messages: image })],
      ['nested too deep', deep],
      [
        'over the body limit',
        JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'x'.repeat(60_000) }] }),
      ],
      ['bad x-router-tier', JSON.stringify({ model: 'r', messages: HI }), { 'x-router-tier': 'ultra' }],
      [
        'bad x-router-strategy',
        JSON.stringify({ model: 'r', messages: HI }),
        { 'x-router-strategy': 'fastest' },
      ],
      ['bad x-router-provider', JSON.stringify({ model: 'r', messages: HI }), { 'x-router-provider': 'zz' }],
    ];
    for (const [name, body, headers] of cases) {
      const explained = await postChat(gw, body, { path: '/router/explain', headers });
      const real = await postChat(gw, body, { headers });
      expect(explained.status, name).toBeGreaterThanOrEqual(400);
      expect(explained.status, name).toBe(real.status);
      const e = explained.json.error as Json;
      const r = real.json.error as Json;
      expect(Object.keys(e).sort(), name).toEqual(['code', 'message', 'param', 'type']);
      expect({ type: e.type, code: e.code, param: e.param }, name).toEqual({
        type: r.type,
        code: r.code,
        param: r.param,
      });
    }
    expect(s.requests).toHaveLength(0);
  });
});
