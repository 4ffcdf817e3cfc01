import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors.js';
import type { RouteRuntime, Runtime } from '../runtime.js';
import { clip } from '../text.js';

/** One entry of `GET /v1/models`, in OpenAI's model object shape. */
export interface ModelObject {
  readonly id: string;
  readonly object: 'model';
  readonly created: number;
  readonly owned_by: string;
}

function modelObject(r: RouteRuntime, created: number): ModelObject {
  return {
    id: r.name,
    object: 'model',
    created,
    owned_by: r.direct ? (r.targets[0]?.upstream.provider.name ?? 'llm-edge-router') : 'llm-edge-router',
  };
}

const nowS = (): number => Math.floor(Date.now() / 1000);

/**
 * A route is listed when it can serve: one whose every upstream is disabled (its provider's api_key empty)
 * has none, and a client that picked it from the list got a 503 for every request.
 */
function listed(r: RouteRuntime): boolean {
  return r.targets.length > 0;
}

/** The list's entry for `id` (a route name or `provider/model`) in the config serving now, if it has one. */
export function retrieveModel(rt: Runtime, id: string): ModelObject | undefined {
  const route = rt.routes.get(id); // a Map: `__proto__` is just a name
  return route && listed(route) ? modelObject(route, nowS()) : undefined;
}

/**
 * Route names and `provider/model` names, in OpenAI's list shape, and each of them on its own at
 * `GET /v1/models/{id}` (what `models.retrieve(id)` asks for; a `provider/model` id spans two path
 * segments, or arrives as one with `%2F`, which the wildcard's value has decoded).
 */
export async function modelsPlugin(app: FastifyInstance): Promise<void> {
  app.get('/v1/models', async () => {
    const created = nowS();
    const data: ModelObject[] = [];
    for (const r of app.gateway.runtime.routes.values()) if (listed(r)) data.push(modelObject(r, created));
    return { object: 'list', data };
  });
  // With server.passthrough (read at start only, as the passthrough itself is), GET /v1/models/{id} is left
  // to its `/v1/*` route: it answers our ids as below and proxies the others, which the provider may know.
  if (app.gateway.runtime.passthrough) return;
  app.get<{ Params: { '*': string } }>('/v1/models/*', async (req) => {
    const id = req.params['*'];
    const model = retrieveModel(app.gateway.runtime, id);
    if (model) return model;
    throw new GatewayError('model_not_found', `The model \`${clip(id, 200)}\` does not exist`, {
      param: 'model',
      bodyCode: 'model_not_found',
    });
  });
}
