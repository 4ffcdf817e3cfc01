/**
 * Rules held here, for the WebSocket passthrough's admission and its share of `max_concurrency`, and for the
 * 404s that fail over:
 * - The Origin check keeps browser pages off the provider key; a client that is no browser page is not
 *   refused for sending an Origin: one naming the gateway itself (the Python `websocket-client` default, as
 *   OpenAI's Realtime guide uses it), or one that carries `Authorization` (no browser can set it on a
 *   WebSocket). A page (its key in the subprotocol, no Authorization) is still refused when server.cors is unset.
 * - Sessions are bounded by the provider's `max_concurrency` (README): past it a handshake is refused 503;
 *   routed requests keep their own pool beside them. The slot comes back exactly once on every end of a
 *   handshake or session (a refusal, relayed with its Retry-After; a handshake timeout; a client gone
 *   mid-handshake; a session the upstream ends).
 * - A JSON 404 that is a router's "no such path" (FastAPI's default `{"detail":"Not Found"}`, vLLM behind a
 *   base_url without `/v1`; Kong's "no Route matched") says nothing of the client's model: failed over.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';
import { answerChat, chatCompletion, sendJson, startMock } from '../helpers/mock-upstream.js';
import {
  activeOf,
  closeWsServer,
  listen,
  passthroughGateways,
  readAnswer,
  sleep,
  wsUrl,
  type PassthroughOptions,
} from '../helpers/ws.js';

const track = closeAfterEach();
const PT_KEY = 'sk-pt-REVIEW6-SECRET-7171';
const CLIENT_KEY = 'client-key-review6-4242';
const TIMEOUTS = { connect_ms: 300, first_byte_ms: 400, idle_ms: 1000, total_ms: 3000 };
const WAIT = { timeout: 4000, interval: 20 };
const MSGS = [{ role: 'user', content: 'hi' }];
type Json = Record<string, unknown>;

const { gateway } = passthroughGateways(track, { key: PT_KEY, timeouts: TIMEOUTS, strategy: 'priority' });

type Mode = 'accept' | 'refuse429' | 'hang';

interface PtUpstream {
  readonly url: string;
  mode: Mode;
  /** Upgrades received, and the server-side peers of accepted ones. */
  readonly upgrades: IncomingMessage[];
  readonly peers: WebSocket[];
  /** Sessions open now. */
  sessions: number;
  /** HTTP requests, each with how many sessions were open as it arrived. */
  readonly http: { path: string; sessionsOpen: number }[];
}

/** A passthrough provider: WebSocket upgrades by `mode`, chat completions and other HTTP paths answered. */
async function ptUpstream(): Promise<PtUpstream> {
  const sockets = new Set<Socket>();
  const up: PtUpstream = { url: '', mode: 'accept', upgrades: [], peers: [], sessions: 0, http: [] };
  const server = createServer((req, res) => {
    up.http.push({ path: req.url ?? '', sessionsOpen: up.sessions });
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      if (req.url?.includes('/chat/completions')) {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8') || '{}') as Json;
        sendJson(res, 200, chatCompletion(body));
      } else sendJson(res, 200, { object: 'list', data: [] });
    });
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', () => undefined);
    up.upgrades.push(req);
    if (up.mode === 'hang') return;
    if (up.mode === 'refuse429') {
      const body = JSON.stringify({ error: { message: 'slow down', type: 'rate_limit_error' } });
      socket.end(
        [
          'HTTP/1.1 429 Too Many Requests',
          'Content-Type: application/json',
          'Retry-After: 7',
          `Content-Length: ${Buffer.byteLength(body)}`,
          'Connection: close',
          '',
          body,
        ].join('\r\n'),
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      up.sessions += 1;
      up.peers.push(ws);
      ws.on('error', () => undefined);
      ws.on('message', (d: Buffer, binary: boolean) => ws.send(d, { binary }));
      ws.on('close', () => (up.sessions -= 1));
    });
  });
  await listen(server);
  track({ close: () => closeWsServer(server, sockets, wss, up.peers) });
  return Object.assign(up, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
}

/** A gateway whose passthrough provider is `up`. */
const ptGateway = (up: PtUpstream, opts: PassthroughOptions = {}) => gateway(`${up.url}/v1`, opts);

interface Outcome {
  /** 101 when the session opened, else the HTTP status of the refusal (0: no answer). */
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  readonly ws: WebSocket;
}

/** A handshake through the gateway, and what came of it (an open session, or the HTTP refusal). */
function handshake(
  url: string,
  opts: { headers?: Record<string, string>; origin?: string; protocols?: string[] } = {},
): Promise<Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts.protocols ?? [], {
      headers: opts.headers,
      perMessageDeflate: false,
      followRedirects: false,
      ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
    });
    track({ close: () => ws.terminate() });
    ws.on('error', () => resolve({ status: 0, headers: {}, text: '', ws }));
    ws.on('open', () => resolve({ status: 101, headers: {}, text: '', ws }));
    ws.on('unexpected-response', (req, res) => readAnswer(req, res, (answer) => resolve({ ...answer, ws })));
  });
}

describe('the WebSocket Origin check refuses browser pages, not clients that send an Origin', () => {
  it('the Python websocket-client default (Origin: the gateway itself) with a valid Bearer key opens a session', async () => {
    // websocket-client (OpenAI's Realtime guide for Python) sends `Origin: http://HOST:PORT` of the URL it
    // connects to unless told not to: the gateway's own origin, never a third-party page.
    const up = await ptUpstream();
    const gw = await ptGateway(up, { apiKeys: [CLIENT_KEY] });
    const self = new URL(gw.url).origin;
    const r = await handshake(wsUrl(gw), {
      origin: self,
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'openai-beta': 'realtime=v1' },
    });
    expect(r.status, r.text).toBe(101);
    r.ws.terminate();
  });

  it('a server-side client that sends Authorization (no browser can set it on a WebSocket) and an Origin opens a session', async () => {
    const up = await ptGateway(await ptUpstream(), { apiKeys: [CLIENT_KEY] });
    const r = await handshake(wsUrl(up), {
      origin: 'https://tools.internal.example',
      headers: { authorization: `Bearer ${CLIENT_KEY}` },
    });
    expect(r.status, r.text).toBe(101);
    r.ws.terminate();
  });

  it('a browser page (key in the subprotocol, no Authorization) is refused 403 with server.cors unset, before any upstream connection', async () => {
    const up = await ptUpstream();
    const gw = await ptGateway(up, { apiKeys: [CLIENT_KEY] });
    const r = await handshake(wsUrl(gw), {
      origin: 'https://evil.example.net',
      protocols: ['realtime', `openai-insecure-api-key.${CLIENT_KEY}`],
    });
    expect(r.status, r.text).toBe(403);
    expect(JSON.parse(r.text)).toMatchObject({ error: { type: 'permission_error' } });
    expect(up.upgrades).toHaveLength(0);
    expect(activeOf(gw)).toBe(0);
  });
});

describe('a WebSocket session is one of the provider’s max_concurrency connections', () => {
  it('sessions past max_concurrency are refused 503 with Retry-After; routed requests keep their own pool', async () => {
    const up = await ptUpstream();
    const gw = await ptGateway(up, { maxConcurrency: 1 });
    const s = await handshake(wsUrl(gw));
    expect(s.status).toBe(101);
    await vi.waitFor(() => expect(up.sessions).toBe(1), WAIT);
    const second = await handshake(wsUrl(gw));
    expect(second.status).toBe(503);
    expect(up.sessions).toBe(1);
    // README: routed and HTTP passthrough requests have the provider's pool of max_concurrency connections
    // beside the sessions: served while the session runs.
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSGS }),
    });
    await res.body.text();
    expect(res.statusCode).toBe(200);
    s.ws.terminate();
  });

  it('the slot comes back exactly once on every end: refusal, handshake timeout, client gone, upstream close', async () => {
    const up = await ptUpstream();
    const gw = await ptGateway(up, { maxConcurrency: 1 });

    // 1. The upstream refuses: its status and Retry-After are relayed; the slot is free again.
    up.mode = 'refuse429';
    const refused = await handshake(wsUrl(gw));
    expect(refused.status, refused.text).toBe(429);
    expect(refused.headers['retry-after']).toBe('7');
    expect(refused.text).not.toContain(PT_KEY);
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);

    // 2. The upstream never answers the upgrade: 504 within connect_ms + first_byte_ms; slot free.
    up.mode = 'hang';
    const timedOut = await handshake(wsUrl(gw));
    expect(timedOut.status, timedOut.text).toBe(504);
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);

    // 3. The client leaves while the upstream's handshake is pending: slot free at once.
    const n = up.upgrades.length;
    const leaving = new WebSocket(wsUrl(gw), { perMessageDeflate: false });
    leaving.on('error', () => undefined);
    track({ close: () => leaving.terminate() });
    await vi.waitFor(() => expect(up.upgrades.length).toBe(n + 1), WAIT);
    expect(activeOf(gw)).toBe(1);
    leaving.terminate();
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
    // Past the handshake bound, the abandoned handshake must not give the slot back a second time.
    await sleep(TIMEOUTS.connect_ms + TIMEOUTS.first_byte_ms + 100);
    expect(activeOf(gw)).toBe(0);

    // 4. A session the upstream ends gives its slot back, and a new session then opens.
    up.mode = 'accept';
    const a = await handshake(wsUrl(gw));
    expect(a.status).toBe(101);
    expect(activeOf(gw)).toBe(1);
    const closed = new Promise<number>((resolve) => a.ws.on('close', (code) => resolve(code)));
    await vi.waitFor(() => expect(up.sessions).toBe(1), WAIT);
    up.peers.at(-1)!.close(1000, 'bye');
    expect(await closed).toBe(1000);
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
    const b = await handshake(wsUrl(gw));
    expect(b.status).toBe(101);
    expect(activeOf(gw)).toBe(1);
    b.ws.close(1000);
    await vi.waitFor(() => expect(activeOf(gw)).toBe(0), WAIT);
  });
});

describe('a JSON 404 that is a router’s “no such path” is failed over', () => {
  const RELAXED = { connect_ms: 1000, first_byte_ms: 3000, idle_ms: 3000, total_ms: 5000 };

  async function notFoundThenGood(send: (res: ServerResponse) => void) {
    const a = track(await startMock((_r, res) => send(res)));
    const b = track(await startMock((r, res) => answerChat(res, r.body, 'from b')));
    const gw = track(
      await startGateway({
        providers: [
          simProvider('a', a.url, ['m'], { timeouts: RELAXED }),
          simProvider('b', b.url, ['m'], { timeouts: RELAXED }),
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
      }),
    );
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'r', messages: MSGS }),
    });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text(), b };
  }

  it('FastAPI’s default {"detail":"Not Found"} (vLLM with a base_url missing /v1) fails over', async () => {
    const r = await notFoundThenGood((res) => sendJson(res, 404, { detail: 'Not Found' }));
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('Kong’s {"message":"no Route matched with those values"} fails over', async () => {
    const r = await notFoundThenGood((res) =>
      sendJson(res, 404, { message: 'no Route matched with those values' }),
    );
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('Ollama’s unknown-model 404 stays the client’s error, its message kept, nothing failed over', async () => {
    const r = await notFoundThenGood((res) =>
      sendJson(res, 404, {
        error: {
          message: 'model "m" not found, try pulling it first',
          type: 'api_error',
          param: null,
          code: null,
        },
      }),
    );
    expect(r.status, r.text).toBe(404);
    expect(r.text).toContain('try pulling it first');
    expect(r.b.received).toHaveLength(0);
  });
});
