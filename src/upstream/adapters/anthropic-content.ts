import { asString, isObject, type JsonObject } from './common.js';

// Anthropic's content blocks and turns, and the OpenAI message content they are made from: text, images, files.

export type Block = JsonObject;
export type Role = 'user' | 'assistant';

export interface Turn {
  role: Role;
  content: Block[];
}

export function textBlock(text: string, part?: JsonObject): Block | undefined {
  // Anthropic rejects empty and whitespace-only text blocks.
  if (text.trim() === '') return undefined;
  const block: Block = { type: 'text', text };
  const cache = part === undefined ? undefined : cacheControlOf(part);
  if (cache !== undefined) block.cache_control = cache;
  return block;
}

/**
 * A part's cache hint as Anthropic takes it: its own `cache_control`, or OpenAI's `prompt_cache_breakpoint`
 * (the end of a reusable prefix, as the AI SDK's promptCacheBreakpoint writes it), which is Claude's
 * ephemeral breakpoint.
 */
export function cacheControlOf(part: JsonObject): JsonObject | undefined {
  if (isObject(part.cache_control)) return part.cache_control;
  return isObject(part.prompt_cache_breakpoint) ? EPHEMERAL : undefined;
}

const EPHEMERAL: JsonObject = Object.freeze({ type: 'ephemeral' }) as JsonObject;

/** Text of a string or of text / refusal parts; anything else is skipped. */
export function textBlocks(content: unknown): Block[] {
  if (typeof content === 'string') {
    const block = textBlock(content);
    return block === undefined ? [] : [block];
  }
  const out: Block[] = [];
  if (!Array.isArray(content)) return out;
  for (const part of content) {
    let block: Block | undefined;
    if (typeof part === 'string') block = textBlock(part);
    else if (isObject(part)) {
      const text = asString(part.text) ?? asString(part.refusal);
      if (text !== undefined && (part.type === 'text' || part.type === 'refusal'))
        block = textBlock(text, part);
    }
    if (block !== undefined) out.push(block);
  }
  return out;
}

export function userBlocks(content: unknown): Block[] {
  if (!Array.isArray(content)) return textBlocks(content);
  const out: Block[] = [];
  for (const part of content) {
    let block: Block | undefined;
    if (typeof part === 'string') block = textBlock(part);
    else if (isObject(part)) {
      if (part.type === 'text' && typeof part.text === 'string') block = textBlock(part.text, part);
      else if (part.type === 'image_url' || part.type === 'input_image' || part.type === 'image')
        block = imageBlock(part.image_url);
      else if (part.type === 'file' && isObject(part.file)) block = fileBlock(part.file);
      if (block !== undefined && part.type !== 'text') {
        const cache = cacheControlOf(part);
        if (cache !== undefined) block.cache_control = cache;
      }
    }
    if (block !== undefined) out.push(block);
  }
  return out;
}

export interface DataUrl {
  mediaType: string;
  data: string;
}

/** The image types the Messages API reads (base64 or by URL). */
export const CLAUDE_IMAGE_TYPES: ReadonlySet<string> = new Set([
  'image/jpeg',
  'image/png',
  'image/gif',
  'image/webp',
]);

/** `data:<media type>[;params];base64,<data>`; other data URLs are not something Anthropic takes. */
export function parseDataUrl(url: string): DataUrl | undefined {
  const comma = url.indexOf(',');
  if (!url.startsWith('data:') || comma < 0) return undefined;
  const meta = url.slice(5, comma);
  if (!meta.endsWith(';base64')) return undefined;
  const semicolon = meta.indexOf(';');
  let mediaType = meta.slice(0, semicolon).trim().toLowerCase();
  // Clients write image/jpg, which OpenAI takes and Anthropic's media_type enum does not.
  if (mediaType === 'image/jpg') mediaType = 'image/jpeg';
  const data = url.slice(comma + 1);
  return mediaType === '' || data === '' ? undefined : { mediaType, data };
}

function imageBlock(imageUrl: unknown): Block | undefined {
  const url =
    typeof imageUrl === 'string' ? imageUrl : isObject(imageUrl) ? asString(imageUrl.url) : undefined;
  if (url === undefined) return undefined;
  const lower = url.slice(0, 8).toLowerCase();
  if (lower.startsWith('https://') || lower.startsWith('http://')) {
    return { type: 'image', source: { type: 'url', url } };
  }
  const parsed = parseDataUrl(url);
  if (parsed === undefined) return undefined;
  const mediaType = imageTypeOf(parsed.data) ?? parsed.mediaType;
  return { type: 'image', source: { type: 'base64', media_type: mediaType, data: parsed.data } };
}

/**
 * The type of an image by its first bytes (base64), when it is one Claude reads. Clients label data URLs
 * with a type they hard-code (`image/jpeg` for a PNG screenshot): OpenAI reads the bytes, Anthropic refuses
 * a label that does not match them.
 */
function imageTypeOf(base64: string): string | undefined {
  if (base64.startsWith('iVBORw0KGgo')) return 'image/png';
  if (base64.startsWith('/9j/')) return 'image/jpeg';
  if (base64.startsWith('R0lGOD')) return 'image/gif';
  // RIFF....WEBP: "UklGR" then four bytes of size, then "WEBP" (base64 of bytes 8-11 at characters 11-16).
  if (
    base64.startsWith('UklGR') &&
    Buffer.from(base64.slice(0, 16), 'base64').toString('latin1', 8, 12) === 'WEBP'
  )
    return 'image/webp';
  return undefined;
}

/** OpenAI `file` parts with inline data: PDFs become documents, images become images; file ids can't travel. */
function fileBlock(file: JsonObject): Block | undefined {
  const dataUrl = asString(file.file_data);
  const parsed = dataUrl === undefined ? undefined : parseDataUrl(dataUrl);
  if (parsed === undefined) return undefined;
  const source = { type: 'base64', media_type: parsed.mediaType, data: parsed.data };
  // The file's name is the document's title: how the model tells apart two files the user names.
  const filename = asString(file.filename);
  const titled = filename ? { title: filename } : {};
  if (parsed.mediaType === 'application/pdf') return { type: 'document', source, ...titled };
  if (parsed.mediaType === 'text/plain') {
    const data = Buffer.from(parsed.data, 'base64').toString('utf8');
    return { type: 'document', source: { type: 'text', media_type: 'text/plain', data }, ...titled };
  }
  if (CLAUDE_IMAGE_TYPES.has(parsed.mediaType))
    return { type: 'image', source: { ...source, media_type: imageTypeOf(parsed.data) ?? parsed.mediaType } };
  return undefined;
}

/** A file part's data URL Claude reads: a PDF or plain-text document, or an image (fileBlock's cases). */
export function claudeReadsFile(dataUrl: string): boolean {
  const type = parseDataUrl(dataUrl)?.mediaType;
  return (
    type === 'application/pdf' ||
    type === 'text/plain' ||
    (type !== undefined && CLAUDE_IMAGE_TYPES.has(type))
  );
}
