import { Pool, type Dispatcher } from 'undici';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { ProviderConfig } from '../config/schema.js';
import type { Abort } from './abort.js';

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
 * sized by `max_concurrency`, not by a small keep-alive count. Timeouts are undici's own: connect,
 * headers (first byte) and body (idle gap between chunks); the total bound is an abort signal.
 */
export class ProviderClient {
  readonly origin: string;
  /** The base_url's path without a trailing slash, e.g. `/v1`. */
  readonly basePath: string;
  private readonly pool: Pool;

  constructor(provider: ProviderConfig) {
    const url = new URL(provider.base_url);
    this.origin = url.origin;
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.pool = new Pool(this.origin, {
      connections: provider.max_concurrency,
      pipelining: 1,
      connect: { timeout: provider.timeouts.connect_ms },
      headersTimeout: provider.timeouts.first_byte_ms,
      bodyTimeout: provider.timeouts.idle_ms,
      keepAliveTimeout: 30_000,
    });
  }

  async request(opts: {
    method: 'GET' | 'POST';
    path: string;
    headers: Record<string, string>;
    body?: string;
    signal: Abort;
  }): Promise<UpstreamResponse> {
    const res = await this.pool.request({
      origin: this.origin,
      method: opts.method,
      path: this.basePath + opts.path,
      headers: opts.headers,
      body: opts.body,
      signal: opts.signal,
    });
    const encoding = res.headers['content-encoding'];
    const body = decode(res.body, typeof encoding === 'string' ? encoding.toLowerCase() : undefined);
    return {
      statusCode: res.statusCode,
      headers: res.headers,
      body,
      dump: () => {
        res.body.destroy();
      },
    };
  }

  stats(): { connected: number; free: number; pending: number; running: number; size: number } {
    const s = this.pool.stats;
    return { connected: s.connected, free: s.free, pending: s.pending, running: s.running, size: s.size };
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }
}

/** Compressed answers are decoded, not relayed as bytes the client never asked for. */
function decode(body: Readable, encoding: string | undefined): Readable {
  if (encoding === undefined || encoding === 'identity' || encoding === '') return body;
  const decoder =
    encoding === 'gzip' || encoding === 'x-gzip'
      ? createGunzip()
      : encoding === 'deflate'
        ? createInflate()
        : encoding === 'br'
          ? createBrotliDecompress()
          : undefined;
  if (!decoder) return body;
  body.on('error', (err) => decoder.destroy(err));
  decoder.on('close', () => body.destroy());
  return body.pipe(decoder);
}

/**
 * Reads a whole body, refusing past `maxBytes` (a hostile upstream cannot make us buffer without bound).
 * Event-driven rather than `for await`: async iteration of a stream costs several promises per chunk, on
 * every non-streaming request. `onChunk` sees each chunk arrive (the idle bound restarts on it).
 */
export function readBody(res: UpstreamResponse, maxBytes: number, onChunk?: () => void): Promise<string> {
  const body = res.body;
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
      body.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      onChunk?.();
      size += chunk.length;
      if (size > maxBytes) {
        cleanup();
        body.destroy();
        reject(
          Object.assign(new Error(`upstream body larger than ${maxBytes} bytes`), { code: 'body_too_large' }),
        );
        return;
      }
      parts.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(parts.length === 1 ? parts[0]!.toString('utf8') : Buffer.concat(parts).toString('utf8'));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      cleanup();
      reject(Object.assign(new Error('upstream body closed before its end'), { code: 'UND_ERR_SOCKET' }));
    };
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', onError);
    body.once('close', onClose);
  });
}
