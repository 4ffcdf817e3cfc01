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
    expect(decodeHtmlReferences('&copy; &hat; &amp &#; &#xZZ; & plain')).toBe(
      '&copy; &hat; &amp &#; &#xZZ; & plain',
    );
  });

  it('reads a number that is no character (0, a surrogate, past U+10FFFF) as U+FFFD, never a lone surrogate', () => {
    const out = decodeHtmlReferences('&#0;|&#55296;|&#xDC00;|&#x110000;|&#99999999;|&#x1F600;');
    expect(out).toBe('\ufffd|\ufffd|\ufffd|\ufffd|\ufffd|\u{1F600}');
    expect(out).not.toMatch(/[\ud800-\udfff]/u);
  });
});
