/** `cost`: lowest expected dollars for this request (SPEC §2). */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import {
  finishRanking,
  fmtInt,
  fmtPrice,
  fmtUsd,
  LowestFigures,
  promptTokensOf,
  scored,
  sharedExpectedOutput,
  type ExpectedOutput,
  type ReasonSource,
  type Scored,
} from './rank.js';

const PER_TOKEN = 1 / 1_000_000;

/** Price per million tokens, sanitised: a missing or hostile price counts as unknown (NaN sorts last). */
function priceOf(p: number): number {
  return p >= 0 && Number.isFinite(p) ? p : NaN;
}

/** Expected cost in dollars: prompt × input price + expected output × choices × output price. */
export function expectedCostUsd(c: CandidateView, ctx: StrategyContext, out: number): number {
  return (
    (promptTokensOf(ctx) * priceOf(c.price.input_per_mtok) +
      out * choicesOf(ctx) * priceOf(c.price.output_per_mtok)) *
    PER_TOKEN
  );
}

/** `n`, sanitised: each choice is a completion billed on its own. */
function choicesOf(ctx: StrategyContext): number {
  const n = ctx.choices;
  return n !== undefined && n > 1 && Number.isFinite(n) ? n : 1;
}

/** "cost $0.000120 (1,024 in x $0.15 + 256 out (mean) x $0.60)". */
class CostReason implements ReasonSource {
  constructor(
    private readonly usd: number,
    private readonly promptTokens: number,
    private readonly out: ExpectedOutput,
    private readonly choices: number,
    private readonly price: CandidateView['price'],
  ) {}

  text(): string {
    const src = this.out.source;
    return (
      'cost ' +
      fmtUsd(this.usd) +
      ' (' +
      fmtInt(this.promptTokens) +
      ' in x ' +
      fmtPrice(this.price.input_per_mtok) +
      (src === 'none'
        ? ''
        : ' + ' +
          fmtInt(this.out.tokens) +
          ' out' +
          (src === 'max_tokens' ? '' : src === 'mean' ? ' (mean)' : ' (default)') +
          (this.choices > 1 ? ' x ' + this.choices + ' choices' : '') +
          ' x ' +
          fmtPrice(this.price.output_per_mtok)) +
      ')'
    );
  }
}

const COST = new LowestFigures();

export function costStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const items = new Array<Scored<C>>(n);
  const out = sharedExpectedOutput(candidates, ctx);
  const lowest = COST.reset();
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    const usd = expectedCostUsd(c, ctx, out.tokens);
    items[i] = scored(c, usd);
    lowest.add(usd);
  }
  const prompt = promptTokensOf(ctx);
  const choices = choicesOf(ctx);
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    it.score = lowest.score(it.raw);
    it.reason = new CostReason(it.raw, prompt, out, choices, it.candidate.price);
  }
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
