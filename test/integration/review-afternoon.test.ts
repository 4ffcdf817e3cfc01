/**
 * White-box review of 83bc3f8 (probe-lease renewal while a trial runs), a457a82 (config watch: polling and the
 * `initial` text; a repeated SIGTERM ignored during the drain), 215b6ff (a router-picked tier that cannot take
 * the request gives way to default_tier), 30110fe (own-header rules, head+tail regex windows, legacy
 * `functions` are tools), 34c4167 (stricter parseRouterAnswer) and 2028ab7 (early 499, router counting).
 * Tests that fail on the current code name the defect; tests titled "guard:" pin behaviour that is right and
 * easy to break. Everything on loopback, bounded; the Redis block is skipped without redis-server.
 */
import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseRouterAnswer } from '../../src/routing/router-answer.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { cliWorkDir, startCli, type CliProcess } from '../helpers/cli-harness.js';
import { simConfigYaml, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, select } from '../helpers/prom-text.js';
import {
  badThenGood,
  chat,
  describeWithRedis,
  prefixes,
  redisClient,
  redisConfig,
  redisState,
  startReplica,
} from '../helpers/redis.js';
import { askAuto, post, reviewSims, sleep, type Json } from '../helpers/review-kit.js';
import { until } from '../helpers/wait.js';

const track = closeAfterEach();
const { sim, tiered } = reviewSims(track);

const TOOLS = [
  { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } },
];
const NO_TOOLS_CAPS = ['json', 'vision', 'stream'];

// -------------------------------------------------------------------------------------------------
// 215b6ff: a router pick that cannot take the request gives way to default_tier
// -------------------------------------------------------------------------------------------------

describe('review: default_tier in place of a router pick that cannot take the request (215b6ff)', () => {
  it('guard: the fallback is decided once: one routing decision, default_tier named in the answer and by explain', async () => {
    const { gw, rt, bal, deep } = await tiered({ deepCaps: NO_TOOLS_CAPS });
    const r = await askAuto(gw, 'prove the lemma with the lookup tool', {}, { tools: TOOLS });
    expect(r.status, r.text).toBe(200);
    expect(rt.requests).toHaveLength(1);
    expect(r.headers['x-router-provider']).toBe('bal');
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(deep.requests).toHaveLength(0);
    expect(bal.requests).toHaveLength(1);
    await sleep(50);
    const samples = await scrape(gw.url);
    const decisions = select(samples, 'llm_router_routing_decisions_total', { route: 'auto' });
    expect(decisions.map((s) => [s.labels.provider, s.value])).toEqual([['bal', 1]]);
    // explain never asks the router: it names default_tier, which is what this request got too.
    const ex = await post(
      gw,
      {
        model: 'auto',
        messages: [{ role: 'user', content: 'prove the lemma with the lookup tool' }],
        tools: TOOLS,
      },
      {},
      '/router/explain',
    );
    expect(ex.status, ex.text).toBe(200);
    expect(ex.json.tier).toBe('balanced');
    expect(rt.requests).toHaveLength(1);
  });

  it('guard: a pinned x-router-tier that cannot take the request does NOT fall back: 400 naming tools, router and default_tier untouched', async () => {
    const { gw, rt, bal } = await tiered({ deepCaps: NO_TOOLS_CAPS });
    const r = await askAuto(gw, 'pinned to deep', { 'x-router-tier': 'deep' }, { tools: TOOLS });
    expect(r.status, r.text).toBe(400);
    expect((r.json.error as Json).param).toBe('tools');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(rt.requests).toHaveLength(0);
    expect(bal.requests).toHaveLength(0);
  });

  // Was a defect (fixed: counted in chat-decision finish(), after the fallback).
  it('llm_router_llm_router_requests_total{tier} is the tier the request got (README), not a pick that gave way to default_tier', async () => {
    // README Metrics: `tier (the tier the request got: the router's pick, or default_tier on
    // timeout/error/unparsable)`. askRouter counts {tier: d.tier, outcome: chosen} before finish() (chat-decision.ts)
    // replaces the pick by default_tier: the request was served by `balanced` and counted under `deep`, a
    // tier that served nothing.
    const { gw, bal } = await tiered({ deepCaps: NO_TOOLS_CAPS });
    const r = await askAuto(gw, 'a hard question with tools', {}, { tools: TOOLS });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    await sleep(50);
    const samples = await scrape(gw.url);
    const counted = select(samples, 'llm_router_llm_router_requests_total')
      .filter((s) => s.value > 0)
      .map((s) => s.labels.tier);
    expect(counted).toEqual(['balanced']);
  });
});

// -------------------------------------------------------------------------------------------------
// 34c4167: parseRouterAnswer
// -------------------------------------------------------------------------------------------------

describe('review: router answers (34c4167)', () => {
  it('guard: answers real models give still parse: JSON then prose, a padded/cased tier, a first object without tier', () => {
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

  it('guard: hedged answers stay unparsable (default_tier)', () => {
    expect(parseRouterAnswer('tier: fast or deep?')).toBeUndefined();
    expect(parseRouterAnswer('{"tier": "fast or deep?", "reason": "tier: fast"}')).toBeUndefined();
    expect(parseRouterAnswer('{"tier": "unknown", "reason": "tier: fast would be wrong"}')).toBeUndefined();
  });

  // Was a defect (fixed): the stricter TIER_WORD demanded punctuation right after the tier word.
  it('prose naming one tier followed by its reason ("Tier: deep (…)", "tier: deep - …") is a pick, not unparsable', async () => {
    // router-answer.ts TIER_WORD now requires [,;.}\n] or the end right after the tier word. Models that
    // ignore "JSON only" write the reason after the word: "Tier: deep (multi-step proof)", "tier: deep - it
    // needs ...", "tier: deep because ...". Before 34c4167 these picked deep; now they are unparsable and the
    // request silently gets default_tier. The hedge the change was for ("fast or deep?") can be refused
    // by what follows (another tier word, `or`, `/`, `?`) instead of demanding punctuation.
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

// -------------------------------------------------------------------------------------------------
// 30110fe: rules (regex windows, legacy functions)
// -------------------------------------------------------------------------------------------------

describe('review: tier rules (30110fe)', () => {
  // Was a defect (fixed: tiers.ts tests head+NUL and NUL+tail).
  it('a rule anchored at the end (`\\?$`) does not match a long message at the cut of its first 16 KiB', async () => {
    // tiers.ts:54 tests `lastUser.slice(0, 16384)` with the rule's regex as it is: `$` matches at the end of
    // the head window, which is not the end of the message. A 20 kB message whose 16,384th character is `?`
    // (a question in pasted text) is taken for one that ends in a question. Fix: keep anchors honest at the
    // cuts, e.g. test `head + '\u0000'` (no `$` at the cut) and `'\u0000' + tail` (no `^`), or test only the
    // tail for a pattern ending in `$`.
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

  // Was a defect (fixed: features carry toolsParam).
  it('a legacy `functions` request no upstream can take for tools is refused naming `functions`, not a field it does not have', async () => {
    // features.ts:50 makes `functions` a tool need; plan.ts missingParam returns 'tools' first, so the 400's
    // `param` names `tools`, which this request does not carry (before 30110fe such a request said
    // `functions`, via notForAnthropic, or was served). Fix: missingParam should answer `functions` when the
    // request's tools are its legacy `functions` (e.g. carry which field made `tools` true in the features).
    const p = await sim('p');
    const gw = track(
      await startGateway({
        providers: [simProvider('p', p.url, [{ name: 'm', capabilities: NO_TOOLS_CAPS }])],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const r = await post(gw, {
      model: 'r',
      messages: [{ role: 'user', content: 'call f' }],
      functions: [{ name: 'f', parameters: { type: 'object', properties: {} } }],
    });
    expect(r.status, r.text).toBe(400);
    expect(p.requests).toHaveLength(0);
    expect((r.json.error as Json).param).toBe('functions');
  });

  it('guard: a header rule named like an Object.prototype member matches only when that header is sent', async () => {
    const { gw } = await tiered({
      router: false,
      rules: [{ if: { header: 'constructor' }, tier: 'deep' }],
    });
    expect((await askAuto(gw, 'plain')).headers['x-router-tier']).toBe('balanced');
    expect((await askAuto(gw, 'with it', { constructor: '1' })).headers['x-router-tier']).toBe('deep');
  });
});

// -------------------------------------------------------------------------------------------------
// 83bc3f8: probe-lease renewal (Redis)
// -------------------------------------------------------------------------------------------------

const nextPrefix = prefixes(`review-afternoon-${process.pid}-`);

describeWithRedis('review: the probe lease while a trial runs (83bc3f8)', (redis) => {
  const state = (gw: TestGateway) => gw.gateway.shared.breakers.get('bad/m').state;

  // Was a defect (fixed: the breaker's onProbe renews the lease as a trial is admitted).
  it('a trial that begins after the lease’s first renewal tick is renewed before the lease runs out, not at the instant it lapses', async () => {
    // state/shared-state.ts #renewWhileProbing: an interval of leaseMs/2 from the win, renewing only when
    // a probe is out at a tick. A trial that starts after the tick at leaseMs/2 gets its first renewal at
    // the tick at leaseMs — the very moment the lease (PX leaseMs from the win) lapses, and the moment the
    // replicas that lost re-ask (#wakeAfter(id, breaker, leaseMs)): whichever of the two Redis sees first
    // wins, so a second replica may probe alongside. The lease runs down to ~0 while the trial runs.
    // Fix: renew (takeProbeLease) when a half-open trial is admitted (a breaker hook), then every leaseMs/2
    // while one is out; or renew at each tick while half-open and let it lapse only after a tick with no
    // trial since the last.
    const prefix = nextPrefix();
    const L = 2_000;
    const { bad, providers, routes } = await badThenGood(track);
    const gw = await startReplica(
      track,
      redisConfig(
        providers,
        routes,
        { failure_threshold: 1, open_ms: L, success_threshold: 1 },
        redisState(redis.url, prefix),
      ),
      { connectedWithinMs: 5_000 },
    );
    const raw = track(redisClient(redis.url));
    expect((await chat(gw)).provider).toBe('good'); // bad/m opens for L
    bad.set({ status: 200, latencyMs: 2_500 });
    await until('the lease won: half-open', () => state(gw) === 'half_open', L + 5_000);
    await sleep(Math.round(0.65 * L)); // past the first tick (L/2): no probe was out, nothing renewed
    const before = bad.requests.length;
    const trial = chat(gw);
    await until('the trial reaches bad/m', () => bad.requests.length > before, 3_000);
    let min = Number.POSITIVE_INFINITY;
    let sampled = 0;
    let done = false;
    void trial.finally(() => (done = true));
    while (!done) {
      const left = await raw.pttl(`${prefix}probe:bad/m`);
      // Only while the trial is still at the upstream (its end gives the lease back, rightly).
      if (bad.inFlight() > 0 && state(gw) === 'half_open') {
        min = Math.min(min, left < 0 ? -1 : left);
        sampled++;
      }
      await sleep(20);
    }
    expect((await trial).provider).toBe('bad');
    // The lease was looked at while the trial was out (else min stays Infinity and the check below is empty).
    expect(sampled).toBeGreaterThan(10);
    expect(min).toBeGreaterThanOrEqual(L / 4);
  }, 20_000);
});

// -------------------------------------------------------------------------------------------------
// a457a82: config watch and signals, through the CLI
// -------------------------------------------------------------------------------------------------

describe('review: config watch and the drain through the CLI (a457a82)', () => {
  const dir = cliWorkDir('review-afternoon');
  const reloads = (c: CliProcess) => c.logs.filter((l) => l.msg === 'config reloaded');
  const cli = async (path: string): Promise<CliProcess> => {
    const c = await startCli(path, ['--port', '0']);
    track({ close: () => c.kill() });
    return c;
  };

  it('a config file saved with a UTF-8 BOM is not reloaded at start for nothing', async () => {
    // main.ts seeds the watch with `loaded.text` (load.ts: TextDecoder, which strips the BOM) while
    // watch.ts contentOf reads readFileSync(path, 'utf8') (which keeps U+FEFF): the `initial` check at
    // start always differs for a file with a BOM (Windows editors write one) and reloads "file changed"
    // once, logging and counting a reload that never happened. Fix: compare like with like — seed with the
    // raw bytes' text as contentOf reads it (or strip a leading \uFEFF in contentOf).
    const a = await sim('a');
    const path = join(dir(), 'bom.yaml');
    writeFileSync(path, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(simConfigYaml([a]))]));
    const c = await cli(path);
    await sleep(1_600); // the start check's debounce (250 ms) and a poll (1 s), with room
    expect(reloads(c).map((l) => l.why)).toEqual([]);
  }, 20_000);

  it('guard: a touch (mtime only) does not reload; a content change reloads once', async () => {
    const a = await sim('a');
    const path = join(dir(), 'touch.yaml');
    const text = simConfigYaml([a]);
    writeFileSync(path, text);
    const c = await cli(path);
    await sleep(500);
    const later = new Date(Date.now() + 10_000);
    utimesSync(path, later, later);
    await sleep(1_800);
    expect(reloads(c)).toHaveLength(0);
    writeFileSync(path, `${text}\n# edited\n`);
    await until('one reload', () => reloads(c).length === 1, 5_000);
    await sleep(1_300);
    expect(reloads(c)).toHaveLength(1);
    expect(reloads(c)[0]!.why).toBe('file changed');
  }, 20_000);

  it('guard: during a SIGTERM drain a second Ctrl-C (SIGINT) still exits at once, code 1', async () => {
    const a = await sim('a', { tokensPerS: 5, completionTokens: 60 }); // a ~12 s stream
    const path = join(dir(), 'sigint.yaml');
    writeFileSync(path, simConfigYaml([a], { shutdownGraceMs: 20_000 }));
    const c = await cli(path);
    const res = await request(`${c.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'main', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      headersTimeout: 10_000,
      bodyTimeout: 20_000,
    });
    expect(res.statusCode).toBe(200);
    let text = '';
    const body = (async () => {
      try {
        for await (const chunk of res.body) text += (chunk as Buffer).toString();
      } catch {
        /* cut: expected */
      }
    })();
    await until('the first content', () => text.includes('"content"'), 5_000);
    c.proc.kill('SIGTERM');
    await c.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'), 5_000);
    c.proc.kill('SIGTERM'); // ignored
    await sleep(200);
    expect(c.proc.exitCode).toBeNull();
    c.proc.kill('SIGINT');
    const code = await Promise.race([c.exited, sleep(5_000).then(() => 'still running')]);
    expect(code).toBe(1);
    await body;
  }, 30_000);
});
