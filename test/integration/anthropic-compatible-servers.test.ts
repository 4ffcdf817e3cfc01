/**
 * Anthropic-compatible servers as they really answer (DeepSeek, Kimi, MiniMax, GLM, OpenRouter, LiteLLM,
 * llama.cpp/vLLM Messages endpoints), configured as `kind: anthropic`: small departures from Anthropic's exact
 * shapes (usage left out or partial, `data:`-only events, no message_stop, OpenAI-worded stop reasons, other
 * content types) must still give an openai SDK client a correct answer, and /metrics sane token counts
 * (README: llm_router_tokens_total is "estimated when it reports none"). Hand-written upstreams on 127.0.0.1:0.
 */
import type { ServerResponse } from 'node:http';
import type OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { anthropicSseFrame, collectChunks, startAnthropicRoute } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { sendJson, startRawUpstream } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

const MODEL = 'deepseek-chat';
const PROMPT =
  'Please summarise, in three short sentences, why the Roman Republic became an empire, naming Caesar and Augustus.';
const messages = [{ role: 'user' as const, content: PROMPT }];

function start(usage: Json | undefined, id: string | undefined = 'msg_compat_1'): Json {
  const message: Json = {
    type: 'message',
    role: 'assistant',
    model: MODEL,
    content: [],
    stop_reason: null,
    stop_sequence: null,
  };
  if (id !== undefined) message.id = id;
  if (usage !== undefined) message.usage = usage;
  return { type: 'message_start', message };
}
const textStart = (index: number, text = ''): Json => ({
  type: 'content_block_start',
  index,
  content_block: { type: 'text', text },
});
const textDelta = (index: number, text: string): Json => ({
  type: 'content_block_delta',
  index,
  delta: { type: 'text_delta', text },
});
const blockStop = (index: number): Json => ({ type: 'content_block_stop', index });
const msgDelta = (stop: string | null, usage?: Json, stopSequence: string | null = null): Json => ({
  type: 'message_delta',
  delta: { stop_reason: stop, stop_sequence: stopSequence },
  ...(usage === undefined ? {} : { usage }),
});
const STOP = { type: 'message_stop' };

/** An upstream answering every request with `body` (SSE text) under `contentType` (none when null). */
async function sseUpstream(body: string, contentType: string | null = 'text/event-stream'): Promise<string> {
  const up = await startRawUpstream(track, (_req, res: ServerResponse) => {
    res.writeHead(200, contentType === null ? {} : { 'content-type': contentType });
    res.end(body);
  });
  return up.url;
}

async function jsonUpstream(status: number, body: unknown): Promise<{ url: string; hits: () => number }> {
  return startRawUpstream(track, (_req, res) => sendJson(res, status, body));
}

const frames = (events: Json[]): string => events.map(anthropicSseFrame).join('');
/** `data:` lines only: the type lives in the JSON (proxies that drop `event:` lines). */
const dataOnly = (events: Json[]): string => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('');

async function route(url: string): Promise<{ client: OpenAI; url: string }> {
  return startAnthropicRoute(track, url, { apiKey: 'sk-ant-compat-0000', model: MODEL, timeoutMs: 20_000 });
}

async function streamAll(client: OpenAI) {
  const chunks = await collectChunks(
    await client.chat.completions.create({
      model: 'r',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  const finish = chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null);
  const usage = chunks.find((c) => c.usage != null)?.usage;
  return { chunks, text, finish, usage };
}

async function tokens(gwUrl: string): Promise<{ prompt: number; completion: number }> {
  const samples = await scrape(gwUrl);
  return {
    prompt:
      value(samples, 'llm_router_tokens_total', { provider: 'anth', model: MODEL, kind: 'prompt' }) ?? 0,
    completion:
      value(samples, 'llm_router_tokens_total', { provider: 'anth', model: MODEL, kind: 'completion' }) ?? 0,
  };
}

describe('Anthropic-compatible servers: usage as they report it', () => {
  it('a stream whose message_start has no usage and whose message_delta has only output_tokens: prompt tokens are not counted as 0', async () => {
    const up = await sseUpstream(
      frames([
        start(undefined),
        textStart(0),
        textDelta(0, 'Caesar crossed the Rubicon; Augustus became princeps.'),
        blockStop(0),
        msgDelta('end_turn', { output_tokens: 12 }),
        STOP,
      ]),
    );
    const { client, url } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Caesar crossed the Rubicon; Augustus became princeps.');
    expect(got.finish).toEqual(['stop']);
    expect(got.usage?.completion_tokens).toBe(12);
    // The upstream never said how long the prompt was: a real prompt is not 0 tokens (README: estimated).
    const t = await tokens(url);
    expect(t.completion).toBe(12);
    expect(t.prompt).toBeGreaterThan(0);
  });

  it('a stream with no usage anywhere: the client is not told 0/0/0 and /metrics estimates both kinds', async () => {
    const up = await sseUpstream(
      frames([
        start(undefined),
        textStart(0),
        textDelta(0, 'The Republic fell to civil wars. '),
        textDelta(0, 'Caesar took power; Augustus made it an empire.'),
        blockStop(0),
        msgDelta('end_turn'),
        STOP,
      ]),
    );
    const { client, url } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('The Republic fell to civil wars. Caesar took power; Augustus made it an empire.');
    expect(got.finish).toEqual(['stop']);
    // No usage, or a sane one: never "0 prompt tokens, 0 completion tokens" for a real prompt and answer.
    if (got.usage != null) {
      expect(got.usage.prompt_tokens).toBeGreaterThan(0);
      expect(got.usage.completion_tokens).toBeGreaterThan(0);
    }
    const t = await tokens(url);
    expect(t.prompt).toBeGreaterThan(0);
    expect(t.completion).toBeGreaterThan(0);
  });

  it('input_tokens only in message_delta (message_start reports only output_tokens): counted', async () => {
    const up = await sseUpstream(
      frames([
        start({ output_tokens: 0 }),
        textStart(0),
        textDelta(0, 'Ok.'),
        blockStop(0),
        msgDelta('end_turn', { input_tokens: 31, output_tokens: 2 }),
        STOP,
      ]),
    );
    const { client, url } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Ok.');
    expect(got.usage).toMatchObject({ prompt_tokens: 31, completion_tokens: 2, total_tokens: 33 });
    expect(await tokens(url)).toEqual({ prompt: 31, completion: 2 });
  });

  it('a JSON answer whose usage has nulls (input_tokens: null): prompt tokens are not counted as 0', async () => {
    const up = await jsonUpstream(200, {
      id: 'msg_nulls',
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [{ type: 'text', text: 'Augustus.' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
      usage: {
        input_tokens: null,
        output_tokens: 4,
        cache_creation_input_tokens: null,
        cache_read_input_tokens: null,
      },
    });
    const { client, url } = await route(up.url);
    const done = await client.chat.completions.create({ model: 'r', messages });
    expect(done.choices[0]?.message.content).toBe('Augustus.');
    expect(done.choices[0]?.finish_reason).toBe('stop');
    expect(done.usage?.completion_tokens).toBe(4);
    // The client's usage says what the server said (no prompt count: 0); the metrics estimate it.
    const t = await tokens(url);
    expect(t.completion).toBe(4);
    expect(t.prompt).toBeGreaterThan(0);
  });

  it('a JSON answer without usage: answered, and /metrics estimates both kinds', async () => {
    const up = await jsonUpstream(200, {
      id: 'msg_nousage',
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [{ type: 'text', text: 'Caesar and Augustus ended the Republic.' }],
      stop_reason: 'end_turn',
      stop_sequence: null,
    });
    const { client, url } = await route(up.url);
    const done = await client.chat.completions.create({ model: 'r', messages });
    expect(done.choices[0]?.message.content).toBe('Caesar and Augustus ended the Republic.');
    const t = await tokens(url);
    expect(t.prompt).toBeGreaterThan(0);
    expect(t.completion).toBeGreaterThan(0);
  });
});

describe('Anthropic-compatible servers: event streams as they frame them', () => {
  it('data-only events, a text block opened with text, no content_block_stop, no message_stop, charset in content-type', async () => {
    const up = await sseUpstream(
      dataOnly([
        start({ input_tokens: 20, output_tokens: 0 }),
        { type: 'ping', data: { ts: 1 } },
        textStart(0, 'Rome '),
        { type: 'some_vendor_event', payload: { x: 1 } },
        textDelta(0, 'became an empire.'),
        msgDelta('end_turn', { output_tokens: 5 }),
      ]),
      'text/event-stream; charset=utf-8',
    );
    const { client, url } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Rome became an empire.');
    expect(got.finish).toEqual(['stop']);
    expect(got.usage).toMatchObject({ prompt_tokens: 20, completion_tokens: 5 });
    expect(await tokens(url)).toEqual({ prompt: 20, completion: 5 });
  });

  it.each([
    ['application/json', 'application/json'],
    ['no content-type', null],
  ])('an SSE answer sent with %s is still read as a stream', async (_n, ct) => {
    const up = await sseUpstream(
      frames([
        start({ input_tokens: 9, output_tokens: 1 }),
        textStart(0),
        textDelta(0, 'Yes.'),
        blockStop(0),
        msgDelta('end_turn', { output_tokens: 2 }),
        STOP,
      ]),
      ct,
    );
    const { client } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Yes.');
    expect(got.finish).toEqual(['stop']);
  });

  it('stop_reason "length" (OpenAI wording) in a stream is finish_reason length, not stop', async () => {
    const up = await sseUpstream(
      frames([
        start({ input_tokens: 9, output_tokens: 1 }),
        textStart(0),
        textDelta(0, 'Caesar crossed the'),
        blockStop(0),
        msgDelta('length', { output_tokens: 4 }),
        STOP,
      ]),
    );
    const { client } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Caesar crossed the');
    expect(got.finish).toEqual(['length']);
  });

  it('stop_reason null and a stop_sequence value: the answer is relayed with finish stop, no failover', async () => {
    const up = await sseUpstream(
      frames([
        start({ input_tokens: 9, output_tokens: 1 }),
        textStart(0),
        textDelta(0, 'Done'),
        blockStop(0),
        msgDelta(null, { output_tokens: 2 }, '###'),
        STOP,
      ]),
    );
    const { client } = await route(up);
    const got = await streamAll(client);
    expect(got.text).toBe('Done');
    expect(got.finish).toEqual(['stop']);
  });
});

describe('Anthropic-compatible servers: JSON answers as they shape them', () => {
  it('no id, model or type, role "model", stop_reason "length": answered with finish_reason length', async () => {
    const up = await jsonUpstream(200, {
      role: 'model',
      content: [{ type: 'text', text: 'The Republic' }],
      stop_reason: 'length',
      usage: { input_tokens: 20, output_tokens: 3 },
    });
    const { client } = await route(up.url);
    const done = await client.chat.completions.create({ model: 'r', messages });
    expect(done.choices[0]?.message.content).toBe('The Republic');
    expect(done.choices[0]?.message.role).toBe('assistant');
    expect(done.id).toMatch(/^chatcmpl-/);
    expect(done.choices[0]?.finish_reason).toBe('length');
  });

  it('a tool call with stop_reason "tool_calls" (OpenAI wording) ends with finish_reason tool_calls', async () => {
    const up = await jsonUpstream(200, {
      id: 'msg_tool',
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [{ type: 'tool_use', id: 'toolu_1', name: 'lookup', input: { q: 'Augustus' } }],
      stop_reason: 'tool_calls',
      usage: { input_tokens: 30, output_tokens: 9 },
    });
    const { client } = await route(up.url);
    const done = await client.chat.completions.create({
      model: 'r',
      messages,
      tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }],
    });
    expect(done.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      id: 'toolu_1',
      function: { name: 'lookup', arguments: '{"q":"Augustus"}' },
    });
    expect(done.choices[0]?.finish_reason).toBe('tool_calls');
  });

  it('an empty content array with end_turn is an empty answer, relayed once (no failover, no 502)', async () => {
    const up = await jsonUpstream(200, {
      id: 'msg_empty',
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [],
      stop_reason: 'end_turn',
      usage: { input_tokens: 20, output_tokens: 0 },
    });
    const { client } = await route(up.url);
    const done = await client.chat.completions.create({ model: 'r', messages });
    expect(done.choices[0]?.message.content).toBe('');
    expect(done.choices[0]?.finish_reason).toBe('stop');
    expect(up.hits()).toBe(1);
  });

  it('an OpenAI-shaped 400 error body from an Anthropic-kind server is relayed as a 400 with its message', async () => {
    const up = await jsonUpstream(400, {
      error: { message: 'max_tokens must be <= 8192', type: 'invalid_request_error', code: 'invalid_value' },
    });
    const { client } = await route(up.url);
    const err = await client.chat.completions.create({ model: 'r', messages }).then(
      () => undefined,
      (e: unknown) => e as { status?: number; message?: string },
    );
    expect(err?.status).toBe(400);
    expect(String(err?.message)).toContain('max_tokens must be <= 8192');
  });
});
