/**
 * Audit of SPEC §3 (YAML config, substitution, reload), §6 (CLI), §7 (scale-out over Redis) and the §8
 * "Config" bullet, written from SPEC.md and README.md, run against the built CLI as a real process where
 * that is what a user runs.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway } from '../helpers/gateway.js';
import { REPO_ROOT, cliWorkDir, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { parseProm, value } from '../helpers/prom-text.js';
import { REDIS_MISSING, REDIS_SERVER, freePort, startRedis, type TestRedis } from '../helpers/redis.js';
import { specExample } from '../helpers/spec-example.js';

const track = closeAfterEach();
const workDir = cliWorkDir('audit-cc');
let files = 0;

// ---------------------------------------------------------------------------------------------------
// helpers

interface Ran {
  code: number | string;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `node dist/main.js ...args` to its end (killed after timeoutMs), with only PATH and `env`. */
function runCli(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<Ran> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
      cwd: opts.cwd ?? REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 8_000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal ?? -1, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

const check = (path: string, env: Record<string, string> = {}) =>
  runCli(['check', '--config', path], { env });

/** Writes a config file (text or bytes) in this file's work directory; returns its path. */
function cfg(text: string | Buffer, name = `c${++files}.yaml`): string {
  const path = join(workDir(), name);
  writeFileSync(path, text);
  return path;
}

const STACK = /\n\s+at .+(:\d+:\d+|\(node:)/;

async function sim(name: string, o: Parameters<typeof startSimulator>[0] = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

async function cli(path: string, args: string[] = [], env: Record<string, string> = {}): Promise<CliProcess> {
  const c = await startCli(path, args, env);
  track({ close: () => c.kill() });
  return c;
}

interface Chat {
  status: number;
  provider: string | undefined;
  trail: string | undefined;
  text: string;
  json: Record<string, unknown>;
  ms: number;
}

async function chat(
  base: string,
  model: string,
  opts: { key?: string; stream?: boolean; headers?: Record<string, string> } = {},
): Promise<Chat> {
  const t0 = performance.now();
  const res = await request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(opts.key !== undefined ? { authorization: `Bearer ${opts.key}` } : {}),
      ...opts.headers,
    },
    body: JSON.stringify({
      model,
      stream: opts.stream ?? false,
      messages: [{ role: 'user', content: 'hi' }],
    }),
    headersTimeout: 8_000,
    bodyTimeout: 8_000,
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* a stream */
  }
  const h = (n: string) => {
    const v = res.headers[n];
    return Array.isArray(v) ? v.join(',') : v;
  };
  return {
    status: res.statusCode,
    provider: h('x-router-provider'),
    trail: h('x-router-trail'),
    text,
    json,
    ms: performance.now() - t0,
  };
}

interface Status {
  upstreams: {
    id: string;
    breaker: { state: string; consecutive_failures: number };
    stats: { requests: number; failures: number; successes: number };
    in_flight: number;
  }[];
  routes: { name: string; strategy: string; targets: string[] }[];
  state?: { backend: string; connected?: boolean };
}

async function getText(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ code: number; text: string }> {
  const res = await request(url, { headers, headersTimeout: 5_000, bodyTimeout: 5_000 });
  return { code: res.statusCode, text: await res.body.text() };
}

async function status(base: string): Promise<Status> {
  return JSON.parse((await getText(`${base}/router/status`)).text) as Status;
}

async function metrics(base: string) {
  return parseProm((await getText(`${base}/metrics`)).text);
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** YAML for one provider per simulator (model `m`), the routes given, and extra lines. */
function yaml(
  sims: readonly Simulator[],
  routes: Record<string, string[]>,
  opts: { strategy?: string; extra?: string[]; server?: string; model?: string } = {},
): string {
  return [
    `server: { host: 127.0.0.1, port: 0, shutdown_grace_ms: 2000${opts.server ?? ''} }`,
    'providers:',
    ...sims.map(
      (s) =>
        `  - { name: ${s.options.name}, base_url: "${s.url}/v1", models: [{ name: m${opts.model ?? ''} }] }`,
    ),
    'routes:',
    ...Object.entries(routes).map(
      ([name, targets]) =>
        `  ${name}: { strategy: ${opts.strategy ?? 'priority'}, targets: [${targets.join(', ')}] }`,
    ),
    ...(opts.extra ?? []),
  ].join('\n');
}

const reloaded = (c: CliProcess, n: number) => () =>
  c.logs.filter((l) => l.msg === 'config reloaded').length >= n;
const rejected = (c: CliProcess, n: number) => () =>
  c.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload rejected')).length >= n;

/** A minimal valid config whose upstreams are never called. */
const BASE = [
  'server: { host: 127.0.0.1, port: 0 }',
  'providers:',
  '  - name: a',
  '    base_url: http://127.0.0.1:1/v1',
  '    models: [{ name: m }]',
  'routes:',
  '  main: { strategy: priority, targets: [a/m] }',
].join('\n');

// ---------------------------------------------------------------------------------------------------
// §3 and §8: what the loader accepts and refuses (through `llm-edge-router check`)

/** SPEC §3's example block, as written in SPEC.md. */
const SPEC_EXAMPLE = specExample();

const SPEC_ENV = {
  GATEWAY_API_KEY: 'gw-client-key-1',
  GATEWAY_ADMIN_KEY: 'gw-admin-key-1',
  OPENAI_API_KEY: 'sk-openai-secret-1',
  ANTHROPIC_API_KEY: 'sk-ant-secret-1',
};

describe('SPEC and README example configs', () => {
  it("SPEC §3's block as written: its only errors are its undeclared upstreams, each with SPEC's path format", async () => {
    const r = await check(cfg(SPEC_EXAMPLE), SPEC_ENV);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('routes.smart.targets[0]: unknown upstream "openai/gpt-4o"');
    expect(r.stderr).toContain('routes.smart.targets[1]: unknown upstream "anthropic/claude-sonnet-4-5"');
    expect(r.stderr).toContain('routes.auto.tiers.balanced[0]: unknown upstream "openai/gpt-4o"');
    expect(r.stderr).toContain('routes.auto.tiers.deep[0]: unknown upstream "anthropic/claude-opus-4-1"');
    expect(r.stderr).not.toMatch(STACK);
    for (const s of Object.values(SPEC_ENV)) expect(r.stdout + r.stderr).not.toContain(s);
  });

  it("SPEC §3's block with those models declared loads, with and without its env; check prints every route and upstream, no secret", async () => {
    const text = SPEC_EXAMPLE.replace(
      '        capabilities: [tools, json, vision, stream]   # or [embeddings] for an embedding model\n',
      '        capabilities: [tools, json, vision, stream]   # or [embeddings] for an embedding model\n      - name: gpt-4o\n',
    ).replace(
      '        price: { input_per_mtok: 1.0, output_per_mtok: 5.0 }\n',
      '        price: { input_per_mtok: 1.0, output_per_mtok: 5.0 }\n      - name: claude-sonnet-4-5\n      - name: claude-opus-4-1\n',
    );
    const path = cfg(text);
    const [withEnv, without] = await Promise.all([check(path, SPEC_ENV), check(path)]);
    expect(withEnv.stderr).toBe('');
    expect(withEnv.code).toBe(0);
    for (const r of ['fast', 'smart', 'auto'])
      expect(withEnv.stdout).toMatch(new RegExp(`^\\s*${r}\\b`, 'm'));
    for (const u of [
      'openai/gpt-4o-mini',
      'openai/gpt-4o',
      'anthropic/claude-haiku-4-5',
      'anthropic/claude-sonnet-4-5',
      'anthropic/claude-opus-4-1',
    ])
      expect(withEnv.stdout).toContain(u);
    for (const s of Object.values(SPEC_ENV)) expect(withEnv.stdout + withEnv.stderr).not.toContain(s);
    // Keys unset: "A provider whose api_key resolves empty is disabled with one warning line, not a crash."
    expect(without.code).toBe(0);
    expect(without.stdout).toContain('disabled');
  });

  it("README's scale-out state line loads with REDIS_PASSWORD set, and check never prints the password", async () => {
    const path = cfg(
      `${BASE}\nstate: { backend: redis, url: "redis://:\${REDIS_PASSWORD}@redis:6379/0", key_prefix: "llm-router:" }\n`,
    );
    const r = await check(path, { REDIS_PASSWORD: 'pw-Zq81x' });
    expect(r.code).toBe(0);
    expect(r.stdout + r.stderr).not.toContain('pw-Zq81x');
  });
});

describe('config rejections name their YAML path, all at once, never a stack trace (§3, §8)', () => {
  it('unknown keys at every level, misspelled, are each reported with their path in one run', async () => {
    const r = await check(
      cfg(`rout: {}
server: { host: 127.0.0.1, port: 0, hots: x }
providers:
  - name: a
    kynd: openai
    base_url: http://127.0.0.1:1/v1
    timeouts: { conect_ms: 5 }
    models: [{ name: m, price: { input_per_mtok: 1, ouput_per_mtok: 2 }, capabilites: [tools] }, { name: n }]
routes:
  main: { strategy: { hybrid: { cost_weight: 1, latncy_weight: 2 } }, targets: [{ target: a/m, wieght: 2 }] }
  auto:
    tiers: { fast: [a/m], balanced: [a/n] }
    rules:
      - { nam: x, if: { max_prompt_tokens: 10, toolz: true }, tier: fast }
    default_tier: balanced
    router: { tier: fast, timeout: 5 }
    on_stream_failur: terminate
routing: { tie_epsilon: 0.1, max_atempts: 2 }
circuit_breaker: { open_msec: 1 }
`),
    );
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBe('SIGKILL');
    for (const p of [
      'rout',
      'server.hots',
      'providers[0].kynd',
      'providers[0].timeouts.conect_ms',
      'providers[0].models[0].price.ouput_per_mtok',
      'providers[0].models[0].capabilites',
      'routes.main.strategy.hybrid.latncy_weight',
      'routes.main.targets[0].wieght',
      'routes.auto.rules[0].nam',
      'routes.auto.rules[0].if.toolz',
      'routes.auto.router.timeout',
      'routes.auto.on_stream_failur',
      'routing.max_atempts',
      'circuit_breaker.open_msec',
    ])
      expect(r.stderr).toMatch(new RegExp(`^\\s*${p.replace(/[.[\]]/g, '\\$&')}: unknown key`, 'm'));
    expect(r.stderr).not.toMatch(STACK);
    expect(r.stdout).not.toContain(': ok');
  });

  it('wrong types and impossible values deep in the tree, and a semantic error, each name their path', async () => {
    const r = await check(
      cfg(`server: { host: 127.0.0.1, port: 99999 }
providers:
  - name: a
    base_url: http://127.0.0.1:1/v1
    timeouts: { connect_ms: -5 }
    models: [{ name: m, price: { input_per_mtok: cheap } }, { name: n, capabilities: [tools, teleport] }]
routes:
  main: { strategy: fastest, targets: [a/m] }
routing: { max_attempts: 0 }
circuit_breaker: { failure_threshold: "five" }
`),
    );
    expect(r.code).not.toBe(0);
    for (const p of [
      'server.port',
      'providers[0].timeouts.connect_ms',
      'providers[0].models[0].price.input_per_mtok',
      'providers[0].models[1].capabilities[1]',
      'routes.main.strategy',
      'routing.max_attempts',
      'circuit_breaker.failure_threshold',
    ])
      expect(r.stderr).toContain(`${p}:`);
    expect(r.stderr).not.toMatch(STACK);
  });

  it('YAML-level problems: duplicate key, tab indentation, a list, a scalar, an empty or comment-only file, two documents', async () => {
    const cases: [string, RegExp][] = [
      [`${BASE}\nserver: { port: 1 }\n`, /duplicate|duplicated/i],
      ['server:\n\thost: 127.0.0.1\n', /tab/i],
      ['- a\n- b\n', /./],
      ['hello\n', /./],
      ['', /empty/i],
      ['# nothing here\n', /empty/i],
      [`${BASE}\n---\nrouts: {}\n`, /document/i],
    ];
    const runs = await Promise.all(cases.map(([text]) => check(cfg(text))));
    runs.forEach((r, i) => {
      expect(r.code, cases[i]![0]).not.toBe(0);
      expect(r.code, cases[i]![0]).not.toBe('SIGKILL');
      expect(r.stderr, cases[i]![0]).toMatch(cases[i]![1]);
      expect(r.stderr, cases[i]![0]).not.toMatch(STACK);
    });
  });

  it('non-UTF-8 and UTF-16 files are refused with a message; a UTF-8 BOM is fine', async () => {
    const latin1 = Buffer.concat([
      Buffer.from(BASE.replace('name: m', 'name: "caf')),
      Buffer.from([0xe9, 0x22]),
    ]);
    const utf16 = Buffer.from(`\ufeff${BASE}`, 'utf16le');
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(BASE)]);
    const [a, b, c] = await Promise.all([check(cfg(latin1)), check(cfg(utf16)), check(cfg(bom))]);
    for (const r of [a, b]) {
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/UTF-8/);
      expect(r.stderr).not.toMatch(STACK);
    }
    expect(c.stderr).toBe('');
    expect(c.code).toBe(0);
  });

  it('a 100 MB file and a billion-laughs file are refused quickly, with a message, without blowing up memory', async () => {
    const big = cfg(`${BASE}\n#${'x'.repeat(100 * 1024 * 1024)}\n`, 'big.yaml');
    const lines = ['server: { host: 127.0.0.1, port: 0 }', 'a: &a [x,x,x,x,x,x,x,x,x,x]'];
    let prev = 'a';
    for (const c of 'bcdefghi') {
      lines.push(`${c}: &${c} [${Array(10).fill(`*${prev}`).join(',')}]`);
      prev = c;
    }
    const [r1, r2] = await Promise.all([check(big), check(cfg(lines.join('\n')))]);
    rmSync(big);
    for (const r of [r1, r2]) {
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stderr.length).toBeGreaterThan(0);
      expect(r.stderr.length).toBeLessThan(2_000);
      expect(r.stderr).not.toMatch(STACK);
    }
    expect(r1.stderr).toMatch(/limit|too large|bytes/i);
  });

  // SPEC §8: "the file must be UTF-8 and of bounded size; every rejection is a message with its path, not a stack trace"
  it('a config path that is a directory is a message naming it, not a stack trace', async () => {
    const dir = join(workDir(), 'a-directory.yaml');
    mkdirSync(dir, { recursive: true });
    const r = await check(dir);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(dir);
    expect(r.stderr).not.toMatch(STACK);
  });

  // SPEC §8: "the file must be UTF-8 and of bounded size" (a config streamed through a pipe, e.g. `--config <(envsubst < x)`)
  it('a config read from a pipe is bounded too: the reader stops long before 24 MB have been pushed into it', async () => {
    const fifo = join(workDir(), `pipe-${++files}.yaml`);
    await new Promise<void>((resolve, reject) => {
      const p = spawn('mkfifo', [fifo]);
      p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mkfifo ${code}`))));
    });
    const checking = check(fifo);
    const fh = await open(fifo, 'w');
    const chunk = Buffer.from(`#${'x'.repeat(1024 * 1024 - 2)}\n`);
    let written = 0;
    try {
      for (let i = 0; i < 24; i++) {
        const { bytesWritten } = await fh.write(chunk);
        written += bytesWritten;
      }
    } catch {
      /* EPIPE: the reader has gone, as it should */
    } finally {
      await fh.close().catch(() => undefined);
    }
    const r = await checking;
    unlinkSync(fifo);
    expect(r.code).not.toBe(0);
    expect(r.stderr).not.toMatch(STACK);
    expect(written).toBeLessThan(8 * 1024 * 1024);
  });

  it('YAML anchors and aliases in ordinary use (shared timeouts and model lists across 60 providers) load', async () => {
    const lines = [
      'server: { host: 127.0.0.1, port: 0 }',
      'providers:',
      "  - { name: p0, base_url: 'http://127.0.0.1:1/v1', timeouts: &t { connect_ms: 1000, total_ms: 5000 }, models: &ms [{ name: m, price: { input_per_mtok: 1, output_per_mtok: 2 } }, { name: n }] }",
    ];
    for (let i = 1; i < 60; i++)
      lines.push(`  - { name: p${i}, base_url: 'http://127.0.0.1:1/v1', timeouts: *t, models: *ms }`);
    lines.push(
      'routes:',
      `  main: { targets: [${Array.from({ length: 60 }, (_, i) => `p${i}/m`).join(', ')}] }`,
    );
    const r = await check(cfg(lines.join('\n')));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('p59/n');
  });
});

describe('${VAR} substitution (§3, §8)', () => {
  it('is one pass on parsed scalars: a value holding ${OTHER}, quotes, commas, braces or brackets stays data', async () => {
    const s = await sim('a');
    const text = [
      'server: { host: 127.0.0.1, port: 0, api_keys: ["${CK}"], admin_key: "${ADM}" }',
      'providers:',
      `  - { name: a, base_url: "${s.url}/v1", api_key: "\${PK}", models: [{ name: m }] }`,
      'routes:',
      '  main: { strategy: priority, targets: [a/m] }',
    ].join('\n');
    const env = {
      CK: 'ck1", "ck2',
      ADM: '${PK}',
      PK: "pk} ${CK} ]' routing: { max_attempts: 1 }",
    };
    const gw = track(await startGateway(text, { env }));
    // The client key is one string, never two keys.
    expect((await chat(gw.url, 'main', { key: 'ck2' })).status).toBe(401);
    expect((await chat(gw.url, 'main', { key: 'ck1' })).status).toBe(401);
    expect((await chat(gw.url, 'main', { key: 'ck1", "ck2' })).status).toBe(200);
    // The admin key is the literal text ${PK}, not PK's value.
    const admin = (k: string) => getText(`${gw.url}/router/status`, { 'x-admin-key': k });
    expect((await admin(env.PK)).code).toBe(401);
    expect((await admin('${PK}')).code).toBe(200);
    // The provider got the value as it is, and it added no routing key.
    expect(s.requests.at(-1)?.headers.authorization).toBe(`Bearer ${env.PK}`);
  });

  it('a variable holding YAML where a map belongs is a string (a type error with the path), never a map', async () => {
    const r = await check(cfg(`${BASE}\nrouting: \${R}\ncircuit_breaker:\n  failure_threshold: \${N}\n`), {
      R: '{ max_attempts: 1 }',
      N: 'two',
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^\s*routing: /m);
    expect(r.stderr).toMatch(/^\s*circuit_breaker\.failure_threshold: /m);
    expect(r.stderr).not.toMatch(STACK);
  });

  it('numbers may come from the environment, ${VAR:-default} applies to unset and empty, and an unset variable without default names path and variable', async () => {
    const text = `server: { host: 127.0.0.1, port: 0 }
providers:
  - name: a
    base_url: \${URL:-http://127.0.0.1:1/v1}
    models: [{ name: m }]
routes:
  main: { strategy: priority, targets: [a/m] }
routing:
  max_attempts: \${N:-2}
  total_timeout_ms: \${T}
`;
    const path = cfg(text);
    const [ok, empty, unset] = await Promise.all([
      check(path, { N: '4', T: '1000' }),
      check(path, { URL: '', N: '', T: '1000' }),
      check(path, { N: '4' }),
    ]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(empty.stderr).toBe('');
    expect(empty.code).toBe(0);
    expect(unset.code).not.toBe(0);
    expect(unset.stderr).toMatch(/routing\.total_timeout_ms: .*\bT\b/);
  });
});

describe('${...} that is neither ${VAR} nor ${VAR:-default} (§3)', () => {
  // SPEC §3: "Unknown keys are errors (typos must not pass silently)"; only `${VAR}` and `${VAR:-default}` are substituted.
  it('a malformed placeholder (shell forms ${VAR-x} and ${VAR:?msg}, spaces, unclosed) is refused with its path, not used as a literal key', async () => {
    const text = [
      'server: { host: 127.0.0.1, port: 0, admin_key: "${GATEWAY_ADMIN_KEY-}" }',
      'providers:',
      '  - { name: a, base_url: "http://127.0.0.1:1/v1", api_key: "${ OPENAI_API_KEY }", models: [{ name: m }] }',
      '  - { name: b, base_url: "http://127.0.0.1:2/v1", api_key: "${B_KEY:?must be set}", models: [{ name: m }] }',
      '  - { name: c, base_url: "http://127.0.0.1:3/v1", api_key: "${C_KEY", models: [{ name: m }] }',
      'routes:',
      '  main: { strategy: priority, targets: [a/m, b/m, c/m] }',
    ].join('\n');
    const r = await check(cfg(text), {
      GATEWAY_ADMIN_KEY: 'adm',
      OPENAI_API_KEY: 'sk-o',
      B_KEY: 'sk-b',
      C_KEY: 'sk-c',
    });
    expect(r.code).not.toBe(0);
    for (const p of [
      'server.admin_key',
      'providers[0].api_key',
      'providers[1].api_key',
      'providers[2].api_key',
    ])
      expect(r.stderr).toContain(`${p}:`);
  });
});

describe('a provider whose api_key resolves empty (§3)', () => {
  it('is disabled with one warning line; the gateway serves the others and a route that only has it answers OpenAI-shaped', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const e = await sim('e');
    const text = [
      'server: { host: 127.0.0.1, port: 0 }',
      'providers:',
      `  - { name: a, base_url: "${a.url}/v1", api_key: "\${A_KEY}", models: [{ name: m }] }`,
      `  - { name: b, base_url: "${b.url}/v1", api_key: "\${B_KEY}", models: [{ name: m }] }`,
      `  - { name: e, base_url: "${e.url}/v1", api_key: "\${E_KEY:-}", models: [{ name: m }] }`,
      'routes:',
      '  both: { strategy: priority, targets: [b/m, e/m, a/m] }',
      '  only_b: { strategy: priority, targets: [b/m] }',
    ].join('\n');
    // B_KEY unset (README: "means no key and is said in a warning"), E_KEY empty through its default.
    const c = await cli(cfg(text), [], { A_KEY: 'sk-a-123456' });
    const warnings = c.logs.filter((l) => Number(l.level) >= 40);
    // SPEC §3: "A provider whose api_key resolves empty is disabled with one warning line"
    expect(warnings.map((w) => String(w.msg))).toHaveLength(2);
    expect(warnings.filter((w) => String(w.msg).includes('"b"')).length).toBe(1);
    expect(warnings.filter((w) => String(w.msg).includes('"e"')).length).toBe(1);
    expect(e.requests).toHaveLength(0);
    const r = await chat(c.url, 'both');
    expect(r.status).toBe(200);
    expect(r.provider).toBe('a');
    const only = await chat(c.url, 'only_b');
    expect(only.status).toBeGreaterThanOrEqual(400);
    expect(only.status).not.toBe(500);
    expect(only.json.error).toMatchObject({ message: expect.any(String) });
    expect(b.requests).toHaveLength(0);
    expect(c.stderr()).toBe('');
  });
});

// ---------------------------------------------------------------------------------------------------
// §6: the CLI

describe('the CLI (§6)', () => {
  it('--host and --port override the file; LLM_ROUTER_CONFIG is used without --config, and --config wins over it', async () => {
    const fileSays = cfg(BASE.replace('host: 127.0.0.1, port: 0', 'host: 0.0.0.0, port: 1'));
    // The three processes are independent: they start together.
    // Without --config, LLM_ROUTER_CONFIG names the file (listening where that file says).
    const routed = cfg(BASE.replace('main:', 'from_env:'));
    const proc = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), '--port', '0'], {
      cwd: workDir(),
      env: { PATH: process.env.PATH ?? '', LLM_ROUTER_CONFIG: routed },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    track({
      close: async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGKILL');
          await new Promise((r) => proc.once('exit', r));
        }
      },
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const [c1, c2] = await Promise.all([
      cli(fileSays, ['--host', '127.0.0.1', '--port', '0']),
      // --config wins over LLM_ROUTER_CONFIG (pointing at a missing file).
      cli(cfg(BASE), [], { LLM_ROUTER_CONFIG: join(workDir(), 'missing.yaml') }),
    ]);
    expect(c1.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(Number(new URL(c1.url).port)).toBeGreaterThan(1);
    expect((await getText(`${c1.url}/healthz`)).code).toBe(200);
    expect((await getText(`${c2.url}/healthz`)).code).toBe(200);

    await until('listening', () => /Server listening at (http:\/\/[\d.:]+)/.test(out), 8_000);
    const url = /Server listening at (http:\/\/[\d.:]+)/.exec(out)![1]!;
    const models = await getText(`${url}/v1/models`);
    expect(models.text).toContain('from_env');
  });

  it('without --config or LLM_ROUTER_CONFIG it reads config/gateway.yaml under the working directory, and watches it', async () => {
    const s1 = await sim('one');
    const dir = join(workDir(), 'default-cwd');
    mkdirSync(join(dir, 'config'), { recursive: true });
    const path = join(dir, 'config', 'gateway.yaml');
    writeFileSync(path, yaml([s1], { dflt: ['one/m'] }));
    const proc = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js')], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    track({
      close: async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGKILL');
          await new Promise((r) => proc.once('exit', r));
        }
      },
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await until('listening', () => /Server listening at (http:\/\/[\d.:]+)/.test(out), 8_000);
    const url = /Server listening at (http:\/\/[\d.:]+)/.exec(out)![1]!;
    expect((await chat(url, 'dflt')).status).toBe(200);
    writeFileSync(path, yaml([s1], { dflt: ['one/m'], second: ['one/m'] }));
    await until('the reload', () => out.includes('config reloaded'), 6_000);
    expect((await chat(url, 'second')).status).toBe(200);
  });

  it('a missing config file: a clear message naming it and a non-zero exit, for the server and for check', async () => {
    const missing = join(workDir(), 'does-not-exist.yaml');
    const [serve, chk, dflt] = await Promise.all([
      runCli(['--config', missing, '--port', '0']),
      check(missing),
      runCli(['--port', '0'], { cwd: workDir() }),
    ]);
    for (const r of [serve, chk]) {
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stderr).toContain(missing);
      expect(r.stderr).not.toMatch(STACK);
    }
    expect(dflt.code).not.toBe(0);
    expect(dflt.code).not.toBe('SIGKILL');
    expect(dflt.stderr).toContain('config/gateway.yaml');
  });

  it('an invalid config stops the server at start: non-zero exit, the YAML path in the message, no stack trace', async () => {
    const r = await runCli([
      '--config',
      cfg(BASE.replace('targets: [a/m]', 'targets: [a/m, openai/gpt-4]')),
      '--port',
      '0',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBe('SIGKILL');
    expect(r.stderr + r.stdout).toContain('routes.main.targets[1]: unknown upstream "openai/gpt-4"');
    expect(r.stderr).not.toMatch(STACK);
  });

  it('bad arguments exit non-zero with a usage message, never a stack trace', async () => {
    const path = cfg(BASE);
    const runs = await Promise.all([
      runCli(['--config', path, '--port', 'abc']),
      runCli(['--config', path, '--port', '70000']),
      runCli(['--config', path, '--bogus']),
      runCli(['frobnicate']),
      runCli(['simulate', '--port', '0', '--kind', 'grpc']),
      runCli(['simulate', '--port', '0', '--fail-rate', '2']),
    ]);
    for (const r of runs) {
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stderr.length).toBeGreaterThan(0);
      expect(r.stderr).not.toMatch(STACK);
    }
  });

  it('simulate --kind anthropic --latency-ms --fail-rate: a real server with that dialect, delay and error rate', async () => {
    const port = await freePort();
    const proc = spawn(
      process.execPath,
      [
        join(REPO_ROOT, 'dist/main.js'),
        'simulate',
        '--port',
        String(port),
        '--kind',
        'anthropic',
        '--latency-ms',
        '300',
        '--tokens-per-s',
        '1000',
        '--fail-rate',
        '1',
      ],
      { cwd: REPO_ROOT, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    track({
      close: async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGKILL');
          await new Promise((r) => proc.once('exit', r));
        }
      },
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await until('the simulator to listen', () => out.includes(String(port)), 8_000);
    const t0 = performance.now();
    const res = await request(`http://127.0.0.1:${port}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': 'k' },
      body: JSON.stringify({
        model: 'claude-haiku-4-5',
        max_tokens: 10,
        messages: [{ role: 'user', content: 'hi' }],
      }),
    });
    const body = (await res.body.json()) as { type?: string; error?: unknown };
    expect(res.statusCode).toBeGreaterThanOrEqual(500);
    expect(body.type).toBe('error'); // Anthropic's error shape
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
  });
});

// ---------------------------------------------------------------------------------------------------
// §3: reload on SIGHUP and on file change

/** Reads a streamed chat response to its end: its text. */
async function streamStart(base: string, model: string) {
  const res = await request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    headersTimeout: 8_000,
    bodyTimeout: 8_000,
  });
  const provider = res.headers['x-router-provider'];
  const it = res.body[Symbol.asyncIterator]();
  let text = String((await it.next()).value ?? '');
  return {
    status: res.statusCode,
    provider,
    first: text,
    rest: async () => {
      for (;;) {
        const next = await it.next();
        if (next.done) break;
        text += String(next.value);
      }
      return text;
    },
  };
}

describe('reload (§3)', () => {
  it('SIGHUP swaps routes while a long stream is in flight: the stream finishes whole on the removed upstream', async () => {
    const slow = await sim('slow', { chunkDelayMs: 100, completionTokens: 15 });
    const other = await sim('other');
    const path = cfg(yaml([slow, other], { main: ['slow/m'] }));
    const c = await cli(path);
    const s = await streamStart(c.url, 'main');
    expect(s.status).toBe(200);
    expect(s.provider).toBe('slow');
    writeFileSync(path, yaml([other], { main: ['other/m'] }));
    c.proc.kill('SIGHUP');
    await until('the reload', reloaded(c, 1));
    expect((await chat(c.url, 'main')).provider).toBe('other');
    expect((await chat(c.url, 'slow/m')).status).toBe(404);
    const text = await s.rest();
    expect(text).toContain('data: [DONE]');
    expect(text).not.toContain('"error"');
    expect(text.match(/"content":"/g)?.length ?? 0).toBeGreaterThanOrEqual(15);
    expect(c.proc.exitCode).toBeNull();
    const m = await metrics(c.url);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'success' })).toBeGreaterThanOrEqual(1);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'slow', model: 'm' }) ?? 0).toBe(0);
    expect(c.stderr()).toBe('');
  });

  it('a request in flight during a reload fails over along its old route, not the new one', async () => {
    const flaky = await sim('flaky', { latencyMs: 700, status: 500 });
    const b = await sim('b');
    const n = await sim('n');
    const path = cfg(yaml([flaky, b, n], { main: ['flaky/m', 'b/m'] }));
    const c = await cli(path);
    const pending = chat(c.url, 'main');
    await flaky.waitForRequests(1);
    writeFileSync(path, yaml([flaky, b, n], { main: ['n/m'] }));
    c.proc.kill('SIGHUP');
    await until('the reload', reloaded(c, 1));
    const r = await pending;
    // "in-flight requests finish on the old one"
    expect(r.status).toBe(200);
    expect(r.provider).toBe('b');
    expect(r.trail).toContain('flaky/m=');
    expect(n.requests).toHaveLength(0);
  });

  it('a failure of a request begun before a reload counts on the breaker the new config keeps', async () => {
    const flaky = await sim('flaky', { latencyMs: 700, status: 500 });
    const b = await sim('b');
    const extra = ['circuit_breaker: { failure_threshold: 1, open_ms: 60000 }'];
    const path = cfg(yaml([flaky, b], { main: ['flaky/m', 'b/m'] }, { extra }));
    const c = await cli(path);
    const pending = chat(c.url, 'main');
    await flaky.waitForRequests(1);
    writeFileSync(path, yaml([flaky, b], { main: ['flaky/m', 'b/m'], other: ['b/m'] }, { extra }));
    c.proc.kill('SIGHUP');
    await until('the reload', reloaded(c, 1));
    expect((await pending).status).toBe(200);
    // "breakers and statistics of upstreams that remain are kept"
    const u = (await status(c.url)).upstreams.find((x) => x.id === 'flaky/m')!;
    expect(u.breaker.state).toBe('open');
    expect(u.stats.failures).toBeGreaterThanOrEqual(1);
    expect(u.in_flight).toBe(0);
    expect((await chat(c.url, 'main')).provider).toBe('b');
    expect(flaky.requests).toHaveLength(1); // skipped: its breaker is open
    const m = await metrics(c.url);
    expect(value(m, 'llm_router_circuit_state', { provider: 'flaky', model: 'm' })).toBe(2);
    expect(value(m, 'llm_router_inflight_requests', { provider: 'flaky', model: 'm' }) ?? 0).toBe(0);
  });

  it('keeps statistics and breaker counts of remaining upstreams, applies a changed breaker setting, drops a removed upstream', async () => {
    const bad = await sim('bad', { status: 500 });
    const good = await sim('good');
    const gone = await sim('gone');
    const cb = (n: number) => [`circuit_breaker: { failure_threshold: ${n}, open_ms: 60000 }`];
    const path = cfg(yaml([bad, good, gone], { main: ['bad/m', 'good/m'], g: ['gone/m'] }, { extra: cb(5) }));
    const c = await cli(path);
    for (let i = 0; i < 2; i++) expect((await chat(c.url, 'main')).provider).toBe('good');
    expect((await chat(c.url, 'g')).status).toBe(200);
    let st = await status(c.url);
    expect(st.upstreams.find((u) => u.id === 'bad/m')?.breaker).toMatchObject({
      state: 'closed',
      consecutive_failures: 2,
    });
    writeFileSync(path, yaml([bad, good], { main: ['bad/m', 'good/m'] }, { extra: cb(3) }));
    c.proc.kill('SIGHUP');
    await until('the reload', reloaded(c, 1));
    st = await status(c.url);
    expect(st.upstreams.map((u) => u.id).sort()).toEqual(['bad/m', 'good/m']);
    expect(st.upstreams.find((u) => u.id === 'good/m')?.stats.successes).toBeGreaterThanOrEqual(2);
    expect(st.upstreams.find((u) => u.id === 'bad/m')?.breaker.consecutive_failures).toBe(2);
    expect((await getText(`${c.url}/v1/models`)).text).not.toContain('gone/m');
    // The third consecutive failure, under the new threshold of 3, opens it.
    expect((await chat(c.url, 'main')).provider).toBe('good');
    expect((await status(c.url)).upstreams.find((u) => u.id === 'bad/m')?.breaker.state).toBe('open');
    expect((await chat(c.url, 'main')).provider).toBe('good');
    expect(bad.requests).toHaveLength(3);
  });

  it('a changed price is charged from the next request on (cost metric and explain)', async () => {
    const a = await sim('a', { completionTokens: 8 });
    const price = (out: number) => `, price: { input_per_mtok: 0, output_per_mtok: ${out} }`;
    const path = cfg(yaml([a], { main: ['a/m'] }, { model: price(1000), strategy: 'cost' }));
    const c = await cli(path);
    expect((await chat(c.url, 'main')).status).toBe(200);
    const cost = async () =>
      value(await metrics(c.url), 'llm_router_cost_usd_total', { provider: 'a', model: 'm' });
    const before = (await cost())!;
    expect(before).toBeCloseTo(0.008, 6);
    writeFileSync(path, yaml([a], { main: ['a/m'] }, { model: price(3000), strategy: 'cost' }));
    await until('the reload', reloaded(c, 1));
    expect((await chat(c.url, 'main')).status).toBe(200);
    expect((await cost())! - before).toBeCloseTo(0.024, 6);
    const explain = await request(`${c.url}/router/explain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(await explain.body.text()).toContain('3000');
  });

  it('invalid reloads (YAML error, unknown key, unset variable, empty file) keep the old config; each counted and logged with its path', async () => {
    const a = await sim('a');
    const path = cfg(yaml([a], { main: ['a/m'] }));
    const c = await cli(path);
    const good = yaml([a], { main: ['a/m'] });
    const bads = [
      good.replace('routes:', 'routes:\n\tbad: x'),
      good.replace('shutdown_grace_ms', 'shutdown_grace_mss'),
      good.replace(`"${a.url}/v1"`, '"${NOT_SET_ANYWHERE}"'),
      '',
    ];
    let n = 0;
    for (const text of bads) {
      writeFileSync(path, text);
      c.proc.kill('SIGHUP');
      await until(`rejection ${n + 1}`, rejected(c, ++n));
      expect((await chat(c.url, 'main')).status).toBe(200);
    }
    const lines = c.logs.filter((l) => String(l.msg).startsWith('config reload rejected'));
    const all = JSON.stringify(lines);
    expect(all).toContain('server.shutdown_grace_mss');
    expect(all).toContain('providers[0].base_url');
    expect(all).not.toMatch(/\\n\s+at /);
    const m = await metrics(c.url);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'failure' })).toBeGreaterThanOrEqual(4);
    expect(value(m, 'llm_router_config_reloads_total', { result: 'success' })).toBe(0);
    expect((await getText(`${c.url}/readyz`)).code).toBe(200);
    expect(c.proc.exitCode).toBeNull();
    expect(c.stderr()).not.toMatch(STACK);
  });

  it('a config path that became a directory: SIGHUP is a rejected reload, the process and the old config live on', async () => {
    const a = await sim('a');
    const path = cfg(yaml([a], { main: ['a/m'] }));
    const c = await cli(path);
    unlinkSync(path);
    mkdirSync(path);
    c.proc.kill('SIGHUP');
    await sleep(400);
    expect(c.proc.exitCode).toBeNull();
    expect((await chat(c.url, 'main')).status).toBe(200);
    await until('the rejection', rejected(c, 1));
    rmSync(path, { recursive: true });
    expect(c.stderr()).not.toMatch(STACK);
  });

  it('sees a file deleted and written again, and a file truncated then filled, ending on the full new config', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const path = cfg(yaml([a, b], { main: ['a/m'] }));
    const c = await cli(path);
    unlinkSync(path);
    await sleep(300);
    writeFileSync(path, yaml([a, b], { main: ['b/m'] }));
    await until('main to move to b', async () => (await chat(c.url, 'main')).provider === 'b', 6_000);
    writeFileSync(path, '');
    await sleep(400);
    writeFileSync(path, yaml([a, b], { main: ['a/m'], later: ['b/m'] }));
    await until('the route "later"', async () => (await chat(c.url, 'later')).status === 200, 6_000);
    expect((await chat(c.url, 'main')).provider).toBe('a');
    // And an editor's write-a-temp-then-rename-over.
    writeFileSync(`${path}.swp`, yaml([a, b], { main: ['b/m'], third: ['a/m'] }));
    renameSync(`${path}.swp`, path);
    await until('the route "third"', async () => (await chat(c.url, 'third')).status === 200, 6_000);
  });

  it('an atomic swap: requests racing repeated reloads all succeed, on one config or the other', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const path = cfg(yaml([a, b], { main: ['a/m'] }));
    const c = await cli(path);
    let stop = false;
    const flips = (async () => {
      for (let i = 0; i < 12 && !stop; i++) {
        writeFileSync(path, yaml([a, b], { main: [i % 2 === 0 ? 'b/m' : 'a/m'], [`r${i}`]: ['a/m'] }));
        c.proc.kill('SIGHUP');
        await sleep(60);
      }
    })();
    const results: Chat[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 15; i++) results.push(await chat(c.url, 'main'));
      }),
    );
    stop = true;
    await flips;
    expect(results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.text.slice(0, 200)}`)).toEqual(
      [],
    );
    expect(new Set(results.map((r) => r.provider))).toEqual(new Set(['a', 'b']));
    expect(c.proc.exitCode).toBeNull();
  });

  it('a reload rotates a provider key: the next upstream request carries the new one', async () => {
    const a = await sim('a');
    const withKey = (k: string) =>
      yaml([a], { main: ['a/m'] }).replace(
        `base_url: "${a.url}/v1",`,
        `base_url: "${a.url}/v1", api_key: "${k}",`,
      );
    const path = cfg(withKey('sk-old-1'));
    const c = await cli(path);
    await chat(c.url, 'main');
    expect(a.requests.at(-1)?.headers.authorization).toBe('Bearer sk-old-1');
    writeFileSync(path, withKey('sk-new-2'));
    await until('the reload', reloaded(c, 1));
    await chat(c.url, 'main');
    expect(a.requests.at(-1)?.headers.authorization).toBe('Bearer sk-new-2');
    expect(c.logs.map((l) => JSON.stringify(l)).join('\n')).not.toMatch(/sk-(old|new)/);
  });
});

// ---------------------------------------------------------------------------------------------------
// §7: scale-out with state: { backend: redis }, replicas as real processes

/** A redis-server of this test's own (optionally with a password); `stop()` kills it. */
async function ownRedis(password?: string): Promise<{ port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  if (password !== undefined) args.push('--requirepass', password);
  const child = spawn(REDIS_SERVER ?? 'redis-server', args, { stdio: 'ignore' });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  };
  track({ close: stop });
  await until(
    'redis-server to listen',
    () =>
      new Promise<boolean>((resolve) => {
        const s = createConnection({ host: '127.0.0.1', port });
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
  );
  return { port, stop };
}

const STATE_TITLE = 'scale-out over Redis (§7)';
describe.skipIf(REDIS_SERVER === undefined)(
  REDIS_SERVER ? STATE_TITLE : `${STATE_TITLE} — skipped: ${REDIS_MISSING}`,
  () => {
    let prefixes = 0;
    const stateLine = (url: string) =>
      `state: { backend: redis, url: "${url}", key_prefix: "audit${++prefixes}-${process.pid}:" }`;

    it('two gateway processes share a breaker: what fails for one is skipped by the other, even after the other reloads', async () => {
      const [redis, bad, good] = await Promise.all([
        startRedis().then((r: TestRedis) => track(Object.assign(r, { close: () => r.stop() }))),
        sim('bad', { status: 500 }),
        sim('good'),
      ]);
      const extra = ['circuit_breaker: { failure_threshold: 1, open_ms: 60000 }', stateLine(redis.url)];
      const text = yaml([bad, good], { main: ['bad/m', 'good/m'] }, { extra });
      const p1 = cfg(text);
      const p2 = cfg(text);
      const [one, two] = await Promise.all([cli(p1), cli(p2)]);
      await until('both connected', async () =>
        (await Promise.all([status(one.url), status(two.url)])).every((s) => s.state?.connected === true),
      );
      // Replica two reloads (a new route) before the breaker opens elsewhere: it must still share.
      writeFileSync(p2, yaml([bad, good], { main: ['bad/m', 'good/m'], other: ['good/m'] }, { extra }));
      two.proc.kill('SIGHUP');
      await until('the reload', reloaded(two, 1));
      const first = await chat(one.url, 'main');
      expect(first.provider).toBe('good');
      expect(bad.requests).toHaveLength(1);
      await until(
        'the open to reach replica two',
        async () => (await status(two.url)).upstreams.find((u) => u.id === 'bad/m')?.breaker.state === 'open',
      );
      const second = await chat(two.url, 'main');
      expect(second.provider).toBe('good');
      expect(second.trail ?? '').toBe('');
      expect(bad.requests).toHaveLength(1);
    });

    it('replicas under different key_prefix values do not share a breaker', async () => {
      const [redis, bad, good] = await Promise.all([
        startRedis().then((r: TestRedis) => track(Object.assign(r, { close: () => r.stop() }))),
        sim('bad', { status: 500 }),
        sim('good'),
      ]);
      const text = () =>
        yaml(
          [bad, good],
          { main: ['bad/m', 'good/m'] },
          {
            extra: ['circuit_breaker: { failure_threshold: 1, open_ms: 60000 }', stateLine(redis.url)],
          },
        );
      const [one, two] = await Promise.all([cli(cfg(text())), cli(cfg(text()))]);
      await until('both connected', async () =>
        (await Promise.all([status(one.url), status(two.url)])).every((s) => s.state?.connected === true),
      );
      expect((await chat(one.url, 'main')).trail).toContain('bad/m');
      await sleep(1_200);
      expect((await status(two.url)).upstreams.find((u) => u.id === 'bad/m')?.breaker.state).toBe('closed');
      expect((await chat(two.url, 'main')).trail).toContain('bad/m');
    });

    it('round-robin turns are shared: requests alternating between two processes alternate upstreams', async () => {
      const [redis, a, b] = await Promise.all([
        startRedis().then((r: TestRedis) => track(Object.assign(r, { close: () => r.stop() }))),
        sim('a'),
        sim('b'),
      ]);
      const text = yaml(
        [a, b],
        { rr: ['a/m', 'b/m'] },
        { strategy: 'round-robin', extra: [stateLine(redis.url)] },
      );
      const [one, two] = await Promise.all([cli(cfg(text)), cli(cfg(text))]);
      await until('both connected', async () =>
        (await Promise.all([status(one.url), status(two.url)])).every((s) => s.state?.connected === true),
      );
      const seq: (string | undefined)[] = [];
      for (let i = 0; i < 10; i++) {
        seq.push((await chat(i % 2 === 0 ? one.url : two.url, 'rr')).provider);
        await sleep(50); // README: a turn never waits for the shared counter's answer; give it time to arrive
      }
      // Replica two's first turn may be taken before it has heard of the fleet's count; from then on they alternate.
      for (let i = 2; i < seq.length; i++) expect(seq[i], seq.join(',')).not.toBe(seq[i - 1]);
    });

    it('Redis killed mid-run: a stream in flight and the requests after it are all served, with no error to the client', async () => {
      const [redis, slow, a] = await Promise.all([
        ownRedis(),
        sim('slow', { chunkDelayMs: 60, completionTokens: 15 }),
        sim('a'),
      ]);
      const text = yaml(
        [slow, a],
        { s: ['slow/m'], rr: ['a/m', 'slow/m'] },
        {
          strategy: 'round-robin',
          extra: [stateLine(`redis://127.0.0.1:${redis.port}`)],
        },
      );
      const c = await cli(cfg(text));
      await until('connected', async () => (await status(c.url)).state?.connected === true);
      const s = await streamStart(c.url, 's');
      await redis.stop();
      const results: Chat[] = [];
      for (let i = 0; i < 10; i++) results.push(await chat(c.url, 'rr'));
      const text2 = await s.rest();
      expect(text2).toContain('data: [DONE]');
      expect(text2).not.toContain('"error"');
      expect(results.map((r) => r.status)).toEqual(Array(10).fill(200));
      expect(results.every((r) => r.ms < 1_500)).toBe(true);
      await until('the outage to show', async () => (await status(c.url)).state?.connected === false);
      expect((await chat(c.url, 'rr')).status).toBe(200);
    });

    it('a password-protected Redis: connects with the password from ${REDIS_PASSWORD}, which never shows in status, metrics, logs or check', async () => {
      const pw = 'Rz9-pass!word';
      const [redis, a] = await Promise.all([ownRedis(pw), sim('a')]);
      const url = `redis://:\${REDIS_PASSWORD}@127.0.0.1:${redis.port}/0`;
      const path = cfg(yaml([a], { main: ['a/m'] }, { extra: [stateLine(url)] }));
      const enc = encodeURIComponent(pw);
      // The two processes are independent: they start together.
      const [c, wrong] = await Promise.all([
        cli(path, [], { REDIS_PASSWORD: enc }),
        cli(cfg(yaml([a], { main: ['a/m'] }, { extra: [stateLine(url)] })), [], {
          REDIS_PASSWORD: 'wrong-Pw-77',
        }),
      ]);
      await until('connected', async () => (await status(c.url)).state?.connected === true);
      expect((await chat(c.url, 'main')).status).toBe(200);
      expect((await chat(wrong.url, 'main')).status).toBe(200);
      await until('the outage line', () => wrong.logs.some((l) => Number(l.level) >= 40));
      expect((await status(wrong.url)).state?.connected).toBe(false);
      const chk = await check(path, { REDIS_PASSWORD: enc });
      expect(chk.code).toBe(0);
      const seen = [
        (await getText(`${c.url}/router/status`)).text,
        (await getText(`${c.url}/metrics`)).text,
        (await getText(`${wrong.url}/router/status`)).text,
        (await getText(`${wrong.url}/metrics`)).text,
        JSON.stringify(c.logs),
        JSON.stringify(wrong.logs),
        c.stderr(),
        wrong.stderr(),
        chk.stdout,
        chk.stderr,
      ].join('\n');
      for (const secret of [pw, enc, 'wrong-Pw-77']) expect(seen).not.toContain(secret);
    });

    it('a "Redis" that accepts and never answers is never on a request\'s path', async () => {
      const sockets = new Set<Socket>();
      let heard = '';
      const hole = createServer((s) => {
        sockets.add(s);
        s.on('data', (d: Buffer) => (heard += d.toString('latin1')));
        s.on('error', () => undefined);
      });
      await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
      track({
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            hole.close(() => r());
          }),
      });
      const port = (hole.address() as { port: number }).port;
      const a = await sim('a');
      const c = await cli(
        cfg(
          yaml(
            [a],
            { main: ['a/m'] },
            { strategy: 'round-robin', extra: [stateLine(`redis://:hole-pw-5@127.0.0.1:${port}`)] },
          ),
        ),
      );
      // The fault is real: the gateway has connected to the hole and is waiting on its AUTH.
      await until('the gateway to connect to the hole and send AUTH', () => heard.includes('hole-pw-5'));
      expect((await status(c.url)).state?.connected).toBe(false);
      const results: Chat[] = [];
      for (let i = 0; i < 6; i++) results.push(await chat(c.url, 'main'));
      expect(results.map((r) => r.status)).toEqual(Array(6).fill(200));
      // Redis commands time out after 1 s: a request waiting on one would take that long.
      expect(results.filter((r) => r.ms > 800).map((r) => Math.round(r.ms))).toEqual([]);
      expect(JSON.stringify(c.logs)).not.toContain('hole-pw-5');
    });
  },
);

describe('signals and CLI overrides across reloads', () => {
  it("an upstream's in-flight count survives a reload: least-busy sends the next request elsewhere", async () => {
    const slow = await sim('slow', { latencyMs: 1_500 });
    const quick = await sim('quick');
    const path = cfg(yaml([slow, quick], { main: ['slow/m', 'quick/m'] }, { strategy: 'least-busy' }));
    const c = await cli(path);
    const pending = chat(c.url, 'main', { headers: { 'x-router-provider': 'slow' } });
    await slow.waitForRequests(1);
    writeFileSync(
      path,
      yaml([slow, quick], { main: ['slow/m', 'quick/m'], x: ['quick/m'] }, { strategy: 'least-busy' }),
    );
    c.proc.kill('SIGHUP');
    await until('the reload', reloaded(c, 1));
    // SPEC §1: "Each upstream has its own circuit breaker, latency/error statistics and in-flight count."
    expect((await status(c.url)).upstreams.find((u) => u.id === 'slow/m')?.in_flight).toBe(1);
    for (let i = 0; i < 3; i++) expect((await chat(c.url, 'main')).provider).toBe('quick');
    expect((await pending).status).toBe(200);
    expect((await status(c.url)).upstreams.find((u) => u.id === 'slow/m')?.in_flight).toBe(0);
    expect(slow.requests).toHaveLength(1);
  });

  // README: "Level: `LOG_LEVEL` or `--log-level`"; SPEC §8: every rejection "a message ..., not a stack trace"
  it('an unknown --log-level or LOG_LEVEL is refused with a message, not a stack trace', async () => {
    const path = cfg(BASE);
    const [flag, env] = await Promise.all([
      runCli(['--config', path, '--port', '0', '--log-level', 'chatty']),
      runCli(['--config', path, '--port', '0'], { env: { LOG_LEVEL: 'chatty' } }),
    ]);
    for (const r of [flag, env]) {
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBe('SIGKILL');
      expect(r.stderr).toContain('chatty');
      expect(r.stderr).not.toMatch(STACK);
    }
  });

  it('a SIGHUP during a SIGTERM drain neither reopens nor kills: the stream finishes and the process exits 0', async () => {
    const slow = await sim('slow', { chunkDelayMs: 100, completionTokens: 12 });
    const path = cfg(yaml([slow], { main: ['slow/m'] }));
    const c = await cli(path);
    const s = await streamStart(c.url, 'main');
    c.proc.kill('SIGTERM');
    await c.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'));
    writeFileSync(path, yaml([slow], { main: ['slow/m'], more: ['slow/m'] }));
    c.proc.kill('SIGHUP');
    await sleep(300); // the reload (if any) has run; the stream (1.2 s) is still going
    expect(c.proc.exitCode, 'the SIGHUP did not kill').toBeNull();
    // Not reopened: the gateway still refuses new work, on the old route and on the new one.
    const after = await Promise.all(
      [`${c.url}/readyz`, `${c.url}/v1/chat/completions`].map((u, i) =>
        request(u, {
          method: i === 0 ? 'GET' : 'POST',
          headers: { 'content-type': 'application/json' },
          body:
            i === 0
              ? undefined
              : JSON.stringify({ model: 'more', messages: [{ role: 'user', content: 'hi' }] }),
          headersTimeout: 3_000,
        }).then(
          async (r) => (await r.body.text(), r.statusCode),
          (e: { code?: string }) => e.code ?? 'error',
        ),
      ),
    );
    expect(
      after.every((x) => x !== 200),
      JSON.stringify(after),
    ).toBe(true);
    const text = await s.rest();
    expect(text).toContain('data: [DONE]');
    expect(await Promise.race([c.exited, sleep(6_000).then(() => 'still running')])).toBe(0);
  });

  it("a reload that leaves the file's server section alone does not claim --host/--port changed", async () => {
    const a = await sim('a');
    const path = cfg(
      yaml([a], { main: ['a/m'] }).replace('host: 127.0.0.1, port: 0', 'host: 0.0.0.0, port: 1'),
    );
    const c = await cli(path, ['--host', '127.0.0.1', '--port', '0']);
    writeFileSync(
      path,
      yaml([a], { main: ['a/m'], other: ['a/m'] }).replace(
        'host: 127.0.0.1, port: 0',
        'host: 0.0.0.0, port: 1',
      ),
    );
    await until('the reload', reloaded(c, 1));
    expect((await chat(c.url, 'other')).status).toBe(200);
    const warned = c.logs.filter((l) => Number(l.level) >= 40);
    expect(warned.map((l) => JSON.stringify(l))).toEqual([]);
  });
});
