import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import type { Track } from './cleanup.js';
import { startGateway } from './gateway.js';
import { sendJson } from './mock-upstream.js';

/** What the Anthropic audits share: one Anthropic route `r` with an openai client on it, SSE frames, a text answer. */

/**
 * A gateway whose route `r` is one Anthropic provider `anth` (`model`, key `apiKey`) at `baseUrl`, handed to
 * `track`; and an openai SDK client on it (key `k`, no retries, `timeoutMs` when given).
 */
export async function startAnthropicRoute(
  track: Track,
  baseUrl: string,
  opts: { apiKey: string; model: string; timeoutMs?: number },
): Promise<{ client: OpenAI; url: string }> {
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: baseUrl,
          api_key: opts.apiKey,
          models: [{ name: opts.model }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`anth/${opts.model}`] } },
    }),
  );
  const client = new OpenAI({
    baseURL: `${gw.url}/v1`,
    apiKey: 'k',
    maxRetries: 0,
    ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs }),
  });
  return { client, url: gw.url };
}

/** Every chunk of an openai SDK stream, in order. */
export async function collectChunks(
  stream: AsyncIterable<ChatCompletionChunk>,
): Promise<ChatCompletionChunk[]> {
  const out: ChatCompletionChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

/** Each choice's joined content and its finish reasons, by index, from an openai SDK stream's chunks. */
export function joinChoices(chunks: readonly ChatCompletionChunk[]): {
  texts: string[];
  finishes: string[][];
} {
  const texts: string[] = [];
  const finishes: string[][] = [];
  for (const c of chunks)
    for (const x of c.choices) {
      texts[x.index] = (texts[x.index] ?? '') + (x.delta.content ?? '');
      if (x.finish_reason != null) (finishes[x.index] ??= []).push(x.finish_reason);
    }
  return { texts, finishes };
}

/** One Anthropic SSE event as the Messages API frames it: `event: <type>` and its JSON `data`. */
/** A Messages API answer of `content` blocks, as Claude Sonnet 4.5 sends it, with its stop reason and usage. */
export function anthropicMessage(
  content: Record<string, unknown>[],
  stopReason: string,
  usage: Record<string, unknown>,
  id = 'msg_013Zva2CMHLNnXjNJJKqJ2EF',
): Record<string, unknown> {
  return {
    id,
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5-20250929',
    content,
    stop_reason: stopReason,
    stop_sequence: null,
    usage,
  };
}

export function anthropicSseFrame(e: Record<string, unknown>): string {
  return `event: ${String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`;
}

/** `s` in `n` pieces or so (split deltas, as Claude streams them). */
export function textPieces(s: string, n: number): string[] {
  const size = Math.max(1, Math.ceil(s.length / n));
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

/**
 * The Messages API SSE sequence of `blocks` (text, tool_use, thinking) as Claude streams it: message_start
 * with the input counts, a ping, each block opened empty and filled by split deltas (a tool's input from
 * `rawInput` when given, the text Claude wrote), the stop reason and output count in message_delta,
 * message_stop.
 */
export function claudeSse(
  blocks: Record<string, unknown>[],
  stopReason: string,
  usage: Record<string, unknown>,
  stopSequence: string | null = null,
): string {
  type Json = Record<string, unknown>;
  const events: Json[] = [
    {
      type: 'message_start',
      message: { ...anthropicMessage([], '', { ...usage, output_tokens: 1 }), stop_reason: null },
    },
    { type: 'ping' },
  ];
  blocks.forEach((b, index) => {
    const delta = (d: Json) => events.push({ type: 'content_block_delta', index, delta: d });
    if (b.type === 'text') {
      events.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      for (const text of textPieces(String(b.text), 3)) delta({ type: 'text_delta', text });
    } else if (b.type === 'tool_use') {
      events.push({
        type: 'content_block_start',
        index,
        content_block: { type: 'tool_use', id: b.id, name: b.name, input: {} },
      });
      delta({ type: 'input_json_delta', partial_json: '' });
      const raw = typeof b.rawInput === 'string' ? b.rawInput : JSON.stringify(b.input);
      for (const partial_json of textPieces(raw, 4)) delta({ type: 'input_json_delta', partial_json });
    } else if (b.type === 'thinking') {
      events.push({
        type: 'content_block_start',
        index,
        content_block: { type: 'thinking', thinking: '', signature: '' },
      });
      for (const thinking of textPieces(String(b.thinking), 2)) delta({ type: 'thinking_delta', thinking });
      delta({ type: 'signature_delta', signature: String(b.signature) });
    }
    events.push({ type: 'content_block_stop', index });
  });
  events.push({
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: stopSequence },
    usage: { output_tokens: usage.output_tokens },
  });
  events.push({ type: 'message_stop' });
  return events.map(anthropicSseFrame).join('');
}

/** One text block `text` as the Messages API answers it, JSON or (`stream`) its SSE sequence. */
export interface AnthropicText {
  readonly id: string;
  readonly model: string;
  readonly text: string;
  readonly stream: boolean;
  readonly inputTokens: number;
  readonly outputTokens: number;
}

/** Answers `res` with {@link AnthropicText}: message_start (1 output token so far) ... message_delta, or the JSON. */
export function answerAnthropicText(res: ServerResponse, a: AnthropicText): void {
  if (!a.stream) {
    sendJson(res, 200, {
      id: a.id,
      type: 'message',
      role: 'assistant',
      model: a.model,
      content: [{ type: 'text', text: a.text }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: { input_tokens: a.inputTokens, output_tokens: a.outputTokens },
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(
    [
      {
        type: 'message_start',
        message: {
          id: a.id,
          type: 'message',
          role: 'assistant',
          model: a.model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: a.inputTokens, output_tokens: 1 },
        },
      },
      { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: a.text } },
      { type: 'content_block_stop', index: 0 },
      {
        type: 'message_delta',
        delta: { stop_reason: 'end_turn', stop_sequence: null },
        usage: { output_tokens: a.outputTokens },
      },
      { type: 'message_stop' },
    ]
      .map(anthropicSseFrame)
      .join(''),
  );
}

/**
 * The opening of a streamed Claude message (message_start with `input_tokens` and 1 output token so far, a
 * ping, an empty text block 0), for a test that writes the rest event by event.
 */
export function claudeOpening(inputTokens = 9): string {
  return [
    {
      type: 'message_start',
      message: {
        ...anthropicMessage([], '', { input_tokens: inputTokens, output_tokens: 1 }),
        stop_reason: null,
      },
    },
    { type: 'ping' },
    { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
  ]
    .map(anthropicSseFrame)
    .join('');
}

/** One `text_delta` of content block `index`. */
export function claudeTextDelta(text: string, index = 0): string {
  return anthropicSseFrame({ type: 'content_block_delta', index, delta: { type: 'text_delta', text } });
}

/** The end of a streamed Claude message: text block 0 stopped, `stopReason` and its output count, message_stop. */
export function claudeClosing(outputTokens: number, stopReason = 'end_turn'): string {
  return [
    { type: 'content_block_stop', index: 0 },
    {
      type: 'message_delta',
      delta: { stop_reason: stopReason, stop_sequence: null },
      usage: { output_tokens: outputTokens },
    },
    { type: 'message_stop' },
  ]
    .map(anthropicSseFrame)
    .join('');
}
