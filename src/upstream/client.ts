import type { IncomingHttpHeaders } from 'node:http';
import { createRequire } from 'node:module';
import {
  brotliDecompressSync,
  createBrotliDecompress,
  createGunzip,
  createInflate,
  gunzipSync,
  inflateSync,
} from 'node:zlib';
import type { Readable, Transform } from 'node:stream';
import { inTurnOrder } from '../end-of-turn.js';
import { codedError } from '../resilience/classify.js';
import type { ProviderConfig } from '../config/schema.js';
import { withoutBom } from '../json-scan.js';
import type { Abort } from './abort.js';
import type { Dispatcher, Pool as UndiciPool } from 'undici';

/**
 * undici's Pool and its promise `request`, loaded from their own modules. undici's entry point loads all of
 * undici (fetch, WebSocket, caches, mocks: 110 modules, ~9 MB resident) to export them; the gateway uses
 * these two. The entry point also copies `request` onto every dispatcher's prototype, which is why ours is
 * called as `requestOn.call(pool, ...)`. undici has no `exports` map, so these paths are public to Node's
 * resolver; test/unit/upstream/undici-pool.test.ts pins them to what undici exports, so an undici update that moves
 * them fails the suite instead of the gateway.
 */
const requireUndici = createRequire(import.meta.url);
export const Pool = requireUndici('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
type Pool = UndiciPool;
/** undici's promise `request`, and the handler class it builds for each call (to watch its onConnect). */
const apiRequest = requireUndici('undici/lib/api/api-request.js') as ((
  this: Dispatcher,
  opts: Dispatcher.RequestOptions,
) => Promise<Dispatcher.ResponseData>) & {
  RequestHandler?: new (
    opts: Dispatcher.RequestOptions,
    callback: (err: Error | null, data: Dispatcher.ResponseData) => void,
  ) => Dispatcher.DispatchHandler;
};
export const requestOn = apiRequest;
/** Undefined should an undici update stop exporting it: streams then go unwatched (test/unit pins it). */
export const RequestHandler = apiRequest.RequestHandler;

/**
 * How long an idle connection is kept when the server does not say (`Keep-Alive: timeout=`). Plain http is a
 * server nearby (vLLM, a local proxy): uvicorn closes idle connections after 5 s without saying so, and a
 * request written as that close arrives fails (a failover, and a count against the breaker, for nothing),
 * while a new connection costs a fraction of a millisecond. https is a provider's load balancer, which keeps
 * them a minute or more, and a new connection costs a TLS handshake on the request's time to first token.
 */
function keepIdleMs(url: URL): number {
  return url.protocol === 'https:' ? 30_000 : 4_000;
}

/** The legacy handler hook undici calls as the request is written on its connection. */
interface OnConnect {
  onConnect(abort: unknown, context: unknown): void;
}

/** undici's `request`, with `watch.sent()` told when the request gets its connection (its onConnect). */
function requestWatched(
  pool: Pool,
  o: Dispatcher.RequestOptions,
  watch: Pick<ResponseWatch, 'sent'>,
): Promise<Dispatcher.ResponseData> {
  const Handler = RequestHandler;
  if (Handler === undefined) return requestOn.call(pool, o);
  return new Promise((resolve, reject) => {
    try {
      const handler = new Handler(o, (err, data) => (err ? reject(err) : resolve(data)));
      const hook = handler as unknown as OnConnect;
      const onConnect = hook.onConnect;
      hook.onConnect = function (this: OnConnect, abort, context) {
        watch.sent();
        onConnect.call(this, abort, context);
      };
      pool.dispatch(o, handler);
    } catch (err) {
      reject(err as Error); // a closed pool, or options undici refuses, as undici's `request` rejects them
    }
  });
}

export interface TextResponse {
  readonly statusCode: number;
  readonly headers: IncomingHttpHeaders;
  /** The body, decoded. */
  readonly text: string;
}

export interface UpstreamResponse {
  readonly statusCode: number;
  readonly headers: Dispatcher.ResponseData['headers'];
  /** The body with any content-encoding the upstream applied undone. */
  readonly body: Readable;
  /** Stops reading and releases the connection. */
  dump(): void;
}

/**
 * One undici Pool per provider origin. A stream holds its connection for its whole life, so the pool is
 * sized by `max_concurrency`, not by a small keep-alive count. Connecting is bounded by undici; first
 * byte, idle and total by the attempt's signal (bounds.ts), whose one watchdog timer checks every live
 * attempt. undici's own headers and body timeouts are off: they cost two timers a request that undici keeps
 * until its ~0.5 s tick (old-generation garbage: 84 bytes a request, -2.6 CPU ms per 1k requests without
 * them), and a refreshed one can fire that much early (an 800 ms idle bound once cut a stream at 632 ms).
 */
export class ProviderClient {
  readonly origin: string;
  /** The base_url's path without a trailing slash, e.g. `/v1`. */
  readonly basePath: string;
  /** The base_url's query, sent with every request (Azure's `?api-version=`), or ''. */
  readonly query: string;
  private readonly pool: Pool;
  /** Runtimes using this pool: a reload that keeps a provider's connection settings shares it. */
  #users = 0;

  constructor(provider: ProviderConfig) {
    const url = new URL(provider.base_url);
    this.origin = url.origin;
    const path = url.pathname.replace(/\/+$/, '');
    // Anthropic's API is at {base}/v1/messages, its SDK's base URL without `/v1`; a base_url given with it (as
    // OpenAI's are, and as Anthropic-compatible proxies publish theirs: .../api/v1) would double it.
    this.basePath = provider.kind === 'anthropic' ? path.replace(/\/v1$/, '') : path;
    this.query = url.search;
    this.pool = new Pool(this.origin, {
      connections: provider.max_concurrency,
      pipelining: 1,
      connect: { timeout: provider.timeouts.connect_ms },
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: keepIdleMs(url),
    });
  }

  async request(opts: {
    method: 'GET' | 'POST';
    path: string;
    headers: Record<string, string>;
    body?: string;
    signal: Abort;
    /** Told when the request leaves the pool's queue for a connection. */
    watch?: Pick<ResponseWatch, 'sent'>;
  }): Promise<UpstreamResponse> {
    const o: Dispatcher.RequestOptions = {
      origin: this.origin,
      method: opts.method,
      path: this.basePath + opts.path + this.query,
      headers: opts.headers,
      body: opts.body,
      signal: opts.signal,
    };
    const res = await untilAborted(
      opts.watch === undefined ? requestOn.call(this.pool, o) : requestWatched(this.pool, o, opts.watch),
      opts.signal,
    );
    const body = decode(res.body, codingOf(res.headers['content-encoding']));
    return {
      statusCode: res.statusCode,
      headers: res.headers,
      body,
      dump: () => {
        res.body.destroy();
      },
    };
  }

  /**
   * A request whose whole answer is wanted as text (non-streaming calls). Straight on undici's dispatch
   * handler: no Readable body, no stream events per chunk — on every non-streaming request that machinery
   * cost more than the rest of the attempt. Bodies past `maxBytes` (`errorMaxBytes` for error statuses)
   * are refused, and a compressed answer is decoded within the same bound. The request is handed to undici
   * in turn order (end-of-turn.ts inTurnOrder): at once if it is the turn's first write, else at the end of
   * the turn with the turn's other requests and answers, back to back.
   */
  requestText(opts: {
    method: 'GET' | 'POST';
    path: string;
    headers: Record<string, string>;
    body?: string;
    signal: Abort;
    maxBytes: number;
    errorMaxBytes: number;
    /** Told when the response headers and each body chunk arrive (first-byte and idle bounds). */
    watch?: ResponseWatch;
  }): Promise<TextResponse> {
    return new Promise((resolve, reject) => {
      const handler = new TextHandler(
        opts.signal,
        opts.maxBytes,
        opts.errorMaxBytes,
        opts.watch,
        resolve,
        reject,
      );
      inTurnOrder(
        dispatchText,
        this.pool,
        {
          origin: this.origin,
          method: opts.method,
          path: this.basePath + opts.path + this.query,
          headers: opts.headers,
          body: opts.body,
        },
        handler,
        reject,
      );
    });
  }

  stats(): { connected: number; free: number; pending: number; running: number; size: number } {
    const s = this.pool.stats;
    return { connected: s.connected, free: s.free, pending: s.pending, running: s.running, size: s.size };
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  /** One more runtime uses this pool. */
  use(): this {
    this.#users++;
    return this;
  }

  /** A retired runtime is done with this pool: the last one closes it (in-flight requests finish). */
  release(): Promise<void> {
    return --this.#users > 0 ? Promise.resolve() : this.pool.close();
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }
}

/**
 * undici sees a signal's abort only once the request has a connection: one queued for a pool slot
 * (`max_concurrency` reached) would wait, past its client and its bounds, for a slot to free. Rejects at
 * the abort instead; undici drops the request unsent when it reaches a connection.
 */
function untilAborted(p: Promise<Dispatcher.ResponseData>, signal: Abort): Promise<Dispatcher.ResponseData> {
  return new Promise((resolve, reject) => {
    let gone = false;
    const onAbort = (): void => {
      gone = true;
      reject(signal.reason as Error);
    };
    if (signal.aborted) onAbort();
    else signal.once('abort', onAbort);
    p.then(
      (res) => {
        signal.removeListener('abort', onAbort);
        if (gone) discard(res.body);
        else resolve(res);
      },
      (err: Error) => {
        signal.removeListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** requestText's dispatch, maybe at the end of the turn: a dispatch that throws (a closed pool) rejects its promise. */
function dispatchText(
  pool: Pool,
  o: Dispatcher.DispatchOptions,
  handler: TextHandler,
  reject: (err: Error) => void,
): void {
  try {
    pool.dispatch(o, handler);
  } catch (err) {
    handler.settle();
    reject(err as Error);
  }
}

/** Who is told of a response's progress: the attempt's first-byte and idle bounds. */
export interface ResponseWatch {
  /** The request has a connection and is being written (it waited in the pool's queue until now). */
  sent(): void;
  /** The response headers arrived. */
  headers(): void;
  /** A body chunk arrived. */
  progress(): void;
}

/**
 * Collects one whole answer straight from undici's dispatch: no Readable body, no stream events per chunk
 * (on every non-streaming request that machinery cost more than the rest of the attempt). A class rather
 * than a handler object of closures: one allocation per request. Bodies past `maxBytes` (`errorMaxBytes`
 * for error statuses) are refused; a compressed answer is decoded within the same bound.
 */
class TextHandler implements Dispatcher.DispatchHandler {
  private readonly parts: Buffer[] = [];
  private size = 0;
  private limit: number;
  private statusCode = 0;
  private headers: IncomingHttpHeaders = {};
  private truncated = false;
  private controller: Dispatcher.DispatchController | undefined;
  // Until undici starts the request (it may wait for a pool slot) an abort can only settle our promise.
  private readonly onAbort = (): void => {
    if (this.controller) this.controller.abort(this.signal.reason as Error);
    else this.reject(this.signal.reason as Error);
  };

  constructor(
    private readonly signal: Abort,
    maxBytes: number,
    private readonly errorMaxBytes: number,
    private readonly watch: ResponseWatch | undefined,
    private readonly resolve: (r: TextResponse) => void,
    private readonly reject: (err: Error) => void,
  ) {
    this.limit = maxBytes;
    if (signal.aborted) reject(signal.reason as Error);
    else signal.once('abort', this.onAbort);
  }

  settle(): void {
    this.signal.removeListener('abort', this.onAbort);
  }

  onRequestStart(c: Dispatcher.DispatchController): void {
    this.controller = c;
    if (this.signal.aborted) c.abort(this.signal.reason as Error);
    else this.watch?.sent();
  }

  onResponseStart(_c: Dispatcher.DispatchController, status: number, h: IncomingHttpHeaders): void {
    // An informational head (103 Early Hints, an unasked 100) is not the answer, nor its first byte.
    if (status < 200) return;
    this.statusCode = status;
    this.headers = h;
    if (status >= 300) this.limit = this.errorMaxBytes;
    this.watch?.headers();
  }

  onResponseData(c: Dispatcher.DispatchController, chunk: Buffer): void {
    this.watch?.progress();
    if (this.truncated) return;
    this.size += chunk.length;
    if (this.size > this.limit) {
      if (this.statusCode >= 200 && this.statusCode < 300) {
        c.abort(codedError('body_too_large', `upstream body larger than ${this.limit} bytes`));
        return;
      }
      // An error message needs no more than its first bytes; the rest is not waited for (a body that never
      // ended held the attempt until idle_ms or total_ms, read at the upstream's pace, and lost its status).
      this.truncated = true;
      c.abort(codedError('body_too_large', 'error body cut at its bound'));
      return;
    }
    this.parts.push(chunk);
  }

  onResponseEnd(): void {
    this.settle();
    const parts = this.parts;
    const raw = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const status = this.statusCode;
    let text: string;
    try {
      text = withoutBom(decodeBuffer(raw, codingOf(this.headers['content-encoding']), this.limit));
    } catch (err) {
      // An error body that will not decode (cut short above, or inflating past its bound) loses its message,
      // never its status: a 400 must stay a client error and a 429 keep its Retry-After.
      if (status >= 200 && status < 300) return this.reject(err as Error);
      text = '';
    }
    this.resolve({ statusCode: status, headers: this.headers, text });
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    if (this.truncated) return this.onResponseEnd(); // cut by us: what was read is the answer
    this.settle();
    this.reject(err);
  }
}

/** A content-coding the gateway undoes; identity and codings it does not know are relayed as they are. */
export type Coding = 'gzip' | 'deflate' | 'br';

export function codingOf(header: unknown): Coding | undefined {
  if (typeof header !== 'string') return undefined;
  const enc = header.trim().toLowerCase();
  return enc === 'gzip' || enc === 'x-gzip' ? 'gzip' : enc === 'deflate' || enc === 'br' ? enc : undefined;
}

/** A whole compressed body decoded, refusing to inflate past `maxBytes` (no decompression bombs). */
export function decodeBuffer(raw: Buffer, coding: Coding | undefined, maxBytes: number): string {
  if (coding === undefined) return raw.toString('utf8');
  const opts = { maxOutputLength: maxBytes };
  const out =
    coding === 'gzip'
      ? gunzipSync(raw, opts)
      : coding === 'deflate'
        ? inflateSync(raw, opts)
        : brotliDecompressSync(raw, opts);
  return out.toString('utf8');
}

/** Compressed answers are decoded, not relayed as bytes the client never asked for. */
function decode(body: Readable, coding: Coding | undefined): Readable {
  if (coding === undefined) return body;
  const decoder = decoderOf(coding);
  body.on('error', (err) => decoder.destroy(err));
  decoder.on('close', () => body.destroy());
  return body.pipe(decoder);
}

/** A stream that undoes `coding`. */
export function decoderOf(coding: Coding): Transform {
  return coding === 'gzip'
    ? createGunzip()
    : coding === 'deflate'
      ? createInflate()
      : createBrotliDecompress();
}

/** After each chunk of a relayed stream: go on, stop (the answer is complete), or wait for the client. */
export type ChunkVerdict = undefined | 'stop' | Promise<'stop' | undefined>;

/**
 * Feeds a streaming body to `onChunk` on events rather than `for await`: async iteration costs several
 * promises per chunk, on every chunk of every stream. A promise from `onChunk` pauses reading until it
 * settles (back-pressure from a slow client). Resolves at the body's end or on 'stop'; rejects on its
 * error or a close before its end. After 'stop' the rest of the body (usually just the chunked-encoding
 * terminator) is read and dropped for up to `drainMs`, so the connection goes back to the pool instead of
 * being closed: to a real provider every new connection is a TLS handshake.
 */
export function relayChunks(
  body: Readable,
  onChunk: (chunk: Buffer) => ChunkVerdict,
  drainMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
      body.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const stop = (): void => {
      finish();
      drainRest(body, drainMs);
    };
    const onData = (chunk: Buffer): void => {
      let verdict: ChunkVerdict;
      try {
        verdict = onChunk(chunk);
      } catch (err) {
        finish(err as Error);
        discard(body);
        return;
      }
      if (verdict === undefined) return;
      if (verdict === 'stop') return stop();
      body.pause();
      verdict.then(
        (v) => {
          if (settled) return;
          if (v === 'stop') stop();
          else body.resume();
        },
        (err: Error) => {
          finish(err);
          discard(body);
        },
      );
    };
    const onEnd = (): void => finish();
    const onError = (err: Error): void => finish(err);
    const onClose = (): void => finish(codedError('UND_ERR_SOCKET', 'upstream body closed before its end'));
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', onError);
    body.once('close', onClose);
  });
}

const ignore = (): void => {};

/**
 * Drops a body we stopped listening to. Destroyed before its end, undici's body emits an AbortError: with
 * no listener left that would be an uncaught exception.
 */
function discard(body: Readable): void {
  body.on('error', ignore);
  body.destroy();
}

/** Reads and drops what is left of a body for up to `ms`, then gives up on the connection. */
function drainRest(body: Readable, ms: number): void {
  if (body.readableEnded || body.destroyed) return;
  body.on('error', ignore); // nobody else listens any more
  const timer = setTimeout(() => body.destroy(), ms).unref();
  body.once('close', () => clearTimeout(timer));
  body.resume();
}

/**
 * Reads an (error) body up to `maxBytes` and keeps only those: an error message needs no more than its first
 * bytes, and a hostile upstream cannot make us buffer without bound. `watch` sees each chunk arrive (the
 * idle bound restarts on it).
 */
export async function readBody(
  res: UpstreamResponse,
  maxBytes: number,
  watch?: ResponseWatch,
): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  await relayChunks(
    res.body,
    (chunk) => {
      watch?.progress();
      const room = maxBytes - size;
      if (chunk.length < room) {
        parts.push(chunk);
        size += chunk.length;
        return undefined;
      }
      parts.push(chunk.subarray(0, room));
      return 'stop';
    },
    0,
  );
  return Buffer.concat(parts).toString('utf8');
}
