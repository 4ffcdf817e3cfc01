/**
 * Provider endpoints whose address carries more than a host and a path: a query every request needs
 * (Azure OpenAI's classic `?api-version=`), a user and password (a proxy behind basic auth), a key given as
 * a header of its own (Azure's `api-key`) or as a query parameter (`?key=`). Each reaches the upstream on
 * every kind of request, and none of them reaches a client when the upstream echoes it back.
 */
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import OpenAI from 'openai';
import { describe, expect, it, vi } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { postChat, startGateway } from '../helpers/gateway.js';
import { onlyLoopbackFetch } from '../helpers/loopback-only.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
onlyLoopbackFetch();

const hi = [{ role: 'user' as const, content: 'hi' }];

function embeddingAnswer() {
  return {
    object: 'list',
    data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }],
    model: 'e',
    usage: { prompt_tokens: 1, total_tokens: 1 },
  };
}

describe('a base_url with a query', () => {
  it('keeps it on chat (JSON and stream) and embeddings requests, after the path', async () => {
    const up = track(
      await startMock((req, res) => {
        if (req.path.includes('/embeddings')) sendJson(res, 200, embeddingAnswer());
        else answerChat(res, req.body, 'ok');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'azure',
            base_url: `${up.url}/openai/deployments/gpt4o?api-version=2024-10-21`,
            headers: { 'api-key': 'azure-key-SECRET-1234' },
            models: [{ name: 'gpt-4o' }, { name: 'emb', capabilities: ['embeddings'] }],
          },
        ],
        routes: { r: { targets: ['azure/gpt-4o'] }, e: { targets: ['azure/emb'] } },
      }),
    );
    const openai = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
    await openai.chat.completions.create({ model: 'r', messages: hi });
    const stream = await openai.chat.completions.create({ model: 'r', messages: hi, stream: true });
    for await (const _ of stream) void _;
    await openai.embeddings.create({ model: 'e', input: 'x' });
    expect(up.received.map((r) => r.path)).toEqual([
      '/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21',
      '/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21',
      '/openai/deployments/gpt4o/embeddings?api-version=2024-10-21',
    ]);
    for (const r of up.received) expect(r.headers['api-key']).toBe('azure-key-SECRET-1234');
  });
});

describe('a base_url with a user and password', () => {
  it('sends them as Basic authorization, on an OpenAI-dialect and an Anthropic upstream', async () => {
    const up = track(
      await startMock((req, res) => {
        if (req.path.endsWith('/v1/messages'))
          sendJson(res, 200, {
            id: 'msg_1',
            type: 'message',
            role: 'assistant',
            content: [{ type: 'text', text: 'ok' }],
            stop_reason: 'end_turn',
            usage: { input_tokens: 1, output_tokens: 1 },
          });
        else answerChat(res, req.body, 'ok');
      }),
    );
    const host = up.url.slice('http://'.length);
    const gw = track(
      await startGateway({
        providers: [
          { name: 'proxy', base_url: `http://gw-user:p%40ss-SECRET@${host}/v1`, models: [{ name: 'm' }] },
          {
            name: 'claude',
            kind: 'anthropic',
            base_url: `http://u2:pw2-SECRET@${host}`,
            api_key: 'sk-ant-SECRET-1',
            models: [{ name: 'c' }],
          },
        ],
        routes: { a: { targets: ['proxy/m'] }, b: { targets: ['claude/c'] } },
      }),
    );
    expect((await postChat(gw, { model: 'a', messages: hi })).status).toBe(200);
    expect((await postChat(gw, { model: 'b', messages: hi })).status).toBe(200);
    const basic = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;
    expect(up.received[0]!.headers.authorization).toBe(basic('gw-user:p@ss-SECRET'));
    expect(up.received[1]!.headers.authorization).toBe(basic('u2:pw2-SECRET'));
    expect(up.received[1]!.headers['x-api-key']).toBe('sk-ant-SECRET-1');
  });

  it('leaves a configured Authorization header and an api_key in charge, and says so for the latter', async () => {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const host = up.url.slice('http://'.length);
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'h',
            base_url: `http://u:pw-SECRET-x@${host}/v1`,
            headers: { Authorization: 'Token own-SECRET-5678' },
            models: [{ name: 'm' }],
          },
          {
            name: 'k',
            base_url: `http://u:pw-SECRET-y@${host}/v1`,
            api_key: 'sk-k-SECRET',
            models: [{ name: 'm' }],
          },
        ],
        routes: { a: { targets: ['h/m'] }, b: { targets: ['k/m'] } },
      }),
    );
    await postChat(gw, { model: 'a', messages: hi });
    await postChat(gw, { model: 'b', messages: hi });
    expect(up.received[0]!.headers.authorization).toBe('Token own-SECRET-5678');
    expect(up.received[1]!.headers.authorization).toBe('Bearer sk-k-SECRET');
    const said = gw.logs.map((l) => JSON.stringify(l.msg));
    expect(said.some((m) => m.includes('the user and password in base_url are not sent'))).toBe(true);
    expect(gw.rawLogs()).not.toContain('pw-SECRET');
  });
});

describe('keys given as headers or query parameters', () => {
  it('are scrubbed from an upstream error that echoes them, and from the log', async () => {
    const up = track(
      await startMock((req, res) =>
        sendJson(res, 400, {
          error: {
            message: `bad request; you sent ${String(req.headers['api-key'])} and ${req.path} (${String(req.headers.authorization)})`,
            type: 'invalid_request_error',
          },
        }),
      ),
    );
    const host = up.url.slice('http://'.length);
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'p',
            base_url: `http://user:basic-SECRET-pw@${host}/v1?key=AIza-query-SECRET-99`,
            headers: { 'api-key': 'header-key-SECRET-42' },
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { targets: ['p/m'] } },
      }),
    );
    const res = await postChat(gw, { model: 'r', messages: hi });
    expect(res.status).toBe(400);
    expect(res.json).toMatchObject({ error: { message: expect.stringContaining('bad request') as unknown } });
    const base64 = Buffer.from('user:basic-SECRET-pw').toString('base64');
    for (const secret of ['header-key-SECRET-42', 'AIza-query-SECRET-99', base64]) {
      expect(res.text).not.toContain(secret);
      expect(gw.rawLogs()).not.toContain(secret);
    }
  });
});

describe('idle connections to a plain-http upstream', () => {
  it('are let go within about 4 s, before uvicorn (vLLM) closes them unannounced at 5 s', async () => {
    // Regression: idle connections were kept 30 s; a request written as a 5 s server closed one failed (a
    // failover and a breaker count for nothing). https upstreams keep theirs 30 s (a TLS handshake saved).
    const closedAt: number[] = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => answerChat(res, JSON.parse(body) as Record<string, unknown>, 'ok'));
    });
    server.keepAliveTimeout = 0; // keeps it, and says nothing of how long (as uvicorn): the gateway lets go
    server.on('connection', (s: Socket) => s.on('close', () => closedAt.push(performance.now())));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    track(closeableServer(server));
    const gw = track(
      await startGateway({
        providers: [
          {
            name: 'local',
            base_url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`,
            models: [{ name: 'm' }],
          },
        ],
        routes: { r: { targets: ['local/m'] } },
      }),
    );
    expect((await postChat(gw, { model: 'r', messages: hi })).status).toBe(200);
    const answered = performance.now();
    await vi.waitFor(() => expect(closedAt).toHaveLength(1), { timeout: 9_000, interval: 100 });
    expect(closedAt[0]! - answered).toBeLessThan(6_500); // 4 s on undici's 1 s-resolution timers, on a loaded machine
  }, 15_000);
});
