import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, MAX_CONFIG_BYTES, loadConfigFile, parseConfigText } from '../../../src/config/load.js';
import { cliWorkDir, REPO_ROOT } from '../../helpers/cli-harness.js';

/** Two providers, a flat route, a tiered route: every case below changes one thing. */
const BASE = `
providers:
  - name: openai
    base_url: http://127.0.0.1:1/v1
    api_key: sk-test
    models:
      - { name: gpt-4o-mini }
      - { name: gpt-4o }
      - { name: embed, capabilities: [embeddings] }
  - name: anthropic
    kind: anthropic
    base_url: http://127.0.0.1:2
    api_key: sk-ant
    models:
      - { name: claude }
routes:
  smart:
    targets: [openai/gpt-4o, anthropic/claude]
`;

/** The issues of a rejected config (throws if it was accepted). */
function issuesOf(text: string | Uint8Array, env: Record<string, string> = {}): string[] {
  try {
    parseConfigText(text, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).issues];
  }
  throw new Error('config was accepted');
}

describe('parseConfigText rejects each kind of error with its YAML path', () => {
  it('accepts the base config', () => {
    const loaded = parseConfigText(BASE, {});
    expect(Object.keys(loaded.config.routes)).toEqual(['smart']);
    expect(loaded.warnings).toEqual([]);
    expect(Object.isFrozen(loaded.config.providers[0])).toBe(true);
    // A stream holds its connection: the default leaves room for thousands at once, not a few hundred.
    expect(loaded.config.providers[0]!.max_concurrency).toBeGreaterThanOrEqual(4096);
  });

  it('an unknown key', () => {
    const text = BASE.replace('base_url: http://127.0.0.1:1/v1', 'base_urll: http://127.0.0.1:1/v1');
    expect(issuesOf(text)).toContain('providers[0].base_urll: unknown key');
    expect(issuesOf(`${BASE}\nroutingg: {}\n`)).toContain('routingg: unknown key');
  });

  it('a wrong type', () => {
    const issues = issuesOf(BASE.replace('api_key: sk-test', 'api_key: sk-test\n    max_concurrency: lots'));
    expect(issues.some((i) => i.startsWith('providers[0].max_concurrency: '))).toBe(true);
    const routes = issuesOf(
      BASE.replace('targets: [openai/gpt-4o, anthropic/claude]', 'targets: openai/gpt-4o'),
    );
    expect(routes.some((i) => i.startsWith('routes.smart.targets: '))).toBe(true);
  });

  it('a bad URL', () => {
    const issues = issuesOf(BASE.replace('base_url: http://127.0.0.1:2', 'base_url: not a url'));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatch(/^providers\[1\]\.base_url: /);
    expect(issuesOf(BASE.replace('base_url: http://127.0.0.1:2', 'base_url: ftp://x'))[0]).toMatch(
      /^providers\[1\]\.base_url: .*http/,
    );
  });

  it('an unknown upstream in a route', () => {
    const issues = issuesOf(
      BASE.replace('targets: [openai/gpt-4o, anthropic/claude]', 'targets: [openai/gpt-4o, openai/gpt-4]'),
    );
    expect(issues).toEqual(['routes.smart.targets[1]: unknown upstream "openai/gpt-4"']);
  });

  it('a duplicate provider, a duplicate model', () => {
    const dup = `${BASE.replace('routes:', `  - name: openai\n    base_url: http://127.0.0.1:3/v1\n    models: [{ name: x }]\nroutes:`)}`;
    expect(issuesOf(dup)).toContain('providers[2].name: duplicate provider "openai"');
    const dupModel = BASE.replace('- { name: gpt-4o }', '- { name: gpt-4o }\n      - { name: gpt-4o }');
    expect(issuesOf(dupModel)).toContain('providers[0].models[2].name: duplicate model "gpt-4o"');
  });

  it('a route mixing embedding and chat models', () => {
    const issues = issuesOf(`${BASE}  mixed:\n    targets: [openai/embed, openai/gpt-4o]\n`);
    expect(issues).toEqual(['routes.mixed.targets: mixes embedding and chat models']);
    // The message a user sees names the path too.
    expect(() =>
      parseConfigText(`${BASE}  mixed:\n    targets: [openai/embed, openai/gpt-4o]\n`, {}),
    ).toThrow(/routes\.mixed\.targets/);
  });

  it('an unknown passthrough provider, or one that is not OpenAI-compatible', () => {
    expect(issuesOf(`server: { passthrough: nope }\n${BASE}`)).toEqual([
      'server.passthrough: unknown provider "nope"',
    ]);
    expect(issuesOf(`server: { passthrough: anthropic }\n${BASE}`)).toEqual([
      'server.passthrough: provider "anthropic" must be of kind openai',
    ]);
  });

  it('on_stream_failure: continue is refused with a message saying it is planned', () => {
    const issues = issuesOf(`${BASE}    on_stream_failure: continue\n`);
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatch(/^routes\.smart\.on_stream_failure: .*planned/);
    expect(() => parseConfigText(`${BASE}    on_stream_failure: terminate\n`, {})).not.toThrow();
  });

  const TIERED = `${BASE}  auto:
    tiers:
      fast: [openai/gpt-4o-mini]
      deep: [anthropic/claude]
    default_tier: fast
    router: { tier: fast }
`;

  it('a tiered route whose router.tier or default_tier has no upstreams', () => {
    expect(() => parseConfigText(TIERED, {})).not.toThrow();
    expect(issuesOf(TIERED.replace('router: { tier: fast }', 'router: { tier: balanced }'))).toEqual([
      'routes.auto.router.tier: tier "balanced" has no upstreams',
    ]);
    expect(issuesOf(TIERED.replace('default_tier: fast', 'default_tier: balanced'))).toEqual([
      'routes.auto.default_tier: tier "balanced" has no upstreams',
    ]);
  });

  // Regression (audit 4): `[pa/ma, pa/ma, pb/mb]` loaded, and a failing pa/ma was then tried twice per request.
  it('an upstream listed twice in a route, or in one tier, is refused with its path', () => {
    expect(
      issuesOf(
        BASE.replace(
          'targets: [openai/gpt-4o, anthropic/claude]',
          'targets: [openai/gpt-4o, openai/gpt-4o, anthropic/claude]',
        ),
      ),
    ).toEqual(['routes.smart.targets[1]: "openai/gpt-4o" is listed twice']);
    // The `{ target, weight }` form names the same upstream.
    expect(
      issuesOf(
        BASE.replace(
          'targets: [openai/gpt-4o, anthropic/claude]',
          'targets: [anthropic/claude, openai/gpt-4o, { target: openai/gpt-4o, weight: 3 }]',
        ),
      ),
    ).toEqual(['routes.smart.targets[2]: "openai/gpt-4o" is listed twice']);
    expect(
      issuesOf(
        TIERED.replace('fast: [openai/gpt-4o-mini]', 'fast: [openai/gpt-4o-mini, openai/gpt-4o-mini]'),
      ),
    ).toEqual(['routes.auto.tiers.fast[1]: "openai/gpt-4o-mini" is listed twice']);
    // One upstream in two tiers is not a duplicate: only one tier serves a request.
    expect(() =>
      parseConfigText(
        TIERED.replace('deep: [anthropic/claude]', 'deep: [anthropic/claude, openai/gpt-4o-mini]'),
        {},
      ),
    ).not.toThrow();
  });

  it('an invalid rule regex', () => {
    const text = TIERED.replace(
      '    default_tier: fast',
      '    rules:\n      - { if: { last_user_message: "([a-z" }, tier: deep }\n    default_tier: fast',
    );
    expect(issuesOf(text)).toEqual(['routes.auto.rules[0].if.last_user_message: invalid regular expression']);
  });

  it('substitutes ${VAR} and ${VAR:-default}; an unset variable without default is an error with its path', () => {
    const text = BASE.replace('api_key: sk-test', 'api_key: ${OPENAI_KEY}').replace(
      'base_url: http://127.0.0.1:2',
      'base_url: ${ANT_URL:-http://127.0.0.1:9}',
    );
    const loaded = parseConfigText(`server: { port: "\${PORT:-8123}" }\n${text}`, {
      OPENAI_KEY: 'sk-from-env',
    });
    expect(loaded.config.providers[0]?.api_key).toBe('sk-from-env');
    expect(loaded.config.providers[1]?.base_url).toBe('http://127.0.0.1:9');
    expect(loaded.config.server.port).toBe(8123);
    expect(loaded.secrets).toContain('sk-from-env');

    const unset = issuesOf(`server: { host: "\${BIND_HOST}" }\n${BASE}`);
    expect(unset).toEqual(['server.host: environment variable BIND_HOST is not set']);

    // Only a provider's own api_key may be unset: a header that happens to be named api_key may not.
    const header = issuesOf(
      BASE.replace('api_key: sk-test', 'api_key: sk-test\n    headers: { api_key: "${HDR}" }'),
    );
    expect(header).toEqual(['providers[0].headers.api_key: environment variable HDR is not set']);
  });

  it('an unset client or admin key variable is an empty key, said in a warning (SPEC: "empty or absent: no client auth")', () => {
    const open = parseConfigText(
      `server: { api_keys: ["\${GATEWAY_API_KEY}"], admin_key: "\${GATEWAY_ADMIN_KEY}" }\n${BASE}`,
      {},
    );
    expect(open.config.server.api_keys).toEqual(['']);
    expect(open.config.server.admin_key).toBe('');
    expect(open.warnings).toEqual([
      'server.api_keys[0]: environment variable GATEWAY_API_KEY is not set: that key is empty',
      'server.admin_key: environment variable GATEWAY_ADMIN_KEY is not set: that key is empty',
      'server.api_keys: no client key is set: client authentication is off',
    ]);
    // Another key still set keeps client auth on: one warning for the missing one only.
    const one = parseConfigText(`server: { api_keys: ["\${A}", "\${B}"] }\n${BASE}`, { B: 'sk-b' });
    expect(one.config.server.api_keys).toEqual(['', 'sk-b']);
    expect(one.warnings).toEqual([
      'server.api_keys[0]: environment variable A is not set: that key is empty',
    ]);
  });

  it('state.backend redis needs a redis:// or rediss:// URL, and its password is a secret', () => {
    expect(issuesOf(`${BASE}\nstate: { backend: redis, url: "localhost:6379" }`)).toEqual([
      'state.url: expected a redis:// or rediss:// URL',
    ]);
    const ok = parseConfigText(
      `${BASE}\nstate: { backend: redis, url: "rediss://:p%40ss@cache:6380/2" }`,
      {},
    );
    expect(ok.config.state).toEqual({ backend: 'redis', url: 'rediss://:p%40ss@cache:6380/2' });
    expect(ok.secrets).toContain('p@ss');
  });

  it('a substituted value is data: it never adds a key or a node', () => {
    const loaded = parseConfigText(`server: { admin_key: "\${ADMIN}" }\n${BASE}`, {
      ADMIN: 'x, foo: bar, api_keys: [a] }',
    });
    expect(loaded.config.server.admin_key).toBe('x, foo: bar, api_keys: [a] }');
    expect(loaded.config.server.api_keys).toEqual([]);
    expect(Object.keys(loaded.config.server)).not.toContain('foo');
    // Lines of YAML in a key are no key at all: refused with its path (a key goes in a header).
    expect(() =>
      parseConfigText(`server: { admin_key: "\${ADMIN}" }\n${BASE}`, { ADMIN: 'x\nfoo: bar\napi_keys: [a]' }),
    ).toThrow(/server\.admin_key: a key must be one line/);
    // And a value that looks like a reference is not expanded again.
    const twice = parseConfigText(`server: { admin_key: "\${ADMIN}" }\n${BASE}`, {
      ADMIN: '${SECRET}',
      SECRET: 'leak',
    });
    expect(twice.config.server.admin_key).toBe('${SECRET}');
  });

  it('an empty api_key disables its provider with one warning, not an error', () => {
    const text = BASE.replace('api_key: sk-ant', 'api_key: ${ANTHROPIC_API_KEY:-}').replace(
      'targets: [openai/gpt-4o, anthropic/claude]',
      'targets: [openai/gpt-4o, anthropic/claude]\n  claude:\n    targets: [openai/gpt-4o-mini, anthropic/claude]',
    );
    const loaded = parseConfigText(text, {});
    expect([...loaded.disabledProviders]).toEqual(['anthropic']);
    expect(loaded.warnings).toHaveLength(1);
    expect(loaded.warnings[0]).toMatch(/providers\[1\].*anthropic.*api_key is empty/);
    // The same with the variable unset and no default.
    const unset = parseConfigText(BASE.replace('api_key: sk-ant', 'api_key: ${ANTHROPIC_API_KEY}'), {});
    expect([...unset.disabledProviders]).toEqual(['anthropic']);
    expect(unset.warnings).toHaveLength(1);
  });

  it('a YAML alias bomb (billion laughs) is refused quickly with a message', () => {
    const lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (let i = 1; i <= 9; i++) {
      const prev = `*a${i - 1}`;
      lines.push(`a${i}: &a${i} [${Array.from({ length: 10 }, () => prev).join(',')}]`);
    }
    const bomb = `${lines.join('\n')}\n${BASE}`;
    const t0 = performance.now();
    const issues = issuesOf(bomb);
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(issues.join('\n')).toMatch(/more than \d+ nodes/);
  });

  it('non-UTF-8 bytes, an oversized file, and a syntax error with line and column', () => {
    const bad = Buffer.concat([Buffer.from(BASE), Buffer.from([0xff, 0xfe, 0x80])]);
    expect(issuesOf(bad)).toEqual(['config file is not valid UTF-8']);

    const big = Buffer.alloc(MAX_CONFIG_BYTES + 1, 0x20);
    expect(issuesOf(big)[0]).toMatch(/bytes; the limit is/);

    const syntax = issuesOf('providers:\n  - name: a\n    base_url: [unclosed\n');
    expect(syntax).toHaveLength(1);
    expect(syntax[0]).toMatch(/^YAML syntax error: .*\(line \d+, column \d+\)/);
  });

  it('an empty file', () => {
    expect(issuesOf('')).toEqual(['config is empty']);
  });
});

describe('loadConfigFile', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ler-config-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the file in its message; refuses an oversized file before reading it', () => {
    const path = join(dir, 'bad.yaml');
    writeFileSync(path, BASE.replace('openai/gpt-4o,', 'openai/gpt-5,'));
    expect(() => loadConfigFile(path, {})).toThrow(
      `${path}: invalid config:\n  routes.smart.targets[0]: unknown upstream "openai/gpt-5"`,
    );
    const big = join(dir, 'big.yaml');
    writeFileSync(big, Buffer.alloc(MAX_CONFIG_BYTES + 10, 0x20));
    expect(() => loadConfigFile(big, {})).toThrow(/the limit is/);
    expect(() => loadConfigFile(join(dir, 'missing.yaml'), {})).toThrow(/cannot read config file: ENOENT/);
  });

  // Regression: a tier emptied by disabled providers was fatal, so the example config needed every key.
  it('config/gateway.yaml loads with no provider keys set, with warnings', () => {
    const loaded = loadConfigFile(join(REPO_ROOT, 'config/gateway.yaml'), {});
    expect(loaded.disabledProviders.size).toBe(2);
    expect(loaded.warnings.some((w) => w.includes('routes.auto.default_tier: every upstream of tier'))).toBe(
      true,
    );
  });

  it('loads the shipped configs', () => {
    expect(() => loadConfigFile(join(REPO_ROOT, 'config/demo.yaml'), {})).not.toThrow();
    const keys = { OPENAI_API_KEY: 'sk-o', ANTHROPIC_API_KEY: 'sk-a' };
    const loaded = loadConfigFile(join(REPO_ROOT, 'config/gateway.yaml'), keys);
    expect(loaded.disabledProviders.size).toBe(0);
  });
});

describe('llm-edge-router check (the built CLI)', () => {
  const workDir = cliWorkDir('check');

  const check = (path: string, env: Record<string, string> = {}) =>
    spawnSync(process.execPath, ['dist/main.js', 'check', '--config', path], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '', ...env },
      timeout: 15_000,
    });

  it('simulate --help prints every flag and exits 0 (a bad flag still exits 2)', () => {
    const run = (args: string[]) =>
      spawnSync(process.execPath, ['dist/main.js', 'simulate', ...args], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        timeout: 15_000,
      });
    const help = run(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('usage: llm-edge-router simulate');
    for (const flag of ['--port', '--latency-ms', '--tokens-per-s', '--fail-rate', '--kind', '--hang'])
      expect(help.stdout).toContain(flag);
    expect(run(['--bogus']).status).toBe(2);
  });

  it('exits 0 on config/demo.yaml and config/gateway.yaml, printing routes and upstreams', () => {
    const demo = check('config/demo.yaml');
    expect(demo.stderr).toBe('');
    expect(demo.status).toBe(0);
    expect(demo.stdout).toContain('config config/demo.yaml: ok');
    expect(demo.stdout).toMatch(/routes:[\s\S]*cheap {2}strategy=cost/);
    const gw = check('config/gateway.yaml', { OPENAI_API_KEY: 'sk-o', ANTHROPIC_API_KEY: 'sk-a' });
    expect(gw.status).toBe(0);
    expect(gw.stdout).toContain('openai/gpt-4o-mini');
    expect(gw.stdout).not.toContain('sk-o');
    const keyless = check('config/gateway.yaml');
    expect(keyless.status).toBe(0);
    expect(keyless.stdout).toContain('disabled');
  });

  it('exits non-zero on a bad file with the YAML path in stderr, and no stack trace', () => {
    const path = join(workDir(), 'bad.yaml');
    writeFileSync(path, BASE.replace('base_url: http://127.0.0.1:1/v1', 'base_urll: http://127.0.0.1:1/v1'));
    const r = check(path);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(path);
    expect(r.stderr).toContain('providers[0].base_urll: unknown key');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('metrics_auth', () => {
  it('is rejected without an admin_key (else /metrics would silently stay open)', () => {
    const text = JSON.stringify({
      server: { metrics_auth: true },
      providers: [{ name: 'p', base_url: 'http://127.0.0.1:1/v1', models: [{ name: 'm' }] }],
    });
    expect(() => parseConfigText(text, {})).toThrow(/server\.metrics_auth: needs server\.admin_key/);
  });
});

describe('map keys named like Object.prototype members are plain names (SPEC §8)', () => {
  const withRoutes = (routes: string): string => `${BASE}${routes}`;

  it('a __proto__ route is validated: its unknown upstream is reported with its YAML path', () => {
    const issues = issuesOf(withRoutes('  __proto__: { targets: [openai/nope] }\n'));
    expect(issues).toEqual(['routes.__proto__.targets[0]: unknown upstream "openai/nope"']);
    expect(issuesOf(withRoutes('  constructor: { targets: [openai/gpt-4o], bogus: 1 }\n'))).toEqual([
      'routes.constructor.bogus: unknown key',
    ]);
  });

  it('valid __proto__, constructor, toString and hasOwnProperty routes load as routes; Object.prototype is untouched', () => {
    const names = ['__proto__', 'constructor', 'toString', 'hasOwnProperty'];
    const loaded = parseConfigText(
      withRoutes(names.map((n) => `  ${n}: { targets: [openai/gpt-4o-mini] }\n`).join('')),
      {},
    );
    const routes = loaded.config.routes;
    expect(Object.keys(routes)).toEqual(['smart', ...names]);
    for (const n of names) {
      expect(Object.hasOwn(routes, n)).toBe(true);
      expect(routes[n]?.targets).toEqual(['openai/gpt-4o-mini']);
    }
    expect(Object.getPrototypeOf(routes)).toBeNull();
    expect(Object.isFrozen(routes)).toBe(true);
    expect(Object.hasOwn(Object.prototype, 'targets')).toBe(false);
    expect(({} as Record<string, unknown>)['targets']).toBeUndefined();
  });

  it('looking up an unconfigured name finds nothing, not an Object.prototype member', () => {
    const { routes } = parseConfigText(BASE, {}).config;
    for (const n of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'])
      expect(routes[n]).toBeUndefined();
    expect(Object.keys(parseConfigText(BASE.replace(/routes:[\s\S]*$/, ''), {}).config.routes)).toEqual([]);
    expect(
      Object.getPrototypeOf(parseConfigText(BASE.replace(/routes:[\s\S]*$/, ''), {}).config.routes),
    ).toBeNull();
  });

  it('__proto__ and constructor in strict objects are unknown keys, never dropped', () => {
    expect(issuesOf(`${BASE}__proto__: { server: { port: 1 } }\n`)).toEqual(['__proto__: unknown key']);
    expect(issuesOf(`${BASE}server: { __proto__: { port: 1 } }\n`)).toEqual([
      'server.__proto__: unknown key',
    ]);
    const tiered = withRoutes(
      '  t:\n    default_tier: fast\n    tiers: { fast: [openai/gpt-4o], __proto__: [openai/nope], constructor: [] }\n',
    );
    expect(issuesOf(tiered).sort()).toEqual([
      'routes.t.tiers.__proto__: unknown key',
      'routes.t.tiers.constructor: unknown key',
    ]);
  });

  it('a __proto__ header is refused with its path; other header names are plain entries', () => {
    const header = (h: string): string =>
      BASE.replace('api_key: sk-test', `api_key: sk-test\n    headers: { ${h} }`);
    expect(issuesOf(header('__proto__: x'))).toEqual([
      'providers[0].headers.__proto__: not usable as a header name',
    ]);
    expect(issuesOf(header('x-a: [1]'))).toHaveLength(1);
    expect(issuesOf(header('x-a: [1]'))[0]).toMatch(/^providers\[0\]\.headers\.x-a: /);
    const loaded = parseConfigText(header('constructor: y, x-team: z'), {});
    expect({ ...loaded.config.providers[0]?.headers }).toEqual({ constructor: 'y', 'x-team': 'z' });
  });

  it('a non-map where a map belongs is a type error with its path', () => {
    expect(issuesOf(withRoutes('').replace(/routes:[\s\S]*$/, 'routes: [a]\n'))[0]).toMatch(
      /^routes: .*record/,
    );
  });
});

describe('what of a provider counts as a secret (scrubbed from answers and logs)', () => {
  const loadWith = (provider: Record<string, unknown>) =>
    parseConfigText(
      JSON.stringify({
        providers: [{ name: 'p', models: [{ name: 'm' }], ...provider }],
        routes: { r: { targets: ['p/m'] } },
      }),
      {},
    );

  it('credential-named headers and query parameters whose values look like credentials, not settings', () => {
    const { secrets } = loadWith({
      base_url: 'https://x.example/v1?key=AIzaSyA1b2C3d4&key_format=json&code=fn-code-0123456789',
      headers: {
        'api-key': 'azure-0123456789',
        'x-use-auth-header': 'true',
        'x-auth-mode': 'none',
        Authorization: 'Token own-SECRET-5678',
      },
    });
    expect(secrets).toEqual(
      expect.arrayContaining(['AIzaSyA1b2C3d4', 'fn-code-0123456789', 'azure-0123456789', 'own-SECRET-5678']),
    );
    for (const setting of ['true', 'none', 'json']) expect(secrets).not.toContain(setting);
  });

  it('a base_url password with a literal % loads (sent as written) instead of throwing URIError', () => {
    const loaded = loadWith({ base_url: 'http://u:50%off-pw@127.0.0.1:9/v1' });
    const auth = loaded.config.providers[0]!.headers?.authorization;
    expect(auth).toBe(`Basic ${Buffer.from('u:50%off-pw').toString('base64')}`);
    expect(loaded.secrets).toContain('50%off-pw');
  });
});
