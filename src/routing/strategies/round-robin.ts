/** `round-robin`: the candidate at `rotation mod n` (in config order) first, then the ones after it. */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { fmtInt, positionScore, rotationIndex } from './rank.js';

function byOrder(a: CandidateView, b: CandidateView): number {
  return a.order - b.order || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

export function roundRobinStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  // Sorting a copy keeps the turn order independent of how the caller built the array.
  const sorted = candidates.slice().sort(byOrder);
  const r = rotationIndex(ctx.rotation, n);
  const total = fmtInt(n);
  const out = new Array<RankedCandidate<C>>(n);
  for (let i = 0; i < n; i++) {
    const slot = (r + i) % n;
    out[i] = {
      candidate: sorted[slot]!,
      score: positionScore(i, n),
      reason: 'round-robin turn ' + fmtInt(i + 1) + ' of ' + total + ' (slot ' + fmtInt(slot + 1) + ')',
    };
  }
  return out;
}
