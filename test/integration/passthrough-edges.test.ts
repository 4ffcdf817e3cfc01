/**
 * The `/v1/*` passthrough (SPEC §4 "any other /v1/*", §8; README "HTTP surface", `server.cors`,
 * `server.body_limit_bytes`, `providers[].max_concurrency`), as a production client sees it:
 *
 * - CORS: without `server.cors` an answer carries no CORS header at all, the provider's included (a page on
 *   any origin must not read a gateway that has no client keys); with it, a proxied answer still says
 *   `Vary: Origin` (its Allow-Origin depends on the Origin), beside the provider's own Vary.
 * - The client's credentials stay behind: its cookies (for the gateway's site) never reach the provider.
 * - An answer that echoes our key is masked whatever its content-coding, stacked codings included.
 * - A HEAD answered with an error keeps its headers as sent, as HEAD answers do.
 * - A request waiting for one of the provider's `max_concurrency` connections waits within first_byte_ms.
 * - `Expect: 100-continue` with a declared body past the limit gets its 413 without being told to send it.
 * - The request line names the path that was proxied.
 * - A gzip SSE answer is decoded and relayed event by event; a client that reads slowly (longer than
 *   idle_ms) still gets the whole download.
 */
import { connect } from 'node:net';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { constants, createGzip, deflateSync, gunzipSync, gzipSync, inflateSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const PT_KEY = 'sk-proj-REVIEW-0123456789abcdef';
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

interface Upstream {
  readonly url: string;
  readonly seen: { method: string; url: string; headers: IncomingHttpHeaders }[];
}

/** A plain HTTP upstream on loopback: `handler` answers once the request body was read. */
async function upstream(
  handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void,
): Promise<Upstream> {
  const seen: Upstream['seen'] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
      handler(req, res, Buffer.concat(parts));
    });
    req.on('error', () => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

async function gateway(
  up: Upstream,
  server: Record<string, unknown> = {},
  provider: Record<string, unknown> = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { passthrough: 'pt', ...server },
      providers: [
        {
          name: 'pt',
          base_url: `${up.url}/v1`,
          api_key: PT_KEY,
          timeouts: RELAXED,
          models: [{ name: 'm' }],
          ...provider,
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
    }),
  );
}

describe('passthrough and CORS', () => {
  // README `server.cors`: "unset (no CORS headers)". OpenAI's API answers with `access-control-allow-origin: *`;
  // relayed, it lets a page on any origin read what a gateway without client keys fetches with our key (a
  // simple GET of /v1/files needs no preflight).
  it('without server.cors, the provider’s Access-Control-* headers are not relayed', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'access-control-allow-origin': '*',
        'access-control-expose-headers': 'x-request-id, openai-processing-ms',
      });
      res.end('{"object":"list","data":[{"id":"file-secret-report"}]}');
    });
    const gw = await gateway(up);
    const res = await request(`${gw.url}/v1/files`, { headers: { origin: 'https://evil.example' } });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(text).toContain('file-secret-report');
    const cors = Object.keys(res.headers).filter((k) => k.startsWith('access-control-'));
    expect(cors).toEqual([]);
  });

  // The Allow-Origin the gateway writes reflects the request's Origin, so the answer must say Vary: Origin
  // (as routed answers do), or a shared cache hands one origin's answer to another page, which then fails.
  it('with server.cors, a proxied answer keeps Vary: Origin beside the provider’s own Vary', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', vary: 'Accept-Encoding' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gateway(up, { cors: { origins: ['https://a.example', 'https://b.example'] } });
    const res = await request(`${gw.url}/v1/files`, { headers: { origin: 'https://a.example' } });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBe('https://a.example');
    const vary = String(res.headers.vary ?? '');
    expect(vary).toMatch(/accept-encoding/i);
    expect(vary).toMatch(/\borigin\b/i);
  });
});

describe('what the passthrough sends upstream', () => {
  // A page served from the gateway's own site (or an SSO proxy in front of it: oauth2-proxy, Cloudflare
  // Access) sends that site's cookies with every /v1 call. They are the client's credentials, like its
  // Authorization, and routed requests drop them; the provider must not receive them.
  it("the client's Cookie is not forwarded to the provider", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gateway(up);
    const res = await request(`${gw.url}/v1/files`, {
      headers: { cookie: '_oauth2_proxy=SESSION-abc123456789; CF_Authorization=eyJhbGciOi.sig' },
    });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(up.seen).toHaveLength(1);
    expect(up.seen[0]?.headers.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(up.seen[0]?.headers.cookie).toBeUndefined();
  });
});

describe('what the passthrough relays back', () => {
  // SPEC §8: no configured secret ever appears in a response. A body with a stacked coding (RFC 9110 §8.4:
  // `deflate, gzip`) that echoes our key went out as it came, unmasked.
  it('a 200 with a stacked content-encoding that echoes our key has it masked', async () => {
    const up = await upstream((_req, res) => {
      const body = Buffer.from(JSON.stringify({ echoed: { authorization: `Bearer ${PT_KEY}` } }));
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'deflate, gzip' });
      res.end(gzipSync(deflateSync(body)));
    });
    const gw = await gateway(up);
    const res = await request(`${gw.url}/v1/anything`);
    let body = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    // Whatever the gateway chose (decode, or relay as is), undo what it declares.
    const codings = String(res.headers['content-encoding'] ?? '')
      .split(',')
      .map((c) => c.trim().toLowerCase())
      .filter((c) => c !== '' && c !== 'identity')
      .reverse();
    for (const c of codings) body = c === 'gzip' ? gunzipSync(body) : inflateSync(body);
    const text = body.toString('utf8');
    expect(JSON.parse(text)).toHaveProperty('echoed.authorization');
    expect(text).not.toContain(PT_KEY);
  });

  // README: "HEAD, 204 and 304 answers keep their headers as sent". A HEAD on a missing file (an existence
  // check) is answered 404 by the provider with the length its GET would have: the gateway rewrote it to 0
  // and added a charset, as if it were an error body of its own.
  it('a HEAD answered 404 keeps the headers the provider sent (its content-length included)', async () => {
    const errorBody = JSON.stringify({
      error: { message: 'No such File object: file-x', type: 'invalid_request_error' },
    });
    const up = await upstream((req, res) => {
      res.writeHead(404, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(errorBody)),
      });
      res.end(req.method === 'HEAD' ? undefined : errorBody);
    });
    const gw = await gateway(up);
    const get = await request(`${gw.url}/v1/files/file-x/content`);
    expect(get.statusCode).toBe(404);
    expect(await get.body.text()).toBe(errorBody);
    const head = await request(`${gw.url}/v1/files/file-x/content`, { method: 'HEAD' });
    expect(await head.body.text()).toBe('');
    expect(head.statusCode).toBe(404);
    expect(head.headers['content-length']).toBe(String(Buffer.byteLength(errorBody)));
    expect(head.headers['content-type']).toBe('application/json');
  });

  it('a gzip SSE answer (with our key masked on the way) is decoded and relayed event by event', async () => {
    let sendRest = (): void => undefined;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
      const z = createGzip();
      z.pipe(res);
      z.write('event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n');
      z.flush(constants.Z_SYNC_FLUSH);
      sendRest = () =>
        z.end(
          `event: response.completed\ndata: {"type":"response.completed","note":"${PT_KEY}","sequence_number":1}\n\n`,
        );
    });
    const gw = await gateway(up);
    const res = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'accept-encoding': 'gzip' },
      body: JSON.stringify({ model: 'gpt-4o', input: 'hi', stream: true }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-encoding']).toBeUndefined();
    const chunks = res.body[Symbol.asyncIterator]();
    // The second event is sent only once the first has arrived (or, failing that, after a bound).
    const fallback = setTimeout(() => sendRest(), 4000);
    const first = await chunks.next();
    const beforeRest = String(first.value);
    clearTimeout(fallback);
    sendRest();
    let rest = '';
    for (let r = await chunks.next(); r.done !== true; r = await chunks.next()) rest += String(r.value);
    expect(beforeRest).toContain('response.created');
    expect(beforeRest).not.toContain('response.completed');
    expect(rest).toContain('response.completed');
    expect(rest).not.toContain(PT_KEY);
  });

  it('a client that reads nothing for longer than idle_ms still gets the whole download', async () => {
    const size = 8 * 1024 * 1024;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
      res.end(Buffer.alloc(size, 0x61));
    });
    const gw = await gateway(up, {}, { timeouts: { ...RELAXED, first_byte_ms: 1000, idle_ms: 1000 } });
    const res = await request(`${gw.url}/v1/files/file-big/content`);
    expect(res.statusCode).toBe(200);
    res.body.pause();
    await new Promise((r) => setTimeout(r, 2200));
    let n = 0;
    for await (const chunk of res.body) n += (chunk as Buffer).length;
    expect(n).toBe(size);
  });
});

describe('bounds on the passthrough', () => {
  // README providers[].max_concurrency: the connections to the provider, "for its routed and passthrough
  // requests together; ... requests past it wait for a connection to free (within first_byte_ms ...)". A
  // proxied request waited for the connection for as long as it took (up to total_ms, 5 minutes by default).
  it('a request waiting for a connection at max_concurrency gets a 504 past first_byte_ms, not held until one frees', async () => {
    let release = (): void => undefined;
    const up = await upstream((req, res) => {
      if (req.url?.includes('file-slow') === true) {
        // A long download that is never idle: it holds the only connection until released.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write('x');
        const tick = setInterval(() => res.write('x'), 200);
        release = () => {
          clearInterval(tick);
          res.end();
        };
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"object":"list","data":[]}');
    });
    const gw = await gateway(
      up,
      {},
      {
        max_concurrency: 1,
        timeouts: { connect_ms: 1000, first_byte_ms: 1000, idle_ms: 1000, total_ms: 8000 },
      },
    );
    const download = await request(`${gw.url}/v1/files/file-slow/content`);
    expect(download.statusCode).toBe(200);
    let released = false;
    const bound = setTimeout(() => {
      released = true;
      release();
    }, 3500);
    const queued = await request(`${gw.url}/v1/files`);
    const answeredWhileHeld = !released;
    await queued.body.dump();
    clearTimeout(bound);
    release();
    await download.body.dump();
    expect({ status: queued.statusCode, answeredWhileHeld }).toEqual({
      status: 504,
      answeredWhileHeld: true,
    });
  });

  it('a client that leaves a download mid-way has the upstream request aborted (the queue bound kept its abort)', async () => {
    let upstreamClosed = false;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write('x');
      const tick = setInterval(() => res.write('x'), 50);
      res.on('close', () => {
        clearInterval(tick);
        upstreamClosed = true;
      });
    });
    const gw = await gateway(up, {}, { timeouts: { ...RELAXED, first_byte_ms: 1000, idle_ms: 5000 } });
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/files/file-1/content`, { signal: ac.signal });
    expect(res.statusCode).toBe(200);
    await new Promise((r) => setTimeout(r, 200)); // past headers: the body is flowing
    ac.abort();
    await res.body.dump().catch(() => undefined);
    await vi.waitFor(() => expect(upstreamClosed).toBe(true), { timeout: 2000 });
  });

  // RFC 9110 §10.1.1: a server that will refuse the content answers with its final status instead of
  // 100 Continue. Node answered 100 for us before the limit was checked, so `curl -T big.bin` (which sends
  // Expect for large bodies) was told to send the whole file, only to be refused and cut.
  it('Expect: 100-continue with a declared length past body_limit_bytes gets the 413 without a 100', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const gw = await gateway(up, { body_limit_bytes: 1024 * 1024 });
    const sock = connect(Number(new URL(gw.url).port), '127.0.0.1');
    track({ close: () => sock.destroy() });
    let got = '';
    sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
    sock.on('error', () => undefined);
    sock.write(
      'POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n' +
        'Content-Length: 20971520\r\nExpect: 100-continue\r\n\r\n',
    );
    await until('an answer', () => got.includes('\r\n\r\n'));
    expect(got.split('\r\n')[0]).toBe('HTTP/1.1 413 Payload Too Large');
    expect(up.seen).toHaveLength(0);
  });
});

describe('observability of the passthrough', () => {
  // The request line of a routed request names its endpoint; a proxied one said `/v1/*` whatever it was
  // (files, batches, audio, responses), so an operator could not tell which call failed or was slow.
  it('the request line names the path that was proxied (without its query)', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":{"message":"No such batch","type":"invalid_request_error"}}');
    });
    const gw = await gateway(up);
    const res = await request(`${gw.url}/v1/batches/batch_abc?include=x`, {
      headers: { 'x-request-id': 'pt-line-1' },
    });
    await res.body.dump();
    expect(res.statusCode).toBe(404);
    await until('the request line', () => gw.logs.some((l) => l.msg === 'request'));
    const line = gw.logs.find((l) => l.msg === 'request');
    expect(line).toMatchObject({ reqId: 'pt-line-1', method: 'GET', status: 404 });
    expect(line?.path).toBe('/v1/batches/batch_abc');
  });
});
