import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import yaml from 'js-yaml';
import type { z } from 'zod';
import { configSchema, type Config, type TargetConfig, type TierName } from './schema.js';
import { basicAuth, collectSecrets, hasHeader } from './secrets.js';
import { nestedRepetition, ruleRegex } from '../routing/tiers.js';

/** A config file larger than this is refused before it is parsed. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** Nodes the parsed YAML may expand to (aliases count each time they are used): no billion laughs. */
const MAX_NODES = 100_000;
const MAX_DEPTH = 64;

export class ConfigError extends Error {
  readonly issues: readonly string[];
  constructor(issues: readonly string[], source?: string) {
    super(`${source ? `${source}: ` : ''}invalid config:\n  ${issues.join('\n  ')}`);
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export interface LoadedConfig {
  readonly config: Config;
  /** Providers whose `api_key` resolved empty: their upstreams are left out of every route. */
  readonly disabledProviders: ReadonlySet<string>;
  /** One line each, for the logger (e.g. a disabled provider). */
  readonly warnings: readonly string[];
  /** Every configured secret, for scrubbing upstream bodies and logs. Never printed. */
  readonly secrets: readonly string[];
  readonly source: string | undefined;
  /** The YAML text it was parsed from (the file watch's first "last seen"). */
  readonly text: string;
}

export type Env = Readonly<Record<string, string | undefined>>;

/**
 * A js-yaml reason without the text it quotes from the file: an unquoted secret that starts with `*` or `!` is
 * read as an alias or a tag, and the reason would print it (SPEC §8); the line and column say where.
 */
function unquoted(reason: string): string {
  const out = reason.replace(/"[^"\n]*"/g, '"…"').replace(/!<[^>\n]*>/g, '!<…>');
  return /\b(?:alias|tag)\b/.test(reason) ? `${out} (quote a value that starts with * or !)` : out;
}

/** `a.b[1].c` from a path of keys and indices. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out === '' ? '(root)' : out;
}

export function loadConfigFile(path: string, env: Env = process.env): LoadedConfig {
  return parseConfigText(readBounded(path), env, path);
}

/**
 * The file's bytes, read no further than the limit: a pipe or a device (`/dev/zero`) has no size to stat,
 * so the read itself stops one byte past it. A directory or an unreadable file is a message, not a trace.
 */
export function readBounded(path: string): Buffer {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    if (fstatSync(fd).isDirectory()) throw new ConfigError(['is a directory, not a config file'], path);
    const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buf, length, buf.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > MAX_CONFIG_BYTES) {
        throw new ConfigError([`config file is too large; the limit is ${MAX_CONFIG_BYTES} bytes`], path);
      }
    }
    return buf.subarray(0, length);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(
      [`cannot read config file: ${(err as NodeJS.ErrnoException).code ?? 'error'}`],
      path,
    );
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

export function parseConfigText(
  raw: Uint8Array | string,
  env: Env = process.env,
  source?: string,
): LoadedConfig {
  let text: string;
  if (typeof raw === 'string') text = raw;
  else {
    if (raw.byteLength > MAX_CONFIG_BYTES) {
      throw new ConfigError([`config is ${raw.byteLength} bytes; the limit is ${MAX_CONFIG_BYTES}`], source);
    }
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
    } catch {
      throw new ConfigError(['config file is not valid UTF-8'], source);
    }
  }
  let doc: unknown;
  try {
    // Merge keys (`<<: *defaults`) as configs share timeouts; empty documents (Helm's and kubectl's `---`
    // before and after) are no config.
    const docs = yaml
      .loadAll(text, undefined, { schema: YAML_SCHEMA, json: false, filename: source })
      .filter((d) => d !== null && d !== undefined);
    if (docs.length > 1)
      throw new ConfigError(
        [`the file holds ${docs.length} YAML documents (---): one config is expected`],
        source,
      );
    doc = docs[0];
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const e = err as { reason?: string; mark?: { line: number; column: number } };
    const where = e.mark ? ` (line ${e.mark.line + 1}, column ${e.mark.column + 1})` : '';
    throw new ConfigError([`YAML syntax error: ${unquoted(e.reason ?? 'unparsable')}${where}`], source);
  }
  if (doc === undefined || doc === null) throw new ConfigError(['config is empty'], source);

  const substituted = substituteEnv(doc, env, source);
  const parsed = configSchema.safeParse(substituted.value);
  if (!parsed.success) throw new ConfigError(zodIssues(parsed.error), source);
  const config = parsed.data;

  const disabled = new Set<string>();
  const warnings: string[] = [];
  warnings.push(...substituted.unsetKeys);
  if (substituted.clientKeyUnset && !config.server.api_keys.some((k) => k !== ''))
    warnings.push('server.api_keys: no client key is set: client authentication is off');
  config.providers.forEach((p, i) => {
    const basic = basicAuth(p.base_url);
    if (basic !== undefined && !hasHeader(p.headers, 'authorization')) {
      if (p.kind === 'openai' && p.api_key !== undefined)
        warnings.push(
          `providers[${i}] "${p.name}": the user and password in base_url are not sent: api_key is the Authorization`,
        );
      else p.headers = { authorization: basic, ...p.headers };
    }
    if (p.api_key !== undefined && p.api_key.trim() === '') {
      disabled.add(p.name);
      warnings.push(`providers[${i}] "${p.name}": api_key is empty; provider disabled`);
    }
  });
  const issues = crossCheck(config, disabled, warnings);
  if (issues.length > 0) throw new ConfigError(issues, source);

  return {
    config: deepFreeze(config),
    disabledProviders: disabled,
    warnings,
    secrets: collectSecrets(config),
    source,
    text,
  };
}

function zodIssues(error: z.ZodError): string[] {
  return error.issues.flatMap((issue) => describeIssue(issue, []));
}

function describeIssue(issue: z.core.$ZodIssue, prefix: readonly PropertyKey[]): string[] {
  const path = [...prefix, ...issue.path];
  if (issue.code === 'unrecognized_keys')
    return issue.keys.map((k) => `${formatPath([...path, k])}: unknown key`);
  if (issue.code === 'invalid_union' && 'errors' in issue) {
    const branches = issue.errors as z.core.$ZodIssue[][];
    // A key the object form does not know is the mistake (`strategy: { hybird: ... }`), not the key it then
    // lacks (`hybrid`, which the user never wrote).
    const unknown = branches.flat().find((b) => b.code === 'unrecognized_keys');
    if (unknown) return describeIssue(unknown, path);
    // Else the closest branch's own message rather than zod's generic "invalid input": the one that got
    // deepest into the value (`strategy: { hybrid: { cost_weight: -1 } }` is about that weight, not an
    // unknown strategy name), else the first that did not refuse the value's type outright; read down
    // through a union inside it (a number field of a target object: `weight: heavy`).
    const firsts = branches.map((b) => b[0]).filter((b): b is z.core.$ZodIssue => b !== undefined);
    const deepest = firsts.reduce<z.core.$ZodIssue | undefined>(
      (best, b) => (b.path.length > (best?.path.length ?? 0) ? b : best),
      undefined,
    );
    const best = deepest ?? firsts.find((b) => b.code !== 'invalid_type');
    if (best) return describeIssue(best, path);
    if (firsts.some((b) => b.code === 'invalid_type' && b.expected === 'number'))
      return [`${formatPath(path)}: expected a number`]; // `port: true`, `max_attempts:` left empty
  }
  return [`${formatPath(path)}: ${issue.message}`];
}

/** YAML 1.2's core schema (`yes` is text, not true) with merge keys. */
const YAML_SCHEMA = yaml.CORE_SCHEMA.extend({
  implicit: [(yaml as unknown as { types: { merge: yaml.Type } }).types.merge],
});

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
/** `${A:-${B}}`: a placeholder in a default, which one pass does not substitute (it left `${B}` or a `}`). */
const NESTED_DEFAULT = /\$\{[A-Za-z_][A-Za-z0-9_]*:-[^}]*\$\{/;

/**
 * `${VAR}` and `${VAR:-default}` replaced in string scalars, in one pass over the parsed tree: a value is
 * data, it can never add a key or a node. Counts nodes as it goes so aliases cannot expand unbounded.
 */
function substituteEnv(
  doc: unknown,
  env: Env,
  source: string | undefined,
): { value: unknown; unsetKeys: string[]; clientKeyUnset: boolean } {
  let nodes = 0;
  const missing: string[] = [];
  /** Warnings: client or admin keys whose variable is unset (they are empty). */
  const unsetKeys: string[] = [];
  let clientKeyUnset = false;
  const walk = (node: unknown, path: PropertyKey[]): unknown => {
    if (++nodes > MAX_NODES) {
      throw new ConfigError([`config expands to more than ${MAX_NODES} nodes (YAML aliases?)`], source);
    }
    if (path.length > MAX_DEPTH) {
      throw new ConfigError([`${formatPath(path)}: nested deeper than ${MAX_DEPTH} levels`], source);
    }
    if (typeof node === 'string') {
      // A placeholder in another shell form (`${VAR-x}`, `${VAR:?msg}`, `${ VAR }`, unclosed) would otherwise
      // be used as literal text: as a key sent upstream, or an admin key anyone can read here.
      if (node.includes('${') && (node.replace(ENV_REF, '').includes('${') || NESTED_DEFAULT.test(node))) {
        missing.push(
          // The value is not shown: it may be a key with a typo in it.
          `${formatPath(path)}: malformed placeholder: only \${VAR} and \${VAR:-default} are substituted`,
        );
        return node;
      }
      let blank = false;
      /** A placeholder in a key's place came out empty by its own default (`${SUFFIX:-}`). */
      let defaultedEmpty = false;
      /** ... and one came out as something: the key is that (`${PREFIX:-}${SECRET}` is SECRET). */
      let resolved = false;
      const keyPath = isServerKey(path) || isProviderApiKey(path);
      const text = node.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
        const value = Object.hasOwn(env, name) ? env[name] : undefined;
        if (value !== undefined && value !== '') {
          resolved = true;
          return value;
        }
        if (fallback !== undefined) {
          if (fallback !== '') resolved = true;
          else if (keyPath) defaultedEmpty = true;
          return fallback;
        }
        // An unset variable is fatal except where empty means "none": a provider's own api_key (that
        // provider is then disabled), and the client and admin keys (SPEC §3: `api_keys:
        // ["${GATEWAY_API_KEY}"]`, "empty or absent: no client auth"), which are then said in a warning.
        // The whole key is empty then, not the text around the placeholder: `admin-${SUFFIX}` unset must
        // not leave the admin key `admin-` for anyone to guess.
        // Set to "" (docker-compose and optional Kubernetes secrets pass empty strings) is unset for a key:
        // `sk-proj-${KEY}` empty must not leave a key `sk-proj-`, nor `admin-${SUFFIX}` one anyone can guess.
        if (value === undefined || isServerKey(path) || isProviderApiKey(path)) {
          const why = value === undefined ? 'is not set' : 'is empty';
          if (isServerKey(path)) {
            blank = true;
            unsetKeys.push(`${formatPath(path)}: environment variable ${name} ${why}: that key is empty`);
            if (path[1] === 'api_keys') clientKeyUnset = true;
          } else if (isProviderApiKey(path)) blank = true;
          else missing.push(`${formatPath(path)}: environment variable ${name} ${why}`);
        }
        return '';
      });
      // A key whose placeholders all came out empty by default is no key (`admin-${SUFFIX:-}` is not the
      // guessable `admin-`); one with a value among them keeps it.
      if (defaultedEmpty && !resolved && !blank) {
        blank = true;
        if (isServerKey(path)) {
          unsetKeys.push(`${formatPath(path)}: its environment variables are empty: that key is empty`);
          if (path[1] === 'api_keys') clientKeyUnset = true;
        }
      }
      return blank ? '' : text;
    }
    if (Array.isArray(node)) return node.map((v, i) => walk(v, [...path, i]));
    if (node !== null && typeof node === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(node)) {
        // Keys are not substituted (a value can never add a key): one that looks like a placeholder would
        // otherwise be taken as written, a route named `${ROUTE}`.
        if (k.includes('${'))
          missing.push(`${formatPath([...path, k])}: placeholders are not substituted in keys`);
        Object.defineProperty(out, k, {
          value: walk(v, [...path, k]),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    return node;
  };
  const value = walk(doc, []);
  if (missing.length > 0) throw new ConfigError(missing, source);
  return { value, unsetKeys, clientKeyUnset };
}

/** `server.api_keys[i]` and `server.admin_key`: keys whose absence switches their check off. */
function isServerKey(path: readonly PropertyKey[]): boolean {
  if (path[0] !== 'server') return false;
  return (path.length === 3 && path[1] === 'api_keys') || (path.length === 2 && path[1] === 'admin_key');
}

/** `providers[i].api_key`, and not a look-alike deeper down such as `providers[i].headers.api_key`. */
function isProviderApiKey(path: readonly PropertyKey[]): boolean {
  return path.length === 3 && path[0] === 'providers' && path[2] === 'api_key';
}

export function targetName(t: TargetConfig): string {
  return typeof t === 'string' ? t : t.target;
}

function crossCheck(config: Config, disabled: ReadonlySet<string>, warnings: string[]): string[] {
  const issues: string[] = [];
  const upstreams = new Map<string, { embeddings: boolean }>();
  const seenProviders = new Set<string>();
  config.providers.forEach((p, i) => {
    if (seenProviders.has(p.name)) issues.push(`providers[${i}].name: duplicate provider "${p.name}"`);
    seenProviders.add(p.name);
    const seenModels = new Set<string>();
    p.models.forEach((m, j) => {
      if (seenModels.has(m.name))
        issues.push(`providers[${i}].models[${j}].name: duplicate model "${m.name}"`);
      seenModels.add(m.name);
      upstreams.set(`${p.name}/${m.name}`, { embeddings: m.capabilities.includes('embeddings') });
    });
    if (p.kind === 'anthropic' && p.models.some((m) => m.capabilities.includes('embeddings'))) {
      issues.push(`providers[${i}].models: anthropic providers serve no embeddings`);
    }
  });

  /** Checks a target list; answers whether it has an embedding model. */
  const checkTargets = (list: readonly TargetConfig[], path: string): boolean => {
    const kinds = new Set<boolean>();
    // SPEC §2: no upstream is tried twice by one request, so listing one twice can only be a mistake.
    const seen = new Set<string>();
    list.forEach((t, k) => {
      const name = targetName(t);
      const up = upstreams.get(name);
      if (!up) issues.push(`${path}[${k}]: unknown upstream "${name}"`);
      else if (seen.has(name)) issues.push(`${path}[${k}]: "${name}" is listed twice`);
      else kinds.add(up.embeddings);
      seen.add(name);
    });
    if (kinds.size > 1) issues.push(`${path}: mixes embedding and chat models`);
    return kinds.has(true);
  };

  for (const [name, route] of Object.entries(config.routes)) {
    const base = `routes.${name}`;
    if (name.includes('/'))
      issues.push(`${base}: a route name cannot contain "/" (reserved for provider/model)`);
    if (route.on_stream_failure === 'continue') {
      issues.push(`${base}.on_stream_failure: "continue" is planned but not built yet; use "terminate"`);
    }
    if (route.targets && route.tiers) issues.push(`${base}: give either targets or tiers, not both`);
    if (!route.targets && !route.tiers) issues.push(`${base}: needs targets (or tiers)`);
    if (route.targets) {
      if (route.targets.length === 0) issues.push(`${base}.targets: must list at least one upstream`);
      checkTargets(route.targets, `${base}.targets`);
      for (const key of ['rules', 'default_tier', 'router'] as const) {
        if (route[key] !== undefined) issues.push(`${base}.${key}: only meaningful with tiers`);
      }
    }
    if (route.tiers) {
      const listed = (tier: TierName): number => route.tiers?.[tier]?.length ?? 0;
      const live = (tier: TierName): number =>
        (route.tiers?.[tier] ?? []).filter((t) => !disabled.has(targetName(t).split('/')[0] ?? '')).length;
      // A tier that lists nothing is a mistake; one whose providers are all disabled (no key) only serves 503s.
      const needUpstreams = (tier: TierName, path: string): void => {
        if (listed(tier) === 0) issues.push(`${path}: tier "${tier}" has no upstreams`);
        else if (live(tier) === 0) warnings.push(`${path}: every upstream of tier "${tier}" is disabled`);
      };
      let embeddings = false;
      for (const [tier, list] of Object.entries(route.tiers))
        if (checkTargets(list ?? [], `${base}.tiers.${tier}`)) embeddings = true;
      // Tiers are chosen on a conversation (tools, images, its last user message, the LLM router's reading).
      if (embeddings)
        issues.push(`${base}.tiers: tiers are for chat models; an embeddings route lists its targets`);
      if (!route.default_tier) issues.push(`${base}.default_tier: required with tiers`);
      else needUpstreams(route.default_tier, `${base}.default_tier`);
      if (route.router) needUpstreams(route.router.tier, `${base}.router.tier`);
      route.rules?.forEach((rule, k) => {
        if (rule.if.last_user_message !== undefined) {
          try {
            ruleRegex(rule.if.last_user_message);
            if (nestedRepetition(rule.if.last_user_message))
              warnings.push(
                `${base}.rules[${k}].if.last_user_message: a repeated group that holds a repetition can ` +
                  'backtrack exponentially on a message it does not match, holding the gateway for seconds; ' +
                  'rewrite it without one (e.g. "^[\\w\\s]+$" for "^(\\w+\\s?)+$")',
              );
          } catch {
            issues.push(`${base}.rules[${k}].if.last_user_message: invalid regular expression`);
          }
        }
        if (!route.tiers?.[rule.tier]?.length)
          issues.push(`${base}.rules[${k}].tier: tier "${rule.tier}" has no upstreams`);
      });
    }
  }

  if (config.server.metrics_auth && !config.server.admin_key) {
    issues.push('server.metrics_auth: needs server.admin_key (otherwise /metrics would stay open)');
  }
  const pass = config.server.passthrough;
  if (pass !== undefined) {
    const p = config.providers.find((x) => x.name === pass);
    if (!p) issues.push(`server.passthrough: unknown provider "${pass}"`);
    else if (p.kind !== 'openai')
      issues.push(`server.passthrough: provider "${pass}" must be of kind openai`);
  }
  return issues;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
