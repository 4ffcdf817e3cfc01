import type { Capability, RoutingConfig, StrategyName } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { attempted, describeAttempts, type AttemptRecord } from '../resilience/failover.js';
import type { RouteRuntime, RouteTarget, Upstream } from '../runtime.js';
import type { NotForAnthropic, RequestFeatures } from './features.js';
import { getStrategy } from './strategies/index.js';
import { withNote } from './strategies/rank.js';
import type { RankedCandidate, StrategyContext } from './types.js';

export interface PlanOptions {
  readonly strategy: StrategyName;
  /** `x-router-provider`: only this provider's upstreams. */
  readonly provider: string | undefined;
  readonly routing: RoutingConfig;
  readonly now: number;
  readonly random: () => number;
  /** Explain: decide without advancing the route's rotation, so the next real request gets the same answer. */
  readonly peek?: boolean;
  /**
   * A call made on the route's behalf (the LLM router's own request): leaves the route's rotation and
   * explain's pending draws alone and draws fresh numbers. With `peek` it replayed explain's draws, so every
   * router call on a route got the same weighted or exploring pick until a real decision drew one.
   */
  readonly aside?: boolean;
  /** Attempts that already failed in this request (its LLM router call): their upstreams are left out. */
  readonly exclude?: readonly AttemptRecord[] | undefined;
  /** The tier `targets` are (a tiered route): its own rotation turns. */
  readonly tier?: string | undefined;
}

export interface Plan {
  readonly ranked: RankedCandidate<RouteTarget>[];
  readonly strategy: StrategyName;
  /**
   * Why no target can take the request (a missing capability, the context window, every breaker open), when
   * `ranked` is empty. Returned, not thrown: the route is resolved, so the caller answers it as a routed
   * request (its x-router-* headers, counted under its route).
   */
  readonly refusal?: GatewayError;
  /**
   * How soon a target left out while it cools down from a 429 is back, ms: when every one tried answers 429
   * too, the client's Retry-After is the sooner of the two (runFailover's `coolingMs`).
   */
  readonly coolingMs?: number;
  /** Targets left out at their rpm/tpm: a refusal as too long may wait for a larger window among them. */
  readonly atQuota?: readonly RouteTarget[] | undefined;
  /** Explain (`peek`) only: each target left out, and why in words with its figures. */
  readonly excluded?: readonly { readonly target: RouteTarget; readonly reason: string }[] | undefined;
}

/** Rotation wraps here (a multiple of every candidate count that matters, and a small integer). */
const ROTATION_MOD = 1_073_741_824;

/** Why a candidate was left out: the first reason that applies. */
type Exclusion = 'provider' | 'capability' | 'context' | 'breaker' | 'failed';

/**
 * Filters a route's targets down to those that can serve this request, then ranks them with the strategy.
 * When none is left, the plan's refusal says why (capability, context window, open breakers), not just "failed".
 */
export function planRequest(
  route: RouteRuntime,
  targets: readonly RouteTarget[],
  features: RequestFeatures,
  opts: PlanOptions,
): Plan {
  const eligible: RouteTarget[] = [];
  let firstExclusion: Exclusion | undefined;
  /** Capabilities some target lacked: made only when one does (most requests never need it). */
  let missing: Set<string> | undefined;
  let largestWindow = 0;
  let minOpenMs = Number.POSITIVE_INFINITY;
  let allRateLimited = true;
  let coolingMs = Number.POSITIVE_INFINITY;
  /** Targets left out at their rpm/tpm: made only when one is. */
  let atQuota: RouteTarget[] | undefined;
  let excluded: { target: RouteTarget; reason: string }[] | undefined;
  const need = features.contextTokens + (features.requestedOutputTokens ?? 0);

  for (const t of targets) {
    const up = t.upstream;
    let why: Exclusion | undefined;
    if (opts.provider !== undefined && up.provider.name !== opts.provider) why = 'provider';
    else if (!capable(up.capabilities, up.provider.kind, features, undefined)) {
      why = 'capability';
      capable(up.capabilities, up.provider.kind, features, (missing ??= new Set()));
    } else if (up.model.context_window !== undefined && pastWindow(up, features, up.model.context_window)) {
      why = 'context';
      largestWindow = Math.max(largestWindow, up.model.context_window);
    } else if (!up.breaker.canAttempt()) {
      why = 'breaker';
      const openMs = up.breaker.msUntilHalfOpen();
      minOpenMs = Math.min(minOpenMs, openMs);
      if (up.breaker.snapshot().tripCause !== 'rate_limit') allRateLimited = false;
      else coolingMs = Math.min(coolingMs, openMs);
    } else if (up.quota !== undefined && !up.quota.room(quotaTokens(features))) {
      // At the provider's per-minute limit: a rate limit we saw coming, kept off as a 429's cooldown is.
      why = 'breaker';
      (atQuota ??= []).push(t);
      const ms = up.quota.msUntilRoom(quotaTokens(features));
      minOpenMs = Math.min(minOpenMs, ms);
      coolingMs = Math.min(coolingMs, ms);
    } else if (opts.exclude !== undefined && attempted(opts.exclude, up.id)) why = 'failed';
    if (why === undefined) eligible.push(t);
    else {
      if (firstExclusion === undefined || rank(why) > rank(firstExclusion)) firstExclusion = why;
      // Explain says why each one is missing from its list (a real request never builds this).
      if (opts.peek)
        (excluded ??= []).push({
          target: t,
          reason: exclusionReason(why, t, features, need, opts.provider, atQuota?.includes(t) === true),
        });
    }
  }

  if (eligible.length === 0) {
    const refusal = noCandidate(route, firstExclusion, {
      missing: missing ?? new Set(),
      largestWindow,
      need,
      minOpenMs,
      allRateLimited,
      atQuota: atQuota !== undefined,
      provider: opts.provider,
      tier: opts.tier,
      failed: opts.exclude,
      notForAnthropic: features.notForAnthropic,
      toolsParam: features.toolsParam,
      promptParam: features.promptParam,
    });
    return { ranked: [], strategy: opts.strategy, refusal, atQuota };
  }

  // The route's (or its tier's) turns are its own traffic's; a pinned provider or another strategy counts
  // its own (RouteRuntime.sideRotation).
  const own = opts.provider === undefined && opts.strategy === route.strategy;
  const sideKey = own ? undefined : `${opts.tier ?? ''}\n${opts.provider ?? ''}\n${opts.strategy}`;
  const tierTurns = opts.tier === undefined || !own ? undefined : route.tierRotation;
  const rotation =
    sideKey !== undefined
      ? (route.sideRotation?.get(sideKey) ?? 0)
      : tierTurns
        ? (tierTurns.get(opts.tier!) ?? 0)
        : route.rotation;
  const ctx: StrategyContext = {
    promptTokens: features.promptTokens,
    requestedOutputTokens: features.requestedOutputTokens,
    choices: features.choices,
    now: opts.now,
    random: opts.peek
      ? peekRandom(route, opts.random)
      : opts.aside || route.pendingRandom.length === 0
        ? opts.random
        : takeRandom(route, opts.random),
    tieEpsilon: opts.routing.tie_epsilon,
    rotation,
    explorationShare: opts.routing.exploration_share,
    minSamples: opts.routing.min_samples,
    weights: route.weights,
  };
  if (!opts.peek && !opts.aside) {
    const tier = opts.tier;
    if (sideKey !== undefined) {
      (route.sideRotation ??= new Map()).set(sideKey, (rotation + 1) % ROTATION_MOD);
    } else {
      const setTurn = tierTurns
        ? (n: number) => void tierTurns.set(tier!, n % ROTATION_MOD)
        : (n: number) => void (route.rotation = n % ROTATION_MOD);
      setTurn(rotation + 1);
      // Replicas count round-robin turns in one shared counter: the next turn here continues from the fleet's.
      if (opts.strategy === 'round-robin')
        route.turns?.redis?.takeTurn(route.name, tierTurns ? tier : undefined, setTurn);
    }
  }
  const ranked = getStrategy(opts.strategy)(eligible, ctx);
  if (opts.strategy !== 'priority') busyLast(ranked);
  // One shape for the common case (nothing left out): no fields a plan rarely has.
  if (atQuota === undefined && excluded === undefined)
    return Number.isFinite(coolingMs)
      ? { ranked, strategy: opts.strategy, coolingMs }
      : { ranked, strategy: opts.strategy };
  return { ranked, strategy: opts.strategy, coolingMs, atQuota, excluded };
}

/** Why explain's plan left `t` out, with the figures behind it. */
function exclusionReason(
  why: Exclusion,
  t: RouteTarget,
  features: RequestFeatures,
  need: number,
  provider: string | undefined,
  atQuota: boolean,
): string {
  const up = t.upstream;
  switch (why) {
    case 'provider':
      return `not from provider "${provider ?? ''}" (x-router-provider)`;
    case 'capability': {
      const lacks = new Set<string>();
      capable(up.capabilities, up.provider.kind, features, lacks);
      return `does not support ${[...lacks].join(', ')}`;
    }
    case 'context':
      return `the request needs ~${needOf(up, features, need)} tokens, its context window is ${up.model.context_window ?? 0}`;
    case 'breaker': {
      if (atQuota && up.quota !== undefined) {
        const q = up.quota.snapshot();
        const ms = up.quota.msUntilRoom(quotaTokens(features));
        return `at its per-minute budget (${q.requests_last_minute}${q.rpm === null ? '' : `/${q.rpm}`} requests, ${q.tokens_last_minute}${q.tpm === null ? '' : `/${q.tpm}`} tokens in the last 60 s): room in ${Math.ceil(ms / 1000)} s`;
      }
      const b = up.breaker.snapshot();
      if (b.state === 'half_open') return 'circuit half-open: its trial requests are all out';
      return `circuit open (${b.tripCause ?? 'errors'}): ${Math.ceil(b.msUntilHalfOpen / 1000)} s until a trial`;
    }
    case 'failed':
      return 'already failed in this request';
  }
}

/**
 * The tokens a request takes of an upstream's `tpm` when it is sent: its prompt and, when it names one, the
 * most output it may get back (every choice's). Settled to the tokens it used when it ends (runFailover).
 */
export function quotaTokens(
  f: Pick<RequestFeatures, 'promptTokens' | 'requestedOutputTokens' | 'choices'>,
): number {
  return f.promptTokens + (f.requestedOutputTokens ?? 0) * Math.max(1, f.choices);
}

/**
 * Candidates whose provider has every connection busy (max_concurrency, all models and configs counted) go
 * after the others, in their order: the request would wait for a connection and, past first_byte_ms, fail
 * over as queue_timeout while another upstream was free. Strategies score an upstream's own in-flight count,
 * not its provider's capacity. They stay in the failover chain; `priority` keeps the configured order.
 */
function busyLast(ranked: RankedCandidate<RouteTarget>[]): void {
  let busy = 0;
  for (const r of ranked) if (full(r)) busy++;
  if (busy === 0 || busy === ranked.length) return;
  const free = ranked.filter((r) => !full(r));
  const held = ranked.filter(full);
  for (let i = 0; i < free.length; i++) ranked[i] = free[i]!;
  for (let i = 0; i < held.length; i++) {
    const r = held[i]!;
    const { active, capacity } = r.candidate.upstream.provider.client;
    ranked[free.length + i] = withNote(
      r,
      `provider at max_concurrency (${active}/${capacity} busy): after the upstreams with a free connection`,
    );
  }
}

function full(r: RankedCandidate<RouteTarget>): boolean {
  const client = r.candidate.upstream.provider.client;
  return client.active >= client.capacity;
}

/**
 * Explain draws its random numbers ahead and leaves them on the route; the next real decision there uses
 * them first. So explain names the very upstream a `weighted` or exploring request then gets, and a second
 * explain replays the same draws. At most one decision's draws are ever pending.
 */
function peekRandom(route: RouteRuntime, source: () => number): () => number {
  let i = 0;
  return () => {
    const pending = route.pendingRandom;
    if (i === pending.length) pending.push(source());
    return pending[i++]!;
  };
}

function takeRandom(route: RouteRuntime, source: () => number): () => number {
  return () => route.pendingRandom.shift() ?? source();
}

/**
 * The most telling exclusion wins the error: an open breaker says more than a pinned provider, and a failure
 * in this very request more than an open breaker (as runFailover, which skips open breakers, reports it).
 */
function rank(e: Exclusion): number {
  return e === 'failed' ? 5 : e === 'breaker' ? 4 : e === 'context' ? 3 : e === 'capability' ? 2 : 1;
}

/** Which feature of a request needs which upstream capability. */
const NEEDS: readonly (readonly ['stream' | 'tools' | 'json' | 'images', Capability])[] = [
  ['stream', 'stream'],
  ['tools', 'tools'],
  ['json', 'json'],
  ['images', 'vision'],
];

function capable(
  caps: ReadonlySet<Capability>,
  kind: 'openai' | 'anthropic',
  f: RequestFeatures,
  /** Told what is missing, when given. */
  missing: Set<string> | undefined,
): boolean {
  // A table walk rather than a helper closure: this runs per target on every request.
  let ok = true;
  for (let i = 0; i < NEEDS.length; i++) {
    const [feature, cap] = NEEDS[i]!;
    if (f[feature] && !caps.has(cap)) {
      missing?.add(cap);
      ok = false;
    }
  }
  // Anthropic's API answers one choice: sending it `n > 1` would silently return fewer than asked.
  if (f.choices > 1 && kind === 'anthropic') {
    missing?.add('n > 1');
    ok = false;
  }
  if (f.notForAnthropic !== undefined && kind === 'anthropic') {
    missing?.add(f.notForAnthropic.what);
    ok = false;
  }
  return ok;
}

/** The request field a missing capability is about (the first that applies). */
function missingParam(
  missing: ReadonlySet<string>,
  notForAnthropic: NotForAnthropic | undefined,
  toolsParam: string,
): string {
  if (missing.has('tools')) return toolsParam;
  if (missing.has('n > 1')) return 'n';
  if (missing.has('json')) return 'response_format';
  if (missing.has('vision')) return 'messages';
  if (missing.has('stream')) return 'stream';
  return notForAnthropic !== undefined && missing.has(notForAnthropic.what)
    ? notForAnthropic.param
    : 'messages';
}

/** A pinned provider the candidates lack: in a tier, which tiers of the route do have it. */
function noProviderMessage(route: RouteRuntime, tier: string | undefined, provider: string): string {
  const name = `\`${route.name}\``;
  if (tier === undefined || route.tiers === undefined)
    return `route ${name} has no upstream from provider "${provider}"`;
  const having = Object.entries(route.tiers)
    .filter(([, list]) => list?.some((t) => t.upstream.provider.name === provider))
    .map(([t]) => t);
  return (
    `route ${name}'s tier \`${tier}\` has no upstream from provider "${provider}"` +
    (having.length > 0 ? ` (it is in: ${having.join(', ')})` : '')
  );
}

/**
 * How much of a prompt's estimate is taken as surely there. The estimate reads some texts up to ~25 % high
 * (other scripts, symbol runs, tool schemas; tokens.ts): a request only that far past a window could fit it,
 * and is the upstream's to refuse (a refusal as too long is failed over to a larger window: README).
 */
const ESTIMATE_DISCOUNT = 0.8;

/** Whether a request is clearly past `up`'s window: its prompt estimate, discounted, and its answer limit. */
function pastWindow(up: Upstream, features: RequestFeatures, window: number): boolean {
  const output = needOf(up, features, features.contextTokens) - features.contextTokens;
  return features.contextTokens * ESTIMATE_DISCOUNT + output > window;
}

/**
 * The tokens a request needs of `up`'s window: its prompt and the answer's limit as `up` is sent it. Anthropic's
 * API needs a max_tokens (the adapter sends default_max_tokens when the client gave none, and Claude refuses
 * prompt + that past its window); a limit above the output cap `up` stated is sent capped (param-fit.ts).
 */
function needOf(up: Upstream, features: RequestFeatures, need: number): number {
  const asked = features.requestedOutputTokens;
  const cap = up.fit.outputCap;
  if (asked === undefined && up.provider.kind !== 'anthropic') return need;
  const limit = asked ?? up.provider.config.default_max_tokens;
  return features.contextTokens + (cap !== undefined && limit > cap ? cap : limit);
}

function noCandidate(
  route: RouteRuntime,
  why: Exclusion | undefined,
  d: {
    missing: Set<string>;
    largestWindow: number;
    need: number;
    minOpenMs: number;
    allRateLimited: boolean;
    atQuota: boolean;
    provider: string | undefined;
    tier: string | undefined;
    failed: readonly AttemptRecord[] | undefined;
    notForAnthropic: NotForAnthropic | undefined;
    toolsParam: string;
    promptParam: string;
  },
): GatewayError {
  const name = `\`${route.name}\``;
  switch (why) {
    case 'breaker': {
      const retryAfterS = Math.max(1, Math.ceil(d.minOpenMs / 1000));
      // Pinned (x-router-provider): only that provider's upstreams were candidates; say so, as the others may be fine.
      const scope = d.provider === undefined ? `route ${name}` : `provider "${d.provider}" in route ${name}`;
      if (d.allRateLimited) {
        const limited = d.atQuota ? 'rate limited or at its rpm/tpm limit' : 'rate limited';
        return new GatewayError(
          'rate_limited',
          `every upstream of ${scope} is ${limited}; retry in ${retryAfterS}s`,
          {
            retryAfterS,
          },
        );
      }
      return new GatewayError(
        'no_available_upstream',
        `every upstream of ${scope} is unavailable (circuit open); retry in ${retryAfterS}s`,
        { retryAfterS },
      );
    }
    case 'context':
      return new GatewayError(
        'invalid_request',
        `the request needs ~${d.need} tokens but the largest context window in route ${name} is ${d.largestWindow}`,
        { param: d.promptParam, bodyCode: 'context_length_exceeded' },
      );
    case 'capability':
      return new GatewayError(
        'invalid_request',
        `no upstream of route ${name} supports ${[...d.missing].join(', ')}`,
        { param: missingParam(d.missing, d.notForAnthropic, d.toolsParam) },
      );
    case 'provider':
      return new GatewayError('invalid_request', noProviderMessage(route, d.tier, d.provider ?? ''), {
        param: 'x-router-provider',
      });
    case 'failed':
      return new GatewayError(
        'upstream_error',
        `every upstream of route ${name} left for this request failed in its LLM router call: ${describeAttempts(d.failed ?? [])}`,
      );
    default: {
      // Nothing to filter: every provider the route (or this tier) lists is disabled. No Retry-After: a
      // reload that gives one a key ends it, not time.
      const scope = d.tier === undefined ? `route ${name}` : `tier \`${d.tier}\` of route ${name}`;
      return new GatewayError(
        'no_available_upstream',
        `${scope} has no live upstream: every provider it lists is disabled (its api_key is empty)`,
      );
    }
  }
}
