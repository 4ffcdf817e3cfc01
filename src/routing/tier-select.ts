import type { IncomingHttpHeaders } from 'node:http';
import type { TierName } from '../config/schema.js';
import type { Gateway } from '../gateway.js';
import type { AttemptRecord } from '../resilience/failover.js';
import type { RouteRuntime, RouteTarget, Runtime } from '../runtime.js';
import type { Abort } from '../upstream/abort.js';
import type { ChatBody } from '../upstream/adapter.js';
import type { RoutingHeaders } from './decide.js';
import { lastUserText, type RequestFeatures } from './features.js';
import { askRouter, cachedRouterAnswer, type RouterOutcome } from './llm-router.js';
import { matchTier } from './tiers.js';

export interface TierSelection {
  readonly targets: readonly RouteTarget[];
  readonly tier: TierName | undefined;
  readonly reason: string | undefined;
  /** Attempts that failed in this request's LLM router call: their upstreams are not tried again. */
  readonly excluded: readonly AttemptRecord[] | undefined;
  /** Time spent waiting for the LLM router (its upstream's, not the gateway's own), ms; 0 without a call. */
  readonly routerMs: number;
  /** What this request's LLM router call cost (RouterDecision.costUsd). */
  readonly routerCostUsd?: number;
  /** The LLM router picked the tier: if none of its upstreams can take the request, `default_tier` serves. */
  readonly byRouter?: boolean;
  /** How the LLM router came to its pick, when there is a call to count (not for a client that left). */
  readonly routerOutcome?: RouterOutcome;
  /** Explain, on a tie a live request would send to the LLM router: `default_tier` stands in for its pick. */
  readonly routerWouldAsk?: boolean;
}

const FLAT = new WeakMap<RouteRuntime, TierSelection>();

/** A flat route's selection: its own targets, no tier (one object per route, not per request). */
export function flatTier(route: RouteRuntime): TierSelection {
  let sel = FLAT.get(route);
  if (!sel) {
    sel = { targets: route.targets, tier: undefined, reason: undefined, excluded: undefined, routerMs: 0 };
    FLAT.set(route, sel);
  }
  return sel;
}

/**
 * The targets of a tiered route (a flat one takes `flatTier`): the tier that rules (or, on a tie, the LLM
 * router, else `default_tier`) pick. Without a `signal` (explain) a tie is not sent to the router.
 */
export async function chooseTier(
  gw: Gateway,
  rt: Runtime,
  route: RouteRuntime,
  body: ChatBody,
  features: RequestFeatures,
  hdrs: RoutingHeaders,
  headers: IncomingHttpHeaders,
  signal: Abort | undefined,
): Promise<TierSelection> {
  const lastUser = lastUserText(body.messages);
  const match = matchTier(route, features, lastUser, hdrs.tier, headers);
  let tier = match.tier;
  let reason = match.reason;
  let excluded: readonly AttemptRecord[] | undefined;
  let routerMs = 0;
  let byRouter = false;
  let routerOutcome: RouterOutcome | undefined;
  let routerWouldAsk = false;
  let routerCostUsd: number | undefined;
  if (tier === undefined && route.router && signal) {
    byRouter = true;
    const asked = gw.now();
    const d = await askRouter(gw, rt, route, body.messages, features, signal);
    routerMs = gw.now() - asked;
    tier = d.tier;
    reason = `${match.reason}; ${d.reason}`;
    if (d.failed.length > 0) excluded = d.failed;
    if (d.uncounted !== true) routerOutcome = d.outcome;
    routerCostUsd = d.costUsd;
  } else if (tier === undefined && route.router) {
    // Explain: the router's cached answer is what a live request would take; else it would ask.
    const cached = cachedRouterAnswer(gw, route, body.messages, features);
    if (cached) {
      byRouter = true;
      tier = cached.tier;
      reason = `${match.reason}; ${cached.reason}`;
    } else {
      routerWouldAsk = true;
      tier = route.defaultTier;
      reason = `${match.reason}; a live request asks the LLM router (default_tier ${route.defaultTier})`;
    }
  } else if (tier === undefined) {
    tier = route.defaultTier;
    reason = `${match.reason}; default_tier`;
  }
  const targets = (tier && route.tiers?.[tier]) || [];
  return {
    targets,
    tier,
    reason,
    excluded,
    routerMs,
    routerCostUsd,
    byRouter,
    routerOutcome,
    routerWouldAsk,
  };
}

/** `default_tier` in place of a selection (the LLM router's, a rule's) whose tier cannot take the request. */
export function defaultTierFor(
  route: RouteRuntime,
  sel: TierSelection,
  why: string,
): TierSelection | undefined {
  const tier = route.defaultTier;
  if (tier === undefined || tier === sel.tier) return undefined;
  return {
    ...sel,
    targets: route.tiers?.[tier] ?? [],
    tier,
    reason: `${sel.reason}; ${sel.tier} cannot take it (${why}): default_tier`,
  };
}
