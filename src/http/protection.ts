import { createHash } from 'node:crypto';
import underPressure from '@fastify/under-pressure';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { bearerToken } from './auth.js';

/** Only the API surface is shed or limited: health, metrics and admin reads must answer under load. */
function isApi(req: FastifyRequest): boolean {
  return req.routeOptions.url?.startsWith('/v1') === true;
}

/**
 * Load shedding (event-loop delay, heap, RSS, event-loop utilisation) and the optional per-key request
 * rate limit, both answering OpenAI-shaped errors with `Retry-After`.
 */
async function protection(app: FastifyInstance, opts: { server: Config['server'] }): Promise<void> {
  const shed = opts.server.load_shedding;
  await app.register(underPressure, {
    maxEventLoopDelay: shed.max_event_loop_delay_ms,
    maxHeapUsedBytes: shed.max_heap_used_bytes,
    maxRssBytes: shed.max_rss_bytes,
    maxEventLoopUtilization: shed.max_event_loop_utilization,
    sampleInterval: shed.sample_interval_ms,
    pressureHandler: (req, _reply, type) => {
      if (!isApi(req)) return; // handled normally
      throw new GatewayError('overloaded', `the gateway is overloaded (${type}); retry shortly`, {
        retryAfterS: shed.retry_after_s,
      });
    },
  });

  const limit = opts.server.rate_limit;
  if (limit.requests_per_minute > 0) {
    const { default: rateLimit } = await import('@fastify/rate-limit'); // loaded only when configured
    await app.register(rateLimit, {
      global: true,
      max: limit.requests_per_minute,
      timeWindow: 60_000,
      allowList: (req) => !isApi(req),
      // Per client key (a digest: the limiter's store never holds a key), else per address: with no
      // server.api_keys a token is no key, and a new made-up one per request must not escape the limit.
      keyGenerator: (req) => {
        const token = bearerToken(req.headers);
        return token !== undefined && app.gateway.runtime.clientKeys.matches(token)
          ? createHash('sha256').update(token).digest('base64url')
          : req.ip;
      },
      errorResponseBuilder: (_req, ctx) =>
        new GatewayError(
          'rate_limited',
          `rate limit of ${ctx.max} requests per minute exceeded; retry in ${ctx.after}`,
          {
            retryAfterS: Math.max(1, Math.ceil(ctx.ttl / 1000)),
            bodyCode: 'rate_limit_exceeded',
          },
        ),
    });
  }
}

/** Not encapsulated: its hooks guard every route of the app. */
export const protectionPlugin = fp(protection, { name: 'llm-edge-router-protection' });
