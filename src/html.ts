/**
 * HTML character references, for text that came as HTML: an upstream's error page (adapters/common.ts
 * htmlPageText), and our secrets as such a page may spell them (observability/scrub.ts).
 */

/**
 * The ASCII characters HTML5 names, by name: PHP's `htmlentities(..., ENT_HTML5)` writes every one of them
 * (`sk-a_b.c` as `sk-a&lowbar;b&period;c`); other encoders only `& < > " '`.
 */
export const HTML5_ASCII_NAMES: Readonly<Record<string, string>> = {
  '\t': 'Tab',
  '\n': 'NewLine',
  '!': 'excl',
  '"': 'quot',
  '#': 'num',
  $: 'dollar',
  '%': 'percnt',
  '&': 'amp',
  "'": 'apos',
  '(': 'lpar',
  ')': 'rpar',
  '*': 'ast',
  '+': 'plus',
  ',': 'comma',
  '.': 'period',
  '/': 'sol',
  ':': 'colon',
  ';': 'semi',
  '<': 'lt',
  '=': 'equals',
  '>': 'gt',
  '?': 'quest',
  '@': 'commat',
  '[': 'lsqb',
  '\\': 'bsol',
  ']': 'rsqb',
  '^': 'Hat',
  _: 'lowbar',
  '`': 'grave',
  '{': 'lcub',
  '|': 'verbar',
  '}': 'rcub',
};

/** Names to characters, as HTML reads them (case-sensitive: `&Hat;`), with the usual no-break space. */
const NAMED: ReadonlyMap<string, string> = new Map([
  ...Object.entries(HTML5_ASCII_NAMES).map(([c, name]) => [name, c] as const),
  ['nbsp', '\u00a0'],
  ['QUOT', '"'],
  ['AMP', '&'],
  ['LT', '<'],
  ['GT', '>'],
]);

const REFERENCE = /&(?:#(\d{1,8})|#[xX]([\da-fA-F]{1,7})|([A-Za-z]{2,8}));/g;

/**
 * `text` with its character references decoded: numeric ones, and the named ones of ASCII characters (plus
 * `&nbsp;`); other names stay as written. A number that is no character (0, a surrogate, past U+10FFFF)
 * reads as U+FFFD, as HTML reads it: a lone surrogate in an answer's JSON is refused by strict readers.
 */
export function decodeHtmlReferences(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(REFERENCE, (all, dec?: string, hex?: string, name?: string) => {
    if (name !== undefined) return NAMED.get(name) ?? all;
    const code = dec !== undefined ? Number(dec) : Number.parseInt(hex!, 16);
    return code > 0 && code <= 0x10ffff && (code < 0xd800 || code > 0xdfff)
      ? String.fromCodePoint(code)
      : '\ufffd';
  });
}
