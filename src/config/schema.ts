import { z } from 'zod';

/** A number, or a numeric string (what `${PORT:-8080}` substitutes to). */
const num = z.union([
  z.number(),
  z
    .string()
    // As YAML 1.2 writes numbers (a value from ${VAR} arrives as text): `.15`, `+3`, `1e-7`.
    .regex(/^[-+]?(\.\d+|\d+(\.\d*)?)([eE][-+]?\d+)?$/, 'expected a number')
    .transform(Number),
]);
const posInt = num.pipe(z.number().int().positive());
const nonNegInt = num.pipe(z.number().int().nonnegative());
const nonNeg = num.pipe(z.number().nonnegative());
/**
 * A relative weight (hybrid factors, `weighted` shares): only proportions matter, and a sum of weights near
 * Number.MAX_VALUE is Infinity, which makes every score NaN. A million to one is finer than any routing.
 */
const weightNum = num.pipe(z.number().nonnegative().max(1_000_000, 'a weight is relative: at most 1000000'));
/** Node's timers fire after 1 ms past this (2^31-1 ms, ~24.8 days): a longer duration would end at once. */
export const MAX_TIMER_MS = 2_147_483_647;
const TIMER_LIMIT = `at most ${MAX_TIMER_MS} ms (about 24.8 days, the longest timer Node.js has)`;
const ms = num.pipe(z.number().int().positive().max(MAX_TIMER_MS, TIMER_LIMIT));
const nonNegMs = num.pipe(z.number().int().nonnegative().max(MAX_TIMER_MS, TIMER_LIMIT));
const bool = z.union([z.boolean(), z.enum(['true', 'false']).transform((v) => v === 'true')]);

/**
 * A map whose keys are names from the YAML, used instead of `z.record`, which silently drops a `__proto__`
 * key and with it any check of its value (SPEC §8: such keys are plain strings). Every own key is kept and
 * its value validated with the key in its path; keys in `refused` are errors instead. The result has no
 * prototype, so `map[name]` for an arbitrary name (`constructor`, `toString`) finds only configured entries.
 */
function nameMap<T extends z.ZodType>(value: T, refused: ReadonlyMap<string, string> = new Map()) {
  return z.unknown().transform((input, ctx) => {
    const out = Object.create(null) as Record<string, z.output<T>>;
    if (input === null || typeof input !== 'object' || Array.isArray(input)) {
      ctx.addIssue({ code: 'invalid_type', expected: 'record', input });
      return out;
    }
    for (const [key, raw] of Object.entries(input)) {
      const why = refused.get(key);
      if (why !== undefined) {
        ctx.addIssue({ code: 'custom', path: [key], message: why, input: raw });
        continue;
      }
      const result = value.safeParse(raw);
      if (result.success) {
        Object.defineProperty(out, key, {
          value: result.data,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      } else {
        for (const issue of result.error.issues) ctx.addIssue({ ...issue, path: [key, ...issue.path] });
      }
    }
    return out;
  });
}

/**
 * A key (a provider's api_key, a client or admin key): blanks around it are dropped (a Kubernetes secret
 * made with `echo` ends in a newline: sent as it is, undici refused every request; compared as it is, no
 * client could match it), and what is left must be sendable in a header.
 */
const keyText = z
  .string()
  .transform((s) => s.trim())
  .refine((s) => /^[\x20-\x7e\x80-\xff]*$/.test(s), {
    message: 'a key must be one line of printable Latin-1 text (no line breaks or control characters inside)',
  });

/** RFC 9110 field names (tokens), and values Node sends: no control character but tab, nothing past Latin-1. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * `providers[].headers`: names lower-cased (HTTP names are case-insensitive: `Authorization` must replace the
 * gateway's own `authorization`, not go beside it), each a valid name with a sendable value, none twice.
 * `__proto__` is refused: merged into a request's headers object it would set a prototype, not a header.
 */
const headerMap = nameMap(z.string()).transform((input, ctx) => {
  const out = Object.create(null) as Record<string, string>;
  for (const [name, value] of Object.entries(input)) {
    const lower = name.toLowerCase();
    const valid = HEADER_NAME.test(name);
    // An invalid name is not printed: written curl-style ("Authorization: Bearer KEY": "") it holds a secret.
    const why = !valid
      ? name.includes(':')
        ? 'a header name holds ":" (written curl-style?): give the name as the key and the value as its value'
        : 'a header name holds a character no header name may (a space, say)'
      : lower === '__proto__'
        ? 'not usable as a header name'
        : !HEADER_VALUE.test(value)
          ? 'a header value must be one line of Latin-1 text (no line breaks or control characters)'
          : Object.hasOwn(out, lower)
            ? `given twice (header names are case-insensitive)`
            : undefined;
    if (why !== undefined)
      ctx.addIssue({
        code: 'custom',
        path: valid ? [name] : [],
        message: why,
        input: value,
      });
    else out[lower] = value;
  }
  return out;
});

export const STRATEGY_NAMES = [
  'cost',
  'latency',
  'hybrid',
  'round-robin',
  'priority',
  'weighted',
  'least-busy',
] as const;
export type StrategyName = (typeof STRATEGY_NAMES)[number];

export const TIER_NAMES = ['fast', 'balanced', 'deep'] as const;
export type TierName = (typeof TIER_NAMES)[number];
/** TIER_NAMES as a set, for checking untrusted strings (headers, the LLM router's answer). */
export const TIER_SET: ReadonlySet<string> = new Set(TIER_NAMES);

const CAPABILITIES = ['tools', 'json', 'vision', 'stream', 'embeddings'] as const;
export type Capability = (typeof CAPABILITIES)[number];

const hybridWeightsSchema = z
  .strictObject({
    cost_weight: weightNum.default(0.4),
    latency_weight: weightNum.default(0.4),
    reliability_weight: weightNum.default(0.2),
  })
  // All 0 weighs nothing: every candidate would score 1, a route silently turned round-robin.
  .refine((w) => w.cost_weight !== 0 || w.latency_weight !== 0 || w.reliability_weight !== 0, {
    message: 'at least one of cost_weight, latency_weight and reliability_weight must be above 0',
  });
export type HybridWeights = z.infer<typeof hybridWeightsSchema>;

/** `strategy: latency` or `strategy: { hybrid: { cost_weight: ... } }`. */
const strategySchema = z.union([z.enum(STRATEGY_NAMES), z.strictObject({ hybrid: hybridWeightsSchema })]);

const timeoutsSchema = z.strictObject({
  connect_ms: ms.default(5_000),
  first_byte_ms: ms.default(30_000),
  idle_ms: ms.default(30_000),
  total_ms: ms.default(300_000),
});

const modelSchema = z.strictObject({
  name: z.string().min(1),
  /** The name sent upstream when it differs from `name`. */
  upstream_name: z.string().min(1).optional(),
  price: z
    .strictObject({
      input_per_mtok: nonNeg.default(0),
      output_per_mtok: nonNeg.default(0),
      /** Prompt tokens the upstream read from its cache (usage.prompt_tokens_details.cached_tokens); unset: input's. */
      cached_input_per_mtok: nonNeg.optional(),
    })
    .default({ input_per_mtok: 0, output_per_mtok: 0 }),
  /**
   * Tokens (prompt + max_tokens). Unset: the upstream's own 400 says when a request is too long, rather than
   * the gateway refusing on a guess (an estimated prompt against a window the model may not have).
   */
  context_window: posInt.optional(),
  capabilities: z.array(z.enum(CAPABILITIES)).default(['tools', 'json', 'vision', 'stream']),
  /** Share of traffic under the `weighted` strategy. */
  weight: weightNum.default(1),
  /** The provider's limits for this deployment, per minute: requests, and tokens (prompt + output). */
  rpm: posInt.optional(),
  tpm: posInt.optional(),
});

const providerSchema = z.strictObject({
  name: z
    .string()
    .min(1)
    .regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, ".", "_" and "-" only'),
  kind: z.enum(['openai', 'anthropic']).default('openai'),
  base_url: z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' }),
  api_key: keyText.optional(),
  headers: headerMap.optional(),
  timeouts: timeoutsSchema.default(timeoutsSchema.parse({})),
  /**
   * Connections to the provider, opened on demand. A stream holds one from its first byte to its last, so a
   * default below the streams a gateway serves at once would queue the rest behind whole answers (1,000
   * streams at 512: half of them waited for the others to finish before their first token).
   */
  max_concurrency: posInt.default(4096),
  /** Anthropic only: the `anthropic-version` header and the `max_tokens` sent when the client gives none. */
  anthropic_version: z.string().default('2023-06-01'),
  default_max_tokens: posInt.default(4096),
  models: z.array(modelSchema).min(1),
});

const targetSchema = z.union([
  z.string().min(1),
  z.strictObject({ target: z.string().min(1), weight: weightNum.optional() }),
]);

const ruleSchema = z.strictObject({
  name: z.string().optional(),
  /** Lower wins; matching rules of equal priority that pick different tiers are a tie. Default: 0. */
  priority: nonNegInt.optional(),
  if: z
    .strictObject({
      min_prompt_tokens: nonNegInt.optional(),
      max_prompt_tokens: nonNegInt.optional(),
      tools: bool.optional(),
      images: bool.optional(),
      /** A regular expression tested against the last user message. */
      last_user_message: z.string().optional(),
      /** `name` (present) or `name=value` (equal). */
      header: z
        .string()
        .refine((h) => HEADER_NAME.test(h.split('=', 1)[0]!), {
          message: "expected `name` or `name=value` with a header name (not curl's `name: value`)",
        })
        .optional(),
    })
    .refine(
      (c) =>
        !(
          c.min_prompt_tokens !== undefined &&
          c.max_prompt_tokens !== undefined &&
          c.min_prompt_tokens > c.max_prompt_tokens
        ),
      {
        message: 'min_prompt_tokens is above max_prompt_tokens: the rule can never match',
      },
    ),
  tier: z.enum(TIER_NAMES),
});

const routeSchema = z.strictObject({
  strategy: strategySchema.optional(),
  targets: z.array(targetSchema).optional(),
  /** A strict object, not `z.partialRecord`, so a `__proto__` key is reported as unknown rather than dropped. */
  tiers: z
    .strictObject({
      fast: z.array(targetSchema).optional(),
      balanced: z.array(targetSchema).optional(),
      deep: z.array(targetSchema).optional(),
    } satisfies Record<TierName, unknown>)
    .optional(),
  rules: z.array(ruleSchema).optional(),
  default_tier: z.enum(TIER_NAMES).optional(),
  router: z
    .strictObject({
      tier: z.enum(TIER_NAMES),
      timeout_ms: ms.default(1_500),
      cache_ttl_s: nonNeg.default(300),
      cache_size: posInt.default(10_000),
    })
    .optional(),
  on_stream_failure: z.enum(['terminate', 'continue']).default('terminate'),
});

/** `*`, an origin (`https://app.example.com`, `http://localhost:3000`) or one with a wildcard subdomain. */
const corsOrigin = z
  .string()
  .regex(/^(?:\*|https?:\/\/(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::\d{1,5})?)$/i, {
    message: 'expected "*" or an origin: scheme://host[:port] (host may start with "*."), no path',
  })
  .transform((o) => o.toLowerCase());

const serverSchema = z.strictObject({
  host: z.string().default('0.0.0.0'),
  port: nonNegInt.pipe(z.number().max(65_535)).default(8080),
  api_keys: z.array(keyText).default([]),
  admin_key: keyText.optional(),
  body_limit_bytes: posInt.default(10 * 1024 * 1024),
  passthrough: z.string().optional(),
  metrics_auth: bool.default(false),
  shutdown_grace_ms: nonNegMs.default(10_000),
  /** Headers and body must arrive within this bound (SPEC §8: a slow body gets 408). */
  request_timeout_ms: ms.default(30_000),
  /** /v1 requests get 503 + Retry-After past any of these (0 = that check off). */
  load_shedding: z
    .strictObject({
      max_event_loop_delay_ms: nonNegMs.default(1_000),
      max_heap_used_bytes: nonNegInt.default(0),
      max_rss_bytes: nonNegInt.default(0),
      max_event_loop_utilization: nonNeg.pipe(z.number().max(1)).default(0),
      // @fastify/under-pressure reads the event-loop delay at a 10 ms resolution: sampled more often than
      // this its histogram is empty, which it reads as an infinite delay (an idle gateway shed everything).
      sample_interval_ms: num
        .pipe(z.number().int().min(100, 'at least 100 ms').max(MAX_TIMER_MS, TIMER_LIMIT))
        .default(1_000),
      retry_after_s: posInt.default(5),
    })
    .default({
      max_event_loop_delay_ms: 1_000,
      max_heap_used_bytes: 0,
      max_rss_bytes: 0,
      max_event_loop_utilization: 0,
      sample_interval_ms: 1_000,
      retry_after_s: 5,
    }),
  /** Browser pages on these origins may call the gateway (CORS); absent: no CORS headers, as before. */
  cors: z
    .strictObject({
      origins: z.array(corsOrigin).min(1, 'at least one origin (or "*")'),
      max_age_s: nonNegInt.default(600),
    })
    .optional(),
  /** Per client key (per address without keys); 0 = no limit. */
  rate_limit: z
    .strictObject({ requests_per_minute: nonNegInt.default(0) })
    .default({ requests_per_minute: 0 }),
});

const routingSchema = z.strictObject({
  default_strategy: strategySchema.default('hybrid'),
  tie_epsilon: nonNeg.pipe(z.number().max(1)).default(0.02),
  max_attempts: posInt.default(3),
  total_timeout_ms: ms.default(600_000),
  /** Share of requests the latency strategy may send to upstreams with too few samples. */
  exploration_share: nonNeg.pipe(z.number().max(1)).default(0.1),
  /** Below this many samples an upstream counts as unmeasured. */
  min_samples: nonNegInt.default(3),
});

const breakerSchema = z.strictObject({
  failure_threshold: posInt.default(5),
  open_ms: ms.default(30_000),
  max_open_ms: ms.default(300_000),
  half_open_probes: posInt.default(1),
  success_threshold: posInt.default(3),
});

/** A redis:// URL's database, from its path (`/2`) or `?db=`: none, or a non-negative integer. */
function redisDatabaseIsNumber(text: string): boolean {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return true; // z.url reports it
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') return true; // so does the scheme
  const path = url.pathname;
  if (path !== '' && path !== '/' && !/^\/\d+$/.test(path)) return false;
  const db = url.searchParams.get('db');
  return db === null || /^\d+$/.test(db);
}

const stateSchema = z.discriminatedUnion('backend', [
  z.strictObject({ backend: z.literal('memory') }),
  z.strictObject({
    backend: z.literal('redis'),
    url: z
      .url({ protocol: /^rediss?$/, error: 'expected a redis:// or rediss:// URL' })
      // ioredis reads the database with parseInt: `/O` typed for `/0` became SELECT NaN, whose unhandled
      // refusal took the gateway down as soon as Redis answered.
      .refine(redisDatabaseIsNumber, {
        message: 'the database (the path, or ?db=) must be a non-negative integer',
      }),
    key_prefix: z.string().optional(),
  }),
]);

export const configSchema = z.strictObject({
  server: serverSchema.default(serverSchema.parse({})),
  providers: z.array(providerSchema).min(1),
  routes: nameMap(routeSchema).default(
    () => Object.create(null) as Record<string, z.output<typeof routeSchema>>,
  ),
  routing: routingSchema.default(routingSchema.parse({})),
  circuit_breaker: breakerSchema.default(breakerSchema.parse({})),
  state: stateSchema.default({ backend: 'memory' }),
});

export type Config = z.infer<typeof configSchema>;
export type ProviderConfig = Config['providers'][number];
export type ModelConfig = ProviderConfig['models'][number];
export type RouteConfig = Config['routes'][string];
export type RuleConfig = NonNullable<RouteConfig['rules']>[number];
export type TargetConfig = z.infer<typeof targetSchema>;
export type StrategyConfig = z.infer<typeof strategySchema>;
export type BreakerConfig = Config['circuit_breaker'];
export type RoutingConfig = Config['routing'];
export type TimeoutsConfig = ProviderConfig['timeouts'];
