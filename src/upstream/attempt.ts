import type { Classified } from '../resilience/classify.js';
import { classifyError, classifyStatus, codedError, retryAfterFromHeaders } from '../resilience/classify.js';
import { skipSpace, withoutBom } from '../json-scan.js';
import { approximateTextTokens } from '../routing/tokens.js';
import type { Upstream } from '../runtime.js';
import { chunksOfCompletion, CompletionBuilder } from '../streaming/completion-chunks.js';
import { createSseParser } from '../streaming/sse.js';
import { DONE_FRAME, dataFrame, type SseWriter } from '../streaming/relay.js';
import type {
  AnswerText,
  ChatBody,
  ChunkSink,
  PreparedRequest,
  StreamContext,
  UpstreamErrorInfo,
  Usage,
} from './adapter.js';
import type { Abort } from './abort.js';
import { AttemptSignal } from './bounds.js';
import { parseJsonObject, tokenCount } from './adapters/common.js';
import { embeddingsAnswerText } from './adapters/openai.js';
import { readBody, relayChunks, type UpstreamResponse } from './client.js';

/** Error bodies are read only this far: they are messages, not payloads. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** After a stream's last event, how long the rest of its body may take before its connection is dropped. */
const DRAIN_AFTER_END_MS = 1_000;
/** A non-streaming answer larger than this is refused rather than buffered. */
const MAX_JSON_BODY_BYTES = 64 * 1024 * 1024;
/**
 * Frames held back before a stream's first content delta (a role chunk, a usage-less `message_start`) are a
 * few hundred bytes. An upstream that sends only such frames would otherwise grow this buffer for as long as
 * it keeps sending (up to `total_ms`).
 */
const MAX_PREAMBLE_CHARS = 1024 * 1024;

export interface AttemptTiming {
  /** From sending the request to the first content token (streams) or the whole answer (JSON). */
  readonly ttftMs: number;
  readonly totalMs: number;
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
      /** The request's own deadline (routing.total_timeout_ms) cut this attempt: no time is left for another. */
      readonly deadlineReached: boolean;
      readonly totalMs: number;
      /** A stream cut after its commit: the completion tokens the client was sent (counted, as paid for). */
      readonly relayedTokens?: number;
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

function failure(
  classified: Classified,
  totalMs: number,
  extra: Partial<{
    status: number;
    retryAfterMs: number;
    info: UpstreamErrorInfo;
    committed: boolean;
    clientGone: boolean;
    deadlineReached: boolean;
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
    totalMs,
  };
}

/** An error event inside a stream: a 429 there is a rate limit (a cooldown), anything else an error. */
const STREAM_ERROR_EVENT: Classified = { outcome: 'error', retryable: true, reason: 'stream_error_event' };
const STREAM_RATE_LIMITED: Classified = {
  outcome: 'rate_limited',
  retryable: true,
  reason: 'stream_error_event',
};
const TOTAL_TIMEOUT: Classified = { outcome: 'timeout', retryable: true, reason: 'total_timeout' };
const CLIENT_GONE: Classified = { outcome: 'client_error', retryable: false, reason: 'client_closed' };

function thrown(
  err: unknown,
  input: Pick<AttemptInput, 'clientSignal' | 'now'>,
  sig: AttemptSignal,
  t0: number,
  committed = false,
): AttemptResult {
  const totalMs = input.now() - t0;
  if (input.clientSignal.aborted) return failure(CLIENT_GONE, totalMs, { clientGone: true, committed });
  if (sig.timedOut())
    return failure(TOTAL_TIMEOUT, totalMs, { committed, deadlineReached: sig.deadlineReached() });
  return failure(classifyError(err), totalMs, { committed });
}

async function errorResult(
  res: UpstreamResponse,
  input: AttemptInput,
  sig: AttemptSignal,
  t0: number,
): Promise<AttemptResult> {
  let text = '';
  try {
    text = await readBody(res, MAX_ERROR_BODY_BYTES, sig);
  } catch {
    /* an unreadable error body still has its status */
  }
  return errorFrom(res.statusCode, res.headers, text, input, t0);
}

/** A non-2xx answer, classified, with what the upstream said (for relaying a client error). */
function errorFrom(
  status: number,
  headers: Readonly<Record<string, string | string[] | undefined>>,
  text: string,
  input: Pick<AttemptInput, 'upstream' | 'now'>,
  t0: number,
): AttemptResult {
  const info = input.upstream.provider.adapter.errorInfo(status, text);
  const retryAfterMs = retryAfterFromHeaders(headers, Date.now());
  return failure(classifyStatus(status), input.now() - t0, { status, retryAfterMs, info });
}

const INVALID_JSON: Classified = { outcome: 'error', retryable: true, reason: 'invalid_upstream_json' };
/** A 200 whose body is an error object instead of an answer: a 429 there is a rate limit, as in a stream. */
const ERROR_ANSWER: Classified = { outcome: 'error', retryable: true, reason: 'error_in_answer' };
const ERROR_ANSWER_RATE_LIMITED: Classified = {
  outcome: 'rate_limited',
  retryable: true,
  reason: 'error_in_answer',
};

/**
 * A non-streaming chat request answered with an event stream (a server or proxy that always streams): its
 * chunks merged into the answer a non-streaming call gets. A stream cut before its end, or with no choice
 * finished, is no answer (undefined: it fails over as before); an error event in it is the answer's error.
 */
function answerOfEventStream(text: string, input: AttemptInput): AnswerText | undefined {
  const start = skipSpace(text, 0); // its BOM, if any, is gone (client.ts TextHandler)
  if (start === text.length || !opensEventStream(text.charCodeAt(start))) return undefined;
  const built = new CompletionBuilder();
  let ended = false;
  let error: UpstreamErrorInfo | undefined;
  let usage: Usage | undefined;
  const sink: ChunkSink = {
    chunk(json) {
      const chunk = parseJsonObject(json);
      if (chunk) built.add(chunk);
    },
    usage(u) {
      usage = u;
    },
    error(e) {
      error = e;
    },
    end() {
      ended = true;
    },
  };
  const translator = input.upstream.provider.adapter.streamTranslator(sink, {
    ...input.stream,
    includeUsage: true,
  });
  const parser = createSseParser((type, data) => {
    if (!ended && !error) translator.event(type, data);
  });
  try {
    parser.feed(text);
    parser.end();
  } catch {
    return undefined; // an event past the parser's bound
  }
  if (!ended && !error) translator.close?.();
  if (error) return { error };
  if (!ended || !built.finished()) return undefined;
  const completion = built.completion();
  // Usage the dialect reported outside a `usage` field (Groq's `x_groq`) is the answer's too.
  if (completion.usage === undefined && usage !== undefined) completion.usage = usage;
  return { body: JSON.stringify(completion), usage };
}

/**
 * One non-streaming POST: sends, reads the bounded body under the idle bound and hands the text to
 * `finish` for the answer (undefined: not a JSON object, which fails over). Every failure comes back
 * classified for failover.
 */
async function attemptJsonCall(
  input: Pick<AttemptInput, 'clientSignal' | 'deadline' | 'now' | 'upstream' | 'maxBodyBytes'>,
  prepared: PreparedRequest,
  finish: (text: string) => AnswerText | undefined,
  chat?: ChatSend,
): Promise<AttemptResult> {
  const t0 = input.now();
  const sig = new AttemptSignal(input.clientSignal, input.deadline, t0, input.upstream, chat?.firstStart);
  try {
    const res = await input.upstream.provider.client.requestText({
      method: 'POST',
      path: prepared.path,
      headers: prepared.headers,
      body: prepared.body,
      signal: sig,
      maxBytes: input.maxBodyBytes ?? MAX_JSON_BODY_BYTES,
      errorMaxBytes: MAX_ERROR_BODY_BYTES,
      watch: sig,
    });
    if (res.statusCode < 200 || res.statusCode >= 300) {
      const failed = errorFrom(res.statusCode, res.headers, res.text, input, t0);
      if (chat === undefined) return failed;
      const first = chat.firstStart ?? t0;
      const again = refitted(chat.input, chat.sent, chat.refits, first, failed);
      return again
        ? afterRefused(failed, attemptJsonBody(chat.input, again, chat.refits + 1, first))
        : failed;
    }
    const totalMs = input.now() - t0;
    const out = finish(res.text) ?? (chat && answerOfEventStream(res.text, chat.input));
    if (!out) return failure(INVALID_JSON, totalMs, { status: res.statusCode });
    if (out.error) {
      const limited = out.error.status === 429;
      return failure(limited ? ERROR_ANSWER_RATE_LIMITED : ERROR_ANSWER, totalMs, {
        status: res.statusCode,
        info: out.error,
        retryAfterMs: limited ? retryAfterFromHeaders(res.headers, Date.now()) : undefined,
      });
    }
    // A chat answer without usage is counted from its text, as a stream's is from its chunks.
    const counted =
      out.usage === undefined && chat !== undefined ? answerTokens(parseJsonObject(out.body)) : 0;
    return { ok: true, usage: out.usage, countedTokens: counted, body: out.body, ttftMs: totalMs, totalMs };
  } catch (err) {
    return thrown(err, input, sig, t0);
  } finally {
    sig.done();
  }
}

/** Completion tokens estimated from a chat answer's text: every choice's content, reasoning and tool calls. */
function answerTokens(completion: Record<string, unknown> | undefined): number {
  const choices = completion?.choices;
  if (!Array.isArray(choices)) return 0;
  let text = '';
  for (const choice of choices as { message?: Record<string, unknown> | null }[]) {
    const m = choice?.message;
    if (m === null || typeof m !== 'object') continue;
    for (const key of ['content', 'refusal', 'reasoning_content', 'reasoning'])
      if (typeof m[key] === 'string') text += m[key];
    if (Array.isArray(m.tool_calls))
      for (const call of m.tool_calls as { function?: { name?: unknown; arguments?: unknown } }[]) {
        const fn = call?.function;
        if (typeof fn?.name === 'string') text += fn.name;
        if (typeof fn?.arguments === 'string') text += fn.arguments;
      }
  }
  return approximateTextTokens(text);
}

/** Embeddings usage: prompt tokens only. */
function embeddingUsage(json: unknown): Usage | undefined {
  const n = tokenCount((json as { usage?: { prompt_tokens?: unknown } } | null)?.usage?.prompt_tokens);
  return n !== undefined ? { prompt_tokens: n, completion_tokens: 0, total_tokens: n } : undefined;
}

/**
 * A plain JSON request relayed as it is (embeddings): no dialect translation, and only the answer's usage
 * is parsed (an embeddings answer can be megabytes of floats).
 */
export function attemptPlainJson(
  input: Pick<AttemptInput, 'clientSignal' | 'deadline' | 'now' | 'upstream'>,
  prepared: PreparedRequest,
): Promise<AttemptResult> {
  return attemptJsonCall(input, prepared, (text) => embeddingsAnswerText(text, embeddingUsage));
}

/** How many times one attempt is sent again, each time fitted to one more field its upstream refused. */
const MAX_REFITS = 4;

/** A chat body as sent to an attempt's upstream: fitted to what it is known to refuse (param-fit.ts). */
interface ChatSend {
  readonly input: AttemptInput;
  readonly sent: ChatBody;
  /** How many times this attempt was already sent again, fitted. */
  readonly refits: number;
  /** When the attempt's first send started (`input.now()`): the provider's total_ms counts from there. */
  readonly firstStart: number | undefined;
}

/**
 * After a failed send of `sent`: the body to send again, when the upstream refused a field a fit exists for,
 * the fit changes what is sent, and the attempt still has time (the request's deadline, and the provider's
 * total_ms from the first send: a slow refusing upstream cannot hold an attempt once per fit). Undefined:
 * the failure stands. A fit is not a failover: the same upstream answers.
 */
function refitted(
  input: AttemptInput,
  sent: ChatBody,
  refits: number,
  firstStart: number,
  failed: AttemptResult,
): ChatBody | undefined {
  const fit = input.upstream.fit;
  if (refits >= MAX_REFITS || failed.ok || failed.status === undefined) return undefined;
  const now = input.now();
  if (failed.status >= 500 || now >= input.deadline) return undefined;
  if (now - firstStart >= input.upstream.provider.config.timeouts.total_ms) return undefined;
  const param = fit.learn(failed.info, sent, input.body);
  if (param === undefined) return undefined;
  const next = fit.apply(input.body);
  // The same field as it was just refused (a fit that cannot change it): sending it again would be refused again.
  return next[param] === sent[param] && Object.hasOwn(next, param) === Object.hasOwn(sent, param)
    ? undefined
    : next;
}

/** The answer to a send after a refused one: the refused send's time counts as time waiting on the upstream. */
async function afterRefused(refused: AttemptResult, next: Promise<AttemptResult>): Promise<AttemptResult> {
  const result = await next;
  return { ...result, totalMs: result.totalMs + refused.totalMs };
}

/** The client's body as this attempt's upstream takes it. */
function fitted(input: AttemptInput): ChatBody {
  return input.upstream.fit.apply(input.body);
}

/** One non-streaming chat attempt. The answer is returned, not sent: the caller owns the response. */
export function attemptJson(input: AttemptInput): Promise<AttemptResult> {
  return attemptJsonBody(input, fitted(input), 0, undefined);
}

function attemptJsonBody(
  input: AttemptInput,
  body: ChatBody,
  refits: number,
  firstStart: number | undefined,
): Promise<AttemptResult> {
  const { adapter, adapterProvider } = input.upstream.provider;
  const prepared = adapter.chatRequest(body, input.upstream.upstreamModel, adapterProvider);
  const chat: ChatSend = { input, sent: body, refits, firstStart };
  // A dialect relayed as it is reads only its usage; a translated one is parsed and re-serialised once.
  if (adapter.chatResponseText) return attemptJsonCall(input, prepared, adapter.chatResponseText, chat);
  return attemptJsonCall(
    input,
    prepared,
    (text) => {
      const json = parseJsonObject(text);
      if (!json) return undefined; // not a JSON object (an array, a proxy's HTML page): fail over
      const out = adapter.chatResponse(json, input.stream);
      if (!out) return undefined; // an object that is no answer: fail over
      if (out.error) return { error: out.error };
      return { body: out.body === json ? text : JSON.stringify(out.body), usage: out.usage };
    },
    chat,
  );
}

/**
 * Whether a body starts as an event stream (a field name or a comment: `data`, `event`, `id`, `retry`, `:`)
 * or as anything else, read whole as a JSON answer (an object, or an array or HTML page that fails over as
 * malformed); undefined while only blanks have come.
 */
function bodyForm(chunk: Buffer): 'sse' | 'json' | undefined {
  let i = chunk.length >= 3 && chunk[0] === 0xef && chunk[1] === 0xbb && chunk[2] === 0xbf ? 3 : 0;
  while (
    i < chunk.length &&
    (chunk[i] === 0x20 || chunk[i] === 0x0a || chunk[i] === 0x0d || chunk[i] === 0x09)
  )
    i++;
  if (i === chunk.length) return undefined;
  return opensEventStream(chunk[i]!) ? 'sse' : 'json';
}

/** A body's first non-blank character opens an event stream: a field (`data`, `event`, `id`, `retry`) or `:`. */
function opensEventStream(c: number): boolean {
  return c === 0x64 || c === 0x65 || c === 0x69 || c === 0x72 || c === 0x3a;
}

/**
 * A streaming request answered with one JSON answer (a server or proxy that ignores `stream`): the answer,
 * read as a non-streaming one would be, given to `sink` as the chunks of a stream and ended. Returns whether
 * some choice said why it stopped, and its completion tokens estimated from its text when it reports no
 * usage; undefined when the body is no answer (it fails over as malformed). An error object instead of an
 * answer goes to `sink.error`.
 */
function answerAsChunks(
  text: string,
  input: AttemptInput,
  sink: ChunkSink,
): { finished: boolean; tokens: number | undefined } | undefined {
  const { adapter } = input.upstream.provider;
  const json = parseJsonObject(text);
  if (!json) return undefined;
  const answer = adapter.chatResponseText
    ? adapter.chatResponseText(text)
    : adapter.chatResponse(json, input.stream);
  if (!answer) return undefined;
  if (answer.error) {
    sink.error(answer.error);
    return { finished: false, tokens: undefined };
  }
  // The OpenAI dialect's answer is the text as it came; a translated one is a new object.
  const completion = typeof answer.body === 'string' ? json : (answer.body as Record<string, unknown>);
  if (!Array.isArray(completion.choices)) return undefined;
  if (answer.usage) sink.usage(answer.usage);
  const { chunks, finished } = chunksOfCompletion(completion, input.stream.includeUsage);
  for (const chunk of chunks) sink.chunk(chunk.json, chunk.content);
  sink.end();
  return { finished, tokens: answer.usage ? undefined : answerTokens(completion) };
}

/**
 * One streaming chat attempt. Preamble frames are held back until the first content delta; only then are
 * status and headers sent (`headers()` is asked at that moment, so it carries this attempt's trail).
 * Before that point every failure is returned for failover; after it, the stream is ended with an
 * OpenAI-shaped error event and no `[DONE]`, so the client can tell a cut stream from a finished one.
 */
export function attemptStream(
  input: AttemptInput,
  writer: SseWriter,
  headers: () => Record<string, string>,
  scrubber: { scrub(text: string): string },
): Promise<AttemptResult> {
  return attemptStreamBody(input, fitted(input), 0, undefined, writer, headers, scrubber);
}

async function attemptStreamBody(
  input: AttemptInput,
  body: ChatBody,
  refits: number,
  firstStart: number | undefined,
  writer: SseWriter,
  headers: () => Record<string, string>,
  scrubber: { scrub(text: string): string },
): Promise<AttemptResult> {
  const { upstream } = input;
  const { adapter, client, adapterProvider } = upstream.provider;
  const prepared = adapter.chatRequest(body, upstream.upstreamModel, adapterProvider);
  const t0 = input.now();
  const sig = new AttemptSignal(input.clientSignal, input.deadline, t0, input.upstream, firstStart);
  let committed = false;
  try {
    const res = await client.request({
      method: 'POST',
      path: prepared.path,
      headers: prepared.headers,
      body: prepared.body,
      signal: sig,
      watch: sig,
    });
    sig.headers();
    if (res.statusCode < 200 || res.statusCode >= 300) {
      const failed = await errorResult(res, input, sig, t0);
      const first = firstStart ?? t0;
      const again = refitted(input, body, refits, first, failed);
      if (again === undefined) return failed;
      sig.done();
      return await afterRefused(
        failed,
        attemptStreamBody(input, again, refits + 1, first, writer, headers, scrubber),
      );
    }

    let pending = '';
    let out = '';
    let ttftMs = 0;
    let contentChunks = 0;
    let usage: Usage | undefined;
    let streamError: UpstreamErrorInfo | undefined;
    let ended = false;
    const sink: ChunkSink = {
      chunk(json, content) {
        const frame = dataFrame(json);
        if (committed) {
          out += frame;
        } else if (content) {
          committed = true;
          ttftMs = input.now() - t0;
          writer.commit(headers());
          out = pending + frame;
          pending = '';
        } else {
          pending += frame;
          if (pending.length > MAX_PREAMBLE_CHARS)
            throw codedError(
              'preamble_too_large',
              `more than ${MAX_PREAMBLE_CHARS} characters of frames before any content`,
            );
        }
        if (content) contentChunks++;
      },
      usage(u) {
        usage = u;
      },
      error(e) {
        streamError = e;
      },
      end() {
        ended = true;
      },
    };
    const translator = adapter.streamTranslator(sink, input.stream);
    const parser = createSseParser((type, data) => translator.event(type, data));
    /** Undecided until the body's first byte: an upstream that ignored `stream` answers one JSON object. */
    let form: 'sse' | 'json' | undefined;
    let whole: Buffer[] | undefined;
    let wholeBytes = 0;

    /** A JSON answer given as chunks: some choice said why it stopped, and its tokens when it had no usage. */
    let json: { finished: boolean; tokens: number | undefined } | undefined;
    let readError: unknown;
    try {
      await relayChunks(
        res.body,
        (chunk) => {
          sig.progress();
          if (form === undefined) {
            form = bodyForm(chunk);
            if (form === 'json') whole = [];
          }
          if (whole) {
            wholeBytes += chunk.length;
            if (wholeBytes > (input.maxBodyBytes ?? MAX_JSON_BODY_BYTES))
              throw codedError('body_too_large', 'upstream body larger than its bound');
            whole.push(chunk);
            return undefined;
          }
          parser.feed(chunk);
          if (out !== '') {
            writer.write(out);
            out = '';
            const drained = writer.drain();
            if (drained) {
              sig.holdIdle();
              return drained.then(() => {
                sig.progress();
                return ended || streamError ? 'stop' : undefined;
              });
            }
          }
          return ended || streamError ? 'stop' : undefined;
        },
        DRAIN_AFTER_END_MS,
      );
      if (whole) {
        json = answerAsChunks(withoutBom(Buffer.concat(whole).toString('utf8')), input, sink);
        if (json === undefined) readError = codedError('invalid_upstream_json', 'not a chat completion');
      } else if (!ended && !streamError) {
        parser.end();
        translator.close?.();
      }
    } catch (err) {
      readError = err;
    }
    if (out !== '') writer.write(out);
    const totalMs = input.now() - t0;

    // `[DONE]` before any content or finish_reason: no answer, failed over as a close before content (SPEC §2).
    const noAnswer =
      ended && !committed && (json === undefined ? translator.saidNoFinish?.() === true : !json.finished);
    if (ended && !streamError && !noAnswer) {
      if (!committed) {
        // A legitimately empty answer: commit now with whatever preamble there was.
        committed = true;
        ttftMs = totalMs;
        writer.commit(headers());
        writer.write(pending);
      }
      writer.end(DONE_FRAME);
      return { ok: true, usage, countedTokens: json?.tokens ?? contentChunks, ttftMs, totalMs };
    }

    let result: AttemptResult;
    if (readError !== undefined) result = thrown(readError, input, sig, t0, committed);
    else if (streamError) {
      result = failure(streamError.status === 429 ? STREAM_RATE_LIMITED : STREAM_ERROR_EVENT, totalMs, {
        info: streamError,
        committed,
      });
    } else {
      result = failure(
        {
          outcome: 'error',
          retryable: true,
          reason: committed ? 'stream_cut' : 'stream_ended_before_content',
        },
        totalMs,
        { committed },
      );
    }
    if (committed && !result.ok) result = { ...result, relayedTokens: json?.tokens ?? contentChunks, ttftMs };
    if (committed && !result.ok && !result.clientGone) {
      const message = streamError
        ? `upstream ${upstream.id} failed mid-stream: ${scrubber.scrub(streamError.message)}`
        : `upstream ${upstream.id} stream interrupted (${result.classified.reason})`;
      writer.end(
        dataFrame(
          JSON.stringify({
            error: { message, type: 'upstream_error', param: null, code: 'stream_interrupted' },
          }),
        ),
      );
    }
    return result;
  } catch (err) {
    return thrown(err, input, sig, t0, committed);
  } finally {
    sig.done();
  }
}
