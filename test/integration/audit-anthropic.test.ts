/**
 * Audit of the OpenAI -> Anthropic translation against a strict Anthropic Messages API mock: every request the
 * gateway sends is checked the way the real API checks it (roles, tool_use/tool_result pairing, block shapes,
 * image sources, parameter ranges, unknown fields) and refused with Anthropic's 400 shape on a violation; the
 * answers are documented Anthropic JSON bodies and SSE events, read back through the official clients
 * (openai SDK, Vercel AI SDK, LangChain ChatOpenAI).
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOpenAI } from '@ai-sdk/openai';
import { HumanMessage, ToolMessage, type AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import type OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { anthropicSseFrame, collectChunks, startAnthropicRoute } from '../helpers/anthropic-route.js';
import { postChat } from '../helpers/gateway.js';
import { GIF_1PX, JPEG_1PX, PNG_1PX, WEBP_1PX } from '../helpers/images.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

// These clients must only ever talk to loopback (LangChain can fetch tokenizer files).
onlyLoopbackFetch();

// ---------------------------------------------------------------------------------------------
// Strict validation, as the Messages API does it.

const TOP_LEVEL = new Set([
  'model',
  'messages',
  'max_tokens',
  'system',
  'metadata',
  'stop_sequences',
  'stream',
  'temperature',
  'top_p',
  'top_k',
  'tools',
  'tool_choice',
  'thinking',
  'service_tier',
  'output_config',
  'container',
  'mcp_servers',
  'context_management',
]);
const IMAGE_TYPES = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp']);
const ID_RE = /^[a-zA-Z0-9_-]+$/;
const TOOL_NAME_RE = /^[a-zA-Z0-9_-]{1,64}$/;

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkText(b: Json, where: string): string | undefined {
  if (typeof b.text !== 'string') return `${where}.text: Field required`;
  if (b.text === '') return `${where}: text content blocks must be non-empty`;
  if (b.text.trim() === '') return `${where}: text content blocks must contain non-whitespace text`;
  for (const k of Object.keys(b))
    if (!['type', 'text', 'cache_control', 'citations'].includes(k))
      return `${where}.${k}: Extra inputs are not permitted`;
  return undefined;
}

function checkImage(b: Json, where: string): string | undefined {
  const s = b.source;
  if (!isObj(s)) return `${where}.source: Field required`;
  if (s.type === 'base64') {
    if (typeof s.media_type !== 'string' || !IMAGE_TYPES.has(s.media_type))
      return `${where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'`;
    if (typeof s.data !== 'string' || s.data === '' || !/^[A-Za-z0-9+/]+={0,2}$/.test(s.data))
      return `${where}.source.base64.data: invalid base64 data`;
    return undefined;
  }
  if (s.type === 'url') {
    if (typeof s.url !== 'string' || !/^https?:\/\//.test(s.url))
      return `${where}.source.url.url: invalid url`;
    return undefined;
  }
  return `${where}.source.type: Input tag '${String(s.type)}' found does not match any of the expected tags`;
}

function checkDocument(b: Json, where: string): string | undefined {
  const s = b.source;
  if (!isObj(s)) return `${where}.source: Field required`;
  if (
    s.type === 'base64' &&
    s.media_type === 'application/pdf' &&
    typeof s.data === 'string' &&
    s.data !== ''
  )
    return undefined;
  if (s.type === 'text' && s.media_type === 'text/plain' && typeof s.data === 'string') return undefined;
  if (s.type === 'url' && typeof s.url === 'string') return undefined;
  return `${where}.source: invalid document source`;
}

function checkToolResultContent(c: unknown, where: string): string | undefined {
  if (c === undefined || typeof c === 'string') return undefined;
  if (!Array.isArray(c)) return `${where}.content: Input should be a valid list`;
  for (const [i, b] of c.entries()) {
    if (!isObj(b)) return `${where}.content.${i}: Input should be an object`;
    if (b.type === 'text') {
      const e = checkText(b, `${where}.content.${i}`);
      if (e) return e;
    } else if (b.type === 'image') {
      const e = checkImage(b, `${where}.content.${i}`);
      if (e) return e;
    } else if (b.type === 'document') {
      const e = checkDocument(b, `${where}.content.${i}`);
      if (e) return e;
    } else return `${where}.content.${i}.type: Input tag '${String(b.type)}' found does not match`;
  }
  return undefined;
}

/** Returns the Anthropic error message for an invalid request, or undefined. */
function validate(body: Json): string | undefined {
  for (const k of Object.keys(body)) if (!TOP_LEVEL.has(k)) return `${k}: Extra inputs are not permitted`;
  if (typeof body.model !== 'string' || body.model === '') return 'model: Field required';
  if (!Number.isInteger(body.max_tokens) || (body.max_tokens as number) < 1)
    return 'max_tokens: Input should be greater than or equal to 1';
  if (body.stream !== undefined && typeof body.stream !== 'boolean')
    return 'stream: Input should be a valid boolean';
  if (body.temperature !== undefined) {
    const t = body.temperature;
    if (typeof t !== 'number' || t < 0 || t > 1)
      return 'temperature: Input should be less than or equal to 1';
  }
  if (body.top_p !== undefined) {
    const t = body.top_p;
    if (typeof t !== 'number' || t < 0 || t > 1) return 'top_p: Input should be less than or equal to 1';
  }
  if (body.temperature !== undefined && body.top_p !== undefined)
    return '`temperature` and `top_p` cannot both be specified for this model. Please use only one.';
  if (body.top_k !== undefined && (!Number.isInteger(body.top_k) || (body.top_k as number) < 0))
    return 'top_k: invalid';
  if (body.metadata !== undefined) {
    if (!isObj(body.metadata)) return 'metadata: Input should be an object';
    for (const k of Object.keys(body.metadata))
      if (k !== 'user_id') return `metadata.${k}: Extra inputs are not permitted`;
    const u = body.metadata.user_id;
    if (u !== undefined && u !== null && typeof u !== 'string')
      return 'metadata.user_id: Input should be a string';
    if (typeof u === 'string' && u.length > 256)
      return 'metadata.user_id: String should have at most 256 characters';
  }
  if (body.stop_sequences !== undefined) {
    if (!Array.isArray(body.stop_sequences)) return 'stop_sequences: Input should be a valid list';
    for (const s of body.stop_sequences) {
      if (typeof s !== 'string') return 'stop_sequences: Input should be a valid string';
      if (s === '') return 'stop_sequences: each stop sequence must be non-empty';
      if (s.trim() === '') return 'stop_sequences: each stop sequence must contain non-whitespace';
    }
  }
  if (body.system !== undefined) {
    if (Array.isArray(body.system)) {
      for (const [i, b] of body.system.entries()) {
        if (!isObj(b) || b.type !== 'text') return `system.${i}: Input should be a text block`;
        const e = checkText(b, `system.${i}`);
        if (e) return e;
      }
    } else if (typeof body.system !== 'string') return 'system: Input should be a valid string';
  }
  // Tools.
  const toolNames = new Set<string>();
  if (body.tools !== undefined) {
    if (!Array.isArray(body.tools)) return 'tools: Input should be a valid list';
    for (const [i, t] of body.tools.entries()) {
      if (!isObj(t)) return `tools.${i}: Input should be an object`;
      if (typeof t.name !== 'string' || !TOOL_NAME_RE.test(t.name))
        return `tools.${i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'`;
      if (toolNames.has(t.name)) return 'tools: Tool names must be unique.';
      toolNames.add(t.name);
      if (t.type === undefined || t.type === 'custom') {
        if (!isObj(t.input_schema) || t.input_schema.type !== 'object')
          return `tools.${i}.custom.input_schema.type: Input should be 'object'`;
        for (const k of Object.keys(t))
          if (!['name', 'description', 'input_schema', 'cache_control', 'type', 'strict'].includes(k))
            return `tools.${i}.custom.${k}: Extra inputs are not permitted`;
        if (t.description !== undefined && typeof t.description !== 'string')
          return `tools.${i}.custom.description: Input should be a valid string`;
      }
    }
  }
  const hasTools = Array.isArray(body.tools) && body.tools.length > 0;
  if (body.tool_choice !== undefined) {
    const tc = body.tool_choice;
    if (!isObj(tc)) return 'tool_choice: Input should be an object';
    if (!hasTools) return 'tool_choice: tool_choice may only be specified while providing tools.';
    const allowed: Record<string, string[]> = {
      auto: ['type', 'disable_parallel_tool_use'],
      any: ['type', 'disable_parallel_tool_use'],
      tool: ['type', 'name', 'disable_parallel_tool_use'],
      none: ['type'],
    };
    const keys = allowed[String(tc.type)];
    if (!keys)
      return `tool_choice.type: Input tag '${String(tc.type)}' found does not match any of the expected tags`;
    for (const k of Object.keys(tc))
      if (!keys.includes(k)) return `tool_choice.${String(tc.type)}.${k}: Extra inputs are not permitted`;
    if (tc.disable_parallel_tool_use !== undefined && typeof tc.disable_parallel_tool_use !== 'boolean')
      return 'tool_choice.disable_parallel_tool_use: Input should be a valid boolean';
    if (tc.type === 'tool' && (typeof tc.name !== 'string' || !toolNames.has(tc.name)))
      return `tool_choice.name: Tool '${String(tc.name)}' not found in tools`;
  }
  if (body.thinking !== undefined) {
    const th = body.thinking;
    if (!isObj(th)) return 'thinking: Input should be an object';
    if (th.type === 'enabled') {
      if (!Number.isInteger(th.budget_tokens) || (th.budget_tokens as number) < 1024)
        return 'thinking.enabled.budget_tokens: Input should be greater than or equal to 1024';
      if ((th.budget_tokens as number) >= (body.max_tokens as number))
        return '`max_tokens` must be greater than `thinking.budget_tokens`';
      if (body.temperature !== undefined && body.temperature !== 1)
        return '`temperature` may only be set to 1 when thinking is enabled';
      if (body.top_p !== undefined) return '`top_p` may not be set when thinking is enabled';
      const tc = body.tool_choice;
      if (isObj(tc) && (tc.type === 'any' || tc.type === 'tool'))
        return 'Thinking may not be enabled when tool_choice forces tool use.';
      const last = Array.isArray(body.messages) ? (body.messages.at(-1) as Json | undefined) : undefined;
      if (last?.role === 'assistant')
        return 'Thinking may not be enabled when the final message is an assistant prefill.';
    }
  }
  // Messages.
  if (!Array.isArray(body.messages)) return 'messages: Input should be a valid list';
  if (body.messages.length === 0) return 'messages: at least one message is required';
  // The API combines consecutive same-role turns into one; the pairing rules then apply to the combined turns.
  const turns: { role: string; blocks: Json[]; index: number }[] = [];
  for (const [i, m] of body.messages.entries()) {
    if (!isObj(m)) return `messages.${i}: Input should be an object`;
    for (const k of Object.keys(m))
      if (k !== 'role' && k !== 'content') return `messages.${i}.${k}: Extra inputs are not permitted`;
    if (m.role !== 'user' && m.role !== 'assistant')
      return `messages.${i}.role: Input should be 'user' or 'assistant'`;
    let blocks: Json[];
    if (typeof m.content === 'string') {
      if (m.content === '' && !(m.role === 'assistant' && i === body.messages.length - 1))
        return `messages.${i}: ${m.role} messages must have non-empty content`;
      if (m.content.trim() === '' && m.content !== '')
        return `messages.${i}: text content blocks must contain non-whitespace text`;
      blocks = m.content === '' ? [] : [{ type: 'text', text: m.content }];
    } else if (Array.isArray(m.content)) {
      if (m.content.length === 0 && !(m.role === 'assistant' && i === body.messages.length - 1))
        return `messages.${i}: ${m.role} messages must have non-empty content`;
      blocks = m.content as Json[];
    } else return `messages.${i}.content: Field required`;
    for (const [j, b] of blocks.entries()) {
      const where = `messages.${i}.content.${j}`;
      if (!isObj(b)) return `${where}: Input should be an object`;
      let e: string | undefined;
      switch (b.type) {
        case 'text':
          e = checkText(b, where);
          break;
        case 'image':
          e = m.role === 'user' ? checkImage(b, where) : `${where}: images are only allowed in user turns`;
          break;
        case 'document':
          e =
            m.role === 'user'
              ? checkDocument(b, where)
              : `${where}: documents are only allowed in user turns`;
          break;
        case 'tool_use':
          if (m.role !== 'assistant') e = `${where}: tool_use blocks are only allowed in assistant turns`;
          else if (typeof b.id !== 'string' || !ID_RE.test(b.id))
            e = `${where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'`;
          else if (typeof b.name !== 'string' || b.name === '') e = `${where}.tool_use.name: Field required`;
          else if (!isObj(b.input)) e = `${where}.tool_use.input: Input should be a valid dictionary`;
          break;
        case 'tool_result':
          if (m.role !== 'user') e = `${where}: tool_result blocks are only allowed in user turns`;
          else if (typeof b.tool_use_id !== 'string' || !ID_RE.test(b.tool_use_id))
            e = `${where}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'`;
          else if (b.is_error !== undefined && typeof b.is_error !== 'boolean')
            e = `${where}.tool_result.is_error: Input should be a valid boolean`;
          else e = checkToolResultContent(b.content, `${where}.tool_result`);
          break;
        case 'thinking':
        case 'redacted_thinking':
          if (m.role !== 'assistant') e = `${where}: thinking blocks are only allowed in assistant turns`;
          break;
        default:
          e = `${where}.type: Input tag '${String(b.type)}' found using 'type' does not match any of the expected tags`;
      }
      if (e) return e;
    }
    const last = turns.at(-1);
    if (last && last.role === m.role) last.blocks.push(...blocks);
    else turns.push({ role: m.role, blocks: [...blocks], index: i });
  }
  if (turns[0]!.role !== 'user') return 'messages: first message must use the "user" role';
  const seenToolUse = new Set<string>();
  let usesToolBlocks = false;
  for (const [t, turn] of turns.entries()) {
    if (turn.role === 'assistant') {
      const ids = turn.blocks.filter((b) => b.type === 'tool_use').map((b) => b.id as string);
      for (const id of ids) {
        if (seenToolUse.has(id)) return `messages.${turn.index}: \`tool_use\` ids must be unique`;
        seenToolUse.add(id);
      }
      if (ids.length > 0) {
        usesToolBlocks = true;
        const next = turns[t + 1];
        const lead: string[] = [];
        for (const b of next?.blocks ?? []) {
          if (b.type !== 'tool_result') break;
          lead.push(b.tool_use_id as string);
        }
        const missing = ids.filter((id) => !lead.includes(id));
        if (!next || missing.length > 0)
          return `messages.${turn.index}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ${missing.join(', ') || ids.join(', ')}. Each \`tool_use\` block must have a corresponding \`tool_result\` block in the next message.`;
      }
      if (t === turns.length - 1) {
        const lastBlock = turn.blocks.at(-1);
        if (lastBlock?.type === 'text' && /\s$/.test(lastBlock.text as string))
          return 'messages: final assistant content cannot end with trailing whitespace';
      }
    } else {
      const prevIds =
        t > 0 ? turns[t - 1]!.blocks.filter((b) => b.type === 'tool_use').map((b) => b.id as string) : [];
      let leading = true;
      for (const b of turn.blocks) {
        if (b.type === 'tool_result') {
          usesToolBlocks = true;
          if (!leading)
            return `messages.${turn.index}: tool_result blocks must come first in the user turn, before any other content`;
          if (!prevIds.includes(b.tool_use_id as string))
            return `messages.${turn.index}: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${String(b.tool_use_id)}. Each \`tool_result\` block must have a corresponding \`tool_use\` block in the previous message.`;
        } else leading = false;
      }
      const rIds = turn.blocks.filter((b) => b.type === 'tool_result').map((b) => b.tool_use_id as string);
      if (new Set(rIds).size !== rIds.length)
        return `messages.${turn.index}: duplicate tool_result for one tool_use`;
    }
  }
  if (usesToolBlocks && !hasTools)
    return 'Requests which include `tool_use` or `tool_result` blocks must define tools.';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The mock.

/** What the mock answers a valid request with: a JSON message, or SSE events. */
type Answer = { json: Json } | { events: Json[] };
type Answerer = (body: Json, n: number) => Answer;

interface Mock {
  url: string;
  /** Every request body, valid or not, in order. */
  bodies: Json[];
  /** The validation error per request (undefined when valid). */
  errors: (string | undefined)[];
  close(): Promise<void>;
}

async function startAnthropicMock(answer: Answerer): Promise<Mock> {
  const bodies: Json[] = [];
  const errors: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      let body: Json;
      try {
        body = JSON.parse(text) as Json;
      } catch {
        return send(res, 400, anthErr('There was an error parsing the body'));
      }
      bodies.push(body);
      const n = bodies.length - 1;
      if (req.url !== '/v1/messages' || req.method !== 'POST') {
        errors.push('wrong path');
        return send(res, 404, { type: 'error', error: { type: 'not_found_error', message: 'Not found' } });
      }
      if (req.headers['anthropic-version'] === undefined || req.headers['x-api-key'] !== 'sk-ant-audit') {
        errors.push('headers');
        return send(res, 401, {
          type: 'error',
          error: { type: 'authentication_error', message: 'invalid x-api-key' },
        });
      }
      const err = validate(body);
      errors.push(err);
      if (err) return send(res, 400, anthErr(err));
      const a = answer(body, n);
      if ('json' in a) return send(res, 200, a.json);
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
      for (const e of a.events) res.write(anthropicSseFrame(e));
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const closeable = closeableServer(server);
  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    errors,
    close: async () => void (await closeable.close()),
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
const anthErr = (message: string): Json => ({
  type: 'error',
  error: { type: 'invalid_request_error', message },
});

// Answer builders (documented shapes).
function message(
  content: Json[],
  stopReason: string,
  usage: Json = { input_tokens: 10, output_tokens: 5 },
): Json {
  return {
    id: 'msg_01AuditAuditAuditAudit',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5-20250929',
    content,
    stop_reason: stopReason,
    stop_sequence: stopReason === 'stop_sequence' ? 'END' : null,
    usage,
  };
}
const messageStart = (usage: Json = { input_tokens: 10, output_tokens: 1 }): Json => ({
  type: 'message_start',
  message: { ...message([], 'end_turn', usage), stop_reason: null, stop_sequence: null },
});
const blockStart = (index: number, block: Json): Json => ({
  type: 'content_block_start',
  index,
  content_block: block,
});
const delta = (index: number, d: Json): Json => ({ type: 'content_block_delta', index, delta: d });
const blockStop = (index: number): Json => ({ type: 'content_block_stop', index });
const messageDelta = (stopReason: string, usage: Json = { output_tokens: 5 }): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stopReason, stop_sequence: stopReason === 'stop_sequence' ? 'END' : null },
  usage,
});
const STOP: Json = { type: 'message_stop' };

/** Blocks as JSON or as the SSE events that stream them. */
function streamOf(blocks: Json[], stopReason: string, startUsage?: Json, endUsage?: Json): Json[] {
  const events: Json[] = [messageStart(startUsage), { type: 'ping' }];
  for (const [i, b] of blocks.entries()) {
    if (b.type === 'text') {
      events.push(blockStart(i, { type: 'text', text: '' }));
      const t = b.text as string;
      const mid = Math.ceil(t.length / 2);
      for (const part of [t.slice(0, mid), t.slice(mid)])
        if (part !== '') events.push(delta(i, { type: 'text_delta', text: part }));
    } else if (b.type === 'tool_use') {
      events.push(blockStart(i, { type: 'tool_use', id: b.id, name: b.name, input: {} }));
      const args = JSON.stringify(b.input);
      if (args === '{}') events.push(delta(i, { type: 'input_json_delta', partial_json: '' }));
      else {
        const mid = Math.ceil(args.length / 2);
        events.push(delta(i, { type: 'input_json_delta', partial_json: '' }));
        events.push(delta(i, { type: 'input_json_delta', partial_json: args.slice(0, mid) }));
        events.push(delta(i, { type: 'input_json_delta', partial_json: args.slice(mid) }));
      }
    }
    events.push(blockStop(i));
  }
  events.push(messageDelta(stopReason, endUsage), STOP);
  return events;
}

/** Answers JSON or SSE as the request asks, with the same blocks. */
function both(blocks: Json[], stopReason: string, usage?: Json): Answerer {
  return (body) =>
    body.stream === true
      ? {
          events: streamOf(
            blocks,
            stopReason,
            usage ? { ...usage, output_tokens: 1 } : undefined,
            usage ? { output_tokens: usage.output_tokens } : undefined,
          ),
        }
      : { json: message(blocks, stopReason, usage) };
}
const TEXT_OK = both([{ type: 'text', text: 'ok' }], 'end_turn');

async function setup(
  answer: Answerer = TEXT_OK,
  model = 'claude-sonnet-4-5',
): Promise<{ mock: Mock; client: OpenAI; url: string }> {
  const mock = track(await startAnthropicMock(answer));
  const { client, url } = await startAnthropicRoute(track, mock.url, { apiKey: 'sk-ant-audit', model });
  return { mock, client, url };
}

/** The last request the mock got, asserting it was valid. */
function lastValid(mock: Mock): Json {
  expect(mock.errors.at(-1)).toBeUndefined();
  return mock.bodies.at(-1)!;
}

/** A user turn holding only a WAV recording (Anthropic takes no audio). */
const AUDIO_ONLY: ChatCompletionMessageParam = {
  role: 'user',
  content: [{ type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } }],
};

/** The HTTP status an openai SDK call ended with: 200, or the status of the error it threw. */
function statusOf(call: Promise<unknown>): Promise<number | undefined> {
  return call.then(
    () => 200,
    (e: unknown) => (e as { status?: number }).status,
  );
}

const weatherTool = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const timeTool = {
  type: 'function' as const,
  function: { name: 'get_time', description: 'Current time', parameters: { type: 'object', properties: {} } },
};

/** A question, the assistant's turn (`content`) calling get_weather for Oslo as call_1, and its result. */
function weatherRound(content: string): ChatCompletionMessageParam[] {
  return [
    { role: 'user', content: 'Weather?' },
    {
      role: 'assistant',
      content,
      tool_calls: [
        {
          id: 'call_1',
          type: 'function',
          function: { name: 'get_weather', arguments: '{"city":"Oslo"}' },
        },
      ],
    },
    { role: 'tool', tool_call_id: 'call_1', content: 'rain' },
  ];
}

/** A streamed `hi` that asks for the usage chunk: every chunk. */
async function streamWithUsage(client: OpenAI): Promise<ChatCompletionChunk[]> {
  return collectChunks(
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
}

// =============================================================================================
// Requests: tool loops.

describe('audit: tool loops as the clients send them', () => {
  it('parallel tool calls answered out of order, then a user follow-up: tool_results lead the user turn', async () => {
    const { mock, client } = await setup();
    const messages: ChatCompletionMessageParam[] = [
      { role: 'user', content: 'Weather in Oslo and Rome?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } },
          { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
        ],
      },
      { role: 'tool', tool_call_id: 'call_b', content: 'sunny' },
      { role: 'tool', tool_call_id: 'call_a', content: 'rain' },
      { role: 'user', content: 'And in one word?' },
    ];
    const r = await client.chat.completions.create({ model: 'r', messages, tools: [weatherTool] });
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = lastValid(mock);
    const msgs = body.messages as Json[];
    expect(msgs.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    const user = msgs[2]!.content as Json[];
    expect(user.slice(0, 2).map((b) => [b.type, b.tool_use_id, b.content])).toEqual(
      expect.arrayContaining([
        ['tool_result', 'call_a', expect.stringContaining('rain') as unknown],
        ['tool_result', 'call_b', expect.stringContaining('sunny') as unknown],
      ]),
    );
    expect(JSON.stringify(user.slice(2))).toContain('And in one word?');
  });

  it('a tool message whose content is an array of text parts keeps all its text in the tool_result', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool],
      messages: [
        { role: 'user', content: 'Weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{}' } },
          ],
        },
        {
          role: 'tool',
          tool_call_id: 'call_1',
          content: [
            { type: 'text', text: 'part one' },
            { type: 'text', text: 'part two' },
          ],
        },
      ],
    });
    const body = lastValid(mock);
    const tr = ((body.messages as Json[])[2]!.content as Json[])[0]!;
    expect(tr.type).toBe('tool_result');
    expect(JSON.stringify(tr.content)).toContain('part one');
    expect(JSON.stringify(tr.content)).toContain('part two');
  });

  it('a tool message with empty content, or an empty text part, still answers its tool_use validly', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool, timeTool],
      messages: [
        { role: 'user', content: 'Go' },
        {
          role: 'assistant',
          content: '',
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"x"}' } },
            { id: 'call_2', type: 'function', function: { name: 'get_time', arguments: '' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '' },
        { role: 'tool', tool_call_id: 'call_2', content: [{ type: 'text', text: '' }] },
      ],
    });
    const body = lastValid(mock);
    const results = ((body.messages as Json[])[2]!.content as Json[]).filter((b) => b.type === 'tool_result');
    expect(results.map((b) => b.tool_use_id).sort()).toEqual(['call_1', 'call_2']);
    const uses = ((body.messages as Json[])[1]!.content as Json[]).filter((b) => b.type === 'tool_use');
    expect(uses.map((b) => b.input)).toEqual([{ city: 'x' }, {}]);
  });

  it('an assistant message with text and tool_calls: text then tool_use blocks, the text kept', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool],
      messages: weatherRound('Let me check.'),
    });
    const body = lastValid(mock);
    const a = (body.messages as Json[])[1]!.content as Json[];
    expect(a.map((b) => b.type)).toEqual(['text', 'tool_use']);
    expect(a[0]!.text).toBe('Let me check.');
    expect(a[1]).toMatchObject({ id: 'call_1', name: 'get_weather', input: { city: 'Oslo' } });
  });

  it('an assistant message whose content is whitespace beside tool_calls sends no whitespace-only text block', async () => {
    // Anthropic: "text content blocks must contain non-whitespace text".
    const { mock, client } = await setup();
    const r = await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool],
      messages: weatherRound('\n\n'),
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    lastValid(mock);
  });

  it('a whitespace-only user message between turns is not sent as a whitespace-only text block', async () => {
    // Anthropic: "text content blocks must contain non-whitespace text".
    const { mock, client } = await setup();
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello' },
        {
          role: 'user',
          content: [
            { type: 'text', text: ' ' },
            { type: 'text', text: 'Go on' },
          ],
        },
      ],
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = lastValid(mock);
    expect(JSON.stringify(body.messages)).toContain('Go on');
  });

  it('tool call ids reused across rounds (minted by another provider) are made unique for Anthropic', async () => {
    // Anthropic: "`tool_use` ids must be unique" across the conversation; OpenAI accepts repeated ids by round.
    const { mock, client } = await setup();
    const round = (city: string, result: string): ChatCompletionMessageParam[] => [
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          {
            id: 'call_0',
            type: 'function',
            function: { name: 'get_weather', arguments: JSON.stringify({ city }) },
          },
        ],
      },
      { role: 'tool', tool_call_id: 'call_0', content: result },
    ];
    const r = await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool],
      messages: [
        { role: 'user', content: 'Oslo then Rome' },
        ...round('Oslo', 'rain'),
        ...round('Rome', 'sun'),
      ],
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = lastValid(mock);
    const msgs = body.messages as Json[];
    // Each result still goes with its own call.
    expect(((msgs[2]!.content as Json[])[0]!.content as string).includes('rain')).toBe(true);
    expect(((msgs[4]!.content as Json[])[0]!.content as string).includes('sun')).toBe(true);
  });

  it('a system message between the tool calls and their results does not split the pairing', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      tools: [weatherTool],
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"A"}' } },
          ],
        },
        { role: 'developer', content: 'Results follow.' },
        { role: 'tool', tool_call_id: 'call_1', content: 'rain' },
      ],
    });
    const body = lastValid(mock);
    expect(JSON.stringify(body.system)).toContain('Be brief.');
    expect(JSON.stringify(body.system)).toContain('Results follow.');
    expect((body.messages as Json[]).every((m) => m.role !== 'system')).toBe(true);
  });

  it('an assistant message carrying only a top-level refusal (as OpenAI answers one) keeps that turn', async () => {
    // OpenAI's assistant message has `refusal` beside `content: null`; dropping it merges two user turns.
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'user', content: 'Do the bad thing' },
        { role: 'assistant', content: null, refusal: 'I can not help with that.' },
        { role: 'user', content: 'Then tell a joke' },
      ],
    });
    const msgs = lastValid(mock).messages as Json[];
    expect(msgs.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect(JSON.stringify(msgs[1])).toContain('I can not help with that.');
  });

  it('a long conversation (120 turns, a tool round every 10) goes as one valid request', async () => {
    const { mock, client } = await setup();
    const messages: ChatCompletionMessageParam[] = [{ role: 'system', content: 'sys' }];
    for (let i = 0; i < 60; i++) {
      messages.push({ role: 'user', content: `q${i}` });
      if (i % 10 === 0) {
        messages.push({
          role: 'assistant',
          content: null,
          tool_calls: [
            {
              id: `call_${i}`,
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":"c"}' },
            },
          ],
        });
        messages.push({ role: 'tool', tool_call_id: `call_${i}`, content: `r${i}` });
      }
      messages.push({ role: 'assistant', content: `a${i}` });
    }
    messages.push({ role: 'user', content: 'last' });
    const r = await client.chat.completions.create({ model: 'r', tools: [weatherTool], messages });
    expect(r.choices[0]!.message.content).toBe('ok');
    const body = lastValid(mock);
    const text = JSON.stringify(body.messages);
    for (const s of ['q0', 'a59', 'r50', 'last']) expect(text).toContain(s);
  });

  it('a final assistant tool call without its result (a client asking to continue) gets a clear 400', async () => {
    // OpenAI and Anthropic both refuse tool calls without results; the client must hear it as a 400.
    const { client } = await setup();
    const status = await statusOf(
      client.chat.completions.create({
        model: 'r',
        tools: [weatherTool],
        messages: [
          { role: 'user', content: 'Weather?' },
          {
            role: 'assistant',
            content: 'Checking',
            tool_calls: [
              { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{}' } },
            ],
          },
        ],
      }),
    );
    expect(status).toBe(400);
  });

  it('legacy functions / function_call / role "function" (still accepted by OpenAI) are translated or refused, never dropped', async () => {
    // OpenAI still serves the deprecated function-calling fields; silently dropping them changes the answer.
    const { mock, url } = await setup();
    const r = await postChat(
      { url },
      {
        model: 'r',
        functions: [weatherTool.function],
        function_call: { name: 'get_weather' },
        messages: [
          { role: 'user', content: 'Weather in Oslo?' },
          {
            role: 'assistant',
            content: null,
            function_call: { name: 'get_weather', arguments: '{"city":"Oslo"}' },
          },
          { role: 'function', name: 'get_weather', content: 'rain, 4 degrees' },
        ],
      },
    );
    for (const e of mock.errors) expect(e).toBeUndefined();
    if (r.status === 200) {
      const body = mock.bodies.at(-1)!;
      expect((body.tools as Json[] | undefined)?.map((t) => t.name)).toEqual(['get_weather']);
      expect(JSON.stringify(body.messages)).toContain('rain, 4 degrees');
    } else expect(r.status).toBe(400);
  });
});

// =============================================================================================
// Requests: content parts.

describe('audit: content parts', () => {
  it('data URLs of each Anthropic image type, an http URL and detail: image blocks with the right sources', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Describe' },
            { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_1PX}`, detail: 'high' } },
            { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${JPEG_1PX}` } },
            { type: 'image_url', image_url: { url: `data:image/gif;base64,${GIF_1PX}`, detail: 'low' } },
            { type: 'image_url', image_url: { url: `data:image/webp;base64,${WEBP_1PX}` } },
            { type: 'image_url', image_url: { url: 'https://example.com/cat.png', detail: 'auto' } },
          ],
        },
      ],
    });
    const body = lastValid(mock);
    const blocks = (body.messages as Json[])[0]!.content as Json[];
    expect(
      blocks.map((b) => (b.source as Json | undefined)?.media_type ?? (b.source as Json | undefined)?.url),
    ).toEqual([
      undefined,
      'image/png',
      'image/jpeg',
      'image/gif',
      'image/webp',
      'https://example.com/cat.png',
    ]);
  });

  it('a data URL whose media type is upper case (data:image/PNG) is sent as image/png, not dropped', async () => {
    // RFC 2045/2397: media types are case-insensitive; Anthropic's enum is lower case.
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Describe' },
            { type: 'image_url', image_url: { url: `data:image/PNG;base64,${PNG_1PX}` } },
          ],
        },
      ],
    });
    const body = lastValid(mock);
    const blocks = (body.messages as Json[])[0]!.content as Json[];
    expect(blocks.find((b) => b.type === 'image')?.source).toEqual({
      type: 'base64',
      media_type: 'image/png',
      data: PNG_1PX,
    });
  });

  it('an image Anthropic cannot read (svg) is refused with a clear 400, not silently dropped', async () => {
    // Dropping the only image of a question answers a different question; the client should be told.
    const { mock, client } = await setup();
    const res = await statusOf(
      client.chat.completions.create({
        model: 'r',
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'What is in this image?' },
              { type: 'image_url', image_url: { url: `data:image/svg+xml;base64,${PNG_1PX}` } },
            ],
          },
        ],
      }),
    );
    // Whatever is sent must be valid; and the image must not vanish without a word.
    for (const e of mock.errors) expect(e).toBeUndefined();
    expect(res).toBe(400);
  });

  it('a user message holding only input_audio is refused with a clear 400, not sent as an empty question', async () => {
    const { mock, client } = await setup();
    const res = await statusOf(client.chat.completions.create({ model: 'r', messages: [AUDIO_ONLY] }));
    for (const e of mock.errors) expect(e).toBeUndefined();
    expect(res).toBe(400);
  });

  it('an audio-only last user message does not turn the previous answer into a prefill Claude continues', async () => {
    // Dropping the user's (unsupported) turn leaves a final assistant turn, which Anthropic treats as a prefill.
    const { mock, client } = await setup();
    const status = await statusOf(
      client.chat.completions.create({
        model: 'r',
        messages: [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: 'Hello! Send me a recording.' },
          AUDIO_ONLY,
        ],
      }),
    );
    if (status === 200) {
      const msgs = lastValid(mock).messages as Json[];
      expect(msgs.at(-1)!.role).toBe('user');
    } else expect(status).toBe(400);
  });

  it('file parts Anthropic cannot take (text/plain data, a file_id) are refused or translated, not silently dropped', async () => {
    // OpenAI's file part carries the question's subject; an answer without it is a different answer.
    const { mock, url } = await setup();
    for (const file of [
      { filename: 'notes.txt', file_data: 'data:text/plain;base64,aGVsbG8gd29ybGQ=' },
      { file_id: 'file-abc123' },
    ]) {
      const before = mock.bodies.length;
      const r = await postChat(
        { url },
        {
          model: 'r',
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: 'Summarise this file' },
                { type: 'file', file },
              ],
            },
          ],
        },
      );
      if (r.status === 200) {
        const blocks = (mock.bodies.at(-1)!.messages as Json[])[0]!.content as Json[];
        expect(mock.bodies.length).toBe(before + 1);
        expect(blocks.map((b) => b.type)).toContain('document');
      } else expect(r.status).toBe(400);
    }
  });

  it('a PDF file part becomes a document block; a user message with a name keeps its text', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          name: 'alice',
          content: [
            { type: 'text', text: 'Summarise' },
            {
              type: 'file',
              file: { filename: 'a.pdf', file_data: 'data:application/pdf;base64,JVBERi0xLjQK' },
            },
          ],
        },
      ],
    });
    const body = lastValid(mock);
    const blocks = (body.messages as Json[])[0]!.content as Json[];
    expect(blocks.map((b) => b.type)).toEqual(['text', 'document']);
  });
});

// =============================================================================================
// Requests: parameters.

describe('audit: parameters', () => {
  it('tool_choice none / auto / required / named, each with parallel_tool_calls false: shapes Anthropic takes', async () => {
    const { mock, client } = await setup();
    const base = {
      model: 'r',
      messages: [{ role: 'user' as const, content: 'hi' }],
      tools: [weatherTool, timeTool],
    };
    await client.chat.completions.create({ ...base, tool_choice: 'auto', parallel_tool_calls: false });
    expect(lastValid(mock).tool_choice).toEqual({ type: 'auto', disable_parallel_tool_use: true });
    await client.chat.completions.create({ ...base, tool_choice: 'required', parallel_tool_calls: false });
    expect(lastValid(mock).tool_choice).toEqual({ type: 'any', disable_parallel_tool_use: true });
    await client.chat.completions.create({
      ...base,
      tool_choice: { type: 'function', function: { name: 'get_time' } },
      parallel_tool_calls: false,
    });
    expect(lastValid(mock).tool_choice).toEqual({
      type: 'tool',
      name: 'get_time',
      disable_parallel_tool_use: true,
    });
    // ToolChoiceNone has only `type`.
    await client.chat.completions.create({ ...base, tool_choice: 'none', parallel_tool_calls: false });
    expect(lastValid(mock).tool_choice).toEqual({ type: 'none' });
  });

  it('tool_choice "any" (accepted by the gateway as required) forces a tool on Anthropic too', async () => {
    // README: tool_choice takes Mistral's "any"; Anthropic's equivalent is {type: "any"}, not auto.
    const { mock, url } = await setup();
    const r = await postChat(
      { url },
      { model: 'r', messages: [{ role: 'user', content: 'hi' }], tools: [weatherTool], tool_choice: 'any' },
    );
    expect(r.status).toBe(200);
    expect(lastValid(mock).tool_choice).toEqual({ type: 'any' });
  });

  it('tool_choice allowed_tools with mode required forces one of the allowed tools', async () => {
    // OpenAI: {type: "allowed_tools", allowed_tools: {mode: "required", tools}} = must call one of those tools.
    const { mock, url } = await setup();
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
        tools: [weatherTool, timeTool],
        tool_choice: {
          type: 'allowed_tools',
          allowed_tools: { mode: 'required', tools: [{ type: 'function', function: { name: 'get_time' } }] },
        },
      },
    );
    expect(r.status).toBe(200);
    const tc = lastValid(mock).tool_choice as Json | undefined;
    expect(tc?.type === 'any' || (tc?.type === 'tool' && tc.name === 'get_time')).toBe(true);
  });

  it('tool_choice or parallel_tool_calls without tools sends no tool_choice (Anthropic wants tools with it)', async () => {
    const { mock, client } = await setup();
    const r1 = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      parallel_tool_calls: false,
    });
    expect(r1.choices[0]!.message.content).toBe('ok');
    lastValid(mock);
    const r2 = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      tools: [],
      tool_choice: 'auto',
    });
    expect(r2.choices[0]!.message.content).toBe('ok');
    lastValid(mock);
  });

  it('stop as a string and as an array become stop_sequences', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stop: 'END',
    });
    expect(lastValid(mock).stop_sequences).toEqual(['END']);
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stop: ['a', 'b', 'c', 'd'],
    });
    expect(lastValid(mock).stop_sequences).toEqual(['a', 'b', 'c', 'd']);
  });

  it('a whitespace-only stop ("\\n") is never sent as a stop sequence Anthropic refuses', async () => {
    // Anthropic: "stop_sequences: each stop sequence must contain non-whitespace".
    const { mock, client } = await setup();
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      stop: ['\n', 'END'],
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    expect(lastValid(mock).stop_sequences).toEqual(['END']);
  });

  it('user becomes metadata.user_id; one longer than Anthropic takes (256) is not sent as is', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      user: 'u-42',
    });
    expect(lastValid(mock).metadata).toEqual({ user_id: 'u-42' });
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      user: 'x'.repeat(300),
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    lastValid(mock);
  });

  it("OpenAI's own metadata, service_tier, store, seed, logprobs, penalties, logit_bias, n:1: no field Anthropic refuses", async () => {
    const { mock, client } = await setup();
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      metadata: { session: 'abc' },
      service_tier: 'default',
      store: true,
      seed: 7,
      logprobs: true,
      top_logprobs: 2,
      presence_penalty: 0.5,
      frequency_penalty: 0.5,
      logit_bias: { '50256': -100 },
      n: 1,
      prediction: { type: 'content', content: 'x' },
      modalities: ['text'],
      verbosity: 'low',
    });
    expect(r.choices[0]!.message.content).toBe('ok');
    lastValid(mock);
  });

  it('max_tokens absent, max_tokens, max_completion_tokens: always a positive max_tokens', async () => {
    const { mock, client } = await setup();
    const m = [{ role: 'user' as const, content: 'hi' }];
    await client.chat.completions.create({ model: 'r', messages: m });
    expect(lastValid(mock).max_tokens).toBe(4096);
    await client.chat.completions.create({ model: 'r', messages: m, max_tokens: 77 });
    expect(lastValid(mock).max_tokens).toBe(77);
    await client.chat.completions.create({ model: 'r', messages: m, max_completion_tokens: 88 });
    expect(lastValid(mock).max_tokens).toBe(88);
  });

  it('max_tokens 0 is refused by the gateway with a 400 naming the field, or sent as a valid value', async () => {
    const { mock, url } = await setup();
    const r = await postChat(
      { url },
      { model: 'r', messages: [{ role: 'user', content: 'hi' }], max_tokens: 0 },
    );
    for (const e of mock.errors) expect(e).toBeUndefined();
    if (mock.bodies.length === 0) {
      expect(r.status).toBe(400);
      expect((r.json.error as Json).param).toBe('max_tokens');
    }
  });

  it('temperature 1.8 and top_p together: one valid sampling setting (Sonnet 4.5 refuses both)', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
      temperature: 1.8,
      top_p: 0.5,
    });
    const body = lastValid(mock);
    expect(body.temperature).toBe(1);
  });

  it('reasoning_effort with temperature, a forced tool, a prefill or a small max_tokens: always a request Claude takes', async () => {
    const { mock, client } = await setup();
    const m = [{ role: 'user' as const, content: 'hi' }];
    const cases = [
      { reasoning_effort: 'high' as const, max_completion_tokens: 3000, temperature: 0.2, top_p: 0.9 },
      { reasoning_effort: 'medium' as const, tools: [weatherTool], tool_choice: 'required' as const },
      {
        reasoning_effort: 'low' as const,
        tools: [weatherTool],
        tool_choice: { type: 'function' as const, function: { name: 'get_weather' } },
      },
      { reasoning_effort: 'low' as const, max_tokens: 1100 },
    ];
    for (const c of cases) {
      const r = await client.chat.completions.create({ model: 'r', messages: m, ...c });
      expect(r.choices[0]!.message.content).toBe('ok');
      lastValid(mock);
    }
    const prefill = await client.chat.completions.create({
      model: 'r',
      reasoning_effort: 'high',
      messages: [...m, { role: 'assistant', content: 'Sure, ' }],
    });
    expect(prefill.choices[0]!.message.content).toBe('ok');
    expect((lastValid(mock).messages as Json[]).at(-1)).toMatchObject({ role: 'assistant' });
  });

  it('response_format json_schema: the schema reaches Claude, no OpenAI field leaks', async () => {
    const { mock, client } = await setup(both([{ type: 'text', text: '{"city":"Oslo"}' }], 'end_turn'));
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'system', content: 'You extract.' },
        { role: 'user', content: 'Oslo' },
      ],
      response_format: {
        type: 'json_schema',
        json_schema: {
          name: 'place',
          strict: true,
          schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    });
    expect(JSON.parse(r.choices[0]!.message.content!)).toEqual({ city: 'Oslo' });
    const body = lastValid(mock);
    expect(JSON.stringify(body.system)).toContain('You extract.');
    expect(JSON.stringify(body.system)).toContain('city');
  });

  it('n > 1 is refused before any upstream call', async () => {
    const { mock, url } = await setup();
    const r = await postChat({ url }, { model: 'r', messages: [{ role: 'user', content: 'hi' }], n: 2 });
    expect(r.status).toBe(400);
    expect(mock.bodies).toHaveLength(0);
  });

  it('a conversation of only system messages and one leading assistant turn is made valid', async () => {
    const { mock, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        { role: 'system', content: 'S' },
        { role: 'assistant', content: 'Hello, how can I help?' },
        { role: 'user', content: 'Hi' },
        { role: 'user', content: 'Again' },
        { role: 'assistant', content: 'A' },
        { role: 'assistant', content: 'B' },
        { role: 'user', content: 'Q' },
      ],
    });
    const body = lastValid(mock);
    const text = JSON.stringify(body.messages);
    for (const s of ['Hello, how can I help?', 'Hi', 'Again', '"A"', '"B"', 'Q']) expect(text).toContain(s);
  });
});

// =============================================================================================
// Answers.

const STOPS: [string, string][] = [
  ['end_turn', 'stop'],
  ['max_tokens', 'length'],
  ['stop_sequence', 'stop'],
  ['tool_use', 'tool_calls'],
  ['refusal', 'content_filter'],
  ['pause_turn', 'stop'],
  ['model_context_window_exceeded', 'length'],
];

describe('audit: answers', () => {
  it('each stop_reason maps to the OpenAI finish_reason, JSON and streamed', async () => {
    let stop = 'end_turn';
    const { client } = await setup((body) => {
      const blocks: Json[] =
        stop === 'tool_use'
          ? [{ type: 'tool_use', id: 'toolu_1', name: 'get_time', input: {} }]
          : [{ type: 'text', text: 'Hi' }];
      return both(blocks, stop)(body, 0);
    });
    const got: [string, string | null, string | null][] = [];
    for (const [s] of STOPS) {
      stop = s;
      const r = await client.chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
        tools: [timeTool],
      });
      const chunks = await collectChunks(
        await client.chat.completions.create({
          model: 'r',
          messages: [{ role: 'user', content: 'hi' }],
          tools: [timeTool],
          stream: true,
        }),
      );
      const fin = chunks.map((c) => c.choices[0]?.finish_reason).find((f) => f != null) ?? null;
      got.push([s, r.choices[0]!.finish_reason, fin]);
    }
    expect(got).toEqual(STOPS.map(([s, f]) => [s, f, f]));
  });

  it('usage with cache tokens: prompt_tokens counts all input, cached_tokens the cache reads (JSON and stream)', async () => {
    const usage = {
      input_tokens: 100,
      cache_creation_input_tokens: 20,
      cache_read_input_tokens: 30,
      output_tokens: 7,
    };
    const { client } = await setup(both([{ type: 'text', text: 'Hi there' }], 'end_turn', usage));
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(r.usage).toMatchObject({ prompt_tokens: 150, completion_tokens: 7, total_tokens: 157 });
    expect(r.usage?.prompt_tokens_details?.cached_tokens).toBe(30);
    const chunks = await streamWithUsage(client);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: 150, completion_tokens: 7, total_tokens: 157 });
    expect(last.usage?.prompt_tokens_details?.cached_tokens).toBe(30);
  });

  it('text, two tool_use blocks (one with empty input) and text again: content and tool_calls whole, JSON = stream', async () => {
    const blocks: Json[] = [
      { type: 'text', text: 'Checking both.' },
      { type: 'tool_use', id: 'toolu_A', name: 'get_weather', input: { city: 'Oslo' } },
      { type: 'tool_use', id: 'toolu_B', name: 'get_time', input: {} },
    ];
    const { client } = await setup(both(blocks, 'tool_use'));
    const req = {
      model: 'r',
      messages: [{ role: 'user' as const, content: 'hi' }],
      tools: [weatherTool, timeTool],
    };
    const r = await client.chat.completions.create(req);
    const m = r.choices[0]!.message;
    expect(m.content).toBe('Checking both.');
    const calls = m.tool_calls!.map((c) =>
      c.type === 'function' ? [c.id, c.function.name, c.function.arguments] : [],
    );
    expect(calls.map((c) => [c[0], c[1], JSON.parse(c[2]!) as unknown])).toEqual([
      ['toolu_A', 'get_weather', { city: 'Oslo' }],
      ['toolu_B', 'get_time', {}],
    ]);
    // The openai SDK's stream helper accumulates by index.
    const final = await client.chat.completions.stream(req).finalChatCompletion();
    const fm = final.choices[0]!.message;
    expect(fm.content).toBe('Checking both.');
    expect(
      fm.tool_calls!.map((c) => [c.id, c.function.name, JSON.parse(c.function.arguments) as unknown]),
    ).toEqual([
      ['toolu_A', 'get_weather', { city: 'Oslo' }],
      ['toolu_B', 'get_time', {}],
    ]);
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
  });

  it('streamed tool-call chunks: index from 0, id and name only on the first chunk of each call', async () => {
    const blocks: Json[] = [
      { type: 'text', text: 'Hm.' },
      { type: 'tool_use', id: 'toolu_A', name: 'get_weather', input: { city: 'Oslo' } },
      { type: 'tool_use', id: 'toolu_B', name: 'get_weather', input: { city: 'Rome' } },
    ];
    const { client } = await setup(both(blocks, 'tool_use'));
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'hi' }],
        tools: [weatherTool],
        stream: true,
      }),
    );
    const tcs = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
    const byIndex = new Map<number, typeof tcs>();
    for (const tc of tcs) byIndex.set(tc.index, [...(byIndex.get(tc.index) ?? []), tc]);
    expect([...byIndex.keys()]).toEqual([0, 1]);
    for (const [i, list] of byIndex) {
      expect(list[0]!.id).toBe(i === 0 ? 'toolu_A' : 'toolu_B');
      expect(list[0]!.type).toBe('function');
      expect(list.slice(1).every((tc) => tc.id === undefined && tc.function?.name === undefined)).toBe(true);
      expect(JSON.parse(list.map((tc) => tc.function?.arguments ?? '').join(''))).toEqual({
        city: i === 0 ? 'Oslo' : 'Rome',
      });
    }
    // All chunks one id, object chat.completion.chunk.
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
  });

  it('an answer with empty content (end_turn, no blocks) reads as an empty assistant message', async () => {
    const { client } = await setup((body) =>
      body.stream === true
        ? { events: [messageStart(), messageDelta('end_turn'), STOP] }
        : { json: message([], 'end_turn') },
    );
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(r.choices[0]!.message.role).toBe('assistant');
    expect(r.choices[0]!.message.content ?? '').toBe('');
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const final = await client.chat.completions
      .stream({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .finalChatCompletion();
    expect(final.choices[0]!.finish_reason).toBe('stop');
    expect(final.choices[0]!.message.content ?? '').toBe('');
  });

  it('nullable cache counts (null, as Anthropic documents them) give numeric usage, JSON and stream', async () => {
    const usage = {
      input_tokens: 12,
      cache_creation_input_tokens: null,
      cache_read_input_tokens: null,
      output_tokens: 3,
    };
    const { client } = await setup(both([{ type: 'text', text: 'Hi' }], 'end_turn', usage));
    const r = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(r.usage).toMatchObject({ prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 });
    const chunks = await streamWithUsage(client);
    expect(chunks.at(-1)!.usage).toMatchObject({ prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 });
  });

  it('a tool_use followed by more text, streamed: the text after the call is kept, the call whole', async () => {
    const blocks: Json[] = [
      { type: 'tool_use', id: 'toolu_X', name: 'get_weather', input: { city: 'Oslo' } },
      { type: 'text', text: 'Then I will summarise.' },
    ];
    const { client } = await setup(both(blocks, 'tool_use'));
    const req = { model: 'r', messages: [{ role: 'user' as const, content: 'hi' }], tools: [weatherTool] };
    const json = (await client.chat.completions.create(req)).choices[0]!.message;
    const final = (await client.chat.completions.stream(req).finalChatCompletion()).choices[0]!.message;
    for (const m of [json, final]) {
      expect(m.content).toBe('Then I will summarise.');
      expect(m.tool_calls).toHaveLength(1);
    }
    expect(JSON.parse(final.tool_calls![0]!.function.arguments)).toEqual({ city: 'Oslo' });
  });

  it('text carried by content_block_start itself (allowed by the event schema) is not lost', async () => {
    const { client } = await setup(() => ({
      events: [
        messageStart(),
        blockStart(0, { type: 'text', text: 'Hel' }),
        delta(0, { type: 'text_delta', text: 'lo' }),
        blockStop(0),
        messageDelta('end_turn'),
        STOP,
      ],
    }));
    const final = await client.chat.completions
      .stream({ model: 'r', messages: [{ role: 'user', content: 'hi' }] })
      .finalChatCompletion();
    expect(final.choices[0]!.message.content).toBe('Hello');
  });

  it('a tool_use whose streamed input comes in the start block with no deltas keeps its arguments', async () => {
    const { client } = await setup(() => ({
      events: [
        messageStart(),
        blockStart(0, { type: 'tool_use', id: 'toolu_S', name: 'get_weather', input: { city: 'Lima' } }),
        blockStop(0),
        messageDelta('tool_use'),
        STOP,
      ],
    }));
    const final = await client.chat.completions
      .stream({ model: 'r', messages: [{ role: 'user', content: 'hi' }], tools: [weatherTool] })
      .finalChatCompletion();
    expect(JSON.parse(final.choices[0]!.message.tool_calls![0]!.function.arguments)).toEqual({
      city: 'Lima',
    });
  });
});

// =============================================================================================
// SDK loops end to end.

describe('audit: SDK tool loops against the strict mock', () => {
  /** Round 1: two parallel tool calls (one with no input); round 2: text. */
  function twoRounds(stream: boolean): Answerer {
    return (body) => {
      const msgs = body.messages as Json[];
      const hasResults = JSON.stringify(msgs.at(-1)).includes('tool_result');
      const blocks: Json[] = hasResults
        ? [{ type: 'text', text: 'Oslo: rain at noon.' }]
        : [
            { type: 'text', text: 'Looking up.' },
            { type: 'tool_use', id: 'toolu_w1', name: 'get_weather', input: { city: 'Oslo' } },
            { type: 'tool_use', id: 'toolu_t1', name: 'get_time', input: {} },
          ];
      const usage = { input_tokens: 40, cache_read_input_tokens: 5, output_tokens: 9 };
      void stream;
      return both(blocks, hasResults ? 'end_turn' : 'tool_use', usage)(body, 0);
    };
  }

  /** The Vercel AI SDK's two tools: get_weather answers rain, get_time answers `time`. */
  function aiSdkTools(time: string) {
    return {
      get_weather: tool({
        description: 'Weather of a city',
        inputSchema: jsonSchema<{ city: string }>({
          type: 'object',
          properties: { city: { type: 'string' } },
          required: ['city'],
        }),
        execute: ({ city }) => Promise.resolve({ city, sky: 'rain' }),
      }),
      get_time: tool({
        description: 'Current time',
        inputSchema: jsonSchema<Record<string, never>>({ type: 'object', properties: {} }),
        execute: () => Promise.resolve(time),
      }),
    };
  }

  /** LangChain's ChatOpenAI on the gateway at `url`, both tools bound. */
  function langchainModel(url: string, streaming?: boolean) {
    return new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      configuration: { baseURL: `${url}/v1` },
      maxRetries: 0,
      ...(streaming ? { streaming } : {}),
    }).bindTools([weatherTool, timeTool]);
  }

  it('Vercel AI SDK generateText with stopWhen: two parallel calls, results back, final text; steps consistent', async () => {
    const { mock, url } = await setup(twoRounds(false));
    const provider = createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' });
    const out = await generateText({
      model: provider.chat('r'),
      system: 'Be brief.',
      prompt: 'Weather and time in Oslo?',
      stopWhen: stepCountIs(3),
      tools: aiSdkTools('12:00'),
    });
    expect(mock.errors).toEqual([undefined, undefined]);
    expect(out.text).toBe('Oslo: rain at noon.');
    expect(out.steps).toHaveLength(2);
    expect(out.steps[0]!.toolCalls.map((c) => [c.toolCallId, c.toolName, c.input])).toEqual([
      ['toolu_w1', 'get_weather', { city: 'Oslo' }],
      ['toolu_t1', 'get_time', {}],
    ]);
    expect(out.steps[0]!.finishReason).toBe('tool-calls');
    expect(out.finishReason).toBe('stop');
    expect(out.totalUsage.inputTokens).toBe(90);
    const second = mock.bodies[1]!;
    const msgs = second.messages as Json[];
    expect(msgs.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect((msgs[1]!.content as Json[]).map((b) => b.type)).toEqual(['text', 'tool_use', 'tool_use']);
    expect(JSON.stringify(msgs[2])).toContain('rain');
    expect(JSON.stringify(msgs[2])).toContain('12:00');
  });

  it('Vercel AI SDK streamText with stopWhen: the same loop streamed', async () => {
    const { mock, url } = await setup(twoRounds(true));
    const provider = createOpenAI({ baseURL: `${url}/v1`, apiKey: 'k' });
    const st = streamText({
      model: provider.chat('r'),
      prompt: 'Weather and time in Oslo?',
      stopWhen: stepCountIs(3),
      tools: aiSdkTools(''),
    });
    expect(await st.text).toBe('Oslo: rain at noon.');
    const steps = await st.steps;
    expect(steps[0]!.toolCalls.map((c) => [c.toolCallId, c.input])).toEqual([
      ['toolu_w1', { city: 'Oslo' }],
      ['toolu_t1', {}],
    ]);
    expect(mock.errors).toEqual([undefined, undefined]);
    expect((await st.totalUsage).inputTokens).toBe(90);
  });

  it('LangChain ChatOpenAI: bindTools, tool_calls, ToolMessages back (one empty), final text', async () => {
    const { mock, url } = await setup(twoRounds(false));
    const model = langchainModel(url);
    const first = await model.invoke([new HumanMessage('Weather and time?')]);
    expect(first.tool_calls?.map((c) => [c.id, c.name, c.args])).toEqual([
      ['toolu_w1', 'get_weather', { city: 'Oslo' }],
      ['toolu_t1', 'get_time', {}],
    ]);
    const second = await model.invoke([
      new HumanMessage('Weather and time?'),
      first,
      new ToolMessage({ tool_call_id: 'toolu_w1', content: 'rain' }),
      new ToolMessage({ tool_call_id: 'toolu_t1', content: '' }),
    ]);
    expect(second.content).toBe('Oslo: rain at noon.');
    expect(mock.errors).toEqual([undefined, undefined]);
    expect(second.usage_metadata).toMatchObject({ input_tokens: 45, output_tokens: 9, total_tokens: 54 });

    // Streamed: the chunks concatenate to the same calls.
    const { url: url2 } = await setup(twoRounds(true));
    const sModel = langchainModel(url2, true);
    let acc: AIMessageChunk | undefined;
    for await (const c of await sModel.stream([new HumanMessage('Weather and time?')]))
      acc = acc === undefined ? c : acc.concat(c);
    expect(acc!.tool_calls?.map((c) => [c.id, c.name, c.args])).toEqual([
      ['toolu_w1', 'get_weather', { city: 'Oslo' }],
      ['toolu_t1', 'get_time', {}],
    ]);
  });

  it('openai SDK runTools-style loop by hand: streamed calls sent back as the SDK built them', async () => {
    const { mock, client } = await setup(twoRounds(true));
    const messages: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Weather and time?' }];
    const first = await client.chat.completions
      .stream({ model: 'r', messages, tools: [weatherTool, timeTool] })
      .finalChatCompletion();
    const m = first.choices[0]!.message;
    messages.push({ role: 'assistant', content: m.content, tool_calls: m.tool_calls });
    for (const tc of m.tool_calls ?? [])
      messages.push({ role: 'tool', tool_call_id: tc.id, content: `result ${tc.id}` });
    const second = await client.chat.completions
      .stream({ model: 'r', messages, tools: [weatherTool, timeTool] })
      .finalChatCompletion();
    expect(second.choices[0]!.message.content).toBe('Oslo: rain at noon.');
    expect(mock.errors).toEqual([undefined, undefined]);
  });
});
