import { createHash } from 'node:crypto';
import { TIER_NAMES, type TierName } from '../config/schema.js';
import { isShutdown, type Gateway } from '../gateway.js';
import { recordUsage } from '../http/report.js';
import { runFailover, type AttemptRecord } from '../resilience/failover.js';
import type { RouteRuntime, Runtime, Upstream } from '../runtime.js';
import { Abort } from '../upstream/abort.js';
import type { ChatBody } from '../upstream/adapter.js';
import { claudeAlwaysThinks } from '../upstream/adapters/claude-profile.js';
import { attemptJson } from '../upstream/attempt-json.js';
import { textFeatures, type RequestFeatures } from './features.js';
import { planRequest } from './plan.js';
import { parseRouterAnswer, readAnswer } from './router-answer.js';
import { cacheFor, type RouterCache } from './router-cache.js';
import { buildRouterPrompt, conversationExcerpt, ROUTER_PROMPT_VERSION } from './router-prompt.js';

const ROUTER_MAX_TOKENS = 80;
/**
 * What a model that reasons however little it is asked to gets on top: its reasoning counts against
 * max_tokens (OpenAI's o-series at `low`, Claude 5.1 on at adaptive `low`), and 80 tokens of it left no answer.
 */
const ROUTER_REASONING_ROOM = 1_024;
/**
 * OpenAI's reasoning models (o-series, GPT-5 on, not the GPT-5 chat model), by their own names: they reason
 * unless told not to, and reasoning counts against the router's few tokens.
 */
const OPENAI_REASONING_MODEL = /^(?:o\d|gpt-(?:[5-9]|[1-9]\d))(?!-chat)/;
/** The router's answer is 80 tokens of JSON: a body past this is not one (rather than up to 64 MiB read). */
const ROUTER_MAX_ANSWER_BYTES = 256 * 1024;

export type RouterOutcome = 'chosen' | 'timeout' | 'error' | 'unparsable' | 'cached';

export interface RouterDecision {
  readonly tier: TierName;
  readonly reason: string;
  readonly outcome: RouterOutcome;
  /**
   * The router call's failed attempts (a cached answer made none): the request must not try these
   * upstreams again (SPEC §2, request-scoped exclusion). Empty when none failed.
   */
  readonly failed: readonly AttemptRecord[];
  /** Set when the client left while waiting: the request gets no tier, so there is nothing to count. */
  readonly uncounted?: true;
  /**
   * What the router call cost (counted in llm_router_cost_usd_total under its upstream), for the line of
   * the one request that counts the call; absent for the others that shared it, and for a cached answer.
   */
  readonly costUsd?: number;
}

const NO_FAILURES: readonly AttemptRecord[] = Object.freeze([]);

/**
 * The attempts that count against their upstream for the rest of the request: errors, timeouts and rate
 * limits. Not a client error (a 400 to the router's own prompt says nothing about the user's request), and
 * not an attempt cut by the router's `timeout_ms` (`cutShort`, always the last one): that budget is the
 * router's, far shorter than the request's, and an upstream slower than it may serve the request itself.
 */
function failuresOf(tried: readonly AttemptRecord[], cutShort: boolean): readonly AttemptRecord[] {
  let out: AttemptRecord[] | undefined;
  const n = cutShort ? tried.length - 1 : tried.length;
  for (let i = 0; i < n; i++) {
    const a = tried[i]!;
    if (a.outcome !== 'success' && a.outcome !== 'client_error') (out ??= []).push(a);
  }
  return out ?? NO_FAILURES;
}

/** A router call under way for a cache key: requests missing the cache meanwhile wait for its answer. */
interface SharedCall {
  readonly decision: Promise<RouterDecision>;
  /** Aborts the call: when every request waiting for it is gone. */
  readonly signal: Abort;
  waiting: number;
  readonly started: number;
  /** Its outcome and duration are counted, by the first of its requests still there to get the answer. */
  counted: boolean;
}

const calls = new WeakMap<RouterCache, Map<string, SharedCall>>();

/** The route's tiers that have upstreams, in their order: what the router is offered to pick from. */
function offeredTiers(route: RouteRuntime): TierName[] {
  return TIER_NAMES.filter((t) => (route.tiers?.[t]?.length ?? 0) > 0);
}

/** What the router's prompt says of the request (buildRouterPrompt): one answer per prompt. */
function routerCacheKey(excerpt: string, features: RequestFeatures, tiers: readonly TierName[]): string {
  return createHash('sha256')
    .update(
      `${ROUTER_PROMPT_VERSION}\n${tiers.join(',')}\n${features.promptTokens}\n${features.tools ? 1 : 0}${features.images ? 1 : 0}\n${excerpt}`,
    )
    .digest('base64url');
}

/**
 * Router upstreams whose attempt ran out the router's time, and until when (the breaker's open_ms from then):
 * tried last by the router's next calls. Such a cut is no breaker failure (the budget is the router's, not the
 * provider's), so a hung first upstream would otherwise take the whole timeout_ms of every tie, for ever,
 * the healthy one beside it never asked.
 */
const cutUntil = new WeakMap<RouterCache, Map<string, number>>();

function cutLast<T extends { readonly candidate: { readonly id: string } }>(
  ranked: readonly T[],
  cuts: Map<string, number> | undefined,
  now: number,
): readonly T[] {
  if (cuts === undefined) return ranked;
  const cut = (t: T): boolean => {
    const until = cuts.get(t.candidate.id);
    if (until === undefined) return false;
    if (until > now) return true;
    cuts.delete(t.candidate.id);
    return false;
  };
  const late = ranked.filter(cut);
  return late.length === 0 ? ranked : [...ranked.filter((t) => !late.includes(t)), ...late];
}

/**
 * The answer a live request would take from the cache instead of calling the router, read without touching
 * the cache or counting anything (explain); undefined when it would call.
 */
export function cachedRouterAnswer(
  gw: Gateway,
  route: RouteRuntime,
  messages: readonly unknown[],
  features: RequestFeatures,
): { tier: TierName; reason: string } | undefined {
  const key = routerCacheKey(conversationExcerpt(messages), features, offeredTiers(route));
  const hit = cacheFor(gw, route)?.peek(key, gw.now());
  // As askRouter: a tier a reload has since emptied is no answer.
  return hit && (route.tiers?.[hit.tier]?.length ?? 0) > 0 ? hit : undefined;
}

/**
 * Breaks a tier tie by asking a model of `router.tier`, through the same plan, breakers and failover as any
 * request, bounded by `router.timeout_ms`. Never fails the request: on timeout, error or an unparsable
 * answer it returns the route's `default_tier`. Its failed attempts come back for the request to exclude.
 * Requests with the same excerpt share one call while it is under way (a burst of one prompt is one paid
 * call, not one each), then its cached answer; the call is aborted only when all of them are gone.
 */
export async function askRouter(
  gw: Gateway,
  rt: Runtime,
  route: RouteRuntime,
  messages: readonly unknown[],
  features: RequestFeatures,
  clientSignal: Abort,
): Promise<RouterDecision> {
  const cfg = route.router!;
  const excerpt = conversationExcerpt(messages);
  const tiers = offeredTiers(route);
  const key = routerCacheKey(excerpt, features, tiers);
  const cache = cacheFor(gw, route)!;
  const started = gw.now();
  const hit = cache.get(key, started);
  // A tier a reload has since emptied (its provider disabled) is no answer now: ask again.
  if (hit && (route.tiers?.[hit.tier]?.length ?? 0) > 0) {
    return { tier: hit.tier, reason: hit.reason, outcome: 'cached', failed: NO_FAILURES };
  }
  let underWay = calls.get(cache);
  if (underWay === undefined) calls.set(cache, (underWay = new Map()));
  let call = underWay.get(key);
  if (call === undefined) {
    const signal = new Abort();
    const decision = callRouter(gw, rt, route, { excerpt, key, tiers }, features, signal, started);
    call = { decision, signal, started, waiting: 0, counted: false };
    underWay.set(key, call);
    const ours = call;
    // Its waiters see a rejection; this chain only clears the entry.
    decision
      .finally(() => {
        if (underWay.get(key) === ours) underWay.delete(key);
      })
      .catch(() => undefined);
  }
  const waited = call;
  waited.waiting++;
  const leave = (): void => {
    if (--waited.waiting > 0) return;
    waited.signal.abort(clientSignal.reason);
    // Aborted, it is no call to join any more: a request with the same prompt from now on makes its own.
    if (underWay.get(key) === waited) underWay.delete(key);
  };
  clientSignal.once('abort', leave);
  if (clientSignal.aborted) leave(); // once() adds nothing to a signal already aborted
  try {
    const d = await waited.decision;
    // A request whose client left got no tier: nothing to count (a call dropped with its last waiter is
    // neither the router's error nor a duration).
    if (clientSignal.aborted && !isShutdown(clientSignal)) return { ...d, uncounted: true };
    // The call is counted once, with its duration; the others that waited for it got its answer as a
    // cached one when it chose.
    const first = !waited.counted;
    waited.counted = true;
    const outcome = !first && d.outcome === 'chosen' ? 'cached' : d.outcome;
    // llm_router_requests_total is counted by the caller, with the tier the request gets in the end
    // (default_tier when the pick cannot take it: chat-decision.ts).
    if (first) gw.metrics.routerDuration.observe({ tier: cfg.tier }, (gw.now() - waited.started) / 1000);
    if (first) return outcome === d.outcome ? d : { ...d, outcome };
    return { ...d, outcome, costUsd: undefined };
  } finally {
    clientSignal.removeListener('abort', leave);
  }
}

/** One router call: the decision it comes to, and the attempts that failed in it. */
async function callRouter(
  gw: Gateway,
  rt: Runtime,
  route: RouteRuntime,
  /** What the router is asked: the excerpt, the tiers it is offered, and the cache key they make. */
  prompt: { readonly excerpt: string; readonly key: string; readonly tiers: readonly TierName[] },
  features: RequestFeatures,
  /** Aborted when every request waiting for this call is gone. */
  signal: Abort,
  started: number,
): Promise<RouterDecision> {
  const cfg = route.router!;
  const fallback = route.defaultTier!;
  const cache = cacheFor(gw, route)!;
  let tried: readonly AttemptRecord[] = NO_FAILURES;
  let cutShort = false;
  let costUsd: number | undefined;
  const done = (d: Omit<RouterDecision, 'failed'>): RouterDecision => ({
    tier: d.tier,
    reason: d.reason,
    outcome: d.outcome,
    failed: failuresOf(tried, cutShort),
    costUsd,
  });

  const { excerpt, key } = prompt;
  const routerMessages = buildRouterPrompt(excerpt, features, prompt.tiers);
  // The system prompt (~150 tokens) plus the excerpt at ~4 characters a token.
  const promptTokens = 150 + Math.ceil(excerpt.length / 4);
  const body: ChatBody = {
    model: `router:${cfg.tier}`,
    messages: routerMessages,
    temperature: 0,
    max_tokens: ROUTER_MAX_TOKENS,
  };
  // The router wants a quick classification: a model that reasons by default may spend every one of its
  // tokens on reasoning and answer nothing. Those asked for the least reasoning are the ones known to take
  // it (a server that refuses `minimal` has it fitted, upstream/param-fit.ts); others get no field they may
  // not know.
  const quickBody: ChatBody = { ...body, reasoning_effort: 'minimal' };
  const bodies: Record<ReturnType<typeof reasoningOf>, ChatBody> = {
    plain: body,
    quick: quickBody,
    roomy: { ...quickBody, max_tokens: ROUTER_MAX_TOKENS + ROUTER_REASONING_ROOM },
  };
  const targets = route.tiers?.[cfg.tier] ?? [];
  try {
    const plan = planRequest(route, targets, textFeatures(promptTokens, ROUTER_MAX_TOKENS), {
      strategy: route.strategy,
      provider: undefined,
      routing: rt.loaded.config.routing,
      now: started,
      random: gw.random,
      aside: true,
    });
    if (plan.refusal) throw plan.refusal; // no router upstream can take it: default_tier
    // Within the request's own budget too: the request started (its body read) just before this call.
    const deadline = started + Math.min(cfg.timeout_ms, rt.loaded.config.routing.total_timeout_ms);
    const out = await runFailover(
      cutLast(plan.ranked, cutUntil.get(cache), started),
      {
        routeName: route.name,
        maxAttempts: rt.loaded.config.routing.max_attempts,
        deadline,
        now: gw.now,
        metrics: gw.metrics,
        logger: gw.logger,
        scrubber: rt.scrubber,
        quotaTokens: promptTokens + ROUTER_MAX_TOKENS,
        promptTokens,
      },
      async (target) => {
        const upstream = target.candidate.upstream;
        const result = await attemptJson({
          upstream,
          body: bodies[reasoningOf(upstream)],
          clientSignal: signal,
          deadline,
          now: gw.now,
          stream: {
            model: target.candidate.upstream.model.name,
            includeUsage: false,
            created: Math.floor(Date.now() / 1000),
          },
          maxBodyBytes: ROUTER_MAX_ANSWER_BYTES,
        });
        cutShort = !result.ok && result.deadlineReached;
        if (cutShort) {
          let cuts = cutUntil.get(cache);
          if (cuts === undefined) cutUntil.set(cache, (cuts = new Map()));
          cuts.set(upstream.id, gw.now() + rt.loaded.config.circuit_breaker.open_ms);
        }
        return result;
      },
      (attempts) => (tried = attempts),
    );
    if ('committedFailure' in out)
      return done({ tier: fallback, reason: 'router call abandoned', outcome: 'error' });
    // An answer without usage is counted from its text, as any answer is (its completion is not free).
    const up = out.target.candidate.upstream;
    costUsd = recordUsage(up, out.result.usage, promptTokens, out.result.countedTokens).costUsd;
    const answer = readAnswer(out.result.body);
    const parsed = parseRouterAnswer(answer);
    if (!parsed || !(route.tiers?.[parsed.tier]?.length ?? 0)) {
      return done({
        tier: fallback,
        reason: 'router answer unparsable; default_tier',
        outcome: 'unparsable',
      });
    }
    // The router model's own words: an upstream that echoes our key there must not put it in every answer's
    // x-router-tier-reason, log line and explain (cached for cache_ttl_s).
    const reason = `llm router: ${rt.scrubber.scrub(parsed.reason || 'no reason given')}`;
    cache.set(key, { tier: parsed.tier, reason }, gw.now());
    return done({ tier: parsed.tier, reason, outcome: 'chosen' });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    const timedOut = code === 'timeout' || gw.now() - started >= cfg.timeout_ms;
    return done({
      tier: fallback,
      reason: `llm router ${timedOut ? 'timed out' : 'failed'}; default_tier`,
      outcome: timedOut ? 'timeout' : 'error',
    });
  }
}

/**
 * How a router model reasons: not by default (`plain`: nothing added), by default but not when asked for
 * `minimal` (`quick`: Claude before 5.1, which the gateway then sends no thinking, and GPT-5, which then reasons
 * little or not at all), or whatever it is asked (`roomy`: Claude 5.1 on, Fable and Mythos; OpenAI's o-series,
 * whose least is `low`). Told by name: the router's request is the gateway's own, and a name it does not know
 * gets the plain body any server takes. GPT-5.1 on take `none` (fitted from `minimal`) but get room all the same.
 */
function reasoningOf(upstream: Upstream): 'plain' | 'quick' | 'roomy' {
  const model = upstream.upstreamModel;
  if (upstream.provider.kind === 'anthropic') return claudeAlwaysThinks(model) ? 'roomy' : 'quick';
  if (!OPENAI_REASONING_MODEL.test(model)) return 'plain';
  return /^gpt-5(?!\.)/.test(model) ? 'quick' : 'roomy';
}
