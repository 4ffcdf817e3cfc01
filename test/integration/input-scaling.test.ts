/**
 * Large but valid input is served in time linear in its size. The gateway's per-request work on a client's
 * body (the splice of `model` into the client's own text, the Anthropic translation of a long agent
 * conversation) and on an upstream's answer (SSE parsing of tiny chunks and of 1-byte writes, the relay,
 * tool-call arguments streamed a character at a time, many content blocks, many choices) never grows with
 * the square of the input, and never fails on an input's size below the body limit.
 *
 * Each test sends one input a linear implementation serves in well under a second, and checks the answer
 * whole; the super-linear steps found here (test/unit/upstream body-text and anthropic-request) took minutes
 * at such sizes. No timing is asserted: a blow-up shows as the test's own timeout.
 */
import type { ServerResponse } from 'node:http';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';
import { sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
const RELAXED = { connect_ms: 2000, first_byte_ms: 20000, idle_ms: 20000, total_ms: 20000 };

type Json = Record<string, unknown>;

/** A gateway whose route `r` is one provider of `kind` at `url` (model `m`, or `claude-sonnet-4-5`). */
async function gatewayOn(url: string, kind: 'openai' | 'anthropic'): Promise<TestGateway> {
  const provider =
    kind === 'openai'
      ? simProvider('up', url, ['m'], { timeouts: RELAXED })
      : {
          name: 'up',
          kind: 'anthropic',
          base_url: url,
          api_key: 'sk-ant-test-key-0001',
          timeouts: RELAXED,
          models: [{ name: 'claude-sonnet-4-5' }],
        };
  const target = kind === 'openai' ? 'up/m' : 'up/claude-sonnet-4-5';
  return track(
    await startGateway({
      providers: [provider],
      routes: { r: { strategy: 'priority', targets: [target] } },
    }),
  );
}

/** A Messages API answer of one text block. */
function claudeAnswer(res: ServerResponse): void {
  sendJson(res, 200, {
    id: 'msg_01',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5',
    content: [{ type: 'text', text: 'done' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 10, output_tokens: 1 },
  });
}

/** An OpenAI chat.completion of "done". */
function openAiAnswer(res: ServerResponse): void {
  sendJson(res, 200, {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content: 'done' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
  });
}

/** An SSE answer of `frames`, yielding to the event loop every `every` writes so they leave as separate reads. */
async function writeSlowly(res: ServerResponse, frames: readonly string[], every: number): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.socket?.setNoDelay(true);
  for (let i = 0; i < frames.length; i++) {
    res.write(frames[i]);
    if (i % every === every - 1) await tick();
  }
  res.end();
}

/** Anthropic's `message_start`, as Claude opens a stream. */
const MESSAGE_START = {
  type: 'message_start',
  message: {
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-5',
    content: [],
    stop_reason: null,
    usage: { input_tokens: 5, output_tokens: 1 },
  },
};

const TOOL_F = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
const HI = [{ role: 'user', content: 'hi' }];

interface ReadStream {
  /** `delta.content` of each choice index, concatenated. */
  readonly content: Map<number, string>;
  /** Tool-call arguments by tool-call index (choice 0), concatenated. */
  readonly args: Map<number, string>;
  readonly finishes: string[];
  readonly done: boolean;
}

/** An OpenAI SSE body read as a client's stream helper reads it. */
function readStream(text: string): ReadStream {
  const content = new Map<number, string>();
  const args = new Map<number, string>();
  const finishes: string[] = [];
  let done = false;
  for (const e of sseEvents(text)) {
    if (e.data === '[DONE]') {
      done = true;
      continue;
    }
    const chunk = JSON.parse(e.data) as Json;
    expect(chunk.error, e.data).toBeUndefined();
    for (const c of (chunk.choices as Json[] | undefined) ?? []) {
      const index = c.index as number;
      const delta = (c.delta ?? {}) as Json;
      if (typeof delta.content === 'string') content.set(index, (content.get(index) ?? '') + delta.content);
      for (const call of (delta.tool_calls as Json[] | undefined) ?? []) {
        const a = dig(call, 'function', 'arguments');
        const k = call.index as number;
        if (typeof a === 'string') args.set(k, (args.get(k) ?? '') + a);
      }
      if (typeof c.finish_reason === 'string') finishes.push(c.finish_reason);
    }
  }
  return { content, args, finishes, done };
}

describe('a client body with many top-level fields (unknown fields pass through untouched, SPEC §4)', () => {
  // The body goes upstream as the client's own text with `model` spliced in (upstream/body-text.ts); finding
  // the splice point must cost one pass over the text, however many top-level keys it holds.
  it('80,000 vendor fields ahead of a 4 MB one-line prompt: relayed whole to an OpenAI-compatible upstream', async () => {
    const up = track(await startMock((_r, res) => openAiAnswer(res)));
    const gw = await gatewayOn(up.url, 'openai');
    const body: Json = { model: 'r' };
    for (let i = 0; i < 80_000; i++) body[`x_${i}`] = i;
    const prompt = 'lorem ipsum dolor sit amet '.repeat(150_000);
    body.messages = [{ role: 'user', content: prompt }];
    const r = await postChat(gw, body);
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    const sent = up.received[0]!.body;
    expect(Object.keys(sent)).toHaveLength(80_002);
    expect(sent.model).toBe('m');
    expect(sent.x_79999).toBe(79_999);
    expect(dig(sent, 'messages', 0, 'content')).toBe(prompt);
  });
});

describe('a long agent conversation translated for an Anthropic upstream', () => {
  // Providers that number tool calls per answer (Xinference, some vLLM chat templates) send `call_0` every
  // round; Anthropic refuses a repeated tool_use id, so the gateway renames them (README) — in linear time.
  it('12,000 rounds whose tool calls are all `call_0`: ids made unique, results paired', async () => {
    const up = track(await startMock((_r, res) => claudeAnswer(res)));
    const gw = await gatewayOn(up.url, 'anthropic');
    const rounds = 12_000;
    const messages: Json[] = [{ role: 'user', content: 'work' }];
    for (let i = 0; i < rounds; i++) {
      messages.push({
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_0', type: 'function', function: { name: 'f', arguments: '{}' } }],
      });
      messages.push({ role: 'tool', tool_call_id: 'call_0', content: `r${i}` });
    }
    const r = await postChat(gw, { model: 'r', messages, tools: TOOL_F });
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    const sent = up.received[0]!.body.messages as { content: Json[] }[];
    const blocks = sent.flatMap((m) => m.content);
    const uses = blocks.filter((b) => b.type === 'tool_use').map((b) => b.id);
    const results = blocks.filter((b) => b.type === 'tool_result').map((b) => b.tool_use_id);
    expect(uses).toHaveLength(rounds);
    expect(new Set(uses).size).toBe(rounds);
    expect(results).toEqual(uses);
  });

  // Consecutive user messages are merged into one Anthropic turn; a message of many parts (a 5 MB body, well
  // under the 10 MB body limit) must be merged like a short one, not fail the request.
  it('a user message of 200,000 text parts after another user message: translated and answered, not a 500', async () => {
    const up = track(await startMock((_r, res) => claudeAnswer(res)));
    const gw = await gatewayOn(up.url, 'anthropic');
    const parts = Array.from({ length: 200_000 }, (_, i) => ({ type: 'text', text: `p${i}` }));
    const r = await postChat(gw, {
      model: 'r',
      messages: [
        { role: 'user', content: 'first' },
        { role: 'user', content: parts },
      ],
    });
    expect(r.status, r.text.slice(0, 300)).toBe(200);
    const sent = up.received[0]!.body.messages as { role: string; content: Json[] }[];
    expect(sent).toHaveLength(1);
    expect(sent[0]!.content).toHaveLength(200_001);
    expect(sent[0]!.content.at(-1)).toEqual({ type: 'text', text: 'p199999' });
  });
});

describe('streams of many small pieces are relayed whole, in time linear in their length', () => {
  it('50,000 one-character content chunks from an OpenAI-compatible upstream', async () => {
    const text = Array.from({ length: 50_000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
    const frames = [
      chunkFrame('m', { role: 'assistant', content: '' }),
      ...Array.from(text, (c) => chunkFrame('m', { content: c })),
      chunkFrame('m', {}, 'stop'),
      'data: [DONE]\n\n',
    ];
    const up = track(await startMock((_r, res) => writeSlowly(res, frames, 200)));
    const gw = await gatewayOn(up.url, 'openai');
    const r = await postChat(gw, { model: 'r', messages: HI, stream: true });
    const s = readStream(r.text);
    expect(s.content.get(0)).toBe(text);
    expect(s.finishes).toEqual(['stop']);
    expect(s.done).toBe(true);
  });

  it('50 KB of tool-call arguments streamed one character a chunk (OpenAI dialect)', async () => {
    const args = JSON.stringify({ data: 'x'.repeat(50_000) });
    const frames = [
      chunkFrame('m', {
        role: 'assistant',
        content: null,
        tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }],
      }),
      ...Array.from(args, (c) => chunkFrame('m', { tool_calls: [{ index: 0, function: { arguments: c } }] })),
      chunkFrame('m', {}, 'tool_calls'),
      'data: [DONE]\n\n',
    ];
    const up = track(await startMock((_r, res) => writeSlowly(res, frames, 200)));
    const gw = await gatewayOn(up.url, 'openai');
    const r = await postChat(gw, { model: 'r', messages: HI, stream: true, tools: TOOL_F });
    const s = readStream(r.text);
    expect(s.args.get(0)).toBe(args);
    expect(s.finishes).toEqual(['tool_calls']);
    expect(s.done).toBe(true);
  });

  it('50 KB of tool input streamed one character an input_json_delta (Anthropic, translated)', async () => {
    const args = JSON.stringify({ data: 'x'.repeat(50_000) });
    const events = [
      MESSAGE_START,
      {
        type: 'content_block_start',
        index: 0,
        content_block: { type: 'tool_use', id: 'toolu_1', name: 'f', input: {} },
      },
      ...Array.from(args, (c) => ({
        type: 'content_block_delta',
        index: 0,
        delta: { type: 'input_json_delta', partial_json: c },
      })),
      { type: 'content_block_stop', index: 0 },
      { type: 'message_delta', delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 9 } },
      { type: 'message_stop' },
    ];
    const up = track(await startMock((_r, res) => writeSlowly(res, events.map(anthropicSseFrame), 200)));
    const gw = await gatewayOn(up.url, 'anthropic');
    const r = await postChat(gw, { model: 'r', messages: HI, stream: true, tools: TOOL_F });
    const s = readStream(r.text);
    expect(s.args.get(0)).toBe(args);
    expect(s.finishes).toEqual(['tool_calls']);
    expect(s.done).toBe(true);
  });

  it('one 16 KB content event arriving in 1-byte writes', async () => {
    const text = 'y'.repeat(16_000);
    const frames = [
      chunkFrame('m', { role: 'assistant', content: '' }),
      ...Array.from(chunkFrame('m', { content: text })),
      chunkFrame('m', {}, 'stop'),
      'data: [DONE]\n\n',
    ];
    const up = track(await startMock((_r, res) => writeSlowly(res, frames, 1)));
    const gw = await gatewayOn(up.url, 'openai');
    const r = await postChat(gw, { model: 'r', messages: HI, stream: true });
    const s = readStream(r.text);
    expect(s.content.get(0)).toBe(text);
    expect(s.done).toBe(true);
  });

  it('an Anthropic stream of 5,000 content blocks (text and tool_use alternating): every call numbered in order', async () => {
    const n = 2500;
    const events: Json[] = [MESSAGE_START];
    for (let i = 0; i < n; i++) {
      events.push(
        { type: 'content_block_start', index: 2 * i, content_block: { type: 'text', text: '' } },
        { type: 'content_block_delta', index: 2 * i, delta: { type: 'text_delta', text: `t${i} ` } },
        { type: 'content_block_stop', index: 2 * i },
        {
          type: 'content_block_start',
          index: 2 * i + 1,
          content_block: { type: 'tool_use', id: `toolu_${i}`, name: 'f', input: {} },
        },
        {
          type: 'content_block_delta',
          index: 2 * i + 1,
          delta: { type: 'input_json_delta', partial_json: `{"i":${i}}` },
        },
        { type: 'content_block_stop', index: 2 * i + 1 },
      );
    }
    events.push(
      { type: 'message_delta', delta: { stop_reason: 'tool_use' }, usage: { output_tokens: 9 } },
      { type: 'message_stop' },
    );
    const up = track(await startMock((_r, res) => writeSlowly(res, events.map(anthropicSseFrame), 100)));
    const gw = await gatewayOn(up.url, 'anthropic');
    const r = await postChat(gw, { model: 'r', messages: HI, stream: true, tools: TOOL_F });
    const s = readStream(r.text);
    expect(s.content.get(0)).toBe(Array.from({ length: n }, (_, i) => `t${i} `).join(''));
    expect(s.args.size).toBe(n);
    expect(s.args.get(n - 1)).toBe(`{"i":${n - 1}}`);
    expect(s.finishes).toEqual(['tool_calls']);
    expect(s.done).toBe(true);
  });

  it('n = 64 choices streamed together for 500 chunks: every choice whole, the stream finished', async () => {
    const n = 64;
    const frame = (choices: Json[]): string =>
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices })}\n\n`;
    const frames: string[] = [];
    for (let k = 0; k < 500; k++)
      frames.push(
        frame(
          Array.from({ length: n }, (_, i) => ({
            index: i,
            delta: k === 0 ? { role: 'assistant', content: `${i}:` } : { content: 'z' },
            finish_reason: null,
          })),
        ),
      );
    frames.push(
      frame(Array.from({ length: n }, (_, i) => ({ index: i, delta: {}, finish_reason: 'stop' }))),
      'data: [DONE]\n\n',
    );
    const up = track(await startMock((_r, res) => writeSlowly(res, frames, 10)));
    const gw = await gatewayOn(up.url, 'openai');
    const r = await postChat(gw, { model: 'r', n, messages: HI, stream: true });
    const s = readStream(r.text);
    expect(s.content.size).toBe(n);
    expect(s.content.get(63)).toBe(`63:${'z'.repeat(499)}`);
    expect(s.finishes).toHaveLength(n);
    expect(s.done).toBe(true);
  });
});
