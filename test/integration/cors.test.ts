/**
 * CORS (`server.cors`): a browser page on an allowed origin may call the gateway. Its preflight is answered
 * before auth, rate limits and routes (a browser sends no key on it), is never proxied to the passthrough
 * provider, and is not counted as a request; answers to allowed origins — JSON, streams, errors, passthrough
 * — carry Allow-Origin and expose the routing headers. Other origins get no Allow-Origin. Without
 * `server.cors`, nothing changes: no CORS headers, and an OPTIONS is a request like any other.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { corsAllows } from '../../src/http/cors.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';
import { scrape } from '../helpers/prom-text.js';

const track = closeAfterEach();
const APP = 'https://app.example.com';

async function gatewayWith(server: Record<string, unknown>) {
  const chats = track(await startMock((req, res) => answerChat(res, req.body, 'hello')));
  const files = track(
    await startMock((req, res) => {
      res.setHeader('access-control-allow-origin', '*');
      sendJson(res, 200, { object: 'list', data: [] });
    }),
  );
  const gw = track(
    await startGateway({
      server: { api_keys: ['k'], admin_key: 'admin', passthrough: 'files', ...server },
      providers: [
        {
          name: 'up',
          kind: 'openai',
          base_url: `${chats.url}/v1`,
          api_key: 'sk-up',
          models: [{ name: 'm' }],
        },
        {
          name: 'files',
          kind: 'openai',
          base_url: `${files.url}/v1`,
          api_key: 'sk-files',
          models: [{ name: 'x' }],
        },
      ],
      routes: { r: { targets: ['up/m'] } },
    }),
  );
  return { gw, chats, files };
}

function preflight(gw: TestGateway, path: string, origin: string, method = 'POST') {
  return request(`${gw.url}${path}`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': method,
      'access-control-request-headers': 'authorization, content-type, x-stainless-os, x-router-strategy',
    },
  });
}

async function requestsCounted(gw: TestGateway): Promise<number> {
  const samples = await scrape(gw.url);
  return samples.filter((s) => s.name === 'llm_router_requests_total').reduce((sum, s) => sum + s.value, 0);
}

describe('server.cors: a browser page on an allowed origin', () => {
  const CORS = { cors: { origins: [APP] } };

  it('gets its preflight answered without a key, not routed, not counted', async () => {
    const { gw, chats } = await gatewayWith(CORS);
    const res = await preflight(gw, '/v1/chat/completions', APP);
    await res.body.dump();
    expect(res.statusCode).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe(APP);
    expect(String(res.headers['access-control-allow-methods'])).toContain('POST');
    expect(String(res.headers['access-control-allow-methods'])).toContain('DELETE');
    expect(res.headers['access-control-allow-headers']).toBe(
      'authorization, content-type, x-stainless-os, x-router-strategy',
    );
    expect(res.headers['access-control-max-age']).toBe('600');
    expect(String(res.headers.vary)).toMatch(/origin/i);
    expect(chats.received).toHaveLength(0);
    expect(await requestsCounted(gw)).toBe(0);
  });

  it('reads the answer and its routing headers, JSON and streamed', async () => {
    const { gw } = await gatewayWith(CORS);
    for (const stream of [false, true]) {
      const r = await postChat(
        gw,
        { model: 'r', stream, messages: [{ role: 'user', content: 'hi' }] },
        { headers: { origin: APP } },
      );
      expect(r.status, r.text).toBe(200);
      expect(r.text).toContain('hello');
      expect(r.headers['access-control-allow-origin'], `stream ${stream}`).toBe(APP);
      const exposed = r.headers['access-control-expose-headers'] ?? '';
      for (const h of ['x-request-id', 'x-router-provider', 'x-router-attempts', 'retry-after'])
        expect(exposed, `stream ${stream}`).toContain(h);
    }
    expect(await requestsCounted(gw)).toBe(2);
  });

  it('reads an error: a 401 without a key and a 400 for a bad body carry Allow-Origin', async () => {
    const { gw } = await gatewayWith(CORS);
    const noKey = await postChat(
      gw,
      { model: 'r', messages: [] },
      { headers: { origin: APP, authorization: '' } },
    );
    expect(noKey.status).toBe(401);
    expect(noKey.headers['access-control-allow-origin']).toBe(APP);
    const bad = await postChat(gw, { model: 'r', messages: 'x' }, { headers: { origin: APP } });
    expect(bad.status).toBe(400);
    expect(bad.headers['access-control-allow-origin']).toBe(APP);
  });

  it('a passthrough preflight is not proxied with our key; its answer carries our Allow-Origin, not the provider’s', async () => {
    const { gw, files } = await gatewayWith(CORS);
    const pre = await preflight(gw, '/v1/files', APP, 'GET');
    await pre.body.dump();
    expect(pre.statusCode).toBe(204);
    expect(files.received).toHaveLength(0);
    const res = await request(`${gw.url}/v1/files`, { headers: { origin: APP, authorization: 'Bearer k' } });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBe(APP);
    expect(files.received).toHaveLength(1);
  });

  it('preflights spend no rate-limit budget', async () => {
    const { gw } = await gatewayWith({ ...CORS, rate_limit: { requests_per_minute: 2 } });
    for (let i = 0; i < 5; i++) {
      const res = await preflight(gw, '/v1/chat/completions', APP);
      await res.body.dump();
      expect(res.statusCode).toBe(204);
    }
    for (let i = 0; i < 2; i++) {
      const r = await postChat(
        gw,
        { model: 'r', messages: [{ role: 'user', content: 'hi' }] },
        { headers: { origin: APP } },
      );
      expect(r.status, r.text).toBe(200);
    }
  });

  it('another origin gets no Allow-Origin, on the preflight or the answer', async () => {
    const { gw, chats } = await gatewayWith(CORS);
    const pre = await preflight(gw, '/v1/chat/completions', 'https://evil.example.net');
    await pre.body.dump();
    expect(pre.statusCode).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    const r = await postChat(
      gw,
      { model: 'r', messages: [{ role: 'user', content: 'hi' }] },
      { headers: { origin: 'https://evil.example.net' } },
    );
    expect(r.status).toBe(200); // not a browser: CORS is the browser's to enforce
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    expect(chats.received).toHaveLength(1);
  });

  it('a reload changes the origins at once', async () => {
    const { gw } = await gatewayWith(CORS);
    const other = 'http://localhost:5173';
    const before = await preflight(gw, '/v1/chat/completions', other);
    await before.body.dump();
    expect(before.headers['access-control-allow-origin']).toBeUndefined();
    const cfg = gw.gateway.runtime.loaded.config;
    gw.gateway.reload(
      parseConfigText(JSON.stringify({ ...cfg, server: { ...cfg.server, cors: { origins: [other] } } }), {}),
    );
    const after = await preflight(gw, '/v1/chat/completions', other);
    await after.body.dump();
    expect(after.headers['access-control-allow-origin']).toBe(other);
  });
});

describe('without server.cors', () => {
  it('no CORS headers, and an OPTIONS needs a key like any request', async () => {
    const { gw } = await gatewayWith({});
    const pre = await preflight(gw, '/v1/chat/completions', APP);
    await pre.body.dump();
    expect(pre.statusCode).toBe(401);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    const r = await postChat(
      gw,
      { model: 'r', messages: [{ role: 'user', content: 'hi' }] },
      { headers: { origin: APP } },
    );
    expect(r.status).toBe(200);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    expect(r.headers['access-control-expose-headers']).toBeUndefined();
    const samples = await scrape(gw.url);
    const unauthorised = samples.filter(
      (x) => x.name === 'llm_router_requests_total' && x.labels.status === '401',
    );
    expect(unauthorised.reduce((sum, x) => sum + x.value, 0)).toBe(1);
  });
});

describe('server.cors origins', () => {
  const cors = (origins: string[]) => ({ origins, max_age_s: 600 });

  it('exact origins match whatever the case; `*` matches any', () => {
    expect(corsAllows(cors([APP]), 'https://App.Example.com')).toBe(true);
    expect(corsAllows(cors([APP]), 'http://app.example.com')).toBe(false);
    expect(corsAllows(cors([APP]), 'https://app.example.com:8443')).toBe(false);
    expect(corsAllows(cors(['*']), 'null')).toBe(true);
    expect(corsAllows(cors([APP]), undefined)).toBe(false);
    expect(corsAllows(undefined, APP)).toBe(false);
  });

  it('`https://*.example.com` takes subdomains on that scheme and port only', () => {
    const c = cors(['https://*.example.com']);
    expect(corsAllows(c, 'https://a.example.com')).toBe(true);
    expect(corsAllows(c, 'https://a.b.example.com')).toBe(true);
    expect(corsAllows(c, 'https://example.com')).toBe(false);
    expect(corsAllows(c, 'https://evilexample.com')).toBe(false);
    expect(corsAllows(c, 'https://a.example.com.evil.net')).toBe(false);
    expect(corsAllows(c, 'http://a.example.com')).toBe(false);
    expect(corsAllows(c, 'https://a.example.com:444')).toBe(false);
    const p = cors(['http://*.local.test:3000']);
    expect(corsAllows(p, 'http://web.local.test:3000')).toBe(true);
    expect(corsAllows(p, 'http://web.local.test')).toBe(false);
    expect(corsAllows(p, 'http://web.local.test:30000')).toBe(false);
  });

  it('a path, a missing scheme or an empty list is refused at load, naming the entry', () => {
    const load = (origins: unknown) => () =>
      parseConfigText(
        JSON.stringify({
          server: { cors: { origins } },
          providers: [{ name: 'p', base_url: 'http://127.0.0.1:1/v1', models: [{ name: 'm' }] }],
          routes: { r: { targets: ['p/m'] } },
        }),
        {},
      );
    expect(load(['https://app.example.com/'])).toThrow(/server\.cors\.origins\[0\].*origin/);
    expect(load([APP, 'app.example.com'])).toThrow(/server\.cors\.origins\[1\]/);
    expect(load([])).toThrow(/server\.cors\.origins/);
    expect(load([APP])).not.toThrow();
    expect(load(['https://app.example.com/'])).toThrow(ConfigError);
  });
});
