import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.js';
import { startSimulator } from '../../src/sim/index.js';
import { closeAfterAll } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { parseProm, select, value, type Sample } from '../helpers/prom-text.js';

/**
 * One gateway, one scripted session covering every SPEC §5 metric: a success (JSON and stream), failovers
 * that trip a breaker, a tiered route whose LLM router picks "deep", a stream cut after its commit, and an
 * unknown (hostile) model name. Then one scrape, checked metric by metric.
 */
const track = closeAfterAll();
let gw: TestGateway;
let samples: Sample[];
let scrape: string;
const headers: Record<string, Record<string, string | string[] | undefined>> = {};

const PRICE = { input_per_mtok: 2.5, output_per_mtok: 10 };

async function chat(name: string, model: string, extra: Record<string, unknown> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': `req-${name}` },
    body: JSON.stringify({
      model,
      messages: [{ role: 'user', content: `Explain item ${name} in depth, please.` }],
      ...extra,
    }),
  });
  const text = await res.body.text();
  headers[name] = res.headers;
  return { status: res.statusCode, text };
}

beforeAll(async () => {
  const mk = async (name: string, o: Parameters<typeof startSimulator>[0] = {}) =>
    track(await startSimulator({ name, ...o }));
  const ok = await mk('ok', { completionTokens: 8 });
  const bad = await mk('bad', { status: 500 });
  const router = await mk('router', { reply: '{"tier":"deep","reason":"x"}', completionTokens: 3 });
  const deep = await mk('deep', { completionTokens: 5 });
  const drop = await mk('drop', { dropAfterChunks: 2, completionTokens: 8, chunkDelayMs: 5 });
  gw = track(
    await startGateway({
      providers: [
        simProvider('ok', ok.url, [{ name: 'm', price: PRICE }]),
        simProvider('bad', bad.url, ['m']),
        simProvider('router', router.url, ['m']),
        simProvider('deep', deep.url, [{ name: 'm', price: { input_per_mtok: 15, output_per_mtok: 75 } }]),
        simProvider('drop', drop.url, ['m']),
      ],
      routes: {
        plain: { strategy: 'priority', targets: ['ok/m'] },
        fo: { strategy: 'priority', targets: ['bad/m', 'ok/m'] },
        tiered: {
          strategy: 'priority',
          tiers: { fast: ['router/m'], balanced: ['ok/m'], deep: ['deep/m'] },
          default_tier: 'balanced',
          router: { tier: 'fast', timeout_ms: 2000 },
        },
        cut: { strategy: 'priority', targets: ['drop/m'] },
      },
      circuit_breaker: { failure_threshold: 2, open_ms: 60_000 },
    }),
  );

  expect((await chat('json', 'plain')).status).toBe(200);
  expect(headers.json?.['x-router-trail']).toBe(''); // on every routed response, empty when nothing failed
  const stream = await chat('stream', 'plain', { stream: true, stream_options: { include_usage: true } });
  expect(stream.text).toContain('data: [DONE]');
  for (const n of ['fo1', 'fo2', 'fo3']) expect((await chat(n, 'fo')).status).toBe(200);
  expect(headers.fo1?.['x-router-trail']).toBe('bad/m=http_500');
  expect(headers.fo3?.['x-router-attempts']).toBe('1'); // bad/m is open: skipped
  expect((await chat('tier', 'tiered')).status).toBe(200);
  expect(headers.tier?.['x-router-tier']).toBe('deep');
  const cut = await chat('cut', 'cut', { stream: true });
  expect(cut.status).toBe(200);
  expect(cut.text).toContain('"error"');
  expect(cut.text).not.toContain('[DONE]');
  expect((await chat('evil', 'evil"model\nx{}')).status).toBe(404);

  const res = await request(`${gw.url}/metrics`);
  expect(res.statusCode).toBe(200);
  expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  scrape = await res.body.text();
  samples = parseProm(scrape);
}, 20_000);

const m = (name: string, labels: Record<string, string>) => value(samples, name, labels);

describe('/metrics after a scripted session (SPEC §5)', () => {
  it('llm_router_requests_total{route, provider, model, status}', () => {
    const n = 'llm_router_requests_total';
    expect(m(n, { route: 'plain', provider: 'ok', model: 'm', status: '200' })).toBe(2);
    expect(m(n, { route: 'fo', provider: 'ok', model: 'm', status: '200' })).toBe(3);
    expect(m(n, { route: 'tiered', provider: 'deep', model: 'm', status: '200' })).toBe(1);
    // A stream cut after its commit was answered 200: the client got headers and then an error event.
    expect(m(n, { route: 'cut', provider: 'drop', model: 'm', status: '200' })).toBe(1);
    // The unknown model was answered before routing: counted under route "none", not under its name.
    expect(m(n, { route: 'none', provider: 'none', model: 'none', status: '404' })).toBe(1);
    expect(select(samples, n).reduce((a, s) => a + s.value, 0)).toBe(8);
  });

  it('llm_router_request_duration_seconds{route, provider, model, stream} is a histogram', () => {
    const n = 'llm_router_request_duration_seconds';
    expect(m(`${n}_count`, { route: 'plain', provider: 'ok', model: 'm', stream: 'false' })).toBe(1);
    expect(m(`${n}_count`, { route: 'plain', provider: 'ok', model: 'm', stream: 'true' })).toBe(1);
    expect(m(`${n}_count`, { route: 'fo', provider: 'ok', model: 'm', stream: 'false' })).toBe(3);
    const sum = m(`${n}_sum`, { route: 'plain', provider: 'ok', model: 'm', stream: 'false' })!;
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThan(5);
    expect(
      m(`${n}_bucket`, { route: 'plain', provider: 'ok', model: 'm', stream: 'false', le: '+Inf' }),
    ).toBe(1);
  });

  it('llm_router_time_to_first_token_seconds and _time_per_output_token_seconds{provider, model}', () => {
    expect(m('llm_router_time_to_first_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(5);
    expect(m('llm_router_time_to_first_token_seconds_count', { provider: 'deep', model: 'm' })).toBe(1);
    // Per output token only for streams (a JSON answer's TTFT is its whole duration): the one stream.
    expect(m('llm_router_time_per_output_token_seconds_count', { provider: 'ok', model: 'm' })).toBe(1);
    expect(
      m('llm_router_time_per_output_token_seconds_sum', { provider: 'ok', model: 'm' }),
    ).toBeGreaterThanOrEqual(0);
    expect(
      m('llm_router_time_per_output_token_seconds_count', { provider: 'deep', model: 'm' }),
    ).toBeUndefined();
  });

  it('llm_router_overhead_seconds{route}', () => {
    expect(m('llm_router_overhead_seconds_count', { route: 'plain' })).toBe(2);
    expect(m('llm_router_overhead_seconds_count', { route: 'fo' })).toBe(3);
    const sum = m('llm_router_overhead_seconds_sum', { route: 'plain' })!;
    expect(sum).toBeGreaterThanOrEqual(0);
    expect(sum).toBeLessThan(1);
  });

  it('llm_router_upstream_attempts_total{provider, model, outcome}', () => {
    const n = 'llm_router_upstream_attempts_total';
    expect(m(n, { provider: 'ok', model: 'm', outcome: 'success' })).toBe(5);
    expect(m(n, { provider: 'bad', model: 'm', outcome: 'error' })).toBe(2);
    expect(m(n, { provider: 'router', model: 'm', outcome: 'success' })).toBe(1);
    expect(m(n, { provider: 'deep', model: 'm', outcome: 'success' })).toBe(1);
    expect(m(n, { provider: 'drop', model: 'm', outcome: 'error' })).toBe(1);
    // Every outcome has a series from the start (zero until it happens).
    for (const outcome of ['success', 'error', 'timeout', 'rate_limited', 'client_error']) {
      expect(m(n, { provider: 'ok', model: 'm', outcome }), outcome).toBeDefined();
    }
  });

  it('llm_router_failovers_total{route, from_provider, reason}', () => {
    expect(m('llm_router_failovers_total', { route: 'fo', from_provider: 'bad', reason: 'error' })).toBe(2);
    expect(select(samples, 'llm_router_failovers_total')).toHaveLength(1);
  });

  it('llm_router_circuit_state and _circuit_transitions_total{provider, model}', () => {
    expect(m('llm_router_circuit_state', { provider: 'bad', model: 'm' })).toBe(2);
    expect(m('llm_router_circuit_state', { provider: 'ok', model: 'm' })).toBe(0);
    expect(select(samples, 'llm_router_circuit_state')).toHaveLength(5);
    expect(m('llm_router_circuit_transitions_total', { provider: 'bad', model: 'm', to: 'open' })).toBe(1);
    expect(select(samples, 'llm_router_circuit_transitions_total').filter((x) => x.value > 0)).toHaveLength(
      1,
    );
    // Every upstream's three series are there from the start, at 0 until their first step.
    expect(select(samples, 'llm_router_circuit_transitions_total')).toHaveLength(5 * 3);
  });

  it('llm_router_tokens_total{provider, model, kind} and llm_router_cost_usd_total{provider, model}, fractional', () => {
    const prompt = m('llm_router_tokens_total', { provider: 'ok', model: 'm', kind: 'prompt' })!;
    const completion = m('llm_router_tokens_total', { provider: 'ok', model: 'm', kind: 'completion' })!;
    expect(completion).toBe(5 * 8);
    expect(prompt).toBeGreaterThanOrEqual(5 * 5);
    const cost = m('llm_router_cost_usd_total', { provider: 'ok', model: 'm' })!;
    expect(Number.isInteger(cost)).toBe(false);
    expect(cost).toBeCloseTo((prompt * PRICE.input_per_mtok + completion * PRICE.output_per_mtok) / 1e6, 12);
    expect(m('llm_router_tokens_total', { provider: 'deep', model: 'm', kind: 'completion' })).toBe(5);
    expect(m('llm_router_cost_usd_total', { provider: 'deep', model: 'm' })).toBeGreaterThan(5 * 75e-6);
  });

  it('llm_router_routing_decisions_total{route, strategy, provider}', () => {
    const n = 'llm_router_routing_decisions_total';
    expect(m(n, { route: 'fo', strategy: 'priority', provider: 'bad' })).toBe(2);
    expect(m(n, { route: 'fo', strategy: 'priority', provider: 'ok' })).toBe(1);
    expect(m(n, { route: 'plain', strategy: 'priority', provider: 'ok' })).toBe(2);
    expect(m(n, { route: 'tiered', strategy: 'priority', provider: 'deep' })).toBe(1);
  });

  it('llm_router_inflight_requests{provider, model} is back to zero', () => {
    const rows = select(samples, 'llm_router_inflight_requests');
    expect(rows.length).toBeGreaterThanOrEqual(5);
    for (const r of rows) expect(r.value, JSON.stringify(r.labels)).toBe(0);
  });

  it('llm_router_llm_router_requests_total{tier, outcome} and _duration_seconds{tier}', () => {
    expect(m('llm_router_llm_router_requests_total', { tier: 'deep', outcome: 'chosen' })).toBe(1);
    expect(select(samples, 'llm_router_llm_router_requests_total')).toHaveLength(1);
    const count = select(samples, 'llm_router_llm_router_duration_seconds_count');
    expect(count.map((s) => s.value)).toEqual([1]);
  });

  it('llm_router_stream_failures_total{provider, model, policy}', () => {
    expect(m('llm_router_stream_failures_total', { provider: 'drop', model: 'm', policy: 'terminate' })).toBe(
      1,
    );
  });

  it('llm_router_config_reloads_total{result} exists before any reload', () => {
    expect(m('llm_router_config_reloads_total', { result: 'success' })).toBe(0);
    expect(m('llm_router_config_reloads_total', { result: 'failure' })).toBe(0);
  });

  it('every metric the gateway registers is typed in the scrape, with the default process metrics', () => {
    const names = createMetrics({ defaultMetrics: false })
      .registry.getMetricsAsArray()
      .map((x) => x.name);
    expect(names).toHaveLength(19); // SPEC §5's 17, and the per-minute budgets' two gauges
    for (const name of names) expect(scrape, name).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
    for (const name of [
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
    ]) {
      expect(scrape, name).toMatch(new RegExp(`^${name}(\\{| )`, 'm'));
    }
  });

  it('never puts a raw client-supplied model string in a label', () => {
    expect(scrape).not.toContain('evil');
    const routes = new Set(select(samples, 'llm_router_requests_total').map((s) => s.labels.route));
    expect([...routes].sort()).toEqual(['cut', 'fo', 'none', 'plain', 'tiered']);
  });
});

describe('the per-request log line', () => {
  const lineOf = (reqId: string) => gw.logs.find((l) => l.msg === 'request' && l.reqId === reqId);

  it('carries request id, route, strategy, upstream, attempts and trail, status, latency, TTFT, tokens and cost', () => {
    const fo = lineOf('req-fo1')!;
    expect(fo).toBeDefined();
    expect(fo).toMatchObject({
      level: 30,
      route: 'fo',
      strategy: 'priority',
      upstream: 'ok/m',
      attempts: 2,
      trail: 'bad/m=http_500',
      status: 200,
      stream: false,
    });
    for (const k of ['latencyMs', 'ttftMs', 'promptTokens', 'completionTokens', 'costUsd', 'score']) {
      expect(typeof fo[k], k).toBe('number');
    }
    expect(fo.completionTokens).toBe(8);
    expect(fo.costUsd).toBeCloseTo(((fo.promptTokens as number) * 2.5 + 8 * 10) / 1e6, 12);
    expect(fo.ttftMs as number).toBeLessThanOrEqual(fo.latencyMs as number);
    expect(typeof fo.reason).toBe('string');
  });

  it('names the tier and why for a tiered route, and the stream flag and TTFT for a stream', () => {
    const tier = lineOf('req-tier')!;
    expect(tier).toMatchObject({
      route: 'tiered',
      tier: 'deep',
      upstream: 'deep/m',
      attempts: 1,
      status: 200,
    });
    expect(tier.tierReason).toContain('llm router: x');
    const stream = lineOf('req-stream')!;
    expect(stream).toMatchObject({ route: 'plain', stream: true, status: 200, completionTokens: 8 });
    expect(stream.ttftMs as number).toBeGreaterThanOrEqual(0);
  });

  it('records a cut stream with its error, and exactly one line per routed request', () => {
    const cut = lineOf('req-cut')!;
    expect(cut).toMatchObject({ route: 'cut', upstream: 'drop/m', status: 200, stream: true });
    expect(typeof cut.error).toBe('string');
    const requestLines = gw.logs.filter((l) => l.msg === 'request');
    expect(requestLines.map((l) => l.reqId).sort()).toEqual(
      ['req-cut', 'req-evil', 'req-fo1', 'req-fo2', 'req-fo3', 'req-json', 'req-stream', 'req-tier'].sort(),
    );
  });
});

describe('embeddings in the metrics', () => {
  it('counts a routing decision for an embeddings request, as for chat', async () => {
    const sim = track(await startSimulator({ name: 'vec' }));
    const g = track(
      await startGateway({
        providers: [simProvider('vec', sim.url, [{ name: 'emb', capabilities: ['embeddings'] }])],
        routes: { vectors: { strategy: 'priority', targets: ['vec/emb'] } },
      }),
    );
    const res = await request(`${g.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'vectors', input: 'one line' }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-router-trail']).toBe('');
    await res.body.dump();
    const text = await (await request(`${g.url}/metrics`)).body.text();
    const decisions = { route: 'vectors', strategy: 'priority', provider: 'vec' };
    expect(value(parseProm(text), 'llm_router_routing_decisions_total', decisions)).toBe(1);
  });
});
