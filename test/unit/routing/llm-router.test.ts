import { describe, expect, it } from 'vitest';
import type { RuleConfig } from '../../../src/config/schema.js';
import { parseRouterAnswer } from '../../../src/routing/router-answer.js';
import { RouterCache } from '../../../src/routing/router-cache.js';
import { buildRouterPrompt, conversationExcerpt } from '../../../src/routing/router-prompt.js';
import type { RequestFeatures } from '../../../src/routing/features.js';
import { matchTier, nestedRepetition } from '../../../src/routing/tiers.js';
import type { RouteRuntime } from '../../../src/runtime.js';

const f = (over: Partial<RequestFeatures> = {}): RequestFeatures => ({
  stream: false,
  tools: false,
  toolsParam: 'tools',
  json: false,
  images: false,
  choices: 1,
  promptTokens: 100,
  contextTokens: 100,
  requestedOutputTokens: undefined,
  promptParam: 'messages',
  notForAnthropic: undefined,
  ...over,
});
const route = (rules: RuleConfig[]): RouteRuntime => ({ rules }) as unknown as RouteRuntime;

describe('tier rules', () => {
  const rules: RuleConfig[] = [
    { name: 'short', if: { max_prompt_tokens: 400, tools: false }, tier: 'fast' },
    { name: 'long', if: { min_prompt_tokens: 20_000 }, tier: 'deep' },
    { name: 'code', if: { last_user_message: 'refactor|prove' }, tier: 'deep' },
    { if: { images: true }, tier: 'balanced' },
  ];

  it('a regex rule reads both ends of a long last user message (an ask before pasted text counts)', () => {
    const long = 'Please prove this lemma:\n' + 'x'.repeat(40_000);
    expect(matchTier(route(rules), f({ promptTokens: 1_000 }), long, undefined, {}).reason).toBe('rule code');
    expect(
      matchTier(route(rules), f({ promptTokens: 1_000 }), `${'x'.repeat(40_000)} refactor`, undefined, {})
        .reason,
    ).toBe('rule code');
    // The middle is never scanned: bounded input for any regex.
    const middle = `${'x'.repeat(20_000)} refactor ${'x'.repeat(20_000)}`;
    expect(matchTier(route(rules), f({ promptTokens: 1_000 }), middle, undefined, {}).tier).toBeUndefined();
  });

  it('anchors keep their meaning at the cuts: `$` is the message end, `^` its start, not a window edge', () => {
    const anchored: RuleConfig[] = [
      { name: 'asks', if: { last_user_message: '\\?$' }, tier: 'fast' },
      { name: 'greets', if: { last_user_message: '^hi' }, tier: 'fast' },
    ];
    const at = (text: string) => matchTier(route(anchored), f(), text, undefined, {}).reason;
    expect(at(`${'a'.repeat(20_000)} is this right?`)).toBe('rule asks');
    expect(at(`hi ${'a'.repeat(20_000)}`)).toBe('rule greets');
    // `?` as the head window's last character; `hi` as the tail window's first.
    expect(at(`${'b'.repeat(16_383)}?${'c'.repeat(4_000)} the end.`)).toBe('no rule matched');
    expect(at(`${'b'.repeat(4_000)}hi${'c'.repeat(16_382)}`)).toBe('no rule matched');
    // Classes that would match a sentinel character past the cut (`\W`, `.`) keep the anchors honest too.
    const loose: RuleConfig[] = [
      { name: 'asks', if: { last_user_message: '\\?\\W*$' }, tier: 'fast' },
      { name: 'sums', if: { last_user_message: '^\\W*summari[sz]e' }, tier: 'fast' },
    ];
    const loosely = (text: string) => matchTier(route(loose), f(), text, undefined, {}).reason;
    expect(loosely(`${'b'.repeat(16_383)}?${'c'.repeat(4_000)} the end.`)).toBe('no rule matched');
    expect(loosely(`${'b'.repeat(4_000)}summarise${'c'.repeat(16_375)}`)).toBe('no rule matched');
    expect(loosely(`${'a'.repeat(20_000)} right? `)).toBe('rule asks');
    expect(loosely(`Summarise: ${'a'.repeat(20_000)}`)).toBe('rule sums');
  });

  it('a header rule reads own headers only: `constructor` or `__proto__` are names, not lookups (SPEC §8)', () => {
    const byHeader: RuleConfig[] = [
      { if: { header: 'constructor' }, tier: 'deep' },
      { if: { header: '__proto__' }, tier: 'deep' },
    ];
    const nodeLike: Record<string, unknown> = { host: 'x' }; // Node's headers inherit Object.prototype
    expect(matchTier(route(byHeader), f(), 'hi', undefined, nodeLike).tier).toBeUndefined();
    expect(matchTier(route(byHeader), f(), 'hi', undefined, { ...nodeLike, constructor: 'yes' }).tier).toBe(
      'deep',
    );
  });

  it('the header wins outright', () => {
    expect(matchTier(route(rules), f(), 'hello', 'deep', {})).toEqual({
      tier: 'deep',
      reason: 'header x-router-tier',
    });
  });
  it('matching rules decide when they agree; without priorities, rules that disagree are a tie (SPEC §2)', () => {
    // "short" (fast) and "code" (deep) both match a short "refactor" request: equals that disagree.
    const tie = matchTier(route(rules), f({ promptTokens: 50 }), 'please refactor', undefined, {});
    expect(tie).toEqual({ tier: undefined, reason: 'rules disagree: short, code' });
    expect(matchTier(route(rules), f({ promptTokens: 30_000 }), 'x', undefined, {}).reason).toBe('rule long');
    expect(matchTier(route(rules), f({ promptTokens: 1_000 }), 'Please PROVE this', undefined, {}).tier).toBe(
      'deep',
    );
    expect(matchTier(route(rules), f({ promptTokens: 1_000, images: true }), 'x', undefined, {}).reason).toBe(
      'rule rules[3]',
    );
    // A lower priority wins outright over the equals.
    const ranked: RuleConfig[] = [...rules.slice(0, 2), { ...rules[2]!, priority: 0 }, ...rules.slice(3)].map(
      (r) => (r.priority === undefined ? { ...r, priority: 1 } : r),
    );
    expect(matchTier(route(ranked), f({ promptTokens: 50 }), 'please refactor', undefined, {})).toEqual({
      tier: 'deep',
      reason: 'rule code',
    });
  });
  it('no match is a tie', () => {
    expect(
      matchTier(route(rules), f({ promptTokens: 1_000, tools: true }), 'hello', undefined, {}).tier,
    ).toBeUndefined();
  });
  it('rules of equal priority that disagree are a tie; agreeing ones are not', () => {
    const eq: RuleConfig[] = [
      { name: 'a', priority: 1, if: { tools: true }, tier: 'fast' },
      { name: 'b', priority: 1, if: { max_prompt_tokens: 500 }, tier: 'deep' },
      { name: 'c', priority: 1, if: { max_prompt_tokens: 600 }, tier: 'fast' },
    ];
    const tie = matchTier(route(eq), f({ tools: true }), '', undefined, {});
    expect(tie.tier).toBeUndefined();
    expect(tie.reason).toContain('disagree');
    expect(matchTier(route([eq[0]!, eq[2]!]), f({ tools: true }), '', undefined, {}).tier).toBe('fast');
  });
  it('header conditions match by presence or value', () => {
    const hr: RuleConfig[] = [{ if: { header: 'x-team=research' }, tier: 'deep' }];
    expect(matchTier(route(hr), f(), '', undefined, { 'x-team': 'research' }).tier).toBe('deep');
    expect(matchTier(route(hr), f(), '', undefined, { 'x-team': 'sales' }).tier).toBeUndefined();
  });
});

describe('rule patterns that can backtrack exponentially (a load-time warning)', () => {
  it('a repeated group holding a repetition is flagged; `?`, classes, escapes and single repeats are not', () => {
    const flagged = ['^(\\w+\\s?)+$', '(a*)*', '((ab)*c)*', '(a{2,})+', '(x+){3}', '(?:\\d+,)*'];
    const fine = [
      '\\b(prove|derive)\\b',
      '(colou?r)+',
      '[a-z]{2,}',
      '(a{1})+',
      '(?:ab)+',
      '\\(a+\\)+',
      '[(]a+[)]+',
      '(?<n>\\d+)',
      '((a)b)+',
      'a{,3}',
    ];
    for (const p of flagged) expect(nestedRepetition(p), p).toBe(true);
    for (const p of fine) expect(nestedRepetition(p), p).toBe(false);
  });
});

describe('router prompt', () => {
  it('is stable and bounded in size whatever the conversation', () => {
    const huge = Array.from({ length: 500 }, (_, i) => ({
      role: i % 2 ? 'assistant' : 'user',
      content: 'word '.repeat(5_000),
    }));
    const a = conversationExcerpt(huge);
    expect(a.length).toBeLessThanOrEqual(1_700);
    expect(conversationExcerpt(huge)).toBe(a);
    const prompt = buildRouterPrompt(a, f({ promptTokens: 12_345, tools: true }), [
      'fast',
      'balanced',
      'deep',
    ]);
    expect(prompt[0]!.role).toBe('system');
    expect(prompt[0]!.content).toContain('"tier": "fast" | "balanced" | "deep"');
    // Only the tiers offered: a route without `deep` does not invite the router to pick it.
    const two = buildRouterPrompt(a, f(), ['fast', 'balanced'])[0]!.content;
    expect(two).toContain('one of two model tiers');
    expect(two).toContain('"tier": "fast" | "balanced", "reason"');
    expect(two).not.toContain('deep');
    expect(prompt[1]!.content).toContain('12345');
    expect(prompt[1]!.content).toContain('tools offered: yes');
    expect(JSON.stringify(prompt).length).toBeLessThan(4_000);
  });
  it('leaves system messages out and marks images; survives junk', () => {
    const ex = conversationExcerpt([
      { role: 'system', content: 'secret system prompt' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'look' },
          { type: 'image_url', image_url: { url: 'data:...' } },
        ],
      },
      null,
      42,
    ]);
    expect(ex).not.toContain('secret');
    expect(ex).toContain('[image]');
  });
});

describe('router answer parsing', () => {
  it.each([
    ['{"tier": "deep", "reason": "multi-step proof"}', 'deep', 'multi-step proof'],
    ['```json\n{"tier":"fast","reason":"greeting"}\n```', 'fast', 'greeting'],
    [
      'Sure! Here is my answer: {"Tier": "BALANCED", "Reason": "ordinary coding"} Hope it helps {',
      'balanced',
      'ordinary coding',
    ],
    ['tier: deep', 'deep', ''],
    ['  Fast. ', 'fast', ''],
    // Prose that gives its reason after the word is a pick.
    ['Tier: deep (multi-step proof needed)', 'deep', ''],
    ['tier: deep - it needs careful analysis', 'deep', ''],
    ['tier = "balanced" because it is ordinary code', 'balanced', ''],
    ['Tier: deep (a proof or a derivation)', 'deep', ''],
    ['Tier: deep (math/logic)', 'deep', ''],
    ['tier: deep. Not a fast question.', 'deep', ''],
  ])('reads %j', (text, tier, reason) => {
    expect(parseRouterAnswer(text)).toEqual({ tier, reason });
  });
  it.each([
    '',
    'I cannot decide',
    '{"tier":"ultra"}',
    '{"tier": 3}',
    '}{',
    'fast or deep',
    // An object naming a tier it does not have is no answer, whatever its reason says in prose.
    '{"tier": "unknown", "reason": "tier: fast would be wrong here"}',
    '{"tier": "fast or deep?"}',
    'tier: fast or deep?',
    'tier: fast/deep',
    'tier: deep or fast',
    'tier: fast, or deep',
    'Tier: fast; or maybe deep?',
    'tier: balanced (maybe deep)',
    'Tier: deep?',
    'tier: deeper',
  ])('rejects %j', (text) => {
    expect(parseRouterAnswer(text)).toBeUndefined();
  });
});

describe('router cache', () => {
  it('expires entries and evicts the least recently used past its size', () => {
    const c = new RouterCache(2, 1_000);
    c.set('a', { tier: 'fast', reason: '' }, 0);
    c.set('b', { tier: 'deep', reason: '' }, 0);
    expect(c.get('a', 10)?.tier).toBe('fast'); // a is now the most recent
    c.set('c', { tier: 'balanced', reason: '' }, 10);
    expect(c.get('b', 20)).toBeUndefined();
    expect(c.get('a', 20)?.tier).toBe('fast');
    expect(c.get('a', 1_500)).toBeUndefined();
    expect(c.size).toBeLessThanOrEqual(2);
  });
});
