/**
 * Reload against server.cors, provider pools, breaker episodes and learned request fits:
 * - CORS: a reload changes the origins at once; turning CORS on or off (and max_age_s) takes a restart, so
 *   until then the gateway serves CORS as it started (nothing half-applied), and the log says so.
 * - Pools: a provider's max_concurrency bounds its routed and passthrough requests together, across a reload
 *   too; a reload that keeps the pool keeps one bound for requests of both configs.
 * - Breakers: a request begun before a reload is judged by the reloaded thresholds in its own episode; a
 *   request of a breaker that a reload dropped never touches the breaker of the upstream re-added since.
 * - Fits: a learned fit (Mistral's tool call ids) stays for an upstream whose base_url and model remain.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, fail500, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const APP = 'https://app.example.com';

function reload(gw: TestGateway, cfg: Json): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(cfg), {}));
}

function preflight(gw: TestGateway, origin: string) {
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type',
    },
  });
}

/** An upstream that holds every request until `release()`, counting how many it holds at once. */
async function heldUpstream(answer: (r: Received, res: ServerResponse) => void) {
  const waiting: Array<() => void> = [];
  let released = false;
  const state = { now: 0, max: 0 };
  const mock = track(
    await startMock(async (r, res) => {
      state.now++;
      state.max = Math.max(state.max, state.now);
      if (!released) await new Promise<void>((resolve) => waiting.push(resolve));
      state.now--;
      answer(r, res);
    }),
  );
  return {
    mock,
    state,
    held: () => waiting.length,
    release(): void {
      released = true;
      for (const w of waiting.splice(0)) w();
    },
  };
}

const chatBody = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };

describe('server.cors across a reload', () => {
  function corsConfig(url: string, cors: Json | undefined): Json {
    return {
      server: { api_keys: ['k'], ...(cors ? { cors } : {}) },
      providers: [
        { name: 'up', kind: 'openai', base_url: `${url}/v1`, api_key: 'sk-up', models: [{ name: 'm' }] },
      ],
      routes: { r: { targets: ['up/m'] } },
    };
  }

  it('a reload that changes the origins applies at once to answers, with the request id still set', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'hello')));
    const gw = track(await startGateway(corsConfig(up.url, { origins: [APP] })));
    const other = 'http://localhost:5173';
    reload(gw, corsConfig(up.url, { origins: [other] }));
    const denied = await postChat(gw, chatBody, { headers: { origin: APP } });
    expect(denied.status).toBe(200);
    expect(denied.headers['access-control-allow-origin']).toBeUndefined();
    const allowed = await postChat(gw, chatBody, { headers: { origin: other } });
    expect(allowed.status).toBe(200);
    expect(allowed.headers['access-control-allow-origin']).toBe(other);
    expect(allowed.headers['x-request-id']).toBeTruthy();
    expect(allowed.headers['access-control-expose-headers']).toMatch(/x-request-id/i);
  });

  it('a reload that removes server.cors leaves CORS as it started until a restart (README: on/off takes a restart)', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'hello')));
    const gw = track(await startGateway(corsConfig(up.url, { origins: [APP] })));
    reload(gw, corsConfig(up.url, undefined));
    // OPTIONS is still answered as a preflight (the plugin stays): it must then still answer as CORS does,
    // not as a preflight that refuses every origin (a browser page that worked breaks with no restart).
    const pre = await preflight(gw, APP);
    await pre.body.dump();
    expect(pre.statusCode).toBeLessThan(300);
    expect(pre.headers['access-control-allow-origin']).toBe(APP);
    const r = await postChat(gw, chatBody, { headers: { origin: APP } });
    expect(r.status).toBe(200);
    expect(r.headers['access-control-allow-origin']).toBe(APP);
  });

  it('a reload that adds server.cors applies nothing of it until a restart', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'hello')));
    const gw = track(await startGateway(corsConfig(up.url, undefined)));
    reload(gw, corsConfig(up.url, { origins: [APP] }));
    const pre = await preflight(gw, APP);
    await pre.body.dump();
    expect(pre.statusCode).toBe(401); // an OPTIONS is still a request needing a key
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    const r = await postChat(gw, chatBody, { headers: { origin: APP } });
    expect(r.status).toBe(200);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('a reload that turns CORS on or off, or changes max_age_s, says in the log that it needs a restart', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'hello')));
    const gw = track(await startGateway(corsConfig(up.url, undefined)));
    const restartLines = (): string[] =>
      gw.logs.map((l) => String(l.msg)).filter((m) => /cors/.test(m) && /restart/.test(m));
    reload(gw, corsConfig(up.url, { origins: [APP] }));
    expect(restartLines()).toHaveLength(1);
    const gw2 = track(await startGateway(corsConfig(up.url, { origins: [APP], max_age_s: 600 })));
    reload(gw2, corsConfig(up.url, { origins: [APP], max_age_s: 60 }));
    expect(
      gw2.logs.map((l) => String(l.msg)).filter((m) => /cors/.test(m) && /restart/.test(m)),
    ).toHaveLength(1);
  });
});

describe('provider pools across a reload', () => {
  function poolConfig(url: string, maxConcurrency: number, extra: Json = {}): Json {
    return {
      server: { api_keys: ['k'], passthrough: 'up' },
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: 'sk-up',
          max_concurrency: maxConcurrency,
          models: [{ name: 'm' }],
          ...extra,
        },
      ],
      routes: { r: { targets: ['up/m'] } },
    };
  }

  const answer = (r: Received, res: ServerResponse): void => {
    if (r.path.startsWith('/v1/chat')) answerChat(res, r.body, 'hello');
    else sendJson(res, 200, { object: 'list', data: [] });
  };

  it('a reload that raises the passthrough provider max_concurrency never lets the provider see more than it', async () => {
    const up = await heldUpstream(answer);
    const gw = track(await startGateway(poolConfig(up.mock.url, 1)));
    const files = request(`${gw.url}/v1/files`, { headers: { authorization: 'Bearer k' } });
    await until('the upstream to hold a request', () => up.held() === 1);
    reload(gw, poolConfig(up.mock.url, 2));
    const chats = [postChat(gw, chatBody), postChat(gw, chatBody)];
    // Either the two routed requests wait for the passthrough's connection, or one of them does: never three.
    await new Promise((r) => setTimeout(r, 400));
    const atOnce = up.state.max;
    up.release();
    const [f, ...rs] = await Promise.all([files, ...chats]);
    await f.body.dump();
    expect(rs.map((r) => r.status)).toEqual([200, 200]);
    expect(atOnce).toBeLessThanOrEqual(2);
  });

  it('a reload that keeps the pool keeps one bound for requests of the old and the new config', async () => {
    const up = await heldUpstream(answer);
    const gw = track(await startGateway(poolConfig(up.mock.url, 1, { timeouts: { idle_ms: 20_000 } })));
    const first = postChat(gw, chatBody);
    const queued = postChat(gw, chatBody);
    await until('the upstream to hold a request', () => up.held() === 1);
    reload(gw, poolConfig(up.mock.url, 1, { timeouts: { idle_ms: 25_000 } }));
    const after = postChat(gw, chatBody);
    await new Promise((r) => setTimeout(r, 300));
    expect(up.state.max).toBe(1);
    up.release();
    const rs = await Promise.all([first, queued, after]);
    expect(rs.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(up.state.max).toBe(1);
    expect(gw.gateway.runtime.providers.get('up')?.client.active).toBe(0);
  });

  it('a provider a reload removes finishes its attempts in flight, and its pool then counts none', async () => {
    const up = await heldUpstream(answer);
    const cfg = poolConfig(up.mock.url, 4);
    const gw = track(await startGateway(cfg));
    const client = gw.gateway.runtime.providers.get('up')!.client;
    const running = [postChat(gw, chatBody), postChat(gw, chatBody)];
    await until('the upstream to hold two requests', () => up.held() === 2);
    expect(client.active).toBe(2);
    const other = track(await startMock((r, res) => answerChat(res, r.body, 'other')));
    reload(gw, {
      server: { api_keys: ['k'] },
      providers: [
        { name: 'o', kind: 'openai', base_url: `${other.url}/v1`, api_key: 'sk-o', models: [{ name: 'm' }] },
      ],
      routes: { r: { targets: ['o/m'] } },
    });
    up.release();
    const rs = await Promise.all(running);
    expect(rs.map((r) => r.status)).toEqual([200, 200]);
    expect(rs.map((r) => String((r.json.choices as Json[])[0] ? 'ok' : ''))).toEqual(['ok', 'ok']);
    expect(client.active).toBe(0);
  });
});

describe('breakers across a reload', () => {
  function breakerConfig(url: string, threshold: number, models = ['m']): Json {
    return {
      server: { api_keys: ['k'] },
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${url}/v1`,
          api_key: 'sk-up',
          models: models.map((name) => ({ name })),
        },
      ],
      routes: { r: { targets: models.map((m) => `up/${m}`) } },
      circuit_breaker: { failure_threshold: threshold, open_ms: 60_000 },
    };
  }

  it('a request begun before a reload that lowered failure_threshold to 1 opens the breaker when it fails', async () => {
    const up = await heldUpstream((_r, res) => fail500(res));
    const gw = track(await startGateway(breakerConfig(up.mock.url, 5)));
    const pending = postChat(gw, chatBody);
    await until('the upstream to hold a request', () => up.held() === 1);
    reload(gw, breakerConfig(up.mock.url, 1));
    up.release();
    expect((await pending).status).toBeGreaterThanOrEqual(500);
    await until(
      'the breaker to open',
      () => gw.gateway.runtime.upstreams.get('up/m')?.breaker.snapshot().state === 'open',
    );
  });

  it('a request of a breaker a reload dropped does not count against the breaker of the upstream re-added since', async () => {
    const up = await heldUpstream((_r, res) => fail500(res));
    const gw = track(await startGateway(breakerConfig(up.mock.url, 1, ['m', 'n'])));
    const pending = postChat(gw, { ...chatBody, model: 'up/m' });
    await until('the upstream to hold a request', () => up.held() === 1);
    reload(gw, breakerConfig(up.mock.url, 1, ['n']));
    reload(gw, breakerConfig(up.mock.url, 1, ['m', 'n']));
    up.release();
    expect((await pending).status).toBeGreaterThanOrEqual(500);
    await new Promise((r) => setTimeout(r, 50));
    const snap = gw.gateway.runtime.upstreams.get('up/m')!.breaker.snapshot();
    expect(snap.state).toBe('closed');
    expect(snap.consecutiveFailures).toBe(0);
  });
});

describe('learned fits across a reload', () => {
  it("Mistral's tool call id fit stays for an upstream whose base_url and model remain", async () => {
    const mistral = track(
      await startMock((r, res) => {
        const msgs = r.body.messages as Json[];
        const ids = msgs.flatMap((m) =>
          [
            ...((m.tool_calls as Json[] | undefined) ?? []).map((c) => String(c.id)),
            ...(m.tool_call_id === undefined ? [] : [String(m.tool_call_id)]),
          ].filter((id) => !/^[A-Za-z0-9]{9}$/.test(id)),
        );
        if (ids.length > 0) {
          sendJson(res, 400, {
            object: 'error',
            message: `Tool call id was ${ids[0]} but must be a-z, A-Z, 0-9, with a length of 9.`,
            type: 'invalid_request_message_order',
            param: null,
            code: '3280',
          });
          return;
        }
        answerChat(res, r.body, 'done');
      }),
    );
    const cfg = (price: number): Json => ({
      server: { api_keys: ['k'] },
      providers: [
        {
          name: 'mistral',
          kind: 'openai',
          base_url: `${mistral.url}/v1`,
          api_key: 'sk-m',
          models: [{ name: 'm', price: { input_per_mtok: price, output_per_mtok: price } }],
        },
      ],
      routes: { r: { targets: ['mistral/m'] } },
    });
    const gw = track(await startGateway(cfg(1)));
    const body = (id: string): Json => ({
      model: 'r',
      messages: [
        { role: 'user', content: 'weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id, type: 'function', function: { name: 'w', arguments: '{}' } }],
        },
        { role: 'tool', tool_call_id: id, content: 'sunny' },
      ],
    });
    const first = await postChat(gw, body('toolu_01ABCDEFGHIJ'));
    expect(first.status).toBe(200);
    expect(mistral.received).toHaveLength(2); // refused once, learned, sent fitted
    reload(gw, cfg(2));
    const before = mistral.received.length;
    const second = await postChat(gw, body('call_abcdefghijklmnop'));
    expect(second.status).toBe(200);
    expect(mistral.received.length - before).toBe(1); // fitted at once: no refusal to learn from again
  });
});
