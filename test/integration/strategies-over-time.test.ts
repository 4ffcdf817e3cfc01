/**
 * The routing strategies over a sequence of real requests with live statistics (SPEC §2 Strategies and
 * Failover, README "Concepts"): a real gateway in front of loopback mocks whose latency the test sets
 * through the injected clock, read by which upstream serves each request (x-router-provider, -trail).
 *
 * Latency is driven by `startGateway({ now })`: a mock moves the manual clock before it answers, so the
 * gateway measures exactly that many milliseconds whatever the machine's load. Real time is spent only
 * where a provider timeout must fire (a first_byte_ms of a few hundred ms). Randomness is seeded.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { chatCompletion, gate, sendJson } from '../helpers/mock-upstream.js';
import { manualClock, mulberry32 } from '../helpers/random.js';
import {
  BODY,
  counts,
  routeOver,
  statusOf,
  strategyHarness,
  streamThrough,
  type FirstContent,
  type GatewayOptions,
  type RouteOptions,
} from '../helpers/strategy-harness.js';

onlyLoopbackFetch();
const { up, chatUp, timedUp, pacedStreamUp, gateway, ok, serve, warm, explain } = strategyHarness(
  closeAfterEach(),
  { timeoutMs: 15_000 },
);

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
      routeOver('latency', { fast, slow }, {}, { timeouts: { fast: { first_byte_ms: 300 } } }),
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
    const gw = await gateway(routeOver('latency', { fast, other }), {
      now: clock.now,
      random: mulberry32(5),
    });
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
    const stats = (await statusOf(gw)).get('fast/m')!.stats;
    const why = `last 20: ${JSON.stringify(last)} after ${fastAgain} answers of 20 ms; fast/m ${JSON.stringify(stats)}`;
    expect(last.fast ?? 0, why).toBeGreaterThanOrEqual(15);
  });

  it('streamed traffic: after one slow first token, the upstream is back within 45 s of clock', async () => {
    // README: TTFT is a peak-EWMA "taking a slower answer at once and relaxing over ~10 s when no sample
    // comes, so one slow answer does not bench an upstream". Here it usually streams its first token in
    // 20 ms against the other's 40 (same pace after it); 45 s is over four times the README's ~10 s.
    const clock = manualClock(1_000_000);
    // Once the client holds the first content, 20 more tokens come over 20 ms.
    const held: FirstContent = {};
    let fastTtft = 20;
    const fast = await pacedStreamUp(clock, () => fastTtft, 20, 21, held);
    const other = await pacedStreamUp(clock, () => 40, 20, 21, held);
    const gw = await gateway(routeOver('latency', { fast, other }), {
      now: clock.now,
      random: mulberry32(8),
    });
    const stream = (headers: Record<string, string> = {}): Promise<string> =>
      streamThrough(gw, { ...BODY, stream: true, stream_options: { include_usage: true } }, headers, held);
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

/**
 * Upstreams a, b, c behind route `r` using `strategy` (built with `route`, gateway options `gwOpts`), `a`
 * failing every other request it gets; the 300 requests served, and the count of each provider's.
 */
async function flakyFirstOfThree(strategy: string, route: RouteOptions = {}, gwOpts: GatewayOptions = {}) {
  const a = await chatUp({ fail: (n) => n % 2 === 1 });
  const [b, c] = [await chatUp(), await chatUp()];
  const gw = await gateway(routeOver(strategy, { a, b, c }, {}, route), gwOpts);
  const { order, all } = await serve(gw, 300);
  return { n: counts(order), all };
}

describe('round-robin under failover', () => {
  it("a flaky upstream's failed turns are spread over the healthy ones, not all handed to its successor", async () => {
    // SPEC: round-robin "rotates evenly across healthy candidates". `a` fails every other request it gets
    // (never five in a row: its breaker stays closed), so its failed turns must go somewhere.
    const { n, all } = await flakyFirstOfThree('round-robin');
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
    const price = { input_per_mtok: 1, output_per_mtok: 2 };
    const { n } = await flakyFirstOfThree('cost', { model: { price } });
    expect(n.a).toBe(50);
    const [hi, lo] = [Math.max(n.b ?? 0, n.c ?? 0), Math.min(n.b ?? 0, n.c ?? 0)];
    expect(hi / lo, JSON.stringify(n)).toBeLessThanOrEqual(1.2);
  });
});

describe('weighted under failover', () => {
  it("a flaky upstream's failed turns go to the others in proportion to their weights", async () => {
    // The whole ranked list is a weighted draw, so the failover chain follows the weights too.
    const { n, all } = await flakyFirstOfThree(
      'weighted',
      { weights: { a: 1, b: 1, c: 2 } },
      { random: mulberry32(21) },
    );
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
