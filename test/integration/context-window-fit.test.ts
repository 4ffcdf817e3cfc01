/**
 * The context-window fit (SPEC §2: candidates are filtered to those whose context window fits): a request
 * whose prompt plus requested output exactly fills the window is eligible, one token more is not; and the
 * prompt estimate it is measured with (routing/tokens.ts) counts an assistant message's refusal parts like
 * any other text.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { createLogger } from '../../src/observability/logger.js';
import { planRequest } from '../../src/routing/plan.js';
import { APPROXIMATE, estimatePromptTokens } from '../../src/routing/tokens.js';

type Json = Record<string, unknown>;

describe('a request that exactly fills the context window fits (SPEC §2 filter)', () => {
  // SPEC §2: candidates are filtered to those whose "context window fits": prompt + requested output equal
  // to the window fits.
  // The estimate may read ~25 % high (plan.ts ESTIMATE_DISCOUNT): 80 % of it is taken as sure, the answer's
  // limit whole.
  it('context 60 (48 sure) + max_tokens 52 against a 100-token window is eligible; 53 is not', () => {
    const loaded = parseConfigText(
      JSON.stringify({
        providers: [
          {
            name: 'a',
            base_url: 'http://127.0.0.1:9/v1',
            models: [{ name: 'm', context_window: 100 }],
          },
        ],
        routes: { r: { strategy: 'priority', targets: ['a/m'] } },
      }),
      {},
    );
    const quiet = new Writable({ write: (_c, _e, cb) => cb() });
    const gw = new Gateway(loaded, { logger: createLogger('warn', quiet) });
    const route = gw.runtime.routes.get('r')!;
    const features = (out: number) => ({
      stream: false,
      tools: false,
      toolsParam: 'tools' as const,
      json: false,
      images: false,
      choices: 1,
      promptTokens: 60,
      contextTokens: 60,
      requestedOutputTokens: out,
      promptParam: 'messages' as const,
      notForAnthropic: undefined,
    });
    const plan = (out: number) =>
      planRequest(route, route.targets, features(out), {
        strategy: 'priority',
        provider: undefined,
        routing: loaded.config.routing,
        now: 0,
        random: () => 0.5,
      });
    expect(plan(52).ranked.map((c) => c.candidate.upstream.id)).toEqual(['a/m']);
    expect(plan(53).ranked).toHaveLength(0);
    expect(plan(53).refusal?.message).toContain('context window');
  });
});

describe('prompt token estimates count refusal parts (tokens.ts: text, image_url, refusal...)', () => {
  // An assistant message sent back with a refusal part is prompt text like any other: it counts toward tier
  // rules, cost and the context-window fit.
  it('a long refusal part adds to the estimate', () => {
    const withPart = (part: Json) =>
      estimatePromptTokens(
        {
          messages: [
            { role: 'user', content: 'q' },
            { role: 'assistant', content: [part] },
          ],
        },
        APPROXIMATE,
      );
    const empty = withPart({ type: 'refusal', refusal: '' });
    const long = withPart({ type: 'refusal', refusal: 'I cannot help with that request. '.repeat(50) });
    expect(long - empty).toBeGreaterThan(200);
  });
});
