import { randomBytes, randomUUID } from 'node:crypto';
import { skipSpace } from '../../json-scan.js';
import type { AdapterProvider, Usage } from '../adapter.js';
import { clip } from '../../text.js';
import { decodeHtmlReferences } from '../../html.js';

/**
 * Dialect-neutral helpers shared by the provider adapters: narrowing of untrusted JSON, and the encoder
 * that writes OpenAI `chat.completion.chunk` text for a translated stream.
 */

export type JsonObject = Record<string, unknown>;

/** Marks RawJson's places in a stringified text: unguessable, so no client text can pose as one. */
const RAW_NONCE = randomBytes(8).toString('hex');
const RAW_MARK = `\u0000raw-${RAW_NONCE}:`;
/** The mark as JSON.stringify writes it (NUL as the six characters \u0000), quoted, with its index. */
const RAW_PLACE = new RegExp(String.raw`"\\u0000raw-${RAW_NONCE}:(\d+)"`, 'g');
let rawTexts: string[] | undefined;

/**
 * A JSON value sent as its client wrote it: JSON.parse rounds a number past 2^53 or of 17 digits (an order id
 * 12345678901234567890 became ...7000), and re-serialised it is another value. Written in place by
 * stringifyWithRaw; `text` must be valid JSON.
 */
export class RawJson {
  constructor(readonly text: string) {}

  toJSON(): string {
    (rawTexts ??= []).push(this.text);
    return RAW_MARK + String(rawTexts.length - 1);
  }
}

/** JSON.stringify, with each RawJson inside written as its own text. */
export function stringifyWithRaw(value: unknown): string {
  rawTexts = undefined;
  const text = JSON.stringify(value);
  const raws = rawTexts as string[] | undefined;
  rawTexts = undefined;
  if (raws === undefined) return text;
  return text.replace(RAW_PLACE, (_, i: string) => raws[Number(i)]!);
}

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function asString(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** A finite number, or undefined (NaN and Infinity are not numbers a provider understands). */
export function asNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/**
 * The most tokens one answer's usage may claim and still be counted: far past any model's context. Past it
 * a figure is an upstream's nonsense (1e308 would make the token and cost counters +Inf for good).
 */
export const MAX_REPORTED_TOKENS = 100_000_000;

/**
 * A token count from an untrusted usage object, or undefined for anything not a count we believe: a whole
 * number up to MAX_REPORTED_TOKENS (a fraction such as 1e-300 would make time per output token absurd).
 */
export function tokenCount(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_REPORTED_TOKENS
    ? value
    : undefined;
}

/** A non-negative count from an untrusted usage object; anything else counts as 0. */
export function asCount(value: unknown): number {
  return tokenCount(value) ?? 0;
}

type HeaderCache = WeakMap<AdapterProvider, Readonly<Record<string, string>>>;

/**
 * A provider's request headers in one dialect, built once per provider (undici only reads them): JSON
 * content type, the dialect's own (`own`: our key, never the client's), then the configured extras.
 */
export function providerHeaders(
  cache: HeaderCache,
  provider: AdapterProvider,
  own: (provider: AdapterProvider, into: Record<string, string>) => void,
): Record<string, string> {
  let h = cache.get(provider);
  if (!h) {
    const built: Record<string, string> = { 'content-type': 'application/json' };
    own(provider, built);
    if (provider.headers) Object.assign(built, provider.headers);
    h = Object.freeze(built);
    cache.set(provider, h);
  }
  return h as Record<string, string>;
}

/** JSON.parse that returns undefined instead of throwing; only objects are tried (skips `[DONE]`, garbage). */
export function parseJsonObject(text: string): JsonObject | undefined {
  // A cheap first-character test keeps exceptions (slow) off the per-event path for non-JSON data.
  if (text.charCodeAt(skipSpace(text, 0)) !== 123 /* { */) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return isObject(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

export function newCompletionId(): string {
  return `chatcmpl-${randomUUID().replaceAll('-', '')}`;
}

/** The OpenAI error `type` a bare HTTP status implies, for upstream bodies that name none. */
export function openAiErrorTypeForStatus(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 400 && status < 500) return 'invalid_request_error';
  return 'server_error';
}

/** The start of an HTML page: what a proxy, load balancer or CDN in front of the API answers errors with. */
const HTML_PAGE = /^<(?:!doctype\s+html|html|head|body|title)\b/i;
const HTML_TITLE = /<title\b[^<>]*>([^<]*)<\/title>/i;
const HTML_TAG = /<[^<>]*>/g;
const PAGE_TEXT_CHARS = 500;

/**
 * An error answered as an HTML page (nginx's or Cloudflare's 413, 502, 403 in front of the API) as readable
 * text: its `<title>`, else its text without tags when short, spaces collapsed and character references decoded
 * ('' for a page with no such text). Undefined for a body that is no HTML page. Linear in the body (its patterns
 * stop at the next `<`): an upstream's page of a million `<` costs no more than its length.
 */
export function htmlPageText(body: string): string | undefined {
  const text = body.trimStart();
  if (!HTML_PAGE.test(text)) return undefined;
  const title = HTML_TITLE.exec(text)?.[1]?.trim();
  const plain = (title ? title : text.replace(HTML_TAG, ' ')).replace(/\s+/g, ' ').trim();
  // A long page without a title is mostly styles and scripts: no message at all reads better.
  if (plain.length > PAGE_TEXT_CHARS) return '';
  return decodeHtmlReferences(plain);
}

/** Caps an upstream message we relay, so a hostile body cannot inflate our error responses. */
export function truncateMessage(text: string, maxChars = 1000): string {
  return text.length > maxChars ? `${clip(text, maxChars)}…` : text;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter';

export interface ChunkEncoder {
  /** One chunk with a single choice; `delta` is a small object serialised as is. */
  choice(delta: object, finishReason: FinishReason | null): string;
  /** The `stream_options.include_usage` chunk: no choices, the usage of the whole answer. */
  usage(usage: Usage): string;
}

/**
 * Writes chunk JSON with the invariant part (id, object, created, model) serialised once per stream, so a
 * chunk costs one JSON.stringify of its delta. Field order matches OpenAI's own chunks.
 */
export function createChunkEncoder(
  id: string,
  created: number,
  model: string,
  includeUsage: boolean,
): ChunkEncoder {
  const head = `{"id":${JSON.stringify(id)},"object":"chat.completion.chunk","created":${JSON.stringify(created)},"model":${JSON.stringify(model)},"choices":[`;
  // OpenAI puts `"usage":null` on every chunk but the last when include_usage is set.
  const tail = includeUsage ? '],"usage":null}' : ']}';
  return {
    choice(delta, finishReason) {
      const finish = finishReason === null ? 'null' : `"${finishReason}"`;
      return `${head}{"index":0,"delta":${JSON.stringify(delta)},"logprobs":null,"finish_reason":${finish}}${tail}`;
    },
    usage(usage) {
      return `${head}],"usage":${JSON.stringify(usage)}}`;
    },
  };
}
