/**
 * What the config loader refuses, warns of and fills in (SPEC §3: every error names its YAML path; §2 tiers
 * and strategies; §8 bounded nesting; README "Configuration"): route names with "/", server.port past 65535,
 * rules naming a tier without upstreams, an api_key that resolves to blanks, nesting past 64 levels,
 * durations past Node's timer limit (2^31-1 ms; the limit itself is taken), load_shedding.sample_interval_ms
 * under 100 ms, and the hybrid strategy's default weights.
 */
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { MAX_TIMER_MS } from '../../src/config/schema.js';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway, type TestGateway } from '../helpers/gateway.js';
import { answerChat, sendJson, startMock } from '../helpers/mock-upstream.js';

const track = closeAfterEach();
const RELAXED = { connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 10000 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chat(gw: TestGateway, model: string, extra: Record<string, unknown> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...extra }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

/** The issues a config is rejected with (`[]` when it loads). */
function configIssues(config: Record<string, unknown>): string[] {
  try {
    parseConfigText(JSON.stringify(config), {});
    return [];
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).issues];
  }
}
const PROVIDERS = [{ name: 'a', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] }];

describe('config rejections name their path (SPEC §3: every error names its YAML path)', () => {
  // SPEC §1: a client sends `provider/model` to address one upstream; a route named like one would shadow
  // or be shadowed by it.
  it('a route name with "/" is refused, naming the route', () => {
    const issues = configIssues({
      providers: PROVIDERS,
      routes: { 'a/m': { strategy: 'priority', targets: ['a/m'] } },
    });
    expect(issues.join('\n')).toContain('routes.a/m');
    expect(issues.join('\n')).toContain('"/"');
    expect(configIssues({ providers: PROVIDERS, routes: { am: { targets: ['a/m'] } } })).toEqual([]);
  });

  // A port past 65535 cannot be listened on: accepted, it would crash at listen with a stack trace instead
  // of a message naming `server.port` (SPEC §8: "every rejection is a message with its path, not a stack
  // trace").
  it('server.port 65536 is refused naming server.port; 65535 loads', () => {
    const issues = configIssues({ server: { port: 65536 }, providers: PROVIDERS });
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatch(/^server\.port: /);
    expect(configIssues({ server: { port: 65535 }, providers: PROVIDERS })).toEqual([]);
  });
});

describe('hybrid weight defaults (SPEC §2: default weights 0.4 / 0.4 / 0.2)', () => {
  // A hybrid strategy that sets some weights gets the SPEC's defaults for the rest (README's example sets two
  // of them).
  it('a hybrid strategy that names only cost and latency weights gets reliability 0.2', async () => {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway({
        providers: [simProvider('a', up.url, ['m'], { timeouts: RELAXED })],
        routes: {
          r: { strategy: { hybrid: { cost_weight: 0.4, latency_weight: 0.4 } }, targets: ['a/m'] },
          s: { strategy: { hybrid: {} }, targets: ['a/m'] },
        },
      }),
    );
    const weights = (name: string) => gw.gateway.runtime.routes.get(name)?.weights;
    expect(weights('r')).toEqual({ cost: 0.4, latency: 0.4, reliability: 0.2 });
    expect(weights('s')).toEqual({ cost: 0.4, latency: 0.4, reliability: 0.2 });
  });
});

describe('more config rejections and warnings (SPEC §2 tiers, §3 providers)', () => {
  // A rule that picks a tier with no upstreams would send every request it matches to no candidate at all:
  // a config error named by its path, like a router.tier without upstreams (SPEC §2: "rejected at load
  // time").
  it('a rule naming a tier the route does not list is refused at its path', () => {
    const issues = configIssues({
      providers: PROVIDERS,
      routes: {
        auto: {
          tiers: { fast: ['a/m'] },
          default_tier: 'fast',
          rules: [{ if: { tools: true }, tier: 'deep' }],
        },
      },
    });
    expect(issues).toEqual(['routes.auto.rules[0].tier: tier "deep" has no upstreams']);
  });

  // SPEC §3: "A provider whose api_key resolves empty is disabled with one warning line": a variable set to
  // blanks (a stray space in a .env file) is no key, and must not be sent as `Bearer   `.
  it('an api_key that resolves to blanks disables its provider with one warning', () => {
    const loaded = parseConfigText(
      JSON.stringify({
        providers: [
          { ...PROVIDERS[0], api_key: '${KEY}' },
          { ...PROVIDERS[0], name: 'b' },
        ],
        routes: { r: { targets: ['a/m', 'b/m'] } },
      }),
      { KEY: '   ' },
    );
    expect([...loaded.disabledProviders]).toEqual(['a']);
    expect(loaded.warnings.filter((w) => w.includes('"a"'))).toEqual([
      'providers[0] "a": api_key is empty; provider disabled',
    ]);
  });
});

describe('config nesting is bounded (SPEC §8: JSON nesting is bounded; every rejection is a message with its path)', () => {
  // The depth bound at its edge: a value 65 levels down is refused as too deep, with its path; 64 is not (it
  // is refused only as the unknown key it is).
  it('a value 65 levels deep is refused as nested too deep; 64 levels is not', () => {
    const nest = (levels: number): unknown => {
      let v: unknown = 1;
      for (let i = 0; i < levels; i++) v = { a: v };
      return v;
    };
    const at65 = configIssues({ providers: PROVIDERS, x_unknown: nest(64) });
    expect(at65).toHaveLength(1);
    expect(at65[0]).toMatch(/^x_unknown(\.a){64}: nested deeper than 64 levels$/);
    const at64 = configIssues({ providers: PROVIDERS, x_unknown: nest(63) });
    expect(at64.join('\n')).not.toContain('nested deeper');
    expect(at64).toEqual(['x_unknown: unknown key']);
  });
});

describe("durations past Node's timer limit (SPEC §3; regression: accepted, then each timer fired after 1 ms)", () => {
  // Node's timers hold at most 2^31-1 ms (~24.8 days) and fire a larger delay after 1 ms: a total_ms of 3e9
  // would answer 504 at once, an open_ms of 3e9 re-arm a 1 ms wake-up (with a TimeoutOverflowWarning) for as
  // long as the breaker stays open, a shutdown_grace_ms of 3e9 cut every stream at once. Such values are
  // refused with their YAML path; the limit itself is taken.
  const HUGE = 3_000_000_000;
  const base = (extra: Record<string, unknown>, provider: Record<string, unknown> = {}) => ({
    providers: [{ name: 'p', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }], ...provider }],
    ...extra,
  });
  it.each([
    ['providers[0].timeouts.total_ms', base({}, { timeouts: { total_ms: HUGE } })],
    ['providers[0].timeouts.first_byte_ms', base({}, { timeouts: { first_byte_ms: HUGE } })],
    ['circuit_breaker.open_ms', base({ circuit_breaker: { open_ms: HUGE } })],
    ['circuit_breaker.max_open_ms', base({ circuit_breaker: { max_open_ms: HUGE } })],
    ['routing.total_timeout_ms', base({ routing: { total_timeout_ms: HUGE } })],
    ['server.shutdown_grace_ms', base({ server: { shutdown_grace_ms: HUGE } })],
    ['server.request_timeout_ms', base({ server: { request_timeout_ms: HUGE } })],
    [
      'server.load_shedding.sample_interval_ms',
      base({ server: { load_shedding: { sample_interval_ms: HUGE } } }),
    ],
  ])('%s past 2^31-1 ms is refused, naming its path', (path, config) => {
    expect(() => parseConfigText(JSON.stringify(config), {})).toThrow(
      new RegExp(`${path.replace(/[.[\]]/g, '\\$&')}: at most 2147483647 ms`),
    );
  });

  it('the limit itself is taken: an open breaker at open_ms 2^31-1 warns of no timer overflow', async () => {
    const up = track(await startMock((_req, res) => sendJson(res, 500, { error: { message: 'x' } })));
    const gw = track(
      await startGateway({
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
        circuit_breaker: { failure_threshold: 1, open_ms: MAX_TIMER_MS, max_open_ms: MAX_TIMER_MS },
      }),
    );
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => {
      if (w.name === 'TimeoutOverflowWarning') warnings.push(w);
    };
    process.on('warning', onWarning);
    try {
      expect((await chat(gw, 'r')).status).toBe(502);
      await sleep(300);
      const status = (await (await request(`${gw.url}/router/status`)).body.json()) as {
        upstreams: { breaker: { state: string } }[];
      };
      expect(status.upstreams[0]!.breaker.state).toBe('open');
      expect(warnings).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('server.load_shedding.sample_interval_ms (README Configuration)', () => {
  // under-pressure samples the event-loop delay at a 10 ms resolution: read more often than that, its
  // histogram is empty and its mean NaN, which it takes for an infinite delay, so an idle gateway would shed
  // everything (at 10 ms, 39 of 40 requests). Below 100 ms is refused; 100 serves.
  it('below 100 ms is refused, naming its path', () => {
    const config = {
      server: { load_shedding: { sample_interval_ms: 10 } },
      providers: [{ name: 'p', base_url: 'http://127.0.0.1:9/v1', models: [{ name: 'm' }] }],
    };
    expect(() => parseConfigText(JSON.stringify(config), {})).toThrow(
      /server\.load_shedding\.sample_interval_ms: at least 100 ms/,
    );
  });

  it("100 ms does not shed an idle gateway's requests", async () => {
    const up = track(await startMock((req, res) => answerChat(res, req.body, 'ok')));
    const gw = track(
      await startGateway({
        server: { load_shedding: { sample_interval_ms: 100 } },
        providers: [{ name: 'p', base_url: `${up.url}/v1`, models: [{ name: 'm' }] }],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      statuses.push((await chat(gw, 'r')).status);
      await sleep(20);
    }
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
  });
});
