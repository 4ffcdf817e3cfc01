/**
 * The circuit breaker (SPEC §2) black-box, over HTTP with real simulators, in the corners the other
 * resilience suites leave: what counts and what does not, backoff doubling and its cap and reset, Retry-After
 * in its three spellings, half-open probe slots, /readyz, metrics labels and config reload.
 *
 * The gateway's clock is injected (`Date.now() + offset`): a test jumps it past an open instead of sleeping.
 * It jumps only while nothing is in flight, so no request's deadline is moved under it.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { BREAKER, MSG, RELAXED, expectOpenAIError, harness } from '../helpers/resilience-harness.js';
import { simProvider } from '../helpers/gateway.js';

const h = harness();

let offset = 0;
const now = (): number => Date.now() + offset;
/** Moves the gateway's clock forward (past an open, say). */
function jump(ms: number): void {
  offset += ms;
}

async function readyz(): Promise<{ status: number; body: { status: string; upstreams_available: number } }> {
  const res = await request(`${h.current().url}/readyz`);
  return { status: res.statusCode, body: (await res.body.json()) as never };
}

/** A chat whose client goes away once `arrived` resolves (the upstream has the request). */
async function abortedChat(arrived: () => Promise<void>, stream = false): Promise<void> {
  const ac = new AbortController();
  const pending = request(`${h.current().url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', messages: MSG, stream }),
    signal: ac.signal,
  }).then(
    (res) => res.body.text(),
    () => undefined,
  );
  await arrived();
  ac.abort();
  await pending.catch(() => undefined);
}

/**
 * A tiny OpenAI-compatible upstream whose next answers are scripted: a 429 with the given headers, or a
 * normal 200 answer once the script is empty.
 */
async function scriptedUpstream(name: string): Promise<{
  name: string;
  url: string;
  hits: number;
  next: Array<Record<string, string>>;
  close(): Promise<void>;
}> {
  const state = { hits: 0, next: [] as Array<Record<string, string>> };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      state.hits++;
      const limited = state.next.shift();
      if (limited !== undefined) {
        res.writeHead(429, { 'content-type': 'application/json', ...limited });
        res.end(
          JSON.stringify({
            error: { message: 'slow down', type: 'rate_limit_error', param: null, code: 'rate_limited' },
          }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'chatcmpl-1',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        }),
      );
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const up = {
    name,
    url,
    get hits() {
      return state.hits;
    },
    next: state.next,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return up;
}

describe('what counts toward failure_threshold (consecutive, over HTTP)', () => {
  it('a success in between resets the run; 400 and 422 neither count nor reset it', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    await h.gateway([a, b], { breaker: { failure_threshold: 3 }, now });

    await h.chat();
    await h.chat();
    expect((await h.breaker('a/m')).consecutive_failures).toBe(2);
    a.set({ status: undefined });
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    expect((await h.breaker('a/m')).consecutive_failures).toBe(0);

    a.set({ status: 500 });
    await h.chat();
    await h.chat();
    for (const status of [400, 422]) {
      a.set({ status });
      const r = await h.chat();
      expectOpenAIError(r, status);
      expect(r.headers['x-router-attempts']).toBe('1');
      const br = await h.breaker('a/m');
      expect(br.state).toBe('closed');
      expect(br.consecutive_failures).toBe(2);
    }
    a.set({ status: 500 });
    await h.chat();
    const br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('errors');
    expect(
      await h.metric('llm_router_upstream_attempts_total{provider="a",model="m",outcome="client_error"}'),
    ).toBe(2);
    expect(await h.metric('llm_router_upstream_attempts_total{provider="a",model="m",outcome="error"}')).toBe(
      5,
    );
  });

  it('idle timeouts before content and a stream that ends before its first chunk count; the cause is the majority', async () => {
    const a = await h.sim('a', { hangAfterHeaders: true });
    const b = await h.sim('b');
    await h.gateway([a, b], { tight: ['a'], breaker: { failure_threshold: 3 }, now });
    for (let i = 0; i < 2; i++) {
      const r = await h.chat({ stream: true });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-trail']).toBe('a/m=idle_timeout');
    }
    expect((await h.breaker('a/m')).consecutive_failures).toBe(2);
    a.set({ hangAfterHeaders: false, dropAfterChunks: 0 });
    const r = await h.chat({ stream: true });
    expect(r.headers['x-router-provider']).toBe('b');
    expect(String(r.headers['x-router-trail'])).toMatch(/^a\/m=/);
    const br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('timeouts');
    await h.until(() => expect(a.inFlight()).toBe(0));
  });

  it('a committed stream cut mid-answer counts as a failure too (the client was told in-stream)', async () => {
    const a = await h.sim('a', { dropAfterChunks: 3 });
    const b = await h.sim('b');
    await h.gateway([a, b], { now });
    for (let i = 0; i < 2; i++) {
      const r = await h.chat({ stream: true });
      expect(r.headers['x-router-provider']).toBe('a');
      expect(r.text).toContain('"error"');
      expect(r.text).not.toContain('[DONE]');
    }
    const br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('errors');
    expect((await h.chat({ stream: true })).headers['x-router-provider']).toBe('b');
  });

  it('a client that goes away never counts, in closed state or as a half-open probe (whose slot it frees)', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b');
    await h.gateway([a, b], { now });
    for (let i = 1; i <= 3; i++) {
      await abortedChat(() => a.waitForRequests(i), i % 2 === 0);
      await h.until(() => expect(a.inFlight()).toBe(0));
    }
    await h.until(async () => expect((await h.status()).get('a/m')?.in_flight).toBe(0));
    let br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.consecutive_failures).toBe(0);
    for (const outcome of ['error', 'timeout']) {
      // The series exists from the start (zero), so a missing one fails here rather than reading as 0.
      expect(
        await h.metric(`llm_router_upstream_attempts_total{provider="a",model="m",outcome="${outcome}"}`),
      ).toBe(0);
    }

    // Open it, let it go half-open, and abandon the one probe.
    a.set({ hang: false, status: 500 });
    await h.chat();
    await h.chat();
    expect((await h.breaker('a/m')).state).toBe('open');
    jump(BREAKER.open_ms + 1);
    a.set({ status: undefined, hang: true });
    await abortedChat(() => a.waitForRequests(6));
    await h.until(async () => expect((await h.breaker('a/m')).probes_in_flight).toBe(0));
    br = await h.breaker('a/m');
    expect(br.state).toBe('half_open');
    expect(br.consecutive_successes).toBe(0);
    expect(br.opens).toBe(1);
    // The slot is free again: the next request probes a.
    a.set({ hang: false });
    const probe = await h.chat();
    expect(probe.headers['x-router-provider']).toBe('a');
    expect((await h.breaker('a/m')).consecutive_successes).toBe(1);
  });
});

describe('open: skipped, backoff doubling to max_open_ms, reset on close', () => {
  it('doubles on each re-open up to max_open_ms, skips with no attempt while open, and starts over after closing', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    await h.gateway([a, b], {
      breaker: { open_ms: 1000, max_open_ms: 2500, success_threshold: 1 },
      now,
    });
    await h.chat();
    await h.chat();
    const expected = [1000, 2000, 2500, 2500];
    for (let i = 0; i < expected.length; i++) {
      const br = await h.breaker('a/m');
      expect(br.state).toBe('open');
      expect(br.opens).toBe(i + 1);
      expect(br.open_ms).toBe(expected[i]);
      expect(br.ms_until_half_open).toBeLessThanOrEqual(expected[i]!);
      expect(br.ms_until_half_open).toBeGreaterThan(expected[i]! - 500);
      // Open: a gets nothing, one attempt on b.
      const hitsBefore = a.requests.length;
      const skipped = await h.chat();
      expect(skipped.headers['x-router-provider']).toBe('b');
      expect(skipped.headers['x-router-attempts']).toBe('1');
      expect(a.requests).toHaveLength(hitsBefore);
      if (i === expected.length - 1) break;
      jump(expected[i]! + 1);
      const probe = await h.chat();
      expect(probe.headers['x-router-trail']).toBe('a/m=http_500');
      expect(a.requests).toHaveLength(hitsBefore + 1);
    }
    const labels = 'provider="a",model="m"';
    expect(await h.metric(`llm_router_circuit_transitions_total{${labels},to="open"}`)).toBe(4);
    expect(await h.metric(`llm_router_circuit_transitions_total{${labels},to="half_open"}`)).toBe(3);
    expect(await h.metric(`llm_router_circuit_state{${labels}}`)).toBe(2);
    expect(await h.metric('llm_router_failovers_total{route="r",from_provider="a",reason="error"}')).toBe(5);

    // Heal and close it (success_threshold 1): the backoff is back to open_ms for the next fault.
    a.set({ status: undefined });
    jump(2501);
    expect(await h.metric(`llm_router_circuit_state{${labels}}`)).toBe(1);
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    let br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.open_ms).toBe(1000);
    expect(await h.metric(`llm_router_circuit_state{${labels}}`)).toBe(0);
    expect(await h.metric(`llm_router_circuit_transitions_total{${labels},to="closed"}`)).toBe(1);
    a.set({ status: 500 });
    await h.chat();
    await h.chat();
    br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.open_ms).toBe(1000);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(1000);
  });
});

describe('half-open', () => {
  it('at most half_open_probes (2) concurrent probes, the rest fail over at once; success_threshold closes it', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    await h.gateway([a, b], { breaker: { half_open_probes: 2, success_threshold: 3 }, now });
    await h.chat();
    await h.chat();
    jump(BREAKER.open_ms + 1);
    a.set({ status: undefined, latencyMs: 1500 });
    const bBefore = b.requests.length;
    const burst = Array.from({ length: 6 }, () => h.chat());
    await a.waitForRequests(4);
    // The four others are answered by b while both probes still hold a: nobody waited for a slot.
    await b.waitForRequests(bBefore + 4);
    expect(a.inFlight()).toBe(2);
    expect((await h.breaker('a/m')).probes_in_flight).toBe(2);
    const replies = await Promise.all(burst);
    expect(replies.every((r) => r.status === 200)).toBe(true);
    const viaA = replies.filter((r) => r.headers['x-router-provider'] === 'a');
    expect(viaA).toHaveLength(2);
    expect(
      replies
        .filter((r) => r.headers['x-router-provider'] === 'b')
        .every((r) => r.headers['x-router-attempts'] === '1'),
    ).toBe(true);
    let br = await h.breaker('a/m');
    expect(br.state).toBe('half_open');
    expect(br.consecutive_successes).toBe(2);
    expect(br.probes_in_flight).toBe(0);
    a.set({ latencyMs: 0 });
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.trip_cause).toBeNull();
  });

  it('a probe answered 400 is relayed, frees its slot and leaves the breaker half-open with nothing counted', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    await h.gateway([a, b], { now });
    await h.chat();
    await h.chat();
    jump(BREAKER.open_ms + 1);
    a.set({ status: 400 });
    const r = await h.chat();
    expectOpenAIError(r, 400);
    expect(b.requests).toHaveLength(2);
    let br = await h.breaker('a/m');
    expect(br.state).toBe('half_open');
    expect(br.probes_in_flight).toBe(0);
    expect(br.consecutive_successes).toBe(0);
    expect(br.opens).toBe(1);
    a.set({ status: undefined });
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
  });

  it('/readyz stays 200 while the only upstream is half-open with its probe in flight (it is not open)', async () => {
    const a = await h.sim('a', { status: 500 });
    await h.gateway([a], { now });
    await h.chat();
    await h.chat();
    expect((await h.breaker('a/m')).state).toBe('open');
    expect((await readyz()).status).toBe(503);
    jump(BREAKER.open_ms + 1);
    expect((await readyz()).status).toBe(200);
    a.set({ status: undefined, latencyMs: 1000 });
    const probe = h.chat();
    try {
      await a.waitForRequests(3);
      expect((await h.breaker('a/m')).state).toBe('half_open');
      const ready = await readyz();
      expect(ready.status).toBe(200);
      expect(ready.body.upstreams_available).toBe(1);
      // A request in the meantime finds no slot: 503 with a Retry-After, not a wait.
      const busy = await h.chat();
      expectOpenAIError(busy, 503, 'no_available_upstream');
      expect(Number(busy.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    } finally {
      expect((await probe).status).toBe(200);
    }
  });
});

describe('rate limits: Retry-After in seconds, as an HTTP date, as retry-after-ms; 0; absent', () => {
  const cases: Array<[string, () => Record<string, string>, number]> = [
    ['Retry-After: 7', () => ({ 'retry-after': '7' }), 7000],
    [
      'Retry-After: <HTTP date 10 s ahead>',
      () => ({ 'retry-after': new Date(Date.now() + 10_000).toUTCString() }),
      10_000,
    ],
    [
      'retry-after-ms: 4500 (wins over Retry-After)',
      () => ({ 'retry-after-ms': '4500', 'retry-after': '60' }),
      4500,
    ],
  ];
  for (const [what, headers, ms] of cases) {
    it(`${what} opens it for exactly that long, cause rate_limit, open_ms untouched`, async () => {
      const up = await scriptedUpstream('a');
      const b = await h.sim('b');
      try {
        await h.gateway([up, b], { breaker: { open_ms: 1000 }, now });
        up.next.push(headers());
        const r = await h.chat();
        expect(r.status).toBe(200);
        expect(r.headers['x-router-trail']).toBe('a/m=http_429');
        const br = await h.breaker('a/m');
        expect(br.state).toBe('open');
        expect(br.trip_cause).toBe('rate_limit');
        expect(br.open_ms).toBe(1000);
        expect(br.ms_until_half_open).toBeLessThanOrEqual(ms);
        expect(br.ms_until_half_open).toBeGreaterThan(ms - 1500);
        expect(
          await h.metric('llm_router_upstream_attempts_total{provider="a",model="m",outcome="rate_limited"}'),
        ).toBe(1);
        expect(
          await h.metric('llm_router_failovers_total{route="r",from_provider="a",reason="rate_limited"}'),
        ).toBe(1);
        // Past open_ms it is still cooling down.
        jump(1001);
        expect((await h.chat()).headers['x-router-attempts']).toBe('1');
        expect(up.hits).toBe(1);
        // Past the cooldown it is probed, and a healthy probe does not yet close it (success_threshold 2).
        jump(ms);
        expect((await h.chat()).headers['x-router-provider']).toBe('a');
        expect((await h.breaker('a/m')).state).toBe('half_open');
      } finally {
        await up.close();
      }
    });
  }

  it('Retry-After: 0 and a 429 without Retry-After are ordinary failures: counted, opening at the threshold for open_ms', async () => {
    const up = await scriptedUpstream('a');
    const b = await h.sim('b');
    try {
      await h.gateway([up, b], { breaker: { open_ms: 1000 }, now });
      up.next.push({ 'retry-after': '0' });
      await h.chat();
      let br = await h.breaker('a/m');
      expect(br.state).toBe('closed');
      expect(br.consecutive_failures).toBe(1);
      up.next.push({});
      await h.chat();
      br = await h.breaker('a/m');
      expect(br.state).toBe('open');
      expect(br.trip_cause).toBe('rate_limit');
      expect(br.open_ms).toBe(1000);
      expect(br.ms_until_half_open).toBeLessThanOrEqual(1000);
    } finally {
      await up.close();
    }
  });

  it('every candidate rate limited (different Retry-After): 429 with the smallest; then refused without calls', async () => {
    const a = await scriptedUpstream('a');
    const c = await scriptedUpstream('c');
    try {
      await h.gateway([a, c], { now });
      a.next.push({ 'retry-after-ms': '2500' });
      c.next.push({ 'retry-after': '9' });
      const r = await h.chat();
      expectOpenAIError(r, 429, 'rate_limited');
      expect(r.headers['retry-after']).toBe('3');
      const again = await h.chat();
      expectOpenAIError(again, 429, 'rate_limited');
      expect(again.headers['retry-after']).toBe('3');
      expect(a.hits + c.hits).toBe(2);
      expect((await readyz()).status).toBe(503);
      // One cools down: it is tried (half-open) and readiness is back.
      jump(2600);
      expect((await readyz()).status).toBe(200);
      const ok = await h.chat();
      expect(ok.status).toBe(200);
      expect(ok.headers['x-router-provider']).toBe('a');
    } finally {
      await a.close();
      await c.close();
    }
  });
});

describe('every breaker open: /readyz, 503 no_available_upstream, gauges', () => {
  it('503 with Retry-After when all are open for errors; /readyz 503 then 200 once they half-open', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b', { status: 503 });
    await h.gateway([a, b], { breaker: { open_ms: 2200 }, now });
    expect((await readyz()).status).toBe(200);
    for (let i = 0; i < 2; i++) expectOpenAIError(await h.chat(), 502, 'upstream_error');
    const rz = await readyz();
    expect(rz.status).toBe(503);
    expect(rz.body.upstreams_available).toBe(0);
    const r = await h.chat();
    expectOpenAIError(r, 503, 'no_available_upstream');
    expect(r.headers['retry-after']).toBe('3');
    for (const p of ['a', 'b'])
      expect(await h.metric(`llm_router_circuit_state{provider="${p}",model="m"}`)).toBe(2);
    jump(2201);
    expect((await readyz()).status).toBe(200);
    for (const p of ['a', 'b'])
      expect(await h.metric(`llm_router_circuit_state{provider="${p}",model="m"}`)).toBe(1);
    expect((await h.status()).get('b/m')?.breaker.trip_cause).toBe('errors');
  });

  it('one open for a rate limit and one for errors: 503 no_available_upstream (not everyone is rate limited)', async () => {
    const a = await scriptedUpstream('a');
    const b = await h.sim('b', { status: 500 });
    try {
      await h.gateway([a, b], { breaker: { failure_threshold: 1, open_ms: 5000 }, now });
      a.next.push({ 'retry-after': '3' });
      expect((await h.chat()).status).toBe(502);
      const r = await h.chat();
      expectOpenAIError(r, 503, 'no_available_upstream');
      expect(r.headers['retry-after']).toBe('3');
    } finally {
      await a.close();
    }
  });
});

describe('config reload', () => {
  it('keeps the state of upstreams that remain and applies new thresholds without resetting an open breaker', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    const c = await h.sim('c');
    const gw = await h.gateway([a, b], { breaker: { open_ms: 5000 }, now });
    await h.chat();
    await h.chat();
    expect((await h.breaker('a/m')).state).toBe('open');
    // b fails once (a is open, so b is the only one tried): a run of 1 that must survive the reload.
    b.set({ status: 500 });
    expectOpenAIError(await h.chat(), 502, 'upstream_error');
    expect((await h.breaker('b/m')).consecutive_failures).toBe(1);

    const text = JSON.stringify({
      providers: [a, b, c].map((s) => simProvider(s.options.name, s.url, ['m'], { timeouts: RELAXED })),
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m', 'c/m'] } },
      routing: { max_attempts: 3, total_timeout_ms: 5000 },
      circuit_breaker: { ...BREAKER, failure_threshold: 3, open_ms: 1000, success_threshold: 1 },
    });
    gw.gateway.reload(parseConfigText(text, {}));

    let br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.opens).toBe(1);
    expect(br.trip_cause).toBe('errors');
    expect(br.ms_until_half_open).toBeGreaterThan(1000);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(5000);
    expect(await h.metric('llm_router_circuit_state{provider="a",model="m"}')).toBe(2);
    expect((await h.breaker('b/m')).consecutive_failures).toBe(1);

    // b's second failure does not open it under the new threshold (3); the third does.
    const r1 = await h.chat();
    expect(r1.headers['x-router-provider']).toBe('c');
    expect(r1.headers['x-router-trail']).toBe('b/m=http_500');
    br = await h.breaker('b/m');
    expect(br.state).toBe('closed');
    expect(br.consecutive_failures).toBe(2);
    await h.chat();
    expect((await h.breaker('b/m')).state).toBe('open');
    expect(a.requests).toHaveLength(2);

    // After the old open ends, one success closes a (the new success_threshold 1).
    a.set({ status: undefined });
    jump(5001);
    expect((await h.chat()).headers['x-router-provider']).toBe('a');
    br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.open_ms).toBe(1000);
  });
});
