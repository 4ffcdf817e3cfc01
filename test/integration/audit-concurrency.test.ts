/**
 * Audit: behaviour under concurrency and over a process's life — half-open under a burst, in-flight gauges
 * after every way a request ends, counters that agree with what clients saw, strategies under real
 * concurrency, pool limits, label/state bounds, SIGTERM with many streams, reloads under load, idle
 * keep-alive sockets. Expectations come from SPEC.md and README.md.
 */
import { writeFileSync } from 'node:fs';
import { createServer as createNetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simConfigYaml, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { parseProm, select, type Sample } from '../helpers/prom-text.js';
import { retryUntil } from '../helpers/wait.js';
import {
  RELAXED,
  TIMEOUTS,
  dataEvents,
  routerStatus,
  type UpstreamView,
} from '../helpers/resilience-harness.js';
import { cliWorkDir, startCli } from '../helpers/cli-harness.js';

const track = closeAfterEach();
const workDir = cliWorkDir('audit-concurrency');
const MSG = [{ role: 'user', content: 'hi' }];

interface Res {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: Record<string, unknown>;
  ms: number;
  error?: string;
}

/** One chat request; never throws (a client-side error is returned as status 0 with `error`). */
async function chat(
  url: string,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
  opts: { signal?: AbortSignal; path?: string; dispatcher?: Agent } = {},
): Promise<Res> {
  const t0 = performance.now();
  try {
    const res = await request(`${url}${opts.path ?? '/v1/chat/completions'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ messages: MSG, ...body }),
      signal: opts.signal,
      dispatcher: opts.dispatcher,
    });
    const text = await res.body.text();
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      /* SSE */
    }
    const h: Record<string, string> = {};
    for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
    return { status: res.statusCode, headers: h, text, json, ms: performance.now() - t0 };
  } catch (err) {
    return {
      status: 0,
      headers: {},
      text: '',
      json: {},
      ms: performance.now() - t0,
      error: (err as { code?: string }).code ?? String(err),
    };
  }
}

/** A streaming request whose client goes away after reading its first body chunk (or after `ms`). */
async function abortMidStream(url: string, body: Record<string, unknown>, afterMs?: number): Promise<string> {
  const ac = new AbortController();
  try {
    const res = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: MSG, stream: true, ...body }),
      signal: ac.signal,
    });
    if (afterMs !== undefined) await sleep(afterMs);
    else {
      const it = res.body[Symbol.asyncIterator]();
      await it.next();
    }
    ac.abort();
    await res.body.dump().catch(() => undefined);
    return `aborted after ${res.statusCode}`;
  } catch (err) {
    return (err as { name?: string }).name ?? 'error';
  }
}

/** A client connection pool of its own, destroyed at the end of the test (aborted requests leave sockets). */
function clientAgent(): Agent & { close(): Promise<void> } {
  const agent = new Agent();
  const close = (): Promise<void> => agent.destroy();
  return Object.assign(agent, { close });
}

async function all<T>(n: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => fn(i)));
}

/** Runs `n` jobs with at most `c` at a time. */
async function pool<T>(n: number, c: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array<T>(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: c }, async () => {
      for (;;) {
        const i = next++;
        if (i >= n) return;
        out[i] = await fn(i);
      }
    }),
  );
  return out;
}

async function metrics(url: string): Promise<Sample[]> {
  const res = await request(`${url}/metrics`);
  return parseProm(await res.body.text());
}

function sum(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return select(samples, name, labels).reduce((s, x) => s + x.value, 0);
}

async function status(url: string): Promise<Map<string, UpstreamView>> {
  return routerStatus(url);
}

function until<T>(check: () => Promise<T> | T, timeoutMs = 3000): Promise<T> {
  return retryUntil(check, timeoutMs, 20);
}

/** Everything the gateway counts as in flight is zero: the gauge, /router/status and the pools. */
async function expectAtRest(gw: TestGateway, sims: readonly Simulator[] = []): Promise<void> {
  await until(async () => {
    const m = await metrics(gw.url);
    for (const s of select(m, 'llm_router_inflight_requests'))
      expect(s.value, `inflight gauge ${JSON.stringify(s.labels)}`).toBe(0);
    for (const [id, u] of await status(gw.url)) {
      expect(u.in_flight, `${id} in_flight`).toBe(0);
      expect(u.breaker.probes_in_flight, `${id} probes`).toBe(0);
      expect(u.pool.running, `${id} pool running`).toBe(0);
      expect(u.pool.pending, `${id} pool pending`).toBe(0);
    }
    for (const s of sims) expect(s.inFlight(), `${s.options.name} sim in flight`).toBe(0);
  });
}

async function sim(name: string, opts: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...opts }));
}

function cfg(
  sims: readonly Simulator[],
  o: {
    strategy?: string;
    targets?: unknown[];
    breaker?: Record<string, unknown>;
    routing?: Record<string, unknown>;
    provider?: Record<string, Record<string, unknown>>;
    model?: Record<string, Record<string, unknown>>;
    routes?: Record<string, unknown>;
    server?: Record<string, unknown>;
  } = {},
): Record<string, unknown> {
  return {
    ...(o.server ? { server: o.server } : {}),
    providers: sims.map((s) =>
      simProvider(s.options.name, s.url, [{ name: 'm', ...o.model?.[s.options.name] }], {
        timeouts: RELAXED,
        ...o.provider?.[s.options.name],
      }),
    ),
    routes: o.routes ?? {
      r: { strategy: o.strategy ?? 'priority', targets: o.targets ?? sims.map((s) => `${s.options.name}/m`) },
    },
    routing: { max_attempts: 3, total_timeout_ms: 5000, ...o.routing },
    circuit_breaker: {
      failure_threshold: 1000,
      open_ms: 300,
      max_open_ms: 2000,
      half_open_probes: 1,
      success_threshold: 2,
      ...o.breaker,
    },
  };
}

async function gateway(config: Record<string, unknown>): Promise<TestGateway> {
  return track(await startGateway(config));
}

function countBy<T>(xs: readonly T[], key: (x: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[key(x)] = (out[key(x)] ?? 0) + 1;
  return out;
}

// ---------------------------------------------------------------------------------------------------------

describe('half-open under a burst', () => {
  const BREAKER = {
    failure_threshold: 1,
    open_ms: 400,
    max_open_ms: 4000,
    half_open_probes: 1,
    success_threshold: 2,
  };

  it('50 requests arriving as open_ms ends: exactly half_open_probes reach the upstream, the rest go elsewhere', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { breaker: BREAKER }));
    a.script([{ status: 500 }]);
    const first = await chat(gw.url, { model: 'r' });
    expect(first.headers['x-router-provider']).toBe('b');
    expect((await status(gw.url)).get('a/m')?.breaker.state).toBe('open');
    // The probe takes a while: the whole burst arrives while it is in flight (1.5 s, so that a slow machine
    // sending the 50 requests does not see the probe answered, and a second probe admitted, before the last;
    // under RELAXED's first_byte_ms of 2 s).
    a.set({ latencyMs: 1500 });
    await sleep(450);
    const before = a.requests.length;
    const rs = await all(50, () => chat(gw.url, { model: 'r' }));
    expect(rs.map((r) => r.status)).toEqual(Array(50).fill(200));
    expect(a.requests.length - before).toBe(1);
    expect(countBy(rs, (r) => r.headers['x-router-provider'] ?? '?')).toEqual({ a: 1, b: 49 });
    const br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('half_open'); // one success of success_threshold 2
    await expectAtRest(gw, [a, b]);
  });

  it('with two half_open_probes and only one upstream: 2 probes, the rest 503 no_available_upstream at once', async () => {
    const a = await sim('a');
    const gw = await gateway(
      cfg([a], { breaker: { ...BREAKER, half_open_probes: 2, success_threshold: 3 } }),
    );
    a.script([{ status: 500 }]);
    expect((await chat(gw.url, { model: 'r' })).status).toBe(502);
    a.set({ latencyMs: 1500 }); // the probes stay in flight while the whole burst arrives, even on a slow machine
    await sleep(450);
    const before = a.requests.length;
    const rs = await all(30, () => chat(gw.url, { model: 'r' }));
    expect(a.requests.length - before).toBe(2);
    const by = countBy(rs, (r) => String(r.status));
    expect(by).toEqual({ 200: 2, 503: 28 });
    for (const r of rs.filter((x) => x.status === 503)) {
      expect((r.json.error as { code?: string } | undefined)?.code).toBe('no_available_upstream');
      expect(r.ms).toBeLessThan(1000); // refused without waiting for the probes (1500 ms)
    }
    await expectAtRest(gw, [a]);
  });

  it('a probe that hangs until first_byte_ms: the burst is served by b meanwhile, the probe fails over, its slot is freed', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { breaker: BREAKER, provider: { a: { timeouts: TIMEOUTS } } }));
    a.script([{ status: 500 }]);
    await chat(gw.url, { model: 'r' });
    a.set({ hang: true });
    await sleep(450);
    const before = a.requests.length;
    const rs = await all(40, () => chat(gw.url, { model: 'r', stream: true }));
    expect(rs.map((r) => r.status)).toEqual(Array(40).fill(200));
    expect(a.requests.length - before).toBe(1);
    const probe = rs.filter((r) => r.headers['x-router-attempts'] === '2');
    expect(probe).toHaveLength(1);
    expect(probe[0]!.headers['x-router-trail']).toMatch(/^a\/m=/);
    for (const r of rs) expect(dataEvents(r.text)).toContain('[DONE]');
    let br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('open');
    expect(br.probes_in_flight).toBe(0);
    // Re-opened for twice open_ms; then a healthy probe is admitted (the slot was not leaked).
    a.set({ hang: false });
    await sleep(900);
    const before2 = a.requests.length;
    const rs2 = await all(20, () => chat(gw.url, { model: 'r' }));
    expect(rs2.every((r) => r.status === 200)).toBe(true);
    expect(a.requests.length - before2).toBe(1);
    br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('half_open');
    await expectAtRest(gw, [a, b]);
  });

  it('probes whose clients all go away in a burst: no probe slot is leaked, the breaker closes afterwards', async () => {
    const a = await sim('a');
    const gw = await gateway(
      cfg([a], { breaker: { ...BREAKER, half_open_probes: 3, success_threshold: 1 } }),
    );
    a.script([{ status: 500 }]);
    await chat(gw.url, { model: 'r' });
    a.set({ latencyMs: 1000 });
    await sleep(450);
    // 10 requests at once, each client gone after 100 ms: up to 3 are probes, all abandoned.
    const agent = track(clientAgent());
    await all(10, () =>
      chat(gw.url, { model: 'r' }, {}, { signal: AbortSignal.timeout(100), dispatcher: agent }),
    );
    await until(async () => expect((await status(gw.url)).get('a/m')!.breaker.probes_in_flight).toBe(0));
    a.set({ latencyMs: 0 });
    const ok = await chat(gw.url, { model: 'r' });
    expect(ok.status, ok.text).toBe(200);
    expect((await status(gw.url)).get('a/m')!.breaker.state).toBe('closed');
    await expectAtRest(gw, [a]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('in flight returns to exactly zero after every way a request ends, under concurrency', () => {
  it('success, failover, client aborts at each phase, stream cuts, timeouts, 429s: gauge, status and pools at 0', async () => {
    const a = await sim('a', { chunkDelayMs: 30, completionTokens: 6 });
    const b = await sim('b', { chunkDelayMs: 30, completionTokens: 6 });
    const gw = await gateway(
      cfg([a, b], {
        provider: { a: { timeouts: TIMEOUTS }, b: { timeouts: TIMEOUTS } },
        routing: { total_timeout_ms: 2000 },
      }),
    );
    const agent = track(clientAgent());
    const C = 12;
    const seen: Array<[string, Res | string]> = [];
    const group = async (what: string, fn: () => Promise<Res | string>): Promise<void> => {
      for (const r of await all(C, fn)) seen.push([what, r]);
      // Each ending, once its clients are done, leaves nothing counted in flight.
      await expectAtRest(gw, [a, b]);
    };
    const req = (body: Record<string, unknown>, signal?: AbortSignal) =>
      chat(gw.url, { model: 'r', ...body }, {}, { signal, dispatcher: agent });

    await group('success json', () => req({}));
    await group('success stream', () => req({ stream: true }));
    a.set({ status: 500 });
    await group('failover json', () => req({}));
    await group('failover stream', () => req({ stream: true }));
    a.set({ status: undefined, latencyMs: 250 });
    await group('abort waiting for headers', () => req({}, AbortSignal.timeout(60)));
    await group('abort stream before commit', () => req({ stream: true }, AbortSignal.timeout(60)));
    a.set({ latencyMs: 0, chunkDelayMs: 80 });
    await group('abort stream mid-answer', () => abortMidStream(gw.url, { model: 'r' }));
    await group('abort stream after 150 ms', () => abortMidStream(gw.url, { model: 'r' }, 150));
    a.set({ chunkDelayMs: 30, dropAfterChunks: 2 });
    await group('stream cut after commit', () => req({ stream: true }));
    a.set({ dropAfterChunks: undefined, errorEventAfterChunks: 2 });
    await group('error event after commit', () => req({ stream: true }));
    a.set({ errorEventAfterChunks: undefined, hangAfterHeaders: true });
    await group('stall after headers, fail over', () => req({ stream: true }));
    a.set({ hangAfterHeaders: false, hang: true });
    b.set({ hang: true });
    await group('first-byte timeouts everywhere', () => req({}));
    a.set({ hang: false, latencyMs: 0, chunkDelayMs: 0 });
    b.set({ hang: false });
    a.set({ status: 429, retryAfterS: 1 });
    await group('429 then b', () => req({}));
    a.set({ status: undefined, retryAfterS: undefined });

    const codes = countBy(seen, ([w, r]) => `${w}:${typeof r === 'string' ? r : r.status}`);
    // Sanity: the scenarios did what they were meant to.
    expect(codes['success json:200']).toBe(C);
    expect(codes['failover stream:200']).toBe(C);
    expect(codes['first-byte timeouts everywhere:504'] ?? codes['first-byte timeouts everywhere:502']).toBe(
      C,
    );
    expect(codes['429 then b:200']).toBe(C);
    const m = await metrics(gw.url);
    for (const s of select(m, 'llm_router_inflight_requests')) expect(s.value).toBe(0);
    // One request counted per request sent, whatever its end.
    await until(async () => {
      expect(sum(await metrics(gw.url), 'llm_router_requests_total')).toBe(seen.length);
    });
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('counters agree with each other and with what the clients saw', () => {
  it('120 requests, 20 at a time, over flaky upstreams: statuses, attempts, failovers, decisions, tokens, cost', async () => {
    const a = await sim('a', { failRate: 0.3, completionTokens: 5 });
    const b = await sim('b', { failRate: 0.3, completionTokens: 7 });
    const c = await sim('c', { completionTokens: 9 });
    const price = (i: number, o: number) => ({ price: { input_per_mtok: i, output_per_mtok: o } });
    const gw = await gateway(
      cfg([a, b, c], {
        strategy: 'round-robin',
        model: { a: price(1, 2), b: price(3, 5), c: price(7, 11) },
      }),
    );
    const rs = await pool(120, 20, (i) =>
      chat(gw.url, {
        model: 'r',
        stream: i % 2 === 0,
        stream_options: i % 2 === 0 ? { include_usage: true } : undefined,
        messages: [{ role: 'user', content: `question ${i} ${'x'.repeat(i)}` }],
      }),
    );
    // Let the end-of-turn bookkeeping of the last answers run.
    await until(async () => {
      expect(sum(await metrics(gw.url), 'llm_router_requests_total')).toBe(120);
    });
    const m = await metrics(gw.url);
    const byStatus = countBy(rs, (r) => String(r.status));
    for (const [st, n] of Object.entries(byStatus))
      expect(sum(m, 'llm_router_requests_total', { status: st }), `status ${st}`).toBe(n);

    const attempts = rs.reduce((s, r) => s + Number(r.headers['x-router-attempts'] ?? 0), 0);
    expect(sum(m, 'llm_router_upstream_attempts_total')).toBe(attempts);
    // Each attempt that the request moved on from is one failover.
    const moves = rs.reduce((s, r) => {
      const n = Number(r.headers['x-router-attempts'] ?? 0);
      return s + (r.status === 200 ? n - 1 : Math.max(0, n - 1));
    }, 0);
    expect(sum(m, 'llm_router_failovers_total')).toBe(moves);
    expect(sum(m, 'llm_router_routing_decisions_total')).toBe(120);
    // Attempts per upstream: as many as the simulators received.
    for (const s of [a, b, c])
      expect(sum(m, 'llm_router_upstream_attempts_total', { provider: s.options.name }), s.options.name).toBe(
        s.requests.length,
      );

    // Tokens and cost from the usage each client got.
    const usage: Record<string, { p: number; c: number }> = {};
    for (const r of rs) {
      if (r.status !== 200) continue;
      const prov = r.headers['x-router-provider']!;
      let u: { prompt_tokens: number; completion_tokens: number } | undefined;
      if (r.text.startsWith('{')) u = r.json.usage as typeof u;
      else
        for (const d of dataEvents(r.text)) {
          if (d === '[DONE]') continue;
          const j = JSON.parse(d) as { usage?: typeof u };
          if (j.usage) u = j.usage;
        }
      expect(u, r.text.slice(0, 300)).toBeDefined();
      const acc = (usage[prov] ??= { p: 0, c: 0 });
      acc.p += u!.prompt_tokens;
      acc.c += u!.completion_tokens;
    }
    const prices: Record<string, [number, number]> = { a: [1, 2], b: [3, 5], c: [7, 11] };
    for (const [prov, u] of Object.entries(usage)) {
      expect(value1(m, 'llm_router_tokens_total', { provider: prov, kind: 'prompt' }), prov).toBe(u.p);
      expect(value1(m, 'llm_router_tokens_total', { provider: prov, kind: 'completion' }), prov).toBe(u.c);
      const [pi, po] = prices[prov]!;
      expect(value1(m, 'llm_router_cost_usd_total', { provider: prov })).toBeCloseTo(
        (u.p * pi + u.c * po) / 1e6,
        9,
      );
    }
    await expectAtRest(gw, [a, b, c]);
  });
});

function value1(m: readonly Sample[], name: string, labels: Record<string, string>): number {
  return sum(m, name, labels);
}

// ---------------------------------------------------------------------------------------------------------

describe('strategies under real concurrency', () => {
  it('round-robin: 300 concurrent requests over three upstreams split evenly', async () => {
    const [a, b, c] = [await sim('a'), await sim('b'), await sim('c')];
    const gw = await gateway(cfg([a, b, c], { strategy: 'round-robin' }));
    const rs = await all(300, () => chat(gw.url, { model: 'r' }));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    const by = countBy(rs, (r) => r.headers['x-router-provider']!);
    for (const p of ['a', 'b', 'c']) {
      expect(by[p], JSON.stringify(by)).toBeGreaterThanOrEqual(90);
      expect(by[p], JSON.stringify(by)).toBeLessThanOrEqual(110);
    }
  });

  it('weighted 1:3: 400 requests, 40 at a time, in proportion within a loose bound', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const gw = await gateway(
      cfg([a, b], {
        strategy: 'weighted',
        targets: [
          { target: 'a/m', weight: 1 },
          { target: 'b/m', weight: 3 },
        ],
      }),
    );
    const rs = await pool(400, 40, () => chat(gw.url, { model: 'r' }));
    const by = countBy(rs, (r) => r.headers['x-router-provider']!);
    expect((by.b ?? 0) / 400, JSON.stringify(by)).toBeGreaterThan(0.65);
    expect((by.b ?? 0) / 400, JSON.stringify(by)).toBeLessThan(0.85);
  });

  it('least-busy: a slow upstream accumulates in-flight requests and loses traffic to a fast one', async () => {
    const a = await sim('a', { latencyMs: 400 });
    const b = await sim('b', { latencyMs: 5 });
    const gw = await gateway(cfg([a, b], { strategy: 'least-busy' }));
    const rs = await pool(150, 15, () => chat(gw.url, { model: 'r' }));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    const by = countBy(rs, (r) => r.headers['x-router-provider']!);
    expect((by.b ?? 0) / 150, JSON.stringify(by)).toBeGreaterThan(0.7);
    await expectAtRest(gw, [a, b]);
  });

  it('latency: a burst onto two equally fast measured upstreams is spread, not all sent to one', async () => {
    const a = await sim('a', { latencyMs: 40 });
    const b = await sim('b', { latencyMs: 40 });
    const gw = await gateway(cfg([a, b], { strategy: 'latency' }));
    for (let i = 0; i < 10; i++) await chat(gw.url, { model: 'r' });
    for (let i = 0; i < 4; i++) {
      await chat(gw.url, { model: 'r' }, { 'x-router-provider': 'a' });
      await chat(gw.url, { model: 'r' }, { 'x-router-provider': 'b' });
    }
    const rs = await all(60, () => chat(gw.url, { model: 'r' }));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    const by = countBy(rs, (r) => r.headers['x-router-provider']!);
    // Load scaling (in flight + 1) must share a burst: neither gets less than a fifth.
    expect(Math.min(by.a ?? 0, by.b ?? 0), JSON.stringify(by)).toBeGreaterThanOrEqual(12);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('max_concurrency of a provider', () => {
  it('more streams than the pool allows: none hangs past total_ms, and JSON requests to other providers are not starved', async () => {
    const a = await sim('a', { chunkDelayMs: 100, completionTokens: 8 });
    const b = await sim('b', { chunkDelayMs: 100, completionTokens: 8 });
    const c = await sim('c');
    const gw = await gateway(
      cfg([a, b, c], {
        provider: {
          a: { max_concurrency: 2, timeouts: { ...RELAXED, first_byte_ms: 1500, total_ms: 4000 } },
        },
        routes: {
          s: { strategy: 'priority', targets: ['a/m', 'b/m'] },
          j: { strategy: 'priority', targets: ['c/m'] },
        },
      }),
    );
    const streams = all(10, () => chat(gw.url, { model: 's', stream: true }));
    // The streams hold a's pool (max_concurrency 2) before the JSON requests start.
    await until(() => expect(a.requests.length).toBeGreaterThanOrEqual(2));
    const jsons = await pool(30, 10, () => chat(gw.url, { model: 'j' }));
    for (const r of jsons) {
      expect(r.status).toBe(200);
      expect(r.ms).toBeLessThan(700); // not queued behind the 800 ms streams
    }
    const ss = await streams;
    for (const r of ss) {
      expect(r.status, r.text.slice(0, 200)).toBe(200);
      expect(dataEvents(r.text)).toContain('[DONE]');
      expect(r.ms).toBeLessThan(4500);
    }
    expect(a.requests.length).toBeGreaterThanOrEqual(2);
    await expectAtRest(gw, [a, b, c]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('state and label bounds', () => {
  /** Every llm_router_* series in a scrape, as name{labels}. */
  function seriesOf(m: readonly Sample[]): Set<string> {
    return new Set(
      m.filter((s) => s.name.startsWith('llm_router_')).map((s) => `${s.name}${JSON.stringify(s.labels)}`),
    );
  }

  it('thousands of distinct model names, request ids, x-router-* values and paths add no metric series', async () => {
    const a = await sim('a');
    const gw = await gateway(cfg([a], { strategy: 'round-robin' }));
    const junk = async (i: number): Promise<number> => {
      const k = i % 8;
      const id = `${i}-${Math.random().toString(36).slice(2)}`;
      if (k === 0) return (await chat(gw.url, { model: `unknown-model-${id}` })).status;
      if (k === 1) return (await chat(gw.url, { model: `a/unknown-${id}` })).status;
      if (k === 2) return (await chat(gw.url, { model: `nope-${id}/m` })).status;
      if (k === 3) return (await chat(gw.url, { model: 'r' }, { 'x-router-strategy': `s-${id}` })).status;
      if (k === 4) return (await chat(gw.url, { model: 'r' }, { 'x-router-provider': `p-${id}` })).status;
      if (k === 5) return (await chat(gw.url, { model: 'r' }, { 'x-request-id': `rid-${id}` })).status;
      if (k === 6) return (await chat(gw.url, { model: 'r' }, {}, { path: `/v1/some-path-${id}` })).status;
      const res = await request(`${gw.url}/v1/models/${encodeURIComponent(`m-${id}`)}`);
      await res.body.dump();
      return res.statusCode;
    };
    // Every kind once (and a few more), so every legitimate series exists; then many more distinct values.
    await pool(64, 16, junk);
    const before = seriesOf(await metrics(gw.url));
    const statuses = await pool(1600, 32, (i) => junk(i + 64));
    expect(statuses.filter((s) => s === 0)).toHaveLength(0);
    const after = seriesOf(await metrics(gw.url));
    const added = [...after].filter((s) => !before.has(s));
    expect(added, added.slice(0, 5).join('\n')).toEqual([]);
    expect(after.size).toBeLessThan(400);
    const st = await request(`${gw.url}/router/status`);
    expect((await st.body.text()).length).toBeLessThan(20_000);
  });

  it('the LLM router cache holds at most cache_size prompts: an old prompt, pushed out, asks the router again', async () => {
    const rt = await sim('rt', { reply: '{"tier": "balanced", "reason": "ok"}', completionTokens: 1 });
    const bal = await sim('bal');
    const gw = await gateway({
      providers: [simProvider('rt', rt.url, ['m']), simProvider('bal', bal.url, ['m'])],
      routes: {
        t: {
          strategy: 'priority',
          tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 1500, cache_ttl_s: 300, cache_size: 20 },
        },
      },
    });
    const ask = (i: number) =>
      chat(gw.url, { model: 't', messages: [{ role: 'user', content: `distinct prompt number ${i}` }] });
    const rs = await pool(80, 8, (i) => ask(i));
    expect(rs.every((r) => r.status === 200 && r.headers['x-router-tier'] === 'balanced')).toBe(true);
    expect(rt.requests).toHaveLength(80);
    await ask(79); // recent: cached
    expect(rt.requests).toHaveLength(80);
    await ask(0); // long pushed out of a 20-entry cache
    expect(rt.requests).toHaveLength(81);
  });

  it('30 concurrent identical prompts on a tie: the LLM router is not asked 30 times', async () => {
    const rt = await sim('rt', {
      reply: '{"tier": "balanced", "reason": "ok"}',
      completionTokens: 1,
      latencyMs: 200,
    });
    const bal = await sim('bal');
    const gw = await gateway({
      providers: [simProvider('rt', rt.url, ['m']), simProvider('bal', bal.url, ['m'])],
      routes: {
        t: {
          strategy: 'priority',
          tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 1500, cache_ttl_s: 300 },
        },
      },
    });
    const rs = await all(30, () =>
      chat(gw.url, { model: 't', messages: [{ role: 'user', content: 'the same question' }] }),
    );
    expect(rs.every((r) => r.status === 200)).toBe(true);
    // Concurrent misses of one key share the call in flight (single-flight), since every router call
    // is a paid LLM call; a cache that lets a burst of the same prompt through 30 times is no cache under load.
    expect(rt.requests.length).toBeLessThanOrEqual(3);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('reloads under load', () => {
  function yamlFor(sims: readonly Simulator[], targets: string[], strategy: string): string {
    return [
      'providers:',
      ...sims.map(
        (s) =>
          `  - { name: ${s.options.name}, base_url: "${s.url}/v1", models: [{ name: m }], timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 2000, total_ms: 5000 } }`,
      ),
      'routes:',
      `  r: { strategy: ${strategy}, targets: [${targets.join(', ')}] }`,
      'routing: { max_attempts: 3, total_timeout_ms: 5000 }',
    ].join('\n');
  }

  it('20 reloads while 200 requests (JSON and streams) run: none lost, gauges at 0 after', async () => {
    const a = await sim('a', { chunkDelayMs: 10, completionTokens: 5 });
    const b = await sim('b', { chunkDelayMs: 10, completionTokens: 5 });
    const gw = track(await startGateway(yamlFor([a, b], ['a/m', 'b/m'], 'round-robin')));
    let stop = false;
    const reloads = (async () => {
      for (let i = 0; i < 20 && !stop; i++) {
        await sleep(40);
        const strategy = ['round-robin', 'least-busy', 'priority', 'latency'][i % 4]!;
        const targets = i % 2 === 0 ? ['b/m', 'a/m'] : ['a/m', 'b/m'];
        gw.gateway.reload(parseConfigText(yamlFor([a, b], targets, strategy), {}));
      }
    })();
    const rs = await pool(200, 20, (i) => chat(gw.url, { model: 'r', stream: i % 3 === 0 }));
    stop = true;
    await reloads;
    const bad = rs.filter((r) => r.status !== 200);
    expect(bad.map((r) => `${r.status} ${r.text.slice(0, 200)}`)).toEqual([]);
    for (const r of rs.filter((x) => x.text.startsWith('data:')))
      expect(dataEvents(r.text)).toContain('[DONE]');
    await expectAtRest(gw, [a, b]);
    await until(async () => expect(sum(await metrics(gw.url), 'llm_router_requests_total')).toBe(200));
  });

  it('a reload that removes the upstream of a stream in flight: its gauge does not go negative, and it comes back at 0', async () => {
    const a = await sim('a', { chunkDelayMs: 100, completionTokens: 6 });
    const b = await sim('b');
    const gw = track(await startGateway(yamlFor([a, b], ['a/m', 'b/m'], 'priority')));
    const streams = all(5, () => chat(gw.url, { model: 'r', stream: true }));
    await until(async () =>
      expect(select(await metrics(gw.url), 'llm_router_inflight_requests', { provider: 'a' })[0]?.value).toBe(
        5,
      ),
    );
    gw.gateway.reload(parseConfigText(yamlFor([b], ['b/m'], 'priority'), {}));
    // Watch a's series while its streams end after the reload, not only once they are over (its series may be
    // gone by then, and an absent series is never negative).
    const seenA: number[] = [];
    let ended = false;
    const watching = (async () => {
      while (!ended) {
        for (const s of select(await metrics(gw.url), 'llm_router_inflight_requests', { provider: 'a' }))
          seenA.push(s.value);
        await sleep(10);
      }
    })();
    const ss = await streams;
    ended = true;
    await watching;
    for (const r of ss) expect(dataEvents(r.text)).toContain('[DONE]');
    expect(seenA.length, "a's series was seen after the reload").toBeGreaterThan(0);
    expect(Math.min(...seenA)).toBeGreaterThanOrEqual(0);
    const m = await metrics(gw.url);
    for (const s of select(m, 'llm_router_inflight_requests'))
      expect(s.value, JSON.stringify(s.labels)).toBeGreaterThanOrEqual(0);
    // a comes back: it starts with nothing in flight, in /router/status and in the gauge.
    gw.gateway.reload(parseConfigText(yamlFor([a, b], ['a/m', 'b/m'], 'priority'), {}));
    await expectAtRest(gw, [a, b]);
    const m2 = await metrics(gw.url);
    // The series is back (primed at 0), not merely absent.
    expect(select(m2, 'llm_router_inflight_requests', { provider: 'a' }).map((s) => s.value)).toEqual([0]);
    const r = await chat(gw.url, { model: 'r' });
    expect(r.headers['x-router-provider']).toBe('a');
    await expectAtRest(gw, [a, b]);
  });
});

// ---------------------------------------------------------------------------------------------------------

/**
 * A bare HTTP/1.1 upstream (OpenAI JSON answers) that keeps connections alive without announcing how long,
 * as load balancers do, and closes each one after `idleMs` without a request on it.
 */
async function silentKeepAliveUpstream(
  idleMs: number,
): Promise<{ url: string; requests: () => number; openSockets: () => number; close(): Promise<void> }> {
  let requests = 0;
  const sockets = new Set<Socket>();
  const server = createNetServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = '';
    let idle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => sock.end(), idleMs);
    };
    arm();
    sock.on('data', (d: Buffer) => {
      clearTimeout(idle);
      buf += d.toString('latin1');
      for (;;) {
        const head = buf.indexOf('\r\n\r\n');
        if (head < 0) return;
        const len = Number(/content-length:\s*(\d+)/i.exec(buf.slice(0, head))?.[1] ?? 0);
        if (buf.length < head + 4 + len) return;
        buf = buf.slice(head + 4 + len);
        requests++;
        const body = JSON.stringify({
          id: 'x',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        });
        sock.write(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        arm();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    requests: () => requests,
    openSockets: () => sockets.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('idle pooled connections', () => {
  it('an upstream that silently closes idle keep-alive sockets after 1 s: bursts ~1 s apart never turn into client errors', async () => {
    const up = track(await silentKeepAliveUpstream(1000));
    const gw = await gateway({
      providers: [{ name: 'u', base_url: `${up.url}/v1`, models: [{ name: 'm' }], timeouts: RELAXED }],
      routes: { r: { strategy: 'priority', targets: ['u/m'] } },
      routing: { max_attempts: 3, total_timeout_ms: 5000 },
    });
    const failures: string[] = [];
    for (const gap of [0, 1100, 1000, 1005, 1100]) {
      await sleep(gap);
      const rs = await all(6, () => chat(gw.url, { model: 'r' }));
      for (const r of rs)
        if (r.status !== 200) failures.push(`after ${gap} ms idle: ${r.status} ${r.text.slice(0, 200)}`);
    }
    expect(failures).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('SIGTERM with many streams in flight (the built CLI)', () => {
  async function startWith(graceMs: number, simOpts: Parameters<typeof startSimulator>[0]) {
    const s = await sim('slow', simOpts);
    const path = join(workDir(), `gw-${graceMs}-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(path, simConfigYaml([s], { shutdownGraceMs: graceMs }));
    const cli = await startCli(path);
    track({ close: () => cli.kill() });
    return { s, cli };
  }

  /** Opens a stream and reads until its first content arrived; returns the rest as a promise. */
  async function openStream(url: string): Promise<{ status: number; rest: Promise<string> }> {
    const res = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: MSG }),
    });
    const it = res.body[Symbol.asyncIterator]();
    const first = String((await it.next()).value ?? '');
    const rest = (async () => {
      let text = first;
      try {
        for (;;) {
          const n = await it.next();
          if (n.done) break;
          text += String(n.value);
        }
      } catch (err) {
        text += `\n<client error ${(err as { code?: string }).code ?? String(err)}>`;
      }
      return text;
    })();
    return { status: res.statusCode, rest };
  }

  async function fresh(url: string, path: string): Promise<number | string> {
    const agent = new Agent({ connections: 1 });
    try {
      const res = await request(`${url}${path}`, { dispatcher: agent, headersTimeout: 2_000 });
      await res.body.dump();
      return res.statusCode;
    } catch (err) {
      return (err as { code?: string }).code ?? String(err);
    } finally {
      await agent.destroy().catch(() => undefined);
    }
  }

  it('20 streams in flight all finish with [DONE] within the grace; new requests are refused; exit 0', async () => {
    const { cli } = await startWith(5000, { chunkDelayMs: 100, completionTokens: 12 });
    const streams = await all(20, () => openStream(cli.url));
    expect(streams.map((s) => s.status)).toEqual(Array(20).fill(200));
    const t0 = performance.now();
    cli.proc.kill('SIGTERM');
    await cli.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'));
    expect([503, 'ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET']).toContain(await fresh(cli.url, '/readyz'));
    const texts = await Promise.all(streams.map((s) => s.rest));
    for (const t of texts) {
      expect(dataEvents(t), t.slice(-300)).toContain('[DONE]');
      expect(t).not.toContain('<client error');
    }
    expect(await cli.exited).toBe(0);
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  it('10 streams that outlast shutdown_grace_ms end within it, each visibly cut (no [DONE]), and the process exits 0', async () => {
    const { cli } = await startWith(800, { chunkDelayMs: 100, completionTokens: 60 });
    const streams = await all(10, () => openStream(cli.url));
    expect(streams.map((s) => s.status)).toEqual(Array(10).fill(200));
    const t0 = performance.now();
    cli.proc.kill('SIGTERM');
    const texts = await Promise.all(streams.map((s) => s.rest));
    const took = performance.now() - t0;
    for (const t of texts) expect(dataEvents(t), t.slice(-300)).not.toContain('[DONE]');
    expect(took).toBeLessThan(3000);
    expect(await cli.exited).toBe(0);
    // A client can tell the cut: an OpenAI-shaped error event (what terminate sends) or a transport error.
    for (const t of texts) expect(/"error"|<client error/.test(t), t.slice(-300)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('breaker fed by many requests that were already in flight when it tripped', () => {
  const BREAKER = {
    failure_threshold: 2,
    open_ms: 300,
    max_open_ms: 4000,
    half_open_probes: 1,
    success_threshold: 1,
  };

  it('20 concurrent failures: it opens once, for open_ms — the late failures do not re-open or double it', async () => {
    const a = await sim('a', { status: 500, latencyMs: 150 });
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { breaker: BREAKER }));
    const rs = await all(20, () => chat(gw.url, { model: 'r' }));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    const br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('open');
    // "doubled on each re-open": failures of requests admitted while it was closed are not re-opens.
    expect(br.opens).toBe(1);
    expect(br.open_ms).toBe(300);
    const m = await metrics(gw.url);
    expect(sum(m, 'llm_router_circuit_transitions_total', { provider: 'a', to: 'open' })).toBe(1);
    // It half-opens after ~open_ms, not after a doubled one.
    a.set({ status: undefined, latencyMs: 0 });
    await sleep(450);
    const r = await chat(gw.url, { model: 'r' });
    expect(r.headers['x-router-provider']).toBe('a');
  });

  it('20 concurrent 429s with Retry-After: 1 — a cooldown of ~1 s, open_ms not doubled, then served again', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 1, latencyMs: 100 });
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { breaker: BREAKER }));
    const rs = await all(20, () => chat(gw.url, { model: 'r' }));
    expect(rs.every((r) => r.status === 200 && r.headers['x-router-provider'] === 'b')).toBe(true);
    const br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('rate_limit');
    expect(br.open_ms).toBe(300);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(1000);
    a.set({ status: undefined, retryAfterS: undefined, latencyMs: 0 });
    await sleep(1150);
    const r = await chat(gw.url, { model: 'r' });
    expect(
      r.headers['x-router-provider'],
      JSON.stringify(await status(gw.url).then((s) => s.get('a/m'))),
    ).toBe('a');
  });

  it('a slow success admitted while closed, landing after the trip, does not close the open breaker', async () => {
    const a = await sim('a', { latencyMs: 600 });
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { breaker: { ...BREAKER, open_ms: 2000 } }));
    const slow = chat(gw.url, { model: 'r' }); // admitted while closed, answers in 600 ms
    await a.waitForRequests(1);
    a.script([
      { status: 500, latencyMs: 0 },
      { status: 500, latencyMs: 0 },
    ]);
    await chat(gw.url, { model: 'r' });
    await chat(gw.url, { model: 'r' });
    expect((await status(gw.url)).get('a/m')!.breaker.state).toBe('open');
    expect((await slow).status).toBe(200);
    // The old success says nothing about a's health since the trip: a stays open for its open_ms.
    const br = (await status(gw.url)).get('a/m')!.breaker;
    expect(br.state).toBe('open');
  });
});

describe('per-client rate limit under a burst', () => {
  it('requests_per_minute 10 with 50 concurrent requests: exactly 10 served, 40 get 429 with Retry-After', async () => {
    const a = await sim('a');
    const gw = await gateway(cfg([a], { server: { rate_limit: { requests_per_minute: 10 } } }));
    const rs = await all(50, () => chat(gw.url, { model: 'r' }));
    const by = countBy(rs, (r) => String(r.status));
    expect(by).toEqual({ 200: 10, 429: 40 });
    for (const r of rs.filter((x) => x.status === 429))
      expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
    expect(a.requests).toHaveLength(10);
  });
});

describe('histograms agree with the counters', () => {
  it('after a concurrent mixed batch: one duration and one overhead observation per routed request', async () => {
    const a = await sim('a', { failRate: 0.3 });
    const b = await sim('b');
    const gw = await gateway(cfg([a, b], { strategy: 'round-robin' }));
    const rs = await pool(80, 16, (i) => chat(gw.url, { model: 'r', stream: i % 2 === 1 }));
    expect(rs.every((r) => r.status === 200)).toBe(true);
    await until(async () => expect(sum(await metrics(gw.url), 'llm_router_requests_total')).toBe(80));
    const m = await metrics(gw.url);
    expect(sum(m, 'llm_router_request_duration_seconds_count')).toBe(80);
    expect(sum(m, 'llm_router_overhead_seconds_count')).toBe(80);
    expect(sum(m, 'llm_router_request_duration_seconds_count', { stream: 'true' })).toBe(40);
    expect(sum(m, 'llm_router_time_to_first_token_seconds_count')).toBe(80);
    expect(sum(m, 'llm_router_time_per_output_token_seconds_count')).toBeLessThanOrEqual(80);
  });
});

describe('reloads over a long life', () => {
  it('30 reloads that change a provider leave no pooled upstream sockets of the old configs open', async () => {
    const up = track(await silentKeepAliveUpstream(60_000));
    const yaml = (i: number) =>
      [
        'providers:',
        `  - { name: u, base_url: "${up.url}/v1", models: [{ name: m }], timeouts: { connect_ms: 1000, first_byte_ms: ${2000 + i}, idle_ms: 2000, total_ms: 5000 }, max_concurrency: ${100 + i} }`,
        'routes:',
        '  r: { strategy: priority, targets: [u/m] }',
      ].join('\n');
    const gw = track(await startGateway(yaml(0)));
    for (let i = 1; i <= 30; i++) {
      const rs = await all(3, () => chat(gw.url, { model: 'r' }));
      expect(rs.every((r) => r.status === 200)).toBe(true);
      gw.gateway.reload(parseConfigText(yaml(i), {}));
    }
    await all(3, () => chat(gw.url, { model: 'r' }));
    // Old configs' pools are closed once their requests are done: a long-lived gateway that reloads on every
    // config push must not keep every old pool's keep-alive sockets to the provider.
    await until(() => expect(up.openSockets()).toBeLessThanOrEqual(6), 2000);
  });
});

describe('SIGTERM with requests not yet committed', () => {
  it('10 JSON requests and 10 streams still waiting on their upstream when SIGTERM comes are served within the grace', async () => {
    const s = await sim('slow', { latencyMs: 700 });
    const path = join(workDir(), `gw-precommit-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(path, simConfigYaml([s], { shutdownGraceMs: 5000 }));
    const cli = await startCli(path);
    track({ close: () => cli.kill() });
    const pending = all(20, (i) => chat(cli.url, { model: 'main', stream: i % 2 === 0 }));
    await until(() => expect(s.requests.length).toBe(20), 3000);
    cli.proc.kill('SIGTERM');
    const rs = await pending;
    expect(rs.map((r) => `${r.status}${r.error ?? ''}`)).toEqual(Array(20).fill('200'));
    for (const r of rs.filter((x) => x.text.startsWith('data:')))
      expect(dataEvents(r.text)).toContain('[DONE]');
    expect(await cli.exited).toBe(0);
  });
});

describe('exploration under a burst', () => {
  for (const strategy of ['latency', 'hybrid']) {
    it(`${strategy}: a burst of 100 while a slow upstream is still unmeasured gives it a bounded share, not a flood`, async () => {
      const a = await sim('a', { latencyMs: 20 });
      const b = await sim('b', { latencyMs: 20 });
      const c = await sim('c', { latencyMs: 800 });
      const gw = await gateway(cfg([a, b, c], { strategy }));
      for (let i = 0; i < 5; i++) {
        await chat(gw.url, { model: 'r' }, { 'x-router-provider': 'a' });
        await chat(gw.url, { model: 'r' }, { 'x-router-provider': 'b' });
      }
      const rs = await all(100, () => chat(gw.url, { model: 'r' }));
      expect(rs.every((r) => r.status === 200)).toBe(true);
      const by = countBy(rs, (r) => r.headers['x-router-provider']!);
      // exploration_share 0.1: about 10 of 100; 30 is far past any reading of "a bounded share".
      expect(by.c ?? 0, JSON.stringify(by)).toBeLessThanOrEqual(30);
    });
  }
});

describe('request identity under concurrency', () => {
  it('20 concurrent requests sharing one x-request-id: aborting half cancels only their own upstream calls', async () => {
    const a = await sim('a', { latencyMs: 500 });
    const gw = await gateway(cfg([a]));
    const agent = track(clientAgent());
    const rs = await all(20, (i) =>
      chat(
        gw.url,
        { model: 'r', stream: i % 4 < 2 },
        { 'x-request-id': 'same-id' },
        { signal: i % 2 === 0 ? AbortSignal.timeout(150) : undefined, dispatcher: agent },
      ),
    );
    const kept = rs.filter((_, i) => i % 2 === 1);
    expect(kept.map((r) => r.status)).toEqual(Array(10).fill(200));
    for (const r of kept) expect(r.headers['x-request-id']).toBe('same-id');
    await until(() => expect(a.requests.filter((q) => q.aborted)).toHaveLength(10));
    expect(a.requests.filter((q) => q.finished)).toHaveLength(10);
    await expectAtRest(gw, [a]);
  });
});

describe('gauges sampled while load runs', () => {
  it('in-flight never reads negative, nor above the requests actually open, during failovers and aborts', async () => {
    const a = await sim('a', { failRate: 0.5, latencyMs: 30 });
    const b = await sim('b', { latencyMs: 30, chunkDelayMs: 20, completionTokens: 5 });
    const gw = await gateway(cfg([a, b], { strategy: 'round-robin' }));
    const agent = track(clientAgent());
    const C = 16;
    let done = false;
    const readings: number[] = [];
    const sampler = (async () => {
      while (!done) {
        const m = await metrics(gw.url);
        for (const s of select(m, 'llm_router_inflight_requests')) readings.push(s.value);
        for (const u of (await status(gw.url)).values()) readings.push(u.in_flight);
        await sleep(10);
      }
    })();
    await pool(160, C, (i) =>
      chat(
        gw.url,
        { model: 'r', stream: i % 2 === 0 },
        {},
        { signal: i % 5 === 0 ? AbortSignal.timeout(20 + (i % 40)) : undefined, dispatcher: agent },
      ),
    );
    done = true;
    await sampler;
    expect(readings.length).toBeGreaterThan(5);
    expect(Math.min(...readings)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...readings)).toBeLessThanOrEqual(C);
    await expectAtRest(gw, [a, b]);
  });
});

describe('half-open probe limit on every path to the upstream', () => {
  const BREAKER = {
    failure_threshold: 1,
    open_ms: 300,
    max_open_ms: 4000,
    half_open_probes: 1,
    success_threshold: 3,
  };

  async function halfOpenA() {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway(
      cfg([a, b], {
        breaker: BREAKER,
        routes: {
          r1: { strategy: 'priority', targets: ['a/m', 'b/m'] },
          r2: { strategy: 'round-robin', targets: ['b/m', 'a/m'] },
        },
      }),
    );
    a.script([{ status: 500 }]);
    expect((await chat(gw.url, { model: 'a/m' })).status).toBe(502);
    // The probe outlasts the whole burst: 40 requests sent at once reached the gateway over more than 300 ms on
    // a loaded CI machine, long enough for the first probe to end and a second to start (a flaky count of 2).
    a.set({ latencyMs: 1500 });
    await sleep(400);
    return { a, b, gw, before: a.requests.length };
  }

  it('a burst over two routes, direct provider/model names and pinned requests: one probe in all', async () => {
    const { a, gw, before } = await halfOpenA();
    const rs = await all(40, (i) => {
      const k = i % 4;
      if (k === 0) return chat(gw.url, { model: 'r1' });
      if (k === 1) return chat(gw.url, { model: 'r2' });
      if (k === 2) return chat(gw.url, { model: 'a/m' });
      return chat(gw.url, { model: 'r1' }, { 'x-router-provider': 'a' });
    });
    expect(a.requests.length - before, JSON.stringify(countBy(rs, (r) => String(r.status)))).toBe(1);
    for (const r of rs) expect([200, 503]).toContain(r.status);
    await expectAtRest(gw);
  });
});
