import type { FastifyInstance } from 'fastify';
import { CIRCUIT_STATE_VALUE } from '../observability/metrics.js';

export async function metricsPlugin(app: FastifyInstance): Promise<void> {
  app.get('/metrics', async (_req, reply) => {
    const gw = app.gateway;
    // Open → half-open is lazy in the breaker (no timers), so the gauge is refreshed at scrape time.
    for (const up of gw.runtime.upstreams.values()) {
      gw.metrics.circuitState.set(
        { provider: up.provider.name, model: up.model.name },
        CIRCUIT_STATE_VALUE[up.breaker.state],
      );
    }
    // Budgets (rpm, tpm) as the window stands now; none left over from an upstream a reload removed.
    const { quotaUsed, quotaLimit } = gw.metrics;
    quotaUsed.reset();
    quotaLimit.reset();
    for (const up of gw.runtime.upstreams.values()) {
      const q = up.quota?.snapshot();
      if (q === undefined) continue;
      const labels = { provider: up.provider.name, model: up.model.name };
      if (q.rpm !== null) {
        quotaUsed.set({ ...labels, kind: 'requests' }, q.requests_last_minute);
        quotaLimit.set({ ...labels, kind: 'requests' }, q.rpm);
      }
      if (q.tpm !== null) {
        quotaUsed.set({ ...labels, kind: 'tokens' }, q.tokens_last_minute);
        quotaLimit.set({ ...labels, kind: 'tokens' }, q.tpm);
      }
    }
    const text = await gw.metrics.registry.metrics();
    return reply.type(gw.metrics.registry.contentType).send(text);
  });
}
