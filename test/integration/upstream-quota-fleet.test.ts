/**
 * Per-minute budgets (`rpm`, `tpm`) as a fleet and under load, through the real wire:
 * - with `state.backend: redis` every replica's traffic to a deployment counts against its limit, whichever
 *   replica sent it and whether or not that replica states the limit itself (the provider counts them all);
 * - a 429 the other replicas' use causes carries a Retry-After no sooner than when that use can have left
 *   the provider's 60 s window (a client that honours it is not refused again for the same reason);
 * - a replica never counts its own window twice, and fleets under different `key_prefix`es do not share one;
 * - a Redis that restarts empty gets the windows back from the replicas still holding them; while it is down
 *   each replica counts only its own; a stale, malformed or absurd window left in Redis is dropped, but a
 *   replica that stopped still counts until its requests leave the minute (as the provider counts them);
 * - concurrent streams through the OpenAI SDK are counted exactly as the provider saw them (requests) and
 *   settled to the usage they report (tokens); /router/explain takes nothing; /metrics agrees with
 *   /router/status and never shows NaN or Infinity;
 * - a stream the client abandons is settled to what it used, not left holding its max_tokens reservation.
 */
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { quotaUsed, upstreamAt } from '../helpers/resilience-harness.js';
import { dig, simProvider, startGateway } from '../helpers/gateway.js';
import { scrape, value } from '../helpers/prom-text.js';
import {
  chat,
  describeWithRedis,
  prefixes,
  redisClient,
  redisConfig,
  redisState,
  startReplica,
  type ConfigPart,
} from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

const nextPrefix = prefixes(`upstream-quota-fleet-${process.pid}-`);

describeWithRedis('per-minute budgets across a fleet', (redis) => {
  /** a/m (with `limits`) before b/m in route r, or a/m alone when `b` is undefined. */
  const fleet = (a: Simulator, b: Simulator | undefined, limits: Json, prefix: string): ConfigPart =>
    redisConfig(
      [
        simProvider('a', a.url, [{ name: 'm', ...limits }]),
        ...(b === undefined ? [] : [simProvider('b', b.url, ['m'])]),
      ],
      { r: { strategy: 'priority', targets: b === undefined ? ['a/m'] : ['a/m', 'b/m'] } },
      {},
      redisState(redis.url, prefix),
    );

  it('gives a Retry-After no sooner than the other replicas’ requests can leave the minute', async () => {
    const a = await sim('a');
    const prefix = nextPrefix();
    const one = await startReplica(track, fleet(a, undefined, { rpm: 3 }, prefix));
    const two = await startReplica(track, fleet(a, undefined, { rpm: 3 }, prefix));
    // Replica one sends the minute's three requests, all within a second or so.
    for (let i = 0; i < 3; i++) expect((await chat(one)).status).toBe(200);
    await until('the fleet count', async () => (await quotaUsed(two.url, 'a/m')).requests === 3, 3_000);
    const refused = await chat(two);
    expect(refused.status).toBe(429);
    expect(a.requests).toHaveLength(3);
    // The first of those requests leaves the provider's window about 60 s after it was sent: a client
    // told to come back sooner is refused again, for the same requests.
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(55);
  });

  it('counts what a replica without the limit sent against the limit another replica states', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const prefix = nextPrefix();
    // Mid-way through a rolling reload that adds rpm: 2: `old` has no limit yet, `limited` has it.
    const old = await startReplica(track, fleet(a, b, {}, prefix));
    const limited = await startReplica(track, fleet(a, b, { rpm: 2 }, prefix));
    for (let i = 0; i < 2; i++) expect((await chat(old)).provider).toBe('a');
    expect(a.requests).toHaveLength(2);
    // The provider has had its 2 requests of this minute: the limited replica should know within a few
    // exchanges (50 ms each here) and send its request elsewhere.
    await new Promise((r) => setTimeout(r, 600));
    expect((await quotaUsed(limited.url, 'a/m')).requests).toBe(2);
    expect((await chat(limited)).provider).toBe('b');
    expect(a.requests).toHaveLength(2);
  });

  it('never counts its own window twice, and keeps fleets under different key prefixes apart', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const shared = nextPrefix();
    const one = await startReplica(track, fleet(a, b, { rpm: 4 }, shared));
    const two = await startReplica(track, fleet(a, b, { rpm: 4 }, shared));
    const apart = await startReplica(track, fleet(a, b, { rpm: 4 }, nextPrefix()));
    for (let i = 0; i < 2; i++) expect((await chat(one)).provider).toBe('a');
    await until('the fleet count', async () => (await quotaUsed(two.url, 'a/m')).requests === 2, 3_000);
    // Many exchanges later: one's own two requests are still two, in its view and the other's.
    await new Promise((r) => setTimeout(r, 400));
    expect(await quotaUsed(one.url, 'a/m')).toMatchObject({ requests: 2 });
    expect(await quotaUsed(two.url, 'a/m')).toMatchObject({ requests: 2 });
    expect(await quotaUsed(apart.url, 'a/m')).toMatchObject({ requests: 0, tokens: 0 });
    // Two more fit the fleet's rpm, the fifth goes to b; the other fleet still has its whole minute.
    expect((await chat(two)).provider).toBe('a');
    expect((await chat(one)).provider).toBe('a');
    await until('the fleet count', async () => (await quotaUsed(two.url, 'a/m')).requests === 4, 3_000);
    expect((await chat(two)).provider).toBe('b');
    for (let i = 0; i < 4; i++) expect((await chat(apart)).provider).toBe('a');
  });

  it('shares the windows again after Redis restarts empty', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const prefix = nextPrefix();
    const one = await startReplica(track, fleet(a, b, { rpm: 3 }, prefix));
    const two = await startReplica(track, fleet(a, b, { rpm: 3 }, prefix));
    for (let i = 0; i < 3; i++) expect((await chat(one)).provider).toBe('a');
    await until('the fleet count', async () => (await quotaUsed(two.url, 'a/m')).requests === 3, 3_000);
    await redis.stop();
    try {
      await until('local only', async () => (await quotaUsed(two.url, 'a/m')).requests === 0, 3_000);
    } finally {
      await redis.start();
    }
    // The new server knows nothing; replica one still holds its minute and publishes it again.
    await until('reconnected', () => one.gateway.shared.redis!.connected, 5_000);
    await until('reconnected', () => two.gateway.shared.redis!.connected, 5_000);
    await until('the fleet count again', async () => (await quotaUsed(two.url, 'a/m')).requests === 3, 3_000);
    expect((await chat(two)).provider).toBe('b');
    expect(a.requests).toHaveLength(3);
  });
});

describe('per-minute budgets under concurrent traffic', () => {
  it('counts concurrent SDK streams as the provider saw them and settles each to its reported usage', async () => {
    const a = await sim('a', { completionTokens: 12, chunkDelayMs: 5 });
    const gw = track(
      await startGateway({
        server: { host: '127.0.0.1', port: 0 },
        providers: [simProvider('a', a.url, [{ name: 'm', rpm: 1000, tpm: 1_000_000 }])],
        routes: { main: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    // /router/explain plans without sending: it takes nothing from the window.
    const explained = await fetch(`${gw.url}/router/explain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(explained.status).toBe(200);
    expect(await quotaUsed(gw.url, 'a/m')).toEqual({ requests: 0, tokens: 0 });

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const one = async (i: number): Promise<number> => {
      const stream = await client.chat.completions.create({
        model: 'main',
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: 500,
        n: i % 3 === 0 ? 2 : 1,
        messages: [{ role: 'user', content: `question number ${i} ${'word '.repeat(i)}` }],
      });
      let total = -1;
      for await (const c of stream) if (c.usage) total = c.usage.total_tokens;
      return total;
    };
    const totals = await Promise.all(Array.from({ length: 12 }, (_, i) => one(i)));
    expect(totals.every((t) => t > 0)).toBe(true);
    const sum = totals.reduce((s, t) => s + t, 0);
    expect(a.requests).toHaveLength(12);
    // Every reservation of max_tokens × n is settled to what the provider reported.
    await until('settled', async () => (await quotaUsed(gw.url, 'a/m')).tokens === sum, 2_000);
    expect((await quotaUsed(gw.url, 'a/m')).requests).toBe(12);
    // /metrics says the same, and nothing on it is NaN or infinite.
    const samples = await scrape(gw.url);
    expect(samples.filter((s) => !Number.isFinite(s.value))).toEqual([]);
    const labels = { provider: 'a', model: 'm' };
    expect(value(samples, 'llm_router_quota_used', { ...labels, kind: 'requests' })).toBe(12);
    expect(value(samples, 'llm_router_quota_used', { ...labels, kind: 'tokens' })).toBe(sum);
    expect(value(samples, 'llm_router_quota_limit', { ...labels, kind: 'tokens' })).toBe(1_000_000);
  });

  it('counts every choice of an n > 1 stream that asked for no usage', async () => {
    const a = await sim('a', { completionTokens: 12 });
    const gw = track(
      await startGateway({
        server: { host: '127.0.0.1', port: 0 },
        providers: [simProvider('a', a.url, [{ name: 'm', tpm: 1_000_000 }])],
        routes: { main: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const messages = [{ role: 'user' as const, content: 'one question for three answers' }];
    const json = await client.chat.completions.create({ model: 'main', n: 3, messages });
    const reported = json.usage!.total_tokens;
    expect((await quotaUsed(gw.url, 'a/m')).tokens).toBe(reported);
    const stream = await client.chat.completions.create({ model: 'main', n: 3, stream: true, messages });
    const seen = new Set<number>();
    for await (const c of stream) for (const ch of c.choices) seen.add(ch.index);
    expect(seen.size).toBe(3);
    // The provider counted three choices' output again (the prompt is the gateway's estimate: no usage came).
    const streamed = async (): Promise<number> => (await quotaUsed(gw.url, 'a/m')).tokens - reported;
    await until('settled', async () => (await streamed()) >= json.usage!.completion_tokens, 2_000);
    expect((await quotaUsed(gw.url, 'a/m')).requests).toBe(2);
    expect(await streamed()).toBeLessThan(reported * 2);
  });

  it('settles a stream the client abandons to what it used, freeing its max_tokens reservation', async () => {
    const a = await sim('a', { completionTokens: 400, chunkDelayMs: 15 });
    const b = await sim('b');
    const gw = track(
      await startGateway({
        server: { host: '127.0.0.1', port: 0 },
        providers: [simProvider('a', a.url, [{ name: 'm', tpm: 1000 }]), simProvider('b', b.url, ['m'])],
        routes: { main: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      }),
    );
    const ac = new AbortController();
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const stream = await client.chat.completions.create(
      {
        model: 'main',
        stream: true,
        max_tokens: 600,
        messages: [{ role: 'user', content: 'tell me a long story' }],
      },
      { signal: ac.signal },
    );
    let chunks = 0;
    try {
      for await (const c of stream) {
        if (c.choices[0]?.delta?.content) chunks++;
        if (chunks >= 3) ac.abort();
      }
    } catch {
      // the abort
    }
    expect(a.requests).toHaveLength(1);
    // The attempt ends with the client: its 600-token reservation becomes the prompt and the few relayed.
    await until('settled', async () => (await quotaUsed(gw.url, 'a/m')).tokens < 200, 3_000);
    expect((await quotaUsed(gw.url, 'a/m')).requests).toBe(1);
    // So a second request of the same size still fits a's minute (as the plan says, without sending it).
    const explained = await fetch(`${gw.url}/router/explain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', max_tokens: 600, messages: [{ role: 'user', content: 'hi' }] }),
    });
    const candidates = ((await explained.json()) as { candidates: Json[] }).candidates;
    expect(candidates.map((c) => c.upstream)).toEqual(['a/m', 'b/m']);
  });
});

describeWithRedis('per-minute budgets across replicas: the exchange', (redis) => {
  const fleetConfig = (a: Simulator, b: Simulator, prefix: string): ConfigPart =>
    redisConfig(
      [simProvider('a', a.url, [{ name: 'm', rpm: 3 }]), simProvider('b', b.url, ['m'])],
      { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      {},
      redisState(redis.url, prefix),
    );

  it('counts the fleet: what one replica sent leaves the others less room, and a Redis outage leaves each its own', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const prefix = nextPrefix();
    const one = await startReplica(track, fleetConfig(a, b, prefix));
    const two = await startReplica(track, fleetConfig(a, b, prefix));
    for (let i = 0; i < 3; i++) expect((await chat(one)).provider).toBe('a');
    // Within a few exchanges the other replica counts them against a's rpm and sends its request to b.
    await until(
      'the fleet count',
      async () => dig(await upstreamAt(two.url, 'a/m'), 'quota', 'requests_last_minute') === 3,
    );
    expect((await chat(two)).provider).toBe('b');
    expect(a.requests).toHaveLength(3);
    // Both see the fleet's window on /metrics too.
    const used = value(await scrape(two.url), 'llm_router_quota_used', {
      provider: 'a',
      model: 'm',
      kind: 'requests',
    });
    expect(used).toBe(3);
    // Redis gone: each replica counts only its own, and serves on.
    await redis.stop();
    try {
      await until(
        'local only',
        async () => dig(await upstreamAt(two.url, 'a/m'), 'quota', 'requests_last_minute') === 0,
      );
      expect((await chat(two)).provider).toBe('a');
      expect((await chat(one)).provider).toBe('b');
    } finally {
      await redis.start();
    }
  });

  it('ignores a hostile or stale window another replica left in Redis', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const prefix = nextPrefix();
    const raw = redisClient(redis.url);
    try {
      const now = Number((await raw.time())[0]) * 1000;
      await raw.hset(`${prefix}quota:a/m`, {
        huge: JSON.stringify({ requests: 1e300, tokens: 0, at: now }),
        negative: JSON.stringify({ requests: -50, tokens: 0, at: now }),
        stale: JSON.stringify({ requests: 100, tokens: 0, at: now - 3_600_000 }),
        text: 'not json',
      });
      const one = await startReplica(track, fleetConfig(a, b, prefix));
      await until('an exchange', async () => (await raw.hget(`${prefix}quota:a/m`, 'stale')) === null);
      expect(dig(await upstreamAt(one.url, 'a/m'), 'quota', 'requests_last_minute')).toBe(0);
      expect((await chat(one)).provider).toBe('a');
    } finally {
      await raw.close();
    }
  });

  it('still counts a replica that stopped until its requests leave the minute, as the provider does', async () => {
    const [a, b] = [await sim('a'), await sim('b')];
    const prefix = nextPrefix();
    const raw = redisClient(redis.url);
    try {
      const now = Number((await raw.time())[0]) * 1000;
      const key = `${prefix}quota:a/m`;
      await raw.hset(key, {
        // Stopped 30 s ago (a rolling restart) with 3 requests that then had 55 s left in the window: they
        // count for another ~25 s, past the 10 s after which a stopped replica's statistics are dropped.
        stopped: JSON.stringify({ requests: 3, tokens: 30, leaving: [[55_000, 3, 30]], at: now - 30_000 }),
        // Written 61 s ago: every bucket has left the window.
        gone: JSON.stringify({ requests: 3, tokens: 30, leaving: [[59_000, 3, 30]], at: now - 61_000 }),
      });
      const one = await startReplica(track, fleetConfig(a, b, prefix));
      await until('an exchange', async () => (await raw.hget(key, 'gone')) === null);
      const quota = dig(await upstreamAt(one.url, 'a/m'), 'quota') as Json;
      expect(quota.requests_last_minute).toBe(3);
      expect((await chat(one)).provider).toBe('b');
      expect(a.requests).toHaveLength(0);
      expect(await raw.hget(key, 'stopped')).not.toBeNull();
      // The window outlives the 30 s the statistics keys live, even if no replica writes to it again.
      expect(await raw.pttl(key)).toBeGreaterThan(60_000);
    } finally {
      await raw.close();
    }
  });
});
