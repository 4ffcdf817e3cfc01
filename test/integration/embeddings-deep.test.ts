/**
 * `/v1/embeddings` at the edges the other embeddings files leave: usage as other OpenAI-compatible servers
 * report it, answers as large as a valid OpenAI request gets, routes whose providers are disabled, upstream
 * refusals other than 400, a body that stalls after its head, and least-busy under load. Hand-written
 * node:http upstreams on loopback; the OpenAI SDK and undici as clients.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

type Handler = (body: Record<string, unknown>, req: IncomingMessage, res: ServerResponse) => void;

interface Mock {
  readonly url: string;
  readonly bodies: Record<string, unknown>[];
  /** Handlers for the next requests, in order; then `fallback`. */
  next(...h: Handler[]): void;
  fallback: Handler;
}

/** OpenAI's embeddings answer for the request it got: one item per input, with usage unless told not to. */
function answerFor(body: Record<string, unknown>, usage = true): Record<string, unknown> {
  const input = body.input;
  const n = Array.isArray(input) && typeof input[0] !== 'number' ? input.length : 1;
  return {
    object: 'list',
    data: Array.from({ length: n }, (_, index) => ({ object: 'embedding', index, embedding: [0.5, -0.25] })),
    model: String(body.model),
    ...(usage ? { usage: { prompt_tokens: 3 * n, total_tokens: 3 * n } } : {}),
  };
}

const ok: Handler = (body, _req, res) => sendJson(res, 200, answerFor(body));

async function mock(): Promise<Mock> {
  const queue: Handler[] = [];
  const m: Mock = { url: '', bodies: [], next: (...h) => queue.push(...h), fallback: ok };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      } catch {
        /* kept empty */
      }
      m.bodies.push(body);
      (queue.shift() ?? m.fallback)(body, req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return Object.assign(m, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 1500, total_ms: 30000 };

function provider(name: string, m: Mock, models: unknown[], extra: Record<string, unknown> = {}) {
  return {
    name,
    kind: 'openai',
    base_url: `${m.url}/v1`,
    api_key: `sk-${name}-0123456789abcdef`,
    timeouts: TIMEOUTS,
    models,
    ...extra,
  };
}

const emb = (extra: Record<string, unknown> = {}) => ({
  name: 'emb',
  capabilities: ['embeddings'],
  price: { input_per_mtok: 0.1, output_per_mtok: 0 },
  ...extra,
});

/** Two embedding upstreams `a` and `b` behind route `embed` (priority: a first). */
async function two(extra: Record<string, unknown> = {}) {
  const a = await mock();
  const b = await mock();
  const { routes, ...rest } = extra as { routes?: Record<string, unknown> };
  const gw: TestGateway = track(
    await startGateway({
      providers: [provider('a', a, [emb()]), provider('b', b, [emb()])],
      routes: { embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] }, ...routes },
      ...rest,
    }),
  );
  return { a, b, gw };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json(): { error: { message: string; type: string; param: string | null; code: string | null } };
}

async function post(
  gw: TestGateway,
  body: unknown,
  path = '/v1/embeddings',
  headers: Record<string, string> = {},
): Promise<Reply> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as ReturnType<Reply['json']>,
  };
}

const PROMPT = (p: string) => ({ provider: p, model: 'emb', kind: 'prompt' });

describe('embeddings answers: usage and size', () => {
  // README metrics: llm_router_tokens_total is "the upstream's usage; estimated when it reports none". Voyage AI's
  // embeddings answer (OpenAI's shape otherwise) reports its usage as `{"total_tokens": N}` only; for an
  // embeddings answer every token is a prompt token, so N is the count, not something to replace by an estimate.
  it('usage given as total_tokens only (Voyage) is counted as reported, in tokens and cost, not estimated', async () => {
    const { a, gw } = await two();
    a.next((body, _req, res) =>
      sendJson(res, 200, { ...answerFor(body, false), usage: { total_tokens: 7 } }),
    );
    const r = await post(gw, { model: 'embed', input: 'word '.repeat(200) });
    expect(r.status).toBe(200);
    await until('tokens counted', async () => {
      const m = await scrape(gw.url);
      return (value(m, 'llm_router_tokens_total', PROMPT('a')) ?? 0) > 0;
    });
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_tokens_total', PROMPT('a'))).toBe(7);
    expect(value(m, 'llm_router_cost_usd_total', { provider: 'a', model: 'emb' })).toBeCloseTo(
      (7 * 0.1) / 1e6,
      15,
    );
  });

  // A valid OpenAI request (2,048 inputs, text-embedding-3-large's 3,072 dimensions, encoding_format float, as
  // LangChain and raw HTTP clients ask) gets an answer of about 75 MB. It is the upstream's answer to relay;
  // refused as "body_too_large" it became a 502, and a failure against the upstream's breaker as well.
  it('the float answer to 2,048 inputs of a 3,072-dimension model reaches the client whole', async () => {
    const a = await mock();
    const gw = track(
      await startGateway({
        providers: [provider('a', a, [emb()])],
        routes: { embed: { strategy: 'priority', targets: ['a/emb'] } },
      }),
    );
    const dims = 3072;
    const vector = Array.from({ length: dims }, (_, i) => (Math.sin(i) * 0.01).toFixed(9)).join(',');
    let sentBytes = 0;
    a.next((body, _req, res) => {
      const n = (body.input as unknown[]).length;
      res.writeHead(200, { 'content-type': 'application/json' });
      const write = (s: string) => {
        sentBytes += Buffer.byteLength(s);
        res.write(s);
      };
      write('{"object":"list","data":[');
      for (let i = 0; i < n; i++)
        write(`${i ? ',' : ''}{"object":"embedding","index":${i},"embedding":[${vector}]}`);
      const tail = `],"model":"text-embedding-3-large","usage":{"prompt_tokens":${n * 3},"total_tokens":${n * 3}}}`;
      sentBytes += Buffer.byteLength(tail);
      res.end(tail);
    });
    const input = Array.from({ length: 2048 }, (_, i) => `document ${i}`);
    const r = await post(gw, { model: 'embed', input, encoding_format: 'float' });
    expect(sentBytes).toBeGreaterThan(64 * 1024 * 1024);
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    expect(r.text.length).toBe(sentBytes);
    expect(r.text.endsWith('"total_tokens":6144}}')).toBe(true);
  });
});

describe('embeddings routes whose providers are disabled', () => {
  // SPEC §3: a provider whose api_key resolves empty is disabled, not a crash; the route stays an embeddings
  // route (its config says so). A chat route left with no upstream answers chat with 503 "has no live upstream";
  // an embeddings route left so must say the same on /v1/embeddings, not send the client to
  // /v1/chat/completions, and on /v1/chat/completions say it is an embeddings model, not "no upstreams".
  it('an embeddings route whose provider has no key answers as a dark chat route does, never "is a chat model"', async () => {
    const v = await mock();
    const c = await mock();
    const gw = track(
      await startGateway(
        {
          providers: [
            provider('voyage', v, [emb()], { api_key: '${VOYAGE_KEY}' }),
            provider('c', c, [{ name: 'gpt', capabilities: ['stream'] }], { api_key: '${CHAT_KEY}' }),
          ],
          routes: {
            embed: { strategy: 'priority', targets: ['voyage/emb'] },
            talk: { strategy: 'priority', targets: ['c/gpt'] },
          },
        },
        { env: { VOYAGE_KEY: '', CHAT_KEY: '' } },
      ),
    );
    const chatMsg = { messages: [{ role: 'user', content: 'x' }] };
    const darkChat = await post(gw, { model: 'talk', ...chatMsg }, '/v1/chat/completions');
    expect(darkChat.status).toBe(503);

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const err = (await client.embeddings.create({ model: 'embed', input: 'x' }).catch((e: unknown) => e)) as {
      status: number;
      code: string;
      message: string;
    };
    expect(err.message).not.toMatch(/chat model/);
    expect({ status: err.status, code: err.code }).toEqual({
      status: darkChat.status,
      code: darkChat.json().error.code,
    });

    const wrongEndpoint = await post(gw, { model: 'embed', ...chatMsg }, '/v1/chat/completions');
    expect(wrongEndpoint.status).toBe(404);
    expect(wrongEndpoint.json().error.code).toBe('model_not_found');
    expect(wrongEndpoint.json().error.message).toMatch(/embeddings model/);
    expect(v.bodies.length + c.bodies.length).toBe(0);
  });
});

describe('embeddings upstream refusals and stalls', () => {
  // SPEC §2: 404 (unknown model at the provider), 413 and 422 are client errors: relayed in OpenAI's shape with
  // their status and message (a string `error`, a pydantic `detail` list made one line), never failed over, and
  // not charged to the breaker (threshold 1 here): counted as client_error attempts.
  it('404, 413 and 422 from the upstream are relayed as they are, not failed over, not charged to the breaker', async () => {
    const { a, b, gw } = await two({ circuit_breaker: { failure_threshold: 1 } });
    a.next(
      (_b, _q, res) =>
        sendJson(res, 404, {
          error: {
            message: 'The model `emb` does not exist',
            type: 'invalid_request_error',
            code: 'model_not_found',
          },
        }),
      // Text Embeddings Inference past its max_client_batch_size: the error is a string.
      (_b, _q, res) =>
        sendJson(res, 413, {
          error: 'batch size 64 > maximum allowed batch size 32',
          error_type: 'Validation',
        }),
      (_b, _q, res) =>
        sendJson(res, 422, { detail: [{ loc: ['body', 'input'], msg: 'field required', type: 'missing' }] }),
      (_b, _q, res) =>
        sendJson(res, 400, {
          error: {
            message: 'bad dimensions',
            type: 'invalid_request_error',
            param: 'dimensions',
            code: 'invalid_value',
          },
        }),
    );
    const nf = await post(gw, { model: 'embed', input: 'x' });
    expect(nf.status).toBe(404);
    expect(nf.json().error).toMatchObject({
      message: 'The model `emb` does not exist',
      code: 'model_not_found',
    });
    const big = await post(gw, { model: 'embed', input: 'x' });
    expect(big.status).toBe(413);
    expect(big.json().error.message).toBe('batch size 64 > maximum allowed batch size 32');
    const un = await post(gw, { model: 'embed', input: 'x' });
    expect(un.status).toBe(422);
    expect(un.json().error.message).toBe('body.input: field required');
    // Through the SDK: the upstream's param and code reach the error object.
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const err = (await client.embeddings
      .create({ model: 'embed', input: 'x', dimensions: 5 })
      .catch((e: unknown) => e)) as { status: number; param: string; code: string };
    expect(err).toMatchObject({ status: 400, param: 'dimensions', code: 'invalid_value' });
    expect(b.bodies).toHaveLength(0);

    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'a', model: 'emb' })).toBe(0);
    expect(
      value(m, 'llm_router_upstream_attempts_total', {
        provider: 'a',
        model: 'emb',
        outcome: 'client_error',
      }),
    ).toBe(4);
    // Still first in line: the next request goes to a.
    const next = await post(gw, { model: 'embed', input: 'x' });
    expect(next.headers['x-router-provider']).toBe('a');
  });

  // SPEC §2: a JSON answer is relayed whole, so an upstream that sends its 200 head and then stalls (idle_ms)
  // is failed over invisibly. When the route's own budget runs out instead, the 504 carries x-should-retry:
  // false (README), so the SDK does not spend the budget twice more.
  it('a 200 that stalls mid-body fails over; a hang past total_timeout_ms is a 504 with x-should-retry false', async () => {
    const { a, b, gw } = await two();
    a.next((_b, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1');
    });
    const r = await post(gw, { model: 'embed', input: 'x' });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/emb=idle_timeout');
    expect(() => JSON.parse(r.text) as unknown).not.toThrow();

    const { a: a2, b: b2, gw: gw2 } = await two({ routing: { total_timeout_ms: 800 } });
    a2.next(() => undefined);
    const t = await post(gw2, { model: 'embed', input: 'x' });
    expect(t.status).toBe(504);
    expect(t.json().error.code).toBe('timeout');
    expect(t.headers['x-should-retry']).toBe('false');
    expect(t.headers['x-router-attempts']).toBe('1');
    expect(b2.bodies).toHaveLength(0);
    expect(b.bodies).toHaveLength(1);
  });

  // SPEC §2 least-busy: fewest requests in flight. While one embeddings request is held on an upstream, the
  // next ones go to the idle one, named in x-router-strategy.
  it('least-busy sends embeddings to the idle upstream while another request is held', async () => {
    const { a, b, gw } = await two({
      routes: { lb: { strategy: 'least-busy', targets: ['a/emb', 'b/emb'] } },
    });
    let release: (() => void) | undefined;
    // The first request, wherever it lands, is held; every other is answered at once.
    const holdFirst: Handler = (body, req, res) => {
      if (release === undefined) release = () => sendJson(res, 200, answerFor(body));
      else ok(body, req, res);
    };
    a.fallback = holdFirst;
    b.fallback = holdFirst;
    const held = post(gw, { model: 'lb', input: 'held' });
    await until('one upstream busy', () => a.bodies.length + b.bodies.length === 1);
    const busy = a.bodies.length === 1 ? 'a' : 'b';
    const idle = busy === 'a' ? 'b' : 'a';
    for (let i = 0; i < 3; i++) {
      const r = await post(gw, { model: 'lb', input: `q${i}` });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe(idle);
      expect(r.headers['x-router-strategy']).toBe('least-busy');
    }
    release?.();
    expect((await held).status).toBe(200);
  });
});
