import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOpenAI } from '@ai-sdk/openai';
import type { AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, jsonSchema, streamText, tool } from 'ai';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { sendJson } from '../helpers/mock-upstream.js';
import { anthropicMessage } from '../helpers/anthropic-route.js';
import { simProvider, startGateway } from '../helpers/gateway.js';

/**
 * The Anthropic translation against the wire format Anthropic documents, not against our simulator: a small
 * hand-written Messages API mock (node:http on loopback) answers with the documented JSON bodies, SSE event
 * shapes (thinking / signature / server-tool blocks, `partial_json: ""`, nullable cumulative usage on
 * message_delta, several message_delta events) and error bodies, and real clients (the OpenAI SDK, the
 * Vercel AI SDK) read what the gateway makes of them.
 */

const track = closeAfterEach();

type Json = Record<string, unknown>;

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: Json;
}

type Handler = (req: Received, res: ServerResponse) => void;

interface Mock {
  url: string;
  requests: Received[];
  close(): Promise<void>;
}

async function startMock(handler: Handler): Promise<Mock> {
  const requests: Received[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      const received: Received = {
        path: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(text) as Json,
      };
      requests.push(received);
      handler(received, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const closeable = closeableServer(server);
  return { url: `http://127.0.0.1:${port}`, requests, close: async () => void (await closeable.close()) };
}

/** A gateway whose route `r` is one Anthropic provider served by the mock. */
async function setup(handler: Handler): Promise<{ mock: Mock; client: OpenAI; url: string }> {
  const mock = track(await startMock(handler));
  const gw = track(
    await startGateway({
      providers: [
        simProvider('anth', mock.url, ['claude-sonnet-4-5'], {
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant-test',
        }),
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
  return { mock, client, url: gw.url };
}

const json = sendJson;

/** Writes named SSE events as Anthropic does (`event:` line + JSON `data:` line), then ends. */
function sse(res: ServerResponse, events: Json[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  for (const e of events) res.write(`event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`);
  res.end();
}

const messageStart = (usage: Json = { input_tokens: 25, output_tokens: 1 }): Json => ({
  type: 'message_start',
  message: {
    id: 'msg_01XFDUDYJgAACzvnptvVoYEL',
    type: 'message',
    role: 'assistant',
    content: [],
    model: 'claude-sonnet-4-5-20250929',
    stop_reason: null,
    stop_sequence: null,
    usage,
  },
});
const blockStart = (index: number, block: Json): Json => ({
  type: 'content_block_start',
  index,
  content_block: block,
});
const delta = (index: number, d: Json): Json => ({ type: 'content_block_delta', index, delta: d });
const blockStop = (index: number): Json => ({ type: 'content_block_stop', index });
const messageDelta = (stopReason: string | null, usage: Json): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stopReason, stop_sequence: null },
  usage,
});
const PING: Json = { type: 'ping' };
const STOP: Json = { type: 'message_stop' };

const message = anthropicMessage;

async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const chunk of stream) out.push(chunk);
  return out;
}

/** A streamed chat on route `r` asking for the usage chunk, read to its end. */
async function streamWithUsage(client: OpenAI): Promise<ChatCompletionChunk[]> {
  return collect(
    await client.chat.completions.create({
      model: 'r',
      messages: hi,
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
}

const textOf = (chunks: ChatCompletionChunk[]): string =>
  chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
const finishes = (chunks: ChatCompletionChunk[]): string[] =>
  chunks.flatMap((c) => c.choices.flatMap((ch) => (ch.finish_reason ? [ch.finish_reason] : [])));

const hi = [{ role: 'user' as const, content: 'hi' }];

describe('documented Anthropic stream shapes, read by the OpenAI SDK', () => {
  it('thinking, server-tool and citation events are dropped; text and tool calls arrive whole', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart({
          input_tokens: 472,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 2,
        }),
        blockStart(0, { type: 'thinking', thinking: '', signature: '' }),
        delta(0, { type: 'thinking_delta', thinking: 'Let me think' }),
        delta(0, { type: 'signature_delta', signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3h' }),
        blockStop(0),
        blockStart(1, { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix/LafPsn4a' }),
        blockStop(1),
        blockStart(2, {
          type: 'server_tool_use',
          id: 'srvtoolu_014hJH82Qum7Td6UV8gDXThB',
          name: 'web_search',
          input: {},
        }),
        delta(2, { type: 'input_json_delta', partial_json: '{"query": "weather"}' }),
        blockStop(2),
        blockStart(3, {
          type: 'web_search_tool_result',
          tool_use_id: 'srvtoolu_014hJH82Qum7Td6UV8gDXThB',
          content: [],
        }),
        blockStop(3),
        PING,
        blockStart(4, { type: 'text', text: '', citations: null }),
        delta(4, { type: 'text_delta', text: 'It is ' }),
        delta(4, {
          type: 'citations_delta',
          citation: {
            type: 'web_search_result_location',
            url: 'https://x',
            title: 't',
            encrypted_index: 'e',
            cited_text: 'c',
          },
        }),
        delta(4, { type: 'text_delta', text: 'sunny.' }),
        blockStop(4),
        blockStart(5, {
          type: 'tool_use',
          id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6',
          name: 'get_weather',
          input: {},
        }),
        delta(5, { type: 'input_json_delta', partial_json: '' }),
        delta(5, { type: 'input_json_delta', partial_json: '{"location": "San Fra' }),
        delta(5, { type: 'input_json_delta', partial_json: 'ncisco, CA"}' }),
        blockStop(5),
        { type: 'some_future_event', foo: 1 },
        messageDelta('tool_use', { output_tokens: 89 }),
        STOP,
      ]),
    );
    const chunks = await streamWithUsage(client);
    expect(textOf(chunks)).toBe('It is sunny.');
    const calls = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
    expect(new Set(calls.map((c) => c.index))).toEqual(new Set([0]));
    expect(calls[0]).toMatchObject({ id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6', type: 'function' });
    expect(calls[0]!.function?.name).toBe('get_weather');
    expect(JSON.parse(calls.map((c) => c.function?.arguments ?? '').join(''))).toEqual({
      location: 'San Francisco, CA',
    });
    expect(finishes(chunks)).toEqual(['tool_calls']);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: 472, completion_tokens: 89, total_tokens: 561 });
    // Nothing but OpenAI chunk fields reached the client.
    for (const c of chunks)
      for (const ch of c.choices) expect(Object.keys(ch.delta)).not.toContain('thinking');
  });

  it('a message_delta whose nullable input counts are null keeps the counts message_start gave', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart({
          input_tokens: 100,
          cache_creation_input_tokens: 20,
          cache_read_input_tokens: 30,
          output_tokens: 1,
        }),
        blockStart(0, { type: 'text', text: '' }),
        delta(0, { type: 'text_delta', text: 'Hi' }),
        blockStop(0),
        messageDelta('end_turn', {
          input_tokens: null,
          cache_creation_input_tokens: null,
          cache_read_input_tokens: null,
          output_tokens: 7,
          server_tool_use: null,
        }),
        STOP,
      ]),
    );
    const chunks = await streamWithUsage(client);
    expect(chunks.at(-1)!.usage).toEqual({
      prompt_tokens: 150,
      completion_tokens: 7,
      total_tokens: 157,
      prompt_tokens_details: { cached_tokens: 30, cache_write_tokens: 20 },
    });
  });

  it('several message_delta events (documented: "one or more") give the client one finish chunk', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart(),
        blockStart(0, { type: 'text', text: '' }),
        delta(0, { type: 'text_delta', text: 'Searching' }),
        blockStop(0),
        messageDelta(null, { output_tokens: 5 }),
        messageDelta('end_turn', { output_tokens: 9 }),
        STOP,
      ]),
    );
    const chunks = await streamWithUsage(client);
    expect(finishes(chunks)).toEqual(['stop']);
    // The finish chunk is the last choice chunk, followed only by the usage chunk.
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe('stop');
    expect(chunks.at(-1)!.usage?.completion_tokens).toBe(9);
  });

  it('a tool without arguments streams "{}" as its arguments, as the JSON answer and OpenAI give', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart(),
        blockStart(0, { type: 'tool_use', id: 'toolu_01A', name: 'get_time', input: {} }),
        delta(0, { type: 'input_json_delta', partial_json: '' }),
        blockStop(0),
        messageDelta('tool_use', { output_tokens: 12 }),
        STOP,
      ]),
    );
    const stream = client.chat.completions.stream({
      model: 'r',
      messages: hi,
      tools: [
        { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
      ],
    });
    const final = await stream.finalChatCompletion();
    const call = final.choices[0]!.message.tool_calls![0]!;
    expect(call).toMatchObject({
      id: 'toolu_01A',
      type: 'function',
      function: { name: 'get_time', arguments: '{}' },
    });
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
  });

  it('a tool_use whose start carries the whole input and no deltas still gives its arguments', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart(),
        blockStart(0, { type: 'tool_use', id: 'toolu_01B', name: 'get_weather', input: { city: 'Paris' } }),
        blockStop(0),
        messageDelta('tool_use', { output_tokens: 12 }),
        STOP,
      ]),
    );
    const chunks = await collect(
      await client.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    const args = chunks
      .flatMap((c) => c.choices[0]?.delta.tool_calls ?? [])
      .map((c) => c.function?.arguments ?? '')
      .join('');
    expect(JSON.parse(args)).toEqual({ city: 'Paris' });
  });

  it('an overloaded_error event before content, on the only upstream, is a 502 in OpenAI shape', async () => {
    const { client } = await setup((_req, res) =>
      sse(res, [
        messageStart(),
        PING,
        { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
      ]),
    );
    const err = await client.chat.completions.create({ model: 'r', messages: hi, stream: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAI.APIError);
    const e = err as InstanceType<typeof OpenAI.APIError>;
    expect(e.status).toBe(502);
    expect(e.type).toBe('upstream_error');
    expect(e.message).toContain('anth/claude-sonnet-4-5: stream_error_event');
  });
});

describe('documented Anthropic JSON answers, read by the OpenAI SDK', () => {
  it.each([
    ['end_turn', 'stop'],
    ['stop_sequence', 'stop'],
    ['pause_turn', 'stop'],
    ['max_tokens', 'length'],
    ['model_context_window_exceeded', 'length'],
    ['tool_use', 'tool_calls'],
    ['refusal', 'content_filter'],
  ])('stop_reason %s -> finish_reason %s, streamed and not', async (stopReason, finish) => {
    const { client } = await setup((req, res) => {
      if (req.body.stream === true) {
        sse(res, [
          messageStart(),
          blockStart(0, { type: 'text', text: '' }),
          delta(0, { type: 'text_delta', text: 'x' }),
          blockStop(0),
          messageDelta(stopReason, { output_tokens: 1 }),
          STOP,
        ]);
      } else {
        json(
          res,
          200,
          message([{ type: 'text', text: 'x' }], stopReason, { input_tokens: 3, output_tokens: 1 }),
        );
      }
    });
    const data = await client.chat.completions.create({ model: 'r', messages: hi });
    expect(data.choices[0]!.finish_reason).toBe(finish);
    const chunks = await collect(
      await client.chat.completions.create({ model: 'r', messages: hi, stream: true }),
    );
    expect(finishes(chunks)).toEqual([finish]);
  });

  it('a 200 whose body is an Anthropic error object fails over, as the same error in a stream does', async () => {
    const mock = track(
      await startMock((_req, res) =>
        json(res, 200, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
      ),
    );
    const good = track(await startSimulator({ name: 'good' }));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('anth', mock.url, ['m'], {
            kind: 'anthropic',
            base_url: mock.url,
            api_key: 'sk-ant-test',
          }),
          simProvider('good', good.url, ['m']),
        ],
        routes: { r: { strategy: 'priority', targets: ['anth/m', 'good/m'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(response.headers.get('x-router-trail')).toBe('anth/m=error_in_answer');
    expect(response.headers.get('x-router-provider')).toBe('good');
    expect(data.choices[0]!.message.content).not.toBe('');
    expect(mock.requests).toHaveLength(1);
  });

  it('text beside thinking and tool_use: content, complete tool_calls and cache-aware usage', async () => {
    const { client } = await setup((_req, res) =>
      json(
        res,
        200,
        message(
          [
            { type: 'thinking', thinking: 'hmm', signature: 'sig' },
            { type: 'redacted_thinking', data: 'xx' },
            { type: 'text', text: 'Let me check.' },
            { type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: { city: 'Paris', days: [1, 2] } },
          ],
          'tool_use',
          {
            input_tokens: 10,
            cache_creation_input_tokens: 200,
            cache_read_input_tokens: 1000,
            output_tokens: 40,
          },
        ),
      ),
    );
    const data = await client.chat.completions.create({ model: 'r', messages: hi });
    const msg = data.choices[0]!.message;
    expect(msg.content).toBe('Let me check.');
    expect(msg.tool_calls).toEqual([
      {
        id: 'toolu_01',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":"Paris","days":[1,2]}' },
      },
    ]);
    expect(data.usage).toEqual({
      prompt_tokens: 1210,
      completion_tokens: 40,
      total_tokens: 1250,
      prompt_tokens_details: { cached_tokens: 1000, cache_write_tokens: 200 },
    });
  });

  it('sends the documented request: system hoisted, turns alternating, tools and tool results linked', async () => {
    const { client, mock } = await setup((_req, res) =>
      json(
        res,
        200,
        message([{ type: 'text', text: 'ok' }], 'end_turn', { input_tokens: 1, output_tokens: 1 }),
      ),
    );
    await client.chat.completions.create({
      model: 'r',
      max_tokens: 50,
      max_completion_tokens: 60,
      temperature: 1.5,
      top_p: 0.9,
      stop: 'END',
      n: 1,
      user: 'user-42',
      parallel_tool_calls: false,
      tool_choice: 'required',
      response_format: { type: 'json_object' },
      tools: [
        {
          type: 'function',
          function: {
            name: 'get_weather',
            parameters: { type: 'object', properties: { city: { type: 'string' } } },
          },
        },
      ],
      messages: [
        { role: 'system', content: 'Rule one.' },
        { role: 'developer', content: [{ type: 'text', text: 'Rule two.' }] },
        { role: 'user', content: [{ type: 'text', text: 'Weather?' }] },
        { role: 'user', content: 'In Paris.' },
        {
          role: 'assistant',
          content: 'Checking.',
          tool_calls: [
            {
              id: 'call_1',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
            },
          ],
        },
        { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
        { role: 'user', content: '' },
        { role: 'user', content: 'Thanks' },
      ],
    });
    const sent = mock.requests[0]!;
    expect(sent.path).toBe('/v1/messages');
    expect(sent.headers['x-api-key']).toBe('sk-ant-test');
    expect(sent.headers['anthropic-version']).toBe('2023-06-01');
    expect(sent.body).toMatchObject({
      model: 'claude-sonnet-4-5',
      max_tokens: 60,
      temperature: 1,
      stop_sequences: ['END'],
      metadata: { user_id: 'user-42' },
      tool_choice: { type: 'any', disable_parallel_tool_use: true },
      tools: [
        { name: 'get_weather', input_schema: { type: 'object', properties: { city: { type: 'string' } } } },
      ],
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Weather?' },
            { type: 'text', text: 'In Paris.' },
          ],
        },
        {
          role: 'assistant',
          content: [
            { type: 'text', text: 'Checking.' },
            { type: 'tool_use', id: 'call_1', name: 'get_weather', input: { city: 'Paris' } },
          ],
        },
        {
          role: 'user',
          content: [
            { type: 'tool_result', tool_use_id: 'call_1', content: 'sunny' },
            { type: 'text', text: 'Thanks' },
          ],
        },
      ],
    });
    expect(String(sent.body.system)).toMatch(/^Rule one\.\n\nRule two\.\n\n.*JSON/s);
    for (const f of ['top_p', 'n', 'user', 'parallel_tool_calls', 'response_format', 'max_completion_tokens'])
      expect(sent.body, f).not.toHaveProperty(f);
  });
  it('n > 1, which Anthropic cannot answer, is refused before the upstream is called', async () => {
    const { client, mock } = await setup((_req, res) =>
      json(
        res,
        200,
        message([{ type: 'text', text: 'ok' }], 'end_turn', { input_tokens: 1, output_tokens: 1 }),
      ),
    );
    const err = await client.chat.completions.create({ model: 'r', messages: hi, n: 2 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as Error).message).toContain('n > 1');
    expect(mock.requests).toHaveLength(0);
  });
});

describe('documented Anthropic errors, read by the OpenAI SDK', () => {
  const error = (type: string, message: string): Json => ({
    type: 'error',
    error: { type, message },
    request_id: 'req_011CSHoEeqs5C35K2UUqR7Fy',
  });

  it.each([
    [400, 'invalid_request_error', OpenAI.BadRequestError, 'invalid_request_error', null],
    [404, 'not_found_error', OpenAI.NotFoundError, 'invalid_request_error', 'model_not_found'],
    [413, 'request_too_large', OpenAI.APIError, 'invalid_request_error', 'request_too_large'],
  ])('a %i %s is relayed with its message, in OpenAI shape', async (status, type, cls, oaType, code) => {
    const { client, mock } = await setup((_req, res) => json(res, status, error(type, `bad thing: ${type}`)));
    for (const stream of [false, true]) {
      const err = await client.chat.completions.create({ model: 'r', messages: hi, stream }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(cls);
      const e = err as InstanceType<typeof OpenAI.APIError>;
      expect(e.status).toBe(status);
      expect(e.message).toContain(`bad thing: ${type}`);
      expect(e.type).toBe(oaType);
      expect(e.code).toBe(code);
    }
    expect(mock.requests).toHaveLength(2);
  });

  it('a 429 rate_limit_error with retry-after: a 429 with Retry-After for the client', async () => {
    const { client } = await setup((_req, res) =>
      json(
        res,
        429,
        error('rate_limit_error', 'Number of request tokens has exceeded your per-minute rate limit'),
        {
          'retry-after': '7',
          'anthropic-ratelimit-requests-remaining': '0',
        },
      ),
    );
    const err = await client.chat.completions.create({ model: 'r', messages: hi }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    const e = err as InstanceType<typeof OpenAI.RateLimitError>;
    expect(Number(e.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });

  it.each([
    [500, 'api_error'],
    [529, 'overloaded_error'],
  ])('a %i %s on the only upstream is a 502 upstream_error naming it', async (status, type) => {
    const { client } = await setup((_req, res) => json(res, status, error(type, 'Overloaded')));
    const err = await client.chat.completions.create({ model: 'r', messages: hi }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const e = err as InstanceType<typeof OpenAI.APIError>;
    expect(e).toBeInstanceOf(OpenAI.APIError);
    expect(e.status).toBe(502);
    expect(e.message).toContain('anth/claude-sonnet-4-5');
  });
});

describe('the Vercel AI SDK against an Anthropic upstream', () => {
  const weather = tool({
    description: 'weather',
    inputSchema: jsonSchema<{ city: string }>({
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
    }),
  });

  it('generateText and streamText: text, a tool call with parsed input, finish reason and usage', async () => {
    const { url } = await setup((req, res) => {
      const usage = { input_tokens: 50, cache_read_input_tokens: 10, output_tokens: 20 };
      if (req.body.stream === true) {
        sse(res, [
          messageStart({
            input_tokens: 50,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 10,
            output_tokens: 1,
          }),
          blockStart(0, { type: 'text', text: '' }),
          delta(0, { type: 'text_delta', text: 'Checking.' }),
          blockStop(0),
          blockStart(1, { type: 'tool_use', id: 'toolu_9', name: 'weather', input: {} }),
          delta(1, { type: 'input_json_delta', partial_json: '' }),
          delta(1, { type: 'input_json_delta', partial_json: '{"city":' }),
          delta(1, { type: 'input_json_delta', partial_json: ' "Oslo"}' }),
          blockStop(1),
          messageDelta('tool_use', { ...usage }),
          STOP,
        ]);
      } else {
        json(
          res,
          200,
          message(
            [
              { type: 'text', text: 'Checking.' },
              { type: 'tool_use', id: 'toolu_9', name: 'weather', input: { city: 'Oslo' } },
            ],
            'tool_use',
            usage,
          ),
        );
      }
    });
    const provider = createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' });
    const gen = await generateText({ model: provider.chat('r'), prompt: 'weather?', tools: { weather } });
    expect(gen.text).toBe('Checking.');
    expect(gen.toolCalls.map((c) => [c.toolCallId, c.toolName, c.input])).toEqual([
      ['toolu_9', 'weather', { city: 'Oslo' }],
    ]);
    expect(gen.finishReason).toBe('tool-calls');
    expect(gen.usage.inputTokens).toBe(60);
    expect(gen.usage.outputTokens).toBe(20);

    const st = streamText({ model: provider.chat('r'), prompt: 'weather?', tools: { weather } });
    expect(await st.text).toBe('Checking.');
    expect((await st.toolCalls).map((c) => [c.toolCallId, c.toolName, c.input])).toEqual([
      ['toolu_9', 'weather', { city: 'Oslo' }],
    ]);
    expect(await st.finishReason).toBe('tool-calls');
    expect((await st.usage).inputTokens).toBe(60);
  });
});

describe('LangChain against an Anthropic upstream', () => {
  it('a streamed tool call without arguments and a text answer: tool_calls, content and usage_metadata', async () => {
    const { url } = await setup((req, res) => {
      const tools = Array.isArray(req.body.tools);
      sse(res, [
        messageStart({ input_tokens: 40, cache_read_input_tokens: 2, output_tokens: 1 }),
        ...(tools
          ? [
              blockStart(0, { type: 'tool_use', id: 'toolu_lc', name: 'now', input: {} }),
              delta(0, { type: 'input_json_delta', partial_json: '' }),
              blockStop(0),
            ]
          : [
              blockStart(0, { type: 'text', text: '' }),
              delta(0, { type: 'text_delta', text: 'Hello' }),
              delta(0, { type: 'text_delta', text: ' there' }),
              blockStop(0),
            ]),
        messageDelta(tools ? 'tool_use' : 'end_turn', { output_tokens: 6 }),
        STOP,
      ]);
    });
    const model = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      maxRetries: 0,
      configuration: { baseURL: `${url}/v1` },
    });
    let text: AIMessageChunk | undefined;
    for await (const c of await model.stream('hi')) text = text === undefined ? c : text.concat(c);
    expect(text!.content).toBe('Hello there');
    expect(text!.usage_metadata).toMatchObject({ input_tokens: 42, output_tokens: 6, total_tokens: 48 });

    const withTools = model.bindTools([
      {
        type: 'function',
        function: { name: 'now', description: 'time', parameters: { type: 'object', properties: {} } },
      },
    ]);
    let call: AIMessageChunk | undefined;
    for await (const c of await withTools.stream('time?')) call = call === undefined ? c : call.concat(c);
    expect(call!.tool_calls).toEqual([{ name: 'now', args: {}, id: 'toolu_lc', type: 'tool_call' }]);
    expect(call!.invalid_tool_calls ?? []).toEqual([]);
  });
});
