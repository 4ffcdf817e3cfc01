/**
 * The gateway's own endpoints besides chat, at edges not covered elsewhere (SPEC §4, §5, §8; README "HTTP
 * surface", "Metrics"):
 * - GET /v1/models and /v1/models/{id} agree for every id the list gives, odd ones included (a slash from a
 *   vLLM-style model name, a space, `%`, non-ASCII, an Ollama colon), with and without server.passthrough,
 *   through the OpenAI SDK as well as raw, and our ids never reach the provider;
 * - a tier whose every provider is disabled (empty api_key) gives way to a tier that can serve, as one that
 *   cannot take a request does; a flat route with none live answers a 503 saying so, with no Retry-After;
 * - 401s from /router/* are one and the same whatever was sent (nothing tells which keys exist); the admin
 *   key is not a client key;
 * - /metrics label values never come from what a client sent, and /metrics shows no secret.
 */
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, postTo, startGateway } from '../helpers/gateway.js';
import { chatCompletion, sendJson, startMock } from '../helpers/mock-upstream.js';
import { parseProm } from '../helpers/prom-text.js';

const track = closeAfterEach();
type Json = Record<string, unknown>;
const HI = [{ role: 'user', content: 'hi' }];
const ADMIN = 'adm-0123456789-secret';
const A = { authorization: `Bearer ${ADMIN}` };
const K = { authorization: 'Bearer k' };

async function get(
  url: string,
  headers: Record<string, string> = {},
  method: 'GET' | 'POST' | 'HEAD' = 'GET',
): Promise<{ status: number; headers: Record<string, unknown>; text: string; json: Json }> {
  const r = await request(url, { method, headers });
  const text = await r.body.text();
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    /* not JSON */
  }
  return { status: r.statusCode, headers: r.headers, text, json };
}

describe('/v1/models and /v1/models/{id} agree on every id, odd ones included', () => {
  const models = [{ name: 'm' }, { name: 'meta-llama/Llama-3.1-8B' }, { name: 'qwen2.5:7b' }];
  const routes = {
    main: { strategy: 'priority', targets: ['p/m'] },
    'with space': { targets: ['p/m'] },
    '50%off': { targets: ['p/m'] },
    'ü-route': { targets: ['p/m'] },
  };

  for (const passthrough of [false, true]) {
    it(`the SDK's retrieve(id) gives the list's own entry for each id${passthrough ? ' (with server.passthrough)' : ''}`, async () => {
      const up = track(
        await startMock((r, res) => sendJson(res, 200, { id: 'from-provider', path: r.path })),
      );
      const gw = track(
        await startGateway({
          server: { api_keys: ['k'], ...(passthrough ? { passthrough: 'p' } : {}) },
          providers: [{ name: 'p', base_url: `${up.url}/v1`, api_key: 'sk-p-0123456789', models }],
          routes,
        }),
      );
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const list = (await client.models.list()).data;
      expect(list.map((m) => m.id).sort()).toEqual(
        [
          'main',
          'with space',
          '50%off',
          'ü-route',
          'p/m',
          'p/meta-llama/Llama-3.1-8B',
          'p/qwen2.5:7b',
        ].sort(),
      );
      for (const entry of list) {
        const one = await client.models.retrieve(entry.id);
        expect({ id: one.id, object: one.object, owned_by: one.owned_by }).toEqual({
          id: entry.id,
          object: 'model',
          owned_by: entry.owned_by,
        });
      }
      // The slash of a vLLM-style name, raw or %2F-encoded, is the same id.
      const raw = await get(`${gw.url}/v1/models/p/meta-llama/Llama-3.1-8B`, K);
      const encoded = await get(`${gw.url}/v1/models/p%2Fmeta-llama%2FLlama-3.1-8B`, K);
      expect([raw.status, raw.json.id, encoded.status, encoded.json.id]).toEqual([
        200,
        'p/meta-llama/Llama-3.1-8B',
        200,
        'p/meta-llama/Llama-3.1-8B',
      ]);
      // Our ids never reach the provider.
      expect(up.received).toHaveLength(0);
    });
  }
});

describe('disabled providers as the admin surface and errors show them', () => {
  it('a tier whose every provider is disabled gives way to one that can serve; a flat route with none live says so', async () => {
    const up = track(await startMock((r, res) => sendJson(res, 200, chatCompletion(r.body))));
    const gw = track(
      await startGateway(
        {
          server: { admin_key: ADMIN },
          providers: [
            { name: 'live', base_url: `${up.url}/v1`, api_key: 'sk-0123456789', models: [{ name: 'm' }] },
            { name: 'dead', base_url: `${up.url}/v1`, api_key: '${DEAD_KEY}', models: [{ name: 'm' }] },
          ],
          routes: {
            auto: {
              tiers: { fast: ['live/m'], balanced: ['dead/m'] },
              rules: [{ if: { tools: true }, tier: 'fast' }],
              default_tier: 'balanced',
            },
            flat: { targets: ['dead/m'] },
          },
        },
        { env: { DEAD_KEY: '' } },
      ),
    );
    // The route has a live upstream: /router/status and /v1/models say so.
    const status = await get(`${gw.url}/router/status`, A);
    const route = (status.json.routes as Json[]).find((r) => r.name === 'auto');
    expect(route?.targets).toEqual(['live/m']);
    expect(((await get(`${gw.url}/v1/models`)).json.data as Json[]).map((m) => m.id)).toContain('auto');

    // default_tier can serve nothing: the tier that can serves it, and explain says the same.
    const real = await postChat(gw, { model: 'auto', messages: HI });
    expect(real.status, JSON.stringify(real.json)).toBe(200);
    expect(real.headers['x-router-provider']).toBe('live');
    const ex = await postTo(`${gw.url}/router/explain`, { model: 'auto', messages: HI }, { headers: A });
    expect(ex.status).toBe(200);
    expect(JSON.stringify(ex.json)).toContain('live/m');

    // A flat route whose every provider is disabled: a 503 that says why, and no Retry-After (time does not
    // end it; a reload that gives the provider a key does).
    const none = await postChat(gw, { model: 'flat', messages: HI });
    expect(none.status).toBe(503);
    expect(String((none.json.error as Json).message)).toMatch(/route `flat` has no live upstream.*disabled/);
    expect(none.headers['retry-after']).toBeUndefined();
    expect(up.received).toHaveLength(1);
  });
});

describe('auth on the admin and model endpoints tells nothing about the keys', () => {
  it('missing, wrong and client keys get the same 401 from /router/*, OpenAI-shaped, with no data', async () => {
    const up = track(await startMock((r, res) => sendJson(res, 200, chatCompletion(r.body))));
    const gw = track(
      await startGateway({
        server: { api_keys: ['k'], admin_key: ADMIN },
        providers: [
          { name: 'p', base_url: `${up.url}/v1`, api_key: 'sk-p-0123456789', models: [{ name: 'm' }] },
        ],
        routes: { main: { targets: ['p/m'] } },
      }),
    );
    const bodies = new Set<string>();
    const attempts: Record<string, string>[] = [
      {},
      { authorization: 'Bearer nope' },
      K,
      { 'x-admin-key': 'k' },
      { authorization: 'Basic YTpi' },
    ];
    for (const headers of attempts) {
      for (const [method, path] of [
        ['GET', '/router/status'],
        ['POST', '/router/explain'],
        ['GET', '/router/not-a-path'],
      ] as const) {
        const r = await get(`${gw.url}${path}`, headers, method);
        expect(r.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(r.text).not.toMatch(/p\/m|main|upstreams/);
        bodies.add(r.text);
      }
    }
    expect(bodies.size).toBe(1);
    expect(JSON.parse([...bodies][0]!)).toMatchObject({
      error: { type: 'authentication_error', param: null },
    });
    // The admin key is not a client key, nor the other way round.
    expect((await get(`${gw.url}/v1/models`, A)).status).toBe(401);
    expect((await get(`${gw.url}/router/status`, { 'x-admin-key': ADMIN })).status).toBe(200);
  });
});

describe('/metrics labels come from the configuration only', () => {
  it('after requests with made-up models, paths, strategies and ids, no label value is one of them; no secret', async () => {
    const up = track(await startMock((r, res) => sendJson(res, 200, chatCompletion(r.body))));
    const gw = track(
      await startGateway({
        server: { api_keys: ['client-key-0123456789'], admin_key: ADMIN },
        providers: [
          {
            name: 'p',
            base_url: `http://user:pw-0123456789@127.0.0.1:${new URL(up.url).port}/v1`,
            api_key: 'sk-p-0123456789',
            models: [{ name: 'm' }],
          },
        ],
        routes: { main: { targets: ['p/m'] } },
      }),
    );
    const auth = { authorization: 'Bearer client-key-0123456789' };
    const mark = 'zqxmark';
    const chat = (body: Json, headers: Record<string, string> = {}) =>
      postTo(`${gw.url}/v1/chat/completions`, body, { headers: { ...auth, ...headers } });
    await chat({ model: `${mark}-model`, messages: HI });
    await postTo(`${gw.url}/v1/embeddings`, { model: `${mark}-emb`, input: 'x' }, { headers: auth });
    await chat(
      { model: 'main', messages: HI },
      { 'x-router-strategy': `${mark}-s`, 'x-request-id': `${mark}-id` },
    );
    await chat({ model: 'main', messages: HI }, { 'x-router-tier': `${mark}-t` });
    await chat({ model: 'main', messages: HI }, { 'x-router-provider': `${mark}-p` });
    await get(`${gw.url}/v1/${mark}-path`, auth);
    await get(`${gw.url}/${mark}-root`);
    await get(`${gw.url}/v1/models/${mark}-retrieve`, auth);
    await postTo(`${gw.url}/router/explain`, { model: `${mark}-x`, messages: HI }, { headers: A });
    expect((await chat({ model: 'main', messages: HI })).status).toBe(200);

    const m = await get(`${gw.url}/metrics`);
    expect(m.status).toBe(200);
    expect(String(m.headers['content-type'])).toMatch(/^text\/plain; version=0\.0\.4/);
    const samples = parseProm(m.text);
    const labelValues = new Set(samples.flatMap((s) => Object.values(s.labels)));
    expect([...labelValues].filter((v) => v.includes(mark))).toEqual([]);
    for (const secret of ['client-key-0123456789', ADMIN, 'sk-p-0123456789', 'pw-0123456789'])
      expect(m.text.includes(secret), secret).toBe(false);
    // Every route label is a configured route or `none`.
    const routesSeen = new Set(samples.map((s) => s.labels.route).filter((r) => r !== undefined));
    expect([...routesSeen].filter((r) => r !== 'main' && r !== 'none')).toEqual([]);
  });
});
