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
  return codingNamed(header.trim().toLowerCase());
}

function codingNamed(enc: string): Coding | undefined {
  return enc === 'gzip' || enc === 'x-gzip' ? 'gzip' : enc === 'deflate' || enc === 'br' ? enc : undefined;
}

/**
 * The codings a content-encoding header lists, in the order they were applied (RFC 9110 §8.4: `deflate, gzip`
 * is deflated, then gzipped): one, or several; undefined for identity, and when any listed one is unknown
 * (zstd on Node 20): the body is read as it is then, and fails as malformed.
 */
export function codingsOf(header: unknown): Coding | readonly Coding[] | undefined {
  // Two Content-Encoding lines are one list (RFC 9110 §5.3): undici hands them over as an array.
  if (Array.isArray(header)) return codingsOf(header.join(', '));
  const one = codingOf(header);
  if (one !== undefined || typeof header !== 'string' || !header.includes(',')) return one;
  const list: Coding[] = [];
  for (const name of header.toLowerCase().split(',')) {
    const enc = name.trim();
    if (enc === 'identity' || enc === '') continue;
    const coding = codingNamed(enc);
    if (coding === undefined) return undefined;
    list.push(coding);
  }
  return list.length === 0 ? undefined : list;
}

/**
 * A whole compressed body decoded, refusing to inflate past `maxBytes` (no decompression bombs), as text in
 * `encoding` (latin1: a character a byte, for bodies to relay byte for byte).
 */
export function decodeBuffer(
  raw: Buffer,
  coding: Coding | readonly Coding[] | undefined,
  maxBytes: number,
  encoding: BufferEncoding = 'utf8',
): string {
  if (coding === undefined) return raw.toString(encoding);
  const opts = { maxOutputLength: maxBytes };
  let out = raw;
  // The last coding applied is the first undone.
  for (const c of typeof coding === 'string' ? [coding] : coding.toReversed()) {
    out =
      c === 'gzip'
        ? gunzipSync(out, opts)
        : c === 'deflate'
          ? inflateSync(out, opts)
          : brotliDecompressSync(out, opts);
  }
  return out.toString(encoding);
}

/** Compressed answers are decoded, not relayed as bytes the client never asked for. */
export function decode(body: Readable, coding: Coding | readonly Coding[] | undefined): Readable {
  if (coding === undefined) return body;
  let out = body;
  for (const c of typeof coding === 'string' ? [coding] : coding.toReversed()) {
    const decoder = decoderOf(c);
    const from = out;
    from.on('error', (err) => decoder.destroy(err));
    decoder.on('close', () => from.destroy());
    out = from.pipe(decoder);
  }
  return out;
}

/** A stream that undoes `coding`. */
export function decoderOf(coding: Coding): Transform {
  return coding === 'gzip'
    ? createGunzip()
    : coding === 'deflate'
      ? createInflate()
      : createBrotliDecompress();
}
