import type { ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';
import { parseProm, type Sample } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

/**
 * One request, one truthful log line and truthful metrics, on every path (SPEC §2 "response +
 * x-router-* headers + metrics + log line", §5; README "Metrics": one `request` line per request, requests
 * answered before routing count under route `none`, a client gone before any answer is a 499; health,
 * /metrics and admin reads neither counted nor logged).
 */
const track = closeAfterEach();
let agent = new Agent();
afterEach(async () => {
  await agent.close();
  agent = new Agent();
});

type Json = Record<string, unknown>;
const PROMPT = 'PROMPT-TEXT-QZX-7731';
const ANSWER = 'ANSWER-TEXT-QZX-9915';
const PROVIDER_KEY = 'sk-provider-secret-4242abcd';
const CLIENT_KEY = 'client-key-secret-9999xyz';
const MSGS = [{ role: 'user', content: PROMPT }];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function answerOk(body: Json, res: ServerResponse): void {
  if (body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const m = body.model;
    res.end(
      `${chunkFrame(m, { role: 'assistant', content: '' })}${chunkFrame(m, { content: ANSWER })}${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`,
    );
    return;
  }
  sendJson(res, 200, {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: String(body.model),
    choices: [{ index: 0, message: { role: 'assistant', content: ANSWER }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
  });
}

function prov(name: string, url: string, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: PROVIDER_KEY,
    timeouts: { connect_ms: 1000, first_byte_ms: 1500, idle_ms: 1500, total_ms: 4000 },
    models: [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } }],
    ...extra,
  };
}

async function gwOver(urls: string[], server: Json = {}, extra: Json = {}): Promise<TestGateway> {
  const names = urls.map((_u, i) => `p${i}`);
  return track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], ...server },
      providers: urls.map((u, i) => prov(names[i]!, u)),
      routes: { r: { strategy: 'priority', targets: names.map((n) => `${n}/m`) } },
      ...extra,
    }),
  );
}

const AUTH = { authorization: `Bearer ${CLIENT_KEY}` };

async function post(
  gw: TestGateway,
  body: Json | string,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<{ status: number; headers: Record<string, string>; text: string }> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    dispatcher: agent,
    headers: { 'content-type': 'application/json', ...AUTH, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: h, text };
}

function lines(gw: TestGateway): Json[] {
  return gw.logs.filter((l) => l.msg === 'request');
}

async function scrapeAll(gw: TestGateway): Promise<Sample[]> {
  const res = await request(`${gw.url}/metrics`, { dispatcher: agent });
  return parseProm(await res.body.text());
}

/** Sum of a counter over samples whose labels include `labels`. */
function sum(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  let s = 0;
  for (const x of samples)
    if (x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)) s += x.value;
  return s;
}

/**
 * Waits until `n` more request lines than `before` are written, then a little more (a duplicate would come
 * in the same or next turn), and returns the new ones.
 */
async function newLines(gw: TestGateway, before: number, n = 1, waitMs = 3000): Promise<Json[]> {
  await until(`${n} request line(s)`, () => lines(gw).length >= before + n, waitMs).catch(() => undefined);
  await sleep(150);
  return lines(gw).slice(before);
}

/** Raw HTTP exchange: writes `bytes`, collects everything until the gateway closes or `waitMs`. */
function raw(gw: TestGateway, bytes: string | Buffer, waitMs: number): Promise<string> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname, () => socket.write(bytes));
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(text);
    };
    socket.on('close', done);
    socket.on('error', done);
    const timer = setTimeout(done, waitMs);
  });
}

function rawHeader(text: string, name: string): string | undefined {
  const head = text.slice(0, text.indexOf('\r\n\r\n'));
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    if (line.slice(0, i).trim().toLowerCase() === name) return line.slice(i + 1).trim();
  }
  return undefined;
}

function rawStatus(text: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
}

/** No prompt or answer text, no configured secret, in any log line. */
function expectCleanLogs(gw: TestGateway): void {
  const text = gw.rawLogs();
  expect(text).not.toContain(PROMPT);
  expect(text).not.toContain(ANSWER);
  expect(text).not.toContain(PROVIDER_KEY);
  expect(text).not.toContain(CLIENT_KEY);
}

/** An upstream answering well (answerOk), and a gateway over it with `server` settings. */
async function okGateway(server: Json = {}) {
  const up = track(await startMock((r, res) => answerOk(r.body, res)));
  const gw = await gwOver([up.url], server);
  return { up, gw };
}

/** The metrics and the number of request lines as they are now, to compare with later. */
async function mark(gw: TestGateway): Promise<{ m0: Sample[]; before: number }> {
  const m0 = await scrapeAll(gw);
  const before = lines(gw).length;
  return { m0, before };
}

/** The request lines written since `before`, which must be one: that line. */
async function oneLine(gw: TestGateway, before: number): Promise<Json> {
  const l = await newLines(gw, before);
  expect(l).toHaveLength(1);
  return l[0]!;
}

/** The one request line since `before`, with the id `r` was given in its header and `fields`: that line. */
async function expectLineOf(
  gw: TestGateway,
  before: number,
  r: { headers: Record<string, string> },
  fields: Json,
): Promise<Json> {
  const l = await oneLine(gw, before);
  expect(l).toMatchObject({ reqId: r.headers['x-request-id'], ...fields });
  return l;
}

/** A gateway with the client key, more `server` settings, these providers and routes. */
async function gwWith(providers: Json[], routes: Json, server: Json = {}): Promise<TestGateway> {
  return track(await startGateway({ server: { api_keys: [CLIENT_KEY], ...server }, providers, routes }));
}

describe('served requests: one line, true fields, counters moved once', () => {
  it('200 JSON and 200 stream: reqId = x-request-id, upstream, attempts, latency, tokens; requests_total +1 each', async () => {
    const { gw } = await okGateway();
    const { m0, before: n0 } = await mark(gw);
    const a = await post(gw, { model: 'r', messages: MSGS });
    expect(a.status).toBe(200);
    const la = await expectLineOf(gw, n0, a, {
      route: 'r',
      upstream: 'p0/m',
      attempts: 1,
      status: 200,
      stream: false,
      promptTokens: 5,
      completionTokens: 3,
    });
    expect(typeof la.latencyMs).toBe('number');

    const b = await post(gw, { model: 'r', messages: MSGS, stream: true });
    expect(b.status).toBe(200);
    expect(b.text).toContain(ANSWER);
    const lb = await expectLineOf(gw, n0 + 1, b, {
      route: 'r',
      upstream: 'p0/m',
      attempts: 1,
      status: 200,
      stream: true,
    });
    expect(typeof lb.ttftMs).toBe('number');
    const m1 = await scrapeAll(gw);
    const lbl = { route: 'r', provider: 'p0', model: 'm', status: '200' };
    expect(sum(m1, 'llm_router_requests_total', lbl) - sum(m0, 'llm_router_requests_total', lbl)).toBe(2);
    expect(sum(m1, 'llm_router_requests_total') - sum(m0, 'llm_router_requests_total')).toBe(2);
    expect(
      sum(m1, 'llm_router_request_duration_seconds_count', { route: 'r', stream: 'true' }) -
        sum(m0, 'llm_router_request_duration_seconds_count', { route: 'r', stream: 'true' }),
    ).toBe(1);
    expect(
      sum(m1, 'llm_router_upstream_attempts_total', { provider: 'p0', outcome: 'success' }) -
        sum(m0, 'llm_router_upstream_attempts_total', { provider: 'p0', outcome: 'success' }),
    ).toBe(2);
    expectCleanLogs(gw);
  }, 20_000);
});

describe('hostile request ids: echoed safely or replaced, and the log agrees with the header', () => {
  it('very long, non-ASCII, 10,000 x, odd characters: the header and the log line carry the same id', async () => {
    const { gw } = await okGateway();
    const ids = ['x'.repeat(10_000), 'a'.repeat(129), 'id with spaces', 'id"quote', 'ok-id_1.2:3'];
    for (const id of ids) {
      const before = lines(gw).length;
      const r = await post(gw, { model: 'r', messages: MSGS }, { 'x-request-id': id });
      expect(r.status).toBe(200);
      const h = r.headers['x-request-id']!;
      expect(h.length).toBeLessThanOrEqual(128);
      expect(h).toMatch(/^[\x21-\x7e]+$/);
      expect((await oneLine(gw, before)).reqId).toBe(h);
    }
    // Non-ASCII bytes (latin-1 é, UTF-8 snowman) on the wire, and on an error path (401).
    for (const [idBytes, key] of [
      [Buffer.from('caf\xe9-id', 'latin1'), CLIENT_KEY],
      [Buffer.from('snow-☃-id', 'utf8'), 'wrong-key'],
    ] as const) {
      const body = JSON.stringify({ model: 'r', messages: MSGS });
      const before = lines(gw).length;
      const text = await raw(
        gw,
        Buffer.concat([
          Buffer.from(
            `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer ${key}\r\nconnection: close\r\ncontent-length: ${body.length}\r\nx-request-id: `,
          ),
          idBytes,
          Buffer.from(`\r\n\r\n${body}`),
        ]),
        4000,
      );
      expect([200, 401]).toContain(rawStatus(text));
      const h = rawHeader(text, 'x-request-id')!;
      expect(h).toMatch(/^[\x21-\x7e]{1,128}$/);
      expect((await oneLine(gw, before)).reqId).toBe(h);
    }
  }, 30_000);
});

describe('early rejections: one line each, status as the client saw it, counted under route none', () => {
  it('400 (several kinds), 401, 404, 405, 413, 415: one line, reqId = header, requests_total{route=none,status} +1', async () => {
    const { up, gw } = await okGateway({ body_limit_bytes: 4096 });
    type Case = {
      name: string;
      status: number;
      send: () => Promise<{ status: number; headers: Record<string, string>; text: string }>;
    };
    const cases: Case[] = [
      { name: 'bad JSON', status: 400, send: () => post(gw, '{"model":') },
      { name: 'empty body', status: 400, send: () => post(gw, '') },
      { name: 'messages not a list', status: 400, send: () => post(gw, { model: 'r', messages: 'hi' }) },
      { name: 'n < 1', status: 400, send: () => post(gw, { model: 'r', messages: MSGS, n: 0 }) },
      {
        name: 'stream not bool',
        status: 400,
        send: () => post(gw, { model: 'r', messages: MSGS, stream: 'yes' }),
      },
      {
        name: 'unknown strategy header',
        status: 400,
        send: () => post(gw, { model: 'r', messages: MSGS }, { 'x-router-strategy': 'nope' }),
      },
      {
        name: 'too deep',
        status: 400,
        send: () => post(gw, `{"model":"r","messages":[],"x":${'['.repeat(200)}${']'.repeat(200)}}`),
      },
      {
        name: 'no key',
        status: 401,
        send: () => post(gw, { model: 'r', messages: MSGS }, { authorization: '' }),
      },
      {
        name: 'wrong key',
        status: 401,
        send: () => post(gw, { model: 'r', messages: MSGS }, { authorization: 'Bearer wrong' }),
      },
      { name: 'unknown model', status: 404, send: () => post(gw, { model: 'nope', messages: MSGS }) },
      {
        name: 'unknown provider/model',
        status: 404,
        send: () => post(gw, { model: 'zz/m', messages: MSGS }),
      },
      {
        name: 'unknown /v1 path',
        status: 404,
        send: () => post(gw, { model: 'r' }, {}, '/v1/responses'),
      },
      {
        name: 'too big',
        status: 413,
        send: () => post(gw, { model: 'r', messages: [{ role: 'user', content: 'y'.repeat(8000) }] }),
      },
      {
        name: 'text/plain',
        status: 415,
        send: () =>
          post(gw, JSON.stringify({ model: 'r', messages: MSGS }), { 'content-type': 'text/plain' }),
      },
      {
        name: 'gzip',
        status: 415,
        send: () => post(gw, { model: 'r', messages: MSGS }, { 'content-encoding': 'gzip' }),
      },
    ];
    for (const c of cases) {
      const m0 = await scrapeAll(gw);
      const before = lines(gw).length;
      const r = await c.send();
      expect(r.status, c.name).toBe(c.status);
      const l = await newLines(gw, before);
      expect(l, c.name).toHaveLength(1);
      expect(l[0]!.status, c.name).toBe(c.status);
      expect(l[0]!.reqId, c.name).toBe(r.headers['x-request-id']);
      const m1 = await scrapeAll(gw);
      expect(
        sum(m1, 'llm_router_requests_total', { status: String(c.status) }) -
          sum(m0, 'llm_router_requests_total', { status: String(c.status) }),
        c.name,
      ).toBe(1);
      expect(sum(m1, 'llm_router_requests_total') - sum(m0, 'llm_router_requests_total'), c.name).toBe(1);
    }
    expect(up.received).toHaveLength(0);
    expectCleanLogs(gw);
  }, 60_000);

  it('an unknown method on a routed path (DELETE, PUT): one line with the status the client got', async () => {
    const { gw } = await okGateway();
    for (const method of ['DELETE', 'PUT', 'GET'] as const) {
      const before = lines(gw).length;
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method,
        headers: AUTH,
        dispatcher: agent,
      });
      await res.body.text();
      expect(res.statusCode).toBeGreaterThanOrEqual(400);
      const l = await newLines(gw, before);
      expect(l, method).toHaveLength(1);
      expect(l[0]!.status, method).toBe(res.statusCode);
      expect(l[0]!.reqId, method).toBe(res.headers['x-request-id']);
    }
  }, 20_000);
});

describe('a slow body (408): what the client saw is what the log and the counter say', () => {
  it('408 after request_timeout_ms: one line with status 408 and the id in the header; requests_total{status=408} +1', async () => {
    const { up, gw } = await okGateway({ request_timeout_ms: 1500 });
    const { m0, before } = await mark(gw);
    const text = await raw(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer ${CLIENT_KEY}\r\nx-request-id: slow-body-id-1\r\ncontent-length: 100\r\n\r\n{"model":`,
      6000,
    );
    expect(rawStatus(text)).toBe(408);
    const header = rawHeader(text, 'x-request-id');
    const l = await newLines(gw, before);
    const m1 = await scrapeAll(gw);
    const counted = {
      s408:
        sum(m1, 'llm_router_requests_total', { status: '408' }) -
        sum(m0, 'llm_router_requests_total', { status: '408' }),
      s499:
        sum(m1, 'llm_router_requests_total', { status: '499' }) -
        sum(m0, 'llm_router_requests_total', { status: '499' }),
    };
    expect({ header, lines: l.map((x) => ({ reqId: x.reqId, status: x.status })), counted }).toEqual({
      header: 'slow-body-id-1',
      lines: [{ reqId: 'slow-body-id-1', status: 408 }],
      counted: { s408: 1, s499: 0 },
    });
    expect(up.received).toHaveLength(0);
  }, 20_000);
});

describe('an Expect the gateway cannot meet (417)', () => {
  it('is a request answered before routing: one line, counted under route none', async () => {
    const { gw } = await okGateway();
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    const { m0, before } = await mark(gw);
    const text = await raw(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer ${CLIENT_KEY}\r\nx-request-id: expect-id-1\r\nexpect: 200-ok\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      4000,
    );
    expect(rawStatus(text)).toBe(417);
    const l = await newLines(gw, before, 1, 1500);
    const m1 = await scrapeAll(gw);
    expect({
      header: rawHeader(text, 'x-request-id'),
      lines: l.map((x) => ({ reqId: x.reqId, status: x.status })),
      counted:
        sum(m1, 'llm_router_requests_total', { status: '417' }) -
        sum(m0, 'llm_router_requests_total', { status: '417' }),
    }).toEqual({
      header: 'expect-id-1',
      lines: [{ reqId: 'expect-id-1', status: 417 }],
      counted: 1,
    });
  }, 20_000);
});

async function delta(
  gw: TestGateway,
  m0: Sample[],
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const m1 = await scrapeAll(gw);
  return sum(m1, name, labels) - sum(m0, name, labels);
}

/** requests_total moved by `n` under `labels`, and by `n` in all. */
async function expectRequestsCounted(
  gw: TestGateway,
  m0: Sample[],
  labels: Record<string, string>,
  n: number,
): Promise<void> {
  expect(await delta(gw, m0, 'llm_router_requests_total', labels)).toBe(n);
  expect(await delta(gw, m0, 'llm_router_requests_total', {})).toBe(n);
}

describe('routed failures: one line with the route, the status the client saw, counters once', () => {
  it('400 relayed from the upstream: line has upstream and attempts 1, counted under the route, client_error attempt', async () => {
    const up = track(
      await startMock((_r, res) =>
        sendJson(res, 400, {
          error: {
            message: 'bad value for temperature',
            type: 'invalid_request_error',
            param: 'temperature',
            code: null,
          },
        }),
      ),
    );
    const gw = await gwOver([up.url]);
    const { m0, before } = await mark(gw);
    const r = await post(gw, { model: 'r', messages: MSGS });
    expect(r.status).toBe(400);
    await expectLineOf(gw, before, r, { route: 'r', upstream: 'p0/m', attempts: 1, status: 400 });
    await expectRequestsCounted(gw, m0, { route: 'r', provider: 'p0', status: '400' }, 1);
    expect(await delta(gw, m0, 'llm_router_upstream_attempts_total', { outcome: 'client_error' })).toBe(1);
    expect(await delta(gw, m0, 'llm_router_upstream_attempts_total', {})).toBe(1);
    expectCleanLogs(gw);
  }, 20_000);

  it('every candidate 429 with Retry-After: 429 + Retry-After, one line with both attempts, counted once', async () => {
    const mk = () =>
      startMock((_r, res) =>
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'rate_limit', param: null, code: null } },
          { 'retry-after': '7' },
        ),
      );
    const a = track(await mk());
    const b = track(await mk());
    const gw = await gwOver([a.url, b.url]);
    const { m0, before } = await mark(gw);
    const r = await post(gw, { model: 'r', messages: MSGS });
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBeDefined();
    const l = await expectLineOf(gw, before, r, { route: 'r', attempts: 2, status: 429 });
    expect(String(l.trail)).toMatch(/p0\/m=.*,p1\/m=/);
    expect(l.attempts).toBe(Number(r.headers['x-router-attempts']));
    await expectRequestsCounted(gw, m0, { route: 'r', status: '429' }, 1);
    expect(await delta(gw, m0, 'llm_router_upstream_attempts_total', { outcome: 'rate_limited' })).toBe(2);
    expect(await delta(gw, m0, 'llm_router_failovers_total', {})).toBe(1);
  }, 20_000);

  it('502 all failed, then 503 all breakers open: one line each, header attempts = line attempts', async () => {
    const a = track(await startMock((_r, res) => sendJson(res, 500, { error: { message: 'boom' } })));
    const gw = await gwOver([a.url], {}, { circuit_breaker: { failure_threshold: 1, open_ms: 60_000 } });
    const { m0, before } = await mark(gw);
    const r1 = await post(gw, { model: 'r', messages: MSGS });
    expect(r1.status).toBe(502);
    await expectLineOf(gw, before, r1, { route: 'r', status: 502, attempts: 1 });
    const before2 = lines(gw).length;
    const r2 = await post(gw, { model: 'r', messages: MSGS, stream: true });
    expect(r2.status).toBe(503);
    await expectLineOf(gw, before2, r2, { route: 'r', status: 503, attempts: 0, stream: true });
    expect(Number(r2.headers['x-router-attempts'])).toBe(0);
    expect(await delta(gw, m0, 'llm_router_requests_total', { route: 'r', status: '502' })).toBe(1);
    expect(await delta(gw, m0, 'llm_router_requests_total', { route: 'r', status: '503' })).toBe(1);
    expect(await delta(gw, m0, 'llm_router_requests_total', {})).toBe(2);
    expect(await delta(gw, m0, 'llm_router_upstream_attempts_total', {})).toBe(1);
  }, 20_000);

  it('504 route deadline (JSON and stream): one line each with 504, x-should-retry false, counted once', async () => {
    const a = track(await startMock(() => undefined)); // never answers
    const gw = await gwOver([a.url], {}, { routing: { total_timeout_ms: 600 } });
    const m0 = await scrapeAll(gw);
    for (const stream of [false, true]) {
      const before = lines(gw).length;
      const r = await post(gw, { model: 'r', messages: MSGS, stream });
      expect(r.status).toBe(504);
      expect(r.headers['x-should-retry']).toBe('false');
      await expectLineOf(gw, before, r, { route: 'r', status: 504, stream });
    }
    await expectRequestsCounted(gw, m0, { route: 'r', status: '504' }, 2);
    expect(await delta(gw, m0, 'llm_router_upstream_attempts_total', { outcome: 'timeout' })).toBe(2);
  }, 20_000);
});

describe('streams that do not finish', () => {
  it('cut after commit (terminate): one line with status 200 and the error, stream_failures +1, requests_total{200} +1', async () => {
    const up = track(
      await startMock((r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
        res.write(chunkFrame(r.body.model, { content: ANSWER }));
        setTimeout(() => res.destroy(), 50);
      }),
    );
    const gw = await gwOver([up.url]);
    const { m0, before } = await mark(gw);
    const r = await post(gw, { model: 'r', messages: MSGS, stream: true });
    expect(r.status).toBe(200);
    expect(r.text).toContain('"error"');
    expect(r.text).not.toContain('[DONE]');
    const l = await expectLineOf(gw, before, r, { route: 'r', upstream: 'p0/m', status: 200, stream: true });
    expect(l.error).toBeDefined();
    await expectRequestsCounted(gw, m0, { route: 'r', status: '200' }, 1);
    expect(
      await delta(gw, m0, 'llm_router_stream_failures_total', { provider: 'p0', policy: 'terminate' }),
    ).toBe(1);
    expect(await delta(gw, m0, 'llm_router_time_to_first_token_seconds_count', { provider: 'p0' })).toBe(1);
    expectCleanLogs(gw);
  }, 20_000);

  it('client gone mid-stream keeps 200; client gone before the answer is 499; each one line, counted once', async () => {
    const up = track(
      await startMock((r, res) => {
        if (String(JSON.stringify(r.body)).includes('early')) return; // never answers
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
        let i = 0;
        const t = setInterval(() => {
          if (res.destroyed || i++ > 100) return (clearInterval(t), res.destroy());
          res.write(chunkFrame(r.body.model, { content: 'tok ' }));
        }, 20);
      }),
    );
    const gw = await gwOver([up.url]);
    const { m0, before } = await mark(gw);
    // mid-stream
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      dispatcher: agent,
      signal: ac.signal,
      headers: { 'content-type': 'application/json', ...AUTH, 'x-request-id': 'mid-stream-1' },
      body: JSON.stringify({ model: 'r', messages: MSGS, stream: true }),
    });
    expect(res.statusCode).toBe(200);
    for await (const _c of res.body) break;
    ac.abort();
    // before the answer (JSON and stream)
    for (const [stream, id] of [
      [false, 'early-json-1'],
      [true, 'early-stream-1'],
    ] as const) {
      const ac2 = new AbortController();
      const p = request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        dispatcher: agent,
        signal: ac2.signal,
        headers: { 'content-type': 'application/json', ...AUTH, 'x-request-id': id },
        body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'early' }], stream }),
      }).catch(() => 'aborted');
      await until('upstream called', () => up.received.length >= (stream ? 3 : 2), 3000);
      ac2.abort();
      expect(await p).toBe('aborted');
    }
    const l = await newLines(gw, before, 3);
    expect(l.map((x) => [x.reqId, x.status]).sort()).toEqual(
      [
        ['early-json-1', 499],
        ['early-stream-1', 499],
        ['mid-stream-1', 200],
      ].sort(),
    );
    expect(await delta(gw, m0, 'llm_router_requests_total', { route: 'r', status: '499' })).toBe(2);
    expect(await delta(gw, m0, 'llm_router_requests_total', { route: 'r', status: '200' })).toBe(1);
    expect(await delta(gw, m0, 'llm_router_requests_total', {})).toBe(3);
    // a client leaving is not the upstream failing
    expect(await delta(gw, m0, 'llm_router_stream_failures_total', {})).toBe(0);
  }, 20_000);
});

describe('the gateway own rate limiter', () => {
  it('past requests_per_minute: 429 + Retry-After, one line with status 429 and the header id, counted once', async () => {
    const { up, gw } = await okGateway({ rate_limit: { requests_per_minute: 2 } });
    for (let i = 0; i < 2; i++) expect((await post(gw, { model: 'r', messages: MSGS })).status).toBe(200);
    await newLines(gw, 0, 2);
    const { m0, before } = await mark(gw);
    for (const stream of [false, true]) {
      const r = await post(gw, { model: 'r', messages: MSGS, stream }, { 'x-request-id': `rl-${stream}` });
      expect(r.status).toBe(429);
      expect(r.headers['retry-after']).toBeDefined();
      expect(r.headers['x-request-id']).toBe(`rl-${stream}`);
    }
    const l = await newLines(gw, before, 2);
    expect(l.map((x) => [x.reqId, x.status])).toEqual([
      ['rl-false', 429],
      ['rl-true', 429],
    ]);
    await expectRequestsCounted(gw, m0, { route: 'none', status: '429' }, 2);
    expect(up.received).toHaveLength(2);
  }, 20_000);
});

describe('embeddings, passthrough and the unreported surfaces', () => {
  const embProv = (name: string, url: string) => ({
    ...prov(name, url),
    models: [{ name: 'e', capabilities: ['embeddings'], price: { input_per_mtok: 1, output_per_mtok: 0 } }],
  });

  it('embeddings 200 and 502: one line each with route and status; counted once', async () => {
    const ok = track(
      await startMock((_r, res) =>
        sendJson(res, 200, {
          object: 'list',
          data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
          model: 'e',
          usage: { prompt_tokens: 4, total_tokens: 4 },
        }),
      ),
    );
    const bad = track(await startMock((_r, res) => sendJson(res, 500, { error: { message: 'x' } })));
    const gw = await gwWith([embProv('ok', ok.url), embProv('bad', bad.url)], {
      emb: { targets: ['ok/e'] },
      embbad: { targets: ['bad/e'] },
    });
    const { m0, before } = await mark(gw);
    const a = await post(gw, { model: 'emb', input: PROMPT }, {}, '/v1/embeddings');
    expect(a.status).toBe(200);
    const b = await post(gw, { model: 'embbad', input: PROMPT }, {}, '/v1/embeddings');
    expect(b.status).toBe(502);
    const l = await newLines(gw, before, 2);
    expect(l.map((x) => [x.reqId, x.route, x.upstream, x.status])).toEqual([
      [a.headers['x-request-id'], 'emb', 'ok/e', 200],
      [b.headers['x-request-id'], 'embbad', 'bad/e', 502],
    ]);
    expect(
      await delta(gw, m0, 'llm_router_requests_total', { route: 'emb', provider: 'ok', status: '200' }),
    ).toBe(1);
    expect(await delta(gw, m0, 'llm_router_requests_total', { route: 'embbad', status: '502' })).toBe(1);
    expect(await delta(gw, m0, 'llm_router_requests_total', {})).toBe(2);
    expect(await delta(gw, m0, 'llm_router_tokens_total', { provider: 'ok', kind: 'prompt' })).toBe(4);
    expectCleanLogs(gw);
  }, 20_000);

  it('passthrough: a 200 read whole, and one whose client leaves mid-body, each get one line (200) and one count', async () => {
    const pt = track(
      await startMock((r, res) => {
        if (r.path.includes('slow')) {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          res.write('x'.repeat(100));
          const t = setInterval(() => (res.destroyed ? clearInterval(t) : res.write('y'.repeat(100))), 20);
          res.on('close', () => clearInterval(t));
          return;
        }
        sendJson(res, 200, { object: 'list', data: [] });
      }),
    );
    const gw = await gwWith([prov('pt', pt.url)], { r: { targets: ['pt/m'] } }, { passthrough: 'pt' });
    const { m0, before } = await mark(gw);
    const a = await request(`${gw.url}/v1/files`, {
      headers: { ...AUTH, 'x-request-id': 'pt-ok' },
      dispatcher: agent,
    });
    await a.body.text();
    expect(a.statusCode).toBe(200);
    const ac = new AbortController();
    const s = await request(`${gw.url}/v1/files/slow`, {
      headers: { ...AUTH, 'x-request-id': 'pt-gone' },
      dispatcher: agent,
      signal: ac.signal,
    });
    expect(s.statusCode).toBe(200);
    for await (const _c of s.body) break;
    ac.abort();
    const l = await newLines(gw, before, 2, 4000);
    const m1 = await scrapeAll(gw);
    expect({
      lines: l.map((x) => [x.reqId, x.status]),
      counted: sum(m1, 'llm_router_requests_total') - sum(m0, 'llm_router_requests_total'),
    }).toEqual({
      lines: [
        ['pt-ok', 200],
        ['pt-gone', 200],
      ],
      counted: 2,
    });
  }, 20_000);

  it('passthrough: an upstream that cuts its body after the 200 began: the client sees a cut 200; one line, one count', async () => {
    const pt = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '100000' });
        res.write('x'.repeat(1000));
        setTimeout(() => res.destroy(), 50);
      }),
    );
    const gw = await gwWith([prov('pt', pt.url)], { r: { targets: ['pt/m'] } }, { passthrough: 'pt' });
    const { m0, before } = await mark(gw);
    const res = await request(`${gw.url}/v1/files/cut`, {
      headers: { ...AUTH, 'x-request-id': 'pt-cut' },
      dispatcher: agent,
    });
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    const l = await newLines(gw, before, 1, 4000);
    const m1 = await scrapeAll(gw);
    expect({
      lines: l.map((x) => x.reqId),
      anyLineWithItsId: gw.logs.filter((x) => x.reqId === 'pt-cut').length > 0,
      counted: sum(m1, 'llm_router_requests_total') - sum(m0, 'llm_router_requests_total'),
    }).toEqual({ lines: ['pt-cut'], anyLineWithItsId: true, counted: 1 });
  }, 20_000);

  it('/router/explain, /metrics, /healthz, /readyz, /v1/models: explain, health and metrics neither logged nor counted', async () => {
    const { up, gw } = await okGateway();
    const { m0, before } = await mark(gw);
    for (const p of ['/healthz', '/readyz', '/metrics']) {
      const res = await request(`${gw.url}${p}`, { dispatcher: agent });
      await res.body.text();
      expect(res.statusCode, p).toBe(200);
    }
    const ex = await post(gw, { model: 'r', messages: MSGS }, {}, '/router/explain');
    expect(ex.status).toBe(200);
    await sleep(200);
    expect(lines(gw).slice(before)).toEqual([]);
    expect(await delta(gw, m0, 'llm_router_requests_total', {})).toBe(0);
    expect(up.received).toHaveLength(0);
    expectCleanLogs(gw);
  }, 20_000);
});

describe('more ends before routing', () => {
  it('a client that leaves mid-body: one line with 499 and its id, counted once', async () => {
    const { up, gw } = await okGateway();
    const { m0, before } = await mark(gw);
    const { hostname, port } = new URL(gw.url);
    const socket = connect(Number(port), hostname);
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer ${CLIENT_KEY}\r\nx-request-id: left-mid-body\r\ncontent-length: 500\r\n\r\n{"model":"r",`,
    );
    await sleep(200);
    socket.destroy();
    const l = await newLines(gw, before, 1, 3000);
    expect(l.map((x) => [x.reqId, x.status])).toEqual([['left-mid-body', 499]]);
    await expectRequestsCounted(gw, m0, { route: 'none', status: '499' }, 1);
    expect(up.received).toHaveLength(0);
  }, 20_000);

  it('context window exceeded (refused as routed): one line under the route, 400, attempts 0 = header', async () => {
    const up = track(await startMock((r, res) => answerOk(r.body, res)));
    const gw = await gwWith([{ ...prov('p0', up.url), models: [{ name: 'm', context_window: 50 }] }], {
      r: { targets: ['p0/m'] },
    });
    const { m0, before } = await mark(gw);
    const r = await post(gw, { model: 'r', messages: [{ role: 'user', content: 'word '.repeat(400) }] });
    expect(r.status).toBe(400);
    await expectLineOf(gw, before, r, { route: 'r', status: 400, attempts: 0 });
    expect(Number(r.headers['x-router-attempts'])).toBe(0);
    await expectRequestsCounted(gw, m0, { route: 'r', status: '400' }, 1);
    expect(up.received).toHaveLength(0);
  }, 20_000);

  it('a tiered route: the line tier = x-router-tier header; routing_decisions_total +1', async () => {
    const up = track(await startMock((r, res) => answerOk(r.body, res)));
    const gw = await gwWith([prov('p0', up.url), { ...prov('p1', up.url) }], {
      auto: {
        tiers: { fast: ['p0/m'], deep: ['p1/m'] },
        rules: [{ if: { max_prompt_tokens: 400 }, tier: 'fast' }],
        default_tier: 'deep',
        router: { tier: 'fast' },
      },
    });
    const { m0, before } = await mark(gw);
    const r = await post(gw, { model: 'auto', messages: MSGS }, { 'x-router-tier': 'deep' });
    expect(r.status).toBe(200);
    await expectLineOf(gw, before, r, { route: 'auto', tier: r.headers['x-router-tier'], upstream: 'p1/m' });
    expect(await delta(gw, m0, 'llm_router_routing_decisions_total', { route: 'auto', provider: 'p1' })).toBe(
      1,
    );
    expect(
      await delta(gw, m0, 'llm_router_requests_total', { route: 'auto', provider: 'p1', status: '200' }),
    ).toBe(1);
    expectCleanLogs(gw);
  }, 20_000);
});

describe('a failed attempt that was failed over: its own warning', () => {
  it('names the request id and what the upstream said (scrubbed, cut), beside the one request line', async () => {
    const failing = track(
      await startMock((r, res) => {
        if (r.body.stream === true) {
          // An error event before any content (Anthropic's overloaded_error, in OpenAI's dialect).
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(
            `event: error\ndata: ${JSON.stringify({ error: { message: 'Overloaded, try later' } })}\n\n`,
          );
          return;
        }
        // A 500 whose message echoes the key it was sent, and runs long.
        sendJson(res, 500, { error: { message: `bad key ${PROVIDER_KEY} ${'x'.repeat(1000)}` } });
      }),
    );
    const good = track(await startMock((r, res) => answerOk(r.body, res)));
    const gw = await gwOver([failing.url, good.url]);
    for (const [id, stream] of [
      ['failed-json', false],
      ['failed-stream', true],
    ] as const) {
      const r = await post(gw, { model: 'r', messages: MSGS, stream }, { 'x-request-id': id });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('p1');
    }
    const warned = gw.logs.filter((l) => l.level === 40 && l.upstream === 'p0/m');
    const byId = new Map(warned.map((l) => [l.reqId, l]));
    expect(byId.get('failed-json')).toMatchObject({ reason: 'http_500', status: 500, route: 'r' });
    const said = String(byId.get('failed-json')!.upstreamMessage);
    expect(said.startsWith('bad key ')).toBe(true);
    expect(said.length).toBeLessThanOrEqual(300);
    expect(byId.get('failed-stream')).toMatchObject({
      reason: 'stream_error_event',
      upstreamMessage: 'Overloaded, try later',
    });
    expect(lines(gw).map((l) => [l.reqId, l.status])).toEqual([
      ['failed-json', 200],
      ['failed-stream', 200],
    ]);
    expectCleanLogs(gw); // the echoed provider key is not in the log
  });
});
