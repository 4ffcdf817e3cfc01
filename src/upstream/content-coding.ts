/** Content-codings (gzip, deflate, br) undone on upstream answers, whole or streamed. */
import {
  brotliDecompressSync,
  createBrotliDecompress,
  createGunzip,
  createInflate,
  gunzipSync,
  inflateSync,
} from 'node:zlib';
import type { Readable, Transform } from 'node:stream';

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
export function decode(body: Readable, coding: Coding | undefined): Readable {
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
