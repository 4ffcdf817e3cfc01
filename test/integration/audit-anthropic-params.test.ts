/**
 * Audit (session 27): each OpenAI Chat Completions parameter a client can send, sent through the official openai
 * SDK to a route whose one upstream is an `anthropic` provider (SPEC §4: request, response and SSE events are
 * translated; README "Anthropic upstreams" lists what is translated, refused or dropped). The upstream is a
 * recording node:http Messages API on loopback that answers in Anthropic's shape, JSON or SSE, as each test
 * says; what the gateway sent it and what the client got back are both checked.
 */
import type { ServerResponse } from 'node:http';
import OpenAI, { APIError } from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  anthropicMessage,
  anthropicSseFrame,
  claudeSse,
  collectChunks,
  startAnthropicRoute,
} from '../helpers/anthropic-route.js';
import { closeAfterAll, closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { JPEG_1PX, PNG_1PX } from '../helpers/images.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

type Json = Record<string, unknown>;

const trackAll = closeAfterAll();
const track = closeAfterEach();

const KEY = 'sk-ant-api03-audit27paramsSECRETkeyVALUE0123456789';
const MODEL = 'claude-sonnet-4-5';
const DEFAULT_MAX = 1234;
const USAGE = { input_tokens: 11, output_tokens: 5 };

type Responder = (req: Received, res: ServerResponse) => void;

/** 200, Claude's `message_start`, then an `error` event of `type` before any content. */
function errorBeforeContent(type: string, message: string): Responder {
  return (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      [
        {
          type: 'message_start',
          message: { ...anthropicMessage([], '', { input_tokens: 5, output_tokens: 1 }), stop_reason: null },
        },
        { type: 'error', error: { type, message } },
      ]
        .map(anthropicSseFrame)
        .join(''),
    );
  };
}

/** Text `text` as Claude answers it: JSON, or its SSE sequence when the request streams. */
function textAnswer(text: string, stop = 'end_turn', usage: Json = USAGE): Responder {
  return (req, res) => blocksAnswer([{ type: 'text', text }], stop, usage)(req, res);
}

function blocksAnswer(
  blocks: Json[],
  stop: string,
  usage: Json = USAGE,
  stopSequence: string | null = null,
): Responder {
  return (req, res) => {
    if (req.body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(claudeSse(blocks, stop, usage, stopSequence));
      return;
    }
    const content = blocks.map((b) => {
      if (b.type !== 'tool_use') return b;
      return { type: 'tool_use', id: b.id, name: b.name, input: b.input };
    });
    sendJson(res, 200, { ...anthropicMessage(content, stop, usage), stop_sequence: stopSequence });
  };
}

let gw: TestGateway;
let client: OpenAI;
let received: Received[];
let respond: Responder = textAnswer('ok');

beforeAll(async () => {
  const mock = trackAll(await startMock((req, res) => respond(req, res)));
  received = mock.received;
  gw = trackAll(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: KEY,
          default_max_tokens: DEFAULT_MAX,
          models: [{ name: MODEL }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`anth/${MODEL}`] } },
    }),
  );
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 20_000 });
});

beforeEach(() => {
  respond = textAnswer('ok');
  received.length = 0;
});

const USER: ChatCompletionMessageParam[] = [{ role: 'user', content: 'hi' }];

/** One JSON request through the SDK with extra fields (typed loosely: some are not in the SDK's types). */
async function ask(
  extra: Json,
  messages: ChatCompletionMessageParam[] = USER,
): Promise<OpenAI.ChatCompletion> {
  return client.chat.completions.create({
    model: 'r',
    messages,
    ...extra,
  } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming);
}

async function askStream(
  extra: Json,
  messages: ChatCompletionMessageParam[] = USER,
): Promise<ChatCompletionChunk[]> {
  const stream = await client.chat.completions.create({
    model: 'r',
    messages,
    stream: true,
    ...extra,
  } as unknown as OpenAI.ChatCompletionCreateParamsStreaming);
  return collectChunks(stream);
}

/** The last body the upstream was sent. */
function sent(): Json {
  expect(received.length).toBeGreaterThan(0);
  return received.at(-1)!.body;
}

const contentOf = (chunks: ChatCompletionChunk[]): string =>
  chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
const finishOf = (chunks: ChatCompletionChunk[]): (string | null)[] =>
  chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter((f) => f != null);

const weatherTool = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    strict: true,
  },
};
const timeTool = {
  type: 'function' as const,
  function: { name: 'get_time', parameters: { type: 'object', properties: {} } },
};

// ---------------------------------------------------------------------------------------------------------

describe('max_tokens', () => {
  it('max_tokens is sent as max_tokens', async () => {
    await ask({ max_tokens: 77 });
    expect(sent().max_tokens).toBe(77);
  });

  it('max_completion_tokens is sent as max_tokens, and wins over max_tokens when both are given', async () => {
    await ask({ max_completion_tokens: 88 });
    expect(sent().max_tokens).toBe(88);
    await ask({ max_completion_tokens: 99, max_tokens: 55 });
    expect(sent().max_tokens).toBe(99);
  });

  it('neither: the provider default_max_tokens is sent', async () => {
    await ask({});
    expect(sent().max_tokens).toBe(DEFAULT_MAX);
  });
});

describe('sampling and other scalar parameters', () => {
  it('temperature 1.5 (valid for OpenAI) is sent as 1, Anthropic max; 0 and 0.3 go as given', async () => {
    const r = await ask({ temperature: 1.5 });
    expect(r.choices[0]!.message.content).toBe('ok');
    expect(sent().temperature).toBe(1);
    await ask({ temperature: 0 });
    expect(sent().temperature).toBe(0);
    await ask({ temperature: 0.3 });
    expect(sent().temperature).toBe(0.3);
  });

  it('top_p alone is sent; with temperature only temperature goes', async () => {
    await ask({ top_p: 0.4 });
    expect(sent().top_p).toBe(0.4);
    expect(sent()).not.toHaveProperty('temperature');
    await ask({ top_p: 0.4, temperature: 0.2 });
    expect(sent().temperature).toBe(0.2);
    expect(sent()).not.toHaveProperty('top_p');
  });

  it('temperature 2.5 (outside OpenAI range) is a 400 naming temperature before any upstream call', async () => {
    const err = await ask({ temperature: 2.5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as APIError).param).toBe('temperature');
    expect(received).toHaveLength(0);
  });

  it('seed, presence/frequency penalties, logit_bias, logprobs, top_logprobs, metadata, store, service_tier are not sent; answer still served', async () => {
    const r = await ask({
      seed: 42,
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      logit_bias: { '50256': -100 },
      logprobs: true,
      top_logprobs: 3,
      metadata: { team: 'a' },
      store: true,
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    // Logprobs cannot be produced by Claude: the choice says none, rather than a fabricated list.
    expect(r.choices[0]!.logprobs).toBeNull();
    const body = sent();
    for (const k of [
      'seed',
      'presence_penalty',
      'frequency_penalty',
      'logit_bias',
      'logprobs',
      'top_logprobs',
      'store',
      'n',
    ])
      expect(body, k).not.toHaveProperty(k);
    // OpenAI's metadata is not Anthropic's (which takes only user_id).
    expect(body.metadata).toBeUndefined();
  });

  it('user is sent as metadata.user_id; past 256 characters as a stable 64-hex hash', async () => {
    await ask({ user: 'user-123' });
    expect(sent().metadata).toEqual({ user_id: 'user-123' });
    const long = 'u'.repeat(300);
    await ask({ user: long });
    const a = (sent().metadata as Json).user_id as string;
    await ask({ user: long });
    const b = (sent().metadata as Json).user_id as string;
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(a).toBe(b);
  });

  it('n: 2 is refused with a 400 naming n, before any upstream call (Anthropic answers one choice)', async () => {
    const err = await ask({ n: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as APIError).param).toBe('n');
    expect((err as APIError).message).toMatch(/n/);
    expect(received).toHaveLength(0);
    // n: 1 is fine and not sent.
    await ask({ n: 1 });
    expect(sent()).not.toHaveProperty('n');
  });
});

describe('stop', () => {
  it('a string stop is sent as stop_sequences [s]; an array as the array', async () => {
    await ask({ stop: 'END' });
    expect(sent().stop_sequences).toEqual(['END']);
    await ask({ stop: ['A1', 'B2', 'C3', 'D4'] });
    expect(sent().stop_sequences).toEqual(['A1', 'B2', 'C3', 'D4']);
  });

  it('stop_sequence stop reason maps to finish_reason stop, the stop text not in the answer', async () => {
    respond = blocksAnswer([{ type: 'text', text: 'one two' }], 'stop_sequence', USAGE, 'END');
    const r = await ask({ stop: ['END'] });
    expect(r.choices[0]!.finish_reason).toBe('stop');
    expect(r.choices[0]!.message.content).toBe('one two');
    const chunks = await askStream({ stop: ['END'] });
    expect(finishOf(chunks)).toEqual(['stop']);
    expect(contentOf(chunks)).toBe('one two');
  });

  it('a whitespace stop beside a normal one: only the normal one goes; the answer is cut at the newline, JSON and stream', async () => {
    respond = textAnswer('first line\nsecond line');
    const r = await ask({ stop: ['\n', 'END'] });
    expect(sent().stop_sequences).toEqual(['END']);
    expect(r.choices[0]!.message.content).toBe('first line');
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const chunks = await askStream({ stop: ['\n', 'END'] });
    expect(contentOf(chunks)).toBe('first line');
    expect(finishOf(chunks)).toEqual(['stop']);
  });

  it('five stop strings (OpenAI allows four): README silent; the gateway either refuses with a 400 naming stop or sends all', async () => {
    const five = ['s1', 's2', 's3', 's4', 's5'];
    const out = await ask({ stop: five }).then(
      () => 'sent' as const,
      (e: unknown) => e,
    );
    if (out === 'sent') expect(sent().stop_sequences).toEqual(five);
    else expect((out as APIError).param).toBe('stop');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('tools', () => {
  it('tools become Anthropic definitions (no strict, no type wrapper); tool_choice auto/none/required/named map', async () => {
    const cases: [unknown, Json | undefined][] = [
      [undefined, undefined],
      ['auto', { type: 'auto' }],
      ['none', { type: 'none' }],
      ['required', { type: 'any' }],
      [
        { type: 'function', function: { name: 'get_weather' } },
        { type: 'tool', name: 'get_weather' },
      ],
    ];
    for (const [choice, want] of cases) {
      await ask({ tools: [weatherTool, timeTool], ...(choice === undefined ? {} : { tool_choice: choice }) });
      const body = sent();
      expect(body.tools).toEqual([
        {
          name: 'get_weather',
          description: 'Weather for a city',
          input_schema: weatherTool.function.parameters,
        },
        { name: 'get_time', input_schema: { type: 'object', properties: {} } },
      ]);
      expect(body.tool_choice, JSON.stringify(choice)).toEqual(want);
    }
  });

  it('parallel_tool_calls false is disable_parallel_tool_use: with no choice (auto), with required, with a named tool', async () => {
    await ask({ tools: [weatherTool], parallel_tool_calls: false });
    expect(sent().tool_choice).toEqual({ type: 'auto', disable_parallel_tool_use: true });
    await ask({ tools: [weatherTool], parallel_tool_calls: false, tool_choice: 'required' });
    expect(sent().tool_choice).toEqual({ type: 'any', disable_parallel_tool_use: true });
    await ask({
      tools: [weatherTool],
      parallel_tool_calls: false,
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
    });
    expect(sent().tool_choice).toEqual({
      type: 'tool',
      name: 'get_weather',
      disable_parallel_tool_use: true,
    });
    // parallel_tool_calls true is Anthropic's default: nothing to send.
    await ask({ tools: [weatherTool], parallel_tool_calls: true });
    expect(sent()).not.toHaveProperty('tool_choice');
  });

  it('a tool loop: assistant tool_calls with null content and role tool results become tool_use / tool_result, paired', async () => {
    const messages: ChatCompletionMessageParam[] = [
      { role: 'user', content: 'weather in Paris and Rome, and the time?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          {
            id: 'call_a',
            type: 'function',
            function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
          },
          { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
          { id: 'call_c', type: 'function', function: { name: 'get_time', arguments: '' } },
        ],
      },
      { role: 'tool', tool_call_id: 'call_b', content: '18C' },
      { role: 'tool', tool_call_id: 'call_a', content: [{ type: 'text', text: '21C' }] },
      { role: 'tool', tool_call_id: 'call_c', content: '12:00' },
    ];
    const r = await ask({ tools: [weatherTool, timeTool] }, messages);
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = sent();
    expect(body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'weather in Paris and Rome, and the time?' }] },
      {
        role: 'assistant',
        content: [
          { type: 'tool_use', id: 'call_a', name: 'get_weather', input: { city: 'Paris' } },
          { type: 'tool_use', id: 'call_b', name: 'get_weather', input: { city: 'Rome' } },
          { type: 'tool_use', id: 'call_c', name: 'get_time', input: {} },
        ],
      },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 'call_b', content: '18C' },
          { type: 'tool_result', tool_use_id: 'call_a', content: [{ type: 'text', text: '21C' }] },
          { type: 'tool_result', tool_use_id: 'call_c', content: '12:00' },
        ],
      },
    ]);
  });

  it('a tool_use answer: tool_calls with arguments as JSON text, content null, finish tool_calls; streamed the same', async () => {
    respond = blocksAnswer(
      [
        { type: 'text', text: 'Let me check.' },
        { type: 'tool_use', id: 'toolu_01A', name: 'get_weather', input: { city: 'Paris' } },
        { type: 'tool_use', id: 'toolu_01B', name: 'get_time', input: {} },
      ],
      'tool_use',
    );
    const r = await ask({ tools: [weatherTool, timeTool] });
    const m = r.choices[0]!.message;
    expect(r.choices[0]!.finish_reason).toBe('tool_calls');
    expect(m.content).toBe('Let me check.');
    expect(
      m.tool_calls?.map((c) => {
        const fn = (c as OpenAI.ChatCompletionMessageFunctionToolCall).function;
        return [c.id, c.type, fn.name, JSON.parse(fn.arguments)];
      }),
    ).toEqual([
      ['toolu_01A', 'function', 'get_weather', { city: 'Paris' }],
      ['toolu_01B', 'function', 'get_time', {}],
    ]);

    const chunks = await askStream({ tools: [weatherTool, timeTool] });
    expect(finishOf(chunks)).toEqual(['tool_calls']);
    const calls: { id?: string; name?: string; args: string }[] = [];
    for (const c of chunks)
      for (const t of c.choices[0]?.delta.tool_calls ?? []) {
        calls[t.index] ??= { args: '' };
        if (t.id) calls[t.index]!.id = t.id;
        if (t.function?.name) calls[t.index]!.name = t.function.name;
        calls[t.index]!.args += t.function?.arguments ?? '';
      }
    expect(calls.map((c) => [c.id, c.name, JSON.parse(c.args)])).toEqual([
      ['toolu_01A', 'get_weather', { city: 'Paris' }],
      ['toolu_01B', 'get_time', {}],
    ]);
    expect(contentOf(chunks)).toBe('Let me check.');
  });

  it('a forced tool (required) with reasoning_effort: no thinking is sent beside it (Anthropic refuses both)', async () => {
    await ask({ tools: [weatherTool], tool_choice: 'required', reasoning_effort: 'high' });
    const body = sent();
    expect(body.tool_choice).toEqual({ type: 'any' });
    expect(body).not.toHaveProperty('thinking');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('response_format', () => {
  it('json_object: a system instruction is sent, no response_format; a fenced answer comes back as the object alone', async () => {
    respond = textAnswer('Here you go:\n```json\n{"a": 1}\n```\nHope that helps.');
    const r = await ask({ response_format: { type: 'json_object' } }, [
      { role: 'system', content: 'Be terse.' },
      { role: 'user', content: 'give json' },
    ]);
    const body = sent();
    expect(body).not.toHaveProperty('response_format');
    expect(typeof body.system).toBe('string');
    expect(body.system as string).toMatch(/^Be terse\./);
    expect(body.system as string).toMatch(/JSON/);
    expect(JSON.parse(r.choices[0]!.message.content!)).toEqual({ a: 1 });
  });

  it('json_schema strict: the schema reaches Claude in system; answer parsed by the SDK, streamed too', async () => {
    const schema = {
      type: 'object',
      properties: { city: { type: 'string' }, temp: { type: 'number' } },
      required: ['city', 'temp'],
      additionalProperties: false,
    };
    respond = textAnswer('```json\n{"city":"Paris","temp":21}\n```');
    const rf = { type: 'json_schema', json_schema: { name: 'weather', strict: true, schema } };
    const r = await client.chat.completions.parse({
      model: 'r',
      messages: USER,
      response_format: rf as OpenAI.ResponseFormatJSONSchema,
    });
    expect(r.choices[0]!.message.parsed).toEqual({ city: 'Paris', temp: 21 });
    const system = sent().system as string;
    expect(system).toContain(JSON.stringify(schema));
    expect(JSON.stringify(sent())).not.toContain('"strict"');

    const chunks = await askStream({ response_format: rf });
    expect(JSON.parse(contentOf(chunks))).toEqual({ city: 'Paris', temp: 21 });
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('reasoning_effort and thinking', () => {
  it('low on Sonnet 4.5: budget 1024, added to the default max_tokens; temperature not sent', async () => {
    await ask({ reasoning_effort: 'low', temperature: 0.7 });
    const body = sent();
    expect(body.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(body.max_tokens).toBe(DEFAULT_MAX + 1024);
    expect(body).not.toHaveProperty('temperature');
    expect(body).not.toHaveProperty('reasoning_effort');
  });

  it('high within a client max_tokens: the budget fits under it (budget_tokens < max_tokens)', async () => {
    await ask({ reasoning_effort: 'high', max_completion_tokens: 3000 });
    const body = sent();
    expect(body.max_tokens).toBe(3000);
    const budget = (body.thinking as Json).budget_tokens as number;
    expect(budget).toBeGreaterThanOrEqual(1024);
    expect(budget).toBeLessThan(3000);
  });

  it('minimal / none ask no thinking on Sonnet 4.5', async () => {
    for (const effort of ['minimal', 'none']) {
      await ask({ reasoning_effort: effort });
      expect(sent(), effort).not.toHaveProperty('thinking');
      expect(sent().max_tokens).toBe(DEFAULT_MAX);
    }
  });

  it('thinking blocks in the answer: reasoning_content beside the content (never in it), JSON and stream', async () => {
    respond = blocksAnswer(
      [
        { type: 'thinking', thinking: 'Let me think about it.', signature: 'sig-abc' },
        { type: 'text', text: 'The answer is 4.' },
      ],
      'end_turn',
    );
    const r = await ask({ reasoning_effort: 'low' });
    const m = r.choices[0]!.message as unknown as Json;
    expect(m.content).toBe('The answer is 4.');
    expect(m.reasoning_content).toBe('Let me think about it.');
    expect(m.thinking_blocks).toEqual([
      { type: 'thinking', thinking: 'Let me think about it.', signature: 'sig-abc' },
    ]);

    const chunks = await askStream({ reasoning_effort: 'low' });
    expect(contentOf(chunks)).toBe('The answer is 4.');
    const reasoning = chunks
      .map((c) => (c.choices[0]?.delta as Json | undefined)?.reasoning_content ?? '')
      .join('');
    expect(reasoning).toBe('Let me think about it.');
    const blocks = chunks.flatMap((c) => {
      const tb = (c.choices[0]?.delta as Json | undefined)?.thinking_blocks;
      return Array.isArray(tb) ? tb : [];
    });
    expect(blocks).toEqual([{ type: 'thinking', thinking: 'Let me think about it.', signature: 'sig-abc' }]);
    expect(finishOf(chunks)).toEqual(['stop']);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('messages: system, developer, parts, names, empties', () => {
  it('several system and developer messages, interleaved, are hoisted into system in order', async () => {
    await ask({}, [
      { role: 'system', content: 'S1' },
      { role: 'user', content: 'u1' },
      { role: 'developer', content: [{ type: 'text', text: 'D1' }] },
      { role: 'assistant', content: 'a1' },
      { role: 'system', content: 'S2' },
      { role: 'user', content: 'u2' },
    ]);
    const body = sent();
    expect(body.system).toBe('S1\n\nD1\n\nS2');
    expect(body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'u1' }] },
      { role: 'assistant', content: [{ type: 'text', text: 'a1' }] },
      { role: 'user', content: [{ type: 'text', text: 'u2' }] },
    ]);
  });

  it('consecutive user messages are merged into one turn, empty ones dropped; a user name is not sent', async () => {
    await ask({}, [
      { role: 'user', content: 'first', name: 'alice' },
      { role: 'user', content: '' },
      { role: 'user', content: 'second', name: 'bob' },
    ]);
    const body = sent();
    expect(body.messages).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'first' },
          { type: 'text', text: 'second' },
        ],
      },
    ]);
  });

  it('content parts: text, a data: image (JPEG bytes labelled PNG is sent as JPEG), an https image, a PDF file with its filename', async () => {
    const pdf = Buffer.from('%PDF-1.4\n%audit\n').toString('base64');
    await ask({}, [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'look' },
          { type: 'image_url', image_url: { url: `data:image/png;base64,${JPEG_1PX}` } },
          { type: 'image_url', image_url: { url: 'https://example.com/cat.png', detail: 'high' } },
          { type: 'file', file: { filename: 'report.pdf', file_data: `data:application/pdf;base64,${pdf}` } },
        ],
      },
    ]);
    const content = (sent().messages as Json[])[0]!.content;
    expect(content).toEqual([
      { type: 'text', text: 'look' },
      { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: JPEG_1PX } },
      { type: 'image', source: { type: 'url', url: 'https://example.com/cat.png' } },
      {
        type: 'document',
        source: { type: 'base64', media_type: 'application/pdf', data: pdf },
        title: 'report.pdf',
      },
    ]);
  });

  it('input_audio is refused with a 400 naming messages, before any upstream call (never sent without the audio)', async () => {
    const err = await ask({}, [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'transcribe' },
          { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
        ],
      },
    ]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as APIError).param).toBe('messages');
    expect((err as APIError).message).toMatch(/input_audio/);
    expect(received).toHaveLength(0);
  });

  it('a file by id is refused with a 400, before any upstream call', async () => {
    const err = await ask({}, [
      { role: 'user', content: [{ type: 'file', file: { file_id: 'file-abc123' } }] },
    ]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(received).toHaveLength(0);
  });

  it('a conversation ending with a system message after the assistant gets a user turn (not a prefill)', async () => {
    await ask({}, [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
      { role: 'system', content: 'reminder' },
    ]);
    const msgs = sent().messages as Json[];
    expect(msgs.at(-1)!.role).toBe('user');
  });

  it('an image as a PNG data URL is sent with base64 source image/png', async () => {
    await ask({}, [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_1PX}` } },
          { type: 'text', text: 'what?' },
        ],
      },
    ]);
    const content = (sent().messages as Json[])[0]!.content as Json[];
    expect(content[0]).toEqual({
      type: 'image',
      source: { type: 'base64', media_type: 'image/png', data: PNG_1PX },
    });
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('answers: stop reasons and usage', () => {
  const MAP: [string, string][] = [
    ['end_turn', 'stop'],
    ['max_tokens', 'length'],
    ['stop_sequence', 'stop'],
    ['refusal', 'content_filter'],
    ['pause_turn', 'stop'],
  ];

  it('each stop_reason maps to the OpenAI finish_reason, JSON and streamed', async () => {
    for (const [stop, want] of MAP) {
      respond = textAnswer('partial', stop);
      const r = await ask({});
      const chunks = await askStream({});
      expect([stop, r.choices[0]!.finish_reason, finishOf(chunks)]).toEqual([stop, want, [want]]);
    }
  });

  it('JSON usage: prompt/completion/total tokens from input/output tokens', async () => {
    respond = textAnswer('ok', 'end_turn', { input_tokens: 21, output_tokens: 7 });
    const r = await ask({});
    expect(r.usage).toMatchObject({ prompt_tokens: 21, completion_tokens: 7, total_tokens: 28 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
  });

  it('stream with include_usage: one final chunk with empty choices and the usage; other chunks carry no usage', async () => {
    respond = textAnswer('hello there', 'end_turn', { input_tokens: 21, output_tokens: 7 });
    const chunks = await askStream({ stream_options: { include_usage: true } });
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: 21, completion_tokens: 7, total_tokens: 28 });
    for (const c of chunks.slice(0, -1)) expect(c.usage ?? null).toBeNull();
    expect(contentOf(chunks)).toBe('hello there');
    expect(finishOf(chunks)).toEqual(['stop']);
    // Every chunk of one stream shares its id.
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  it('stream without include_usage: no usage chunk', async () => {
    const chunks = await askStream({});
    expect(chunks.every((c) => c.choices.length === 1)).toBe(true);
    expect(chunks.some((c) => c.usage != null)).toBe(false);
  });

  it('a refusal streamed after some text: finish content_filter and the text before it kept', async () => {
    respond = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(claudeSse([{ type: 'text', text: 'I can help with' }], 'refusal', USAGE));
    };
    const chunks = await askStream({});
    expect(contentOf(chunks)).toBe('I can help with');
    expect(finishOf(chunks)).toEqual(['content_filter']);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('Anthropic errors as the openai SDK sees them', () => {
  /** A fresh gateway on a mock that answers `status` and `body` (and `headers`), and its SDK client. */
  async function erroring(
    status: number,
    body: Json | string,
    headers: Record<string, string> = {},
  ): Promise<{ client: OpenAI; calls: () => number; url: string }> {
    let calls = 0;
    const mock = track(
      await startMock((_req, res) => {
        calls++;
        if (typeof body === 'string') {
          res.writeHead(status, { 'content-type': 'text/html', ...headers });
          res.end(body);
        } else sendJson(res, status, body, headers);
      }),
    );
    const route = await startAnthropicRoute(track, mock.url, {
      apiKey: KEY,
      model: MODEL,
      timeoutMs: 20_000,
    });
    return { client: route.client, calls: () => calls, url: route.url };
  }

  const anthErr = (type: string, message: string): Json => ({ type: 'error', error: { type, message } });

  async function failure(c: OpenAI, extra: Json = {}): Promise<APIError> {
    const err = await c.chat.completions
      .create({
        model: 'r',
        messages: USER,
        ...extra,
      } as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    return err as APIError;
  }

  it('400 invalid_request_error: status 400, type invalid_request_error, message kept, key scrubbed', async () => {
    const { client: c, calls } = await erroring(
      400,
      anthErr('invalid_request_error', `messages.0.content: bad block (key ${KEY} was used)`),
    );
    const err = await failure(c);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.status).toBe(400);
    expect(err.type).toBe('invalid_request_error');
    expect(err.message).toContain('messages.0.content: bad block');
    expect(JSON.stringify(err.error)).not.toContain(KEY);
    expect(JSON.stringify(err.error)).not.toContain('audit27paramsSECRET');
    expect(calls()).toBe(1);
  });

  it('400 "prompt is too long": code context_length_exceeded', async () => {
    const { client: c } = await erroring(
      400,
      anthErr('invalid_request_error', 'prompt is too long: 208310 tokens > 200000 maximum'),
    );
    const err = await failure(c);
    expect(err.status).toBe(400);
    expect(err.code).toBe('context_length_exceeded');
    expect(err.message).toContain('prompt is too long');
  });

  it('401 authentication_error (our key is wrong): not relayed as the client being unauthenticated; 502 upstream_error, no key', async () => {
    const { client: c } = await erroring(401, anthErr('authentication_error', `invalid x-api-key ${KEY}`));
    const err = await failure(c);
    expect(err.status).toBe(502);
    expect(err.type).toBe('upstream_error');
    expect(JSON.stringify(err.error)).not.toContain(KEY);
    expect(JSON.stringify(err.error)).not.toContain('audit27paramsSECRET');
  });

  it('404 not_found_error (model): 404 model_not_found with the message kept, no failover', async () => {
    const { client: c, calls } = await erroring(404, anthErr('not_found_error', `model: ${MODEL}`));
    const err = await failure(c);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err.code).toBe('model_not_found');
    expect(err.message).toContain(`model: ${MODEL}`);
    expect(calls()).toBe(1);
  });

  it('413 request_too_large: 413 with the message kept', async () => {
    const { client: c } = await erroring(
      413,
      anthErr('request_too_large', 'Request exceeds the maximum allowed number of bytes.'),
    );
    const err = await failure(c);
    expect(err.status).toBe(413);
    expect(err.message).toContain('Request exceeds the maximum allowed number of bytes.');
  });

  it('429 rate_limit_error with retry-after: the client gets 429 rate_limit_error with a Retry-After', async () => {
    const { client: c } = await erroring(
      429,
      anthErr('rate_limit_error', 'Number of request tokens has exceeded your per-minute rate limit'),
      {
        'retry-after': '7',
      },
    );
    const err = await failure(c);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.type).toBe('rate_limit_error');
    const ra = Number(err.headers?.get('retry-after'));
    expect(ra).toBeGreaterThanOrEqual(1);
    expect(ra).toBeLessThanOrEqual(7);
  });

  it('529 overloaded_error: a 5xx failure (502 upstream_error naming the upstream), never a 2xx', async () => {
    const { client: c } = await erroring(529, anthErr('overloaded_error', 'Overloaded'));
    const err = await failure(c);
    expect(err.status).toBe(502);
    expect(err.type).toBe('upstream_error');
    expect(err.message).toContain('anth/');
  });

  it('529 on a stream request: the SDK gets the same 502 before any chunk', async () => {
    const { client: c } = await erroring(529, anthErr('overloaded_error', 'Overloaded'));
    const err = await c.chat.completions
      .create({ model: 'r', messages: USER, stream: true })
      .then((s) => collectChunks(s))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(502);
  });

  it('an overloaded error event after content: the stream ends with an error the SDK throws, not a clean finish', async () => {
    const mock = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          [
            {
              type: 'message_start',
              message: {
                ...anthropicMessage([], '', { input_tokens: 5, output_tokens: 1 }),
                stop_reason: null,
              },
            },
            { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
            { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Half an ans' } },
            { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
          ]
            .map(anthropicSseFrame)
            .join(''),
        );
      }),
    );
    const route = await startAnthropicRoute(track, mock.url, {
      apiKey: KEY,
      model: MODEL,
      timeoutMs: 20_000,
    });
    const seen: ChatCompletionChunk[] = [];
    const err = await (async () => {
      const s = await route.client.chat.completions.create({ model: 'r', messages: USER, stream: true });
      for await (const c of s) seen.push(c);
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(contentOf(seen)).toBe('Half an ans');
    expect(finishOf(seen)).toEqual([]);
    // Raw: an OpenAI-shaped error event and no [DONE].
    const raw = await postChat({ url: route.url }, { model: 'r', messages: USER, stream: true });
    expect(raw.text).toMatch(/data: \{"error":\{/);
    expect(raw.text).not.toContain('[DONE]');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('more edges', () => {
  it('explicit nulls the SDKs and LangChain send (max_tokens, temperature, stop, user, tools, tool_choice, response_format, stream_options) send nothing', async () => {
    const r = await ask({
      max_tokens: null,
      max_completion_tokens: null,
      temperature: null,
      top_p: null,
      stop: null,
      user: null,
      tools: null,
      tool_choice: null,
      parallel_tool_calls: null,
      response_format: null,
      reasoning_effort: null,
      seed: null,
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = sent();
    expect(body.max_tokens).toBe(DEFAULT_MAX);
    for (const k of [
      'temperature',
      'top_p',
      'stop_sequences',
      'metadata',
      'tools',
      'tool_choice',
      'thinking',
      'system',
    ])
      expect(body, k).not.toHaveProperty(k);
  });

  it('stop: [] sends no stop_sequences', async () => {
    await ask({ stop: [] });
    expect(sent()).not.toHaveProperty('stop_sequences');
  });

  it('a max_tokens past the model cap is refused once, re-sent at the cap with thinking under it, and answered', async () => {
    let n = 0;
    respond = (req, res) => {
      n++;
      const max = req.body.max_tokens as number;
      if (max > 8192) {
        sendJson(res, 400, {
          type: 'error',
          error: {
            type: 'invalid_request_error',
            message: `max_tokens: ${max} > 8192, which is the maximum allowed number of output tokens for ${MODEL}`,
          },
        });
        return;
      }
      textAnswer('capped')(req, res);
    };
    const r = await ask({ max_tokens: 20000, reasoning_effort: 'high' });
    expect(r.choices[0]!.message.content).toBe('capped');
    const body = sent();
    expect(body.max_tokens).toBe(8192);
    const budget = (body.thinking as Json | undefined)?.budget_tokens as number | undefined;
    if (budget !== undefined) expect(budget).toBeLessThan(8192);
    expect(n).toBeLessThanOrEqual(2);
  });

  it('a 400 on a stream request reaches the SDK as a 400 before any chunk', async () => {
    respond = (_req, res) =>
      sendJson(res, 400, {
        type: 'error',
        error: { type: 'invalid_request_error', message: 'stream refused here' },
      });
    const err = await askStream({}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as APIError).message).toContain('stream refused here');
  });

  it('an error event before any content (200 then error): failed over like a 5xx (SPEC §2), so a 502 naming the upstream, not a 200 stream', async () => {
    respond = errorBeforeContent('invalid_request_error', 'in-band refusal words');
    const err = await askStream({}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(502);
    expect((err as APIError).message).toContain('anth/');
  });

  it('a whitespace stop on a stream with include_usage: content cut, finish stop, and still a final usage chunk', async () => {
    respond = textAnswer('alpha\nbeta', 'end_turn', { input_tokens: 13, output_tokens: 4 });
    const chunks = await askStream({ stop: '\n', stream_options: { include_usage: true } });
    expect(sent()).not.toHaveProperty('stop_sequences');
    expect(contentOf(chunks)).toBe('alpha');
    expect(finishOf(chunks)).toEqual(['stop']);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage?.prompt_tokens).toBe(13);
    expect(last.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it('a stream request answered with a JSON message (a proxy that ignores stream): README silent; the client still gets the text as a stream', async () => {
    respond = (req, res) =>
      blocksAnswer([{ type: 'text', text: 'plain json' }], 'end_turn')({ ...req, body: {} }, res);
    const out = await askStream({}).then(
      (chunks) => ({ text: contentOf(chunks), finish: finishOf(chunks) }),
      (e: unknown) => ({ error: (e as APIError).status }),
    );
    expect(out).toEqual({ text: 'plain json', finish: ['stop'] });
  });

  it('reasoning_effort in a tool loop: without thinking_blocks sent back no thinking; with them, thinking and the blocks first', async () => {
    const loop = (withBlocks: boolean): ChatCompletionMessageParam[] => [
      { role: 'user', content: 'time?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'toolu_x', type: 'function', function: { name: 'get_time', arguments: '{}' } }],
        ...(withBlocks
          ? { thinking_blocks: [{ type: 'thinking', thinking: 'need time', signature: 'sig1' }] }
          : {}),
      } as ChatCompletionMessageParam,
      { role: 'tool', tool_call_id: 'toolu_x', content: '12:00' },
    ];
    await ask({ tools: [timeTool], reasoning_effort: 'low' }, loop(false));
    expect(sent()).not.toHaveProperty('thinking');
    await ask({ tools: [timeTool], reasoning_effort: 'low' }, loop(true));
    const body = sent();
    expect(body.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect((body.messages as Json[])[1]).toEqual({
      role: 'assistant',
      content: [
        { type: 'thinking', thinking: 'need time', signature: 'sig1' },
        { type: 'tool_use', id: 'toolu_x', name: 'get_time', input: {} },
      ],
    });
  });

  it('a prefill (last message the assistant) on Sonnet 4.5: sent as the final assistant turn, trailing space trimmed, no thinking', async () => {
    await ask({ reasoning_effort: 'low' }, [
      { role: 'user', content: 'count to 3' },
      { role: 'assistant', content: 'One, two, ' },
    ]);
    const body = sent();
    expect((body.messages as Json[]).at(-1)).toEqual({
      role: 'assistant',
      content: [{ type: 'text', text: 'One, two,' }],
    });
    expect(body).not.toHaveProperty('thinking');
  });

  it('a refusal with no content at all (JSON and stream): finish content_filter, not a failover or an error', async () => {
    respond = blocksAnswer([], 'refusal', { input_tokens: 9, output_tokens: 0 });
    const r = await ask({});
    expect(r.choices[0]!.finish_reason).toBe('content_filter');
    const chunks = await askStream({});
    expect(finishOf(chunks)).toEqual(['content_filter']);
    expect(contentOf(chunks)).toBe('');
  });

  it('streamed thinking then a tool call: reasoning, the call, thinking_blocks before the finish tool_calls', async () => {
    respond = blocksAnswer(
      [
        { type: 'thinking', thinking: 'I should call it', signature: 'sigT' },
        { type: 'tool_use', id: 'toolu_t', name: 'get_time', input: {} },
      ],
      'tool_use',
    );
    const chunks = await askStream({ tools: [timeTool], reasoning_effort: 'low' });
    const kinds = chunks.map((c) => {
      const d = (c.choices[0]?.delta ?? {}) as Json;
      if (c.choices[0]?.finish_reason) return 'finish';
      if (d.thinking_blocks) return 'blocks';
      if (d.tool_calls) return 'call';
      if (d.reasoning_content) return 'reasoning';
      return 'other';
    });
    const runs = kinds.filter((k, n) => k !== 'other' && k !== kinds[n - 1]);
    expect(runs).toEqual(['reasoning', 'call', 'blocks', 'finish']);
    expect(kinds.indexOf('blocks')).toBeLessThan(kinds.indexOf('finish'));
    expect(finishOf(chunks)).toEqual(['tool_calls']);
  });

  it('top_k, which Anthropic takes under that name, reaches Claude, but not while it thinks', async () => {
    await ask({ top_k: 40 });
    expect(sent().top_k).toBe(40);
    await ask({ top_k: 40, reasoning_effort: 'low' });
    expect(sent()).toHaveProperty('thinking');
    expect(sent()).not.toHaveProperty('top_k');
  });

  it('Claude 4.7: temperature, top_p and top_k are never sent', async () => {
    const mock = track(await startMock((req, res) => textAnswer('ok')(req, res)));
    const route = await startAnthropicRoute(track, mock.url, {
      apiKey: KEY,
      model: 'claude-opus-4-7',
      timeoutMs: 20_000,
    });
    await route.client.chat.completions.create({ model: 'r', messages: USER, temperature: 0.2 });
    await route.client.chat.completions.create({ model: 'r', messages: USER, top_p: 0.5 });
    await route.client.chat.completions.create({ model: 'r', messages: USER, top_k: 5 } as Json as never);
    for (const r of mock.received) {
      expect(r.body).not.toHaveProperty('temperature');
      expect(r.body).not.toHaveProperty('top_p');
      expect(r.body).not.toHaveProperty('top_k');
    }
  });

  it('a tool message whose content is an image part goes as a tool_result holding the image', async () => {
    await ask({ tools: [timeTool] }, [
      { role: 'user', content: 'screenshot' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_s', type: 'function', function: { name: 'get_time', arguments: '{}' } }],
      },
      {
        role: 'tool',
        tool_call_id: 'call_s',
        content: [
          { type: 'text', text: 'here' },
          { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_1PX}` } },
        ] as unknown as string,
      },
    ]);
    const msgs = sent().messages as Json[];
    expect(msgs.at(-1)).toEqual({
      role: 'user',
      content: [
        {
          type: 'tool_result',
          tool_use_id: 'call_s',
          content: [
            { type: 'text', text: 'here' },
            { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_1PX } },
          ],
        },
      ],
    });
  });
});

describe('more Anthropic errors', () => {
  async function erroring(
    status: number,
    body: Json | string,
    headers: Record<string, string> = {},
  ): Promise<OpenAI> {
    const mock = track(
      await startMock((_req, res) => {
        if (typeof body === 'string') {
          res.writeHead(status, { 'content-type': 'text/html', ...headers });
          res.end(body);
        } else sendJson(res, status, body, headers);
      }),
    );
    return (await startAnthropicRoute(track, mock.url, { apiKey: KEY, model: MODEL, timeoutMs: 20_000 }))
      .client;
  }
  const fail = (c: OpenAI) =>
    c.chat.completions.create({ model: 'r', messages: USER }).then(
      () => undefined,
      (e: unknown) => e as APIError,
    );

  it('429 without retry-after: still 429 rate_limit_error with a Retry-After (every candidate rate limited)', async () => {
    const c = await erroring(429, {
      type: 'error',
      error: { type: 'rate_limit_error', message: 'slow down' },
    });
    const err = await fail(c);
    expect(err?.status).toBe(429);
    expect(err?.headers?.get('retry-after')).toMatch(/^\d+$/);
  });

  it('500 api_error and 403 permission_error: 502 upstream_error', async () => {
    for (const [status, type] of [
      [500, 'api_error'],
      [403, 'permission_error'],
    ] as const) {
      const c = await erroring(status, { type: 'error', error: { type, message: 'nope' } });
      const err = await fail(c);
      expect([status, err?.status, err?.type]).toEqual([status, 502, 'upstream_error']);
    }
  });

  it('a 413 answered as an HTML page (an edge proxy in front of the API): 413 whose message is readable text, not markup', async () => {
    const c = await erroring(
      413,
      '<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n',
    );
    const err = await fail(c);
    expect(err?.status).toBe(413);
    expect(err?.message).toBe('413 413 Request Entity Too Large'); // the SDK puts the status first
    expect(err?.message).not.toMatch(/<html|<head|<center/i);
  });

  it('a rate_limit_error event before any content (200 then error): the client gets 429 with a Retry-After, as for an HTTP 429', async () => {
    const mock = track(await startMock(errorBeforeContent('rate_limit_error', 'Rate limited')));
    const route = await startAnthropicRoute(track, mock.url, {
      apiKey: KEY,
      model: MODEL,
      timeoutMs: 20_000,
    });
    const err = await route.client.chat.completions
      .create({ model: 'r', messages: USER, stream: true })
      .then((st) => collectChunks(st))
      .then(
        () => undefined,
        (e: unknown) => e as APIError,
      );
    expect(err?.status).toBe(429);
    expect(err?.headers?.get('retry-after')).toMatch(/^\d+$/);
  });

  it('a 404 HTML page (a wrong base_url, no API behind it): failed over as ours, 502, not model_not_found', async () => {
    const c = await erroring(404, '<html><body><h1>404 Not Found</h1></body></html>');
    const err = await fail(c);
    expect(err?.status).toBe(502);
  });
});

describe('gateway-level shape (README silent items)', () => {
  it('the answer names the route the client asked for or the model, and its headers name the Anthropic upstream', async () => {
    const r = await client.chat.completions.create({ model: 'r', messages: USER }).withResponse();
    expect(r.response.headers.get('x-router-provider')).toBe('anth');
    expect(r.response.headers.get('x-router-model')).toBe(MODEL);
    expect(typeof r.data.model).toBe('string');
  });

  it('Anthropic is sent x-api-key and anthropic-version on POST /v1/messages, never the client key', async () => {
    await ask({});
    const r = received.at(-1)!;
    expect(r.path).toBe('/v1/messages');
    expect(r.headers['x-api-key']).toBe(KEY);
    expect(r.headers['anthropic-version']).toBe('2023-06-01');
    expect(JSON.stringify(r.headers)).not.toContain('Bearer k');
  });

  it('an unknown body field is not sent to Anthropic (which rejects unknown fields)', async () => {
    await ask({ my_custom_flag: true, prediction: { type: 'content', content: 'x' }, verbosity: 'low' });
    const body = sent();
    expect(body).not.toHaveProperty('my_custom_flag');
    expect(body).not.toHaveProperty('prediction');
    expect(body).not.toHaveProperty('verbosity');
  });
});
