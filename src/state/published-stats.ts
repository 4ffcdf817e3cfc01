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

/**
 * How much a replica's averages weigh per sample, by the age of its last sample: halved each minute (the half-life
 * of the success counts). Its sample count is a lifetime's: a replica that measured an upstream 1,000 times
 * ten minutes ago outweighed one that measured it 5 times just now, and its old 4 s figure held the fleet's.
 */
const WEIGHT_HALF_LIFE_MS = 60_000;

function freshness(v: Published, nowWall: number): number {
  const age = v.lastSampleAgeMs + Math.max(0, nowWall - v.at);
  return Math.max(Math.pow(2, -age / WEIGHT_HALF_LIFE_MS), 1e-12); // never 0: an old figure still averages
}

/**
 * The other replicas' measurements as one: sums of counts, averages weighted by the samples behind them, each
 * replica's by how fresh they are.
 */
export function mergeStats(views: readonly Published[], nowWall: number): SharedStats | undefined {
  if (views.length === 0) return undefined;
  let samples = 0;
  let weight = 0;
  let tpsWeight = 0;
  let outWeight = 0;
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
    const fresh = freshness(v, nowWall);
    samples += v.samples;
    weight += v.samples * fresh;
    ttft += v.ttftMs * v.samples * fresh;
    latency += v.latencyMs * v.samples * fresh;
    tpsSamples += v.tpsSamples;
    tpsWeight += v.tpsSamples * fresh;
    tps += v.tokensPerSec * v.tpsSamples * fresh;
    outSamples += v.outSamples;
    outWeight += v.outSamples * fresh;
    meanOut += v.meanOutputTokens * v.outSamples * fresh;
    okWeight += v.okWeight;
    failWeight += v.failWeight;
    if (v.samples > 0) age = Math.min(age, v.lastSampleAgeMs + Math.max(0, nowWall - v.at));
  }
  return {
    samples,
    ttftMs: weight > 0 ? ttft / weight : 0,
    latencyMs: weight > 0 ? latency / weight : 0,
    tpsSamples,
    tokensPerSec: tpsWeight > 0 ? tps / tpsWeight : 0,
    outSamples,
    meanOutputTokens: outWeight > 0 ? meanOut / outWeight : 0,
    okWeight,
    failWeight,
    lastSampleAgeMs: Number.isFinite(age) ? age : 0,
  };
}
