import fastifyCors from '@fastify/cors';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Config } from '../config/schema.js';
import type { Gateway } from '../gateway.js';

type CorsConfig = NonNullable<Config['server']['cors']>;

/**
 * What a page may read of an answer: the routing headers, the request id and the retry hints the SDKs read
 * (a browser hides every response header but a few unless it is listed here).
 */
const EXPOSED_HEADERS = [
  'x-request-id',
  'x-router-provider',
  'x-router-model',
  'x-router-strategy',
  'x-router-attempts',
  'x-router-trail',
  'x-router-tier',
  'x-router-tier-reason',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'retry-after',
  'retry-after-ms',
  'x-should-retry',
];

/** The passthrough's Files, Batches and Assistants APIs use every method. */
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'];

/** No origin allowed: the preflight is still answered (never routed, never proxied), without Allow-Origin. */
const NONE: string[] = [];

interface OriginMatch {
  readonly any: boolean;
  readonly exact: ReadonlySet<string>;
  /** `https://*.example.com` as [`https://`, `.example.com`, `:port` or ``]. */
  readonly wild: readonly (readonly [string, string])[];
}

const MATCHES = new WeakMap<CorsConfig, OriginMatch>();

function matchOf(cors: CorsConfig): OriginMatch {
  let m = MATCHES.get(cors);
  if (m === undefined) {
    const wild: [string, string][] = [];
    const exact = new Set<string>();
    for (const o of cors.origins) {
      const star = o.indexOf('://*.');
      if (star < 0) exact.add(o);
      else wild.push([o.slice(0, star + 3), o.slice(star + 4)]);
    }
    m = { any: exact.has('*'), exact, wild };
    MATCHES.set(cors, m);
  }
  return m;
}

/** Whether a page on `origin` may call the gateway under `cors` (a reload's list applies at once). */
export function corsAllows(cors: CorsConfig | undefined, origin: string | undefined): boolean {
  if (cors === undefined || origin === undefined) return false;
  const m = matchOf(cors);
  if (m.any) return true;
  const o = origin.toLowerCase();
  if (m.exact.has(o)) return true;
  for (const [scheme, rest] of m.wild) {
    // `https://*.example.com` takes `https://a.example.com` and `https://a.b.example.com`, not the apex or
    // `https://evil-example.com`; the port must be the one written.
    if (!o.startsWith(scheme)) continue;
    const host = o.slice(scheme.length);
    const colon = rest.indexOf(':');
    const domain = colon < 0 ? rest : rest.slice(0, colon);
    const port = colon < 0 ? '' : rest.slice(colon);
    const hostPort = host.endsWith(port) ? host.slice(0, host.length - port.length) : undefined;
    if (hostPort === undefined || hostPort.includes(':')) continue;
    if (hostPort.endsWith(domain) && hostPort.length > domain.length) return true;
  }
  return false;
}

/** A CORS preflight, which the CORS hook answers before any route: no client key, not a request counted. */
export function isPreflight(req: FastifyRequest): boolean {
  return (req as FastifyRequest & { corsPreflightEnabled?: boolean }).corsPreflightEnabled === true;
}

/**
 * CORS for browser pages (`server.cors`), when the config at start has it: preflights are answered before
 * auth, rate limits and routes; answers to allowed origins carry Allow-Origin and the exposed headers. The
 * origins are read from the live config on each request; turning CORS on or off takes a restart.
 */
export function registerCors(app: FastifyInstance, gateway: Gateway, atStart: CorsConfig): void {
  app.register(fastifyCors, {
    hook: 'onRequest',
    origin: (origin, cb) => {
      // A reload that removes server.cors turns nothing off until a restart: the start's origins stay.
      const cors = gateway.runtime.loaded.config.server.cors ?? atStart;
      cb(null, corsAllows(cors, origin) ? true : NONE);
    },
    methods: METHODS,
    exposedHeaders: EXPOSED_HEADERS,
    maxAge: atStart.max_age_s,
    // Any OPTIONS is CORS's: never proxied to the passthrough provider with our key.
    strictPreflight: false,
  });
}
