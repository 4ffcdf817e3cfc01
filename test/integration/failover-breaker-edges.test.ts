/**
 * Failover classification and the circuit breaker at their edges (SPEC §2 "Failover", "Circuit breaker"; §4
 * errors; §5 metrics), through HTTP against hand-written upstreams on loopback:
 * - an answer that is a failure in a provider's own dialect fails over like its plain form: a non-streamed
 *   200 whose choice finished with `error` (OpenRouter), Groq's 498 capacity_exceeded;
 * - a rate limit's cooldown is taken from where the provider puts it: Gemini's RetryInfo `retryDelay` (its
 *   429s carry no Retry-After) opens the breaker for that long, and the client's Retry-After says so;
 * - 401/403 from a provider fail over, are counted as errors and logged at error level, never relayed;
 * - Retry-After in its other spellings (fractional, negative, unparsable, a past date);
 * - an open whose time passes with no traffic turns half-open on its own (gauge, transition, status);
 * - half_open_probes > 1 with mixed results re-opens, doubled, and the success does not count;
 * - a client that leaves during a failover's second attempt charges nothing to that upstream.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, fail500, sendJson, startMock } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { breakerAt } from '../helpers/resilience-harness.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: Record<string, unknown>;
}

async function chat(
  gw: TestGateway,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<Reply> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'r', messages: MSG, ...body }),
    signal,
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

/** A gateway over mocks `name -> url`, one priority route `r` over them in that order. */
async function gatewayOver(
  upstreams: Record<string, string>,
  extra: Record<string, unknown> = {},
  opts: { now?: () => number } = {},
): Promise<TestGateway> {
  return track(
    await startGateway(
      {
        providers: Object.entries(upstreams).map(([name, url]) =>
          simProvider(name, url, ['m'], { timeouts: RELAXED }),
        ),
        routes: { r: { strategy: 'priority', targets: Object.keys(upstreams).map((n) => `${n}/m`) } },
        ...extra,
      },
      opts,
    ),
  );
}

function content(r: Reply): unknown {
  return (r.json.choices as Array<{ message?: { content?: unknown } }> | undefined)?.[0]?.message?.content;
}

/** Waits until the breaker's end-of-turn bookkeeping of the last attempt is visible. */
async function settled(): Promise<void> {
  await sleep(30);
}

describe('a failure in a provider dialect fails over like its plain form (SPEC §2 failover)', () => {
  // SPEC §2: "an upstream that sends a 200 and then an error event ... is failed over like any 5xx"; README:
  // a chunk with "a finish_reason of error" (OpenRouter's mid-answer failure) is such an error event, and "so
  // is a non-streaming 200 whose body is an error object instead of an answer". OpenRouter puts the same
  // failure in a non-streamed answer as a choice that finished with `error` and carries an `error` object.
  const OPENROUTER_ERROR_ANSWER = {
    id: 'gen-1',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    provider: 'SomeHost',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: '' },
        finish_reason: 'error',
        native_finish_reason: 'error',
        error: { code: 502, message: 'Provider returned error' },
      },
    ],
    usage: { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 },
  };

  it('a non-streamed 200 whose only choice finished with "error": the next upstream answers', async () => {
    const a = track(await startMock((_req, res) => sendJson(res, 200, OPENROUTER_ERROR_ANSWER)));
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(content(r), r.text).toBe('from b');
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(b.received).toHaveLength(1);
    await settled();
    // A failing provider must be able to trip its breaker: its error answers are failures, not successes.
    expect((await breakerAt(gw.url, 'a/m')).consecutive_failures).toBe(1);
    const m = await scrape(gw.url);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'success' }) ?? 0,
    ).toBe(0);
  });

  it('the same failure streamed (a chunk finishing with "error" before any content) fails over', async () => {
    const a = track(
      await startMock((req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          `${chunkFrame(req.body.model, { role: 'assistant', content: '' })}data: ${JSON.stringify({
            id: 'gen-1',
            object: 'chat.completion.chunk',
            created: 1,
            model: 'm',
            choices: [{ index: 0, delta: {}, finish_reason: 'error' }],
            error: { code: 502, message: 'Provider returned error' },
          })}\n\ndata: [DONE]\n\n`,
        );
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw, { stream: true });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.text).toContain('from b');
    expect(r.headers['x-router-trail']).toBe('a/m=stream_error_event');
  });

  // Groq answers 498 `capacity_exceeded` when its flex tier is at capacity ("try again later", its docs):
  // a capacity failure of that provider, as a 503 or 429 is, not a verdict on the request. Relayed, the client
  // gets a status no SDK retries, while another upstream could answer.
  it("Groq's 498 capacity_exceeded fails over; the client never sees the 498", async () => {
    const a = track(
      await startMock((_req, res) =>
        sendJson(res, 498, {
          error: {
            message: 'Flex tier capacity exceeded. Please try again later.',
            type: 'capacity_exceeded',
            code: 'capacity_exceeded',
          },
        }),
      ),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw, { service_tier: 'flex' });
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('from b');
    expect(r.headers['x-router-trail']).toBe('a/m=http_498');
    expect(b.received).toHaveLength(1);
  });
});

describe("a rate limit's cooldown where the provider states it (SPEC §2 breaker, §4 429)", () => {
  // Gemini's OpenAI-compatible endpoint answers a rate limit as 429 with no Retry-After header: how long to
  // wait is in the body, a google.rpc.RetryInfo `retryDelay` (a protobuf duration, "37s"). SPEC §2: "a 429
  // with Retry-After opens it for exactly that long (a rate limit is a cooldown, not a fault)"; §4: 429 with
  // Retry-After when every candidate is rate limited. The provider's stated cooldown is that Retry-After.
  function geminiRateLimit(res: ServerResponse, delay: string): void {
    sendJson(res, 429, [
      {
        error: {
          code: 429,
          message:
            'You exceeded your current quota, please check your plan and billing details. Please retry in 37.2s.',
          status: 'RESOURCE_EXHAUSTED',
          details: [
            {
              '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
              violations: [
                { quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests' },
              ],
            },
            { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: delay },
          ],
        },
      },
    ]);
  }
  const BREAKER = {
    failure_threshold: 5,
    open_ms: 1000,
    max_open_ms: 8000,
    half_open_probes: 1,
    success_threshold: 1,
  };

  it('a Gemini 429 with retryDelay 37s opens its breaker for ~37 s (cause rate_limit), the next request skips it', async () => {
    const a = track(await startMock((_req, res) => geminiRateLimit(res, '37s')));
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({ a: a.url, b: b.url }, { circuit_breaker: BREAKER });
    const first = await chat(gw);
    expect(first.status, first.text).toBe(200);
    expect(first.headers['x-router-trail']).toBe('a/m=http_429');
    await settled();
    const br = await breakerAt(gw.url, 'a/m');
    expect({ state: br.state, cause: br.trip_cause }).toEqual({ state: 'open', cause: 'rate_limit' });
    expect(br.ms_until_half_open).toBeGreaterThan(35_000);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(37_000);
    const second = await chat(gw);
    expect(second.headers['x-router-attempts']).toBe('1');
    expect(a.received).toHaveLength(1);
  });

  it("the only upstream rate limited so: 429 whose Retry-After is Gemini's delay, not 1 s", async () => {
    const a = track(await startMock((_req, res) => geminiRateLimit(res, '37s')));
    const gw = await gatewayOver({ a: a.url }, { circuit_breaker: BREAKER });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBe('37');
  });
});

describe('Retry-After in its other spellings (SPEC §2 breaker)', () => {
  const BREAKER = {
    failure_threshold: 2,
    open_ms: 60_000,
    max_open_ms: 120_000,
    half_open_probes: 1,
    success_threshold: 1,
  };
  const cases: Array<[string, () => Record<string, string>, 'cooldown' | 'failure', number]> = [
    ['Retry-After: 1.5 (fractional seconds)', () => ({ 'retry-after': '1.5' }), 'cooldown', 1500],
    ['retry-after-ms: 2500.4 (fractional ms)', () => ({ 'retry-after-ms': '2500.4' }), 'cooldown', 2501],
    ['Retry-After: -5 (negative)', () => ({ 'retry-after': '-5' }), 'failure', 0],
    ['Retry-After: soon (unparsable)', () => ({ 'retry-after': 'soon' }), 'failure', 0],
    [
      'Retry-After: <an HTTP date 1 min ago>',
      () => ({ 'retry-after': new Date(Date.now() - 60_000).toUTCString() }),
      'failure',
      0,
    ],
  ];
  for (const [what, headers, kind, ms] of cases) {
    it(`${what}: ${kind === 'cooldown' ? `opens for ${ms} ms, open_ms untouched` : 'an ordinary counted failure'}`, async () => {
      const a = track(
        await startMock((_req, res) =>
          sendJson(
            res,
            429,
            { error: { message: 'slow down', type: 'rate_limit_error', param: null, code: 'rate_limited' } },
            headers(),
          ),
        ),
      );
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({ a: a.url, b: b.url }, { circuit_breaker: BREAKER });
      const r = await chat(gw);
      expect(r.status, r.text).toBe(200);
      await settled();
      const br = await breakerAt(gw.url, 'a/m');
      if (kind === 'cooldown') {
        expect({ state: br.state, cause: br.trip_cause, open_ms: br.open_ms }).toEqual({
          state: 'open',
          cause: 'rate_limit',
          open_ms: 60_000,
        });
        expect(br.ms_until_half_open).toBeLessThanOrEqual(ms);
        expect(br.ms_until_half_open).toBeGreaterThan(ms - 1000);
      } else {
        expect({ state: br.state, failures: br.consecutive_failures }).toEqual({
          state: 'closed',
          failures: 1,
        });
      }
    });
  }
});

describe('401/403 from a provider (SPEC §2: fail over, log it loudly)', () => {
  for (const status of [401, 403]) {
    it(`a ${status}: failed over, counted as an error, logged at error level, never relayed`, async () => {
      const a = track(
        await startMock((_req, res) =>
          sendJson(res, status, {
            error: {
              message: 'Incorrect API key provided',
              type: 'invalid_request_error',
              param: null,
              code: 'invalid_api_key',
            },
          }),
        ),
      );
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({ a: a.url, b: b.url });
      const r = await chat(gw);
      expect(r.status, r.text).toBe(200);
      expect(content(r)).toBe('from b');
      expect(r.headers['x-router-trail']).toBe(`a/m=http_${status}`);
      await settled();
      expect((await breakerAt(gw.url, 'a/m')).consecutive_failures).toBe(1);
      const m = await scrape(gw.url);
      expect(
        value(m, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'error' }),
      ).toBe(1);
      expect(
        value(m, 'llm_router_failovers_total', { route: 'r', from_provider: 'a', reason: 'error' }),
      ).toBe(1);
      const loud = gw.logs.filter(
        (l) => Number(l.level) >= 50 && l.upstream === 'a/m' && l.status === status,
      );
      expect(loud.length, JSON.stringify(gw.logs)).toBeGreaterThanOrEqual(1);

      // The only upstream: the client's key was fine, ours was not: 502, not the provider's 401/403.
      const solo = track(
        await startGateway({
          providers: [simProvider('a', a.url, ['m'], { timeouts: RELAXED })],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        }),
      );
      const alone = await chat(solo);
      expect(alone.status, alone.text).toBe(502);
      expect(JSON.stringify(alone.json)).not.toContain('invalid_api_key');
    });
  }
});

describe('breaker state machine edges (SPEC §2 circuit breaker, §5 metrics)', () => {
  it('an open whose time passes with no traffic is half-open on /metrics and /router/status, transition counted once', async () => {
    const a = track(await startMock((_req, res) => fail500(res)));
    const gw = await gatewayOver(
      { a: a.url },
      {
        circuit_breaker: {
          failure_threshold: 1,
          open_ms: 300,
          max_open_ms: 1000,
          half_open_probes: 1,
          success_threshold: 1,
        },
      },
    );
    expect((await chat(gw)).status).toBe(502);
    await settled();
    let m = await scrape(gw.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(2);
    await sleep(450); // past open_ms, no request
    const tr = await routerState(gw);
    expect(tr).toBe('half_open');
    m = await scrape(gw.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(1);
    expect(
      value(m, 'llm_router_circuit_transitions_total', { provider: 'a', model: 'm', to: 'half_open' }),
    ).toBe(1);
    expect(value(m, 'llm_router_circuit_transitions_total', { provider: 'a', model: 'm', to: 'open' })).toBe(
      1,
    );
    expect(a.received).toHaveLength(1);
  });

  for (const order of ['success', 'failure'] as const) {
    it(`half_open_probes 2, the ${order} landing first: re-opened with open_ms doubled, the success counts for nothing`, async () => {
      let offset = 0;
      const now = (): number => Date.now() + offset;
      const release = new Map<number, () => void>();
      const a = track(
        await startMock(async (req, res, n) => {
          if (n === 0) return fail500(res); // trips it (failure_threshold 1)
          await new Promise<void>((r) => release.set(n, r)); // the two probes answer when the test says
          if (n === 1) answerChat(res, req.body, 'probe ok');
          else fail500(res);
        }),
      );
      const gw = await gatewayOver(
        { a: a.url },
        {
          circuit_breaker: {
            failure_threshold: 1,
            open_ms: 2000,
            max_open_ms: 16000,
            half_open_probes: 2,
            success_threshold: 2,
          },
        },
        { now },
      );
      expect((await chat(gw)).status).toBe(502);
      await settled();
      expect((await breakerAt(gw.url, 'a/m')).state).toBe('open');
      offset += 2001;
      const ok = chat(gw);
      await until('first probe at a', () => release.has(1));
      const failing = chat(gw);
      await until('second probe at a', () => release.has(2));
      expect((await breakerAt(gw.url, 'a/m')).probes_in_flight).toBe(2);
      // A third request finds both probe slots taken: refused at once, never sent.
      const third = await chat(gw);
      expect(third.status).toBe(503);
      expect(a.received).toHaveLength(3);
      const land = async (n: 1 | 2): Promise<void> => {
        release.get(n)?.();
        expect((await (n === 1 ? ok : failing)).status).toBe(n === 1 ? 200 : 502);
        await settled();
      };
      if (order === 'success') {
        await land(1);
        const mid = await breakerAt(gw.url, 'a/m');
        expect({ state: mid.state, successes: mid.consecutive_successes }).toEqual({
          state: 'half_open',
          successes: 1,
        });
        await land(2);
      } else {
        await land(2);
        expect((await breakerAt(gw.url, 'a/m')).state).toBe('open');
        await land(1);
      }
      const br = await breakerAt(gw.url, 'a/m');
      expect({ state: br.state, open_ms: br.open_ms, successes: br.consecutive_successes }).toEqual({
        state: 'open',
        open_ms: 4000,
        successes: 0,
      });
      expect(br.ms_until_half_open).toBeGreaterThan(3000);
      const m = await scrape(gw.url);
      const to = (state: string): number =>
        value(m, 'llm_router_circuit_transitions_total', { provider: 'a', model: 'm', to: state }) ?? 0;
      expect({ open: to('open'), half_open: to('half_open'), closed: to('closed') }).toEqual({
        open: 2,
        half_open: 1,
        closed: 0,
      });
    });
  }

  it('a client that leaves during attempt #2 (after a 500 on #1) charges nothing to #2 and is no failover from it', async () => {
    const a = track(await startMock((_req, res) => fail500(res)));
    const b = track(
      await startMock(() => {
        /* holds the request until the client leaves */
      }),
    );
    const c = track(await startMock((req, res) => answerChat(res, req.body, 'from c')));
    const gw = await gatewayOver(
      { a: a.url, b: b.url, c: c.url },
      {
        circuit_breaker: {
          failure_threshold: 1,
          open_ms: 30_000,
          max_open_ms: 60_000,
          half_open_probes: 1,
          success_threshold: 1,
        },
      },
    );
    const ac = new AbortController();
    const pending = chat(gw, {}, {}, ac.signal).catch(() => undefined);
    await until('attempt #2 at b', () => b.received.length === 1);
    ac.abort();
    await pending;
    await sleep(100);
    const bBreaker = await breakerAt(gw.url, 'b/m');
    expect({ state: bBreaker.state, failures: bBreaker.consecutive_failures }).toEqual({
      state: 'closed',
      failures: 0,
    });
    expect((await breakerAt(gw.url, 'a/m')).state).toBe('open');
    expect(c.received).toHaveLength(0);
    const m = await scrape(gw.url);
    for (const outcome of ['error', 'timeout', 'rate_limited'])
      expect(
        value(m, 'llm_router_upstream_attempts_total', { provider: 'b', model: 'm', outcome }) ?? 0,
      ).toBe(0);
    expect(value(m, 'llm_router_failovers_total', { route: 'r', from_provider: 'a', reason: 'error' })).toBe(
      1,
    );
    expect(
      m.filter(
        (s) => s.name === 'llm_router_failovers_total' && s.labels.from_provider === 'b' && s.value > 0,
      ),
    ).toHaveLength(0);
  });
});

async function routerState(gw: TestGateway): Promise<string> {
  return (await breakerAt(gw.url, 'a/m')).state;
}
