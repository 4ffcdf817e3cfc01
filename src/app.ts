import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import fp from 'fastify-plugin';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyServerOptions,
} from 'fastify';
import type { LoadedConfig } from './config/load.js';
import { flushTurn } from './end-of-turn.js';
import { GatewayError, errorBody } from './errors.js';
import { Gateway, type GatewayDeps } from './gateway.js';
import { adminPlugin } from './http/admin.js';
import { authHook } from './http/auth.js';
import { CLIENT_CLOSED_REQUEST, chatPlugin } from './http/chat.js';
import { registerCors } from './http/cors.js';
import { embeddingsPlugin } from './http/embeddings.js';
import { healthPlugin } from './http/health.js';
import { metricsPlugin } from './http/metrics.js';
import { modelsPlugin } from './http/models.js';
import { passthroughPlugin } from './http/passthrough.js';
import { logUnrouted, reportOnce, reportUnrouted } from './http/report.js';
import { protectionPlugin } from './http/protection.js';
import { jsonDepthExceeds, UnusableBody } from './http/validate.js';
import { clip } from './text.js';
import { rememberSource } from './upstream/body-text.js';

declare module 'fastify' {
  interface FastifyInstance {
    gateway: Gateway;
  }
}

/**
 * Request bodies nest at most this deep (SPEC §8). A tool's JSON schema of 30 optional objects, each
 * written as zod's `.nullable()` writes it (`anyOf` with null: 4 levels an object), fits; 64 refused 16.
 */
const MAX_JSON_DEPTH = 128;
/** A client id echoed as given: UUIDs, ULIDs, trace ids, base64 (`+/=`), `name@host`. */
const REQUEST_ID = /^[A-Za-z0-9._:+/=@-]{1,128}$/;

/**
 * The logger fastify is given: ours, but its `child()` answers itself. Fastify asks for a child per request,
 * and validates the answer of a custom `childLoggerFactory` each time (a filter over seven method names,
 * per request); our lines carry the request id themselves, so no request needs a child.
 */
function requestFreeLogger(logger: FastifyBaseLogger): FastifyBaseLogger {
  const shared = Object.create(logger) as FastifyBaseLogger;
  shared.child = () => shared;
  return shared;
}

/** Resolves as fastify itself does, so its compilers come from its own dependency tree. */
const fastifyRequire = createRequire(createRequire(import.meta.url).resolve('fastify'));

type Compilers = NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>;
type CompilersFactory = (...args: unknown[]) => unknown;

/**
 * Fastify loads ajv and fast-json-stringify (about 90 modules, ~6 MB resident) when it starts, to compile
 * route schemas. No route of ours has one: validation is ours (zod and http/validate.ts). So the default
 * compilers are loaded the first time a schema is compiled, if ever, and behave as fastify's own then.
 */
function lazyCompiler(name: string): CompilersFactory {
  let factory: CompilersFactory | undefined;
  return (...args) => {
    factory ??= (fastifyRequire(name) as () => CompilersFactory)();
    return factory(...args);
  };
}

const LAZY_COMPILERS = {
  buildValidator: lazyCompiler('@fastify/ajv-compiler') as Compilers['buildValidator'],
  buildSerializer: lazyCompiler('@fastify/fast-json-stringify-compiler') as Compilers['buildSerializer'],
} satisfies Compilers;

/** Maps fastify's own errors (body limit, media type, bad JSON) onto our catalogue. */
function toGatewayError(err: FastifyError): GatewayError | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError('payload_too_large', 'request body is larger than server.body_limit_bytes');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GatewayError('unsupported_media_type', 'request body must be application/json');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new GatewayError('invalid_request', 'request body is empty');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GatewayError('invalid_request', 'content-length does not match the body');
    default:
      break;
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    if (err.statusCode === 408) return new GatewayError('request_timeout', 'request body arrived too slowly');
    return new GatewayError('invalid_request', 'malformed request', { status: err.statusCode });
  }
  return undefined;
}

/**
 * Said on a 404 for /v1/* without `server.passthrough`. The Vercel AI SDK's `openai(model)` calls the
 * Responses API; the routed surface is chat completions, `openai.chat(model)` there.
 */
const NO_PASSTHROUGH =
  ' (routed here: POST /v1/chat/completions, /v1/embeddings, GET /v1/models; other /v1/* paths are' +
  ' proxied only when server.passthrough names a provider)';

/** How often Node sweeps its connections for requests past their time. */
const CHECK_EVERY_MS = 500;

const CLIENT_ERRORS: Record<string, { status: number; reason: string; error: GatewayError }> = {
  ERR_HTTP_REQUEST_TIMEOUT: {
    status: 408,
    reason: 'Request Timeout',
    error: new GatewayError('request_timeout', 'request headers or body arrived too slowly'),
  },
  HPE_HEADER_OVERFLOW: {
    status: 431,
    reason: 'Request Header Fields Too Large',
    error: new GatewayError('invalid_request', 'request headers are too large', { status: 431 }),
  },
};
const EXPECTATION_FAILED = new GatewayError('invalid_request', 'only "Expect: 100-continue" is supported', {
  status: 417,
  param: 'expect',
});
const PAYLOAD_TOO_LARGE = new GatewayError(
  'payload_too_large',
  'request body is larger than server.body_limit_bytes',
);
const BAD_URL = new GatewayError('invalid_request', 'malformed URL: a %-escape that does not decode');
const MALFORMED = {
  status: 400,
  reason: 'Bad Request',
  error: new GatewayError('invalid_request', 'malformed HTTP request'),
};

const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/i;
const UTF8_NAMES = new Set(['utf-8', 'utf8', 'us-ascii']);

/**
 * A charset the body is declared in that is not UTF-8 (or its ASCII subset): the body is read as UTF-8, so
 * Latin-1 "café" would reach the upstream as "caf\uFFFD". Undefined for a plain `application/json`.
 */
function foreignCharset(contentType: string | undefined): string | undefined {
  if (contentType === undefined || contentType.length <= 'application/json'.length) return undefined;
  const name = CHARSET.exec(contentType)?.[1]?.toLowerCase();
  return name === undefined || UTF8_NAMES.has(name) ? undefined : name;
}

/** A Content-Encoding that leaves the body as sent: `identity` in any case, or an empty value. */
function isIdentity(enc: string): boolean {
  const e = enc.trim();
  return e === '' || e.toLowerCase() === 'identity';
}

const GENERATED_ID = Symbol('generated request id');
const ANSWERED = Symbol('status Node answered with');
type WithId = IncomingMessage & { [GENERATED_ID]?: string };
type Answered = { [ANSWERED]?: number };

/**
 * A request's id: the client's `x-request-id` when it is a plain token that holds none of our secrets (the
 * id is logged: SPEC §8; a provider's placeholder key is none), else one generated once and kept on the
 * request, so an answer Node writes itself (answerClientError) carries the id fastify logs.
 */
function requestIdOf(req: IncomingMessage, gateway: Gateway): string {
  const h = req.headers['x-request-id'];
  if (typeof h === 'string' && REQUEST_ID.test(h) && !gateway.runtime.credentials.holds(h)) return h;
  return ((req as WithId)[GENERATED_ID] ??= randomUUID());
}

/** The status Node answered a request with before fastify was done with it (answerClientError). */
function answeredByNode(res: ServerResponse): number | undefined {
  return (res as ServerResponse & Answered)[ANSWERED];
}

/**
 * What a client gets when Node's parser or timers give up on it before there is a request to route: a
 * slow body or headers (408), oversized headers (431), bytes that are not HTTP (400). OpenAI-shaped like
 * every other error (fastify's own handler answers in its shape), then the connection is closed.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex, gateway: Gateway): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  // An answer already on the wire on this connection (a stream, with a request pipelined behind it) is cut,
  // not written into: our 400 inside its chunked body would be read as part of it (Node's rule too).
  const inFlight = (socket as { _httpMessage?: (ServerResponse & Answered) | null })._httpMessage;
  if (socket.writable && inFlight?.headersSent !== true) {
    const known = CLIENT_ERRORS[err.code ?? ''];
    const { status, reason, error } = known ?? MALFORMED;
    const body = JSON.stringify(error.toBody());
    // The answer to a request begun (a body too slow: 408) keeps its id, and the request is logged with this
    // status, not as one its client left. Bytes that are not HTTP (the end of a body cut short, a malformed
    // request behind it) are not that request's answer.
    const owner = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && inFlight ? inFlight : undefined;
    if (owner) owner[ANSWERED] = status;
    const id = owner ? requestIdOf(owner.req, gateway) : randomUUID();
    socket.write(
      `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\n` +
        `content-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${id}\r\n` +
        `connection: close\r\n\r\n${body}`,
    );
    // A request refused for its headers' size is a request (an operator must see clients sent away for a
    // long URL or cookie), counted and logged as 408 and 417 are; bytes that are not HTTP are not.
    if (err.code === 'HPE_HEADER_OVERFLOW') logUnrouted(gateway, id, undefined, 'unmatched', status, 0);
  }
  socket.destroy();
}

export function buildApp(loaded: LoadedConfig, deps: GatewayDeps): FastifyInstance {
  const server = loaded.config.server;
  const slowRequestMs = Math.max(
    server.request_timeout_ms - CHECK_EVERY_MS,
    Math.ceil(server.request_timeout_ms / 2),
  );
  const gateway = new Gateway(loaded, deps);
  const app: FastifyInstance = Fastify({
    loggerInstance: requestFreeLogger(deps.logger as FastifyBaseLogger),
    // One line per request is ours (http/report.ts), with the routing decision in it.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: server.body_limit_bytes,
    requestTimeout: slowRequestMs,
    // Node checks request timeouts every 30 s by default, which would let a slow body hold a socket for up
    // to a minute; checked twice a second against a limit half a second short, the 408 comes within
    // request_timeout_ms, never after it.
    http: {
      requestTimeout: slowRequestMs,
      headersTimeout: Math.min(slowRequestMs, 60_000),
      connectionsCheckingInterval: CHECK_EVERY_MS,
      // Node's own refusal of a Host-less HTTP/1.1 request has no body: refused in authHook, OpenAI-shaped.
      requireHostHeader: false,
    },
    clientErrorHandler: (err, socket) => answerClientError(err, socket, gateway),
    // A path fastify cannot decode (a malformed %-escape) gets our 400, OpenAI-shaped and counted; fastify's
    // own is not, and quotes the whole URL back. No route matched, so no hook runs: it is reported here.
    frameworkErrors: (_err, req, reply: FastifyReply) => {
      reportUnrouted(gateway, req, 400, reply.elapsedTime);
      void reply.code(400).header('x-request-id', req.id).type('application/json').send(BAD_URL.toBody());
    },
    connectionTimeout: 0,
    keepAliveTimeout: 72_000,
    // While draining our own hooks answer (OpenAI-shaped 503 on /v1, 503 on /readyz), not fastify's default.
    return503OnClosing: false,
    schemaController: { compilersFactory: LAZY_COMPILERS },
    genReqId: (req) => requestIdOf(req, gateway),
  });
  // An Expect Node does not meet (anything but 100-continue): its 417, OpenAI-shaped (Node's has no body).
  // Fastify never sees the request: counted and logged here, under the id its header gives.
  app.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify(EXPECTATION_FAILED.toBody());
    const id = requestIdOf(req, gateway);
    res.writeHead(417, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-request-id': id,
      connection: 'close',
    });
    res.end(body);
    logUnrouted(gateway, id, req.method, 'unmatched', 417, 0);
  });
  // Expect: 100-continue with a declared length past the limit: the 413 at once, without the 100 that would tell
  // the client to send a body it would only be refused (RFC 9110 §10.1.1). Any other goes on as Node would.
  app.server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    const declared = Number(req.headers['content-length']);
    if (!(declared > server.body_limit_bytes)) {
      res.writeContinue();
      app.server.emit('request', req, res);
      return;
    }
    const body = JSON.stringify(PAYLOAD_TOO_LARGE.toBody());
    const id = requestIdOf(req, gateway);
    res.writeHead(413, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-request-id': id,
      connection: 'close',
    });
    res.end(body);
    logUnrouted(gateway, id, req.method, 'unmatched', 413, 0);
  });
  app.decorate('gateway', gateway);
  app.decorateRequest('reported', false);

  app.removeAllContentTypeParsers();

  // Only the routed surfaces (/v1 chat and embeddings) report themselves; others, and early rejections,
  // get their line here (a passthrough answer cut mid-body, which fastify's onResponse never sees, in
  // passthrough.ts).
  app.addHook('onResponse', (req, reply, done) => {
    reportOnce(gateway, req, reply.statusCode, reply.elapsedTime);
    done();
  });

  app.setErrorHandler((err: FastifyError | GatewayError, req, reply) => {
    const mapped = err instanceof GatewayError ? err : toGatewayError(err);
    if (!mapped) req.log.error({ err, reqId: req.id }, 'unhandled error');
    const { status, body, retryAfterS, noRetry } = errorBody(mapped ?? err);
    // A client already gone gets no answer, so onResponse never runs: its count and line are written here,
    // as a request its client left (whatever failed meanwhile: the client did not see it).
    // Unless Node answered it before it was gone (a body too slow: 408, answerClientError).
    if (reply.raw.destroyed)
      reportOnce(gateway, req, answeredByNode(reply.raw) ?? CLIENT_CLOSED_REQUEST, reply.elapsedTime);
    if (retryAfterS !== undefined) reply.header('retry-after', String(retryAfterS));
    // A 504 is the route's own time budget spent (its failover included): the OpenAI SDKs, which retry a
    // 5xx twice by default, would spend it twice more. They read this header; other clients ignore it.
    // One with a Retry-After (every upstream busy at max_concurrency, none tried) is worth a retry.
    if ((status === 504 && retryAfterS === undefined) || noRetry === true)
      reply.header('x-should-retry', 'false');
    void reply.code(status).type('application/json').send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0] ?? '';
    // With a passthrough every other /v1/* path is proxied, so a /v1/* path here means there is none.
    const rt = app.gateway.runtime;
    const named = rt.loaded.config.server.passthrough;
    const hint = !path.startsWith('/v1/')
      ? ''
      : named === undefined
        ? NO_PASSTHROUGH
        : named !== rt.passthroughName
          ? ' (server.passthrough was set by a reload: a restart applies it)'
          : rt.passthrough === undefined
            ? ` (server.passthrough names provider "${named}", which is disabled: its api_key is empty)`
            : ` (${clip(req.method, 20)} is not proxied to "${named}": GET, HEAD, POST, PUT, PATCH and DELETE are)`;
    // The client's path quoted, not all of it: an 8 KB path made an 8 KB error body.
    const err = new GatewayError(
      'not_found',
      `no such endpoint: ${clip(req.method, 20)} ${clip(path, 200)}${hint}`,
    );
    void reply.code(404).type('application/json').send(err.toBody());
  });

  // The onRequest hooks, in this order: CORS (a preflight is answered before auth, a browser sends no key on
  // it; an answer refused by auth keeps Allow-Origin, for the page to read the 401), auth, then the load
  // shedding and rate limits (a preflight costs no budget).
  if (server.cors !== undefined) registerCors(app, gateway, server.cors);
  app.register(
    fp(async (root) => {
      root.addHook('onRequest', authHook(gateway));
    }),
  );
  app.register(protectionPlugin, { server });
  app.register(healthPlugin);
  app.register(metricsPlugin);
  app.register(modelsPlugin);
  // Our JSON surfaces share one strict parser; the passthrough (a sibling context) streams bodies raw.
  app.register(async (api) => {
    api.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
      const enc = req.headers['content-encoding'];
      // Codings are case-insensitive (RFC 9110 §8.4.1): `Identity` is the body as sent, as an empty value is.
      if (enc !== undefined && enc !== 'identity' && !isIdentity(enc)) {
        return done(
          new GatewayError('unsupported_media_type', `content-encoding "${String(enc)}" is not supported`),
        );
      }
      const charset = foreignCharset(req.headers['content-type']);
      if (charset !== undefined) {
        return done(
          new GatewayError('unsupported_media_type', `charset "${charset}" is not supported: JSON is UTF-8`),
        );
      }
      const read = typeof body === 'string' ? body : body.toString('utf8');
      // A byte order mark (a file saved as "UTF-8 with BOM", sent with curl -d @file) is no part of the JSON
      // (RFC 8259 §8.1 lets a parser ignore it): dropped here, so upstreams get the text without it too.
      const text = read.charCodeAt(0) === 0xfeff ? read.slice(1) : read;
      // Read whole, so the connection stays usable: the handler answers these (UnusableBody).
      const unusable = (message: string) =>
        done(null, new UnusableBody(new GatewayError('invalid_request', message)));
      if (text === '') return unusable('request body is empty');
      if (jsonDepthExceeds(text, MAX_JSON_DEPTH))
        return unusable(`JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
      try {
        // JSON.parse keeps `__proto__` as an own data property: it can never reach a prototype.
        const parsed: unknown = JSON.parse(text);
        rememberSource(parsed, text); // upstreams get this text with the model spliced in
        done(null, parsed);
      } catch {
        unusable('request body is not valid JSON');
      }
    });
    api.register(chatPlugin);
    api.register(embeddingsPlugin);
    api.register(adminPlugin);
  });
  app.register(passthroughPlugin);
  app.addHook('onClose', async () => {
    flushTurn(); // counts and lines of this turn's last answers, before the process may exit
    await gateway.close();
  });
  return app;
}
