import { describe, expect, it } from 'vitest';
import { clip } from '../../src/text.js';

describe('clip', () => {
  it('keeps a text within the bound whole, and cuts a longer one at the bound', () => {
    expect(clip('abc', 3)).toBe('abc');
    expect(clip('abcdef', 3)).toBe('abc');
  });
  it('never splits a surrogate pair: the cut moves one unit back', () => {
    const s = `ab${'😀'}cd`; // the emoji is units 2 and 3
    expect(clip(s, 3)).toBe('ab');
    expect(clip(s, 4)).toBe('ab😀');
    expect(clip('😀😀', 1)).toBe('');
  });
});
