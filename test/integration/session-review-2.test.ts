/**
 * Claude answers asked for as JSON (`response_format` json_object), translated to OpenAI's shape: only the
 * object reaches the client, without Claude's fence or preface, whether it is pretty-printed, empty, split
 * where a brace ends a piece, or comes after a tool call's lead-in; text that holds no object (a refusal)
 * comes whole, in the finish chunk, with its finish_reason. Claude cache breakpoints and cache usage. CORS
 * across reloads: the origins a reload gives apply at once, and the log says "not applied" only of what is not.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { parseConfigText } from '../../src/config/load.js';
import { describe, expect, it } from 'vitest';
import { anthropicMessage, anthropicSseFrame } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;
const USAGE: Json = { input_tokens: 12, output_tokens: 9 };

/** A Claude SSE stream: each block's text given as the listed pieces (a tool_use block with its input JSON). */
function claudeStream(blocks: Json[], stopReason: string): string {
  const events: Json[] = [
    {
      type: 'message_start',
      message: { ...anthropicMessage([], '', { ...USAGE, output_tokens: 1 }), stop_reason: null },
    },
  ];
  blocks.forEach((b, index) => {
    if (b.type === 'text') {
      events.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      for (const text of b.pieces as string[])
        events.push({ type: 'content_block_delta', index, delta: { type: 'text_delta', text } });
    } else {
      events.push({
        type: 'content_block_start',
        index,
        content_block: { type: 'tool_use', id: b.id, name: b.name, input: {} },
      });
      events.push({
        type: 'content_block_delta',
        index,
        delta: { type: 'input_json_delta', partial_json: JSON.stringify(b.input) },
      });
    }
    events.push({ type: 'content_block_stop', index });
  });
  events.push({
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: null },
    usage: { output_tokens: 9 },
  });
  events.push({ type: 'message_stop' });
  return events.map(anthropicSseFrame).join('');
}

async function claudeGateway(
  answer: (stream: boolean, res: ServerResponse) => void,
  seen: Json[] = [],
): Promise<OpenAI> {
  const mock = track(
    await startMock((r, res) => {
      seen.push(r.body as Json);
      answer(r.body.stream === true, res);
    }),
  );
  const gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant',
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, timeout: 5000 });
}

function sse(res: ServerResponse, body: string): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(body);
}

const TOOLS: OpenAI.Chat.Completions.ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: {} } } },
];

async function streamed(client: OpenAI, withTools = false) {
  const stream = await client.chat.completions.create({
    model: 'r',
    stream: true,
    messages: [{ role: 'user', content: 'weather in Paris as JSON' }],
    response_format: { type: 'json_object' },
    ...(withTools ? { tools: TOOLS } : {}),
  });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  for await (const c of stream) chunks.push(c);
  const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  const finish = chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null);
  return { chunks, content, finish };
}

describe('Claude JSON answers: where the object opens', () => {
  it('a pretty-printed object whose opening brace ends a piece, behind a preface with a brace of its own', async () => {
    const client = await claudeGateway((_s, res) =>
      sse(
        res,
        claudeStream(
          [
            {
              type: 'text',
              pieces: [
                'The fields are {city, celsius}. Here:\n```json\n{',
                '\n  "city": "Par',
                'is",\n  "celsius": 21\n}\n```',
              ],
            },
          ],
          'end_turn',
        ),
      ),
    );
    const { content, finish } = await streamed(client);
    expect(JSON.parse(content)).toEqual({ city: 'Paris', celsius: 21 });
    expect(content.startsWith('{')).toBe(true);
    expect(finish).toEqual(['stop']);
  });

  it('an empty object, `{}` or `{ }`, is the answer (streamed and not)', async () => {
    const client = await claudeGateway((stream, res) =>
      stream
        ? sse(res, claudeStream([{ type: 'text', pieces: ['```json\n{', ' }\n```'] }], 'end_turn'))
        : sendJson(
            res,
            200,
            anthropicMessage([{ type: 'text', text: 'Nothing found:\n{}' }], 'end_turn', USAGE),
          ),
    );
    expect((await streamed(client)).content).toBe('{ }');
    const done = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'x' }],
      response_format: { type: 'json_object' },
    });
    expect(done.choices[0]?.message.content).toBe('{}');
  });

  it('a refusal with no object comes whole in the finish chunk, content_filter, streamed and not', async () => {
    const words = "I can't help with that request.";
    const client = await claudeGateway((stream, res) =>
      stream
        ? sse(
            res,
            claudeStream([{ type: 'text', pieces: ["I can't help ", 'with that request.'] }], 'refusal'),
          )
        : sendJson(res, 200, anthropicMessage([{ type: 'text', text: words }], 'refusal', USAGE)),
    );
    const { chunks, content, finish } = await streamed(client);
    expect(content).toBe(words);
    expect(finish).toEqual(['content_filter']);
    const last = chunks.find((c) => c.choices[0]?.finish_reason != null);
    expect(last?.choices[0]?.delta.content).toBe(words);
    const done = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'x' }],
      response_format: { type: 'json_object' },
    });
    expect(done.choices[0]?.finish_reason).toBe('content_filter');
    expect(done.choices[0]?.message.content).toBe(words);
  });

  it('after a tool call whose lead-in was flushed, the next text block is scanned from its own start', async () => {
    // The lead-in (40 characters) is relayed before the call; the answer after it is a whole object whose
    // nested object opens past the lead-in's length: the whole object is the answer, not the nested one.
    const leadIn = 'Let me look up the weather for you now. ';
    const object = '{"summary": "sunny and warm today", "detail": {"celsius": 21}}';
    const client = await claudeGateway((_s, res) =>
      sse(
        res,
        claudeStream(
          [
            { type: 'text', pieces: [leadIn] },
            { type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: {} },
            { type: 'text', pieces: [object] },
          ],
          'tool_use',
        ),
      ),
    );
    const { content, chunks } = await streamed(client, true);
    expect(chunks.some((c) => c.choices[0]?.delta.tool_calls?.[0]?.function?.name === 'get_weather')).toBe(
      true,
    );
    expect(content).toBe(leadIn + object);
  });

  it('after a tool call, a preface before the object is still left out', async () => {
    const leadIn = 'Let me look up the weather for you now. ';
    const client = await claudeGateway((_s, res) =>
      sse(
        res,
        claudeStream(
          [
            { type: 'text', pieces: [leadIn] },
            { type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: {} },
            { type: 'text', pieces: ['Here:\n{"celsius": 21}'] },
          ],
          'tool_use',
        ),
      ),
    );
    const { content } = await streamed(client, true);
    expect(content).toBe(`${leadIn}{"celsius": 21}`);
  });
});

const PNG =
  'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

describe('Claude prompt caching', () => {
  it('a breakpoint on an image part and on a tool result part reaches Claude on that block', async () => {
    const seen: Json[] = [];
    const client = await claudeGateway(
      (_s, res) => sendJson(res, 200, anthropicMessage([{ type: 'text', text: 'ok' }], 'end_turn', USAGE)),
      seen,
    );
    await client.chat.completions.create({
      model: 'r',
      tools: TOOLS,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'what is in this picture, and the weather?' },
            { type: 'image_url', image_url: { url: PNG }, prompt_cache_breakpoint: {} } as never,
          ],
        },
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
            { type: 'text', text: 'sunny, 21 C', cache_control: { type: 'ephemeral', ttl: '1h' } } as never,
          ],
        },
      ],
    });
    const messages = seen[0]?.messages as { role: string; content: Json[] }[];
    const image = messages[0]?.content.find((b) => b.type === 'image');
    expect(image?.cache_control).toEqual({ type: 'ephemeral' });
    const result = messages[2]?.content.find((b) => b.type === 'tool_result') as
      { content: Json[] } | undefined;
    expect(result?.content[0]).toMatchObject({
      type: 'text',
      text: 'sunny, 21 C',
      cache_control: { type: 'ephemeral', ttl: '1h' },
    });
  });

  it('cache writes and reads are in prompt_tokens_details, streamed (include_usage) and not', async () => {
    const usage = {
      input_tokens: 10,
      cache_creation_input_tokens: 100,
      cache_read_input_tokens: 50,
      output_tokens: 9,
    };
    const client = await claudeGateway((stream, res) =>
      stream
        ? sse(
            res,
            [
              {
                type: 'message_start',
                message: { ...anthropicMessage([], '', { ...usage, output_tokens: 1 }), stop_reason: null },
              },
              { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
              { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'hi' } },
              { type: 'content_block_stop', index: 0 },
              {
                type: 'message_delta',
                delta: { stop_reason: 'end_turn', stop_sequence: null },
                usage: { output_tokens: 9 },
              },
              { type: 'message_stop' },
            ]
              .map(anthropicSseFrame)
              .join(''),
          )
        : sendJson(res, 200, anthropicMessage([{ type: 'text', text: 'hi' }], 'end_turn', usage)),
    );
    const want = {
      prompt_tokens: 160,
      completion_tokens: 9,
      total_tokens: 169,
      prompt_tokens_details: { cached_tokens: 50, cache_write_tokens: 100 },
    };
    const done = await client.chat.completions.create({
      model: 'r',
      messages: [{ role: 'user', content: 'x' }],
    });
    expect(done.usage).toMatchObject(want);
    const stream = await client.chat.completions.create({
      model: 'r',
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'x' }],
    });
    const usages: unknown[] = [];
    for await (const c of stream) if (c.usage) usages.push(c.usage);
    expect(usages).toHaveLength(1);
    expect(usages[0]).toMatchObject(want);
  });
});

describe('CORS across reloads', () => {
  function config(cors: Json | undefined): string {
    return JSON.stringify({
      server: cors === undefined ? {} : { cors },
      providers: [{ name: 'p', base_url: 'http://127.0.0.1:9', api_key: 'sk', models: [{ name: 'm' }] }],
      routes: { r: { strategy: 'priority', targets: ['p/m'] } },
    });
  }
  async function allowOrigin(url: string, origin: string): Promise<string | null> {
    const res = await fetch(`${url}/v1/models`, { headers: { origin } });
    await res.arrayBuffer();
    return res.headers.get('access-control-allow-origin');
  }
  const stale = (logs: Record<string, unknown>[]): unknown[] =>
    logs.filter((l) => Array.isArray(l.settings)).flatMap((l) => l.settings as unknown[]);

  it('removed by a reload, the start origins stay; given back by a later reload, its origins apply and no "restart" is logged', async () => {
    const A = 'https://a.example.com';
    const B = 'https://b.example.com';
    const gw = track(await startGateway(config({ origins: [A], max_age_s: 600 })));
    expect(await allowOrigin(gw.url, A)).toBe(A);

    gw.gateway.reload(parseConfigText(config(undefined), {}));
    expect(await allowOrigin(gw.url, A)).toBe(A);
    expect(stale(gw.logs)).toContain('server.cors');

    const before = gw.logs.length;
    gw.gateway.reload(parseConfigText(config({ origins: [B], max_age_s: 600 }), {}));
    expect(await allowOrigin(gw.url, B)).toBe(B);
    expect(await allowOrigin(gw.url, A)).toBeNull();
    // CORS is on, with the max-age it started with: nothing in this config waits for a restart.
    expect(stale(gw.logs.slice(before))).toEqual([]);
  });
});
