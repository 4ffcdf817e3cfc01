/**
 * The wire, held to SPEC §2/§4/§8 and to what clients expect: SSE framing from an OpenAI-dialect upstream
 * (CRLF, CR-only, one byte per write, a last event without its blank line), the Anthropic translation of an
 * image tool result and of a full Claude stream, x-router-* headers on a shutdown 503, image_url validation,
 * client aborts, gzip streams, error events after the commit, passthrough paths that climb out of /v1, and
 * request and answer texts (a repeated top-level key, a UTF-8 BOM). Every upstream is a hand-written
 * node:http server (or the simulator) on 127.0.0.1:0.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';

onlyLoopbackFetch();
const track = closeAfterEach();
type Json = Record<string, unknown>;

const SECRET = 'sk-upstream-SECRET-0123456789abcdef';

interface Raw {
  url: string;
  hits: () => number;
  bodies: Json[];
  headers: IncomingMessage['headers'][];
  paths: string[];
  /** Resolves when the n-th request's connection (0-based) closed. */
  closed: (n: number) => Promise<void>;
}

/** An upstream answering each request with `handler` (after its body has been read). */
async function raw(
  handler: (req: IncomingMessage, res: ServerResponse, body: Json, n: number) => void,
): Promise<Raw> {
  const bodies: Json[] = [];
  const headers: IncomingMessage['headers'][] = [];
  const paths: string[] = [];
  const closes: Array<Promise<void>> = [];
  const server = createServer((req, res) => {
    const n = bodies.length;
    let text = '';
    closes[n] = new Promise((r) => res.once('close', () => r()));
    bodies.push({});
    headers.push(req.headers);
    paths.push(req.url ?? '');
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      try {
        bodies[n] = text === '' ? {} : (JSON.parse(text) as Json);
      } catch {
        bodies[n] = { raw: text };
      }
      handler(req, res, bodies[n]!, n);
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => bodies.length,
    bodies,
    headers,
    paths,
    closed: async (n) => {
      for (let i = 0; i < 100 && closes[n] === undefined; i++) await new Promise((r) => setTimeout(r, 20));
      await closes[n];
    },
  };
}

function chunk(delta: Json, finish: string | null = null, extra: Json = {}): string {
  return JSON.stringify({
    id: 'c1',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...extra,
  });
}

/** Writes `pieces` one by one, each in its own TCP write, a few ms apart; then ends (unless `end` is false). */
async function trickle(res: ServerResponse, pieces: Array<string | Buffer>, end = true): Promise<void> {
  for (const p of pieces) {
    if (res.destroyed) return;
    res.write(p);
    await new Promise((r) => setTimeout(r, 2));
  }
  if (end) res.end();
}

/** Every byte of `text` as its own piece. */
function bytes(text: string): Buffer[] {
  const b = Buffer.from(text, 'utf8');
  return [...b].map((x) => Buffer.from([x]));
}

async function gatewayFor(
  providers: Json[],
  targets: string[],
  extra: Json = {},
): Promise<Awaited<ReturnType<typeof startGateway>>> {
  return track(
    await startGateway({
      providers,
      routes: { r: { strategy: 'priority', targets } },
      ...extra,
    }),
  );
}

function openaiProvider(name: string, url: string, extra: Json = {}): Json {
  return { name, kind: 'openai', base_url: `${url}/v1`, api_key: SECRET, models: [{ name: 'm' }], ...extra };
}

function anthropicProvider(name: string, url: string, model = 'claude-sonnet-4-5'): Json {
  return { name, kind: 'anthropic', base_url: url, api_key: SECRET, models: [{ name: model }] };
}

async function post(url: string, body: Json | string, headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

/** The data payloads of an SSE text, in order. */
function events(text: string): string[] {
  return text
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) =>
      e
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(l.startsWith('data: ') ? 6 : 5))
        .join('\n'),
    );
}

function contentOf(text: string): string {
  let out = '';
  for (const e of events(text)) {
    if (e === '[DONE]') continue;
    const j = JSON.parse(e) as { choices?: Array<{ delta?: { content?: string } }> };
    out += j.choices?.[0]?.delta?.content ?? '';
  }
  return out;
}

const USER = [{ role: 'user', content: 'hi' }];

describe('SSE parsing of an OpenAI-dialect upstream', () => {
  it('CRLF events, data: without space, comments, multi-line data, each byte its own TCP write (a UTF-8 character split)', async () => {
    // SPEC §2/§8: whole events are relayed whatever the upstream's framing; an OpenAI SDK client sees the text.
    const text = 'héllo 🌍 wörld';
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const body =
        ': keep-alive comment\r\n\r\n' +
        `data:${chunk({ role: 'assistant', content: '' })}\r\n\r\n` +
        `data: ${chunk({ content: text.slice(0, 7) })}\r\n\r\n` +
        // one event split over two data lines (valid SSE: joined by a newline, still one JSON value)
        `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",\r\ndata: "choices":[{"index":0,"delta":{"content":${JSON.stringify(text.slice(7))}},"finish_reason":null}]}\r\n\r\n` +
        `data: ${chunk({}, 'stop')}\r\n\r\n` +
        'data: [DONE]\r\n\r\n';
      void trickle(res, bytes(body));
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let got = '';
    let finish: string | null | undefined;
    for await (const c of stream) {
      got += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(got).toBe(text);
    expect(finish).toBe('stop');
  });

  it('CR-only line ends, a CR and the next event split across writes', async () => {
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const body = `data: ${chunk({ content: 'a' })}\r\rdata: ${chunk({ content: 'b' })}\r\rdata: ${chunk({}, 'stop')}\r\rdata: [DONE]\r\r`;
      // split right after every CR
      void trickle(res, body.split(/(?<=\r)/));
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const r = await post(gw.url, { model: 'r', stream: true, messages: USER });
    expect(r.status).toBe(200);
    expect(contentOf(r.text)).toBe('ab');
    expect(events(r.text).at(-1)).toBe('[DONE]');
  });
});

describe('SSE: a final event without its blank line', () => {
  it('a complete answer whose last event (content + finish_reason) ends the body without a blank line is served, not failed over', async () => {
    // Held to SseParser.end()'s own contract (src/streaming/sse.ts: "Flushes a last event that was not followed
    // by a blank line") and README "Failover and streams": a stream that closes without [DONE] counts as finished
    // once every choice has sent its finish_reason. The upstream below sends it in that last event: the
    // answer is served, not failed over as a cut stream (502).
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        `data: ${chunk({ role: 'assistant', content: '' })}\n\ndata: ${chunk({ content: 'whole' }, 'stop')}\n`,
      );
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const r = await post(gw.url, { model: 'r', stream: true, messages: USER });
    expect(r.headers['x-router-trail']).toBe('');
    expect(r.status).toBe(200);
    expect(contentOf(r.text)).toBe('whole');
    expect(events(r.text).at(-1)).toBe('[DONE]');
  });
});

describe('Anthropic translation', () => {
  it('a tool result carrying an image reaches Claude as an image block inside the tool_result', async () => {
    // SPEC §4: for anthropic upstreams the request is translated, images included. A tool message whose content
    // parts hold an image_url (a screenshot tool, as LangChain/LiteLLM users send) must not lose the image:
    // Anthropic's tool_result.content takes image blocks, so the image goes there beside the text.
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          content: [{ type: 'text', text: 'ok' }],
          stop_reason: 'end_turn',
          usage: { input_tokens: 1, output_tokens: 1 },
        }),
      );
    });
    const gw = await gatewayFor([anthropicProvider('an', up.url)], ['an/claude-sonnet-4-5']);
    const r = await post(gw.url, {
      model: 'r',
      messages: [
        { role: 'user', content: 'take a screenshot' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'shot', arguments: '{}' } }],
        },
        {
          role: 'tool',
          tool_call_id: 'call_1',
          content: [
            { type: 'text', text: 'here it is' },
            { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } },
          ],
        },
      ],
      tools: [{ type: 'function', function: { name: 'shot', parameters: { type: 'object' } } }],
    });
    expect(r.status).toBe(200);
    const turns = up.bodies[0]?.messages as Array<{ role: string; content: Json[] }>;
    const result = turns.at(-1)?.content.find((b) => b.type === 'tool_result');
    expect(result?.content).toEqual([
      { type: 'text', text: 'here it is' },
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } },
    ]);
  });

  it('a Claude stream (thinking, text, two tool_use blocks with split input_json_delta, cache usage) read by the OpenAI SDK stream helper', async () => {
    // SPEC §4 translation: stop reason tool_use -> tool_calls, usage includes cache tokens (prompt = input +
    // creation + read, cached_tokens = read), argument fragments assembled, a parameterless tool gets "{}".
    const ev = (type: string, data: Json) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      void trickle(res, [
        ev('message_start', {
          message: {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            content: [],
            model: 'claude',
            stop_reason: null,
            usage: {
              input_tokens: 10,
              cache_creation_input_tokens: 5,
              cache_read_input_tokens: 100,
              output_tokens: 1,
            },
          },
        }),
        ev('ping', {}),
        ev('content_block_start', { index: 0, content_block: { type: 'thinking', thinking: '' } }),
        ev('content_block_delta', { index: 0, delta: { type: 'thinking_delta', thinking: 'hmm' } }),
        ev('content_block_delta', { index: 0, delta: { type: 'signature_delta', signature: 'sig' } }),
        ev('content_block_stop', { index: 0 }),
        ev('content_block_start', { index: 1, content_block: { type: 'text', text: '' } }),
        ev('content_block_delta', { index: 1, delta: { type: 'text_delta', text: 'Let me check.' } }),
        ev('content_block_stop', { index: 1 }),
        ev('content_block_start', {
          index: 2,
          content_block: { type: 'tool_use', id: 'toolu_1', name: 'get', input: {} },
        }),
        ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: '' } }),
        ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: '{"ci' } }),
        ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: 'ty":"P' } }),
        ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: 'aris"}' } }),
        ev('content_block_stop', { index: 2 }),
        ev('content_block_start', {
          index: 3,
          content_block: { type: 'tool_use', id: 'toolu_2', name: 'now', input: {} },
        }),
        ev('content_block_stop', { index: 3 }),
        ev('message_delta', {
          delta: { stop_reason: 'tool_use', stop_sequence: null },
          usage: { output_tokens: 42 },
        }),
        ev('message_stop', {}),
      ]);
    });
    const gw = await gatewayFor([anthropicProvider('an', up.url)], ['an/claude-sonnet-4-5']);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const s = client.chat.completions.stream({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stream_options: { include_usage: true },
      tools: [
        { type: 'function', function: { name: 'get', parameters: { type: 'object' } } },
        { type: 'function', function: { name: 'now', parameters: { type: 'object' } } },
      ],
    });
    const fin = await s.finalChatCompletion();
    const choice = fin.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBe('Let me check.');
    expect(choice.message.tool_calls?.map((c) => [c.id, c.function.name, c.function.arguments])).toEqual([
      ['toolu_1', 'get', '{"city":"Paris"}'],
      ['toolu_2', 'now', '{}'],
    ]);
    expect(fin.usage).toMatchObject({
      prompt_tokens: 115,
      completion_tokens: 42,
      total_tokens: 157,
      prompt_tokens_details: { cached_tokens: 100 },
    });
  });
});

describe('headers on every routed response', () => {
  it('a stream cut by shutdown before its commit (the 503) still carries x-request-id and x-router-*', async () => {
    // SPEC §4: "Response headers on every routed response: x-request-id, x-router-provider, x-router-model,
    // x-router-strategy, x-router-attempts, x-router-trail"; README: "An error on a route carries them too".
    // A stream's 503 at shutdown, before its commit, carries them as a JSON request cut the same way does.
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${chunk({ role: 'assistant', content: '' })}\n\n`); // preamble only: not committed
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const pending = post(gw.url, { model: 'r', stream: true, messages: USER }, { 'x-request-id': 'rid-1' });
    for (let i = 0; i < 100 && up.hits() === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    expect(gw.gateway.cutStreams()).toBe(1);
    const r = await pending;
    expect(r.status).toBe(503);
    expect(JSON.parse(r.text)).toMatchObject({ error: { code: 'gateway_shutdown' } });
    expect(r.headers['x-request-id']).toBe('rid-1');
    expect(r.headers['x-router-strategy']).toBe('priority');
    expect(r.headers['x-router-attempts']).toBeDefined();
  });
});

describe('request validation (SPEC §8)', () => {
  it('an image_url part whose url is not a string is a 400 naming the field, before any upstream is called', async () => {
    // SPEC §8: "known OpenAI fields with a wrong type ... are rejected with 400 naming the field before any
    // upstream is called": an image_url's url must be a string, not only image_url an object.
    const up = await raw((_q, res) => res.end('{}'));
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const r = await post(gw.url, {
      model: 'r',
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 5 } }] }],
    });
    expect(up.hits()).toBe(0);
    expect(r.status).toBe(400);
    expect(JSON.parse(r.text)).toMatchObject({
      error: { type: 'invalid_request_error', param: 'messages[0].content[0].image_url.url' },
    });
  });
});

describe('client aborts, compressed streams, errors after the commit and passthrough paths', () => {
  it('a client that vanishes before the commit has its upstream request aborted at once', async () => {
    // SPEC §8: "a client that disconnects gets its upstream request aborted at once".
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${chunk({ role: 'assistant', content: '' })}\n\n`);
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', stream: true, messages: USER }),
      signal: ac.signal,
    }).catch((e: unknown) => e);
    for (let i = 0; i < 100 && up.hits() === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    await pending;
    const t0 = performance.now();
    await Promise.race([up.closed(0), new Promise((r) => setTimeout(r, 3000))]);
    expect(performance.now() - t0).toBeLessThan(1500);
  });

  it('a gzip-encoded event stream arriving one byte per TCP write is decoded and relayed whole', async () => {
    // SPEC §8: "compressed answers are relayed intact or decoded correctly".
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
      const z = gzipSync(
        `data: ${chunk({ content: 'zi' })}\n\ndata: ${chunk({ content: 'p' })}\n\ndata: ${chunk({}, 'stop')}\n\ndata: [DONE]\n\n`,
      );
      void trickle(
        res,
        [...z].map((x) => Buffer.from([x])),
      );
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const r = await post(gw.url, { model: 'r', stream: true, messages: USER });
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(contentOf(r.text)).toBe('zip');
    expect(events(r.text).at(-1)).toBe('[DONE]');
  });

  it('an error event after the commit ends the stream with an OpenAI-shaped error, scrubbed, and no [DONE]', async () => {
    // SPEC §2 terminate policy and §8 secrets: the upstream echoes our key in its error event.
    const up = await raw((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      void trickle(res, [
        `data: ${chunk({ content: 'a' })}\n\n`,
        `data: {"error":{"message":"bad key ${SECRET} (Bearer ${SECRET})","type":"x","code":"${SECRET}"}}\n\n`,
      ]);
    });
    const gw = await gatewayFor([openaiProvider('a', up.url)], ['a/m']);
    const r = await post(gw.url, { model: 'r', stream: true, messages: USER });
    expect(r.status).toBe(200);
    expect(r.text).not.toContain(SECRET);
    expect(r.text).not.toContain('[DONE]');
    const last = JSON.parse(events(r.text).at(-1)!) as { error: Json };
    expect(last.error).toMatchObject({ type: 'upstream_error', param: null, code: 'stream_interrupted' });
  });

  it('passthrough paths that climb out of /v1 are refused and never reach the provider with our key', async () => {
    // SPEC §4 (other /v1/* reverse-proxied) and §8 (admin data needs the admin key; our key stays ours).
    const up = await raw((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ path: req.url }));
    });
    const gw = track(
      await startGateway({
        server: { passthrough: 'pt', admin_key: 'admin-SECRET-99887766', api_keys: ['client-key-1'] },
        providers: [{ name: 'pt', base_url: `${up.url}/base/v1`, api_key: SECRET, models: [{ name: 'm' }] }],
        routes: { r: { targets: ['pt/m'] } },
      }),
    );
    const { Client } = await import('undici');
    const c = new Client(gw.url);
    try {
      for (const path of [
        '/v1/../router/status',
        '/v1/%2e%2e/router/status',
        '/v1/files%2F..%2F..%2Fadmin',
        '/v1/files/../../x',
      ]) {
        const r = await c.request({ path, method: 'GET', headers: { authorization: 'Bearer client-key-1' } });
        const text = await r.body.text();
        expect(r.statusCode, path).toBe(400);
        expect(text).not.toContain('admin-SECRET');
      }
      expect(up.paths.filter((p) => !p.startsWith('/base/v1/'))).toEqual([]);
      expect(up.hits()).toBe(0);
    } finally {
      await c.close();
    }
  });
});

describe('request and answer texts', () => {
  it('a body with a repeated top-level key reaches the upstream with that key once, as validated', async () => {
    const sim = track(await startSimulator({ name: 'p' }));
    const gw = track(
      await startGateway({
        providers: [simProvider('p', sim.url, ['m'])],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const text =
      '{"model":"r","max_tokens":5,"messages":[{"role":"user","content":"a"}],"max_tokens":7,"x":{"max_tokens":1}}';
    expect((await postChat(gw, text)).status).toBe(200);
    const sent = sim.requests.at(-1)!.text;
    expect(sent.match(/"max_tokens"/g)).toHaveLength(2); // top level once, the nested one kept
    expect(JSON.parse(sent)).toMatchObject({ model: 'm', max_tokens: 7, x: { max_tokens: 1 } });
    // A body with no repeated key is spliced as written (whitespace kept).
    const spaced = '{ "model" : "r" ,  "messages":[{"role":"user","content":"b"}] }';
    expect((await postChat(gw, spaced)).status).toBe(200);
    expect(sim.requests.at(-1)!.text).toBe('{ "model" : "m" ,  "messages":[{"role":"user","content":"b"}] }');
  });

  it('an upstream JSON answer that starts with a UTF-8 BOM is served, not failed over', async () => {
    const answer = {
      id: 'x',
      object: 'chat.completion',
      created: 1,
      model: 'm',
      choices: [{ index: 0, message: { role: 'assistant', content: 'bom ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    };
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(answer))]);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
        res.end(body);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const gw = track(
      await startGateway({
        providers: [simProvider('p', url, ['m'])],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const res = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'a' }] });
    expect(res.status).toBe(200);
    expect(res.text.charCodeAt(0)).not.toBe(0xfeff);
    expect((res.json.choices as { message: { content: string } }[])[0]!.message.content).toBe('bom ok');
  });
});
