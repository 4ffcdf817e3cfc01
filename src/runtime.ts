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
import type { Metrics } from './observability/metrics.js';
import { CIRCUIT_STATE_VALUE } from './observability/metrics.js';
import type { CircuitBreaker } from './resilience/breaker.js';
import type { Quota } from './resilience/quota.js';
import type { Outcome } from './resilience/classify.js';
import type { UpstreamStats } from './routing/stats.js';
import type { RedisState } from './state/redis.js';
import type { SharedState } from './state/shared-state.js';
import type { CandidateView, Price } from './routing/types.js';
import type { AdapterProvider, ChatAdapter } from './upstream/adapter.js';
import { anthropicAdapter } from './upstream/adapters/anthropic.js';
import { openaiAdapter } from './upstream/adapters/openai.js';
import { ProviderClient } from './upstream/client.js';
import { describeFit, type ParamFit } from './upstream/param-fit.js';
import type { Logger } from './observability/logger.js';
import { Scrubber } from './observability/scrub.js';
import { credentialLike, providerSecrets } from './config/secrets.js';
import { KeySet } from './http/auth.js';

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
  /** The deployment's per-minute budget (`rpm`, `tpm`), when it has one. */
  readonly quota: Quota | undefined;
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
  /**
   * Counters of the requests that pin a provider or ask for another strategy, by tier, provider and
   * strategy: theirs are other candidate lists, and counted on the route's own they took its turns (every
   * unpinned request between two pinned ones landed on the same upstream).
   */
  sideRotation?: Map<string, number>;
  /** Random draws `/router/explain` made ahead of this route's next real decision (routing/plan.ts). */
  readonly pendingRandom: number[];
  /** Where a round-robin turn is counted fleet-wide (state.backend redis); absent: this replica only. */
  readonly turns?: { readonly redis: Pick<RedisState, 'takeTurn'> | undefined };
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
  /**
   * The secrets but a provider's placeholder api_key (`ollama`, vLLM's `EMPTY`), which is no credential: a
   * client's own text holding the word (its `x-request-id`) is not one of our secrets.
   */
  readonly credentials: Scrubber;
  readonly clientKeys: KeySet;
  readonly adminKeys: KeySet;
  /**
   * The provider `server.passthrough` named at start: the proxy is built for it then (its base_url, timeouts,
   * pool), so a reload that names another (a restart applies that) must not send it the other's key.
   */
  readonly passthroughName: string | undefined;
  /** That provider in this config, whose key the proxy sends; undefined when a reload removed or disabled it. */
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
    // Only an api_key is a placeholder: a short base_url password or header value is a secret all the same.
    const placeholders = new Set<string>();
    const others = new Set<string>([...config.server.api_keys, config.server.admin_key ?? '']);
    for (const p of config.providers) {
      if (p.api_key !== undefined && !credentialLike(p.api_key)) placeholders.add(p.api_key);
      for (const v of providerSecrets(p)) if (v !== p.api_key) others.add(v);
    }
    this.credentials = new Scrubber(loaded.secrets.filter((v) => !placeholders.has(v) || others.has(v)));
    this.clientKeys = new KeySet(config.server.api_keys);
    this.adminKeys = new KeySet(config.server.admin_key ? [config.server.admin_key] : []);
    shared.breakers.setConfig(config.circuit_breaker);

    if (previous !== undefined) forgetChanged(previous, loaded, shared);
    const fits = new Set<ParamFit>();
    const pass = previous === undefined ? config.server.passthrough : previous.passthroughName;
    for (const p of config.providers) {
      if (loaded.disabledProviders.has(p.name)) continue;
      const prev = previous?.providers.get(p.name);
      // The passthrough provider's pool is the proxy's, made at start (its max_concurrency and connect_ms
      // take a restart): its routed requests keep it too, or the provider would get two pools' connections.
      const reuse =
        prev !== undefined &&
        (sameConnection(prev.config, p) ||
          (p.name === pass && prev.config.base_url === p.base_url && prev.config.kind === p.kind));
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
          quota: shared.quotaFor(id, m),
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
    for (const id of [...shared.quotas.keys()]) if (!this.upstreams.has(id)) shared.quotas.delete(id);
    for (const [key, f] of [...shared.fits]) if (!fits.has(f)) shared.fits.delete(key);

    const fallback = strategyOf(config.routing.default_strategy, 'hybrid');
    // A route's kind is its configured models' (load.ts refuses a mix), disabled providers' too: an
    // embeddings route whose only provider has no key is a dark embeddings route, not a chat one.
    const embeddingModels = new Set(
      config.providers.flatMap((p) =>
        p.models.filter((m) => m.capabilities.includes('embeddings')).map((m) => `${p.name}/${m.name}`),
      ),
    );
    for (const [name, rc] of Object.entries(config.routes)) {
      const was = previous?.routes.get(name);
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
        embeddings: (rc.targets ?? Object.values(rc.tiers ?? {}).flat()).some(
          (t) => t !== undefined && embeddingModels.has(targetName(t)),
        ),
        direct: false,
        // A reload (even of an unchanged file) goes on with the route's turns, and explain's draws.
        rotation: was?.rotation ?? 0,
        ...(tiers ? { tierRotation: new Map(was?.tierRotation) } : {}),
        ...(was?.sideRotation ? { sideRotation: new Map(was.sideRotation) } : {}),
        pendingRandom: [...(was?.pendingRandom ?? [])],
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
    this.passthroughName = pass;
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

/**
 * Whether a reloaded provider keeps its pool: what the pool is made of. The other timeouts are read from each
 * request's own config (bounds.ts): a reload of idle_ms alone made a second pool beside the first, still held
 * by streams, and the provider got twice max_concurrency connections.
 */
function sameConnection(a: ProviderConfig, b: ProviderConfig): boolean {
  return (
    a.base_url === b.base_url &&
    a.kind === b.kind && // the kind decides the client's base path
    a.max_concurrency === b.max_concurrency &&
    a.timeouts.connect_ms === b.timeouts.connect_ms
  );
}

/**
 * What a reload changed under an upstream's id: another server or model (`base_url`, `kind`, its upstream
 * model name) starts with a closed breaker and no statistics, as a new upstream does — the old server's open
 * breaker kept the fixed one out for up to `max_open_ms`; another key (401s open a breaker: the operator fixes
 * the key) starts with a closed breaker, its statistics kept (the same server's latency).
 */
function forgetChanged(previous: Runtime, loaded: LoadedConfig, shared: SharedState): void {
  const moved = new Set<string>();
  const rekeyed = new Set<string>();
  for (const p of loaded.config.providers) {
    const prev = previous.providers.get(p.name)?.config;
    if (prev === undefined) continue;
    const server = prev.base_url !== p.base_url || prev.kind !== p.kind;
    for (const m of p.models) {
      const id = `${p.name}/${m.name}`;
      const was = previous.upstreams.get(id);
      if (was === undefined) continue;
      if (server || was.upstreamModel !== (m.upstream_name ?? m.name)) moved.add(id);
      else if (prev.api_key !== p.api_key) rekeyed.add(id);
    }
  }
  shared.forget(moved, true);
  shared.forget(rekeyed, false);
}
