import { describe, expect, it } from 'vitest';
import { decodeHtmlReferences, HTML5_ASCII_NAMES } from '../../src/html.js';

describe('decodeHtmlReferences', () => {
  it('decodes numeric references and the named ones of ASCII characters', () => {
    expect(decodeHtmlReferences('a &amp; b &#8212; &#x21;&#X21; &lt;x&gt; &quot;q&quot; &apos;')).toBe(
      'a & b \u2014 !! <x> "q" \'',
    );
    expect(decodeHtmlReferences('sk&lowbar;a&plus;b&sol;c&equals;&period;&Hat;&nbsp;')).toBe(
      'sk_a+b/c=.^\u00a0',
    );
    for (const [c, name] of Object.entries(HTML5_ASCII_NAMES))
      expect(decodeHtmlReferences(`&${name};`)).toBe(c);
  });

  it('leaves other names and malformed references as written', () => {
    expect(decodeHtmlReferences('&notin; &hat; &amp &#; &#xZZ; & plain &Ndash;')).toBe(
      '&notin; &hat; &amp &#; &#xZZ; & plain &Ndash;',
    );
  });

  it("reads Latin-1's names and HTML 4's punctuation, as a European proxy's page writes them", () => {
    expect(
      decodeHtmlReferences('Erreur 400 &ndash; Requ&ecirc;te refus&eacute;e&hellip; &copy; &frac12; &euro;'),
    ).toBe('Erreur 400 \u2013 Requ\u00eate refus\u00e9e\u2026 \u00a9 \u00bd \u20ac');
    expect(decodeHtmlReferences('&nbsp;&Yacute;&yuml;&szlig;&times;&divide;')).toBe(
      '\u00a0\u00dd\u00ff\u00df\u00d7\u00f7',
    );
  });

  it('reads a number that is no character (0, a surrogate, past U+10FFFF) as U+FFFD, never a lone surrogate', () => {
    const out = decodeHtmlReferences('&#0;|&#55296;|&#xDC00;|&#x110000;|&#99999999;|&#x1F600;');
    expect(out).toBe('\ufffd|\ufffd|\ufffd|\ufffd|\ufffd|\u{1F600}');
    expect(out).not.toMatch(/[\ud800-\udfff]/u);
  });
});
