import { ServerResponse, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { WebSocket, WebSocketServer } from 'ws';
import type { ProviderConfig } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { connectionNamed, sendScrubbed, STRIPPED } from './passthrough.js';
import { SessionRelay } from './passthrough-ws-relay.js';
import { reportUnrouted } from './report.js';
import { corsAllows } from './cors.js';

/** What a refused handshake's answer keeps of its upstream's headers. */
const REFUSAL_HEADERS = [
  'content-type',
  'content-encoding',
  'retry-after',
  'retry-after-ms',
  'x-should-retry',
  'x-ratelimit-limit-requests',
  'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens',
  'x-ratelimit-remaining-tokens',
  'x-ratelimit-reset-tokens',
];

/** The OpenAI SDK in a browser, which cannot set a WebSocket's headers, sends its key as this subprotocol. */
const KEY_PROTOCOL = 'openai-insecure-api-key.';
/** The client's handshake fields: the upstream handshake has its own. */
const HANDSHAKE_HEADERS = new Set([
  'host',
  'content-length',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
  'sec-websocket-protocol',
]);
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

interface Handshake {
  readonly socket: Duplex;
  readonly head: Buffer;
  /** The client sent Authorization itself (not from the key subprotocol): no browser page can. */
  readonly authorized: boolean;
  /** The subprotocol the upstream chose, given to the client as its own. */
  protocol?: string | undefined;
  requestId?: string;
  /** Headers hooks put on the reply (the rate limiter's x-ratelimit-*), for the 101 the ws server writes. */
  extra?: string[];
}

export interface WebSocketPassthroughOptions {
  /** The passthrough provider's base_url. */
  readonly url: URL;
  readonly timeouts: ProviderConfig['timeouts'];
  /** A message's largest size, either way. */
  readonly maxPayloadBytes: number;
  /** What the client is told when the upstream failed before its handshake, or timed out. */
  readonly failure: (timedOut: boolean) => GatewayError;
}

export interface WebSocketPassthrough {
  /** Whether this request is a WebSocket handshake (it came through the server's `upgrade` event). */
  isHandshake(req: IncomingMessage): boolean;
  /** Proxies the handshake of an authorized request to `dest` (base_url's path, the rest and the query). */
  proxy(req: FastifyRequest, reply: FastifyReply, dest: string): void;
}

/**
 * WebSocket upgrades (the Realtime API) through the passthrough, on the server's `upgrade` event.
 *
 * A WebSocket handshake is routed like any request (a `ServerResponse` on its socket), so the auth hook, the
 * rate limiter, the draining 503 and the 404s answer it as they answer HTTP, and the socket is closed after
 * their answer. Only the passthrough route calls `proxy`, which opens the upstream's WebSocket first and
 * completes the client's handshake only once the upstream has completed its own: an upstream that refuses
 * (its status and scrubbed body), cannot be reached (502) or does not answer within connect_ms +
 * first_byte_ms (504) fails the client's handshake the same way. Open sessions: passthrough-ws-relay.ts.
 *
 * Node sends every request that has an `Upgrade` header to the `upgrade` event once it has a listener, so
 * other upgrades (curl's `h2c`) are put back: their head, without `Upgrade`, is unshifted onto the socket,
 * which the server then reads as a new HTTP/1.1 connection, body and all, as it did without a listener.
 */
export function webSocketPassthrough(
  app: FastifyInstance,
  opts: WebSocketPassthroughOptions,
): WebSocketPassthrough {
  const { url, timeouts, failure } = opts;
  const wsOrigin = `${url.protocol === 'https:' ? 'wss:' : 'ws:'}//${url.host}`;
  const handshakeMs = timeouts.connect_ms + timeouts.first_byte_ms;
  const handshakes = new WeakMap<IncomingMessage, Handshake>();
  const pending = new Set<() => void>();
  const sessions = new SessionRelay();

  const wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    maxPayload: opts.maxPayloadBytes,
    handleProtocols: (_offered, req) => handshakes.get(req)?.protocol ?? false,
  });
  wss.on('headers', (headers, req) => {
    const handshake = handshakes.get(req);
    if (handshake?.requestId !== undefined) headers.push(`x-request-id: ${handshake.requestId}`);
    if (handshake?.extra !== undefined) headers.push(...handshake.extra);
  });

  const server: Server = app.server;
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Node has taken its own listeners off this socket.
    socket.on('error', () => socket.destroy());
    // A request pipelined behind one still being answered waits for that answer, as HTTP has it.
    const previous = (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
    if (previous) previous.once('finish', () => upgrade(req, socket, head));
    else upgrade(req, socket, head);
  });

  function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (socket.destroyed) return;
    if (!isWebSocket(req)) {
      socket.removeAllListeners('error');
      replayAsHttp(server, req, socket, head);
      return;
    }
    // No browser can set Authorization on a WebSocket: a client that sent it is no page (see proxy).
    handshakes.set(req, { socket, head, authorized: req.headers.authorization !== undefined });
    if (req.headers.authorization === undefined) {
      const key = offeredProtocols(req.headers).find((p) => p.startsWith(KEY_PROTOCOL));
      if (key !== undefined) req.headers.authorization = `Bearer ${key.slice(KEY_PROTOCOL.length)}`;
    }
    const res = new ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as Socket);
    // Answered in HTTP (refused, or the upstream's refusal): that was the connection's only answer.
    res.once('finish', () => socket.end(() => socket.destroy()));
    app.routing(req, res);
  }

  app.addHook('preClose', async () => {
    for (const abort of pending) abort();
    await sessions.closeAll();
    wss.close();
  });

  function proxy(req: FastifyRequest, reply: FastifyReply, dest: string): void {
    const handshake = handshakes.get(req.raw);
    if (handshake === undefined) return;
    const offered = offeredProtocols(req.headers);
    const key = req.headers['sec-websocket-key'];
    const version = req.headers['sec-websocket-version'];
    // A handshake has no body: bytes after its head would be read as frames (RFC 6455 §4.1: none before 101).
    const length = req.headers['content-length'];
    if ((length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined) {
      void reply.send(new GatewayError('invalid_request', 'a WebSocket handshake cannot carry a body'));
      return;
    }
    if (
      typeof key !== 'string' ||
      !WEBSOCKET_KEY.test(key.trim()) ||
      (version !== '13' && version !== '8') ||
      !offered.every((p) => TOKEN.test(p)) ||
      new Set(offered).size !== offered.length
    ) {
      void reply.send(new GatewayError('invalid_request', 'malformed WebSocket handshake'));
      return;
    }
    // The config serving now: its key is sent, and its secrets are what the session's answers are kept from.
    const runtime = app.gateway.runtime;
    // Browsers apply no CORS to WebSockets: any page a user visits could open a session on our provider key.
    // A handshake from another site's page (an Origin not the gateway's own, no Authorization: a page cannot
    // set it) is taken from the origins server.cors allows, as HTTP is. Server-side clients that send an
    // Origin anyway (Python's websocket-client sends the gateway's own) are not pages.
    const origin = req.headers.origin;
    if (
      origin !== undefined &&
      !handshake.authorized &&
      !sameHost(origin, req.headers.host) &&
      !corsAllows(runtime.loaded.config.server.cors, origin)
    ) {
      void reply.send(
        new GatewayError('forbidden', 'this origin may not open a WebSocket session (see server.cors)'),
      );
      return;
    }
    const opened = { provider: runtime.passthrough, scrubber: runtime.scrubber };
    const provider = runtime.passthrough?.config;
    // A session is one of the provider's connections, as max_concurrency counts them (routed and passthrough
    // requests share it): held from the handshake to the session's end, refused past it.
    const pool = runtime.passthrough?.client;
    if (pool !== undefined && pool.active >= pool.capacity) {
      void reply.send(
        new GatewayError(
          'overloaded',
          `every one of the passthrough provider's ${pool.capacity} connections (max_concurrency) is in use`,
          { retryAfterS: 1 },
        ),
      );
      return;
    }
    let holding = pool !== undefined;
    if (pool !== undefined) pool.active++;
    const release = (): void => {
      if (!holding) return;
      holding = false;
      pool!.active--;
    };
    const upstream = new WebSocket(
      `${wsOrigin}${dest}`,
      offered.filter((p) => !p.startsWith(KEY_PROTOCOL)),
      {
        headers: upstreamHeaders(req.headers, provider),
        perMessageDeflate: false,
        followRedirects: false,
        maxPayload: opts.maxPayloadBytes,
      },
    );
    // connecting: awaiting the upstream's handshake; refused: relaying its HTTP answer; over: nothing to say.
    let phase: 'connecting' | 'refused' | 'over' = 'connecting';
    let timedOut = false;
    let refusal: IncomingMessage | undefined;
    /** The handshake is over: a session (`open`) keeps its connection until it ends. */
    const end = (open = false): void => {
      phase = 'over';
      clearTimeout(timer);
      pending.delete(shutdown);
      handshake.socket.off('close', clientGone);
      if (!open) release();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      refusal?.destroy();
      upstream.terminate();
    }, handshakeMs);
    const clientGone = (): void => {
      end();
      upstream.terminate();
    };
    const shutdown = (): void => {
      if (phase === 'connecting') {
        end();
        void reply.send(new GatewayError('overloaded', 'the gateway is shutting down', { retryAfterS: 1 }));
      }
      upstream.terminate();
    };
    pending.add(shutdown);
    handshake.socket.once('close', clientGone);
    // After the handshake, a failure is the session's (see relay); before it, the client's answer.
    upstream.on('error', () => {
      if (phase !== 'connecting') return;
      end();
      void reply.send(failure(timedOut));
    });
    upstream.once('unexpected-response', (upstreamReq, res) => {
      if (phase !== 'connecting') {
        upstreamReq.destroy();
        return;
      }
      const status = res.statusCode ?? 502;
      if (status < 400) {
        // A 2xx to an Upgrade (a server that speaks no WebSocket), a redirect: no refusal to relay, no session.
        end();
        res.resume();
        upstreamReq.destroy();
        void reply.send(
          new GatewayError('upstream_error', `the passthrough upstream answered the upgrade with ${status}`),
        );
        return;
      }
      phase = 'refused';
      refusal = res;
      void reply.code(status);
      // When to try again (a 429's, a 503's) is the refusal's; the rate limit headers too, unless ours are set.
      const own = runtime.loaded.config.server.rate_limit.requests_per_minute > 0;
      for (const name of REFUSAL_HEADERS) {
        if (own && name.startsWith('x-ratelimit-')) continue;
        const value = res.headers[name];
        if (typeof value === 'string') void reply.header(name, opened.scrubber.scrub(value));
      }
      void sendScrubbed(opened.scrubber, reply, res).finally(() => {
        end();
        upstreamReq.destroy();
      });
    });
    upstream.once('open', () => {
      if (phase !== 'connecting') {
        upstream.terminate();
        return;
      }
      end(true);
      handshake.protocol = upstream.protocol === '' ? undefined : upstream.protocol;
      handshake.requestId = req.id;
      // The 101 is the session's answer: it carries the client's rate-limit budget as every answer does.
      handshake.extra = ownHeaders(reply.getHeaders());
      reply.hijack();
      req.reported = true;
      const started = performance.now();
      let relayed = false;
      // Synchronous (no verifyClient): the upstream's first messages, already on their way, find the relay.
      wss.handleUpgrade(req.raw, handshake.socket, handshake.head, (client) => {
        relayed = true;
        sessions.relay(
          client,
          upstream,
          () => {
            release();
            reportUnrouted(app.gateway, req, 101, performance.now() - started);
          },
          opened,
        );
      });
      // ws refused the client's handshake itself (its own 400) or found the socket gone: still one line.
      if (!relayed) {
        release();
        upstream.terminate();
        reportUnrouted(app.gateway, req, 400, performance.now() - started);
      }
    });
  }

  return { isHandshake: (req) => handshakes.has(req), proxy };
}

/** An Origin on the gateway's own host (the Host the client asked for). */
function sameHost(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    return new URL(origin).host === host.toLowerCase();
  } catch {
    return false;
  }
}

function isWebSocket(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  return req.method === 'GET' && typeof upgrade === 'string' && upgrade.toLowerCase() === 'websocket';
}

function offeredProtocols(headers: IncomingHttpHeaders): string[] {
  const h = headers['sec-websocket-protocol'];
  if (typeof h !== 'string') return [];
  return h
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
}

/**
 * The client's headers as the HTTP passthrough sends them (no hop-by-hop fields, credentials, organization
 * or project), then the provider's key and configured headers.
 */
function upstreamHeaders(
  headers: IncomingHttpHeaders,
  provider: ProviderConfig | undefined,
): Record<string, string> {
  const named = connectionNamed(headers.connection);
  // No prototype: a `__proto__` field is a header like any other.
  const out = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || STRIPPED.has(k) || HANDSHAKE_HEADERS.has(k) || named?.includes(k) === true)
      continue;
    out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  if (provider?.api_key) out.authorization = `Bearer ${provider.api_key}`;
  if (provider?.headers) for (const [k, v] of Object.entries(provider.headers)) out[k.toLowerCase()] = v;
  return out;
}

/**
 * Hands a non-WebSocket upgrade back to the HTTP server as a new connection: its head again, without the
 * `Upgrade` field (declined, as it was when the server had no `upgrade` listener), then the bytes after it.
 */
function replayAsHttp(server: Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  let text = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    let value = raw[i + 1] ?? '';
    const lower = name.toLowerCase();
    if (lower === 'upgrade') continue;
    if (lower === 'connection') {
      value = value
        .split(',')
        .map((t) => t.trim())
        .filter((t) => t !== '' && t.toLowerCase() !== 'upgrade')
        .join(', ');
      if (value === '') continue;
    }
    text += `${name}: ${value}\r\n`;
  }
  socket.unshift(Buffer.concat([Buffer.from(`${text}\r\n`, 'latin1'), head]));
  server.emit('connection', socket);
}

/** The x-ratelimit-* headers set on a reply, as header lines (their values are ours: numbers). */
function ownHeaders(headers: Record<string, unknown>): string[] | undefined {
  let out: string[] | undefined;
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith('x-ratelimit-') && (typeof value === 'string' || typeof value === 'number'))
      (out ??= []).push(`${name}: ${value}`);
  }
  return out;
}
