/**
 * Audit of tiered routes (SPEC §2 "Tiers and the LLM router", README "Tiers and the LLM router" and the
 * routes rows of the config table): rules, priorities and ties, the LLM router's answers however odd, its
 * failures, `default_tier`, `x-router-tier`, `/router/explain` and the router metric.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { scrape, select, value } from '../helpers/prom-text.js';

const track = closeAfterEach();

type Msg = Record<string, unknown>;

interface Res {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: Record<string, unknown>;
  ms: number;
}

async function sim(name: string, o: Partial<SimOptions> = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

interface Tiered {
  rt: Simulator;
  bal: Simulator;
  deep: Simulator;
  gw: TestGateway;
}

/** fast = the router's own tier (`rt`), balanced (default_tier), deep. */
async function tiered(
  rules: unknown[] = [],
  reply = '{"tier": "deep", "reason": "hard"}',
  router: Record<string, unknown> = {},
  rtOpts: Partial<SimOptions> = {},
): Promise<Tiered> {
  const rt = await sim('rt', { reply, completionTokens: 1, ...rtOpts });
  const bal = await sim('bal');
  const deep = await sim('deep');
  const gw = track(
    await startGateway({
      providers: [rt, bal, deep].map((s) => simProvider(s.options.name, s.url, ['m'])),
      routes: {
        auto: {
          strategy: 'priority',
          tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
          rules,
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 400, cache_ttl_s: 60, ...router },
        },
      },
      circuit_breaker: { failure_threshold: 50 },
    }),
  );
  return { rt, bal, deep, gw };
}

async function post(
  gw: TestGateway,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<Res> {
  const t0 = performance.now();
  const res = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'auto', ...body }),
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* SSE */
  }
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(',') : String(v);
  return { status: res.statusCode, headers: h, text, json, ms: performance.now() - t0 };
}

const user = (content: unknown): Msg => ({ role: 'user', content });
const ask = (gw: TestGateway, content: unknown, h: Record<string, string> = {}, extra: Msg = {}) =>
  post(gw, { messages: [user(content)], ...extra }, h);
const explain = (gw: TestGateway, messages: Msg[], h: Record<string, string> = {}, extra: Msg = {}) =>
  post(gw, { messages, ...extra }, h, '/router/explain');

async function routerCount(gw: TestGateway, tier: string, outcome: string): Promise<number | undefined> {
  return value(await scrape(gw.url), 'llm_router_llm_router_requests_total', { tier, outcome });
}

/** A header value a client can take: visible ASCII, space and tab only, and not past Node's 16 KiB limit. */
function expectValidHeader(v: string | undefined): void {
  expect(v).toBeDefined();
  expect(v!).toMatch(/^[\t\x20-\x7e]*$/);
  expect(v!.length).toBeLessThan(8192);
}

/** Whatever the tier, the upstream that served is of it, and the metric counts it under that tier. */
async function expectConsistent(t: Tiered, r: Res): Promise<void> {
  expect(r.status, r.text).toBe(200);
  const tier = r.headers['x-router-tier'];
  expect(['fast', 'balanced', 'deep']).toContain(tier);
  expectValidHeader(r.headers['x-router-tier-reason']);
  const served = { fast: 'rt', balanced: 'bal', deep: 'deep' }[tier as 'fast' | 'balanced' | 'deep'];
  expect(r.headers['x-router-provider']).toBe(served);
  const s = await scrape(t.gw.url);
  const series = select(s, 'llm_router_llm_router_requests_total');
  expect(series).toHaveLength(1);
  expect(series[0]!.labels.tier).toBe(tier);
  expect(series[0]!.value).toBe(1);
  // chosen when the router's answer was taken; unparsable when default_tier served instead
  expect(series[0]!.labels.outcome).toBe(tier === 'balanced' ? 'unparsable' : 'chosen');
}

// ─────────────────────────────────── the LLM router's answers, however odd ───────────────────────────────────

describe('odd router answers: the request is always served, consistently', () => {
  const odd: Array<[string, string]> = [
    ['JSON in a code fence', '```json\n{"tier": "deep", "reason": "fenced"}\n```'],
    ['prose around the JSON', 'Sure! Here is my answer: {"tier": "deep", "reason": "prose"} Hope it helps.'],
    ['an upper-case tier name', '{"tier": "DEEP", "reason": "shout"}'],
    ['a capitalised key', '{"Tier": "deep", "reason": "caps"}'],
    ['a duplicate key naming two tiers', '{"tier": "deep", "tier": "fast", "reason": "two"}'],
    ['two JSON objects naming two tiers', '{"tier": "deep", "reason": "a"} {"tier": "fast", "reason": "b"}'],
    ['a JSON array', '["deep"]'],
    ['a tier that is not a string', '{"tier": 3, "reason": "n"}'],
    ['a prototype-ish tier', '{"tier": "__proto__", "reason": "p"}'],
    ['a tier the route lacks: toString', '{"tier": "toString", "reason": "p"}'],
    ['JSON null', 'null'],
  ];
  for (const [what, reply] of odd) {
    it(`${what}`, async () => {
      const t = await tiered([], reply);
      const r = await ask(t.gw, `an ambiguous question (${what})`);
      await expectConsistent(t, r);
    });
  }

  it('an empty answer: default_tier serves, counted unparsable', async () => {
    const t = await tiered([], '');
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(t.bal.requests).toHaveLength(1);
    expect(await routerCount(t.gw, 'balanced', 'unparsable')).toBe(1);
  });

  it('a 10 KB answer of prose: default_tier serves, counted unparsable, headers stay small', async () => {
    const t = await tiered([], 'deep? '.repeat(1700));
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expectValidHeader(r.headers['x-router-tier-reason']);
    expect(await routerCount(t.gw, 'balanced', 'unparsable')).toBe(1);
  });

  it('a reason with CRLF, NUL, tab, emoji and non-ASCII: a valid x-router-tier-reason that keeps the text', async () => {
    const reason = 'line1\r\nX-Evil: 1\n\u0000\tnaïve — 日本語 🚀 end';
    const t = await tiered([], JSON.stringify({ tier: 'deep', reason }));
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-evil']).toBeUndefined();
    expectValidHeader(r.headers['x-router-tier-reason']);
    expect(r.headers['x-router-tier-reason']).toMatch(/line1.*X-Evil: 1.*end$/);
  });

  it('a reason of 5 KB: the pick stands and x-router-tier-reason stays a valid, bounded header', async () => {
    const t = await tiered([], JSON.stringify({ tier: 'deep', reason: `why ${'z'.repeat(5000)}` }));
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expectValidHeader(r.headers['x-router-tier-reason']);
  });

  // README: "the router can make a request slower by at most its timeout, never fail it"
  it('a reason of 20 KB cannot push the response headers past what a Node client accepts', async () => {
    const t = await tiered([], JSON.stringify({ tier: 'deep', reason: 'r'.repeat(20_000) }));
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expectValidHeader(r.headers['x-router-tier-reason']);
  });

  it("a router answer picking the router's own tier is served by it (its call succeeded, nothing excluded)", async () => {
    const t = await tiered([], '{"tier": "fast", "reason": "easy"}');
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('fast');
    expect(t.rt.requests).toHaveLength(2);
    expect(await routerCount(t.gw, 'fast', 'chosen')).toBe(1);
  });

  it('a streamed client request on a tie gets the router pick and a proper stream', async () => {
    const t = await tiered();
    const r = await ask(t.gw, 'ambiguous', {}, { stream: true });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['content-type']).toContain('text/event-stream');
    expect(r.text).toContain('data: [DONE]');
    expect(t.deep.requests).toHaveLength(1);
  });
});

// ─────────────────────────────────── router failures → default_tier ───────────────────────────────────

describe("the router tier's upstream failing: default_tier, still served", () => {
  it('429: default_tier serves, counted error', async () => {
    const t = await tiered([], undefined, {}, { status: 429, retryAfterS: 1 });
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(t.bal.requests).toHaveLength(1);
    expect(await routerCount(t.gw, 'balanced', 'error')).toBe(1);
  });

  it('slower than timeout_ms: default_tier serves within about timeout_ms extra, counted timeout', async () => {
    const t = await tiered([], undefined, { timeout_ms: 300 }, { latencyMs: 3000 });
    const r = await ask(t.gw, 'ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(r.ms).toBeLessThan(300 + 1500);
    expect(await routerCount(t.gw, 'balanced', 'timeout')).toBe(1);
  });

  it('a tie between rules whose router fails: default_tier, not either rule', async () => {
    const t = await tiered(
      [
        { name: 'a', if: { max_prompt_tokens: 1000 }, tier: 'fast' },
        { name: 'b', if: { last_user_message: 'prove' }, tier: 'deep' },
      ],
      undefined,
      {},
      { status: 500 },
    );
    const r = await ask(t.gw, 'prove it');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(t.bal.requests).toHaveLength(1);
  });

  it('a failed router call is not cached: once the router recovers, the same prompt asks it again', async () => {
    const t = await tiered([], undefined, {}, { status: 500 });
    expect((await ask(t.gw, 'same prompt')).headers['x-router-tier']).toBe('balanced');
    t.rt.set({ status: undefined });
    const r = await ask(t.gw, 'same prompt');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(await routerCount(t.gw, 'deep', 'chosen')).toBe(1);
  });

  it('an unparsable answer is not cached as a pick: the next same prompt asks again', async () => {
    const t = await tiered([], 'no idea');
    expect((await ask(t.gw, 'same prompt')).headers['x-router-tier']).toBe('balanced');
    t.rt.set({ reply: '{"tier": "deep", "reason": "now sure"}' });
    const r = await ask(t.gw, 'same prompt');
    expect(r.headers['x-router-tier']).toBe('deep');
  });
});

// ─────────────────────────────────── rules ───────────────────────────────────

describe('last_user_message rules', () => {
  const rules = [{ name: 'proofs', if: { last_user_message: 'prove|derive' }, tier: 'deep' }];

  it('matches text in multi-part content', async () => {
    const t = await tiered(rules);
    const r = await ask(t.gw, [
      { type: 'text', text: 'please' },
      { type: 'text', text: 'derive the formula' },
    ]);
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toBe('rule proofs');
    expect(t.rt.requests).toHaveLength(0);
  });

  it('looks at the last user message when the conversation ends with an assistant message', async () => {
    const t = await tiered(rules);
    const r = await post(t.gw, {
      messages: [user('prove it'), { role: 'assistant', content: 'Sure, here goes.' }],
    });
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toBe('rule proofs');
  });

  it('looks at the last user message when the conversation ends with a tool result', async () => {
    const t = await tiered(rules);
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    const r = await post(t.gw, {
      tools,
      messages: [
        user('derive the bound'),
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }],
        },
        { role: 'tool', tool_call_id: 'c1', content: 'nothing here' },
      ],
    });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
  });

  it('an assistant or system message matching the regex is not the last user message', async () => {
    const t = await tiered(rules);
    const r = await post(t.gw, {
      messages: [
        { role: 'system', content: 'prove everything' },
        user('hello'),
        { role: 'assistant', content: 'let me derive' },
      ],
    });
    expect(r.headers['x-router-tier']).toBe('deep'); // the router's answer, not the rule
    expect(r.headers['x-router-tier-reason']).not.toBe('rule proofs');
    expect(t.rt.requests).toHaveLength(1);
  });

  it('the regex case-sensitivity is the same live and in explain', async () => {
    const t = await tiered(rules, '{"tier": "fast", "reason": "router"}');
    const e = await explain(t.gw, [user('PROVE it')]);
    const r = await ask(t.gw, 'PROVE it');
    const liveByRule = r.headers['x-router-tier-reason'] === 'rule proofs';
    expect(e.json.tier_reason === 'rule proofs').toBe(liveByRule);
  });
});

describe('header rules', () => {
  it('`name` matches presence whatever the case of the header name, in config or request', async () => {
    const t = await tiered([{ name: 'team', if: { header: 'X-Team' }, tier: 'deep' }]);
    const r = await ask(t.gw, 'hi', { 'x-team': 'anything' });
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toBe('rule team');
    expect(t.rt.requests).toHaveLength(0);
  });

  it('`name=value` matches the value and not another one; the config name may be in upper case', async () => {
    const t = await tiered(
      [{ name: 'gold', if: { header: 'X-Team=gold' }, tier: 'deep' }],
      '{"tier": "fast"}',
    );
    expect((await ask(t.gw, 'hi', { 'X-TEAM': 'gold' })).headers['x-router-tier-reason']).toBe('rule gold');
    expect((await ask(t.gw, 'hi', { 'x-team': 'silver' })).headers['x-router-tier-reason']).not.toBe(
      'rule gold',
    );
    expect((await ask(t.gw, 'hi there')).headers['x-router-tier-reason']).not.toBe('rule gold');
  });

  // README config table: "conditions ... `header` (`name` or `name=value`)" — the value is everything after the first "="
  it('`name=value` whose value holds "=" splits at the first "="', async () => {
    const t = await tiered([{ name: 'eq', if: { header: 'x-k=a=b' }, tier: 'deep' }]);
    const r = await ask(t.gw, 'hi', { 'x-k': 'a=b' });
    expect(r.headers['x-router-tier-reason']).toBe('rule eq');
  });
});

describe('priority and ties', () => {
  it('a lower priority wins whatever the rule order; a rule without priority is 0', async () => {
    const t = await tiered([
      { name: 'p2', priority: 2, if: { max_prompt_tokens: 1000 }, tier: 'fast' },
      { name: 'p1', priority: 1, if: { max_prompt_tokens: 1000 }, tier: 'balanced' },
      { name: 'p0', if: { max_prompt_tokens: 1000 }, tier: 'deep' },
    ]);
    const r = await ask(t.gw, 'hi');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(r.headers['x-router-tier-reason']).toBe('rule p0');
    expect(t.rt.requests).toHaveLength(0);
  });

  it('three rules of equal priority, two agreeing and one not: a tie the router decides', async () => {
    const t = await tiered(
      [
        { name: 'a', if: { max_prompt_tokens: 1000 }, tier: 'deep' },
        { name: 'b', if: { last_user_message: 'hi' }, tier: 'deep' },
        { name: 'c', if: { tools: false }, tier: 'fast' },
      ],
      '{"tier": "balanced", "reason": "router says"}',
    );
    const r = await ask(t.gw, 'hi');
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(t.rt.requests).toHaveLength(1);
    expect(await routerCount(t.gw, 'balanced', 'chosen')).toBe(1);
  });

  it('top-priority rules that agree are no tie even when a lower-priority rule disagrees', async () => {
    const t = await tiered([
      { name: 'a', priority: 0, if: { max_prompt_tokens: 1000 }, tier: 'deep' },
      { name: 'b', priority: 0, if: { last_user_message: 'hi' }, tier: 'deep' },
      { name: 'c', priority: 1, if: { tools: false }, tier: 'fast' },
    ]);
    const r = await ask(t.gw, 'hi');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(t.rt.requests).toHaveLength(0);
  });

  it('explain on a tie of rules names the default tier, says a live request asks the router, and calls nothing', async () => {
    const t = await tiered([
      { name: 'a', if: { max_prompt_tokens: 1000 }, tier: 'deep' },
      { name: 'b', if: { last_user_message: 'hi' }, tier: 'fast' },
    ]);
    const e = await explain(t.gw, [user('hi')]);
    expect(e.status, e.text).toBe(200);
    expect(e.json.tier).toBe('balanced');
    expect(String(e.json.tier_reason)).toMatch(/router/i);
    expect(t.rt.requests.length + t.bal.requests.length + t.deep.requests.length).toBe(0);
    expect(select(await scrape(t.gw.url), 'llm_router_llm_router_requests_total')).toHaveLength(0);
  });

  it('explain names the rule that decided', async () => {
    const t = await tiered([
      { name: 'p1', priority: 1, if: { max_prompt_tokens: 1000 }, tier: 'fast' },
      { name: 'gold', priority: 0, if: { header: 'x-team=gold' }, tier: 'deep' },
    ]);
    const e = await explain(t.gw, [user('hi')], { 'x-team': 'gold' });
    expect(e.json.tier).toBe('deep');
    expect(e.json.tier_reason).toBe('rule gold');
    const e2 = await explain(t.gw, [user('hi')]);
    expect(e2.json.tier).toBe('fast');
    expect(e2.json.tier_reason).toBe('rule p1');
  });
});

describe('prompt-token rules at their exact boundaries', () => {
  it('min_prompt_tokens and max_prompt_tokens are inclusive', async () => {
    const probe = await tiered();
    const messages = [user('some words to count for the boundary test')];
    const e = await explain(probe.gw, messages);
    const n = (e.json.features as { promptTokens: number }).promptTokens;
    expect(n).toBeGreaterThan(1);
    const reasonWith = async (cond: Record<string, number>): Promise<unknown> => {
      const t = await tiered([{ name: 'r', if: cond, tier: 'deep' }]);
      return (await explain(t.gw, messages)).json.tier_reason;
    };
    expect(await reasonWith({ max_prompt_tokens: n })).toBe('rule r');
    expect(await reasonWith({ min_prompt_tokens: n })).toBe('rule r');
    expect(await reasonWith({ min_prompt_tokens: n, max_prompt_tokens: n })).toBe('rule r');
    expect(await reasonWith({ max_prompt_tokens: n - 1 })).not.toBe('rule r');
    expect(await reasonWith({ min_prompt_tokens: n + 1 })).not.toBe('rule r');
    // and live agrees with explain at the boundary
    const t = await tiered([{ name: 'r', if: { max_prompt_tokens: n }, tier: 'deep' }]);
    const live = await post(t.gw, { messages });
    expect(live.headers['x-router-tier-reason']).toBe('rule r');
  });
});

// ─────────────────────────────────── x-router-tier ───────────────────────────────────

describe('x-router-tier', () => {
  it('overrides a matching rule, and on a tie the router is not asked', async () => {
    const t = await tiered([
      { name: 'a', if: { max_prompt_tokens: 1000 }, tier: 'deep' },
      { name: 'b', if: { last_user_message: 'hi' }, tier: 'balanced' },
    ]);
    const r = await ask(t.gw, 'hi', { 'x-router-tier': 'fast' });
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('fast');
    expect(r.headers['x-router-provider']).toBe('rt');
    expect(t.rt.requests).toHaveLength(1); // serving, not routing
    expect(select(await scrape(t.gw.url), 'llm_router_llm_router_requests_total')).toHaveLength(0);
  });

  it('explain honours it too, and refuses a tier the route lacks like a live request', async () => {
    const t = await tiered([{ name: 'a', if: { max_prompt_tokens: 1000 }, tier: 'deep' }]);
    const e = await explain(t.gw, [user('hi')], { 'x-router-tier': 'balanced' });
    expect(e.json.tier).toBe('balanced');
    const live = await ask(t.gw, 'hi', { 'x-router-tier': 'nope' });
    const ex = await explain(t.gw, [user('hi')], { 'x-router-tier': 'nope' });
    expect(live.status).toBe(400);
    expect(ex.status).toBe(400);
    expect((ex.json.error as { param?: string }).param).toBe('x-router-tier');
  });
});

// ─────────────────────────────────── metrics ───────────────────────────────────

describe('llm_router_llm_router_requests_total', () => {
  it('counts chosen, cached, unparsable, error and timeout once each under the tier the request got', async () => {
    const t = await tiered([], '{"tier": "deep", "reason": "x"}', { timeout_ms: 300 });
    await ask(t.gw, 'q1'); // chosen
    await ask(t.gw, 'q1'); // cached
    t.rt.set({ reply: 'gibberish' });
    await ask(t.gw, 'q2'); // unparsable
    t.rt.set({ status: 500 });
    await ask(t.gw, 'q3'); // error
    t.rt.set({ status: undefined, latencyMs: 3000 });
    const slow = await ask(t.gw, 'q4'); // timeout
    expect(slow.status).toBe(200);
    await explain(t.gw, [user('q5')]); // nothing
    const s = await scrape(t.gw.url);
    const got = select(s, 'llm_router_llm_router_requests_total')
      .map((x) => `${x.labels.tier}/${x.labels.outcome}=${x.value}`)
      .sort();
    expect(got).toEqual([
      'balanced/error=1',
      'balanced/timeout=1',
      'balanced/unparsable=1',
      'deep/cached=1',
      'deep/chosen=1',
    ]);
  });
});
