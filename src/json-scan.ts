/**
 * Scanning JSON text without parsing it: the few questions the gateway asks of a body or an answer before
 * (or instead of) a JSON.parse. One string-skipping rule for all of them: a string ends at the first quote
 * preceded by an even number of backslashes, found with indexOf rather than a character loop.
 */

/** Index of the quote closing the string that opens at `open`; -1 if it never closes. */
export function stringEnd(text: string, open: number): number {
  let j = open;
  for (;;) {
    j = text.indexOf('"', j + 1);
    if (j < 0) return -1;
    let backslashes = 0;
    while (text.charCodeAt(j - 1 - backslashes) === 92) backslashes++;
    if ((backslashes & 1) === 0) return j;
  }
}

/** A text saved with a byte order mark, without it (JSON.parse and our scanners refuse U+FEFF; fetch's json() and TextDecoder drop it). */
export function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** The first index at or after `i` that is not JSON whitespace (space, tab, LF, CR). */
export function skipSpace(text: string, i: number): number {
  let c = text.charCodeAt(i);
  while (c === 32 || c === 10 || c === 13 || c === 9) c = text.charCodeAt(++i);
  return i;
}

/** The last index before `end` that is not JSON whitespace; -1 if there is none. */
export function skipSpaceBack(text: string, end = text.length): number {
  let i = end - 1;
  let c = text.charCodeAt(i);
  while (c === 32 || c === 10 || c === 13 || c === 9) c = text.charCodeAt(--i);
  return i;
}

/** Index of the `}` closing the object that opens at `open`, strings skipped; -1 if it never closes. */
export function closingBrace(text: string, open: number): number {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      i = stringEnd(text, i);
      if (i < 0) return -1;
    } else if (c === 123) depth++;
    else if (c === 125 && --depth === 0) return i;
  }
  return -1;
}

/** Whether arrays and objects nest deeper than `maxDepth` anywhere outside strings. */
export function nestsDeeperThan(text: string, maxDepth: number): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      i = stringEnd(text, i);
      if (i < 0) return false; // unterminated: JSON.parse refuses it
    } else if (c === 123 || c === 91) {
      if (++depth > maxDepth) return true;
    } else if (c === 125 || c === 93) depth--;
  }
  return false;
}
