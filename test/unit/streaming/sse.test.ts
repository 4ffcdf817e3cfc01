import { describe, expect, it } from 'vitest';
import { Scrubber } from '../../../src/observability/scrub.js';
import { dataFrame } from '../../../src/streaming/relay.js';
import { createSseParser } from '../../../src/streaming/sse.js';

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
