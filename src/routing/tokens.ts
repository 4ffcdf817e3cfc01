/**
 * Token estimates for routing (cost, tier rules, context-window fit). Routing and every other production
 * caller pass APPROXIMATE: a character-class estimate (~2 ns/char against ~150-250 ns/char for BPE;
 * typically within 10 %) keeps the hot path bounded. The exact mode (o200k BPE on the first
 * EXACT_BUDGET_CHARS of text, the rest estimated) exists for the bench's comparison and the tests that
 * measure the estimate against it. Never throws, whatever the body holds.
 */
import type { UpstreamStatsView } from './types.js';

/** Completion tokens assumed when neither the client nor the upstream's history says. */
export const DEFAULT_OUTPUT_TOKENS = 256;
/** Text counted exactly per request (~4 KB ≈ 1,000 tokens ≈ 0.5 ms of BPE); the rest is estimated. */
const EXACT_BUDGET_CHARS = 4_096;
/** Chat framing per message (role, separators), as in OpenAI's counting guide. */
export const MESSAGE_OVERHEAD_TOKENS = 4;
/** Every reply is primed with `<|start|>assistant<|message|>`. */
export const REPLY_PRIMING_TOKENS = 3;
/** OpenAI's vision pricing: a low-detail image is 85 tokens; high/auto is 85 + 170 per 512 px tile,
 * and without the image's size we assume a 1024×1024 (4 tiles). */
export const IMAGE_TOKENS_LOW = 85;
export const IMAGE_TOKENS_HIGH = 765;
/**
 * A file part (a PDF): OpenAI counts each page's text and an image of it. Pages run from a few KB (text) to
 * hundreds (scans): a page's image tokens per 32 KiB of the file's data, one page at least (a `file_id`).
 */
const FILE_BYTES_PER_PAGE = 32 * 1024;
/** Audio input: ~10 tokens a second (OpenAI's audio models), a second of 16 kHz 16-bit WAV being 32 KB. */
const AUDIO_BYTES_PER_TOKEN = 3_200;

/** A content part that carries an image: OpenAI's `image_url`, and the `image` / `input_image` variants. */
export function isImagePart(part: unknown): boolean {
  if (typeof part !== 'object' || part === null) return false;
  const type = (part as { type?: unknown }).type;
  return type === 'image_url' || type === 'image' || type === 'input_image';
}

export interface PromptBody {
  readonly messages?: unknown;
  readonly tools?: unknown;
  readonly functions?: unknown;
}

export interface EstimateOptions {
  /** Override EXACT_BUDGET_CHARS (0 = estimate only). */
  readonly exactBudgetChars?: number;
}

type Counter = (text: string) => number;

let exactCounter: Counter | undefined;
let loading: Promise<void> | undefined;

/**
 * Loads the o200k tokenizer once (~150 ms, several MB). Call it at startup; until it resolves the
 * estimates use the character-class approximation. Never rejects.
 */
export function loadTokenizer(): Promise<void> {
  loading ??= import('gpt-tokenizer/encoding/o200k_base').then(
    (m) => {
      // An empty disallow set: user text containing "<|endoftext|>" is counted as text, not thrown on.
      const opts = { disallowedSpecial: new Set<string>() };
      exactCounter = (text) => m.countTokens(text, opts);
    },
    () => {
      // Stay on the approximation; routing must not depend on the tokenizer being present.
    },
  );
  return loading;
}

/** True once exact counting is available. */
export function tokenizerReady(): boolean {
  return exactCounter !== undefined;
}

/**
 * Longer texts are read in SAMPLE_BLOCKS short blocks, one in each of as many equal stretches: the estimate
 * then costs the same ~6 µs however long the prompt (read whole with the old per-class branches, a
 * 2,000-token prompt took ~20 µs and a 100 KB one ~240 µs, more than all the rest of the gateway's
 * per-request work; ASCII is now one table lookup per character, ~1 ns). Measured against reading
 * whole texts made of alternating prose, code, JSON and CJK sections: median 1.4 % apart, worst 6 %.
 */
const SAMPLE_ABOVE_CHARS = 8_192;
const SAMPLE_BLOCKS = 64;
const SAMPLE_BLOCK_CHARS = 64;

/** Milli-tokens of a space: most go with the word after them (` the`). */
const SPACE_MILLI = 113;

/**
 * Tokens per character in thousandths below U+3000. ASCII by class: letters, digits, space, line breaks, the
 * rest. Above it by script, fitted against o200k on everyday sentences (and `tree` listings, formulas): one
 * quarter-token for every alphabet read Amharic 8x low (Ethiopic is ~2.2 tokens a character), Sinhala and
 * Khmer 2x, box drawing and maths 3x. Scripts a tokenizer rarely sees cost ~2 tokens a character.
 */
const MILLI = (() => {
  const w = new Uint16Array(0x3000);
  for (let c = 0; c < 0x80; c++) {
    if ((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a)) w[c] = 215;
    else if (c >= 0x30 && c <= 0x39)
      w[c] = 0; // by group of 3 (DIGIT_GROUP_MILLI); no other class is 0
    else if (c === 0x20) w[c] = SPACE_MILLI;
    else if (c === 0x0a || c === 0x0d || c === 0x09) w[c] = 187;
    else w[c] = 600;
  }
  // [first code point, milli-tokens per character], each band up to the next one's start.
  const bands: readonly (readonly [number, number])[] = [
    [0x0080, 400], // Latin-1: accents inside European words
    [0x0100, 700], // Latin Extended-A/B
    [0x0250, 1200], // IPA, modifiers, combining marks
    [0x0370, 400], // Greek
    [0x0400, 320], // Cyrillic
    [0x0530, 340], // Armenian
    [0x0590, 340], // Hebrew
    [0x0600, 300], // Arabic (410 read undotted everyday text 1.5x high)
    [0x0700, 1750], // Syriac
    [0x0780, 1900], // Thaana
    [0x07c0, 410], // N'Ko .. Arabic Extended
    [0x0900, 330], // Devanagari .. Gujarati
    [0x0b00, 1000], // Odia
    [0x0b80, 330], // Tamil .. Malayalam
    [0x0d80, 700], // Sinhala
    [0x0e00, 390], // Thai
    [0x0e80, 1800], // Lao
    [0x0f00, 1500], // Tibetan
    [0x1000, 500], // Myanmar
    [0x10a0, 340], // Georgian
    [0x1100, 600], // Hangul Jamo
    [0x1200, 2200], // Ethiopic
    [0x13a0, 2000], // Cherokee, Canadian syllabics, Ogham, Runic, Philippine scripts
    [0x1780, 590], // Khmer
    [0x1800, 2000], // Mongolian .. phonetic extensions
    [0x1e00, 450], // Latin Extended Additional (Vietnamese)
    [0x1f00, 1000], // Greek Extended
    [0x2000, 700], // general punctuation: dashes, quotes, ellipsis
    [0x2070, 1200], // super/subscripts, currency, letterlike, number forms
    [0x2190, 1000], // arrows
    [0x2200, 1300], // mathematical operators
    [0x2300, 1800], // technical, control pictures, enclosed alphanumerics
    [0x2500, 1200], // box drawing (`tree`)
    [0x2580, 1000], // blocks, geometric shapes
    [0x2600, 1200], // symbols, dingbats
    [0x27c0, 1800], // more maths and arrows, Glagolitic, Coptic, CJK radicals
  ];
  for (let i = 0; i < bands.length; i++) {
    const [from, milli] = bands[i]!;
    w.fill(milli, from, bands[i + 1]?.[0] ?? 0x3000);
  }
  // Other scripts' digits (Arabic-Indic `٣`, Devanagari `३`, Thai `๓`): about a token each, not a
  // letter's share (a prompt of them read at a third of its size).
  const digit = /\p{Nd}/u;
  for (let c = 0x80; c < 0x3000; c++) if (digit.test(String.fromCharCode(c))) w[c] = 1000;
  return w;
})();

/**
 * Character-class estimate, fitted against o200k on English, code, JSON, CJK, emoji and everyday sentences in
 * twenty scripts (typically within 10-25 %): tokens per character of each class.
 */
export function approximateTextTokens(text: string): number {
  return text.length === 0 ? 0 : Math.max(1, Math.round(fractionalTextTokens(text)));
}

/**
 * The estimate unrounded: a short piece of a text (a stream's delta) is a fraction of a token, and the
 * pieces add up to the whole text's estimate where rounding each would not.
 */
export function fractionalTextTokens(text: string): number {
  const len = text.length;
  if (len === 0) return 0;
  const sampled = len > SAMPLE_ABOVE_CHARS;
  const blocks = sampled ? SAMPLE_BLOCKS : 1;
  const size = sampled ? SAMPLE_BLOCK_CHARS : len;
  const stretch = len / blocks;
  let milli = 0; // thousandths of a token, from MILLI
  let cjk = 0;
  let other = 0;
  let astral = 0;
  for (let b = 0; b < blocks; b++) {
    // A quasi-random place within each stretch (golden-ratio steps): evenly spaced blocks alias with
    // repetitive text (a template repeated 40 times read 18 % low). `| 0` keeps the index a small
    // integer: a float index makes every charCodeAt below twice as slow.
    const from = sampled ? (b * stretch + ((b * 0.618_034 + 0.5) % 1) * (stretch - size)) | 0 : 0;
    const to = from + size;
    /** The last character below U+3000, and how many times in a row it came after its first. */
    let prev = -1;
    let run = 0;
    /** Digits in a row so far. */
    let digits = 0;
    for (let i = from; i < to; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x3000) {
        const w = MILLI[c]!;
        if (w === 0) {
          // A digit. o200k cuts a number into groups of up to 3 digits, a token each: 9 digits are 3 tokens
          // (at 0.66 a digit, a pasted list of ids read 1.5x high and was refused as past a window it fitted).
          // It joins no space to a number: one just before it is a token of its own.
          if (digits++ % 3 === 0) milli += DIGIT_GROUP_MILLI;
          if (digits === 1 && prev === 0x20 && run < 3) milli += DIGIT_GROUP_MILLI - SPACE_MILLI;
          prev = c;
          run = 0;
          continue;
        }
        if (digits > 0) {
          digits = 0;
          // Just after a number, a symbol or space alone is a token of its own too (`,` in `1,000`, `-` in a
          // date), where a word that follows takes it (` the` in `2024 the`) and other symbols join it (`);`).
          if (c < 0x80 && !isAlnum(c) && standsAlone(text.charCodeAt(i + 1))) {
            milli += DIGIT_GROUP_MILLI;
            // Counted whole: a number right after it adds nothing more for it (`1 2 3`).
            prev = -1;
            run = 0;
            continue;
          }
        }
        // A run of one ASCII symbol or space (`=====`, `|------|`, padding): o200k merges it into a token
        // per ~16, where each alone costs 0.6 (a separator-line log read 2-16x high, refused as too long).
        if (c !== prev) {
          prev = c;
          run = 0;
          milli += w;
        } else if (++run < 3 || c >= 0x80 || isAlnum(c)) milli += w;
        else milli += RUN_MILLI;
      } else if (c >= 0xd800 && c <= 0xdbff) {
        astral++;
        i++;
      } else if (c <= 0xffef) cjk++;
      else if (c === c) other++; // NaN past the end of the text counts as nothing
    }
  }
  const t = milli / 1000 + cjk * 0.75 + other * 0.249 + astral * 2.08;
  return sampled ? (t * len) / (blocks * size) : t;
}

/** Milli-tokens of each character past the third of a run of one ASCII symbol or space. */
const RUN_MILLI = 62;
/** Milli-tokens of each group of up to 3 digits. */
const DIGIT_GROUP_MILLI = 1000;

/** A character after which a symbol or space stands alone: a digit, a blank, or the text's end (NaN). */
function standsAlone(next: number): boolean {
  return (next >= 0x30 && next <= 0x39) || next === 0x20 || next === 0x0a || next === 0x0d || next !== next;
}

function isAlnum(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a);
}

function countWith(text: string, exact: boolean): number {
  if (exact && exactCounter !== undefined) {
    try {
      return exactCounter(text);
    } catch {
      // Fall through: an estimate beats failing the request.
    }
  }
  return approximateTextTokens(text);
}

/** Tokens of one string: exact when the tokenizer is loaded and the text is within the budget. */
export function estimateTextTokens(text: string, opts?: EstimateOptions): number {
  if (typeof text !== 'string' || text.length === 0) return 0;
  const budget = budgetOf(opts);
  if (exactCounter === undefined && budget > 0) void loadTokenizer();
  return countWith(text, text.length <= budget);
}

/**
 * What the gateway uses everywhere: routing needs magnitudes (the character-class estimate is within
 * ~10-20% and ten times cheaper than BPE), and metrics and cost count the usage upstreams report.
 */
export const APPROXIMATE: EstimateOptions = { exactBudgetChars: 0 };

function budgetOf(opts: EstimateOptions | undefined): number {
  const b = opts?.exactBudgetChars;
  return b !== undefined && b >= 0 ? b : EXACT_BUDGET_CHARS;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null;
}

/** One request's running count: exact while the char budget lasts, estimated after. */
class Tally {
  tokens = 0;
  budget: number;
  constructor(budget: number) {
    this.budget = budget;
  }

  text(x: unknown): void {
    if (typeof x !== 'string' || x.length === 0) return;
    const exact = x.length <= this.budget;
    if (exact) this.budget -= x.length;
    this.tokens += countWith(x, exact);
  }

  /** Content: a string or an array of parts (text, image_url, refusal...); anything else is ignored. */
  content(c: unknown): void {
    if (typeof c === 'string') {
      this.text(c);
      return;
    }
    if (!Array.isArray(c)) return;
    for (let i = 0; i < c.length; i++) {
      const part: unknown = c[i];
      if (typeof part === 'string') {
        this.text(part);
        continue;
      }
      if (!isRecord(part)) continue;
      if (isImagePart(part)) {
        const img = part.image_url;
        this.tokens += isRecord(img) && img.detail === 'low' ? IMAGE_TOKENS_LOW : IMAGE_TOKENS_HIGH;
      } else if (part.type === 'file') {
        const file = part.file;
        const bytes = isRecord(file) ? base64Bytes(file.file_data) : 0;
        this.tokens += IMAGE_TOKENS_HIGH * Math.max(1, Math.ceil(bytes / FILE_BYTES_PER_PAGE));
      } else if (part.type === 'input_audio') {
        const audio = part.input_audio;
        this.tokens += Math.max(
          1,
          Math.ceil((isRecord(audio) ? base64Bytes(audio.data) : 0) / AUDIO_BYTES_PER_TOKEN),
        );
      } else {
        this.text(part.text);
        this.text(part.refusal);
      }
    }
  }

  /** `{ name, arguments }` of a tool call or legacy function call. */
  call(fn: unknown): void {
    if (!isRecord(fn)) return;
    this.tokens += MESSAGE_OVERHEAD_TOKENS;
    this.text(fn.name);
    this.text(fn.arguments);
  }

  message(m: unknown): void {
    if (!isRecord(m)) return;
    this.tokens += MESSAGE_OVERHEAD_TOKENS;
    this.content(m.content);
    if (typeof m.name === 'string') {
      this.tokens += 1;
      this.text(m.name);
    }
    const calls = m.tool_calls;
    if (Array.isArray(calls)) {
      for (let i = 0; i < calls.length; i++) {
        const call: unknown = calls[i];
        if (isRecord(call)) this.call(call.function);
      }
    }
    this.call(m.function_call);
  }
}

/** The bytes a base64 string (or a data URL's base64 part) stands for; 0 for anything else. */
function base64Bytes(data: unknown): number {
  if (typeof data !== 'string') return 0;
  const comma = data.startsWith('data:') ? data.indexOf(',') + 1 : 0;
  const padding = data.endsWith('==') ? 2 : data.endsWith('=') ? 1 : 0;
  return Math.max(0, Math.floor(((data.length - comma) * 3) / 4) - padding);
}

/**
 * Tool schemas: JSON length / 6, cheap and bounded. OpenAI renders them for the model in a compact form of
 * its own (~0.7 of the JSON's own tokens; at / 4, 50 tools read 1.7x high and a request that fitted its window
 * was refused); a provider that counts them as JSON is under-estimated, the direction that costs no refusal.
 */
const TOOL_CHARS_PER_TOKEN = 6;

function jsonTokens(x: unknown): number {
  if (x === undefined || x === null) return 0;
  try {
    const s = JSON.stringify(x);
    return typeof s === 'string' ? Math.ceil(s.length / TOOL_CHARS_PER_TOKEN) : 0;
  } catch {
    // Cycles or BigInt cannot come from a parsed JSON body; if they do, they add nothing.
    return 0;
  }
}

/** Estimated prompt tokens of an OpenAI Chat Completions body: messages, parts, tool calls, tools, functions. */
export function estimatePromptTokens(body: PromptBody, opts?: EstimateOptions): number {
  if (!isRecord(body)) return 0;
  const budget = budgetOf(opts);
  // The BPE tables cost ~50 MB of heap: they load only when someone asks for exact counts.
  if (exactCounter === undefined && budget > 0) void loadTokenizer();
  const t = new Tally(budget);
  try {
    const messages = body.messages;
    if (Array.isArray(messages) && messages.length > 0) {
      for (let i = 0; i < messages.length; i++) t.message(messages[i]);
      t.tokens += REPLY_PRIMING_TOKENS;
    }
    const tools = body.tools;
    if (Array.isArray(tools) && tools.length > 0) t.tokens += jsonTokens(tools);
    // Legacy function calling: the same schemas by their old name.
    const functions = body.functions;
    if (Array.isArray(functions) && functions.length > 0) t.tokens += jsonTokens(functions);
  } catch {
    // Only a throwing getter or proxy gets here (never a parsed JSON body): keep what was counted.
  }
  return t.tokens;
}

/** `max_completion_tokens` (preferred, OpenAI's current name) or `max_tokens`, if a positive integer. */
export function requestedOutputTokens(body: unknown): number | undefined {
  if (!isRecord(body)) return undefined;
  const a = body.max_completion_tokens;
  if (typeof a === 'number' && Number.isSafeInteger(a) && a > 0) return a;
  const b = body.max_tokens;
  if (typeof b === 'number' && Number.isSafeInteger(b) && b > 0) return b;
  return undefined;
}

/**
 * Expected completion tokens (SPEC §2): the client's limit if given, else the upstream's observed mean
 * when `stats` is passed, else undefined (strategies then use DEFAULT_OUTPUT_TOKENS).
 */
export function expectedOutputTokens(
  body: unknown,
  stats?: Pick<UpstreamStatsView, 'meanOutputTokens'>,
): number | undefined {
  return requestedOutputTokens(body) ?? stats?.meanOutputTokens;
}
