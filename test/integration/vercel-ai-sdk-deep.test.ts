/**
 * The Vercel AI SDK (`ai` v6 + `@ai-sdk/openai` `.chat()`) used as apps use it, through the gateway, against an
 * Anthropic Messages mock (the gateway translates) and an OpenAI-dialect mock:
 * - usage: every figure the SDK reads from an answer (input split into uncached / cache reads / cache writes,
 *   output) is what Claude billed, JSON and streamed, and what /metrics and the request line count for it;
 * - prompt caching asked in OpenAI's words (`prompt_cache_breakpoint`, the SDK's `promptCacheBreakpoint`) is
 *   asked of Claude in its own (`cache_control`) on the same blocks, and relayed untouched to OpenAI;
 * - structured output beside tools (`Output.object` + a tool, multi-step, streamed): the parts of a tool step
 *   reach the SDK in the order Claude wrote them, and the final object parses;
 * - a streamed multi-step tool loop on Claude: fullStream parts in their documented order, usage per step.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, Output, stepCountIs, streamText, tool } from 'ai';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { answerChat, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

const MODEL = 'claude-sonnet-4-5';

/** One Claude content block as the mock writes it: text, or a tool call with its input. */
type ClaudeBlock =
  { type: 'text'; text: string } | { type: 'tool_use'; id: string; name: string; input: Json };

interface ClaudeUsage {
  input_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  output_tokens: number;
}

/** Answers `req` as the Messages API does: the JSON message, or (stream) its SSE events, text in small pieces. */
function answerClaude(
  req: Received,
  res: ServerResponse,
  blocks: ClaudeBlock[],
  stopReason: string,
  usage: ClaudeUsage,
): void {
  const id = `msg_${Math.random().toString(36).slice(2, 10)}`;
  if (req.body.stream !== true) {
    sendJson(res, 200, {
      id,
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: blocks,
      stop_reason: stopReason,
      stop_sequence: null,
      usage,
    });
    return;
  }
  const events: Json[] = [
    {
      type: 'message_start',
      message: {
        id,
        type: 'message',
        role: 'assistant',
        model: MODEL,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { ...usage, output_tokens: 1 },
      },
    },
  ];
  blocks.forEach((b, index) => {
    if (b.type === 'text') {
      events.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      for (const piece of b.text.match(/.{1,6}/gs) ?? [])
        events.push({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: piece } });
    } else {
      events.push({
        type: 'content_block_start',
        index,
        content_block: { type: 'tool_use', id: b.id, name: b.name, input: {} },
      });
      events.push({
        type: 'content_block_delta',
        index,
        delta: { type: 'input_json_delta', partial_json: '' },
      });
      for (const piece of JSON.stringify(b.input).match(/.{1,5}/gs) ?? [])
        events.push({
          type: 'content_block_delta',
          index,
          delta: { type: 'input_json_delta', partial_json: piece },
        });
    }
    events.push({ type: 'content_block_stop', index });
  });
  events.push({
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: null },
    usage: { output_tokens: usage.output_tokens },
  });
  events.push({ type: 'message_stop' });
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(events.map(anthropicSseFrame).join(''));
}

/** A gateway whose route `r` is one Anthropic provider `anth` (priced) at `url`, and an AI SDK provider on it. */
async function claudeRoute(url: string): Promise<{ gw: TestGateway; chat: ReturnType<typeof createOpenAI> }> {
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: url,
          api_key: 'sk-ant-test',
          models: [{ name: MODEL, price: { input_per_mtok: 3, output_per_mtok: 15 } }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`anth/${MODEL}`] } },
    }),
  );
  return { gw, chat: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }) };
}

/** The blocks of the last user turn Claude was sent. */
function lastUserTurn(body: Json): Json[] {
  const messages = body.messages as { role: string; content: unknown }[];
  const last = [...messages].reverse().find((m) => m.role === 'user');
  return Array.isArray(last?.content) ? (last.content as Json[]) : [];
}

function requestLines(gw: TestGateway): Json[] {
  return gw.logs.filter((l) => l.msg === 'request' && l.route === 'r');
}

const weather = tool({
  description: 'The weather in a city',
  inputSchema: jsonSchema<{ city: string }>({
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
    additionalProperties: false,
  }),
  execute: ({ city }) => Promise.resolve({ city, tempC: 21 }),
});

describe('usage the AI SDK reads from Claude, and what the gateway counts for it', () => {
  // Claude's own split: 10 uncached, 100 written to the cache, 200 read from it; 30 out.
  const usage: ClaudeUsage = {
    input_tokens: 10,
    cache_creation_input_tokens: 100,
    cache_read_input_tokens: 200,
    output_tokens: 30,
  };

  it('cache writes are reported as OpenAI does (prompt_tokens_details.cache_write_tokens): the SDK splits input as Claude billed it, JSON and stream', async () => {
    const mock = track(
      await startMock((req, res) =>
        answerClaude(req, res, [{ type: 'text', text: 'Cached answer.' }], 'end_turn', usage),
      ),
    );
    const { chat } = await claudeRoute(mock.url);

    const gen = await generateText({ model: chat.chat('r'), prompt: 'hello', maxRetries: 0 });
    const st = streamText({ model: chat.chat('r'), prompt: 'hello', maxRetries: 0 });
    const streamed = await st.usage;
    for (const u of [gen.usage, streamed]) {
      expect(u.inputTokens).toBe(310);
      expect(u.outputTokens).toBe(30);
      expect(u.inputTokenDetails).toEqual({ noCacheTokens: 10, cacheReadTokens: 200, cacheWriteTokens: 100 });
    }
  });

  it('a streamed two-step tool loop with cache figures: totalUsage is what /metrics and the request lines count, cost with cache pricing', async () => {
    const mock = track(
      await startMock((req, res) => {
        const hasResult = (req.body.messages as { content: unknown }[]).some(
          (m) => Array.isArray(m.content) && (m.content as Json[]).some((b) => b.type === 'tool_result'),
        );
        if (!hasResult)
          answerClaude(
            req,
            res,
            [{ type: 'tool_use', id: 'toolu_01', name: 'weather', input: { city: 'Oslo' } }],
            'tool_use',
            usage,
          );
        else answerClaude(req, res, [{ type: 'text', text: 'It is 21 C in Oslo.' }], 'end_turn', usage);
      }),
    );
    const { gw, chat } = await claudeRoute(mock.url);
    const st = streamText({
      model: chat.chat('r'),
      prompt: 'weather in Oslo?',
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    expect(await st.text).toBe('It is 21 C in Oslo.');
    const total = await st.totalUsage;
    expect(total.inputTokens).toBe(620);
    expect(total.outputTokens).toBe(60);
    expect(total.inputTokenDetails.cacheReadTokens).toBe(400);

    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_tokens_total', { provider: 'anth', model: MODEL, kind: 'prompt' }),
    ).toBe(620);
    expect(
      value(samples, 'llm_router_tokens_total', { provider: 'anth', model: MODEL, kind: 'completion' }),
    ).toBe(60);
    // Per answer: 10 uncached at $3, 200 reads at a tenth of it, 100 writes at 1.25x, 30 out at $15 (per Mtok).
    const perAnswer = (10 * 3 + 200 * 0.3 + 100 * 3.75 + 30 * 15) / 1e6;
    const cost = value(samples, 'llm_router_cost_usd_total', { provider: 'anth', model: MODEL });
    expect(cost).toBeCloseTo(2 * perAnswer, 12);

    const lines = requestLines(gw);
    expect(lines.map((l) => [l.status, l.stream, l.promptTokens, l.completionTokens])).toEqual([
      [200, true, 310, 30],
      [200, true, 310, 30],
    ]);
    expect(lines.reduce((s, l) => s + (l.costUsd as number), 0)).toBeCloseTo(2 * perAnswer, 12);
  });
});

describe("prompt caching asked in OpenAI's words", () => {
  const cacheHere = { openai: { promptCacheBreakpoint: { mode: 'explicit' } } };
  const longSystem = `You are a careful assistant. ${'Policy line. '.repeat(200)}`;

  it('promptCacheBreakpoint on the system prompt and a user part: Claude is asked to cache at those blocks (cache_control)', async () => {
    const mock = track(
      await startMock((req, res) =>
        answerClaude(req, res, [{ type: 'text', text: 'ok' }], 'end_turn', {
          input_tokens: 5,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 1,
        }),
      ),
    );
    const { chat } = await claudeRoute(mock.url);
    const out = await generateText({
      model: chat.chat('r'),
      maxRetries: 0,
      messages: [
        { role: 'system', content: longSystem, providerOptions: cacheHere },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'A long shared document.', providerOptions: cacheHere },
            { type: 'text', text: 'The question about it.' },
          ],
        },
      ],
    });
    expect(out.text).toBe('ok');
    const sent = mock.received[0]!.body;
    // The client asked for the prefix up to here to be cached: on Claude that is cache_control on the block.
    const system = sent.system;
    expect(Array.isArray(system)).toBe(true);
    const sysBlocks = system as Json[];
    expect(sysBlocks.at(-1)?.text).toBe(longSystem);
    expect(sysBlocks.at(-1)?.cache_control).toMatchObject({ type: 'ephemeral' });
    const user = lastUserTurn(sent);
    expect(user.map((b) => b.text)).toEqual(['A long shared document.', 'The question about it.']);
    expect(user[0]?.cache_control).toMatchObject({ type: 'ephemeral' });
    expect(user[1]?.cache_control).toBeUndefined();
    // Nothing of OpenAI's own field goes to Anthropic (it refuses unknown fields).
    expect(JSON.stringify(sent)).not.toContain('prompt_cache_breakpoint');
  });

  it('an OpenAI-dialect upstream gets the breakpoints and prompt_cache_options as the SDK wrote them', async () => {
    const mock = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'oai',
            kind: 'openai',
            base_url: `${mock.url}/v1`,
            api_key: 'sk-x',
            models: [{ name: 'gpt-5.6' }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['oai/gpt-5.6'] } },
      }),
    );
    const chat = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' });
    await generateText({
      model: chat.chat('r'),
      maxRetries: 0,
      providerOptions: { openai: { promptCacheOptions: { mode: 'explicit', ttl: '30m' } } },
      messages: [
        { role: 'system', content: longSystem, providerOptions: cacheHere },
        { role: 'user', content: 'hi' },
      ],
    });
    const sent = mock.received[0]!.body;
    expect(sent.prompt_cache_options).toEqual({ mode: 'explicit', ttl: '30m' });
    expect((sent.messages as Json[])[0]).toEqual({
      role: 'system',
      content: [{ type: 'text', text: longSystem, prompt_cache_breakpoint: { mode: 'explicit' } }],
    });
  });
});

describe('structured output beside tools on Claude (Output.object + a tool, streamed)', () => {
  it('the sentence Claude writes before its tool call streams before the call on the wire; the final object parses', async () => {
    const mock = track(
      await startMock((req, res) => {
        const u = {
          input_tokens: 20,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 12,
        };
        const hasResult = (req.body.messages as { content: unknown }[]).some(
          (m) => Array.isArray(m.content) && (m.content as Json[]).some((b) => b.type === 'tool_result'),
        );
        if (!hasResult)
          answerClaude(
            req,
            res,
            [
              { type: 'text', text: 'I will look up the weather in Oslo first.' },
              { type: 'tool_use', id: 'toolu_01', name: 'weather', input: { city: 'Oslo' } },
            ],
            'tool_use',
            u,
          );
        else answerClaude(req, res, [{ type: 'text', text: '{"city":"Oslo","tempC":21}' }], 'end_turn', u);
      }),
    );
    const { gw } = await claudeRoute(mock.url);
    // The wire as the SDK reads it: the gateway's SSE of each step.
    const wire: string[] = [];
    const chat = createOpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: 'k',
      fetch: async (url, init) => {
        const res = await fetch(url, init);
        wire.push(await res.clone().text());
        return res;
      },
    });
    const st = streamText({
      model: chat.chat('r'),
      prompt: 'weather in Oslo, as an object',
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
      output: Output.object({
        schema: jsonSchema<{ city: string; tempC: number }>({
          type: 'object',
          properties: { city: { type: 'string' }, tempC: { type: 'number' } },
          required: ['city', 'tempC'],
          additionalProperties: false,
        }),
      }),
    });
    for await (const _part of st.fullStream) void _part;
    expect(await st.output).toEqual({ city: 'Oslo', tempC: 21 });
    const steps = await st.steps;
    expect(steps[0]?.text).toBe('I will look up the weather in Oslo first.');
    // As Claude wrote it: the sentence streams before the call (it was held back until the answer's end,
    // after the call's chunks). How the SDK then orders its parts in Output mode is the SDK's.
    const first = wire[0]!;
    const sentence = first.indexOf('I will look up the weather in Oslo first.');
    expect(sentence).toBeGreaterThan(0);
    expect(sentence).toBeLessThan(first.indexOf('"tool_calls"'));
  });
});

describe('a streamed tool loop on Claude, part by part', () => {
  it('two parallel calls then text: fullStream parts in order, each call input whole, usage and finish per step', async () => {
    const mock = track(
      await startMock((req, res) => {
        const u = {
          input_tokens: 40,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 9,
        };
        const hasResult = (req.body.messages as { content: unknown }[]).some(
          (m) => Array.isArray(m.content) && (m.content as Json[]).some((b) => b.type === 'tool_result'),
        );
        if (!hasResult)
          answerClaude(
            req,
            res,
            [
              { type: 'text', text: 'Checking both.' },
              { type: 'tool_use', id: 'toolu_a', name: 'weather', input: { city: 'Oslo' } },
              { type: 'tool_use', id: 'toolu_b', name: 'weather', input: { city: 'Lima' } },
            ],
            'tool_use',
            u,
          );
        else answerClaude(req, res, [{ type: 'text', text: 'Oslo 21, Lima 21.' }], 'end_turn', u);
      }),
    );
    const { chat } = await claudeRoute(mock.url);
    const st = streamText({
      model: chat.chat('r'),
      prompt: 'weather in Oslo and Lima?',
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    const order: string[] = [];
    const finishes: { reason: string; input: number | undefined; output: number | undefined }[] = [];
    for await (const p of st.fullStream) {
      switch (p.type) {
        case 'tool-input-start':
        case 'tool-input-end':
          order.push(`${p.type}:${p.id}`);
          break;
        case 'tool-call':
        case 'tool-result':
          order.push(`${p.type}:${p.toolCallId}`);
          break;
        case 'text-delta':
          if (order.at(-1) !== 'text') order.push('text');
          break;
        case 'finish-step':
          order.push('finish-step');
          finishes.push({ reason: p.finishReason, input: p.usage.inputTokens, output: p.usage.outputTokens });
          break;
        case 'start-step':
        case 'finish':
          order.push(p.type);
          break;
        case 'error':
          order.push('error');
          break;
        default:
          break;
      }
    }
    expect(order).toEqual([
      'start-step',
      'text',
      // This SDK ends every call of a step at the step's end (StreamingToolCallTracker.flush), as it does on
      // a direct OpenAI stream: both inputs start, then each call ends and is made in turn.
      'tool-input-start:toolu_a',
      'tool-input-start:toolu_b',
      'tool-input-end:toolu_a',
      'tool-call:toolu_a',
      'tool-input-end:toolu_b',
      'tool-call:toolu_b',
      'tool-result:toolu_a',
      'tool-result:toolu_b',
      'finish-step',
      'start-step',
      'text',
      'finish-step',
      'finish',
    ]);
    expect(finishes).toEqual([
      { reason: 'tool-calls', input: 40, output: 9 },
      { reason: 'stop', input: 40, output: 9 },
    ]);
    expect((await st.steps)[0]?.toolCalls.map((c) => c.input)).toEqual([{ city: 'Oslo' }, { city: 'Lima' }]);
    // The second request answers both calls, each result under its own id.
    const second = mock.received[1]!.body;
    const results = lastUserTurn(second).filter((b) => b.type === 'tool_result');
    expect(results.map((b) => b.tool_use_id)).toEqual(['toolu_a', 'toolu_b']);
  });
});
