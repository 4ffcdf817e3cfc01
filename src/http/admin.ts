import type { FastifyInstance } from 'fastify';
import { decideChat } from '../routing/chat-decision.js';
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
    const body = validateChatBody(req.body);
    const d = await decideChat(gw, rt, body, req.headers, undefined);
    if (d.plan.refusal) throw d.plan.refusal;
    const { route, strategy, features, tier, plan } = d;
    return {
      route: route.name,
      strategy,
      tier: tier.tier,
      tier_reason: tier.reason,
      features,
      candidates: plan.ranked.map((r, i) => ({
        rank: i + 1,
        upstream: r.candidate.id,
        provider: r.candidate.upstream.provider.name,
        model: r.candidate.upstream.model.name,
        score: Math.round(r.score * 1e4) / 1e4,
        reason: r.reason,
      })),
    };
  });
}
