import { describe, expect, it } from 'vitest';
import { closingBrace, nestsDeeperThan, skipSpace, skipSpaceBack, stringEnd } from '../../src/json-scan.js';

describe('JSON text scanning', () => {
  it('ends a string at the first quote after an even run of backslashes', () => {
    const text = String.raw`{"a":"x\"y\\","b":"\\\"z"}`;
    const a = text.indexOf('"x');
    expect(text.slice(a, stringEnd(text, a) + 1)).toBe(String.raw`"x\"y\\"`);
    const b = text.indexOf(String.raw`"\\\"z`);
    expect(text.slice(b, stringEnd(text, b) + 1)).toBe(String.raw`"\\\"z"`);
    expect(stringEnd('"never closes\\"', 0)).toBe(-1);
  });

  it('finds the brace closing an object, past braces inside strings', () => {
    const text = '{"u":{"s":"}{\\"}","n":{"m":1}},"after":{}}';
    const open = text.indexOf('{', 1);
    expect(text.slice(open, closingBrace(text, open) + 1)).toBe('{"s":"}{\\"}","n":{"m":1}}');
    expect(closingBrace('{"a":{', 0)).toBe(-1);
    expect(closingBrace('{"a":"}', 0)).toBe(-1);
  });

  it('measures nesting outside strings only', () => {
    expect(nestsDeeperThan('[[[]]]', 3)).toBe(false);
    expect(nestsDeeperThan('[{"a":[[]]}]', 3)).toBe(true);
    expect(nestsDeeperThan('{"a":"[[[[[[\\"[[[["}', 1)).toBe(false);
  });

  it('skips exactly JSON whitespace, from either end', () => {
    expect(skipSpace(' \t\r\n{', 0)).toBe(4);
    expect(skipSpace('\u00a0{', 0)).toBe(0);
    expect(skipSpaceBack('{} \n')).toBe(1);
    expect(skipSpaceBack('  ')).toBe(-1);
  });
});
