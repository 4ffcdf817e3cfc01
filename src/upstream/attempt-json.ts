/** One non-streaming attempt: a chat answer (translated or relayed) or a plain JSON answer (embeddings). */
import type { Classified } from '../resilience/classify.js';
import { rateLimitCooldown } from '../resilience/classify.js';
import { skipSpace } from '../json-scan.js';
import { echoGuard } from '../observability/scrub.js';
import { CompletionBuilder } from '../streaming/completion-chunks.js';
import { createSseParser } from '../streaming/sse.js';
import type {
  AnswerText,
  ChatBody,
  ChunkSink,
  PreparedRequest,
  StreamContext,
  UpstreamErrorInfo,
  Usage,
} from './adapter.js';
import { reportedCompletion } from './adapter.js';
import { AttemptSignal } from './bounds.js';
import { rememberSource } from './body-text.js';
import { parseJsonObject, tokenCount } from './adapters/common.js';
import { embeddingsAnswerText } from './adapters/openai.js';
import {
  answerTokens,
  errorFrom,
  failure,
  inBandOverflow,
  MAX_ERROR_BODY_BYTES,
  MAX_JSON_BODY_BYTES,
  opensEventStream,
  thrown,
  type AttemptInput,
  type AttemptResult,
} from './attempt.js';
import { afterRefused, contextFor, fitted, refitted } from './attempt-refit.js';

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
function answerOfEventStream(text: string, input: AttemptInput, ctx: StreamContext): AnswerText | undefined {
  const start = skipSpace(text, 0); // its BOM, if any, is gone (text-handler.ts)
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
  const translator = input.upstream.provider.adapter.streamTranslator(sink, { ...ctx, includeUsage: true });
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
    const out = finish(res.text) ?? (chat && answerOfEventStream(res.text, chat.input, chat.ctx));
    if (!out) return failure(INVALID_JSON, totalMs, { status: res.statusCode });
    if (out.error) {
      const overflow = inBandOverflow(out.error, totalMs);
      if (overflow !== undefined) {
        // A refusal as too long in a 200's body is fitted as one sent as a 400 is.
        const first = chat?.firstStart ?? t0;
        const again = chat && refitted(chat.input, chat.sent, chat.refits, first, overflow);
        return chat && again
          ? afterRefused(overflow, attemptJsonBody(chat.input, again, chat.refits + 1, first))
          : overflow;
      }
      const limited = out.error.status === 429;
      return failure(limited ? ERROR_ANSWER_RATE_LIMITED : ERROR_ANSWER, totalMs, {
        status: res.statusCode,
        info: out.error,
        retryAfterMs: limited ? rateLimitCooldown(res.headers, res.text, Date.now()) : undefined,
      });
    }
    // A chat answer without a completion count is counted from its text, as a stream's is from its chunks.
    const counted =
      reportedCompletion(out.usage) === undefined && chat !== undefined
        ? answerTokens(parseJsonObject(out.body))
        : 0;
    // An upstream that echoes its key (a debugging proxy's extra field) must not hand it to the client.
    const echo = echoGuard(input.upstream.provider);
    const body = echo === undefined ? out.body : echo.scrubAnswer(out.body);
    return { ok: true, usage: out.usage, countedTokens: counted, body, ttftMs: totalMs, totalMs };
  } catch (err) {
    return thrown(err, input, sig, t0);
  } finally {
    sig.done();
  }
}

/** Embeddings usage: prompt tokens only (Voyage reports only `total_tokens`: every one is a prompt token). */
function embeddingUsage(json: unknown): Usage | undefined {
  const u = (json as { usage?: { prompt_tokens?: unknown; total_tokens?: unknown } } | null)?.usage;
  const n = tokenCount(u?.prompt_tokens) ?? tokenCount(u?.total_tokens);
  return n !== undefined ? { prompt_tokens: n, completion_tokens: 0, total_tokens: n } : undefined;
}

/**
 * A plain JSON request relayed as it is (embeddings): no dialect translation, and only the answer's usage
 * is parsed (an embeddings answer can be megabytes of floats).
 */
export function attemptPlainJson(
  input: Pick<AttemptInput, 'clientSignal' | 'deadline' | 'now' | 'upstream' | 'maxBodyBytes'>,
  prepared: PreparedRequest,
): Promise<AttemptResult> {
  return attemptJsonCall(input, prepared, (text) => embeddingsAnswerText(text, embeddingUsage));
}

/** A chat body as sent to an attempt's upstream: fitted to what it is known to refuse (param-fit.ts). */
interface ChatSend {
  readonly input: AttemptInput;
  readonly sent: ChatBody;
  /** How many times this attempt was already sent again, fitted. */
  readonly refits: number;
  /** When the attempt's first send started (`input.now()`): the provider's total_ms counts from there. */
  readonly firstStart: number | undefined;
  /** The answer's context for this send (contextFor). */
  readonly ctx: StreamContext;
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
  const ctx = contextFor(input, body);
  const chat: ChatSend = { input, sent: body, refits, firstStart, ctx };
  // A dialect relayed as it is reads only its usage; a translated one is parsed and re-serialised once.
  const asIs = adapter.chatResponseText;
  if (asIs) {
    // Stops the upstream was not sent: the dialect cuts its answer at them (ctx).
    const finish = ctx.localStops === undefined ? asIs : (text: string) => asIs(text, ctx);
    return attemptJsonCall(input, prepared, finish, chat);
  }
  return attemptJsonCall(
    input,
    prepared,
    (text) => {
      const json = parseJsonObject(text);
      if (!json) return undefined; // not a JSON object (an array, a proxy's HTML page): fail over
      rememberSource(json, text); // a translation may take values as written (a tool input's big numbers)
      const out = adapter.chatResponse(json, ctx);
      if (!out) return undefined; // an object that is no answer: fail over
      if (out.error) return { error: out.error };
      return { body: out.body === json ? text : JSON.stringify(out.body), usage: out.usage };
    },
    chat,
  );
}
