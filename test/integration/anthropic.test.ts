import OpenAI from 'openai';
import type {
  ChatCompletionMessageParam,
  ChatCompletionChunk,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageFunctionToolCall,
  ChatCompletionTool,
} from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { THINKING } from '../../src/sim/anthropic.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { JPEG_1PX } from '../helpers/images.js';
import { scrape, value } from '../helpers/prom-text.js';
import { breakerAt } from '../helpers/resilience-harness.js';

/**
 * Issue #5 end to end: the official OpenAI SDK talks to the gateway, the gateway talks Anthropic Messages to
 * the Anthropic-dialect simulator (which checks x-api-key and anthropic-version), and the answers come back
 * in OpenAI shape — JSON and SSE, tools, images, errors and failover across dialects.
 */

const track = closeAfterEach();
let gw: TestGateway | undefined;

type Json = Record<string, unknown>;
type Kind = 'openai' | 'anthropic';

interface UpstreamSpec {
  name: string;
  kind: Kind;
  sim?: Partial<SimOptions>;
  /** The key the gateway sends, when it differs from the one the simulator expects. */
  gatewayKey?: string;
}

const MODEL: Record<Kind, string> = { openai: 'gpt-4o-mini', anthropic: 'claude-haiku-4-5' };
const keyOf = (name: string): string => `sk-${name}-secret`;
/** The simulator's default 8-chunk reply; its third word is the simulator's name. */
const reply = (name: string): string => `Hello from ${name} here: this is a simulated`;

/** Starts one simulator per spec and a gateway whose route `r` tries them in the given order. */
async function setup<T extends UpstreamSpec[]>(
  specs: [...T],
): Promise<{ client: OpenAI; sims: { [K in keyof T]: Simulator } }> {
  const started: Simulator[] = [];
  for (const s of specs) {
    started.push(
      track(await startSimulator({ name: s.name, kind: s.kind, apiKey: keyOf(s.name), ...s.sim })),
    );
  }
  gw = track(
    await startGateway({
      providers: specs.map((s, i) =>
        simProvider(
          s.name,
          started[i]!.url,
          [MODEL[s.kind]],
          s.kind === 'anthropic'
            ? { kind: 'anthropic', base_url: started[i]!.url, api_key: s.gatewayKey ?? keyOf(s.name) }
            : { api_key: s.gatewayKey ?? keyOf(s.name) },
        ),
      ),
      routes: { r: { strategy: 'priority', targets: specs.map((s) => `${s.name}/${MODEL[s.kind]}`) } },
    }),
  );
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  return { client, sims: started as { [K in keyof T]: Simulator } };
}

const claude = (sim: Partial<SimOptions> = {}): UpstreamSpec => ({ name: 'claude', kind: 'anthropic', sim });
const gpt = (sim: Partial<SimOptions> = {}): UpstreamSpec => ({ name: 'gpt', kind: 'openai', sim });

const WEATHER_TOOL: ChatCompletionTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

const PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';

const body = (sim: Simulator, i = 0): Json => sim.requests[i]!.body as Json;
const messagesOf = (sim: Simulator, i = 0): Json[] => body(sim, i).messages as Json[];

/** What the SDK's streamed deltas add up to. */
interface Assembled {
  text: string;
  role: string | undefined;
  finish: string | null;
  tools: Array<{ id: string; name: string; arguments: string }>;
  usage: ChatCompletionChunk['usage'] | undefined;
  chunks: ChatCompletionChunk[];
  error: unknown;
}

async function assemble(stream: AsyncIterable<ChatCompletionChunk>): Promise<Assembled> {
  const out: Assembled = {
    text: '',
    role: undefined,
    finish: null,
    tools: [],
    usage: undefined,
    chunks: [],
    error: undefined,
  };
  try {
    for await (const chunk of stream) {
      out.chunks.push(chunk);
      if (chunk.usage) out.usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      out.role ??= choice.delta.role;
      if (choice.delta.content) out.text += choice.delta.content;
      for (const tc of choice.delta.tool_calls ?? []) {
        const slot = (out.tools[tc.index] ??= { id: '', name: '', arguments: '' });
        if (tc.id) slot.id += tc.id;
        if (tc.function?.name) slot.name += tc.function.name;
        if (tc.function?.arguments) slot.arguments += tc.function.arguments;
      }
      if (choice.finish_reason) out.finish = choice.finish_reason;
    }
  } catch (err) {
    out.error = err;
  }
  return out;
}

function functionCalls(calls: unknown): ChatCompletionMessageFunctionToolCall[] {
  return (calls ?? []) as ChatCompletionMessageFunctionToolCall[];
}

/** A Claude simulator that calls tools, and the answer to a first question offering WEATHER_TOOL. */
async function weatherAsked(extra: Partial<ChatCompletionCreateParamsNonStreaming> = {}) {
  const { client, sims } = await setup([claude({ toolCall: true })]);
  const ask: ChatCompletionCreateParamsNonStreaming = {
    model: 'r',
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [WEATHER_TOOL],
    ...extra,
  };
  return { client, sim: sims[0], ask, first: await client.chat.completions.create(ask) };
}

describe('Anthropic upstream through the OpenAI SDK (non-streaming)', () => {
  it('answers a plain chat in chat.completion shape, with usage and routing headers', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(data.object).toBe('chat.completion');
    expect(data.id).toMatch(/^chatcmpl-/);
    const choice = data.choices[0]!;
    expect(choice.message.role).toBe('assistant');
    expect(choice.message.content).toBe(reply('claude'));
    expect(choice.finish_reason).toBe('stop');
    expect(data.usage?.completion_tokens).toBe(8);
    expect(data.usage?.total_tokens).toBe(data.usage!.prompt_tokens + 8);
    expect(response.headers.get('x-router-provider')).toBe('claude');
    expect(response.headers.get('x-router-model')).toBe('claude-haiku-4-5');
    expect(response.headers.get('x-router-attempts')).toBe('1');
    expect(sim.requests).toHaveLength(1);
    expect(sim.requests[0]!.path).toBe('/v1/messages');
    expect(body(sim).model).toBe('claude-haiku-4-5');
  });

  it('hoists the system prompt to top-level `system`, sends the Anthropic headers and a max_tokens', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'system', content: 'Be terse.' },
        { role: 'user', content: 'hi' },
      ],
    });
    await client.chat.completions.create({
      model: 'r',
      max_completion_tokens: 3,
      messages: [
        { role: 'developer', content: 'Answer in French.' },
        { role: 'user', content: 'hi' },
      ],
    });
    const first = sim.requests[0]!;
    expect(first.headers['x-api-key']).toBe('sk-claude-secret');
    expect(first.headers['anthropic-version']).toBe('2023-06-01');
    expect(first.headers.authorization).toBeUndefined();
    expect(body(sim).system).toBe('Be terse.');
    expect(messagesOf(sim)).toEqual([{ role: 'user', content: [{ type: 'text', text: 'hi' }] }]);
    expect(body(sim).max_tokens).toBe(4096); // default_max_tokens: the client sent none
    expect(body(sim, 1).system).toBe('Answer in French.');
    expect(messagesOf(sim, 1).some((m) => m.role !== 'user' && m.role !== 'assistant')).toBe(false);
    expect(body(sim, 1).max_tokens).toBe(3);
  });

  it('max_tokens cut short: finish_reason length', async () => {
    const { client } = await setup([claude()]);
    const data = await client.chat.completions.create({
      model: 'r',
      max_tokens: 3,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(data.choices[0]!.message.content).toBe('Hello from claude ');
    expect(data.choices[0]!.finish_reason).toBe('length');
  });

  it('round-trips a tool call: tool_calls with JSON-string arguments, then tool_use + tool_result upstream', async () => {
    const { client, sim, ask, first } = await weatherAsked();
    const choice = first.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBeNull();
    const calls = functionCalls(choice.message.tool_calls);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.type).toBe('function');
    expect(calls[0]!.id).toMatch(/^toolu_/);
    expect(calls[0]!.function.name).toBe('get_weather');
    expect(typeof calls[0]!.function.arguments).toBe('string');
    expect(JSON.parse(calls[0]!.function.arguments)).toEqual({ city: 'Paris' });
    expect(body(sim).tools).toEqual([
      {
        name: 'get_weather',
        description: 'Current weather in a city',
        input_schema: WEATHER_TOOL.function.parameters,
      },
    ]);

    const second = await client.chat.completions.create({
      ...ask,
      messages: [
        ...ask.messages,
        choice.message,
        { role: 'tool', tool_call_id: calls[0]!.id, content: '18°C and sunny' },
      ],
    });
    expect(second.choices[0]!.finish_reason).toBe('stop');
    expect(second.choices[0]!.message.content).toContain('from claude here');
    expect(second.choices[0]!.message.tool_calls).toBeUndefined();

    const sent = messagesOf(sim, 1);
    expect(sent.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect(sent[1]!.content).toEqual([
      { type: 'tool_use', id: calls[0]!.id, name: 'get_weather', input: { city: 'Paris' } },
    ]);
    expect(sent[2]!.content).toEqual([
      { type: 'tool_result', tool_use_id: calls[0]!.id, content: '18°C and sunny' },
    ]);
  });

  it("a closing turn without tools after tool calls (valid for OpenAI) is answered: the history's tools are stubbed, tool_choice none", async () => {
    // The Messages API rejects tool_use/tool_result blocks when no tools are defined; the simulator does too.
    const { client, sim, ask, first } = await weatherAsked();
    const call = functionCalls(first.choices[0]!.message.tool_calls)[0]!;
    const history = [
      ...ask.messages,
      first.choices[0]!.message,
      { role: 'tool' as const, tool_call_id: call.id, content: '18°C and sunny' },
      { role: 'user' as const, content: 'Now sum that up in one line.' },
    ];
    const second = await client.chat.completions.create({ model: 'r', messages: history });
    expect(second.choices[0]!.finish_reason).toBe('stop');
    expect(second.choices[0]!.message.content).toContain('from claude here');
    expect(body(sim, 1).tools).toEqual([
      {
        name: 'get_weather',
        description: expect.any(String),
        input_schema: { type: 'object', properties: {} },
      },
    ]);
    expect(body(sim, 1).tool_choice).toEqual({ type: 'none' });

    const streamed = await assemble(
      await client.chat.completions.create({ model: 'r', messages: history, stream: true }),
    );
    expect(streamed.error).toBeUndefined();
    expect(streamed.text).toContain('from claude here');
    expect(streamed.tools).toEqual([]);
  });

  it('reasoning_effort asks Claude to think; the thinking comes back as reasoning_content (JSON and SSE)', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const ask = {
      model: 'r',
      messages: [{ role: 'user' as const, content: 'Think first.' }],
      reasoning_effort: 'medium' as const,
      temperature: 0.3,
    };
    const answer = await client.chat.completions.create(ask);
    const message = answer.choices[0]!.message as unknown as Json;
    expect(message.content).toContain('from claude here');
    expect(message.reasoning_content).toBe(THINKING.thinking);
    expect(message.thinking_blocks).toEqual([{ type: 'thinking', ...THINKING }]);
    expect(body(sim).thinking).toEqual({ type: 'enabled', budget_tokens: 2048 });
    expect(body(sim)).not.toHaveProperty('temperature');

    const streamed = await assemble(await client.chat.completions.create({ ...ask, stream: true }));
    expect(streamed.error).toBeUndefined();
    expect(streamed.text).toBe(message.content);
    const reasoning = streamed.chunks.map(
      (c) => (c.choices[0]?.delta as Json | undefined)?.reasoning_content,
    );
    expect(reasoning.filter((r) => r !== undefined)).toEqual([THINKING.thinking]);
    // The reasoning precedes the text, as Claude sent it.
    expect(reasoning.findIndex((r) => r !== undefined)).toBeLessThan(
      streamed.chunks.findIndex((c) => Boolean(c.choices[0]?.delta.content)),
    );
  });

  it('thinking through a tool loop: the message sent back keeps its thinking; without it, thinking is left off', async () => {
    const { client, sim, ask, first } = await weatherAsked({ reasoning_effort: 'low' });
    const message = first.choices[0]!.message;
    const call = functionCalls(message.tool_calls)[0]!;
    expect((message as unknown as Json).thinking_blocks).toEqual([{ type: 'thinking', ...THINKING }]);
    const result = { role: 'tool' as const, tool_call_id: call.id, content: '18°C and sunny' };
    const next = { ...ask, reasoning_effort: 'low' as const };
    // As the SDK returned it: the simulator, like Anthropic, wants the tool turn to open with its thinking.
    const kept = await client.chat.completions.create({
      ...next,
      messages: [...ask.messages, message, result],
    });
    expect(kept.choices[0]!.finish_reason).toBe('stop');
    expect(body(sim, 1).thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect((messagesOf(sim, 1)[1]!.content as Json[]).map((b) => b.type)).toEqual(['thinking', 'tool_use']);

    // A client that keeps only the standard fields: thinking is off for this turn rather than a 400.
    const { role, content, tool_calls } = message;
    const bare = await client.chat.completions.create({
      ...next,
      messages: [...ask.messages, { role, content, tool_calls }, result],
    });
    expect(bare.choices[0]!.finish_reason).toBe('stop');
    expect(body(sim, 2)).not.toHaveProperty('thinking');
  });

  it('sends image parts as image blocks: data URL -> base64 source, http(s) URL -> url source', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const data = await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is in these?' },
            { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_B64}` } },
            { type: 'image_url', image_url: { url: 'https://example.com/cat.jpg', detail: 'low' } },
            { type: 'image_url', image_url: { url: 'http://example.com/dog.gif' } },
          ],
        },
      ],
    });
    expect(data.choices[0]!.message.content).toContain('claude');
    expect(messagesOf(sim)[0]!.content).toEqual([
      { type: 'text', text: 'What is in these?' },
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_B64 } },
      { type: 'image', source: { type: 'url', url: 'https://example.com/cat.jpg' } },
      { type: 'image', source: { type: 'url', url: 'http://example.com/dog.gif' } },
    ]);
  });

  // The simulator refuses what the real Messages API refuses (unknown fields, temperature > 1, unpaired or
  // badly named tool blocks, other image media types), so each of these would be a 400 if the translation slipped.
  it('drops OpenAI-only fields and clamps temperature: the strict Messages API accepts the request', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const data = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      n: 1,
      seed: 7,
      temperature: 1.6,
      frequency_penalty: 0.2,
      presence_penalty: 0.1,
      logprobs: false,
      logit_bias: { '50256': -100 },
      store: false,
      user: 'user-42',
      stop: ['END', '\n'],
      response_format: { type: 'json_object' },
      parallel_tool_calls: false,
    });
    expect(data.choices[0]!.message.content).toContain('from claude here');
    expect(body(sim)).toMatchObject({
      temperature: 1,
      stop_sequences: ['END'],
      metadata: { user_id: 'user-42' },
    });
    expect(String(body(sim).system)).toContain('JSON object');
  });

  it('a data:image/jpg URL is sent as image/jpeg, the only JPEG media type Anthropic accepts', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const data = await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            { type: 'image_url', image_url: { url: `data:image/jpg;base64,${JPEG_1PX}` } },
          ],
        },
      ],
    });
    expect(data.choices[0]!.message.content).toContain('from claude here');
    expect(messagesOf(sim)[0]!.content).toEqual([
      { type: 'text', text: 'What is this?' },
      { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: JPEG_1PX } },
    ]);
  });

  it('tools without parameters, or with an empty schema, get an object input_schema', async () => {
    const { client, sims } = await setup([claude({ toolCall: true })]);
    const [sim] = sims;
    const data = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'What time is it?' }],
      tools: [
        { type: 'function', function: { name: 'get_time', parameters: {} } },
        { type: 'function', function: { name: 'get_date' } },
      ],
    });
    expect(data.choices[0]!.finish_reason).toBe('tool_calls');
    expect(functionCalls(data.choices[0]!.message.tool_calls)[0]!.function.name).toBe('get_time');
    expect(body(sim).tools).toEqual([
      { name: 'get_time', input_schema: { type: 'object' } },
      { name: 'get_date', input_schema: { type: 'object', properties: {} } },
    ]);
  });

  it('parallel tool calls with ids minted elsewhere: one tool_result turn, ids sanitised the same on both sides', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const data = await client.chat.completions.create({
      model: 'r',
      tools: [WEATHER_TOOL],
      messages: [
        { role: 'user', content: 'Weather in Rome and Oslo?' },
        {
          role: 'assistant',
          content: 'Checking both.',
          tool_calls: [
            {
              id: 'functions.get_weather:0',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":"Rome"}' },
            },
            {
              id: 'call_2',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":"Oslo"}' },
            },
          ],
        },
        { role: 'tool', tool_call_id: 'functions.get_weather:0', content: [{ type: 'text', text: '24°C' }] },
        { role: 'tool', tool_call_id: 'call_2', content: '3°C' },
      ],
    });
    expect(data.choices[0]!.message.content).toContain('from claude here');
    expect(messagesOf(sim).slice(1)).toEqual([
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'Checking both.' },
          { type: 'tool_use', id: 'functions_get_weather_0', name: 'get_weather', input: { city: 'Rome' } },
          { type: 'tool_use', id: 'call_2', name: 'get_weather', input: { city: 'Oslo' } },
        ],
      },
      {
        role: 'user',
        content: [
          {
            type: 'tool_result',
            tool_use_id: 'functions_get_weather_0',
            content: [{ type: 'text', text: '24°C' }],
          },
          { type: 'tool_result', tool_use_id: 'call_2', content: '3°C' },
        ],
      },
    ]);
  });
});

describe('Anthropic upstream through the OpenAI SDK (streaming)', () => {
  it('streamed deltas reassemble to the non-streaming answer; include_usage adds a usage chunk', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const messages = [
      { role: 'system' as const, content: 'Be terse.' },
      { role: 'user' as const, content: 'hi' },
    ];
    const json = await client.chat.completions.create({ model: 'r', messages });
    const { data: stream, response } = await client.chat.completions
      .create({ model: 'r', messages, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    expect(response.headers.get('content-type')).toContain('text/event-stream');
    expect(response.headers.get('x-router-provider')).toBe('claude');
    const got = await assemble(stream);
    expect(got.error).toBeUndefined();
    expect(got.role).toBe('assistant');
    expect(got.text).toBe(json.choices[0]!.message.content);
    expect(got.finish).toBe('stop');
    expect(got.chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === got.chunks[0]!.id)).toBe(
      true,
    );
    // The usage chunk is last, has no choices, and carries the same counts as the JSON answer.
    const last = got.chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(json.usage);
    expect(got.chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);

    const upstream = body(sim, 1);
    expect(upstream.stream).toBe(true);
    expect(upstream.system).toBe('Be terse.');
    expect(upstream.stream_options).toBeUndefined(); // an OpenAI field Anthropic would reject
  });

  it('without include_usage no chunk carries usage', async () => {
    const { client } = await setup([claude()]);
    const got = await assemble(
      await client.chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
        stream: true,
      }),
    );
    expect(got.error).toBeUndefined();
    expect(got.text).toContain('from claude here');
    expect(got.chunks.every((c) => c.usage === undefined || c.usage === null)).toBe(true);
    expect(got.chunks.every((c) => c.choices.length === 1)).toBe(true);
  });

  it('a streamed tool call reassembles to the same call, and the streamed follow-up answers in text', async () => {
    const { client, sims } = await setup([claude({ toolCall: true })]);
    const [sim] = sims;
    const messages = [{ role: 'user' as const, content: 'Weather in Paris?' }];
    const json = await client.chat.completions.create({ model: 'r', messages, tools: [WEATHER_TOOL] });
    const jsonCall = functionCalls(json.choices[0]!.message.tool_calls)[0]!;

    const got = await assemble(
      await client.chat.completions.create({ model: 'r', messages, tools: [WEATHER_TOOL], stream: true }),
    );
    expect(got.error).toBeUndefined();
    expect(got.finish).toBe('tool_calls');
    expect(got.text).toBe('');
    expect(got.tools).toHaveLength(1);
    expect(got.tools[0]!.id).toMatch(/^toolu_/);
    expect(got.tools[0]!.name).toBe(jsonCall.function.name);
    expect(got.tools[0]!.arguments).toBe(jsonCall.function.arguments);
    // The simulator split the arguments into several input_json_delta events: they arrive as fragments.
    expect(
      got.chunks.filter((c) => c.choices[0]?.delta.tool_calls?.[0]?.function?.arguments).length,
    ).toBeGreaterThan(1);
    // The SDK's own stream accumulator agrees.
    const final = await client.chat.completions
      .stream({ model: 'r', messages, tools: [WEATHER_TOOL] })
      .finalChatCompletion();
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    expect(functionCalls(final.choices[0]!.message.tool_calls)[0]!.function).toEqual(jsonCall.function);

    const followUp = await assemble(
      await client.chat.completions.create({
        model: 'r',
        tools: [WEATHER_TOOL],
        stream: true,
        messages: [
          ...messages,
          {
            role: 'assistant',
            content: null,
            tool_calls: [
              {
                id: got.tools[0]!.id,
                type: 'function',
                function: { name: got.tools[0]!.name, arguments: got.tools[0]!.arguments },
              },
            ],
          },
          { role: 'tool', tool_call_id: got.tools[0]!.id, content: '18°C and sunny' },
        ],
      }),
    );
    expect(followUp.error).toBeUndefined();
    expect(followUp.finish).toBe('stop');
    expect(followUp.text).toContain('from claude here');
    const sent = messagesOf(sim, 3);
    expect(sent[1]!.content).toEqual([
      { type: 'tool_use', id: got.tools[0]!.id, name: 'get_weather', input: { city: 'Paris' } },
    ]);
    expect(sent[2]!.content).toEqual([
      { type: 'tool_result', tool_use_id: got.tools[0]!.id, content: '18°C and sunny' },
    ]);
  });

  it("a streamed thinking tool call: the SDK's final message carries the signed block, and sent back, Claude keeps thinking", async () => {
    const { client, sims } = await setup([claude({ toolCall: true })]);
    const [sim] = sims;
    const ask: ChatCompletionCreateParamsNonStreaming = {
      model: 'r',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [WEATHER_TOOL],
      reasoning_effort: 'low',
    };
    const final = await client.chat.completions.stream({ ...ask, stream: true }).finalChatCompletion();
    const message = final.choices[0]!.message;
    expect((message as unknown as Json).thinking_blocks).toEqual([{ type: 'thinking', ...THINKING }]);
    const call = functionCalls(message.tool_calls)[0]!;
    const next = await client.chat.completions.create({
      ...ask,
      messages: [...ask.messages, message, { role: 'tool', tool_call_id: call.id, content: 'sunny' }],
    });
    expect(next.choices[0]!.finish_reason).toBe('stop');
    expect(body(sim, 1).thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect((messagesOf(sim, 1)[1]!.content as Json[]).map((b) => b.type)).toEqual(['thinking', 'tool_use']);
  });

  it('streams an image request, translated the same way', async () => {
    const { client, sims } = await setup([claude()]);
    const [sim] = sims;
    const got = await assemble(
      await client.chat.completions.create({
        model: 'r',
        stream: true,
        messages: [
          {
            role: 'user',
            content: [
              { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_B64}` } },
              { type: 'image_url', image_url: { url: 'https://example.com/cat.jpg' } },
              { type: 'text', text: 'Compare.' },
            ],
          },
        ],
      }),
    );
    expect(got.error).toBeUndefined();
    expect(got.text).toContain('from claude here');
    expect(messagesOf(sim)[0]!.content).toEqual([
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_B64 } },
      { type: 'image', source: { type: 'url', url: 'https://example.com/cat.jpg' } },
      { type: 'text', text: 'Compare.' },
    ]);
  });
});

describe('Anthropic errors', () => {
  it('a 400 is relayed as an OpenAI-shaped 400 and the next upstream receives nothing', async () => {
    const { client, sims } = await setup([
      claude({ status: 400, errorMessage: 'messages.0: too polite' }),
      gpt(),
    ]);
    const [anth, oa] = sims;
    for (const stream of [false, true]) {
      const err = await client.chat.completions
        .create({ model: 'r', messages: [{ role: 'user', content: 'hi' }], stream })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err, `stream=${stream}`).toBeInstanceOf(OpenAI.BadRequestError);
      const e = err as InstanceType<typeof OpenAI.BadRequestError>;
      expect(e.status).toBe(400);
      expect(e.message).toContain('messages.0: too polite');
      expect(e.type).toBe('invalid_request_error');
      expect(e.headers.get('x-router-attempts')).toBe('1');
    }
    expect(anth.requests).toHaveLength(2);
    expect(oa.requests).toHaveLength(0);
    // A client error says nothing about the upstream's health.
    expect((await breakerAt(gw!.url, 'claude/claude-haiku-4-5')).consecutive_failures).toBe(0);
    expect(
      value(await scrape(gw!.url), 'llm_router_upstream_attempts_total', {
        provider: 'claude',
        model: 'claude-haiku-4-5',
        outcome: 'client_error',
      }),
    ).toBe(2);
  });

  it.each([
    [401, 'http_401', 'error'],
    [429, 'http_429', 'rate_limited'],
    [529, 'http_529', 'error'],
  ])('a %i is failed over to the next upstream', async (status, reason, outcome) => {
    const { client, sims } = await setup([claude({ status }), gpt()]);
    const [anth, oa] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(data.choices[0]!.message.content).toContain('from gpt here');
    expect(response.headers.get('x-router-provider')).toBe('gpt');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    expect(response.headers.get('x-router-trail')).toBe(`claude/claude-haiku-4-5=${reason}`);
    expect(anth.requests).toHaveLength(1);
    expect(oa.requests).toHaveLength(1);
    // Counted against the Anthropic upstream's health, unlike a client error.
    expect((await breakerAt(gw!.url, 'claude/claude-haiku-4-5')).consecutive_failures).toBe(1);
    expect(
      value(await scrape(gw!.url), 'llm_router_upstream_attempts_total', {
        provider: 'claude',
        model: 'claude-haiku-4-5',
        outcome,
      }),
    ).toBe(1);
    expect(
      value(await scrape(gw!.url), 'llm_router_failovers_total', {
        route: 'r',
        from_provider: 'claude',
        reason: outcome,
      }),
    ).toBe(1);
  });

  it('a wrong Anthropic key (the simulator answers 401 itself) is failed over too', async () => {
    const { client, sims } = await setup([{ ...claude(), gatewayKey: 'sk-wrong' }, gpt()]);
    const [anth] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(data.choices[0]!.message.content).toContain('from gpt here');
    expect(response.headers.get('x-router-trail')).toBe('claude/claude-haiku-4-5=http_401');
    expect(anth.requests[0]!.headers['x-api-key']).toBe('sk-wrong');
  });
});

describe('a route mixing an OpenAI-dialect and an Anthropic upstream', () => {
  const hi = [{ role: 'user' as const, content: 'hi' }];

  it('Anthropic first failing with 529 -> OpenAI serves, non-streaming and streaming', async () => {
    const { client, sims } = await setup([claude({ status: 529 }), gpt()]);
    const [anth, oa] = sims;
    const json = await client.chat.completions.create({ model: 'r', messages: hi });
    expect(json.choices[0]!.message.content).toBe(reply('gpt'));

    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('gpt');
    expect(response.headers.get('x-router-trail')).toBe('claude/claude-haiku-4-5=http_529');
    const got = await assemble(data);
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(json.choices[0]!.message.content);
    expect(got.finish).toBe('stop');
    expect(anth.requests).toHaveLength(2);
    expect(oa.requests).toHaveLength(2);
  });

  it('what Anthropic has no place for (audio input, legacy functions) goes to the OpenAI upstream, never dropped', async () => {
    const { client, sims } = await setup([claude(), gpt()]);
    const [anth, oa] = sims;
    const audio = [
      {
        role: 'user' as const,
        content: [
          { type: 'input_audio' as const, input_audio: { data: 'UklGRg==', format: 'wav' as const } },
        ],
      },
    ];
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: audio })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe(reply('gpt'));
    expect(response.headers.get('x-router-attempts')).toBe('1');
    const legacy = await client.chat.completions.create({
      model: 'r',
      messages: hi,
      functions: [{ name: 'f', parameters: { type: 'object', properties: {} } }],
    });
    expect(legacy.choices[0]!.message.content).toBe(reply('gpt'));
    expect(anth.requests).toHaveLength(0);
    expect(oa.requests).toHaveLength(2);
    // A route of Anthropic upstreams only says why, naming the field, and calls nobody.
    const err = await client.chat.completions
      .create({ model: 'r', messages: audio }, { headers: { 'x-router-provider': 'claude' } })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).message).toContain('input_audio');
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('messages');
    expect(anth.requests).toHaveLength(0);
  });

  it("a thinking Claude answer sent back moves to the OpenAI upstream without Claude's thinking_blocks (strict servers refuse unknown message fields)", async () => {
    const { client, sims } = await setup([claude(), gpt()]);
    const [anth, oa] = sims;
    const ask = { model: 'r', messages: hi, reasoning_effort: 'low' as const };
    const first = await client.chat.completions.create(ask);
    const message = first.choices[0]!.message as unknown as Json;
    expect(message.thinking_blocks).toBeDefined();
    const turn = [...hi, message, { role: 'user', content: 'and then?' }] as ChatCompletionMessageParam[];
    const second = await client.chat.completions.create(
      { ...ask, messages: turn },
      { headers: { 'x-router-provider': 'gpt' } },
    );
    expect(second.choices[0]!.message.content).toBe(reply('gpt'));
    const sent = messagesOf(oa)[1]!;
    expect(sent).not.toHaveProperty('thinking_blocks');
    expect(sent.reasoning_content).toBe(THINKING.thinking); // what OpenAI-compatible servers define stays
    expect(body(oa).reasoning_effort).toBe('low');
    // Claude itself gets them back.
    await client.chat.completions.create(
      { ...ask, messages: turn },
      { headers: { 'x-router-provider': 'claude' } },
    );
    expect((messagesOf(anth, 1)[1]!.content as Json[])[0]).toEqual({ type: 'thinking', ...THINKING });
  });

  it('OpenAI first failing with 500 -> Anthropic serves, non-streaming and streaming', async () => {
    const { client, sims } = await setup([gpt({ status: 500 }), claude()]);
    const [oa, anth] = sims;
    const { data: json, response: jsonRes } = await client.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(json.choices[0]!.message.content).toBe(reply('claude'));
    expect(jsonRes.headers.get('x-router-provider')).toBe('claude');
    expect(jsonRes.headers.get('x-router-trail')).toBe('gpt/gpt-4o-mini=http_500');

    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('claude');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    const got = await assemble(data);
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(json.choices[0]!.message.content);
    expect(got.usage?.completion_tokens).toBe(8);
    expect(oa.requests).toHaveLength(2);
    expect(anth.requests).toHaveLength(2);
    // The OpenAI-only field was sent to the OpenAI upstream and not to the Anthropic one.
    expect(body(oa, 1).stream_options).toEqual({ include_usage: true });
    expect(body(anth, 1).stream_options).toBeUndefined();
  });

  it('an Anthropic in-stream error event before any content is failed over invisibly', async () => {
    const { client, sims } = await setup([claude({ errorEventAfterChunks: 0 }), gpt()]);
    const [anth, oa] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    expect(response.status).toBe(200);
    expect(response.headers.get('x-router-provider')).toBe('gpt');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    expect(response.headers.get('x-router-trail')).toBe('claude/claude-haiku-4-5=stream_error_event');
    const got = await assemble(data);
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(reply('gpt'));
    // Nothing of the Anthropic preamble (its message id, its role chunk) leaked into the client's stream.
    expect(new Set(got.chunks.map((c) => c.id)).size).toBe(1);
    expect(got.chunks.filter((c) => c.choices[0]?.delta.role !== undefined)).toHaveLength(1);
    expect(anth.requests[0]!.finished).toBe(true);
    expect(oa.requests).toHaveLength(1);
  });

  it('an Anthropic stream cut before any content is failed over invisibly', async () => {
    const { client, sims } = await setup([claude({ dropAfterChunks: 0 }), gpt()]);
    const [, oa] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('gpt');
    expect(response.headers.get('x-router-attempts')).toBe('2');
    const got = await assemble(data);
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(reply('gpt'));
    expect(oa.requests).toHaveLength(1);
  });

  it('an Anthropic error event after 2 content chunks ends the stream with an error the SDK surfaces', async () => {
    const { client, sims } = await setup([
      claude({ errorEventAfterChunks: 2, errorMessage: 'Overloaded mid-answer' }),
      gpt(),
    ]);
    const [anth, oa] = sims;
    const { data, response } = await client.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    expect(response.status).toBe(200);
    expect(response.headers.get('x-router-provider')).toBe('claude');
    const got = await assemble(data);
    expect(got.text).toBe('Hello from ');
    expect(got.finish).toBeNull();
    expect(got.error).toBeInstanceOf(OpenAI.APIError);
    const e = got.error as InstanceType<typeof OpenAI.APIError>;
    expect(e.message).toContain('Overloaded mid-answer');
    expect(e.code).toBe('stream_interrupted');
    expect(e.type).toBe('upstream_error');
    expect(anth.requests).toHaveLength(1);
    expect(oa.requests).toHaveLength(0); // committed: nothing to fail over to
    expect(
      value(await scrape(gw!.url), 'llm_router_stream_failures_total', {
        provider: 'claude',
        model: 'claude-haiku-4-5',
        policy: 'terminate',
      }),
    ).toBe(1);
  });
});

describe('an Anthropic base_url given with /v1', () => {
  it.each(['/v1', '/v1/'])(
    'base_url ending in %s reaches {origin}/v1/messages, not /v1/v1/messages',
    async (suffix) => {
      const sim = track(await startSimulator({ name: 'claude', kind: 'anthropic', apiKey: keyOf('claude') }));
      gw = track(
        await startGateway({
          providers: [
            simProvider('claude', sim.url, [MODEL.anthropic], {
              kind: 'anthropic',
              base_url: `${sim.url}${suffix}`,
              api_key: keyOf('claude'),
            }),
          ],
          routes: { r: { strategy: 'priority', targets: [`claude/${MODEL.anthropic}`] } },
        }),
      );
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const res = await client.chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
      });
      expect(res.choices[0]!.message.content).toBe(reply('claude'));
      expect(sim.requests).toHaveLength(1);
    },
  );
});
