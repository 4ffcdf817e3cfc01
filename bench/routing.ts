/**
 * Micro-benchmark of the per-request routing work: one ranking decision over 10 candidates per strategy,
 * and the prompt-token estimate for a ~2,000-token prompt. Timed in batches with process.hrtime.bigint
 * (a single decision is too short to time on its own); reports the median and p99 batch, per call.
 */
import { STRATEGY_NAMES, type StrategyName } from '../src/config/schema.js';
import { STRATEGIES } from '../src/routing/strategies/index.js';
import { estimatePromptTokens, loadTokenizer } from '../src/routing/tokens.js';
import { UpstreamStats } from '../src/routing/stats.js';
import type { CandidateView, StrategyContext } from '../src/routing/types.js';
import { mulberry32 } from '../test/helpers/random.js';

export interface RoutingBenchResult {
  /** Median ns per decision of the slowest strategy. */
  decisionNsP50: number;
  /** Median ns per estimatePromptTokens call on a ~2,000-token prompt (default exact budget). */
  tokenEstimate2kNs: number;
  /** The same prompt counted exactly throughout, and estimated without the tokenizer. */
  tokenEstimate2kExactNs: number;
  tokenEstimate2kApproxNs: number;
  promptTokens: number;
  perStrategy: Record<StrategyName, { p50Ns: number; p99Ns: number }>;
}

const BATCH = 200;
const BATCHES = 200;

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** ns per call of `fn`, as median and p99 over batches, after a warm-up. */
function timeIt(
  fn: (i: number) => unknown,
  batch = BATCH,
  batches = BATCHES,
): { p50Ns: number; p99Ns: number } {
  let sink = 0;
  for (let i = 0; i < batch * 20; i++) if (fn(i) !== undefined) sink++;
  const per: number[] = [];
  let i = 0;
  for (let b = 0; b < batches; b++) {
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < batch; k++) if (fn(i++) !== undefined) sink++;
    per.push(Number(process.hrtime.bigint() - t0) / batch);
  }
  if (sink < 0) console.log(sink); // keeps the calls observable
  per.sort((a, b) => a - b);
  return { p50Ns: Math.round(quantile(per, 0.5)), p99Ns: Math.round(quantile(per, 0.99)) };
}

/**
 * Ten candidates over the gateway's own statistics objects, as a decision reads them: every figure a getter
 * that decays it to now (plain objects with precomputed figures timed half of what a real decision costs).
 */
function candidates(rnd: () => number): CandidateView[] {
  const out: CandidateView[] = [];
  const origin = Date.now();
  const now = (): number => performance.now() + origin;
  for (let i = 0; i < 10; i++) {
    const stats = new UpstreamStats(now);
    // Two upstreams with too few samples to be measured: the exploration path runs too.
    const samples = i >= 8 ? 1 : 50;
    const ttft = 100 + rnd() * 900;
    const tps = 30 + rnd() * 200;
    for (let k = 0; k < samples; k++) {
      const outputTokens = Math.round(100 + rnd() * 800);
      const ttftMs = ttft * (0.8 + rnd() * 0.4);
      stats.recordSuccess({
        ttftMs,
        totalMs: ttftMs + (outputTokens / tps) * 1000,
        outputTokens,
        streamed: true,
      });
    }
    for (let k = Math.floor(rnd() * 5); k > 0; k--) stats.recordFailure('error');
    for (let k = Math.floor(rnd() * 5); k > 0; k--) stats.begin();
    out.push({
      id: `provider${i}/model-${i}`,
      order: i,
      weight: 1 + Math.floor(rnd() * 3),
      price: { input_per_mtok: 0.1 + rnd() * 5, output_per_mtok: 0.4 + rnd() * 15 },
      stats,
    });
  }
  return out;
}

const COMMON = (
  'the of and to in is that for it as with was on be by this are or from at an have not which but ' +
  'request model latency cost upstream token stream error retry route provider answer user system ' +
  'function value return data time first each more when can will should would about into than'
).split(' ');
const SYLLABLES = 'ka lo mi ne ru sa te vo pi da ze fu gra stre pol quin tor bel mar ox ith ent ung ar'.split(
  ' ',
);

/** Pseudo-English: common words plus invented ones, so the tokenizer's merge cache is not always warm. */
function prose(rnd: () => number, chars: number): string {
  let s = '';
  while (s.length < chars) {
    let w: string;
    if (rnd() < 0.7) w = COMMON[Math.floor(rnd() * COMMON.length)]!;
    else {
      w = '';
      const n = 1 + Math.floor(rnd() * 4);
      for (let k = 0; k < n; k++) w += SYLLABLES[Math.floor(rnd() * SYLLABLES.length)]!;
    }
    s += w + (rnd() < 0.08 ? '. ' : rnd() < 0.1 ? ', ' : ' ');
  }
  return s;
}

export async function runRoutingBench(): Promise<RoutingBenchResult> {
  await loadTokenizer();
  const rnd = mulberry32(2024);
  const cs = candidates(rnd);
  const random = mulberry32(7);
  const base = {
    promptTokens: 2_000,
    requestedOutputTokens: undefined,
    now: 0,
    random,
    tieEpsilon: 0.02,
    explorationShare: 0.1,
    minSamples: 3,
    weights: { cost: 0.4, latency: 0.4, reliability: 0.2 },
  };
  const ctxs: StrategyContext[] = [];
  for (let r = 0; r < 64; r++) ctxs.push({ ...base, rotation: r });

  const perStrategy = {} as Record<StrategyName, { p50Ns: number; p99Ns: number }>;
  for (const name of STRATEGY_NAMES) {
    const s = STRATEGIES[name];
    // The ranking and its winner's reason: what a request's log line reads.
    perStrategy[name] = timeIt((i) => s(cs, ctxs[i & 63]!)[0]?.reason);
  }

  // A pool of distinct ~2,000-token prompts: system prompt shared (as in real traffic), user turns vary.
  const system = prose(rnd, 1_500);
  const bodies = Array.from({ length: 32 }, () => ({
    messages: [
      { role: 'system', content: system },
      { role: 'user', content: prose(rnd, 3_000) },
      { role: 'assistant', content: prose(rnd, 1_200) },
      { role: 'user', content: prose(rnd, 2_000) },
    ],
  }));
  const promptTokens = estimatePromptTokens(bodies[0]!, { exactBudgetChars: Infinity });
  const tok = timeIt((i) => estimatePromptTokens(bodies[i & 31]!), 10, 200);
  const exact = timeIt((i) => estimatePromptTokens(bodies[i & 31]!, { exactBudgetChars: Infinity }), 10, 200);
  const approx = timeIt((i) => estimatePromptTokens(bodies[i & 31]!, { exactBudgetChars: 0 }), 10, 200);

  const rows: [string, string, string][] = [['case', 'p50', 'p99']];
  const us = (ns: number) => (ns / 1000).toFixed(2) + ' µs';
  for (const name of STRATEGY_NAMES) {
    rows.push([`decision ${name} (10 cand.)`, us(perStrategy[name].p50Ns), us(perStrategy[name].p99Ns)]);
  }
  rows.push([`tokens ~${promptTokens} (default budget)`, us(tok.p50Ns), us(tok.p99Ns)]);
  rows.push([`tokens ~${promptTokens} (all exact)`, us(exact.p50Ns), us(exact.p99Ns)]);
  rows.push([`tokens ~${promptTokens} (approx only)`, us(approx.p50Ns), us(approx.p99Ns)]);
  const w0 = Math.max(...rows.map((r) => r[0].length));
  for (const [a, b, c] of rows) console.log(`${a.padEnd(w0)}  ${b.padStart(10)}  ${c.padStart(10)}`);

  return {
    decisionNsP50: Math.max(...STRATEGY_NAMES.map((n) => perStrategy[n].p50Ns)),
    tokenEstimate2kNs: tok.p50Ns,
    tokenEstimate2kExactNs: exact.p50Ns,
    tokenEstimate2kApproxNs: approx.p50Ns,
    promptTokens,
    perStrategy,
  };
}
