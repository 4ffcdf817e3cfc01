import type { LoadedConfig } from './config/load.js';
import { targetName } from './config/load.js';
import type {
  Capability,
  HybridWeights,
  ModelConfig,
  ProviderConfig,
  RouteConfig,
  RuleConfig,
  StrategyName,
  TargetConfig,
  TierName,
} from './config/schema.js';
import { MAX_TIMER_MS } from './config/schema.js';
import type { Metrics } from './observability/metrics.js';
import { CIRCUIT_STATE_VALUE } from './observability/metrics.js';
import type { CircuitBreaker, TripCause } from './resilience/breaker.js';
import type { Outcome } from './resilience/classify.js';
import { MemoryBreakerStore } from './resilience/store.js';
import { UpstreamStats } from './routing/stats.js';
import type { RedisState } from './state/redis.js';
import type { CandidateView, Price } from './routing/types.js';
import type { AdapterProvider, ChatAdapter } from './upstream/adapter.js';
import { anthropicAdapter } from './upstream/adapters/anthropic.js';
import { openaiAdapter } from './upstream/adapters/openai.js';
import { ProviderClient } from './upstream/client.js';
import { describeFit, ParamFit, type FieldFit } from './upstream/param-fit.js';
import type { Logger } from './observability/logger.js';
import { Scrubber } from './observability/scrub.js';
import { KeySet } from './http/auth.js';

/**
 * Scale-out: how long an ended open is held while this replica asks for the fleet's probe lease (a Redis
 * command's timeout, 1 s, and the wake-up's own lateness); past it, the open lapses here whatever Redis says.
 */
const PROBE_LEASE_WAIT_MS = 2_000;

export interface ProviderRuntime {
  readonly name: string;
  readonly kind: 'openai' | 'anthropic';
  readonly config: ProviderConfig;
  readonly adapter: ChatAdapter;
  readonly client: ProviderClient;
  readonly adapterProvider: AdapterProvider;
}

/** Per-upstream metric children, resolved once (`labels()` is not free on the hot path). */
export interface UpstreamMetrics {
  readonly inflight: ReturnType<Metrics['inflight']['labels']>;
  readonly ttft: ReturnType<Metrics['ttft']['labels']>;
  readonly tpot: ReturnType<Metrics['tpot']['labels']>;
  readonly promptTokens: ReturnType<Metrics['tokens']['labels']>;
  readonly completionTokens: ReturnType<Metrics['tokens']['labels']>;
  readonly cost: ReturnType<Metrics['cost']['labels']>;
  readonly attempts: Record<Outcome, ReturnType<Metrics['attempts']['labels']>>;
  /** A reload removed the upstream and its series: a request of the old config still ending counts nowhere. */
  seriesGone: boolean;
}

export interface Upstream {
  /** `provider/model`. */
  readonly id: string;
  readonly provider: ProviderRuntime;
  readonly model: ModelConfig;
  /** The model name sent upstream. */
  readonly upstreamModel: string;
  readonly capabilities: ReadonlySet<Capability>;
  readonly embeddings: boolean;
  readonly stats: UpstreamStats;
  readonly breaker: CircuitBreaker;
  readonly metrics: UpstreamMetrics;
  /**
   * The request fields this upstream was found to refuse, and how they are fitted (an Anthropic upstream:
   * only the most output tokens it writes).
   */
  readonly fit: ParamFit;
}

/** One upstream as a member of one route: its position and weight there. */
export interface RouteTarget extends CandidateView {
  readonly upstream: Upstream;
}

export interface RouteRuntime {
  readonly name: string;
  readonly strategy: StrategyName;
  readonly weights: { readonly cost: number; readonly latency: number; readonly reliability: number };
  /** Flat routes: the targets. Tiered routes: every tier's targets (for /v1/models, status). */
  readonly targets: readonly RouteTarget[];
  readonly tiers: Readonly<Partial<Record<TierName, readonly RouteTarget[]>>> | undefined;
  readonly rules: readonly RuleConfig[];
  readonly defaultTier: TierName | undefined;
  readonly router: RouteConfig['router'];
  readonly onStreamFailure: 'terminate' | 'continue';
  readonly embeddings: boolean;
  /** A `provider/model` name addressed directly rather than a configured route. */
  readonly direct: boolean;
  /** Decision counter: rotates ties and round-robin. Mutable on purpose. */
  rotation: number;
  /**
   * A tiered route's counters, one per tier: each tier is a candidate set of its own, and requests that
   * alternate between tiers would otherwise show each tier the same turn every time.
   */
  readonly tierRotation?: Map<string, number>;
  /** Random draws `/router/explain` made ahead of this route's next real decision (routing/plan.ts). */
  readonly pendingRandom: number[];
  /** Where a round-robin turn is counted fleet-wide (state.backend redis); absent: this replica only. */
  readonly turns?: { readonly redis: Pick<RedisState, 'takeTurn'> | undefined };
}

/** What outlives a config reload: breakers and statistics of upstreams that remain, and the clock. */
export class SharedState {
  readonly stats = new Map<string, UpstreamStats>();
  readonly breakers: MemoryBreakerStore;
  /** Learned request fits, by upstream, server and model name: a reload that moves an upstream starts anew. */
  readonly fits = new Map<string, ParamFit>();
  /** Set by the current Runtime so a learned fit reaches its log. */
  onFit: ((upstreamId: string, param: string, fit: FieldFit, value: string | undefined) => void) | undefined;
  /** Set by the current Runtime so breaker transitions reach its metrics and log. */
  onTransition: ((upstreamId: string, to: string, cause: string | undefined) => void) | undefined;
  /** The fleet's shared state (`state.backend: redis`), told of every breaker this replica opens. */
  redis: RedisState | undefined;
  /** An open adopted from another replica is not published back. */
  #adopting = false;
  /** Pending wake-ups of open breakers, one each. */
  readonly #wakers = new Map<CircuitBreaker, NodeJS.Timeout>();
  /**
   * Breakers half-open here under the fleet's probe lease: their upstream's id (the lease given back when the
   * breaker is dropped or we close) and the tick that renews it while a probe is out.
   */
  readonly #leases = new Map<CircuitBreaker, { readonly id: string; readonly timer: NodeJS.Timeout }>();

  constructor(
    loaded: LoadedConfig,
    readonly now: () => number,
  ) {
    this.breakers = new MemoryBreakerStore(loaded.config.circuit_breaker, now, (id, t, breaker) => {
      // A breaker a reload dropped (a request still in flight on its upstream settles on it) speaks for no
      // upstream now: the one of that name since re-added has its own.
      if (this.breakers.peek(id) !== breaker) return;
      if (t.from !== t.to) this.onTransition?.(id, t.to, t.cause);
      const redis = this.redis;
      // This replica's probe decided: its lease is given back, and a close is news for the fleet.
      if (redis && t.from === 'half_open' && t.to !== 'half_open') {
        this.#stopRenewing(breaker);
        redis.endProbeLease(id);
        if (t.to === 'closed' && !this.#adopting) redis.publishClosed(id);
      }
      if (t.to !== 'open') return;
      // One replica of the fleet probes when the open ends (it takes the lease), not each: held until then.
      if (redis) breaker.hold(PROBE_LEASE_WAIT_MS);
      this.#wakeAfter(id, breaker, t.openMs);
      if (!this.#adopting) redis?.publishOpen(id, t.openMs, t.cause ?? 'errors');
    });
  }

  /**
   * Turns an open breaker half-open when its time is up, not at the next request: with no traffic the
   * transition (its metric and log line) would wait for one while the gauge and /router/status showed it.
   */
  #wakeAfter(id: string, breaker: CircuitBreaker, ms: number): void {
    // One wake-up per breaker: each open or extension replaces the last (wake() re-arms for what is left).
    clearTimeout(this.#wakers.get(breaker));
    // At most Node's longest timer (past it one fires at once): wake() re-arms for the rest.
    const timer = setTimeout(
      () => {
        this.#wakers.delete(breaker);
        // A breaker a reload dropped (its upstream gone, maybe back since with a new one) says nothing.
        if (this.breakers.peek(id) !== breaker) return;
        const left = breaker.wake();
        if (left > 0) this.#wakeAfter(id, breaker, left);
        else if (breaker.held) this.#askProbeLease(id, breaker);
      },
      Math.min(ms + 1, MAX_TIMER_MS),
    );
    timer.unref();
    this.#wakers.set(breaker, timer);
  }

  /**
   * A held open has ended: the replica that takes the fleet's probe lease for this upstream goes half-open
   * and probes; the others stay open and ask again when the lease would lapse, unless its holder's close
   * (`adoptClose`) or re-open (an adopted open) reaches them first. Without Redis, this replica probes.
   */
  #askProbeLease(id: string, breaker: CircuitBreaker): void {
    const redis = this.redis;
    const episode = breaker.snapshot().opens;
    const probeHere = (): void => {
      breaker.release();
      breaker.wake();
    };
    const leaseMs = breaker.baseOpenMs;
    if (!redis) {
      probeHere();
      return;
    }
    // Redis away: this replica probes on its own meanwhile, and asks for the lease once Redis is back.
    const probeUnleased = (): void => {
      probeHere();
      this.#renewWhileProbing(id, breaker, leaseMs, Number.NEGATIVE_INFINITY);
    };
    if (!redis.connected) {
      probeUnleased();
      return;
    }
    const askedAt = this.now();
    redis.takeProbeLease(id, leaseMs).then(
      (won) => {
        // Still this open, still held (not closed, re-opened or dropped by a reload meanwhile)? If not, a
        // lease won is given back at once, not kept from the others for open_ms.
        if (this.breakers.peek(id) !== breaker || breaker.snapshot().opens !== episode || !breaker.held) {
          if (won) redis.endProbeLease(id);
          return;
        }
        if (won) {
          probeHere();
          this.#renewWhileProbing(id, breaker, leaseMs, askedAt);
          return;
        }
        breaker.hold(leaseMs + PROBE_LEASE_WAIT_MS);
        this.#wakeAfter(id, breaker, leaseMs);
      },
      () => {
        if (this.breakers.peek(id) === breaker && breaker.held) probeUnleased();
      },
    );
  }

  /**
   * The lease is this replica's for `leaseMs`; a trial may take longer (an LLM answer, success_threshold
   * trials in a row): renewed while a probe is out, so another replica does not probe alongside. A holder
   * with no probe out lets it lapse: one that gets no traffic for the upstream must not keep the fleet open;
   * it then begins no trial (the breaker's probeGate) until it holds the lease again. `askedAt` -Infinity:
   * half-open without the lease (Redis was away), asked for once Redis answers.
   */
  #renewWhileProbing(id: string, breaker: CircuitBreaker, leaseMs: number, askedAt: number): void {
    this.#stopRenewing(breaker);
    // Until when the lease is ours, on our clock: counted from when we asked, so never past Redis's PX.
    let leaseUntil = askedAt + leaseMs;
    // A request wanted to probe here while the lease was not ours: ask for it again at the next tick.
    let wanted = false;
    let away = false;
    const renew = (): void => {
      const redis = this.redis;
      if (this.breakers.peek(id) !== breaker || !redis?.connected) return;
      const sent = this.now();
      redis.takeProbeLease(id, leaseMs).then(
        (ours) => {
          if (this.#leases.get(breaker)?.timer === timer) leaseUntil = ours ? sent + leaseMs : 0;
        },
        () => undefined,
      );
    };
    // Trials begin only under the lease: one that lapsed while this replica was idle, and that another then
    // took, must not let a trial start here alongside its holder's.
    breaker.probeGate = () => {
      if (this.now() < leaseUntil || !this.redis?.connected) return true; // no Redis: each replica probes
      wanted = true;
      return false;
    };
    // Renewed as each trial begins too: the ticks run from the win, so a trial begun after one was renewed
    // only at the next — the instant the lease lapsed and the other replicas asked again.
    breaker.onProbe = renew;
    const timer = setInterval(
      () => {
        const redis = this.redis;
        if (this.breakers.peek(id) !== breaker || breaker.state !== 'half_open' || redis === undefined) {
          this.#stopRenewing(breaker);
          return;
        }
        if (!redis.connected) {
          // A restarted Redis has lost the lease: ours no longer, whatever our clock says.
          leaseUntil = Number.NEGATIVE_INFINITY;
          away = true;
          return;
        }
        if (away) {
          // Back: ask for the lease again (ours, or the gate stays shut while another replica holds it).
          away = false;
          renew();
        } else if (breaker.snapshot().probesInFlight > 0) renew();
        else if (wanted && this.now() >= leaseUntil) {
          wanted = false;
          renew();
        }
      },
      Math.min(Math.max(100, Math.floor(leaseMs / 2)), MAX_TIMER_MS),
    );
    timer.unref();
    this.#leases.set(breaker, { id, timer });
  }

  #stopRenewing(breaker: CircuitBreaker): void {
    breaker.onProbe = undefined;
    breaker.probeGate = undefined;
    const lease = this.#leases.get(breaker);
    if (lease === undefined) return;
    clearInterval(lease.timer);
    this.#leases.delete(breaker);
  }

  /** Another replica's probe closed `upstreamId`'s breaker: closed here too if its open has ended. */
  adoptClose(upstreamId: string): void {
    this.#adopting = true;
    try {
      this.breakers.peek(upstreamId)?.adoptClose();
    } finally {
      this.#adopting = false;
    }
  }

  /**
   * Keeps the breakers of `ids` (a reload's upstreams): the others are dropped with their wake-ups, which
   * would hold them (and fire for nothing) until their open ended — up to 24 h for a Retry-After.
   */
  retainBreakers(ids: Iterable<string>): void {
    this.breakers.retain(ids);
    const kept = new Set<CircuitBreaker>();
    for (const [, breaker] of this.breakers.entries()) kept.add(breaker);
    for (const [breaker, timer] of this.#wakers) {
      if (kept.has(breaker)) continue;
      clearTimeout(timer);
      this.#wakers.delete(breaker);
    }
    for (const [breaker, { id }] of this.#leases) {
      if (kept.has(breaker)) continue;
      // Its upstream is gone here: the replicas that still have it need not wait out the lease.
      this.redis?.endProbeLease(id);
      this.#stopRenewing(breaker);
    }
  }

  /** Stops the breakers' wake-ups (the gateway is closing). */
  close(): void {
    for (const timer of this.#wakers.values()) clearTimeout(timer);
    this.#wakers.clear();
    for (const { id, timer } of this.#leases.values()) {
      clearInterval(timer);
      // A replica going away gives its leases back: the fleet probes at once, not after open_ms.
      this.redis?.endProbeLease(id);
    }
    this.#leases.clear();
  }

  /** Opens `upstreamId`'s breaker as another replica did, without publishing it again. */
  adoptOpen(upstreamId: string, remainingMs: number, cause: TripCause): void {
    this.#adopting = true;
    try {
      this.breakers.get(upstreamId).adoptOpen(remainingMs, cause);
    } finally {
      this.#adopting = false;
    }
  }

  fitFor(id: string, baseUrl: string, model: string, limitsOnly: boolean): ParamFit {
    const key = `${id}\n${baseUrl}\n${model}\n${limitsOnly ? 'limits' : 'all'}`;
    let f = this.fits.get(key);
    if (!f) {
      f = new ParamFit((param, fit, value) => this.onFit?.(id, param, fit, value), limitsOnly);
      this.fits.set(key, f);
    }
    return f;
  }

  statsFor(id: string): UpstreamStats {
    let s = this.stats.get(id);
    if (!s) {
      s = new UpstreamStats(this.now);
      this.stats.set(id, s);
    }
    return s;
  }
}

const DEFAULT_WEIGHTS = { cost: 0.4, latency: 0.4, reliability: 0.2 };

function strategyOf(
  s: RouteConfig['strategy'] | undefined,
  fallback: StrategyName,
): {
  name: StrategyName;
  weights?: HybridWeights;
} {
  if (s === undefined) return { name: fallback };
  if (typeof s === 'string') return { name: s };
  return { name: 'hybrid', weights: s.hybrid };
}

/** The config turned into live objects: providers with their pools, upstreams, routes. Immutable but for counters. */
export class Runtime {
  readonly routes = new Map<string, RouteRuntime>();
  readonly upstreams = new Map<string, Upstream>();
  readonly providers = new Map<string, ProviderRuntime>();
  readonly scrubber: Scrubber;
  readonly clientKeys: KeySet;
  readonly adminKeys: KeySet;
  readonly passthrough: ProviderRuntime | undefined;
  /** Requests running on this config (held by chat.ts ownReply), and who waits for them to end. */
  #requests = 0;
  #drained: (() => void) | undefined;

  constructor(
    readonly loaded: LoadedConfig,
    readonly shared: SharedState,
    readonly metrics: Metrics,
    readonly logger: Logger,
    previous?: Runtime,
  ) {
    const config = loaded.config;
    this.scrubber = new Scrubber(loaded.secrets);
    this.clientKeys = new KeySet(config.server.api_keys);
    this.adminKeys = new KeySet(config.server.admin_key ? [config.server.admin_key] : []);
    shared.breakers.setConfig(config.circuit_breaker);

    const fits = new Set<ParamFit>();
    for (const p of config.providers) {
      if (loaded.disabledProviders.has(p.name)) continue;
      const prev = previous?.providers.get(p.name);
      const reuse = prev !== undefined && sameConnection(prev.config, p);
      const provider: ProviderRuntime = {
        name: p.name,
        kind: p.kind,
        config: p,
        adapter: p.kind === 'anthropic' ? anthropicAdapter : openaiAdapter,
        client: reuse ? prev.client.use() : new ProviderClient(p).use(),
        adapterProvider: {
          name: p.name,
          apiKey: p.api_key,
          headers: p.headers,
          anthropicVersion: p.anthropic_version,
          defaultMaxTokens: p.default_max_tokens,
        },
      };
      this.providers.set(p.name, provider);
      for (const m of p.models) {
        const id = `${p.name}/${m.name}`;
        const labels = { provider: p.name, model: m.name };
        const upstreamModel = m.upstream_name ?? m.name;
        const fit = shared.fitFor(id, p.base_url, upstreamModel, p.kind === 'anthropic');
        fits.add(fit);
        this.upstreams.set(id, {
          id,
          provider,
          model: m,
          upstreamModel,
          fit,
          capabilities: new Set(m.capabilities),
          embeddings: m.capabilities.includes('embeddings'),
          stats: shared.statsFor(id),
          breaker: shared.breakers.get(id),
          metrics: {
            inflight: metrics.inflight.labels(labels),
            ttft: metrics.ttft.labels(labels),
            tpot: metrics.tpot.labels(labels),
            promptTokens: metrics.tokens.labels({ ...labels, kind: 'prompt' }),
            completionTokens: metrics.tokens.labels({ ...labels, kind: 'completion' }),
            cost: metrics.cost.labels(labels),
            attempts: {
              success: metrics.attempts.labels({ ...labels, outcome: 'success' }),
              error: metrics.attempts.labels({ ...labels, outcome: 'error' }),
              timeout: metrics.attempts.labels({ ...labels, outcome: 'timeout' }),
              rate_limited: metrics.attempts.labels({ ...labels, outcome: 'rate_limited' }),
              client_error: metrics.attempts.labels({ ...labels, outcome: 'client_error' }),
            },
            seriesGone: false,
          },
        });
        metrics.circuitState.labels(labels).set(CIRCUIT_STATE_VALUE[shared.breakers.get(id).state]);
      }
    }
    shared.retainBreakers(this.upstreams.keys());
    for (const id of [...shared.stats.keys()]) if (!this.upstreams.has(id)) shared.stats.delete(id);
    for (const [key, f] of [...shared.fits]) if (!fits.has(f)) shared.fits.delete(key);

    const fallback = strategyOf(config.routing.default_strategy, 'hybrid');
    for (const [name, rc] of Object.entries(config.routes)) {
      const s = strategyOf(rc.strategy, fallback.name);
      const w =
        s.weights ?? (s.name === 'hybrid' && rc.strategy === undefined ? fallback.weights : undefined);
      const tiers = rc.tiers
        ? Object.fromEntries(Object.entries(rc.tiers).map(([t, list]) => [t, this.targetsOf(list ?? [])]))
        : undefined;
      const targets = rc.targets
        ? this.targetsOf(rc.targets)
        : uniqueTargets(Object.values(tiers ?? {}).flat());
      this.routes.set(name, {
        name,
        strategy: s.name,
        weights: w
          ? { cost: w.cost_weight, latency: w.latency_weight, reliability: w.reliability_weight }
          : DEFAULT_WEIGHTS,
        targets,
        tiers,
        rules: rc.rules ?? [],
        defaultTier: rc.default_tier,
        router: rc.router,
        onStreamFailure: rc.on_stream_failure,
        embeddings: targets.some((t) => t.upstream.embeddings),
        direct: false,
        rotation: previous?.routes.get(name)?.rotation ?? 0,
        ...(tiers ? { tierRotation: new Map(previous?.routes.get(name)?.tierRotation) } : {}),
        pendingRandom: [],
        turns: shared,
      });
    }
    // Every upstream is also addressable as `provider/model` (a route of one, its own failover chain).
    for (const up of this.upstreams.values()) {
      if (this.routes.has(up.id)) continue;
      this.routes.set(up.id, {
        name: up.id,
        strategy: 'priority',
        weights: DEFAULT_WEIGHTS,
        targets: [makeTarget(up, 0, up.model.weight)],
        tiers: undefined,
        rules: [],
        defaultTier: undefined,
        router: undefined,
        onStreamFailure: 'terminate',
        embeddings: up.embeddings,
        direct: true,
        rotation: 0,
        pendingRandom: [],
      });
    }
    const pass = config.server.passthrough;
    this.passthrough = pass === undefined ? undefined : this.providers.get(pass);

    shared.onTransition = (id, to, cause) => {
      const up = this.upstreams.get(id);
      if (!up) return;
      const labels = { provider: up.provider.name, model: up.model.name };
      metrics.circuitTransitions.inc({ ...labels, to });
      metrics.circuitState.set(labels, CIRCUIT_STATE_VALUE[to as keyof typeof CIRCUIT_STATE_VALUE] ?? 0);
      logger.warn({ upstream: id, to, cause }, `circuit breaker of ${id} is now ${to}`);
    };
    shared.onFit = (id, param, fit, value) => {
      logger.warn(
        { upstream: id, param },
        `upstream ${id} refused ${describeFit(param, fit, value)}; its requests are fitted so from now on`,
      );
    };
  }

  private targetsOf(list: readonly TargetConfig[]): RouteTarget[] {
    const out: RouteTarget[] = [];
    list.forEach((t) => {
      const up = this.upstreams.get(targetName(t));
      if (!up) return; // its provider is disabled (the loader already rejected unknown names)
      out.push(
        makeTarget(up, out.length, typeof t === 'string' ? up.model.weight : (t.weight ?? up.model.weight)),
      );
    });
    return out;
  }

  /** A request starts on this config (chat.ts ownReply); its pools stay open until it is released. */
  hold(): void {
    this.#requests++;
  }

  release(): void {
    if (--this.#requests === 0) this.#drained?.();
  }

  /**
   * A newer config is live. Once this one's requests are done (one failing over still dispatches new
   * attempts on these pools), its pools are released: each closes when no runtime uses it any more.
   */
  async retire(): Promise<void> {
    if (this.#requests > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    await Promise.all([...this.providers.values()].map((p) => p.client.release().catch(() => undefined)));
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.providers.values()].map((p) => p.client.destroy().catch(() => undefined)));
  }
}

function makeTarget(upstream: Upstream, order: number, weight: number): RouteTarget {
  const price: Price = upstream.model.price;
  return { id: upstream.id, order, weight, price, stats: upstream.stats, upstream };
}

function uniqueTargets(list: RouteTarget[]): RouteTarget[] {
  const seen = new Set<string>();
  const out: RouteTarget[] = [];
  for (const t of list) {
    if (seen.has(t.id)) continue;
    seen.add(t.id);
    out.push(makeTarget(t.upstream, out.length, t.weight));
  }
  return out;
}

function sameConnection(a: ProviderConfig, b: ProviderConfig): boolean {
  return (
    a.base_url === b.base_url &&
    a.kind === b.kind && // the kind decides the client's base path
    a.max_concurrency === b.max_concurrency &&
    JSON.stringify(a.timeouts) === JSON.stringify(b.timeouts)
  );
}
