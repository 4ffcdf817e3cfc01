/**
 * Audit: OpenAI SDK (v6) chat features through the gateway against hand-written upstream mocks, one
 * OpenAI-shaped (passed through) and one Anthropic-shaped (translated). Only what the other suites leave
 * open: OpenAI request fields (store, metadata, service_tier, prediction, modalities/audio...) both ways,
 * withResponse / asResponse / _request_id, the stored-completions API through the passthrough, the SDK's
 * timeout against the gateway's, parse() and runTools against Claude. Expectations: SPEC §4 and README.
 */
import type { ServerResponse } from 'node:http';
import OpenAI, { APIConnectionTimeoutError, APIError } from 'openai';
import { zodFunction, zodResponseFormat } from 'openai/helpers/zod';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  chunkFrame,
  sendJson,
  startMock,
  type MockHandler,
  type Received,
} from '../helpers/mock-upstream.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
const UPSTREAM_KEY = 'sk-audit-sdk-upstream-SECRET-4242';
const CLIENT_KEY = 'sk-audit-sdk-client-1111';
const hi = [{ role: 'user' as const, content: 'hi' }];

interface Mock {
  url: string;
  received: Received[];
  /** Requests whose connection closed before the mock answered. */
  aborted: number[];
}

async function mock(handler: MockHandler): Promise<Mock> {
  const aborted: number[] = [];
  const m = track(
    await startMock((req, res, n) => {
      res.on('close', () => {
        if (!res.writableFinished) aborted.push(n);
      });
      return handler(req, res, n);
    }),
  );
  return { url: m.url, received: m.received, aborted };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The gateway with route `r` over `mocks` (priority order), `server.passthrough` on the first OpenAI one. */
async function setup(
  mocks: readonly (Mock | { mock: Mock; kind: 'anthropic' })[],
  opts: {
    timeouts?: Json;
    passthrough?: boolean;
    client?: Partial<ConstructorParameters<typeof OpenAI>[0]>;
  } = {},
): Promise<{ gw: TestGateway; openai: OpenAI }> {
  const providers = mocks.map((m, i) => {
    const anth = 'kind' in m;
    return {
      name: `p${i}`,
      kind: anth ? 'anthropic' : 'openai',
      base_url: anth ? m.mock.url : `${m.url}/v1`,
      api_key: UPSTREAM_KEY,
      timeouts: { connect_ms: 2000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000, ...opts.timeouts },
      models: [{ name: anth ? 'claude-sonnet-4-5' : 'gpt-4o' }],
    };
  });
  const gw = track(
    await startGateway({
      ...(opts.passthrough ? { server: { passthrough: 'p0' } } : {}),
      providers,
      routes: {
        r: { strategy: 'priority', targets: providers.map((p) => `${p.name}/${p.models[0]!.name}`) },
      },
    }),
  );
  return {
    gw,
    openai: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, ...opts.client }),
  };
}

const anth = async (handler: MockHandler) => ({ mock: await mock(handler), kind: 'anthropic' as const });

function completion(body: Json, message: Json, extra: Json = {}, choices?: Json[]): Json {
  return {
    id: 'chatcmpl-sdk',
    object: 'chat.completion',
    created: 1741569952,
    model: String(body.model),
    system_fingerprint: 'fp_sdk',
    choices: choices ?? [
      {
        index: 0,
        message: { role: 'assistant', refusal: null, ...message },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
    ...extra,
  };
}

function claudeJson(content: Json[], stop = 'end_turn'): Json {
  return {
    id: 'msg_sdk',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5',
    content,
    stop_reason: stop,
    stop_sequence: null,
    usage: { input_tokens: 11, output_tokens: 7 },
  };
}

function claudeStream(res: ServerResponse, text: readonly string[]): void {
  const ev = (e: Json) => `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(
    [
      ev({
        type: 'message_start',
        message: {
          ...claudeJson([], null as unknown as string),
          usage: { input_tokens: 11, output_tokens: 1 },
        },
      }),
      ev({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
      ...text.map((t) =>
        ev({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: t } }),
      ),
      ev({ type: 'content_block_stop', index: 0 }),
      ev({
        type: 'message_delta',
        delta: { stop_reason: 'end_turn', stop_sequence: null },
        usage: { output_tokens: 6 },
      }),
      ev({ type: 'message_stop' }),
    ].join(''),
  );
}

// ---------------------------------------------------------------------------------------------

describe('OpenAI-dialect upstream: OpenAI request fields and answer fields', () => {
  it('store, metadata, service_tier, prediction, modalities+audio, seed, verbosity, prompt_cache_key reach it untouched; answer fields come back', async () => {
    const AUDIO = { id: 'audio_1', data: 'UklGRg==', expires_at: 1741573552, transcript: 'hello' };
    const up = await mock((r, res) =>
      sendJson(res, 200, completion(r.body, { content: null, audio: AUDIO }, { service_tier: 'flex' })),
    );
    const { openai } = await setup([up]);
    const fields = {
      store: true,
      metadata: { team: 'a', ticket: '42' },
      service_tier: 'flex',
      prediction: { type: 'content', content: 'hello world' },
      modalities: ['text', 'audio'],
      audio: { voice: 'alloy', format: 'wav' },
      seed: 1234,
      verbosity: 'low',
      prompt_cache_key: 'pck-1',
      safety_identifier: 'user-hash',
      web_search_options: {},
    } as const;
    const c = await openai.chat.completions.create({ model: 'r', messages: hi, ...fields } as never);
    const sent = up.received[0]!.body;
    for (const [k, v] of Object.entries(fields)) expect(sent[k], k).toEqual(v);
    expect(sent.model).toBe('gpt-4o');
    const got = c as unknown as OpenAI.Chat.ChatCompletion;
    expect(got.service_tier).toBe('flex');
    expect(got.system_fingerprint).toBe('fp_sdk');
    expect(got.choices[0]!.message.audio).toEqual(AUDIO);
  });

  it('n: 3 with logprobs + top_logprobs (JSON): three choices, each with its logprobs, by index', async () => {
    const lp = (t: string) => ({
      content: [
        {
          token: t,
          logprob: -0.1,
          bytes: [...Buffer.from(t)],
          top_logprobs: [{ token: t, logprob: -0.1, bytes: [...Buffer.from(t)] }],
        },
      ],
      refusal: null,
    });
    const up = await mock((r, res) =>
      sendJson(
        res,
        200,
        completion(
          r.body,
          {},
          {},
          [0, 1, 2].map((i) => ({
            index: i,
            message: { role: 'assistant', content: `a${i}`, refusal: null },
            logprobs: lp(`a${i}`),
            finish_reason: 'stop',
          })),
        ),
      ),
    );
    const { openai } = await setup([up]);
    const c = await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      n: 3,
      logprobs: true,
      top_logprobs: 1,
      seed: 7,
    });
    expect(up.received[0]!.body).toMatchObject({ n: 3, logprobs: true, top_logprobs: 1, seed: 7 });
    expect(c.choices.map((ch) => [ch.index, ch.message.content, ch.logprobs?.content?.[0]?.token])).toEqual([
      [0, 'a0', 'a0'],
      [1, 'a1', 'a1'],
      [2, 'a2', 'a2'],
    ]);
  });

  it('withResponse(), asResponse() and _request_id (JSON and stream): the x-request-id the client sent comes back', async () => {
    const up = await mock((r, res) => {
      if (r.body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'x-request-id': 'req_upstream' });
        res.end(
          `${chunkFrame(r.body.model, { role: 'assistant', content: 'ok' })}${chunkFrame(r.body.model, {}, 'stop')}data: [DONE]\n\n`,
        );
      } else sendJson(res, 200, completion(r.body, { content: 'ok' }), { 'x-request-id': 'req_upstream' });
    });
    const { openai } = await setup([up]);
    const { data, response, request_id } = await openai.chat.completions
      .create({ model: 'r', messages: hi }, { headers: { 'x-request-id': 'req-client-1' } })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe('ok');
    expect(request_id).toBe('req-client-1');
    expect((data as { _request_id?: string | null })._request_id ?? request_id).toBe('req-client-1');
    expect(response.headers.get('x-router-provider')).toBe('p0');

    const raw = await openai.chat.completions.create({ model: 'r', messages: hi, stream: true }).asResponse();
    expect(raw.status).toBe(200);
    expect(raw.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(raw.headers.get('x-request-id')).toBeTruthy();
    const text = await raw.text();
    expect(text).toContain('"content":"ok"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);

    const s = await openai.chat.completions.create({ model: 'r', messages: hi, stream: true }).withResponse();
    expect(s.request_id).toBeTruthy();
    let out = '';
    for await (const ch of s.data) out += ch.choices[0]?.delta.content ?? '';
    expect(out).toBe('ok');
  });

  it("the client's key and SDK headers: the upstream gets the provider key, never the client's", async () => {
    const up = await mock((r, res) => sendJson(res, 200, completion(r.body, { content: 'ok' })));
    const { openai } = await setup([up], { client: { organization: 'org-client', project: 'proj-client' } });
    await openai.chat.completions.create(
      { model: 'r', messages: hi },
      { headers: { 'Idempotency-Key': 'idem-1' } },
    );
    const h = up.received[0]!.headers;
    expect(h.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(JSON.stringify(h)).not.toContain(CLIENT_KEY);
  });
  it('AbortController mid-stream (openai SDK, OpenAI-dialect upstream): the upstream request is closed', async () => {
    const up = await mock(async (r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(r.body.model, { role: 'assistant', content: 'first' }));
      for (let i = 0; i < 40 && !res.destroyed; i++) {
        await sleep(100);
        res.write(chunkFrame(r.body.model, { content: '.' }));
      }
      res.end();
    });
    const { openai } = await setup([up]);
    const ac = new AbortController();
    const s = await openai.chat.completions.create(
      { model: 'r', messages: hi, stream: true },
      { signal: ac.signal },
    );
    const err = await (async () => {
      for await (const c of s) if (c.choices[0]?.delta.content === 'first') ac.abort();
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    // The SDK's stream ends quietly on an abort (or throws an APIUserAbortError): either is the client's own doing.
    expect(err === undefined || err instanceof Error).toBe(true);
    await expect.poll(() => up.aborted, { timeout: 2000 }).toEqual([0]);
  });
});

describe('stored chat completions (list / retrieve / update / delete / messages) through the passthrough', () => {
  const STORED = {
    id: 'chatcmpl-stored1',
    object: 'chat.completion',
    created: 1741569952,
    model: 'gpt-4o',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: 'hi', refusal: null },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    metadata: { team: 'a' },
  };
  const list = (data: unknown[]) => ({
    object: 'list',
    data,
    first_id: null,
    last_id: null,
    has_more: false,
  });

  it('each call reaches the passthrough provider with its method, path and query, and the provider key', async () => {
    const up = await mock((r, res) => {
      const path = r.path.split('?')[0]!;
      if (path === '/v1/chat/completions' && r.body.messages === undefined)
        return sendJson(res, 200, list([STORED]));
      if (path === '/v1/chat/completions/chatcmpl-stored1/messages')
        return sendJson(res, 200, list([{ id: 'msg_1', role: 'user', content: 'hi' }]));
      if (path === '/v1/chat/completions/chatcmpl-stored1') {
        if (r.body.metadata !== undefined)
          return sendJson(res, 200, { ...STORED, metadata: r.body.metadata });
        return sendJson(
          res,
          200,
          r.path.length > 0 && r.body && Object.keys(r.body).length === 0 ? STORED : STORED,
        );
      }
      sendJson(res, 404, {
        error: { message: `no ${path}`, type: 'invalid_request_error', param: null, code: null },
      });
    });
    // A DELETE needs its own answer: startMock hands every method to the same handler.
    const { openai } = await setup([up], { passthrough: true });

    const page = await openai.chat.completions.list({ model: 'gpt-4o', limit: 5, metadata: { team: 'a' } });
    expect(page.data.map((c) => c.id)).toEqual(['chatcmpl-stored1']);
    const listed = up.received.at(-1)!;
    expect(listed.path).toMatch(/^\/v1\/chat\/completions\?/);
    expect(listed.path).toContain('limit=5');
    expect(listed.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);

    const one = await openai.chat.completions.retrieve('chatcmpl-stored1');
    expect(one.id).toBe('chatcmpl-stored1');
    expect(up.received.at(-1)!.path).toBe('/v1/chat/completions/chatcmpl-stored1');

    const updated = await openai.chat.completions.update('chatcmpl-stored1', { metadata: { team: 'b' } });
    expect((updated as unknown as { metadata: unknown }).metadata).toEqual({ team: 'b' });
    expect(up.received.at(-1)!.body).toEqual({ metadata: { team: 'b' } });

    const msgs = await openai.chat.completions.messages.list('chatcmpl-stored1');
    expect(msgs.data.map((m) => m.id)).toEqual(['msg_1']);
  });

  it('delete reaches the provider as a DELETE', async () => {
    const methods: string[] = [];
    const up = await mock((r, res) => {
      methods.push(r.path);
      sendJson(res, 200, { object: 'chat.completion.deleted', id: 'chatcmpl-stored1', deleted: true });
    });
    const { openai } = await setup([up], { passthrough: true });
    const d = await openai.chat.completions.delete('chatcmpl-stored1');
    expect(d).toMatchObject({ id: 'chatcmpl-stored1', deleted: true });
    expect(methods).toEqual(['/v1/chat/completions/chatcmpl-stored1']);
  });

  it('without a passthrough: list() is an OpenAI-shaped 404 (not a routed chat request)', async () => {
    const up = await mock((r, res) => sendJson(res, 200, completion(r.body, { content: 'routed!' })));
    const { openai } = await setup([up]);
    const err = await openai.chat.completions.list().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(404);
    expect(up.received).toHaveLength(0);
  });
});

describe("the SDK's timeout and retries against the gateway's", () => {
  it('the gateway times out first (first_byte_ms): the SDK gets APIError 504 code timeout, not a connection error', async () => {
    const up = await mock(async (_r, res) => {
      await sleep(2500);
      res.destroy();
    });
    const { openai } = await setup([up], { timeouts: { first_byte_ms: 300 } });
    const err = await openai.chat.completions.create({ model: 'r', messages: hi }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(APIError);
    expect(err).not.toBeInstanceOf(APIConnectionTimeoutError);
    expect((err as APIError).status).toBe(504);
    expect((err as APIError).code).toBe('timeout');
  });

  it("a 504 is not retried by the SDK's default retries (x-should-retry: false): the route's budget is spent once", async () => {
    const up = await mock(async (_r, res) => {
      await sleep(1500);
      res.destroy();
    });
    const { openai } = await setup([up], { timeouts: { first_byte_ms: 200 }, client: { maxRetries: 2 } });
    const err = await openai.chat.completions.create({ model: 'r', messages: hi }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as APIError).status).toBe(504);
    expect((err as APIError).headers?.get('x-should-retry')).toBe('false');
    expect(up.received).toHaveLength(1);
  });

  it('the SDK times out first with maxRetries 1: APIConnectionTimeoutError, and each upstream request is aborted', async () => {
    const up = await mock(async (r, res) => {
      await sleep(3500);
      if (!res.destroyed) sendJson(res, 200, completion(r.body, { content: 'late' }));
    });
    const { openai } = await setup([up], { client: { timeout: 300, maxRetries: 1 } });
    const err = await openai.chat.completions.create({ model: 'r', messages: hi }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(APIConnectionTimeoutError);
    await expect.poll(() => up.aborted.length, { timeout: 2000 }).toBe(up.received.length);
    expect(up.received.length).toBe(2);
  });
});

describe('Anthropic upstream: SDK features through the translation', () => {
  const Weather = z.object({ city: z.string(), temp_c: z.number() });

  it('parse() with zodResponseFormat: the schema reaches Claude, the parsed object the client (JSON)', async () => {
    const up = await anth((_r, res) =>
      sendJson(res, 200, claudeJson([{ type: 'text', text: '{"city":"Oslo","temp_c":3}' }])),
    );
    const { openai } = await setup([up]);
    const c = await openai.chat.completions.parse({
      model: 'r',
      messages: hi,
      response_format: zodResponseFormat(Weather, 'weather'),
    });
    expect(c.choices[0]!.message.parsed).toEqual({ city: 'Oslo', temp_c: 3 });
    expect(JSON.stringify(up.mock.received[0]!.body)).toContain('temp_c');
  });

  it('chat.completions.stream() with zodResponseFormat: content.delta events and content.done with the parsed object', async () => {
    const up = await anth((_r, res) => claudeStream(res, ['{"city":', '"Oslo",', '"temp_c":3}']));
    const { openai } = await setup([up]);
    const deltas: string[] = [];
    let done: unknown;
    const stream = openai.chat.completions
      .stream({ model: 'r', messages: hi, response_format: zodResponseFormat(Weather, 'weather') })
      .on('content.delta', (e) => deltas.push(e.delta))
      .on('content.done', (e) => (done = e.parsed));
    const final = await stream.finalChatCompletion();
    expect(deltas.join('')).toBe('{"city":"Oslo","temp_c":3}');
    expect(done).toEqual({ city: 'Oslo', temp_c: 3 });
    expect(final.choices[0]!.message.parsed).toEqual({ city: 'Oslo', temp_c: 3 });
  });

  it('parse() with a strict zodFunction tool: tool_use comes back with parsed_arguments', async () => {
    const up = await anth((_r, res) =>
      sendJson(
        res,
        200,
        claudeJson(
          [{ type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Oslo', temp_c: 3 } }],
          'tool_use',
        ),
      ),
    );
    const { openai } = await setup([up]);
    const c = await openai.chat.completions.parse({
      model: 'r',
      messages: hi,
      tools: [zodFunction({ name: 'get_weather', parameters: Weather })],
    });
    const call = (c.choices[0]!.message.tool_calls ?? [])[0]!;
    expect(c.choices[0]!.finish_reason).toBe('tool_calls');
    expect(call.type === 'function' && call.function.parsed_arguments).toEqual({ city: 'Oslo', temp_c: 3 });
    const sentTools = up.mock.received[0]!.body.tools as Json[];
    expect(sentTools[0]).toMatchObject({ name: 'get_weather' });
  });

  it('runTools with tool_choice required and parallel calls, one tool parse throwing: the error text reaches Claude as its tool_result', async () => {
    const up = await anth((r, res, n) => {
      if (n === 0)
        return sendJson(
          res,
          200,
          claudeJson(
            [
              { type: 'tool_use', id: 'toolu_a', name: 'ok_tool', input: { x: 1 } },
              { type: 'tool_use', id: 'toolu_b', name: 'bad_tool', input: { x: 2 } },
            ],
            'tool_use',
          ),
        );
      sendJson(
        res,
        200,
        claudeJson([{ type: 'text', text: `done after ${String((r.body.messages as unknown[]).length)}` }]),
      );
    });
    const { openai } = await setup([up]);
    const params = { type: 'object', properties: { x: { type: 'number' } }, required: ['x'] } as const;
    const runner = openai.chat.completions.runTools({
      model: 'r',
      messages: hi,
      tool_choice: 'required',
      tools: [
        {
          type: 'function',
          function: {
            name: 'ok_tool',
            parameters: params,
            function: (a: { x: number }) => `ok ${a.x}`,
            parse: JSON.parse,
          },
        },
        {
          type: 'function',
          function: {
            name: 'bad_tool',
            parameters: params,
            function: () => 'never',
            // The SDK sends a parse error back to the model as the tool's result (a function's own throw ends the run).
            parse: () => {
              throw new Error('tool exploded');
            },
          },
        },
      ],
      maxChatCompletions: 2,
    } as never);
    const text = await runner.finalContent();
    expect(text).toMatch(/^done after/);
    expect(up.mock.received[0]!.body.tool_choice).toMatchObject({ type: 'any' });
    const second = up.mock.received[1]!.body.messages as { role: string; content: Json[] | string }[];
    const results = second
      .flatMap((m) => (Array.isArray(m.content) ? m.content : []))
      .filter((b) => b.type === 'tool_result');
    expect(results.map((b) => b.tool_use_id)).toEqual(['toolu_a', 'toolu_b']);
    expect(JSON.stringify(results[0])).toContain('ok 1');
    expect(JSON.stringify(results[1])).toContain('tool exploded');
  });

  it('stream_options { include_usage, include_obfuscation: false }: accepted, one usage chunk at the end', async () => {
    const up = await anth((_r, res) => claudeStream(res, ['o', 'k']));
    const { openai } = await setup([up]);
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    const s = await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      stream: true,
      stream_options: { include_usage: true, include_obfuscation: false },
    });
    for await (const c of s) chunks.push(c);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('ok');
    const usage = chunks.filter((c) => c.usage);
    expect(usage).toHaveLength(1);
    expect(usage[0]!.choices).toEqual([]);
    expect(up.mock.received[0]!.body).not.toHaveProperty('stream_options');
  });

  it('withResponse(): x-router-* headers and a request id on a translated answer', async () => {
    const up = await anth((_r, res) => sendJson(res, 200, claudeJson([{ type: 'text', text: 'ok' }])));
    const { openai } = await setup([up]);
    const { data, response, request_id } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe('ok');
    expect(request_id).toBeTruthy();
    expect(response.headers.get('x-router-provider')).toBe('p0');
  });

  it('store, metadata, service_tier, prediction, seed, logprobs: a request Claude takes, the answer still reads', async () => {
    const up = await anth((_r, res) => sendJson(res, 200, claudeJson([{ type: 'text', text: 'ok' }])));
    const { openai } = await setup([up]);
    const c = await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      store: true,
      metadata: { team: 'a' },
      service_tier: 'auto',
      prediction: { type: 'content', content: 'ok' },
      seed: 3,
      stream_options: undefined,
    });
    expect(c.choices[0]!.message.content).toBe('ok');
    const sent = up.mock.received[0]!.body;
    for (const k of ['store', 'service_tier', 'prediction', 'seed', 'n', 'logprobs'])
      expect(sent, k).not.toHaveProperty(k);
    // Anthropic's metadata takes only user_id: OpenAI's metadata map must not go as it is.
    expect(
      sent.metadata === undefined || Object.keys(sent.metadata as Json).every((k) => k === 'user_id'),
    ).toBe(true);
  });

  // An audio answer asked of an Anthropic-only route is refused (400 naming modalities/audio) as
  // README does for input_audio, not answered 200 with no `message.audio` the client asked for.
  it('modalities ["text","audio"] + audio on an Anthropic-only route: refused, not answered without audio', async () => {
    const up = await anth((_r, res) => sendJson(res, 200, claudeJson([{ type: 'text', text: 'ok' }])));
    const { openai } = await setup([up]);
    const err = await openai.chat.completions
      .create({
        model: 'r',
        messages: hi,
        modalities: ['text', 'audio'],
        audio: { voice: 'alloy', format: 'wav' },
      })
      .then(
        (c) => c,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(400);
    expect(up.mock.received).toHaveLength(0);
  });

  // Anthropic is left out of the candidates (as for input_audio), so the OpenAI upstream serves the audio.
  it('modalities audio on a route with an Anthropic and an OpenAI upstream: the OpenAI one serves it', async () => {
    const a = await anth((_r, res) =>
      sendJson(res, 200, claudeJson([{ type: 'text', text: 'from claude' }])),
    );
    const o = await mock((r, res) =>
      sendJson(
        res,
        200,
        completion(r.body, {
          content: null,
          audio: { id: 'au', data: 'AA==', expires_at: 1, transcript: 'x' },
        }),
      ),
    );
    const { openai } = await setup([a, o]);
    const c = await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      modalities: ['text', 'audio'],
      audio: { voice: 'alloy', format: 'wav' },
    });
    expect(c.choices[0]!.message.audio?.data).toBe('AA==');
    expect(a.mock.received).toHaveLength(0);
  });
});
