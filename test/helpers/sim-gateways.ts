import { parseConfigText } from '../../src/config/load.js';
import { startSimulator, type SimOptions, type Simulator } from '../../src/sim/index.js';
import type { Track } from './cleanup.js';
import { postChat, simProvider, startGateway, type Posted, type TestGateway } from './gateway.js';

/** Shared by integration tests: a timed pause, a JSON POST, a reload, simulators and a tiered route. */
export type Json = Record<string, unknown>;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A POST's answer: status, headers, text and parsed JSON. */
export type Res = Posted;

/** POSTs `body` with key `k` (and `headers`) to the chat path (or `path`). */
export function post(
  gw: TestGateway,
  body: Json,
  headers: Record<string, string> = {},
  path = '/v1/chat/completions',
): Promise<Res> {
  return postChat(gw, body, { headers, path });
}

/** Asks route `auto` one user message `content`; `extra` joins the body. */
export function askAuto(
  gw: TestGateway,
  content: string,
  headers: Record<string, string> = {},
  extra: Json = {},
): Promise<Res> {
  return post(gw, { model: 'auto', messages: [{ role: 'user', content }], ...extra }, headers);
}

/** Swaps the running gateway's config for `cfg` (as a config file would be: JSON text, parsed). */
export function reload(gw: TestGateway, cfg: Json): void {
  gw.gateway.reload(parseConfigText(JSON.stringify(cfg), {}));
}

/** Another replica's statistics for one upstream as kept in Redis (`stats:<id>` hash field), 7 good samples. */
export function statsView(extra: Json = {}): Json {
  return {
    samples: 7,
    ttftMs: 40,
    latencyMs: 40,
    tpsSamples: 0,
    tokensPerSec: 0,
    outSamples: 0,
    meanOutputTokens: 0,
    okWeight: 7,
    failWeight: 0,
    lastSampleAgeMs: 0,
    ...extra,
  };
}

export interface TieredOptions {
  reply?: string;
  /** The deep model's capabilities, when it must lack one. */
  deepCaps?: string[];
  rules?: unknown[];
  /** false: no router, rules and default_tier only. */
  router?: boolean;
  routerLatencyMs?: number;
}

export interface Tiered {
  gw: TestGateway;
  rt: Simulator;
  bal: Simulator;
  deep: Simulator;
}

/** Simulators and the tiered `auto` route, each handed to `track` so a test leaves nothing behind. */
export function simFactories(track: Track): {
  sim(name: string, o?: Partial<SimOptions>): Promise<Simulator>;
  tiered(opts: TieredOptions): Promise<Tiered>;
} {
  async function sim(name: string, o: Partial<SimOptions> = {}): Promise<Simulator> {
    return track(await startSimulator({ name, ...o }));
  }

  /**
   * Route `auto`: fast = the router's own tier (`rt/m`), balanced = `bal/m` (default_tier), deep = `deep/m`
   * (optionally without some capabilities: `deepCaps`). The router answers `reply` after `routerLatencyMs`.
   */
  async function tiered(opts: TieredOptions): Promise<Tiered> {
    const rt = await sim('rt', {
      reply: opts.reply ?? '{"tier":"deep","reason":"hard"}',
      completionTokens: 1,
      latencyMs: opts.routerLatencyMs ?? 0,
    });
    const bal = await sim('bal');
    const deep = await sim('deep');
    const route: Json = {
      strategy: 'priority',
      tiers: { fast: ['rt/m'], balanced: ['bal/m'], deep: ['deep/m'] },
      rules: opts.rules ?? [],
      default_tier: 'balanced',
    };
    if (opts.router !== false) route.router = { tier: 'fast', timeout_ms: 3000, cache_ttl_s: 60 };
    const gw = track(
      await startGateway({
        providers: [
          simProvider('rt', rt.url, ['m']),
          simProvider('bal', bal.url, ['m']),
          simProvider('deep', deep.url, [opts.deepCaps ? { name: 'm', capabilities: opts.deepCaps } : 'm']),
        ],
        routes: { auto: route },
        circuit_breaker: { failure_threshold: 50 },
      }),
    );
    return { gw, rt, bal, deep };
  }

  return { sim, tiered };
}
