/**
 * Audit: the passthrough surfaces (SPEC §4 "any other /v1/*", README's other-`/v1/*` row) under hostile
 * clients and hostile upstreams (SPEC §8). Real sockets only: the gateway on 127.0.0.1:0, node:http and `ws`
 * upstreams on loopback, undici, `ws` and raw TCP clients.
 *
 * What is held (SPEC §8 unless said): path spellings neither skip the client key nor leave base_url's path;
 * keys in a query authorize nothing; ambiguous framing (Transfer-Encoding with Content-Length) never reaches
 * the provider; a slow body gets 408; a body past `body_limit_bytes` gets 413 however it is framed; the
 * client's credentials never travel; a client that leaves has its upstream request ended; an upstream's
 * echo of our key is masked in headers, bodies (compressed too), event streams (across deltas) and WebSocket
 * messages; redirects are relayed, not followed; a body that never ends is cut; a cut body is never passed off
 * as a whole one; a slow reader does not make the gateway hold what it has not read; WebSocket refusals are
 * relayed with their status; an abrupt close on one side closes the other at once.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';
import {
  activeOf,
  clientFrame,
  gwPort,
  passthroughGateways,
  rawUpstream,
  sleep,
  wsClients,
  wsUpstream,
  wsUrl,
} from '../helpers/ws.js';

const track = closeAfterEach();
const PT_KEY = 'sk-hostile-PT-0123456789abcdef';
/** A key with the characters JSON (.NET's `\u002B`) and URLs (`%2B`, `%2F`) spell otherwise. */
const ODD_KEY = 'sk-odd+Key/0123456789abcdef';
const CLIENT_KEY = 'ck-hostile-client-24680';
const ADMIN_KEY = 'adm-hostile-admin-13579';
const TIMEOUTS = { connect_ms: 1000, first_byte_ms: 1500, idle_ms: 1500, total_ms: 6000 };
const RELAXED = { connect_ms: 2000, first_byte_ms: 15000, idle_ms: 15000, total_ms: 120000 };
const MIB = 1024 * 1024;
const AUTH = `Authorization: Bearer ${CLIENT_KEY}`;

// ------------------------------------------------------------------------------------------------ plumbing

interface Got {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];
  body: Buffer;
  ended: boolean;
  /** The request was cut (its connection closed before its body ended). */
  aborted: boolean;
  /** The answer's connection closed (the gateway hung up on it). */
  resClosed: boolean;
}

interface Up {
  readonly url: string;
  readonly port: number;
  readonly got: Got[];
}

type Answer = (req: IncomingMessage, res: ServerResponse, got: Got) => void;

/** A node:http upstream recording each request; `answer` replies once the body is read (or at once). */
async function upstream(answer: Answer, opts: { readBody?: boolean } = {}): Promise<Up> {
  const got: Got[] = [];
  const server = createServer({ maxHeaderSize: 128 * 1024 }, (req, res) => {
    const g: Got = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: Buffer.alloc(0),
      ended: false,
      aborted: false,
      resClosed: false,
    };
    got.push(g);
    res.on('close', () => (g.resClosed = true));
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('close', () => {
      if (!g.ended) g.aborted = true;
    });
    req.on('end', () => {
      g.body = Buffer.concat(parts);
      g.ended = true;
      if (opts.readBody !== false) answer(req, res, g);
    });
    if (opts.readBody === false) answer(req, res, g);
  });
  server.maxHeadersCount = 0;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  track(closeableServer(server));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, port, got };
}

function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function gatewayFor(
  up: Pick<Up, 'url'>,
  opts: {
    server?: Record<string, unknown>;
    provider?: Record<string, unknown>;
    basePath?: string;
    key?: string;
  } = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server: { passthrough: 'pt', api_keys: [CLIENT_KEY], admin_key: ADMIN_KEY, ...opts.server },
      providers: [
        {
          name: 'pt',
          base_url: `${up.url}${opts.basePath ?? '/v1'}`,
          api_key: opts.key ?? PT_KEY,
          timeouts: TIMEOUTS,
          models: [{ name: 'm' }],
          ...opts.provider,
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['pt/m'] } },
    }),
  );
}

interface RawAnswer {
  status: number;
  head: string;
  headers: Record<string, string>;
  body: Buffer;
  /** Every byte the socket got, answers pipelined after the first included. */
  raw: Buffer;
}

/** Writes `bytes` on a fresh socket and reads until the gateway closes it (or `waitMs`). */
function rawExchange(gw: TestGateway, bytes: Buffer | string, waitMs = 8000): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const s = connect(gwPort(gw), '127.0.0.1', () => s.write(bytes));
    track({ close: () => s.destroy() });
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.setTimeout(waitMs, () => s.destroy());
    s.on('error', () => undefined);
    s.on('close', () => {
      const raw = Buffer.concat(parts);
      if (raw.length === 0) {
        reject(new Error('no answer'));
        return;
      }
      const sep = raw.indexOf('\r\n\r\n');
      const head = raw.subarray(0, sep < 0 ? raw.length : sep).toString('latin1');
      const rest = sep < 0 ? Buffer.alloc(0) : raw.subarray(sep + 4);
      const [statusLine = '', ...lines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const c = l.indexOf(':');
        const k = l.slice(0, c).toLowerCase();
        headers[k] =
          headers[k] === undefined ? l.slice(c + 1).trim() : `${headers[k]}, ${l.slice(c + 1).trim()}`;
      }
      resolve({ status: Number(statusLine.split(' ')[1]), head, headers, body: rest, raw });
    });
  });
}

/** A GET over a raw socket, `Connection: close`, with `extra` header lines. */
function rawGet(gw: TestGateway, path: string, extra: string[] = []): Promise<RawAnswer> {
  return rawExchange(
    gw,
    [`GET ${path} HTTP/1.1`, 'Host: gw', 'Connection: close', ...extra, '', ''].join('\r\n'),
  );
}

/** Reads an undici body to its end: the text, or the error that cut it. */
async function readAll(body: AsyncIterable<Buffer>): Promise<{ text: string; error?: Error }> {
  const parts: Buffer[] = [];
  try {
    for await (const c of body) parts.push(c);
    return { text: Buffer.concat(parts).toString() };
  } catch (err) {
    return { text: Buffer.concat(parts).toString(), error: err as Error };
  }
}

/** Every spelling of `key` an echo may use that this file sends. */
function spellings(key: string): string[] {
  return [key, encodeURIComponent(key), key.replace(/\+/g, '\\u002B'), key.replace(/\//g, '\\/')];
}

// ------------------------------------------------------------------------------------------- client side

describe('hostile clients: paths and queries', () => {
  it('no path spelling reaches the provider without the client key, nor reads /router/* without the admin key', async () => {
    const up = await upstream((_req, res) => json(res, 200, { ok: true }));
    const gw = await gatewayFor(up, { basePath: '/api/v1' });
    const paths = [
      '/v1/files',
      '//v1/files',
      '/v1//files',
      '/V1/files',
      '/%76%31/files',
      '/%2576%2531/files',
      '/v1%2ffiles',
      '/v1/./files',
      '/./v1/files',
      '/x/../v1/files',
      '/v1;x/files',
      '/v1\\files',
      '/healthz/../v1/files',
      '/metrics/../v1/files',
      '/router/../v1/files',
      '/v1/../router/status',
      '/v1/%2e%2e/router/status',
      '/v1/realtime?model=m',
    ];
    for (const path of paths) {
      const r = await rawGet(gw, path);
      expect([400, 401, 404], `${path}: ${r.status}`).toContain(r.status);
      expect(r.body.toString(), path).not.toMatch(/breaker|in_flight|upstreams/);
    }
    expect(up.got.map((g) => g.url)).toEqual([]);
  });

  it('with the client key, no path spelling climbs out of base_url (as the provider would normalise it) or reaches another host', async () => {
    let stray = 0;
    const other = await upstream((_req, res) => {
      stray++;
      res.end('stray');
    });
    const up = await upstream((_req, res, g) => json(res, 200, { url: g.url }));
    const gw = await gatewayFor(up, { basePath: '/api/v1' });
    const attempts = [
      '/v1/../admin',
      '/v1/%2e%2e/admin',
      '/v1/.%2e/admin',
      '/v1/%2e%2e%2fadmin',
      '/v1/files/..%2f..%2f..%2fadmin',
      '/v1/files/%252e%252e/%252e%252e/admin',
      '/v1/..%5cadmin',
      '/v1/..;/admin',
      `/v1//127.0.0.1:${other.port}/x`,
      `/v1/%2F%2F127.0.0.1:${other.port}/x`,
      `/v1/http://127.0.0.1:${other.port}/x`,
      `/v1/@127.0.0.1:${other.port}/x`,
    ];
    for (const path of attempts) {
      const r = await rawGet(gw, path, [AUTH]);
      expect([200, 400, 404], `${path}: ${r.status}`).toContain(r.status);
    }
    expect(stray).toBe(0);
    for (const g of up.got) {
      // What a server that normalises its paths (RFC 3986 §6.2.2: %2E is a dot) makes of it.
      const normalised = new URL(`http://provider${g.url}`).pathname;
      expect(normalised.startsWith('/api/v1/'), `${g.url} -> ${normalised}`).toBe(true);
    }
  });

  it('a key in the query (api_key, key, access_token) authorizes nothing, and never opens a WebSocket either', async () => {
    const up = await upstream((_req, res) => json(res, 200, { ok: true }));
    const gw = await gatewayFor(up);
    for (const q of [`api_key=${CLIENT_KEY}`, `key=${CLIENT_KEY}`, `access_token=${CLIENT_KEY}`]) {
      const r = await rawGet(gw, `/v1/files?${q}`);
      expect(r.status, q).toBe(401);
      expect(r.body.toString()).not.toContain(CLIENT_KEY);
    }
    expect(up.got).toHaveLength(0);
  });

  it("the client's own gateway key in the query is not handed to the provider", async () => {
    const up = await upstream((_req, res, g) => json(res, 200, { url: g.url }));
    const gw = await gatewayFor(up);
    const r = await rawGet(gw, `/v1/files?api_key=${CLIENT_KEY}&key=${CLIENT_KEY}&purpose=x`, [AUTH]);
    expect(r.status).toBe(200);
    expect(up.got).toHaveLength(1);
    expect(up.got[0]!.url, 'the provider learnt a gateway client key').not.toContain(CLIENT_KEY);
  });
});

describe('hostile clients: headers and framing', () => {
  it('a 100 KB header gets 431 and never reaches the provider; 900 ordinary headers are relayed', async () => {
    const up = await upstream((_req, res) => json(res, 200, { ok: true }));
    const gw = await gatewayFor(up);
    const huge = await rawGet(gw, '/v1/files', [AUTH, `x-big: ${'a'.repeat(100_000)}`]);
    expect(huge.status).toBe(431);
    expect(up.got).toHaveLength(0);
    // 900: Node's server keeps the first 1,000 of a request's headers (maxHeadersCount) and drops the rest.
    const many = Array.from({ length: 900 }, (_, i) => `x-h${i}: ${i}`);
    const r = await rawGet(gw, '/v1/files', [AUTH, ...many]);
    expect(r.status).toBe(200);
    expect(up.got).toHaveLength(1);
    expect(up.got[0]!.headers['x-h899']).toBe('899');
  });

  it('Transfer-Encoding with Content-Length (request smuggling) is refused: nothing smuggled reaches the provider', async () => {
    const up = await upstream((_req, res, g) => json(res, 200, { url: g.url, bytes: g.body.length }));
    const gw = await gatewayFor(up);
    const smuggled = 'GET /v1/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n';
    const variants = [
      // CL.TE: the chunked body ends at once; what follows would be a second request to a TE reader.
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      // TE.CL, the TE obfuscated.
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n5c\r\n${smuggled}\r\n0\r\n\r\n`,
      // Two different lengths.
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello${smuggled}`,
      // A TE that is not chunked last (a reader that ignores it would read by the length).
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\nhello${smuggled}`,
    ];
    for (const v of variants) {
      const r = await rawExchange(gw, v, 4000);
      expect(r.status, v.split('\r\n').slice(3, 5).join(' | ')).toBe(400);
    }
    await sleep(200);
    expect(up.got.map((g) => g.url)).not.toContain('/v1/smuggled');
    expect(up.got).toHaveLength(0);
  });

  it('a body that trickles past server.request_timeout_ms gets 408, and its upstream request is ended', async () => {
    const up = await upstream((_req, res) => json(res, 200, { ok: true }));
    const gw = await gatewayFor(up, { server: { request_timeout_ms: 2000 } });
    const t0 = performance.now();
    const answered = new Promise<{ text: string; ms: number }>((resolve) => {
      const s = connect(gwPort(gw), '127.0.0.1', () => {
        s.write(
          `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n`,
        );
        const drip = setInterval(() => s.write('x'), 200);
        s.on('close', () => clearInterval(drip));
      });
      track({ close: () => s.destroy() });
      let text = '';
      s.on('data', (d: Buffer) => (text += d.toString('latin1')));
      s.on('error', () => undefined);
      s.setTimeout(10_000, () => s.destroy());
      s.on('close', () => resolve({ text, ms: performance.now() - t0 }));
    });
    const { text, ms } = await answered;
    expect(text.split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
    expect(ms).toBeLessThan(8000);
    await until('the upstream request ended', () => up.got.length === 0 || up.got[0]!.aborted, 5000);
    expect(up.got.every((g) => !g.ended)).toBe(true);
  });

  it('a body past body_limit_bytes gets 413 however it comes: declared, declared with Expect, chunked with Expect', async () => {
    const LIMIT = 64 * 1024;
    const up = await upstream((_req, res, g) => json(res, 200, { bytes: g.body.length }));
    const gw = await gatewayFor(up, { server: { body_limit_bytes: LIMIT } });
    const head = (extra: string): string =>
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Type: application/octet-stream\r\n${extra}\r\n\r\n`;

    const declared = await rawExchange(gw, head(`Content-Length: ${LIMIT + 1}\r\nConnection: close`));
    expect(declared.status).toBe(413);
    const expecting = await rawExchange(gw, head(`Content-Length: ${LIMIT + 1}\r\nExpect: 100-continue`));
    expect(expecting.status).toBe(413);
    expect(expecting.head).not.toContain('100 Continue');
    expect(up.got).toHaveLength(0);

    // Chunked with Expect: no length to refuse up front; the 100 comes, the body is counted as it streams.
    const chunked = await new Promise<string>((resolve) => {
      const s = connect(gwPort(gw), '127.0.0.1', () =>
        s.write(head('Transfer-Encoding: chunked\r\nExpect: 100-continue')),
      );
      track({ close: () => s.destroy() });
      let text = '';
      let sent = 0;
      const piece = Buffer.alloc(16 * 1024, 0x61);
      const pump = (): void => {
        if (s.destroyed || sent > 4 * LIMIT) return;
        sent += piece.length;
        s.write(`${piece.length.toString(16)}\r\n`);
        s.write(piece);
        s.write('\r\n');
        setTimeout(pump, 5);
      };
      s.on('data', (d: Buffer) => {
        const before = text;
        text += d.toString('latin1');
        if (!before.includes('100 Continue') && text.includes('100 Continue')) pump();
        // The 413 whole (the connection may stay: the rest of the body is read and dropped).
        if (text.includes('HTTP/1.1 413') && text.includes('"payload_too_large"}}')) s.destroy();
      });
      s.on('error', () => undefined);
      s.setTimeout(8000, () => s.destroy());
      s.on('close', () => resolve(text));
    });
    expect(chunked).toContain('HTTP/1.1 413');
    await until('the upstream request ended', () => up.got.every((g) => g.aborted || g.resClosed), 5000);
    expect(up.got.filter((g) => g.ended && g.body.length > LIMIT)).toHaveLength(0);
  });

  it("the client's credentials, cookies, organization and the headers its Connection names never travel; the provider gets our key once and its own Host", async () => {
    const up = await upstream((_req, res) => json(res, 200, { ok: true }));
    const gw = await gatewayFor(up);
    const r = await rawGet(gw, '/v1/files', [
      AUTH,
      'Cookie: session=client-cookie-777',
      `X-Api-Key: ${CLIENT_KEY}`,
      `Api-Key: ${CLIENT_KEY}`,
      `X-Admin-Key: ${ADMIN_KEY}`,
      'Proxy-Authorization: Basic Y2xpZW50OnNlY3JldA==',
      'OpenAI-Organization: org-client',
      'OpenAI-Project: proj-client',
      'Connection: close, x-private',
      'X-Private: hop-secret',
      'Host: evil.example',
      'X-Ordinary: kept',
    ]);
    expect(r.status).toBe(200);
    const g = up.got[0]!;
    const rawText = g.rawHeaders.join('\n');
    for (const secret of [
      CLIENT_KEY,
      ADMIN_KEY,
      'client-cookie-777',
      'Y2xpZW50OnNlY3JldA',
      'org-client',
      'proj-client',
      'hop-secret',
    ])
      expect(rawText, secret).not.toContain(secret);
    const auths = g.rawHeaders.filter(
      (_, i) => i % 2 === 0 && g.rawHeaders[i]!.toLowerCase() === 'authorization',
    );
    expect(auths).toHaveLength(1);
    expect(g.headers.authorization).toBe(`Bearer ${PT_KEY}`);
    expect(g.headers['x-ordinary']).toBe('kept');
    expect(g.headers.host).toBe(`127.0.0.1:${up.port}`);
  });
});

describe('hostile clients: leaving mid-transfer', () => {
  it('a client that leaves mid-upload has its upstream request cut, and the pooled connection is not desynchronised', async () => {
    const up = await upstream((_req, res, g) => json(res, 200, { bytes: g.body.length }));
    const gw = await gatewayFor(up);
    const s = connect(gwPort(gw), '127.0.0.1');
    track({ close: () => s.destroy() });
    s.on('error', () => undefined);
    await new Promise<void>((resolve) => s.once('connect', () => resolve()));
    s.write(
      `POST /v1/files HTTP/1.1\r\nHost: gw\r\n${AUTH}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${2 * MIB}\r\n\r\n`,
    );
    s.write(Buffer.alloc(512 * 1024, 0x41));
    await until('the upstream got the request', () => up.got.length === 1, 5000);
    s.destroy();
    await until('the upstream request was cut', () => up.got[0]!.aborted, 5000);
    expect(up.got[0]!.ended).toBe(false);
    await until('the passthrough connection freed', () => activeOf(gw) === 0, 5000);
    // A request after it goes on a clean connection: its bytes, all of them, and nothing of the cut one.
    const body = randomBytes(3000);
    const r = await request(`${gw.url}/v1/files`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/octet-stream' },
      body,
    });
    expect(r.statusCode).toBe(200);
    expect(await r.body.json()).toEqual({ bytes: 3000 });
    expect(up.got[1]!.body.equals(body)).toBe(true);
  });

  it('a client that leaves mid-download has its upstream answer cut at once', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const t = setInterval(() => res.write(Buffer.alloc(4096, 0x62)), 20);
      res.on('close', () => clearInterval(t));
    });
    const gw = await gatewayFor(up, { provider: { timeouts: RELAXED } });
    const r = await request(`${gw.url}/v1/files/f/content`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
    });
    expect(r.statusCode).toBe(200);
    for await (const _ of r.body as AsyncIterable<Buffer>) break;
    await until('the upstream answer was cut', () => up.got[0]!.resClosed, 3000);
    await until('the passthrough connection freed', () => activeOf(gw) === 0, 3000);
  });
});

// ----------------------------------------------------------------------------------------- upstream side

describe('hostile upstreams: our key echoed back', () => {
  it('is masked in Set-Cookie, Location (another host, in its query, percent-encoded), WWW-Authenticate and x-* headers', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(302, [
        ['set-cookie', `k=${PT_KEY}; Path=/`],
        ['set-cookie', `b=${encodeURIComponent(ODD_KEY)}`],
        ['location', `https://elsewhere.example/cb?key=${PT_KEY}&k2=${encodeURIComponent(ODD_KEY)}`],
        ['www-authenticate', `Bearer realm="x", error="invalid_token ${PT_KEY}"`],
        ['x-echo-auth', `Bearer ${PT_KEY}`],
        ['x-echo-odd', ODD_KEY],
        ['content-type', 'text/plain'],
      ]);
      res.end('moved');
    });
    const gw = await gatewayFor(up, {
      provider: { headers: { 'x-extra-api-key': ODD_KEY } },
    });
    const r = await rawGet(gw, '/v1/files', [AUTH]);
    expect(r.status).toBe(302);
    for (const s of [...spellings(PT_KEY), ...spellings(ODD_KEY)]) expect(r.head, s).not.toContain(s);
    expect(r.headers.location).toMatch(/^https:\/\/elsewhere\.example\/cb\?key=/);
    expect(up.got).toHaveLength(1);
  });

  it('is masked in a JSON body however the provider spells it (as is, %-encoded, \\u002B, \\/), compressed or not', async () => {
    const body = JSON.stringify({
      plain: PT_KEY,
      url: `https://x.example/?k=${encodeURIComponent(ODD_KEY)}`,
      dotnet: 'X',
      php: 'Y',
    })
      .replace('"X"', `"${ODD_KEY.replace('+', '\\u002B')}"`)
      .replace('"Y"', `"${ODD_KEY.replace('/', '\\/')}"`);
    const codings: Record<string, (b: Buffer) => Buffer> = {
      identity: (b) => b,
      gzip: (b) => gzipSync(b),
      deflate: (b) => deflateSync(b),
      br: (b) => brotliCompressSync(b),
    };
    const up = await upstream((req, res) => {
      const coding = String(req.headers['x-want']);
      const bytes = codings[coding]!(Buffer.from(body));
      res.writeHead(200, {
        'content-type': 'application/json',
        ...(coding === 'identity' ? {} : { 'content-encoding': coding }),
      });
      // In two pieces, the cut inside the compressed bytes.
      res.write(bytes.subarray(0, bytes.length >> 1));
      setTimeout(() => res.end(bytes.subarray(bytes.length >> 1)), 20);
    });
    const gw = await gatewayFor(up, { provider: { headers: { 'x-second-api-key': ODD_KEY } } });
    for (const coding of Object.keys(codings)) {
      const r = await request(`${gw.url}/v1/anything`, {
        headers: {
          authorization: `Bearer ${CLIENT_KEY}`,
          'x-want': coding,
          'accept-encoding': 'gzip, deflate, br',
        },
      });
      expect(r.statusCode, coding).toBe(200);
      expect(r.headers['content-encoding'], coding).toBeUndefined();
      const text = await r.body.text();
      for (const s of [...spellings(PT_KEY), ...spellings(ODD_KEY)])
        expect(text, `${coding}: ${s}`).not.toContain(s);
      const parsed = JSON.parse(text) as Record<string, unknown>;
      expect(Object.keys(parsed), coding).toEqual(['plain', 'url', 'dotnet', 'php']);
    }
  });

  it('is masked in a Responses event stream spelt across output_text.delta events and TCP writes, and in response.failed', async () => {
    const parts = [PT_KEY.slice(0, 5), PT_KEY.slice(5, 13), PT_KEY.slice(13)];
    const ev = (type: string, obj: Record<string, unknown>): string =>
      `event: ${type}\ndata: ${JSON.stringify({ type, ...obj })}\n\n`;
    const stream = [
      ev('response.created', { sequence_number: 0, response: { id: 'resp_1', status: 'in_progress' } }),
      ev('response.output_text.delta', {
        item_id: 'msg_1',
        output_index: 0,
        content_index: 0,
        delta: 'Your key is ',
      }),
      ...parts.map((delta, i) =>
        ev('response.output_text.delta', {
          item_id: 'msg_1',
          output_index: 0,
          content_index: 0,
          delta,
          sequence_number: i + 2,
        }),
      ),
      ev('response.output_text.delta', { item_id: 'msg_1', output_index: 0, content_index: 0, delta: ' ok' }),
      ev('response.output_text.done', {
        item_id: 'msg_1',
        output_index: 0,
        content_index: 0,
        text: `Your key is ${PT_KEY} ok`,
      }),
      ev('response.failed', {
        response: {
          id: 'resp_1',
          status: 'failed',
          error: { code: 'server_error', message: `bad key ${PT_KEY}` },
        },
      }),
    ].join('');
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      // Cut every 7 bytes: events and keys split across writes.
      let at = 0;
      const next = (): void => {
        if (at >= stream.length) {
          res.end();
          return;
        }
        res.write(stream.slice(at, at + 7));
        at += 7;
        setImmediate(next);
      };
      next();
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: '{"model":"gpt-4o","input":"hi","stream":true}',
    });
    expect(r.statusCode).toBe(200);
    const text = await r.body.text();
    expect(text).not.toContain(PT_KEY);
    const events = text
      .split('\n\n')
      .filter((e) => e.trim() !== '')
      .map((e) => {
        const data = e.split('\n').find((l) => l.startsWith('data:'));
        return JSON.parse(data!.slice(5)) as Record<string, unknown>;
      });
    const deltas = events
      .filter((e) => e.type === 'response.output_text.delta')
      .map((e) => String(e.delta))
      .join('');
    expect(deltas, 'the key, spelt across deltas').not.toContain(PT_KEY);
    expect(deltas.startsWith('Your key is ')).toBe(true);
    expect(deltas.endsWith(' ok')).toBe(true);
    // Whatever leaks of the key, no more than its first 3 characters in a row (README).
    expect(deltas).not.toContain(PT_KEY.slice(0, 4));
    const failed = events.find((e) => e.type === 'response.failed');
    expect(JSON.stringify(failed)).not.toContain(PT_KEY);
    expect(events.map((e) => e.type).at(-1)).toBe('response.failed');
  });

  it('redirects (301, 302, 303, 307, 308) to another host are relayed, never followed', async () => {
    let stray = 0;
    const other = await upstream((_req, res) => {
      stray++;
      res.end('stray');
    });
    const up = await upstream((req, res) => {
      const code = Number(req.url!.split('/').at(-1));
      res.writeHead(code, { location: `${other.url}/steal?k=1` });
      res.end();
    });
    const gw = await gatewayFor(up);
    for (const code of [301, 302, 303, 307, 308]) {
      const r = await request(`${gw.url}/v1/files/${code}`, {
        method: code >= 307 ? 'POST' : 'GET',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        ...(code >= 307 ? { body: '{"a":1}' } : {}),
      });
      expect(r.statusCode).toBe(code);
      expect(r.headers.location).toBe(`${other.url}/steal?k=1`);
      await r.body.dump();
    }
    expect(stray).toBe(0);
  });

  it("drops a hop-by-hop header the provider's Connection names (connection: x-secret), and the standard ones", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        connection: 'keep-alive, x-secret',
        'x-secret': 'hop-only-value',
        'proxy-authenticate': 'Basic realm=up',
        'x-kept': 'yes',
      });
      res.end('{}');
    });
    const gw = await gatewayFor(up);
    const r = await rawGet(gw, '/v1/files', [AUTH]);
    expect(r.status).toBe(200);
    expect(r.headers['x-secret']).toBeUndefined();
    expect(r.head).not.toContain('hop-only-value');
    expect(r.headers['proxy-authenticate']).toBeUndefined();
    expect(r.headers['x-kept']).toBe('yes');
  });
});

describe('hostile upstreams: error bodies and framing', () => {
  for (const how of ['drops', 'stalls'] as const) {
    it(`an error body that ${how} inside our key is relayed with no 8-character run of the key (SPEC §8)`, async () => {
      const partial = `{"error":{"message":"Incorrect API key provided: ${PT_KEY.slice(0, PT_KEY.length - 3)}`;
      const up = await upstream((_req, res) => {
        res.writeHead(401, {
          'content-type': 'application/json',
          'content-length': String(partial.length + 100),
        });
        res.write(partial);
        if (how === 'drops') setTimeout(() => res.socket?.destroy(), 100);
      });
      const gw = await gatewayFor(up);
      const t0 = performance.now();
      const r = await request(`${gw.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
      const text = await r.body.text();
      expect(r.statusCode).toBe(401);
      expect(performance.now() - t0).toBeLessThan(TIMEOUTS.total_ms + 3000);
      expect(text, 'a key cut short by a broken body is still most of the key').not.toContain(
        PT_KEY.slice(0, 8),
      );
    });
  }

  it('response headers past 16 KiB: an OpenAI-shaped 502, promptly', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-huge': 'h'.repeat(100_000) });
      res.end('{}');
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    const body = (await r.body.json()) as { error?: { type?: string } };
    expect(r.statusCode).toBe(502);
    expect(body.error?.type).toBeDefined();
  });

  it("an upstream answer with extra bytes past its Content-Length (a second, smuggled answer) never becomes another request's answer", async () => {
    let conns = 0;
    let requests = 0;
    const server = createNetServer((sock) => {
      conns++;
      let buf = '';
      sock.on('error', () => undefined);
      sock.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        while (buf.includes('\r\n\r\n')) {
          buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
          requests++;
          if (requests === 1)
            sock.write(
              'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}' +
                'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{"poisoned":true}',
            );
          else
            sock.write(
              'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"second":true}',
            );
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    track({ close: () => new Promise<void>((resolve) => server.close(() => resolve())) });
    const sockets = new Set<Socket>();
    server.on('connection', (s: Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    track({ close: () => sockets.forEach((s) => s.destroy()) });
    const gw = await gatewayFor({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
    const first = await request(`${gw.url}/v1/files/1`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
    });
    const firstText = (await readAll(first.body as AsyncIterable<Buffer>)).text;
    await sleep(100);
    const second = await request(`${gw.url}/v1/files/2`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
    });
    const secondText = (await readAll(second.body as AsyncIterable<Buffer>)).text;
    expect(firstText).not.toContain('poisoned');
    expect(secondText).not.toContain('poisoned');
    if (second.statusCode === 200) expect(secondText).toBe('{"second":true}');
    expect(conns).toBeGreaterThanOrEqual(1);
  });

  it('a Responses event stream whose first event is over 1 Mi characters (an echoed long instructions) still has our key masked across later deltas', async () => {
    const ev = (type: string, obj: Record<string, unknown>): string =>
      `event: ${type}\ndata: ${JSON.stringify({ type, ...obj })}\n\n`;
    const d = (delta: string): string =>
      ev('response.output_text.delta', { item_id: 'msg_1', output_index: 0, content_index: 0, delta });
    const stream =
      ev('response.created', { response: { id: 'resp_1', instructions: 'i'.repeat(2_000_000) } }) +
      d('key: ') +
      d(PT_KEY.slice(0, 10)) +
      d(PT_KEY.slice(10, 20)) +
      d(PT_KEY.slice(20)) +
      ev('response.output_text.done', { item_id: 'msg_1', output_index: 0, content_index: 0, text: 'x' }) +
      ev('response.completed', { response: { id: 'resp_1', status: 'completed' } });
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let at = 0;
      const next = (): void => {
        if (at >= stream.length) {
          res.end();
          return;
        }
        // 64 KiB writes, then the small events one by one.
        const n = at < 2_000_000 ? 65536 : 40;
        res.write(stream.slice(at, at + n));
        at += n;
        setImmediate(next);
      };
      next();
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: '{"stream":true}',
    });
    const text = await r.body.text();
    const deltas = text
      .split('\n\n')
      .map((e) => e.split('\n').find((l) => l.startsWith('data:')))
      .filter((l): l is string => l !== undefined && l.includes('output_text.delta'))
      .map((l) => (JSON.parse(l.slice(5)) as { delta: string }).delta)
      .join('');
    expect(deltas.startsWith('key: ')).toBe(true);
    expect(deltas, 'the key, spelt across deltas after a long event').not.toContain(PT_KEY);
  });
});

describe('hostile upstreams: bodies that never end, or end too soon', () => {
  it('a JSON body that stalls after its headers is cut within its timeouts, and the client can tell it was cut', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"data":[{"id":"file-1"},');
    });
    const gw = await gatewayFor(up);
    const t0 = performance.now();
    const r = await request(`${gw.url}/v1/files`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    expect(r.statusCode).toBe(200);
    const { error } = await readAll(r.body as AsyncIterable<Buffer>);
    expect(error, 'a cut answer ended as if whole').toBeDefined();
    expect(performance.now() - t0).toBeLessThan(TIMEOUTS.total_ms + 3000);
  });

  it('an event stream that trickles forever (never idle) is cut at total_ms, the client told it was cut', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const t = setInterval(() => res.write(': keep-alive\n\n'), 300);
      res.on('close', () => clearInterval(t));
    });
    const gw = await gatewayFor(up);
    const t0 = performance.now();
    const r = await request(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: '{"stream":true}',
    });
    const { error } = await readAll(r.body as AsyncIterable<Buffer>);
    const ms = performance.now() - t0;
    expect(error, 'a cut stream ended as if whole').toBeDefined();
    expect(ms).toBeGreaterThan(TIMEOUTS.total_ms - 500);
    expect(ms).toBeLessThan(TIMEOUTS.total_ms + 4000);
    await until('the upstream answer was cut', () => up.got[0]!.resClosed, 3000);
  });

  for (const kind of ['json', 'sse', 'octet'] as const) {
    it(`a chunked ${kind} answer whose connection drops mid-body reaches the client as cut, never as whole`, async () => {
      const ct = { json: 'application/json', sse: 'text/event-stream', octet: 'application/octet-stream' }[
        kind
      ];
      const up = await upstream((_req, res) => {
        res.writeHead(200, { 'content-type': ct });
        res.write(
          kind === 'sse' ? 'event: response.created\ndata: {"type":"response.created"}\n\n' : '{"a":"',
        );
        setTimeout(() => res.socket?.destroy(), 100);
      });
      const gw = await gatewayFor(up);
      const r = await request(`${gw.url}/v1/files/x`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
      expect(r.statusCode).toBe(200);
      const { error } = await readAll(r.body as AsyncIterable<Buffer>);
      expect(error, 'the cut answer was ended cleanly').toBeDefined();
    });
  }

  it('a Content-Length answer whose connection drops short of it reaches the client as cut', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"a":"');
      setTimeout(() => res.socket?.destroy(), 100);
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/files/x`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    expect(r.statusCode).toBe(200);
    const { error } = await readAll(r.body as AsyncIterable<Buffer>);
    expect(error).toBeDefined();
  });

  it('a gzip answer that is cut short (it ends cleanly, its gzip does not) reaches the client as cut, not as a shorter file', async () => {
    const whole = gzipSync(Buffer.from(JSON.stringify({ data: 'z'.repeat(200_000) })));
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(whole.subarray(0, whole.length >> 1));
    });
    const gw = await gatewayFor(up);
    const r = await request(`${gw.url}/v1/files/x`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'accept-encoding': 'gzip' },
    });
    expect(r.statusCode).toBe(200);
    const { text, error } = await readAll(r.body as AsyncIterable<Buffer>);
    if (r.headers['content-encoding'] === undefined)
      // Decoded by the gateway (to mask): the client can no longer see the gzip is broken; it must see a cut.
      expect(error, `a broken gzip became a clean ${text.length}-character answer`).toBeDefined();
  });

  it('a 200 MB answer to a client that reads slowly: the gateway holds a bounded part of it (RSS, and how far the provider got)', async () => {
    const TOTAL = 200 * MIB;
    let sent = 0;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const piece = Buffer.alloc(MIB, 0x63);
      const pump = (): void => {
        while (sent < TOTAL) {
          sent += piece.length;
          if (!res.write(piece)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    });
    const gw = await gatewayFor(up, { provider: { timeouts: RELAXED } });
    global.gc?.();
    const before = process.memoryUsage().rss;
    let peak = before;
    const r = await request(`${gw.url}/v1/files/big/content`, {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
    });
    expect(r.statusCode).toBe(200);
    let got = 0;
    let first = true;
    let aheadAtPause = 0;
    let reads = 0;
    for await (const c of r.body as AsyncIterable<Buffer>) {
      got += c.length;
      if (first) {
        first = false;
        // The client reads nothing for 2 s: the provider cannot push the rest into the gateway meanwhile.
        await sleep(2000);
        aheadAtPause = sent - got;
        peak = Math.max(peak, process.memoryUsage().rss);
      }
      if (++reads % 64 === 0) {
        peak = Math.max(peak, process.memoryUsage().rss);
        // A slow reader: a pause now and then.
        await sleep(5);
      }
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    expect(got).toBe(TOTAL);
    expect(aheadAtPause, 'bytes the provider sent that the client had not read').toBeLessThan(48 * MIB);
    expect(peak - before, 'resident memory grew with the answer').toBeLessThan(96 * MIB);
  }, 120_000);
});

// ------------------------------------------------------------------------------------------------ WebSocket

describe('WebSocket passthrough: hostile clients', () => {
  const { gateway } = passthroughGateways(track, { key: PT_KEY, timeouts: TIMEOUTS });
  const { openClient, refusedHandshake, rawClient } = wsClients(track, {
    record: (data, binary) => ({
      text: data.toString(binary ? 'latin1' : 'utf8'),
      binary,
      bytes: data.length,
    }),
  });

  it('no client key: 401 with no upstream connection; a key only in the query: 401', async () => {
    const up = await wsUpstream(track);
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const none = await refusedHandshake(wsUrl(gw));
    expect(none.status).toBe(401);
    const query = await refusedHandshake(wsUrl(gw, `/v1/realtime?model=m&api_key=${CLIENT_KEY}`));
    expect(query.status).toBe(401);
    expect(up.connections).toBe(0);
  });

  it("another site's Origin is refused 403 without Authorization (the browser SDK's subprotocol key, Origin: null); a server client with Authorization opens", async () => {
    const up = await wsUpstream(track);
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const protocols = ['realtime', `openai-insecure-api-key.${CLIENT_KEY}`];
    const evil = await refusedHandshake(wsUrl(gw), { protocols, origin: 'https://evil.example' });
    expect(evil.status).toBe(403);
    const nullOrigin = await refusedHandshake(wsUrl(gw), { protocols, origin: 'null' });
    expect(nullOrigin.status).toBe(403);
    // Another port on the gateway's host name is another origin too.
    const otherPort = await refusedHandshake(wsUrl(gw), { protocols, origin: 'http://127.0.0.1:1' });
    expect(otherPort.status).toBe(403);
    expect(up.connections).toBe(0);
    const c = await openClient(wsUrl(gw), {
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
      origin: 'https://evil.example',
    });
    c.ws.send('hi');
    await until('the echo', () => c.messages.length === 1, 5000);
    expect(up.seen[0]!.headers.authorization).toBe(`Bearer ${PT_KEY}`);
  });

  it('a message past body_limit_bytes closes the session 1009 and never reaches the provider; binary goes as binary; bad UTF-8 is refused 1007', async () => {
    const LIMIT = 32 * 1024;
    const up = await wsUpstream(track, { echo: false });
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY], bodyLimit: LIMIT });
    const c = await openClient(wsUrl(gw), { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    c.ws.send(Buffer.from([0, 1, 2, 0xff]), { binary: true });
    await until('the binary message', () => up.got[0]?.length === 1, 5000);
    expect(up.got[0]![0]).toMatchObject({ binary: true, bytes: 4 });
    c.ws.send('x'.repeat(LIMIT + 1));
    const closed = await Promise.race([c.closed, sleep(5000).then(() => undefined)]);
    expect(closed?.code).toBe(1009);
    await until('the upstream side closed', () => up.closes[0] !== undefined, 5000);
    expect(up.got[0]!.every((m) => m.bytes <= LIMIT)).toBe(true);

    const { socket } = await rawClient(gwPort(gw), '/v1/realtime?model=m', [
      `Authorization: Bearer ${CLIENT_KEY}`,
    ]);
    const frames: Buffer[] = [];
    socket.on('data', (d: Buffer) => frames.push(d));
    socket.resume();
    socket.write(clientFrame(0x1, Buffer.from([0x68, 0xff, 0xfe])));
    await until(
      'the gateway closed the raw session',
      () => socket.destroyed || socket.readableEnded,
      5000,
    ).catch(() => undefined);
    const all = Buffer.concat(frames);
    // A close frame (0x88) with code 1007.
    const at = all.indexOf(0x88);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(all.readUInt16BE(at + 2)).toBe(1007);
    expect(up.got[1]?.some((m) => m.bytes === 3) ?? false).toBe(false);
  });
});

describe('WebSocket passthrough: hostile upstreams', () => {
  const { gateway } = passthroughGateways(track, { key: ODD_KEY, timeouts: TIMEOUTS });
  const { openClient, refusedHandshake } = wsClients(track, {
    record: (data, binary) => data.toString(binary ? 'latin1' : 'utf8'),
  });

  it('an HTTP answer that echoes our key as .NET, PHP or a URL writes it is masked (the baseline for the next test)', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        `{"dotnet":"${ODD_KEY.replace('+', '\\u002B')}","url":"?k=${encodeURIComponent(ODD_KEY)}","php":"${ODD_KEY.replace('/', '\\/')}"}`,
      );
    });
    const gw = await gatewayFor(up, { key: ODD_KEY });
    const r = await request(`${gw.url}/v1/anything`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
    const text = await r.body.text();
    for (const s of spellings(ODD_KEY)) expect(text, s).not.toContain(s);
  });

  it('a WebSocket message that echoes our key, as is or as .NET, PHP or a URL writes it, has it masked', async () => {
    const messages = [
      JSON.stringify({ type: 'error', error: { message: `bad key ${ODD_KEY}` } }),
      `{"type":"error","error":{"message":"bad key ${ODD_KEY.replace('+', '\\u002B')}"}}`,
      `{"type":"error","error":{"message":"bad key ${ODD_KEY.replace('/', '\\/')}"}}`,
      JSON.stringify({ type: 'session.updated', url: `wss://x.example/?key=${encodeURIComponent(ODD_KEY)}` }),
    ];
    const up = await wsUpstream(track, {
      echo: false,
      onSession: (ws) => {
        for (const m of messages) ws.send(m);
        ws.send(Buffer.from(`bin:${ODD_KEY}`), { binary: true });
      },
    });
    const gw = await gateway(`${up.url}/v1`);
    const c = await openClient(wsUrl(gw));
    await until('every message', () => c.messages.length === messages.length + 1, 5000);
    const leaks: string[] = [];
    for (const [i, m] of c.messages.entries())
      for (const s of spellings(ODD_KEY)) if (m.includes(s)) leaks.push(`message ${i}: ${m}`);
    expect(leaks, 'messages that handed the client our key').toEqual([]);
  });

  it('a Realtime text delta stream that spells our key across delta events has it masked, as the Responses stream does', async () => {
    const parts = [ODD_KEY.slice(0, 6), ODD_KEY.slice(6, 15), ODD_KEY.slice(15)];
    const up = await wsUpstream(track, {
      echo: false,
      onSession: (ws) => {
        for (const delta of ['The key: ', ...parts, '.'])
          ws.send(
            JSON.stringify({
              type: 'response.output_text.delta',
              item_id: 'i1',
              output_index: 0,
              content_index: 0,
              delta,
            }),
          );
        ws.send(
          JSON.stringify({
            type: 'response.output_text.done',
            item_id: 'i1',
            output_index: 0,
            content_index: 0,
            text: 'x',
          }),
        );
      },
    });
    const gw = await gateway(`${up.url}/v1`);
    const c = await openClient(wsUrl(gw));
    await until('the deltas', () => c.messages.some((m) => m.includes('.done')), 5000);
    const text = c.messages
      .map((m) => JSON.parse(m) as { type: string; delta?: string })
      .filter((m) => m.type.endsWith('.delta'))
      .map((m) => m.delta)
      .join('');
    expect(text, 'the key, spelt across Realtime deltas').not.toContain(ODD_KEY);
  });

  it('a refusal whose body stalls inside our key is relayed within the handshake bound with no 8-character run of the key', async () => {
    const partial = `{"error":{"message":"Incorrect API key provided: ${ODD_KEY.slice(0, ODD_KEY.length - 3)}`;
    const up = await rawUpstream(track, (_req, socket) => {
      socket.write(
        `HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: ${partial.length + 100}\r\n\r\n${partial}`,
      );
    });
    const gw = await gateway(`${up.url}/v1`);
    const r = await refusedHandshake(wsUrl(gw));
    expect(r.status).toBe(401);
    expect(r.ms).toBeLessThan(TIMEOUTS.connect_ms + TIMEOUTS.first_byte_ms + 3000);
    expect(r.text, 'a key cut short by a stalled body is still most of the key').not.toContain(
      ODD_KEY.slice(0, 8),
    );
  });

  for (const [status, extra] of [
    [401, []],
    [429, ['Retry-After: 7']],
    [500, []],
  ] as const) {
    it(`an upstream that refuses the upgrade with ${status} has its status relayed${status === 429 ? ' with Retry-After' : ''}, our key scrubbed, no session opened`, async () => {
      const body = JSON.stringify({
        error: { message: `Incorrect API key provided: ${ODD_KEY}`, code: 'x' },
      });
      const up = await rawUpstream(track, (_req, socket) => {
        socket.end(
          [
            `HTTP/1.1 ${status} Refused`,
            'Content-Type: application/json',
            `Content-Length: ${Buffer.byteLength(body)}`,
            `X-Echo: ${ODD_KEY}`,
            ...extra,
            '',
            body,
          ].join('\r\n'),
        );
      });
      const gw = await gateway(`${up.url}/v1`);
      const r = await refusedHandshake(wsUrl(gw));
      expect(r.status).toBe(status);
      if (status === 429) expect(r.headers['retry-after']).toBe('7');
      for (const s of spellings(ODD_KEY)) {
        expect(r.text, s).not.toContain(s);
        expect(JSON.stringify(r.headers), s).not.toContain(s);
      }
      await until('the upstream connection freed', () => activeOf(gw) === 0, 3000);
    });
  }

  it('a client that vanishes (no close frame) has its upstream closed at once, no socket left on either side', async () => {
    const up = await wsUpstream(track);
    const gw = await gateway(`${up.url}/v1`);
    const c = await openClient(wsUrl(gw));
    c.ws.send('hello');
    await until('the echo', () => c.messages.length === 1, 5000);
    expect(up.open).toBe(1);
    c.ws.terminate();
    await until('the upstream session closed', () => up.closes[0] !== undefined, 3000);
    await until('the upstream TCP connection closed', () => up.open === 0, 3000);
    await until('the passthrough connection freed', () => activeOf(gw) === 0, 3000);
  });

  it('an upstream that vanishes (no close frame) has its client closed at once with a close code, not left open', async () => {
    const up = await wsUpstream(track);
    const gw = await gateway(`${up.url}/v1`);
    const c = await openClient(wsUrl(gw));
    c.ws.send('hello');
    await until('the echo', () => c.messages.length === 1, 5000);
    up.peers[0]!.terminate();
    const t0 = performance.now();
    const closed = await Promise.race([c.closed, sleep(5000).then(() => undefined)]);
    expect(closed, 'the client was left open').toBeDefined();
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(closed!.code).not.toBe(1000);
    expect(c.ws.readyState).toBe(WebSocket.CLOSED);
    await until('the passthrough connection freed', () => activeOf(gw) === 0, 3000);
  });
});
