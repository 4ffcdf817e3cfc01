/** `cost`: lowest expected dollars for this request (SPEC §2). */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import {
  expectedOutput,
  finishRanking,
  fmtInt,
  fmtPrice,
  fmtUsd,
  lowerIsBetter,
  outputSource,
  promptTokensOf,
  scored,
  type Scored,
} from './rank.js';

const PER_TOKEN = 1 / 1_000_000;

/** Price per million tokens, sanitised: a missing or hostile price counts as unknown (NaN sorts last). */
function priceOf(p: number): number {
  return p >= 0 && Number.isFinite(p) ? p : NaN;
}

/** Expected cost in dollars: prompt × input price + expected output × output price. */
export function expectedCostUsd(c: CandidateView, ctx: StrategyContext): number {
  const out = expectedOutput(ctx, c.stats);
  return (
    (promptTokensOf(ctx) * priceOf(c.price.input_per_mtok) + out * priceOf(c.price.output_per_mtok)) *
    PER_TOKEN
  );
}

export function costStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const items = new Array<Scored<C>>(n);
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    const usd = expectedCostUsd(c, ctx);
    items[i] = scored(c, usd);
    if (usd < best) best = usd;
  }
  const prompt = fmtInt(promptTokensOf(ctx));
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    const c = it.candidate;
    it.score = lowerIsBetter(it.raw, best);
    const src = outputSource(ctx, c.stats);
    it.reason =
      'cost ' +
      fmtUsd(it.raw) +
      ' (' +
      prompt +
      ' in × ' +
      fmtPrice(c.price.input_per_mtok) +
      ' + ' +
      fmtInt(expectedOutput(ctx, c.stats)) +
      ' out' +
      (src === 'max_tokens' ? '' : src === 'mean' ? ' (mean)' : ' (default)') +
      ' × ' +
      fmtPrice(c.price.output_per_mtok) +
      ')';
  }
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
