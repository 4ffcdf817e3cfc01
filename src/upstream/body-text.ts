/**
 * A client's JSON body remembers the text it was parsed from, so an upstream can be sent that text with
 * only `model` changed instead of a re-serialisation of the whole object. JSON.stringify costs about
 * 1.6 ns a character on Node 20 (13 µs for a 2k-token prompt, 160 µs for 100 KB); the splice costs a scan
 * of the text outside its strings. The body must not change after parsing but for the `model` an
 * adapter sets: nothing in the gateway changes a client's body.
 */
import { skipSpace, stringEnd } from '../json-scan.js';

const SOURCE = Symbol('json source text');

/** The text, and the object it was parsed into: a spread copy of the body carries this along, but is not `of`. */
interface Source {
  readonly text: string;
  readonly of: object;
}

type WithSource = Record<string, unknown> & { [SOURCE]?: Source };

/**
 * Remembers `text` on the object `JSON.parse(text)` returned, under a symbol (JSON.stringify and
 * Object.keys skip it). Assigned, not defined non-enumerable: defineProperty cost ~0.2 µs a request.
 */
export function rememberSource(parsed: unknown, text: string): void {
  if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
    (parsed as WithSource)[SOURCE] = { text, of: parsed };
  }
}

/** The text a parsed object was parsed from (rememberSource), when it is that object's. */
export function sourceText(parsed: unknown): string | undefined {
  const source = (parsed as WithSource | null | undefined)?.[SOURCE];
  return source !== undefined && source.of === parsed ? source.text : undefined;
}

/**
 * The texts of the elements of top-level array `key` in a valid JSON object text, in order (an upstream's
 * numbers as it wrote them: a 20-digit id JSON.parse would round); undefined when the object's top level
 * cannot be read (topLevelMembers) or `key` holds no array.
 */
export function arrayElementTexts(text: string, key: string): string[] | undefined {
  const array = memberValueText(text, key);
  if (array === undefined || array.charCodeAt(0) !== 91) return undefined; // '['
  const out: string[] = [];
  let i = skipSpace(array, 1);
  if (array.charCodeAt(i) === 93) return out; // '[]'
  for (;;) {
    const end = valueEnd(array, i);
    if (end < 0) return undefined;
    out.push(array.slice(i, end));
    i = skipSpace(array, end);
    const c = array.charCodeAt(i);
    if (c === 93) return out; // ']'
    if (c !== 44) return undefined; // ','
    i = skipSpace(array, i + 1);
  }
}

/** The text of top-level member `key`'s value in a valid JSON object text; undefined as topLevelMembers says. */
export function memberValueText(text: string, key: string): string | undefined {
  const member = topLevelMembers(text)?.find((m) => m.key === key);
  return member === undefined ? undefined : text.slice(member.valueStart, member.end);
}

/**
 * The body's source text with its top-level `model` value replaced by `model`; undefined when the body has
 * no source text or the splice could differ from `JSON.stringify` in meaning: `model` absent, not a plain
 * string, spelt with escapes, or not what the parsed body holds, or any top-level key repeated (JSON.parse
 * keeps the last, which is what was validated; an upstream's parser may keep the first: `max_tokens: -5`).
 */
export function sourceWithModel(body: Record<string, unknown>, model: string): string | undefined {
  const source = (body as WithSource)[SOURCE];
  if (source?.of !== body || typeof body.model !== 'string') return undefined;
  const text = source.text;
  const span = topLevelStringSpan(text, 'model');
  // As many keys written as parsed: none repeated.
  if (span === undefined || span[2] !== keyCount(body)) return undefined;
  const [start, end] = span;
  const current = JSON.stringify(body.model);
  if (end - start !== current.length || !text.startsWith(current, start)) return undefined;
  return text.slice(0, start) + JSON.stringify(model) + text.slice(end);
}

/**
 * `body`, a shallow copy of a client's parsed body with top-level fields dropped, added or given new values
 * (a request fit: param-fit.ts; thinking blocks taken out of `messages`), as JSON with `model` set: the
 * client's own text of every member the copy left as it was, and a serialisation only of the members it
 * changed. So an integer past 2^53 in a field nobody touched (a `seed`, a vendor's own field) or a `1.0`
 * reaches the upstream as the client wrote it, fitted or not. A spread copy carries the source (a symbol
 * key, copied by the spread) and its original; members compare by identity, so only a shallow copy that
 * shares what it did not change is understood. Undefined when there is no source text, or any top-level key
 * is repeated or written with escapes.
 */
export function sourceWithEdits(body: Record<string, unknown>, model: string): string | undefined {
  const source = (body as WithSource)[SOURCE];
  if (source === undefined) return undefined;
  const original = source.of as Record<string, unknown>;
  const members = topLevelMembers(source.text);
  if (members === undefined || members.length !== keyCount(original)) return undefined;
  const text = source.text;
  const parts: string[] = [];
  for (const { key, start, end } of members) {
    if (key === 'model') parts.push(`"model":${JSON.stringify(model)}`);
    else if (!Object.hasOwn(body, key)) continue;
    else if (body[key] === original[key]) parts.push(text.slice(start, end));
    else pushMember(parts, key, body[key]);
  }
  if (!Object.hasOwn(original, 'model')) parts.push(`"model":${JSON.stringify(model)}`);
  for (const key in body)
    if (!Object.hasOwn(original, key) && key !== 'model') pushMember(parts, key, body[key]);
  return `{${parts.join(',')}}`;
}

/** `"key":value` as JSON.stringify writes a member; nothing for an undefined value (JSON.stringify skips it). */
function pushMember(parts: string[], key: string, value: unknown): void {
  const json = JSON.stringify(value);
  if (json !== undefined) parts.push(`${JSON.stringify(key)}:${json}`);
}

/**
 * One top-level member of a JSON object text: its key, [start of the key's quote, end after its value), and
 * where its value starts.
 */
interface Member {
  readonly key: string;
  readonly start: number;
  readonly valueStart: number;
  readonly end: number;
}

/**
 * The top-level members of a valid JSON object text, in order; undefined when the text is not an object,
 * a key is written with escapes (`"mod\u0065l"` is `model` too) or a key repeats (JSON.parse keeps the last;
 * an upstream's parser may keep the first).
 */
export function topLevelMembers(text: string): Member[] | undefined {
  let i = skipSpace(text, 0);
  if (text.charCodeAt(i) !== 123) return undefined; // '{'
  const members: Member[] = [];
  const seen = new Set<string>();
  i = skipSpace(text, i + 1);
  if (text.charCodeAt(i) === 125) return members; // '{}'
  for (;;) {
    if (text.charCodeAt(i) !== 34) return undefined;
    const keyEnd = stringEnd(text, i);
    if (keyEnd < 0) return undefined;
    const key = text.slice(i + 1, keyEnd);
    // Searched in the key alone: a search of the text from each key ran to its end when no `\` followed
    // (80,000 keys ahead of a 4 MB prompt: seconds of one core).
    if (key.includes('\\')) return undefined;
    if (seen.has(key)) return undefined;
    seen.add(key);
    let j = skipSpace(text, keyEnd + 1);
    if (text.charCodeAt(j) !== 58) return undefined; // ':'
    const valueStart = skipSpace(text, j + 1);
    const end = valueEnd(text, valueStart);
    if (end < 0) return undefined;
    members.push({ key, start: i, valueStart, end });
    j = skipSpace(text, end);
    const c = text.charCodeAt(j);
    if (c === 125) return members; // '}'
    if (c !== 44) return undefined; // ','
    i = skipSpace(text, j + 1);
  }
}

/** The index just past the JSON value that starts at `i` (strings skipped with indexOf); -1 if it never ends. */
function valueEnd(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c === 34) {
    const end = stringEnd(text, i);
    return end < 0 ? -1 : end + 1;
  }
  if (c === 123 || c === 91) {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text.charCodeAt(j);
      if (d === 34) {
        j = stringEnd(text, j);
        if (j < 0) return -1;
      } else if (d === 123 || d === 91) depth++;
      else if ((d === 125 || d === 93) && --depth === 0) return j + 1;
    }
    return -1;
  }
  // A number, true, false or null: up to the next delimiter.
  let j = i;
  for (let d = text.charCodeAt(j); j < text.length; d = text.charCodeAt(++j)) {
    if (d === 44 || d === 125 || d === 93 || d === 32 || d === 10 || d === 13 || d === 9) break;
  }
  return j > i ? j : -1;
}

/**
 * Where the string value of top-level `key` sits in a valid JSON object text: [start of its opening quote,
 * end after its closing quote, how many top-level keys the text writes]. Undefined when the key is absent or appears twice (JSON.parse keeps the
 * last; an upstream's parser may not), when its value is not a string, or when any top-level key is
 * written with escapes (`"mod\u0065l"` is `model` too). Strings are skipped with indexOf, so a body that
 * is mostly message text costs little more than a few searches.
 */
export function topLevelStringSpan(text: string, key: string): [number, number, number] | undefined {
  let depth = 0;
  let expectKey = false;
  let keys = 0;
  let found: [number, number] | undefined;
  const n = text.length;
  // The next `\` at or after a key's start, found once and moved forward only (see topLevelMembers).
  let backslash = -2;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      const end = stringEnd(text, i);
      if (end < 0) return undefined;
      if (depth === 1 && expectKey) {
        expectKey = false;
        keys++;
        if (backslash !== -1 && backslash <= i) backslash = text.indexOf('\\', i + 1);
        if (backslash >= 0 && backslash < end) return undefined;
        if (end - i - 1 === key.length && text.startsWith(key, i + 1)) {
          if (found) return undefined;
          let j = skipSpace(text, end + 1);
          if (text.charCodeAt(j) !== 58) return undefined; // ':'
          j = skipSpace(text, j + 1);
          if (text.charCodeAt(j) !== 34) return undefined;
          const valueEnd = stringEnd(text, j);
          if (valueEnd < 0) return undefined;
          found = [j, valueEnd + 1];
          i = valueEnd + 1;
          continue;
        }
      }
      i = end + 1;
      continue;
    }
    if (c === 123 /* { */) expectKey = ++depth === 1;
    else if (c === 91 /* [ */) depth++;
    else if (c === 125 /* } */ || c === 93 /* ] */) depth--;
    else if (c === 44 /* , */ && depth === 1) expectKey = true;
    i++;
  }
  return found && [found[0], found[1], keys];
}

/** How many keys a parsed JSON object has (for-in, unlike Object.keys, builds no array; symbols are skipped). */
function keyCount(body: Record<string, unknown>): number {
  let n = 0;
  for (const _ in body) n++; // a JSON.parse object: own keys only (its prototype has none enumerable)
  return n;
}
