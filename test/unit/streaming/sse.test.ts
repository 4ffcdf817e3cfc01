import { describe, expect, it } from 'vitest';
import { Scrubber } from '../../../src/observability/scrub.js';
import { dataFrame } from '../../../src/streaming/relay.js';
import { createSseParser, endsInsideCharacter } from '../../../src/streaming/sse.js';

describe('SSE parser', () => {
  it('yields whole events however the bytes are split, multi-byte characters included', () => {
    const text = 'event: a\ndata: {"x":"héllo 🌍"}\n\n: ping\n\ndata: [DONE]\n\n';
    const bytes = Buffer.from(text);
    const expected: [string | undefined, string][] = [
      ['a', '{"x":"héllo 🌍"}'],
      [undefined, '[DONE]'],
    ];
    for (let cut = 1; cut < bytes.length; cut++) {
      const got: [string | undefined, string][] = [];
      const p = createSseParser((type, data) => got.push([type, data]));
      p.feed(bytes.subarray(0, cut));
      p.feed(bytes.subarray(cut));
      p.end();
      expect(got, `cut at ${cut}`).toEqual(expected);
    }
  });
  it('the same text whatever the reads, three cuts inside characters included, and invalid bytes as U+FFFD', () => {
    const text = 'data: {"x":"a😀b€c"}\n\ndata: {"y":"ü"}\n\n';
    const bytes = Buffer.concat([
      Buffer.from(text),
      Buffer.from([0x64, 0x61, 0x74, 0x61, 0x3a, 0x20, 0x80, 0xff, 0x0a, 0x0a]),
    ]);
    const whole: string[] = [];
    const one = createSseParser((_t, data) => whole.push(data));
    one.feed(bytes);
    one.end();
    expect(whole).toEqual(['{"x":"a😀b€c"}', '{"y":"ü"}', '\ufffd\ufffd']);
    for (let a = 1; a < bytes.length - 2; a++)
      for (const b of [a + 1, a + 2]) {
        const got: string[] = [];
        const p = createSseParser((_t, data) => got.push(data));
        for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) p.feed(piece);
        p.end();
        expect(got, `cuts at ${a}, ${b}`).toEqual(whole);
      }
  });

  it('tells a read that ends inside a character from one that ends with a whole one', () => {
    const euro = Buffer.from('€'); // 3 bytes
    const face = Buffer.from('😀'); // 4 bytes
    expect(endsInsideCharacter(Buffer.from('ab'))).toBe(false);
    expect(endsInsideCharacter(euro)).toBe(false);
    expect(endsInsideCharacter(face)).toBe(false);
    expect(endsInsideCharacter(Buffer.concat([Buffer.from('a'), euro.subarray(0, 2)]))).toBe(true);
    expect(endsInsideCharacter(face.subarray(0, 1))).toBe(true);
    expect(endsInsideCharacter(face.subarray(0, 3))).toBe(true);
    expect(endsInsideCharacter(Buffer.from([0x61, 0x80]))).toBe(false); // a stray continuation byte
    expect(endsInsideCharacter(Buffer.alloc(0))).toBe(false);
  });

  it('refuses an event that outgrows its bound (a line never ended, or data lines never closed)', () => {
    for (const feeds of [
      ['data: {"x":"', 'a'.repeat(60), 'a'.repeat(60)], // one line without its end
      ['data: a\n', 'data: b\n'.repeat(60)], // data lines without the blank line that ends the event
    ]) {
      const got: string[] = [];
      const p = createSseParser((_t, data) => got.push(data), 100);
      const feedAll = (): void => {
        for (const f of feeds) p.feed(f);
      };
      expect(feedAll).toThrow(expect.objectContaining({ code: 'sse_event_too_large' }));
      expect(got).toEqual([]);
    }
    // Many events, each within the bound, are fine however many there are; so is a bad `retry:` line.
    const got: string[] = [];
    const p = createSseParser((_t, data) => got.push(data), 100);
    for (let i = 0; i < 50; i++) p.feed(`retry: soon\ndata: ${'x'.repeat(80)}\n\n`);
    expect(got).toHaveLength(50);
  });

  it('ends a last event the body did not close with a blank line (regression: it was dropped), once', () => {
    for (const tail of [
      'data: {"b":2}',
      'data: {"b":2}\n',
      'data: {"b":2}\r',
      'data: {"b":2}\n\n',
      'data: {"b":2}\r\n\r\n',
    ]) {
      const got: string[] = [];
      const p = createSseParser((_t, data) => got.push(data));
      p.feed('data: {"a":1}\n\n');
      p.feed(Buffer.from(tail));
      p.end();
      expect(got, JSON.stringify(tail)).toEqual(['{"a":1}', '{"b":2}']);
    }
  });

  it('ignores a byte order mark before the first line, however the bytes are split', () => {
    const bytes = Buffer.from('\uFEFFdata: {"a":1}\n\ndata: [DONE]\n\n');
    for (let cut = 0; cut <= 4; cut++) {
      const got: string[] = [];
      const p = createSseParser((_t, data) => got.push(data));
      if (cut > 0) p.feed(bytes.subarray(0, cut));
      p.feed(bytes.subarray(cut));
      p.end();
      expect(got, `cut at ${cut}`).toEqual(['{"a":1}', '[DONE]']);
    }
    // Only a leading one: later in the stream it is data.
    const got: string[] = [];
    const p = createSseParser((_t, data) => got.push(data));
    p.feed('data: x\n\n');
    p.feed('data: \uFEFFy\n\n');
    expect(got).toEqual(['x', '\uFEFFy']);
  });

  it('an event an upstream sent on several data lines goes out on several data lines again', () => {
    const got: string[] = [];
    const p = createSseParser((_t, data) => got.push(data));
    p.feed('data: {"a":\ndata: 1}\n\n');
    expect(got).toEqual(['{"a":\n1}']);
    expect(dataFrame(got[0]!)).toBe('data: {"a":\ndata: 1}\n\n');
    expect(dataFrame('{"a":1}')).toBe('data: {"a":1}\n\n');
    const back: string[] = [];
    const q = createSseParser((_t, data) => back.push(data));
    q.feed(dataFrame(got[0]!));
    expect(back).toEqual(got);
  });
});

describe('secret scrubber', () => {
  it('removes every configured secret, longest first', () => {
    const s = new Scrubber(['sk-abc', 'sk-abcdef', 'x']);
    expect(s.scrub('key sk-abcdef and sk-abc and x')).toBe('key [REDACTED] and [REDACTED] and x');
  });
});
