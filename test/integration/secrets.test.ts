import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';

/**
 * SPEC §8 "Secrets": a whole session — success, stream, failover past an upstream that echoes our key, a
 * relayed 400 that echoes it, an in-stream error that carries it, a provider that rejects our key, the
 * passthrough, the admin surfaces, /metrics, /v1/models and auth failures — then every log line and every
 * response body and header is searched for every configured secret.
 */
const SECRETS = {
  ALPHA_KEY: 'sk-alpha-SECRET-1f2e3d4c5b6a',
  BETA_KEY: 'sk-beta-SECRET-aa11bb22cc33',
  GAMMA_KEY: 'sk-gamma-SECRET-9988776655',
  WRONG_KEY: 'sk-wrong-SECRET-0000111122',
  CUT_KEY: 'sk-cut-SECRET-4455667788',
  ANT_KEY: 'sk-ant-SECRET-deadbeef0042',
  PT_KEY: 'sk-passthrough-SECRET-77aa',
  URL_PASSWORD: 'urlpw-SECRET-5150',
  CLIENT_KEY: 'client-SECRET-key-one-0001',
  CLIENT_KEY_2: 'client-SECRET-key-two-0002',
  ADMIN_KEY: 'admin-SECRET-key-4242',
};

const track = closeAfterEach();
let gw: TestGateway | undefined;

/** Everything a client could see: status, headers and body text of every response. */
const seen: string[] = [];

async function call(
  method: 'GET' | 'POST',
  path: string,
  opts: { headers?: Record<string, string>; body?: unknown } = {},
) {
  const res = await request(`${gw!.url}${path}`, {
    method,
    headers: { ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}), ...opts.headers },
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await res.body.text();
  seen.push(`${method} ${path.split('?')[0]} ${res.statusCode}\n${JSON.stringify(res.headers)}\n${text}`);
  return { status: res.statusCode, headers: res.headers, text };
}

describe('no configured secret ever leaves the gateway', () => {
  it('in any response body, header, log line, /router/*, /metrics or /v1/models', async () => {
    const mk = async (name: string, o: Parameters<typeof startSimulator>[0] = {}) =>
      track(await startSimulator({ name, ...o }));
    const alpha = await mk('alpha', { apiKey: SECRETS.ALPHA_KEY });
    const beta = await mk('beta', { status: 500, echoAuthInError: true });
    const gamma = await mk('gamma', { status: 400, echoAuthInError: true, errorMessage: 'bad request' });
    const wrong = await mk('wrong', { apiKey: 'the-real-key', echoAuthInError: true });
    // An upstream that commits a stream, then sends an error event quoting our key.
    const cut = await mk('cut', {
      errorEventAfterChunks: 2,
      errorMessage: `upstream broke (key ${SECRETS.CUT_KEY})`,
    });
    const ant = await mk('ant', { kind: 'anthropic', apiKey: SECRETS.ANT_KEY });
    const pt = await mk('pt', { status: 403, echoAuthInError: true });

    const yaml = `
server:
  api_keys: ["\${CLIENT_KEY}", "\${CLIENT_KEY_2}"]
  admin_key: \${ADMIN_KEY}
  passthrough: pt
providers:
  - { name: alpha, base_url: "http://gw:\${URL_PASSWORD}@${alpha.url.slice(7)}/v1", api_key: "\${ALPHA_KEY}", models: [{ name: m }] }
  - { name: beta, base_url: "${beta.url}/v1", api_key: "\${BETA_KEY}", models: [{ name: m }] }
  - { name: gamma, base_url: "${gamma.url}/v1", api_key: "\${GAMMA_KEY}", models: [{ name: m }] }
  - { name: wrong, base_url: "${wrong.url}/v1", api_key: "\${WRONG_KEY}", models: [{ name: m }] }
  - { name: cut, base_url: "${cut.url}/v1", api_key: "\${CUT_KEY}", models: [{ name: m }] }
  - { name: ant, kind: anthropic, base_url: "${ant.url}", api_key: "\${ANT_KEY}", models: [{ name: m }] }
  - { name: pt, base_url: "${pt.url}/v1", api_key: "\${PT_KEY}", models: [{ name: m }] }
routes:
  main: { strategy: priority, targets: [beta/m, wrong/m, alpha/m] }
  relay: { strategy: priority, targets: [gamma/m] }
  cut: { strategy: priority, targets: [cut/m] }
  claude: { strategy: priority, targets: [ant/m] }
  dead: { strategy: priority, targets: [beta/m, wrong/m] }
`;
    gw = track(await startGateway(yaml, { env: SECRETS }));
    const auth = { authorization: `Bearer ${SECRETS.CLIENT_KEY}` };
    const admin = { authorization: `Bearer ${SECRETS.ADMIN_KEY}` };
    const msgs = [{ role: 'user', content: 'hello there' }];

    // Failover past two upstreams that echo our key (a 500, and a 401 because the key is wrong).
    const ok = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'main', messages: msgs },
    });
    expect(ok.status).toBe(200);
    expect(ok.headers['x-router-trail']).toBe('beta/m=http_500,wrong/m=http_401');
    expect(beta.requests[0]?.headers.authorization).toBe(`Bearer ${SECRETS.BETA_KEY}`); // the echo really happened
    expect(alpha.requests[0]?.headers.authorization).toBe(`Bearer ${SECRETS.ALPHA_KEY}`);

    const stream = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'main', messages: msgs, stream: true },
    });
    expect(stream.status).toBe(200);
    expect(stream.text).toContain('[DONE]');

    const relayed = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'relay', messages: msgs },
    });
    expect(relayed.status).toBe(400);
    expect(relayed.text).toContain('bad request');
    expect(relayed.text).toContain('[REDACTED]');
    const relayedStream = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'relay', messages: msgs, stream: true },
    });
    expect(relayedStream.status).toBe(400);

    const cutStream = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'cut', messages: msgs, stream: true },
    });
    expect(cutStream.status).toBe(200);
    expect(cutStream.text).toContain('"error"');
    expect(cutStream.text).toContain('upstream broke (key [REDACTED])'); // relayed, scrubbed

    const claude = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'claude', messages: msgs },
    });
    expect(claude.status).toBe(200);
    expect(ant.requests[0]?.headers['x-api-key']).toBe(SECRETS.ANT_KEY);

    const dead = await call('POST', '/v1/chat/completions', {
      headers: auth,
      body: { model: 'dead', messages: msgs },
    });
    expect(dead.status).toBe(502);

    const passthrough = await call('GET', '/v1/files', {
      headers: { authorization: `Bearer ${SECRETS.CLIENT_KEY_2}` },
    });
    expect(passthrough.status).toBe(403);
    expect(pt.requests.at(-1)?.headers.authorization).toBe(`Bearer ${SECRETS.PT_KEY}`); // our key replaced the client's

    expect((await call('GET', '/v1/models', { headers: auth })).status).toBe(200);
    expect((await call('GET', '/router/status', { headers: admin })).status).toBe(200);
    expect(
      (await call('GET', '/router/status', { headers: { 'x-admin-key': SECRETS.ADMIN_KEY } })).status,
    ).toBe(200);
    expect(
      (await call('POST', '/router/explain', { headers: admin, body: { model: 'main', messages: msgs } }))
        .status,
    ).toBe(200);
    expect((await call('GET', '/metrics')).status).toBe(200);
    expect((await call('GET', '/healthz')).status).toBe(200);
    expect((await call('GET', '/readyz')).status).toBe(200);

    // Auth failures, including a client key offered as the admin key and keys in places they don't belong.
    expect(
      (await call('POST', '/v1/chat/completions', { body: { model: 'main', messages: msgs } })).status,
    ).toBe(401);
    expect((await call('GET', `/v1/models?api_key=${SECRETS.CLIENT_KEY}`)).status).toBe(401);
    expect((await call('GET', '/router/status', { headers: auth })).status).toBe(401);
    expect(
      (await call('GET', '/router/status', { headers: { authorization: `Bearer ${SECRETS.ADMIN_KEY}x` } }))
        .status,
    ).toBe(401);
    expect((await call('GET', `/router/status?admin_key=${SECRETS.ADMIN_KEY}`)).status).toBe(401);

    const logs = gw.rawLogs();
    expect(logs).toContain('rejected our credentials'); // the wrong key was logged loudly ...
    // One line per request: the 7 routed ones carry their route; the early rejections (401s, admin reads) too.
    expect(gw.logs.filter((l) => l.msg === 'request' && typeof l.route === 'string')).toHaveLength(7);
    for (const [name, secret] of Object.entries(SECRETS)) {
      expect(logs.includes(secret), `${name} in the logs`).toBe(false); // ... and never its value
      for (const r of seen) expect(r.includes(secret), `${name} in a response:\n${r}`).toBe(false);
    }
  });

  // Regression: passthrough error bodies were relayed byte for byte, echoed key included.
  it('a passthrough error body that echoes the provider key is scrubbed', async () => {
    const pt = track(await startSimulator({ name: 'pt', status: 403, echoAuthInError: true }));
    gw = track(
      await startGateway(
        {
          server: { passthrough: 'pt' },
          providers: [
            { name: 'pt', base_url: `${pt.url}/v1`, api_key: SECRETS.PT_KEY, models: [{ name: 'm' }] },
          ],
        },
        {},
      ),
    );
    const res = await request(`${gw.url}/v1/files`);
    expect(res.statusCode).toBe(403);
    expect(pt.requests[0]?.headers.authorization).toBe(`Bearer ${SECRETS.PT_KEY}`);
    expect(await res.body.text()).not.toContain(SECRETS.PT_KEY);
  });
});
