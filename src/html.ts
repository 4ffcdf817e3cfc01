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

/** HTML 4's names of U+00A0 to U+00FF, in order: the accented letters and signs a European page writes. */
const LATIN1_NAMES = (
  'nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy reg macr deg plusmn sup2 sup3 ' +
  'acute micro para middot cedil sup1 ordm raquo frac14 frac12 frac34 iquest Agrave Aacute Acirc Atilde ' +
  'Auml Aring AElig Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde Ograve Oacute ' +
  'Ocirc Otilde Ouml times Oslash Ugrave Uacute Ucirc Uuml Yacute THORN szlig agrave aacute acirc atilde ' +
  'auml aring aelig ccedil egrave eacute ecirc euml igrave iacute icirc iuml eth ntilde ograve oacute ocirc ' +
  'otilde ouml divide oslash ugrave uacute ucirc uuml yacute thorn yuml'
).split(' ');

/** HTML 4's other names that pages still write: punctuation, spaces, a few letters and signs. */
const TYPOGRAPHIC_NAMES: Readonly<Record<string, number>> = {
  OElig: 0x152,
  oelig: 0x153,
  Scaron: 0x160,
  scaron: 0x161,
  Yuml: 0x178,
  fnof: 0x192,
  circ: 0x2c6,
  tilde: 0x2dc,
  ensp: 0x2002,
  emsp: 0x2003,
  thinsp: 0x2009,
  zwnj: 0x200c,
  zwj: 0x200d,
  lrm: 0x200e,
  rlm: 0x200f,
  ndash: 0x2013,
  mdash: 0x2014,
  lsquo: 0x2018,
  rsquo: 0x2019,
  sbquo: 0x201a,
  ldquo: 0x201c,
  rdquo: 0x201d,
  bdquo: 0x201e,
  dagger: 0x2020,
  Dagger: 0x2021,
  bull: 0x2022,
  hellip: 0x2026,
  permil: 0x2030,
  prime: 0x2032,
  Prime: 0x2033,
  lsaquo: 0x2039,
  rsaquo: 0x203a,
  euro: 0x20ac,
  trade: 0x2122,
  larr: 0x2190,
  uarr: 0x2191,
  rarr: 0x2192,
  darr: 0x2193,
  harr: 0x2194,
};

/** Names to characters, as HTML reads them (case-sensitive: `&Hat;`, `&Eacute;`). */
const NAMED: ReadonlyMap<string, string> = new Map([
  ...Object.entries(HTML5_ASCII_NAMES).map(([c, name]) => [name, c] as const),
  ['QUOT', '"'],
  ['AMP', '&'],
  ['LT', '<'],
  ['GT', '>'],
  ...LATIN1_NAMES.map((name, i) => [name, String.fromCharCode(0xa0 + i)] as const),
  ...Object.entries(TYPOGRAPHIC_NAMES).map(([name, code]) => [name, String.fromCharCode(code)] as const),
]);

const REFERENCE = /&(?:#(\d{1,8})|#[xX]([\da-fA-F]{1,7})|([A-Za-z][A-Za-z\d]{1,7}));/g;

/**
 * `text` with its character references decoded: numeric ones, and the named ones of ASCII characters, of
 * Latin-1's and of HTML 4's common punctuation (`&eacute;`, `&ndash;`, `&hellip;`); other names stay as
 * written. A number that is no character (0, a surrogate, past U+10FFFF)
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
