import type { IncomingHttpHeaders } from 'node:http';
import type { StrategyName } from '../config/schema.js';
import type { Gateway } from '../gateway.js';
import type { RouteRuntime, Runtime } from '../runtime.js';
import type { Abort } from '../upstream/abort.js';
import type { ChatBody } from '../upstream/adapter.js';
import { checkTierHeader, readRoutingHeaders, resolveRoute, type RoutingHeaders } from './decide.js';
import { chatFeatures, type RequestFeatures } from './features.js';
import { planRequest, type Plan } from './plan.js';
import { chooseTier, flatTier, type TierSelection } from './tier-select.js';

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
  const plan = planRequest(route, tier.targets, features, {
    strategy,
    provider: hdrs.provider,
    routing: rt.loaded.config.routing,
    now: gw.now(),
    random: gw.random,
    peek: signal === undefined,
    exclude: tier.excluded,
    tier: tier.tier,
  });
  return { route, hdrs, features, strategy, tier, plan };
}
