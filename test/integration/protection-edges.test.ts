/**
 * What protects the gateway from its own clients (SPEC §8 "Slow or vanishing clients", README
 * `server.request_timeout_ms`, `server.body_limit_bytes`, `server.rate_limit`), driven over raw sockets on
 * loopback. Rules held here:
 *
 * - No client holds a connection, or the bytes of an answer, without bound: a connection that never sends a
 *   byte is closed within `request_timeout_ms`; an answer (JSON, stream, passthrough download) a client never
 *   reads is let go once the request's bounds are spent, not held for as long as the client likes; one it
 *   takes slowly but steadily is not cut.
 * - A client that reads nothing gets back-pressure on the whole connection: requests it pipelined behind an
 *   answer it has not taken are not all sent upstream (each would be another answer held for nobody).
 * - A client that leaves gets every upstream request it started aborted at once, the ones it pipelined behind
 *   the first included; none of them is charged to the upstream's breaker.
 * - A declared body far past `body_limit_bytes` gets its 413 and the connection closed, without the gateway
 *   reading the rest of it.
 * - Pipelined requests spend the per-key budget one by one, like requests on separate connections.
 */
import type { ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, chatCompletion, chunkFrame, startMock } from '../helpers/mock-upstream.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const MSGS = [{ role: 'user', content: 'hi' }];
/** Every bound of these gateways is at most 1.5 s: a connection still held seconds after that is held for good. */
const SHORT = { connect_ms: 500, first_byte_ms: 1000, idle_ms: 1000, total_ms: 1500 };

function provider(name: string, url: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    base_url: `${url}/v1`,
    api_key: `sk-${name}-0001`,
    timeouts: SHORT,
    models: [{ name: 'm' }],
    ...extra,
  };
}

async function gatewayOf(config: Record<string, unknown>): Promise<TestGateway> {
  return track(
    await startGateway({
      routing: { total_timeout_ms: 1500 },
      routes: { r: { targets: ['a/m'] } },
      ...config,
      server: { request_timeout_ms: 1000, ...(config.server as Record<string, unknown> | undefined) },
    }),
  );
}

/** The client connections the gateway's server holds now. */
function connections(gw: TestGateway): Promise<number> {
  return new Promise((resolve, reject) =>
    gw.app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
  );
}

/** A socket to the gateway (closed after the test). */
async function socketTo(gw: TestGateway): Promise<Socket> {
  const { port } = new URL(gw.url);
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => {}); // the gateway may cut it: that is what some tests wait for
  track({ close: () => socket.destroy() });
  return socket;
}

/** A client that sends `head` and never reads a byte of what comes back. */
async function nonReadingClient(gw: TestGateway, head: string): Promise<Socket> {
  const socket = await socketTo(gw);
  socket.pause();
  socket.write(head);
  return socket;
}

function postHead(body: Record<string, unknown>, headers: string[] = []): string {
  const text = JSON.stringify(body);
  return [
    'POST /v1/chat/completions HTTP/1.1',
    'host: 127.0.0.1',
    'content-type: application/json',
    `content-length: ${Buffer.byteLength(text)}`,
    ...headers,
    '',
    text,
  ].join('\r\n');
}

/** A chat completion answer of `bytes` of text, serialised once (the mock hands the same string to every request). */
function bigAnswer(bytes: number): string {
  const c = chatCompletion({ model: 'm' }) as { choices: { message: { content: string } }[] };
  c.choices[0]!.message.content = 'x'.repeat(bytes);
  return JSON.stringify(c);
}

function sendText(res: ServerResponse, text: string): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

describe('connections that never send a byte', () => {
  it('are closed within request_timeout_ms, and the gateway keeps serving meanwhile', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'ok')));
    const gw = await gatewayOf({ providers: [provider('a', up.url)] });
    await Promise.all(Array.from({ length: 20 }, () => socketTo(gw)));
    await until('the idle connections to be open', async () => (await connections(gw)) >= 20);
    const served = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', connection: 'close' },
      body: JSON.stringify({ model: 'r', messages: MSGS }),
    });
    expect(served.status).toBe(200);
    await served.text();
    // request_timeout_ms is 1 s; Node sweeps its connections twice a second.
    await until('the idle connections to be closed', async () => (await connections(gw)) === 0, 4000);
  });
});

describe('an answer a client never reads is not held past the request’s bounds', () => {
  it('a JSON answer (16 MiB, more than socket buffers take): the connection is closed, not held for good', async () => {
    const answer = bigAnswer(16 * 1024 * 1024);
    const up = track(await startMock((_r, res) => sendText(res, answer)));
    const gw = await gatewayOf({ providers: [provider('a', up.url)] });
    // `connection: close`: an answer taken whole would close the connection at once; only an untaken one stays.
    await nonReadingClient(gw, postHead({ model: 'r', messages: MSGS }, ['connection: close']));
    await until('the upstream to be asked', () => up.received.length === 1);
    await until('the request line', () => gw.logs.some((l) => l.route === 'r'));
    // Every bound (request_timeout_ms, total_timeout_ms, total_ms) is at most 1.5 s: 5 s on, the gateway must
    // have let the connection (and the 16 MiB it holds for it) go.
    const closed = await until(
      'the gateway to let the connection go',
      async () => (await connections(gw)) === 0,
      5000,
    ).then(
      () => true,
      () => false,
    );
    expect(closed, 'the gateway still holds the connection and its unread 16 MiB answer').toBe(true);
  });

  it('a client that takes a big JSON answer slowly but steadily is not cut, however long it takes', async () => {
    const answer = bigAnswer(6 * 1024 * 1024);
    const up = track(await startMock((_r, res) => sendText(res, answer)));
    const gw = await gatewayOf({ providers: [provider('a', up.url)] });
    const socket = await socketTo(gw);
    let got = 0;
    const whole = new Promise<void>((resolve, reject) => {
      socket.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= answer.length) resolve();
        socket.pause(); // a slow reader: ~20 ms between reads, seconds for the whole answer
        setTimeout(() => socket.resume(), 20);
      });
      socket.once('close', () => reject(new Error(`cut after ${got} of ${answer.length} bytes`)));
    });
    socket.write(postHead({ model: 'r', messages: MSGS }));
    await whole;
    expect(got).toBeGreaterThanOrEqual(answer.length);
  });

  it('a stream cut at total_ms because its client stopped reading: the client connection is let go too', async () => {
    let upstreamClosed = false;
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.on('close', () => (upstreamClosed = true));
        const frame = chunkFrame('m', { content: 'y'.repeat(8000) });
        const pump = (): void => {
          while (!res.destroyed && res.write(frame));
        };
        res.on('drain', pump);
        pump();
      }),
    );
    const gw = await gatewayOf({ providers: [provider('a', up.url)] });
    await nonReadingClient(gw, postHead({ model: 'r', stream: true, messages: MSGS }, ['connection: close']));
    // What already holds: the upstream is back-pressured, then cut at its total_ms (README providers[].timeouts).
    await until('the upstream request to be cut at total_ms', () => upstreamClosed, 4000);
    const closed = await until(
      'the gateway to let the client connection go',
      async () => (await connections(gw)) === 0,
      3000,
    ).then(
      () => true,
      () => false,
    );
    expect(closed, 'the stream was cut, yet its client connection (and the bytes queued on it) is held').toBe(
      true,
    );
  });

  it('a passthrough download: the client connection is closed at the provider’s total_ms', async () => {
    let upstreamClosed = false;
    const up = track(
      await startMock((_r, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.on('close', () => (upstreamClosed = true));
        const block = 'b'.repeat(64 * 1024);
        let n = 0;
        const pump = (): void => {
          while (!res.destroyed && n < 256) {
            n++;
            if (!res.write(block)) return;
          }
          if (n >= 256) res.end();
        };
        res.on('drain', pump);
        pump();
      }),
    );
    const gw = await gatewayOf({ server: { passthrough: 'a' }, providers: [provider('a', up.url)] });
    await nonReadingClient(gw, 'GET /v1/files/f/content HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n');
    await until('the upstream request to be cut', () => upstreamClosed, 4000);
    await until('the client connection to be closed', async () => (await connections(gw)) === 0, 3000);
  });
});

describe('back-pressure on a connection whose client reads nothing', () => {
  it('requests pipelined behind an untaken answer are not all sent upstream', async () => {
    const answer = bigAnswer(2 * 1024 * 1024);
    const up = track(await startMock((_r, res) => sendText(res, answer)));
    const gw = await gatewayOf({ providers: [provider('a', up.url)] });
    // 32 requests in one write; the client then reads nothing. Served one after another (as nginx serves a
    // pipeline), the answers stop at what the socket buffers take: a few. Dispatched at once, all 32 upstream
    // calls are paid for and 64 MiB of answers are held for a client that takes none.
    await nonReadingClient(gw, postHead({ model: 'r', messages: MSGS }).repeat(32));
    await until('the first upstream call', () => up.received.length >= 1);
    await new Promise((r) => setTimeout(r, 1500));
    expect(
      up.received.length,
      'upstream calls made for one connection that read nothing',
    ).toBeLessThanOrEqual(8);
  });
});

describe('request bodies', () => {
  it('a declared body far past body_limit_bytes: 413 and the connection closed, the rest never read', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'ok')));
    const gw = await gatewayOf({
      server: { body_limit_bytes: 1024, request_timeout_ms: 3000 },
      providers: [provider('a', up.url)],
    });
    const s = await socketTo(gw);
    let got = '';
    let closed = false;
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('close', () => (closed = true));
    s.write(
      'POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n' +
        'content-length: 1000000000\r\n\r\n',
    );
    // Keep sending while the gateway lets us: at most 64 MiB, well short of the declared GB.
    const block = Buffer.alloc(64 * 1024, 32);
    let sent = 0;
    const t0 = performance.now();
    while (!closed && sent < 64 * 1024 * 1024 && performance.now() - t0 < 3000) {
      if (!s.write(block)) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, 50);
          s.once('drain', () => {
            clearTimeout(t);
            r();
          });
        });
      }
      sent += block.length;
    }
    await until('the connection to be closed', () => closed, 2000);
    expect(got.startsWith('HTTP/1.1 413 ')).toBe(true);
    expect(got).toMatch(/\r\nconnection: close\r\n/i);
    expect(got).toContain('"type":"invalid_request_error"');
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    expect(up.received).toHaveLength(0);
  });
});

describe('the per-key rate limit and pipelining', () => {
  it('six requests pipelined in one write spend the budget one by one: three 200s, then 429s with Retry-After', async () => {
    const up = track(await startMock((r, res) => answerChat(res, r.body, 'ok')));
    const gw = await gatewayOf({
      server: { api_keys: ['client-key-0001'], rate_limit: { requests_per_minute: 3 } },
      providers: [provider('a', up.url)],
    });
    const s = await socketTo(gw);
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('utf8')));
    const one = postHead({ model: 'r', messages: MSGS }, ['authorization: Bearer client-key-0001']);
    s.write(
      one.repeat(5) +
        postHead({ model: 'r', messages: MSGS }, [
          'authorization: bearer client-key-0001',
          'connection: close',
        ]),
    );
    await until('all six answers', () => (got.match(/HTTP\/1\.1 \d{3} /g) ?? []).length === 6, 4000);
    const statuses = [...got.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
    expect(statuses).toEqual(['200', '200', '200', '429', '429', '429']);
    expect(got.match(/\r\nretry-after: \d+\r\n/gi)?.length).toBe(3);
    expect(got).toContain('"code":"rate_limit_exceeded"');
    expect(up.received).toHaveLength(3);
  });
});

describe('a client that pipelined stream requests and left', () => {
  /** An upstream that streams a small chunk every 100 ms until the gateway lets go; `open` are the live ones. */
  async function tricklingUpstream() {
    const open = new Set<ServerResponse>();
    const up = track(
      await startMock((_r, res) => {
        open.add(res);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const t = setInterval(() => res.write(chunkFrame('m', { content: 'y' })), 100);
        res.on('close', () => {
          clearInterval(t);
          open.delete(res);
        });
      }),
    );
    return { ...up, open };
  }

  it('only the request whose turn it is runs; when the client leaves it is aborted at once and the rest are never sent', async () => {
    const up = await tricklingUpstream();
    const gw = await gatewayOf({
      providers: [provider('a', up.url, { timeouts: { ...SHORT, total_ms: 4000 } })],
      routing: { total_timeout_ms: 4000 },
    });
    const client = await nonReadingClient(
      gw,
      postHead({ model: 'r', stream: true, messages: MSGS }).repeat(4),
    );
    await until('the first upstream stream', () => up.open.size === 1);
    await new Promise((r) => setTimeout(r, 200)); // time for any of the others to be sent (none may be)
    expect(up.received).toHaveLength(1);
    client.destroy();
    const aborted = await until('the upstream stream to be aborted', () => up.open.size === 0, 1000).then(
      () => true,
      () => false,
    );
    expect(aborted, 'the upstream stream still running 1 s after its client left').toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(up.received).toHaveLength(1);
  });

  it('its abandoned requests are not charged to the upstream: its breaker stays closed; each is a 499', async () => {
    const up = await tricklingUpstream();
    // Default breaker (5 failures); total_ms short, the request's own deadline long (as by default).
    const gw = await gatewayOf({
      providers: [provider('a', up.url)],
      routing: { total_timeout_ms: 600_000 },
    });
    const client = await nonReadingClient(
      gw,
      postHead({ model: 'r', stream: true, messages: MSGS }).repeat(6),
    );
    await until('the first upstream stream', () => up.received.length === 1);
    client.destroy();
    await until('every upstream stream to end', () => up.open.size === 0, 3000);
    await new Promise((r) => setTimeout(r, 100)); // breakers learn at the end of the turn
    const status = (await (await fetch(`${gw.url}/router/status`)).json()) as {
      upstreams: { breaker: { state: string; consecutive_failures: number } }[];
    };
    expect(status.upstreams[0]?.breaker).toMatchObject({ state: 'closed', consecutive_failures: 0 });
    // The client left: the routed one is a 499 client_closed; the five never routed are 499s too.
    const lines = gw.logs
      .filter((l) => l.msg === 'request')
      .map((l) => `${String(l.status)} ${String(l.route ?? '-')}`);
    expect(lines.sort()).toEqual(['499 r', ...Array<string>(5).fill('499 -')].sort());
    expect(up.received).toHaveLength(1);
  });
});
