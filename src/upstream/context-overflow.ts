/**
 * A request refused for being longer than the model's context window, as upstreams word it: OpenAI's own
 * code for it (`context_length_exceeded`, which clients branch on) given to those that send none, and the
 * window the message states, so failover can tell whether another upstream's window is larger.
 */

/** OpenAI's error code for a request past the model's context window. */
export const CONTEXT_LENGTH_EXCEEDED = 'context_length_exceeded';

/**
 * How servers say it: OpenAI, vLLM, DeepSeek and SGLang ("This model's maximum context length is 8192 tokens"),
 * Mistral ("too large for model with 32768 maximum context length"), Anthropic ("prompt is too long: 208310
 * tokens > 200000 maximum", "input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000"),
 * llama.cpp ("request (9000 tokens) exceeds the available context size (4096 tokens)"), Gemini ("The input
 * token count (1200000) exceeds the maximum number of tokens allowed (1048576)"), Hugging Face TGI ("`inputs`
 * tokens + `max_new_tokens` must be <= 4096") and TEI's 413 ("`inputs` must have less than 512 tokens"). Each
 * alternative is anchored on fixed words: no backtracking over a message.
 */
const OVERFLOW =
  /maximum context length|prompt is too long|exceed(?:s|ed)? (?:the )?(?:available |maximum )?context (?:size|length|limit|window)|context length exceeded|input token count \(\d{1,12}\) exceeds the maximum|`max_new_tokens` must be <= \d|`inputs` must have less than \d/i;

/**
 * A stated count: plain digits, or digits in groups of three ("8,192", "8 192", as some servers print them); whole,
 * not the start of a longer number, a decimal or an exponent ("1e308" states no window of 1). At most 12 digits
 * plain, 15 grouped: a long run of digits costs each start position a few steps, not the rest of the run.
 */
const COUNT = String.raw`(\d{1,3}(?:[, \u00a0\u202f]\d{3}){1,4}|\d{1,12})(?!\d|[.,]\d|[eE][+-]?\d)`;

/** The window the message states, in the same servers' words. */
const STATED_WINDOW = new RegExp(
  [
    `maximum context length is ${COUNT}`,
    String.raw`(?<![\d.,])${COUNT} maximum context length`,
    `tokens > ${COUNT} maximum`,
    String.raw`exceed context limit: \d{1,12} \+ \d{1,12} > ${COUNT}`,
    String.raw`context size \(${COUNT} tokens\)`,
    String.raw`maximum number of tokens allowed \(${COUNT}\)`,
    `\`max_new_tokens\` must be <= ${COUNT}`,
    `\`inputs\` must have less than ${COUNT} tokens`,
  ].join('|'),
  'i',
);

/** Whether an upstream's error message says the request is past the model's context window. */
export function saysContextOverflow(message: string): boolean {
  return OVERFLOW.test(message);
}

/** The context window (tokens) a refusal's message states, if it states one. */
export function statedWindow(message: string): number | undefined {
  const m = STATED_WINDOW.exec(message);
  if (m === null) return undefined;
  let digits: string | undefined;
  for (let i = 1; digits === undefined && i < m.length; i++) digits = m[i];
  const n = Number(digits?.replace(/\D/g, ''));
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}
