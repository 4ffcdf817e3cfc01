import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { Redis } from 'ioredis';

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
