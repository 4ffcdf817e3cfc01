import type {
  AdapterProvider,
  AnswerText,
  ChatAdapter,
  ChatBody,
  ChunkSink,
  PreparedRequest,
  StreamContext,
  StreamTranslator,
  UpstreamErrorInfo,
  Usage,
} from '../adapter.js';
import { UNREPORTED, contentWeight } from '../adapter.js';
import { ChunkStops, cutAnswer } from './local-stops.js';
import { CONTEXT_LENGTH_EXCEEDED, saysContextOverflow } from '../context-overflow.js';
import { closingBrace, skipSpace, skipSpaceBack } from '../../json-scan.js';
import { sourceWithEdits, sourceWithModel } from '../body-text.js';
import { ANSWER_TEXT_FIELDS, fieldText } from '../../text.js';
import {
  htmlPageText,
  openAiErrorTypeForStatus,
  parseJsonObject,
  providerHeaders,
  tokenCount,
  truncateMessage,
} from './common.js';

/**
 * The OpenAI dialect (OpenAI itself and every compatible server: vLLM, Ollama, LM Studio, Azure-style
 * proxies). The body passes through untouched but for `model`; answers are relayed as the upstream wrote
 * them — chunks are parsed only to see whether they carry content or usage, never re-serialised.
 */
export const openaiAdapter: ChatAdapter = {
  kind: 'openai',

  chatRequest(body: ChatBody, model: string, provider: AdapterProvider): PreparedRequest {
    return {
      path: '/chat/completions',
      headers: openaiHeaders(provider),
      body: Buffer.from(stringifyWithModel(withoutThinkingBlocks(body), model)),
    };
  },

  chatResponse(json: unknown): { body: unknown; usage: Usage | undefined } {
    return { body: json, usage: readUsage(json) };
  },

  chatResponseText(text: string, ctx?: StreamContext): AnswerText | undefined {
    const answer = answerWithList(text, CHOICES_LIST, readUsage);
    return ctx?.localStops === undefined ? answer : cutAnswer(answer, ctx.localStops);
  },

  streamTranslator(sink: ChunkSink, ctx: StreamContext): StreamTranslator {
    return new OpenAiStream(sink, ctx);
  },

  errorInfo(status: number, bodyText: string): UpstreamErrorInfo {
    const info = errorFromBody(status, parseJsonObject(bodyText) ?? firstOfList(bodyText), bodyText);
    // OpenAI's drained account is a 429 `insufficient_quota`: no rate limit (no wait ends it; the SDKs retry
    // a 429), our account's credit, as a 402 is: failed over, and never a Retry-After to the client.
    if (status === 429 && (info.code === 'insufficient_quota' || info.type === 'insufficient_quota'))
      return { ...info, status: 402 };
    return info;
  },
};

/**
 * `thinking_blocks` are the gateway's own field (Claude's signed thinking, handed to the client so it can send
 * it back to Claude): a strict OpenAI-compatible server (older OpenAI models, Groq) refuses a message with a
 * property it does not know, so a conversation that moved to one from Claude would get a 400. Only then is
 * the body copied, without them; every other field, `reasoning_content` included, goes as the client sent it.
 */
function withoutThinkingBlocks(body: ChatBody): ChatBody {
  if (!body.messages.some(hasThinkingBlocks)) return body;
  const messages = body.messages.map((m) => {
    if (!hasThinkingBlocks(m)) return m;
    const { thinking_blocks: _dropped, ...rest } = m as Record<string, unknown>;
    return rest;
  });
  return { ...body, messages };
}

function hasThinkingBlocks(message: unknown): boolean {
  return message !== null && typeof message === 'object' && Object.hasOwn(message, 'thinking_blocks');
}

/**
 * A chat or embeddings body as JSON with `model` set to the upstream's name: the client's own text with the
 * model spliced in where it can be, or with only the members a fit changed rewritten (body-text.ts), else a
 * serialisation. For that, `model` is set and restored on the parsed body rather than copied with a spread:
 * the copy cost more than the serialisation on Node 20. The body belongs to this request, and nothing runs
 * between the set and the restore.
 */
export function stringifyWithModel(body: Record<string, unknown> & { model: string }, model: string): string {
  const spliced = sourceWithModel(body, model) ?? sourceWithEdits(body, model);
  if (spliced !== undefined) return spliced;
  const prev = body.model;
  if (prev === model) return JSON.stringify(body);
  body.model = model;
  try {
    return JSON.stringify(body);
  } finally {
    body.model = prev;
  }
}

const HEADERS = new WeakMap<AdapterProvider, Readonly<Record<string, string>>>();

/** The request headers of an OpenAI-dialect provider (chat, embeddings): bearer auth. */
export function openaiHeaders(provider: AdapterProvider): Record<string, string> {
  return providerHeaders(HEADERS, provider, bearer);
}

function bearer(provider: AdapterProvider, into: Record<string, string>): void {
  if (provider.apiKey) into.authorization = `Bearer ${provider.apiKey}`;
}

/**
 * A content delta: text (a string, or a list of parts: Mistral's thinking), a tool call, a refusal, audio
 * (`modalities: ["audio"]`: transcript or data parts), images (`delta.images`: OpenRouter) or reasoning
 * (`reasoning_content`, `reasoning`: vLLM, DeepSeek, Ollama, OpenRouter) — the point a stream commits to its
 * upstream. Audio, images and reasoning can run for megabytes before any text: held back, they reached the
 * client only at the end, or failed over as `preamble_too_large`. Returned as the tokens the
 * chunk's content holds, estimated (`contentWeight`); 0 when it has none (ChunkSink.chunk).
 */
function contentTokens(chunk: Record<string, unknown>): number {
  const choices = chunk.choices;
  if (!Array.isArray(choices)) return 0;
  let content = false;
  let text = '';
  for (const choice of choices) {
    const delta = (choice as { delta?: Record<string, unknown> } | null)?.delta;
    if (!delta) continue;
    for (const key of ANSWER_TEXT_FIELDS) {
      const v = delta[key];
      // Text, or a list of parts (Mistral's thinking).
      if ((typeof v === 'string' || Array.isArray(v)) && v.length > 0) {
        content = true;
        text += fieldText(v);
      }
    }
    // Image output (OpenRouter's, Vercel AI Gateway's `delta.images`): megabytes, and no text.
    if (Array.isArray(delta.images) && delta.images.length > 0) content = true;
    const calls = delta.tool_calls;
    if (Array.isArray(calls) && calls.length > 0) {
      content = true;
      for (const call of calls) text += callText((call as { function?: unknown } | null)?.function);
    }
    if (delta.function_call != null) {
      content = true;
      text += callText(delta.function_call);
    }
    const audio = delta.audio as { transcript?: unknown; data?: unknown } | null | undefined;
    if (audio != null && (nonEmpty(audio.transcript) || nonEmpty(audio.data))) {
      content = true;
      if (nonEmpty(audio.transcript)) text += audio.transcript as string;
    }
  }
  return content ? contentWeight(text) : 0;
}

/** A tool call's name and arguments fragments, as text to count. */
function callText(fn: unknown): string {
  if (fn === null || typeof fn !== 'object') return '';
  const { name, arguments: args } = fn as { name?: unknown; arguments?: unknown };
  return (typeof name === 'string' ? name : '') + (typeof args === 'string' ? args : '');
}

function nonEmpty(v: unknown): boolean {
  return typeof v === 'string' && v !== '';
}

/**
 * The most choice indexes a stream's end is judged by: OpenAI's `n` is at most 128. The indexes are the
 * upstream's to choose; without a bound, one that numbered every chunk anew grew these sets for as long as
 * it sent.
 */
const MAX_TRACKED_CHOICES = 1024;

/** Which of a stream's choices (by `index`; `n` > 1 streams several) have sent their finish_reason. */
/** What a choice still held back as a stop's possible start, sent when the stream ends without its finish. */
function flushHeld(stops: ChunkStops, sink: ChunkSink): void {
  const rest = stops.flush();
  if (rest !== undefined) sink.chunk(JSON.stringify(rest), contentTokens(rest), rest);
}

/**
 * One OpenAI-dialect stream's translator: its chunks relayed as they came, each read for its content, usage
 * and finish. A class, not an object of closures: kept for the whole stream, on every stream.
 */
class OpenAiStream implements StreamTranslator {
  private readonly choices: ChoiceEnds;
  /**
   * Stops its upstream was not sent (a reasoning model refuses `stop`): the answer is cut at them here. A
   * stream without them builds nothing more.
   */
  private readonly stops: ChunkStops | undefined;
  /**
   * Past `[DONE]` or an error event the stream is over: what an upstream sends after it (in the same write)
   * is not relayed, as a client calling it directly would stop reading there.
   */
  private over = false;

  constructor(
    private readonly sink: ChunkSink,
    private readonly ctx: StreamContext,
  ) {
    this.choices = new ChoiceEnds(ctx.choices ?? 1);
    this.stops =
      ctx.localStops !== undefined && ctx.localStops.length > 0 ? new ChunkStops(ctx.localStops) : undefined;
  }

  /**
   * Every choice finished, one at least at a stop of ours (the others by the upstream): the answer is whole,
   * whatever the upstream does after; an error or a close then ends it (its usage simply not known).
   */
  complete(): boolean {
    return this.stops !== undefined && this.stops.anyStopped() && this.choices.allFinished();
  }

  // Some OpenAI-compatible servers close after the finish_reason chunk without `[DONE]`: that answer is
  // complete, so it ends like one. A close before every choice has its finish_reason is a cut stream.
  close(): void {
    if (!this.choices.allFinished()) return;
    if (this.stops !== undefined) flushHeld(this.stops, this.sink);
    this.sink.end();
  }

  saidNoFinish(): boolean {
    return !this.choices.anyFinished();
  }

  event(type: string | undefined, data: string): void {
    if (this.over) return;
    const { sink, stops, choices } = this;
    // Blanks around it too: `[DONE] ` ends the answer as `[DONE]` does.
    if (data === '[DONE]' || (data.length <= 32 && data.trim() === '[DONE]')) {
      this.over = true;
      if (stops !== undefined) flushHeld(stops, sink);
      sink.end();
      return;
    }
    const obj = parseJsonObject(data);
    if (type === 'error') {
      this.over = true;
      if (this.complete()) return sink.end(true);
      // `event: error` (some servers' way; the OpenAI SDK throws on it) is a failure whatever its data says:
      // relayed as a chunk, or dropped as text, it let a `[DONE]` after it end a cut answer as finished.
      const error = obj && isErrorValue(obj.error) ? obj.error : (obj ?? 'the upstream sent an error event');
      sink.error(inBandError({ error }));
      return;
    }
    if (!obj) return; // non-JSON (or non-object) data events are dropped, never relayed (SPEC §8)
    // An error event; OpenRouter's comes as a chunk, its choice finished with reason "error".
    if (isErrorValue(obj.error)) {
      this.over = true;
      if (this.complete()) return sink.end(true);
      sink.error(inBandError(obj));
      return;
    }
    const usage = readUsage(obj);
    if (usage) sink.usage(usage);
    if (choices.see(obj)) {
      this.over = true;
      if (this.complete()) return sink.end(true);
      sink.error({
        status: 500,
        message: 'the upstream ended the answer with an error',
        type: 'server_error',
        code: null,
        param: null,
      });
      return;
    }
    if (stops !== undefined) {
      const verdict = stops.apply(obj);
      if (verdict === 'changed') sink.chunk(JSON.stringify(obj), contentTokens(obj), obj);
      else if (verdict === 'same') sink.chunk(data, contentTokens(obj), obj);
      for (const index of stops.takeStopped()) choices.finish(index);
      // Nothing more can reach a client that asked for no usage: the answer ends here, the rest unread.
      if (!this.ctx.includeUsage && this.complete()) {
        this.over = true;
        sink.end(true);
      }
      return;
    }
    sink.chunk(data, contentTokens(obj), obj);
  }
}

class ChoiceEnds {
  private readonly open = new Set<number>();
  private readonly finished = new Set<number>();
  /** More indexes came than are tracked: no close without `[DONE]` can be told complete. */
  private overflow = false;

  /** `expected`: the choices asked for (`n`), each of which must finish for a close to end a whole answer. */
  constructor(private readonly expected: number) {}

  /**
   * Takes note of a chunk's choices; true when one finished with reason `error` (OpenRouter's mid-answer
   * failure). Content after a choice's finish is relayed: one-api style proxies put `finish_reason` on every
   * chunk.
   */
  see(chunk: Record<string, unknown>): boolean {
    const choices = chunk.choices;
    if (!Array.isArray(choices)) return false;
    for (const choice of choices as ({ index?: unknown; finish_reason?: unknown } | null)[]) {
      if (choice === null || typeof choice !== 'object') continue;
      const index = typeof choice.index === 'number' ? choice.index : 0;
      const known = this.open.has(index) || this.finished.has(index);
      if (!known && this.open.size + this.finished.size >= MAX_TRACKED_CHOICES) {
        this.overflow = true;
        continue;
      }
      const reason = choice.finish_reason;
      if (typeof reason === 'string' && reason !== '') {
        if (reason === 'error') return true;
        this.finished.add(index);
        this.open.delete(index);
      } else if (!this.finished.has(index)) this.open.add(index);
    }
    return false;
  }

  /** A choice ended by the gateway (a stop it applies): finished, as one the upstream ended. */
  finish(index: number): void {
    this.finished.add(index);
    this.open.delete(index);
  }

  anyFinished(): boolean {
    return this.finished.size > 0;
  }

  allFinished(): boolean {
    return !this.overflow && this.finished.size >= this.expected && this.open.size === 0;
  }
}

function readUsage(json: unknown): Usage | undefined {
  const obj = json as { usage?: unknown; x_groq?: { usage?: unknown } | null } | null;
  // Groq's stream carries its usage in `x_groq` on the finish chunk, not in `usage`.
  const u = obj?.usage ?? obj?.x_groq?.usage;
  if (u === null || typeof u !== 'object') return undefined;
  const usage = u as Usage;
  // Relayed as sent; each figure counted only when it is a believable count, the other one estimated
  // (`{prompt_tokens: 4321}` alone: the upstream's prompt count, not the gateway's guess).
  const prompt = tokenCount(usage.prompt_tokens) !== undefined;
  const completion = tokenCount(usage.completion_tokens) !== undefined;
  if (!prompt && !completion) return undefined;
  if (!prompt || !completion) usage[UNREPORTED] = { prompt: !prompt, completion: !completion };
  return usage;
}

/** An OpenAI-shaped error from whatever the upstream sent (`{error:{...}}`, `{error:"..."}`, `{message}`, text). */
export function errorFromBody(status: number, parsed: unknown, rawText?: string): UpstreamErrorInfo {
  let message: string | undefined;
  let type: string | undefined;
  let code: string | null = null;
  let param: string | null = null;
  let window: number | undefined;
  if (parsed !== null && typeof parsed === 'object') {
    const obj = parsed as Record<string, unknown>;
    const err = obj.error;
    if (err !== null && typeof err === 'object') {
      const e = err as Record<string, unknown>;
      if (typeof e.message === 'string') message = e.message;
      if (typeof e.type === 'string') type = e.type;
      if (typeof e.code === 'string') code = e.code;
      else if (typeof e.code === 'number') code = String(e.code);
      if (typeof e.param === 'string') param = e.param;
      // llama.cpp's refusal as too long states its window only as a field: `"n_ctx": 4096`.
      if (Number.isSafeInteger(e.n_ctx) && (e.n_ctx as number) > 0) window = e.n_ctx as number;
    } else if (typeof err === 'string') message = err;
    else if (typeof obj.message === 'string') message = obj.message;
    else if (typeof obj.detail === 'string') message = obj.detail;
    else message = validationMessage(obj.detail ?? (obj.message as { detail?: unknown } | null)?.detail);
  }
  if (message === undefined) {
    const text = (rawText ?? '').trim();
    // An HTML page (a proxy's) as its title or text; other text when short.
    const readable = htmlPageText(text) ?? (text.length <= 500 ? text : '');
    message = readable !== '' ? readable : `upstream answered HTTP ${status}`;
  }
  message = truncateMessage(message);
  const given = codeOf(status, code, message);
  return {
    status,
    message,
    // A refusal as too long given OpenAI's code here goes with OpenAI's type for it, not the server's own
    // (llama.cpp's `exceed_context_size_error`): SPEC's 400 is an invalid_request_error.
    type:
      given === CONTEXT_LENGTH_EXCEEDED && code !== given
        ? CONTEXT_TYPE
        : (type ?? openAiErrorTypeForStatus(status)),
    code: given,
    param,
    ...(window === undefined ? {} : { window }),
  };
}

/** OpenAI's error type for `context_length_exceeded`. */
const CONTEXT_TYPE = 'invalid_request_error';

/** A code clients branch on, for errors that servers send with none (or with the status again, as a number). */
function codeOf(status: number, code: string | null, message: string): string | null {
  if (code !== null && code !== String(status)) return code;
  // vLLM's and others' unknown model: SPEC §4's code for it, as Anthropic's gets.
  if (status === 404) return 'model_not_found';
  // vLLM's, Mistral's, llama.cpp's "maximum context length": OpenAI's code for it, as Anthropic's gets.
  if ((status === 400 || status === 413 || status === 422) && saysContextOverflow(message))
    return CONTEXT_LENGTH_EXCEEDED;
  return code;
}

/** Google's APIs (Gemini's OpenAI endpoint among them) answer an error as a list: `[{"error": {...}}]`. */
function firstOfList(text: string): unknown {
  if (text.charCodeAt(skipSpace(text, 0)) !== 91 /* [ */) return undefined;
  try {
    const list: unknown = JSON.parse(text);
    return Array.isArray(list) ? list[0] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A validation error list (FastAPI and pydantic servers: vLLM, Mistral, `{"detail": [{loc, msg}, ...]}`) as
 * one line, "body.logit_bias: Extra inputs are not permitted; ...": as raw text it was often past the length
 * relayed, and the client got only the status.
 */
function validationMessage(detail: unknown): string | undefined {
  if (!Array.isArray(detail) || detail.length === 0) return undefined;
  const parts: string[] = [];
  for (const item of detail.slice(0, 10)) {
    if (item === null || typeof item !== 'object') continue;
    const { loc, msg } = item as { loc?: unknown; msg?: unknown };
    if (typeof msg !== 'string') continue;
    const where = Array.isArray(loc) ? loc.filter((p) => typeof p === 'string' || typeof p === 'number') : [];
    parts.push(where.length > 0 ? `${where.join('.')}: ${msg}` : msg);
  }
  return parts.length > 0 ? parts.join('; ') : undefined;
}

/**
 * A non-streaming answer relayed byte for byte: it must be a JSON object (an HTML error page with a 200
 * fails over), and only its `usage` object is parsed — OpenAI-compatible servers put it last, so this
 * reads a few dozen bytes instead of parsing the whole answer on every request. Anything unusual falls
 * back to a full parse. `readUsageOf` reads the usage (chat: prompt and completion; embeddings: prompt only).
 */
export function relayedAnswer(
  text: string,
  readUsageOf: (json: unknown) => Usage | undefined = readUsage,
): AnswerText | undefined {
  if (text.charCodeAt(skipSpace(text, 0)) !== 123 || text.charCodeAt(skipSpaceBack(text)) !== 125)
    return undefined;
  // `"error"` unescaped is a key or the whole of a string value (inside a string its quotes are escaped): a
  // choice that finished with "error" (OpenRouter's failure inside a 200), read by the full parse below.
  const key = text.includes('"error"') ? -1 : text.lastIndexOf('"usage"');
  // `"usage"` as a key whose value is an object. Inside a string its quotes are escaped: content spells it
  // `\"usage\"`, and a key ending in it `"x\"usage"`, whose escaped opening quote is caught here (in valid
  // JSON a key's real opening quote follows `{`, `,` or space, never a backslash).
  if (key > 0 && text.charCodeAt(key - 1) !== 92) {
    const colon = skipSpace(text, key + 7);
    const open = skipSpace(text, colon + 1);
    if (text.charCodeAt(colon) === 58 && text.charCodeAt(open) === 123) {
      const close = closingBrace(text, open);
      if (close > 0 && endsAfterUsage(text, close + 1)) {
        try {
          const usage = readUsageOf({ usage: JSON.parse(text.slice(open, close + 1)) as unknown });
          if (usage) return { body: text, usage };
        } catch {
          /* fall through to the full parse */
        }
      }
    }
  }
  const json = parseJsonObject(text);
  if (!json) return undefined;
  if (isErrorInsteadOfAnswer(json)) return { error: inBandError(json) };
  const failed = choiceError(json);
  if (failed !== undefined) return { error: inBandError(failed) };
  return { body: text, usage: readUsageOf(json) };
}

/**
 * After `usage`, only plain top-level fields (OpenAI's `service_tier`, `system_fingerprint`) and the final
 * brace: the answer was read to its end, and `usage` is its own. A body cut short after an inner brace, with
 * `usage` written first, goes to the full parse (and fails over) instead of out as a 200 nobody can read.
 */
const PLAIN_TAIL =
  /^\s*(?:,\s*"[^"\\]*"\s*:\s*(?:"(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*|true|false|null)\s*)*\}\s*$/;
const MAX_TAIL_CHARS = 1024;

function endsAfterUsage(text: string, from: number): boolean {
  return text.length - from <= MAX_TAIL_CHARS && PLAIN_TAIL.test(text.slice(from));
}

/** An `error` object where a 200's answer should be: no `choices` (chat) and no `data` (embeddings). */
function isErrorInsteadOfAnswer(json: Record<string, unknown>): boolean {
  return isErrorValue(json.error) && json.choices === undefined && json.data === undefined;
}

/**
 * A choice that finished with "error" (OpenRouter's failure inside a 200: an empty answer with the error
 * beside it), as `{ error }`: the choice's own error, else the answer's, else one naming the finish reason.
 * A stream's chunk of that form fails over already (readChunk); a JSON answer went out as an empty 200.
 */
function choiceError(json: Record<string, unknown>): Record<string, unknown> | undefined {
  const choices = json.choices;
  if (!Array.isArray(choices)) return undefined;
  for (const c of choices as ({ finish_reason?: unknown; error?: unknown } | null)[]) {
    if (c?.finish_reason !== 'error') continue;
    if (isErrorValue(c.error)) return { error: c.error };
    if (isErrorValue(json.error)) return { error: json.error };
    return { error: { message: 'the upstream finished its answer with finish_reason "error"' } };
  }
  return undefined;
}

/** An `error` field that says something: an object or a non-empty string (`null` and `""` are no error). */
function isErrorValue(error: unknown): boolean {
  return (typeof error === 'object' && error !== null) || (typeof error === 'string' && error !== '');
}

/** A `choices` key whose value is a list with something in it (`choices: []` is no answer: every client reads choices[0]). */
const CHOICES_LIST = /"choices"\s*:\s*\[\s*[^\s\]]/;
/** A `data` key whose value is a list (an embeddings answer puts it first). */
const DATA_LIST = /"data"\s*:\s*\[/;

/**
 * An embeddings answer relayed as it is: an object with no `data` list is no answer (the OpenAI SDK reads
 * `data` as the vectors), failed over as chat's answer without `choices` is.
 */
export function embeddingsAnswerText(
  text: string,
  readUsageOf: (json: unknown) => Usage | undefined,
): AnswerText | undefined {
  return answerWithList(text, DATA_LIST, readUsageOf);
}

/**
 * A relayed answer that must hold the list `key` matches (`choices`, `data`): an object without it is no
 * answer (a key, not text: inside a string its quotes are escaped); an error object stays an error.
 */
function answerWithList(
  text: string,
  key: RegExp,
  readUsageOf: (json: unknown) => Usage | undefined,
): AnswerText | undefined {
  const out = relayedAnswer(text, readUsageOf);
  if (out !== undefined && out.error === undefined && !key.test(text)) return undefined;
  return out;
}

const RATE_LIMIT_CODES = new Set<unknown>(['rate_limit_exceeded', 'rate_limit_error', 429, '429']);

/**
 * An error sent with a 200 (a stream's error event, or the whole answer), as the status it stands for: a
 * rate limit is a 429 (a cooldown, not an error against the breaker), anything else a 500.
 */
function inBandError(json: Record<string, unknown>): UpstreamErrorInfo {
  const e = json.error as { type?: unknown; code?: unknown } | string;
  const limited = typeof e === 'object' && (RATE_LIMIT_CODES.has(e.type) || RATE_LIMIT_CODES.has(e.code));
  const info = errorFromBody(limited ? 429 : 500, json);
  // A refusal as too long that a proxy sent in-band gets the code its 400 would (the attempt makes it a 400).
  if (!limited && info.code === null && saysContextOverflow(info.message))
    return { ...info, code: CONTEXT_LENGTH_EXCEEDED, type: CONTEXT_TYPE };
  return info;
}
