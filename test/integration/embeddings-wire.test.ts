/**
 * `/v1/embeddings` on the wire against a hand-written OpenAI embeddings mock (node:http): what reaches the
 * upstream, what reaches the client byte for byte, routing and failover across embedding upstreams,
 * validation of `input`, accounting, and large answers. Real clients: the OpenAI SDK, the AI SDK, LangChain.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOpenAI } from '@ai-sdk/openai';
import { OpenAIEmbeddings } from '@langchain/openai';
import { embed, embedMany } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

interface Seen {
  readonly raw: string;
  readonly body: Record<string, unknown>;
  readonly headers: IncomingMessage['headers'];
}

type Handler = (seen: Seen, req: IncomingMessage, res: ServerResponse) => void;

interface Mock {
  readonly url: string;
  readonly seen: Seen[];
  /** Handlers for the next requests, in order; then `fallback`. */
  next(...h: Handler[]): void;
  fallback: Handler;
  closed: number;
}

function vector(seed: number, dims: number): number[] {
  const v: number[] = [];
  for (let i = 0; i < dims; i++) v.push(Math.fround(Math.sin(seed * 7919 + i) * 0.1));
  return v;
}

function base64Of(v: readonly number[]): string {
  return Buffer.from(new Float32Array(v).buffer).toString('base64');
}

/** OpenAI's embeddings answer for the request it got: one item per input, base64 when asked for. */
function openaiAnswer(body: Record<string, unknown>, dims = 8, usage = true): Record<string, unknown> {
  const input = body.input;
  const items = typeof input === 'string' ? [input] : Array.isArray(input) ? input : [];
  const tokenInput = Array.isArray(input) && input.every((x) => typeof x === 'number');
  const n = tokenInput ? 1 : items.length;
  const d = typeof body.dimensions === 'number' ? body.dimensions : dims;
  const data = Array.from({ length: n }, (_, index) => {
    const v = vector(index + 1, d);
    return {
      object: 'embedding',
      index,
      embedding: body.encoding_format === 'base64' ? base64Of(v) : v,
    };
  });
  return {
    object: 'list',
    data,
    model: String(body.model),
    ...(usage ? { usage: { prompt_tokens: 5 * n, total_tokens: 5 * n } } : {}),
  };
}

const answer: Handler = (seen, _req, res) => sendJson(res, 200, openaiAnswer(seen.body));

async function mock(): Promise<Mock> {
  const queue: Handler[] = [];
  const m: Mock = {
    url: '',
    seen: [],
    next: (...h) => queue.push(...h),
    fallback: answer,
    closed: 0,
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        /* recorded raw */
      }
      const seen = { raw, body, headers: req.headers };
      m.seen.push(seen);
      res.on('close', () => {
        if (!res.writableFinished) m.closed++;
      });
      (queue.shift() ?? m.fallback)(seen, req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return Object.assign(m, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

const EMB = (price: number, extra: Record<string, unknown> = {}) => ({
  name: 'emb',
  capabilities: ['embeddings'],
  price: { input_per_mtok: price, output_per_mtok: 0 },
  ...extra,
});

function provider(name: string, m: Mock, models: unknown[], extra: Record<string, unknown> = {}) {
  return {
    name,
    kind: 'openai',
    base_url: `${m.url}/v1`,
    api_key: `sk-${name}`,
    timeouts: { connect_ms: 1000, first_byte_ms: 600, idle_ms: 600, total_ms: 5000 },
    models,
    ...extra,
  };
}

async function setup(routes: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  const a = await mock();
  const b = await mock();
  const chat = await mock();
  const gw: TestGateway = track(
    await startGateway({
      providers: [
        provider('a', a, [EMB(0.13)]),
        provider('b', b, [EMB(0.02, { upstream_name: 'text-embedding-3-small' })]),
        provider('chat', chat, [{ name: 'gpt', capabilities: ['tools', 'stream'] }]),
      ],
      routes: {
        embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] },
        talk: { strategy: 'priority', targets: ['chat/gpt'] },
        ...routes,
      },
      ...extra,
    }),
  );
  return { a, b, chat, gw };
}

/** What a test reads of an answer: an error's fields, or the list's items. */
interface Answer {
  error: { message: string; type: string; param: string | null; code: string | null };
  data: unknown[];
}

async function post(gw: TestGateway, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) as Answer };
}

async function metric(gw: TestGateway, name: string, labels: Record<string, string>): Promise<number> {
  const res = await request(`${gw.url}/metrics`);
  const text = await res.body.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
      sum += Number(line.split(' ').at(-1));
  }
  return sum;
}

describe('embeddings on the wire', () => {
  it('relays every input shape and dimensions/encoding_format/user untouched; the base64 answer byte for byte', async () => {
    const { a, gw } = await setup();
    // One input of 3000 token ids is one input (OpenAI's bound is 2048 inputs, 8192 tokens each).
    const tokens = Array.from({ length: 3000 }, (_, i) => i);
    const inputs: unknown[] = ['hello', ['hello', 'world'], [1, 2, 3], [[1, 2], [3]], tokens, [tokens, [0]]];
    for (const input of inputs) {
      const body = { model: 'embed', input, dimensions: 4, encoding_format: 'base64', user: 'u-1', extra: 7 };
      const r = await post(gw, body);
      expect(r.status, JSON.stringify(input).slice(0, 60)).toBe(200);
      const got = a.seen.at(-1)!;
      expect(got.body).toEqual({ ...body, model: 'emb' });
      // The upstream's own bytes reach the client.
      expect(r.text).toBe(JSON.stringify(openaiAnswer(got.body)));
      expect(got.headers.authorization).toBe('Bearer sk-a');
    }
  });

  it('the OpenAI SDK (base64 by default), the AI SDK and LangChain decode the vectors', async () => {
    const { a, gw } = await setup();
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const res = await client.embeddings.create({ model: 'embed', input: ['x', 'y'], dimensions: 8 });
    expect(a.seen[0]!.body.encoding_format).toBe('base64');
    expect(res.data[0]!.embedding).toEqual(vector(1, 8));
    expect(res.data[1]!.embedding).toEqual(vector(2, 8));
    expect(res.usage).toEqual({ prompt_tokens: 10, total_tokens: 10 });

    const p = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' });
    const one = await embed({ model: p.embedding('embed'), value: 'hi', maxRetries: 0 });
    expect(one.embedding).toEqual(vector(1, 8));
    const many = await embedMany({ model: p.embedding('embed'), values: ['a', 'b', 'c'], maxRetries: 0 });
    expect(many.embeddings[2]).toEqual(vector(3, 8));
    expect(many.usage.tokens).toBe(15);

    const lc = new OpenAIEmbeddings({
      model: 'embed',
      apiKey: 'k',
      configuration: { baseURL: `${gw.url}/v1` },
      maxRetries: 0,
    });
    const docs = await lc.embedDocuments(['a', 'b']);
    expect(docs[1]).toEqual(vector(2, 8));
  });

  it('rejects empty and malformed input with 400 naming input, calling nothing', async () => {
    const { a, gw } = await setup();
    const bad: unknown[] = [
      '',
      [],
      42,
      null,
      { text: 'x' },
      [null],
      [true],
      [{}],
      [''],
      [[]],
      ['a', 1],
      [1, 'a'],
      [['a']],
      [[1, 'a']],
      [1.5],
      [-1],
      [[1, 2], 3],
    ];
    for (const input of bad) {
      const r = await post(gw, { model: 'embed', input });
      expect(r.status, JSON.stringify(input)).toBe(400);
      expect(r.json().error.param, JSON.stringify(input)).toBe('input');
      expect(r.json().error.type).toBe('invalid_request_error');
    }
    const missing = await post(gw, { model: 'embed' });
    expect(missing.status).toBe(400);
    expect(missing.json().error.param).toBe('input');
    for (const [field, value] of [
      ['encoding_format', 'binary'],
      ['dimensions', 0],
      ['dimensions', 'x'],
    ] as const) {
      const r = await post(gw, { model: 'embed', input: 'x', [field]: value });
      expect(r.status, field).toBe(400);
      expect(r.json().error.param).toBe(field);
    }
    expect(a.seen).toHaveLength(0);
  });
});

describe('embeddings routing and failover', () => {
  it('cost picks the cheaper upstream, round-robin rotates, provider/model and x-router-provider address one', async () => {
    const { a, b, gw } = await setup({
      cheap: { strategy: 'cost', targets: ['a/emb', 'b/emb'] },
      rr: { strategy: 'round-robin', targets: ['a/emb', 'b/emb'] },
    });
    const cost = await post(gw, { model: 'cheap', input: 'x' });
    expect(cost.status).toBe(200);
    expect(cost.headers['x-router-provider']).toBe('b');
    expect(b.seen.at(-1)!.body.model).toBe('text-embedding-3-small');

    const served = [];
    for (let i = 0; i < 4; i++)
      served.push((await post(gw, { model: 'rr', input: 'x' })).headers['x-router-provider']);
    expect(new Set(served)).toEqual(new Set(['a', 'b']));
    expect(served.filter((p) => p === 'a')).toHaveLength(2);

    const direct = await post(gw, { model: 'b/emb', input: 'x' });
    expect(direct.headers['x-router-provider']).toBe('b');
    const pinned = await post(gw, { model: 'embed', input: 'x' }, { 'x-router-provider': 'b' });
    expect(pinned.status).toBe(200);
    expect(pinned.headers['x-router-provider']).toBe('b');
    expect(pinned.headers['x-router-attempts']).toBe('1');
    const unknown = await post(gw, { model: 'embed', input: 'x' }, { 'x-router-provider': 'nope' });
    expect(unknown.status).toBe(400);
    expect(unknown.json().error.param).toBe('x-router-provider');
    expect(a.seen.length + b.seen.length).toBe(7);
  });

  it('fails over on 429, a reset and a first-byte timeout, with headers and trail; relays a 400 without failing over', async () => {
    const { a, b, gw } = await setup();
    const cases: Array<[string, Handler]> = [
      [
        '429',
        (_s, _q, res) => sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit_error' } }),
      ],
      ['500', (_s, _q, res) => sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } })],
      ['reset', (_s, req) => req.socket.destroy()],
      ['timeout', () => undefined],
    ];
    for (const [name, h] of cases) {
      a.next(h);
      const r = await post(gw, { model: 'embed', input: ['x', 'y'] });
      expect(r.status, name).toBe(200);
      expect(r.headers['x-router-provider'], name).toBe('b');
      expect(r.headers['x-router-attempts'], name).toBe('2');
      expect(String(r.headers['x-router-trail']), name).toContain('a/emb');
      expect(r.json().data, name).toHaveLength(2);
    }
    expect(a.seen).toHaveLength(4);
    expect(b.seen).toHaveLength(4);

    a.next((_s, _q, res) =>
      sendJson(res, 400, {
        error: { message: "'$.input' is invalid.", type: 'invalid_request_error', param: null, code: null },
      }),
    );
    const r = await post(gw, { model: 'embed', input: 'x' });
    expect(r.status).toBe(400);
    expect(r.json().error.message).toContain("'$.input' is invalid.");
    expect(b.seen).toHaveLength(4);
  });

  it('all failing: 502 on errors, 429 on rate limits, OpenAI-shaped', async () => {
    const { a, b, gw } = await setup();
    const fail: Handler = (_s, _q, res) => sendJson(res, 500, { error: { message: 'boom' } });
    a.next(fail);
    b.next(fail);
    const r = await post(gw, { model: 'embed', input: 'x' });
    expect(r.status).toBe(502);
    expect(typeof r.json().error.message).toBe('string');
    expect(r.json().error).toHaveProperty('type');
    const limit: Handler = (_s, _q, res) =>
      sendJson(res, 429, { error: { message: 'limit', type: 'rate_limit_error' } }, { 'retry-after': '1' });
    a.next(limit);
    b.next(limit);
    const l = await post(gw, { model: 'embed', input: 'x' });
    expect(l.status).toBe(429);
    expect(typeof l.json().error.message).toBe('string');
    expect(l.headers['retry-after']).toBeDefined();
    // Both now cool down: every candidate is rate limited, still a 429 with Retry-After, nothing called.
    const cooling = await post(gw, { model: 'embed', input: 'x' });
    expect(cooling.status).toBe(429);
    expect(cooling.headers['retry-after']).toBeDefined();
    expect(a.seen).toHaveLength(2);
  });

  it('every breaker open: 503 no_available_upstream', async () => {
    const { a, b, gw } = await setup({}, { circuit_breaker: { failure_threshold: 1 } });
    const fail: Handler = (_s, _q, res) => sendJson(res, 500, { error: { message: 'boom' } });
    a.next(fail);
    b.next(fail);
    expect((await post(gw, { model: 'embed', input: 'x' })).status).toBe(502);
    const none = await post(gw, { model: 'embed', input: 'x' });
    expect(none.status).toBe(503);
    expect(none.json().error.code).toBe('no_available_upstream');
    expect(a.seen.length + b.seen.length).toBe(2);
  });

  it('chat and embedding kinds stay apart by provider/model too (404), on both endpoints', async () => {
    const { a, chat, gw } = await setup();
    const r = await post(gw, { model: 'chat/gpt', input: 'x' });
    expect(r.status).toBe(404);
    expect(r.json().error.code).toBe('model_not_found');
    const c = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'a/emb', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(c.statusCode).toBe(404);
    expect(((await c.body.json()) as Answer).error.code).toBe('model_not_found');
    expect(a.seen.length + chat.seen.length).toBe(0);
  });

  it('a route mixing embedding and chat models is a config error', async () => {
    await expect(setup({ mixed: { targets: ['a/emb', 'chat/gpt'] } })).rejects.toThrow(
      /mixes embedding and chat/,
    );
  });
});

describe('embeddings accounting and large answers', () => {
  it('counts prompt tokens and cost from the usage (or an estimate), one request line and one requests_total', async () => {
    const { a, gw } = await setup();
    const r = await post(gw, { model: 'embed', input: ['a', 'b', 'c'] }, { 'x-request-id': 'acc-1' });
    expect(r.status).toBe(200);
    expect(await metric(gw, 'llm_router_tokens_total', { provider: 'a', kind: 'prompt' })).toBe(15);
    expect(await metric(gw, 'llm_router_cost_usd_total', { provider: 'a' })).toBeCloseTo(
      (15 * 0.13) / 1e6,
      12,
    );
    expect(await metric(gw, 'llm_router_requests_total', { route: 'embed' })).toBe(1);
    await vi.waitFor(() => {
      const lines = gw.logs.filter((l) => l.msg === 'request' && l.reqId === 'acc-1');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ route: 'embed', promptTokens: 15, completionTokens: 0, status: 200 });
    });

    a.next((s, _q, res) => sendJson(res, 200, openaiAnswer(s.body, 8, false)));
    const text = 'word '.repeat(200);
    const e = await post(gw, { model: 'embed', input: text });
    expect(e.status).toBe(200);
    const estimated = (await metric(gw, 'llm_router_tokens_total', { provider: 'a', kind: 'prompt' })) - 15;
    expect(estimated).toBeGreaterThan(50);
    expect(await metric(gw, 'llm_router_requests_total', { route: 'embed' })).toBe(2);
  });

  it('relays a multi-megabyte float answer byte for byte (not re-serialised)', async () => {
    const { a, gw } = await setup();
    let sent = '';
    a.next((s, _q, res) => {
      const body = openaiAnswer({ ...s.body, dimensions: 3072 });
      // OpenAI's own spacing, which a re-serialisation would lose.
      sent = JSON.stringify(body, null, 2);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(sent);
    });
    const inputs = Array.from({ length: 256 }, (_, i) => `doc ${i}`);
    const r = await post(gw, { model: 'embed', input: inputs, encoding_format: 'float' });
    expect(r.status).toBe(200);
    expect(sent.length).toBeGreaterThan(8 * 1024 * 1024);
    expect(r.text.length).toBe(sent.length);
    expect(r.text === sent).toBe(true);
  });

  it('a client leaving mid-answer aborts the upstream, and the request is still logged on its route', async () => {
    const { a, gw } = await setup();
    // The upstream keeps trickling (so no idle bound fires): only the client's leaving can end it.
    a.next((_s, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1');
      const t = setInterval(() => res.write(',0.1'), 50);
      res.on('close', () => clearInterval(t));
    });
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'gone-1' },
      body: JSON.stringify({ model: 'embed', input: 'x' }),
      signal: ac.signal,
    }).catch(() => undefined);
    await vi.waitFor(() => expect(a.seen).toHaveLength(1));
    ac.abort();
    await pending;
    await vi.waitFor(() => expect(a.closed).toBe(1));
    await vi.waitFor(() => {
      const line = gw.logs.find((l) => l.msg === 'request' && l.reqId === 'gone-1');
      expect(line).toMatchObject({ route: 'embed', status: 499, error: 'client_closed' });
    });
  });
});
