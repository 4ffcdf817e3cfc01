/**
 * Edges of the Anthropic SSE -> OpenAI chunk translation (src/upstream/adapters/anthropic-stream.ts, driven by
 * src/upstream/attempt-stream.ts) against SPEC §2 (commit at the first content delta, failover before it, a cut
 * stream ends with an error event and no [DONE]), §8 (hostile upstreams) and OpenAI's stream format (nothing
 * after a choice's finish chunk). Hand-written Messages API upstreams on 127.0.0.1:0 write raw SSE bytes.
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway } from '../helpers/gateway.js';
import { startMock, type MockHandler } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const MODEL = 'claude-haiku-4-5';
const hi = [{ role: 'user', content: 'hi' }];

function messageStart(id: string, usage: Json = { input_tokens: 10, output_tokens: 1 }): Json {
  return {
    type: 'message_start',
    message: {
      id,
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage,
    },
  };
}

const textStart = (index: number): Json => ({
  type: 'content_block_start',
  index,
  content_block: { type: 'text', text: '' },
});
const textDelta = (index: number, text: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'text_delta', text },
});
const blockStop = (index: number): Json => ({ type: 'content_block_stop', index });
const messageDelta = (stop: string | null, usage?: Json): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stop, stop_sequence: null },
  ...(usage === undefined ? {} : { usage }),
});
const PING = { type: 'ping' };
const STOP = { type: 'message_stop' };

/** A whole text answer, as the Messages API streams it. */
function textAnswer(id: string, text: string): Json[] {
  return [
    messageStart(id),
    textStart(0),
    textDelta(0, text),
    blockStop(0),
    messageDelta('end_turn', { output_tokens: 3 }),
    STOP,
  ];
}

/** Writes `events` as one SSE body and ends it. */
function sse(res: ServerResponse, events: Json[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(events.map(anthropicSseFrame).join(''));
}

/** A gateway whose route `r` tries the given Anthropic upstreams in order. */
async function gatewayOver(
  handlers: MockHandler[],
  timeouts?: Json,
): Promise<{ url: string; mocks: Awaited<ReturnType<typeof startMock>>[] }> {
  const mocks = [];
  for (const h of handlers) mocks.push(track(await startMock(h)));
  const gw = track(
    await startGateway({
      providers: mocks.map((m, i) => ({
        name: `anth${i}`,
        kind: 'anthropic',
        base_url: m.url,
        api_key: `sk-ant-review-${i}`,
        models: [{ name: MODEL }],
        ...(timeouts === undefined ? {} : { timeouts }),
      })),
      routes: { r: { strategy: 'priority', targets: mocks.map((_, i) => `anth${i}/${MODEL}`) } },
    }),
  );
  return { url: gw.url, mocks };
}

/** The `data:` payloads of an SSE body, in order (multi-line data joined as SSE joins it). */
function dataEvents(text: string): string[] {
  return text
    .replace(/\r\n?/g, '\n')
    .split('\n\n')
    .map((block) =>
      block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n'),
    )
    .filter((d) => d !== '');
}

interface Chunk {
  object?: string;
  choices: { index: number; delta: Json; finish_reason: string | null }[];
  usage?: Json | null;
  error?: Json;
}

function chunksOf(text: string): Chunk[] {
  return dataEvents(text)
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d) as Chunk);
}

describe('Anthropic stream translation: the finish chunk is the last, a stream with none is no answer', () => {
  it('a tool_use block the upstream never stops (message_delta follows at once): its arguments come before finish_reason, nothing after it', async () => {
    // SPEC §8 hostile upstreams; OpenAI's stream format: the chunk carrying finish_reason is the choice's last.
    const { url } = await gatewayOver([
      (_req, res) =>
        sse(res, [
          messageStart('msg_open_tool'),
          {
            type: 'content_block_start',
            index: 0,
            content_block: { type: 'tool_use', id: 'toolu_01', name: 'lookup', input: {} },
          },
          // no input_json_delta (a tool without parameters) and no content_block_stop
          messageDelta('tool_use', { output_tokens: 5 }),
          STOP,
        ]),
    ]);
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: hi,
        stream: true,
        tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }],
      },
    );
    expect(r.status).toBe(200);
    const chunks = chunksOf(r.text);
    const args = chunks
      .flatMap((c) => c.choices)
      .flatMap((c) => (c.delta.tool_calls as { function?: { arguments?: string } }[] | undefined) ?? [])
      .map((t) => t.function?.arguments ?? '')
      .join('');
    expect(args).toBe('{}');
    const finishAt = chunks.findIndex((c) => c.choices[0]?.finish_reason != null);
    expect(finishAt).toBeGreaterThanOrEqual(0);
    expect(chunks[finishAt]!.choices[0]!.finish_reason).toBe('tool_calls');
    // Nothing with a choice after the finish chunk.
    expect(chunks.slice(finishAt + 1).filter((c) => c.choices.length > 0)).toEqual([]);
  });

  it('message_start then message_stop with no content and no stop reason is no answer: failed over, as [DONE] with nothing is (README)', async () => {
    // README: an upstream that "sends `[DONE]` with no content and no `finish_reason`" is failed over invisibly;
    // message_stop is Anthropic's [DONE] and message_delta's stop_reason its finish_reason.
    const { url, mocks } = await gatewayOver([
      (_req, res) => sse(res, [messageStart('msg_empty'), PING, STOP]),
      (_req, res) => sse(res, textAnswer('msg_second', 'from the second upstream')),
    ]);
    const r = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(r.status).toBe(200);
    expect(mocks[1]!.received.length).toBe(1);
    const content = chunksOf(r.text)
      .map((c) => (c.choices[0]?.delta.content as string | undefined) ?? '')
      .join('');
    expect(content).toBe('from the second upstream');
  });
  it('a text delta after message_delta (a hostile upstream) is not relayed after the finish chunk', async () => {
    // OpenAI's stream format: the chunk carrying finish_reason is the choice's last; SPEC §8 hostile upstreams.
    const { url } = await gatewayOver([
      (_req, res) =>
        sse(res, [
          messageStart('msg_late'),
          textStart(0),
          textDelta(0, 'Done.'),
          messageDelta('end_turn', { output_tokens: 2 }),
          textDelta(0, ' LATE'),
          blockStop(0),
          STOP,
        ]),
    ]);
    const r = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(r.status).toBe(200);
    const chunks = chunksOf(r.text);
    const finishAt = chunks.findIndex((c) => c.choices[0]?.finish_reason != null);
    expect(chunks.slice(finishAt + 1).filter((c) => c.choices.length > 0)).toEqual([]);
  });
});

describe('Anthropic stream translation: framing, foreign blocks, errors and pings', () => {
  it('CRLF framing split every 7 bytes (UTF-8 cut mid-character), 1500 one-character deltas, odd tool-argument splits and foreign blocks: all reassembled, nothing foreign relayed', async () => {
    const letters = Array.from({ length: 1500 }, (_, i) =>
      i % 50 === 0 ? 'é' : String.fromCharCode(97 + (i % 26)),
    );
    const argsParts = ['', '{"ci', '', 'ty": "Pa', 'ris", "n":', ' 2', '}'];
    const events: Json[] = [
      messageStart('msg_hostile', {
        input_tokens: 7,
        cache_creation_input_tokens: 11,
        cache_read_input_tokens: 13,
        output_tokens: 1,
      }),
      PING,
      { type: 'future_event_type', delta: { type: 'text_delta', text: 'NEVER-1' } },
      {
        type: 'content_block_start',
        index: 0,
        content_block: { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix' },
      },
      blockStop(0),
      {
        type: 'content_block_start',
        index: 1,
        content_block: { type: 'server_tool_use', id: 'srvtoolu_01', name: 'web_search', input: {} },
      },
      {
        type: 'content_block_delta',
        index: 1,
        delta: { type: 'input_json_delta', partial_json: '{"query":"NEVER-2"}' },
      },
      blockStop(1),
      {
        type: 'content_block_start',
        index: 2,
        content_block: {
          type: 'web_search_tool_result',
          tool_use_id: 'srvtoolu_01',
          content: [{ type: 'web_search_result', title: 'NEVER-3', url: 'https://example.com' }],
        },
      },
      blockStop(2),
      textStart(3),
      ...letters.map((t) => textDelta(3, t)),
      {
        type: 'content_block_delta',
        index: 3,
        delta: {
          type: 'citations_delta',
          citation: { type: 'web_search_result_location', cited_text: 'NEVER-4', url: 'https://example.com' },
        },
      },
      { type: 'content_block_delta', index: 3, delta: { type: 'future_delta', text: 'NEVER-5' } },
      blockStop(3),
      {
        type: 'content_block_start',
        index: 4,
        content_block: { type: 'tool_use', id: 'toolu_A', name: 'weather', input: {} },
      },
      ...argsParts.flatMap((p, i) => [
        { type: 'content_block_delta', index: 4, delta: { type: 'input_json_delta', partial_json: p } },
        ...(i === 3 ? [PING] : []),
      ]),
      blockStop(4),
      textStart(5),
      textDelta(5, ' then'),
      blockStop(5),
      {
        type: 'content_block_start',
        index: 6,
        content_block: { type: 'tool_use', id: 'toolu_B', name: 'weather', input: {} },
      },
      {
        type: 'content_block_delta',
        index: 6,
        delta: { type: 'input_json_delta', partial_json: '{"city":' },
      },
      { type: 'content_block_delta', index: 6, delta: { type: 'input_json_delta', partial_json: '"Oslo"}' } },
      blockStop(6),
      messageDelta(null),
      messageDelta('tool_use', { output_tokens: 1600 }),
      STOP,
    ];
    const body = Buffer.from(events.map(anthropicSseFrame).join('').replace(/\n/g, '\r\n'), 'utf8');
    const { url } = await gatewayOver([
      async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (let i = 0; i < body.length; i += 7) {
          res.write(body.subarray(i, i + 7));
          if (i % 700 === 0) await new Promise((r) => setImmediate(r));
        }
        res.end();
      },
    ]);
    const r = await postChat(
      { url },
      {
        model: 'r',
        messages: hi,
        stream: true,
        stream_options: { include_usage: true },
        tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object' } } }],
      },
    );
    expect(r.status).toBe(200);
    for (const needle of ['NEVER-', 'server_tool_use', 'web_search', 'citation', 'future_'])
      expect(r.text).not.toContain(needle);
    const data = dataEvents(r.text);
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = chunksOf(r.text);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    const deltas = chunks.flatMap((c) => c.choices.map((ch) => ch.delta));
    expect(deltas.map((d) => (d.content as string | undefined) ?? '').join('')).toBe(
      letters.join('') + ' then',
    );
    const calls = new Map<number, { id?: string; args: string }>();
    for (const d of deltas)
      for (const t of (d.tool_calls as { index: number; id?: string; function?: { arguments?: string } }[]) ??
        []) {
        const c = calls.get(t.index) ?? { args: '' };
        if (t.id) c.id = t.id;
        c.args += t.function?.arguments ?? '';
        calls.set(t.index, c);
      }
    expect([...calls.entries()]).toEqual([
      [0, { id: 'toolu_A', args: '{"city": "Paris", "n": 2}' }],
      [1, { id: 'toolu_B', args: '{"city":"Oslo"}' }],
    ]);
    expect(chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter((f) => f !== null)).toEqual([
      'tool_calls',
    ]);
    // The redacted block is offered back; the usage chunk is last and counts the cache tokens.
    expect(deltas.some((d) => Array.isArray(d.thinking_blocks))).toBe(true);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({
      prompt_tokens: 31,
      completion_tokens: 1600,
      total_tokens: 1631,
      prompt_tokens_details: { cached_tokens: 13 },
    });
  });

  it('an error event whose data is not JSON, after content: an OpenAI error event, the raw text never relayed, no [DONE]', async () => {
    const { url } = await gatewayOver([
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          [messageStart('msg_raw_err'), textStart(0), textDelta(0, 'Partial')]
            .map(anthropicSseFrame)
            .join('') + 'event: error\ndata: Overloaded <html>RAW-UPSTREAM-TEXT</html>\n\n',
        );
      },
    ]);
    const r = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('RAW-UPSTREAM-TEXT');
    expect(r.text).not.toContain('[DONE]');
    const chunks = chunksOf(r.text);
    expect(chunks[chunks.length - 2]!.choices[0]!.delta.content).toBe('Partial');
    expect(chunks.at(-1)!.error).toMatchObject({ code: 'stream_interrupted' });
    expect(chunks.some((c) => (c.choices ?? []).some((ch) => ch.finish_reason !== null))).toBe(false);
  });

  it('pings every 30 ms before any content are not progress past total_ms: the next upstream answers', async () => {
    let stopped = false;
    const { url, mocks } = await gatewayOver(
      [
        (_req, res) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write(anthropicSseFrame(messageStart('msg_pings')));
          const timer = setInterval(() => {
            if (res.destroyed || res.writableEnded) return clearInterval(timer);
            res.write(anthropicSseFrame(PING));
          }, 30);
          res.on('close', () => {
            stopped = true;
            clearInterval(timer);
          });
        },
        (_req, res) => sse(res, textAnswer('msg_after_pings', 'served')),
      ],
      { first_byte_ms: 10_000, idle_ms: 10_000, total_ms: 700 },
    );
    const r = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(r.status).toBe(200);
    expect(mocks[1]!.received.length).toBe(1);
    await until('the pinging upstream closed', () => stopped);
    expect(r.text).toContain('"content":"served"');
    // The first upstream's held role chunk never reached the client: one role chunk, the second's.
    expect(chunksOf(r.text).filter((c) => c.choices[0]?.delta.role === 'assistant')).toHaveLength(1);
  }, 15_000);
});
