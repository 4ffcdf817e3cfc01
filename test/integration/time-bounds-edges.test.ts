/**
 * Every time bound of a request, end to end (SPEC §2 failover, §4 504, §8 "every upstream wait is bounded";
 * README timeouts row): `first_byte_ms` runs to the answer's first BODY byte (a server that sends its headers at
 * once still has it for its first token), `idle_ms` from there between body bytes, `total_ms` over the whole
 * exchange (a trickle under `idle_ms` cannot outlive it, before or after a stream's commit; time spent waiting on
 * a slow client is not the upstream's fault), `routing.total_timeout_ms` as the request's budget (a 504 that
 * charges no breaker), `router.timeout_ms` (the request is still served by `default_tier`). For each: the status,
 * the trail's reason, what the breaker and `llm_router_upstream_attempts_total{outcome}` record, and that it fires
 * within a loose margin of its time (upper bounds only, never speed). The passthrough keeps the same meaning of
 * `first_byte_ms` and `idle_ms`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import {
  answerChat,
  chatCompletion,
  chunkFrame,
  startMock,
  startRawUpstream,
} from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { upstreamAt } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
/** A loose upper margin on when a bound fires: a tick is 10 ms; a shared, loaded machine needs far more. */
const SLACK_MS = 1000;

interface Reply {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: { error?: { message: string; type: string; param: unknown; code: unknown } } & Record<
    string,
    unknown
  >;
  ms: number;
}

async function chat(gw: TestGateway, body: Record<string, unknown> = {}, model = 'r'): Promise<Reply> {
  const t0 = performance.now();
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: MSG, ...body }),
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const text = await res.body.text();
  const ms = performance.now() - t0;
  let json = {} as Reply['json'];
  try {
    json = JSON.parse(text) as Reply['json'];
  } catch {
    /* a stream */
  }
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) headers[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers, text, json, ms };
}

function events(text: string): string[] {
  return text
    .split('\n\n')
    .map((f) => f.trim())
    .filter((f) => f.startsWith('data: '))
    .map((f) => f.slice(6));
}

function gatewayOver(
  providers: Record<string, { url: string; timeouts?: Record<string, number> }>,
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  return startGateway({
    providers: Object.entries(providers).map(([name, p]) =>
      simProvider(name, p.url, ['m'], { timeouts: p.timeouts ?? RELAXED }),
    ),
    routes: { r: { strategy: 'priority', targets: Object.keys(providers).map((n) => `${n}/m`) } },
    ...extra,
  }).then(track);
}

async function attempts(gw: TestGateway, provider: string, outcome: string): Promise<number> {
  return (
    value(await scrape(gw.url), 'llm_router_upstream_attempts_total', { provider, model: 'm', outcome }) ?? 0
  );
}

async function failures(gw: TestGateway, id: string): Promise<number> {
  await sleep(50); // the breaker learns at the end of the turn
  return (await upstreamAt(gw.url, id)).breaker.consecutive_failures;
}

describe('first_byte_ms runs to the first body byte, not the headers', () => {
  // README timeouts: first_byte_ms is "to the answer's first body byte: a server that sends its headers at once,
  // as vLLM does, still has it for its first token". idle_ms (200) is far shorter than the wait (700).
  it.each([false, true])(
    'headers at once, body 700 ms later, idle_ms 200, first_byte_ms 2000: answered (stream: %s)',
    async (stream) => {
      const a = track(
        await startMock(async (req, res) => {
          res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json' });
          res.flushHeaders();
          await sleep(700);
          if (res.destroyed) return;
          if (!stream) return void res.end(JSON.stringify(chatCompletion(req.body)));
          res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
          res.write(chunkFrame(req.body.model, { content: 'late' }));
          res.end(`${chunkFrame(req.body.model, {}, 'stop')}data: [DONE]\n\n`);
        }),
      );
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 200, total_ms: 10000 } },
        b: { url: b.url },
      });
      const r = await chat(gw, { stream });
      expect({
        status: r.status,
        provider: r.headers['x-router-provider'],
        trail: r.headers['x-router-trail'],
      }).toEqual({ status: 200, provider: 'a', trail: '' });
      if (stream) expect(events(r.text).at(-1)).toBe('[DONE]');
      expect(b.received).toHaveLength(0);
      expect(await failures(gw, 'a/m')).toBe(0);
    },
  );

  // Past first_byte_ms with only the headers come, the attempt is a first_byte_timeout (not idle, not total):
  // failed over invisibly, charged to a's breaker, counted as a timeout; it fires near its time.
  it.each([false, true])(
    'headers at once, then nothing past first_byte_ms 400: first_byte_timeout, failed over (stream: %s)',
    async (stream) => {
      const a = track(
        await startMock((_req, res) => {
          res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json' });
          res.flushHeaders();
        }),
      );
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 400, idle_ms: 5000, total_ms: 10000 } },
        b: { url: b.url },
      });
      const r = await chat(gw, { stream });
      expect({
        status: r.status,
        provider: r.headers['x-router-provider'],
        trail: r.headers['x-router-trail'],
      }).toEqual({ status: 200, provider: 'b', trail: 'a/m=first_byte_timeout' });
      expect(r.ms).toBeLessThan(400 + SLACK_MS);
      if (stream) expect(events(r.text).at(-1)).toBe('[DONE]');
      expect(await failures(gw, 'a/m')).toBe(1);
      expect(await attempts(gw, 'a', 'timeout')).toBe(1);
    },
  );
});

describe('idle_ms from the first body byte', () => {
  // A JSON answer that sends its first bytes, then stalls: idle_ms (not first_byte_ms) cuts it and it fails over.
  it('a JSON body that starts, then stalls past idle_ms 250: idle_timeout, failed over, charged', async () => {
    const a = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"id":"x","object":"chat.completion",');
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 250, total_ms: 10000 } },
      b: { url: b.url },
    });
    const r = await chat(gw);
    expect({
      status: r.status,
      provider: r.headers['x-router-provider'],
      trail: r.headers['x-router-trail'],
    }).toEqual({ status: 200, provider: 'b', trail: 'a/m=idle_timeout' });
    expect(r.ms).toBeLessThan(250 + SLACK_MS);
    expect(await failures(gw, 'a/m')).toBe(1);
    expect(await attempts(gw, 'a', 'timeout')).toBe(1);
  });
});

describe('total_ms cuts a trickle that keeps idle_ms at bay', () => {
  // SPEC §8: "a slowloris upstream cannot hold a request past total_ms". Before the commit (only SSE comments,
  // one every 150 ms under idle_ms 300) the cut is a pre-commit failure: failed over invisibly.
  it('a stream sending only keep-alive comments under idle_ms fails over at total_ms, invisibly', async () => {
    const a = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (let i = 0; i < 60 && !res.destroyed; i++) {
          res.write(': keep-alive\n\n');
          await sleep(150);
        }
        res.end();
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 800 } },
      b: { url: b.url },
    });
    const r = await chat(gw, { stream: true });
    expect({
      status: r.status,
      provider: r.headers['x-router-provider'],
      trail: r.headers['x-router-trail'],
    }).toEqual({ status: 200, provider: 'b', trail: 'a/m=total_timeout' });
    expect(r.ms).toBeLessThan(800 + SLACK_MS);
    const ev = events(r.text);
    expect(ev.at(-1)).toBe('[DONE]');
    expect(ev.some((e) => e.includes('"error"'))).toBe(false);
    expect(await failures(gw, 'a/m')).toBe(1);
    expect(await attempts(gw, 'a', 'timeout')).toBe(1);
  });

  // A single upstream trickling a JSON body: nothing to fail over to, so the client gets a 504 `timeout` naming
  // total_timeout, near total_ms.
  it('a JSON body trickling under idle_ms with no other upstream: 504 timeout at total_ms', async () => {
    const a = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"id":"x","object":"chat.completion","choices":[');
        for (let i = 0; i < 60 && !res.destroyed; i++) {
          res.write(' ');
          await sleep(150);
        }
        res.end(']}');
      }),
    );
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 800 } },
    });
    const r = await chat(gw);
    expect({ status: r.status, type: r.json.error?.type, trail: r.headers['x-router-trail'] }).toEqual({
      status: 504,
      type: 'timeout',
      trail: 'a/m=total_timeout',
    });
    expect(r.json.error?.message).toContain('total_timeout');
    expect(r.ms).toBeLessThan(800 + SLACK_MS);
    expect(await failures(gw, 'a/m')).toBe(1);
    expect(await attempts(gw, 'a', 'timeout')).toBe(1);
  });
});

describe('routing.total_timeout_ms shorter than the provider bounds', () => {
  // SPEC §4: 504 `timeout`; README: the request's budget is not the provider's failure, its breaker is not
  // charged. The attempt is still counted (outcome timeout). A stream that never committed gets the JSON 504.
  it.each([false, true])(
    'an upstream hanging before its headers, budget 400 < first_byte_ms 3000: 504 at the budget (stream: %s)',
    async (stream) => {
      const a = track(await startMock(() => undefined));
      const gw = await gatewayOver(
        {
          a: {
            url: a.url,
            timeouts: { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 10000 },
          },
        },
        { routing: { total_timeout_ms: 400 } },
      );
      const r = await chat(gw, { stream });
      expect({
        status: r.status,
        type: r.json.error?.type,
        retry: r.headers['x-should-retry'],
        trail: r.headers['x-router-trail'],
        attempts: r.headers['x-router-attempts'],
      }).toEqual({ status: 504, type: 'timeout', retry: 'false', trail: 'a/m=total_timeout', attempts: '1' });
      expect(r.ms).toBeLessThan(400 + SLACK_MS);
      expect(await failures(gw, 'a/m')).toBe(0);
      expect(await attempts(gw, 'a', 'timeout')).toBe(1);
    },
  );
});

describe('router.timeout_ms', () => {
  const isRouterCall = (body: Record<string, unknown>): boolean => {
    const m = (body.messages as { content?: unknown }[] | undefined)?.[0]?.content;
    return typeof m === 'string' && m.startsWith('You route requests');
  };

  // SPEC §2: "on timeout ... the route's default_tier is used"; README: "the router can make a request slower by
  // at most its timeout, never fail it", and the cut is not charged to the router upstream's breaker.
  it('a router upstream that hangs: default_tier serves within the request budget, router breaker not charged', async () => {
    const hung = track(await startMock(() => undefined));
    const b = track(
      await startMock((req, res) => {
        if (isRouterCall(req.body)) return; // b is never asked to route
        answerChat(res, req.body, 'from b');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('r1', hung.url, ['m'], { timeouts: RELAXED }),
          simProvider('b', b.url, ['m'], { timeouts: RELAXED }),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['r1/m'], balanced: ['b/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 300 },
          },
        },
        routing: { total_timeout_ms: 2000 },
      }),
    );
    const r = await chat(gw, {}, 'auto');
    expect({
      status: r.status,
      provider: r.headers['x-router-provider'],
      tier: r.headers['x-router-tier'],
    }).toEqual({ status: 200, provider: 'b', tier: 'balanced' });
    expect(r.headers['x-router-tier-reason']).toContain('timed out');
    expect(r.ms).toBeLessThan(300 + SLACK_MS);
    expect(hung.received).toHaveLength(1);
    expect(await failures(gw, 'r1/m')).toBe(0);
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'timeout' })).toBe(
      1,
    );
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'r1', model: 'm', outcome: 'timeout' }),
    ).toBe(1);
  });
});

describe('total_ms while the gateway waits on a slow client', () => {
  // README timeouts: total_ms "a stream whose client reads slower than it is cut there, counted client_error, and
  // the upstream's breaker is not charged"; idle_ms is not run while the gateway waits on the client.
  it('a client that reads nothing past total_ms: stream cut, counted client_error, breaker not charged', async () => {
    const delta = chunkFrame('m', { content: 'y'.repeat(4000) });
    const a = track(
      await startMock(async (req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
        for (let i = 0; i < 1500 && !res.destroyed; i++) {
          if (!res.write(delta)) await new Promise((r) => res.once('drain', r));
        }
        if (!res.destroyed) res.end(`${chunkFrame(req.body.model, {}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 900 } },
    });
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', stream: true, messages: MSG }),
      highWaterMark: 1024,
      bodyTimeout: 15_000,
    });
    expect(res.statusCode).toBe(200);
    res.body.pause();
    await sleep(1500); // past total_ms, reading nothing
    const text = await res.body.text();
    expect(text.endsWith('data: [DONE]\n\n')).toBe(false);
    const last = JSON.parse(events(text).at(-1)!) as { error?: { code?: string; message?: string } };
    expect(last.error?.code).toBe('stream_interrupted');
    expect(last.error?.message).toContain('total_timeout');
    expect(last.error?.message).not.toContain('idle_timeout');
    expect(await failures(gw, 'a/m')).toBe(0);
    expect(await attempts(gw, 'a', 'client_error')).toBe(1);
    expect(await attempts(gw, 'a', 'timeout')).toBe(0);
  });
});

describe('the passthrough keeps the same first_byte_ms and idle_ms', () => {
  // README timeouts: first_byte_ms is "to the answer's first body byte: a server that sends its headers at once,
  // as vLLM does, still has it for its first token"; the passthrough row: "bounded by its timeouts". A vLLM
  // /v1/completions (not routed: passthrough) sends its headers at once and its first bytes after prefill.
  it('headers at once, body 1500 ms later, idle_ms 300, first_byte_ms 4000: the whole answer', async () => {
    const up = await startRawUpstream(track, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.flushHeaders();
      setTimeout(() => {
        if (!res.destroyed) res.end('{"id":"cmpl-1","object":"text_completion","choices":[{"text":"late"}]}');
      }, 1500);
    });
    const gw = track(
      await startGateway({
        server: { passthrough: 'pt' },
        providers: [
          simProvider('pt', up.url, ['m'], {
            api_key: 'sk-pt-bounds-0000',
            timeouts: { connect_ms: 1000, first_byte_ms: 4000, idle_ms: 300, total_ms: 10000 },
          }),
        ],
        routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
      }),
    );
    let status = 0;
    let text = '';
    try {
      const res = await request(`${gw.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'm', prompt: 'hi' }),
        headersTimeout: 10_000,
        bodyTimeout: 10_000,
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      text = `client error: ${(err as Error).message}`;
    }
    expect({ status, text }).toEqual({
      status: 200,
      text: '{"id":"cmpl-1","object":"text_completion","choices":[{"text":"late"}]}',
    });
  });
});
