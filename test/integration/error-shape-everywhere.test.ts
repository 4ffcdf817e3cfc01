/**
 * Every way a request is refused or fails answers in one shape (SPEC §4 "Errors are always OpenAI-shaped"):
 * the status, `content-type: application/json`, a body `{"error":{"message","type","param","code"}}` with a
 * human message that is true and bounded (no stack, no internal path), `x-request-id` (the client's when it
 * is a plain token, a generated one otherwise), and — for anything but health, metrics and admin reads —
 * one count in llm_router_requests_total and one request log line (README "Metrics": requests answered
 * before routing count under route `none`). Raw undici requests, and node:net where the HTTP is malformed.
 */
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock } from '../helpers/mock-upstream.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const MSGS = [{ role: 'user', content: 'hi' }];
const COMPLETION = {
  id: 'c1',
  object: 'chat.completion',
  created: 1,
  model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
};

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function send(
  gw: TestGateway,
  method: string,
  path: string,
  opts: { body?: string | Readable; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const res = await request(`${gw.url}${path}`, {
    method: method as 'GET',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: opts.body,
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** The OpenAI error shape, a JSON content-type and a human message without a stack or a source path. */
function expectOpenAIError(a: Answer, status: number): { message: string; type: string; code: unknown } {
  expect(a.status, a.text).toBe(status);
  expect(String(a.headers['content-type'])).toMatch(/^application\/json/);
  const body = JSON.parse(a.text) as { error: Record<string, unknown> };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  const message = body.error.message as string;
  expect(typeof message).toBe('string');
  expect(message.length).toBeGreaterThan(5);
  expect(message).not.toMatch(/\bat .+:\d+:\d+|\/src\/|node_modules|\.ts\b/);
  expect(typeof body.error.type).toBe('string');
  return { message, type: body.error.type as string, code: body.error.code };
}

function requestLines(gw: TestGateway): Record<string, unknown>[] {
  return gw.logs.filter((l) => l.msg === 'request');
}

async function unroutedCount(gw: TestGateway, status: number): Promise<number> {
  return (
    value(await scrape(gw.url), 'llm_router_requests_total', {
      route: 'none',
      provider: 'none',
      model: 'none',
      status: String(status),
    }) ?? 0
  );
}

/** Writes `text` on a fresh connection and reads until the gateway closes it (bounded). */
function rawExchange(gw: TestGateway, text: string): Promise<string> {
  const { port } = new URL(gw.url);
  return new Promise((resolve) => {
    const s = connect(Number(port), '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => s.destroy(), 3000);
    s.on('data', (d: Buffer) => (out += d.toString('latin1')));
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('error', () => undefined);
    s.write(text);
  });
}

async function okUpstream(): Promise<{ url: string; received: unknown[] }> {
  return track(await startMock((_req, res) => sendJson(res, 200, COMPLETION)));
}

describe('wrong methods and unknown paths', () => {
  it('a wrong method on each known path (no passthrough): 404 OpenAI-shaped naming what is served, id echoed, one line and one count each', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const cases: [string, string][] = [
      ['GET', '/v1/chat/completions'],
      ['PUT', '/v1/embeddings'],
      ['POST', '/v1/models'],
      ['DELETE', '/metrics'],
      ['POST', '/healthz'],
      ['PATCH', '/readyz'],
      ['GET', '/router/explain'],
      ['POST', '/router/status'],
      ['TRACE', '/v1/chat/completions'],
    ];
    const before = await unroutedCount(gw, 404);
    for (const [i, [method, path]] of cases.entries()) {
      const id = `wrong-method-${i}`;
      const a = await send(gw, method, path, {
        headers: { 'x-request-id': id },
        body: method === 'GET' || method === 'TRACE' ? undefined : '{}',
      });
      const e = expectOpenAIError(a, 404);
      expect(e.message).toContain(`${method} ${path}`);
      if (path.startsWith('/v1/')) expect(e.message).toContain('POST /v1/chat/completions');
      expect(a.headers['x-request-id']).toBe(id);
    }
    expect(await unroutedCount(gw, 404)).toBe(before + cases.length);
    const lines = requestLines(gw);
    for (const i of cases.keys())
      expect(lines.filter((l) => l.reqId === `wrong-method-${i}`).map((l) => l.status)).toEqual([404]);
    expect(up.received).toHaveLength(0);
  });

  // The not-found message says why a /v1 path is not served. With server.passthrough set and its provider
  // enabled, a method the proxy does not carry (TRACE, WebDAV verbs) still ends there: the hint must not
  // tell the operator the provider is disabled or its api_key empty, which is false and sends them looking
  // at the wrong thing.
  it('with an enabled passthrough, a /v1 method it does not proxy gets a 404 whose message is true', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        server: { passthrough: 'a' },
        providers: [simProvider('a', up.url, ['m'], { api_key: 'sk-live-passthrough-key' })],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    // The passthrough works: a GET of a /v1 path is proxied.
    expect((await send(gw, 'GET', '/v1/files')).status).toBe(200);
    for (const method of ['TRACE', 'PROPFIND']) {
      const a = await send(gw, method, '/v1/files', { headers: { 'x-request-id': `pt-${method}` } });
      const e = expectOpenAIError(a, 404);
      expect(a.headers['x-request-id']).toBe(`pt-${method}`);
      expect(e.message).toContain(`${method} /v1/files`);
      expect(e.message, 'the passthrough provider is enabled').not.toMatch(/disabled|api_key is empty/);
    }
  });

  // A client's path is echoed in the 404 message; the gateway clips every other echo of client input
  // (model ids: 200 characters). An 8 KB path should not come back as an 8 KB error message.
  it('the 404 message for a very long unknown path is bounded, not the whole path echoed back', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const path = `/v1/${'x'.repeat(8000)}`;
    const a = await send(gw, 'GET', path, { headers: { 'x-request-id': 'long-path' } });
    const e = expectOpenAIError(a, 404);
    expect(a.headers['x-request-id']).toBe('long-path');
    expect(e.message).toContain('/v1/xxxx');
    expect(e.message.length).toBeLessThan(1000);
  });
});

describe('errors Node answers before fastify (raw sockets)', () => {
  // README "Metrics": requests answered before routing count under route `none`; a 408 (answerClientError)
  // and a 417 (checkExpectation) do. A request whose headers overflow Node's limit (a long URL, a huge
  // cookie) is a real client request answered 431: it must be visible to the operator too.
  it('a URL past the header limit: 431 OpenAI-shaped with an x-request-id, counted once and logged once', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const before = await unroutedCount(gw, 431);
    const linesBefore = requestLines(gw).length;
    const out = await rawExchange(
      gw,
      `GET /v1/${'y'.repeat(20_000)} HTTP/1.1\r\nhost: gw\r\nx-request-id: long-url\r\n\r\n`,
    );
    const [head = '', body = ''] = out.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 431 /);
    expect(head).toMatch(/\r\ncontent-type: application\/json/i);
    const id = /\r\nx-request-id: ([^\r]+)/i.exec(head)?.[1];
    expect(id).toBeTruthy();
    expectOpenAIError({ status: 431, headers: { 'content-type': 'application/json' }, text: body }, 431);
    expect(up.received).toHaveLength(0);
    expect(await unroutedCount(gw, 431), 'llm_router_requests_total{route=none,status=431}').toBe(before + 1);
    const lines = requestLines(gw).slice(linesBefore);
    expect(lines.map((l) => l.status)).toEqual([431]);
    expect(lines[0]?.reqId).toBe(id);
  });
});

describe('upstream answers that are not what was asked for', () => {
  it('a 200 text/html (a login page, a captive portal) for a JSON, a stream and an embeddings request: 502 upstream_error naming the upstream', async () => {
    const html = track(
      await startMock((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<html><body>Please log in</body></html>');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', html.url, ['m', { name: 'e', capabilities: ['embeddings'] }])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const asks: [string, Record<string, unknown>, string][] = [
      ['/v1/chat/completions', { model: 'r', messages: MSGS }, 'a/m'],
      ['/v1/chat/completions', { model: 'r', messages: MSGS, stream: true }, 'a/m'],
      ['/v1/embeddings', { model: 'a/e', input: 'x' }, 'a/e'],
    ];
    for (const [i, [path, body, upstream]] of asks.entries()) {
      const a = await send(gw, 'POST', path, {
        body: JSON.stringify(body),
        headers: { 'x-request-id': `html-${i}` },
      });
      const e = expectOpenAIError(a, 502);
      expect(e.type).toBe('upstream_error');
      expect(e.message).toContain(upstream);
      expect(e.message).not.toContain('<html');
      expect(a.headers['x-request-id']).toBe(`html-${i}`);
      expect(a.headers['x-router-attempts']).toBe('1');
      await until('the request line', () => requestLines(gw).some((l) => l.reqId === `html-${i}`));
      expect(requestLines(gw).filter((l) => l.reqId === `html-${i}`)).toHaveLength(1);
    }
  });
});

describe('bodies past body_limit_bytes of unknown length', () => {
  it('a chunked body over the limit on chat, embeddings and a passthrough path: 413 OpenAI-shaped, id echoed, nothing sent upstream, one count each', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        server: { body_limit_bytes: 2000, passthrough: 'a' },
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const before = await unroutedCount(gw, 413);
    const paths = ['/v1/files', '/v1/chat/completions', '/v1/embeddings'];
    for (const path of paths) {
      // No content-length: the limit is found while the body streams in.
      const body = Readable.from([
        Buffer.from(`{"a":"${'x'.repeat(1500)}`),
        Buffer.from(`${'x'.repeat(1500)}"}`),
      ]);
      const a = await send(gw, 'POST', path, {
        body,
        headers: { 'x-request-id': `big${path.replaceAll('/', '-')}` },
      });
      const e = expectOpenAIError(a, 413);
      expect(e.code).toBe('payload_too_large');
      expect(a.headers['x-request-id']).toBe(`big${path.replaceAll('/', '-')}`);
    }
    expect(up.received).toHaveLength(0);
    expect(await unroutedCount(gw, 413)).toBe(before + paths.length);
  });
});

describe('/router/explain and hostile request ids', () => {
  it('explain with a bad body, an unknown model or a bad header: OpenAI-shaped 400/404 with an id, neither counted nor logged (a 401 is)', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        server: { admin_key: 'adm-key-123456' },
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const admin = { 'x-admin-key': 'adm-key-123456' };
    const asks: [string, Record<string, string>, number, string | null][] = [
      ['{bad', {}, 400, null],
      ['null', {}, 400, null],
      [JSON.stringify({ model: 'r', messages: [] }), {}, 400, 'messages'],
      [JSON.stringify({ model: 'r', messages: MSGS, tools: 'x' }), {}, 400, 'tools'],
      [JSON.stringify({ model: 'nope', messages: MSGS }), {}, 404, 'model'],
      [
        JSON.stringify({ model: 'r', messages: MSGS }),
        { 'x-router-strategy': 'nope' },
        400,
        'x-router-strategy',
      ],
    ];
    const linesBefore = requestLines(gw).length;
    for (const [i, [body, headers, status, param]] of asks.entries()) {
      const a = await send(gw, 'POST', '/router/explain', {
        body,
        headers: { ...admin, ...headers, 'x-request-id': `explain-${i}` },
      });
      expectOpenAIError(a, status);
      expect((JSON.parse(a.text) as { error: { param: unknown } }).error.param).toBe(param);
      expect(a.headers['x-request-id']).toBe(`explain-${i}`);
    }
    expect(requestLines(gw).length).toBe(linesBefore);
    // Without the admin key: a 401 before the body is looked at, logged (a refused read leaves a trace).
    const denied = await send(gw, 'POST', '/router/explain', { body: '{bad' });
    expect(expectOpenAIError(denied, 401).type).toBe('authentication_error');
    expect(up.received).toHaveLength(0);
    await new Promise((r) => setTimeout(r, 50));
    expect(requestLines(gw).length).toBe(linesBefore + 1);
  });

  it('a 500-character x-request-id on a 401, a 404 and a 415 is replaced, and the line carries the id sent back', async () => {
    const up = await okUpstream();
    const gw = track(
      await startGateway({
        server: { api_keys: ['client-key-1'] },
        providers: [simProvider('a', up.url, ['m'])],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const long = 'a'.repeat(500);
    const asks: [string, string, Record<string, string>, number][] = [
      ['POST', '/v1/chat/completions', {}, 401],
      ['GET', '/nope', { authorization: 'Bearer client-key-1' }, 404],
      [
        'POST',
        '/v1/chat/completions',
        { authorization: 'Bearer client-key-1', 'content-type': 'text/plain' },
        415,
      ],
    ];
    for (const [method, path, headers, status] of asks) {
      const a = await send(gw, method, path, {
        body: method === 'POST' ? 'hello' : undefined,
        headers: { ...headers, 'x-request-id': long },
      });
      expectOpenAIError(a, status);
      const id = String(a.headers['x-request-id']);
      expect(id).not.toBe(long);
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(
        requestLines(gw)
          .filter((l) => l.reqId === id)
          .map((l) => l.status),
      ).toEqual([status]);
    }
    expect(gw.rawLogs()).not.toContain(long);
  });
});
