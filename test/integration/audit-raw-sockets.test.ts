/**
 * Raw-socket hostile-peer audit (SPEC §8 Safety, §2 Failover, §4 errors). Everything here is written byte by
 * byte on node:net sockets, doing what well-behaved HTTP libraries never do: on the client side against the
 * gateway (framing ambiguities, pipelining, HTTP/1.0, Expect, half-close, oversized or dirty headers, odd
 * JSON), and as fake upstreams speaking hand-written HTTP (ambiguous or broken framing, 1xx before the
 * answer, bombs, poisoned keep-alive sockets, early answers). Each test asserts what a production gateway
 * should do: the right OpenAI-shaped status or a correct answer, failover when SPEC §2 says so, bounded
 * memory and time, and a gateway that still serves afterwards. Loopback only.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { closeableServer, closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, value } from '../helpers/prom-text.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1500, idle_ms: 1500, total_ms: 3000 };
const MSGS = [{ role: 'user', content: 'hi' }];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Json = Record<string, unknown>;

// ------------------------------------------------------------------------------------------------ helpers

function chatAnswer(text: string): Json {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  };
}

function frame(delta: Json, finish: string | null = null): string {
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
}

function sseAnswer(text: string): string {
  return `${frame({ role: 'assistant', content: '' })}${frame({ content: text })}${frame({}, 'stop')}data: [DONE]\n\n`;
}

/** The text of a user message's content, echoed back (so a test can tell which request an answer is for). */
function lastContent(body: string): string {
  try {
    const parsed = JSON.parse(body) as { messages?: Array<{ content?: unknown }> };
    const c = parsed.messages?.at(-1)?.content;
    return typeof c === 'string' ? c : '';
  } catch {
    return '';
  }
}

interface HttpMock {
  readonly url: string;
  hits(): number;
  readonly bodies: string[];
}

/**
 * A well-behaved node:http upstream answering `${label}:${content}` (JSON, or SSE when asked), where content
 * is the last message's text, cut to 40 characters.
 */
async function goodUpstream(label: string): Promise<HttpMock> {
  let hits = 0;
  const bodies: string[] = [];
  const server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    hits++;
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const body = Buffer.concat(parts).toString('utf8');
      bodies.push(body);
      const text = `${label}:${lastContent(body).slice(0, 40)}`;
      let stream = false;
      try {
        stream = (JSON.parse(body) as Json).stream === true;
      } catch {
        /* not JSON */
      }
      if (stream) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(sseAnswer(text));
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(chatAnswer(text)));
      }
    });
  });
  track(closeableServer(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits: () => hits, bodies };
}

interface RawRequest {
  readonly head: string;
  readonly body: string;
  readonly stream: boolean;
  /** 0-based over the whole server. */
  readonly n: number;
  /** 0-based on this connection. */
  readonly onSocket: number;
}

interface RawUpstream {
  readonly url: string;
  hits(): number;
  connections(): number;
  /** Bytes the handler wrote that the kernel accepted (socket.bytesWritten), summed over closed sockets too. */
  bytesWritten(): number;
}

/**
 * A hand-written upstream on node:net. Each request on each connection (keep-alive included) is parsed
 * (content-length bodies), then `onRequest(socket, req)` writes whatever bytes it likes. With
 * `onHead: true` it is called as soon as the head has arrived, before the body is read.
 */
async function rawUpstream(
  onRequest: (s: Socket, req: RawRequest) => void,
  opts: { onHead?: boolean } = {},
): Promise<RawUpstream> {
  let hits = 0;
  let connections = 0;
  let written = 0;
  const sockets = new Set<Socket>();
  const server = createNetServer((s) => {
    connections++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      written += s.bytesWritten;
      sockets.delete(s);
    });
    let buf: Buffer = Buffer.alloc(0);
    let onSocket = 0;
    let waitingBody: { head: string; length: number } | undefined;
    let headSeen = false;
    const pump = (): void => {
      for (;;) {
        if (!waitingBody) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = buf.subarray(0, end).toString('latin1');
          buf = buf.subarray(end + 4);
          const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
          waitingBody = { head, length: cl ? Number(cl[1]) : 0 };
          headSeen = false;
        }
        if (opts.onHead && !headSeen) {
          headSeen = true;
          hits++;
          onRequest(s, {
            head: waitingBody.head,
            body: '',
            stream: false,
            n: hits - 1,
            onSocket: onSocket++,
          });
        }
        if (buf.length < waitingBody.length) return;
        const body = buf.subarray(0, waitingBody.length).toString('utf8');
        buf = buf.subarray(waitingBody.length);
        const head = waitingBody.head;
        waitingBody = undefined;
        if (opts.onHead) continue;
        hits++;
        let stream = false;
        try {
          stream = (JSON.parse(body) as Json).stream === true;
        } catch {
          /* not JSON */
        }
        onRequest(s, { head, body, stream, n: hits - 1, onSocket: onSocket++ });
      }
    };
    s.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      pump();
    });
  });
  track({
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    connections: () => connections,
    bytesWritten: () => written + [...sockets].reduce((n, s) => n + s.bytesWritten, 0),
  };
}

/** A whole HTTP/1.1 response with a content-length. */
function httpResponse(body: string, headers: Record<string, string> = {}, status = '200 OK'): string {
  const h = {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(body)),
    ...headers,
  };
  return `HTTP/1.1 ${status}\r\n${Object.entries(h)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n${body}`;
}

function provider(name: string, url: string, extra: Json = {}): Json {
  return {
    name,
    kind: 'openai',
    base_url: `${url}/v1`,
    timeouts: TIMEOUTS,
    models: [{ name: 'm' }],
    ...extra,
  };
}

/**
 * A gateway over upstream `a` (the hostile one) and `b` (healthy): route `r` tries a then b, `only` is a
 * alone, `hb` is b alone (the "still serves" check).
 */
async function gatewayOver(
  aUrl: string,
  bUrl: string,
  server: Json = {},
  aExtra: Json = {},
): Promise<TestGateway> {
  return track(
    await startGateway({
      server,
      providers: [provider('a', aUrl, aExtra), provider('b', bUrl)],
      routes: {
        r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
        only: { strategy: 'priority', targets: ['a/m'] },
        hb: { strategy: 'priority', targets: ['b/m'] },
      },
    }),
  );
}

/** One good upstream `b` behind both providers (route `hb` goes to it alone), with `server` options. */
async function overB(server: Json = {}): Promise<{ b: HttpMock; gw: TestGateway }> {
  const b = await goodUpstream('b');
  return { b, gw: await gatewayOver(b.url, b.url, server) };
}

interface Answer {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: Json;
  ms: number;
}

async function send(
  gw: TestGateway,
  body: Json | string | Buffer,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<Answer> {
  const t0 = performance.now();
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.body.text();
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    /* a stream */
  }
  return { status: res.statusCode, headers: h, text, json, ms: performance.now() - t0 };
}

function contentOf(a: Answer): string {
  const choices = a.json.choices as Array<{ message?: { content?: unknown } }> | undefined;
  const c = choices?.[0]?.message?.content;
  if (typeof c === 'string') return c;
  // A stream: the content deltas joined.
  let out = '';
  for (const line of a.text.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    try {
      const j = JSON.parse(line.slice(6)) as { choices?: Array<{ delta?: { content?: unknown } }> };
      const d = j.choices?.[0]?.delta?.content;
      if (typeof d === 'string') out += d;
    } catch {
      /* not JSON */
    }
  }
  return out;
}

function errorOf(j: Json): { message?: unknown; type?: unknown; param?: unknown; code?: unknown } {
  return (j.error ?? {}) as { message?: unknown; type?: unknown; param?: unknown; code?: unknown };
}

/** The gateway still serves a normal request (route `hb`: the healthy upstream alone). */
async function stillServes(gw: TestGateway): Promise<void> {
  const a = await send(gw, { model: 'hb', messages: [{ role: 'user', content: 'after' }] });
  expect(a.status, a.text.slice(0, 200)).toBe(200);
  expect(contentOf(a)).toBe('b:after');
}

/** A raw client connection to the gateway: write anything, read everything. */
class RawClient {
  readonly socket: Socket;
  data: Buffer = Buffer.alloc(0);
  closed = false;
  ended = false;
  readonly t0 = performance.now();
  private readonly ready: Promise<void>;

  constructor(url: string, opts: { allowHalfOpen?: boolean } = {}) {
    const { hostname, port } = new URL(url);
    this.socket = connect({ port: Number(port), host: hostname, allowHalfOpen: opts.allowHalfOpen ?? false });
    this.socket.on('error', () => undefined);
    this.socket.on('data', (d: Buffer) => (this.data = Buffer.concat([this.data, d])));
    this.socket.on('end', () => (this.ended = true));
    this.socket.on('close', () => (this.closed = true));
    this.ready = new Promise((r) => this.socket.once('connect', () => r()));
    track({ close: () => this.socket.destroy() });
  }

  async write(bytes: string | Buffer): Promise<void> {
    await this.ready;
    await new Promise<void>((r) => this.socket.write(bytes, () => r()));
  }

  get text(): string {
    return this.data.toString('latin1');
  }

  /** Waits until `check(text)` holds or the connection closed, at most `ms`. */
  async waitFor(check: (text: string) => boolean, ms = 8000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!check(this.text) && !this.closed && Date.now() < deadline) await sleep(20);
  }

  async waitClosed(ms = 8000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await sleep(20);
  }
}

/** Writes `text` on a fresh connection, waits (4 s at most) for the gateway to close it, parses the answers. */
async function closedExchange(gw: TestGateway, text: string): Promise<{ c: RawClient; rs: Parsed[] }> {
  const c = new RawClient(gw.url);
  await c.write(text);
  await c.waitClosed(4000);
  return { c, rs: parseResponses(c.text) };
}

interface Parsed {
  status: number;
  version: string;
  headers: Record<string, string>;
  body: string;
  /** The body was framed (content-length or chunked, ended); false: read to the end of what we have. */
  framed: boolean;
}

/** Splits the bytes a client read into the HTTP responses they hold (1xx interim answers included). */
function parseResponses(text: string): Parsed[] {
  const out: Parsed[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) break;
    const lines = rest.slice(0, end).split('\r\n');
    const m = /^(HTTP\/1\.[01]) (\d{3})/.exec(lines[0] ?? '');
    if (!m) break;
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      const k = l.slice(0, i).trim().toLowerCase();
      headers[k] =
        headers[k] === undefined ? l.slice(i + 1).trim() : `${headers[k]},${l.slice(i + 1).trim()}`;
    }
    rest = rest.slice(end + 4);
    const status = Number(m[2]);
    if (status < 200) {
      out.push({ status, version: m[1]!, headers, body: '', framed: true });
      continue;
    }
    let body = '';
    let framed = true;
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      framed = rest.length >= n;
      body = rest.slice(0, n);
      rest = rest.slice(n);
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      framed = false;
      for (;;) {
        const eol = rest.indexOf('\r\n');
        if (eol < 0) break;
        const size = parseInt(rest.slice(0, eol), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          const fin = rest.indexOf('\r\n\r\n', eol - 1 >= 0 ? eol - 1 : 0);
          rest = fin < 0 ? '' : rest.slice(fin + 4);
          framed = true;
          break;
        }
        if (rest.length < eol + 2 + size + 2) break;
        body += rest.slice(eol + 2, eol + 2 + size);
        rest = rest.slice(eol + 2 + size + 2);
      }
    } else {
      body = rest;
      rest = '';
      framed = false;
    }
    out.push({ status, version: m[1]!, headers, body, framed });
  }
  return out;
}

function chatRequest(
  body: Json | string,
  extraHeaders: Record<string, string> = {},
  version = 'HTTP/1.1',
): string {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const h = {
    host: 'gw',
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...extraHeaders,
  };
  return `POST /v1/chat/completions ${version}\r\n${Object.entries(h)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n${text}`;
}

function bodyJson(p: Parsed | undefined): Json {
  try {
    return JSON.parse(p?.body ?? '') as Json;
  } catch {
    return {};
  }
}

/** Samples RSS every 20 ms while `fn` runs; resolves with fn's value and the peak growth in bytes. */
async function peakRssGrowth<T>(fn: () => Promise<T>): Promise<{ value: T; growth: number }> {
  const base = process.memoryUsage().rss;
  let peak = base;
  const t = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  try {
    const value = await fn();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { value, growth: peak - base };
  } finally {
    clearInterval(t);
  }
}

const MB = 1024 * 1024;

// ================================================================================ client side → gateway

describe('client framing: smuggling and chunked encoding', () => {
  it('two content-length headers with different values are a 400, OpenAI-shaped, calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const smuggled = chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'SMUGGLED' }] });
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\ncontent-length: ${body.length + smuggled.length}\r\n\r\n${body}${smuggled}`,
    );
    await c.waitFor((t) => /\r\n\r\n/.test(t), 4000);
    await c.waitClosed(2000);
    const rs = parseResponses(c.text);
    expect(rs[0]?.status).toBe(400);
    expect(errorOf(bodyJson(rs[0])).type).toBe('invalid_request_error');
    expect(rs.filter((r) => r.status === 200)).toEqual([]);
    expect(b.hits()).toBe(0);
    await stillServes(gw);
  }, 15_000);

  it('a chunk size that is not hex, is negative, has a 0x prefix or overflows 64 bits is a 400, calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const wrong: string[] = [];
    for (const size of [
      'zz',
      '-1',
      `0x${body.length.toString(16)}`,
      `1${'0'.repeat(17)}`,
      `${'f'.repeat(20)}`,
    ]) {
      const c = new RawClient(gw.url);
      await c.write(
        `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${size}\r\n${body}\r\n0\r\n\r\n`,
      );
      await c.waitFor((t) => /\r\n\r\n/.test(t), 4000);
      const rs = parseResponses(c.text);
      if (rs[0]?.status !== 400 || errorOf(bodyJson(rs[0])).type === undefined)
        wrong.push(`${size}: ${c.text.slice(0, 80)}`);
      c.socket.destroy();
    }
    expect(wrong).toEqual([]);
    expect(b.hits()).toBe(0);
    await stillServes(gw);
  }, 20_000);

  it('chunk extensions (with and without values, one byte chunks) are accepted and the body arrives intact', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'chunky' }] });
    let wire = '';
    for (let i = 0; i < body.length; i += 7) {
      const part = body.slice(i, i + 7);
      wire += `${part.length.toString(16)}${i % 2 ? ';ext' : ';name=value'}\r\n${part}\r\n`;
    }
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n${wire}0\r\n\r\n`,
    );
    await c.waitClosed(6000);
    const rs = parseResponses(c.text);
    expect(rs[0]?.status, c.text.slice(0, 200)).toBe(200);
    expect((bodyJson(rs[0]).choices as Array<{ message: { content: string } }>)[0]?.message.content).toBe(
      'b:chunky',
    );
    expect(JSON.parse(b.bodies[0]!)).toMatchObject({ messages: [{ role: 'user', content: 'chunky' }] });
  }, 15_000);

  it('a chunk extension of 1 MiB is refused 4xx OpenAI-shaped (bounded), calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${body.length.toString(16)};x=${'a'.repeat(MB)}\r\n${body}\r\n0\r\n\r\n`,
    );
    await c.waitFor((t) => /\r\n\r\n/.test(t), 6000);
    const rs = parseResponses(c.text);
    expect(rs[0]?.status, c.text.slice(0, 120)).toBeGreaterThanOrEqual(400);
    expect(rs[0]?.status).toBeLessThan(500);
    expect(errorOf(bodyJson(rs[0])).type).toBeDefined();
    expect(b.hits()).toBe(0);
    await stillServes(gw);
  }, 15_000);

  it('an obs-folded transfer-encoding beside a content-length never lets a second request through', async () => {
    // RFC 9112 §5.2: a server must reject an obs-fold with a 400 or replace it with SP; either way the
    // frame is CL+TE (refused) or CL alone (the "smuggled" bytes are one body, not a request).
    const { b, gw } = await overB();
    const smuggled = chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'SMUGGLED' }] });
    const inner = `0\r\n\r\n${smuggled}`;
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${inner.length}\r\ntransfer-encoding:\r\n chunked\r\n\r\n${inner}`,
    );
    await c.waitFor((t) => /\r\n\r\n/.test(t), 4000);
    await sleep(500);
    const rs = parseResponses(c.text);
    expect(rs.length).toBeGreaterThan(0);
    expect(rs[0]!.status).toBeGreaterThanOrEqual(400);
    expect(b.bodies.some((x) => x.includes('SMUGGLED'))).toBe(false);
    expect(rs.filter((r) => r.status === 200)).toEqual([]);
    await stillServes(gw);
  }, 15_000);
});

describe('client connections: pipelining, HTTP/1.0, Expect, half-close, reuse', () => {
  it('three requests pipelined in one write (JSON, stream, JSON) are answered in order, each complete', async () => {
    const { gw } = await overB();
    const c = new RawClient(gw.url);
    await c.write(
      chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'first' }] }, { 'x-request-id': 'p1' }) +
        chatRequest(
          { model: 'hb', messages: [{ role: 'user', content: 'second' }], stream: true },
          { 'x-request-id': 'p2' },
        ) +
        chatRequest(
          { model: 'hb', messages: [{ role: 'user', content: 'third' }] },
          {
            'x-request-id': 'p3',
            connection: 'close',
          },
        ),
    );
    await c.waitClosed(8000);
    const rs = parseResponses(c.text).filter((r) => r.status >= 200);
    expect(rs.map((r) => [r.headers['x-request-id'], r.status, r.framed])).toEqual([
      ['p1', 200, true],
      ['p2', 200, true],
      ['p3', 200, true],
    ]);
    expect(contentOf({ json: bodyJson(rs[0]), text: '' } as Answer)).toBe('b:first');
    expect(rs[1]!.body).toContain('b:second');
    expect(rs[1]!.body).toContain('data: [DONE]');
    expect(contentOf({ json: bodyJson(rs[2]), text: '' } as Answer)).toBe('b:third');
  }, 15_000);

  // RFC 9112 §9.6 "A server that sends a "close" connection option MUST initiate closure of the connection
  // after it sends the response containing close. The server MUST NOT process any further requests received
  // on that connection." SPEC §8/§2: validation errors are answered "before any upstream is called" — and a
  // chat completion is a paid, non-idempotent POST the client can never safely resend. The tricky part: a
  // JSON parser error (bad JSON, nesting, empty body, content-encoding) is answered by fastify with
  // `connection: close`, while Node's http server has already parsed and emitted the pipelined request (p3)
  // behind it: p3 must be answered or never reach the upstream, not be paid for with nobody to receive it.
  it('a pipelined request behind a 400 that closes the connection is answered, or never sent upstream', async () => {
    const { b, gw } = await overB();
    const c = new RawClient(gw.url);
    await c.write(
      chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'first' }] }, { 'x-request-id': 'p1' }) +
        chatRequest('{"model":"hb","messages":', { 'x-request-id': 'p2' }) +
        chatRequest(
          { model: 'hb', messages: [{ role: 'user', content: 'third' }] },
          {
            'x-request-id': 'p3',
            connection: 'close',
          },
        ),
    );
    await c.waitClosed(8000);
    await sleep(200);
    const rs = parseResponses(c.text).filter((r) => r.status >= 200);
    expect(rs.slice(0, 2).map((r) => [r.headers['x-request-id'], r.status])).toEqual([
      ['p1', 200],
      ['p2', 400],
    ]);
    expect(errorOf(bodyJson(rs[1])).type).toBe('invalid_request_error');
    const answered = rs.some((r) => r.headers['x-request-id'] === 'p3' && r.body.includes('b:third'));
    const executed = b.bodies.some((x) => x.includes('third'));
    // Answered in order after the 400, or (the connection closed after the 400) never executed.
    expect({ answered, executed, closeAfter400: /close/i.test(rs[1]!.headers.connection ?? '') }).toEqual(
      answered
        ? { answered: true, executed: true, closeAfter400: false }
        : { answered: false, executed: false, closeAfter400: true },
    );
  }, 15_000);

  it('pipelined requests whose upstreams answer in reverse order still get their own answers, in order', async () => {
    // The first request's upstream is slow, the second's fast: responses must not be swapped or mixed.
    const slow = await rawUpstream((s, req) => {
      const text = `slow:${lastContent(req.body)}`;
      setTimeout(() => s.write(httpResponse(JSON.stringify(chatAnswer(text)))), 400);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(slow.url, b.url);
    const c = new RawClient(gw.url);
    await c.write(
      chatRequest({ model: 'only', messages: [{ role: 'user', content: 'one' }] }, { 'x-request-id': 'q1' }) +
        chatRequest(
          { model: 'hb', messages: [{ role: 'user', content: 'two' }] },
          {
            'x-request-id': 'q2',
            connection: 'close',
          },
        ),
    );
    await c.waitClosed(8000);
    const rs = parseResponses(c.text).filter((r) => r.status >= 200);
    expect(rs.map((r) => [r.headers['x-request-id'], r.status])).toEqual([
      ['q1', 200],
      ['q2', 200],
    ]);
    expect(contentOf({ json: bodyJson(rs[0]), text: '' } as Answer)).toBe('slow:one');
    expect(contentOf({ json: bodyJson(rs[1]), text: '' } as Answer)).toBe('b:two');
  }, 15_000);

  it('HTTP/1.0 without keep-alive: JSON and stream answers are readable by an HTTP/1.0 client, then closed', async () => {
    const { gw } = await overB();
    for (const stream of [false, true]) {
      const c = new RawClient(gw.url);
      await c.write(
        chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'old' }], stream }, {}, 'HTTP/1.0'),
      );
      await c.waitClosed(6000);
      expect(c.closed, `stream=${stream}: the server closes an HTTP/1.0 connection`).toBe(true);
      const rs = parseResponses(c.text);
      expect(rs[0]?.status, c.text.slice(0, 200)).toBe(200);
      // An HTTP/1.0 client cannot read chunked transfer coding (RFC 9112 §6.1).
      expect(rs[0]?.headers['transfer-encoding'], `stream=${stream}`).toBeUndefined();
      expect(rs[0]?.body).toContain('b:old');
      if (stream) expect(rs[0]?.body).toContain('data: [DONE]');
    }
  }, 15_000);

  it('Expect: 100-continue gets a 100 before the body is sent, then the answer', async () => {
    const { gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'expect' }] });
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n`,
    );
    await c.waitFor((t) => /^HTTP\/1\.1 100/.test(t), 4000);
    expect(c.text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\n/);
    await c.write(body);
    await c.waitClosed(6000);
    const rs = parseResponses(c.text).filter((r) => r.status >= 200);
    expect(rs[0]?.status).toBe(200);
    expect(rs[0]?.body).toContain('b:expect');
  }, 15_000);

  it('Expect: 100-continue with a content-length past body_limit_bytes: a 413 without the body being sent', async () => {
    const { b, gw } = await overB({ body_limit_bytes: 1000 });
    const c = new RawClient(gw.url);
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 5000000\r\nexpect: 100-continue\r\n\r\n`,
    );
    await c.waitFor((t) => /HTTP\/1\.1 [2-5]\d\d/.test(t.replace(/^HTTP\/1\.1 100[^\n]*\n\r\n/, '')), 4000);
    const rs = parseResponses(c.text).filter((r) => r.status >= 200);
    expect(rs[0]?.status).toBe(413);
    expect(errorOf(bodyJson(rs[0])).type).toBeDefined();
    expect(b.hits()).toBe(0);
  }, 15_000);

  // SPEC §4 "Errors are always OpenAI-shaped": an expectation the server cannot meet is a 417 (RFC 9110
  // §10.1.1), OpenAI-shaped like every other error the gateway gives (as app.ts answerClientError does for
  // 400/408/431 before routing). Node's http server would answer it itself, with an empty body, unless the
  // gateway listens for 'checkExpectation'; an SDK reading `error.message` would get nothing.
  it('an Expect other than 100-continue is a 417, OpenAI-shaped, calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const { c, rs } = await closedExchange(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nexpect: 200-ok\r\nconnection: close\r\n\r\n${body}`,
    );
    expect(rs[0]?.status, c.text.slice(0, 200)).toBe(417);
    expect(errorOf(bodyJson(rs[0])).type, `body: ${JSON.stringify(rs[0]?.body)}`).toBe(
      'invalid_request_error',
    );
    expect(b.hits()).toBe(0);
  }, 15_000);

  it('a client that half-closes (FIN) after its whole request: the answer or a 499, never a hang or a crash', async () => {
    // A half-close after the request is what `nc -N`, some HTTP/1.0 clients and some proxies do. The
    // gateway may answer (RFC 9112 §9.6: the read side closing is not the client leaving) or treat it as
    // the client gone (SPEC §8: its upstream request aborted at once): either way bounded, no leak.
    const { gw } = await overB();
    const c = new RawClient(gw.url, { allowHalfOpen: true });
    await c.write(chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'fin' }] }));
    c.socket.end();
    await c.waitClosed(5000);
    const rs = parseResponses(c.text);
    if (rs.length > 0) {
      expect(rs[0]!.status).toBe(200);
      expect(rs[0]!.body).toContain('b:fin');
    } else {
      // Taken as the client gone (as nginx does): counted and logged as 499, its upstream call aborted.
      await until('the request line', () => gw.logs.some((l) => l.msg === 'request'), 3000);
      const line = gw.logs.find((l) => l.msg === 'request')!;
      expect(line.status).toBe(499);
      expect(String(line.trail)).toContain('client_closed');
    }
    expect(c.closed).toBe(true);
    await stillServes(gw);
  }, 15_000);

  it('keep-alive: a served request, then a chunked body that stalls, gets a 408 within request_timeout_ms', async () => {
    const { b, gw } = await overB({ request_timeout_ms: 1500 });
    const c = new RawClient(gw.url);
    await c.write(chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'ka' }] }));
    await c.waitFor((t) => t.includes('b:ka'), 4000);
    const before = c.data.length;
    const t0 = performance.now();
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{"mod\r\n`,
    );
    await c.waitFor((t) => t.length > before && /HTTP\/1\.1 \d{3}/.test(t.slice(before)), 6000);
    const ms = performance.now() - t0;
    const rs = parseResponses(c.data.subarray(before).toString('latin1'));
    expect(rs[0]?.status, c.text.slice(before, before + 100)).toBe(408);
    expect(errorOf(bodyJson(rs[0])).code).toBe('request_timeout');
    expect(ms).toBeLessThan(1500 + 2000);
    expect(b.hits()).toBe(1);
  }, 15_000);

  it('a client gone mid-chunked-body on a reused socket: nothing is sent upstream, the next client is served', async () => {
    const { b, gw } = await overB();
    const c = new RawClient(gw.url);
    await c.write(chatRequest({ model: 'hb', messages: [{ role: 'user', content: 'one' }] }));
    await c.waitFor((t) => t.includes('b:one'), 4000);
    const body = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'two' }] });
    await c.write(
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${(20).toString(16)}\r\n${body.slice(0, 20)}\r\n`,
    );
    await sleep(150);
    c.socket.destroy();
    await sleep(300);
    expect(b.hits()).toBe(1);
    await stillServes(gw);
  }, 15_000);
});

describe('client connections and a stream on the wire', () => {
  // Regression: the stream's own `connection: keep-alive` header turned Node's handling of the client's
  // `Connection: close` off: the answer said keep-alive and the socket stayed open for keepAliveTimeout (72 s).
  it('a stream asked for with Connection: close is answered close, and the connection closes after [DONE]', async () => {
    const { gw } = await overB();
    const c = new RawClient(gw.url);
    await c.write(chatRequest({ model: 'hb', stream: true, messages: MSGS }, { connection: 'close' }));
    await c.waitClosed(4000);
    expect(c.closed).toBe(true);
    const [r] = parseResponses(c.text);
    expect(r?.status).toBe(200);
    expect(r?.headers.connection).toBe('close');
    expect(r?.body).toContain('data: [DONE]');
  }, 15_000);

  // Regression: our client-error answer was written into the body of a stream already on the wire (Node's own
  // handler writes only when no answer has begun), where a client reads it as part of the stream.
  it('a malformed request pipelined behind a stream already on the wire cuts it, never writes into it', async () => {
    const up = await rawUpstream((s) => {
      s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
      const chunk = (t: string): string => `${Buffer.byteLength(t).toString(16)}\r\n${t}\r\n`;
      s.write(chunk(frame({ role: 'assistant', content: 'first' })));
      setTimeout(() => s.end(chunk(sseAnswer(' rest')) + '0\r\n\r\n'), 800);
    });
    const gw = await gatewayOver(up.url, up.url);
    const c = new RawClient(gw.url);
    await c.write(chatRequest({ model: 'only', stream: true, messages: MSGS }));
    await c.waitFor((t) => t.includes('first'), 4000);
    expect(c.text).toContain('first'); // committed: the head and a chunk are out
    await c.write('NOT AN HTTP REQUEST\r\n\r\n');
    await c.waitClosed(4000);
    const [r] = parseResponses(c.text);
    expect(r?.status).toBe(200);
    expect(c.text.slice(c.text.indexOf('\r\n\r\n'))).not.toMatch(/HTTP\/1\.1 \d{3}/);
  }, 15_000);
});

describe('client headers: size, count, folding and control bytes', () => {
  it('Accept-Encoding (gzip, deflate, br) changes nothing: JSON and stream answers come back uncompressed', async () => {
    const { gw } = await overB();
    const headers = { 'accept-encoding': 'gzip, deflate, br' };
    const j = await send(gw, { model: 'hb', messages: [{ role: 'user', content: 'x' }] }, headers);
    const st = await send(
      gw,
      { model: 'hb', stream: true, messages: [{ role: 'user', content: 'y' }] },
      headers,
    );
    for (const [a, want] of [
      [j, 'b:x'],
      [st, 'b:y'],
    ] as const) {
      expect(a.status).toBe(200);
      expect(a.headers['content-encoding']).toBeUndefined();
      expect(contentOf(a)).toBe(want);
    }
    expect(st.text).toContain('data: [DONE]');
  }, 15_000);

  it('one 20 KiB header, or 3000 small ones: a 431 OpenAI-shaped, and the gateway still serves', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    for (const extra of [
      `x-big: ${'a'.repeat(20 * 1024)}\r\n`,
      Array.from({ length: 3000 }, (_, i) => `x-h${i}: v\r\n`).join(''),
    ]) {
      const c = new RawClient(gw.url);
      await c.write(
        `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`,
      );
      await c.waitFor((t) => /\r\n\r\n/.test(t), 4000);
      const rs = parseResponses(c.text);
      expect(rs[0]?.status).toBe(431);
      expect(errorOf(bodyJson(rs[0])).type).toBe('invalid_request_error');
    }
    expect(b.hits()).toBe(0);
    await stillServes(gw);
  }, 15_000);

  it('NUL, CR, other control bytes or DEL in a header value: a 400 OpenAI-shaped, calling nothing', async () => {
    const { gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const wrong: string[] = [];
    for (const [label, line] of [
      ['NUL in x-request-id', 'x-request-id: a\x00b'],
      ['CR alone in a value', 'x-router-strategy: priority\rx-injected: 1'],
      ['0x01 in a value', 'x-router-provider: b\x01'],
      ['LF alone ends a header line', 'x-router-strategy: priority\nx-router-provider: b'],
      ['0x7f in a value', 'x-router-strategy: prio\x7fity'],
    ] as const) {
      const { c, rs } = await closedExchange(
        gw,
        `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n${line}\r\nconnection: close\r\n\r\n${body}`,
      );
      const st = rs[0]?.status;
      // A bare LF line end is tolerated by some parsers (RFC 9112 §2.2 MAY): then it is two valid headers.
      const ok =
        (st === 400 && errorOf(bodyJson(rs[0])).type !== undefined) ||
        (label === 'LF alone ends a header line' && st === 200);
      if (!ok) wrong.push(`${label}: ${c.text.slice(0, 100)}`);
      const echoed = rs[0]?.headers['x-request-id'] ?? '';
      if (st === 200 && [...echoed].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f))
        wrong.push(`${label}: echoed a control byte`);
    }
    expect(wrong).toEqual([]);
    await stillServes(gw);
  }, 20_000);

  it('an obs-folded x-router-strategy is refused 400 (as a fold or as an unknown strategy), calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const { rs } = await closedExchange(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nx-router-strategy: priority\r\n cost\r\nconnection: close\r\n\r\n${body}`,
    );
    expect(rs[0]?.status).toBe(400);
    expect(errorOf(bodyJson(rs[0])).type).toBe('invalid_request_error');
    expect(b.hits()).toBe(0);
  }, 15_000);
});

describe('client request line and Host', () => {
  // RFC 9112 §3.2: a 400; SPEC §4 "Errors are always OpenAI-shaped" (as the 400/408/431 that app.ts
  // answerClientError writes for other pre-routing rejections). Node's http server (requireHostHeader, default
  // true) would answer it itself, before fastify sees the request, with an empty body.
  it('an HTTP/1.1 request without Host is a 400 (RFC 9112 §3.2), OpenAI-shaped, calling nothing', async () => {
    const { b, gw } = await overB();
    const body = JSON.stringify({ model: 'hb', messages: MSGS });
    const { c, rs } = await closedExchange(
      gw,
      `POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
    expect(rs[0]?.status, c.text.slice(0, 200)).toBe(400);
    expect(errorOf(bodyJson(rs[0])).type, `body: ${JSON.stringify(rs[0]?.body)}`).toBe(
      'invalid_request_error',
    );
    expect(b.hits()).toBe(0);
  }, 15_000);

  // Regression: fastify answered a path it cannot percent-decode itself: not OpenAI-shaped, no x-request-id,
  // the whole URL quoted back, and the request neither logged nor counted.
  it('a malformed %-escape in a /v1 path is an OpenAI-shaped 400 with x-request-id, logged and counted', async () => {
    const b = await goodUpstream('b');
    const plain = await gatewayOver(b.url, b.url);
    const proxied = await gatewayOver(b.url, b.url, { passthrough: 'a' });
    const paths = ['/v1/chat/completions%ZZ', '/v1/chat/%E0%A4%A', '/v1/embeddings%'];
    for (const gw of [plain, proxied]) {
      for (const path of paths) {
        const a = await send(gw, { model: 'hb', messages: MSGS }, { 'x-request-id': 'bad-url-1' }, path);
        expect(a.status, path).toBe(400);
        expect(errorOf(a.json).type, path).toBe('invalid_request_error');
        expect(a.headers['x-request-id'], path).toBe('bad-url-1');
        expect(a.text, path).not.toContain(path.slice(4)); // the URL is not quoted back
      }
      const models = await request(`${gw.url}/v1/models/%ZZ`);
      expect(models.statusCode).toBe(400);
      expect(errorOf((await models.body.json()) as Json).type).toBe('invalid_request_error');
    }
    expect(b.hits()).toBe(0);
    const lines = plain.logs.filter((l) => l.msg === 'request');
    expect(lines.map((l) => [l.status, l.path])).toEqual([
      ...paths.map(() => [400, 'unmatched']),
      [400, 'unmatched'],
    ]);
    const samples = await scrape(plain.url);
    const none = { route: 'none', provider: 'none', model: 'none' };
    expect(value(samples, 'llm_router_requests_total', { ...none, status: '400' })).toBe(4);
  }, 15_000);

  it('an absolute-form target naming another host is routed as the path says, never proxied to that host', async () => {
    const b = await goodUpstream('b');
    const elsewhere = await goodUpstream('EVIL');
    const gw = await gatewayOver(b.url, b.url);
    const body = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'abs' }] });
    const { rs } = await closedExchange(
      gw,
      `POST ${elsewhere.url}/v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
    expect([200, 400, 404]).toContain(rs[0]?.status);
    if (rs[0]?.status === 200) expect(rs[0].body).toContain('b:abs');
    else expect(errorOf(bodyJson(rs[0])).type).toBeDefined();
    expect(elsewhere.hits()).toBe(0);
  }, 15_000);
});

describe('client bodies: numbers, duplicate keys, sizes and charsets', () => {
  it('1e400 (Infinity once parsed) as max_tokens, n or temperature is a 400 naming the field; in an unknown field it passes as sent', async () => {
    const { b, gw } = await overB();
    const wrong: string[] = [];
    for (const [field, value] of [
      ['max_tokens', '1e400'],
      ['n', '1e400'],
      ['temperature', '-1e400'],
      ['max_completion_tokens', '1e400'],
    ] as const) {
      const a = await send(
        gw,
        `{"model":"hb","messages":[{"role":"user","content":"x"}],"${field}":${value}}`,
      );
      if (a.status !== 400 || errorOf(a.json).param !== field)
        wrong.push(`${field}: ${a.status} ${a.text.slice(0, 100)}`);
    }
    expect(wrong).toEqual([]);
    expect(b.hits()).toBe(0);
    const ok = await send(gw, '{"model":"hb","messages":[{"role":"user","content":"x"}],"vendor_x":1e400}');
    expect(ok.status).toBe(200);
    expect(b.bodies[0]).toContain('"vendor_x":1e400');
  }, 15_000);

  // SPEC §8 "known OpenAI fields with a wrong type or an impossible value ... are rejected with 400 naming the
  // field before any upstream is called": whatever duplicate an upstream's JSON parser keeps (JSON.parse, Go
  // and Python keep the last; others, e.g. some streaming/SAX parsers and Jackson set to first-wins, differ),
  // it must never be handed a value the gateway did not validate (the rule the duplicate-"model" test in
  // audit-safety applies to `model`). The gateway validates the last duplicate (JSON.parse), so it must not
  // pass the client's text on verbatim with both duplicates (body-text.ts sourceWithModel /
  // topLevelStringSpan): such a body is re-serialised, one value per key, or refused with a 400.
  it('a duplicate known key (max_tokens, messages, stream) never sends the upstream an unvalidated value', async () => {
    const { b, gw } = await overB();
    const wrong: string[] = [];
    for (const [label, text, poison] of [
      [
        'max_tokens -5 then 10',
        '{"max_tokens":-5,"model":"hb","messages":[{"role":"user","content":"x"}],"max_tokens":10}',
        /"max_tokens":-5/,
      ],
      [
        'messages "string" then a list',
        '{"messages":"not-a-list","model":"hb","messages":[{"role":"user","content":"x"}]}',
        /"messages":"not-a-list"/,
      ],
      ['n 0 then 1', '{"model":"hb","n":0,"messages":[{"role":"user","content":"x"}],"n":1}', /"n":0/],
    ] as const) {
      const before = b.bodies.length;
      const a = await send(gw, text);
      if (a.status === 400) continue;
      if (a.status !== 200) {
        wrong.push(`${label}: ${a.status}`);
        continue;
      }
      const sent = b.bodies[before] ?? '';
      if (poison.test(sent)) wrong.push(`${label}: the upstream got ${sent}`);
    }
    expect(wrong).toEqual([]);
  }, 15_000);

  it('a 9 MB body of two-byte characters is limited in bytes: 4.5 M "é" reaches the upstream intact, 5.5 M is a 413', async () => {
    const { b, gw } = await overB();
    const okText = 'é'.repeat(4_500_000); // 9 000 000 bytes < 10 MiB
    const { value: a, growth } = await peakRssGrowth(() =>
      send(gw, { model: 'hb', messages: [{ role: 'user', content: okText }] }),
    );
    expect(a.status, a.text.slice(0, 200)).toBe(200);
    const got = JSON.parse(b.bodies[0]!) as { messages: Array<{ content: string }> };
    expect(got.messages[0]!.content.length).toBe(okText.length);
    expect(got.messages[0]!.content === okText).toBe(true);
    expect(growth).toBeLessThan(400 * MB);
    const over = await send(gw, {
      model: 'hb',
      messages: [{ role: 'user', content: 'é'.repeat(5_500_000) }],
    });
    expect(over.status).toBe(413);
    expect(errorOf(over.json).type).toBeDefined();
    expect(b.hits()).toBe(1);
  }, 30_000);

  it('a UTF-16 body declared charset=utf-16 (with or without BOM): decoded right or refused 4xx, never garbage upstream', async () => {
    const { b, gw } = await overB();
    const text = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'ütf16' }] });
    const wrong: string[] = [];
    for (const [label, bytes] of [
      ['utf-16le with BOM', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')])],
      ['utf-16le without BOM', Buffer.from(text, 'utf16le')],
    ] as const) {
      const before = b.bodies.length;
      const a = await send(gw, bytes, { 'content-type': 'application/json; charset=utf-16' });
      if (a.status >= 500 || a.status < 200) wrong.push(`${label}: ${a.status}`);
      else if (a.status >= 400 && errorOf(a.json).type === undefined)
        wrong.push(`${label}: not OpenAI-shaped`);
      else if (a.status === 200 && lastContent(b.bodies[before] ?? '') !== 'ütf16')
        wrong.push(`${label}: upstream got ${b.bodies[before]}`);
    }
    expect(wrong).toEqual([]);
  }, 15_000);

  // Regression: the body was read as UTF-8 whatever charset it declared: Latin-1 "café crème" reached the
  // upstream as "caf\uFFFD cr\uFFFDme", with a 200.
  it('a body declared in a charset other than UTF-8 is a 415, calling nothing; utf-8 and us-ascii are read', async () => {
    const { b, gw } = await overB();
    const text = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'café crème' }] });
    for (const charset of ['iso-8859-1', 'latin1', 'Windows-1252', '"iso-8859-1"']) {
      const a = await send(gw, Buffer.from(text, 'latin1'), {
        'content-type': `application/json; charset=${charset}`,
      });
      expect(a.status, charset).toBe(415);
      expect(errorOf(a.json).type, charset).toBe('invalid_request_error');
    }
    expect(b.hits()).toBe(0);
    for (const charset of ['utf-8', 'UTF-8', '"utf-8"', 'utf8']) {
      const a = await send(gw, text, { 'content-type': `application/json; charset=${charset}` });
      expect(a.status, charset).toBe(200);
      expect(contentOf(a)).toBe('b:café crème');
    }
    const ascii = JSON.stringify({ model: 'hb', messages: [{ role: 'user', content: 'plain' }] });
    const a = await send(gw, ascii, { 'content-type': 'application/json; charset=us-ascii' });
    expect(contentOf(a)).toBe('b:plain');
  }, 15_000);
});

// ================================================================================ fake upstreams → gateway

describe('upstream framing: ambiguous, sloppy or broken HTTP', () => {
  it('content-length and transfer-encoding both: failed over or read as chunked, and the pool is not desynced', async () => {
    const a = await rawUpstream((s, req) => {
      const json = JSON.stringify(chatAnswer(`a:${lastContent(req.body)}`));
      if (req.n === 0) {
        // CL 5 would make a lenient reader take `{"id"` and leave the rest as the start of the next response.
        s.write(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n${json.length.toString(16)}\r\n${json}\r\n0\r\n\r\n`,
        );
      } else s.write(httpResponse(json));
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r1 = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'one' }] });
    expect(r1.status).toBe(200);
    expect(['a:one', 'b:one']).toContain(contentOf(r1));
    const r2 = await send(gw, { model: 'only', messages: [{ role: 'user', content: 'two' }] });
    expect(r2.status, r2.text.slice(0, 200)).toBe(200);
    expect(contentOf(r2)).toBe('a:two');
  }, 15_000);

  it('two different content-length headers in an answer: failed over, never relayed', async () => {
    const a = await rawUpstream((s) => {
      const json = JSON.stringify(chatAnswer('a:dup'));
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${json.length}\r\ncontent-length: ${json.length - 10}\r\n\r\n${json}`,
      );
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'x' }] });
    expect(r.status).toBe(200);
    expect(contentOf(r)).toBe('b:x');
    expect(r.headers['x-router-provider']).toBe('b');
  }, 15_000);

  it('bare LF line endings in the status line and headers: read correctly, or failed over; never garbage', async () => {
    const a = await rawUpstream((s, req) => {
      const text = `a:${lastContent(req.body)}`;
      const body = req.stream ? sseAnswer(text) : JSON.stringify(chatAnswer(text));
      s.write(
        `HTTP/1.1 200 OK\ncontent-type: ${req.stream ? 'text/event-stream' : 'application/json'}\ncontent-length: ${Buffer.byteLength(body)}\n\n${body}`,
      );
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'lf' }], stream });
      expect(r.status, `stream=${stream}`).toBe(200);
      expect(['a:lf', 'b:lf'], `stream=${stream}`).toContain(contentOf(r));
      if (stream) expect(r.text).toContain('[DONE]');
    }
    await stillServes(gw);
  }, 15_000);

  // RFC 9110 §15.2: 1xx responses are interim, the final one is the answer; a 103 Early Hints (what CDNs in
  // front of providers send) is not a failure, and SPEC §2 only fails over on failures: a 200 answer under the
  // 64 MiB JSON bound (attempt.ts MAX_JSON_BODY_BYTES) is relayed. The large JSON case matters: undici calls
  // text-handler.ts TextHandler.onResponseStart for every response head, 1xx included, and only a final error
  // status takes the 64 KiB error-body limit: a 200 over 64 KiB after a 103 is the answer, not a
  // `body_too_large` failover.
  it('a 103 Early Hints before the 200: the 200 is the answer, small and large JSON and stream', async () => {
    const big = 'x'.repeat(200 * 1024);
    const a = await rawUpstream((s, req) => {
      const content = lastContent(req.body);
      const text = content === 'big' ? `a:${big}` : `a:${content}`;
      const body = req.stream ? sseAnswer(text) : JSON.stringify(chatAnswer(text));
      s.write(
        'HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n' +
          httpResponse(body, { 'content-type': req.stream ? 'text/event-stream' : 'application/json' }),
      );
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const wrong: string[] = [];
    for (const [content, stream] of [
      ['small', false],
      ['small', true],
      ['big', false],
      ['big', true],
    ] as const) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content }], stream });
      const want = content === 'big' ? `a:${big}` : 'a:small';
      if (r.status !== 200 || r.headers['x-router-provider'] !== 'a' || contentOf(r) !== want)
        wrong.push(
          `${content} stream=${stream}: ${r.status} provider=${r.headers['x-router-provider']} trail=${r.headers['x-router-trail']}`,
        );
    }
    expect(wrong).toEqual([]);
  }, 20_000);

  // Pinned, not wanted: RFC 9110 §15.2 says a client must parse 1xx responses it did not ask for, but undici 7
  // destroys the socket on an unexpected `100 Continue` (node_modules/undici/lib/dispatcher/client-h1.js,
  // "bad response"; the gateway never sends Expect). Such an upstream is failed over as `socket_error` and the
  // next one serves — a client never sees it. Should undici come to ignore it, this test says so: then the
  // answer is a's and the assertion below flips to provider 'a'.
  it('a stray 100 Continue (never asked for) before the 200: failed over (undici refuses it), the next upstream serves', async () => {
    const a = await rawUpstream((s, req) => {
      const text = `a:${lastContent(req.body)}`;
      const body = req.stream ? sseAnswer(text) : JSON.stringify(chatAnswer(text));
      s.write(
        'HTTP/1.1 100 Continue\r\n\r\n' +
          httpResponse(body, { 'content-type': req.stream ? 'text/event-stream' : 'application/json' }),
      );
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'cont' }], stream });
      expect(r.status, `stream=${stream}`).toBe(200);
      expect(r.headers['x-router-provider'], `stream=${stream}`).toBe('b');
      expect(String(r.headers['x-router-trail'])).toMatch(/^a\/m=/);
    }
  }, 15_000);

  it('transfer-encoding: gzip, chunked (a transfer coding undici does not undo): decoded right or failed over', async () => {
    const a = await rawUpstream((s, req) => {
      const text = `a:${lastContent(req.body)}`;
      const z = gzipSync(req.stream ? sseAnswer(text) : JSON.stringify(chatAnswer(text)));
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: ${req.stream ? 'text/event-stream' : 'application/json'}\r\ntransfer-encoding: gzip, chunked\r\n\r\n${z.length.toString(16)}\r\n`,
      );
      s.write(z);
      s.write('\r\n0\r\n\r\n');
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'tez' }], stream });
      expect(r.status, `stream=${stream}`).toBe(200);
      expect(['a:tez', 'b:tez'], `stream=${stream} ${r.text.slice(0, 100)}`).toContain(contentOf(r));
    }
  }, 15_000);

  it('a status line only, then close (JSON and stream): failed over to the next upstream at once', async () => {
    const a = await rawUpstream((s) => {
      s.end('HTTP/1.1 200 OK\r\n');
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'sl' }], stream });
      expect(r.status).toBe(200);
      expect(contentOf(r)).toBe('b:sl');
      expect(r.ms).toBeLessThan(TIMEOUTS.first_byte_ms);
      expect(r.headers['x-router-trail'] ?? '').toMatch(/^a\/m=/);
    }
  }, 15_000);

  it('headers that never end (no blank line, then silence): failed over within first_byte_ms, JSON and stream', async () => {
    const a = await rawUpstream((s) => {
      s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-more: ');
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'he' }], stream });
      expect(r.status).toBe(200);
      expect(contentOf(r)).toBe('b:he');
      expect(r.ms).toBeLessThan(TIMEOUTS.first_byte_ms + 2000);
    }
  }, 20_000);

  it('an unsolicited 101 Switching Protocols to a chat POST: failed over, no hang', async () => {
    const a = await rawUpstream((s) => {
      s.write(
        'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x05hello',
      );
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    for (const stream of [false, true]) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'up' }], stream });
      expect(r.status).toBe(200);
      expect(contentOf(r)).toBe('b:up');
      expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + 1500);
    }
  }, 20_000);

  it('a status outside 100-599 (600, 999): failed over, never relayed', async () => {
    for (const status of ['600 Odd', '999 Weird']) {
      const a = await rawUpstream((s) => {
        s.write(httpResponse(JSON.stringify(chatAnswer('a:odd')), {}, status));
      });
      const b = await goodUpstream('b');
      const gw = await gatewayOver(a.url, b.url);
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'st' }] });
      expect(r.status, status).toBe(200);
      expect(contentOf(r), status).toBe('b:st');
      const only = await send(gw, { model: 'only', messages: MSGS });
      expect(only.status, status).toBe(502);
      expect(errorOf(only.json).type).toBeDefined();
    }
  }, 20_000);

  it('a Connection: close answer with no length (read to EOF), HTTP/1.1 and HTTP/1.0, JSON and stream: relayed whole', async () => {
    const a = await rawUpstream((s, req) => {
      const text = `a:${lastContent(req.body)}`;
      const body = req.stream ? sseAnswer(text) : JSON.stringify(chatAnswer(text));
      const version = lastContent(req.body).startsWith('v10') ? 'HTTP/1.0' : 'HTTP/1.1';
      s.write(
        `${version} 200 OK\r\ncontent-type: ${req.stream ? 'text/event-stream' : 'application/json'}\r\nconnection: close\r\n\r\n`,
      );
      // In pieces, so the end is only the close.
      const half = Math.floor(body.length / 2);
      s.write(body.slice(0, half));
      setTimeout(() => s.end(body.slice(half)), 50);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const wrong: string[] = [];
    for (const content of ['v11', 'v10'])
      for (const stream of [false, true]) {
        const r = await send(gw, { model: 'r', messages: [{ role: 'user', content }], stream });
        if (r.status !== 200 || r.headers['x-router-provider'] !== 'a' || contentOf(r) !== `a:${content}`)
          wrong.push(
            `${content} stream=${stream}: ${r.status} ${r.headers['x-router-provider']} ${r.headers['x-router-trail']}`,
          );
        if (stream && !r.text.includes('[DONE]')) wrong.push(`${content} stream: no [DONE]`);
      }
    expect(wrong).toEqual([]);
  }, 20_000);

  it('chunked with a broken final chunk (bad trailer) after a whole JSON: a correct answer, and the pool is not poisoned', async () => {
    const a = await rawUpstream((s, req) => {
      const json = JSON.stringify(chatAnswer(`a:${lastContent(req.body)}`));
      if (req.n === 0)
        s.write(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${json.length.toString(16)}\r\n${json}\r\n0\r\nthis is not a trailer\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}`,
        );
      else s.write(httpResponse(json));
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r1 = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'one' }] });
    expect(r1.status).toBe(200);
    expect(['a:one', 'b:one']).toContain(contentOf(r1));
    const r2 = await send(gw, { model: 'only', messages: [{ role: 'user', content: 'two' }] });
    expect(r2.status, r2.text.slice(0, 200)).toBe(200);
    expect(contentOf(r2)).toBe('a:two');
  }, 15_000);

  it('a keep-alive answer followed by an unsolicited second response: the next request never gets it', async () => {
    const poison = JSON.stringify(chatAnswer('POISON'));
    const a = await rawUpstream((s, req) => {
      const json = JSON.stringify(chatAnswer(`a:${lastContent(req.body)}`));
      if (req.onSocket === 0) {
        // At once after the answer, in the same write, and again later while the socket is idle in the pool.
        s.write(httpResponse(json, { 'keep-alive': 'timeout=60' }) + httpResponse(poison));
        setTimeout(() => {
          if (!s.destroyed) s.write(httpResponse(poison));
        }, 100);
      } else s.write(httpResponse(json));
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r1 = await send(gw, { model: 'only', messages: [{ role: 'user', content: 'one' }] });
    expect(contentOf(r1)).toBe('a:one');
    await sleep(250);
    for (const n of ['two', 'three']) {
      const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: n }] });
      expect(r.status).toBe(200);
      expect(contentOf(r)).not.toContain('POISON');
      expect(['a:' + n, 'b:' + n]).toContain(contentOf(r));
    }
  }, 15_000);

  it('a keep-alive socket that turns to garbage while idle in the pool: the next request is still served', async () => {
    const a = await rawUpstream((s, req) => {
      const json = JSON.stringify(chatAnswer(`a:${lastContent(req.body)}`));
      s.write(httpResponse(json, { 'keep-alive': 'timeout=60' }));
      if (req.onSocket === 0)
        setTimeout(() => {
          if (!s.destroyed) s.write('\x00\xff garbage \r\n\r\n');
        }, 100);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r1 = await send(gw, { model: 'only', messages: [{ role: 'user', content: 'one' }] });
    expect(contentOf(r1)).toBe('a:one');
    await sleep(300);
    const r2 = await send(gw, { model: 'only', messages: [{ role: 'user', content: 'two' }] });
    expect(r2.status, r2.text.slice(0, 300)).toBe(200);
    expect(contentOf(r2)).toBe('a:two');
  }, 15_000);

  it('an upstream that answers 200 before reading a 2 MB request body: the answer is used (or failed over), no hang', async () => {
    const a = await rawUpstream(
      (s) => {
        s.write(httpResponse(JSON.stringify(chatAnswer('a:early')), { connection: 'close' }));
        // Keeps reading (and dropping) the body, then closes: the answer came first.
        setTimeout(() => s.end(), 300);
      },
      { onHead: true },
    );
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const big = 'y'.repeat(2 * MB);
    const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: big }] });
    expect(r.status).toBe(200);
    expect(['a:early', `b:${'y'.repeat(40)}`]).toContain(contentOf(r));
    expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + 1500);
    await stillServes(gw);
  }, 15_000);

  it('an upstream that answers 413 before reading a 2 MB body and closes: a 413 relayed (client error), or failed over', async () => {
    const a = await rawUpstream(
      (s) => {
        s.end(
          httpResponse(
            JSON.stringify({
              error: { message: 'too big', type: 'invalid_request_error', param: null, code: null },
            }),
            { connection: 'close' },
            '413 Payload Too Large',
          ),
        );
      },
      { onHead: true },
    );
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const big = 'y'.repeat(2 * MB);
    const r = await send(gw, { model: 'only', messages: [{ role: 'user', content: big }] });
    expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + 1500);
    expect([413, 502]).toContain(r.status);
    expect(errorOf(r.json).type).toBeDefined();
    await stillServes(gw);
  }, 15_000);
});

describe('upstream bodies: bombs and endless lines (memory bounded)', () => {
  it('an SSE body of one 50 MB line without a newline: failed over before content, memory bounded, not read to its end', async () => {
    const TOTAL = 50 * MB;
    const block = Buffer.alloc(256 * 1024, 'a');
    const a = await rawUpstream((s) => {
      s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
      let sent = 0;
      const head = 'data: {"choices":[{"index":0,"delta":{"content":"';
      s.write(`${head.length.toString(16)}\r\n${head}\r\n`);
      const pump = (): void => {
        while (!s.destroyed && sent < TOTAL) {
          sent += block.length;
          s.write(`${block.length.toString(16)}\r\n`);
          s.write(block);
          if (!s.write('\r\n')) {
            s.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(
      a.url,
      b.url,
      {},
      {
        timeouts: { connect_ms: 500, first_byte_ms: 5000, idle_ms: 5000, total_ms: 20_000 },
      },
    );
    const { value: r, growth } = await peakRssGrowth(() =>
      send(gw, { model: 'r', messages: [{ role: 'user', content: 'line' }], stream: true }),
    );
    expect(r.status).toBe(200);
    expect(contentOf(r)).toBe('b:line');
    expect(r.text).toContain('[DONE]');
    expect(r.headers['x-router-trail']).toBe('a/m=sse_event_too_large');
    expect(growth).toBeLessThan(200 * MB);
    await until(
      'the hostile connection is dropped',
      () => a.bytesWritten() > 0 && a.connections() >= 1,
      2000,
    );
    expect(a.bytesWritten()).toBeLessThan(TOTAL);
  }, 30_000);

  it('a gzip bomb as a JSON answer (1 MB compressed, 1 GiB inflated): failed over, memory bounded', async () => {
    // Concatenated gzip members are one valid gzip stream: 1024 members of 1 MiB of spaces each.
    const open = gzipSync(
      '{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"',
    );
    const filler = gzipSync(Buffer.alloc(MB, 'a'));
    const bomb = Buffer.concat([
      open,
      ...Array.from({ length: 1024 }, () => filler),
      gzipSync('"},"finish_reason":"stop"}]}'),
    ]);
    expect(bomb.length).toBeLessThan(4 * MB);
    const a = await rawUpstream((s) => {
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: ${bomb.length}\r\n\r\n`,
      );
      s.write(bomb);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const { value: r, growth } = await peakRssGrowth(() =>
      send(gw, { model: 'r', messages: [{ role: 'user', content: 'bomb' }] }),
    );
    expect(r.status).toBe(200);
    expect(contentOf(r)).toBe('b:bomb');
    expect(r.headers['x-router-trail'] ?? '').toContain('a/m=');
    expect(growth).toBeLessThan(200 * MB);
    await stillServes(gw);
  }, 30_000);

  it('a gzip bomb as an SSE stream of endless empty comments: bounded by total_ms, memory bounded, failed over', async () => {
    const filler = gzipSync(Buffer.from(': x\n\n'.repeat(MB / 5)));
    const bomb = Buffer.concat(Array.from({ length: 1024 }, () => filler));
    const a = await rawUpstream((s) => {
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ncontent-length: ${bomb.length}\r\n\r\n`,
      );
      s.write(bomb);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const { value: r, growth } = await peakRssGrowth(() =>
      send(gw, { model: 'r', messages: [{ role: 'user', content: 'cbomb' }], stream: true }),
    );
    expect(r.status).toBe(200);
    expect(contentOf(r)).toBe('b:cbomb');
    expect(growth).toBeLessThan(200 * MB);
    expect(r.ms).toBeLessThan(TIMEOUTS.total_ms + 3000);
  }, 30_000);

  it('content-encoding: gzip with garbage bytes on a stream: failed over before anything reaches the client', async () => {
    const a = await rawUpstream((s) => {
      const garbage = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x00]), Buffer.alloc(200, 0x5a)]);
      s.write(
        `HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ncontent-length: ${garbage.length}\r\n\r\n`,
      );
      s.write(garbage);
    });
    const b = await goodUpstream('b');
    const gw = await gatewayOver(a.url, b.url);
    const r = await send(gw, { model: 'r', messages: [{ role: 'user', content: 'gz' }], stream: true });
    expect(r.status).toBe(200);
    expect(contentOf(r)).toBe('b:gz');
    expect(r.text).toContain('[DONE]');
    expect(r.text).not.toContain('ZZZZ');
  }, 15_000);
});
