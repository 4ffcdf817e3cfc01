import type { ChatBody } from '../upstream/adapter.js';
import { CLAUDE_IMAGE_TYPES, claudeReadsFile, parseDataUrl } from '../upstream/adapters/anthropic-content.js';
import { APPROXIMATE, estimatePromptTokens, isImagePart } from './tokens.js';
import { clip } from '../text.js';

/** What a request needs from an upstream, computed once per request. */
export interface RequestFeatures {
  readonly stream: boolean;
  readonly tools: boolean;
  /** The field a refusal for tools names: `functions` when the request's tools are legacy functions only. */
  readonly toolsParam: 'tools' | 'functions';
  readonly json: boolean;
  readonly images: boolean;
  /** `n`: choices asked for (Anthropic serves one only). */
  readonly choices: number;
  readonly promptTokens: number;
  /**
   * What a context window must hold of the prompt: all of it for a chat request; the largest input of an
   * embeddings batch, whose inputs are embedded one by one.
   */
  readonly contextTokens: number;
  /** `max_completion_tokens` or `max_tokens`, when given; 0 for an answer with no output (embeddings). */
  readonly requestedOutputTokens: number | undefined;
  /** The field a refusal for the prompt's size names: `messages`, or an embeddings request's `input`. */
  readonly promptParam: 'messages' | 'input';
  /**
   * What of the request Anthropic's API has no place for (legacy `functions`, audio, a file by id or of a type
   * it does not read); undefined for most requests. Anthropic upstreams are left out, rather than sent a
   * request with that part silently dropped.
   */
  readonly notForAnthropic: NotForAnthropic | undefined;
}

/** A part of a request Anthropic has no place for: said as the 400 says it, and the field it is in. */
export interface NotForAnthropic {
  readonly what: string;
  readonly param: string;
}

const LEGACY_FUNCTIONS: NotForAnthropic = { what: 'functions (legacy; use tools)', param: 'functions' };
const AUDIO_OUTPUT: NotForAnthropic = { what: 'audio output (modalities)', param: 'modalities' };
const INPUT_AUDIO: NotForAnthropic = { what: 'input_audio', param: 'messages' };
const FILE_BY_ID: NotForAnthropic = { what: 'file_id (a file by id)', param: 'messages' };
const CUSTOM_TOOLS: NotForAnthropic = { what: 'custom tools (type "custom")', param: 'tools' };
const CUSTOM_TOOL_CALL: NotForAnthropic = { what: 'a custom tool call (type "custom")', param: 'messages' };
/** OpenAI's search-model option: an answer that must be grounded in a web search, which Claude is not sent. */
const WEB_SEARCH: NotForAnthropic = { what: 'web_search_options (web search)', param: 'web_search_options' };

export function chatFeatures(body: ChatBody): RequestFeatures {
  const maxOut = body.max_completion_tokens ?? body.max_tokens;
  const format = (body.response_format as { type?: unknown } | undefined)?.type;
  const scan = scanMessages(body.messages);
  const promptTokens = estimatePromptTokens(body, APPROXIMATE);
  const hasTools = Array.isArray(body.tools) && body.tools.length > 0;
  const hasFunctions = Array.isArray(body.functions) && body.functions.length > 0;
  return {
    stream: body.stream === true,
    // Legacy `functions` are tools too: for the rules (`tools: false` must not send them to a small tier)
    // and for the capability filter.
    tools: hasTools || hasFunctions,
    toolsParam: hasFunctions && !hasTools ? 'functions' : 'tools',
    json: format === 'json_object' || format === 'json_schema',
    images: scan.images,
    choices: typeof body.n === 'number' && body.n > 1 ? body.n : 1,
    promptTokens,
    contextTokens: promptTokens,
    requestedOutputTokens: typeof maxOut === 'number' && maxOut > 0 ? maxOut : undefined,
    promptParam: 'messages',
    notForAnthropic:
      (body.functions !== undefined && body.functions !== null) ||
      (body.function_call !== undefined && body.function_call !== null)
        ? LEGACY_FUNCTIONS
        : asksForAudio(body)
          ? AUDIO_OUTPUT
          : hasCustomTool(body.tools)
            ? CUSTOM_TOOLS
            : body.web_search_options !== undefined && body.web_search_options !== null
              ? WEB_SEARCH
              : scan.notForAnthropic,
  };
}

/** A plain text request, not streamed (the LLM router's own call, an embeddings request). */
export function textFeatures(
  promptTokens: number,
  requestedOutputTokens: number | undefined,
  contextTokens = promptTokens,
): RequestFeatures {
  return {
    stream: false,
    tools: false,
    toolsParam: 'tools',
    json: false,
    images: false,
    choices: 1,
    promptTokens,
    contextTokens,
    requestedOutputTokens,
    promptParam: 'messages',
    notForAnthropic: undefined,
  };
}

/**
 * An embeddings batch: `total` tokens priced, its `largest` input held to a context window, and no output
 * tokens (ranked on input price and time to answer alone, not on a chat answer's default length).
 */
export function embeddingsFeatures(total: number, largest: number): RequestFeatures {
  return { ...textFeatures(total, 0, largest), promptParam: 'input' };
}

/** OpenAI's free-form `custom` tools (or calls of one): Claude's tools take JSON input only. */
function hasCustomTool(list: unknown): boolean {
  return Array.isArray(list) && list.some((t) => (t as { type?: unknown } | null)?.type === 'custom');
}

/** `modalities: [..., "audio"]` or `audio: {...}`: an answer spoken, which Claude does not give. */
function asksForAudio(body: ChatBody): boolean {
  const modalities = body.modalities;
  return (
    (Array.isArray(modalities) && modalities.includes('audio')) ||
    (body.audio !== undefined && body.audio !== null)
  );
}

const NO_PARTS = { images: false, notForAnthropic: undefined };

/** Image parts, and the first part (or message) Anthropic has no place for: one walk over the parts. */
function scanMessages(messages: readonly unknown[]): {
  images: boolean;
  notForAnthropic: NotForAnthropic | undefined;
} {
  let images = false;
  let notForAnthropic: NotForAnthropic | undefined;
  for (const m of messages) {
    if (typeof m !== 'object' || m === null) continue;
    const { role, content, tool_calls } = m as { role?: unknown; content?: unknown; tool_calls?: unknown };
    if (role === 'function') notForAnthropic ??= LEGACY_FUNCTIONS;
    if (tool_calls !== undefined && hasCustomTool(tool_calls)) notForAnthropic ??= CUSTOM_TOOL_CALL;
    if (!Array.isArray(content)) continue;
    for (const part of content) {
      if (isImagePart(part)) {
        images = true;
        if (notForAnthropic === undefined) notForAnthropic = imageNotForAnthropic(part);
      } else if (notForAnthropic === undefined) notForAnthropic = partNotForAnthropic(part);
    }
  }
  return images || notForAnthropic !== undefined ? { images, notForAnthropic } : NO_PARTS;
}

const FETCHED_URL = /^https?:\/\//i;
const UNFETCHABLE_IMAGE: NotForAnthropic = {
  what: 'an image URL that is neither http(s) nor a data URL',
  param: 'messages',
};

/**
 * An inline image of a type Anthropic does not read (SVG, TIFF...), or an image URL it cannot fetch (not
 * http(s): `gs://`, a relative path), which its request would go without; http(s) URLs are its to judge.
 */
function imageNotForAnthropic(part: unknown): NotForAnthropic | undefined {
  const image = (part as { image_url?: unknown }).image_url;
  const url = typeof image === 'string' ? image : (image as { url?: unknown } | null | undefined)?.url;
  // An image part of another shape (no image_url to read) would go without its image.
  if (typeof url !== 'string')
    return {
      what: `a ${String((part as { type?: unknown }).type)} part without an image_url`,
      param: 'messages',
    };
  if (!url.startsWith('data:')) return FETCHED_URL.test(url) ? undefined : UNFETCHABLE_IMAGE;
  const type = parseDataUrl(url)?.mediaType;
  if (type !== undefined && CLAUDE_IMAGE_TYPES.has(type)) return undefined;
  return { what: `an image of type ${mediaTypeOf(url)}`, param: 'messages' };
}

/** Content parts the Anthropic translation carries (images are judged by imageNotForAnthropic). */
const ANTHROPIC_PARTS: ReadonlySet<unknown> = new Set(['text', 'refusal', 'file']);

function partNotForAnthropic(part: unknown): NotForAnthropic | undefined {
  if (typeof part !== 'object' || part === null) return undefined;
  const { type, file } = part as { type?: unknown; file?: unknown };
  if (type === 'input_audio') return INPUT_AUDIO;
  // Any other part (vLLM's video_url and audio_url) would go without: refused, never dropped.
  if (!ANTHROPIC_PARTS.has(type)) return { what: `a ${clip(String(type), 64)} part`, param: 'messages' };
  if (type !== 'file') return undefined;
  const data = (file as { file_data?: unknown } | null | undefined)?.file_data;
  if (typeof data !== 'string') return FILE_BY_ID;
  return claudeReadsFile(data)
    ? undefined
    : { what: `a file of type ${mediaTypeOf(data)}`, param: 'messages' };
}

/** A data URL's media type as a 400 may quote it. */
function mediaTypeOf(url: string): string {
  return /^data:([^;,]*)/.exec(url)?.[1]?.trim().slice(0, 64) || 'unknown';
}

/** The text of the last user message (for tier rules and the LLM router's excerpt). */
export function lastUserText(messages: readonly unknown[]): string {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i] as { role?: unknown; content?: unknown };
    if (m.role !== 'user') continue;
    if (typeof m.content === 'string') return m.content;
    if (Array.isArray(m.content)) {
      // Its text parts: an image or a file between them is no text (a space for one broke `^` and `\?$` rules).
      return m.content
        .filter((p) => (p as { type?: unknown } | null)?.type === 'text')
        .map((p) => String((p as { text?: unknown }).text ?? ''))
        .join(' ');
    }
    return '';
  }
  return '';
}
