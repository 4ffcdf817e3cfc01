/**
 * Failover classification (SPEC §2): what an upstream's status or transport error means for the
 * attempt metric, for the breaker and for whether the next upstream is tried. Pure; branches on
 * status codes and error `code`s, never on messages.
 */

/** The label set of `llm_router_upstream_attempts_total{outcome}`. */
export type Outcome = 'success' | 'error' | 'timeout' | 'rate_limited' | 'client_error';

export interface Classified {
  readonly outcome: Outcome;
  readonly retryable: boolean;
  /** Short and from a bounded set (it becomes a metric label and an `x-router-trail` entry). */
  readonly reason: string;
}

function classified(outcome: Outcome, retryable: boolean, reason: string): Classified {
  return Object.freeze({ outcome, retryable, reason });
}

function statusClass(status: number): Classified {
  const reason = `http_${status}`;
  if (status >= 200 && status < 300) return classified('success', false, reason);
  if (status === 408) return classified('timeout', true, reason);
  if (status === 429) return classified('rate_limited', true, reason);
  // 401/403: our provider key is wrong there, another provider may still answer.
  // 402 too: our account there is out of credit, which another provider does not share.
  if (status === 401 || status === 402 || status === 403) return classified('error', true, reason);
  // 424: what the request depended on failed, not the request (Hugging Face TGI's failed generation, a
  // CUDA out of memory): the upstream's fault, as a 5xx is.
  if (status === 424) return classified('error', true, reason);
  // 498: Groq's capacity_exceeded ("try again later"): the upstream is full, as with a 503.
  if (status === 498) return classified('error', true, reason);
  // 405: a POST the upstream's path does not take (a wrong base_url, a proxy in front): our configuration.
  // 407: a proxy wants our credentials, as a 401 is our key. 409: OpenAI's lock timeout, which its SDK
  // retries: another upstream may answer now.
  if (status === 405 || status === 407 || status === 409) return classified('error', true, reason);
  if (status >= 400 && status < 500) return classified('client_error', false, reason);
  // 5xx (529 included), and 1xx/3xx that should never reach us (redirects are not followed).
  return classified('error', true, reason);
}

// Built once so the per-attempt path allocates nothing.
const STATUS_TABLE: readonly Classified[] = Array.from({ length: 600 }, (_, i) => statusClass(i));

export function classifyStatus(status: number): Classified {
  return (Number.isInteger(status) ? STATUS_TABLE[status] : undefined) ?? statusClass(status);
}

/**
 * A 404 that is no API's error (a web page, a proxy's or load balancer's "nothing behind this path"): no
 * verdict on the client's model, which another upstream may well serve. Failed over, charged to the upstream.
 */
export const PAGE_NOT_FOUND = classified('error', true, 'http_404');

/** The reason of an attempt that never left its pool's queue: counted against no breaker (failover.ts). */
export const QUEUE_TIMEOUT = 'queue_timeout';

/**
 * An error carrying one of the codes below, as upstream/ and streaming/ raise them: `classifyError` maps it to
 * its failover reason.
 */
export function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

const ERROR_CODES: ReadonlyMap<string, Classified> = new Map([
  // undici
  ['UND_ERR_CONNECT_TIMEOUT', classified('timeout', true, 'connect_timeout')],
  ['UND_ERR_HEADERS_TIMEOUT', classified('timeout', true, 'first_byte_timeout')],
  ['UND_ERR_BODY_TIMEOUT', classified('timeout', true, 'idle_timeout')],
  ['UND_ERR_SOCKET', classified('error', true, 'socket_error')],
  ['UND_ERR_CLOSED', classified('error', true, 'socket_error')],
  ['UND_ERR_ABORTED', classified('timeout', true, 'total_timeout')],
  ['UND_ERR_HEADERS_OVERFLOW', classified('error', true, 'headers_too_large')],
  // Node / OS
  ['ECONNREFUSED', classified('error', true, 'connect_refused')],
  ['ENOTFOUND', classified('error', true, 'dns_failure')],
  ['EAI_AGAIN', classified('error', true, 'dns_failure')],
  ['EHOSTUNREACH', classified('error', true, 'host_unreachable')],
  ['ENETUNREACH', classified('error', true, 'host_unreachable')],
  ['ECONNRESET', classified('error', true, 'connection_reset')],
  ['ECONNABORTED', classified('error', true, 'connection_reset')],
  ['EPIPE', classified('error', true, 'connection_reset')],
  ['ETIMEDOUT', classified('timeout', true, 'connect_timeout')],
  // Our own (upstream/ and streaming/ raise these)
  ['first_byte_timeout', classified('timeout', true, 'first_byte_timeout')],
  // Waited for a connection past first_byte_ms, every one max_concurrency allows busy: not the upstream's fault.
  [QUEUE_TIMEOUT, classified('timeout', true, QUEUE_TIMEOUT)],
  ['idle_timeout', classified('timeout', true, 'idle_timeout')],
  ['total_timeout', classified('timeout', true, 'total_timeout')],
  ['body_too_large', classified('error', true, 'body_too_large')],
  // zlib: a compressed answer inflating past its bound
  ['ERR_BUFFER_TOO_LARGE', classified('error', true, 'body_too_large')],
  ['stream_ended_before_content', classified('error', true, 'stream_ended_before_content')],
  ['stream_error_event', classified('error', true, 'stream_error_event')],
  ['sse_event_too_large', classified('error', true, 'sse_event_too_large')],
  ['preamble_too_large', classified('error', true, 'preamble_too_large')],
  ['invalid_upstream_json', classified('error', true, 'invalid_upstream_json')],
]);

// An abort we did not label ourselves comes from the request's AbortSignal.timeout (client aborts are
// handled by the caller before classification).
const TOTAL_TIMEOUT = classified('timeout', true, 'total_timeout');
const UNKNOWN = classified('error', true, 'upstream_failure');

// undici and fetch wrap the real cause (`TypeError: fetch failed` → cause); the bound stops cycles.
const MAX_CAUSE_DEPTH = 8;

export function classifyError(err: unknown): Classified {
  let current: unknown = err;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && typeof current === 'object' && current !== null; depth++) {
    // DOMException's numeric legacy `code` is ignored: only string codes are ours or undici's.
    const code: unknown = Reflect.get(current, 'code');
    if (typeof code === 'string') {
      const known = ERROR_CODES.get(code);
      if (known !== undefined) return known;
    }
    const name: unknown = Reflect.get(current, 'name');
    if (name === 'TimeoutError' || name === 'AbortError') return TOTAL_TIMEOUT;
    const cause: unknown = Reflect.get(current, 'cause');
    // Happy-eyeballs connects may fail with an AggregateError of one error per address.
    const inner: unknown = Reflect.get(current, 'errors');
    current = cause === undefined && Array.isArray(inner) ? inner[0] : cause;
  }
  return UNKNOWN;
}

const DAY_MS = 86_400_000;
const DELAY_SECONDS = /^\d+(?:\.\d+)?$/;
// RFC 9110 §5.6.7: IMF-fixdate and the obsolete RFC 850 form, both explicitly GMT.
const HTTP_DATE =
  /^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4}|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d{2}-[A-Z][a-z]{2}-\d{2}) \d{2}:\d{2}:\d{2} GMT$/;
// The obsolete asctime form carries no zone but means GMT; Date.parse would read it as local time.
const ASCTIME_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/;

/** `retry-after-ms`: OpenAI's own header (milliseconds; the openai SDK reads it before Retry-After). */
const DELAY_MS = /^\d+(?:\.\d+)?$/;

/**
 * An upstream's cooldown from its headers, in ms in [0, 24 h]: `retry-after-ms` when it is a number (the
 * finer of the two, and the one OpenAI's clients prefer), else Retry-After.
 */
export function retryAfterFromHeaders(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  nowMs: number,
): number | undefined {
  const msHeader = headers['retry-after-ms'];
  const ms = (Array.isArray(msHeader) ? msHeader[0] : msHeader)?.trim();
  if (ms !== undefined && DELAY_MS.test(ms)) return Math.min(Math.ceil(Number(ms)), DAY_MS);
  return parseRetryAfter(headers['retry-after'], nowMs);
}

/**
 * A 429's cooldown: from its headers, else from its body as Google's APIs give it (Gemini sends no
 * Retry-After: its error's `details` hold a `google.rpc.RetryInfo` with `retryDelay: "37s"`, a protobuf
 * Duration), in ms in [0, 24 h].
 */
export function rateLimitCooldown(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  body: string,
  nowMs: number,
): number | undefined {
  return retryAfterFromHeaders(headers, nowMs) ?? retryDelayOf(body);
}

const RETRY_INFO = 'google.rpc.RetryInfo';
const DURATION = /^(\d+(?:\.\d+)?)s$/;

function retryDelayOf(body: string): number | undefined {
  if (!body.includes('retryDelay')) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return undefined;
  }
  // `{"error": {...}}`, or as Gemini's OpenAI-compatible endpoint answers, a list of those.
  for (const item of Array.isArray(json) ? json : [json]) {
    const details = (item as { error?: { details?: unknown } } | null)?.error?.details;
    if (!Array.isArray(details)) continue;
    for (const d of details as { '@type'?: unknown; retryDelay?: unknown }[]) {
      if (typeof d?.['@type'] !== 'string' || !d['@type'].endsWith(RETRY_INFO)) continue;
      const m = typeof d.retryDelay === 'string' ? DURATION.exec(d.retryDelay.trim()) : null;
      if (m) return Math.min(secondsToMs(m[1]!), DAY_MS);
    }
  }
  return undefined;
}

/**
 * Decimal seconds as ms, rounded up (after removing float noise: 1.1 * 1000 is 1100.0000000000002): early
 * retries are worse.
 */
function secondsToMs(text: string): number {
  return Math.ceil(Math.round(Number(text) * 1e6) / 1000);
}

/** Retry-After (delay-seconds, decimals tolerated, or an HTTP date) → ms from `nowMs`, in [0, 24 h]. */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined) return undefined;
  const text = raw.trim();
  let ms: number;
  if (DELAY_SECONDS.test(text)) {
    ms = secondsToMs(text);
  } else if (HTTP_DATE.test(text)) {
    ms = Date.parse(text) - nowMs;
  } else if (ASCTIME_DATE.test(text)) {
    ms = Date.parse(`${text} GMT`) - nowMs;
  } else {
    return undefined;
  }
  if (Number.isNaN(ms)) return undefined;
  return Math.min(Math.max(ms, 0), DAY_MS);
}
