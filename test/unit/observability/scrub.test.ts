import { describe, expect, it } from 'vitest';
import { Scrubber } from '../../../src/observability/scrub.js';
import { truncateMessage } from '../../../src/upstream/adapters/common.js';

const KEY = 'sk-live-7f3a9c1e5b2d4f6a8c0e';

describe('Scrubber', () => {
  it('removes every configured secret, longest first', () => {
    const s = new Scrubber([KEY, 'sk-live', 'abc']);
    expect(s.scrub(`bad key ${KEY} and ${KEY}`)).toBe('bad key [REDACTED] and [REDACTED]');
    expect(s.scrub('abc')).toBe('abc'); // under 4 characters: not a secret worth matching
  });

  it('a secret cut where an upstream message was truncated leaves none of its characters', () => {
    const s = new Scrubber([KEY]);
    for (const at of [975, 990, 996]) {
      const message = truncateMessage(`${'x'.repeat(at)}${KEY} rest`);
      const out = s.scrub(message);
      expect(out.endsWith('[REDACTED]…')).toBe(true);
      expect(out).not.toContain(KEY.slice(0, 4));
    }
    // A message that was not cut, or is cut elsewhere, keeps its text.
    expect(s.scrub('ends with sk-l')).toBe('ends with sk-l');
    expect(s.scrub(truncateMessage('y'.repeat(1200)))).toBe(`${'y'.repeat(1000)}…`);
  });
});
