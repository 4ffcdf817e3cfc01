/**
 * Audit: the gateway against upstream mocks written as a third-party test author writes them — plain
 * node:http servers, fixtures copied from the OpenAI / Anthropic API references, minimal answers that leave
 * fields out, SSE framed every way the SSE spec allows and written in arbitrary byte pieces — driven through
 * the real clients (openai SDK, Vercel AI SDK, LangChain). Where it can, each scenario calls the mock
 * directly with the same client and then through the gateway: the client must see the same result (ids,
 * `created` and x-router-* headers aside). Expectations: /work/shared/SPEC.md and README.md.
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOpenAI } from '@ai-sdk/openai';
import type { AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI, OpenAIEmbeddings } from '@langchain/openai';
import { embedMany, generateObject, generateText, jsonSchema, streamObject, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;

const PROVIDER_KEY = 'sk-foreign-provider-KEY-0042';
const ANTHROPIC_KEY = 'sk-ant-foreign-KEY-0043';
const UNI = 'Grüße 👋🏽 — 日本語 ✓ ok';
const hi = [{ role: 'user' as const, content: 'hi' }];

// ---------------------------------------------------------------------------------------------
// A third party's mock: node:http, nothing from our helpers.

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Json;
}

interface Foreign {
  url: string;
  readonly seen: Seen[];
  /** Responses whose connection closed before they were finished (the caller went away). */
  cut: number;
  close: () => Promise<void>;
}

type ForeignHandler = (req: Seen, res: ServerResponse) => void | Promise<void>;

async function foreign(handler: ForeignHandler): Promise<Foreign> {
  const mock: Foreign = { url: '', seen: [], cut: 0, close: async () => undefined };
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const text = Buffer.concat(parts).toString('utf8');
      let body: Json = {};
      try {
        body = text === '' ? {} : (JSON.parse(text) as Json);
      } catch {
        body = { __raw: text };
      }
      const seen: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
      mock.seen.push(seen);
      res.on('close', () => {
        if (!res.writableFinished) mock.cut++;
      });
      void Promise.resolve(handler(seen, res)).catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const closeable = closeableServer(server);
  mock.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  mock.close = async () => void (await closeable.close());
  return track(mock);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Writes `text` in byte pieces of the given sizes (cycling): splits land inside lines and UTF-8 sequences. */
async function dribble(res: ServerResponse, text: string, sizes: readonly number[] = [1, 3, 2, 7, 5, 11]) {
  const buf = Buffer.from(text, 'utf8');
  let at = 0;
  let i = 0;
  while (at < buf.length) {
    const n = sizes[i++ % sizes.length]!;
    res.write(buf.subarray(at, at + n));
    at += n;
    if (i % 4 === 0) await sleep(1);
  }
  res.end();
}

function sendJson(res: ServerResponse, status: number, body: unknown, contentType = 'application/json') {
  res.writeHead(status, { 'content-type': contentType });
  res.end(JSON.stringify(body));
}

/** The mock checks `Authorization: Bearer <key>` as OpenAI does, 401 in OpenAI's words otherwise. */
function bearerOk(req: Seen, res: ServerResponse, key = PROVIDER_KEY): boolean {
  if (req.headers.authorization === `Bearer ${key}`) return true;
  sendJson(res, 401, {
    error: {
      message:
        'Incorrect API key provided: sk-wrong. You can find your API key at https://platform.openai.com/account/api-keys.',
      type: 'invalid_request_error',
      param: null,
      code: 'invalid_api_key',
    },
  });
  return false;
}

// ---------------------------------------------------------------------------------------------
// The gateway in front of the mocks

interface Front {
  gw: TestGateway;
  baseURL: string;
  openai: OpenAI;
}

interface Up {
  url: string;
  kind?: 'openai' | 'anthropic';
  /** base_url as given in the config (default `${url}/v1` for openai, `${url}` for anthropic). */
  base?: string;
  model?: string;
  key?: string;
  capabilities?: string[];
}

async function front(ups: readonly Up[], extraRoutes: Json = {}): Promise<Front> {
  const providers = ups.map((u, i) => ({
    name: `p${i}`,
    kind: u.kind ?? 'openai',
    base_url: u.base ?? (u.kind === 'anthropic' ? u.url : `${u.url}/v1`),
    api_key: u.key ?? (u.kind === 'anthropic' ? ANTHROPIC_KEY : PROVIDER_KEY),
    timeouts: { connect_ms: 2000, first_byte_ms: 4000, idle_ms: 4000, total_ms: 10000 },
    models: [
      {
        name: u.model ?? (u.kind === 'anthropic' ? 'claude-sonnet-4-5' : 'gpt-4o'),
        ...(u.capabilities ? { capabilities: u.capabilities } : {}),
      },
    ],
  }));
  const gw = track(
    await startGateway({
      providers,
      routes: {
        r: { strategy: 'priority', targets: providers.map((p) => `${p.name}/${p.models[0]!.name}`) },
        ...extraRoutes,
      },
    }),
  );
  const baseURL = `${gw.url}/v1`;
  return { gw, baseURL, openai: new OpenAI({ baseURL, apiKey: 'client-key', maxRetries: 0 }) };
}

/** The openai SDK straight at a mock, as the test author would call it to get the reference result. */
const directOpenAI = (mock: Foreign) =>
  new OpenAI({ baseURL: `${mock.url}/v1`, apiKey: PROVIDER_KEY, maxRetries: 0 });

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/** An answer as a hasty mock writes it: no id, no created, no usage, nulls where OpenAI puts nulls, no index. */
const MINIMAL_COMPLETION = {
  object: 'chat.completion',
  model: 'gpt-4o',
  system_fingerprint: null,
  choices: [
    {
      message: { role: 'assistant', content: UNI, refusal: null },
      logprobs: null,
      finish_reason: 'stop',
    },
  ],
};

/**
 * A stream written every way SSE allows: CRLF, `data:` without a space, `event: message`, `id:` and `retry:`
 * lines, comment pings, chunks with no id / created / index, finish_reason in a chunk of its own with an
 * empty delta, and (include_usage) a final chunk with `choices: []` and the usage.
 */
function weirdSse(opts: { usage: boolean; done?: boolean; index?: boolean } = { usage: true }): string {
  const ix = opts.index ? { index: 0 } : {};
  const eol = '\r\n';
  const ev = (o: unknown, pre = '') => `${pre}data:${JSON.stringify(o)}${eol}${eol}`;
  const base = { object: 'chat.completion.chunk', model: 'gpt-4o', system_fingerprint: null };
  const parts = [
    `: keep-alive${eol}${eol}`,
    `retry: 3000${eol}${eol}`,
    ev(
      {
        ...base,
        choices: [{ ...ix, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }],
      },
      `event: message${eol}id: 1${eol}`,
    ),
  ];
  const pieces = ['Grüße ', '👋🏽', ' — 日本', '語 ✓', ' ok'];
  pieces.forEach((p, i) => {
    parts.push(
      ev(
        { ...base, choices: [{ ...ix, delta: { content: p }, logprobs: null, finish_reason: null }] },
        `id: ${i + 2}${eol}`,
      ),
    );
    if (i === 2) parts.push(`: ping${eol}${eol}`);
  });
  parts.push(ev({ ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }] }));
  if (opts.usage)
    parts.push(
      ev({ ...base, choices: [], usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 } }),
    );
  if (opts.done !== false) parts.push(`data:[DONE]${eol}${eol}`);
  return parts.join('');
}

/**
 * A chat mock serving the minimal JSON answer and the weird stream, behind a Bearer check. `index: false`
 * leaves `choices[].index` out (the openai SDK's raw reads take that; its .stream() helper and the Vercel
 * SDK's JSON schema need it, directly as through the gateway).
 */
async function chatMock(opts: { index?: boolean } = {}): Promise<Foreign> {
  const ix = opts.index ? { index: 0 } : {};
  return foreign(async (req, res) => {
    if (!bearerOk(req, res)) return;
    if (req.url !== '/v1/chat/completions')
      return sendJson(res, 404, {
        error: { message: `no route ${req.url}`, type: 'invalid_request_error', param: null, code: null },
      });
    if (req.body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      const usage =
        (req.body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true;
      await dribble(res, weirdSse({ usage, index: opts.index }));
      return;
    }
    sendJson(
      res,
      200,
      { ...MINIMAL_COMPLETION, choices: [{ ...ix, ...MINIMAL_COMPLETION.choices[0] }] },
      'application/json; charset=utf-8',
    );
  });
}

/**
 * Two parallel tool calls streamed the way OpenAI streams them — id, type and name only in each call's
 * first piece, arguments in many small pieces — with the two calls' pieces interleaved, then
 * finish_reason `tool_calls` in a chunk of its own, the usage chunk and [DONE].
 */
function toolSse(): string {
  const head = {
    id: 'chatcmpl-tools',
    object: 'chat.completion.chunk',
    created: 1730000000,
    model: 'gpt-4o',
  };
  const ev = (delta: Json, finish: string | null = null) =>
    `data: ${JSON.stringify({ ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`;
  const a = '{"city": "Paris", "unit": "celsius"}';
  const b = '{"city": "Tōkyō", "unit": "fahrenheit"}';
  const pieces = (s: string) => s.match(/.{1,4}/gsu) ?? [];
  const out = [ev({ role: 'assistant', content: null, refusal: null })];
  out.push(
    ev({
      tool_calls: [
        { index: 0, id: 'call_A', type: 'function', function: { name: 'get_weather', arguments: '' } },
      ],
    }),
  );
  const pa = pieces(a);
  const pb = pieces(b);
  // A's first two pieces, then B opens, then the two calls' pieces alternate.
  out.push(ev({ tool_calls: [{ index: 0, function: { arguments: pa.shift()! } }] }));
  out.push(ev({ tool_calls: [{ index: 0, function: { arguments: pa.shift()! } }] }));
  out.push(
    ev({
      tool_calls: [
        { index: 1, id: 'call_B', type: 'function', function: { name: 'get_weather', arguments: '' } },
      ],
    }),
  );
  while (pa.length > 0 || pb.length > 0) {
    const x = pa.shift();
    if (x !== undefined) out.push(ev({ tool_calls: [{ index: 0, function: { arguments: x } }] }));
    const y = pb.shift();
    if (y !== undefined) out.push(ev({ tool_calls: [{ index: 1, function: { arguments: y } }] }));
  }
  out.push(ev({}, 'tool_calls'));
  out.push(
    `data: ${JSON.stringify({ ...head, choices: [], usage: { prompt_tokens: 20, completion_tokens: 30, total_tokens: 50 } })}\n\n`,
  );
  out.push('data: [DONE]\n\n');
  return out.join('');
}

const weatherTool = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Get the weather',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
  },
};

// =============================================================================================

describe('OpenAI-dialect mocks: the client sees through the gateway what it sees talking to the mock', () => {
  it('openai SDK, JSON: a minimal answer (no id, created, usage; nulls; no index) reads the same', async () => {
    const mock = await chatMock();
    const { openai } = await front([{ url: mock.url }]);
    const direct = await directOpenAI(mock).chat.completions.create({ model: 'gpt-4o', messages: hi });
    const via = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(via).toEqual(direct);
    expect(via.choices[0]!.message.content).toBe(UNI);
  });

  it('openai SDK, stream: CRLF, data: without space, event/id/retry lines, pings, byte-split inside UTF-8, usage chunk with choices []', async () => {
    const mock = await chatMock();
    const { openai } = await front([{ url: mock.url }]);
    const params = {
      model: 'gpt-4o',
      messages: hi,
      stream: true as const,
      stream_options: { include_usage: true },
    };
    const direct = await collect(await directOpenAI(mock).chat.completions.create(params));
    const via = await collect(await openai.chat.completions.create({ ...params, model: 'r' }));
    expect(via).toEqual(direct);
    expect(via.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(UNI);
    expect(via.at(-1)!.usage).toEqual({ prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 });
    expect(via.at(-1)!.choices).toEqual([]);
  });

  it('openai SDK .stream() helper: finalChatCompletion of the weird stream is the same', async () => {
    const mock = await chatMock({ index: true });
    const { openai } = await front([{ url: mock.url }]);
    const params = { model: 'gpt-4o', messages: hi, stream_options: { include_usage: true } };
    const direct = await directOpenAI(mock).chat.completions.stream(params).finalChatCompletion();
    const via = await openai.chat.completions.stream({ ...params, model: 'r' }).finalChatCompletion();
    expect(via).toEqual(direct);
    expect(via.choices[0]!.message.content).toBe(UNI);
  });

  it('Vercel AI SDK .chat(): generateText and streamText give the same text, finish and usage', async () => {
    const mock = await chatMock({ index: true });
    const { baseURL } = await front([{ url: mock.url }]);
    const directModel = createOpenAI({ baseURL: `${mock.url}/v1`, apiKey: PROVIDER_KEY }).chat('gpt-4o');
    const viaModel = createOpenAI({ baseURL, apiKey: 'client-key' }).chat('r');
    const g1 = await generateText({ model: directModel, prompt: 'hi', maxRetries: 0 });
    const g2 = await generateText({ model: viaModel, prompt: 'hi', maxRetries: 0 });
    expect(g2.text).toBe(g1.text);
    expect(g2.text).toBe(UNI);
    expect(g2.finishReason).toBe(g1.finishReason);

    const s1 = streamText({ model: directModel, prompt: 'hi', maxRetries: 0 });
    const s2 = streamText({ model: viaModel, prompt: 'hi', maxRetries: 0 });
    const [t1, t2] = [await s1.text, await s2.text];
    expect(t2).toBe(t1);
    expect(t2).toBe(UNI);
    expect(await s2.finishReason).toBe(await s1.finishReason);
    expect(await s2.finishReason).toBe('stop');
    const [u1, u2] = [await s1.usage, await s2.usage];
    expect({ i: u2.inputTokens, o: u2.outputTokens }).toEqual({ i: u1.inputTokens, o: u1.outputTokens });
    expect(u2.inputTokens).toBe(9);
  });

  it('LangChain ChatOpenAI: invoke and stream give the same content and usage_metadata', async () => {
    const mock = await chatMock();
    const { baseURL } = await front([{ url: mock.url }]);
    const mk = (url: string, model: string, key: string) =>
      new ChatOpenAI({ model, apiKey: key, maxRetries: 0, configuration: { baseURL: url } });
    const direct = mk(`${mock.url}/v1`, 'gpt-4o', PROVIDER_KEY);
    const via = mk(baseURL, 'r', 'client-key');
    const i1 = await direct.invoke('hi');
    const i2 = await via.invoke('hi');
    expect(i2.content).toBe(i1.content);
    expect(i2.content).toBe(UNI);

    const concat = async (m: ChatOpenAI) => {
      let acc: AIMessageChunk | undefined;
      for await (const c of await m.stream('hi')) acc = acc ? acc.concat(c) : c;
      return acc!;
    };
    const c1 = await concat(direct);
    const c2 = await concat(via);
    expect(c2.content).toBe(c1.content);
    expect(c2.content).toBe(UNI);
    expect(c2.usage_metadata).toEqual(c1.usage_metadata);
    expect(c2.response_metadata.finish_reason).toBe(c1.response_metadata.finish_reason);
  });

  it('the request body reaching the mock is what the client sent it directly (only `model` differs), for each client', async () => {
    const mock = await chatMock({ index: true });
    const { baseURL } = await front([{ url: mock.url }]);
    const sends: Array<[string, (url: string, model: string, key: string) => Promise<unknown>]> = [
      [
        'openai',
        (url, model, key) =>
          new OpenAI({ baseURL: url, apiKey: key, maxRetries: 0 }).chat.completions.create({
            model,
            messages: [
              { role: 'developer', content: 'be brief' },
              { role: 'user', content: [{ type: 'text', text: UNI }] },
            ],
            temperature: 0.2,
            top_p: 0.9,
            max_completion_tokens: 50,
            seed: 7,
            stop: ['\n\n'],
            user: 'u-1',
            metadata: { a: 'b' },
            tools: [weatherTool],
            tool_choice: 'auto',
            parallel_tool_calls: true,
            response_format: { type: 'json_object' },
            logprobs: true,
            top_logprobs: 2,
            some_vendor_field: { nested: [1, 2, 3] },
          } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming),
      ],
      [
        'vercel',
        (url, model, key) =>
          generateText({
            model: createOpenAI({ baseURL: url, apiKey: key }).chat(model),
            system: 'be brief',
            prompt: UNI,
            temperature: 0.3,
            maxOutputTokens: 40,
            maxRetries: 0,
          }),
      ],
      [
        'langchain',
        (url, model, key) =>
          new ChatOpenAI({
            model,
            apiKey: key,
            maxRetries: 0,
            temperature: 0.1,
            configuration: { baseURL: url },
          }).invoke(UNI),
      ],
    ];
    for (const [name, send] of sends) {
      mock.seen.length = 0;
      await send(`${mock.url}/v1`, 'gpt-4o', PROVIDER_KEY);
      await send(baseURL, 'r', 'client-key');
      expect(mock.seen, name).toHaveLength(2);
      const [d, v] = mock.seen;
      expect({ name, path: v!.url, body: v!.body }).toEqual({ name, path: d!.url, body: d!.body });
      expect(v!.headers.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
      expect(v!.headers['content-type']).toMatch(/^application\/json/);
    }
  });

  it('parallel tool calls streamed in many interleaved pieces: openai stream + .stream() helper, Vercel and LangChain see the same calls', async () => {
    const mock = await foreign(async (req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await dribble(res, toolSse(), [9, 17, 4, 31]);
    });
    const { openai, baseURL } = await front([{ url: mock.url }]);
    const params = { model: 'gpt-4o', messages: hi, tools: [weatherTool], stream: true as const };
    const d = await collect(await directOpenAI(mock).chat.completions.create(params));
    const v = await collect(await openai.chat.completions.create({ ...params, model: 'r' }));
    expect(v).toEqual(d);

    const { stream: _s, ...helperParams } = params;
    const fd = await directOpenAI(mock).chat.completions.stream(helperParams).finalChatCompletion();
    const fv = await openai.chat.completions.stream({ ...helperParams, model: 'r' }).finalChatCompletion();
    expect(fv).toEqual(fd);
    const calls = fv.choices[0]!.message.tool_calls!;
    expect(calls.map((c) => (c.type === 'function' ? [c.id, JSON.parse(c.function.arguments)] : c))).toEqual([
      ['call_A', { city: 'Paris', unit: 'celsius' }],
      ['call_B', { city: 'Tōkyō', unit: 'fahrenheit' }],
    ]);
    expect(fv.choices[0]!.finish_reason).toBe('tool_calls');

    const tools = {
      get_weather: tool({
        description: 'Get the weather',
        inputSchema: jsonSchema<{ city: string; unit: string }>(weatherTool.function.parameters as never),
      }),
    };
    const sd = streamText({
      model: createOpenAI({ baseURL: `${mock.url}/v1`, apiKey: PROVIDER_KEY }).chat('gpt-4o'),
      prompt: 'hi',
      tools,
      maxRetries: 0,
    });
    const sv = streamText({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      tools,
      maxRetries: 0,
    });
    const simplify = (cs: Array<{ toolCallId: string; toolName: string; input: unknown }>) =>
      cs.map((c) => [c.toolCallId, c.toolName, c.input]);
    expect(simplify(await sv.toolCalls)).toEqual(simplify(await sd.toolCalls));
    expect(simplify(await sv.toolCalls)).toHaveLength(2);
    expect(await sv.finishReason).toBe('tool-calls');

    const lc = (url: string, model: string, key: string) =>
      new ChatOpenAI({ model, apiKey: key, maxRetries: 0, configuration: { baseURL: url } }).bindTools([
        weatherTool,
      ]);
    const concat = async (m: ReturnType<typeof lc>) => {
      let acc: AIMessageChunk | undefined;
      for await (const c of await m.stream('hi')) acc = acc ? acc.concat(c) : c;
      return acc!;
    };
    const ld = await concat(lc(`${mock.url}/v1`, 'gpt-4o', PROVIDER_KEY));
    const lv = await concat(lc(baseURL, 'r', 'k'));
    expect(lv.tool_calls).toEqual(ld.tool_calls);
    expect(lv.tool_calls).toHaveLength(2);
  });

  it('n: 2 streamed with interleaved choices, finish_reason each in an empty-delta chunk, closed without [DONE]', async () => {
    const mock = await foreign(async (req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const ev = (index: number, delta: Json, finish: string | null = null) =>
        `data: ${JSON.stringify({ object: 'chat.completion.chunk', model: 'gpt-4o', choices: [{ index, delta, finish_reason: finish }] })}\n\n`;
      const text = [
        ev(0, { role: 'assistant', content: '' }),
        ev(1, { role: 'assistant', content: '' }),
        ev(1, { content: 'B1 ' }),
        ev(0, { content: 'A1 ' }),
        ev(0, { content: 'A2' }),
        ev(1, { content: 'B2' }),
        ev(1, {}, 'stop'),
        ev(0, {}, 'length'),
      ].join('');
      await dribble(res, text, [13, 8]);
    });
    const { openai } = await front([{ url: mock.url }]);
    const params = { model: 'gpt-4o', messages: hi, n: 2 };
    const d = await directOpenAI(mock).chat.completions.stream(params).finalChatCompletion();
    const v = await openai.chat.completions.stream({ ...params, model: 'r' }).finalChatCompletion();
    expect(v).toEqual(d);
    expect(v.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
      [0, 'A1 A2', 'length'],
      [1, 'B1 B2', 'stop'],
    ]);
  });

  it('JSON mode and json_schema: response_format reaches the mock untouched; Vercel generateObject/streamObject and LangChain withStructuredOutput parse the same object', async () => {
    const obj = { name: 'Zoë', tags: ['a', 'β'], age: 41 };
    const objText = JSON.stringify(obj);
    const mock = await foreign(async (req, res) => {
      if (!bearerOk(req, res)) return;
      const rf = req.body.response_format as { type?: string } | undefined;
      const tools = req.body.tools as Array<{ function: { name: string } }> | undefined;
      const tc = req.body.tool_choice as { function?: { name: string } } | undefined;
      // LangChain's functionCalling method forces a tool; answer with it.
      const forced = tools && tc?.function?.name;
      if (req.body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const ev = (delta: Json, finish: string | null = null) =>
          `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
        const parts = objText.match(/.{1,5}/gsu) ?? [];
        await dribble(
          res,
          [
            ev({ role: 'assistant', content: '' }),
            ...parts.map((p) => ev({ content: p })),
            ev({}, 'stop'),
            'data: [DONE]\n\n',
          ].join(''),
          [64],
        );
        return;
      }
      const message: Json = forced
        ? {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'call_s', type: 'function', function: { name: forced, arguments: objText } }],
          }
        : { role: 'assistant', content: rf?.type ? objText : 'plain' };
      sendJson(res, 200, {
        id: 'chatcmpl-s',
        object: 'chat.completion',
        created: 1,
        model: 'gpt-4o',
        choices: [{ index: 0, message, logprobs: null, finish_reason: forced ? 'tool_calls' : 'stop' }],
        usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
      });
    });
    const { openai, baseURL } = await front([{ url: mock.url }]);
    const schema = {
      type: 'object',
      properties: {
        name: { type: 'string' },
        tags: { type: 'array', items: { type: 'string' } },
        age: { type: 'number' },
      },
      required: ['name', 'tags', 'age'],
      additionalProperties: false,
    };

    // openai SDK: json_object and json_schema
    const rf = { type: 'json_schema' as const, json_schema: { name: 'person', strict: true, schema } };
    const a = await openai.chat.completions.create({ model: 'r', messages: hi, response_format: rf });
    expect(JSON.parse(a.choices[0]!.message.content!)).toEqual(obj);
    expect(mock.seen.at(-1)!.body.response_format).toEqual(rf);

    // Vercel generateObject / streamObject
    const vd = createOpenAI({ baseURL: `${mock.url}/v1`, apiKey: PROVIDER_KEY }).chat('gpt-4o');
    const vv = createOpenAI({ baseURL, apiKey: 'k' }).chat('r');
    const js = jsonSchema<typeof obj>(schema as never);
    const g1 = await generateObject({ model: vd, schema: js, prompt: 'who', maxRetries: 0 });
    const g2 = await generateObject({ model: vv, schema: js, prompt: 'who', maxRetries: 0 });
    expect(g2.object).toEqual(g1.object);
    expect(g2.object).toEqual(obj);
    expect(mock.seen.at(-1)!.body.response_format).toEqual(mock.seen.at(-2)!.body.response_format);

    const so1 = streamObject({ model: vd, schema: js, prompt: 'who', maxRetries: 0 });
    const so2 = streamObject({ model: vv, schema: js, prompt: 'who', maxRetries: 0 });
    const p1 = await collect(so1.partialObjectStream);
    const p2 = await collect(so2.partialObjectStream);
    expect(await so2.object).toEqual(await so1.object);
    expect(await so2.object).toEqual(obj);
    expect(p2.length).toBe(p1.length);

    // LangChain withStructuredOutput, both methods
    for (const method of ['jsonSchema', 'functionCalling'] as const) {
      const mk = (url: string, model: string, key: string) =>
        new ChatOpenAI({
          model,
          apiKey: key,
          maxRetries: 0,
          configuration: { baseURL: url },
        }).withStructuredOutput(
          { ...schema, title: 'person', description: 'a person' },
          { method, name: 'person' },
        );
      const l1 = await mk(`${mock.url}/v1`, 'gpt-4o', PROVIDER_KEY).invoke('who');
      const l2 = await mk(baseURL, 'r', 'k').invoke('who');
      expect(l2, method).toEqual(l1);
      expect(l2, method).toEqual(obj);
    }
  });

  // SPEC §1 "a client points the OpenAI SDK's baseURL at it", §4 POST /v1/chat/completions relayed; README
  // "no answer in either form ... is failed over as invalid_upstream_json". A BOM-prefixed object is an
  // answer: fetch's `response.json()`, which the openai SDK and the Vercel SDK use, strips a UTF-8 BOM, so
  // the same mock called directly works, and the client gets the answer through the gateway too, not a 502
  // invalid_upstream_json. The JSON path strips the BOM (JSON whitespace alone does not cover U+FEFF) as the
  // stream path does.
  it('a 200 JSON answer starting with a UTF-8 byte order mark (a fixture file saved with BOM) reads as it does directly', async () => {
    const mock = await foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      res.end(
        Buffer.concat([
          Buffer.from([0xef, 0xbb, 0xbf]),
          Buffer.from(JSON.stringify({ ...MINIMAL_COMPLETION, id: 'chatcmpl-bom', created: 1 })),
        ]),
      );
    });
    const { openai } = await front([{ url: mock.url }]);
    const direct = await directOpenAI(mock).chat.completions.create({ model: 'gpt-4o', messages: hi });
    expect(direct.choices[0]!.message.content).toBe(UNI);
    const via = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(via).toEqual(direct);
  });

  it('a pretty-printed (indented) JSON answer with usage reads the same, and its tokens are counted', async () => {
    const mock = await foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify(
          {
            id: 'chatcmpl-pretty',
            object: 'chat.completion',
            created: 1730000000,
            model: 'gpt-4o-2024-08-06',
            choices: [
              {
                index: 0,
                message: { role: 'assistant', content: 'x "usage": {} y', refusal: null, annotations: [] },
                logprobs: null,
                finish_reason: 'stop',
              },
            ],
            usage: {
              prompt_tokens: 19,
              completion_tokens: 10,
              total_tokens: 29,
              prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
              completion_tokens_details: {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
              },
            },
            service_tier: 'default',
            system_fingerprint: 'fp_50cad350e4',
          },
          null,
          2,
        ) + '\n',
      );
    });
    const { openai, gw } = await front([{ url: mock.url }]);
    const direct = await directOpenAI(mock).chat.completions.create({ model: 'gpt-4o', messages: hi });
    const via = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(via).toEqual(direct);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/llm_router_tokens_total\{[^}]*kind="prompt"[^}]*\} 19/);
    expect(metrics).toMatch(/llm_router_tokens_total\{[^}]*kind="completion"[^}]*\} 10/);
  });
});

// =============================================================================================

describe('base_url shapes and a mock that checks its key', () => {
  it('base_url with a trailing slash, and a mock that ignores the path prefix: both are served', async () => {
    const anyPath = await foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      sendJson(res, 200, {
        ...MINIMAL_COMPLETION,
        choices: [{ index: 0, message: { role: 'assistant', content: req.url }, finish_reason: 'stop' }],
      });
    });
    for (const [base, path] of [
      [`${anyPath.url}/v1/`, '/v1/chat/completions'],
      [`${anyPath.url}/v1`, '/v1/chat/completions'],
      [`${anyPath.url}`, '/chat/completions'],
      [`${anyPath.url}/`, '/chat/completions'],
      [`${anyPath.url}/openai/v1//`, '/openai/v1/chat/completions'],
    ] as const) {
      const { openai } = await front([{ url: anyPath.url, base }]);
      const r = await openai.chat.completions.create({ model: 'r', messages: hi });
      expect(r.choices[0]!.message.content, base).toBe(path);
    }
  });

  it('a mock that only answers on /chat/completions (no /v1) behind base_url without /v1', async () => {
    const mock = await foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      if (req.url !== '/chat/completions')
        return sendJson(res, 404, {
          error: { message: 'Not Found', type: 'invalid_request_error', param: null, code: null },
        });
      sendJson(res, 200, MINIMAL_COMPLETION);
    });
    const { openai } = await front([{ url: mock.url, base: mock.url }]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]!.message.content).toBe(UNI);
  });

  it('a provider key the mock refuses (401): the next upstream serves; alone, a 502 naming the attempt and never the key', async () => {
    const strict = await foreign((req, res) => {
      if (!bearerOk(req, res, 'sk-the-right-one-123456')) return;
      sendJson(res, 200, MINIMAL_COMPLETION);
    });
    const good = await chatMock();
    const { openai } = await front([{ url: strict.url }, { url: good.url }]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe(UNI);
    expect(response.headers.get('x-router-provider')).toBe('p1');
    expect(response.headers.get('x-router-trail') ?? '').toMatch(/p0\/gpt-4o=/);

    const alone = await front([{ url: strict.url }]);
    const err = (await rejection(
      alone.openai.chat.completions.create({ model: 'r', messages: hi }),
    )) as InstanceType<typeof OpenAI.APIError>;
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.status).toBe(502);
    expect((err.error as { type?: string }).type).toBe('upstream_error');
    expect(err.message).toMatch(/p0\/gpt-4o/);
    expect(JSON.stringify(err.error)).not.toContain(PROVIDER_KEY);
  });
});

// =============================================================================================

describe('embeddings and models through the openai SDK, Vercel and LangChain', () => {
  /** An embeddings mock as in OpenAI's reference: honours encoding_format (base64 of float32 LE) and dimensions. */
  async function embeddingsMock(opts: { honourBase64: boolean }): Promise<Foreign> {
    return foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      if (req.url !== '/v1/embeddings')
        return sendJson(res, 404, {
          error: { message: 'nope', type: 'invalid_request_error', param: null, code: null },
        });
      const inputs = Array.isArray(req.body.input)
        ? (req.body.input as string[])
        : [req.body.input as string];
      const dims = typeof req.body.dimensions === 'number' ? req.body.dimensions : 4;
      const vec = (s: string, k: number) => Array.from({ length: dims }, (_, j) => (s.length + k + j) / 8);
      const data = inputs.map((s, k) => {
        const v = vec(String(s), k);
        const embedding =
          opts.honourBase64 && req.body.encoding_format === 'base64'
            ? Buffer.from(new Float32Array(v).buffer).toString('base64')
            : v;
        return { object: 'embedding', index: k, embedding };
      });
      sendJson(
        res,
        200,
        {
          object: 'list',
          data,
          model: 'text-embedding-3-small',
          usage: { prompt_tokens: 5, total_tokens: 5 },
        },
        'application/json; charset=utf-8',
      );
    });
  }

  it('openai SDK default (asks base64), explicit float, and dimensions: the same vectors as directly, body untouched', async () => {
    for (const honourBase64 of [true, false]) {
      const mock = await embeddingsMock({ honourBase64 });
      const { openai } = await front([
        { url: mock.url, model: 'text-embedding-3-small', capabilities: ['embeddings'] },
      ]);
      const direct = directOpenAI(mock);
      for (const extra of [{}, { encoding_format: 'float' as const }, { dimensions: 3 }]) {
        mock.seen.length = 0;
        const d = await direct.embeddings.create({
          model: 'text-embedding-3-small',
          input: ['héllo', 'wörld'],
          ...extra,
        });
        const v = await openai.embeddings.create({ model: 'r', input: ['héllo', 'wörld'], ...extra });
        expect(v, JSON.stringify({ honourBase64, extra })).toEqual(d);
        const { model: _m1, ...b1 } = mock.seen[0]!.body;
        const { model: _m2, ...b2 } = mock.seen[1]!.body;
        expect(b2).toEqual(b1);
      }
    }
  });

  it('Vercel embedMany and LangChain OpenAIEmbeddings: the same vectors as directly', async () => {
    const mock = await embeddingsMock({ honourBase64: true });
    const { baseURL } = await front([
      { url: mock.url, model: 'text-embedding-3-small', capabilities: ['embeddings'] },
    ]);
    const e1 = await embedMany({
      model: createOpenAI({ baseURL: `${mock.url}/v1`, apiKey: PROVIDER_KEY }).embedding(
        'text-embedding-3-small',
      ),
      values: ['a', 'bb'],
      maxRetries: 0,
    });
    const e2 = await embedMany({
      model: createOpenAI({ baseURL, apiKey: 'k' }).embedding('r'),
      values: ['a', 'bb'],
      maxRetries: 0,
    });
    expect(e2.embeddings).toEqual(e1.embeddings);
    expect(e2.usage).toEqual(e1.usage);
    const mk = (url: string, model: string, key: string) =>
      new OpenAIEmbeddings({
        model,
        apiKey: key,
        maxRetries: 0,
        dimensions: 3,
        configuration: { baseURL: url },
      });
    const l1 = await mk(`${mock.url}/v1`, 'text-embedding-3-small', PROVIDER_KEY).embedDocuments(['a', 'bb']);
    const l2 = await mk(baseURL, 'r', 'k').embedDocuments(['a', 'bb']);
    expect(l2).toEqual(l1);
    expect(l2[0]).toHaveLength(3);
  });

  it('client.models.list() lists route names and provider/model names; retrieve() of a provider/model id works', async () => {
    const mock = await chatMock();
    const { openai } = await front([{ url: mock.url }]);
    const ids: string[] = [];
    for await (const m of openai.models.list()) {
      ids.push(m.id);
      expect(m.object).toBe('model');
      expect(typeof m.created).toBe('number');
      expect(typeof m.owned_by).toBe('string');
    }
    expect(ids).toEqual(expect.arrayContaining(['r', 'p0/gpt-4o']));
    const one = await openai.models.retrieve('p0/gpt-4o');
    expect(one.id).toBe('p0/gpt-4o');
    const route = await openai.models.retrieve('r');
    expect(route.id).toBe('r');
    const err = (await rejection(openai.models.retrieve('nope'))) as InstanceType<typeof OpenAI.APIError>;
    expect(err.status).toBe(404);
  });
});

// =============================================================================================

describe('aborts through AbortController in each SDK close the upstream request', () => {
  /** A mock that answers nothing (JSON) or only a role chunk and a ping (stream), then hangs. */
  async function hangingMock(): Promise<Foreign> {
    return foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      if (req.body.stream === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(
          `data: ${JSON.stringify({ object: 'chat.completion.chunk', model: 'gpt-4o', choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })}\n\n`,
        );
        res.write(': ping\n\n');
      }
      // then nothing: the caller must go away
    });
  }

  it('openai SDK: abort during a JSON call and during a stream still in its preamble', async () => {
    const mock = await hangingMock();
    const { openai } = await front([{ url: mock.url }]);
    for (const stream of [false, true]) {
      const before = mock.seen.length;
      const cutBefore = mock.cut;
      const ac = new AbortController();
      const p = openai.chat.completions.create({ model: 'r', messages: hi, stream }, { signal: ac.signal });
      await until('the mock got the request', () => mock.seen.length > before);
      ac.abort();
      const err = await rejection(p);
      expect(err).toBeInstanceOf(OpenAI.APIUserAbortError);
      await until('the upstream request closed', () => mock.cut > cutBefore);
    }
    expect(mock.seen).toHaveLength(2); // no failover to anyone after the client left
  });

  it('Vercel generateText / streamText abortSignal: the upstream request closes', async () => {
    const mock = await hangingMock();
    const { baseURL } = await front([{ url: mock.url }]);
    const model = createOpenAI({ baseURL, apiKey: 'k' }).chat('r');
    {
      const ac = new AbortController();
      const p = generateText({ model, prompt: 'hi', abortSignal: ac.signal, maxRetries: 0 });
      await until('the mock got the request', () => mock.seen.length === 1);
      ac.abort();
      await rejection(p);
      await until('the upstream request closed', () => mock.cut === 1);
    }
    {
      const ac = new AbortController();
      const errors: unknown[] = [];
      const s = streamText({
        model,
        prompt: 'hi',
        abortSignal: ac.signal,
        maxRetries: 0,
        onError: ({ error }) => void errors.push(error),
      });
      const consumed = s.consumeStream();
      await until('the mock got the stream request', () => mock.seen.length === 2);
      ac.abort();
      await consumed;
      await until('the upstream stream closed', () => mock.cut === 2);
    }
  });

  it('LangChain invoke / stream with signal: the upstream request closes', async () => {
    const mock = await hangingMock();
    const { baseURL } = await front([{ url: mock.url }]);
    const model = new ChatOpenAI({ model: 'r', apiKey: 'k', maxRetries: 0, configuration: { baseURL } });
    {
      const ac = new AbortController();
      const p = model.invoke('hi', { signal: ac.signal });
      await until('the mock got the request', () => mock.seen.length === 1);
      ac.abort();
      await rejection(p);
      await until('the upstream request closed', () => mock.cut === 1);
    }
    {
      const ac = new AbortController();
      const p = (async () => {
        for await (const _ of await model.stream('hi', { signal: ac.signal })) void _;
      })();
      await until('the mock got the stream request', () => mock.seen.length === 2);
      ac.abort();
      await rejection(p);
      await until('the upstream stream closed', () => mock.cut === 2);
    }
  });
});

// =============================================================================================

describe('Anthropic mocks copied from the Messages API reference', () => {
  /** The reference's JSON example, with the x-api-key and anthropic-version checks a careful mock makes. */
  function anthropicAuthOk(req: Seen, res: ServerResponse): boolean {
    if (req.headers['x-api-key'] !== ANTHROPIC_KEY) {
      sendJson(res, 401, {
        type: 'error',
        error: { type: 'authentication_error', message: 'invalid x-api-key' },
      });
      return false;
    }
    if (
      typeof req.headers['anthropic-version'] !== 'string' ||
      !/^\d{4}-\d{2}-\d{2}$/.test(req.headers['anthropic-version'])
    ) {
      sendJson(res, 400, {
        type: 'error',
        error: { type: 'invalid_request_error', message: 'anthropic-version: header is required' },
      });
      return false;
    }
    if (req.headers.authorization !== undefined) {
      sendJson(res, 400, {
        type: 'error',
        error: { type: 'invalid_request_error', message: 'unexpected Authorization header' },
      });
      return false;
    }
    return true;
  }

  const anthropicSse = (events: Array<[string, Json]>, eol = '\n') =>
    events.map(([type, data]) => `event: ${type}${eol}data: ${JSON.stringify(data)}${eol}${eol}`).join('');

  async function anthropicMock(): Promise<Foreign> {
    return foreign(async (req, res) => {
      if (!anthropicAuthOk(req, res)) return;
      if (req.url !== '/v1/messages')
        return sendJson(res, 404, {
          type: 'error',
          error: { type: 'not_found_error', message: `no ${req.url}` },
        });
      const wantsTool = Array.isArray(req.body.tools) && req.body.tools.length > 0;
      if (req.body.stream === true) {
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'request-id': 'req_018EeWyXxfu5pfWkrYcMdjWG',
        });
        const events: Array<[string, Json]> = [
          [
            'message_start',
            {
              type: 'message_start',
              message: {
                id: 'msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY',
                type: 'message',
                role: 'assistant',
                content: [],
                model: 'claude-sonnet-4-5-20250929',
                stop_reason: null,
                stop_sequence: null,
                usage: { input_tokens: 25, output_tokens: 1 },
              },
            },
          ],
          ['ping', { type: 'ping' }],
        ];
        if (wantsTool) {
          events.push(
            [
              'content_block_start',
              { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
            ],
            [
              'content_block_delta',
              {
                type: 'content_block_delta',
                index: 0,
                delta: { type: 'text_delta', text: 'Checking both.' },
              },
            ],
            ['content_block_stop', { type: 'content_block_stop', index: 0 }],
          );
          const args = [
            ['toolu_01A', '{"city": "Paris", "unit": "celsius"}'],
            ['toolu_01B', '{"city": "Tōkyō", "unit": "fahrenheit"}'],
          ] as const;
          args.forEach(([id, json], k) => {
            const index = k + 1;
            events.push([
              'content_block_start',
              {
                type: 'content_block_start',
                index,
                content_block: { type: 'tool_use', id, name: 'get_weather', input: {} },
              },
            ]);
            events.push([
              'content_block_delta',
              { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: '' } },
            ]);
            for (const piece of json.match(/.{1,3}/gsu) ?? [])
              events.push([
                'content_block_delta',
                {
                  type: 'content_block_delta',
                  index,
                  delta: { type: 'input_json_delta', partial_json: piece },
                },
              ]);
            events.push(['content_block_stop', { type: 'content_block_stop', index }]);
          });
          events.push([
            'message_delta',
            {
              type: 'message_delta',
              delta: { stop_reason: 'tool_use', stop_sequence: null },
              usage: { output_tokens: 89 },
            },
          ]);
        } else {
          events.push([
            'content_block_start',
            { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
          ]);
          for (const piece of ['Grüße ', '👋🏽', ' — 日本', '語 ✓', ' ok'])
            events.push([
              'content_block_delta',
              { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: piece } },
            ]);
          events.push(['content_block_stop', { type: 'content_block_stop', index: 0 }]);
          events.push([
            'message_delta',
            {
              type: 'message_delta',
              delta: { stop_reason: 'end_turn', stop_sequence: null },
              usage: { output_tokens: 15 },
            },
          ]);
        }
        events.push(['message_stop', { type: 'message_stop' }]);
        await dribble(res, anthropicSse(events, '\r\n'), [5, 17, 2, 40]);
        return;
      }
      const content = wantsTool
        ? [
            { type: 'text', text: 'Checking both.' },
            {
              type: 'tool_use',
              id: 'toolu_01A',
              name: 'get_weather',
              input: { city: 'Paris', unit: 'celsius' },
            },
            {
              type: 'tool_use',
              id: 'toolu_01B',
              name: 'get_weather',
              input: { city: 'Tōkyō', unit: 'fahrenheit' },
            },
          ]
        : [{ type: 'text', text: UNI }];
      sendJson(
        res,
        200,
        {
          id: 'msg_013Zva2CMHLNnXjNJJKqJ2EF',
          type: 'message',
          role: 'assistant',
          model: 'claude-sonnet-4-5-20250929',
          content,
          stop_reason: wantsTool ? 'tool_use' : 'end_turn',
          stop_sequence: null,
          usage: {
            input_tokens: 2095,
            output_tokens: 503,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            service_tier: 'standard',
          },
        },
        'application/json; charset=utf-8',
      );
    });
  }

  it('base_url with and without /v1 (and a trailing slash): x-api-key and anthropic-version arrive, no Authorization; JSON answer translated', async () => {
    const mock = await anthropicMock();
    for (const base of [mock.url, `${mock.url}/`, `${mock.url}/v1`, `${mock.url}/v1/`]) {
      const { openai } = await front([{ url: mock.url, kind: 'anthropic', base }]);
      const r = await openai.chat.completions.create({
        model: 'r',
        messages: [{ role: 'system', content: 'be brief' }, ...hi],
        max_tokens: 100,
      });
      expect(r.object, base).toBe('chat.completion');
      expect(r.choices).toEqual([
        {
          index: 0,
          message: expect.objectContaining({ role: 'assistant', content: UNI }),
          logprobs: null,
          finish_reason: 'stop',
        },
      ]);
      expect(r.usage).toMatchObject({ prompt_tokens: 2095, completion_tokens: 503, total_tokens: 2598 });
      expect(mock.seen.at(-1)!.url).toBe('/v1/messages');
      expect(mock.seen.at(-1)!.body).toMatchObject({
        model: 'claude-sonnet-4-5',
        system: expect.anything(),
        max_tokens: 100,
      });
    }
  });

  it('stream (CRLF, pings, byte-split): openai SDK chunks, Vercel streamText and LangChain stream get text, finish and usage', async () => {
    const mock = await anthropicMock();
    const { openai, baseURL } = await front([{ url: mock.url, kind: 'anthropic' }]);
    const chunks = await collect(
      await openai.chat.completions.create({
        model: 'r',
        messages: hi,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(UNI);
    expect(chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter(Boolean)).toEqual(['stop']);
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toMatchObject({
      prompt_tokens: 25,
      completion_tokens: 15,
      total_tokens: 40,
    });
    for (const c of chunks) {
      expect(c.object).toBe('chat.completion.chunk');
      expect(typeof c.id).toBe('string');
      expect(typeof c.created).toBe('number');
    }
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);

    const s = streamText({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      maxRetries: 0,
    });
    expect(await s.text).toBe(UNI);
    expect(await s.finishReason).toBe('stop');
    expect((await s.usage).inputTokens).toBe(25);
    expect((await s.usage).outputTokens).toBe(15);

    let acc: AIMessageChunk | undefined;
    for await (const c of await new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL },
    }).stream('hi'))
      acc = acc ? acc.concat(c) : c;
    expect(acc!.content).toBe(UNI);
    expect(acc!.usage_metadata).toMatchObject({ input_tokens: 25, output_tokens: 15, total_tokens: 40 });
  });

  it('parallel tool_use, JSON and streamed in 3-character input_json_delta pieces: the same calls as an OpenAI model would give, for each client', async () => {
    const mock = await anthropicMock();
    const { openai, baseURL } = await front([{ url: mock.url, kind: 'anthropic' }]);
    const want = [
      ['toolu_01A', 'get_weather', { city: 'Paris', unit: 'celsius' }],
      ['toolu_01B', 'get_weather', { city: 'Tōkyō', unit: 'fahrenheit' }],
    ];
    const asList = (calls: OpenAI.Chat.ChatCompletionMessageToolCall[] | undefined) =>
      (calls ?? []).map((c) =>
        c.type === 'function' ? [c.id, c.function.name, JSON.parse(c.function.arguments)] : c,
      );

    const j = await openai.chat.completions.create({ model: 'r', messages: hi, tools: [weatherTool] });
    expect(asList(j.choices[0]!.message.tool_calls)).toEqual(want);
    expect(j.choices[0]!.message.content).toBe('Checking both.');
    expect(j.choices[0]!.finish_reason).toBe('tool_calls');
    expect(j.choices[0]!.message.tool_calls!.every((c) => c.type === 'function')).toBe(true);

    const f = await openai.chat.completions
      .stream({ model: 'r', messages: hi, tools: [weatherTool] })
      .finalChatCompletion();
    expect(asList(f.choices[0]!.message.tool_calls)).toEqual(want);
    expect(f.choices[0]!.message.content).toBe('Checking both.');
    expect(f.choices[0]!.finish_reason).toBe('tool_calls');

    const tools = {
      get_weather: tool({
        description: 'Get the weather',
        inputSchema: jsonSchema<{ city: string; unit: string }>(weatherTool.function.parameters as never),
      }),
    };
    const s = streamText({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      tools,
      maxRetries: 0,
    });
    expect((await s.toolCalls).map((c) => [c.toolCallId, c.toolName, c.input])).toEqual(want);
    expect(await s.finishReason).toBe('tool-calls');
    expect(await s.text).toBe('Checking both.');

    const lc = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL },
    }).bindTools([weatherTool]);
    let acc: AIMessageChunk | undefined;
    for await (const c of await lc.stream('hi')) acc = acc ? acc.concat(c) : c;
    expect(acc!.tool_calls!.map((c) => [c.id, c.name, c.args])).toEqual(want);
    const inv = await lc.invoke('hi');
    expect(inv.tool_calls!.map((c) => [c.id, c.name, c.args])).toEqual(want);
  });

  it('a wrong Anthropic key (401 authentication_error): the OpenAI-dialect upstream behind it serves, unseen', async () => {
    const mock = await anthropicMock();
    const good = await chatMock();
    const { openai } = await front([
      { url: mock.url, kind: 'anthropic', key: 'sk-ant-wrong-0000' },
      { url: good.url },
    ]);
    const chunks = await collect(
      await openai.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(UNI);
    expect(mock.seen).toHaveLength(1);
  });
});

// =============================================================================================

describe('mocks that answer in the other form than asked (README: the client gets its own form, whole)', () => {
  /** A mock that ignores `stream` and always answers one minimal JSON completion with two tool calls. */
  async function jsonOnlyToolMock(): Promise<Foreign> {
    return foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      sendJson(res, 200, {
        object: 'chat.completion',
        model: 'gpt-4o',
        choices: [
          {
            message: {
              role: 'assistant',
              content: null,
              tool_calls: [
                {
                  id: 'call_A',
                  type: 'function',
                  function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' },
                },
                {
                  id: 'call_B',
                  type: 'function',
                  function: { name: 'get_weather', arguments: '{"city":"Tōkyō","unit":"fahrenheit"}' },
                },
              ],
            },
            finish_reason: 'tool_calls',
          },
        ],
        usage: { prompt_tokens: 11, completion_tokens: 22, total_tokens: 33 },
      });
    });
  }

  const want = [
    ['call_A', 'get_weather', { city: 'Paris', unit: 'celsius' }],
    ['call_B', 'get_weather', { city: 'Tōkyō', unit: 'fahrenheit' }],
  ];

  it('stream asked, JSON with parallel tool calls answered (no id/created/index): every client gets both calls, finish and usage', async () => {
    const mock = await jsonOnlyToolMock();
    const { openai, baseURL } = await front([{ url: mock.url }]);
    const chunks = await collect(
      await openai.chat.completions.create({
        model: 'r',
        messages: hi,
        tools: [weatherTool],
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: 11, completion_tokens: 22, total_tokens: 33 });
    const f = await openai.chat.completions
      .stream({ model: 'r', messages: hi, tools: [weatherTool] })
      .finalChatCompletion();
    expect(
      f.choices[0]!.message.tool_calls!.map((c) =>
        c.type === 'function' ? [c.id, c.function.name, JSON.parse(c.function.arguments)] : c,
      ),
    ).toEqual(want);
    expect(f.choices[0]!.finish_reason).toBe('tool_calls');

    const tools = {
      get_weather: tool({
        description: 'Get the weather',
        inputSchema: jsonSchema<{ city: string; unit: string }>(weatherTool.function.parameters as never),
      }),
    };
    const s = streamText({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      tools,
      maxRetries: 0,
    });
    expect((await s.toolCalls).map((c) => [c.toolCallId, c.toolName, c.input])).toEqual(want);
    expect(await s.finishReason).toBe('tool-calls');
    expect((await s.usage).inputTokens).toBe(11);

    let acc: AIMessageChunk | undefined;
    const lc = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL },
    }).bindTools([weatherTool]);
    for await (const c of await lc.stream('hi')) acc = acc ? acc.concat(c) : c;
    expect(acc!.tool_calls!.map((c) => [c.id, c.name, c.args])).toEqual(want);
  });

  it('JSON asked, SSE answered (tool calls in interleaved pieces + usage chunk): the merged answer is what the openai stream helper builds from the same SSE', async () => {
    const mock = await foreign(async (req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await dribble(res, toolSse(), [23, 5]);
    });
    const { openai, baseURL } = await front([{ url: mock.url }]);
    const reference = await directOpenAI(mock)
      .chat.completions.stream({ model: 'gpt-4o', messages: hi, tools: [weatherTool] })
      .finalChatCompletion();
    const via = await openai.chat.completions.create({ model: 'r', messages: hi, tools: [weatherTool] });
    const pick = (c: OpenAI.Chat.ChatCompletion) => ({
      id: c.id,
      model: c.model,
      usage: c.usage,
      choices: c.choices.map((ch) => ({
        index: ch.index,
        finish_reason: ch.finish_reason,
        content: ch.message.content,
        tool_calls: ch.message.tool_calls?.map((t) =>
          t.type === 'function'
            ? { id: t.id, type: t.type, function: { name: t.function.name, arguments: t.function.arguments } }
            : t,
        ),
      })),
    });
    expect(pick(via)).toEqual(pick(reference));
    expect(via.object).toBe('chat.completion');

    const g = await generateText({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'hi',
      tools: {
        get_weather: tool({
          description: 'w',
          inputSchema: jsonSchema<{ city: string; unit: string }>(weatherTool.function.parameters as never),
        }),
      },
      maxRetries: 0,
    });
    expect(g.toolCalls.map((c) => [c.toolCallId, c.toolName, c.input])).toEqual(
      want.map(([, n, a], i) => [i === 0 ? 'call_A' : 'call_B', n, a]),
    );
    expect(g.usage.inputTokens).toBe(20);
    const inv = await new ChatOpenAI({ model: 'r', apiKey: 'k', maxRetries: 0, configuration: { baseURL } })
      .bindTools([weatherTool])
      .invoke('hi');
    expect(inv.tool_calls!.map((c) => [c.id, c.name, c.args])).toEqual(
      want.map(([, n, a], i) => [i === 0 ? 'call_A' : 'call_B', n, a]),
    );
  });
});

// =============================================================================================

describe('errors as a mock copies them from the OpenAI reference reach each client as they would directly', () => {
  const cases = [
    {
      status: 400,
      body: {
        error: {
          message: "Invalid value for 'temperature': must be ≤ 2.",
          type: 'invalid_request_error',
          param: 'temperature',
          code: 'invalid_value',
        },
      },
    },
    {
      status: 404,
      body: {
        error: {
          message: 'The model `gpt-9` does not exist or you do not have access to it.',
          type: 'invalid_request_error',
          param: null,
          code: 'model_not_found',
        },
      },
    },
    {
      status: 422,
      body: {
        error: {
          message: 'Unprocessable: messages[0].content',
          type: 'invalid_request_error',
          param: 'messages',
          code: null,
        },
      },
    },
  ];
  for (const c of cases) {
    it(`${c.status}: openai SDK error class, status, message, type, param, code as directly (JSON and stream)`, async () => {
      const mock = await foreign((req, res) => {
        if (!bearerOk(req, res)) return;
        sendJson(res, c.status, c.body, 'application/json; charset=utf-8');
      });
      const { openai } = await front([{ url: mock.url }]);
      for (const stream of [false, true]) {
        const d = (await rejection(
          directOpenAI(mock).chat.completions.create({ model: 'gpt-4o', messages: hi, stream }),
        )) as InstanceType<typeof OpenAI.APIError>;
        const v = (await rejection(
          openai.chat.completions.create({ model: 'r', messages: hi, stream }),
        )) as InstanceType<typeof OpenAI.APIError>;
        const shape = (e: InstanceType<typeof OpenAI.APIError>) => ({
          cls: e.constructor.name,
          status: e.status,
          message: e.message,
          type: e.type,
          param: e.param,
          code: e.code,
        });
        expect(shape(v)).toEqual(shape(d));
      }
      expect(mock.seen).toHaveLength(4); // not failed over, not retried
    });
  }
});

describe('Anthropic: the client leaving while the gateway holds the preamble back', () => {
  it('message_start and pings, then nothing: an openai SDK abort closes the upstream request, no failover', async () => {
    const mock = await foreign((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        `event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { id: 'msg_x', type: 'message', role: 'assistant', content: [], model: 'claude-sonnet-4-5', stop_reason: null, usage: { input_tokens: 3, output_tokens: 1 } } })}\n\n`,
      );
      res.write(`event: ping\ndata: {"type": "ping"}\n\n`);
    });
    const other = await chatMock();
    const { openai } = await front([{ url: mock.url, kind: 'anthropic' }, { url: other.url }]);
    const ac = new AbortController();
    const p = openai.chat.completions.create(
      { model: 'r', messages: hi, stream: true },
      { signal: ac.signal },
    );
    await until('the mock got the request', () => mock.seen.length === 1);
    await sleep(30);
    ac.abort();
    expect(await rejection(p)).toBeInstanceOf(OpenAI.APIUserAbortError);
    await until('the upstream request closed', () => mock.cut === 1);
    await sleep(50);
    expect(other.seen).toHaveLength(0);
  });
});

describe('more framing a hand-written mock produces', () => {
  it('each SSE chunk pretty-printed over several data: lines (valid SSE): the openai SDK reads the same chunks', async () => {
    const mock = await foreign(async (req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const ev = (o: unknown) =>
        `${JSON.stringify(o, null, 2)
          .split('\n')
          .map((l) => `data: ${l}`)
          .join('\n')}\n\n`;
      const head = { id: 'chatcmpl-pp', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };
      const text = [
        ev({
          ...head,
          choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
        }),
        ev({ ...head, choices: [{ index: 0, delta: { content: 'multi\nline ' }, finish_reason: null }] }),
        ev({ ...head, choices: [{ index: 0, delta: { content: UNI }, finish_reason: null }] }),
        ev({ ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }),
        'data: [DONE]\n\n',
      ].join('');
      await dribble(res, text, [50, 3]);
    });
    const { openai } = await front([{ url: mock.url }]);
    const d = await collect(
      await directOpenAI(mock).chat.completions.create({ model: 'gpt-4o', messages: hi, stream: true }),
    );
    const v = await collect(await openai.chat.completions.create({ model: 'r', messages: hi, stream: true }));
    expect(v).toEqual(d);
    expect(v.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(`multi\nline ${UNI}`);
  });

  it('a provider with no api_key (a local server): the client key is not forwarded upstream', async () => {
    const mock = await foreign((req, res) =>
      sendJson(res, 200, {
        ...MINIMAL_COMPLETION,
        choices: [{ index: 0, ...MINIMAL_COMPLETION.choices[0] }],
      }),
    );
    const gw = track(
      await startGateway({
        server: { api_keys: ['client-key-XYZ-12345'] },
        providers: [
          { name: 'local', kind: 'openai', base_url: `${mock.url}/v1`, models: [{ name: 'llama' }] },
        ],
        routes: { r: { strategy: 'priority', targets: ['local/llama'] } },
      }),
    );
    const openai = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key-XYZ-12345', maxRetries: 0 });
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]!.message.content).toBe(UNI);
    expect(JSON.stringify(mock.seen[0]!.headers)).not.toContain('client-key-XYZ-12345');
  });

  // As for the chat BOM test above (SPEC §4 POST /v1/embeddings): the embeddings relay (http/embeddings.ts
  // attemptPlainJson -> embeddingsAnswerText -> relayedAnswer) reads a BOM-prefixed body as the JSON it is,
  // not a 502 invalid_upstream_json.
  it('an embeddings answer starting with a UTF-8 BOM reads as it does directly', async () => {
    const mock = await foreign((req, res) => {
      if (!bearerOk(req, res)) return;
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      const body = {
        object: 'list',
        data: [{ object: 'embedding', index: 0, embedding: [0.5, 0.25] }],
        model: 'e',
        usage: { prompt_tokens: 1, total_tokens: 1 },
      };
      res.end(`\uFEFF${JSON.stringify(body)}`);
    });
    const { openai } = await front([{ url: mock.url, model: 'e', capabilities: ['embeddings'] }]);
    const d = await directOpenAI(mock).embeddings.create({
      model: 'e',
      input: 'x',
      encoding_format: 'float',
    });
    expect(d.data[0]!.embedding).toEqual([0.5, 0.25]);
    const v = await openai.embeddings.create({ model: 'r', input: 'x', encoding_format: 'float' });
    expect(v).toEqual(d);
  });
});
