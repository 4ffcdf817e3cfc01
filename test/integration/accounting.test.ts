import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach, closeableServer } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { parseProm, select } from '../helpers/prom-text.js';
import { mulberry32 } from '../helpers/random.js';

/**
 * Accounting invariants (SPEC §2, §4, §5): whatever happens to a request (client aborts at any point,
 * upstream faults, failover, deadlines, reloads), once every request has ended the gateway's bookkeeping is
 * back at rest: nothing in flight, no probe permit held, each request counted and logged once, each
 * attempt counted once, no timer or socket left growing.
 */
const track = closeAfterEach();

/**
 * The tests' own HTTP client, closed after each test before the gateway (hooks run last-registered first):
 * its idle keep-alive sockets would otherwise hold the gateway's close for the client's 4 s keep-alive.
 */
let agent = new Agent();
afterEach(async () => {
  await agent.close();
  agent = new Agent();
});

/**
 * What a fault upstream does with a request, read from the last user message: `name=fault` pairs
 * separated by commas, so each upstream of a failover chain can be told its own part
 * (`a=hang,b=ok`); an upstream not named answers `ok`.
 */
type Fault =
  | 'ok' // a short answer (JSON or stream)
  | 'slow' // a stream of 40 content chunks, 15 ms apart (clients abort mid-stream)
  | 'big' // a stream of 64 KiB chunks for ~8 MiB (back-pressure on a client that does not read)
  | 'hang' // no headers, ever
  | 'stall' // 200 and the role chunk, then silence
  | 'reset' // the socket destroyed before any byte
  | 'drop' // a stream cut after 2 content chunks
  | 'e500'
  | 'e429'
  | 'e400';

interface FaultUpstream {
  readonly name: string;
  readonly url: string;
  /** Requests whose response has not finished nor been cut. */
  live(): number;
  readonly seen: Fault[];
  close(): Promise<void>;
}

function faultOf(name: string, body: unknown): Fault {
  const b = body as { messages?: { content?: unknown }[]; input?: unknown } | undefined;
  const msgs = b?.messages ?? [];
  const text = String(msgs[msgs.length - 1]?.content ?? b?.input ?? '');
  // Anywhere in the text: an LLM router call carries the user's message inside its own prompt.
  const m = new RegExp(`(?:^|[\\s,])${name}=(\\w+)`).exec(text);
  return (m?.[1] as Fault | undefined) ?? 'ok';
}

function chunk(content: string | undefined, role = false): string {
  const delta = role ? { role: 'assistant', content: '' } : { content };
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
}

const FINAL =
  `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\n` +
  'data: [DONE]\n\n';

async function faultUpstream(name: string): Promise<FaultUpstream> {
  let live = 0;
  const seen: Fault[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number, fn: () => void): void => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };
  const handle = (req: IncomingMessage, res: ServerResponse, text: string): void => {
    let body: { stream?: boolean } | undefined;
    try {
      body = JSON.parse(text) as { stream?: boolean };
    } catch {
      body = undefined;
    }
    const fault = faultOf(name, body);
    seen.push(fault);
    live++;
    let counted = true;
    const settle = (): void => {
      if (counted) live--;
      counted = false;
    };
    res.on('close', settle);
    const stream = body?.stream === true;
    const error = (status: number): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `fault ${status}`, type: 'x', param: null, code: null } }));
    };
    switch (fault) {
      case 'hang':
        return;
      case 'reset':
        req.socket.destroy();
        return;
      case 'e500':
        return error(500);
      case 'e429':
        return error(429);
      case 'e400':
        return error(400);
      default:
        break;
    }
    if (!stream) {
      if (fault === 'stall') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"id":');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'c',
          object: 'chat.completion',
          created: 1,
          model: 'm',
          choices: [
            { index: 0, message: { role: 'assistant', content: `hi from ${name}` }, finish_reason: 'stop' },
          ],
          usage: { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 },
        }),
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(chunk(undefined, true));
    if (fault === 'stall') return;
    if (fault === 'ok') {
      res.end(chunk('hi ') + chunk(`from ${name}`) + FINAL);
      return;
    }
    if (fault === 'drop') {
      res.write(chunk('one ') + chunk('two '));
      later(5, () => req.socket.destroy());
      return;
    }
    if (fault === 'big') {
      const piece = chunk('x'.repeat(64 * 1024));
      let n = 0;
      const pump = (): void => {
        while (n < 128) {
          n++;
          if (!res.write(piece)) return void res.once('drain', pump);
        }
        res.end(FINAL);
      };
      pump();
      return;
    }
    // slow
    let n = 0;
    const tick = (): void => {
      if (res.destroyed) return;
      if (n++ >= 40) return void res.end(FINAL);
      res.write(chunk(`t${n} `));
      later(15, tick);
    };
    tick();
  };
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (text += d));
    req.on('end', () => handle(req, res, text));
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const closer = closeableServer(server);
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    live: () => live,
    seen,
    close: async () => {
      for (const t of timers) clearTimeout(t);
      await closer.close();
    },
  };
}

/** Tight bounds for fault upstreams, so every fault ends in well under a second. */
const TIGHT = { connect_ms: 500, first_byte_ms: 400, idle_ms: 400, total_ms: 4000 };

function providers(ups: readonly FaultUpstream[], extra: Record<string, unknown> = {}) {
  return ups.map((u) => simProvider(u.name, u.url, ['m'], { timeouts: TIGHT, ...extra }));
}

interface StatusView {
  upstreams: {
    id: string;
    in_flight: number;
    breaker: { state: string; probes_in_flight: number };
    pool: { connected: number; free: number; pending: number; running: number; size: number };
  }[];
}

async function status(gw: TestGateway): Promise<StatusView> {
  const res = await request(`${gw.url}/router/status`, { dispatcher: agent });
  return (await res.body.json()) as StatusView;
}

async function metrics(gw: TestGateway) {
  return parseProm(await (await request(`${gw.url}/metrics`, { dispatcher: agent })).body.text());
}

function sum(samples: ReturnType<typeof parseProm>, name: string, labels: Record<string, string> = {}) {
  return select(samples, name, labels).reduce((n, s) => n + s.value, 0);
}

/**
 * The x-request-id of each request the gateway's HTTP server parsed. A client that aborts at once may do so
 * before its request reaches the gateway (a reset discards the bytes not yet read, seen under CPU load):
 * that one is not the gateway's to count. Every one that reached it is.
 */
function reachedIds(gw: TestGateway): Set<string> {
  const ids = new Set<string>();
  gw.app.server.on('request', (req: IncomingMessage) => {
    if (req.url?.startsWith('/v1/')) ids.add(String(req.headers['x-request-id']));
  });
  return ids;
}

/**
 * Waits until the gateway is at rest after `requests` routed requests (each with its own x-request-id):
 * nothing in flight (status and gauge), no probe permit held, no pool request running or queued, every
 * request counted once in llm_router_requests_total and logged once. Returns the request lines.
 */
async function atRest(
  gw: TestGateway,
  expected: number | (() => number),
): Promise<Record<string, unknown>[]> {
  return vi.waitFor(
    async () => {
      const requests = typeof expected === 'number' ? expected : expected();
      const st = await status(gw);
      for (const u of st.upstreams) {
        expect(u.in_flight, `${u.id} in_flight`).toBe(0);
        expect(u.breaker.probes_in_flight, `${u.id} probes`).toBe(0);
        expect(u.pool.running, `${u.id} pool running`).toBe(0);
        expect(u.pool.pending, `${u.id} pool pending`).toBe(0);
      }
      const m = await metrics(gw);
      for (const s of select(m, 'llm_router_inflight_requests'))
        expect(s.value, `gauge ${JSON.stringify(s.labels)}`).toBe(0);
      expect(sum(m, 'llm_router_requests_total')).toBe(requests);
      const lines = gw.logs.filter((l) => l.msg === 'request');
      expect(lines).toHaveLength(requests);
      expect(new Set(lines.map((l) => l.reqId)).size).toBe(requests);
      return lines;
    },
    { timeout: 8_000, interval: 25 },
  );
}

/** Attempts the request lines report, less those the client cut (not counted against any upstream). */
function attemptsCounted(lines: readonly Record<string, unknown>[]): number {
  let n = 0;
  for (const l of lines) {
    n += Number(l.attempts ?? 0);
    const trail = typeof l.trail === 'string' ? l.trail : '';
    for (const t of trail.split(',')) if (t.endsWith('=client_closed')) n--;
  }
  return n;
}

const body = (model: string, content: string, stream = false) =>
  JSON.stringify({ model, stream, messages: [{ role: 'user', content }] });

/** A POST through undici that aborts `abortAfterMs` in (or never); resolves however it ended. */
async function post(
  gw: TestGateway,
  id: string,
  payload: string,
  o: { abortAfterMs?: number; abortAfterHeadersMs?: number; dispatcher?: Agent; signal?: AbortSignal } = {},
): Promise<{ status: number | undefined; text: string; error?: unknown }> {
  const ac = new AbortController();
  o.signal?.addEventListener('abort', () => ac.abort());
  let timer = o.abortAfterMs === undefined ? undefined : setTimeout(() => ac.abort(), o.abortAfterMs);
  try {
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': id },
      body: payload,
      signal: ac.signal,
      dispatcher: o.dispatcher ?? agent,
    });
    // A stream's headers go at its commit: gone after that, whatever the machine's load.
    if (o.abortAfterHeadersMs !== undefined) timer = setTimeout(() => ac.abort(), o.abortAfterHeadersMs);
    const text = await res.body.text();
    return { status: res.statusCode, text };
  } catch (error) {
    return { status: undefined, text: '', error };
  } finally {
    clearTimeout(timer);
  }
}

/** A raw socket that sends a whole request and is destroyed at once (or after `ms`). */
function rawAbort(gw: TestGateway, id: string, payload: string, ms = 0): Promise<void> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve) => {
    const s = connect(Number(port), hostname, () => {
      s.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
          `x-request-id: ${id}\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`,
      );
      if (ms === 0) s.destroy();
      else setTimeout(() => s.destroy(), ms);
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve());
  });
}

describe('an attempt waiting for a pool slot (max_concurrency reached)', () => {
  for (const stream of [false, true]) {
    it(`ends when its client goes away, not when the slot frees (stream: ${stream})`, async () => {
      const a = track(await faultUpstream('a'));
      const gw = track(
        await startGateway({
          providers: providers([a], {
            max_concurrency: 1,
            timeouts: { ...TIGHT, first_byte_ms: 10_000, total_ms: 10_000 },
          }),
          routes: { r: { targets: ['a/m'] } },
        }),
      );
      // q1 holds the only connection until its client gives up, well after q2's.
      const hold = new AbortController();
      const first = post(gw, 'q1', body('r', 'a=hang', stream), { signal: hold.signal });
      await vi.waitFor(() => expect(a.live()).toBe(1));
      const second = await post(gw, 'q2', body('r', 'a=ok', stream), { abortAfterMs: 50 });
      expect(second.error).toBeDefined();
      // q2 ends when its client leaves, while q1 still holds the connection: it does not stay in flight (its
      // bounds not running) until the slot frees.
      await vi.waitFor(
        async () => {
          const st = await status(gw);
          expect(st.upstreams[0]!.in_flight).toBe(1);
          expect(gw.logs.filter((l) => l.msg === 'request').map((l) => l.reqId)).toEqual(['q2']);
        },
        { timeout: 3_000 },
      );
      hold.abort();
      await first;
      await atRest(gw, 2);
      expect(a.seen).toEqual(['hang']); // q2 was never sent
    });
  }

  it('is bounded by first_byte_ms from dispatch, the wait for a slot included', async () => {
    const a = track(await faultUpstream('a'));
    const gw = track(
      await startGateway({
        providers: providers([a], {
          max_concurrency: 1,
          timeouts: { ...TIGHT, first_byte_ms: 300, idle_ms: 10_000, total_ms: 10_000 },
        }),
        routes: { r: { targets: ['a/m'] } },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    // q1 is answered (a 200 and its role chunk), then holds the only connection in silence.
    const hold = new AbortController();
    const first = post(gw, 'q1', body('r', 'a=stall', true), { signal: hold.signal });
    await vi.waitFor(() => expect(a.live()).toBe(1));
    const second = await post(gw, 'q2', body('r', 'a=ok'), { abortAfterMs: 3_000 });
    expect(second.status).toBe(504); // while q1 still holds the only connection
    hold.abort();
    await first;
    await atRest(gw, 2);
    expect(a.seen).toEqual(['stall']);
  });
});

describe('a config reload while a request is failing over', () => {
  it('the request fails over on its own config, and the upstream it moves to is not charged for the swap', async () => {
    const a = track(await faultUpstream('a'));
    const b = track(await faultUpstream('b'));
    const config = (bIdleMs: number) =>
      JSON.stringify({
        providers: [
          simProvider('a', a.url, ['m'], { timeouts: TIGHT }),
          simProvider('b', b.url, ['m'], { timeouts: { ...TIGHT, idle_ms: bIdleMs } }),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
        circuit_breaker: { failure_threshold: 100 },
      });
    const gw = track(await startGateway(config(400)));
    let idleMs = 400;
    for (const stream of [false, true]) {
      const pending = post(gw, `reload-${stream}`, body('r', 'a=hang', stream));
      await vi.waitFor(() => expect(a.live()).toBe(1));
      // b's connection settings change: the new config has a new pool for b, the old config's is retired
      // while this request, on the old config, still has b to fail over to.
      gw.gateway.reload(parseConfigText(config((idleMs += 50)), {}));
      const r = await pending;
      // b is reached through the old config's pool, retired but not closed under a request still using it:
      // no 502 "b/m: upstream_failure after 0 ms" charged to b.
      expect(r.status, r.text).toBe(200);
      expect(r.text).toContain('from b');
    }
    const lines = await atRest(gw, 2);
    expect(lines.map((l) => l.trail)).toEqual(['a/m=first_byte_timeout', 'a/m=first_byte_timeout']);
    const m = await metrics(gw);
    expect(sum(m, 'llm_router_upstream_attempts_total', { provider: 'b', outcome: 'error' })).toBe(0);
    expect(sum(m, 'llm_router_upstream_attempts_total', { provider: 'b', outcome: 'success' })).toBe(2);
    const st = await status(gw);
    expect(st.upstreams.find((u) => u.id === 'b/m')?.breaker).toMatchObject({
      state: 'closed',
      consecutive_failures: 0,
    });
  });
});

/** A raw socket that sends a request, reads nothing (the gateway meets back-pressure) and is destroyed. */
function stalledReader(
  gw: TestGateway,
  id: string,
  payload: string,
  destroyAfterMs: number,
): Promise<number> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve) => {
    let got = 0;
    const s = connect(Number(port), hostname, () => {
      s.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
          `x-request-id: ${id}\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`,
      );
      // Read the first bytes (the stream committed), then stop reading.
      s.once('data', (d: Buffer) => {
        got += d.length;
        s.pause();
        setTimeout(() => s.destroy(), destroyAfterMs);
      });
    });
    s.setNoDelay(true);
    s.on('error', () => undefined);
    s.on('close', () => resolve(got));
  });
}

describe('client aborts at chosen moments, on a failover route', () => {
  it('each request is counted and logged once, nothing stays in flight, no client abort is charged', async () => {
    const a = track(await faultUpstream('a'));
    const b = track(await faultUpstream('b'));
    const gw = track(
      await startGateway({
        providers: providers([a, b]),
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    const reached = reachedIds(gw);
    let n = 0;
    const id = (what: string) => `${++n}-${what}`;
    const runs: Promise<unknown>[] = [];
    // The two failover requests are cut once both reached b (whatever the machine's load): each has then
    // failed on a first, which a's breaker counts.
    const failoverCut = new AbortController();
    runs.push(
      vi
        .waitFor(() => expect(b.seen.filter((f) => f === 'hang')).toHaveLength(2), { timeout: 5000 })
        .finally(() => failoverCut.abort()),
    );
    for (const stream of [false, true]) {
      // Gone as soon as the request is written: before or around the routing decision.
      runs.push(rawAbort(gw, id(`instant-${stream}`), body('r', 'a=slow,b=slow', stream)));
      // While waiting for a's first byte.
      runs.push(post(gw, id(`first-byte-${stream}`), body('r', 'a=hang', stream), { abortAfterMs: 100 }));
      // While waiting for b's first byte, after a failed over (a reset, then b hangs).
      runs.push(
        post(gw, id(`failover-${stream}`), body('r', 'a=reset,b=hang', stream), {
          signal: failoverCut.signal,
        }),
      );
      // While a's body stalls (JSON half sent, or a stream's role chunk only).
      runs.push(post(gw, id(`stalled-${stream}`), body('r', 'a=stall', stream), { abortAfterMs: 100 }));
    }
    // After the stream committed.
    runs.push(post(gw, id('committed'), body('r', 'a=slow', true), { abortAfterHeadersMs: 20 }));
    // While back-pressured: a client that stops reading a large stream.
    runs.push(stalledReader(gw, id('backpressure'), body('r', 'a=big', true), 150));
    // Upstream faults with the client staying: reset, 500, 429, 400, a cut stream, a stall past idle_ms.
    // The reset, the 500 and the cut stream fail over to b, which answers: a success that clears b's count.
    // b's own faults go after them, so its count is theirs whatever order the machine's load gives the rest.
    const reset = post(gw, id('reset'), body('r', 'a=reset'));
    const e500 = post(gw, id('e500-stream'), body('r', 'a=e500', true));
    const e429 = id('e429');
    const e400 = post(gw, id('e400'), body('r', 'a=e400', true));
    const drop = post(gw, id('drop'), body('r', 'a=drop', true));
    const stallBoth = id('stall-both');
    const bAnswered = Promise.all([reset, e500, drop]);
    runs.push(reset, e500, e400, drop);
    runs.push(
      bAnswered.then(() =>
        Promise.all([
          post(gw, e429, body('r', 'a=e429,b=e429')),
          post(gw, stallBoth, body('r', 'a=stall,b=stall', true)),
        ]),
      ),
    );
    await Promise.all(runs);

    // The two gone as soon as written may be gone before the gateway read them (reachedIds).
    const lines = await atRest(gw, () => reached.size);
    expect(reached.size).toBeGreaterThanOrEqual(n - 2);
    await vi.waitFor(() => expect(a.live() + b.live()).toBe(0));
    const m = await metrics(gw);
    // Every attempt counted once, under one outcome; the ones the client cut under none.
    expect(sum(m, 'llm_router_upstream_attempts_total')).toBe(attemptsCounted(lines));
    const byId = new Map(lines.map((l) => [String(l.reqId), l]));
    // A client gone before any answer is a 499 (nginx's "client closed request"); after a stream began, 200.
    for (const [rid, l] of byId) {
      const want = /committed|backpressure/.test(rid)
        ? 200
        : /first-byte|failover|stalled|instant/.test(rid)
          ? 499
          : undefined;
      if (want !== undefined && l.status !== want) throw new Error(`${rid}: ${JSON.stringify(l)}`);
    }
    expect(byId.get('9-committed')?.error).toBe('client_closed');
    expect(byId.get('10-backpressure')?.error).toBe('client_closed');
    // The breakers learnt only from the upstreams' own faults: a's reset, 500, 429, the cut stream and
    // the idle stall; b's 429 and idle stall. Client aborts and the 400 count for nothing.
    const st = await status(gw);
    const breaker = (id: string) => st.upstreams.find((u) => u.id === id)?.breaker;
    expect(breaker('a/m')).toMatchObject({ state: 'closed', consecutive_failures: 7 });
    expect(breaker('b/m')).toMatchObject({ state: 'closed', consecutive_failures: 2 });
  });
});

describe('half-open probe permits', () => {
  /** a's breaker opened by one 500, then waited into half-open. */
  async function halfOpen() {
    const a = track(await faultUpstream('a'));
    const gw = track(
      await startGateway({
        providers: providers([a]),
        routes: { r: { targets: ['a/m'] } },
        circuit_breaker: {
          failure_threshold: 1,
          open_ms: 150,
          max_open_ms: 150,
          half_open_probes: 1,
          success_threshold: 1,
        },
      }),
    );
    let n = 0;
    const reopen = async (): Promise<void> => {
      const r = await post(gw, `trip-${++n}`, body('r', 'a=e500'));
      if (r.status !== 502 && r.status !== 503) throw new Error(`trip: ${r.status} ${r.text}`);
      await vi.waitFor(async () => {
        const st = await status(gw);
        expect(st.upstreams[0]!.breaker.state).toBe('half_open');
      });
    };
    return { a, gw, reopen, trips: () => n };
  }

  it('a probe whose client goes away (waiting, mid-JSON, after the commit, back-pressured) frees its permit', async () => {
    const { a, gw, reopen, trips } = await halfOpen();
    await reopen();
    const cuts: Array<[string, () => Promise<unknown>]> = [
      ['first-byte', () => post(gw, 'p-first-byte', body('r', 'a=hang'), { abortAfterMs: 100 })],
      ['stream-first-byte', () => post(gw, 'p-sfb', body('r', 'a=hang', true), { abortAfterMs: 100 })],
      ['mid-json', () => post(gw, 'p-mid-json', body('r', 'a=stall'), { abortAfterMs: 100 })],
      ['committed', () => post(gw, 'p-committed', body('r', 'a=slow', true), { abortAfterMs: 120 })],
      ['backpressure', () => stalledReader(gw, 'p-backpressure', body('r', 'a=big', true), 100)],
      ['instant', () => rawAbort(gw, 'p-instant', body('r', 'a=slow', true))],
    ];
    for (const [what, cut] of cuts) {
      await cut();
      await vi.waitFor(async () => {
        const b = (await status(gw)).upstreams[0]!.breaker;
        expect(b.probes_in_flight, what).toBe(0);
        expect(b.state, what).toBe('half_open');
      });
    }
    // The next probe is admitted and closes the breaker.
    const ok = await post(gw, 'p-ok', body('r', 'a=ok'));
    expect(ok.status, ok.text).toBe(200);
    await atRest(gw, trips() + cuts.length + 1);
    expect((await status(gw)).upstreams[0]!.breaker.state).toBe('closed');
    expect(a.seen.filter((f) => f === 'ok')).toHaveLength(1);
  });

  it('a probe that fails (timeout, reset, cut stream, 429, 400) settles its permit: closed, reopened or half-open', async () => {
    const { gw, reopen, trips } = await halfOpen();
    let probes = 0;
    for (const [fault, stream, reopens] of [
      ['hang', false, true],
      ['reset', true, true],
      ['drop', true, true],
      ['e429', false, true],
      ['stall', true, true],
      ['e400', false, false],
    ] as const) {
      await reopen();
      const r = await post(gw, `probe-${fault}`, body('r', `a=${fault}`, stream));
      probes++;
      const expected = { hang: 504, reset: 502, drop: 200, e429: 429, stall: 504, e400: 400 }[fault];
      expect(r.status, fault).toBe(expected);
      await vi.waitFor(async () => {
        const b = (await status(gw)).upstreams[0]!.breaker;
        expect(b.probes_in_flight, fault).toBe(0);
        expect(b.state, fault).toBe(reopens ? 'open' : 'half_open');
      });
      if (reopens)
        await vi.waitFor(async () => {
          expect((await status(gw)).upstreams[0]!.breaker.state).toBe('half_open');
        });
    }
    const ok = await post(gw, 'p-ok', body('r', 'a=ok'));
    expect(ok.status, ok.text).toBe(200);
    await atRest(gw, trips() + probes + 1);
  });
});

describe('tiered route: the client goes away while the LLM router call runs', () => {
  async function setup() {
    const rt = track(await faultUpstream('rt'));
    const bal = track(await faultUpstream('bal'));
    const gw = track(
      await startGateway({
        providers: providers([rt, bal]),
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'] },
            rules: [{ name: 'never', if: { last_user_message: '^never$' }, tier: 'fast' }],
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 2_000, cache_ttl_s: 0 },
          },
        },
        circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
      }),
    );
    return { rt, bal, gw };
  }

  it('counted and logged once; the router upstream and the tier upstream are not charged', async () => {
    const { rt, bal, gw } = await setup();
    await post(gw, 't1', body('auto', 'rt=hang'), { abortAfterMs: 100 });
    await post(gw, 't2', body('auto', 'rt=hang', true), { abortAfterMs: 100 });
    await rawAbort(gw, 't3', body('auto', 'rt=slow'));
    const lines = await atRest(gw, 3);
    await vi.waitFor(() => expect(rt.live() + bal.live()).toBe(0));
    const st = await status(gw);
    for (const u of st.upstreams)
      expect(u.breaker, u.id).toMatchObject({ state: 'closed', consecutive_failures: 0 });
    const m = await metrics(gw);
    expect(sum(m, 'llm_router_upstream_attempts_total', { outcome: 'error' })).toBe(0);
    expect(sum(m, 'llm_router_upstream_attempts_total', { outcome: 'timeout' })).toBe(0);
    expect(lines.every((l) => l.error === 'client_closed')).toBe(true);
  });

  it('still counted and logged once when the tier it then falls back to has no upstream left', async () => {
    const { bal, gw } = await setup();
    // balanced's only upstream opens its breaker (one 500; failure_threshold 1).
    const trip = await post(gw, 'trip', body('bal/m', 'bal=e500'));
    expect(trip.status).toBe(502);
    await post(gw, 'gone', body('auto', 'rt=hang'), { abortAfterMs: 100 });
    const lines = await atRest(gw, 2);
    // The second has its line and its count, although its error has no response left to go to: its client
    // left while the router was asked, so a 499, nothing routed for it (it had been planned, and refused 503).
    expect(lines.map((l) => [l.reqId, l.status])).toEqual([
      ['trip', 502],
      ['gone', 499],
    ]);
    expect(bal.seen).toEqual(['e500']);
  });
});

describe('embeddings', () => {
  it('a client gone while waiting, or after a failover, leaves nothing in flight and is counted once', async () => {
    const a = track(await faultUpstream('a'));
    const b = track(await faultUpstream('b'));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, [{ name: 'e', capabilities: ['embeddings'] }], { timeouts: TIGHT }),
          simProvider('b', b.url, [{ name: 'e', capabilities: ['embeddings'] }], { timeouts: TIGHT }),
        ],
        routes: { emb: { strategy: 'priority', targets: ['a/e', 'b/e'] } },
      }),
    );
    const embed = (id: string, input: string, abortAfterMs?: number) => {
      const ac = new AbortController();
      const t = abortAfterMs === undefined ? undefined : setTimeout(() => ac.abort(), abortAfterMs);
      return request(`${gw.url}/v1/embeddings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': id },
        body: JSON.stringify({ model: 'emb', input }),
        signal: ac.signal,
        dispatcher: agent,
      })
        .then(async (r) => ({ status: r.statusCode, text: await r.body.text() }))
        .catch(() => undefined)
        .finally(() => clearTimeout(t));
    };
    await Promise.all([
      embed('e-wait', 'a=hang', 100),
      embed('e-failover', 'a=reset,b=hang', 100),
      embed('e-stall', 'a=stall', 100),
      embed('e-timeout', 'a=hang,b=reset'),
    ]);
    const lines = await atRest(gw, 4);
    await vi.waitFor(() => expect(a.live() + b.live()).toBe(0));
    const m = await metrics(gw);
    expect(sum(m, 'llm_router_upstream_attempts_total')).toBe(attemptsCounted(lines));
    const st = await status(gw);
    const fails = (id: string) => st.upstreams.find((u) => u.id === id)?.breaker;
    expect(fails('a/e')).toMatchObject({ consecutive_failures: 2 }); // the reset, the first-byte timeout
    expect(fails('b/e')).toMatchObject({ consecutive_failures: 1 }); // the reset
  });
});

describe('a seeded random batch: 200 requests, 20 at a time, random faults and abort points', () => {
  it('leaves the gateway at rest, each request counted once, each attempt once, nothing growing', async () => {
    const ups = [await faultUpstream('a'), await faultUpstream('b'), await faultUpstream('c')].map(track);
    const gw = track(
      await startGateway({
        providers: providers(ups, { timeouts: { ...TIGHT, first_byte_ms: 250, idle_ms: 250 } }),
        routes: {
          r: { strategy: 'priority', targets: ['a/m', 'b/m', 'c/m'] },
          rr: { strategy: 'round-robin', targets: ['a/m', 'b/m', 'c/m'] },
        },
        routing: { max_attempts: 3, total_timeout_ms: 600 },
        // Trips and half-opens within the batch: probes are taken, settled and (if leaked) stuck.
        circuit_breaker: {
          failure_threshold: 3,
          open_ms: 100,
          max_open_ms: 200,
          half_open_probes: 1,
          success_threshold: 1,
        },
      }),
    );
    const random = mulberry32(0x5eed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const faults: Fault[] = [
      'ok',
      'ok',
      'ok',
      'slow',
      'hang',
      'stall',
      'reset',
      'drop',
      'e500',
      'e429',
      'e400',
      'big',
    ];
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const reached = reachedIds(gw);

    let sent = 0;
    const one = async (i: number): Promise<void> => {
      const stream = random() < 0.5;
      const content = ups.map((u) => `${u.name}=${pick(faults)}`).join(',');
      const payload = body(random() < 0.5 ? 'r' : 'rr', content, stream);
      const id = `batch-${i}`;
      sent++;
      const how = random();
      if (how < 0.15) return rawAbort(gw, id, payload);
      if (how < 0.25 && stream) return void (await stalledReader(gw, id, payload, 20 + random() * 100));
      if (how < 0.6) return void (await post(gw, id, payload, { abortAfterMs: Math.floor(random() * 300) }));
      await post(gw, id, payload);
    };
    const batch = async (from: number, n: number): Promise<void> => {
      for (let i = from; i < from + n; i += 20)
        await Promise.all(Array.from({ length: 20 }, (_, k) => one(i + k)));
    };

    await batch(0, 100);
    const first = await atRest(gw, () => reached.size);
    const timersAfterFirst = timers();
    await batch(100, 100);
    const lines = await atRest(gw, () => reached.size);
    expect(sent).toBe(200);
    expect(first.length).toBeGreaterThan(90); // the few aborted at once may never have reached it
    await vi.waitFor(() => expect(ups.reduce((n, u) => n + u.live(), 0)).toBe(0));

    const m = await metrics(gw);
    expect(sum(m, 'llm_router_upstream_attempts_total')).toBe(attemptsCounted(lines));
    // Every breaker can take a request again once its cooldown is over: no probe permit was left taken.
    await vi.waitFor(async () => {
      for (const u of (await status(gw)).upstreams) {
        expect(u.breaker.probes_in_flight, u.id).toBe(0);
        expect(u.breaker.state, u.id).not.toBe('open');
      }
    });
    for (let i = 0; i < 6; i++) {
      const r = await post(gw, `after-${i}`, body('rr', 'all ok'));
      expect(r.status, r.text).toBe(200);
    }
    await atRest(gw, () => reached.size);
    expect(reached.size).toBeGreaterThan(190);
    // Nothing grows with the requests: the second hundred left no more timers than the first, and the
    // gateway's pools hold no more connections than requests ever ran at once.
    await vi.waitFor(() => expect(timers()).toBeLessThanOrEqual(timersAfterFirst));
    for (const u of (await status(gw)).upstreams) expect(u.pool.connected, u.id).toBeLessThanOrEqual(20);
  });
});
