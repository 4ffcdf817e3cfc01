/**
 * The OpenAI SDK's wider feature set through the gateway, against a hand-written upstream that answers as the
 * real OpenAI API documents (not our simulator): structured outputs (`parse`, the `stream` helper), tool
 * runners with parallel tool calls, logprobs, `n` > 1, usage across a failover, fields the gateway does not
 * know (both ways), audio and reasoning deltas, the Responses, Files and Models APIs through the passthrough,
 * and the SDK's error classes.
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI, { APIConnectionError, APIError, BadRequestError, RateLimitError, toFile } from 'openai';
import { zodFunction, zodResponseFormat } from 'openai/helpers/zod';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { sendJson, gate } from '../helpers/mock-upstream.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();

const CLIENT_KEY = 'sk-client-wire-7777';
const UPSTREAM_KEY = 'sk-upstream-wire-SECRET-1234';
const FINGERPRINT = 'fp_44709d6fcb';

interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  json(): Record<string, unknown>;
}

type Handler = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

interface Mock {
  readonly url: string;
  readonly received: Received[];
}

/** A hand-written OpenAI upstream on 127.0.0.1:0: each request is read whole, recorded, then handed to `handler`. */
async function mockOpenAI(handler: Handler): Promise<Mock> {
  const received: Received[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      const r: Received = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body,
        json: () => JSON.parse(body.toString('utf8')) as Record<string, unknown>,
      };
      received.push(r);
      void Promise.resolve(handler(r, res, received.length)).catch(() => res.destroy());
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received };
}

/** The mock's JSON answers carry an upstream request id, as OpenAI's do. */
function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  sendJson(res, status, body, { 'x-request-id': 'req_upstream', ...headers });
}

function sseHead(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
}

function sseData(res: ServerResponse, events: readonly unknown[]): void {
  for (const e of events) res.write(`data: ${JSON.stringify(e)}\n\n`);
}

function sse(res: ServerResponse, events: readonly unknown[]): void {
  sseHead(res);
  sseData(res, events);
  res.end('data: [DONE]\n\n');
}

const USAGE = {
  prompt_tokens: 19,
  completion_tokens: 10,
  total_tokens: 29,
  prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
  completion_tokens_details: {
    reasoning_tokens: 4,
    audio_tokens: 0,
    accepted_prediction_tokens: 0,
    rejected_prediction_tokens: 0,
  },
};

function completion(message: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    id: 'chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT',
    object: 'chat.completion',
    created: 1741569952,
    model: 'gpt-4o-2024-08-06',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', refusal: null, annotations: [], ...message },
        logprobs: null,
        finish_reason: message.tool_calls ? 'tool_calls' : 'stop',
      },
    ],
    usage: USAGE,
    service_tier: 'default',
    system_fingerprint: FINGERPRINT,
    ...extra,
  };
}

/** A chat.completion.chunk as OpenAI writes it; `choices` are whole choice objects. */
function chunk(choices: readonly Record<string, unknown>[], extra: Record<string, unknown> = {}) {
  return {
    id: 'chatcmpl-stream-1',
    object: 'chat.completion.chunk',
    created: 1741569952,
    model: 'gpt-4o-2024-08-06',
    service_tier: 'default',
    system_fingerprint: FINGERPRINT,
    choices,
    ...extra,
  };
}

function choice(
  delta: Record<string, unknown>,
  finish: string | null = null,
  index = 0,
  logprobs: unknown = null,
) {
  return { index, delta, logprobs, finish_reason: finish };
}

/** A text answer streamed the way OpenAI streams it: a role chunk, content chunks, the finish chunk. */
function textChunks(parts: readonly string[], extra: Record<string, unknown> = {}) {
  return [
    chunk([choice({ role: 'assistant', content: '', refusal: null })], extra),
    ...parts.map((p) => chunk([choice({ content: p })], extra)),
    chunk([choice({}, 'stop')], extra),
  ];
}

interface Setup {
  gw: TestGateway;
  client: OpenAI;
}

/**
 * The gateway in front of `mocks` (providers `oa`, `ob`, ... each serving `gpt-4o` with key UPSTREAM_KEY),
 * route `smart` over them in that order, client keys required, passthrough to the first.
 */
async function setup(...mocks: Mock[]): Promise<Setup> {
  const names = mocks.map((_m, i) => `o${String.fromCharCode(97 + i)}`);
  const gw = track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], passthrough: names[0] },
      providers: mocks.map((m, i) => ({
        name: names[i],
        kind: 'openai',
        base_url: `${m.url}/v1`,
        api_key: UPSTREAM_KEY,
        timeouts: { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 },
        models: [{ name: 'gpt-4o' }],
      })),
      routes: { smart: { strategy: 'priority', targets: names.map((n) => `${n}/gpt-4o`) } },
    }),
  );
  const client = new OpenAI({ apiKey: CLIENT_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  return { gw, client };
}

function expectOurKeyOnly(r: Received): void {
  expect(r.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
  expect(JSON.stringify(r.headers)).not.toContain(CLIENT_KEY);
}

const Weather = z.object({ city: z.string(), celsius: z.number() });
const WEATHER_JSON = '{"city":"Paris","celsius":21.5}';

describe('structured outputs: parse() and the stream helper', () => {
  it('parse() with a zod response_format gets the parsed object; the upstream gets the strict json_schema', async () => {
    const up = await mockOpenAI((_r, res) => json(res, 200, completion({ content: WEATHER_JSON })));
    const { client } = await setup(up);
    const out = await client.chat.completions.parse({
      model: 'smart',
      messages: [{ role: 'user', content: 'weather in Paris?' }],
      response_format: zodResponseFormat(Weather, 'weather'),
    });
    expect(out.choices[0]?.message.parsed).toEqual({ city: 'Paris', celsius: 21.5 });
    expect(out.system_fingerprint).toBe(FINGERPRINT);
    expect(out.usage).toEqual(USAGE);
    const sent = up.received[0]!.json();
    expect(sent.model).toBe('gpt-4o');
    expect(sent.response_format).toMatchObject({
      type: 'json_schema',
      json_schema: {
        name: 'weather',
        strict: true,
        schema: { type: 'object', required: ['city', 'celsius'] },
      },
    });
    expectOurKeyOnly(up.received[0]!);
  });

  it('parse() with a strict zodFunction tool gets parsed_arguments', async () => {
    const up = await mockOpenAI((_r, res) =>
      json(
        res,
        200,
        completion({
          content: null,
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: WEATHER_JSON } },
          ],
        }),
      ),
    );
    const { client } = await setup(up);
    const out = await client.chat.completions.parse({
      model: 'smart',
      messages: [{ role: 'user', content: 'weather in Paris?' }],
      tools: [zodFunction({ name: 'get_weather', parameters: Weather })],
    });
    const call = out.choices[0]?.message.tool_calls?.[0];
    expect(call?.type === 'function' && call.function.parsed_arguments).toEqual({
      city: 'Paris',
      celsius: 21.5,
    });
    expect((up.received[0]!.json().tools as { function: { strict: boolean } }[])[0]?.function.strict).toBe(
      true,
    );
  });

  it('stream(): content.delta events, content.done with the parsed object, finalChatCompletion()', async () => {
    const parts = ['{"city":', '"Paris",', '"celsius":21.5}'];
    const up = await mockOpenAI((_r, res) => sse(res, textChunks(parts)));
    const { client } = await setup(up);
    const deltas: string[] = [];
    let done: unknown;
    const stream = client.chat.completions
      .stream({
        model: 'smart',
        messages: [{ role: 'user', content: 'weather in Paris?' }],
        response_format: zodResponseFormat(Weather, 'weather'),
      })
      .on('content.delta', (e) => deltas.push(e.delta))
      .on('content.done', (e) => (done = e.parsed));
    const final = await stream.finalChatCompletion();
    expect(deltas).toEqual(parts);
    expect(done).toEqual({ city: 'Paris', celsius: 21.5 });
    expect(final.choices[0]?.message.parsed).toEqual({ city: 'Paris', celsius: 21.5 });
    expect(final.system_fingerprint).toBe(FINGERPRINT);
    expect(up.received[0]!.json().stream).toBe(true);
  });

  it('stream() with a strict tool: arguments.done carries parsed_arguments; a refusal stream reaches message.refusal', async () => {
    let n = 0;
    const up = await mockOpenAI((_r, res) => {
      n++;
      if (n === 1) {
        sse(res, [
          chunk([choice({ role: 'assistant', content: null, refusal: null })]),
          chunk([
            choice({
              tool_calls: [
                {
                  index: 0,
                  id: 'call_1',
                  type: 'function',
                  function: { name: 'get_weather', arguments: '' },
                },
              ],
            }),
          ]),
          chunk([choice({ tool_calls: [{ index: 0, function: { arguments: '{"city":"Paris",' } }] })]),
          chunk([choice({ tool_calls: [{ index: 0, function: { arguments: '"celsius":21.5}' } }] })]),
          chunk([choice({}, 'tool_calls')]),
        ]);
      } else {
        sse(res, [
          chunk([choice({ role: 'assistant', content: null, refusal: '' })]),
          chunk([choice({ refusal: "I'm sorry, " })]),
          chunk([choice({ refusal: "I can't help with that." })]),
          chunk([choice({}, 'stop')]),
        ]);
      }
    });
    const { client } = await setup(up);
    let parsedArgs: unknown;
    const toolStream = client.chat.completions
      .stream({
        model: 'smart',
        messages: [{ role: 'user', content: 'weather?' }],
        tools: [zodFunction({ name: 'get_weather', parameters: Weather })],
      })
      .on('tool_calls.function.arguments.done', (e) => (parsedArgs = e.parsed_arguments));
    const final = await toolStream.finalChatCompletion();
    expect(parsedArgs).toEqual({ city: 'Paris', celsius: 21.5 });
    expect(final.choices[0]?.finish_reason).toBe('tool_calls');

    const refusals: string[] = [];
    const refusalStream = client.chat.completions
      .stream({
        model: 'smart',
        messages: [{ role: 'user', content: 'something bad' }],
        response_format: zodResponseFormat(Weather, 'weather'),
      })
      .on('refusal.delta', (e) => refusals.push(e.delta));
    const refused = await refusalStream.finalChatCompletion();
    expect(refusals).toEqual(["I'm sorry, ", "I can't help with that."]);
    expect(refused.choices[0]?.message.refusal).toBe("I'm sorry, I can't help with that.");
    expect(refused.choices[0]?.message.parsed).toBeNull();
  });
});

describe('tool runners and parallel tool calls', () => {
  it('runTools (streamed): two parallel tool calls run, and both results go back upstream', async () => {
    const up = await mockOpenAI((r, res, n) => {
      if (n === 1) {
        const call = (index: number, id: string) => ({
          index,
          id,
          type: 'function',
          function: { name: 'get_weather', arguments: '' },
        });
        const args = (index: number, a: string) => ({ index, function: { arguments: a } });
        // As OpenAI streams parallel calls: one after the other, each by its index (the SDK's stream helper
        // takes a new index as the end of the previous call).
        sse(res, [
          chunk([choice({ role: 'assistant', content: null })]),
          chunk([choice({ tool_calls: [call(0, 'call_paris')] })]),
          chunk([choice({ tool_calls: [args(0, '{"city":"Par')] })]),
          chunk([choice({ tool_calls: [args(0, 'is"}')] })]),
          chunk([choice({ tool_calls: [call(1, 'call_oslo')] })]),
          chunk([choice({ tool_calls: [args(1, '{"city":"Os')] })]),
          chunk([choice({ tool_calls: [args(1, 'lo"}')] })]),
          chunk([choice({}, 'tool_calls')]),
        ]);
        return;
      }
      const messages = r.json().messages as { role: string; tool_call_id?: string; content?: string }[];
      const tools = messages.filter((m) => m.role === 'tool').map((m) => `${m.tool_call_id}=${m.content}`);
      sse(res, textChunks([`got ${tools.join(' & ')}`]));
    });
    const { client } = await setup(up);
    const calls: string[] = [];
    const runner = client.chat.completions.runTools({
      model: 'smart',
      stream: true,
      parallel_tool_calls: true,
      messages: [{ role: 'user', content: 'weather in Paris and Oslo?' }],
      tools: [
        zodFunction({
          name: 'get_weather',
          parameters: z.object({ city: z.string() }),
          function: ({ city }) => {
            calls.push(city);
            return `${city}: sunny`;
          },
        }),
      ],
    });
    const text = await runner.finalContent();
    expect(calls).toEqual(['Paris', 'Oslo']);
    expect(text).toBe('got call_paris=Paris: sunny & call_oslo=Oslo: sunny');
    expect(up.received).toHaveLength(2);
    const second = up.received[1]!.json().messages as { role: string; tool_calls?: unknown[] }[];
    expect(second.find((m) => m.role === 'assistant')?.tool_calls).toHaveLength(2);
    expect(up.received[0]!.json().parallel_tool_calls).toBe(true);
  });

  it('tool-call deltas interleaved by index reach the client chunk for chunk, each call whole by its index', async () => {
    const call = (index: number, id: string, name: string) => ({
      index,
      id,
      type: 'function',
      function: { name, arguments: '' },
    });
    const args = (index: number, a: string) => ({ index, function: { arguments: a } });
    const streamed = [
      chunk([choice({ role: 'assistant', content: null, refusal: null })]),
      chunk([choice({ tool_calls: [call(0, 'call_a', 'get_weather'), call(1, 'call_b', 'get_time')] })]),
      chunk([choice({ tool_calls: [args(1, '{"tz":')] })]),
      chunk([choice({ tool_calls: [args(0, '{"city":')] })]),
      chunk([choice({ tool_calls: [args(1, '"CET"}'), args(0, '"Oslo"}')] })]),
      chunk([choice({}, 'tool_calls')]),
    ];
    const up = await mockOpenAI((_r, res) => sse(res, streamed));
    const { client } = await setup(up);
    const got: ChatCompletionChunk[] = [];
    const stream = await client.chat.completions.create({
      model: 'smart',
      stream: true,
      messages: [{ role: 'user', content: 'weather and time in Oslo?' }],
      tools: ['get_weather', 'get_time'].map((name) => ({
        type: 'function' as const,
        function: { name, parameters: { type: 'object', properties: {} } },
      })),
    });
    for await (const c of stream) got.push(c);
    expect(got).toEqual(streamed);
    const calls: string[] = [];
    for (const c of got)
      for (const t of c.choices[0]?.delta.tool_calls ?? [])
        calls[t.index] = (calls[t.index] ?? '') + (t.function?.arguments ?? '');
    expect(calls).toEqual(['{"city":"Oslo"}', '{"tz":"CET"}']);
  });

  it('custom tools (regression: a {"type":"custom"} tool was refused with a 400) reach the upstream, and their calls the client', async () => {
    const tools = [
      {
        type: 'custom' as const,
        custom: { name: 'code_exec', description: 'Runs Python', format: { type: 'text' as const } },
      },
      {
        type: 'function' as const,
        function: { name: 'get_time', parameters: { type: 'object', properties: {} } },
      },
    ];
    const toolCall = { id: 'call_c1', type: 'custom', custom: { name: 'code_exec', input: 'print(6 * 7)' } };
    const up = await mockOpenAI((r, res) =>
      r.json().stream
        ? sse(res, textChunks(['ok']))
        : json(res, 200, completion({ content: null, tool_calls: [toolCall] })),
    );
    const { client } = await setup(up);
    const messages = [{ role: 'user' as const, content: 'what is 6 times 7? use code' }];
    const out = await client.chat.completions.create({ model: 'smart', messages, tools });
    expect(out.choices[0]?.message.tool_calls).toEqual([toolCall]);
    const parts: string[] = [];
    for await (const c of await client.chat.completions.create({
      model: 'smart',
      messages,
      tools,
      stream: true,
    }))
      parts.push(c.choices[0]?.delta.content ?? '');
    expect(parts.join('')).toBe('ok');
    expect(up.received).toHaveLength(2);
    for (const r of up.received) expect(r.json().tools).toEqual(tools);
    // A custom tool without its name is still refused before any upstream is asked.
    const nameless = [{ type: 'custom', custom: { description: 'no name' } }] as unknown as typeof tools;
    const err = await client.chat.completions.create({ model: 'smart', messages, tools: nameless }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BadRequestError);
    expect((err as BadRequestError).param).toBe('tools[0].custom.name');
    expect(up.received).toHaveLength(2);
  });

  it('runTools (not streamed): a parallel tool-call answer round-trips', async () => {
    const up = await mockOpenAI((_r, res, n) => {
      if (n === 1) {
        json(
          res,
          200,
          completion({
            content: null,
            tool_calls: [
              { id: 'c1', type: 'function', function: { name: 'add', arguments: '{"a":1,"b":2}' } },
              { id: 'c2', type: 'function', function: { name: 'add', arguments: '{"a":3,"b":4}' } },
            ],
          }),
        );
      } else json(res, 200, completion({ content: 'sums are 3 and 7' }));
    });
    const { client } = await setup(up);
    const runner = client.chat.completions.runTools({
      model: 'smart',
      messages: [{ role: 'user', content: 'add' }],
      tools: [
        zodFunction({
          name: 'add',
          parameters: z.object({ a: z.number(), b: z.number() }),
          function: ({ a, b }) => a + b,
        }),
      ],
    });
    expect(await runner.finalContent()).toBe('sums are 3 and 7');
    const tools = (up.received[1]!.json().messages as { role: string; content?: string }[]).filter(
      (m) => m.role === 'tool',
    );
    expect(tools.map((m) => m.content)).toEqual(['3', '7']);
  });
});

describe('logprobs, n > 1 and usage across a failover', () => {
  const lp = (token: string) => ({
    content: [
      {
        token,
        logprob: -0.31725305,
        bytes: [...Buffer.from(token)],
        top_logprobs: [
          { token, logprob: -0.31725305, bytes: [...Buffer.from(token)] },
          { token: 'Hey', logprob: -1.3190403, bytes: [72, 101, 121] },
        ],
      },
    ],
    refusal: null,
  });

  it('logprobs with top_logprobs reach the client untouched, streamed and not', async () => {
    const streamed = [
      chunk([choice({ role: 'assistant', content: '' }, null, 0, { content: [], refusal: null })]),
      chunk([choice({ content: 'Hello' }, null, 0, lp('Hello'))]),
      chunk([choice({ content: '!' }, null, 0, lp('!'))]),
      chunk([choice({}, 'stop')]),
    ];
    const whole = completion({ content: 'Hello!' });
    whole.choices[0]!.logprobs = lp('Hello') as unknown as null;
    const up = await mockOpenAI((r, res) => (r.json().stream ? sse(res, streamed) : json(res, 200, whole)));
    const { client } = await setup(up);
    const params = {
      model: 'smart',
      messages: [{ role: 'user' as const, content: 'hi' }],
      logprobs: true,
      top_logprobs: 2,
    };
    const out = await client.chat.completions.create(params);
    expect(out).toEqual(whole);

    const got: ChatCompletionChunk[] = [];
    for await (const c of await client.chat.completions.create({ ...params, stream: true })) got.push(c);
    expect(got).toEqual(streamed);
    expect(up.received).toHaveLength(2);
    for (const r of up.received) expect(r.json()).toMatchObject({ logprobs: true, top_logprobs: 2 });
  });

  it('n: 2 streamed: both choice indexes, interleaved, reach the client and the stream helper', async () => {
    const streamed = [
      chunk([
        choice({ role: 'assistant', content: '' }, null, 0),
        choice({ role: 'assistant', content: '' }, null, 1),
      ]),
      chunk([choice({ content: 'Red' }, null, 0)]),
      chunk([choice({ content: 'Blue' }, null, 1)]),
      chunk([choice({ content: ' rose' }, null, 0)]),
      chunk([choice({ content: ' sky' }, null, 1)]),
      chunk([choice({}, 'stop', 1)]),
      chunk([choice({}, 'stop', 0)]),
    ];
    const up = await mockOpenAI((_r, res) => sse(res, streamed));
    const { client } = await setup(up);
    const got: ChatCompletionChunk[] = [];
    const params = { model: 'smart', n: 2, messages: [{ role: 'user' as const, content: 'two colours' }] };
    for await (const c of await client.chat.completions.create({ ...params, stream: true })) got.push(c);
    expect(got).toEqual(streamed);
    const final = await client.chat.completions.stream(params).finalChatCompletion();
    expect(final.choices.map((c) => [c.index, c.message.content])).toEqual([
      [0, 'Red rose'],
      [1, 'Blue sky'],
    ]);
    expect(up.received[0]!.json().n).toBe(2);
  });

  it('include_usage: the first upstream fails before content, the second serves: exactly one usage chunk, its own', async () => {
    const FIRST_USAGE = { prompt_tokens: 999, completion_tokens: 1, total_tokens: 1000 };
    const first = await mockOpenAI((_r, res) => {
      sseHead(res);
      // OpenAI puts `usage: null` on every chunk when include_usage is asked for.
      sseData(res, [
        chunk([choice({ role: 'assistant', content: '' })], { usage: null }),
        chunk([], { usage: FIRST_USAGE }),
        { error: { message: 'The server had an error', type: 'server_error', param: null, code: null } },
      ]);
      res.end();
    });
    const second = await mockOpenAI((_r, res) =>
      sse(res, [...textChunks(['Hi', ' there'], { usage: null }), chunk([], { usage: USAGE })]),
    );
    const { client } = await setup(first, second);
    const got: ChatCompletionChunk[] = [];
    const stream = await client.chat.completions.create({
      model: 'smart',
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'hi' }],
    });
    for await (const c of stream) got.push(c);
    const usages = got.filter((c) => c.usage != null).map((c) => c.usage);
    expect(usages).toEqual([USAGE]);
    expect(got.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('Hi there');
    expect(first.received).toHaveLength(1);
    expect(second.received[0]!.json().stream_options).toEqual({ include_usage: true });
  });
});

describe('fields the gateway does not know', () => {
  const NEW_FIELDS = {
    reasoning_effort: 'low',
    modalities: ['text'],
    audio: { voice: 'alloy', format: 'wav' },
    prediction: { type: 'content', content: 'Hello' },
    store: true,
    metadata: { team: 'wire' },
    service_tier: 'flex',
    seed: 42,
    parallel_tool_calls: false,
    max_completion_tokens: 256,
    verbosity: 'low',
    web_search_options: { search_context_size: 'low' },
    safety_identifier: 'user-123',
    prompt_cache_key: 'k1',
  };

  it('request fields reach the upstream untouched, and answer fields the client untouched (JSON)', async () => {
    const answer = completion(
      {
        content: 'See the docs.',
        annotations: [
          {
            type: 'url_citation',
            url_citation: { start_index: 0, end_index: 3, url: 'https://example.com/', title: 'Example' },
          },
        ],
        future_field: { nested: [1, 2] },
      },
      { service_tier: 'flex', brand_new_top_level: 'kept' },
    );
    const up = await mockOpenAI((_r, res) => json(res, 200, answer));
    const { client } = await setup(up);
    const body = { model: 'smart', messages: [{ role: 'user', content: 'hi' }], ...NEW_FIELDS };
    const out = await client.chat.completions.create(
      body as unknown as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming,
    );
    expect(out).toEqual(answer);
    expect(out.usage?.completion_tokens_details?.reasoning_tokens).toBe(4);
    expect(up.received[0]!.json()).toEqual({ ...body, model: 'gpt-4o' });
  });

  it('and streamed: every chunk arrives as the upstream wrote it', async () => {
    const chunks = textChunks(['a', 'b'], { obfuscation: 'x1y2', usage: null });
    const up = await mockOpenAI((_r, res) => sse(res, chunks));
    const { client } = await setup(up);
    const body = { model: 'smart', stream: true, messages: [{ role: 'user', content: 'hi' }], ...NEW_FIELDS };
    const got: unknown[] = [];
    const stream = await client.chat.completions.create(
      body as unknown as OpenAI.Chat.ChatCompletionCreateParamsStreaming,
    );
    for await (const c of stream) got.push(c);
    expect(got).toEqual(chunks);
    expect(up.received[0]!.json()).toEqual({ ...body, model: 'gpt-4o' });
  });
});

describe('deltas that are content without being text (regression: audio and reasoning were held back as preamble)', () => {
  it('a streamed audio answer reaches the client as it comes, not at its end', async () => {
    const g = gate();
    let released: 'client' | 'bound' | undefined;
    const up = await mockOpenAI(async (_r, res) => {
      sseHead(res);
      sseData(res, [
        chunk([choice({ role: 'assistant', content: null, refusal: null })]),
        chunk([choice({ audio: { id: 'audio_1', transcript: 'Hel' } })]),
        chunk([choice({ audio: { data: 'UklGRiQAAABXQVZFZm10IBAAAAABAAEA' } })]),
      ]);
      released = await g.wait;
      sseData(res, [
        chunk([choice({ audio: { transcript: 'lo' } })]),
        chunk([choice({ audio: { expires_at: 1729234747 } }, 'stop')]),
      ]);
      res.end('data: [DONE]\n\n');
    });
    const { client } = await setup(up);
    const stream = await client.chat.completions.create({
      model: 'smart',
      stream: true,
      modalities: ['text', 'audio'],
      audio: { voice: 'alloy', format: 'pcm16' },
      messages: [{ role: 'user', content: 'say hello' }],
    });
    let transcript = '';
    for await (const c of stream) {
      const audio = (c.choices[0]?.delta as { audio?: { transcript?: string } } | undefined)?.audio;
      transcript += audio?.transcript ?? '';
      if (transcript !== '') g.open();
    }
    expect(released).toBe('client');
    expect(transcript).toBe('Hello');
  });

  it('reasoning deltas of an OpenAI-compatible server (reasoning_content, reasoning) commit the stream', async () => {
    for (const field of ['reasoning_content', 'reasoning']) {
      const g = gate();
      let released: 'client' | 'bound' | undefined;
      const up = await mockOpenAI(async (_r, res) => {
        sseHead(res);
        sseData(res, [
          chunk([choice({ role: 'assistant', content: '' })]),
          chunk([choice({ content: null, [field]: 'Let me think' })]),
        ]);
        released = await g.wait;
        sseData(res, [chunk([choice({ content: '42' })]), chunk([choice({}, 'stop')])]);
        res.end('data: [DONE]\n\n');
      });
      const { client } = await setup(up);
      const stream = await client.chat.completions.create({
        model: 'smart',
        stream: true,
        messages: [{ role: 'user', content: 'think' }],
      });
      let thought = '';
      let content = '';
      for await (const c of stream) {
        const delta = c.choices[0]?.delta as Record<string, unknown> | undefined;
        if (typeof delta?.[field] === 'string') thought += delta[field] as string;
        content += c.choices[0]?.delta.content ?? '';
        if (thought !== '') g.open();
      }
      expect(released, field).toBe('client');
      expect([thought, content]).toEqual(['Let me think', '42']);
    }
  });
});

describe('Responses, Files and Models through the passthrough', () => {
  const RESPONSE = {
    id: 'resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b',
    object: 'response',
    created_at: 1741476542,
    status: 'completed',
    error: null,
    incomplete_details: null,
    instructions: null,
    max_output_tokens: null,
    model: 'gpt-4.1-2025-04-14',
    output: [
      {
        type: 'message',
        id: 'msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b',
        status: 'completed',
        role: 'assistant',
        content: [{ type: 'output_text', text: 'In a peaceful grove...', annotations: [] }],
      },
    ],
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: true,
    temperature: 1,
    text: { format: { type: 'text' } },
    tool_choice: 'auto',
    tools: [],
    top_p: 1,
    truncation: 'disabled',
    usage: {
      input_tokens: 36,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: 87,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 123,
    },
    user: null,
    metadata: {},
  };

  it('responses.create (JSON): relayed as it is, the provider key in place of the client key', async () => {
    const up = await mockOpenAI((_r, res) => json(res, 200, RESPONSE));
    const { client } = await setup(up);
    const out = await client.responses.create({
      model: 'gpt-4.1',
      input: 'Tell me a three sentence bedtime story about a unicorn.',
      reasoning: { effort: 'low' },
    });
    expect(out.output_text).toBe('In a peaceful grove...');
    expect(out.usage).toEqual(RESPONSE.usage);
    const r = up.received[0]!;
    expect([r.method, r.url]).toEqual(['POST', '/v1/responses']);
    expect(r.json()).toEqual({
      model: 'gpt-4.1',
      input: 'Tell me a three sentence bedtime story about a unicorn.',
      reasoning: { effort: 'low' },
    });
    expectOurKeyOnly(r);
  });

  it('responses.create (stream): SSE events are relayed as they come, named and in order', async () => {
    const g = gate();
    let released: 'client' | 'bound' | undefined;
    const inProgress = { ...RESPONSE, status: 'in_progress', output: [], usage: null };
    const item = RESPONSE.output[0]!;
    const events: Record<string, unknown>[] = [
      { type: 'response.created', response: inProgress },
      { type: 'response.in_progress', response: inProgress },
      {
        type: 'response.output_item.added',
        output_index: 0,
        item: { ...item, status: 'in_progress', content: [] },
      },
      {
        type: 'response.content_part.added',
        item_id: item.id,
        output_index: 0,
        content_index: 0,
        part: { type: 'output_text', text: '', annotations: [] },
      },
      {
        type: 'response.output_text.delta',
        item_id: item.id,
        output_index: 0,
        content_index: 0,
        delta: 'In a',
        logprobs: [],
      },
      {
        type: 'response.output_text.delta',
        item_id: item.id,
        output_index: 0,
        content_index: 0,
        delta: ' peaceful grove...',
        logprobs: [],
      },
      {
        type: 'response.output_text.done',
        item_id: item.id,
        output_index: 0,
        content_index: 0,
        text: 'In a peaceful grove...',
        logprobs: [],
      },
      { type: 'response.output_item.done', output_index: 0, item },
      { type: 'response.completed', response: RESPONSE },
    ].map((e, i) => ({ ...e, sequence_number: i }));
    const up = await mockOpenAI(async (_r, res) => {
      sseHead(res);
      const write = (e: Record<string, unknown>) =>
        res.write(`event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`);
      events.slice(0, 5).forEach(write);
      released = await g.wait;
      events.slice(5).forEach(write);
      res.end();
    });
    const { client } = await setup(up);
    const stream = await client.responses.create({ model: 'gpt-4.1', input: 'story', stream: true });
    const got: unknown[] = [];
    for await (const e of stream) {
      got.push(e);
      if (e.type === 'response.output_text.delta') g.open();
    }
    expect(released).toBe('client');
    expect(got).toEqual(events);
    expect(up.received[0]!.json()).toMatchObject({ stream: true });
    expectOurKeyOnly(up.received[0]!);
  });

  it('files.create: the multipart upload reaches the provider whole', async () => {
    const content = '{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{}}\n';
    const up = await mockOpenAI((r, res) =>
      json(res, 200, {
        id: 'file-abc123',
        object: 'file',
        bytes: content.length,
        created_at: 1677610602,
        expires_at: null,
        filename: 'batch.jsonl',
        purpose: 'batch',
        status: 'processed',
        status_details: null,
        received: r.body.length,
      }),
    );
    const { client } = await setup(up);
    const file = await client.files.create({
      file: await toFile(Buffer.from(content), 'batch.jsonl'),
      purpose: 'batch',
    });
    expect(file).toMatchObject({ id: 'file-abc123', filename: 'batch.jsonl', purpose: 'batch' });
    const r = up.received[0]!;
    expect([r.method, r.url]).toEqual(['POST', '/v1/files']);
    expect(r.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
    const text = r.body.toString('utf8');
    expect(text).toContain(content);
    expect(text).toContain('filename="batch.jsonl"');
    expect(text).toMatch(/name="purpose"\r\n\r\nbatch\r\n/);
    expectOurKeyOnly(r);
  });

  it('models.list() lists the routes; retrieve() answers ours and proxies the others', async () => {
    const up = await mockOpenAI((r, res) =>
      json(res, 200, {
        id: r.url.split('/').pop(),
        object: 'model',
        created: 1686935002,
        owned_by: 'openai',
      }),
    );
    const { client } = await setup(up);
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(expect.arrayContaining(['smart', 'oa/gpt-4o']));
    expect(await client.models.retrieve('smart')).toMatchObject({ id: 'smart', object: 'model' });
    expect(await client.models.retrieve('gpt-4.1-mini')).toEqual({
      id: 'gpt-4.1-mini',
      object: 'model',
      created: 1686935002,
      owned_by: 'openai',
    });
    expect(up.received.map((r) => r.url)).toEqual(['/v1/models/gpt-4.1-mini']);
  });
});

describe('SDK error classes', () => {
  const INVALID = {
    error: {
      message: "Unsupported value: 'reasoning_effort' does not support 'extreme' with this model.",
      type: 'invalid_request_error',
      param: 'reasoning_effort',
      code: 'unsupported_value',
    },
  };

  it("a 400 reaches the client as BadRequestError with the upstream's message, param and code (chat, stream, responses)", async () => {
    const up = await mockOpenAI((_r, res) => json(res, 400, INVALID));
    const spare = await mockOpenAI((_r, res) => json(res, 200, completion({ content: 'never' })));
    const { client } = await setup(up, spare);
    const body = { model: 'smart', messages: [{ role: 'user' as const, content: 'hi' }] };
    const attempts = [
      client.chat.completions.create(body),
      client.chat.completions.create({ ...body, stream: true }),
      client.responses.create({ model: 'gpt-4.1', input: 'hi' }),
    ];
    for (const p of attempts) {
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(BadRequestError);
      const e = err as BadRequestError;
      expect(e.status).toBe(400);
      expect(e.message).toContain(INVALID.error.message);
      expect([e.type, e.param, e.code]).toEqual([
        'invalid_request_error',
        'reasoning_effort',
        'unsupported_value',
      ]);
    }
    expect(spare.received).toHaveLength(0); // a client error is not failed over
  });

  it('a 429 from the only upstream reaches the client as RateLimitError with Retry-After (JSON, stream, cooldown)', async () => {
    const limited = () =>
      mockOpenAI((_r, res) =>
        json(
          res,
          429,
          {
            error: {
              message:
                'Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3.',
              type: 'requests',
              param: null,
              code: 'rate_limit_exceeded',
            },
          },
          { 'retry-after': '7', 'x-ratelimit-remaining-requests': '0' },
        ),
      );
    const ask = (client: OpenAI, stream: boolean) =>
      client.chat.completions
        .create({ model: 'smart', stream, messages: [{ role: 'user', content: 'hi' }] })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
    for (const stream of [false, true]) {
      const up = await limited();
      const { client } = await setup(up);
      const err = await ask(client, stream);
      expect(err, `stream ${stream}`).toBeInstanceOf(RateLimitError);
      const e = err as RateLimitError;
      expect([e.status, e.type]).toEqual([429, 'rate_limit_error']);
      expect(e.headers?.get('retry-after')).toBe('7');
      expect(e.headers?.get('x-router-provider')).toBe('oa');
      // The upstream's Retry-After opened its breaker: the next request is told to wait, without asking it.
      const again = await ask(client, stream);
      expect(again).toBeInstanceOf(RateLimitError);
      expect(Number((again as RateLimitError).headers?.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(up.received).toHaveLength(1);
    }
  });

  it('an upstream fault is never an APIConnectionError: the gateway always answers', async () => {
    // Cuts every request at once, then (the second time) after a committed first chunk.
    const up = await mockOpenAI((r, res, n) => {
      if (r.json().stream === true && n > 2) {
        sseHead(res);
        sseData(res, [chunk([choice({ role: 'assistant', content: 'partial' })])]);
        setImmediate(() => res.destroy());
        return;
      }
      res.destroy();
    });
    const { client } = await setup(up);
    const body = { model: 'smart', messages: [{ role: 'user' as const, content: 'hi' }] };
    for (const p of [
      client.chat.completions.create(body),
      client.chat.completions.create({ ...body, stream: true }),
    ]) {
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(APIError);
      expect(err).not.toBeInstanceOf(APIConnectionError);
      expect((err as APIError).status).toBe(502);
    }
    const stream = await client.chat.completions.create({ ...body, stream: true });
    const text: string[] = [];
    const err = await (async () => {
      for await (const c of stream) text.push(c.choices[0]?.delta.content ?? '');
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(text).toEqual(['partial']);
    expect(err).toBeInstanceOf(APIError);
    expect(err).not.toBeInstanceOf(APIConnectionError);
    expect((err as APIError).message).toContain('stream interrupted');
  });
});
