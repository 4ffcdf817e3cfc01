/**
 * A config reload while traffic flows. Requests are held IN FLIGHT at a gated mock upstream across
 * the swap, then released: they must finish on the config they began with, and what the reload removed must
 * leave nothing behind once they are done (README: "An upstream a reload removes takes its series with it
 * (its breaker gauge at once, the rest once the old config's requests are done)").
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { parseProm, value, type Sample } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;

const OLD_KEY = 'sk-old-ROTATE-1234567890abcdef';
const NEW_KEY = 'sk-new-ROTATE-abcdef1234567890';

/** A gate per held request: `hold` content makes the mock wait for `releaseAll()` before answering (the rest). */
function gatedUpstream() {
  const waiting: Array<() => void> = [];
  const released = { all: false };
  const wait = (): Promise<void> =>
    released.all ? Promise.resolve() : new Promise<void>((r) => waiting.push(r));
  const lastUser = (body: Json): string => {
    const msgs = body.messages as Array<{ content: string }>;
    return String(msgs[msgs.length - 1]?.content ?? '');
  };
  const handler = async (r: Received, res: ServerResponse): Promise<void> => {
    const body = r.body;
    const held = lastUser(body).includes('hold');
    const model = String(body.model);
    if (lastUser(body).includes('echo-key')) {
      if (held) await wait();
      // A hostile upstream: its 400 quotes the credential it was sent.
      sendJson(res, 400, {
        error: {
          message: `bad request; you sent ${String(r.headers.authorization)}`,
          type: 'invalid_request_error',
          param: null,
          code: null,
        },
      });
      return;
    }
    if (body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(model, { role: 'assistant', content: '' }));
      res.write(chunkFrame(model, { content: 'Hel' }));
      if (held) await wait();
      res.write(chunkFrame(model, { content: 'lo' }, 'stop'));
      res.write(
        `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model, choices: [], usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 } })}\n\n`,
      );
      res.end('data: [DONE]\n\n');
      return;
    }
    if (held) await wait();
    sendJson(res, 200, {
      id: 'x',
      object: 'chat.completion',
      created: 1,
      model,
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hello' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 },
    });
  };
  return {
    handler,
    releaseAll(): void {
      released.all = true;
      for (const r of waiting.splice(0)) r();
    },
    waiting: () => waiting.length,
  };
}

async function upstream() {
  const g = gatedUpstream();
  const mock = track(await startMock(g.handler));
  return { ...g, mock, url: mock.url };
}

function provider(name: string, url: string, models: Array<string | Json>, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: OLD_KEY,
    models: models.map((m) =>
      typeof m === 'string' ? { name: m, price: { input_per_mtok: 1, output_per_mtok: 2 } } : m,
    ),
    ...extra,
  };
}

function config(providers: Json[], routes: Json, extra: Json = {}): Json {
  return {
    server: { host: '127.0.0.1', port: 0, ...((extra.server as Json | undefined) ?? {}) },
    providers,
    routes,
    circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    ...Object.fromEntries(Object.entries(extra).filter(([k]) => k !== 'server')),
  };
}

function reload(gw: TestGateway, cfg: Json, env: Record<string, string> = {}): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(cfg), env));
}

async function metrics(gw: TestGateway): Promise<Sample[]> {
  const res = await request(`${gw.url}/metrics`);
  return parseProm(await res.body.text());
}

/** Every series that names this upstream (by provider and model labels). */
function seriesOf(samples: readonly Sample[], providerName: string, model: string): string[] {
  return samples
    .filter((s) => s.labels.provider === providerName && s.labels.model === model)
    .map((s) => `${s.name}${JSON.stringify(s.labels)}=${s.value}`);
}

function chat(gw: TestGateway, body: Json, headers: Record<string, string> = {}) {
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

async function chatText(gw: TestGateway, body: Json, headers: Record<string, string> = {}) {
  const res = await chat(gw, body, headers);
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

const ask = (model: string, content: string, extra: Json = {}): Json => ({
  model,
  messages: [{ role: 'user', content }],
  ...extra,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('an upstream removed by a reload while its request is in flight', () => {
  it('JSON: the request finishes on the old config and none of the removed upstream series is left after it', async () => {
    const up = await upstream();
    const gw = track(
      await startGateway(
        config([provider('p', up.url, ['m1', 'm2'])], {
          main: { strategy: 'priority', targets: ['p/m2'] },
          keep: { targets: ['p/m1'] },
        }),
      ),
    );
    const pending = chatText(gw, ask('main', 'hold please'));
    await until('the request reaches the upstream', () => up.waiting() === 1);
    // m2 is removed; its provider (same base_url: same pool) stays with m1.
    reload(gw, config([provider('p', up.url, ['m1'])], { keep: { targets: ['p/m1'] } }));
    up.releaseAll();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text).choices[0].message.content).toBe('Hello');
    expect(r.headers['x-router-model']).toBe('m2');
    await sleep(100);
    const m = await metrics(gw);
    expect(seriesOf(m, 'p', 'm2')).toEqual([]);
    // The upstream that remains is unharmed.
    expect(value(m, 'llm_router_inflight_requests', { provider: 'p', model: 'm1' })).toBe(0);
  });

  it('stream: it completes with [DONE], its request line names the removed upstream, and no series of it is left', async () => {
    const up = await upstream();
    const gw = track(
      await startGateway(
        config([provider('p', up.url, ['m1', 'm2'])], {
          main: { strategy: 'priority', targets: ['p/m2'] },
          keep: { targets: ['p/m1'] },
        }),
      ),
    );
    const res = await chat(gw, ask('main', 'hold this stream', { stream: true }));
    expect(res.statusCode).toBe(200);
    const it = res.body[Symbol.asyncIterator]();
    let text = String((await it.next()).value ?? '');
    reload(gw, config([provider('p', up.url, ['m1'])], { keep: { targets: ['p/m1'] } }));
    up.releaseAll();
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      text += String(next.value);
    }
    expect(text).toContain('data: [DONE]');
    await sleep(100);
    const line = gw.logs.find((l) => l.route === 'main' && l.status === 200);
    expect(line).toBeDefined();
    expect(JSON.stringify(line)).toContain('m2');
    const m = await metrics(gw);
    expect(seriesOf(m, 'p', 'm2')).toEqual([]);
  });

  it('a whole provider removed (its pool closes): the stream finishes and every series of it goes', async () => {
    const a = await upstream();
    const b = await upstream();
    const gw = track(
      await startGateway(
        config([provider('a', a.url, ['m']), provider('b', b.url, ['m'])], {
          main: { strategy: 'priority', targets: ['a/m', 'b/m'] },
        }),
      ),
    );
    const res = await chat(gw, ask('main', 'hold this stream', { stream: true }));
    const it = res.body[Symbol.asyncIterator]();
    let text = String((await it.next()).value ?? '');
    reload(gw, config([provider('b', b.url, ['m'])], { main: { strategy: 'priority', targets: ['b/m'] } }));
    // New requests go to b at once.
    const fresh = await chatText(gw, ask('main', 'hi'));
    expect(fresh.headers['x-router-provider']).toBe('b');
    a.releaseAll();
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      text += String(next.value);
    }
    expect(text).toContain('data: [DONE]');
    expect(text).not.toContain('"error"');
    await sleep(300);
    const m = await metrics(gw);
    expect(
      m.filter((s) => s.labels.provider === 'a' || s.labels.from_provider === 'a').map((s) => s.name),
    ).toEqual([]);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'b', model: 'm' })).toBe(0);
  });
});

describe('an upstream that remains across a reload with requests in flight', () => {
  it('in-flight gauge, /router/status in_flight and statistics stay consistent; old request keeps old price', async () => {
    const up = await upstream();
    const priced = (inp: number) => [{ name: 'm', price: { input_per_mtok: inp, output_per_mtok: 0 } }];
    const gw = track(
      await startGateway(config([provider('p', up.url, priced(1_000))], { main: { targets: ['p/m'] } })),
    );
    const pendings = [
      chatText(gw, ask('main', 'hold one')),
      chatText(gw, ask('main', 'hold two', { stream: true })),
    ];
    await until('both requests at the upstream', () => up.waiting() === 2);
    let m = await metrics(gw);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'p', model: 'm' })).toBe(2);
    // Re-priced and its pool resized (a new pool): the upstream itself remains.
    reload(
      gw,
      config([provider('p', up.url, priced(2_000), { max_concurrency: 8 })], { main: { targets: ['p/m'] } }),
    );
    m = await metrics(gw);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'p', model: 'm' })).toBe(2);
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{ id: string; in_flight: number }>;
    };
    expect(st.upstreams.find((u) => u.id === 'p/m')?.in_flight).toBe(2);
    up.releaseAll();
    const done = await Promise.all(pendings);
    expect(done.map((d) => d.status)).toEqual([200, 200]);
    const fresh = await chatText(gw, ask('main', 'new'));
    expect(fresh.status).toBe(200);
    await sleep(100);
    m = await metrics(gw);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'p', model: 'm' })).toBe(0);
    const st2 = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{ id: string; in_flight: number }>;
    };
    expect(st2.upstreams.find((u) => u.id === 'p/m')?.in_flight).toBe(0);
    // 10 prompt tokens at $1000/Mtok (old) x2 requests + at $2000/Mtok (new) x1.
    expect(value(m, 'llm_router_cost_usd_total', { provider: 'p', model: 'm' })).toBeCloseTo(
      0.01 + 0.01 + 0.02,
      9,
    );
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'p', model: 'm', outcome: 'success' }),
    ).toBe(3);
  });

  it('api_key rotated mid-flight: the old request used the old key, new ones the new key; neither key leaks', async () => {
    const up = await upstream();
    const withKey = (k: string) =>
      config([provider('p', up.url, ['m'], { api_key: k })], { main: { targets: ['p/m'] } });
    const gw = track(await startGateway(withKey(OLD_KEY)));
    const stream = await chat(gw, ask('main', 'hold this stream', { stream: true }));
    const echoPending = chatText(gw, ask('main', 'hold echo-key'));
    await until('both at the upstream', () => up.waiting() === 2);
    reload(gw, withKey(NEW_KEY));
    const fresh = await chatText(gw, ask('main', 'echo-key now'));
    up.releaseAll();
    const stale = await echoPending;
    const streamed = await stream.body.text();
    expect(streamed).toContain('data: [DONE]');
    expect(up.mock.received.slice(0, 2).map((r) => r.headers.authorization)).toEqual([
      `Bearer ${OLD_KEY}`,
      `Bearer ${OLD_KEY}`,
    ]);
    expect(up.mock.received[2]?.headers.authorization).toBe(`Bearer ${NEW_KEY}`);
    expect(stale.status).toBe(400);
    expect(fresh.status).toBe(400);
    for (const t of [stale.text, fresh.text]) {
      expect(t).not.toContain(OLD_KEY);
      expect(t).not.toContain(NEW_KEY);
    }
    await sleep(50);
    expect(gw.rawLogs()).not.toContain(OLD_KEY);
    expect(gw.rawLogs()).not.toContain(NEW_KEY);
  });

  it('an open breaker stays open across a reload that changes circuit_breaker settings; a half-open probe in flight is honoured', async () => {
    const bad = await startMock((_r, res) => sendJson(res, 500, { error: { message: 'boom' } }));
    track(bad);
    const good = await upstream();
    let failing = true;
    const flaky = track(
      await startMock(async (r, res) => {
        if (failing) return sendJson(res, 500, { error: { message: 'boom' } });
        return good.handler(r, res);
      }),
    );
    const cfg = (openMs: number) =>
      config(
        [provider('f', flaky.url, ['m']), provider('g', good.url, ['m'])],
        { main: { strategy: 'priority', targets: ['f/m', 'g/m'] } },
        {
          circuit_breaker: {
            failure_threshold: 1,
            open_ms: openMs,
            success_threshold: 1,
            half_open_probes: 1,
          },
        },
      );
    const gw = track(await startGateway(cfg(400)));
    expect((await chatText(gw, ask('main', 'hi'))).headers['x-router-provider']).toBe('g'); // f failed: open
    failing = false;
    await sleep(500); // open_ms over: half-open
    const probe = chatText(gw, ask('main', 'hold the probe'));
    await until('the probe reaches f', () => flaky.received.length === 2);
    reload(gw, cfg(500));
    // The probe is still in flight: a second request must not be a second probe.
    const second = await chatText(gw, ask('main', 'hi again'));
    expect(second.headers['x-router-provider']).toBe('g');
    expect(flaky.received).toHaveLength(2);
    good.releaseAll();
    const p = await probe;
    expect(p.status).toBe(200);
    expect(p.headers['x-router-provider']).toBe('f');
    await sleep(50);
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{
        id: string;
        in_flight: number;
        breaker: { state: string; probes_in_flight: number };
      }>;
    };
    const f = st.upstreams.find((u) => u.id === 'f/m')!;
    expect(f.breaker.state).toBe('closed');
    expect(f.breaker.probes_in_flight).toBe(0);
    expect(f.in_flight).toBe(0);
    const m = await metrics(gw);
    expect(value(m, 'llm_router_circuit_state', { provider: 'f', model: 'm' })).toBe(0);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'f', model: 'm' })).toBe(0);
  });
});

describe('invalid reloads while a stream flows', () => {
  it('YAML error, unknown key, unset ${VAR}: each rejected with its path, counted, the stream and the old config unharmed', async () => {
    const up = await upstream();
    const gw = track(
      await startGateway(config([provider('p', up.url, ['m'])], { main: { targets: ['p/m'] } })),
    );
    const res = await chat(gw, ask('main', 'hold this stream', { stream: true }));
    const it = res.body[Symbol.asyncIterator]();
    let text = String((await it.next()).value ?? '');
    const path = '/etc/llm/gateway.yaml';
    const good = JSON.stringify(config([provider('p', up.url, ['m'])], { main: { targets: ['p/m'] } }));
    const bads = [
      'server: { host: 127.0.0.1\nproviders: [',
      good.replace('"routes":', '"routez": {}, "routes":'),
      good.replace(`${up.url}/v1`, '${UPSTREAM_BASE_URL_UNSET}/v1'),
    ];
    for (const b of bads)
      expect(gw.gateway.tryReload(() => parseConfigText(b, {}, path), 'test')).toBe(false);
    const rejected = gw.logs.filter((l) => l.msg === 'config reload rejected; the old config keeps serving');
    expect(rejected).toHaveLength(3);
    for (const l of rejected) expect(String(l.error)).toContain(path);
    expect(String(rejected[1]!.error)).toContain('routez');
    expect(String(rejected[2]!.error)).toContain('providers[0].base_url');
    const fresh = await chatText(gw, ask('main', 'hi'));
    expect(fresh.status).toBe(200);
    up.releaseAll();
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      text += String(next.value);
    }
    expect(text).toContain('data: [DONE]');
    const m = await metrics(gw);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'failure' })).toBe(3);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'success' }) ?? 0).toBe(0);
  });
});

describe('two reloads in quick succession with requests in flight', () => {
  it('remove then re-add an upstream while its stream runs: the re-added one keeps honest series afterwards', async () => {
    const up = await upstream();
    const both = config([provider('p', up.url, ['m1', 'm2'])], {
      main: { strategy: 'priority', targets: ['p/m2', 'p/m1'] },
    });
    const one = config([provider('p', up.url, ['m1'])], { main: { targets: ['p/m1'] } });
    const gw = track(await startGateway(both));
    const res = await chat(gw, ask('main', 'hold this stream', { stream: true }));
    const body = res.body.text();
    await until('the stream reaches the upstream', () => up.waiting() === 1);
    reload(gw, one);
    reload(gw, both);
    up.releaseAll();
    expect(await body).toContain('data: [DONE]');
    await sleep(100);
    const m = await metrics(gw);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'p', model: 'm2' })).toBe(0);
    expect(value(m, 'llm_router_circuit_state', { provider: 'p', model: 'm2' })).toBe(0);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'p', model: 'm2', outcome: 'success' }),
    ).toBe(1);
  });

  it('remove an upstream, then reload again (still without it) before its JSON request ends: nothing of it is left', async () => {
    const up = await upstream();
    const both = config([provider('p', up.url, ['m1', 'm2'])], {
      main: { strategy: 'priority', targets: ['p/m2', 'p/m1'] },
    });
    const one = (s: string) =>
      config([provider('p', up.url, ['m1'])], { main: { strategy: s, targets: ['p/m1'] } });
    const gw = track(await startGateway(both));
    const pending = chatText(gw, ask('main', 'hold please'));
    await until('at the upstream', () => up.waiting() === 1);
    reload(gw, one('priority'));
    reload(gw, one('round-robin'));
    up.releaseAll();
    expect((await pending).status).toBe(200);
    await sleep(100);
    expect(seriesOf(await metrics(gw), 'p', 'm2')).toEqual([]);
  });
});

describe('what a reload changes for new requests', () => {
  it('server.body_limit_bytes needs a restart (README): passthrough uploads keep the old limit as chat does', async () => {
    const pt = track(await startMock((_r, res) => sendJson(res, 200, { object: 'file', id: 'file-1' })));
    const up = await upstream();
    const base = (limit: number) =>
      config(
        [provider('pt', pt.url, ['m']), provider('p', up.url, ['m'])],
        { main: { targets: ['p/m'] } },
        { server: { passthrough: 'pt', body_limit_bytes: limit } },
      );
    const gw = track(await startGateway(base(2_000)));
    reload(gw, base(100_000));
    const warned = gw.logs.find((l) => Array.isArray(l.settings));
    expect(warned?.settings).toEqual(['server.body_limit_bytes']);
    const big = { purpose: 'x', pad: 'y'.repeat(5_000) };
    const chatRes = await chatText(gw, { ...ask('main', 'hi'), pad: 'y'.repeat(5_000) });
    expect(chatRes.status).toBe(413); // the old limit still applies to chat, as the warning says
    const ptRes = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(big),
    });
    await ptRes.body.dump();
    // Same setting, same process: the passthrough must not apply what the log says is not applied.
    expect(ptRes.statusCode).toBe(413);
  });

  it('a reload that drops a tier: a router answer cached for it is not reused', async () => {
    const up = await upstream();
    const routerUp = track(
      await startMock((r, res) =>
        sendJson(res, 200, {
          id: 'r',
          object: 'chat.completion',
          created: 1,
          model: String(r.body.model),
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: '{"tier":"deep","reason":"hard"}' },
              finish_reason: 'stop',
            },
          ],
          usage: { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 },
        }),
      ),
    );
    const tiered = (withDeep: boolean) =>
      config([provider('p', up.url, ['fastm', 'balm', 'deepm']), provider('r', routerUp.url, ['rm'])], {
        auto: {
          strategy: 'priority',
          tiers: {
            fast: ['r/rm'],
            balanced: ['p/balm'],
            ...(withDeep ? { deep: ['p/deepm'] } : {}),
          },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 300 },
        },
      });
    const gw = track(await startGateway(tiered(true)));
    const a = await chatText(gw, ask('auto', 'same prompt'));
    expect(a.headers['x-router-tier']).toBe('deep');
    expect(a.headers['x-router-model']).toBe('deepm');
    reload(gw, tiered(false));
    const b = await chatText(gw, ask('auto', 'same prompt'));
    expect(b.status).toBe(200);
    expect(b.headers['x-router-tier']).not.toBe('deep');
    expect(b.headers['x-router-model']).toBe('balm');
  });
});

describe('server.passthrough changed by a reload (README: needs a restart; the log says it is not applied)', () => {
  async function passthroughPair() {
    const a = track(await startMock((_r, res) => sendJson(res, 200, { object: 'file', id: 'file-a' })));
    const b = track(await startMock((_r, res) => sendJson(res, 200, { object: 'file', id: 'file-b' })));
    const up = await upstream();
    const cfg = (pass: string | undefined) =>
      config(
        [
          provider('pa', a.url, ['m'], { api_key: 'sk-pa-KEY-0123456789abcdef' }),
          provider('pb', b.url, ['m'], { api_key: 'sk-pb-KEY-0123456789abcdef' }),
          provider('p', up.url, ['m']),
        ],
        { main: { targets: ['p/m'] } },
        { server: pass === undefined ? {} : { passthrough: pass } },
      );
    return { a, b, cfg };
  }
  const upload = async (gw: TestGateway) => {
    const res = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer client-key' },
      body: JSON.stringify({ purpose: 'x' }),
    });
    return { status: res.statusCode, text: await res.body.text() };
  };

  it('pointed at another provider: the old passthrough keeps serving with its own key, never the new provider key', async () => {
    const { a, b, cfg } = await passthroughPair();
    const gw = track(await startGateway(cfg('pa')));
    reload(gw, cfg('pb'));
    expect(gw.logs.find((l) => Array.isArray(l.settings))?.settings).toContain('server.passthrough');
    const r = await upload(gw);
    expect(r.status).toBe(200);
    expect(b.received).toHaveLength(0); // not applied until restart: still pa's host
    // pb's key must never be sent to pa's host.
    expect(a.received[0]?.headers.authorization).not.toBe('Bearer sk-pb-KEY-0123456789abcdef');
    expect(a.received[0]?.headers.authorization).toBe('Bearer sk-pa-KEY-0123456789abcdef');
  });

  it('unset by a reload: the passthrough (still proxying until restart) keeps sending its provider key', async () => {
    const { a, cfg } = await passthroughPair();
    const gw = track(await startGateway(cfg('pa')));
    reload(gw, cfg(undefined));
    expect(gw.logs.find((l) => Array.isArray(l.settings))?.settings).toContain('server.passthrough');
    const r = await upload(gw);
    // Proxied as the warning says (the change waits for a restart): with the provider's key, not none.
    expect(r.status).toBe(200);
    expect(a.received[0]?.headers.authorization).toBe('Bearer sk-pa-KEY-0123456789abcdef');
  });

  it('its provider removed by a reload: a 404 that says so, nothing sent upstream without a key', async () => {
    const { a, cfg } = await passthroughPair();
    const gw = track(await startGateway(cfg('pa')));
    const without = cfg(undefined) as { providers: { name: string }[] };
    reload(gw, { ...without, providers: without.providers.filter((p) => p.name !== 'pa') });
    const r = await upload(gw);
    expect(r.status).toBe(404);
    expect(JSON.parse(r.text)).toMatchObject({ error: { type: 'invalid_request_error' } });
    expect((JSON.parse(r.text) as { error: { message: string } }).error.message).toContain(
      'passthrough provider "pa" is no longer configured',
    );
    expect(a.received).toHaveLength(0);
  });
});
