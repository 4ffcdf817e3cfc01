/**
 * The official `openai` SDK (v6) on a route served by Claude (Anthropic translation), beside an OpenAI-dialect
 * upstream for comparison. Rules held here:
 * - `chat.completions.stream()` on Claude gives every event in OpenAI's order (content.delta, content.done before
 *   the first tool's arguments.done, one arguments.delta/done pair per call with indexes 0, 1...), and its
 *   finalChatCompletion() is the same answer `create()` gives without streaming (ids, finish_reason, usage,
 *   tool_calls).
 * - Claude's `refusal` stop reason is `content_filter` in both forms, so parse() fails the way it does for OpenAI.
 * - Asked for JSON, a refusal streams as it does without streaming: the stream helper throws the same
 *   content-filter error parse() does, never a SyntaxError on the refusal's words.
 * - A file part's `filename` reaches Claude as its document's title.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { ContentFilterFinishReasonError } from 'openai/core/error';
import { zodResponseFormat } from 'openai/helpers/zod';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock, type MockHandler, type Received } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const hi = [{ role: 'user' as const, content: 'hi' }];
const CLAUDE = 'claude-sonnet-4-5';

function claudeJson(content: Json[], stop: string | null = 'end_turn', extra: Json = {}): Json {
  return {
    id: 'msg_01DeepSdk',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5-20250929',
    content,
    stop_reason: stop,
    stop_sequence: null,
    usage: { input_tokens: 11, output_tokens: 7 },
    ...extra,
  };
}

/** Writes Claude's SSE `events`; `hold` leaves the response open for the caller. */
function claudeSse(res: ServerResponse, events: Json[], hold = false): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  for (const e of events) res.write(anthropicSseFrame(e));
  if (!hold) res.end();
}

const start: Json = {
  type: 'message_start',
  message: { ...claudeJson([], null), usage: { input_tokens: 11, output_tokens: 1 } },
};
const textStart: Json = { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } };
const text = (i: number, t: string): Json => ({
  type: 'content_block_delta',
  index: i,
  delta: { type: 'text_delta', text: t },
});
const stopEvent = (i: number): Json => ({ type: 'content_block_stop', index: i });
const finish = (reason: string, output: number): Json[] => [
  {
    type: 'message_delta',
    delta: { stop_reason: reason, stop_sequence: null },
    usage: { output_tokens: output },
  },
  { type: 'message_stop' },
];

/** A gateway whose route `r` is `ups` in priority order; each mock keeps what it received. */
async function setup(
  ups: { kind: 'anthropic' | 'openai'; handler: MockHandler }[],
): Promise<{ gw: TestGateway; openai: OpenAI; received: Received[][] }> {
  const received: Received[][] = [];
  const providers: Json[] = [];
  for (const [i, u] of ups.entries()) {
    const m = track(await startMock(u.handler));
    received.push(m.received);
    providers.push({
      name: `p${i}`,
      kind: u.kind,
      base_url: u.kind === 'anthropic' ? m.url : `${m.url}/v1`,
      api_key: 'sk-upstream-deep',
      timeouts: { connect_ms: 2000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 },
      models: [{ name: u.kind === 'anthropic' ? CLAUDE : 'gpt-4o' }],
    });
  }
  const targets = providers.map(
    (p, i) => `${String(p.name)}/${ups[i]!.kind === 'anthropic' ? CLAUDE : 'gpt-4o'}`,
  );
  const gw = track(await startGateway({ providers, routes: { r: { strategy: 'priority', targets } } }));
  return { gw, openai: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }), received };
}

const tools = [
  {
    type: 'function' as const,
    function: {
      name: 'get_weather',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  },
  {
    type: 'function' as const,
    function: { name: 'get_time', parameters: { type: 'object', properties: {} } },
  },
];

/** Claude's answer: a sentence, a call in two fragments, a call without arguments (`partial_json: ""`). */
const TOOL_EVENTS: Json[] = [
  start,
  textStart,
  text(0, 'Let me '),
  text(0, 'check.'),
  stopEvent(0),
  {
    type: 'content_block_start',
    index: 1,
    content_block: { type: 'tool_use', id: 'toolu_01A', name: 'get_weather', input: {} },
  },
  { type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: '{"city":' } },
  { type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: '"Oslo"}' } },
  stopEvent(1),
  {
    type: 'content_block_start',
    index: 2,
    content_block: { type: 'tool_use', id: 'toolu_01B', name: 'get_time', input: {} },
  },
  { type: 'content_block_delta', index: 2, delta: { type: 'input_json_delta', partial_json: '' } },
  stopEvent(2),
  ...finish('tool_use', 30),
];
const TOOL_JSON = claudeJson(
  [
    { type: 'text', text: 'Let me check.' },
    { type: 'tool_use', id: 'toolu_01A', name: 'get_weather', input: { city: 'Oslo' } },
    { type: 'tool_use', id: 'toolu_01B', name: 'get_time', input: {} },
  ],
  'tool_use',
  { usage: { input_tokens: 11, output_tokens: 30 } },
);

describe('openai SDK stream helper on Claude', () => {
  it('stream(): events in order, and finalChatCompletion() is the answer create() gives without streaming', async () => {
    const { openai } = await setup([
      {
        kind: 'anthropic',
        handler: (r, res) =>
          r.body.stream === true ? claudeSse(res, TOOL_EVENTS) : sendJson(res, 200, TOOL_JSON),
      },
    ]);
    const events: string[] = [];
    const s = openai.chat.completions
      .stream({ model: 'r', messages: hi, tools, stream_options: { include_usage: true } })
      .on('content.delta', (e) => events.push(`content.delta ${e.delta}`))
      .on('content.done', (e) => events.push(`content.done ${e.content}`))
      .on('tool_calls.function.arguments.delta', (e) =>
        events.push(`args.delta ${e.index} ${e.arguments_delta}`),
      )
      .on('tool_calls.function.arguments.done', (e) =>
        events.push(`args.done ${e.index} ${e.name} ${e.arguments}`),
      )
      .on('refusal.delta', () => events.push('refusal.delta'))
      .on('logprobs.content.delta', () => events.push('logprobs.content.delta'));
    const streamed = await s.finalChatCompletion();
    expect(events).toEqual([
      'content.delta Let me ',
      'content.delta check.',
      'content.done Let me check.',
      'args.delta 0 ',
      'args.delta 0 {"city":',
      'args.delta 0 "Oslo"}',
      'args.done 0 get_weather {"city":"Oslo"}',
      'args.delta 1 ',
      'args.delta 1 {}',
      'args.done 1 get_time {}',
    ]);

    const plain = await openai.chat.completions.create({ model: 'r', messages: hi, tools });
    const { parsed: _parsed, ...streamedMessage } = streamed.choices[0]!.message;
    expect(streamedMessage).toEqual(plain.choices[0]!.message);
    expect(streamed.choices[0]!.finish_reason).toBe('tool_calls');
    expect(plain.choices[0]!.finish_reason).toBe('tool_calls');
    expect(streamed.usage).toEqual(plain.usage);
    expect(streamed.usage).toMatchObject({ prompt_tokens: 11, completion_tokens: 30, total_tokens: 41 });
    expect(streamed.id).toBe(plain.id);
    expect(streamed.id).toMatch(/^chatcmpl-/);
    expect(streamed.model).toBe(plain.model);
  });

  it("Claude's refusal stop reason is content_filter in both forms; the same text either way", async () => {
    const { openai } = await setup([
      {
        kind: 'anthropic',
        handler: (r, res) =>
          r.body.stream === true
            ? claudeSse(res, [
                start,
                textStart,
                text(0, 'I can’t help with that.'),
                stopEvent(0),
                ...finish('refusal', 6),
              ])
            : sendJson(res, 200, claudeJson([{ type: 'text', text: 'I can’t help with that.' }], 'refusal')),
      },
    ]);
    const plain = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(plain.choices[0]!.finish_reason).toBe('content_filter');
    const streamed = await openai.chat.completions.stream({ model: 'r', messages: hi }).finalChatCompletion();
    expect(streamed.choices[0]!.finish_reason).toBe('content_filter');
    expect(streamed.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
  });

  // Asked for JSON, Claude's refusal holds no object; the gateway sends the held text as a content delta just
  // before the finish, and the stream helper partial-parses every content delta as JSON: a SyntaxError, where
  // the same answer without streaming gives ContentFilterFinishReasonError (and OpenAI sends a refusal as
  // `refusal`, which the helper does not parse). One answer, one outcome, in both forms.
  it('parse() and stream() with zodResponseFormat on a Claude refusal: the same outcome, never a SyntaxError', async () => {
    const refusal = 'I can’t help with that.';
    const { openai } = await setup([
      {
        kind: 'anthropic',
        handler: (r, res) =>
          r.body.stream === true
            ? claudeSse(res, [start, textStart, text(0, refusal), stopEvent(0), ...finish('refusal', 6)])
            : sendJson(res, 200, claudeJson([{ type: 'text', text: refusal }], 'refusal')),
      },
    ]);
    const format = zodResponseFormat(z.object({ answer: z.string() }), 'answer');
    const outcome = (p: Promise<{ choices: { message: { refusal: string | null } }[] }>) =>
      p.then(
        (c) => ({ refusal: c.choices[0]!.message.refusal }),
        (e: unknown) => ({ error: (e as Error).constructor.name, message: (e as Error).message }),
      );
    const plain = await outcome(
      openai.chat.completions.parse({ model: 'r', messages: hi, response_format: format }),
    );
    const streamed = await outcome(
      openai.chat.completions
        .stream({ model: 'r', messages: hi, response_format: format })
        .finalChatCompletion(),
    );
    expect(plain).toEqual({
      error: ContentFilterFinishReasonError.name,
      message: new ContentFilterFinishReasonError().message,
    });
    expect(streamed).toEqual(plain);
  });
});

describe('what the client sends keeps its meaning on Claude', () => {
  it("a file part's filename reaches Claude as its document's title", async () => {
    const { openai, received } = await setup([
      {
        kind: 'anthropic',
        handler: (_req, res) => sendJson(res, 200, claudeJson([{ type: 'text', text: 'Both read.' }])),
      },
    ]);
    const pdf = `data:application/pdf;base64,${Buffer.from('%PDF-1.4 tiny').toString('base64')}`;
    await openai.chat.completions.create({
      model: 'r',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Compare q1.pdf with q2.pdf.' },
            { type: 'file', file: { filename: 'q1.pdf', file_data: pdf } },
            { type: 'file', file: { filename: 'q2.pdf', file_data: pdf } },
          ],
        },
      ],
    });
    const blocks = (received[0]![0]!.body.messages as { content: Json[] }[])[0]!.content;
    expect(blocks.filter((b) => b.type === 'document').map((b) => b.title)).toEqual(['q1.pdf', 'q2.pdf']);
  });
});
