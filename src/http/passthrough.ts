import httpProxy from '@fastify/http-proxy';
import type { FastifyInstance } from 'fastify';

/** Headers of the client's that never travel upstream: its own credentials. */
const STRIPPED = ['authorization', 'x-api-key', 'x-admin-key', 'api-key'];

/**
 * Every other `/v1/*` path (files, audio, responses, ...) is reverse-proxied as it is, bodies streamed both
 * ways, to `server.passthrough`, with that provider's key in place of the client's. Without it: our 404.
 */
export async function passthroughPlugin(app: FastifyInstance): Promise<void> {
  const provider = app.gateway.runtime.passthrough;
  if (!provider) return;
  const url = new URL(provider.config.base_url);
  await app.register(httpProxy, {
    upstream: url.origin,
    prefix: '/v1',
    rewritePrefix: url.pathname.replace(/\/+$/, ''),
    http2: false,
    replyOptions: {
      rewriteRequestHeaders: (_req, headers) => {
        const out: Record<string, string | string[] | undefined> = {};
        for (const [k, v] of Object.entries(headers)) if (!STRIPPED.includes(k)) out[k] = v;
        // The key of the passthrough provider in the config serving now (a reload may have changed it).
        const key = app.gateway.runtime.passthrough?.config.api_key;
        if (key) out.authorization = `Bearer ${key}`;
        return out;
      },
    },
  });
}
