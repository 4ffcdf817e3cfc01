/**
 * The wider surface of the Vercel AI SDK and LangChain through the gateway, against a hand-written upstream
 * that answers as the OpenAI API documents (not our simulator): structured outputs streamed and not, multi-step
 * tool loops whose later step fails over, tool-input and partial-object streaming as it comes, provider
 * options and metadata, detailed usage, aborts, client retries against the gateway's 429 and 503, request and
 * response headers, and each gateway error as each client reports it.
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOpenAI } from '@ai-sdk/openai';
import { BaseCallbackHandler } from '@langchain/core/callbacks/base';
import type { LLMResult } from '@langchain/core/outputs';
import { ChatOpenAI } from '@langchain/openai';
import {
  APICallError,
  generateObject,
  generateText,
  jsonSchema,
  stepCountIs,
  streamObject,
  streamText,
  tool,
} from 'ai';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, gate } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

const CLIENT_KEY = 'sk-client-wide-4242';
const UPSTREAM_KEY = 'sk-upstream-wide-SECRET-9876';

// These clients must only ever talk to loopback (LangChain can fetch tokenizer files).
onlyLoopbackFetch();

// ---------------------------------------------------------------------------------------------
// The hand-written OpenAI upstream.

interface Received {
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Record<string, unknown>;
  /** The gateway closed this request before the mock had finished its answer. */
  aborted: boolean;
}

type Handler = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

interface Mock {
  readonly url: string;
  readonly received: Received[];
  /** Resolves with the first request the gateway aborts (bounded: rejects after 3 s). */
  abortedOne(): Promise<Received>;
}

async function mockOpenAI(handler: Handler): Promise<Mock> {
  const received: Received[] = [];
  let onAbort: ((r: Received) => void) | undefined;
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const r: Received = {
        url: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>,
        aborted: false,
      };
      received.push(r);
      res.on('close', () => {
        if (!res.writableFinished) {
          r.aborted = true;
          onAbort?.(r);
        }
      });
      void Promise.resolve(handler(r, res, received.length)).catch(() => res.destroy());
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    abortedOne: () =>
      new Promise<Received>((resolve, reject) => {
        const already = received.find((r) => r.aborted);
        if (already) return resolve(already);
        const t = setTimeout(() => reject(new Error('no upstream request was aborted')), 3000);
        onAbort = (r) => {
          clearTimeout(t);
          resolve(r);
        };
      }),
  };
}

const USAGE = {
  prompt_tokens: 30,
  completion_tokens: 12,
  total_tokens: 42,
  prompt_tokens_details: { cached_tokens: 10, audio_tokens: 0 },
  completion_tokens_details: {
    reasoning_tokens: 5,
    audio_tokens: 0,
    accepted_prediction_tokens: 2,
    rejected_prediction_tokens: 1,
  },
};

function completion(message: Record<string, unknown>, finish = 'stop') {
  return {
    id: 'chatcmpl-wide-1',
    object: 'chat.completion',
    created: 1741569952,
    model: 'gpt-4o-2024-08-06',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', refusal: null, annotations: [], content: null, ...message },
        logprobs: null,
        finish_reason: finish,
      },
    ],
    usage: USAGE,
    service_tier: 'default',
    system_fingerprint: 'fp_wide',
  };
}

function chunk(delta: Record<string, unknown>, finish: string | null = null) {
  return {
    id: 'chatcmpl-wide-stream',
    object: 'chat.completion.chunk',
    created: 1741569952,
    model: 'gpt-4o-2024-08-06',
    service_tier: 'default',
    system_fingerprint: 'fp_wide',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  };
}

/** The usage chunk OpenAI sends last when `stream_options.include_usage` is set: no choices. */
function usageChunk() {
  return { ...chunk({}), choices: [], usage: USAGE };
}

function sseHead(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
}

function sseData(res: ServerResponse, events: readonly unknown[]): void {
  for (const e of events) res.write(`data: ${JSON.stringify(e)}\n\n`);
}

function sseEnd(res: ServerResponse, req: Received, finish: string): void {
  sseData(res, [chunk({}, finish)]);
  if ((req.body.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
    sseData(res, [usageChunk()]);
  }
  res.end('data: [DONE]\n\n');
}

/** A text answer, streamed or not as the request asks. */
function answerText(req: Received, res: ServerResponse, parts: readonly string[]): void {
  if (req.body.stream !== true) {
    sendJson(res, 200, completion({ content: parts.join('') }));
    return;
  }
  sseHead(res);
  sseData(res, [chunk({ role: 'assistant', content: '', refusal: null })]);
  sseData(
    res,
    parts.map((p) => chunk({ content: p })),
  );
  sseEnd(res, req, 'stop');
}

/** A tool-call answer, streamed (the arguments in the given fragments) or not. */
function answerToolCall(
  req: Received,
  res: ServerResponse,
  name: string,
  argParts: readonly string[],
  id = 'call_wide_1',
): void {
  if (req.body.stream !== true) {
    sendJson(
      res,
      200,
      completion(
        { tool_calls: [{ id, type: 'function', function: { name, arguments: argParts.join('') } }] },
        'tool_calls',
      ),
    );
    return;
  }
  sseHead(res);
  sseData(res, [
    chunk({ role: 'assistant', content: null, refusal: null }),
    chunk({
      tool_calls: [{ index: 0, id, type: 'function', function: { name, arguments: '' } }],
    }),
    ...argParts.map((a) => chunk({ tool_calls: [{ index: 0, function: { arguments: a } }] })),
  ]);
  sseEnd(res, req, 'tool_calls');
}

function openaiError(
  res: ServerResponse,
  status: number,
  error: { message: string; type: string; code: string | null; param?: string | null },
  headers: Record<string, string> = {},
): void {
  sendJson(res, status, { error: { param: null, ...error } }, headers);
}

const TEXT = ['Hello', ' from', ' the', ' mock'];

// ---------------------------------------------------------------------------------------------
// The gateway in front of the mocks.

interface Setup {
  gw: TestGateway;
  baseURL: string;
}

/**
 * The gateway in front of `mocks` (providers `oa`, `ob`, ... each serving `gpt-4o`), route `smart` over them
 * in that order, client keys required.
 */
async function setup(
  mocks: readonly Mock[],
  opts: {
    bodyLimit?: number;
    breaker?: Record<string, unknown>;
    timeouts?: Record<string, number>;
  } = {},
): Promise<Setup> {
  const names = mocks.map((_m, i) => `o${String.fromCharCode(97 + i)}`);
  const gw = track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY], ...(opts.bodyLimit ? { body_limit_bytes: opts.bodyLimit } : {}) },
      providers: mocks.map((m, i) => ({
        name: names[i],
        kind: 'openai',
        base_url: `${m.url}/v1`,
        api_key: UPSTREAM_KEY,
        timeouts: {
          connect_ms: 2000,
          first_byte_ms: 5000,
          idle_ms: 5000,
          total_ms: 10000,
          ...opts.timeouts,
        },
        models: [{ name: 'gpt-4o' }],
      })),
      routes: { smart: { strategy: 'priority', targets: names.map((n) => `${n}/gpt-4o`) } },
      ...(opts.breaker ? { circuit_breaker: opts.breaker } : {}),
    }),
  );
  return { gw, baseURL: `${gw.url}/v1` };
}

function expectOpenAIErrorBody(body: string | undefined): Record<string, unknown> {
  const parsed = JSON.parse(body ?? 'null') as { error: Record<string, unknown> };
  expect(Object.keys(parsed)).toEqual(['error']);
  expect(Object.keys(parsed.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof parsed.error.message).toBe('string');
  expect(typeof parsed.error.type).toBe('string');
  return parsed.error;
}

const cityWeather = jsonSchema<{ city: string; celsius: number; tags: string[] }>({
  type: 'object',
  properties: {
    city: { type: 'string' },
    celsius: { type: 'number' },
    tags: { type: 'array', items: { type: 'string' } },
  },
  required: ['city', 'celsius', 'tags'],
  additionalProperties: false,
});

const weatherTool = (calls: string[] = []) =>
  tool({
    description: 'Current weather of a city',
    inputSchema: jsonSchema<{ city: string }>({
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
      additionalProperties: false,
    }),
    execute: ({ city }) => {
      calls.push(city);
      return Promise.resolve(`Sunny in ${city}`);
    },
  });

// ---------------------------------------------------------------------------------------------

describe('Vercel AI SDK, wider surface', () => {
  const vercel = (baseURL: string, apiKey = CLIENT_KEY, model = 'smart') =>
    createOpenAI({ baseURL, apiKey }).chat(model);

  it('generateObject: strict json_schema reaches the upstream, the object comes back parsed', async () => {
    const a = await mockOpenAI((req, res) =>
      answerText(req, res, ['{"city":"Paris","celsius":21,"tags":["sunny"]}']),
    );
    const { baseURL } = await setup([a]);
    const result = await generateObject({
      model: vercel(baseURL),
      schema: cityWeather,
      schemaName: 'weather',
      prompt: 'Weather in Paris',
      maxRetries: 0,
    });
    expect(result.object).toEqual({ city: 'Paris', celsius: 21, tags: ['sunny'] });
    expect(result.usage.inputTokens).toBe(30);
    expect(result.response.headers?.['x-router-provider']).toBe('oa');
    expect(a.received[0]!.body.response_format).toMatchObject({
      type: 'json_schema',
      json_schema: { name: 'weather', strict: true, schema: { required: ['city', 'celsius', 'tags'] } },
    });
    expect(a.received[0]!.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
  });

  it('streamObject: partial objects arrive as the upstream writes them, not all at the end', async () => {
    const g = gate();
    let waited: 'client' | 'bound' | undefined;
    const a = await mockOpenAI(async (req, res) => {
      sseHead(res);
      sseData(res, [
        chunk({ role: 'assistant', content: '', refusal: null }),
        chunk({ content: '{"city":"Pa' }),
        chunk({ content: 'ris","celsius":2' }),
      ]);
      waited = await g.wait;
      sseData(res, [chunk({ content: '1,"tags":["sun' }), chunk({ content: 'ny","warm"]}' })]);
      sseEnd(res, req, 'stop');
    });
    const { baseURL } = await setup([a]);
    const result = streamObject({
      model: vercel(baseURL),
      schema: cityWeather,
      prompt: 'Weather in Paris',
      maxRetries: 0,
      onError: () => undefined,
    });
    const partials: unknown[] = [];
    for await (const partial of result.partialObjectStream) {
      partials.push(partial);
      if ((partial as { city?: string }).city === 'Paris') g.open();
    }
    expect(waited).toBe('client');
    expect(partials[0]).toEqual({ city: 'Pa' });
    expect(partials.length).toBeGreaterThanOrEqual(4);
    expect(await result.object).toEqual({ city: 'Paris', celsius: 21, tags: ['sunny', 'warm'] });
    expect((await result.usage).outputTokens).toBe(12);
    expect((await result.response).headers?.['x-router-provider']).toBe('oa');
    expect(a.received[0]!.body).toMatchObject({
      stream: true,
      response_format: { type: 'json_schema' },
      stream_options: { include_usage: true },
    });
  });

  it('streamText multi-step: the second step fails over to another upstream, the tool loop goes on', async () => {
    const calls: string[] = [];
    const a = await mockOpenAI((req, res, n) => {
      if (n === 1) return answerToolCall(req, res, 'get_weather', ['{"ci', 'ty":"Par', 'is"}']);
      openaiError(res, 500, { message: 'The server had an error', type: 'server_error', code: null });
    });
    const b = await mockOpenAI((req, res) => answerText(req, res, TEXT));
    const { baseURL } = await setup([a, b]);
    const result = streamText({
      model: vercel(baseURL),
      prompt: 'Weather in Paris?',
      maxRetries: 0,
      stopWhen: stepCountIs(3),
      tools: { get_weather: weatherTool(calls) },
      onError: () => undefined,
    });
    let text = '';
    for await (const t of result.textStream) text += t;
    expect(text).toBe(TEXT.join(''));
    expect(calls).toEqual(['Paris']);
    const steps = await result.steps;
    expect(steps).toHaveLength(2);
    expect(steps[0]!.finishReason).toBe('tool-calls');
    expect(steps[0]!.response.headers?.['x-router-provider']).toBe('oa');
    expect(steps[1]!.response.headers?.['x-router-provider']).toBe('ob');
    expect(steps[1]!.response.headers?.['x-router-attempts']).toBe('2');
    expect(steps[1]!.response.headers?.['x-router-trail']).toMatch(/^oa\/gpt-4o=/);
    expect((await result.totalUsage).outputTokens).toBe(24);
    // Both upstreams got the whole conversation; ob's carries the tool result tied to oa's call.
    expect(a.received).toHaveLength(2);
    expect(b.received).toHaveLength(1);
    const messages = b.received[0]!.body.messages as Record<string, unknown>[];
    expect(messages.at(-2)).toMatchObject({
      role: 'assistant',
      tool_calls: [{ id: 'call_wide_1', function: { name: 'get_weather' } }],
    });
    expect(messages.at(-1)).toMatchObject({ role: 'tool', tool_call_id: 'call_wide_1' });
    expect(b.received[0]!.body).toEqual(a.received[1]!.body);
  });

  it('tool-call streaming: tool input deltas arrive as the upstream writes them', async () => {
    const g = gate();
    let waited: 'client' | 'bound' | undefined;
    const a = await mockOpenAI(async (req, res) => {
      sseHead(res);
      sseData(res, [
        chunk({ role: 'assistant', content: null, refusal: null }),
        chunk({
          tool_calls: [
            { index: 0, id: 'call_s', type: 'function', function: { name: 'get_weather', arguments: '' } },
          ],
        }),
        chunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }),
      ]);
      waited = await g.wait;
      sseData(res, [chunk({ tool_calls: [{ index: 0, function: { arguments: '"Paris"}' } }] })]);
      sseEnd(res, req, 'tool_calls');
    });
    const { baseURL } = await setup([a]);
    const result = streamText({
      model: vercel(baseURL),
      prompt: 'Weather in Paris?',
      maxRetries: 0,
      tools: { get_weather: weatherTool() },
      onError: () => undefined,
    });
    const deltas: string[] = [];
    const kinds: string[] = [];
    for await (const part of result.fullStream) {
      kinds.push(part.type);
      if (part.type === 'tool-input-delta') {
        deltas.push(part.delta);
        g.open();
      }
    }
    expect(waited).toBe('client');
    expect(deltas.join('')).toBe('{"city":"Paris"}');
    expect(deltas.length).toBeGreaterThanOrEqual(2);
    expect(kinds).toContain('tool-input-start');
    expect(kinds).toContain('tool-call');
    expect(kinds).toContain('tool-result');
    expect(await result.finishReason).toBe('tool-calls');
  });

  it('providerOptions reach the upstream body; providerMetadata and detailed usage come back', async () => {
    const a = await mockOpenAI((req, res) => answerText(req, res, TEXT));
    const { baseURL } = await setup([a]);
    const providerOptions = {
      openai: {
        reasoningEffort: 'low',
        user: 'user-7',
        store: true,
        metadata: { team: 'edge' },
        serviceTier: 'default',
        promptCacheKey: 'pc-1',
        safetyIdentifier: 'safe-1',
        logitBias: { '50256': -100 },
      },
    } as const;
    const result = await generateText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      providerOptions,
    });
    expect(result.text).toBe(TEXT.join(''));
    expect(a.received[0]!.body).toMatchObject({
      reasoning_effort: 'low',
      user: 'user-7',
      store: true,
      metadata: { team: 'edge' },
      service_tier: 'default',
      prompt_cache_key: 'pc-1',
      safety_identifier: 'safe-1',
      logit_bias: { '50256': -100 },
    });
    expect(result.providerMetadata?.openai).toMatchObject({
      acceptedPredictionTokens: 2,
      rejectedPredictionTokens: 1,
    });
    expect(result.usage).toMatchObject({
      inputTokens: 30,
      outputTokens: 12,
      totalTokens: 42,
      cachedInputTokens: 10,
      reasoningTokens: 5,
      inputTokenDetails: { cacheReadTokens: 10 },
      outputTokenDetails: { reasoningTokens: 5 },
    });

    // ... and streamed.
    const stream = streamText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      providerOptions,
      onError: () => undefined,
    });
    let text = '';
    for await (const t of stream.textStream) text += t;
    expect(text).toBe(TEXT.join(''));
    expect(await stream.usage).toMatchObject({ cachedInputTokens: 10, reasoningTokens: 5, totalTokens: 42 });
    expect((await stream.providerMetadata)?.openai).toMatchObject({ acceptedPredictionTokens: 2 });
    expect(a.received[1]!.body).toMatchObject({ stream: true, reasoning_effort: 'low', store: true });
  });

  it('abortSignal mid-stream: the upstream request is aborted', async () => {
    const a = await mockOpenAI(async (_req, res) => {
      sseHead(res);
      sseData(res, [chunk({ role: 'assistant', content: '' }), chunk({ content: 'first' })]);
      await gate().wait; // never opened: hangs until the bound, or the abort
      res.end();
    });
    const { gw, baseURL } = await setup([a]);
    const ac = new AbortController();
    const result = streamText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      abortSignal: ac.signal,
      onError: () => undefined,
    });
    const kinds: string[] = [];
    for await (const part of result.fullStream) {
      kinds.push(part.type);
      if (part.type === 'text-delta') ac.abort();
    }
    expect(kinds).toContain('abort');
    const aborted = await a.abortedOne();
    expect(aborted.body.stream).toBe(true);
    gw.app.server.closeAllConnections();
  });

  it('abortSignal before the first byte: the upstream request is aborted, no failover is started', async () => {
    const arrived = gate();
    const a = await mockOpenAI(async (_req, res) => {
      arrived.open();
      await gate().wait;
      res.destroy();
    });
    const b = await mockOpenAI((req, res) => answerText(req, res, TEXT));
    const { gw, baseURL } = await setup([a, b]);
    const ac = new AbortController();
    const result = streamText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      abortSignal: ac.signal,
      onError: () => undefined,
    });
    const kinds = (async () => {
      const out: string[] = [];
      for await (const part of result.fullStream) out.push(part.type);
      return out;
    })();
    expect(await arrived.wait).toBe('client');
    const aborted = a.abortedOne();
    ac.abort();
    expect(await kinds).toContain('abort');
    expect((await aborted).body.stream).toBe(true);
    expect(b.received).toHaveLength(0);
    gw.app.server.closeAllConnections();
  });

  it('streamObject: an upstream that errors before content is failed over unseen', async () => {
    const a = await mockOpenAI((_req, res) => {
      sseHead(res);
      sseData(res, [
        chunk({ role: 'assistant', content: '', refusal: null }),
        { error: { message: 'The server is overloaded', type: 'server_error', param: null, code: null } },
      ]);
      res.end();
    });
    const b = await mockOpenAI((req, res) =>
      answerText(req, res, ['{"city":"Par', 'is","celsius":21,', '"tags":[]}']),
    );
    const { baseURL } = await setup([a, b]);
    const errors: unknown[] = [];
    const result = streamObject({
      model: vercel(baseURL),
      schema: cityWeather,
      prompt: 'Weather in Paris',
      maxRetries: 0,
      onError: ({ error }) => void errors.push(error),
    });
    const partials: unknown[] = [];
    for await (const p of result.partialObjectStream) partials.push(p);
    expect(errors).toEqual([]);
    expect(partials[0]).toEqual({ city: 'Par' });
    expect(await result.object).toEqual({ city: 'Paris', celsius: 21, tags: [] });
    const h = (await result.response).headers ?? {};
    expect([h['x-router-provider'], h['x-router-attempts'], h['x-router-trail']]).toEqual([
      'ob',
      '2',
      'oa/gpt-4o=stream_error_event',
    ]);
  });

  it('maxRetries against a 429 with Retry-After: the SDK waits as told and the retry is served', async () => {
    const a = await mockOpenAI((req, res, n) => {
      if (n === 1)
        return openaiError(
          res,
          429,
          { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded' },
          { 'retry-after': '1' },
        );
      answerText(req, res, TEXT);
    });
    const { baseURL } = await setup([a]);
    const result = await generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 1 });
    expect(result.text).toBe(TEXT.join(''));
    expect(a.received).toHaveLength(2);
    expect(result.response.headers?.['x-router-attempts']).toBe('1');
  });

  it('maxRetries against a 503 (every breaker open): Retry-After brings the retry to the half-open probe', async () => {
    const a = await mockOpenAI((req, res, n) => {
      if (n === 1) return openaiError(res, 503, { message: 'overloaded', type: 'server_error', code: null });
      answerText(req, res, TEXT);
    });
    const { baseURL } = await setup([a], { breaker: { failure_threshold: 1, open_ms: 1000 } });
    const first = await generateText({ model: vercel(baseURL), prompt: 'hi', maxRetries: 0 }).catch(
      (e: unknown) => e as APICallError,
    );
    expect((first as APICallError).statusCode).toBe(502);
    // The breaker is open now: the gateway answers 503 with Retry-After, the SDK waits and retries.
    const statuses: number[] = [];
    const result = await generateText({
      model: createOpenAI({
        baseURL,
        apiKey: CLIENT_KEY,
        fetch: async (input, init) => {
          const res = await fetch(input, init);
          statuses.push(res.status);
          return res;
        },
      }).chat('smart'),
      prompt: 'hi',
      maxRetries: 2,
    });
    expect(result.text).toBe(TEXT.join(''));
    expect(statuses).toEqual([503, 200]);
    expect(a.received).toHaveLength(2);
  });

  it('per-call headers: x-router-* request headers reach the gateway and steer it; response headers show it', async () => {
    const a = await mockOpenAI((req, res) => answerText(req, res, ['from a']));
    const b = await mockOpenAI((req, res) => answerText(req, res, ['from b']));
    const { baseURL } = await setup([a, b]);
    const result = await generateText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      headers: { 'x-router-provider': 'ob', 'x-router-strategy': 'cost', 'x-request-id': 'req-wide-1' },
    });
    expect(result.text).toBe('from b');
    const h = result.response.headers ?? {};
    expect(h['x-router-provider']).toBe('ob');
    expect(h['x-router-model']).toBe('gpt-4o');
    expect(h['x-router-strategy']).toBe('cost');
    expect(h['x-request-id']).toBe('req-wide-1');
    expect(h['x-router-attempts']).toBe('1');
    expect(h['x-router-trail']).toBe('');
    expect(a.received).toHaveLength(0);
    // The client's own headers are the gateway's: they never reach the upstream.
    expect(b.received[0]!.headers['x-router-provider']).toBeUndefined();
    expect(b.received[0]!.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);

    const stream = streamText({
      model: vercel(baseURL),
      prompt: 'hi',
      maxRetries: 0,
      headers: { 'x-router-provider': 'ob' },
      onError: () => undefined,
    });
    await stream.consumeStream();
    const sh = (await stream.response).headers ?? {};
    expect(sh['x-router-provider']).toBe('ob');
    expect(sh['x-router-strategy']).toBe('priority');
    expect(sh['x-request-id']).toBeTruthy();
  });
});

// ---------------------------------------------------------------------------------------------

interface ErrorCase {
  name: string;
  status: number;
  retryable: boolean;
  code?: string;
  type?: string;
  /** Sets up mocks and gateway; returns the model id, key and headers to call with. */
  arrange(): Promise<{ baseURL: string; model?: string; apiKey?: string; headers?: Record<string, string> }>;
  /** A prompt long enough to pass the body limit. */
  bigPrompt?: boolean;
}

const hanging = () =>
  mockOpenAI(async (_req, res) => {
    await gate(4000).wait;
    res.destroy();
  });
const failing = (status: number) =>
  mockOpenAI((_req, res) =>
    openaiError(res, status, { message: `upstream said ${status}`, type: 'server_error', code: null }),
  );

const ERROR_CASES: ErrorCase[] = [
  {
    name: '400 validation (unknown x-router-strategy)',
    status: 400,
    retryable: false,
    type: 'invalid_request_error',
    arrange: async () => setup([await failing(500)]),
    // headers set per case below
  },
  {
    name: '401 wrong client key',
    status: 401,
    retryable: false,
    type: 'authentication_error',
    arrange: async () => ({ ...(await setup([await failing(500)])), apiKey: 'sk-wrong' }),
  },
  {
    name: '404 unknown model',
    status: 404,
    retryable: false,
    code: 'model_not_found',
    arrange: async () => ({ ...(await setup([await failing(500)])), model: 'no-such-model' }),
  },
  {
    name: '413 body over the limit',
    status: 413,
    retryable: false,
    bigPrompt: true,
    arrange: async () => setup([await failing(500)], { bodyLimit: 4096 }),
  },
  {
    name: '429 every candidate rate limited',
    status: 429,
    retryable: true,
    type: 'rate_limit_error',
    code: 'rate_limited',
    arrange: async () =>
      setup([
        await mockOpenAI((_req, res) =>
          openaiError(
            res,
            429,
            { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded' },
            { 'retry-after': '20' },
          ),
        ),
      ]),
  },
  {
    name: '502 every attempt failed',
    status: 502,
    retryable: true,
    type: 'upstream_error',
    code: 'upstream_error',
    arrange: async () => setup([await failing(500), await failing(503)]),
  },
  {
    name: '503 every breaker open',
    status: 503,
    retryable: true,
    code: 'no_available_upstream',
    arrange: async () => {
      const s = await setup([await failing(500)], { breaker: { failure_threshold: 1, open_ms: 60_000 } });
      const res = await fetch(`${s.baseURL}/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'smart', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.status).toBe(502);
      return s;
    },
  },
  {
    name: '504 every upstream timed out',
    status: 504,
    retryable: true,
    type: 'timeout',
    code: 'timeout',
    arrange: async () => setup([await hanging()], { timeouts: { first_byte_ms: 200 } }),
  },
];

describe('each gateway error as the Vercel AI SDK reports it (APICallError, JSON and stream)', () => {
  for (const c of ERROR_CASES) {
    it(c.name, async () => {
      const { baseURL, model = 'smart', apiKey = CLIENT_KEY } = await c.arrange();
      const headers = c.status === 400 ? { 'x-router-strategy': 'no-such-strategy' } : undefined;
      const prompt = c.bigPrompt ? 'x'.repeat(8000) : 'hi';
      const lm = createOpenAI({ baseURL, apiKey }).chat(model);
      const check = (err: unknown) => {
        expect(APICallError.isInstance(err)).toBe(true);
        const e = err as APICallError;
        expect(e.statusCode).toBe(c.status);
        expect(e.isRetryable).toBe(c.retryable);
        const body = expectOpenAIErrorBody(e.responseBody);
        if (c.code) expect(body.code).toBe(c.code);
        if (c.type) expect(body.type).toBe(c.type);
        expect(e.message).toBe(body.message);
        expect(e.responseBody).not.toContain(UPSTREAM_KEY);
        return e;
      };
      const jsonErr = await generateText({ model: lm, prompt, headers, maxRetries: 0 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      const e = check(jsonErr);
      expect(e.responseHeaders?.['x-request-id']).toBeTruthy();
      // A routed failure tells which upstreams were tried.
      if (c.status === 502) {
        expect(e.responseHeaders?.['x-router-attempts']).toBe('2');
        expect(e.responseHeaders?.['x-router-trail']).toBe('oa/gpt-4o=http_500,ob/gpt-4o=http_503');
      }
      if (c.status === 429) expect(e.responseHeaders?.['retry-after']).toBe('20');
      if (c.status === 503) expect(Number(e.responseHeaders?.['retry-after'])).toBeGreaterThan(0);

      const errors: unknown[] = [];
      const stream = streamText({ model: lm, prompt, headers, maxRetries: 0, onError: () => undefined });
      for await (const part of stream.fullStream) if (part.type === 'error') errors.push(part.error);
      expect(errors).toHaveLength(1);
      check(errors[0]);
    });
  }
});

describe('each gateway error as LangChain reports it (status, code, type, message; invoke and stream)', () => {
  type LcError = Error & { status?: number; code?: string | null; type?: string; headers?: Headers };
  for (const c of ERROR_CASES) {
    it(c.name, async () => {
      const { baseURL, model = 'smart', apiKey = CLIENT_KEY } = await c.arrange();
      const headers = c.status === 400 ? { 'x-router-strategy': 'no-such-strategy' } : {};
      const prompt = c.bigPrompt ? 'x'.repeat(8000) : 'hi';
      // Per-call headers go through `configuration.defaultHeaders`: LangChain's per-call request options reach
      // the OpenAI SDK on invoke() only (`options.options`), on stream() as the call options themselves.
      const lc = new ChatOpenAI({
        model,
        apiKey,
        maxRetries: 0,
        configuration: { baseURL, defaultHeaders: headers },
      });
      const check = (err: unknown) => {
        const e = err as LcError;
        expect(e.status).toBe(c.status);
        if (c.code) expect(e.code).toBe(c.code);
        if (c.type) expect(e.type).toBe(c.type);
        expect(e.message).not.toContain(UPSTREAM_KEY);
        expect(e.message.length).toBeGreaterThan(0);
      };
      check(await lc.invoke(prompt).catch((e: unknown) => e));
      check(
        await (async () => {
          for await (const _ of await lc.stream(prompt));
        })().catch((e: unknown) => e),
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------

describe('LangChain ChatOpenAI, wider surface', () => {
  const chat = (baseURL: string, fields: Record<string, unknown> = {}) =>
    new ChatOpenAI({
      model: 'smart',
      apiKey: CLIENT_KEY,
      maxRetries: 0,
      configuration: { baseURL },
      ...fields,
    });

  type LcError = Error & {
    status?: number;
    code?: string | null;
    type?: string;
    param?: string | null;
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

  it('invoke and stream with streamUsage: usage with cache and reasoning details, both ways', async () => {
    const a = await mockOpenAI((req, res) => answerText(req, res, TEXT));
    const { baseURL } = await setup([a]);
    const model = chat(baseURL, { streamUsage: true });
    const msg = await model.invoke('hi');
    expect(msg.content).toBe(TEXT.join(''));
    expect(msg.usage_metadata).toMatchObject({
      input_tokens: 30,
      output_tokens: 12,
      total_tokens: 42,
      input_token_details: { cache_read: 10 },
      output_token_details: { reasoning: 5 },
    });
    let text = '';
    let usage: unknown;
    let chunks = 0;
    for await (const c of await model.stream('hi')) {
      chunks++;
      text += String(c.content);
      if (c.usage_metadata) usage = c.usage_metadata;
    }
    expect(text).toBe(TEXT.join(''));
    expect(chunks).toBeGreaterThanOrEqual(4);
    expect(usage).toMatchObject({
      input_tokens: 30,
      output_tokens: 12,
      input_token_details: { cache_read: 10 },
      output_token_details: { reasoning: 5 },
    });
    expect(a.received[1]!.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
  });

  it('batch: several inputs run as concurrent requests, each answer to its own input', async () => {
    const a = await mockOpenAI((req, res) => {
      const messages = req.body.messages as { content: string }[];
      sendJson(res, 200, completion({ content: `echo ${messages.at(-1)!.content}` }));
    });
    const { gw, baseURL } = await setup([a]);
    const inputs = ['one', 'two', 'three', 'four', 'five'];
    const out = await chat(baseURL).batch(inputs, { maxConcurrency: 5 });
    expect(out.map((m) => m.content)).toEqual(inputs.map((i) => `echo ${i}`));
    expect(a.received).toHaveLength(5);
    const ids = new Set(gw.logs.filter((l) => l.msg === 'request').map((l) => l.reqId));
    expect(ids.size).toBe(5);
  });

  it('bindTools with tool_choice: the choice reaches the upstream in OpenAI shape, the call comes back', async () => {
    const a = await mockOpenAI((req, res) => answerToolCall(req, res, 'get_weather', ['{"city":"Paris"}']));
    const { baseURL } = await setup([a]);
    const weather = {
      type: 'function' as const,
      function: {
        name: 'get_weather',
        description: 'Current weather of a city',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string' } },
          required: ['city'],
        },
      },
    };
    const named = chat(baseURL).bindTools([weather], { tool_choice: 'get_weather' });
    const msg = await named.invoke('Weather in Paris?');
    expect(msg.tool_calls?.[0]).toMatchObject({ name: 'get_weather', args: { city: 'Paris' } });
    expect(a.received[0]!.body.tool_choice).toEqual({ type: 'function', function: { name: 'get_weather' } });

    const required = chat(baseURL).bindTools([weather], { tool_choice: 'required' });
    let streamed = '';
    for await (const c of await required.stream('Weather in Paris?'))
      for (const tc of c.tool_call_chunks ?? []) streamed += tc.args ?? '';
    expect(streamed).toBe('{"city":"Paris"}');
    expect(a.received[1]!.body).toMatchObject({ stream: true, tool_choice: 'required' });
  });

  it('withStructuredOutput: jsonSchema and functionCalling methods both parse', async () => {
    const a = await mockOpenAI((req, res) => {
      if (req.body.response_format) return answerText(req, res, ['{"city":"Paris","celsius":21}']);
      answerToolCall(req, res, 'weather', ['{"city":"Lyon","celsius":18}']);
    });
    const { baseURL } = await setup([a]);
    const schema = {
      type: 'object',
      title: 'weather',
      description: 'Weather of a city',
      properties: { city: { type: 'string' }, celsius: { type: 'number' } },
      required: ['city', 'celsius'],
      additionalProperties: false,
    };
    const viaSchema = chat(baseURL).withStructuredOutput(schema, { method: 'jsonSchema', name: 'weather' });
    expect(await viaSchema.invoke('Paris')).toEqual({ city: 'Paris', celsius: 21 });
    expect(a.received[0]!.body.response_format).toMatchObject({
      type: 'json_schema',
      json_schema: { name: 'weather' },
    });
    const viaTool = chat(baseURL).withStructuredOutput(schema, { method: 'functionCalling' });
    expect(await viaTool.invoke('Lyon')).toEqual({ city: 'Lyon', celsius: 18 });
    expect(a.received[1]!.body).toMatchObject({
      tools: [{ type: 'function', function: { name: 'weather' } }],
      tool_choice: { type: 'function', function: { name: 'weather' } },
    });
    // includeRaw: the raw message keeps the usage.
    const raw = chat(baseURL).withStructuredOutput(schema, { method: 'jsonSchema', includeRaw: true });
    const out = await raw.invoke('Paris');
    expect(out.parsed).toEqual({ city: 'Paris', celsius: 21 });
    expect(out.raw.response_metadata).toBeTruthy();
  });

  it('maxRetries and withRetry: a 502 and a 429 from the gateway are retried and then served', async () => {
    const a = await mockOpenAI((req, res, n) => {
      if (n === 1) return openaiError(res, 500, { message: 'boom', type: 'server_error', code: null });
      if (n === 3)
        return openaiError(
          res,
          429,
          { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded' },
          { 'retry-after': '1' },
        );
      answerText(req, res, TEXT);
    });
    const { baseURL } = await setup([a]);
    const msg = await chat(baseURL, { maxRetries: 1 }).invoke('hi');
    expect(msg.content).toBe(TEXT.join(''));
    expect(a.received).toHaveLength(2);
    const retried = chat(baseURL).withRetry({ stopAfterAttempt: 2 });
    expect((await retried.invoke('hi')).content).toBe(TEXT.join(''));
    expect(a.received).toHaveLength(4);
  });

  it('callbacks: handleLLMNewToken gets tokens as they stream, handleLLMEnd the token usage', async () => {
    const g = gate();
    let waited: 'client' | 'bound' | undefined;
    const a = await mockOpenAI(async (req, res) => {
      sseHead(res);
      sseData(res, [chunk({ role: 'assistant', content: '' }), chunk({ content: 'Hello' })]);
      waited = await g.wait;
      sseData(res, [chunk({ content: ' world' })]);
      sseEnd(res, req, 'stop');
    });
    const { baseURL } = await setup([a]);
    const tokens: string[] = [];
    let end: LLMResult | undefined;
    const handler = BaseCallbackHandler.fromMethods({
      handleLLMNewToken(token: string) {
        tokens.push(token);
        if (token === 'Hello') g.open();
      },
      handleLLMEnd(output: LLMResult) {
        end = output;
      },
    });
    // .stream(), not invoke() with `streaming: true`: that path estimates its usage with a tokenizer fetched
    // from the internet (a LangChain trait), which the loopback guard refuses.
    const model = chat(baseURL, { streamUsage: true, callbacks: [handler] });
    let text = '';
    for await (const c of await model.stream('hi')) text += String(c.content);
    expect(waited).toBe('client');
    expect(text).toBe('Hello world');
    expect(tokens.filter((t) => t !== '')).toEqual(['Hello', ' world']);
    const gen = end!.generations[0]![0] as { message?: { usage_metadata?: Record<string, unknown> } };
    expect(gen.message?.usage_metadata).toMatchObject({ input_tokens: 30, output_tokens: 12 });
  });

  it('signal: aborting mid-stream aborts the upstream request', async () => {
    const a = await mockOpenAI(async (_req, res) => {
      sseHead(res);
      sseData(res, [chunk({ role: 'assistant', content: '' }), chunk({ content: 'first' })]);
      await gate().wait;
      res.end();
    });
    const { gw, baseURL } = await setup([a]);
    const ac = new AbortController();
    const err = await failure(
      (async () => {
        for await (const c of await chat(baseURL).stream('hi', { signal: ac.signal }))
          if (c.content === 'first') ac.abort();
      })(),
    );
    expect(err.name + err.message).toMatch(/abort/i);
    const aborted = await a.abortedOne();
    expect(aborted.body.stream).toBe(true);
    gw.app.server.closeAllConnections();
  });

  it('timeout: the client gives up, and the upstream request is aborted', async () => {
    const a = await mockOpenAI(async (_req, res) => {
      await gate().wait;
      res.destroy();
    });
    const { gw, baseURL } = await setup([a]);
    const err = await failure(chat(baseURL, { timeout: 300 }).invoke('hi'));
    expect(err.name + err.message).toMatch(/time|abort/i);
    await a.abortedOne();
    gw.app.server.closeAllConnections();
  });

  it('errors carry the status, message, code and type of the OpenAI error body', async () => {
    const a = await mockOpenAI((_req, res) =>
      openaiError(res, 400, {
        message: "Invalid value for 'temperature'",
        type: 'invalid_request_error',
        code: 'invalid_value',
        param: 'temperature',
      }),
    );
    const b = await failing(500);
    const { baseURL } = await setup([a, b]);
    const err = await failure(chat(baseURL).invoke('hi'));
    expect(err.status).toBe(400);
    expect(err.message).toContain("Invalid value for 'temperature'");
    expect(err.code).toBe('invalid_value');
    expect(err.type).toBe('invalid_request_error');
    expect(err.param).toBe('temperature');
    expect(b.received).toHaveLength(0);

    const { baseURL: url2 } = await setup([await failing(500), await failing(503)]);
    const e502 = await failure(chat(url2).invoke('hi'));
    expect(e502.status).toBe(502);
    expect(e502.code).toBe('upstream_error');
    expect(e502.type).toBe('upstream_error');
    expect(e502.message).toContain('oa/gpt-4o');
    const s502 = await failure(
      (async () => {
        for await (const _ of await chat(url2).stream('hi'));
      })(),
    );
    expect(s502.status).toBe(502);
    expect(s502.code).toBe('upstream_error');
  });
});
