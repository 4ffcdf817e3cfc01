import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { upstreamAt } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
let gw: TestGateway | undefined;

async function setup(
  simOpts: Parameters<typeof startSimulator>[0] = {},
  extra: Record<string, unknown> = {},
) {
  const sim = track(await startSimulator({ name: 'alpha', ...simOpts }));
  gw = track(
    await startGateway({
      providers: [simProvider('alpha', sim.url, ['m1'], { api_key: 'sk-alpha-secret' })],
      routes: { fast: { strategy: 'priority', targets: ['alpha/m1'] } },
      ...extra,
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  return { sim, gw, client };
}

describe('OpenAI SDK through the gateway', () => {
  it('gets a chat completion with routing headers, and the upstream sees its own model name and key', async () => {
    const { sim, client } = await setup();
    const { data, response } = await client.chat.completions
      .create({
        model: 'fast',
        messages: [{ role: 'user', content: 'hi' }],
        temperature: 0.5,
        custom_field: 42,
      } as never)
      .withResponse();
    expect(data.choices[0]?.message.content).toContain('alpha');
    expect(response.headers.get('x-router-provider')).toBe('alpha');
    expect(response.headers.get('x-router-model')).toBe('m1');
    expect(response.headers.get('x-router-attempts')).toBe('1');
    expect(response.headers.get('x-request-id')).toBeTruthy();
    const seen = sim.requests[0]!;
    expect((seen.body as Record<string, unknown>).model).toBe('m1');
    expect((seen.body as Record<string, unknown>).custom_field).toBe(42); // unknown fields pass through
    expect(seen.headers.authorization).toBe('Bearer sk-alpha-secret');
  });

  it("sends the upstream the client's own bytes with only the model changed", async () => {
    const { sim, gw } = await setup();
    // JSON.stringify would rewrite all three: the layout, 1.0 -> 1 and 1e400 -> null.
    const text =
      '{\n  "messages": [{ "role": "user", "content": "h\u00e9llo \\"model\\": \\"fast\\"" }],\n' +
      '  "model": "fast",\n  "temperature": 1.0,\n  "x_custom": 1e400\n}';
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: text,
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(sim.requests[0]!.text).toBe(text.replace('"model": "fast"', '"model": "m1"'));
  });

  it('streams: the first chunk reaches the client while the simulator is still sending', async () => {
    const { sim, client } = await setup({ chunkDelayMs: 100, completionTokens: 10 });
    const t0 = performance.now();
    const stream = await client.chat.completions.create({
      model: 'fast',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let firstContentAt: number | undefined;
    let text = '';
    for await (const chunk of stream) {
      const c = chunk.choices[0]?.delta.content;
      if (c) {
        firstContentAt ??= performance.now() - t0;
        text += c;
      }
    }
    const endAt = performance.now() - t0;
    expect(text).toContain('alpha');
    // 10 chunks 100 ms apart: a relaying gateway delivers the first ~900 ms before the last.
    expect(firstContentAt).toBeDefined();
    expect(endAt - firstContentAt!).toBeGreaterThan(600);
    expect(sim.requests[0]!.finished).toBe(true);
  });

  it('aborts the upstream request when the client disconnects mid-stream', async () => {
    const { sim } = await setup({ chunkDelayMs: 200, completionTokens: 50 });
    const ac = new AbortController();
    const res = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fast', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      signal: ac.signal,
    });
    expect(res.statusCode).toBe(200);
    const it = res.body[Symbol.asyncIterator]();
    await it.next(); // at least one chunk arrived
    ac.abort();
    const aborted = await sim.waitForAbort(5_000);
    expect(aborted.aborted).toBe(true);
    expect(aborted.finished).toBe(false);
  });

  it('aborts a non-streaming upstream request too when the client gives up waiting', async () => {
    const { sim } = await setup({ latencyMs: 5_000 });
    const ac = new AbortController();
    const pending = request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] }),
      signal: ac.signal,
    }).catch(() => undefined);
    await sim.waitForRequests(1, 5_000);
    ac.abort();
    await pending;
    const aborted = await sim.waitForAbort(5_000);
    expect(aborted.finished).toBe(false);
    // The upstream was not blamed for the client leaving.
    const status = (await (await request(`${gw!.url}/router/status`)).body.json()) as {
      upstreams: { breaker: { consecutive_failures: number } }[];
    };
    expect(status.upstreams[0]!.breaker.consecutive_failures).toBe(0);
  });

  it('keeps its upstream connection alive across JSON answers and whole streams, even when the body ends after [DONE]', async () => {
    // The body's end comes 30 ms after [DONE]: the client is answered at [DONE], and the rest is still read
    // so that the connection goes back to the pool (to a real provider, a new one is a TLS handshake).
    const { sim, client, gw } = await setup({ completionTokens: 5, endDelayMs: 30 });
    for (let i = 0; i < 4; i++) {
      await client.chat.completions.create({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] });
      const stream = await client.chat.completions.create({
        model: 'fast',
        messages: [{ role: 'user', content: 'hi' }],
        stream: true,
      });
      let chunks = 0;
      for await (const _ of stream) chunks++;
      expect(chunks).toBeGreaterThan(5);
      // The stream's body is still being read after [DONE]: the next request waits for its end.
      await vi.waitFor(async () => expect((await upstreamAt(gw.url, 'alpha/m1')).pool.running).toBe(0), {
        timeout: 3_000,
        interval: 5,
      });
    }
    expect(sim.requests).toHaveLength(8);
    expect(sim.connections()).toBe(1);
  });

  it('answers a stream at [DONE] even when its upstream never ends the body, and lets that connection go after 1 s', async () => {
    const { sim, client, gw } = await setup({ completionTokens: 3, endDelayMs: 60_000 });
    const t0 = performance.now();
    const stream = await client.chat.completions.create({
      model: 'fast',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).not.toBe('');
    expect(performance.now() - t0).toBeLessThan(900); // answered at [DONE], not at the body's end
    await vi.waitFor(async () => expect((await upstreamAt(gw.url, 'alpha/m1')).pool.running).toBe(0), {
      timeout: 5_000,
      interval: 20,
    });
    await sim.waitForAbort(); // the upstream saw the connection close
  });
});

describe('errors are OpenAI-shaped', () => {
  async function post(
    path: string,
    body: string,
    headers: Record<string, string> = { 'content-type': 'application/json' },
  ) {
    const res = await request(`${gw!.url}${path}`, { method: 'POST', headers, body });
    return {
      status: res.statusCode,
      headers: res.headers,
      json: (await res.body.json()) as { error: Record<string, unknown> },
    };
  }

  it('rejects invalid JSON, missing fields, bad types, unknown models, big bodies and other media types', async () => {
    await setup({}, { server: { body_limit_bytes: 2048 } });
    const bad = await post('/v1/chat/completions', '{not json');
    expect(bad.status).toBe(400);
    expect(bad.json.error.type).toBe('invalid_request_error');

    const noMessages = await post('/v1/chat/completions', JSON.stringify({ model: 'fast' }));
    expect(noMessages.status).toBe(400);
    expect(noMessages.json.error.param).toBe('messages');
    expect(noMessages.json.error.message).toContain('messages');

    const noModel = await post(
      '/v1/chat/completions',
      JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }),
    );
    expect(noModel.json.error.param).toBe('model');

    const badRole = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'fast', messages: [{ role: 'wizard', content: 'x' }] }),
    );
    expect(badRole.status).toBe(400);
    expect(badRole.json.error.param).toBe('messages[0].role');

    for (const [field, value] of [
      ['n', 0],
      ['max_tokens', -1],
      ['stream', 'yes'],
      ['tools', [{ type: 'function' }]],
    ] as const) {
      const r = await post(
        '/v1/chat/completions',
        JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'x' }], [field]: value }),
      );
      expect(r.status, field).toBe(400);
      expect(String(r.json.error.param), field).toContain(field);
    }

    for (const model of ['gpt-nope', '__proto__', 'constructor', 'alpha/none']) {
      const r = await post(
        '/v1/chat/completions',
        JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }] }),
      );
      expect(r.status, model).toBe(404);
      expect(r.json.error.code).toBe('model_not_found');
    }

    const big = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'x'.repeat(5000) }] }),
    );
    expect(big.status).toBe(413);
    expect(big.json.error).toBeDefined();

    const text = await post('/v1/chat/completions', 'hello', { 'content-type': 'text/plain' });
    expect(text.status).toBe(415);
    expect(text.json.error).toBeDefined();

    const deep = await post('/v1/chat/completions', '['.repeat(200) + ']'.repeat(200));
    expect(deep.status).toBe(400);

    const gz = await post('/v1/chat/completions', '{}', {
      'content-type': 'application/json',
      'content-encoding': 'gzip',
    });
    expect(gz.status).toBe(415);

    const hdr = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-router-strategy': '__proto__' },
      body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(hdr.statusCode).toBe(400);
    await hdr.body.dump();
  });

  it('relays an upstream 400 with its status and message, scrubbed of our key', async () => {
    const { sim } = await setup({ status: 400, errorMessage: 'bad things', echoAuthInError: true });
    const r = await post(
      '/v1/chat/completions',
      JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'x' }] }),
    );
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.json)).not.toContain('sk-alpha-secret');
    expect(r.json.error.type).toBe('invalid_request_error');
    expect(sim.requests).toHaveLength(1);
  });
});

describe('a request no candidate can serve', () => {
  it('gets a 400 that says why: a missing capability, or a context window too small', async () => {
    const sim = track(await startSimulator({ name: 'narrow' }));
    gw = track(
      await startGateway({
        providers: [
          simProvider('narrow', sim.url, [{ name: 'm', capabilities: ['stream'], context_window: 50 }]),
        ],
        routes: { fast: { targets: ['narrow/m'] } },
      }),
    );
    const post = async (body: Record<string, unknown>) => {
      const res = await request(`${gw!.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }], ...body }),
      });
      return {
        status: res.statusCode,
        json: (await res.body.json()) as { error: { message: string; param: string } },
      };
    };
    const tools = await post({ tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] });
    expect(tools.status).toBe(400);
    expect(tools.json.error.message).toBe('no upstream of route `fast` supports tools');
    expect(tools.json.error.param).toBe('tools');
    const big = await post({ messages: [{ role: 'user', content: 'word '.repeat(200) }] });
    expect(big.status).toBe(400);
    expect(big.json.error.message).toMatch(/context window/);
    expect(sim.requests).toHaveLength(0);
  });

  it('a model without context_window is not refused on an estimate: the upstream decides', async () => {
    const sim = track(await startSimulator({ name: 'wide' }));
    gw = track(
      await startGateway({
        providers: [simProvider('wide', sim.url, ['m'])],
        routes: { fast: { targets: ['wide/m'] } },
      }),
    );
    // ~1 M characters (~250k estimated tokens) and a large max_tokens: past any default window.
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'fast',
        max_tokens: 200_000,
        messages: [{ role: 'user', content: 'word '.repeat(200_000) }],
      }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(sim.requests).toHaveLength(1);
  });
});

describe('requests rejected before routing', () => {
  it('still get one log line and a requests_total count (route "none"), never the client\'s model string', async () => {
    await setup();
    const res = await request(`${gw!.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'early-404' },
      body: JSON.stringify({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(res.statusCode).toBe(404);
    await res.body.dump();
    const line = gw!.logs.find((l) => l.msg === 'request' && l.reqId === 'early-404');
    expect(line).toMatchObject({ status: 404, path: '/v1/chat/completions' });
    const scrape = await (await request(`${gw!.url}/metrics`)).body.text();
    expect(scrape).toContain(
      'llm_router_requests_total{route="none",provider="none",model="none",status="404"} 1',
    );
    expect(scrape).not.toContain('no-such-model');
  });
});

describe('models, health and request ids', () => {
  it('lists routes and provider/model names; healthz/readyz answer; x-request-id is echoed', async () => {
    await setup();
    const models = await request(`${gw!.url}/v1/models`);
    const list = (await models.body.json()) as { object: string; data: { id: string; object: string }[] };
    expect(list.object).toBe('list');
    expect(list.data.map((m) => m.id).sort()).toEqual(['alpha/m1', 'fast']);
    const health = await request(`${gw!.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();
    const ready = await request(`${gw!.url}/readyz`);
    expect(ready.statusCode).toBe(200);
    await ready.body.dump();
    // Load balancers probe with HEAD too: the same answer, without a body (fastify's implicit HEAD routes).
    for (const path of ['/healthz', '/readyz']) {
      const head = await request(`${gw!.url}${path}`, { method: 'HEAD' });
      expect(head.statusCode, path).toBe(200);
      expect(await head.body.text(), path).toBe('');
    }
    const echoed = await request(`${gw!.url}/v1/models`, { headers: { 'x-request-id': 'trace-123' } });
    expect(echoed.headers['x-request-id']).toBe('trace-123');
    await echoed.body.dump();
    const nf = await request(`${gw!.url}/v1/nothing-here`);
    expect(nf.statusCode).toBe(404);
    expect(((await nf.body.json()) as { error: unknown }).error).toBeDefined();
  });
});

describe('n > 1 (several choices)', () => {
  it('is never sent to an Anthropic upstream, which would silently answer one', async () => {
    const claude = track(await startSimulator({ name: 'claude', kind: 'anthropic' }));
    const oai = track(await startSimulator({ name: 'oai' }));
    const gw = track(
      await startGateway({
        providers: [
          { name: 'claude', kind: 'anthropic', base_url: claude.url, models: [{ name: 'm' }] },
          simProvider('oai', oai.url, ['m']),
        ],
        routes: {
          mixed: { strategy: 'priority', targets: ['claude/m', 'oai/m'] },
          only: { targets: ['claude/m'] },
        },
      }),
    );
    const post = async (model: string) => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, n: 2, messages: [{ role: 'user', content: 'hi' }] }),
      });
      return {
        status: res.statusCode,
        headers: res.headers,
        json: (await res.body.json()) as { error?: { message: string; param: string } },
      };
    };
    const mixed = await post('mixed');
    expect(mixed.status).toBe(200);
    expect(mixed.headers['x-router-provider']).toBe('oai');
    const only = await post('only');
    expect(only.status).toBe(400);
    expect(only.json.error).toMatchObject({
      message: 'no upstream of route `only` supports n > 1',
      param: 'n',
    });
    expect(claude.requests).toHaveLength(0);
  });
});
