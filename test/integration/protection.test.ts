import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';

const track = closeAfterEach();
let sim: Simulator | undefined;
let gw: TestGateway | undefined;

async function setup(server: Record<string, unknown>) {
  sim = track(await startSimulator({ name: 'a' }));
  gw = track(
    await startGateway({
      server,
      providers: [simProvider('a', sim.url, ['m'])],
      routes: { r: { targets: ['a/m'] } },
    }),
  );
  return gw;
}

async function chat(key?: string) {
  const res = await request(`${gw!.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ model: 'r', messages: [{ role: 'user', content: 'x' }] }),
  });
  return {
    status: res.statusCode,
    headers: res.headers,
    json: (await res.body.json()) as { error?: { code: string; type: string } },
  };
}

describe('load shedding', () => {
  it('answers /v1 with an OpenAI-shaped 503 and Retry-After under pressure, while health and metrics still answer', async () => {
    // A heap limit of 1 byte: the first sample puts the gateway under pressure.
    await setup({ load_shedding: { max_heap_used_bytes: 1, sample_interval_ms: 100, retry_after_s: 7 } });
    let r = await chat();
    for (let i = 0; i < 100 && r.status !== 503; i++) {
      await new Promise((res) => setTimeout(res, 10)); // the sampler's interval is the clock here
      r = await chat();
    }
    expect(r.status).toBe(503);
    expect(r.headers['retry-after']).toBe('7');
    expect(r.json.error?.code).toBe('overloaded');
    for (const path of ['/healthz', '/metrics']) {
      const res = await request(`${gw!.url}${path}`);
      expect(res.statusCode, path).toBe(200);
      await res.body.dump();
    }
  });
});

describe('per-key rate limit', () => {
  it('gives each client key its own budget and answers 429 OpenAI-shaped with Retry-After past it', async () => {
    await setup({ api_keys: ['key-one', 'key-two'], rate_limit: { requests_per_minute: 3 } });
    for (let i = 0; i < 3; i++) expect((await chat('key-one')).status).toBe(200);
    const over = await chat('key-one');
    expect(over.status).toBe(429);
    expect(over.json.error).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
    expect(Number(over.headers['retry-after'])).toBeGreaterThan(0);
    expect((await chat('key-two')).status).toBe(200);
    expect(sim!.requests).toHaveLength(4);
    const health = await request(`${gw!.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();
  });

  // Regression: with no server.api_keys any Bearer token was a budget of its own, so a client escaped the
  // limit by sending a new made-up token with each request. (With keys, a wrong one is a 401 before the
  // limiter counts it.)
  it('without server.api_keys the budget is the address, whatever token each request carries', async () => {
    await setup({ rate_limit: { requests_per_minute: 3 } });
    for (let i = 0; i < 3; i++) expect((await chat(`made-up-${i}`)).status).toBe(200);
    expect((await chat('made-up-3')).status).toBe(429);
    expect((await chat()).status).toBe(429);
    expect(sim!.requests).toHaveLength(3);
  });

  // Regression: the limiter's x-ratelimit-* headers are put on fastify's reply, which a stream (written on the
  // raw response once it commits) never sent: a JSON answer had them, a streamed one did not.
  it('a streamed answer carries the x-ratelimit-* headers a JSON one does', async () => {
    await setup({ rate_limit: { requests_per_minute: 50 } });
    const messages = [{ role: 'user', content: 'x' }];
    const json = await postChat(gw!, { model: 'r', messages });
    const streamed = await postChat(gw!, { model: 'r', stream: true, messages });
    expect([json.status, streamed.status]).toEqual([200, 200]);
    expect(streamed.text).toContain('[DONE]');
    const rate = (h: Record<string, string>) =>
      Object.entries(h).filter(([k]) => k.startsWith('x-ratelimit-'));
    expect(
      rate(json.headers)
        .map(([k]) => k)
        .sort(),
    ).toEqual(['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']);
    expect(Object.fromEntries(rate(streamed.headers))).toMatchObject({
      'x-ratelimit-limit': '50',
      'x-ratelimit-remaining': '48',
    });
    expect(streamed.headers['content-type']).toContain('text/event-stream');
  });
});
