/** `priority`: config order; the rest are the failover chain. Equal `order` values tie and rotate. */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { finishRanking, fmtInt, positionScore, scored, sortSmall, type Scored } from './rank.js';

function byOrder(a: Scored<CandidateView>, b: Scored<CandidateView>): number {
  return a.raw - b.raw;
}

export function priorityStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const items = new Array<Scored<C>>(n);
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    items[i] = scored(c, Number.isFinite(c.order) ? c.order : Number.MAX_SAFE_INTEGER);
  }
  sortSmall(items, byOrder);
  // Equal orders share the score of their first position, so finishRanking (epsilon 0) ties exactly them.
  let rank = 0;
  for (let i = 0; i < n; i++) {
    const it = items[i]!;
    if (i > 0 && it.raw !== items[i - 1]!.raw) rank = i;
    it.score = positionScore(rank, n);
    it.reason = 'priority #' + fmtInt(rank + 1) + ' (config order)';
  }
  return finishRanking(items, ctx.rotation, 0);
}
