/**
 * Audit of SPEC §7 / README "Scale-out": replicas on one Redis share breakers, statistics and round-robin
 * turns; a Redis that is down, stalled or holding garbage never fails a request. Gaps left by
 * scale-out.test.ts and audit-config-cli.test.ts.
 */
import { request } from 'undici';
import { expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { until } from '../helpers/wait.js';
import { simProvider, type TestGateway } from '../helpers/gateway.js';
import {
  OPEN_ON_FIRST_FAILURE,
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

const track = closeAfterEach();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function getText(gw: TestGateway, path: string): Promise<string> {
  return (await request(`${gw.url}${path}`)).body.text();
}

const nextPrefix = prefixes(`audit-redis-${process.pid}-`);

describeWithRedis('scale-out over Redis (SPEC §7)', (redis) => {
  /** On the shared Redis under `prefix`; the first failure opens for 30 s unless `breaker` says otherwise. */
  const config = (
    providers: ConfigPart[],
    routes: ConfigPart,
    prefix: string,
    breaker: ConfigPart = OPEN_ON_FIRST_FAILURE,
  ): ConfigPart => redisConfig(providers, routes, breaker, redisState(redis.url, prefix));

  const replica = (cfg: ConfigPart): Promise<TestGateway> => startReplica(track, cfg);

  /** No NaN / Infinity anywhere a scraper or dashboard reads. */
  async function expectNoNaN(gw: TestGateway): Promise<void> {
    const status = await getText(gw, '/router/status');
    expect(status).not.toMatch(/NaN|Infinity/);
    const metrics = await getText(gw, '/metrics');
    const bad = metrics.split('\n').filter((l) => l.startsWith('llm_router_') && / (NaN|[+-]Inf)$/.test(l));
    expect(bad).toEqual([]);
  }

  it('a real upstream 429 with Retry-After on one replica makes the other skip that upstream for about as long', async () => {
    const prefix = nextPrefix();
    const limited = track(await startSimulator({ name: 'limited', status: 429, retryAfterS: 40 }));
    const good = track(await startSimulator({ name: 'good' }));
    const cfg = config(
      [simProvider('limited', limited.url, ['m']), simProvider('good', good.url, ['m'])],
      { r: { strategy: 'priority', targets: ['limited/m', 'good/m'] } },
      prefix,
      { failure_threshold: 5, open_ms: 1_000 },
    );
    const a = await replica(cfg);
    const b = await replica(cfg);
    const first = await chat(a);
    expect(first.status).toBe(200);
    expect(first.provider).toBe('good');
    await until(
      'the rate-limit open to reach B',
      () => b.gateway.shared.breakers.get('limited/m').state === 'open',
    );
    const snap = b.gateway.shared.breakers.get('limited/m').snapshot();
    expect(snap.tripCause).toBe('rate_limit');
    expect(snap.msUntilHalfOpen).toBeGreaterThan(30_000);
    expect(snap.msUntilHalfOpen).toBeLessThanOrEqual(41_000);
    for (let i = 0; i < 3; i++) expect((await chat(b)).provider).toBe('good');
    expect(limited.requests).toHaveLength(1);
  });

  it("success rate measured on one replica reaches the other's /router/status, and stays finite", async () => {
    const prefix = nextPrefix();
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const cfg = config([simProvider('bad', bad.url, ['m'])], { r: { targets: ['bad/m'] } }, prefix, {
      failure_threshold: 1_000,
      open_ms: 1_000,
    });
    const a = await replica(cfg);
    const b = await replica(cfg);
    for (let i = 0; i < 6; i++) expect((await chat(a)).status).toBe(502);
    await until('B to blend in the failures', () => b.gateway.shared.statsFor('bad/m').successRate < 0.5);
    const status = JSON.parse(await getText(b, '/router/status')) as {
      upstreams: { id: string; stats: { successRate: number } }[];
    };
    const up = status.upstreams.find((u) => u.id === 'bad/m')!;
    expect(up.stats.successRate).toBeLessThan(0.5);
    expect(bad.requests).toHaveLength(6); // B itself sent nothing
    await expectNoNaN(b);
  });

  it('key_prefix isolates statistics and round-robin counters, not only breakers', async () => {
    const slow = track(await startSimulator({ name: 'slow', latencyMs: 150 }));
    const fast = track(await startSimulator({ name: 'fast', latencyMs: 1 }));
    const providers = [simProvider('slow', slow.url, ['m']), simProvider('fast', fast.url, ['m'])];
    const routes = { r: { strategy: 'round-robin', targets: ['slow/m', 'fast/m'] } };
    const [prefixA, prefixB] = [nextPrefix(), nextPrefix()];
    const [a, b] = await Promise.all([
      replica(config(providers, routes, prefixA)),
      replica(config(providers, routes, prefixB)),
    ]);
    for (let i = 0; i < 4; i++) expect((await chat(a)).status).toBe(200);
    await sleep(300); // several exchanges
    expect(a.gateway.shared.statsFor('slow/m').samples).toBeGreaterThanOrEqual(2);
    expect(b.gateway.shared.statsFor('slow/m').samples).toBe(0);
    expect(b.gateway.shared.statsFor('fast/m').samples).toBe(0);
    const raw = track(redisClient(redis.url));
    // One counter per prefix that took turns; the other prefix's never touched.
    expect(Number(await raw.get(`${prefixA}rr:r`))).toBeGreaterThanOrEqual(4);
    expect(await raw.keys(`${prefixB}rr:*`)).toEqual([]);
  });

  it('round-robin over three upstreams stays even when two replicas serve concurrent bursts', async () => {
    const prefix = nextPrefix();
    const sims = await Promise.all(
      ['a', 'b', 'c'].map(async (n) => track(await startSimulator({ name: n }))),
    );
    const providers = sims.map((sm, i) => simProvider(['a', 'b', 'c'][i]!, sm.url, ['m']));
    const routes = { r: { strategy: 'round-robin', targets: ['a/m', 'b/m', 'c/m'] } };
    const [one, two] = await Promise.all([
      replica(config(providers, routes, prefix)),
      replica(config(providers, routes, prefix)),
    ]);
    const counts = new Map<string, number>();
    for (let round = 0; round < 10; round++) {
      const rs = await Promise.all([chat(one), chat(two), chat(one), chat(two), chat(one), chat(two)]);
      for (const r of rs) {
        expect(r.status).toBe(200);
        counts.set(r.provider, (counts.get(r.provider) ?? 0) + 1);
      }
      await sleep(20);
    }
    // 60 turns over 3 upstreams: 20 each if perfectly shared; allow wide slack.
    for (const n of ['a', 'b', 'c'])
      expect(counts.get(n) ?? 0, JSON.stringify([...counts])).toBeGreaterThanOrEqual(12);
    const raw = track(redisClient(redis.url));
    expect(Number(await raw.get(`${prefix}rr:r`))).toBeGreaterThanOrEqual(50);
  });

  it('our keys holding garbage or the wrong types (another app wrote them) crash nothing and leak no NaN', async () => {
    const prefix = nextPrefix();
    const a1 = track(await startSimulator({ name: 'a' }));
    const b1 = track(await startSimulator({ name: 'b' }));
    const raw = track(redisClient(redis.url));
    await raw.set(`${prefix}rr:r`, 'not-a-number');
    await raw.set(`${prefix}rr:neg`, '-7');
    await raw.set(`${prefix}stats:a/m`, 'a string, not a hash');
    await raw.hset(`${prefix}breaker:b/m`, { x: '1' }); // a hash where a string goes
    await raw.pexpire(`${prefix}breaker:b/m`, 60_000);
    // Not an open: an unknown cause, and text that is not JSON (the key's TTL alone must not open a/m).
    await raw.set(`${prefix}breaker:a/m`, '{"id":"a/m","cause":"boom","origin":"x"}', 'PX', 60_000);
    await raw.set(`${prefix}breaker:x/m`, 'garbage', 'PX', 60_000);
    await raw.hset(`${prefix}stats:b/m`, {
      x: JSON.stringify({ samples: 'NaN', ttftMs: -1, at: Date.now() }),
      y: '[1,2,3]',
      z: 'null',
    });
    const providers = [simProvider('a', a1.url, ['m']), simProvider('b', b1.url, ['m'])];
    const routes = {
      r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] },
      neg: { strategy: 'round-robin', targets: ['a/m', 'b/m'] },
      lat: { strategy: 'latency', targets: ['a/m', 'b/m'] },
    };
    const gw = await replica(config(providers, routes, prefix));
    await subscribed(redis.url, `${prefix}breaker-opens`, 1);
    for (const bad of [
      'not json',
      '{"id":"a/m","ms":-5,"cause":"errors","origin":"x"}',
      '{"id":"a/m","ms":1000,"cause":"boom","origin":"x"}',
      '{"id":["a/m"],"ms":1000,"cause":"errors","origin":"x"}',
      '{"id":"a/m","ms":"1000","cause":"errors","origin":"x"}',
      '[]',
      'null',
    ])
      expect(await raw.publish(`${prefix}breaker-opens`, bad), 'the replica listens').toBeGreaterThanOrEqual(
        1,
      );
    await sleep(200);
    const seen: string[] = [];
    for (const model of ['r', 'r', 'neg', 'neg', 'neg', 'lat', 'lat']) {
      const res = await chat(gw, model);
      expect(res.status, res.text).toBe(200);
      seen.push(`${model}:${res.provider}`);
      await sleep(20);
    }
    expect(gw.gateway.shared.breakers.get('a/m').state).toBe('closed');
    expect(gw.gateway.shared.breakers.get('b/m').state).toBe('closed');
    // The negative counter still rotates over both upstreams.
    const neg = seen.filter((s) => s.startsWith('neg:'));
    expect(new Set(neg).size, seen.join(',')).toBe(2);
    await expectNoNaN(gw);
  });

  it('stale state of a previous deployment (upstreams that no longer exist) is ignored, not adopted or listed', async () => {
    const prefix = nextPrefix();
    const raw = track(redisClient(redis.url));
    const open = (id: string) => JSON.stringify({ id, ms: 60_000, cause: 'errors', origin: 'old-replica' });
    await raw.set(`${prefix}breaker:ghost/m`, open('ghost/m'), 'PX', 60_000);
    await raw.set(`${prefix}breaker:good/old-model`, open('good/old-model'), 'PX', 60_000);
    const view = {
      samples: 50,
      ttftMs: 5,
      latencyMs: 5,
      tpsSamples: 0,
      tokensPerSec: 0,
      outSamples: 0,
      meanOutputTokens: 0,
      okWeight: 50,
      failWeight: 0,
      lastSampleAgeMs: 0,
    };
    await raw.hset(`${prefix}stats:ghost/m`, { old: JSON.stringify({ ...view, at: Date.now() }) });
    const good = track(await startSimulator({ name: 'good' }));
    const gw = await replica(
      config([simProvider('good', good.url, ['m'])], { r: { targets: ['good/m'] } }, prefix),
    );
    await subscribed(redis.url, `${prefix}breaker-opens`, 1);
    // A deleted upstream's open published now (e.g. by a replica still on the old config).
    expect(await raw.publish(`${prefix}breaker-opens`, open('ghost/m'))).toBe(1);
    for (let i = 0; i < 200; i++) await raw.publish(`${prefix}breaker-opens`, open(`junk-${i}/m`));
    await sleep(200);
    expect((await chat(gw)).status).toBe(200);
    const status = JSON.parse(await getText(gw, '/router/status')) as { upstreams: { id: string }[] };
    expect(status.upstreams.map((u) => u.id)).toEqual(['good/m']);
    expect(gw.gateway.shared.breakers.get('good/m').state).toBe('closed');
    // Hostile/stale ids create no breakers (memory stays bounded).
    const ids = [...gw.gateway.shared.breakers.entries()].map(([id]) => id);
    expect(ids.filter((id) => id.startsWith('junk-') || id.startsWith('ghost'))).toEqual([]);
    const metrics = await getText(gw, '/metrics');
    expect(metrics).not.toContain('ghost');
    expect(metrics).not.toContain('junk-');
  });

  it('a replica that reloads its config keeps sharing: opens reach it and leave it, a removed upstream is not adopted', async () => {
    const prefix = nextPrefix();
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const bad2 = track(await startSimulator({ name: 'bad2', status: 500 }));
    const good = track(await startSimulator({ name: 'good' }));
    const providers = [simProvider('bad', bad.url, ['m']), simProvider('good', good.url, ['m'])];
    const routes = { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } };
    const [a, b] = await Promise.all([
      replica(config(providers, routes, prefix)),
      replica(config(providers, routes, prefix)),
    ]);
    // B reloads: bad2 added in front.
    const reloaded = config(
      [simProvider('bad2', bad2.url, ['m']), ...providers],
      { r: { strategy: 'priority', targets: ['bad2/m', 'bad/m', 'good/m'] } },
      prefix,
    );
    b.gateway.reload(parseConfigText(JSON.stringify(reloaded), {}));
    await sleep(100);
    expect((await chat(a)).provider).toBe('good');
    await until(
      'A’s open to reach B after its reload',
      () => b.gateway.shared.breakers.get('bad/m').state === 'open',
    );
    // B's own open of the new upstream reaches A once A reloads to the same config.
    a.gateway.reload(parseConfigText(JSON.stringify(reloaded), {}));
    const rb = await chat(b);
    expect(rb.provider).toBe('good');
    expect(rb.headers['x-router-trail']).toBe('bad2/m=http_500');
    await until('B’s open to reach A', () => a.gateway.shared.breakers.get('bad2/m').state === 'open');
    expect(bad.requests).toHaveLength(1);
    expect(bad2.requests).toHaveLength(1);
  });

  it('a Redis that stalls mid-run (CLIENT PAUSE) adds no latency to requests and floods no log', async () => {
    const prefix = nextPrefix();
    const a1 = track(await startSimulator({ name: 'a' }));
    const b1 = track(await startSimulator({ name: 'b' }));
    const providers = [simProvider('a', a1.url, ['m']), simProvider('b', b1.url, ['m'])];
    const routes = { r: { strategy: 'round-robin', targets: ['a/m', 'b/m'] } };
    const gw = await replica(config(providers, routes, prefix));
    for (let i = 0; i < 4; i++) await chat(gw);
    const baseline = Math.max(...(await Promise.all([1, 2, 3].map(() => chat(gw)))).map((r) => r.ms));
    const logsBefore = gw.logs.length;
    const raw = track(redisClient(redis.url));
    const probe = track(redisClient(redis.url));
    await probe.ping();
    await raw.call('CLIENT', 'PAUSE', '2500', 'ALL');
    const t0 = Date.now();
    // Precondition: Redis really stalls (a command sent now waits for the pause to end).
    const stalled = probe.ping().then(() => Date.now() - t0);
    const results: Awaited<ReturnType<typeof chat>>[] = [];
    while (Date.now() - t0 < 2_200) {
      results.push(...(await Promise.all([0, 1, 2, 3].map(() => chat(gw)))));
      await sleep(30);
    }
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(await stalled, 'Redis stalled').toBeGreaterThanOrEqual(2_000);
    const worst = Math.max(...results.map((r) => r.ms));
    expect(worst, `baseline ${baseline.toFixed(0)} ms`).toBeLessThan(Math.max(500, baseline * 5));
    // Both upstreams still take turns while Redis is stalled.
    expect(new Set(results.map((r) => r.provider))).toEqual(new Set(['a', 'b']));
    await sleep(800); // the pause ends
    await until('connected again', () => gw.gateway.shared.redis!.connected, 5_000);
    const warnings = gw.logs.slice(logsBefore).filter((l) => Number(l.level) >= 40);
    expect(warnings.length, JSON.stringify(warnings.map((w) => w.msg))).toBeLessThanOrEqual(3);
  });

  it('Redis killed under load and brought back: no request fails, one warning, and replicas share opens again', async () => {
    const prefix = nextPrefix();
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const good = track(await startSimulator({ name: 'good' }));
    const providers = [simProvider('bad', bad.url, ['m']), simProvider('good', good.url, ['m'])];
    const routes = {
      r: { strategy: 'priority', targets: ['good/m'] },
      p: { strategy: 'priority', targets: ['bad/m', 'good/m'] },
    };
    const [a, b] = await Promise.all([
      replica(config(providers, routes, prefix)),
      replica(config(providers, routes, prefix)),
    ]);
    const logsBefore = a.logs.length;
    let stop = false;
    const statuses: number[] = [];
    const load = (async () => {
      while (!stop) {
        const rs = await Promise.all([chat(a), chat(b), chat(a)]);
        statuses.push(...rs.map((r) => r.status));
        await sleep(20);
      }
    })();
    try {
      await sleep(200);
      await redis.stop();
      await sleep(1_500);
    } finally {
      await redis.start();
    }
    await until(
      'both reconnected',
      () => a.gateway.shared.redis!.connected && b.gateway.shared.redis!.connected,
      6_000,
    );
    stop = true;
    await load;
    expect(statuses.length).toBeGreaterThan(10);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const warned = a.logs.slice(logsBefore).filter((l) => Number(l.level) >= 40);
    expect(warned.length, JSON.stringify(warned.map((w) => w.msg))).toBeLessThanOrEqual(2);
    // Subscriptions came back: an open on A reaches B (the restarted Redis lost everything).
    const raw = track(redisClient(redis.url));
    for (let i = 0; i < 100; i++) {
      const [, n] = (await raw.pubsub('NUMSUB', `${prefix}breaker-opens`)) as [string, number];
      if (n >= 2) break;
      await sleep(30);
    }
    expect((await chat(a, 'p')).provider).toBe('good');
    await until('the open to reach B', () => b.gateway.shared.breakers.get('bad/m').state === 'open');
    expect((await chat(b, 'p')).headers['x-router-attempts']).toBe('1');
    expect(bad.requests).toHaveLength(1);
  });
});
