/**
 * A provider dialect is data plus small pure functions: how to build the upstream request from an OpenAI
 * Chat Completions body, and how to turn the upstream's answer (JSON or SSE events) back into OpenAI shape.
 * Every dialect shares the one SSE parser in streaming/; an adapter only sees parsed events.
 */
import { fractionalTextTokens } from '../routing/tokens.js';

/** The OpenAI usage object. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number; cache_write_tokens?: number };
  /**
   * Figures a translated usage holds as 0 because the upstream never gave them (an Anthropic-compatible
   * server without input_tokens): counted from the gateway's own estimate instead. A symbol key: never sent.
   */
  [UNREPORTED]?: { readonly prompt: boolean; readonly completion: boolean };
  /**
   * An Anthropic usage's cache writes (inside prompt_tokens), which Anthropic bills above the input price:
   * 1.25x for a 5-minute entry, 2x for a 1-hour one. Its presence marks Anthropic's pricing of cache reads
   * too (0.1x input, unless the model's price says otherwise). A symbol key: never sent.
   */
  [ANTHROPIC_CACHE]?: { readonly writes5m: number; readonly writes1h: number };
}

export const UNREPORTED = Symbol('usage figures the upstream did not report');
export const ANTHROPIC_CACHE = Symbol('Anthropic cache writes');

/** The prompt count the upstream reported, or undefined (no usage, or a figure it did not give). */
export function reportedPrompt(usage: Usage | undefined): number | undefined {
  return usage === undefined || usage[UNREPORTED]?.prompt === true ? undefined : usage.prompt_tokens;
}

/** The completion count the upstream reported, or undefined (no usage, or a figure it did not give). */
export function reportedCompletion(usage: Usage | undefined): number | undefined {
  return usage === undefined || usage[UNREPORTED]?.completion === true ? undefined : usage.completion_tokens;
}

/** An OpenAI Chat Completions request body, validated; unknown fields are kept. */
export type ChatBody = Record<string, unknown> & {
  model: string;
  messages: unknown[];
  stream?: boolean;
};

export interface AdapterProvider {
  readonly name: string;
  readonly apiKey: string | undefined;
  readonly headers: Readonly<Record<string, string>> | undefined;
  /** Anthropic: `anthropic-version` header value. */
  readonly anthropicVersion: string;
  /** Anthropic: `max_tokens` when the client sent none. */
  readonly defaultMaxTokens: number;
}

export interface PreparedRequest {
  /** Path appended to the provider's base_url path, e.g. `/chat/completions` or `/v1/messages`. */
  readonly path: string;
  readonly headers: Record<string, string>;
  /**
   * As bytes, made where the text is written: a string kept beside undici's bytes of it was a second copy of
   * the body for the attempt's life (2x more for text past Latin-1, which V8 stores at two bytes a character).
   */
  readonly body: Buffer;
}

/** An error the upstream reported, in OpenAI terms. */
export interface UpstreamErrorInfo {
  /** HTTP status the upstream used, or the equivalent for an in-stream error event (e.g. 529 overloaded). */
  readonly status: number;
  readonly message: string;
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;
  /** The context window the upstream said it has, as a field of its refusal (llama.cpp's `n_ctx`). */
  readonly window?: number;
}

/**
 * A 2xx answer read as text: the body to relay and its usage, or the error object an upstream sent with
 * its 200 instead of an answer (failed over like the same error in a stream).
 */
export type AnswerText =
  | { readonly body: string; readonly usage: Usage | undefined; readonly error?: undefined }
  | { readonly body?: undefined; readonly usage?: undefined; readonly error: UpstreamErrorInfo };

/** A 2xx answer parsed: the OpenAI body and its usage, or the error an upstream sent instead (as above). */
export type AnswerJson =
  | { readonly body: unknown; readonly usage: Usage | undefined; readonly error?: undefined }
  | { readonly body?: undefined; readonly usage?: undefined; readonly error: UpstreamErrorInfo };

export interface ChunkSink {
  /**
   * One OpenAI `chat.completion.chunk`, as JSON text ready to relay after `data: `. `content`: 0 when it
   * carries no content delta (text, tool call, refusal, audio, reasoning), else the tokens that content
   * holds, estimated (`contentWeight`): the stream commits at the first, and one that reports no usage is
   * counted by them, each chunk at least one token (a server that sends several tokens a chunk, as vLLM's
   * speculative decoding does, is not counted one a chunk). `parsed`: `json` as an object, when the
   * translator has it (the chunk may be written anew from it: delta-mask.ts).
   */
  chunk(json: string, content: number, parsed?: Record<string, unknown>): void;
  /** Usage reported by the upstream (may come before or inside the final chunk). */
  usage(usage: Usage): void;
  /** The upstream reported an error inside the stream. */
  error(err: UpstreamErrorInfo): void;
  /**
   * The answer is whole: the upstream signalled a normal end (`[DONE]`, `message_stop`), or (`early`) the
   * gateway ended it before the upstream did (a stop sequence applied here): the rest is not wanted, and its
   * connection is dropped rather than read to its end.
   */
  end(early?: boolean): void;
}

export interface StreamContext {
  /** The model name to put in translated chunks. */
  readonly model: string;
  /** The client asked for `stream_options.include_usage`. */
  readonly includeUsage: boolean;
  /** Unix seconds for `created`. */
  readonly created: number;
  /** Choices asked for (`n`): a stream is whole once that many have finished (1 when absent). */
  readonly choices?: number;
  /** The client asked for JSON (`response_format` json_object or json_schema). */
  readonly json?: boolean;
  /** Stop sequences this upstream is not sent, which the gateway applies to its answer (local-stops.ts). */
  readonly localStops?: readonly string[];
}

/** Fed each parsed SSE event of one upstream stream, in order. */
export interface StreamTranslator {
  event(type: string | undefined, data: string): void;
  /** The upstream closed the stream cleanly; a dialect may still recognise a finished answer. */
  close?(): void;
  /**
   * No choice said why it stopped (no finish_reason). Asked of a stream that ended before any content: with
   * a finish_reason it is an empty answer (a `length` all spent on reasoning); without, no answer at all.
   */
  saidNoFinish?(): boolean;
  /**
   * The answer is whole already (every choice ended at a stop the gateway applies): a read error or a close
   * now ends it as finished, not as a cut stream.
   */
  complete?(): boolean;
  /**
   * The usage known so far of a stream that ended early (Anthropic's input counts at message_start; its
   * output count is not the answer's until message_delta, so unreported): what a cut stream bills.
   */
  usageSoFar?(): Usage | undefined;
}

export interface ChatAdapter {
  readonly kind: 'openai' | 'anthropic';
  /** The upstream request for a chat completion; `model` is the upstream's own model name. */
  chatRequest(body: ChatBody, model: string, provider: AdapterProvider): PreparedRequest;
  /**
   * A successful non-streaming upstream JSON answer, as an OpenAI `chat.completion` object; or the error
   * an upstream sent with its 200 instead of an answer (failed over like the same error in a stream);
   * undefined for an object that is neither (failed over as malformed).
   */
  chatResponse(json: unknown, ctx: StreamContext): AnswerJson | undefined;
  /**
   * Optional fast path for a dialect relayed as it is: the answer's text to send and its usage, without
   * parsing the whole body; `undefined` when the text is not a JSON object (the attempt then fails over).
   * `ctx.localStops`: the answer is cut at them, and only then written anew.
   */
  chatResponseText?(text: string, ctx?: StreamContext): AnswerText | undefined;
  /** A translator for one upstream SSE stream. */
  streamTranslator(sink: ChunkSink, ctx: StreamContext): StreamTranslator;
  /** An upstream error response (status + raw body text) in OpenAI terms. */
  errorInfo(status: number, bodyText: string): UpstreamErrorInfo;
}

/** A content delta's `ChunkSink.chunk` weight: its tokens estimated, unrounded, and above 0 when it has no text. */
export function contentWeight(text: string): number {
  return Math.max(MIN_CONTENT_WEIGHT, fractionalTextTokens(text));
}

/** What a content delta without text (a tool call's empty start, audio data) weighs: it is content still. */
const MIN_CONTENT_WEIGHT = 1e-3;
