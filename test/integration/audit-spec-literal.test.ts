/**
 * A literal audit of SPEC §2, §4 and §5 (and the README where it refines them), black-box over HTTP: real
 * simulators and small node:http mocks as upstreams, a gateway on 127.0.0.1:0, an injected clock where the
 * contract has durations. Each test quotes the sentence it holds the gateway to.
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { postTo, simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { chunkFrame, sendJson, startRecordingMock, type RecordingMock } from '../helpers/mock-upstream.js';
import { parseProm, select, value, type Sample } from '../helpers/prom-text.js';
import { mulberry32 } from '../helpers/random.js';
import { contentOf, dataEvents, RELAXED, TIMEOUTS } from '../helpers/resilience-harness.js';
import { SPEC_METRICS } from '../helpers/spec-metrics.js';

const track = closeAfterEach();

const HI = [{ role: 'user', content: 'hi' }];
const FLAT = { input_per_mtok: 1, output_per_mtok: 1 };

interface Up {
  name: string;
  url: string;
  price?: { input_per_mtok: number; output_per_mtok: number };
  tight?: boolean;
  kind?: string;
}

interface Res {
  status: number;
  headers: Record<string, string>;
  text: string;
  json: Record<string, unknown> & {
    error?: { message: string; type: string; param: unknown; code: unknown };
  };
}

let offset = 0;
const now = (): number => Date.now() + offset;

async function sim(name: string, o: Partial<SimOptions> = {}): Promise<Simulator> {
  return track(await startSimulator({ name, ...o }));
}

async function mock(
  answer: (body: Record<string, unknown>, n: number, res: ServerResponse) => void,
): Promise<RecordingMock> {
  return track(await startRecordingMock(answer));
}

function up(s: Simulator | RecordingMock, name?: string, extra: Partial<Up> = {}): Up {
  if ('options' in s) return { name: s.options.name, url: s.url, kind: s.options.kind, ...extra };
  return { name: name ?? 'mock', url: s.url, ...extra };
}

async function gateway(
  ups: Up[],
  routes: Record<string, unknown> = { r: { strategy: 'priority', targets: ups.map((u) => `${u.name}/m`) } },
  extra: Record<string, unknown> = {},
): Promise<TestGateway> {
  offset = 0;
  return track(
    await startGateway(
      {
        providers: ups.map((u) =>
          simProvider(u.name, u.url, [{ name: 'm', price: u.price ?? FLAT }], {
            timeouts: u.tight ? TIMEOUTS : RELAXED,
            ...(u.kind === 'anthropic' ? { kind: 'anthropic', base_url: u.url } : {}),
          }),
        ),
        routes,
        routing: { max_attempts: 3, total_timeout_ms: 5000 },
        circuit_breaker: { failure_threshold: 50, open_ms: 60_000 },
        ...extra,
      },
      { now, random: mulberry32(11) },
    ),
  );
}

async function post(
  gw: TestGateway,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<Res> {
  const r = await postTo(`${gw.url}${path}`, { model: 'r', messages: HI, ...body }, { headers });
  return { status: r.status, headers: r.headers, text: r.text, json: r.json as Res['json'] };
}

/** Opens a stream on route r (a `hi`) with undici, unread: the caller reads or holds its body. */
function openStream(gw: TestGateway, headers: Record<string, string> = {}) {
  return request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'r', messages: HI, stream: true }),
  });
}

async function metrics(gw: TestGateway): Promise<Sample[]> {
  return parseProm(await (await request(`${gw.url}/metrics`)).body.text());
}

function expectOpenAIError(r: Res, status: number, code?: string): void {
  expect(r.status, r.text).toBe(status);
  expect(r.headers['content-type'] ?? '').toContain('application/json');
  const e = r.json.error;
  expect(e, r.text).toBeDefined();
  expect(typeof e?.message).toBe('string');
  expect(typeof e?.type).toBe('string');
  expect(e).toHaveProperty('param');
  expect(e).toHaveProperty('code');
  if (code !== undefined) expect(e?.code, r.text).toBe(code);
}

function tally(xs: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
}

/** `n` requests to route r: each of `names` serves at least 3 (each answer a 200 when `each200`). */
async function expectRotation(
  gw: TestGateway,
  n: number,
  names: readonly [string, string],
  each200 = false,
): Promise<void> {
  const served: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await post(gw, {});
    if (each200) expect(r.status).toBe(200);
    served.push(r.headers['x-router-provider']!);
  }
  const t = tally(served);
  for (const name of names) expect(t[name] ?? 0, JSON.stringify(t)).toBeGreaterThanOrEqual(3);
}

const ROUTED_HEADERS = [
  'x-request-id',
  'x-router-provider',
  'x-router-model',
  'x-router-strategy',
  'x-router-attempts',
  'x-router-trail',
];

/** The §4 headers on a response no upstream served (every candidate open or cooling down): no provider, no model. */
const UNSERVED_HEADERS = ['x-request-id', 'x-router-strategy', 'x-router-attempts', 'x-router-trail'];

/** Each of `names` is a header of `r`. */
function expectHeaders(r: Res, names: readonly string[]): void {
  for (const h of names) expect(r.headers[h], h).toBeDefined();
}

// ───────────────────────────────────────────── §2 strategies ─────────────────────────────────────────────

describe('§2 strategies: scores, reasons, ties', () => {
  it('every strategy scores each candidate in [0,1], the best 1, with a reason carrying a raw figure', async () => {
    const cheap = await sim('cheap');
    const dear = await sim('dear', { latencyMs: 20 });
    const gw = await gateway([
      up(cheap, undefined, { price: { input_per_mtok: 1, output_per_mtok: 2 } }),
      up(dear, undefined, { price: { input_per_mtok: 10, output_per_mtok: 40 } }),
    ]);
    for (let i = 0; i < 6; i++) await post(gw, {}, { 'x-router-strategy': 'round-robin' });
    for (const strategy of [
      'cost',
      'latency',
      'hybrid',
      'round-robin',
      'priority',
      'weighted',
      'least-busy',
    ]) {
      const r = await post(gw, {}, { 'x-router-strategy': strategy }, '/router/explain');
      expect(r.status, r.text).toBe(200);
      const cands = r.json.candidates as Array<{ score: number; reason: string; provider: string }>;
      expect(cands, strategy).toHaveLength(2);
      for (const c of cands) {
        expect(c.score, `${strategy}: ${c.reason}`).toBeGreaterThanOrEqual(0);
        expect(c.score, `${strategy}: ${c.reason}`).toBeLessThanOrEqual(1);
        expect(c.reason, strategy).toMatch(/\d/);
      }
      expect(Math.max(...cands.map((c) => c.score)), `${strategy}: ${r.text}`).toBe(1);
    }
    // cost: the raw figure is money, and the cheap one is first.
    const c = await post(gw, {}, { 'x-router-strategy': 'cost' }, '/router/explain');
    const cands = c.json.candidates as Array<{ score: number; reason: string; provider: string }>;
    expect(cands[0]!.provider).toBe('cheap');
    expect(cands[1]!.score).toBeLessThan(1);
  });

  it('tie_epsilon 1: every candidate ties, so cost rotates between a cheap and a dear upstream', async () => {
    // SPEC: "candidates whose scores differ by at most routing.tie_epsilon tie, and ties are broken by rotation"
    const cheap = await sim('cheap');
    const dear = await sim('dear');
    const ups = [
      up(cheap, undefined, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
      up(dear, undefined, { price: { input_per_mtok: 5, output_per_mtok: 5 } }),
    ];
    const gw = await gateway(ups, { r: { strategy: 'cost', targets: ['cheap/m', 'dear/m'] } }, {
      routing: { tie_epsilon: 1, max_attempts: 3, total_timeout_ms: 5000 },
    } as Record<string, unknown>);
    await expectRotation(gw, 10, ['cheap', 'dear'], true);
  });

  it('tie_epsilon 0: cost never rotates away from the strictly cheaper upstream', async () => {
    const cheap = await sim('cheap');
    const dear = await sim('dear');
    const gw = await gateway(
      [
        up(cheap, undefined, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
        up(dear, undefined, { price: { input_per_mtok: 1.5, output_per_mtok: 1.5 } }),
      ],
      { r: { strategy: 'cost', targets: ['dear/m', 'cheap/m'] } },
      { routing: { tie_epsilon: 0, max_attempts: 3, total_timeout_ms: 5000 } },
    );
    for (let i = 0; i < 6; i++) expect((await post(gw, {})).headers['x-router-provider']).toBe('cheap');
  });

  it('least-busy with nothing in flight: a tie, broken by rotation, not array order', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)], { r: { strategy: 'least-busy', targets: ['a/m', 'b/m'] } });
    await expectRotation(gw, 10, ['a', 'b']);
  });

  it('hybrid over two identical upstreams: ties rotate, not array order', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)], { r: { strategy: 'hybrid', targets: ['a/m', 'b/m'] } }, {
      routing: { tie_epsilon: 0.5, max_attempts: 3, total_timeout_ms: 5000 },
    } as Record<string, unknown>);
    await expectRotation(gw, 12, ['a', 'b']);
  });

  it('x-router-strategy override is what the header, the decision metric and explain name', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway(
      [
        up(a, undefined, { price: { input_per_mtok: 9, output_per_mtok: 9 } }),
        up(b, undefined, { price: { input_per_mtok: 1, output_per_mtok: 1 } }),
      ],
      { r: { strategy: 'priority', targets: ['a/m', 'b/m'] } },
    );
    const r = await post(gw, {}, { 'x-router-strategy': 'cost' });
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-strategy']).toBe('cost');
    const e = await post(gw, {}, { 'x-router-strategy': 'cost' }, '/router/explain');
    expect(e.json.strategy).toBe('cost');
    const s = await metrics(gw);
    expect(
      value(s, 'llm_router_routing_decisions_total', { route: 'r', strategy: 'cost', provider: 'b' }),
    ).toBe(1);
    expect(select(s, 'llm_router_routing_decisions_total', { strategy: 'priority' })).toHaveLength(0);
  });
});

describe('§2 latency: scaled by load (in flight + 1)', () => {
  it('a faster upstream holding three slow streams ranks below an idle slower one, and returns once they end', async () => {
    const a = await sim('a', { latencyMs: 30 });
    const b = await sim('b', { latencyMs: 90 });
    const gw = await gateway([up(a), up(b)], { r: { strategy: 'latency', targets: ['a/m', 'b/m'] } }, {
      routing: { max_attempts: 3, total_timeout_ms: 5000, exploration_share: 0 },
    } as Record<string, unknown>);
    for (let i = 0; i < 4; i++) {
      expect((await post(gw, {}, { 'x-router-provider': 'a' })).status).toBe(200);
      expect((await post(gw, {}, { 'x-router-provider': 'b' })).status).toBe(200);
    }
    const first = async () => {
      const e = await post(gw, {}, {}, '/router/explain');
      return (e.json.candidates as Array<{ provider: string; reason: string }>)[0]!;
    };
    expect((await first()).provider).toBe('a');
    // three streams held open on a (slow chunks after the first byte: ~2 s, so a loaded machine still asks
    // while they run)
    a.set({ chunkDelayMs: 400, completionTokens: 6 });
    const held = [0, 1, 2].map(() => openStream(gw, { 'x-router-provider': 'a' }));
    const responses = await Promise.all(held);
    const busy = await first();
    const bodies = await Promise.all(responses.map((r) => r.body.text()));
    for (const t of bodies) expect(t).toContain('[DONE]');
    expect(busy.provider, busy.reason).toBe('b');
  });
});

// ───────────────────────────────────────────── §2 failover ─────────────────────────────────────────────

describe('§2 failover: what fails over, how far', () => {
  /** a and b answer 500, c serves; max_attempts 2, a breaker that opens on one failure. */
  async function failingAThenBThenC(): Promise<{ a: Simulator; b: Simulator; gw: TestGateway }> {
    const a = await sim('a', { status: 500 });
    const b = await sim('b', { status: 500 });
    const c = await sim('c');
    const gw = await gateway([up(a), up(b), up(c)], undefined, {
      routing: { max_attempts: 2, total_timeout_ms: 5000 },
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    return { a, b, gw };
  }
  it('at most routing.max_attempts distinct upstreams are tried', async () => {
    const sims = [
      await sim('a', { status: 500 }),
      await sim('b', { status: 500 }),
      await sim('c'),
      await sim('d'),
    ];
    const gw = await gateway(
      sims.map((s) => up(s)),
      undefined,
      {
        routing: { max_attempts: 2, total_timeout_ms: 5000 },
      },
    );
    const r = await post(gw, {});
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(sims.map((s) => s.requests.length)).toEqual([1, 1, 0, 0]);
    expect(r.json.error?.message).toContain('a/m');
    expect(r.json.error?.message).toContain('b/m');
  });

  it('an upstream skipped because its breaker is open is not an attempt: max_attempts counts upstreams tried', async () => {
    // SPEC: "at most routing.max_attempts distinct upstreams" are tried; x-router-attempts is "how many upstreams were tried"
    const { a, b, gw } = await failingAThenBThenC();
    await post(gw, {}, { 'x-router-provider': 'a' }); // opens a
    expect((await post(gw, {})).headers['x-router-provider']).toBe('c'); // b fails (opens), c serves
    b.set({ status: 503 });
    a.set({ status: undefined });
    const r = await post(gw, {});
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('c');
    expect(r.headers['x-router-attempts']).toBe('1');
  });

  it('max_attempts 2 with the first candidate open: the next two are tried', async () => {
    const { a, gw } = await failingAThenBThenC();
    await post(gw, {}, { 'x-router-provider': 'a' }); // opens a only
    expect(a.requests).toHaveLength(1);
    const r = await post(gw, {});
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('c');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('b/m=http_500');
  });

  it('an upstream that failed in this request is never retried by it, even with attempts to spare', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b', { status: 503 });
    const gw = await gateway([up(a), up(b)], undefined, {
      routing: { max_attempts: 6, total_timeout_ms: 5000 },
    });
    const r = await post(gw, {});
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect([a.requests.length, b.requests.length]).toEqual([1, 1]);
  });

  for (const status of [408, 401, 403, 500, 502, 503, 504, 429]) {
    it(`a provider ${status} fails over to the next upstream`, async () => {
      const a = await sim('a', { status });
      const b = await sim('b');
      const gw = await gateway([up(a), up(b)]);
      const r = await post(gw, {});
      expect(r.status, r.text).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-attempts']).toBe('2');
      expect(r.headers['x-router-trail']).toMatch(/^a\/m=/);
    });
  }

  it('a provider 401 is logged loudly (error level), naming the upstream', async () => {
    // SPEC: "401/403 from a provider (our key is wrong there: log it loudly)"
    const a = await sim('a', { status: 401 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    expect((await post(gw, {})).status).toBe(200);
    const loud = gw.logs.filter((l) => Number(l.level) >= 50 && JSON.stringify(l).includes('a/m'));
    expect(loud.length, JSON.stringify(gw.logs.filter((l) => Number(l.level) >= 40))).toBeGreaterThan(0);
  });

  for (const status of [400, 404, 413, 422]) {
    it(`a provider ${status} is relayed (OpenAI shape, its message kept) and not failed over`, async () => {
      const a = await sim('a', { status, errorMessage: `upstream says no (${status})` });
      const b = await sim('b');
      const gw = await gateway([up(a), up(b)]);
      const r = await post(gw, {});
      expectOpenAIError(r, status);
      expect(r.json.error?.message).toContain(`upstream says no (${status})`);
      expect(b.requests).toHaveLength(0);
      expect(r.headers['x-router-provider']).toBe('a');
      expect(r.headers['x-request-id']).toBeTruthy();
    });
  }

  it('a provider 400 that is not OpenAI-shaped still reaches the client OpenAI-shaped, its message kept', async () => {
    const a = await mock((_b, _n, res) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end('bad thing: temperature way too high');
    });
    const b = await sim('b');
    const gw = await gateway([up(a, 'a'), up(b)]);
    const r = await post(gw, {});
    expectOpenAIError(r, 400);
    expect(r.json.error?.message).toContain('temperature way too high');
    expect(b.requests).toHaveLength(0);
  });

  it('a non-streaming 200 whose body is an error object is failed over (README)', async () => {
    const a = await mock((_b, _n, res) =>
      sendJson(res, 200, { error: { message: 'overloaded', type: 'server_error', param: null, code: null } }),
    );
    const b = await sim('b');
    const gw = await gateway([up(a, 'a'), up(b)]);
    const r = await post(gw, {});
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-trail']).toMatch(/^a\/m=/);
  });

  it('the request-wide routing.total_timeout_ms bounds the whole request (504 timeout)', async () => {
    const a = await sim('a', { hang: true });
    const b = await sim('b', { hang: true });
    const gw = await gateway([up(a), up(b)], undefined, {
      routing: { max_attempts: 3, total_timeout_ms: 400 },
    });
    const t0 = performance.now();
    const r = await post(gw, {});
    expectOpenAIError(r, 504, 'timeout');
    expect(performance.now() - t0).toBeLessThan(3000);
    expectHeaders(r, ROUTED_HEADERS);
  });
});

// ───────────────────────────────────────────── §2 streams ─────────────────────────────────────────────

function sse(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
}

/** Upstream `a` before a healthy sim `b` on route r, asked for a stream: a 200 that `by` served. */
async function streamServedBy(
  a: Simulator | RecordingMock,
  by: 'a' | 'b',
  extra: Record<string, unknown> = {},
): Promise<{ r: Res; b: Simulator }> {
  const b = await sim('b');
  const gw = await gateway([up(a, 'a'), up(b)]);
  const r = await post(gw, { stream: true, ...extra });
  expect(r.status, r.text).toBe(200);
  expect(r.headers['x-router-provider']).toBe(by);
  return { r, b };
}

describe('§2 streams: commit at the first content delta', () => {
  it('a tool-call delta commits: a later cut ends the stream with an error event, b is not asked', async () => {
    const a = await mock((body, _n, res) => {
      sse(res);
      res.write(chunkFrame(body.model, { role: 'assistant', content: null }));
      res.write(
        chunkFrame(body.model, {
          tool_calls: [
            { index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } },
          ],
        }),
      );
      setTimeout(() => res.destroy(), 30);
    });
    const { r, b } = await streamServedBy(a, 'a');
    expect(r.text).toContain('get_weather');
    expect(r.text).not.toContain('[DONE]');
    const last = JSON.parse(dataEvents(r.text).at(-1)!) as { error?: Record<string, unknown> };
    expect(last.error, r.text).toBeDefined();
    expect(b.requests).toHaveLength(0);
  });

  it('a refusal delta commits too', async () => {
    const a = await mock((body, _n, res) => {
      sse(res);
      res.write(chunkFrame(body.model, { role: 'assistant', content: null }));
      res.write(chunkFrame(body.model, { refusal: "I can't help with that" }));
      setTimeout(() => res.destroy(), 30);
    });
    const { r, b } = await streamServedBy(a, 'a');
    expect(r.text).toContain("I can't help with that");
    expect(r.text).not.toContain('[DONE]');
    expect(b.requests).toHaveLength(0);
  });

  it('a reasoning_content delta commits (README), so a later cut is not failed over', async () => {
    const a = await mock((body, _n, res) => {
      sse(res);
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
      res.write(chunkFrame(body.model, { reasoning_content: 'Let me think' }));
      setTimeout(() => res.destroy(), 30);
    });
    const { r, b } = await streamServedBy(a, 'a');
    expect(r.text).toContain('Let me think');
    expect(r.text).not.toContain('[DONE]');
    expect(b.requests).toHaveLength(0);
  });

  it('an Anthropic tool_use block commits too: a cut after it is terminated, not failed over', async () => {
    const a = await sim('a', { kind: 'anthropic', toolCall: true, dropAfterChunks: 1, chunkDelayMs: 5 });
    const tools = [
      { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } },
    ];
    const { r, b } = await streamServedBy(a, 'a', { tools });
    expect(r.text).toContain('tool_calls');
    expect(r.text).not.toContain('[DONE]');
    expect(b.requests).toHaveLength(0);
  });

  it('a stream that failed over carries the trail and attempts in its headers', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, { stream: true });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-trail']).toBe('a/m=http_500');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-provider']).toBe('b');
  });

  it('the preamble (role chunk) is held back: status and headers only come once content is sent', async () => {
    let contentSentAt = Number.POSITIVE_INFINITY;
    const a = await mock((body, _n, res) => {
      sse(res);
      res.write(chunkFrame(body.model, { role: 'assistant', content: '' }));
      res.write(': ping\n\n');
      setTimeout(() => {
        contentSentAt = performance.now();
        res.write(chunkFrame(body.model, { content: 'late hello' }));
        res.end(`${chunkFrame(body.model, {}, 'stop')}data: [DONE]\n\n`);
      }, 250);
    });
    const gw = await gateway([up(a, 'a')]);
    const res = await openStream(gw);
    const headersAt = performance.now();
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(headersAt).toBeGreaterThanOrEqual(contentSentAt);
    expect(contentOf(text)).toBe('late hello');
    // the role chunk is relayed once, in front of the content
    expect(dataEvents(text).filter((d) => d.includes('"role"'))).toHaveLength(1);
  });

  it('an Anthropic upstream whose 200 carries message_start, a ping, then an error event is failed over invisibly', async () => {
    const a = await sim('a', { kind: 'anthropic', errorEventAfterChunks: 0 });
    const { r } = await streamServedBy(a, 'b');
    expect(r.text).not.toContain('"error"');
    expect(r.text).toContain('[DONE]');
    expect(contentOf(r.text).length).toBeGreaterThan(0);
  });

  // SPEC §2: "an upstream that sends a 200 and then an error event, or closes before any content, is failed over like any 5xx"
  it('a 200 whose stream closes with [DONE] before any content fails over like a 5xx', async () => {
    const a = await mock((body, _n, res) => {
      sse(res);
      res.end(`${chunkFrame(body.model, { role: 'assistant', content: '' })}data: [DONE]\n\n`);
    });
    const { r } = await streamServedBy(a, 'b');
    expect(contentOf(r.text).length).toBeGreaterThan(0);
  });

  it('a 200 whose stream ends cleanly (no [DONE]) after only the role chunk fails over like a 5xx', async () => {
    const a = await mock((body, _n, res) => {
      sse(res);
      res.end(chunkFrame(body.model, { role: 'assistant', content: '' }));
    });
    const { r } = await streamServedBy(a, 'b');
    expect(contentOf(r.text).length).toBeGreaterThan(0);
  });

  it('a stream that fails on every upstream before any content: a JSON 502, not a 200 stream', async () => {
    const a = await sim('a', { errorEventAfterChunks: 0 });
    const b = await sim('b', { dropAfterChunks: 0 });
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, { stream: true });
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-attempts']).toBe('2');
    const s = await metrics(gw);
    expect(
      select(s, 'llm_router_request_duration_seconds_count', { route: 'r', stream: 'true' }).reduce(
        (n, x) => n + x.value,
        0,
      ),
    ).toBe(1);
  });

  it('terminate: an OpenAI-shaped error event, no [DONE], a clean close, counted with policy terminate', async () => {
    const a = await sim('a', { dropAfterChunks: 2, chunkDelayMs: 5 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, { stream: true }); // reading the whole body resolves: a clean close
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('[DONE]');
    const last = JSON.parse(dataEvents(r.text).at(-1)!) as {
      error?: { message: unknown; type: unknown; param: unknown; code: unknown };
    };
    expect(typeof last.error?.message).toBe('string');
    expect(typeof last.error?.type).toBe('string');
    expect(last.error).toHaveProperty('param');
    expect(last.error).toHaveProperty('code');
    expect(b.requests).toHaveLength(0);
    const s = await metrics(gw);
    expect(
      value(s, 'llm_router_stream_failures_total', { provider: 'a', model: 'm', policy: 'terminate' }),
    ).toBe(1);
  });

  it('on_stream_failure: continue is rejected at load time with a message that it is not built yet', () => {
    const cfg = {
      providers: [simProvider('a', 'http://127.0.0.1:9', ['m'])],
      routes: { r: { targets: ['a/m'], on_stream_failure: 'continue' } },
    };
    let msg = '';
    try {
      parseConfigText(JSON.stringify(cfg), {});
    } catch (err) {
      msg = String((err as Error).message);
    }
    expect(msg).toMatch(/continue/);
    expect(msg).toMatch(/not yet|planned|not (been )?(built|implemented|supported)/i);
  });
});

// ───────────────────────────────────────────── §2 breaker ─────────────────────────────────────────────

describe('§2 breaker', () => {
  it('failure_threshold consecutive failures open it; the trip cause is in /router/status; state gauge 2', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 3, open_ms: 1000, max_open_ms: 4000 },
    });
    for (let i = 0; i < 2; i++) await post(gw, {});
    let st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{ id: string; breaker: { state: string; trip_cause: string | null } }>;
    };
    expect(st.upstreams.find((u) => u.id === 'a/m')!.breaker.state).toBe('closed');
    await post(gw, {});
    st = (await (await request(`${gw.url}/router/status`)).body.json()) as typeof st;
    const br = st.upstreams.find((u) => u.id === 'a/m')!.breaker;
    expect(br.state).toBe('open');
    expect(br.trip_cause ?? '').toMatch(/error/);
    expect(value(await metrics(gw), 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(2);
    // a 4th request: a is skipped, no attempt
    const r = await post(gw, {});
    expect(r.headers['x-router-attempts']).toBe('1');
    expect(a.requests).toHaveLength(3);
    // after open_ms: half-open (1); a failed probe re-opens it for twice as long
    offset += 1001;
    expect(value(await metrics(gw), 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(1);
    await post(gw, {});
    expect(a.requests).toHaveLength(4);
    const br2 = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{ id: string; breaker: { state: string; open_ms: number } }>;
    };
    const b2 = br2.upstreams.find((u) => u.id === 'a/m')!.breaker;
    expect(b2.state).toBe('open');
    expect(b2.open_ms).toBe(2000);
  });

  it('a Retry-After longer than max_open_ms still opens it for exactly that long', async () => {
    // SPEC: "a 429 with Retry-After opens it for exactly that long"
    const a = await mock((_b, _n, res) =>
      sendJson(
        res,
        429,
        { error: { message: 'slow', type: 'rate_limit', param: null, code: null } },
        {
          'retry-after': '8',
        },
      ),
    );
    const b = await sim('b');
    const gw = await gateway([up(a, 'a'), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 5, open_ms: 500, max_open_ms: 2000 },
    });
    expect((await post(gw, {})).headers['x-router-provider']).toBe('b');
    offset += 3000; // past max_open_ms, short of Retry-After
    await post(gw, {});
    expect(a.bodies).toHaveLength(1);
    offset += 5100;
    await post(gw, {});
    expect(a.bodies).toHaveLength(2);
  });

  it('a half-open probe answered 429 + Retry-After re-opens it for that long without doubling open_ms', async () => {
    let limited = false;
    const a = await mock((_b, _n, res) => {
      if (limited)
        sendJson(
          res,
          429,
          { error: { message: 'slow', type: 'rate_limit', param: null, code: null } },
          {
            'retry-after': '3',
          },
        );
      else sendJson(res, 500, { error: { message: 'boom', type: 'server_error', param: null, code: null } });
    });
    const b = await sim('b');
    const gw = await gateway([up(a, 'a'), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 1, open_ms: 1000, max_open_ms: 8000 },
    });
    await post(gw, {});
    offset += 1001;
    limited = true;
    await post(gw, {}); // the probe: 429 Retry-After 3
    expect(a.bodies).toHaveLength(2);
    const st = (await (await request(`${gw.url}/router/status`)).body.json()) as {
      upstreams: Array<{
        id: string;
        breaker: { state: string; open_ms: number; ms_until_half_open: number; trip_cause: string };
      }>;
    };
    const br = st.upstreams.find((u) => u.id === 'a/m')!.breaker;
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('rate_limit');
    expect(br.ms_until_half_open).toBeGreaterThan(2000);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(3000);
    expect(br.open_ms).toBe(1000);
  });

  it('success_threshold consecutive successes in half-open close it (not fewer)', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 1, open_ms: 500, success_threshold: 3, half_open_probes: 1 },
    });
    await post(gw, {});
    a.set({ status: undefined });
    offset += 501;
    const state = async () =>
      value(await metrics(gw), 'llm_router_circuit_state', { provider: 'a', model: 'm' });
    expect((await post(gw, {})).headers['x-router-provider']).toBe('a');
    expect(await state()).toBe(1);
    expect((await post(gw, {})).headers['x-router-provider']).toBe('a');
    expect(await state()).toBe(1);
    expect((await post(gw, {})).headers['x-router-provider']).toBe('a');
    expect(await state()).toBe(0);
  });
});

describe('§2/§3 defaults', () => {
  it('defaults: hybrid strategy, max_attempts 3, failure_threshold 5, open_ms 30 000', async () => {
    const sims = [
      await sim('a', { status: 500 }),
      await sim('b', { status: 500 }),
      await sim('c', { status: 500 }),
      await sim('d', { status: 500 }),
    ];
    offset = 0;
    const gw = track(
      await startGateway(
        {
          providers: sims.map((x) => simProvider(x.options.name, x.url, ['m'], { timeouts: RELAXED })),
          routes: { r: { targets: sims.map((x) => `${x.options.name}/m`) } },
        },
        { now },
      ),
    );
    const r = await post(gw, {});
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-strategy']).toBe('hybrid');
    expect(r.headers['x-router-attempts']).toBe('3');
    // a alone, pinned: four failures leave it closed, the fifth opens it for 30 s
    for (let i = 0; i < 4; i++) await post(gw, { model: 'a/m' });
    const st = async () =>
      (
        (await (await request(`${gw.url}/router/status`)).body.json()) as {
          upstreams: Array<{ id: string; breaker: { state: string; ms_until_half_open: number } }>;
        }
      ).upstreams.find((u) => u.id === 'a/m')!.breaker;
    const before = sims[0]!.requests.length;
    expect(before).toBeGreaterThanOrEqual(4);
    if (before === 4) await post(gw, { model: 'a/m' });
    const br = await st();
    expect(br.state).toBe('open');
    expect(br.ms_until_half_open).toBeGreaterThan(29_000);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(30_000);
  });
});

// ───────────────────────────────────────────── §2 tiers ─────────────────────────────────────────────

describe('§2 tiers and the LLM router', () => {
  function tierProviders(list: Simulator[]): Record<string, unknown>[] {
    return list.map((s) => simProvider(s.options.name, s.url, ['m'], { timeouts: RELAXED }));
  }

  async function tiered(
    rules: unknown[],
    routerReply = '{"tier": "deep", "reason": "hard"}',
    routerOpts: Partial<SimOptions> = {},
    router: Record<string, unknown> = {},
  ) {
    const rt = await sim('rt', { reply: routerReply, completionTokens: 3, ...routerOpts });
    const bal = await sim('bal');
    const deep = await sim('deep');
    offset = 0;
    const gw = track(
      await startGateway(
        {
          providers: tierProviders([rt, bal, deep]),
          routes: {
            auto: {
              strategy: 'priority',
              tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
              rules,
              default_tier: 'balanced',
              router: { tier: 'fast', timeout_ms: 400, cache_ttl_s: 2, ...router },
            },
          },
          circuit_breaker: { failure_threshold: 50 },
        },
        { now },
      ),
    );
    return { rt, bal, deep, gw };
  }

  const ask = (gw: TestGateway, content: string, extra: Record<string, unknown> = {}, h = {}) =>
    post(gw, { model: 'auto', messages: [{ role: 'user', content }], ...extra }, h);

  /** llm_router_llm_router_requests_total for tier balanced (default_tier) with `outcome`. */
  const routerOutcomes = async (gw: TestGateway, outcome: string): Promise<number | undefined> =>
    value(await metrics(gw), 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome });

  it('config is rejected at load time if router.tier has no upstreams', () => {
    const base = (tiers: Record<string, string[]>, routerTier: string) => ({
      providers: [simProvider('a', 'http://127.0.0.1:9', ['m'])],
      routes: {
        auto: { tiers, default_tier: 'fast', router: { tier: routerTier } },
      },
    });
    expect(() => parseConfigText(JSON.stringify(base({ fast: ['a/m'], deep: [] }, 'deep')), {})).toThrow(
      /router\.tier/,
    );
    expect(() => parseConfigText(JSON.stringify(base({ fast: ['a/m'] }, 'deep')), {})).toThrow(
      /router\.tier/,
    );
  });

  it('matching rules of different priority: the lower priority wins and the router is not asked', async () => {
    const { rt, deep, gw } = await tiered([
      { name: 'short', priority: 1, if: { max_prompt_tokens: 400 }, tier: 'fast' },
      { name: 'proof', priority: 0, if: { last_user_message: 'prove' }, tier: 'deep' },
    ]);
    const r = await ask(gw, 'please prove it');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(deep.requests).toHaveLength(1);
    expect(rt.requests).toHaveLength(0);
  });

  it('matching rules of equal priority that disagree tie: the router decides', async () => {
    const { rt, deep, gw } = await tiered([
      { name: 'short', if: { max_prompt_tokens: 400 }, tier: 'fast' },
      { name: 'proof', if: { last_user_message: 'prove' }, tier: 'balanced' },
    ]);
    const r = await ask(gw, 'please prove it');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(rt.requests).toHaveLength(1);
    expect(deep.requests).toHaveLength(1);
  });

  it('matching rules of equal priority that agree are no tie: the router is not asked', async () => {
    const { rt, bal, gw } = await tiered([
      { name: 'short', if: { max_prompt_tokens: 400 }, tier: 'balanced' },
      { name: 'proof', if: { last_user_message: 'prove' }, tier: 'balanced' },
    ]);
    const r = await ask(gw, 'please prove it');
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(rt.requests).toHaveLength(0);
    expect(bal.requests).toHaveLength(1);
  });

  it('rules on tools, images, prompt tokens and a header pick their tier', async () => {
    const { rt, gw } = await tiered([
      { name: 'tools', if: { tools: true }, tier: 'deep', priority: 3 },
      { name: 'images', if: { images: true }, tier: 'balanced', priority: 2 },
      { name: 'big', if: { min_prompt_tokens: 2000 }, tier: 'deep', priority: 1 },
      { name: 'hdr', if: { header: 'x-team=gold' }, tier: 'balanced', priority: 0 },
    ]);
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    expect((await ask(gw, 'x', { tools })).headers['x-router-tier']).toBe('deep');
    const img = [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'what is this' },
          { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } },
        ],
      },
    ];
    expect((await post(gw, { model: 'auto', messages: img })).headers['x-router-tier']).toBe('balanced');
    expect((await ask(gw, 'word '.repeat(4000))).headers['x-router-tier']).toBe('deep');
    expect((await ask(gw, 'x', { tools }, { 'x-team': 'gold' })).headers['x-router-tier']).toBe('balanced');
    expect(rt.requests).toHaveLength(0);
  });

  it('a router whose every upstream errors: default_tier serves; counted tier=default, outcome=error', async () => {
    const { bal, gw } = await tiered([], undefined, { status: 500 });
    const r = await ask(gw, 'something ambiguous');
    expect(r.status, r.text).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    const s = await metrics(gw);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'balanced', outcome: 'error' })).toBe(1);
  });

  it('an unparsable router answer: default_tier; counted outcome=unparsable', async () => {
    const { bal, gw } = await tiered([], 'I think deep maybe');
    const r = await ask(gw, 'something ambiguous');
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    expect(await routerOutcomes(gw, 'unparsable')).toBe(1);
  });

  it('the router cache holds for cache_ttl_s, keyed by prompt, and expires after it', async () => {
    const { rt, gw } = await tiered([]);
    await ask(gw, 'question one');
    await ask(gw, 'question one');
    expect(rt.requests).toHaveLength(1);
    await ask(gw, 'question two');
    expect(rt.requests).toHaveLength(2);
    offset += 2500; // past cache_ttl_s: 2
    const r = await ask(gw, 'question one');
    expect(r.headers['x-router-tier']).toBe('deep');
    expect(rt.requests).toHaveLength(3);
    const s = await metrics(gw);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'cached' })).toBe(1);
    expect(value(s, 'llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(3);
    const dur = select(s, 'llm_router_llm_router_duration_seconds_count');
    expect(dur.map((d) => d.labels)).toEqual([{ tier: 'fast' }]);
    expect(dur[0]!.value).toBe(3);
  });

  it('/router/explain on a tie names the tier without calling any upstream, the LLM router included', async () => {
    const { rt, bal, deep, gw } = await tiered([]);
    const r = await post(
      gw,
      { model: 'auto', messages: [{ role: 'user', content: 'tie me' }] },
      {},
      '/router/explain',
    );
    expect(r.status, r.text).toBe(200);
    expect(r.json).toHaveProperty('tier');
    expect(rt.requests.length + bal.requests.length + deep.requests.length).toBe(0);
  });

  it("the router's call goes through its upstream's breaker: once open, it is skipped without a call", async () => {
    const rt = await sim('rt', { status: 500 });
    const bal = await sim('bal');
    const deep = await sim('deep');
    const gw = track(
      await startGateway(
        {
          providers: tierProviders([rt, bal, deep]),
          routes: {
            auto: {
              strategy: 'priority',
              tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
              default_tier: 'balanced',
              router: { tier: 'fast', timeout_ms: 1000, cache_ttl_s: 60 },
            },
          },
          circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
        },
        { now },
      ),
    );
    expect((await ask(gw, 'first ambiguous question')).headers['x-router-tier']).toBe('balanced');
    expect((await ask(gw, 'second ambiguous question')).headers['x-router-tier']).toBe('balanced');
    expect(rt.requests).toHaveLength(1);
  });

  it('a tie among the top-priority matching rules goes to the router even when a lower-priority rule matches too', async () => {
    const { rt, deep, gw } = await tiered([
      { name: 'a', priority: 0, if: { max_prompt_tokens: 400 }, tier: 'fast' },
      { name: 'b', priority: 0, if: { last_user_message: 'prove' }, tier: 'balanced' },
      { name: 'c', priority: 5, if: { last_user_message: 'prove' }, tier: 'deep' },
    ]);
    const r = await ask(gw, 'prove this');
    expect(r.headers['x-router-tier']).toBe('deep'); // the router's answer
    expect(rt.requests).toHaveLength(1);
    expect(deep.requests).toHaveLength(1);
  });

  it('a router answer naming a tier the route lacks is unparsable: default_tier', async () => {
    const { bal, gw } = await tiered([], '{"tier": "huge", "reason": "x"}');
    const r = await ask(gw, 'ambiguous');
    expect(r.status).toBe(200);
    expect(r.headers['x-router-tier']).toBe('balanced');
    expect(bal.requests).toHaveLength(1);
    expect(await routerOutcomes(gw, 'unparsable')).toBe(1);
  });

  it('x-router-tier is on a tiered error response too', async () => {
    const { deep, gw } = await tiered([{ name: 'all', if: { max_prompt_tokens: 100000 }, tier: 'deep' }]);
    deep.set({ status: 500 });
    const r = await ask(gw, 'x');
    expectOpenAIError(r, 502, 'upstream_error');
    expect(r.headers['x-router-tier']).toBe('deep');
  });
});

// ───────────────────────────────────────────── §4 HTTP surface ─────────────────────────────────────────────

describe('§4 response headers on every routed response, errors included', () => {
  it('a success: all x-router-* headers; x-request-id generated and distinct, or echoed', async () => {
    const a = await sim('a');
    const gw = await gateway([up(a)]);
    const r1 = await post(gw, {});
    const r2 = await post(gw, {});
    expectHeaders(r1, ROUTED_HEADERS);
    expect(r1.headers['x-request-id']).not.toBe('');
    expect(r1.headers['x-request-id']).not.toBe(r2.headers['x-request-id']);
    expect(r1.headers['x-router-model']).toBe('m');
    expect(r1.headers['x-router-attempts']).toBe('1');
    const r3 = await post(gw, {}, { 'x-request-id': 'mine-123' });
    expect(r3.headers['x-request-id']).toBe('mine-123');
    const r4 = await post(gw, { stream: true }, { 'x-request-id': 'mine-456' });
    expect(r4.headers['x-request-id']).toBe('mine-456');
    expectHeaders(r4, ROUTED_HEADERS);
  });

  it('502 upstream_error: the headers are there, attempts and trail name each failure', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b', { status: 502 });
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, {}, { 'x-request-id': 'fail-1' });
    expectOpenAIError(r, 502, 'upstream_error');
    expectHeaders(r, ROUTED_HEADERS);
    expect(r.headers['x-request-id']).toBe('fail-1');
    expect(r.headers['x-router-attempts']).toBe('2');
    expect(r.headers['x-router-trail']).toBe('a/m=http_500,b/m=http_502');
  });

  // SPEC §4: "Response headers on every routed response: x-request-id ..., x-router-strategy, x-router-attempts ..., x-router-trail"
  it('503 no_available_upstream when every breaker is open, with the routed headers', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b', { status: 500 });
    const gw = await gateway([up(a), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    await post(gw, {});
    const r = await post(gw, {});
    expectOpenAIError(r, 503, 'no_available_upstream');
    expectHeaders(r, UNSERVED_HEADERS);
    expect(r.headers['x-router-attempts']).toBe('0');
    expect(a.requests.length + b.requests.length).toBe(2);
    const ready = await request(`${gw.url}/readyz`);
    await ready.body.dump();
    expect(ready.statusCode).toBe(503);
  });

  it('429 with Retry-After when every candidate is rate limited, with the routed headers', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 2 });
    const b = await sim('b', { status: 429, retryAfterS: 3 });
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, {});
    expectOpenAIError(r, 429);
    expect(r.headers['retry-after']).toBeDefined();
    expectHeaders(r, ROUTED_HEADERS);
    expect(r.headers['x-router-attempts']).toBe('2');
  });

  it('429 refused without calls while every candidate is cooling down: Retry-After and the routed headers', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 20 });
    const b = await sim('b', { status: 429, retryAfterS: 30 });
    const gw = await gateway([up(a), up(b)]);
    expect((await post(gw, {})).status).toBe(429);
    const r = await post(gw, {}, { 'x-request-id': 'rl-2' });
    expectOpenAIError(r, 429);
    expect(a.requests.length + b.requests.length).toBe(2); // no call this time
    expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
    // SPEC §4: "Response headers on every routed response: x-request-id ..., x-router-strategy, x-router-attempts, x-router-trail"
    expectHeaders(r, UNSERVED_HEADERS);
    expect(r.headers['x-request-id']).toBe('rl-2');
  });

  // SPEC §4: "Response headers on every routed response" (an embeddings route is routed: §4 table)
  it('embeddings are routed responses too: headers on success and on 503', async () => {
    const a = await sim('a', { status: 500 });
    const gw = track(
      await startGateway(
        {
          providers: [simProvider('a', a.url, [{ name: 'e', capabilities: ['embeddings'] }])],
          routes: { emb: { targets: ['a/e'] } },
          circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
        },
        { now },
      ),
    );
    const first = await post(gw, { model: 'emb', input: 'x', messages: undefined }, {}, '/v1/embeddings');
    expectOpenAIError(first, 502, 'upstream_error');
    expectHeaders(first, ROUTED_HEADERS);
    const r = await post(gw, { model: 'emb', input: 'x', messages: undefined }, {}, '/v1/embeddings');
    expectOpenAIError(r, 503, 'no_available_upstream');
    expectHeaders(r, UNSERVED_HEADERS);
  });

  it('a stream request whose every candidate answers 429: a JSON 429 with Retry-After, not an SSE 200', async () => {
    const a = await sim('a', { status: 429, retryAfterS: 4 });
    const b = await sim('b', { status: 429, retryAfterS: 6 });
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, { stream: true });
    expectOpenAIError(r, 429);
    expect(r.headers['retry-after']).toBe('4');
  });

  it('a provider with an empty api_key is disabled: readyz is 503 when it was the only one, and it is never called', async () => {
    // SPEC: "A provider whose api_key resolves empty is disabled with one warning line, not a crash"; readiness = "at least one upstream not open"
    const a = await sim('a');
    const gw = track(
      await startGateway(
        {
          providers: [simProvider('a', a.url, ['m'], { api_key: '${EMPTY_KEY}' })],
          routes: { r: { targets: ['a/m'] } },
        },
        { env: { EMPTY_KEY: '' } },
      ),
    );
    const warn = gw.logs.filter((l) => Number(l.level) === 40 && JSON.stringify(l).includes('a'));
    expect(warn.length).toBeGreaterThanOrEqual(1);
    const r = await post(gw, {});
    expect(r.json.error, r.text).toBeDefined();
    expect(a.requests).toHaveLength(0);
    const ready = await request(`${gw.url}/readyz`);
    expect(ready.statusCode).toBe(503);
  });

  it('provider/model addresses one upstream: served by it, and its failure is not failed over', async () => {
    const a = await sim('a');
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    const r = await post(gw, { model: 'b/m' });
    expect(r.status).toBe(200);
    expect(r.headers['x-router-provider']).toBe('b');
    expect(r.headers['x-router-model']).toBe('m');
    b.set({ status: 500 });
    const f = await post(gw, { model: 'b/m' });
    expectOpenAIError(f, 502, 'upstream_error');
    expect(a.requests).toHaveLength(0);
  });

  it('error types: 400 invalid_request_error, 401 authentication_error, 404 model_not_found', async () => {
    const a = await sim('a');
    const gw = track(
      await startGateway({
        server: { api_keys: ['sekret'] },
        providers: [simProvider('a', a.url, ['m'])],
        routes: { r: { targets: ['a/m'] } },
      }),
    );
    const auth = { authorization: 'Bearer sekret' };
    const unauth = await post(gw, {}, {});
    expectOpenAIError(unauth, 401);
    expect(unauth.json.error?.type).toBe('authentication_error');
    const bad = await post(gw, { messages: 'nope' }, auth);
    expectOpenAIError(bad, 400);
    expect(bad.json.error?.type).toBe('invalid_request_error');
    expect(bad.json.error?.param).toBe('messages');
    const nf = await post(gw, { model: 'nope' }, auth);
    expectOpenAIError(nf, 404, 'model_not_found');
    const badStrategy = await post(gw, {}, { ...auth, 'x-router-strategy': 'best' });
    expectOpenAIError(badStrategy, 400);
    expect(badStrategy.json.error?.param).toBe('x-router-strategy');
    expect(a.requests).toHaveLength(0);
  });

  it('an unknown provider/model is a 404 model_not_found, calling nothing', async () => {
    const a = await sim('a');
    const gw = await gateway([up(a)]);
    for (const model of ['a/zzz', 'zzz/m', 'a/'])
      expectOpenAIError(await post(gw, { model }), 404, 'model_not_found');
    expect(a.requests).toHaveLength(0);
  });

  it('readyz: 200 while at least one upstream is not open, 503 once every one is', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)], undefined, {
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    await post(gw, {});
    let r = await request(`${gw.url}/readyz`);
    await r.body.dump();
    expect(r.statusCode).toBe(200);
    b.set({ status: 500 });
    await post(gw, {});
    r = await request(`${gw.url}/readyz`);
    await r.body.dump();
    expect(r.statusCode).toBe(503);
    const hz = await request(`${gw.url}/healthz`);
    await hz.body.dump();
    expect(hz.statusCode).toBe(200);
  });
});

describe('§4 other paths', () => {
  /** `method` `path` with a JSON content type (and `body`), read as a {@link Res}. */
  async function send(gw: TestGateway, method: 'GET' | 'POST', path: string, body?: string): Promise<Res> {
    const res = await request(`${gw.url}${path}`, {
      method,
      headers: { 'content-type': 'application/json' },
      body,
    });
    const text = await res.body.text();
    let json: Res['json'] = {};
    try {
      json = JSON.parse(text) as Res['json'];
    } catch {
      /* not JSON */
    }
    return { status: res.statusCode, headers: res.headers as Record<string, string>, text, json };
  }

  it('any other /v1/* path without server.passthrough: a 404, OpenAI-shaped', async () => {
    const a = await sim('a');
    const gw = await gateway([up(a)]);
    for (const [method, path] of [
      ['GET', '/v1/files'],
      ['POST', '/v1/audio/speech'],
      ['POST', '/v1/responses'],
    ] as const) {
      expectOpenAIError(await send(gw, method, path, method === 'POST' ? '{}' : undefined), 404);
    }
    expect(a.requests).toHaveLength(0);
  });

  it('errors are always OpenAI-shaped: an unknown path, a wrong method, a bad explain body', async () => {
    const a = await sim('a');
    const gw = await gateway([up(a)]);
    const get = (method: 'GET' | 'POST', path: string, body?: string) => send(gw, method, path, body);
    const unknown = await get('GET', '/nope');
    expectOpenAIError(unknown, 404);
    const wrongMethod = await get('GET', '/v1/chat/completions');
    expect(wrongMethod.status).toBeGreaterThanOrEqual(400);
    expectOpenAIError(wrongMethod, wrongMethod.status);
    const badExplain = await get('POST', '/router/explain', '{"model": 5}');
    expectOpenAIError(badExplain, 400);
  });

  it('a route mixing embedding and chat models is a config error', () => {
    const cfg = {
      providers: [
        simProvider('a', 'http://127.0.0.1:9', [
          { name: 'emb', capabilities: ['embeddings'] },
          { name: 'chat' },
        ]),
      ],
      routes: { r: { targets: ['a/emb', 'a/chat'] } },
    };
    expect(() => parseConfigText(JSON.stringify(cfg), {})).toThrow(/routes\.r/);
  });

  it('GET /v1/models: route names and provider/model names in the OpenAI list shape', async () => {
    const a = await sim('a');
    const gw = await gateway([up(a)]);
    const res = await request(`${gw.url}/v1/models`);
    const j = (await res.body.json()) as { object: string; data: Array<{ id: string; object: string }> };
    expect(j.object).toBe('list');
    expect(j.data.map((d) => d.id).sort()).toEqual(['a/m', 'r']);
    for (const d of j.data) expect(d.object).toBe('model');
  });
});

// ───────────────────────────────────────────── §5 metrics ─────────────────────────────────────────────

describe('§5 metrics', () => {
  it('every metric has its type and exactly its label set after a mixed session', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b', { completionTokens: 6 });
    const cut = await sim('cut', { dropAfterChunks: 1 });
    const rt = await sim('rt', { reply: '{"tier":"deep","reason":"x"}', completionTokens: 2 });
    offset = 0;
    const gw = track(
      await startGateway(
        {
          providers: [a, b, cut, rt].map((s) =>
            simProvider(s.options.name, s.url, [
              { name: 'm', price: { input_per_mtok: 3, output_per_mtok: 6 } },
            ]),
          ),
          routes: {
            r: { strategy: 'priority', targets: ['a/m', 'b/m'] },
            c: { targets: ['cut/m'] },
            t: {
              tiers: { fast: ['rt/m'], deep: ['b/m'] },
              default_tier: 'deep',
              router: { tier: 'fast', timeout_ms: 1000 },
            },
          },
          circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
        },
        { now },
      ),
    );
    expect((await post(gw, {})).status).toBe(200);
    expect((await post(gw, { stream: true })).status).toBe(200);
    expect((await post(gw, { model: 'c', stream: true })).status).toBe(200);
    expect((await post(gw, { model: 't' })).status).toBe(200);
    const text = await (await request(`${gw.url}/metrics`)).body.text();
    const s = parseProm(text);
    for (const [name, spec] of Object.entries(SPEC_METRICS)) {
      expect(text, name).toContain(`# TYPE ${name} ${spec.type}`);
      const series =
        spec.type === 'histogram'
          ? s.filter((x) => x.name === `${name}_count`)
          : s.filter((x) => x.name === name);
      if (name !== 'llm_router_config_reloads_total') expect(series.length, name).toBeGreaterThan(0);
      for (const x of series) expect(Object.keys(x.labels).sort(), name).toEqual([...spec.labels].sort());
    }
    expect(value(s, 'llm_router_failovers_total', { route: 'r', from_provider: 'a', reason: 'error' })).toBe(
      1,
    );
    expect(value(s, 'llm_router_circuit_state', { provider: 'a', model: 'm' })).toBe(2);
    expect(value(s, 'llm_router_circuit_state', { provider: 'b', model: 'm' })).toBe(0);
    expect(
      value(s, 'llm_router_requests_total', { route: 'r', provider: 'b', model: 'm', status: '200' }),
    ).toBe(2);
  });

  it('time_per_output_token is observed once per streamed request; TTFT once per request', async () => {
    const a = await sim('a', { completionTokens: 10, chunkDelayMs: 2 });
    const gw = await gateway([up(a)]);
    for (let i = 0; i < 3; i++)
      expect((await post(gw, { stream: true, stream_options: { include_usage: true } })).status).toBe(200);
    const s = await metrics(gw);
    expect(value(s, 'llm_router_time_per_output_token_seconds_count', { provider: 'a', model: 'm' })).toBe(3);
    expect(value(s, 'llm_router_time_to_first_token_seconds_count', { provider: 'a', model: 'm' })).toBe(3);
  });

  it('overhead_seconds: one observation per routed request, excluding the time spent waiting on upstreams', async () => {
    const a = await sim('a', { latencyMs: 300 });
    const gw = await gateway([up(a)]);
    for (let i = 0; i < 2; i++) expect((await post(gw, {})).status).toBe(200);
    const s = await metrics(gw);
    expect(value(s, 'llm_router_overhead_seconds_count', { route: 'r' })).toBe(2);
    const sum = value(s, 'llm_router_overhead_seconds_sum', { route: 'r' })!;
    expect(sum).toBeGreaterThanOrEqual(0);
    expect(sum / 2).toBeLessThan(0.2); // an upstream wait of 300 ms is not the gateway's own time
    const dur = value(s, 'llm_router_request_duration_seconds_sum', {
      route: 'r',
      provider: 'a',
      model: 'm',
      stream: 'false',
    })!;
    expect(dur / 2).toBeGreaterThanOrEqual(0.25);
  });

  it('upstream_attempts_total outcomes: success, error, timeout, rate_limited, client_error', async () => {
    const e = await sim('e', { status: 500 });
    const t = await sim('t', { hang: true });
    const rl = await sim('rl', { status: 429, retryAfterS: 30 });
    const ok = await sim('ok');
    const ce = await sim('ce', { status: 400 });
    offset = 0;
    const gw = track(
      await startGateway(
        {
          providers: [
            simProvider('e', e.url, ['m'], { timeouts: RELAXED }),
            simProvider('t', t.url, ['m'], { timeouts: TIMEOUTS }),
            simProvider('rl', rl.url, ['m'], { timeouts: RELAXED }),
            simProvider('ok', ok.url, ['m'], { timeouts: RELAXED }),
            simProvider('ce', ce.url, ['m'], { timeouts: RELAXED }),
          ],
          routes: {
            r: { strategy: 'priority', targets: ['e/m', 't/m', 'rl/m', 'ok/m'] },
            c: { targets: ['ce/m'] },
          },
          routing: { max_attempts: 4, total_timeout_ms: 5000 },
        },
        { now },
      ),
    );
    expect((await post(gw, {})).status).toBe(200);
    expect((await post(gw, { model: 'c' })).status).toBe(400);
    const s = await metrics(gw);
    const at = (provider: string, outcome: string) =>
      value(s, 'llm_router_upstream_attempts_total', { provider, model: 'm', outcome });
    expect(at('e', 'error')).toBe(1);
    expect(at('t', 'timeout')).toBe(1);
    expect(at('rl', 'rate_limited')).toBe(1);
    expect(at('ok', 'success')).toBe(1);
    expect(at('ce', 'client_error')).toBe(1);
    // three moves to another upstream; reasons distinguish the causes
    const fo = select(s, 'llm_router_failovers_total', { route: 'r' });
    expect(fo.reduce((n, x) => n + x.value, 0)).toBe(3);
    expect(new Set(fo.map((x) => x.labels.reason)).size).toBe(3);
    // requests_total counts the relayed 400 under its route and upstream
    expect(
      value(s, 'llm_router_requests_total', { route: 'c', provider: 'ce', model: 'm', status: '400' }),
    ).toBe(1);
  });

  it('requests_total counts a 502 under its route and status', async () => {
    const a = await sim('a', { status: 500 });
    const gw = await gateway([up(a)]);
    expect((await post(gw, {})).status).toBe(502);
    const s = await metrics(gw);
    const rows = select(s, 'llm_router_requests_total', { route: 'r', status: '502' });
    expect(rows.reduce((n, x) => n + x.value, 0)).toBe(1);
  });

  it('inflight_requests is 1 while a stream is open and 0 after', async () => {
    const a = await sim('a', { completionTokens: 6, chunkDelayMs: 120 });
    const gw = await gateway([up(a)]);
    const res = await openStream(gw);
    expect(res.statusCode).toBe(200);
    expect(value(await metrics(gw), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(1);
    await res.body.text();
    await sleep(20);
    expect(value(await metrics(gw), 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(0);
  });

  // SPEC §5: llm_router_requests_total{route, ...}; README: only "requests answered before routing count under route none"
  it('a 503 with every breaker open is counted and logged under its route', async () => {
    const a = await sim('a', { status: 500 });
    const gw = await gateway([up(a)], undefined, {
      circuit_breaker: { failure_threshold: 1, open_ms: 60_000 },
    });
    expect((await post(gw, {})).status).toBe(502);
    expect((await post(gw, {}, { 'x-request-id': 'open-1' })).status).toBe(503);
    const s = await metrics(gw);
    const rows = select(s, 'llm_router_requests_total', { status: '503' });
    expect(rows.map((x) => x.labels.route)).toEqual(['r']);
    const line = gw.logs.find((l) => l.msg === 'request' && JSON.stringify(l).includes('open-1'));
    expect(line, JSON.stringify(gw.logs.slice(-3))).toBeDefined();
    expect(line?.route).toBe('r');
  });

  it('time_per_output_token is (total - TTFT) / completion tokens: in the range of the chunk gap', async () => {
    const a = await sim('a', { completionTokens: 10, chunkDelayMs: 20 });
    const gw = await gateway([up(a)]);
    expect((await post(gw, { stream: true, stream_options: { include_usage: true } })).status).toBe(200);
    const s = await metrics(gw);
    const sum = value(s, 'llm_router_time_per_output_token_seconds_sum', { provider: 'a', model: 'm' })!;
    expect(sum).toBeGreaterThan(0.01);
    expect(sum).toBeLessThan(0.2);
  });

  it('after a failover the failed upstream is back to 0 in flight, and only the serving one counts tokens', async () => {
    const a = await sim('a', { status: 500 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    expect((await post(gw, { stream: true, stream_options: { include_usage: true } })).status).toBe(200);
    const s = await metrics(gw);
    expect(value(s, 'llm_router_inflight_requests', { provider: 'a', model: 'm' })).toBe(0);
    expect(value(s, 'llm_router_inflight_requests', { provider: 'b', model: 'm' })).toBe(0);
    expect(select(s, 'llm_router_tokens_total', { provider: 'a' }).reduce((n, x) => n + x.value, 0)).toBe(0);
    expect(value(s, 'llm_router_time_to_first_token_seconds_count', { provider: 'b', model: 'm' })).toBe(1);
    expect(value(s, 'llm_router_time_to_first_token_seconds_count', { provider: 'a', model: 'm' }) ?? 0).toBe(
      0,
    );
    expect(
      value(s, 'llm_router_upstream_attempts_total', { provider: 'a', model: 'm', outcome: 'error' }),
    ).toBe(1);
    expect(
      value(s, 'llm_router_requests_total', { route: 'r', provider: 'b', model: 'm', status: '200' }),
    ).toBe(1);
  });

  it('stream_failures_total counts only failures after the commit; overhead is observed for streams too', async () => {
    const a = await sim('a', { errorEventAfterChunks: 0 });
    const b = await sim('b');
    const gw = await gateway([up(a), up(b)]);
    expect((await post(gw, { stream: true })).status).toBe(200); // a fails before content: failed over
    expect((await post(gw, {}, { 'x-router-provider': 'b' })).status).toBe(200);
    const s = await metrics(gw);
    expect(select(s, 'llm_router_stream_failures_total').reduce((n, x) => n + x.value, 0)).toBe(0);
    expect(value(s, 'llm_router_overhead_seconds_count', { route: 'r' })).toBe(2);
  });

  it('tokens_total and cost_usd_total move by the usage and prices', async () => {
    const a = await sim('a', { completionTokens: 8 });
    const gw = await gateway([
      up(a, undefined, { price: { input_per_mtok: 1_000_000, output_per_mtok: 2_000_000 } }),
    ]);
    const r = await post(gw, {});
    const usage = r.json.usage as { prompt_tokens: number; completion_tokens: number };
    const s = await metrics(gw);
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'prompt' })).toBe(
      usage.prompt_tokens,
    );
    expect(value(s, 'llm_router_tokens_total', { provider: 'a', model: 'm', kind: 'completion' })).toBe(
      usage.completion_tokens,
    );
    expect(value(s, 'llm_router_cost_usd_total', { provider: 'a', model: 'm' })).toBeCloseTo(
      usage.prompt_tokens + 2 * usage.completion_tokens,
      6,
    );
  });
});
