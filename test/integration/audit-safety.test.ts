/**
 * Audit of SPEC §8 "Safety" and the auth/passthrough rows of §4, black-box: hostile request bodies and
 * headers, slow or vanishing clients, auth on odd paths, secrets echoed back by hostile upstreams in every
 * shape they can take, and upstreams that misbehave at the HTTP level. Every upstream is a hand-written
 * server on 127.0.0.1:0 that misbehaves exactly as its test says.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import {
  brotliCompressSync,
  deflateSync,
  gunzipSync,
  gzipSync,
  brotliDecompressSync,
  inflateSync,
} from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1500, idle_ms: 1000, total_ms: 2000 };
const MSGS = [{ role: 'user', content: 'hi' }];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Json = Record<string, unknown>;

interface Mock {
  readonly url: string;
  /** Requests that reached the mock (counted when their headers arrive). */
  hits(): number;
  /** Raw request bodies, in order, once each arrived whole. */
  readonly bodies: string[];
  readonly heads: IncomingMessage['headers'][];
  readonly sockets: Set<Socket>;
  /** How many of its connections have closed. */
  closed(): number;
  /** How many of its responses have closed (finished, or their connection gone). */
  resClosed(): number;
}

/** A node:http upstream that calls `handler` once a request's body has arrived. */
async function mock(
  handler: (req: IncomingMessage, res: ServerResponse, body: string, n: number) => void = okJson,
): Promise<Mock> {
  let hits = 0;
  let closed = 0;
  let resClosed = 0;
  const bodies: string[] = [];
  const heads: IncomingMessage['headers'][] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    const n = hits++;
    res.on('close', () => resClosed++);
    heads.push(req.headers);
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => {
      bodies.push(body);
      handler(req, res, body, n);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => {
      closed++;
      sockets.delete(s);
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    bodies,
    heads,
    sockets,
    closed: () => closed,
    resClosed: () => resClosed,
  };
}

/** A raw TCP upstream: `onConn` gets each socket once the request head has arrived. */
async function rawMock(
  onConn: (s: Socket) => void,
): Promise<{ url: string; hits(): number; closed(): number }> {
  let hits = 0;
  let closed = 0;
  const sockets = new Set<Socket>();
  const server = createNetServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      closed++;
      sockets.delete(s);
    });
    let head = '';
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        s.off('data', onData);
        hits++;
        onConn(s);
      }
    };
    s.on('data', onData);
  });
  track({
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    closed: () => closed,
  };
}

function chatAnswer(model: string, text = 'hello'): Json {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  };
}

function chunk(delta: Json, finish: string | null = null): string {
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
}

/** An OpenAI-dialect answer: JSON, or a short SSE stream when the request asked for one. */
function okJson(_req: IncomingMessage, res: ServerResponse, body: string): void {
  let parsed: Json = {};
  try {
    parsed = JSON.parse(body) as Json;
  } catch {
    /* not JSON */
  }
  if (parsed.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'hello' })}${chunk({}, 'stop')}data: [DONE]\n\n`,
    );
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(chatAnswer(String(parsed.model))));
}

function provider(name: string, url: string, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: TIMEOUTS,
    models: [{ name: 'm' }],
    ...extra,
  };
}

async function gatewayOf(config: Json | string, env: Record<string, string> = {}): Promise<TestGateway> {
  return track(await startGateway(config, { env }));
}

/** One upstream `a` (a mock) behind route `r`. */
async function single(
  handler?: Parameters<typeof mock>[0],
  server: Json = {},
  extra: Json = {},
): Promise<{ gw: TestGateway; up: Mock }> {
  const up = await mock(handler);
  const gw = await gatewayOf({
    server,
    providers: [provider('a', up.url, extra)],
    routes: { r: { strategy: 'priority', targets: ['a/m'] } },
  });
  return { gw, up };
}

/** Timeouts where only total_ms (1.2 s) can end an upstream that keeps sending. */
const TOTAL_1200 = { connect_ms: 500, first_byte_ms: 5000, idle_ms: 5000, total_ms: 1200 };

/** Route `only` over upstream `a` (`up`) with {@link TOTAL_1200}. */
async function onlyWithinTotal(up: Mock): Promise<TestGateway> {
  return gatewayOf({
    providers: [provider('a', up.url, { timeouts: TOTAL_1200 })],
    routes: { only: { strategy: 'priority', targets: ['a/m'] } },
  });
}

/** A mock that answers 200 `contentType`, writes `first`, then `next()` every `everyMs` until the client leaves. */
async function endless(
  contentType: string,
  first: string | undefined,
  next: () => string,
  everyMs: number,
): Promise<Mock> {
  const timers: NodeJS.Timeout[] = [];
  const up = await mock((_req, res) => {
    res.writeHead(200, { 'content-type': contentType });
    if (first !== undefined) res.write(first);
    const t = setInterval(() => res.write(next()), everyMs);
    timers.push(t);
    res.on('close', () => clearInterval(t));
  });
  track({ close: () => timers.forEach(clearInterval) });
  return up;
}

interface Answer {
  status: number;
  headers: Record<string, string>;
  raw: Buffer;
  text: string;
  json: Json;
}

async function send(
  gw: TestGateway,
  opts: {
    method?: 'GET' | 'POST' | 'DELETE' | 'HEAD' | 'OPTIONS';
    path?: string;
    headers?: Record<string, string>;
    body?: string | Buffer | Json;
    signal?: AbortSignal;
  } = {},
): Promise<Answer> {
  const body =
    opts.body === undefined || typeof opts.body === 'string' || Buffer.isBuffer(opts.body)
      ? opts.body
      : JSON.stringify(opts.body);
  const res = await request(`${gw.url}${opts.path ?? '/v1/chat/completions'}`, {
    method: opts.method ?? 'POST',
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...opts.headers },
    body,
    signal: opts.signal,
  });
  const raw = Buffer.from(await res.body.arrayBuffer());
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) headers[k] = Array.isArray(v) ? v.join(',') : String(v);
  const text = raw.toString('utf8');
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    /* not JSON */
  }
  return { status: res.statusCode, headers, raw, text, json };
}

/** Writes raw bytes, then waits; resolves with what came back and when the connection closed (if it did). */
function rawExchange(
  url: string,
  write: (s: Socket) => void,
  waitMs: number,
): Promise<{ text: string; ms: number; closed: boolean }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const t0 = performance.now();
    const socket = connect(Number(port), hostname, () => write(socket));
    let text = '';
    let closed = false;
    socket.on('data', (d) => (text += d.toString()));
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ text, ms: performance.now() - t0, closed });
    };
    socket.on('close', () => {
      closed = true;
      done();
    });
    socket.on('error', () => undefined);
    const timer = setTimeout(done, waitMs);
  });
}

function errorOf(a: Answer): { message?: unknown; type?: unknown; param?: unknown; code?: unknown } {
  return (a.json.error ?? {}) as { message?: unknown; type?: unknown; param?: unknown; code?: unknown };
}

/** Every response body decoded as the client would read it (content-encoding undone). */
function decoded(a: Answer): string {
  const enc = (a.headers['content-encoding'] ?? '').toLowerCase();
  try {
    if (enc === 'gzip') return gunzipSync(a.raw).toString('utf8');
    if (enc === 'br') return brotliDecompressSync(a.raw).toString('utf8');
    if (enc === 'deflate') return inflateSync(a.raw).toString('utf8');
  } catch {
    /* not what it says */
  }
  return a.text;
}

/** All strings inside a JSON text, unescaped, joined: what a client's JSON.parse gives it. */
function jsonStrings(text: string): string {
  const out: string[] = [];
  const walk = (v: unknown): void => {
    if (typeof v === 'string') out.push(v);
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v !== null && typeof v === 'object')
      for (const [k, x] of Object.entries(v)) {
        out.push(k);
        walk(x);
      }
  };
  for (const piece of [text, ...text.split('\n').map((l) => l.replace(/^data:\s?/, ''))]) {
    try {
      walk(JSON.parse(piece));
    } catch {
      /* not JSON */
    }
  }
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------------------
describe('§8 requests: known OpenAI fields with a wrong type or an impossible value', () => {
  /** [label, the param the 400 must name (contained), the fields to set over a valid body]. */
  type Case = [string, string, Json];
  const run = async (
    cases: Case[],
    bodyOf: (over: Json) => string = (o) => JSON.stringify({ model: 'r', messages: MSGS, ...o }),
  ) => {
    const { gw, up } = await single();
    const failures: string[] = [];
    for (const [label, param, over] of cases) {
      const a = await send(gw, { body: bodyOf(over) });
      const e = errorOf(a);
      if (a.status !== 400 || e.type !== 'invalid_request_error' || !String(e.param).includes(param))
        failures.push(`${label}: ${a.status} param=${String(e.param)} ${a.text.slice(0, 120)}`);
    }
    // SPEC §8: "rejected with 400 naming the field before any upstream is called"
    return { failures, hits: up.hits() };
  };

  it('messages and their parts', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type or an impossible value (`messages` not a list, unknown `role` ...) are rejected with 400 naming the field"
    const { failures, hits } = await run([
      ['messages a string', 'messages', { messages: 'hi' }],
      ['messages an object', 'messages', { messages: { role: 'user', content: 'hi' } }],
      ['messages null', 'messages', { messages: null }],
      ['a message that is a number', 'messages[0]', { messages: [42] }],
      ['a message without role', 'messages[0].role', { messages: [{ content: 'x' }] }],
      ['role __proto__', 'messages[0].role', { messages: [{ role: '__proto__', content: 'x' }] }],
      ['role constructor', 'messages[0].role', { messages: [{ role: 'constructor', content: 'x' }] }],
      ['role toString', 'messages[0].role', { messages: [{ role: 'toString', content: 'x' }] }],
      ['role a number', 'messages[0].role', { messages: [{ role: 1, content: 'x' }] }],
      ['content a number', 'messages[0].content', { messages: [{ role: 'user', content: 42 }] }],
      ['content an object', 'messages[0].content', { messages: [{ role: 'user', content: { text: 'x' } }] }],
      [
        'a text part whose text is a number',
        'messages[0].content[0]',
        { messages: [{ role: 'user', content: [{ type: 'text', text: 42 }] }] },
      ],
      [
        'a content part that is a string',
        'messages[0].content[0]',
        { messages: [{ role: 'user', content: ['hi'] }] },
      ],
      [
        'an image part whose image_url is a number',
        'messages[0].content[0]',
        { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 5 }] }] },
      ],
      [
        'assistant tool_calls a string',
        'messages[1].tool_calls',
        { messages: [...MSGS, { role: 'assistant', content: null, tool_calls: 'x' }] },
      ],
    ]);
    expect(failures).toEqual([]);
    expect(hits).toBe(0);
  });

  it('tools and tool_choice', async () => {
    // SPEC §8: "(... malformed `tools`) are rejected with 400 naming the field before any upstream is called"
    const tool = {
      type: 'function',
      function: { name: 'f', parameters: { type: 'object', properties: {} } },
    };
    const { failures, hits } = await run([
      ['tools an object', 'tools', { tools: { f: tool } }],
      ['tools a string', 'tools', { tools: 'f' }],
      ['a tool that is a string', 'tools[0]', { tools: ['f'] }],
      ['a tool without function', 'tools[0]', { tools: [{ type: 'function' }] }],
      [
        'a tool function without name',
        'tools[0].function',
        { tools: [{ type: 'function', function: { parameters: {} } }] },
      ],
      [
        'a tool function name a number',
        'tools[0].function',
        { tools: [{ type: 'function', function: { name: 5 } }] },
      ],
      [
        'parameters a string',
        'tools[0].function.parameters',
        { tools: [{ type: 'function', function: { name: 'f', parameters: '{"type":"object"}' } }] },
      ],
      [
        'parameters an array',
        'tools[0].function.parameters',
        { tools: [{ type: 'function', function: { name: 'f', parameters: [] } }] },
      ],
      ['tool_choice a number', 'tool_choice', { tools: [tool], tool_choice: 5 }],
      ['tool_choice an unknown word', 'tool_choice', { tools: [tool], tool_choice: 'sometimes' }],
      [
        'tool_choice naming a function that is not in tools',
        'tool_choice',
        { tools: [tool], tool_choice: { type: 'function', function: { name: 'missing' } } },
      ],
    ]);
    expect(failures).toEqual([]);
    expect(hits).toBe(0);
  });

  it('n, max_tokens, max_completion_tokens and stream', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type or an impossible value (... `n < 1`, negative `max_tokens`, `stream` not a boolean ...) are rejected with 400 naming the field"
    const base = (raw: string) => `{"model":"r","messages":[{"role":"user","content":"hi"}],${raw}}`;
    const cases: Array<[string, string, string]> = [
      ['n 0', 'n', '"n":0'],
      ['n -1', 'n', '"n":-1'],
      ['n 1.5', 'n', '"n":1.5'],
      ['n "2"', 'n', '"n":"2"'],
      ['n 1e400 (Infinity)', 'n', '"n":1e400'],
      ['n null... no: n true', 'n', '"n":true'],
      ['max_tokens -1', 'max_tokens', '"max_tokens":-1'],
      ['max_tokens "10"', 'max_tokens', '"max_tokens":"10"'],
      ['max_tokens 1.5', 'max_tokens', '"max_tokens":1.5'],
      ['max_tokens 1e400 (Infinity)', 'max_tokens', '"max_tokens":1e400'],
      ['max_tokens -1e400', 'max_tokens', '"max_tokens":-1e400'],
      ['max_tokens an object', 'max_tokens', '"max_tokens":{"a":1}'],
      ['max_completion_tokens -5', 'max_completion_tokens', '"max_completion_tokens":-5'],
      ['max_completion_tokens "x"', 'max_completion_tokens', '"max_completion_tokens":"x"'],
      ['stream "true"', 'stream', '"stream":"true"'],
      ['stream 1', 'stream', '"stream":1'],
      ['stream null... no: stream []', 'stream', '"stream":[]'],
    ];
    const { gw, up } = await single();
    const failures: string[] = [];
    for (const [label, param, raw] of cases) {
      const a = await send(gw, { body: base(raw) });
      if (a.status !== 400 || !String(errorOf(a).param).includes(param))
        failures.push(`${label}: ${a.status} param=${String(errorOf(a).param)}`);
    }
    expect(failures).toEqual([]);
    expect(up.hits()).toBe(0);
  });

  it('sampling and format fields: temperature, top_p, penalties, stop, logit_bias, response_format, stream_options, seed, user', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type or an impossible value ... are rejected with 400 naming the field before any upstream is called"
    const { failures, hits } = await run([
      ['temperature "hot"', 'temperature', { temperature: 'hot' }],
      ['temperature -1', 'temperature', { temperature: -1 }],
      ['temperature 5', 'temperature', { temperature: 5 }],
      ['top_p "x"', 'top_p', { top_p: 'x' }],
      ['top_p 3', 'top_p', { top_p: 3 }],
      ['presence_penalty "x"', 'presence_penalty', { presence_penalty: 'x' }],
      ['frequency_penalty 10', 'frequency_penalty', { frequency_penalty: 10 }],
      ['stop a number', 'stop', { stop: 5 }],
      ['stop an array of numbers', 'stop', { stop: [1, 2] }],
      ['stop an object', 'stop', { stop: { a: 1 } }],
      ['logit_bias an array', 'logit_bias', { logit_bias: [1, 2] }],
      ['logit_bias a string', 'logit_bias', { logit_bias: 'x' }],
      ['logit_bias a value out of [-100, 100]', 'logit_bias', { logit_bias: { '50256': 500 } }],
      ['response_format a string', 'response_format', { response_format: 'json' }],
      ['stream_options a string', 'stream_options', { stream: true, stream_options: 'x' }],
      ['seed "abc"', 'seed', { seed: 'abc' }],
      ['user a number', 'user', { user: 42 }],
      ['parallel_tool_calls "yes"', 'parallel_tool_calls', { parallel_tool_calls: 'yes' }],
      ['logprobs "yes"', 'logprobs', { logprobs: 'yes' }],
      ['top_logprobs -1', 'top_logprobs', { logprobs: true, top_logprobs: -1 }],
    ]);
    expect(failures).toEqual([]);
    expect(hits).toBe(0);
  });

  it('model of a wrong type is a 400 naming model, not a 404 or a 500', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type ... are rejected with 400 naming the field"
    const { failures, hits } = await run([
      ['model a number', 'model', { model: 42 }],
      ['model null', 'model', { model: null }],
      ['model an array', 'model', { model: ['r'] }],
      ['model an object', 'model', { model: { toString: 'r' } }],
    ]);
    expect(failures).toEqual([]);
    expect(hits).toBe(0);
  });

  it('embeddings: input and the other known fields of a wrong type are a 400 naming the field, calling nothing', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type or an impossible value ... are rejected with 400 naming the field before any upstream is called"
    const up = await mock();
    const gw = await gatewayOf({
      providers: [provider('e', up.url, { models: [{ name: 'm', capabilities: ['embeddings'] }] })],
      routes: { emb: { strategy: 'priority', targets: ['e/m'] } },
    });
    const failures: string[] = [];
    for (const [label, param, over] of [
      ['input missing', 'input', { input: undefined }],
      ['input a number', 'input', { input: 42 }],
      ['input an object', 'input', { input: { text: 'x' } }],
      ['input null', 'input', { input: null }],
      ['input an array of objects', 'input', { input: [{ a: 1 }] }],
      ['encoding_format a number', 'encoding_format', { encoding_format: 5 }],
      ['dimensions -1', 'dimensions', { dimensions: -1 }],
      ['model a number', 'model', { model: 5 }],
    ] as Array<[string, string, Json]>) {
      const a = await send(gw, { path: '/v1/embeddings', body: { model: 'emb', input: 'x', ...over } });
      if (a.status !== 400 || !String(errorOf(a).param).includes(param))
        failures.push(`${label}: ${a.status} param=${String(errorOf(a).param)}`);
    }
    expect(failures).toEqual([]);
    expect(up.hits()).toBe(0);
  });

  it('valid values of the same fields, and unknown fields, still reach the upstream untouched', async () => {
    // SPEC §8: "unknown fields still pass through"
    const { gw, up } = await single();
    const body = {
      model: 'r',
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: [{ type: 'text', text: 'hi' }] },
      ],
      n: 1,
      max_tokens: 10,
      temperature: 0,
      top_p: 1,
      stop: ['\n'],
      logit_bias: { '50256': -100 },
      response_format: { type: 'json_object' },
      seed: 1,
      user: 'u',
      tools: [{ type: 'function', function: { name: '__proto__', parameters: { type: 'object' } } }],
      tool_choice: 'auto',
      x_unknown: { nested: [1, { constructor: 'prototype' }] },
    };
    const a = await send(gw, { body });
    expect(a.status).toBe(200);
    expect(up.hits()).toBe(1);
    const seen = JSON.parse(up.bodies[0]!) as Json;
    expect(seen.x_unknown).toEqual(body.x_unknown);
    expect(seen.tools).toEqual(body.tools);
  });

  it('values other servers take pass too: their response_format types, Mistral’s "any", allowed_tools', async () => {
    const { gw, up } = await single();
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    for (const over of [
      { response_format: { type: 'structural_tag', structures: [] } }, // SGLang, vLLM
      { stream_options: { include_usage: true } }, // without stream: meaningless, not impossible
      { tools, tool_choice: 'any' },
      { tools, tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'auto', tools: [] } } },
      { tools, tool_choice: { type: 'function', function: { name: 'f' } } },
      { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'https://x/y.png' }] }] },
    ]) {
      const a = await send(gw, { body: { model: 'r', messages: MSGS, ...over } });
      expect(a.status, JSON.stringify(over)).toBe(200);
    }
    expect(up.hits()).toBe(6);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 requests: body framing, media types and encodings', () => {
  it('application/json with charset or in another case is accepted; other media types get 415 and call nothing', async () => {
    // SPEC §8: "Bodies that are not `application/json` get 415"
    const { gw, up } = await single();
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    for (const ct of [
      'application/json; charset=utf-8',
      'Application/JSON',
      'application/json;charset=UTF-8',
    ]) {
      const a = await send(gw, { body, headers: { 'content-type': ct } });
      expect(a.status, ct).toBe(200);
    }
    const hitsBefore = up.hits();
    const refused: string[] = [];
    for (const ct of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/jsonx',
      'text/json',
      'application/xml',
    ]) {
      const a = await send(gw, { body, headers: { 'content-type': ct } });
      if (a.status !== 415 || errorOf(a).type === undefined)
        refused.push(`${ct}: ${a.status} ${a.text.slice(0, 100)}`);
    }
    // No content-type at all, with a JSON body.
    const none = await rawExchange(
      gw.url,
      (s) =>
        s.write(
          `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
        ),
      3000,
    );
    if (!/^HTTP\/1\.1 415/.test(none.text)) refused.push(`no content-type: ${none.text.slice(0, 40)}`);
    expect(refused).toEqual([]);
    expect(up.hits()).toBe(hitsBefore);
  });

  it('content-encoding: identity is no encoding; br, deflate, an unknown one and a list are refused, calling nothing', async () => {
    // SPEC §8: "an unsupported `content-encoding` is refused"
    const { gw, up } = await single();
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    const ident = await send(gw, { body, headers: { 'content-encoding': 'identity' } });
    expect(ident.status).toBe(200);
    const before = up.hits();
    const wrong: string[] = [];
    for (const [enc, bytes] of [
      ['br', brotliCompressSync(body)],
      ['deflate', deflateSync(body)],
      ['x-snappy', Buffer.from(body)],
      ['gzip, identity', gzipSync(body)],
      ['GZIP', gzipSync(body)],
    ] as const) {
      const a = await send(gw, { body: bytes, headers: { 'content-encoding': enc } });
      // Refused (4xx), or — if the gateway decodes it — decoded correctly; never garbage sent upstream.
      if (a.status >= 500 || (a.status === 200 && up.bodies.at(-1) !== body))
        wrong.push(`${enc}: ${a.status}`);
      if (a.status >= 400 && errorOf(a).type === undefined)
        wrong.push(`${enc}: not OpenAI-shaped ${a.text.slice(0, 80)}`);
    }
    expect(wrong).toEqual([]);
    for (const b of up.bodies.slice(before)) expect(() => JSON.parse(b) as unknown).not.toThrow();
  });

  it('body_limit_bytes is exact: a body of the limit passes, one byte more is a 413, chunked or not', async () => {
    // README: "`server.body_limit_bytes` | 10 MiB | larger bodies get 413"
    const LIMIT = 1000;
    const { gw, up } = await single(undefined, { body_limit_bytes: LIMIT });
    const make = (size: number) => {
      const shell = JSON.stringify({ model: 'r', messages: [{ role: 'user', content: '' }] });
      return shell.replace('"content":""', `"content":"${'x'.repeat(size - shell.length)}"`);
    };
    expect(make(LIMIT).length).toBe(LIMIT);
    expect((await send(gw, { body: make(LIMIT) })).status).toBe(200);
    const over = await send(gw, { body: make(LIMIT + 1) });
    expect(over.status).toBe(413);
    expect(errorOf(over).type).toBeDefined();
    const hits = up.hits();
    // Chunked, past the limit: 413, and nothing reaches the upstream.
    const chunked = await rawExchange(
      gw.url,
      (s) => {
        const b = make(LIMIT + 500);
        s.write(
          `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n`,
        );
        for (let i = 0; i < b.length; i += 300) {
          const part = b.slice(i, i + 300);
          s.write(`${part.length.toString(16)}\r\n${part}\r\n`);
        }
        s.write('0\r\n\r\n');
      },
      3000,
    );
    expect(chunked.text).toMatch(/^HTTP\/1\.1 413/);
    // A content-length far past the limit, with only a little sent: refused at once, not waited for.
    const declared = await rawExchange(
      gw.url,
      (s) =>
        s.write(
          `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n{"model":"r"`,
        ),
      3000,
    );
    expect(declared.text).toMatch(/^HTTP\/1\.1 413/);
    expect(declared.ms).toBeLessThan(2500);
    expect(up.hits()).toBe(hits);
  });

  it('a duplicate "model" key cannot smuggle an unconfigured model to the upstream', async () => {
    // SPEC §1: "a route: a model name that clients send ... maps to a set of upstreams" — the upstream must get its configured model, whatever the client's duplicates say
    const { gw, up } = await single();
    const variants = [
      '{"model":"o1-pro-SMUGGLED","messages":[{"role":"user","content":"hi"}],"model":"r"}',
      '{"model":"r","messages":[{"role":"user","content":"hi"}],"model":"r","\\u006dodel":"r"}',
      '{"\\u006dodel":"o1-pro-SMUGGLED","model":"r","messages":[{"role":"user","content":"hi"}]}',
      '{"\\u006dodel":"r","messages":[{"role":"user","content":"hi"}]}',
      '{ "model" : "r" , "messages":[{"role":"user","content":"hi"}]}',
    ];
    const wrong: string[] = [];
    for (const v of variants) {
      const a = await send(gw, { body: v });
      if (a.status !== 200) {
        if (a.status !== 400) wrong.push(`${v}: ${a.status}`);
        continue;
      }
      const sent = up.bodies.at(-1)!;
      const parsed = JSON.parse(sent) as Json;
      // Whatever JSON parser the upstream uses (last or first duplicate wins), it must read "m".
      if (parsed.model !== 'm' || sent.includes('SMUGGLED') || /"model"\s*:\s*"r"/.test(sent))
        wrong.push(`${v}\n  -> upstream got ${sent}`);
    }
    expect(wrong).toEqual([]);
  });

  it('content-length together with transfer-encoding (request smuggling) is refused, calling nothing', async () => {
    // SPEC §8: "hostile bodies" — an ambiguous frame must never reach an upstream as a second request
    const { gw, up } = await single();
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    const smuggled = `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`;
    const r = await rawExchange(
      gw.url,
      (s) =>
        s.write(
          `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
        ),
      2000,
    );
    expect(r.text).toMatch(/^HTTP\/1\.1 400/);
    expect(r.text).not.toMatch(/HTTP\/1\.1 200/);
    expect(up.hits()).toBe(0);
  });

  it('${VAR} substitution is one pass: a variable whose value looks like ${OTHER} is sent as it is', async () => {
    // SPEC §8: "`${VAR}` substitution happens on parsed scalar values in one pass (a value is data: it can never add a key)"
    const up = await mock();
    const yaml = [
      'providers:',
      `  - { name: a, base_url: "${up.url}/v1", api_key: "\${A}", models: [{ name: m }] }`,
      'routes:',
      '  r: { strategy: priority, targets: [a/m] }',
    ].join('\n');
    const gw = await gatewayOf(yaml, { A: '${B}', B: 'expanded-twice' });
    const a = await send(gw, { body: { model: 'r', messages: MSGS } });
    expect(a.status).toBe(200);
    expect(up.heads[0]?.authorization).toBe('Bearer ${B}');
  });

  it('a byte-order mark, invalid UTF-8 and lone surrogates give a clear 200 or 400, never a 5xx', async () => {
    // SPEC §4: "Errors are always OpenAI-shaped"
    const { gw } = await single();
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    const cases: Array<[string, Buffer]> = [
      ['BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(body)])],
      ['invalid UTF-8', Buffer.from(body.replace('"hi"', '"h\u0000i"').replace('\u0000', ''), 'utf8')],
      [
        '0xff in a string',
        Buffer.concat([
          Buffer.from('{"model":"r","messages":[{"role":"user","content":"'),
          Buffer.from([0xff, 0xfe]),
          Buffer.from('"}]}'),
        ]),
      ],
      [
        'lone surrogate escape',
        Buffer.from('{"model":"r","messages":[{"role":"user","content":"\\ud800"}]}'),
      ],
      ['NUL in model', Buffer.from('{"model":"r\\u0000","messages":[{"role":"user","content":"x"}]}')],
    ];
    const wrong: string[] = [];
    for (const [label, bytes] of cases) {
      const a = await send(gw, { body: bytes });
      if (a.status >= 500 || (a.status >= 400 && errorOf(a).type === undefined))
        wrong.push(`${label}: ${a.status} ${a.text.slice(0, 100)}`);
    }
    expect(wrong).toEqual([]);
  });

  it('JSON nesting is bounded: 100 000 levels inside an unknown field is a 400, and the gateway still serves', async () => {
    // SPEC §8: "JSON nesting is bounded"
    const { gw, up } = await single(undefined, { body_limit_bytes: 4 * 1024 * 1024 });
    const deepArr = `{"model":"r","messages":[{"role":"user","content":"x"}],"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`;
    const deepObj = `{"model":"r","messages":[{"role":"user","content":"x"}],"x":${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}}`;
    const deepTool = `{"model":"r","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}}}]}`;
    for (const [label, b] of [
      ['arrays', deepArr],
      ['objects', deepObj],
      ['tool parameters', deepTool],
    ] as const) {
      const a = await send(gw, { body: b });
      expect(a.status, label).toBe(400);
      expect(errorOf(a).type, label).toBe('invalid_request_error');
    }
    expect(up.hits()).toBe(0);
    expect((await send(gw, { body: { model: 'r', messages: MSGS } })).status).toBe(200);
  });

  it('a body of 50 000 tiny messages is answered quickly (bounded work), not stalled', async () => {
    // SPEC §8: "hostile bodies" — bounded work per request
    const { gw, up } = await single(undefined, { body_limit_bytes: 8 * 1024 * 1024 });
    const messages = Array.from({ length: 50_000 }, () => ({ role: 'user', content: 'x' }));
    const t0 = performance.now();
    const a = await send(gw, { body: { model: 'r', messages } });
    expect([200, 400]).toContain(a.status);
    expect(performance.now() - t0).toBeLessThan(4000);
    if (a.status === 200) expect(up.hits()).toBe(1);
  });

  it('__proto__ and constructor keys in a body are plain data: they do not turn on stream or change the model', async () => {
    // SPEC §8: "`__proto__`/`constructor` anywhere (model names, header values) are plain strings, never lookups"
    const { gw, up } = await single();
    const a = await send(gw, {
      body: '{"model":"r","messages":[{"role":"user","content":"hi"}],"__proto__":{"stream":true,"model":"a/zzz","n":0,"max_tokens":-1}}',
    });
    expect(a.status).toBe(200);
    expect(a.headers['content-type']).toMatch(/application\/json/);
    expect(a.json.object).toBe('chat.completion');
    const b = await send(gw, {
      body: '{"model":"r","messages":[{"role":"user","content":"hi"}],"constructor":{"prototype":{"polluted":"yes"}},"__proto__":{"polluted":"yes"}}',
    });
    expect(b.status).toBe(200);
    expect(({} as Json).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
    expect(up.hits()).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 prototype names as model names and header values', () => {
  async function setupTiered() {
    const a = await mock();
    const b = await mock();
    const gw = await gatewayOf({
      providers: [provider('a', a.url), provider('b', b.url)],
      routes: {
        r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
        t: {
          strategy: 'priority',
          tiers: { fast: ['a/m'], deep: ['b/m'] },
          rules: [{ if: { max_prompt_tokens: 1_000_000 }, tier: 'fast' }],
          default_tier: 'fast',
          router: { tier: 'fast', timeout_ms: 500 },
        },
        e: { strategy: 'priority', targets: ['a/m'] },
      },
    });
    return { gw, a, b };
  }
  const NAMES = [
    '__proto__',
    'constructor',
    'prototype',
    'toString',
    'hasOwnProperty',
    'valueOf',
    '__defineGetter__',
  ];

  it('as a model (route, provider/model, either half): 404 model_not_found, calling nothing', async () => {
    // SPEC §8: "`__proto__`/`constructor` anywhere (model names, header values) are plain strings, never lookups"
    const { gw, a, b } = await setupTiered();
    const wrong: string[] = [];
    for (const n of NAMES)
      for (const model of [n, `${n}/m`, `a/${n}`, `${n}/${n}`]) {
        const r = await send(gw, { body: { model, messages: MSGS } });
        if (r.status !== 404 || errorOf(r).code !== 'model_not_found')
          wrong.push(`${model}: ${r.status} ${r.text.slice(0, 80)}`);
      }
    expect(wrong).toEqual([]);
    expect(a.hits() + b.hits()).toBe(0);
  });

  it('as /v1/models/{id} and /v1/embeddings model: 404, never a 200 or a 500', async () => {
    // SPEC §8: "`__proto__`/`constructor` anywhere ... are plain strings, never lookups"
    const { gw } = await setupTiered();
    const wrong: string[] = [];
    for (const n of NAMES) {
      const m = await send(gw, { method: 'GET', path: `/v1/models/${encodeURIComponent(n)}` });
      if (m.status !== 404) wrong.push(`/v1/models/${n}: ${m.status} ${m.text.slice(0, 80)}`);
      const e = await send(gw, { path: '/v1/embeddings', body: { model: n, input: 'x' } });
      if (e.status !== 404) wrong.push(`embeddings ${n}: ${e.status} ${e.text.slice(0, 80)}`);
      const x = await send(gw, { path: '/router/explain', body: { model: n, messages: MSGS } });
      if (x.status !== 404 && x.status !== 400)
        wrong.push(`explain ${n}: ${x.status} ${x.text.slice(0, 80)}`);
    }
    expect(wrong).toEqual([]);
  });

  it('as x-router-strategy, x-router-provider or x-router-tier: 400 naming the header, calling nothing', async () => {
    // SPEC §8: "Unknown `x-router-strategy`, `x-router-tier` or `x-router-provider` values → 400."
    const { gw, a, b } = await setupTiered();
    const wrong: string[] = [];
    for (const n of NAMES)
      for (const [header, model] of [
        ['x-router-strategy', 'r'],
        ['x-router-provider', 'r'],
        ['x-router-tier', 't'],
      ] as const) {
        const r = await send(gw, { body: { model, messages: MSGS }, headers: { [header]: n } });
        if (r.status !== 400 || !String(errorOf(r).param).includes(header))
          wrong.push(`${header}: ${n} -> ${r.status} param=${String(errorOf(r).param)}`);
      }
    expect(wrong).toEqual([]);
    expect(a.hits() + b.hits()).toBe(0);
  });

  it('the same headers on /router/explain are refused too, not looked up', async () => {
    // SPEC §8: "Unknown `x-router-strategy`, `x-router-tier` or `x-router-provider` values → 400."
    const { gw } = await setupTiered();
    const wrong: string[] = [];
    for (const [header, model] of [
      ['x-router-strategy', 'r'],
      ['x-router-provider', 'r'],
      ['x-router-tier', 't'],
    ] as const) {
      for (const n of ['__proto__', 'constructor', 'nonsense']) {
        const r = await send(gw, {
          path: '/router/explain',
          body: { model, messages: MSGS },
          headers: { [header]: n },
        });
        if (r.status !== 400) wrong.push(`${header}: ${n} -> ${r.status} ${r.text.slice(0, 100)}`);
      }
    }
    expect(wrong).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 auth on odd paths and methods', () => {
  const CLIENT = 'client-key-AUDIT-1';
  const ADMIN = 'admin-key-AUDIT-1';
  async function setup() {
    const up = await mock();
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT], admin_key: ADMIN, passthrough: 'a' },
      providers: [provider('a', up.url, { api_key: 'sk-up-AUDIT' })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    return { gw, up };
  }

  it('path variants of /v1/* (trailing slash, double slash, dot segments, case, ;params) never serve without a key', async () => {
    // SPEC §8: "every `/v1/*` path needs a client key when `server.api_keys` is set, passthrough included"
    const { gw, up } = await setup();
    const wrong: string[] = [];
    for (const path of [
      '/v1/chat/completions/',
      '//v1/chat/completions',
      '/v1//chat/completions',
      '/V1/chat/completions',
      '/v1/./chat/completions',
      '/v1/x/../chat/completions',
      '/x/../v1/chat/completions',
      '/v1/chat/completions;a=b',
      '/v1/chat/completions?',
      '/v1',
      '/v1/',
      '/v1/files/',
      '//v1/files',
      '/v1%2Ffiles',
      '/v1/%2e%2e/v1/files',
    ]) {
      for (const method of ['GET', 'POST'] as const) {
        const r = await send(gw, {
          method,
          path,
          body: method === 'POST' ? { model: 'r', messages: MSGS } : undefined,
        });
        if (r.status < 400 || r.status >= 500)
          wrong.push(`${method} ${path}: ${r.status} ${r.text.slice(0, 80)}`);
        if (r.text.includes('chat.completion')) wrong.push(`${method} ${path}: served an answer`);
      }
    }
    expect(wrong).toEqual([]);
    expect(up.hits()).toBe(0);
  });

  it('path variants of /router/* and HEAD/OPTIONS never give data without the admin key', async () => {
    // SPEC §8: "without it `/router/*` gives 401 and no data"
    const { gw } = await setup();
    const wrong: string[] = [];
    for (const [method, path] of [
      ['GET', '/router/status/'],
      ['GET', '//router/status'],
      ['GET', '/ROUTER/STATUS'],
      ['GET', '/router/./status'],
      ['GET', '/x/../router/status'],
      ['GET', '/router/status;x'],
      ['GET', '/router//status'],
      ['HEAD', '/router/status'],
      ['OPTIONS', '/router/status'],
      ['POST', '/router/explain/'],
      ['GET', '/router/status?x-admin-key=' + ADMIN],
    ] as const) {
      const r = await send(gw, {
        method,
        path,
        headers: { authorization: `Bearer ${CLIENT}` },
        body: method === 'POST' ? { model: 'r', messages: MSGS } : undefined,
      });
      const leaks = r.text.includes('a/m') || r.text.includes('breaker') || r.text.includes('candidates');
      if ((r.status >= 200 && r.status < 400) || leaks)
        wrong.push(`${method} ${path}: ${r.status} ${r.text.slice(0, 80)}`);
    }
    expect(wrong).toEqual([]);
  });

  it('the Bearer scheme with a tab, a key differing only in case, a prefix of the key or the key twice is refused', async () => {
    // SPEC §8: "the `Bearer` scheme is case-insensitive" — the key itself is not
    const { gw, up } = await setup();
    const wrong: string[] = [];
    for (const h of [
      `Bearer ${CLIENT.toUpperCase()}`,
      `Bearer ${CLIENT.slice(0, -1)}`,
      `Bearer ${CLIENT}${CLIENT}`,
      `Bearer ${CLIENT},Bearer x`,
      `Bearer x ${CLIENT}`,
      `Bearer${CLIENT}`,
      `${CLIENT} Bearer`,
    ]) {
      const r = await send(gw, { body: { model: 'r', messages: MSGS }, headers: { authorization: h } });
      if (r.status !== 401) wrong.push(`${h}: ${r.status}`);
    }
    expect(wrong).toEqual([]);
    expect(up.hits()).toBe(0);
    const ok = await send(gw, {
      body: { model: 'r', messages: MSGS },
      headers: { authorization: `Bearer\t${CLIENT}` },
    });
    expect([200, 401]).toContain(ok.status); // either reading is fine; no 5xx
  });

  it('the admin key is not a client key and the client key in x-admin-key is not an admin key', async () => {
    // SPEC §8: "the admin key is sent as `Authorization: Bearer` or `x-admin-key`, and without it `/router/*` gives 401 and no data"
    const { gw } = await setup();
    const r = await send(gw, { method: 'GET', path: '/router/status', headers: { 'x-admin-key': CLIENT } });
    expect(r.status).toBe(401);
    const both = await send(gw, {
      method: 'GET',
      path: '/router/status',
      headers: { authorization: `Bearer ${CLIENT}`, 'x-admin-key': `${ADMIN} ` },
    });
    expect([200, 401]).toContain(both.status);
  });

  it('the passthrough never hands the upstream the client key or the admin key, in any header', async () => {
    // SPEC §4: "reverse-proxied ... with that provider's key put in place of the client's"; §8: no configured secret ever leaves the gateway
    const { gw, up } = await setup();
    const r = await send(gw, {
      method: 'GET',
      path: '/v1/files',
      headers: {
        authorization: `Bearer ${CLIENT}`,
        'x-admin-key': ADMIN,
        'api-key': CLIENT,
        'x-api-key': CLIENT,
      },
    });
    expect(r.status).toBe(200);
    expect(up.hits()).toBe(1);
    const sent = JSON.stringify(up.heads[0]);
    expect(up.heads[0]?.authorization).toBe('Bearer sk-up-AUDIT');
    expect(sent.includes(ADMIN), `admin key sent upstream: ${sent}`).toBe(false);
    expect(sent.includes(CLIENT), `client key sent upstream: ${sent}`).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 secrets echoed back by hostile upstreams', () => {
  const KEY = 'sk-AUDIT-$&.*+?(x)[y]{2}|^-SECRET';
  const CLIENT = 'client-AUDIT-SECRET-7';
  const ADMIN = 'admin-AUDIT-SECRET-9';
  const PW = 'pw-AUDIT-SECRET-3';
  const ALL = [KEY, CLIENT, ADMIN, PW];

  function noSecret(where: string, text: string): string[] {
    const out: string[] = [];
    for (const s of ALL) {
      if (text.includes(s)) out.push(`${where}: raw ${s}`);
      if (jsonStrings(text).includes(s)) out.push(`${where}: JSON-decoded ${s}`);
      if (text.includes(encodeURIComponent(s))) out.push(`${where}: URL-encoded ${s}`);
    }
    return out;
  }

  async function gw1(handler: Parameters<typeof mock>[0], passthrough = false) {
    const up = await mock(handler);
    const gw = await gatewayOf(
      {
        server: { api_keys: [CLIENT], admin_key: ADMIN, ...(passthrough ? { passthrough: 'a' } : {}) },
        providers: [provider('a', up.url, { api_key: KEY })],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      },
      {},
    );
    return { gw, up };
  }
  const auth = { authorization: `Bearer ${CLIENT}` };

  const echoes: Array<[string, (req: IncomingMessage, res: ServerResponse) => void]> = [
    [
      'twice in one message (a replace of the first only)',
      (req, res) => {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            error: {
              message: `bad key ${req.headers.authorization} and again ${KEY}`,
              type: 'invalid_request_error',
              param: null,
              code: null,
            },
          }),
        );
      },
    ],
    [
      'JSON-escaped (\\u and \\/ escapes)',
      (_req, res) => {
        const esc = [...KEY].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          `{"error":{"message":"your key ${esc} is bad","type":"invalid_request_error","param":null,"code":null}}`,
        );
      },
    ],
    [
      'in a non-JSON 422 body',
      (_req, res) => {
        res.writeHead(422, { 'content-type': 'text/plain' });
        res.end(`Unprocessable: Authorization: Bearer ${KEY}`);
      },
    ],
    [
      'in a gzip-compressed 400 body',
      (_req, res) => {
        res.writeHead(400, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
        res.end(
          gzipSync(JSON.stringify({ error: { message: `key ${KEY}`, type: 'invalid_request_error' } })),
        );
      },
    ],
    [
      'in an error field other than message (param, code, nested detail)',
      (_req, res) => {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            error: {
              message: 'bad',
              type: 'invalid_request_error',
              param: KEY,
              code: KEY,
              detail: { k: [KEY] },
            },
          }),
        );
      },
    ],
    [
      'in response headers of a 400',
      (_req, res) => {
        res.writeHead(400, {
          'content-type': 'application/json',
          'x-echo-key': KEY,
          'www-authenticate': `Bearer error="${KEY}"`,
        });
        res.end(JSON.stringify({ error: { message: 'bad', type: 'invalid_request_error' } }));
      },
    ],
  ];

  for (const [label, handler] of echoes) {
    it(`a relayed client error with our key ${label}: nowhere in the response or the logs`, async () => {
      // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays (an upstream that echoes our key back must not hand it to the client)"
      const { gw } = await gw1((req, res) => handler(req, res));
      const found: string[] = [];
      for (const stream of [false, true]) {
        const a = await send(gw, { body: { model: 'r', messages: MSGS, stream }, headers: auth });
        expect(a.status, `stream ${stream}`).toBeGreaterThanOrEqual(400);
        found.push(
          ...noSecret(`body (stream ${stream})`, decoded(a)),
          ...noSecret('headers', JSON.stringify(a.headers)),
        );
      }
      found.push(...noSecret('logs', gw.rawLogs()));
      expect(found).toEqual([]);
    });
  }

  it('an error event after content, with our key split across many writes: scrubbed', async () => {
    // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays"
    const { gw } = await gw1((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const text = `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'partial' })}data: ${JSON.stringify({ error: { message: `overloaded for key ${KEY}`, type: 'server_error' } })}\n\n`;
      let i = 0;
      const t = setInterval(() => {
        if (i >= text.length) {
          clearInterval(t);
          res.end();
          return;
        }
        res.write(text.slice(i, i + 7));
        i += 7;
      }, 1);
    });
    const a = await send(gw, { body: { model: 'r', messages: MSGS, stream: true }, headers: auth });
    expect(a.status).toBe(200);
    expect(a.text).toContain('partial');
    expect([...noSecret('stream', a.text), ...noSecret('logs', gw.rawLogs())]).toEqual([]);
  });

  it('an Anthropic error event and a 400, each echoing our x-api-key: scrubbed', async () => {
    // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays"
    const up = await mock((req, res, body) => {
      const parsed = JSON.parse(body) as Json;
      const key = String(req.headers['x-api-key']);
      if (parsed.stream !== true) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            type: 'error',
            error: { type: 'invalid_request_error', message: `x-api-key ${key} lacks access` },
          }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const ev = (type: string, data: Json) =>
        `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
      res.end(
        ev('message_start', {
          message: {
            id: 'm',
            type: 'message',
            role: 'assistant',
            model: 'm',
            content: [],
            usage: { input_tokens: 1, output_tokens: 0 },
          },
        }) +
          ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }) +
          ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'partial' } }) +
          ev('error', { error: { type: 'overloaded_error', message: `overloaded for ${key}` } }),
      );
    });
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT] },
      providers: [
        {
          name: 'c',
          kind: 'anthropic',
          base_url: up.url,
          api_key: KEY,
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['c/m'] } },
    });
    const j = await send(gw, { body: { model: 'r', messages: MSGS }, headers: auth });
    expect(j.status).toBe(400);
    const s = await send(gw, { body: { model: 'r', messages: MSGS, stream: true }, headers: auth });
    expect(s.text).toContain('partial');
    expect(up.heads[0]?.['x-api-key']).toBe(KEY);
    expect([
      ...noSecret('json', j.text),
      ...noSecret('stream', s.text),
      ...noSecret('logs', gw.rawLogs()),
    ]).toEqual([]);
  });

  it('passthrough: an error body (plain, gzip) and response headers that echo our key are scrubbed', async () => {
    // SPEC §8: "no configured secret ... ever appears in a response"; "scrubs every configured secret from any upstream error body it relays"
    const { gw, up } = await gw1((req, res) => {
      const key = String(req.headers.authorization);
      if (req.url?.includes('gz')) {
        res.writeHead(401, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
        res.end(gzipSync(JSON.stringify({ error: { message: `bad ${key}` } })));
      } else if (req.url?.includes('hdr')) {
        res.writeHead(403, {
          'content-type': 'application/json',
          'x-echo-key': key,
          'www-authenticate': `Bearer realm="${KEY}"`,
        });
        res.end('{"error":{"message":"forbidden"}}');
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end(`no such file for ${key}`);
      }
    }, true);
    const found: string[] = [];
    for (const path of ['/v1/files/plain', '/v1/files/gz', '/v1/files/hdr']) {
      const a = await send(gw, { method: 'GET', path, headers: auth });
      expect(a.status, path).toBeGreaterThanOrEqual(400);
      found.push(
        ...noSecret(`${path} body`, decoded(a)),
        ...noSecret(`${path} headers`, JSON.stringify(a.headers)),
      );
    }
    expect(up.hits()).toBe(3);
    found.push(...noSecret('logs', gw.rawLogs()));
    expect(found).toEqual([]);
  });

  it('passthrough: a 200 that echoes our key (as an httpbin-like upstream does) does not hand it to the client', async () => {
    // SPEC §8: "no configured secret (provider keys, ...) ever appears in a response"
    const { gw } = await gw1((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ headers: req.headers }));
    }, true);
    const a = await send(gw, { method: 'GET', path: '/v1/echo', headers: auth });
    expect(a.status).toBe(200);
    expect(noSecret('body', a.text)).toEqual([]);
  });

  it('a password in base_url of an unreachable upstream: not in the 502, the logs, /router/* or /metrics', async () => {
    // SPEC §8: "no configured secret (... a password inside a `base_url`) ever appears in a response, a log line, `/router/*` or `/metrics`"
    const dead = await mock();
    const port = new URL(dead.url).port;
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT], admin_key: ADMIN },
      providers: [
        {
          name: 'a',
          base_url: `http://user:${PW}@127.0.0.1:1/v1`,
          api_key: KEY,
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
        {
          name: 'b',
          base_url: `http://${PW}@127.0.0.1:${port}/v1?token=${PW}`,
          api_key: KEY,
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
      ],
      routes: {
        r: { strategy: 'priority', targets: ['a/m'] },
        s: { strategy: 'priority', targets: ['b/m'] },
      },
    }).catch((e: unknown) => {
      // A config refusal is fine too, as long as its message does not repeat the password.
      expect(String(e)).not.toContain(PW);
      return undefined;
    });
    if (gw === undefined) return;
    const found: string[] = [];
    const a = await send(gw, { body: { model: 'r', messages: MSGS }, headers: auth });
    expect(a.status).toBe(502);
    found.push(...noSecret('502', a.text));
    const b = await send(gw, { body: { model: 's', messages: MSGS }, headers: auth });
    found.push(...noSecret('s', b.text));
    for (const path of ['/router/status', '/metrics'])
      found.push(
        ...noSecret(path, (await send(gw, { method: 'GET', path, headers: { 'x-admin-key': ADMIN } })).text),
      );
    found.push(
      ...noSecret(
        'explain',
        (
          await send(gw, {
            path: '/router/explain',
            body: { model: 'r', messages: MSGS },
            headers: { 'x-admin-key': ADMIN },
          })
        ).text,
      ),
    );
    found.push(...noSecret('logs', gw.rawLogs()));
    expect(found).toEqual([]);
  });

  it('a 5xx that echoes our key on every upstream: the 502 message lists the attempts, never the key', async () => {
    // SPEC §4: "502 `upstream_error` (every attempt failed; the message lists each attempt's upstream and reason, never a key)"
    const h = (req: IncomingMessage, res: ServerResponse) => {
      res.writeHead(500, { 'content-type': 'application/json', 'x-key': KEY });
      res.end(
        JSON.stringify({
          error: { message: `internal: ${req.headers.authorization} / ${encodeURIComponent(KEY)}` },
        }),
      );
    };
    const u1 = await mock(h);
    const u2 = await mock(h);
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT] },
      providers: [provider('a', u1.url, { api_key: KEY }), provider('b', u2.url, { api_key: KEY })],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    const found: string[] = [];
    for (const stream of [false, true]) {
      const a = await send(gw, { body: { model: 'r', messages: MSGS, stream }, headers: auth });
      expect(a.status).toBe(502);
      found.push(...noSecret('502', a.text), ...noSecret('502 headers', JSON.stringify(a.headers)));
    }
    found.push(...noSecret('logs', gw.rawLogs()));
    expect(found).toEqual([]);
  });
  it('an error event after content whose param, code or type carry our key: scrubbed', async () => {
    // SPEC §8: "the gateway scrubs every configured secret from any upstream error body it relays"
    const { gw } = await gw1((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'partial' })}data: ${JSON.stringify({ error: { message: 'boom', type: KEY, param: KEY, code: KEY } })}\n\n`,
      );
    });
    const a = await send(gw, { body: { model: 'r', messages: MSGS, stream: true }, headers: auth });
    expect(a.text).toContain('partial');
    expect([...noSecret('stream', a.text), ...noSecret('logs', gw.rawLogs())]).toEqual([]);
  });

  it('a breaker tripped by errors that echo our key: /router/status shows the cause, never the key', async () => {
    // SPEC §4: "GET /router/status | per upstream: breaker state, ... — never a secret"
    const up = await mock((req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: { message: `db down for ${req.headers.authorization}`, type: KEY, code: KEY },
        }),
      );
    });
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT], admin_key: ADMIN },
      providers: [provider('a', up.url, { api_key: KEY })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      circuit_breaker: { failure_threshold: 2, open_ms: 60_000 },
    });
    for (let i = 0; i < 3; i++) await send(gw, { body: { model: 'r', messages: MSGS }, headers: auth });
    const status = await send(gw, {
      method: 'GET',
      path: '/router/status',
      headers: { 'x-admin-key': ADMIN },
    });
    expect(status.status).toBe(200);
    const metrics = await send(gw, { method: 'GET', path: '/metrics' });
    expect([
      ...noSecret('status', status.text),
      ...noSecret('metrics', metrics.text),
      ...noSecret('logs', gw.rawLogs()),
    ]).toEqual([]);
  });

  it('a parameter refusal that quotes our key: the fit is made, and its warning and /router/status keep no key', async () => {
    // SPEC §8: "no configured secret ... ever appears in ... a log line, `/router/*`"
    const up = await mock((_req, res, body) => {
      const parsed = JSON.parse(body) as Json;
      if ('max_tokens' in parsed) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            error: {
              message: `Unsupported parameter: 'max_tokens' is not supported with this model (key ${KEY}). Use 'max_completion_tokens' instead.`,
              type: 'invalid_request_error',
              param: 'max_tokens',
              code: 'unsupported_parameter',
            },
          }),
        );
        return;
      }
      okJson(_req, res, body);
    });
    const gw = await gatewayOf({
      server: { api_keys: [CLIENT], admin_key: ADMIN },
      providers: [provider('a', up.url, { api_key: KEY })],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const a = await send(gw, { body: { model: 'r', messages: MSGS, max_tokens: 5 }, headers: auth });
    const status = await send(gw, {
      method: 'GET',
      path: '/router/status',
      headers: { 'x-admin-key': ADMIN },
    });
    expect([
      ...noSecret('answer', a.text),
      ...noSecret('status', status.text),
      ...noSecret('logs', gw.rawLogs()),
    ]).toEqual([]);
  });

  it('the only upstream sends an error event (echoing our key) before any content: a 502 without the key', async () => {
    // SPEC §4: "502 `upstream_error` (... the message lists each attempt's upstream and reason, never a key)"
    const { gw } = await gw1((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        `${chunk({ role: 'assistant', content: '' })}data: ${JSON.stringify({ error: { message: `quota for ${KEY}`, type: KEY, code: KEY, param: KEY } })}\n\n`,
      );
    });
    const a = await send(gw, { body: { model: 'r', messages: MSGS, stream: true }, headers: auth });
    expect(a.status).toBeGreaterThanOrEqual(400);
    const j = await send(gw, { body: { model: 'r', messages: MSGS }, headers: auth });
    expect([
      ...noSecret('stream', a.text),
      ...noSecret('json', j.text),
      ...noSecret('logs', gw.rawLogs()),
    ]).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 hostile upstreams at the HTTP level', () => {
  /** `a` misbehaves, `b` answers properly; route r tries a then b. */
  async function pair(bad: NonNullable<Parameters<typeof mock>[0]> | { url: string }, extraA: Json = {}) {
    const a = typeof bad === 'function' ? await mock(bad) : bad;
    const b = await mock();
    const gw = await gatewayOf({
      providers: [provider('a', a.url, extraA), provider('b', b.url)],
      routes: {
        r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
        only: { strategy: 'priority', targets: ['a/m'] },
      },
    });
    return { gw, b };
  }

  it('no redirect status (301, 302, 303, 307, 308) is followed or relayed, on chat or embeddings', async () => {
    // SPEC §8: "redirects are never followed"
    const target = await mock();
    for (const status of [301, 302, 303, 307, 308]) {
      const a = await mock((_req, res) => {
        res.writeHead(status, {
          location: `${target.url}/v1/chat/completions`,
          'content-type': 'application/json',
        });
        res.end('{}');
      });
      const gw = await gatewayOf({
        providers: [
          provider('a', a.url),
          provider('e', a.url, { models: [{ name: 'm', capabilities: ['embeddings'] }] }),
        ],
        routes: {
          r: { strategy: 'priority', targets: ['a/m'] },
          emb: { strategy: 'priority', targets: ['e/m'] },
        },
      });
      const r = await send(gw, { body: { model: 'r', messages: MSGS } });
      expect(r.status, `${status}`).toBeGreaterThanOrEqual(400);
      expect(r.headers.location, `${status}`).toBeUndefined();
      const e = await send(gw, { path: '/v1/embeddings', body: { model: 'emb', input: 'x' } });
      expect(e.status, `emb ${status}`).toBeGreaterThanOrEqual(400);
      expect(e.headers.location).toBeUndefined();
    }
    expect(target.hits()).toBe(0);
  });

  for (const [enc, compress] of [
    ['br', brotliCompressSync],
    ['deflate', deflateSync],
  ] as const) {
    it(`a ${enc}-compressed JSON answer and SSE stream are decoded correctly (or relayed intact)`, async () => {
      // SPEC §8: "compressed answers are relayed intact or decoded correctly"
      const { gw } = await pair((_req, res, body) => {
        const stream = (JSON.parse(body) as Json).stream === true;
        res.writeHead(200, {
          'content-type': stream ? 'text/event-stream' : 'application/json',
          'content-encoding': enc,
        });
        res.end(
          compress(
            stream
              ? `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'squeezed' })}${chunk({}, 'stop')}data: [DONE]\n\n`
              : JSON.stringify(chatAnswer('m', 'squeezed')),
          ),
        );
      });
      const j = await send(gw, { body: { model: 'only', messages: MSGS } });
      expect(j.status).toBe(200);
      expect(decoded(j)).toContain('squeezed');
      const s = await send(gw, { body: { model: 'only', messages: MSGS, stream: true } });
      expect(s.status).toBe(200);
      expect(decoded(s)).toContain('squeezed');
      expect(decoded(s)).toContain('[DONE]');
    });
  }

  it('an unknown content-encoding, or gzip that is really plain text: fail over, never garbage as a 200', async () => {
    // SPEC §8: "compressed answers are relayed intact or decoded correctly"
    for (const [enc, bytes] of [
      ['x-snappy', Buffer.from([1, 2, 3, 4, 250, 251])],
      ['gzip', Buffer.from(JSON.stringify(chatAnswer('m', 'liar')))],
    ] as const) {
      const { gw, b } = await pair((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': enc });
        res.end(bytes);
      });
      const r = await send(gw, { body: { model: 'r', messages: MSGS } });
      // Either served by b, or (relayed intact) a 200 whose bytes decode as they say.
      if (r.headers['x-router-provider'] === 'b') expect(b.hits()).toBe(1);
      else {
        expect(r.status, enc).toBe(200);
        expect(r.headers['content-encoding'], enc).toBe(enc);
      }
    }
  });

  it('an upstream 200 cannot set the x-router-* headers the client sees', async () => {
    // SPEC §4: "Response headers on every routed response: ... `x-router-provider`, ... `x-router-attempts`"
    const { gw } = await pair((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'x-router-provider': 'evil',
        'x-router-attempts': '99',
        'x-router-trail': 'evil/m=fake',
      });
      res.end(JSON.stringify(chatAnswer('m')));
    });
    const r = await send(gw, { body: { model: 'r', messages: MSGS } });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('a');
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(r.headers['x-router-trail'] ?? '').not.toContain('evil');
  });

  it('a 204 or a 205 to a chat request is failed over, not relayed as an empty answer', async () => {
    // SPEC §2 Failover / README: "a 200 with an empty body fails over" — a 2xx without an answer is no answer
    for (const status of [204, 205]) {
      const { gw, b } = await pair((_req, res) => {
        res.writeHead(status);
        res.end();
      });
      const r = await send(gw, { body: { model: 'r', messages: MSGS } });
      expect(r.status, `${status}`).toBe(200);
      expect(r.headers['x-router-provider'], `${status}`).toBe('b');
      expect(b.hits()).toBe(1);
    }
  });

  it('a malformed chunked encoding or a content-length longer than the body (then silence) fails over within the bounds', async () => {
    // SPEC §8: "every upstream wait is bounded by the provider's timeouts"
    const bad = await rawMock((s) => {
      s.write(
        'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nZZZ\r\n{"x"\r\n',
      );
    });
    const { gw, b } = await pair(bad);
    const r = await send(gw, { body: { model: 'r', messages: MSGS } });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(b.hits()).toBe(1);

    const short = await rawMock((s) => {
      const body = JSON.stringify(chatAnswer('m'));
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length + 500}\r\n\r\n${body}`,
      );
    });
    const p2 = await pair(short);
    const t0 = performance.now();
    const r2 = await send(p2.gw, { body: { model: 'r', messages: MSGS } });
    expect(r2.status).toBe(200);
    expect(r2.headers['x-router-provider']).toBe('b');
    expect(performance.now() - t0).toBeLessThan(TIMEOUTS.total_ms + 1500);
  });

  it('response headers trickled a byte at a time, forever: bounded by total_ms', async () => {
    // SPEC §8: "every upstream wait is bounded by the provider's timeouts (a slowloris upstream cannot hold a request past `total_ms`)"
    const timers: NodeJS.Timeout[] = [];
    const slow = await rawMock((s) => {
      s.write('HTTP/1.1 200 OK\r\n');
      const t = setInterval(() => {
        if (!s.destroyed) s.write('x');
      }, 50);
      timers.push(t);
      s.on('close', () => clearInterval(t));
    });
    track({ close: () => timers.forEach(clearInterval) });
    const { gw } = await pair(slow, { timeouts: TOTAL_1200 });
    const t0 = performance.now();
    const r = await send(gw, { body: { model: 'only', messages: MSGS } });
    const ms = performance.now() - t0;
    expect([502, 504]).toContain(r.status);
    expect(ms).toBeLessThan(1200 + 1500);
  });

  it('a JSON body trickled a byte every 50 ms, forever: bounded by total_ms, and the upstream connection dropped', async () => {
    // SPEC §8: "a slowloris upstream cannot hold a request past `total_ms`"
    const up = await endless('application/json', '{"id":"x","choices":[', () => ' ', 50);
    const gw = await onlyWithinTotal(up);
    const t0 = performance.now();
    const r = await send(gw, { body: { model: 'only', messages: MSGS } });
    expect([502, 504]).toContain(r.status);
    expect(performance.now() - t0).toBeLessThan(1200 + 1500);
    await vi.waitFor(() => expect(up.resClosed()).toBe(1), { timeout: 1000 });
  });

  it('a stream trickling content forever is cut at total_ms with an error event and no [DONE]', async () => {
    // SPEC §8: "a slowloris upstream cannot hold a request past `total_ms`"; §2: "ends the stream with an SSE `data: {"error":{...}}` event ... withholds `[DONE]`"
    const up = await endless(
      'text/event-stream',
      chunk({ role: 'assistant', content: '' }),
      () => chunk({ content: 'z' }),
      50,
    );
    const gw = await onlyWithinTotal(up);
    const t0 = performance.now();
    const r = await send(gw, { body: { model: 'only', messages: MSGS, stream: true } });
    expect(performance.now() - t0).toBeLessThan(1200 + 1500);
    expect(r.status).toBe(200);
    expect(r.text).toContain('"error"');
    expect(r.text).not.toContain('[DONE]');
  });

  it('comments and keep-alives forever before any content: no 200 stream, a bounded error', async () => {
    // SPEC §8: "a slowloris upstream cannot hold a request past `total_ms`"
    const up = await endless('text/event-stream', undefined, () => ': keep-alive\n\n', 30);
    const gw = await onlyWithinTotal(up);
    const t0 = performance.now();
    const r = await send(gw, { body: { model: 'only', messages: MSGS, stream: true } });
    expect(performance.now() - t0).toBeLessThan(1200 + 1500);
    expect([502, 504]).toContain(r.status);
    expect(errorOf(r).type).toBeDefined();
  });

  it('an endless 200 JSON body is cut at a bound, not buffered without end', async () => {
    // README: "a compressed answer that inflates past the bound fails over as body_too_large" — a plain body must be bounded too
    let written = 0;
    const up = await mock((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"id":"x","pad":"');
      const block = 'a'.repeat(64 * 1024);
      const pump = (): void => {
        while (!res.destroyed && written < 512 * 1024 * 1024) {
          written += block.length;
          if (!res.write(block)) {
            res.once('drain', pump);
            return;
          }
        }
      };
      res.on('error', () => undefined);
      pump();
    });
    const gw = await gatewayOf({
      providers: [
        provider('a', up.url, {
          timeouts: { connect_ms: 500, first_byte_ms: 2000, idle_ms: 2000, total_ms: 4000 },
        }),
      ],
      routes: { only: { strategy: 'priority', targets: ['a/m'] } },
    });
    const r = await send(gw, { body: { model: 'only', messages: MSGS } });
    expect([502, 504]).toContain(r.status);
    await vi.waitFor(() => expect(up.resClosed()).toBe(1), { timeout: 1000 });
    expect(written).toBeLessThan(256 * 1024 * 1024);
  });

  it('JSON data events that are not chunk objects (null, numbers, strings, arrays) never reach the client', async () => {
    // SPEC §8: "non-JSON `data:` events are dropped, never relayed" — and the OpenAI SDK reads each relayed event as a chunk object
    const { gw } = await pair((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        'data: null\n\ndata: 42\n\ndata: "str"\n\ndata: []\n\ndata: true\n\n' +
          `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'ok' })}data: null\n\n${chunk({}, 'stop')}data: [DONE]\n\n`,
      );
    });
    const r = await send(gw, { body: { model: 'only', messages: MSGS, stream: true } });
    expect(r.status).toBe(200);
    expect(r.text).toContain('ok');
    const events = r.text
      .split('\n')
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).trim())
      .filter((d) => d !== '[DONE]');
    for (const d of events) {
      const v = JSON.parse(d) as unknown;
      expect(v !== null && typeof v === 'object' && !Array.isArray(v), `relayed: ${d}`).toBe(true);
    }
  });

  it('a hostile Retry-After (huge, negative, junk, a past date) never reaches the client as is, and the gateway keeps serving', async () => {
    // SPEC §4: "429 (with `Retry-After` when every candidate is rate limited)" — a Retry-After a client can act on
    const wrong: string[] = [];
    for (const ra of ['99999999999999999999', '-5', 'soon', 'Wed, 21 Oct 2015 07:28:00 GMT', '1e3', 'NaN']) {
      const { gw } = await pair((_req, res) => {
        res.writeHead(429, { 'content-type': 'application/json', 'retry-after': ra, 'retry-after-ms': ra });
        res.end('{"error":{"message":"slow down","type":"rate_limit_error"}}');
      });
      const r = await send(gw, { body: { model: 'only', messages: MSGS } });
      if (r.status !== 429 && r.status !== 502) wrong.push(`${ra}: status ${r.status}`);
      const got = r.headers['retry-after'];
      if (got !== undefined && !(/^\d{1,9}$/.test(got) || !Number.isNaN(Date.parse(got))))
        wrong.push(`${ra}: Retry-After ${got}`);
      const h = await send(gw, { method: 'GET', path: '/healthz' });
      if (h.status !== 200) wrong.push(`${ra}: healthz ${h.status}`);
    }
    expect(wrong).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('§8 slow or vanishing clients', () => {
  it('headers trickled a byte at a time get the connection ended within request_timeout_ms', async () => {
    // SPEC §8: "headers and body must arrive within bounded times"; README: "`server.request_timeout_ms` ... headers and body must arrive within this"
    const { gw, up } = await single(undefined, { request_timeout_ms: 1000 });
    const timers: NodeJS.Timeout[] = [];
    track({ close: () => timers.forEach(clearInterval) });
    const r = await rawExchange(
      gw.url,
      (s) => {
        s.write('POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n');
        const t = setInterval(() => {
          if (!s.destroyed) s.write('x-slow: a\r\n');
        }, 100);
        timers.push(t);
      },
      4500,
    );
    expect(r.closed || /^HTTP\/1\.1 408/.test(r.text)).toBe(true);
    expect(r.ms).toBeLessThan(4000);
    expect(up.hits()).toBe(0);
  });

  it('the upstream is not called before the body has arrived whole; a client gone mid-body calls nothing', async () => {
    // SPEC §2: "request ─► auth ─► validate ─► ..." — nothing is sent upstream for a body that never completed
    const { gw, up } = await single(undefined, { request_timeout_ms: 3000 });
    const body = JSON.stringify({ model: 'r', messages: MSGS });
    const head = `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`;
    const { hostname, port } = new URL(gw.url);
    const s = connect(Number(port), hostname);
    s.on('error', () => undefined);
    let text = '';
    s.on('data', (d) => (text += d.toString()));
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(head + body.slice(0, 20));
    await sleep(300);
    expect(up.hits()).toBe(0);
    s.write(body.slice(20));
    await vi.waitFor(() => expect(text).toMatch(/^HTTP\/1\.1 200/), { timeout: 2000 });
    s.destroy();
    expect(up.hits()).toBe(1);

    const s2 = connect(Number(port), hostname);
    s2.on('error', () => undefined);
    await new Promise<void>((r) => s2.once('connect', () => r()));
    s2.write(head + body.slice(0, 20));
    await sleep(100);
    s2.destroy();
    await sleep(400);
    expect(up.hits()).toBe(1);
    expect((await send(gw, { body })).status).toBe(200);
  });

  it('a client gone while the first upstream stalls: that attempt is aborted at once and no failover is started', async () => {
    // SPEC §8: "a client that disconnects gets its upstream request aborted at once"
    const a = await mock(() => undefined); // never answers
    const b = await mock();
    const gw = await gatewayOf({
      providers: [
        provider('a', a.url, {
          timeouts: { connect_ms: 500, first_byte_ms: 1200, idle_ms: 1200, total_ms: 3000 },
        }),
        provider('b', b.url),
      ],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    const ac = new AbortController();
    const p = send(gw, { body: { model: 'r', messages: MSGS }, signal: ac.signal }).catch(() => undefined);
    await vi.waitFor(() => expect(a.hits()).toBe(1), { timeout: 1000 });
    ac.abort();
    await p;
    await vi.waitFor(() => expect(a.closed()).toBeGreaterThanOrEqual(1), { timeout: 600 });
    await sleep(1500); // past a's first_byte_ms: a failover would have called b by now
    expect(b.hits()).toBe(0);
  });

  it('a client gone while the LLM router is being asked: the router call is aborted at once, nothing else is called', async () => {
    // SPEC §8: "a client that disconnects gets its upstream request aborted at once" — the router's call is an upstream request too
    const router = await mock(() => undefined); // the router model thinks forever
    const deep = await mock();
    const gw = await gatewayOf({
      providers: [
        provider('a', router.url, {
          timeouts: { connect_ms: 500, first_byte_ms: 4000, idle_ms: 4000, total_ms: 4000 },
        }),
        provider('b', deep.url),
      ],
      routes: {
        t: {
          strategy: 'priority',
          tiers: { fast: ['a/m'], deep: ['b/m'] },
          default_tier: 'deep',
          router: { tier: 'fast', timeout_ms: 3000 },
        },
      },
    });
    const ac = new AbortController();
    const p = send(gw, { body: { model: 't', messages: MSGS }, signal: ac.signal }).catch(() => undefined);
    await vi.waitFor(() => expect(router.hits()).toBe(1), { timeout: 1500 });
    ac.abort();
    await p;
    await vi.waitFor(() => expect(router.closed()).toBeGreaterThanOrEqual(1), { timeout: 800 });
    await sleep(300);
    expect(deep.hits()).toBe(0);
  });

  it('a passthrough POST whose client leaves mid-upload: the upstream request is aborted', async () => {
    // SPEC §8: "a client that disconnects gets its upstream request aborted at once"
    const up = await mock();
    const gw = await gatewayOf({
      server: { passthrough: 'a' },
      providers: [provider('a', up.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m'] } },
    });
    const { hostname, port } = new URL(gw.url);
    const s = connect(Number(port), hostname);
    s.on('error', () => undefined);
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(
      `POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n`,
    );
    s.write('x'.repeat(10_000));
    await vi.waitFor(() => expect(up.hits()).toBe(1), { timeout: 1500 });
    s.destroy();
    await vi.waitFor(() => expect(up.resClosed()).toBe(1), { timeout: 1000 });
    expect(up.bodies).toHaveLength(0); // the upload never completed upstream
  });
});
