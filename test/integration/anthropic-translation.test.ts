/**
 * The OpenAI -> Anthropic translation (src/upstream/adapters/anthropic-*.ts) held to both APIs as documented
 * (SPEC §4: requests, responses and SSE events translated; README "Anthropic upstreams" and "Claude 5"): a
 * forced tool turns thinking off, custom tools are never dropped silently, safety_identifier reaches
 * metadata.user_id, system and developer messages are hoisted, tool results make well-formed turns, and JSON
 * and streamed answers read back through the official `openai` SDK. A hand-written Messages API mock on
 * 127.0.0.1:0 records every request and refuses, with Anthropic's 400 shape, what the API documents it refuses.
 */
import type { ServerResponse } from 'node:http';
import type OpenAI from 'openai';
import type { ChatCompletionTool } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import {
  anthropicMessage,
  anthropicSseFrame,
  collectChunks,
  startAnthropicRoute,
} from '../helpers/anthropic-route.js';
import { postChat } from '../helpers/gateway.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

// ---------------------------------------------------------------------------------------------
// The mock: the documented rules these tests touch, nothing more.

/** Claude 5 (Opus 5, Sonnet 5) think when `thinking` is left out (README, "Claude 5"). */
const THINKS_BY_DEFAULT = /claude-(?:opus|sonnet)-5(?!-\d)/;

function thinkingOn(body: Json): boolean {
  const t = body.thinking;
  if (isObj(t)) return t.type === 'enabled' || t.type === 'adaptive';
  return THINKS_BY_DEFAULT.test(String(body.model));
}

/** What the Messages API refuses of `body` (of the rules below), in its words; undefined when valid. */
function refusal(body: Json): string | undefined {
  const choice = body.tool_choice;
  // Anthropic, Extended thinking, "Extended thinking with tool use": "Tool use with thinking only supports
  // tool_choice: {"type": "auto"} (the default) or tool_choice: {"type": "none"}. Using tool_choice:
  // {"type": "any"} or tool_choice: {"type": "tool", "name": "..."} will result in an error".
  if (thinkingOn(body) && isObj(choice) && (choice.type === 'any' || choice.type === 'tool'))
    return 'Thinking may not be enabled when tool_choice forces tool use.';
  // Anthropic, Tool use, "Handling results from client tools": tool_result blocks must immediately follow the
  // assistant turn holding their tool_use, and come first in the user turn.
  const messages = Array.isArray(body.messages) ? (body.messages as Json[]) : [];
  for (const [i, m] of messages.entries()) {
    const blocks = Array.isArray(m.content) ? (m.content as Json[]) : [];
    if (m.role !== 'user') continue;
    const prev = messages[i - 1];
    const prevIds = new Set(
      (Array.isArray(prev?.content) ? (prev.content as Json[]) : [])
        .filter((b) => b.type === 'tool_use')
        .map((b) => b.id),
    );
    let leading = true;
    for (const b of blocks) {
      if (b.type !== 'tool_result') {
        leading = false;
        continue;
      }
      if (!leading)
        return `messages.${i}: tool_result blocks must come first in the user message content, before any other content`;
      if (!prevIds.has(b.tool_use_id))
        return `messages.${i}: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${String(b.tool_use_id)}. Each \`tool_result\` block must have a corresponding \`tool_use\` block in the previous message.`;
    }
  }
  return undefined;
}

type Answer = { json: Json } | { events: Json[] } | { raw: string };

const mockMessage = (content: Json[], stopReason: string, usage: Json): Json =>
  anthropicMessage(content, stopReason, usage, 'msg_01ReviewReviewReview');

const OK_JSON: Answer = {
  json: mockMessage([{ type: 'text', text: 'ok' }], 'end_turn', { input_tokens: 3, output_tokens: 1 }),
};

function writeAnswer(res: ServerResponse, a: Answer): void {
  if ('json' in a) return sendJson(res, 200, a.json);
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  if ('raw' in a) {
    res.end(a.raw);
    return;
  }
  res.end(a.events.map(anthropicSseFrame).join(''));
}

/** A gateway whose route `r` is one Anthropic provider (`model`) served by the mock. */
async function setup(
  answer: (body: Json) => Answer = () => OK_JSON,
  model = 'claude-sonnet-4-5',
): Promise<{ received: Received[]; client: OpenAI; url: string }> {
  const mock = track(
    await startMock((req, res) => {
      const refused = refusal(req.body);
      if (refused !== undefined)
        return sendJson(res, 400, {
          type: 'error',
          error: { type: 'invalid_request_error', message: refused },
        });
      writeAnswer(res, answer(req.body));
    }),
  );
  const { client, url } = await startAnthropicRoute(track, mock.url, {
    apiKey: 'sk-ant-review',
    model,
    timeoutMs: 10_000,
  });
  return { received: mock.received, client, url };
}

const lookup: ChatCompletionTool = {
  type: 'function',
  function: {
    name: 'lookup',
    description: 'Look a word up',
    parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
  },
};
const hi = [{ role: 'user' as const, content: 'hi' }];

describe('a forced tool with thinking on: thinking is left off', () => {
  // Every tool_choice sent as {type: "any"} forces a tool: "required", a named function, Mistral's "any"
  // (README: "`tool_choice` `required` or Mistral's `any` is `any`") and allowed_tools with mode "required".
  // Anthropic refuses thinking beside a forced tool, so thinking is left off for each of them.
  it('tool_choice "any" with reasoning_effort: thinking is left off, as for "required" (Anthropic: forced tool use is incompatible with thinking)', async () => {
    const { received, url } = await setup();
    const r = await postChat(
      { url },
      { model: 'r', messages: hi, tools: [lookup], tool_choice: 'any', reasoning_effort: 'high' },
    );
    const sent = received.at(-1)!.body;
    expect(sent.tool_choice).toEqual({ type: 'any' });
    // Anthropic, Extended thinking with tool use: only tool_choice auto or none with thinking.
    expect(sent.thinking).toBeUndefined();
    expect(r.status).toBe(200);
  });

  it('tool_choice allowed_tools mode "required" with reasoning_effort: no thinking beside the forced {type: "any"}', async () => {
    const { received, url } = await setup();
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: hi,
        tools: [lookup],
        tool_choice: {
          type: 'allowed_tools',
          allowed_tools: { mode: 'required', tools: [{ type: 'function', function: { name: 'lookup' } }] },
        },
        reasoning_effort: 'medium',
      },
    );
    const sent = received.at(-1)!.body;
    expect((sent.tool_choice as Json).type).toBe('any');
    expect(sent.thinking).toBeUndefined();
    expect(r.status).toBe(200);
  });

  it('Claude Opus 5 with tool_choice "any": thinking {type: "disabled"} is sent, as README says of a forced tool', async () => {
    // README, Claude 5: "`reasoning_effort` `none` / `minimal`, a forced tool or a `max_tokens` of 1,024 or less
    // send `thinking: {type: "disabled"}`"; left out, Opus 5 thinks, and thinking refuses a forced tool.
    const { received, url } = await setup(() => OK_JSON, 'claude-opus-5');
    const r = await postChat({ url }, { model: 'r', messages: hi, tools: [lookup], tool_choice: 'any' });
    const sent = received.at(-1)!.body;
    expect(sent.tool_choice).toEqual({ type: 'any' });
    expect(sent.thinking).toEqual({ type: 'disabled' });
    expect(r.status).toBe(200);
  });
});

describe('OpenAI custom tools are never dropped silently', () => {
  // OpenAI Chat Completions, `tools`: "A list of tools the model may call. You can provide either custom tools or
  // function tools" ({type: "custom", custom: {name, description, format}}); the gateway's validator accepts them
  // (src/http/validate.ts). README, Anthropic upstreams: what Anthropic has no place for "leaves Anthropic
  // upstreams out of the candidates ... never a request with that part dropped": a custom tool either reaches
  // Claude as a tool or the request is refused before any upstream.
  it('a custom tool reaches Claude as a tool, or the request is refused before the upstream: never sent without it', async () => {
    const { received, url } = await setup();
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: [{ role: 'user', content: 'Run print(1) with the tool.' }],
        tools: [{ type: 'custom', custom: { name: 'run_code', description: 'Runs Python code' } }],
      },
    );
    if (received.length === 0) {
      expect(r.status).toBe(400);
      return;
    }
    const names = ((received.at(-1)!.body.tools as Json[] | undefined) ?? []).map((t) => t.name);
    expect(names).toContain('run_code');
  });

  it('a custom tool call in the history keeps its tool_result paired (no dangling tool_result Anthropic refuses)', async () => {
    // OpenAI: an assistant message's tool_calls may be {type: "custom", custom: {name, input}}; the tool message
    // answering it names its id. Anthropic refuses a tool_result without its tool_use in the turn before, so
    // the pair is sent whole or the request is refused before the upstream.
    const { received, url } = await setup();
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: [
          { role: 'user', content: 'Run print(1).' },
          {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'call_1', type: 'custom', custom: { name: 'run_code', input: 'print(1)' } }],
          },
          { role: 'tool', tool_call_id: 'call_1', content: '1' },
        ],
        tools: [{ type: 'custom', custom: { name: 'run_code' } }],
      },
    );
    if (received.length > 0) expect(refusal(received.at(-1)!.body)).toBeUndefined();
    expect([200, 400]).toContain(r.status);
    if (r.status === 400) expect(received).toHaveLength(0);
  });
});

describe('safety_identifier, which supersedes user, is not dropped', () => {
  // OpenAI ("Incorporating a safety identifier"): "The safety identifier supersedes the previous user parameter
  // which was previously present for the same purpose." Anthropic's metadata.user_id is that identifier
  // ("an external identifier for the user who is associated with the request"), and README maps `user` to it:
  // a client that moved to safety_identifier still sends Claude its user id.
  it('safety_identifier becomes metadata.user_id when user is absent', async () => {
    const { received, url } = await setup();
    const r = await postChat({ url }, { model: 'r', messages: hi, safety_identifier: 'user_123456' });
    expect(r.status).toBe(200);
    expect(received.at(-1)!.body.metadata).toEqual({ user_id: 'user_123456' });
  });
});

describe('request translation', () => {
  it('tool_choice "required" or a named function with reasoning_effort: forced tool sent, thinking left off', async () => {
    const { received, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: hi,
      tools: [lookup],
      tool_choice: 'required',
      reasoning_effort: 'high',
    });
    expect(received.at(-1)!.body.tool_choice).toEqual({ type: 'any' });
    expect(received.at(-1)!.body.thinking).toBeUndefined();
    await client.chat.completions.create({
      model: 'r',
      messages: hi,
      tools: [lookup],
      tool_choice: { type: 'function', function: { name: 'lookup' } },
      parallel_tool_calls: false,
      reasoning_effort: 'low',
    });
    expect(received.at(-1)!.body.tool_choice).toEqual({
      type: 'tool',
      name: 'lookup',
      disable_parallel_tool_use: true,
    });
    expect(received.at(-1)!.body.thinking).toBeUndefined();
  });

  it('system and developer messages anywhere are hoisted in order; a cache_control part keeps system an array', async () => {
    const { received, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'system',
          content: [{ type: 'text', text: 'Long rules.', cache_control: { type: 'ephemeral' } } as never],
        },
        { role: 'user', content: 'one' },
        { role: 'developer', content: 'Be brief.' },
        { role: 'assistant', content: 'two' },
        { role: 'user', content: 'three' },
      ],
      response_format: { type: 'json_object' },
    });
    const sent = received.at(-1)!.body;
    const system = sent.system as Json[];
    expect(system.slice(0, 2)).toEqual([
      { type: 'text', text: 'Long rules.', cache_control: { type: 'ephemeral' } },
      { type: 'text', text: 'Be brief.' },
    ]);
    expect(String(system[2]!.text)).toMatch(/JSON/);
    expect((sent.messages as Json[]).map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
  });

  it('parallel tool results become one user turn of tool_results first, the user text after them', async () => {
    const { received, client } = await setup();
    await client.chat.completions.create({
      model: 'r',
      tools: [lookup],
      messages: [
        { role: 'user', content: 'Look up a and b.' },
        {
          role: 'assistant',
          content: 'Looking.',
          tool_calls: [
            { id: 'call_a', type: 'function', function: { name: 'lookup', arguments: '{"q":"a"}' } },
            { id: 'call_b', type: 'function', function: { name: 'lookup', arguments: '{"q":"b"}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_b', content: 'B' },
        { role: 'tool', tool_call_id: 'call_a', content: 'A' },
        { role: 'user', content: 'Thanks.' },
      ],
    });
    const messages = received.at(-1)!.body.messages as Json[];
    expect(messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect((messages[1]!.content as Json[]).map((b) => b.type)).toEqual(['text', 'tool_use', 'tool_use']);
    expect(messages[2]!.content).toEqual([
      { type: 'tool_result', tool_use_id: 'call_b', content: 'B' },
      { type: 'tool_result', tool_use_id: 'call_a', content: 'A' },
      { type: 'text', text: 'Thanks.' },
    ]);
  });
});

describe('answers (JSON and stream)', () => {
  it('JSON: thinking, redacted thinking, text, server tool blocks and tool_use in one answer', async () => {
    const t0 = Math.floor(Date.now() / 1000);
    const { client } = await setup(() => ({
      json: mockMessage(
        [
          { type: 'thinking', thinking: 'Hmm.', signature: 'sig1' },
          { type: 'redacted_thinking', data: 'opaque' },
          { type: 'text', text: 'Searching. ' },
          { type: 'server_tool_use', id: 'srvtoolu_1', name: 'web_search', input: { query: 'x' } },
          { type: 'web_search_tool_result', tool_use_id: 'srvtoolu_1', content: [] },
          { type: 'text', text: 'Found.' },
          { type: 'tool_use', id: 'toolu_1', name: 'lookup', input: { q: 'x' } },
        ],
        'tool_use',
        { input_tokens: 5, cache_creation_input_tokens: 100, cache_read_input_tokens: 20, output_tokens: 9 },
      ),
    }));
    const r = await client.chat.completions.create({ model: 'r', messages: hi, tools: [lookup] });
    expect(r.id).toBe('chatcmpl-msg_01ReviewReviewReview');
    expect(r.object).toBe('chat.completion');
    expect(r.created).toBeGreaterThanOrEqual(t0 - 1);
    const c = r.choices[0]!;
    expect(c.finish_reason).toBe('tool_calls');
    expect(c.message.content).toBe('Searching. Found.');
    expect(c.message.tool_calls).toEqual([
      { id: 'toolu_1', type: 'function', function: { name: 'lookup', arguments: '{"q":"x"}' } },
    ]);
    const m = c.message as unknown as Json;
    expect(m.reasoning_content).toBe('Hmm.');
    expect(m.thinking_blocks).toEqual([
      { type: 'thinking', thinking: 'Hmm.', signature: 'sig1' },
      { type: 'redacted_thinking', data: 'opaque' },
    ]);
    expect(r.usage).toMatchObject({
      prompt_tokens: 125,
      completion_tokens: 9,
      total_tokens: 134,
      prompt_tokens_details: { cached_tokens: 20 },
    });
  });

  const EVENTS: Json[] = [
    { type: 'ping' },
    {
      type: 'message_start',
      message: {
        ...mockMessage([], 'end_turn', {
          input_tokens: 5,
          cache_creation_input_tokens: 100,
          cache_read_input_tokens: 20,
          output_tokens: 1,
        }),
        stop_reason: null,
      },
    },
    { type: 'content_block_start', index: 0, content_block: { type: 'thinking', thinking: '' } },
    { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'Let me see.' } },
    { type: 'content_block_delta', index: 0, delta: { type: 'signature_delta', signature: 'sigA' } },
    { type: 'content_block_stop', index: 0 },
    { type: 'ping' },
    { type: 'content_block_start', index: 1, content_block: { type: 'text', text: '' } },
    { type: 'content_block_delta', index: 1, delta: { type: 'text_delta', text: 'Sure.' } },
    { type: 'content_block_stop', index: 1 },
    {
      type: 'content_block_start',
      index: 2,
      content_block: { type: 'tool_use', id: 'toolu_9', name: 'lookup', input: {} },
    },
    { type: 'content_block_delta', index: 2, delta: { type: 'input_json_delta', partial_json: '' } },
    { type: 'content_block_delta', index: 2, delta: { type: 'input_json_delta', partial_json: '{"q":' } },
    { type: 'content_block_delta', index: 2, delta: { type: 'input_json_delta', partial_json: '"w"}' } },
    { type: 'content_block_stop', index: 2 },
    {
      type: 'message_delta',
      delta: { stop_reason: 'tool_use', stop_sequence: null },
      usage: { output_tokens: 30 },
    },
    { type: 'message_stop' },
  ];

  it('stream: role first, one tool call (id and name, then argument deltas), finish, usage chunk last only when asked', async () => {
    const { client, url } = await setup(() => ({ events: EVENTS }));
    const chunks = await collectChunks(
      await client.chat.completions.create({
        model: 'r',
        messages: hi,
        tools: [lookup],
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const calls = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
    expect(calls[0]).toMatchObject({
      index: 0,
      id: 'toolu_9',
      type: 'function',
      function: { name: 'lookup' },
    });
    expect(calls.slice(1).every((c) => c.index === 0 && c.id === undefined)).toBe(true);
    expect(calls.map((c) => c.function?.arguments ?? '').join('')).toBe('{"q":"w"}');
    const finishes = chunks.filter((c) => c.choices[0]?.finish_reason);
    expect(finishes.map((c) => c.choices[0]!.finish_reason)).toEqual(['tool_calls']);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({
      prompt_tokens: 125,
      completion_tokens: 30,
      prompt_tokens_details: { cached_tokens: 20 },
    });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(new Set(chunks.map((c) => c.id))).toEqual(new Set(['chatcmpl-msg_01ReviewReviewReview']));
    // Without include_usage: no usage chunk, `[DONE]` at the end.
    const raw = await postChat({ url }, { model: 'r', messages: hi, tools: [lookup], stream: true });
    expect(raw.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(raw.text).not.toContain('"usage"');
  });

  it('stream cut after content and before message_delta: error event, no [DONE]; error event mid-stream: the same', async () => {
    const head = EVENTS.slice(0, 9); // through the text delta
    let mode: 'cut' | 'error' = 'cut';
    const { url } = await setup(() =>
      mode === 'cut'
        ? { events: head }
        : {
            events: [...head, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }],
          },
    );
    for (const m of ['cut', 'error'] as const) {
      mode = m;
      const r = await postChat({ url }, { model: 'r', messages: hi, stream: true });
      expect(r.status).toBe(200);
      expect(r.text).toContain('"content":"Sure."');
      expect(r.text).not.toContain('[DONE]');
      expect(r.text).not.toContain('"finish_reason":"stop"');
      expect(r.text).toMatch(/"code":"stream_interrupted"/);
    }
  });
});
