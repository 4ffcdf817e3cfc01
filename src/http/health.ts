import type { FastifyInstance } from 'fastify';

/** Liveness, and readiness = a config is loaded and at least one upstream is not open. */
export async function healthPlugin(app: FastifyInstance): Promise<void> {
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const gw = app.gateway;
    let available = 0;
    // Not open (SPEC §4): a half-open upstream counts even while its probe slots are taken.
    for (const up of gw.runtime.upstreams.values()) if (up.breaker.state !== 'open') available++;
    const ready = !gw.draining && available > 0;
    return reply.code(ready ? 200 : 503).send({
      status: ready ? 'ready' : gw.draining ? 'draining' : 'no_available_upstream',
      upstreams_available: available,
    });
  });
}
