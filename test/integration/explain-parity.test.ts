/**
 * POST /router/explain names the decision the same chat request really gets (SPEC §4: "the routing decision a
 * chat request would get ... without calling an upstream"), and spends nothing a real request would: a tie
 * whose LLM router answer is cached, a tiered route's own rotation, an embeddings model; and /router/status
 * after a reload.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postChat, simProvider, startGateway } from '../helpers/gateway.js';
import type { Candidate } from '../helpers/router-api.js';
import { askAuto, reload, simFactories, type Json } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { sim, tiered } = simFactories(track);

const explainPath = { path: '/router/explain' };

describe('/router/explain parity with the real decision', () => {
  // Regression: explain answered default_tier for a tie the router had already answered (cached), where the
  // real request took the cached tier without a call.
  it('a tie whose LLM router answer is cached: explain names the cached tier the real request gets', async () => {
    const t = await tiered({ reply: '{"tier":"deep","reason":"hard"}' });
    const body = { model: 'auto', messages: [{ role: 'user', content: 'prove the lemma' }] };
    const first = await askAuto(t.gw, 'prove the lemma');
    expect(first.status, first.text).toBe(200);
    expect(first.headers['x-router-tier']).toBe('deep');
    expect(t.rt.requests).toHaveLength(1);

    // The same prompt again is answered from the router cache (no call): it goes to deep.
    const e = await postChat(t.gw, body, explainPath);
    expect(e.status, e.text).toBe(200);
    const again = await askAuto(t.gw, 'prove the lemma');
    expect(again.headers['x-router-tier']).toBe('deep');
    expect(t.rt.requests).toHaveLength(1); // cached: the router was not asked again

    expect(e.json.tier, String(e.json.tier_reason)).toBe(again.headers['x-router-tier']);
    const cands = e.json.candidates as Candidate[];
    expect(cands[0]?.upstream).toBe('deep/m');
  });

  // Regression: on a tie a live request sends to the router, explain planned default_tier alone and, when that
  // tier lacked a capability, answered 400 "no upstream supports tools" for a request chat serves (the router
  // picks a tier with tools).
  it('a tie whose default_tier cannot take the request: explain shows a tier that can, and asks no router', async () => {
    const rt = await sim('rt', { reply: '{"tier":"deep","reason":"needs tools"}', completionTokens: 1 });
    const bal = await sim('bal');
    const deep = await sim('deep');
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m']),
          simProvider('bal', bal.url, [{ name: 'm', capabilities: ['stream'] }]),
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
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    const body = { model: 'auto', tools, messages: [{ role: 'user', content: 'call it' }] };
    const e = await postChat(gw, body, explainPath);
    expect(e.status, e.text).toBe(200);
    // The router's pick is unknown without asking: the first tier that can take it (here fast) is shown.
    expect(e.json.tier).toBe('fast');
    expect(String(e.json.tier_reason)).toContain('default_tier cannot take it');
    expect((e.json.candidates as Candidate[])[0]?.upstream).toBe('rt/m');
    expect(rt.requests).toHaveLength(0); // explain calls no router
    const real = await postChat(gw, body);
    expect(real.status, real.text).toBe(200);
    expect(real.headers['x-router-tier']).toBe('deep');
  });

  it('a tiered round-robin: 50 explains spend no turn of the tier; the next real requests go where explain said', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const c = await sim('c');
    const gw = track(
      await startGateway({
        providers: [a, b, c].map((s) => simProvider(s.options.name, s.url, ['m'])),
        routes: {
          auto: {
            strategy: 'round-robin',
            tiers: { fast: ['a/m', 'b/m', 'c/m'], deep: ['c/m'] },
            rules: [{ name: 'all', if: { max_prompt_tokens: 100000 }, tier: 'fast' }],
            default_tier: 'deep',
          },
        },
        circuit_breaker: { failure_threshold: 50 },
      }),
    );
    const body: Json = { model: 'auto', messages: [{ role: 'user', content: 'hi' }] };
    const served: string[] = [];
    for (let round = 0; round < 4; round++) {
      let said: string | undefined;
      for (let i = 0; i < 50; i++) {
        const e = await postChat(gw, body, explainPath);
        expect(e.status, e.text).toBe(200);
        const top = (e.json.candidates as Candidate[])[0]!.upstream;
        if (said !== undefined) expect(top).toBe(said);
        said = top;
      }
      const real = await postChat(gw, body);
      expect(real.status, real.text).toBe(200);
      expect(real.headers['x-router-tier']).toBe('fast');
      served.push(real.headers['x-router-provider'] ?? '');
      expect(`${real.headers['x-router-provider']}/m`).toBe(said);
    }
    expect(new Set(served).size).toBe(3); // it still rotates
  });

  it('an embeddings model named in explain: the same refusal as chat gives (status, code, message)', async () => {
    const e1 = await sim('e1');
    const gw = track(
      await startGateway({
        providers: [simProvider('e1', e1.url, [{ name: 'emb', capabilities: ['embeddings'] }, 'm'])],
        routes: {
          vec: { strategy: 'priority', targets: ['e1/emb'] },
          chat: { strategy: 'priority', targets: ['e1/m'] },
        },
      }),
    );
    const body: Json = { model: 'vec', messages: [{ role: 'user', content: 'hi' }] };
    const chat = await postChat(gw, body);
    const e = await postChat(gw, body, explainPath);
    expect(chat.status).toBe(e.status);
    expect(e.json).toEqual(chat.json);
    // An embeddings body (input, no messages) is explained as /v1/embeddings would route it (README).
    const e2 = await postChat(gw, { model: 'vec', input: 'hi' }, explainPath);
    expect(e2.status, e2.text).toBe(200);
    expect(e2.json).toMatchObject({ route: 'vec', candidates: [{ upstream: 'e1/emb' }] });
  });

  it('/router/status after a reload: a removed upstream is gone, a kept one keeps its counters, routes are the new ones', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const cfg = (targets: string[]): Json => ({
      providers: [a, b].map((s) => simProvider(s.options.name, s.url, ['m'])),
      routes: { main: { strategy: 'round-robin', targets } },
    });
    const gw = track(await startGateway(cfg(['a/m', 'b/m'])));
    for (let i = 0; i < 4; i++) {
      const r = await postChat(gw, { model: 'main', messages: [{ role: 'user', content: 'hi' }] });
      expect(r.status, r.text).toBe(200);
    }
    type Up = { id: string; stats: { requests: number; successes: number } };
    const read = async (): Promise<{ upstreams: Up[]; routes: { name: string; targets: string[] }[] }> => {
      const r = await fetch(`${gw.url}/router/status`, { headers: { authorization: 'Bearer k' } });
      return (await r.json()) as { upstreams: Up[]; routes: { name: string; targets: string[] }[] };
    };
    const before = await read();
    const aBefore = before.upstreams.find((u) => u.id === 'a/m')!;
    expect(aBefore.stats.requests).toBe(2);
    const next = cfg(['a/m']);
    next.providers = [simProvider('a', a.url, ['m'])];
    reload(gw, next);
    const after = await read();
    expect(after.upstreams.map((u) => u.id)).toEqual(['a/m']);
    expect(after.upstreams[0]!.stats).toMatchObject({ requests: 2, successes: 2 });
    expect(after.routes).toEqual([expect.objectContaining({ name: 'main', targets: ['a/m'] })]);
  });

  it('says why each upstream the request would not go to is left out, with its figures', async () => {
    const [ok, small, plain, down] = [
      await sim('ok'),
      await sim('small'),
      await sim('plain'),
      await sim('down', { status: 500 }),
    ];
    const gw = track(
      await startGateway({
        providers: [
          simProvider('ok', ok.url, ['m']),
          simProvider('small', small.url, [{ name: 'm', context_window: 50 }]),
          simProvider('plain', plain.url, [{ name: 'm', capabilities: ['stream'] }]),
          simProvider('down', down.url, ['m']),
        ],
        routes: { r: { strategy: 'priority', targets: ['down/m', 'ok/m', 'small/m', 'plain/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: 30_000 },
      }),
    );
    expect((await postChat(gw, { model: 'r', messages: [{ role: 'user', content: 'hi' }] })).status).toBe(
      200,
    );
    const body = {
      model: 'r',
      max_tokens: 100,
      messages: [{ role: 'user', content: 'hi' }],
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    };
    const e = await postChat(gw, body, explainPath);
    expect(e.status, e.text).toBe(200);
    expect((e.json.candidates as Candidate[]).map((c) => c.upstream)).toEqual(['ok/m']);
    const why = Object.fromEntries(
      (e.json.excluded as { upstream: string; reason: string }[]).map((x) => [x.upstream, x.reason]),
    );
    expect(why['down/m']).toMatch(/^circuit open \(errors\): (29|30) s until a trial$/);
    expect(why['small/m']).toMatch(/^the request needs ~\d+ tokens, its context window is 50$/);
    expect(why['plain/m']).toBe('does not support tools');
    // A real request's plan builds no such list: the same body is served by ok/m.
    const real = await postChat(gw, body);
    expect(real.headers['x-router-provider']).toBe('ok');
  });
});
