/** `round-robin`: the candidate at `rotation mod n` (in config order) first, then the others (`turnSlot`). */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { compareConfigOrder, fmtInt, positionScore, sortSmall, turnSlot } from './rank.js';

export function roundRobinStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  // Sorting a copy keeps the turn order independent of how the caller built the array.
  const sorted = sortSmall(candidates.slice(), compareConfigOrder);
  const total = fmtInt(n);
  const out = new Array<RankedCandidate<C>>(n);
  for (let i = 0; i < n; i++) {
    const slot = turnSlot(ctx.rotation, n, i);
    out[i] = {
      candidate: sorted[slot]!,
      score: positionScore(i, n),
      reason: 'round-robin turn ' + fmtInt(i + 1) + ' of ' + total + ' (slot ' + fmtInt(slot + 1) + ')',
    };
  }
  return out;
}
