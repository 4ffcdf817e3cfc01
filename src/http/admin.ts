import type { FastifyInstance } from 'fastify';
import { decideChat } from '../routing/chat-decision.js';
import type { Plan } from '../routing/plan.js';
import { decideEmbeddings } from './embeddings.js';
import { validateChatBody } from './validate.js';

/** `/router/status` and `/router/explain`: what the gateway knows and would decide. Never a secret. */
export async function adminPlugin(app: FastifyInstance): Promise<void> {
  app.get('/router/status', async () => {
    const gw = app.gateway;
    const rt = gw.runtime;
    const upstreams = [...rt.upstreams.values()].map((up) => {
      const b = up.breaker.snapshot();
      return {
        id: up.id,
        provider: up.provider.name,
        model: up.model.name,
        kind: up.provider.kind,
        breaker: {
          state: b.state,
          consecutive_failures: b.consecutiveFailures,
          consecutive_successes: b.consecutiveSuccesses,
          trip_cause: b.tripCause,
          open_ms: b.openMs,
          ms_until_half_open: b.msUntilHalfOpen,
          probes_in_flight: b.probesInFlight,
          opens: b.opens,
        },
        stats: up.stats.snapshot(),
        in_flight: up.stats.inFlight,
        // The per-minute budget (rpm, tpm) and what the last 60 s used of it, when configured.
        quota: up.quota?.limited === true ? up.quota.snapshot() : undefined,
        // Request fields this upstream refused and how they are sent to it now (upstream/param-fit.ts).
        request_fits: up.fit.snapshot(),
        pool: up.provider.client.stats(),
      };
    });
    const routes = [...rt.routes.values()]
      .filter((r) => !r.direct)
      .map((r) => ({
        name: r.name,
        strategy: r.strategy,
        targets: r.targets.map((t) => t.id),
        tiers: r.tiers
          ? Object.fromEntries(Object.entries(r.tiers).map(([k, v]) => [k, (v ?? []).map((t) => t.id)]))
          : undefined,
        default_tier: r.defaultTier,
      }));
    const redis = gw.shared.redis;
    // Where breakers and statistics are shared (SPEC §7); never the URL, which may carry a password.
    const state =
      rt.loaded.config.state.backend === 'redis'
        ? { backend: 'redis', connected: redis?.connected ?? false }
        : { backend: 'memory' };
    return { upstreams, routes, draining: gw.draining, state };
  });

  app.post('/router/explain', async (req) => {
    const gw = app.gateway;
    const rt = gw.runtime;
    // An embeddings request (`input`, no `messages`) is explained as /v1/embeddings would route it.
    const raw = req.body as Record<string, unknown> | null;
    if (raw !== null && typeof raw === 'object' && raw.input !== undefined && raw.messages === undefined) {
      const e = decideEmbeddings(gw, rt, raw, req.headers, true);
      if (e.plan.refusal) throw e.plan.refusal;
      return explained(e.route.name, e.strategy, undefined, undefined, e.features, e.plan);
    }
    const body = validateChatBody(req.body);
    const d = await decideChat(gw, rt, body, req.headers, undefined);
    if (d.plan.refusal) throw d.plan.refusal;
    const { route, strategy, features, tier, plan } = d;
    return explained(route.name, strategy, tier.tier, tier.reason, features, plan);
  });
}

/** /router/explain's answer: the route, its strategy and tier, and the ranked candidates with their reasons. */
function explained(
  route: string,
  strategy: string,
  tier: string | undefined,
  tierReason: string | undefined,
  features: unknown,
  plan: Pick<Plan, 'ranked' | 'excluded'>,
) {
  const ranked = plan.ranked;
  return {
    route,
    strategy,
    tier,
    tier_reason: tierReason,
    features,
    candidates: ranked.map((r, i) => ({
      rank: i + 1,
      upstream: r.candidate.id,
      provider: r.candidate.upstream.provider.name,
      model: r.candidate.upstream.model.name,
      score: Math.round(r.score * 1e4) / 1e4,
      reason: r.reason,
    })),
    // The route's upstreams this request would not go to, and why (capability, window, breaker, budget).
    excluded: (plan.excluded ?? []).map((x) => ({ upstream: x.target.id, reason: x.reason })),
  };
}
