/**
 * Audit of what an operator reads: the per-request log line, warnings, /metrics values, /router/status,
 * /router/explain and the x-router-* headers. Each figure is checked against what the mock upstreams
 * actually did (usage they reported, time they waited, how often they were called), not only for presence.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { buildApp } from '../../src/app.js';
import { parseConfigText } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { startSimulator, type SimOptions } from '../../src/sim/index.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { routerStatus } from '../helpers/resilience-harness.js';
import { postJson, type Candidate } from '../helpers/router-api.js';
import { retryUntil } from '../helpers/wait.js';
import { chunkFrame, sendJson } from '../helpers/mock-upstream.js';
import { scrape, select, value, type Sample } from '../helpers/prom-text.js';
import { manualClock } from '../helpers/random.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

/** A hand-written upstream: `answer(body, n, req, res)` for the n-th request (0-based); counts calls. */
interface Mock {
  url: string;
  calls: number;
  bodies: Json[];
  paths: string[];
  close(): Promise<void>;
}

async function mock(answer: (body: Json, n: number, res: ServerResponse, req: IncomingMessage) => void) {
  const m: Mock = { url: '', calls: 0, bodies: [], paths: [], close: async () => undefined };
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      let body: Json = {};
      try {
        body = JSON.parse(text) as Json;
      } catch {
        /* not JSON */
      }
      m.calls++;
      m.bodies.push(body);
      m.paths.push(req.url ?? '');
      answer(body, m.calls - 1, res, req);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  m.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const c = closeableServer(server);
  m.close = async () => void (await c.close());
  return track(m);
}

function completion(body: Json, usage: Json | null, text = 'hello there'): Json {
  return {
    id: 'chatcmpl-x',
    object: 'chat.completion',
    created: 1,
    model: String(body.model),
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    ...(usage ? { usage } : {}),
  };
}

/** An SSE answer: role chunk at once, then content chunks after `firstMs` and `gapMs` apart, then finish (+usage). */
function paced(
  res: ServerResponse,
  body: Json,
  o: { firstMs: number; gapMs: number; pieces: string[]; usage?: Json },
): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const m = body.model;
  res.write(chunkFrame(m, { role: 'assistant', content: '' }));
  let i = 0;
  const next = (): void => {
    if (res.destroyed) return;
    if (i < o.pieces.length) {
      res.write(chunkFrame(m, { content: o.pieces[i++] }));
      setTimeout(next, o.gapMs);
      return;
    }
    const so = body.stream_options as Json | undefined;
    const usage =
      o.usage && so?.include_usage === true
        ? `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: String(m), choices: [], usage: o.usage })}\n\n`
        : '';
    res.end(`${chunkFrame(m, {}, 'stop')}${usage}data: [DONE]\n\n`);
  };
  setTimeout(next, o.firstMs);
}

function prov(name: string, url: string, model: Json = {}, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 2000, total_ms: 5000 },
    models: [{ name: 'm', ...model }],
    ...extra,
  };
}

async function gateway(config: Json, opts: Parameters<typeof startGateway>[1] = {}): Promise<TestGateway> {
  return track(await startGateway(config, opts));
}

/** A POST to the gateway (undici, no key unless in `headers`). */
const call = (gw: { url: string }, body: Json, headers: Record<string, string> = {}, path?: string) =>
  postJson(gw, body, headers, path);

const HI = [{ role: 'user', content: 'hello' }];

const status = (gw: { url: string }) => routerStatus(gw.url);

async function explain(gw: { url: string }, body: Json, headers: Record<string, string> = {}) {
  const r = await call(gw, body, headers, '/router/explain');
  expect(r.status, r.text).toBe(200);
  return r.json as Json & { candidates: Candidate[]; strategy: string; features: Json };
}

function requestLines(gw: TestGateway, reqId?: string): Json[] {
  return gw.logs.filter(
    (l) =>
      l.msg === 'request' &&
      (l.path === undefined || String(l.path).startsWith('/v1/')) &&
      (reqId === undefined || l.reqId === reqId),
  );
}

const until = <T>(check: () => T | Promise<T>, ms = 3000): Promise<T> => retryUntil(check, ms, 10);

const hsum = (s: Sample[], name: string, labels: Record<string, string>) => value(s, `${name}_sum`, labels);
const hcount = (s: Sample[], name: string, labels: Record<string, string>) =>
  value(s, `${name}_count`, labels);

/* ------------------------------------------------------------------------------------------------ */

describe('cost and tokens are what the upstream reported, priced per million', () => {
  const PRICE = { input_per_mtok: 2.5, output_per_mtok: 10 };

  it('JSON: tokens_total and cost_usd_total equal usage x price; the log line agrees', async () => {
    const up = await mock((body, _n, res) =>
      sendJson(
        res,
        200,
        completion(body, { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 }),
      ),
    );
    const gw = await gateway({
      providers: [prov('a', up.url, { price: PRICE })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'cost-json' });
    expect(r.status).toBe(200);
    const s = await scrape(gw.url);
    const want = (1000 * 2.5 + 500 * 10) / 1e6;
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'prompt' })).toBe(1000);
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' })).toBe(500);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'm' })).toBeCloseTo(want, 12);
    // README: time_per_output_token_seconds is for streams; a JSON answer's tokens all arrive at once.
    expect(hcount(s, 'llm_router_time_per_output_token_seconds', { provider: 'a', model: 'm' }) ?? 0).toBe(0);
    const line = requestLines(gw, 'cost-json')[0]!;
    expect(line).toMatchObject({ promptTokens: 1000, completionTokens: 500 });
    expect(line.costUsd as number).toBeCloseTo(want, 12);
  });

  it('stream with include_usage: the usage the upstream reported is counted, not the chunk count', async () => {
    const up = await mock((body, _n, res) =>
      paced(res, body, {
        firstMs: 0,
        gapMs: 0,
        pieces: ['a', 'b', 'c'],
        usage: { prompt_tokens: 1234, completion_tokens: 56, total_tokens: 1290 },
      }),
    );
    const gw = await gateway({
      providers: [prov('a', up.url, { price: PRICE })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await call(
      gw,
      { model: 'r', messages: HI, stream: true, stream_options: { include_usage: true } },
      { 'x-request-id': 'cost-stream' },
    );
    expect(r.status).toBe(200);
    expect(r.text).toContain('"completion_tokens":56'); // the client asked for usage and gets it
    const s = await scrape(gw.url);
    const want = (1234 * 2.5 + 56 * 10) / 1e6;
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'prompt' })).toBe(1234);
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' })).toBe(56);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'm' })).toBeCloseTo(want, 12);
    const line = requestLines(gw, 'cost-stream')[0]!;
    expect(line).toMatchObject({ promptTokens: 1234, completionTokens: 56, stream: true });
    expect(line.costUsd as number).toBeCloseTo(want, 12);
  });

  it('stream without include_usage: tokens are still counted (estimated), cost = tokens x price, no usage chunk leaks to the client', async () => {
    const up = await mock((body, _n, res) =>
      paced(res, body, {
        firstMs: 0,
        gapMs: 0,
        pieces: ['one ', 'two ', 'three ', 'four'],
        usage: { prompt_tokens: 77, completion_tokens: 4, total_tokens: 81 },
      }),
    );
    const gw = await gateway({
      providers: [prov('a', up.url, { price: PRICE })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await call(gw, { model: 'r', messages: HI, stream: true }, { 'x-request-id': 'est' });
    expect(r.status).toBe(200);
    // The client did not ask for usage: whatever the gateway asked upstream, no usage chunk reaches it.
    expect(r.text).not.toMatch(/"usage":\{/);
    const s = await scrape(gw.url);
    const p = value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'prompt' })!;
    const c = value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' })!;
    expect(p).toBeGreaterThan(0);
    expect(c).toBeGreaterThanOrEqual(4);
    expect(c).toBeLessThanOrEqual(12);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'm' })).toBeCloseTo(
      (p * 2.5 + c * 10) / 1e6,
      12,
    );
    const line = requestLines(gw, 'est')[0]!;
    expect(line).toMatchObject({ promptTokens: p, completionTokens: c });
  });

  /** Input, cache writes at 1.25x, cache reads at 0.1x (as Anthropic bills them: README `price`), output. */
  const ANTHROPIC_CACHED_COST = (100 * 1 + 200 * 1.25 + 300 * 0.1 + 50 * 5) / 1e6;

  it('Anthropic upstream with cache tokens: prompt tokens count every input token the client is told of; cost follows', async () => {
    const usage = {
      input_tokens: 100,
      cache_creation_input_tokens: 200,
      cache_read_input_tokens: 300,
      output_tokens: 50,
    };
    const up = await mock((body, _n, res) =>
      sendJson(res, 200, {
        id: 'msg_1',
        type: 'message',
        role: 'assistant',
        model: String(body.model),
        content: [{ type: 'text', text: 'hi' }],
        stop_reason: 'end_turn',
        stop_sequence: null,
        usage,
      }),
    );
    const gw = await gateway({
      providers: [
        {
          name: 'ant',
          kind: 'anthropic',
          base_url: up.url,
          api_key: 'sk-ant-test',
          models: [{ name: 'claude-haiku-4-5', price: { input_per_mtok: 1, output_per_mtok: 5 } }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['ant/claude-haiku-4-5'] } },
    });
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'ant' });
    expect(r.status, r.text).toBe(200);
    const told = (r.json.usage as Json).prompt_tokens as number;
    expect(told).toBe(600);
    const s = await scrape(gw.url);
    const labels = { provider: 'ant', model: 'claude-haiku-4-5' };
    expect(value(s, 'llm_router_tokens_total', { ...labels, kind: 'prompt' })).toBe(told);
    expect(value(s, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(50);
    expect(value(s, 'llm_router_cost_usd_total', labels)).toBeCloseTo(ANTHROPIC_CACHED_COST, 12);
    expect(requestLines(gw, 'ant')[0]).toMatchObject({ promptTokens: 600, completionTokens: 50 });
  });

  it('Anthropic stream with cache tokens: tokens_total and cost match the usage the client is told of', async () => {
    const ev = (type: string, data: Json) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
    const up = await mock((body, _n, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        ev('message_start', {
          message: {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            model: String(body.model),
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: {
              input_tokens: 100,
              cache_creation_input_tokens: 200,
              cache_read_input_tokens: 300,
              output_tokens: 1,
            },
          },
        }) +
          ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }) +
          ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'hi' } }) +
          ev('content_block_stop', { index: 0 }) +
          ev('message_delta', {
            delta: { stop_reason: 'end_turn', stop_sequence: null },
            usage: { output_tokens: 50 },
          }) +
          ev('message_stop', {}),
      );
    });
    const gw = await gateway({
      providers: [
        {
          name: 'ant',
          kind: 'anthropic',
          base_url: up.url,
          api_key: 'sk-ant-test',
          models: [{ name: 'claude-haiku-4-5', price: { input_per_mtok: 1, output_per_mtok: 5 } }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['ant/claude-haiku-4-5'] } },
    });
    const r = await call(
      gw,
      { model: 'r', messages: HI, stream: true, stream_options: { include_usage: true } },
      { 'x-request-id': 'ant-s' },
    );
    expect(r.status, r.text).toBe(200);
    expect(r.text).toContain('"prompt_tokens":600');
    const s = await scrape(gw.url);
    const labels = { provider: 'ant', model: 'claude-haiku-4-5' };
    expect(value(s, 'llm_router_tokens_total', { ...labels, kind: 'prompt' })).toBe(600);
    expect(value(s, 'llm_router_tokens_total', { ...labels, kind: 'completion' })).toBe(50);
    expect(value(s, 'llm_router_cost_usd_total', labels)).toBeCloseTo(ANTHROPIC_CACHED_COST, 12);
    expect(requestLines(gw, 'ant-s')[0]).toMatchObject({ promptTokens: 600, completionTokens: 50 });
  });

  it('embeddings: prompt tokens from the usage, priced at the input price', async () => {
    const up = await mock((_body, _n, res) =>
      sendJson(res, 200, {
        object: 'list',
        data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
        model: 'e',
        usage: { prompt_tokens: 40, total_tokens: 40 },
      }),
    );
    const gw = await gateway({
      providers: [
        prov('a', up.url, {
          name: 'e',
          capabilities: ['embeddings'],
          price: { input_per_mtok: 0.5, output_per_mtok: 0 },
        }),
      ],
      routes: { vec: { strategy: 'priority', targets: ['a/e'] } },
    });
    const r = await call(
      gw,
      { model: 'vec', input: 'some text' },
      { 'x-request-id': 'emb' },
      '/v1/embeddings',
    );
    expect(r.status, r.text).toBe(200);
    const s = await scrape(gw.url);
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'e', kind: 'prompt' })).toBe(40);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'e' })).toBeCloseTo(
      (40 * 0.5) / 1e6,
      12,
    );
    const line = requestLines(gw, 'emb')[0]!;
    expect(line).toBeDefined();
    expect(line.promptTokens).toBe(40);
    expect(line.costUsd as number).toBeCloseTo((40 * 0.5) / 1e6, 12);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('latency figures match what the upstream did', () => {
  it('stream: TTFT is the first content (not the preamble), TPOT = (total - TTFT) / tokens, overhead small', async () => {
    // Role chunk at once, first content after 200 ms, 4 more 50 ms apart: TTFT ~200, total ~400, TPOT ~40 ms.
    const up = await mock((body, _n, res) =>
      paced(res, body, {
        firstMs: 200,
        gapMs: 50,
        pieces: ['a', 'b', 'c', 'd', 'e'],
        usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 },
      }),
    );
    const gw = await gateway({
      providers: [prov('a', up.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await call(
      gw,
      { model: 'r', messages: HI, stream: true, stream_options: { include_usage: true } },
      { 'x-request-id': 'lat' },
    );
    expect(r.status).toBe(200);
    const line = requestLines(gw, 'lat')[0]!;
    const ttft = line.ttftMs as number;
    const total = line.latencyMs as number;
    expect(ttft).toBeGreaterThanOrEqual(150);
    expect(ttft).toBeLessThan(600);
    expect(total).toBeGreaterThanOrEqual(350);
    expect(total).toBeLessThan(1200);
    const s = await scrape(gw.url);
    const up1 = { provider: 'a', model: 'm' };
    expect(hcount(s, 'llm_router_time_to_first_token_seconds', up1)).toBe(1);
    expect(hsum(s, 'llm_router_time_to_first_token_seconds', up1)! * 1000).toBeCloseTo(ttft, -1);
    expect(hcount(s, 'llm_router_time_per_output_token_seconds', up1)).toBe(1);
    const tpot = hsum(s, 'llm_router_time_per_output_token_seconds', up1)! * 1000;
    expect(Math.abs(tpot - (total - ttft) / 5)).toBeLessThan(10);
    expect(tpot).toBeGreaterThan(20);
    expect(tpot).toBeLessThan(120);
    const dur = hsum(s, 'llm_router_request_duration_seconds', {
      route: 'r',
      provider: 'a',
      model: 'm',
      stream: 'true',
    })!;
    expect(Math.abs(dur * 1000 - total)).toBeLessThan(30);
    const over = hsum(s, 'llm_router_overhead_seconds', { route: 'r' })!;
    expect(hcount(s, 'llm_router_overhead_seconds', { route: 'r' })).toBe(1);
    expect(over).toBeGreaterThanOrEqual(0);
    expect(over).toBeLessThan(0.1);
    // /router/status's EWMA TTFT is this one sample.
    const st = (await status(gw)).get('a/m')!;
    expect(st.stats.ttftMs as number).toBeGreaterThanOrEqual(150);
    expect(st.stats.ttftMs as number).toBeLessThan(600);
  });

  it('failover: duration includes the failed attempt, overhead excludes both waits, the TTFT is the serving upstream\u2019s own', async () => {
    const bad = await mock((_b, _n, res) => {
      setTimeout(() => sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }), 250);
    });
    const good = await mock((body, _n, res) => {
      setTimeout(
        () =>
          sendJson(res, 200, completion(body, { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 })),
        50,
      );
    });
    const gw = await gateway({
      providers: [prov('bad', bad.url), prov('good', good.url)],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
    });
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'fo' });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-trail']).toBe('bad/m=http_500');
    const line = requestLines(gw, 'fo')[0]!;
    expect(line.latencyMs as number).toBeGreaterThanOrEqual(290);
    const s = await scrape(gw.url);
    const dur = hsum(s, 'llm_router_request_duration_seconds', {
      route: 'r',
      provider: 'good',
      model: 'm',
      stream: 'false',
    })!;
    expect(dur).toBeGreaterThanOrEqual(0.29);
    const over = hsum(s, 'llm_router_overhead_seconds', { route: 'r' })!;
    expect(over).toBeGreaterThanOrEqual(0);
    expect(over).toBeLessThan(0.1);
    // The failed upstream never produced a first token; the good one's TTFT is its own ~50 ms.
    expect(hcount(s, 'llm_router_time_to_first_token_seconds', { provider: 'bad', model: 'm' }) ?? 0).toBe(0);
    expect(select(s, 'llm_router_tokens_total', { provider: 'bad' }).reduce((n, x) => n + x.value, 0)).toBe(
      0,
    );
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'bad', model: 'm' }) ?? 0).toBe(0);
    expect(value(s, 'llm_router_tokens_total', { provider: 'good', model: 'm', kind: 'completion' })).toBe(2);
    const st = (await status(gw)).get('good/m')!;
    expect(st.stats.ttftMs as number).toBeLessThan(220);
    const ttftGood = hsum(s, 'llm_router_time_to_first_token_seconds', { provider: 'good', model: 'm' })!;
    // llm_router_time_to_first_token_seconds{provider, model}: a per-upstream figure, not charged bad/m's 250 ms.
    expect(ttftGood).toBeLessThan(0.22);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('/router/status tells the truth', () => {
  it('breaker fields at each step (manual clock): failures, open, countdown, half-open, doubled re-open, close; gauge and transitions agree', async () => {
    let mode: 'fail' | 'ok' = 'fail';
    const up = await mock((body, _n, res) =>
      mode === 'fail'
        ? sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } })
        : sendJson(res, 200, completion(body, { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 })),
    );
    const clock = manualClock(1_000_000);
    const gw = await gateway(
      {
        providers: [prov('a', up.url)],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        routing: { max_attempts: 1 },
        circuit_breaker: {
          failure_threshold: 2,
          open_ms: 1000,
          max_open_ms: 10_000,
          half_open_probes: 1,
          success_threshold: 2,
        },
      },
      { now: clock.now },
    );
    const br = async () => (await status(gw)).get('a/m')!.breaker;
    const gauge = async () =>
      value(await scrape(gw.url), 'llm_router_circuit_state', { provider: 'a', model: 'm' });
    const transitions = async (to: string) =>
      value(await scrape(gw.url), 'llm_router_circuit_transitions_total', {
        provider: 'a',
        model: 'm',
        to,
      }) ?? 0;

    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    expect(await br()).toMatchObject({ state: 'closed', consecutive_failures: 1 });
    expect(await gauge()).toBe(0);

    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    let b = await br();
    expect(b).toMatchObject({ state: 'open', open_ms: 1000, ms_until_half_open: 1000, opens: 1 });
    expect(String(b.trip_cause)).toMatch(/error/);
    expect(await gauge()).toBe(2);
    expect(await transitions('open')).toBe(1);
    const warnOpen = gw.logs.find(
      (l) => l.level === 40 && JSON.stringify(l).includes('a/m') && /open/.test(String(l.msg)),
    );
    expect(warnOpen, 'a warn line for the breaker opening').toBeDefined();

    const refused = await call(gw, { model: 'r', messages: HI });
    expect(refused.status).toBe(503);
    expect(refused.headers['x-router-attempts']).toBe('0');
    expect(up.calls).toBe(2);

    clock.advance(400);
    expect((await br()).ms_until_half_open).toBe(600);
    clock.advance(600);
    b = await br();
    expect(b.ms_until_half_open).toBe(0);
    // After open_ms the breaker is half-open (SPEC §2): what status and the gauge show must say so.
    expect(b.state).toBe('half_open');
    expect(await gauge()).toBe(1);

    // The probe fails: open again, open_ms doubled.
    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    b = await br();
    expect(b).toMatchObject({ state: 'open', open_ms: 2000, ms_until_half_open: 2000, opens: 2 });
    expect(await gauge()).toBe(2);

    clock.advance(2000);
    mode = 'ok';
    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(200);
    b = await br();
    expect(b).toMatchObject({ state: 'half_open', consecutive_successes: 1 });
    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(200);
    b = await br();
    expect(b).toMatchObject({ state: 'closed', consecutive_failures: 0 });
    expect(await gauge()).toBe(0);
    expect(await transitions('open')).toBe(2);
    expect(await transitions('closed')).toBe(1);
    expect(up.calls).toBe(5);
    // README: "warnings for failovers and breaker transitions": each transition is logged, naming a/m.
    const transitionLines = gw.logs.filter(
      (l) =>
        (l.level as number) >= 40 &&
        JSON.stringify(l).includes('a/m') &&
        /breaker|circuit/i.test(JSON.stringify(l)),
    );
    const text = JSON.stringify(transitionLines);
    expect(text, text).toMatch(/half[-_ ]?open/i);
    expect(text, text).toMatch(/closed/i);
    expect(
      transitionLines.filter((l) => /open/i.test(String(l.msg)) && !/half/i.test(String(l.msg))).length,
    ).toBeGreaterThanOrEqual(2);
  });

  it('a 429 with Retry-After opens for exactly that long, cause rate limit, open_ms not doubled', async () => {
    let mode: 'limit' | 'fail' = 'limit';
    const up = await mock((_b, _n, res) =>
      mode === 'limit'
        ? sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit' } }, { 'retry-after': '7' })
        : sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const clock = manualClock(5_000_000);
    const gw = await gateway(
      {
        providers: [prov('a', up.url)],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        routing: { max_attempts: 1 },
        circuit_breaker: { failure_threshold: 1, open_ms: 1000, max_open_ms: 60_000, success_threshold: 1 },
      },
      { now: clock.now },
    );
    const r = await call(gw, { model: 'r', messages: HI });
    expect(r.status).toBe(429);
    let b = (await status(gw)).get('a/m')!.breaker;
    expect(b.state).toBe('open');
    expect(b.ms_until_half_open).toBe(7000);
    expect(String(b.trip_cause)).toMatch(/rate/);
    clock.advance(7000);
    mode = 'fail';
    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    b = (await status(gw)).get('a/m')!.breaker;
    expect(b.state).toBe('open');
    // The rate limit was a cooldown, not a fault: this open is open_ms (1000), not doubled to 2000.
    expect(b.ms_until_half_open).toBe(1000);
    expect(String(b.trip_cause)).toMatch(/error/);
  });

  it('success rate, totals, EWMA TTFT and tokens/s follow what the upstream does', async () => {
    const sim = track(
      await startSimulator({
        name: 'a',
        latencyMs: 100,
        chunkDelayMs: 20,
        completionTokens: 10,
      } as Partial<SimOptions>),
    );
    const gw = await gateway({
      providers: [prov('a', sim.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 100 },
    });
    for (let i = 0; i < 3; i++)
      expect((await call(gw, { model: 'r', messages: HI, stream: true })).status).toBe(200);
    let st = (await status(gw)).get('a/m')!.stats;
    expect(st).toMatchObject({ requests: 3, successes: 3, failures: 0, successRate: 1, samples: 3 });
    expect(st.ttftMs as number).toBeGreaterThanOrEqual(80);
    expect(st.ttftMs as number).toBeLessThan(400);
    // 10 chunks 20 ms apart: ~50 tokens/s (true figure); loose bounds.
    expect(st.tokensPerSec as number).toBeGreaterThan(20);
    expect(st.tokensPerSec as number).toBeLessThan(150);
    expect(st.meanOutputTokens).toBe(10);

    sim.script([{ status: 500 }]);
    expect((await call(gw, { model: 'r', messages: HI, stream: true })).status).toBe(502);
    st = (await status(gw)).get('a/m')!.stats;
    expect(st).toMatchObject({ requests: 4, successes: 3, failures: 1 });
    expect(st.successRate as number).toBeGreaterThan(0.5);
    expect(st.successRate as number).toBeLessThan(0.95);

    // The upstream gets fast: the EWMA moves down toward it.
    const before = st.ttftMs as number;
    sim.set({ latencyMs: 0 });
    for (let i = 0; i < 6; i++)
      expect((await call(gw, { model: 'r', messages: HI, stream: true })).status).toBe(200);
    st = (await status(gw)).get('a/m')!.stats;
    expect(st.ttftMs as number).toBeLessThan(before);
  });

  it('an upstream that failed every one of its requests shows a success rate near 0', async () => {
    const up = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const gw = await gateway({
      providers: [prov('a', up.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 100 },
    });
    for (let i = 0; i < 4; i++) expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    const st = (await status(gw)).get('a/m')!.stats;
    expect(st).toMatchObject({ requests: 4, successes: 0, failures: 4 });
    // "reliability = recent success rate" (SPEC §2): 0 of 4.
    expect(st.successRate as number).toBeLessThanOrEqual(0.25);
  });

  it('never a secret in /router/status, /router/explain, /metrics or the logs', async () => {
    const sim = track(
      await startSimulator({ name: 'a', apiKey: 'sk-prov-SECRET-4242', echoAuthInError: true }),
    );
    const gw = await gateway(
      {
        server: { api_keys: ['client-SECRET-77'] },
        providers: [
          prov(
            'a',
            sim.url,
            {},
            { api_key: '${PK}', base_url: `${sim.url.replace('http://', 'http://user:pw-SECRET-55@')}/v1` },
          ),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      },
      { env: { PK: 'sk-prov-SECRET-4242' } },
    );
    const auth = { authorization: 'Bearer client-SECRET-77' };
    await call(gw, { model: 'r', messages: HI }, auth);
    sim.set({ status: 500 });
    await call(gw, { model: 'r', messages: HI }, auth);
    const texts = [
      JSON.stringify(Object.fromEntries(await status(gw))),
      (await call(gw, { model: 'r', messages: HI }, auth, '/router/explain')).text,
      await (await request(`${gw.url}/metrics`)).body.text(),
      gw.rawLogs(),
    ];
    for (const t of texts) expect(t).not.toMatch(/SECRET/);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('/router/explain: scores in [0, 1], the best 1, reasons carrying true raw figures', () => {
  function checkScores(c: Candidate[]): void {
    expect(c.length).toBeGreaterThan(1);
    for (const x of c) {
      expect(x.score).toBeGreaterThanOrEqual(0);
      expect(x.score).toBeLessThanOrEqual(1);
      expect(typeof x.reason).toBe('string');
    }
    expect(Math.max(...c.map((x) => x.score))).toBe(1);
    expect(c[0]!.score).toBe(1);
    for (let i = 1; i < c.length; i++) expect(c[i]!.score).toBeLessThanOrEqual(c[i - 1]!.score);
  }

  it('cost: dollars in each reason = prompt tokens x input price + max_tokens x output price, from the config', async () => {
    const up = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const prices: Record<string, { input_per_mtok: number; output_per_mtok: number }> = {
      a: { input_per_mtok: 3, output_per_mtok: 15 },
      b: { input_per_mtok: 0.15, output_per_mtok: 0.6 },
      c: { input_per_mtok: 1, output_per_mtok: 4 },
    };
    const gw = await gateway({
      providers: Object.entries(prices).map(([n, price]) => prov(n, up.url, { price })),
      routes: { r: { strategy: 'cost', targets: ['a/m', 'b/m', 'c/m'] } },
    });
    const body = { model: 'r', messages: [{ role: 'user', content: 'x '.repeat(300) }], max_tokens: 100 };
    const e = await explain(gw, body);
    checkScores(e.candidates);
    const pt = e.features.promptTokens as number;
    expect(pt).toBeGreaterThan(100);
    expect(e.candidates.map((c) => c.upstream)).toEqual(['b/m', 'c/m', 'a/m']);
    for (const c of e.candidates) {
      const p = prices[c.upstream.split('/')[0]!]!;
      const want = (pt * p.input_per_mtok + 100 * p.output_per_mtok) / 1e6;
      const got = Number(/\$([\d.]+)/.exec(c.reason)?.[1]);
      expect(got, c.reason).toBeCloseTo(want, 6);
      expect(c.reason).toContain('100 out');
    }
    // Score of each = cheapest / its cost (1 = best): at least monotone in dollars.
    const best = (pt * 0.15 + 100 * 0.6) / 1e6;
    const worst = (pt * 3 + 100 * 15) / 1e6;
    expect(e.candidates[2]!.score).toBeCloseTo(best / worst, 2);
    // The real request goes where explain said, and its log line carries the same score and reason.
    const r = await call(gw, body, { 'x-request-id': 'cost-real' });
    expect(r.headers['x-router-provider']).toBe('b');
    expect(requestLines(gw, 'cost-real')[0]).toMatchObject({
      upstream: 'b/m',
      score: 1,
      reason: e.candidates[0]!.reason,
    });
  });

  it('latency: reasons carry the live TTFT in ms that /router/status shows', async () => {
    const fast = track(await startSimulator({ name: 'f', latencyMs: 20 }));
    const slow = track(await startSimulator({ name: 's', latencyMs: 150 }));
    const gw = await gateway({
      providers: [prov('f', fast.url), prov('s', slow.url)],
      routes: { r: { strategy: 'latency', targets: ['s/m', 'f/m'] } },
      routing: { exploration_share: 0 },
    });
    for (const p of ['f', 's'])
      for (let i = 0; i < 3; i++)
        expect((await call(gw, { model: 'r', messages: HI }, { 'x-router-provider': p })).status).toBe(200);
    const e = await explain(gw, { model: 'r', messages: HI });
    checkScores(e.candidates);
    expect(e.candidates[0]!.upstream).toBe('f/m');
    const st = await status(gw);
    for (const c of e.candidates) {
      const ttft = st.get(c.upstream)!.stats.ttftMs as number;
      const ms = [...c.reason.matchAll(/([\d.]+) ?ms/g)].map((m) => Number(m[1]));
      expect(ms.length, c.reason).toBeGreaterThan(0);
      // The quoted TTFT is the status figure (rounding aside).
      expect(
        ms.some((v) => Math.abs(v - ttft) <= Math.max(1, ttft * 0.05)),
        `${c.reason} vs ${ttft}`,
      ).toBe(true);
    }
    const slowScore = e.candidates[1]!.score;
    expect(slowScore).toBeLessThan(0.5);
  });

  it('weighted: reasons carry the configured weights and their shares', async () => {
    const up = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const gw = await gateway(
      {
        providers: [prov('a', up.url), prov('b', up.url)],
        routes: {
          r: {
            strategy: 'weighted',
            targets: [
              { target: 'a/m', weight: 1 },
              { target: 'b/m', weight: 3 },
            ],
          },
        },
      },
      { random: () => 0.9 },
    );
    const e = await explain(gw, { model: 'r', messages: HI });
    checkScores(e.candidates);
    const byUp = new Map(e.candidates.map((c) => [c.upstream, c.reason]));
    expect(byUp.get('a/m')).toMatch(/\b1 of 4\b.*25(\.0)?%/);
    expect(byUp.get('b/m')).toMatch(/\b3 of 4\b.*75(\.0)?%/);
  });

  it('hybrid: the reliability part quotes the success rate /router/status shows; cost part the cost figure', async () => {
    const good = await mock((body, _n, res) =>
      sendJson(res, 200, completion(body, { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 })),
    );
    const flaky = await mock((body, n, res) =>
      n % 2 === 0
        ? sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } })
        : sendJson(res, 200, completion(body, { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 })),
    );
    const gw = await gateway({
      providers: [
        prov('g', good.url, { price: { input_per_mtok: 2, output_per_mtok: 8 } }),
        prov('f', flaky.url, { price: { input_per_mtok: 1, output_per_mtok: 4 } }),
      ],
      routes: { r: { strategy: 'hybrid', targets: ['g/m', 'f/m'] } },
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 100 },
    });
    for (let i = 0; i < 4; i++) await call(gw, { model: 'r', messages: HI }, { 'x-router-provider': 'f' });
    for (let i = 0; i < 2; i++) await call(gw, { model: 'r', messages: HI }, { 'x-router-provider': 'g' });
    const e = await explain(gw, { model: 'r', messages: HI, max_tokens: 50 });
    checkScores(e.candidates);
    const st = await status(gw);
    const pt = e.features.promptTokens as number;
    for (const c of e.candidates) {
      const rate = st.get(c.upstream)!.stats.successRate as number;
      const pct = Number(/reliability ([\d.]+)%/.exec(c.reason)?.[1]);
      expect(pct, c.reason).toBeCloseTo(rate * 100, 0);
      const p = c.upstream === 'g/m' ? [2, 8] : [1, 4];
      const dollars = Number(/cost \$([\d.]+)/.exec(c.reason)?.[1]);
      expect(dollars, c.reason).toBeCloseTo((pt * p[0]! + 50 * p[1]!) / 1e6, 6);
    }
  });

  it('least-busy: the in-flight counts quoted are the live ones, and the real request follows', async () => {
    const release: Array<() => void> = [];
    const up = await mock((body, _n, res) => {
      if (body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
        res.write(chunkFrame(body.model, { content: 'held' }));
        release.push(() => res.end(`${chunkFrame(body.model, {}, 'stop')}data: [DONE]\n\n`));
        return;
      }
      sendJson(res, 200, completion(body, null));
    });
    const gw = await gateway({
      providers: [prov('a', up.url), prov('b', up.url)],
      routes: { r: { strategy: 'least-busy', targets: ['a/m', 'b/m'] } },
    });
    const held = [0, 1].map(() =>
      request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-router-provider': 'a' },
        body: JSON.stringify({ model: 'r', messages: HI, stream: true }),
      }),
    );
    const responses = await Promise.all(held);
    await until(() => expect(up.calls).toBe(2));
    const e = await explain(gw, { model: 'r', messages: HI });
    checkScores(e.candidates);
    const st = await status(gw);
    expect(st.get('a/m')!.in_flight).toBe(2);
    expect(value(await scrape(gw.url), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(
      2,
    );
    const byUp = new Map(e.candidates.map((c) => [c.upstream, c.reason]));
    expect(byUp.get('a/m')).toMatch(/\b2 in flight/);
    expect(byUp.get('b/m')).toMatch(/\b0 in flight/);
    expect(e.candidates[0]!.upstream).toBe('b/m');
    const r = await call(gw, { model: 'r', messages: HI });
    expect(r.headers['x-router-provider']).toBe('b');
    for (const f of release) f();
    for (const res of responses) await res.body.text();
    await until(async () =>
      expect(value(await scrape(gw.url), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(
        0,
      ),
    );
    expect((await status(gw)).get('a/m')!.in_flight).toBe(0);
  });

  it('tiers: explain names the tier and the rule; the real request says the same in headers and log', async () => {
    const up = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const gw = await gateway({
      providers: [prov('small', up.url), prov('big', up.url), prov('rt', up.url)],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['small/m'], balanced: ['rt/m'], deep: ['big/m'] },
          rules: [{ name: 'proofs', if: { last_user_message: 'prove' }, tier: 'deep' }],
          default_tier: 'balanced',
          router: { tier: 'balanced', timeout_ms: 1000 },
        },
      },
    });
    const body = { model: 'auto', messages: [{ role: 'user', content: 'please prove it' }] };
    const e = await explain(gw, body);
    expect(JSON.stringify(e)).toContain('deep');
    expect(JSON.stringify(e)).toContain('proofs');
    expect(e.candidates[0]!.upstream).toBe('big/m');
    expect(up.calls).toBe(0);
    const r = await call(gw, body, { 'x-request-id': 'tier-rule' });
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toContain('proofs');
    expect(requestLines(gw, 'tier-rule')[0]).toMatchObject({ tier: 'deep', upstream: 'big/m' });
    expect(String(requestLines(gw, 'tier-rule')[0]!.tierReason)).toContain('proofs');
    // A request no rule decides would need the LLM router: explain still calls no upstream.
    const before = up.calls;
    const e2 = await call(
      gw,
      { model: 'auto', messages: [{ role: 'user', content: 'tell me a story' }] },
      {},
      '/router/explain',
    );
    expect(e2.status).toBe(200);
    expect(up.calls).toBe(before);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('the per-request log line', () => {
  it('one and only one per request, with request id = x-request-id, for JSON, stream, 502, 404, 401, 400 and a client abort', async () => {
    let hang = false;
    const up = await mock((body, _n, res) => {
      if (hang) return; // never answers; the server's close cuts it
      if (body.messages && JSON.stringify(body.messages).includes('fail'))
        return sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
      if (body.stream === true) return paced(res, body, { firstMs: 0, gapMs: 0, pieces: ['x'] });
      sendJson(res, 200, completion(body, { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }));
    });
    const gw = await gateway({
      server: { api_keys: ['ck-1'] },
      providers: [prov('a', up.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      circuit_breaker: { failure_threshold: 100 },
    });
    const auth = { authorization: 'Bearer ck-1' };
    const cases: Array<[string, Json, Record<string, string>, number]> = [
      ['l-json', { model: 'r', messages: HI }, auth, 200],
      ['l-stream', { model: 'r', messages: HI, stream: true }, auth, 200],
      ['l-502', { model: 'r', messages: [{ role: 'user', content: 'fail' }] }, auth, 502],
      ['l-404', { model: 'nope', messages: HI }, auth, 404],
      ['l-401', { model: 'r', messages: HI }, { authorization: 'Bearer wrong' }, 401],
      ['l-400', { model: 'r', messages: 'not a list' }, auth, 400],
    ];
    for (const [id, body, h, want] of cases) {
      const r = await call(gw, body, { ...h, 'x-request-id': id });
      expect(r.status, id).toBe(want);
      expect(r.headers['x-request-id'], id).toBe(id);
    }
    hang = true;
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...auth, 'x-request-id': 'l-abort' },
      body: JSON.stringify({ model: 'r', messages: HI }),
      signal: ac.signal,
    }).catch(() => undefined);
    await until(() => expect(up.calls).toBe(4));
    ac.abort();
    await pending;
    await until(() => expect(requestLines(gw, 'l-abort')).toHaveLength(1));
    await sleep(50);
    for (const [id, , , want] of cases) {
      const lines = requestLines(gw, id);
      expect(lines, id).toHaveLength(1);
      expect(lines[0]!.status, id).toBe(want);
    }
    expect(requestLines(gw, 'l-abort')).toHaveLength(1);
    expect(requestLines(gw, 'l-abort')[0]!.status).toBe(499);
    const l502 = requestLines(gw, 'l-502')[0]!;
    expect(l502).toMatchObject({ route: 'r', attempts: 1, trail: 'a/m=http_500' });
    expect(typeof l502.latencyMs).toBe('number');
    // No other routed request line than these seven.
    expect(new Set(requestLines(gw).map((l) => l.reqId)).size).toBe(requestLines(gw).length);
    expect(requestLines(gw)).toHaveLength(7);
  });

  it('after a failover, the line carries the chosen upstream with ITS score and reason', async () => {
    const bad = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const good = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const gw = await gateway({
      providers: [prov('bad', bad.url), prov('good', good.url)],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
      circuit_breaker: { failure_threshold: 100 },
    });
    const e = await explain(gw, { model: 'r', messages: HI });
    const goodCand = e.candidates.find((c) => c.upstream === 'good/m')!;
    expect(goodCand.score).toBeLessThan(1);
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'fo-score' });
    expect(r.headers['x-router-provider']).toBe('good');
    const line = requestLines(gw, 'fo-score')[0]!;
    // README Metrics: "one `request` line per request (... chosen upstream with its score and reason ...)".
    expect(line).toMatchObject({ upstream: 'good/m', score: goodCand.score, reason: goodCand.reason });
  });

  it('failover and breaker transitions are warned with upstream and reason; a provider 401 is logged at error', async () => {
    const denied = await mock((_b, _n, res) =>
      sendJson(res, 401, { error: { message: 'Incorrect API key provided', type: 'invalid_request_error' } }),
    );
    const bad = await mock((_b, _n, res) =>
      sendJson(res, 503, { error: { message: 'overloaded', type: 'server_error' } }),
    );
    const good = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const gw = await gateway({
      providers: [
        prov('den', denied.url, {}, { api_key: 'sk-wrong-KEYVALUE' }),
        prov('bad', bad.url),
        prov('good', good.url),
      ],
      routes: { r: { strategy: 'priority', targets: ['den/m', 'bad/m', 'good/m'] } },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    const r = await call(gw, { model: 'r', messages: [{ role: 'user', content: 'PROMPT-MARKER-31337' }] });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-attempts']).toBe('3');
    expect(r.headers['x-router-trail']).toBe('den/m=http_401,bad/m=http_503');
    const lines = gw.logs;
    const err401 = lines.find((l) => (l.level as number) >= 50 && JSON.stringify(l).includes('den/m'));
    expect(err401, 'provider 401 logged at error level').toBeDefined();
    const warnBad = lines.find(
      (l) => l.level === 40 && JSON.stringify(l).includes('bad/m') && JSON.stringify(l).includes('503'),
    );
    expect(warnBad, 'failover from bad/m warned').toBeDefined();
    for (const id of ['den/m', 'bad/m']) {
      const opened = lines.find(
        (l) => (l.level as number) >= 40 && JSON.stringify(l).includes(id) && /open/i.test(String(l.msg)),
      );
      expect(opened, `breaker of ${id} opening warned`).toBeDefined();
    }
    expect(gw.rawLogs()).not.toContain('PROMPT-MARKER-31337');
    expect(gw.rawLogs()).not.toContain('KEYVALUE');
  });

  it('the log level is honoured: at warn, no request lines, but the failover warning', async () => {
    const bad = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const good = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const lines: Json[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString().split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l) as Json);
        cb();
      },
    });
    const loaded = parseConfigText(
      JSON.stringify({
        providers: [prov('bad', bad.url), prov('good', good.url)],
        routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
      }),
      {},
    );
    const app = buildApp(loaded, { logger: createLogger('warn', sink) });
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    track({ close: () => app.close() });
    const r = await call({ url }, { model: 'r', messages: HI });
    expect(r.status).toBe(200);
    await sleep(20);
    expect(lines.filter((l) => (l.level as number) < 40)).toEqual([]);
    expect(lines.some((l) => l.level === 40 && JSON.stringify(l).includes('bad/m'))).toBe(true);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('x-router-* headers say what happened', () => {
  it('attempts = upstreams actually called; trail lists exactly the failed ones, in order, reason per failure kind', async () => {
    const a500 = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'x', type: 'server_error' } }),
    );
    const b429 = await mock((_b, _n, res) =>
      sendJson(res, 429, { error: { message: 'x', type: 'rate_limit' } }),
    );
    const dHang = await mock(() => undefined);
    const eOk = await mock((body, _n, res) =>
      body.stream === true
        ? paced(res, body, { firstMs: 0, gapMs: 0, pieces: ['x'] })
        : sendJson(res, 200, completion(body, null)),
    );
    const gone = await mock(() => undefined);
    const goneUrl = gone.url;
    await gone.close();
    const gw = await gateway({
      providers: [
        prov('a', a500.url),
        prov('b', b429.url),
        prov('c', goneUrl),
        prov(
          'd',
          dHang.url,
          {},
          { timeouts: { connect_ms: 500, first_byte_ms: 200, idle_ms: 200, total_ms: 3000 } },
        ),
        prov('e', eOk.url),
      ],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m', 'c/m', 'd/m', 'e/m'] } },
      routing: { max_attempts: 5 },
      circuit_breaker: { failure_threshold: 100 },
    });
    for (const stream of [false, true]) {
      const r = await call(gw, { model: 'r', messages: HI, stream }, { 'x-request-id': `trail-${stream}` });
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('e');
      expect(r.headers['x-router-attempts']).toBe('5');
      const trail = r.headers['x-router-trail']!.split(',');
      expect(trail).toHaveLength(4);
      expect(trail[0]).toBe('a/m=http_500');
      expect(trail[1]).toBe('b/m=http_429');
      expect(trail[2]).toMatch(/^c\/m=(connect|econnrefused|connection)/i);
      expect(trail[3]).toMatch(/^d\/m=.*(first_byte|timeout)/i);
      // A stream's line is written once its last byte is handed on: the client can read that byte first.
      await until(() =>
        expect(requestLines(gw, `trail-${stream}`)[0]).toMatchObject({
          attempts: 5,
          trail: r.headers['x-router-trail'],
        }),
      );
    }
    expect([a500.calls, b429.calls, dHang.calls, eOk.calls]).toEqual([2, 2, 2, 2]);
    const s = await scrape(gw.url);
    const att = (p: string, outcome: string) =>
      value(s, 'llm_router_upstream_attempts_total', { provider: p, model: 'm', outcome });
    expect(att('a', 'error')).toBe(2);
    expect(att('b', 'rate_limited')).toBe(2);
    expect(att('c', 'error')).toBe(2);
    expect(att('d', 'timeout')).toBe(2);
    expect(att('e', 'success')).toBe(2);
    const fo = select(s, 'llm_router_failovers_total', { route: 'r' });
    expect(fo.reduce((n, x) => n + x.value, 0)).toBe(8);
    expect(select(s, 'llm_router_failovers_total', { route: 'r', from_provider: 'e' })).toHaveLength(0);
    const st = await status(gw);
    expect(st.get('b/m')!.stats).toMatchObject({ requests: 2, failures: 2 });
    expect((st.get('b/m')!.stats.failuresByKind as Json).rate_limit).toBe(2);
    expect((st.get('d/m')!.stats.failuresByKind as Json).timeout).toBe(2);
    expect((st.get('a/m')!.stats.failuresByKind as Json).error).toBe(2);
    expect(st.get('e/m')!.stats).toMatchObject({ requests: 2, successes: 2, failures: 0 });
  });

  it('every attempt failing: 502 with attempts and the whole trail; a last failed attempt is not a failover', async () => {
    const bad = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'x', type: 'server_error' } }),
    );
    const gw = await gateway({
      providers: [prov('a', bad.url), prov('b', bad.url), prov('c', bad.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m', 'c/m'] } },
      circuit_breaker: { failure_threshold: 100 },
    });
    const r = await call(gw, { model: 'r', messages: HI });
    expect(r.status).toBe(502);
    expect(r.headers['x-router-attempts']).toBe('3');
    expect(r.headers['x-router-trail']).toBe('a/m=http_500,b/m=http_500,c/m=http_500');
    expect(bad.calls).toBe(3);
    const s = await scrape(gw.url);
    expect(select(s, 'llm_router_failovers_total').reduce((n, x) => n + x.value, 0)).toBe(2);
    expect(
      value(s, 'llm_router_requests_total', { route: 'r', provider: 'c', model: 'm', status: '502' }) ??
        select(s, 'llm_router_requests_total', { route: 'r', status: '502' }).reduce(
          (n, x) => n + x.value,
          0,
        ),
    ).toBe(1);
  });

  it('a client error from the upstream: one attempt, no trail, no failover, breaker not charged', async () => {
    const up = await mock((_b, _n, res) =>
      sendJson(res, 400, {
        error: { message: 'bad thing', type: 'invalid_request_error', param: null, code: null },
      }),
    );
    const other = await mock((body, _n, res) => sendJson(res, 200, completion(body, null)));
    const gw = await gateway({
      providers: [prov('a', up.url), prov('b', other.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'ce' });
    expect(r.status).toBe(400);
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(other.calls).toBe(0);
    const s = await scrape(gw.url);
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'client_error' }),
    ).toBe(1);
    expect((await status(gw)).get('a/m')!.breaker.consecutive_failures).toBe(0);
    expect(requestLines(gw, 'ce')[0]).toMatchObject({ status: 400, attempts: 1 });
  });

  it('x-router-strategy override is reflected in the header, the log line and routing_decisions_total; tier headers on tiered streams', async () => {
    const up = await mock((body, _n, res) =>
      body.stream === true
        ? paced(res, body, { firstMs: 0, gapMs: 0, pieces: ['x'] })
        : sendJson(res, 200, completion(body, null)),
    );
    const gw = await gateway({
      providers: [
        prov('a', up.url, { price: { input_per_mtok: 5, output_per_mtok: 5 } }),
        prov('b', up.url, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
      ],
      routes: {
        r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
        t: {
          strategy: 'priority',
          tiers: { fast: ['b/m'], deep: ['a/m'] },
          rules: [{ name: 'short', if: { max_prompt_tokens: 50 }, tier: 'fast' }],
          default_tier: 'deep',
          router: { tier: 'fast' },
        },
      },
    });
    const r = await call(
      gw,
      { model: 'r', messages: HI },
      { 'x-router-strategy': 'cost', 'x-request-id': 'ov' },
    );
    expect(r.headers['x-router-strategy']).toBe('cost');
    expect(r.headers['x-router-provider']).toBe('b');
    expect(requestLines(gw, 'ov')[0]).toMatchObject({ strategy: 'cost', upstream: 'b/m' });
    const s = await scrape(gw.url);
    expect(
      value(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'cost', provider: 'b' }),
    ).toBe(1);
    expect(
      select(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'priority' }),
    ).toHaveLength(0);

    const t = await call(gw, { model: 't', messages: HI, stream: true });
    expect(t.status).toBe(200);
    for (const h of [
      'x-request-id',
      'x-router-provider',
      'x-router-model',
      'x-router-strategy',
      'x-router-attempts',
      'x-router-tier',
    ])
      expect(t.headers[h], h).toBeTruthy();
    expect(t.headers['x-router-tier']).toBe('fast');
    expect(t.headers['x-router-tier-reason']).toContain('short');
    expect(t.headers['x-router-trail']).toBe('');
  });

  it('every breaker open: 503 with x-router-attempts 0, counted under its route, logged once', async () => {
    const bad = await mock((_b, _n, res) =>
      sendJson(res, 500, { error: { message: 'x', type: 'server_error' } }),
    );
    const gw = await gateway({
      providers: [prov('a', bad.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    expect((await call(gw, { model: 'r', messages: HI })).status).toBe(502);
    const r = await call(gw, { model: 'r', messages: HI }, { 'x-request-id': 'all-open' });
    expect(r.status).toBe(503);
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(bad.calls).toBe(1);
    const s = await scrape(gw.url);
    expect(
      select(s, 'llm_router_requests_total', { route: 'r', status: '503' }).reduce((n, x) => n + x.value, 0),
    ).toBe(1);
    expect(requestLines(gw, 'all-open')).toHaveLength(1);
    expect(requestLines(gw, 'all-open')[0]).toMatchObject({ status: 503, route: 'r', attempts: 0 });
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('the LLM router call in the figures', () => {
  it('router duration ~ its upstream delay, counted once (cache hits not observed); request duration includes it; overhead does not', async () => {
    const router = await mock((body, _n, res) => {
      setTimeout(
        () =>
          sendJson(
            res,
            200,
            completion(
              body,
              { prompt_tokens: 50, completion_tokens: 9, total_tokens: 59 },
              '{"tier":"deep","reason":"hard one"}',
            ),
          ),
        120,
      );
    });
    const deep = await mock((body, _n, res) =>
      sendJson(res, 200, completion(body, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })),
    );
    const gw = await gateway({
      providers: [prov('rt', router.url), prov('deep', deep.url), prov('bal', deep.url)],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 2000, cache_ttl_s: 60 },
        },
      },
    });
    const body = { model: 'auto', messages: [{ role: 'user', content: 'what is the meaning of it all' }] };
    const r1 = await call(gw, body, { 'x-request-id': 'llm-1' });
    expect(r1.status).toBe(200);
    expect(r1.headers['x-router-tier']).toBe('deep');
    expect(r1.headers['x-router-tier-reason']).toContain('hard one');
    expect(r1.headers['x-router-attempts']).toBe('1');
    const r2 = await call(gw, body, { 'x-request-id': 'llm-2' });
    expect(r2.headers['x-router-tier']).toBe('deep');
    expect(router.calls).toBe(1);
    const s = await scrape(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(1);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'cached' })).toBe(1);
    expect(hcount(s, 'llm_router_llm_router_duration_seconds', { tier: 'fast' })).toBe(1);
    const rd = hsum(s, 'llm_router_llm_router_duration_seconds', { tier: 'fast' })!;
    expect(rd).toBeGreaterThanOrEqual(0.1);
    expect(rd).toBeLessThan(0.6);
    const l1 = requestLines(gw, 'llm-1')[0]!;
    expect(l1).toMatchObject({
      tier: 'deep',
      upstream: 'deep/m',
      attempts: 1,
      completionTokens: 4,
      promptTokens: 3,
    });
    expect(l1.latencyMs as number).toBeGreaterThanOrEqual(110);
    // The router call's tokens are spent on rt/m and counted there; the answer's on deep/m.
    expect(value(s, 'llm_router_tokens_total', { provider: 'deep', model: 'm', kind: 'completion' })).toBe(8);
    expect(value(s, 'llm_router_tokens_total', { provider: 'rt', model: 'm', kind: 'completion' })).toBe(9);
    // README Metrics: "llm_router_overhead_seconds | histogram | route (total minus time waiting on upstreams)":
    // the LLM router call waits on rt/m, an upstream, so its 120 ms is not the gateway's own time.
    const over = select(s, 'llm_router_overhead_seconds_sum', { route: 'auto' })[0]!.value;
    expect(over).toBeGreaterThanOrEqual(0);
    expect(over).toBeLessThan(0.1);
  });
});

describe('more failure kinds in the trail and the counts', () => {
  it('a stream that stalls after its preamble, and one that ends before content: named in the trail, counted as timeout / error', async () => {
    const stall = await mock((body, _n, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
    });
    const empty = await mock((body, _n, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(chunkFrame(body.model, { role: 'assistant', content: '' }));
    });
    const ok = await mock((body, _n, res) => paced(res, body, { firstMs: 0, gapMs: 0, pieces: ['fine'] }));
    const tight = { timeouts: { connect_ms: 500, first_byte_ms: 300, idle_ms: 200, total_ms: 3000 } };
    const gw = await gateway({
      providers: [prov('st', stall.url, {}, tight), prov('em', empty.url, {}, tight), prov('ok', ok.url)],
      routes: { r: { strategy: 'priority', targets: ['st/m', 'em/m', 'ok/m'] } },
      circuit_breaker: { failure_threshold: 100 },
    });
    const r = await call(gw, { model: 'r', messages: HI, stream: true }, { 'x-request-id': 'kinds' });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-attempts']).toBe('3');
    const trail = r.headers['x-router-trail']!.split(',');
    expect(trail).toHaveLength(2);
    expect(trail[0]).toMatch(/^st\/m=.*(idle|timeout)/);
    expect(trail[1]).toMatch(/^em\/m=.*(ended|empty|before|no_content)/);
    const s = await scrape(gw.url);
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'st', model: 'm', outcome: 'timeout' }),
    ).toBe(1);
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'em', model: 'm', outcome: 'error' }),
    ).toBe(1);
    expect(requestLines(gw, 'kinds')[0]).toMatchObject({
      attempts: 3,
      trail: r.headers['x-router-trail'],
      status: 200,
    });
    // Neither failed attempt produced a first token.
    expect(hcount(s, 'llm_router_time_to_first_token_seconds', { provider: 'st', model: 'm' }) ?? 0).toBe(0);
    expect(hcount(s, 'llm_router_time_to_first_token_seconds', { provider: 'em', model: 'm' }) ?? 0).toBe(0);
  });
});
