import type { IncomingHttpHeaders } from 'node:http';
import { createRequire } from 'node:module';
import { finished, type Duplex, type Readable } from 'node:stream';
import { inTurnOrder } from '../end-of-turn.js';
import type { ProviderConfig } from '../config/schema.js';
import { codedError } from '../resilience/classify.js';
import { Abort } from './abort.js';
import { codingsOf, decode } from './content-coding.js';
import { discard, type BodyDrain } from './response-body.js';
import { TextHandler } from './text-handler.js';
import type { Dispatcher, Pool as UndiciPool, buildConnector as UndiciBuildConnector } from 'undici';

/**
 * undici's Pool and its promise `request`, loaded from their own modules. undici's entry point loads all of
 * undici (fetch, WebSocket, caches, mocks: 110 modules, ~9 MB resident) to export them; the gateway uses
 * these two. The entry point also copies `request` onto every dispatcher's prototype, which is why ours is
 * called as `requestOn.call(pool, ...)`. undici has no `exports` map, so these paths are public to Node's
 * resolver; test/unit/upstream/undici-pool.test.ts pins them to what undici exports, so an undici update that moves
 * them fails the suite instead of the gateway.
 */
/** After a relayed stream's last event, how long the rest of its body may take (ProviderClient.drain). */
const DRAIN_AFTER_END_MS = 1_000;
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

export const buildConnector = requireUndici('undici/lib/core/connect.js') as typeof UndiciBuildConnector;
export const ConnectTimeoutError = (
  requireUndici('undici/lib/core/errors.js') as { ConnectTimeoutError: new (message?: string) => Error }
).ConnectTimeoutError;
type ConnectorFn = UndiciBuildConnector.connector;

/**
 * undici's connector with `connect_ms` kept by a plain timer: undici's own connect timeout runs on its coarse
 * timer wheel (ticks of ~500 ms: a 150 ms bound fired after ~1 s), while every other bound of an attempt
 * fires within 10 ms of its time (bounds.ts). Ends in undici's own ConnectTimeoutError, classified as before.
 */
export function connectWithin(timeoutMs: number): ConnectorFn {
  const connect = buildConnector({ timeout: 0 });
  return (options, callback) => {
    let done = false;
    const timer = setTimeout(() => {
      done = true;
      socket.destroy();
      callback(new ConnectTimeoutError(`connect timed out after ${timeoutMs} ms`), null);
    }, timeoutMs);
    const socket = (connect as (...a: Parameters<ConnectorFn>) => Duplex)(options, (...args) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      callback(...args);
    });
  };
}

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
  /** The provider's max_concurrency: the connections this pool opens at most. */
  readonly capacity: number;
  /**
   * Attempts on this pool now, every model of the provider's and every config's that shares it (failover.ts):
   * at capacity, one more waits for a connection. An O(1) read for routing, where the pool's own stats walk
   * its connections.
   */
  active = 0;

  /**
   * After a relayed stream's last event, the rest of its body (the chunked terminator, or bytes of an upstream
   * that keeps the response open after [DONE]) is read for up to a second, so the connection can be reused: to
   * a real provider a new one is a TLS handshake. Not when every connection is busy: requests may be waiting
   * for one, and one held the only connection for that second (a queue_timeout). Counted in `active` meanwhile.
   */
  readonly drain: BodyDrain = {
    ms: () => (this.active >= this.capacity ? 0 : DRAIN_AFTER_END_MS),
    held: (delta) => {
      this.active += delta;
    },
  };

  constructor(provider: ProviderConfig) {
    const url = new URL(provider.base_url);
    this.origin = url.origin;
    const path = url.pathname.replace(/\/+$/, '');
    // Anthropic's API is at {base}/v1/messages, its SDK's base URL without `/v1`; a base_url given with it (as
    // OpenAI's are, and as Anthropic-compatible proxies publish theirs: .../api/v1) would double it.
    this.basePath = provider.kind === 'anthropic' ? path.replace(/\/v1$/, '') : path;
    this.query = url.search;
    this.capacity = provider.max_concurrency;
    this.pool = new Pool(this.origin, {
      connections: provider.max_concurrency,
      pipelining: 1,
      connect: connectWithin(provider.timeouts.connect_ms),
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: keepIdleMs(url),
    });
  }

  async request(opts: {
    method: 'GET' | 'POST';
    path: string;
    headers: Record<string, string>;
    body?: string | Buffer;
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
    const body = decode(res.body, codingsOf(res.headers['content-encoding']));
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
    body?: string | Buffer;
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

  /**
   * A request as it is, on this pool (the passthrough's: the provider's max_concurrency bounds its proxied
   * requests and its routed ones together, as README says it bounds the provider's connections).
   */
  dispatch(opts: Dispatcher.RequestOptions, queueMs?: number): Promise<Dispatcher.ResponseData> {
    // Counted in `active` until its answer's body is done (routing ranks a full provider last).
    this.active++;
    let counted = true;
    const done = (): void => {
      if (counted) this.active--;
      counted = false;
    };
    const sent =
      queueMs === undefined
        ? (requestOn.call(this.pool, opts) as Promise<Dispatcher.ResponseData>)
        : this.#withinQueue(opts, queueMs);
    return sent.then(
      (res) => {
        finished(res.body, done);
        return res;
      },
      (err: unknown) => {
        done();
        throw err;
      },
    );
  }

  /**
   * A request that must have its connection within `ms` (the passthrough's first_byte_ms, as routed attempts
   * have it: README max_concurrency): past it, still queued behind `max_concurrency` busy connections, it is
   * dropped unsent with a 504's error. undici's headers timeout starts only once a request is sent, so one
   * queued behind long downloads waited for them, up to total_ms.
   */
  #withinQueue(opts: Dispatcher.RequestOptions, ms: number): Promise<Dispatcher.ResponseData> {
    const gate = new Abort();
    const outer = opts.signal as AbortSignal | undefined;
    const onOuter = (): void => gate.abort(outer?.reason);
    if (outer?.aborted) onOuter();
    else outer?.addEventListener('abort', onOuter, { once: true });
    const timer = setTimeout(() => {
      const err = codedError('UND_ERR_HEADERS_TIMEOUT', `no connection to the provider within ${ms} ms`);
      gate.abort(Object.assign(err, { statusCode: 504 }));
    }, ms);
    // The client's abort reaches the answer's body too (a download it left is aborted upstream): its
    // listener goes when the body does.
    const unlisten = (): void => outer?.removeEventListener('abort', onOuter);
    const o = { ...opts, signal: gate as unknown as AbortSignal };
    const watch = { sent: () => clearTimeout(timer) };
    const p = untilAborted(requestWatched(this.pool, o, watch), gate);
    p.then(
      (res) => {
        clearTimeout(timer);
        if (res.body.destroyed) unlisten();
        else res.body.once('close', unlisten);
      },
      () => {
        clearTimeout(timer);
        unlisten();
      },
    );
    return p;
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
  /** A body chunk arrived. */
  progress(): void;
}
