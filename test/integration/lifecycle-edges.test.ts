/**
 * The gateway's life, start to end (SPEC §3 reload, §6 CLI; README "Configuration", "Docker"):
 * - A reload keeps what a running gateway has learned about the upstreams that remain, and its rotations:
 *   a route's round-robin turn, and the turns of requests that ask for another strategy, go on where they were.
 * - A reload that points an upstream at another server (its base_url changed) does not carry over the old
 *   server's open breaker: the operator's fix applies at once; nor does one that gives it another api_key
 *   (its statistics, the same server's, are kept).
 * - A warning that a setting needs a restart compares the new file with what runs (the start's value):
 *   a change still pending is named at each reload, one set back to the running value is not.
 * - Pools: a storm of reloads that each replace a provider's pool leaves exactly the pools still in use open;
 *   the one a stream in flight runs on closes after the stream ends, not before, and not never.
 * - One edit followed by a SIGHUP (a deploy script does both) is one reload, not two.
 * - Shutdown: a Realtime WebSocket session open through the passthrough is closed with 1001 (going away),
 *   not dropped.
 * - Startup errors (the port taken, an empty LLM_ROUTER_CONFIG) are a one-line message naming what failed
 *   and a non-zero exit, never a stack trace; `--version` prints the version.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { cliWorkDir, REPO_ROOT, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { postChat, simConfigYaml, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chatCompletion, fail500, sendJson, startMock } from '../helpers/mock-upstream.js';
import { simFactories, sleep } from '../helpers/sim-gateways.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const { sim } = simFactories(track);
const workDir = cliWorkDir('lifecycle-edges');
type Json = Record<string, unknown>;

const HI = [{ role: 'user', content: 'hi' }];

function reload(gw: TestGateway, cfg: Json): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(cfg), {}));
}

async function providerOf(gw: TestGateway, body: Json, headers: Record<string, string> = {}) {
  const r = await postChat(gw, body, { headers });
  expect(r.status, r.text).toBe(200);
  return r.headers['x-router-provider'];
}

/** The undici pool a runtime's provider runs on (private in ProviderClient), and whether it is closed. */
function poolOf(gw: TestGateway, provider: string): { closed: boolean; destroyed: boolean } {
  const client = gw.gateway.runtime.providers.get(provider)!.client;
  return (client as unknown as { pool: { closed: boolean; destroyed: boolean } }).pool;
}

describe('rotations across a reload (an unchanged SIGHUP is a reload too)', () => {
  async function threeWay(strategy: string): Promise<{ gw: TestGateway; cfg: Json }> {
    const [a, b, c] = [await sim('a'), await sim('b'), await sim('c')];
    const cfg: Json = {
      providers: [
        simProvider('a', a.url, ['m']),
        simProvider('b', b.url, ['m']),
        simProvider('c', c.url, ['m']),
      ],
      routes: { main: { strategy, targets: ['a/m', 'b/m', 'c/m'] } },
    };
    return { gw: track(await startGateway(cfg)), cfg };
  }

  it("a round-robin route's turn goes on where it was", async () => {
    const { gw, cfg } = await threeWay('round-robin');
    const body = { model: 'main', messages: HI };
    const before = [await providerOf(gw, body), await providerOf(gw, body)];
    reload(gw, cfg);
    const after = await providerOf(gw, body);
    expect(new Set([...before, after]).size).toBe(3);
  });

  it('requests asking x-router-strategy: round-robin keep their own turn across the reload as well', async () => {
    const { gw, cfg } = await threeWay('priority');
    const body = { model: 'main', messages: HI };
    const rr = { 'x-router-strategy': 'round-robin' };
    const before = [await providerOf(gw, body, rr), await providerOf(gw, body, rr)];
    expect(new Set(before).size).toBe(2);
    reload(gw, cfg);
    const after = await providerOf(gw, body, rr);
    // Three turns over three upstreams: each once. A reload that starts the turn over sends the third
    // request back to the first upstream (and every SIGHUP skews the spread the same way).
    expect([...before, after].sort()).toEqual(['a', 'b', 'c']);
  });
});

describe('a reload that moves an upstream to another server', () => {
  it('does not keep the old server’s open breaker: the fixed base_url serves the next request', async () => {
    const broken = track(await startMock((_r, res) => fail500(res)));
    const healthy = await sim('healthy');
    const cfg = (url: string): Json => ({
      providers: [{ name: 'a', base_url: `${url}/v1`, models: [{ name: 'm' }] }],
      routes: { main: { strategy: 'priority', targets: ['a/m'] } },
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    const gw = track(await startGateway(cfg(broken.url)));
    const first = await postChat(gw, { model: 'main', messages: HI });
    expect(first.status).toBe(502);
    expect(gw.gateway.runtime.upstreams.get('a/m')!.breaker.state).toBe('open');
    // The operator points the provider at a working endpoint and reloads.
    reload(gw, cfg(healthy.url));
    const next = await postChat(gw, { model: 'main', messages: HI });
    // JUDGEMENT: an open breaker is a verdict on the server it was tripped by. Kept across a base_url
    // change, the fix waits out open_ms (here 60 s; up to max_open_ms after re-opens) with every
    // request refused 503, /readyz false, and the new server never tried.
    expect(next.status, next.text).toBe(200);
    expect(healthy.requests.length).toBe(1);
  });

  it('a new api_key closes the breaker its old key opened (401s), and keeps what was measured', async () => {
    const up = track(
      await startMock((r, res) => {
        if (r.headers.authorization !== 'Bearer sk-good-0123456789') {
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              error: { message: 'Incorrect API key provided', type: 'invalid_request_error' },
            }),
          );
        } else sendJson(res, 200, chatCompletion(r.body));
      }),
    );
    const cfg = (key: string, url = up.url): Json => ({
      providers: [{ name: 'a', base_url: `${url}/v1`, api_key: key, models: [{ name: 'm' }] }],
      routes: { main: { strategy: 'priority', targets: ['a/m'] } },
      routing: { max_attempts: 1 },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    const gw = track(await startGateway(cfg('sk-good-0123456789')));
    expect((await postChat(gw, { model: 'main', messages: HI })).status).toBe(200);
    const stats = gw.gateway.runtime.upstreams.get('a/m')!.stats;
    reload(gw, cfg('sk-rotated-wrong-000'));
    expect((await postChat(gw, { model: 'main', messages: HI })).status).toBe(502);
    expect(gw.gateway.runtime.upstreams.get('a/m')!.breaker.state).toBe('open');
    reload(gw, cfg('sk-good-0123456789'));
    expect(gw.gateway.runtime.upstreams.get('a/m')!.breaker.state).toBe('closed');
    expect(gw.gateway.runtime.upstreams.get('a/m')!.stats).toBe(stats);
    expect((await postChat(gw, { model: 'main', messages: HI })).status).toBe(200);
    // An unchanged reload keeps an open breaker (SPEC §3: breakers of upstreams that remain are kept).
    reload(gw, cfg('sk-rotated-wrong-000'));
    expect((await postChat(gw, { model: 'main', messages: HI })).status).toBe(502);
    reload(gw, cfg('sk-rotated-wrong-000'));
    expect(gw.gateway.runtime.upstreams.get('a/m')!.breaker.state).toBe('open');
  });
});

describe('restart-only settings across several reloads', () => {
  it('the log compares with what runs: a pending change is still named, one set back is not', async () => {
    const a = await sim('a');
    const cfg = (bodyLimit?: number): Json => ({
      ...(bodyLimit === undefined ? {} : { server: { body_limit_bytes: bodyLimit } }),
      providers: [simProvider('a', a.url, ['m'])],
      routes: { main: { targets: ['a/m'] } },
    });
    const gw = track(await startGateway(cfg()));
    const pending = () =>
      gw.logs.filter((l) => Array.isArray(l.settings) && l.settings.includes('server.body_limit_bytes'));
    reload(gw, cfg(2048)); // the first reload says it needs a restart
    expect(pending()).toHaveLength(1);
    // A SIGHUP with the file unchanged (or another edit): the running limit is still the start's, not
    // 2048. "config reloaded" with no word of it reads as applied.
    reload(gw, cfg(2048));
    expect(pending()).toHaveLength(2);
    // Set back to what runs: nothing is waiting for a restart; a warning that it "changed" is false.
    reload(gw, cfg());
    expect(pending()).toHaveLength(2);
    // server.cors is already compared so (gateway.ts corsRestartOnly: "compared with the start").
  });
});

describe('provider pools across a storm of reloads', () => {
  it('each replaced pool closes once unused; the one a stream runs on closes after the stream, not before', async () => {
    const a = await sim('a', { chunkDelayMs: 60, completionTokens: 12 }); // ~0.7 s stream
    const cfg = (maxConcurrency: number): Json => ({
      providers: [simProvider('a', a.url, ['m'], { max_concurrency: maxConcurrency })],
      routes: { main: { strategy: 'priority', targets: ['a/m'] } },
    });
    const gw = track(await startGateway(cfg(8)));
    const first = poolOf(gw, 'a');
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
      body: JSON.stringify({ model: 'main', stream: true, messages: HI }),
    });
    expect(res.statusCode).toBe(200);
    const text = res.body.text();
    const pools = [first];
    for (let i = 0; i < 10; i++) {
      reload(gw, cfg(9 + i)); // a new max_concurrency: a new pool each time
      pools.push(poolOf(gw, 'a'));
    }
    await sleep(50);
    expect(new Set(pools).size).toBe(11);
    // The stream's pool is still open under it; the pools of configs nobody used are closed.
    expect(first.closed || first.destroyed).toBe(false);
    expect(pools.slice(1, -1).filter((p) => !p.closed && !p.destroyed)).toHaveLength(0);
    const body = await text;
    expect(body).toContain('[DONE]');
    await until('the stream’s pool closed', () => first.closed || first.destroyed, 3_000);
    // The live config's pool serves on.
    expect(pools.at(-1)!.closed).toBe(false);
    expect((await postChat(gw, { model: 'main', messages: HI })).status).toBe(200);
  });
});

describe('the CLI: reload and shutdown', () => {
  const reloads = (c: CliProcess) => c.logs.filter((l) => l.msg === 'config reloaded');

  async function cli(name: string, text: string): Promise<{ c: CliProcess; path: string }> {
    const path = join(workDir(), name);
    writeFileSync(path, text);
    const c = await startCli(path, ['--port', '0']);
    track({ close: () => c.kill() });
    return { c, path };
  }

  it('an edit followed by a SIGHUP (as a deploy script does both) is one reload, not two', async () => {
    const a = await sim('a');
    const text = simConfigYaml([a]);
    const { c, path } = await cli('edit-hup.yaml', text);
    await sleep(400); // the watch's start check
    writeFileSync(path, `${text}\n# edited\n`);
    c.proc.kill('SIGHUP');
    await until('a reload', () => reloads(c).length >= 1, 5_000);
    await sleep(1_600); // the watch's debounce and a poll, with room
    // The file changed once; the SIGHUP applied that change. The watch reloading the same text again
    // counts llm_router_config_reloads_total twice and logs every restart-only warning twice.
    expect(reloads(c).map((l) => l.why)).toEqual(['SIGHUP']);
  }, 20_000);

  it('SIGTERM closes a Realtime WebSocket session through the passthrough with 1001, then exits 0', async () => {
    const server: Server = createHttpServer((_req, res) => res.end('{}'));
    const wss = new WebSocketServer({ server });
    const upstreamCloses: number[] = [];
    wss.on('connection', (ws) => {
      ws.on('error', () => undefined);
      ws.on('close', (code) => upstreamCloses.push(code));
      ws.on('message', (d, binary) => ws.send(d, { binary }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track({ close: () => wss.close() });
    track(closeableServer(server));
    const up = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const { c } = await cli(
      'ws.yaml',
      [
        'server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: 3000, passthrough: up }',
        'providers:',
        `  - { name: up, base_url: "${up}/v1", api_key: sk-up-key-123456, models: [{ name: m }] }`,
        'routes:',
        '  main: { targets: [up/m] }',
      ].join('\n'),
    );
    const client = new WebSocket(`${c.url.replace('http', 'ws')}/v1/realtime?model=m`);
    client.on('error', () => undefined);
    const closed = new Promise<{ code: number }>((resolve) =>
      client.on('close', (code) => resolve({ code })),
    );
    await new Promise<void>((resolve, reject) => {
      client.once('open', () => resolve());
      client.once('unexpected-response', (_req, res) => reject(new Error(`handshake ${res.statusCode}`)));
    });
    const echoed = new Promise<string>((resolve) => client.once('message', (d) => resolve(String(d))));
    client.send('ping');
    expect(await echoed).toBe('ping');
    c.proc.kill('SIGTERM');
    const code = await Promise.race([closed, sleep(6_000).then(() => ({ code: -1 }))]);
    // 1006 (abnormal closure) is a dropped TCP connection: the client cannot tell a drain from a crash.
    expect(code.code).toBe(1001);
    expect(await Promise.race([c.exited, sleep(6_000).then(() => 'still running')])).toBe(0);
  }, 20_000);
});

describe('CLI startup errors and flags', () => {
  function runCli(args: string[], env: Record<string, string> = {}, cwd = REPO_ROOT) {
    return spawnSync(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
      cwd,
      encoding: 'utf8',
      timeout: 10_000,
      env: { PATH: process.env.PATH ?? '', ...env },
    });
  }

  it('the port already in use: a one-line message naming the address, non-zero exit, no stack trace', async () => {
    const taken = createNetServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    track({ close: () => new Promise<void>((r) => taken.close(() => r())) });
    const port = (taken.address() as AddressInfo).port;
    const path = join(workDir(), 'taken.yaml');
    writeFileSync(
      path,
      'providers: [{ name: p, base_url: "http://127.0.0.1:9/v1", models: [{ name: m }] }]\nroutes: { r: { targets: [p/m] } }\n',
    );
    const r = runCli(['--config', path, '--host', '127.0.0.1', '--port', String(port)]);
    expect(r.status, r.stderr).not.toBe(0);
    expect(r.stderr).toMatch(/in use|EADDRINUSE/i);
    expect(r.stderr).toContain(String(port));
    // A stack trace is for a bug in the gateway, not for a port another process holds.
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('LLM_ROUTER_CONFIG set but empty (compose `${VAR:-}`): the message says which file or variable', () => {
    const r = runCli([], { LLM_ROUTER_CONFIG: '' }, workDir());
    expect(r.status).not.toBe(0);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    // "invalid config: cannot read config file: ENOENT" names nothing: which file? The default path
    // (an empty variable read as unset) or the variable itself must be in the message.
    expect(r.stderr).toMatch(/config\/gateway\.yaml|LLM_ROUTER_CONFIG/);
  });

  it('--version prints the package version and exits 0', () => {
    const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string })
      .version;
    const r = runCli(['--version']);
    expect(r.stderr).not.toMatch(/Unknown option/);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(version);
  });
});
