/**
 * The config file as people really write it (SPEC §3, §8 "Config"; README "Configuration"): YAML idioms
 * copied from other tools (merge keys, Helm's document markers, keys YAML reads as numbers), values as
 * people write them (a curl-style header rule, numbers from the environment), and `${VAR}` templating the
 * way Helm charts and Kubernetes secrets feed it (a placeholder inside a larger string, a secret file's
 * trailing newline). A config that loads must mean what was written; a rejection must be one message that
 * names its YAML path and says what is wrong.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText, type LoadedConfig } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

type Loaded = { ok: true; loaded: LoadedConfig } | { ok: false; issues: string[] };

function load(text: string, env: Record<string, string> = {}): Loaded {
  try {
    return { ok: true, loaded: parseConfigText(text, env) };
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return { ok: false, issues: [...(err as ConfigError).issues] };
  }
}

function issuesOf(text: string, env: Record<string, string> = {}): string[] {
  const r = load(text, env);
  if (r.ok) throw new Error(`expected a rejection, it loaded:\n${text}`);
  return r.issues;
}

function loaded(text: string, env: Record<string, string> = {}): LoadedConfig {
  const r = load(text, env);
  if (!r.ok) throw new Error(`expected it to load, got:\n  ${r.issues.join('\n  ')}`);
  return r.loaded;
}

const PROVIDER = [
  'providers:',
  '  - name: a',
  '    base_url: http://127.0.0.1:9/v1',
  '    models: [{ name: m }]',
];
const base = (...lines: string[]) => [...PROVIDER, ...lines].join('\n') + '\n';

async function upstream() {
  const m = await startMock((req, res) => answerChat(res, req.body, 'ok'));
  track(m);
  return m;
}

async function chat(gw: TestGateway, model: string, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

describe('YAML idioms from other tools', () => {
  // Docker Compose, GitLab CI and LiteLLM examples share settings with `<<: *defaults`. SPEC §8 limits
  // aliases, it does not forbid them: a merge key merges (README), and is never taken for a key named "<<".
  it('a merge key (`<<: *defaults`) for shared provider timeouts merges', () => {
    const text = [
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:9/v1',
      '    timeouts: &defaults { connect_ms: 1000, total_ms: 5000 }',
      '    models: [{ name: m }]',
      '  - name: b',
      '    base_url: http://127.0.0.1:9/v1',
      '    timeouts:',
      '      <<: *defaults',
      '      total_ms: 9000',
      '    models: [{ name: m }]',
    ].join('\n');
    expect(loaded(text).config.providers[1]!.timeouts).toMatchObject({ connect_ms: 1000, total_ms: 9000 });
  });

  // `helm template`, `kustomize build` and `kubectl get -o yaml` write `---` around each document; a file
  // that ends with one (or with an empty document holding only a comment) holds one config, not two.
  it('a Helm-rendered file with `---` before and after its one document loads as that document', () => {
    const text = `---\n# Source: llm-edge-router/templates/configmap.yaml\n${base()}---\n`;
    const r = load(text);
    expect(r.ok ? [] : r.issues).toEqual([]);
    if (r.ok) expect(r.loaded.config.providers.map((p) => p.name)).toEqual(['a']);
  });

  it('YAML 1.2 as written: CRLF, a BOM, hex and octal, !!str, True, quoted numbers, and a colon/slash/dot model name', () => {
    const text = [
      'server:',
      '  port: 0x1F90',
      '  admin_key: !!str 12345678',
      '  metrics_auth: True',
      'routing:',
      '  total_timeout_ms: "5000"',
      '  max_attempts: 0o2',
      'providers:',
      '  - name: ollama',
      '    base_url: http://[::1]:11434/v1',
      '    models: [{ name: llama3:8b }, { name: meta-llama/Llama-3.1-8B }, { name: gpt-4.1 }]',
      'routes:',
      '  local: { targets: [ollama/llama3:8b, ollama/meta-llama/Llama-3.1-8B, ollama/gpt-4.1] }',
    ].join('\r\n');
    const c = loaded(`\ufeff${text}\r\n`).config;
    expect(c.server.port).toBe(8080);
    expect(c.server.admin_key).toBe('12345678');
    expect(c.server.metrics_auth).toBe(true);
    expect(c.routing.total_timeout_ms).toBe(5000);
    expect(c.routing.max_attempts).toBe(2);
    expect(c.providers[0]!.base_url).toBe('http://[::1]:11434/v1');
    expect(c.providers[0]!.models.map((m) => m.name)).toEqual([
      'llama3:8b',
      'meta-llama/Llama-3.1-8B',
      'gpt-4.1',
    ]);
    expect(c.routes.local!.targets).toHaveLength(3);
  });

  it('YAML 1.1 booleans, durations, dollar prices and custom tags are refused with their path', () => {
    const cases: [string, RegExp][] = [
      [base('server: { admin_key: xxxxxxxxxxxx, metrics_auth: yes }'), /^server\.metrics_auth: /],
      [base('routing:', '  total_timeout_ms: 30s'), /^routing\.total_timeout_ms: .*number/],
      [base('routing:', '  tie_epsilon: 1_000'), /^routing\.tie_epsilon: .*number/],
      [
        PROVIDER.join('\n').replace('{ name: m }', '{ name: m, price: { input_per_mtok: "$0.15" } }'),
        /^providers\[0\]\.models\[0\]\.price\.input_per_mtok: .*number/,
      ],
      [base('server:', '  admin_key: !env ADMIN'), /line 6/],
      [base('Routes: {}'), /^Routes: unknown key/],
    ];
    for (const [text, want] of cases) {
      const issues = issuesOf(text);
      expect(issues, text).toHaveLength(1);
      expect(issues[0], text).toMatch(want);
    }
  });
});

describe('rejections say what is wrong, at the path where it is', () => {
  // README: `strategy` is a name or `{ hybrid: { cost_weight, latency_weight, reliability_weight } }`. One
  // bad weight in the object form is reported at that weight, not as a strategy name that is not one of them.
  it('a bad weight inside `strategy: { hybrid: {...} }` is reported at that weight, not as an unknown strategy name', () => {
    const cases: [string, string][] = [
      ['{ hybrid: { cost_weight: "50%", latency_weight: 0.5 } }', 'routes.smart.strategy.hybrid.cost_weight'],
      ['{ hybrid: { cost_weight: -1 } }', 'routes.smart.strategy.hybrid.cost_weight'],
      ['{ hybrid: { latency_weight: 2000000 } }', 'routes.smart.strategy.hybrid.latency_weight'],
    ];
    for (const [strategy, path] of cases) {
      const issues = issuesOf(base('routes:', `  smart: { strategy: ${strategy}, targets: [a/m] }`));
      expect(issues, strategy).toHaveLength(1);
      expect(issues[0], strategy).toMatch(new RegExp(`^${path.replace(/[.[\]]/g, '\\$&')}: `));
      expect(issues[0], strategy).not.toMatch(/expected one of "cost"/);
    }
  });

  // A number field given a boolean, a list or a Helm `~`/empty value: the message says a number is expected
  // (as every other type error says what it expected), at the field's path.
  it('a number field given true, a list or null says a number is expected, not a bare "Invalid input"', () => {
    const cases = [
      base('server:', '  port: true'),
      base('server:', '  port: [8080]'),
      base('routing:', '  max_attempts:'),
      PROVIDER.join('\n').replace('{ name: m }', '{ name: m, context_window: ~ }'),
    ];
    for (const text of cases) {
      const issues = issuesOf(text);
      expect(issues, text).toHaveLength(1);
      expect(issues[0], text).toMatch(/^[\w.[\]]+: /);
      expect(issues[0], text).toMatch(/number/i);
    }
  });

  // README: a rule's `header` is `name` or `name=value`. Written as curl's `-H` takes it ("x-team: research"),
  // the name would be "x-team: research", which no request can carry: a dead rule, refused at load with its
  // path as `providers[].headers` refuses such a name.
  it('a tier rule `header: "x-team: research"` (curl form) is refused at load with its path', async () => {
    const up = await upstream();
    const text = [
      'server: { host: 127.0.0.1, port: 0 }',
      'providers:',
      `  - { name: a, base_url: "${up.url}/v1", models: [{ name: cheap }, { name: big }] }`,
      'routes:',
      '  auto:',
      '    tiers: { fast: [a/cheap], deep: [a/big] }',
      '    default_tier: fast',
      '    rules:',
      '      - { if: { header: "x-team: research" }, tier: deep }',
    ].join('\n');
    expect(issuesOf(text)).toEqual([
      "routes.auto.rules[0].if.header: expected `name` or `name=value` with a header name (not curl's `name: value`)",
    ]);
    // The form the README gives works.
    const gw = track(await startGateway(text.replace('x-team: research', 'x-team=research')));
    const res = await chat(gw, 'auto', { 'x-team': 'research' });
    expect(res.status).toBe(200);
    expect(res.headers['x-router-tier']).toBe('deep');
  });
});

describe('${VAR} as templates use it', () => {
  // README: "an unset variable without default is an error, except in a provider's api_key,
  // server.api_keys and server.admin_key, where it means no key and is said in a warning" — the whole key:
  // inside a larger string the text around the placeholder must not stay behind as a key anyone can guess.
  it('admin_key "admin-${ADMIN_SUFFIX}" with the variable unset is no key, never the key "admin-"', () => {
    const c = loaded(base('server:', '  admin_key: "admin-${ADMIN_SUFFIX}"'));
    expect(c.config.server.admin_key ?? '').toBe('');
    expect(c.warnings.join('\n')).toMatch(/server\.admin_key: environment variable ADMIN_SUFFIX is not set/);
  });

  it('a client key "team-${TEAM_KEY}" with the variable unset does not let "Bearer team-" in', async () => {
    const up = await upstream();
    const text = [
      'server:',
      '  host: 127.0.0.1',
      '  port: 0',
      '  api_keys: ["team-${TEAM_KEY}", "${OTHER_KEY}"]',
      'providers:',
      `  - { name: a, base_url: "${up.url}/v1", models: [{ name: m }] }`,
      'routes:',
      '  main: { targets: [a/m] }',
    ].join('\n');
    const r = load(text, { OTHER_KEY: 'other-key-123' });
    if (!r.ok) {
      expect(r.issues.join('\n')).toMatch(/^server\.api_keys\[0\]: .*TEAM_KEY/m);
      return;
    }
    expect(r.loaded.config.server.api_keys.filter((k) => k !== '')).toEqual(['other-key-123']);
    const gw = track(await startGateway(text, { env: { OTHER_KEY: 'other-key-123' } }));
    expect((await chat(gw, 'main', { authorization: 'Bearer team-' })).status).toBe(401);
    expect((await chat(gw, 'main', { authorization: 'Bearer other-key-123' })).status).toBe(200);
  });

  // The same in a provider's api_key: no key, said in a warning, the provider disabled — no partial key sent.
  it('a provider api_key "sk-${OPENAI_KEY}" with the variable unset disables the provider with a warning', () => {
    const text = [
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:9/v1',
      '    api_key: "sk-proj-${OPENAI_KEY}"',
      '    models: [{ name: m }]',
    ].join('\n');
    const r = load(text);
    if (!r.ok) throw new Error(r.issues.join('\n'));
    expect(r.loaded.warnings.join('\n')).toMatch(/providers\[0\].*(OPENAI_KEY|api_key)/);
    expect(r.loaded.disabledProviders.has('a')).toBe(true);
  });

  // A Kubernetes secret made with `echo key | kubectl create secret ...`, or `API_KEY=$(cat key.txt)`,
  // carries the file's trailing newline into the variable: keys are trimmed (README), so it is sent and
  // compared as the key it is, never a 502 (`Bearer sk-...\n` is a header undici will not send) or a 401.
  it('a provider api_key from a secret with a trailing newline is trimmed: sent as the key, not a 502 per request', async () => {
    const up = await upstream();
    const text = [
      'server: { host: 127.0.0.1, port: 0 }',
      'providers:',
      `  - name: a`,
      `    base_url: "${up.url}/v1"`,
      '    api_key: ${OPENAI_API_KEY}',
      '    models: [{ name: m }]',
      'routes:',
      '  main: { targets: [a/m] }',
    ].join('\n');
    const env = { OPENAI_API_KEY: 'sk-proj-abc123\n' };
    const gw = track(await startGateway(text, { env }));
    const res = await chat(gw, 'main');
    expect(res.status, res.text).toBe(200);
    expect(up.received.at(-1)?.headers.authorization).toBe('Bearer sk-proj-abc123');
  });

  it('a client key from a secret with a trailing newline is trimmed: its holder gets in', async () => {
    const up = await upstream();
    const text = [
      'server:',
      '  host: 127.0.0.1',
      '  port: 0',
      '  api_keys: ["${GATEWAY_API_KEY}"]',
      'providers:',
      `  - { name: a, base_url: "${up.url}/v1", models: [{ name: m }] }`,
      'routes:',
      '  main: { targets: [a/m] }',
    ].join('\n');
    const env = { GATEWAY_API_KEY: 'gw-key-123456\n' };
    const gw = track(await startGateway(text, { env }));
    expect((await chat(gw, 'main', { authorization: 'Bearer gw-key-123456' })).status).toBe(200);
  });

  // A number from the environment is read with the grammar the same number written in YAML is:
  // `input_per_mtok: ${PRICE}` with PRICE=.15 loads as `input_per_mtok: .15` does.
  it('a number from the environment is taken in the forms YAML takes it (.15, 1e-7, +3)', () => {
    const text = [
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:9/v1',
      '    models:',
      '      - name: m',
      '        price:',
      '          input_per_mtok: ${IN_PRICE}',
      '          output_per_mtok: ${OUT_PRICE}',
      'routing:',
      '  max_attempts: ${ATTEMPTS}',
    ].join('\n');
    const literal = loaded(
      text.replace('${IN_PRICE}', '.15').replace('${OUT_PRICE}', '1e-7').replace('${ATTEMPTS}', '+3'),
    ).config;
    expect(literal.providers[0]!.models[0]!.price).toEqual({ input_per_mtok: 0.15, output_per_mtok: 1e-7 });
    const fromEnv = load(text, { IN_PRICE: '.15', OUT_PRICE: '1e-7', ATTEMPTS: '+3' });
    expect(fromEnv.ok ? [] : fromEnv.issues).toEqual([]);
    if (fromEnv.ok) {
      expect(fromEnv.loaded.config.providers[0]!.models[0]!.price).toEqual(
        literal.providers[0]!.models[0]!.price,
      );
      expect(fromEnv.loaded.config.routing.max_attempts).toBe(3);
    }
  });

  it('Bearer ${TOKEN} inside a header, a default holding "}" or ":-", and a variable holding YAML stay data', () => {
    const text = [
      'server:',
      '  admin_key: "${ADM:-a:-b}c}"',
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:9/v1',
      '    api_key: ${KEY}',
      '    headers: { authorization: "Bearer ${TOKEN}", x-org: "${ORG:-}" }',
      '    models: [{ name: m }]',
    ].join('\n');
    const c = loaded(text, { TOKEN: 'tok-123456', KEY: 'a: b, [1]' }).config;
    expect(c.server.admin_key).toBe('a:-bc}');
    expect(c.providers[0]!.headers).toEqual({ authorization: 'Bearer tok-123456', 'x-org': '' });
    expect(c.providers[0]!.api_key).toBe('a: b, [1]');
  });
});
