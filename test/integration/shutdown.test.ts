import { spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simConfigYaml, startGateway } from '../helpers/gateway.js';
import { REPO_ROOT, cliWorkDir, startCli } from '../helpers/cli-harness.js';
import { cutRunning } from '../../src/http/chat.js';
import { chunkFrame, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const workDir = cliWorkDir('shutdown');

async function start(graceMs: number, simOpts: Parameters<typeof startSimulator>[0]) {
  const sim = track(await startSimulator({ name: 'slow', ...simOpts }));
  const path = join(workDir(), `gateway-${graceMs}.yaml`);
  writeFileSync(path, simConfigYaml([sim], { shutdownGraceMs: graceMs }));
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

  it('a connection that never sent a request does not hold the process for the grace period', async () => {
    const { cli } = await start(20_000, {});
    const { port } = new URL(cli.url);
    const silent = connect(Number(port), '127.0.0.1');
    await once(silent, 'connect');
    const closed = once(silent, 'close');
    expect(await fresh(cli.url, '/readyz')).toBe(200); // a keep-alive connection, idle once answered
    const t0 = performance.now();
    cli.proc.kill('SIGTERM');
    expect(await cli.exited).toBe(0);
    // Nothing was in flight: it exits at once, not after the 20 s grace (Node alone waited for the socket).
    expect(performance.now() - t0).toBeLessThan(10_000);
    await closed;
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
    // The client is released (an error or a status) with the process, never left hanging.
    const hung = Symbol('hung');
    const released = await Promise.race([pending, sleep(500).then(() => hung)]);
    expect(released).not.toBe(hung);
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

describe('logs to a file', () => {
  it('writes every request line by the time SIGTERM has drained the process (batched, flushed on exit)', async () => {
    const sim = track(await startSimulator({ name: 'a' }));
    const path = join(workDir(), 'file-log.yaml');
    writeFileSync(path, simConfigYaml([sim], { shutdownGraceMs: 500 }));
    const logPath = join(workDir(), 'gateway.log');
    const out = openSync(logPath, 'w');
    const proc = spawn(process.execPath, ['dist/main.js', '--config', path], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', out, 'ignore'],
    });
    closeSync(out);
    track({ close: () => proc.kill('SIGKILL') });
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    const lines = (): Record<string, unknown>[] =>
      readFileSync(logPath, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    // Batched lines reach the file within the 200 ms flush interval.
    const listening = await vi.waitFor(
      () => {
        const line = lines().find((l) => String(l.msg).startsWith('Server listening at'));
        expect(line).toBeDefined();
        return String(line!.msg).slice('Server listening at '.length);
      },
      { timeout: 10_000, interval: 50 },
    );
    for (let i = 0; i < 5; i++) {
      const r = await request(`${listening}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': `file-${i}` },
        body: JSON.stringify({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(r.statusCode).toBe(200);
      await r.body.dump();
    }
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    const ids = lines()
      .filter((l) => l.msg === 'request')
      .map((l) => l.reqId);
    expect(ids).toEqual(['file-0', 'file-1', 'file-2', 'file-3', 'file-4']);
  });
});

describe('streams still running when the grace is over (Gateway.cutStreams, in process)', () => {
  it('a begun stream ends with an error event and no [DONE], one not begun gets a 503; each has its line', async () => {
    let upstreamClosed = 0;
    const held: ServerResponse[] = [];
    const up = track(
      await startMock((req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.on('close', () => upstreamClosed++);
        held.push(res);
        // The first request's stream begins; the second's never sends content.
        if (req.body.messages && (req.body.messages as { content: string }[])[0]!.content === 'begin')
          res.write(chunkFrame(req.body.model, { content: 'partial' }));
      }),
    );
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const send = (content: string) =>
      request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'r', stream: true, messages: [{ role: 'user', content }] }),
      });
    const begun = await send('begin');
    let text = '';
    begun.body.setEncoding('utf8');
    begun.body.on('data', (d: string) => (text += d));
    const ended = new Promise((resolve) => begun.body.once('end', resolve));
    await vi.waitFor(() => expect(text).toContain('partial'));
    const waiting = send('wait');
    await vi.waitFor(() => expect(held).toHaveLength(2));

    expect(gw.gateway.cutStreams()).toBe(2);
    await ended;
    const rest = text;
    expect(rest).toMatch(
      /data: \{"error":\{"message":"the gateway is shutting down[^"]*","type":"server_error","param":null,"code":"gateway_shutdown"\}\}\n\n$/,
    );
    expect(rest).not.toContain('[DONE]');
    const refused = await waiting;
    expect(refused.statusCode).toBe(503);
    expect(await refused.body.json()).toMatchObject({ error: { code: 'gateway_shutdown' } });
    await vi.waitFor(() => expect(upstreamClosed).toBe(2));
    await vi.waitFor(() => {
      const lines = gw.logs.filter((l) => l.msg === 'request');
      expect(lines.map((l) => [l.status, l.error]).sort()).toEqual([
        [200, 'gateway_shutdown'],
        [503, 'gateway_shutdown'],
      ]);
    });
    expect(gw.gateway.liveStreams.size).toBe(0);
  });

  it('a JSON request, and a stream still waiting on the LLM router, get a 503 gateway_shutdown and their lines', async () => {
    const held: ServerResponse[] = [];
    const up = track(
      await startMock((_req, res) => {
        held.push(res); // never answers: the JSON request and the router call both wait
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          { name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] },
          { name: 'q', base_url: `${up.url}/v1`, models: [{ name: 'n' }] },
        ],
        routes: {
          r: { targets: ['p/m'] },
          auto: {
            tiers: { fast: ['p/m'], deep: ['q/n'] },
            default_tier: 'fast',
            router: { tier: 'fast', timeout_ms: 30_000 },
          },
        },
      }),
    );
    const sockets = new Set<Socket>();
    gw.app.server.on('connection', (socket: Socket) => sockets.add(socket));
    const send = (model: string, stream: boolean) =>
      request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model,
          stream,
          messages: [{ role: 'user', content: 'a question of some length' }],
        }),
      });
    const plain = send('r', false);
    const tiered = send('auto', true); // no rule matches: its router call waits on the mock
    await vi.waitFor(() => expect(held).toHaveLength(2));
    expect(cutRunning(gw.gateway, sockets)).toBe(2);
    for (const res of await Promise.all([plain, tiered])) {
      expect(res.statusCode).toBe(503);
      expect(await res.body.json()).toMatchObject({ error: { code: 'gateway_shutdown' } });
    }
    await vi.waitFor(() => {
      const lines = gw.logs.filter((l) => l.msg === 'request');
      expect(lines.map((l) => l.status)).toEqual([503, 503]);
    });
  });
});
