/**
 * `/v1/embeddings` held to what the chat path does (SPEC §2/§4/§5/§8, README): request validation, routing
 * (context-window refusals, the cost strategy, tiers, the kind of a route), answers relayed (a 200 that is no
 * answer, secrets echoed back) and a client that leaves. Hand-written node:http upstreams on loopback.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
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
  next(...h: Handler[]): void;
  /** Requests whose response closed before it was finished (the gateway aborted them). */
  aborted: number;
}

function answerFor(body: Record<string, unknown>): Record<string, unknown> {
  const input = body.input;
  const n = Array.isArray(input) && typeof input[0] !== 'number' ? input.length : 1;
  return {
    object: 'list',
    data: Array.from({ length: n }, (_, index) => ({ object: 'embedding', index, embedding: [0.5, -0.25] })),
    model: String(body.model),
    usage: { prompt_tokens: 3 * n, total_tokens: 3 * n },
  };
}

const ok: Handler = (body, _req, res) => sendJson(res, 200, answerFor(body));

async function mock(): Promise<Mock> {
  const queue: Handler[] = [];
  const m = {
    url: '',
    bodies: [] as Record<string, unknown>[],
    next: (...h: Handler[]) => queue.push(...h),
    aborted: 0,
  };
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
      res.on('close', () => {
        if (!res.writableFinished) m.aborted++;
      });
      (queue.shift() ?? ok)(body, req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return Object.assign(m, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 20000 };

function provider(name: string, m: Mock, models: unknown[]) {
  return {
    name,
    kind: 'openai',
    base_url: `${m.url}/v1`,
    api_key: `sk-${name}-0123456789abcdef`,
    timeouts: TIMEOUTS,
    models,
  };
}

const emb = (
  price: { input_per_mtok: number; output_per_mtok: number },
  extra: Record<string, unknown> = {},
) => ({
  name: 'emb',
  capabilities: ['embeddings'],
  price,
  ...extra,
});

const CHEAP_IN = { input_per_mtok: 0.02, output_per_mtok: 0 };
const DEAR_IN = { input_per_mtok: 0.13, output_per_mtok: 0 };

async function two(routes: Record<string, unknown>, modelA = emb(DEAR_IN), modelB = emb(CHEAP_IN)) {
  const a = await mock();
  const b = await mock();
  const gw: TestGateway = track(
    await startGateway({ providers: [provider('a', a, [modelA]), provider('b', b, [modelB])], routes }),
  );
  return { a, b, gw };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json(): {
    error: { message: string; type: string; param: string | null; code: string | null };
    data: unknown[];
  };
}

async function post(
  gw: TestGateway,
  body: unknown,
  headers: Record<string, string> = {},
  path = '/v1/embeddings',
): Promise<Answer> {
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
    json: () => JSON.parse(text) as ReturnType<Answer['json']>,
  };
}

describe('embeddings request validation (SPEC §8)', () => {
  // Regression: SPEC §8: known OpenAI fields with a wrong type are a 400 naming the field before any upstream is
  // called. `user` is a known field of OpenAI's embeddings request (a string) and the chat path checks it
  // (validate.ts optionalType(raw, 'user', 'string')); validateEmbeddingsBody does not, so it goes upstream.
  it('`user` not a string is a 400 naming user, as on chat, calling nothing', async () => {
    const { a, b, gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] } });
    const r = await post(gw, { model: 'embed', input: 'x', user: 42 });
    expect(r.status).toBe(400);
    expect(r.json().error.param).toBe('user');
    expect(a.bodies.length + b.bodies.length).toBe(0);
  });

  // Pins (not covered elsewhere: request-validation-bounds checks 2049 strings only): the 2048-input bound
  // holds for token-id arrays too; dimensions 1.5 is refused; a single token-id input longer than 2048 is
  // one input.
  it('2049 token-id inputs and a fractional dimensions are 400s naming the field; unknown fields pass untouched', async () => {
    const { a, gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb'] } });
    const many = await post(gw, { model: 'embed', input: Array.from({ length: 2049 }, (_, i) => [i]) });
    expect(many.status).toBe(400);
    expect(many.json().error.param).toBe('input');
    const frac = await post(gw, { model: 'embed', input: 'x', dimensions: 1.5 });
    expect(frac.status).toBe(400);
    expect(frac.json().error.param).toBe('dimensions');
    expect(a.bodies).toHaveLength(0);
    const body = {
      model: 'embed',
      input: [[1, 2], [3]],
      input_type: 'query',
      truncate: 'END',
      extra: { k: [1] },
    };
    const r = await post(gw, body);
    expect(r.status).toBe(200);
    expect(a.bodies[0]).toEqual({ ...body, model: 'emb' });
  });
});

describe('embeddings routing', () => {
  // Regression: src/routing/plan.ts:249 — the context-window refusal names `messages` for every request; an
  // embeddings request has no `messages`: the field at fault is `input` (OpenAI names `input` there).
  it('an input longer than every context_window is a 400 context_length_exceeded naming input, not messages', async () => {
    const { a, gw } = await two(
      { embed: { strategy: 'priority', targets: ['a/emb'] } },
      emb(DEAR_IN, { context_window: 512 }),
    );
    const r = await post(gw, { model: 'embed', input: 'word '.repeat(5000) });
    expect(r.status).toBe(400);
    expect(r.json().error.code).toBe('context_length_exceeded');
    expect(r.json().error.param).toBe('input');
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(a.bodies).toHaveLength(0);
  });

  // Regression: SPEC §2 cost: prompt × input price + expected output × output price, the expected output being
  // max_tokens, else the observed mean. An embeddings request has no output at all, but embeddings.ts:56 passes
  // no expected output (textFeatures(tokens.total, undefined, …)), so rank.ts sharedExpectedOutput charges the
  // default 256 output tokens at each model's output price: an embedding model with an output price (as Voyage,
  // Cohere or a copied price block list one) loses to one 5x dearer per input token.
  it('cost ranks embedding upstreams on input price only (an embeddings answer has no output tokens)', async () => {
    const { a, b, gw } = await two(
      { cheap: { strategy: 'cost', targets: ['a/emb', 'b/emb'] } },
      emb({ input_per_mtok: 0.1, output_per_mtok: 0 }),
      emb({ input_per_mtok: 0.02, output_per_mtok: 0.02 }),
    );
    const r = await post(gw, { model: 'cheap', input: 'a short query' });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(b.bodies).toHaveLength(1);
    expect(a.bodies).toHaveLength(0);
  });

  // Regression: a tiered embeddings route loaded, and its rules and x-router-tier were silently ignored (the
  // plan ran over every tier's targets). Tiers are chosen on a conversation: such a route is refused.
  it('a tiered route with embedding models is a config error naming its tiers (tiers are for chat)', async () => {
    const a = await mock();
    const b = await mock();
    await expect(
      startGateway({
        providers: [provider('a', a, [emb(DEAR_IN)]), provider('b', b, [emb(DEAR_IN)])],
        routes: {
          tiered: { strategy: 'priority', tiers: { fast: ['a/emb'], deep: ['b/emb'] }, default_tier: 'fast' },
        },
      }).then((gw) => track(gw)),
    ).rejects.toThrow(/routes\.tiered\.tiers: tiers are for chat models/);
  });

  // Regression: SPEC §4 "mixing is a config error". Each tier was checked on its own, so tiers of different
  // kinds passed; the route was then an embeddings route whose union held a chat model, and /v1/embeddings
  // could be sent to it.
  it('a tiered route whose tiers mix embedding and chat models is a config error', async () => {
    const a = await mock();
    const c = await mock();
    await expect(
      startGateway({
        providers: [
          provider('a', a, [emb(DEAR_IN)]),
          provider('c', c, [{ name: 'gpt', capabilities: ['stream'] }]),
        ],
        routes: {
          mixed: { strategy: 'priority', tiers: { fast: ['c/gpt'], deep: ['a/emb'] }, default_tier: 'deep' },
        },
      }).then((gw) => track(gw)),
    ).rejects.toThrow(/routes\.mixed\.tiers: tiers are for chat models/);
  });

  // Regression (clarity): decide.ts:69-73: an embeddings route named in /v1/chat/completions (and a chat route in
  // /v1/embeddings) gets "The model `embed` does not exist" while /v1/models lists it. OpenAI itself says
  // which endpoint the model is for ("This is not a chat model ..."). Status and code stay 404 model_not_found.
  it('an embeddings route on /v1/chat/completions: the 404 says it is an embeddings model, not that it does not exist', async () => {
    const { gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb'] } });
    const r = await post(
      gw,
      { model: 'embed', messages: [{ role: 'user', content: 'x' }] },
      {},
      '/v1/chat/completions',
    );
    expect(r.status).toBe(404);
    expect(r.json().error.code).toBe('model_not_found');
    expect(r.json().error.message).not.toMatch(/does not exist/);
    expect(r.json().error.message).toMatch(/embedding/i);
  });
});

describe('embeddings answers relayed', () => {
  // Regression: SPEC §2: a 200 that is no answer is failed over (chat: invalid_upstream_json). The relay's fast
  // path (src/upstream/adapters/openai.ts:302-316 relayedAnswer) checks only that the text starts with `{`,
  // ends with `}`, has `"data": [` somewhere and a parsable `usage` object: a body cut after an inner `}`
  // whose `usage` comes before `data` (key order other servers use) is relayed as a 200 the client cannot parse.
  it('a 200 whose body is truncated JSON (usage first) is failed over, never relayed', async () => {
    const { a, b, gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] } });
    a.next((_body, _req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        '{"object":"list","usage":{"prompt_tokens":3,"total_tokens":3},"model":"emb","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}',
      );
    });
    const r = await post(gw, { model: 'embed', input: 'x' });
    expect(r.status).toBe(200);
    expect(() => JSON.parse(r.text) as unknown).not.toThrow();
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(b.bodies).toHaveLength(1);
  });

  // Pins (embeddings-specific; chat's scrubbing is covered elsewhere): SPEC §8, an upstream that echoes our key
  // in a relayed 400 and in a failed-over 500 hands it to no client.
  it('our provider key echoed in an embeddings error body is scrubbed from the relayed 400 and from the 502', async () => {
    const { a, b, gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] } });
    const echo =
      (status: number, key: string): Handler =>
      (_body, _req, res) =>
        sendJson(res, status, {
          error: { message: `Incorrect API key provided: ${key}`, type: 'invalid_request_error' },
        });
    a.next(echo(400, 'sk-a-0123456789abcdef'));
    const relayed = await post(gw, { model: 'embed', input: 'x' });
    expect(relayed.status).toBe(400);
    expect(relayed.text).toContain('Incorrect API key provided');
    expect(relayed.text).not.toContain('sk-a-0123456789abcdef');
    a.next(echo(500, 'sk-a-0123456789abcdef'));
    b.next(echo(500, 'sk-b-0123456789abcdef'));
    const failed = await post(gw, { model: 'embed', input: 'x' });
    expect(failed.status).toBe(502);
    expect(failed.headers['x-router-attempts']).toBe('2');
    expect(failed.text).not.toContain('0123456789abcdef');
    expect(gw.rawLogs()).not.toContain('0123456789abcdef');
  });

  // Pins (the existing client-leaves tests check the abort and the log line, not the gauge): a client leaving
  // mid-answer brings llm_router_inflight_requests back to 0 and counts no tokens or cost.
  it('a client leaving mid-answer: upstream aborted, in-flight gauge back to 0, no tokens counted', async () => {
    const { a, gw } = await two({ embed: { strategy: 'priority', targets: ['a/emb'] } });
    a.next((_body, _req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1');
      const t = setInterval(() => res.write(',0.1'), 50);
      res.on('close', () => clearInterval(t));
    });
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'embed', input: 'x' }),
      signal: ac.signal,
    }).catch(() => undefined);
    await until('upstream called', () => a.bodies.length === 1);
    const during = await scrape(gw.url);
    expect(value(during, 'llm_router_inflight_requests', { provider: 'a', model: 'emb' })).toBe(1);
    ac.abort();
    await pending;
    await until('upstream aborted', () => a.aborted === 1);
    await until('gauge back to 0', async () => {
      const m = await scrape(gw.url);
      return value(m, 'llm_router_inflight_requests', { provider: 'a', model: 'emb' }) === 0;
    });
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_tokens_total', { provider: 'a', model: 'emb', kind: 'prompt' }) ?? 0).toBe(0);
    expect(
      value(m, 'llm_router_tokens_total', { provider: 'a', model: 'emb', kind: 'completion' }) ?? 0,
    ).toBe(0);
    expect(
      value(m, 'llm_router_requests_total', { route: 'embed', provider: 'a', model: 'emb', status: '499' }),
    ).toBe(1);
  });
});
