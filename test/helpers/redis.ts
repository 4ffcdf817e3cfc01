import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { Redis } from 'ioredis';
import { request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe } from 'vitest';
import { startSimulator, type SimOptions } from '../../src/sim/index.js';
import type { Track } from './cleanup.js';
import { simProvider, startGateway, type TestGateway } from './gateway.js';
import { until } from './wait.js';

/**
 * A real redis-server on 127.0.0.1 (no persistence), for the scale-out tests. Those tests are skipped,
 * saying so, when redis-server is not installed: `apt-get install -y redis-server` (Debian/Ubuntu; .ci/run
 * installs it), `brew install redis` (macOS).
 */
export const REDIS_SERVER = ((): string | undefined => {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? 'redis-server' : undefined;
})();

export const REDIS_MISSING =
  'redis-server is not installed: the scale-out tests need it (apt-get install -y redis-server)';

export interface TestRedis {
  readonly port: number;
  readonly url: string;
  /** Stops the server (a Redis outage); `start()` brings it back on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
}

function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const sock = createConnection({ host: '127.0.0.1', port });
      sock.once('connect', () => {
        sock.destroy();
        resolve();
      });
      sock.once('error', () => {
        sock.destroy();
        if (Date.now() > deadline) reject(new Error(`redis-server did not listen on ${port}`));
        else setTimeout(attempt, 20);
      });
    };
    attempt();
  });
}

/** A loopback port free when asked (nothing listens on it after). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error('no TCP address');
  return addr.port;
}

export async function startRedis(): Promise<TestRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    child = spawn(
      REDIS_SERVER ?? 'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    await waitForPort(port, 5_000);
  };
  const stop = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  };
  await start();
  return { port, url: `redis://127.0.0.1:${port}`, stop, start };
}

/** A plain client on the test server, to read or plant what replicas share; `close()` disconnects. */
export function redisClient(url: string): Redis & { close(): Promise<void> } {
  const client = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1 });
  return Object.assign(client, {
    close: async () => {
      client.disconnect();
    },
  });
}

/**
 * A describe block with a redis-server of its own, started before its tests and stopped after them. Without
 * redis-server the whole block is skipped, and its name says how to get it. `body` gets the server as a
 * TestRedis whose fields read the running one: use them inside tests and hooks, not while declaring them.
 */
export function describeWithRedis(title: string, body: (redis: TestRedis) => void): void {
  describe.skipIf(REDIS_SERVER === undefined)(
    REDIS_SERVER ? title : `${title} — skipped: ${REDIS_MISSING}`,
    () => {
      let running: TestRedis | undefined;
      beforeAll(async () => {
        running = await startRedis();
      });
      afterAll(async () => {
        await running?.stop();
      });
      const server = (): TestRedis => {
        if (running === undefined)
          throw new Error('the test Redis is started in beforeAll: read it in a test');
        return running;
      };
      body({
        get port() {
          return server().port;
        },
        get url() {
          return server().url;
        },
        stop: () => server().stop(),
        start: () => server().start(),
      });
    },
  );
}

/** Key prefixes no other test of the file shares: `${stem}1:`, `${stem}2:`, … */
export function prefixes(stem: string): () => string {
  let n = 0;
  return () => `${stem}${++n}:`;
}

/** A part of a gateway config as the tests write it (plain data: startGateway writes it out as JSON). */
export type ConfigPart = Record<string, unknown>;

/** The `circuit_breaker` most scale-out tests use: one failure opens for 30 s. */
export const OPEN_ON_FIRST_FAILURE: ConfigPart = Object.freeze({ failure_threshold: 1, open_ms: 30_000 });

/** `state:` on Redis at `url`, under `key_prefix` `prefix` (the default prefix when there is none). */
export function redisState(url: string, prefix?: string): ConfigPart {
  return { backend: 'redis', url, ...(prefix === undefined ? {} : { key_prefix: prefix }) };
}

/** A replica's config: its providers and routes, its breaker settings and its `state` (see redisState). */
export function redisConfig(
  providers: ConfigPart[],
  routes: ConfigPart,
  breaker: ConfigPart,
  state: ConfigPart,
): ConfigPart {
  return { providers, routes, circuit_breaker: breaker, state };
}

/**
 * A replica: a gateway on `cfg` exchanging statistics every 50 ms, handed to `track`, its Redis client loaded
 * (`ready()`: it is loaded on demand) and, unless `connected` is false (Redis down or refusing it), connected
 * within `connectedWithinMs`.
 */
export async function startReplica(
  track: Track,
  cfg: ConfigPart,
  { connected = true, connectedWithinMs = 3_000 }: { connected?: boolean; connectedWithinMs?: number } = {},
): Promise<TestGateway> {
  const gw = track(await startGateway(cfg, { stateSyncMs: 50 }));
  await gw.gateway.ready();
  if (connected) await until('connected', () => gw.gateway.shared.redis!.connected, connectedWithinMs);
  return gw;
}

/** Waits until `n` clients listen on `channel` of the Redis at `url` (pub/sub channels span databases). */
export async function subscribed(url: string, channel: string, n: number, timeoutMs = 3_000): Promise<void> {
  const raw = redisClient(url);
  try {
    await until(
      `${n} subscribers on ${channel}`,
      async () => ((await raw.pubsub('NUMSUB', channel)) as [string, number])[1] >= n,
      timeoutMs,
    );
  } finally {
    await raw.close();
  }
}

/** `bad` answering 500 (or as `badOpts` say) and `good`, both serving m; route r tries bad/m first. */
export async function badThenGood(track: Track, badOpts: Partial<SimOptions> = {}) {
  const bad = track(await startSimulator({ name: 'bad', status: 500, ...badOpts }));
  const good = track(await startSimulator({ name: 'good' }));
  return {
    bad,
    good,
    providers: [simProvider('bad', bad.url, ['m']), simProvider('good', good.url, ['m'])],
    routes: { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
  };
}

/** A replica's answer to {@link chat}: `provider` is the x-router-provider header, `ms` the time it took. */
export interface ChatAnswer {
  readonly status: number;
  readonly headers: Dispatcher.ResponseData['headers'];
  readonly text: string;
  readonly provider: string;
  readonly ms: number;
}

/** POSTs a one-message chat request for `model` (and any `headers`) to a gateway, keyless. */
export async function chat(
  gw: Pick<TestGateway, 'url'>,
  model = 'r',
  headers: Record<string, string> = {},
): Promise<ChatAnswer> {
  const t0 = performance.now();
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    provider: String(res.headers['x-router-provider']),
    ms: performance.now() - t0,
  };
}
