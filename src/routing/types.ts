/**
 * The shapes the routing core works on. Strategies are pure: they see read-only views of candidates and
 * their live statistics, plus an injected clock and random source, and return a ranked list.
 */

/** Live statistics of one upstream, as strategies see them. `undefined` = not measured yet. */
export interface UpstreamStatsView {
  /** Completed attempts that fed the latency/throughput estimates. */
  readonly samples: number;
  /** Peak-EWMA time to first token, ms (time to response headers+body for non-streaming calls). */
  readonly ttftMs: number | undefined;
  /** EWMA total latency of an attempt, ms. */
  readonly latencyMs: number | undefined;
  /** EWMA output tokens per second after the first token. */
  readonly tokensPerSec: number | undefined;
  /** EWMA completion tokens per successful answer. */
  readonly meanOutputTokens: number | undefined;
  /** Recent success rate in [0, 1], decaying with time; 1 when there is no data. */
  readonly successRate: number;
  /** Requests currently in flight to this upstream (from this process). */
  readonly inFlight: number;
  /** When the last measured answer arrived (the stats' clock), undefined before the first. */
  readonly lastSampleAt?: number | undefined;
}

export interface Price {
  readonly input_per_mtok: number;
  readonly output_per_mtok: number;
}

/** What a strategy needs to know about one candidate. The router passes its own richer objects. */
export interface CandidateView {
  /** `provider/model`. */
  readonly id: string;
  /** Position in the route's configured order (priority strategy, stable tie order). */
  readonly order: number;
  /** Weight for the `weighted` strategy (route target weight, else the model's). */
  readonly weight: number;
  readonly price: Price;
  readonly stats: UpstreamStatsView;
}

export interface StrategyContext {
  /** Estimated prompt tokens of this request. */
  readonly promptTokens: number;
  /** `max_tokens` / `max_completion_tokens` when the client gave one. */
  readonly requestedOutputTokens: number | undefined;
  /** Choices asked for (`n`): each is a completion of its own, paid for (1 when absent). */
  readonly choices?: number;
  /** Milliseconds, injected. */
  readonly now: number;
  /** [0, 1), injected. */
  readonly random: () => number;
  /** Candidates whose scores differ by at most this much tie. */
  readonly tieEpsilon: number;
  /** A per-route decision counter: rotates ties and drives round-robin. */
  readonly rotation: number;
  /** Bounded share of decisions that may go to an unmeasured upstream (latency, hybrid). */
  readonly explorationShare: number;
  /** Below this many samples an upstream counts as unmeasured. */
  readonly minSamples: number;
  /** Hybrid weights (only read by the hybrid strategy). */
  readonly weights: { readonly cost: number; readonly latency: number; readonly reliability: number };
}

export interface RankedCandidate<C extends CandidateView = CandidateView> {
  readonly candidate: C;
  /** In [0, 1]; 1 = best among this request's candidates. */
  readonly score: number;
  /** Human-readable, with the raw figures (dollars, ms, share...). */
  readonly reason: string;
}

/** Ranks candidates best first. Must not mutate its inputs; must return every candidate exactly once. */
export type Strategy = <C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
) => RankedCandidate<C>[];
