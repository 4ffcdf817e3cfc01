import type {
  FastifyBaseLogger,
  FastifyInstance,
  FastifyReply,
  RawServerBase,
  RouteGenericInterface,
} from 'fastify';
import { finished, pipeline, Readable, Transform } from 'node:stream';
import type { IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';
import { GatewayError } from '../errors.js';
import { codedError } from '../resilience/classify.js';
import { echoGuard } from '../observability/scrub.js';
import type { Runtime } from '../runtime.js';
import { codingsOf, decode, decodeBuffer, type Coding } from '../upstream/content-coding.js';
import { retrieveModel } from './models.js';
import { sseDeltaMask } from './passthrough-sse-mask.js';
import { reportOnce } from './report.js';

/** Carries a request's abort signal through reply-from, inside its headers object (see `undici` below). */
const ABORT_SIGNAL = Symbol('passthrough abort signal');
type RequestCallback = (err: Error | null, res?: Dispatcher.ResponseData) => void;

/**
 * Hop-by-hop fields (RFC 9110 §7.6.1): they describe one connection and are dropped by a proxy, both ways,
 * with any other field a `Connection` header names. undici refuses some (`keep-alive`, `upgrade`), which
 * turned a request the provider would have served into our 502.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);
/**
 * Headers of the client's that never travel upstream: the hop-by-hop ones; `expect`, which Node's server
 * has already answered (`100 Continue`, then it reads the body we stream on) and undici refuses; the
 * client's own credentials (its cookies too: an SSO proxy's session in front of the gateway is not the
 * provider's business); and the OpenAI organization and project it names, which belong with the client's
 * key, not ours (OpenAI answers a key with another organization's header with a 401). The provider's own are
 * set in its `headers`.
 */
export const STRIPPED = new Set([
  ...HOP_BY_HOP,
  'expect',
  'cookie',
  'authorization',
  'x-api-key',
  'x-admin-key',
  'api-key',
  'openai-organization',
  'openai-project',
]);
/** The paths of ours under /v1 (a GET of one may still reach the passthrough): no WebSocket there. */
const ROUTED = /^(?:chat\/completions|embeddings|models)(?:\/|$)/;
/** The headers @fastify/rate-limit puts on every answer. */
const OWN_RATE_LIMIT_HEADERS = new Set(['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']);

/** Error bodies are read this far to be scrubbed; past it they are cut. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/**
 * Every other `/v1/*` path (files, audio, responses, ...) is reverse-proxied as it is, bodies streamed both
 * ways, to `server.passthrough`, with that provider's key in place of the client's. Successful answers
 * stream through untouched; error answers are read (bounded), decoded and scrubbed of every configured
 * secret first, since an upstream may echo the key we sent it. Without a passthrough: our 404.
 *
 * The provider's timeouts bound it as they bound chat (SPEC §8): connect_ms, first_byte_ms (to the
 * answer's first body byte), idle_ms (between body bytes) and total_ms over the whole exchange. undici has
 * one body timer, from the headers on: it is the larger of first_byte_ms and idle_ms, so a server that sends
 * its headers at once (vLLM's /v1/completions) still has first_byte_ms for its first token. An upstream that
 * fails before answering gets the client an OpenAI-shaped 504 `timeout` or 502 `upstream_error`; one
 * that stalls or trickles after its answer started has that answer cut.
 *
 * A WebSocket handshake (the Realtime API) on these paths is proxied too (passthrough-ws.ts): bounded by
 * connect_ms + first_byte_ms until the upstream's handshake, then by no timer but a heartbeat, since a
 * session lasts minutes; total_ms and idle_ms do not apply to it.
 */
export async function passthroughPlugin(app: FastifyInstance): Promise<void> {
  const provider = app.gateway.runtime.passthrough;
  if (!provider) return;
  const { name, base_url: baseUrl, timeouts } = provider.config;
  const url = new URL(baseUrl);
  // Loaded only when configured: the proxy and its websocket support are ~5 MB resident.
  const [{ default: httpProxy }, { webSocketPassthrough }] = await Promise.all([
    import('@fastify/http-proxy'),
    import('./passthrough-ws.js'),
  ]);
  // What the client learns of an upstream that failed before answering: the kind of failure. The cause's
  // text (which may name hosts) stays in the log.
  const failure = (timedOut: boolean): GatewayError =>
    timedOut
      ? new GatewayError('timeout', `passthrough upstream ${name} timed out`)
      : new GatewayError('upstream_error', `passthrough upstream ${name} failed`);
  // Read once, as fastify's own bodyLimit for routed requests is: a reload applies it at a restart (README).
  const bodyLimit = app.gateway.runtime.loaded.config.server.body_limit_bytes;
  /** The provider's origin and base path: where its absolute Location headers point to under /v1. */
  const upstreamBase = url.origin + url.pathname.replace(/\/+$/, '');
  // Also restart-only (the limiter is registered once).
  const ownRateLimit = app.gateway.runtime.loaded.config.server.rate_limit.requests_per_minute > 0;
  const ownCors = app.gateway.runtime.loaded.config.server.cors !== undefined;
  const websockets = webSocketPassthrough(app, { url, timeouts, maxPayloadBytes: bodyLimit, failure });
  const baseQuery = new URLSearchParams(url.search);
  // The config a request started on: the key it sent is the one its answer may echo, whatever a reload
  // has rotated it to since.
  const serving = new WeakMap<object, Runtime>();
  const servingFor = (req: object | undefined): Runtime => (req && serving.get(req)) ?? app.gateway.runtime;
  // One abort per request: the client going away, or total_ms, ends the upstream request at once.
  const aborts = new WeakMap<object, AbortController>();
  // reply-from warns of every failed request on the request's logger, with a stack and no request id, a
  // client leaving included; `upstreamFailed` says it instead, with the id, or not at all when the client left.
  const proxyLog = Object.create(app.log, { warn: { value: () => undefined } }) as FastifyBaseLogger;
  const upstreamFailed = (req: { id: string }, clientGone: boolean, err: Error & { code?: string }): void => {
    if (clientGone) return;
    const cause = err.cause instanceof Error ? (err.cause as Error & { code?: string }) : err;
    const reason = servingFor(req).scrubber.scrub(cause.message);
    app.log.warn(
      { reqId: req.id, upstream: name, reason, code: cause.code },
      `passthrough request to ${name} failed (${reason})`,
    );
  };
  // This plugin's own context: the hook sees only the proxied routes.
  app.addHook('onRequest', (req, reply, done) => {
    // A reload removed the provider (or emptied its key): nothing to send its requests with until a restart.
    if (app.gateway.runtime.passthrough === undefined) {
      void reply.send(
        new GatewayError(
          'not_found',
          `passthrough provider "${name}" is no longer configured (removed or disabled by a reload)`,
        ),
      );
      return;
    }
    // A WebSocket session lasts minutes: its handshake has its own bound (passthrough-ws.ts).
    if (websockets.isHandshake(req.raw)) {
      done();
      return;
    }
    // A body past server.body_limit_bytes gets the 413 routed requests get; one of unknown length is
    // counted as it streams (`limitedBody`).
    if (Number(req.headers['content-length']) > bodyLimit) {
      // Closed after the answer: the body is not read, only to be thrown away.
      void reply.header('connection', 'close').send(tooLarge());
      return;
    }
    req.log = proxyLog;
    const abort = new AbortController();
    aborts.set(req, abort);
    serving.set(req, app.gateway.runtime);
    const timer = setTimeout(() => {
      upstreamFailed(req, false, new Error(`no whole answer within total_ms (${timeouts.total_ms} ms)`));
      abort.abort(new Error('total_ms'));
      if (reply.raw.headersSent) reply.raw.destroy();
      else
        void reply.send(
          new GatewayError('timeout', `passthrough upstream ${name} did not answer within total_ms`),
        );
    }, timeouts.total_ms);
    reply.raw.once('close', () => {
      clearTimeout(timer);
      if (reply.raw.writableFinished) return;
      abort.abort(new Error('client closed'));
      // An answer cut mid-body (the client left, or the upstream's body broke) ends with neither 'finish'
      // nor 'error', so fastify's onResponse never runs: its count and line are written here, with the
      // status the client was sent (a client that left before any keeps the error path's 499).
      if (reply.raw.headersSent) reportOnce(app.gateway, req, reply.raw.statusCode, reply.elapsedTime);
    });
    done();
  });
  // The provider's own pool, held while this app lives (a reload that replaces it leaves it open for us):
  // one max_concurrency for its routed and proxied requests together.
  const client = provider.client.use();
  let released = false;
  // Whoever closes first (this app, or reply-from on its own close) lets it go; the other finds it let go.
  const closePool = (): Promise<void> => {
    if (released) return Promise.resolve();
    released = true;
    return client.release();
  };
  app.addHook('onClose', closePool);
  // An upstream body that fails before the client got a byte reaches fastify's error path as undici's
  // error; it gets our error here, anything else goes on to the app's handler.
  app.setErrorHandler((err: Error & { code?: string }, req, reply) => {
    const timedOut = err.code === 'UND_ERR_BODY_TIMEOUT' || err.code === 'UND_ERR_HEADERS_TIMEOUT';
    if (!timedOut && err.code !== 'UND_ERR_SOCKET' && err.code !== 'ECONNRESET') throw err;
    upstreamFailed(req, reply.raw.destroyed, err);
    throw failure(timedOut);
  });
  // reply-from takes any object with undici's `request(opts, callback)` and reads the two timeouts off it
  // for each request; this one also gives each request its abort signal (reply-from passes none), carried
  // from rewriteRequestHeaders under a symbol key, which Object.assign copies and no header loop sees.
  const requester = {
    headersTimeout: timeouts.first_byte_ms,
    bodyTimeout: Math.max(timeouts.first_byte_ms, timeouts.idle_ms),
    request(
      opts: Dispatcher.RequestOptions & { headers: Record<PropertyKey, unknown> },
      callback: RequestCallback,
    ) {
      const signal = opts.headers[ABORT_SIGNAL] as AbortSignal | undefined;
      delete opts.headers[ABORT_SIGNAL];
      client.dispatch({ ...opts, signal }, timeouts.first_byte_ms).then(
        (res) => callback(null, res),
        (err: Error) => callback(err),
      );
    },
    close: closePool,
    destroy: closePool,
  };
  await app.register(httpProxy, {
    upstream: url.origin,
    prefix: '/v1',
    rewritePrefix: url.pathname.replace(/\/+$/, ''),
    http2: false,
    // The request line is ours (one per request, with its id); reply-from would add two more without one.
    disableRequestLogging: true,
    undici: requester as unknown as { request: Dispatcher['request'] },
    // GET (or HEAD) /v1/models/{id} reaches this route only with a passthrough (http/models.ts): a route or
    // `provider/model` name is answered as the list has it; any other id goes on to the provider.
    preHandler: (req, reply, done) => {
      if (websockets.isHandshake(req.raw)) {
        const rest = (req.params as { '*'?: string })['*'] ?? '';
        if (ROUTED.test(rest)) {
          void reply.send(
            new GatewayError('not_found', `no WebSocket endpoint at /v1/${rest} (it is routed, over HTTP)`),
          );
          return;
        }
        // The path as the HTTP passthrough maps it (base_url's path, encoded prefix, no climbing out).
        const { url: dest } = reply.fromParameters(req.url, req.params, '/v1');
        const query = dest.indexOf('?');
        const path = query < 0 ? dest : dest.slice(0, query);
        const merged = forwardedQuery(query < 0 ? '' : dest.slice(query + 1), baseQuery, app.gateway.runtime);
        websockets.proxy(req, reply, merged === '' ? path : `${path}?${merged}`);
        return;
      }
      if (req.body instanceof Readable && req.headers['transfer-encoding'] !== undefined)
        req.body = limitedBody(req.body, bodyLimit);
      if (req.method === 'GET' || req.method === 'HEAD') {
        const rest = (req.params as { '*'?: string })['*'];
        if (rest?.startsWith('models/') === true) {
          const model = retrieveModel(app.gateway.runtime, rest.slice('models/'.length));
          if (model) {
            void reply.send(model);
            return;
          }
        }
      }
      done();
    },
    replyOptions: {
      // Relayed as is, never retried here: reply-from would send a GET answered 503 ten more times (Retry-After's
      // seconds taken as milliseconds, each answer left unread) to a provider that said it is overloaded.
      retryDelay: () => null,
      // A base_url's own query (Azure's `?api-version=`) goes with every request, after the client's; a
      // gateway key the client put in its query does not.
      queryString: (search: string | undefined, reqUrl: string) => {
        const at = reqUrl.indexOf('?');
        const client = search ? search.slice(1) : at < 0 ? '' : reqUrl.slice(at + 1);
        return forwardedQuery(client, baseQuery, app.gateway.runtime);
      },
      rewriteRequestHeaders: (req, headers) => {
        // reply-from has dropped the client's `connection` from `headers` by now; the request still has it.
        const named = connectionNamed(req.headers.connection);
        const out: Record<PropertyKey, unknown> = {};
        for (const [k, v] of Object.entries(headers)) {
          if (!STRIPPED.has(k) && named?.includes(k) !== true) out[k] = v;
        }
        out[ABORT_SIGNAL] = aborts.get(req)?.signal;
        // The key of the passthrough provider in the config this request started on, then its configured
        // headers (an organization, a proxy's own auth), as routed requests have them.
        const provider = servingFor(req).passthrough?.config;
        if (provider?.api_key) out.authorization = `Bearer ${provider.api_key}`;
        if (provider?.headers)
          for (const [k, v] of Object.entries(provider.headers)) out[k.toLowerCase()] = v;
        // An answer that may echo our key is masked, which needs it readable: only the codings the gateway
        // decodes are offered (a browser's zstd came back as it was, unmasked).
        if (
          echoGuard(servingFor(req).passthrough) !== undefined &&
          typeof out['accept-encoding'] === 'string'
        ) {
          const readable = readableCodings(out['accept-encoding']);
          if (readable === '') delete out['accept-encoding'];
          else out['accept-encoding'] = readable;
        }
        return out as IncomingHttpHeaders;
      },
      rewriteHeaders: (headers, req) => {
        const named = connectionNamed(headers.connection);
        const echo = echoGuard(servingFor(req).passthrough);
        const out: IncomingHttpHeaders = {};
        for (const [k, v] of Object.entries(headers)) {
          if (HOP_BY_HOP.has(k) || named?.includes(k) === true) continue;
          // The gateway's own limit, when it has one, is what these name (README server.rate_limit): an
          // upstream's same-named ones must not overwrite them.
          if (ownRateLimit && OWN_RATE_LIMIT_HEADERS.has(k)) continue;
          // CORS is the gateway's to answer (server.cors), or no one's: the provider's `*` would let any web
          // page read what the gateway fetched with the provider's key.
          if (k.startsWith('access-control-')) continue;
          // With CORS on, an answer varies by Origin whatever else the provider says it varies by.
          if (ownCors && k === 'vary') {
            out.vary = varyWithOrigin(v);
            continue;
          }
          // http-proxy maps a relative Location onto /v1; one written with the provider's own origin is the
          // same place, and must not send the client around the gateway (with no key of the provider's).
          if (k === 'location' && typeof v === 'string' && v.startsWith(upstreamBase)) {
            const rest = v.slice(upstreamBase.length);
            if (rest === '' || rest.startsWith('/') || rest.startsWith('?')) {
              out[k] = echo === undefined ? `/v1${rest}` : echo.scrub(`/v1${rest}`);
              continue;
            }
          }
          out[k] =
            echo === undefined || v === undefined ? v : Array.isArray(v) ? v.map(echo.scrub) : echo.scrub(v);
        }
        return out;
      },
      onResponse: (req, reply, res) => {
        const serving = servingFor(req);
        // An answer with no body (HEAD, 204, 304) keeps its headers as they are (rewriteHeaders scrubbed them):
        // there is nothing to decode or scrub, and gunzip on nothing fails (a 500 for a HEAD of a gzip
        // resource, a cached 304); a HEAD answered 404 kept none of its own.
        const bodyless = req.method === 'HEAD' || reply.statusCode === 204 || reply.statusCode === 304;
        if (reply.statusCode >= 400 && !bodyless) {
          void sendScrubbed(serving.scrubber, reply, res.stream);
          return;
        }
        // An answer that echoes what we sent (an httpbin-like /v1/anything) must not hand the client our key.
        // A compressed one (stacked codings too) is decoded to be masked and goes out as identity (an encoding
        // we cannot read, zstd, goes as it is).
        const echo = echoGuard(serving.passthrough);
        const coding = replyCoding(reply.getHeader('content-encoding'));
        if (echo === undefined || coding === null || bodyless) {
          void reply.send(res.stream);
          return;
        }
        const masked = echo.mask.transform();
        const done = (): void => {
          /* a failure destroys every stage; the reply ends with the last */
        };
        const body = coding === 'identity' ? res.stream : decode(res.stream, coding);
        if (coding !== 'identity') {
          reply.removeHeader('content-encoding');
          reply.removeHeader('content-length');
        }
        // An event stream (the Responses API's) may spell a key across its deltas: each event is read for it.
        if (isEventStream(reply.getHeader('content-type'))) {
          reply.removeHeader('content-length');
          const events = sseDeltaMask(echo.forms, echo.scrubEnd);
          pipeline(body, masked, events, done);
          void reply.send(events);
          return;
        }
        pipeline(body, masked, done);
        void reply.send(masked);
      },
      // Failures before any answer (reply-from maps timeouts to 504).
      onError: (reply, { error }) => {
        if (isTooLarge(error)) {
          // The connection stays: the rest of the body is being read and dropped (limitedBody).
          void reply.send(tooLarge());
          return;
        }
        upstreamFailed(reply.request, reply.raw.destroyed, error);
        void reply.send(failure((error as Error & { statusCode?: number }).statusCode === 504));
      },
    },
  });
}

/** An answer's Content-Type is an event stream (SSE), whatever its parameters and case. */
function isEventStream(contentType: unknown): boolean {
  return typeof contentType === 'string' && contentType.toLowerCase().includes('text/event-stream');
}

/**
 * The client's query as the provider gets it: with the base_url's parameters it does not set itself added, and
 * without any parameter whose name or value is one of the gateway's client or admin keys (gatewayKey; SPEC §8
 * ignores a key in a query; handed on, it would be a credential of ours given to a third party). As sent when
 * there is nothing to change.
 */
function forwardedQuery(
  client: string,
  base: URLSearchParams,
  rt: Pick<Runtime, 'clientKeys' | 'adminKeys'>,
): string {
  // Each value checked costs a key digest: none when the gateway has no keys.
  const keyed = rt.clientKeys.enabled || rt.adminKeys.enabled;
  if (base.size === 0 && (client === '' || !keyed)) return client;
  // The client's parameters go as it wrote them (`flag`, `~`, `%20` or `+`): only read, never written anew.
  const pieces = client === '' ? [] : client.split('&');
  const kept: string[] = [];
  const named = new Set<string>();
  for (const piece of pieces) {
    const [name = '', value = ''] = new URLSearchParams(piece).entries().next().value ?? [];
    if (keyed && (gatewayKey(name, rt) || gatewayKey(value, rt))) continue;
    named.add(name);
    kept.push(piece);
  }
  const added = new URLSearchParams();
  for (const [k, v] of base)
    if (!named.has(k)) {
      added.append(k, v);
      named.add(k);
    }
  if (added.size > 0) kept.push(added.toString());
  return kept.length === pieces.length && added.size === 0 ? client : kept.join('&');
}

/** An auth header's value as a client may put it in a query: a scheme, then the credential. */
const SCHEME_AND_KEY = /^[A-Za-z][\w.-]*\s+(\S+)$/;

/** A query parameter's name or value that is a gateway key, alone (`?KEY`, `?k=KEY`) or as `Bearer KEY`. */
function gatewayKey(text: string, rt: Pick<Runtime, 'clientKeys' | 'adminKeys'>): boolean {
  if (text === '') return false;
  if (rt.clientKeys.matches(text) || rt.adminKeys.matches(text)) return true;
  const key = SCHEME_AND_KEY.exec(text)?.[1];
  return key !== undefined && (rt.clientKeys.matches(key) || rt.adminKeys.matches(key));
}

const tooLarge = (): GatewayError =>
  new GatewayError('payload_too_large', 'request body is larger than server.body_limit_bytes');

/** A request body of unknown length (chunked) that fails, and so ends its upstream request, past `limit` bytes. */
function limitedBody(body: Readable, limit: number): Readable {
  let seen = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      cb(seen > limit ? codedError('payload_too_large', 'request body past its limit') : null, chunk);
    },
  });
  // Not `pipeline`: its error would destroy the client's request, and with it the socket the 413 is to be
  // written to. Past the limit the rest is read and dropped (within server.request_timeout_ms, as any body):
  // a connection closed while the client still sends is reset, and the reset lost the 413 it had been sent.
  body.pipe(counted);
  finished(body, (err) => {
    if (err) counted.destroy(err); // the client went away: undici ends the upstream request
  });
  counted.on('error', () => {
    body.unpipe(counted);
    body.resume();
  });
  return counted;
}

/** The request failed because its body went past the limit (undici may wrap the body's error). */
function isTooLarge(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++)
    if ((e as Error & { code?: unknown }).code === 'payload_too_large') return true;
  return false;
}

/**
 * The other fields a `Connection` header names as hop-by-hop (lower-cased); none for the usual bare
 * `keep-alive` or `close`, so most requests pay one comparison.
 */
export function connectionNamed(value: string | string[] | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const text = (typeof value === 'string' ? value : value.join(',')).toLowerCase();
  if (text === 'keep-alive' || text === 'close') return undefined;
  const names: string[] = [];
  for (const part of text.split(',')) {
    const name = part.trim();
    if (name !== '' && !HOP_BY_HOP.has(name)) names.push(name);
  }
  return names.length > 0 ? names : undefined;
}

export async function sendScrubbed(
  scrubber: { scrub(text: string, cut?: boolean): string },
  reply: FastifyReply<RouteGenericInterface, RawServerBase>,
  stream: Readable,
): Promise<void> {
  const parts: Buffer[] = [];
  let size = 0;
  let cut = false;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_ERROR_BODY_BYTES) {
        // The part that fits is kept; its end may be the first characters of an echoed secret (scrub's `cut`).
        parts.push(chunk.subarray(0, chunk.length - (size - MAX_ERROR_BODY_BYTES)));
        cut = true;
        stream.destroy();
        break;
      }
      parts.push(chunk);
    }
  } catch {
    // A broken error body still has its status, and what came of it; it may stop inside an echoed secret.
    cut = true;
  }
  // An encoding we cannot read (zstd) would be noise as text: told by its status instead, as a broken body is.
  const coding = replyCoding(reply.getHeader('content-encoding'));
  // A body declared in a charset other than UTF-8 (ISO-8859-1, windows-1252, Shift_JIS, GBK), compressed or
  // not, is read and sent back byte for byte (latin1 maps each byte to one character and back; the secrets,
  // ASCII, are found in any ASCII-compatible charset): read as UTF-8 its non-ASCII text became U+FFFD. UTF-16
  // is not ASCII-compatible: it is read as what it is, scrubbed and sent as UTF-8 (as latin1 an echoed key
  // went through unseen); UTF-32, which no decoder here reads, is told by its status.
  const contentType = String(reply.getHeader('content-type') ?? '');
  const charset = CHARSET.exec(contentType)?.[1]?.toLowerCase();
  const wide = charset !== undefined && /^utf-?(?:16|32)/.test(charset);
  const byteExact = charset !== undefined && !wide && !/^utf-?8$/.test(charset);
  let text: string | undefined;
  try {
    const body = Buffer.concat(parts);
    const encoding = byteExact || wide ? 'latin1' : 'utf8';
    if (coding === 'identity') text = body.toString(encoding);
    else if (coding !== null) text = decodeBuffer(body, coding, 4 * MAX_ERROR_BODY_BYTES, encoding);
    if (text !== undefined && wide) {
      text = charset.startsWith('utf-32')
        ? undefined
        : new TextDecoder(charset).decode(Buffer.from(text, 'latin1'));
      reply.header('content-type', contentType.replace(CHARSET, '; charset=utf-8'));
    }
  } catch {
    text = undefined; // told by its status below (a UTF-16 label no decoder knows: not as latin1)
  }
  reply.removeHeader('content-length');
  reply.removeHeader('content-encoding');
  if (text === undefined) void reply.send(`upstream answered HTTP ${reply.statusCode}`);
  else {
    const scrubbed = scrubber.scrub(text, cut);
    void reply.send(byteExact ? Buffer.from(scrubbed, 'latin1') : scrubbed);
  }
}

const CHARSET = /;\s*charset\s*=\s*"?([^";\s]+)"?/i;

/** `Vary` with `Origin` in it (unless it has it, or is `*`). */
function varyWithOrigin(v: string | string[] | undefined): string {
  const text = Array.isArray(v) ? v.join(', ') : (v ?? '');
  if (text.trim() === '') return 'Origin';
  return /(?:^|,)\s*(?:origin|\*)\s*(?:,|$)/i.test(text) ? text : `${text}, Origin`;
}

/**
 * A response's content-encoding: those we decode (one, or stacked: `deflate, gzip`), none (`identity`), or
 * one we cannot read (null: zstd).
 */
/** An Accept-Encoding list cut to the codings the gateway can decode to mask (gzip, deflate, br). */
function readableCodings(accept: string): string {
  return accept
    .split(',')
    .filter((item) => /^\s*(?:gzip|x-gzip|deflate|br|identity)\s*(?:;|$)/i.test(item))
    .map((item) => item.trim())
    .join(', ');
}

function replyCoding(header: unknown): Coding | readonly Coding[] | 'identity' | null {
  if (header === undefined) return 'identity';
  const coding = codingsOf(header);
  if (coding !== undefined) return coding;
  const name = typeof header === 'string' ? header.trim().toLowerCase() : undefined;
  return name === '' || name === 'identity' ? 'identity' : null;
}
