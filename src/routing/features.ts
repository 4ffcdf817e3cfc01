import type { ChatBody } from '../upstream/adapter.js';
import { APPROXIMATE, estimatePromptTokens, isImagePart } from './tokens.js';

/** What a request needs from an upstream, computed once per request. */
export interface RequestFeatures {
  readonly stream: boolean;
  readonly tools: boolean;
  readonly json: boolean;
  readonly images: boolean;
  /** `n`: choices asked for (Anthropic serves one only). */
  readonly choices: number;
  readonly promptTokens: number;
  /** `max_completion_tokens` or `max_tokens`, when given. */
  readonly requestedOutputTokens: number | undefined;
}

export function chatFeatures(body: ChatBody): RequestFeatures {
  const maxOut = body.max_completion_tokens ?? body.max_tokens;
  const format = (body.response_format as { type?: unknown } | undefined)?.type;
  return {
    stream: body.stream === true,
    tools: Array.isArray(body.tools) && body.tools.length > 0,
    json: format === 'json_object' || format === 'json_schema',
    images: hasImages(body.messages),
    choices: typeof body.n === 'number' && body.n > 1 ? body.n : 1,
    promptTokens: estimatePromptTokens(body, APPROXIMATE),
    requestedOutputTokens: typeof maxOut === 'number' && maxOut > 0 ? maxOut : undefined,
  };
}

function hasImages(messages: readonly unknown[]): boolean {
  for (const m of messages) {
    const content = (m as { content?: unknown }).content;
    if (!Array.isArray(content)) continue;
    for (const part of content) {
      if (isImagePart(part)) return true;
    }
  }
  return false;
}

/** The text of the last user message (for tier rules and the LLM router's excerpt). */
export function lastUserText(messages: readonly unknown[]): string {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i] as { role?: unknown; content?: unknown };
    if (m.role !== 'user') continue;
    if (typeof m.content === 'string') return m.content;
    if (Array.isArray(m.content)) {
      return m.content
        .map((p) =>
          (p as { type?: unknown }).type === 'text' ? String((p as { text?: unknown }).text ?? '') : '',
        )
        .join(' ');
    }
    return '';
  }
  return '';
}
