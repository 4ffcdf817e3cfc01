import { createOpenAI } from '@ai-sdk/openai';
import { HumanMessage, ToolMessage, type AIMessageChunk } from '@langchain/core/messages';
import { ChatOpenAI, OpenAIEmbeddings } from '@langchain/openai';
import {
  APICallError,
  embed,
  embedMany,
  generateText,
  jsonSchema,
  Output,
  stepCountIs,
  streamText,
  tool,
} from 'ai';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { startSimulator, type SimOptions, type Simulator } from '../helpers/simulator.js';

// Independent users drive the gateway through the Vercel AI SDK and LangChain, not only the OpenAI SDK: each
// client parses answers, streams and errors its own way, so each gets the same checks here.

const track = closeAfterEach();

const CLIENT_KEY = 'client-key-compat';
// What the simulator "alpha" says by default (8 chunks, its name third).
const ALPHA_TEXT = 'Hello from alpha here: this is a simulated';
const BETA_TEXT = 'Hello from beta here: this is a simulated';

// Safety net: these clients must only ever talk to our loopback servers (LangChain, for one, can fetch
// tokenizer files from the internet to count tokens). Any other address fails the test instead of leaving the machine.
const offLoopback: string[] = [];
let loopbackFetches = 0;
beforeAll(() => {
  const realFetch = globalThis.fetch;
  vi.stubGlobal('fetch', (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    if (url.hostname !== '127.0.0.1' && url.hostname !== 'localhost' && url.hostname !== '[::1]') {
      offLoopback.push(url.href);
      return Promise.reject(new Error(`client-compat: refused off-loopback fetch to ${url.href}`));
    }
    loopbackFetches++;
    return realFetch(input, init);
  });
});
afterAll(() => vi.unstubAllGlobals());
afterEach(() => {
  expect(offLoopback.splice(0)).toEqual([]);
  // ... and the guard really sits in the clients' path.
  expect(loopbackFetches).toBeGreaterThan(0);
  loopbackFetches = 0;
});

interface Setup {
  gw: TestGateway;
  alpha: Simulator;
  beta: Simulator;
  baseURL: string;
}

const EMB = { name: 'emb', capabilities: ['embeddings'] };

/** Two simulated providers behind one `fast` route: alpha first (priority), beta as its failover. */
async function setup(
  opts: { auth?: boolean; alpha?: Partial<SimOptions>; beta?: Partial<SimOptions> } = {},
): Promise<Setup> {
  const alpha = track(await startSimulator({ name: 'alpha', ...opts.alpha }));
  const beta = track(await startSimulator({ name: 'beta', ...opts.beta }));
  const gw = track(
    await startGateway({
      ...(opts.auth ? { server: { api_keys: [CLIENT_KEY] } } : {}),
      providers: [
        simProvider('alpha', alpha.url, ['m1', EMB], { api_key: 'sk-alpha' }),
        simProvider('beta', beta.url, ['m1', EMB], { api_key: 'sk-beta' }),
      ],
      routes: {
        fast: { strategy: 'priority', targets: ['alpha/m1', 'beta/m1'] },
        embed: { strategy: 'priority', targets: ['alpha/emb', 'beta/emb'] },
      },
    }),
  );
  return { gw, alpha, beta, baseURL: `${gw.url}/v1` };
}

/** The APICallError a Vercel call rejects with; the test fails if it resolves or rejects with anything else. */
async function apiCallError(call: Promise<unknown>): Promise<APICallError> {
  const err: unknown = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(APICallError.isInstance(err)).toBe(true);
  return err as APICallError;
}

function lastBody(sim: Simulator): Record<string, unknown> {
  return sim.requests.at(-1)!.body as Record<string, unknown>;
}

const weatherSchema = {
  type: 'object' as const,
  properties: { city: { type: 'string' as const, description: 'City name' } },
  required: ['city'],
  additionalProperties: false,
};

// ---------------------------------------------------------------------------------------------

describe('Vercel AI SDK (@ai-sdk/openai, chat completions API)', () => {
  const vercel = (baseURL: string, apiKey = CLIENT_KEY) => createOpenAI({ baseURL, apiKey }).chat('fast');
  /** streamText without client retries, keeping every error it reports through onError. */
  const streamCollecting = (opts: Parameters<typeof streamText>[0]) => {
    const errors: unknown[] = [];
    const result = streamText({ ...opts, maxRetries: 0, onError: ({ error }) => void errors.push(error) });
    return { result, errors };
  };

  it('generateText: gets the text, the usage and the x-router-* response headers', async () => {
    const { baseURL, alpha } = await setup();
    const result = await generateText({ model: vercel(baseURL), prompt: 'Say hello', maxRetries: 0 });
    expect(result.text).toBe(ALPHA_TEXT);
    expect(result.finishReason).toBe('stop');
    expect(result.usage.outputTokens).toBe(8);
    expect(result.usage.inputTokens).toBeGreaterThan(0);
    expect(result.usage.totalTokens).toBe(result.usage.inputTokens! + 8);
    const headers = result.response.headers ?? {};
    expect(headers['x-router-provider']).toBe('alpha');
    expect(headers['x-router-model']).toBe('m1');
    expect(headers['x-router-attempts']).toBe('1');
    expect(headers['x-request-id']).toBeTruthy();
    expect(lastBody(alpha)).toMatchObject({ model: 'm1' });
  });

  it('streamText: the text arrives in several parts, the stream finishes cleanly with usage', async () => {
    const { baseURL, alpha } = await setup({ alpha: { chunkDelayMs: 5 } });
    const { result, errors } = streamCollecting({
      model: vercel(baseURL),
      prompt: 'Say hello',
    });
    const parts: string[] = [];
    const kinds: string[] = [];
    for await (const part of result.fullStream) {
      kinds.push(part.type);
      if (part.type === 'text-delta') parts.push(part.text);
    }
    expect(errors).toEqual([]);
    expect(kinds).not.toContain('error');
    expect(parts.length).toBeGreaterThanOrEqual(4);
    expect(parts.join('')).toBe(ALPHA_TEXT);
    expect(await result.finishReason).toBe('stop');
    const usage = await result.usage;
    expect(usage.outputTokens).toBe(8);
    expect(usage.inputTokens).toBeGreaterThan(0);
    // The SDK asks for usage in the stream, and the gateway passes the request on to the upstream.
    expect(lastBody(alpha)).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    const response = await result.response;
    expect(response.headers?.['x-router-provider']).toBe('alpha');
    expect(response.headers?.['content-type']).toMatch(/^text\/event-stream/);
  });

  it('an unknown model raises APICallError with 404 and the OpenAI error message and code', async () => {
    const { baseURL, alpha, beta } = await setup();
    const model = createOpenAI({ baseURL, apiKey: CLIENT_KEY }).chat('no-such-model');
    const e = await apiCallError(generateText({ model, prompt: 'hi', maxRetries: 0 }));
    expect(e.statusCode).toBe(404);
    expect(e.isRetryable).toBe(false);
    expect(e.message).toContain('no-such-model');
    expect(e.data).toMatchObject({ error: { code: 'model_not_found', message: e.message } });
    expect(alpha.requests.length + beta.requests.length).toBe(0);
  });

  it('an unknown model while streaming surfaces as an error part carrying 404', async () => {
    const { baseURL } = await setup();
    const model = createOpenAI({ baseURL, apiKey: CLIENT_KEY }).chat('no-such-model');
    const { result, errors } = streamCollecting({
      model,
      prompt: 'hi',
    });
    const streamErrors: unknown[] = [];
    for await (const part of result.fullStream) if (part.type === 'error') streamErrors.push(part.error);
    expect(streamErrors).toHaveLength(1);
    const e = streamErrors[0];
    expect(APICallError.isInstance(e)).toBe(true);
    expect((e as APICallError).statusCode).toBe(404);
    expect((e as APICallError).data).toMatchObject({ error: { code: 'model_not_found' } });
    expect(errors).toHaveLength(1);
  });

  it('a wrong client key raises APICallError with 401 when server.api_keys is set', async () => {
    const { baseURL, alpha } = await setup({ auth: true });
    const e = await apiCallError(
      generateText({
        model: vercel(baseURL, 'wrong-key'),
        prompt: 'hi',
        maxRetries: 0,
      }),
    );
    expect(e.statusCode).toBe(401);
    expect(e.data).toMatchObject({ error: { type: 'authentication_error' } });
    expect(e.responseBody).not.toContain('wrong-key');
    expect(alpha.requests).toHaveLength(0);
    // ... and the right key works.
    const ok = await generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 0 });
    expect(ok.text).toBe(ALPHA_TEXT);
  });

  it('fails over from an upstream answering 500 without the client noticing (JSON and stream)', async () => {
    const { baseURL, alpha, beta } = await setup({ alpha: { status: 500 } });
    const result = await generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 0 });
    expect(result.text).toBe(BETA_TEXT);
    expect(result.response.headers?.['x-router-provider']).toBe('beta');
    expect(result.response.headers?.['x-router-attempts']).toBe('2');
    expect(result.response.headers?.['x-router-trail']).toMatch(/^alpha\/m1=/);

    const { result: stream, errors } = streamCollecting({
      model: vercel(baseURL),
      prompt: 'hi',
    });
    let text = '';
    for await (const delta of stream.textStream) text += delta;
    expect(errors).toEqual([]);
    expect(text).toBe(BETA_TEXT);
    expect((await stream.usage).outputTokens).toBe(8);
    const headers = (await stream.response).headers ?? {};
    expect(headers['x-router-provider']).toBe('beta');
    expect(headers['x-router-attempts']).toBe('2');
    expect(alpha.requests).toHaveLength(2);
    expect(beta.requests).toHaveLength(2);
  });

  it('a mid-stream upstream failure reaches the client as a stream error, never as a finished answer', async () => {
    const { baseURL } = await setup({ alpha: { errorEventAfterChunks: 3 } });
    const { result, errors } = streamCollecting({
      model: vercel(baseURL),
      prompt: 'hi',
    });
    let text = '';
    const kinds: string[] = [];
    for await (const part of result.fullStream) {
      kinds.push(part.type);
      if (part.type === 'text-delta') text += part.text;
    }
    expect(text).toBe('Hello from alpha ');
    // The gateway's terminal SSE event is OpenAI's error shape, which the SDK turns into an error part.
    expect(kinds).toContain('error');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ type: 'upstream_error', code: 'stream_interrupted' });
    expect(await result.finishReason).toBe('error');
  });

  it('tool calls: a streamed tool call is executed by the SDK and its result answered with text', async () => {
    const { baseURL, alpha } = await setup({ alpha: { toolCall: true } });
    const calls: unknown[] = [];
    const { result, errors } = streamCollecting({
      model: vercel(baseURL),
      prompt: 'What is the weather in Paris?',
      stopWhen: stepCountIs(2),
      tools: {
        get_weather: tool({
          description: 'Current weather of a city',
          inputSchema: jsonSchema<{ city: string }>(weatherSchema),
          execute: ({ city }) => {
            calls.push(city);
            return Promise.resolve(`Sunny in ${city}`);
          },
        }),
      },
    });
    let text = '';
    for await (const delta of result.textStream) text += delta;
    expect(errors).toEqual([]);
    expect(calls).toEqual(['Paris']);
    const steps = await result.steps;
    expect(steps).toHaveLength(2);
    expect(steps[0]!.finishReason).toBe('tool-calls');
    expect(steps[0]!.toolCalls[0]).toMatchObject({ toolName: 'get_weather', input: { city: 'Paris' } });
    expect(text).toBe(ALPHA_TEXT);
    // The second request carried the tool result back, tied to the call's id.
    const messages = lastBody(alpha).messages as Record<string, unknown>[];
    const toolMsg = messages.at(-1)!;
    expect(toolMsg.role).toBe('tool');
    expect(toolMsg.tool_call_id).toBe(steps[0]!.toolCalls[0]!.toolCallId);
  });

  it('tool calls: a non-streamed tool call round trip with generateText', async () => {
    const { baseURL } = await setup({ alpha: { toolCall: true } });
    const result = await generateText({
      model: vercel(baseURL),
      prompt: 'What is the weather in Paris?',
      maxRetries: 0,
      stopWhen: stepCountIs(2),
      tools: {
        get_weather: tool({
          description: 'Current weather of a city',
          inputSchema: jsonSchema<{ city: string }>(weatherSchema),
          execute: ({ city }) => Promise.resolve(`Sunny in ${city}`),
        }),
      },
    });
    expect(result.steps).toHaveLength(2);
    expect(result.steps[0]!.toolResults[0]).toMatchObject({
      toolName: 'get_weather',
      output: 'Sunny in Paris',
    });
    expect(result.text).toBe(ALPHA_TEXT);
    expect(result.totalUsage.outputTokens).toBeGreaterThan(8);
  });

  it('structured output (response_format json_schema) passes through and parses', async () => {
    const { baseURL, alpha } = await setup({
      alpha: { reply: '{"city":"Paris","celsius":21}', completionTokens: 4 },
    });
    const result = await generateText({
      model: vercel(baseURL),
      prompt: 'Weather in Paris as JSON',
      maxRetries: 0,
      output: Output.object({
        schema: jsonSchema<{ city: string; celsius: number }>({
          type: 'object',
          properties: { city: { type: 'string' }, celsius: { type: 'number' } },
          required: ['city', 'celsius'],
          additionalProperties: false,
        }),
      }),
    });
    expect(result.output).toEqual({ city: 'Paris', celsius: 21 });
    expect(lastBody(alpha).response_format).toMatchObject({ type: 'json_schema' });
  });

  it('request headers set on the client reach the gateway: x-request-id is echoed, x-router-provider pins', async () => {
    const { baseURL, beta } = await setup();
    const model = createOpenAI({
      baseURL,
      apiKey: CLIENT_KEY,
      headers: { 'x-request-id': 'req-compat-1', 'x-router-provider': 'beta' },
    }).chat('fast');
    const result = await generateText({ model, prompt: 'hi', maxRetries: 0 });
    expect(result.text).toBe(BETA_TEXT);
    expect(result.response.headers?.['x-request-id']).toBe('req-compat-1');
    expect(result.response.headers?.['x-router-provider']).toBe('beta');
    expect(beta.requests).toHaveLength(1);
  });

  it('every upstream failing raises APICallError 502 upstream_error naming the attempts', async () => {
    const { baseURL } = await setup({ alpha: { status: 500 }, beta: { status: 503 } });
    const e = await apiCallError(generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 0 }));
    expect(e.statusCode).toBe(502);
    expect(e.data).toMatchObject({ error: { code: 'upstream_error' } });
    expect(e.message).toContain('alpha/m1');
    expect(e.message).toContain('beta/m1');
    expect(e.responseBody).not.toMatch(/sk-alpha|sk-beta/);
  });

  it('every candidate rate limited raises APICallError 429, retryable, with Retry-After', async () => {
    const { baseURL } = await setup({
      alpha: { status: 429, retryAfterS: 7 },
      beta: { status: 429, retryAfterS: 3 },
    });
    const e = await apiCallError(generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 0 }));
    expect(e.statusCode).toBe(429);
    expect(e.isRetryable).toBe(true);
    expect(e.responseHeaders?.['retry-after']).toBe('3'); // the soonest any candidate is free again
    expect(e.data).toMatchObject({ error: { type: 'rate_limit_error' } });
  });

  it('request options reach the upstream: system, an image part, max tokens (finish "length"), sampling', async () => {
    const { baseURL, alpha } = await setup();
    const png = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    const result = await generateText({
      model: vercel(baseURL),
      maxRetries: 0,
      system: 'Be brief.',
      maxOutputTokens: 3,
      temperature: 0.2,
      stopSequences: ['zzz'],
      providerOptions: { openai: { user: 'u-1', parallelToolCalls: false } },
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            { type: 'image', image: png, mediaType: 'image/png' },
          ],
        },
      ],
    });
    expect(result.text).toBe('Hello from alpha ');
    expect(result.finishReason).toBe('length');
    expect(result.usage.outputTokens).toBe(3);
    expect(lastBody(alpha)).toMatchObject({
      model: 'm1',
      max_tokens: 3,
      temperature: 0.2,
      stop: ['zzz'],
      user: 'u-1',
      parallel_tool_calls: false,
      messages: [
        { role: 'system', content: 'Be brief.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            {
              type: 'image_url',
              image_url: { url: `data:image/png;base64,${Buffer.from(png).toString('base64')}` },
            },
          ],
        },
      ],
    });
  });

  it('aborting the SDK call mid-stream aborts the upstream request', async () => {
    const { gw, baseURL, alpha } = await setup({ alpha: { chunkDelayMs: 100, completionTokens: 50 } });
    const ac = new AbortController();
    const result = streamText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      abortSignal: ac.signal,
      onError: () => undefined,
    });
    let text = '';
    for await (const part of result.fullStream) {
      if (part.type === 'text-delta') {
        text += part.text;
        ac.abort();
        break;
      }
    }
    expect(text).toBe('Hello ');
    const aborted = await alpha.waitForAbort(3_000);
    expect(aborted.finished).toBe(false);
    // On abort, Node's fetch opens a fresh keep-alive connection it never uses (closed by its 4 s idle timer);
    // app.close() would wait for it, so cut it here to keep the file fast.
    gw.app.server.closeAllConnections();
  });

  it('embed and embedMany get vectors and usage', async () => {
    const { baseURL, alpha } = await setup();
    const provider = createOpenAI({ baseURL, apiKey: CLIENT_KEY });
    const one = await embed({ model: provider.embedding('embed'), value: 'hello', maxRetries: 0 });
    expect(one.embedding).toHaveLength(8);
    expect(one.embedding.every((x) => Number.isFinite(x))).toBe(true);
    expect(one.usage.tokens).toBeGreaterThan(0);
    const many = await embedMany({
      model: provider.embedding('embed'),
      values: ['a', 'b', 'c'],
      maxRetries: 0,
    });
    expect(many.embeddings).toHaveLength(3);
    expect(many.embeddings[0]).not.toEqual(many.embeddings[1]);
    expect(lastBody(alpha)).toMatchObject({ model: 'emb', input: ['a', 'b', 'c'] });
  });
});

// ---------------------------------------------------------------------------------------------

describe('LangChain (@langchain/openai ChatOpenAI)', () => {
  const chat = (baseURL: string, opts: { apiKey?: string; model?: string } = {}) =>
    new ChatOpenAI({
      model: opts.model ?? 'fast',
      apiKey: opts.apiKey ?? CLIENT_KEY,
      maxRetries: 0,
      configuration: { baseURL },
    });

  /** LangChain rethrows the OpenAI SDK's APIError with its fields, plus an `lc_error_code`. */
  type LcError = Error & {
    status?: number;
    code?: string | null;
    type?: string;
    error?: { message?: string; code?: string | null; type?: string };
    lc_error_code?: string;
  };
  const failure = (p: Promise<unknown>): Promise<LcError> =>
    p.then(
      () => {
        throw new Error('expected the call to fail');
      },
      (e: unknown) => e as LcError,
    );

  it('invoke: gets the text and usage_metadata', async () => {
    const { baseURL, alpha } = await setup();
    const msg = await chat(baseURL).invoke([new HumanMessage('Say hello')]);
    expect(msg.content).toBe(ALPHA_TEXT);
    expect(msg.usage_metadata?.output_tokens).toBe(8);
    expect(msg.usage_metadata?.input_tokens).toBeGreaterThan(0);
    expect(msg.usage_metadata?.total_tokens).toBe(msg.usage_metadata!.input_tokens + 8);
    expect(msg.response_metadata.finish_reason).toBe('stop');
    expect(lastBody(alpha)).toMatchObject({ model: 'm1' });
  });

  it('stream: the text arrives in several chunks, the stream ends cleanly with usage', async () => {
    const { baseURL, alpha } = await setup({ alpha: { chunkDelayMs: 5 } });
    const stream = await chat(baseURL).stream([new HumanMessage('Say hello')]);
    const parts: string[] = [];
    let usage: { input_tokens: number; output_tokens: number } | undefined;
    let finish: unknown;
    for await (const chunk of stream) {
      if (typeof chunk.content === 'string' && chunk.content !== '') parts.push(chunk.content);
      if (chunk.usage_metadata) usage = chunk.usage_metadata;
      finish ??= chunk.response_metadata?.finish_reason;
    }
    expect(parts.length).toBeGreaterThanOrEqual(4);
    expect(parts.join('')).toBe(ALPHA_TEXT);
    expect(finish).toBe('stop');
    expect(usage?.output_tokens).toBe(8);
    expect(usage?.input_tokens).toBeGreaterThan(0);
    expect(lastBody(alpha)).toMatchObject({ stream: true, stream_options: { include_usage: true } });
  });

  it('an unknown model raises an error with status 404 and the OpenAI error code', async () => {
    const { baseURL, alpha, beta } = await setup();
    const err = await failure(chat(baseURL, { model: 'no-such-model' }).invoke('hi'));
    expect(err.status).toBe(404);
    expect(err.code).toBe('model_not_found');
    expect(err.lc_error_code).toBe('MODEL_NOT_FOUND');
    expect(err.message).toContain('no-such-model');
    expect(err.error?.message).toContain('no-such-model');
    // Streaming gives the same error, before any chunk.
    const streamErr = await failure(
      (async () => {
        for await (const _ of await chat(baseURL, { model: 'no-such-model' }).stream('hi'));
      })(),
    );
    expect(streamErr.status).toBe(404);
    expect(streamErr.code).toBe('model_not_found');
    expect(alpha.requests.length + beta.requests.length).toBe(0);
  });

  it('a wrong client key raises an error with status 401 when server.api_keys is set', async () => {
    const { baseURL, alpha } = await setup({ auth: true });
    const err = await failure(chat(baseURL, { apiKey: 'wrong-key' }).invoke('hi'));
    expect(err.status).toBe(401);
    expect(err.type).toBe('authentication_error');
    expect(err.lc_error_code).toBe('MODEL_AUTHENTICATION');
    expect(err.message).not.toContain('wrong-key');
    expect(alpha.requests).toHaveLength(0);
    expect((await chat(baseURL).invoke('hi')).content).toBe(ALPHA_TEXT);
  });

  it('every candidate rate limited raises an error with status 429 (MODEL_RATE_LIMIT)', async () => {
    const { baseURL } = await setup({
      alpha: { status: 429, retryAfterS: 7 },
      beta: { status: 429, retryAfterS: 3 },
    });
    const err = await failure(chat(baseURL).invoke('hi'));
    expect(err.status).toBe(429);
    expect(err.lc_error_code).toBe('MODEL_RATE_LIMIT');
    expect(err.type).toBe('rate_limit_error');
  });

  it('fails over from an upstream answering 500 without the client noticing (invoke and stream)', async () => {
    const { baseURL, alpha, beta } = await setup({ alpha: { status: 500 } });
    const msg = await chat(baseURL).invoke('hi');
    expect(msg.content).toBe(BETA_TEXT);
    expect(msg.usage_metadata?.output_tokens).toBe(8);
    let text = '';
    for await (const chunk of await chat(baseURL).stream('hi')) text += String(chunk.content);
    expect(text).toBe(BETA_TEXT);
    expect(alpha.requests).toHaveLength(2);
    expect(beta.requests).toHaveLength(2);
  });

  it('a mid-stream upstream failure makes the stream throw after the text already sent', async () => {
    const { baseURL } = await setup({ alpha: { errorEventAfterChunks: 3 } });
    let text = '';
    const err = await failure(
      (async () => {
        for await (const chunk of await chat(baseURL).stream('hi')) text += String(chunk.content);
      })(),
    );
    expect(text).toBe('Hello from alpha ');
    // The OpenAI SDK under LangChain throws the gateway's in-stream error event as an APIError.
    expect(err.error).toMatchObject({ type: 'upstream_error', code: 'stream_interrupted' });
    expect(err.message).toContain('alpha/m1 failed mid-stream');
  });

  it('tool calls: bindTools gets a tool call, and the ToolMessage is answered with text', async () => {
    const { baseURL, alpha } = await setup({ alpha: { toolCall: true } });
    const model = chat(baseURL).bindTools([
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'Current weather of a city',
          parameters: weatherSchema,
        },
      },
    ]);
    const question = new HumanMessage('What is the weather in Paris?');
    const first = await model.invoke([question]);
    expect(first.tool_calls).toHaveLength(1);
    const call = first.tool_calls![0]!;
    expect(call).toMatchObject({ name: 'get_weather', args: { city: 'Paris' } });
    expect(call.id).toBeTruthy();
    expect(first.response_metadata.finish_reason).toBe('tool_calls');

    // Streamed, the tool call's argument fragments are put back together.
    let streamed: AIMessageChunk | undefined;
    for await (const chunk of await model.stream([question])) {
      streamed = streamed ? streamed.concat(chunk) : chunk;
    }
    expect(streamed?.tool_calls?.[0]).toMatchObject({ name: 'get_weather', args: { city: 'Paris' } });

    const answer = await model.invoke([
      question,
      first,
      new ToolMessage({ tool_call_id: call.id!, content: 'Sunny in Paris' }),
    ]);
    expect(answer.content).toBe(ALPHA_TEXT);
    expect(answer.tool_calls ?? []).toHaveLength(0);
    const messages = lastBody(alpha).messages as Record<string, unknown>[];
    expect(messages.at(-1)).toMatchObject({ role: 'tool', tool_call_id: call.id });
  });

  it('withStructuredOutput (json_schema) passes through and parses', async () => {
    const { baseURL, alpha } = await setup({
      alpha: { reply: '{"city":"Paris","celsius":21}', completionTokens: 4 },
    });
    const structured = chat(baseURL).withStructuredOutput(
      {
        type: 'object',
        title: 'weather',
        properties: { city: { type: 'string' }, celsius: { type: 'number' } },
        required: ['city', 'celsius'],
        additionalProperties: false,
      },
      { method: 'jsonSchema' },
    );
    expect(await structured.invoke('Weather in Paris as JSON')).toEqual({ city: 'Paris', celsius: 21 });
    expect(lastBody(alpha).response_format).toMatchObject({ type: 'json_schema' });
  });

  it('default headers on the client reach the gateway (x-router-provider pins beta)', async () => {
    const { baseURL, alpha, beta } = await setup();
    const model = new ChatOpenAI({
      model: 'fast',
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      configuration: { baseURL, defaultHeaders: { 'x-router-provider': 'beta' } },
    });
    expect((await model.invoke('hi')).content).toBe(BETA_TEXT);
    expect(alpha.requests).toHaveLength(0);
    expect(beta.requests).toHaveLength(1);
  });

  it('OpenAIEmbeddings gets vectors (the OpenAI SDK asks for base64 and decodes it)', async () => {
    const { baseURL, alpha } = await setup();
    const embeddings = new OpenAIEmbeddings({
      model: 'embed',
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      configuration: { baseURL },
    });
    const [a, b] = await embeddings.embedDocuments(['hello', 'world']);
    expect(a).toHaveLength(8);
    expect(a!.every((x) => Number.isFinite(x))).toBe(true);
    expect(a).not.toEqual(b);
    expect(await embeddings.embedQuery('hello')).toEqual(a);
    expect(lastBody(alpha)).toMatchObject({ model: 'emb', encoding_format: 'base64' });
  });
});
