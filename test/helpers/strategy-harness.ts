/**
 * Plumbing of the routing-strategy tests (audit-strategies, routing-figures, strategies-over-time,
 * live-stats-edges): loopback mocks that count or pace the requests they get, the config of a route over
 * them, a gateway closed after the test, and readers of what it decided (which upstream served each request,
 * /router/explain, /router/status).
 *
 * The functions that start something (mocks, gateways) or post with a file's own bound come from
 * `strategyHarness(track, opts)`; the rest are plain exports.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { expect } from 'vitest';
import type { Track } from './cleanup.js';
import { startGateway, type TestGateway } from './gateway.js';
import { chatCompletion, chunkFrame, countedUpstream, fail500, gate, sendJson } from './mock-upstream.js';
import type { CountedUpstream } from './mock-upstream.js';
import type { manualClock } from './random.js';
import { routerStatus } from './resilience-harness.js';
import { postJson, type Candidate, type RouterRes } from './router-api.js';

/** A JSON object: request bodies, configs, statistics. */
export type Json = Record<string, unknown>;
/** The manual clock the gateway measures latency on. */
export type Clock = ReturnType<typeof manualClock>;
/** A mock upstream: its url and how many requests it got. */
export type Up = CountedUpstream;
/** What `startGateway` takes besides the config (clock, random source...). */
export type GatewayOptions = NonNullable<Parameters<typeof startGateway>[1]>;
/** A mock's answer to the n-th request (0-based) it got. */
export type Answer = (body: Json, res: ServerResponse, n: number) => void | Promise<void>;

/** The one-message conversation the requests send. */
export const HI = [{ role: 'user', content: 'hello' }];
/** The plain request to route `r`. */
export const BODY: Json = { model: 'r', messages: HI };

/** What the chat answers of `chatUp` / `timedUp` are: a 500 while `fail(n)` holds, else `tokens` completion tokens (2). */
export interface ChatAnswerOptions {
  fail?: (n: number) => boolean;
  tokens?: number | (() => number);
}

/** A chat completion (or a 500) as `opts` say, written to `res`. */
function reply(body: Json, res: ServerResponse, n: number, opts: ChatAnswerOptions): void {
  if (opts.fail?.(n) === true) return fail500(res);
  const tokens = typeof opts.tokens === 'function' ? opts.tokens() : (opts.tokens ?? 2);
  sendJson(res, 200, chatCompletion(body, tokens));
}

/** An answer that first moves `clock` by `ms()` (the latency the gateway measures), then replies as `opts` say. */
export function timedAnswer(clock: Clock, ms: () => number, opts: ChatAnswerOptions = {}): Answer {
  return (body, res, n) => {
    clock.advance(ms());
    reply(body, res, n, opts);
  };
}

/** Model `m` of provider `name` (kind openai) at `url`, with `model` fields and `timeouts` over 2/5/5/8 s. */
export function prov(name: string, url: string, model: Json = {}, timeouts: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 8000, ...timeouts },
    models: [{ name: 'm', ...model }],
  };
}

/** How `routeOver` builds each provider and target beyond its name and url. */
export interface RouteOptions {
  /** Fields of model `m` every provider gets (a shared price). */
  model?: Json;
  /** Fields of model `m` by provider name, over `model` (a price or capabilities of its own). */
  models?: Record<string, Json>;
  /** Timeouts by provider name, over prov's defaults. */
  timeouts?: Record<string, Json>;
  /** Weights by provider name: every target becomes `{ target, weight }`. */
  weights?: Record<string, number>;
}

/** A config with route `r` using `strategy` over `ups` (provider name → upstream, in target order), plus `rest` keys. */
export function routeOver(
  strategy: string | Json,
  ups: Record<string, { url: string }>,
  rest: Json = {},
  opts: RouteOptions = {},
): Json {
  const names = Object.keys(ups);
  return {
    providers: names.map((n) =>
      prov(n, ups[n]!.url, { ...opts.model, ...opts.models?.[n] }, opts.timeouts?.[n]),
    ),
    routes: {
      r: {
        strategy,
        targets: names.map((n) => (opts.weights ? { target: `${n}/m`, weight: opts.weights[n] } : `${n}/m`)),
      },
    },
    ...rest,
  };
}

/** How many times each value stands in `list`. */
export function counts(list: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of list) out[p] = (out[p] ?? 0) + 1;
  return out;
}

/** The gateway's /router/status upstreams, by id. */
export const statusOf = (gw: { url: string }) => routerStatus(gw.url);

/** Upstream `id`'s live statistics; a missing one fails an expect, or (`onMissing` 'throw') throws. */
export async function statsOf(
  gw: { url: string },
  id: string,
  onMissing: 'expect' | 'throw' = 'expect',
): Promise<Json> {
  const u = (await routerStatus(gw.url)).get(id);
  if (onMissing === 'throw') {
    if (!u) throw new Error(`no upstream ${id}`);
  } else expect(u, `no ${id} in /router/status`).toBeDefined();
  return u!.stats;
}

/** Holds `res` open until the gateway closes it or `boundMs` pass, then `atBound` (default: destroy it). */
export function holdOpen(
  res: ServerResponse,
  boundMs = 4000,
  atBound = () => void res.destroy(),
): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      atBound();
      resolve();
    }, boundMs);
    res.on('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** The SSE usage chunk of a stream: `completion` output tokens (5 prompt), for model `model`. */
export function usageFrame(completion: number, model = 'm'): string {
  return `data: ${JSON.stringify({
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model,
    choices: [],
    usage: { prompt_tokens: 5, completion_tokens: completion, total_tokens: 5 + completion },
  })}\n\n`;
}

/** Where a paced stream mock leaves its gate's opener until the client has read the first content "a". */
export interface FirstContent {
  open?: (() => void) | undefined;
}

/** Streams `body` (bounded at `timeoutMs`), calling `held.open` once content "a" came; expects 200 and [DONE]; the provider. */
export async function streamThrough(
  gw: { url: string },
  body: Json,
  headers: Record<string, string>,
  held: FirstContent,
  timeoutMs = 15_000,
): Promise<string> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });
  expect(res.statusCode).toBe(200);
  let text = '';
  for await (const chunk of res.body) {
    text += String(chunk);
    // Read fresh each time: the mock sets it while this loop waits.
    const open = held.open;
    if (open && text.includes('"content":"a"')) {
      open();
      held.open = undefined;
    }
  }
  expect(text).toContain('[DONE]');
  return String(res.headers['x-router-provider']);
}

/** A file's bounds: `timeoutMs` on every request it posts, and (`boundExplain` false) none on explain's. */
export interface HarnessOptions {
  timeoutMs: number;
  boundExplain?: boolean;
}

/** The mocks, gateway and request helpers of one test file, closed by its `track`, bounded by `opts`. */
export function strategyHarness(track: Track, opts: HarnessOptions) {
  /** A mock upstream that counts its calls; `answer` writes the n-th answer (0-based). */
  const up = (answer: Answer): Promise<Up> => countedUpstream(track, answer);

  /** A mock that answers at once: a chat completion of `o.tokens`, or a 500 while `o.fail(n)` holds. */
  const chatUp = (o: ChatAnswerOptions = {}): Promise<Up> => up((body, res, n) => reply(body, res, n, o));

  /** A mock that answers after moving the gateway's clock by `ms()`; `o.fail()` true answers a 500. */
  const timedUp = (clock: Clock, ms: () => number, o: ChatAnswerOptions = {}): Promise<Up> =>
    up(timedAnswer(clock, ms, o));

  /** A stream mock: content "a" after `ttft()` ms of clock; once `held` is opened, `genMs` more, the rest and `tokens` usage. */
  const pacedStreamUp = (
    clock: Clock,
    ttft: () => number,
    genMs: number,
    tokens: number,
    held: FirstContent,
  ) =>
    up(async (body, res) => {
      const m = body.model;
      clock.advance(ttft());
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'a' }));
      const g = gate(3000);
      held.open = g.open;
      await g.wait;
      clock.advance(genMs);
      res.end(
        chunkFrame(m, { content: ' b'.repeat(20) }) +
          chunkFrame(m, {}, 'stop') +
          usageFrame(tokens, String(m)) +
          'data: [DONE]\n\n',
      );
    });

  /** A gateway on `config`, closed after the test. */
  const gateway = async (config: Json, o: GatewayOptions = {}): Promise<TestGateway> =>
    track(await startGateway(config, o));

  /** A POST to the gateway (undici, no key unless in `headers`), bounded at the file's timeoutMs. */
  const call = (
    gw: { url: string },
    body: Json = BODY,
    headers: Record<string, string> = {},
    path?: string,
  ) => postJson(gw, body, headers, path, { timeoutMs: opts.timeoutMs });

  /** `call`, expecting a 200. */
  const ok = async (gw: { url: string }, body: Json = BODY, headers: Record<string, string> = {}) => {
    const r = await call(gw, body, headers);
    expect(r.status, r.text).toBe(200);
    return r;
  };

  /** Sends `n` requests, `conc` at once, expecting 200s; the serving provider of each, counted and in order. */
  const serve = async (
    gw: { url: string },
    n: number,
    body: Json = BODY,
    conc = 1,
    headers: Record<string, string> = {},
  ): Promise<{ counts: Record<string, number>; order: string[]; all: RouterRes[] }> => {
    const order: string[] = [];
    const all: RouterRes[] = [];
    for (let i = 0; i < n; i += conc) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(conc, n - i) }, () => call(gw, body, headers)),
      );
      for (const r of batch) {
        all.push(r);
        expect(r.status, r.text).toBe(200);
        order.push(r.headers['x-router-provider']!);
      }
    }
    return { counts: counts(order), order, all };
  };

  /** Measures each named provider `n` times by pinning it, expecting 200s served by it (unless `checkPin` false). */
  const warm = async (
    gw: { url: string },
    providers: string[],
    n: number,
    body: Json = BODY,
    o: { checkPin?: boolean } = {},
  ): Promise<void> => {
    for (const p of providers)
      for (let i = 0; i < n; i++) {
        const r = await ok(gw, body, { 'x-router-provider': p });
        if (o.checkPin !== false) expect(r.headers['x-router-provider']).toBe(p);
      }
  };

  /** /router/explain for `body`, expecting a 200. */
  const explain = async (
    gw: { url: string },
    body: Json = BODY,
    headers: Record<string, string> = {},
  ): Promise<{ strategy: string; candidates: Candidate[]; features: Json }> => {
    const bound = opts.boundExplain === false ? {} : { timeoutMs: opts.timeoutMs };
    const r = await postJson(gw, body, headers, '/router/explain', bound);
    expect(r.status, r.text).toBe(200);
    return r.json as { strategy: string; candidates: Candidate[]; features: Json };
  };

  return { up, chatUp, timedUp, pacedStreamUp, gateway, call, ok, serve, warm, explain };
}
