/**
 * Provider capacity (`providers[].max_concurrency`, README): connections to a provider are opened on demand up
 * to the limit, a stream holds one from first to last byte, and a request past the limit waits for one within
 * `first_byte_ms`, then fails over as `queue_timeout` without counting against the breaker. Rules held here:
 * - the routing decision knows a provider's pool is full: `least-busy` and `latency` send a request to an
 *   upstream that can take it now rather than to one where it would wait in the gateway's queue (two models
 *   of one provider share its connections, so one model's load fills the other's too);
 * - a request that waited in the queue and got its connection late still gives the upstream its own
 *   `first_byte_ms`: the upstream is not charged a first-byte timeout for time the request spent in our queue;
 * - a queued request whose client leaves is dropped from the queue: the freed connection goes to the next
 *   waiter, and the upstream never sees the abandoned one;
 * - `max_concurrency` bounds every connection to the provider: the passthrough's `/v1/*` requests and the
 *   connections a stream of the config before a reload still holds count against it too;
 * - a reload that raises `max_concurrency` gives new requests the new capacity at once.
 * Every upstream is a hand-written mock on loopback that holds its answers until the test releases them.
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway, type Posted, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startMock, type Received } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();

/**
 * A mock upstream steered by the last user message: `hold` answers once `release()` is called (a stream
 * sends its role chunk and first words at once, then holds its end), `delay:N` answers after N ms, anything
 * else answers at once. Every answer names the provider (`from NAME`).
 */
async function heldUpstream(name: string) {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let live = 0;
  let peak = 0;
  const mock = track(
    await startMock(async (req: Received, res: ServerResponse) => {
      live++;
      peak = Math.max(peak, live);
      res.on('close', () => live--);
      const said = lastUser(req.body);
      const stream = req.body.stream === true;
      const m = String(req.body.model);
      if (said === 'hold') {
        if (stream) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write(`data: ${JSON.stringify(chunk(m, { role: 'assistant', content: '' }))}\n\n`);
          res.write(`data: ${JSON.stringify(chunk(m, { content: `from ${name}` }))}\n\n`);
          await Promise.race([released, sleep(5_000)]);
          res.end(`data: ${JSON.stringify(chunk(m, {}, 'stop'))}\n\ndata: [DONE]\n\n`);
          return;
        }
        await Promise.race([released, sleep(5_000)]);
      } else if (said.startsWith('delay:')) {
        await sleep(Number(said.slice('delay:'.length)));
      }
      if (!res.destroyed) answerChat(res, req.body, `from ${name}`);
    }),
  );
  return {
    url: mock.url,
    received: mock.received,
    said: () => mock.received.map((r) => lastUser(r.body)),
    live: () => live,
    /** The most requests it was answering at once. */
    peak: () => peak,
    release: () => release(),
  };
}

function chunk(model: string, delta: Record<string, unknown>, finish: string | null = null) {
  return {
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model,
    choices: [{ index: 0, delta, finish_reason: finish }],
  };
}

function lastUser(body: Record<string, unknown>): string {
  const msgs = body.messages as { role: string; content: string }[] | undefined;
  return msgs?.at(-1)?.content ?? '';
}

function provider(
  name: string,
  url: string,
  opts: { max?: number; firstByteMs?: number; models?: string[] } = {},
): Record<string, unknown> {
  return {
    name,
    base_url: `${url}/v1`,
    max_concurrency: opts.max ?? 4096,
    timeouts: { connect_ms: 1000, first_byte_ms: opts.firstByteMs ?? 3000, idle_ms: 5000, total_ms: 10_000 },
    models: (opts.models ?? ['m']).map((m) => ({ name: m })),
  };
}

function ask(
  gw: TestGateway,
  model: string,
  said: string,
  opts: { stream?: boolean; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Posted> {
  return postChat(
    gw,
    { model, stream: opts.stream ?? false, messages: [{ role: 'user', content: said }] },
    { headers: opts.headers, signal: opts.signal },
  );
}

interface StatusUpstream {
  id: string;
  in_flight: number;
  breaker: { state: string; consecutive_failures: number };
  pool: { connected: number; pending: number; running: number };
}

async function status(gw: TestGateway): Promise<StatusUpstream[]> {
  const res = await fetch(`${gw.url}/router/status`);
  return ((await res.json()) as { upstreams: StatusUpstream[] }).upstreams;
}

async function upstreamAt(gw: TestGateway, id: string): Promise<StatusUpstream> {
  const u = (await status(gw)).find((x) => x.id === id);
  if (u === undefined) throw new Error(`no upstream ${id} in /router/status`);
  return u;
}

/** What a client saw of one answer: who served it and what failed first. */
function served(r: Posted): { status: number; provider: string | undefined; trail: string | undefined } {
  return {
    status: r.status,
    provider: r.headers['x-router-provider'],
    trail: r.headers['x-router-trail'] || undefined,
  };
}

describe('the routing decision knows a provider is at max_concurrency', () => {
  it('least-busy: 20 concurrent streams, p at max_concurrency 4 — none waits in p’s queue, q takes the rest', async () => {
    const p = await heldUpstream('p');
    const q = await heldUpstream('q');
    const gw = track(
      await startGateway({
        providers: [provider('p', p.url, { max: 4, firstByteMs: 400 }), provider('q', q.url)],
        routes: { r: { strategy: 'least-busy', targets: ['p/m', 'q/m'] } },
      }),
    );
    const streams: Promise<Posted>[] = [];
    for (let i = 0; i < 20; i++) streams.push(ask(gw, 'r', 'hold', { stream: true }));
    // Every stream is either running on an upstream or has given up on p's queue (first_byte_ms 400).
    await until('all 20 streams to reach an upstream', () => p.live() + q.live() >= 20, 3_000);
    await sleep(50);
    p.release();
    q.release();
    const rs = await Promise.all(streams);
    for (const r of rs) {
      expect(r.status, r.text.slice(0, 200)).toBe(200);
      expect(r.text).toContain('[DONE]');
    }
    const queued = rs.map((r) => r.headers['x-router-trail']).filter((t) => t !== undefined && t !== '');
    // p could run 4 of them at once: a fifth sent there waited 400 ms for nothing before q took it.
    expect({ queued, servedByP: rs.filter((r) => r.headers['x-router-provider'] === 'p').length }).toEqual({
      queued: [],
      servedByP: 4,
    });
  });

  it('least-busy: a model whose provider’s only connection is held by another model is not picked over a free upstream', async () => {
    const p = await heldUpstream('p');
    const q = await heldUpstream('q');
    const gw = track(
      await startGateway({
        providers: [
          provider('p', p.url, { max: 1, firstByteMs: 300, models: ['a', 'b'] }),
          provider('q', q.url),
        ],
        routes: { r: { strategy: 'least-busy', targets: ['p/b', 'q/m'] } },
      }),
    );
    // p/a holds p's one connection; p/b has nothing in flight of its own, but nowhere to send a request.
    const holding = ask(gw, 'p/a', 'hold', { stream: true });
    await until('p/a to hold p’s connection', () => p.live() === 1);
    const rs: Posted[] = [];
    for (let i = 0; i < 4; i++) rs.push(await ask(gw, 'r', `q${i}`));
    p.release();
    expect((await holding).status).toBe(200);
    expect(rs.map(served)).toEqual(
      Array.from({ length: 4 }, () => ({ status: 200, provider: 'q', trail: undefined })),
    );
    expect(p.said()).toEqual(['hold']);
  });

  it('latency: a measured fast upstream whose pool is full loses the request to a slower free one', async () => {
    const p = await heldUpstream('p');
    const q = await heldUpstream('q');
    const gw = track(
      await startGateway({
        providers: [provider('p', p.url, { max: 1, firstByteMs: 300 }), provider('q', q.url)],
        routes: { r: { strategy: 'latency', targets: ['p/m', 'q/m'] } },
        routing: { exploration_share: 0 },
      }),
    );
    // Measure both: p answers at once, q in ~60 ms.
    for (let i = 0; i < 4; i++) {
      expect((await ask(gw, 'r', 'fast', { headers: { 'x-router-provider': 'p' } })).status).toBe(200);
      expect((await ask(gw, 'r', 'delay:60', { headers: { 'x-router-provider': 'q' } })).status).toBe(200);
    }
    const holding = ask(gw, 'r', 'hold', { stream: true, headers: { 'x-router-provider': 'p' } });
    await until('a request to hold p’s only connection', () => p.live() === 1);
    const rs: Posted[] = [];
    for (let i = 0; i < 3; i++) rs.push(await ask(gw, 'r', `go${i}`));
    p.release();
    expect((await holding).status).toBe(200);
    // Each request sent to p would wait first_byte_ms (300 ms) in the gateway's queue, then go to q anyway.
    expect(rs.map(served)).toEqual(
      Array.from({ length: 3 }, () => ({ status: 200, provider: 'q', trail: undefined })),
    );
  });
});

describe('the first-byte wait of a request that queued for a connection', () => {
  it('a request that gets its connection late still has the upstream’s first_byte_ms: no first_byte_timeout charged to p', async () => {
    const p = await heldUpstream('p');
    const q = await heldUpstream('q');
    const gw = track(
      await startGateway({
        providers: [provider('p', p.url, { max: 1, firstByteMs: 500 }), provider('q', q.url)],
        routes: { r: { strategy: 'priority', targets: ['p/m', 'q/m'] } },
        circuit_breaker: { failure_threshold: 100 },
      }),
    );
    // The first request holds p's only connection for 400 ms; the second waits for it, then p answers it in
    // 250 ms — half its first_byte_ms.
    const first = ask(gw, 'p/m', 'delay:400');
    await until('the first request to reach p', () => p.received.length === 1);
    const second = await ask(gw, 'r', 'delay:250');
    expect((await first).status).toBe(200);
    await sleep(50);
    const pm = await upstreamAt(gw, 'p/m');
    expect({ ...served(second), pFailures: pm.breaker.consecutive_failures }).toEqual({
      status: 200,
      provider: 'p',
      trail: undefined,
      pFailures: 0,
    });
  });
});

describe('a queued request whose client leaves', () => {
  it('is dropped from the queue: the next waiter gets the connection, the upstream never sees the abandoned one', async () => {
    const p = await heldUpstream('p');
    const gw = track(
      await startGateway({
        providers: [provider('p', p.url, { max: 1, firstByteMs: 5000 })],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const holding = ask(gw, 'r', 'hold', { stream: true });
    await until('the first request to hold p’s connection', () => p.live() === 1);
    const leaver = new AbortController();
    const left = ask(gw, 'r', 'left', { signal: leaver.signal, stream: true }).catch((e: unknown) => e);
    // The leaver is queued first, so the waiter is behind it.
    await until('the leaver to be queued', async () => (await upstreamAt(gw, 'p/m')).in_flight === 2);
    const waiter = ask(gw, 'r', 'waiter');
    await until('both to be queued', async () => (await upstreamAt(gw, 'p/m')).in_flight === 3);
    leaver.abort();
    await left;
    await until('the leaver to be gone', async () => (await upstreamAt(gw, 'p/m')).in_flight === 2);
    p.release();
    const w = await waiter;
    expect(served(w)).toEqual({ status: 200, provider: 'p', trail: undefined });
    expect((await holding).status).toBe(200);
    await sleep(50);
    expect(p.said()).toEqual(['hold', 'waiter']);
    const pm = await upstreamAt(gw, 'p/m');
    expect({
      inFlight: pm.in_flight,
      pending: pm.pool.pending,
      failures: pm.breaker.consecutive_failures,
    }).toEqual({ inFlight: 0, pending: 0, failures: 0 });
  });
});

describe('max_concurrency counts every connection to the provider', () => {
  it('the passthrough provider’s /v1/* requests share its max_concurrency with routed requests', async () => {
    const p = await heldUpstream('p');
    const gw = track(
      await startGateway({
        server: { passthrough: 'p' },
        providers: [provider('p', p.url, { max: 1 })],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const holding = ask(gw, 'r', 'hold', { stream: true });
    await until('the stream to hold p’s only connection', () => p.live() === 1);
    const files = fetch(`${gw.url}/v1/files`, { headers: { authorization: 'Bearer k' } });
    await sleep(300);
    p.release();
    expect((await files).status).toBe(200);
    expect((await holding).status).toBe(200);
    // max_concurrency 1: "connections to the provider" — never two requests on it at once.
    expect(p.peak()).toBe(1);
  });
});

describe('a reload with requests holding connections', () => {
  it('a reload that only changes timeouts: a stream still holding the old pool’s connection counts against the limit', async () => {
    const p = await heldUpstream('p');
    const config = (idleMs: number) =>
      JSON.stringify({
        providers: [
          {
            ...provider('p', p.url, { max: 1 }),
            timeouts: { connect_ms: 1000, first_byte_ms: 3000, idle_ms: idleMs, total_ms: 10_000 },
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      });
    const gw = track(await startGateway(config(5000)));
    const holding = ask(gw, 'r', 'hold', { stream: true });
    await until('the stream to hold p’s only connection', () => p.live() === 1);
    // Only idle_ms changes: max_concurrency is still 1.
    gw.gateway.reload(parseConfigText(config(6000), {}));
    const next = ask(gw, 'r', 'next');
    await sleep(300);
    p.release();
    expect(served(await next)).toEqual({ status: 200, provider: 'p', trail: undefined });
    expect((await holding).status).toBe(200);
    expect(p.peak()).toBe(1);
  });

  it('raising it: a new request gets the new capacity at once while the old connection is still held', async () => {
    const p = await heldUpstream('p');
    const config = (max: number) =>
      JSON.stringify({
        providers: [provider('p', p.url, { max, firstByteMs: 400 })],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      });
    const gw = track(await startGateway(config(1)));
    const holding = ask(gw, 'r', 'hold', { stream: true });
    await until('the stream to hold p’s only connection', () => p.live() === 1);
    gw.gateway.reload(parseConfigText(config(4), {}));
    const rs = await Promise.all([ask(gw, 'r', 'n1'), ask(gw, 'r', 'n2')]);
    expect(rs.map(served)).toEqual([
      { status: 200, provider: 'p', trail: undefined },
      { status: 200, provider: 'p', trail: undefined },
    ]);
    p.release();
    const h = await holding;
    expect(h.status).toBe(200);
    expect(h.text).toContain('[DONE]');
  });
});
