/** One streaming chat attempt: held back until its first content, then relayed to the client as it comes. */
import type { Classified } from '../resilience/classify.js';
import { codedError } from '../resilience/classify.js';
import { withoutBom } from '../json-scan.js';
import { echoGuard } from '../observability/scrub.js';
import { DeltaMask } from '../streaming/delta-mask.js';
import { chunksOfCompletion } from '../streaming/completion-chunks.js';
import { createSseParser } from '../streaming/sse.js';
import { DONE_FRAME, dataFrame, type SseWriter } from '../streaming/relay.js';
import {
  contentWeight,
  type ChatBody,
  type ChunkSink,
  type StreamContext,
  type UpstreamErrorInfo,
  type Usage,
} from './adapter.js';
import { AttemptSignal } from './bounds.js';
import { parseJsonObject } from './adapters/common.js';
import type { UpstreamResponse } from './client.js';
import { discard, readBody, relayChunks } from './response-body.js';
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

/**
 * Frames held back before a stream's first content delta (a role chunk, a usage-less `message_start`) are a
 * few hundred bytes. An upstream that sends only such frames would otherwise grow this buffer for as long as
 * it keeps sending (up to `total_ms`).
 */
const MAX_PREAMBLE_CHARS = 1024 * 1024;

/** UTF-8's byte order mark, which a body may open with (WHATWG SSE and JSON readers skip it). */
const BOM = [0xef, 0xbb, 0xbf];

/** An error event inside a stream: a 429 there is a rate limit (a cooldown), anything else an error. */
const STREAM_ERROR_EVENT: Classified = { outcome: 'error', retryable: true, reason: 'stream_error_event' };
const STREAM_RATE_LIMITED: Classified = {
  outcome: 'rate_limited',
  retryable: true,
  reason: 'stream_error_event',
};

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

/**
 * Whether a body starts as an event stream (a field name or a comment: `data`, `event`, `id`, `retry`, `:`)
 * or as anything else, read whole as a JSON answer (an object, or an array or HTML page that fails over as
 * malformed); undefined while only blanks, or only the first bytes of a byte order mark, have come.
 */
function bodyForm(chunk: Buffer): 'sse' | 'json' | undefined {
  const bom = Math.min(chunk.length, 3);
  let i = 0;
  while (i < bom && chunk[i] === BOM[i]) i++;
  if (i === chunk.length) return undefined; // EF or EF BB so far: the rest of the mark may follow
  if (i < 3) i = 0;
  while (
    i < chunk.length &&
    (chunk[i] === 0x20 || chunk[i] === 0x0a || chunk[i] === 0x0d || chunk[i] === 0x09)
  )
    i++;
  if (i === chunk.length) return undefined;
  return opensEventStream(chunk[i]!) ? 'sse' : 'json';
}

/**
 * The next bytes of a body whose form is undecided, after `held` (what the last call held back): the form,
 * the bytes to read now, and what to hold back instead. Only the first bytes of a byte order mark cut across
 * writes are held, until the rest comes; blanks are not (the SSE parser takes them as it takes any blank
 * line, so an upstream sending blanks forever grows nothing).
 */
export function firstBytes(
  held: Buffer | undefined,
  bytes: Buffer,
): { form: 'sse' | 'json' | undefined; chunk: Buffer; held: Buffer | undefined } {
  const chunk = held === undefined ? bytes : Buffer.concat([held, bytes]);
  const form = bodyForm(chunk);
  return form === undefined && chunk.length < BOM.length
    ? { form, chunk, held: chunk }
    : { form, chunk, held: undefined };
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
  ctx: StreamContext,
  sink: ChunkSink,
): { finished: boolean; tokens: number | undefined } | undefined {
  const { adapter } = input.upstream.provider;
  const json = parseJsonObject(text);
  if (!json) return undefined;
  const answer = adapter.chatResponseText
    ? adapter.chatResponseText(text, ctx)
    : adapter.chatResponse(json, ctx);
  if (!answer) return undefined;
  if (answer.error) {
    sink.error(answer.error);
    return { finished: false, tokens: undefined };
  }
  // The OpenAI dialect's answer is the text as it came (written anew only when cut at a stop); a translated
  // one is a new object.
  const completion =
    typeof answer.body !== 'string'
      ? (answer.body as Record<string, unknown>)
      : answer.body === text
        ? json
        : parseJsonObject(answer.body);
  if (completion === undefined || !Array.isArray(completion.choices)) return undefined;
  if (answer.usage) sink.usage(answer.usage);
  const { chunks, finished } = chunksOfCompletion(completion, input.stream.includeUsage);
  for (const chunk of chunks) sink.chunk(chunk.json, chunk.content ? contentWeight('') : 0); // counted from its text
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
  return attemptStreamBody(input, { body: fitted(input) }, 0, undefined, writer, headers, scrubber);
}

/**
 * `sent.body`: the body to send (the client's, fitted), let go of when the stream commits: nothing sends it
 * again, and a long prompt's copy was otherwise kept for the stream's whole life.
 */
async function attemptStreamBody(
  input: AttemptInput,
  sent: { body: ChatBody | undefined },
  refits: number,
  firstStart: number | undefined,
  writer: SseWriter,
  headers: () => Record<string, string>,
  scrubber: { scrub(text: string): string },
): Promise<AttemptResult> {
  const { upstream } = input;
  const { adapter, client, adapterProvider } = upstream.provider;
  const prepared = adapter.chatRequest(sent.body!, upstream.upstreamModel, adapterProvider);
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
    if (res.statusCode < 200 || res.statusCode >= 300) {
      const failed = await errorResult(res, input, sig, t0);
      const first = firstStart ?? t0;
      const again = refitted(input, sent.body!, refits, first, failed);
      if (again === undefined) return failed;
      sig.done();
      return await afterRefused(
        failed,
        attemptStreamBody(input, { body: again }, refits + 1, first, writer, headers, scrubber),
      );
    }

    let pending = '';
    let out = '';
    let ttftMs = 0;
    /** Body reads so far, and the reads that brought the first and the last content: one read, no pace. */
    let reads = 0;
    let commitRead = -1;
    let lastContentRead = -1;
    /** A stream that reports no usage is counted from its content chunks, each at least one token. */
    let contentChunks = 0;
    let contentTokens = 0;
    let usage: Usage | undefined;
    let streamError: UpstreamErrorInfo | undefined;
    let ended = false;
    let endedEarly = false;
    // An upstream that echoes its key (a debugging proxy's extra field) must not hand it to the client.
    const echo = echoGuard(upstream.provider);
    // A model that repeats the key does so a token a delta: found across deltas, not in one frame.
    const deltas = echo === undefined ? undefined : new DeltaMask(echo.forms);
    const sink: ChunkSink = {
      chunk(json, content, parsed) {
        const frame = dataFrame(
          echo === undefined ? json : echo.scrub(deltas?.frame(json, parsed, content > 0) ?? json),
        );
        if (committed) {
          out += frame;
        } else if (content > 0) {
          committed = true;
          commitRead = reads;
          ttftMs = input.now() - t0;
          sent.body = undefined; // no upstream is sent it again: not kept for the stream's life
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
        if (content > 0) {
          contentChunks++;
          contentTokens += content;
          lastContentRead = reads;
        }
      },
      usage(u) {
        usage = u;
      },
      error(e) {
        streamError = e;
      },
      end(early) {
        ended = true;
        endedEarly = early === true;
      },
    };
    const streamTokens = (): number => Math.max(contentChunks, Math.round(contentTokens));
    const ctx = contextFor(input, sent.body!);
    const translator = adapter.streamTranslator(sink, ctx);
    const parser = createSseParser((type, data) => translator.event(type, data));
    /** Undecided until the body's first byte: an upstream that ignored `stream` answers one JSON object. */
    let form: 'sse' | 'json' | undefined;
    /** A byte order mark's first bytes, while `form` is undecided. */
    let head: Buffer | undefined;
    let whole: Buffer[] | undefined;
    let wholeBytes = 0;

    /** A JSON answer given as chunks: some choice said why it stopped, and its tokens when it had no usage. */
    let json: { finished: boolean; tokens: number | undefined } | undefined;
    let readError: unknown;
    /** Time spent waiting for the client to take what it was sent (back-pressure): not the upstream's. */
    let heldMs = 0;
    try {
      await relayChunks(
        res.body,
        (bytes) => {
          sig.progress();
          reads++;
          let chunk = bytes;
          if (form === undefined) {
            ({ form, chunk, held: head } = firstBytes(head, bytes));
            if (head !== undefined) return undefined;
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
              const heldFrom = input.now();
              return drained.then(() => {
                heldMs += input.now() - heldFrom;
                sig.progress();
                return ended || streamError ? 'stop' : undefined;
              });
            }
          }
          return ended || streamError ? 'stop' : undefined;
        },
        client.drain,
      );
      // An answer ended before the upstream's (a stop applied here): the rest is not read for the
      // connection's sake, the request is let go.
      if (endedEarly) discard(res.body);
      if (whole) {
        json = answerAsChunks(withoutBom(Buffer.concat(whole).toString('utf8')), input, ctx, sink);
        if (json === undefined) readError = codedError('invalid_upstream_json', 'not a chat completion');
      } else if (!ended && !streamError) {
        parser.end();
        translator.close?.();
      }
    } catch (err) {
      readError = err;
    }
    // An answer already whole (each choice ended at a stop the gateway applies): the upstream failing or
    // closing after it does not cut it. A client that left is still a client gone.
    if (!ended && !streamError && !input.clientSignal.aborted && translator.complete?.() === true) {
      ended = true;
      readError = undefined;
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
      // `[DONE]` with text still held back for a choice that never said it finished: it goes first.
      const rest = deltas?.flush();
      if (rest !== undefined) writer.write(dataFrame(echo === undefined ? rest : echo.scrub(rest)));
      writer.end(DONE_FRAME);
      const countedTokens = json?.tokens ?? streamTokens();
      // Every content chunk in the read that brought the first (a buffering proxy in between): its
      // "generation" took microseconds, no pace for the statistics to learn (SPEC's TPOT is still observed).
      const oneRead = json === undefined && lastContentRead === commitRead;
      return { ok: true, usage, countedTokens, ttftMs, totalMs, heldMs, noPace: json !== undefined, oneRead };
    }

    let result: AttemptResult;
    if (readError !== undefined) result = thrown(readError, input, sig, t0, committed);
    else if (streamError) {
      const overflow = committed ? undefined : inBandOverflow(streamError, totalMs);
      // A refusal as too long sent in the stream (a proxy's way) is fitted as one sent as a 400 is.
      const again = overflow && refitted(input, sent.body!, refits, firstStart ?? t0, overflow);
      if (overflow && again) {
        sig.done();
        return await afterRefused(
          overflow,
          attemptStreamBody(input, { body: again }, refits + 1, firstStart ?? t0, writer, headers, scrubber),
        );
      }
      result =
        overflow ??
        failure(streamError.status === 429 ? STREAM_RATE_LIMITED : STREAM_ERROR_EVENT, totalMs, {
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
    if (committed && !result.ok)
      result = {
        ...result,
        relayedTokens: json?.tokens ?? streamTokens(),
        usage: usage ?? translator.usageSoFar?.(),
        ttftMs,
      };
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
