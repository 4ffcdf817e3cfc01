import type { FastifyInstance } from 'fastify';

/** Route names and `provider/model` names, in OpenAI's list shape. */
export async function modelsPlugin(app: FastifyInstance): Promise<void> {
  app.get('/v1/models', async () => {
    const rt = app.gateway.runtime;
    const created = Math.floor(Date.now() / 1000);
    const data = [...rt.routes.values()].map((r) => ({
      id: r.name,
      object: 'model',
      created,
      owned_by: r.direct ? (r.targets[0]?.upstream.provider.name ?? 'llm-edge-router') : 'llm-edge-router',
    }));
    return { object: 'list', data };
  });
}
