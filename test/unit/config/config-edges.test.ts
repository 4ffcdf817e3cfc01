/**
 * Config loading at its edges (SPEC §3, §8 "Config"; README "Configuration"):
 * - `${VAR}` placeholders: a nested form is never left behind as literal text or with a stray brace; a key
 *   variable set to the empty string means no key exactly as an unset one does (never the text around the
 *   placeholder as a guessable key, never a silent "no client auth"); a placeholder in a map key is refused,
 *   not kept as a route name.
 * - Rejections of strategy objects and target objects name the key the user wrote and say what is wrong
 *   (a misspelt strategy is reported at the misspelt key; a word where a number belongs says a number is
 *   expected, as it does elsewhere).
 * - A tier rule whose conditions can never hold together is refused at its path, not loaded as dead config.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText, type LoadedConfig } from '../../../src/config/load.js';

type Result = { ok: true; loaded: LoadedConfig } | { ok: false; issues: string[] };

function load(text: string, env: Record<string, string> = {}): Result {
  try {
    return { ok: true, loaded: parseConfigText(text, env) };
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return { ok: false, issues: [...(err as ConfigError).issues] };
  }
}

function loaded(text: string, env: Record<string, string> = {}): LoadedConfig {
  const r = load(text, env);
  if (!r.ok) throw new Error(`expected it to load, got:\n  ${r.issues.join('\n  ')}`);
  return r.loaded;
}

function issuesOf(text: string, env: Record<string, string> = {}): string[] {
  const r = load(text, env);
  if (r.ok) throw new Error(`expected a rejection, it loaded:\n${text}`);
  return r.issues;
}

/** An OpenAI-kind provider with two models and an Anthropic one; each case adds what it is about. */
const PROVIDERS = [
  'providers:',
  '  - name: a',
  '    base_url: http://127.0.0.1:9/v1',
  '    api_key: sk-a-123456',
  '    models: [{ name: m }, { name: n }]',
  '  - name: b',
  '    kind: anthropic',
  '    base_url: http://127.0.0.1:9',
  '    api_key: sk-b-123456',
  '    models: [{ name: c }]',
];
const withProviders = (...lines: string[]): string => [...PROVIDERS, ...lines].join('\n') + '\n';

describe('${VAR} placeholders (SPEC §3; README: any other ${...} form is an error rather than literal text)', () => {
  it('a nested default ${A:-${B}} never leaves "${B}" or a stray "}" in the value: substituted, or refused with its path', () => {
    const text = withProviders('server:', '  admin_key: "${ADMIN_KEY:-${FALLBACK_ADMIN_KEY}}"');
    const envs: Record<string, string>[] = [
      { FALLBACK_ADMIN_KEY: 'fallback-admin-123' }, // outer unset: the default applies
      { ADMIN_KEY: 'admin-key-123', FALLBACK_ADMIN_KEY: 'fallback-admin-123' }, // outer set
    ];
    for (const env of envs) {
      const r = load(text, env);
      if (!r.ok) {
        expect(r.issues.join('\n')).toMatch(/^server\.admin_key: /m);
        continue;
      }
      const key = r.loaded.config.server.admin_key;
      // Supported or not, the key is never the placeholder text itself, nor the value with a brace added.
      expect(key, JSON.stringify(env)).not.toContain('${');
      expect(key, JSON.stringify(env)).not.toContain('}');
      expect(key).toBe(env.ADMIN_KEY ?? env.FALLBACK_ADMIN_KEY);
    }
  });

  // docker-compose passes `KEY=${KEY}` through as an empty string when the host has none, and Kubernetes
  // an optional secret key as ""; `${VAR:-default}` already treats empty as unset. README: "the whole
  // key, so admin-${SUFFIX} unset is no key, not admin-" — empty must not leave "admin-" either.
  it('a key variable set to "" inside a larger key is no key (as unset is): never "admin-" or "sk-"', () => {
    const text = [
      'server:',
      '  admin_key: "admin-${ADMIN_SUFFIX}"',
      'providers:',
      '  - name: a',
      '    base_url: http://127.0.0.1:9/v1',
      '    api_key: "sk-proj-${OPENAI_KEY}"',
      '    models: [{ name: m }]',
    ].join('\n');
    const env = { ADMIN_SUFFIX: '', OPENAI_KEY: '' };
    const r = load(text, env);
    if (!r.ok) {
      // Refusing it outright, naming each path, would do too.
      expect(r.issues.join('\n')).toMatch(/server\.admin_key/);
      return;
    }
    const c = r.loaded;
    expect(c.config.server.admin_key ?? '').not.toBe('admin-');
    expect(c.config.server.admin_key ?? '').toBe('');
    expect(c.warnings.join('\n')).toMatch(/server\.admin_key/);
    // The provider is disabled with a warning, not sent the guessable prefix as its key.
    expect(c.config.providers[0]!.api_key).not.toBe('sk-proj-');
    expect(c.disabledProviders.has('a')).toBe(true);
    // An explicit empty default is the same: no key, said in a warning.
    const defaulted = loaded(text.replace('${ADMIN_SUFFIX}', '${ADMIN_SUFFIX:-}'), { OPENAI_KEY: 'k' });
    expect(defaulted.config.server.admin_key ?? '').toBe('');
    expect(defaulted.warnings.join('\n')).toMatch(/server\.admin_key/);
  });

  it('a client key variable set to "" switches client auth off with the same warning an unset one gets', () => {
    const text = withProviders('server:', '  api_keys: ["${GATEWAY_API_KEY}"]');
    const unset = loaded(text, {});
    expect(unset.warnings.join('\n')).toMatch(/client authentication is off/);
    const empty = loaded(text, { GATEWAY_API_KEY: '' });
    expect(empty.config.server.api_keys.filter((k) => k !== '')).toEqual([]);
    expect(empty.warnings.join('\n')).toMatch(/client authentication is off/);
  });

  it('a placeholder in a map key is refused with its path, not kept as a route literally named "${ROUTE}"', () => {
    const text = withProviders('routes:', '  ${ROUTE_NAME}: { targets: [a/m] }');
    const r = load(text, { ROUTE_NAME: 'fast' });
    if (r.ok) {
      // Substituting keys would break "a value can never add a key"; keeping the text is the bug.
      expect(Object.keys(r.loaded.config.routes)).not.toContain('${ROUTE_NAME}');
    } else {
      expect(r.issues.join('\n')).toMatch(/routes\.\$\{ROUTE_NAME\}/);
    }
  });

  it('one pass: a variable whose value holds ${OTHER} stays data; ${VAR:-} is an empty default', () => {
    const c = loaded(
      withProviders('server:', '  admin_key: "${ADMIN_KEY}"', '  host: "${HOST:-}127.0.0.1"'),
      {
        ADMIN_KEY: 'x-${SECRET}-123456',
        SECRET: 'leaked',
      },
    ).config;
    expect(c.server.admin_key).toBe('x-${SECRET}-123456');
    expect(c.server.host).toBe('127.0.0.1');
  });
});

describe('rejections of strategy and target objects name what was written (SPEC §3: every error names its YAML path)', () => {
  it('a misspelt strategy object key is reported at that key, not as a missing `hybrid`', () => {
    const route = loadIssues(
      withProviders('routes:', '  r:', '    strategy: { hybird: { cost_weight: 1 } }', '    targets: [a/m]'),
    );
    expect(route).toMatch(/routes\.r\.strategy\.hybird/);
    expect(route).not.toMatch(/routes\.r\.strategy\.hybrid: .*received undefined/);

    const routing = loadIssues(
      withProviders('routing:', '  default_strategy: { hybird: { cost_weight: 1 } }'),
    );
    expect(routing).toMatch(/routing\.default_strategy\.hybird/);
  });

  it('a word where a number belongs says a number is expected inside target and hybrid objects too', () => {
    // At the top level it does: `providers[0].models[1].weight: expected a number`.
    expect(
      loadIssues(withProviders('routes:', '  r: { targets: [{ target: a/m, weight: heavy }] }')),
    ).toMatch(/^routes\.r\.targets\[0\]\.weight: expected a number$/m);
    expect(
      loadIssues(
        withProviders('routes:', '  r: { strategy: { hybrid: { cost_weight: high } }, targets: [a/m] }'),
      ),
    ).toMatch(/^routes\.r\.strategy\.hybrid\.cost_weight: expected a number$/m);
  });

  it('unknown keys inside target objects and strategy objects are reported at their own path', () => {
    expect(
      loadIssues(
        withProviders(
          'routes:',
          '  r:',
          '    tiers: { fast: [a/m, { target: a/n, wieght: 2 }] }',
          '    default_tier: fast',
        ),
      ),
    ).toMatch(/^routes\.r\.tiers\.fast\[1\]\.wieght: unknown key$/m);
    expect(
      loadIssues(withProviders('routes:', '  r: { strategy: { hybrid: {}, cost: {} }, targets: [a/m] }')),
    ).toMatch(/^routes\.r\.strategy\.cost: unknown key$/m);
  });
});

describe('a tier rule that can never match (README Tiers: rules pick the tier)', () => {
  it('min_prompt_tokens above max_prompt_tokens is refused at the rule, not loaded as a dead rule', () => {
    const issues = loadIssues(
      withProviders(
        'routes:',
        '  auto:',
        '    tiers: { fast: [a/m], deep: [a/n] }',
        '    default_tier: fast',
        '    rules:',
        '      - { name: huge, if: { min_prompt_tokens: 20000, max_prompt_tokens: 400 }, tier: deep }',
      ),
    );
    expect(issues).toMatch(/routes\.auto\.rules\[0\]\.if/);
  });

  it('min_prompt_tokens equal to max_prompt_tokens is a valid (narrow) rule', () => {
    const c = loaded(
      withProviders(
        'routes:',
        '  auto:',
        '    tiers: { fast: [a/m], deep: [a/n] }',
        '    default_tier: fast',
        '    rules: [{ if: { min_prompt_tokens: 400, max_prompt_tokens: 400 }, tier: deep }]',
      ),
    );
    expect(c.config.routes.auto!.rules).toHaveLength(1);
  });
});

function loadIssues(text: string, env: Record<string, string> = {}): string {
  return issuesOf(text, env).join('\n');
}
