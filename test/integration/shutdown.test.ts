import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { ensureBuilt, startCli } from '../helpers/cli-harness.js';

const track = closeAfterEach();
let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ler-shutdown-'));
  await ensureBuilt();
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function start(graceMs: number, simOpts: Parameters<typeof startSimulator>[0]) {
  const sim = track(await startSimulator({ name: 'slow', ...simOpts }));
  const path = join(dir, `gateway-${graceMs}.yaml`);
  writeFileSync(
    path,
    [
      `server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: ${graceMs} }`,
      'providers:',
      `  - { name: slow, base_url: "${sim.url}/v1", models: [{ name: m }] }`,
      'routes:',
      '  main: { strategy: priority, targets: [slow/m] }',
    ].join('\n'),
  );
  const cli = await startCli(path);
  track({ close: () => cli.kill() });
  return { sim, cli };
}

/** One request on its own connection (the stream's connection is busy). */
async function fresh(url: string, path: string): Promise<number | string> {
  const agent = new Agent({ connections: 1 });
  try {
    const res = await request(`${url}${path}`, { dispatcher: agent, headersTimeout: 2_000 });
    await res.body.dump();
    return res.statusCode;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  } finally {
    await agent.close().catch(() => undefined);
  }
}

describe('SIGTERM drains', () => {
  it('a stream in flight completes, new requests are refused at once, and the process exits 0', async () => {
    // 15 chunks 100 ms apart: about 1.5 s of streaming, well inside a 5 s grace.
    const { cli } = await start(5_000, { chunkDelayMs: 100, completionTokens: 15 });
    expect(await fresh(cli.url, '/readyz')).toBe(200);
    const res = await request(`${cli.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.statusCode).toBe(200);
    const it = res.body[Symbol.asyncIterator]();
    let text = String((await it.next()).value ?? '');

    const t0 = performance.now();
    cli.proc.kill('SIGTERM');
    await cli.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'));
    // Not ready any more: a load balancer sees 503 or a refused (or, racing the close, reset) connection,
    // never a new request served.
    const refused = [503, 'ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET'];
    expect(refused).toContain(await fresh(cli.url, '/readyz'));
    expect(refused).toContain(await fresh(cli.url, '/v1/models'));

    for (;;) {
      const next = await it.next();
      if (next.done) break;
      text += String(next.value);
    }
    expect(text).toContain('data: [DONE]');
    expect(text).not.toContain('"error"');
    expect(await cli.exited).toBe(0);
    // It exits once the stream is done, not at the end of the grace period.
    expect(performance.now() - t0).toBeLessThan(4_500);
  });

  it('a request that outlives shutdown_grace_ms does not hold the process: it exits within the grace', async () => {
    const { cli, sim } = await start(800, { hang: true });
    const pending = request(`${cli.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
    }).then(
      async (r) => {
        await r.body.dump();
        return r.statusCode;
      },
      (err: { code?: string }) => err.code ?? 'error',
    );
    await sim.waitForRequests(1);
    const t0 = performance.now();
    cli.proc.kill('SIGTERM');
    const code = await cli.exited;
    const ms = performance.now() - t0;
    expect(code).toBe(0);
    expect(ms).toBeGreaterThanOrEqual(700);
    expect(ms).toBeLessThan(800 + 1_500);
    expect(await pending).toBeDefined(); // the client is released (an error or a status), never left hanging
  });
});

describe('/readyz (in process)', () => {
  it('is 503 when every upstream is open or the gateway is draining; /healthz stays 200', async () => {
    const sim = track(await startSimulator({ name: 'a', status: 500 }));
    const gw = await startGateway({
      providers: [{ name: 'a', base_url: `${sim.url}/v1`, models: [{ name: 'm' }] }],
      routes: { main: { targets: ['a/m'] } },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    try {
      const ready = async () => {
        const r = await request(`${gw.url}/readyz`);
        return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> };
      };
      expect(await ready()).toEqual({ status: 200, body: { status: 'ready', upstreams_available: 1 } });
      const r = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await r.body.dump();
      expect(await ready()).toEqual({
        status: 503,
        body: { status: 'no_available_upstream', upstreams_available: 0 },
      });
      gw.gateway.draining = true;
      expect((await ready()).body.status).toBe('draining');
      expect((await request(`${gw.url}/healthz`)).statusCode).toBe(200);
    } finally {
      await gw.close();
    }
  });
});
