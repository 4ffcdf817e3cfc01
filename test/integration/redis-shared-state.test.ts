/**
 * State shared through Redis (SPEC §7 Scale-out; README "Scale-out"): breaker opens published and adopted
 * (after a resubscribe, per database, backoff doubled fleet-wide, one prober per fleet, never published back),
 * a lost or stalled Redis (local fallback, nothing queued, no stale opens later), TLS for a `REDISS://` URL,
 * key prefixes and expiry, other replicas' statistics aged on Redis's clock, and a wrong password shown
 * nowhere. The Redis block runs replicas in this process on a real loopback redis-server and is skipped
 * without one; the last block needs no server (nothing listens where Redis should be).
 */
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { until } from '../helpers/wait.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startMock } from '../helpers/mock-upstream.js';
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
  startRedis,
  startReplica,
  subscribed,
  type ConfigPart,
} from '../helpers/redis.js';
import { sleep, statsView } from '../helpers/sim-gateways.js';

/** One failure of bad/m on `replica`, as a request admitted by its breaker would report it. */
function failOnce(replica: TestGateway): void {
  const breaker = replica.gateway.shared.breakers.get('bad/m');
  breaker.onFailure(breaker.acquire()!, 'error');
}

const track = closeAfterEach();

const nextPrefix = prefixes(`redis-shared-state-${process.pid}-`);

describeWithRedis('scale-out over Redis (SPEC §7)', (redis) => {
  /**
   * On the shared Redis (or `url`) under `prefix` (the default prefix when undefined); the first failure
   * opens for 30 s unless `breaker` says otherwise.
   */
  const config = (
    providers: ConfigPart[],
    routes: ConfigPart,
    prefix: string | undefined,
    breaker: ConfigPart = OPEN_ON_FIRST_FAILURE,
    url = redis.url,
  ): ConfigPart => redisConfig(providers, routes, breaker, redisState(url, prefix));

  const replica = (cfg: ConfigPart): Promise<TestGateway> => startReplica(track, cfg);

  it('an open published while only the subscriber connection was down reaches that replica once it resubscribes', async () => {
    // README Scale-out: "a replica that starts or reconnects adopts the opens still running, so a provider
    // that fails for one is skipped by all". A subscriber that reconnects on its own (the command connections
    // still up) re-reads the breaker keys, so an open published while it was down is not lost.
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const a = await replica(config(providers, routes, prefix));
    const b = await replica(config(providers, routes, prefix));
    await subscribed(redis.url, `${prefix}breaker-opens`, 2);
    const raw = track(redisClient(redis.url));
    // Drops the subscribers only (a pub/sub output-buffer limit, a proxy idle cut): the command
    // connections stay up. ioredis reconnects them ~100 ms later.
    // Both replicas' subscribers really dropped (else a kill of none would go unseen).
    expect(await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub')).toBeGreaterThanOrEqual(2);
    failOnce(a); // threshold 1: open, published
    expect(a.gateway.shared.breakers.get('bad/m').state).toBe('open');
    // It is in Redis all along: a replica that re-read the keys would find it.
    for (let i = 0; i < 50 && (await raw.pttl(`${prefix}breaker:bad/m`)) <= 0; i++) await sleep(20);
    expect(await raw.pttl(`${prefix}breaker:bad/m`)).toBeGreaterThan(25_000);
    await subscribed(redis.url, `${prefix}breaker-opens`, 2);
    await sleep(500);
    expect(b.gateway.shared.breakers.get('bad/m').state).toBe('open');
    expect((await chat(b)).provider).toBe('good');
    expect(bad.requests).toHaveLength(0);
  });

  it('a fleet on another Redis database does not adopt this fleet’s breaker opens', async () => {
    // README Scale-out: `url: "redis://…@redis:6379/0"` — the database is part of where a fleet's state
    // lives (its stats and round-robin keys are per database). Redis pub/sub ignores the database, so the
    // breaker channel names it (`breaker-opens:db<n>` past /0): a staging fleet on /1 does not open the
    // breakers of a production fleet on /2 with the same (default) prefix.
    const { providers, routes } = await badThenGood(track);
    const prod = await replica(config(providers, routes, undefined, undefined, `${redis.url}/2`));
    const staging = await replica(config(providers, routes, undefined, undefined, `${redis.url}/1`));
    // A second staging replica: the open must reach it, or "prod did not adopt" proves nothing.
    const staging2 = await replica(config(providers, routes, undefined, undefined, `${redis.url}/1`));
    await subscribed(redis.url, 'llm-router:breaker-opens:db2', 1);
    await subscribed(redis.url, 'llm-router:breaker-opens:db1', 2);
    failOnce(staging);
    expect(staging.gateway.shared.breakers.get('bad/m').state).toBe('open');
    await until(
      'staging2 adopts',
      () => staging2.gateway.shared.breakers.get('bad/m').state === 'open',
      2_000,
    );
    await sleep(400);
    expect(prod.gateway.shared.breakers.get('bad/m').state).toBe('closed');
  });

  it('a re-open after a failed probe doubles open_ms fleet-wide, whichever replica probes', async () => {
    // SPEC §2: "open … for open_ms, doubled on each re-open up to max_open_ms"; §7: breaker state is shared.
    // An adopted open carries the backoff: when another replica than the one that opened makes the failed
    // probe, it re-opens for twice open_ms and publishes that, so the fleet's backoff grows even while probes
    // land on different replicas (as a load balancer spreads them).
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 1_500, max_open_ms: 60_000 };
    const a = await replica(config(providers, routes, prefix, breaker));
    const b = await replica(config(providers, routes, prefix, breaker));
    await subscribed(redis.url, `${prefix}breaker-opens`, 2);
    expect((await chat(a)).provider).toBe('good'); // bad/m fails on A: open 1.5 s, shared
    await until('B adopts', () => b.gateway.shared.breakers.get('bad/m').state === 'open');
    // One replica takes the fleet's probe lease when the open ends (either may win it).
    const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;
    await until('the open ends', () => state(a) === 'half_open' || state(b) === 'half_open', 4_000);
    const prober = state(a) === 'half_open' ? a : b;
    expect((await chat(prober)).provider).toBe('good'); // its probe fails: the upstream re-opened
    expect(bad.requests).toHaveLength(2);
    await sleep(100);
    // Doubled: 3 s, on both.
    expect(b.gateway.shared.breakers.get('bad/m').msUntilHalfOpen()).toBeGreaterThan(2_200);
    expect(a.gateway.shared.breakers.get('bad/m').msUntilHalfOpen()).toBeGreaterThan(2_200);
  });

  it('when a shared open ends, one replica of the fleet probes (it takes the lease); its close reaches the others', async () => {
    // SPEC §2 half-open: "at most half_open_probes concurrent trial requests"; §7: "breaker state ... shared
    // through Redis". Were each replica to go half-open on its own when the shared open ends, three replicas
    // would send three trial requests to an upstream that had just failed, and each would close on its own.
    const prefix = nextPrefix();
    const { bad, providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 600, success_threshold: 1 };
    const replicas = [
      await replica(config(providers, routes, prefix, breaker)),
      await replica(config(providers, routes, prefix, breaker)),
      await replica(config(providers, routes, prefix, breaker)),
    ];
    await subscribed(redis.url, `${prefix}breaker-opens`, 3);
    const [a] = replicas as [TestGateway, TestGateway, TestGateway];
    expect((await chat(a)).provider).toBe('good'); // bad/m fails on A: open 600 ms, shared
    const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;
    await until('all adopt', () => replicas.every((gw) => state(gw) === 'open'));
    bad.set({ status: 200, latencyMs: 400 }); // recovered; a probe takes 400 ms
    await until('one probes', () => replicas.some((gw) => state(gw) === 'half_open'), 4_000);
    await sleep(100); // the others have asked for the lease and lost it
    expect(replicas.map(state).sort()).toEqual(['half_open', 'open', 'open']);
    const before = bad.requests.length;
    // A request to every replica at once: the prober's is the trial, the others go to good/m.
    const answers = await Promise.all(replicas.map((gw) => chat(gw)));
    expect(bad.requests.length - before).toBe(1);
    expect(answers.map((r) => r.provider).sort()).toEqual(['bad', 'good', 'good']);
    // Its success (success_threshold 1) closed it there, and the close is heard everywhere.
    await until('all closed', () => replicas.every((gw) => state(gw) === 'closed'), 2_000);
    expect((await Promise.all(replicas.map((gw) => chat(gw)))).map((r) => r.provider)).toEqual([
      'bad',
      'bad',
      'bad',
    ]);
  });

  it('a replica left holding an ended open probes on its own once Redis is gone', async () => {
    // SPEC §7: "If Redis is unreachable, each replica falls back to its local state".
    const prefix = nextPrefix();
    const { providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 400 };
    const local = await startRedis();
    try {
      const gw = await replica(config(providers, routes, prefix, breaker, local.url));
      expect((await chat(gw)).provider).toBe('good'); // opens for 400 ms
      await local.stop();
      await until(
        'half-open without Redis',
        () => gw.gateway.shared.breakers.get('bad/m').state === 'half_open',
      );
    } finally {
      await local.stop();
    }
  });

  it('a stalled Redis (commands timing out) is noticed: the outage is logged and status says not connected', async () => {
    // README Scale-out: "If Redis is unreachable or stalls (commands time out after 1 s), nothing queues:
    // each replica … logs the outage once … and reconnects in the background." A stall closes no connection
    // (ioredis' commandTimeout only rejects the command), yet it is an outage too: logged, and `connected`
    // false in /router/status.
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const gw = await replica(
      config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix),
    );
    const raw = track(redisClient(redis.url));
    await raw.call('CLIENT', 'PAUSE', '2500', 'ALL');
    const t0 = Date.now();
    let warned = false;
    let statusConnected: unknown;
    try {
      while (Date.now() - t0 < 2_100) {
        expect((await chat(gw)).status).toBe(200);
        warned ||= gw.logs.some((l) => String(l.msg).includes('Redis unreachable'));
        await sleep(50);
      }
      const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
        state: { connected: boolean };
      };
      statusConnected = status.state.connected;
    } finally {
      await sleep(Math.max(0, 2_700 - (Date.now() - t0))); // the pause ends
    }
    expect({ warned, statusConnected }).toEqual({ warned: true, statusConnected: false });
  });

  it('a stalled Redis queues no round-robin INCRs past the bound of unanswered turns', async () => {
    // README Scale-out: "If Redis is unreachable or stalls …, nothing queues"; redis.ts MAX_PENDING_TURNS
    // (64) "Round-robin INCRs a route may have unanswered". An INCR that times out still stays queued on the
    // connection and runs when Redis wakes, so it stays unanswered until then: however many turns a stall
    // lasts, at most 64 INCRs reach Redis after it.
    const prefix = nextPrefix();
    const sa = track(await startSimulator({ name: 'a' }));
    const sb = track(await startSimulator({ name: 'b' }));
    const gw = await replica(
      config(
        [simProvider('a', sa.url, ['m']), simProvider('b', sb.url, ['m'])],
        { r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } },
        prefix,
      ),
    );
    const raw = track(redisClient(redis.url));
    expect((await chat(gw)).status).toBe(200);
    await sleep(100);
    const before = Number(await raw.get(`${prefix}rr:r`));
    await raw.call('CLIENT', 'PAUSE', '2600', 'ALL');
    const t0 = Date.now();
    let turns = 0;
    try {
      while (Date.now() - t0 < 2_200) {
        const rs = await Promise.all(Array.from({ length: 8 }, () => chat(gw)));
        turns += rs.length;
        expect(rs.every((r) => r.status === 200)).toBe(true);
        await sleep(10);
      }
    } finally {
      await sleep(Math.max(0, 3_000 - (Date.now() - t0))); // the pause ends, queued commands run
    }
    await sleep(200);
    const after = Number(await raw.get(`${prefix}rr:r`));
    expect(turns).toBeGreaterThan(200);
    expect(after - before, `${turns} turns taken during the stall`).toBeLessThanOrEqual(64);
  });

  it('an open published while Redis stalls does not reach the others later with its full duration', async () => {
    // README Scale-out: "every other replica opens it until the same moment". The EVAL that publishes the
    // open times out but stays queued and runs when the stall ends: the others still open until A's open
    // ends, not for the open's full length from then on (a stall's length too long).
    const prefix = nextPrefix();
    const { providers, routes } = await badThenGood(track);
    const breaker = { failure_threshold: 1, open_ms: 1_500 };
    const a = await replica(config(providers, routes, prefix, breaker));
    const b = await replica(config(providers, routes, prefix, breaker));
    await subscribed(redis.url, `${prefix}breaker-opens`, 2);
    const raw = track(redisClient(redis.url));
    await raw.call('CLIENT', 'PAUSE', '2000', 'WRITE'); // EVAL and PUBLISH wait; reads go on
    const t0 = Date.now();
    failOnce(a); // open 1.5 s, until t0 + 1.5 s
    await sleep(2_600 - (Date.now() - t0));
    expect(a.gateway.shared.breakers.get('bad/m').state).toBe('half_open'); // A's open is over
    // B's open must have ended by now (A's ended 1.1 s ago); it ran until about t0 + 3.5 s. (B may be held
    // open still: A holds the fleet's probe lease and probes for both.)
    expect(b.gateway.shared.breakers.get('bad/m').snapshot().msUntilHalfOpen).toBe(0);
    await sleep(1_000);
  });

  it('a rediss:// URL written in capitals still uses TLS (the password is never sent in clear)', async () => {
    // SPEC §8 Secrets and the config's own contract ("expected a redis:// or rediss:// URL": the scheme is
    // matched without regard to case). ioredis itself turns on TLS only for a lower-case "rediss://", so
    // `REDISS://` must still mean TLS. The server here is a plain-text redis-server, which a TLS client never
    // reaches: staying unconnected is the proof that TLS was used.
    const good = track(await startSimulator({ name: 'good' }));
    const gw = await startReplica(
      track,
      config(
        [simProvider('good', good.url, ['m'])],
        { r: { targets: ['good/m'] } },
        nextPrefix(),
        undefined,
        `REDISS://127.0.0.1:${redis.port}`,
      ),
      { connected: false },
    );
    await sleep(800);
    expect(gw.gateway.shared.redis!.connected).toBe(false);
  });

  it('an adopted open is not published back, keeps the origin’s key, and opens the adopter at the origin’s level, undoubled', async () => {
    // SPEC §7 / README: an open is published by the replica that opened it; the others open "until the
    // same moment" (state/shared-state.ts #adopting keeps them from re-publishing, which would bounce it around).
    const prefix = nextPrefix();
    const { providers, routes } = await badThenGood(track);
    const a = await replica(config(providers, routes, prefix));
    const b = await replica(config(providers, routes, prefix));
    const c = await replica(config(providers, routes, prefix));
    await subscribed(redis.url, `${prefix}breaker-opens`, 3);
    const listener = track(redisClient(redis.url));
    const messages: string[] = [];
    listener.on('message', (_ch: string, m: string) => messages.push(m));
    await listener.subscribe(`${prefix}breaker-opens`);
    failOnce(a);
    await until(
      'all open',
      () =>
        b.gateway.shared.breakers.get('bad/m').state === 'open' &&
        c.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    await sleep(300);
    expect(messages).toHaveLength(1);
    const origin = a.gateway.shared.redis!.replicaId;
    expect(JSON.parse(messages[0]!)).toMatchObject({ id: 'bad/m', ms: 30_000, origin });
    const raw = track(redisClient(redis.url));
    expect(JSON.parse((await raw.get(`${prefix}breaker:bad/m`))!)).toMatchObject({ origin });
    for (const gw of [b, c]) {
      const s = gw.gateway.shared.breakers.get('bad/m').snapshot();
      expect(s.openMs).toBe(30_000); // no doubling earned by an adoption
      expect(s.msUntilHalfOpen).toBeGreaterThan(28_000);
      expect(s.msUntilHalfOpen).toBeLessThanOrEqual(30_000);
    }
  });

  it('every key carries the prefix and expires; counters are one per route and tier', async () => {
    // README: `key_prefix` (prefix `llm-router:`); SPEC §7 shares round-robin counters per route (and, for
    // tiered routes, per tier: plan.ts `route#tier`). Nothing written grows with traffic.
    const prefix = nextPrefix();
    const sims = await Promise.all(
      ['a', 'b', 'bad'].map(async (n) =>
        track(await startSimulator({ name: n, ...(n === 'bad' ? { status: 500 } : {}) })),
      ),
    );
    const providers = sims.map((s) => simProvider(s.options.name, s.url, ['m']));
    const routes = {
      r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] },
      t: {
        strategy: 'round-robin',
        tiers: { fast: ['a/m', 'b/m'], deep: ['b/m', 'a/m'] },
        default_tier: 'fast',
      },
      p: { strategy: 'priority', targets: ['bad/m', 'a/m'] },
    };
    const gw = await replica(config(providers, routes, prefix));
    const raw = track(redisClient(redis.url));
    const before = new Set(await raw.keys('*'));
    for (let i = 0; i < 30; i++) {
      expect((await chat(gw, ['r', 't', 'p'][i % 3])).status).toBe(200);
    }
    await sleep(300); // several exchanges of statistics
    const keys = (await raw.keys('*')).filter((k) => !before.has(k)).sort();
    expect(
      keys.every((k) => k.startsWith(prefix)),
      keys.join(','),
    ).toBe(true);
    const rr = keys.filter((k) => k.startsWith(`${prefix}rr:`) || k.startsWith(`${prefix}rr-tier:`));
    expect(rr.sort()).toEqual([`${prefix}rr-tier:fast:t`, `${prefix}rr:r`]);
    for (const k of keys) expect(await raw.pttl(k), k).toBeGreaterThan(0);
    // A counter no replica turns any more (a route a reload removed) goes within the hour.
    for (const k of rr) expect(await raw.pttl(k), k).toBeLessThanOrEqual(3_600_000);
    expect(keys).toContain(`${prefix}breaker:bad/m`);
  });

  it("another replica's statistics stop counting once they are more than 10 s old on the reader's clock", async () => {
    // README: "another replica's statistics dated more than 10 s either way are dropped" (a dead
    // replica's view is not kept).
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const gw = await replica(
      config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix),
    );
    const raw = track(redisClient(redis.url));
    const view = statsView();
    await raw.hset(`${prefix}stats:good/m`, { dying: JSON.stringify({ ...view, at: Date.now() - 9_300 }) });
    const stats = gw.gateway.shared.statsFor('good/m');
    await until('the view is read', () => stats.samples === 7);
    await until('the view is dropped', () => stats.samples === 0, 2_500);
    expect(await raw.hexists(`${prefix}stats:good/m`, 'dying')).toBe(0);
  });

  it("a replica whose own clock is a minute ahead still reads the others' statistics, and deletes none", async () => {
    // Measurements are dated and aged on Redis's clock (TIME): on the replica's own, a minute ahead, every
    // other replica's would look 60 s old, to be dropped from its view and HDEL'd from Redis for all.
    const prefix = nextPrefix();
    const good = track(await startSimulator({ name: 'good' }));
    const realNow = Date.now.bind(Date);
    const skew = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 60_000);
    try {
      const gw = await replica(
        config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix),
      );
      const raw = track(redisClient(redis.url));
      const view = statsView();
      const [sec, usec] = await raw.time();
      const redisNow = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
      await raw.hset(`${prefix}stats:good/m`, { other: JSON.stringify({ ...view, at: redisNow }) });
      const stats = gw.gateway.shared.statsFor('good/m');
      await until('the view is read', () => stats.samples === 7, 2_000);
      await sleep(200); // more exchanges
      expect(await raw.hexists(`${prefix}stats:good/m`, 'other')).toBe(1);
      // What it writes is dated on Redis's clock too, so the others keep it.
      expect((await chat(gw)).status).toBe(200);
      await until(
        'its own is written',
        async () => (await raw.hexists(`${prefix}stats:good/m`, gw.gateway.shared.redis!.replicaId)) === 1,
      );
      const own = JSON.parse(
        (await raw.hget(`${prefix}stats:good/m`, gw.gateway.shared.redis!.replicaId))!,
      ) as { at: number };
      expect(Math.abs(own.at - redisNow)).toBeLessThan(5_000);
    } finally {
      skew.mockRestore();
    }
  });

  it('a wrong Redis password shows nowhere: logs, /router/status, /metrics', async () => {
    // SPEC §8: no configured secret ("a password inside a base_url", and so the state URL's) appears in a
    // log line, /router/* or /metrics; README: the outage is logged "never the URL's password".
    const locked = await startRedis();
    try {
      const admin = redisClient(locked.url);
      await admin.config('SET', 'requirepass', 'the-right-one-42');
      admin.disconnect();
      const good = track(await startSimulator({ name: 'good' }));
      const gw = await startReplica(
        track,
        config(
          [simProvider('good', good.url, ['m'])],
          { r: { targets: ['good/m'] } },
          nextPrefix(),
          undefined,
          `redis://admin:w%40rong-pass-9871@127.0.0.1:${locked.port}/3`,
        ),
        { connected: false },
      );
      await until('the outage is logged', () =>
        gw.logs.some((l) => String(l.msg).includes('Redis unreachable')),
      );
      expect((await chat(gw)).status).toBe(200);
      const status = await (await request(`${gw.url}/router/status`)).body.text();
      const metrics = await (await request(`${gw.url}/metrics`)).body.text();
      for (const text of [gw.rawLogs(), status, metrics]) {
        expect(text).not.toContain('rong-pass-9871');
        expect(text).not.toContain('the-right-one-42');
      }
      expect(JSON.parse(status)).toMatchObject({ state: { backend: 'redis', connected: false } });
      await gw.close();
    } finally {
      await locked.stop();
    }
  });
});

describe('scale-out without Redis (SPEC §7)', () => {
  it('state.backend redis with nothing listening: requests are served, status says not connected', async () => {
    // SPEC §7: "If Redis is unreachable, each replica falls back to its local state and keeps serving; it never
    // fails a request because Redis is down." Needs no redis-server: the port has no listener.
    const port = await freePort();
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway(
        {
          providers: [
            { name: 'a', base_url: `${up.url}/v1`, models: [{ name: 'm' }] },
            { name: 'b', base_url: `${up.url}/v1`, models: [{ name: 'm' }] },
          ],
          routes: { r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } },
          state: { backend: 'redis', url: `redis://:hunter2-secret-99@127.0.0.1:${port}` },
        },
        { stateSyncMs: 50 },
      ),
    );
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await chat(gw, 'r');
      expect(r.status).toBe(200);
      served.push(String(r.headers['x-router-provider']));
    }
    expect(new Set(served)).toEqual(new Set(['a', 'b'])); // round-robin turns stay local, still rotating
    await sleep(200);
    const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      state: { backend: string; connected: boolean };
    };
    expect(status.state).toEqual({ backend: 'redis', connected: false });
    expect(gw.rawLogs()).not.toContain('hunter2-secret-99');
  });
});
