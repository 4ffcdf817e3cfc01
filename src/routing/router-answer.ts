import { TIER_SET, type TierName } from '../config/schema.js';
import { closingBrace } from '../json-scan.js';
import { clip } from '../text.js';

// Reading the LLM router model's answer: the tier it picks, from its JSON or its prose.

/** `tier: deep` in prose, and the rest of its line (bounded): what may make it a hedge. */
const TIER_WORD = /\btier\b["']?\s*[:=]\s*["']?(fast|balanced|deep)\b["']?([^}\n]{0,200})/i;
/**
 * A hedge: the tier word followed at once by an alternative or a question ("fast or deep?", "fast, or deep",
 * "fast/deep", "deep?"), or another tier offered as one later in the line ("balanced (maybe deep)"). A reason
 * that merely says "or" or "/" ("deep (a proof or a derivation)", "(math/logic)") is no hedge.
 */
const HEDGE =
  /^[\s,;:-]*(?:\?|\/|or\b)|\b(?:or|maybe|perhaps|possibly)\s+(?:(?:maybe|perhaps)\s+)?(?:fast|balanced|deep)\b|\/\s*(?:fast|balanced|deep)\b|\b(?:fast|balanced|deep)\s*\?/i;
const BARE_TIER = /^\W*(fast|balanced|deep)\W*$/i;

/** Reads `{"tier": ..., "reason": ...}` out of a model's answer: bare, fenced, inside chatter, any case. */
export function parseRouterAnswer(text: string): { tier: TierName; reason: string } | undefined {
  if (typeof text !== 'string' || text.length === 0) return undefined;
  // A reasoning model served without a reasoning parser (Qwen3, DeepSeek-R1 on Ollama, vLLM, llama.cpp) puts
  // its thinking first, drafts included: the answer is what follows its last `</think>`.
  const thought = text.lastIndexOf('</think>');
  // Cut off before its thinking ended (80 tokens go fast): a draft in it is no pick.
  if (thought < 0 && /^\s*<think>/i.test(text)) return undefined;
  const answer = thought >= 0 ? text.slice(thought + '</think>'.length) : text;
  const s = answer.length > 4_000 ? answer.slice(0, 4_000) : answer;
  // One candidate per `{`: the object its matching `}` closes. Trying every `}` after it instead (every pair
  // of braces, each parse reading up to the whole text) let an answer of 4,000 nested braces block the
  // event loop for seconds.
  for (let start = s.indexOf('{'); start >= 0; start = s.indexOf('{', start + 1)) {
    const end = closingBrace(s, start);
    if (end < 0) continue;
    let obj: unknown;
    try {
      obj = JSON.parse(s.slice(start, end + 1));
    } catch {
      continue;
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) continue;
    const rec = obj as Record<string, unknown>;
    const key = Object.keys(rec).find((k) => k.toLowerCase() === 'tier');
    if (key === undefined) continue;
    const tier = rec[key];
    // An object that names its tier decides: a tier it names wrongly ("fast or deep?", "unknown") is no
    // answer, not one to look for in its reason's prose.
    if (typeof tier !== 'string' || !TIER_SET.has(tier.trim().toLowerCase())) return undefined;
    const reasonKey = Object.keys(rec).find((k) => k.toLowerCase() === 'reason');
    const reason =
      reasonKey !== undefined && typeof rec[reasonKey] === 'string' ? (rec[reasonKey] as string) : '';
    return { tier: tier.trim().toLowerCase() as TierName, reason: clip(reason, 200) };
  }
  // Prose: "Tier: deep (multi-step proof)" or "tier: deep - it needs ..." is a pick; one that goes on to name
  // another tier, or asks, is not.
  const word = TIER_WORD.exec(s);
  if (word?.[1])
    return HEDGE.test(word[2] ?? '') ? undefined : { tier: word[1].toLowerCase() as TierName, reason: '' };
  const bare = BARE_TIER.exec(s);
  if (bare?.[1]) return { tier: bare[1].toLowerCase() as TierName, reason: '' };
  return undefined;
}

export function readAnswer(body: string | undefined): string {
  if (body === undefined) return '';
  try {
    const json = JSON.parse(body) as { choices?: { message?: { content?: unknown } }[] };
    const c = json.choices?.[0]?.message?.content;
    if (typeof c === 'string') return c;
    // A list of parts, as Mistral and some compatible servers answer: its text parts, in order.
    if (!Array.isArray(c)) return '';
    let out = '';
    for (const p of c as ({ type?: unknown; text?: unknown } | null)[])
      if (p?.type === 'text' && typeof p.text === 'string') out += p.text;
    return out;
  } catch {
    return '';
  }
}
