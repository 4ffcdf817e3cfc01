/**
 * The live statistics the strategies rank by (SPEC §2 Strategies and Failover, README "Concepts"), fed by
 * every kind of attempt ending, checked through /router/status, /router/explain, the inflight gauge and
 * which upstream the next requests go to first (x-router-provider, x-router-trail):
 * - a tokens/s figure comes only from content that arrived over time: an answer that came whole (a JSON
 *   object to a stream request, or a stream a buffering proxy delivered in one piece) teaches no pace;
 * - a wait that showed an upstream far slower than its estimate (no content before idle_ms, the request's
 *   own total_timeout_ms run out, the client giving up) moves the next requests off it, as a
 *   first_byte_timeout does: "reacting at once to a slow outlier";
 * - a non-streamed answer's whole time, taken while no pace was known, does not stay in the time to first
 *   token once streams have measured it: two identical upstreams rank alike;
 * - a stream cut after its commit is no success and no pace sample;
 * - in flight (status and gauge) is back to 0 after every kind of ending.
 *
 * Latency is driven by `startGateway({ now })` where a test can: a mock moves the manual clock before it
 * answers, so the gateway measures exactly that. Real time is spent only where a timeout must fire (a few
 * hundred ms) and where an answer's pace must be read off the real clock.
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chatCompletion, chunkFrame, gate, sendJson } from '../helpers/mock-upstream.js';
import { scrape, select } from '../helpers/prom-text.js';
import { manualClock, mulberry32 } from '../helpers/random.js';
import { postJson, type RouterRes } from '../helpers/router-api.js';
import {
  BODY,
  holdOpen,
  prov,
  routeOver,
  statsOf,
  statusOf,
  strategyHarness,
  streamThrough,
  timedAnswer,
  usageFrame,
  type FirstContent,
  type Json,
} from '../helpers/strategy-harness.js';
import { until } from '../helpers/wait.js';

onlyLoopbackFetch();
// Explain calls keep undici's own bounds.
const { up, gateway, call, ok, warm, explain } = strategyHarness(closeAfterEach(), {
  timeoutMs: 15_000,
  boundExplain: false,
});

/** The tokens/s an explain reason quotes ("... / 12,345 tok/s"), or undefined when it quotes none. */
function quotedTps(reason: string): number | undefined {
  const m = /\/ ([\d,.]+) tok\/s/.exec(reason);
  return m ? Number(m[1]!.replace(/,/g, '')) : undefined;
}

/* ------------------------------------------------------------------------------------------------ */

describe('tokens/s comes only from content that arrived over time', () => {
  // attempt-stream.ts marks a stream request answered with one JSON object `noPace` ("no time per output
  // token to measure"); the metrics honour it (report.ts). So must the statistics the latency strategy ranks by.
  it('a stream request answered with one JSON object teaches no tokens/s', async () => {
    // Real clock: the whole answer comes in one read, ~40 ms after the request.
    const a = await up(async (body, res) => {
      await sleep(40);
      sendJson(res, 200, chatCompletion(body, 200));
    });
    const gw = await gateway(routeOver('latency', { a }));
    for (let i = 0; i < 3; i++) {
      const r = await ok(gw, { ...BODY, stream: true });
      expect(r.text).toContain('[DONE]');
    }
    const st = await statsOf(gw, 'a/m');
    expect(st.successes).toBe(3);
    expect(st.tokensPerSec, `stats ${JSON.stringify(st)}`).toBeNull();
    // What the latency strategy then quotes for a long answer must not be the short answers' time.
    const [c] = (await explain(gw, { ...BODY, max_tokens: 4000 })).candidates;
    const tps = quotedTps(c!.reason);
    expect(tps === undefined || tps < 100_000, c!.reason).toBe(true);
  });

  it('a stream whose whole content arrives in one read (a buffering proxy) teaches no tokens/s', async () => {
    const a = await up(async (body, res) => {
      await sleep(40);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const m = body.model;
      let text = chunkFrame(m, { role: 'assistant', content: '' });
      for (let i = 0; i < 10; i++) text += chunkFrame(m, { content: `w${i} ` });
      res.end(text + chunkFrame(m, {}, 'stop') + usageFrame(200) + 'data: [DONE]\n\n');
    });
    const gw = await gateway(routeOver('latency', { a }));
    for (let i = 0; i < 3; i++) await ok(gw, { ...BODY, stream: true });
    const st = await statsOf(gw, 'a/m');
    const tps = st.tokensPerSec as number | null;
    // 200 tokens "generated" in the microseconds spent parsing one buffer: no pace was observed. (10,000
    // tokens/s is past any model served today; the figure read so is hundreds of thousands.)
    expect(tps === null || tps < 10_000, `stats ${JSON.stringify(st)}`).toBe(true);
  });
});

/* ------------------------------------------------------------------------------------------------ */

/**
 * fast (20 ms) and slow (100 ms) behind a latency route (`rest` keys, fast's `fastTimeouts`, seed `seed`),
 * both measured and fast first; then fast hangs: `hangMs` of clock pass and it holds each request open.
 */
async function fastThatHangs(hangMs: number, fastTimeouts: Json, rest: Json, seed: number) {
  const clock = manualClock(1_000_000);
  let hang = false;
  const fastOk = timedAnswer(clock, () => 20);
  const fast = await up(async (body, res, n) => {
    if (!hang) return fastOk(body, res, n);
    clock.advance(hangMs);
    await holdOpen(res);
  });
  const slow = await up(timedAnswer(clock, () => 100));
  const gw = await gateway(routeOver('latency', { fast, slow }, rest, { timeouts: { fast: fastTimeouts } }), {
    now: clock.now,
    random: mulberry32(seed),
  });
  await warm(gw, ['fast', 'slow'], 5);
  expect((await ok(gw)).headers['x-router-provider']).toBe('fast');
  hang = true;
  return { gw, fast };
}

describe('a wait that showed an upstream slow moves the next requests off it', () => {
  it('no content before idle_ms (a role chunk, then silence): the next requests do not try it first', async () => {
    // The same as a first_byte_timeout for the client (nothing came), which the statistics take as a slow
    // first token at once (README); an idle stall before the first content must not leave the upstream
    // looking as fast as before, each next request waiting idle_ms on it again.
    const clock = manualClock(1_000_000);
    let stall = false;
    const streamAfter = (ms: number) => (body: Json, res: ServerResponse) => {
      clock.advance(ms);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const m = body.model;
      res.end(
        chunkFrame(m, { role: 'assistant', content: '' }) +
          chunkFrame(m, { content: 'hi' }) +
          chunkFrame(m, {}, 'stop') +
          'data: [DONE]\n\n',
      );
    };
    const fastOk = streamAfter(20);
    const fast = await up(async (body, res) => {
      if (!stall) return fastOk(body, res);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
      clock.advance(300); // as the gateway sees it: idle_ms pass with no content
      await holdOpen(res);
    });
    const slow = await up(streamAfter(100));
    const gw = await gateway(
      routeOver('latency', { fast, slow }, {}, { timeouts: { fast: { idle_ms: 300 } } }),
      { now: clock.now, random: mulberry32(7) },
    );
    const SBODY = { ...BODY, stream: true };
    await warm(gw, ['fast', 'slow'], 5, SBODY);
    expect((await ok(gw, SBODY)).headers['x-router-provider']).toBe('fast');
    stall = true;
    const first = await ok(gw, SBODY);
    expect(first.headers['x-router-provider']).toBe('slow');
    expect(first.headers['x-router-trail']).toBe('fast/m=idle_timeout');
    const trails: string[] = [];
    for (let i = 0; i < 3; i++) trails.push((await ok(gw, SBODY)).headers['x-router-trail'] ?? '');
    const st = await statsOf(gw, 'fast/m');
    expect(trails, `fast/m still first; its stats ${JSON.stringify(st)}`).toEqual(['', '', '']);
  });

  it('an upstream that hangs past routing.total_timeout_ms: the next request does not go to it first', async () => {
    // README: a cut by the request's budget is "not the provider's failure" for its breaker. But the wait is
    // still a first token at least that slow: left unrecorded, the hung upstream keeps its fast figures and
    // the next request goes to it first again, and times out again (504), while the other upstream is idle.
    const { gw, fast } = await fastThatHangs(400, {}, { routing: { total_timeout_ms: 400 } }, 3);
    const cut = await call(gw);
    expect(cut.status, cut.text).toBe(504);
    const fastCalls = fast.calls;
    const next = await call(gw);
    const st = await statsOf(gw, 'fast/m');
    expect(
      {
        status: next.status,
        provider: next.headers['x-router-provider'],
        fastCalled: fast.calls - fastCalls,
      },
      `fast/m stats after the cut: ${JSON.stringify(st)}`,
    ).toEqual({ status: 200, provider: 'slow', fastCalled: 0 });
  });

  it('clients giving up on an upstream that sends nothing: the next request does not go to it first', async () => {
    // A client abort is no upstream failure (breaker, success rate). But a client that waited 300 ms on an
    // upstream whose first token is estimated at 20 ms has shown that upstream far slower than its figures:
    // with clients that time out before first_byte_ms, a hung upstream otherwise stays first for every request.
    const { gw } = await fastThatHangs(300, { first_byte_ms: 1500 }, {}, 5);
    const aborted = await postJson(gw, BODY, {}, '/v1/chat/completions', { timeoutMs: 300 }).catch(
      (e: unknown) => e,
    );
    expect(aborted).toBeInstanceOf(Error);
    // The gateway has seen the client go.
    await until('fast/m in flight back to 0', async () => (await statsOf(gw, 'fast/m')).inFlight === 0);
    const next = await ok(gw);
    const st = await statsOf(gw, 'fast/m');
    expect(
      { provider: next.headers['x-router-provider'], trail: next.headers['x-router-trail'] },
      `fast/m stats after the abandoned wait: ${JSON.stringify(st)}`,
    ).toEqual({ provider: 'slow', trail: '' });
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('time to first token: JSON answers and streams in one figure', () => {
  it('two identical upstreams rank alike once both streamed, whatever JSON traffic one had before', async () => {
    // Both: first token after 100 ms, then 10 ms per token, 200 tokens (a JSON answer: 2,100 ms whole).
    // README: "a non-streamed answer's first-token wait is its time less its tokens at the known pace" —
    // before any pace is known the whole 2,100 ms went in as a first token, and stays there after streams
    // have shown the first token is 100 ms.
    const clock = manualClock(1_000_000);
    const held: FirstContent = {};
    const twin = () =>
      up(async (body, res) => {
        const m = body.model;
        if (body.stream !== true) {
          clock.advance(2100);
          return sendJson(res, 200, chatCompletion(body, 200));
        }
        clock.advance(100);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'a' }));
        const g = gate(3000);
        held.open = g.open;
        await g.wait;
        clock.advance(2000);
        let rest = '';
        for (let i = 0; i < 9; i++) rest += chunkFrame(m, { content: ' b' });
        res.end(rest + chunkFrame(m, {}, 'stop') + usageFrame(200) + 'data: [DONE]\n\n');
      });
    const a = await twin();
    const b = await twin();
    const gw = await gateway(routeOver('latency', { a, b }), { now: clock.now, random: mulberry32(9) });
    /** A pinned stream request, read until its first content, then the gate opened for the rest. */
    const streamed = async (p: string): Promise<void> => {
      held.open = undefined;
      const body = { ...BODY, stream: true, stream_options: { include_usage: true } };
      await streamThrough(gw, body, { 'x-router-provider': p }, held, 10_000);
    };
    await warm(gw, ['a'], 10); // JSON only, before any stream
    for (let i = 0; i < 3; i++) {
      await streamed('a');
      await streamed('b');
    }
    const sa = await statsOf(gw, 'a/m');
    const sb = await statsOf(gw, 'b/m');
    expect(sb.tokensPerSec).not.toBeNull();
    const ranked = (await explain(gw, { ...BODY, stream: true, max_tokens: 200 })).candidates;
    const score = (id: string) => ranked.find((c) => c.upstream === id)!.score;
    const why = `a ${JSON.stringify(sa)}; b ${JSON.stringify(sb)}; ${JSON.stringify(ranked)}`;
    expect(Math.abs(score('a/m') - score('b/m')), why).toBeLessThanOrEqual(0.1);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('a stream cut after its commit', () => {
  it('is no success, teaches no pace and no mean output, and lowers the success rate', async () => {
    const a = await up(async (body, res) => {
      const m = body.model;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let text = chunkFrame(m, { role: 'assistant', content: '' });
      for (let i = 0; i < 20; i++) text += chunkFrame(m, { content: `w${i} ` });
      res.write(text);
      await sleep(30);
      res.destroy();
    });
    const gw = await gateway(routeOver('latency', { a }));
    const r = await ok(gw, { ...BODY, stream: true });
    expect(r.text).toContain('"error"');
    expect(r.text).not.toContain('[DONE]');
    await until('the cut is recorded', async () => (await statsOf(gw, 'a/m')).failures === 1);
    const st = await statsOf(gw, 'a/m');
    expect(st, JSON.stringify(st)).toMatchObject({
      successes: 0,
      failures: 1,
      tokensPerSec: null,
      meanOutputTokens: null,
      inFlight: 0,
    });
    expect(st.successRate as number).toBeLessThan(1);
  });
});

/* ------------------------------------------------------------------------------------------------ */

describe('in flight comes back to 0 after every kind of ending', () => {
  it('first-byte timeout, idle stall, total_ms, 429, 500, cut stream, client abort: status and gauge read 0', async () => {
    const mocks: Record<string, (body: Json, res: ServerResponse) => void | Promise<void>> = {
      hang: (_b, res) => holdOpen(res),
      stall: async (b, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(b.model, { role: 'assistant', content: '' }));
        await holdOpen(res);
      },
      drip: async (b, res) => {
        // Keeps sending just inside idle_ms, past total_ms.
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (let i = 0; i < 40 && !res.destroyed; i++) {
          res.write(chunkFrame(b.model, { content: 'x' }));
          await sleep(50);
        }
        res.end();
      },
      limited: (_b, res) =>
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'rate_limit_exceeded' } },
          { 'retry-after': '1' },
        ),
      broken: (_b, res) => sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
      cut: async (b, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(b.model, { content: 'partial' }));
        await sleep(20);
        res.destroy();
      },
    };
    const providers: Json[] = [];
    for (const [name, answer] of Object.entries(mocks)) {
      const u = await up(answer);
      providers.push(
        prov(name, u.url, {}, { first_byte_ms: 300, idle_ms: 300, total_ms: name === 'drip' ? 400 : 3000 }),
      );
    }
    const names = Object.keys(mocks);
    const gw = await gateway({
      providers,
      routes: { r: { strategy: 'least-busy', targets: names.map((n) => `${n}/m`) } },
    });
    const inflight = async () => {
      const status = await statusOf(gw);
      const gauge = select(await scrape(gw.url), 'llm_router_inflight_requests');
      return {
        status: Object.fromEntries([...status].map(([id, u]) => [id, (u as unknown as Json).in_flight])),
        gauge: Object.fromEntries(gauge.map((s) => [`${s.labels.provider}/${s.labels.model}`, s.value])),
      };
    };
    const zeros = Object.fromEntries(names.map((n) => [`${n}/m`, 0]));
    for (const name of names) {
      const r: RouterRes = await call(gw, { ...BODY, stream: true }, { 'x-router-provider': name });
      expect(r.status === 200 || r.status >= 400, `${name}: ${r.status}`).toBe(true);
    }
    // A client that goes away while the upstream holds its request.
    await postJson(gw, BODY, { 'x-router-provider': 'hang' }, '/v1/chat/completions', {
      timeoutMs: 100,
    }).catch(() => undefined);
    const want = { status: zeros, gauge: zeros };
    // Polled (the last attempts end as their sockets close), then compared, so a failure shows the figures.
    await until(
      'in flight 0 everywhere',
      async () => JSON.stringify(await inflight()) === JSON.stringify(want),
    ).catch(() => undefined);
    expect(await inflight()).toEqual(want);
  });
});
