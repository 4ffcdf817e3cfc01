/**
 * `GET /v1/models/{id}`, what the OpenAI SDK's `models.retrieve(id)` asks for: every id `/v1/models` lists
 * (route names and `provider/model` names) answers the list's object; any other id is the passthrough's
 * when there is one, else a 404 `model_not_found`.
 */
import OpenAI, { NotFoundError } from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-models-7';

function configOf(sim: Simulator, opts: { passthrough?: boolean; routes?: Record<string, unknown> } = {}) {
  return {
    server: opts.passthrough === true ? { passthrough: 'alpha' } : {},
    providers: [simProvider('alpha', sim.url, ['m1', 'm2'], { api_key: PT_KEY })],
    routes: opts.routes ?? { fast: { strategy: 'priority', targets: ['alpha/m1', 'alpha/m2'] } },
  };
}

async function setup(opts: { passthrough?: boolean } = {}) {
  const sim = track(await startSimulator({ name: 'alpha' }));
  const config = configOf(sim, opts);
  const gw: TestGateway = track(await startGateway(config));
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
  return { sim, gw, client };
}

/** The list's entry for `id`, `created` aside (a retrieve a second later may carry the next second). */
async function listed(client: OpenAI, id: string): Promise<Record<string, unknown>> {
  const page = await client.models.list();
  const entry = page.data.find((m) => m.id === id);
  expect(entry, id).toBeDefined();
  return { ...entry, created: expect.any(Number) as unknown };
}

describe('GET /v1/models/{id} (regression: ids /v1/models lists were a 404 to models.retrieve)', () => {
  it('answers a route name and a provider/model name as the list has them, through the OpenAI SDK', async () => {
    const { sim, gw, client } = await setup();
    expect(await client.models.retrieve('fast')).toEqual(await listed(client, 'fast'));
    expect(await client.models.retrieve('fast')).toMatchObject({
      id: 'fast',
      object: 'model',
      owned_by: 'llm-edge-router',
    });
    // The SDK sends `alpha%2Fm1`; a client that does not encode the slash sends two segments.
    const direct = await client.models.retrieve('alpha/m1');
    expect(direct).toEqual(await listed(client, 'alpha/m1'));
    expect(direct).toMatchObject({ id: 'alpha/m1', object: 'model', owned_by: 'alpha' });
    const plain = await request(`${gw.url}/v1/models/alpha/m2`);
    expect(plain.statusCode).toBe(200);
    expect(await plain.body.json()).toEqual(await listed(client, 'alpha/m2'));
    expect(sim.requests).toHaveLength(0);
  });

  it('leaves out a route whose every upstream is disabled (its provider has no key): it could serve nothing', async () => {
    const sim = track(await startSimulator({ name: 'alpha' }));
    const gw = track(
      await startGateway(
        {
          providers: [
            simProvider('alpha', sim.url, ['m1']),
            simProvider('keyless', sim.url, ['k1'], { api_key: '${KEYLESS_KEY}' }),
          ],
          routes: {
            fast: { strategy: 'priority', targets: ['alpha/m1', 'keyless/k1'] },
            dark: { strategy: 'priority', targets: ['keyless/k1'] },
          },
        },
        { env: { KEYLESS_KEY: '' } },
      ),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
    const ids = (await client.models.list()).data.map((m) => m.id).sort();
    expect(ids).toEqual(['alpha/m1', 'fast']);
    await expect(client.models.retrieve('dark')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('answers an unknown id with a 404 model_not_found, OpenAI-shaped, without a passthrough', async () => {
    const { sim, gw, client } = await setup();
    const err: unknown = await client.models.retrieve('gpt-4o').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({
      status: 404,
      type: 'invalid_request_error',
      code: 'model_not_found',
      param: 'model',
    });
    for (const path of ['/v1/models/alpha%2Fnope', '/v1/models/alpha/nope', '/v1/models/']) {
      const res = await request(`${gw.url}${path}`);
      expect(res.statusCode, path).toBe(404);
      const body = (await res.body.json()) as { error: Record<string, unknown> };
      expect(Object.keys(body.error).sort(), path).toEqual(['code', 'message', 'param', 'type']);
      expect(body.error.code, path).toBe('model_not_found');
      expect(body.error.type, path).toBe('invalid_request_error');
    }
    expect(sim.requests).toHaveLength(0);
  });

  it('follows a config reload as the list does', async () => {
    const { sim, gw, client } = await setup();
    expect((await client.models.retrieve('fast')).id).toBe('fast');
    const next = configOf(sim, { routes: { slow: { strategy: 'priority', targets: ['alpha/m2'] } } });
    gw.gateway.reload(parseConfigText(JSON.stringify(next), {}));
    expect(await client.models.retrieve('slow')).toEqual(await listed(client, 'slow'));
    await expect(client.models.retrieve('fast')).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
  });

  it('with server.passthrough, answers its own ids itself and proxies any other id to the provider', async () => {
    const { sim, client } = await setup({ passthrough: true });
    expect(await client.models.retrieve('fast')).toEqual(await listed(client, 'fast'));
    expect(await client.models.retrieve('alpha/m1')).toEqual(await listed(client, 'alpha/m1'));
    expect(sim.requests).toHaveLength(0);
    // The provider may know a model the gateway does not name: the provider's own model object comes back.
    const theirs = await client.models.retrieve('gpt-4o-mini');
    expect(theirs).toMatchObject({ id: 'gpt-4o-mini', object: 'model', owned_by: 'system' });
    expect(sim.requests).toHaveLength(1);
    expect(sim.requests[0]!.method).toBe('GET');
    expect(sim.requests[0]!.path).toBe('/v1/models/gpt-4o-mini');
    expect(sim.requests[0]!.headers.authorization).toBe(`Bearer ${PT_KEY}`);
  });

  it('with server.passthrough, a HEAD of one of its own ids is answered here too (regression: proxied)', async () => {
    const { sim, gw } = await setup({ passthrough: true });
    const res = await request(`${gw.url}/v1/models/fast`, {
      method: 'HEAD',
      headers: { authorization: 'Bearer client-key' },
    });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(sim.requests).toHaveLength(0);
  });
});
