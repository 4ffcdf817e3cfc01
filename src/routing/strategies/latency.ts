/**
 * `latency`: lowest expected latency from live statistics (SPEC §2): peak-EWMA time to first token plus
 * expected output ÷ observed tokens/s, scaled by load. Upstreams with fewer than `minSamples` samples are
 * explored on a bounded share of decisions (exactly `explorationShare` in expectation) until measured.
 */
import type { CandidateView, RankedCandidate, StrategyContext, UpstreamStatsView } from '../types.js';
import {
  sharedExpectedOutput,
  explore,
  finishRanking,
  fmtInt,
  fmtMs,
  fmtPct,
  GROUP_LAST,
  GROUP_MAIN,
  LowestFigures,
  fixed,
  plural,
  scored,
  type ReasonSource,
  type Scored,
} from './rank.js';

function finiteNonNeg(x: number | undefined): x is number {
  return x !== undefined && x >= 0 && Number.isFinite(x);
}

/** Expected ms for one attempt before load scaling; NaN when the upstream has no usable figure. */
export function baseLatencyMs(stats: UpstreamStatsView, outputTokens: number): number {
  const ttft = stats.ttftMs;
  const tps = stats.tokensPerSec;
  const lat = stats.latencyMs;
  if (finiteNonNeg(ttft) && finiteNonNeg(tps) && tps > 0) return ttft + (outputTokens / tps) * 1000;
  // No throughput figure yet (non-streamed traffic): the whole-attempt EWMA, for the answers it measured.
  const whole = finiteNonNeg(ttft)
    ? finiteNonNeg(lat) && lat > ttft
      ? lat
      : ttft
    : finiteNonNeg(lat)
      ? lat
      : NaN;
  return whole * longerBy(stats.meanOutputTokens, outputTokens);
}

/**
 * How much longer than its measured answers an upstream with no tokens/s figure is expected to take for
 * `outputTokens`: their mean output in that time, at that pace (never shorter: the time holds the prompt's too).
 * Without it, 2,000 tokens were quoted at the time of its 10-token answers, 100 times too fast.
 */
function longerBy(meanOutputTokens: number | undefined, outputTokens: number): number {
  return finiteNonNeg(meanOutputTokens) && meanOutputTokens > 0 && outputTokens > meanOutputTokens
    ? outputTokens / meanOutputTokens
    : 1;
}

/** In flight + 1: an upstream already serving k requests is expected to be k+1 times slower. */
export function loadFactor(stats: Pick<UpstreamStatsView, 'inFlight'>): number {
  const f = stats.inFlight;
  return f > 0 && Number.isFinite(f) ? f + 1 : 1;
}

/**
 * An upstream whose last measurement is this much older than the freshest candidate's counts as
 * unmeasured again: one that looked slow gets no traffic under `latency`, so without this it would never
 * be measured again after it recovers. Relative to the freshest, so a quiet period stales nobody.
 */
const STALE_AFTER_MS = 60_000;

/** The most recent measurement among the candidates (undefined when none has one). */
export function freshestSample(candidates: readonly CandidateView[]): number | undefined {
  let freshest: number | undefined;
  for (const c of candidates) {
    const at = c.stats.lastSampleAt;
    if (at !== undefined && (freshest === undefined || at > freshest)) freshest = at;
  }
  return freshest;
}

export function isMeasured(
  stats: UpstreamStatsView,
  ctx: StrategyContext,
  baseMs: number,
  freshest: number | undefined,
): boolean {
  if (stats.samples < ctx.minSamples || !Number.isFinite(baseMs)) return false;
  const at = stats.lastSampleAt;
  return at === undefined || freshest === undefined || freshest - at <= STALE_AFTER_MS;
}

/** The figures a latency reason quotes, read at decision time (the reason may be written later). */
export interface LatencyFigures {
  readonly ttftMs: number | undefined;
  readonly tokensPerSec: number | undefined;
  readonly meanOutputTokens: number | undefined;
  readonly inFlight: number;
}

/** tok/s as the estimate used it: a slow generator's 0.3 tok/s is not "0 tok/s". */
function fmtTps(tps: number): string {
  return tps >= 10 ? fmtInt(tps) : fixed(tps, tps >= 1 ? 1 : 2);
}

export function latencyReason(stats: LatencyFigures, outputTokens: number, estMs: number): string {
  const tps = stats.tokensPerSec;
  const ttft = stats.ttftMs;
  let parts: string;
  if (finiteNonNeg(ttft) && finiteNonNeg(tps) && tps > 0) {
    parts = 'ttft ' + fmtMs(ttft) + ' + ' + fmtInt(outputTokens) + ' tok / ' + fmtTps(tps) + ' tok/s';
  } else {
    const k = longerBy(stats.meanOutputTokens, outputTokens);
    const whole = estMs / loadFactor(stats) / k;
    parts =
      'attempt ' +
      fmtMs(whole) +
      (k > 1
        ? ' x ' + fmtInt(outputTokens) + ' / ' + fmtInt(stats.meanOutputTokens ?? 0) + ' tok (its mean)'
        : '') +
      ', no tok/s yet';
  }
  return 'latency ' + fmtMs(estMs) + ' est. (' + parts + ') x load ' + fmtInt(loadFactor(stats));
}

/** The figures of a latency reason, read at decision time; written only if someone reads it. */
class LatencyReason implements LatencyFigures, ReasonSource {
  constructor(
    readonly ttftMs: number | undefined,
    readonly tokensPerSec: number | undefined,
    readonly meanOutputTokens: number | undefined,
    readonly inFlight: number,
    private readonly outputTokens: number,
    private readonly estMs: number,
  ) {}

  text(): string {
    return latencyReason(this, this.outputTokens, this.estMs);
  }
}

export function unmeasuredReason(samples: number, what: string): string {
  return 'unmeasured (' + plural(Number.isFinite(samples) ? samples : 0, 'sample') + '): ' + what;
}

export function exploringWhat(ctx: StrategyContext): string {
  return 'exploring (' + fmtPct(ctx.explorationShare) + ' of decisions)';
}

export const HELD_BACK = 'held back until measured';

const LATENCY = new LowestFigures();

export function latencyStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const items = new Array<Scored<C>>(n);
  let unmeasured: Scored<C>[] | undefined;
  const lowest = LATENCY.reset();
  // One expected output for all: comparing each on its own mean favours upstreams that answer briefly.
  const out = sharedExpectedOutput(candidates, ctx).tokens;
  const freshest = freshestSample(candidates);
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    const base = baseLatencyMs(c.stats, out);
    const it = scored(c, base * loadFactor(c.stats));
    items[i] = it;
    if (isMeasured(c.stats, ctx, base, freshest)) {
      lowest.add(it.raw);
      it.reason = new LatencyReason(
        c.stats.ttftMs,
        c.stats.tokensPerSec,
        c.stats.meanOutputTokens,
        c.stats.inFlight,
        out,
        it.raw,
      );
    } else {
      it.group = GROUP_LAST;
      (unmeasured ??= []).push(it);
    }
  }
  if (unmeasured === undefined) {
    for (let i = 0; i < n; i++) items[i]!.score = lowest.score(items[i]!.raw);
  } else if (unmeasured.length === n) {
    // Nothing to compare: spread the first measurements evenly.
    for (let i = 0; i < n; i++) {
      const it = items[i]!;
      it.score = 1;
      it.reason = unmeasuredReason(it.candidate.stats.samples, 'rotating');
    }
  } else {
    for (let i = 0; i < n; i++) {
      const it = items[i]!;
      if (it.group === GROUP_MAIN) it.score = lowest.score(it.raw);
    }
    const picked = explore(unmeasured, ctx);
    for (const it of unmeasured) {
      const first = it === picked;
      it.score = first ? 1 : 0;
      it.reason = unmeasuredReason(it.candidate.stats.samples, first ? exploringWhat(ctx) : HELD_BACK);
    }
  }
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
