/**
 * Tier rules (SPEC §2 "Tiers and the LLM router"; README "Tiers and the LLM router": `last_user_message`, a
 * regex on the message's text, and `header`): a long message is matched on its first and last 16 KiB, whose
 * cuts are never taken for the message's end or start; a keyword at the end of a 40 KB message still picks
 * its tier; a header rule named like an Object.prototype member matches only when that header is sent.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, startMock } from '../helpers/mock-upstream.js';
import { askAuto, simFactories } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { tiered } = simFactories(track);
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };

type Json = Record<string, unknown>;

/** What /router/explain says of `body` on `gw` (a chat request's decision, no upstream called). */
async function explain(gw: TestGateway, body: Record<string, unknown>): Promise<Json> {
  const r = await postTo(`${gw.url}/router/explain`, body);
  expect(r.status, r.text).toBe(200);
  return r.json as Json;
}

describe('tier rules', () => {
  it('a rule anchored at the end (`\\?$`) does not match a long message at the cut of its first 16 KiB', async () => {
    // A long message is matched on its first and last 16 KiB. The end of the head window is not the end of
    // the message: a 20 kB message whose 16,384th character is `?` (a question in pasted text) is not taken
    // for one that ends in a question.
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { last_user_message: '\\?$' }, tier: 'fast' }],
    });
    const endsWithQuestion = `${'a'.repeat(20_000)} is this right?`;
    const g = await askAuto(gw, endsWithQuestion);
    expect(g.status, g.text).toBe(200);
    expect(g.headers['x-router-tier']).toBe('fast'); // the tail window: right
    const questionAtTheCut = `${'b'.repeat(16_383)}?${'c'.repeat(4_000)} the end.`;
    const r = await askAuto(gw, questionAtTheCut);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
  });

  it('a header rule named like an Object.prototype member matches only when that header is sent', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { header: 'constructor' }, tier: 'deep' }],
    });
    expect((await askAuto(gw, 'plain')).headers['x-router-tier']).toBe('balanced');
    expect((await askAuto(gw, 'with it', { constructor: '1' })).headers['x-router-tier']).toBe('deep');
  });
});

describe('regex rules at the 16 KiB window cuts', () => {
  const CUT = 16_384;

  it('a rule whose $ may follow non-word characters (`\\?\\W*$`) does not take a "?" at the head cut for the end', async () => {
    // The head's cut is no end of the message for a pattern that lets `$` follow other characters either:
    // '\?\W*$' ("ends in a question, maybe then punctuation") does not match a "?" at the cut, whatever
    // `\W`, `.`, `\D`, `[^…]` or `[\s\S]` could match there.
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { last_user_message: '\\?\\W*$' }, tier: 'deep' }],
    });
    const msg = `${'a'.repeat(CUT - 1)}?${' pasted text'.repeat(500)} Summarise it.`;
    expect(msg[CUT - 1]).toBe('?');
    const r = await askAuto(gw, msg);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
  });

  it('a rule anchored at the start with `^\\W*` does not match where the tail window begins', async () => {
    // The other cut: where the tail window begins is not the message's start, so '^\W*summari[sz]e' ("starts
    // with summarise") does not match a tail that begins " summarise …".
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { last_user_message: '^\\W*summari[sz]e' }, tier: 'deep' }],
    });
    const tail = ` summarise ${'y'.repeat(CUT - 11)}`;
    expect(tail).toHaveLength(CUT);
    const msg = `Please translate this: ${'x'.repeat(5_000)}${tail}`;
    const r = await askAuto(gw, msg);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
  });

  it('`\\?$` ignores a "?" at the head cut; a long message that does end in "?" matches; a short one is untouched', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { last_user_message: '\\?$' }, tier: 'deep' }],
    });
    const atCut = `${'a'.repeat(CUT - 1)}?${'b'.repeat(3_000)}.`;
    expect((await askAuto(gw, atCut)).headers['x-router-tier']).toBe('balanced');
    expect((await askAuto(gw, `${'a'.repeat(CUT + 3_000)} why?`)).headers['x-router-tier']).toBe('deep');
    expect((await askAuto(gw, 'why?')).headers['x-router-tier']).toBe('deep');
    expect((await askAuto(gw, 'because.')).headers['x-router-tier']).toBe('balanced');
  });
});

describe('tier rules on a long last user message (README: last_user_message, a regex on its text)', () => {
  // The regex is bounded to part of a long message; the part kept includes its end, where a pasted document
  // is followed by the question ("... now prove it").
  it('a keyword at the end of a 40 KB message still picks the rule’s tier', async () => {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m', 'n'], { timeouts: RELAXED })],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['a/m'], deep: ['a/n'] },
            rules: [{ name: 'proofs', if: { last_user_message: 'prove|derive' }, tier: 'deep' }],
            default_tier: 'fast',
          },
        },
      }),
    );
    const long = `${'lorem ipsum '.repeat(3400)}now prove it`;
    const d = await explain(gw, { model: 'auto', messages: [{ role: 'user', content: long }] });
    expect(d.tier).toBe('deep');
    expect(d.tier_reason).toBe('rule proofs');
    const short = await explain(gw, { model: 'auto', messages: [{ role: 'user', content: 'hello' }] });
    expect(short.tier).toBe('fast');
  });
});
