/**
 * The LLM router's own call (SPEC §2 "Tiers and the LLM router"): an upstream that answers the router prompt
 * with a 400 still serves the request (only errors, timeouts and rate limits exclude it), the router cache
 * keeps an answer for cache_ttl_s and no longer, and the conversation excerpt the router sees is the most
 * recent messages, contiguous.
 */
import { describe, expect, it } from 'vitest';
import { RouterCache } from '../../src/routing/router-cache.js';
import { conversationExcerpt } from '../../src/routing/router-prompt.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { dig, postTo, simProvider, startGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const MSG = [{ role: 'user', content: 'hi' }];
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

describe('request-scoped exclusion after the LLM router call (SPEC §2)', () => {
  // A 400 to the router's own prompt says nothing about the user's request: that upstream still serves the
  // request (only errors, timeouts and rate limits exclude it).
  it('an upstream that answers the router prompt with a 400 still serves the request', async () => {
    const up = track(
      await startMock((req, res) => {
        const first = dig(req.body, 'messages', 0, 'content');
        if (typeof first === 'string' && first.startsWith('You route requests'))
          sendJson(res, 400, {
            error: { message: 'bad router prompt', type: 'invalid_request_error', param: null, code: null },
          });
        else answerChat(res, req.body, 'served');
      }),
    );
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['a/m'] },
            default_tier: 'fast',
            router: { tier: 'fast', timeout_ms: 3000 },
          },
        },
      }),
    );
    const r = await postTo(`${gw.url}/v1/chat/completions`, { model: 'auto', messages: MSG });
    expect(r.status, r.text).toBe(200);
    expect(dig(r.json, 'choices', 0, 'message', 'content')).toBe('served');
    expect(up.received).toHaveLength(2); // the router call, then the request itself
    expect(r.headers['x-router-tier']).toBe('fast');
  });
});

describe('the LLM router cache keeps an answer for cache_ttl_s, no longer (SPEC §2)', () => {
  // An answer cached for 1 s is served at 999 ms and gone at 1000 ms: its time to live is over.
  it('an entry is a hit until its ttl has passed, and gone at exactly the ttl', () => {
    const c = new RouterCache(10, 1_000);
    c.set('k', { tier: 'deep', reason: 'x' }, 5_000);
    expect(c.get('k', 5_999)?.tier).toBe('deep');
    expect(c.get('k', 6_000)).toBeUndefined();
  });
});

describe('the LLM router sees the most recent messages, contiguous (llm-router.ts conversationExcerpt)', () => {
  // The excerpt is "the last few messages" (most recent last): once one no longer fits, older ones are left
  // out too, rather than an older short message standing in for the missing one between.
  it('a message that no longer fits ends the excerpt; an older short one is not pulled in past it', () => {
    const long = (c: string) => ({ role: 'user', content: c.repeat(500) });
    const ex = conversationExcerpt([
      { role: 'user', content: 'OLDEST short question' },
      long('a'),
      long('b'),
      long('c'),
      long('d'),
    ]);
    expect(ex).not.toContain('OLDEST');
    expect(ex.split('\n')).toHaveLength(3);
    expect(ex.split('\n').map((l) => l.charAt(l.indexOf(']') + 2))).toEqual(['b', 'c', 'd']);
  });
});
