/**
 * The circuit breaker (SPEC §2) against results that arrive late: requests begun in one breaker state that
 * finish in another. Through the gateway, with an upstream `a` whose answers are held until the test
 * releases them, and a healthy simulator `b` behind it (route `r`, priority a then b).
 *
 * Rules held here:
 * - a result only speaks for the breaker episode (generation) its request began in: a request begun before
 *   the breaker opened, or a probe of an earlier half-open episode, settling later neither re-opens, extends,
 *   doubles nor closes the breaker, counts toward no threshold of a later episode, and makes no transition;
 * - half-open admits at most `half_open_probes` trials however many requests arrive at once, the rest are
 *   served elsewhere at once; a probe that times out re-opens with open_ms doubled up to max_open_ms;
 * - a 429 with Retry-After opens for exactly that long (capped at 24 h), is no fault (no doubling), and a
 *   later fault-open starts from open_ms; a stale 429 while open extends the cooldown with no transition;
 * - `/router/status`, `llm_router_circuit_state` and `llm_router_circuit_transitions_total` agree with what
 *   happened at each step (no phantom transitions).
 *
 * The gateway's clock is injected (`Date.now() + offset`): a test jumps it past an open instead of sleeping.
 * open_ms is long in real time (10 s), so no open lapses on its own while a test runs.
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { chatCompletion, sendJson, startMock } from '../helpers/mock-upstream.js';
import { harness, type Reply } from '../helpers/resilience-harness.js';

const h = harness();
const track = closeAfterEach();

let offset = 0;
const now = (): number => Date.now() + offset;
function jump(ms: number): void {
  offset += ms;
}

const OPEN_MS = 10_000;
const BREAKER = {
  failure_threshold: 2,
  open_ms: OPEN_MS,
  max_open_ms: 30_000,
  half_open_probes: 1,
  success_threshold: 2,
};
/** Held answers must not time out on their own while a test waits to release them. */
const PATIENT = { connect_ms: 1000, first_byte_ms: 20_000, idle_ms: 20_000, total_ms: 30_000 };
/** The clock jumps while requests are in flight: their route deadline must stay far away. */
const ROUTING = { max_attempts: 2, total_timeout_ms: 600_000 };
const LABELS = 'provider="a",model="m"';

type Answer = 200 | 500 | { status: 429; headers: Record<string, string> };

function answer(res: ServerResponse, body: Record<string, unknown>, a: Answer): void {
  if (a === 200) return sendJson(res, 200, chatCompletion(body));
  if (a === 500)
    return sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
  sendJson(
    res,
    429,
    { error: { message: 'slow down', type: 'rate_limit_error', param: null, code: 'rate_limited' } },
    a.headers,
  );
}

/**
 * Upstream `a`: while `mode` is 'hold', each request waits until `release(n, answer)` (n = its 0-based
 * arrival); otherwise it is answered at once with `mode`.
 */
async function heldUpstream(): Promise<{
  name: string;
  url: string;
  mode: 'hold' | Answer;
  hits(): number;
  arrived(n: number): Promise<void>;
  release(n: number, a: Answer): void;
}> {
  const held = new Map<number, { res: ServerResponse; body: Record<string, unknown> }>();
  const up = {
    name: 'a',
    url: '',
    mode: 'hold' as 'hold' | Answer,
    hits: () => mock.received.length,
    arrived: (n: number) => h.until(() => expect(mock.received.length).toBeGreaterThanOrEqual(n)),
    release(n: number, a: Answer): void {
      const r = held.get(n);
      if (!r) throw new Error(`request ${n} is not held`);
      held.delete(n);
      answer(r.res, r.body, a);
    },
  };
  const mock = track(
    await startMock((r, res, n) => {
      if (up.mode === 'hold') held.set(n, { res, body: r.body });
      else answer(res, r.body, up.mode);
    }),
  );
  up.url = mock.url;
  return up;
}

async function setup(breaker: Record<string, unknown> = {}, timeouts: Record<string, unknown> = PATIENT) {
  const a = await heldUpstream();
  const b = await h.sim('b');
  await h.gateway([a, b], { breaker: { ...BREAKER, ...breaker }, timeouts, routing: ROUTING, now });
  return { a, b };
}

async function transitions(): Promise<{ open: number; half_open: number; closed: number }> {
  const get = async (to: string) =>
    (await h.metric(`llm_router_circuit_transitions_total{${LABELS},to="${to}"}`)) ?? 0;
  return { open: await get('open'), half_open: await get('half_open'), closed: await get('closed') };
}

const served = (r: Reply): string => `${r.status} ${String(r.headers['x-router-provider'])}`;

describe('results of requests begun before the breaker opened', () => {
  it('settling while open or half-open (failure or success) neither extends, re-opens, closes nor takes a probe slot', async () => {
    const { a } = await setup();
    // Four slow requests begin while closed.
    const slow = [h.chat(), h.chat(), h.chat(), h.chat()];
    await a.arrived(4);
    a.mode = 500;
    expect(served(await h.chat())).toBe('200 b');
    expect(served(await h.chat())).toBe('200 b');
    const opened = await h.breaker('a/m');
    expect(opened).toMatchObject({ state: 'open', opens: 1, open_ms: OPEN_MS, trip_cause: 'errors' });

    // While open: a late 500 and a late success change nothing.
    a.release(0, 500);
    a.release(1, 200);
    expect(served(await slow[0]!)).toBe('200 b');
    expect(served(await slow[1]!)).toBe('200 a');
    const still = await h.breaker('a/m');
    expect(still).toMatchObject({ state: 'open', opens: 1, open_ms: OPEN_MS, trip_cause: 'errors' });
    // The open timer was not restarted by the late failure.
    expect(still.ms_until_half_open).toBeLessThanOrEqual(opened.ms_until_half_open);
    expect(await transitions()).toEqual({ open: 1, half_open: 0, closed: 0 });
    expect(await h.metric(`llm_router_circuit_state{${LABELS}}`)).toBe(2);

    // Half-open: a late 500 does not re-open it, a late success is no probe's success.
    jump(OPEN_MS + 1);
    a.release(2, 500);
    expect(served(await slow[2]!)).toBe('200 b');
    a.release(3, 200);
    expect(served(await slow[3]!)).toBe('200 a');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'half_open',
      opens: 1,
      open_ms: OPEN_MS,
      consecutive_successes: 0,
      probes_in_flight: 0,
    });
    expect(await transitions()).toEqual({ open: 1, half_open: 1, closed: 0 });
    expect(await h.metric(`llm_router_circuit_state{${LABELS}}`)).toBe(1);

    // The probe slot is free: the next request probes a.
    a.mode = 200;
    expect(served(await h.chat())).toBe('200 a');
    expect((await h.breaker('a/m')).consecutive_successes).toBe(1);
  });

  it('failing only after the breaker has healed (open, probed, closed), they do not re-open it', async () => {
    // A brownout: requests hang at the upstream; the breaker trips on fresh failures, probes and closes once
    // the upstream is back; only then do the hung requests of the brownout fail. They are news of the past.
    const { a } = await setup();
    const slow = [h.chat(), h.chat()];
    await a.arrived(2);
    a.mode = 500;
    await h.chat();
    await h.chat();
    expect((await h.breaker('a/m')).state).toBe('open');
    jump(OPEN_MS + 1);
    a.mode = 200;
    expect(served(await h.chat())).toBe('200 a');
    expect(served(await h.chat())).toBe('200 a');
    expect(await h.breaker('a/m')).toMatchObject({ state: 'closed', opens: 1 });

    a.release(0, 500);
    a.release(1, 500);
    for (const r of slow) expect(served(await r)).toBe('200 b');

    expect(await h.breaker('a/m')).toMatchObject({ state: 'closed', opens: 1, consecutive_failures: 0 });
    expect(await transitions()).toEqual({ open: 1, half_open: 1, closed: 1 });
    // The healed upstream keeps its traffic.
    expect(served(await h.chat())).toBe('200 a');
  });
});

describe('a probe of an earlier half-open episode', () => {
  /**
   * half_open_probes 2: probe P1 is held, probe P2 fails and re-opens the breaker (open_ms doubled); after that
   * open, a new episode begins with P1 still out, and its own first probe P3 succeeds.
   */
  async function twoEpisodes() {
    const env = await setup({ half_open_probes: 2, success_threshold: 2 });
    const { a } = env;
    a.mode = 500;
    await h.chat();
    await h.chat();
    jump(OPEN_MS + 1);
    a.mode = 'hold';
    const p1 = h.chat();
    await a.arrived(3);
    a.mode = 500;
    expect(served(await h.chat())).toBe('200 b');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'open',
      opens: 2,
      open_ms: 2 * OPEN_MS,
      probes_in_flight: 0, // p1 is still out, a trial of the episode before: it holds no slot of this one
    });
    jump(2 * OPEN_MS + 1);
    a.mode = 200;
    expect(served(await h.chat())).toBe('200 a');
    expect(await h.breaker('a/m')).toMatchObject({ state: 'half_open', consecutive_successes: 1, opens: 2 });
    return { ...env, p1 };
  }

  it('its late success is not a success of the new episode: one new probe success does not close it', async () => {
    const { a, p1 } = await twoEpisodes();
    a.release(2, 200);
    expect(served(await p1)).toBe('200 a');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'half_open',
      consecutive_successes: 1,
      probes_in_flight: 0,
    });
    expect((await transitions()).closed).toBe(0);
  });

  it('its late failure does not re-open the new episode nor double open_ms again', async () => {
    const { a, p1 } = await twoEpisodes();
    a.release(2, 500);
    expect(served(await p1)).toBe('200 b');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'half_open',
      opens: 2,
      open_ms: 2 * OPEN_MS,
      consecutive_successes: 1,
      probes_in_flight: 0,
    });
    expect(await transitions()).toEqual({ open: 2, half_open: 2, closed: 0 });
  });
  it('with one probe slot (the default): a probe whose episode a late 429 ended does not count in the next episode', async () => {
    const { a } = await setup();
    const slow = h.chat(); // begun while closed
    await a.arrived(1);
    a.mode = 500;
    await h.chat();
    await h.chat();
    jump(OPEN_MS + 1);
    a.mode = 'hold';
    const probe = h.chat();
    await a.arrived(4);
    // The request begun while closed is rate limited: the upstream's cooldown opens the breaker again.
    a.release(0, { status: 429, headers: { 'retry-after': '5' } });
    expect(served(await slow)).toBe('200 b');
    expect(await h.breaker('a/m')).toMatchObject({ state: 'open', trip_cause: 'rate_limit', opens: 2 });
    jump(5_001);
    expect((await h.breaker('a/m')).state).toBe('half_open');
    // The old episode's probe answers now: it was no trial of this episode.
    a.release(3, 200);
    expect(served(await probe)).toBe('200 a');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'half_open',
      consecutive_successes: 0,
      probes_in_flight: 0,
    });
  });
});

describe('half-open admission and probe timeouts', () => {
  it('10 requests at once with one probe slot: exactly one reaches a, the rest are served by b at once; a probe that times out re-opens doubled, capped at max_open_ms', async () => {
    const { a, b } = await setup({}, { connect_ms: 1000, first_byte_ms: 400, idle_ms: 2000, total_ms: 5000 });
    a.mode = 500;
    await h.chat();
    await h.chat();
    jump(OPEN_MS + 1);
    a.mode = 'hold'; // the probe never gets its first byte: first_byte_timeout
    const bBefore = b.requests.length;
    const burst = Array.from({ length: 10 }, () => h.chat());
    await b.waitForRequests(bBefore + 9);
    expect(a.hits()).toBe(3);
    expect((await h.breaker('a/m')).probes_in_flight).toBe(1);
    const replies = await Promise.all(burst);
    expect(replies.every((r) => r.status === 200 && r.headers['x-router-provider'] === 'b')).toBe(true);
    const viaProbe = replies.filter((r) => r.headers['x-router-attempts'] === '2');
    expect(viaProbe.map((r) => r.headers['x-router-trail'])).toEqual(['a/m=first_byte_timeout']);
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'open',
      opens: 2,
      open_ms: 2 * OPEN_MS,
      trip_cause: 'timeouts',
      probes_in_flight: 0,
    });
    // Once more: 40 s would be past max_open_ms (30 s).
    jump(2 * OPEN_MS + 1);
    expect((await h.chat()).headers['x-router-trail']).toBe('a/m=first_byte_timeout');
    const capped = await h.breaker('a/m');
    expect(capped).toMatchObject({ state: 'open', opens: 3, open_ms: 30_000, probes_in_flight: 0 });
    expect(capped.ms_until_half_open).toBeLessThanOrEqual(30_000);
    expect(capped.ms_until_half_open).toBeGreaterThan(25_000);
    expect(await transitions()).toEqual({ open: 3, half_open: 2, closed: 0 });
    expect(await h.metric(`llm_router_circuit_state{${LABELS}}`)).toBe(2);
  });
});

describe('rate limits and generations', () => {
  it('a late 429 with Retry-After while open for errors extends the cooldown with no transition; the next fault-open doubles from open_ms', async () => {
    const { a } = await setup();
    const slow = h.chat();
    await a.arrived(1);
    a.mode = 500;
    await h.chat();
    await h.chat();
    a.release(0, { status: 429, headers: { 'retry-after': '25' } });
    expect(served(await slow)).toBe('200 b');
    const ext = await h.breaker('a/m');
    expect(ext).toMatchObject({ state: 'open', opens: 1, open_ms: OPEN_MS, trip_cause: 'rate_limit' });
    expect(ext.ms_until_half_open).toBeGreaterThan(20_000);
    expect(ext.ms_until_half_open).toBeLessThanOrEqual(25_000);
    expect(await transitions()).toEqual({ open: 1, half_open: 0, closed: 0 });

    // Still open past open_ms: the upstream's cooldown holds.
    jump(OPEN_MS + 1);
    expect((await h.breaker('a/m')).state).toBe('open');
    expect(served(await h.chat())).toBe('200 b');
    expect(a.hits()).toBe(3);
    // Past it, the probe fails: a re-open after an errors open, doubled from open_ms (not from 25 s).
    jump(15_000);
    expect((await h.chat()).headers['x-router-trail']).toBe('a/m=http_500');
    expect(await h.breaker('a/m')).toMatchObject({
      state: 'open',
      opens: 2,
      open_ms: 2 * OPEN_MS,
      trip_cause: 'errors',
    });
    expect(await transitions()).toEqual({ open: 2, half_open: 1, closed: 0 });
  });

  it('a 429 whose Retry-After is a day opens for a day (capped there, not at max_open_ms); a fault after it opens for open_ms', async () => {
    const { a } = await setup();
    a.mode = { status: 429, headers: { 'retry-after': '86400' } };
    expect(served(await h.chat())).toBe('200 b');
    const rl = await h.breaker('a/m');
    expect(rl).toMatchObject({ state: 'open', opens: 1, open_ms: OPEN_MS, trip_cause: 'rate_limit' });
    expect(rl.ms_until_half_open).toBeGreaterThan(86_400_000 - 5_000);
    expect(rl.ms_until_half_open).toBeLessThanOrEqual(86_400_000);
    jump(86_400_001);
    a.mode = 500;
    expect((await h.chat()).headers['x-router-trail']).toBe('a/m=http_500');
    expect(await h.breaker('a/m')).toMatchObject({ state: 'open', opens: 2, open_ms: OPEN_MS });
    jump(OPEN_MS + 1);
    await h.chat();
    expect(await h.breaker('a/m')).toMatchObject({ state: 'open', opens: 3, open_ms: 2 * OPEN_MS });
    expect(await transitions()).toEqual({ open: 3, half_open: 2, closed: 0 });
  });
});
