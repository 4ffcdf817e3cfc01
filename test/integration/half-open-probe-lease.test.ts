/**
 * The half-open trial and the fleet's probe lease (SPEC §2 "Circuit breaker": at most half_open_probes
 * concurrent trials; §7 Scale-out; README "Scale-out"). Without Redis an ended open goes half-open on its
 * own. Over Redis one replica of the fleet takes the lease and probes: it renews the lease while its trial
 * runs, admits no trial once another holds it, gives it back on a reload that drops the upstream and on close,
 * and the replicas that lost it stay open everywhere they show. Also here: statistics are still shared when
 * Redis refuses TIME. The Redis blocks run replicas in this process on a real loopback redis-server and are
 * skipped without one.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
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
import { reload, sleep, statsView } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

const nextPrefix = prefixes(`half-open-probe-lease-${process.pid}-`);

describe('breakers without Redis are not held', () => {
  it('memory backend: an ended open goes half-open on its own, once, gauge and status agreeing', async () => {
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

describeWithRedis('the probe lease while a trial runs', (redis) => {
  const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;

  it('a trial that begins after the lease’s first renewal tick is renewed before the lease runs out, not at the instant it lapses', async () => {
    // The lease (PX leaseMs from the win) is renewed as a half-open trial is admitted and while one is out.
    // A trial that starts after the first renewal tick (leaseMs/2, no probe out then) keeps a lease well
    // above zero: renewed only as it lapses, it would race the replicas that lost, which re-ask at that very
    // moment, and a second replica could probe alongside.
    const prefix = nextPrefix();
    const L = 2_000;
    const { bad, providers, routes } = await badThenGood(track);
    const gw = await startReplica(
      track,
      redisConfig(
        providers,
        routes,
        { failure_threshold: 1, open_ms: L, success_threshold: 1 },
        redisState(redis.url, prefix),
      ),
      { connectedWithinMs: 5_000 },
    );
    const raw = track(redisClient(redis.url));
    expect((await chat(gw)).provider).toBe('good'); // bad/m opens for L
    bad.set({ status: 200, latencyMs: 2_500 });
    await until('the lease won: half-open', () => state(gw) === 'half_open', L + 5_000);
    await sleep(Math.round(0.65 * L)); // past the first tick (L/2): no probe was out, nothing renewed
    const before = bad.requests.length;
    const trial = chat(gw);
    await until('the trial reaches bad/m', () => bad.requests.length > before, 3_000);
    let min = Number.POSITIVE_INFINITY;
    let sampled = 0;
    let done = false;
    void trial.finally(() => (done = true));
    while (!done) {
      const left = await raw.pttl(`${prefix}probe:bad/m`);
      // Only while the trial is still at the upstream (its end gives the lease back, rightly).
      if (bad.inFlight() > 0 && state(gw) === 'half_open') {
        min = Math.min(min, left < 0 ? -1 : left);
        sampled++;
      }
      await sleep(20);
    }
    expect((await trial).provider).toBe('bad');
    // The lease was looked at while the trial was out (else min stays Infinity and the check below is empty).
    expect(sampled).toBeGreaterThan(10);
    expect(min).toBeGreaterThanOrEqual(L / 4);
  }, 20_000);
});

describeWithRedis('the probe lease as a trial is admitted', (redis) => {
  const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;

  it('a replica whose idle lease lapsed and was taken by another admits no trial; it asks again once wanted and the lease is free', async () => {
    // The holder lets its lease lapse while no probe is out (by design). Once another replica has taken the
    // lapsed lease (and probes), this replica admits no trial of its own: two replicas probing together is
    // what the lease is there to prevent.
    const prefix = nextPrefix();
    const L = 2_000;
    const { bad, providers, routes } = await badThenGood(track);
    const gw = await startReplica(
      track,
      redisConfig(
        providers,
        routes,
        { failure_threshold: 1, open_ms: L, success_threshold: 1 },
        redisState(redis.url, prefix),
      ),
      { connectedWithinMs: 5_000 },
    );
    const raw = track(redisClient(redis.url));
    const key = `${prefix}probe:bad/m`;
    expect((await chat(gw)).provider).toBe('good'); // bad/m opens for L
    bad.set({ status: 200 });
    await until('the lease won: half-open', () => state(gw) === 'half_open', L + 5_000);
    // No probe out: the lease lapses (PX L from the win) ...
    await until('the lease lapsed', async () => (await raw.pttl(key)) === -2, L + 3_000);
    // ... and another replica of the fleet takes it, to probe itself, for a lease of the same length (one
    // longer than any the fleet gives is no lease: a replica takes it over, fleet-protocol.ts TAKE_LEASE).
    await raw.set(key, 'another-replica', 'PX', L);
    const before = bad.requests.length;
    const answer = await chat(gw);
    expect(answer.status).toBe(200);
    expect(await raw.get(key)).toBe('another-replica');
    // This replica must not probe bad/m alongside the lease's holder.
    expect(bad.requests.length - before).toBe(0);
    expect(answer.provider).toBe('good');
    // The other holder's lease ends without news (it got no traffic): wanted here, it is asked for again
    // at a tick and this replica probes.
    await raw.del(key);
    await until(
      'this replica probes again under a lease of its own',
      async () => {
        await chat(gw);
        return bad.requests.length > before;
      },
      5_000,
    );
    expect(await raw.get(key)).not.toBe('another-replica');
  }, 20_000);
  it('the lease holder gives its lease back when a reload drops the upstream, and when it closes', async () => {
    // A lease left in Redis until it lapses (open_ms) would hold the replicas that still have the upstream
    // open that long, for a replica that can no longer probe it.
    const L = 3_000;
    const setup = async (prefix: string) => {
      const { bad, providers, routes } = await badThenGood(track);
      const cfg = redisConfig(
        providers,
        routes,
        { failure_threshold: 1, open_ms: L, success_threshold: 1 },
        redisState(redis.url, prefix),
      );
      const gw = await startReplica(track, cfg, { connectedWithinMs: 5_000 });
      expect((await chat(gw)).provider).toBe('good'); // bad/m opens for L
      bad.set({ status: 200 });
      await until('the lease won: half-open', () => state(gw) === 'half_open', L + 5_000);
      return { gw, cfg, key: `${prefix}probe:bad/m` };
    };
    const raw = track(redisClient(redis.url));
    const dropped = await setup(nextPrefix());
    expect(await raw.get(dropped.key)).not.toBeNull();
    // Far from lapsing on its own within the 1 s waited below: only a give-back empties it that soon.
    expect(await raw.pttl(dropped.key)).toBeGreaterThan(1_500);
    const without = {
      ...dropped.cfg,
      providers: (dropped.cfg.providers as { name: string }[]).filter((p) => p.name !== 'bad'),
      routes: { r: { strategy: 'priority', targets: ['good/m'] } },
    };
    dropped.gw.gateway.reload(parseConfigText(JSON.stringify(without), {}));
    await until('given back on the reload', async () => (await raw.exists(dropped.key)) === 0, 1_000);
    const closing = await setup(nextPrefix());
    expect(await raw.get(closing.key)).not.toBeNull();
    // Far from lapsing on its own within the 1 s waited below: only a give-back empties it that soon.
    expect(await raw.pttl(closing.key)).toBeGreaterThan(1_500);
    await closing.gw.close();
    await until('given back on close', async () => (await raw.exists(closing.key)) === 0, 1_000);
  }, 30_000);
});

describeWithRedis('fleet probe lease and Redis clock (SPEC §2, §7)', (redis) => {
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
    // keeps N replicas from sending N. It is taken for open_ms, and a replica that lost asks again after
    // that: the holder keeps it while its probe is in flight, so a trial longer than open_ms (an LLM answer
    // vs the default 30 s) gets no company.
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
    // A lease whose answer arrives once the breaker is no longer current (dropped by a reload), re-opened or
    // closed is won for no trial: it is given back at once, else no replica of the fleet still serving that
    // upstream could probe it for the lease's full PX (open_ms).
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
    // Statistics are dated on Redis's clock (TIME). When TIME is refused (an ACL'd user, a proxy that does
    // not implement it) the replica keeps its local clock (offset 0) and goes on exchanging statistics,
    // rather than failing every exchange without a word.
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

  it('a replica that lost the lease is open everywhere it shows (state, gauge, status) and counts no half-open', async () => {
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
