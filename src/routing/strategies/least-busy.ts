/** `least-busy`: fewest requests in flight; near-equal loads (within `tieEpsilon`) rotate. */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { loadFactor } from './latency.js';
import { finishRanking, fmtInt, lowerIsBetter, scored, type Scored } from './rank.js';

export function leastBusyStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const items = new Array<Scored<C>>(n);
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    // Scored on in flight + 1, so 0 vs 1 is a real difference and 100 vs 101 is a tie.
    const load = loadFactor(c.stats);
    const it = scored(c, load);
    it.reason = fmtInt(load - 1) + ' in flight';
    items[i] = it;
    if (it.raw < best) best = it.raw;
  }
  for (let i = 0; i < n; i++) items[i]!.score = lowerIsBetter(items[i]!.raw, best);
  return finishRanking(items, ctx.rotation, ctx.tieEpsilon);
}
