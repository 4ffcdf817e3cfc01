/**
 * Audit of the HTTP surface besides chat, through real clients: `/v1/embeddings` (routing, strategies,
 * failover, breakers, headers, metrics, errors), `/v1/models` and `/v1/models/{id}`, and the reverse proxy
 * of every other `/v1/*` path to `server.passthrough` (files, audio, images, responses, batches...).
 * Expectations come from SPEC §4/§5/§8, the README's "HTTP surface" and how the OpenAI API and SDK behave.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { createOpenAI } from '@ai-sdk/openai';
import { OpenAIEmbeddings } from '@langchain/openai';
import { embed, embedMany } from 'ai';
import OpenAI, { APIError, NotFoundError, toFile } from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { gate, sendJson } from '../helpers/mock-upstream.js';
import { scrape, select, value } from '../helpers/prom-text.js';

const track = closeAfterEach();

// ---------------------------------------------------------------------------------------------
// Helpers

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: Buffer;
}

type Handler = (seen: Seen, res: ServerResponse, req: IncomingMessage) => void | Promise<void>;

interface Upstream {
  readonly url: string;
  readonly seen: Seen[];
  next(...h: Handler[]): void;
  fallback: Handler;
  readonly server: Server;
}

/** A recording upstream on 127.0.0.1:0: answers each request with the next queued handler, else `fallback`. */
async function upstream(fallback?: Handler): Promise<Upstream> {
  const queue: Handler[] = [];
  const u: Omit<Upstream, 'server'> & { url: string } = {
    url: '',
    seen: [],
    next: (...h) => void queue.push(...h),
    fallback: fallback ?? ((s, res) => sendJson(res, 200, { ok: true, method: s.method, url: s.url })),
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks),
      };
      u.seen.push(seen);
      void (queue.shift() ?? u.fallback)(seen, res, req);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return Object.assign(u, { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

const EMB = (price = 0.02, extra: Record<string, unknown> = {}) => ({
  name: 'emb',
  capabilities: ['embeddings'],
  price: { input_per_mtok: price, output_per_mtok: 0 },
  ...extra,
});

const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 800, idle_ms: 800, total_ms: 4000 };

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function call(
  gw: Pick<TestGateway, 'url'>,
  method: string,
  path: string,
  opts: { body?: unknown; headers?: Record<string, string> } = {},
) {
  const res = await request(`${gw.url}${path}`, {
    method: method as 'GET',
    headers: {
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers,
    },
    body:
      opts.body === undefined
        ? undefined
        : typeof opts.body === 'string'
          ? opts.body
          : JSON.stringify(opts.body),
  });
  const buf = Buffer.from(await res.body.arrayBuffer());
  const text = buf.toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text) as unknown;
  } catch {
    json = undefined;
  }
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) headers[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers, text, buf, json: json as Record<string, unknown> & ErrorBody };
}

function expectOpenAIError(body: unknown, status: string) {
  expect(body, status).toBeTypeOf('object');
  const err = (body as ErrorBody).error;
  expect(err, status).toBeDefined();
  expect(Object.keys(err).sort(), status).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof err.message, status).toBe('string');
}

/** Two simulators serving embedding model `emb` (e1 cheap, e2 dearer), one chat simulator, and a gateway. */
async function embedSetup(
  opts: {
    strategy?: string;
    server?: Record<string, unknown>;
    breaker?: Record<string, unknown>;
    prices?: [number, number];
  } = {},
) {
  const e1 = track(await startSimulator({ name: 'e1' }));
  const e2 = track(await startSimulator({ name: 'e2' }));
  const chat = track(await startSimulator({ name: 'chat' }));
  const [p1, p2] = opts.prices ?? [1000, 2000];
  const gw = track(
    await startGateway({
      ...(opts.server ? { server: opts.server } : {}),
      providers: [
        simProvider('e1', e1.url, [EMB(p1, { upstream_name: 'text-embedding-3-small' })], {
          api_key: 'sk-e1',
          timeouts: TIMEOUTS,
        }),
        simProvider('e2', e2.url, [EMB(p2)], { api_key: 'sk-e2', timeouts: TIMEOUTS }),
        simProvider('chat', chat.url, ['gpt'], { api_key: 'sk-chat', timeouts: TIMEOUTS }),
      ],
      routes: {
        embed: { strategy: opts.strategy ?? 'priority', targets: ['e1/emb', 'e2/emb'] },
        talk: { strategy: 'priority', targets: ['chat/gpt'] },
      },
      ...(opts.breaker ? { circuit_breaker: opts.breaker } : {}),
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  const direct = new OpenAI({ baseURL: `${e1.url}/v1`, apiKey: 'direct', maxRetries: 0 });
  return { e1, e2, chat, gw, client, direct };
}

// ---------------------------------------------------------------------------------------------
// Embeddings

describe('audit: /v1/embeddings through real clients', () => {
  it('OpenAI SDK: base64 default, float, dimensions, token ids and 2048 inputs give the vectors a direct call gives', async () => {
    const { e1, client, direct } = await embedSetup();
    const cases: OpenAI.EmbeddingCreateParams[] = [
      { model: 'embed', input: ['hello', 'world'] },
      { model: 'embed', input: 'one text', encoding_format: 'float' },
      { model: 'embed', input: ['dims'], dimensions: 16 },
      { model: 'embed', input: [1, 2, 3, 4] },
      { model: 'embed', input: [[5, 6], [7]] },
      { model: 'embed', input: Array.from({ length: 2048 }, (_, i) => `item ${i}`) },
    ];
    for (const params of cases) {
      const label = JSON.stringify(params).slice(0, 60);
      const via = await client.embeddings.create(params);
      const ref = await direct.embeddings.create({ ...params, model: 'text-embedding-3-small' });
      expect(via.object, label).toBe('list');
      expect(via.data.length, label).toBe(ref.data.length);
      expect(
        via.data.map((d) => d.embedding),
        label,
      ).toEqual(ref.data.map((d) => d.embedding));
      expect(
        via.data.map((d) => d.index),
        label,
      ).toEqual(ref.data.map((d) => d.index));
      expect(via.usage, label).toEqual(ref.usage);
      // The upstream got its own model name and the SDK's encoding.
      const sent = e1.requests.at(-2)!.body as Record<string, unknown>;
      expect(sent.model, label).toBe('text-embedding-3-small');
      expect(sent.encoding_format, label).toBe(params.encoding_format ?? 'base64');
    }
    expect(((await client.embeddings.create(cases[2]!)).data[0]!.embedding as number[]).length).toBe(16);
  });

  it('AI SDK embed/embedMany (its batching) and LangChain embedDocuments (batchSize)/embedQuery match a direct call', async () => {
    const { e1, gw, direct } = await embedSetup();
    const values = Array.from({ length: 7 }, (_, i) => `doc number ${i}`);
    const ref = (
      await direct.embeddings.create({ model: 'x', input: values, encoding_format: 'float' })
    ).data.map((d) => d.embedding);
    const refQuery = (
      await direct.embeddings.create({ model: 'x', input: 'the query', encoding_format: 'float' })
    ).data[0]!.embedding;
    const before = e1.requests.length;

    const p = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' });
    const many = await embedMany({ model: p.embedding('embed'), values, maxRetries: 0 });
    expect(many.embeddings).toEqual(ref);
    expect(many.usage.tokens).toBeGreaterThan(0);
    const one = await embed({ model: p.embedding('embed'), value: 'the query', maxRetries: 0 });
    expect(one.embedding).toEqual(refQuery);

    const lc = new OpenAIEmbeddings({
      model: 'embed',
      apiKey: 'k',
      batchSize: 3,
      configuration: { baseURL: `${gw.url}/v1` },
      maxRetries: 0,
    });
    const before2 = e1.requests.length;
    expect(await lc.embedDocuments(values)).toEqual(ref);
    expect(e1.requests.length - before2).toBe(3); // 3 + 3 + 1
    expect(await lc.embedQuery('the query')).toEqual(refQuery);
    expect(e1.requests.length).toBeGreaterThan(before);
  });

  it('every strategy serves embeddings, named in x-router-strategy; round-robin rotates; cost picks the cheaper', async () => {
    const { e1, e2, client } = await embedSetup({ strategy: 'hybrid' });
    for (const strategy of [
      'cost',
      'latency',
      'hybrid',
      'round-robin',
      'priority',
      'weighted',
      'least-busy',
    ]) {
      const { data, response } = await client.embeddings
        .create({ model: 'embed', input: 'x' }, { headers: { 'x-router-strategy': strategy } })
        .withResponse();
      expect(response.status, strategy).toBe(200);
      expect(data.data).toHaveLength(1);
      expect(response.headers.get('x-router-strategy'), strategy).toBe(strategy);
      expect(['e1', 'e2'], strategy).toContain(response.headers.get('x-router-provider'));
      expect(response.headers.get('x-router-model'), strategy).toBe('emb');
      expect(response.headers.get('x-router-attempts'), strategy).toBe('1');
      expect(response.headers.get('x-request-id'), strategy).toBeTruthy();
    }
    const rr: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { response } = await client.embeddings
        .create({ model: 'embed', input: 'x' }, { headers: { 'x-router-strategy': 'round-robin' } })
        .withResponse();
      rr.push(response.headers.get('x-router-provider')!);
    }
    expect(new Set(rr)).toEqual(new Set(['e1', 'e2']));
    for (let i = 0; i < 3; i++) {
      const { response } = await client.embeddings
        .create({ model: 'embed', input: 'x' }, { headers: { 'x-router-strategy': 'cost' } })
        .withResponse();
      expect(response.headers.get('x-router-provider')).toBe('e1');
    }
    expect(e1.requests.length + e2.requests.length).toBe(14);
  });

  it('fails over on a provider 401/403, 408 and 503 (our key is wrong there, or it is down)', async () => {
    const { e1, e2, client } = await embedSetup({ breaker: { failure_threshold: 50 } });
    for (const status of [401, 403, 408, 503]) {
      e1.script([{ status }]);
      const { response } = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
      expect(response.headers.get('x-router-provider'), String(status)).toBe('e2');
      expect(response.headers.get('x-router-attempts'), String(status)).toBe('2');
    }
    expect(e2.requests).toHaveLength(4);
  });

  it('a 200 whose body is an error object (or not an embeddings list) is failed over, not relayed as a success', async () => {
    const a = await upstream();
    const b = await upstream((_s, res) =>
      sendJson(res, 200, {
        object: 'list',
        data: [{ object: 'embedding', index: 0, embedding: [0.25, 0.5] }],
        model: 'emb',
        usage: { prompt_tokens: 1, total_tokens: 1 },
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          { name: 'a', base_url: `${a.url}/v1`, api_key: 'sk-a', timeouts: TIMEOUTS, models: [EMB()] },
          { name: 'b', base_url: `${b.url}/v1`, api_key: 'sk-b', timeouts: TIMEOUTS, models: [EMB()] },
        ],
        routes: { embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] } },
        circuit_breaker: { failure_threshold: 50 },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    // README: "so is a non-streaming 200 whose body is an `error` object instead of an answer".
    a.next((_s, res) =>
      sendJson(res, 200, { error: { message: 'overloaded', type: 'server_error', param: null, code: null } }),
    );
    const { data, response } = await client.embeddings
      .create({ model: 'embed', input: 'x', encoding_format: 'float' })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('b');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    expect(data.data[0]!.embedding).toEqual([0.25, 0.5]);
    // An HTML page from a front end with a 200 (a captive proxy, a misrouted base_url) is no answer either.
    a.next((_s, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html><body>Welcome to nginx!</body></html>');
    });
    const html = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(html.status).toBe(200);
    expect(html.headers['x-router-provider']).toBe('b');
  });

  it('every embedding upstream failing: 502 upstream_error naming each attempt, with attempts and trail', async () => {
    const { e1, e2, gw } = await embedSetup({ breaker: { failure_threshold: 50 } });
    e1.set({ status: 500 });
    e2.set({ status: 502 });
    const r = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(r.status).toBe(502);
    expectOpenAIError(r.json, '502');
    expect(r.json.error.code).toBe('upstream_error');
    expect(r.json.error.message).toContain('e1/emb');
    expect(r.json.error.message).toContain('e2/emb');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toMatch(/^e1\/emb=\S+,\s?e2\/emb=\S+$/);
    const m = await scrape(gw.url);
    expect(
      select(m, 'llm_router_requests_total', { route: 'embed', status: '502' }).reduce(
        (s, x) => s + x.value,
        0,
      ),
    ).toBe(1);
    // A last failed attempt is not a failover.
    expect(select(m, 'llm_router_failovers_total', { route: 'embed' }).reduce((s, x) => s + x.value, 0)).toBe(
      1,
    );
  });

  it('/router/status statistics and the in-flight gauge follow embeddings requests', async () => {
    const { gw, client, e1 } = await embedSetup();
    // While an embeddings request is under way, the gauge shows it (held 500 ms: under first_byte_ms, 800).
    e1.set({ latencyMs: 500 });
    const slow = client.embeddings.create({ model: 'embed', input: 'slow' });
    await e1.waitForRequests(1);
    expect(
      value(await scrape(gw.url), 'llm_router_inflight_requests', { provider: 'e1', model: 'emb' }),
    ).toBe(1);
    await slow;
    e1.set({ latencyMs: 0 });
    for (let i = 0; i < 2; i++) await client.embeddings.create({ model: 'embed', input: `x${i}` });
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: {
        id: string;
        stats: { requests: number; successes: number; failures: number };
        in_flight: number;
      }[];
    };
    const u = st.upstreams.find((x) => x.id === 'e1/emb');
    expect(u?.stats).toMatchObject({ requests: 3, successes: 3, failures: 0 });
    expect(u?.in_flight).toBe(0);
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'e1', model: 'emb' })).toBe(0);
    const lines = gw.logs.filter((l) => l.msg === 'request' && l.route === 'embed');
    expect(lines).toHaveLength(3);
  });

  it('40 concurrent embeddings across both upstreams: each client gets the vectors of its own input', async () => {
    const { e1, e2, client, direct } = await embedSetup({ strategy: 'round-robin' });
    const inputs = Array.from({ length: 40 }, (_, i) => [`concurrent ${i}`, `second ${i}`]);
    const refs = await Promise.all(
      inputs.map(async (input) =>
        (await direct.embeddings.create({ model: 'x', input })).data.map((d) => d.embedding),
      ),
    );
    e1.requests.length = 0;
    const got = await Promise.all(
      inputs.map(async (input) =>
        (await client.embeddings.create({ model: 'embed', input })).data.map((d) => d.embedding),
      ),
    );
    expect(got).toEqual(refs);
    expect(e1.requests.length).toBeGreaterThan(0);
    expect(e2.requests.length).toBeGreaterThan(0);
  });

  it('AI SDK embedMany past its per-call maximum (2048) splits into calls, all through the gateway', async () => {
    const { e1, gw, direct } = await embedSetup();
    const values = Array.from({ length: 2050 }, (_, i) => `v${i}`);
    const p = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' });
    const before = e1.requests.length;
    const many = await embedMany({ model: p.embedding('embed'), values, maxRetries: 0 });
    expect(e1.requests.length - before).toBe(2);
    expect(many.embeddings).toHaveLength(2050);
    const ref = await direct.embeddings.create({
      model: 'x',
      input: values.slice(2046),
      encoding_format: 'float',
    });
    expect(many.embeddings.slice(2046)).toEqual(ref.data.map((d) => d.embedding));
  });

  it('a relayed client error is counted under its route (status 400, attempt client_error); x-router-tier is ignored', async () => {
    const { e1, gw, client } = await embedSetup();
    e1.script([{ status: 400, errorMessage: 'Invalid input: too many tokens' }]);
    const r = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toContain('Invalid input: too many tokens');
    expect(r.headers['x-router-provider']).toBe('e1');
    const m = await scrape(gw.url);
    expect(
      value(m, 'llm_router_requests_total', { route: 'embed', provider: 'e1', model: 'emb', status: '400' }),
    ).toBe(1);
    expect(
      value(m, 'llm_router_upstream_attempts_total', {
        provider: 'e1',
        model: 'emb',
        outcome: 'client_error',
      }),
    ).toBe(1);
    // A route without tiers ignores x-router-tier (README); a bad strategy is a 400 naming the header.
    const tier = await client.embeddings
      .create({ model: 'embed', input: 'x' }, { headers: { 'x-router-tier': 'deep' } })
      .withResponse();
    expect(tier.response.status).toBe(200);
    const bad = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'embed', input: 'x' },
      headers: { 'x-router-strategy': 'fastest' },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe('x-router-strategy');
  });

  it('a tripped embedding breaker half-opens after open_ms and closes again on a successful probe', async () => {
    const { e1, gw, client } = await embedSetup({
      breaker: { failure_threshold: 1, open_ms: 300, success_threshold: 1 },
    });
    e1.script([{ status: 500 }]);
    const first = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
    expect(first.response.headers.get('x-router-provider')).toBe('e2');
    const skipped = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
    expect(skipped.response.headers.get('x-router-provider')).toBe('e2');
    await new Promise((r) => setTimeout(r, 450));
    const probe = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
    expect(probe.response.headers.get('x-router-provider')).toBe('e1');
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string } }[];
    };
    expect(st.upstreams.find((u) => u.id === 'e1/emb')?.breaker.state).toBe('closed');
  });

  it('a 429 with Retry-After opens the embedding breaker with cause rate_limit; max_attempts and total_timeout_ms bound it', async () => {
    const e1 = track(await startSimulator({ name: 'e1' }));
    const e2 = track(await startSimulator({ name: 'e2' }));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('e1', e1.url, [EMB()], {
            api_key: 'sk-e1',
            timeouts: { ...TIMEOUTS, first_byte_ms: 3000 },
          }),
          simProvider('e2', e2.url, [EMB()], {
            api_key: 'sk-e2',
            timeouts: { ...TIMEOUTS, first_byte_ms: 3000 },
          }),
        ],
        routes: { embed: { strategy: 'priority', targets: ['e1/emb', 'e2/emb'] } },
        routing: { max_attempts: 1, total_timeout_ms: 400 },
      }),
    );
    e1.script([{ status: 429, retryAfterS: 20 }]);
    const limited = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    // max_attempts 1: the 429 is the answer, with its Retry-After; e2 is not tried.
    expect(limited.status).toBe(429);
    expectOpenAIError(limited.json, '429');
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    expect(e2.requests).toHaveLength(0);
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string; trip_cause?: string | null } }[];
    };
    expect(st.upstreams.find((u) => u.id === 'e1/emb')?.breaker).toMatchObject({
      state: 'open',
      trip_cause: 'rate_limit',
    });
    // e1 is open now: e2 serves; when it hangs, total_timeout_ms bounds the request with a 504 timeout.
    e2.set({ hang: true });
    const t0 = performance.now();
    const slow = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(slow.status).toBe(504);
    expectOpenAIError(slow.json, '504');
    expect(slow.json.error.code).toBe('timeout');
    expect(performance.now() - t0).toBeLessThan(2500);
  });

  it('an upstream model name with a slash (vLLM/TEI: org/model) is addressable as provider/org/model and listed', async () => {
    const e1 = track(await startSimulator({ name: 'hf' }));
    let gw: TestGateway;
    try {
      gw = track(
        await startGateway({
          providers: [
            simProvider('hf', e1.url, [{ name: 'BAAI/bge-small-en', capabilities: ['embeddings'] }], {
              api_key: 'sk-hf',
            }),
          ],
          routes: { embed: { targets: ['hf/BAAI/bge-small-en'] } },
        }),
      );
    } catch (err) {
      // Refusing such a name at load time, saying where, is acceptable (upstream_name is the documented way).
      expect(String(err)).toMatch(/providers\[0\]\.models\[0\]|routes\.embed/);
      return;
    }
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const r = await client.embeddings.create({ model: 'hf/BAAI/bge-small-en', input: 'x' }).withResponse();
    expect(r.response.headers.get('x-router-model')).toBe('BAAI/bge-small-en');
    expect((e1.requests.at(-1)!.body as Record<string, unknown>).model).toBe('BAAI/bge-small-en');
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toContain('hf/BAAI/bge-small-en');
    expect((await client.models.retrieve('hf/BAAI/bge-small-en')).id).toBe('hf/BAAI/bge-small-en');
  });

  it('latency prefers the faster embedding upstream once both are measured; weighted follows target weights', async () => {
    const e1 = track(await startSimulator({ name: 'e1', latencyMs: 120 }));
    const e2 = track(await startSimulator({ name: 'e2' }));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('e1', e1.url, [EMB()], { api_key: 'sk-e1', timeouts: TIMEOUTS }),
          simProvider('e2', e2.url, [EMB()], { api_key: 'sk-e2', timeouts: TIMEOUTS }),
        ],
        routes: {
          embed: { strategy: 'latency', targets: ['e1/emb', 'e2/emb'] },
          heavy: {
            strategy: 'weighted',
            targets: [
              { target: 'e1/emb', weight: 1 },
              { target: 'e2/emb', weight: 19 },
            ],
          },
        },
        routing: { exploration_share: 0.1, min_samples: 2 },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    for (const provider of ['e1', 'e2', 'e1', 'e2'])
      await client.embeddings.create(
        { model: 'embed', input: 'warm' },
        { headers: { 'x-router-provider': provider } },
      );
    const picks: string[] = [];
    for (let i = 0; i < 8; i++) {
      const { response } = await client.embeddings.create({ model: 'embed', input: `q${i}` }).withResponse();
      picks.push(response.headers.get('x-router-provider')!);
    }
    expect(picks.filter((p) => p === 'e2').length, picks.join()).toBeGreaterThanOrEqual(6);
    const weighted: string[] = [];
    for (let i = 0; i < 30; i++) {
      const { response } = await client.embeddings.create({ model: 'heavy', input: 'w' }).withResponse();
      weighted.push(response.headers.get('x-router-provider')!);
    }
    expect(weighted.filter((p) => p === 'e2').length, weighted.join()).toBeGreaterThanOrEqual(22);
  });

  it('every embedding upstream rate limited: 429 with Retry-After, and again (attempts 0) while their cooldowns run', async () => {
    const { e1, e2, gw } = await embedSetup();
    e1.set({ status: 429, retryAfterS: 20 });
    e2.set({ status: 429, retryAfterS: 30 });
    const first = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(first.status).toBe(429);
    expectOpenAIError(first.json, 'first');
    expect(Number(first.headers['retry-after'])).toBeGreaterThan(0);
    const n = e1.requests.length + e2.requests.length;
    const again = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    // SPEC §4: 429 (with Retry-After when every candidate is rate limited).
    expect(again.status).toBe(429);
    expectOpenAIError(again.json, 'again');
    const ra = Number(again.headers['retry-after']);
    expect(ra).toBeGreaterThanOrEqual(15);
    expect(ra).toBeLessThanOrEqual(30);
    expect(again.headers['x-router-attempts']).toBe('0');
    expect(e1.requests.length + e2.requests.length).toBe(n);
  });

  it('context_window bounds each input of an embeddings batch, not their sum (OpenAI: 8192 tokens per input)', async () => {
    const e1 = track(await startSimulator({ name: 'e1' }));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('e1', e1.url, [EMB(0.02, { context_window: 8192 })], {
            api_key: 'sk-e1',
            timeouts: TIMEOUTS,
          }),
        ],
        routes: { embed: { targets: ['e1/emb'] } },
      }),
    );
    // README context_window: a request whose prompt exceeds it skips the upstream; an embeddings batch has no
    // one prompt (OpenAI bounds each input), so a batch of fitting inputs must not be refused.
    // 64 documents of ~500 tokens each: every input fits the model, the batch (~32k tokens) does not.
    const doc = (i: number) => `document ${i}: ${'lorem ipsum dolor sit amet '.repeat(90)}`;
    const lc = new OpenAIEmbeddings({
      model: 'embed',
      apiKey: 'k',
      configuration: { baseURL: `${gw.url}/v1` },
      maxRetries: 0,
    });
    const vectors = await lc.embedDocuments(Array.from({ length: 64 }, (_, i) => doc(i)));
    expect(vectors).toHaveLength(64);
    expect(e1.requests).toHaveLength(1);
    // One input over the window is still skipped (a 400 context_length_exceeded), calling nothing.
    const r = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'embed', input: 'word '.repeat(20000) },
    });
    expect(r.status).toBe(400);
    expect(e1.requests).toHaveLength(1);
  });

  it('x-request-id is echoed on an embeddings answer, and a client one on an error too', async () => {
    const { gw } = await embedSetup();
    const ok = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'embed', input: 'x' },
      headers: { 'x-request-id': 'req-emb-123' },
    });
    expect(ok.status).toBe(200);
    expect(ok.headers['x-request-id']).toBe('req-emb-123');
    const bad = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'nope', input: 'x' },
      headers: { 'x-request-id': 'req-emb-404' },
    });
    expect(bad.status).toBe(404);
    expect(bad.headers['x-request-id']).toBe('req-emb-404');
  });

  it('fails over on 500, 429 and a first-byte timeout with headers and trail, and counts failovers and attempts', async () => {
    const { e1, e2, gw, client } = await embedSetup({ breaker: { failure_threshold: 50 } });
    const cases: Array<[string, Partial<Parameters<Simulator['script']>[0][number]>]> = [
      ['500', { status: 500 }],
      ['429', { status: 429 }],
      ['timeout', { hang: true }],
    ];
    for (const [label, step] of cases) {
      e1.script([step]);
      const { data, response } = await client.embeddings
        .create({ model: 'embed', input: label })
        .withResponse();
      expect(response.status, label).toBe(200);
      expect(data.data).toHaveLength(1);
      expect(response.headers.get('x-router-provider'), label).toBe('e2');
      expect(response.headers.get('x-router-attempts'), label).toBe('2');
      const trail = response.headers.get('x-router-trail') ?? '';
      expect(trail, label).toMatch(/^e1\/emb=\S+$/);
    }
    expect(e2.requests).toHaveLength(3);
    const m = await scrape(gw.url);
    const failovers = select(m, 'llm_router_failovers_total', { route: 'embed', from_provider: 'e1' });
    expect(failovers.reduce((s, x) => s + x.value, 0)).toBe(3);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'e1', model: 'emb', outcome: 'error' }),
    ).toBe(1);
    expect(
      value(m, 'llm_router_upstream_attempts_total', {
        provider: 'e1',
        model: 'emb',
        outcome: 'rate_limited',
      }),
    ).toBe(1);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'e1', model: 'emb', outcome: 'timeout' }),
    ).toBe(1);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'e2', model: 'emb', outcome: 'success' }),
    ).toBe(3);
    // Tokens and cost belong to the upstream that served, at its price.
    expect(value(m, 'llm_router_tokens_total', { provider: 'e1', model: 'emb', kind: 'prompt' }) ?? 0).toBe(
      0,
    );
    const t2 = value(m, 'llm_router_tokens_total', { provider: 'e2', model: 'emb', kind: 'prompt' }) ?? 0;
    expect(t2).toBeGreaterThan(0);
    expect(value(m, 'llm_router_cost_usd_total', { provider: 'e2', model: 'emb' })).toBeCloseTo(
      (t2 * 2000) / 1e6,
      9,
    );
  });

  it('client errors (400, 404, 413, 422) from the upstream are not failed over; status and message kept', async () => {
    const a = await upstream();
    const b = await upstream((s, res) =>
      sendJson(res, 200, {
        object: 'list',
        data: [{ object: 'embedding', index: 0, embedding: [0.5] }],
        model: 'emb',
        usage: { prompt_tokens: 1, total_tokens: 1 },
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          { name: 'a', base_url: `${a.url}/v1`, api_key: 'sk-a', timeouts: TIMEOUTS, models: [EMB()] },
          { name: 'b', base_url: `${b.url}/v1`, api_key: 'sk-b', timeouts: TIMEOUTS, models: [EMB()] },
        ],
        routes: { embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    for (const status of [400, 404, 413, 422]) {
      const message = `This model's maximum context length is 8192 tokens (case ${status}).`;
      a.next((_s, res) =>
        sendJson(res, status, {
          error: { message, type: 'invalid_request_error', param: 'input', code: `c${status}` },
        }),
      );
      const err = (await client.embeddings
        .create({ model: 'embed', input: 'x' })
        .catch((e: unknown) => e)) as APIError;
      expect(err, String(status)).toBeInstanceOf(APIError);
      expect(err.status, String(status)).toBe(status);
      expect(err.message, String(status)).toContain(message);
      expect((err.error as ErrorBody['error']).param, String(status)).toBe('input');
    }
    expect(b.seen).toHaveLength(0);
  });

  it('a breaker trips on embeddings failures: /router/status and the gauge show it, later requests skip it', async () => {
    const { e1, e2, gw, client } = await embedSetup({ breaker: { failure_threshold: 2, open_ms: 30000 } });
    e1.set({ status: 500 });
    for (let i = 0; i < 2; i++) {
      const { response } = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
      expect(response.headers.get('x-router-provider')).toBe('e2');
    }
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string; trip_cause?: string | null } }[];
    };
    const br = st.upstreams.find((u) => u.id === 'e1/emb')?.breaker;
    expect(br?.state).toBe('open');
    expect(br?.trip_cause).toBe('errors');
    const before = e1.requests.length;
    const { response } = await client.embeddings.create({ model: 'embed', input: 'x' }).withResponse();
    expect(response.headers.get('x-router-provider')).toBe('e2');
    expect(response.headers.get('x-router-attempts')).toBe('1');
    expect(response.headers.get('x-router-trail') ?? '').toBe('');
    expect(e1.requests.length).toBe(before);
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'e1', model: 'emb' })).toBe(2);
    // Both open: 503 no_available_upstream, OpenAI-shaped.
    e2.set({ status: 500 });
    for (let i = 0; i < 2; i++)
      await client.embeddings.create({ model: 'embed', input: 'x' }).catch(() => undefined);
    const r = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
    expect(r.status).toBe(503);
    expectOpenAIError(r.json, '503');
    expect(r.json.error.code).toBe('no_available_upstream');
    // README: a 503 refused with every breaker open has x-router-attempts: 0, no provider, and counts under its route.
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(r.headers['x-router-provider']).toBeUndefined();
    const m2 = await scrape(gw.url);
    expect(
      select(m2, 'llm_router_requests_total', { route: 'embed', status: '503' }).reduce(
        (s, x) => s + x.value,
        0,
      ),
    ).toBe(1);
  });

  it('metrics: requests_total, routing decisions, prompt tokens only, cost at the input price', async () => {
    const { gw, client } = await embedSetup({ prices: [1000, 2000] });
    let tokens = 0;
    for (const input of [
      ['alpha beta gamma', 'delta'],
      'a somewhat longer text to embed here',
      [1, 2, 3, 4, 5],
    ]) {
      const r = await client.embeddings.create({ model: 'embed', input: input as string });
      tokens += r.usage.prompt_tokens;
    }
    expect(tokens).toBeGreaterThan(0);
    const m = await scrape(gw.url);
    expect(
      value(m, 'llm_router_requests_total', { route: 'embed', provider: 'e1', model: 'emb', status: '200' }),
    ).toBe(3);
    expect(
      select(m, 'llm_router_routing_decisions_total', { route: 'embed', provider: 'e1' }).reduce(
        (s, x) => s + x.value,
        0,
      ),
    ).toBe(3);
    expect(value(m, 'llm_router_tokens_total', { provider: 'e1', model: 'emb', kind: 'prompt' })).toBe(
      tokens,
    );
    expect(
      value(m, 'llm_router_tokens_total', { provider: 'e1', model: 'emb', kind: 'completion' }) ?? 0,
    ).toBe(0);
    expect(value(m, 'llm_router_cost_usd_total', { provider: 'e1', model: 'emb' })).toBeCloseTo(
      (tokens * 1000) / 1e6,
      9,
    );
    const dur = select(m, 'llm_router_request_duration_seconds_count', { route: 'embed', provider: 'e1' });
    expect(dur.reduce((s, x) => s + x.value, 0)).toBe(3);
    expect(dur.every((d) => d.labels.stream === 'false')).toBe(true);
    expect(value(m, 'llm_router_overhead_seconds_count', { route: 'embed' })).toBe(3);
  });

  it('provider/model and x-router-provider address one embedding upstream; an unknown one is refused', async () => {
    const { e1, e2, gw, client } = await embedSetup();
    const { response } = await client.embeddings.create({ model: 'e2/emb', input: 'x' }).withResponse();
    expect(response.headers.get('x-router-provider')).toBe('e2');
    expect((e2.requests.at(-1)!.body as Record<string, unknown>).model).toBe('emb');
    const pinned = await client.embeddings
      .create({ model: 'embed', input: 'x' }, { headers: { 'x-router-provider': 'e2' } })
      .withResponse();
    expect(pinned.response.headers.get('x-router-provider')).toBe('e2');
    const bad = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'embed', input: 'x' },
      headers: { 'x-router-provider': 'nobody' },
    });
    expect(bad.status).toBe(400);
    expectOpenAIError(bad.json, 'pin');
    const unknown = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'e1/other', input: 'x' } });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe('model_not_found');
    expect(e1.requests).toHaveLength(0);
  });

  it('a chat route or chat upstream named in /v1/embeddings is a 404, and an embedding route in chat too', async () => {
    const { chat, e1, gw } = await embedSetup();
    for (const model of ['talk', 'chat/gpt']) {
      const r = await call(gw, 'POST', '/v1/embeddings', { body: { model, input: 'x' } });
      expect(r.status, model).toBe(404);
      expectOpenAIError(r.json, model);
      expect(r.json.error.code, model).toBe('model_not_found');
    }
    for (const model of ['embed', 'e1/emb']) {
      const r = await call(gw, 'POST', '/v1/chat/completions', {
        body: { model, messages: [{ role: 'user', content: 'hi' }] },
      });
      expect(r.status, model).toBe(404);
      expect(r.json.error.code, model).toBe('model_not_found');
    }
    expect(chat.requests).toHaveLength(0);
    expect(e1.requests).toHaveLength(0);
  });

  it('an Anthropic upstream is never sent an embeddings request (a config error, or skipped)', async () => {
    const e1 = track(await startSimulator({ name: 'e1' }));
    const an = track(await startSimulator({ name: 'an', kind: 'anthropic' }));
    let gw: TestGateway | undefined;
    try {
      gw = track(
        await startGateway({
          providers: [
            { name: 'an', kind: 'anthropic', base_url: an.url, api_key: 'sk-an', models: [EMB(0)] },
            simProvider('e1', e1.url, [EMB(5)], { api_key: 'sk-e1' }),
          ],
          routes: { embed: { strategy: 'priority', targets: ['an/emb', 'e1/emb'] } },
        }),
      );
    } catch (err) {
      // A config error is fine: it must name the path.
      expect(String(err)).toMatch(/providers|routes/);
      return;
    }
    for (let i = 0; i < 3; i++) {
      const r = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'embed', input: 'x' } });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('e1');
    }
    const pinned = await call(gw, 'POST', '/v1/embeddings', { body: { model: 'an/emb', input: 'x' } });
    expect(pinned.status).not.toBe(200);
    expect(an.requests).toHaveLength(0);
  });

  it('a request without model, or a model not a string, is a 400 naming model; a JSON body not an object a 400', async () => {
    const { e1, gw } = await embedSetup();
    const r1 = await call(gw, 'POST', '/v1/embeddings', { body: { input: 'x' } });
    expect(r1.status).toBe(400);
    expectOpenAIError(r1.json, 'missing');
    expect(r1.json.error.param).toBe('model');
    const r2 = await call(gw, 'POST', '/v1/embeddings', { body: '["x"]' });
    expect(r2.status).toBe(400);
    expectOpenAIError(r2.json, 'array');
    const r3 = await call(gw, 'POST', '/v1/embeddings', { body: '{"model":"embed","input":' });
    expect(r3.status).toBe(400);
    expectOpenAIError(r3.json, 'bad json');
    expect(e1.requests).toHaveLength(0);
  });
});

// ---------------------------------------------------------------------------------------------
// Models

describe('audit: /v1/models', () => {
  async function modelsSetup(server: Record<string, unknown> = {}, env: Record<string, string> = {}) {
    const sim = track(await startSimulator({ name: 'p' }));
    const gw = track(
      await startGateway(
        {
          server,
          providers: [
            simProvider('p', sim.url, ['gpt', EMB()], { api_key: 'sk-p' }),
            simProvider('q', sim.url, ['other'], { api_key: 'sk-q' }),
            simProvider('off', sim.url, ['ghost'], { api_key: '${OFF_KEY}' }),
          ],
          routes: {
            fast: { strategy: 'priority', targets: ['p/gpt', 'q/other'] },
            embed: { targets: ['p/emb'] },
          },
        },
        { env },
      ),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
    return { sim, gw, client };
  }

  it('lists every route and provider/model in OpenAI list shape; the SDK iterates it; retrieve gives each entry', async () => {
    const { sim, gw, client } = await modelsSetup({}, { OFF_KEY: 'sk-off' });
    const raw = await call(gw, 'GET', '/v1/models');
    expect(raw.status).toBe(200);
    expect(raw.headers['content-type']).toMatch(/^application\/json/);
    const body = raw.json as unknown as { object: string; data: Record<string, unknown>[] };
    expect(body.object).toBe('list');
    for (const m of body.data) {
      expect(Object.keys(m).sort()).toEqual(['created', 'id', 'object', 'owned_by']);
      expect(m.object).toBe('model');
      expect(Number.isInteger(m.created)).toBe(true);
      expect(typeof m.owned_by).toBe('string');
    }
    const ids = body.data.map((m) => m.id);
    for (const id of ['fast', 'embed', 'p/gpt', 'p/emb', 'q/other', 'off/ghost']) expect(ids).toContain(id);
    expect(new Set(ids).size).toBe(ids.length);

    const seen: string[] = [];
    for await (const m of client.models.list()) seen.push(m.id);
    expect(seen.sort()).toEqual([...ids].sort());
    for (const id of ids as string[]) {
      const one = await client.models.retrieve(id);
      expect(one.id, id).toBe(id);
      expect(one.object, id).toBe('model');
    }
    expect(sim.requests).toHaveLength(0);
  });

  it('a disabled provider (empty api_key) is not listed: its models cannot be served', async () => {
    const { gw } = await modelsSetup({}, { OFF_KEY: '' });
    const body = (await call(gw, 'GET', '/v1/models')).json as unknown as { data: { id: string }[] };
    const ids = body.data.map((m) => m.id);
    expect(ids).toContain('p/gpt');
    // Doubtful point: the spec says "provider/model names"; listing one that can only 404/502 misleads a client.
    expect(ids).not.toContain('off/ghost');
  });

  it('created is Unix seconds as OpenAI gives it, and HEAD /v1/models answers without a body', async () => {
    const { gw } = await modelsSetup();
    const body = (await call(gw, 'GET', '/v1/models')).json as unknown as { data: { created: number }[] };
    const nowS = Date.now() / 1000;
    for (const m of body.data) {
      expect(m.created).toBeGreaterThan(1_500_000_000);
      expect(m.created).toBeLessThanOrEqual(nowS + 5);
    }
    const head = await call(gw, 'HEAD', '/v1/models');
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
  });

  it('Ollama-style names (a colon, a dot) work as routes, provider/model, in retrieve and in embeddings', async () => {
    const sim = track(await startSimulator({ name: 'ol' }));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('ol', sim.url, [{ name: 'nomic-embed-text:latest', capabilities: ['embeddings'] }], {
            api_key: 'sk-ol',
          }),
        ],
        routes: { 'emb:v1.5': { targets: ['ol/nomic-embed-text:latest'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    for (const id of ['emb:v1.5', 'ol/nomic-embed-text:latest']) {
      expect((await client.models.retrieve(id)).id, id).toBe(id);
      const r = await client.embeddings.create({ model: id, input: 'x' }).withResponse();
      expect(r.response.status, id).toBe(200);
      expect((sim.requests.at(-1)!.body as Record<string, unknown>).model).toBe('nomic-embed-text:latest');
    }
  });

  it('unknown ids: 404 model_not_found, OpenAI-shaped, for odd ids too; never a 5xx', async () => {
    const { gw, client } = await modelsSetup();
    for (const id of ['gpt-4o', 'p/nope', 'nope/gpt', 'ünï cødé', 'a%2Fb', 'x'.repeat(300)]) {
      const err = (await client.models.retrieve(id).catch((e: unknown) => e)) as APIError;
      expect(err, id).toBeInstanceOf(NotFoundError);
      expect(err.code, id).toBe('model_not_found');
    }
    const r = await call(gw, 'GET', `/v1/models/${encodeURIComponent('ünï')}`);
    expect(r.status).toBe(404);
    expectOpenAIError(r.json, 'unicode');
  });

  it('needs a client key when server.api_keys is set, for the list and one model (401 authentication_error)', async () => {
    const { gw } = await modelsSetup({ api_keys: ['client-key'] });
    for (const path of ['/v1/models', '/v1/models/fast', '/v1/models/p/gpt']) {
      const anon = await call(gw, 'GET', path);
      expect(anon.status, path).toBe(401);
      expectOpenAIError(anon.json, path);
      expect(anon.json.error.type, path).toBe('authentication_error');
      const ok = await call(gw, 'GET', path, { headers: { authorization: 'Bearer client-key' } });
      expect(ok.status, path).toBe(200);
    }
  });

  it('with a passthrough the list is still the gateway’s own, and DELETE /v1/models/{id} (fine-tunes) goes to it', async () => {
    const pt = await upstream();
    const gw = track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [
          {
            name: 'pt',
            base_url: `${pt.url}/v1`,
            api_key: 'sk-pt',
            models: [{ name: 'gpt' }],
            timeouts: TIMEOUTS,
          },
        ],
        routes: { fast: { targets: ['pt/gpt'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids.sort()).toEqual(['fast', 'pt/gpt']);
    expect(pt.seen).toHaveLength(0);
    pt.next((_s, res) => sendJson(res, 200, { id: 'ft:gpt-4o:org:x', object: 'model', deleted: true }));
    const del = await client.models.delete('ft:gpt-4o:org:x');
    expect(del).toEqual({ id: 'ft:gpt-4o:org:x', object: 'model', deleted: true });
    expect(pt.seen[0]!.method).toBe('DELETE');
    expect(pt.seen[0]!.url).toBe('/v1/models/ft:gpt-4o:org:x');
  });
});

// ---------------------------------------------------------------------------------------------
// Passthrough

async function ptSetup(
  opts: { basePath?: string; server?: Record<string, unknown>; fallback?: Handler } = {},
) {
  const pt = await upstream(opts.fallback);
  const gw = track(
    await startGateway({
      server: { passthrough: 'pt', ...opts.server },
      providers: [
        {
          name: 'pt',
          base_url: `${pt.url}${opts.basePath ?? '/v1'}`,
          api_key: 'sk-pt-key',
          timeouts: TIMEOUTS,
          models: [{ name: 'gpt' }],
        },
      ],
      routes: { fast: { targets: ['pt/gpt'] } },
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  return { pt, gw, client };
}

function multipartFileOf(seen: Seen): { filename: string; content: Buffer; fields: Record<string, string> } {
  const ct = String(seen.headers['content-type']);
  const boundary = /boundary=(?:"([^"]+)"|([^;]+))/.exec(ct);
  expect(boundary, ct).not.toBeNull();
  const b = Buffer.from(`--${boundary![1] ?? boundary![2]}`);
  const parts: Buffer[] = [];
  let at = seen.body.indexOf(b);
  while (at >= 0) {
    const nextAt = seen.body.indexOf(b, at + b.length);
    if (nextAt < 0) break;
    parts.push(seen.body.subarray(at + b.length + 2, nextAt - 2));
    at = nextAt;
  }
  const fields: Record<string, string> = {};
  let filename = '';
  let content: Buffer = Buffer.alloc(0);
  for (const part of parts) {
    const split = part.indexOf('\r\n\r\n');
    const head = part.subarray(0, split).toString();
    const data = part.subarray(split + 4);
    const name = /name="([^"]*)"/.exec(head)?.[1] ?? '';
    const fn = /filename="([^"]*)"/.exec(head)?.[1];
    if (fn !== undefined) {
      filename = fn;
      content = data;
    } else fields[name] = data.toString();
  }
  return { filename, content, fields };
}

describe('audit: passthrough of other /v1/* paths', () => {
  it('files.create: a 3 MiB multipart upload reaches the provider byte for byte, and its answer comes back', async () => {
    const { pt, client } = await ptSetup({
      fallback: (s, res) =>
        sendJson(res, 200, {
          id: 'file-abc',
          object: 'file',
          bytes: s.body.length,
          created_at: 1,
          filename: 'data.jsonl',
          purpose: 'batch',
        }),
    });
    const data = randomBytes(3 * 1024 * 1024);
    const file = await client.files.create({ file: await toFile(data, 'data.jsonl'), purpose: 'batch' });
    expect(file.id).toBe('file-abc');
    const seen = pt.seen[0]!;
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/v1/files');
    expect(seen.headers.authorization).toBe('Bearer sk-pt-key');
    const part = multipartFileOf(seen);
    expect(part.filename).toBe('data.jsonl');
    expect(part.fields.purpose).toBe('batch');
    expect(part.content.equals(data)).toBe(true);
  });

  it('files.content: a binary download is byte-identical, with its content-type; files.retrieve and files.delete', async () => {
    const blob = randomBytes(1024 * 1024 + 17);
    const { pt, client } = await ptSetup({
      fallback: (s, res) => {
        if (s.method === 'GET' && s.url === '/v1/files/file-1/content') {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          res.end(blob);
        } else if (s.method === 'GET' && s.url === '/v1/files/file-1')
          sendJson(res, 200, { id: 'file-1', object: 'file', bytes: blob.length, purpose: 'batch' });
        else if (s.method === 'DELETE' && s.url === '/v1/files/file-1')
          sendJson(res, 200, { id: 'file-1', object: 'file', deleted: true });
        else
          sendJson(res, 404, {
            error: { message: 'no', type: 'invalid_request_error', param: null, code: null },
          });
      },
    });
    const content = await client.files.content('file-1');
    expect(content.headers.get('content-type')).toBe('application/octet-stream');
    expect(Buffer.from(await content.arrayBuffer()).equals(blob)).toBe(true);
    expect((await client.files.retrieve('file-1')).bytes).toBe(blob.length);
    expect(await client.files.delete('file-1')).toEqual({ id: 'file-1', object: 'file', deleted: true });
    expect(pt.seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'GET /v1/files/file-1/content',
      'GET /v1/files/file-1',
      'DELETE /v1/files/file-1',
    ]);
  });

  it('files.list cursor pagination and batches.list keep their query strings (after, limit) as sent', async () => {
    const files = Array.from({ length: 5 }, (_, i) => ({
      id: `file-${i}`,
      object: 'file',
      bytes: i,
      purpose: 'batch',
    }));
    const { pt, client } = await ptSetup({
      fallback: (s, res) => {
        const u = new URL(s.url, 'http://x');
        const limit = Number(u.searchParams.get('limit') ?? 100);
        const after = u.searchParams.get('after');
        const start = after === null ? 0 : files.findIndex((f) => f.id === after) + 1;
        const data = files.slice(start, start + limit);
        sendJson(res, 200, {
          object: 'list',
          data,
          first_id: data[0]?.id,
          last_id: data.at(-1)?.id,
          has_more: start + limit < files.length,
        });
      },
    });
    const ids: string[] = [];
    for await (const f of client.files.list({ limit: 2, purpose: 'batch' })) ids.push(f.id);
    expect(ids).toEqual(files.map((f) => f.id));
    expect(pt.seen.map((s) => s.url)).toEqual([
      '/v1/files?limit=2&purpose=batch',
      '/v1/files?limit=2&purpose=batch&after=file-1',
      '/v1/files?limit=2&purpose=batch&after=file-3',
    ]);
    await client.batches.list({ after: 'batch_9', limit: 3 });
    expect(pt.seen.at(-1)!.url).toBe('/v1/batches?after=batch_9&limit=3');
  });

  it('odd query strings and encoded or unicode path segments reach the provider exactly as sent', async () => {
    const { pt, gw } = await ptSetup();
    const paths = [
      '/v1/vector_stores/vs_1/files?filter=completed&order=desc&limit=2',
      '/v1/vector_stores/vs%2F1/files/file%20x',
      '/v1/vector_stores/vs_%C3%A9t%C3%A9/search',
      '/v1/containers/c1/files?include[]=a&include[]=b&q=a%20b+c',
      '/v1/responses/resp_1/input_items?after=&limit=',
    ];
    for (const p of paths) {
      const r = await call(gw, 'GET', p, { headers: { authorization: 'Bearer client-key' } });
      expect(r.status, p).toBe(200);
      expect(pt.seen.at(-1)!.url, p).toBe(p);
    }
  });

  it('the provider base_url path prefix is applied (/openai/v1 as Azure and gateways use)', async () => {
    const { pt, client } = await ptSetup({ basePath: '/openai/v1' });
    pt.next((_s, res) => sendJson(res, 200, { object: 'list', data: [], has_more: false }));
    await client.batches.list({ limit: 1 });
    expect(pt.seen[0]!.url).toBe('/openai/v1/batches?limit=1');
    pt.next((_s, res) => sendJson(res, 200, { data: [{ url: 'https://x/img.png' }], created: 1 }));
    const img = await client.images.generate({ model: 'gpt-image-1', prompt: 'a cat' });
    expect(img.data?.[0]?.url).toBe('https://x/img.png');
    expect(pt.seen[1]!.url).toBe('/openai/v1/images/generations');
    expect(JSON.parse(pt.seen[1]!.body.toString())).toEqual({ model: 'gpt-image-1', prompt: 'a cat' });
  });

  it('audio.speech: a binary stream is flushed to the client as it comes, not held until it ends', async () => {
    const g = gate(2500);
    const first = randomBytes(32 * 1024);
    const rest = randomBytes(64 * 1024);
    const { pt, client } = await ptSetup({
      fallback: async (_s, res) => {
        res.writeHead(200, { 'content-type': 'audio/mpeg', 'transfer-encoding': 'chunked' });
        res.write(first);
        await g.wait;
        res.end(rest);
      },
    });
    const speech = await client.audio.speech.create({ model: 'tts-1', voice: 'alloy', input: 'Hello there' });
    expect(speech.headers.get('content-type')).toBe('audio/mpeg');
    const reader = speech.body!.getReader();
    const got: Buffer[] = [];
    let n = 0;
    while (n < first.length) {
      const { value: v, done } = await reader.read();
      if (done) break;
      got.push(Buffer.from(v));
      n += v.length;
    }
    const openedBy = g.wait;
    g.open();
    for (;;) {
      const { value: v, done } = await reader.read();
      if (done) break;
      got.push(Buffer.from(v));
    }
    // Flushed: the client saw the first part before the provider was told to send the rest.
    expect(await openedBy).toBe('client');
    expect(Buffer.concat(got).equals(Buffer.concat([first, rest]))).toBe(true);
    expect(JSON.parse(pt.seen[0]!.body.toString())).toEqual({
      model: 'tts-1',
      voice: 'alloy',
      input: 'Hello there',
    });
  });

  it('audio.transcriptions: a multipart upload with fields is relayed and the answer parsed', async () => {
    const { pt, client } = await ptSetup({
      fallback: (_s, res) => sendJson(res, 200, { text: 'hello world' }),
    });
    const audio = randomBytes(200 * 1024);
    const t = await client.audio.transcriptions.create({
      file: await toFile(audio, 'speech.mp3', { type: 'audio/mpeg' }),
      model: 'whisper-1',
      language: 'en',
    });
    expect(t.text).toBe('hello world');
    const part = multipartFileOf(pt.seen[0]!);
    expect(pt.seen[0]!.url).toBe('/v1/audio/transcriptions');
    expect(part.filename).toBe('speech.mp3');
    expect(part.fields).toMatchObject({ model: 'whisper-1', language: 'en' });
    expect(part.content.equals(audio)).toBe(true);
  });

  it('responses.create: JSON, and a stream whose events arrive in order and each as it is sent', async () => {
    const g = gate(2500);
    const events = [
      { type: 'response.created', sequence_number: 0, response: { id: 'resp_1', status: 'in_progress' } },
      {
        type: 'response.output_text.delta',
        sequence_number: 1,
        item_id: 'm',
        output_index: 0,
        content_index: 0,
        delta: 'Hel',
      },
      {
        type: 'response.output_text.delta',
        sequence_number: 2,
        item_id: 'm',
        output_index: 0,
        content_index: 0,
        delta: 'lo',
      },
      { type: 'response.completed', sequence_number: 3, response: { id: 'resp_1', status: 'completed' } },
    ];
    const frame = (e: Record<string, unknown>) => `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
    const { pt, client } = await ptSetup({
      fallback: async (s, res) => {
        const body = JSON.parse(s.body.toString()) as Record<string, unknown>;
        if (body.stream !== true) {
          sendJson(res, 200, {
            id: 'resp_0',
            object: 'response',
            created_at: 1,
            status: 'completed',
            model: 'gpt-4o',
            output: [
              {
                type: 'message',
                id: 'm',
                status: 'completed',
                role: 'assistant',
                content: [{ type: 'output_text', text: 'Hi!', annotations: [] }],
              },
            ],
          });
          return;
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(frame(events[0]!) + frame(events[1]!));
        await g.wait;
        res.end(frame(events[2]!) + frame(events[3]!));
      },
    });
    const json = await client.responses.create({ model: 'gpt-4o', input: 'hi' });
    expect(json.id).toBe('resp_0');
    expect(json.output_text).toBe('Hi!');

    const stream = await client.responses.create({ model: 'gpt-4o', input: 'hi', stream: true });
    const types: string[] = [];
    let openedBy: Promise<'client' | 'bound'> | undefined;
    for await (const e of stream) {
      types.push(e.type);
      if (e.type === 'response.output_text.delta' && openedBy === undefined) {
        openedBy = g.wait;
        g.open();
      }
    }
    expect(types).toEqual(events.map((e) => e.type));
    expect(await openedBy).toBe('client');
    expect(pt.seen.map((s) => s.url)).toEqual(['/v1/responses', '/v1/responses']);
  });

  it('the request body is streamed to the provider as it arrives (not buffered whole first)', async () => {
    const g = gate(2500);
    let firstBytesAt: number | undefined;
    const pt = await upstream();
    const server = createServer((req, res) => {
      let n = 0;
      req.on('data', (c: Buffer) => {
        n += c.length;
        if (firstBytesAt === undefined) {
          firstBytesAt = n;
          g.open();
        }
      });
      req.on('end', () => sendJson(res, 200, { bytes: n }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    track(closeableServer(server));
    const port = (server.address() as AddressInfo).port;
    void pt;
    const gw = track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [
          {
            name: 'pt',
            base_url: `http://127.0.0.1:${port}/v1`,
            api_key: 'k',
            timeouts: TIMEOUTS,
            models: [{ name: 'g' }],
          },
        ],
        routes: { fast: { targets: ['pt/g'] } },
      }),
    );
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    async function* body() {
      yield chunk;
      // The rest only once the provider has seen the first part (or after the gate's bound).
      await g.wait;
      yield chunk;
    }
    const res = await request(`${gw.url}/v1/uploads/upl_1/parts`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: Readable.from(body()),
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ bytes: 2 * chunk.length });
    expect(await g.wait).toBe('client');
  });

  it('upstream status codes, bodies and informative headers (request id, organization, rate limits) are relayed', async () => {
    const { pt, gw, client } = await ptSetup();
    pt.next((_s, res) =>
      sendJson(
        res,
        201,
        { id: 'vs_1', object: 'vector_store' },
        {
          'x-request-id': 'req_upstream_1',
          'openai-organization': 'org-xyz',
          'openai-processing-ms': '42',
          'x-ratelimit-remaining-requests': '99',
          'x-ratelimit-reset-requests': '1s',
        },
      ),
    );
    const created = await call(gw, 'POST', '/v1/vector_stores', { body: { name: 'x' } });
    expect(created.status).toBe(201);
    expect(created.json).toEqual({ id: 'vs_1', object: 'vector_store' });
    expect(created.headers['openai-organization']).toBe('org-xyz');
    expect(created.headers['openai-processing-ms']).toBe('42');
    expect(created.headers['x-ratelimit-remaining-requests']).toBe('99');
    expect(created.headers['x-ratelimit-reset-requests']).toBe('1s');
    // The SDK's `_request_id` is the provider's x-request-id: a client quoting it to OpenAI support needs theirs.
    expect(created.headers['x-request-id']).toBe('req_upstream_1');

    for (const [status, Cls] of [
      [404, NotFoundError],
      [401, OpenAI.AuthenticationError],
      [429, OpenAI.RateLimitError],
      [500, OpenAI.InternalServerError],
    ] as const) {
      const message = `upstream says ${status}`;
      pt.next((_s, res) =>
        sendJson(
          res,
          status,
          { error: { message, type: 'invalid_request_error', param: 'batch_id', code: `code_${status}` } },
          status === 429 ? { 'retry-after': '7' } : {},
        ),
      );
      const err = (await client.batches.retrieve('batch_x').catch((e: unknown) => e)) as APIError;
      expect(err, String(status)).toBeInstanceOf(Cls);
      expect(err.status).toBe(status);
      expect(err.message).toContain(message);
      expect(err.code).toBe(`code_${status}`);
      expect(err.param).toBe('batch_id');
      if (status === 429) expect(err.headers?.get('retry-after')).toBe('7');
    }
  });

  it('HEAD and OPTIONS are relayed with their own method, HEAD without a body', async () => {
    const { pt, gw } = await ptSetup({
      fallback: (s, res) => {
        if (s.method === 'OPTIONS') {
          res.writeHead(204, { allow: 'GET, POST, OPTIONS' });
          res.end();
          return;
        }
        sendJson(res, 200, { data: [] }, { 'x-total': '0' });
      },
    });
    const head = await call(gw, 'HEAD', '/v1/files');
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
    expect(head.headers['x-total']).toBe('0');
    const opt = await call(gw, 'OPTIONS', '/v1/files');
    expect(opt.status).toBe(204);
    expect(opt.headers.allow).toBe('GET, POST, OPTIONS');
    expect(pt.seen.map((s) => s.method)).toEqual(['HEAD', 'OPTIONS']);
  });

  it('stored chat completions (GET /v1/chat/completions, /{id}, /{id}/messages; DELETE) go to the passthrough', async () => {
    const { pt, client } = await ptSetup({
      fallback: (s, res) => {
        if (s.method === 'DELETE')
          return sendJson(res, 200, { id: 'cc_1', object: 'chat.completion.deleted', deleted: true });
        if (s.url.startsWith('/v1/chat/completions/cc_1/messages'))
          return sendJson(res, 200, {
            object: 'list',
            data: [],
            has_more: false,
            first_id: null,
            last_id: null,
          });
        if (s.url.startsWith('/v1/chat/completions/cc_1'))
          return sendJson(res, 200, {
            id: 'cc_1',
            object: 'chat.completion',
            created: 1,
            model: 'gpt',
            choices: [],
          });
        sendJson(res, 200, { object: 'list', data: [], has_more: false, first_id: null, last_id: null });
      },
    });
    await client.chat.completions.list({ limit: 2 });
    expect((await client.chat.completions.retrieve('cc_1')).id).toBe('cc_1');
    await client.chat.completions.messages.list('cc_1');
    await client.chat.completions.delete('cc_1');
    expect(pt.seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'GET /v1/chat/completions?limit=2',
      'GET /v1/chat/completions/cc_1',
      'GET /v1/chat/completions/cc_1/messages',
      'DELETE /v1/chat/completions/cc_1',
    ]);
  });

  it('a non-JSON, non-multipart body (octet-stream, text) is proxied, not refused with 415', async () => {
    const { pt, gw } = await ptSetup();
    const bytes = randomBytes(4096);
    const res = await request(`${gw.url}/v1/uploads/upl_1/parts`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: bytes,
    });
    expect(res.statusCode).toBe(200);
    await res.body.text();
    expect(pt.seen[0]!.body.equals(bytes)).toBe(true);
    const txt = await call(gw, 'POST', '/v1/files', {
      body: 'plain text body',
      headers: { 'content-type': 'text/plain' },
    });
    expect(txt.status).toBe(200);
    expect(pt.seen[1]!.body.toString()).toBe('plain text body');
  });

  it('a gzip answer is relayed so the SDK decodes it; a JSON answer keeps its charset', async () => {
    const { gzipSync } = await import('node:zlib');
    const payload = { object: 'list', data: [{ id: 'batch_1', object: 'batch' }], has_more: false };
    const { client } = await ptSetup({
      fallback: (_s, res) => {
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-encoding': 'gzip' });
        res.end(gzipSync(JSON.stringify(payload)));
      },
    });
    const page = await client.batches.list();
    expect(page.data.map((b) => b.id)).toEqual(['batch_1']);
  });

  it('bodiless POSTs (batches.cancel, responses.cancel) and an empty JSON body are proxied, not refused', async () => {
    const { pt, gw, client } = await ptSetup({
      fallback: (s, res) =>
        sendJson(res, 200, { id: s.url.split('/')[3], object: 'batch', status: 'cancelling' }),
    });
    const b = await client.batches.cancel('batch_1');
    expect(b.status).toBe('cancelling');
    await client.responses.cancel('resp_1');
    // curl -X POST -H 'content-type: application/json' with no body, as many scripts do.
    const empty = await call(gw, 'POST', '/v1/fine_tuning/jobs/ftjob-1/cancel', {
      headers: { 'content-type': 'application/json' },
    });
    expect(empty.status).toBe(200);
    expect(pt.seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'POST /v1/batches/batch_1/cancel',
      'POST /v1/responses/resp_1/cancel',
      'POST /v1/fine_tuning/jobs/ftjob-1/cancel',
    ]);
  });

  it('a JSON body is relayed byte for byte: formatting, key order, duplicate keys and big integers kept', async () => {
    const { pt, gw } = await ptSetup();
    const text =
      '{ "model":"gpt-4o",\n  "seed": 12345678901234567890, "input":"a", "input":"b", "x": 1.0e2 }';
    const r = await call(gw, 'POST', '/v1/responses', { body: text });
    expect(r.status).toBe(200);
    expect(pt.seen[0]!.body.toString()).toBe(text);
    // Malformed JSON is the provider's to refuse, as it would be without the gateway.
    pt.next((_s, res) =>
      sendJson(res, 400, {
        error: {
          message: 'We could not parse the JSON body of your request.',
          type: 'invalid_request_error',
          param: null,
          code: null,
        },
      }),
    );
    const bad = await call(gw, 'POST', '/v1/responses', { body: '{"model": "gpt-4o", ' });
    expect(bad.status).toBe(400);
    expect(bad.json.error.message).toBe('We could not parse the JSON body of your request.');
    expect(pt.seen[1]!.body.toString()).toBe('{"model": "gpt-4o", ');
  });

  it('a download the provider cuts short is not handed to the client as complete', async () => {
    const { gw } = await ptSetup({
      fallback: (_s, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '100000' });
        res.write(Buffer.alloc(40000, 1));
        setTimeout(() => res.destroy(), 50);
      },
    });
    const res = await request(`${gw.url}/v1/files/file-1/content`);
    expect(res.statusCode).toBe(200);
    let n = 0;
    const outcome = await (async () => {
      try {
        for await (const c of res.body) n += (c as Buffer).length;
        return 'complete';
      } catch {
        return 'error';
      }
    })();
    // A client must be able to tell a cut body from a whole one (§4 streaming bodies; §2's "tell a cut stream").
    expect({ outcome, short: n < 100000 }).toEqual({ outcome: 'error', short: true });
  });

  it('a chunked stream the provider cuts short ends in an error for the client, not a clean end', async () => {
    const { gw } = await ptSetup({
      fallback: (_s, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n');
        setTimeout(() => res.destroy(), 50);
      },
    });
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', input: 'hi', stream: true }),
    });
    const outcome = await (async () => {
      try {
        await res.body.text();
        return 'complete';
      } catch {
        return 'error';
      }
    })();
    expect(outcome).toBe('error');
  });

  it('beta headers (OpenAI-Beta) and the SDK’s own headers reach the provider; an upstream 204 is relayed empty', async () => {
    const { pt, client } = await ptSetup({
      fallback: (s, res) => {
        if (s.method === 'DELETE') {
          res.writeHead(204);
          res.end();
          return;
        }
        sendJson(res, 200, { object: 'list', data: [], first_id: null, last_id: null, has_more: false });
      },
    });
    await client.beta.assistants.list();
    expect(pt.seen[0]!.url).toBe('/v1/assistants');
    expect(pt.seen[0]!.headers['openai-beta']).toBe('assistants=v2');
    expect(pt.seen[0]!.headers['x-stainless-lang']).toBe('js');
    const raw = await client.delete('/containers/c1/files/f1', { __binaryResponse: true }).asResponse();
    expect(raw.status).toBe(204);
    expect(await raw.text()).toBe('');
  });

  it('30 concurrent passthrough requests each get their own answer', async () => {
    const { gw } = await ptSetup({
      fallback: (s, res) => {
        setTimeout(() => sendJson(res, 200, { url: s.url, body: s.body.toString() }), 5);
      },
    });
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        call(
          gw,
          i % 2 === 0 ? 'GET' : 'POST',
          `/v1/batches/b${i}?n=${i}`,
          i % 2 === 0 ? {} : { body: { i } },
        ),
      ),
    );
    results.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(r.json).toEqual({
        url: `/v1/batches/b${i}?n=${i}`,
        body: i % 2 === 0 ? '' : JSON.stringify({ i }),
      });
    });
  });

  it('chat.completions.update (POST /v1/chat/completions/{id}) goes to the passthrough, not to routing', async () => {
    const { pt, client } = await ptSetup({
      fallback: (_s, res) =>
        sendJson(res, 200, { id: 'cc_1', object: 'chat.completion', created: 1, model: 'gpt', choices: [] }),
    });
    const updated = await client.chat.completions.update('cc_1', { metadata: { k: 'v' } });
    expect(updated.id).toBe('cc_1');
    expect(`${pt.seen[0]!.method} ${pt.seen[0]!.url}`).toBe('POST /v1/chat/completions/cc_1');
    expect(JSON.parse(pt.seen[0]!.body.toString())).toEqual({ metadata: { k: 'v' } });
  });

  it('the AI SDK’s default openai(model) (the Responses API) works through the passthrough, text and stream', async () => {
    const response = {
      id: 'resp_9',
      object: 'response',
      created_at: 1_700_000_000,
      status: 'completed',
      model: 'gpt-4o',
      output: [
        {
          type: 'message',
          id: 'msg_1',
          status: 'completed',
          role: 'assistant',
          content: [{ type: 'output_text', text: 'Hello there', annotations: [] }],
        },
      ],
      incomplete_details: null,
      usage: { input_tokens: 3, output_tokens: 2, total_tokens: 5 },
    };
    const frame = (e: Record<string, unknown>) => `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
    const { pt, gw } = await ptSetup({
      fallback: (s, res) => {
        const body = JSON.parse(s.body.toString()) as Record<string, unknown>;
        if (body.stream !== true) return sendJson(res, 200, response);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          [
            frame({
              type: 'response.created',
              sequence_number: 0,
              response: { ...response, status: 'in_progress', output: [] },
            }),
            frame({
              type: 'response.output_item.added',
              sequence_number: 1,
              output_index: 0,
              item: { type: 'message', id: 'msg_1', status: 'in_progress', role: 'assistant', content: [] },
            }),
            frame({
              type: 'response.output_text.delta',
              sequence_number: 2,
              item_id: 'msg_1',
              output_index: 0,
              content_index: 0,
              delta: 'Hello',
              logprobs: [],
            }),
            frame({
              type: 'response.output_text.delta',
              sequence_number: 3,
              item_id: 'msg_1',
              output_index: 0,
              content_index: 0,
              delta: ' there',
              logprobs: [],
            }),
            frame({
              type: 'response.output_item.done',
              sequence_number: 4,
              output_index: 0,
              item: response.output[0],
            }),
            frame({ type: 'response.completed', sequence_number: 5, response }),
          ].join(''),
        );
      },
    });
    const p = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' });
    const { generateText, streamText } = await import('ai');
    const out = await generateText({ model: p('gpt-4o'), prompt: 'hi', maxRetries: 0 });
    expect(out.text).toBe('Hello there');
    const st = streamText({ model: p('gpt-4o'), prompt: 'hi', maxRetries: 0 });
    let text = '';
    for await (const t of st.textStream) text += t;
    expect(text).toBe('Hello there');
    expect(pt.seen.map((s) => `${s.method} ${s.url}`)).toEqual(['POST /v1/responses', 'POST /v1/responses']);
  });

  it('a trailing slash, a double slash and an HTML 5xx from a front end reach the client as the provider gave them', async () => {
    const { pt, gw } = await ptSetup({
      fallback: (s, res) => {
        if (s.url === '/v1/broken') {
          res.writeHead(503, { 'content-type': 'text/html', 'retry-after': '3' });
          res.end('<html><body>503 Service Temporarily Unavailable</body></html>');
          return;
        }
        sendJson(res, 200, { url: s.url });
      },
    });
    for (const p of ['/v1/files/', '/v1/vector_stores/vs_1/files/']) {
      const r = await call(gw, 'GET', p);
      expect(r.status, p).toBe(200);
      expect(pt.seen.at(-1)!.url, p).toBe(p);
    }
    const r = await call(gw, 'GET', '/v1/broken');
    expect(r.status).toBe(503);
    expect(r.headers['retry-after']).toBe('3');
    expect(r.text).toContain('503 Service Temporarily Unavailable');
  });

  it('a client leaving a Responses stream midway gets the provider request aborted at once', async () => {
    let upstreamClosed: (() => void) | undefined;
    const closed = new Promise<void>((r) => (upstreamClosed = r));
    const { gw } = await ptSetup({
      fallback: (_s, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        let n = 0;
        const t = setInterval(
          () => res.write(`data: {"type":"response.output_text.delta","delta":"${n++}"}\n\n`),
          50,
        );
        res.on('close', () => {
          clearInterval(t);
          upstreamClosed?.();
        });
      },
    });
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', input: 'hi', stream: true }),
      signal: ac.signal,
    });
    expect(res.statusCode).toBe(200);
    for await (const _c of res.body) break;
    ac.abort();
    const outcome = await Promise.race([
      closed.then(() => 'aborted'),
      new Promise((r) => setTimeout(() => r('still open'), 2000)),
    ]);
    expect(outcome).toBe('aborted');
  });

  it('the provider’s configured extra headers (providers[].headers) go with passthrough requests as with routed ones', async () => {
    const pt = await upstream((s, res) => {
      if (s.url === '/v1/embeddings')
        return sendJson(res, 200, {
          object: 'list',
          data: [{ object: 'embedding', index: 0, embedding: [1] }],
          model: 'emb',
          usage: { prompt_tokens: 1, total_tokens: 1 },
        });
      sendJson(res, 200, { object: 'list', data: [], has_more: false });
    });
    const gw = track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [
          {
            name: 'pt',
            base_url: `${pt.url}/v1`,
            api_key: 'sk-pt-key',
            timeouts: TIMEOUTS,
            headers: { 'openai-organization': 'org-gw', 'openai-project': 'proj_gw' },
            models: [EMB()],
          },
        ],
        routes: { embed: { targets: ['pt/emb'] } },
      }),
    );
    const emb = await call(gw, 'POST', '/v1/embeddings', {
      body: { model: 'embed', input: 'x', encoding_format: 'float' },
    });
    expect(emb.status).toBe(200);
    expect(pt.seen[0]!.headers['openai-organization']).toBe('org-gw');
    expect(pt.seen[0]!.headers['openai-project']).toBe('proj_gw');
    const files = await call(gw, 'GET', '/v1/files');
    expect(files.status).toBe(200);
    // README: providers[].headers are "extra headers sent upstream"; the passthrough is that provider, with its key.
    expect(pt.seen[1]!.headers['openai-organization']).toBe('org-gw');
    expect(pt.seen[1]!.headers['openai-project']).toBe('proj_gw');
  });

  it("a client's own OpenAI organization and project stay behind: they go with its key, not the provider's", async () => {
    const { pt, gw } = await ptSetup({ fallback: (_s, res) => sendJson(res, 200, { data: [] }) });
    const r = await call(gw, 'GET', '/v1/files', {
      headers: { 'openai-organization': 'org-client', 'openai-project': 'proj_client' },
    });
    expect(r.status).toBe(200);
    expect(pt.seen[0]!.headers['openai-organization']).toBeUndefined();
    expect(pt.seen[0]!.headers['openai-project']).toBeUndefined();
  });

  it('an upload that takes longer than first_byte_ms to arrive is not cut: the wait for the answer starts after it', async () => {
    const { pt, gw } = await ptSetup({ fallback: (s, res) => sendJson(res, 200, { bytes: s.body.length }) });
    // first_byte_ms is 800 here; the client sends its body over ~1.4 s (well within request_timeout_ms).
    async function* slowBody() {
      for (let i = 0; i < 7; i++) {
        yield Buffer.alloc(16 * 1024, 0x62);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const res = await request(`${gw.url}/v1/uploads/upl_1/parts`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: Readable.from(slowBody()),
    });
    const text = await res.body.text();
    expect(res.statusCode, text).toBe(200);
    expect(JSON.parse(text)).toEqual({ bytes: 7 * 16 * 1024 });
    expect(pt.seen).toHaveLength(1);
  });

  it('without server.passthrough other /v1/* paths are a 404 OpenAI-shaped for every method', async () => {
    const sim = track(await startSimulator({ name: 's' }));
    const gw = track(
      await startGateway({
        providers: [simProvider('s', sim.url, ['m'], { api_key: 'sk-s' })],
        routes: { r: { targets: ['s/m'] } },
      }),
    );
    for (const [method, path] of [
      ['GET', '/v1/files'],
      ['POST', '/v1/responses'],
      ['DELETE', '/v1/files/file-1'],
      ['GET', '/v1/chat/completions'],
    ] as const) {
      const r = await call(gw, method, path, method === 'POST' ? { body: { model: 'r', input: 'x' } } : {});
      expect(r.status, `${method} ${path}`).toBe(404);
      expectOpenAIError(r.json, `${method} ${path}`);
    }
    expect(sim.requests).toHaveLength(0);
  });
});
