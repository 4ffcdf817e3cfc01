/**
 * How an upstream's outcome is classified and acted on (SPEC §2 "Failover", §4 errors), for what SPEC does not
 * name one by one:
 * - a status that says nothing about the client's request (a redirect, 405, 407, 409 lock timeout, 5xx,
 *   Anthropic's 529, a 101 to a POST, an HTML 404 page from a proxy) fails over; a 1xx before the answer is
 *   not the answer;
 * - an account out of credit (OpenAI's 429 `insufficient_quota`, Anthropic's `billing_error`) fails over as a
 *   fault, and is not a rate limit the client is told to retry in a second;
 * - a 200 that is no answer (empty, HTML, JSON that is no completion, a completion with no choice) fails over
 *   as it does in a stream;
 * - the client's 429 carries the sooner cooldown of the rate-limited upstreams, read from every Retry-After
 *   form, and never longer than an upstream that named none (and is tried again at once) needs;
 * - the trail, x-router-attempts and the 502 message name each attempt's upstream and reason; a provider's
 *   401/403 never reaches the client as its own auth error, is logged loudly each time and counted;
 * - a 504 says "do not retry" only when the route's budget is spent; a relayed 404 says `model_not_found`.
 * Every upstream is a hand-written mock on loopback.
 */
import type { ServerResponse } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startMock, startRawUpstream } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 6000 };
const UP_KEY = 'sk-upstream-SECRET-5e1f0a';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: { error?: { message?: string; type?: string; code?: string | null } } & Record<string, unknown>;
}

async function chat(gw: TestGateway, body: Record<string, unknown> = {}): Promise<Reply> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'r', messages: MSG, ...body }),
  });
  const text = await res.body.text();
  let json: Reply['json'] = {};
  try {
    json = JSON.parse(text) as Reply['json'];
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

type Target = string | { url: string; kind: 'anthropic' };

/** A gateway over upstreams `name -> url` (kind openai unless said), one priority route `r` in that order. */
async function gatewayOver(
  upstreams: Record<string, Target>,
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: Object.entries(upstreams).map(([name, t]) =>
        typeof t === 'string'
          ? simProvider(name, t, ['m'], { timeouts: RELAXED, api_key: UP_KEY })
          : {
              name,
              kind: 'anthropic',
              base_url: t.url,
              api_key: UP_KEY,
              models: [{ name: 'm' }],
              timeouts: RELAXED,
            },
      ),
      routes: { r: { strategy: 'priority', targets: Object.keys(upstreams).map((n) => `${n}/m`) } },
      ...extra,
    }),
  );
}

/** A mock answering every request with `status`, `body` as it is, JSON content type unless `headers` say. */
function answering(status: number, body: string, headers: Record<string, string> = {}) {
  return startMock((_req, res: ServerResponse) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(body);
  });
}

/** An upstream that answers well: "from b". */
async function healthy(): Promise<string> {
  return track(await startMock((req, res) => answerChat(res, req.body, 'from b'))).url;
}

function content(r: Reply): unknown {
  return (r.json.choices as { message?: { content?: unknown } }[] | undefined)?.[0]?.message?.content;
}

const OPENAI_ERROR = (message: string, type = 'invalid_request_error', code: string | null = null) =>
  JSON.stringify({ error: { message, type, param: null, code } });

describe('statuses SPEC does not name: what says nothing about the request fails over (SPEC §2)', () => {
  // SPEC §8: redirects are never followed; SPEC §2: a 3xx is no answer and no client error.
  it('a 307 redirect fails over as http_307, and its Location is never requested', async () => {
    const elsewhere = track(await startMock((req, res) => answerChat(res, req.body, 'from elsewhere')));
    const a = track(await answering(307, '', { location: `${elsewhere.url}/v1/chat/completions` }));
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    for (const stream of [false, true]) {
      const r = await chat(gw, { stream });
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-trail']).toBe('a/m=http_307');
      expect(r.headers['x-router-attempts']).toBe('2');
    }
    expect(elsewhere.received).toHaveLength(0);
  });

  // A 103 Early Hints (or an unasked 100) is informational: the answer after it is the answer.
  it('a 103 Early Hints before the answer is not the answer: the upstream serves, JSON and stream', async () => {
    const a = track(
      await startMock((req, res) => {
        res.writeEarlyHints({ link: '</x>; rel=preload' });
        answerChat(res, req.body, 'from a');
      }),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(content(r)).toBe('from a');
    expect(r.headers['x-router-trail']).toBe('');
    const s = await chat(gw, { stream: true });
    expect(s.status).toBe(200);
    expect(s.headers['x-router-provider']).toBe('a');
    expect(s.text).toContain('from a');
  });

  // A 101 Switching Protocols to a plain POST is a broken upstream, not an answer.
  it('a 101 to a POST fails over (both forms)', async () => {
    const srv = createTcpServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('data', () =>
        sock.write('HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n'),
      );
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    track({ close: () => new Promise<void>((r) => srv.close(() => r())) });
    const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
    const gw = await gatewayOver({ a: url, b: await healthy() });
    for (const stream of [false, true]) {
      const r = await chat(gw, { stream });
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(String(r.headers['x-router-trail'])).toMatch(/^a\/m=\w+$/);
    }
  });

  // SPEC §2: 5xx fails over; Anthropic's 529 overloaded_error is one. Alone, it is a 502 naming it.
  it("Anthropic's 529 overloaded_error fails over as http_529; alone it is a 502 naming it", async () => {
    const overloaded = JSON.stringify({
      type: 'error',
      error: { type: 'overloaded_error', message: 'Overloaded' },
    });
    const a = track(await answering(529, overloaded));
    const gw = await gatewayOver({ a: { url: a.url, kind: 'anthropic' }, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-trail']).toBe('a/m=http_529');
    const alone = await gatewayOver({ a: { url: a.url, kind: 'anthropic' } });
    const e = await chat(alone, { stream: true });
    expect(e.status, e.text).toBe(502);
    expect(e.json.error?.type).toBe('upstream_error');
    expect(e.json.error?.message).toContain('a/m: http_529');
  });

  // 402: our account there is out of credit (README), which another provider does not share.
  it('a 402 fails over as http_402', async () => {
    const a = track(await answering(402, OPENAI_ERROR('pay up', 'billing_error')));
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-trail']).toBe('a/m=http_402');
  });

  // 405: the client sent a POST to /v1/chat/completions, which is right; an upstream refusing the method is
  // mis-deployed or behind the wrong path (a base_url pointing at the wrong server). Relayed, the client
  // gets "method not allowed" for a request it made correctly, and the breaker never learns of it.
  it('a 405 Method Not Allowed fails over to the next upstream', async () => {
    const a = track(
      await answering(405, '<html><body><h1>405 Not Allowed</h1></body></html>', {
        'content-type': 'text/html',
        allow: 'GET',
      }),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/m=http_405');
  });

  // 407: a proxy between the gateway and the provider wants *our* credentials (as 401/403 is our key).
  // Relayed, the client is told its own (non-existent) proxy wants authentication.
  it('a 407 Proxy Authentication Required fails over to the next upstream', async () => {
    const a = track(
      await answering(407, 'Proxy Authentication Required', {
        'content-type': 'text/plain',
        'proxy-authenticate': 'Basic realm="corp"',
      }),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/m=http_407');
  });

  // 409 from OpenAI is a lock timeout: the openai SDK retries it as it retries 408, 429 and 5xx
  // (client.js shouldRetry: "Retry on lock timeouts"). The gateway's failover is that retry.
  it('a 409 (lock timeout, retried by the openai SDK) fails over to the next upstream', async () => {
    const a = track(
      await answering(409, OPENAI_ERROR('The server had a conflict, please retry.', 'server_error')),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/m=http_409');
  });

  // SPEC §2 keeps "404 unknown model at the provider" with the client. An HTML 404 page (a reverse proxy with
  // no backend behind it, a base_url on the wrong path) is no API's answer about the model: the provider is
  // unreachable, and the route's other upstream should serve (and the breaker learn of it).
  it('a 404 that is an HTML page (a proxy with no backend), not an API error, fails over', async () => {
    const a = track(
      await answering(
        404,
        '<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>',
        { 'content-type': 'text/html' },
      ),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });
});

describe('an account out of credit is a fault of that provider, not a rate limit (SPEC §2, §4)', () => {
  // OpenAI answers a drained account with 429 `insufficient_quota`. It will not come back in a second: the
  // client must not get "every upstream tried is rate limited" with Retry-After: 1 (the openai SDK retries a
  // 429, so every client request becomes three). The same error inside a 200 is already a 502 here, and
  // Anthropic's drained account (README) fails over as a 402.
  it("OpenAI's 429 insufficient_quota alone: 502 upstream_error, no Retry-After", async () => {
    const a = track(
      await answering(
        429,
        OPENAI_ERROR(
          'You exceeded your current quota, please check your plan and billing details.',
          'insufficient_quota',
          'insufficient_quota',
        ),
      ),
    );
    const gw = await gatewayOver({ a: a.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(502);
    expect(r.headers['retry-after']).toBeUndefined();
    expect(r.json.error?.type).toBe('upstream_error');
  });

  // Anthropic's error type says what it is, whatever status it came with: a `billing_error` is our account,
  // never the client's request (README: Anthropic's 400s about our account are failed over).
  it("an Anthropic 400 whose type is billing_error fails over instead of being relayed as the client's", async () => {
    const a = track(
      await answering(
        400,
        JSON.stringify({
          type: 'error',
          error: { type: 'billing_error', message: 'Your account has a billing issue.' },
        }),
      ),
    );
    const gw = await gatewayOver({ a: { url: a.url, kind: 'anthropic' }, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });
});

describe('a 200 that is no answer fails over, in either form (SPEC §2, README "Failover and streams")', () => {
  for (const [name, body] of [
    ['an empty body', ''],
    ['an HTML page', '<html><body>maintenance</body></html>'],
    ['a JSON object that is no completion', '{"object":"list","data":[]}'],
  ] as const) {
    it(`${name}: fails over (JSON and stream)`, async () => {
      const a = track(await answering(200, body));
      const gw = await gatewayOver({ a: a.url, b: await healthy() });
      for (const stream of [false, true]) {
        const r = await chat(gw, { stream });
        expect(r.status, r.text).toBe(200);
        expect(r.headers['x-router-provider']).toBe('b');
        expect(String(r.headers['x-router-trail'])).toMatch(/^a\/m=\w+$/);
      }
    });
  }

  // A completion with no choice answers nothing (`completion.choices[0].message` throws in every client). The
  // same body to a stream request already fails over (stream_ended_before_content); as JSON it was relayed.
  it('a completion whose choices list is empty fails over as JSON, as it does as a stream', async () => {
    const a = track(
      await answering(
        200,
        JSON.stringify({
          id: 'chatcmpl-0',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [],
          usage: { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 },
        }),
      ),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const s = await chat(gw, { stream: true });
    expect(s.headers['x-router-provider']).toBe('b');
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(content(r)).toBe('from b');
  });
});

describe("the client's 429 when every candidate is rate limited (SPEC §4)", () => {
  // Each Retry-After form as the client's Retry-After (whole seconds, rounded up), alone on the route.
  const forms: [string, () => Record<string, string>, number, number][] = [
    ['delay-seconds', () => ({ 'retry-after': '12' }), 12, 12],
    ['fractional seconds', () => ({ 'retry-after': '1.5' }), 2, 2],
    [
      'an HTTP-date 20 s ahead',
      () => ({ 'retry-after': new Date(Date.now() + 20_000).toUTCString() }),
      18,
      20,
    ],
    ['retry-after-ms before Retry-After', () => ({ 'retry-after-ms': '2500', 'retry-after': '60' }), 3, 3],
    ['a negative value (ignored)', () => ({ 'retry-after': '-5' }), 1, 1],
  ];
  for (const [name, headers, min, max] of forms) {
    it(`Retry-After as ${name}`, async () => {
      const a = track(await answering(429, OPENAI_ERROR('slow down', 'rate_limit_error'), headers()));
      const gw = await gatewayOver({ a: a.url });
      const r = await chat(gw);
      expect(r.status, r.text).toBe(429);
      expect(r.json.error?.type).toBe('rate_limit_error');
      const s = Number(r.headers['retry-after']);
      expect(s).toBeGreaterThanOrEqual(min);
      expect(s).toBeLessThanOrEqual(max);
    });
  }

  it('two rate-limited upstreams with different Retry-Afters: the sooner one', async () => {
    const a = track(await answering(429, OPENAI_ERROR('slow', 'rate_limit_error'), { 'retry-after': '30' }));
    const b = track(await answering(429, OPENAI_ERROR('slow', 'rate_limit_error'), { 'retry-after': '5' }));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBe('5');
    expect(r.headers['x-router-trail']).toBe('a/m=http_429,b/m=http_429');
  });

  // b named no cooldown: its breaker stays closed and the next request tries it at once (alone on the route
  // the client is told 1 s). The client must not be sent away for a's 30 s while b may take it now.
  it('one says Retry-After: 30, the other names no cooldown: the client is not told to wait 30 s', async () => {
    const a = track(await answering(429, OPENAI_ERROR('slow', 'rate_limit_error'), { 'retry-after': '30' }));
    const b = track(await answering(429, OPENAI_ERROR('slow', 'rate_limit_error')));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBe('1');
  });
});

describe('final errors name each attempt; a provider 401/403 is ours, not the client (SPEC §2, §4)', () => {
  it('the trail, x-router-attempts and the 502 message name each upstream and its reason', async () => {
    const a = track(await answering(500, OPENAI_ERROR('boom', 'server_error')));
    const gone = createTcpServer();
    await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r));
    const port = (gone.address() as AddressInfo).port;
    await new Promise<void>((r) => gone.close(() => r()));
    const c = track(await answering(200, '<html>oops</html>', { 'content-type': 'text/html' }));
    const gw = await gatewayOver({ a: a.url, b: `http://127.0.0.1:${port}`, c: c.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(502);
    expect(r.json.error?.type).toBe('upstream_error');
    expect(r.headers['x-router-attempts']).toBe('3');
    expect(r.headers['x-router-trail']).toBe('a/m=http_500,b/m=connect_refused,c/m=invalid_upstream_json');
    const msg = String(r.json.error?.message);
    expect(msg).toContain('a/m: http_500 (HTTP 500)');
    expect(msg).toContain('b/m: connect_refused');
    expect(msg).toContain('c/m: invalid_upstream_json');
    expect(msg).not.toContain('boom');
  });

  it('a provider 401 is a 502 to the client, logged loudly on every attempt (no key) and counted', async () => {
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(
        OPENAI_ERROR(`Incorrect API key provided: ${UP_KEY}`, 'invalid_request_error', 'invalid_api_key'),
      );
    });
    const gw = await gatewayOver({ a: up.url });
    for (const stream of [false, true]) {
      const r = await chat(gw, { stream });
      expect(r.status, r.text).toBe(502);
      expect(r.json.error?.type).toBe('upstream_error');
      expect(r.text).not.toContain(UP_KEY);
      expect(r.headers['x-router-trail']).toBe('a/m=http_401');
    }
    await new Promise((r) => setTimeout(r, 50));
    const loud = gw.logs.filter((l) => l.level === 50 && String(l.msg).includes('rejected our credentials'));
    expect(loud).toHaveLength(2);
    expect(gw.rawLogs()).not.toContain(UP_KEY);
    const samples = await scrape(gw.url);
    expect(
      value(samples, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'error' }),
    ).toBe(2);
  });

  // SPEC §4 "404 model_not_found"; an Anthropic upstream's 404 is relayed with that code already. vLLM's
  // answer for a model it does not serve carries no OpenAI `error` object: the client got code null.
  it("an OpenAI-compatible server's 404 for an unknown model is relayed with code model_not_found", async () => {
    const a = track(
      await answering(
        404,
        JSON.stringify({
          object: 'error',
          message: 'The model `m` does not exist.',
          type: 'NotFoundError',
          param: null,
          code: 404,
        }),
      ),
    );
    const gw = await gatewayOver({ a: a.url, b: await healthy() });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(404);
    expect(r.json.error?.message).toBe('The model `m` does not exist.');
    expect(r.json.error?.code).toBe('model_not_found');
  });
});
