/**
 * The gateway's own per-client rate limit (README `server.rate_limit.requests_per_minute`) and how it meets
 * the rate limits of upstreams (SPEC §4: 429 with Retry-After when every candidate is rate limited), driven
 * over real HTTP against a gateway on loopback.
 *
 * README: "per client key when server.api_keys is set, else per address (a made-up Bearer token buys no
 * budget of its own); answers, streamed ones too, carry x-ratelimit-limit, -remaining and -reset; past it
 * 429 + Retry-After".
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, postTo, type Posted, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const KEY_A = 'client-key-alpha-1111';
const KEY_B = 'client-key-bravo-2222';
const MSGS = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 8000 };

type Json = Record<string, unknown>;

function provider(name: string, url: string, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    api_key: `sk-${name}-upstream-key-0001`,
    timeouts: RELAXED,
    models: [{ name: 'm' }],
    ...extra,
  };
}

async function chatUpstream() {
  return track(await startMock((r, res) => answerChat(res, r.body, 'hello')));
}

async function gateway(config: Json): Promise<TestGateway> {
  return track(await startGateway(config));
}

function chat(
  gw: TestGateway,
  key: string | undefined,
  body: Json = {},
  headers: Json = {},
): Promise<Posted> {
  return postTo(
    `${gw.url}/v1/chat/completions`,
    { model: 'r', messages: MSGS, ...body },
    {
      headers: {
        ...(key === undefined ? {} : { authorization: `Bearer ${key}` }),
        ...(headers as Record<string, string>),
      },
    },
  );
}

async function get(gw: TestGateway, path: string, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}${path}`, { headers });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: h, text };
}

/** The three budget headers of an answer, as sent. */
function budget(h: Record<string, string>): { limit?: string; remaining?: string; reset?: string } {
  return {
    limit: h['x-ratelimit-limit'],
    remaining: h['x-ratelimit-remaining'],
    reset: h['x-ratelimit-reset'],
  };
}

// =========================================================================================================

describe('one budget per client key, whatever /v1 surface spends it', () => {
  it('chat (JSON and streamed), embeddings, /v1/models and /v1/models/{id} draw on one budget, -remaining one less each time', async () => {
    const up = track(
      await startMock((r, res) => {
        if (r.path.endsWith('/embeddings')) {
          sendJson(res, 200, {
            object: 'list',
            data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
            model: 'e',
            usage: { prompt_tokens: 2, total_tokens: 2 },
          });
          return;
        }
        answerChat(res, r.body, 'hello');
      }),
    );
    const gw = await gateway({
      server: { api_keys: [KEY_A, KEY_B], rate_limit: { requests_per_minute: 5 } },
      providers: [
        provider('up', up.url, { models: [{ name: 'm' }, { name: 'e', capabilities: ['embeddings'] }] }),
      ],
      routes: { r: { targets: ['up/m'] }, emb: { targets: ['up/e'] } },
    });
    const auth = { authorization: `Bearer ${KEY_A}` };
    const answers = [
      await chat(gw, KEY_A),
      await chat(gw, KEY_A, { stream: true }),
      await postTo(`${gw.url}/v1/embeddings`, { model: 'emb', input: 'x' }, { headers: auth }),
      await get(gw, '/v1/models', auth),
      await get(gw, '/v1/models/r', auth),
    ];
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200]);
    expect(answers[1]!.text).toContain('[DONE]');
    expect(answers.map((a) => [a.headers['x-ratelimit-limit'], a.headers['x-ratelimit-remaining']])).toEqual([
      ['5', '4'],
      ['5', '3'],
      ['5', '2'],
      ['5', '1'],
      ['5', '0'],
    ]);
    // -reset is the seconds left in the window: a whole number within the minute, never growing.
    const resets = answers.map((a) => Number(a.headers['x-ratelimit-reset']));
    for (const r of resets) {
      expect(Number.isInteger(r)).toBe(true);
      expect(r).toBeGreaterThanOrEqual(1);
      expect(r).toBeLessThanOrEqual(60);
    }
    for (let i = 1; i < resets.length; i++) expect(resets[i]).toBeLessThanOrEqual(resets[i - 1]!);

    // Past it, every surface gets the 429, whose budget headers agree with its Retry-After.
    const over = [
      await chat(gw, KEY_A),
      await postTo(`${gw.url}/v1/embeddings`, { model: 'emb', input: 'x' }, { headers: auth }),
      await get(gw, '/v1/models', auth),
    ];
    for (const r of over) {
      expect(r.status).toBe(429);
      const b = budget(r.headers);
      expect(b.limit).toBe('5');
      expect(b.remaining).toBe('0');
      expect(b.reset).toBe(r.headers['retry-after']);
      const body = JSON.parse(r.text) as { error: Json };
      expect(body.error).toMatchObject({
        type: 'rate_limit_error',
        code: 'rate_limit_exceeded',
        param: null,
      });
    }
    // The other key's budget is whole.
    const other = await chat(gw, KEY_B);
    expect(budget(other.headers)).toMatchObject({ limit: '5', remaining: '4' });
    expect(up.received).toHaveLength(4); // 2 chats, 1 embedding, 1 chat for key B; the models list is ours
  });

  it('the Bearer scheme in any case and spaces around the key are one key: one budget', async () => {
    const up = await chatUpstream();
    const gw = await gateway({
      server: { api_keys: [KEY_A, KEY_B], rate_limit: { requests_per_minute: 3 } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    const forms = [`Bearer ${KEY_A}`, `bearer ${KEY_A}`, `BEARER   ${KEY_A}  `];
    const seen: (string | undefined)[] = [];
    for (const authorization of forms) {
      const r = await postTo(
        `${gw.url}/v1/chat/completions`,
        { model: 'r', messages: MSGS },
        { headers: { authorization } },
      );
      expect(r.status).toBe(200);
      seen.push(r.headers['x-ratelimit-remaining']);
    }
    expect(seen).toEqual(['2', '1', '0']);
    expect((await chat(gw, KEY_A)).status).toBe(429);
    expect((await chat(gw, KEY_B)).headers['x-ratelimit-remaining']).toBe('2');
  });

  it('a refused key (401), an unknown /v1 path (404) and the health, metrics and admin paths spend nothing', async () => {
    const up = await chatUpstream();
    const gw = await gateway({
      server: { api_keys: [KEY_A], rate_limit: { requests_per_minute: 2 } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    for (let i = 0; i < 5; i++) {
      const wrong = await chat(gw, 'not-a-key-9999');
      expect(wrong.status).toBe(401);
      expect(budget(wrong.headers)).toEqual({ limit: undefined, remaining: undefined, reset: undefined });
      expect((await chat(gw, undefined)).status).toBe(401);
      expect((await get(gw, '/v1/nothing-here', { authorization: `Bearer ${KEY_A}` })).status).toBe(404);
      for (const path of ['/healthz', '/readyz', '/metrics', '/router/status'])
        expect((await get(gw, path)).status, path).toBe(200);
      const explain = await postTo(`${gw.url}/router/explain`, { model: 'r', messages: MSGS });
      expect(explain.status).toBe(200);
    }
    const first = await chat(gw, KEY_A);
    expect(first.status).toBe(200);
    expect(budget(first.headers)).toMatchObject({ limit: '2', remaining: '1' });
  });
});

describe('every answer of a limited /v1 request carries the budget, failures included', () => {
  it('a 502, a 504, a 503 (breaker open), an upstream 400 relayed and a stream failed before its first content: each spends one and says so', async () => {
    const bad = track(
      await startMock((_r, res) => sendJson(res, 500, { error: { message: 'boom', type: 'server_error' } })),
    );
    const hang = track(
      await startMock(async (_r, res) => {
        await new Promise((done) => setTimeout(done, 3000));
        res.destroy();
      }),
    );
    const refuse = track(
      await startMock((_r, res) =>
        sendJson(res, 400, {
          error: {
            message: 'bad temperature',
            type: 'invalid_request_error',
            param: 'temperature',
            code: null,
          },
        }),
      ),
    );
    const gw = await gateway({
      server: { api_keys: [KEY_A], rate_limit: { requests_per_minute: 10 } },
      providers: [
        provider('bad', bad.url),
        provider('hang', hang.url, {
          timeouts: { connect_ms: 500, first_byte_ms: 300, idle_ms: 300, total_ms: 2000 },
        }),
        provider('refuse', refuse.url),
      ],
      routes: {
        bad: { targets: ['bad/m'] },
        hang: { targets: ['hang/m'] },
        refuse: { targets: ['refuse/m'] },
      },
      circuit_breaker: {
        failure_threshold: 2,
        open_ms: 30_000,
        max_open_ms: 60_000,
        half_open_probes: 1,
        success_threshold: 1,
      },
    });
    const got: [number, string | undefined, string | undefined][] = [];
    const note = (r: Posted) =>
      got.push([r.status, r.headers['x-ratelimit-limit'], r.headers['x-ratelimit-remaining']]);
    note(await chat(gw, KEY_A, { model: 'bad' })); // 502
    note(await chat(gw, KEY_A, { model: 'bad', stream: true })); // 502: a stream refused before any content
    note(await chat(gw, KEY_A, { model: 'bad' })); // 503: its breaker is open now
    note(await chat(gw, KEY_A, { model: 'hang' })); // 504
    note(await chat(gw, KEY_A, { model: 'refuse' })); // 400, the upstream's
    note(await chat(gw, KEY_A, { model: 'nope' })); // 404 model_not_found
    expect(got).toEqual([
      [502, '10', '9'],
      [502, '10', '8'],
      [503, '10', '7'],
      [504, '10', '6'],
      [400, '10', '5'],
      [404, '10', '4'],
    ]);
  });

  it('every candidate rate limited upstream: the 429 names the gateway budget in x-ratelimit-*, the upstream cooldown in Retry-After', async () => {
    const limited = track(
      await startMock((_r, res) =>
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'requests', param: null, code: 'rate_limit_exceeded' } },
          {
            'retry-after': '7',
            'x-ratelimit-limit': '100000',
            'x-ratelimit-remaining': '0',
            'x-ratelimit-reset': '3600',
          },
        ),
      ),
    );
    const gw = await gateway({
      server: { api_keys: [KEY_A], rate_limit: { requests_per_minute: 10 } },
      providers: [provider('up', limited.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    const r = await chat(gw, KEY_A);
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('7');
    expect(budget(r.headers)).toMatchObject({ limit: '10', remaining: '9' });
    expect(Number(r.headers['x-ratelimit-reset'])).toBeLessThanOrEqual(60);
    expect((JSON.parse(r.text) as { error: Json }).error.type).toBe('rate_limit_error');
  });

  it('a passthrough error answer (an upstream 429) and a passthrough that cannot be reached carry the gateway budget, not the upstream one', async () => {
    const up = track(
      await startMock((_r, res) =>
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'requests', param: null, code: 'rate_limit_exceeded' } },
          {
            'retry-after': '9',
            'x-ratelimit-limit': '100000',
            'x-ratelimit-remaining': '99999',
            'x-ratelimit-reset': '3600',
          },
        ),
      ),
    );
    const gw = await gateway({
      server: { api_keys: [KEY_A], passthrough: 'up', rate_limit: { requests_per_minute: 4 } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    const r = await get(gw, '/v1/files', { authorization: `Bearer ${KEY_A}` });
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('9');
    expect(budget(r.headers)).toMatchObject({ limit: '4', remaining: '3' });
    await up.close();
    const gone = await get(gw, '/v1/files', { authorization: `Bearer ${KEY_A}` });
    expect(gone.status).toBe(502);
    expect(budget(gone.headers)).toMatchObject({ limit: '4', remaining: '2' });
  });
});

describe('the window', () => {
  /** Shifts the wall clock the limiter reads (Date.now) by `ms`, for the body of `fn`. */
  async function withClockAhead<T>(ms: number, fn: () => Promise<T>): Promise<T> {
    const real = Date.now;
    Date.now = () => real() + ms;
    try {
      return await fn();
    } finally {
      Date.now = real;
    }
  }

  it('429s past the budget do not extend the window: once Retry-After has passed the whole budget is back', async () => {
    const up = await chatUpstream();
    const gw = await gateway({
      server: { api_keys: [KEY_A], rate_limit: { requests_per_minute: 2 } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    expect((await chat(gw, KEY_A)).status).toBe(200);
    expect((await chat(gw, KEY_A)).status).toBe(200);
    let last: Posted | undefined;
    for (let i = 0; i < 4; i++) {
      last = await chat(gw, KEY_A);
      expect(last.status).toBe(429);
    }
    const wait = Number(last!.headers['retry-after']);
    expect(wait).toBeGreaterThanOrEqual(55);
    expect(wait).toBeLessThanOrEqual(60);
    // Two seconds short of it: still refused, and told the rest of the wait.
    const early = await withClockAhead((wait - 2) * 1000, () => chat(gw, KEY_A));
    expect(early.status).toBe(429);
    expect(Number(early.headers['retry-after'])).toBeLessThanOrEqual(2);
    // At it: a fresh window, the whole budget.
    const back = await withClockAhead(wait * 1000, async () => [
      await chat(gw, KEY_A),
      await chat(gw, KEY_A),
      await chat(gw, KEY_A),
    ]);
    expect(back.map((r) => [r.status, r.headers['x-ratelimit-remaining']])).toEqual([
      [200, '1'],
      [200, '0'],
      [429, '0'],
    ]);
    expect(up.received).toHaveLength(4);
  });

  it('a reload that changes requests_per_minute says it needs a restart; the running limit and its count are kept', async () => {
    const up = await chatUpstream();
    const config = (rpm: number): Json => ({
      server: { api_keys: [KEY_A], rate_limit: { requests_per_minute: rpm } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    const gw = await gateway(config(3));
    expect(budget((await chat(gw, KEY_A)).headers)).toMatchObject({ limit: '3', remaining: '2' });
    gw.gateway.reload(parseConfigText(JSON.stringify(config(100)), {}));
    const warned = gw.logs.filter((l) => String(l.msg).includes('server.rate_limit'));
    expect(warned).toHaveLength(1);
    expect(String(warned[0]!.msg)).toContain('restart');
    expect(budget((await chat(gw, KEY_A)).headers)).toMatchObject({ limit: '3', remaining: '1' });
    expect(budget((await chat(gw, KEY_A)).headers)).toMatchObject({ limit: '3', remaining: '0' });
    expect((await chat(gw, KEY_A)).status).toBe(429);
  });
});

describe('a Realtime WebSocket handshake is a /v1 request like any other', () => {
  async function wsUpstream(): Promise<{ url: string }> {
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => ws.send('hello'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track({
      close: () =>
        new Promise<void>((resolve) => {
          for (const ws of wss.clients) ws.terminate();
          wss.close();
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    });
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  }

  /** A handshake's answer: the 101's headers once open, or the refusal's status and headers. */
  function handshake(
    url: string,
    opts: { headers?: Record<string, string>; protocols?: string[] },
  ): Promise<{ status: number; headers: IncomingMessage['headers'] }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, opts.protocols ?? [], { headers: opts.headers });
      track({ close: () => ws.terminate() });
      let upgrade: IncomingMessage | undefined;
      ws.on('upgrade', (res) => (upgrade = res));
      ws.on('open', () => {
        resolve({ status: 101, headers: upgrade!.headers });
        ws.close();
      });
      ws.on('error', reject);
      ws.on('unexpected-response', (req, res) => {
        res.resume();
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers });
      });
    });
  }

  async function realtimeGateway(rpm: number) {
    const up = await wsUpstream();
    const gw = await gateway({
      server: { api_keys: [KEY_A], passthrough: 'up', rate_limit: { requests_per_minute: rpm } },
      providers: [provider('up', up.url)],
      routes: { r: { targets: ['up/m'] } },
    });
    return { gw, ws: `${gw.url.replace('http:', 'ws:')}/v1/realtime?model=gpt-realtime` };
  }

  it('a handshake spends the budget its key spends over HTTP (the browser key subprotocol too), and is refused 429 past it', async () => {
    const { gw, ws } = await realtimeGateway(3);
    expect(
      (await get(gw, '/v1/models', { authorization: `Bearer ${KEY_A}` })).headers['x-ratelimit-remaining'],
    ).toBe('2');
    expect((await handshake(ws, { headers: { authorization: `Bearer ${KEY_A}` } })).status).toBe(101);
    expect(
      (await handshake(ws, { protocols: ['realtime', `openai-insecure-api-key.${KEY_A}`] })).status,
    ).toBe(101);
    const refused = await handshake(ws, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(refused.status).toBe(429);
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
  });

  it('the 101 that opens a session carries x-ratelimit-limit, -remaining and -reset as any answer does', async () => {
    const { ws } = await realtimeGateway(3);
    const opened = await handshake(ws, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(opened.status).toBe(101);
    expect({
      limit: opened.headers['x-ratelimit-limit'],
      remaining: opened.headers['x-ratelimit-remaining'],
    }).toEqual({ limit: '3', remaining: '2' });
    expect(opened.headers['x-ratelimit-reset']).toMatch(/^\d+$/);
  });
});

describe('upstream rate limits: the Retry-After of a 429 when every candidate is rate limited', () => {
  // SPEC §2: a 429 with Retry-After opens the breaker for exactly that long; SPEC §4: 429 with Retry-After when
  // every candidate is rate limited. The client should come back when the first candidate can take it again.
  it('one candidate still cooling down from an earlier 429, the other answering 429 now: Retry-After is the sooner of the two', async () => {
    let aCalls = 0;
    const a = track(
      await startMock((_r, res) => {
        aCalls++;
        sendJson(
          res,
          429,
          { error: { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' } },
          { 'retry-after': '20' },
        );
      }),
    );
    let bCalls = 0;
    const b = track(
      await startMock((r, res) => {
        bCalls++;
        if (bCalls === 1) answerChat(res, r.body, 'from b');
        else
          sendJson(
            res,
            429,
            { error: { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' } },
            { 'retry-after': '60' },
          );
      }),
    );
    const gw = await gateway({
      providers: [provider('a', a.url), provider('b', b.url)],
      routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    });
    // a answers 429 for 20 s and cools down; b serves.
    const first = await chat(gw, undefined);
    expect(first.status).toBe(200);
    expect(first.headers['x-router-provider']).toBe('b');
    // a is still cooling down (about 20 s left), b now answers 429 for 60 s: every candidate is rate limited,
    // and the route can serve again once a's 20 s are over.
    const second = await chat(gw, undefined);
    expect(second.status).toBe(429);
    expect(aCalls).toBe(1);
    expect(bCalls).toBe(2);
    const wait = Number(second.headers['retry-after']);
    expect(wait).toBeGreaterThanOrEqual(18);
    expect(wait).toBeLessThanOrEqual(20);
    // What the breakers say next agrees: the sooner of the two cooldowns.
    const third = await chat(gw, undefined);
    expect(third.status).toBe(429);
    expect(Number(third.headers['retry-after'])).toBeLessThanOrEqual(20);
  });
});
