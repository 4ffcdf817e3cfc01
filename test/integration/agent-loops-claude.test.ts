/**
 * Multi-step agent loops run by real SDKs (Vercel AI SDK, the openai SDK's runTools, LangChain ChatOpenAI) on a
 * route served by Claude, the gateway translating every round. The upstream is a stateful Messages API mock that
 * refuses what the real API refuses for the conversation so far (src/sim/anthropic-validate.ts: fields, tools,
 * content, tool_use/tool_result pairing, the thinking rules of each model; plus turn order and thinking
 * signatures) and answers round by round: thinking (when on), a preface and two parallel tool calls; then one more
 * call; then the final text, which says what Claude read of each result.
 */
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import {
  AIMessage,
  HumanMessage,
  ToolMessage,
  type AIMessageChunk,
  type BaseMessage,
} from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, jsonSchema, stepCountIs, streamText, tool, type ToolSet } from 'ai';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import {
  contentError,
  forcedToolError,
  outputConfigError,
  thinkingBudget,
  toolsError,
  undefinedToolsError,
  unknownFieldError,
} from '../../src/sim/anthropic-validate.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// The Messages API mock

/** A call Claude makes: its tool and input. */
interface Call {
  readonly name: string;
  readonly input: Json;
}

/** The calls of each round: two parallel ones, then one, then the final text. */
const PLAN: readonly (readonly Call[])[] = [
  [
    { name: 'get_weather', input: { city: 'Oslo' } },
    { name: 'get_time', input: {} },
  ],
  [{ name: 'get_weather', input: { city: 'Bergen' } }],
];

/** Signs thinking as Anthropic does: the signature stands for the exact text. */
const sign = (text: string): string =>
  createHash('sha256').update(`claude-mock:${text}`).digest('base64').replace(/=+$/, '');

const ALWAYS_THINKS = /claude-(?:opus-5-5|fable|mythos)/;
const THINKS_BY_DEFAULT = /claude-(?:opus|sonnet)-5/;

interface Round {
  /** The request body as the gateway sent it. */
  readonly body: Json;
  /** The Messages API's 400 message for it, or undefined when it took it. */
  readonly refused: string | undefined;
  /** Whether Claude thought in this round. */
  readonly thought: boolean;
}

interface ClaudeMock {
  readonly url: string;
  readonly rounds: Round[];
}

/** The text of a tool_result block, or of a tool result the gateway sent as text. */
function resultsIn(body: Json): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of body.messages as Json[]) {
    if (!Array.isArray(m.content)) continue;
    for (const b of m.content as Json[]) {
      if (b.type === 'tool_result') {
        const c = b.content;
        const text =
          typeof c === 'string'
            ? c
            : Array.isArray(c)
              ? (c as Json[]).map((p) => String(p.text ?? '')).join('')
              : '';
        out.set(String(b.tool_use_id), text);
      } else if (b.type === 'text') {
        const m2 = /^\[tool result ([^:]+): ([\s\S]*)\]$/.exec(String(b.text));
        if (m2 !== null) out.set(m2[1]!, m2[2]!);
      }
    }
  }
  return out;
}

/** The real API's refusals beyond the simulator's: turn order and thinking signatures. */
function orderAndSignatureError(body: Json): string | undefined {
  const msgs = body.messages as Json[];
  if (msgs[0]?.role !== 'user') return 'messages.0.role: the first message must use the "user" role';
  for (let i = 1; i < msgs.length; i++)
    if (msgs[i]!.role === msgs[i - 1]!.role)
      return `messages: roles must alternate between "user" and "assistant", but found multiple "${String(msgs[i]!.role)}" roles in a row`;
  for (const [i, m] of msgs.entries()) {
    if (!Array.isArray(m.content)) continue;
    for (const [j, b] of (m.content as Json[]).entries())
      if (b.type === 'thinking' && b.signature !== sign(String(b.thinking)))
        return `messages.${i}.content.${j}: Invalid \`signature\` in \`thinking\` block`;
  }
  if (typeof body.max_tokens !== 'number' || !Number.isInteger(body.max_tokens) || body.max_tokens < 1)
    return 'max_tokens: Field required';
  return undefined;
}

/** Whether Claude thinks on this request: asked for, or its model's default. */
function thinkingOn(body: Json): boolean {
  const t = body.thinking as Json | undefined;
  if (t === undefined)
    return THINKS_BY_DEFAULT.test(String(body.model)) || ALWAYS_THINKS.test(String(body.model));
  return t.type === 'enabled' || t.type === 'adaptive';
}

/** A user turn that only answers tool calls (as blocks, or as the text the gateway writes them as). */
const answersTools = (m: Json): boolean =>
  Array.isArray(m.content) &&
  (m.content as Json[]).every(
    (b) => b.type === 'tool_result' || (b.type === 'text' && String(b.text).startsWith('[tool result ')),
  );

/** The round this request is: the assistant turns since the user's last question, each one round. */
function roundOf(body: Json): number {
  const msgs = body.messages as Json[];
  let n = 0;
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i]!;
    if (m.role === 'assistant') n++;
    else if (!answersTools(m)) break;
  }
  return n;
}

const sse = (data: Json): string => `event: ${String(data.type)}\ndata: ${JSON.stringify(data)}\n\n`;

function pieces(s: string, n: number): string[] {
  if (s === '') return [];
  const size = Math.max(1, Math.ceil(s.length / n));
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

/** Writes `blocks` as the Messages API answers: JSON, or its SSE sequence in small fragments. */
function answer(res: ServerResponse, body: Json, blocks: Json[], id: string, inTok: number): void {
  const stop = blocks.some((b) => b.type === 'tool_use') ? 'tool_use' : 'end_turn';
  const usage = { input_tokens: inTok, output_tokens: 20 };
  const message = { id, type: 'message', role: 'assistant', model: String(body.model) };
  if (body.stream !== true) {
    sendJson(res, 200, { ...message, content: blocks, stop_reason: stop, stop_sequence: null, usage });
    return;
  }
  let out = sse({
    type: 'message_start',
    message: {
      ...message,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: { input_tokens: inTok, output_tokens: 1 },
    },
  });
  for (const [index, b] of blocks.entries()) {
    const start =
      b.type === 'tool_use'
        ? { ...b, input: {} }
        : b.type === 'redacted_thinking'
          ? b
          : b.type === 'thinking'
            ? { type: 'thinking', thinking: '', signature: '' }
            : { type: 'text', text: '' };
    out += sse({ type: 'content_block_start', index, content_block: start });
    const deltas =
      b.type === 'redacted_thinking'
        ? []
        : b.type === 'tool_use'
          ? pieces(JSON.stringify(b.input), 3).map((partial_json) => ({
              type: 'input_json_delta',
              partial_json,
            }))
          : b.type === 'thinking'
            ? [
                ...pieces(String(b.thinking), 2).map((thinking) => ({ type: 'thinking_delta', thinking })),
                { type: 'signature_delta', signature: b.signature },
              ]
            : pieces(String(b.text), 3).map((text) => ({ type: 'text_delta', text }));
    for (const delta of deltas) out += sse({ type: 'content_block_delta', index, delta });
    out += sse({ type: 'content_block_stop', index });
  }
  out += sse({
    type: 'message_delta',
    delta: { stop_reason: stop, stop_sequence: null },
    usage: { output_tokens: 20 },
  });
  out += sse({ type: 'message_stop' });
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(out);
}

/**
 * Claude on a three-round plan (PLAN). With `disable_parallel_tool_use` it makes one call per round, in the same
 * order. It thinks in the first round when thinking is on, and in later rounds too under adaptive thinking
 * (interleaved, as 4.6 on do). Its final text lists each result it read, by call, in call order.
 */
async function startClaude(opts: { redacted?: boolean; textBetween?: boolean } = {}): Promise<ClaudeMock> {
  const rounds: Round[] = [];
  const m = await startMock((req, res) => {
    const body = req.body;
    const msgs = (Array.isArray(body.messages) ? body.messages : []) as Json[];
    const budget = thinkingBudget(body);
    const refused =
      unknownFieldError(body)?.message ??
      outputConfigError(body.output_config)?.message ??
      toolsError(body.tools)?.message ??
      undefinedToolsError(msgs, body.tools)?.message ??
      contentError(msgs)?.message ??
      (typeof budget === 'object' ? budget.message : undefined) ??
      forcedToolError(body)?.message ??
      orderAndSignatureError(body);
    const round = refused === undefined ? roundOf(body) : -1;
    const on = refused === undefined && thinkingOn(body);
    const adaptive = (body.thinking as Json | undefined)?.type !== 'enabled';
    const thought = on && (round === 0 || adaptive);
    rounds.push({ body, refused, thought });
    if (refused !== undefined) {
      sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: refused } });
      return;
    }
    const serial = (body.tool_choice as Json | undefined)?.disable_parallel_tool_use === true;
    const calls = serial
      ? PLAN.flat()
          .slice(round, round + 1)
          .map((c) => [c])
      : PLAN.slice(round, round + 1);
    const now = calls[0] ?? [];
    const blocks: Json[] = [];
    if (thought) {
      const thinking = `Round ${round + 1}: what do I still need?`;
      blocks.push({ type: 'thinking', thinking, signature: sign(thinking) });
      if (opts.redacted === true) blocks.push({ type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix' });
    }
    if (now.length > 0) {
      if (round === 0) blocks.push({ type: 'text', text: 'Let me look that up.' });
      for (const [k, c] of now.entries()) {
        if (k > 0 && opts.textBetween === true) blocks.push({ type: 'text', text: 'And also:' });
        blocks.push({ type: 'tool_use', id: `toolu_0${round + 1}${k}Ab`, name: c.name, input: c.input });
      }
    } else {
      const seen = resultsIn(body);
      const text = [...seen.entries()].map(([id, t]) => `${id}=${t === '' ? '(empty)' : t}`).join('; ');
      blocks.push({ type: 'text', text: `Read: ${text}` });
    }
    answer(res, body, blocks, `msg_01Round${round + 1}`, 100 * (round + 1));
  });
  track(m);
  return { url: m.url, rounds };
}

/** A gateway whose route `agent` is Claude `model` on the mock. */
async function gatewayFor(claude: ClaudeMock, model: string): Promise<string> {
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: claude.url,
          api_key: 'sk-ant-x',
          models: [{ name: model }],
        },
      ],
      routes: { agent: { strategy: 'priority', targets: [`anth/${model}`] } },
    }),
  );
  return gw.url;
}

/** The refusals of every round (undefined for each taken). */
const refusals = (c: ClaudeMock): (string | undefined)[] => c.rounds.map((r) => r.refused);

// ---------------------------------------------------------------------------------------------
// The tools each SDK runs

const WEATHER_SCHEMA = {
  type: 'object' as const,
  properties: { city: { type: 'string' as const } },
  required: ['city'],
  additionalProperties: false,
};
const NO_ARGS = { type: 'object' as const, properties: {} };

/** The Vercel AI SDK's tools: weather answers JSON, time answers `time` (or throws `timeError`). */
function aiTools(time: string, timeError?: string): ToolSet {
  return {
    get_weather: tool({
      description: 'Weather of a city',
      inputSchema: jsonSchema<{ city: string }>(WEATHER_SCHEMA),
      execute: ({ city }) => Promise.resolve({ city, sky: city === 'Oslo' ? 'rain' : 'sun' }),
    }),
    get_time: tool({
      description: 'Current time',
      inputSchema: jsonSchema<Record<string, never>>(NO_ARGS),
      execute: () => (timeError === undefined ? Promise.resolve(time) : Promise.reject(new Error(timeError))),
    }),
  };
}

/** The openai SDK's runnable tools, `time` for get_time. */
function runnableTools(time: string) {
  return [
    {
      type: 'function' as const,
      function: {
        name: 'get_weather',
        description: 'Weather of a city',
        parameters: WEATHER_SCHEMA,
        parse: (s: string) => JSON.parse(s) as { city: string },
        function: ({ city }: { city: string }) => ({ city, sky: city === 'Oslo' ? 'rain' : 'sun' }),
      },
    },
    {
      type: 'function' as const,
      function: {
        name: 'get_time',
        description: 'Current time',
        parameters: NO_ARGS,
        parse: (s: string) => JSON.parse(s) as Record<string, never>,
        function: () => time,
      },
    },
  ];
}

const lcTools = [
  {
    type: 'function',
    function: { name: 'get_weather', description: 'Weather of a city', parameters: WEATHER_SCHEMA },
  },
  { type: 'function', function: { name: 'get_time', description: 'Current time', parameters: NO_ARGS } },
];

/** Runs LangChain's tools for `ai`'s calls: weather as JSON text, time as `time`. */
function lcResults(ai: AIMessage, time: string): ToolMessage[] {
  return (ai.tool_calls ?? []).map(
    (c) =>
      new ToolMessage({
        tool_call_id: c.id!,
        content:
          c.name === 'get_weather'
            ? JSON.stringify({ city: c.args.city as string, sky: c.args.city === 'Oslo' ? 'rain' : 'sun' })
            : time,
      }),
  );
}

/** What Claude's final text says it read for the three calls of PLAN (ids by round and position). */
function readLine(time: string): string {
  return [
    'toolu_010Ab={"city":"Oslo","sky":"rain"}',
    `toolu_011Ab=${time}`,
    'toolu_020Ab={"city":"Bergen","sky":"sun"}',
  ].join('; ');
}

// ---------------------------------------------------------------------------------------------

describe('Vercel AI SDK loops on Claude', () => {
  it('generateText on Sonnet 4.5 with reasoningEffort high: three rounds Claude takes, thinking (signed and redacted) in the first only, an empty result read as empty', async () => {
    const claude = await startClaude({ redacted: true });
    const url = await gatewayFor(claude, 'claude-sonnet-4-5');
    const out = await generateText({
      model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
      system: 'Be brief.',
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: aiTools(''),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
      providerOptions: { openai: { reasoningEffort: 'high' } },
    });
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    // A loop the SDK sends back without its thinking blocks goes on without thinking (README, Anthropic upstreams).
    expect(claude.rounds.map((r) => r.body.thinking)).toEqual([
      { type: 'enabled', budget_tokens: 4096 },
      undefined,
      undefined,
    ]);
    expect(out.steps).toHaveLength(3);
    expect(out.steps.map((s) => s.finishReason)).toEqual(['tool-calls', 'tool-calls', 'stop']);
    expect(out.steps[0]!.toolCalls.map((c) => [c.toolCallId, c.toolName, c.input])).toEqual([
      ['toolu_010Ab', 'get_weather', { city: 'Oslo' }],
      ['toolu_011Ab', 'get_time', {}],
    ]);
    expect(out.text).toBe(`Read: ${readLine('(empty)')}`);
    expect(out.totalUsage.inputTokens).toBe(600);
  });

  it('streamText on Opus 4.6 with reasoningEffort medium and a tool that throws: the error text reaches Claude as its result', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-4-6');
    const st = streamText({
      model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: aiTools('', 'clock offline'),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
      providerOptions: { openai: { reasoningEffort: 'medium' } },
    });
    const text = await st.text;
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds[0]!.body).toMatchObject({
      thinking: { type: 'adaptive' },
      output_config: { effort: 'medium' },
    });
    expect(text).toBe(`Read: ${readLine('clock offline')}`);
    const steps = await st.steps;
    expect(steps).toHaveLength(3);
    expect(steps[1]!.toolCalls.map((c) => [c.toolCallId, c.input])).toEqual([
      ['toolu_020Ab', { city: 'Bergen' }],
    ]);
  });

  it('streamText on Opus 5.5 (always thinks): every round is taken with thinking on, the results read whole', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-5-5');
    const st = streamText({
      model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: aiTools('12:00'),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
    });
    const text = await st.text;
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds.map((r) => r.thought)).toEqual([true, true, true]);
    expect(text).toBe(`Read: ${readLine('12:00')}`);
  });

  it('generateText on Sonnet 4.5 with parallelToolCalls false: one call a round, four rounds, each taken', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-sonnet-4-5');
    const out = await generateText({
      model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: aiTools('{"h":12}'),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
      providerOptions: { openai: { parallelToolCalls: false, reasoningEffort: 'low' } },
    });
    expect(refusals(claude)).toEqual([undefined, undefined, undefined, undefined]);
    expect(claude.rounds[0]!.body.tool_choice).toEqual({ type: 'auto', disable_parallel_tool_use: true });
    expect(out.steps).toHaveLength(4);
    expect(out.text).toBe(
      'Read: toolu_010Ab={"city":"Oslo","sky":"rain"}; toolu_020Ab={"h":12}; toolu_030Ab={"city":"Bergen","sky":"sun"}',
    );
  });
  it('a second question to Opus 5.5 after a finished loop: the closed loop keeps its tool blocks, the open one goes as text, every round taken', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-5-5');
    const model = createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent');
    const question = 'Weather in Oslo and Bergen, and the time?';
    const first = await generateText({
      model,
      prompt: question,
      tools: aiTools('12:00'),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
    });
    const second = await generateText({
      model,
      messages: [
        { role: 'user', content: question },
        ...first.response.messages,
        { role: 'user', content: 'And now?' },
      ],
      tools: aiTools('13:00'),
      stopWhen: stepCountIs(6),
      maxRetries: 0,
    });
    expect(refusals(claude)).toEqual(Array.from({ length: 6 }, () => undefined));
    expect(claude.rounds.map((r) => r.thought)).toEqual([true, true, true, true, true, true]);
    const last = claude.rounds[5]!.body.messages as Json[];
    // The first question's loop, closed, goes as Claude made it; only the loop under way is written out.
    expect((last[1]!.content as Json[]).map((b) => b.type)).toEqual(['text', 'tool_use', 'tool_use']);
    expect((last[2]!.content as Json[]).map((b) => b.type)).toEqual(['tool_result', 'tool_result']);
    expect(second.text).toContain('toolu_011Ab_2=13:00');
    expect(second.steps).toHaveLength(3);
  });

  it('streamText on Claude 3.7 Sonnet under maxOutputTokens 2000 with temperature: thinking within the budget in round 1, the temperature back once it is off', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-3-7-sonnet-20250219');
    const st = streamText({
      model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: aiTools('12:00'),
      temperature: 0.3,
      maxOutputTokens: 2000,
      stopWhen: stepCountIs(6),
      maxRetries: 0,
      providerOptions: { openai: { reasoningEffort: 'high' } },
    });
    expect(await st.text).toBe(`Read: ${readLine('12:00')}`);
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds.map((r) => [r.body.thinking, r.body.max_tokens, r.body.temperature])).toEqual([
      [{ type: 'enabled', budget_tokens: 1999 }, 2000, undefined],
      [undefined, 2000, 0.3],
      [undefined, 2000, 0.3],
    ]);
  });

  // README: Fable, Mythos and Claude 5.1 on always think and refuse forced tool use: a forced tool goes as auto.
  it('a first step forced with toolChoice required on Fable 5 and Mythos Preview (they always think): every round taken, the forced one sent as auto', async () => {
    for (const name of ['claude-fable-5', 'claude-mythos-preview']) {
      const claude = await startClaude();
      const url = await gatewayFor(claude, name);
      const out = await generateText({
        model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
        prompt: 'Weather in Oslo and Bergen, and the time?',
        tools: aiTools('12:00'),
        prepareStep: ({ stepNumber }) => (stepNumber === 0 ? { toolChoice: 'required' } : {}),
        stopWhen: stepCountIs(6),
        maxRetries: 0,
      }).catch((e: Error) => e);
      expect([name, refusals(claude)]).toEqual([name, [undefined, undefined, undefined]]);
      expect([name, claude.rounds[0]!.body.tool_choice]).toEqual([name, { type: 'auto' }]);
      expect([name, out instanceof Error ? out.message : out.text]).toEqual([
        name,
        `Read: ${readLine('12:00')}`,
      ]);
    }
  });

  // README: reasoning_effort low is adaptive thinking at that effort; on Opus 5.5 none and minimal already get low.
  it('reasoningEffort low under maxOutputTokens 800 on Opus 5.5 (always thinks): every round asks for low effort, as none does', async () => {
    const efforts: Record<string, unknown[]> = {};
    for (const effort of ['none', 'low'] as const) {
      const claude = await startClaude();
      const url = await gatewayFor(claude, 'claude-opus-5-5');
      const st = streamText({
        model: createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' }).chat('agent'),
        prompt: 'Weather in Oslo and Bergen, and the time?',
        tools: aiTools('12:00'),
        maxOutputTokens: 800,
        stopWhen: stepCountIs(6),
        maxRetries: 0,
        providerOptions: { openai: { reasoningEffort: effort } },
      });
      expect(await st.text).toBe(`Read: ${readLine('12:00')}`);
      expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
      efforts[effort] = claude.rounds.map((r) => r.body.output_config);
    }
    expect(efforts).toEqual({
      none: [{ effort: 'low' }, { effort: 'low' }, { effort: 'low' }],
      low: [{ effort: 'low' }, { effort: 'low' }, { effort: 'low' }],
    });
  });
});

describe('openai SDK runTools on Claude', () => {
  it('runTools (JSON) on Sonnet 5, thinking by default: three rounds taken, the final content what Claude wrote', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-sonnet-5');
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'k', maxRetries: 0 });
    const runner = client.chat.completions.runTools({
      model: 'agent',
      messages: [{ role: 'user', content: 'Weather in Oslo and Bergen, and the time?' }],
      tools: runnableTools(''),
    });
    const content = await runner.finalContent();
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds[0]!.thought).toBe(true);
    expect(content).toBe(`Read: ${readLine('(empty)')}`);
    const messages = runner.messages;
    expect(messages.map((m) => m.role)).toEqual([
      'user',
      'assistant',
      'tool',
      'tool',
      'assistant',
      'tool',
      'assistant',
    ]);
    expect((await runner.totalUsage()).prompt_tokens).toBe(600);
  });

  it('runTools (stream) on Opus 4.7 with reasoning_effort medium and parallel_tool_calls false: each round taken', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-4-7');
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'k', maxRetries: 0 });
    const runner = client.chat.completions.runTools({
      model: 'agent',
      stream: true,
      reasoning_effort: 'medium',
      parallel_tool_calls: false,
      messages: [{ role: 'user', content: 'Weather in Oslo and Bergen, and the time?' }],
      tools: runnableTools('12:00'),
    });
    const content = await runner.finalContent();
    expect(refusals(claude)).toEqual([undefined, undefined, undefined, undefined]);
    expect(claude.rounds[0]!.body).toMatchObject({
      thinking: { type: 'adaptive', display: 'summarized' },
      output_config: { effort: 'medium' },
      tool_choice: { type: 'auto', disable_parallel_tool_use: true },
    });
    expect(content).toBe(
      'Read: toolu_010Ab={"city":"Oslo","sky":"rain"}; toolu_020Ab=12:00; toolu_030Ab={"city":"Bergen","sky":"sun"}',
    );
  });

  it('runTools (stream) on Opus 5.5 with reasoning_effort high: three rounds taken, thinking each round', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-5-5');
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'k', maxRetries: 0 });
    const runner = client.chat.completions.runTools({
      model: 'agent',
      stream: true,
      reasoning_effort: 'high',
      messages: [{ role: 'user', content: 'Weather in Oslo and Bergen, and the time?' }],
      tools: runnableTools('  '),
    });
    const content = await runner.finalContent();
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds.map((r) => r.thought)).toEqual([true, true, true]);
    expect(content).toBe(`Read: ${readLine('(empty)')}`);
  });
});

describe('LangChain ChatOpenAI bindTools loops on Claude', () => {
  /** Runs the manual loop: invoke (or stream), run the tools, send the results back, until Claude answers in text. */
  async function loop(model: ReturnType<ChatOpenAI['bindTools']>, streaming: boolean, time: string) {
    const history: BaseMessage[] = [new HumanMessage('Weather in Oslo and Bergen, and the time?')];
    for (let i = 0; i < 5; i++) {
      let ai: AIMessage;
      if (streaming) {
        let acc: AIMessageChunk | undefined;
        for await (const c of await model.stream(history)) acc = acc === undefined ? c : acc.concat(c);
        ai = new AIMessage({ content: acc!.content, tool_calls: acc!.tool_calls ?? [], id: acc!.id });
      } else ai = (await model.invoke(history)) as AIMessage;
      history.push(ai);
      if ((ai.tool_calls ?? []).length === 0) return { history, last: ai };
      history.push(...lcResults(ai, time));
    }
    throw new Error('the loop did not end');
  }

  it('invoke on Claude 3.5 Haiku with reasoning effort low (a model that does not think): three rounds taken', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-3-5-haiku-20241022');
    const model = new ChatOpenAI({
      model: 'agent',
      apiKey: 'k',
      configuration: { baseURL: `${url}/v1` },
      maxRetries: 0,
      reasoning: { effort: 'low' },
    }).bindTools(lcTools);
    const { last } = await loop(model, false, '12:00');
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds.map((r) => r.body.thinking)).toEqual([undefined, undefined, undefined]);
    expect(last.content).toBe(`Read: ${readLine('12:00')}`);
  });

  it('stream on Opus 5.5 with reasoning effort low: three rounds taken, thinking each round, the calls assembled', async () => {
    const claude = await startClaude();
    const url = await gatewayFor(claude, 'claude-opus-5-5');
    const model = new ChatOpenAI({
      model: 'agent',
      apiKey: 'k',
      configuration: { baseURL: `${url}/v1` },
      maxRetries: 0,
      streaming: true,
      reasoning: { effort: 'low' },
    }).bindTools(lcTools);
    const { history, last } = await loop(model, true, '');
    expect(refusals(claude)).toEqual([undefined, undefined, undefined]);
    expect(claude.rounds.map((r) => r.thought)).toEqual([true, true, true]);
    expect((history[1] as AIMessage).tool_calls?.map((c) => [c.id, c.name, c.args])).toEqual([
      ['toolu_010Ab', 'get_weather', { city: 'Oslo' }],
      ['toolu_011Ab', 'get_time', {}],
    ]);
    expect(last.content).toBe(`Read: ${readLine('(empty)')}`);
  });
});
