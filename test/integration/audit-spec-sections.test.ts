/**
 * A strict black-box audit of SPEC §2 (tier rules), §3 (configuration), §5 (metrics), §6 (CLI and files) and
 * §7 (scale-out), read sentence by sentence, with README.md where it refines them (README is the user's truth).
 * Only what the other audit files (audit-spec-literal, audit-config-cli, audit-tiers, audit-observability) do
 * not already hold the gateway to. Upstreams are hand-written loopback mocks; the CLI is the built one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { answerAnthropicText } from '../helpers/anthropic-route.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, cliWorkDir, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import {
  answerChat,
  sendJson,
  startMock,
  type MockHandler,
  type Received,
} from '../helpers/mock-upstream.js';
import { parseProm, select, value, type Sample } from '../helpers/prom-text.js';
import { freePort } from '../helpers/redis.js';
import { specExample } from '../helpers/spec-example.js';
import { SPEC_METRICS } from '../helpers/spec-metrics.js';

onlyLoopbackFetch();
const track = closeAfterEach();
const workDir = cliWorkDir('audit-sections');
let files = 0;

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------
// helpers

function cfgFile(text: string): string {
  const path = join(workDir(), `s${++files}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** A config file: `head` lines, then route `r` over the one upstream `a/m` at mock `m`. */
function singleRouteFile(m: { url: string }, head: readonly string[] = []): string {
  return cfgFile(
    [
      ...head,
      'providers:',
      `  - { name: a, base_url: "${m.url}/v1", models: [{ name: m }] }`,
      'routes:',
      '  r: { targets: [a/m] }',
    ].join('\n'),
  );
}

async function mock(handler: MockHandler): Promise<{ url: string; received: Received[] }> {
  return track(await startMock(handler));
}

async function cli(path: string, args: string[] = [], env: Record<string, string> = {}): Promise<CliProcess> {
  const c = await startCli(path, args, env);
  track({ close: () => c.kill() });
  return c;
}

interface Ran {
  code: number | string;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `node dist/main.js ...args` to its end (SIGKILL after timeoutMs). */
function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 8_000): Promise<Ran> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal ?? -1, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** Spawns a long-running CLI process, tracked; its stdout is collected. */
function spawnTracked(
  args: string[],
  env: Record<string, string> = {},
): { proc: ChildProcess; out: () => string } {
  const proc = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  track({
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await new Promise((r) => proc.once('exit', r));
      }
    },
  });
  return { proc, out: () => out };
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

async function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; headers: Record<string, string> }> {
  const res = await request(url, { headers, headersTimeout: 8_000, bodyTimeout: 8_000 });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, text, headers: h };
}

async function scrapeText(base: string): Promise<string> {
  return (await get(`${base}/metrics`)).text;
}

async function metrics(base: string): Promise<Sample[]> {
  return parseProm(await scrapeText(base));
}

const sum = (s: readonly Sample[], name: string, labels: Record<string, string> = {}): number =>
  select(s, name, labels).reduce((a, x) => a + x.value, 0);

/** Is this chat request the gateway's LLM router call? Our clients never write "tier". */
const isRouterCall = (body: Json): boolean => JSON.stringify(body).toLowerCase().includes('tier');

function routerMaxTokens(body: Json): unknown {
  return body.max_tokens ?? body.max_completion_tokens;
}

/** An Anthropic Messages answer of `text` (JSON, or the SSE event sequence when `stream`). */
function answerAnthropic(res: ServerResponse, body: Json, text: string): void {
  answerAnthropicText(res, {
    id: 'msg_1',
    model: String(body.model),
    text,
    stream: body.stream === true,
    inputTokens: 5,
    outputTokens: 2,
  });
}

/**
 * Histogram semantics a Prometheus client relies on: per label set, `le` buckets ascending and cumulative,
 * `+Inf` equal to `_count`, `_sum` non-negative, and no label other than the declared ones (plus `le`).
 */
function expectWellFormedHistogram(s: readonly Sample[], name: string, labels: readonly string[]): void {
  const buckets = s.filter((x) => x.name === `${name}_bucket`);
  const counts = s.filter((x) => x.name === `${name}_count`);
  for (const c of counts) {
    expect(Object.keys(c.labels).sort(), name).toEqual([...labels].sort());
    const mine = buckets.filter((b) => labels.every((l) => b.labels[l] === c.labels[l]));
    expect(mine.length, `${name} buckets`).toBeGreaterThan(1);
    for (const b of mine) expect(Object.keys(b.labels).sort(), name).toEqual([...labels, 'le'].sort());
    const les = mine.map((b) => (b.labels.le === '+Inf' ? Infinity : Number(b.labels.le)));
    expect(
      les.every((x, i) => i === 0 || x > les[i - 1]!),
      `${name} le ascending`,
    ).toBe(true);
    expect(les.at(-1)).toBe(Infinity);
    const vals = mine.map((b) => b.value);
    expect(
      vals.every((x, i) => i === 0 || x >= vals[i - 1]!),
      `${name} cumulative`,
    ).toBe(true);
    expect(vals.at(-1), `${name} +Inf = count`).toBe(c.value);
    const sm = s.find((x) => x.name === `${name}_sum` && labels.every((l) => x.labels[l] === c.labels[l]));
    expect(sm, `${name}_sum`).toBeDefined();
    expect(sm!.value).toBeGreaterThanOrEqual(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// SPEC §3's example, whole

// Copied from SPEC §3 as written, comments included.
const SPEC_EXAMPLE = specExample();

/**
 * Judgement call: SPEC's block routes to three upstreams it never declares (openai/gpt-4o,
 * anthropic/claude-sonnet-4-5, anthropic/claude-opus-4-1), which audit-config-cli shows are its only
 * errors. They are declared here, and the two base_urls point at the loopback mocks; nothing else changes.
 */
function specExampleFor(openaiUrl: string, anthropicUrl: string): string {
  const text = SPEC_EXAMPLE.replace('https://api.openai.com/v1', `${openaiUrl}/v1`)
    .replace('https://api.anthropic.com', anthropicUrl)
    .replace(
      '        capabilities: [tools, json, vision, stream]   # or [embeddings] for an embedding model\n',
      '        capabilities: [tools, json, vision, stream]   # or [embeddings] for an embedding model\n      - name: gpt-4o\n',
    )
    .replace(
      '        price: { input_per_mtok: 1.0, output_per_mtok: 5.0 }\n',
      '        price: { input_per_mtok: 1.0, output_per_mtok: 5.0 }\n      - name: claude-sonnet-4-5\n      - name: claude-opus-4-1\n',
    );
  expect(text).toContain(`${openaiUrl}/v1`);
  expect(text).toContain('- name: claude-opus-4-1');
  return text;
}

const ENV = {
  GATEWAY_API_KEY: 'client-key-Q7w1',
  GATEWAY_ADMIN_KEY: 'admin-key-Z9p2',
  OPENAI_API_KEY: 'sk-openai-M3k8',
  ANTHROPIC_API_KEY: 'sk-ant-R5t4',
};

const ROUTER_PICK = '{"tier":"deep","reason":"tool use needs the deep tier"}';

interface SpecRig {
  gw: CliProcess;
  oa: { url: string; received: Received[] };
  an: { url: string; received: Received[] };
  client: OpenAI;
}

async function specRig(env: Record<string, string> = ENV): Promise<SpecRig> {
  const oa = await mock((req, res) => {
    if (req.path.startsWith('/v1/files')) {
      sendJson(res, 200, { object: 'list', data: [{ id: 'file-1', object: 'file' }] });
      return;
    }
    if (isRouterCall(req.body)) answerChat(res, req.body, ROUTER_PICK);
    else answerChat(res, req.body, `openai says hi from ${String(req.body.model)}`);
  });
  const an = await mock((req, res) => {
    if (isRouterCall(req.body)) answerAnthropic(res, req.body, ROUTER_PICK);
    else answerAnthropic(res, req.body, `anthropic says hi from ${String(req.body.model)}`);
  });
  const path = cfgFile(specExampleFor(oa.url, an.url));
  const gw = await cli(path, ['--host', '127.0.0.1', '--port', '0'], env);
  const client = new OpenAI({
    baseURL: `${gw.url}/v1`,
    apiKey: env.GATEWAY_API_KEY ?? 'none',
    maxRetries: 0,
    timeout: 10_000,
  });
  return { gw, oa, an, client };
}

const HI = [{ role: 'user' as const, content: 'hi' }];
const WEATHER_TOOL = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

describe("SPEC §3's example YAML, whole, run by the real CLI", () => {
  it('every route of the example (fast, smart, auto) answers through the OpenAI SDK, JSON and streamed', async () => {
    const { client } = await specRig();
    const strategies: Record<string, string> = { fast: 'latency', smart: 'hybrid', auto: 'hybrid' };
    for (const model of ['fast', 'smart', 'auto']) {
      const { data, response } = await client.chat.completions.create({ model, messages: HI }).withResponse();
      expect(data.choices[0]?.message.content, model).toMatch(/says hi from/);
      expect(response.headers.get('x-router-strategy'), model).toBe(strategies[model]);
      const { data: stream, response: sres } = await client.chat.completions
        .create({ model, messages: HI, stream: true })
        .withResponse();
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
      expect(text, `${model} streamed`).toMatch(/says hi from/);
      expect(sres.headers.get('x-router-provider'), model).toMatch(/^(openai|anthropic)$/);
    }
  }, 30_000);

  it('every upstream of the example is addressable as provider/model and served by its own provider', async () => {
    const { client } = await specRig();
    for (const u of [
      'openai/gpt-4o-mini',
      'openai/gpt-4o',
      'anthropic/claude-haiku-4-5',
      'anthropic/claude-sonnet-4-5',
      'anthropic/claude-opus-4-1',
    ]) {
      const [provider, model] = u.split('/') as [string, string];
      const { data, response } = await client.chat.completions
        .create({ model: u, messages: HI })
        .withResponse();
      expect(data.choices[0]?.message.content, u).toBe(`${provider} says hi from ${model}`);
      expect(response.headers.get('x-router-provider')).toBe(provider);
      expect(response.headers.get('x-router-model')).toBe(model);
    }
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    for (const id of ['fast', 'smart', 'auto', 'openai/gpt-4o', 'anthropic/claude-opus-4-1'])
      expect(ids).toContain(id);
  }, 30_000);

  it('api_keys from ${GATEWAY_API_KEY}: no key or a wrong key is a 401; upstreams get their own key, never the client one', async () => {
    const { gw, oa, an, client } = await specRig();
    for (const auth of [undefined, 'Bearer wrong-key']) {
      const r = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
        body: JSON.stringify({ model: 'fast', messages: HI }),
      });
      const body = (await r.body.json()) as { error?: { type?: string } };
      expect(r.statusCode).toBe(401);
      expect(body.error?.type).toBe('authentication_error');
    }
    expect(oa.received.length + an.received.length).toBe(0);
    await client.chat.completions.create({ model: 'openai/gpt-4o', messages: HI });
    await client.chat.completions.create({ model: 'anthropic/claude-opus-4-1', messages: HI });
    expect(oa.received.at(-1)?.headers.authorization).toBe(`Bearer ${ENV.OPENAI_API_KEY}`);
    expect(an.received.at(-1)?.headers['x-api-key']).toBe(ENV.ANTHROPIC_API_KEY);
    for (const r of [...oa.received, ...an.received])
      expect(JSON.stringify(r.headers)).not.toContain(ENV.GATEWAY_API_KEY);
  }, 30_000);

  it('admin_key from ${GATEWAY_ADMIN_KEY:-} protects /router/*: 401 without, 200 with Bearer or x-admin-key; /metrics stays open', async () => {
    const { gw } = await specRig();
    const none = await get(`${gw.url}/router/status`);
    expect(none.status).toBe(401);
    expect(none.text).not.toContain('gpt-4o');
    // The client key is not the admin key.
    expect(
      (await get(`${gw.url}/router/status`, { authorization: `Bearer ${ENV.GATEWAY_API_KEY}` })).status,
    ).toBe(401);
    expect(
      (await get(`${gw.url}/router/status`, { authorization: `Bearer ${ENV.GATEWAY_ADMIN_KEY}` })).status,
    ).toBe(200);
    expect((await get(`${gw.url}/router/status`, { 'x-admin-key': ENV.GATEWAY_ADMIN_KEY })).status).toBe(200);
    // README: server.metrics_auth defaults to false.
    expect((await get(`${gw.url}/metrics`)).status).toBe(200);
  }, 30_000);

  it('passthrough: openai sends another /v1/* path to the openai provider, with its key in place of the client one', async () => {
    const { gw, oa } = await specRig();
    const r = await get(`${gw.url}/v1/files`, { authorization: `Bearer ${ENV.GATEWAY_API_KEY}` });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toMatchObject({ object: 'list' });
    const seen = oa.received.find((x) => x.path.startsWith('/v1/files'));
    expect(seen).toBeDefined();
    expect(seen!.headers.authorization).toBe(`Bearer ${ENV.OPENAI_API_KEY}`);
    // SPEC §8: passthrough needs the client key too.
    expect((await get(`${gw.url}/v1/files`)).status).toBe(401);
  }, 30_000);

  it('kind: anthropic with base_url https://api.anthropic.com: POST /v1/messages, anthropic-version 2023-06-01, max_tokens 4096 by default (README)', async () => {
    const { an, client } = await specRig();
    const out = await client.chat.completions.create({ model: 'anthropic/claude-haiku-4-5', messages: HI });
    expect(out.choices[0]?.message.content).toBe('anthropic says hi from claude-haiku-4-5');
    const seen = an.received.at(-1)!;
    expect(seen.path).toBe('/v1/messages');
    expect(seen.headers['anthropic-version']).toBe('2023-06-01');
    expect(seen.body.max_tokens).toBe(4096);
    expect(seen.body.model).toBe('claude-haiku-4-5');
  }, 30_000);

  it('auto: a short prompt without tools is tier fast; 20 000+ prompt tokens is deep; no rule matching asks the router, whose pick serves', async () => {
    const { oa, an, client } = await specRig();
    const short = await client.chat.completions.create({ model: 'auto', messages: HI }).withResponse();
    expect(short.response.headers.get('x-router-tier')).toBe('fast');
    expect(['gpt-4o-mini', 'claude-haiku-4-5']).toContain(short.response.headers.get('x-router-model'));

    const huge = await client.chat.completions
      .create({ model: 'auto', messages: [{ role: 'user', content: 'word '.repeat(26_000) }] })
      .withResponse();
    expect(huge.response.headers.get('x-router-tier')).toBe('deep');
    expect(huge.response.headers.get('x-router-model')).toBe('claude-opus-4-1');
    const routerCallsBefore = [...oa.received, ...an.received].filter((r) => isRouterCall(r.body)).length;
    expect(routerCallsBefore).toBe(0); // rules decided both: the router was never asked

    // Tools and a short prompt: the first rule wants tools: false, the second 20 000 tokens: no rule matches.
    const tooled = await client.chat.completions
      .create({
        model: 'auto',
        messages: [{ role: 'user', content: 'what is the weather in Oslo' }],
        tools: [WEATHER_TOOL],
      })
      .withResponse();
    expect(tooled.response.headers.get('x-router-tier')).toBe('deep');
    expect(tooled.response.headers.get('x-router-model')).toBe('claude-opus-4-1');
    const routerCalls = [...oa.received, ...an.received].filter((r) => isRouterCall(r.body));
    expect(routerCalls.length).toBe(1);
    // ... served by the router.tier (fast): gpt-4o-mini or claude-haiku-4-5.
    expect(['gpt-4o-mini', 'claude-haiku-4-5']).toContain(routerCalls[0]!.body.model);
  }, 30_000);

  it('the router call asks for 80 tokens (README) and is cached by prompt: the same prompt again asks nobody (cache_ttl_s 300)', async () => {
    const { oa, an, client, gw } = await specRig();
    const ask = () =>
      client.chat.completions
        .create({
          model: 'auto',
          messages: [{ role: 'user', content: 'plan a trip to Bergen' }],
          tools: [WEATHER_TOOL],
        })
        .withResponse();
    const first = await ask();
    const second = await ask();
    for (const r of [first, second]) expect(r.response.headers.get('x-router-tier')).toBe('deep');
    const routerCalls = [...oa.received, ...an.received].filter((r) => isRouterCall(r.body));
    expect(routerCalls.length).toBe(1);
    expect(routerMaxTokens(routerCalls[0]!.body)).toBe(80);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(1);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'cached' })).toBe(1);
    expect(value(s, 'llm_router_llm_router_duration_seconds_count', { tier: 'fast' })).toBe(1);
  }, 30_000);

  it("/metrics of the CLI process: every SPEC §5 metric with its # TYPE and exact labels, well-formed histograms, Node's process metrics", async () => {
    const { client, gw } = await specRig();
    await client.chat.completions.create({ model: 'fast', messages: HI });
    const s0 = await client.chat.completions.create({ model: 'smart', messages: HI, stream: true });
    for await (const _ of s0) void _;
    await client.chat.completions.create({
      model: 'auto',
      messages: [{ role: 'user', content: 'call a tool please' }],
      tools: [WEATHER_TOOL],
    });
    const text = await scrapeText(gw.url);
    const s = parseProm(text);
    for (const [name, spec] of Object.entries(SPEC_METRICS)) {
      expect(text, name).toContain(`# TYPE ${name} ${spec.type}\n`);
      if (spec.type === 'histogram') expectWellFormedHistogram(s, name, spec.labels);
      else
        for (const x of select(s, name))
          expect(Object.keys(x.labels).sort(), name).toEqual([...spec.labels].sort());
    }
    for (const p of [
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
    ])
      expect(text).toContain(`# TYPE ${p} `);
    // No configured secret in the scrape (SPEC §8).
    for (const secret of Object.values(ENV)) expect(text).not.toContain(secret);
  }, 30_000);
});

describe('SPEC §3 substitution in the example: unset variables', () => {
  it('GATEWAY_API_KEY unset: no client auth (README: said in a warning); GATEWAY_ADMIN_KEY unset: /router/* open; ANTHROPIC_API_KEY unset: anthropic disabled, not a crash', async () => {
    const { gw, client, an } = await specRig({ OPENAI_API_KEY: ENV.OPENAI_API_KEY });
    const r = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fast', messages: HI }),
    });
    expect(r.statusCode).toBe(200);
    expect(r.headers['x-router-provider']).toBe('openai'); // anthropic is disabled
    await r.body.text();
    expect((await get(`${gw.url}/router/status`)).status).toBe(200);
    const out = await client.chat.completions.create({ model: 'smart', messages: HI });
    expect(out.choices[0]?.message.content).toBe('openai says hi from gpt-4o');
    expect(an.received.length).toBe(0);
    const warnings = gw.logs.filter((l) => typeof l.level === 'number' && l.level >= 40);
    // One warning for the api_keys variable, one line for the disabled provider.
    expect(warnings.some((l) => /GATEWAY_API_KEY|api_keys/.test(JSON.stringify(l)))).toBe(true);
    expect(
      warnings.filter((l) => JSON.stringify(l).includes('anthropic') && /disabled/i.test(JSON.stringify(l)))
        .length,
    ).toBe(1);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------------
// README's defaults table

const okHandler: MockHandler = (req, res) => answerChat(res, req.body, `from ${String(req.body.model)}`);

async function gateway(config: Json, opts: Parameters<typeof startGateway>[1] = {}): Promise<TestGateway> {
  return track(await startGateway(config, opts));
}

/** Route `r` over the one upstream `a/m` at mock `m`. */
function singleRoute(m: { url: string }): Promise<TestGateway> {
  return gateway({ providers: [simProvider('a', m.url, ['m'])], routes: { r: { targets: ['a/m'] } } });
}

describe("README's configuration defaults", () => {
  it('routes.NAME.strategy defaults to routing.default_strategy (round-robin here): header, rotation and decision metric say so', async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('a', m.url, ['m']), simProvider('b', m.url, ['m'])],
      routes: { r: { targets: ['a/m', 'b/m'] } },
      routing: { default_strategy: 'round-robin' },
    });
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await postChat(gw, { model: 'r', messages: HI });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-strategy']).toBe('round-robin');
      seen.push(r.headers['x-router-provider']!);
    }
    expect(seen.filter((p) => p === 'a').length).toBe(2);
    expect(seen.filter((p) => p === 'b').length).toBe(2);
    const s = await metrics(gw.url);
    expect(sum(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'round-robin' })).toBe(4);
  });

  it('providers[].kind defaults to openai; price defaults to 0 / 0: tokens counted, cost 0', async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [{ name: 'p', base_url: `${m.url}/v1`, api_key: 'sk-p', models: [{ name: 'm' }] }],
      routes: { r: { targets: ['p/m'] } },
    });
    const r = await postChat(gw, { model: 'r', messages: HI });
    expect(r.status).toBe(200);
    expect(m.received[0]!.path).toBe('/v1/chat/completions');
    expect(m.received[0]!.headers.authorization).toBe('Bearer sk-p');
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_tokens_total', { provider: 'p', model: 'm', kind: 'prompt' })).toBe(5);
    expect(value(s, 'llm_router_tokens_total', { provider: 'p', model: 'm', kind: 'completion' })).toBe(2);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'p', model: 'm' }) ?? 0).toBe(0);
  });

  it('upstream_name is the name sent upstream; providers[].headers are sent upstream', async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [
        simProvider('p', m.url, [{ name: 'alias', upstream_name: 'real-model-7' }], {
          headers: { 'x-extra-header': 'extra-1', 'anthropic-beta': 'beta-2' },
        }),
      ],
      routes: { r: { targets: ['p/alias'] } },
    });
    const r = await postChat(gw, { model: 'r', messages: HI });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-model']).toBe('alias');
    expect(m.received[0]!.body.model).toBe('real-model-7');
    expect(m.received[0]!.headers['x-extra-header']).toBe('extra-1');
    expect(m.received[0]!.headers['anthropic-beta']).toBe('beta-2');
  });

  it('capabilities default to [tools, json, vision, stream]; a model lacking one is skipped for a request that needs it', async () => {
    const m = await mock(okHandler);
    const all = ['tools', 'json', 'vision', 'stream'];
    const providers = [simProvider('full', m.url, ['f'])];
    const routes: Json = {};
    for (const cap of all) {
      providers.push(
        simProvider(`no${cap}`, m.url, [{ name: 'm', capabilities: all.filter((c) => c !== cap) }]),
      );
      routes[cap] = { strategy: 'priority', targets: [`no${cap}/m`, 'full/f'] };
    }
    const gw = await gateway({ providers, routes });
    const needs: Record<string, Json> = {
      tools: { tools: [WEATHER_TOOL] },
      json: { response_format: { type: 'json_object' } },
      vision: {
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'what is this' },
              { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } },
            ],
          },
        ],
      },
      stream: { stream: true },
    };
    for (const cap of all) {
      const plain = await postChat(gw, { model: cap, messages: HI });
      expect(plain.status, cap).toBe(200);
      expect(plain.headers['x-router-provider'], `${cap}: a plain request goes first to no${cap}`).toBe(
        `no${cap}`,
      );
      const r = await postChat(gw, { model: cap, messages: HI, ...needs[cap] });
      expect(r.status, cap).toBe(200);
      expect(r.headers['x-router-provider'], `${cap} needed`).toBe('full');
    }
    // The full model had every capability without listing any.
    expect(m.received.filter((x) => x.body.model === 'f').length).toBe(4);
  });

  it("weight defaults to 1 (a model's weight 3 takes ~3/4); a route target's own weight wins over the model's", async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('a', m.url, [{ name: 'm', weight: 3 }]), simProvider('b', m.url, ['m'])],
      routes: {
        w1: { strategy: 'weighted', targets: ['a/m', 'b/m'] },
        w2: {
          strategy: 'weighted',
          targets: [
            { target: 'a/m', weight: 1 },
            { target: 'b/m', weight: 3 },
          ],
        },
      },
    });
    const share = async (route: string): Promise<number> => {
      let a = 0;
      const n = 200;
      for (let i = 0; i < n; i += 20) {
        const rs = await Promise.all(
          Array.from({ length: 20 }, () => postChat(gw, { model: route, messages: HI })),
        );
        for (const r of rs) {
          expect(r.status).toBe(200);
          if (r.headers['x-router-provider'] === 'a') a++;
        }
      }
      return a / n;
    };
    const s1 = await share('w1');
    expect(s1).toBeGreaterThan(0.6);
    expect(s1).toBeLessThan(0.9);
    const s2 = await share('w2');
    expect(s2).toBeGreaterThan(0.1);
    expect(s2).toBeLessThan(0.4);
  }, 30_000);

  it('router defaults: timeout_ms 1500 (a slow router costs about 1.5 s, then default_tier), outcome timeout', async () => {
    const slow = await mock(async (req, res) => {
      await sleep(6_000);
      if (!res.destroyed) answerChat(res, req.body, '{"tier":"fast","reason":"late"}');
    });
    const ok = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('slow', slow.url, ['m']), simProvider('ok', ok.url, ['m'])],
      routes: {
        t: {
          tiers: { fast: ['slow/m'], balanced: ['ok/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast' },
        },
      },
    });
    const r = await postChat(gw, { model: 't', messages: HI });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-provider']).toBe('ok');
    expect(r.ms).toBeGreaterThan(1_200);
    expect(r.ms).toBeLessThan(4_500);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'timeout' })).toBe(
      1,
    );
  }, 15_000);

  it('router defaults: cache_ttl_s 300, so the same prompt a moment later is a cache hit; another prompt asks again', async () => {
    const rt = await mock((req, res) => answerChat(res, req.body, '{"tier":"balanced","reason":"ok"}'));
    const ok = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('rt', rt.url, ['m']), simProvider('ok', ok.url, ['m'])],
      routes: {
        t: {
          tiers: { fast: ['rt/m'], balanced: ['ok/m'] },
          default_tier: 'fast',
          router: { tier: 'fast' },
        },
      },
    });
    for (const content of ['alpha', 'alpha', 'beta']) {
      const r = await postChat(gw, { model: 't', messages: [{ role: 'user', content }] });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-tier']).toBe('balanced');
    }
    expect(rt.received.length).toBe(2);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'cached' })).toBe(1);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'chosen' })).toBe(2);
  });

  it('tie_epsilon defaults to 0.02: two candidates whose explain scores differ by at most that rotate, more than that never', async () => {
    const m = await mock(okHandler);
    const mk = (p: number) => ({ name: 'm', price: { input_per_mtok: p, output_per_mtok: p } });
    const gw = await gateway({
      providers: [
        simProvider('a', m.url, [mk(1)]),
        simProvider('b', m.url, [mk(1.005)]), // 0.5 % dearer
        simProvider('c', m.url, [mk(1)]),
        simProvider('d', m.url, [mk(2)]), // twice as dear
      ],
      routes: {
        near: { strategy: 'cost', targets: ['a/m', 'b/m'] },
        far: { strategy: 'cost', targets: ['c/m', 'd/m'] },
      },
    });
    for (const [route, tie] of [
      ['near', true],
      ['far', false],
    ] as const) {
      const ex = await request(`${gw.url}/router/explain`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: route, messages: HI, max_tokens: 100 }),
      });
      const body = JSON.stringify(await ex.body.json());
      const scores = [...body.matchAll(/"score":\s*([0-9.eE+-]+)/g)].map((x) => Number(x[1]));
      expect(scores.length, body).toBeGreaterThanOrEqual(2);
      const gap = Math.max(...scores) - Math.min(...scores);
      expect(gap <= 0.02, `${route}: scores ${scores.join(', ')}`).toBe(tie);
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) {
        const r = await postChat(gw, { model: route, messages: HI, max_tokens: 100 });
        expect(r.status).toBe(200);
        seen.add(r.headers['x-router-provider']!);
      }
      expect(seen.size, route).toBe(tie ? 2 : 1);
    }
  });

  it('server.port defaults to 8080 (README), with --host overriding the host alone', async () => {
    const m = await mock(okHandler);
    const path = singleRouteFile(m);
    const busy = await new Promise<boolean>((resolve) => {
      const srv: Server = createServer();
      srv.once('error', () => resolve(true));
      srv.listen(8080, '127.0.0.1', () => srv.close(() => resolve(false)));
    });
    if (busy) {
      // Someone else holds 8080 on this machine: the gateway must still try 8080 and say so.
      const r = await runCli(['--config', path, '--host', '127.0.0.1'], {}, 6_000);
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toContain('8080');
      return;
    }
    const gw = await cli(path, ['--host', '127.0.0.1']);
    expect(gw.url).toBe('http://127.0.0.1:8080');
    const r = await postChat({ url: gw.url }, { model: 'r', messages: HI });
    expect(r.status).toBe(200);
  }, 20_000);
});

// ---------------------------------------------------------------------------------------------------
// SPEC §5 semantics

describe('SPEC §5 metrics, literally', () => {
  it('durations are in seconds and agree with what the client measured (loosely); every histogram is well-formed', async () => {
    const m = await mock(async (req, res) => {
      await sleep(400);
      answerChat(res, req.body, 'late');
    });
    const gw = await singleRoute(m);
    const r1 = await postChat(gw, { model: 'r', messages: HI });
    const r2 = await postChat(gw, { model: 'r', messages: HI, stream: true });
    expect([r1.status, r2.status]).toEqual([200, 200]);
    const s = await metrics(gw.url);
    const durJ = value(s, 'llm_router_request_duration_seconds_sum', {
      route: 'r',
      provider: 'a',
      model: 'm',
      stream: 'false',
    })!;
    const durS = value(s, 'llm_router_request_duration_seconds_sum', {
      route: 'r',
      provider: 'a',
      model: 'm',
      stream: 'true',
    })!;
    expect(durJ).toBeGreaterThanOrEqual(0.35);
    expect(durJ).toBeLessThanOrEqual(r1.ms / 1000 + 0.05);
    expect(durS).toBeGreaterThanOrEqual(0.35);
    expect(durS).toBeLessThanOrEqual(r2.ms / 1000 + 0.05);
    const ttftCount = value(s, 'llm_router_time_to_first_token_seconds_count', {
      provider: 'a',
      model: 'm',
    })!;
    const ttftSum = value(s, 'llm_router_time_to_first_token_seconds_sum', { provider: 'a', model: 'm' })!;
    expect(ttftCount).toBeGreaterThanOrEqual(1);
    expect(ttftSum / ttftCount).toBeGreaterThanOrEqual(0.35);
    expect(ttftSum / ttftCount).toBeLessThan(3);
    for (const [name, spec] of Object.entries(SPEC_METRICS))
      if (spec.type === 'histogram') expectWellFormedHistogram(s, name, spec.labels);
  });

  it('time_per_output_token: README says "(streams)", SPEC "once per request": a stream observes it once, JSON answers do not', async () => {
    // SPEC/README disagreement: SPEC's "once per request: (total − TTFT) ÷ completion tokens" reads as every
    // request; README's table narrows it to "(streams)" (a JSON answer has no TTFT apart from its total, so
    // total − TTFT is 0). README is the user's truth: streams only, exactly once each.
    const m = await mock(okHandler);
    const gw = await singleRoute(m);
    for (let i = 0; i < 2; i++) expect((await postChat(gw, { model: 'r', messages: HI })).status).toBe(200);
    expect((await postChat(gw, { model: 'r', messages: HI, stream: true })).status).toBe(200);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_time_per_output_token_seconds_count', { provider: 'a', model: 'm' })).toBe(1);
  });

  it('requests answered before routing count under route "none"; label values never come from what the client sent', async () => {
    const m = await mock(okHandler);
    const gw = await singleRoute(m);
    const unknown = await postChat(gw, { model: 'client-made-up-xq9', messages: HI });
    expect(unknown.status).toBe(404);
    const bad = await postChat(gw, { model: 'r', messages: 'not a list' });
    expect(bad.status).toBe(400);
    const badProv = await postChat(gw, { model: 'made-up-prov-zz/m', messages: HI });
    expect(badProv.status).toBe(404);
    const text = await scrapeText(gw.url);
    expect(text).not.toContain('client-made-up-xq9');
    expect(text).not.toContain('made-up-prov-zz');
    const s = parseProm(text);
    expect(sum(s, 'llm_router_requests_total', { route: 'none', status: '404' })).toBe(2);
    expect(
      sum(s, 'llm_router_requests_total', { route: 'none', status: '400' }) +
        sum(s, 'llm_router_requests_total', { route: 'r', status: '400' }),
    ).toBe(1);
    expect(m.received.length).toBe(0);
  });

  it('routing_decisions_total and requests_total move once per routed request; overhead_seconds once per request, under the route', async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('a', m.url, ['m']), simProvider('b', m.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    for (let i = 0; i < 3; i++) expect((await postChat(gw, { model: 'r', messages: HI })).status).toBe(200);
    expect((await postChat(gw, { model: 'r', messages: HI, stream: true })).status).toBe(200);
    const s = await metrics(gw.url);
    expect(
      value(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'priority', provider: 'a' }),
    ).toBe(4);
    expect(sum(s, 'llm_router_routing_decisions_total')).toBe(4);
    expect(
      value(s, 'llm_router_requests_total', { route: 'r', provider: 'a', model: 'm', status: '200' }),
    ).toBe(4);
    expect(value(s, 'llm_router_overhead_seconds_count', { route: 'r' })).toBe(4);
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'success' }),
    ).toBe(4);
    expect(sum(s, 'llm_router_upstream_attempts_total', { provider: 'b' })).toBe(0);
  });

  it('circuit_state moves 0 → 2 and circuit_transitions_total counts the move with labels provider, model, to', async () => {
    const bad = await mock((_r, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const ok = await mock(okHandler);
    const gw = await gateway({
      providers: [simProvider('bad', bad.url, ['m']), simProvider('ok', ok.url, ['m'])],
      routes: { r: { strategy: 'priority', targets: ['bad/m', 'ok/m'] } },
      circuit_breaker: { failure_threshold: 2 },
    });
    let s = await metrics(gw.url);
    expect(value(s, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(0);
    for (let i = 0; i < 3; i++) expect((await postChat(gw, { model: 'r', messages: HI })).status).toBe(200);
    expect(bad.received.length).toBe(2);
    s = await metrics(gw.url);
    expect(value(s, 'llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(2);
    // Every `to` series is there from the start at 0 (README Metrics): the move is the one that counted.
    const moves = select(s, 'llm_router_circuit_transitions_total', { provider: 'bad', model: 'm' }).filter(
      (x) => x.value > 0,
    );
    expect(moves.length).toBe(1);
    expect(moves[0]!.value).toBe(1);
    expect(moves[0]!.labels.to).toMatch(/open/);
    expect(moves[0]!.labels.to).not.toMatch(/half/);
    expect(
      value(s, 'llm_router_failovers_total', { route: 'r', from_provider: 'bad', reason: 'error' }),
    ).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------------------
// SPEC §6

describe('SPEC §6 CLI and files', () => {
  it('check --config prints every route (flat, tiered, embeddings) and every upstream, even one no route uses; exit 0, no upstream called, no server left', async () => {
    const m = await mock(okHandler);
    const path = cfgFile(
      [
        'providers:',
        `  - name: alpha`,
        `    base_url: "${m.url}/v1"`,
        `    api_key: sk-check-secret-77`,
        `    models: [{ name: chat-a }, { name: emb-a, capabilities: [embeddings] }, { name: unused-a }]`,
        `  - { name: beta, base_url: "${m.url}/v1", models: [{ name: chat-b }] }`,
        'routes:',
        '  plain-route: { targets: [alpha/chat-a, beta/chat-b] }',
        '  emb-route: { targets: [alpha/emb-a] }',
        '  tier-route:',
        '    tiers: { fast: [alpha/chat-a], balanced: [beta/chat-b] }',
        '    default_tier: balanced',
        '    router: { tier: fast }',
      ].join('\n'),
    );
    const r = await runCli(['check', '--config', path]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    for (const route of ['plain-route', 'emb-route', 'tier-route']) expect(r.stdout).toContain(route);
    for (const u of ['alpha/chat-a', 'alpha/emb-a', 'alpha/unused-a', 'beta/chat-b'])
      expect(r.stdout).toContain(u);
    expect(r.stdout).not.toContain('sk-check-secret-77');
    expect(m.received.length).toBe(0);
    expect(r.ms).toBeLessThan(7_000);
  });

  it('check on a config whose router.tier names an empty or missing tier: non-zero exit, the YAML path in the message', async () => {
    const base = (tiers: string, routerTier: string) =>
      cfgFile(
        [
          'providers:',
          '  - { name: a, base_url: "http://127.0.0.1:9/v1", models: [{ name: m }] }',
          'routes:',
          '  auto:',
          `    tiers: ${tiers}`,
          '    default_tier: balanced',
          `    router: { tier: ${routerTier} }`,
        ].join('\n'),
      );
    for (const path of [base('{ fast: [], balanced: [a/m] }', 'fast'), base('{ balanced: [a/m] }', 'deep')]) {
      const r = await runCli(['check', '--config', path]);
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stdout + r.stderr).toMatch(/routes\.auto\.(router|tiers)/);
      expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/);
    }
  });

  it('--log-level warn and LOG_LEVEL=warn: served requests write no info lines', async () => {
    const m = await mock(okHandler);
    const path = singleRouteFile(m);
    // The control run (default level) must show info lines where we look, or the check below sees nothing.
    for (const [args, env, quiet] of [
      [[], {}, false],
      [['--log-level', 'warn'], {}, true],
      [[], { LOG_LEVEL: 'warn' }, true],
    ] as const) {
      const port = await freePort();
      const p = spawnTracked(['--config', path, '--host', '127.0.0.1', '--port', String(port), ...args], env);
      const url = `http://127.0.0.1:${port}`;
      await until(
        'the gateway to answer',
        async () => {
          try {
            return (await get(`${url}/healthz`)).status === 200;
          } catch {
            return false;
          }
        },
        8_000,
      );
      const r = await postChat({ url }, { model: 'r', messages: HI });
      expect(r.status).toBe(200);
      // Log lines go out in batches (every 200 ms, and on exit): read them once the process has exited and
      // its pipes are drained ('close': at 'exit' they may still hold the last lines).
      p.proc.kill('SIGTERM');
      await new Promise((res) => p.proc.once('close', res));
      const infoLines = p
        .out()
        .split('\n')
        .filter((l) => l.trim() !== '')
        .filter((l) => {
          try {
            return (JSON.parse(l) as { level?: number }).level! < 40;
          } catch {
            return false;
          }
        });
      if (quiet) expect(infoLines, JSON.stringify([args, env])).toEqual([]);
      else expect(infoLines.length, 'info lines at the default level').toBeGreaterThan(0);
    }
  }, 30_000);

  it('simulate --kind openai --latency-ms --tokens-per-s: the OpenAI SDK streams from it, with usage, after the latency', async () => {
    const port = await freePort();
    const p = spawnTracked([
      'simulate',
      '--port',
      String(port),
      '--kind',
      'openai',
      '--latency-ms',
      '300',
      '--tokens-per-s',
      '200',
    ]);
    await until('the simulator to listen', () => p.out().includes(String(port)), 8_000);
    const client = new OpenAI({
      baseURL: `http://127.0.0.1:${port}/v1`,
      apiKey: 'k',
      maxRetries: 0,
      timeout: 10_000,
    });
    const t0 = performance.now();
    const stream = await client.chat.completions.create({
      model: 'anything',
      messages: HI,
      stream: true,
      stream_options: { include_usage: true },
    });
    let first = 0;
    let text = '';
    let usage: unknown;
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta.content ?? '';
      if (d !== '' && first === 0) first = performance.now() - t0;
      text += d;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text.length).toBeGreaterThan(0);
    expect(first).toBeGreaterThanOrEqual(250);
    expect(usage).toMatchObject({ completion_tokens: expect.any(Number), prompt_tokens: expect.any(Number) });
    const json = await client.chat.completions.create({ model: 'anything', messages: HI });
    expect(json.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(json.usage?.completion_tokens).toBeGreaterThan(0);
  }, 20_000);

  it('config/gateway.yaml (the default path) and config/demo.yaml pass check', async () => {
    for (const f of ['config/gateway.yaml', 'config/demo.yaml']) {
      const r = await runCli(['check', '--config', join(REPO_ROOT, f)]);
      expect(r.code, `${f}: ${r.stderr}`).toBe(0);
      expect(r.stdout.length, f).toBeGreaterThan(0);
    }
  }, 20_000);

  it('SIGTERM on an idle gateway: exit code 0', async () => {
    const m = await mock(okHandler);
    const path = singleRouteFile(m, ['server: { shutdown_grace_ms: 1000 }']);
    // Port 0: a free port picked first could be taken by a parallel test before the gateway binds it (CI saw EADDRINUSE).
    const gw = await cli(path, ['--host', '127.0.0.1', '--port', '0']);
    expect((await postChat({ url: gw.url }, { model: 'r', messages: HI })).status).toBe(200);
    gw.proc.kill('SIGTERM');
    const code = await Promise.race([gw.exited, sleep(8_000).then(() => 'still running')]);
    expect(code).toBe(0);
  }, 20_000);
});

// ---------------------------------------------------------------------------------------------------
// SPEC §7

describe('SPEC §7: Redis unreachable from the start', () => {
  it('each replica keeps serving on local state: requests succeed, its breaker still opens and is skipped, status says not connected, the password never shows', async () => {
    const closed = await freePort();
    const bad = await mock((_r, res) =>
      sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } }),
    );
    const ok = await mock(okHandler);
    const gw = await gateway(
      {
        providers: [simProvider('bad', bad.url, ['m']), simProvider('ok', ok.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['bad/m', 'ok/m'] } },
        circuit_breaker: { failure_threshold: 2 },
        state: { backend: 'redis', url: `redis://:redis-pw-H4x9@127.0.0.1:${closed}/0` },
      },
      { stateSyncMs: 100 },
    );
    for (let i = 0; i < 6; i++) {
      const r = await postChat(gw, { model: 'r', messages: HI });
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('ok');
    }
    expect(bad.received.length).toBe(2); // opened locally after 2 failures, skipped after
    const st = await get(`${gw.url}/router/status`);
    expect(st.status).toBe(200);
    expect(st.text).not.toContain('redis-pw-H4x9');
    const status = JSON.parse(st.text) as { state?: { backend?: string; connected?: boolean } };
    expect(status.state).toMatchObject({ backend: 'redis', connected: false });
    await sleep(300);
    expect(gw.rawLogs()).not.toContain('redis-pw-H4x9');
    expect(await scrapeText(gw.url)).not.toContain('redis-pw-H4x9');
    const outage = gw.logs.filter((l) => /redis/i.test(JSON.stringify(l)) && (l.level as number) >= 40);
    // README: "logs the outage once".
    expect(outage.length).toBe(1);
  }, 20_000);
});

// ---------------------------------------------------------------------------------------------------
// SPEC §2 / README: x-router-tier on a route without tiers

describe('x-router-tier outside tiered routes (README)', () => {
  it('a route without tiers ignores a tier name; a value none of fast/balanced/deep is a 400 with param x-router-tier', async () => {
    const m = await mock(okHandler);
    const gw = await singleRoute(m);
    const send = (tier: string) =>
      request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-router-tier': tier },
        body: JSON.stringify({ model: 'r', messages: HI }),
      });
    for (const tier of ['fast', 'balanced', 'deep']) {
      const r = await send(tier);
      await r.body.text();
      expect(r.statusCode, tier).toBe(200);
      expect(r.headers['x-router-tier'], tier).toBeUndefined();
    }
    const r = await send('turbo');
    const body = (await r.body.json()) as { error?: { param?: string; type?: string } };
    expect(r.statusCode).toBe(400);
    expect(body.error?.param).toBe('x-router-tier');
    expect(body.error?.type).toBe('invalid_request_error');
    expect(m.received.length).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------------------
// More of README's §3 table, and §2's router pipeline

describe("README's configuration table, more keys", () => {
  it('an upstream listed twice in targets, or twice in one tier, is an error naming its path', async () => {
    for (const [route, path] of [
      ['  r: { targets: [a/m, a/m] }', 'routes.r.targets'],
      [
        '  t: { tiers: { fast: [a/m, a/m], balanced: [a/m] }, default_tier: balanced, router: { tier: fast } }',
        'routes.t.tiers.fast',
      ],
    ] as const) {
      const file = cfgFile(
        [
          'providers:',
          '  - { name: a, base_url: "http://127.0.0.1:9/v1", models: [{ name: m }] }',
          'routes:',
          route,
        ].join('\n'),
      );
      const r = await runCli(['check', '--config', file]);
      expect(r.code, route).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stdout + r.stderr, route).toContain(path);
    }
  });

  it('context_window: a request whose prompt plus max_tokens exceeds it skips that upstream; none left is a 400 context_length_exceeded', async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [
        simProvider('small', m.url, [{ name: 'm', context_window: 1000 }]),
        simProvider('big', m.url, ['m']),
      ],
      routes: {
        both: { strategy: 'priority', targets: ['small/m', 'big/m'] },
        only: { targets: ['small/m'] },
      },
    });
    const fits = await postChat(gw, { model: 'both', messages: HI, max_tokens: 100 });
    expect(fits.headers['x-router-provider']).toBe('small');
    const over = await postChat(gw, { model: 'both', messages: HI, max_tokens: 5000 });
    expect(over.status).toBe(200);
    expect(over.headers['x-router-provider']).toBe('big');
    const none = await postChat(gw, { model: 'only', messages: HI, max_tokens: 5000 });
    expect(none.status).toBe(400);
    expect((none.json.error as Json | undefined)?.code).toBe('context_length_exceeded');
    expect(m.received.length).toBe(2);
  });

  it('anthropic: a trailing /v1 on base_url is taken off; anthropic_version and default_max_tokens are honoured', async () => {
    const an = await mock((req, res) => answerAnthropic(res, req.body, 'hello'));
    const gw = await gateway({
      providers: [
        {
          name: 'an',
          kind: 'anthropic',
          base_url: `${an.url}/v1`,
          api_key: 'sk-ant-x',
          anthropic_version: '2099-01-01',
          default_max_tokens: 777,
          models: [{ name: 'claude-haiku-4-5' }],
        },
      ],
      routes: { r: { targets: ['an/claude-haiku-4-5'] } },
    });
    const r = await postChat(gw, { model: 'r', messages: HI });
    expect(r.status, r.text).toBe(200);
    expect(an.received[0]!.path).toBe('/v1/messages');
    expect(an.received[0]!.headers['anthropic-version']).toBe('2099-01-01');
    expect(an.received[0]!.body.max_tokens).toBe(777);
    const withMax = await postChat(gw, { model: 'r', messages: HI, max_tokens: 33 });
    expect(withMax.status).toBe(200);
    expect(an.received[1]!.body.max_tokens).toBe(33);
  });

  it('base_url: a query is kept after the path; user:password@ is sent as Basic unless api_key is set (kind openai)', async () => {
    const m = await mock(okHandler);
    const host = m.url.replace('http://', '');
    const gw = await gateway({
      providers: [
        {
          name: 'q',
          base_url: `${m.url}/openai/deployments/dep1?api-version=2024-10-21`,
          api_key: 'sk-q',
          models: [{ name: 'm' }],
        },
        { name: 'basic', base_url: `http://user1:pass-Y6v@${host}/v1`, models: [{ name: 'm' }] },
        {
          name: 'both',
          base_url: `http://user2:pass-K2c@${host}/v1`,
          api_key: 'sk-both',
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { targets: ['q/m'] } },
    });
    expect((await postChat(gw, { model: 'q/m', messages: HI })).status).toBe(200);
    expect(m.received[0]!.path).toBe('/openai/deployments/dep1/chat/completions?api-version=2024-10-21');
    expect((await postChat(gw, { model: 'basic/m', messages: HI })).status).toBe(200);
    expect(m.received[1]!.headers.authorization).toBe(
      `Basic ${Buffer.from('user1:pass-Y6v').toString('base64')}`,
    );
    expect((await postChat(gw, { model: 'both/m', messages: HI })).status).toBe(200);
    expect(m.received[2]!.headers.authorization).toBe('Bearer sk-both');
    expect(await scrapeText(gw.url)).not.toContain('pass-');
  });
});

describe('§2 router call through the same pipeline; §5 gauges and estimates', () => {
  it("the router call fails over across the router tier's upstreams; its pick is used (outcome chosen)", async () => {
    const down = await mock((_r, res) =>
      sendJson(res, 500, { error: { message: 'down', type: 'server_error' } }),
    );
    const rt = await mock((req, res) => answerChat(res, req.body, '{"tier":"deep","reason":"hard"}'));
    const ok = await mock(okHandler);
    const gw = await gateway({
      providers: [
        simProvider('down', down.url, ['m']),
        simProvider('rt', rt.url, ['m']),
        simProvider('ok', ok.url, ['m']),
      ],
      routes: {
        t: {
          strategy: 'priority',
          tiers: { fast: ['down/m', 'rt/m'], balanced: ['ok/m'], deep: ['ok/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 3000 },
        },
      },
    });
    const r = await postChat(gw, { model: 't', messages: HI });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(down.received.length).toBe(1);
    expect(rt.received.length).toBe(1);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(1);
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'down', model: 'm', outcome: 'error' }),
    ).toBe(1);
  });

  it('inflight_requests is 1 while a JSON request waits on its upstream, 0 after', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const m = await mock(async (req, res) => {
      await Promise.race([held, sleep(5_000)]);
      answerChat(res, req.body, 'done');
    });
    const gw = await singleRoute(m);
    const pending = postChat(gw, { model: 'r', messages: HI });
    await until('the upstream to be called', () => m.received.length === 1);
    expect(value(await metrics(gw.url), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(
      1,
    );
    release();
    expect((await pending).status).toBe(200);
    expect(value(await metrics(gw.url), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(
      0,
    );
  });

  it('tokens_total is estimated when a JSON answer reports no usage (README)', async () => {
    const m = await mock((req, res) =>
      sendJson(res, 200, {
        id: 'x',
        object: 'chat.completion',
        created: 1,
        model: String(req.body.model),
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: 'one two three four five six' },
            finish_reason: 'stop',
          },
        ],
      }),
    );
    const gw = await gateway({
      providers: [simProvider('a', m.url, [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 1 } }])],
      routes: { r: { targets: ['a/m'] } },
    });
    const r = await postChat(gw, {
      model: 'r',
      messages: [{ role: 'user', content: 'please count to six for me' }],
    });
    expect(r.status).toBe(200);
    const s = await metrics(gw.url);
    const p = value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'prompt' }) ?? 0;
    const c = value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' }) ?? 0;
    expect(p).toBeGreaterThan(0);
    expect(c).toBeGreaterThan(0);
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'm' })).toBeCloseTo(
      (p + c) / 1e6,
      12,
    );
  });
});

describe('more README refinements of §2 and §5', () => {
  it("an upstream merely cut off by the router's timeout_ms is not excluded: it may still serve the request (README)", async () => {
    const slowRouter = await mock(async (req, res) => {
      if (isRouterCall(req.body)) {
        await sleep(2_000);
        if (!res.destroyed) answerChat(res, req.body, '{"tier":"fast","reason":"late"}');
        return;
      }
      answerChat(res, req.body, 'served');
    });
    const gw = await gateway({
      providers: [simProvider('s', slowRouter.url, ['m'])],
      routes: {
        t: {
          tiers: { fast: ['s/m'], balanced: ['s/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 300 },
        },
      },
    });
    const r = await postChat(gw, { model: 't', messages: HI });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.headers['x-router-provider']).toBe('s');
    expect(r.ms).toBeLessThan(1_800);
    const s = await metrics(gw.url);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'timeout' })).toBe(
      1,
    );
  }, 10_000);

  it('embeddings: prompt tokens are estimated when the upstream reports no usage (README: "estimated when it reports none")', async () => {
    const m = await mock((req, res) =>
      sendJson(res, 200, {
        object: 'list',
        model: String(req.body.model),
        data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2, 0.3] }],
      }),
    );
    const gw = await gateway({
      providers: [
        simProvider('e', m.url, [
          { name: 'emb', capabilities: ['embeddings'], price: { input_per_mtok: 1, output_per_mtok: 0 } },
        ]),
      ],
      routes: { emb: { targets: ['e/emb'] } },
    });
    const r = await postChat(
      gw,
      { model: 'emb', input: 'the quick brown fox jumps over the lazy dog' },
      { path: '/v1/embeddings' },
    );
    expect(r.status, r.text).toBe(200);
    const s = await metrics(gw.url);
    const p = value(s, 'llm_router_tokens_total', { provider: 'e', model: 'emb', kind: 'prompt' }) ?? 0;
    expect(p).toBeGreaterThan(0);
  });

  it("a hybrid route's own weights (SPEC's smart: 0.3 / 0.5 / 0.2) are the ones its decision uses; plain hybrid is 0.4 / 0.4 / 0.2", async () => {
    const m = await mock(okHandler);
    const gw = await gateway({
      providers: [
        simProvider('a', m.url, [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } }]),
        simProvider('b', m.url, [{ name: 'm', price: { input_per_mtok: 3, output_per_mtok: 6 } }]),
      ],
      routes: {
        smart: {
          strategy: { hybrid: { cost_weight: 0.3, latency_weight: 0.5, reliability_weight: 0.2 } },
          targets: ['a/m', 'b/m'],
        },
        plain: { strategy: 'hybrid', targets: ['a/m', 'b/m'] },
      },
    });
    const explain = async (model: string): Promise<string> => {
      const res = await request(`${gw.url}/router/explain`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: HI, max_tokens: 50 }),
      });
      expect(res.statusCode).toBe(200);
      return JSON.stringify(await res.body.json());
    };
    const smart = await explain('smart');
    expect(smart).toMatch(/cost[^"]*x 0\.3\b/);
    expect(smart).toMatch(/latency[^"]*x 0\.5\b/);
    expect(smart).toMatch(/reliability[^"]*x 0\.2\b/);
    const plain = await explain('plain');
    expect(plain).toMatch(/cost[^"]*x 0\.4\b/);
    expect(plain).toMatch(/latency[^"]*x 0\.4\b/);
    expect(plain).toMatch(/reliability[^"]*x 0\.2\b/);
  });
});
