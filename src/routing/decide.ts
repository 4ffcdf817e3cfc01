import type { IncomingHttpHeaders } from 'node:http';
import { STRATEGY_NAMES, TIER_NAMES, TIER_SET, type StrategyName, type TierName } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import type { RouteRuntime, Runtime } from '../runtime.js';
import { getStrategy } from './strategies/index.js';
import { clip } from '../text.js';

export interface RoutingHeaders {
  readonly strategy: StrategyName | undefined;
  readonly tier: TierName | undefined;
  readonly provider: string | undefined;
}

function single(v: string | string[] | undefined, name: string): string | undefined {
  if (v === undefined) return undefined;
  if (Array.isArray(v)) throw new GatewayError('invalid_request', `${name}: give it once`, { param: name });
  return v.trim();
}

/** `x-router-strategy`, `x-router-tier`, `x-router-provider`: unknown values are a 400, never a lookup. */
export function readRoutingHeaders(headers: IncomingHttpHeaders, rt: Runtime): RoutingHeaders {
  const strategy = single(headers['x-router-strategy'], 'x-router-strategy');
  const tier = single(headers['x-router-tier'], 'x-router-tier');
  const provider = single(headers['x-router-provider'], 'x-router-provider');
  if (strategy !== undefined && getStrategy(strategy) === undefined) {
    throw new GatewayError(
      'invalid_request',
      `x-router-strategy: unknown strategy "${strategy}" (one of ${STRATEGY_NAMES.join(', ')})`,
      {
        param: 'x-router-strategy',
      },
    );
  }
  if (tier !== undefined && !TIER_SET.has(tier)) {
    throw new GatewayError(
      'invalid_request',
      `x-router-tier: unknown tier "${tier}" (one of ${TIER_NAMES.join(', ')})`,
      {
        param: 'x-router-tier',
      },
    );
  }
  if (provider !== undefined && !rt.providers.has(provider)) {
    throw new GatewayError('invalid_request', `x-router-provider: unknown provider "${provider}"`, {
      param: 'x-router-provider',
    });
  }
  return { strategy: strategy as StrategyName | undefined, tier: tier as TierName | undefined, provider };
}

/**
 * `x-router-tier` on a tiered route must name a tier it serves (one with upstreams): another is the client's
 * mistake, a 400 like any unknown header value, not a 503 to retry. A route without tiers has no tier to
 * choose: the header is ignored there, as before, so a client may send it by default.
 */
export function checkTierHeader(route: RouteRuntime, tier: TierName): void {
  const tiers = route.tiers;
  if (tiers === undefined || tiers[tier]?.length) return;
  const own = TIER_NAMES.filter((t) => tiers[t]?.length);
  throw new GatewayError(
    'invalid_request',
    `x-router-tier: route \`${route.name}\` has no tier "${tier}" (${own.length > 0 ? `one of ${own.join(', ')}` : 'none has a live upstream'})`,
    { param: 'x-router-tier' },
  );
}

/** The client's `model`: a route name or `provider/model` (Map lookups: `__proto__` is just a name). */
export function resolveRoute(rt: Runtime, model: string, kind: 'chat' | 'embeddings'): RouteRuntime {
  const route = rt.routes.get(model);
  if (!route || route.embeddings !== (kind === 'embeddings')) {
    // One /v1/models lists but on the other endpoint: say which, rather than that it does not exist.
    const message = !route
      ? `The model \`${clip(model, 200)}\` does not exist`
      : route.embeddings
        ? `\`${route.name}\` is an embeddings model: use /v1/embeddings`
        : `\`${route.name}\` is a chat model: use /v1/chat/completions`;
    throw new GatewayError('model_not_found', message, { param: 'model', bodyCode: 'model_not_found' });
  }
  return route;
}
