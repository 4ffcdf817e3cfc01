import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { cliWorkDir, startCli } from '../helpers/cli-harness.js';
import { simConfigYaml } from '../helpers/gateway.js';

const track = closeAfterEach();
const workDir = cliWorkDir('footprint');

/**
 * What the gateway process must not load (idle RSS, README "Performance"): undici's entry point (all of
 * fetch, WebSocket and caches, for a Pool), fastify's schema compilers (no route has a schema), and the
 * passthrough proxy, rate limiter and Redis client when none is configured.
 */
const NOT_LOADED = [
  '/node_modules/undici/index.js',
  '/node_modules/undici/lib/web/',
  '/node_modules/ajv/',
  '/node_modules/@fastify/ajv-compiler/',
  '/node_modules/@fastify/http-proxy/',
  '/node_modules/@fastify/reply-from/',
  '/node_modules/ws/',
  '/node_modules/@fastify/rate-limit/',
  '/node_modules/ioredis/',
];

describe('the gateway process', () => {
  it('serves JSON and streams without loading what it does not use', async () => {
    const sim = track(await startSimulator({ name: 'a' }));
    const config = join(workDir(), 'gateway.yaml');
    writeFileSync(config, simConfigYaml([sim], { strategy: 'hybrid' }));
    // A preload that lists, as the process exits, every CommonJS module it loaded (dependencies are CJS).
    const probe = join(workDir(), 'probe.mjs');
    writeFileSync(
      probe,
      [
        "import { createRequire } from 'node:module';",
        "import { writeSync } from 'node:fs';",
        'const cache = createRequire(import.meta.url).cache;',
        "process.on('exit', () => writeSync(2, `\\nLOADED ${JSON.stringify(Object.keys(cache))}\\n`));",
      ].join('\n'),
    );
    const cli = await startCli(config, [], {}, ['--import', probe]);
    track({ close: () => cli.kill() });
    for (const stream of [false, true]) {
      const res = await request(`${cli.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'main', stream, messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toContain('sim');
    }
    cli.proc.kill('SIGTERM');
    expect(await cli.exited).toBe(0);
    const line = cli
      .stderr()
      .split('\n')
      .find((l) => l.startsWith('LOADED '));
    expect(line, cli.stderr()).toBeDefined();
    const loaded = JSON.parse(line!.slice('LOADED '.length)) as string[];
    expect(loaded.some((f) => f.includes('/node_modules/fastify/'))).toBe(true); // the probe sees dependencies
    expect(loaded.some((f) => f.includes('/node_modules/undici/lib/dispatcher/pool.js'))).toBe(true);
    expect(loaded.filter((f) => NOT_LOADED.some((p) => f.includes(p)))).toEqual([]);
  });
});
