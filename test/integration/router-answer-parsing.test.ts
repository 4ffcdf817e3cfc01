/**
 * How the LLM router's answer is read (SPEC §2 "Tiers and the LLM router": the answer is
 * {"tier": "...", "reason": "..."}; README "Tiers and the LLM router"): JSON first, then prose naming one tier
 * with its reason; hedges ("fast or deep?") stay unparsable, so the request gets default_tier; a tier padded
 * inside its quotes, a reason bounded to 200 characters, and hostile answers read without hanging. Mostly
 * parseRouterAnswer itself, once through a tiered route.
 */
import { describe, expect, it } from 'vitest';
import { parseRouterAnswer } from '../../src/routing/router-answer.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { askAuto, simFactories } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { tiered } = simFactories(track);

describe('router answers', () => {
  it('answers real models give still parse: JSON then prose, a padded/cased tier, a first object without tier', () => {
    expect(
      parseRouterAnswer('{"tier":"deep","reason":"multi-step"}\n\nI chose deep because it is hard.'),
    ).toEqual({
      tier: 'deep',
      reason: 'multi-step',
    });
    expect(parseRouterAnswer('{"tier": "Deep ", "reason": "x"}')?.tier).toBe('deep');
    expect(parseRouterAnswer('{"analysis": "long proof"} {"tier": "balanced", "reason": "ok"}')?.tier).toBe(
      'balanced',
    );
    expect(parseRouterAnswer('```json\n{"Tier": "FAST"}\n```')?.tier).toBe('fast');
    expect(parseRouterAnswer('{"result": {"tier": "deep"}}')?.tier).toBe('deep');
    expect(parseRouterAnswer('tier: deep\nreason: needs a proof')?.tier).toBe('deep');
  });

  it('hedged answers stay unparsable (default_tier)', () => {
    expect(parseRouterAnswer('tier: fast or deep?')).toBeUndefined();
    expect(parseRouterAnswer('{"tier": "fast or deep?", "reason": "tier: fast"}')).toBeUndefined();
    expect(parseRouterAnswer('{"tier": "unknown", "reason": "tier: fast would be wrong"}')).toBeUndefined();
  });

  it('prose naming one tier followed by its reason ("Tier: deep (…)", "tier: deep - …") is a pick, not unparsable', async () => {
    // Models that ignore "JSON only" write the reason after the tier word: "Tier: deep (multi-step proof)",
    // "tier: deep - it needs ...", "tier: deep because ...". Such an answer picks its tier; it is not
    // unparsable, which would silently give the request default_tier. A hedge ("fast or deep?") is told
    // apart by what follows the word (another tier word, `or`, `/`, `?`), not by demanding punctuation.
    const { gw, rt, deep } = await tiered({ reply: 'Tier: deep (multi-step proof needed)' });
    const a = await askAuto(gw, 'prove that sqrt 2 is irrational');
    expect(rt.requests).toHaveLength(1);
    rt.set({ reply: 'tier: deep - it needs careful multi-step analysis' });
    const b = await askAuto(gw, 'derive the closed form of the recurrence');
    expect(rt.requests).toHaveLength(2);
    expect([a.headers['x-router-tier'], b.headers['x-router-tier']]).toEqual(['deep', 'deep']);
    expect(deep.requests).toHaveLength(2);
  });
});

describe('router answers in prose', () => {
  it('a hedge whose alternative follows a comma ("tier: fast, or deep") is no pick', () => {
    // A hedge reaches past a comma or semicolon: "tier: fast, or deep" is no pick of `fast` (the cheapest
    // tier, for a model that could not decide).
    expect(parseRouterAnswer('tier: fast, or deep')).toBeUndefined();
    expect(parseRouterAnswer('Tier: fast; or maybe deep?')).toBeUndefined();
  });

  it('a clear pick whose parenthesised reason says "or" ("Tier: deep (a proof or a derivation)") is a pick', () => {
    // The hedge is looked for before the reason, not inside it: 'Tier: deep (…)' whose reason uses "or" or
    // "/" is still a pick of deep, not unparsable (default_tier).
    expect(parseRouterAnswer('Tier: deep (a proof or a derivation)')).toEqual({ tier: 'deep', reason: '' });
    expect(parseRouterAnswer('Tier: deep (math/logic)')).toEqual({ tier: 'deep', reason: '' });
  });

  it('a reason after the word is a pick; a hedge in its clause is not; JSON still decides first', () => {
    expect(parseRouterAnswer('Tier: deep (multi-step)')?.tier).toBe('deep');
    expect(parseRouterAnswer('tier: balanced - a plain question')?.tier).toBe('balanced');
    expect(parseRouterAnswer('tier: fast or deep?')).toBeUndefined();
    expect(parseRouterAnswer('tier: fast/deep')).toBeUndefined();
    expect(parseRouterAnswer('tier: deep?')).toBeUndefined();
    expect(parseRouterAnswer('Tier: fastest')).toBeUndefined(); // \b after the word: no prefix of a word
    expect(parseRouterAnswer('tier: fast or deep? {"tier":"deep","reason":"x"}')).toEqual({
      tier: 'deep',
      reason: 'x',
    });
  });

  it('hostile 4 KB+ answers (repeated tier words, long clauses, spaces) are answered, not hung on', () => {
    expect(parseRouterAnswer(`tier: deep${' x'.repeat(50_000)}`)?.tier).toBe('deep');
    expect(parseRouterAnswer('tier: tier: '.repeat(20_000))).toBeUndefined();
    expect(parseRouterAnswer(`${' '.repeat(100_000)}deep`)).toBeUndefined(); // cut at 4,000: no word left
    expect(parseRouterAnswer(`tier:${' '.repeat(3_000)}deep${' or'.repeat(30_000)}`)).toBeUndefined();
  });
});

describe('the LLM router answer as models write it (SPEC §2: answer {"tier": "...", "reason": "..."})', () => {
  // A tier padded with blanks inside its quotes is still that tier (the parser promises "any case", and trims
  // what it returns), not an unparsable answer that throws the router call away.
  it('reads a tier padded with blanks inside its quotes', () => {
    expect(parseRouterAnswer('{"tier": " Deep ", "reason": "long proof"}')).toEqual({
      tier: 'deep',
      reason: 'long proof',
    });
  });

  // The reason is the model's text, which goes into the decision's reason, x-router headers' neighbours and
  // log lines: it is bounded.
  it('keeps at most 200 characters of a reason', () => {
    const parsed = parseRouterAnswer(JSON.stringify({ tier: 'fast', reason: 'r'.repeat(3000) }));
    expect(parsed?.tier).toBe('fast');
    expect(parsed?.reason).toBe('r'.repeat(200));
  });
});
