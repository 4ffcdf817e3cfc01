/**
 * What the real client SDKs (openai v6, Vercel `ai` + `@ai-sdk/openai`, `@langchain/openai`) show their users
 * for each outcome the gateway can give, and how their own retries meet the gateway's answers:
 * - every gateway error reaches the openai SDK as the APIError subclass of its status, with `.code`, `.type`,
 *   `.param`, a message a human can act on, and `.requestID` equal to the response's `x-request-id` (the
 *   client's own id echoed when it sent one);
 * - the SDKs' built-in retries: a 429 or 503 carrying `Retry-After` makes the SDK wait that long and no
 *   longer, and its retry is served; a 504 (budget spent) is not retried;
 * - a stream cut after its commit is an error in every SDK (openai `for await` throws an APIError carrying
 *   the upstream's message; Vercel reports an error part and finishReason `error`; LangChain `.stream()`
 *   throws), never a quiet, finished-looking answer;
 * - a 502 whose every attempt failed on the gateway's own setup (a key refused, an account drained) is told
 *   `x-should-retry: false` (the same request would fail the same way), one with a failure of the moment is not;
 * - a request that never reached an upstream (queued behind max_concurrency) is not told `x-should-retry:
 *   false`, and a 429's Retry-After never sends the client away while a candidate it did not try is free;
 * - a client's x-request-id made of safe printable characters (base64 included) is echoed.
 */
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { APICallError, generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  answerOk,
  chunkFrame,
  sendJson,
  thenAnswerOk,
  watchedUpstream,
  type WatchedHandler,
} from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type APIError = InstanceType<typeof OpenAI.APIError>;

type Handler = WatchedHandler;
type Up = Awaited<ReturnType<typeof watchedUpstream>>;
const upstream = (handler: Handler): Promise<Up> => watchedUpstream(track, handler);

const fail500: Handler = (_r, res) =>
  sendJson(res, 500, {
    error: { message: 'the model crashed', type: 'server_error', param: null, code: null },
  });

function provider(name: string, up: Up, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    kind: 'openai',
    base_url: `${up.url}/v1`,
    api_key: `sk-${name}-upstream-secret`,
    models: [{ name: 'm' }],
    ...extra,
  };
}

const CLIENT_KEY = 'client-key-sdk-errors';

async function gateway(
  ups: Array<[string, Up, Record<string, unknown>?]>,
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { api_keys: [CLIENT_KEY] },
      providers: ups.map(([n, u, p]) => provider(n, u, p)),
      routes: { r: { strategy: 'priority', targets: ups.map(([n]) => `${n}/m`) } },
      ...extra,
    }),
  );
}

function sdk(gw: TestGateway, opts: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, ...opts });
}

/** What `call` rejected with; fails the test when it resolved. */
async function rejection<T = APIError>(call: Promise<unknown>): Promise<T> {
  const out = await call.then(
    () => ({ ok: true as const }),
    (e: unknown) => ({ ok: false as const, e }),
  );
  if (out.ok) throw new Error('expected the call to fail, it succeeded');
  return out.e as T;
}

const msgs = [{ role: 'user' as const, content: 'hello' }];

/** The invariants of every error the openai SDK surfaces from the gateway. */
function expectSdkError(
  err: unknown,
  want: {
    cls: new (...a: never[]) => unknown;
    status: number;
    code: string | null;
    type: string;
    param?: string | null;
  },
): APIError {
  expect(err).toBeInstanceOf(OpenAI.APIError);
  expect(err).toBeInstanceOf(want.cls);
  const e = err as APIError;
  expect(e.status).toBe(want.status);
  expect(e.code).toBe(want.code);
  expect(e.type).toBe(want.type);
  if (want.param !== undefined) expect(e.param).toBe(want.param);
  // The id the gateway logged this request under, as the SDK exposes it for a support ticket.
  expect(e.requestID).toBeTruthy();
  expect(e.requestID).toBe(e.headers?.get('x-request-id'));
  // Never a provider key in what the client sees.
  expect(JSON.stringify(e.error ?? null) + e.message).not.toMatch(/upstream-secret/);
  return e;
}

// ---------------------------------------------------------------------------------------------

describe('openai SDK: each gateway error as the SDK shows it', () => {
  it('400 for an impossible field value: BadRequestError naming the field in .param and the message; no upstream called', async () => {
    const a = await upstream(answerOk);
    const gw = await gateway([['a', a]]);
    const err = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs, n: 0 }));
    const e = expectSdkError(err, {
      cls: OpenAI.BadRequestError,
      status: 400,
      code: 'invalid_request',
      type: 'invalid_request_error',
      param: 'n',
    });
    expect(e.message).toMatch(/\bn\b/);
    expect(a.recs).toHaveLength(0);
  });

  it('401 without a valid key: AuthenticationError, code invalid_api_key, not retried', async () => {
    const a = await upstream(answerOk);
    const gw = await gateway([['a', a]]);
    let calls = 0;
    const err = await rejection(
      sdk(gw, {
        apiKey: 'wrong-key',
        maxRetries: 2,
        fetch: (input: string | URL | Request, init?: RequestInit) => {
          calls++;
          return fetch(input, init);
        },
      }).chat.completions.create({ model: 'r', messages: msgs }),
    );
    expectSdkError(err, {
      cls: OpenAI.AuthenticationError,
      status: 401,
      code: 'invalid_api_key',
      type: 'authentication_error',
    });
    expect(calls).toBe(1);
    expect(a.recs).toHaveLength(0);
  });

  it('404 for an unknown model: NotFoundError, code model_not_found, param model, the name in the message', async () => {
    const a = await upstream(answerOk);
    const gw = await gateway([['a', a]]);
    const err = await rejection(sdk(gw).chat.completions.create({ model: 'gpt-nope', messages: msgs }));
    const e = expectSdkError(err, {
      cls: OpenAI.NotFoundError,
      status: 404,
      code: 'model_not_found',
      type: 'invalid_request_error',
      param: 'model',
    });
    expect(e.message).toContain('gpt-nope');
  });

  it('413 for a body past server.body_limit_bytes: an APIError 413 (not a connection error), not retried', async () => {
    const a = await upstream(answerOk);
    const gw = await gateway([['a', a]], { server: { api_keys: [CLIENT_KEY], body_limit_bytes: 4096 } });
    let calls = 0;
    const err = await rejection(
      sdk(gw, {
        maxRetries: 2,
        fetch: (input: string | URL | Request, init?: RequestInit) => {
          calls++;
          return fetch(input, init);
        },
      }).chat.completions.create({
        model: 'r',
        messages: [{ role: 'user', content: 'x'.repeat(512 * 1024) }],
      }),
    );
    const e = expectSdkError(err, {
      cls: OpenAI.APIError,
      status: 413,
      code: 'payload_too_large',
      type: 'invalid_request_error',
    });
    expect(e.message).toMatch(/body_limit_bytes|too large|larger/);
    expect(calls).toBe(1);
    expect(a.recs).toHaveLength(0);
  });

  it('415 for a body that is not JSON: OpenAI-shaped, with its x-request-id', async () => {
    const a = await upstream(answerOk);
    const gw = await gateway([['a', a]]);
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${CLIENT_KEY}`,
        'content-type': 'text/plain',
        'x-request-id': 'req-415',
      },
      body: JSON.stringify({ model: 'r', messages: msgs }),
    });
    const body = (await res.body.json()) as { error: Record<string, unknown> };
    expect(res.statusCode).toBe(415);
    expect(res.headers['x-request-id']).toBe('req-415');
    expect(body.error).toMatchObject({ type: 'invalid_request_error', code: 'unsupported_media_type' });
    expect(String(body.error.message)).toMatch(/application\/json/);
  });

  it('429 when every candidate is rate limited: RateLimitError with Retry-After, naming each upstream', async () => {
    const limited: Handler = (_r, res) =>
      sendJson(
        res,
        429,
        { error: { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' } },
        {
          'retry-after': '7',
        },
      );
    const a = await upstream(limited);
    const b = await upstream(limited);
    const gw = await gateway([
      ['a', a],
      ['b', b],
    ]);
    const err = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    const e = expectSdkError(err, {
      cls: OpenAI.RateLimitError,
      status: 429,
      code: 'rate_limited',
      type: 'rate_limit_error',
    });
    expect(e.headers?.get('retry-after')).toBe('7');
    expect(e.message).toContain('a/m');
    expect(e.message).toContain('b/m');
  });

  it('502 when every attempt failed: InternalServerError upstream_error naming each upstream and its reason', async () => {
    const a = await upstream(fail500);
    const b = await upstream((_r, res) => res.destroy());
    const gw = await gateway([
      ['a', a],
      ['b', b],
    ]);
    const err = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    const e = expectSdkError(err, {
      cls: OpenAI.InternalServerError,
      status: 502,
      code: 'upstream_error',
      type: 'upstream_error',
    });
    expect(e.message).toMatch(/a\/m: [a-z_0-9]+ \(HTTP 500\)/);
    expect(e.message).toMatch(/b\/m: [a-z_]+/);
    expect(e.headers?.get('x-router-attempts')).toBe('2');
  });

  it.each([false, true])(
    '502 when every upstream refused our key or account (stream: %s): x-should-retry false, the SDK does not retry',
    async (stream) => {
      const a = await upstream((_r, res) =>
        sendJson(res, 401, {
          error: { message: 'Incorrect API key provided', type: 'invalid_request_error' },
        }),
      );
      const b = await upstream((_r, res) =>
        sendJson(res, 429, {
          error: {
            message: 'You exceeded your current quota',
            type: 'insufficient_quota',
            code: 'insufficient_quota',
          },
        }),
      );
      const gw = await gateway([
        ['a', a],
        ['b', b],
      ]);
      const err = await rejection(
        sdk(gw, { maxRetries: 2 }).chat.completions.create({ model: 'r', messages: msgs, stream }),
      );
      const e = expectSdkError(err, {
        cls: OpenAI.InternalServerError,
        status: 502,
        code: 'upstream_error',
        type: 'upstream_error',
      });
      expect(e.headers?.get('x-should-retry')).toBe('false');
      expect(e.headers?.get('retry-after')).toBeNull();
      expect([a.recs.length, b.recs.length]).toEqual([1, 1]);
    },
  );

  it('502 with one failure of the moment among them (a 500 beside a 401): retried by the SDK as any 502', async () => {
    const a = await upstream((_r, res) => sendJson(res, 401, { error: { message: 'bad key' } }));
    const b = await upstream(fail500);
    const gw = await gateway([
      ['a', a],
      ['b', b],
    ]);
    const err = await rejection(
      sdk(gw, { maxRetries: 1 }).chat.completions.create({ model: 'r', messages: msgs }),
    );
    expect((err as APIError).status).toBe(502);
    expect((err as APIError).headers?.get('x-should-retry')).toBeNull();
    expect([a.recs.length, b.recs.length]).toEqual([2, 2]);
  });

  it("503 when every breaker is open: no_available_upstream with a Retry-After within the breaker's open_ms", async () => {
    const a = await upstream(fail500);
    const gw = await gateway([['a', a]], {
      circuit_breaker: { failure_threshold: 1, open_ms: 5000, max_open_ms: 5000 },
    });
    await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    const err = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    const e = expectSdkError(err, {
      cls: OpenAI.InternalServerError,
      status: 503,
      code: 'no_available_upstream',
      type: 'no_available_upstream',
    });
    const ra = Number(e.headers?.get('retry-after'));
    expect(ra).toBeGreaterThanOrEqual(4);
    expect(ra).toBeLessThanOrEqual(5);
    expect(a.recs).toHaveLength(1);
  });

  it('504 when the upstream does not answerOk in time: code timeout, x-should-retry false, not retried', async () => {
    const a = await upstream(() => undefined);
    const gw = await gateway([['a', a, { timeouts: { first_byte_ms: 200 } }]]);
    const err = await rejection(
      sdk(gw, { maxRetries: 2 }).chat.completions.create({ model: 'r', messages: msgs }),
    );
    const e = expectSdkError(err, { cls: OpenAI.APIError, status: 504, code: 'timeout', type: 'timeout' });
    expect(e.message).toContain('a/m');
    expect(a.recs).toHaveLength(1);
  });

  it("the client's own x-request-id comes back on an error as the SDK's requestID", async () => {
    const a = await upstream(fail500);
    const gw = await gateway([['a', a]]);
    const err = await rejection(
      sdk(gw, { defaultHeaders: { 'x-request-id': 'trace-7f3a' } }).chat.completions.create({
        model: 'r',
        messages: msgs,
      }),
    );
    expect((err as APIError).requestID).toBe('trace-7f3a');
    const nf = await rejection(
      sdk(gw).chat.completions.create(
        { model: 'zzz', messages: msgs },
        { headers: { 'x-request-id': 'trace-404' } },
      ),
    );
    expect((nf as APIError).requestID).toBe('trace-404');
  });
});

describe("the SDKs' own retries against the gateway's answers", () => {
  it('429 with Retry-After: 1 (every candidate limited): the openai SDK waits about 1 s, once, and its retry is served', async () => {
    const a = await upstream(
      thenAnswerOk((_r, res) =>
        sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': '1' }),
      ),
    );
    const gw = await gateway([['a', a]]);
    const statuses: number[] = [];
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        statuses.push(res.status);
        return res;
      },
    }).chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    expect(statuses).toEqual([429, 200]);
    expect(a.recs).toHaveLength(2);
    const waited = a.recs[1]!.at - a.recs[0]!.at;
    expect(waited).toBeGreaterThanOrEqual(900);
    expect(waited).toBeLessThan(2_500);
    // The SDK says which try this is; the gateway forwards nothing of it to a routed upstream.
    expect(a.recs[1]!.headers['x-stainless-retry-count']).toBeUndefined();
  });

  it('Vercel generateText honours the same Retry-After (1 s, not its own 2 s backoff) and is served', async () => {
    const a = await upstream(
      thenAnswerOk((_r, res) =>
        sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': '1' }),
      ),
    );
    const gw = await gateway([['a', a]]);
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY }).chat('r');
    const result = await generateText({ model, prompt: 'hello', maxRetries: 1 });
    expect(result.text).toBe('ok');
    expect(a.recs).toHaveLength(2);
    const waited = a.recs[1]!.at - a.recs[0]!.at;
    expect(waited).toBeGreaterThanOrEqual(900);
    expect(waited).toBeLessThan(1_900);
  });

  it('one upstream open for errors, the other answering 429 Retry-After 1: told 429 or 503 with Retry-After ≤ 1 s, and the retry is served', async () => {
    const a = await upstream(fail500);
    const b = await upstream(
      thenAnswerOk(
        (_r, res) =>
          sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': '1' }),
        2,
      ),
    );
    const gw = await gateway(
      [
        ['a', a],
        ['b', b],
      ],
      { circuit_breaker: { failure_threshold: 1, open_ms: 30_000 } },
    );
    // a fails (its breaker opens for 30 s), b is rate limited for 1 s.
    const first = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    expect((first as APIError).status).toBe(502);
    expect(a.recs).toHaveLength(1);
    // Only b is left: rate limited, so the client is told to come back when b is.
    const second = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    const e = second as APIError;
    expect([429, 503]).toContain(e.status);
    expect(Number(e.headers?.get('retry-after'))).toBeLessThanOrEqual(1);
    const got = await sdk(gw, { maxRetries: 2 }).chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    expect(a.recs).toHaveLength(1);
  });

  it('503 with two breakers open for different times: Retry-After is the sooner one, and the SDK is served then', async () => {
    const a = await upstream(thenAnswerOk(fail500));
    const b = await upstream(
      thenAnswerOk((_r, res) =>
        sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': '20' }),
      ),
    );
    const gw = await gateway(
      [
        ['a', a],
        ['b', b],
      ],
      { circuit_breaker: { failure_threshold: 1, open_ms: 1000, max_open_ms: 1000 } },
    );
    const first = await rejection(sdk(gw).chat.completions.create({ model: 'r', messages: msgs }));
    expect((first as APIError).status).toBe(502);
    const statuses: Array<[number, string | null]> = [];
    const t0 = performance.now();
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        statuses.push([res.status, res.headers.get('retry-after')]);
        return res;
      },
    }).chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    expect(statuses[0]).toEqual([503, '1']);
    expect(statuses.at(-1)![0]).toBe(200);
    expect(performance.now() - t0).toBeLessThan(3_000);
  });

  it('502 is retried by the openai SDK with its own backoff; every retry is a new request to the route', async () => {
    const a = await upstream(thenAnswerOk(fail500, 2));
    const gw = await gateway([['a', a]], { circuit_breaker: { failure_threshold: 10 } });
    const ids: string[] = [];
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        ids.push(res.headers.get('x-request-id') ?? '');
        return res;
      },
    })
      .chat.completions.create({ model: 'r', messages: msgs })
      .withResponse();
    expect(got.data.choices[0]!.message.content).toBe('ok');
    expect(a.recs).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
    expect(got.request_id).toBe(ids[2]);
  });
});

/** Role, then three words, then the upstream dies as `end` says. */
function cutAfterThree(end: 'error_event' | 'close'): Handler {
  return (r, res) => {
    const m = r.body.model;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunkFrame(m, { role: 'assistant', content: '' }));
    for (const w of ['one ', 'two ', 'three ']) res.write(chunkFrame(m, { content: w }));
    setTimeout(() => {
      if (end === 'error_event') {
        res.end(
          `data: ${JSON.stringify({ error: { message: 'the GPU fell over', type: 'server_error', code: null } })}\n\n`,
        );
      } else res.destroy();
    }, 30);
  };
}

describe('a stream cut after its commit is an error in every SDK, never a finished answer', () => {
  for (const end of ['error_event', 'close'] as const) {
    it(`openai SDK (${end}): for await throws an APIError with the upstream's reason and the request id`, async () => {
      const a = await upstream(cutAfterThree(end));
      const gw = await gateway([['a', a]]);
      const { data: stream, response } = await sdk(gw)
        .chat.completions.create({ model: 'r', messages: msgs, stream: true })
        .withResponse();
      let text = '';
      const finishes: Array<string | null> = [];
      const err = await rejection(
        (async () => {
          for await (const chunk of stream) {
            text += chunk.choices[0]?.delta.content ?? '';
            if (chunk.choices[0]?.finish_reason) finishes.push(chunk.choices[0].finish_reason);
          }
        })(),
      );
      expect(text).toBe('one two three ');
      expect(finishes).toEqual([]);
      expect(err).toBeInstanceOf(OpenAI.APIError);
      const e = err as APIError;
      expect(e.code).toBe('stream_interrupted');
      expect(e.message).toContain('a/m');
      if (end === 'error_event') expect(e.message).toContain('the GPU fell over');
      expect(e.requestID).toBe(response.headers.get('x-request-id'));
      expect(e.requestID).toBeTruthy();
    });

    it(`openai SDK stream() helper (${end}): finalChatCompletion rejects, no finish_reason stop`, async () => {
      const a = await upstream(cutAfterThree(end));
      const gw = await gateway([['a', a]]);
      const runner = sdk(gw).chat.completions.stream({ model: 'r', messages: msgs });
      const err = await rejection(runner.finalChatCompletion());
      expect(err).toBeInstanceOf(OpenAI.APIError);
      expect((err as APIError).code).toBe('stream_interrupted');
    });

    it(`Vercel streamText (${end}): an error part and onError, finishReason error, the partial text kept`, async () => {
      const a = await upstream(cutAfterThree(end));
      const gw = await gateway([['a', a]]);
      const errors: unknown[] = [];
      const result = streamText({
        model: createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY }).chat('r'),
        prompt: 'hello',
        maxRetries: 0,
        onError: ({ error }) => void errors.push(error),
      });
      let text = '';
      const kinds: string[] = [];
      for await (const part of result.fullStream) {
        kinds.push(part.type);
        if (part.type === 'text-delta') text += part.text;
      }
      expect(text).toBe('one two three ');
      expect(kinds).toContain('error');
      expect(errors).toHaveLength(1);
      expect(JSON.stringify(errors[0])).toContain('stream_interrupted');
      expect(await result.finishReason).toBe('error');
    });

    it(`LangChain .stream() (${end}): throws, carrying the gateway's message`, async () => {
      const a = await upstream(cutAfterThree(end));
      const gw = await gateway([['a', a]]);
      const chat = new ChatOpenAI({
        model: 'r',
        apiKey: CLIENT_KEY,
        configuration: { baseURL: `${gw.url}/v1` },
        maxRetries: 0,
      });
      let text = '';
      const err = await rejection<Error>(
        (async () => {
          for await (const chunk of await chat.stream('hello')) text += String(chunk.content);
        })(),
      );
      expect(text).toBe('one two three ');
      expect(err.message).toContain('a/m');
      if (end === 'error_event') expect(err.message).toContain('the GPU fell over');
    });
  }

  it('after a cut the in-flight gauge is back to 0 and the next stream is served whole', async () => {
    const a = await upstream(thenAnswerOk(cutAfterThree('close')));
    const gw = await gateway([['a', a]]);
    await rejection(
      (async () => {
        for await (const _ of await sdk(gw).chat.completions.create({
          model: 'r',
          messages: msgs,
          stream: true,
        }))
          void _;
      })(),
    );
    // The series must exist (the cut request was counted in it) and be back at 0.
    const inflight = async (): Promise<number | undefined> =>
      value(await scrape(gw.url), 'llm_router_inflight_requests', { provider: 'a', model: 'm' });
    await until('inflight back to 0', async () => (await inflight()) === 0, 3_000);
    let text = '';
    for await (const c of await sdk(gw).chat.completions.create({ model: 'r', messages: msgs, stream: true }))
      text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('ok');
    await until('inflight back to 0 after the whole stream', async () => (await inflight()) === 0, 3_000);
  });
});

describe('errors through Vercel and LangChain', () => {
  it('Vercel: 404, 429 and 502 as APICallError with status, retryability and the gateway body', async () => {
    const a = await upstream(fail500);
    const gw = await gateway([['a', a]]);
    const provider = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: CLIENT_KEY });
    const nf = await rejection<APICallError>(
      generateText({ model: provider.chat('nope'), prompt: 'x', maxRetries: 0 }),
    );
    expect(APICallError.isInstance(nf)).toBe(true);
    expect(nf.statusCode).toBe(404);
    expect(nf.isRetryable).toBe(false);
    expect(nf.message).toContain('nope');
    expect(nf.responseHeaders?.['x-request-id']).toBeTruthy();
    const bad = await rejection<APICallError>(
      generateText({ model: provider.chat('r'), prompt: 'x', maxRetries: 0 }),
    );
    expect(bad.statusCode).toBe(502);
    expect(bad.isRetryable).toBe(true);
    expect(bad.message).toContain('a/m');
    expect(bad.data).toMatchObject({ error: { code: 'upstream_error', type: 'upstream_error' } });
  });

  it('LangChain invoke: a 404 is thrown at once (not retried), a 502 carries its status and message', async () => {
    const a = await upstream(fail500);
    const gw = await gateway([['a', a]], { circuit_breaker: { failure_threshold: 10 } });
    let calls = 0;
    const make = (model: string, maxRetries: number) =>
      new ChatOpenAI({
        model,
        apiKey: CLIENT_KEY,
        maxRetries,
        configuration: {
          baseURL: `${gw.url}/v1`,
          fetch: (input: string | URL | Request, init?: RequestInit) => {
            calls++;
            return fetch(input, init);
          },
        },
      });
    const nf = await rejection<Error & { status?: number }>(make('nope', 2).invoke('x'));
    expect(nf.status).toBe(404);
    expect(nf.message).toContain('nope');
    expect(calls).toBe(1);
    calls = 0;
    const bad = await rejection<Error & { status?: number }>(make('r', 0).invoke('x'));
    expect(bad.status).toBe(502);
    expect(bad.message).toContain('a/m');
    expect(calls).toBe(1);
  });
});

describe('request ids', () => {
  it('a client x-request-id in base64 (with +, / and =) is echoed, on an answerOk and on an error', async () => {
    const a = await upstream(thenAnswerOk(fail500));
    const gw = await gateway([['a', a]], { circuit_breaker: { failure_threshold: 10 } });
    const id = 'q1W2+e3R/t5Y==';
    const err = await rejection(
      sdk(gw).chat.completions.create({ model: 'r', messages: msgs }, { headers: { 'x-request-id': id } }),
    );
    expect((err as APIError).requestID).toBe(id);
    const ok = await sdk(gw)
      .chat.completions.create({ model: 'r', messages: msgs }, { headers: { 'x-request-id': id } })
      .withResponse();
    expect(ok.request_id).toBe(id);
  });
});

describe('a request that never reached its upstream is not told "do not retry"', () => {
  it('max_concurrency busy past first_byte_ms (queue_timeout): the SDK may retry and is served once the slot frees', async () => {
    const a = await upstream((r, res, n) => {
      if (n > 0) return answerOk(r, res);
      // The first request holds the only connection for 700 ms.
      const m = r.body.model;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(m, { role: 'assistant', content: '' }));
      res.write(chunkFrame(m, { content: 'long ' }));
      setTimeout(() => res.end(`${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`), 700);
    });
    const gw = await gateway([['a', a, { max_concurrency: 1, timeouts: { first_byte_ms: 300 } }]]);
    const holder = (async () => {
      let t = '';
      for await (const c of await sdk(gw).chat.completions.create({
        model: 'r',
        messages: msgs,
        stream: true,
      }))
        t += c.choices[0]?.delta.content ?? '';
      return t;
    })();
    await until('the first stream holds the connection', () => a.recs.length === 1);
    const seen: Array<[number, string | null]> = [];
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        seen.push([res.status, res.headers.get('x-should-retry')]);
        return res;
      },
    })
      .chat.completions.create({ model: 'r', messages: msgs })
      .then(
        (c) => c.choices[0]!.message.content,
        (e: unknown) => e,
      );
    expect(await holder).toBe('long ');
    // The first answerOk was the queue's timeout: whatever its status, it must not forbid the retry.
    expect(seen[0]?.[1]).not.toBe('false');
    expect(got).toBe('ok');
  });
});

describe('Retry-After tells the truth about when a retry can be served', () => {
  it('max_attempts spent on rate-limited upstreams while another candidate was never tried: no long wait is asked', async () => {
    const limited =
      (s: string): Handler =>
      (_r, res) =>
        sendJson(res, 429, { error: { message: 'slow down', type: 'requests' } }, { 'retry-after': s });
    const a = await upstream(limited('5'));
    const b = await upstream(limited('8'));
    const c = await upstream(answerOk);
    const gw = await gateway(
      [
        ['a', a],
        ['b', b],
        ['c', c],
      ],
      { routing: { max_attempts: 2 } },
    );
    const seen: Array<[number, string | null]> = [];
    const t0 = performance.now();
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        seen.push([res.status, res.headers.get('retry-after')]);
        return res;
      },
    }).chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    // c was free all along: the client is not sent away for a's 5 s cooldown.
    expect(Number(seen[0]?.[1] ?? 0)).toBeLessThanOrEqual(1);
    expect(performance.now() - t0).toBeLessThan(2_500);
    expect(c.recs).toHaveLength(1);
  });
});

describe('more clients and surfaces', () => {
  it('LangChain invoke with streaming: true on a cut stream rejects instead of returning the partial text', async () => {
    const a = await upstream(cutAfterThree('close'));
    const gw = await gateway([['a', a]]);
    const chat = new ChatOpenAI({
      model: 'r',
      apiKey: CLIENT_KEY,
      streaming: true,
      maxRetries: 0,
      configuration: { baseURL: `${gw.url}/v1` },
    });
    const err = await rejection<Error>(chat.invoke('hello'));
    expect(err.message).toContain('a/m');
  });

  it('embeddings through the openai SDK: 502 and 503 carry code, request id and Retry-After as chat does', async () => {
    const a = await upstream(fail500);
    const gw = track(
      await startGateway({
        server: { api_keys: [CLIENT_KEY] },
        providers: [provider('a', a, { models: [{ name: 'e', capabilities: ['embeddings'] }] })],
        routes: { emb: { targets: ['a/e'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 3000, max_open_ms: 3000 },
      }),
    );
    const bad = await rejection(sdk(gw).embeddings.create({ model: 'emb', input: 'hi' }));
    const e = expectSdkError(bad, {
      cls: OpenAI.InternalServerError,
      status: 502,
      code: 'upstream_error',
      type: 'upstream_error',
    });
    expect(e.message).toContain('a/e');
    const open = await rejection(sdk(gw).embeddings.create({ model: 'emb', input: 'hi' }));
    const o = expectSdkError(open, {
      cls: OpenAI.InternalServerError,
      status: 503,
      code: 'no_available_upstream',
      type: 'no_available_upstream',
    });
    expect(Number(o.headers?.get('retry-after'))).toBeGreaterThanOrEqual(2);
    expect(Number(o.headers?.get('retry-after'))).toBeLessThanOrEqual(3);
    expect(a.recs).toHaveLength(1);
  });
});
