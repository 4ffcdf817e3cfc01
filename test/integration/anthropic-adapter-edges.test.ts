/**
 * The Anthropic adapter at its bounds (SPEC §4: request, response and SSE events translated; README
 * "Anthropic upstreams"): a user id of 256 characters is sent as metadata.user_id and a longer one hashed,
 * the thinking budget at Anthropic's 1,024-token floor, a rate-limit error body sent with a 200, repeated
 * message_delta events, events all named alike, a tool_use block left open, and thinking held to hand back up
 * to its 2 MiB bound. A Messages API mock on loopback records each body and answers JSON or SSE events.
 */
import { describe, expect, it } from 'vitest';
import { anthropicAdapter } from '../../src/upstream/adapters/anthropic.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

const chat = (gw: TestGateway, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
  postTo(`${gw.url}/v1/chat/completions`, { model: 'r', messages: MSG, ...body }, { headers });

type Json = Record<string, unknown>;

const claudeMessage = (content: Json[], stopReason = 'end_turn', usage: Json = {}): Json => ({
  id: 'msg_review2',
  type: 'message',
  role: 'assistant',
  model: 'claude-sonnet-4-5',
  content,
  stop_reason: stopReason,
  stop_sequence: null,
  usage: { input_tokens: 10, output_tokens: 3, ...usage },
});

/** A gateway whose route `r` is one Anthropic upstream `c/<model>` over a mock answering `answer(body, n)`. */
async function anthropicGateway(
  answer: (body: Json, n: number) => { status?: number; json?: unknown; events?: Json[]; eventName?: string },
  model = 'claude-sonnet-4-5',
): Promise<{ gw: TestGateway; up: Awaited<ReturnType<typeof startMock>> }> {
  const up = track(
    await startMock((req, res, n) => {
      const a = answer(req.body, n);
      if (a.events) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          a.events
            .map((e) => `event: ${a.eventName ?? String(e.type)}\ndata: ${JSON.stringify(e)}\n\n`)
            .join(''),
        );
        return;
      }
      sendJson(res, a.status ?? 200, a.json ?? claudeMessage([{ type: 'text', text: 'ok' }]));
    }),
  );
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'c',
          kind: 'anthropic',
          base_url: up.url,
          api_key: 'sk-ant-review-2-key',
          timeouts: RELAXED,
          models: [{ name: model }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: [`c/${model}`] } },
    }),
  );
  return { gw, up };
}

describe('Anthropic request translation', () => {
  // Anthropic's metadata.user_id takes 256 characters: a user id of exactly 256 goes as it is, one of 257
  // as its hash.
  it('a 256-character user is sent as metadata.user_id as it is; 257 characters are hashed', async () => {
    const { gw, up } = await anthropicGateway(() => ({}));
    const u256 = 'u'.repeat(256);
    expect((await chat(gw, { user: u256 })).status).toBe(200);
    expect(up.received[0]?.body.metadata).toEqual({ user_id: u256 });
    expect((await chat(gw, { user: `${u256}x` })).status).toBe(200);
    const hashed = String(dig(up.received[1]?.body, 'metadata', 'user_id'));
    expect(hashed).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('Anthropic thinking budget at its floor', () => {
  // README/the adapter: thinking is kept under max_tokens and dropped only when that leaves "less than
  // Anthropic's 1,024 minimum": max_tokens 1025 leaves exactly 1024, which Anthropic takes.
  it('reasoning_effort medium with max_tokens 1025 on Claude 4.5 sends a 1024-token thinking budget', async () => {
    const { gw, up } = await anthropicGateway(() => ({}));
    const r = await chat(gw, { reasoning_effort: 'medium', max_tokens: 1025 });
    expect(r.status, r.text).toBe(200);
    const sent = up.received[0]?.body as Json;
    expect(sent.max_tokens).toBe(1025);
    expect(sent.thinking).toEqual({ type: 'enabled', budget_tokens: 1024 });
  });
});

/** The `data:` chunks of an SSE answer, parsed (the `[DONE]` line left out). */
function sseChunks(text: string): Json[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]')
    .map((l) => JSON.parse(l.slice(6)) as Json);
}

const streamStart: Json = {
  type: 'message_start',
  message: { ...claudeMessage([], 'end_turn'), content: [], stop_reason: null },
};
const textBlock = (index: number, text: string): Json[] => [
  { type: 'content_block_start', index, content_block: { type: 'text', text: '' } },
  { type: 'content_block_delta', index, delta: { type: 'text_delta', text } },
  { type: 'content_block_stop', index },
];

describe('Anthropic answers translated to OpenAI (SPEC §4: response and SSE events translated)', () => {
  // A proxy's error body sent with a 200 (an `error` object, no `type: "error"`, no content) is a failure of
  // its kind (SPEC §2: an error after a 200 "is failed over like any 5xx"; §4: 429 when every candidate is rate
  // limited), not an answer that cannot be read.
  it('a 200 whose body is {"error": {rate_limit_error}} gives the client a 429 with Retry-After', async () => {
    const { gw } = await anthropicGateway(() => ({
      json: { error: { type: 'rate_limit_error', message: 'slow down please' } },
    }));
    const r = await chat(gw);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBeDefined();
  });

  // The translator sends one finish chunk, as OpenAI does, though Anthropic may send several message_delta
  // events with a stop_reason.
  it('two message_delta events with a stop_reason give one finish chunk', async () => {
    const { gw } = await anthropicGateway(() => ({
      events: [
        streamStart,
        ...textBlock(0, 'hello'),
        { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 } },
        { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 3 } },
        { type: 'message_stop' },
      ],
    }));
    const r = await chat(gw, { stream: true });
    expect(r.status, r.text).toBe(200);
    const finishes = sseChunks(r.text).filter((c) => dig(c, 'choices', 0, 'finish_reason'));
    expect(finishes.map((c) => dig(c, 'choices', 0, 'finish_reason'))).toEqual(['stop']);
    expect(r.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  // The payload's own type is authoritative over the SSE event name: a proxy that names every event alike
  // (`event: message`) still streams the answer.
  it('events all named "message" are read by their payload type', async () => {
    const { gw } = await anthropicGateway(() => ({
      eventName: 'message',
      events: [
        streamStart,
        ...textBlock(0, 'hello there'),
        { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 } },
        { type: 'message_stop' },
      ],
    }));
    const r = await chat(gw, { stream: true });
    expect(r.status, r.text).toBe(200);
    const text = sseChunks(r.text)
      .map((c) => String(dig(c, 'choices', 0, 'delta', 'content') ?? ''))
      .join('');
    expect(text).toBe('hello there');
  });

  // "A block left open ends where the next one starts": a tool call without parameters whose block was never
  // stopped still ends with `{}` arguments (OpenAI never ends a call with empty arguments; clients JSON.parse
  // them).
  it('a tool_use block left open before the next one starts still gets {} arguments', async () => {
    const { gw } = await anthropicGateway(() => ({
      events: [
        streamStart,
        {
          type: 'content_block_start',
          index: 0,
          content_block: { type: 'tool_use', id: 'toolu_1', name: 'now', input: {} },
        },
        {
          type: 'content_block_start',
          index: 1,
          content_block: { type: 'tool_use', id: 'toolu_2', name: 'add', input: {} },
        },
        {
          type: 'content_block_delta',
          index: 1,
          delta: { type: 'input_json_delta', partial_json: '{"a":1}' },
        },
        { type: 'content_block_stop', index: 1 },
        { type: 'message_delta', delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 9 } },
        { type: 'message_stop' },
      ],
    }));
    const r = await chat(gw, {
      stream: true,
      tools: [
        { type: 'function', function: { name: 'now' } },
        { type: 'function', function: { name: 'add', parameters: { type: 'object' } } },
      ],
    });
    expect(r.status, r.text).toBe(200);
    const args = ['', ''];
    for (const c of sseChunks(r.text)) {
      const calls = dig(c, 'choices', 0, 'delta', 'tool_calls');
      for (const call of Array.isArray(calls) ? (calls as unknown[]) : [])
        args[Number(dig(call, 'index'))] += String(dig(call, 'function', 'arguments') ?? '');
    }
    expect(args).toEqual(['{}', '{"a":1}']);
  });
});

describe('thinking held to hand back, up to its bound (anthropic-stream.ts MAX_THINKING_CHARS)', () => {
  // The bound is "the most thinking held": thinking of exactly 2 MiB (text and signature) is held and offered
  // back as thinking_blocks (Claude refuses a tool-loop turn sent back without its thinking).
  it('a signed thinking block filling the 2 MiB bound exactly (text, signature and the 64 a block counts) is offered', () => {
    const chunks: string[] = [];
    const t = anthropicAdapter.streamTranslator(
      {
        chunk: (json: string) => chunks.push(json),
        usage: () => undefined,
        error: () => undefined,
        end: () => undefined,
      },
      { model: 'r', includeUsage: false, created: 1 },
    );
    const send = (e: Json): void => t.event(String(e.type), JSON.stringify(e));
    const MAX = 2 * 1024 * 1024 - 64; // the bound less what the block itself counts
    const piece = 'x'.repeat(64 * 1024);
    send(streamStart);
    send({ type: 'content_block_start', index: 0, content_block: { type: 'thinking', thinking: '' } });
    for (let sent = 0; sent < MAX - 3; sent += piece.length)
      send({
        type: 'content_block_delta',
        index: 0,
        delta: { type: 'thinking_delta', thinking: piece.slice(0, Math.min(piece.length, MAX - 3 - sent)) },
      });
    send({ type: 'content_block_delta', index: 0, delta: { type: 'signature_delta', signature: 'sig' } });
    send({ type: 'content_block_stop', index: 0 });
    for (const e of textBlock(1, 'answer')) send(e);
    send({ type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 5 } });
    send({ type: 'message_stop' });
    const offered = chunks
      .map((c) => JSON.parse(c) as Json)
      .flatMap((c) => (dig(c, 'choices', 0, 'delta', 'thinking_blocks') as Json[] | undefined) ?? []);
    expect(offered).toHaveLength(1);
    expect(offered[0]?.signature).toBe('sig');
    expect(String(offered[0]?.thinking).length).toBe(MAX - 3);
  });
});
