/**
 * Embeddings as a routed request like any other: `/router/explain` explains an embeddings request as it would
 * be routed; the latency strategy learns embedding upstreams' times; a failing embedding upstream trips its
 * own breaker (and only its own: the same provider's chat model keeps serving); token-id inputs are one
 * input however long, and are counted exactly when the upstream reports no usage; completion tokens are
 * never counted for an embeddings answer.
 */
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chatCompletion, fail500, sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { scrape, select } from '../helpers/prom-text.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

/** OpenAI's embeddings answer for `body`: one float vector per input; usage unless told not to. */
function embeddingsAnswer(body: Json, usage = true): Json {
  const input = body.input;
  const n =
    typeof input === 'string' || (Array.isArray(input) && typeof input[0] === 'number')
      ? 1
      : Array.isArray(input)
        ? input.length
        : 0;
  return {
    object: 'list',
    data: Array.from({ length: n }, (_, index) => ({
      object: 'embedding',
      index,
      embedding: [0.125, -0.25, 0.5, index],
    })),
    model: String(body.model),
    ...(usage ? { usage: { prompt_tokens: 3 * n, total_tokens: 3 * n } } : {}),
  };
}

/** A mock OpenAI-compatible server: `/embeddings` per `emb`, `/chat/completions` per `chat`. */
async function upstream(
  emb: (r: Received, res: ServerResponse) => void = (r, res) => sendJson(res, 200, embeddingsAnswer(r.body)),
  chat: (r: Received, res: ServerResponse) => void = (r, res) => sendJson(res, 200, chatCompletion(r.body)),
) {
  const m = await startMock((r, res) => (r.path.endsWith('/embeddings') ? emb(r, res) : chat(r, res)));
  track(m);
  return {
    url: m.url,
    received: m.received,
    embCalls: () => m.received.filter((r) => r.path.endsWith('/embeddings')).length,
    chatCalls: () => m.received.filter((r) => r.path.endsWith('/chat/completions')).length,
  };
}

function provider(name: string, url: string, models: unknown[]) {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: `sk-${name}-0123456789`,
    timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 2000, total_ms: 4000 },
    models,
  };
}

const EMB = (price = 0.02) => ({
  name: 'emb',
  capabilities: ['embeddings'],
  price: { input_per_mtok: price, output_per_mtok: 0 },
});

function postEmb(gw: TestGateway, body: Json, headers: Record<string, string> = {}) {
  return postTo(`${gw.url}/v1/embeddings`, body, { headers });
}

describe('embeddings: explain, statistics, breakers, token-id inputs', () => {
  it('/router/explain explains an embeddings request as /v1/embeddings would route it, calling nobody', async () => {
    const a = await upstream();
    const b = await upstream();
    const gw = track(
      await startGateway({
        providers: [provider('a', a.url, [EMB(0.13)]), provider('b', b.url, [EMB(0.02)])],
        routes: { embed: { strategy: 'cost', targets: ['a/emb', 'b/emb'] } },
      }),
    );
    const body = { model: 'embed', input: ['one document', 'another document'] };
    const r = await postTo(`${gw.url}/router/explain`, body);
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ route: 'embed', strategy: 'cost' });
    const candidates = r.json.candidates as { upstream: string }[];
    expect(candidates.map((c) => c.upstream)).toEqual(['b/emb', 'a/emb']);
    expect(a.received.length + b.received.length).toBe(0);

    // And the request itself goes where the explanation said.
    const served = await postEmb(gw, body);
    expect(served.status).toBe(200);
    expect(served.headers['x-router-provider']).toBe('b');
  });

  it('the latency strategy learns embedding upstreams: once both are measured, the slow one is not picked', async () => {
    const slow = await upstream((r, res) => {
      setTimeout(() => sendJson(res, 200, embeddingsAnswer(r.body)), 250);
    });
    const fast = await upstream();
    const gw = track(
      await startGateway({
        routing: { min_samples: 2, exploration_share: 0 },
        providers: [provider('slow', slow.url, [EMB()]), provider('fast', fast.url, [EMB()])],
        routes: { embed: { strategy: 'latency', targets: ['slow/emb', 'fast/emb'] } },
      }),
    );
    for (const p of ['slow', 'fast', 'slow', 'fast']) {
      const r = await postEmb(gw, { model: 'embed', input: 'measure me' }, { 'x-router-provider': p });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe(p);
    }
    const picked: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await postEmb(gw, { model: 'embed', input: `document ${i}` });
      expect(r.status).toBe(200);
      picked.push(r.headers['x-router-provider'] ?? '');
    }
    expect(picked).toEqual(['fast', 'fast', 'fast', 'fast']);
    expect(slow.embCalls()).toBe(2);
  });

  it('embedding 500s trip that upstream’s breaker (seen in /router/status); the provider’s chat model keeps serving', async () => {
    const a = await upstream((_r, res) => fail500(res));
    const b = await upstream();
    const gw = track(
      await startGateway({
        circuit_breaker: { failure_threshold: 2, open_ms: 60_000 },
        providers: [
          provider('a', a.url, [EMB(), { name: 'gpt', capabilities: ['tools', 'stream'] }]),
          provider('b', b.url, [EMB()]),
        ],
        routes: {
          embed: { strategy: 'priority', targets: ['a/emb', 'b/emb'] },
          talk: { strategy: 'priority', targets: ['a/gpt'] },
        },
      }),
    );
    for (let i = 0; i < 2; i++) {
      const r = await postEmb(gw, { model: 'embed', input: 'x' });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
    }
    expect(a.embCalls()).toBe(2);

    // Open: skipped without a call.
    const skipped = await postEmb(gw, { model: 'embed', input: 'y' });
    expect(skipped.status).toBe(200);
    expect(skipped.headers['x-router-provider']).toBe('b');
    expect(a.embCalls()).toBe(2);

    const status = await fetch(`${gw.url}/router/status`).then((r) => r.json() as Promise<Json>);
    const ups = status.upstreams as { id: string; breaker: { state: string } }[];
    expect(ups.find((u) => u.id === 'a/emb')?.breaker.state).toBe('open');
    expect(ups.find((u) => u.id === 'a/gpt')?.breaker.state).toBe('closed');

    // The same provider's chat model is its own upstream, with its own breaker.
    const chat = await postTo(`${gw.url}/v1/chat/completions`, {
      model: 'talk',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(chat.status, chat.text).toBe(200);
    expect(a.chatCalls()).toBe(1);
  });

  it('a single token-id input longer than 2048 ids is one input; with no usage its ids are counted exactly', async () => {
    const a = await upstream((r, res) => sendJson(res, 200, embeddingsAnswer(r.body, false)));
    const gw = track(
      await startGateway({
        providers: [provider('a', a.url, [{ ...EMB(1), context_window: 8192 }])],
        routes: { embed: { strategy: 'priority', targets: ['a/emb'] } },
      }),
    );
    const ids = Array.from({ length: 3000 }, (_, i) => i % 100_000);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    const one = await client.embeddings.create({ model: 'embed', input: ids, encoding_format: 'float' });
    expect(one.data).toHaveLength(1);
    expect(dig(a.received[0]?.body, 'input')).toEqual(ids);

    const many = await client.embeddings.create({
      model: 'embed',
      input: [
        [1, 2, 3],
        [4, 5],
      ],
      encoding_format: 'float',
    });
    expect(many.data).toHaveLength(2);

    const samples = await scrape(gw.url);
    const prompt = select(samples, 'llm_router_tokens_total', { provider: 'a', kind: 'prompt' });
    expect(prompt.reduce((s, x) => s + x.value, 0)).toBe(3005);
    const completion = select(samples, 'llm_router_tokens_total', { provider: 'a', kind: 'completion' });
    expect(completion.reduce((s, x) => s + x.value, 0)).toBe(0);
    const cost = select(samples, 'llm_router_cost_usd_total', { provider: 'a' });
    expect(cost.reduce((s, x) => s + x.value, 0)).toBeCloseTo(3005 / 1e6, 12);
  });

  it('2049 string inputs are a 400 naming input, calling nobody; 2048 are served', async () => {
    const a = await upstream();
    const gw = track(
      await startGateway({
        providers: [provider('a', a.url, [EMB()])],
        routes: { embed: { strategy: 'priority', targets: ['a/emb'] } },
      }),
    );
    const over = await postEmb(gw, { model: 'embed', input: Array.from({ length: 2049 }, () => 'w') });
    expect(over.status).toBe(400);
    expect(dig(over.json, 'error', 'param')).toBe('input');
    expect(a.received).toHaveLength(0);
    const ok = await postEmb(gw, { model: 'embed', input: Array.from({ length: 2048 }, () => 'w') });
    expect(ok.status).toBe(200);
    expect(dig(ok.json, 'data', 2047, 'index')).toBe(2047);
  });
});
