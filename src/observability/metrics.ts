import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { FastCounter, FastGauge, FastHistogram } from './fast-metrics.js';

/** Latency buckets in seconds, from sub-millisecond gateway overhead to multi-minute generations. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** To minutes: a JSON answer's TTFT is its whole generation, and a reasoning model's first content can take that. */
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60, 120, 300];
const TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5];
const OVERHEAD_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05];

export const CIRCUIT_STATE_VALUE = { closed: 0, half_open: 1, open: 2 } as const;

/**
 * Every metric of SPEC §5, on a registry of its own (one per app, so tests and reloads never collide).
 * Label values come from configuration (route, provider, model names), never from raw client input.
 */
export function createMetrics(opts: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const r = [registry];
  const metrics = {
    registry,
    requests: new FastCounter({
      name: 'llm_router_requests_total',
      help: 'Requests answered, by route, serving upstream and HTTP status.',
      labelNames: ['route', 'provider', 'model', 'status'] as const,
      registers: r,
    }),
    requestDuration: new FastHistogram({
      name: 'llm_router_request_duration_seconds',
      help: 'Time from request received to response end.',
      labelNames: ['route', 'provider', 'model', 'stream'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    ttft: new FastHistogram({
      name: 'llm_router_time_to_first_token_seconds',
      help: 'Upstream time to first content token (streams) or to the full answer (non-streaming).',
      labelNames: ['provider', 'model'] as const,
      buckets: TTFT_BUCKETS,
      registers: r,
    }),
    tpot: new FastHistogram({
      name: 'llm_router_time_per_output_token_seconds',
      help: '(total - TTFT) / completion tokens, once per request.',
      labelNames: ['provider', 'model'] as const,
      buckets: TPOT_BUCKETS,
      registers: r,
    }),
    overhead: new FastHistogram({
      name: 'llm_router_overhead_seconds',
      help: 'Time the gateway itself added: total minus time waiting on upstreams.',
      labelNames: ['route'] as const,
      buckets: OVERHEAD_BUCKETS,
      registers: r,
    }),
    attempts: new FastCounter({
      name: 'llm_router_upstream_attempts_total',
      help: 'Upstream attempts by outcome.',
      labelNames: ['provider', 'model', 'outcome'] as const,
      registers: r,
    }),
    failovers: new FastCounter({
      name: 'llm_router_failovers_total',
      help: 'Times a request moved on from a failed upstream.',
      labelNames: ['route', 'from_provider', 'reason'] as const,
      registers: r,
    }),
    circuitState: new Gauge({
      name: 'llm_router_circuit_state',
      help: 'Breaker state per upstream: 0 closed, 1 half-open, 2 open.',
      labelNames: ['provider', 'model'] as const,
      registers: r,
    }),
    circuitTransitions: new Counter({
      name: 'llm_router_circuit_transitions_total',
      help: 'Breaker transitions by target state.',
      labelNames: ['provider', 'model', 'to'] as const,
      registers: r,
    }),
    tokens: new FastCounter({
      name: 'llm_router_tokens_total',
      help: 'Tokens by kind, as reported by upstreams (estimated when they report none).',
      labelNames: ['provider', 'model', 'kind'] as const,
      registers: r,
    }),
    cost: new FastCounter({
      name: 'llm_router_cost_usd_total',
      help: 'Spend in US dollars from configured prices.',
      labelNames: ['provider', 'model'] as const,
      registers: r,
    }),
    decisions: new FastCounter({
      name: 'llm_router_routing_decisions_total',
      help: 'Routing decisions by route, strategy and first choice.',
      labelNames: ['route', 'strategy', 'provider'] as const,
      registers: r,
    }),
    inflight: new FastGauge({
      name: 'llm_router_inflight_requests',
      help: 'Requests in flight per upstream.',
      labelNames: ['provider', 'model'] as const,
      registers: r,
    }),
    quotaUsed: new Gauge({
      name: 'llm_router_quota_used',
      help: 'What the last 60 s used of an upstream per-minute budget: kind requests (rpm) or tokens (tpm).',
      labelNames: ['provider', 'model', 'kind'] as const,
      registers: r,
    }),
    quotaLimit: new Gauge({
      name: 'llm_router_quota_limit',
      help: 'An upstream per-minute budget as configured: kind requests (rpm) or tokens (tpm).',
      labelNames: ['provider', 'model', 'kind'] as const,
      registers: r,
    }),
    routerRequests: new Counter({
      name: 'llm_router_llm_router_requests_total',
      help: 'LLM router (tier classifier) calls by outcome.',
      labelNames: ['tier', 'outcome'] as const,
      registers: r,
    }),
    routerDuration: new Histogram({
      name: 'llm_router_llm_router_duration_seconds',
      help: 'LLM router call duration.',
      labelNames: ['tier'] as const,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5],
      registers: r,
    }),
    streamFailures: new Counter({
      name: 'llm_router_stream_failures_total',
      help: 'Streams cut after their commit, by policy.',
      labelNames: ['provider', 'model', 'policy'] as const,
      registers: r,
    }),
    configReloads: new Counter({
      name: 'llm_router_config_reloads_total',
      help: 'Config reloads by result.',
      labelNames: ['result'] as const,
      registers: r,
    }),
  };
  // Both series exist from the start, so `increase()` sees the first failure (an absent series has no rate).
  metrics.configReloads.labels({ result: 'success' }).inc(0);
  metrics.configReloads.labels({ result: 'failure' }).inc(0);
  return metrics;
}

export type Metrics = ReturnType<typeof createMetrics>;

/**
 * Labelled children resolved once per label set, through nested Maps keyed by the label values as they are
 * (the route's and upstream's own interned strings, the status as a number): building a joined key string
 * per request cost more than the lookup it saved. Bounded, since label values come from config and HTTP
 * statuses (cleared, not grown, past the bound).
 */
export class ChildCache<T> {
  private readonly root = new Map<string | number, unknown>();
  private size = 0;

  constructor(
    private readonly make: (values: readonly (string | number)[]) => T,
    private readonly maxEntries = 10_000,
  ) {}

  get(...values: (string | number)[]): T {
    let level = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      let next = level.get(values[i]!) as Map<string | number, unknown> | undefined;
      if (next === undefined) {
        next = new Map();
        level.set(values[i]!, next);
      }
      level = next;
    }
    let child = level.get(values[last]!) as T | undefined;
    if (child === undefined) {
      if (++this.size > this.maxEntries) {
        this.root.clear();
        this.size = 0;
        return this.get(...values);
      }
      child = this.make(values);
      level.set(values[last]!, child);
    }
    return child;
  }

  /** Forgets every child (their metric dropped some series): each is looked up again at its next use. */
  clear(): void {
    this.root.clear();
    this.size = 0;
  }
}
