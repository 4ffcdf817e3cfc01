/**
 * Answers of `anthropic`-kind upstreams, translated to OpenAI's shape (SPEC §4), as the SDKs users run parse
 * them: the openai SDK (create, parse() with zodResponseFormat, the stream helper), the Vercel AI SDK
 * (streamText, generateObject, streamObject) and LangChain's ChatOpenAI (stream, bindTools,
 * withStructuredOutput). The mock answers as Claude does: JSON or SSE by the request's `stream`, its streams
 * with a ping, empty text block starts, and deltas split where the model's tokens fall (mid-word, mid-key).
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import type { AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject, jsonSchema, streamObject, streamText } from 'ai';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { anthropicMessage, claudeSse } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

const USAGE: Json = { input_tokens: 21, output_tokens: 17 };

/**
 * Answers `q` with `blocks` in the form it asked for. In the JSON form a tool's `rawInput` is put in the body
 * as text, as Anthropic serialises the input the model wrote.
 */
function answerClaude(
  q: Received,
  res: ServerResponse,
  blocks: Json[],
  stopReason: string,
  usage: Json = USAGE,
): void {
  if (q.body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(claudeSse(blocks, stopReason, usage));
    return;
  }
  const raws: string[] = [];
  const content = blocks.map((b) => {
    const { rawInput, ...block } = b;
    if (typeof rawInput !== 'string') return block;
    raws.push(rawInput);
    return { ...block, input: { RAW_INPUT: raws.length - 1 } };
  });
  let text = JSON.stringify(anthropicMessage(content, stopReason, usage));
  raws.forEach((raw, k) => (text = text.replace(`{"RAW_INPUT":${k}}`, raw)));
  if (raws.length === 0) return sendJson(res, 200, JSON.parse(text));
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(text);
}

/** A gateway whose route `r` is one Claude upstream answering with `handler`, and the three SDKs on it. */
async function claudeRoute(handler: (q: Received, res: ServerResponse) => void) {
  const mock = track(await startMock(handler));
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant-test-0001',
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
  const baseURL = `${gw.url}/v1`;
  return {
    mock,
    openai: new OpenAI({ baseURL, apiKey: 'k', maxRetries: 0 }),
    vercel: createOpenAI({ baseURL, apiKey: 'k' }).chat('r'),
    langchain: new ChatOpenAI({ model: 'r', apiKey: 'k', configuration: { baseURL }, maxRetries: 0 }),
  };
}

/** The system text the gateway sent Claude. */
function systemOf(q: Received | undefined): string {
  const s = q?.body.system;
  return typeof s === 'string' ? s : JSON.stringify(s ?? '');
}

const Weather = z.object({ city: z.string(), celsius: z.number() });
const WEATHER = { city: 'Bern', celsius: 12 };
const ask = [{ role: 'user' as const, content: 'Weather in Bern, as JSON.' }];

/** Claude's ways of answering "respond with JSON": in a Markdown fence, or after a sentence of its own. */
const FENCED = '```json\n' + JSON.stringify(WEATHER, null, 2) + '\n```';
const PREFACED = 'Here is the weather as JSON:\n\n' + JSON.stringify(WEATHER);

describe('JSON that Claude fences or prefaces, answering a request with response_format', () => {
  // OpenAI's json_schema / json_object answers are the JSON text alone, and the SDKs JSON.parse the content;
  // the gateway translates response_format for Claude (README "Anthropic upstreams"), so its content must
  // parse the same way.
  it('openai SDK parse() and the stream helper: a ```json fenced object is parsed as the object', async () => {
    const { openai, mock } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: FENCED }], 'end_turn'),
    );
    const params = { model: 'r', messages: ask, response_format: zodResponseFormat(Weather, 'weather') };

    const parsed = await openai.chat.completions
      .parse(params)
      .then((r) => r.choices[0]?.message.parsed)
      .catch((e: unknown) => String(e));
    expect(systemOf(mock.received[0])).toContain('"celsius"');
    expect(parsed).toEqual(WEATHER);

    const streamed = await openai.chat.completions
      .stream(params)
      .finalChatCompletion()
      .then((r) => r.choices[0]?.message.parsed)
      .catch((e: unknown) => String(e));
    expect(streamed).toEqual(WEATHER);
  });

  it('Vercel AI SDK generateObject and streamObject: an object after a sentence of preface is the object', async () => {
    const { vercel } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: PREFACED }], 'end_turn'),
    );

    const generated = await generateObject({
      model: vercel,
      schema: Weather,
      prompt: 'Weather in Bern?',
      maxRetries: 0,
    })
      .then((r) => r.object)
      .catch((e: unknown) => String(e));
    expect(generated).toEqual(WEATHER);

    const result = streamObject({
      model: vercel,
      schema: Weather,
      prompt: 'Weather in Bern?',
      maxRetries: 0,
    });
    // The object settles once the stream has been read.
    for await (const _partial of result.partialObjectStream);
    const streamed = await result.object.catch((e: unknown) => String(e));
    expect(streamed).toEqual(WEATHER);
  });

  it('LangChain withStructuredOutput (its default, response_format json_schema): a fenced object is the object', async () => {
    const { langchain, mock } = await claudeRoute((q, res) =>
      answerClaude(q, res, [{ type: 'text', text: FENCED }], 'end_turn'),
    );
    const got = await langchain
      .withStructuredOutput(Weather, { name: 'weather' })
      .invoke('Weather in Bern?')
      .catch((e: unknown) => String(e));
    expect(mock.received[0]?.body.tools).toBeUndefined();
    expect(got).toEqual(WEATHER);
  });
});

describe('tool calls Claude streams, as each SDK assembles them', () => {
  const PARAMS = {
    type: 'object' as const,
    properties: { city: { type: 'string' as const }, units: { type: 'string' as const } },
  };
  const TOOLS = [{ type: 'function' as const, function: { name: 'weather', parameters: PARAMS } }];
  const CACHED: Json = {
    input_tokens: 5,
    cache_creation_input_tokens: 100,
    cache_read_input_tokens: 900,
    output_tokens: 40,
  };
  const ROUND: Json[] = [
    { type: 'thinking', thinking: 'Two cities: call the tool for both.', signature: 'sig-ErUBCkYI' },
    { type: 'text', text: 'Checking both cities.' },
    { type: 'tool_use', id: 'toolu_01A', name: 'weather', input: { city: 'Zürich', units: 'c' } },
    { type: 'tool_use', id: 'toolu_01B', name: 'weather', input: { city: 'Genève', units: 'c' } },
  ];
  const CALLS = [
    { id: 'toolu_01A', name: 'weather', args: { city: 'Zürich', units: 'c' } },
    { id: 'toolu_01B', name: 'weather', args: { city: 'Genève', units: 'c' } },
  ];

  // Thinking first, a text preface, two parallel calls whose input arrives in fragments cut mid-key and
  // mid-character, a prompt mostly read from cache: prompt_tokens counts every input token, cached_tokens the
  // cache reads, and each SDK gets both calls whole, in order, with the text.
  it('thinking, a preface and two parallel calls in fragments, with cache reads: each SDK gets both calls, the text and the usage', async () => {
    const { openai, vercel, langchain } = await claudeRoute((q, res) =>
      answerClaude(q, res, ROUND, 'tool_use', CACHED),
    );

    const final = await openai.chat.completions
      .stream({ model: 'r', messages: ask, tools: TOOLS, stream_options: { include_usage: true } })
      .finalChatCompletion();
    const m = final.choices[0]!.message;
    expect(m.content).toBe('Checking both cities.');
    expect(final.choices[0]?.finish_reason).toBe('tool_calls');
    expect(
      m.tool_calls?.map((c) =>
        c.type === 'function'
          ? { id: c.id, name: c.function.name, args: JSON.parse(c.function.arguments) as unknown }
          : c,
      ),
    ).toEqual(CALLS);
    expect(final.usage).toMatchObject({
      prompt_tokens: 1005,
      completion_tokens: 40,
      total_tokens: 1045,
      prompt_tokens_details: { cached_tokens: 900 },
    });

    const v = streamText({
      model: vercel,
      prompt: 'Weather in Zürich and Genève?',
      maxRetries: 0,
      tools: { weather: { inputSchema: jsonSchema(PARAMS) } },
    });
    expect((await v.toolCalls).map((c) => ({ id: c.toolCallId, name: c.toolName, args: c.input }))).toEqual(
      CALLS,
    );
    expect(await v.text).toBe('Checking both cities.');
    expect(await v.finishReason).toBe('tool-calls');
    expect(await v.usage).toMatchObject({ inputTokens: 1005, outputTokens: 40, cachedInputTokens: 900 });

    let agg: AIMessageChunk | undefined;
    for await (const c of await langchain.bindTools(TOOLS).stream('Weather in Zürich and Genève?'))
      agg = agg ? agg.concat(c) : c;
    expect(agg?.content).toBe('Checking both cities.');
    expect(agg?.tool_calls?.map((c) => ({ id: c.id, name: c.name, args: c.args }))).toEqual(CALLS);
    expect(agg?.usage_metadata).toMatchObject({
      input_tokens: 1005,
      output_tokens: 40,
      input_token_details: { cache_read: 900 },
    });
  });

  // OpenAI's `arguments` is the text the model wrote, and the gateway's stream relays Claude's input_json_delta
  // text as it came: a JSON answer's arguments must carry the same digits (an order id past 2^53, a price
  // written to 17 places), not a re-serialisation through a double.
  it('a tool input with a 20-digit id: arguments carry the digits Claude wrote, in the JSON answer as in the stream', async () => {
    const raw = '{"order_id":12345678901234567890,"amount":19.990000000000001}';
    const block = { type: 'tool_use', id: 'toolu_01R', name: 'refund', rawInput: raw };
    const { openai } = await claudeRoute((q, res) => answerClaude(q, res, [block], 'tool_use'));
    const tools = [
      { type: 'function' as const, function: { name: 'refund', parameters: { type: 'object' } } },
    ];

    const streamed = await openai.chat.completions
      .stream({ model: 'r', messages: ask, tools })
      .finalChatCompletion();
    const sCall = streamed.choices[0]?.message.tool_calls?.[0];
    expect(sCall?.type === 'function' ? sCall.function.arguments : undefined).toBe(raw);

    const json = await openai.chat.completions.create({ model: 'r', messages: ask, tools });
    const jCall = json.choices[0]?.message.tool_calls?.[0];
    expect(jCall?.type === 'function' ? jCall.function.arguments : undefined).toBe(raw);
  });
});
