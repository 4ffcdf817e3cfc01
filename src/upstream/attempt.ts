/** What an attempt at an upstream takes and returns, and what its JSON and stream kinds share (failures, answer tokens). */
import type { Classified } from '../resilience/classify.js';
import { classifyError, classifyStatus, PAGE_NOT_FOUND, rateLimitCooldown } from '../resilience/classify.js';
import { approximateTextTokens } from '../routing/tokens.js';
import { withoutBom } from '../json-scan.js';
import { ANSWER_TEXT_FIELDS, fieldText } from '../text.js';
import type { Upstream } from '../runtime.js';
import type { ChatBody, StreamContext, UpstreamErrorInfo, Usage } from './adapter.js';
import type { Abort } from './abort.js';
import { CONTEXT_LENGTH_EXCEEDED } from './context-overflow.js';
import type { AttemptSignal } from './bounds.js';

/** Error bodies are read only this far: they are messages, not payloads. */
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** A non-streaming answer larger than this is refused rather than buffered. */
export const MAX_JSON_BODY_BYTES = 64 * 1024 * 1024;

export interface AttemptTiming {
  /** From sending the request to the first content token (streams) or the whole answer (JSON). */
  readonly ttftMs: number;
  readonly totalMs: number;
  /**
   * Of totalMs, the time a stream waited for its client to take what it was sent (back-pressure): left out of
   * the upstream's statistics (a slow reader made a 2,000 tokens/s upstream look like 180).
   */
  readonly heldMs?: number;
  /** The answer came whole (one JSON object to a stream request): no time per output token to measure. */
  readonly noPace?: boolean;
  /** A stream whose content all came in one read (a buffering proxy): its pace was not seen. */
  readonly oneRead?: boolean;
}

export type AttemptResult =
  | ({
      readonly ok: true;
      readonly usage: Usage | undefined;
      /** Completion tokens counted from content chunks when the upstream reports no usage. */
      readonly countedTokens: number;
      /** JSON answers: the body to send to the client. Streams: already sent. */
      readonly body?: string;
    } & AttemptTiming)
  | {
      readonly ok: false;
      readonly classified: Classified;
      /** The upstream's HTTP status, when it answered one. */
      readonly status: number | undefined;
      readonly retryAfterMs: number | undefined;
      /** What the upstream said, for relaying a client error. */
      readonly info: UpstreamErrorInfo | undefined;
      /** A stream that failed after its commit: the client has already been told, nothing to fail over. */
      readonly committed: boolean;
      /** The client went away: neither the upstream's fault nor its merit. */
      readonly clientGone: boolean;
      /**
       * Of totalMs, the wait for a pool connection (a client gone, a deadline: thrown); undefined when the
       * request never got one (the upstream never saw it). Absent where not measured.
       */
      readonly queuedMs?: number | undefined;
      /** The request's own deadline (routing.total_timeout_ms) cut this attempt: no time is left for another. */
      readonly deadlineReached: boolean;
      /** total_ms ran out while the attempt waited on its client, not its upstream: no fault of the upstream. */
      readonly clientSlow?: boolean;
      readonly totalMs: number;
      /** A stream cut after its commit: the completion tokens the client was sent (counted, as paid for). */
      readonly relayedTokens?: number;
      /** A stream cut after its commit: the usage it reported before (Anthropic's input at message_start). */
      readonly usage?: Usage | undefined;
      /** A stream cut after its commit: when its first content went out, ms after the attempt began. */
      readonly ttftMs?: number;
    };

export interface AttemptInput {
  readonly upstream: Upstream;
  readonly body: ChatBody;
  /** Fires when the client goes away. */
  readonly clientSignal: Abort;
  /** Absolute deadline (ms on `now()`'s clock) for this attempt. */
  readonly deadline: number;
  readonly now: () => number;
  readonly stream: StreamContext;
  /** A non-streaming answer larger than this fails (`body_too_large`); default MAX_JSON_BODY_BYTES. */
  readonly maxBodyBytes?: number;
}

export function failure(
  classified: Classified,
  totalMs: number,
  extra: Partial<{
    status: number;
    retryAfterMs: number;
    info: UpstreamErrorInfo;
    committed: boolean;
    clientGone: boolean;
    deadlineReached: boolean;
    clientSlow: boolean;
    queuedMs: number | undefined;
  }> = {},
): AttemptResult {
  return {
    ok: false,
    classified,
    status: extra.status,
    retryAfterMs: extra.retryAfterMs,
    info: extra.info,
    committed: extra.committed ?? false,
    clientGone: extra.clientGone ?? false,
    deadlineReached: extra.deadlineReached ?? false,
    clientSlow: extra.clientSlow ?? false,
    totalMs,
    ...('queuedMs' in extra ? { queuedMs: extra.queuedMs } : {}),
  };
}

/**
 * An error sent in-band (an event before a stream's content, a 200 whose body is the error) that refuses the
 * request as past the model's context window: the request's, as the same refusal in a 400 is (failed over
 * only to a larger window). Undefined for any other error.
 */
export function inBandOverflow(info: UpstreamErrorInfo, totalMs: number): AttemptResult | undefined {
  if (info.code !== CONTEXT_LENGTH_EXCEEDED) return undefined;
  return failure(classifyStatus(400), totalMs, { status: 400, info: { ...info, status: 400 } });
}

const TOTAL_TIMEOUT: Classified = { outcome: 'timeout', retryable: true, reason: 'total_timeout' };
const CLIENT_GONE: Classified = { outcome: 'client_error', retryable: false, reason: 'client_closed' };

export function thrown(
  err: unknown,
  input: Pick<AttemptInput, 'clientSignal' | 'now'>,
  sig: AttemptSignal,
  t0: number,
  committed = false,
): AttemptResult {
  const totalMs = input.now() - t0;
  // How long of it was the pool's (undefined: it never reached the upstream): statistics need the rest.
  const queuedMs = sig.queuedMs();
  if (input.clientSignal.aborted)
    return failure(CLIENT_GONE, totalMs, { clientGone: true, committed, queuedMs });
  if (sig.timedOut())
    return failure(TOTAL_TIMEOUT, totalMs, {
      committed,
      deadlineReached: sig.deadlineReached(),
      clientSlow: sig.clientHeld(),
      queuedMs,
    });
  return failure(classifyError(err), totalMs, { committed });
}

/** A non-2xx answer, classified, with what the upstream said (for relaying a client error). */
export function errorFrom(
  status: number,
  headers: Readonly<Record<string, string | string[] | undefined>>,
  text: string,
  input: Pick<AttemptInput, 'upstream' | 'now'>,
  t0: number,
): AttemptResult {
  const info = input.upstream.provider.adapter.errorInfo(status, text);
  const retryAfterMs = status === 429 ? rateLimitCooldown(headers, text, Date.now()) : undefined;
  // Classified by what the body says it is where a dialect says more than its status (Anthropic's 400 for
  // a drained account is a 402).
  const classified = status === 404 && !isApiError(text) ? PAGE_NOT_FOUND : classifyStatus(info.status);
  return failure(classified, input.now() - t0, { status, retryAfterMs, info });
}

/**
 * An API's error about the request: an `error` member (OpenAI's, Ollama's, Anthropic's, Google's list of
 * one), vLLM's `"object": "error"`, or a `detail`/`message` about the model. A 404 with anything else (nginx's
 * HTML page, Go's "404 page not found", Envoy's empty body, FastAPI's bare `{"detail":"Not Found"}` of a
 * base_url missing /v1, Kong's "no Route matched") is a path with nothing behind it: the upstream's address
 * is wrong, not the client's model.
 */
function isApiError(text: string): boolean {
  const body = withoutBom(text).trim();
  const c = body.charCodeAt(0);
  if (c !== 0x7b /* { */ && c !== 0x5b /* [ */) return false;
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return false;
  }
  const o: unknown = Array.isArray(parsed) ? parsed[0] : parsed;
  if (o === null || typeof o !== 'object') return false;
  const e = o as { error?: unknown; object?: unknown; detail?: unknown; message?: unknown };
  if (e.error !== undefined || e.object === 'error') return true;
  const said = typeof e.detail === 'string' ? e.detail : typeof e.message === 'string' ? e.message : '';
  return /model/i.test(said);
}

/** Completion tokens estimated from a chat answer's text: every choice's content, reasoning and tool calls. */
export function answerTokens(completion: Record<string, unknown> | undefined): number {
  const choices = completion?.choices;
  if (!Array.isArray(choices)) return 0;
  let text = '';
  for (const choice of choices as { message?: Record<string, unknown> | null }[]) {
    const m = choice?.message;
    if (m === null || typeof m !== 'object') continue;
    for (const key of ANSWER_TEXT_FIELDS) text += fieldText(m[key]);
    if (Array.isArray(m.tool_calls))
      for (const call of m.tool_calls as { function?: { name?: unknown; arguments?: unknown } }[]) {
        const fn = call?.function;
        if (typeof fn?.name === 'string') text += fn.name;
        if (typeof fn?.arguments === 'string') text += fn.arguments;
      }
  }
  return approximateTextTokens(text);
}

/** A body's first non-blank character opens an event stream: a field (`data`, `event`, `id`, `retry`) or `:`. */
export function opensEventStream(c: number): boolean {
  return c === 0x64 || c === 0x65 || c === 0x69 || c === 0x72 || c === 0x3a;
}
