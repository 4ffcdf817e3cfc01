/**
 * How failover classifies an attempt and walks its list (SPEC §2 "Failover", §4 errors): an error sent with a
 * 200 that says "rate limit" is a rate limit (429, not 502), an upstream whose breaker opened since the plan
 * is skipped and the walk goes on, and a request cut by routing.total_timeout_ms answers 504 even after a 5xx.
 * Each test runs against hand-written mocks on loopback.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';
import { breakerAt } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
const RATE_LIMIT_ERROR = {
  error: { message: 'slow down', type: 'rate_limit_exceeded', param: null, code: 'rate_limit_exceeded' },
};

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function chat(
  gw: TestGateway,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Promise<Reply> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'r', messages: MSG, ...body }),
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** A gateway over hand-written mocks `name -> url`, one priority route `r` over them in that order. */
async function gatewayOver(
  upstreams: Record<string, string>,
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      providers: Object.entries(upstreams).map(([name, url]) =>
        simProvider(name, url, ['m'], { timeouts: RELAXED }),
      ),
      routes: { r: { strategy: 'priority', targets: Object.keys(upstreams).map((n) => `${n}/m`) } },
      ...extra,
    }),
  );
}

describe('an error sent with a 200 that says "rate limit" is a rate limit (SPEC §2 failover, §4 429)', () => {
  // SPEC §2: a 200 then an error event is "failed over like any 5xx" — of its kind: a rate limit is a
  // cooldown; §4: 429 when every candidate is rate limited.
  it('a stream whose only event is a rate-limit error event: the client gets 429, not 502', async () => {
    const up = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(`data: ${JSON.stringify(RATE_LIMIT_ERROR)}\n\n`);
      }),
    );
    const gw = await gatewayOver({ a: up.url });
    const r = await chat(gw, { stream: true });
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBeDefined();
    expect(String(r.headers['x-router-trail'])).toBe('a/m=stream_error_event');
  });

  // Same SPEC lines, for a non-streaming answer whose 200 body is a rate-limit error object.
  it('a JSON answer that is a rate-limit error object: the client gets 429, not 502', async () => {
    const up = track(await startMock((_req, res) => sendJson(res, 200, RATE_LIMIT_ERROR)));
    const gw = await gatewayOver({ a: up.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(429);
    expect(r.headers['retry-after']).toBeDefined();
    expect(String(r.headers['x-router-trail'])).toBe('a/m=error_in_answer');
  });
});

describe('failover skips an upstream whose breaker opened since the plan (SPEC §2 failover)', () => {
  // SPEC §2: "The ranked list is tried in order, at most routing.max_attempts distinct upstreams": one
  // upstream that cannot be tried (open: "skipped") does not end the walk before the ones after it.
  it('a ranked upstream that opened while attempt #1 ran is skipped and the next one answers', async () => {
    const a = track(
      await startMock(async (_req, res) => {
        await sleep(700);
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
      }),
    );
    const b = track(
      await startMock((_req, res) =>
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }),
      ),
    );
    const c = track(await startMock((req, res) => answerChat(res, req.body, 'from c')));
    const gw = await gatewayOver(
      { a: a.url, b: b.url, c: c.url },
      {
        routing: { max_attempts: 3, total_timeout_ms: 10000 },
        circuit_breaker: {
          failure_threshold: 1,
          open_ms: 30000,
          max_open_ms: 60000,
          half_open_probes: 1,
          success_threshold: 1,
        },
      },
    );
    // Planned while every breaker is closed: [a, b, c]; a holds its answer for 700 ms.
    const first = chat(gw);
    for (let i = 0; i < 100 && a.received.length === 0; i++) await sleep(10);
    expect(a.received).toHaveLength(1);
    // Meanwhile another request, pinned to b, opens b's breaker (failure_threshold 1).
    const pinned = await chat(gw, {}, { 'x-router-provider': 'b' });
    expect(pinned.status).toBe(502);
    for (let i = 0; i < 100 && (await breakerAt(gw.url, 'b/m')).state !== 'open'; i++) await sleep(10);
    expect((await breakerAt(gw.url, 'b/m')).state).toBe('open');
    const r = await first;
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('c');
    expect(b.received).toHaveLength(1); // only the pinned request reached b
  });
});

describe('the request deadline answers 504 even after other failures (SPEC §2 total_timeout_ms, §4 504)', () => {
  // SPEC §2: attempts run "within routing.total_timeout_ms"; §4: 504 `timeout` when time ran out — a 5xx from
  // an earlier upstream does not turn a request cut by its deadline into a 502.
  it('attempt #1 fails with a 500, attempt #2 is cut by total_timeout_ms: 504 timeout', async () => {
    const a = track(
      await startMock((_req, res) =>
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }),
      ),
    );
    const b = track(
      await startMock(() => {
        /* never answers: only the request's own deadline ends this attempt */
      }),
    );
    const gw = await gatewayOver(
      { a: a.url, b: b.url },
      { routing: { max_attempts: 3, total_timeout_ms: 800 } },
    );
    const r = await chat(gw);
    expect(r.status, r.text).toBe(504);
    expect(b.received).toHaveLength(1);
    expect(String(r.headers['x-router-trail'])).toContain('a/m=http_500');
  });
});
