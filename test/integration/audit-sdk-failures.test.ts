/**
 * Audit: what each client SDK (openai 6, Vercel `ai` + `@ai-sdk/openai` `.chat()`, `@langchain/openai`
 * ChatOpenAI) surfaces when the gateway is driven into each failure mode, JSON and streaming:
 * - every upstream 500: 502 `upstream_error` after failover, one gateway call per SDK call (no retries asked);
 * - every breaker open: 503 `no_available_upstream` with Retry-After, no upstream called;
 * - every upstream timing out: 504 `timeout` with `x-should-retry: false`, which the openai SDK honours;
 * - a 429 with Retry-After on every candidate: 429 with Retry-After, the SDK's own retry waits that long and
 *   is served;
 * - per-minute budgets (`rpm: 1`) spent: 429 `rate_limit_error` with Retry-After and no upstream call;
 * - a stream cut after its first content: the SDK's iterator throws after delivering the text before the cut;
 *   the wire carries an SSE error event and no `[DONE]`;
 * - a 200 then an error (or a close) before any content: invisible failover, one clean answer;
 * - the client aborting mid-stream: the upstream request is closed promptly;
 * - an Anthropic upstream answering 529 `overloaded_error`, or an `error` event mid-stream;
 * - the `x-router-*` headers on the error responses (APIError.headers).
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { APICallError, generateText, jsonSchema, RetryError, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  anthropicSseFrame,
  claudeClosing,
  claudeOpening,
  claudeTextDelta,
} from '../helpers/anthropic-route.js';
import {
  answerOk,
  chunkFrame,
  sendJson,
  thenAnswerOk,
  watchedUpstream,
  type WatchedHandler,
  type WatchedRequest,
} from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Json = Record<string, unknown>;
type Rec = WatchedRequest;
type Handler = WatchedHandler;
type Up = Awaited<ReturnType<typeof watchedUpstream>>;
type APIError = InstanceType<typeof OpenAI.APIError>;

const KEY = 'client-key-audit-sdk-failures';
const CLAUDE = 'claude-haiku-4-5';

const timers = new Set<NodeJS.Timeout>();
track({ close: () => timers.forEach((t) => clearInterval(t)) });

const upstream = (handler: Handler): Promise<Up> => watchedUpstream(track, handler);

// ------------------------------------------------------------------------------------------------
// Upstream behaviours

const fail500: Handler = (_r, res) =>
  sendJson(res, 500, {
    error: { message: 'the model crashed', type: 'server_error', param: null, code: null },
  });

const hang: Handler = () => undefined;

const limited = (retryAfterS: number): Handler => {
  return (_r, res) =>
    sendJson(
      res,
      429,
      {
        error: { message: 'Rate limit reached for requests', type: 'requests', code: 'rate_limit_exceeded' },
      },
      { 'retry-after': String(retryAfterS) },
    );
};

/** Role, "Hello", then (30 ms later) the connection is destroyed: a stream cut after its first content. */
const cutAfterFirst: Handler = (r, res) => {
  const m = r.body.model;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'Hello' }));
  setTimeout(() => res.destroy(), 30);
};

/** Role, "Hello", then half of the next frame, then the connection is destroyed. */
const cutMidFrame: Handler = (r, res) => {
  const m = r.body.model;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const next = chunkFrame(m, { content: ' world, and more' });
  res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'Hello' }));
  setTimeout(() => {
    res.write(next.slice(0, Math.floor(next.length / 2)));
    setTimeout(() => res.destroy(), 30);
  }, 30);
};

/** What an upstream does before its first content delta, failing: the ways a 200 can still be no answer. */
const preContentFailures: Record<string, Handler> = {
  'a 200 then an error event': (r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
    setTimeout(
      () =>
        res.end(
          `data: ${JSON.stringify({ error: { message: 'the GPU fell over', type: 'server_error', code: null } })}\n\n`,
        ),
      20,
    );
  },
  'a 200 then a close before any content': (r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
    setTimeout(() => res.destroy(), 20);
  },
  'a 200 then [DONE] with no content and no finish_reason': (r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(`${chunkFrame(r.body.model, { role: 'assistant', content: '' })}data: [DONE]\n\n`);
  },
};

/** A live stream: role, "Hello", then a word every 100 ms for up to 10 s (until the gateway closes it). */
const liveStream: Handler = (r, res) => {
  const m = r.body.model;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'Hello' }));
  let i = 0;
  const t = setInterval(() => {
    if (res.destroyed || res.writableEnded) return clearInterval(t);
    if (++i > 100) {
      clearInterval(t);
      res.end(`${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`);
      return;
    }
    res.write(chunkFrame(m, { content: ` w${i}` }));
  }, 100);
  timers.add(t);
};

// Anthropic dialect

const overloaded529: Handler = (_r, res) =>
  sendJson(res, 529, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });

/** Claude's answerOk "ok", JSON or SSE. */
function claudeAnswer(r: Rec, res: ServerResponse): void {
  if (r.body.stream === true) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(claudeOpening() + claudeTextDelta('ok') + claudeClosing(1));
    return;
  }
  sendJson(res, 200, {
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    model: CLAUDE,
    content: [{ type: 'text', text: 'ok' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 5, output_tokens: 1 },
  });
}

/** Claude streams "Hello", then an `error` event (overloaded) mid-stream. */
const claudeErrorMidStream: Handler = (_r, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(claudeOpening() + claudeTextDelta('Hello'));
  setTimeout(
    () =>
      res.end(
        anthropicSseFrame({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
      ),
    30,
  );
};

/** Claude opens the message, then an `error` event before any content (test/fixtures/anthropic/error-stream.txt). */
const claudeErrorBeforeContent: Handler = (_r, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(
    claudeOpening() +
      anthropicSseFrame({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
  );
};

// ------------------------------------------------------------------------------------------------
// Gateways

function openaiProvider(name: string, up: Up, model: Json = { name: 'm' }, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${up.url}/v1`,
    api_key: `sk-${name}-upstream-secret-1234`,
    models: [model],
    ...extra,
  };
}

function anthropicProvider(name: string, up: Up): Json {
  return {
    name,
    kind: 'anthropic',
    base_url: up.url,
    api_key: 'sk-ant-upstream-secret-1234',
    models: [{ name: CLAUDE }],
  };
}

async function gatewayOf(providers: Json[], targets: string[], extra: Json = {}): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { api_keys: [KEY] },
      providers,
      routes: { r: { strategy: 'priority', targets } },
      ...extra,
    }),
  );
}

/** A priority route over openai-dialect upstreams named a, b, ... each serving model `m`. */
function gateway(ups: Up[], extra: Json = {}, models?: Json[]): Promise<TestGateway> {
  const names = ups.map((_u, i) => String.fromCharCode(97 + i));
  return gatewayOf(
    ups.map((u, i) => openaiProvider(names[i]!, u, models?.[i] ?? { name: 'm' })),
    names.map((n) => `${n}/m`),
    extra,
  );
}

// ------------------------------------------------------------------------------------------------
// The three SDKs, driven the same way

const SDKS = ['openai', 'vercel', 'langchain'] as const;
type Sdk = (typeof SDKS)[number];
const MODES = ['json', 'stream'] as const;
type Mode = (typeof MODES)[number];

/** One HTTP exchange the SDK had with the gateway, as its fetch saw it. */
interface Exchange {
  readonly status: number;
  readonly headers: Headers;
  readonly startedAt: number;
  readonly answeredAt: number;
}

/** What the SDK user saw: the text delivered, the error thrown (or reported), and every gateway exchange. */
interface Seen {
  text: string;
  error: unknown;
  /** The error's HTTP status as the SDK exposes it. */
  status: number | undefined;
  message: string;
  exchanges: Exchange[];
}

function countingFetch(log: Exchange[]) {
  return async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const startedAt = performance.now();
    const res = await fetch(input, init);
    log.push({ status: res.status, headers: res.headers, startedAt, answeredAt: performance.now() });
    return res;
  };
}

function statusOf(sdk: Sdk, err: unknown): number | undefined {
  if (err === undefined || err === null) return undefined;
  if (sdk === 'vercel') {
    const e = RetryError.isInstance(err) ? err.lastError : err;
    return APICallError.isInstance(e) ? e.statusCode : undefined;
  }
  const s = (err as { status?: unknown }).status;
  return typeof s === 'number' ? s : undefined;
}

function messageOf(err: unknown): string {
  if (err === undefined || err === null) return '';
  const e = RetryError.isInstance(err) ? err.lastError : err;
  return e instanceof Error ? e.message : JSON.stringify(e);
}

const PROMPT = 'hello';

async function drive(
  sdk: Sdk,
  gw: TestGateway,
  mode: Mode,
  opts: { maxRetries?: number; abortAfterFirst?: boolean } = {},
): Promise<Seen> {
  const exchanges: Exchange[] = [];
  const f = countingFetch(exchanges);
  const maxRetries = opts.maxRetries ?? 0;
  const ac = new AbortController();
  let text = '';
  let error: unknown;
  const onText = (t: string): void => {
    text += t;
    if (opts.abortAfterFirst === true && text !== '') ac.abort();
  };
  try {
    if (sdk === 'openai') {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY, maxRetries, fetch: f });
      const messages = [{ role: 'user' as const, content: PROMPT }];
      if (mode === 'json') {
        const got = await client.chat.completions.create({ model: 'r', messages });
        text = got.choices[0]?.message.content ?? '';
      } else {
        const s = await client.chat.completions.create(
          { model: 'r', messages, stream: true },
          { signal: ac.signal },
        );
        for await (const c of s) onText(c.choices[0]?.delta.content ?? '');
      }
    } else if (sdk === 'vercel') {
      const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY, fetch: f }).chat('r');
      if (mode === 'json') {
        text = (await generateText({ model, prompt: PROMPT, maxRetries })).text;
      } else {
        const result = streamText({
          model,
          prompt: PROMPT,
          maxRetries,
          abortSignal: ac.signal,
          onError: () => undefined,
        });
        for await (const part of result.fullStream) {
          if (part.type === 'text-delta') onText(part.text);
          if (part.type === 'error') error ??= part.error;
        }
      }
    } else {
      const chat = new ChatOpenAI({
        model: 'r',
        apiKey: KEY,
        maxRetries,
        configuration: { baseURL: `${gw.url}/v1`, fetch: f },
      });
      if (mode === 'json') {
        text = String((await chat.invoke(PROMPT)).content);
      } else {
        for await (const c of await chat.stream(PROMPT, { signal: ac.signal })) onText(String(c.content));
      }
    }
  } catch (err) {
    error = err;
  }
  return { text, error, status: statusOf(sdk, error), message: messageOf(error), exchanges };
}

/** The openai SDK's error, with the invariants every gateway error shows it. */
function openaiError(seen: Seen, status: number, code: string): APIError {
  expect(seen.error).toBeInstanceOf(OpenAI.APIError);
  const e = seen.error as APIError;
  expect(e.status).toBe(status);
  expect(e.code).toBe(code);
  expect(e.requestID).toBeTruthy();
  expect(e.requestID).toBe(e.headers?.get('x-request-id'));
  expect(JSON.stringify(e.error ?? null) + e.message).not.toMatch(/upstream-secret/);
  return e;
}

async function rawStream(gw: TestGateway): Promise<{ status: number; text: string }> {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: PROMPT }], stream: true }),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, text: await res.text() };
}

// ------------------------------------------------------------------------------------------------

describe('every upstream answers 500: 502 upstream_error after failover', () => {
  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: an error of status 502 naming both upstreams; one gateway call, each upstream tried once`, async () => {
        const [a, b] = [await upstream(fail500), await upstream(fail500)];
        const gw = await gateway([a, b], { circuit_breaker: { failure_threshold: 10 } });
        const seen = await drive(sdk, gw, mode);
        expect(seen.error).toBeDefined();
        expect(seen.text).toBe('');
        expect(seen.status).toBe(502);
        expect(seen.message).toContain('a/m');
        expect(seen.message).toContain('b/m');
        expect(seen.exchanges.map((x) => x.status)).toEqual([502]);
        expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
        if (sdk === 'openai') {
          const e = openaiError(seen, 502, 'upstream_error');
          expect(e).toBeInstanceOf(OpenAI.InternalServerError);
          expect(e.type).toBe('upstream_error');
        }
        if (sdk === 'vercel') {
          const e = seen.error as APICallError;
          expect(APICallError.isInstance(e)).toBe(true);
          expect(e.data).toMatchObject({ error: { code: 'upstream_error' } });
        }
      });
});

describe('every breaker open: 503 no_available_upstream', () => {
  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: 503 with Retry-After within open_ms, no upstream called`, async () => {
        const [a, b] = [await upstream(fail500), await upstream(fail500)];
        const gw = await gateway([a, b], {
          circuit_breaker: { failure_threshold: 1, open_ms: 20_000, max_open_ms: 20_000 },
        });
        const trip = await drive('openai', gw, 'json');
        expect(trip.status).toBe(502);
        const seen = await drive(sdk, gw, mode);
        expect(seen.status).toBe(503);
        expect(seen.text).toBe('');
        expect(seen.message).toMatch(/a\/m|b\/m|open|available/i);
        expect(seen.exchanges.map((x) => x.status)).toEqual([503]);
        const ra = Number(seen.exchanges[0]!.headers.get('retry-after'));
        expect(ra).toBeGreaterThanOrEqual(1);
        expect(ra).toBeLessThanOrEqual(20);
        expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
        if (sdk === 'openai') openaiError(seen, 503, 'no_available_upstream');
      });
});

describe('every upstream times out: 504 timeout, not retried by the openai SDK', () => {
  const slow = { timeouts: { first_byte_ms: 300 } };
  const twoHanging = async (): Promise<{ a: Up; b: Up; gw: TestGateway }> => {
    const [a, b] = [await upstream(hang), await upstream(hang)];
    const gw = await gatewayOf(
      [openaiProvider('a', a, { name: 'm' }, slow), openaiProvider('b', b, { name: 'm' }, slow)],
      ['a/m', 'b/m'],
      { circuit_breaker: { failure_threshold: 10 } },
    );
    return { a, b, gw };
  };

  for (const mode of MODES)
    it(`openai ${mode} with maxRetries 2: one gateway call (x-should-retry: false honoured), each upstream once`, async () => {
      const { a, b, gw } = await twoHanging();
      const seen = await drive('openai', gw, mode, { maxRetries: 2 });
      const e = openaiError(seen, 504, 'timeout');
      expect(e.type).toBe('timeout');
      expect(e.headers?.get('x-should-retry')).toBe('false');
      expect(seen.exchanges).toHaveLength(1);
      expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
      // Both upstream requests were let go.
      await until('both attempts closed', () => a.recs[0]!.closed && b.recs[0]!.closed, 3_000);
    });

  for (const sdk of ['vercel', 'langchain'] as const)
    for (const mode of MODES)
      it(`${sdk} ${mode} (maxRetries 0): surfaces status 504 naming the upstreams`, async () => {
        const { a, b, gw } = await twoHanging();
        const seen = await drive(sdk, gw, mode);
        expect(seen.status).toBe(504);
        expect(seen.text).toBe('');
        expect(seen.message).toContain('a/m');
        expect(seen.exchanges.map((x) => [x.status, x.headers.get('x-should-retry')])).toEqual([
          [504, 'false'],
        ]);
        expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
      });

  // Client-side behaviour, recorded (not a gateway fault): neither SDK reads x-should-retry.
  for (const sdk of ['vercel', 'langchain'] as const)
    it(`${sdk} json with maxRetries 1 retries the 504 anyway (the SDK ignores x-should-retry)`, async () => {
      const { a, gw } = await twoHanging();
      const seen = await drive(sdk, gw, 'json', { maxRetries: 1 });
      expect(seen.status).toBe(504);
      expect(seen.exchanges.map((x) => x.status)).toEqual([504, 504]);
      expect(a.recs).toHaveLength(2);
    });
});

describe('every candidate answers 429 with Retry-After: 1', () => {
  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode} (maxRetries 1): gateway 429 with Retry-After 1, the SDK waits ~1 s and its retry is served`, async () => {
        const [a, b] = [await upstream(thenAnswerOk(limited(1))), await upstream(thenAnswerOk(limited(1)))];
        const gw = await gateway([a, b]);
        const seen = await drive(sdk, gw, mode, { maxRetries: 1 });
        expect(seen.error).toBeUndefined();
        expect(seen.text).toBe('ok');
        expect(seen.exchanges.map((x) => x.status)).toEqual([429, 200]);
        const first = seen.exchanges[0]!;
        expect(first.headers.get('retry-after')).toBe('1');
        const waited = seen.exchanges[1]!.startedAt - first.answeredAt;
        expect(waited).toBeGreaterThanOrEqual(900);
        expect(waited).toBeLessThan(3_500);
        // The first call tried both; the retry was served by the first (its cooldown over).
        expect(a.recs.length + b.recs.length).toBe(3);
      });

  it('openai: the 429 is a RateLimitError with type rate_limit_error, and x-router-* name both attempts', async () => {
    const [a, b] = [await upstream(limited(1)), await upstream(limited(1))];
    const gw = await gateway([a, b]);
    const seen = await drive('openai', gw, 'json');
    const e = openaiError(seen, 429, 'rate_limited');
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    expect(e.type).toBe('rate_limit_error');
    expect(e.headers?.get('retry-after')).toBe('1');
    expect(e.headers?.get('x-router-attempts')).toBe('2');
    expect(e.headers?.get('x-router-trail')).toMatch(/a\/m=[a-z_]+.*b\/m=[a-z_]+/);
  });
});

describe('per-minute budgets (rpm: 1) spent: 429 rate_limit_error, no upstream call', () => {
  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: the second request is a 429 with Retry-After, the upstreams see only the first`, async () => {
        const [a, b] = [await upstream(answerOk), await upstream(answerOk)];
        const gw = await gateway([a, b], {}, [
          { name: 'm', rpm: 1 },
          { name: 'm', rpm: 1 },
        ]);
        // One request each: both budgets spent.
        expect((await drive('openai', gw, 'json')).text).toBe('ok');
        expect((await drive('openai', gw, 'json')).text).toBe('ok');
        expect(a.recs.length + b.recs.length).toBe(2);
        const seen = await drive(sdk, gw, mode);
        expect(seen.status).toBe(429);
        expect(seen.text).toBe('');
        expect(seen.exchanges.map((x) => x.status)).toEqual([429]);
        const h = seen.exchanges[0]!.headers;
        const ra = Number(h.get('retry-after'));
        // The window frees one request 60 s after the last was sent: no sooner.
        expect(ra).toBeGreaterThanOrEqual(50);
        expect(ra).toBeLessThanOrEqual(60);
        expect(h.get('x-router-attempts')).toBe('0');
        expect(a.recs.length + b.recs.length).toBe(2);
        if (sdk === 'openai') {
          const e = seen.error as APIError;
          expect(e).toBeInstanceOf(OpenAI.RateLimitError);
          expect(e.type).toBe('rate_limit_error');
        }
      });
});

describe('a stream cut after its first content', () => {
  it('on the wire: "Hello", then an SSE error event, no [DONE]', async () => {
    const a = await upstream(cutAfterFirst);
    const gw = await gateway([a]);
    const { status, text } = await rawStream(gw);
    expect(status).toBe(200);
    expect(text).toContain('"Hello"');
    const events = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: '))
      .map((e) => e.slice(6));
    expect(events.at(-1)).not.toBe('[DONE]');
    expect(text).not.toContain('[DONE]');
    const last = JSON.parse(events.at(-1)!) as { error?: Json };
    expect(last.error).toMatchObject({ message: expect.stringContaining('a/m') as unknown });
  });

  it('cut in the middle of a frame: the half frame is not relayed, the error event follows "Hello"', async () => {
    const a = await upstream(cutMidFrame);
    const gw = await gateway([a]);
    const { status, text } = await rawStream(gw);
    expect(status).toBe(200);
    expect(text).toContain('"Hello"');
    expect(text).not.toContain('world');
    expect(text).not.toContain('[DONE]');
    const events = text.split('\n\n').filter((e) => e.trim() !== '');
    for (const e of events) expect(() => JSON.parse(e.replace(/^data: /, ''))).not.toThrow();
    expect(events.at(-1)).toMatch(/^data: \{"error":/);
  });

  for (const sdk of SDKS)
    it(`${sdk}: the iterator throws after delivering "Hello" (not a quiet end)`, async () => {
      const a = await upstream(cutAfterFirst);
      const gw = await gateway([a]);
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
      expect(seen.message).toContain('a/m');
      expect(seen.exchanges.map((x) => x.status)).toEqual([200]);
      expect(a.recs).toHaveLength(1);
      if (sdk === 'openai') expect((seen.error as APIError).code).toBe('stream_interrupted');
    });

  for (const sdk of SDKS)
    it(`${sdk}: a cut in the middle of a frame throws too, after "Hello"`, async () => {
      const a = await upstream(cutMidFrame);
      const gw = await gateway([a]);
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
    });
});

describe('an upstream that fails before its first content: invisible failover', () => {
  for (const [what, first] of Object.entries(preContentFailures))
    for (const sdk of SDKS)
      it(`${sdk} stream, ${what}: one clean "ok" from b`, async () => {
        const [a, b] = [await upstream(first), await upstream(answerOk)];
        const gw = await gateway([a, b], { circuit_breaker: { failure_threshold: 10 } });
        const seen = await drive(sdk, gw, 'stream');
        expect(seen.error).toBeUndefined();
        expect(seen.text).toBe('ok');
        expect(seen.exchanges).toHaveLength(1);
        const h = seen.exchanges[0]!.headers;
        expect(seen.exchanges[0]!.status).toBe(200);
        expect(h.get('x-router-provider')).toBe('b');
        expect(h.get('x-router-attempts')).toBe('2');
        expect(h.get('x-router-trail')).toMatch(/^a\/m=[a-z_]+$/);
        expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
      });

  for (const sdk of SDKS)
    it(`${sdk} json, a 200 whose body is an error object: one clean "ok" from b`, async () => {
      const a = await upstream((_r, res) =>
        sendJson(res, 200, { error: { message: 'the GPU fell over', type: 'server_error', code: null } }),
      );
      const b = await upstream(answerOk);
      const gw = await gateway([a, b]);
      const seen = await drive(sdk, gw, 'json');
      expect(seen.error).toBeUndefined();
      expect(seen.text).toBe('ok');
      expect(seen.exchanges.map((x) => x.status)).toEqual([200]);
      expect(seen.exchanges[0]!.headers.get('x-router-provider')).toBe('b');
      expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
    });
});

describe('the client aborts mid-stream', () => {
  for (const sdk of SDKS)
    it(`${sdk}: after "Hello" the signal aborts; the upstream request is closed promptly`, async () => {
      const a = await upstream(liveStream);
      const gw = await gateway([a]);
      const t0 = performance.now();
      const seen = await drive(sdk, gw, 'stream', { abortAfterFirst: true });
      expect(seen.text.startsWith('Hello')).toBe(true);
      await until('the upstream request closed', () => a.recs[0]?.closed === true, 2_000);
      // Well before the upstream's own 10 s.
      expect(performance.now() - t0).toBeLessThan(5_000);
      expect(a.recs).toHaveLength(1);
    });
});

describe('an Anthropic upstream', () => {
  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: 529 overloaded_error from the only upstream is a 502 naming it, one call`, async () => {
        const anth = await upstream(overloaded529);
        const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`], {
          circuit_breaker: { failure_threshold: 10 },
        });
        const seen = await drive(sdk, gw, mode);
        expect(seen.status).toBe(502);
        expect(seen.text).toBe('');
        expect(seen.message).toContain(`anth/${CLAUDE}`);
        expect(seen.message).toMatch(/529|overloaded/i);
        expect(seen.exchanges.map((x) => x.status)).toEqual([502]);
        expect(anth.recs).toHaveLength(1);
        expect(seen.message).not.toContain('upstream-secret');
        if (sdk === 'openai') openaiError(seen, 502, 'upstream_error');
      });

  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: 529 then an OpenAI-dialect upstream: invisible failover, one clean answer`, async () => {
        const anth = await upstream(overloaded529);
        const b = await upstream(answerOk);
        const gw = await gatewayOf(
          [anthropicProvider('anth', anth), openaiProvider('b', b)],
          [`anth/${CLAUDE}`, 'b/m'],
        );
        const seen = await drive(sdk, gw, mode);
        expect(seen.error).toBeUndefined();
        expect(seen.text).toBe('ok');
        expect(seen.exchanges.map((x) => x.status)).toEqual([200]);
        expect(seen.exchanges[0]!.headers.get('x-router-trail')).toMatch(
          new RegExp(`^anth/${CLAUDE}=[a-z_0-9]+$`),
        );
        expect([anth.recs.length, b.recs.length]).toEqual([1, 1]);
      });

  for (const sdk of SDKS)
    it(`${sdk} stream: an error event before any content fails over to the next Claude upstream, invisibly`, async () => {
      const first = await upstream(claudeErrorBeforeContent);
      const second = await upstream(claudeAnswer);
      const gw = await gatewayOf(
        [anthropicProvider('anth', first), anthropicProvider('anth2', second)],
        [`anth/${CLAUDE}`, `anth2/${CLAUDE}`],
      );
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.error).toBeUndefined();
      expect(seen.text).toBe('ok');
      expect(seen.exchanges[0]!.headers.get('x-router-provider')).toBe('anth2');
      expect([first.recs.length, second.recs.length]).toEqual([1, 1]);
    });

  it('wire: an error event mid-stream becomes an OpenAI-shaped error event after "Hello", no [DONE]', async () => {
    const anth = await upstream(claudeErrorMidStream);
    const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`]);
    const { status, text } = await rawStream(gw);
    expect(status).toBe(200);
    expect(text).toContain('"Hello"');
    expect(text).not.toContain('[DONE]');
    const events = text.split('\n\n').filter((e) => e.trim() !== '');
    const last = JSON.parse(events.at(-1)!.replace(/^data: /, '')) as { error?: Json };
    expect(last.error).toBeDefined();
    expect(String(last.error!.message)).toMatch(/overloaded/i);
    expect(String(last.error!.message)).toContain(`anth/${CLAUDE}`);
    expect(text).not.toContain('event: error'); // OpenAI's shape, not Anthropic's framing
  });

  for (const sdk of SDKS)
    it(`${sdk} stream: an error event mid-stream throws after delivering "Hello"`, async () => {
      const anth = await upstream(claudeErrorMidStream);
      const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`]);
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
      expect(seen.message).toMatch(/overloaded/i);
      expect(anth.recs).toHaveLength(1);
    });
});

describe('x-router-* headers on error responses (openai APIError.headers)', () => {
  const routed = (e: APIError): Record<string, string | null> => {
    const out: Record<string, string | null> = {};
    for (const k of [
      'x-request-id',
      'x-router-strategy',
      'x-router-attempts',
      'x-router-trail',
      'x-router-provider',
      'x-router-model',
    ])
      out[k] = e.headers?.get(k) ?? null;
    return out;
  };

  it('502: the strategy, 2 attempts, a trail naming both, and the upstream last tried', async () => {
    const [a, b] = [await upstream(fail500), await upstream(fail500)];
    const gw = await gateway([a, b], { circuit_breaker: { failure_threshold: 10 } });
    for (const mode of MODES) {
      const h = routed(openaiError(await drive('openai', gw, mode), 502, 'upstream_error'));
      expect(h['x-router-strategy']).toBe('priority');
      expect(h['x-router-attempts']).toBe('2');
      expect(h['x-router-trail']).toMatch(/^a\/m=[a-z_0-9]+,b\/m=[a-z_0-9]+$/);
      expect(h['x-router-provider']).toBe('b');
      expect(h['x-router-model']).toBe('m');
    }
  });

  it('504: the strategy, the attempts and their trail, x-should-retry false', async () => {
    const a = await upstream(hang);
    const gw = await gatewayOf(
      [openaiProvider('a', a, { name: 'm' }, { timeouts: { first_byte_ms: 200 } })],
      ['a/m'],
    );
    for (const mode of MODES) {
      const e = openaiError(await drive('openai', gw, mode), 504, 'timeout');
      const h = routed(e);
      expect(h['x-router-strategy']).toBe('priority');
      expect(h['x-router-attempts']).toBe('1');
      expect(h['x-router-trail']).toMatch(/^a\/m=[a-z_]*timeout[a-z_]*$/);
      expect(h['x-router-provider']).toBe('a');
      expect(e.headers?.get('x-should-retry')).toBe('false');
    }
  });

  it('503 (every breaker open) and 429 (rpm spent): the strategy, 0 attempts, an empty trail, a request id', async () => {
    const a = await upstream(fail500);
    const gw = await gateway([a], { circuit_breaker: { failure_threshold: 1, open_ms: 20_000 } });
    await drive('openai', gw, 'json');
    for (const mode of MODES) {
      const h = routed(openaiError(await drive('openai', gw, mode), 503, 'no_available_upstream'));
      expect(h['x-router-strategy']).toBe('priority');
      expect(h['x-router-attempts']).toBe('0');
      expect(h['x-router-trail']).toBe('');
    }
    const b = await upstream(answerOk);
    const gw2 = await gateway([b], {}, [{ name: 'm', rpm: 1 }]);
    await drive('openai', gw2, 'json');
    for (const mode of MODES) {
      const seen = await drive('openai', gw2, mode);
      const e = seen.error as APIError;
      expect(e).toBeInstanceOf(OpenAI.RateLimitError);
      expect(e.requestID).toBeTruthy();
      const h = routed(e);
      expect(h['x-router-strategy']).toBe('priority');
      expect(h['x-router-attempts']).toBe('0');
      expect(h['x-router-trail']).toBe('');
    }
    expect(b.recs).toHaveLength(1);
  });
});

describe('timeouts around a stream', () => {
  /** Role, "Hello", then nothing more (the connection stays open). */
  const helloThenStall: Handler = (r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(
      chunkFrame(r.body.model, { role: 'assistant', content: '' }) +
        chunkFrame(r.body.model, { content: 'Hello' }),
    );
  };
  /** Headers at once (as vLLM sends them), then no body at all. */
  const headersThenNothing: Handler = (_r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.flushHeaders();
  };
  /** The role chunk, then nothing: no content ever. */
  const roleThenStall: Handler = (r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
  };
  const bounded = (ms: number): Json => ({ timeouts: { first_byte_ms: ms, idle_ms: ms } });

  it('wire: an idle upstream after "Hello" (idle_ms) ends the stream with an error event, no [DONE]', async () => {
    const a = await upstream(helloThenStall);
    const gw = await gatewayOf([openaiProvider('a', a, { name: 'm' }, bounded(300))], ['a/m']);
    const { status, text } = await rawStream(gw);
    expect(status).toBe(200);
    expect(text).toContain('"Hello"');
    expect(text).not.toContain('[DONE]');
    const events = text.split('\n\n').filter((e) => e.trim() !== '');
    expect(events.at(-1)).toMatch(/^data: \{"error":/);
    await until('the stalled upstream request closed', () => a.recs[0]!.closed, 2_000);
  });

  for (const sdk of SDKS)
    it(`${sdk}: an idle upstream after "Hello" makes the iterator throw after "Hello"`, async () => {
      const a = await upstream(helloThenStall);
      const gw = await gatewayOf([openaiProvider('a', a, { name: 'm' }, bounded(300))], ['a/m']);
      const seen = await drive(sdk, gw, 'stream', { maxRetries: 2 });
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
      expect(seen.exchanges).toHaveLength(1);
      expect(a.recs).toHaveLength(1);
    });

  for (const mode of MODES)
    it(`openai ${mode}: headers sent then no body past first_byte_ms is a 504, not retried`, async () => {
      const a = await upstream(headersThenNothing);
      const gw = await gatewayOf([openaiProvider('a', a, { name: 'm' }, bounded(300))], ['a/m']);
      const seen = await drive('openai', gw, mode, { maxRetries: 2 });
      const e = openaiError(seen, 504, 'timeout');
      expect(e.headers?.get('x-should-retry')).toBe('false');
      expect(seen.exchanges).toHaveLength(1);
      expect(a.recs).toHaveLength(1);
    });

  for (const sdk of SDKS)
    it(`${sdk} stream: a role chunk then silence (no content) fails over invisibly to b`, async () => {
      const a = await upstream(roleThenStall);
      const b = await upstream(answerOk);
      const gw = await gatewayOf(
        [openaiProvider('a', a, { name: 'm' }, bounded(300)), openaiProvider('b', b)],
        ['a/m', 'b/m'],
      );
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.error).toBeUndefined();
      expect(seen.text).toBe('ok');
      expect(seen.exchanges[0]!.headers.get('x-router-provider')).toBe('b');
      expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
    });

  for (const mode of MODES)
    it(`openai ${mode}: one upstream 500, the other timing out: a 502 (not 504), which the SDK may retry`, async () => {
      const a = await upstream(fail500);
      const b = await upstream(hang);
      const gw = await gatewayOf(
        [openaiProvider('a', a), openaiProvider('b', b, { name: 'm' }, bounded(300))],
        ['a/m', 'b/m'],
        { circuit_breaker: { failure_threshold: 10 } },
      );
      const seen = await drive('openai', gw, mode, { maxRetries: 1 });
      const e = openaiError(seen, 502, 'upstream_error');
      expect(e.headers?.get('x-should-retry')).toBeNull();
      expect(seen.exchanges.map((x) => x.status)).toEqual([502, 502]);
      expect([a.recs.length, b.recs.length]).toEqual([2, 2]);
    });
});

describe('Retry-After variants from the upstreams', () => {
  it('a says Retry-After 3, b says 1: the gateway says 1 and the openai retry is served by b', async () => {
    const a = await upstream(thenAnswerOk(limited(3)));
    const b = await upstream(thenAnswerOk(limited(1)));
    const gw = await gateway([a, b]);
    const seen = await drive('openai', gw, 'json', { maxRetries: 1 });
    expect(seen.error).toBeUndefined();
    expect(seen.text).toBe('ok');
    expect(seen.exchanges.map((x) => [x.status, x.headers.get('retry-after')])).toEqual([
      [429, '1'],
      [200, null],
    ]);
    expect(seen.exchanges[1]!.headers.get('x-router-provider')).toBe('b');
    // a was cooling down: skipped, not asked again.
    expect([a.recs.length, b.recs.length]).toEqual([1, 2]);
  });

  it('Retry-After 120 on every candidate: told 120 s, and a second call meanwhile asks no upstream again', async () => {
    const [a, b] = [await upstream(limited(120)), await upstream(limited(120))];
    const gw = await gateway([a, b]);
    for (let i = 0; i < 2; i++) {
      const seen = await drive('openai', gw, 'json');
      const e = openaiError(seen, 429, 'rate_limited');
      expect(e).toBeInstanceOf(OpenAI.RateLimitError);
      const ra = Number(e.headers?.get('retry-after'));
      expect(ra).toBeGreaterThanOrEqual(115);
      expect(ra).toBeLessThanOrEqual(120);
    }
    expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
  });

  it('Retry-After as an HTTP date 2 s ahead: the gateway answers seconds, at most 2', async () => {
    const when = (): string => new Date(Date.now() + 2_000).toUTCString();
    const dated: Handler = (_r, res) =>
      sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': when() });
    const [a, b] = [await upstream(dated), await upstream(dated)];
    const gw = await gateway([a, b]);
    const seen = await drive('openai', gw, 'json');
    const e = openaiError(seen, 429, 'rate_limited');
    const ra = e.headers?.get('retry-after') ?? '';
    expect(ra).toMatch(/^\d+$/);
    expect(Number(ra)).toBeGreaterThanOrEqual(1);
    expect(Number(ra)).toBeLessThanOrEqual(3);
  });

  it("retry-after-ms: 300 (OpenAI's header) on every candidate: a 429 whose retry the SDK makes soon, and is served", async () => {
    const ms: Handler = (_r, res) =>
      sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after-ms': '300' });
    const [a, b] = [await upstream(thenAnswerOk(ms)), await upstream(thenAnswerOk(ms))];
    const gw = await gateway([a, b]);
    const seen = await drive('openai', gw, 'json', { maxRetries: 1 });
    expect(seen.error).toBeUndefined();
    expect(seen.text).toBe('ok');
    expect(seen.exchanges.map((x) => x.status)).toEqual([429, 200]);
    const h = seen.exchanges[0]!.headers;
    // A client is told when to come back: Retry-After (seconds, rounded up) and/or retry-after-ms.
    const told =
      h.get('retry-after-ms') !== null
        ? Number(h.get('retry-after-ms'))
        : Number(h.get('retry-after')) * 1000;
    expect(told).toBeGreaterThanOrEqual(250);
    expect(told).toBeLessThanOrEqual(1_000);
  });
});

describe('an Anthropic upstream: rate limits and cuts', () => {
  const claudeLimited: Handler = (_r, res) =>
    sendJson(
      res,
      429,
      {
        type: 'error',
        error: {
          type: 'rate_limit_error',
          message: 'Number of request tokens has exceeded your per-minute rate limit',
        },
      },
      { 'retry-after': '1' },
    );
  const claudeCut: Handler = (_r, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(claudeOpening() + claudeTextDelta('Hello'));
    setTimeout(() => res.destroy(), 30);
  };

  for (const sdk of SDKS)
    for (const mode of MODES)
      it(`${sdk} ${mode}: Claude's 429 rate_limit_error with retry-after 1 is a gateway 429 (Retry-After 1) whose retry is served`, async () => {
        const anth = await upstream((r, res, n) =>
          n === 0 ? claudeLimited(r, res, n) : claudeAnswer(r, res),
        );
        const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`]);
        const seen = await drive(sdk, gw, mode, { maxRetries: 1 });
        expect(seen.error).toBeUndefined();
        expect(seen.text).toBe('ok');
        expect(seen.exchanges.map((x) => [x.status, x.headers.get('retry-after')])).toEqual([
          [429, '1'],
          [200, null],
        ]);
        const waited = seen.exchanges[1]!.startedAt - seen.exchanges[0]!.answeredAt;
        expect(waited).toBeGreaterThanOrEqual(900);
        expect(anth.recs).toHaveLength(2);
      });

  for (const sdk of SDKS)
    it(`${sdk} stream: Claude's connection dropped after "Hello" makes the iterator throw after "Hello"`, async () => {
      const anth = await upstream(claudeCut);
      const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`]);
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
      expect(seen.message).toContain(`anth/${CLAUDE}`);
    });
});

describe('more failure combinations', () => {
  for (const sdk of SDKS)
    it(`${sdk}: a stream cut after "Hello" is not failed over to b (no second answerOk spliced in)`, async () => {
      const a = await upstream(cutAfterFirst);
      const b = await upstream(answerOk);
      const gw = await gateway([a, b]);
      const seen = await drive(sdk, gw, 'stream');
      expect(seen.text).toBe('Hello');
      expect(seen.error).toBeDefined();
      expect(b.recs).toHaveLength(0);
    });

  it('a breaker open for 10 s and the other upstream past its rpm (60 s): told to come back within 10 s', async () => {
    const a = await upstream(fail500);
    const b = await upstream(answerOk);
    const gw = await gateway(
      [a, b],
      { circuit_breaker: { failure_threshold: 1, open_ms: 10_000, max_open_ms: 10_000 } },
      [{ name: 'm' }, { name: 'm', rpm: 1 }],
    );
    // a fails (open for 10 s), b serves and spends its budget.
    expect((await drive('openai', gw, 'json')).text).toBe('ok');
    const seen = await drive('openai', gw, 'json');
    expect([429, 503]).toContain(seen.status);
    const ra = Number(seen.exchanges[0]!.headers.get('retry-after'));
    expect(ra).toBeGreaterThanOrEqual(1);
    expect(ra).toBeLessThanOrEqual(10);
    expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
  });

  it('a cooling down after its own 429 (Retry-After 5) and b past its rpm: a 429 with Retry-After within 5 s', async () => {
    const a = await upstream(limited(5));
    const b = await upstream(answerOk);
    const gw = await gateway([a, b], {}, [{ name: 'm' }, { name: 'm', rpm: 1 }]);
    expect((await drive('openai', gw, 'json')).text).toBe('ok');
    const seen = await drive('openai', gw, 'json');
    const e = seen.error as APIError;
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    const ra = Number(e.headers?.get('retry-after'));
    expect(ra).toBeGreaterThanOrEqual(1);
    expect(ra).toBeLessThanOrEqual(5);
    expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
  });

  for (const sdk of SDKS)
    it(`${sdk}: aborting an Anthropic-translated stream after "Hello" closes Claude's request promptly`, async () => {
      const anth = await upstream((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(claudeOpening() + claudeTextDelta('Hello'));
        let i = 0;
        const t = setInterval(() => {
          if (res.destroyed || res.writableEnded || ++i > 100) return clearInterval(t);
          res.write(claudeTextDelta(` w${i}`));
        }, 100);
        timers.add(t);
      });
      const gw = await gatewayOf([anthropicProvider('anth', anth)], [`anth/${CLAUDE}`]);
      const seen = await drive(sdk, gw, 'stream', { abortAfterFirst: true });
      expect(seen.text.startsWith('Hello')).toBe(true);
      await until("Claude's request closed", () => anth.recs[0]?.closed === true, 2_000);
    });
});

describe('429s without a usable Retry-After', () => {
  it('every candidate answers 429 with no Retry-After header: a 429 that still tells the client when to come back', async () => {
    const bare: Handler = (_r, res) =>
      sendJson(res, 429, {
        error: { message: 'Rate limit reached for requests', type: 'requests', code: 'rate_limit_exceeded' },
      });
    const [a, b] = [await upstream(bare), await upstream(bare)];
    const gw = await gateway([a, b]);
    const seen = await drive('openai', gw, 'json');
    const e = openaiError(seen, 429, 'rate_limited');
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    const ra = e.headers?.get('retry-after');
    expect(ra).toMatch(/^\d+$/);
    expect(Number(ra)).toBeGreaterThanOrEqual(1);
  });

  it('every candidate out of quota (429 insufficient_quota): a 502 upstream_error naming both, no Retry-After, x-should-retry false', async () => {
    const quota: Handler = (_r, res) =>
      sendJson(res, 429, {
        error: {
          message: 'You exceeded your current quota, please check your plan and billing details.',
          type: 'insufficient_quota',
          code: 'insufficient_quota',
        },
      });
    const [a, b] = [await upstream(quota), await upstream(quota)];
    const gw = await gateway([a, b], { circuit_breaker: { failure_threshold: 10 } });
    const seen = await drive('openai', gw, 'json');
    const e = openaiError(seen, 502, 'upstream_error');
    expect(e.message).toContain('a/m');
    expect(e.message).toContain('b/m');
    expect(e.headers?.get('retry-after')).toBeNull();
    // No retry can succeed: the openai SDK is told so. LangChain reads no x-should-retry and retries a 502.
    expect(e.headers?.get('x-should-retry')).toBe('false');
    const lc = await drive('langchain', gw, 'json', { maxRetries: 1 });
    expect(lc.exchanges.map((x) => x.status)).toEqual([502, 502]);
  });
});

describe('a stream cut inside a tool call (Vercel streamText with an executable tool)', () => {
  it('the cut is reported as an error and the half-sent call is not run as if complete', async () => {
    const a = await upstream((r, res) => {
      const m = r.body.model;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        chunkFrame(m, { role: 'assistant', content: null }) +
          chunkFrame(m, {
            tool_calls: [
              { index: 0, id: 'call_1', type: 'function', function: { name: 'weather', arguments: '' } },
            ],
          }) +
          chunkFrame(m, { tool_calls: [{ index: 0, function: { arguments: '{"city":"Paris"}' } }] }),
      );
      setTimeout(() => res.destroy(), 30);
    });
    const gw = await gateway([a]);
    const runs: unknown[] = [];
    const result = streamText({
      model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY }).chat('r'),
      prompt: 'weather in Paris?',
      maxRetries: 0,
      tools: {
        weather: tool({
          inputSchema: jsonSchema<{ city: string }>({
            type: 'object',
            properties: { city: { type: 'string' } },
            required: ['city'],
          }),
          execute: (input) => {
            runs.push(input);
            return Promise.resolve('sunny');
          },
        }),
      },
      onError: () => undefined,
    });
    const kinds: string[] = [];
    for await (const part of result.fullStream) kinds.push(part.type);
    expect(kinds).toContain('error');
    // @ai-sdk/openai's flush finishes an unfinished tool call: it must not be run after the error part.
    expect({ kinds, runs }).toMatchObject({ runs: [] });
  });
});
