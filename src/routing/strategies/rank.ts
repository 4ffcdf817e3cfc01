/**
 * Shared by every strategy: turn raw figures into scores in [0, 1] (1 = best), sort once, and break
 * ties by rotation over the configured order, so two equal upstreams share traffic evenly instead of
 * the first one in the array taking it all.
 */
import { DEFAULT_OUTPUT_TOKENS } from '../tokens.js';
import type { CandidateView, RankedCandidate, StrategyContext } from '../types.js';

/** Sort buckets: an explored upstream goes before the ranked ones, held-back ones after them. */
export const GROUP_FIRST = 0;
export const GROUP_MAIN = 1;
export const GROUP_LAST = 2;

/**
 * A reason, or how to write it: formatting figures for every candidate on every request cost more than
 * the ranking itself (a hybrid decision spent most of its time in number formatting), and usually only the
 * first candidate's reason is ever read (the log line); /router/explain reads them all. The figures are
 * kept in a small object rather than a closure: a closure per candidate allocates a context holding every
 * variable it captures, which cost more on Node 20 than the fields it needs.
 */
export interface ReasonSource {
  text(): string;
}

export type Reason = string | ReasonSource;

export function reasonText(r: Reason): string {
  return typeof r === 'string' ? r : r.text();
}

/** A ranked candidate whose reason is written the first time it is read (one shape for all: a class). */
class LazyRanked<C extends CandidateView> implements RankedCandidate<C> {
  constructor(
    readonly candidate: C,
    readonly score: number,
    private why: Reason,
  ) {}

  get reason(): string {
    const w = this.why;
    if (typeof w === 'string') return w;
    const text = w.text();
    this.why = text;
    return text;
  }

  /** Serialised (explain, logs) with its reason, like a plain object. */
  toJSON(): { candidate: C; score: number; reason: string } {
    return { candidate: this.candidate, score: this.score, reason: this.reason };
  }
}

function ranked<C extends CandidateView>(candidate: C, score: number, reason: Reason): RankedCandidate<C> {
  return new LazyRanked(candidate, score, reason);
}

/** `r` with `note` after its reason (written when read, as every reason is). */
export function withNote<C extends CandidateView>(r: RankedCandidate<C>, note: string): RankedCandidate<C> {
  return new LazyRanked(r.candidate, r.score, { text: () => `${r.reason}; ${note}` });
}

/** A candidate being ranked; mutable scratch owned by one strategy call. */
export interface Scored<C extends CandidateView> {
  readonly candidate: C;
  /** The strategy's raw figure (dollars, ms, requests in flight...), NaN when unknown. */
  raw: number;
  score: number;
  reason: Reason;
  group: number;
}

export function scored<C extends CandidateView>(candidate: C, raw: number): Scored<C> {
  return { candidate, raw, score: 0, reason: '', group: GROUP_MAIN };
}

/** Float slack so that e.g. 1 - 0.98 still ties at epsilon 0.02. */
const EPSILON_SLACK = 1e-9;

/** Clamped to [0, 1]; NaN becomes 0 so a bad figure can never sort first. */
export function clamp01(x: number): number {
  return x > 0 ? (x < 1 ? x : 1) : 0;
}

/** `rotation mod n`, safe for negative, fractional or non-finite counters. */
export function rotationIndex(rotation: number, n: number): number {
  if (n <= 1 || !Number.isFinite(rotation)) return 0;
  const r = Math.trunc(rotation) % n;
  return r < 0 ? r + n : r;
}

/**
 * Which of `n` candidates in turn order goes at place `i` of a request's list on `rotation`: the turn's own
 * first, then the others, whose order turns as well from one round of turns to the next. Each candidate then
 * leads one request in `n`, and a failing one's failovers spread over all the others rather than all landing
 * on the one after it (a flaky upstream's turns doubled its successor's load).
 */
export function turnSlot(rotation: number, n: number, i: number): number {
  const r = rotationIndex(rotation, n);
  if (i === 0 || n <= 2) return (r + i) % n;
  const round = Number.isFinite(rotation) ? Math.floor(Math.abs(Math.trunc(rotation)) / n) : 0;
  return (r + 1 + ((i - 1 + digitSum(round, n - 1)) % (n - 1))) % n;
}

/**
 * The sum of `x`'s digits in base `b`, mod `b` (a generalised Thue-Morse sequence): how far the order after
 * a round's lead turns. Turning by one each round would move in step with an upstream that fails every other
 * turn and hand all its failures to the same successor again; this sequence is evenly spread along every
 * arithmetic progression (Gelfond), so no failure rhythm lines up with it.
 */
function digitSum(x: number, b: number): number {
  let sum = 0;
  for (let v = x; v > 0; v = Math.floor(v / b)) sum += v % b;
  return sum % b;
}

/**
 * Lower is better (dollars, ms, load): score = best / x, so the best is 1 and twice the best is 0.5.
 * Relative rather than min-max: a 1 % difference stays a 1 % difference, and `tie_epsilon` reads as a
 * relative tolerance. `best` is the smallest finite figure among the candidates; `positive` the smallest
 * above 0. A best of 0 (a free local model beside priced ones) would score every other candidate 0, all tied:
 * the priced ones are then scored against the cheapest of them and halved, so the free one scores 1, the
 * cheapest priced 0.5 and one 20 % dearer 0.42: apart by more than `tie_epsilon`, in their order (squeezed
 * nearer 0, 1.0 and 1.2 scored 0.09 and 0.08 and tied).
 */
export function lowerIsBetter(x: number, best: number, positive = best): number {
  if (!Number.isFinite(x)) return 0;
  if (x <= best) return 1;
  return clamp01(best > 0 ? best / x : (0.5 * positive) / x);
}

/**
 * The smallest finite figure and the smallest above 0 (Infinity when none), for lowerIsBetter. A strategy
 * keeps one per factor at module level and resets it per decision (strategies run synchronously): no
 * allocation on each request's path.
 */
export class LowestFigures {
  best = Infinity;
  positive = Infinity;

  reset(): this {
    this.best = Infinity;
    this.positive = Infinity;
    return this;
  }

  add(x: number): void {
    if (x < this.best) this.best = x;
    if (x > 0 && x < this.positive) this.positive = x;
  }

  score(x: number): number {
    return lowerIsBetter(x, this.best, this.positive);
  }
}

/** Higher is better (success rate): score = x / best. */
export function higherIsBetter(x: number, best: number): number {
  if (!Number.isFinite(x)) return 0;
  if (x >= best || !(best > 0)) return 1;
  return clamp01(x / best);
}

/** Configured order, then id: the stable order every strategy falls back on. */
export function compareConfigOrder(a: CandidateView, b: CandidateView): number {
  const d = a.order - b.order;
  if (d !== 0) return d;
  const ia = a.id;
  const ib = b.id;
  return ia < ib ? -1 : ia > ib ? 1 : 0;
}

function byConfigOrder<C extends CandidateView>(a: Scored<C>, b: Scored<C>): number {
  return compareConfigOrder(a.candidate, b.candidate);
}

function byGroupThenScore<C extends CandidateView>(a: Scored<C>, b: Scored<C>): number {
  return a.group - b.group || b.score - a.score || byConfigOrder(a, b);
}

/** Stable insertion sort of items[from, to): no allocation, and few comparisons at a handful of items. */
function insertionSort<T>(items: T[], from: number, to: number, cmp: (a: T, b: T) => number): void {
  for (let i = from + 1; i < to; i++) {
    const x = items[i]!;
    let j = i - 1;
    while (j >= from && cmp(items[j]!, x) > 0) {
      items[j + 1] = items[j]!;
      j--;
    }
    items[j + 1] = x;
  }
}

/** Tie clusters are tiny: sorted in place by config order. */
function sortRange<C extends CandidateView>(items: Scored<C>[], from: number, to: number): void {
  insertionSort(items, from, to, byConfigOrder);
}

/** Up to this many items are sorted in place by insertion; more go to Array.prototype.sort. */
const SMALL_SORT = 16;

/**
 * Sorts in place, stably. A route's candidates are a handful, and Array.prototype.sort allocated ~0.7 KB
 * of work space per call (the allocation profile's largest routing entry, once per request).
 */
export function sortSmall<T>(items: T[], cmp: (a: T, b: T) => number): T[] {
  if (items.length > SMALL_SORT) return items.sort(cmp);
  insertionSort(items, 0, items.length, cmp);
  return items;
}

/**
 * Sorts by group, then score (best first), then groups into tie clusters — candidates within `epsilon`
 * of the cluster's best — and rotates each cluster by `rotation` over config order. Reorders `items`.
 */
export function finishRanking<C extends CandidateView>(
  items: Scored<C>[],
  rotation: number,
  epsilon: number,
): RankedCandidate<C>[] {
  const n = items.length;
  sortSmall(items, byGroupThenScore);
  const eps = (Number.isFinite(epsilon) && epsilon > 0 ? epsilon : 0) + EPSILON_SLACK;
  const out = new Array<RankedCandidate<C>>(n);
  let i = 0;
  while (i < n) {
    const top = items[i]!;
    let j = i + 1;
    while (j < n && items[j]!.group === top.group && top.score - items[j]!.score <= eps) j++;
    const k = j - i;
    if (k === 1) {
      out[i] = ranked(top.candidate, top.score, top.reason);
    } else {
      sortRange(items, i, j);
      for (let m = 0; m < k; m++) {
        const it = items[i + turnSlot(rotation, k, m)]!;
        out[i + m] = ranked(it.candidate, it.score, it.reason);
      }
    }
    i = j;
  }
  return out;
}

/** Where the expected output token count came from, for the reason string. */
/** `none`: an answer with no output tokens at all (embeddings). */
export type OutputSource = 'max_tokens' | 'mean' | 'default' | 'none';

export interface ExpectedOutput {
  readonly tokens: number;
  readonly source: OutputSource;
}

/**
 * Expected completion tokens of this request, one figure for every candidate: the client's limit, else
 * the mean of the candidates' observed means, else the default. Per-candidate figures made an unmeasured
 * upstream (256-token default) look dearer than a measured one answering in 8 tokens, so `cost` picked
 * an upstream 10× the price and, never trying the cheap one, kept picking it.
 */
const NO_OUTPUT: ExpectedOutput = { tokens: 0, source: 'none' };

export function sharedExpectedOutput(
  candidates: readonly CandidateView[],
  ctx: StrategyContext,
): ExpectedOutput {
  const req = ctx.requestedOutputTokens;
  if (req === 0) return NO_OUTPUT;
  if (req !== undefined && req > 0 && Number.isFinite(req)) return { tokens: req, source: 'max_tokens' };
  let sum = 0;
  let k = 0;
  for (const c of candidates) {
    const m = c.stats.meanOutputTokens;
    if (m !== undefined && m >= 0 && Number.isFinite(m)) {
      sum += m;
      k++;
    }
  }
  return k > 0 ? { tokens: sum / k, source: 'mean' } : { tokens: DEFAULT_OUTPUT_TOKENS, source: 'default' };
}

/** Prompt tokens from the context, sanitised: hostile or missing figures count as 0. */
export function promptTokensOf(ctx: StrategyContext): number {
  const p = ctx.promptTokens;
  return p > 0 && Number.isFinite(p) ? p : 0;
}

/**
 * Bounded exploration: with probability `explorationShare` exactly, one of `unmeasured` (rotated over
 * config order) is promoted to GROUP_FIRST; the others are held back in GROUP_LAST. Returns the
 * explored item or undefined. Draws from `ctx.random` only when there is something to explore.
 */
export function explore<C extends CandidateView>(
  unmeasured: Scored<C>[],
  ctx: StrategyContext,
): Scored<C> | undefined {
  const u = unmeasured.length;
  if (u === 0) return undefined;
  const share = ctx.explorationShare;
  let picked: Scored<C> | undefined;
  if (share > 0 && ctx.random() < share) {
    sortRange(unmeasured, 0, u);
    picked = unmeasured[rotationIndex(ctx.rotation, u)];
  }
  for (let i = 0; i < u; i++) unmeasured[i]!.group = GROUP_LAST;
  if (picked) picked.group = GROUP_FIRST;
  return picked;
}

/** Position-based scores for strategies whose order is the decision itself: 1, then descending. */
export function positionScore(index: number, n: number): number {
  return n <= 1 ? 1 : 1 - index / n;
}

// ---- formatting for reasons: cheap, no Intl (it is slow per call), no regex ----

/** 1234567 -> "1,234,567". */
export function fmtInt(x: number): string {
  if (!Number.isFinite(x)) return '?';
  const n = Math.round(x);
  const abs = n < 0 ? -n : n;
  if (abs < 1000) return String(n);
  const s = String(abs);
  let i = s.length % 3 || 3;
  let out = s.slice(0, i);
  for (; i < s.length; i += 3) out += ',' + s.slice(i, i + 3);
  return n < 0 ? '-' + out : out;
}

const POW10 = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/**
 * `x.toFixed(digits)` (digits 0-6) in integer arithmetic: small integers have cached strings, while
 * toFixed is a runtime call per figure, and a reason quotes up to a dozen figures on every logged request.
 * Halfway cases round up in binary rather than in exact decimal; outside +-1e9 it is toFixed itself.
 */
export function fixed(x: number, digits: number): string {
  const p = POW10[digits];
  if (p === undefined || !(x > -1e9 && x < 1e9)) return x.toFixed(digits);
  const scaled = Math.round((x < 0 ? -x : x) * p);
  const whole = Math.floor(scaled / p);
  const sign = x < 0 && scaled !== 0 ? '-' : '';
  if (digits === 0) return sign + whole;
  let frac = String(scaled - whole * p);
  while (frac.length < digits) frac = '0' + frac;
  return sign + whole + '.' + frac;
}

/**
 * Dollars with 6 decimals: request costs are fractions of a cent. Below a tenth of a cent, three significant
 * digits ("$1.30e-7"): two candidates scored apart must not both read $0.000000.
 */
export function fmtUsd(x: number): string {
  if (!Number.isFinite(x)) return '$?';
  return x !== 0 && Math.abs(x) < 1e-3 ? '$' + x.toPrecision(3) : '$' + fixed(x, 6);
}

/** A per-million-token price: "$0.15/M", "$0.075/M". */
export function fmtPrice(p: number): string {
  if (!Number.isFinite(p)) return '$?/M';
  const cents = p * 100;
  return (cents === Math.round(cents) ? '$' + p.toFixed(2) : '$' + String(p)) + '/M';
}

export function fmtMs(ms: number): string {
  return fmtInt(ms) + ' ms';
}

export function fmtPct(x: number): string {
  return Number.isFinite(x) ? fixed(x * 100, 1) + '%' : '?%';
}

export function plural(n: number, word: string): string {
  return n === 1 ? '1 ' + word : fmtInt(n) + ' ' + word + 's';
}
