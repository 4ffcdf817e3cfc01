import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, RawServerBase, RouteGenericInterface } from 'fastify';
import type { Readable } from 'node:stream';

/** Headers of the client's that never travel upstream: its own credentials. */
const STRIPPED = new Set(['authorization', 'x-api-key', 'x-admin-key', 'api-key']);
/** Error bodies are read this far to be scrubbed; past it they are cut. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/**
 * Every other `/v1/*` path (files, audio, responses, ...) is reverse-proxied as it is, bodies streamed both
 * ways, to `server.passthrough`, with that provider's key in place of the client's. Successful answers
 * stream through untouched; error answers are read (bounded), decoded and scrubbed of every configured
 * secret first, since an upstream may echo the key we sent it. Without a passthrough: our 404.
 */
export async function passthroughPlugin(app: FastifyInstance): Promise<void> {
  const provider = app.gateway.runtime.passthrough;
  if (!provider) return;
  const url = new URL(provider.config.base_url);
  // Loaded only when configured: the proxy and its websocket support are ~5 MB resident.
  const { default: httpProxy } = await import('@fastify/http-proxy');
  await app.register(httpProxy, {
    upstream: url.origin,
    prefix: '/v1',
    rewritePrefix: url.pathname.replace(/\/+$/, ''),
    http2: false,
    replyOptions: {
      rewriteRequestHeaders: (_req, headers) => {
        const out: Record<string, string | string[] | undefined> = {};
        for (const [k, v] of Object.entries(headers)) if (!STRIPPED.has(k)) out[k] = v;
        // The key of the passthrough provider in the config serving now (a reload may have changed it).
        const key = app.gateway.runtime.passthrough?.config.api_key;
        if (key) out.authorization = `Bearer ${key}`;
        return out;
      },
      onResponse: (_req, reply, res) => {
        if (reply.statusCode < 400) {
          void reply.send(res.stream);
          return;
        }
        void sendScrubbed(app, reply, res.stream);
      },
    },
  });
}

async function sendScrubbed(
  app: FastifyInstance,
  reply: FastifyReply<RouteGenericInterface, RawServerBase>,
  stream: Readable,
): Promise<void> {
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_ERROR_BODY_BYTES) {
        stream.destroy();
        break;
      }
      parts.push(chunk);
    }
  } catch {
    /* a broken error body still has its status */
  }
  let text: string;
  try {
    text = decode(Buffer.concat(parts), reply.getHeader('content-encoding'));
  } catch {
    text = `upstream answered HTTP ${reply.statusCode}`;
  }
  reply.removeHeader('content-length');
  reply.removeHeader('content-encoding');
  void reply.send(app.gateway.runtime.scrubber.scrub(text));
}

function decode(body: Buffer, encoding: unknown): string {
  const opts = { maxOutputLength: 4 * MAX_ERROR_BODY_BYTES };
  switch (typeof encoding === 'string' ? encoding.toLowerCase() : '') {
    case 'gzip':
    case 'x-gzip':
      return gunzipSync(body, opts).toString('utf8');
    case 'deflate':
      return inflateSync(body, opts).toString('utf8');
    case 'br':
      return brotliDecompressSync(body, opts).toString('utf8');
    default:
      return body.toString('utf8');
  }
}
