import { request } from 'undici';
import { expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { until } from '../helpers/wait.js';
import { simProvider, type TestGateway } from '../helpers/gateway.js';
import {
  OPEN_ON_FIRST_FAILURE,
  badThenGood,
  chat,
  describeWithRedis,
  freePort,
  prefixes,
  redisClient,
  redisConfig,
  redisState,
  startReplica,
  subscribed,
  type ConfigPart,
} from '../helpers/redis.js';

const track = closeAfterEach();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const nextPrefix = prefixes('t');

describeWithRedis('state.backend redis: replicas share state (SPEC §7)', (redis) => {
  /**
   * A replica: its own gateway on the shared Redis, under a key prefix of this test's own. Not waited on to
   * connect: the tests wait for that themselves, or start one while Redis is down.
   */
  function replica(providers: ConfigPart[], routes: ConfigPart, prefix: string): Promise<TestGateway> {
    const cfg = redisConfig(providers, routes, OPEN_ON_FIRST_FAILURE, redisState(redis.url, prefix));
    return startReplica(track, cfg, { connected: false });
  }

  it('a breaker one replica opens is open on the others, and on a replica that starts later', async () => {
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const [one, two] = await Promise.all([
      replica(providers, routes, prefix),
      replica(providers, routes, prefix),
    ]);
    await until(
      'both connected',
      () => one.gateway.shared.redis!.connected && two.gateway.shared.redis!.connected,
    );

    const status = await request(`${one.url}/router/status`);
    expect(await status.body.json()).toMatchObject({ state: { backend: 'redis', connected: true } });

    const first = await chat(one);
    expect(first.status).toBe(200);
    expect(first.headers['x-router-trail']).toBe('bad/m=http_500');
    expect(one.gateway.shared.breakers.get('bad/m').state).toBe('open');
    await until(
      'the open to reach replica two',
      () => two.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    expect(two.gateway.shared.breakers.get('bad/m').snapshot().msUntilHalfOpen).toBeGreaterThan(25_000);

    // Replica two skips the failing provider without ever having called it.
    const second = await chat(two);
    expect(second.status).toBe(200);
    expect(second.headers['x-router-provider']).toBe('good');
    expect(second.headers['x-router-attempts']).toBe('1');
    expect(bad.requests).toHaveLength(1);

    const late = await replica(providers, routes, prefix);
    await until(
      'the late replica to adopt the open',
      () => late.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    expect((await chat(late)).headers['x-router-provider']).toBe('good');
    expect(bad.requests).toHaveLength(1);

    // A later Retry-After that extends the running open (a 429 from a request that started before it) is
    // shared too; the metrics count no new transition.
    const breaker = one.gateway.shared.breakers.get('bad/m');
    breaker.onRateLimit(breaker.acquire()!, 120_000);
    await until(
      'the extension to reach the others',
      () =>
        two.gateway.shared.breakers.get('bad/m').msUntilHalfOpen() > 100_000 &&
        late.gateway.shared.breakers.get('bad/m').msUntilHalfOpen() > 100_000,
    );
    expect(two.gateway.shared.breakers.get('bad/m').snapshot().tripCause).toBe('rate_limit');
    const metrics = await (await request(`${one.url}/metrics`)).body.text();
    expect(metrics).toMatch(
      /llm_router_circuit_transitions_total\{[^}]*provider="bad"[^}]*to="open"[^}]*\} 1\n/,
    );
  });

  it("a replica that has served nothing ranks by the others' statistics", async () => {
    const prefix = nextPrefix();
    const fast = track(await startSimulator({ name: 'fast', latencyMs: 1 }));
    const slow = track(await startSimulator({ name: 'slow', latencyMs: 120 }));
    const providers = [simProvider('slow', slow.url, ['m']), simProvider('fast', fast.url, ['m'])];
    const routes = { r: { strategy: 'latency', targets: ['slow/m', 'fast/m'] } };
    const [one, two] = await Promise.all([
      replica(providers, routes, prefix),
      replica(providers, routes, prefix),
    ]);
    // Replica one measures both (pinned in turn), replica two nothing.
    for (let i = 0; i < 3; i++) {
      for (const p of ['slow', 'fast']) {
        const res = await request(`${one.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-router-provider': p },
          body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'hi' }] }),
        });
        await res.body.text();
      }
    }
    const stats = two.gateway.shared;
    await until(
      'replica two to see the measurements',
      () => stats.statsFor('slow/m').samples >= 3 && stats.statsFor('fast/m').samples >= 3,
    );
    expect(stats.statsFor('slow/m').ttftMs!).toBeGreaterThan(100);
    expect(stats.statsFor('fast/m').ttftMs!).toBeLessThan(100);
    const served = await chat(two);
    expect(served.headers['x-router-provider']).toBe('fast');
    expect(slow.requests).toHaveLength(3);
  });

  it('round-robin turns are counted fleet-wide: replicas taking turns with requests alternate upstreams', async () => {
    const prefix = nextPrefix();
    const a = track(await startSimulator({ name: 'a' }));
    const b = track(await startSimulator({ name: 'b' }));
    const providers = [simProvider('a', a.url, ['m']), simProvider('b', b.url, ['m'])];
    const routes = { r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } };
    const [one, two] = await Promise.all([
      replica(providers, routes, prefix),
      replica(providers, routes, prefix),
    ]);
    await until(
      'both connected',
      () => one.gateway.shared.redis!.connected && two.gateway.shared.redis!.connected,
    );
    const seen: string[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await chat(i % 2 === 0 ? one : two);
      seen.push(String(r.headers['x-router-provider']));
      await sleep(20); // the counter's answer arrives (a turn never waits for it)
    }
    // Each replica alone would give a,a,b,b,a,a,b,b here. Replica two's first turn is taken before it has
    // heard of the fleet's count; from then on the fleet alternates.
    for (let i = 2; i < seen.length; i++) expect(seen[i], seen.join(',')).not.toBe(seen[i - 1]);
  });

  it('distrusts what it reads: opens capped to its own max_open_ms, malformed or future-dated stats ignored', async () => {
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const gw = await replica([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix);
    await until('connected', () => gw.gateway.shared.redis!.connected);
    for (let i = 0; i < 4; i++) expect((await chat(gw)).status).toBe(200);
    const raw = track(redisClient(redis.url));
    const stats = { samples: 5, ttftMs: 1, latencyMs: 1, tpsSamples: 0, tokensPerSec: 0, outSamples: 0 };
    const view = { ...stats, meanOutputTokens: 0, okWeight: 0, failWeight: 1e12, lastSampleAgeMs: 0 };
    await raw.hset(`${prefix}stats:good/m`, {
      future: JSON.stringify({ ...view, failWeight: 50, at: Date.now() + 86_400_000 }),
      huge: JSON.stringify({ ...view, at: Date.now() }),
      garbage: '{"samples":',
    });
    await sleep(200); // several exchanges
    expect(gw.gateway.shared.statsFor('good/m').successRate).toBeGreaterThan(0.8);
    expect(await raw.hkeys(`${prefix}stats:good/m`)).toEqual([gw.gateway.shared.redis!.replicaId]);

    await raw.publish(
      `${prefix}breaker-opens`,
      JSON.stringify({ id: 'good/m', ms: 1e12, cause: 'errors', origin: 'x' }),
    );
    await until('the open', () => gw.gateway.shared.breakers.get('good/m').state === 'open');
    // 1e12 ms asked; max_open_ms (default 300,000) given.
    expect(gw.gateway.shared.breakers.get('good/m').msUntilHalfOpen()).toBeLessThanOrEqual(300_000);
  });

  it('a replica started while Redis is down subscribes once it is back, and closes at once on a stalled Redis', async () => {
    const prefix = nextPrefix();
    const { providers, routes } = await badThenGood(track);
    await redis.stop();
    let early: TestGateway;
    try {
      early = await replica(providers, routes, prefix);
      await sleep(300);
      expect(early.gateway.shared.redis!.connected).toBe(false); // it really started without Redis
    } finally {
      await redis.start();
    }
    await until('reconnected', () => early.gateway.shared.redis!.connected, 8_000);
    const other = await replica(providers, routes, prefix);
    await until('connected', () => other.gateway.shared.redis!.connected);
    const raw = track(redisClient(redis.url));
    for (let i = 0; i < 100; i++) {
      const [, n] = (await raw.pubsub('NUMSUB', `${prefix}breaker-opens`)) as [string, number];
      if (n >= 2) break;
      await sleep(20);
    }
    expect((await chat(other)).headers['x-router-trail']).toBe('bad/m=http_500');
    await until(
      'the open to reach the early replica',
      () => early.gateway.shared.breakers.get('bad/m').state === 'open',
    );

    // A stalled Redis (no answer for 2 s) does not hold the shutdown. CLIENT PAUSE rather than DEBUG SLEEP: a
    // stock redis-server (7+) refuses DEBUG unless started with --enable-debug-command, and the refusal went unseen.
    await raw.call('CLIENT', 'PAUSE', '2000', 'ALL');
    const t0 = performance.now();
    await early.close();
    expect(performance.now() - t0).toBeLessThan(1_000);
    // Let the pause end before the next test: a command sent during it is answered once it ends.
    await until('Redis to wake', async () => (await raw.ping()) === 'PONG', 6_000);
  });

  it('an open made while Redis was away is shared once it is back; a shorter open never shortens a longer one', async () => {
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const one = await replica(providers, routes, prefix);
    await until('connected', () => one.gateway.shared.redis!.connected);
    await redis.stop();
    try {
      expect((await chat(one)).headers['x-router-provider']).toBe('good'); // bad/m opens, Redis away
      expect(one.gateway.shared.breakers.get('bad/m').state).toBe('open');
    } finally {
      await redis.start();
    }
    await until('reconnected', () => one.gateway.shared.redis!.connected, 8_000);
    const raw = track(redisClient(redis.url));
    for (let i = 0; i < 100 && (await raw.pttl(`${prefix}breaker:bad/m`)) <= 0; i++) await sleep(20);
    expect(await raw.pttl(`${prefix}breaker:bad/m`)).toBeGreaterThan(25_000);
    one.gateway.shared.redis!.publishOpen('bad/m', 1_000, 'errors');
    await sleep(100);
    expect(await raw.pttl(`${prefix}breaker:bad/m`)).toBeGreaterThan(25_000);
    const late = await replica(providers, routes, prefix);
    await until(
      'the late replica to adopt it',
      () => late.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    expect(late.gateway.shared.breakers.get('bad/m').msUntilHalfOpen()).toBeGreaterThan(25_000);
    expect(bad.requests).toHaveLength(1);
  });

  it('serves on its own state when Redis cannot be reached, and never logs its password', async () => {
    const { providers, routes } = await badThenGood(track);
    const nothing = await freePort();
    const url = `redis://:s3cret-pw@127.0.0.1:${nothing}`;
    const gw = await startReplica(
      track,
      redisConfig(providers, routes, OPEN_ON_FIRST_FAILURE, redisState(url)),
      { connected: false },
    );
    const r = await chat(gw);
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('good');
    expect(gw.gateway.shared.breakers.get('bad/m').state).toBe('open'); // its own breaker works
    await until('the warning', () => gw.logs.some((l) => String(l.msg).includes('Redis unreachable')));
    await sleep(300); // retries meanwhile: still one warning
    expect(gw.logs.filter((l) => String(l.msg).includes('Redis unreachable'))).toHaveLength(1);
    expect((await chat(gw)).status).toBe(200);
    expect(gw.rawLogs()).not.toContain('s3cret-pw');
  });

  it('replicas subscribed before an outage subscribe again once Redis is back, and hear opens', async () => {
    // The gateway subscribes on each connection itself (ioredis's own resubscribe sent SUBSCRIBE with no
    // handler on its answer: a connection lost before it came rejected unhandled, which ends a process).
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const [one, two] = await Promise.all([
      replica(providers, routes, prefix),
      replica(providers, routes, prefix),
    ]);
    await subscribed(redis.url, `${prefix}breaker-opens`, 2);
    await redis.stop();
    await redis.start();
    await until(
      'both reconnected',
      () => one.gateway.shared.redis!.connected && two.gateway.shared.redis!.connected,
      8_000,
    );
    await subscribed(redis.url, `${prefix}breaker-opens`, 2, 8_000);
    expect((await chat(one)).headers['x-router-provider']).toBe('good');
    await until(
      'the open to reach replica two',
      () => two.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    expect((await chat(two)).headers['x-router-provider']).toBe('good');
    expect(bad.requests).toHaveLength(1);
  });

  it('keeps serving through a Redis outage and shares again once Redis is back', async () => {
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const providers = [simProvider('good', good.url, ['m'])];
    const routes = { r: { strategy: 'priority', targets: ['good/m'] } };
    const gw = await replica(providers, routes, prefix);
    await until('connected', () => gw.gateway.shared.redis!.connected);
    await redis.stop();
    try {
      for (let i = 0; i < 5; i++) expect((await chat(gw)).status).toBe(200);
      await until('the outage to be noticed', () => !gw.gateway.shared.redis!.connected);
      expect((await chat(gw)).status).toBe(200);
      const warned = gw.logs.filter((l) => String(l.msg).includes('Redis unreachable'));
      expect(warned).toHaveLength(1);
    } finally {
      await redis.start();
    }
    await until('reconnected', () => gw.gateway.shared.redis!.connected, 8_000);
    expect((await chat(gw)).status).toBe(200);
  });
});
