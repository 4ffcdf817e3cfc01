/** `cost`: lowest expected dollars for this request (SPEC §2). */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import {
  finishRanking,
  fmtInt,
  fmtPrice,
  fmtUsd,
  lowerIsBetter,
  promptTokensOf,
  scored,
  sharedExpectedOutput,
  type Scored,
} from './rank.js';

const PER_TOKEN = 1 / 1_000_000;

/** Price per million tokens, sanitised: a missing or hostile price counts as unknown (NaN sorts last). */
function priceOf(p: number): number {
  return p >= 0 && Number.isFinite(p) ? p : NaN;
}

/** Expected cost in dollars: prompt × input price + expected output × output price. */
export function expectedCostUsd(c: CandidateView, ctx: StrategyContext, out: number): number {
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
  const out = sharedExpectedOutput(candidates, ctx);
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    const usd = expectedCostUsd(c, ctx, out.tokens);
    items[i] = scored(c, usd);
    if (usd < best) best = usd;
  }
  const prompt = fmtInt(promptTokensOf(ctx));
  const outText =
    ' + ' +
    fmtInt(out.tokens) +
    ' out' +
    (out.source === 'max_tokens' ? '' : out.source === 'mean' ? ' (mean)' : ' (default)') +
    ' x ';
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    const c = it.candidate;
    it.score = lowerIsBetter(it.raw, best);
    it.reason = () =>
      'cost ' +
      fmtUsd(it.raw) +
      ' (' +
      prompt +
      ' in x ' +
      fmtPrice(c.price.input_per_mtok) +
      outText +
      fmtPrice(c.price.output_per_mtok) +
      ')';
  }
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
