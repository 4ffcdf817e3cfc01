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
    const text = await gw.metrics.registry.metrics();
    return reply.type(gw.metrics.registry.contentType).send(text);
  });
}
