/**
 * `weighted`: random in proportion to each target's weight. The whole list is drawn (weighted sampling
 * without replacement), so the failover chain is weighted too; weight 0 goes last, rotating.
 */
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';
import { compareConfigOrder, fmtInt, fmtPct, positionScore, rotationIndex, sortSmall } from './rank.js';

function weightOf(c: CandidateView): number {
  const w = c.weight;
  return w > 0 && Number.isFinite(w) ? w : 0;
}

/** Positive weights first, then config order, so a given random draw always maps to the same candidate. */
function byZeroThenOrder(a: CandidateView, b: CandidateView): number {
  return (weightOf(a) > 0 ? 0 : 1) - (weightOf(b) > 0 ? 0 : 1) || compareConfigOrder(a, b);
}

export function weightedStrategy<C extends CandidateView>(
  candidates: readonly C[],
  ctx: StrategyContext,
): RankedCandidate<C>[] {
  const n = candidates.length;
  const pool = sortSmall(candidates.slice(), byZeroThenOrder);
  let total = 0;
  let m = 0;
  while (m < n && weightOf(pool[m]!) > 0) total += weightOf(pool[m++]!);
  const out = new Array<RankedCandidate<C>>(n);
  let remaining = total;
  for (let pos = 0; pos < m; pos++) {
    let pick = m - 1;
    if (m - pos > 1) {
      let r = ctx.random() * remaining;
      for (let k = pos; k < m; k++) {
        r -= weightOf(pool[k]!);
        if (r < 0) {
          pick = k;
          break;
        }
      }
    }
    const c = pool[pick]!;
    pool[pick] = pool[pos]!;
    pool[pos] = c;
    const w = weightOf(c);
    remaining -= w;
    out[pos] = {
      candidate: c,
      score: positionScore(pos, n),
      reason:
        'weight ' +
        String(w) +
        ' of ' +
        String(total) +
        ' (' +
        fmtPct(w / total) +
        '), drawn ' +
        fmtInt(pos + 1),
    };
  }
  const zeros = n - m;
  const r = rotationIndex(ctx.rotation, zeros);
  for (let i = 0; i < zeros; i++) {
    out[m + i] = {
      candidate: pool[m + ((r + i) % zeros)]!,
      score: positionScore(m + i, n),
      reason: 'weight 0: last',
    };
  }
  return out;
}
