/**
 * Conversations that move between providers: a history written with one provider (Kimi K2's
 * `functions.name:0` ids, Claude's `toolu_` ids and signed thinking, OpenAI's `call_` ids, ids repeated per
 * round, empty ones) continues on another, in one request or across the rounds of an agent loop with
 * failover in between. The upstream mocks refuse what the real APIs refuse — Anthropic's id pattern, unique
 * tool_use ids, every tool_result answering a tool_use of the message before it and coming first in its user
 * turn, alternating turns, no empty text; OpenAI's tool messages answering the assistant's tool_calls, ids of
 * at most 40 characters, no unknown message fields on a strict server; Mistral's 9-character ids. Rules:
 * - The next upstream takes the history (no 400 the client cannot fix), each tool result still paired with
 *   the call it answers, and the ids the client holds stay the ones it sent and was given.
 * - An agent loop (the openai SDK's runTools, streamed) completes on a route of Claude and an OpenAI-dialect
 *   upstream however the rounds are spread over them.
 */
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import {
  contentError,
  thinkingBudget,
  toolsError,
  undefinedToolsError,
  unknownFieldError,
} from '../../src/sim/anthropic-validate.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chunkFrame, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;

const CLAUDE = 'claude-sonnet-4-5';

// ---------------------------------------------------------------------------------------------
// What each API refuses

const sign = (text: string): string =>
  createHash('sha256').update(`claude-mock:${text}`).digest('base64').replace(/=+$/, '');

function blocksOf(m: Json): Json[] {
  return Array.isArray(m.content) ? (m.content as Json[]) : [];
}

/** The Messages API's refusal of `body`, or undefined when it takes it (the simulator's rules and more). */
function claudeRefusal(body: Json): string | undefined {
  const msgs = Array.isArray(body.messages) ? (body.messages as Json[]) : [];
  const simulated =
    unknownFieldError(body) ??
    toolsError(body.tools) ??
    undefinedToolsError(msgs, body.tools) ??
    contentError(msgs);
  if (simulated) return simulated.message;
  const budget = thinkingBudget(body);
  if (typeof budget === 'object') return budget.message;
  if (msgs[0]?.role !== 'user') return 'messages.0.role: the first message must use the "user" role';
  for (let i = 1; i < msgs.length; i++)
    if (msgs[i]!.role === msgs[i - 1]!.role)
      return `messages: roles must alternate between "user" and "assistant"`;
  const seen = new Set<string>();
  for (const [i, m] of msgs.entries()) {
    const blocks = blocksOf(m);
    for (const [j, b] of blocks.entries()) {
      if (b.type === 'tool_use') {
        const id = String(b.id);
        if (seen.has(id)) return `messages.${i}.content.${j}: \`tool_use\` ids must be unique`;
        seen.add(id);
      }
      if (b.type === 'thinking' && b.signature !== sign(String(b.thinking)))
        return `messages.${i}.content.${j}: Invalid \`signature\` in \`thinking\` block`;
    }
    // The turn after tool calls opens with one tool_result per call, before any other block.
    const calls = i > 0 ? blocksOf(msgs[i - 1]!).filter((b) => b.type === 'tool_use').length : 0;
    if (m.role === 'user' && blocks.slice(0, calls).some((b) => b.type !== 'tool_result'))
      return `messages.${i}: Did not find ${calls} tool_result block(s) at the beginning of this message. Messages following tool_use blocks must begin with a matching number of tool_result blocks.`;
  }
  return undefined;
}

/** A strict OpenAI-compatible server's refusal of a Chat Completions body (OpenAI's own rules, Groq's strictness). */
function openaiRefusal(body: Json, opts: { mistralIds?: boolean } = {}): string | undefined {
  const msgs = body.messages as Json[];
  let open: Set<string> | undefined;
  for (const [i, m] of msgs.entries()) {
    if ('thinking_blocks' in m) return `'messages.${i}' : property 'thinking_blocks' is unsupported`;
    if (m.role === 'tool') {
      const id = String(m.tool_call_id);
      if (open === undefined || !open.has(id))
        return `Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.`;
      open.delete(id);
      continue;
    }
    if (open !== undefined && open.size > 0)
      return `An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: ${[...open].join(', ')}`;
    open = undefined;
    if (m.role === 'assistant' && Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
      open = new Set();
      for (const [j, c] of (m.tool_calls as Json[]).entries()) {
        const id = String(c.id);
        if (opts.mistralIds === true && !/^[a-zA-Z0-9]{9}$/.test(id))
          return `Tool call id was ${id} but must be a-z, A-Z, 0-9, with a length of 9.`;
        if (id.length > 40)
          return `Invalid 'messages[${i}].tool_calls[${j}].id': string too long. Expected a string with maximum length 40, but got a string with length ${id.length} instead.`;
        open.add(id);
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Mocks

interface Call {
  readonly id: string;
  readonly name: string;
  readonly args: Json;
}

/** One scripted answer: text, tool calls (with Claude's thinking first when `thinking` is given), or a failure. */
type Turn = { text?: string; calls?: Call[]; thinking?: string } | { status: number };

const sse = (data: Json): string => `event: ${String(data.type)}\ndata: ${JSON.stringify(data)}\n\n`;

function writeClaude(res: ServerResponse, body: Json, turn: Turn): void {
  if ('status' in turn) {
    sendJson(res, turn.status, {
      type: 'error',
      error: { type: 'api_error', message: 'Internal server error' },
    });
    return;
  }
  const blocks: Json[] = [];
  if (turn.thinking !== undefined)
    blocks.push({ type: 'thinking', thinking: turn.thinking, signature: sign(turn.thinking) });
  if (turn.text !== undefined) blocks.push({ type: 'text', text: turn.text });
  for (const c of turn.calls ?? []) blocks.push({ type: 'tool_use', id: c.id, name: c.name, input: c.args });
  const stop = turn.calls !== undefined && turn.calls.length > 0 ? 'tool_use' : 'end_turn';
  const message = { id: 'msg_01XYZ', type: 'message', role: 'assistant', model: String(body.model) };
  const usage = { input_tokens: 50, output_tokens: 10 };
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
      usage: { ...usage, output_tokens: 1 },
    },
  });
  for (const [index, b] of blocks.entries()) {
    if (b.type === 'thinking') {
      out += sse({
        type: 'content_block_start',
        index,
        content_block: { type: 'thinking', thinking: '', signature: '' },
      });
      out += sse({
        type: 'content_block_delta',
        index,
        delta: { type: 'thinking_delta', thinking: b.thinking },
      });
      out += sse({
        type: 'content_block_delta',
        index,
        delta: { type: 'signature_delta', signature: b.signature },
      });
    } else if (b.type === 'text') {
      out += sse({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      out += sse({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: b.text } });
    } else {
      out += sse({ type: 'content_block_start', index, content_block: { ...b, input: {} } });
      out += sse({
        type: 'content_block_delta',
        index,
        delta: { type: 'input_json_delta', partial_json: JSON.stringify(b.input) },
      });
    }
    out += sse({ type: 'content_block_stop', index });
  }
  out += sse({ type: 'message_delta', delta: { stop_reason: stop, stop_sequence: null }, usage });
  out += sse({ type: 'message_stop' });
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(out);
}

function writeOpenAI(res: ServerResponse, body: Json, turn: Turn): void {
  if ('status' in turn) {
    sendJson(res, turn.status, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
    return;
  }
  const calls = (turn.calls ?? []).map((c, index) => ({
    index,
    id: c.id,
    type: 'function',
    function: { name: c.name, arguments: JSON.stringify(c.args) },
  }));
  const finish = calls.length > 0 ? 'tool_calls' : 'stop';
  if (body.stream !== true) {
    const message: Json = { role: 'assistant', content: turn.text ?? null };
    if (calls.length > 0) message.tool_calls = calls.map(({ index: _i, ...c }) => c);
    sendJson(res, 200, {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1,
      model: String(body.model),
      choices: [{ index: 0, message, finish_reason: finish }],
      usage: { prompt_tokens: 40, completion_tokens: 8, total_tokens: 48 },
    });
    return;
  }
  const m = body.model;
  let out = chunkFrame(m, { role: 'assistant', content: '' });
  if (turn.text !== undefined) out += chunkFrame(m, { content: turn.text });
  for (const c of calls) out += chunkFrame(m, { tool_calls: [c] });
  out += chunkFrame(m, {}, finish);
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(`${out}data: [DONE]\n\n`);
}

interface Upstream {
  readonly url: string;
  readonly received: Received[];
  /** The refusal of each request, undefined for one taken. */
  readonly refusals: (string | undefined)[];
}

/** A Messages API mock that refuses what the real API refuses and otherwise answers `script(n)`. */
async function claudeMock(script: (n: number, body: Json) => Turn): Promise<Upstream> {
  const refusals: (string | undefined)[] = [];
  const mock = track(
    await startMock((req, res, n) => {
      const refused = claudeRefusal(req.body);
      refusals.push(refused);
      if (refused !== undefined) {
        sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: refused } });
        return;
      }
      writeClaude(res, req.body, script(n, req.body));
    }),
  );
  return { url: mock.url, received: mock.received, refusals };
}

/** A strict OpenAI-compatible mock (Mistral's id rule with `mistralIds`) answering `script(n)`. */
async function openaiMock(
  script: (n: number, body: Json) => Turn,
  opts: { mistralIds?: boolean } = {},
): Promise<Upstream> {
  const refusals: (string | undefined)[] = [];
  const mock = track(
    await startMock((req, res, n) => {
      const refused = openaiRefusal(req.body, opts);
      refusals.push(refused);
      if (refused !== undefined) {
        sendJson(res, 400, {
          object: 'error',
          error: { message: refused, type: 'invalid_request_error', param: 'messages', code: null },
        });
        return;
      }
      writeOpenAI(res, req.body, script(n, req.body));
    }),
  );
  return { url: mock.url, received: mock.received, refusals };
}

/** A gateway with routes `claude`, `oai`, and `mix` (Claude first, then the OpenAI-dialect upstream). */
async function gatewayFor(claudeUrl: string, oaiUrl: string, oaiModel = 'gpt-4o') {
  return track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: claudeUrl,
          api_key: 'sk-ant',
          models: [{ name: CLAUDE }],
        },
        {
          name: 'oai',
          kind: 'openai',
          base_url: `${oaiUrl}/v1`,
          api_key: 'sk-o',
          models: [{ name: oaiModel }],
        },
      ],
      routes: {
        claude: { strategy: 'priority', targets: [`anth/${CLAUDE}`] },
        oai: { strategy: 'priority', targets: [`oai/${oaiModel}`] },
        mix: { strategy: 'priority', targets: [`anth/${CLAUDE}`, `oai/${oaiModel}`] },
      },
    }),
  );
}

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'lookup',
      description: 'Looks a word up',
      parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
    },
  },
];

/** An assistant message calling `lookup(q)` once per [id, q] pair. */
function asks(pairs: [string, string][], content: string | null = null): Json {
  return {
    role: 'assistant',
    content,
    tool_calls: pairs.map(([id, q]) => ({
      id,
      type: 'function',
      function: { name: 'lookup', arguments: JSON.stringify({ q }) },
    })),
  };
}

const answers = (id: string, q: string): Json => ({
  role: 'tool',
  tool_call_id: id,
  content: `result of ${q}`,
});

/**
 * For each tool_result Claude was sent: the `q` of the tool_use it answers and the `q` its content names,
 * which must be the same.
 */
function claudePairs(body: Json): [string, string][] {
  const out: [string, string][] = [];
  const msgs = body.messages as Json[];
  for (let i = 1; i < msgs.length; i++) {
    const uses = new Map<string, Json>();
    for (const b of blocksOf(msgs[i - 1]!)) if (b.type === 'tool_use') uses.set(String(b.id), b);
    for (const b of blocksOf(msgs[i]!)) {
      if (b.type !== 'tool_result') continue;
      const use = uses.get(String(b.tool_use_id));
      const content =
        typeof b.content === 'string'
          ? b.content
          : Array.isArray(b.content)
            ? (b.content as Json[]).map((p) => String(p.text ?? '')).join('')
            : '';
      out.push([
        String((use?.input as Json | undefined)?.q ?? '(no call)'),
        content.replace('result of ', ''),
      ]);
    }
  }
  return out;
}

/** Posts `messages` (with TOOLS) on route `claude` to a Claude mock that answers 'Done.'. */
async function sendToClaude(messages: Json[]) {
  const claude = await claudeMock(() => ({ text: 'Done.' }));
  const gw = await gatewayFor(claude.url, 'http://127.0.0.1:9');
  const res = await postChat(gw, { model: 'claude', tools: TOOLS, messages });
  return { claude, res };
}

/**
 * One round of a history: an assistant message calling `lookup(q)` once per [id, q], then the tool messages
 * answering them, in the order called or the reverse.
 */
function round(order: 'in order' | 'reversed', ...calls: [string, string][]): Json[] {
  const answered = order === 'reversed' ? [...calls].reverse() : calls;
  return [asks(calls), ...answered.map(([id, q]) => answers(id, q))];
}

/** Each tool_result Claude was sent in `body` answers its own call: the calls' `q`s, in the order sent. */
function expectPaired(body: Json, qs: string[]): void {
  expect(claudePairs(body)).toEqual(qs.map((q) => [q, q]));
}

/** Claude took the request (no refusal) and the client got a 200. */
function expectTaken(claude: Upstream, res: { status: number }): void {
  expect(claude.refusals).toEqual([undefined]);
  expect(res.status).toBe(200);
}

// ---------------------------------------------------------------------------------------------

describe('a history written elsewhere, sent to Claude', () => {
  it("Kimi K2's functions.name:N ids, dots, spaces, slashes and a 120-character id: taken and paired", async () => {
    const long = `call_${'x'.repeat(115)}`;
    const { claude, res } = await sendToClaude([
      { role: 'user', content: 'Look up a, b, c and d.' },
      ...round('reversed', ['functions.lookup:0', 'a'], ['functions.lookup:1', 'b']),
      ...round('in order', ['tool call 7/c', 'c'], [long, 'd']),
    ]);
    expectTaken(claude, res);
    expectPaired(claude.received[0]!.body, ['b', 'a', 'c', 'd']);
  });

  it('two ids that differ only in characters Anthropic refuses, answered out of order, stay paired', async () => {
    // `search.1` and `search:1` are two calls; made Anthropic's, both read `search_1` until one is renamed.
    const { claude, res } = await sendToClaude([
      { role: 'user', content: 'Look up x and y.' },
      ...round('reversed', ['search.1', 'x'], ['search:1', 'y']),
    ]);
    expect(res.status).toBe(200);
    expectPaired(claude.received[0]!.body, ['y', 'x']);
  });

  it('call_0 in every round and two parallel calls under one id: every result still answers its own call', async () => {
    const { claude, res } = await sendToClaude([
      { role: 'user', content: 'Look things up.' },
      ...round('reversed', ['call_0', 'a'], ['call_1', 'b']),
      ...round('in order', ['call_0', 'c']),
      ...round('in order', ['call_0', 'd'], ['call_0', 'e']),
    ]);
    expectTaken(claude, res);
    expectPaired(claude.received[0]!.body, ['b', 'a', 'c', 'd', 'e']);
  });

  it('a call with an empty id beside one with an id: the request is one Claude takes', async () => {
    // Some OpenAI-compatible servers write `id: ""`; the client answers it with `tool_call_id: ""`.
    const { claude, res } = await sendToClaude([
      { role: 'user', content: 'Look up a and b.' },
      ...round('in order', ['', 'a'], ['call_b', 'b']),
    ]);
    expectTaken(claude, res);
    // The unlinked result still reaches the model.
    expect(JSON.stringify(claude.received[0]!.body.messages)).toContain('result of a');
  });

  it('content null with tool_calls, name fields, tool results as text parts, developer and mid-conversation system messages', async () => {
    const { claude, res } = await sendToClaude([
      { role: 'system', content: 'You are terse.' },
      { role: 'developer', content: [{ type: 'text', text: 'Prefer lookups.' }] },
      { role: 'user', name: 'ann', content: 'Look up a.' },
      { ...asks([['call_a', 'a']]), name: 'bot' },
      { role: 'system', content: 'Reminder: cite results.' },
      {
        role: 'tool',
        name: 'lookup',
        tool_call_id: 'call_a',
        content: [
          { type: 'text', text: 'result of a' },
          { type: 'text', text: '' },
        ],
      },
      { role: 'developer', content: 'Answer now.' },
      { role: 'user', name: 'ann', content: [{ type: 'text', text: 'And?' }] },
    ]);
    expectTaken(claude, res);
    const sent = claude.received[0]!.body;
    expect(sent.system).toBe('You are terse.\n\nPrefer lookups.\n\nReminder: cite results.\n\nAnswer now.');
    expect(claudePairs(sent)).toEqual([['a', 'a']]);
  });
});

describe('a history written by Claude, sent to an OpenAI-dialect upstream', () => {
  it("Claude fails before the round: the OpenAI upstream gets the client's own ids, unrewritten, and no thinking_blocks", async () => {
    const claude = await claudeMock(() => ({ status: 500 }));
    const oai = await openaiMock(() => ({ text: 'Done.' }));
    const gw = await gatewayFor(claude.url, oai.url);
    const messages = [
      { role: 'user', content: 'Look up a and b.' },
      {
        ...asks(
          [
            ['toolu_01A09q90qw90lq917835lq9', 'a'],
            ['functions.lookup:1', 'b'],
          ],
          'Let me look.',
        ),
        reasoning_content: 'I should look both up.',
        thinking_blocks: [{ type: 'thinking', thinking: 'I should look both up.', signature: sign('x') }],
      },
      answers('toolu_01A09q90qw90lq917835lq9', 'a'),
      answers('functions.lookup:1', 'b'),
    ];
    const res = await postChat(gw, { model: 'mix', tools: TOOLS, messages });
    expect(res.status).toBe(200);
    expect(res.headers['x-router-provider']).toBe('oai');
    expect(oai.refusals).toEqual([undefined]);
    const sent = oai.received[0]!.body.messages as Json[];
    expect((sent[1]!.tool_calls as Json[]).map((c) => c.id)).toEqual([
      'toolu_01A09q90qw90lq917835lq9',
      'functions.lookup:1',
    ]);
    expect(sent.slice(2).map((m) => m.tool_call_id)).toEqual([
      'toolu_01A09q90qw90lq917835lq9',
      'functions.lookup:1',
    ]);
  });

  it('a Mistral upstream behind the same route takes a conversation whose calls Claude made (toolu_ ids)', async () => {
    // Mistral refuses any tool call id that is not 9 letters or digits; Claude's are `toolu_` + 24.
    const claude = await claudeMock(() => ({ status: 529 }));
    const mistral = await openaiMock(() => ({ text: 'Done.' }), { mistralIds: true });
    const gw = await gatewayFor(claude.url, mistral.url, 'mistral-large-latest');
    const res = await postChat(gw, {
      model: 'mix',
      tools: TOOLS,
      messages: [
        { role: 'user', content: 'Look up a.' },
        asks([['toolu_01A09q90qw90lq917835lq9', 'a']]),
        answers('toolu_01A09q90qw90lq917835lq9', 'a'),
      ],
    });
    expect(mistral.refusals.at(-1)).toBeUndefined();
    expect(res.status).toBe(200);
  });
});

describe('the openai SDK tool loop over a route of Claude and an OpenAI-dialect upstream', () => {
  const runnable = (log: string[]) => [
    {
      type: 'function' as const,
      function: {
        name: 'lookup',
        description: 'Looks a word up',
        parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
        parse: (s: string) => JSON.parse(s) as { q: string },
        function: (args: { q: string }) => {
          log.push(args.q);
          return `result of ${args.q}`;
        },
      },
    },
  ];

  it('runTools (stream), rounds Claude (thinking), OpenAI (Claude 500), Claude, OpenAI: the loop completes', async () => {
    const claude = await claudeMock((n) => {
      if (n === 0)
        return {
          thinking: 'Two lookups are needed.',
          text: 'Looking up.',
          calls: [
            { id: 'toolu_01AAA', name: 'lookup', args: { q: 'a' } },
            { id: 'toolu_01BBB', name: 'lookup', args: { q: 'b' } },
          ],
        };
      if (n === 2) return { calls: [{ id: 'toolu_01DDD', name: 'lookup', args: { q: 'd' } }] };
      return { status: 500 };
    });
    const oai = await openaiMock((n) =>
      n === 0
        ? { calls: [{ id: 'call_c', name: 'lookup', args: { q: 'c' } }] }
        : { text: 'a, b, c and d looked up.' },
    );
    const gw = await gatewayFor(claude.url, oai.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 5000 });
    const log: string[] = [];
    const runner = client.chat.completions.runTools({
      model: 'mix',
      stream: true,
      reasoning_effort: 'low',
      max_tokens: 4000,
      messages: [{ role: 'user', content: 'Look up a, b, c and d.' }],
      tools: runnable(log),
    });
    const content = await runner.finalContent();
    expect(claude.refusals).toEqual([undefined, undefined, undefined, undefined]);
    expect(oai.refusals).toEqual([undefined, undefined]);
    expect(content).toBe('a, b, c and d looked up.');
    expect(log).toEqual(['a', 'b', 'c', 'd']);
    // Claude thought in round 1; the SDK's runner sends the assistant message back without thinking_blocks,
    // so the loop goes on without thinking (README), which Claude takes.
    expect(claude.received[0]!.body.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    // Claude's third round saw every result paired with its call, across both providers' ids.
    expect(claudePairs(claude.received[2]!.body)).toEqual([
      ['a', 'a'],
      ['b', 'b'],
      ['c', 'c'],
    ]);
    // The client holds the ids each provider gave, and the last upstream got them as the client holds them.
    const held = runner.messages
      .filter((m): m is ChatCompletionMessageParam & { role: 'tool' } => m.role === 'tool')
      .map((m) => m.tool_call_id);
    expect(held).toEqual(['toolu_01AAA', 'toolu_01BBB', 'call_c', 'toolu_01DDD']);
    const last = oai.received[1]!.body.messages as Json[];
    expect(last.filter((m) => m.role === 'tool').map((m) => m.tool_call_id)).toEqual(held);
  });

  it('a manual loop (JSON) keeping whole messages: Claude thinks and calls, OpenAI calls (Claude 503), Claude thinks on and answers', async () => {
    const claude = await claudeMock((n) =>
      n === 0
        ? { thinking: 'Look up a first.', calls: [{ id: 'toolu_01AAA', name: 'lookup', args: { q: 'a' } }] }
        : n === 1
          ? { status: 503 }
          : { text: 'a and b looked up.' },
    );
    const oai = await openaiMock(() => ({ calls: [{ id: 'call_0', name: 'lookup', args: { q: 'b' } }] }));
    const gw = await gatewayFor(claude.url, oai.url);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 5000 });
    const messages: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Look up a and b.' }];
    let text: string | null = null;
    for (let round = 0; round < 4 && text === null; round++) {
      const out = await client.chat.completions.create({
        model: 'mix',
        reasoning_effort: 'low',
        max_tokens: 4000,
        messages,
        tools: TOOLS as OpenAI.ChatCompletionTool[],
      });
      // The answer's message as it came (reasoning_content and thinking_blocks included), as many agents keep it.
      const m = out.choices[0]!.message;
      messages.push(m);
      if (m.tool_calls === undefined || m.tool_calls.length === 0) text = m.content;
      for (const c of m.tool_calls ?? [])
        if (c.type === 'function') {
          const q = (JSON.parse(c.function.arguments) as { q: string }).q;
          messages.push({ role: 'tool', tool_call_id: c.id, content: `result of ${q}` });
        }
    }
    expect(claude.refusals).toEqual([undefined, undefined, undefined]);
    expect(oai.refusals).toEqual([undefined]);
    expect(text).toBe('a and b looked up.');
    const last = claude.received[2]!.body;
    expect(claudePairs(last)).toEqual([
      ['a', 'a'],
      ['b', 'b'],
    ]);
    // The loop opened with Claude's signed thinking, sent back: Claude thinks on through it.
    expect(last.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
    expect(((last.messages as Json[])[1]!.content as Json[])[0]).toMatchObject({ type: 'thinking' });
  });
});
