import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { TIMEOUTS, expectOpenAIError, harness } from '../helpers/resilience-harness.js';

const h = harness();

describe('failover to the next upstream (priority order)', () => {
  it('a 500 from the first upstream: the client gets the second one, attempts 2, trail names the first', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    await h.gateway([a, b]);
    const r = await h.chat();
    expect(r.status, r.text).toBe(200);
    expect((r.json.choices as Array<{ message: { content: string } }>)[0]?.message.content).toContain(
      'from b here',
    );
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=http_500');
    expect(a.requests).toHaveLength(1);
    expect(b.requests).toHaveLength(1);
    expect(await h.metric('llm_router_failovers_total{route="r",from_provider="a",reason="error"}')).toBe(1);
    expect(await h.metric('llm_router_upstream_attempts_total{provider="a",model="m",outcome="error"}')).toBe(
      1,
    );
    expect((await h.breaker('a/m')).consecutive_failures).toBe(1);
  });

  it('llm_router_failovers_total counts moves to another upstream: none from the last one that failed', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b', { status: 503 });
    await h.gateway([a, b]);
    const r = await h.chat();
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(await h.metric('llm_router_failovers_total{route="r",from_provider="a",reason="error"}')).toBe(1);
    expect(await h.metric('llm_router_failovers_total{route="r",from_provider="b",reason="error"}')).toBe(
      undefined,
    );
  });

  it('a closed port fails over the same way', async () => {
    const dead = { name: 'a', url: await h.closedPortUrl() };
    const b = await h.sim('b');
    await h.gateway([dead, b]);
    const r = await h.chat();
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=connect_refused');
    expect(r.ms).toBeLessThan(1500); // refused at once, not after connect_ms
  });

  it('a hang past first_byte_ms fails over the same way, and the hung request is aborted', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b');
    await h.gateway([a, b], { tight: ['a'] });
    const r = await h.chat();
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=first_byte_timeout');
    expect(r.ms).toBeGreaterThanOrEqual(TIMEOUTS.first_byte_ms);
    const aborted = await a.waitForAbort(2000);
    expect(aborted.finished).toBe(false);
    expect(a.inFlight()).toBe(0);
  });

  // Regression: undici runs its headers timeout on 1 s-resolution timers (a tick every 499 ms, firing on the
  // second tick), so any first_byte_ms below a second fired after 0.5-1 s.
  it('first_byte_ms is kept to within a watchdog tick (10 ms), not rounded up to undici 1 s timer ticks', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b');
    await h.gateway([a, b], { provider: { a: { timeouts: { ...TIMEOUTS, first_byte_ms: 100 } } } });
    const cut = a.waitForAbort(3000).then(() => Date.now());
    const sentAt = Date.now();
    const r = await h.chat();
    expect(r.headers['x-router-trail']).toBe('a/m=first_byte_timeout');
    // From the client's send (before the gateway's dispatch) to the simulator seeing the abort.
    const waitedMs = (await cut) - sentAt;
    expect(waitedMs).toBeGreaterThanOrEqual(99);
    expect(waitedMs).toBeLessThan(450);
  });

  it('a 400 is relayed as it was (OpenAI shape) and the second upstream receives nothing', async () => {
    const a = await h.sim('a', { status: 400, errorMessage: 'messages[0] is too polite' });
    const b = await h.sim('b');
    await h.gateway([a, b]);
    const r = await h.chat();
    expectOpenAIError(r, 400);
    expect(r.json.error?.type).toBe('invalid_request_error');
    expect(r.json.error?.message).toBe('messages[0] is too polite');
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(a.requests).toHaveLength(1);
    expect(b.requests).toHaveLength(0);
    // A client error says nothing about the upstream's health.
    expect((await h.breaker('a/m')).consecutive_failures).toBe(0);
  });
});

describe('rate limits: Retry-After is the cooldown', () => {
  it('429 with Retry-After: 2 keeps that upstream out for ~2 s (not open_ms, not 30 s)', async () => {
    const a = await h.sim('a');
    a.script([{ status: 429, retryAfterS: 2 }]);
    const b = await h.sim('b');
    await h.gateway([a, b]);
    const r = await h.chat();
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-trail']).toBe('a/m=http_429');
    const br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('rate_limit');
    expect(br.ms_until_half_open).toBeGreaterThan(1500);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(2000);
    // A rate limit is a cooldown, not a fault: the fault backoff is untouched.
    expect(br.open_ms).toBe(300);
    // Past open_ms (300) it is still out.
    await sleep(400);
    const again = await h.chat();
    expect(again.headers['x-router-provider']).toBe('b');
    expect(again.headers['x-router-attempts']).toBe('1');
    expect(a.requests).toHaveLength(1);
  });

  it('429 with Retry-After: 1 keeps it out ~1 s, then it is tried again', async () => {
    const a = await h.sim('a');
    a.script([{ status: 429, retryAfterS: 1 }]);
    const b = await h.sim('b');
    await h.gateway([a, b]);
    expect((await h.chat()).headers['x-router-provider']).toBe('b');
    const br = await h.breaker('a/m');
    expect(br.ms_until_half_open).toBeGreaterThan(700);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(1000);
    const during = await h.chat();
    expect(during.headers['x-router-provider']).toBe('b');
    expect(a.requests).toHaveLength(1);
    await sleep(br.ms_until_half_open + 20);
    expect((await h.breaker('a/m')).state).toBe('half_open');
    const after = await h.chat();
    expect(after.status).toBe(200);
    expect(after.headers['x-router-provider']).toBe('a');
    expect(a.requests).toHaveLength(2);
  });

  it('when every candidate is rate limited the client gets 429 with Retry-After', async () => {
    const a = await h.sim('a', { status: 429, retryAfterS: 1 });
    const b = await h.sim('b', { status: 429, retryAfterS: 2 });
    await h.gateway([a, b]);
    const r = await h.chat();
    expectOpenAIError(r, 429, 'rate_limited');
    expect(r.headers['retry-after']).toBe('1');
    expect(r.headers['x-router-attempts']).toBe('2');
    // Both are now cooling down: the next request is refused without calling them, still a 429.
    const next = await h.chat();
    expectOpenAIError(next, 429, 'rate_limited');
    expect(Number(next.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(next.headers['retry-after'])).toBeLessThanOrEqual(2);
    expect(a.requests).toHaveLength(1);
    expect(b.requests).toHaveLength(1);
  });
});

describe('final errors', () => {
  it('every upstream 500 → 502 upstream_error listing each attempt, with no key in it', async () => {
    const a = await h.sim('a', { status: 500, echoAuthInError: true });
    const b = await h.sim('b', { status: 503, echoAuthInError: true });
    await h.gateway([a, b], {
      provider: { a: { api_key: 'sk-a-very-secret-1' }, b: { api_key: 'sk-b-very-secret-2' } },
    });
    const r = await h.chat();
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.json.error?.type).toBe('upstream_error');
    const msg = r.json.error?.message ?? '';
    expect(msg).toContain('a/m');
    expect(msg).toContain('http_500');
    expect(msg).toContain('b/m');
    expect(msg).toContain('http_503');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=http_500,b/m=http_503');
    const everything = r.text + JSON.stringify(r.headers) + h.current().rawLogs();
    expect(everything).not.toContain('sk-a-very-secret-1');
    expect(everything).not.toContain('sk-b-very-secret-2');
    // The upstreams did get the keys (they echo them): the gateway kept them out of everything above.
    expect(a.requests[0]?.headers.authorization).toBe('Bearer sk-a-very-secret-1');
  });

  it('every breaker open → 503 no_available_upstream with a Retry-After, and no upstream is called', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b', { status: 500 });
    await h.gateway([a, b], { breaker: { open_ms: 1500 } });
    for (let i = 0; i < 2; i++) expectOpenAIError(await h.chat(), 502, 'upstream_error');
    expect((await h.breaker('a/m')).state).toBe('open');
    expect((await h.breaker('b/m')).state).toBe('open');
    const r = await h.chat();
    expectOpenAIError(r, 503, 'no_available_upstream');
    expect(r.json.error?.type).toBe('no_available_upstream');
    expect(r.headers['retry-after']).toBe('2');
    expect(a.requests).toHaveLength(2);
    expect(b.requests).toHaveLength(2);
  });

  it('a hang on every upstream with a small routing.total_timeout_ms → 504 timeout, on time', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b', { hang: true });
    await h.gateway([a, b], { routing: { total_timeout_ms: 250 } });
    const r = await h.chat();
    expectOpenAIError(r, 504, 'timeout');
    expect(r.ms).toBeGreaterThanOrEqual(240);
    expect(r.ms).toBeLessThan(1500); // well before either provider's first_byte_ms (2000)
    expect(r.headers['x-router-trail']).toBe('a/m=total_timeout');
    expect(b.requests).toHaveLength(0);
    await a.waitForAbort(1000);
    expect(a.inFlight()).toBe(0);
  });

  // Regression: a timer may fire a little before now() reads its deadline (libuv's cached loop time vs the
  // monotonic clock); the loop then saw time left, handed the next upstream a ~1 ms attempt and charged its
  // breaker with a timeout for the request's own clock. A clock running at 90 % makes that skew certain.
  it('when the request deadline cuts an attempt, the next upstream is not handed the sliver that is left', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b', { hang: true });
    const t0 = performance.now();
    const slow = (): number => performance.timeOrigin + t0 + (performance.now() - t0) * 0.9;
    await h.gateway([a, b], { routing: { total_timeout_ms: 250 }, now: slow });
    const r = await h.chat();
    expectOpenAIError(r, 504, 'timeout');
    expect(r.headers['x-router-trail']).toBe('a/m=total_timeout');
    expect(b.requests).toHaveLength(0);
    expect((await h.breaker('b/m')).consecutive_failures).toBe(0);
  });

  it('first-byte timeouts on every upstream within the total bound → 504 timeout listing both', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b', { hang: true });
    await h.gateway([a, b], { tight: ['a', 'b'] });
    const r = await h.chat({ stream: true });
    expectOpenAIError(r, 504, 'timeout');
    expect(r.headers['x-router-trail']).toBe('a/m=first_byte_timeout,b/m=first_byte_timeout');
    // The message reports each attempt's time: each one cut at first_byte_ms.
    const waited = [...(r.json.error?.message ?? '').matchAll(/first_byte_timeout after (\d+) ms/g)].map(
      (m) => Number(m[1]),
    );
    expect(waited).toHaveLength(2);
    for (const ms of waited) {
      expect(ms).toBeGreaterThanOrEqual(TIMEOUTS.first_byte_ms);
      expect(ms).toBeLessThan(700);
    }
  });
});
