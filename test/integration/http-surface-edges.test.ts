/**
 * The HTTP surface as clients meet it (SPEC §4, §8):
 * - a request body is read as HTTP and JSON define it: a `Content-Encoding: identity` in any letter case is
 *   no coding (RFC 9110 §8.4.1: codings are case-insensitive); a UTF-8 byte order mark before the JSON text
 *   may be ignored by a parser (RFC 8259 §8.1) and is, the upstream getting plain JSON; a query string
 *   (Azure-style `?api-version=`) on a routed path changes nothing;
 * - explicit nulls are "not given" for every optional field, embeddings' `encoding_format` as for
 *   `dimensions` and `user`;
 * - `x-router-provider` pins: a provider the route lacks is a 400 with nothing called; on a tiered route a
 *   pin alone moves to a tier that has the provider, and a pin that contradicts `x-router-tier` is a 400 whose
 *   message says the tier lacks it (not the route, which has it);
 * - error answers are OpenAI-shaped JSON with the client's `x-request-id`, and no `x-router-provider` when no
 *   upstream was tried;
 * - while draining: /healthz stays 200 (liveness), /readyz is 503 `draining`, /v1 is an OpenAI-shaped 503 with
 *   `Retry-After`.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hello' }];

type Mock = Awaited<ReturnType<typeof startMock>>;

/** One OpenAI-dialect upstream answering chat with "ok" and embeddings with one vector. */
async function upstream(): Promise<Mock> {
  return track(
    await startMock((r, res) => {
      if (r.path.endsWith('/embeddings')) {
        sendJson(res, 200, {
          object: 'list',
          data: [{ object: 'embedding', index: 0, embedding: [0.25, 0.5] }],
          model: String(r.body.model),
          usage: { prompt_tokens: 1, total_tokens: 1 },
        });
        return;
      }
      answerChat(res, r.body, 'ok');
    }),
  );
}

/**
 * Providers p1 (chat m1, embeddings e1) and p2 (chat m2) on one mock; a flat route `main` over both, a route
 * `only1` of p1 alone, and a tiered route `auto` (fast: p1, deep: p2) whose rule sends short prompts to fast.
 */
async function gateway(up: Mock, server: Record<string, unknown> = {}): Promise<TestGateway> {
  return track(
    await startGateway({
      server,
      providers: [
        {
          name: 'p1',
          base_url: `${up.url}/v1`,
          api_key: 'sk-p1-000111',
          models: [{ name: 'm1' }, { name: 'e1', capabilities: ['embeddings'] }],
        },
        { name: 'p2', base_url: `${up.url}/v1`, api_key: 'sk-p2-000222', models: [{ name: 'm2' }] },
      ],
      routes: {
        main: { strategy: 'priority', targets: ['p1/m1', 'p2/m2'] },
        only1: { targets: ['p1/m1'] },
        auto: {
          tiers: { fast: ['p1/m1'], deep: ['p2/m2'] },
          rules: [{ if: { max_prompt_tokens: 1000 }, tier: 'fast' }],
          default_tier: 'fast',
          router: { tier: 'fast' },
        },
      },
    }),
  );
}

async function raw(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<{ status: number; headers: Record<string, string>; text: string; json: unknown }> {
  const res = await request(url, {
    method: (init.method ?? 'GET') as 'GET',
    headers: init.headers,
    body: init.body,
  });
  const text = await res.body.text();
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) headers[k] = Array.isArray(v) ? v.join(',') : String(v);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers, text, json };
}

describe('request bodies as HTTP and JSON define them', () => {
  it('Content-Encoding "identity" in any letter case is the body as sent (RFC 9110 §8.4.1), not a 415', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    for (const coding of ['identity', 'Identity', 'IDENTITY']) {
      const r = await postTo(
        `${gw.url}/v1/chat/completions`,
        { model: 'main', messages: MSG },
        { headers: { 'content-encoding': coding } },
      );
      expect(r.status, `${coding}: ${r.text}`).toBe(200);
      expect(dig(r.json, 'choices', 0, 'message', 'content')).toBe('ok');
    }
  });

  it('a JSON body that opens with a UTF-8 byte order mark is read (RFC 8259 §8.1); the upstream gets plain JSON', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    // As Windows tools that save "UTF-8 with BOM" hand it to `curl -d @body.json`.
    const body = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from(JSON.stringify({ model: 'only1', messages: MSG })),
    ]);
    const r = await raw(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    expect(r.status, r.text).toBe(200);
    expect(dig(r.json, 'choices', 0, 'message', 'content')).toBe('ok');
    // The mock parses what it got: a BOM relayed would have made it fail.
    expect(up.received).toHaveLength(1);
    expect(up.received[0]!.body.model).toBe('m1');
  });

  it('embeddings: encoding_format null is the default, as null dimensions and user are', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    const nullOthers = await postTo(`${gw.url}/v1/embeddings`, {
      model: 'p1/e1',
      input: 'x',
      dimensions: null,
      user: null,
    });
    expect(nullOthers.status, nullOthers.text).toBe(200);
    const nullFormat = await postTo(`${gw.url}/v1/embeddings`, {
      model: 'p1/e1',
      input: 'x',
      encoding_format: null,
    });
    expect(nullFormat.status, nullFormat.text).toBe(200);
    expect(dig(nullFormat.json, 'data', 0, 'embedding')).toEqual([0.25, 0.5]);
  });

  it('a query string (Azure-style ?api-version=) on chat and embeddings is routed as without it', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    const chat = await postTo(`${gw.url}/v1/chat/completions?api-version=2024-10-21`, {
      model: 'main',
      messages: MSG,
    });
    expect(chat.status, chat.text).toBe(200);
    expect(chat.headers['x-router-provider']).toBe('p1');
    const emb = await postTo(`${gw.url}/v1/embeddings?api-version=2024-10-21`, {
      model: 'p1/e1',
      input: 'x',
    });
    expect(emb.status, emb.text).toBe(200);
    expect(up.received.map((r) => r.path)).toEqual(['/v1/chat/completions', '/v1/embeddings']);
  });
});

describe('x-router-provider pins', () => {
  it('a provider the route does not have: 400 naming the header, nothing called, attempts 0 and no provider header', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    const r = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'only1', messages: MSG },
      { headers: { 'x-router-provider': 'p2', 'x-request-id': 'pin-1' } },
    );
    expect(r.status).toBe(400);
    expect(dig(r.json, 'error', 'type')).toBe('invalid_request_error');
    expect(dig(r.json, 'error', 'param')).toBe('x-router-provider');
    expect(r.headers['x-request-id']).toBe('pin-1');
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(r.headers['x-router-provider']).toBeUndefined();
    expect(up.received).toHaveLength(0);
  });

  it('on a tiered route, a pin alone moves the request to a tier that has the provider', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    const r = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'auto', messages: MSG },
      { headers: { 'x-router-provider': 'p2' } },
    );
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('p2');
    expect(r.headers['x-router-tier']).toBe('deep');
  });

  it('a pin that contradicts x-router-tier is a 400 saying the tier lacks the provider, not the route (which has it)', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    const r = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'auto', messages: MSG },
      { headers: { 'x-router-provider': 'p2', 'x-router-tier': 'fast' } },
    );
    expect(r.status).toBe(400);
    expect(dig(r.json, 'error', 'param')).toBe('x-router-provider');
    const message = String(dig(r.json, 'error', 'message'));
    // Route `auto` does have p2 (its deep tier): a message saying it has none sends the operator the wrong way.
    expect(message).not.toMatch(/route `auto` has no upstream from provider/);
    expect(message).toMatch(/tier `fast` has no upstream from provider "p2" \(it is in: deep\)/);
    expect(up.received).toHaveLength(0);
  });
});

describe('error answers', () => {
  it('401 and 404 model_not_found: OpenAI-shaped JSON, the client id echoed, no x-router-provider', async () => {
    const up = await upstream();
    const gw = await gateway(up, { api_keys: ['client-key-1'] });
    const noKey = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'main', messages: MSG },
      { headers: { 'x-request-id': 'e-401' } },
    );
    expect(noKey.status).toBe(401);
    expect(noKey.headers['content-type']).toMatch(/^application\/json/);
    expect(noKey.headers['x-request-id']).toBe('e-401');
    expect(noKey.headers['x-router-provider']).toBeUndefined();
    expect(dig(noKey.json, 'error', 'type')).toBe('authentication_error');

    const unknown = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'no-such-route', messages: MSG },
      { headers: { authorization: 'Bearer client-key-1', 'x-request-id': 'e-404' } },
    );
    expect(unknown.status).toBe(404);
    expect(unknown.headers['content-type']).toMatch(/^application\/json/);
    expect(unknown.headers['x-request-id']).toBe('e-404');
    expect(unknown.headers['x-router-provider']).toBeUndefined();
    expect(unknown.json).toEqual({
      error: {
        message: expect.stringContaining('no-such-route') as unknown,
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    expect(up.received).toHaveLength(0);
  });
});

describe('health while draining', () => {
  it('/healthz stays 200, /readyz is 503 draining, /v1 gets an OpenAI-shaped 503 with Retry-After', async () => {
    const up = await upstream();
    const gw = await gateway(up);
    expect((await raw(`${gw.url}/readyz`)).status).toBe(200);
    gw.gateway.draining = true; // what SIGTERM sets (main.ts)
    const live = await raw(`${gw.url}/healthz`);
    expect(live.status).toBe(200);
    const ready = await raw(`${gw.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(dig(ready.json, 'status')).toBe('draining');
    const chat = await postTo(
      `${gw.url}/v1/chat/completions`,
      { model: 'main', messages: MSG },
      { headers: { 'x-request-id': 'drain-1' } },
    );
    expect(chat.status).toBe(503);
    expect(chat.headers['retry-after']).toBe('1');
    expect(chat.headers['x-request-id']).toBe('drain-1');
    expect(typeof dig(chat.json, 'error', 'message')).toBe('string');
    expect(up.received).toHaveLength(0);
  });
});
