/**
 * Embeddings routed like chat (strategy, failover, headers) through the OpenAI SDK, the config rule that a
 * route is all-embedding or all-chat, and the `/v1/*` passthrough with the provider's key in place of ours.
 */
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
let gw: TestGateway | undefined;

async function sim(name: string): Promise<Simulator> {
  return track(await startSimulator({ name }));
}

const EMB = {
  name: 'emb',
  capabilities: ['embeddings'],
  price: { input_per_mtok: 0.02, output_per_mtok: 0 },
};

describe('embeddings', () => {
  async function setup() {
    const e1 = await sim('e1');
    const e2 = await sim('e2');
    const chat = await sim('chat');
    gw = track(
      await startGateway({
        providers: [
          simProvider('e1', e1.url, [EMB], { api_key: 'sk-e1' }),
          simProvider('e2', e2.url, [{ ...EMB, upstream_name: 'emb-large' }], { api_key: 'sk-e2' }),
          simProvider('chat', chat.url, ['m']),
        ],
        routes: {
          embed: { strategy: 'priority', targets: ['e1/emb', 'e2/emb'] },
          talk: { strategy: 'priority', targets: ['chat/m'] },
        },
      }),
    );
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
    return { e1, e2, chat, client };
  }

  it('serves vectors to the OpenAI SDK, base64 (its default) and float alike', async () => {
    const { e1, client } = await setup();
    const { data: b64, response } = await client.embeddings
      .create({ model: 'embed', input: ['hello', 'world'] })
      .withResponse();
    expect(response.headers.get('x-router-provider')).toBe('e1');
    expect(response.headers.get('x-router-model')).toBe('emb');
    expect(response.headers.get('x-router-attempts')).toBe('1');
    expect(b64.data).toHaveLength(2);
    const v = b64.data[0]!.embedding;
    expect(v).toHaveLength(8);
    expect(v.every((x) => typeof x === 'number' && Number.isFinite(x))).toBe(true);

    const floats = await client.embeddings.create({
      model: 'embed',
      input: ['hello', 'world'],
      encoding_format: 'float',
    });
    expect(floats.data[0]!.embedding).toEqual(v); // the same vector, whichever encoding carried it
    expect(floats.data[1]!.embedding).not.toEqual(v);
    expect(floats.usage.prompt_tokens).toBeGreaterThan(0);
    // The upstream's reported usage (read from the answer's tail, not a full parse) is what gets counted.
    const lines = gw!.logs.filter((l) => l.msg === 'request' && l.route === 'embed');
    expect(lines.at(-1)).toMatchObject({ promptTokens: floats.usage.prompt_tokens, completionTokens: 0 });

    const seen = e1.requests.map((r) => r.body as Record<string, unknown>);
    expect(seen.map((b) => b.encoding_format)).toEqual(['base64', 'float']);
    expect(seen[0]!.model).toBe('emb');
    expect(e1.requests[0]!.headers.authorization).toBe('Bearer sk-e1');
  });

  it('fails over when the first embedding upstream answers 500', async () => {
    const { e1, e2, client } = await setup();
    e1.set({ status: 500 });
    const { data, response } = await client.embeddings
      .create({ model: 'embed', input: 'hello', encoding_format: 'float' })
      .withResponse();
    expect(data.data[0]!.embedding).toHaveLength(8);
    expect(response.headers.get('x-router-attempts')).toBe('2');
    expect(response.headers.get('x-router-provider')).toBe('e2');
    expect(response.headers.get('x-router-trail')).toContain('e1/emb');
    expect(e1.requests).toHaveLength(1);
    expect(e2.requests).toHaveLength(1);
    expect((e2.requests[0]!.body as Record<string, unknown>).model).toBe('emb-large');
    expect(e2.requests[0]!.headers.authorization).toBe('Bearer sk-e2');
  });

  it('a client that goes away mid-request still gets its route log line, and the upstream call is cancelled', async () => {
    const { e1 } = await setup();
    e1.set({ latencyMs: 5_000 });
    const ac = new AbortController();
    const pending = request(`${gw!.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'emb-gone' },
      body: JSON.stringify({ model: 'embed', input: 'hello' }),
      signal: ac.signal,
    }).catch(() => undefined);
    await e1.waitForRequests(1);
    ac.abort();
    await pending;
    await e1.waitForAbort();
    await vi.waitFor(() => {
      const line = gw!.logs.find((l) => l.msg === 'request' && l.reqId === 'emb-gone');
      expect(line).toMatchObject({ route: 'embed', upstream: 'e1/emb', error: 'client_closed', status: 499 });
    });
  });

  it('keeps embedding and chat routes apart: each endpoint finds only its own kind (404 otherwise)', async () => {
    const { client, e1, chat } = await setup();
    await expect(
      client.chat.completions.create({ model: 'embed', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
    await expect(client.embeddings.create({ model: 'talk', input: 'x' })).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
    expect(e1.requests).toHaveLength(0);
    expect(chat.requests).toHaveLength(0);
  });
});

describe('passthrough', () => {
  async function setup(server: Record<string, unknown>) {
    const pt = await sim('pt');
    gw = track(
      await startGateway({
        server,
        providers: [simProvider('pt', pt.url, ['m'], { api_key: 'sk-pt-secret' })],
        routes: { r: { targets: ['pt/m'] } },
      }),
    );
    return pt;
  }

  it('relays other /v1/* paths to server.passthrough with the provider key instead of the client key', async () => {
    const pt = await setup({ passthrough: 'pt' });
    const files = await request(`${gw!.url}/v1/files?purpose=batch`, {
      headers: { authorization: 'Bearer client-key', 'x-api-key': 'client-key' },
    });
    expect(files.statusCode).toBe(200);
    expect(await files.body.json()).toEqual({ object: 'list', data: [], path: '/v1/files' });
    const get = pt.requests[0]!;
    expect(get.method).toBe('GET');
    expect(get.path).toBe('/v1/files');
    expect(get.headers.authorization).toBe('Bearer sk-pt-secret');
    expect(get.headers['x-api-key']).toBeUndefined();

    const speech = { model: 'tts-1', input: 'Hello there', voice: 'alloy' };
    const audio = await request(`${gw!.url}/v1/audio/speech`, {
      method: 'POST',
      headers: { authorization: 'Bearer client-key', 'content-type': 'application/json' },
      body: JSON.stringify(speech),
    });
    expect(audio.statusCode).toBe(200);
    expect(((await audio.body.json()) as { path: string }).path).toBe('/v1/audio/speech');
    const post = pt.requests[1]!;
    expect(post.method).toBe('POST');
    expect(post.path).toBe('/v1/audio/speech');
    expect(post.body).toEqual(speech);
    expect(post.headers.authorization).toBe('Bearer sk-pt-secret');
    expect(JSON.stringify(pt.requests.map((r) => r.headers))).not.toContain('client-key');
  });

  it('still needs a client key when server.api_keys is set', async () => {
    const pt = await setup({ passthrough: 'pt', api_keys: ['client-key'] });
    const anon = await request(`${gw!.url}/v1/files`);
    expect(anon.statusCode).toBe(401);
    const body = (await anon.body.json()) as { error: Record<string, unknown> };
    expect(body.error.type).toBe('authentication_error');
    const wrong = await request(`${gw!.url}/v1/audio/speech`, {
      method: 'POST',
      headers: { authorization: 'Bearer not-a-key', 'content-type': 'application/json' },
      body: '{"input":"x"}',
    });
    expect(wrong.statusCode).toBe(401);
    await wrong.body.dump();
    expect(pt.requests).toHaveLength(0);

    const keyed = await request(`${gw!.url}/v1/files`, { headers: { authorization: 'Bearer client-key' } });
    expect(keyed.statusCode).toBe(200);
    await keyed.body.dump();
    expect(pt.requests[0]!.headers.authorization).toBe('Bearer sk-pt-secret');
  });

  it('answers 404 OpenAI-shaped without server.passthrough, and calls nothing', async () => {
    const pt = await setup({});
    for (const [method, path] of [
      ['GET', '/v1/files'],
      ['POST', '/v1/audio/speech'],
      ['POST', '/v1/responses'],
    ] as const) {
      const res = await request(`${gw!.url}${path}`, {
        method,
        ...(method === 'POST'
          ? { headers: { 'content-type': 'application/json' }, body: '{"input":"x"}' }
          : {}),
      });
      expect(res.statusCode, path).toBe(404);
      const body = (await res.body.json()) as { error: Record<string, unknown> };
      // The message says why: a user of the AI SDK's openai(model) (the Responses API) learns what to change.
      expect(body.error.message).toContain(path);
      expect(body.error.message).toContain('server.passthrough');
      expect(body.error.message).toContain('/v1/chat/completions');
      expect(body.error).toHaveProperty('type');
      expect(body.error).toHaveProperty('code');
    }
    expect(pt.requests).toHaveLength(0);
  });

  it('a passthrough provider disabled by an empty api_key: the 404 says so, not that none is named', async () => {
    const pt = await sim('pt');
    gw = track(
      await startGateway(
        {
          server: { passthrough: 'pt' },
          providers: [
            simProvider('pt', pt.url, ['m'], { api_key: '${PT_KEY}' }),
            simProvider('other', pt.url, ['m'], { api_key: 'sk-other' }),
          ],
          routes: { r: { targets: ['other/m'] } },
        },
        { env: {} },
      ),
    );
    const res = await request(`${gw.url}/v1/files`);
    expect(res.statusCode).toBe(404);
    const body = (await res.body.json()) as { error: { message: string } };
    expect(body.error.message).toContain('names provider "pt", which is disabled');
    expect(pt.requests).toHaveLength(0);
  });
});
