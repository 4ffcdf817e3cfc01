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
 * One decision's figures, a row of ROW numbers per candidate (the weighted sum, then each factor's raw figure
 * and normalised value, then the best sum it is scored against), then the weights as they count: an array of
 * doubles (stored unboxed), where fields of a reason object per candidate were each a heap number of their own
 * (~30 a request, kept for a stream's life by its log line's ranking).
 */
const SUM = 0;
const COST_USD = 1;
const FC = 2;
/** NaN: unmeasured. */
const LAT_MS = 3;
const FL = 4;
const REL_RATE = 5;
const FR = 6;
/** The best weighted sum among the ranked candidates, once known; NaN for one not ranked on it (explored). */
const BEST = 7;
const ROW = 8;

/**
 * "hybrid 0.93 = cost $0.000120 -> 1.00 x 0.5 + latency 212 ms -> 0.80 x 0.3 + reliability 99% -> 1.00 x 0.2;
 * score 0.97 = 0.93 / best 0.96": the weighted sum, then the score it gives (scores are rescaled so the best
 * candidate's is 1, and ties are read on them).
 */
class HybridReason implements ReasonSource {
  constructor(
    /** The decision's figures: this candidate's row at `at`, the weights after the last row. */
    private readonly figs: readonly number[],
    private readonly at: number,
  ) {}

  text(): string {
    const f = this.figs;
    const r = this.at;
    const w = f.length - 3;
    const latMs = f[r + LAT_MS]!;
    const best = f[r + BEST]!;
    return (
      'hybrid ' +
      f2(f[r + SUM]!) +
      ' = cost ' +
      fmtUsd(f[r + COST_USD]!) +
      ' -> ' +
      f2(f[r + FC]!) +
      ' x ' +
      fmtWeight(f[w]!) +
      ' + latency ' +
      (Number.isNaN(latMs) ? 'unmeasured' : fmtMs(latMs)) +
      ' -> ' +
      f2(f[r + FL]!) +
      ' x ' +
      fmtWeight(f[w + 1]!) +
      ' + reliability ' +
      fmtPct(f[r + REL_RATE]!) +
      ' -> ' +
      f2(f[r + FR]!) +
      ' x ' +
      fmtWeight(f[w + 2]!) +
      (best > 0
        ? '; score ' + f2(clamp01(f[r + SUM]! / best)) + ' = ' + f2(f[r + SUM]!) + ' / best ' + f2(best)
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
  // NaN where nothing is written: an unmeasured latency, the best sum of one not ranked on it. (A double fill
  // also makes it an array of doubles from the start.)
  const figs = new Array<number>(n * ROW + 3).fill(NaN);
  let unmeasured: Scored<C>[] | undefined;
  const lowCost = COST.reset();
  const lowLat = LATENCY.reset();
  let bestRel = 0;
  const out = sharedExpectedOutput(candidates, ctx).tokens;
  const freshest = freshestSample(candidates);
  for (let i = 0, r = 0; i < n; i++, r += ROW) {
    const c = candidates[i]!;
    const it = scored(c, 0);
    items[i] = it;
    const usd = expectedCostUsd(c, ctx, out);
    figs[r + COST_USD] = usd;
    lowCost.add(usd);
    const sr = c.stats.successRate;
    // No usable rate means no data, which the view defines as 1.
    const rate = Number.isFinite(sr) ? clamp01(sr) : 1;
    figs[r + REL_RATE] = rate;
    if (rate > bestRel) bestRel = rate;
    const base = baseLatencyMs(c.stats, out);
    if (isMeasured(c.stats, ctx, base, freshest)) {
      const est = base * loadFactor(c.stats);
      figs[r + LAT_MS] = est;
      lowLat.add(est);
    } else {
      (unmeasured ??= []).push(it); // its LAT_MS stays NaN
    }
  }
  // Exploration only matters when latency counts and there is something measured to compare against.
  const split = unmeasured !== undefined && unmeasured.length < n && wl > 0;
  // The weights as they count (relative: 2/2/1 is 0.4/0.4/0.2), so the reason's terms add up to its score.
  const k = sumW > 0 ? 1 / sumW : 0;
  const w = n * ROW;
  figs[w] = wc * k;
  figs[w + 1] = wl * k;
  figs[w + 2] = wr * k;
  let bestScore = 0;
  for (let i = 0, r = 0; i < n; i++, r += ROW) {
    const it = items[i]!;
    const fc = lowCost.score(figs[r + COST_USD]!);
    const lat = figs[r + LAT_MS]!;
    const measured = !Number.isNaN(lat);
    const fl = measured ? lowLat.score(lat) : NEUTRAL_FACTOR;
    const fr = higherIsBetter(figs[r + REL_RATE]!, bestRel);
    const s = sumW > 0 ? (wc * fc + wl * fl + wr * fr) / sumW : 1;
    it.raw = s;
    if (split && !measured) it.group = GROUP_LAST;
    else if (s > bestScore) bestScore = s;
    figs[r + SUM] = s;
    figs[r + FC] = fc;
    figs[r + FL] = fl;
    figs[r + FR] = fr;
    it.reason = new HybridReason(figs, r);
  }
  // Rescale so the best ranked candidate scores exactly 1, as every strategy's scores do.
  for (let i = 0, r = 0; i < n; i++, r += ROW) {
    const it = items[i]!;
    if (it.group !== GROUP_MAIN) continue;
    it.score = bestScore > 0 ? clamp01(it.raw / bestScore) : 1;
    figs[r + BEST] = bestScore;
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
