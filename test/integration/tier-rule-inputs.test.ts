/**
 * Tier rules and the LLM router fed the request shapes real clients send (SPEC §2 "Tiers and the LLM router",
 * README "Tiers and the LLM router" and the `routes.NAME.tiers, rules` row): content as parts (text with an
 * image, a PDF file part), legacy `functions`, Unicode in a regex rule, a router pick neither it nor
 * `default_tier` can take (tools, a pinned provider), the router's cache across equal prompts, and
 * `x-router-tier` together with `x-router-strategy`. Everything on loopback, bounded.
 */
import { describe, expect, it } from 'vitest';
import type { Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { askAuto, post, simFactories, type Json } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { sim, tiered } = simFactories(track);

const user = (content: unknown): Json => ({ role: 'user', content });
const ask = (gw: TestGateway, messages: Json[], extra: Json = {}, headers: Record<string, string> = {}) =>
  post(gw, { model: 'auto', messages, ...extra }, headers);

const IMAGE = { type: 'image_url', image_url: { url: 'https://example.invalid/dog.png' } };
const TOOLS = [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }];

describe('last_user_message rules read the text of a message with parts', () => {
  it('text then an image: `\\?$` matches "What breed is this dog?", and the router is not asked', async () => {
    // The message's text is its text parts: an image part beside them adds no character to match against.
    const { gw, rt } = await tiered({
      rules: [{ name: 'question', if: { last_user_message: '\\?$' }, tier: 'fast' }],
      reply: '{"tier":"deep","reason":"router"}',
    });
    const r = await ask(gw, [user([{ type: 'text', text: 'What breed is this dog?' }, IMAGE])]);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier-reason']).toBe('rule question');
    expect(r.headers['x-router-tier']).toBe('fast');
    expect(rt.requests).toHaveLength(1); // the request it served, no router call
  });

  it('an image then text: `^describe` matches "Describe this picture"', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ name: 'describe', if: { last_user_message: '^describe' }, tier: 'deep' }],
    });
    const r = await ask(gw, [user([IMAGE, { type: 'text', text: 'Describe this picture' }])]);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier-reason']).toBe('rule describe');
    expect(r.headers['x-router-tier']).toBe('deep');
  });
});

describe('prompt-token rules count what the request sends', () => {
  // One function schema of ~6 kB: about 1,500 tokens however it is offered.
  const FN = {
    name: 'lookup',
    description: `Looks a record up. ${'Field notes and examples for the caller. '.repeat(150)}`,
    parameters: { type: 'object', properties: { id: { type: 'string' } } },
  };

  it('legacy `functions` count toward min_prompt_tokens as the same schema in `tools` does', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ name: 'big', if: { min_prompt_tokens: 1000 }, tier: 'deep' }],
    });
    const asTools = await ask(gw, [user('find record 7')], { tools: [{ type: 'function', function: FN }] });
    expect(asTools.status, asTools.text).toBe(200);
    expect(asTools.headers['x-router-tier']).toBe('deep');
    const asFunctions = await ask(gw, [user('find record 7')], { functions: [FN] });
    expect(asFunctions.status, asFunctions.text).toBe(200);
    expect(asFunctions.headers['x-router-tier-reason']).toBe('rule big');
    expect(asFunctions.headers['x-router-tier']).toBe('deep');
  });

  it('a 130 kB PDF sent as a file part is no prompt of a few tokens: `max_prompt_tokens: 400` does not take it', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ name: 'small', if: { max_prompt_tokens: 400 }, tier: 'fast' }],
    });
    const pdf = Buffer.from(
      `%PDF-1.4\n${'BT /F1 12 Tf 72 712 Td (Clause 4.2: the lessee shall...) Tj ET\n'.repeat(2_000)}`,
    );
    const file = {
      filename: 'lease.pdf',
      file_data: `data:application/pdf;base64,${pdf.toString('base64')}`,
    };
    const r = await ask(gw, [
      user([
        { type: 'text', text: 'Summarise this lease.' },
        { type: 'file', file },
      ]),
    ]);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier-reason']).not.toBe('rule small');
    expect(r.headers['x-router-tier']).toBe('balanced');
  });
});

describe('regex rules and Unicode', () => {
  it('a Unicode property escape (`\\p{Script=Cyrillic}`) matches Cyrillic text', async () => {
    // The config accepts the pattern; a rule it accepts must then match what it says.
    const { gw } = await tiered({
      router: false,
      rules: [{ name: 'russian', if: { last_user_message: '\\p{Script=Cyrillic}' }, tier: 'fast' }],
    });
    const r = await askAuto(gw, 'Привет! Как дела?');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier-reason']).toBe('rule russian');
    expect(r.headers['x-router-tier']).toBe('fast');
  });
});

describe('the LLM router can make a request slower, never fail it', () => {
  /** fast = the router's tier answering `reply`, balanced = default_tier; only deep's model takes tools. */
  async function gateway(reply: string): Promise<{ gw: TestGateway; rt: Simulator }> {
    const noTools = [{ name: 'm', capabilities: ['json', 'vision', 'stream'] }];
    const rt = await sim('rt', { reply, completionTokens: 1 });
    const bal = await sim('bal');
    const deep = await sim('deep');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, noTools),
          simProvider('bal', bal.url, noTools),
          simProvider('deep', deep.url, ['m']),
        ],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    return { gw, rt };
  }

  it('the router picks a tier without tools and default_tier has none either: the tier with tools serves', async () => {
    const { gw, rt } = await gateway('{"tier":"fast","reason":"a short lookup"}');
    const r = await ask(gw, [user('look up record 7')], { tools: TOOLS });
    expect(rt.requests).toHaveLength(1); // the router was asked
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-provider']).toBe('deep');
  });

  it("x-router-provider pins a provider of the route's deep tier and the router says fast: that provider serves", async () => {
    const { gw, rt } = await gateway('{"tier":"fast","reason":"small talk"}');
    const r = await ask(gw, [user('hello there')], {}, { 'x-router-provider': 'deep' });
    expect(rt.requests).toHaveLength(1);
    // Not a 400 saying "route `auto` has no upstream from provider deep": it has one.
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('deep');
    expect(r.headers['x-router-tier']).toBe('deep');
  });
});

describe("the router's cache and x-router-tier with other routing headers", () => {
  it('the same words as a string and as one text part are one prompt: one router call', async () => {
    const { gw, rt } = await tiered({ reply: '{"tier":"deep","reason":"hard"}' });
    const a = await ask(gw, [user('Prove that there are infinitely many primes.')]);
    const b = await ask(gw, [user([{ type: 'text', text: 'Prove that there are infinitely many primes.' }])]);
    const c = await ask(gw, [user('Prove that there are infinitely many primes.')], { stream: true });
    for (const r of [a, b, c]) {
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-tier']).toBe('deep');
    }
    expect(rt.requests).toHaveLength(1);
    expect(b.headers['x-router-tier-reason']).toBe(a.headers['x-router-tier-reason']);
  });

  it('x-router-tier with x-router-strategy: that tier, ranked by that strategy, and no router call', async () => {
    const rt = await sim('rt', { reply: '{"tier":"fast","reason":"x"}', completionTokens: 1 });
    const d1 = await sim('d1');
    const d2 = await sim('d2');
    const bal = await sim('bal');
    const gw = track(
      await startGateway({
        providers: [rt, d1, d2, bal].map((s) => simProvider(s.options.name, s.url, ['m'])),
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['d1/m', 'd2/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 60 },
          },
        },
      }),
    );
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await ask(
        gw,
        [user(`question ${i}`)],
        {},
        {
          'x-router-tier': 'deep',
          'x-router-strategy': 'round-robin',
        },
      );
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-tier']).toBe('deep');
      expect(r.headers['x-router-strategy']).toBe('round-robin');
      served.push(r.headers['x-router-provider']!);
    }
    expect(new Set(served)).toEqual(new Set(['d1', 'd2']));
    expect(d1.requests.length).toBe(2);
    expect(d2.requests.length).toBe(2);
    expect(rt.requests).toHaveLength(0);
    expect(bal.requests).toHaveLength(0);
  });
});
