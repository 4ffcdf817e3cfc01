import {
  ANTHROPIC_CACHE,
  UNREPORTED,
  type AnswerJson,
  type StreamContext,
  type UpstreamErrorInfo,
  type Usage,
} from '../adapter.js';
import {
  asCount,
  asString,
  htmlPageText,
  isObject,
  newCompletionId,
  openAiErrorTypeForStatus,
  parseJsonObject,
  tokenCount,
  truncateMessage,
  type FinishReason,
  type JsonObject,
} from './common.js';
import { arrayElementTexts, memberValueText, sourceText } from '../body-text.js';
import { CONTEXT_LENGTH_EXCEEDED, saysContextOverflow } from '../context-overflow.js';
import { jsonAnswerText } from './json-answer.js';
import { firstStop } from './local-stops.js';

/** Anthropic Message (JSON) and error bodies -> OpenAI shapes; the stop-reason, usage and error maps the stream shares. */

export function mapStopReason(reason: unknown): FinishReason {
  switch (reason) {
    case 'max_tokens':
    case 'model_context_window_exceeded':
    case 'length': // OpenAI's own words, from Anthropic-compatible servers built on OpenAI-style engines
      return 'length';
    case 'tool_use':
    case 'tool_calls':
    case 'function_call':
      return 'tool_calls';
    case 'refusal':
    case 'content_filter':
      return 'content_filter';
    default:
      // end_turn, stop_sequence, pause_turn, and anything newer: the answer ended normally.
      return 'stop';
  }
}

/** Anthropic's token counts; `input` excludes the cached parts, which it reports separately. */
export interface AnthropicTokens {
  input: number;
  cacheCreation: number;
  /** Of cacheCreation, the writes to 1-hour entries (`cache_creation.ephemeral_1h_input_tokens`). */
  cacheWrite1h?: number;
  cacheRead: number;
  output: number;
  /** Whether the upstream gave an input (or cache) count, and an output count: Anthropic always does. */
  inputSeen?: boolean;
  outputSeen?: boolean;
}

export function readTokens(usage: unknown, into: AnthropicTokens): void {
  if (!isObject(usage)) return;
  // message_delta repeats only the counts it updates, and its input counts are nullable: keep the others.
  // A number that is no count (negative, fractional, past 2^53, infinite) is not believed: its side is then
  // unreported, and estimated as a server's that gives none (a 0 made the answer free and the tpm budget
  // endless; the OpenAI dialect reads its usage so too).
  let unbelievable = false;
  const input = (v: unknown, set: (n: number) => void): void => {
    if (typeof v !== 'number') return;
    const n = tokenCount(v);
    if (n === undefined) unbelievable = true;
    else {
      set(n);
      into.inputSeen = true;
    }
  };
  input(usage.input_tokens, (n) => (into.input = n));
  input(usage.cache_creation_input_tokens, (n) => (into.cacheCreation = n));
  input(usage.cache_read_input_tokens, (n) => (into.cacheRead = n));
  if (unbelievable) into.inputSeen = false;
  if (isObject(usage.cache_creation) && typeof usage.cache_creation.ephemeral_1h_input_tokens === 'number')
    into.cacheWrite1h = asCount(usage.cache_creation.ephemeral_1h_input_tokens);
  if (typeof usage.output_tokens === 'number') {
    const n = tokenCount(usage.output_tokens);
    into.output = n ?? 0;
    into.outputSeen = n !== undefined;
  }
}

/**
 * The usage in OpenAI's shape; undefined when the upstream gave no count at all (Anthropic-compatible
 * servers may not): no usage is better than one of zeros. A figure it did not give is marked UNREPORTED.
 */
export function toOpenAiUsage(t: AnthropicTokens): Usage | undefined {
  if (t.inputSeen !== true && t.outputSeen !== true) return undefined;
  const prompt = t.input + t.cacheCreation + t.cacheRead;
  const usage: Usage = {
    prompt_tokens: prompt,
    completion_tokens: t.output,
    total_tokens: prompt + t.output,
    // Cache writes as OpenAI's usage names them (the SDKs split input into uncached, read and written).
    prompt_tokens_details:
      t.cacheCreation > 0
        ? { cached_tokens: t.cacheRead, cache_write_tokens: t.cacheCreation }
        : { cached_tokens: t.cacheRead },
  };
  if (t.inputSeen !== true || t.outputSeen !== true)
    usage[UNREPORTED] = { prompt: t.inputSeen !== true, completion: t.outputSeen !== true };
  const writes1h = Math.min(t.cacheWrite1h ?? 0, t.cacheCreation);
  usage[ANTHROPIC_CACHE] = { writes5m: t.cacheCreation - writes1h, writes1h };
  return usage;
}

export function completionIdFor(messageId: unknown): string {
  const id = asString(messageId);
  return id ? `chatcmpl-${id}` : newCompletionId();
}

export function anthropicChatResponse(json: unknown, ctx: StreamContext): AnswerJson | undefined {
  const msg: JsonObject = isObject(json) ? json : {};
  // An error body sent with a 200 (some proxies do): not an empty answer, a failure to fail over from.
  if (msg.type === 'error' || (isObject(msg.error) && msg.content === undefined)) {
    return { error: inBandError(msg.error, 'upstream answered 200 with an error') };
  }
  // Not a message at all (no content list): no answer, not an empty one.
  if (!Array.isArray(msg.content)) return undefined;
  let text = '';
  let reasoning = '';
  const toolCalls: JsonObject[] = [];
  /** How much text came before each tool call. */
  const textBefore: number[] = [];
  const thinking: JsonObject[] = [];
  // The blocks as written: a tool's input goes on as Claude wrote it (a 20-digit id through JSON.parse
  // and back was another number; a stream's arguments are its text already).
  let written: string[] | undefined | null = null;
  if (Array.isArray(msg.content)) {
    for (let b = 0; b < msg.content.length; b++) {
      const block: unknown = msg.content[b];
      if (!isObject(block)) continue;
      if (block.type === 'text' && typeof block.text === 'string') text += block.text;
      else if (block.type === 'tool_use' && typeof block.name === 'string') {
        textBefore.push(text.length);
        toolCalls.push({
          id: asString(block.id) ?? '',
          type: 'function',
          function: {
            name: block.name,
            arguments: toolArguments(block.input, (written ??= contentTexts(json))?.[b]),
          },
        });
      } else if (block.type === 'thinking' && typeof block.thinking === 'string') {
        reasoning += block.thinking;
        // Only a signed block can go back to Claude.
        const signature = asString(block.signature);
        if (signature) thinking.push({ type: 'thinking', thinking: block.thinking, signature });
      } else if (block.type === 'redacted_thinking' && typeof block.data === 'string') {
        thinking.push({ type: 'redacted_thinking', data: block.data });
      }
      // Server-tool blocks have no Chat Completions equivalent.
    }
  }

  // Asked for JSON, told so only in its prompt: Claude's fence or preface around the object is not the answer.
  const asJson = ctx.json === true && text !== '';
  if (asJson) text = jsonAnswerText(text);
  // A stop sequence Claude was not given (whitespace alone) cuts the answer where it begins, as OpenAI's does:
  // what Claude wrote past it, tool calls too, is not the answer (in a JSON answer, the object is the answer).
  let finish = mapStopReason(msg.stop_reason);
  const cut = firstStop(text, ctx.localStops ?? []);
  if (cut !== -1) {
    text = text.slice(0, cut);
    if (!asJson) toolCalls.length = textBefore.filter((at) => at <= cut).length;
    if (toolCalls.length === 0) finish = 'stop';
  }
  const message: JsonObject = {
    role: 'assistant',
    content: text === '' && toolCalls.length > 0 ? null : text,
    refusal: null,
  };
  if (toolCalls.length > 0) message.tool_calls = toolCalls;
  if (reasoning !== '' || thinking.length > 0) {
    // The reasoning as OpenAI-compatible servers give it, and the signed blocks a client sends back (with the
    // assistant message) to keep thinking through a tool loop, as other gateways do.
    message.reasoning_content = reasoning;
    if (thinking.length > 0) message.thinking_blocks = thinking;
  }

  let usage: Usage | undefined;
  if (isObject(msg.usage)) {
    const tokens: AnthropicTokens = { input: 0, cacheCreation: 0, cacheRead: 0, output: 0 };
    readTokens(msg.usage, tokens);
    usage = toOpenAiUsage(tokens);
  }

  const body: JsonObject = {
    id: completionIdFor(msg.id),
    object: 'chat.completion',
    created: ctx.created,
    model: ctx.model,
    choices: [{ index: 0, message, logprobs: null, finish_reason: finish }],
  };
  if (usage !== undefined) body.usage = usage;
  return { body, usage };
}

/** The HTTP status Anthropic uses for each error type; in-stream errors carry only the type. */
const STATUS_BY_ERROR_TYPE: Readonly<Record<string, number>> = {
  invalid_request_error: 400,
  authentication_error: 401,
  billing_error: 402,
  permission_error: 403,
  not_found_error: 404,
  request_too_large: 413,
  rate_limit_error: 429,
  api_error: 500,
  timeout_error: 504,
  overloaded_error: 529,
};

function statusForErrorType(type: string | undefined): number {
  if (type === undefined || !Object.hasOwn(STATUS_BY_ERROR_TYPE, type)) return 500;
  return STATUS_BY_ERROR_TYPE[type] ?? 500;
}

/**
 * An error Anthropic sent inside a 200 (an `error` stream event, or an error body): only its type says what
 * status it stands for.
 */
export function inBandError(error: unknown, fallbackMessage: string): UpstreamErrorInfo {
  const err = isObject(error) ? error : {};
  const type = asString(err.type);
  const message = asString(err.message) || fallbackMessage;
  return anthropicError(statusForErrorType(type), type, truncateMessage(message));
}

/** Anthropic error type -> OpenAI `type` and `code`, given the HTTP status it came with. */
function anthropicError(status: number, type: string | undefined, message: string): UpstreamErrorInfo {
  let oaType: string;
  let code: string | null = null;
  switch (type) {
    case 'invalid_request_error':
    case 'authentication_error':
    case 'permission_error':
    case 'rate_limit_error':
      oaType = type;
      if (type === 'rate_limit_error') code = 'rate_limit_exceeded';
      // "prompt is too long: 208310 tokens > 200000 maximum": OpenAI's code for it, which clients branch on.
      else if (type === 'invalid_request_error' && saysContextOverflow(message))
        code = CONTEXT_LENGTH_EXCEEDED;
      break;
    case 'not_found_error':
      oaType = 'invalid_request_error';
      // On /v1/messages the only resource that can be missing is the model.
      if (status === 404) code = 'model_not_found';
      break;
    case 'request_too_large':
      oaType = 'invalid_request_error';
      code = 'request_too_large';
      break;
    case 'billing_error':
      oaType = 'insufficient_quota';
      code = 'insufficient_quota';
      break;
    case 'overloaded_error':
      oaType = 'server_error';
      code = 'overloaded';
      break;
    case 'timeout_error':
      oaType = 'server_error';
      code = 'timeout';
      break;
    case 'api_error':
      oaType = 'server_error';
      break;
    default:
      oaType = openAiErrorTypeForStatus(status);
      if (status === 404) code = 'model_not_found';
  }
  return { status, message, type: oaType, code, param: null };
}

/**
 * Our account at Anthropic drained or disabled, as Anthropic reports it: a 400 invalid_request_error (not the
 * 402 billing_error its documentation lists). Our fault there, not the client's: read as a 402, failed over.
 */
const ACCOUNT_REFUSED =
  /credit balance is too low|reached your specified API usage limits|organization has been disabled/i;

/** Reads `{type:'error', error:{type, message}}`, an OpenAI-style `{error:{...}}`, or any text at all. */
export function anthropicErrorInfo(status: number, bodyText: string): UpstreamErrorInfo {
  const parsed = parseJsonObject(bodyText);
  const err = parsed !== undefined && isObject(parsed.error) ? parsed.error : undefined;
  const type = err !== undefined ? asString(err.type) : undefined;
  let message = asString(err?.message) ?? asString(parsed?.error) ?? asString(parsed?.message);
  if (!message) {
    const text = parsed === undefined ? bodyText.trim() : '';
    message = htmlPageText(text) ?? text;
    if (message === '') message = `upstream returned HTTP ${status}`;
  }
  if (
    type === 'billing_error' ||
    (status === 400 && type === 'invalid_request_error' && ACCOUNT_REFUSED.test(message))
  )
    return anthropicError(402, 'billing_error', truncateMessage(message));
  return anthropicError(status, type, truncateMessage(message));
}

/** The texts of a message's content blocks as the upstream wrote them, when its source text is known. */
function contentTexts(json: unknown): string[] | undefined {
  const text = sourceText(json);
  return text === undefined ? undefined : arrayElementTexts(text, 'content');
}

/** A tool_use block's input as `arguments`: as written when its text is at hand and an object, else re-serialised. */
function toolArguments(input: unknown, blockText: string | undefined): string {
  const written =
    blockText === undefined || !isObject(input) ? undefined : memberValueText(blockText, 'input');
  return written !== undefined && written.charCodeAt(0) === 123 ? written : JSON.stringify(input ?? {});
}
