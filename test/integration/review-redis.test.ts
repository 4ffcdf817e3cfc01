/**
 * White-box review of src/state/redis.ts and its users (runtime.ts, routing/plan.ts, routing/stats.ts,
 * gateway.ts, http/admin.ts) against SPEC §7 Scale-out and README "Scale-out". Tests that fail on the
 * current code name the defect; tests titled "guard:" pin behaviour that is right and easy to break.
 * Each runs replicas in this process on a real loopback redis-server and is skipped without one.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { until } from '../helpers/wait.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { REDIS_MISSING, REDIS_SERVER, redisClient, startRedis, type TestRedis } from '../helpers/redis.js';

const track = closeAfterEach();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function chat(gw: TestGateway, model = 'r') {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    provider: String(res.headers['x-router-provider']),
  };
}

let prefixes = 0;
const nextPrefix = (): string => `review-redis-${process.pid}-${++prefixes}:`;

const TITLE = 'review: scale-out over Redis (SPEC §7)';

describe.skipIf(REDIS_SERVER === undefined)(
  REDIS_SERVER ? TITLE : `${TITLE} — skipped: ${REDIS_MISSING}`,
  () => {
    let redis: TestRedis;
    beforeAll(async () => {
      redis = await startRedis();
    });
    afterAll(async () => {
      await redis?.stop();
    });

    function config(
      providers: Record<string, unknown>[],
      routes: Record<string, unknown>,
      prefix: string | undefined,
      breaker: Record<string, unknown> = { failure_threshold: 1, open_ms: 30_000 },
      url = redis.url,
    ): Record<string, unknown> {
      return {
        providers,
        routes,
        circuit_breaker: breaker,
        state: { backend: 'redis', url, ...(prefix === undefined ? {} : { key_prefix: prefix }) },
      };
    }

    async function replica(cfg: Record<string, unknown>): Promise<TestGateway> {
      const gw = track(await startGateway(cfg, { stateSyncMs: 50 }));
      await gw.gateway.ready();
      await until('connected', () => gw.gateway.shared.redis!.connected);
      return gw;
    }

    /** Waits until `n` replicas listen on the prefix's breaker channel (database 0's, unless `channel` says). */
    async function subscribed(prefix: string, n: number, channel = `${prefix}breaker-opens`): Promise<void> {
      const raw = track(redisClient(redis.url));
      for (let i = 0; i < 150; i++) {
        const [, subs] = (await raw.pubsub('NUMSUB', channel)) as [string, number];
        if (subs >= n) return;
        await sleep(20);
      }
      throw new Error(`fewer than ${n} subscribers on ${channel}`);
    }

    async function badAndGood(badOpts: Record<string, unknown> = {}) {
      const bad = track(await startSimulator({ name: 'bad', status: 500, ...badOpts }));
      const good = track(await startSimulator({ name: 'good' }));
      return {
        bad,
        good,
        providers: [simProvider('bad', bad.url, ['m']), simProvider('good', good.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
      };
    }

    // ---------------------------------------------------------------------------------------------
    // Defects
    // ---------------------------------------------------------------------------------------------

    it('an open published while only the subscriber connection was down reaches that replica once it resubscribes', async () => {
      // README Scale-out: "a replica that starts or reconnects adopts the opens still running, so a provider
      // that fails for one is skipped by all". The subscriber reconnects on its own (redis.ts #sub 'ready'
      // only subscribes); nothing re-reads the breaker keys then, so an open published in the gap is lost.
      const prefix = nextPrefix();
      const { bad, providers, routes } = await badAndGood();
      const a = await replica(config(providers, routes, prefix));
      const b = await replica(config(providers, routes, prefix));
      await subscribed(prefix, 2);
      const raw = track(redisClient(redis.url));
      // Drops the subscribers only (a pub/sub output-buffer limit, a proxy idle cut): the command
      // connections stay up. ioredis reconnects them ~100 ms later.
      await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
      a.gateway.shared.breakers.get('bad/m').onFailure('normal', 'error'); // threshold 1: open, published
      expect(a.gateway.shared.breakers.get('bad/m').state).toBe('open');
      // It is in Redis all along: a replica that re-read the keys would find it.
      for (let i = 0; i < 50 && (await raw.pttl(`${prefix}breaker:bad/m`)) <= 0; i++) await sleep(20);
      expect(await raw.pttl(`${prefix}breaker:bad/m`)).toBeGreaterThan(25_000);
      await subscribed(prefix, 2);
      await sleep(500);
      expect(b.gateway.shared.breakers.get('bad/m').state).toBe('open');
      expect((await chat(b)).provider).toBe('good');
      expect(bad.requests).toHaveLength(0);
    });

    it('a fleet on another Redis database does not adopt this fleet’s breaker opens', async () => {
      // README Scale-out: `url: "redis://…@redis:6379/0"` — the database is part of where a fleet's state
      // lives (its stats and round-robin keys are per database), but the breaker channel
      // (redis.ts:174 `${prefix}breaker-opens`) is not: Redis pub/sub ignores the database, so a staging
      // fleet on /1 opens the breakers of a production fleet on /2 with the same (default) prefix.
      const { providers, routes } = await badAndGood();
      const prod = await replica(config(providers, routes, undefined, undefined, `${redis.url}/2`));
      const staging = await replica(config(providers, routes, undefined, undefined, `${redis.url}/1`));
      await subscribed('llm-router:', 1, 'llm-router:breaker-opens:db2');
      await subscribed('llm-router:', 1, 'llm-router:breaker-opens:db1');
      staging.gateway.shared.breakers.get('bad/m').onFailure('normal', 'error');
      expect(staging.gateway.shared.breakers.get('bad/m').state).toBe('open');
      await sleep(400);
      expect(prod.gateway.shared.breakers.get('bad/m').state).toBe('closed');
    });

    it('a re-open after a failed probe doubles open_ms fleet-wide, whichever replica probes', async () => {
      // SPEC §2: "open … for open_ms, doubled on each re-open up to max_open_ms"; §7: breaker state is shared.
      // An adopted open (breaker.ts adoptOpen) does not carry the backoff, so when another replica than the
      // one that opened makes the failed probe, it re-opens for plain open_ms and publishes that: the fleet's
      // backoff never grows while probes land on different replicas (as a load balancer spreads them).
      const prefix = nextPrefix();
      const { bad, providers, routes } = await badAndGood();
      const breaker = { failure_threshold: 1, open_ms: 1_500, max_open_ms: 60_000 };
      const a = await replica(config(providers, routes, prefix, breaker));
      const b = await replica(config(providers, routes, prefix, breaker));
      await subscribed(prefix, 2);
      expect((await chat(a)).provider).toBe('good'); // bad/m fails on A: open 1.5 s, shared
      await until('B adopts', () => b.gateway.shared.breakers.get('bad/m').state === 'open');
      await until('the open ends', () => b.gateway.shared.breakers.get('bad/m').state === 'half_open');
      expect((await chat(b)).provider).toBe('good'); // B's probe fails: the upstream re-opened
      expect(bad.requests).toHaveLength(2);
      await sleep(100);
      // Doubled: 3 s. Got: 1.5 s on both.
      expect(b.gateway.shared.breakers.get('bad/m').msUntilHalfOpen()).toBeGreaterThan(2_200);
      expect(a.gateway.shared.breakers.get('bad/m').msUntilHalfOpen()).toBeGreaterThan(2_200);
    });

    it('a stalled Redis (commands timing out) is noticed: the outage is logged and status says not connected', async () => {
      // README Scale-out: "If Redis is unreachable or stalls (commands time out after 1 s), nothing queues:
      // each replica … logs the outage once … and reconnects in the background." A command timeout only
      // rejects that command (ioredis commandTimeout); redis.ts #down runs on 'error'/'close' only, so a
      // stall is never logged, `connected` (redis.ts:215, status 'ready') stays true and nothing reconnects.
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
      // (64) "Round-robin INCRs a route may have unanswered". takeTurn (redis.ts:245-247) counts a turn as
      // answered when its INCR times out, yet the INCR stays queued on the connection and runs when Redis
      // wakes: every commandTimeout another 64 pile up, without end while the stall lasts.
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
      // open (redis.ts:223) times out but stays queued; when the stall ends it runs with the open's full
      // length, so the others open from then on: the stall's length too long (the key is set so as well).
      const prefix = nextPrefix();
      const { providers, routes } = await badAndGood();
      const breaker = { failure_threshold: 1, open_ms: 1_500 };
      const a = await replica(config(providers, routes, prefix, breaker));
      const b = await replica(config(providers, routes, prefix, breaker));
      await subscribed(prefix, 2);
      const raw = track(redisClient(redis.url));
      await raw.call('CLIENT', 'PAUSE', '2000', 'WRITE'); // EVAL and PUBLISH wait; reads go on
      const t0 = Date.now();
      a.gateway.shared.breakers.get('bad/m').onFailure('normal', 'error'); // open 1.5 s, until t0 + 1.5 s
      await sleep(2_600 - (Date.now() - t0));
      expect(a.gateway.shared.breakers.get('bad/m').state).toBe('half_open'); // A's open is over
      // B must not be open now (A's open ended 1.1 s ago); it is, until about t0 + 3.5 s.
      expect(b.gateway.shared.breakers.get('bad/m').state).not.toBe('open');
      await sleep(1_000);
    });

    it('a rediss:// URL written in capitals still uses TLS (the password is never sent in clear)', async () => {
      // SPEC §8 Secrets and the config's own contract ("expected a redis:// or rediss:// URL": the scheme is
      // matched without regard to case). ioredis turns on TLS only for a URL starting with lower-case
      // "rediss://" (redis.ts:188 passes cfg.url as written), so `REDISS://` talks plain TCP — here to a
      // plain-text redis-server, which a TLS client could never reach.
      const good = track(await startSimulator({ name: 'good' }));
      const gw = track(
        await startGateway(
          config(
            [simProvider('good', good.url, ['m'])],
            { r: { targets: ['good/m'] } },
            nextPrefix(),
            undefined,
            `REDISS://127.0.0.1:${redis.port}`,
          ),
          { stateSyncMs: 50 },
        ),
      );
      await gw.gateway.ready();
      await sleep(800);
      expect(gw.gateway.shared.redis!.connected).toBe(false);
    });

    // ---------------------------------------------------------------------------------------------
    // Guards
    // ---------------------------------------------------------------------------------------------

    it('guard: an adopted open is not published back, keeps the origin’s key, and opens the adopter at the origin’s level, undoubled', async () => {
      // SPEC §7 / README: an open is published by the replica that opened it; the others open "until the
      // same moment" (runtime.ts #adopting keeps them from re-publishing, which would bounce it around).
      const prefix = nextPrefix();
      const { providers, routes } = await badAndGood();
      const a = await replica(config(providers, routes, prefix));
      const b = await replica(config(providers, routes, prefix));
      const c = await replica(config(providers, routes, prefix));
      await subscribed(prefix, 3);
      const listener = track(redisClient(redis.url));
      const messages: string[] = [];
      listener.on('message', (_ch: string, m: string) => messages.push(m));
      await listener.subscribe(`${prefix}breaker-opens`);
      a.gateway.shared.breakers.get('bad/m').onFailure('normal', 'error');
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

    it('guard: every key carries the prefix; breaker and statistics keys expire; counters are one per route and tier', async () => {
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
      for (const k of keys.filter((k) => !rr.includes(k))) expect(await raw.pttl(k), k).toBeGreaterThan(0);
      expect(keys).toContain(`${prefix}breaker:bad/m`);
    });

    it("guard: another replica's statistics stop counting once they are more than 10 s old on the reader's clock", async () => {
      // README: "another replica's statistics dated more than 10 s either way are dropped" (a dead
      // replica's view is not kept).
      const prefix = nextPrefix();
      const good = track(await startSimulator({ name: 'good' }));
      const gw = await replica(
        config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix),
      );
      const raw = track(redisClient(redis.url));
      const view = {
        samples: 7,
        ttftMs: 40,
        latencyMs: 40,
        tpsSamples: 0,
        tokensPerSec: 0,
        outSamples: 0,
        meanOutputTokens: 0,
        okWeight: 7,
        failWeight: 0,
        lastSampleAgeMs: 0,
      };
      await raw.hset(`${prefix}stats:good/m`, { dying: JSON.stringify({ ...view, at: Date.now() - 9_300 }) });
      const stats = gw.gateway.shared.statsFor('good/m');
      await until('the view is read', () => stats.samples === 7);
      await until('the view is dropped', () => stats.samples === 0, 2_500);
      expect(await raw.hexists(`${prefix}stats:good/m`, 'dying')).toBe(0);
    });

    it('guard: a wrong Redis password shows nowhere: logs, /router/status, /metrics', async () => {
      // SPEC §8: no configured secret ("a password inside a base_url", and so the state URL's) appears in a
      // log line, /router/* or /metrics; README: the outage is logged "never the URL's password".
      const locked = await startRedis();
      try {
        const admin = redisClient(locked.url);
        await admin.config('SET', 'requirepass', 'the-right-one-42');
        admin.disconnect();
        const good = track(await startSimulator({ name: 'good' }));
        const gw = track(
          await startGateway(
            config(
              [simProvider('good', good.url, ['m'])],
              { r: { targets: ['good/m'] } },
              nextPrefix(),
              undefined,
              `redis://admin:w%40rong-pass-9871@127.0.0.1:${locked.port}/3`,
            ),
            { stateSyncMs: 50 },
          ),
        );
        await gw.gateway.ready();
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
  },
);
