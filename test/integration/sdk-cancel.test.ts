/**
 * Clients that stop, the way each SDK stops: the openai SDK (controller.abort(), `signal`, `timeout`,
 * breaking out of `for await`), the Vercel AI SDK (`abortSignal`), LangChain (`signal`, `timeout`) and fetch
 * with an AbortController; before the headers, after the first chunk, mid-stream, during a failover, while
 * the LLM router is asked, on an Anthropic-translated stream and on embeddings. For each: the upstream request
 * is closed promptly, the log line's status (499 before any answer, 200 once a stream began), the in-flight
 * gauge back to 0, the breaker not charged, no error-level log, and the next request served. Also the
 * openai SDK's own retries against the gateway's 502, 503, 504 and 429.
 */
import type { ServerResponse } from 'node:http';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
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
  watchedUpstream,
  type WatchedHandler,
  type WatchedRequest,
} from '../helpers/mock-upstream.js';
import { anthropicSseFrame } from '../helpers/anthropic-route.js';
import { scrape, select } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
onlyLoopbackFetch();

type Rec = WatchedRequest;
type Handler = WatchedHandler;
type Up = Awaited<ReturnType<typeof watchedUpstream>>;
const upstream = (handler: Handler): Promise<Up> => watchedUpstream(track, handler);

const timers = new Set<NodeJS.Timeout>();
track({ close: () => timers.forEach((t) => clearInterval(t)) });

/** Holds the request open, answering nothing (until the gateway closes it). */
const hang: Handler = () => undefined;

/** A slow stream: the role chunk at once, then one word every 100 ms for 10 s. */
function slowStream(r: Rec, res: ServerResponse): void {
  const m = r.body.model;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame(m, { role: 'assistant', content: '' }));
  let i = 0;
  const t = setInterval(() => {
    if (res.destroyed || res.writableEnded) return clearInterval(t);
    if (++i > 100) {
      clearInterval(t);
      res.end(`${chunkFrame(m, {}, 'stop')}data: [DONE]\n\n`);
      return;
    }
    res.write(chunkFrame(m, { content: `w${i} ` }));
  }, 100);
  timers.add(t);
}

/** A role chunk, then nothing: an upstream still thinking, its stream held back by the gateway. */
function roleThenHang(r: Rec, res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame(r.body.model, { role: 'assistant', content: '' }));
}

function answer(r: Rec, res: ServerResponse): void {
  if (r.path.endsWith('/embeddings')) {
    sendJson(res, 200, {
      object: 'list',
      data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
      model: String(r.body.model),
      usage: { prompt_tokens: 2, total_tokens: 2 },
    });
    return;
  }
  answerOk(r, res);
}

/** The first `n` requests go to `first`, the rest are answered. */
function thenAnswer(first: Handler, n = 1): Handler {
  return (r, res, i) => (i < n ? first(r, res, i) : answer(r, res));
}

function provider(name: string, up: Up, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    kind: 'openai',
    base_url: `${up.url}/v1`,
    api_key: `sk-${name}-upstream`,
    models: [{ name: 'm' }, { name: 'e', capabilities: ['embeddings'] }],
    ...extra,
  };
}

async function gateway(ups: Array<[string, Up]>, routes?: Record<string, unknown>): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: ups.map(([n, u]) => provider(n, u)),
      routes: routes ?? {
        r: { strategy: 'priority', targets: ups.map(([n]) => `${n}/m`) },
        emb: { strategy: 'priority', targets: ups.map(([n]) => `${n}/e`) },
      },
    }),
  );
}

function sdk(gw: TestGateway, opts: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0, ...opts });
}

const requestLines = (gw: TestGateway) => gw.logs.filter((l) => l.msg === 'request');

async function closedSoon(up: Up, i = 0): Promise<void> {
  await until(`upstream request #${i} closed`, () => up.recs[i]?.closed === true, 2_000);
}

interface Status {
  upstreams: Array<{
    id: string;
    in_flight: number;
    breaker: { state: string; consecutive_failures: number };
  }>;
}
async function status(gw: TestGateway): Promise<Status> {
  const res = await request(`${gw.url}/router/status`);
  return (await res.body.json()) as Status;
}

/** Every invariant of a client's cancel once the gateway is at rest. */
async function afterCancel(
  gw: TestGateway,
  opts: { lines: number; status: number; ids?: string[]; charged?: Record<string, number> },
): Promise<void> {
  await until('request lines', () => requestLines(gw).length >= opts.lines, 3_000);
  const lines = requestLines(gw);
  expect(lines.map((l) => l.status)).toEqual(Array(opts.lines).fill(opts.status));
  await until(
    'inflight back to 0',
    async () => select(await scrape(gw.url), 'llm_router_inflight_requests').every((s) => s.value === 0),
    3_000,
  );
  const st = await status(gw);
  for (const u of st.upstreams) {
    expect(u.in_flight, u.id).toBe(0);
    expect(u.breaker.consecutive_failures, u.id).toBe(opts.charged?.[u.id] ?? 0);
  }
  expect(gw.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
}

const msgs = [{ role: 'user' as const, content: 'hello' }];

describe('openai SDK', () => {
  it('stream.controller.abort() after the first content chunk: upstream closed, logged 200, next one served', async () => {
    const a = await upstream(thenAnswer(slowStream));
    const gw = await gateway([['a', a]]);
    const client = sdk(gw);
    const stream = await client.chat.completions.create({ model: 'r', messages: msgs, stream: true });
    let got = '';
    try {
      for await (const c of stream) {
        got += c.choices[0]?.delta?.content ?? '';
        if (got.includes('w2')) stream.controller.abort();
      }
    } catch (e) {
      expect(String((e as Error).name)).toMatch(/Abort/);
    }
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 200 });
    expect(requestLines(gw)[0]!.error).toBe('client_closed');
    const next = await client.chat.completions.create({ model: 'r', messages: msgs });
    expect(next.choices[0]!.message.content).toBe('ok');
  });

  it('breaking out of for-await mid-stream closes the upstream request (200)', async () => {
    const a = await upstream(thenAnswer(slowStream));
    const gw = await gateway([['a', a]]);
    const client = sdk(gw);
    const stream = await client.chat.completions.create({ model: 'r', messages: msgs, stream: true });
    let n = 0;
    for await (const c of stream) if ((c.choices[0]?.delta?.content ?? '') !== '' && ++n === 3) break;
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 200 });
  });

  it('signal aborted while a stream is held before its first content (role chunk only): 499', async () => {
    const a = await upstream(thenAnswer(roleThenHang));
    const gw = await gateway([['a', a]]);
    const client = sdk(gw);
    const ac = new AbortController();
    const p = client.chat.completions
      .create({ model: 'r', messages: msgs, stream: true }, { signal: ac.signal })
      .then(
        () => 'resolved',
        (e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)),
      );
    await until('upstream called', () => a.recs.length === 1);
    await new Promise((r) => setTimeout(r, 150));
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 499 });
    expect(
      (await client.chat.completions.create({ model: 'r', messages: msgs })).choices[0]!.message.content,
    ).toBe('ok');
  });

  it('timeout: 300 against a slower upstream, maxRetries 0: upstream closed, 499, breaker clean', async () => {
    const a = await upstream(thenAnswer(hang));
    const gw = await gateway([['a', a]]);
    const err = await sdk(gw, { timeout: 300 })
      .chat.completions.create({ model: 'r', messages: msgs })
      .catch((e: Error) => e);
    expect(err).toBeInstanceOf(OpenAI.APIConnectionTimeoutError);
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 499 });
    expect(
      (await sdk(gw).chat.completions.create({ model: 'r', messages: msgs })).choices[0]!.message.content,
    ).toBe('ok');
  });

  it('timeout: 300 with maxRetries 2 on a stream: three upstream calls, each closed, three 499s, breaker clean', async () => {
    const a = await upstream(thenAnswer(hang, 3));
    const gw = await gateway([['a', a]]);
    const err = await sdk(gw, { timeout: 300, maxRetries: 2 })
      .chat.completions.create({ model: 'r', messages: msgs, stream: true })
      .catch((e: Error) => e);
    expect(err).toBeInstanceOf(OpenAI.APIConnectionTimeoutError);
    expect(a.recs).toHaveLength(3);
    for (let i = 0; i < 3; i++) await closedSoon(a, i);
    await afterCancel(gw, { lines: 3, status: 499 });
  });

  it('signal aborted during a failover (a 500, then b slow): b closed, 499, only a charged', async () => {
    const a = await upstream((_r, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const b = await upstream(thenAnswer(hang));
    const gw = await gateway([
      ['a', a],
      ['b', b],
    ]);
    const ac = new AbortController();
    const p = sdk(gw)
      .chat.completions.create({ model: 'r', messages: msgs, stream: true }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    await until('b called', () => b.recs.length === 1);
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(b);
    await afterCancel(gw, { lines: 1, status: 499, charged: { 'a/m': 1 } });
    expect(requestLines(gw)[0]!.attempts).toBeDefined();
  });

  it('embeddings: signal aborted while the upstream thinks: upstream closed, 499, breaker clean', async () => {
    const a = await upstream(thenAnswer(hang));
    const gw = await gateway([['a', a]]);
    const ac = new AbortController();
    const p = sdk(gw)
      .embeddings.create({ model: 'emb', input: 'hello' }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    await until('upstream called', () => a.recs.length === 1);
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 499 });
    const next = await sdk(gw).embeddings.create({ model: 'emb', input: 'hello', encoding_format: 'float' });
    expect(next.data[0]!.embedding).toEqual([0.1, 0.2]);
  });

  it('signal aborted while the LLM router call of a tiered route runs: router call closed, 499, not counted', async () => {
    const rt = await upstream(thenAnswer(hang));
    const b = await upstream(answer);
    const gw = await gateway(
      [
        ['rt', rt],
        ['b', b],
      ],
      {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['rt/m'], balanced: ['b/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 10_000 },
        },
      },
    );
    const ac = new AbortController();
    const p = sdk(gw)
      .chat.completions.create({ model: 'auto', messages: msgs, stream: true }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    await until('router called', () => rt.recs.length === 1);
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(rt);
    await afterCancel(gw, { lines: 1, status: 499 });
    expect(b.recs).toHaveLength(0);
    const m = await scrape(gw.url);
    expect(select(m, 'llm_router_llm_router_requests_total').reduce((s, x) => s + x.value, 0)).toBe(0);
  });

  it('abort mid-stream on an Anthropic-translated stream: upstream closed, 200', async () => {
    const anth = await upstream((r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        anthropicSseFrame({
          type: 'message_start',
          message: {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            model: String(r.body.model),
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: 5, output_tokens: 1 },
          },
        }) +
          anthropicSseFrame({
            type: 'content_block_start',
            index: 0,
            content_block: { type: 'text', text: '' },
          }),
      );
      let i = 0;
      const t = setInterval(() => {
        if (res.destroyed || res.writableEnded || ++i > 100) return clearInterval(t);
        res.write(
          anthropicSseFrame({
            type: 'content_block_delta',
            index: 0,
            delta: { type: 'text_delta', text: `w${i} ` },
          }),
        );
      }, 100);
      timers.add(t);
    });
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'anth',
            kind: 'anthropic',
            base_url: anth.url,
            api_key: 'sk-ant-x',
            models: [{ name: 'claude-haiku-4-5' }],
          },
        ],
        routes: { r: { targets: ['anth/claude-haiku-4-5'] } },
      }),
    );
    const stream = await sdk(gw).chat.completions.create({ model: 'r', messages: msgs, stream: true });
    let got = '';
    try {
      for await (const c of stream) {
        got += c.choices[0]?.delta?.content ?? '';
        if (got.includes('w2')) stream.controller.abort();
      }
    } catch {
      /* aborted */
    }
    await closedSoon(anth);
    await afterCancel(gw, { lines: 1, status: 200 });
  });
});

describe('Vercel AI SDK and LangChain', () => {
  it('streamText abortSignal before the first content: upstream closed, 499', async () => {
    const a = await upstream(thenAnswer(roleThenHang));
    const gw = await gateway([['a', a]]);
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r');
    const ac = new AbortController();
    const result = streamText({ model, prompt: 'hi', abortSignal: ac.signal, onError: () => undefined });
    const consumed = (async () => {
      try {
        for await (const _ of result.fullStream) void _;
      } catch {
        /* aborted */
      }
    })();
    await until('upstream called', () => a.recs.length === 1);
    ac.abort();
    await consumed;
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 499 });
  });

  it('generateText abortSignal while a failover target hangs: closed, 499, only the failed one charged', async () => {
    const a = await upstream((_r, res) => sendJson(res, 503, { error: { message: 'overloaded' } }));
    const b = await upstream(thenAnswer(hang));
    const gw = await gateway([
      ['a', a],
      ['b', b],
    ]);
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' }).chat('r');
    const ac = new AbortController();
    const p = generateText({ model, prompt: 'hi', abortSignal: ac.signal, maxRetries: 0 }).catch(
      (e: Error) => e.name,
    );
    await until('b called', () => b.recs.length === 1);
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(b);
    await afterCancel(gw, { lines: 1, status: 499, charged: { 'a/m': 1 } });
  });

  it('LangChain stream with signal, aborted mid-stream: upstream closed, 200', async () => {
    const a = await upstream(thenAnswer(slowStream));
    const gw = await gateway([['a', a]]);
    const chat = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      configuration: { baseURL: `${gw.url}/v1` },
      maxRetries: 0,
    });
    const ac = new AbortController();
    let got = '';
    try {
      for await (const c of await chat.stream('hi', { signal: ac.signal })) {
        got += String(c.content);
        if (got.includes('w2')) ac.abort();
      }
    } catch {
      /* aborted */
    }
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 200 });
  });

  it('LangChain timeout on invoke against a hanging upstream: upstream closed, 499', async () => {
    const a = await upstream(thenAnswer(hang));
    const gw = await gateway([['a', a]]);
    const chat = new ChatOpenAI({
      model: 'r',
      apiKey: 'k',
      configuration: { baseURL: `${gw.url}/v1` },
      maxRetries: 0,
      timeout: 300,
    });
    await expect(chat.invoke('hi')).rejects.toThrow();
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 499 });
  });

  it('fetch with an AbortController right after the headers of a committed stream: 200, closed', async () => {
    const a = await upstream(thenAnswer(slowStream));
    const gw = await gateway([['a', a]]);
    const ac = new AbortController();
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: msgs, stream: true }),
      signal: ac.signal,
    });
    expect(res.status).toBe(200);
    ac.abort();
    await closedSoon(a);
    await afterCancel(gw, { lines: 1, status: 200 });
  });
});

describe('the openai SDK retrying the gateway', () => {
  it('502 (every attempt failed): maxRetries 2 makes three client calls, each trying the upstream once', async () => {
    const a = await upstream((_r, res) => sendJson(res, 500, { error: { message: 'boom' } }));
    const gw = track(
      await startGateway({
        providers: [provider('a', a)],
        routes: { r: { targets: ['a/m'] } },
        circuit_breaker: { failure_threshold: 10 },
      }),
    );
    const err = await sdk(gw, { maxRetries: 2 })
      .chat.completions.create({ model: 'r', messages: msgs })
      .then(
        () => undefined,
        (e: unknown) => e as InstanceType<typeof OpenAI.APIError>,
      );
    expect(err?.status).toBe(502);
    expect(a.recs).toHaveLength(3);
  });

  it('504 timeout carries x-should-retry: false: the SDK does not retry it', async () => {
    const a = await upstream(hang);
    const gw = track(
      await startGateway({
        providers: [provider('a', a, { timeouts: { first_byte_ms: 200 } })],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const err = await sdk(gw, { maxRetries: 2 })
      .chat.completions.create({ model: 'r', messages: msgs })
      .then(
        () => undefined,
        (e: unknown) => e as InstanceType<typeof OpenAI.APIError>,
      );
    expect(err?.status).toBe(504);
    expect(err?.headers?.get('x-should-retry')).toBe('false');
    expect(a.recs).toHaveLength(1);
  });

  it('429 with Retry-After (every candidate rate limited): the SDK waits and its retry is served', async () => {
    const a = await upstream(
      thenAnswer((_r, res) =>
        sendJson(res, 429, { error: { message: 'slow down' } }, { 'retry-after': '1' }),
      ),
    );
    const gw = await gateway([['a', a]]);
    const statuses: number[] = [];
    const client = sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        statuses.push(res.status);
        return res;
      },
    });
    const got = await client.chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    // The first answer: 429 with Retry-After; the breaker's cooldown answers the retry 503 or serves it.
    expect(statuses[0]).toBe(429);
    expect(statuses[statuses.length - 1]).toBe(200);
    expect(a.recs).toHaveLength(2);
  });

  it('503 (every breaker open) with Retry-After: the SDK retries when told and is served by the probe', async () => {
    const a = await upstream(thenAnswer((_r, res) => sendJson(res, 500, { error: { message: 'boom' } })));
    const gw = track(
      await startGateway({
        providers: [provider('a', a)],
        routes: { r: { targets: ['a/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 1000, max_open_ms: 1000 },
      }),
    );
    expect(
      await sdk(gw)
        .chat.completions.create({ model: 'r', messages: msgs })
        .catch((e: InstanceType<typeof OpenAI.APIError>) => e.status),
    ).toBe(502);
    const statuses: number[] = [];
    const headers: Array<string | null> = [];
    const got = await sdk(gw, {
      maxRetries: 2,
      fetch: async (input: string | URL | Request, init?: RequestInit) => {
        const res = await fetch(input, init);
        statuses.push(res.status);
        headers.push(res.headers.get('retry-after'));
        return res;
      },
    }).chat.completions.create({ model: 'r', messages: msgs });
    expect(got.choices[0]!.message.content).toBe('ok');
    expect(statuses).toEqual([503, 200]);
    expect(headers[0]).toBe('1');
    expect(a.recs).toHaveLength(2);
  });
});

describe('more places to stop', () => {
  it('openai SDK signal on an Anthropic stream still at message_start (no content yet): closed, 499', async () => {
    const anth = await upstream((r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        anthropicSseFrame({
          type: 'message_start',
          message: {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            model: String(r.body.model),
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: 5, output_tokens: 1 },
          },
        }),
      );
    });
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'anth',
            kind: 'anthropic',
            base_url: anth.url,
            api_key: 'sk-ant-x',
            models: [{ name: 'claude-haiku-4-5' }],
          },
        ],
        routes: { r: { targets: ['anth/claude-haiku-4-5'] } },
      }),
    );
    const ac = new AbortController();
    const p = sdk(gw)
      .chat.completions.create({ model: 'r', messages: msgs, stream: true }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    await until('upstream called', () => anth.recs.length === 1);
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    expect(await p).toMatch(/Abort/);
    await closedSoon(anth);
    await afterCancel(gw, { lines: 1, status: 499 });
  });

  it('a request queued for a connection (max_concurrency 1, busy) whose client leaves: 499, the other served, nothing charged', async () => {
    const a = await upstream((r, res, n) => (n === 0 ? slowStream(r, res) : answer(r, res)));
    const gw = track(
      await startGateway({
        providers: [provider('a', a, { max_concurrency: 1 })],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const client = sdk(gw);
    const first = await client.chat.completions.create({ model: 'r', messages: msgs, stream: true });
    const it1 = first[Symbol.asyncIterator]();
    await it1.next();
    const ac = new AbortController();
    const p = client.chat.completions
      .create({ model: 'r', messages: msgs }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    await new Promise((r) => setTimeout(r, 200));
    ac.abort();
    expect(await p).toMatch(/Abort/);
    first.controller.abort();
    await closedSoon(a);
    await until('two lines', () => requestLines(gw).length >= 2, 3_000);
    expect(
      requestLines(gw)
        .map((l) => l.status)
        .sort(),
    ).toEqual([200, 499]);
    expect(a.recs).toHaveLength(1); // the queued one never reached the upstream
    const st = await status(gw);
    expect(st.upstreams[0]!.breaker.consecutive_failures).toBe(0);
    expect(st.upstreams[0]!.in_flight).toBe(0);
    expect(gw.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    expect(
      (await client.chat.completions.create({ model: 'r', messages: msgs })).choices[0]!.message.content,
    ).toBe('ok');
  });

  it('a router call shared by two requests: one leaves, the call goes on and the other is served', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const rt = await upstream((r, res, n) => {
      if (n > 0) return answer(r, res);
      void held.then(() =>
        sendJson(res, 200, {
          id: 'x',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: '{"tier":"fast","reason":"small"}' },
              finish_reason: 'stop',
            },
          ],
          usage: { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 },
        }),
      );
      void r;
    });
    const f = await upstream(answer);
    const b = await upstream(answer);
    const gw = await gateway(
      [
        ['rt', rt],
        ['f', f],
        ['b', b],
      ],
      {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['rt/m', 'f/m'], balanced: ['b/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 10_000 },
        },
      },
    );
    const ac = new AbortController();
    const leaver = sdk(gw)
      .chat.completions.create({ model: 'auto', messages: msgs }, { signal: ac.signal })
      .catch((e: Error) => (e instanceof OpenAI.APIUserAbortError ? 'Abort' : String(e)));
    const stayer = sdk(gw).chat.completions.create({ model: 'auto', messages: msgs });
    await until('router called', () => rt.recs.length === 1);
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    expect(await leaver).toMatch(/Abort/);
    await new Promise((r) => setTimeout(r, 100));
    expect(rt.recs[0]!.closed).toBe(false);
    release();
    const got = await stayer;
    expect(got.choices[0]!.message.content).toBe('ok');
    expect(rt.recs).toHaveLength(2); // the router call, then the request itself on rt (priority)
    await until('two lines', () => requestLines(gw).length >= 2, 3_000);
    expect(
      requestLines(gw)
        .map((l) => l.status)
        .sort(),
    ).toEqual([200, 499]);
  });

  it('Vercel openai(model) (Responses API, passthrough) streamText aborted mid-stream: upstream closed, no error log', async () => {
    const a = await upstream((_r, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const ev = (o: Record<string, unknown>) => `event: ${String(o.type)}\ndata: ${JSON.stringify(o)}\n\n`;
      res.write(
        ev({
          type: 'response.created',
          response: { id: 'resp_1', created_at: 1, model: 'm', status: 'in_progress', output: [] },
        }) +
          ev({
            type: 'response.output_item.added',
            output_index: 0,
            item: { type: 'message', id: 'msg_1', role: 'assistant', content: [] },
          }),
      );
      let i = 0;
      const t = setInterval(() => {
        if (res.destroyed || res.writableEnded || ++i > 100) return clearInterval(t);
        res.write(
          ev({
            type: 'response.output_text.delta',
            item_id: 'msg_1',
            output_index: 0,
            content_index: 0,
            delta: `w${i} `,
          }),
        );
      }, 100);
      timers.add(t);
    });
    const gw = track(
      await startGateway({
        server: { passthrough: 'a' },
        providers: [provider('a', a)],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const model = createOpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k' })('m');
    const ac = new AbortController();
    const result = streamText({ model, prompt: 'hi', abortSignal: ac.signal, onError: () => undefined });
    let got = '';
    try {
      for await (const part of result.fullStream) {
        if (part.type === 'text-delta') got += (part as { text?: string }).text ?? '';
        if (got.includes('w2')) ac.abort();
      }
    } catch {
      /* aborted */
    }
    expect(got).toContain('w2');
    await closedSoon(a);
    await until('a request line', () => requestLines(gw).length >= 1, 3_000);
    expect(requestLines(gw)[0]!.status).toBe(200);
    expect(gw.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
  });
});
