/**
 * Audit: real clients (the OpenAI SDK, the Vercel AI SDK, LangChain) through the gateway against upstream
 * mocks written the way a test author writes them quickly with node:http — fields left out, SSE framed in
 * every way the SSE spec allows (CRLF, `data:` without a space, comments, `event:` lines, odd byte splits,
 * one big write), gzip, error bodies in shapes other than OpenAI's — and Anthropic Messages mocks with
 * minimal or unusual event sequences. Expectations come from SPEC.md, README.md and the real APIs.
 */
import { createServer, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import {
  APICallError,
  generateObject,
  generateText,
  jsonSchema,
  stepCountIs,
  streamObject,
  streamText,
  tool,
} from 'ai';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { collect, writeSplit } from '../helpers/audit-wire.js';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  gate,
  sendJson as json,
  startMock,
  type MockHandler,
  type Received,
} from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const UPSTREAM_KEY = 'sk-audit-upstream-SECRET-31337';
const hi = [{ role: 'user' as const, content: 'hi' }];

onlyLoopbackFetch();

// ---------------------------------------------------------------------------------------------
// Mocks

type Handler = MockHandler;
type Mock = { url: string; received: Received[] };

/** A mock upstream closed after the test. */
async function mock(handler: Handler): Promise<Mock> {
  return track(await startMock(handler));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A JSON choice: a message of `content` and its finish. */
const choice = (content: string, finish = 'stop', index = 0): Json => ({
  index,
  message: { role: 'assistant', content },
  finish_reason: finish,
});

/** A JSON answer as a hasty mock writes it: only `choices`, one message of `content`. */
const bareAnswer = (content: string): Json => ({ choices: [choice(content)] });

/** A mock that answers every request with bareAnswer(content). */
const answerMock = (content: string) => mock((_q, res) => json(res, 200, bareAnswer(content)));

/** A JSON answer with OpenAI's top-level fields (id, object, created, model) around `choices`. */
const completion = (id: string, choices: Json[], extra: Json = {}): Json => ({
  id,
  object: 'chat.completion',
  created: 1,
  model: 'gpt-4o',
  choices,
  ...extra,
});

/** A choice calling function `name` once, with id `id` and `args`, content null. */
const callChoice = (id: string, name: string, args: string): Json => ({
  index: 0,
  message: {
    role: 'assistant',
    content: null,
    tool_calls: [{ id, type: 'function', function: { name, arguments: args } }],
  },
  finish_reason: 'tool_calls',
});

/** A local server listening on 127.0.0.1: its URL. */
async function listening(server: {
  listen(port: number, host: string, cb: () => void): unknown;
  address(): unknown;
}) {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A bare chunk as a hasty mock writes it: only `choices`. */
const bare = (delta: Json, finish: string | null = null, index = 0): Json => ({
  choices: [{ index, delta, finish_reason: finish }],
});
/** A full chunk as OpenAI writes it. */
const full = (delta: Json, finish: string | null = null, index = 0): Json => ({
  id: 'chatcmpl-audit',
  object: 'chat.completion.chunk',
  created: 1741569952,
  model: 'gpt-4o-2024-08-06',
  system_fingerprint: 'fp_audit',
  choices: [{ index, delta, logprobs: null, finish_reason: finish }],
});

function sseText(events: readonly (Json | string)[], opts: { eol?: string; prefix?: string } = {}): string {
  const eol = opts.eol ?? '\n';
  const prefix = opts.prefix ?? 'data: ';
  return events.map((e) => `${prefix}${typeof e === 'string' ? e : JSON.stringify(e)}${eol}${eol}`).join('');
}

const SSE_HEAD = { 'content-type': 'text/event-stream' };

/** A mock that answers every request with `events` as one SSE write. */
const sseMock = (events: readonly (Json | string)[], opts: { eol?: string; prefix?: string } = {}) =>
  mock((_q, res) => {
    res.writeHead(200, SSE_HEAD);
    res.end(sseText(events, opts));
  });

// ---------------------------------------------------------------------------------------------
// Gateway

interface Setup {
  gw: TestGateway;
  baseURL: string;
  openai: OpenAI;
}

/** The gateway with route `r` over `mocks` in priority order (providers p0, p1, ...; kind per mock). */
async function setup(
  mocks: readonly (Mock | { mock: Mock; kind: 'anthropic'; model?: string })[],
  opts: { timeouts?: Record<string, number> } = {},
): Promise<Setup> {
  const providers = mocks.map((m, i) => {
    const anth = 'kind' in m;
    const url = anth ? m.mock.url : m.url;
    return {
      name: `p${i}`,
      kind: anth ? 'anthropic' : 'openai',
      base_url: anth ? url : `${url}/v1`,
      api_key: UPSTREAM_KEY,
      timeouts: { connect_ms: 2000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000, ...opts.timeouts },
      models: [{ name: anth ? (m.model ?? 'claude-sonnet-4-5') : 'gpt-4o' }],
    };
  });
  const gw = track(
    await startGateway({
      providers,
      routes: {
        r: {
          strategy: 'priority',
          targets: providers.map((p) => `${p.name}/${p.models[0]!.name}`),
        },
      },
    }),
  );
  const baseURL = `${gw.url}/v1`;
  return { gw, baseURL, openai: new OpenAI({ baseURL, apiKey: 'k', maxRetries: 0 }) };
}

const textOf = (chunks: ChatCompletionChunk[], index = 0): string =>
  chunks.map((c) => c.choices.find((ch) => ch.index === index)?.delta.content ?? '').join('');
const finishOf = (chunks: ChatCompletionChunk[], index = 0): string | undefined =>
  chunks.flatMap((c) => c.choices.filter((ch) => ch.index === index && ch.finish_reason)).at(-1)
    ?.finish_reason ?? undefined;

async function streamChat(openai: OpenAI, extra: Json = {}): Promise<ChatCompletionChunk[]> {
  return collect(
    await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      stream: true,
      ...extra,
    } as OpenAI.Chat.ChatCompletionCreateParamsStreaming),
  );
}

/** What a call rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

/** A plain stream read until it rejects: the chunks seen before, and what it rejected with. */
async function streamUntilRejected(openai: OpenAI): Promise<{ seen: ChatCompletionChunk[]; err: unknown }> {
  const seen: ChatCompletionChunk[] = [];
  const err = await rejection(
    (async () => {
      for await (const c of await openai.chat.completions.create({
        model: 'r',
        messages: hi,
        stream: true,
      }))
        seen.push(c);
    })(),
  );
  return { seen, err };
}

/** What `p` gives, read by `ok`, or `{ status }`: the status of the APIError it rejects with (else the error as text). */
function okOrStatus<T, U>(p: Promise<T>, ok: (v: T) => U): Promise<U | { status: unknown }> {
  return p.then(ok, (e: unknown) => ({ status: e instanceof OpenAI.APIError ? e.status : String(e) }));
}

/** A plain stream through the SDK: its text and finish, or the status it failed with. */
const streamedOrStatus = (openai: OpenAI) =>
  okOrStatus(streamChat(openai), (chunks) => ({ text: textOf(chunks), finish: finishOf(chunks) }));

/** A plain JSON request through the SDK: the content of choice 0, or the status it failed with. */
const contentOrStatus = (openai: OpenAI) =>
  okOrStatus(openai.chat.completions.create({ model: 'r', messages: hi }), (r) => ({
    content: (r as Partial<typeof r>).choices?.[0]?.message.content,
  }));

/** A plain JSON request through the SDK: the content of choice 0 and the response headers. */
async function createWithHeaders(
  openai: OpenAI,
): Promise<{ content: string | null | undefined; headers: Headers }> {
  const { data, response } = await openai.chat.completions
    .create({ model: 'r', messages: hi })
    .withResponse();
  return { content: data.choices[0]?.message.content, headers: response.headers };
}

/** jsonSchema over a schema object held in a variable. */
const schemaOf = <T>(s: unknown) => jsonSchema<T>(s as Parameters<typeof jsonSchema>[0]);

/** The Vercel AI SDK's call options for prompt "hi" to route `r`, no retries. */
const vercelHi = (baseURL: string) => ({
  model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
  prompt: 'hi',
  maxRetries: 0,
});

/** A LangChain chat model on route `r`, no retries, with `extra` options. */
const langchain = (baseURL: string, extra: ConstructorParameters<typeof ChatOpenAI>[0] = {}) =>
  new ChatOpenAI({ model: 'r', apiKey: 'k', configuration: { baseURL }, maxRetries: 0, ...extra });

const UNICODE = 'héllo wörld 🌍 日本語 — ok';

// ---------------------------------------------------------------------------------------------

describe('OpenAI-shaped mocks: JSON answers with fields left out', () => {
  it('an answer with only choices (no id, created, object, model, usage): every client reads it', async () => {
    const m = await answerMock('bare answer');
    const { openai, baseURL } = await setup([m]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(data.choices[0]?.message.content).toBe('bare answer');
    expect(data.choices[0]?.finish_reason).toBe('stop');
    expect(response.headers.get('x-router-provider')).toBe('p0');
    expect(response.headers.get('x-router-model')).toBe('gpt-4o');
    expect(response.headers.get('x-router-attempts')).toBe('1');

    const v = await generateText(vercelHi(baseURL));
    expect(v.text).toBe('bare answer');
    expect(v.finishReason).toBe('stop');

    const lc = await langchain(baseURL).invoke('hi');
    expect(lc.content).toBe('bare answer');
  });

  it('content null beside tool_calls, usage with token details: tool calls and usage reach each client', async () => {
    const m = await mock((_q, res) =>
      json(res, 200, {
        ...completion('chatcmpl-x', [callChoice('call_1', 'weather', '{"city":"Oslo"}')]),
        usage: {
          prompt_tokens: 20,
          completion_tokens: 9,
          total_tokens: 29,
          prompt_tokens_details: { cached_tokens: 4 },
          completion_tokens_details: { reasoning_tokens: 3 },
        },
      }),
    );
    const { openai, baseURL } = await setup([m]);
    const tools = [
      {
        type: 'function' as const,
        function: {
          name: 'weather',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    ];
    const r = await openai.chat.completions.create({ model: 'r', messages: hi, tools });
    expect(r.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      id: 'call_1',
      function: { name: 'weather', arguments: '{"city":"Oslo"}' },
    });
    expect(r.usage).toMatchObject({
      prompt_tokens: 20,
      completion_tokens: 9,
      completion_tokens_details: { reasoning_tokens: 3 },
      prompt_tokens_details: { cached_tokens: 4 },
    });

    const v = await generateText({
      ...vercelHi(baseURL),
      tools: { weather: tool({ inputSchema: schemaOf<{ city: string }>(tools[0]!.function.parameters) }) },
    });
    expect(v.toolCalls.map((c) => [c.toolName, c.input])).toEqual([['weather', { city: 'Oslo' }]]);
    expect(v.finishReason).toBe('tool-calls');
    expect(v.usage.inputTokens).toBe(20);
    expect(v.usage.outputTokens).toBe(9);

    const lc = await langchain(baseURL).bindTools(tools).invoke('hi');
    expect(lc.tool_calls?.[0]).toMatchObject({ name: 'weather', args: { city: 'Oslo' }, id: 'call_1' });
    expect(lc.usage_metadata).toMatchObject({ input_tokens: 20, output_tokens: 9, total_tokens: 29 });
  });

  it('n: 2 JSON with choice 1 listed before choice 0: both reach the client by index', async () => {
    const m = await mock((_q, res) =>
      json(res, 200, completion('x', [choice('second', 'length', 1), choice('first')])),
    );
    const { openai } = await setup([m]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi, n: 2 });
    const byIndex = Object.fromEntries(r.choices.map((c) => [c.index, [c.message.content, c.finish_reason]]));
    expect(byIndex).toEqual({ 0: ['first', 'stop'], 1: ['second', 'length'] });
  });

  it('a JSON answer sent with connection: close and content-length, then the next request on a new socket', async () => {
    let n = 0;
    const m = await mock((_q, res) => {
      const body = JSON.stringify(bareAnswer(`answer ${n++}`));
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(body)),
        connection: 'close',
      });
      res.end(body);
    });
    const { openai } = await setup([m]);
    for (let i = 0; i < 3; i++) {
      const r = await openai.chat.completions.create({ model: 'r', messages: hi });
      expect(r.choices[0]?.message.content).toBe(`answer ${i}`);
    }
  });

  it('a JSON answer written in odd pieces, split inside a multi-byte character', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      const body = JSON.stringify(bareAnswer(UNICODE));
      return writeSplit(res, body, [7, 1, 3]);
    });
    const { openai } = await setup([m]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content).toBe(UNICODE);
  });
});

describe('OpenAI-shaped mocks: SSE framing', () => {
  const events = (text: readonly string[]): Json[] => [
    bare({ role: 'assistant' }),
    ...text.map((t) => bare({ content: t })),
    bare({}, 'stop'),
  ];
  const PARTS = ['hé', 'llo wö', 'rld 🌍 ', '日本語', ' — ok'];

  it('all events in one write, chunks with only choices: the client gets the text and finish', async () => {
    const m = await sseMock([...events(PARTS), '[DONE]']);
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('split byte by byte (mid-line, mid UTF-8 character): nothing lost or corrupted', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      return writeSplit(res, sseText([...events(PARTS), '[DONE]']), [1, 2, 5, 1, 3]);
    });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('CRLF line endings split between \\r and \\n', async () => {
    const text = sseText([...events(PARTS), '[DONE]'], { eol: '\r\n' });
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      // every write ends right after a \r
      const pieces = text.split(/(?<=\r)/);
      for (const p of pieces) {
        res.write(p);
        await sleep(1);
      }
      res.end();
    });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('lone CR line endings (allowed by the SSE spec)', async () => {
    const m = await sseMock([...events(PARTS), '[DONE]'], { eol: '\r' });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('data: without a space, comment lines, event:/id:/retry: lines', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, SSE_HEAD);
      let s = ': keep-alive\n\nretry: 3000\n\n';
      events(PARTS).forEach((e, i) => {
        s += `: comment ${i}\nid: ${i}\nevent: message\ndata:${JSON.stringify(e)}\n\n`;
      });
      s += 'event: message\ndata:[DONE]\n\n';
      res.end(s);
    });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('[DONE] without its final blank line, content-type with charset: a finished answer', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      res.end(`${sseText(events(['one', ' two']))}data: [DONE]\n`);
    });
    const { openai, gw } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('one two');
    expect(finishOf(chunks)).toBe('stop');
    const raw = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: hi, stream: true }),
    }).then((r) => r.text());
    expect(raw).not.toContain('"error"');
    expect(raw.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('SSE without any content-type header', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200);
      res.end(sseText([...events(['no', ' ctype']), '[DONE]']));
    });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('no ctype');
  });

  it('a gzip-encoded SSE answer is decoded (or relayed intact) for the client', async () => {
    const m = await mock((_q, res) => {
      res.writeHead(200, { ...SSE_HEAD, 'content-encoding': 'gzip' });
      res.end(gzipSync(Buffer.from(sseText([...events(PARTS), '[DONE]']))));
    });
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('content in the same chunk as role and finish_reason (a one-chunk answer)', async () => {
    const m = await sseMock([full({ role: 'assistant', content: 'all at once' }, 'stop'), '[DONE]']);
    const { openai, baseURL } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('all at once');
    expect(finishOf(chunks)).toBe('stop');

    const s = streamText(vercelHi(baseURL));
    expect(await s.text).toBe('all at once');
    expect(await s.finishReason).toBe('stop');
  });

  it("an Azure-style first chunk with empty choices and prompt_filter_results doesn't break clients", async () => {
    const m = await sseMock([
      {
        id: '',
        object: '',
        created: 0,
        model: '',
        choices: [],
        prompt_filter_results: [{ prompt_index: 0 }],
      },
      full({ role: 'assistant', content: '' }),
      full({ content: 'azure' }),
      full({}, 'stop'),
      '[DONE]',
    ]);
    const { openai, baseURL } = await setup([m]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('azure');
    const s = streamText(vercelHi(baseURL));
    expect(await s.text).toBe('azure');
    expect(await s.finishReason).toBe('stop');
  });

  it('n: 2 streamed with choice 1 first: each choice whole, both finishes', async () => {
    const m = await sseMock([
      full({ role: 'assistant', content: 'B1' }, null, 1),
      full({ role: 'assistant', content: 'A1' }, null, 0),
      full({ content: 'B2' }, null, 1),
      full({}, 'length', 1),
      full({ content: 'A2' }, null, 0),
      full({}, 'stop', 0),
      '[DONE]',
    ]);
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai, { n: 2 });
    expect([textOf(chunks, 0), finishOf(chunks, 0)]).toEqual(['A1A2', 'stop']);
    expect([textOf(chunks, 1), finishOf(chunks, 1)]).toEqual(['B1B2', 'length']);
  });

  it('a tool call whole in one chunk with its finish: openai .stream() helper and Vercel get it', async () => {
    const m = await sseMock([
      full(
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            {
              index: 0,
              id: 'call_a',
              type: 'function',
              function: { name: 'weather', arguments: '{"city":"Rome"}' },
            },
          ],
        },
        'tool_calls',
      ),
      '[DONE]',
    ]);
    const { openai, baseURL } = await setup([m]);
    const params = {
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
    } as const;
    const helper = openai.chat.completions.stream({
      model: 'r',
      messages: hi,
      tools: [{ type: 'function', function: { name: 'weather', parameters: params } }],
    });
    const final = await helper.finalChatCompletion();
    expect(final.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      id: 'call_a',
      function: { name: 'weather', arguments: '{"city":"Rome"}' },
    });
    expect(final.choices[0]?.finish_reason).toBe('tool_calls');

    const s = streamText({
      ...vercelHi(baseURL),
      tools: { weather: tool({ inputSchema: schemaOf<{ city: string }>(params) }) },
    });
    expect((await s.toolCalls).map((c) => [c.toolCallId, c.input])).toEqual([['call_a', { city: 'Rome' }]]);
    expect(await s.finishReason).toBe('tool-calls');
  });

  it('an empty answer (role chunk, then finish_reason length, as a reasoning model out of tokens gives) is an answer, not a 502', async () => {
    // The upstream answered properly (200, finish_reason, [DONE]); the client gets that answer.
    const m = await sseMock([
      full({ role: 'assistant', content: '' }),
      full({}, 'length'),
      { ...full({}), choices: [], usage: { prompt_tokens: 5, completion_tokens: 64, total_tokens: 69 } },
      '[DONE]',
    ]);
    const { openai } = await setup([m]);
    const chunks = await streamChat(openai, {
      max_completion_tokens: 64,
      stream_options: { include_usage: true },
    });
    expect(textOf(chunks)).toBe('');
    expect(finishOf(chunks)).toBe('length');
    expect(chunks.find((c) => c.usage)?.usage?.completion_tokens).toBe(64);
  });

  it('an upstream that answers JSON although stream: true was asked: the streaming client still gets the text', async () => {
    // Either an SSE rendering of the answer or a failover/error — never an empty "successful" stream.
    const m = await mock((_q, res) => json(res, 200, completion('x', [choice('json instead')])));
    const { openai } = await setup([m]);
    const got = await streamedOrStatus(openai);
    if ('status' in got) expect(got.status).toBeGreaterThanOrEqual(500);
    else expect(got).toEqual({ text: 'json instead', finish: 'stop' });
  });
});

describe('OpenAI-dialect error bodies in the shapes real servers write', () => {
  const cases: {
    name: string;
    status: number;
    send: (res: ServerResponse) => void;
    message: string;
  }[] = [
    {
      name: 'plain-text 400',
      status: 400,
      send: (res) => {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end('context length 9000 exceeds the maximum of 8192');
      },
      message: 'context length 9000 exceeds the maximum of 8192',
    },
    {
      name: 'FastAPI 400 {"detail": "..."}',
      status: 400,
      send: (res) => json(res, 400, { detail: 'temperature must be <= 2' }),
      message: 'temperature must be <= 2',
    },
    {
      name: 'Ollama 400 {"error": "string"}',
      status: 400,
      send: (res) => json(res, 400, { error: 'invalid options: foo' }),
      message: 'invalid options: foo',
    },
    {
      name: 'vLLM 400 {"object":"error","message":...,"code":400}',
      status: 400,
      send: (res) =>
        json(res, 400, {
          object: 'error',
          message: "This model's maximum context length is 4096 tokens.",
          type: 'BadRequestError',
          param: null,
          code: 400,
        }),
      message: "This model's maximum context length is 4096 tokens.",
    },
    {
      name: 'FastAPI 422 with a detail array',
      status: 422,
      send: (res) =>
        json(res, 422, {
          detail: [
            { loc: ['body', 'messages', 0, 'role'], msg: 'Input should be user', type: 'literal_error' },
          ],
        }),
      message: 'Input should be user',
    },
    {
      name: 'OpenAI 404 model_not_found',
      status: 404,
      send: (res) =>
        json(res, 404, {
          error: {
            message: 'The model `gpt-9` does not exist or you do not have access to it.',
            type: 'invalid_request_error',
            param: null,
            code: 'model_not_found',
          },
        }),
      message: 'The model `gpt-9` does not exist or you do not have access to it.',
    },
  ];

  for (const c of cases) {
    it(`${c.name}: relayed once as ${c.status}, OpenAI-shaped, message kept, for JSON and stream`, async () => {
      const bad = await mock((_q, res) => c.send(res));
      const second = await answerMock('no');
      const { openai, gw } = await setup([bad, second]);
      for (const stream of [false, true]) {
        const err = await rejection(
          stream ? streamChat(openai) : openai.chat.completions.create({ model: 'r', messages: hi }),
        );
        expect(err).toBeInstanceOf(OpenAI.APIError);
        const e = err as InstanceType<typeof OpenAI.APIError>;
        expect(e.status).toBe(c.status);
        expect(e.message).toContain(c.message);
      }
      expect(second.received).toHaveLength(0); // a client error is not failed over
      const raw = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'r', messages: hi }),
      });
      expect(raw.status).toBe(c.status);
      expect(raw.headers.get('content-type')).toMatch(/application\/json/);
      const body = (await raw.json()) as { error: Json };
      expect(Object.keys(body)).toEqual(['error']);
      expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
      expect(typeof body.error.message).toBe('string');
      expect(typeof body.error.type).toBe('string');
    });
  }

  it('an upstream 400 that echoes our provider key in a non-OpenAI body never hands the key to the client', async () => {
    const bad = await mock((q, res) =>
      json(res, 400, { detail: `bad request for key ${String(q.headers.authorization)}` }),
    );
    const { gw } = await setup([bad]);
    const raw = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: hi }),
    });
    const text = await raw.text();
    expect(raw.status).toBe(400);
    expect(text).toContain('bad request for key');
    expect(text).not.toContain(UPSTREAM_KEY);
    expect(gw.rawLogs()).not.toContain(UPSTREAM_KEY);
  });

  it('the Vercel SDK and LangChain see a plain-text 400 as a 400 with its message', async () => {
    const bad = await mock((_q, res) => {
      res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('prompt too long: 9000 > 8192');
    });
    const { baseURL } = await setup([bad]);
    const err = await rejection(generateText(vercelHi(baseURL)));
    expect(APICallError.isInstance(err)).toBe(true);
    expect((err as APICallError).statusCode).toBe(400);
    expect((err as APICallError).message).toContain('prompt too long: 9000 > 8192');
    const lcErr = (await rejection(langchain(baseURL).invoke('hi'))) as { status?: number; message: string };
    expect(lcErr.status).toBe(400);
    expect(lcErr.message).toContain('prompt too long: 9000 > 8192');
  });

  it('a 500 with an OpenAI body on the only upstream: 502 upstream_error that names the attempt, SDK InternalServerError', async () => {
    const bad = await mock((_q, res) =>
      json(res, 500, {
        error: { message: 'The server had an error', type: 'server_error', param: null, code: null },
      }),
    );
    const { openai } = await setup([bad]);
    const err = await rejection(openai.chat.completions.create({ model: 'r', messages: hi }));
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    const e = err as InstanceType<typeof OpenAI.InternalServerError>;
    expect(e.status).toBe(502);
    expect(e.message).toContain('p0/gpt-4o');
    expect(e.headers.get('x-router-attempts')).toBe('1');
  });
});

// ---------------------------------------------------------------------------------------------
// Anthropic Messages mocks

const aStart = (usage?: Json): Json => ({
  type: 'message_start',
  message: {
    id: 'msg_audit',
    type: 'message',
    role: 'assistant',
    content: [],
    model: 'claude-sonnet-4-5',
    stop_reason: null,
    stop_sequence: null,
    ...(usage ? { usage } : {}),
  },
});
const aBlock = (index: number, block: Json): Json => ({
  type: 'content_block_start',
  index,
  content_block: block,
});
const aText = (index: number, text: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'text_delta', text },
});
const aJson = (index: number, partial: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'input_json_delta', partial_json: partial },
});
const aStop = (index: number): Json => ({ type: 'content_block_stop', index });
const aDelta = (
  stop: string | null,
  usage: Json = { output_tokens: 5 },
  stopSequence: string | null = null,
): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stop, stop_sequence: stopSequence },
  usage,
});
const A_END: Json = { type: 'message_stop' };
/** message_start (`inputTokens` in) and an empty text block 0. */
const aOpenText = (inputTokens: number): Json[] => [
  aStart({ input_tokens: inputTokens, output_tokens: 1 }),
  aBlock(0, { type: 'text', text: '' }),
];
const A_PING: Json = { type: 'ping' };

function aSSE(events: readonly Json[], opts: { named?: boolean; eol?: string } = {}): string {
  const eol = opts.eol ?? '\n';
  return events
    .map(
      (e) =>
        `${opts.named === false ? '' : `event: ${String(e.type)}${eol}`}data: ${JSON.stringify(e)}${eol}${eol}`,
    )
    .join('');
}

function aMessage(content: Json[], stop: string, extra: Json = {}): Json {
  return {
    id: 'msg_audit_json',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5',
    content,
    stop_reason: stop,
    stop_sequence: null,
    usage: { input_tokens: 11, output_tokens: 7 },
    ...extra,
  };
}

const anth = async (handler: Handler, model?: string) => ({
  mock: await mock(handler),
  kind: 'anthropic' as const,
  ...(model ? { model } : {}),
});

/** An Anthropic mock that answers every request with `events` as one SSE write. */
const anthSse = (events: readonly Json[], opts: { named?: boolean; eol?: string } = {}) =>
  anth((_q, res) => {
    res.writeHead(200, SSE_HEAD);
    res.end(aSSE(events, opts));
  });

const textEvents = (parts: readonly string[], stop = 'end_turn'): Json[] => [
  ...aOpenText(12),
  ...parts.map((p) => aText(0, p)),
  aStop(0),
  aDelta(stop, { output_tokens: 6 }),
  A_END,
];

describe('Anthropic-shaped mocks: stream framing and minimal sequences', () => {
  const PARTS = ['hé', 'llo wö', 'rld 🌍 ', '日本語', ' — ok'];

  it('data-only events (no event: lines), as a hasty mock writes them', async () => {
    const a = await anthSse(textEvents(PARTS), { named: false });
    const { openai } = await setup([a]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
  });

  it('CRLF, pings everywhere and byte-by-byte writes split inside characters', async () => {
    const evs = textEvents(PARTS);
    const withPings = evs.flatMap((e, i) => (i === 0 ? [A_PING, e, A_PING] : [e, A_PING]));
    const a = await anth((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      return writeSplit(res, aSSE(withPings, { eol: '\r\n' }), [1, 3, 2, 7]);
    });
    const { openai } = await setup([a]);
    const chunks = await streamChat(openai, { stream_options: { include_usage: true } });
    expect(textOf(chunks)).toBe(UNICODE);
    expect(finishOf(chunks)).toBe('stop');
    expect(chunks.find((c) => c.usage)?.usage).toMatchObject({ prompt_tokens: 12, completion_tokens: 6 });
  });

  it('text carried in content_block_start itself is not lost', async () => {
    const a = await anthSse([
      aStart({ input_tokens: 3, output_tokens: 1 }),
      aBlock(0, { type: 'text', text: 'Start ' }),
      aText(0, 'and rest'),
      aStop(0),
      aDelta('end_turn'),
      A_END,
    ]);
    const { openai } = await setup([a]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('Start and rest');
  });

  it('message_start without usage, usage only in message_delta (input and output)', async () => {
    const a = await anth((q, res) => {
      if (q.body.stream !== true) {
        return json(res, 200, { ...aMessage([{ type: 'text', text: 'x' }], 'end_turn'), usage: undefined });
      }
      res.writeHead(200, SSE_HEAD);
      res.end(
        aSSE([
          aStart(),
          aBlock(0, { type: 'text', text: '' }),
          aText(0, 'usage late'),
          aStop(0),
          aDelta('end_turn', { input_tokens: 21, output_tokens: 8 }),
          A_END,
        ]),
      );
    });
    const { openai, baseURL } = await setup([a]);
    const chunks = await streamChat(openai, { stream_options: { include_usage: true } });
    expect(textOf(chunks)).toBe('usage late');
    expect(chunks.find((c) => c.usage)?.usage).toMatchObject({
      prompt_tokens: 21,
      completion_tokens: 8,
      total_tokens: 29,
    });
    // And a JSON answer without usage at all still reads.
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content).toBe('x');
    const s = streamText(vercelHi(baseURL));
    expect(await s.text).toBe('usage late');
    expect((await s.usage).inputTokens).toBe(21);
    expect((await s.usage).outputTokens).toBe(8);
  });

  it('a stream closed after message_delta without message_stop is a finished answer', async () => {
    // README: a close after every choice's finish_reason is a finished answer: stop_reason came, so no error event.
    const a = await anthSse(textEvents(['done', ' here']).slice(0, -1));
    const { openai } = await setup([a]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('done here');
    expect(finishOf(chunks)).toBe('stop');
  });

  it('a stream closed after content but before message_delta is cut: the SDK throws, no finish', async () => {
    const a = await anthSse(textEvents(['half', ' way']).slice(0, -2));
    const { openai } = await setup([a]);
    const { seen, err } = await streamUntilRejected(openai);
    expect(textOf(seen)).toBe('half way');
    expect(finishOf(seen)).toBeUndefined();
    expect(err).toBeInstanceOf(OpenAI.APIError);
  });

  it('an error event after content: the SDK throws, keeping the upstream message, no finish', async () => {
    const a = await anthSse([
      ...aOpenText(3),
      aText(0, 'partial '),
      { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded right now' } },
    ]);
    const { openai } = await setup([a]);
    const { seen, err } = await streamUntilRejected(openai);
    expect(textOf(seen)).toBe('partial ');
    expect(finishOf(seen)).toBeUndefined();
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(String((err as Error).message)).toMatch(/overloaded/i);
  });
});

describe('Anthropic-shaped mocks: tool_use and stop reasons', () => {
  const ARGS = '{"city": "Zürich \\"old town\\"", "units": "celsius", "days": [1, 2, 3]}';
  const expected = { city: 'Zürich "old town"', units: 'celsius', days: [1, 2, 3] };
  const pieces = (s: string, n: number): string[] => {
    const out: string[] = [];
    for (let i = 0; i < s.length; i += n) out.push(s.slice(i, i + n));
    return out;
  };
  const toolsParam = [
    {
      type: 'function' as const,
      function: {
        name: 'weather',
        parameters: {
          type: 'object',
          properties: {
            city: { type: 'string' },
            units: { type: 'string' },
            days: { type: 'array', items: { type: 'number' } },
          },
          required: ['city'],
        },
      },
    },
  ];

  const twoTools = (res: ServerResponse) => {
    res.writeHead(200, SSE_HEAD);
    res.end(
      aSSE([
        ...aOpenText(40),
        aText(0, 'Checking.'),
        aStop(0),
        aBlock(1, { type: 'tool_use', id: 'toolu_01', name: 'weather', input: {} }),
        ...pieces(ARGS, 3).map((p) => aJson(1, p)),
        aStop(1),
        A_PING,
        aBlock(2, { type: 'tool_use', id: 'toolu_02', name: 'weather', input: {} }),
        aJson(2, ''),
        ...pieces('{"city":"Oslo"}', 1).map((p) => aJson(2, p)),
        aStop(2),
        aDelta('tool_use', { output_tokens: 30 }),
        A_END,
      ]),
    );
  };

  it('input_json_delta in many tiny pieces, two tool calls after text: the openai stream helper reassembles both', async () => {
    const a = await anth((_q, res) => twoTools(res));
    const { openai } = await setup([a]);
    const final = await openai.chat.completions
      .stream({ model: 'r', messages: hi, tools: toolsParam })
      .finalChatCompletion();
    const msg = final.choices[0]!.message;
    expect(msg.content).toBe('Checking.');
    expect(msg.tool_calls?.map((t) => (t.type === 'function' ? [t.id, t.function.name] : []))).toEqual([
      ['toolu_01', 'weather'],
      ['toolu_02', 'weather'],
    ]);
    const fns = msg.tool_calls!.map((t) =>
      t.type === 'function' ? (JSON.parse(t.function.arguments) as Json) : {},
    );
    expect(fns).toEqual([expected, { city: 'Oslo' }]);
    expect(final.choices[0]?.finish_reason).toBe('tool_calls');
  });

  it('the same stream through Vercel streamText (fullStream) and LangChain stream', async () => {
    const a = await anth((_q, res) => twoTools(res));
    const { baseURL } = await setup([a]);
    const s = streamText({
      ...vercelHi(baseURL),
      tools: {
        weather: tool({ inputSchema: schemaOf<Json>(toolsParam[0]!.function.parameters) }),
      },
    });
    const types: string[] = [];
    for await (const part of s.fullStream) types.push(part.type);
    expect(types).not.toContain('error');
    expect((await s.toolCalls).map((c) => [c.toolCallId, c.input])).toEqual([
      ['toolu_01', expected],
      ['toolu_02', { city: 'Oslo' }],
    ]);
    expect(await s.finishReason).toBe('tool-calls');
    expect((await s.usage).outputTokens).toBe(30);

    const lc = langchain(baseURL, { streamUsage: true });
    let agg: Awaited<ReturnType<typeof lc.invoke>> | undefined;
    for await (const c of await lc.bindTools(toolsParam).stream('hi')) agg = agg ? agg.concat(c) : c;
    expect(agg?.tool_calls?.map((t) => [t.id, t.args])).toEqual([
      ['toolu_01', expected],
      ['toolu_02', { city: 'Oslo' }],
    ]);
    expect(agg?.usage_metadata).toMatchObject({ input_tokens: 40, output_tokens: 30 });
  });

  const OPENAI_FINISHES = ['stop', 'length', 'tool_calls', 'content_filter', 'function_call'];
  const stops: [string, string | null][] = [
    ['end_turn', 'stop'],
    ['max_tokens', 'length'],
    ['stop_sequence', 'stop'],
    ['refusal', 'content_filter'],
    ['model_context_window_exceeded', 'length'],
    ['pause_turn', null], // no OpenAI counterpart: any valid OpenAI value
  ];
  for (const [stop, finish] of stops) {
    it(`stop_reason ${stop} maps to ${finish ?? 'a valid OpenAI finish_reason'} (JSON and stream)`, async () => {
      const a = await anth((q, res) => {
        if (q.body.stream !== true) return json(res, 200, aMessage([{ type: 'text', text: 'text' }], stop));
        res.writeHead(200, SSE_HEAD);
        res.end(aSSE(textEvents(['text'], stop)));
      });
      const { openai, baseURL } = await setup([a]);
      const r = await openai.chat.completions.create({ model: 'r', messages: hi });
      const chunks = await streamChat(openai);
      const got = [r.choices[0]?.finish_reason, finishOf(chunks)];
      for (const g of got) {
        if (finish) expect(g).toBe(finish);
        else expect(OPENAI_FINISHES).toContain(g);
      }
      expect(got[0]).toBe(got[1]);
      // Vercel must be able to read it too
      const v = await generateText(vercelHi(baseURL));
      expect(v.text).toBe('text');
    });
  }

  it('a JSON tool_use answer without text: content null, arguments a JSON string, finish tool_calls', async () => {
    const a = await anth((_q, res) =>
      json(
        res,
        200,
        aMessage([{ type: 'tool_use', id: 'toolu_9', name: 'weather', input: expected }], 'tool_use'),
      ),
    );
    const { openai } = await setup([a]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi, tools: toolsParam });
    const m = r.choices[0]!.message;
    expect(m.content ?? null).toBeNull();
    const call = m.tool_calls?.[0];
    expect(call?.type === 'function' && JSON.parse(call.function.arguments)).toEqual(expected);
    expect(r.choices[0]?.finish_reason).toBe('tool_calls');
    expect(r.usage).toMatchObject({ prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 });
  });

  it('a minimal JSON answer (no id, no usage, no stop_sequence) reads', async () => {
    const a = await anth((_q, res) =>
      json(res, 200, {
        type: 'message',
        role: 'assistant',
        content: [{ type: 'text', text: 'tiny' }],
        stop_reason: 'end_turn',
      }),
    );
    const { openai, baseURL } = await setup([a]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content).toBe('tiny');
    const v = await generateText(vercelHi(baseURL));
    expect(v.text).toBe('tiny');
  });
});

describe('Anthropic-shaped mocks: error answers', () => {
  const aErr = (type: string, message: string): Json => ({ type: 'error', error: { type, message } });
  const cases: [number, string, string, abstract new (...args: never[]) => unknown][] = [
    [400, 'invalid_request_error', 'messages: roles must alternate', OpenAI.BadRequestError],
    [404, 'not_found_error', 'model: claude-nope', OpenAI.NotFoundError],
    [413, 'request_too_large', 'Request exceeds the maximum allowed number of bytes.', OpenAI.APIError],
  ];
  for (const [status, type, message, cls] of cases) {
    it(`${status} ${type}: relayed with its status and message, not failed over`, async () => {
      const a = await anth((_q, res) => json(res, status, aErr(type, message)));
      const b = await answerMock('no');
      const { openai } = await setup([a, b]);
      const err = await rejection(openai.chat.completions.create({ model: 'r', messages: hi }));
      expect(err).toBeInstanceOf(cls);
      expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(status);
      expect((err as Error).message).toContain(message);
      const serr = await rejection(streamChat(openai));
      expect((serr as InstanceType<typeof OpenAI.APIError>).status).toBe(status);
      expect(b.received).toHaveLength(0);
    });
  }

  it('401 authentication_error from Anthropic fails over to the next upstream', async () => {
    const a = await anth((_q, res) => json(res, 401, aErr('authentication_error', 'invalid x-api-key')));
    const b = await answerMock('from b');
    const { openai } = await setup([a, b]);
    const { content, headers } = await createWithHeaders(openai);
    expect(content).toBe('from b');
    expect(headers.get('x-router-attempts')).toBe('2');
    expect(headers.get('x-router-trail')).toMatch(/^p0\/claude-sonnet-4-5=/);
  });
});

describe('clients driving multi-round loops through hand-written mocks', () => {
  /** An Anthropic mock that asks for the weather tool on the first round and answers in text after the tool_result. */
  const toolLoop = (res: ServerResponse, body: Json) => {
    const msgs = body.messages as { role: string; content: unknown }[];
    const last = msgs.at(-1);
    const hasResult =
      Array.isArray(last?.content) && (last.content as Json[]).some((b) => b.type === 'tool_result');
    const stream = body.stream === true;
    if (!hasResult) {
      const call = { type: 'tool_use', id: 'toolu_loop', name: 'weather', input: { city: 'Paris' } };
      if (!stream) return json(res, 200, aMessage([call], 'tool_use'));
      res.writeHead(200, SSE_HEAD);
      res.end(
        aSSE([
          aStart({ input_tokens: 10, output_tokens: 1 }),
          aBlock(0, { ...call, input: {} }),
          aJson(0, '{"city":'),
          aJson(0, ' "Paris"}'),
          aStop(0),
          aDelta('tool_use', { output_tokens: 12 }),
          A_END,
        ]),
      );
      return;
    }
    const result = (last!.content as Json[]).find((b) => b.type === 'tool_result')!;
    const txt = `Result was: ${JSON.stringify(result.content)}`;
    if (!stream) return json(res, 200, aMessage([{ type: 'text', text: txt }], 'end_turn'));
    res.writeHead(200, SSE_HEAD);
    res.end(aSSE(textEvents([txt])));
  };
  const weatherParams: Record<string, unknown> = {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
    additionalProperties: false,
  };
  /** Vercel call options for a loop of up to 3 steps on route `r` whose weather tool answers `say(city)`. */
  const weatherLoop = (baseURL: string, say: (city: string) => string) => ({
    model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
    prompt: 'weather?',
    maxRetries: 0,
    stopWhen: stepCountIs(3),
    tools: {
      weather: tool({
        inputSchema: schemaOf<{ city: string }>(weatherParams),
        execute: ({ city }) => Promise.resolve(say(city)),
      }),
    },
  });

  it('openai runTools (streamed) against an Anthropic mock: the tool runs, its result reaches Claude as tool_result', async () => {
    const a = await anth((q, res) => toolLoop(res, q.body));
    const { openai } = await setup([a]);
    const cities: string[] = [];
    const runner = openai.chat.completions.runTools({
      model: 'r',
      messages: hi,
      stream: true,
      tools: [
        {
          type: 'function',
          function: {
            name: 'weather',
            description: 'Current weather of a city',
            parameters: weatherParams,
            function: (args: { city: string }) => {
              cities.push(args.city);
              return 'sunny 21C';
            },
            parse: (s: string) => JSON.parse(s) as { city: string },
          },
        },
      ],
    });
    const content = await runner.finalContent();
    expect(cities).toEqual(['Paris']);
    expect(content).toContain('sunny 21C');
    const second = a.mock.received[1]!.body;
    const msgs = second.messages as { role: string; content: Json[] }[];
    expect(msgs.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect(msgs[1]!.content.find((b) => b.type === 'tool_use')).toMatchObject({
      id: 'toolu_loop',
      name: 'weather',
    });
    expect(msgs[2]!.content.find((b) => b.type === 'tool_result')).toMatchObject({
      tool_use_id: 'toolu_loop',
    });
  });

  it('Vercel streamText with stopWhen: a two-step loop against an Anthropic mock, steps and usage add up', async () => {
    const a = await anth((q, res) => toolLoop(res, q.body));
    const { baseURL } = await setup([a]);
    const s = streamText(weatherLoop(baseURL, (city) => `cloudy in ${city}`));
    expect(await s.text).toContain('cloudy in Paris');
    const steps = await s.steps;
    expect(steps.map((st) => st.finishReason)).toEqual(['tool-calls', 'stop']);
    expect((await s.totalUsage).outputTokens).toBe(12 + 6);
    expect((await s.response).headers?.['x-router-provider']).toBe('p0');
  });

  it('Vercel generateText multi-step (JSON) against an OpenAI mock that omits ids, created and usage', async () => {
    const m = await mock((q, res) => {
      const msgs = q.body.messages as { role: string; content: unknown; tool_call_id?: string }[];
      const tr = msgs.find((x) => x.role === 'tool');
      if (!tr) return json(res, 200, { choices: [callChoice('c1', 'weather', '{"city":"Lima"}')] });
      return json(res, 200, bareAnswer(`ok ${String(tr.content)}`));
    });
    const { baseURL } = await setup([m]);
    const r = await generateText(weatherLoop(baseURL, (city) => `warm in ${city}`));
    expect(r.text).toContain('warm in Lima');
    expect(r.steps).toHaveLength(2);
  });

  it('Vercel generateObject and LangChain withStructuredOutput against an Anthropic mock', async () => {
    const a = await anth((q, res) => {
      // Answer in whichever form the gateway asked for: a forced tool, or plain JSON text.
      const tools = q.body.tools as Json[] | undefined;
      const obj = { city: 'Bern', celsius: 12 };
      if (tools?.length) {
        const name = String(tools[0]!.name);
        return json(res, 200, aMessage([{ type: 'tool_use', id: 'toolu_s', name, input: obj }], 'tool_use'));
      }
      return json(res, 200, aMessage([{ type: 'text', text: JSON.stringify(obj) }], 'end_turn'));
    });
    const { baseURL } = await setup([a]);
    const schema = jsonSchema<{ city: string; celsius: number }>({
      type: 'object',
      properties: { city: { type: 'string' }, celsius: { type: 'number' } },
      required: ['city', 'celsius'],
      additionalProperties: false,
    });
    const g = await generateObject({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'weather',
      schema,
      maxRetries: 0,
    });
    expect(g.object).toEqual({ city: 'Bern', celsius: 12 });
    const lc = langchain(baseURL);
    const so = await lc
      .withStructuredOutput(
        {
          type: 'object',
          title: 'weather',
          properties: { city: { type: 'string' }, celsius: { type: 'number' } },
          required: ['city', 'celsius'],
        },
        { name: 'weather' },
      )
      .invoke('weather');
    expect(so).toEqual({ city: 'Bern', celsius: 12 });
  });

  it('LangChain batch of three against an Anthropic mock: each answer to its own input', async () => {
    const a = await anth((q, res) => {
      const msgs = q.body.messages as { content: unknown }[];
      const c = msgs[0]!.content;
      const txt = typeof c === 'string' ? c : (c as Json[]).map((b) => String(b.text)).join('');
      json(res, 200, aMessage([{ type: 'text', text: `echo:${txt}` }], 'end_turn'));
    });
    const { baseURL } = await setup([a]);
    const lc = langchain(baseURL);
    const out = await lc.batch(['one', 'two', 'three']);
    expect(out.map((o) => o.content)).toEqual(['echo:one', 'echo:two', 'echo:three']);
  });

  it('openai SDK abort mid-stream against an Anthropic mock: the upstream request is closed', async () => {
    let closed!: () => void;
    const upstreamClosed = new Promise<void>((r) => (closed = r));
    const a = await anth(async (_q, res) => {
      res.on('close', () => closed());
      res.writeHead(200, SSE_HEAD);
      res.write(aSSE(aOpenText(1)));
      for (let i = 0; i < 200 && !res.destroyed; i++) {
        res.write(aSSE([aText(0, `t${i} `)]));
        await sleep(10);
      }
      res.end();
    });
    const { openai } = await setup([a]);
    const ac = new AbortController();
    const stream = await openai.chat.completions.create(
      { model: 'r', messages: hi, stream: true },
      { signal: ac.signal },
    );
    let n = 0;
    // The SDK's Stream ends its iteration quietly on an abort (or rejects with APIUserAbortError).
    const outcome = await (async () => {
      for await (const c of stream) {
        if (c.choices[0]?.delta.content) n++;
        if (n === 3) ac.abort();
      }
    })().then(
      () => 'ended',
      (e: unknown) => (e instanceof OpenAI.APIUserAbortError ? 'ended' : e),
    );
    expect(outcome).toBe('ended');
    expect(n).toBe(3);
    const bound = await Promise.race([upstreamClosed.then(() => 'closed'), sleep(3000).then(() => 'bound')]);
    expect(bound).toBe('closed');
  });

  it('x-router-* headers on a stream, read by openai withResponse and Vercel response.headers', async () => {
    const m = await sseMock([full({ role: 'assistant', content: 'hey' }), full({}, 'stop'), '[DONE]']);
    const { openai, baseURL } = await setup([m]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi, stream: true }, { headers: { 'x-request-id': 'audit-req-1' } })
      .withResponse();
    expect(textOf(await collect(data))).toBe('hey');
    expect(response.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(response.headers.get('x-request-id')).toBe('audit-req-1');
    for (const h of ['x-router-provider', 'x-router-model', 'x-router-strategy', 'x-router-attempts'])
      expect(response.headers.get(h), h).toBeTruthy();
    const s = streamText(vercelHi(baseURL));
    expect(await s.text).toBe('hey');
    expect((await s.response).headers?.['x-router-strategy']).toBe('priority');
  });
});

describe('Anthropic request translation as a strict Messages API mock checks it', () => {
  it('developer + system messages, tool history with array tool content, stop string, tool_choice required, user', async () => {
    const a = await anth((_q, res) => json(res, 200, aMessage([{ type: 'text', text: 'fine' }], 'end_turn')));
    const { openai } = await setup([a]);
    await openai.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'developer', content: 'Be brief.' },
        { role: 'system', content: [{ type: 'text', text: 'Use metric units.' }] },
        { role: 'user', content: 'weather in Oslo and Rome?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Oslo"}' } },
            { id: 'call_b', type: 'function', function: { name: 'weather', arguments: '{"city":"Rome"}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_a', content: [{ type: 'text', text: 'cold' }] },
        { role: 'tool', tool_call_id: 'call_b', content: 'warm' },
        { role: 'user', content: 'thanks, and tomorrow?' },
      ],
      tools: [
        {
          type: 'function',
          function: {
            name: 'weather',
            parameters: { type: 'object', properties: { city: { type: 'string' } } },
          },
        },
      ],
      tool_choice: 'required',
      stop: 'END',
      user: 'user-123',
      max_completion_tokens: 300,
    });
    const body = a.mock.received[0]!.body;
    const allowed = [
      'model',
      'messages',
      'system',
      'max_tokens',
      'stop_sequences',
      'stream',
      'temperature',
      'top_p',
      'top_k',
      'tools',
      'tool_choice',
      'metadata',
      'thinking',
      'service_tier',
      'output_config',
      'output_format',
      'container',
      'mcp_servers',
    ];
    for (const k of Object.keys(body)) expect(allowed, `top-level field ${k}`).toContain(k);
    expect(JSON.stringify(body.system)).toContain('Be brief.');
    expect(JSON.stringify(body.system)).toContain('Use metric units.');
    expect(body.max_tokens).toBe(300);
    expect(body.stop_sequences).toEqual(['END']);
    expect(body.tool_choice).toMatchObject({ type: 'any' });
    const msgs = body.messages as { role: string; content: unknown }[];
    expect(msgs[0]!.role).toBe('user');
    for (let i = 1; i < msgs.length; i++) expect(msgs[i]!.role).not.toBe(msgs[i - 1]!.role);
    const results = msgs.flatMap((m) =>
      Array.isArray(m.content) ? (m.content as Json[]).filter((b) => b.type === 'tool_result') : [],
    );
    expect(results.map((r) => r.tool_use_id)).toEqual(['call_a', 'call_b']);
    expect(JSON.stringify(results[0]!.content)).toContain('cold');
    if (body.metadata !== undefined) expect(body.metadata).toEqual({ user_id: 'user-123' });
  });

  it('LangChain and Vercel default requests are accepted shapes for Claude (no n, no stream_options leak)', async () => {
    const a = await anth((q, res) => {
      if (q.body.stream === true) {
        res.writeHead(200, SSE_HEAD);
        res.end(aSSE(textEvents(['streamed'])));
        return;
      }
      json(res, 200, aMessage([{ type: 'text', text: 'json' }], 'end_turn'));
    });
    const { baseURL } = await setup([a]);
    const lc = langchain(baseURL, { streamUsage: true, temperature: 0.3 });
    expect((await lc.invoke('x')).content).toBe('json');
    let s = '';
    for await (const c of await lc.stream('x')) s += String(c.content);
    expect(s).toBe('streamed');
    const v = streamText({
      ...vercelHi(baseURL),
      temperature: 0.2,
    });
    expect(await v.text).toBe('streamed');
    for (const r of a.mock.received) {
      expect(r.body).not.toHaveProperty('n');
      expect(r.body).not.toHaveProperty('stream_options');
      expect(r.body).not.toHaveProperty('parallel_tool_calls');
      expect(r.path).toBe('/v1/messages');
      expect(r.headers['x-api-key']).toBe(UPSTREAM_KEY);
      expect(r.headers['anthropic-version']).toBeTruthy();
    }
  });
});

describe('thinking, empty answers, keep-alives, truncation and size', () => {
  const thinkingStream = (res: ServerResponse) => {
    res.writeHead(200, SSE_HEAD);
    res.end(
      aSSE([
        aStart({ input_tokens: 9, output_tokens: 1 }),
        aBlock(0, { type: 'thinking', thinking: '', signature: '' }),
        { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'Let me ' } },
        { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'think.' } },
        { type: 'content_block_delta', index: 0, delta: { type: 'signature_delta', signature: 'EqQBsig==' } },
        aStop(0),
        aBlock(1, { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix' }),
        aStop(1),
        aBlock(2, { type: 'text', text: '' }),
        aText(2, 'The answer is 4.'),
        aStop(2),
        aDelta('end_turn', { output_tokens: 40 }),
        A_END,
      ]),
    );
  };

  it('a thinking stream: reasoning_content deltas, then text; the openai .stream() helper and LangChain read it', async () => {
    const a = await anth((_q, res) => thinkingStream(res));
    const { openai, baseURL } = await setup([a]);
    const chunks = await streamChat(openai, { reasoning_effort: 'low' });
    const reasoning = chunks
      .map(
        (c) => (c.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? '',
      )
      .join('');
    expect(reasoning).toBe('Let me think.');
    expect(textOf(chunks)).toBe('The answer is 4.');
    expect(finishOf(chunks)).toBe('stop');
    const final = await openai.chat.completions
      .stream({ model: 'r', messages: hi, reasoning_effort: 'low' })
      .finalChatCompletion();
    expect(final.choices[0]?.message.content).toBe('The answer is 4.');
    let lcText = '';
    const lc = langchain(baseURL);
    for await (const c of await lc.stream('hi')) lcText += typeof c.content === 'string' ? c.content : '';
    expect(lcText).toBe('The answer is 4.');
    const v = streamText(vercelHi(baseURL));
    expect(await v.text).toBe('The answer is 4.');
  });

  it('an empty Anthropic answer (no content blocks), JSON and stream: empty content, finish stop, not a 502', async () => {
    // Claude may answer with no content (e.g. end_turn right after a tool result); that is an answer.
    const a = await anth((q, res) => {
      if (q.body.stream !== true) return json(res, 200, aMessage([], 'end_turn'));
      res.writeHead(200, SSE_HEAD);
      res.end(
        aSSE([
          aStart({ input_tokens: 4, output_tokens: 1 }),
          aDelta('end_turn', { output_tokens: 1 }),
          A_END,
        ]),
      );
    });
    const { openai } = await setup([a]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content ?? '').toBe('');
    expect(r.choices[0]?.finish_reason).toBe('stop');
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('');
    expect(finishOf(chunks)).toBe('stop');
  });

  it('SSE comment keep-alives while a model thinks keep the stream alive past idle_ms', async () => {
    // Bytes are arriving (": keep-alive" comments, as OpenRouter sends), so the upstream is not idle.
    const m = await mock(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(sseText([full({ role: 'assistant', content: '' })]));
      for (let i = 0; i < 8; i++) {
        await sleep(150);
        res.write(': keep-alive\n\n');
      }
      res.end(sseText([full({ content: 'after thinking' }), full({}, 'stop'), '[DONE]']));
    });
    const { openai } = await setup([m], { timeouts: { first_byte_ms: 3000, idle_ms: 600 } });
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('after thinking');
  });

  it('Anthropic ping events while Claude thinks keep the stream alive past idle_ms', async () => {
    const a = await anth(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(aSSE([aStart({ input_tokens: 1, output_tokens: 1 })]));
      for (let i = 0; i < 8; i++) {
        await sleep(150);
        res.write(aSSE([A_PING]));
      }
      res.end(aSSE(textEvents(['pinged']).slice(1)));
    });
    const { openai } = await setup([a], { timeouts: { first_byte_ms: 3000, idle_ms: 600 } });
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('pinged');
  });

  it('a JSON body cut short of its content-length fails over before the client sees anything', async () => {
    const cut = await mock((_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '500' });
      res.write('{"choices":[{"index":0,"message":{"role":"assistant","content":"trunc');
      setTimeout(() => res.destroy(), 20);
    });
    const good = await answerMock('whole');
    const { openai } = await setup([cut, good]);
    const { content, headers } = await createWithHeaders(openai);
    expect(content).toBe('whole');
    expect(headers.get('x-router-trail')).toMatch(/^p0\/gpt-4o=/);
  });

  it('a 200 with an empty body fails over instead of handing the client nothing', async () => {
    const empty = await mock((_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end();
    });
    const good = await answerMock('full');
    const { openai } = await setup([empty, good]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content).toBe('full');
  });

  it('a 3 MB JSON answer and a 1.5 MB single SSE event are relayed whole', async () => {
    const big = 'x'.repeat(3 * 1024 * 1024);
    const bigDelta = 'y'.repeat(1536 * 1024);
    const m = await mock((q, res) => {
      if (q.body.stream !== true) return json(res, 200, bareAnswer(big));
      res.writeHead(200, SSE_HEAD);
      res.end(
        sseText([
          full({ role: 'assistant', content: '' }),
          full({ content: bigDelta }),
          full({}, 'stop'),
          '[DONE]',
        ]),
      );
    });
    const { openai } = await setup([m]);
    const r = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(r.choices[0]?.message.content?.length).toBe(big.length);
    const chunks = await streamChat(openai);
    expect(textOf(chunks).length).toBe(bigDelta.length);
  });

  it('Vercel streamObject against an Anthropic mock that streams the object', async () => {
    const obj = { city: 'Kyiv', celsius: 3 };
    const a = await anth((q, res) => {
      const tools = q.body.tools as Json[] | undefined;
      const text = JSON.stringify(obj);
      res.writeHead(200, SSE_HEAD);
      if (tools?.length) {
        const name = String(tools[0]!.name);
        res.end(
          aSSE([
            aStart({ input_tokens: 5, output_tokens: 1 }),
            aBlock(0, { type: 'tool_use', id: 'toolu_o', name, input: {} }),
            ...text.match(/.{1,4}/g)!.map((p) => aJson(0, p)),
            aStop(0),
            aDelta('tool_use', { output_tokens: 9 }),
            A_END,
          ]),
        );
        return;
      }
      res.end(aSSE(textEvents(text.match(/.{1,4}/g)!)));
    });
    const { baseURL } = await setup([a]);
    const s = streamObject({
      model: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
      prompt: 'weather',
      maxRetries: 0,
      schema: jsonSchema<{ city: string; celsius: number }>({
        type: 'object',
        properties: { city: { type: 'string' }, celsius: { type: 'number' } },
        required: ['city', 'celsius'],
        additionalProperties: false,
      }),
    });
    let partials = 0;
    for await (const _p of s.partialObjectStream) partials++;
    expect(await s.object).toEqual(obj);
    expect(partials).toBeGreaterThan(1);
  });
});

describe('transport quirks of hand-written mocks', () => {
  it('Anthropic text and tool-input deltas reach the client as they come, not at block end', async () => {
    const textGate = gate();
    const toolGate = gate();
    const a = await anth(async (_q, res) => {
      res.writeHead(200, SSE_HEAD);
      res.write(aSSE([...aOpenText(1), aText(0, 'first ')]));
      await textGate.wait;
      res.write(
        aSSE([
          aText(0, 'second'),
          aStop(0),
          aBlock(1, { type: 'tool_use', id: 'toolu_g', name: 'f', input: {} }),
          aJson(1, '{"a":'),
        ]),
      );
      await toolGate.wait;
      res.end(aSSE([aJson(1, ' 1}'), aStop(1), aDelta('tool_use'), A_END]));
    });
    const { openai } = await setup([a]);
    const stream = await openai.chat.completions.create({
      model: 'r',
      messages: hi,
      stream: true,
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    });
    let args = '';
    for await (const c of stream) {
      const d = c.choices[0]?.delta;
      if (d?.content === 'first ') textGate.open();
      for (const t of d?.tool_calls ?? []) {
        args += t.function?.arguments ?? '';
        if (args.length > 0) toolGate.open();
      }
    }
    expect(await textGate.wait).toBe('client');
    expect(await toolGate.wait).toBe('client');
    expect(JSON.parse(args)).toEqual({ a: 1 });
  });

  it('a raw TCP mock: HTTP/1.1 SSE without content-length or chunking, ended by closing the socket', async () => {
    const server = createTcpServer((sock) => {
      let got = '';
      sock.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        const headEnd = got.indexOf('\r\n\r\n');
        if (headEnd < 0) return;
        const len = Number(/content-length:\s*(\d+)/i.exec(got.slice(0, headEnd))?.[1] ?? 0);
        if (Buffer.byteLength(got.slice(headEnd + 4), 'latin1') < len) return;
        sock.removeAllListeners('data');
        sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n');
        sock.end(
          sseText([
            bare({ role: 'assistant', content: '' }),
            bare({ content: 'raw tcp' }),
            bare({}, 'stop'),
            '[DONE]',
          ]),
        );
      });
      sock.on('error', () => undefined);
    });
    track({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const url = await listening(server);
    const { openai } = await setup([{ url, received: [] }]);
    const chunks = await streamChat(openai);
    expect(textOf(chunks)).toBe('raw tcp');
    expect(finishOf(chunks)).toBe('stop');
  });

  it('a mock that answers before reading a large request body still gets its answer relayed', async () => {
    const server = createServer((_req, res) => {
      // answers at once, never reads the body (a common shortcut in hand-written mocks)
      json(res, 200, bareAnswer('early'));
    });
    track(closeableServer(server));
    const url = await listening(server);
    const { openai } = await setup([{ url, received: [] }]);
    // ~2 MB in an unknown field (passed through untouched), under the context-window check.
    const blob = 'z'.repeat(2 * 1024 * 1024);
    for (let i = 0; i < 2; i++) {
      const r = await openai.chat.completions.create({
        model: 'r',
        messages: hi,
        extra_blob: blob,
      } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
      expect(r.choices[0]?.message.content).toBe('early');
    }
  });

  it('an upstream with a short keep-alive timeout: requests sent as it closes idle sockets still succeed', async () => {
    let n = 0;
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => json(res, 200, bareAnswer(`ka ${n++}`)));
    });
    server.keepAliveTimeout = 40;
    track(closeableServer(server));
    const url = await listening(server);
    const { openai } = await setup([{ url, received: [] }]);
    const failures: string[] = [];
    for (const gap of [0, 30, 38, 40, 42, 45, 50, 35, 41, 39, 44, 60]) {
      await sleep(gap);
      await openai.chat.completions.create({ model: 'r', messages: hi }).then(
        (r) => expect(r.choices[0]?.message.content).toMatch(/^ka \d+$/),
        (e: unknown) => failures.push(`${gap}ms: ${String(e)}`),
      );
    }
    expect(failures).toEqual([]);
  });

  it('a relayed 400 carries the x-router-* headers of the upstream that said it', async () => {
    const bad = await mock((_q, res) =>
      json(res, 400, {
        error: { message: 'bad stop', type: 'invalid_request_error', param: 'stop', code: null },
      }),
    );
    const { openai } = await setup([bad]);
    const err = (await rejection(
      openai.chat.completions.create({ model: 'r', messages: hi }),
    )) as InstanceType<typeof OpenAI.BadRequestError>;
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.param).toBe('stop');
    expect(err.headers.get('x-router-provider')).toBe('p0');
    expect(err.headers.get('x-router-attempts')).toBe('1');
  });
});

describe('upstreams that ignore the stream flag', () => {
  it('an OpenAI-dialect upstream that streams SSE to a non-streaming request: the client gets a parsable answer or an error', async () => {
    // Never a 200 whose body the SDK cannot read as a chat.completion.
    const m = await sseMock([
      full({ role: 'assistant', content: 'always ' }),
      full({ content: 'streams' }),
      full({}, 'stop'),
      '[DONE]',
    ]);
    const { openai } = await setup([m]);
    const got = await contentOrStatus(openai);
    if ('status' in got) expect(got.status).toBeGreaterThanOrEqual(500);
    else expect(got.content).toBe('always streams');
  });

  it('an Anthropic upstream that answers JSON to a streaming request: the stream carries the answer or an error', async () => {
    // Never an empty "successful" stream.
    const a = await anth((_q, res) =>
      json(res, 200, aMessage([{ type: 'text', text: 'not streamed' }], 'end_turn')),
    );
    const { openai } = await setup([a]);
    const got = await streamedOrStatus(openai);
    if ('status' in got) expect(got.status).toBeGreaterThanOrEqual(500);
    else expect(got).toEqual({ text: 'not streamed', finish: 'stop' });
  });

  it('an Anthropic upstream that streams SSE to a non-streaming request', async () => {
    const a = await anthSse(textEvents(['sse ', 'anyway']));
    const { openai } = await setup([a]);
    const got = await contentOrStatus(openai);
    if ('status' in got) expect(got.status).toBeGreaterThanOrEqual(500);
    else expect(got.content).toBe('sse anyway');
  });
});
