/**
 * Every clock a request runs on, and what each one's end looks like (SPEC §2 failover / breaker / LLM router,
 * §4 504, README "timeouts", "max_concurrency", "Tiers and the LLM router"): routing.total_timeout_ms across
 * failover, a provider's connect_ms / first_byte_ms / idle_ms / total_ms, the pool queue (queue_timeout), the
 * LLM router's timeout_ms, and server.request_timeout_ms beside a long stream. For each: the status the client
 * sees, the trail's reason, what the breaker counts and the attempt outcome metric. Small bounds, generous
 * margins, no assertion on a duration.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, startMock } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { upstreamAt } from '../helpers/resilience-harness.js';

const track = closeAfterEach();
const HAS_PYTHON = spawnSync('python3', ['-c', ''], { stdio: 'ignore' }).status === 0;
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 2000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: { error?: { message: string; type: string; param: unknown; code: unknown } } & Record<
    string,
    unknown
  >;
}

async function chat(
  gw: TestGateway,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = {},
  model = 'r',
): Promise<Reply> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: MSG, ...body }),
    headersTimeout: 20_000,
    bodyTimeout: 20_000,
  });
  const text = await res.body.text();
  let json = {} as Reply['json'];
  try {
    json = JSON.parse(text) as Reply['json'];
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

/** The data payloads of an SSE body, in order. */
function events(text: string): string[] {
  return text
    .split('\n\n')
    .map((f) => f.trim())
    .filter((f) => f.startsWith('data: '))
    .map((f) => f.slice(6));
}

function gatewayOver(
  providers: Record<
    string,
    { url: string; timeouts?: Record<string, number>; extra?: Record<string, unknown> }
  >,
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  return startGateway({
    providers: Object.entries(providers).map(([name, p]) =>
      simProvider(name, p.url, ['m'], { timeouts: p.timeouts ?? RELAXED, ...(p.extra ?? {}) }),
    ),
    routes: { r: { strategy: 'priority', targets: Object.keys(providers).map((n) => `${n}/m`) } },
    ...extra,
  }).then(track);
}

async function attemptsMetric(gw: TestGateway, provider: string, outcome: string): Promise<number> {
  return (
    value(await scrape(gw.url), 'llm_router_upstream_attempts_total', { provider, model: 'm', outcome }) ?? 0
  );
}

/**
 * A loopback port whose accept queue is full: a connect to it neither completes nor is refused (the SYN is
 * dropped), as a blackholed host behaves. A listener with backlog 0 that never accepts (Python: Node's own
 * listeners always accept), with one connection already filling its queue.
 */
async function blackhole(): Promise<{ url: string; close(): Promise<void> }> {
  const py = spawn(
    'python3',
    [
      '-c',
      'import socket,sys\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    py.once('error', reject);
    py.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
  });
  const fillers: Socket[] = [];
  // Fill the queue: connect until one hangs.
  for (let i = 0; i < 4; i++) {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    fillers.push(s);
    const r = await Promise.race([
      new Promise<string>((res) => s.once('connect', () => res('connect'))),
      sleep(300).then(() => 'hang'),
    ]);
    if (r === 'hang') break;
  }
  const stop = (p: ChildProcess): Promise<void> =>
    new Promise((resolve) => {
      if (p.exitCode !== null) return resolve();
      p.once('exit', () => resolve());
      p.stdin?.end();
      p.kill();
    });
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      for (const s of fillers) s.destroy();
      await stop(py);
    },
  };
}

describe('connect_ms: a host that never completes the handshake', () => {
  // README timeouts: `connect_ms`, "checked every 10 ms, so a bound fires at most 10 ms after its time, never
  // before". connect_ms 150 < first_byte_ms 450 (which counts from dispatch, connecting included): the connect
  // bound ends the attempt first, and the trail names it.
  // Needs python3 (Debian's python3-minimal) for a listener that never accepts: skipped without it.
  it.skipIf(!HAS_PYTHON)(
    'a blackholed upstream fails as connect_timeout (not first_byte_timeout) and the next one answers',
    async () => {
      const hole = track(await blackhole());
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({
        a: {
          url: hole.url,
          timeouts: { connect_ms: 150, first_byte_ms: 450, idle_ms: 5000, total_ms: 10000 },
        },
        b: { url: b.url },
      });
      const r = await chat(gw);
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-trail']).toBe('a/m=connect_timeout');
      expect(await attemptsMetric(gw, 'a', 'timeout')).toBe(1);
      expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
    },
  );
});

describe('routing.total_timeout_ms across failover', () => {
  // SPEC §2: attempts run "within routing.total_timeout_ms"; attempt #2 gets what attempt #1 left, and the
  // cut is the request's budget, not b's fault (README: its breaker does not count it). §4/README: 504
  // `timeout` with x-should-retry: false.
  it('attempt #1 times out on first byte, attempt #2 gets only the rest: 504, b not charged', async () => {
    const a = track(await startMock(() => undefined)); // never answers
    const b = track(
      await startMock(async (req, res) => {
        await sleep(900);
        answerChat(res, req.body, 'late');
      }),
    );
    const gw = await gatewayOver(
      {
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 500, idle_ms: 5000, total_ms: 10000 } },
        b: { url: b.url },
      },
      { routing: { total_timeout_ms: 1000, max_attempts: 3 } },
    );
    const r = await chat(gw);
    expect(r.status, r.text).toBe(504);
    expect(r.json.error?.type).toBe('timeout');
    expect(r.headers['x-should-retry']).toBe('false');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=first_byte_timeout,b/m=total_timeout');
    expect(r.json.error?.message).toContain('first_byte_timeout');
    expect(r.json.error?.message).toContain('total_timeout');
    expect(b.received).toHaveLength(1);
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
    expect((await upstreamAt(gw.url, 'b/m')).breaker.consecutive_failures).toBe(0);
    expect(await attemptsMetric(gw, 'b', 'timeout')).toBe(1);
  });

  // The same budget for a stream already committed: the cut is an in-stream error event (no [DONE]), and the
  // breaker is not charged for the request's own clock.
  it('a committed stream cut by total_timeout_ms ends with an error event, and its breaker is not charged', async () => {
    const a = track(
      await startMock(async (req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
        for (let i = 0; i < 40 && !res.destroyed; i++) {
          res.write(chunkFrame(req.body.model, { content: `w${i} ` }));
          await sleep(60);
        }
        res.end();
      }),
    );
    const gw = await gatewayOver({ a: { url: a.url } }, { routing: { total_timeout_ms: 700 } });
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    const ev = events(r.text);
    expect(ev).not.toContain('[DONE]');
    const last = JSON.parse(ev[ev.length - 1]!) as { error?: { code?: string; message?: string } };
    expect(last.error?.code).toBe('stream_interrupted');
    expect(last.error?.message).toContain('total_timeout');
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(0);
  });
});

describe('idle_ms and total_ms of a provider', () => {
  // SPEC §2: after the commit a failure ends the stream with an error event and no [DONE]; README: idle_ms is
  // "between chunks"; a provider's own timeouts count against its breaker; stream_failures_total{policy}.
  it('a committed stream that goes quiet past idle_ms is terminated in-stream (200, error event, no [DONE])', async () => {
    const a = track(
      await startMock((req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
        res.write(chunkFrame(req.body.model, { content: 'Hello' }));
        // then nothing, connection kept open
      }),
    );
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 10000 } },
    });
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    const ev = events(r.text);
    expect(ev.some((e) => e.includes('Hello'))).toBe(true);
    expect(ev).not.toContain('[DONE]');
    const last = JSON.parse(ev[ev.length - 1]!) as {
      error?: { code?: string; message?: string; type?: string };
    };
    expect(last.error?.code).toBe('stream_interrupted');
    expect(last.error?.message).toContain('idle_timeout');
    await sleep(50);
    const m = await scrape(gw.url);
    expect(
      value(m, 'llm_router_stream_failures_total', { provider: 'a', model: 'm', policy: 'terminate' }),
    ).toBe(1);
    expect(
      value(m, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'timeout' }),
    ).toBe(1);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
  });

  // Each chunk of a slow stream resets idle_ms; total_ms still ends it mid-answer (SPEC §8: "a slowloris
  // upstream cannot hold a request past total_ms"), and the error event names total_ms's bound.
  it('a stream steadily under idle_ms runs into total_ms mid-answer: error event naming total_timeout', async () => {
    const a = track(
      await startMock(async (req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (let i = 0; i < 60 && !res.destroyed; i++) {
          res.write(chunkFrame(req.body.model, { content: `t${i} ` }));
          await sleep(80);
        }
        res.end();
      }),
    );
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 400, total_ms: 900 } },
    });
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    const ev = events(r.text);
    expect(ev).not.toContain('[DONE]');
    const last = JSON.parse(ev[ev.length - 1]!) as { error?: { code?: string; message?: string } };
    expect(last.error?.message).toContain('total_timeout');
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
  });

  // A non-streaming answer whose body trickles (each piece well within idle_ms) is bounded by total_ms: it fails
  // over as total_timeout, the next upstream answers.
  it('a JSON body trickling under idle_ms fails over at total_ms as total_timeout', async () => {
    const a = track(
      await startMock(async (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"id":"x","object":"chat.completion","choices":[');
        for (let i = 0; i < 100 && !res.destroyed; i++) {
          res.write(' ');
          await sleep(80);
        }
        res.end(']}');
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 400, total_ms: 900 } },
      b: { url: b.url },
    });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/m=total_timeout');
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
    expect(await attemptsMetric(gw, 'a', 'timeout')).toBe(1);
  });

  // A timed-out attempt is no answer: it feeds no latency sample (README: statistics are of answers).
  it('a first_byte_timeout adds no latency sample to the upstream statistics', async () => {
    const a = track(await startMock(() => undefined));
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 300, idle_ms: 5000, total_ms: 10000 } },
      b: { url: b.url },
    });
    const r = await chat(gw);
    expect(r.status).toBe(200);
    await sleep(50);
    const st = (await upstreamAt(gw.url, 'a/m')).stats;
    expect(st.samples).toBe(0);
  });
});

describe('an error status whose body then stalls: the status arrived within first_byte_ms', () => {
  // SPEC §2: "Do not fail over on client errors (400 ...): return the upstream's error to the client". The
  // 400's status line came in time; its body then going quiet past idle_ms loses the message, not the status
  // (text-handler.ts says as much: "loses its message, never its status: a 400 must stay a client error").
  it.each([false, true])(
    'a 400 whose body stalls past idle_ms is still a 400, not failed over (stream: %s)',
    async (stream) => {
      const a = track(
        await startMock((_req, res) => {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.write('{"error":{"message":"bad field","type":"invalid_request_error",');
          // then nothing
        }),
      );
      const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
      const gw = await gatewayOver({
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 10000 } },
        b: { url: b.url },
      });
      const r = await chat(gw, { stream });
      expect({ status: r.status, tried: b.received.length }).toEqual({ status: 400, tried: 0 });
      await sleep(50);
      expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(0);
    },
  );

  // SPEC §4: 429 with Retry-After when every candidate is rate limited; the 429 and its Retry-After are in the
  // head, which came at once; a body trickled under idle_ms until total_ms does not turn it into a timeout.
  it.each([false, true])(
    'a 429 + Retry-After whose body trickles until total_ms stays a rate limit (stream: %s)',
    async (stream) => {
      const a = track(
        await startMock(async (_req, res) => {
          res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '7' });
          res.write('{"error":{"message":"slow down","type":"rate_limit_exceeded","param":null,"code":null}');
          for (let i = 0; i < 100 && !res.destroyed; i++) {
            res.write(' ');
            await sleep(80);
          }
          res.end('}');
        }),
      );
      const gw = await gatewayOver({
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 400, total_ms: 900 } },
      });
      const r = await chat(gw, { stream });
      expect({
        status: r.status,
        retryAfter: r.headers['retry-after'],
        trail: r.headers['x-router-trail'],
      }).toEqual({
        status: 429,
        retryAfter: '7',
        trail: 'a/m=http_429',
      });
    },
  );
});

describe('max_concurrency: a request queued for a connection (queue_timeout)', () => {
  // README providers[].max_concurrency: past first_byte_ms in the queue "the attempt fails over as
  // queue_timeout, which does not count against the breaker: the upstream never saw it" — a streaming request
  // the same as a JSON one.
  it('a stream queued behind max_concurrency fails over as queue_timeout, not charged to the breaker', async () => {
    const a = track(
      await startMock(async (req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { content: 'long' }));
        await sleep(1500);
        res.end(`${chunkFrame(req.body.model, {}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: {
        url: a.url,
        timeouts: { connect_ms: 1000, first_byte_ms: 300, idle_ms: 3000, total_ms: 10000 },
        extra: { max_concurrency: 1 },
      },
      b: { url: b.url },
    });
    const holding = chat(gw, { stream: true });
    for (let i = 0; i < 100 && a.received.length === 0; i++) await sleep(10);
    const queued = await chat(gw, { stream: true });
    expect(queued.status, queued.text).toBe(200);
    expect(queued.headers['x-router-provider']).toBe('b');
    expect(queued.headers['x-router-trail']).toBe('a/m=queue_timeout');
    expect(a.received).toHaveLength(1);
    expect((await holding).status).toBe(200);
    expect(
      value(await scrape(gw.url), 'llm_router_failovers_total', {
        route: 'r',
        from_provider: 'a',
        reason: 'timeout',
      }),
    ).toBe(1);
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(0);
  });
});

describe('the LLM router under its own and the request clocks', () => {
  const tiered = (url: string, timeouts: Record<string, number>, extra: Record<string, unknown> = {}) =>
    startGateway({
      providers: [simProvider('a', url, ['m'], { timeouts })],
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['a/m'] },
          default_tier: 'fast',
          router: { tier: 'fast', timeout_ms: 400 },
        },
      },
      ...extra,
    }).then(track);
  const isRouterCall = (body: Record<string, unknown>): boolean => {
    const m = (body.messages as { content?: unknown }[] | undefined)?.[0]?.content;
    return typeof m === 'string' && m.startsWith('You route requests');
  };

  // README: "one merely cut off by the router's timeout_ms may still serve it, and its breaker does not count
  // that cut". The router falls back to default_tier; the request is served by the same upstream.
  it('a router call cut by router.timeout_ms: default_tier, same upstream serves, breaker not charged', async () => {
    const up = track(
      await startMock(async (req, res) => {
        if (isRouterCall(req.body)) await sleep(1200);
        if (!res.destroyed) answerChat(res, req.body, 'served');
      }),
    );
    const gw = await tiered(up.url, RELAXED);
    const r = await chat(gw, {}, {}, 'auto');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('fast');
    expect(String(r.headers['x-router-tier-reason'])).toContain('timed out');
    expect(r.headers['x-router-attempts']).toBe('1');
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(0);
    const m = await scrape(gw.url);
    expect(value(m, 'llm_router_llm_router_requests_total', { tier: 'fast', outcome: 'timeout' })).toBe(1);
  });

  // README: "the provider's own timeouts do count": first_byte_ms (200) shorter than router.timeout_ms (400)
  // ends the router's attempt as that upstream's failure; the request is not sent to it again (request-scoped
  // exclusion) and, the tier left empty, gets a 502 naming that failure.
  it('first_byte_ms shorter than router.timeout_ms: the router attempt counts against the breaker', async () => {
    const up = track(
      await startMock(async (req, res) => {
        if (isRouterCall(req.body)) return; // hangs
        answerChat(res, req.body, 'served');
      }),
    );
    const gw = await tiered(up.url, { connect_ms: 1000, first_byte_ms: 200, idle_ms: 5000, total_ms: 10000 });
    const r = await chat(gw, {}, {}, 'auto');
    expect(r.status, r.text).toBe(502);
    expect(r.json.error?.message).toContain('first_byte_timeout');
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(1);
    expect(up.received).toHaveLength(1);
  });

  // README: the router call "is bounded by timeout_ms (and by routing.total_timeout_ms)": a router call that
  // would outlast the request's whole budget ends at it, and the request answers 504 (budget spent) rather than
  // hanging until router.timeout_ms; the router's upstream is not charged for the request's clock.
  it('router.timeout_ms longer than total_timeout_ms: 504 at the request budget, breaker not charged', async () => {
    const up = track(await startMock(() => undefined));
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['a/m'] },
            default_tier: 'fast',
            router: { tier: 'fast', timeout_ms: 5000 },
          },
        },
        routing: { total_timeout_ms: 600 },
      }),
    );
    const t0 = performance.now();
    const r = await chat(gw, {}, {}, 'auto');
    const ms = performance.now() - t0;
    expect(r.status, r.text).toBe(504);
    expect(r.json.error?.type).toBe('timeout');
    expect(r.headers['x-should-retry']).toBe('false');
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(ms).toBeLessThan(4000); // generous: far short of router.timeout_ms (5 s)
    await sleep(50);
    expect((await upstreamAt(gw.url, 'a/m')).breaker.consecutive_failures).toBe(0);
  });
});

describe('open_ms after a run of timeouts', () => {
  // SPEC §2 breaker: the trip cause (timeouts) is kept and shown; while open the upstream is skipped and, every
  // breaker open, the answer is 503 no_available_upstream with Retry-After and x-router-attempts: 0 (README).
  it('a breaker opened by a first_byte_timeout: 503 + Retry-After within open_ms, trip cause timeouts', async () => {
    const a = track(await startMock(() => undefined));
    const gw = await gatewayOver(
      {
        a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 200, idle_ms: 5000, total_ms: 10000 } },
      },
      {
        circuit_breaker: {
          failure_threshold: 1,
          open_ms: 1500,
          max_open_ms: 3000,
          half_open_probes: 1,
          success_threshold: 1,
        },
      },
    );
    const first = await chat(gw);
    expect(first.status, first.text).toBe(504);
    expect(first.headers['x-router-trail']).toBe('a/m=first_byte_timeout');
    await sleep(50);
    const second = await chat(gw);
    expect(second.status, second.text).toBe(503);
    expect(second.json.error?.code ?? second.json.error?.type).toBeDefined();
    expect(Number(second.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(Number(second.headers['retry-after'])).toBeLessThanOrEqual(2);
    expect(second.headers['x-router-attempts']).toBe('0');
    expect(second.headers['x-should-retry']).toBeUndefined();
    const br = (await upstreamAt(gw.url, 'a/m')).breaker;
    expect({ state: br.state, cause: br.trip_cause }).toEqual({ state: 'open', cause: 'timeouts' });
    expect(a.received).toHaveLength(1);
  });

  // SPEC §2: a stream that goes quiet before its first content is failed over invisibly (idle_ms before the
  // commit is a pre-commit failure like any other).
  it('a stream that sends only its role chunk, then idles past idle_ms, fails over invisibly', async () => {
    const a = track(
      await startMock((req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame(req.body.model, { role: 'assistant', content: '' }));
      }),
    );
    const b = track(await startMock((req, res) => answerChat(res, req.body, 'from b')));
    const gw = await gatewayOver({
      a: { url: a.url, timeouts: { connect_ms: 1000, first_byte_ms: 2000, idle_ms: 300, total_ms: 10000 } },
      b: { url: b.url },
    });
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toBe('a/m=idle_timeout');
    const ev = events(r.text);
    expect(ev[ev.length - 1]).toBe('[DONE]');
    expect(ev.filter((e) => e.includes('"role"')).length).toBe(1); // a's held-back role chunk never went out
  });
});

describe('server.request_timeout_ms is for the request, not the answer', () => {
  // README: "headers and body must arrive within this": an answer streamed for longer than it is not cut.
  it('a stream lasting longer than request_timeout_ms completes with [DONE]', async () => {
    const a = track(
      await startMock(async (req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (let i = 0; i < 14 && !res.destroyed; i++) {
          res.write(chunkFrame(req.body.model, { content: `p${i} ` }));
          await sleep(100);
        }
        res.end(`${chunkFrame(req.body.model, {}, 'stop')}data: [DONE]\n\n`);
      }),
    );
    const gw = await gatewayOver({ a: { url: a.url } }, { server: { request_timeout_ms: 1000 } });
    const r = await chat(gw, { stream: true });
    expect(r.status).toBe(200);
    const ev = events(r.text);
    expect(ev[ev.length - 1]).toBe('[DONE]');
    expect(ev.filter((e) => e.includes('"p')).length).toBe(14);
  });
});
