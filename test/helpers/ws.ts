/**
 * Plumbing for tests of the WebSocket passthrough (the OpenAI Realtime API through `server.passthrough`):
 * real `ws` and hand-written upstreams on loopback, `ws` and raw TCP clients, raw frames, and a gateway whose
 * passthrough provider is the upstream. Whatever must be closed is handed to the test file's `track`.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  createServer,
  type ClientRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type RequestListener,
  type Server,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { expect } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { Track } from './cleanup.js';
import { startGateway, type TestGateway } from './gateway.js';

/** RFC 6455's GUID, hashed with the client's key into `Sec-WebSocket-Accept`. */
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** A promise that resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** How a session ended, as one side saw it. */
export interface Closed {
  readonly code: number;
  readonly reason: string;
}

/** A message's data as one Buffer (ws hands over Buffers; an ArrayBuffer is copied). */
function bufferOf(data: RawData): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
}

/** Listens on 127.0.0.1, on a port of the system's choice. */
export function listen(server: Server): Promise<void> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
}

/** Destroys `sockets`, then stops `server` listening and cuts what it still holds. */
export function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  return new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** Terminates `peers` (default: the sessions `wss` tracks), closes `wss`, then {@link closeServer}. */
export function closeWsServer(
  server: Server,
  sockets: Set<Socket>,
  wss: WebSocketServer,
  peers: Iterable<WebSocket> = wss.clients,
): Promise<void> {
  for (const ws of peers) ws.terminate();
  wss.close();
  return closeServer(server, sockets);
}

/** One handshake a {@link wsUpstream} accepted. */
export interface Seen {
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];
}

/** A {@link wsUpstream}: what it was sent and how its sessions and connections went. */
export interface Upstream {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  readonly wss: WebSocketServer;
  /** Every handshake accepted, in order. */
  readonly seen: Seen[];
  /** The upstream's side of each session (index as `seen`). */
  readonly peers: WebSocket[];
  /** Per session (index as `peers`): messages the upstream received. */
  readonly got: { text: string; binary: boolean; bytes: number }[][];
  /** Per session (index as `peers`): how it ended, undefined while open. */
  readonly closes: (Closed | undefined)[];
  /** How sessions ended, in the order they ended. */
  readonly ended: Closed[];
  /** TCP connections ever accepted, and those open now. */
  connections: number;
  open: number;
  /** The most TCP connections open at once. */
  peak: number;
}

/** What a {@link wsUpstream} does besides recording. */
export interface WsUpstreamOptions {
  /** Adds behaviour to each session, after the upstream's own listeners. */
  onSession?: (ws: WebSocket, req: IncomingMessage, index: number) => void;
  /** Echo every message as it came, text or binary (default true). */
  echo?: boolean;
  /** Picks the subprotocol, as ws's own option. */
  handleProtocols?: (protocols: Set<string>) => string | false;
  /** Answers a plain HTTP request (default: 200 `{}`). */
  onRequest?: RequestListener;
  /** Swallow errors on the upstream's side of a session (default true; false lets them surface). */
  ignoreErrors?: boolean;
}

/** A real `ws` upstream on 127.0.0.1:0 (handed to `track`) recording each handshake, message and close; ws's own 100 MiB maxPayload. */
export async function wsUpstream(track: Track, opts: WsUpstreamOptions = {}): Promise<Upstream> {
  const server = createServer(
    opts.onRequest ??
      ((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      }),
  );
  const sockets = new Set<Socket>();
  const wss = new WebSocketServer({ server, handleProtocols: opts.handleProtocols });
  const up: Upstream = {
    url: '',
    port: 0,
    server,
    wss,
    seen: [],
    peers: [],
    got: [],
    closes: [],
    ended: [],
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
    up.got.push([]);
    up.closes.push(undefined);
    if (opts.ignoreErrors !== false) ws.on('error', () => undefined);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const buf = bufferOf(data);
      up.got[index]!.push({ text: buf.toString(), binary: isBinary, bytes: buf.length });
      if (opts.echo !== false && ws.readyState === WebSocket.OPEN) ws.send(buf, { binary: isBinary });
    });
    ws.on('close', (code, reason) => {
      const c = { code, reason: reason.toString() };
      up.closes[index] = c;
      up.ended.push(c);
    });
    opts.onSession?.(ws, req, index);
  });
  await listen(server);
  track({ close: () => closeWsServer(server, sockets, wss) });
  const port = (server.address() as AddressInfo).port;
  return Object.assign(up, { url: `http://127.0.0.1:${port}`, port });
}

/** An upstream on 127.0.0.1:0 (handed to `track`) whose `onUpgrade` answers each upgrade by hand on the raw socket. */
export async function rawUpstream(
  track: Track,
  onUpgrade: (req: IncomingMessage, socket: Socket) => void,
): Promise<{ url: string; connections: () => number; upgrades: IncomingMessage[] }> {
  const server = createServer((_req, res) => {
    res.writeHead(404);
    res.end();
  });
  const sockets = new Set<Socket>();
  let connections = 0;
  const upgrades: IncomingMessage[] = [];
  server.on('connection', (s: Socket) => {
    connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    upgrades.push(req);
    socket.on('error', () => undefined);
    onUpgrade(req, socket);
  });
  await listen(server);
  track({ close: () => closeServer(server, sockets) });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => connections,
    upgrades,
  };
}

/** The `Sec-WebSocket-Accept` that answers a `Sec-WebSocket-Key`. */
export function acceptKey(key: string): string {
  return createHash('sha1')
    .update(key + GUID)
    .digest('base64');
}

/** Writes a proper 101 for `req` on `socket`, with `extra` header lines. */
export function accept101(req: IncomingMessage, socket: Socket, extra: string[] = []): void {
  socket.write(
    [
      'HTTP/1.1 101 Switching Protocols',
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Accept: ${acceptKey(String(req.headers['sec-websocket-key']))}`,
      ...extra,
      '',
      '',
    ].join('\r\n'),
  );
}

/** One masked (client-to-server) frame of `opcode` (0x1 text, 0x2 binary...), under 64 KiB. */
export function clientFrame(opcode: number, payload: Buffer, fin = true): Buffer {
  const mask = randomBytes(4);
  const head: number[] = [(fin ? 0x80 : 0) | opcode];
  if (payload.length < 126) head.push(0x80 | payload.length);
  else if (payload.length < 65536) head.push(0x80 | 126, payload.length >> 8, payload.length & 0xff);
  else throw new Error('frame too long for this helper');
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] = masked[i]! ^ mask[i % 4]!;
  return Buffer.concat([Buffer.from(head), mask, masked]);
}

/** The GET upgrade request a WebSocket client sends for `path`, with `extra` header lines. */
export function upgradeRequest(
  path: string,
  extra: string[] = [],
  key = randomBytes(16).toString('base64'),
): string {
  return [
    `GET ${path} HTTP/1.1`,
    'Host: 127.0.0.1',
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${key}`,
    'Sec-WebSocket-Version: 13',
    ...extra,
    '',
    '',
  ].join('\r\n');
}

/** What a passthrough gateway's config may say besides its provider's key and timeouts. */
export interface PassthroughOptions {
  /** false: no `server.passthrough` at all. */
  passthrough?: boolean;
  apiKeys?: string[];
  bodyLimit?: number;
  cors?: { origins: string[] };
  /** The provider's `headers`. */
  headers?: Record<string, string>;
  maxConcurrency?: number;
}

/** A test file's passthrough provider: its key, its timeouts, and its route's strategy (none when unset). */
export interface PassthroughProvider {
  key: string;
  timeouts: Record<string, number>;
  strategy?: string;
}

/** A gateway config whose `server.passthrough` is provider `pt` at `baseUrl` (route `r` → `pt/m`). */
export function passthroughConfig(
  baseUrl: string,
  provider: PassthroughProvider,
  opts: PassthroughOptions = {},
): Record<string, unknown> {
  return {
    server: {
      ...(opts.passthrough === false ? {} : { passthrough: 'pt' }),
      ...(opts.apiKeys ? { api_keys: opts.apiKeys } : {}),
      ...(opts.bodyLimit !== undefined ? { body_limit_bytes: opts.bodyLimit } : {}),
      ...(opts.cors ? { cors: opts.cors } : {}),
    },
    providers: [
      {
        name: 'pt',
        base_url: baseUrl,
        api_key: provider.key,
        timeouts: provider.timeouts,
        ...(opts.headers ? { headers: opts.headers } : {}),
        ...(opts.maxConcurrency !== undefined ? { max_concurrency: opts.maxConcurrency } : {}),
        models: [{ name: 'm' }],
      },
    ],
    routes: {
      r: { ...(provider.strategy !== undefined ? { strategy: provider.strategy } : {}), targets: ['pt/m'] },
    },
  };
}

/** A test file's `configOf` and `gateway` (started, handed to `track`) for its passthrough provider. */
export function passthroughGateways(
  track: Track,
  provider: PassthroughProvider,
): {
  configOf: (baseUrl: string, opts?: PassthroughOptions) => Record<string, unknown>;
  gateway: (baseUrl: string, opts?: PassthroughOptions) => Promise<TestGateway>;
} {
  const configOf = (baseUrl: string, opts: PassthroughOptions = {}): Record<string, unknown> =>
    passthroughConfig(baseUrl, provider, opts);
  return {
    configOf,
    gateway: async (baseUrl, opts = {}) => track(await startGateway(configOf(baseUrl, opts))),
  };
}

/** The gateway's WebSocket URL for `path`. */
export function wsUrl(gw: Pick<TestGateway, 'url'>, path = '/v1/realtime?model=m'): string {
  return `${gw.url.replace(/^http/, 'ws')}${path}`;
}

/** The gateway's TCP port. */
export function gwPort(gw: Pick<TestGateway, 'url'>): number {
  return Number(new URL(gw.url).port);
}

/** The gateway's `request` log lines. */
export function requestLines(gw: Pick<TestGateway, 'logs'>): Record<string, unknown>[] {
  return gw.logs.filter((l) => l.msg === 'request');
}

/** The passthrough's connections in use now (undefined without a passthrough). */
export function activeOf(gw: TestGateway): number | undefined {
  return gw.gateway.runtime.passthrough?.client.active;
}

/** An OpenAI error body's `error`, checked to have exactly its four keys. */
export function openAIError(text: string): { message: string; type: string; code: unknown } {
  const body = JSON.parse(text) as {
    error: { message: string; type: string; param: unknown; code: unknown };
  };
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  return body.error;
}

/** An open `ws` client session and what it has seen; `M` is what it keeps of each message. */
export interface Client<M> {
  readonly ws: WebSocket;
  /** Every message the client got, in order. */
  readonly messages: M[];
  readonly pongs: string[];
  /** Resolves with how the session ended, as the client saw it. */
  readonly closed: Promise<Closed>;
  /** The 101's headers, as the client got them. */
  readonly upgradeHeaders: IncomingHttpHeaders;
  /** How the session ended, once it has. */
  closedWith?: Closed;
}

/** A handshake's HTTP answer, and how long it took from the call. */
export interface Refusal {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
  readonly ms: number;
}

/** Reads the HTTP answer to a handshake that did not open (ws's `unexpected-response`), then drops the request. */
export function readAnswer(
  req: ClientRequest,
  res: IncomingMessage,
  done: (answer: Omit<Refusal, 'ms'>) => void,
): void {
  let text = '';
  res.setEncoding('utf8');
  res.on('data', (d: string) => (text += d));
  res.on('end', () => {
    req.destroy();
    done({ status: res.statusCode ?? 0, headers: res.headers, text });
  });
}

/** How a test file's clients behave. */
export interface WsClientOptions<M> {
  /** What a client keeps of each message it gets. */
  record: (data: Buffer, binary: boolean) => M;
  /** Whether a `ws` client offers permessage-deflate (default false: frames stay as they are on the wire). */
  deflate?: boolean;
  /** A `ws` client's `maxPayload` (ws's own 100 MiB when unset; 0: no limit). */
  maxPayload?: number;
  /** rawClient asserts the 101's Sec-WebSocket-Accept and rejects on a socket error (else it ignores both). */
  strictRaw?: boolean;
}

/** A test file's clients of the gateway: each one handed to `track`. */
export function wsClients<M>(
  track: Track,
  defaults: WsClientOptions<M>,
): {
  openClient: (
    url: string,
    opts?: { headers?: Record<string, string>; protocols?: string[]; origin?: string; maxPayload?: number },
  ) => Promise<Client<M>>;
  refusedHandshake: (
    url: string,
    opts?: { headers?: Record<string, string>; protocols?: string[]; origin?: string },
  ) => Promise<Refusal>;
  rawClient: (port: number, path: string, extra?: string[]) => Promise<{ socket: Socket; head: string }>;
} {
  return {
    /** A `ws` client, open: resolves once the handshake succeeded, rejects if it failed. */
    openClient: (url, opts = {}) =>
      new Promise((resolve, reject) => {
        const maxPayload = opts.maxPayload ?? defaults.maxPayload;
        const ws = new WebSocket(url, opts.protocols ?? [], {
          headers: opts.headers,
          ...(maxPayload !== undefined ? { maxPayload } : {}),
          perMessageDeflate: defaults.deflate ?? false,
          ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
        });
        let upgradeHeaders: IncomingHttpHeaders = {};
        const messages: M[] = [];
        const pongs: string[] = [];
        let client: Client<M> | undefined;
        const closed = new Promise<Closed>((done) =>
          ws.on('close', (code, reason) => {
            const c = { code, reason: reason.toString() };
            if (client) client.closedWith = c;
            done(c);
          }),
        );
        ws.on('upgrade', (res) => (upgradeHeaders = res.headers));
        ws.on('message', (data: RawData, binary: boolean) =>
          messages.push(defaults.record(bufferOf(data), binary)),
        );
        ws.on('pong', (d) => pongs.push(d.toString()));
        ws.on('error', (err) => {
          if (!client) reject(err);
        });
        ws.on('open', () => {
          client = { ws, messages, pongs, closed, upgradeHeaders };
          resolve(client);
        });
        track({ close: () => ws.terminate() });
      }),

    /** A handshake that must not open: resolves with the HTTP answer; rejects if it opened. */
    refusedHandshake: (url, opts = {}) => {
      const started = performance.now();
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, opts.protocols ?? [], {
          headers: opts.headers,
          followRedirects: false,
          ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
        });
        track({ close: () => ws.terminate() });
        ws.on('open', () => reject(new Error('the handshake succeeded')));
        ws.on('error', reject);
        ws.on('unexpected-response', (req, res) =>
          readAnswer(req, res, (answer) => resolve({ ...answer, ms: performance.now() - started })),
        );
      });
    },

    /** A raw client: does the handshake, then hands over the socket, paused (nothing past the 101 is consumed). */
    rawClient: (port, path, extra = []) =>
      new Promise((resolve, reject) => {
        const key = randomBytes(16).toString('base64');
        const socket = connect(port, '127.0.0.1', () => socket.write(upgradeRequest(path, extra, key)));
        track({ close: () => socket.destroy() });
        let buf = Buffer.alloc(0);
        const onData = (d: Buffer): void => {
          buf = Buffer.concat([buf, d]);
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          socket.off('data', onData);
          socket.pause();
          const head = buf.subarray(0, end).toString('latin1');
          if (!head.startsWith('HTTP/1.1 101')) return reject(new Error(`not a 101: ${head}`));
          if (defaults.strictRaw)
            expect(head.toLowerCase()).toContain(`sec-websocket-accept: ${acceptKey(key).toLowerCase()}`);
          resolve({ socket, head });
        };
        socket.on('data', onData);
        socket.on('error', defaults.strictRaw ? reject : () => undefined);
      }),
  };
}
