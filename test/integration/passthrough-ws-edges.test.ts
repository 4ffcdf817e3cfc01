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
import type { Socket } from 'node:net';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { closeAfterEach } from '../helpers/cleanup.js';
import { scrape, value } from '../helpers/prom-text.js';
import {
  accept101,
  activeOf,
  clientFrame,
  gwPort,
  openAIError,
  passthroughGateways,
  rawUpstream,
  requestLines,
  sleep,
  wsClients,
  wsUpstream,
  wsUrl,
} from '../helpers/ws.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-WSEDGE-SECRET-6161';
const CLIENT_KEY = 'client-key-wsedge-3131';
const TIMEOUTS = { connect_ms: 500, first_byte_ms: 1000, idle_ms: 500, total_ms: 1000 };
const WAIT = { timeout: 5000, interval: 20 };
/** Well under ws's own 30 s closing-handshake timeout: "at once", with room for a loaded machine. */
const PROMPT = { timeout: 5000, interval: 25 };
const CHUNK = 256 * 1024;

const { gateway } = passthroughGateways(track, { key: PT_KEY, timeouts: TIMEOUTS });
const { openClient, refusedHandshake, rawClient } = wsClients(track, { record: (data) => data.toString() });

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

// ---------------------------------------------------------------------------------------------------------

describe('a session whose other side vanishes while back-pressure holds one side unread', () => {
  it('ends the upstream connection at once when a client that stopped reading vanishes', async () => {
    const TOTAL = 400; // 100 MiB if nothing held it back
    let sent = 0;
    let acked = 0;
    const up = await wsUpstream(track, {
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
    const { socket } = await rawClient(gwPort(gw), '/v1/realtime');
    socket.write(clientFrame(0x1, Buffer.from('go'))); // starts the audio flood, then reads nothing
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
    const up = await rawUpstream(track, (req, socket) => {
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
      const up = await rawUpstream(track, (_req, socket) => {
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
      await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
    }
  });

  it('answers 502 upstream_error when the upstream answers the upgrade with a plain 200 (it speaks no WebSocket)', async () => {
    // A vLLM or a plain HTTP app at base_url: it ignores `Upgrade` and answers the GET.
    const up = await rawUpstream(track, (_req, socket) => {
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
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('who may open a session', () => {
  it('refuses a handshake from a browser origin server.cors does not allow, before any upstream connection', async () => {
    const up = await wsUpstream(track);
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
    const up = await wsUpstream(track);
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
    const up = await wsUpstream(track);
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
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
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
    const up = await wsUpstream(track);
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
