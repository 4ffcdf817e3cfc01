import { describe, expect, it } from 'vitest';
import { JsonAnswer, jsonAnswerText } from '../../../src/upstream/adapters/json-answer.js';

const OBJ = '{"a":"} ] \\" {","b":[1,{"c":2}]}';

describe('the JSON object in an answer asked for as JSON', () => {
  it('is the object alone: without a fence, a preface or words after it', () => {
    expect(jsonAnswerText(OBJ)).toBe(OBJ);
    expect(jsonAnswerText('```json\n' + OBJ + '\n```')).toBe(OBJ);
    expect(jsonAnswerText('Here it is:\n\n' + OBJ + '\n\nLet me know if you need more.')).toBe(OBJ);
  });

  it('comes whole from deltas cut anywhere, braces and quotes inside strings included', () => {
    const text = '```json\n' + OBJ + '\n```';
    for (let cut = 1; cut < text.length; cut++) {
      const a = new JsonAnswer();
      expect(a.feed(text.slice(0, cut)) + a.feed(text.slice(cut)) + a.end(), `cut at ${cut}`).toBe(OBJ);
    }
  });

  it('gives back an answer with no object in it as it was, at the end', () => {
    const a = new JsonAnswer();
    expect(a.feed('I cannot ')).toBe('');
    expect(a.feed('answer that.')).toBe('');
    expect(a.end()).toBe('I cannot answer that.');
    expect(jsonAnswerText('')).toBe('');
  });
});

describe('JsonAnswer: braces in the words before the object', () => {
  const ANSWER = 'Filling in {city, celsius}:\n```json\n{"city":"Bern","celsius":12}\n```';

  it('a brace not followed by a key or its close is the preface, not the value', () => {
    expect(jsonAnswerText(ANSWER)).toBe('{"city":"Bern","celsius":12}');
    expect(jsonAnswerText('Empty: {}')).toBe('{}');
    expect(jsonAnswerText('a set {1, 2} and no object')).toBe('a set {1, 2} and no object');
  });

  it('fed in pieces cut anywhere, a brace at a piece end waits for what follows', () => {
    for (let cut = 1; cut < ANSWER.length; cut++) {
      const a = new JsonAnswer();
      const out = a.feed(ANSWER.slice(0, cut)) + a.feed(ANSWER.slice(cut)) + a.end();
      expect(out, `cut at ${cut}`).toBe('{"city":"Bern","celsius":12}');
    }
    const b = new JsonAnswer();
    expect(b.feed('Here {') + b.feed('\n  "a": 1}') + b.end()).toBe('{\n  "a": 1}');
  });
});
