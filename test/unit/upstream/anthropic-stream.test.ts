import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createSseParser } from '../../../src/streaming/sse.js';
import {
  ANTHROPIC_CACHE,
  type ChunkSink,
  type StreamContext,
  type UpstreamErrorInfo,
  type Usage,
} from '../../../src/upstream/adapter.js';
import { anthropicAdapter } from '../../../src/upstream/adapters/anthropic.js';
import { mulberry32 } from '../../helpers/random.js';

const fixtureText = (name: string): string =>
  readFileSync(new URL(`../../fixtures/anthropic/${name}`, import.meta.url), 'utf8');

type Out =
  | { kind: 'chunk'; json: string; content: boolean }
  | { kind: 'usage'; usage: Usage }
  | { kind: 'error'; err: UpstreamErrorInfo }
  | { kind: 'end' };

interface Delta {
  role?: string;
  content?: string;
  tool_calls?: {
    index: number;
    id?: string;
    type?: string;
    function: { name?: string; arguments: string };
  }[];
}
interface Chunk {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: { index: number; delta: Delta; logprobs: null; finish_reason: string | null }[];
  usage?: Usage | null;
}

const ctxOf = (includeUsage: boolean): StreamContext => ({
  model: 'anthropic/claude',
  includeUsage,
  created: 1_700_000_123,
});

/** A translated Anthropic usage: with its cache writes under their symbol key (report.ts prices them). */
function withWrites(usage: Omit<Usage, typeof ANTHROPIC_CACHE>, writes5m = 0, writes1h = 0): Usage {
  return { ...usage, [ANTHROPIC_CACHE]: { writes5m, writes1h } };
}

function recorder(): { sink: ChunkSink; out: Out[] } {
  const out: Out[] = [];
  return {
    out,
    sink: {
      chunk: (json, content) => out.push({ kind: 'chunk', json, content: content > 0 }),
      usage: (usage) => out.push({ kind: 'usage', usage }),
      error: (err) => out.push({ kind: 'error', err }),
      end: () => out.push({ kind: 'end' }),
    },
  };
}

/** Runs raw SSE bytes, cut into the given pieces, through the shared parser and the translator. */
function run(pieces: Uint8Array[], includeUsage = false): Out[] {
  const { sink, out } = recorder();
  const translator = anthropicAdapter.streamTranslator(sink, ctxOf(includeUsage));
  const parser = createSseParser((type, data) => translator.event(type, data));
  for (const piece of pieces) parser.feed(piece);
  parser.end();
  return out;
}

const whole = (text: string, includeUsage = false) => run([Buffer.from(text, 'utf8')], includeUsage);
const chunksOf = (out: Out[]): Chunk[] =>
  out.flatMap((o) => (o.kind === 'chunk' ? [JSON.parse(o.json) as Chunk] : []));

/** Folds streamed deltas back into one message, as an OpenAI client would. */
function reassemble(out: Out[]) {
  let content = '';
  const tools: { id: string; name: string; arguments: string }[] = [];
  let finish: string | null = null;
  for (const chunk of chunksOf(out)) {
    const choice = chunk.choices[0];
    if (choice === undefined) continue;
    content += choice.delta.content ?? '';
    for (const call of choice.delta.tool_calls ?? []) {
      const tool = (tools[call.index] ??= { id: '', name: '', arguments: '' });
      if (call.id !== undefined) tool.id = call.id;
      if (call.function.name !== undefined) tool.name = call.function.name;
      tool.arguments += call.function.arguments;
    }
    finish = choice.finish_reason ?? finish;
  }
  return { content, tools, finish };
}

const TEXT = fixtureText('text-stream.txt');
const TOOL = fixtureText('tool-stream.txt');

describe('anthropic stream: text answer', () => {
  it('emits role, one chunk per text delta, finish, then usage and end', () => {
    const out = whole(TEXT);
    const head = {
      id: 'chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL',
      object: 'chat.completion.chunk',
      created: 1_700_000_123,
      model: 'anthropic/claude',
    };
    const choice = (delta: Delta, finish: string | null = null) => ({
      ...head,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    });
    const usage = withWrites(
      {
        prompt_tokens: 135,
        completion_tokens: 15,
        total_tokens: 150,
        prompt_tokens_details: { cached_tokens: 100, cache_write_tokens: 10 },
      },
      10,
    );
    expect(out.map((o) => (o.kind === 'chunk' ? { ...o, json: JSON.parse(o.json) as unknown } : o))).toEqual([
      { kind: 'chunk', content: false, json: choice({ role: 'assistant', content: '' }) },
      { kind: 'chunk', content: true, json: choice({ content: 'Hello' }) },
      { kind: 'chunk', content: true, json: choice({ content: ', héllo 🌍' }) },
      {
        kind: 'chunk',
        content: true,
        json: choice({ content: '! Ünïcödé "quotes" and\nnew lines — 日本語.' }),
      },
      { kind: 'chunk', content: false, json: choice({}, 'stop') },
      { kind: 'usage', usage },
      { kind: 'end' },
    ]);
  });

  it('reassembles to the non-streaming translation of the same answer', () => {
    const streamed = reassemble(whole(TEXT));
    const json: unknown = JSON.parse(fixtureText('text-message.json'));
    const { body, usage } = anthropicAdapter.chatResponse(json, ctxOf(false))!;
    const choice = (body as { choices: { message: { content: string }; finish_reason: string }[] })
      .choices[0]!;
    expect(streamed.content).toBe(choice.message.content);
    expect(streamed.finish).toBe(choice.finish_reason);
    expect(whole(TEXT).find((o) => o.kind === 'usage')).toEqual({ kind: 'usage', usage });
    expect(chunksOf(whole(TEXT))[0]!.id).toBe((body as { id: string }).id);
  });
});

describe('anthropic stream: tool use', () => {
  it('emits thinking as reasoning_content, tool-call starts and argument fragments, then the signed block before the finish, all content, indexed from 0', () => {
    const out = whole(TOOL);
    const deltas = chunksOf(out).map((c) => [c.choices[0]!.delta, c.choices[0]!.finish_reason]);
    expect(deltas).toEqual([
      [{ role: 'assistant', content: '' }, null],
      [{ reasoning_content: 'The user wants weather for two cities.' }, null],
      [{ content: "Okay, let's check the weather for San Francisco" }, null],
      [{ content: ' and Zürich:' }, null],
      [
        {
          tool_calls: [
            {
              index: 0,
              id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6',
              type: 'function',
              function: { name: 'get_weather', arguments: '' },
            },
          ],
        },
        null,
      ],
      [{ tool_calls: [{ index: 0, function: { arguments: '{"location":' } }] }, null],
      [{ tool_calls: [{ index: 0, function: { arguments: ' "San Francisc' } }] }, null],
      [{ tool_calls: [{ index: 0, function: { arguments: 'o, CA", "unit": "fahrenheit"}' } }] }, null],
      [
        {
          tool_calls: [
            {
              index: 1,
              id: 'toolu_02ZZ',
              type: 'function',
              function: { name: 'get_weather', arguments: '' },
            },
          ],
        },
        null,
      ],
      [{ tool_calls: [{ index: 1, function: { arguments: '{"location": "Zürich 🇨🇭"' } }] }, null],
      [{ tool_calls: [{ index: 1, function: { arguments: ', "unit": "celsius"}' } }] }, null],
      [
        {
          thinking_blocks: [
            {
              type: 'thinking',
              thinking: 'The user wants weather for two cities.',
              signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds',
            },
          ],
        },
        null,
      ],
      [{}, 'tool_calls'],
    ]);
    const flags = out.flatMap((o) => (o.kind === 'chunk' ? [o.content] : []));
    expect(flags).toEqual([false, true, true, true, true, true, true, true, true, true, true, true, false]);
    expect(out.find((o) => o.kind === 'usage')).toEqual({
      kind: 'usage',
      usage: withWrites({
        prompt_tokens: 472,
        completion_tokens: 89,
        total_tokens: 561,
        prompt_tokens_details: { cached_tokens: 0 },
      }),
    });
    expect(out.at(-1)).toEqual({ kind: 'end' });
  });

  it('reassembles to the non-streaming translation (content and tool arguments)', () => {
    const streamed = reassemble(whole(TOOL));
    const { body } = anthropicAdapter.chatResponse(
      JSON.parse(fixtureText('tool-message.json')),
      ctxOf(false),
    )!;
    const message = (
      body as {
        choices: {
          message: {
            content: string;
            tool_calls: { id: string; function: { name: string; arguments: string } }[];
          };
        }[];
      }
    ).choices[0]!.message;
    expect(streamed.content).toBe(message.content);
    expect(streamed.finish).toBe('tool_calls');
    expect(
      streamed.tools.map((t) => ({ id: t.id, name: t.name, args: JSON.parse(t.arguments) as unknown })),
    ).toEqual(
      message.tool_calls.map((t) => ({
        id: t.id,
        name: t.function.name,
        args: JSON.parse(t.function.arguments) as unknown,
      })),
    );
  });

  it('ignores input_json_delta of blocks that are not client tool calls (server tools)', () => {
    const sse = [
      'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_s","usage":{"input_tokens":1,"output_tokens":1}}}\n\n',
      'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}\n\n',
      'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"query\\":\\"x\\"}"}}\n\n',
      'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_c","name":"f","input":{}}}\n\n',
      'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n',
    ].join('');
    const calls = chunksOf(whole(sse)).flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
    expect(calls).toEqual([
      { index: 0, id: 'toolu_c', type: 'function', function: { name: 'f', arguments: '' } },
      { index: 0, function: { arguments: '{}' } },
    ]);
  });
});

/** Hand-written Messages API events for the thinking tests. */
const ev = (data: object): string => `data: ${JSON.stringify(data)}\n\n`;
const start = ev({ type: 'message_start', message: { id: 'msg_t', usage: { input_tokens: 1 } } });
const block = (index: number, content_block: object) =>
  ev({ type: 'content_block_start', index, content_block });
const delta = (index: number, d: object) => ev({ type: 'content_block_delta', index, delta: d });
const stop = (index: number) => ev({ type: 'content_block_stop', index });
const end =
  ev({ type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 9 } }) +
  ev({ type: 'message_stop' });

describe('anthropic stream: thinking', () => {
  const blocksOf = (out: Out[]) =>
    chunksOf(out).flatMap(
      (c) => (c.choices[0]?.delta as { thinking_blocks?: unknown[] }).thinking_blocks ?? [],
    );

  it('offers redacted thinking whole, and no block for thinking that never got its signature', () => {
    const out = whole(
      start +
        block(0, { type: 'redacted_thinking', data: 'ENC' }) +
        stop(0) +
        block(1, { type: 'thinking', thinking: '' }) +
        delta(1, { type: 'thinking_delta', thinking: 'unsigned' }) +
        stop(1) +
        end,
    );
    expect(blocksOf(out)).toEqual([{ type: 'redacted_thinking', data: 'ENC' }]);
    expect(out.filter((o) => o.kind === 'chunk' && o.content)).toHaveLength(2);
  });

  it('holds at most a bounded amount of thinking: past it the reasoning still streams, the block is not offered', () => {
    const piece = 'x'.repeat(512 * 1024);
    let sse = start + block(0, { type: 'thinking', thinking: '' });
    for (let i = 0; i < 5; i++) sse += delta(0, { type: 'thinking_delta', thinking: piece });
    sse += delta(0, { type: 'signature_delta', signature: 'sig' }) + stop(0) + end;
    const out = whole(sse);
    expect(blocksOf(out)).toEqual([]);
    const reasoning = chunksOf(out).map(
      (c) => (c.choices[0]?.delta as { reasoning_content?: string }).reasoning_content,
    );
    expect(reasoning.filter((r) => r !== undefined)).toHaveLength(5);
  });
});

describe('anthropic stream: thinking blocks offered once', () => {
  const signed = (index: number, text: string, signature: string) =>
    block(index, { type: 'thinking', thinking: '', signature: '' }) +
    delta(index, { type: 'thinking_delta', thinking: text }) +
    delta(index, { type: 'signature_delta', signature }) +
    stop(index);
  const withBlocks = (out: Out[]) =>
    chunksOf(out).filter((c) => (c.choices[0]?.delta as { thinking_blocks?: unknown }).thinking_blocks);

  it("several thinking blocks: all of them in one chunk before the finish (the openai SDK keeps a field's last value)", () => {
    const out = whole(
      start +
        signed(0, 'first', 's1') +
        block(1, { type: 'redacted_thinking', data: 'ENC' }) +
        stop(1) +
        signed(2, 'second', 's2') +
        block(3, { type: 'text', text: '' }) +
        delta(3, { type: 'text_delta', text: 'Hi' }) +
        stop(3) +
        end,
    );
    expect(withBlocks(out)).toHaveLength(1);
    const all = chunksOf(out);
    // The blocks, then the finish chunk.
    expect((all.at(-2)!.choices[0]!.delta as { thinking_blocks?: unknown }).thinking_blocks).toEqual([
      { type: 'thinking', thinking: 'first', signature: 's1' },
      { type: 'redacted_thinking', data: 'ENC' },
      { type: 'thinking', thinking: 'second', signature: 's2' },
    ]);
    expect(all.at(-1)!.choices[0]!.finish_reason).toBe('stop');
  });

  it('a stream without message_delta still offers its blocks before the finish it is given', () => {
    const out = whole(start + signed(0, 't', 's') + ev({ type: 'message_stop' }));
    expect(withBlocks(out)).toHaveLength(1);
    expect(chunksOf(out).at(-1)!.choices[0]!.finish_reason).toBe('stop');
  });

  it('bounds the signature held too: a hostile endless signature_delta is not kept, and no block is offered', () => {
    const piece = 's'.repeat(512 * 1024);
    let sse = start + block(0, { type: 'thinking', thinking: '' });
    sse += delta(0, { type: 'thinking_delta', thinking: 'short' });
    for (let i = 0; i < 5; i++) sse += delta(0, { type: 'signature_delta', signature: piece });
    const out = whole(sse + stop(0) + signed(1, 'later', 'ok') + end);
    expect(withBlocks(out)).toEqual([]);
  });

  it('thinking for a block that never started streams as reasoning and is never offered as a block', () => {
    const out = whole(
      start +
        delta(5, { type: 'thinking_delta', thinking: 'stray' }) +
        delta(5, { type: 'signature_delta', signature: 'x' }) +
        stop(5) +
        end,
    );
    const reasoning = chunksOf(out).flatMap(
      (c) => (c.choices[0]?.delta as { reasoning_content?: string }).reasoning_content ?? [],
    );
    expect(reasoning).toEqual(['stray']);
    expect(withBlocks(out)).toEqual([]);
  });
});

describe('anthropic stream: byte splits', () => {
  const bytesOf = (text: string) => Buffer.from(text, 'utf8');

  it.each([
    ['text', TEXT],
    ['tool', TOOL],
  ])('%s stream split at every byte offset gives the same output', (_name, text) => {
    const bytes = bytesOf(text);
    const expected = whole(text);
    for (let i = 0; i <= bytes.length; i++) {
      expect(run([bytes.subarray(0, i), bytes.subarray(i)])).toEqual(expected);
    }
  });

  it.each([
    ['text', TEXT],
    ['tool', TOOL],
  ])('%s stream fed byte by byte and at random offsets gives the same output', (_name, text) => {
    const bytes = bytesOf(text);
    const expected = whole(text, true);
    expect(
      run(
        Array.from(bytes, (_b, i) => bytes.subarray(i, i + 1)),
        true,
      ),
    ).toEqual(expected);
    const random = mulberry32(42); // seeded, so a failing split is reproducible
    for (let round = 0; round < 300; round++) {
      const cuts = Array.from({ length: 1 + Math.floor(random() * 12) }, () =>
        Math.floor(random() * bytes.length),
      ).sort((a, b) => a - b);
      const pieces: Uint8Array[] = [];
      let start = 0;
      for (const cut of [...cuts, bytes.length]) {
        pieces.push(bytes.subarray(start, cut));
        start = cut;
      }
      expect(run(pieces, true)).toEqual(expected);
    }
  });

  it('the split fixtures really cut through multi-byte characters and JSON frames', () => {
    // Guard against a fixture edit that would make the every-offset test trivially pass.
    expect(Buffer.byteLength(TEXT, 'utf8')).toBeGreaterThan(TEXT.length);
    expect(TEXT).toContain('🌍');
    expect(TOOL).toContain('🇨🇭');
  });

  it('CRLF line endings give the same output', () => {
    expect(whole(TEXT.replaceAll('\n', '\r\n'))).toEqual(whole(TEXT));
  });
});

describe('anthropic stream: include_usage', () => {
  it('off: no usage field on chunks and no usage chunk', () => {
    const chunks = chunksOf(whole(TEXT, false));
    expect(chunks.every((c) => !('usage' in c) && c.choices.length === 1)).toBe(true);
  });

  it('on: usage null on every choice chunk, then one usage chunk with empty choices before end', () => {
    const out = whole(TEXT, true);
    const chunks = chunksOf(out);
    const last = chunks.at(-1)!;
    expect(chunks.slice(0, -1).every((c) => c.usage === null && c.choices.length === 1)).toBe(true);
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({
      prompt_tokens: 135,
      completion_tokens: 15,
      total_tokens: 150,
      prompt_tokens_details: { cached_tokens: 100, cache_write_tokens: 10 },
    });
    expect(out.at(-1)).toEqual({ kind: 'end' });
    expect(out.at(-2)).toMatchObject({ kind: 'chunk', content: false });
  });

  it('all chunks share id, created, model and object', () => {
    const chunks = chunksOf(whole(TOOL, true));
    const first = chunks[0]!;
    for (const c of chunks) {
      expect([c.id, c.created, c.model, c.object]).toEqual([
        first.id,
        1_700_000_123,
        'anthropic/claude',
        'chat.completion.chunk',
      ]);
    }
  });
});

describe('anthropic stream: errors and hostile events', () => {
  it('reads an error event whose message sits at the top level (GLM-style), not under `error`', () => {
    const out = whole(
      'event: error\ndata: {"type":"error","message":"Rate limit reached for requests","code":"1302"}\n\n',
    );
    const err = out.find((o) => o.kind === 'error');
    expect(err).toMatchObject({ kind: 'error', err: { message: 'Rate limit reached for requests' } });
  });

  it('maps an overloaded error event to a 529 error, without end', () => {
    const out = whole(fixtureText('error-stream.txt'));
    expect(out.filter((o) => o.kind !== 'chunk')).toEqual([
      {
        kind: 'error',
        err: { status: 529, message: 'Overloaded', type: 'server_error', code: 'overloaded', param: null },
      },
    ]);
    expect(out.filter((o) => o.kind === 'chunk' && o.content)).toEqual([]);
  });

  it.each([
    ['api_error', 500, 'server_error', null],
    ['rate_limit_error', 429, 'rate_limit_error', 'rate_limit_exceeded'],
    ['invalid_request_error', 400, 'invalid_request_error', null],
    ['brand_new_error', 500, 'server_error', null],
  ])('maps error event type %s to status %i', (type, status, oaType, code) => {
    const out = whole(`event: error\ndata: {"type":"error","error":{"type":"${type}","message":"m"}}\n\n`);
    expect(out).toEqual([{ kind: 'error', err: { status, message: 'm', type: oaType, code, param: null } }]);
  });

  it('an error event with unparsable data is still an error, its text never relayed', () => {
    const out = whole('event: error\ndata: <html>secret stack</html>\n\n');
    expect(out).toEqual([
      {
        kind: 'error',
        err: { status: 500, message: 'upstream stream error', type: 'server_error', code: null, param: null },
      },
    ]);
  });

  it('ignores everything after the error or the end', () => {
    const after =
      'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}}\n\n';
    expect(whole(fixtureText('error-stream.txt') + after).filter((o) => o.kind !== 'chunk').length).toBe(1);
    expect(whole(TEXT + after).at(-1)).toEqual({ kind: 'end' });
  });

  it('drops non-JSON data and unknown event types', () => {
    const noise = [
      'data: [DONE]\n\n',
      'event: content_block_delta\ndata: not json at all\n\n',
      'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tru\n\n',
      'event: brand_new_event\ndata: {"type":"brand_new_event","text":"x"}\n\n',
      ': comment\n\n',
    ].join('');
    const [start, ...rest] = TEXT.split('event: content_block_start');
    const noisy = `${start}${noise}event: content_block_start${rest.join('event: content_block_start')}`;
    expect(whole(noisy)).toEqual(whole(TEXT));
  });

  it('uses the payload type when the event line is missing', () => {
    const dataOnly = TEXT.split('\n')
      .filter((l) => !l.startsWith('event:'))
      .join('\n');
    expect(whole(dataOnly)).toEqual(whole(TEXT));
  });

  it('never throws on hostile events', () => {
    const { sink, out } = recorder();
    const t = anthropicAdapter.streamTranslator(sink, ctxOf(true));
    const events: [string | undefined, string][] = [
      [
        'content_block_delta',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"before start"}}',
      ],
      ['message_start', '{"type":"message_start","message":null}'],
      [
        'message_start',
        '{"type":"message_start","message":{"id":42,"usage":{"input_tokens":"many","output_tokens":-3}}}',
      ],
      [
        'content_block_start',
        '{"type":"content_block_start","index":"0","content_block":{"type":"tool_use"}}',
      ],
      [
        'content_block_start',
        '{"type":"content_block_start","index":5,"content_block":{"type":"tool_use","id":7,"name":null}}',
      ],
      ['content_block_start', '{"type":"content_block_start","content_block":"text"}'],
      [
        'content_block_delta',
        '{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":{"a":1}}}',
      ],
      [
        'content_block_delta',
        '{"type":"content_block_delta","index":9,"delta":{"type":"input_json_delta","partial_json":"x"}}',
      ],
      ['content_block_delta', '{"type":"content_block_delta","delta":null}'],
      [
        'content_block_delta',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}',
      ],
      ['message_delta', '{"type":"message_delta","delta":"x","usage":[1]}'],
      [undefined, '{"type":["message_stop"]}'],
      ['ping', ''],
      ['error', '{"type":"error","error":"not an object"}'],
    ];
    expect(() => {
      for (const [type, data] of events) t.event(type, data);
    }).not.toThrow();
    for (const o of out) if (o.kind === 'chunk') expect(() => JSON.parse(o.json) as unknown).not.toThrow();
    expect(out.at(-1)).toMatchObject({
      kind: 'error',
      err: { status: 500, message: 'upstream stream error' },
    });
    expect(chunksOf(out)[0]!.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
  });

  it('reports start usage at message_stop when message_delta never came', () => {
    const sse =
      'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_x","usage":{"input_tokens":7,"output_tokens":2}}}\n\n' +
      'event: message_stop\ndata: {"type":"message_stop"}\n\n';
    expect(whole(sse).filter((o) => o.kind !== 'chunk')).toEqual([
      {
        kind: 'usage',
        usage: withWrites({
          prompt_tokens: 7,
          completion_tokens: 2,
          total_tokens: 9,
          prompt_tokens_details: { cached_tokens: 0 },
        }),
      },
      { kind: 'end' },
    ]);
  });

  it('takes cumulative input counts from message_delta when present', () => {
    const sse =
      'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_x","usage":{"input_tokens":7,"output_tokens":1}}}\n\n' +
      'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":9,"cache_read_input_tokens":3,"output_tokens":20}}\n\n';
    const out = whole(sse);
    expect(out.find((o) => o.kind === 'usage')).toEqual({
      kind: 'usage',
      usage: withWrites({
        prompt_tokens: 12,
        completion_tokens: 20,
        total_tokens: 32,
        prompt_tokens_details: { cached_tokens: 3 },
      }),
    });
    expect(chunksOf(out).at(-1)!.choices[0]!.finish_reason).toBe('length');
  });
});
