/**
 * Edges of the WebSocket passthrough (the OpenAI Realtime API through `server.passthrough`), against real
 * `ws` peers on loopback. The rules held here:
 * - A session whose other side vanishes ends at once on both sides (SPEC §8: a client that disconnects gets
 *   its upstream request aborted at once), even while back-pressure holds one side unread.
 * - An upstream that refuses the handshake has its refusal relayed as an HTTP passthrough answer would be:
 *   its status, its body scrubbed, and its retry hint (`Retry-After`); an upstream that answers the upgrade
 *   with a plain 2xx does not speak WebSocket: that is a failed upstream (502), never a "successful" failure.
 * - With `server.cors` set, a browser page on an origin it does not allow cannot open a session (browsers do
 *   not apply CORS to WebSockets: the Origin check is the server's).
 * - The provider's `max_concurrency` bounds its connections, passthrough sessions included.
 * - The client's credentials (every header form) never reach the provider.
 * - Each session is one request: counted once in `llm_router_requests_total` (status 101) and logged once,
 *   however it ends, and its 101 carries the request id.
 */
import { randomBytes, createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, value } from '../helpers/prom-text.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-WSEDGE-SECRET-6161';
const CLIENT_KEY = 'client-key-wsedge-3131';
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1000, idle_ms: 500, total_ms: 1000 };
const WAIT = { timeout: 5000, interval: 20 };
/** Well under ws's own 30 s closing-handshake timeout: "at once", with room for a loaded machine. */
const PROMPT = { timeout: 5000, interval: 25 };
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CHUNK = 256 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface Closed {
  readonly code: number;
  readonly reason: string;
}

function listen(server: Server): Promise<void> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  return new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

interface Upstream {
  readonly url: string;
  readonly wss: WebSocketServer;
  readonly seen: { url: string; headers: IncomingHttpHeaders; rawHeaders: string[] }[];
  readonly peers: WebSocket[];
  readonly closes: (Closed | undefined)[];
  /** TCP connections ever accepted, and those open now. */
  connections: number;
  open: number;
  /** The most TCP connections open at once. */
  peak: number;
}

/** A `ws` upstream that echoes every message; `onSession` may add behaviour. */
async function wsUpstream(
  opts: { onSession?: (ws: WebSocket, req: IncomingMessage) => void; echo?: boolean } = {},
): Promise<Upstream> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  });
  const sockets = new Set<Socket>();
  const wss = new WebSocketServer({ server });
  const up: Upstream = {
    url: '',
    wss,
    seen: [],
    peers: [],
    closes: [],
    connections: 0,
    open: 0,
    peak: 0,
  };
  server.on('connection', (s: Socket) => {
    up.connections += 1;
    up.open += 1;
    up.peak = Math.max(up.peak, up.open);
    sockets.add(s);
    s.on('close', () => {
      up.open -= 1;
      sockets.delete(s);
    });
  });
  wss.on('connection', (ws, req) => {
    const index = up.peers.length;
    up.seen.push({ url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders });
    up.peers.push(ws);
    up.closes.push(undefined);
    ws.on('error', () => undefined);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (opts.echo !== false && ws.readyState === WebSocket.OPEN)
        ws.send(data as Buffer, { binary: isBinary });
    });
    ws.on('close', (code, reason) => (up.closes[index] = { code, reason: reason.toString() }));
    opts.onSession?.(ws, req);
  });
  await listen(server);
  track({
    close: () => {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
      return closeServer(server, sockets);
    },
  });
  return Object.assign(up, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

/** An upstream that answers each upgrade by hand on the raw socket. */
async function rawUpstream(
  onUpgrade: (req: IncomingMessage, socket: Socket) => void,
): Promise<{ url: string; connections: () => number }> {
  const server = createServer((_req, res) => {
    res.writeHead(404);
    res.end();
  });
  const sockets = new Set<Socket>();
  let connections = 0;
  server.on('connection', (s: Socket) => {
    connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    socket.on('error', () => undefined);
    onUpgrade(req, socket);
  });
  await listen(server);
  track({ close: () => closeServer(server, sockets) });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => connections,
  };
}

function acceptKey(key: string): string {
  return createHash('sha1')
    .update(key + GUID)
    .digest('base64');
}

function accept101(req: IncomingMessage, socket: Socket): void {
  socket.write(
    [
      'HTTP/1.1 101 Switching Protocols',
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Accept: ${acceptKey(String(req.headers['sec-websocket-key']))}`,
      '',
      '',
    ].join('\r\n'),
  );
}

/** One masked (client-to-server) text frame. */
function clientFrame(payload: Buffer): Buffer {
  const mask = randomBytes(4);
  if (payload.length >= 126) throw new Error('frame too long for this helper');
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] = masked[i]! ^ mask[i % 4]!;
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

interface Gw {
  apiKeys?: string[];
  bodyLimit?: number;
  cors?: { origins: string[] };
  maxConcurrency?: number;
}

function configOf(baseUrl: string, opts: Gw = {}): Record<string, unknown> {
  return {
    server: {
      passthrough: 'pt',
      ...(opts.apiKeys ? { api_keys: opts.apiKeys } : {}),
      ...(opts.bodyLimit !== undefined ? { body_limit_bytes: opts.bodyLimit } : {}),
      ...(opts.cors ? { cors: opts.cors } : {}),
    },
    providers: [
      {
        name: 'pt',
        base_url: baseUrl,
        api_key: PT_KEY,
        timeouts: TIMEOUTS,
        ...(opts.maxConcurrency !== undefined ? { max_concurrency: opts.maxConcurrency } : {}),
        models: [{ name: 'm' }],
      },
    ],
    routes: { r: { targets: ['pt/m'] } },
  };
}

async function gateway(baseUrl: string, opts: Gw = {}): Promise<TestGateway> {
  return track(await startGateway(configOf(baseUrl, opts)));
}

function wsUrl(gw: TestGateway, path: string): string {
  return `${gw.url.replace(/^http/, 'ws')}${path}`;
}

interface Client {
  readonly ws: WebSocket;
  readonly messages: string[];
  readonly closed: Promise<Closed>;
  readonly upgradeHeaders: IncomingHttpHeaders;
  closedWith?: Closed;
}

function openClient(
  url: string,
  opts: { headers?: Record<string, string>; protocols?: string[]; origin?: string } = {},
): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts.protocols ?? [], {
      headers: opts.headers,
      perMessageDeflate: false,
      ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
    });
    let upgradeHeaders: IncomingHttpHeaders = {};
    const messages: string[] = [];
    let client: Client | undefined;
    const closed = new Promise<Closed>((done) =>
      ws.on('close', (code, reason) => {
        const c = { code, reason: reason.toString() };
        if (client) client.closedWith = c;
        done(c);
      }),
    );
    ws.on('upgrade', (res) => (upgradeHeaders = res.headers));
    ws.on('message', (data: RawData) => messages.push(String(data)));
    ws.on('error', (err) => {
      if (!client) reject(err);
    });
    ws.on('open', () => {
      client = { ws, messages, closed, upgradeHeaders };
      resolve(client);
    });
    track({ close: () => ws.terminate() });
  });
}

interface Refusal {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
}

/** A handshake that must not open: resolves with the HTTP answer; rejects if it opened. */
function refusedHandshake(
  url: string,
  opts: { headers?: Record<string, string>; origin?: string } = {},
): Promise<Refusal> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, [], {
      headers: opts.headers,
      followRedirects: false,
      ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
    });
    track({ close: () => ws.terminate() });
    ws.on('open', () => reject(new Error('the handshake succeeded')));
    ws.on('error', reject);
    ws.on('unexpected-response', (req, res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text });
      });
    });
  });
}

/** A raw client that does the handshake and then reads nothing (its socket stays paused). */
function rawClient(port: number, path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const socket = connect(port, '127.0.0.1', () =>
      socket.write(
        [
          `GET ${path} HTTP/1.1`,
          'Host: 127.0.0.1',
          'Upgrade: websocket',
          'Connection: Upgrade',
          `Sec-WebSocket-Key: ${key}`,
          'Sec-WebSocket-Version: 13',
          '',
          '',
        ].join('\r\n'),
      ),
    );
    track({ close: () => socket.destroy() });
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause();
      const head = buf.subarray(0, end).toString('latin1');
      if (!head.startsWith('HTTP/1.1 101')) reject(new Error(`not a 101: ${head}`));
      else resolve(socket);
    };
    socket.on('data', onData);
    socket.on('error', () => undefined);
  });
}

function openAIError(text: string): { message: string; type: string } {
  const body = JSON.parse(text) as {
    error: { message: string; type: string; param: unknown; code: unknown };
  };
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  return body.error;
}

/** Samples `count()` until it stops moving (back-pressure has taken hold) or `max` is reached. */
async function untilStalled(count: () => number, max: number): Promise<void> {
  let last = -1;
  let still = 0;
  for (let i = 0; i < 30 && count() < max; i++) {
    await sleep(150);
    const now = count();
    still = now === last ? still + 1 : 0;
    if (still >= 2) return;
    last = now;
  }
}

function requestLines(gw: TestGateway): Record<string, unknown>[] {
  return gw.logs.filter((l) => l.msg === 'request');
}

// ---------------------------------------------------------------------------------------------------------

describe('a session whose other side vanishes while back-pressure holds one side unread', () => {
  it('ends the upstream connection at once when a client that stopped reading vanishes', async () => {
    const TOTAL = 400; // 100 MiB if nothing held it back
    let sent = 0;
    let acked = 0;
    const up = await wsUpstream({
      echo: false,
      onSession: (ws) => {
        const payload = Buffer.alloc(CHUNK, 1);
        const pump = (): void => {
          while (sent < TOTAL && sent - acked < 8 && ws.readyState === WebSocket.OPEN) {
            sent += 1;
            ws.send(payload, { binary: true }, (err) => {
              if (err) return;
              acked += 1;
              pump();
            });
          }
        };
        ws.on('message', () => pump());
      },
    });
    const gw = await gateway(`${up.url}/v1`, { bodyLimit: 1024 * 1024 });
    const socket = await rawClient(Number(new URL(gw.url).port), '/v1/realtime');
    socket.write(clientFrame(Buffer.from('go'))); // starts the audio flood, then reads nothing
    await vi.waitFor(() => expect(acked).toBeGreaterThan(0), WAIT);
    await untilStalled(() => acked, TOTAL);
    expect(acked).toBeLessThan(TOTAL); // back-pressure holds the upstream: the precondition of this test
    expect(up.open).toBe(1);

    socket.destroy(); // the client's tab is closed, its TCP connection gone
    // SPEC §8: its upstream is ended at once, not after ws's 30 s closing-handshake timeout.
    await vi.waitFor(() => expect(up.open, 'upstream TCP connections still open').toBe(0), PROMPT);
    expect(up.closes[0]).toBeDefined();
    // And the session is done: its one request line is written.
    await vi.waitFor(() => expect(requestLines(gw).filter((l) => l.status === 101)).toHaveLength(1), PROMPT);
  }, 20_000);

  it('closes the client at once when the upstream vanishes while it is not reading the client', async () => {
    let upSocket: Socket | undefined;
    const up = await rawUpstream((req, socket) => {
      accept101(req, socket);
      upSocket = socket;
      socket.pause(); // reads nothing: the client's audio backs up
    });
    const gw = await gateway(`${up.url}/v1`, { bodyLimit: 1024 * 1024 });
    const client = await openClient(wsUrl(gw, '/v1/realtime'));
    await vi.waitFor(() => expect(upSocket).toBeDefined(), WAIT);
    const TOTAL = 400;
    let sent = 0;
    let acked = 0;
    const payload = Buffer.alloc(CHUNK, 2);
    const pump = (): void => {
      while (sent < TOTAL && sent - acked < 8 && client.ws.readyState === WebSocket.OPEN) {
        sent += 1;
        client.ws.send(payload, { binary: true }, (err) => {
          if (err) return;
          acked += 1;
          pump();
        });
      }
    };
    pump();
    await untilStalled(() => acked, TOTAL);
    expect(acked).toBeLessThan(TOTAL); // the gateway stopped reading the client: the precondition

    upSocket!.destroy(); // the upstream's process dies
    // The client learns the session failed (1014 bad gateway, not a normal 1000), without waiting 30 s.
    await vi.waitFor(() => expect(client.closedWith, 'client still open').toBeDefined(), PROMPT);
    expect(client.closedWith!.code).not.toBe(1000);
    await vi.waitFor(() => expect(requestLines(gw).filter((l) => l.status === 101)).toHaveLength(1), PROMPT);
  }, 20_000);
});

// ---------------------------------------------------------------------------------------------------------

describe('an upstream that refuses the handshake', () => {
  it("relays a 429's (and a 503's) Retry-After with its status, as the HTTP passthrough does", async () => {
    for (const status of [429, 503]) {
      const up = await rawUpstream((_req, socket) => {
        const body = JSON.stringify({
          error: {
            message: 'Rate limit reached',
            type: 'requests',
            param: null,
            code: 'rate_limit_exceeded',
          },
        });
        socket.end(
          `HTTP/1.1 ${status} Too Many\r\ncontent-type: application/json\r\nretry-after: 7\r\n` +
            `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
        );
      });
      const gw = await gateway(`${up.url}/v1`);
      const r = await refusedHandshake(wsUrl(gw, '/v1/realtime?model=m'));
      expect(r.status).toBe(status);
      expect(openAIError(r.text).message).toBe('Rate limit reached');
      // The client's only hint of when to reconnect (an SDK's backoff reads it).
      expect(r.headers['retry-after'], `${status}: retry-after`).toBe('7');
      // A refused handshake holds none of the provider's connections afterwards.
      await vi.waitFor(() => expect(gw.gateway.runtime.passthrough?.client.active).toBe(0), WAIT);
    }
  });

  it('answers 502 upstream_error when the upstream answers the upgrade with a plain 200 (it speaks no WebSocket)', async () => {
    // A vLLM or a plain HTTP app at base_url: it ignores `Upgrade` and answers the GET.
    const up = await rawUpstream((_req, socket) => {
      const body = JSON.stringify({ object: 'list', data: [] });
      socket.end(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `connection: close\r\n\r\n${body}`,
      );
    });
    const gw = await gateway(`${up.url}/v1`);
    const r = await refusedHandshake(wsUrl(gw, '/v1/realtime'));
    // A 2xx to a failed handshake tells the client nothing failed; the upstream did not do what was asked.
    expect(r.status).toBe(502);
    expect(openAIError(r.text).type).toBe('upstream_error');
    await vi.waitFor(() => expect(gw.gateway.runtime.passthrough?.client.active).toBe(0), WAIT);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('who may open a session', () => {
  it('refuses a handshake from a browser origin server.cors does not allow, before any upstream connection', async () => {
    const up = await wsUpstream();
    const gw = await gateway(`${up.url}/v1`, { cors: { origins: ['https://app.example.com'] } });
    // The allowed page opens its session.
    const ok = await openClient(wsUrl(gw, '/v1/realtime'), { origin: 'https://app.example.com' });
    ok.ws.send('hi');
    await vi.waitFor(() => expect(ok.messages).toEqual(['hi']), WAIT);
    expect(up.connections).toBe(1);
    // Any other page a user visits: browsers apply no CORS to WebSockets, so this is the gateway's check, or
    // that page uses the operator's provider key (and reads every answer) with no key of its own.
    const r = await refusedHandshake(wsUrl(gw, '/v1/realtime'), { origin: 'https://evil.example.net' });
    expect(r.status).toBe(403);
    await sleep(100);
    expect(up.connections).toBe(1);
  });

  it("never forwards the client's credentials in any header form (api-key, x-api-key, cookie, x-admin-key)", async () => {
    const up = await wsUpstream();
    const gw = await gateway(`${up.url}/v1`, { apiKeys: [CLIENT_KEY] });
    const client = await openClient(wsUrl(gw, '/v1/realtime?model=m'), {
      headers: {
        authorization: `Bearer ${CLIENT_KEY}`,
        'api-key': `${CLIENT_KEY}-azure`,
        'x-api-key': `${CLIENT_KEY}-anthropic`,
        cookie: `session=${CLIENT_KEY}-cookie`,
        'x-admin-key': `${CLIENT_KEY}-admin`,
        'proxy-authorization': `Basic ${CLIENT_KEY}-proxy`,
      },
    });
    client.ws.send('x');
    await vi.waitFor(() => expect(client.messages).toHaveLength(1), WAIT);
    const raw = JSON.stringify(up.seen[0]!.rawHeaders);
    expect(raw).not.toContain(CLIENT_KEY);
    expect(up.seen[0]!.headers.authorization).toBe(`Bearer ${PT_KEY}`);
  });

  it("keeps the provider's max_concurrency: no more upstream connections than it allows, each freed at its end", async () => {
    // README: max_concurrency is the provider's connections "for its routed and passthrough requests together".
    const up = await wsUpstream();
    const gw = await gateway(`${up.url}/v1`, { maxConcurrency: 2 });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 4 }, () => openClient(wsUrl(gw, '/v1/realtime'))),
    );
    await sleep(200);
    // Past it a handshake is refused (503, Retry-After): what it must not do is open a third connection.
    expect(up.peak).toBeLessThanOrEqual(2);
    const open = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    expect(open).toHaveLength(2);
    // Sessions that end give their connections back: two more open.
    for (const c of open) {
      c.ws.close(1000);
      await c.closed;
    }
    await vi.waitFor(() => expect(gw.gateway.runtime.passthrough?.client.active).toBe(0), WAIT);
    const again = await Promise.allSettled(
      Array.from({ length: 2 }, () => openClient(wsUrl(gw, '/v1/realtime'))),
    );
    expect(again.filter((o) => o.status === 'fulfilled')).toHaveLength(2);
    for (const o of again) if (o.status === 'fulfilled') o.value.ws.terminate();
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('a session is one request', () => {
  it('is counted and logged once, however it ends, and its 101 carries the request id', async () => {
    const up = await wsUpstream();
    const gw = await gateway(`${up.url}/v1`);
    const before =
      value(await scrape(gw.url), 'llm_router_requests_total', {
        route: 'none',
        provider: 'none',
        model: 'none',
        status: '101',
      }) ?? 0;

    // 1. A normal close, with the client's own request id.
    const a = await openClient(wsUrl(gw, '/v1/realtime?model=m'), {
      headers: { 'x-request-id': 'ws-edge-1' },
    });
    expect(a.upgradeHeaders['x-request-id']).toBe('ws-edge-1');
    a.ws.close(1000);
    await a.closed;
    // 2. The client vanishes without a close frame.
    const b = await openClient(wsUrl(gw, '/v1/realtime'));
    expect(String(b.upgradeHeaders['x-request-id'])).toMatch(/\S/);
    await vi.waitFor(() => expect(up.peers).toHaveLength(2), WAIT);
    b.ws.terminate();
    // 3. The upstream vanishes.
    const c = await openClient(wsUrl(gw, '/v1/realtime'));
    await vi.waitFor(() => expect(up.peers).toHaveLength(3), WAIT);
    up.peers[2]!.terminate();
    await c.closed;

    await vi.waitFor(() => expect(requestLines(gw).filter((l) => l.status === 101)).toHaveLength(3), WAIT);
    await sleep(100);
    const lines = requestLines(gw).filter((l) => l.status === 101);
    expect(lines).toHaveLength(3);
    expect(new Set(lines.map((l) => l.reqId)).size).toBe(3);
    expect(lines.map((l) => l.reqId)).toContain('ws-edge-1');
    expect(lines.every((l) => l.path === '/v1/realtime')).toBe(true);
    const after = value(await scrape(gw.url), 'llm_router_requests_total', {
      route: 'none',
      provider: 'none',
      model: 'none',
      status: '101',
    });
    expect(after).toBe(before + 3);
  });
});
