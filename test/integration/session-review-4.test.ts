/**
 * Rules around the latest routing, passthrough and config changes, as a production user relies on them:
 * - `/router/explain` on an embeddings body names the upstream the next /v1/embeddings request gets, and
 *   explaining does not move the route's rotation (as it does not for chat);
 * - a free upstream beside priced ones stays first under `cost`, and the priced ones keep their cost order
 *   in the failover chain: one 20 % dearer does not tie with the cheapest just because a free one is there;
 * - an explicit empty default (`${PREFIX:-}`) beside a set variable in a client or admin key leaves the
 *   key in force: auth is not switched off because an optional part is empty;
 * - a replica on a Redis database other than 0 turns sharing off only when Redis refuses that database, not
 *   when the check itself stalls for a moment (a busy Redis as the replica connects): it shares once Redis
 *   answers again.
 */
import type { ServerResponse } from 'node:http';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, simProvider, startGateway } from '../helpers/gateway.js';
import { chatCompletion, fail500, sendJson, startMock } from '../helpers/mock-upstream.js';
import { describeWithRedis, redisConfig, redisState, startReplica } from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

type Json = Record<string, unknown>;

function embeddingsAnswer(body: Json): Json {
  return {
    object: 'list',
    data: [{ object: 'embedding', index: 0, embedding: [0.125, -0.25, 0.5] }],
    model: String(body.model),
    usage: { prompt_tokens: 3, total_tokens: 3 },
  };
}

/** An OpenAI-compatible mock: embeddings and chat answered. */
async function okUpstream() {
  const m = await startMock((r, res: ServerResponse) =>
    r.path.endsWith('/embeddings')
      ? sendJson(res, 200, embeddingsAnswer(r.body))
      : sendJson(res, 200, chatCompletion(r.body)),
  );
  return track(m);
}

describe('/router/explain on an embeddings body', () => {
  // README: "/router/explain: the decision a request would get (a chat body, or an embeddings one)"; the chat
  // explain peeks (PlanOptions.peek: "decide without advancing the route's rotation, so the next real request
  // gets the same answer").
  it('round-robin embeddings route: explain names the upstream the next request gets, every time', async () => {
    const a = await okUpstream();
    const b = await okUpstream();
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, [{ name: 'emb', capabilities: ['embeddings'] }], { api_key: 'ka' }),
          simProvider('b', b.url, [{ name: 'emb', capabilities: ['embeddings'] }], { api_key: 'kb' }),
        ],
        routes: { vec: { strategy: 'round-robin', targets: ['a/emb', 'b/emb'] } },
      }),
    );
    const body = { model: 'vec', input: 'hello world' };
    const pairs: Array<{ explained: unknown; served: string | undefined }> = [];
    for (let i = 0; i < 4; i++) {
      const ex = await postTo(`${gw.url}/router/explain`, body);
      expect(ex.status, ex.text).toBe(200);
      const real = await postTo(`${gw.url}/v1/embeddings`, body);
      expect(real.status, real.text).toBe(200);
      pairs.push({
        explained: dig(ex.json, 'candidates', 0, 'provider'),
        served: real.headers['x-router-provider'],
      });
    }
    for (const p of pairs) expect(p.explained).toBe(p.served);
    // And the route still alternates (explain took no turn of its own).
    expect(new Set(pairs.map((p) => p.served))).toEqual(new Set(['a', 'b']));
  });
});

describe('cost: a free upstream beside priced ones', () => {
  // SPEC §2: cost "picks lowest expected cost"; ties only within tie_epsilon (0.02) of score. Two priced upstreams
  // 20 % apart do not tie on their own (1 vs 0.83); a free third one must not make them tie.
  it('the free one fails: every request fails over to the cheapest priced one, not the 20 % dearer one', async () => {
    const free = track(await startMock((_r, res) => fail500(res)));
    const cheap = await okUpstream();
    const dear = await okUpstream();
    const priced = (usd: number) => ({ input_per_mtok: usd, output_per_mtok: usd });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('free', free.url, [{ name: 'm', price: priced(0) }], { api_key: 'k0' }),
          simProvider('cheap', cheap.url, [{ name: 'm', price: priced(1) }], { api_key: 'k1' }),
          simProvider('dear', dear.url, [{ name: 'm', price: priced(1.2) }], { api_key: 'k2' }),
        ],
        routes: { r: { strategy: 'cost', targets: ['free/m', 'cheap/m', 'dear/m'] } },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    const body = { model: 'r', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] };
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await postTo(`${gw.url}/v1/chat/completions`, body);
      expect(res.status, res.text).toBe(200);
      served.push(res.headers['x-router-provider'] ?? '?');
    }
    expect(free.received.length).toBe(4);
    expect(served).toEqual(['cheap', 'cheap', 'cheap', 'cheap']);
  });

  it('explain ranks free, then cheap, then dear, and the free one far ahead', async () => {
    const up = await okUpstream();
    const priced = (usd: number) => ({ input_per_mtok: usd, output_per_mtok: usd });
    const gw = track(
      await startGateway({
        providers: [
          simProvider('free', up.url, [{ name: 'm', price: priced(0) }], { api_key: 'k0' }),
          simProvider('cheap', up.url, [{ name: 'm', price: priced(1) }], { api_key: 'k1' }),
          simProvider('dear', up.url, [{ name: 'm', price: priced(10) }], { api_key: 'k2' }),
        ],
        routes: { r: { strategy: 'cost', targets: ['dear/m', 'cheap/m', 'free/m'] } },
      }),
    );
    const ex = await postTo(`${gw.url}/router/explain`, {
      model: 'r',
      max_tokens: 100,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(ex.status, ex.text).toBe(200);
    const cands = dig(ex.json, 'candidates') as Array<{ provider: string; score: number }>;
    expect(cands.map((c) => c.provider)).toEqual(['free', 'cheap', 'dear']);
    expect(cands[0]!.score).toBe(1);
    expect(cands[1]!.score).toBeLessThanOrEqual(0.5);
    expect(cands[1]!.score).toBeGreaterThan(cands[2]!.score);
  });
});

describe('an explicit empty default beside a set variable in a key', () => {
  // SPEC §3: `${VAR:-default}` is substituted; the admin key protects /router/* when set. `${ADM_PREFIX:-}`
  // says "no prefix when unset": the key is still ADM_SECRET's value, not switched off.
  it('admin_key "${ADM_PREFIX:-}${ADM_SECRET}" with only ADM_SECRET set: /router/status needs that key', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway(
        {
          server: { admin_key: '${ADM_PREFIX:-}${ADM_SECRET}' },
          providers: [simProvider('a', up.url, ['m'], { api_key: 'ka' })],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        },
        { env: { ADM_SECRET: 'adm-secret-7f3a9c' } },
      ),
    );
    const anon = await request(`${gw.url}/router/status`);
    await anon.body.text();
    const keyed = await request(`${gw.url}/router/status`, {
      headers: { authorization: 'Bearer adm-secret-7f3a9c' },
    });
    await keyed.body.text();
    expect({ anon: anon.statusCode, keyed: keyed.statusCode }).toEqual({ anon: 401, keyed: 200 });
  });

  it('api_keys ["${KEY_PREFIX:-}${GW_KEY}"] with only GW_KEY set: a request without it is 401', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway(
        {
          server: { api_keys: ['${KEY_PREFIX:-}${GW_KEY}'] },
          providers: [simProvider('a', up.url, ['m'], { api_key: 'ka' })],
          routes: { r: { strategy: 'priority', targets: ['a/m'] } },
        },
        { env: { GW_KEY: 'gw-key-51c2e8' } },
      ),
    );
    const body = { model: 'r', messages: [{ role: 'user', content: 'hi' }] };
    const anon = await postTo(`${gw.url}/v1/chat/completions`, body);
    const keyed = await postTo(`${gw.url}/v1/chat/completions`, body, {
      headers: { authorization: 'Bearer gw-key-51c2e8' },
    });
    expect({ anon: anon.status, keyed: keyed.status, calls: up.received.length }).toEqual({
      anon: 401,
      keyed: 200,
      calls: 1,
    });
  });
});

/**
 * A TCP proxy in front of Redis that, once, holds a connection's traffic to Redis for `stallMs` from its second
 * SELECT on (ioredis selects as it connects; the gateway's own check is the second): a Redis busy for a moment.
 */
async function stallingProxy(redisPort: number, stallMs: number) {
  const sockets = new Set<Socket>();
  let stalled = false;
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: redisPort });
    sockets.add(client).add(upstream);
    let selects = 0;
    let holding: Buffer[] | undefined;
    client.on('data', (chunk: Buffer) => {
      if (holding) {
        holding.push(chunk);
        return;
      }
      selects += (chunk.toString('latin1').match(/\r\nselect\r\n/gi) ?? []).length;
      if (selects >= 2 && !stalled) {
        stalled = true;
        holding = [chunk];
        setTimeout(() => {
          const held = holding ?? [];
          holding = undefined;
          for (const c of held) if (!upstream.destroyed) upstream.write(c);
        }, stallMs).unref();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!client.destroyed) client.write(chunk);
    });
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stalled: () => stalled,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describeWithRedis('shared state on a database other than 0', (redis) => {
  // SPEC §7: "If Redis is unreachable, each replica falls back to its local state and keeps serving" — and
  // shares again once Redis is back. A database Redis refuses (ERR DB index is out of range) turns sharing off;
  // a SELECT that merely timed out (Redis busy for 1.5 s right as the replica connected) is no refusal.
  it('the database check stalls past the command timeout once: the replica shares once Redis answers', async () => {
    const proxy = track(await stallingProxy(redis.port, 1_500));
    const up = await okUpstream();
    const gw = await startReplica(
      track,
      redisConfig(
        [simProvider('a', up.url, ['m'], { api_key: 'ka' })],
        { r: { strategy: 'priority', targets: ['a/m'] } },
        { failure_threshold: 5 },
        redisState(`${proxy.url}/1`, `session-review-4-${process.pid}:`),
      ),
      { connected: false },
    );
    await until('the check stalled', () => proxy.stalled(), 3_000);
    // Past the stall and the check's command timeout (1 s): what the replica decided is settled by then.
    await new Promise((r) => setTimeout(r, 2_000));
    try {
      await until('connected again', () => gw.gateway.shared.redis!.connected, 3_000);
    } catch {
      /* asserted below, as /router/status says it */
    }
    const res = await request(`${gw.url}/router/status`);
    const last = dig(await res.body.json(), 'state', 'connected');
    const refusedLine = gw.logs.find((l) => String(l.msg).includes('refuses database'));
    expect({ connected: last, refusedLog: refusedLine?.msg }).toEqual({
      connected: true,
      refusedLog: undefined,
    });
  });
});
