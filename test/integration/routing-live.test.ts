/**
 * Routing semantics as a user observes them over HTTP, driven by live statistics: several simulators of
 * different latency, price and reliability behind one route, real requests, and `/router/explain` naming
 * what the next real request gets. Complements routing.test.ts (shares per strategy, header basics).
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import type { SimBehaviour } from '../../src/sim/options.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { parseProm, select } from '../helpers/prom-text.js';
import { mulberry32 } from '../helpers/random.js';

const track = closeAfterEach();

interface SimSpec {
  readonly price?: { input_per_mtok: number; output_per_mtok: number };
  readonly sim?: Partial<SimBehaviour>;
}

interface Live {
  readonly gw: TestGateway;
  readonly sim: Record<string, Simulator>;
  /** Moves the gateway's clock forward (it runs on real time plus this offset). */
  advance(ms: number): void;
}

const FLAT = { input_per_mtok: 1, output_per_mtok: 1 };

async function setup(
  specs: Record<string, SimSpec>,
  routes: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Promise<Live> {
  const sim: Record<string, Simulator> = {};
  for (const [name, spec] of Object.entries(specs)) {
    sim[name] = track(await startSimulator({ name, latencyMs: 0, completionTokens: 8, ...spec.sim }));
  }
  let offset = 0;
  const gw = track(
    await startGateway(
      {
        providers: Object.entries(specs).map(([name, spec]) =>
          simProvider(name, sim[name]!.url, [{ name: 'm', price: spec.price ?? FLAT }]),
        ),
        routes,
        ...extra,
      },
      { random: mulberry32(7), now: () => Date.now() + offset },
    ),
  );
  return { gw, sim, advance: (ms) => (offset += ms) };
}

const HI = [{ role: 'user', content: 'hi' }];

interface Served {
  status: number;
  provider: string;
  strategy: string;
  retryAfter: string | undefined;
  json: Record<string, unknown>;
}

async function send(
  gw: TestGateway,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<Served> {
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ messages: HI, ...body }),
  });
  const json = (await res.body.json()) as Record<string, unknown>;
  return {
    status: res.statusCode,
    provider: String(res.headers['x-router-provider']),
    strategy: String(res.headers['x-router-strategy']),
    retryAfter: res.headers['retry-after'] as string | undefined,
    json,
  };
}

async function chat(
  gw: TestGateway,
  model: string,
  headers: Record<string, string> = {},
  body: Record<string, unknown> = {},
): Promise<string> {
  const r = await send(gw, { model, ...body }, headers);
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.provider;
}

interface Candidate {
  rank: number;
  upstream: string;
  provider: string;
  score: number;
  reason: string;
}

async function explain(
  gw: TestGateway,
  model: string,
  headers: Record<string, string> = {},
  body: Record<string, unknown> = {},
): Promise<{ strategy: string; candidates: Candidate[] }> {
  const r = await send(gw, { model, ...body }, headers, '/router/explain');
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  const e = r.json as unknown as { strategy: string; candidates: Candidate[] };
  for (const c of e.candidates) {
    expect(c.score, c.reason).toBeGreaterThanOrEqual(0);
    expect(c.score, c.reason).toBeLessThanOrEqual(1);
    expect(c.reason.length).toBeGreaterThan(0);
  }
  // The best scores 1; ties (within tie_epsilon 0.02) rotate, so the first may be one that ties it.
  expect(Math.max(...e.candidates.map((c) => c.score)), JSON.stringify(e)).toBe(1);
  expect(e.candidates[0]!.score, JSON.stringify(e)).toBeGreaterThanOrEqual(0.98);
  return e;
}

function count(served: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of served) out[p] = (out[p] ?? 0) + 1;
  return out;
}

async function serial(gw: TestGateway, model: string, n: number, headers: Record<string, string> = {}) {
  const served: string[] = [];
  for (let i = 0; i < n; i++) served.push(await chat(gw, model, headers));
  return served;
}

async function metrics(gw: TestGateway) {
  return parseProm(await (await request(`${gw.url}/metrics`)).body.text());
}

/** A prompt of ~400 tokens: large enough that the input price matters. */
const LONG = [{ role: 'user', content: 'word '.repeat(400) }];

describe('cost: expected output tokens', () => {
  it('uses max_tokens / max_completion_tokens when given, else the observed mean output', async () => {
    // inHeavy: cheap input, dear output; outHeavy: the reverse.
    const { gw } = await setup(
      {
        inCheap: { price: { input_per_mtok: 1, output_per_mtok: 100 }, sim: { completionTokens: 1 } },
        outCheap: { price: { input_per_mtok: 10, output_per_mtok: 1 }, sim: { completionTokens: 1 } },
      },
      { r: { strategy: 'cost', targets: ['inCheap/m', 'outCheap/m'] } },
    );
    const long = { messages: LONG };
    // Nothing measured: the default expected output (hundreds of tokens) favours the cheap output price.
    const cold = await explain(gw, 'r', {}, long);
    expect(cold.candidates[0]!.provider).toBe('outCheap');
    expect(cold.candidates[0]!.reason).toContain('(default)');
    // A small limit makes input price dominate; a large one output price, whichever field carries it.
    for (const [field, n, want] of [
      ['max_tokens', 1, 'inCheap'],
      ['max_completion_tokens', 1, 'inCheap'],
      ['max_tokens', 5000, 'outCheap'],
      ['max_completion_tokens', 5000, 'outCheap'],
    ] as const) {
      const e = await explain(gw, 'r', {}, { ...long, [field]: n });
      expect(e.candidates[0]!.provider, `${field}=${n}`).toBe(want);
      expect(e.candidates[0]!.reason).toContain(`+ ${n.toLocaleString('en-US')} out x`);
      expect(e.candidates[1]!.score).toBeLessThan(1);
      expect(await chat(gw, 'r', {}, { ...long, [field]: n })).toBe(want);
    }
    // Both limits: max_completion_tokens (the current name) wins.
    expect(await chat(gw, 'r', {}, { ...long, max_tokens: 5000, max_completion_tokens: 1 })).toBe('inCheap');
    // The answers so far were 1 token each: the observed mean now says "1 out", and input price decides.
    const warm = await explain(gw, 'r', {}, long);
    expect(warm.candidates[0]!.reason).toContain('(mean)');
    expect(warm.candidates[0]!.provider).toBe('inCheap');
    expect(await chat(gw, 'r', {}, long)).toBe('inCheap');
  });

  it('shares traffic between two identical upstreams by rotation, not array order', async () => {
    const same = { input_per_mtok: 1, output_per_mtok: 2 };
    const { gw } = await setup(
      {
        pricey: { price: { input_per_mtok: 5, output_per_mtok: 20 } },
        twinB: { price: same },
        twinA: { price: same },
      },
      { r: { strategy: 'cost', targets: ['pricey/m', 'twinB/m', 'twinA/m'] } },
    );
    const served: string[] = [];
    for (let i = 0; i < 20; i++) {
      const e = await explain(gw, 'r');
      expect(e.candidates[1]!.score).toBe(1); // the twins tie at the top
      expect(e.candidates[2]!.provider).toBe('pricey');
      const p = await chat(gw, 'r');
      expect(p).toBe(e.candidates[0]!.provider);
      served.push(p);
    }
    const c = count(served);
    expect(c.twinA ?? 0, JSON.stringify(c)).toBeGreaterThanOrEqual(8);
    expect(c.twinB ?? 0, JSON.stringify(c)).toBeGreaterThanOrEqual(8);
  });
});

describe('latency: live statistics', () => {
  it('leaves an upstream at once when it turns slow, and returns once it has recovered', async () => {
    const live = await setup(
      { steady: { sim: { latencyMs: 60 } }, quick: { sim: { latencyMs: 0 } } },
      { r: { strategy: 'latency', targets: ['steady/m', 'quick/m'] } },
      { routing: { exploration_share: 0 } },
    );
    const { gw, sim } = live;
    // Both measured (min_samples 3) by requests addressed to them; no exploration: no random draws.
    for (let i = 0; i < 3; i++) {
      await chat(gw, 'steady/m');
      await chat(gw, 'quick/m');
    }
    const e = await explain(gw, 'r');
    expect(e.candidates[0]!.provider, JSON.stringify(e)).toBe('quick');
    expect(e.candidates[1]!.reason).toMatch(/latency [\d,]+ ms est\./);
    expect(count(await serial(gw, 'r', 10))).toEqual({ quick: 10 });

    sim.quick!.set({ latencyMs: 250 });
    expect(await chat(gw, 'r')).toBe('quick'); // the one slow answer...
    const away = await explain(gw, 'r'); // ...is taken at once (peak-EWMA)
    expect(away.candidates[0]!.provider, JSON.stringify(away)).toBe('steady');
    expect(count(await serial(gw, 'r', 5))).toEqual({ steady: 5 });

    // It recovers; with time its one slow sample weighs less, and traffic comes back to it.
    sim.quick!.set({ latencyMs: 0 });
    live.advance(120_000);
    const back = await explain(gw, 'r');
    expect(back.candidates[0]!.provider, JSON.stringify(back)).toBe('quick');
    expect(count(await serial(gw, 'r', 10))).toEqual({ quick: 10 });
  });

  it('gives an unmeasured upstream a bounded exploration share, not all traffic, and explain names each pick', async () => {
    const { gw } = await setup(
      { known: { sim: { latencyMs: 20 } }, fresh: { sim: { latencyMs: 0 } } },
      { r: { strategy: 'latency', targets: ['known/m', 'fresh/m'] } },
      { routing: { exploration_share: 0.2, min_samples: 40 } },
    );
    // `known` measured by requests addressed to it; `fresh` (faster, but unmeasured) never was.
    await serial(gw, 'known/m', 40);
    const served: string[] = [];
    for (let i = 0; i < 60; i++) {
      const e = await explain(gw, 'r');
      const p = await chat(gw, 'r');
      expect(p, JSON.stringify(e)).toBe(e.candidates[0]!.provider);
      const fresh = e.candidates.find((c) => c.provider === 'fresh')!;
      expect(fresh.reason).toMatch(
        /^unmeasured \(\d+ samples?\): (exploring \(20\.0% of decisions\)|held back)/,
      );
      served.push(p);
    }
    const c = count(served);
    // 20% of 60 = 12 expected; the seeded draw keeps it well within [3, 25].
    expect(c.fresh ?? 0, JSON.stringify(c)).toBeGreaterThanOrEqual(3);
    expect(c.fresh ?? 0, JSON.stringify(c)).toBeLessThanOrEqual(25);
  });
});

describe('hybrid with custom weights', () => {
  it('follows the weights: cost-heavy picks the cheap slow upstream, latency-heavy the dear fast one', async () => {
    const { gw } = await setup(
      {
        cheap: { price: { input_per_mtok: 0.1, output_per_mtok: 0.4 }, sim: { latencyMs: 80 } },
        dear: { price: { input_per_mtok: 5, output_per_mtok: 20 }, sim: { latencyMs: 0 } },
      },
      {
        thrifty: {
          strategy: { hybrid: { cost_weight: 0.9, latency_weight: 0.1, reliability_weight: 0 } },
          targets: ['cheap/m', 'dear/m'],
        },
        hasty: {
          strategy: { hybrid: { cost_weight: 0.1, latency_weight: 0.9, reliability_weight: 0 } },
          targets: ['cheap/m', 'dear/m'],
        },
      },
    );
    // Measure both, addressed directly.
    for (let i = 0; i < 4; i++) {
      await chat(gw, 'cheap/m');
      await chat(gw, 'dear/m');
    }
    const t = await explain(gw, 'thrifty');
    expect(t.strategy).toBe('hybrid');
    expect(t.candidates[0]!.provider).toBe('cheap');
    expect(t.candidates[0]!.reason).toMatch(/cost \$[\d.]+ -> [\d.]+ x 0\.9 \+ latency [\d,]+ ms/);
    const h = await explain(gw, 'hasty');
    expect(h.candidates[0]!.provider, JSON.stringify(h)).toBe('dear');
    expect(h.candidates[0]!.reason).toContain('x 0.9 + reliability');
    expect(count(await serial(gw, 'thrifty', 5))).toEqual({ cheap: 5 });
    expect(count(await serial(gw, 'hasty', 5))).toEqual({ dear: 5 });
  });

  it('weighs reliability: an upstream failing often loses traffic under a reliability-heavy weighting', async () => {
    const { gw } = await setup(
      { flaky: { sim: { failRate: 1 } }, solid: {} },
      {
        r: {
          strategy: { hybrid: { cost_weight: 0, latency_weight: 0, reliability_weight: 1 } },
          targets: ['flaky/m', 'solid/m'],
        },
      },
      { circuit_breaker: { failure_threshold: 100 } },
    );
    // Requests fail over from flaky to solid: each one still succeeds for the client.
    for (let i = 0; i < 4; i++) expect(await chat(gw, 'r')).toBe('solid');
    const e = await explain(gw, 'r');
    expect(e.candidates[0]!.provider).toBe('solid');
    expect(e.candidates[1]!.reason).toMatch(/reliability \d+\.\d% -> 0\.\d\d x 1(;|$)/);
    // Well under solid's 1 (ignoring reliability would tie them at 1); the decaying rate's prior keeps it near
    // 0.5, and a slow run let it decay to 0.5001, so the bound has room.
    expect(e.candidates[1]!.score).toBeLessThan(0.6);
  });
});

describe('round-robin over healthy candidates', () => {
  it('skips an upstream whose breaker is open and splits evenly over the others', async () => {
    const { gw, sim } = await setup(
      { a: {}, broken: { sim: { status: 500 } }, c: {} },
      { r: { strategy: 'round-robin', targets: ['a/m', 'broken/m', 'c/m'] } },
      { circuit_breaker: { failure_threshold: 1, open_ms: 600_000, max_open_ms: 600_000 } },
    );
    await serial(gw, 'r', 3); // one of them reaches `broken` and opens its breaker
    expect(sim.broken!.requests).toHaveLength(1);
    const served: string[] = [];
    for (let i = 0; i < 30; i++) {
      const e = await explain(gw, 'r');
      expect(e.candidates.map((c) => c.provider)).not.toContain('broken');
      const p = await chat(gw, 'r');
      expect(p).toBe(e.candidates[0]!.provider);
      served.push(p);
    }
    expect(count(served)).toEqual({ a: 15, c: 15 });
    expect(sim.broken!.requests).toHaveLength(1);
  });

  it('a pinned provider whose breaker is open gets a 503 naming the open circuit, not another provider', async () => {
    const { gw, sim } = await setup(
      { a: {}, broken: { sim: { status: 500 } } },
      { r: { strategy: 'priority', targets: ['broken/m', 'a/m'] } },
      { circuit_breaker: { failure_threshold: 1, open_ms: 600_000, max_open_ms: 600_000 } },
    );
    expect(await chat(gw, 'r')).toBe('a'); // failed over; broken's breaker is now open
    const r = await send(gw, { model: 'r' }, { 'x-router-provider': 'broken' });
    expect(r.status).toBe(503);
    const err = r.json.error as Record<string, unknown>;
    expect(err.code ?? err.type).toBe('no_available_upstream');
    // The pin is honoured (no other provider serves it), and the message blames the pinned provider, not
    // the whole route, whose other upstream is healthy.
    expect(String(err.message)).toContain('provider "broken" in route `r` is unavailable (circuit open)');
    expect(Number(r.retryAfter)).toBeGreaterThan(0);
    expect(sim.broken!.requests).toHaveLength(1);
    expect(sim.a!.requests).toHaveLength(1);
  });
});

describe('least-busy sees concurrent streams', () => {
  it('ranks by live in-flight counts (explain quotes them) and sends the next request to the idlest', async () => {
    const { gw } = await setup(
      {
        a: { sim: { chunkDelayMs: 200, completionTokens: 50 } },
        b: { sim: { chunkDelayMs: 200, completionTokens: 50 } },
        c: {},
      },
      { r: { strategy: 'least-busy', targets: ['a/m', 'b/m', 'c/m'] } },
    );
    const open = async (provider: string) => {
      const ac = new AbortController();
      track({ close: () => ac.abort() });
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-router-provider': provider },
        body: JSON.stringify({ model: 'r', messages: HI, stream: true }),
        signal: ac.signal,
      });
      expect(res.statusCode).toBe(200);
      res.body.on('error', () => undefined);
      return ac;
    };
    await Promise.all([open('a'), open('a'), open('b')]);
    const e = await explain(gw, 'r');
    expect(e.candidates.map((c) => c.provider)).toEqual(['c', 'b', 'a']);
    expect(e.candidates.map((c) => c.reason)).toEqual(['0 in flight', '1 in flight', '2 in flight']);
    expect(e.candidates[1]!.score).toBeCloseTo(0.5, 5);
    expect(await chat(gw, 'r')).toBe('c');
  });
});

describe('explain names the next real pick, for every strategy', () => {
  it('agrees with x-router-provider for each strategy given by header, over live statistics', async () => {
    const { gw } = await setup(
      {
        slow: { price: { input_per_mtok: 0.1, output_per_mtok: 0.4 }, sim: { latencyMs: 60 } },
        mid: { price: { input_per_mtok: 1, output_per_mtok: 4 }, sim: { latencyMs: 25 } },
        fast: { price: { input_per_mtok: 5, output_per_mtok: 20 }, sim: { latencyMs: 0 } },
      },
      {
        r: {
          strategy: 'priority',
          targets: [
            { target: 'slow/m', weight: 1 },
            { target: 'mid/m', weight: 2 },
            { target: 'fast/m', weight: 3 },
          ],
        },
      },
      { routing: { exploration_share: 0.3 } },
    );
    for (let i = 0; i < 3; i++) await chat(gw, 'slow/m'); // measured; the others are explored
    const strategies = ['cost', 'latency', 'hybrid', 'round-robin', 'priority', 'weighted', 'least-busy'];
    const firsts: Record<string, Set<string>> = {};
    for (let round = 0; round < 6; round++) {
      for (const s of strategies) {
        const h = { 'x-router-strategy': s };
        const e = await explain(gw, 'r', h);
        expect(e.strategy).toBe(s);
        const r = await send(gw, { model: 'r' }, h);
        expect(r.status).toBe(200);
        expect(r.strategy).toBe(s);
        expect(r.provider, `${s}: ${JSON.stringify(e)}`).toBe(e.candidates[0]!.provider);
        (firsts[s] ??= new Set()).add(r.provider);
      }
    }
    expect([...firsts.cost!]).toEqual(['slow']);
    expect([...firsts.priority!]).toEqual(['slow']);
    expect(firsts['round-robin']!.size).toBeGreaterThan(1);
  });
});

describe('llm_router_routing_decisions_total', () => {
  it('counts each decision once, with the strategy actually used; explain and failover add none', async () => {
    const { gw } = await setup(
      { bad: { sim: { status: 500 } }, good: {} },
      { r: { strategy: 'priority', targets: ['bad/m', 'good/m'] } },
      { circuit_breaker: { failure_threshold: 100 } },
    );
    for (let i = 0; i < 3; i++) expect(await chat(gw, 'r')).toBe('good'); // each fails over bad -> good
    for (let i = 0; i < 2; i++) await chat(gw, 'r', { 'x-router-strategy': 'least-busy' });
    await explain(gw, 'r');
    // It really ranked by cost (so "no cost series" below is about explain, not about an ignored header).
    expect((await explain(gw, 'r', { 'x-router-strategy': 'cost' })).strategy).toBe('cost');
    const s = await metrics(gw);
    const d = select(s, 'llm_router_routing_decisions_total', { route: 'r' });
    const total = d.reduce((n, x) => n + x.value, 0);
    expect(total, JSON.stringify(d)).toBe(5);
    expect(
      select(s, 'llm_router_routing_decisions_total', {
        route: 'r',
        strategy: 'priority',
        provider: 'bad',
      })[0]?.value,
    ).toBe(3);
    const lb = select(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'least-busy' });
    expect(lb.reduce((n, x) => n + x.value, 0)).toBe(2);
    expect(select(s, 'llm_router_routing_decisions_total', { strategy: 'cost' })).toHaveLength(0);
  });
});
