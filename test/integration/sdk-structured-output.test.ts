/**
 * Audit lens: structured output and tools END TO END through the real SDKs (Vercel AI SDK chat API, LangChain
 * ChatOpenAI, the openai SDK helpers), on an OpenAI-dialect upstream and on an Anthropic upstream the gateway
 * translates for. The mocks decide their answer from what they receive, as the real APIs do: a tool offered is
 * called (all of them in parallel unless told otherwise) with input made from its schema; a JSON schema asked
 * for (response_format, or on Anthropic the gateway's system instruction carrying it) is answered with an
 * object made from that schema. A translation slip shows as a wrong object, a missing tool call, an SDK error
 * or a wrong finish reason. Anthropic requests are checked with the simulator's Messages API rules.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import type { AIMessageChunk } from '@langchain/core/messages';
import { HumanMessage, ToolMessage, type BaseMessage } from '@langchain/core/messages';
import { tool as lcTool } from '@langchain/core/tools';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject, generateText, Output, stepCountIs, streamObject, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { zodFunction, zodResponseFormat } from 'openai/helpers/zod';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  contentError,
  thinkingBudget,
  toolsError,
  undefinedToolsError,
  unknownFieldError,
} from '../../src/sim/anthropic-validate.js';
import { startSimulator } from '../../src/sim/index.js';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Values made from a JSON schema, deterministically (what a model that obeys the schema would write)

function resolveRef(root: Json, ref: string): Json {
  const path = ref.replace(/^#\//, '').split('/');
  let at: unknown = root;
  for (const p of path) at = (at as Json)[p];
  return at as Json;
}

function sample(schema: unknown, root: Json, name = 'v'): unknown {
  if (typeof schema !== 'object' || schema === null) return null;
  const s = schema as Json;
  if (typeof s.$ref === 'string') return sample(resolveRef(root, s.$ref), root, name);
  if (Array.isArray(s.enum)) return s.enum[0];
  if ('const' in s) return s.const;
  const alt = (s.anyOf ?? s.oneOf) as unknown[] | undefined;
  if (Array.isArray(alt)) {
    const pick = alt.find((a) => (a as Json).type !== 'null') ?? alt[0];
    return sample(pick, root, name);
  }
  let type = s.type;
  if (Array.isArray(type)) type = type.find((t) => t !== 'null') ?? type[0];
  switch (type) {
    case 'object': {
      const out: Json = {};
      for (const [k, v] of Object.entries((s.properties ?? {}) as Json)) out[k] = sample(v, root, k);
      return out;
    }
    case 'array':
      return [sample(s.items, root, `${name}0`), sample(s.items, root, `${name}1`)];
    case 'string':
      return `${name}-text`;
    case 'integer':
      return 7;
    case 'number':
      return 2.5;
    case 'boolean':
      return true;
    case 'null':
      return null;
    default:
      return `${name}-any`;
  }
}

const fromSchema = (schema: unknown): unknown => sample(schema, (schema ?? {}) as Json);

function split(s: string, n: number): string[] {
  if (s.length === 0) return [''];
  const size = Math.max(1, Math.ceil(s.length / n));
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Anthropic upstream: answers from what it receives

type AnthBlock =
  | { type: 'text'; text: string }
  | { type: 'tool_use'; id: string; name: string; input: Json }
  | { type: 'thinking'; thinking: string; signature: string };

const THOUGHT = {
  type: 'thinking',
  thinking: 'Considering the tools.',
  signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3h',
} as const;

/** The schema the gateway's response_format instruction carries in `system`, if any. */
function schemaInSystem(system: unknown): unknown {
  const text =
    typeof system === 'string'
      ? system
      : Array.isArray(system)
        ? (system as Json[]).map((b) => String(b.text ?? '')).join('\n\n')
        : '';
  const at = text.indexOf('JSON Schema');
  if (at < 0) return /JSON object/.test(text) ? {} : undefined;
  const nl = text.indexOf('\n', at);
  return JSON.parse(text.slice(nl + 1)) as unknown;
}

function lastIsToolResult(messages: Json[]): boolean {
  const last = messages.at(-1);
  return (
    last?.role === 'user' &&
    Array.isArray(last.content) &&
    (last.content as Json[]).some((b) => b.type === 'tool_result')
  );
}

interface AnthOpts {
  /** Text Claude writes before its tool calls. */
  preface?: string;
  inTok?: number;
  outTok?: number;
  pieces?: number;
  cacheRead?: number;
  /** Answer in this form whatever `stream` asked (a server or proxy that ignores `stream`). */
  form?: 'json' | 'sse';
}

let toolSeq = 0;

function anthDecide(b: Json, o: AnthOpts): { blocks: AnthBlock[]; stop: string } {
  const d = anthDecide0(b, o);
  const t = b.thinking as Json | undefined;
  if (t !== undefined && t.type !== 'disabled') d.blocks.unshift({ ...THOUGHT });
  return d;
}

function anthDecide0(b: Json, o: AnthOpts): { blocks: AnthBlock[]; stop: string } {
  const messages = (b.messages ?? []) as Json[];
  const tools = (Array.isArray(b.tools) ? b.tools : []) as Json[];
  const choice = (b.tool_choice ?? {}) as Json;
  if (tools.length > 0 && choice.type !== 'none' && (!lastIsToolResult(messages) || choice.type === 'tool')) {
    let picked = choice.type === 'tool' ? tools.filter((t) => t.name === choice.name) : tools;
    if (choice.disable_parallel_tool_use === true) picked = picked.slice(0, 1);
    const blocks: AnthBlock[] = o.preface ? [{ type: 'text', text: o.preface }] : [];
    for (const t of picked)
      blocks.push({
        type: 'tool_use',
        id: `toolu_01${String(++toolSeq).padStart(4, '0')}Xy`,
        name: String(t.name),
        input: fromSchema(t.input_schema) as Json,
      });
    return { blocks, stop: 'tool_use' };
  }
  const schema = schemaInSystem(b.system);
  if (schema !== undefined)
    return { blocks: [{ type: 'text', text: JSON.stringify(fromSchema(schema)) }], stop: 'end_turn' };
  if (lastIsToolResult(messages)) {
    const results = ((messages.at(-1)!.content as Json[]) ?? [])
      .filter((x) => x.type === 'tool_result')
      .map((x) => (typeof x.content === 'string' ? x.content : JSON.stringify(x.content)));
    return { blocks: [{ type: 'text', text: `Results: ${results.join(' | ')}` }], stop: 'end_turn' };
  }
  return { blocks: [{ type: 'text', text: 'Plain answer.' }], stop: 'end_turn' };
}

function writeAnth(res: ServerResponse, b: Json, o: AnthOpts): void {
  const { blocks, stop } = anthDecide(b, o);
  const inTok = o.inTok ?? 40;
  const outTok = o.outTok ?? 9;
  const usage: Json = { input_tokens: inTok, output_tokens: outTok };
  if (o.cacheRead !== undefined) {
    usage.cache_read_input_tokens = o.cacheRead;
    usage.cache_creation_input_tokens = 0;
  }
  const model = String(b.model);
  if (o.form === 'json' || (o.form === undefined && b.stream !== true)) {
    sendJson(res, 200, {
      id: 'msg_01AbCdEf',
      type: 'message',
      role: 'assistant',
      model,
      content: blocks,
      stop_reason: stop,
      stop_sequence: null,
      usage,
    });
    return;
  }
  const events: Json[] = [
    {
      type: 'message_start',
      message: {
        id: 'msg_01AbCdEf',
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { ...usage, output_tokens: 1 },
      },
    },
  ];
  for (const [index, blk] of blocks.entries()) {
    events.push({
      type: 'content_block_start',
      index,
      content_block:
        blk.type === 'text'
          ? { type: 'text', text: '' }
          : blk.type === 'thinking'
            ? { type: 'thinking', thinking: '', signature: '' }
            : { type: 'tool_use', id: blk.id, name: blk.name, input: {} },
    });
    if (index === 0) events.push({ type: 'ping' });
    const parts: Json[] =
      blk.type === 'thinking'
        ? [
            { type: 'thinking_delta', thinking: blk.thinking },
            { type: 'signature_delta', signature: blk.signature },
          ]
        : blk.type === 'text'
          ? split(blk.text, o.pieces ?? 4).map((text) => ({ type: 'text_delta', text }))
          : [{ type: 'input_json_delta', partial_json: '' } as Json].concat(
              split(JSON.stringify(blk.input), o.pieces ?? 4).map((partial_json) => ({
                type: 'input_json_delta',
                partial_json,
              })),
            );
    for (const delta of parts) events.push({ type: 'content_block_delta', index, delta });
    events.push({ type: 'content_block_stop', index });
  }
  events.push({
    type: 'message_delta',
    delta: { stop_reason: stop, stop_sequence: null },
    usage: { output_tokens: outTok },
  });
  events.push({ type: 'message_stop' });
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(events.map(anthropicSseFrame).join(''));
}

async function anthUpstream(o: AnthOpts = {}) {
  const errors: (string | undefined)[] = [];
  const m = await startMock((req, res, n) => {
    const b = req.body;
    const msgs = (Array.isArray(b.messages) ? b.messages : []) as Json[];
    const err =
      unknownFieldError(b) ??
      toolsError(b.tools) ??
      undefinedToolsError(msgs, b.tools) ??
      contentError(msgs) ??
      (() => {
        const t = thinkingBudget(b);
        return typeof t === 'object' ? t : undefined;
      })();
    errors[n] = err?.message;
    if (err !== undefined) {
      sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: err.message } });
      return;
    }
    writeAnth(res, b, o);
  });
  return Object.assign(track(m), { errors });
}

// ---------------------------------------------------------------------------------------------
// OpenAI-dialect upstream: answers from what it receives

let callSeq = 0;

function writeOai(res: ServerResponse, b: Json, o: AnthOpts): void {
  const messages = (b.messages ?? []) as Json[];
  const tools = (Array.isArray(b.tools) ? b.tools : []) as Json[];
  const choice = b.tool_choice;
  const rf = b.response_format as Json | undefined;
  let text: string | null = null;
  let calls: { id: string; name: string; args: string }[] = [];
  const lastTool = messages.at(-1)?.role === 'tool';
  const named =
    typeof choice === 'object' && choice !== null ? ((choice as Json).function as Json).name : undefined;
  if (tools.length > 0 && choice !== 'none' && (!lastTool || named !== undefined)) {
    let picked = named !== undefined ? tools.filter((t) => (t.function as Json).name === named) : tools;
    if (b.parallel_tool_calls === false) picked = picked.slice(0, 1);
    calls = picked.map((t) => ({
      id: `call_${String(++callSeq)}abc`,
      name: String((t.function as Json).name),
      args: JSON.stringify(fromSchema((t.function as Json).parameters)),
    }));
    text = o.preface ?? null;
  } else if (rf?.type === 'json_schema') {
    text = JSON.stringify(fromSchema((rf.json_schema as Json).schema));
  } else if (lastTool) {
    text = `Results: ${messages
      .filter((m) => m.role === 'tool')
      .slice(-calls.length || undefined)
      .map((m) => String(m.content))
      .join(' | ')}`;
  } else text = 'Plain answer.';
  const finish = calls.length > 0 ? 'tool_calls' : 'stop';
  const inTok = o.inTok ?? 40;
  const outTok = o.outTok ?? 9;
  const usage = { prompt_tokens: inTok, completion_tokens: outTok, total_tokens: inTok + outTok };
  const m = String(b.model);
  if (o.form === 'json' || (o.form === undefined && b.stream !== true)) {
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
            content: text,
            refusal: null,
            ...(calls.length > 0
              ? {
                  tool_calls: calls.map((c) => ({
                    id: c.id,
                    type: 'function',
                    function: { name: c.name, arguments: c.args },
                  })),
                }
              : {}),
          },
          logprobs: null,
          finish_reason: finish,
        },
      ],
      usage,
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  let out = chunkFrame(m, { role: 'assistant', content: '', refusal: null });
  if (text !== null) for (const p of split(text, o.pieces ?? 4)) out += chunkFrame(m, { content: p });
  for (const [index, c] of calls.entries()) {
    out += chunkFrame(m, {
      tool_calls: [{ index, id: c.id, type: 'function', function: { name: c.name, arguments: '' } }],
    });
    for (const p of split(c.args, o.pieces ?? 4))
      out += chunkFrame(m, { tool_calls: [{ index, function: { arguments: p } }] });
  }
  out += chunkFrame(m, {}, finish);
  if ((b.stream_options as Json | undefined)?.include_usage === true)
    out += `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: m, choices: [], usage })}\n\n`;
  res.end(`${out}data: [DONE]\n\n`);
}

async function oaiUpstream(o: AnthOpts = {}) {
  const m = await startMock((req, res) => writeOai(res, req.body, o));
  return Object.assign(track(m), { errors: [] as (string | undefined)[] });
}

// ---------------------------------------------------------------------------------------------
// Gateway with one route `r` on either kind

type Kind = 'anthropic' | 'openai';
const KINDS: Kind[] = ['anthropic', 'openai'];

async function setup(kind: Kind, o: AnthOpts = {}) {
  const up = kind === 'anthropic' ? await anthUpstream(o) : await oaiUpstream(o);
  const provider =
    kind === 'anthropic'
      ? {
          name: 'up',
          kind: 'anthropic',
          base_url: up.url,
          api_key: 'sk-ant-test-0001',
          models: [{ name: 'claude-sonnet-4-5' }],
        }
      : {
          name: 'up',
          kind: 'openai',
          base_url: `${up.url}/v1`,
          api_key: 'sk-oai-test-0001',
          models: [{ name: 'gpt-4o' }],
        };
  const target = kind === 'anthropic' ? 'up/claude-sonnet-4-5' : 'up/gpt-4o';
  const gw = track(
    await startGateway({ providers: [provider], routes: { r: { strategy: 'priority', targets: [target] } } }),
  );
  return { up, gw, baseURL: `${gw.url}/v1` };
}

const received = (up: { received: Received[] }, n = 0): Json => up.received[n]!.body;

// The shared schema: nested object, array of objects, enum, nullable, optional, integer, number, boolean.
const Recipe = z.object({
  title: z.string().describe('Name of the dish'),
  servings: z.number().int(),
  rating: z.number(),
  vegetarian: z.boolean(),
  course: z.enum(['starter', 'main', 'dessert']),
  note: z.string().nullable(),
  ingredients: z.array(z.object({ name: z.string(), grams: z.number().int() })),
  chef: z.object({ name: z.string(), stars: z.number().int() }),
});
const RECIPE = {
  title: 'title-text',
  servings: 7,
  rating: 2.5,
  vegetarian: true,
  course: 'starter',
  note: 'note-text',
  ingredients: [
    { name: 'name-text', grams: 7 },
    { name: 'name-text', grams: 7 },
  ],
  chef: { name: 'name-text', stars: 7 },
};

const aiModel = (baseURL: string) => createOpenAI({ baseURL, apiKey: 'client-key' }).chat('r');
const lc = (baseURL: string, extra: Json = {}) =>
  new ChatOpenAI({ model: 'r', apiKey: 'client-key', configuration: { baseURL }, maxRetries: 0, ...extra });

function checkSchemaReached(kind: Kind, body: Json): void {
  if (kind === 'anthropic') {
    // README: response_format is translated for Anthropic (a system instruction with the schema).
    expect(body.response_format).toBeUndefined();
    expect(String(body.system)).toContain('JSON Schema');
    expect(String(body.system)).toContain('"ingredients"');
  } else {
    expect(body.response_format).toMatchObject({
      type: 'json_schema',
      json_schema: { schema: { type: 'object' } },
    });
  }
}

// ---------------------------------------------------------------------------------------------

describe.each(KINDS)('Vercel AI SDK structured output and tools, %s upstream', (kind) => {
  it('generateObject (zod, nested/enum/nullable): strict json_schema sent, the object parsed, usage and finish right', async () => {
    const { up, baseURL } = await setup(kind, { inTok: 31, outTok: 17 });
    const r = await generateObject({
      model: aiModel(baseURL),
      schema: Recipe,
      schemaName: 'recipe',
      prompt: 'A recipe',
      maxRetries: 0,
    });
    expect(up.errors.filter((e) => e !== undefined)).toEqual([]);
    expect(r.object).toEqual(RECIPE);
    expect(r.finishReason).toBe('stop');
    expect(r.usage.inputTokens).toBe(31);
    expect(r.usage.outputTokens).toBe(17);
    checkSchemaReached(kind, received(up));
    if (kind === 'openai')
      expect(received(up).response_format).toMatchObject({ json_schema: { name: 'recipe', strict: true } });
  });

  it('streamObject: partial objects grow, the final object is whole, finish "stop", usage from the stream', async () => {
    const { up, baseURL } = await setup(kind, { inTok: 12, outTok: 30, pieces: 8 });
    const errors: unknown[] = [];
    const r = streamObject({
      model: aiModel(baseURL),
      schema: Recipe,
      prompt: 'A recipe',
      maxRetries: 0,
      onError: ({ error }) => void errors.push(error),
    });
    const partials: unknown[] = [];
    for await (const p of r.partialObjectStream) partials.push(p);
    expect(errors).toEqual([]);
    expect(partials.length).toBeGreaterThanOrEqual(3);
    expect(await r.object).toEqual(RECIPE);
    expect(await r.finishReason).toBe('stop');
    expect((await r.usage).outputTokens).toBe(30);
    expect(received(up)).toMatchObject({ stream: true });
    checkSchemaReached(kind, received(up));
  });

  it('streamText with two tools, parallel calls after a text preface, stopWhen 3: ids round-trip, finish reasons and usage per step', async () => {
    const { up, baseURL } = await setup(kind, { preface: 'Let me look both up.', inTok: 50, outTok: 11 });
    const log: string[] = [];
    const tools = {
      get_weather: tool({
        description: 'Weather of a city',
        inputSchema: z.object({ city: z.string(), unit: z.enum(['c', 'f']) }),
        execute: ({ city, unit }) => {
          log.push(`weather:${city}:${unit}`);
          return Promise.resolve({ city, temp: 12 });
        },
      }),
      get_time: tool({
        description: 'Local time of a city',
        inputSchema: z.object({ zone: z.string() }),
        execute: ({ zone }) => {
          log.push(`time:${zone}`);
          return Promise.resolve(`12:00 in ${zone}`);
        },
      }),
    };
    const errors: unknown[] = [];
    const st = streamText({
      model: aiModel(baseURL),
      prompt: 'Weather and time in Oslo?',
      tools,
      stopWhen: stepCountIs(3),
      maxRetries: 0,
      onError: ({ error }) => void errors.push(error),
    });
    const text = await st.text;
    const steps = await st.steps;
    expect(errors).toEqual([]);
    expect(log.sort()).toEqual(['time:zone-text', 'weather:city-text:c']);
    expect(steps).toHaveLength(2);
    expect(steps[0]!.finishReason).toBe('tool-calls');
    expect(steps[0]!.text).toBe('Let me look both up.');
    expect(steps[0]!.toolCalls.map((c) => c.toolName)).toEqual(['get_weather', 'get_time']);
    expect(steps[1]!.finishReason).toBe('stop');
    expect(text).toContain('Results:');
    expect(steps.map((s) => s.usage.inputTokens)).toEqual([50, 50]);
    expect((await st.totalUsage).outputTokens).toBe(22);
    // Second request carries both calls and both results, paired by the ids the upstream minted.
    const second = received(up, 1);
    const ids = steps[0]!.toolCalls.map((c) => c.toolCallId);
    const sent = JSON.stringify(second.messages);
    for (const id of ids) expect(sent).toContain(id);
    if (kind === 'anthropic') expect(up.errors).toEqual([undefined, undefined]);
  });

  it('generateText with output: Output.object and a tool, multi-step: the final object parsed after the tool ran', async () => {
    const { up, baseURL } = await setup(kind);
    const ran: string[] = [];
    const r = await generateText({
      model: aiModel(baseURL),
      prompt: 'Look up the chef, then give the recipe',
      tools: {
        find_chef: tool({
          description: 'Find a chef',
          inputSchema: z.object({ cuisine: z.string() }),
          execute: ({ cuisine }) => {
            ran.push(cuisine);
            return Promise.resolve({ name: 'Ada', stars: 3 });
          },
        }),
      },
      output: Output.object({ schema: Recipe }),
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    expect(ran).toEqual(['cuisine-text']);
    expect(r.steps.map((s) => s.finishReason)).toEqual(['tool-calls', 'stop']);
    expect(r.output).toEqual(RECIPE);
    if (kind === 'anthropic') expect(up.errors).toEqual([undefined, undefined]);
  });

  it('streamText with output: Output.object: partialOutputStream grows to the whole object', async () => {
    const { up, baseURL } = await setup(kind, { pieces: 6 });
    const st = streamText({
      model: aiModel(baseURL),
      prompt: 'A recipe',
      output: Output.object({ schema: Recipe }),
      maxRetries: 0,
      onError: () => undefined,
    });
    const parts: unknown[] = [];
    for await (const p of st.partialOutputStream) parts.push(p);
    expect(parts.length).toBeGreaterThanOrEqual(2);
    expect(await st.output).toEqual(RECIPE);
    checkSchemaReached(kind, received(up));
  });
});

describe.each(KINDS)('LangChain ChatOpenAI structured output and tools, %s upstream', (kind) => {
  it('withStructuredOutput(zod) default method (jsonSchema): response_format json_schema, the object parsed (invoke and stream)', async () => {
    const { up, baseURL } = await setup(kind);
    const model = lc(baseURL).withStructuredOutput(Recipe, { name: 'recipe' });
    expect(await model.invoke('A recipe')).toEqual(RECIPE);
    let last: unknown;
    for await (const p of await model.stream('A recipe')) last = p;
    expect(last).toEqual(RECIPE);
    checkSchemaReached(kind, received(up));
    checkSchemaReached(kind, received(up, 1));
    if (kind === 'anthropic') expect(up.errors).toEqual([undefined, undefined]);
  });

  it('withStructuredOutput(zod, functionCalling, includeRaw): forced tool reaches the upstream, parsed object and usage', async () => {
    const { up, baseURL } = await setup(kind, { inTok: 21, outTok: 8 });
    const r = await lc(baseURL)
      .withStructuredOutput(Recipe, { name: 'recipe', method: 'functionCalling', includeRaw: true })
      .invoke('A recipe');
    expect(r.parsed).toEqual(RECIPE);
    expect((r.raw as AIMessageChunk).usage_metadata).toMatchObject({
      input_tokens: 21,
      output_tokens: 8,
      total_tokens: 29,
    });
    const body = received(up);
    if (kind === 'anthropic') {
      expect(body.tool_choice).toMatchObject({ type: 'tool', name: 'recipe' });
      expect(body.thinking).toBeUndefined();
      expect(up.errors).toEqual([undefined]);
    } else expect(body.tool_choice).toEqual({ type: 'function', function: { name: 'recipe' } });
  });

  it('bindTools + stream: parallel tool_call chunks concat to whole calls with parsed args; usage_metadata; ToolMessages answered', async () => {
    const { up, baseURL } = await setup(kind, { inTok: 33, outTok: 14, pieces: 5 });
    const weather = lcTool(async ({ city }: { city: string }) => `rain in ${city}`, {
      name: 'get_weather',
      description: 'Weather of a city',
      schema: z.object({ city: z.string() }),
    });
    const time = lcTool(async ({ zone }: { zone: string }) => `noon in ${zone}`, {
      name: 'get_time',
      description: 'Time in a zone',
      schema: z.object({ zone: z.string() }),
    });
    const model = lc(baseURL, { streamUsage: true }).bindTools([weather, time]);
    const messages: BaseMessage[] = [new HumanMessage('Weather and time in Oslo?')];
    let full: AIMessageChunk | undefined;
    for await (const c of await model.stream(messages)) full = full === undefined ? c : full.concat(c);
    expect(full).toBeDefined();
    expect(full!.tool_calls?.map((c) => [c.name, c.args])).toEqual([
      ['get_weather', { city: 'city-text' }],
      ['get_time', { zone: 'zone-text' }],
    ]);
    expect(full!.tool_calls?.every((c) => typeof c.id === 'string' && c.id.length > 0)).toBe(true);
    expect(full!.invalid_tool_calls ?? []).toEqual([]);
    expect(full!.usage_metadata).toMatchObject({ input_tokens: 33, output_tokens: 14, total_tokens: 47 });
    expect(full!.response_metadata.finish_reason).toBe('tool_calls');
    messages.push(full!);
    for (const c of full!.tool_calls!)
      messages.push(
        new ToolMessage({
          tool_call_id: c.id!,
          content: c.name === 'get_weather' ? 'rain in Oslo' : 'noon in CET',
        }),
      );
    const answer = await model.invoke(messages);
    expect(answer.content).toContain('rain in Oslo');
    expect(answer.content).toContain('noon in CET');
    if (kind === 'anthropic') expect(up.errors).toEqual([undefined, undefined]);
  });
});

describe.each(KINDS)('openai SDK helpers, %s upstream', (kind) => {
  const client = (baseURL: string) => new OpenAI({ baseURL, apiKey: 'client-key', maxRetries: 0 });

  it('chat.completions.parse(zodResponseFormat) and .stream(): parsed object, finish "stop"', async () => {
    const { up, baseURL } = await setup(kind);
    const c = client(baseURL);
    const r = await c.chat.completions.parse({
      model: 'r',
      messages: [{ role: 'user', content: 'A recipe' }],
      response_format: zodResponseFormat(Recipe, 'recipe'),
    });
    expect(r.choices[0]!.message.parsed).toEqual(RECIPE);
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const s = c.chat.completions.stream({
      model: 'r',
      messages: [{ role: 'user', content: 'A recipe' }],
      response_format: zodResponseFormat(Recipe, 'recipe'),
      stream_options: { include_usage: true },
    });
    const final = await s.finalChatCompletion();
    expect(final.choices[0]!.message.parsed).toEqual(RECIPE);
    expect(final.usage?.total_tokens).toBe(49);
    checkSchemaReached(kind, received(up, 1));
  });

  it('runTools(stream) with two strict zodFunction tools: parallel calls parsed, results sent back, final text', async () => {
    const { up, baseURL } = await setup(kind, { pieces: 3 });
    const c = client(baseURL);
    const seen: string[] = [];
    const runner = c.chat.completions.runTools({
      model: 'r',
      stream: true,
      messages: [{ role: 'user', content: 'Weather and time in Oslo?' }],
      tools: [
        zodFunction({
          name: 'get_weather',
          parameters: z.object({ city: z.string() }),
          function: (a: { city: string }) => {
            seen.push(`w:${a.city}`);
            return `rain in ${a.city}`;
          },
        }),
        zodFunction({
          name: 'get_time',
          parameters: z.object({ zone: z.string() }),
          function: (a: { zone: string }) => {
            seen.push(`t:${a.zone}`);
            return `noon in ${a.zone}`;
          },
        }),
      ],
    });
    const text = await runner.finalContent();
    expect(seen.sort()).toEqual(['t:zone-text', 'w:city-text']);
    expect(text).toContain('rain in city-text');
    expect(text).toContain('noon in zone-text');
    expect(up.received).toHaveLength(2);
    if (kind === 'anthropic') expect(up.errors).toEqual([undefined, undefined]);
  });

  it('chat.completions.stream with strict zodFunction tools: tool_calls.function.arguments.done gives parsed_arguments for each call', async () => {
    const { baseURL } = await setup(kind, { pieces: 5 });
    const c = client(baseURL);
    const done: { name: string; parsed: unknown }[] = [];
    const s = c.chat.completions
      .stream({
        model: 'r',
        messages: [{ role: 'user', content: 'Recipe tool please' }],
        tools: [
          zodFunction({ name: 'save_recipe', parameters: Recipe }),
          zodFunction({ name: 'get_time', parameters: z.object({ zone: z.string() }) }),
        ],
      })
      .on('tool_calls.function.arguments.done', (e) =>
        done.push({ name: e.name, parsed: e.parsed_arguments }),
      );
    const final = await s.finalChatCompletion();
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    expect(done).toEqual([
      { name: 'save_recipe', parsed: RECIPE },
      { name: 'get_time', parsed: { zone: 'zone-text' } },
    ]);
    expect(
      final.choices[0]!.message.tool_calls?.map(
        (t) => (t as { function: { parsed_arguments: unknown } }).function.parsed_arguments,
      ),
    ).toEqual([RECIPE, { zone: 'zone-text' }]);
  });
});

describe.each(KINDS)('answers in the other form than asked, with tools and schemas, %s upstream', (kind) => {
  const twoTools = (log: string[]) => ({
    get_weather: tool({
      description: 'Weather of a city',
      inputSchema: z.object({ city: z.string() }),
      execute: ({ city }) => {
        log.push(`w:${city}`);
        return Promise.resolve(`rain in ${city}`);
      },
    }),
    get_time: tool({
      description: 'Time in a zone',
      inputSchema: z.object({ zone: z.string() }),
      execute: ({ zone }) => {
        log.push(`t:${zone}`);
        return Promise.resolve(`noon in ${zone}`);
      },
    }),
  });

  it('streamText tool loop against an upstream that answers JSON to stream: true (README: the client gets its own form)', async () => {
    const { up, baseURL } = await setup(kind, { form: 'json', preface: 'Checking.', inTok: 20, outTok: 5 });
    const log: string[] = [];
    const errors: unknown[] = [];
    const st = streamText({
      model: aiModel(baseURL),
      prompt: 'Weather and time?',
      tools: twoTools(log),
      stopWhen: stepCountIs(3),
      maxRetries: 0,
      onError: ({ error }) => void errors.push(error),
    });
    const text = await st.text;
    const steps = await st.steps;
    expect(errors).toEqual([]);
    expect(log.sort()).toEqual(['t:zone-text', 'w:city-text']);
    expect(steps.map((s) => s.finishReason)).toEqual(['tool-calls', 'stop']);
    expect(steps[0]!.text).toBe('Checking.');
    expect(text).toContain('rain in city-text');
    expect((await st.totalUsage).inputTokens).toBe(40);
    expect(up.received).toHaveLength(2);
  });

  it('generateText tool loop against an upstream that always streams (SSE to a JSON request)', async () => {
    const { up, baseURL } = await setup(kind, { form: 'sse', pieces: 3 });
    const log: string[] = [];
    const r = await generateText({
      model: aiModel(baseURL),
      prompt: 'Weather and time?',
      tools: twoTools(log),
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    expect(log.sort()).toEqual(['t:zone-text', 'w:city-text']);
    expect(r.steps.map((s) => s.finishReason)).toEqual(['tool-calls', 'stop']);
    expect(r.steps[0]!.toolCalls.map((c) => c.input)).toEqual([{ city: 'city-text' }, { zone: 'zone-text' }]);
    expect(r.text).toContain('noon in zone-text');
    expect(up.received).toHaveLength(2);
  });

  it('LangChain bindTools stream against an upstream that answers JSON: concat gives both tool calls once each', async () => {
    const { baseURL } = await setup(kind, { form: 'json', inTok: 9, outTok: 4 });
    const weather = lcTool(async ({ city }: { city: string }) => city, {
      name: 'get_weather',
      description: 'w',
      schema: z.object({ city: z.string() }),
    });
    const time = lcTool(async ({ zone }: { zone: string }) => zone, {
      name: 'get_time',
      description: 't',
      schema: z.object({ zone: z.string() }),
    });
    let full: AIMessageChunk | undefined;
    for await (const c of await lc(baseURL, { streamUsage: true }).bindTools([weather, time]).stream('Both?'))
      full = full === undefined ? c : full.concat(c);
    expect(full!.tool_calls?.map((c) => [c.name, c.args])).toEqual([
      ['get_weather', { city: 'city-text' }],
      ['get_time', { zone: 'zone-text' }],
    ]);
    expect(full!.usage_metadata).toMatchObject({ input_tokens: 9, output_tokens: 4 });
  });

  it('openai SDK parse() with zodResponseFormat and strict tools against an upstream that always streams', async () => {
    const { baseURL } = await setup(kind, { form: 'sse', pieces: 4 });
    const c = new OpenAI({ baseURL, apiKey: 'client-key', maxRetries: 0 });
    const r = await c.chat.completions.parse({
      model: 'r',
      messages: [{ role: 'user', content: 'A recipe' }],
      response_format: zodResponseFormat(Recipe, 'recipe'),
    });
    expect(r.choices[0]!.message.parsed).toEqual(RECIPE);
    const t = await c.chat.completions.parse({
      model: 'r',
      messages: [{ role: 'user', content: 'Save it' }],
      tools: [
        zodFunction({ name: 'save_recipe', parameters: Recipe }),
        zodFunction({ name: 'get_time', parameters: z.object({ zone: z.string() }) }),
      ],
    });
    expect(t.choices[0]!.finish_reason).toBe('tool_calls');
    expect(
      t.choices[0]!.message.tool_calls?.map(
        (x) => (x as { function: { parsed_arguments: unknown } }).function.parsed_arguments,
      ),
    ).toEqual([RECIPE, { zone: 'zone-text' }]);
  });
});

describe('thinking through a tool loop (Anthropic upstream)', () => {
  const tools = (seen: string[]) => [
    zodFunction({
      name: 'get_weather',
      parameters: z.object({ city: z.string() }),
      function: (a: { city: string }) => {
        seen.push(a.city);
        return `rain in ${a.city}`;
      },
    }),
  ];

  for (const stream of [false, true]) {
    it(`openai SDK runTools (stream: ${String(stream)}) with reasoning_effort: the SDK drops thinking_blocks, the next round runs without thinking, every round valid`, async () => {
      const { up, baseURL } = await setup('anthropic');
      const c = new OpenAI({ baseURL, apiKey: 'client-key', maxRetries: 0 });
      const seen: string[] = [];
      const runner = c.chat.completions.runTools({
        model: 'r',
        stream,
        reasoning_effort: 'low',
        messages: [{ role: 'user', content: 'Weather in Oslo?' }],
        tools: tools(seen),
      } as never);
      const text = await (runner as { finalContent(): Promise<string | null> }).finalContent();
      expect(seen).toEqual(['city-text']);
      expect(up.errors).toEqual([undefined, undefined]);
      expect(text).toContain('rain in city-text');
      // The SDK's runner sends the assistant message back without thinking_blocks (it rebuilds it from role,
      // content and tool_calls): README, a loop whose first round comes back without them runs without thinking.
      expect(received(up, 0).thinking).toMatchObject({ type: 'enabled' });
      const second = received(up, 1);
      expect(second.thinking).toBeUndefined();
      expect(second.max_tokens).toBe(4096);
    });
  }

  it('AI SDK generateObject with reasoningEffort on Claude: the object parsed beside the reasoning', async () => {
    const { up, baseURL } = await setup('anthropic');
    const r = await generateObject({
      model: aiModel(baseURL),
      schema: Recipe,
      prompt: 'A recipe',
      maxRetries: 0,
      providerOptions: { openai: { reasoningEffort: 'low' } },
    });
    expect(up.errors).toEqual([undefined]);
    expect(received(up).thinking).toMatchObject({ type: 'enabled' });
    expect(r.object).toEqual(RECIPE);
  });

  it('LangChain withStructuredOutput functionCalling with reasoning_effort on Claude: forced tool goes without thinking, parsed', async () => {
    const { up, baseURL } = await setup('anthropic');
    const r = await lc(baseURL, { reasoning: { effort: 'low' } })
      .withStructuredOutput(Recipe, { name: 'recipe', method: 'functionCalling' })
      .invoke('A recipe');
    expect(up.errors).toEqual([undefined]);
    expect(r).toEqual(RECIPE);
    expect(received(up).thinking).toBeUndefined();
  });
});

describe('SDK tool loops on a Claude that always thinks (Opus 5.5), against the project simulator', () => {
  // The SDKs send an assistant tool-call message back with role, content and tool_calls only (no
  // thinking_blocks): the AI SDK chat provider, LangChain and the openai SDK's runner all do. README: the gateway
  // sends each Claude model a request that model takes; Opus 5.5 always thinks, and with thinking on a tool
  // loop's first assistant message must open with its thinking (the simulator's rule, as Anthropic's).
  async function simRoute(model: string) {
    const sim = track(
      await startSimulator({ name: 'claude', kind: 'anthropic', apiKey: 'sk-sim-0001', toolCall: true }),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'anth',
            kind: 'anthropic',
            base_url: sim.url,
            api_key: 'sk-sim-0001',
            models: [{ name: model }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: [`anth/${model}`] } },
      }),
    );
    return { sim, baseURL: `${gw.url}/v1` };
  }
  const lookup = (log: string[]) => ({
    lookup: tool({
      description: 'Look a word up',
      inputSchema: z.object({ q: z.string() }),
      execute: ({ q }) => {
        log.push(q);
        return Promise.resolve('found');
      },
    }),
  });

  /** The second request the simulator got: its thinking and the kinds of its blocks, turn by turn. */
  function secondRound(sim: { requests: { body: unknown }[] }): {
    thinking: unknown;
    text: string;
    kinds: string[][];
  } {
    const body = sim.requests[1]!.body as { thinking?: unknown; messages: { content: unknown }[] };
    const kinds = body.messages.map((m) =>
      Array.isArray(m.content) ? (m.content as { type: string }[]).map((b) => b.type) : ['text'],
    );
    return { thinking: body.thinking, text: JSON.stringify(body.messages), kinds };
  }

  /** An AI SDK tool loop of two steps (generateText, stopWhen 2): the tool's calls and the result. */
  async function twoSteps(baseURL: string) {
    const log: string[] = [];
    const r = await generateText({
      model: aiModel(baseURL),
      prompt: 'Look it up.',
      tools: lookup(log),
      stopWhen: stepCountIs(2),
      maxRetries: 0,
    });
    return { log, r };
  }

  it('AI SDK generateText tool loop (stopWhen 2) on claude-opus-5: the second round goes without thinking, blocks kept', async () => {
    const { sim, baseURL } = await simRoute('claude-opus-5');
    const { log, r } = await twoSteps(baseURL);
    expect(sim.requests).toHaveLength(2);
    expect(log).toHaveLength(1);
    expect(r.steps.map((s) => s.finishReason)).toEqual(['tool-calls', 'stop']);
    const second = secondRound(sim);
    expect(second.thinking).toEqual({ type: 'disabled' });
    expect(second.kinds.flat()).toEqual(expect.arrayContaining(['tool_use', 'tool_result']));
  });

  it('AI SDK generateText tool loop (stopWhen 2) on claude-opus-5-5: the second round is a request the model takes', async () => {
    const { sim, baseURL } = await simRoute('claude-opus-5-5');
    const { log, r } = await twoSteps(baseURL);
    expect(sim.requests).toHaveLength(2);
    expect(log.length).toBeGreaterThanOrEqual(1);
    expect(r.steps[0]!.finishReason).toBe('tool-calls');
    // Thinking stays on (it cannot be turned off); the open loop's call and result go as text the model reads.
    const second = secondRound(sim);
    expect(second.thinking).not.toEqual({ type: 'disabled' }); // left out: the model thinks by default
    expect(second.kinds.flat()).not.toContain('tool_use');
    expect(second.kinds.flat()).not.toContain('tool_result');
    expect(second.text).toContain('[tool call ');
    expect(second.text).toMatch(/\[tool result [^:]+: found\]/);
  });

  it('LangChain bindTools + ToolMessage round trip on claude-opus-5-5: the second call is answered, not a 400', async () => {
    const { sim, baseURL } = await simRoute('claude-opus-5-5');
    const t = lcTool(async ({ q }: { q: string }) => q, {
      name: 'lookup',
      description: 'Look up',
      schema: z.object({ q: z.string() }),
    });
    const model = lc(baseURL).bindTools([t]);
    const messages: BaseMessage[] = [new HumanMessage('Look it up.')];
    const first = await model.invoke(messages);
    expect(first.tool_calls).toHaveLength(1);
    messages.push(first, new ToolMessage({ tool_call_id: first.tool_calls![0]!.id!, content: 'found' }));
    let error: unknown;
    await model.invoke(messages).catch((e: unknown) => (error = e));
    expect((error as { message?: string } | undefined)?.message).toBeUndefined();
    expect(sim.requests).toHaveLength(2);
    const second = secondRound(sim);
    expect(second.kinds.flat()).not.toContain('tool_result');
    expect(second.text).toMatch(/\[tool result [^:]+: found\]/);
  });
});
