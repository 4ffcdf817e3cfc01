/**
 * The HTTP edges against SPEC §3/§4/§8 and README ("HTTP surface", "Failover and streams", "OpenAI-dialect
 * upstreams", "Metrics"): secrets kept out of passthrough error bodies and echoed answers, embeddings
 * failover past an answer without data, the upstream pool's queue (not charged to the breaker), auth on HEAD
 * and OPTIONS, /v1/models through the OpenAI SDK, idle connections closed by a reload, chat errors scrubbed
 * when split across writes, bounded param fitting, and the request log line. Every test runs on loopback
 * against hand-written upstreams.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import OpenAI from 'openai';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson } from '../helpers/mock-upstream.js';

const track = closeAfterEach();

interface Mock {
  readonly url: string;
  /** Requests seen: method, url, headers, raw body. */
  readonly seen: { method: string; url: string; headers: IncomingMessage['headers']; raw: string }[];
  /** Open connections to this upstream. */
  readonly sockets: Set<Socket>;
}

type Handler = (req: IncomingMessage, res: ServerResponse, raw: string, n: number) => void;

async function mock(handler: Handler): Promise<Mock> {
  const seen: Mock['seen'] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(parts).toString('utf8');
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, raw });
      handler(req, res, raw, seen.length - 1);
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, sockets };
}

async function gateway(config: Record<string, unknown>): Promise<TestGateway> {
  return track(await startGateway(config));
}

const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 1500, idle_ms: 1500, total_ms: 4000 };

function embeddingAnswer(raw: string): Record<string, unknown> {
  const body = JSON.parse(raw) as { model?: unknown };
  return {
    object: 'list',
    data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2, 0.3] }],
    model: String(body.model),
    usage: { prompt_tokens: 3, total_tokens: 3 },
  };
}

async function call(
  gw: TestGateway,
  method: 'GET' | 'POST' | 'HEAD' | 'OPTIONS',
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
) {
  const res = await request(`${gw.url}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('passthrough error bodies and echoed answers keep every secret back', () => {
  // SPEC §8 Secrets: "no configured secret ... ever appears in a response"; the gateway "scrubs every
  // configured secret from any upstream error body it relays". A relayed error body is cut at 64 KiB
  // (passthrough.ts sendScrubbed) at a chunk boundary, which may fall inside an echoed key: the key's first
  // characters at the end of the cut text, which no whole-key match finds, are kept back too.
  it('an error body cut at its 64 KiB bound does not end in the first half of the provider key', async () => {
    const key = 'sk-pt-0123456789abcdefghijABCDEFGHIJ-9876';
    const head = key.slice(0, 24);
    const up = await mock((_req, res) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.write('x'.repeat(64 * 1024 - head.length) + head);
      setTimeout(() => res.end(key.slice(head.length) + ' was refused'), 100);
    });
    const gw = await gateway({
      server: { passthrough: 'pt' },
      providers: [
        { name: 'pt', base_url: `${up.url}/v1`, api_key: key, timeouts: TIMEOUTS, models: [{ name: 'm' }] },
      ],
      routes: { r: { targets: ['pt/m'] } },
    });
    const res = await call(gw, 'POST', '/v1/files', { purpose: 'x' });
    expect(res.status).toBe(400);
    // Only the end of the cut text is looked at: the rest is 64 KiB of filler.
    const tail = res.text.slice(-200);
    expect(res.text.includes(key)).toBe(false);
    expect(tail).not.toContain(head.slice(0, 16));
  });

  // SPEC §8 Secrets, as above: an upstream whose JSON escapes `/` (PHP's json_encode, some Java encoders)
  // echoes a key with a slash as `sk\/...`; a client's JSON.parse turns it back into the key.
  it('an error body that echoes the key JSON-escaped (\\/) does not hand the client the key', async () => {
    const key = 'sk-pt/4242/SECRETsecret/77';
    const up = await mock((_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(`{"error":{"message":"invalid key ${key.replaceAll('/', '\\/')}","type":"auth"}}`);
    });
    const gw = await gateway({
      server: { passthrough: 'pt' },
      providers: [
        { name: 'pt', base_url: `${up.url}/v1`, api_key: key, timeouts: TIMEOUTS, models: [{ name: 'm' }] },
      ],
      routes: { r: { targets: ['pt/m'] } },
    });
    const res = await call(gw, 'GET', '/v1/files');
    expect(res.status).toBe(401);
    const parsed = JSON.parse(res.text) as { error: { message: string } };
    expect(parsed.error.message).not.toContain(key);
  });

  // SPEC §8 Secrets / README passthrough ("an answer that echoes them back has them masked"): a provider
  // key that is the start of another configured credential (a proxy token built on it) must not leave the
  // longer one's tail readable: the longer secret is masked whole, not left unmatched by a mask of the
  // shorter one inside it.
  it('an echoed answer masks a secret that contains another secret whole', async () => {
    const key = 'sk-pt-1234abcd';
    const token = `${key}-TAIL-SECRET-5678`;
    const up = await mock((req, res) => sendJson(res, 200, { echoed: req.headers }));
    const gw = await gateway({
      server: { passthrough: 'pt' },
      providers: [
        {
          name: 'pt',
          base_url: `${up.url}/v1`,
          api_key: key,
          headers: { 'x-proxy-token': token },
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { targets: ['pt/m'] } },
    });
    const res = await call(gw, 'GET', '/v1/anything');
    expect(res.status).toBe(200);
    expect(up.seen[0]?.headers['x-proxy-token']).toBe(token); // it was sent, and echoed
    expect(res.text).not.toContain(key);
    expect(res.text).not.toContain('TAIL-SECRET-5678');
  });
});

describe('embeddings', () => {
  // README "Failover and streams": "What is no answer in either form (a JSON object without `choices` ...)
  // is failed over as invalid_upstream_json"; an embeddings 200 that has no `data` list is no answer either
  // (the OpenAI SDK's `response.data` is undefined; LangChain's embedDocuments throws).
  it('a 200 without a data list fails over to the next embedding upstream', async () => {
    const bad = await mock((_req, res) => sendJson(res, 200, { object: 'list', model: 'x' }));
    const good = await mock((_req, res, raw) => sendJson(res, 200, embeddingAnswer(raw)));
    const emb = { name: 'e', capabilities: ['embeddings'] };
    const gw = await gateway({
      providers: [
        { name: 'bad', base_url: `${bad.url}/v1`, api_key: 'sk-bad-1', timeouts: TIMEOUTS, models: [emb] },
        { name: 'good', base_url: `${good.url}/v1`, api_key: 'sk-good-1', timeouts: TIMEOUTS, models: [emb] },
      ],
      routes: { embed: { strategy: 'priority', targets: ['bad/e', 'good/e'] } },
    });
    const res = await call(gw, 'POST', '/v1/embeddings', { model: 'embed', input: 'hello' });
    expect(res.status).toBe(200);
    expect((JSON.parse(res.text) as { data?: unknown[] }).data).toHaveLength(1);
    expect(res.headers['x-router-provider']).toBe('good');
  });
});

function chunk(delta: Record<string, unknown>, finish: string | null = null): string {
  const c = {
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [{ index: 0, delta, finish_reason: finish }],
  };
  return `data: ${JSON.stringify(c)}\n\n`;
}

function completion(text: string): Record<string, unknown> {
  return {
    id: 'x',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
  };
}

const HI = [{ role: 'user', content: 'hi' }];

describe('the upstream pool', () => {
  // README providers[].max_concurrency: "requests past it wait for a connection to free"; SPEC §2 circuit
  // breaker: it counts the upstream's failures. A request still queued in the gateway's own pool has not
  // reached the upstream, so its time out in the queue is not the upstream's: two requests queued behind one
  // long stream leave a healthy upstream's breaker closed, and the next request is served.
  it('requests queued behind max_concurrency do not open the breaker of a healthy upstream', async () => {
    const up = await mock((_req, res, raw) => {
      const body = JSON.parse(raw) as { stream?: boolean };
      if (body.stream !== true) return sendJson(res, 200, completion('ok'));
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunk({ content: 'hi' }));
      setTimeout(() => res.end(`${chunk({}, 'stop')}data: [DONE]\n\n`), 1500);
    });
    const gw = await gateway({
      providers: [
        {
          name: 'p',
          base_url: `${up.url}/v1`,
          api_key: 'sk-p-12345678',
          max_concurrency: 1,
          timeouts: { connect_ms: 500, first_byte_ms: 300, idle_ms: 3000, total_ms: 5000 },
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { targets: ['p/m'] } },
      circuit_breaker: { failure_threshold: 2 },
    });
    const streaming = call(gw, 'POST', '/v1/chat/completions', { model: 'r', stream: true, messages: HI });
    await sleep(150);
    const queued = await Promise.all([
      call(gw, 'POST', '/v1/chat/completions', { model: 'r', messages: HI }),
      call(gw, 'POST', '/v1/chat/completions', { model: 'r', messages: HI }),
    ]);
    expect((await streaming).status).toBe(200);
    // The upstream only ever saw the stream: the queued requests never reached it.
    expect(up.seen).toHaveLength(1);
    expect(queued.map((q) => q.text.includes('queue_timeout'))).toEqual([true, true]);
    const after = await call(gw, 'POST', '/v1/chat/completions', { model: 'r', messages: HI });
    const status = JSON.parse((await call(gw, 'GET', '/router/status')).text) as {
      upstreams: { breaker: { state: string } }[];
    };
    expect({
      queued: queued.map((q) => q.status),
      breaker: status.upstreams[0]?.breaker.state,
      after: after.status,
    }).toEqual({
      // Both really failed in the queue (a 200 would test nothing).
      queued: [504, 504],
      breaker: 'closed',
      after: 200,
    });
  });
});

describe('auth, /v1/models, reload, scrubbing, param fitting and the request log', () => {
  // SPEC §8 Auth: every /v1/* path needs a client key, /router/* the admin key and "no data" without
  // it; fastify's implicit HEAD routes and OPTIONS (no route) go through the same hook.
  it('HEAD and OPTIONS need the keys too, and a refused HEAD /router/status carries no data', async () => {
    const a = await mock((_req, res) => sendJson(res, 200, completion('ok')));
    const gw = await gateway({
      server: { api_keys: ['client-key-1234'], admin_key: 'admin-key-98765' },
      providers: [
        {
          name: 'a',
          base_url: `${a.url}/v1`,
          api_key: 'sk-a-1234567',
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { targets: ['a/m'] } },
    });
    const got = [];
    for (const [m, p] of [
      ['HEAD', '/v1/models'],
      ['HEAD', '/v1/models/r'],
      ['HEAD', '/router/status'],
      ['OPTIONS', '/v1/chat/completions'],
      ['OPTIONS', '/router/explain'],
    ] as const) {
      const r = await call(gw, m, p);
      got.push([m, p, r.status, r.text.includes('upstreams')]);
    }
    expect(got.map((g) => g[2])).toEqual([401, 401, 401, 401, 401]);
    expect(got.some((g) => g[3])).toBe(false);
    const ok = await call(gw, 'HEAD', '/router/status', undefined, { 'x-admin-key': 'admin-key-98765' });
    expect(ok.status).toBe(200);
    expect(a.seen).toHaveLength(0);
  });

  // What the OpenAI SDK does with GET /v1/models: models.list() iterates to its end (one page, no
  // cursor), and models.retrieve() of a `provider/model` id (sent as `models/a%2Fm`) answers it.
  it('the OpenAI SDK lists every id once and retrieves a provider/model id', async () => {
    const a = await mock((_req, res) => sendJson(res, 200, completion('ok')));
    const gw = await gateway({
      server: { api_keys: ['client-key-1234'] },
      providers: [
        {
          name: 'a',
          base_url: `${a.url}/v1`,
          api_key: 'sk-a-1234567',
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }, { name: 'e', capabilities: ['embeddings'] }],
        },
      ],
      routes: { r: { targets: ['a/m'] }, embed: { targets: ['a/e'] } },
    });
    const client = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: 'client-key-1234',
      maxRetries: 0,
      timeout: 5000,
    });
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids.sort()).toEqual(['a/e', 'a/m', 'embed', 'r']);
    const one = await client.models.retrieve('a/m');
    expect(one).toMatchObject({ id: 'a/m', object: 'model', owned_by: 'a' });
    await expect(client.models.retrieve('nope')).rejects.toMatchObject({ status: 404 });
  });

  // SPEC §3 reload: pools of providers a reload removes are closed once their requests are done
  // (runtime.ts retire/release): the removed upstream's keep-alive connection goes.
  it('a reload that removes a provider closes its idle keep-alive connections', async () => {
    const a = await mock((_req, res, raw) => sendJson(res, 200, embeddingAnswer(raw)));
    const b = await mock((_req, res, raw) => sendJson(res, 200, embeddingAnswer(raw)));
    const emb = { name: 'e', capabilities: ['embeddings'] };
    const cfg = (withB: boolean) => ({
      providers: [
        { name: 'a', base_url: `${a.url}/v1`, api_key: 'sk-a-1234567', timeouts: TIMEOUTS, models: [emb] },
        ...(withB
          ? [
              {
                name: 'b',
                base_url: `${b.url}/v1`,
                api_key: 'sk-b-1234567',
                timeouts: TIMEOUTS,
                models: [emb],
              },
            ]
          : []),
      ],
      routes: { embed: { strategy: 'priority', targets: withB ? ['b/e', 'a/e'] : ['a/e'] } },
    });
    const gw = await gateway(cfg(true));
    expect((await call(gw, 'POST', '/v1/embeddings', { model: 'embed', input: 'x' })).status).toBe(200);
    expect(b.sockets.size).toBe(1);
    gw.gateway.reload(parseConfigText(JSON.stringify(cfg(false)), {}));
    for (let i = 0; i < 80 && b.sockets.size > 0; i++) await sleep(25);
    expect(b.sockets.size).toBe(0);
    expect((await call(gw, 'POST', '/v1/embeddings', { model: 'embed', input: 'x' })).status).toBe(200);
  });

  // SPEC §8 Secrets: a chat error relayed to the client (a 400 read in pieces; an error event after the
  // commit, written in two parts) has the key scrubbed even when it arrives split across chunks.
  it('a chat error echoing the key split across two writes is scrubbed (400 and mid-stream event)', async () => {
    const key = 'sk-chat-SPLIT-0123456789-abcdef';
    const up = await mock((_req, res, raw) => {
      const body = JSON.parse(raw) as { stream?: boolean; messages: { content: string }[] };
      const text = `{"error":{"message":"key ${key} is not allowed","type":"invalid_request_error","param":null,"code":"bad"}}`;
      const cut = text.indexOf(key) + 10;
      if (body.messages[0]?.content === 'four-hundred') {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.write(text.slice(0, cut));
        setTimeout(() => res.end(text.slice(cut)), 50);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunk({ content: 'hello' }));
      const event = `data: ${text}\n\n`;
      const at = event.indexOf(key) + 10;
      res.write(event.slice(0, at));
      setTimeout(() => res.end(event.slice(at)), 50);
    });
    const gw = await gateway({
      providers: [
        { name: 'p', base_url: `${up.url}/v1`, api_key: key, timeouts: TIMEOUTS, models: [{ name: 'm' }] },
      ],
      routes: { r: { targets: ['p/m'] } },
    });
    const bad = await call(gw, 'POST', '/v1/chat/completions', {
      model: 'r',
      stream: true,
      messages: [{ role: 'user', content: 'four-hundred' }],
    });
    expect(bad.status).toBe(400);
    expect(bad.text).toContain('is not allowed');
    const cutStream = await call(gw, 'POST', '/v1/chat/completions', {
      model: 'r',
      stream: true,
      messages: HI,
    });
    expect(cutStream.status).toBe(200);
    expect(cutStream.text).toContain('stream_interrupted');
    expect(cutStream.text).toContain('is not allowed');
    for (const t of [bad.text, cutStream.text, gw.rawLogs()])
      expect(t.includes(key.slice(0, 14))).toBe(false);
  });

  // README "OpenAI-dialect upstreams": one refused send per field, at most a few refits per attempt;
  // an upstream that refuses every name of the token limit, or one droppable field after another, cannot make
  // the gateway loop.
  it('param fitting is bounded: a hostile upstream gets a handful of sends per request, then its 400', async () => {
    const up = await mock((_req, res, raw) => {
      const body = JSON.parse(raw) as Record<string, unknown>;
      for (const f of [
        'temperature',
        'top_p',
        'presence_penalty',
        'frequency_penalty',
        'logit_bias',
        'max_tokens',
        'max_completion_tokens',
        'seed',
      ])
        if (f in body)
          return sendJson(res, 400, {
            error: {
              message: `Unsupported parameter: '${f}' is not supported with this model.`,
              type: 'invalid_request_error',
              param: f,
              code: 'unsupported_parameter',
            },
          });
      sendJson(res, 200, completion('ok'));
    });
    const gw = await gateway({
      providers: [
        {
          name: 'p',
          base_url: `${up.url}/v1`,
          api_key: 'sk-p-12345678',
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
        },
      ],
      routes: { r: { targets: ['p/m'] } },
    });
    const body = {
      model: 'r',
      messages: HI,
      max_tokens: 10,
      temperature: 0.5,
      top_p: 0.9,
      presence_penalty: 0.1,
      frequency_penalty: 0.1,
      logit_bias: { '1': 1 },
      seed: 7,
    };
    const first = await call(gw, 'POST', '/v1/chat/completions', body);
    expect(first.status).toBe(400);
    expect(up.seen.length).toBeLessThanOrEqual(5);
    const second = await call(gw, 'POST', '/v1/chat/completions', body);
    expect(second.status).toBe(400);
    // A token limit is renamed, never dropped: the upstream refusing both names gets its own 400 relayed.
    expect(second.text).toContain('max_completion_tokens');
    expect(up.seen.length).toBeLessThanOrEqual(10);
    const sent = up.seen.at(-1)?.raw ?? '';
    expect(sent).toContain('"messages"');
  });

  // README Metrics/logs: "one `request` line per request (request id, route, strategy, chosen upstream
  // with its score and reason, attempts and trail, ... status, latency, TTFT, tokens, cost)"; SPEC §8: no
  // secret in a log line. Nor the prompt's text.
  it('a streamed chat request writes one request line with the README fields, no key and no prompt text', async () => {
    const up = await mock((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(
        `${chunk({ role: 'assistant', content: '' })}${chunk({ content: 'answer' })}${chunk({}, 'stop')}data: [DONE]\n\n`,
      );
    });
    const gw = await gateway({
      server: { api_keys: ['client-key-ABCDEF-1234'] },
      providers: [
        {
          name: 'p',
          base_url: `${up.url}/v1`,
          api_key: 'sk-p-LOGGED-NOT-12345',
          timeouts: TIMEOUTS,
          models: [{ name: 'm', price: { input_per_mtok: 1, output_per_mtok: 2 } }],
        },
      ],
      routes: { r: { targets: ['p/m'] } },
    });
    const res = await call(
      gw,
      'POST',
      '/v1/chat/completions',
      { model: 'r', stream: true, messages: [{ role: 'user', content: 'PROMPT-TEXT-XYZZY' }] },
      { authorization: 'Bearer client-key-ABCDEF-1234', 'x-request-id': 'req-review-1' },
    );
    expect(res.status).toBe(200);
    for (let i = 0; i < 40 && !gw.logs.some((l) => l.msg === 'request'); i++) await sleep(25);
    const lines = gw.logs.filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      reqId: 'req-review-1',
      route: 'r',
      upstream: 'p/m',
      attempts: 1,
      status: 200,
      stream: true,
    });
    for (const f of [
      'strategy',
      'score',
      'reason',
      'latencyMs',
      'ttftMs',
      'promptTokens',
      'completionTokens',
      'costUsd',
    ])
      expect(lines[0]).toHaveProperty(f);
    const raw = gw.rawLogs();
    for (const s of ['client-key-ABCDEF-1234', 'sk-p-LOGGED-NOT-12345', 'PROMPT-TEXT-XYZZY'])
      expect(raw.includes(s)).toBe(false);
  });
});
