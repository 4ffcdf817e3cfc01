/**
 * The routing strategies over a sequence of real requests with live statistics (SPEC §2 Strategies and
 * Failover, README "Concepts"): a real gateway in front of loopback mocks whose latency the test sets
 * through the injected clock, read by which upstream serves each request (x-router-provider, -trail).
 *
 * Latency is driven by `startGateway({ now })`: a mock moves the manual clock before it answers, so the
 * gateway measures exactly that many milliseconds whatever the machine's load. Real time is spent only
 * where a provider timeout must fire (a first_byte_ms of a few hundred ms). Randomness is seeded.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  chatCompletion,
  chunkFrame,
  fail500,
  gate,
  sendJson,
  countedUpstream,
  type CountedUpstream,
} from '../helpers/mock-upstream.js';
import { manualClock, mulberry32 } from '../helpers/random.js';
import { routerStatus } from '../helpers/resilience-harness.js';
import { postJson, type Candidate, type RouterRes } from '../helpers/router-api.js';

onlyLoopbackFetch();
const track = closeAfterEach();

type Json = Record<string, unknown>;
type Clock = ReturnType<typeof manualClock>;
const HI = [{ role: 'user', content: 'hello' }];
const BODY: Json = { model: 'r', messages: HI };

type Up = CountedUpstream;
const up = (answer: Parameters<typeof countedUpstream>[1]): Promise<Up> => countedUpstream(track, answer);

/** A mock that answers after moving the gateway's clock by `ms()` (the latency the gateway measures). */
function timedUp(clock: Clock, ms: () => number): Promise<Up> {
  return up((body, res) => {
    clock.advance(ms());
    sendJson(res, 200, chatCompletion(body));
  });
}

function prov(name: string, url: string, timeouts: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 8000, ...timeouts },
    models: [{ name: 'm' }],
  };
}

async function gateway(config: Json, opts: Parameters<typeof startGateway>[1] = {}): Promise<TestGateway> {
  return track(await startGateway(config, opts));
}

const call = (gw: { url: string }, body: Json = BODY, headers: Record<string, string> = {}, path?: string) =>
  postJson(gw, body, headers, path, { timeoutMs: 15_000 });

async function ok(gw: { url: string }, body: Json = BODY, headers: Record<string, string> = {}) {
  const r = await call(gw, body, headers);
  expect(r.status, r.text).toBe(200);
  return r;
}

/** Measures each named provider `n` times by pinning it. */
async function warm(gw: { url: string }, providers: string[], n: number): Promise<void> {
  for (const p of providers)
    for (let i = 0; i < n; i++)
      expect((await ok(gw, BODY, { 'x-router-provider': p })).headers['x-router-provider']).toBe(p);
}

/** `n` sequential requests; the serving provider of each, in order. */
async function serve(
  gw: { url: string },
  n: number,
  body: Json = BODY,
): Promise<{ order: string[]; all: RouterRes[] }> {
  const order: string[] = [];
  const all: RouterRes[] = [];
  for (let i = 0; i < n; i++) {
    const r = await ok(gw, body);
    all.push(r);
    order.push(r.headers['x-router-provider']!);
  }
  return { order, all };
}

function counts(order: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of order) out[p] = (out[p] ?? 0) + 1;
  return out;
}

async function explain(gw: { url: string }, body: Json = BODY, headers: Record<string, string> = {}) {
  const r = await call(gw, body, headers, '/router/explain');
  expect(r.status, r.text).toBe(200);
  return r.json as { strategy: string; candidates: Candidate[] };
}

/* ------------------------------------------------------------------------------------------------ */

describe('latency: an upstream that turns slow, and comes back', () => {
  it('an upstream whose last attempt hit first_byte_ms is not tried first by the next requests', async () => {
    // A timed-out attempt is the slowest answer there is: peak-EWMA reacts to it at once, as to any slow
    // outlier, instead of making each of the next requests wait first_byte_ms on it again.
    const clock = manualClock(1_000_000);
    let hang = false;
    const fast = await up(async (body, res) => {
      if (!hang) {
        clock.advance(20);
        return sendJson(res, 200, chatCompletion(body));
      }
      // As the gateway sees it: first_byte_ms pass with nothing, then the attempt is cut.
      clock.advance(300);
      await gate(3000).wait;
      res.destroy();
    });
    const slow = await timedUp(clock, () => 100);
    const gw = await gateway(
      {
        providers: [prov('fast', fast.url, { first_byte_ms: 300 }), prov('slow', slow.url)],
        routes: { r: { strategy: 'latency', targets: ['fast/m', 'slow/m'] } },
      },
      { now: clock.now, random: mulberry32(11) },
    );
    await warm(gw, ['fast', 'slow'], 5);
    expect((await ok(gw)).headers['x-router-provider']).toBe('fast');
    hang = true;
    const first = await ok(gw);
    expect(first.headers['x-router-provider']).toBe('slow');
    expect(first.headers['x-router-trail']).toBe('fast/m=first_byte_timeout');
    const fastCallsBefore = fast.calls;
    const { all } = await serve(gw, 3);
    const trails = all.map((r) => r.headers['x-router-trail']);
    expect(trails, 'the hung upstream was tried first again').toEqual(['', '', '']);
    expect(fast.calls - fastCallsBefore).toBe(0);
  });

  it('non-streamed traffic: one slow answer does not bench a fast upstream for minutes once it answers fast again', async () => {
    // README: the statistics take a slower answer at once and relax when no sample comes, "so one slow
    // answer does not bench an upstream". The alternative here is twice as slow as the upstream's usual time.
    const clock = manualClock(1_000_000);
    let fastMs = 20;
    const fast = await timedUp(clock, () => fastMs);
    const other = await timedUp(clock, () => 40);
    const gw = await gateway(
      {
        providers: [prov('fast', fast.url), prov('other', other.url)],
        routes: { r: { strategy: 'latency', targets: ['fast/m', 'other/m'] } },
      },
      { now: clock.now, random: mulberry32(5) },
    );
    await warm(gw, ['fast', 'other'], 10);
    // One outlier: 400 ms where it answers in 20.
    fastMs = 400;
    expect((await ok(gw)).headers['x-router-provider']).toBe('fast');
    fastMs = 20;
    expect((await ok(gw)).headers['x-router-provider']).toBe('other');
    // One request per clock second for four minutes (four times the 60 s after which an upstream with no
    // fresh sample is explored again): every answer fast gives in that time takes 20 ms.
    const order: string[] = [];
    for (let s = 0; s < 240; s++) {
      clock.advance(1000);
      order.push((await ok(gw)).headers['x-router-provider']!);
    }
    // It was explored again once its figures went stale, and answered in 20 ms each time.
    const fastAgain = order.filter((p) => p === 'fast').length;
    expect(fastAgain).toBeGreaterThan(0);
    const last = counts(order.slice(-20));
    const stats = (await routerStatus(gw.url)).get('fast/m')!.stats;
    const why = `last 20: ${JSON.stringify(last)} after ${fastAgain} answers of 20 ms; fast/m ${JSON.stringify(stats)}`;
    expect(last.fast ?? 0, why).toBeGreaterThanOrEqual(15);
  });

  it('streamed traffic: after one slow first token, the upstream is back within 45 s of clock', async () => {
    // README: TTFT is a peak-EWMA "taking a slower answer at once and relaxing over ~10 s when no sample
    // comes, so one slow answer does not bench an upstream". Here it usually streams its first token in
    // 20 ms against the other's 40 (same pace after it); 45 s is over four times the README's ~10 s.
    const clock = manualClock(1_000_000);
    let opened: { open(): void } | undefined;
    const streamUp = (ttft: () => number) =>
      up(async (body, res) => {
        const m = body.model;
        clock.advance(ttft());
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(m, { role: 'assistant', content: '' }) + chunkFrame(m, { content: 'a' }));
        // Once the client holds the first content, 20 more tokens come over 20 ms.
        const g = gate(3000);
        opened = g;
        await g.wait;
        clock.advance(20);
        const usage = { id: 'c', object: 'chat.completion.chunk', created: 1, model: String(m), choices: [] };
        res.end(
          chunkFrame(m, { content: ' b'.repeat(20) }) +
            chunkFrame(m, {}, 'stop') +
            `data: ${JSON.stringify({ ...usage, usage: { prompt_tokens: 5, completion_tokens: 21, total_tokens: 26 } })}\n\n` +
            'data: [DONE]\n\n',
        );
      });
    let fastTtft = 20;
    const fast = await streamUp(() => fastTtft);
    const other = await streamUp(() => 40);
    const gw = await gateway(
      {
        providers: [prov('fast', fast.url), prov('other', other.url)],
        routes: { r: { strategy: 'latency', targets: ['fast/m', 'other/m'] } },
      },
      { now: clock.now, random: mulberry32(8) },
    );
    const stream = async (headers: Record<string, string> = {}): Promise<string> => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ ...BODY, stream: true, stream_options: { include_usage: true } }),
        headersTimeout: 15_000,
        bodyTimeout: 15_000,
      });
      expect(res.statusCode).toBe(200);
      let text = '';
      for await (const chunk of res.body) {
        const had = text.includes('"content":"a"');
        text += String(chunk);
        if (!had && text.includes('"content":"a"')) opened?.open();
      }
      expect(text).toContain('[DONE]');
      return String(res.headers['x-router-provider']);
    };
    for (const p of ['fast', 'other'])
      for (let i = 0; i < 10; i++) expect(await stream({ 'x-router-provider': p })).toBe(p);
    fastTtft = 400;
    expect(await stream()).toBe('fast');
    fastTtft = 20;
    expect(await stream()).toBe('other');
    let backAt = -1;
    for (let s = 1; s <= 45 && backAt < 0; s++) {
      clock.advance(1000);
      if ((await stream()) === 'fast') backAt = s;
    }
    const e = await explain(gw, { ...BODY, stream: true });
    expect(backAt, `fast not back within 45 s: ${JSON.stringify(e.candidates)}`).toBeGreaterThan(0);
  });
});

describe('round-robin under failover', () => {
  it("a flaky upstream's failed turns are spread over the healthy ones, not all handed to its successor", async () => {
    // SPEC: round-robin "rotates evenly across healthy candidates". `a` fails every other request it gets
    // (never five in a row: its breaker stays closed), so its failed turns must go somewhere.
    const a = await up((body, res, n) =>
      n % 2 === 1 ? fail500(res) : sendJson(res, 200, chatCompletion(body)),
    );
    const b = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const c = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const gw = await gateway({
      providers: [prov('a', a.url), prov('b', b.url), prov('c', c.url)],
      routes: { r: { strategy: 'round-robin', targets: ['a/m', 'b/m', 'c/m'] } },
    });
    const { order, all } = await serve(gw, 300);
    const n = counts(order);
    const failedOver = all.filter((r) => r.headers['x-router-trail'] !== '').length;
    expect(failedOver).toBe(50);
    expect(n.a).toBe(50);
    // b and c each get their own 100 turns; a's 50 failed turns are shared between them.
    const [hi, lo] = [Math.max(n.b ?? 0, n.c ?? 0), Math.min(n.b ?? 0, n.c ?? 0)];
    expect(hi / lo, JSON.stringify(n)).toBeLessThanOrEqual(1.2);
  });
});

describe('ties under failover', () => {
  it('cost: three equally priced upstreams, one flaky: its failed turns are spread over the other two', async () => {
    // SPEC: candidates whose scores tie are "broken by rotation, never by array order alone"; the rest of
    // the ranked list is the failover chain, and it rotates too.
    const a = await up((body, res, n) =>
      n % 2 === 1 ? fail500(res) : sendJson(res, 200, chatCompletion(body)),
    );
    const b = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const c = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const price = { input_per_mtok: 1, output_per_mtok: 2 };
    const p = (name: string, url: string) => ({ ...prov(name, url), models: [{ name: 'm', price }] });
    const gw = await gateway({
      providers: [p('a', a.url), p('b', b.url), p('c', c.url)],
      routes: { r: { strategy: 'cost', targets: ['a/m', 'b/m', 'c/m'] } },
    });
    const { order } = await serve(gw, 300);
    const n = counts(order);
    expect(n.a).toBe(50);
    const [hi, lo] = [Math.max(n.b ?? 0, n.c ?? 0), Math.min(n.b ?? 0, n.c ?? 0)];
    expect(hi / lo, JSON.stringify(n)).toBeLessThanOrEqual(1.2);
  });
});

describe('weighted under failover', () => {
  it("a flaky upstream's failed turns go to the others in proportion to their weights", async () => {
    // The whole ranked list is a weighted draw, so the failover chain follows the weights too.
    const a = await up((body, res, n) =>
      n % 2 === 1 ? fail500(res) : sendJson(res, 200, chatCompletion(body)),
    );
    const b = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const c = await up((body, res) => sendJson(res, 200, chatCompletion(body)));
    const gw = await gateway(
      {
        providers: [prov('a', a.url), prov('b', b.url), prov('c', c.url)],
        routes: {
          r: {
            strategy: 'weighted',
            targets: [
              { target: 'a/m', weight: 1 },
              { target: 'b/m', weight: 1 },
              { target: 'c/m', weight: 2 },
            ],
          },
        },
      },
      { random: mulberry32(21) },
    );
    const { order, all } = await serve(gw, 300);
    const n = counts(order);
    const failed = all.filter((r) => r.headers['x-router-trail'] !== '');
    const to = counts(failed.map((r) => r.headers['x-router-provider']!));
    // a is drawn first about a quarter of the time and fails half of those.
    expect(failed.length).toBeGreaterThanOrEqual(20);
    expect(failed.length).toBeLessThanOrEqual(60);
    // Its failovers: c (weight 2) about twice as often as b (weight 1), within generous bounds.
    expect((to.c ?? 0) / Math.max(1, to.b ?? 0), JSON.stringify(to)).toBeGreaterThanOrEqual(1.2);
    expect((to.c ?? 0) / Math.max(1, to.b ?? 0), JSON.stringify(to)).toBeLessThanOrEqual(4);
    expect((n.c ?? 0) / (n.b ?? 1), JSON.stringify(n)).toBeGreaterThanOrEqual(1.5);
    expect((n.c ?? 0) / (n.b ?? 1), JSON.stringify(n)).toBeLessThanOrEqual(2.7);
  });
});
