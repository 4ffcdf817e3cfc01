/** What a replica publishes of each upstream through Redis: checked as read, and the others' merged. */
import type { SharedStats } from '../routing/stats.js';
import { parseJsonObject } from '../upstream/adapters/common.js';

/** Above any real figure (decayed counts at 100k req/s are ~9M): a larger one is not a replica's. */
const MAX_FIGURE = 1e8;

export interface Published extends SharedStats {
  /** Date.now() when written: how stale it is, on the reader's clock (replicas' clocks roughly agree). */
  readonly at: number;
}

export function isFiniteNonNegative(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0;
}

/** Every number a replica publishes of an upstream (its timestamp `at` apart). */
const FIGURES: readonly (keyof SharedStats)[] = [
  'samples',
  'ttftMs',
  'latencyMs',
  'tpsSamples',
  'tokensPerSec',
  'outSamples',
  'meanOutputTokens',
  'okWeight',
  'failWeight',
  'lastSampleAgeMs',
];

/** A replica's published measurements, or undefined for anything malformed (Redis is shared: trust nothing). */
export function parsePublished(text: string): Published | undefined {
  const p = parseJsonObject(text);
  if (p === undefined) return undefined;
  const sane =
    FIGURES.every((k) => isFiniteNonNegative(p[k]) && (p[k] as number) <= MAX_FIGURE) &&
    isFiniteNonNegative(p.at);
  return sane ? (p as unknown as Published) : undefined;
}

/** The other replicas' measurements as one: sums of counts, averages weighted by the samples behind them. */
export function mergeStats(views: readonly Published[], nowWall: number): SharedStats | undefined {
  if (views.length === 0) return undefined;
  let samples = 0;
  let ttft = 0;
  let latency = 0;
  let tpsSamples = 0;
  let tps = 0;
  let outSamples = 0;
  let meanOut = 0;
  let okWeight = 0;
  let failWeight = 0;
  let age = Number.POSITIVE_INFINITY;
  for (const v of views) {
    samples += v.samples;
    ttft += v.ttftMs * v.samples;
    latency += v.latencyMs * v.samples;
    tpsSamples += v.tpsSamples;
    tps += v.tokensPerSec * v.tpsSamples;
    outSamples += v.outSamples;
    meanOut += v.meanOutputTokens * v.outSamples;
    okWeight += v.okWeight;
    failWeight += v.failWeight;
    if (v.samples > 0) age = Math.min(age, v.lastSampleAgeMs + Math.max(0, nowWall - v.at));
  }
  return {
    samples,
    ttftMs: samples > 0 ? ttft / samples : 0,
    latencyMs: samples > 0 ? latency / samples : 0,
    tpsSamples,
    tokensPerSec: tpsSamples > 0 ? tps / tpsSamples : 0,
    outSamples,
    meanOutputTokens: outSamples > 0 ? meanOut / outSamples : 0,
    okWeight,
    failWeight,
    lastSampleAgeMs: Number.isFinite(age) ? age : 0,
  };
}
