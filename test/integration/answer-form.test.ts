/**
 * Upstreams that answer in the other form than they were asked: one JSON answer to a `stream: true` request
 * (a server or proxy that ignores `stream`), an event stream to a non-streaming one (one that always
 * streams). The client gets the form it asked for, the answer whole, and the upstream is not counted as
 * broken; an answer that is no answer in either form still fails over.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chunkFrame, sendJson, startMock, type MockHandler } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
const hi = [{ role: 'user' as const, content: 'hi' }];

const toolAnswer: Json = {
  id: 'chatcmpl-x',
  object: 'chat.completion',
  created: 5,
  model: 'up-model',
  choices: [
    {
      index: 0,
      message: {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: 'call_w', type: 'function', function: { name: 'weather', arguments: '{"city":"Oslo"}' } },
        ],
      },
      finish_reason: 'tool_calls',
    },
  ],
  usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
};

function textAnswer(text: string): Json {
  return {
    id: 'chatcmpl-t',
    object: 'chat.completion',
    created: 5,
    model: 'up-model',
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 },
  };
}

function sse(res: ServerResponse, frames: string): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(frames);
}

/** A gateway over mocks `a` then `b` (priority), each of `kind`. */
async function gatewayOver(
  handlers: MockHandler[],
  kinds: ('openai' | 'anthropic')[] = handlers.map(() => 'openai'),
): Promise<{ url: string; openai: OpenAI; mocks: { received: unknown[] }[] }> {
  const mocks = await Promise.all(handlers.map(async (h) => track(await startMock(h))));
  const providers = mocks.map((m, i) => ({
    name: `p${i}`,
    kind: kinds[i],
    base_url: kinds[i] === 'anthropic' ? m.url : `${m.url}/v1`,
    api_key: 'sk-up',
    models: [{ name: 'up-model' }],
  }));
  const gw = track(
    await startGateway({
      providers,
      routes: { r: { strategy: 'priority', targets: providers.map((p) => `${p.name}/up-model`) } },
    }),
  );
  return { url: gw.url, mocks, openai: new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 }) };
}

describe('a JSON answer to a streaming request', () => {
  it('reaches the OpenAI SDK as a stream: text, finish reason, usage when asked, and [DONE]', async () => {
    const { openai, url } = await gatewayOver([(_req, res) => sendJson(res, 200, textAnswer('Hello there'))]);
    const stream = openai.chat.completions.stream({
      model: 'r',
      messages: hi,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]!.message.content).toBe('Hello there');
    expect(final.choices[0]!.finish_reason).toBe('stop');
    expect(chunks.at(-1)!.usage).toMatchObject({ prompt_tokens: 9, completion_tokens: 3 });

    const samples = await scrape(url);
    expect(
      value(samples, 'llm_router_tokens_total', { provider: 'p0', model: 'up-model', kind: 'completion' }),
    ).toBe(3);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'p0',
        model: 'up-model',
        outcome: 'success',
      }),
    ).toBe(1);
  });

  it('without usage, counts its completion tokens from the text (not one per chunk)', async () => {
    const answer = textAnswer('one two three four five six seven eight nine ten eleven twelve');
    delete answer.usage;
    const { url } = await gatewayOver([(_req, res) => sendJson(res, 200, answer)]);
    const res = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(res.status).toBe(200);
    const samples = await scrape(url);
    expect(
      value(samples, 'llm_router_tokens_total', { provider: 'p0', model: 'up-model', kind: 'completion' }),
    ).toBeGreaterThan(5);
  });

  it('ends with [DONE] on the wire and carries no usage chunk the client did not ask for', async () => {
    const { url } = await gatewayOver([(_req, res) => sendJson(res, 200, textAnswer('Hi'))]);
    const res = await postChat({ url }, { model: 'r', messages: hi, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/event-stream/);
    expect(res.headers['x-router-provider']).toBe('p0');
    const data = res.text
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => l.slice(6));
    expect(data.at(-1)).toBe('[DONE]');
    expect(data.some((d) => d.includes('"usage"'))).toBe(false);
  });

  it('gives the SDK its tool calls whole', async () => {
    const { openai } = await gatewayOver([(_req, res) => sendJson(res, 200, toolAnswer)]);
    const stream = openai.chat.completions.stream({
      model: 'r',
      messages: hi,
      tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object' } } }],
    });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    expect(final.choices[0]!.message.tool_calls).toEqual([
      { id: 'call_w', type: 'function', function: { name: 'weather', arguments: '{"city":"Oslo"}' } },
    ]);
  });

  it('from an Anthropic upstream is translated and streamed', async () => {
    const { openai } = await gatewayOver(
      [
        (_req, res) =>
          sendJson(res, 200, {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            model: 'claude-x',
            content: [{ type: 'text', text: 'From Claude' }],
            stop_reason: 'end_turn',
            usage: { input_tokens: 4, output_tokens: 2 },
          }),
      ],
      ['anthropic'],
    );
    const final = await openai.chat.completions.stream({ model: 'r', messages: hi }).finalChatCompletion();
    expect(final.choices[0]!.message.content).toBe('From Claude');
    expect(final.choices[0]!.finish_reason).toBe('stop');
  });

  it('that is an error object fails over to the next upstream', async () => {
    const { openai, mocks } = await gatewayOver([
      (_req, res) => sendJson(res, 200, { error: { message: 'overloaded', type: 'server_error' } }),
      (_req, res) => sse(res, `${chunkFrame('up-model', { content: 'second' }, 'stop')}data: [DONE]\n\n`),
    ]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    let text = '';
    for await (const chunk of data) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe('second');
    expect(response.headers.get('x-router-provider')).toBe('p1');
    expect(mocks[0]!.received).toHaveLength(1);
  });

  it('that is not an answer (no choices) fails over', async () => {
    const { openai } = await gatewayOver([
      (_req, res) => sendJson(res, 200, { hello: 'world' }),
      (_req, res) => sse(res, `${chunkFrame('up-model', { content: 'ok' }, 'stop')}data: [DONE]\n\n`),
    ]);
    const { response } = await openai.chat.completions
      .create({ model: 'r', messages: hi, stream: true })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('p1');
    expect(response.headers.get('x-router-trail')).toBe('p0/up-model=invalid_upstream_json');
  });
});

describe('an event stream answering a non-streaming request', () => {
  const frames =
    chunkFrame('up-model', { role: 'assistant', content: '' }) +
    chunkFrame('up-model', { content: 'Hel' }) +
    chunkFrame('up-model', { content: 'lo' }) +
    chunkFrame('up-model', {}, 'stop') +
    `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'up-model', choices: [], usage: { prompt_tokens: 6, completion_tokens: 2, total_tokens: 8 } })}\n\n` +
    'data: [DONE]\n\n';

  it('is merged into one chat.completion with its usage', async () => {
    const { openai, url } = await gatewayOver([(_req, res) => sse(res, frames)]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(response.headers.get('content-type')).toMatch(/application\/json/);
    expect(data.object).toBe('chat.completion');
    expect(data.choices[0]!.message).toMatchObject({ role: 'assistant', content: 'Hello' });
    expect(data.choices[0]!.finish_reason).toBe('stop');
    expect(data.usage).toMatchObject({ prompt_tokens: 6, completion_tokens: 2 });
    const samples = await scrape(url);
    expect(
      value(samples, 'llm_router_tokens_total', { provider: 'p0', model: 'up-model', kind: 'prompt' }),
    ).toBe(6);
  });

  it('from an Anthropic upstream is translated and merged', async () => {
    const events = [
      [
        'message_start',
        {
          type: 'message_start',
          message: { id: 'msg_2', model: 'claude-x', usage: { input_tokens: 5, output_tokens: 1 } },
        },
      ],
      [
        'content_block_start',
        { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
      ],
      [
        'content_block_delta',
        { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Bon' } },
      ],
      [
        'content_block_delta',
        { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'jour' } },
      ],
      ['content_block_stop', { type: 'content_block_stop', index: 0 }],
      [
        'message_delta',
        { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 3 } },
      ],
      ['message_stop', { type: 'message_stop' }],
    ] as const;
    const { openai } = await gatewayOver(
      [
        (_req, res) =>
          sse(res, events.map(([e, d]) => `event: ${e}\ndata: ${JSON.stringify(d)}\n\n`).join('')),
      ],
      ['anthropic'],
    );
    const answer = await openai.chat.completions.create({ model: 'r', messages: hi });
    expect(answer.choices[0]!.message.content).toBe('Bonjour');
    expect(answer.choices[0]!.finish_reason).toBe('stop');
    expect(answer.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 3 });
  });

  it('cut before its end fails over', async () => {
    const { openai } = await gatewayOver([
      (_req, res) => sse(res, chunkFrame('up-model', { content: 'half an ans' })),
      (_req, res) => sendJson(res, 200, textAnswer('whole')),
    ]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe('whole');
    expect(response.headers.get('x-router-trail')).toBe('p0/up-model=invalid_upstream_json');
  });

  it('holding an error event fails over with the error as its reason', async () => {
    const { openai } = await gatewayOver([
      (_req, res) =>
        sse(res, `data: ${JSON.stringify({ error: { message: 'boom', type: 'server_error' } })}\n\n`),
      (_req, res) => sendJson(res, 200, textAnswer('whole')),
    ]);
    const { data, response } = await openai.chat.completions
      .create({ model: 'r', messages: hi })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe('whole');
    expect(response.headers.get('x-router-trail')).toBe('p0/up-model=error_in_answer');
  });
});
