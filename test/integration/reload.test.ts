import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simConfigYaml, startGateway, type TestGateway } from '../helpers/gateway.js';
import { cliWorkDir, startCli } from '../helpers/cli-harness.js';
import { parseProm, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
let gw: TestGateway | undefined;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

/** A YAML config: one provider per simulator (model `m`), the given routes, a breaker that trips at once. */
function yamlOf(providers: Simulator[], routes: Record<string, string[]>, extra = ''): string {
  return simConfigYaml(providers, {
    routes,
    extra: ['circuit_breaker: { failure_threshold: 1, open_ms: 60000 }', extra],
  });
}

async function chat(base: string, model: string) {
  const res = await request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, provider: res.headers['x-router-provider'], text };
}

async function status(base: string) {
  const res = await request(`${base}/router/status`);
  return (await res.body.json()) as {
    upstreams: {
      id: string;
      breaker: { state: string; consecutive_failures: number; trip_cause?: string };
    }[];
    routes: { name: string; targets: string[] }[];
  };
}

async function metrics(base: string) {
  return parseProm(await (await request(`${base}/metrics`)).body.text());
}

describe('gateway.reload (in process)', () => {
  it('a valid change takes effect on the next request; a remaining upstream keeps its open breaker', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const c = await sim('c');
    gw = track(await startGateway(yamlOf([a, b, c], { main: ['a/m', 'b/m'] })));
    expect((await chat(gw.url, 'main')).provider).toBe('b'); // a failed once: its breaker is open
    expect((await status(gw.url)).upstreams.find((u) => u.id === 'a/m')?.breaker.state).toBe('open');

    gw.gateway.reload(parseConfigText(yamlOf([a, c], { main: ['a/m', 'c/m'] }), {}));
    const r = await chat(gw.url, 'main');
    expect(r.status).toBe(200);
    expect(r.provider).toBe('c');
    expect(a.requests).toHaveLength(1); // still open after the reload: skipped

    const s = await status(gw.url);
    expect(s.upstreams.map((u) => u.id).sort()).toEqual(['a/m', 'c/m']);
    expect(s.upstreams.find((u) => u.id === 'a/m')?.breaker).toMatchObject({
      state: 'open',
      trip_cause: 'errors',
    });
    expect(s.routes.find((x) => x.name === 'main')?.targets).toEqual(['a/m', 'c/m']);
    const m = await metrics(gw.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(2);
    expect(value(m, 'llm_router_circuit_state', { provider: 'b', model: 'm' })).toBeUndefined(); // gone with b
    expect(value(m, 'llm_router_circuit_state', { provider: 'c', model: 'm' })).toBe(0);
    expect((await chat(gw.url, 'b/m')).status).toBe(404);
  });

  it('an invalid change keeps the old config serving, logs the YAML path and counts a failure', async () => {
    const a = await sim('a');
    gw = track(await startGateway(yamlOf([a], { main: ['a/m'] })));
    const bad = yamlOf([a], { main: ['a/m', 'a/nope'] });
    expect(gw.gateway.tryReload(() => parseConfigText(bad, {}, '/etc/gw.yaml'), 'test')).toBe(false);
    expect((await chat(gw.url, 'main')).status).toBe(200);
    const line = gw.logs.find((l) => l.msg === 'config reload rejected; the old config keeps serving');
    expect(line).toMatchObject({ level: 50, why: 'test' });
    expect(line?.error).toContain('/etc/gw.yaml');
    expect(line?.error).toContain('routes.main.targets[1]: unknown upstream "a/nope"');

    expect(
      gw.gateway.tryReload(() => parseConfigText(yamlOf([a], { main: ['a/m'], other: ['a/m'] }), {}), 'test'),
    ).toBe(true);
    expect((await chat(gw.url, 'other')).status).toBe(200);
    const m = await metrics(gw.url);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'failure' })).toBe(1);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'success' })).toBe(1);
  });

  it('warns (naming settings, never values) when a reload changes server settings that need a restart', async () => {
    const a = await sim('a');
    const base = yamlOf([a], { main: ['a/m'] });
    gw = track(
      await startGateway(base.replace('port: 0,', 'port: 0, api_keys: ["k-old"], body_limit_bytes: 1000,')),
    );
    gw.gateway.reload(
      parseConfigText(base.replace('port: 0,', 'port: 0, api_keys: ["k-new"], body_limit_bytes: 2000,'), {}),
    );
    const line = gw.logs.find((l) => Array.isArray(l.settings));
    expect(line).toMatchObject({ level: 40, settings: ['server.body_limit_bytes'] });
    expect(gw.rawLogs()).not.toContain('k-new');
    gw.gateway.reload(
      parseConfigText(base.replace('port: 0,', 'port: 0, api_keys: ["k-new"], body_limit_bytes: 2000,'), {}),
    );
    // Still not applied: the next reload says so again (compared with what runs, not with the last file).
    expect(gw.logs.filter((l) => Array.isArray(l.settings))).toHaveLength(2);
    gw.gateway.reload(
      parseConfigText(base.replace('port: 0,', 'port: 0, api_keys: ["k-new"], body_limit_bytes: 1000,'), {}),
    );
    expect(gw.logs.filter((l) => Array.isArray(l.settings))).toHaveLength(2); // set back as it runs: no change
  });

  // Regression: the key sets were built once at start, so a reload that rotated keys kept the old ones.
  it('a reload rotates the client and admin keys', async () => {
    const a = await sim('a');
    const withKeys = (k: string) =>
      yamlOf([a], { main: ['a/m'] }).replace(
        'port: 0,',
        `port: 0, api_keys: ["${k}"], admin_key: "admin-${k}",`,
      );
    gw = track(await startGateway(withKeys('old')));
    gw.gateway.reload(parseConfigText(withKeys('new'), {}));
    const code = async (path: string, key: string) => {
      const r = await request(`${gw!.url}${path}`, { headers: { authorization: `Bearer ${key}` } });
      await r.body.dump();
      return r.statusCode;
    };
    expect(await code('/v1/models', 'new')).toBe(200);
    expect(await code('/v1/models', 'old')).toBe(401);
    expect(await code('/router/status', 'admin-new')).toBe(200);
    expect(await code('/router/status', 'admin-old')).toBe(401);
  });

  it('a stream in flight during a reload completes on the old config, even when its upstream is removed', async () => {
    const slow = await sim('slow', { chunkDelayMs: 40, completionTokens: 15 });
    const other = await sim('other');
    gw = track(await startGateway(yamlOf([slow, other], { main: ['slow/m'] })));
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.statusCode).toBe(200);
    const it = res.body[Symbol.asyncIterator]();
    let text = String((await it.next()).value ?? '');
    gw.gateway.reload(parseConfigText(yamlOf([other], { main: ['other/m'] }), {}));
    expect((await chat(gw.url, 'main')).provider).toBe('other');
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      text += String(next.value);
    }
    expect(text).toContain('data: [DONE]');
    expect(text).not.toContain('"error"');
    expect(slow.requests[0]?.finished).toBe(true);
  });
});

describe('a request in flight across a reload that removed and re-added its upstream', () => {
  it("settles on the dropped breaker: the re-added upstream's breaker, metrics and log say nothing of it", async () => {
    // Regression: the dropped breaker's transition reached the runtime by upstream id, so the re-added
    // upstream showed an open transition (metric, log line, gauge until the next scrape) it never had.
    const failing = await sim('x', { status: 500, latencyMs: 300 });
    const other = await sim('other');
    gw = track(await startGateway(yamlOf([failing, other], { main: ['x/m'] })));
    const pending = chat(gw.url, 'main');
    await expect.poll(() => failing.requests.length, { timeout: 2_000 }).toBe(1);
    gw.gateway.reload(parseConfigText(yamlOf([other], { main: ['other/m'] }), {}));
    gw.gateway.reload(parseConfigText(yamlOf([failing, other], { main: ['x/m'] }), {}));
    expect((await pending).status).toBe(502);
    await new Promise((r) => setTimeout(r, 50));
    expect((await status(gw.url)).upstreams.find((u) => u.id === 'x/m')?.breaker.state).toBe('closed');
    const m = await metrics(gw.url);
    expect(
      value(m, 'llm_router_circuit_transitions_total', { provider: 'x', model: 'm', to: 'open' }) ?? 0,
    ).toBe(0);
    expect(value(m, 'llm_router_circuit_state', { provider: 'x', model: 'm' })).toBe(0);
    expect(gw.rawLogs()).not.toMatch(/circuit.*open|breaker.*open/i);
  });
});

describe('the CLI reloads on file change and on SIGHUP', () => {
  const workDir = cliWorkDir('reload');

  it('rejects an invalid file with its path, swaps in a valid one, and survives SIGHUP', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const path = join(workDir(), 'gateway.yaml');
    writeFileSync(path, yamlOf([a, b], { main: ['a/m'] }));
    const cli = await startCli(path);
    track({ close: () => cli.kill() });
    expect((await chat(cli.url, 'main')).provider).toBe('a');

    const rejected = (l: Record<string, unknown>) =>
      l.msg === 'config reload rejected; the old config keeps serving';
    writeFileSync(path, yamlOf([a, b], { main: ['a/m'], extra: ['b/m', 'openai/gpt-4'] }));
    const line = await cli.waitForLog(rejected);
    expect(line.level).toBe(50);
    expect(line.error).toContain(path);
    expect(line.error).toContain('routes.extra.targets[1]: unknown upstream "openai/gpt-4"');
    expect((await chat(cli.url, 'main')).provider).toBe('a'); // the old config keeps serving
    expect((await chat(cli.url, 'extra')).status).toBe(404);
    let m = await metrics(cli.url);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'failure' })).toBeGreaterThanOrEqual(1);

    // Editors often replace the file (write a temp, rename over): the watcher still sees it.
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, yamlOf([a, b], { main: ['b/m'], extra: ['b/m'] }));
    renameSync(tmp, path);
    await cli.waitForLog((l) => l.msg === 'config reloaded');
    expect((await chat(cli.url, 'main')).provider).toBe('b');
    expect((await chat(cli.url, 'extra')).provider).toBe('b');
    m = await metrics(cli.url);
    const successes = value(m, 'llm_router_config_reloads_total', { result: 'success' })!;
    expect(successes).toBeGreaterThanOrEqual(1);

    // SIGHUP reloads (it must not shut the process down).
    writeFileSync(path, yamlOf([a, b], { main: ['a/m'], extra: ['b/m'], third: ['a/m'] }));
    await cli.waitForLog(
      (l) =>
        l.msg === 'config reloaded' &&
        l.why === 'file changed' &&
        cli.logs.filter((x) => x.msg === 'config reloaded').length >= 2,
    );
    cli.proc.kill('SIGHUP');
    await cli.waitForLog((l) => l.msg === 'config reloaded' && l.why === 'SIGHUP');
    expect(cli.proc.exitCode).toBeNull();
    expect((await chat(cli.url, 'third')).status).toBe(200);
    m = await metrics(cli.url);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'success' })).toBeGreaterThanOrEqual(
      successes + 2,
    );
    expect(cli.stderr()).toBe('');
  });
});
