import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startSimulator, type SimOptions, type Simulator } from '../helpers/simulator.js';
import { get, post, sseEvents } from '../helpers/sim-wire.js';

const track = closeAfterEach();
async function sim(opts: Partial<SimOptions> = {}): Promise<Simulator> {
  return track(await startSimulator(opts));
}

const chat: { model: string; messages: OpenAI.ChatCompletionMessageParam[] } = {
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'hello world!' }],
};
const weatherTool = {
  type: 'function',
  function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } },
};

function client(s: Simulator, apiKey = 'sk-test'): OpenAI {
  return new OpenAI({ apiKey, baseURL: `${s.url}/v1`, maxRetries: 0 });
}

type Chunk = { choices: { delta: Record<string, unknown>; finish_reason: string | null }[]; usage?: unknown };

function chunksOf(text: string): { chunks: Chunk[]; done: boolean } {
  const events = sseEvents(text);
  const done = events.at(-1)?.data === '[DONE]';
  return { chunks: events.filter((e) => e.data !== '[DONE]').map((e) => JSON.parse(e.data) as Chunk), done };
}

describe('simulator: OpenAI chat completions', () => {
  it('answers a chat.completion through the openai SDK and records the request', async () => {
    const s = await sim({ name: 'alpha' });
    const res = await client(s).chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hello world!' }],
    });
    expect(res.id).toMatch(/^chatcmpl-/);
    expect(res.object).toBe('chat.completion');
    expect(res.model).toBe('gpt-4o-mini');
    expect(res.choices[0]?.message).toEqual({
      role: 'assistant',
      content: 'Hello from alpha here: this is a simulated',
      refusal: null,
    });
    expect(res.choices[0]?.finish_reason).toBe('stop');
    expect(res.usage).toEqual({ prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });
    expect(s.requests).toHaveLength(1);
    expect(s.requests[0]).toMatchObject({
      method: 'POST',
      path: '/v1/chat/completions',
      body: { model: 'gpt-4o-mini' },
    });
    expect(s.requests[0]?.headers.authorization).toBe('Bearer sk-test');
  });

  it('streams through the openai SDK with the usage chunk when include_usage is set', async () => {
    const s = await sim({ reply: 'one two three', completionTokens: 3 });
    const stream = await client(s).chat.completions.create({
      ...chat,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: unknown;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe('one two three');
    expect(usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
  });

  it('frames the stream exactly like the real API', async () => {
    const s = await sim({ completionTokens: 3 });
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    expect(res.text.startsWith('data: {')).toBe(true);
    expect(res.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const { chunks, done } = chunksOf(res.text);
    expect(done).toBe(true);
    expect(chunks.map((c) => c.choices[0]?.delta)).toEqual([
      { role: 'assistant', content: '' },
      { content: 'Hello ' },
      { content: 'from ' },
      { content: 'sim' },
      {},
    ]);
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
    expect(chunks.every((c) => !('usage' in c))).toBe(true);

    const withUsage = chunksOf(
      (
        await post(`${s.url}/v1/chat/completions`, {
          ...chat,
          stream: true,
          stream_options: { include_usage: true },
        })
      ).text,
    );
    const last = withUsage.chunks.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
    expect(withUsage.chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
  });

  it('streams a tool call like the real API, then answers the tool result with text', async () => {
    const s = await sim({ toolCall: true });
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, tools: [weatherTool], stream: true });
    const { chunks, done } = chunksOf(res.text);
    expect(done).toBe(true);
    const first = chunks[0]?.choices[0]?.delta;
    expect(first).toMatchObject({
      role: 'assistant',
      tool_calls: [{ index: 0, type: 'function', function: { name: 'get_weather', arguments: '' } }],
    });
    expect((first?.tool_calls as { id: string }[])[0]?.id).toMatch(/^call_/);
    const fragments = chunks
      .slice(1, -1)
      .map(
        (c) =>
          (c.choices[0]?.delta.tool_calls as { function: { arguments: string } }[])[0]?.function.arguments,
      );
    expect(fragments.length).toBeGreaterThan(1);
    expect(JSON.parse(fragments.join(''))).toEqual({ city: 'Paris' });
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('tool_calls');

    const after = await client(s).chat.completions.create({
      model: 'gpt-4o-mini',
      tools: [weatherTool] as OpenAI.ChatCompletionTool[],
      messages: [
        { role: 'user', content: 'weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
      ],
    });
    expect(after.choices[0]?.finish_reason).toBe('stop');
    expect(after.choices[0]?.message.content).toContain('Hello');
  });

  it('answers a non-stream tool call with tool_calls and truncates to max_tokens', async () => {
    const s = await sim({ toolCall: true });
    const res = await client(s).chat.completions.create({
      ...chat,
      tools: [weatherTool] as OpenAI.ChatCompletionTool[],
    });
    expect(res.choices[0]?.finish_reason).toBe('tool_calls');
    const call = res.choices[0]?.message.tool_calls?.[0];
    expect(call?.type === 'function' && call.function).toEqual({
      name: 'get_weather',
      arguments: '{"city":"Paris"}',
    });

    const short = await client(s).chat.completions.create({ ...chat, max_tokens: 2 });
    expect(short.choices[0]?.message.content).toBe('Hello from ');
    expect(short.choices[0]?.finish_reason).toBe('length');
  });

  it('rejects malformed requests with OpenAI-shaped 400s', async () => {
    const s = await sim();
    const url = `${s.url}/v1/chat/completions`;
    const noMessages = await post(url, { model: 'm' });
    expect(noMessages.status).toBe(400);
    expect(JSON.parse(noMessages.text)).toEqual({
      error: {
        message: "Missing required parameter: 'messages'.",
        type: 'invalid_request_error',
        param: 'messages',
        code: 'missing_required_parameter',
      },
    });
    expect(JSON.parse((await post(url, { model: 'm', messages: [] })).text).error.code).toBe('empty_array');
    expect(
      JSON.parse((await post(url, { messages: [{ role: 'user', content: 'x' }] })).text).error.param,
    ).toBe('model');
    expect((await post(url, '{not json')).status).toBe(400);
    expect(
      JSON.parse((await post(url, { model: 'm', messages: [{ role: 'robot', content: 'x' }] })).text).error
        .param,
    ).toBe('messages[0].role');
    expect(s.requests[3]?.body).toBe('{not json');
  });
});

describe('simulator: OpenAI faults', () => {
  it('delays the response headers by latencyMs and paces chunks by chunkDelayMs', async () => {
    const s = await sim({ latencyMs: 120 });
    const t0 = performance.now();
    await request(`${s.url}/v1/models`).then((r) => r.body.dump());
    expect(performance.now() - t0).toBeGreaterThanOrEqual(110);

    s.set({ latencyMs: 0, chunkDelayMs: 40, completionTokens: 4 });
    const t1 = performance.now();
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    expect(performance.now() - t1).toBeGreaterThanOrEqual(110); // 3 gaps of 40 ms
    expect(chunksOf(res.text).done).toBe(true);
  });

  it('forces statuses with dialect-correct bodies and Retry-After', async () => {
    const s = await sim({ status: 429, retryAfterS: 7 });
    const limited = await post(`${s.url}/v1/chat/completions`, chat);
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('7');
    expect(JSON.parse(limited.text).error).toMatchObject({ type: 'requests', code: 'rate_limit_exceeded' });

    s.set({ status: 503 });
    const down = await post(`${s.url}/v1/chat/completions`, chat);
    expect(down.status).toBe(503);
    expect(down.headers['retry-after']).toBe('7');
    expect(JSON.parse(down.text).error.type).toBe('server_error');

    s.set({ status: undefined, retryAfterS: undefined, failRate: 1, errorMessage: 'boom' });
    const failed = await post(`${s.url}/v1/chat/completions`, chat);
    expect(failed.status).toBe(500);
    expect(failed.headers['retry-after']).toBeUndefined();
    expect(JSON.parse(failed.text)).toEqual({
      error: { message: 'boom', type: 'server_error', param: null, code: null },
    });

    s.set({ failRate: 0, status: 404 });
    expect(JSON.parse((await post(`${s.url}/v1/chat/completions`, chat)).text).error.code).toBe(
      'model_not_found',
    );
  });

  it('requires the API key when set, and echoes it in errors only when asked', async () => {
    const s = await sim({ apiKey: 'sk-right' });
    await expect(client(s, 'sk-wrong').chat.completions.create(chat)).rejects.toMatchObject({
      status: 401,
      code: 'invalid_api_key',
    });
    const ok = await client(s, 'sk-right').chat.completions.create(chat);
    expect(ok.choices).toHaveLength(1);
    expect(
      (await post(`${s.url}/v1/chat/completions`, chat, { authorization: 'bearer sk-right' })).status,
    ).toBe(200);

    s.set({ status: 500, echoAuthInError: true });
    const leaked = await post(`${s.url}/v1/chat/completions`, chat, { authorization: 'Bearer sk-right' });
    expect(leaked.text).toContain('sk-right');
  });

  it('hang: never answers; a client that gives up is recorded as aborted', async () => {
    const s = await sim({ hang: true });
    const pending = post(`${s.url}/v1/chat/completions`, chat, {}, AbortSignal.timeout(100));
    await s.waitForRequests(1);
    expect(s.inFlight()).toBe(1);
    await expect(pending).rejects.toThrow();
    const aborted = await s.waitForAbort();
    expect(aborted).toBe(s.requests[0]);
    expect(aborted).toMatchObject({ aborted: true, finished: false });
    expect(s.inFlight()).toBe(0);
  });

  it('hangAfterHeaders: sends 200 and the role chunk, then nothing', async () => {
    const s = await sim({ hangAfterHeaders: true });
    const controller = new AbortController();
    const res = await request(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ ...chat, stream: true }),
      signal: controller.signal,
    });
    expect(res.statusCode).toBe(200);
    const first = await new Promise<string>((resolve) =>
      res.body.once('data', (c: Buffer) => resolve(c.toString())),
    );
    expect(first).toContain('"role":"assistant"');
    controller.abort();
    await res.body.dump().catch(() => undefined);
    expect((await s.waitForAbort()).aborted).toBe(true);
  });

  it('dropAfterChunks: the client sees a truncated stream with no [DONE]', async () => {
    const s = await sim({ dropAfterChunks: 2 });
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    expect(res.error).toBeDefined();
    const { chunks, done } = chunksOf(res.text);
    expect(done).toBe(false);
    expect(chunks.map((c) => c.choices[0]?.delta)).toEqual([
      { role: 'assistant', content: '' },
      { content: 'Hello ' },
      { content: 'from ' },
    ]);
    expect(s.requests[0]).toMatchObject({ aborted: false, finished: false });

    s.set({ dropAfterChunks: 0 });
    const atOnce = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    expect(chunksOf(atOnce.text).chunks).toHaveLength(1);
    expect(atOnce.error).toBeDefined();
  });

  it('errorEventAfterChunks: an in-stream error event ends the response', async () => {
    const s = await sim({ errorEventAfterChunks: 1 });
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    expect(res.error).toBeUndefined();
    const events = sseEvents(res.text);
    expect(events).toHaveLength(3);
    expect(JSON.parse(events[2]!.data)).toEqual({
      error: {
        message: 'The server had an error while processing your request. Sorry about that!',
        type: 'server_error',
        param: null,
        code: null,
      },
    });
    expect(s.requests[0]?.finished).toBe(true);
  });

  it('script(): each request consumes one step, then back to normal', async () => {
    const s = await sim();
    s.script([{ status: 500 }, { status: 429, retryAfterS: 1 }]);
    const url = `${s.url}/v1/chat/completions`;
    expect((await post(url, chat)).status).toBe(500);
    const limited = await post(url, chat);
    expect([limited.status, limited.headers['retry-after']]).toEqual([429, '1']);
    expect((await post(url, chat)).status).toBe(200);
    s.reset();
    expect(s.requests).toHaveLength(0);
  });

  it('relays a large stream intact through back-pressure', async () => {
    const s = await sim({ reply: 'x'.repeat(4 * 1024 * 1024), completionTokens: 512 });
    const res = await post(`${s.url}/v1/chat/completions`, { ...chat, stream: true });
    const { chunks, done } = chunksOf(res.text);
    expect(done).toBe(true);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('').length).toBe(4 * 1024 * 1024);
  });

  it('close() destroys hanging sockets', async () => {
    const s = await startSimulator({ hang: true });
    const pending = post(`${s.url}/v1/chat/completions`, chat);
    await s.waitForRequests(1);
    await s.close();
    await expect(pending).rejects.toThrow();
  });
});

describe('simulator: OpenAI embeddings, models, passthrough, fast mode', () => {
  it('returns deterministic vectors, decoded from base64 by the openai SDK', async () => {
    const s = await sim();
    const viaSdk = await client(s).embeddings.create({
      model: 'text-embedding-3-small',
      input: ['hello', 'world'],
    });
    expect((s.requests[0]?.body as { encoding_format: string }).encoding_format).toBe('base64');
    expect(viaSdk.data).toHaveLength(2);
    expect(viaSdk.data[0]?.embedding).toHaveLength(8);
    expect(viaSdk.usage).toEqual({ prompt_tokens: 4, total_tokens: 4 });

    const floats = await post(`${s.url}/v1/embeddings`, {
      model: 'text-embedding-3-small',
      input: ['hello', 'world'],
      encoding_format: 'float',
    });
    const parsed = JSON.parse(floats.text) as { data: { embedding: number[] }[] };
    expect(parsed.data.map((d) => d.embedding)).toEqual(viaSdk.data.map((d) => d.embedding));
    const norm = Math.hypot(...(parsed.data[0]?.embedding ?? []));
    expect(norm).toBeCloseTo(1, 5);
    expect(parsed.data[0]?.embedding).not.toEqual(parsed.data[1]?.embedding);

    const tokens = await client(s).embeddings.create({ model: 'e', input: [1, 2, 3], dimensions: 4 });
    expect(tokens.data[0]?.embedding).toHaveLength(4);
    expect(tokens.usage.prompt_tokens).toBe(3);
    expect((await post(`${s.url}/v1/embeddings`, { model: 'e' })).status).toBe(400);
  });

  it('lists models and answers any other path with a recorded 200', async () => {
    const s = await sim();
    const models = await client(s).models.list();
    expect(models.data.map((m) => m.id)).toContain('gpt-4o-mini');
    const other = await get(`${s.url}/v1/files?purpose=x`, { authorization: 'Bearer sk-client' });
    expect(other.status).toBe(200);
    expect(JSON.parse(other.text)).toEqual({ object: 'list', data: [], path: '/v1/files' });
    const audio = await post(`${s.url}/v1/audio/speech`, { input: 'hi' });
    expect(audio.status).toBe(200);
    await s.waitForRequests(3);
    expect(s.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      'GET /v1/models',
      'GET /v1/files',
      'POST /v1/audio/speech',
    ]);
  });

  it('fast mode: reuses pre-built bodies, records nothing', async () => {
    const s = await sim({ fast: true, latencyMs: 500 });
    const a = await post(`${s.url}/v1/chat/completions`, chat);
    const b = await post(`${s.url}/v1/chat/completions`, chat);
    expect(a.status).toBe(200);
    expect(a.text).toBe(b.text);
    const stream = await post(`${s.url}/v1/chat/completions`, {
      ...chat,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(chunksOf(stream.text).done).toBe(true);
    expect(chunksOf(stream.text).chunks.at(-1)?.usage).toBeTruthy();
    const other = JSON.parse(
      (await post(`${s.url}/v1/chat/completions`, { ...chat, model: 'other' })).text,
    ) as { model: string };
    expect(other.model).toBe('other');
    expect(s.requests).toHaveLength(0);
  });

  it('keeps idle connections as a provider does, a minute or more, and tells clients so', async () => {
    const s = await sim();
    const res = await request(`${s.url}/v1/models`);
    await res.body.dump();
    // undici and Node's agent read the hint: with Node's default (5 s) every pause cost a reconnect.
    expect(res.headers['keep-alive']).toBe('timeout=65');
  });
});
