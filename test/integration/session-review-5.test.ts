/**
 * Rules held for this session's gateway changes (pipelined turns, answers nobody takes, reload's fresh start
 * of a moved upstream, the slow-wait statistics, failover classification), each driven against hand-written
 * upstreams on loopback:
 *
 * - A request pipelined behind an answer waits its turn, whatever its path (chat, embeddings); one refused
 *   early (401) behind a pending answer is answered in order; one still waiting when shutdown's grace is over
 *   is ended (503) like the running ones, never sent upstream afterwards.
 * - A 404 that is no API's answer (HTML, a plain-text "404 page not found", an empty body) says nothing of
 *   the client's model: failed over. A JSON 404 (leading BOM or blanks included) stays the client's error.
 * - `"choices" : [ ]` is no answer whatever its spacing; OpenAI's 429 `insufficient_quota` is our account's
 *   credit, failed over, never a Retry-After.
 * - A wait charged to an upstream's first-token figure is a wait on the upstream: not one spent in the
 *   gateway's own pool queue, nor a JSON answer's generation time.
 * - restart-only settings are not applied by a reload, in part or whole.
 * - A reload that moves an upstream to another server starts it fresh on every replica of a Redis fleet.
 */
import type { ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { cutRunning } from '../../src/http/chat.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chunkFrame, sendJson, startMock } from '../helpers/mock-upstream.js';
import { describeWithRedis, startReplica } from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const MSGS = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
type Json = Record<string, unknown>;

function reload(gw: TestGateway, cfg: Json): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(cfg), {}));
}

async function socketTo(gw: TestGateway): Promise<Socket> {
  const { port } = new URL(gw.url);
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => {});
  track({ close: () => socket.destroy() });
  return socket;
}

function postHead(path: string, body: Json, headers: string[] = []): string {
  const text = JSON.stringify(body);
  return [
    `POST ${path} HTTP/1.1`,
    'host: 127.0.0.1',
    'content-type: application/json',
    `content-length: ${Buffer.byteLength(text)}`,
    ...headers,
    '',
    text,
  ].join('\r\n');
}

const statuses = (text: string): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);

async function chat(gw: TestGateway, body: Json = {}, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'r', messages: MSGS, ...body }),
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** A gateway over `name -> url` mocks, one priority route `r` over them in that order. */
async function gatewayOver(upstreams: Record<string, string>, extra: Json = {}): Promise<TestGateway> {
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

/** An SSE answer whose content starts at once and whose end comes `ms` later. */
function slowStream(res: ServerResponse, ms: number): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunkFrame('m', { role: 'assistant', content: 'a' }));
  const t = setTimeout(() => {
    res.end(`${chunkFrame('m', { content: 'b' })}${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
  }, ms);
  res.on('close', () => clearTimeout(t));
}

describe('pipelined requests take turns', () => {
  it('a 401 pipelined behind a running stream is answered after it, in order, and the stream is whole', async () => {
    const up = track(await startMock((_r, res) => slowStream(res, 400)));
    const gw = track(
      await startGateway({
        server: { api_keys: ['client-key-0001'] },
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const s = await socketTo(gw);
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('utf8')));
    s.write(
      postHead('/v1/chat/completions', { model: 'r', stream: true, messages: MSGS }, [
        'authorization: Bearer client-key-0001',
      ]) + postHead('/v1/chat/completions', { model: 'r', messages: MSGS }, ['authorization: Bearer wrong']),
    );
    await until('both answers', () => statuses(got).length === 2, 3000);
    expect(statuses(got)).toEqual(['200', '401']);
    const first = got.slice(0, got.indexOf('HTTP/1.1 401'));
    expect(first).toContain('data: [DONE]');
    expect(up.received).toHaveLength(1);
  });

  it('an embeddings request pipelined behind a running stream waits for it before going upstream', async () => {
    let streamEnded = false;
    let embeddingsWhileStreaming = false;
    const up = track(
      await startMock((r, res) => {
        if (r.path.endsWith('/embeddings')) {
          if (!streamEnded) embeddingsWhileStreaming = true;
          sendJson(res, 200, {
            object: 'list',
            data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
            model: 'e',
            usage: { prompt_tokens: 1, total_tokens: 1 },
          });
          return;
        }
        slowStream(res, 400);
        res.on('finish', () => (streamEnded = true));
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', up.url, ['m', { name: 'e', capabilities: ['embeddings'] }], { timeouts: RELAXED }),
        ],
        routes: { r: { targets: ['a/m'] }, emb: { targets: ['a/e'] } },
      }),
    );
    const s = await socketTo(gw);
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('utf8')));
    s.write(
      postHead('/v1/chat/completions', { model: 'r', stream: true, messages: MSGS }) +
        postHead('/v1/embeddings', { model: 'emb', input: 'x' }),
    );
    await until('both answers', () => statuses(got).length === 2, 3000);
    expect(statuses(got)).toEqual(['200', '200']);
    expect(embeddingsWhileStreaming, 'the embeddings call went upstream while the stream ahead ran').toBe(
      false,
    );
  });

  it('a request still waiting its turn when shutdown’s grace is over is ended with a 503, never sent upstream', async () => {
    // The stream never ends on its own: only shutdown's cut ends it (main.ts: draining, then cutRunning).
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(chunkFrame('m', { role: 'assistant', content: 'a' }));
        const t = setInterval(() => res.write(chunkFrame('m', { content: 'b' })), 100);
        res.on('close', () => clearInterval(t));
      }),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const sockets = new Set<Socket>();
    gw.app.server.on('connection', (sk: Socket) => sockets.add(sk));
    const s = await socketTo(gw);
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('utf8')));
    s.write(
      postHead('/v1/chat/completions', { model: 'r', stream: true, messages: MSGS }) +
        postHead('/v1/chat/completions', { model: 'r', stream: true, messages: MSGS }),
    );
    await until('the first stream upstream', () => up.received.length === 1);
    await until('the first stream to reach the client', () => got.includes('data: '));
    // What main.ts does at the end of shutdown's grace.
    gw.gateway.draining = true;
    cutRunning(gw.gateway, sockets);
    await sleep(400);
    expect(up.received.length, 'a request sent upstream after shutdown cut the running ones').toBe(1);
    const second = got.indexOf('HTTP/1.1', 1);
    if (second > 0) expect(got.slice(second)).toMatch(/^HTTP\/1\.1 503 /);
  });
});

describe('a 404 that is no API answer is failed over (the upstream’s path, not the client’s model)', () => {
  async function notFoundThenGood(send: (res: ServerResponse) => void) {
    const a = track(await startMock((_r, res) => send(res)));
    const b = track(await startMock((r, res) => answerChat(res, r.body, 'from b')));
    return { a, b, gw: await gatewayOver({ a: a.url, b: b.url }) };
  }

  it('an HTML 404 page (nginx) fails over to the next upstream', async () => {
    const { gw } = await notFoundThenGood((res) => {
      res.writeHead(404, { 'content-type': 'text/html' });
      res.end('\n<html><body><h1>404 Not Found</h1></body></html>');
    });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('a plain-text "404 page not found" (Go net/http, gin: Ollama and most Go proxies) fails over', async () => {
    const { gw } = await notFoundThenGood((res) => {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('404 page not found\n');
    });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('a 404 with an empty body (Envoy, a load balancer with no route) fails over', async () => {
    const { gw } = await notFoundThenGood((res) => {
      res.writeHead(404, { 'content-length': '0' });
      res.end();
    });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('a JSON 404 about the model, behind a BOM and blanks, stays the client’s error (no failover)', async () => {
    const { gw, b } = await notFoundThenGood((res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(
        '\uFEFF \n{"error":{"message":"The model `m` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}',
      );
    });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(404);
    expect(JSON.parse(r.text)).toMatchObject({ error: { code: 'model_not_found' } });
    expect(b.received).toHaveLength(0);
  });
});

describe('answers that are no answer, and our account’s credit', () => {
  it('`"choices" : [ ]` with blanks is no answer: failed over to the next upstream', async () => {
    const a = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          '{ "id" : "x", "object" : "chat.completion", "choices" : [ \n ], "usage" : {"prompt_tokens":1,"completion_tokens":0,"total_tokens":1} }',
        );
      }),
    );
    const b = track(await startMock((r, res) => answerChat(res, r.body, 'from b')));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('OpenAI’s 429 insufficient_quota on every upstream: no Retry-After to the client, and each was tried', async () => {
    const quota = (res: ServerResponse) =>
      sendJson(
        res,
        429,
        {
          error: {
            message: 'You exceeded your current quota, please check your plan and billing details.',
            type: 'insufficient_quota',
            param: null,
            code: 'insufficient_quota',
          },
        },
        { 'retry-after': '20' },
      );
    const a = track(await startMock((_r, res) => quota(res)));
    const b = track(await startMock((_r, res) => quota(res)));
    const gw = await gatewayOver({ a: a.url, b: b.url });
    const r = await chat(gw);
    expect(a.received).toHaveLength(1);
    expect(b.received).toHaveLength(1);
    expect(r.status, r.text).not.toBe(429);
    expect(r.headers['retry-after']).toBeUndefined();
  });
});

describe('the first-token figure learns only waits on the upstream', () => {
  const statsOf = (gw: TestGateway, id: string) => gw.gateway.runtime.upstreams.get(id)!.stats.snapshot();

  it('a client leaving while its request waits in the gateway’s own pool queue (max_concurrency) does not make the upstream slow', async () => {
    // The upstream's first token comes at once; each stream then lasts 1.5 s, holding the pool's one connection.
    const up = track(await startMock((_r, res) => slowStream(res, 1500)));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', up.url, ['m'], { timeouts: { ...RELAXED, total_ms: 10000 }, max_concurrency: 1 }),
        ],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    // Measured: one whole stream (first token at once).
    const warm = await chat(gw, { stream: true });
    expect(warm.status).toBe(200);
    const before = statsOf(gw, 'a/m').ttftMs ?? 0;
    expect(before).toBeLessThan(300);
    // One stream holds the only connection; a second waits in the pool's queue, and its client leaves.
    const holding = chat(gw, { stream: true }).catch(() => undefined);
    await until('the holding stream upstream', () => up.received.length === 2);
    const ac = new AbortController();
    const queued = request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', stream: true, messages: MSGS }),
      signal: ac.signal,
    }).catch(() => undefined);
    await sleep(800);
    expect(up.received, 'the queued request never reached the upstream').toHaveLength(2);
    ac.abort();
    await queued;
    await sleep(100);
    const after = statsOf(gw, 'a/m').ttftMs ?? 0;
    await holding;
    expect(after, `first-token figure ${before} -> ${after} ms from a wait in our own queue`).toBeLessThan(
      400,
    );
  });

  it('a JSON request its client gives up on mid-generation does not make a fast first token look slow', async () => {
    // Streams: first token at once, 20 tokens 10 ms apart. JSON: the same answer, whole after its generation.
    const up = track(
      await startMock((r, res) => {
        if (r.body.stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          let i = 0;
          const t = setInterval(() => {
            if (i < 20) res.write(chunkFrame('m', { content: `w${i++} ` }));
            else {
              clearInterval(t);
              res.end(`${chunkFrame('m', {}, 'stop')}data: [DONE]\n\n`);
            }
          }, 10);
          res.on('close', () => clearInterval(t));
          return;
        }
        const t = setTimeout(() => answerChat(res, r.body, 'long answer'), 2000);
        res.on('close', () => clearTimeout(t));
      }),
    );
    const gw = await gatewayOver({ a: up.url });
    for (let i = 0; i < 3; i++) expect((await chat(gw, { stream: true })).status).toBe(200);
    const before = statsOf(gw, 'a/m').ttftMs ?? 0;
    expect(before).toBeLessThan(200);
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSGS, max_tokens: 4000 }),
      signal: ac.signal,
    }).catch(() => undefined);
    await sleep(900);
    ac.abort();
    await pending;
    await sleep(100);
    const after = statsOf(gw, 'a/m').ttftMs ?? 0;
    expect(
      after,
      `first-token figure ${before} -> ${after} ms from a JSON answer still being generated`,
    ).toBeLessThan(450);
  });
});

describe('restart-only settings stay as they started', () => {
  it('server.request_timeout_ms changed by a reload (said to need a restart) does not cut a client pausing less than the started bound', async () => {
    const answer = JSON.stringify({
      id: 'c',
      object: 'chat.completion',
      created: 1,
      model: 'm',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: 'x'.repeat(24 * 1024 * 1024) },
          finish_reason: 'stop',
        },
      ],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    });
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(answer),
        });
        res.end(answer);
      }),
    );
    const cfg = (requestTimeoutMs: number): Json => ({
      server: { request_timeout_ms: requestTimeoutMs },
      providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
      routes: { r: { targets: ['a/m'] } },
    });
    const gw = track(await startGateway(cfg(20_000)));
    reload(gw, cfg(300));
    expect(gw.rawLogs()).toContain('request_timeout_ms');
    const s = await socketTo(gw);
    s.pause(); // a client busy elsewhere for a moment (a mobile app in the background for 1.5 s)
    let got = 0;
    let closed = false;
    s.on('data', (d: Buffer) => (got += d.length));
    s.on('close', () => (closed = true));
    s.write(postHead('/v1/chat/completions', { model: 'r', messages: MSGS }, ['connection: close']));
    await until('the upstream call', () => up.received.length === 1);
    await sleep(1500);
    s.resume();
    await until('the answer read to its end, or the connection cut', () => closed, 5000);
    expect(got, 'answer bytes read before the connection closed').toBeGreaterThan(answer.length);
  });
});

describeWithRedis('a reload that moves an upstream, on a Redis fleet', (redis) => {
  /** a/m on a server that fails, the server that fixes it, and a fleet's config pointing a/m at either. */
  async function movingUpstream() {
    const bad = track(
      await startMock((_r, res) =>
        sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } }),
      ),
    );
    const good = track(await startMock((r, res) => answerChat(res, r.body, 'fixed')));
    const prefix = `sr5-${process.pid}-${Date.now()}:`;
    const cfg = (url: string): Json => ({
      providers: [simProvider('a', url, ['m'], { timeouts: RELAXED })],
      routes: { r: { targets: ['a/m'] } },
      circuit_breaker: { failure_threshold: 1, open_ms: 30_000 },
      state: { backend: 'redis', url: redis.url, key_prefix: prefix },
    });
    return { bad, good, cfg };
  }

  it('a replica started on the fixed config does not adopt the old server’s open breaker', async () => {
    const { bad, good, cfg } = await movingUpstream();
    const one = await startReplica(track, cfg(bad.url));
    expect((await chat(one)).status).toBe(502); // a/m opens, fleet-wide
    await until('the open shared', () => one.gateway.runtime.upstreams.get('a/m')!.breaker.state === 'open');
    await sleep(200);
    // The operator fixes base_url: this replica starts a/m fresh (forgetChanged)...
    reload(one, cfg(good.url));
    const r1 = await chat(one);
    expect(r1.status, r1.text).toBe(200);
    // ...and a replica of the same rollout, started on the fixed config, should too.
    const two = await startReplica(track, cfg(good.url));
    await sleep(200);
    const r2 = await chat(two);
    expect(r2.status, `the new replica adopted the old server's open: ${r2.text}`).toBe(200);
  });

  it('the reloaded replica neither reopens the old server for the others nor adopts their open of it', async () => {
    const { bad, good, cfg } = await movingUpstream();
    const one = await startReplica(track, cfg(bad.url));
    const two = await startReplica(track, cfg(bad.url));
    expect((await chat(one)).status).toBe(502); // a/m opens on the broken server, fleet-wide
    await until(
      'two sees the open',
      () => two.gateway.runtime.upstreams.get('a/m')!.breaker.state === 'open',
    );
    const sentToBad = bad.received.length;
    // The rollout reaches replica one first: its a/m now points at the fixed server.
    reload(one, cfg(good.url));
    await sleep(300);
    // Replica two still serves the old config: its a/m is still the broken server, still to be skipped.
    const r2 = await chat(two);
    expect(bad.received.length, `two sent to the broken server again: ${r2.status} ${r2.text}`).toBe(
      sentToBad,
    );
    await sleep(300);
    // And replica one's fixed a/m is not benched by what the broken server does to replica two.
    const r1 = await chat(one);
    expect(r1.status, r1.text).toBe(200);
  });
});
