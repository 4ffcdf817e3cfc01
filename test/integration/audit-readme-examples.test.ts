/**
 * Audit of README.md's runnable examples: each one run as a newcomer would run it (the shell commands
 * through `sh -c` and the real `curl`/`npx`/`npm`, the TypeScript snippets with the real SDKs, every YAML
 * block written to a file and loaded by `check` and by the CLI), checking the outcome the README describes.
 *
 * Adaptations, each also said where it is made:
 * - ports: the README's :8080 (demo gateway) and :9101 (simulator) become free loopback ports, except in the
 *   last block, which checks the demo's own :8080 default when that port is free;
 * - YAML base_urls and the Scale-out block's Redis host point at loopback (simulators, or a closed port);
 * - Python and Docker examples are not run (no Python client here; no Docker, no network).
 * The demo's providers are the project's own simulators on 127.0.0.1:9101-9103 (fixed by the demo).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, cliWorkDir, ensureBuilt, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { startSimulator, type Simulator } from '../helpers/simulator.js';

onlyLoopbackFetch();
const track = closeAfterEach();
const workDir = cliWorkDir('audit-readme-examples');
const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

/** The fenced blocks of README.md of one language, in order. */
function blocks(lang: string): string[] {
  return [...README.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]!);
}

/** A loopback port nothing listens on right now (bound then released). */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** True when something accepts connections on 127.0.0.1:port. */
async function portBusy(port: number): Promise<boolean> {
  const srv = createServer();
  return new Promise((resolve) => {
    srv.once('error', () => resolve(true));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(false)));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- child processes: every one is tracked and killed (its process group, by id) after its test ------------

interface Child {
  readonly proc: ChildProcess;
  out(): string;
  err(): string;
  readonly exited: Promise<number | string>;
  /** Once its stdout and stderr are closed (after `exited`). */
  readonly closed: Promise<void>;
}

const perTest = new Set<ChildProcess>();
const perFile = new Set<ChildProcess>();

function killTree(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null || p.pid === undefined) return Promise.resolve();
  const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  try {
    process.kill(-p.pid, 'SIGKILL'); // its own group (detached): npm's children die with it
  } catch {
    p.kill('SIGKILL');
  }
  return Promise.race([gone, sleep(5_000)]).then(() => undefined);
}

afterEach(async () => {
  await Promise.all([...perTest].map(killTree));
  perTest.clear();
});
afterAll(async () => {
  await Promise.all([...perFile].map(killTree));
  perFile.clear();
});

function launch(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; shared?: boolean } = {},
): Child {
  const proc = spawn(cmd, args, {
    cwd: opts.cwd ?? REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  (opts.shared === true ? perFile : perTest).add(proc);
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | string>((resolve) =>
    proc.on('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const closed = new Promise<void>((resolve) => proc.on('close', () => resolve()));
  return { proc, out: () => out, err: () => err, exited, closed };
}

/** Runs a command to its end (killed after `timeoutMs`). */
async function runToEnd(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number | string; out: string; err: string }> {
  const c = launch(cmd, args, opts);
  const timer = setTimeout(() => void killTree(c.proc), opts.timeoutMs ?? 10_000);
  const code = await c.exited;
  clearTimeout(timer);
  // The pipes drain by 'close' (at 'exit' they may still hold the last lines); a child left holding them
  // (a backgrounded `&`) bounds the wait.
  await Promise.race([c.closed, sleep(2_000)]);
  return { code, out: c.out(), err: c.err() };
}

/** Runs a README shell line through `sh -c`, with `localhost:8080` made `localhost:PORT`. */
function sh(line: string, port: number): ReturnType<typeof runToEnd> {
  return runToEnd('sh', ['-c', line.replaceAll('localhost:8080', `localhost:${port}`)]);
}

async function waitFor(pred: () => boolean, ms: number, what: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what()}`);
    await sleep(50);
  }
}

/** Parses `curl -D -` output: status line, lower-cased headers, body. */
function parseCurl(out: string): { status: number; headers: Record<string, string>; body: string } {
  const sep = out.indexOf('\r\n\r\n');
  const head = out.slice(0, sep).split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of head.slice(1)) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(head[0]!.split(' ')[1]), headers, body: out.slice(sep + 4) };
}

async function postJson(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string>; json: Record<string, unknown>; text: string }> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(', ') : String(v);
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: h, json, text };
}

const userMsg = (model: string, content = 'Hello!') => ({ model, messages: [{ role: 'user', content }] });

// ---------------------------------------------------------------------------------------------------------

describe('README: `npm install && npm run demo` and everything under "Try it"', () => {
  // Adapted: the README's :8080 is a free loopback port given to the demo as PORT (config/demo.yaml reads
  // `${PORT:-8080}`), so a developer's own demo on :8080 does not collide. The demo's own :8080 is checked last.
  let port = 0;
  let demo: Child | undefined;

  beforeAll(async () => {
    await ensureBuilt();
    // `npm run demo` is `npm run build && node dist/demo.js`: the build is run once for every test file
    // (ensureBuilt), since rebuilding dist/ here would rewrite files other files' CLIs are loading. PORT
    // and DEMO_SIM_PORT=0 put the gateway and its simulators on free ports (the demo runs side by side).
    // A port found free can be taken by a parallel test before the demo listens: then another one is tried.
    for (let tries = 1; ; tries++) {
      port = await freePort();
      demo = launch('node', ['dist/demo.js'], {
        env: { PORT: String(port), DEMO_SIM_PORT: '0' },
        shared: true,
      });
      await waitFor(
        () => demo!.err().includes('demo is up') || demo!.proc.exitCode !== null,
        150_000,
        () => `demo did not come up:\n${demo!.err()}`,
      );
      if (demo.proc.exitCode === null) break;
      const said = `${demo.err()}\n${demo.out()}`;
      if (tries >= 3 || !said.includes('EADDRINUSE')) throw new Error(`demo exited:\n${said}`);
    }
  }, 180_000);

  afterAll(async () => {
    if (demo) {
      await killTree(demo.proc);
      perFile.delete(demo.proc);
    }
  });

  it('says it is up, on the port it was given, in front of three simulated providers', async () => {
    expect(demo!.err()).toContain(`demo is up at http://127.0.0.1:${port}`);
    const status = (await (await request(`http://127.0.0.1:${port}/router/status`)).body.json()) as {
      upstreams: Array<{ provider: string; kind: string }>;
    };
    const providers = new Map(status.upstreams.map((u) => [u.provider, u.kind]));
    // "one cheap and flaky, one fast, one speaking the Anthropic API"
    expect(providers.size).toBe(3);
    expect([...providers.values()].filter((k) => k === 'anthropic')).toHaveLength(1);
  });

  it('the "Try it" curl answers 200 with the x-router-* headers it lists', async () => {
    const line = blocks('sh')[1]!
      .replace(/\\\n\s*/g, ' ')
      .trim();
    expect(line).toContain('localhost:8080/v1/chat/completions');
    const r = await sh(line, port);
    expect(r.code, r.err).toBe(0);
    const res = parseCurl(r.out);
    expect(res.status, r.out).toBe(200);
    for (const h of ['x-router-provider', 'x-router-model', 'x-router-strategy', 'x-router-attempts'])
      expect(res.headers[h], `${h} in\n${r.out}`).toBeTruthy();
    expect(res.headers['x-router-strategy']).toBe('latency'); // route `fast` in config/demo.yaml
    expect('x-router-trail' in res.headers).toBe(true);
    const attempts = Number(res.headers['x-router-attempts']);
    expect(attempts).toBeGreaterThanOrEqual(1);
    // "x-router-trail (each failed attempt as provider/model=reason)"
    const trail = res.headers['x-router-trail']!;
    const failed = trail === '' ? [] : trail.split(',').map((s) => s.trim());
    expect(failed).toHaveLength(attempts - 1);
    for (const f of failed) expect(f).toMatch(/^[\w.-]+\/[\w.-]+=\w+/);
    const body = JSON.parse(res.body) as { object: string; choices: Array<{ message: { content: string } }> };
    expect(body.object).toBe('chat.completion');
    expect(body.choices[0]!.message.content.length).toBeGreaterThan(0);
  });

  it('the OpenAI SDK snippet streams an answer from route `smart`, and `provider/model` addresses one upstream', async () => {
    const ts = blocks('ts')[0]!;
    expect(ts).toContain("baseURL: 'http://localhost:8080/v1'");
    // The snippet as written, but for the port (adapted: a free loopback port instead of 8080).
    const client = new OpenAI({ baseURL: `http://localhost:${port}/v1`, apiKey: 'unused-in-the-demo' });
    const stream = await client.chat.completions.create({
      model: 'smart', // a route name, or `provider/model` to address one upstream
      messages: [{ role: 'user', content: 'Write a haiku about failover.' }],
      stream: true,
    });
    let written = '';
    for await (const chunk of stream) written += chunk.choices[0]?.delta.content ?? '';
    expect(written.length).toBeGreaterThan(0);

    // "or `provider/model` to address one upstream": the Anthropic-dialect one, translated both ways.
    const { data, response } = await client.chat.completions
      .create({
        model: 'claude-sim/sim-sonnet',
        messages: [{ role: 'user', content: 'Write a haiku about failover.' }],
        stream: true,
      })
      .withResponse();
    let viaClaude = '';
    for await (const chunk of data) viaClaude += chunk.choices[0]?.delta.content ?? '';
    expect(viaClaude.length).toBeGreaterThan(0);
    expect(response.headers.get('x-router-provider')).toBe('claude-sim');
    expect(response.headers.get('x-router-model')).toBe('sim-sonnet');
  });

  it('the explain / status / metrics curls answer what their comments say', async () => {
    const lines = blocks('sh')[2]!
      .replace(/\\\n\s*/g, ' ')
      .split('\n')
      .map((l) => l.replace(/\s+#.*$/, '').trim())
      .filter((l) => l !== '');
    expect(lines).toHaveLength(3);

    // "See why a request would go where it goes, without calling anyone"
    const before = (await (await request(`http://127.0.0.1:${port}/router/status`)).body.json()) as {
      upstreams: Array<{ id: string; stats: { requests: number } }>;
    };
    const explain = await sh(lines[0]!, port);
    expect(explain.code).toBe(0);
    const decision = JSON.parse(explain.out) as {
      route: string;
      candidates: Array<{ upstream: string; score: unknown; reason: unknown }>;
    };
    expect(decision.route).toBe('smart');
    expect(decision.candidates.length).toBeGreaterThan(0);
    for (const c of decision.candidates) {
      expect(typeof c.score).toBe('number');
      expect(typeof c.reason).toBe('string');
    }

    // "breakers, live statistics, in-flight per upstream"
    const status = await sh(lines[1]!, port);
    expect(status.code).toBe(0);
    const s = JSON.parse(status.out) as {
      upstreams: Array<{
        id: string;
        breaker: { state: string };
        stats: { requests: number };
        in_flight: number;
      }>;
    };
    expect(s.upstreams.length).toBeGreaterThan(0);
    for (const u of s.upstreams) {
      expect(u.breaker.state).toMatch(/^(closed|open|half[-_]open)$/);
      expect(typeof u.in_flight).toBe('number');
      expect(u.stats).toBeTypeOf('object');
    }
    // ... without calling anyone: no upstream's request count moved.
    const count = (list: typeof before.upstreams) => list.reduce((n, u) => n + u.stats.requests, 0);
    expect(count(s.upstreams)).toBe(count(before.upstreams));

    // "Prometheus"
    await postJson(`http://127.0.0.1:${port}/v1/chat/completions`, userMsg('fast'));
    const metrics = await sh(lines[2]!, port);
    expect(metrics.code).toBe(0);
    expect(metrics.out).toContain('# TYPE llm_router_requests_total counter');
    expect(metrics.out).toMatch(/^llm_router_requests_total\{route="fast",[^}]*status="200"\} \d+/m);
  });

  it('x-router-strategy overrides the strategy, x-router-provider pins a provider, x-router-tier forces a tier', async () => {
    const url = `http://127.0.0.1:${port}/v1/chat/completions`;
    // route `smart` is hybrid over [claude-sim/sim-sonnet, speedy/turbo, budget/small]
    const prio = await postJson(url, userMsg('smart'), { 'x-router-strategy': 'priority' });
    expect(prio.status, prio.text).toBe(200);
    expect(prio.headers['x-router-strategy']).toBe('priority');
    expect(prio.headers['x-router-provider']).toBe('claude-sim');

    const pinned = await postJson(url, userMsg('smart'), { 'x-router-provider': 'speedy' });
    expect(pinned.status, pinned.text).toBe(200);
    expect(pinned.headers['x-router-provider']).toBe('speedy');

    // demo route `auto`: tiers fast / balanced / deep; deep = [claude-sim/sim-sonnet]
    const deep = await postJson(url, userMsg('auto'), { 'x-router-tier': 'deep' });
    expect(deep.status, deep.text).toBe(200);
    expect(deep.headers['x-router-tier']).toBe('deep');
    expect(deep.headers['x-router-provider']).toBe('claude-sim');
    expect(deep.headers['x-router-tier-reason']).toBeTruthy();

    const bogus = await postJson(url, userMsg('auto'), { 'x-router-tier': 'bogus' });
    expect(bogus.status).toBe(400);
    expect(bogus.json).toMatchObject({ error: { param: 'x-router-tier' } });
  });

  it('the Vercel AI SDK: `openai.chat(model)` is routed (generate and stream)', async () => {
    const openai = createOpenAI({ baseURL: `http://localhost:${port}/v1`, apiKey: 'unused-in-the-demo' });
    const gen = await generateText({ model: openai.chat('fast'), prompt: 'Hello!' });
    expect(gen.text.length).toBeGreaterThan(0);
    expect(gen.response.headers?.['x-router-strategy']).toBe('latency');
    const st = streamText({ model: openai.chat('smart'), prompt: 'Write a haiku about failover.' });
    let text = '';
    for await (const part of st.textStream) text += part;
    expect(text.length).toBeGreaterThan(0);
    expect((await st.response).headers?.['x-router-provider']).toBeTruthy();
  });
});

// ---------------------------------------------------------------------------------------------------------

/** Provider lines for the README's tier block: `openai` and `anthropic` on loopback simulators. */
function tierProviders(oa: Simulator, an: Simulator): string {
  return [
    'server: { host: 127.0.0.1, port: 0 }',
    'providers:',
    `  - { name: openai, kind: openai, base_url: "${oa.url}/v1", models: [{ name: gpt-4o-mini }, { name: gpt-4o }] }`,
    `  - { name: anthropic, kind: anthropic, base_url: "${an.url}", api_key: sk-ant-loopback, models: [{ name: claude-haiku-4-5 }, { name: claude-sonnet-4-5 }] }`,
  ].join('\n');
}

function runCli(args: string[], env: Record<string, string> = {}) {
  return runToEnd(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], { env, timeoutMs: 10_000 });
}

describe('README: the YAML blocks load and do what the text says', () => {
  let cli: CliProcess | undefined;
  afterEach(async () => {
    await cli?.kill();
    cli = undefined;
  });

  it('the Tiers block passes `check` and routes by its rules, ties going to the LLM router', async () => {
    const yaml = blocks('yaml')[0]!;
    expect(yaml).toContain('routes:\n  auto:');
    // Every model of the fast tier answers the router's question the same way.
    const verdict = '{"tier":"deep","reason":"looks hard"}';
    const oa = track(await startSimulator({ name: 'openai', reply: verdict, completionTokens: 12 }));
    const an = track(
      await startSimulator({ name: 'anthropic', kind: 'anthropic', reply: verdict, completionTokens: 12 }),
    );
    const file = join(workDir(), 'tiers.yaml');
    // Adapted: providers added (the block names `openai` and `anthropic`), their base_urls on loopback.
    writeFileSync(file, `${tierProviders(oa, an)}\n${yaml}`);
    const check = await runCli(['check', '--config', file]);
    expect(check.code, check.err).toBe(0);
    expect(check.out).toContain(`config ${file}: ok`);
    expect(check.out).toMatch(/auto {2}strategy=hybrid {2}default_tier=balanced {2}router=fast/);

    cli = await startCli(file);
    const url = `${cli.url}/v1/chat/completions`;
    const words = (n: number) => Array.from({ length: n }, (_, i) => `word${i % 50}`).join(' ');

    // `small`: a short prompt without tools is `fast`, the rule named as the reason.
    const small = await postJson(url, userMsg('auto', 'What is the capital of France?'));
    expect(small.status, small.text).toBe(200);
    expect(small.headers['x-router-tier']).toBe('fast');
    expect(small.headers['x-router-tier-reason']).toContain('small');

    // `huge`: a prompt of 20,000+ tokens goes deep (anthropic/claude-sonnet-4-5).
    const huge = await postJson(url, userMsg('auto', words(30_000)));
    expect(huge.status, huge.text.slice(0, 300)).toBe(200);
    expect(huge.headers['x-router-tier']).toBe('deep');
    expect(huge.headers['x-router-tier-reason']).toContain('huge');
    expect(`${huge.headers['x-router-provider']}/${huge.headers['x-router-model']}`).toBe(
      'anthropic/claude-sonnet-4-5',
    );

    // `proofs`: a medium prompt (over 400 tokens, so `small` does not match) that asks to prove goes deep.
    const proof = await postJson(url, userMsg('auto', `${words(1_000)}\nNow prove that it terminates.`));
    expect(proof.status, proof.text.slice(0, 300)).toBe(200);
    expect(proof.headers['x-router-tier']).toBe('deep');
    expect(proof.headers['x-router-tier-reason']).toContain('proofs');

    // A short "prove" matches `small` (fast) and `proofs` (deep): rules that disagree tie, the router decides.
    const tie = await postJson(url, userMsg('auto', 'Prove that 17 is prime.'));
    expect(tie.status, tie.text).toBe(200);
    expect(tie.headers['x-router-tier']).toBe('deep');
    expect(tie.headers['x-router-tier-reason']).toContain('looks hard');

    // No rule matches (a medium prompt): the router is asked.
    const none = await postJson(url, userMsg('auto', words(1_000)));
    expect(none.status, none.text.slice(0, 300)).toBe(200);
    expect(none.headers['x-router-tier']).toBe('deep');
    expect(none.headers['x-router-tier-reason']).toContain('looks hard');

    // "A client can force a tier with the x-router-tier header ... another value is a 400".
    const forced = await postJson(url, userMsg('auto', 'Prove that 17 is prime.'), {
      'x-router-tier': 'balanced',
    });
    expect(forced.status, forced.text).toBe(200);
    expect(forced.headers['x-router-tier']).toBe('balanced');
    expect(`${forced.headers['x-router-provider']}/${forced.headers['x-router-model']}`).toBe(
      'openai/gpt-4o',
    );
    const bad = await postJson(url, userMsg('auto'), { 'x-router-tier': 'medium' });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ error: { param: 'x-router-tier' } });

    // "The Responses API ... a 404 saying so when not [passthrough]" (this config has no passthrough).
    const responses = await postJson(`${cli.url}/v1/responses`, { model: 'auto', input: 'hi' });
    expect(responses.status).toBe(404);
    expect(responses.text).toMatch(/passthrough/i);
  });

  it("the Tiers block's router: asks for 80 tokens, a burst of one prompt is one call, an unparsable answer is default_tier", async () => {
    const yaml = blocks('yaml')[0]!;
    const start = async (reply: string, name: string) => {
      const oa = track(await startSimulator({ name: 'openai', reply, completionTokens: 12 }));
      const an = track(
        await startSimulator({ name: 'anthropic', kind: 'anthropic', reply, completionTokens: 12 }),
      );
      const file = join(workDir(), `${name}.yaml`);
      // Adapted as above: providers added, on loopback simulators.
      writeFileSync(file, `${tierProviders(oa, an)}\n${yaml}`);
      return { oa, an, file, cli: await startCli(file) };
    };
    // Router calls go to `router.tier` (fast: gpt-4o-mini, claude-haiku-4-5); answers to `deep` here.
    const routerCalls = (...sims: Simulator[]) =>
      sims
        .flatMap((s) => s.requests.map((r) => r.body as Record<string, unknown>))
        .filter((b) => ['gpt-4o-mini', 'claude-haiku-4-5'].includes(String(b.model)));

    const a = await start('{"tier":"deep","reason":"looks hard"}', 'burst');
    cli = a.cli;
    const url = `${a.cli.url}/v1/chat/completions`;
    const tie = userMsg('auto', 'Prove that 19 is prime.'); // `small` (fast) and `proofs` (deep) tie
    const burst = await Promise.all(Array.from({ length: 5 }, () => postJson(url, tie)));
    for (const r of burst) {
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-tier']).toBe('deep');
    }
    expect((await postJson(url, tie)).headers['x-router-tier']).toBe('deep'); // cached for cache_ttl_s
    const calls = routerCalls(a.oa, a.an);
    // "a burst is one paid call"
    expect(calls).toHaveLength(1);
    // "the router asks for 80 tokens"
    expect(calls[0]!.max_tokens ?? calls[0]!.max_completion_tokens).toBe(80);
    const metrics = await (await request(`${a.cli.url}/metrics`)).body.text();
    expect(metrics).toMatch(/llm_router_llm_router_requests_total\{tier="deep",outcome="cached"\} [1-9]/);

    // "a reload that leaves the route's tiers and `router` settings as they were keeps the cache":
    // another route added, SIGHUP, the same prompt again.
    appendFileSync(a.file, '\n  extra: { strategy: cost, targets: [openai/gpt-4o] }\n');
    a.cli.proc.kill('SIGHUP');
    const reloaded = async () =>
      /llm_router_config_reloads_total\{result="success"\} [1-9]/.test(
        await (await request(`${a.cli.url}/metrics`)).body.text(),
      );
    const deadline = Date.now() + 5_000;
    while (!(await reloaded())) {
      if (Date.now() > deadline) throw new Error('no successful reload within 5 s');
      await sleep(100);
    }
    const again = await postJson(url, tie);
    expect(again.headers['x-router-tier']).toBe('deep');
    expect(routerCalls(a.oa, a.an)).toHaveLength(1);
    await a.cli.kill();

    // "on any failure default_tier is used ... never fail it": an answer that is no verdict.
    const b = await start('I would rather not say.', 'unparsable');
    cli = b.cli;
    const r = await postJson(`${b.cli.url}/v1/chat/completions`, userMsg('auto', 'Prove that 23 is prime.'));
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(`${r.headers['x-router-provider']}/${r.headers['x-router-model']}`).toBe('openai/gpt-4o');
    const m2 = await (await request(`${b.cli.url}/metrics`)).body.text();
    expect(m2).toMatch(/llm_router_llm_router_requests_total\{tier="balanced",outcome="unparsable"\} 1/);
  });

  it('the Scale-out block passes `check`, and a replica with Redis unreachable keeps serving and never logs the password', async () => {
    const yaml = blocks('yaml')[1]!;
    expect(yaml).toContain('state: { backend: redis');
    const sim = track(await startSimulator({ name: 'p' }));
    const deadRedis = await freePort();
    const password = 'pw-audit-0f9c2e';
    // Adapted: the Redis host `redis:6379` becomes a closed loopback port (no network here).
    const state = yaml.replace('@redis:6379/', `@127.0.0.1:${deadRedis}/`);
    expect(state).not.toBe(yaml);
    const file = join(workDir(), 'scale-out.yaml');
    writeFileSync(
      file,
      [
        'server: { host: 127.0.0.1, port: 0 }',
        `providers: [{ name: p, base_url: "${sim.url}/v1", models: [{ name: m }] }]`,
        'routes: { r: { targets: [p/m] } }',
        state,
      ].join('\n'),
    );
    const [check, unset] = await Promise.all([
      runCli(['check', '--config', file], { REDIS_PASSWORD: password }),
      runCli(['check', '--config', file]),
    ]);
    expect(check.code, check.err).toBe(0);
    expect(check.out + check.err).not.toContain(password);
    // Without REDIS_PASSWORD it is an error naming its YAML path (`url` is not one of the exempt keys).
    expect(unset.code).not.toBe(0);
    expect(unset.err).toContain('state.url');

    cli = await startCli(file, [], { REDIS_PASSWORD: password });
    for (let i = 0; i < 3; i++) {
      const r = await postJson(`${cli.url}/v1/chat/completions`, userMsg('r'));
      expect(r.status, r.text).toBe(200);
    }
    await sleep(1_500); // a reconnect or two in the background
    const logged = cli.logs.map((l) => JSON.stringify(l)).join('\n') + cli.stderr();
    // Precondition: the replica did try its Redis and logged the outage (else there is nothing to leak).
    expect(logged).toMatch(/redis/i);
    expect(logged).not.toContain(password);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('README: Configuration commands', () => {
  it('`npx llm-edge-router check --config config/gateway.yaml` validates the shipped file', async () => {
    const line = blocks('sh')
      .map((b) => b.trim())
      .find((b) => b.startsWith('npx llm-edge-router check'))!;
    expect(line).toBe('npx llm-edge-router check --config config/gateway.yaml');
    // Run as written; npm is pointed at a closed loopback registry so nothing can leave the machine.
    const r = await runToEnd('sh', ['-c', line], {
      env: {
        npm_config_registry: 'http://127.0.0.1:9/',
        npm_config_yes: 'false',
        npm_config_offline: 'true',
      },
      timeoutMs: 30_000,
    });
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('config config/gateway.yaml: ok');
    // "A provider whose api_key resolves empty is disabled with one warning."
    expect(r.out.match(/providers\[0\] "openai": api_key is empty/g) ?? []).toHaveLength(1);
  }, 40_000);

  it('with no --config the default is config/gateway.yaml, and LLM_ROUTER_CONFIG wins over it', async () => {
    const other = join(workDir(), 'env.yaml');
    writeFileSync(
      other,
      'providers: [{ name: p, base_url: "http://127.0.0.1:1/v1", models: [{ name: m }] }]\n',
    );
    const [plain, env] = await Promise.all([
      runCli(['check']),
      runCli(['check'], { LLM_ROUTER_CONFIG: other }),
    ]);
    expect(plain.code, plain.err).toBe(0);
    expect(plain.out).toMatch(/config \S*config\/gateway\.yaml: ok/);
    expect(env.code, env.err).toBe(0);
    expect(env.out).toContain(`config ${other}: ok`);
  });

  it("Docker: not run (no Docker here); the compose gateway config passes `check` with the demo's upstreams and routes", async () => {
    // "The compose file runs the same simulators as `npm run demo`": its gateway config must match the demo's.
    const [compose, demo] = await Promise.all([
      runCli(['check', '--config', 'docker/gateway.compose.yaml']),
      runCli(['check', '--config', 'config/demo.yaml']),
    ]);
    expect(compose.code, compose.err).toBe(0);
    const body = (out: string) => out.split('\n').slice(1).join('\n');
    expect(body(compose.out)).toBe(body(demo.out));
  });

  it('`npm test` is "type check + lint + the whole test suite"; `npm run bench -- --quick` is a flag the bench reads', () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    // The checks, then vitest (scripts/test.sh); the type check and the lint side by side within them;
    // either failing fails `npm test`.
    expect(pkg.scripts.test).toBe('bash scripts/test.sh');
    // (test/unit/test-script.test.ts runs it: either failing fails it.)
    expect(pkg.scripts.checks).toMatch(
      /npm run -s typecheck & tc=\$!; npm run -s lint; lint=\$\?; wait \$tc && exit \$lint/,
    );
    expect(pkg.scripts.typecheck).toContain('tsc');
    expect(pkg.scripts.lint).toContain('eslint');
    expect(pkg.scripts.demo).toMatch(/build.*demo/);
    // Not run (a benchmark): only that the bench's entry knows the flag.
    expect(pkg.scripts.bench).toContain('bench/run.js');
    expect(readFileSync(join(REPO_ROOT, 'bench/run.ts'), 'utf8')).toContain('--quick');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('README: The simulator', () => {
  async function startSim(args: string[]): Promise<{ url: string; child: Child }> {
    const child = launch(process.execPath, ['dist/main.js', 'simulate', ...args]);
    await waitFor(
      () => child.out().includes('"listening"') || child.proc.exitCode !== null,
      10_000,
      () => `simulator did not start: ${child.err()}`,
    );
    const line = child
      .out()
      .split('\n')
      .find((l) => l.includes('"listening"'));
    if (line === undefined) throw new Error(`simulator exited: ${child.err()}`);
    return { url: (JSON.parse(line) as { listening: string }).listening, child };
  }

  it('the documented command runs an OpenAI-dialect server with latency, pacing and failures', async () => {
    const port = await freePort();
    // Adapted: --port 9101 becomes a free loopback port.
    const { url } = await startSim(
      '--port 9101 --kind openai --latency-ms 50 --tokens-per-s 100 --fail-rate 0.1'
        .replace('9101', String(port))
        .split(' '),
    );
    expect(url).toBe(`http://127.0.0.1:${port}`);
    const statuses: number[] = [];
    let answer: Record<string, unknown> = {};
    for (let i = 0; i < 30; i++) {
      const r = await postJson(`${url}/v1/chat/completions`, userMsg('x'));
      statuses.push(r.status);
      if (r.status === 200) answer = r.json;
    }
    // ~10 % fail (500 when --status is unset); bounds loose enough for chance.
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(18);
    for (const s of statuses) expect([200, 500]).toContain(s);
    expect(answer).toMatchObject({ object: 'chat.completion' });
  });

  it('its other flags do what the README says', async () => {
    // The six simulators are independent: they start together, each on a port of its own.
    const ports = new Set<number>();
    while (ports.size < 6) ports.add(await freePort());
    const [p1, p2, p3, p4, p5, p6] = [...ports].map(String) as [
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    const [paceSim, every, failing, keyed, claude, drop] = await Promise.all([
      startSim(['--port', p1, '--completion-tokens', '20', '--tokens-per-s', '100']),
      startSim(['--port', p2, '--status', '429', '--retry-after', '7']),
      startSim(['--port', p3, '--fail-rate', '1', '--status', '503']),
      startSim(['--port', p4, '--api-key', 'sk-sim', '--name', 'named']),
      startSim(['--port', p5, '--kind', 'anthropic']),
      startSim(['--port', p6, '--drop-after', '2']),
    ]);
    const url = `${paceSim.url}/v1/chat/completions`;
    // "--tokens-per-s paces a JSON answer too (it arrives when its stream's last token would)": 20 at 100/s.
    const t0 = performance.now();
    const paced = await postJson(url, userMsg('x'));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(150);
    expect(paced.json).toMatchObject({ usage: { completion_tokens: 20 } });
    // "OpenAI's n gets that many choices, and its integer fields out of range (n, max_tokens) get OpenAI's 400"
    const two = await postJson(url, { ...userMsg('x'), n: 2 });
    expect((two.json.choices as unknown[]).length).toBe(2);
    expect((await postJson(url, { ...userMsg('x'), n: 0 })).json).toMatchObject({ error: { param: 'n' } });
    const mt = await postJson(url, { ...userMsg('x'), max_tokens: -1 });
    expect(mt.status).toBe(400);
    expect(mt.json).toMatchObject({ error: { param: 'max_tokens' } });

    // "--status CODE (with --fail-rate, the status its failures answer, 500 if unset; without, every answer)"
    const r429 = await postJson(`${every.url}/v1/chat/completions`, userMsg('x'));
    expect(r429.status).toBe(429);
    expect(r429.headers['retry-after']).toBe('7');
    expect((await postJson(`${failing.url}/v1/chat/completions`, userMsg('x'))).status).toBe(503);

    // --api-key, --name, --kind anthropic
    expect(keyed.child.out()).toContain('"name":"named"');
    expect((await postJson(`${keyed.url}/v1/chat/completions`, userMsg('x'))).status).toBe(401);
    const authed = await postJson(`${keyed.url}/v1/chat/completions`, userMsg('x'), {
      authorization: 'Bearer sk-sim',
    });
    expect(authed.status).toBe(200);
    const msg = await postJson(
      `${claude.url}/v1/messages`,
      { ...userMsg('claude-x'), max_tokens: 50 },
      {
        'anthropic-version': '2023-06-01',
      },
    );
    expect(msg.status, msg.text).toBe(200);
    expect(msg.json).toMatchObject({ type: 'message' });

    // --drop-after K: a stream cut after K chunks (no [DONE]).
    const cut = await request(`${drop.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...userMsg('x'), stream: true }),
    });
    const text = await cut.body.text().catch((e: unknown) => `cut: ${String(e)}`);
    expect(text).not.toContain('[DONE]');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('README: the demo\'s own ":8080"', () => {
  it('without PORT the demo gateway listens on :8080 (checked only when :8080 and 9101-9103 are free)', async () => {
    // The demo config says so whether or not the port can be used here.
    expect(readFileSync(join(REPO_ROOT, 'config/demo.yaml'), 'utf8')).toMatch(/port: \$\{PORT:-8080\}/);
    const busy = [];
    for (const p of [8080, 9101, 9102, 9103]) if (await portBusy(p)) busy.push(p);
    if (busy.length > 0) {
      console.warn(`audit-readme-examples: ports ${busy.join(', ')} taken; the demo's :8080 default not run`);
      return;
    }
    // The built demo (ensureBuilt in the block above), without PORT.
    const demo = launch(process.execPath, ['dist/demo.js']);
    await waitFor(
      () => demo.err().includes('demo is up') || demo.proc.exitCode !== null,
      15_000,
      () => `demo did not come up: ${demo.err()}`,
    );
    if (demo.proc.exitCode !== null && /EADDRINUSE/.test(demo.err())) {
      // Another test file took one of the ports between the check and the bind: nothing to judge here.
      console.warn(`audit-readme-examples: a demo port was taken meanwhile; the :8080 default not run`);
      return;
    }
    expect(demo.err()).toContain('demo is up at http://127.0.0.1:8080');
    // The README's curl exactly as written.
    const r = await runToEnd('sh', [
      '-c',
      blocks('sh')[1]!
        .replace(/\\\n\s*/g, ' ')
        .trim(),
    ]);
    expect(parseCurl(r.out).status, r.out).toBe(200);
  });
});
