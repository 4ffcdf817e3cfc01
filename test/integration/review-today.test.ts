/**
 * White-box review of the changes since b851171: the fleet-wide half-open probe lease (resilience/breaker.ts
 * hold/release/held/adoptClose, state/shared-state.ts #askProbeLease, state/redis.ts takeProbeLease/endProbeLease/
 * publishClosed), statistics dated on Redis's clock (redis.ts sync), series of removed upstreams dropped after
 * a reload (gateway.ts #forgetSeries), and the smaller request-path changes (BOM, repeated keys).
 * Tests that fail on the current code name the defect; tests titled "guard:" pin behaviour that is right and
 * easy to break. The Redis ones run replicas in this process on a real loopback redis-server and are skipped
 * without one.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, value } from '../helpers/prom-text.js';
import {
  badThenGood,
  chat,
  describeWithRedis,
  prefixes,
  redisClient,
  redisConfig,
  redisState,
  startReplica,
  subscribed,
  type ConfigPart,
} from '../helpers/redis.js';
import { reload, sleep, statsView } from '../helpers/review-kit.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

// -------------------------------------------------------------------------------------------------
// Series of removed upstreams (gateway.ts #forgetSeries), memory backend
// -------------------------------------------------------------------------------------------------

describe('review: a reload removes a removed upstream’s metric series (memory backend)', () => {
  function cfgWith(url: string, models: string[]): Record<string, unknown> {
    const routes: Record<string, unknown> = { r1: { strategy: 'priority', targets: ['p/m1'] } };
    if (models.includes('m2')) routes.r2 = { strategy: 'priority', targets: ['p/m2'] };
    return { providers: [simProvider('p', url, models)], routes };
  }

  it('the last request still running on a removed upstream does not bring its series back once it ends', async () => {
    // README Metrics: "An upstream a reload removes takes its series with it (... the rest once the old
    // config's requests are done)". The old runtime is released when the handler's promise settles
    // (chat.ts ownReply rt.release()), and #forgetSeries runs a few microtasks later (the pool is reused,
    // so Runtime.retire resolves at once); but the request's own count is written after the turn
    // (report.ts reportRequest -> afterThisTurn/setImmediate -> writeReport), through requestChildren,
    // which #forgetSeries just cleared: llm_router_requests_total / request_duration of p/m2 are created
    // again, after their removal, and are exported forever.
    const sim = track(await startSimulator({ name: 'p', latencyMs: 700 }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    expect((await postChat(gw, { model: 'r1', messages: [{ role: 'user', content: 'x' }] })).status).toBe(
      200,
    );
    const inFlight = postChat(gw, { model: 'r2', messages: [{ role: 'user', content: 'y' }] });
    await until('the request reaches the upstream', () => sim.requests.length >= 2, 5_000);
    reload(gw, cfgWith(sim.url, ['m1'])); // p/m2 is gone; p/m1 (same provider: pool reused) stays
    expect((await inFlight).status).toBe(200);
    await sleep(300);
    const samples = await scrape(gw.url);
    const left = new Set(samples.filter((s) => s.labels.model === 'm2').map((s) => s.name));
    expect([...left]).toEqual([]);
    // p/m1 keeps its series.
    expect(
      value(samples, 'llm_router_requests_total', { route: 'r1', provider: 'p', model: 'm1', status: '200' }),
    ).toBe(1);
  });

  it('guard: an upstream removed and re-added before the old config’s requests end keeps its series and counts', async () => {
    const sim = track(await startSimulator({ name: 'p', latencyMs: 700 }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    const inFlight = postChat(gw, { model: 'r2', messages: [{ role: 'user', content: 'y' }] });
    await until('the request reaches the upstream', () => sim.requests.length >= 1, 5_000);
    reload(gw, cfgWith(sim.url, ['m1'])); // removed...
    reload(gw, cfgWith(sim.url, ['m1', 'm2'])); // ...and back, while the first config still has a request
    expect((await inFlight).status).toBe(200);
    await sleep(300);
    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'p',
        model: 'm2',
        outcome: 'success',
      }),
    ).toBe(1);
    expect(
      value(samples, 'llm_router_requests_total', { route: 'r2', provider: 'p', model: 'm2', status: '200' }),
    ).toBe(1);
    expect(value(samples, 'llm_router_circuit_state', { provider: 'p', model: 'm2' })).toBe(0);
  });

  it('guard: with no request in flight, a removed upstream’s series go and a kept one’s stay', async () => {
    const sim = track(await startSimulator({ name: 'p' }));
    const gw = track(await startGateway(cfgWith(sim.url, ['m1', 'm2'])));
    for (const model of ['r1', 'r2'])
      expect((await postChat(gw, { model, messages: [{ role: 'user', content: 'z' }] })).status).toBe(200);
    reload(gw, cfgWith(sim.url, ['m1']));
    await until('m2 series gone', async () => (await scrape(gw.url)).every((s) => s.labels.model !== 'm2'));
    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', {
        provider: 'p',
        model: 'm1',
        outcome: 'success',
      }),
    ).toBe(1);
    // The cached children were dropped: a request after the reload still counts (no lost increments).
    expect((await postChat(gw, { model: 'r1', messages: [{ role: 'user', content: 'w' }] })).status).toBe(
      200,
    );
    await sleep(50);
    expect(
      value(await scrape(gw.url), 'llm_router_requests_total', {
        route: 'r1',
        provider: 'p',
        model: 'm1',
        status: '200',
      }),
    ).toBe(2);
  });
});

// -------------------------------------------------------------------------------------------------
// Breakers, memory backend: no change
// -------------------------------------------------------------------------------------------------

describe('review: breakers without Redis are not held', () => {
  it('guard: memory backend: an ended open goes half-open on its own, once, gauge and status agreeing', async () => {
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const good = track(await startSimulator({ name: 'good' }));
    const gw = track(
      await startGateway({
        providers: [simProvider('bad', bad.url, ['m']), simProvider('good', good.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 300 },
      }),
    );
    expect((await chat(gw)).provider).toBe('good');
    const breaker = gw.gateway.shared.breakers.get('bad/m');
    expect(breaker.state).toBe('open');
    // The wake-up (1 ms after the open ends) makes the transition; the snapshot reports it lazily before.
    await until(
      'half-open, its transition made',
      async () =>
        value(await scrape(gw.url), 'llm_router_circuit_state', { provider: 'bad', model: 'm' }) === 1,
      3_000,
    );
    expect(breaker.held).toBe(false);
    const samples = await scrape(gw.url);
    expect(value(samples, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(1);
    expect(
      value(samples, 'llm_router_circuit_transitions_total', {
        provider: 'bad',
        model: 'm',
        to: 'half_open',
      }),
    ).toBe(1);
    const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string } }[];
    };
    expect(status.upstreams.find((u) => u.id === 'bad/m')?.breaker.state).toBe('half_open');
  });
});

// -------------------------------------------------------------------------------------------------
// Request path: repeated keys, BOM
// -------------------------------------------------------------------------------------------------

describe('review: request and answer texts', () => {
  it('guard: a body with a repeated top-level key reaches the upstream with that key once, as validated', async () => {
    const sim = track(await startSimulator({ name: 'p' }));
    const gw = track(
      await startGateway({
        providers: [simProvider('p', sim.url, ['m'])],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const text =
      '{"model":"r","max_tokens":5,"messages":[{"role":"user","content":"a"}],"max_tokens":7,"x":{"max_tokens":1}}';
    expect((await postChat(gw, text)).status).toBe(200);
    const sent = sim.requests.at(-1)!.text;
    expect(sent.match(/"max_tokens"/g)).toHaveLength(2); // top level once, the nested one kept
    expect(JSON.parse(sent)).toMatchObject({ model: 'm', max_tokens: 7, x: { max_tokens: 1 } });
    // A body with no repeated key is spliced as written (whitespace kept).
    const spaced = '{ "model" : "r" ,  "messages":[{"role":"user","content":"b"}] }';
    expect((await postChat(gw, spaced)).status).toBe(200);
    expect(sim.requests.at(-1)!.text).toBe('{ "model" : "m" ,  "messages":[{"role":"user","content":"b"}] }');
  });

  it('guard: an upstream JSON answer that starts with a UTF-8 BOM is served, not failed over', async () => {
    const answer = {
      id: 'x',
      object: 'chat.completion',
      created: 1,
      model: 'm',
      choices: [{ index: 0, message: { role: 'assistant', content: 'bom ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    };
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(answer))]);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
        res.end(body);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const gw = track(
      await startGateway({
        providers: [simProvider('p', url, ['m'])],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const res = await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'a' }] });
    expect(res.status).toBe(200);
    expect(res.text.charCodeAt(0)).not.toBe(0xfeff);
    expect((res.json.choices as { message: { content: string } }[])[0]!.message.content).toBe('bom ok');
  });
});

// -------------------------------------------------------------------------------------------------
// Scale-out: probe lease, clock
// -------------------------------------------------------------------------------------------------

const nextPrefix = prefixes(`review-today-${process.pid}-`);

describeWithRedis('review: fleet probe lease and Redis clock (SPEC §2, §7)', (redis) => {
  /** On the shared Redis (or `url`) under `prefix`; no default breaker: each test says its own. */
  const config = (
    providers: ConfigPart[],
    routes: ConfigPart,
    prefix: string,
    breaker: ConfigPart,
    url = redis.url,
  ): ConfigPart => redisConfig(providers, routes, breaker, redisState(url, prefix));

  const replica = (cfg: ConfigPart): Promise<TestGateway> =>
    startReplica(track, cfg, { connectedWithinMs: 5_000 });

  const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;

  it('the fleet sends one trial at a time: the lease does not lapse while its holder’s probe is still running', async () => {
    // SPEC §2: half-open allows "at most half_open_probes (default 1) concurrent trial requests"; the lease
    // was made so that N replicas do not send N. But the lease is taken once, for open_ms
    // (state/shared-state.ts #askProbeLease: takeProbeLease(id, breaker.baseOpenMs)), and its holder never renews it
    // while it is half-open with a probe in flight (TAKE_LEASE can renew, nobody asks). A replica that lost
    // asks again after open_ms (hold(leaseMs + 2 s), #wakeAfter(leaseMs)), takes the lapsed lease and goes
    // half-open too: a trial longer than open_ms (an LLM answer vs the default 30 s) gets company.
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 700, success_threshold: 1 };
    const a = await replica(config(providers, routes, prefix, breaker));
    const b = await replica(config(providers, routes, prefix, breaker));
    await subscribed(redis.url, `${prefix}breaker-opens`, 2, 5_000);
    expect((await chat(a)).provider).toBe('good'); // bad/m opens on A for 700 ms; B adopts
    await until('B adopts', () => state(b) === 'open');
    bad.set({ status: 200, latencyMs: 3_000 }); // recovered, but each answer takes 3 s
    await until('one probes', () => state(a) === 'half_open' || state(b) === 'half_open', 5_000);
    const [prober, other] = state(a) === 'half_open' ? [a, b] : [b, a];
    const before = bad.requests.length;
    // The fleet's trial: 3 s on bad/m (a failure below must not leave it to reject unheard at close).
    const trial = chat(prober).catch((err: unknown) => ({ provider: String(err) }));
    await until('the trial reaches bad', () => bad.requests.length > before, 3_000);
    await sleep(1_500); // twice open_ms: the lease's PX has run out, the trial has not
    expect(state(other)).toBe('open');
    const second = await chat(other);
    expect(second.provider).toBe('good');
    expect(bad.requests.length - before).toBe(1);
    expect((await trial).provider).toBe('bad');
  });

  it('a lease won after a reload dropped the upstream is given back, not kept for open_ms', async () => {
    // state/shared-state.ts #askProbeLease: when the answer comes, a breaker no longer current (dropped by a reload),
    // re-opened or closed returns at once — having won the lease, it keeps it for its full PX (open_ms): no
    // replica of the fleet still serving that upstream can probe it until then (endProbeLease is only called
    // on a half_open transition, which never comes). Fix: in that branch, `if (won) redis.endProbeLease(id)`.
    const prefix = nextPrefix();
    const { providers, routes, good } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 800 };
    const a = await replica(config(providers, routes, prefix, breaker));
    const state0 = a.gateway.shared.redis!;
    let answered = false;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const take = state0.takeProbeLease.bind(state0);
    // Redis answers at once; the answer reaches the runtime only once the gate opens (a slow network).
    state0.takeProbeLease = async (id: string, ms: number) => {
      const won = await take(id, ms);
      answered = true;
      await gate;
      return won;
    };
    const raw = track(redisClient(redis.url));
    expect((await chat(a)).provider).toBe('good'); // bad/m opens for 800 ms
    await until('the lease is asked for and taken', () => answered, 5_000);
    expect(await raw.get(`${prefix}probe:bad/m`)).toBe(state0.replicaId);
    reload(
      a,
      config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix, {
        failure_threshold: 1,
        open_ms: 30_000, // the lease is held for the open_ms it was taken with either way
      }),
    );
    open();
    await sleep(300);
    expect(await raw.get(`${prefix}probe:bad/m`)).toBeNull();
  });

  it('statistics are still shared when Redis refuses TIME (an ACL user without +time): the first sync must not fail for ever', async () => {
    // redis.ts sync(): `this.#clockOffsetMs ??= await this.#readClock(sent)` throws on every exchange when
    // TIME is refused (an ACL'd user, a proxy that does not implement it): the catch drops every remote view,
    // and #failed ignores the error (not a timeout), so nothing is logged and the fleet's statistics are
    // never exchanged again — before this change they were. In the pipeline, a refused TIME is already
    // tolerated (Array.isArray check). Fix: on a refused TIME, keep offset 0 (the local clock), as before.
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const raw = track(redisClient(redis.url));
    const user = `notime${process.pid}`;
    await raw.call('ACL', 'SETUSER', user, 'reset', 'on', '>pw', '~*', '&*', '+@all', '-time');
    try {
      const url = `redis://${user}:pw@127.0.0.1:${redis.port}`;
      const gw = await replica(
        config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix, {}, url),
      );
      const view = statsView({ at: Date.now() });
      await raw.hset(`${prefix}stats:good/m`, { other: JSON.stringify(view) });
      const stats = gw.gateway.shared.statsFor('good/m');
      await until('the other replica’s view is read', () => stats.samples === 7, 3_000);
    } finally {
      await raw.call('ACL', 'DELUSER', user);
    }
  });

  it('guard: a replica that lost the lease is open everywhere it shows (state, gauge, status) and counts no half-open', async () => {
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 600, success_threshold: 1 };
    const a = await replica(config(providers, routes, prefix, breaker));
    const b = await replica(config(providers, routes, prefix, breaker));
    await subscribed(redis.url, `${prefix}breaker-opens`, 2, 5_000);
    expect((await chat(a)).provider).toBe('good');
    await until('B adopts', () => state(b) === 'open');
    await until('one probes', () => state(a) === 'half_open' || state(b) === 'half_open', 5_000);
    const [prober, other] = state(a) === 'half_open' ? [a, b] : [b, a];
    await sleep(150); // the other has had its answer
    expect(state(other)).toBe('open');
    const samples = await scrape(other.url);
    expect(value(samples, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(2);
    expect(
      value(samples, 'llm_router_circuit_transitions_total', {
        provider: 'bad',
        model: 'm',
        to: 'half_open',
      }) ?? 0,
    ).toBe(0);
    const status = (await (await request(`${other.url}/router/status`)).body.json()) as {
      upstreams: { id: string; breaker: { state: string } }[];
    };
    expect(status.upstreams.find((u) => u.id === 'bad/m')?.breaker.state).toBe('open');
    expect((await chat(other)).provider).toBe('good');
    // The prober's probe succeeds (success_threshold 1): its close reaches the other, counted once there.
    bad.set({ status: 200 });
    expect((await chat(prober)).provider).toBe('bad');
    await until('the other closes', () => state(other) === 'closed', 3_000);
    const after = await scrape(other.url);
    expect(
      value(after, 'llm_router_circuit_transitions_total', { provider: 'bad', model: 'm', to: 'closed' }),
    ).toBe(1);
    expect(value(after, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(0);
    // The lease was given back by the prober's close.
    const raw = track(redisClient(redis.url));
    await until('lease returned', async () => (await raw.get(`${prefix}probe:bad/m`)) === null, 2_000);
  });
});
