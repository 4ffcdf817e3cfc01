/**
 * The first `max` UTF-16 units of `text`, one fewer where the cut would split a surrogate pair: half an
 * emoji is a lone surrogate, which strict JSON readers refuse (Anthropic's API, serde_json) and the rest show
 * as U+FFFD.
 */
export function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  const last = text.charCodeAt(max - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

/** The last `max` UTF-16 units of `text`, one fewer where the cut would split a surrogate pair (see clip). */
export function clipEnd(text: string, max: number): string {
  if (text.length <= max) return text;
  const from = text.length - max;
  const first = text.charCodeAt(from);
  return text.slice(first >= 0xdc00 && first <= 0xdfff ? from + 1 : from);
}

/**
 * The text inside a list of content parts, as some OpenAI-dialect servers stream or answer `content`
 * (Mistral's Magistral: `[{"type":"thinking","thinking":[{"type":"text","text":"…"}]}, {"type":"text",…}]`):
 * each part's `text`, and its `thinking` (text, or one more list of parts). Other parts (images) hold none.
 */
export function partsText(parts: readonly unknown[], nested = false): string {
  let text = '';
  for (const part of parts) {
    if (part === null || typeof part !== 'object') continue;
    const { text: t, thinking } = part as { text?: unknown; thinking?: unknown };
    if (typeof t === 'string') text += t;
    if (typeof thinking === 'string') text += thinking;
    else if (!nested && Array.isArray(thinking)) text += partsText(thinking, true);
  }
  return text;
}

/** The fields that carry an answer's text, in a message or a delta (reasoning servers' as well as OpenAI's). */
export const ANSWER_TEXT_FIELDS = ['content', 'refusal', 'reasoning_content', 'reasoning'] as const;

/** The text an answer's text field holds: a string, or a list of parts (partsText); '' for anything else. */
export function fieldText(v: unknown): string {
  return typeof v === 'string' ? v : Array.isArray(v) ? partsText(v) : '';
}
