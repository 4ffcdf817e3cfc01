import type { RuleConfig, TierName } from '../config/schema.js';
import type { RouteRuntime } from '../runtime.js';
import type { RequestFeatures } from './features.js';

export interface TierMatch {
  /** Undefined on a tie: no rule matched, or rules of equal priority disagreed. */
  readonly tier: TierName | undefined;
  readonly reason: string;
}

const compiled = new WeakMap<RuleConfig, RegExp>();

function regexOf(rule: RuleConfig): RegExp | undefined {
  const src = rule.if.last_user_message;
  if (src === undefined) return undefined;
  let re = compiled.get(rule);
  if (!re) {
    re = ruleRegex(src, 'g'); // g: matchClearOfCut walks the matches
    compiled.set(rule, re);
  }
  return re;
}

/**
 * A rule's `last_user_message` pattern, case-insensitive; with Unicode semantics (`\p{Script=Cyrillic}`, an
 * emoji as one character) when it is valid so, else as written (a lax `[\w-.]` that `u` refuses still loads).
 * Throws when it is no regular expression at all.
 */
export function ruleRegex(src: string, flags = ''): RegExp {
  try {
    return new RegExp(src, `${flags}iu`);
  } catch {
    return new RegExp(src, `${flags}i`);
  }
}

/**
 * Whether a pattern repeats a group that itself holds a repetition (`(\w+\s?)+`, `(a*)*`, `((ab)*c)*`): the
 * shape that can backtrack exponentially on a message it does not match. A rule's pattern comes from the
 * config but runs on client text, on the event loop: `^(\w+\s?)+$` took 0.9 s on 25 characters, doubling
 * with each one more. (V8's linear-time fallback does not take the `i` flag every rule has.) A heuristic for
 * a load-time warning: some such patterns are safe (`[a-z]+(\s[a-z]+)*`), and `(a|aa)+` is not caught.
 * `?` repeats at most once and is no repetition here.
 */
export function nestedRepetition(src: string): boolean {
  const outer: boolean[] = []; // for each open group: whether what encloses it held a repetition before it
  let holds = false; // the group being read holds a repetition so far
  let closedHolding: boolean | undefined; // the group just closed, if the last token was its `)`
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    let closed: boolean | undefined;
    if (c === '\\') i++;
    else if (c === '[') {
      for (i++; i < src.length && src[i] !== ']'; i++) if (src[i] === '\\') i++;
    } else if (c === '(') {
      outer.push(holds);
      holds = false;
    } else if (c === ')') {
      closed = holds;
      holds = (outer.pop() ?? false) || holds;
    } else if (c === '*' || c === '+' || (c === '{' && braceMax(src, i) > 1)) {
      if (closedHolding === true) return true;
      holds = true;
    }
    closedHolding = closed;
  }
  return false;
}

const BRACES = /\{(\d+)(,(\d*))?\}/y;

/** The most times a `{n}`, `{n,}` or `{n,m}` at `i` repeats (0 when the brace is a plain character). */
function braceMax(src: string, i: number): number {
  BRACES.lastIndex = i;
  const m = BRACES.exec(src);
  if (m === null) return 0;
  if (m[2] === undefined) return Number(m[1]);
  return m[3] === '' ? Infinity : Number(m[3]);
}

/** Whether `re` (global) matches `text` other than against the cut at its `end` or `start`. */
function matchClearOfCut(re: RegExp, text: string, cut: 'start' | 'end'): boolean {
  re.lastIndex = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (cut === 'end' ? m.index + m[0].length < text.length : m.index > 0) return true;
    if (m[0].length === 0) re.lastIndex++; // an empty match: step on (past the end, exec gives null)
  }
  return false;
}

/**
 * Only this much of each end of the last user message is tested: a regex never scans an unbounded input, and
 * the ask is found where people put it, before or after what they paste.
 */
const REGEX_INPUT_CHARS = 16_384;

function ruleMatches(
  rule: RuleConfig,
  f: RequestFeatures,
  lastUser: string,
  headers: Readonly<Record<string, unknown>>,
): boolean {
  const c = rule.if;
  if (c.min_prompt_tokens !== undefined && f.promptTokens < c.min_prompt_tokens) return false;
  if (c.max_prompt_tokens !== undefined && f.promptTokens > c.max_prompt_tokens) return false;
  if (c.tools !== undefined && c.tools !== f.tools) return false;
  if (c.images !== undefined && c.images !== f.images) return false;
  if (c.header !== undefined) {
    // `name=value`: the value is all after the first `=` (a base64 token or `k=v` holds more of them).
    const eq = c.header.indexOf('=');
    const name = eq < 0 ? c.header : c.header.slice(0, eq);
    const value = eq < 0 ? undefined : c.header.slice(eq + 1);
    const key = name.trim().toLowerCase();
    // Own headers only: Node's headers object inherits `constructor`, `__proto__` (SPEC §8: never lookups).
    const got = Object.hasOwn(headers, key) ? headers[key] : undefined;
    if (got === undefined || (value !== undefined && got !== value.trim())) return false;
  }
  const re = regexOf(rule);
  if (!re) return true;
  if (lastUser.length <= REGEX_INPUT_CHARS) {
    re.lastIndex = 0; // global: it walks its matches at the cuts below
    return re.test(lastUser);
  }
  // The cuts are not the message's ends: a match that reaches the head window's cut (where `$` would match)
  // or starts at the tail window's (where `^` would) is no match. A sentinel character past the cut was not
  // enough: `\W`, `.` and `[^…]` match it. (Cost: an unanchored match that ends exactly at the head's cut and
  // is not in the tail is missed; the middle of the message is never scanned anyway.)
  return (
    matchClearOfCut(re, lastUser.slice(0, REGEX_INPUT_CHARS), 'end') ||
    matchClearOfCut(re, lastUser.slice(-REGEX_INPUT_CHARS), 'start')
  );
}

/** A rule's priority when it gives none: all such rules are equals, so matching ones that disagree tie. */
const DEFAULT_PRIORITY = 0;

/**
 * The tier by rules: `x-router-tier` wins outright; else the matching rules of the highest priority (the
 * lowest `priority`; rules without one are all of priority 0, SPEC §2) decide; none matching, or a
 * disagreement among equals, is a tie for the LLM router to break.
 */
export function matchTier(
  route: RouteRuntime,
  f: RequestFeatures,
  lastUser: string,
  headerTier: TierName | undefined,
  headers: Readonly<Record<string, unknown>>,
): TierMatch {
  if (headerTier !== undefined) return { tier: headerTier, reason: 'header x-router-tier' };
  let bestPriority = Number.POSITIVE_INFINITY;
  let chosen: TierName | undefined;
  let names: string[] = [];
  let disagree = false;
  route.rules.forEach((rule, i) => {
    const priority = rule.priority ?? DEFAULT_PRIORITY;
    if (priority > bestPriority) return;
    if (!ruleMatches(rule, f, lastUser, headers)) return;
    const name = rule.name ?? `rules[${i}]`;
    if (priority < bestPriority) {
      bestPriority = priority;
      chosen = rule.tier;
      names = [name];
      disagree = false;
    } else {
      names.push(name);
      if (rule.tier !== chosen) disagree = true;
    }
  });
  if (chosen === undefined) return { tier: undefined, reason: 'no rule matched' };
  if (disagree) return { tier: undefined, reason: `rules disagree: ${names.join(', ')}` };
  return { tier: chosen, reason: `rule ${names[0]}` };
}
