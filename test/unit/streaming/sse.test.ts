import { describe, expect, it } from 'vitest';
import { Scrubber } from '../../../src/observability/scrub.js';
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
});

describe('secret scrubber', () => {
  it('removes every configured secret, longest first', () => {
    const s = new Scrubber(['sk-abc', 'sk-abcdef', 'x']);
    expect(s.scrub('key sk-abcdef and sk-abc and x')).toBe('key [REDACTED] and [REDACTED] and x');
  });
});
