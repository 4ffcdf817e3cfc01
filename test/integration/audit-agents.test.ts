/**
 * Audit: realistic agent flows through the Vercel AI SDK and LangChain ChatOpenAI, over routes whose upstreams
 * are OpenAI-shaped mocks, Anthropic-shaped mocks (strictly validated as the Messages API does), and a mix with
 * failover between rounds of one conversation. Expectations come from SPEC §2/§4, the README and what each
 * library does against OpenAI directly.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import type { AIMessage } from '@langchain/core/messages';
import { HumanMessage, ToolMessage, type AIMessageChunk, type BaseMessage } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import {
  generateObject,
  generateText,
  jsonSchema,
  stepCountIs,
  streamObject,
  streamText,
  tool,
  type ToolSet,
} from 'ai';
import { describe, expect, it } from 'vitest';
import {
  contentError,
  toolsError,
  undefinedToolsError,
  unknownFieldError,
} from '../../src/sim/anthropic-validate.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Mocks

type Block =
  | { type: 'text'; text: string }
  | { type: 'tool_use'; id: string; name: string; input: Json }
  | { type: 'thinking'; thinking: string; signature: string };

/** One scripted Anthropic turn: an answer, a status, an error event after message_start, or a slow stream. */
type AnthTurn =
  | { blocks: Block[]; stop?: string; inTok: number; outTok: number; pieces?: number; gapMs?: number }
  | { status: number }
  | { errorEvent: true };

const sse = (event: string, data: Json): string => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

function split(s: string, n: number): string[] {
  if (s.length === 0) return [''];
  const size = Math.max(1, Math.ceil(s.length / n));
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes a scripted Anthropic answer (JSON or SSE) to `res`. */
async function writeAnth(res: ServerResponse, body: Json, turn: AnthTurn): Promise<void> {
  if ('status' in turn) {
    sendJson(res, turn.status, {
      type: 'error',
      error: {
        type: turn.status === 529 ? 'overloaded_error' : 'api_error',
        message: 'Internal server error',
      },
    });
    return;
  }
  const model = String(body.model);
  if ('errorEvent' in turn) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(
      sse('message_start', {
        type: 'message_start',
        message: {
          id: 'msg_x',
          type: 'message',
          role: 'assistant',
          model,
          content: [],
          stop_reason: null,
          usage: { input_tokens: 1, output_tokens: 1 },
        },
      }),
    );
    res.end(sse('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
    return;
  }
  const stop = turn.stop ?? (turn.blocks.some((b) => b.type === 'tool_use') ? 'tool_use' : 'end_turn');
  if (body.stream !== true) {
    sendJson(res, 200, {
      id: 'msg_1',
      type: 'message',
      role: 'assistant',
      model,
      content: turn.blocks,
      stop_reason: stop,
      stop_sequence: null,
      usage: { input_tokens: turn.inTok, output_tokens: turn.outTok },
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(
    sse('message_start', {
      type: 'message_start',
      message: {
        id: 'msg_1',
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: turn.inTok, output_tokens: 1 },
      },
    }),
  );
  const pieces = turn.pieces ?? 3;
  for (const [index, b] of turn.blocks.entries()) {
    if (res.destroyed) return;
    const start =
      b.type === 'text'
        ? { type: 'text', text: '' }
        : b.type === 'tool_use'
          ? { type: 'tool_use', id: b.id, name: b.name, input: {} }
          : { type: 'thinking', thinking: '', signature: '' };
    res.write(sse('content_block_start', { type: 'content_block_start', index, content_block: start }));
    const deltas =
      b.type === 'text'
        ? split(b.text, pieces).map((text) => ({ type: 'text_delta', text }))
        : b.type === 'tool_use'
          ? split(JSON.stringify(b.input), pieces).map((partial_json) => ({
              type: 'input_json_delta',
              partial_json,
            }))
          : [
              { type: 'thinking_delta', thinking: b.thinking },
              { type: 'signature_delta', signature: b.signature },
            ];
    for (const delta of deltas) {
      if (res.destroyed) return;
      res.write(sse('content_block_delta', { type: 'content_block_delta', index, delta }));
      if (turn.gapMs !== undefined) await sleep(turn.gapMs);
    }
    res.write(sse('content_block_stop', { type: 'content_block_stop', index }));
  }
  res.write(
    sse('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: stop, stop_sequence: null },
      usage: { output_tokens: turn.outTok },
    }),
  );
  res.end(sse('message_stop', { type: 'message_stop' }));
}

/**
 * With thinking on, the assistant turn whose tool_use the last user turn answers must start with a thinking
 * block (Anthropic: "Expected `thinking` or `redacted_thinking`, but found `tool_use`").
 */
function thinkingLoopError(b: Json, msgs: Json[]): { message: string } | undefined {
  const t = b.thinking as Json | undefined;
  if (t === undefined || t.type === 'disabled') return undefined;
  const lastAssistant = [...msgs].reverse().find((m) => m.role === 'assistant');
  if (lastAssistant === undefined || !Array.isArray(lastAssistant.content)) return undefined;
  const blocks = lastAssistant.content as Json[];
  if (!blocks.some((x) => x.type === 'tool_use')) return undefined;
  const first = blocks[0]?.type;
  if (first === 'thinking' || first === 'redacted_thinking') return undefined;
  return {
    message: `messages.${msgs.indexOf(lastAssistant)}.content.0.type: Expected \`thinking\` or \`redacted_thinking\`, but found \`${String(first)}\`. When \`thinking\` is enabled, a final \`assistant\` message must start with a thinking block (preceeding the lastmost set of \`tool_use\` and \`tool_result\` blocks).`,
  };
}

interface AnthMock {
  url: string;
  received: Received[];
  /** Per request: the Messages API's 400 message it would have answered, or undefined when valid. */
  errors: (string | undefined)[];
  closed: number;
  close(): Promise<void>;
}

async function anthMock(script: (body: Json, n: number) => AnthTurn): Promise<AnthMock> {
  const errors: (string | undefined)[] = [];
  const state = { closed: 0 };
  const m = await startMock(async (req, res, n) => {
    res.on('close', () => (state.closed += 1));
    const b = req.body;
    const msgs = (Array.isArray(b.messages) ? b.messages : []) as Json[];
    const err =
      unknownFieldError(b) ??
      (b.tools !== undefined ? toolsError(b.tools) : undefined) ??
      undefinedToolsError(msgs, b.tools) ??
      contentError(msgs) ??
      thinkingLoopError(b, msgs);
    errors[n] = err?.message;
    if (err !== undefined) {
      sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: err.message } });
      return;
    }
    await writeAnth(res, b, script(b, n));
  });
  const out: AnthMock = {
    url: m.url,
    received: m.received,
    errors,
    get closed() {
      return state.closed;
    },
    close: m.close,
  };
  return out;
}

interface OaiTurn {
  text?: string;
  calls?: { id: string; name: string; args: string }[];
  prompt: number;
  completion: number;
  status?: number;
  pieces?: number;
}

/** Writes a scripted OpenAI Chat Completions answer (JSON, or SSE with usage when asked). */
function writeOai(res: ServerResponse, body: Json, t: OaiTurn): void {
  if (t.status !== undefined) {
    sendJson(res, t.status, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
    return;
  }
  const usage = {
    prompt_tokens: t.prompt,
    completion_tokens: t.completion,
    total_tokens: t.prompt + t.completion,
  };
  const finish = t.calls !== undefined && t.calls.length > 0 ? 'tool_calls' : 'stop';
  const m = String(body.model);
  if (body.stream !== true) {
    sendJson(res, 200, {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1,
      model: m,
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: t.text ?? null,
            ...(t.calls !== undefined
              ? {
                  tool_calls: t.calls.map((c) => ({
                    id: c.id,
                    type: 'function',
                    function: { name: c.name, arguments: c.args },
                  })),
                }
              : {}),
          },
          finish_reason: finish,
        },
      ],
      usage,
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  let out = chunkFrame(m, { role: 'assistant', content: '' });
  if (t.text !== undefined)
    for (const p of split(t.text, t.pieces ?? 3)) out += chunkFrame(m, { content: p });
  for (const [index, c] of (t.calls ?? []).entries()) {
    out += chunkFrame(m, {
      tool_calls: [{ index, id: c.id, type: 'function', function: { name: c.name, arguments: '' } }],
    });
    for (const p of split(c.args, 2))
      out += chunkFrame(m, { tool_calls: [{ index, function: { arguments: p } }] });
  }
  out += chunkFrame(m, {}, finish);
  const so = body.stream_options as Json | undefined;
  if (so?.include_usage === true)
    out += `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: m, choices: [], usage })}\n\n`;
  res.end(`${out}data: [DONE]\n\n`);
}

async function oaiMock(script: (body: Json, n: number) => OaiTurn) {
  return startMock((req, res, n) => writeOai(res, req.body, script(req.body, n)));
}

const CLAUDE = 'claude-sonnet-4-5';

/** A gateway with routes anth (Claude), oai (OpenAI mock), mix (Claude first, then OpenAI) and dead (500s). */
async function gatewayFor(anthUrl: string, oaiUrl: string, deadUrl?: string) {
  const providers: Json[] = [
    { name: 'anth', kind: 'anthropic', base_url: anthUrl, api_key: 'sk-ant-a', models: [{ name: CLAUDE }] },
    { name: 'oai', kind: 'openai', base_url: `${oaiUrl}/v1`, api_key: 'sk-o', models: [{ name: 'gpt-4o' }] },
  ];
  const routes: Json = {
    anth: { strategy: 'priority', targets: [`anth/${CLAUDE}`] },
    oai: { strategy: 'priority', targets: ['oai/gpt-4o'] },
    mix: { strategy: 'priority', targets: [`anth/${CLAUDE}`, 'oai/gpt-4o'] },
  };
  if (deadUrl !== undefined) {
    providers.push({ name: 'dead', kind: 'openai', base_url: `${deadUrl}/v1`, models: [{ name: 'gpt-4o' }] });
    routes.dead = { strategy: 'priority', targets: ['dead/gpt-4o'] };
  }
  return track(await startGateway({ providers, routes }));
}

const weatherTools = (log: string[] = []) =>
  ({
    get_weather: tool({
      description: 'Weather of a city',
      inputSchema: jsonSchema<{ city: string }>({
        type: 'object',
        properties: { city: { type: 'string' } },
        required: ['city'],
        additionalProperties: false,
      }),
      execute: ({ city }) => {
        log.push(`weather:${city}`);
        return Promise.resolve({ city, sky: city === 'Oslo' ? 'rain' : 'sun' });
      },
    }),
    get_time: tool({
      description: 'Current time',
      inputSchema: jsonSchema<Record<string, never>>({ type: 'object', properties: {} }),
      execute: () => {
        log.push('time');
        return Promise.resolve('12:00');
      },
    }),
  }) satisfies ToolSet;

/** The tool_use ids in an Anthropic request and the tool_use_ids its tool_results answer. */
function anthToolIds(body: Json): { uses: string[]; results: string[] } {
  const uses: string[] = [];
  const results: string[] = [];
  for (const m of body.messages as Json[]) {
    if (!Array.isArray(m.content)) continue;
    for (const b of m.content as Json[]) {
      if (b.type === 'tool_use') uses.push(String(b.id));
      if (b.type === 'tool_result') results.push(String(b.tool_use_id));
    }
  }
  return { uses, results };
}

/** The tool call ids in an OpenAI request and the tool_call_ids of its tool messages. */
function oaiToolIds(body: Json): { uses: string[]; results: string[] } {
  const uses: string[] = [];
  const results: string[] = [];
  for (const m of body.messages as Json[]) {
    for (const c of (m.tool_calls ?? []) as Json[]) uses.push(String(c.id));
    if (m.role === 'tool') results.push(String(m.tool_call_id));
  }
  return { uses, results };
}

// The 4-step conversation: Claude calls, Claude fails -> OpenAI calls, Claude calls, Claude fails -> OpenAI answers.
const mixAnth =
  (failure: AnthTurn) =>
  (_b: Json, n: number): AnthTurn => {
    if (n === 0)
      return {
        blocks: [{ type: 'tool_use', id: 'toolu_a1', name: 'get_weather', input: { city: 'Oslo' } }],
        inTok: 100,
        outTok: 10,
      };
    if (n === 2)
      return {
        blocks: [
          { type: 'text', text: 'And Bergen.' },
          { type: 'tool_use', id: 'toolu_c3', name: 'get_weather', input: { city: 'Bergen' } },
        ],
        inTok: 140,
        outTok: 12,
      };
    return failure;
  };
const mixOai = (_b: Json, n: number): OaiTurn =>
  n === 0
    ? { calls: [{ id: 'call_b2', name: 'get_time', args: '{}' }], prompt: 120, completion: 8 }
    : { text: 'Oslo rain, Bergen sun, 12:00.', prompt: 160, completion: 5 };

function checkMixBodies(anth: AnthMock, oai: { received: Received[] }): void {
  expect(anth.errors).toEqual([undefined, undefined, undefined, undefined]);
  expect(anth.received).toHaveLength(4);
  expect(oai.received).toHaveLength(2);
  // Claude's third turn sees the OpenAI-minted id paired with its result, and its own earlier id.
  const a2 = anthToolIds(anth.received[2]!.body);
  expect(a2.uses).toHaveLength(2);
  expect(a2.results).toEqual(a2.uses);
  const a3 = anthToolIds(anth.received[3]!.body);
  expect(a3.uses).toHaveLength(3);
  expect(a3.results).toEqual(a3.uses);
  // OpenAI's last turn gets every call with the ids the client holds.
  const o1 = oaiToolIds(oai.received[1]!.body);
  expect(o1.uses).toEqual(['toolu_a1', 'call_b2', 'toolu_c3']);
  expect(o1.results).toEqual(['toolu_a1', 'call_b2', 'toolu_c3']);
}

// ---------------------------------------------------------------------------------------------

describe('Vercel AI SDK agent flows', () => {
  it('generateText: 3 tool rounds with the upstream changing between rounds (Claude, OpenAI, Claude, OpenAI)', async () => {
    const anth = track(await anthMock(mixAnth({ status: 500 })));
    const oai = track(await oaiMock(mixOai));
    const gw = await gatewayFor(anth.url, oai.url);
    const log: string[] = [];
    let finished: { inputTokens?: number; outputTokens?: number } | undefined;
    const out = await generateText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('mix'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: weatherTools(log),
      stopWhen: stepCountIs(5),
      maxRetries: 0,
      onFinish: (e) => {
        finished = e.totalUsage;
      },
    });
    expect(out.steps.map((s) => s.toolCalls.map((c) => c.toolCallId))).toEqual([
      ['toolu_a1'],
      ['call_b2'],
      ['toolu_c3'],
      [],
    ]);
    expect(log).toEqual(['weather:Oslo', 'time', 'weather:Bergen']);
    expect(out.text).toBe('Oslo rain, Bergen sun, 12:00.');
    expect(out.steps.map((s) => s.response.headers?.['x-router-provider'])).toEqual([
      'anth',
      'oai',
      'anth',
      'oai',
    ]);
    expect(out.steps.map((s) => s.usage.inputTokens)).toEqual([100, 120, 140, 160]);
    expect(out.totalUsage.inputTokens).toBe(520);
    expect(out.totalUsage.outputTokens).toBe(35);
    expect(finished?.inputTokens).toBe(520);
    checkMixBodies(anth, oai);
  });

  it('streamText: the same loop streamed, Claude failing by a 200 then an error event before content', async () => {
    const anth = track(await anthMock(mixAnth({ errorEvent: true })));
    const oai = track(await oaiMock(mixOai));
    const gw = await gatewayFor(anth.url, oai.url);
    const log: string[] = [];
    const errors: unknown[] = [];
    const st = streamText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('mix'),
      prompt: 'Weather in Oslo and Bergen, and the time?',
      tools: weatherTools(log),
      stopWhen: stepCountIs(5),
      maxRetries: 0,
      onError: ({ error }) => void errors.push(error),
    });
    const text = await st.text;
    const steps = await st.steps;
    const total = await st.totalUsage;
    expect(errors).toEqual([]);
    expect(steps.map((s) => s.toolCalls.map((c) => c.toolCallId))).toEqual([
      ['toolu_a1'],
      ['call_b2'],
      ['toolu_c3'],
      [],
    ]);
    expect(steps[2]!.text).toBe('And Bergen.');
    expect(text).toBe('Oslo rain, Bergen sun, 12:00.');
    expect(log).toEqual(['weather:Oslo', 'time', 'weather:Bergen']);
    expect(steps.map((s) => s.usage.inputTokens)).toEqual([100, 120, 140, 160]);
    expect(total.inputTokens).toBe(520);
    expect(total.outputTokens).toBe(35);
    checkMixBodies(anth, oai);
  });

  it('prepareStep, toolChoice required/named and activeTools on Claude; a last step with no active tools', async () => {
    const anth = track(
      await anthMock((b, n) => {
        if (n === 0)
          return {
            blocks: [{ type: 'tool_use', id: 'toolu_t', name: 'get_time', input: {} }],
            inTok: 10,
            outTok: 2,
          };
        if (n === 1)
          return {
            blocks: [{ type: 'tool_use', id: 'toolu_w', name: 'get_weather', input: { city: 'Oslo' } }],
            inTok: 20,
            outTok: 3,
          };
        return {
          blocks: [{ type: 'text', text: `done ${String(Array.isArray(b.tools))}` }],
          inTok: 30,
          outTok: 4,
        };
      }),
    );
    const oai = track(await oaiMock(() => ({ text: 'x', prompt: 1, completion: 1 })));
    const gw = await gatewayFor(anth.url, oai.url);
    const out = await generateText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('anth'),
      prompt: 'Time, then weather in Oslo.',
      tools: weatherTools(),
      toolChoice: 'required',
      stopWhen: stepCountIs(5),
      maxRetries: 0,
      prepareStep: ({ stepNumber }) => {
        if (stepNumber === 0)
          return { toolChoice: { type: 'tool', toolName: 'get_time' }, activeTools: ['get_time'] };
        if (stepNumber === 1) return { activeTools: ['get_weather'] };
        // As against OpenAI: the history holds tool calls, but no tool is offered any more.
        return { activeTools: [], toolChoice: 'none' };
      },
    });
    // Each step's request is one Claude takes (a history with tool_use needs tools defined, SPEC §4 translation).
    expect(anth.errors).toEqual([undefined, undefined, undefined]);
    const [b0, b1] = anth.received.map((r) => r.body);
    expect(b0!.tool_choice).toMatchObject({ type: 'tool', name: 'get_time' });
    expect((b0!.tools as Json[]).map((t) => t.name)).toEqual(['get_time']);
    expect(b1!.tool_choice).toMatchObject({ type: 'any' });
    expect((b1!.tools as Json[]).map((t) => t.name)).toEqual(['get_weather']);
    expect(out.steps).toHaveLength(3);
    expect(out.text).toMatch(/^done/);
  });

  it('experimental_repairToolCall: malformed tool arguments reach the repair hook as they do from OpenAI directly', async () => {
    const script = (_b: Json, n: number): OaiTurn =>
      n === 0
        ? {
            calls: [{ id: 'call_1', name: 'get_weather', args: '{"city": "Oslo"' }],
            prompt: 10,
            completion: 3,
          }
        : { text: 'ok', prompt: 12, completion: 1 };
    const run = async (baseURL: string, model: string, stream: boolean) => {
      const seen: string[] = [];
      const opts = {
        model: createOpenAI({ baseURL, apiKey: 'k' }).chat(model),
        prompt: 'Weather?',
        tools: weatherTools(),
        stopWhen: stepCountIs(3),
        maxRetries: 0,
        experimental_repairToolCall: ({
          toolCall,
        }: {
          toolCall: { input: string } & Record<string, unknown>;
        }) => {
          seen.push(toolCall.input);
          return Promise.resolve({ ...toolCall, input: '{"city":"Oslo"}' } as never);
        },
      };
      if (stream) {
        const st = streamText(opts);
        return { text: await st.text, steps: (await st.steps).length, seen };
      }
      const g = await generateText(opts);
      return { text: g.text, steps: g.steps.length, seen };
    };
    for (const stream of [false, true]) {
      const direct = track(await oaiMock(script));
      const direct2 = track(await oaiMock(script));
      const anth = track(await anthMock(() => ({ status: 500 })));
      const gw = await gatewayFor(anth.url, direct2.url);
      const a = await run(`${direct.url}/v1`, 'gpt-4o', stream);
      const b = await run(`${gw.url}/v1`, 'oai', stream);
      expect(b).toEqual(a);
      expect(a.seen).toEqual(['{"city": "Oslo"']);
    }
  });

  it('generateObject with a nested schema (objects in arrays), output array and enum, on Claude and OpenAI', async () => {
    const plan = {
      title: 'Trip',
      days: [
        { day: 1, stops: [{ city: 'Oslo', hours: 3 }], notes: ['rain'] },
        { day: 2, stops: [], notes: [] },
      ],
    };
    const answers = (b: Json): string => {
      const s = JSON.stringify(b);
      if (s.includes('elements')) return JSON.stringify({ elements: [{ city: 'Oslo' }, { city: 'Bergen' }] });
      if (s.includes('sunny')) return JSON.stringify({ result: 'sunny' });
      return JSON.stringify(plan);
    };
    const anth = track(
      await anthMock((b) => ({ blocks: [{ type: 'text', text: answers(b) }], inTok: 50, outTok: 20 })),
    );
    const oai = track(await oaiMock((b) => ({ text: answers(b), prompt: 50, completion: 20 })));
    const gw = await gatewayFor(anth.url, oai.url);
    const schema = jsonSchema<typeof plan>({
      type: 'object',
      properties: {
        title: { type: 'string' },
        days: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              day: { type: 'integer' },
              stops: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: { city: { type: 'string' }, hours: { type: 'number' } },
                  required: ['city', 'hours'],
                  additionalProperties: false,
                },
              },
              notes: { type: 'array', items: { type: 'string' } },
            },
            required: ['day', 'stops', 'notes'],
            additionalProperties: false,
          },
        },
      },
      required: ['title', 'days'],
      additionalProperties: false,
    });
    const city = jsonSchema<{ city: string }>({
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
      additionalProperties: false,
    });
    for (const route of ['anth', 'oai']) {
      const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat(route);
      const o = await generateObject({ model, schema, prompt: 'Plan a trip', maxRetries: 0 });
      expect(o.object).toEqual(plan);
      expect(o.usage.inputTokens).toBe(50);
      const arr = await generateObject({
        model,
        output: 'array',
        schema: city,
        prompt: 'Cities',
        maxRetries: 0,
      });
      expect(arr.object).toEqual([{ city: 'Oslo' }, { city: 'Bergen' }]);
      const en = await generateObject({
        model,
        output: 'enum',
        enum: ['sunny', 'rainy'],
        prompt: 'Weather?',
        maxRetries: 0,
      });
      expect(en.object).toBe('sunny');
    }
    expect(anth.errors.every((e) => e === undefined)).toBe(true);
    // The schema reached Claude (README: response_format becomes an instruction with the schema).
    expect(JSON.stringify(anth.received[0]!.body)).toContain('stops');
  });

  it('streamObject output array: elementStream yields each element on Claude as on OpenAI directly', async () => {
    const text = JSON.stringify({ elements: [{ city: 'Oslo' }, { city: 'Bergen' }, { city: 'Tromsø' }] });
    const anth = track(
      await anthMock(() => ({ blocks: [{ type: 'text', text }], inTok: 9, outTok: 9, pieces: 8 })),
    );
    const oai = track(await oaiMock(() => ({ text, prompt: 9, completion: 9, pieces: 8 })));
    const gw = await gatewayFor(anth.url, oai.url);
    const city = jsonSchema<{ city: string }>({
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
      additionalProperties: false,
    });
    const run = async (baseURL: string, model: string) => {
      const so = streamObject({
        model: createOpenAI({ baseURL, apiKey: 'k' }).chat(model),
        output: 'array',
        schema: city,
        prompt: 'Cities',
        maxRetries: 0,
      });
      const els: unknown[] = [];
      for await (const e of so.elementStream) els.push(e);
      return { els, obj: await so.object, usage: (await so.usage).inputTokens };
    };
    const direct = await run(`${oai.url}/v1`, 'gpt-4o');
    expect(direct.els).toHaveLength(3);
    expect(await run(`${gw.url}/v1`, 'anth')).toEqual(direct);
    expect(await run(`${gw.url}/v1`, 'oai')).toEqual(direct);
    expect(anth.errors).toEqual([undefined]);
  });

  it('reasoningEffort in a tool loop on Claude: the SDK cannot send thinking back, the next round is still one Claude takes', async () => {
    for (const route of ['anth', 'mix']) {
      const anth = track(
        await anthMock((b, n) =>
          n === 0
            ? {
                blocks: [
                  { type: 'thinking', thinking: 'Need the weather.', signature: 'sig-1' },
                  { type: 'tool_use', id: 'toolu_r1', name: 'get_weather', input: { city: 'Oslo' } },
                ],
                inTok: 30,
                outTok: 40,
              }
            : route === 'mix' && n === 1
              ? { status: 500 }
              : {
                  blocks: [
                    { type: 'text', text: `rain (${b.thinking === undefined ? 'no' : 'with'} thinking)` },
                  ],
                  inTok: 50,
                  outTok: 5,
                },
        ),
      );
      const oai = track(
        await oaiMock((_b, n) =>
          n === 0
            ? { calls: [{ id: 'call_r2', name: 'get_time', args: '{}' }], prompt: 40, completion: 3 }
            : { text: 'x', prompt: 1, completion: 1 },
        ),
      );
      const gw = await gatewayFor(anth.url, oai.url);
      const out = await generateText({
        model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat(route),
        prompt: 'Weather in Oslo?',
        tools: weatherTools(),
        stopWhen: stepCountIs(4),
        maxRetries: 0,
        providerOptions: { openai: { reasoningEffort: 'low' } },
      });
      // A round after a tool call without thinking blocks runs without thinking (README, Anthropic upstreams).
      expect(anth.errors.every((e) => e === undefined)).toBe(true);
      expect(anth.received[0]!.body.thinking).toBeDefined();
      expect(out.text).toBe('rain (no thinking)');
    }
  });

  it('abortSignal during the second step of a streamed tool loop: the upstream request is closed, no failover', async () => {
    const anth = track(
      await anthMock((_b, n) =>
        n === 0
          ? {
              blocks: [{ type: 'tool_use', id: 'toolu_1', name: 'get_time', input: {} }],
              inTok: 5,
              outTok: 1,
            }
          : {
              blocks: [{ type: 'text', text: 'a'.repeat(200) }],
              inTok: 5,
              outTok: 50,
              pieces: 100,
              gapMs: 30,
            },
      ),
    );
    const oai = track(await oaiMock(() => ({ text: 'fallback', prompt: 1, completion: 1 })));
    const gw = await gatewayFor(anth.url, oai.url);
    const ac = new AbortController();
    let aborted = false;
    const st = streamText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('mix'),
      prompt: 'Time?',
      tools: weatherTools(),
      stopWhen: stepCountIs(5),
      maxRetries: 0,
      abortSignal: ac.signal,
      onAbort: () => void (aborted = true),
      onError: () => undefined,
    });
    let deltas = 0;
    try {
      for await (const p of st.fullStream) {
        if (p.type === 'text-delta' && ++deltas === 2) ac.abort();
      }
    } catch {
      /* an abort may surface as a throw */
    }
    for (let i = 0; i < 50 && anth.closed < 2; i++) await sleep(20);
    expect(aborted).toBe(true);
    expect(anth.received).toHaveLength(2);
    expect(anth.closed).toBe(2);
    expect(oai.received).toHaveLength(0);
  });
});

// ---------------------------------------------------------------------------------------------

const lcWeather = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

function lc(url: string, model: string, extra: Record<string, unknown> = {}): ChatOpenAI {
  return new ChatOpenAI({
    model,
    apiKey: 'k',
    configuration: { baseURL: `${url}/v1` },
    maxRetries: 0,
    ...extra,
  });
}

// (invoke with streaming: true makes LangChain estimate tokens with tiktoken, fetched off loopback: stream() instead.)
async function concatStream(s: AsyncIterable<AIMessageChunk>): Promise<AIMessageChunk> {
  let acc: AIMessageChunk | undefined;
  for await (const c of s) acc = acc === undefined ? c : acc.concat(c);
  return acc!;
}

describe('LangChain agent flows', () => {
  it('bindTools + a manual tool loop with ToolMessages across a failover mid-conversation (JSON and stream)', async () => {
    for (const stream of [false, true]) {
      const anth = track(await anthMock(mixAnth({ status: 529 })));
      const oai = track(await oaiMock(mixOai));
      const gw = await gatewayFor(anth.url, oai.url);
      const model = lc(gw.url, 'mix').bindTools([
        lcWeather,
        {
          type: 'function',
          function: { name: 'get_time', description: 'Time', parameters: { type: 'object', properties: {} } },
        },
      ]);
      const msgs: BaseMessage[] = [new HumanMessage('Weather in Oslo and Bergen, and the time?')];
      const ids: string[] = [];
      const usage: number[] = [];
      for (let round = 0; round < 5; round++) {
        const ai = stream ? await concatStream(await model.stream(msgs)) : await model.invoke(msgs);
        msgs.push(ai);
        usage.push(ai.usage_metadata?.input_tokens ?? -1);
        if (!ai.tool_calls || ai.tool_calls.length === 0) break;
        for (const c of ai.tool_calls) {
          ids.push(String(c.id));
          const result = c.name === 'get_time' ? '12:00' : JSON.stringify({ city: c.args.city, sky: 'rain' });
          msgs.push(new ToolMessage({ content: result, tool_call_id: String(c.id) }));
        }
      }
      expect(ids).toEqual(['toolu_a1', 'call_b2', 'toolu_c3']);
      expect((msgs.at(-1) as AIMessage).content).toBe('Oslo rain, Bergen sun, 12:00.');
      expect(usage).toEqual([100, 120, 140, 160]);
      checkMixBodies(anth, oai);
    }
  });

  it('withStructuredOutput includeRaw (jsonSchema and functionCalling) with a nested schema on Claude and OpenAI', async () => {
    const value = { name: 'Ada', langs: [{ lang: 'en', level: 5 }], tags: ['x'] };
    const anth = track(
      await anthMock((b) =>
        Array.isArray(b.tools)
          ? {
              blocks: [
                { type: 'tool_use', id: 'toolu_s', name: String((b.tools as Json[])[0]!.name), input: value },
              ],
              inTok: 7,
              outTok: 7,
            }
          : { blocks: [{ type: 'text', text: JSON.stringify(value) }], inTok: 7, outTok: 7 },
      ),
    );
    const oai = track(
      await oaiMock((b) =>
        Array.isArray(b.tools)
          ? {
              calls: [
                {
                  id: 'call_s',
                  name: String(((b.tools as Json[])[0]!.function as Json).name),
                  args: JSON.stringify(value),
                },
              ],
              prompt: 7,
              completion: 7,
            }
          : { text: JSON.stringify(value), prompt: 7, completion: 7 },
      ),
    );
    const gw = await gatewayFor(anth.url, oai.url);
    const schema = {
      title: 'person',
      type: 'object',
      properties: {
        name: { type: 'string' },
        langs: {
          type: 'array',
          items: {
            type: 'object',
            properties: { lang: { type: 'string' }, level: { type: 'integer' } },
            required: ['lang', 'level'],
            additionalProperties: false,
          },
        },
        tags: { type: 'array', items: { type: 'string' } },
      },
      required: ['name', 'langs', 'tags'],
      additionalProperties: false,
    };
    for (const method of ['jsonSchema', 'functionCalling'] as const) {
      for (const [url, model] of [
        [oai.url, 'gpt-4o'],
        [gw.url, 'anth'],
        [gw.url, 'oai'],
      ] as const) {
        const r = await lc(url, model)
          .withStructuredOutput(schema, { method, includeRaw: true })
          .invoke('Who?');
        expect(r.parsed).toEqual(value);
        expect((r.raw as AIMessage).usage_metadata?.input_tokens).toBe(7);
      }
    }
    expect(anth.errors.every((e) => e === undefined)).toBe(true);
  });

  it('withStructuredOutput functionCalling .stream(): partial objects on Claude as from OpenAI directly', async () => {
    const value = {
      city: 'Oslo',
      days: [
        { d: 1, sky: 'rain' },
        { d: 2, sky: 'sun' },
      ],
    };
    const anth = track(
      await anthMock((b) => ({
        blocks: [
          { type: 'tool_use', id: 'toolu_s', name: String((b.tools as Json[])[0]!.name), input: value },
        ],
        inTok: 5,
        outTok: 5,
        pieces: 6,
      })),
    );
    const oai = track(
      await oaiMock((b) => ({
        calls: [
          {
            id: 'call_s',
            name: String(((b.tools as Json[])[0]!.function as Json).name),
            args: JSON.stringify(value),
          },
        ],
        prompt: 5,
        completion: 5,
      })),
    );
    const gw = await gatewayFor(anth.url, oai.url);
    const schema = {
      title: 'forecast',
      type: 'object',
      properties: {
        city: { type: 'string' },
        days: {
          type: 'array',
          items: {
            type: 'object',
            properties: { d: { type: 'integer' }, sky: { type: 'string' } },
            required: ['d', 'sky'],
          },
        },
      },
      required: ['city', 'days'],
    };
    for (const [url, model] of [
      [oai.url, 'gpt-4o'],
      [gw.url, 'anth'],
    ] as const) {
      const parts: unknown[] = [];
      for await (const p of await lc(url, model)
        .withStructuredOutput(schema, { method: 'functionCalling' })
        .stream('Forecast?'))
        parts.push(p);
      expect(parts.at(-1)).toEqual(value);
    }
    expect(anth.errors).toEqual([undefined]);
  });

  it('batch with maxConcurrency over the mixed route: each answer to its own input, at most 2 upstream calls at once', async () => {
    let inFlight = 0;
    let peak = 0;
    const echo = (b: Json): string => {
      const msgs = b.messages as Json[];
      const last = msgs.at(-1)!;
      const c = last.content;
      return `re:${typeof c === 'string' ? c : String(((c as Json[])[0] ?? {}).text)}`;
    };
    const anth = track(
      await startMock(async (req, res, n) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await sleep(40);
        inFlight--;
        await writeAnth(
          res,
          req.body,
          n % 2 === 1
            ? { status: 500 }
            : { blocks: [{ type: 'text', text: echo(req.body) }], inTok: 3, outTok: 2 },
        );
      }),
    );
    const oai = track(
      await startMock(async (req, res) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await sleep(40);
        inFlight--;
        writeOai(res, req.body, { text: echo(req.body), prompt: 3, completion: 2 });
      }),
    );
    const gw = await gatewayFor(anth.url, oai.url);
    const inputs = ['a', 'b', 'c', 'd', 'e', 'f'];
    const out = await lc(gw.url, 'mix').batch(inputs, { maxConcurrency: 2 });
    expect(out.map((m) => m.content)).toEqual(inputs.map((i) => `re:${i}`));
    expect(peak).toBeLessThanOrEqual(2);
  });

  it('stream with streamUsage and handleLLMNewToken: same tokens and usage on Claude as from OpenAI directly', async () => {
    const text = 'The quick brown fox jumps over the lazy dog.';
    const anth = track(
      await anthMock(() => ({ blocks: [{ type: 'text', text }], inTok: 11, outTok: 6, pieces: 6 })),
    );
    const oai = track(await oaiMock(() => ({ text, prompt: 11, completion: 6, pieces: 6 })));
    const gw = await gatewayFor(anth.url, oai.url);
    const run = async (url: string, model: string) => {
      const tokens: string[] = [];
      const m = lc(url, model, { streamUsage: true });
      const chunks = [];
      for await (const c of await m.stream('Say it', {
        callbacks: [{ handleLLMNewToken: (t: string) => void tokens.push(t) }],
      }))
        chunks.push(c);
      const u = chunks.reduce<{ i: number; o: number }>(
        (acc, c) => ({
          i: acc.i + (c.usage_metadata?.input_tokens ?? 0),
          o: acc.o + (c.usage_metadata?.output_tokens ?? 0),
        }),
        { i: 0, o: 0 },
      );
      return {
        text: chunks.map((c) => c.content).join(''),
        tokens: tokens.filter((t) => t !== '').join('|'),
        u,
      };
    };
    const direct = await run(oai.url, 'gpt-4o');
    expect(direct.u).toEqual({ i: 11, o: 6 });
    expect(await run(gw.url, 'oai')).toEqual(direct);
    expect(await run(gw.url, 'anth')).toEqual(direct);
  });

  it('withFallbacks: a route whose every upstream fails (502) falls back to a second model name on the gateway', async () => {
    const anth = track(
      await anthMock(() => ({ blocks: [{ type: 'text', text: 'from claude' }], inTok: 4, outTok: 2 })),
    );
    const oai = track(await oaiMock(() => ({ text: 'x', prompt: 1, completion: 1 })));
    const dead = track(await oaiMock(() => ({ status: 500, prompt: 0, completion: 0 })));
    const gw = await gatewayFor(anth.url, oai.url, dead.url);
    const chain = lc(gw.url, 'dead').withFallbacks([lc(gw.url, 'anth')]);
    const r = await chain.invoke('hi');
    expect(r.content).toBe('from claude');
    let streamed = '';
    for await (const c of await lc(gw.url, 'dead', { streaming: true })
      .withFallbacks([lc(gw.url, 'anth', { streaming: true })])
      .stream('hi'))
      streamed += String(c.content);
    expect(streamed).toBe('from claude');
    expect(dead.received.length).toBeGreaterThanOrEqual(2);
  });
});
