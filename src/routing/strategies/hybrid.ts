/**
 * `hybrid`: weighted sum of three factors, each normalised across this request's candidates so the
 * best is 1 (SPEC §2): cost (best / x), latency (best / x) and reliability (rate / best rate).
 *
 * Normalisation is relative to the best rather than min-max: with min-max two candidates 1 % apart
 * become 1 and 0, so a 1 % cheaper but 5× slower upstream could tie a fast one. Relative keeps
 * proportions, and one candidate or equal values still give 1 to all.
 *
 * Missing statistics: an upstream whose latency is unmeasured (fewer than `minSamples` samples) gets
 * a neutral latency factor of 0.5 and is held back behind the measured ones, except on the bounded
 * exploration share, exactly as in `latency`; without that bound a cheap unmeasured upstream would take
 * all traffic on cost alone. When every candidate is unmeasured, or the latency weight is 0, all are
 * ranked together on the factors they have. Reliability is never missing: the view reports 1 without data.
 */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { expectedCostUsd } from './cost.js';
import {
  HELD_BACK,
  baseLatencyMs,
  exploringWhat,
  freshestSample,
  isMeasured,
  loadFactor,
  unmeasuredReason,
} from './latency.js';
import {
  GROUP_LAST,
  GROUP_MAIN,
  clamp01,
  sharedExpectedOutput,
  explore,
  finishRanking,
  fmtMs,
  fmtPct,
  fmtUsd,
  fixed,
  higherIsBetter,
  LowestFigures,
  scored,
  type Reason,
  type ReasonSource,
  type Scored,
  reasonText,
} from './rank.js';

/** Latency factor of an unmeasured upstream: neither rewarded nor punished. */
const NEUTRAL_FACTOR = 0.5;

function weight(w: number): number {
  return w > 0 && Number.isFinite(w) ? w : 0;
}

function f2(x: number): string {
  return fixed(x, 2);
}

/** A weight as it counts, to three decimals at most: 0.4, 0.333. */
function fmtWeight(w: number): string {
  return String(Math.round(w * 1000) / 1000);
}

/**
 * "hybrid 0.93 = cost $0.000120 -> 1.00 x 0.5 + latency 212 ms -> 0.80 x 0.3 + reliability 99% -> 1.00 x 0.2;
 * score 0.97 = 0.93 / best 0.96": the weighted sum, then the score it gives (scores are rescaled so the best
 * candidate's is 1, and ties are read on them).
 */
class HybridReason implements ReasonSource {
  /** The best weighted sum among the ranked candidates, once known (an explored one has no such score). */
  best = NaN;

  constructor(
    private readonly score: number,
    private readonly costUsd: number,
    private readonly fc: number,
    /** NaN: unmeasured. */
    private readonly latMs: number,
    private readonly fl: number,
    private readonly relRate: number,
    private readonly fr: number,
    private readonly wc: number,
    private readonly wl: number,
    private readonly wr: number,
  ) {}

  text(): string {
    return (
      'hybrid ' +
      f2(this.score) +
      ' = cost ' +
      fmtUsd(this.costUsd) +
      ' -> ' +
      f2(this.fc) +
      ' x ' +
      fmtWeight(this.wc) +
      ' + latency ' +
      (Number.isNaN(this.latMs) ? 'unmeasured' : fmtMs(this.latMs)) +
      ' -> ' +
      f2(this.fl) +
      ' x ' +
      fmtWeight(this.wl) +
      ' + reliability ' +
      fmtPct(this.relRate) +
      ' -> ' +
      f2(this.fr) +
      ' x ' +
      fmtWeight(this.wr) +
      (this.best > 0
        ? '; score ' +
          f2(clamp01(this.score / this.best)) +
          ' = ' +
          f2(this.score) +
          ' / best ' +
          f2(this.best)
        : '')
    );
  }
}

/** An unmeasured candidate's reason: why it is explored or held back, then its own figures. */
class UnmeasuredReason implements ReasonSource {
  constructor(
    private readonly samples: number,
    private readonly what: string,
    private readonly own: Reason,
  ) {}

  text(): string {
    return unmeasuredReason(this.samples, this.what) + '; ' + reasonText(this.own);
  }
}

const COST = new LowestFigures();
const LATENCY = new LowestFigures();

export function hybridStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const wc = weight(ctx.weights.cost);
  const wl = weight(ctx.weights.latency);
  const wr = weight(ctx.weights.reliability);
  const sumW = wc + wl + wr;
  const items = new Array<Scored<C>>(n);
  const cost = new Array<number>(n);
  const lat = new Array<number>(n);
  const rel = new Array<number>(n);
  let unmeasured: Scored<C>[] | undefined;
  const lowCost = COST.reset();
  const lowLat = LATENCY.reset();
  let bestRel = 0;
  const out = sharedExpectedOutput(candidates, ctx).tokens;
  const freshest = freshestSample(candidates);
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    const it = scored(c, 0);
    items[i] = it;
    const usd = expectedCostUsd(c, ctx, out);
    cost[i] = usd;
    lowCost.add(usd);
    const sr = c.stats.successRate;
    // No usable rate means no data, which the view defines as 1.
    const r = Number.isFinite(sr) ? clamp01(sr) : 1;
    rel[i] = r;
    if (r > bestRel) bestRel = r;
    const base = baseLatencyMs(c.stats, out);
    if (isMeasured(c.stats, ctx, base, freshest)) {
      const est = base * loadFactor(c.stats);
      lat[i] = est;
      lowLat.add(est);
    } else {
      lat[i] = NaN;
      (unmeasured ??= []).push(it);
    }
  }
  // Exploration only matters when latency counts and there is something measured to compare against.
  const split = unmeasured !== undefined && unmeasured.length < n && wl > 0;
  let bestScore = 0;
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    const fc = lowCost.score(cost[i]!);
    const measured = !Number.isNaN(lat[i]!);
    const fl = measured ? lowLat.score(lat[i]!) : NEUTRAL_FACTOR;
    const fr = higherIsBetter(rel[i]!, bestRel);
    const s = sumW > 0 ? (wc * fc + wl * fl + wr * fr) / sumW : 1;
    it.raw = s;
    if (split && !measured) it.group = GROUP_LAST;
    else if (s > bestScore) bestScore = s;
    // The weights as they count (relative: 2/2/1 is 0.4/0.4/0.2), so the reason's terms add up to its score.
    const k = sumW > 0 ? 1 / sumW : 0;
    it.reason = new HybridReason(s, cost[i]!, fc, lat[i]!, fl, rel[i]!, fr, wc * k, wl * k, wr * k);
  }
  // Rescale so the best ranked candidate scores exactly 1, as every strategy's scores do.
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    if (it.group !== GROUP_MAIN) continue;
    it.score = bestScore > 0 ? clamp01(it.raw / bestScore) : 1;
    (it.reason as HybridReason).best = bestScore;
  }
  if (split && unmeasured !== undefined) {
    const picked = explore(unmeasured, ctx);
    for (const it of unmeasured) {
      const first = it === picked;
      it.score = first ? 1 : 0;
      const what = first ? exploringWhat(ctx) : HELD_BACK;
      it.reason = new UnmeasuredReason(it.candidate.stats.samples, what, it.reason);
    }
  }
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
