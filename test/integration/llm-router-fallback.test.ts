/**
 * The tier a request gets when the LLM router's pick cannot take it, and how router calls are counted (SPEC §2
 * "Tiers and the LLM router"; README "Tiers and the LLM router" and "Metrics":
 * llm_router_llm_router_requests_total{tier} is the tier the request got). default_tier is decided once and
 * named by the answer and by explain, a pinned tier never falls back, one shared call for identical prompts is
 * counted once chosen and then cached, and router errors and unparsable answers count under default_tier
 * while explain counts nothing.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, select } from '../helpers/prom-text.js';
import { askAuto, post, simFactories, sleep, type Json } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { sim, tiered } = simFactories(track);

const TOOLS = [
  { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } },
];
const NO_TOOLS_CAPS = ['json', 'vision', 'stream'];

const routerCounts = async (gw: TestGateway): Promise<string[]> => {
  await sleep(30);
  return select(await scrape(gw.url), 'llm_router_llm_router_requests_total')
    .filter((s) => s.value > 0)
    .map((s) => `${s.labels.tier}/${s.labels.outcome}=${s.value}`)
    .sort();
};

describe('default_tier in place of a router pick that cannot take the request', () => {
  it('the fallback is decided once: one routing decision, default_tier named in the answer and by explain', async () => {
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

  it('a pinned x-router-tier that cannot take the request does NOT fall back: 400 naming tools, router and default_tier untouched', async () => {
    const { gw, rt, bal } = await tiered({ deepCaps: NO_TOOLS_CAPS });
    const r = await askAuto(gw, 'pinned to deep', { 'x-router-tier': 'deep' }, { tools: TOOLS });
    expect(r.status, r.text).toBe(400);
    expect((r.json.error as Json).param).toBe('tools');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(rt.requests).toHaveLength(0);
    expect(bal.requests).toHaveLength(0);
  });

  it('llm_router_llm_router_requests_total{tier} is the tier the request got (README), not a pick that gave way to default_tier', async () => {
    // README Metrics: `tier (the tier the request got: the router's pick, or default_tier on
    // timeout/error/unparsable)`. The router picks `deep`, which cannot take tools here: the request is
    // served by `balanced` (default_tier) and counted there, not under `deep`, a tier that served nothing.
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

describe('counting router calls under the tier the request got', () => {
  it('one shared call for three concurrent identical prompts is counted once chosen and twice cached', async () => {
    const { gw, rt, deep } = await tiered({ routerLatencyMs: 300 });
    const rs = await Promise.all([askAuto(gw, 'same'), askAuto(gw, 'same'), askAuto(gw, 'same')]);
    expect(rs.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(rt.requests).toHaveLength(1);
    expect(deep.requests).toHaveLength(3);
    expect(await routerCounts(gw)).toEqual(['deep/cached=2', 'deep/chosen=1']);
  });

  it('a cached pick that cannot take the request (pinned elsewhere) is counted cached under default_tier', async () => {
    const { gw, rt, bal } = await tiered({});
    expect((await askAuto(gw, 'prove it')).headers['x-router-tier']).toBe('deep');
    const r = await askAuto(gw, 'prove it', { 'x-router-provider': 'bal' });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(rt.requests).toHaveLength(1);
    expect(bal.requests).toHaveLength(1);
    expect(await routerCounts(gw)).toEqual(['balanced/cached=1', 'deep/chosen=1']);
  });

  it('a router error and an unparsable answer are counted (under default_tier); explain counts nothing', async () => {
    const { gw } = await tiered({ reply: 'tier: fast or deep?' });
    expect((await askAuto(gw, 'hmm')).headers['x-router-tier']).toBe('balanced');
    const ex = await post(
      gw,
      { model: 'auto', messages: [{ role: 'user', content: 'other' }] },
      {},
      '/router/explain',
    );
    expect(ex.status, ex.text).toBe(200);
    expect(await routerCounts(gw)).toEqual(['balanced/unparsable=1']);

    const down = await sim('down', { status: 500 });
    const gw2 = track(
      await startGateway({
        providers: [simProvider('down', down.url, ['m']), simProvider('bal', (await sim('bal2')).url, ['m'])],
        routes: {
          auto: {
            strategy: 'priority',
            tiers: { fast: ['down/m'], balanced: ['bal/m'] },
            default_tier: 'balanced',
            router: { tier: 'fast', timeout_ms: 3000 },
          },
        },
        circuit_breaker: { failure_threshold: 50 },
      }),
    );
    expect((await askAuto(gw2, 'x')).headers['x-router-tier']).toBe('balanced');
    expect(await routerCounts(gw2)).toEqual(['balanced/error=1']);
  });
});
