/**
 * Resource-leak and long-run audit: what the gateway keeps per request, per reload, per breaker opening and
 * per client that goes away, counted structurally (live objects after a full GC with v8.queryObjects, the
 * gateway's own maps, the upstream's open sockets, /metrics series, src/ timers), never by timings.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { queryObjects } from 'node:v8';
import { Client, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../../src/resilience/breaker.js';
import { RouterCache } from '../../src/routing/router-cache.js';
import { UpstreamStats } from '../../src/routing/stats.js';
import { Runtime } from '../../src/runtime.js';
import { SseWriter } from '../../src/streaming/relay.js';
import { AttemptSignal } from '../../src/upstream/bounds.js';
import { Pool, ProviderClient } from '../../src/upstream/client.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson } from '../helpers/mock-upstream.js';
import { parseProm, scrape, value } from '../helpers/prom-text.js';
import { reload } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

// ---------------------------------------------------------------------------------------------------------
// Process warnings (MaxListenersExceededWarning and the like) seen while this file runs.
const warnings: string[] = [];
// Not ours: queryObjects() is experimental on Node 20, and a test's own promise handled late says nothing.
const IGNORED_WARNINGS = new Set(['ExperimentalWarning', 'PromiseRejectionHandledWarning']);
const onWarning = (w: Error): void => {
  if (!IGNORED_WARNINGS.has(w.name)) warnings.push(`${w.name}: ${w.message}`);
};
process.on('warning', onWarning);
afterAll(() => void process.off('warning', onWarning));

// ---------------------------------------------------------------------------------------------------------
// Timers created by the gateway's own code (src/, not the simulator): each one recorded with its caller, so a
// test can count the ones still pending (unref'd timers do not show in process.getActiveResourcesInfo()).
type NodeTimer = NodeJS.Timeout & { _destroyed?: boolean };
const srcTimers: { t: NodeTimer; where: string }[] = [];
const realSetTimeout = globalThis.setTimeout;
const realSetInterval = globalThis.setInterval;
function srcCaller(): string | undefined {
  const line = new Error().stack?.split('\n')[3];
  if (
    line === undefined ||
    !line.includes('/src/') ||
    line.includes('node_modules') ||
    line.includes('/src/sim/')
  )
    return undefined;
  return line.trim();
}
function patched<F extends (...a: never[]) => NodeJS.Timeout>(real: F): F {
  const wrapper = function (this: unknown, ...args: Parameters<F>): NodeJS.Timeout {
    const t = real.apply(this, args) as NodeTimer;
    const where = srcCaller();
    if (where !== undefined) srcTimers.push({ t, where });
    return t;
  };
  Object.assign(wrapper, real);
  return wrapper as unknown as F;
}
globalThis.setTimeout = patched(realSetTimeout as never) as unknown as typeof setTimeout;
globalThis.setInterval = patched(realSetInterval as never) as unknown as typeof setInterval;
afterAll(() => {
  globalThis.setTimeout = realSetTimeout;
  globalThis.setInterval = realSetInterval;
});
/** src/ timers still pending, optionally only those created at a caller matching `where`. */
function pendingSrcTimers(where?: RegExp): string[] {
  for (let i = srcTimers.length - 1; i >= 0; i--) if (srcTimers[i]!.t._destroyed) srcTimers.splice(i, 1);
  return srcTimers.filter((x) => where === undefined || where.test(x.where)).map((x) => x.where);
}

// ---------------------------------------------------------------------------------------------------------
/** Live instances of `ctor` (or of a subclass) after a full garbage collection. */
function live(ctor: abstract new (...a: never[]) => unknown): number {
  return queryObjects(ctor as unknown as new () => unknown, { format: 'count' }) as number;
}

/**
 * Attempts and SSE writers alive before this file ran (its worker may have run other files before it,
 * modules shared): "none left" means none of this file's.
 */
let before = { attempts: 0, writers: 0 };
beforeAll(() => {
  before = { attempts: live(AttemptSignal), writers: live(SseWriter) };
});
function noAttemptLive(): boolean {
  return live(AttemptSignal) <= before.attempts && live(SseWriter) <= before.writers;
}

// ---------------------------------------------------------------------------------------------------------
// One hand-written OpenAI-dialect upstream whose behaviour is chosen by the model name it is sent (the
// config's model names), counting its open sockets and the requests cut before their answer was complete.
interface MockRequest {
  readonly model: string;
  readonly body: Record<string, unknown>;
  /** The connection or request went away before the answer was complete. */
  aborted: boolean;
  closed: boolean;
}

interface Mock {
  readonly url: string;
  readonly requests: MockRequest[];
  openSockets(): number;
  accepted(): number;
  close(): Promise<void>;
}

const ROUTER_ANSWER = '{"tier":"balanced","reason":"looks ordinary"}';

function behave(body: Record<string, unknown>, res: ServerResponse): void {
  const model = String(body.model);
  const stream = body.stream === true;
  if (model.startsWith('hang')) return; // headers never come
  if (model.startsWith('router')) return answerChat(res, body, ROUTER_ANSWER);
  if (model.startsWith('rlms')) {
    return sendJson(
      res,
      429,
      { error: { message: 'slow down', type: 'rate_limit' } },
      { 'retry-after-ms': '40' },
    );
  }
  if (model.startsWith('rlhuge')) {
    return sendJson(
      res,
      429,
      { error: { message: 'slow down', type: 'rate_limit' } },
      { 'retry-after': '999999999' },
    );
  }
  if (model.startsWith('rl')) {
    return sendJson(
      res,
      429,
      { error: { message: 'slow down', type: 'rate_limit' } },
      { 'retry-after': '3600' },
    );
  }
  if (model.startsWith('e500'))
    return sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } });
  if (model.startsWith('pre')) {
    // A 200 and the role-only preamble, then nothing: the stream is never committed.
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunkFrame(model, { role: 'assistant', content: '' }));
    return;
  }
  if (model.startsWith('drop')) {
    // A 200, the preamble, then the end before any content: failed over (SPEC §2).
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(chunkFrame(model, { role: 'assistant', content: '' }));
    return;
  }
  if (model.startsWith('slow') && stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(
      chunkFrame(model, { role: 'assistant', content: '' }) + chunkFrame(model, { content: 'first ' }),
    );
    let n = 0;
    const timer = realSetInterval(() => {
      if (++n >= 400) {
        clearInterval(timer);
        res.end(`${chunkFrame(model, {}, 'stop')}data: [DONE]\n\n`);
        return;
      }
      res.write(chunkFrame(model, { content: `w${n} ` }));
    }, 25);
    res.on('close', () => clearInterval(timer));
    return;
  }
  answerChat(res, body, 'hello there');
}

async function startMockUpstream(): Promise<Mock> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const requests: MockRequest[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      const body = JSON.parse(text) as Record<string, unknown>;
      const rec: MockRequest = { model: String(body.model), body, aborted: false, closed: false };
      requests.push(rec);
      res.on('close', () => {
        rec.closed = true;
        if (!res.writableFinished) rec.aborted = true;
      });
      behave(body, res);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s: Socket) => {
    accepted++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const closeable = closeableServer(server);
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    openSockets: () => sockets.size,
    accepted: () => accepted,
    close: async () => void (await closeable.close()),
  };
}

// ---------------------------------------------------------------------------------------------------------
type Json = Record<string, unknown>;

function provider(name: string, mock: Mock, models: string[], extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${mock.url}/v1`,
    models: models.map((m) => ({ name: m })),
    ...extra,
  };
}

function config(providers: Json[], routes: Json, extra: Json = {}): Json {
  return {
    // queryObjects() walks the heap after a full GC: the pause must not make the gateway shed load.
    server: { host: '127.0.0.1', port: 0, load_shedding: { max_event_loop_delay_ms: 0 } },
    providers,
    routes,
    routing: { max_attempts: 3 },
    circuit_breaker: { failure_threshold: 3, open_ms: 60_000, max_open_ms: 600_000 },
    ...extra,
  };
}

async function chat(
  gw: TestGateway,
  body: Json,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.statusCode, text: await res.body.text(), headers: res.headers };
}

/** A chat request as undici sends it, for the tests that abort it or read it themselves. */
function send(gw: TestGateway, body: Json, signal?: AbortSignal): ReturnType<typeof request> {
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

const hi = (model: string, extra: Json = {}): Json => ({
  model,
  messages: [{ role: 'user', content: 'hi' }],
  ...extra,
});

async function inflight(gw: TestGateway, provider: string, model: string): Promise<number | undefined> {
  return value(await scrape(gw.url), 'llm_router_inflight_requests', { provider, model });
}

/** Metric samples in a /metrics scrape, without the process metrics (which move on their own). */
async function routerSamples(gw: TestGateway): Promise<string[]> {
  const res = await request(`${gw.url}/metrics`);
  const text = await res.body.text();
  return text.split('\n').filter((l) => l.startsWith('llm_router_'));
}

// =========================================================================================================
describe('config reload churn', () => {
  // A reload drops the breaker of an upstream it removes (runtime.ts: `shared.breakers.retain(...)`, gateway.ts
  // reload: "A removed upstream's breaker is gone"), so N reloads that each add and remove an upstream keep
  // only the current upstreams' breakers alive. SharedState.#wakeAfter keeps one wake-up timer per open breaker
  // (up to max_open_ms, or 24 h for a Retry-After); a dropped breaker's timer must go with it, or it pins the
  // CircuitBreaker and its `#wakers` entry until it fires and reloads that rotate upstreams pile them up.
  it('reloads that remove upstreams with open breakers do not leave their breakers and wake-up timers behind', async () => {
    const mock = track(await startMockUpstream());
    const stable = provider('stable', mock, ['ok']);
    const cfgOf = (i: number): Json =>
      config([stable, provider(`rot${i}`, mock, ['rl'])], {
        main: { strategy: 'priority', targets: [`rot${i}/rl`, 'stable/ok'] },
      });
    const gw = track(await startGateway(cfgOf(0)));
    const baseBreakers = live(CircuitBreaker);
    const N = 25;
    for (let i = 0; i < N; i++) {
      if (i > 0) reload(gw, cfgOf(i));
      const r = await chat(gw, hi('main'));
      expect(r.status).toBe(200); // rot{i} answered 429 (Retry-After 1 h): its breaker opened, stable served
    }
    await until('the last 429 to open its breaker', async () => {
      const s = (await (await request(`${gw.url}/router/status`)).body.json()) as {
        upstreams: { id: string; breaker: { state: string } }[];
      };
      return s.upstreams.find((u) => u.id === `rot${N - 1}/rl`)?.breaker.state === 'open';
    });
    // The store itself holds only the current upstreams...
    expect([...gw.gateway.shared.breakers.entries()].map(([id]) => id).sort()).toEqual([
      `rot${N - 1}/rl`,
      'stable/ok',
    ]);
    // ...and no removed upstream's open breaker stays alive, pinned by its wake-up timer.
    expect({
      pendingWakeUpTimers: pendingSrcTimers(/src\/state\/shared-state\.ts/).length,
      extraLiveBreakers: live(CircuitBreaker) - baseBreakers,
    }).toEqual({
      pendingWakeUpTimers: 1, // the one open breaker still configured (rot24/rl)
      extraLiveBreakers: 0, // stable/ok and rot24/rl, as stable/ok and rot0/rl at the start
    });
    expect(warnings).toEqual([]);
  });

  // An LLM-router answer cache belongs to a route; a route that a reload removes (or renames) takes its cache
  // (up to `router.cache_size`, default 10,000 entries) with it. The caches (cacheFor, router-cache.ts) are
  // held per gateway, which lives for the whole process, so they must not keep every tiered route name ever
  // configured, each with a full RouterCache, until the process exits.
  it('reloads that rename a tiered route do not keep the old routes’ LLM-router caches', async () => {
    const mock = track(await startMockUpstream());
    const p = provider('p', mock, ['router', 'ok']);
    const cfgOf = (i: number): Json =>
      config([p], {
        [`tiered${i}`]: {
          strategy: 'priority',
          tiers: { fast: ['p/router'], balanced: ['p/ok'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 5_000, cache_size: 1_000 },
        },
      });
    const gw = track(await startGateway(cfgOf(0)));
    const base = live(RouterCache);
    const N = 20;
    for (let i = 0; i < N; i++) {
      if (i > 0) reload(gw, cfgOf(i));
      // A few distinct prompts each: every one is a router call whose answer the route's cache keeps.
      for (let k = 0; k < 5; k++) {
        const r = await chat(gw, {
          model: `tiered${i}`,
          messages: [{ role: 'user', content: `question ${i}-${k}` }],
        });
        expect(r.status).toBe(200);
        expect(r.headers['x-router-tier']).toBe('balanced');
      }
    }
    expect(mock.requests.filter((r) => r.model === 'router')).toHaveLength(N * 5);
    expect(live(RouterCache) - base).toBeLessThanOrEqual(1);
  });

  // Reloads hand each request to the config live at its start and then release the old config's
  // pools (gateway.ts reload, runtime.ts retire): however many reloads, the live Runtimes, ProviderClients,
  // undici Pools, statistics and the sockets the upstream sees stay bounded by the current config.
  it('many reloads that rotate providers leave no runtimes, pools, statistics or upstream sockets behind', async () => {
    const mock = track(await startMockUpstream());
    const cfgOf = (i: number): Json =>
      config(
        [
          // A changed connection setting: a new pool for `stable` too on every other reload.
          provider('stable', mock, ['ok'], { max_concurrency: 100 + (i % 2) }),
          provider(`rot${i}`, mock, ['ok']),
        ],
        { main: { strategy: 'round-robin', targets: [`rot${i}/ok`, 'stable/ok'] } },
      );
    const gw = track(await startGateway(cfgOf(0)));
    const base = {
      runtimes: live(Runtime),
      clients: live(ProviderClient),
      pools: live(Pool),
      stats: live(UpstreamStats),
    };
    const N = 40;
    for (let i = 0; i < N; i++) {
      if (i > 0) reload(gw, cfgOf(i));
      const r1 = await chat(gw, hi('main'));
      const r2 = await chat(gw, hi('main', { stream: true }));
      expect([r1.status, r2.status]).toEqual([200, 200]);
    }
    // Retired pools close once their requests are done.
    await until('retired pools to close their upstream connections', () => mock.openSockets() <= 4, 5_000);
    expect(gw.gateway.shared.stats.size).toBe(2);
    expect(gw.gateway.shared.fits.size).toBe(2);
    expect(gw.gateway.liveStreams.size).toBe(0);
    const now = {
      runtimes: live(Runtime) - base.runtimes,
      clients: live(ProviderClient) - base.clients,
      pools: live(Pool) - base.pools,
      stats: live(UpstreamStats) - base.stats,
    };
    // One runtime more than at the start at most (a retired one not yet collected), no growth with N.
    expect(now.runtimes).toBeLessThanOrEqual(1);
    expect(now.clients).toBeLessThanOrEqual(2);
    expect(now.pools).toBeLessThanOrEqual(2);
    expect(now.stats).toBeLessThanOrEqual(1);
    expect(warnings).toEqual([]);
  });

  // /metrics cardinality is bounded by the current config. A reload removes a removed upstream's
  // `llm_router_circuit_state` (at once) and `llm_router_inflight_requests` (once its requests are done),
  // whose series "would otherwise be scraped forever"; the same holds for every other per-upstream series:
  // the 8 that primeSeries (gateway.ts) creates at zero (5 attempt outcomes, 2 token kinds, cost) and the
  // requests_total / duration / ttft / decisions series labelled with the upstream's provider (FastMetric
  // children, Gateway.requestChildren / decisionChildren). Otherwise every reload that renames or rotates a
  // provider adds ~20 series that are exported forever.
  it('reloads that rotate upstreams do not grow /metrics without bound', async () => {
    const mock = track(await startMockUpstream());
    const cfgOf = (i: number): Json =>
      config([provider('stable', mock, ['ok']), provider(`rot${i}`, mock, ['ok'])], {
        main: { strategy: 'round-robin', targets: [`rot${i}/ok`, 'stable/ok'] },
      });
    const gw = track(await startGateway(cfgOf(0)));
    const seriesAt: number[] = [];
    const N = 30;
    for (let i = 0; i < N; i++) {
      if (i > 0) reload(gw, cfgOf(i));
      for (let k = 0; k < 2; k++) expect((await chat(gw, hi('main', { stream: k === 1 }))).status).toBe(200);
      await sleep(5);
      seriesAt.push((await routerSamples(gw)).length);
    }
    const removed = (await routerSamples(gw)).filter(
      (l) => /provider="rot(\d+)"/.exec(l)?.[1] !== `${N - 1}`,
    );
    const stale = removed.filter((l) => /provider="rot\d+"/.test(l));
    // Cardinality after the 30th reload as after the 5th.
    expect({ at5: seriesAt[4], at30: seriesAt[N - 1], staleRemovedUpstreamSeries: stale.length }).toEqual({
      at5: seriesAt[4],
      at30: seriesAt[4],
      staleRemovedUpstreamSeries: 0,
    });
  });
});

// =========================================================================================================
describe('per-request state driven by client input', () => {
  // SPEC §8, metrics.ts "Label values come from configuration ... never from raw client input": thousands of requests with unique request ids, unknown model names, unknown `provider/model` pins, bogus
  // x-router-* values and unique prompts add no metric series, no map entries and leave no live attempt.
  it('unique request ids, bogus models, pins and headers add no series and leave nothing live', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config([provider('p', mock, ['ok']), provider('q', mock, ['ok'])], {
          main: { strategy: 'hybrid', targets: ['p/ok', 'q/ok'] },
        }),
      ),
    );
    // Warm-up: one of each kind, so every legitimate series exists.
    const kinds = async (i: number): Promise<number[]> => {
      const id = `req-${i}-${Math.random().toString(36).slice(2)}`;
      const rs = await Promise.all([
        chat(gw, hi('main'), { 'x-request-id': id }),
        chat(gw, hi('main', { stream: true }), { 'x-request-id': `${id}s` }),
        chat(gw, hi(`no-such-model-${i}`)),
        chat(gw, hi(`nope${i}/m${i}`)),
        chat(gw, hi('main'), { 'x-router-strategy': `strat-${i}` }),
        chat(gw, hi('main'), { 'x-router-provider': `prov-${i}` }),
        chat(gw, hi('main'), { 'x-router-tier': `tier-${i}` }),
        chat(gw, { model: 'main', messages: [{ role: 'user', content: `unique prompt ${i} ${id}` }] }),
      ]);
      return rs.map((r) => r.status);
    };
    expect(await kinds(0)).toEqual([200, 200, 404, 404, 400, 400, 400, 200]);
    for (let i = 1; i <= 20; i++) await kinds(i); // every (upstream, stream) pair the hybrid strategy picks
    await sleep(10);
    const before = await routerSamples(gw);
    for (let i = 21; i <= 270; i++) await kinds(i); // 2,000 requests more
    await sleep(10);
    const after = await routerSamples(gw);
    const names = (lines: string[]) => lines.map((l) => l.slice(0, l.lastIndexOf(' '))).sort();
    expect(names(after)).toEqual(names(before));
    // Every label value is the config's (or `none`), never the client's.
    const CONFIG_VALUES: Record<string, Set<string>> = {
      route: new Set(['main', 'none', 'p/ok', 'q/ok']),
      provider: new Set(['p', 'q', 'none']),
      from_provider: new Set(['p', 'q']),
      model: new Set(['ok', 'none']),
    };
    for (const sample of parseProm(after.join('\n')))
      for (const [k, allowed] of Object.entries(CONFIG_VALUES))
        if (sample.labels[k] !== undefined)
          expect(allowed.has(sample.labels[k]), `${k}=${sample.labels[k]}`).toBe(true);
    const text = after.join('\n');
    expect(text).not.toMatch(/no-such-model|nope\d|strat-|prov-|tier-\d|req-\d/);
    expect(gw.gateway.liveStreams.size).toBe(0);
    await until('no attempt left live', noAttemptLive);
    expect(await inflight(gw, 'p', 'ok')).toBe(0);
    expect(await inflight(gw, 'q', 'ok')).toBe(0);
    expect(pendingSrcTimers(/src\/upstream\//)).toEqual([]);
    expect(warnings).toEqual([]);
  });

  // SPEC §2: the LLM router "is cached by prompt hash"; schema router.cache_size: the cache is bounded: with cache_size 8, a prompt asked again after 30 other prompts has been evicted and the router is
  // asked again (an unbounded cache would still hold it).
  it('the LLM-router cache is bounded by router.cache_size (unique prompts evict old ones)', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config([provider('p', mock, ['router', 'ok'])], {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['p/router'], balanced: ['p/ok'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 5_000, cache_size: 8 },
          },
        }),
      ),
    );
    const ask = (content: string) => chat(gw, { model: 'auto', messages: [{ role: 'user', content }] });
    const routerCallsFor = (needle: string): number =>
      mock.requests.filter((r) => r.model === 'router' && JSON.stringify(r.body).includes(needle)).length;
    expect((await ask('prompt zero')).status).toBe(200);
    expect((await ask('prompt zero')).status).toBe(200);
    expect(routerCallsFor('prompt zero')).toBe(1); // the second was a cache hit
    for (let i = 0; i < 30; i++) expect((await ask(`other prompt ${i}`)).status).toBe(200);
    expect((await ask('prompt zero')).status).toBe(200);
    expect(routerCallsFor('prompt zero')).toBe(2); // evicted: asked again
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'cached' })).toBe(1);
  });
});

// =========================================================================================================
describe('explain and real decisions interleaved', () => {
  // routing/plan.ts peekRandom: "At most one decision's draws are ever pending": /router/explain, called any number of times between real requests, leaves a bounded number of random draws on the route.
  it('thousands of /router/explain calls leave a bounded number of pending random draws', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config([provider('p', mock, ['ok']), provider('q', mock, ['ok'])], {
          w: { strategy: 'weighted', targets: ['p/ok', 'q/ok'] },
          l: { strategy: 'latency', targets: ['p/ok', 'q/ok'] },
        }),
      ),
    );
    const explain = async (model: string, headers: Record<string, string> = {}): Promise<number> => {
      const res = await request(`${gw.url}/router/explain`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify(hi(model)),
      });
      await res.body.text();
      return res.statusCode;
    };
    for (let i = 0; i < 300; i++) {
      for (const m of ['w', 'l']) {
        expect(await explain(m)).toBe(200);
        expect(await explain(m, { 'x-router-strategy': 'weighted' })).toBe(200);
        if (i % 10 === 0) expect((await chat(gw, hi(m), { 'x-router-provider': 'q' })).status).toBe(200);
      }
    }
    for (const name of ['w', 'l']) {
      const route = gw.gateway.runtime.routes.get(name)!;
      expect(route.pendingRandom.length, name).toBeLessThanOrEqual(4);
    }
  });
});

// =========================================================================================================
describe('clients that go away', () => {
  async function abortedGateway() {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config(
          [
            provider('p', mock, ['ok', 'slow', 'pre', 'hang']),
            provider('one', mock, ['hang', 'ok'], { max_concurrency: 1 }),
            provider('r', mock, ['hang', 'ok']),
          ],
          {
            tiered: {
              strategy: 'priority',
              tiers: { fast: ['r/hang'], balanced: ['r/ok'] },
              default_tier: 'balanced',
              router: { tier: 'fast', timeout_ms: 20_000 },
            },
          },
        ),
      ),
    );
    return { mock, gw };
  }

  /** Everything a request may hold is released: gauges, live attempts and writers, the watchdog, maps. */
  async function expectReleased(gw: TestGateway, upstreams: [string, string][]): Promise<void> {
    for (const [p, m] of upstreams)
      await until(`inflight of ${p}/${m} back to 0`, async () => (await inflight(gw, p, m)) === 0);
    expect(gw.gateway.liveStreams.size).toBe(0);
    await until('no live attempt signal or SSE writer', noAttemptLive);
    await until(
      'no pending src/upstream timer (watchdog, drains)',
      () => pendingSrcTimers(/src\/upstream\//).length === 0,
    );
    expect(warnings).toEqual([]);
  }

  /** Pools of the config a request ran on close once it is done: the runtime's request count went back to 0. */
  async function expectRuntimeDrained(gw: TestGateway): Promise<void> {
    const old = gw.gateway.runtime;
    const cfg = JSON.parse(JSON.stringify(old.loaded.config)) as Json;
    for (const p of cfg.providers as Json[]) p.max_concurrency = Number(p.max_concurrency) + 1; // new pools
    reload(gw, cfg);
    const pools = [...old.providers.values()].map(
      (p) => (p.client as unknown as { pool: { closed: boolean } }).pool,
    );
    await until('the old runtime to drain and close its pools', () => pools.every((p) => p.closed), 3_000);
  }

  /**
   * `n` requests (`body(i)`), each aborted once the upstream has it (its `model` requests pass i); each must
   * reject, and the upstream must see every one of them cut.
   */
  async function abortEachOnArrival(
    gw: TestGateway,
    mock: Mock,
    o: { n: number; model: string; body: (i: number) => Json; arrived: string; cut: string },
  ): Promise<void> {
    for (let i = 0; i < o.n; i++) {
      const ac = new AbortController();
      const pending = send(gw, o.body(i), ac.signal);
      await until(o.arrived, () => mock.requests.filter((r) => r.model === o.model).length > i);
      ac.abort();
      await expect(pending).rejects.toThrow();
    }
    await until(o.cut, () => mock.requests.filter((r) => r.model === o.model).every((r) => r.aborted));
  }

  it('a stream aborted mid-way (after its commit) releases its upstream request and every live object', async () => {
    const { mock, gw } = await abortedGateway();
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController();
      const res = await send(gw, hi('p/slow', { stream: true }), ac.signal);
      expect(res.statusCode).toBe(200);
      await new Promise<void>((resolve) => res.body.once('data', () => resolve()));
      ac.abort();
      await res.body.text().catch(() => undefined);
    }
    await until('the upstream to see every stream cut', () =>
      mock.requests.filter((r) => r.model === 'slow').every((r) => r.aborted),
    );
    await expectReleased(gw, [['p', 'slow']]);
    await expectRuntimeDrained(gw);
  });

  it('a stream aborted before its commit (upstream sent only its preamble) releases everything', async () => {
    const { mock, gw } = await abortedGateway();
    await abortEachOnArrival(gw, mock, {
      n: 5,
      model: 'pre',
      body: () => hi('p/pre', { stream: true }),
      arrived: 'the upstream to get the request',
      cut: 'the upstream to see every request cut',
    });
    await expectReleased(gw, [['p', 'pre']]);
    await expectRuntimeDrained(gw);
  });

  it('JSON requests aborted while the upstream hangs release the upstream connection and everything else', async () => {
    const { mock, gw } = await abortedGateway();
    await abortEachOnArrival(gw, mock, {
      n: 5,
      model: 'hang',
      body: () => hi('p/hang'),
      arrived: 'the upstream to get the request',
      cut: 'the upstream to see every request cut',
    });
    await expectReleased(gw, [['p', 'hang']]);
    await expectRuntimeDrained(gw);
  });

  it('a request aborted while queued for a pool slot (max_concurrency reached) is never sent and holds nothing', async () => {
    const { mock, gw } = await abortedGateway();
    const hog = new AbortController();
    const hogging = send(gw, hi('one/hang'), hog.signal);
    await until('the hog to reach the upstream', () => mock.requests.some((r) => r.model === 'hang'));
    const queued: Promise<unknown>[] = [];
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController();
      queued.push(
        send(gw, hi('one/ok', { stream: i % 2 === 1 }), ac.signal)
          .then((r) => r.body.text())
          .catch(() => undefined),
      );
      await sleep(50);
      ac.abort();
    }
    await Promise.allSettled(queued);
    hog.abort();
    await hogging.catch(() => undefined);
    await expectReleased(gw, [
      ['one', 'hang'],
      ['one', 'ok'],
    ]);
    await sleep(100);
    expect(mock.requests.filter((r) => r.model === 'ok')).toHaveLength(0); // none was sent after its client left
    // The pool works afterwards.
    expect((await chat(gw, hi('one/ok'))).status).toBe(200);
    await expectRuntimeDrained(gw);
  });

  it('a request aborted while the LLM router call hangs cancels that call and releases everything', async () => {
    const { mock, gw } = await abortedGateway();
    await abortEachOnArrival(gw, mock, {
      n: 3,
      model: 'hang',
      body: (i) => ({ model: 'tiered', messages: [{ role: 'user', content: `route me ${i}` }] }),
      arrived: 'the router call to reach its upstream',
      cut: 'the upstream to see every router call cut',
    });
    await expectReleased(gw, [['r', 'hang']]);
    // The same prompt again is a fresh call (the aborted one is no call to join), answered by default_tier
    // only if the router fails: the hanging router is cut by its own timeout; here we just check it is sent.
    await expectRuntimeDrained(gw);
  });
});

// =========================================================================================================
describe('long runs on one upstream connection and breaker churn', () => {
  // Nothing is added to a client's keep-alive socket per request (listeners), and no
  // MaxListenersExceededWarning fires, over hundreds of JSON, stream and error requests on one connection.
  it('hundreds of requests on one keep-alive connection add no socket listeners and raise no warning', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config([provider('p', mock, ['ok', 'e500', 'drop'])], {
          main: { strategy: 'priority', targets: ['p/ok'] },
          flaky: { strategy: 'priority', targets: ['p/drop', 'p/ok'] },
        }),
      ),
    );
    const serverSockets: Socket[] = [];
    gw.app.server.on('connection', (s: Socket) => serverSockets.push(s));
    const client = new Client(gw.url, { pipelining: 1 });
    track({ close: () => client.close() });
    const one = async (i: number): Promise<number> => {
      const bodies = [
        hi('main'),
        hi('main', { stream: true }),
        hi('missing'),
        hi('flaky', { stream: true }),
        hi('p/e500'),
      ];
      const res = await client.request({
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(bodies[i % bodies.length]),
      });
      await res.body.text();
      return res.statusCode;
    };
    for (let i = 0; i < 20; i++) await one(i);
    expect(serverSockets).toHaveLength(1);
    const sock = serverSockets[0]!;
    const counts = () => Object.fromEntries(sock.eventNames().map((e) => [String(e), sock.listenerCount(e)]));
    const before = counts();
    for (let i = 20; i < 520; i++) await one(i);
    expect(serverSockets).toHaveLength(1);
    expect(counts()).toEqual(before);
    expect(mock.openSockets()).toBeLessThanOrEqual(4); // connections reused, not accumulated
    expect(warnings).toEqual([]);
    await expectNothingLive(gw);
  });

  async function expectNothingLive(gw: TestGateway): Promise<void> {
    await until('no live attempt signal or SSE writer', noAttemptLive);
    expect(gw.gateway.liveStreams.size).toBe(0);
  }

  // SPEC §2 circuit breaker: one wake-up per breaker however often it opens; a huge Retry-After is
  // capped (24 h) and still one timer.
  it('a breaker that opens and re-opens many times keeps one wake-up timer; a huge Retry-After is capped', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config([provider('p', mock, ['rlms', 'ok', 'rlhuge'])], {
          main: { strategy: 'priority', targets: ['p/rlms', 'p/ok'] },
          huge: { strategy: 'priority', targets: ['p/rlhuge', 'p/ok'] },
        }),
      ),
    );
    let maxWake = 0;
    for (let i = 0; i < 40; i++) {
      // Three at once: the 429s that arrive after the first re-open (extend) a breaker whose wake-up is pending.
      const rs = await Promise.all([0, 1, 2].map(() => chat(gw, hi('main', { stream: i % 2 === 0 }))));
      expect(rs.map((r) => r.status)).toEqual([200, 200, 200]);
      maxWake = Math.max(maxWake, pendingSrcTimers(/src\/state\/shared-state\.ts/).length);
      await sleep(45); // past the 40 ms Retry-After: half-open, the next request probes (and re-opens it)
    }
    expect(mock.requests.filter((r) => r.model === 'rlms').length).toBeGreaterThan(10);
    expect(maxWake, 'the wake-up timer was seen at all').toBeGreaterThanOrEqual(1);
    expect(maxWake).toBeLessThanOrEqual(1);
    for (let i = 0; i < 5; i++) expect((await chat(gw, hi('huge'))).status).toBe(200);
    expect(mock.requests.filter((r) => r.model === 'rlhuge')).toHaveLength(1); // open for 24 h: skipped
    const s = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string; ms_until_half_open: number } }[];
    };
    const huge = s.upstreams.find((u) => u.id === 'p/rlhuge')!.breaker;
    expect(huge.state).toBe('open');
    expect(huge.ms_until_half_open).toBeLessThanOrEqual(86_400_000);
    expect(pendingSrcTimers(/src\/state\/shared-state\.ts/).length).toBeLessThanOrEqual(2);
    await expectNothingLive(gw);
  });

  // A failover loop (every request fails over from an upstream that drops its stream or answers 500)
  // reuses or closes its upstream connections: the upstream's open sockets stay bounded.
  it('sequential failover loops do not accumulate upstream sockets or live attempts', async () => {
    const mock = track(await startMockUpstream());
    const gw = track(
      await startGateway(
        config(
          [provider('p', mock, ['drop', 'e500', 'ok'])],
          {
            main: { strategy: 'priority', targets: ['p/drop', 'p/e500', 'p/ok'] },
          },
          { circuit_breaker: { failure_threshold: 1_000_000, open_ms: 60_000 } },
        ),
      ),
    );
    for (let i = 0; i < 300; i++) {
      const r = await chat(gw, hi('main', { stream: i % 2 === 0 }));
      expect(r.status).toBe(200);
      expect(r.headers['x-router-attempts']).toBe('3');
    }
    expect(mock.openSockets()).toBeLessThanOrEqual(6);
    for (const m of ['drop', 'e500', 'ok']) expect(await inflight(gw, 'p', m)).toBe(0);
    await expectNothingLive(gw);
    await until(
      'no pending src/upstream timer',
      () => pendingSrcTimers(/src\/upstream\//).length === 0,
      3_000,
    );
    expect(warnings).toEqual([]);
  });
});
