/**
 * Audit of the fleet's probe lease (state.backend redis): src/state/redis.ts takeProbeLease / endProbeLease /
 * publishClosed, src/state/shared-state.ts #askProbeLease / #renewWhileProbing / #stopRenewing, src/resilience/breaker.ts
 * probeGate / onProbe. Two or three real replicas share one redis-server; the tests hold that the fleet runs
 * one trial at a time and recovers a healed upstream. Everything on 127.0.0.1, every wait bounded; no
 * timing-precision assertions (the bounds are several open_ms wide).
 */
import { expect, it } from 'vitest';
import type { SimOptions, Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import type { TestGateway } from '../helpers/gateway.js';
import {
  badThenGood,
  chat,
  describeWithRedis,
  prefixes,
  redisClient,
  redisConfig,
  redisState,
  startReplica,
  type ConfigPart,
} from '../helpers/redis.js';
import { reload } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const nextPrefix = prefixes('audit-fleet-lease-');
const ID = 'bad/m';

interface Fleet {
  bad: Simulator;
  replicas: TestGateway[];
  cfg: ConfigPart;
  prefix: string;
}

const breakerOf = (gw: TestGateway) => gw.gateway.shared.breakers.get(ID);
const stateOf = (gw: TestGateway) => breakerOf(gw).snapshot().state;
const probesOf = (gw: TestGateway) => breakerOf(gw).snapshot().probesInFlight;

/** `n` replicas on one Redis prefix, route r = bad/m then good/m; bad answers as `badOpts` say (500 first). */
async function fleet(
  url: string,
  n: number,
  breaker: ConfigPart,
  badOpts: Partial<SimOptions> = {},
): Promise<Fleet> {
  const prefix = nextPrefix();
  const { bad, providers, routes } = await badThenGood(track, badOpts);
  const cfg = redisConfig(providers, routes, breaker, redisState(url, prefix));
  const replicas: TestGateway[] = [];
  for (let i = 0; i < n; i++) replicas.push(await startReplica(track, cfg, { connectedWithinMs: 5_000 }));
  return { bad, replicas, cfg, prefix };
}

/** Opens bad/m fleet-wide (one replica's failure, adopted by the others). */
async function tripFleet(f: Fleet): Promise<void> {
  expect((await chat(f.replicas[0]!)).provider).toBe('good');
  await until('every replica holds bad/m open', () => f.replicas.every((g) => stateOf(g) === 'open'), 3_000);
}

/** Steady traffic on each of `gws` (one request at a time each, every ~`everyMs`) until `stop()`. */
function traffic(gws: TestGateway[], everyMs = 30): { stop: () => Promise<void>; statuses: number[] } {
  let running = true;
  const statuses: number[] = [];
  const loops = gws.map(async (gw) => {
    while (running) {
      try {
        statuses.push((await chat(gw)).status);
      } catch {
        /* a replica the test closed */
      }
      await sleep(everyMs);
    }
  });
  return {
    statuses,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** Samples, every few ms, how many trials of bad/m run at once across `gws` (their probes in flight). */
function trialWatch(gws: () => TestGateway[]): { max: () => number; stop: () => void } {
  let max = 0;
  const timer = setInterval(() => {
    let sum = 0;
    for (const g of gws()) sum += probesOf(g);
    max = Math.max(max, sum);
  }, 3);
  return { max: () => max, stop: () => clearInterval(timer) };
}

/** Steady {@link traffic} on `gws` while `body` runs; then the traffic stops (and `watch`, when given). */
async function underTraffic(
  gws: TestGateway[],
  body: () => Promise<void>,
  watch?: { stop: () => void },
): Promise<void> {
  const load = traffic(gws);
  try {
    await body();
  } finally {
    await load.stop();
    watch?.stop();
  }
}

/** The first replica of `f` for which `pred` holds, polled until one does (at most `timeoutMs`). */
async function replicaWhere(
  f: Fleet,
  what: string,
  pred: (g: TestGateway) => boolean,
  timeoutMs: number,
): Promise<TestGateway> {
  let found: TestGateway | undefined;
  await until(what, () => (found = f.replicas.find(pred)) !== undefined, timeoutMs);
  return found!;
}

const allClosed = (gws: TestGateway[]) => gws.every((g) => stateOf(g) === 'closed');

describeWithRedis('the fleet probe lease', (redis) => {
  it('three replicas with steady traffic recover a healed upstream within a few open_ms, one trial at a time', async () => {
    const L = 800;
    const f = await fleet(redis.url, 3, {
      failure_threshold: 1,
      open_ms: L,
      success_threshold: 2,
    });
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 150 });
    const watch = trialWatch(() => f.replicas);
    await underTraffic(
      f.replicas,
      async () => {
        await until('every replica closed bad/m', () => allClosed(f.replicas), 6 * L + 3_000);
      },
      watch,
    );
    expect(watch.max(), 'the watch saw a trial').toBeGreaterThanOrEqual(1);
    expect(watch.max()).toBeLessThanOrEqual(1);
  }, 15_000);

  it('long trials (longer than the lease) under steady traffic on three replicas never overlap', async () => {
    const L = 600;
    const f = await fleet(redis.url, 3, {
      failure_threshold: 1,
      open_ms: L,
      success_threshold: 3,
    });
    await tripFleet(f);
    // Each trial outlives the lease: only renewal keeps the others from probing alongside.
    f.bad.set({ status: 200, latencyMs: 900 });
    const watch = trialWatch(() => f.replicas);
    await underTraffic(
      f.replicas,
      async () => {
        await until('every replica closed bad/m', () => allClosed(f.replicas), 12_000);
      },
      watch,
    );
    expect(watch.max(), 'the watch saw a trial').toBeGreaterThanOrEqual(1);
    expect(watch.max()).toBeLessThanOrEqual(1);
  }, 20_000);

  it('the lease holder closed mid-trial: another replica probes and the fleet recovers', async () => {
    const L = 700;
    const f = await fleet(redis.url, 3, { failure_threshold: 1, open_ms: L, success_threshold: 1 }, {});
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 3_000 });
    await underTraffic(f.replicas, async () => {
      const holder = await replicaWhere(f, 'a replica has a trial out', (g) => probesOf(g) > 0, L + 4_000);
      await holder.close();
      const rest = f.replicas.filter((g) => g !== holder);
      f.bad.set({ latencyMs: 0 });
      await until('the remaining replicas closed bad/m', () => allClosed(rest), 4 * L + 4_000);
    });
  }, 15_000);

  it('the lease holder closed while idle (no trial out): a replica with traffic probes and recovers', async () => {
    const L = 700;
    const f = await fleet(redis.url, 3, { failure_threshold: 1, open_ms: L, success_threshold: 1 });
    const raw = track(redisClient(redis.url));
    await tripFleet(f);
    f.bad.set({ status: 200 });
    // No traffic: the first replica to ask wins the lease and goes half-open, the others stay held.
    const holder = await replicaWhere(
      f,
      'one replica won the lease',
      (g) => stateOf(g) === 'half_open',
      L + 4_000,
    );
    expect(await raw.get(`${f.prefix}probe:${ID}`)).not.toBeNull();
    await holder.close();
    const rest = f.replicas.filter((g) => g !== holder);
    await underTraffic(rest, async () => {
      await until('the remaining replicas closed bad/m', () => allClosed(rest), 4 * L + 3_000);
    });
  }, 15_000);

  it('traffic only on a replica that lost the lease: it probes once the idle holder lets it lapse', async () => {
    const L = 700;
    const f = await fleet(redis.url, 2, { failure_threshold: 1, open_ms: L, success_threshold: 1 });
    await tripFleet(f);
    f.bad.set({ status: 200 });
    const holder = await replicaWhere(
      f,
      'one replica won the lease',
      (g) => stateOf(g) === 'half_open',
      L + 4_000,
    );
    const other = f.replicas.find((g) => g !== holder)!;
    expect(stateOf(other)).toBe('open');
    await underTraffic([other], async () => {
      await until('both replicas closed bad/m', () => allClosed(f.replicas), 4 * L + 3_000);
    });
    // The non-holder's probe closed it; the holder adopted the close.
    expect(f.bad.requests.length).toBeGreaterThan(0);
  }, 15_000);

  it('FLUSHDB while a replica holds the lease mid-trial: the fleet still recovers', async () => {
    const L = 700;
    const f = await fleet(redis.url, 3, { failure_threshold: 1, open_ms: L, success_threshold: 2 });
    const raw = track(redisClient(redis.url));
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 400 });
    await underTraffic(f.replicas, async () => {
      await until('a trial is out', () => f.replicas.some((g) => probesOf(g) > 0), L + 4_000);
      await raw.flushdb();
      await until('every replica closed bad/m', () => allClosed(f.replicas), 6 * L + 4_000);
    });
  }, 15_000);

  it('after a Redis restart while a replica holds the lease, once Redis is back one replica trials at a time', async () => {
    // While Redis is away a half-open replica trials without the lease; once Redis is back (empty, after the
    // restart) the lease holder must re-take the lease (shared-state.ts #renewWhileProbing keeps ticking
    // through the outage) rather than go on admitting trials ungated, while a replica held open meanwhile
    // asks the new Redis and may win it. The fleet must return to one trial at a time, not two for as long as
    // the episode lasts.
    const L = 700;
    const f = await fleet(redis.url, 2, {
      failure_threshold: 1,
      open_ms: L,
      // Trials never close the breaker: the test watches how many run at once.
      success_threshold: 10_000,
    });
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 300 });
    let stopped = false;
    let restarted = false;
    const load = traffic(f.replicas);
    try {
      await until('a trial is out', () => f.replicas.some((g) => probesOf(g) > 0), L + 4_000);
      stopped = true;
      await redis.stop();
      await until(
        'both replicas see Redis gone',
        () => f.replicas.every((g) => !g.gateway.shared.redis!.connected),
        5_000,
      );
      // Longer than a renewal tick and a lease: every timer that would act during the outage has fired.
      await sleep(2 * L);
      restarted = true;
      await redis.start();
      await until(
        'both replicas reconnected',
        () => f.replicas.every((g) => g.gateway.shared.redis!.connected),
        8_000,
      );
      // Give the fleet a few leases to settle under Redis again, then watch.
      await sleep(3 * L);
      const watch = trialWatch(() => f.replicas);
      await sleep(4 * L);
      watch.stop();
      const seen = f.replicas.map((g) => `${stateOf(g)}, gated: ${breakerOf(g).probeGate !== undefined}`);
      expect(
        watch.max(),
        `a trial ran once Redis was back (replicas: ${seen.join(' / ')})`,
      ).toBeGreaterThanOrEqual(1);
      expect(watch.max(), `trials at once (replicas: ${seen.join(' / ')})`).toBeLessThanOrEqual(1);
    } finally {
      await load.stop();
      if (stopped && !restarted) await redis.start();
    }
  }, 20_000);

  it('a reload on the lease holder during half-open (open_ms changed) keeps one trial at a time and the fleet recovers', async () => {
    const L = 700;
    const f = await fleet(redis.url, 3, { failure_threshold: 1, open_ms: L, success_threshold: 3 });
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 300 });
    const watch = trialWatch(() => f.replicas);
    await underTraffic(
      f.replicas,
      async () => {
        const holder = await replicaWhere(f, 'a replica has a trial out', (g) => probesOf(g) > 0, L + 4_000);
        const next = {
          ...f.cfg,
          circuit_breaker: { failure_threshold: 1, open_ms: 2 * L, success_threshold: 3 },
        };
        reload(holder, next);
        // And a reload on a replica held open, too.
        const other = f.replicas.find((g) => g !== holder)!;
        reload(other, next);
        await until('every replica closed bad/m', () => allClosed(f.replicas), 10_000);
      },
      watch,
    );
    expect(watch.max(), 'the watch saw a trial').toBeGreaterThanOrEqual(1);
    expect(watch.max()).toBeLessThanOrEqual(1);
  }, 20_000);

  it('a reload that drops bad/m on the holder and restores it does not keep the fleet from recovering', async () => {
    const L = 700;
    const f = await fleet(redis.url, 2, { failure_threshold: 1, open_ms: L, success_threshold: 1 });
    await tripFleet(f);
    f.bad.set({ status: 200, latencyMs: 0 });
    const holder = await replicaWhere(
      f,
      'one replica won the lease',
      (g) => stateOf(g) === 'half_open',
      L + 4_000,
    );
    const providers = (f.cfg.providers as ConfigPart[]).filter((p) => p.name !== 'bad');
    const without = {
      ...f.cfg,
      providers,
      routes: { r: { strategy: 'priority', targets: ['good/m'] } },
    };
    reload(holder, without);
    reload(holder, f.cfg);
    const other = f.replicas.find((g) => g !== holder)!;
    await underTraffic([other], async () => {
      await until('the other replica closed bad/m', () => stateOf(other) === 'closed', 4 * L + 3_000);
    });
  }, 15_000);
});
