import type { LoadedConfig } from './config/load.js';
import { lineStream, type Logger } from './observability/logger.js';
import { ChildCache, createMetrics, type Metrics } from './observability/metrics.js';
import { Runtime } from './runtime.js';
import { SharedState } from './state/shared-state.js';
import type { TripCause } from './resilience/breaker.js';
import type { RedisStateConfig } from './state/redis.js';
import type { SseWriter } from './streaming/relay.js';
import type { Abort } from './upstream/abort.js';

export interface GatewayDeps {
  readonly logger: Logger;
  /** Milliseconds; injected so tests can drive breakers and statistics. */
  readonly now?: () => number;
  readonly random?: () => number;
  readonly metrics?: Metrics;
  /** How often replicas exchange statistics through Redis, ms (state.backend: redis; tests shorten it). */
  readonly stateSyncMs?: number;
}

/**
 * The live gateway state: the current Runtime, swapped atomically on reload. A request takes
 * `gateway.runtime` once at its start, so in-flight requests finish on the config they began with.
 */
export class Gateway {
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly now: () => number;
  readonly random: () => number;
  readonly shared: SharedState;
  private current: Runtime;
  /**
   * The per-request line is built from our own fields only (secrets scrubbed where text came from an
   * upstream), so it skips the wildcard redaction that costs every other log call a walk of its object.
   */
  readonly requestLog: Logger;
  /** Where the hand-built per-request line goes (the logger's own destination, so lines stay in order). */
  readonly requestLines: { write(line: string): void };
  /** Per-request metric children by label values (route, provider, model, status / stream). */
  readonly requestChildren: ChildCache<{
    requests: ReturnType<Metrics['requests']['labels']>;
    duration: ReturnType<Metrics['requestDuration']['labels']>;
    overhead: ReturnType<Metrics['overhead']['labels']>;
  }>;
  readonly decisionChildren: ChildCache<ReturnType<Metrics['decisions']['labels']>>;
  /** Set by shutdown: /readyz turns 503 and new requests are refused. */
  draining = false;
  /**
   * Streams being answered now, each with its client signal and request: what shutdown cuts when its grace is
   * over.
   */
  readonly liveStreams = new Map<SseWriter, { signal: Abort; req: { reported: boolean } }>();
  #ready: Promise<void> = Promise.resolve();
  #closed = false;
  /** server.cors as the gateway started: CORS on or off, and its max-age, are fixed then (http/cors.ts). */
  /**
   * What restart-only settings still are, whatever reloads said: the start config's, only the parts they are
   * in (the whole config would hold its routes' LLM-router caches, keyed by their config, for good).
   */
  readonly #start: StartSettings;

  constructor(loaded: LoadedConfig, deps: GatewayDeps) {
    this.#start = startSettings(loaded.config);
    this.logger = deps.logger;
    this.metrics = deps.metrics ?? createMetrics();
    // timeOrigin is a getter that validates its receiver: read once, not on every clock read.
    const origin = performance.timeOrigin;
    this.now = deps.now ?? (() => performance.now() + origin);
    this.random = deps.random ?? Math.random;
    this.requestLog = this.logger.child({}, { redact: { paths: [], censor: '[REDACTED]' } });
    this.requestLines = lineStream(this.logger);
    const m = this.metrics;
    this.requestChildren = new ChildCache(([route, provider, model, status, stream]) => ({
      requests: m.requests.labels({
        route: String(route),
        provider: String(provider),
        model: String(model),
        status: String(status),
      }),
      duration: m.requestDuration.labels({
        route: String(route),
        provider: String(provider),
        model: String(model),
        stream: String(stream),
      }),
      overhead: m.overhead.labels({ route: String(route) }),
    }));
    this.decisionChildren = new ChildCache(([route, strategy, provider]) =>
      m.decisions.labels({ route: String(route), strategy: String(strategy), provider: String(provider) }),
    );
    this.shared = new SharedState(loaded, this.now);
    for (const w of loaded.warnings) this.logger.warn(w);
    this.current = new Runtime(loaded, this.shared, this.metrics, this.logger);
    primeSeries(this.current);
    const state = loaded.config.state;
    if (state.backend === 'redis') this.#ready = this.#shareThroughRedis(state, deps.stateSyncMs);
  }

  get runtime(): Runtime {
    return this.current;
  }

  /**
   * How long an answer ended on our side may go untaken before its connection closes (stalled-answer.ts):
   * `server.request_timeout_ms` as the server started with it (a restart-only setting, as Node's own timer).
   */
  get answerStallMs(): number {
    return this.#start.server.request_timeout_ms;
  }

  /** Swaps in a new validated config; breakers and statistics of upstreams that remain are kept. */
  reload(loaded: LoadedConfig): void {
    const old = this.current;
    for (const w of loaded.warnings) this.logger.warn(w);
    // Compared with the start, not the last reload: a change still pending is named again by the next reload
    // (the same file: it was not applied), and one set back as it started is no change.
    const start = this.#start;
    const stale = [
      ...restartOnly(start.server, loaded.config.server),
      ...corsRestartOnly(start.server.cors, loaded.config.server.cors),
      ...passthroughRestartOnly(start, loaded.config),
      ...changedKeys(['state'] as const, start, loaded.config),
    ];
    if (stale.length > 0) {
      // Names only: some of these are secrets.
      this.logger.warn(
        { settings: stale },
        `${stale.join(', ')} changed: not applied until the gateway restarts`,
      );
    }
    const next = new Runtime(loaded, this.shared, this.metrics, this.logger, old);
    this.current = next;
    primeSeries(next);
    // A removed upstream's breaker is gone: its state series would otherwise be scraped forever. (Its
    // in-flight gauge stays while a request still running on the old config may decrement it.)
    for (const up of old.upstreams.values()) {
      if (!next.upstreams.has(up.id))
        this.metrics.circuitState.remove({ provider: up.provider.name, model: up.model.name });
    }
    // Pools the new runtime does not reuse close once the old one's requests are done; then the in-flight
    // series of upstreams no config has any more go too (one re-added since keeps its own).
    void old.retire().then(() => this.#forgetSeries(old));
  }

  /**
   * Every series of the upstreams `old` had and no config has any more (one re-added since keeps its own),
   * and of providers none of whose upstreams is left: a reload that moves upstreams would otherwise grow
   * /metrics with each one, scraped forever. Runs once `old`'s requests are done.
   */
  #forgetSeries(old: Runtime): void {
    const live = this.current.upstreams;
    /** Label pairs of the upstreams gone, keyed `provider\0model` as the series' labels are matched. */
    const gone = new Map<string, { provider: string; model: string }>();
    const goneProviders = new Set<string>();
    for (const up of old.upstreams.values()) {
      if (live.has(up.id)) continue;
      up.metrics.seriesGone = true; // its last requests may still report (end of turn): not brought back
      gone.set(`${up.provider.name}\u0000${up.model.name}`, {
        provider: up.provider.name,
        model: up.model.name,
      });
      goneProviders.add(up.provider.name);
    }
    if (gone.size === 0) return;
    for (const up of live.values()) goneProviders.delete(up.provider.name);
    const m = this.metrics;
    const ofUpstream = (l: Readonly<Record<string, string>>): boolean =>
      gone.has(`${l.provider}\u0000${l.model}`);
    for (const metric of [
      m.requests,
      m.requestDuration,
      m.ttft,
      m.tpot,
      m.attempts,
      m.tokens,
      m.cost,
      m.inflight,
    ])
      metric.removeWhere(ofUpstream);
    m.decisions.removeWhere((l) => goneProviders.has(l.provider!));
    m.failovers.removeWhere((l) => goneProviders.has(l.from_provider!));
    for (const { provider, model } of gone.values()) {
      for (const to of ['open', 'half_open', 'closed']) m.circuitTransitions.remove({ provider, model, to });
      for (const policy of ['terminate', 'continue']) m.streamFailures.remove({ provider, model, policy });
    }
    // Their cached children are gone from the metrics: looked up anew.
    this.requestChildren.clear();
    this.decisionChildren.clear();
  }

  /**
   * Reload from a source that may fail (SIGHUP, a changed file): a valid config is swapped in, an invalid
   * one is logged with its YAML paths and the old config keeps serving. Counted either way.
   */
  tryReload(load: () => LoadedConfig, why: string): boolean {
    let loaded: LoadedConfig;
    try {
      loaded = load();
      this.reload(loaded);
    } catch (err) {
      this.metrics.configReloads.inc({ result: 'failure' });
      this.logger.error(
        { why, error: err instanceof Error ? err.message : String(err) },
        'config reload rejected; the old config keeps serving',
      );
      return false;
    }
    this.metrics.configReloads.inc({ result: 'success' });
    this.logger.info({ why, source: loaded.source }, 'config reloaded');
    return true;
  }

  /** Resolves once optional parts (the Redis client) are loaded; the gateway serves before that. */
  ready(): Promise<void> {
    return this.#ready;
  }

  /**
   * state.backend redis (read at start only; a reload that changes it says so). ioredis is loaded only
   * here, so a single process does not carry it.
   */
  async #shareThroughRedis(cfg: RedisStateConfig, syncMs: number | undefined): Promise<void> {
    const { RedisState } = await import('./state/redis.js');
    const shared = this.shared;
    const redis = new RedisState(
      cfg,
      {
        adoptOpen: (id, ms, cause, levelMs) => {
          if (!this.current.upstreams.has(id)) return false;
          shared.adoptOpen(id, ms, cause, levelMs);
          return true;
        },
        adoptClose: (id) => {
          if (this.current.upstreams.has(id)) shared.adoptClose(id);
        },
        localStats: () =>
          [...this.current.upstreams.keys()].map((id) => [id, shared.statsFor(id).local()] as const),
        setRemote: (id, view) => shared.stats.get(id)?.setRemote(view),
        localQuotas: () => [...shared.quotas].map(([id, q]) => [id, q.local()] as const),
        setRemoteQuota: (id, use) => shared.quotas.get(id)?.setRemote(use),
        openBreakers: () => {
          const open: [string, number, TripCause][] = [];
          for (const [id, breaker] of shared.breakers.entries()) {
            const s = breaker.snapshot();
            if (s.msUntilHalfOpen > 0 && this.current.upstreams.has(id))
              open.push([id, s.msUntilHalfOpen, s.tripCause ?? 'errors']);
          }
          return open;
        },
      },
      this.logger,
      { syncMs },
    );
    if (this.#closed) return;
    shared.redis = redis;
    redis.start();
  }

  /**
   * Ends every stream still running (shutdown's grace is over): each client gets an error event saying so
   * (or a 503 before its stream began) instead of a dropped connection, its upstream request is aborted, and
   * its request line is written. Returns how many there were.
   */
  cutStreams(): number {
    const n = this.liveStreams.size;
    for (const [writer, { signal, req }] of this.liveStreams) {
      // Its handler writes its line once the aborted attempt returns; the response ends before that.
      req.reported = true;
      writer.cut(SHUTDOWN_ERROR);
      signal.abort(SHUTDOWN_CUT);
    }
    this.liveStreams.clear();
    return n;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#ready;
    this.shared.close();
    this.shared.redis?.close();
    await this.current.destroy();
  }
}

/** The reason of a stream cut by shutdown: its error code, and its request line's error. */
export const GATEWAY_SHUTDOWN = 'gateway_shutdown';
/** What a client whose request shutdown cut is told (the error of an SSE error event or of a 503). */
export const SHUTDOWN_ERROR = Object.freeze({
  message: 'the gateway is shutting down; the answer was cut',
  type: 'server_error',
  param: null,
  code: GATEWAY_SHUTDOWN,
});

/** The abort reason of a request cut by shutdown (told apart by identity, not by its text). */
export const SHUTDOWN_CUT: Error = Object.assign(new Error('the gateway is shutting down'), {
  code: GATEWAY_SHUTDOWN,
});

/** The request was cut by shutdown (not left by its client). */
export function isShutdown(signal: Abort): boolean {
  return signal.aborted && signal.reason === SHUTDOWN_CUT;
}

/**
 * `server.*` settings the HTTP layer reads once, at start: the listener, body limits, the passthrough proxy
 * and (today, see src/app.ts) the client and admin keys. A reload that changes them must say so.
 */
const RESTART_ONLY = [
  'host',
  'port',
  'body_limit_bytes',
  'request_timeout_ms',
  'shutdown_grace_ms',
  'passthrough',
  'load_shedding',
  'rate_limit',
] as const;

/** What the passthrough proxy took from its provider at start (its key is read per request). */
const PASSTHROUGH_RESTART_ONLY = ['base_url', 'timeouts', 'max_concurrency'] as const;

type StartSettings = Pick<LoadedConfig['config'], 'server' | 'state' | 'providers'>;

/**
 * A function of its own, not inline in the constructor: a closure there would put the config in the
 * context every closure of the constructor shares, kept for the gateway's life.
 */
function startSettings(c: LoadedConfig['config']): StartSettings {
  const pass = c.server.passthrough;
  return { server: c.server, state: c.state, providers: c.providers.filter((p) => p.name === pass) };
}

function passthroughRestartOnly(before: StartSettings, after: StartSettings): string[] {
  const name = before.server.passthrough;
  if (name === undefined || name !== after.server.passthrough) return [];
  const was = before.providers.find((p) => p.name === name);
  const now = after.providers.find((p) => p.name === name);
  if (!was || !now) return [];
  return changedKeys(PASSTHROUGH_RESTART_ONLY, was, now).map((k) => `providers.${name}.${k} (passthrough)`);
}

function restartOnly(
  before: LoadedConfig['config']['server'],
  after: LoadedConfig['config']['server'],
): string[] {
  return changedKeys(RESTART_ONLY, before, after).map((k) => `server.${k}`);
}

type CorsConfig = LoadedConfig['config']['server']['cors'];

/**
 * CORS is on or off as the gateway started (its hook is registered once), and so is its max-age; its
 * origins apply live. Compared with the start, not the last reload: a reload that gives CORS back as it
 * started applies in full, and one that changes max_age_s back is not a change.
 */
function corsRestartOnly(atStart: CorsConfig, after: CorsConfig): string[] {
  if ((atStart === undefined) !== (after === undefined)) return ['server.cors'];
  if (atStart && after && atStart.max_age_s !== after.max_age_s) return ['server.cors.max_age_s'];
  return [];
}

function changedKeys<T, K extends keyof T>(keys: readonly K[], before: T, after: T): K[] {
  return keys.filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]));
}

/**
 * Creates every per-upstream counter series at zero, so dashboards and alerts see `error` or `timeout`
 * rates from the start (an absent series has no rate) and a first failure shows as an increase.
 */
function primeSeries(rt: Runtime): void {
  for (const up of rt.upstreams.values()) {
    const m = up.metrics;
    for (const c of Object.values(m.attempts)) c.inc(0);
    m.promptTokens.inc(0);
    m.completionTokens.inc(0);
    m.cost.inc(0);
    m.inflight.inc(0);
    // `increase(...[5m]) > 0` sees a counter's first step only from a series that was there at 0 before it.
    const labels = { provider: up.provider.name, model: up.model.name };
    for (const to of TRANSITIONS) rt.metrics.circuitTransitions.inc({ ...labels, to }, 0);
  }
  for (const route of rt.routes.values()) {
    if (route.embeddings) continue; // no streams
    for (const t of route.targets) {
      const up = t.upstream;
      const labels = { provider: up.provider.name, model: up.model.name, policy: route.onStreamFailure };
      rt.metrics.streamFailures.inc(labels, 0);
    }
  }
}

const TRANSITIONS = ['open', 'half_open', 'closed'] as const;
