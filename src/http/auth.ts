import { timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';
import type { Gateway } from '../gateway.js';

/** Keys compared as SHA-256 digests in constant time: neither content nor length leaks through timing. */
export class KeySet {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.filter((k) => k !== '').map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  matches(candidate: string | undefined): boolean {
    if (candidate === undefined || candidate === '') return false;
    const d = digest(candidate);
    let ok = false;
    for (const k of this.digests) ok = timingSafeEqual(k, d) || ok;
    return ok;
  }
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** The token of an `Authorization: Bearer …` header; the scheme is case-insensitive. Query strings are never read. */
export function bearerToken(headers: IncomingHttpHeaders): string | undefined {
  const h = headers.authorization;
  if (typeof h !== 'string') return undefined;
  const space = h.indexOf(' ');
  if (space < 0 || h.slice(0, space).toLowerCase() !== 'bearer') return undefined;
  const token = h.slice(space + 1).trim();
  return token === '' ? undefined : token;
}

function headerString(v: string | string[] | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/**
 * Who may call what, decided on the route fastify matched (its pattern), never on the raw URL: `%76`
 * decodes to `v` only after a prefix check would have looked. Open by name: /healthz, /readyz, and
 * /metrics unless `metrics_auth`; /router/* needs the admin key; everything else, passthrough and unknown
 * paths included, needs a client key when `api_keys` is set. Keys come from the config serving now, so a
 * reload rotates them.
 */
export function authHook(gateway: Gateway) {
  // A callback hook, not an async one: no promise per request for a check that never waits.
  return (req: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void => {
    try {
      check(req, reply);
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  };

  function check(req: FastifyRequest, reply: FastifyReply): void {
    reply.header('x-request-id', req.id);
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (Node's own had no body: app.ts).
    if (req.headers.host === undefined && req.raw.httpVersion === '1.1') {
      throw new GatewayError('invalid_request', 'the Host header is required', { param: 'host' });
    }
    const route = req.routeOptions.url;
    if (route === '/healthz' || route === '/readyz') return;
    const rt = gateway.runtime;
    if (route === '/metrics' && !rt.loaded.config.server.metrics_auth) return;
    // A path no route matched (route undefined) under /router/ is gated too: without the admin key,
    // /router/anything is a 401, never a 404 that tells which admin paths exist. Stricter only.
    if (route === '/metrics' || (route ?? req.url).startsWith('/router')) {
      // Either header may carry it: a client that always sends its own Bearer key can add x-admin-key.
      if (
        rt.adminKeys.enabled &&
        !rt.adminKeys.matches(bearerToken(req.headers)) &&
        !rt.adminKeys.matches(headerString(req.headers['x-admin-key']))
      ) {
        throw new GatewayError('unauthorized', 'missing or invalid admin key', {
          bodyCode: 'invalid_admin_key',
        });
      }
      return;
    }
    if (gateway.draining)
      throw new GatewayError('overloaded', 'the gateway is shutting down', { retryAfterS: 1 });
    if (rt.clientKeys.enabled && !rt.clientKeys.matches(bearerToken(req.headers))) {
      throw new GatewayError(
        'unauthorized',
        'missing or invalid API key (send Authorization: Bearer <key>)',
        {
          bodyCode: 'invalid_api_key',
        },
      );
    }
  }
}
