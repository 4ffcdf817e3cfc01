import { describe, expect, it } from 'vitest';
import { clip, partsText } from '../../src/text.js';
import { answerTokens } from '../../src/upstream/attempt.js';

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

describe('partsText', () => {
  it("reads each part's text and thinking, one list deep; images and odd parts hold none", () => {
    const parts = [
      { type: 'thinking', thinking: [{ type: 'text', text: 'Let me think. ' }, null, 7] },
      { type: 'thinking', thinking: 'Still. ' },
      { type: 'image_url', image_url: { url: 'data:,x' } },
      { type: 'text', text: 'Answer.' },
      'loose',
      { type: 'thinking', thinking: [{ thinking: [{ text: 'too deep' }] }] },
    ];
    expect(partsText(parts)).toBe('Let me think. Still. Answer.');
  });

  it('is what a JSON answer with a list of parts is counted by when it reports no usage', () => {
    const message = (content: unknown): Record<string, unknown> => ({
      choices: [{ message: { role: 'assistant', content } }],
    });
    const text = 'A long enough thought to weigh several tokens, and then its answer.';
    expect(answerTokens(message([{ type: 'text', text }]))).toBe(answerTokens(message(text)));
    expect(answerTokens(message([{ type: 'text', text }]))).toBeGreaterThan(5);
  });
});
