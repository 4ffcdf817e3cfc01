import type { IncomingHttpHeaders } from 'node:http';
import { TIER_NAMES, type StrategyName, type TierName } from '../config/schema.js';
import type { Gateway } from '../gateway.js';
import type { AttemptRecord } from '../resilience/failover.js';
import type { RouteRuntime, RouteTarget, Runtime } from '../runtime.js';
import type { Abort } from '../upstream/abort.js';
import type { ChatBody } from '../upstream/adapter.js';
import { checkTierHeader, readRoutingHeaders, resolveRoute, type RoutingHeaders } from './decide.js';
import { chatFeatures, type RequestFeatures } from './features.js';
import { planRequest, type Plan } from './plan.js';
import { chooseTier, defaultTierFor, flatTier, type TierSelection } from './tier-select.js';
import type { RankedCandidate } from './types.js';

export interface ChatDecision {
  readonly route: RouteRuntime;
  readonly hdrs: RoutingHeaders;
  readonly features: RequestFeatures;
  readonly strategy: StrategyName;
  readonly tier: TierSelection;
  /** Its `refusal` says why no upstream can take the request: a routed answer all the same. */
  readonly plan: Plan;
}

/**
 * The routing decision for a validated chat request, the one code path behind both a real request and
 * `/router/explain` (so explain names what the request then gets). `signal` undefined means explain: no
 * LLM router call on a tie and no rotation advanced. A flat route decides synchronously — no promise on
 * the hot path; a tiered one may wait for the LLM router.
 */
export function decideChat(
  gw: Gateway,
  rt: Runtime,
  body: ChatBody,
  headers: IncomingHttpHeaders,
  signal: Abort | undefined,
): ChatDecision | Promise<ChatDecision> {
  const route = resolveRoute(rt, body.model, 'chat');
  const hdrs = readRoutingHeaders(headers, rt);
  if (hdrs.tier !== undefined) checkTierHeader(route, hdrs.tier);
  const features = chatFeatures(body);
  const strategy = hdrs.strategy ?? route.strategy;
  if (!route.tiers) return finish(gw, rt, route, hdrs, features, strategy, flatTier(route), signal);
  return chooseTier(gw, rt, route, body, features, hdrs, headers, signal).then((tier) =>
    finish(gw, rt, route, hdrs, features, strategy, tier, signal),
  );
}

function finish(
  gw: Gateway,
  rt: Runtime,
  route: RouteRuntime,
  hdrs: RoutingHeaders,
  features: RequestFeatures,
  strategy: StrategyName,
  tier: TierSelection,
  signal: Abort | undefined,
): ChatDecision {
  const plan = planTier(gw, rt, route, hdrs, features, strategy, tier, signal);
  let decision: ChatDecision = { route, hdrs, features, strategy, tier, plan };
  // A tier a rule picked (or default_tier) that cannot take the request — a capability it lacks (n > 1, a file
  // by id, on a Claude-only tier), the context window, a pinned provider it does not have, every provider it
  // lists disabled — gives way as the router's pick does: the route can serve it, and the client named no tier
  // (x-router-tier keeps its 400).
  const cannotTake =
    route.tiers !== undefined &&
    (plan.refusal?.code === 'invalid_request' || tier.targets.length === 0) &&
    hdrs.tier === undefined;
  if (plan.refusal && (tier.byRouter === true || tier.routerWouldAsk === true || cannotTake)) {
    // The LLM router can make a request slower, never fail it: a tier it picked that cannot take this request
    // (capabilities, context window, every breaker open, a pinned provider not in it) gives way to
    // default_tier, and when that cannot either, to the first tier that can. Explain, where default_tier
    // stands in for a pick the live router would make (its prompt names tools and images), shows that tier.
    const fallback =
      tier.byRouter === true || cannotTake ? defaultTierFor(route, tier, plan.refusal.message) : undefined;
    const second = fallback && planTier(gw, rt, route, hdrs, features, strategy, fallback, signal);
    if (second && !second.refusal) {
      decision = { route, hdrs, features, strategy, tier: fallback, plan: second };
    } else {
      const cannot = fallback
        ? `${tier.tier} and default_tier cannot take it`
        : tier.routerWouldAsk === true
          ? 'default_tier cannot take it'
          : `${tier.tier} cannot take it`;
      for (const name of TIER_NAMES) {
        const targets = route.tiers?.[name];
        if (name === tier.tier || name === fallback?.tier || !targets?.length) continue;
        const reason = tier.routerWouldAsk
          ? `${tier.reason}; ${cannot} (${plan.refusal.message}): the router's pick decides, ${name} can`
          : `${tier.reason}; ${cannot} (${plan.refusal.message}): ${name} can`;
        const alt: TierSelection = { ...tier, targets, tier: name, reason };
        const other = planTier(gw, rt, route, hdrs, features, strategy, alt, signal);
        if (!other.refusal) {
          decision = { route, hdrs, features, strategy, tier: alt, plan: other };
          break;
        }
      }
    }
  }
  // The router's call is counted under the tier the request got (README Metrics), not a pick that gave way.
  const got = decision.tier.tier;
  if (tier.routerOutcome !== undefined && got !== undefined) {
    gw.metrics.routerRequests.inc({ tier: got, outcome: tier.routerOutcome });
  }
  return decision;
}

/** The plan for one tier selection (a flat route's is its targets). A function, not a closure per request. */
function planTier(
  gw: Gateway,
  rt: Runtime,
  route: RouteRuntime,
  hdrs: RoutingHeaders,
  features: RequestFeatures,
  strategy: StrategyName,
  sel: TierSelection,
  signal: Abort | undefined,
): Plan {
  return planRequest(route, sel.targets, features, {
    strategy,
    provider: hdrs.provider,
    routing: rt.loaded.config.routing,
    now: gw.now(),
    random: gw.random,
    peek: signal === undefined,
    exclude: sel.excluded,
    tier: sel.tier,
  });
}

/**
 * A tiered route's upstreams outside the decision's tier whose context window is above `window`, ranked by the strategy
 * (those `attempts` tried left out), each with its tier: where a request its tier's upstreams refused as too
 * long can still go, as the plan sends one its estimate says the tier cannot hold.
 */
export function largerInOtherTiers(
  gw: Gateway,
  rt: Runtime,
  decision: ChatDecision,
  window: number,
  attempts: readonly AttemptRecord[],
): {
  ranked: RankedCandidate<RouteTarget>[];
  tiers: Map<RankedCandidate<RouteTarget>, TierName>;
  /** The larger windows left out at their rpm/tpm. */
  atQuota: readonly RouteTarget[] | undefined;
} {
  const { route, hdrs, features, strategy } = decision;
  const targets: RouteTarget[] = [];
  const tierOf = new Map<string, TierName>();
  for (const name of TIER_NAMES) {
    if (name === decision.tier.tier) continue;
    for (const t of route.tiers?.[name] ?? []) {
      const up = t.upstream;
      if (!((up.model.context_window ?? 0) > window) || tierOf.has(up.id)) continue;
      tierOf.set(up.id, name);
      targets.push(t);
    }
  }
  const tiers = new Map<RankedCandidate<RouteTarget>, TierName>();
  if (targets.length === 0) return { ranked: [], tiers, atQuota: undefined };
  const plan = planRequest(route, targets, features, {
    strategy,
    provider: hdrs.provider,
    routing: rt.loaded.config.routing,
    now: gw.now(),
    random: gw.random,
    aside: true, // the route's rotation is its first choices' to turn
    exclude: attempts,
  });
  for (const c of plan.ranked) tiers.set(c, tierOf.get(c.candidate.upstream.id)!);
  return { ranked: plan.ranked, tiers, atQuota: plan.atQuota };
}
