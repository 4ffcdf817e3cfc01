import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
let gw: TestGateway | undefined;

const CLIENT_KEY = 'client-key-1';
const CLIENT_KEY_2 = 'client-key-2';
const ADMIN_KEY = 'admin-key-1';

async function setup(server: Record<string, unknown>) {
  const sim = track(await startSimulator({ name: 'alpha' }));
  gw = track(
    await startGateway({
      server,
      providers: [simProvider('alpha', sim.url, ['m1'], { api_key: 'sk-upstream' })],
      routes: { fast: { strategy: 'priority', targets: ['alpha/m1'] } },
    }),
  );
  return sim;
}

async function call(method: 'GET' | 'POST' | 'DELETE', path: string, headers: Record<string, string> = {}) {
  const body =
    method === 'POST'
      ? JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] })
      : undefined;
  const res = await request(`${gw!.url}${path}`, {
    method,
    headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
    body,
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as Record<string, unknown>,
  };
}

const chat = (headers: Record<string, string> = {}) => call('POST', '/v1/chat/completions', headers);

describe('client keys (server.api_keys)', () => {
  it('accepts any configured key as Bearer, with the scheme in any case', async () => {
    const sim = await setup({ api_keys: [CLIENT_KEY, CLIENT_KEY_2] });
    for (const h of [
      `Bearer ${CLIENT_KEY}`,
      `bearer ${CLIENT_KEY}`,
      `BEARER ${CLIENT_KEY_2}`,
      `bEaReR   ${CLIENT_KEY}  `,
    ]) {
      const r = await chat({ authorization: h });
      expect(r.status, h).toBe(200);
    }
    // The client's key is ours to check, never forwarded: the upstream gets the provider's key.
    expect(sim.requests.every((q) => q.headers.authorization === 'Bearer sk-upstream')).toBe(true);
  });

  it('refuses a missing, wrong, differently-schemed or query-string key with an OpenAI-shaped 401, before any upstream', async () => {
    const sim = await setup({ api_keys: [CLIENT_KEY] });
    const cases: Array<[string, Record<string, string>]> = [
      ['/v1/chat/completions', {}],
      ['/v1/chat/completions', { authorization: 'Bearer wrong-key' }],
      ['/v1/chat/completions', { authorization: `Bearer ${CLIENT_KEY}x` }],
      ['/v1/chat/completions', { authorization: `Basic ${CLIENT_KEY}` }],
      ['/v1/chat/completions', { authorization: CLIENT_KEY }],
      ['/v1/chat/completions', { authorization: 'Bearer ' }],
      ['/v1/chat/completions', { 'x-api-key': CLIENT_KEY }],
      [`/v1/chat/completions?api_key=${CLIENT_KEY}`, {}],
      [`/v1/chat/completions?key=${CLIENT_KEY}&authorization=Bearer%20${CLIENT_KEY}`, {}],
    ];
    for (const [path, headers] of cases) {
      const r = await call('POST', path, headers);
      const what = `${path} ${JSON.stringify(headers)}`;
      expect(r.status, what).toBe(401);
      expect(r.json(), what).toEqual({
        error: {
          message: expect.stringContaining('API key'),
          type: 'authentication_error',
          param: null,
          code: 'invalid_api_key',
        },
      });
      expect(r.headers['x-request-id'], what).toBeTruthy();
    }
    expect(sim.requests).toHaveLength(0);
  });

  it('guards every /v1/* path: models, embeddings, unknown paths and the passthrough', async () => {
    await setup({ api_keys: [CLIENT_KEY], passthrough: 'alpha' });
    for (const path of ['/v1/models', '/v1/files', '/v1/audio/speech', '/v1/nope']) {
      expect((await call('GET', path)).status, path).toBe(401);
    }
    expect((await call('POST', '/v1/embeddings')).status).toBe(401);
    const models = await call('GET', '/v1/models', { authorization: `Bearer ${CLIENT_KEY}` });
    expect(models.status).toBe(200);
    expect(models.text).toContain('"fast"');
  });

  it('without api_keys there is no client auth', async () => {
    await setup({});
    expect((await chat()).status).toBe(200);
    expect((await call('GET', '/v1/models')).status).toBe(200);
  });
});

describe('the admin key (server.admin_key)', () => {
  it('protects /router/status and /router/explain: 401 and no data without it', async () => {
    await setup({ api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY });
    const denied: Array<Record<string, string>> = [
      {},
      { authorization: `Bearer ${CLIENT_KEY}` }, // a client key is not an admin key
      { authorization: 'Bearer nope' },
      { 'x-admin-key': 'nope' },
      { 'x-admin-key': `Bearer ${ADMIN_KEY}` },
      { authorization: `Basic ${ADMIN_KEY}` },
    ];
    for (const headers of denied) {
      for (const [method, path] of [
        ['GET', '/router/status'],
        ['POST', '/router/explain'],
        ['GET', `/router/status?admin_key=${ADMIN_KEY}`],
        // Paths no route serves, and a wrong method: a 401 too, never a 404 that maps the admin API.
        ['GET', '/router/nope'],
        ['GET', '/router'],
        ['DELETE', '/router/status'],
        ['GET', '/router/%73tatus'],
      ] as const) {
        const r = await call(method, path, headers);
        const what = `${method} ${path} ${JSON.stringify(headers)}`;
        expect(r.status, what).toBe(401);
        expect(r.json(), what).toMatchObject({
          error: { type: 'authentication_error', code: 'invalid_admin_key' },
        });
        expect(r.text, what).not.toContain('alpha');
      }
    }
  });

  it('accepts it as Bearer (any case) or as x-admin-key', async () => {
    await setup({ api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY });
    const accepted: Record<string, string>[] = [
      { authorization: `Bearer ${ADMIN_KEY}` },
      { authorization: `bearer ${ADMIN_KEY}` },
      { 'x-admin-key': ADMIN_KEY },
      // A client that always sends its own key adds the admin key beside it.
      { authorization: `Bearer ${CLIENT_KEY}`, 'x-admin-key': ADMIN_KEY },
    ];
    for (const headers of accepted) {
      const status = await call('GET', '/router/status', headers);
      expect(status.status).toBe(200);
      expect(status.text).toContain('alpha/m1');
      const explain = await call('POST', '/router/explain', headers);
      expect(explain.status).toBe(200);
      expect(explain.json()).toMatchObject({ route: 'fast', candidates: [{ upstream: 'alpha/m1' }] });
    }
  });

  it('/metrics is open by default, and needs the admin key with server.metrics_auth: true', async () => {
    const first = await setup({ api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY });
    expect((await call('GET', '/metrics')).status).toBe(200);
    await gw!.close();
    await first.close();

    await setup({ api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY, metrics_auth: true });
    const denied = await call('GET', '/metrics');
    expect(denied.status).toBe(401);
    expect(denied.text).not.toContain('llm_router_');
    expect((await call('GET', '/metrics', { authorization: `Bearer ${CLIENT_KEY}` })).status).toBe(401);
    const ok = await call('GET', '/metrics', { 'x-admin-key': ADMIN_KEY });
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('llm_router_requests_total');
    expect((await call('GET', '/metrics', { authorization: `Bearer ${ADMIN_KEY}` })).status).toBe(200);
  });

  it('/healthz and /readyz are always open', async () => {
    await setup({ api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY, metrics_auth: true });
    for (const path of ['/healthz', '/readyz']) {
      const r = await call('GET', path);
      expect(r.status, path).toBe(200);
      const wrong = await call('GET', path, { authorization: 'Bearer wrong' });
      expect(wrong.status, `${path} with a wrong key`).toBe(200);
    }
  });
});

// Regression: auth was decided on the raw URL prefix while the router matches the percent-decoded path,
// so `/%761/...` reached /v1 handlers (and the passthrough spent our key) with no client key.
describe('encoded paths cannot skip auth', () => {
  const cases: Array<[string, 'GET' | 'POST']> = [
    ['/router/%73tatus', 'GET'],
    ['/v1/%6dodels', 'GET'],
    ['/%761/chat/completions', 'POST'],
    ['/%761/models', 'GET'],
    ['/%761/files', 'GET'],
    ['/%72outer/status', 'GET'],
    ['/%6detrics', 'GET'],
  ];
  for (const [path, method] of cases) {
    it(`${method} ${path} without a key is refused`, async () => {
      const sim = await setup({
        api_keys: [CLIENT_KEY],
        admin_key: ADMIN_KEY,
        metrics_auth: true,
        passthrough: 'alpha',
      });
      const r = await call(method, path);
      expect([401, 404]).toContain(r.status);
      expect(sim.requests).toHaveLength(0);
    });
  }
});
