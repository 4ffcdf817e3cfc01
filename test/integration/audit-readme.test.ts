/**
 * Audit of README.md ("the user's truth"): the claims that are cheap to check automatically. Config defaults
 * and path-named errors, the schema's keys against the configuration table, the CLI's `check` output and
 * `simulate --help`, headers, error shapes, every metric of the Metrics table (name, type, labels), and files
 * the README names.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { REPO_ROOT, cliWorkDir, ensureBuilt } from '../helpers/cli-harness.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const workDir = cliWorkDir('audit-readme');
const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

const PROVIDER = 'providers: [{ name: p, base_url: "http://127.0.0.1:1/v1", models: [{ name: m }] }]';

function configError(yaml: string): string {
  try {
    parseConfigText(yaml, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(REPO_ROOT, 'dist/main.js'), ...args], {
      cwd: workDir(),
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 8_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out, err });
    });
  });
}

async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string>; json: Record<string, unknown> }> {
  const res = await request(`${url}/v1/chat/completions`, {
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
  return { status: res.statusCode, headers: h, json };
}

const hi = (model: string, extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: 'user', content: 'Hello!' }],
  ...extra,
});

// ---------------------------------------------------------------------------------------------------

describe('README: configuration table', () => {
  it('defaults are as the table states', () => {
    const { config } = parseConfigText(
      `${PROVIDER}\nroutes: { r: { tiers: { fast: [p/m] }, default_tier: fast, router: { tier: fast } } }`,
      {},
    );
    const s = config.server;
    expect([s.host, s.port]).toEqual(['0.0.0.0', 8080]);
    expect(s.api_keys).toEqual([]);
    expect(s.admin_key).toBeUndefined();
    expect(s.metrics_auth).toBe(false);
    expect(s.body_limit_bytes).toBe(10 * 1024 * 1024);
    expect(s.request_timeout_ms).toBe(30_000);
    expect(s.shutdown_grace_ms).toBe(10_000);
    expect(s.passthrough).toBeUndefined();
    expect(s.load_shedding).toMatchObject({
      max_event_loop_delay_ms: 1000,
      max_heap_used_bytes: 0,
      max_rss_bytes: 0,
      max_event_loop_utilization: 0,
      retry_after_s: 5,
    });
    expect(s.rate_limit.requests_per_minute).toBe(0);
    const p = config.providers[0]!;
    expect(p.kind).toBe('openai');
    expect(p.timeouts).toEqual({
      connect_ms: 5000,
      first_byte_ms: 30_000,
      idle_ms: 30_000,
      total_ms: 300_000,
    });
    expect(p.max_concurrency).toBe(4096);
    expect(p.headers).toBeUndefined();
    expect([p.anthropic_version, p.default_max_tokens]).toEqual(['2023-06-01', 4096]);
    const m = p.models[0]!;
    expect(m.price).toEqual({ input_per_mtok: 0, output_per_mtok: 0 });
    expect(m.context_window).toBeUndefined();
    expect(m.capabilities).toEqual(['tools', 'json', 'vision', 'stream']);
    expect(m.upstream_name).toBeUndefined();
    expect(m.weight).toBe(1);
    const r = config.routes.r!;
    expect(r.strategy).toBeUndefined(); // falls back to routing.default_strategy
    expect(r.router).toEqual({ tier: 'fast', timeout_ms: 1500, cache_ttl_s: 300, cache_size: 10_000 });
    expect(config.routing).toMatchObject({
      tie_epsilon: 0.02,
      max_attempts: 3,
      total_timeout_ms: 600_000,
      exploration_share: 0.1,
      min_samples: 3,
    });
    expect(config.circuit_breaker).toEqual({
      failure_threshold: 5,
      open_ms: 30_000,
      max_open_ms: 300_000,
      half_open_probes: 1,
      success_threshold: 3,
    });
    expect(config.state).toEqual({ backend: 'memory' });
  });

  it('an invalid value is an error naming its YAML path', () => {
    const cases: Array<[string, string]> = [
      ['server: { port: 70000 }', 'server.port'],
      ['server: { metrics_auth: maybe }', 'server.metrics_auth'],
      ['server: { body_limit_bytes: 0 }', 'server.body_limit_bytes'],
      ['server: { load_shedding: { retry_after_s: 0 } }', 'server.load_shedding.retry_after_s'],
      ['server: { rate_limit: { requests_per_minute: -1 } }', 'server.rate_limit.requests_per_minute'],
      ['routing: { tie_epsilon: 2 }', 'routing.tie_epsilon'],
      ['routing: { max_attempts: 0 }', 'routing.max_attempts'],
      ['circuit_breaker: { open_ms: 0 }', 'circuit_breaker.open_ms'],
      ["state: { backend: redis, url: 'http://x' }", 'state.url'],
      ['bogus: 1', 'bogus'],
      ['routes: { r: { targets: [p/m, p/m] } }', 'routes.r.targets[1]'],
      ['server: { host: "${VAR-x}" }', 'server.host'],
      ['server: { host: "${UNSET_IN_AUDIT}" }', 'server.host'],
    ];
    for (const [extra, path] of cases) expect(configError(`${PROVIDER}\n${extra}`)).toContain(`  ${path}:`);
    expect(
      configError(
        'providers: [{ name: p, base_url: "http://x/v1", max_concurrency: 0, models: [{ name: m, weight: -1 }] }]',
      ),
    ).toMatch(/providers\[0\]\.max_concurrency:[\s\S]*providers\[0\]\.models\[0\]\.weight:/);
  });

  it('an unset ${VAR} in a provider api_key disables it with exactly one warning', () => {
    const loaded = parseConfigText(
      'providers: [{ name: p, base_url: "http://x/v1", api_key: "${AUDIT_NOPE}", models: [{ name: m }] }]',
      {},
    );
    expect(loaded.disabledProviders.has('p')).toBe(true);
    expect(loaded.warnings.filter((w) => w.includes('providers[0]'))).toHaveLength(1);
  });

  it('every key of the schema is named in the README (the table or the text)', () => {
    // Every config key the schema accepts (src/config/schema.ts), as a user would have to write it.
    const keys = [
      'host', 'port', 'api_keys', 'admin_key', 'metrics_auth', 'body_limit_bytes', 'request_timeout_ms',
      'shutdown_grace_ms', 'passthrough', 'load_shedding', 'max_event_loop_delay_ms', 'max_heap_used_bytes',
      'max_rss_bytes', 'max_event_loop_utilization', 'sample_interval_ms', 'retry_after_s', 'rate_limit',
      'requests_per_minute', 'kind', 'base_url', 'api_key', 'headers', 'timeouts', 'connect_ms',
      'first_byte_ms', 'idle_ms', 'total_ms', 'max_concurrency', 'anthropic_version', 'default_max_tokens',
      'models', 'upstream_name', 'price', 'input_per_mtok', 'output_per_mtok', 'context_window',
      'capabilities', 'weight', 'strategy', 'targets', 'tiers', 'rules', 'default_tier', 'router',
      'on_stream_failure', 'priority', 'min_prompt_tokens', 'max_prompt_tokens', 'tools', 'images',
      'last_user_message', 'header', 'tier', 'timeout_ms', 'cache_ttl_s', 'cache_size', 'default_strategy',
      'tie_epsilon', 'max_attempts', 'total_timeout_ms', 'exploration_share', 'min_samples',
      'failure_threshold', 'open_ms', 'max_open_ms', 'half_open_probes', 'success_threshold', 'backend',
      'url', 'key_prefix', 'cost_weight', 'latency_weight', 'reliability_weight',
    ]; // prettier-ignore
    const undocumented = keys.filter((k) => !README.includes(k));
    expect(undocumented).toEqual([]);
  });
});

describe('README: CLI', () => {
  beforeAll(ensureBuilt, 120_000);

  it('`check --config PATH` prints ok, upstreams and routes; a bad file exits non-zero naming the path', async () => {
    const good = join(workDir(), 'good.yaml');
    writeFileSync(good, `${PROVIDER}\nroutes: { r: { strategy: cost, targets: [p/m] } }\n`);
    const ok = await runCli(['check', '--config', good]);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain(`config ${good}: ok`);
    expect(ok.out).toMatch(/upstreams:\n {2}p\/m {2}kind=openai/);
    expect(ok.out).toMatch(/routes:\n {2}r {2}strategy=cost {2}targets: p\/m/);

    // A deployment's per-minute budget is printed where one is set.
    const limited = join(workDir(), 'limited.yaml');
    writeFileSync(
      limited,
      'providers: [{ name: p, base_url: "http://127.0.0.1:1/v1", models: [{ name: m, rpm: 600, tpm: 90000 }, { name: n }] }]\n' +
        'routes: { r: { targets: [p/m, p/n] } }\n',
    );
    const budgets = await runCli(['check', '--config', limited]);
    expect(budgets.out).toMatch(/^ {2}p\/m .* ctx=unset {2}rpm=600 {2}tpm=90000 {2}\[/m);
    expect(budgets.out).toMatch(/^ {2}p\/n .* ctx=unset {2}\[/m);

    const bad = join(workDir(), 'bad.yaml');
    writeFileSync(bad, `${PROVIDER}\nrouting: { max_attempts: 0 }\n`);
    const no = await runCli(['check', '--config', bad]);
    expect(no.code).not.toBe(0);
    expect(no.err).toContain('routing.max_attempts');

    // LLM_ROUTER_CONFIG stands in for --config.
    const env = await runCli(['check'], { LLM_ROUTER_CONFIG: good });
    expect(env.code).toBe(0);
    expect(env.out).toContain(`config ${good}: ok`);
  });

  it('`simulate --help` lists the flags the README documents', async () => {
    const r = await runCli(['simulate', '--help']);
    expect(r.code).toBe(0);
    for (const f of [
      '--port',
      '--kind',
      '--latency-ms',
      '--tokens-per-s',
      '--fail-rate',
      '--status',
      '--hang',
      '--drop-after',
    ])
      expect(r.out).toContain(f);
  });
});

describe('README: files it names', () => {
  it('exist', () => {
    for (const f of [
      'Dockerfile',
      'docker-compose.yml',
      'config/gateway.yaml',
      'bench/passthrough.ts',
      'bench/README.md',
      'bench/ab-cpu.sh',
      'bench/cpu-per-request.sh',
      'bench/alloc-profile.ts',
      'src/end-of-turn.ts',
      'test/integration/scale-out.test.ts',
      '.ci/run',
    ])
      expect(existsSync(join(REPO_ROOT, f)), f).toBe(true);
    const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toContain('/etc/llm-edge-router/gateway.yaml');
    expect(dockerfile).toMatch(/HEALTHCHECK[\s\S]*\/healthz/);
    expect(dockerfile).toMatch(/^USER (?!root)/m);
  });
});

// ---------------------------------------------------------------------------------------------------

const METRICS: Array<[string, string, string[]]> = [
  ['llm_router_requests_total', 'counter', ['route', 'provider', 'model', 'status']],
  ['llm_router_request_duration_seconds', 'histogram', ['route', 'provider', 'model', 'stream']],
  ['llm_router_time_to_first_token_seconds', 'histogram', ['provider', 'model']],
  ['llm_router_time_per_output_token_seconds', 'histogram', ['provider', 'model']],
  ['llm_router_overhead_seconds', 'histogram', ['route']],
  ['llm_router_upstream_attempts_total', 'counter', ['provider', 'model', 'outcome']],
  ['llm_router_failovers_total', 'counter', ['route', 'from_provider', 'reason']],
  ['llm_router_circuit_state', 'gauge', ['provider', 'model']],
  ['llm_router_circuit_transitions_total', 'counter', ['provider', 'model', 'to']],
  ['llm_router_tokens_total', 'counter', ['provider', 'model', 'kind']],
  ['llm_router_cost_usd_total', 'counter', ['provider', 'model']],
  ['llm_router_routing_decisions_total', 'counter', ['route', 'strategy', 'provider']],
  ['llm_router_inflight_requests', 'gauge', ['provider', 'model']],
  ['llm_router_llm_router_requests_total', 'counter', ['tier', 'outcome']],
  ['llm_router_llm_router_duration_seconds', 'histogram', ['tier']],
  ['llm_router_stream_failures_total', 'counter', ['provider', 'model', 'policy']],
  ['llm_router_config_reloads_total', 'counter', ['result']],
];

describe('README: HTTP surface, headers and metrics', () => {
  async function setup(): Promise<{ gw: TestGateway; ok: Simulator; bad: Simulator }> {
    const ok = track(
      await startSimulator({
        name: 'ok',
        reply: '{"tier":"deep","reason":"looks hard"}',
        completionTokens: 3,
      }),
    );
    const bad = track(await startSimulator({ name: 'bad', status: 500 }));
    const gw = track(
      await startGateway({
        server: { host: '127.0.0.1', port: 0, admin_key: 'adm' },
        providers: [
          {
            name: 'ok',
            base_url: `${ok.url}/v1`,
            models: [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } }],
          },
          { name: 'bad', base_url: `${bad.url}/v1`, models: [{ name: 'm' }, { name: 'n' }] },
        ],
        routes: {
          r: { strategy: 'priority', targets: ['bad/m', 'ok/m'] },
          dead: { strategy: 'priority', targets: ['bad/n'] },
          auto: { tiers: { fast: ['ok/m'], deep: ['ok/m'] }, default_tier: 'fast', router: { tier: 'fast' } },
        },
        circuit_breaker: { failure_threshold: 1 },
      }),
    );
    return { gw, ok, bad };
  }

  it('x-router-* headers, failover trail, 503 with every breaker open, tier headers', async () => {
    const { gw } = await setup();
    const a = await post(gw.url, hi('r'));
    expect(a.status).toBe(200);
    expect(a.headers).toMatchObject({
      'x-router-provider': 'ok',
      'x-router-model': 'm',
      'x-router-strategy': 'priority',
      'x-router-attempts': '2',
      'x-router-trail': 'bad/m=http_500',
    });

    expect((await post(gw.url, hi('dead'))).status).toBe(502);
    const refused = await post(gw.url, hi('dead'));
    expect(refused.status).toBe(503);
    expect(refused.headers['x-router-attempts']).toBe('0');
    expect(refused.headers['x-router-provider']).toBeUndefined();
    expect(refused.headers['retry-after']).toBeDefined();
    expect(refused.json).toMatchObject({ error: { type: 'no_available_upstream' } });

    // No rule: the LLM router is asked and its reason is the tier reason.
    const t = await post(gw.url, hi('auto'));
    expect(t.status).toBe(200);
    expect(t.headers['x-router-tier']).toBe('deep');
    expect(t.headers['x-router-tier-reason']).toContain('looks hard');
    const bogus = await post(gw.url, hi('auto'), { 'x-router-tier': 'balanced' });
    expect(bogus.status).toBe(400);
    expect(bogus.json).toMatchObject({ error: { param: 'x-router-tier' } });
    expect((await post(gw.url, hi('r'), { 'x-router-tier': 'deep' })).status).toBe(200);

    const missing = await post(gw.url, hi('nope'));
    expect(missing.status).toBe(404);
    expect(missing.json).toMatchObject({ error: { code: 'model_not_found' } });
    const badField = await post(gw.url, hi('r', { temperature: 'hot' }));
    expect(badField.status).toBe(400);
    expect(badField.json).toMatchObject({ error: { param: 'temperature' } });

    // /router/* needs the admin key (Bearer or x-admin-key); /metrics does not by default.
    expect((await request(`${gw.url}/router/status`)).statusCode).toBe(401);
    const status = await request(`${gw.url}/router/status`, { headers: { 'x-admin-key': 'adm' } });
    const body = (await status.body.json()) as { upstreams: Array<Record<string, unknown>> };
    expect(Object.keys(body.upstreams[0]!)).toEqual(
      expect.arrayContaining(['breaker', 'stats', 'in_flight', 'request_fits']),
    );
    const explain = await request(`${gw.url}/router/explain`, {
      method: 'POST',
      headers: { authorization: 'Bearer adm', 'content-type': 'application/json' },
      body: JSON.stringify(hi('r')),
    });
    expect(explain.statusCode).toBe(200);
    await explain.body.dump();
    expect((await request(`${gw.url}/healthz`)).statusCode).toBe(200);
    expect((await request(`${gw.url}/readyz`)).statusCode).toBe(200);
  });

  it('"a route without tiers ignores a tier name, but a value that is none of fast, balanced, deep is a 400"', async () => {
    const { gw } = await setup();
    const named = await post(gw.url, hi('r'), { 'x-router-tier': 'deep' });
    expect(named.status, JSON.stringify(named.json)).toBe(200);
    // SPEC §8: "Unknown x-router-strategy, x-router-tier or x-router-provider values -> 400."
    const bogus = await post(gw.url, hi('r'), { 'x-router-tier': 'bogus' });
    expect(bogus.status).toBe(400);
    expect((bogus.json as { error: { param: string } }).error.param).toBe('x-router-tier');
  });

  it('server.rate_limit (429 + Retry-After), body_limit_bytes (413), metrics_auth', async () => {
    const ok = track(await startSimulator({ name: 'ok' }));
    const gw = track(
      await startGateway({
        server: {
          host: '127.0.0.1',
          port: 0,
          admin_key: 'adm',
          metrics_auth: true,
          body_limit_bytes: 2000,
          rate_limit: { requests_per_minute: 2 },
        },
        providers: [{ name: 'ok', base_url: `${ok.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { targets: ['ok/m'] } },
      }),
    );
    expect((await post(gw.url, hi('r', { user: 'x'.repeat(5000) }))).status).toBe(413);
    let last = await post(gw.url, hi('r'));
    for (let i = 0; i < 3 && last.status !== 429; i++) last = await post(gw.url, hi('r'));
    expect(last.status).toBe(429);
    expect(last.headers['retry-after']).toBeDefined();
    expect((await request(`${gw.url}/metrics`)).statusCode).toBe(401);
    const m = await request(`${gw.url}/metrics`, { headers: { authorization: 'Bearer adm' } });
    expect(m.statusCode).toBe(200);
    await m.body.dump();
  });

  it('every metric of the Metrics table has its documented type and label names', async () => {
    const { gw } = await setup();
    await post(gw.url, hi('r')); // failover bad -> ok, breaker of bad/m opens
    await post(gw.url, hi('r', { stream: true })); // a stream: time per output token
    await post(gw.url, hi('dead')); // 502, opens bad/n
    await post(gw.url, hi('dead')); // 503, refused under its route
    await post(gw.url, hi('auto')); // LLM router call
    const res = await request(`${gw.url}/metrics`);
    expect(res.statusCode).toBe(200);
    const text = await res.body.text();
    const problems: string[] = [];
    for (const [name, type, labels] of METRICS) {
      if (!text.includes(`# TYPE ${name} ${type}\n`)) {
        problems.push(`${name}: not a ${type}`);
        continue;
      }
      const sample = new RegExp(`^${name}(?:_count)?\\{([^}]*)\\} `, 'm').exec(text);
      if (!sample) {
        if (name !== 'llm_router_stream_failures_total') problems.push(`${name}: no sample`);
        continue;
      }
      const got = [...sample[1]!.matchAll(/([a-z_]+)="/g)].map((m) => m[1]).sort();
      if (JSON.stringify(got) !== JSON.stringify([...labels].sort()))
        problems.push(`${name}: labels ${got.join(',')}, README says ${labels.join(',')}`);
    }
    expect(problems).toEqual([]);
    expect(text).toContain('process_cpu_user_seconds_total'); // Node's default process metrics
    expect(text).toMatch(/llm_router_failovers_total\{route="r",from_provider="bad",reason="[a-z_]+"\} 1/);
    expect(text).toContain('llm_router_circuit_state{provider="bad",model="m"} 2');
    expect(text).toMatch(
      /llm_router_requests_total\{route="dead",provider="none",model="none",status="503"\} 1/,
    );
    expect(text).toMatch(/llm_router_llm_router_requests_total\{tier="deep",outcome="chosen"\} 1/);
  });
});
